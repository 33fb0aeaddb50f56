"""Older MoE GGUFs store one tensor per expert (blk.N.ffn_gate.E.weight, ...), which llama.cpp still
loads (LLM_TENSOR_FFN_GATE_EXP). They become the stacked blk.N.ffn_{gate,up,down}_exps.weight the
blocks read: a view of the file where the experts lie back to back in one file (the usual layout),
else one copy in memory."""

from __future__ import annotations

import re
from collections import defaultdict

import numpy as np

from fitllm.gguf import GGUFError, GGUFFile
from fitllm.gguf.reader import Tensor

LEGACY = re.compile(r"^blk\.(\d+)\.ffn_(gate|up|down)\.(\d+)\.weight$")


def _stack(f: GGUFFile, name: str, ts: list[Tensor]) -> Tensor:
    first, n = ts[0], ts[0].nbytes
    for t in ts:
        if (t.ggml_type, t.shape) != (first.ggml_type, first.shape):
            raise GGUFError(
                f"{f.path}: expert tensor {t.name!r} is {t.type_name} {t.shape}, its layer's expert 0"
                f" {first.type_name} {first.shape}"
            )
    shape = (len(ts), *first.shape)
    adjacent = first.path and all(
        t.path == first.path and t.offset == first.offset + e * n for e, t in enumerate(ts)
    )
    if adjacent:
        return Tensor(
            name,
            first.ggml_type,
            shape,
            f.span(first.path, first.offset, n * len(ts)),
            first.offset,
            first.path,
        )
    return Tensor(name, first.ggml_type, shape, np.concatenate([t.data for t in ts]), -1, "")


def stack_legacy_experts(f: GGUFFile) -> None:
    """Replace f's per-expert tensors by stacked ones (in place); a gap in a layer's expert numbers,
    or experts of one layer that differ in type or shape, is a GGUFError."""
    groups: dict[tuple[int, str], dict[int, Tensor]] = defaultdict(dict)
    for name, t in f.tensors.items():
        m = LEGACY.match(name)
        if m:
            groups[int(m[1]), m[2]][int(m[3])] = t
    for (blk, kind), by_e in sorted(groups.items()):
        if sorted(by_e) != list(range(len(by_e))):
            missing = min(set(range(max(by_e) + 1)) - set(by_e))
            raise GGUFError(
                f"{f.path}: tensor 'blk.{blk}.ffn_{kind}.{missing}.weight' is missing (legacy experts)"
            )
        name = f"blk.{blk}.ffn_{kind}_exps.weight"
        if name in f.tensors:
            raise GGUFError(f"{f.path}: layer {blk} has both {name!r} and per-expert ffn_{kind} tensors")
        f.tensors[name] = _stack(f, name, [by_e[e] for e in range(len(by_e))])
        for e in by_e:
            del f.tensors[f"blk.{blk}.ffn_{kind}.{e}.weight"]

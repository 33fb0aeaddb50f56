"""`fitllm quantize IN OUT TYPE`: a GGUF re-encoded at a llama.cpp file type, streaming.

Metadata (tokenizer, chat template...) is carried over with its GGUF types; general.file_type is
the new one. Each tensor is decoded to float32 and quantized in row slices on worker threads
(numpy releases the GIL), so memory stays near one slice per thread; the output is OUT.part until
complete. Re-quantizing an already quantized model is allowed, with a warning (errors add up)."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q
from tqdm import tqdm

from fitllm import kernels
from fitllm.gguf import GGUFFile
from fitllm.gguf.writer import GGUFStreamWriter, copy_metadata
from fitllm.quant.quantize import quantize
from fitllm.quant.recipe import FLOAT, Recipe

log = logging.getLogger(__name__)
SLICE_ELEMENTS = 1 << 21  # per worker task
SKIP_KEYS = ("general.architecture", "general.file_type", "general.quantization_version")


def encode_rows(read, rows: int, cols: int, new: Q, threads: int, pool: ThreadPoolExecutor):
    """A (rows, cols) matrix encoded as `new`, slice by slice in order; read(r0, n) gives rows
    r0..r0+n as float32. Slices are encoded on the pool a window at a time: bounded memory."""
    step = max(1, SLICE_ELEMENTS // cols)

    def job(r0: int) -> np.ndarray:
        return quantize(read(r0, min(step, rows - r0)), new).view(np.uint8)

    starts = list(range(0, rows, step))
    for i in range(0, len(starts), threads):
        yield from pool.map(job, starts[i : i + threads])


def _slices(t, new: Q, threads: int, pool: ThreadPoolExecutor):
    """The GGUF tensor t re-encoded as `new`."""
    cols = t.shape[-1]
    rb = kernels.row_bytes(t.ggml_type, cols)

    def read(r0: int, n: int) -> np.ndarray:
        return kernels.dequantize(t.ggml_type, t.data[r0 * rb : (r0 + n) * rb], n, cols)

    return encode_rows(read, t.n_elements // cols, cols, new, threads, pool)


def quantize_gguf(src: str, dst: str, type_name: str, threads: int = 2, progress: bool = True) -> dict:
    """Write dst: src at type_name (FTYPES in recipe.py). Returns {tensor name: new type name}."""
    f = GGUFFile(src)
    f.check_supported()
    a = f.architecture
    n_head = f.get(f"{a}.attention.head_count", 1)
    n_gqa = n_head // (f.get(f"{a}.attention.head_count_kv", n_head) or n_head)
    recipe = Recipe(
        type_name,
        list(f.tensors),
        f.get(f"{a}.block_count", 0),
        int(f.get(f"{a}.expert_count", 0) or 0),
        n_gqa,
    )
    if any(t.ggml_type not in FLOAT for t in f.tensors.values() if len(t.shape) > 1):
        log.warning("%s is already quantized: re-quantizing it adds the errors of both", src)
    plan = {n: recipe.type_of(n, t.shape) or Q(t.ggml_type) for n, t in f.tensors.items()}
    _log_fallbacks(recipe, f, plan)
    total = sum(t.nbytes for t in f.tensors.values())
    with GGUFStreamWriter(dst, a) as w, ThreadPoolExecutor(threads) as pool:
        copy_metadata(f, w.meta, SKIP_KEYS)
        w.meta.add_file_type(recipe.file_type)
        w.meta.add_quantization_version(2)
        for n, t in f.tensors.items():
            w.declare(n, t.shape, plan[n])
        w.begin()
        bar = tqdm(
            total=total, unit="B", unit_scale=True, desc=f"quantize {Path(dst).name}", disable=not progress
        )
        for n, t in f.tensors.items():
            if plan[n] == t.ggml_type:
                w.write(n, t.data)  # unchanged: copied
            else:
                for part in _slices(t, plan[n], threads, pool):
                    w.write(n, part)
            bar.update(t.nbytes)
        bar.close()
    _warn_if_larger(src, dst)
    return {n: q.name for n, q in plan.items()}


def _log_fallbacks(recipe: Recipe, f: GGUFFile, plan: dict[str, Q]) -> None:
    """Say which tensors could not take the type the mix wants (rows not whole blocks of it), as
    llama.cpp does: a warning with the counts, each tensor at -v (often most of a small model)."""
    moved: dict[tuple[str, str], int] = {}
    for n, t in f.tensors.items():
        want = recipe.wanted(n, t.shape)
        if want is not None and want != plan[n]:
            block = GGML_QUANT_SIZES[want][0]
            log.info(
                "%s: %s -> %s: its rows of %d are not whole %d-blocks",
                n, want.name, plan[n].name, t.shape[-1], block,
            )  # fmt: skip
            key = (want.name, plan[n].name)
            moved[key] = moved.get(key, 0) + 1
    if moved:
        how = ", ".join(f"{a} -> {b}: {k}" for (a, b), k in moved.items())
        log.warning(
            "%d of %d tensors fell back to another type: their rows are not whole blocks of the"
            " wanted one (%s)%s",
            sum(moved.values()), sum(recipe.wanted(n, t.shape) is not None for n, t in f.tensors.items()),
            how, "" if log.isEnabledFor(logging.INFO) else "; -v lists them",
        )  # fmt: skip


def _warn_if_larger(src: str, dst: str) -> None:
    from fitllm.plan import human_size

    a, b = Path(src).stat().st_size, Path(dst).stat().st_size
    if b > a:
        log.warning(
            "%s (%s) is larger than its input %s (%s)", Path(dst).name, human_size(b), Path(src).name,
            human_size(a),
        )  # fmt: skip

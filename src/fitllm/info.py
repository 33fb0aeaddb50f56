"""`fitllm info`: what is in a GGUF file."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np

from fitllm.gguf import GGUFError, GGUFFile
from fitllm.models import ARCHITECTURES


def describe(path: str) -> str:
    f = GGUFFile(path)
    lines = [
        f"file:          {path} ({f.nbytes / 1e6:.1f} MB"
        + (f" in {len(f.shards)} gguf-split shards)" if len(f.shards) > 1 else ")"),
        f"name:          {f.get('general.name', '?')}",
        f"architecture:  {f.architecture}",
    ]
    cls = ARCHITECTURES.get(f.architecture)
    if cls is not None:
        try:  # a file whose hyper-parameters cannot be used is still described
            hp = cls.hparams_class.from_gguf(f)
            lines += [f"  {k:<15}{v}" for k, v in asdict(hp).items()]
        except GGUFError as e:
            lines.append(f"  unusable:      {str(e).removeprefix(f.path + ': ')}")
    by_type: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    n_params = 0
    for t in f.tensors.values():
        by_type[t.type_name][0] += 1
        by_type[t.type_name][1] += t.nbytes
        n_params += t.n_elements
    total = sum(b for _, b in by_type.values())
    lines.append(
        f"tensors:       {len(f.tensors)}, {n_params / 1e6:.1f} M parameters, {total / 1e6:.1f} MB"
        f" ({8 * total / max(n_params, 1):.2f} bits/weight)"
    )
    for name, (n, b) in sorted(by_type.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"  {name:<6} {n:>5} tensors {b / 1e6:>10.1f} MB {100 * b / total:>6.1f} %")
    tok, tokens = f.get("tokenizer.ggml.model", None), f.get("tokenizer.ggml.tokens", None)
    if tok:
        n = (
            len(tokens)
            if isinstance(tokens, (Sequence, np.ndarray)) and not isinstance(tokens, str)
            else "no"
        )
        lines.append(f"tokenizer:     {tok} (pre={f.get('tokenizer.ggml.pre', '-')}), {n} tokens")
    return "\n".join(lines)

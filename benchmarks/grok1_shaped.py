"""Grok-1's per-layer cost: a GGUF with Grok-1's real widths but few layers, fitllm vs llama.cpp.

    python benchmarks/grok1_shaped.py DIR [--layers 1] [--type q8_0|q4_k] [-t 2] [-p 32] [-n 8]

D 6144, F 32768, 48 query / 8 KV heads of 128, 8 experts (top 2), vocab 131,072 with the real
Grok-1 tokenizer; random weights written straight as valid blocks (fp16 scales set small), one
tensor slice at a time. Then `fitllm bench --vs-llamacpp` on it: a decode step of the real model
costs about 64 / layers times the per-layer part of these numbers."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q

from fitllm.bench import run_bench
from fitllm.convert.grok1 import add_metadata, add_tokenizer
from fitllm.convert.grok1_checkpoint import Grok1Config
from fitllm.gguf.writer import GGUFStreamWriter

TOKENIZER = Path(__file__).parent.parent / "tests" / "data" / "grok1_tokenizer.model"
SCALE_FIELDS = {Q.Q8_0: [0], Q.Q4_K: [0, 2]}  # byte offsets of fp16 scales in a block


def random_blocks(rng, n_rows: int, n_cols: int, t: Q) -> np.ndarray:
    blck, size = GGML_QUANT_SIZES[t]
    b = rng.integers(0, 256, (n_rows, n_cols // blck, size), dtype=np.uint8)
    scale = np.frombuffer(np.float16(0.01 / np.sqrt(n_cols)).tobytes(), np.uint8)
    for off in SCALE_FIELDS[t]:
        b[:, :, off : off + 2] = scale
    return b.reshape(n_rows, -1)


def write_model(path: Path, layers: int, t: Q) -> Path:
    cfg = Grok1Config(num_layers=layers)
    D, F, E = cfg.emb_size, cfg.ffn_size, cfg.num_experts
    q, kv = cfg.num_q_heads * cfg.key_size, cfg.num_kv_heads * cfg.key_size
    emb_t = Q.Q8_0 if t != Q.Q8_0 else t
    shapes = {"token_embd": ((cfg.vocab_size, D), emb_t), "output_norm": ((D,), Q.F32)}
    for i in range(layers):
        b = f"blk.{i}."
        for n in ("attn_norm", "attn_output_norm", "ffn_norm", "layer_output_norm"):
            shapes[b + n] = ((D,), Q.F32)
        shapes |= {b + "attn_q": ((q, D), t), b + "attn_k": ((kv, D), t), b + "attn_v": ((kv, D), t),
                   b + "attn_output": ((D, q), t), b + "ffn_gate_inp": ((E, D), Q.F32),
                   b + "ffn_gate_exps": ((E, F, D), t), b + "ffn_up_exps": ((E, F, D), t),
                   b + "ffn_down_exps": ((E, D, F), t)}  # fmt: skip
    rng = np.random.default_rng(0)
    with GGUFStreamWriter(path, "grok") as w:
        add_metadata(w, cfg, "Grok-1-shaped")
        add_tokenizer(w, TOKENIZER, cfg.vocab_size)
        for name, (shape, tt) in shapes.items():
            w.declare(name + ".weight", shape, tt)
        w.begin()
        for name, (shape, tt) in shapes.items():
            if tt == Q.F32:
                std = 1.0 if len(shape) == 1 else 1 / np.sqrt(shape[-1])
                mean = 1.0 if len(shape) == 1 else 0.0  # norms near 1
                w.write(name + ".weight", (mean + std * rng.standard_normal(shape)).astype(np.float32))
                continue
            rows = int(np.prod(shape[:-1]))
            for r0 in range(0, rows, 4096):
                w.write(name + ".weight", random_blocks(rng, min(4096, rows - r0), shape[-1], tt))
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--type", default="q8_0", choices=["q8_0", "q4_k"])
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-p", "--n-prompt", type=int, default=32)
    ap.add_argument("-n", "--n-gen", type=int, default=8)
    ap.add_argument("-r", "--rounds", type=int, default=2)
    a = ap.parse_args()
    path = Path(a.dir) / f"grok1-shaped-{a.layers}l.{a.type}.gguf"
    if not path.exists():
        write_model(path, a.layers, Q[a.type.upper()])
    print(run_bench(str(path), a.threads, a.n_prompt, a.n_gen, a.rounds, vs_llamacpp=True))


if __name__ == "__main__":
    main()

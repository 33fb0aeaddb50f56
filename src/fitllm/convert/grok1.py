"""Grok-1 release checkpoint -> GGUF (llama.cpp's `grok` architecture), streaming.

One checkpoint file is unpickled at a time, its big arrays left in the file and read one expert (or
a slice of rows) at a time; weights are dequantized, requantized and appended to the output as they
are made, so the 314B model converts in well under 1 GB of RAM (429 MB measured for a full-width
layer). Output goes to OUT.part, renamed to OUT at the end."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_VERSION
from gguf import GGMLQuantizationType as Q
from tqdm import tqdm

from fitllm.convert.grok1_checkpoint import (
    Grok1Config,
    Leaf,
    dequantize_rows,
    find_files,
    leaves,
    read_tensors,
    round_bf16,
    rows,
)
from fitllm.convert.vocab import sentencepiece_vocab, write_vocab
from fitllm.gguf.writer import GGUFStreamWriter
from fitllm.quant.quantize import CHUNK_ELEMENTS, quantize
from fitllm.quant.recipe import FTYPES, OUT_TYPES, ftype, pick_type

log = logging.getLogger(__name__)


def tensor_type(leaf: Leaf, out: Q) -> Q:
    n_in = leaf.shape[-1] if leaf.kind == "embedding" or len(leaf.shape) < 2 else leaf.shape[-2]
    return pick_type(leaf.kind, n_in, out)


def gguf_shape(leaf: Leaf) -> tuple[int, ...]:
    """numpy-order GGUF shape: weights become (out, in), the checkpoint's transpose."""
    s = leaf.shape
    if leaf.kind in ("linear", "router"):
        return (s[1], s[0])
    if leaf.kind == "experts":
        return (s[0], s[2], s[1])
    return s


def add_metadata(w: GGUFStreamWriter, cfg: Grok1Config, name: str) -> None:
    m = w.meta
    m.add_type("model")
    m.add_name(name)
    m.add_context_length(cfg.sequence_len)
    m.add_embedding_length(cfg.emb_size)
    m.add_block_count(cfg.num_layers)
    m.add_feed_forward_length(cfg.ffn_size)
    m.add_expert_feed_forward_length(cfg.ffn_size)
    m.add_head_count(cfg.num_q_heads)
    m.add_head_count_kv(cfg.num_kv_heads)
    m.add_key_length(cfg.key_size)
    m.add_value_length(cfg.key_size)
    m.add_rope_dimension_count(cfg.key_size)
    m.add_rope_freq_base(cfg.rope_base)
    m.add_layer_norm_rms_eps(cfg.norm_eps)
    m.add_expert_count(cfg.num_experts)
    m.add_expert_used_count(cfg.num_selected_experts)
    m.add_embedding_scale(cfg.embedding_multiplier_scale)
    m.add_attn_output_scale(cfg.attn_output_multiplier)
    m.add_logit_scale(cfg.output_multiplier_scale)
    m.add_attn_logit_softcapping(30.0)  # model.py max_attn_val


def add_tokenizer(w: GGUFStreamWriter, path: Path, vocab_size: int) -> None:
    """The SentencePiece model as llama.cpp's converter embeds it ("llama" tokenizer); no BOS is
    added to prompts, as the reference encodes them."""
    v = sentencepiece_vocab(path)
    if len(v.tokens) != vocab_size:
        raise ValueError(f"{path}: {len(v.tokens)} pieces, but the model's vocab_size is {vocab_size}")
    write_vocab(w.meta, v, add_bos=False)


def _row_slices(n_rows: int, n_in: int):
    step = max(1, CHUNK_ELEMENTS // n_in)
    return ((r, min(r + step, n_rows)) for r in range(0, n_rows, step))


def write_leaf(w: GGUFStreamWriter, leaf: Leaf, obj, t: Q) -> None:
    name, n = leaf.gguf_name + ".weight", leaf.shape[0]
    if leaf.kind == "norm":
        w.write(name, rows(obj, 0, n))
    elif leaf.kind == "router":
        w.write(name, np.ascontiguousarray(rows(obj, 0, n).T))
    elif leaf.kind == "embedding":  # the reference casts the table to bf16 before any use
        for r0, r1 in _row_slices(n, leaf.shape[1]):
            w.write(name, quantize(round_bf16(rows(obj, r0, r1)), t))
    else:
        stacked = leaf.kind == "experts"
        for e in range(n if stacked else 1):  # one expert in memory at a time
            ws = rows(obj.weight, e, e + 1)[0] if stacked else rows(obj.weight, 0, n)
            ss = rows(obj.scales, e, e + 1)[0] if stacked else rows(obj.scales, 0, obj.scales.shape[0])
            for r0, r1 in _row_slices(ws.shape[1], ws.shape[0]):
                w.write(name, quantize(dequantize_rows(ws, ss, r0, r1), t))


def convert_grok1(
    ckpt: str | Path,
    out: str | Path,
    out_type: str = "q8_0",
    tokenizer: str | Path | None = None,
    config: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Convert the checkpoint at ckpt (folder holding ckpt-0/, or ckpt-0/ itself) to a GGUF at out."""
    if out_type not in OUT_TYPES:
        raise ValueError(f"unknown --type {out_type!r} (choose from {', '.join(OUT_TYPES)})")
    cfg = Grok1Config.from_json(config) if config else Grok1Config()
    files = find_files(ckpt, cfg)
    plan = [(leaf, tensor_type(leaf, OUT_TYPES[out_type])) for leaf in leaves(cfg)]
    out = Path(out)
    total = sum(f.stat().st_size for f in files)
    with GGUFStreamWriter(out, "grok") as w:
        add_metadata(w, cfg, "Grok-1" if cfg == Grok1Config() else "Grok-1-shaped")
        w.meta.add_file_type(FTYPES[ftype(out_type)][1])
        w.meta.add_quantization_version(GGML_QUANT_VERSION)
        if tokenizer:
            add_tokenizer(w, Path(tokenizer), cfg.vocab_size)
        for leaf, t in plan:
            w.declare(leaf.gguf_name + ".weight", gguf_shape(leaf), t)
        w.begin()
        bar = tqdm(
            total=total, unit="B", unit_scale=True, desc=f"convert -> {out.name}", disable=not progress
        )
        with bar:
            for (leaf, obj), (_, t), f in zip(read_tensors(files, cfg), plan, files):
                write_leaf(w, leaf, obj, t)
                del obj
                bar.update(f.stat().st_size)
    log.info("wrote %s (%d tensors, %s)", out, len(plan), out_type)
    return out

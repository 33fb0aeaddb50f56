"""A tiny random Grok-1 checkpoint in the release's own format, and the spec's math in float64.

Written from the description of xai-org/grok-1's checkpoint.py / model.py (see
../shared/research/grok1-spec.md), not from fitllm's reader: leaves are the haiku parameter
paths flattened the way JAX does (sorted), pickled with plain pickle.dump; quantized weights are
`__main__.QuantizedWeight8bit` instances with int8 weights and ml_dtypes bfloat16 scales, 8 row
blocks of scales for the row-parallel weights (attention output, expert down-projection)."""

from __future__ import annotations

import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

TINY = dict(
    vocab_size=512, emb_size=256, key_size=32, num_q_heads=8, num_kv_heads=2, num_layers=3,
    num_experts=8, num_selected_experts=2, widening_factor=3, sequence_len=512,
    embedding_multiplier_scale=0.25, attn_output_multiplier=0.17677669529663687, output_multiplier_scale=0.5,
)  # fmt: skip


@dataclass
class QuantizedWeight8bit:
    weight: np.ndarray
    scales: np.ndarray


QuantizedWeight8bit.__module__ = "__main__"  # as the release pickled it


def bf16(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)


def _quantize(w: np.ndarray, groups: int) -> QuantizedWeight8bit:
    """[..., in, out] float -> int8 and bf16 scales per (row block, out column)."""
    *lead, n_in, n_out = w.shape
    blocks = w.reshape(*lead, groups, n_in // groups, n_out)
    s = (np.abs(blocks).max(axis=-2) / 127).astype(ml_dtypes.bfloat16)  # (..., groups, out)
    sf = s.astype(np.float32)[..., None, :]
    q = np.clip(np.rint(blocks / np.where(sf == 0, 1, sf)), -127, 127).astype(np.int8)
    return QuantizedWeight8bit(q.reshape(w.shape), s)


def dequantized(qw: QuantizedWeight8bit) -> np.ndarray:
    *lead, n_in, n_out = qw.weight.shape
    g = qw.scales.shape[-2]
    w = qw.weight.reshape(*lead, g, n_in // g, n_out).astype(np.float32)
    return bf16(w * qw.scales.astype(np.float32)[..., None, :]).reshape(qw.weight.shape)


def ffn_size(c: dict) -> int:
    f = int(c["widening_factor"] * c["emb_size"]) * 2 // 3
    return f + (-f) % 8


def make_params(c: dict, seed: int = 0) -> dict[str, object]:
    """haiku path -> value, the release's parameter tree."""
    rng = np.random.default_rng(seed)
    D, F, E, K = c["emb_size"], ffn_size(c), c["num_experts"], c["key_size"]
    H, KV = c["num_q_heads"], c["num_kv_heads"]

    def lin(n_in, n_out, groups=1, lead=()):
        return _quantize(rng.standard_normal((*lead, n_in, n_out)).astype(np.float32) / np.sqrt(n_in), groups)

    def experts(n_in, n_out, groups=1):
        # experts share most of their weights, as upcycled and trained MoEs do: a token whose
        # routing is a near tie (decided by rounding) then changes little
        base = rng.standard_normal((1, n_in, n_out)).astype(np.float32)
        own = rng.standard_normal((E, n_in, n_out)).astype(np.float32)
        return _quantize((base + 0.3 * own) / np.sqrt(n_in), groups)

    def norm():
        return (1 + 0.2 * rng.standard_normal(D)).astype(np.float32)

    p = {
        "language_model/in_out_embed/embeddings": rng.standard_normal((c["vocab_size"], D)).astype(
            np.float32
        ),
        "language_model/rms_norm/scale": norm(),
    }
    for i in range(c["num_layers"]):
        b = f"transformer/decoder_layer_{i}/"
        p[b + "multi_head_attention/query/w"] = lin(D, H * K)
        p[b + "multi_head_attention/key/w"] = lin(D, KV * K)
        p[b + "multi_head_attention/value/w"] = lin(D, KV * K)
        p[b + "multi_head_attention/linear/w"] = lin(H * K, D, groups=8)
        p[b + "router/w"] = (rng.standard_normal((D, E)) / np.sqrt(D)).astype(np.float32)
        p[b + "moe/linear/w"] = experts(D, F)
        p[b + "moe/linear_v/w"] = experts(D, F)
        p[b + "moe/linear_1/w"] = experts(F, D, groups=8)
        for n in ("rms_norm", "rms_norm_1", "rms_norm_2", "rms_norm_3"):
            p[b + n + "/scale"] = norm()
    return p


def plant_bigrams(p: dict[str, object], c: dict, seed: int = 5) -> np.ndarray:
    """Make layer 0's experts a key-value memory of a random bigram table, in place; returns the
    successor of each token. A random model's logits are flat (top-2 gap ~0.2 sigma at 512 tokens,
    so any rounding flips a few % of its top-1s, q8_0 94 %); a trained one is confident at most
    positions, its FFNs storing such associations (Geva et al. 2021): the gate and up columns are
    the unit embeddings of tokens (keys), the down rows those of their successors (values), with
    random expert noise, and the attention output of that layer is scaled down so the key is seen."""
    rng = np.random.default_rng(seed)
    V, D, F, E = c["vocab_size"], c["emb_size"], ffn_size(c), c["num_experts"]
    emb = p["language_model/in_out_embed/embeddings"]
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    succ, keys = rng.permutation(V), np.arange(F) % V
    b = "transformer/decoder_layer_0/"
    k = unit[keys].T + 0.3 * rng.standard_normal((E, D, F)) / np.sqrt(D)
    p[b + "moe/linear/w"] = p[b + "moe/linear_v/w"] = _quantize(k.astype(np.float32), 1)
    v = unit[succ[keys]] + 0.3 * rng.standard_normal((E, F, D)) / np.sqrt(F)
    p[b + "moe/linear_1/w"] = _quantize(v.astype(np.float32), 8)
    p[b + "rms_norm_1/scale"] = p[b + "rms_norm_1/scale"] * 0.5
    return succ


def write_checkpoint(root: Path, params: dict[str, object]) -> Path:
    """ckpt-0/tensor{i:05d}_000 per leaf, leaves in JAX's flattening order (sorted paths)."""
    d = root / "ckpt-0"
    d.mkdir(parents=True, exist_ok=True)
    main = sys.modules["__main__"]
    had = getattr(main, "QuantizedWeight8bit", None)
    main.QuantizedWeight8bit = QuantizedWeight8bit  # pickle looks the class up by its name
    try:
        for i, path in enumerate(sorted(params)):
            with open(d / f"tensor{i:05d}_000", "wb") as f:
                pickle.dump(params[path], f, protocol=4)
    finally:
        if had is None:
            del main.QuantizedWeight8bit
    return root


def _rms(x, w, eps=1e-5):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _rope(x, pos):  # (T, heads, K), half-split pairs (d, d + K/2)
    K = x.shape[-1]
    inv = 1.0 / 10000 ** (np.arange(0, K, 2) / K)
    ph = np.concatenate([pos[:, None] * inv] * 2, axis=-1)[:, None, :]
    rot = np.concatenate([-x[..., K // 2 :], x[..., : K // 2]], axis=-1)
    return x * np.cos(ph) + rot * np.sin(ph)


def oracle_logits(params: dict[str, object], c: dict, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """model.py's forward pass in float64 on the dequantized weights: logits (T, vocab), and per
    token the smallest relative gap between the k-th and (k+1)-th router probabilities over the
    layers (a near tie is decided by rounding)."""
    W = {
        k: dequantized(v) if isinstance(v, QuantizedWeight8bit) else np.float64(v) for k, v in params.items()
    }
    H, KV, K, k_sel = c["num_q_heads"], c["num_kv_heads"], c["key_size"], c["num_selected_experts"]
    T = len(tokens)
    emb = bf16(W["language_model/in_out_embed/embeddings"])
    x = emb[tokens] * c["embedding_multiplier_scale"]
    pos = np.arange(T, dtype=np.float64)
    gap = np.ones(T)
    for i in range(c["num_layers"]):
        g = lambda n: W[f"transformer/decoder_layer_{i}/{n}"]  # noqa: E731
        a = _rms(x, g("rms_norm/scale"))
        q = _rope((a @ g("multi_head_attention/query/w")).reshape(T, H, K), pos)
        k = _rope((a @ g("multi_head_attention/key/w")).reshape(T, KV, K), pos)
        v = (a @ g("multi_head_attention/value/w")).reshape(T, KV, K)
        kh, vh = np.repeat(k, H // KV, axis=1), np.repeat(v, H // KV, axis=1)
        s = np.einsum("thd,shd->hts", q, kh) * c["attn_output_multiplier"]
        s = 30 * np.tanh(s / 30)
        s = np.where(np.tril(np.ones((T, T), bool)), s, -1e30)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        o = np.einsum("hts,shd->thd", p, vh).reshape(T, H * K)
        x = x + _rms(o @ g("multi_head_attention/linear/w"), g("rms_norm_1/scale"))
        m = _rms(x, g("rms_norm_2/scale"))
        lg = m @ g("router/w")
        pr = np.exp(lg - lg.max(-1, keepdims=True))
        pr /= pr.sum(-1, keepdims=True)
        ps = -np.sort(-pr, axis=-1)
        gap = np.minimum(gap, (ps[:, k_sel - 1] - ps[:, k_sel]) / ps[:, k_sel - 1])
        y = np.zeros_like(m)
        for t in range(T):
            for e in np.argsort(-pr[t])[:k_sel]:  # the raw softmax probabilities, not renormalised
                h = _gelu(m[t] @ g("moe/linear/w")[e]) * (m[t] @ g("moe/linear_v/w")[e])
                y[t] += pr[t, e] * (h @ g("moe/linear_1/w")[e])
        x = x + _rms(y, g("rms_norm_3/scale"))
    return _rms(x, W["language_model/rms_norm/scale"]) @ emb.T * c["output_multiplier_scale"], gap


# the real tokenizer's vocabulary, so that llama.cpp can load the converted file
TINY_VOCAB = {**TINY, "vocab_size": 131072}
TOKENIZER = Path(__file__).parent / "data" / "grok1_tokenizer.model"
GOLDEN_TOKENS = [int(t) for t in np.random.default_rng(11).integers(4, 131072, 200)]


def write_vocab_model(root: Path, out_type: str = "f32") -> Path:
    """TINY_VOCAB as a checkpoint, converted with the Grok-1 tokenizer embedded."""
    import json

    from fitllm.convert.grok1 import convert_grok1

    write_checkpoint(root / "ckpt", make_params(TINY_VOCAB))
    (root / "config.json").write_text(json.dumps(TINY_VOCAB))
    out = root / f"tiny-vocab.{out_type}.gguf"
    return convert_grok1(root / "ckpt", out, out_type, TOKENIZER, root / "config.json", progress=False)

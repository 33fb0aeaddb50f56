"""Blocks shared by every architecture: linear layers on GGUF weights, norms, RoPE, attention."""

from __future__ import annotations

import numpy as np

from fitllm import kernels
from fitllm.gguf import GGUFFile, Tensor


class Linear:
    """y = x W^T (+ b), W kept as the raw GGUF blocks of an (out, in) tensor."""

    def __init__(self, weight: Tensor, bias: np.ndarray | None = None) -> None:
        self.weight = weight
        self.bias = bias
        self.n_out, self.n_in = weight.shape

    def __call__(self, x: np.ndarray) -> np.ndarray:  # (T, in) -> (T, out)
        y = kernels.matmul(self.weight.ggml_type, self.weight.data, self.n_out, self.n_in, x)
        if self.bias is not None:
            y += self.bias
        return y

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Dequantized rows (the embedding lookup)."""
        return kernels.get_rows(self.weight.ggml_type, self.weight.data, self.n_out, self.n_in, ids)


class FileRows:
    """An embedding looked up by reading its rows from the file: the mmap stays untouched (a fault
    there would map up to a large folio of neighbouring rows into the process)."""

    def __init__(self, f: GGUFFile, t: Tensor) -> None:
        self.f, self.weight = f, t
        self.rb = kernels.row_bytes(t.ggml_type, t.shape[1])

    def rows(self, ids: np.ndarray) -> np.ndarray:
        raw = np.concatenate([self.f.read(self.weight, int(i) * self.rb, self.rb) for i in ids])
        return kernels.dequantize(self.weight.ggml_type, raw, len(ids), self.weight.shape[1])


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    # the mean of squares is accumulated in double, as ggml does
    ms = np.mean(np.square(x, dtype=np.float64), axis=-1, keepdims=True)
    return (x * (1.0 / np.sqrt(ms + eps)).astype(np.float32)) * w


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(np.float32(0.7978845608028654) * (x + np.float32(0.044715) * x * x * x)))


def rope(
    x: np.ndarray, pos: np.ndarray, base: float, n_rot: int, neox: bool, scaling=None, freqs=None
) -> np.ndarray:
    """Rotary embedding of the first n_rot dims of each head. x: (T, H, hd).

    neox pairs dim i with i + n_rot/2 (GPT-NeoX, Gemma, Qwen2); otherwise (2i, 2i+1) (Llama:
    llama.cpp's converter permutes q/k so that this form applies). scaling (a RopeScaling) and
    freqs (llama3's factors) scale the angles as ggml's rope_yarn does."""
    half = n_rot // 2
    inv = base ** (-np.arange(half, dtype=np.float64) * 2.0 / n_rot)
    extrap = pos.astype(np.float64)[:, None] * inv[None, :]  # (T, half)
    if freqs is not None:
        extrap = extrap / freqs.astype(np.float64)
    ang, mscale = extrap, 1.0
    if scaling is not None:
        ang, mscale = scaling.freq_scale * extrap, scaling.attn_factor
        if scaling.ext_factor:
            y = (np.arange(half) - scaling.corr_lo) / max(0.001, scaling.corr_hi - scaling.corr_lo)
            mix = (1 - np.clip(y, 0, 1)) * scaling.ext_factor
            ang = ang * (1 - mix) + extrap * mix
            mscale *= 1.0 + 0.1 * np.log(1.0 / scaling.freq_scale)
    cos = (np.cos(ang) * mscale).astype(np.float32)[:, None, :]
    sin = (np.sin(ang) * mscale).astype(np.float32)[:, None, :]
    out = x.copy()
    if neox:
        a, b = x[..., :half], x[..., half:n_rot]
        out[..., :half] = a * cos - b * sin
        out[..., half:n_rot] = a * sin + b * cos
    else:
        a, b = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
        out[..., 0:n_rot:2] = a * cos - b * sin
        out[..., 1:n_rot:2] = a * sin + b * cos
    return out


def attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    q_pos: np.ndarray,
    scale: float,
    window: int = 0,
    softcap: float = 0.0,
) -> np.ndarray:
    """Causal grouped-query attention of queries at positions q_pos over keys 0..S-1.

    q: (T, Hq, hd); k, v: (S, Hkv, hd). window > 0 limits each query to the last `window`
    positions (sliding-window layers). Returns (T, Hq * hd)."""
    T, n_head, hd = q.shape
    S, n_kv, hd_v = v.shape
    g = n_head // n_kv
    qh = q.reshape(T, n_kv, g, hd).transpose(1, 2, 0, 3).reshape(n_kv, g * T, hd)
    s = np.matmul(qh, k.transpose(1, 2, 0)).reshape(n_kv, g, T, S) * np.float32(scale)
    if softcap:
        s = np.tanh(s / np.float32(softcap)) * np.float32(softcap)
    k_pos = np.arange(S)
    masked = k_pos[None, :] > q_pos[:, None]
    if window:
        masked |= q_pos[:, None] - k_pos[None, :] >= window
    s = np.where(masked, np.float32(-np.inf), s)
    s = np.exp(s - s.max(axis=-1, keepdims=True))
    s /= s.sum(axis=-1, keepdims=True)
    o = np.matmul(s.reshape(n_kv, g * T, S), v.transpose(1, 0, 2))  # (n_kv, g*T, hd)
    return o.reshape(n_kv, g, T, hd_v).transpose(2, 0, 1, 3).reshape(T, n_head * hd_v)

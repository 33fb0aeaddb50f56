"""The activations a matrix product uses, per weight type: the numpy specification of csrc/act.c.

llama.cpp converts a matmul's input to the weight type's "vec_dot_type" before the dot products;
fitllm does the same, with the same rounding, so its products equal llama.cpp's up to the order of
float additions. Records are (d, s0, s1, q[32]) per 32 values, as the compiled kernels read them.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

RECORD = np.dtype([("d", "<f4"), ("s0", "<f4"), ("s1", "<f4"), ("q", "i1", 32)])

#: weight type -> activation kind (ggml's vec_dot_type)
KIND = {
    T.F32: "f32",
    T.F16: "f16",
    T.BF16: "bf16",
    T.Q4_0: "q8_0",
    T.Q5_0: "q8_0",
    T.Q8_0: "q8_0",
    T.Q4_1: "q8_1",
    T.Q5_1: "q8_1",
    T.Q2_K: "q8_k",
    T.Q3_K: "q8_k",
    T.Q4_K: "q8_k",
    T.Q5_K: "q8_k",
    T.Q6_K: "q8_k",
    T.IQ4_NL: "q8_0",
    T.MXFP4: "q8_0",
    **{t: "q8_k" for t in (T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ3_XXS, T.IQ3_S, T.IQ1_S, T.IQ1_M, T.IQ4_XS)},
    **{t: "q8_k" for t in (T.TQ1_0, T.TQ2_0)},
}


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


def _bf16(x: np.ndarray) -> np.ndarray:
    b = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    b = (b + 0x7FFF + ((b >> 16) & 1)) >> 16 << 16  # round to nearest even
    return b.astype(np.uint32).view(np.float32)


def _q8_0(x: np.ndarray, with_sum: bool) -> np.ndarray:
    b = x.reshape(-1, 32)
    amax = np.abs(b).max(-1)
    d = amax / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q = np.rint(b * inv[:, None]).astype(np.int32)  # rint: ties to even, as _mm256_round_ps
    r = np.zeros(len(b), RECORD)
    r["q"], r["d"] = q, _f16(d)
    if with_sum:  # Q8_1: fp16(d * sum(q)) with the f32 d
        r["s0"] = _f16(d * q.sum(-1).astype(np.float32))
    else:
        r["s0"] = r["d"] * q[:, :16].sum(-1).astype(np.float32)
        r["s1"] = r["d"] * q[:, 16:].sum(-1).astype(np.float32)
    return r


def _q8_k(x: np.ndarray) -> np.ndarray:
    b = x.reshape(-1, 256)
    idx = np.abs(b).argmax(-1)  # the first largest magnitude, with its sign
    mx = b[np.arange(len(b)), idx]
    with np.errstate(divide="ignore"):
        iscale = np.where(mx != 0, np.float32(-127) / mx, np.float32(0)).astype(np.float32)
        d = np.where(mx != 0, np.float32(1) / iscale, np.float32(0)).astype(np.float32)
    q = np.minimum(np.rint(b * iscale[:, None]), 127).astype(np.int32).reshape(-1, 32)
    r = np.zeros(len(q), RECORD)
    r["q"], r["d"] = q, np.repeat(d, 8)
    r["s0"] = r["d"] * q[:, :16].sum(-1).astype(np.float32)
    r["s1"] = r["d"] * q[:, 16:].sum(-1).astype(np.float32)
    return r


def quantize_activations(ggml_type: int, x: np.ndarray) -> np.ndarray:
    """Float kinds: the rounded floats (T, n). Quantized kinds: records (T * n / 32,)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    kind = KIND[T(ggml_type)]
    if kind == "f32":
        return x.copy()
    if kind == "f16":
        return _f16(x)
    if kind == "bf16":
        return _bf16(x)
    if kind == "q8_k":
        return _q8_k(x)
    return _q8_0(x, with_sum=kind == "q8_1")


def dequantize_activations(records: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The values the quantized activations stand for, d * q, in float64."""
    return (records["d"].astype(np.float64)[:, None] * records["q"]).reshape(shape)

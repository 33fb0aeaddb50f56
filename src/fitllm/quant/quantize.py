"""Float tensors to GGUF block formats.

gguf-py's reference quantizers (bit-exact with llama.cpp's *_ref ones) cover F32/F16/BF16 and the
32-element formats; Q4_K, which gguf-py cannot make, follows llama.cpp's quantize_row_q4_K_ref
(make_qkx2_quants: a weighted least-squares search over 21 candidate scales per 32 values), here
vectorized over blocks. It is not bit-exact with llama.cpp's build (whose compiler fuses
multiply-adds inside the search), but its error is within 1 % of it (tests/test_quant.py).
Rows are processed in slices so a big tensor never needs more than a few hundred MB of temporaries."""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import quants

CHUNK_ELEMENTS = 1 << 22


def _sum(a: np.ndarray) -> np.ndarray:
    return a.sum(1, dtype=np.float32)


def _qkx2(
    x: np.ndarray, w: np.ndarray, nmax: int = 15, rmin: float = -1.0, rdelta: float = 0.1, nstep: int = 20
):
    """Per row of x (n, 32): (scale, min) minimising sum w (scale*L + min - x)^2, L in [0, nmax]."""
    f = np.float32
    lo, hi = np.minimum(x.min(1), f(0)), x.max(1)
    span = hi - lo
    flat = span == 0
    span = np.where(flat, f(1), span)
    sum_w, sum_x = _sum(w), _sum(w * x)

    def levels(iscale):
        return np.clip(np.rint(iscale[:, None] * (x - lo[:, None])), 0, nmax)

    scale, mn = f(1) / (f(nmax) / span), lo.copy()
    best = _sum(w * (scale[:, None] * levels(f(nmax) / span) + mn[:, None] - x) ** 2)
    for k in range(nstep + 1):
        la = levels((f(rmin) + f(rdelta) * f(k) + f(nmax)) / span)
        sl, sl2, sxl = _sum(w * la), _sum(w * la * la), _sum(w * la * x)
        det = sum_w * sl2 - sl * sl
        ok = det > 0
        det = np.where(ok, det, f(1))
        ts, tm = (sum_w * sxl - sum_x * sl) / det, (sl2 * sum_x - sl * sxl) / det
        pos = tm > 0  # the offset may only lower values: refit the scale alone
        ts = np.where(pos, sxl / np.where(sl2 > 0, sl2, f(1)), ts)
        tm = np.where(pos, f(0), tm)
        err = _sum(w * (ts[:, None] * la + tm[:, None] - x) ** 2)
        better = ok & (err < best)
        best, scale, mn = np.where(better, err, best), np.where(better, ts, scale), np.where(better, tm, mn)
    return np.where(flat, f(0), scale), -np.where(flat, lo, mn)


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """(rows, cols) float32, cols a multiple of 256 -> (rows, cols / 256 * 144) uint8."""
    rows, cols = x.shape
    sub = x.reshape(-1, 32).astype(np.float32)
    w = np.sqrt(_sum(sub * sub) / np.float32(32))[:, None] + np.abs(sub)
    sc, mn = (a.reshape(-1, 8) for a in _qkx2(sub, w))
    max_sc, max_mn = sc.max(1), mn.max(1)
    ls = np.minimum(63, np.rint(np.where(max_sc > 0, 63 / np.where(max_sc > 0, max_sc, 1), 0)[:, None] * sc))
    lm = np.minimum(63, np.rint(np.where(max_mn > 0, 63 / np.where(max_mn > 0, max_mn, 1), 0)[:, None] * mn))
    ls, lm = ls.astype(np.uint8), lm.astype(np.uint8)
    d, dmin = (max_sc / 63).astype(np.float16), (max_mn / 63).astype(np.float16)
    packed = np.zeros((ls.shape[0], 12), np.uint8)
    packed[:, 0:4], packed[:, 4:8] = ls[:, :4], lm[:, :4]
    packed[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    packed[:, 0:4] |= (ls[:, 4:] >> 4) << 6
    packed[:, 4:8] |= (lm[:, 4:] >> 4) << 6
    dj = d.astype(np.float32)[:, None] * ls  # (nb, 8)
    mj = dmin.astype(np.float32)[:, None] * lm
    xs = sub.reshape(-1, 8, 32)
    safe = np.where(dj == 0, np.float32(1), dj)
    q = np.clip(np.rint((xs + mj[:, :, None]) / safe[:, :, None]), 0, 15).astype(np.uint8)
    q = np.where(dj[:, :, None] == 0, 0, q).reshape(-1, 4, 2, 32)
    qs = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)
    out = np.concatenate(
        [d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2), packed, qs], axis=1
    )
    return out.reshape(rows, cols // 256 * 144)


def quantize(x: np.ndarray, ggml_type: int) -> np.ndarray:
    """float32 (..., cols) -> the raw GGUF data of that tensor (float arrays for F32/F16, else bytes)."""
    t = Q(ggml_type)
    if t == Q.F32:
        return np.ascontiguousarray(x, np.float32)
    if t == Q.F16:
        return np.ascontiguousarray(x, np.float16)
    fn = quantize_q4_k if t == Q.Q4_K else (lambda a: quants.quantize(a, t))
    flat = x.reshape(-1, x.shape[-1])
    step = max(1, CHUNK_ELEMENTS // x.shape[-1])
    parts = [fn(np.ascontiguousarray(flat[i : i + step], np.float32)) for i in range(0, flat.shape[0], step)]
    out = np.concatenate(parts) if len(parts) > 1 else parts[0]
    return out.reshape(*x.shape[:-1], out.shape[-1])

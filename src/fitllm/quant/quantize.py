"""Float tensors to GGUF block formats.

The 32-element formats and Q2_K..Q6_K run compiled (kernels.quantize: csrc/quantize.c is bit-exact
with gguf-py's quantizers, csrc/kquantize.c writes llama.cpp's bytes); BF16 is gguf-py's.
The K formats' numpy versions here follow llama.cpp's
quantize_row_q{4,5,6}_K_ref (make_qkx2_quants: a weighted least-squares search over candidate
(scale, min) per 32 values; make_qx_quants for Q6_K), here vectorized over blocks. They are not
bit-exact with llama.cpp's build (numpy sums in another order; its compiler fuses multiply-adds),
but their error is within 1 % of it (tests/test_quant.py; Q6_K matches 99.9 % of the bytes).
Rows are processed in slices so a big tensor never needs more than a few hundred MB of temporaries."""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import quants

from fitllm import kernels

CHUNK_ELEMENTS = 1 << 22


def _sum(a: np.ndarray) -> np.ndarray:
    return a.sum(1, dtype=np.float32)


def _qkx2(
    x: np.ndarray,
    w: np.ndarray,
    nmax: int = 15,
    rmin: float = -1.0,
    rdelta: float = 0.1,
    nstep: int = 20,
    mad: bool = False,
):
    """Per row of x (n, 32): (scale, min) minimising sum w (scale*L + min - x)^2 (mad: |...|), L in
    [0, nmax] (llama.cpp's make_qkx2_quants)."""
    f = np.float32

    def cost(d):
        return _sum(w * (np.abs(d) if mad else d * d))

    lo, hi = np.minimum(x.min(1), f(0)), x.max(1)
    span = hi - lo
    flat = span == 0
    span = np.where(flat, f(1), span)
    sum_w, sum_x = _sum(w), _sum(w * x)

    def levels(iscale):
        return np.clip(np.rint(iscale[:, None] * (x - lo[:, None])), 0, nmax)

    scale, mn = f(1) / (f(nmax) / span), lo.copy()
    best = cost(scale[:, None] * levels(f(nmax) / span) + mn[:, None] - x)
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
        err = cost(ts[:, None] * la + tm[:, None] - x)
        better = ok & (err < best)
        best, scale, mn = np.where(better, err, best), np.where(better, ts, scale), np.where(better, tm, mn)
    return np.where(flat, f(0), scale), -np.where(flat, lo, mn)


def _k_levels(x: np.ndarray, nmax: int, rmin: float, nstep: int):
    """Q4_K/Q5_K's common part (llama.cpp's quantize_row_q{4,5}_K_ref): per 32 values a weighted
    (scale, min) search, both quantized to 6 bits per 256; returns d, dmin (fp16), the 12 packed
    scale bytes and the levels (n_blocks, 8, 32) in [0, nmax]."""
    sub = x.reshape(-1, 32).astype(np.float32)
    w = np.sqrt(_sum(sub * sub) / np.float32(32))[:, None] + np.abs(sub)
    sc, mn = (a.reshape(-1, 8) for a in _qkx2(sub, w, nmax, rmin, 0.1, nstep))
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
    q = np.clip(np.rint((xs + mj[:, :, None]) / safe[:, :, None]), 0, nmax).astype(np.uint8)
    return d, dmin, packed, np.where(dj[:, :, None] == 0, 0, q)


def _halves(d: np.ndarray) -> np.ndarray:
    return d.view(np.uint8).reshape(-1, 2)


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """(rows, cols) float32, cols a multiple of 256 -> (rows, cols / 256 * 144) uint8."""
    rows, cols = x.shape
    d, dmin, packed, q = _k_levels(x, 15, -1.0, 20)
    q = q.reshape(-1, 4, 2, 32)
    qs = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate([_halves(d), _halves(dmin), packed, qs], axis=1).reshape(rows, cols // 256 * 144)


def quantize_q5_k(x: np.ndarray) -> np.ndarray:
    """(rows, cols) -> (rows, cols / 256 * 176): Q4_K's layout with a fifth bit per value in qh."""
    rows, cols = x.shape
    d, dmin, packed, q = _k_levels(x, 31, -0.5, 15)
    q = q.reshape(-1, 4, 2, 32)  # 64 values per pair of sub-blocks: low nibbles, bit 4 into qh
    lo = q & 0xF
    qs = (lo[:, :, 0] | (lo[:, :, 1] << 4)).reshape(-1, 128)
    hi = (q >> 4).astype(np.uint8)  # (nb, 4, 2, 32)
    shifts = (2 * np.arange(4)[:, None] + np.arange(2)[None, :]).astype(np.uint8)  # bit 2n, 2n+1
    qh = (hi << shifts[None, :, :, None]).sum(axis=(1, 2), dtype=np.uint8)  # disjoint bits
    return np.concatenate([_halves(d), _halves(dmin), packed, qh, qs], axis=1).reshape(
        rows, cols // 256 * 176
    )


def _qx(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """llama.cpp's make_qx_quants(n, nmax, rmse_type=1) per row of x: (scale, levels + nmax)."""
    f = np.float32
    amax_i = np.abs(x).argmax(1)
    mx = x[np.arange(len(x)), amax_i]
    zero = np.abs(mx) < f(1e-15)
    mx = np.where(zero, f(1), mx)
    w = x * x

    def fit(iscale):
        lv = np.clip(np.rint(iscale[:, None] * x), -nmax, nmax - 1)
        return lv, _sum(w * x * lv), _sum(w * lv * lv)

    lv, sumlx, suml2 = fit(-f(nmax) / mx)
    scale = np.where(suml2 > 0, sumlx / np.where(suml2 > 0, suml2, f(1)), f(0))
    best = scale * sumlx
    for k in [i for i in range(-9, 10) if i]:
        lk, sx, s2 = fit(-(f(nmax) + f(0.1) * f(k)) / mx)
        better = (s2 > 0) & (sx * sx > best * s2)
        lv = np.where(better[:, None], lk, lv)
        scale = np.where(better, sx / np.where(s2 > 0, s2, f(1)), scale)
        best = np.where(better, scale * sx, best)
    return np.where(zero, f(0), scale), np.where(zero[:, None], 0, lv + nmax).astype(np.int32)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """(rows, cols) -> (rows, cols / 256 * 210): 16 int8 scales per 256, 6-bit values (llama.cpp's
    quantize_row_q6_K_ref)."""
    rows, cols = x.shape
    sub = x.reshape(-1, 16).astype(np.float32)
    scales, levels = _qx(sub, 32)
    scales, levels = scales.reshape(-1, 16), levels.reshape(-1, 16, 16)
    pick = np.abs(scales).argmax(1)
    max_scale = scales[np.arange(len(scales)), pick]
    empty = np.abs(max_scale) < np.float32(1e-15)
    iscale = np.float32(-128) / np.where(empty, np.float32(1), max_scale)
    d = np.where(empty, 0, np.float32(1) / iscale).astype(np.float16)
    sc = np.minimum(127, np.rint(iscale[:, None] * scales)).astype(np.int8)
    dj = d.astype(np.float32)[:, None] * sc  # (nb, 16)
    safe = np.where(dj == 0, np.float32(1), dj)
    fresh = np.clip(np.rint(sub.reshape(-1, 16, 16) / safe[:, :, None]), -32, 31) + 32
    L = np.where(dj[:, :, None] == 0, levels, fresh).astype(np.uint8).reshape(-1, 2, 4, 32)  # 128 per half
    lo = L & 0xF
    ql = np.concatenate([lo[:, :, 0] | (lo[:, :, 2] << 4), lo[:, :, 1] | (lo[:, :, 3] << 4)], axis=2)
    qh = (L[:, :, 0] >> 4) | ((L[:, :, 1] >> 4) << 2) | ((L[:, :, 2] >> 4) << 4) | ((L[:, :, 3] >> 4) << 6)
    out = np.concatenate([ql.reshape(-1, 128), qh.reshape(-1, 64), sc.view(np.uint8), _halves(d)], axis=1)
    out[empty] = 0
    return out.reshape(rows, cols // 256 * 210)


def _pack_2bit(L: np.ndarray) -> np.ndarray:
    """(nb, 256) levels in [0, 3] -> (nb, 64): four 32-value rows per byte, per 128 values."""
    L = L.reshape(-1, 2, 4, 32)
    return (L[:, :, 0] | (L[:, :, 1] << 2) | (L[:, :, 2] << 4) | (L[:, :, 3] << 6)).reshape(-1, 64)


def _q3(x: np.ndarray, nmax: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """llama.cpp's make_q3_quants(n, nmax, do_rmse=true) per row: (scale, levels + nmax)."""
    f = np.float32
    rows = np.arange(len(x))
    mx = x[rows, np.abs(x).argmax(1)]
    zero = np.abs(mx) < f(1e-15)
    mx = np.where(zero, f(1), mx)
    L = np.clip(np.rint((-f(nmax) / mx)[:, None] * x), -nmax, nmax - 1)
    w = x * x
    sumlx, suml2 = _sum(w * x * L), _sum(w * L * L)
    for _ in range(5):  # coordinate descent over the values, in order
        changed = np.zeros(len(x), bool)
        for i in range(x.shape[1]):
            wi, xi, li = w[:, i], x[:, i], L[:, i]
            slx = sumlx - wi * xi * li
            sl2 = suml2 - wi * li * li
            new = np.clip(np.rint(xi * sl2 / np.where(slx > 0, slx, f(1))), -nmax, nmax - 1)
            slx2, sl22 = slx + wi * xi * new, sl2 + wi * new * new
            take = (slx > 0) & (new != li) & (sl22 > 0) & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22)
            L[:, i] = np.where(take, new, li)
            sumlx, suml2 = np.where(take, slx2, sumlx), np.where(take, sl22, suml2)
            changed |= take
        if not changed.any():
            break
    scale = np.where(zero | (suml2 == 0), f(0), sumlx / np.where(suml2 == 0, f(1), suml2))
    return scale, np.where(zero[:, None], 0, L + nmax).astype(np.int32)


def quantize_q3_k(x: np.ndarray) -> np.ndarray:
    """(rows, cols) -> (rows, cols / 256 * 110): 6-bit scales per 16, 3-bit values split into a high
    bit mask and 2-bit pairs (llama.cpp's quantize_row_q3_K_ref)."""
    rows, cols = x.shape
    sub = x.reshape(-1, 16).astype(np.float32)
    scales, _ = _q3(sub)
    scales = scales.reshape(-1, 16)
    max_scale = scales[np.arange(len(scales)), np.abs(scales).argmax(1)]
    empty = max_scale == 0
    iscale = np.float32(-32) / np.where(empty, np.float32(1), max_scale)
    ls = (np.clip(np.rint(iscale[:, None] * scales), -32, 31) + 32).astype(np.uint8)  # (nb, 16)
    ls = np.where(empty[:, None], 32, ls)  # all-zero scales pack as 0 after the -32 below
    packed = np.zeros((len(ls), 12), np.uint8)
    packed[:, :8] = (ls[:, :8] & 0xF) | ((ls[:, 8:] & 0xF) << 4)
    for j in range(16):
        packed[:, 8 + j % 4] |= (ls[:, j] >> 4) << (2 * (j // 4))
    packed[empty] = 0
    d = np.where(empty, 0, np.float32(1) / iscale).astype(np.float16)
    dj = d.astype(np.float32)[:, None] * (ls.astype(np.float32) - 32)
    safe = np.where(dj == 0, np.float32(1), dj)
    L = np.clip(np.rint(sub.reshape(-1, 16, 16) / safe[:, :, None]), -4, 3) + 4
    L = np.where(dj[:, :, None] == 0, 4, L).reshape(-1, 256).astype(np.uint8)  # untouched: 0 + nmax
    hi = L > 3
    hmask = (hi.reshape(-1, 8, 32) << np.arange(8, dtype=np.uint8)[None, :, None]).sum(1, dtype=np.uint8)
    qs = _pack_2bit(np.where(hi, L - 4, L).astype(np.uint8))
    return np.concatenate([hmask, qs, packed, _halves(d)], axis=1).reshape(rows, cols // 256 * 110)


def quantize_q2_k(x: np.ndarray) -> np.ndarray:
    """(rows, cols) -> (rows, cols / 256 * 84): 4-bit scale and min per 16, 2-bit values
    (llama.cpp's quantize_row_q2_K_ref: make_qkx2_quants with |x| weights, absolute error)."""
    rows, cols = x.shape
    sub = x.reshape(-1, 16).astype(np.float32)
    sc, mn = (a.reshape(-1, 16) for a in _qkx2(sub, np.abs(sub), 3, -0.5, 0.1, 15, mad=True))
    f = np.float32
    max_sc, max_mn = sc.max(1), mn.max(1)
    lsc = np.where(
        max_sc[:, None] > 0, np.rint((f(15) / np.where(max_sc > 0, max_sc, f(1)))[:, None] * sc), 0
    )
    lmn = np.where(
        max_mn[:, None] > 0, np.rint((f(15) / np.where(max_mn > 0, max_mn, f(1)))[:, None] * mn), 0
    )
    lsc, lmn = lsc.astype(np.uint8), lmn.astype(np.uint8)
    d = np.where(max_sc > 0, max_sc / f(15), 0).astype(np.float16)
    dmin = np.where(max_mn > 0, max_mn / f(15), 0).astype(np.float16)
    dj = d.astype(f)[:, None] * (lsc & 0xF)
    mj = dmin.astype(f)[:, None] * lmn
    safe = np.where(dj == 0, f(1), dj)
    L = np.clip(np.rint((sub.reshape(-1, 16, 16) + mj[:, :, None]) / safe[:, :, None]), 0, 3)
    L = np.where(dj[:, :, None] == 0, 0, L).reshape(-1, 256).astype(np.uint8)
    scales = (lsc & 0xF) | (lmn << 4)
    return np.concatenate([scales, _pack_2bit(L), _halves(d), _halves(dmin)], axis=1).reshape(
        rows, cols // 256 * 84
    )


OWN = {
    Q.Q2_K: quantize_q2_k,
    Q.Q3_K: quantize_q3_k,
    Q.Q4_K: quantize_q4_k,
    Q.Q5_K: quantize_q5_k,
    Q.Q6_K: quantize_q6_k,
}  # gguf-py has no K quantizers


def quantize(x: np.ndarray, ggml_type: int) -> np.ndarray:
    """float32 (..., cols) -> the raw GGUF data of that tensor (float arrays for F32/F16, else bytes)."""
    t = Q(ggml_type)
    if t == Q.F32:
        return np.ascontiguousarray(x, np.float32)
    if t == Q.F16:
        return np.ascontiguousarray(x, np.float16)
    if t in kernels.QUANTIZE_TYPES:
        fn = lambda a: kernels.quantize(t, a)  # noqa: E731 - compiled (csrc/quantize.c, kquantize.c)
    else:
        fn = OWN.get(t) or (lambda a: quants.quantize(a, t))
    flat = x.reshape(-1, x.shape[-1])
    step = max(1, CHUNK_ELEMENTS // x.shape[-1])
    parts = [fn(np.ascontiguousarray(flat[i : i + step], np.float32)) for i in range(0, flat.shape[0], step)]
    out = np.concatenate(parts) if len(parts) > 1 else parts[0]
    return out.reshape(*x.shape[:-1], out.shape[-1])

"""Block-level operations of the compiled core: GGUF blocks in and out (dequantize, quantize, rows),
matrix products, RMS norm, repacking into strips and the memory read probe."""

from __future__ import annotations

import ctypes

import numpy as np

from fitllm.kernels.lib import _lib, check_struct, constant, get_isa, get_threads, isa_supported
from fitllm.kernels.lib import check as _check


def gguf_strings(
    buf: np.ndarray, off: int, n: int, big_endian: bool
) -> tuple[np.ndarray, np.ndarray, int] | None:
    """Starts and lengths of the n length-prefixed strings of a GGUF string array at buf[off], and the
    offset after them; None if they run past the end of buf (uint8)."""
    starts, lens = np.empty(n, np.int64), np.empty(n, np.int64)
    end = _lib.fl_gguf_strings(
        buf.ctypes.data, buf.nbytes, off, n, int(big_endian), starts.ctypes.data, lens.ctypes.data
    )
    return None if end < 0 else (starts, lens, end)


def row_bytes(ggml_type: int, ncols: int) -> int:
    return _lib.fl_row_bytes(ggml_type, ncols)


def read_sum(buf: np.ndarray, threads: int | None = None) -> int:
    """The sum (mod 2**64) of buf's 64-bit words, read by `threads` threads, each a whole number of
    128-byte runs of its share (a tail of under 128 * threads bytes is left): its cost is the
    memory read speed."""
    return _lib.fl_read_sum(buf.ctypes.data, buf.nbytes, threads or get_threads())


PACKED = constant("FL_PACKED")  # type flag of a matrix repacked in 16-row strips (csrc/repack.c)


def aligned(nbytes: int, align: int = 64) -> np.ndarray:
    """nbytes of uint8 starting on an `align`-byte boundary (numpy's own is 16)."""
    raw = np.empty(nbytes + align, np.uint8)
    skip = -raw.ctypes.data % align
    return raw[skip : skip + nbytes]


def packed_bytes(ggml_type: int, nrows: int, ncols: int) -> int:
    """Bytes of the matrix repacked in 16-row strips for the AVX-512 VNNI and AVX2 kernels (read with
    type ggml_type | PACKED: the blocks' bytes regrouped; decode then needs fewer vector operations
    per weight); 0 where this CPU, the forced kernel path or the type has no such kernel."""
    if isa_supported() < 1 or get_isa() < 1:
        return 0
    return _lib.fl_packed_bytes(ggml_type, nrows, ncols)


def repack(ggml_type: int, w: np.ndarray, nrows: int, ncols: int) -> np.ndarray | None:
    """The matrix w (raw blocks) in strips, a new array; None where packed_bytes is 0."""
    size = packed_bytes(ggml_type, nrows, ncols)
    if not size:
        return None
    out = aligned(size)
    _check(
        _lib.fl_repack(
            ggml_type, w.ctypes.data, w.nbytes, nrows, ncols, out.ctypes.data, size, get_threads()
        ),
        "repack",
    )
    return out


class RepackJob(ctypes.Structure):
    """Mirror of fl_repack_job (csrc/fitllm_api.h): one matrix of a file into its strips."""

    _fields_ = [(n, ctypes.c_int64) for n in ("type", "offset", "nrows", "ncols")] + [
        ("dst", ctypes.c_void_p),
        ("dst_bytes", ctypes.c_int64),
    ]


def repack_file(fd: int, jobs: list[tuple[int, int, int, int, np.ndarray]], threads: int = 1) -> None:
    """(type, file offset, nrows, ncols, destination) of each matrix: read and repacked in one
    compiled call on `threads` threads, which other Python threads run beside."""
    arr = (RepackJob * len(jobs))(
        *(RepackJob(t, off, r, c, d.ctypes.data, d.nbytes) for t, off, r, c, d in jobs)
    )
    _check(_lib.fl_repack_file(fd, arr, len(jobs), threads), "repack")


def matmul(
    ggml_type: int, w: np.ndarray, nrows: int, ncols: int, x: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """x (T, ncols) float32 @ W.T -> (T, nrows), W the raw bytes of an (nrows, ncols) tensor."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != ncols:
        raise ValueError(f"matmul: activations of shape {x.shape} for a weight of {ncols} columns")
    if out is None:
        out = np.empty((x.shape[0], nrows), dtype=np.float32)
    assert out.flags.c_contiguous and out.dtype == np.float32 and out.shape == (x.shape[0], nrows)
    nth = get_threads()
    rc = _lib.fl_matmul(
        ggml_type, w.ctypes.data, w.nbytes, nrows, ncols, x.ctypes.data, x.shape[0], out.ctypes.data, nth
    )
    _check(rc, "matmul")
    return out


def dequantize(ggml_type: int, w: np.ndarray, nrows: int, ncols: int) -> np.ndarray:
    out = np.empty((nrows, ncols), dtype=np.float32)
    _check(
        _lib.fl_dequantize(ggml_type, w.ctypes.data, w.nbytes, nrows, ncols, out.ctypes.data, get_threads()),
        "dequantize",
    )
    return out


def get_rows(ggml_type: int, w: np.ndarray, nrows: int, ncols: int, ids: np.ndarray) -> np.ndarray:
    ids = np.ascontiguousarray(ids, dtype=np.int32).reshape(-1)
    out = np.empty((ids.size, ncols), dtype=np.float32)
    _check(
        _lib.fl_get_rows(
            ggml_type, w.ctypes.data, w.nbytes, nrows, ncols, ids.ctypes.data, ids.size, out.ctypes.data
        ),
        "get_rows",
    )
    return out


# compiled quantizers: Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 (bit-exact with gguf-py) and Q2_K..Q6_K (llama.cpp's)
_QUANTIZE_NAMES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
QUANTIZE_TYPES = tuple(constant(f"FL_{t}") for t in _QUANTIZE_NAMES)


def quantize(ggml_type: int, x: np.ndarray) -> np.ndarray:
    """float32 (rows, cols) -> (rows, row bytes) uint8 blocks of a QUANTIZE_TYPES type, on all threads."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, cols = x.shape
    out = np.empty((rows, row_bytes(ggml_type, cols)), np.uint8)
    _check(
        _lib.fl_quantize(ggml_type, x.ctypes.data, rows, cols, out.ctypes.data, out.nbytes, get_threads()),
        "quantize",
    )
    return out


def quantize_act(ggml_type: int, x: np.ndarray) -> np.ndarray:
    """The activations a matmul with this weight type uses, as raw records (tests compare them)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    kind = _lib.fl_act_kind(ggml_type)
    out = np.zeros(_lib.fl_act_row_bytes(kind, x.shape[1]) * x.shape[0], np.uint8)
    _check(
        _lib.fl_quantize_act(ggml_type, x.ctypes.data, x.shape[0], x.shape[1], out.ctypes.data),
        "quantize_act",
    )
    return out


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    w = np.ascontiguousarray(w, dtype=np.float32)
    if w.shape != (x.shape[-1],):
        raise ValueError(f"rms_norm: weight {w.shape} for rows of {x.shape[-1]}")
    out = np.empty_like(x)
    n = x.shape[-1]
    rc = _lib.fl_rms_norm(x.ctypes.data, x.size // n, n, w.ctypes.data, w.size, eps, out.ctypes.data)
    _check(rc, "rms_norm")
    return out


check_struct(RepackJob, "REPACK_JOB", "fl_repack_job")

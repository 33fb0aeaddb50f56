"""ctypes binding of the compiled core (csrc/). ctypes drops the GIL for every call.

Weights are passed as the raw GGUF bytes of a tensor (a zero-copy view of the mmapped file);
the C side checks every size before it reads.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

ISA_NAMES = {0: "portable", 1: "avx2", 2: "avx512-vnni"}
_ERRORS = {
    -1: "unsupported tensor type or width",
    -2: "buffer too small",
    -3: "index out of range",
    -4: "out of memory",
}


def _load() -> ctypes.CDLL:
    here = Path(__file__).parent
    found = sorted(here.glob("_fitllm*.so"))
    if not found:
        raise ImportError("fitllm's compiled kernels are not built: run `pip install -e .` in the repository")
    lib = ctypes.CDLL(str(found[0]))
    p, i64, i32, sz = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_size_t
    lib.fl_matmul.argtypes = [i32, p, sz, i64, i64, p, i64, p, i32]
    lib.fl_dequantize.argtypes = [i32, p, sz, i64, i64, p, i32]
    lib.fl_get_rows.argtypes = [i32, p, sz, i64, i64, p, i64, p]
    lib.fl_row_bytes.argtypes = [i32, i64]
    lib.fl_row_bytes.restype = sz
    lib.fl_set_isa.argtypes = [i32]
    return lib


_lib = _load()

# numpy's BLAS only does the small attention products; its own spinning threads would fight the
# kernels' OpenMP threads for the cores (2 threads made prompt processing 5x slower than 1)
threadpool_limits(1, user_api="blas")


def _default_threads() -> int:
    env = os.environ.get("FITLLM_THREADS")
    return int(env) if env else len(os.sched_getaffinity(0))


_threads = _default_threads()


def set_threads(n: int) -> None:
    global _threads
    _threads = max(1, int(n))


def get_threads() -> int:
    return _threads


def isa_supported() -> int:
    """Best instruction-set level of this CPU: 0 portable, 1 AVX2, 2 AVX-512 VNNI."""
    return _lib.fl_isa_supported()


def get_isa() -> int:
    return _lib.fl_get_isa()


def set_isa(level: int) -> None:
    """Force a kernel path (tests compare them); refuses one this CPU cannot run."""
    if _lib.fl_set_isa(int(level)) != 0:
        raise ValueError(f"this CPU cannot run kernel path {ISA_NAMES.get(level, level)}")


if os.environ.get("FITLLM_ISA"):
    set_isa({v: k for k, v in ISA_NAMES.items()}.get(os.environ["FITLLM_ISA"], 0))


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise ValueError(f"{what}: {_ERRORS.get(rc, rc)}")


def row_bytes(ggml_type: int, ncols: int) -> int:
    return _lib.fl_row_bytes(ggml_type, ncols)


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
    rc = _lib.fl_matmul(
        ggml_type, w.ctypes.data, w.nbytes, nrows, ncols, x.ctypes.data, x.shape[0], out.ctypes.data, _threads
    )
    _check(rc, "matmul")
    return out


def dequantize(ggml_type: int, w: np.ndarray, nrows: int, ncols: int) -> np.ndarray:
    out = np.empty((nrows, ncols), dtype=np.float32)
    _check(
        _lib.fl_dequantize(ggml_type, w.ctypes.data, w.nbytes, nrows, ncols, out.ctypes.data, _threads),
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

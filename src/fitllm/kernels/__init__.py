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
    -5: "the experts could not be fetched",
    -6: "read error",
}


# libgomp's threads spin 300,000 rounds at every barrier before they sleep; on a machine with other
# work a waiting thread burns the time slice its descheduled partner needs, and decode collapses.
# A bounded spin (as llama.cpp's --poll) keeps idle speed; libgomp reads it when it loads, below.
SPINCOUNT = "1000"
OWN_ENV: dict[str, str] = {}  # what fitllm put in os.environ (a benchmarked peer gets its own defaults)


def _bound_spinning() -> None:
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return  # the user's own choice
    os.environ["GOMP_SPINCOUNT"] = OWN_ENV["GOMP_SPINCOUNT"] = SPINCOUNT


def _load() -> ctypes.CDLL:
    _bound_spinning()
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
    lib.fl_quantize_act.argtypes = [i32, p, i64, i64, p]
    lib.fl_quantize.argtypes = [i32, p, i64, i64, p, sz, i32]
    lib.fl_act_row_bytes.argtypes = [i32, i64]
    lib.fl_act_row_bytes.restype = sz
    lib.fl_rms_norm.argtypes = [p, i64, i64, p, i64, ctypes.c_float, p]
    lib.fl_layer_work_bytes.argtypes = [p, i64, i64, i32]
    lib.fl_layer_work_bytes.restype = sz
    lib.fl_gguf_strings.argtypes = [p, sz, sz, i64, i32, p, p]
    lib.fl_gguf_strings.restype = i64
    lib.fl_layer_forward.argtypes = [p, p, p, sz, i64, p, i64, i64, i64, i64, p, i32, p, sz, i32]
    lib.fl_forward_layers.argtypes = [p, i64, p, p, sz, i64, p, i64, i64, i64, i64, p, sz, i32]
    lib.fl_packed_bytes.argtypes = [i32, i64, i64]
    lib.fl_packed_bytes.restype = sz
    lib.fl_repack.argtypes = [i32, p, sz, i64, i64, p, sz, i32]
    lib.fl_repack_file.argtypes = [i32, p, i64, i32]
    lib.fl_read_sum.argtypes = [p, sz, i32]
    lib.fl_read_sum.restype = ctypes.c_uint64
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


def batch_min_tokens() -> int:
    """Matrix products of at least this many tokens sum in another order than smaller ones (the
    AVX-512 strip kernels; 0: one order for all). Work split into batches stays on one side of it
    to give the same bits."""
    return _lib.fl_batch_min_tokens()


def set_isa(level: int) -> None:
    """Force a kernel path (tests compare them); refuses one this CPU cannot run."""
    if _lib.fl_set_isa(int(level)) != 0:
        raise ValueError(f"this CPU cannot run kernel path {ISA_NAMES.get(level, level)}")


if os.environ.get("FITLLM_ISA"):
    set_isa({v: k for k, v in ISA_NAMES.items()}.get(os.environ["FITLLM_ISA"], 0))


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise ValueError(f"{what}: {_ERRORS.get(rc, rc)}")


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
    return _lib.fl_read_sum(buf.ctypes.data, buf.nbytes, threads or _threads)


PACKED = 64  # type flag of a matrix repacked in 16-row strips (csrc/repack.c)


def aligned(nbytes: int, align: int = 64) -> np.ndarray:
    """nbytes of uint8 starting on an `align`-byte boundary (numpy's own is 16)."""
    raw = np.empty(nbytes + align, np.uint8)
    skip = -raw.ctypes.data % align
    return raw[skip : skip + nbytes]


def packed_bytes(ggml_type: int, nrows: int, ncols: int) -> int:
    """Bytes of the matrix repacked in 16-row strips for the AVX-512 VNNI and AVX2 kernels (read with
    type ggml_type | PACKED: the blocks' bytes regrouped; decode then needs ~5x fewer vector
    operations per weight); 0 where this CPU, the forced kernel path or the type has no such kernel."""
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
        _lib.fl_repack(ggml_type, w.ctypes.data, w.nbytes, nrows, ncols, out.ctypes.data, size, _threads),
        "repack",
    )
    return out


class RepackJob(ctypes.Structure):
    """Mirror of fl_repack_job (csrc/repack.c): one matrix of a file into its strips."""

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


# compiled quantizers: Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 (bit-exact with gguf-py) and Q2_K..Q6_K (llama.cpp's)
QUANTIZE_TYPES = (2, 3, 6, 7, 8, 10, 11, 12, 13, 14)


def quantize(ggml_type: int, x: np.ndarray) -> np.ndarray:
    """float32 (rows, cols) -> (rows, row bytes) uint8 blocks of a QUANTIZE_TYPES type, on all threads."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, cols = x.shape
    out = np.empty((rows, row_bytes(ggml_type, cols)), np.uint8)
    _check(
        _lib.fl_quantize(ggml_type, x.ctypes.data, rows, cols, out.ctypes.data, out.nbytes, _threads),
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


class Mat(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int64) for n in ("data", "nbytes", "type", "nrows", "ncols")] + [
        ("bias", ctypes.c_void_p),
        ("bias_n", ctypes.c_int64),
    ]


class Vec(ctypes.Structure):
    """Mirror of fl_vec: a norm's weights and their count (layer.c checks it against the width)."""

    _fields_ = [("data", ctypes.c_void_p), ("n", ctypes.c_int64)]


_LAYER_INTS = (
    "n_embd",
    "n_head",
    "n_head_kv",
    "head_dim",
    "n_ff",
    "n_rot",
    "window",
    "rope_neox",
    "act_gelu",
)
_LAYER_FLOATS = ("eps", "rope_base", "q_scale", "kq_scale", "attn_softcap")
_LAYER_VECS = ("attn_norm", "q_norm", "k_norm", "post_attn_norm", "ffn_norm", "post_ffn_norm")
_LAYER_MATS = ("q", "k", "v", "o", "gate", "up", "down")


_LAYER_MOE_INTS = ("n_expert", "n_expert_used", "expert_norm_w")
_LAYER_SHARD_INTS = ("head0", "n_group")  # a tensor-parallel shard's heads (distributed/tensor_parallel.py)
STAGE_ALL, STAGE_ATTN, STAGE_FFN, STAGE_DONE = range(4)


class LayerSpec(ctypes.Structure):
    """Mirror of fl_layer (csrc/layer.c): one transformer block for fl_layer_forward."""

    _fields_ = (
        [(n, ctypes.c_int64) for n in _LAYER_INTS]
        + [(n, ctypes.c_double) for n in _LAYER_FLOATS]
        + [(n, Vec) for n in _LAYER_VECS]
        + [(n, Mat) for n in _LAYER_MATS]
        + [(n, ctypes.c_int64) for n in _LAYER_MOE_INTS]
        + [("gate_inp", Mat)]
        + [(n, ctypes.c_int64) for n in _LAYER_SHARD_INTS]
        + [("fetch", ctypes.c_void_p), ("fetch_ctx", ctypes.c_void_p), ("layer_id", ctypes.c_int64)]
    )


def _ptr(a: np.ndarray | None) -> int | None:
    if a is None:
        return None
    assert a.dtype == np.float32 and a.flags.c_contiguous
    return a.ctypes.data


def layer_spec(**kw) -> LayerSpec:
    """Build a LayerSpec from ints, floats, f32 vectors (or None) and (weight Tensor, bias) pairs.
    MoE blocks add n_expert, n_expert_used, expert_norm_w and gate_inp; their gate/up/down are the
    stacked (n_expert, rows, cols) expert tensors."""
    spec = LayerSpec()
    spec.keep = kw  # the arrays must outlive the spec
    for n in _LAYER_INTS + _LAYER_FLOATS:
        setattr(spec, n, kw[n])
    for n in _LAYER_MOE_INTS + _LAYER_SHARD_INTS:
        setattr(spec, n, kw.get(n, 0))
    for n in _LAYER_VECS:
        v = kw.get(n)
        setattr(spec, n, Vec(_ptr(v), 0 if v is None else v.size))
    for n in _LAYER_MATS + ("gate_inp",):
        if n not in kw:  # only gate_inp may be absent (dense block)
            continue
        t, bias = kw[n]
        *lead, cols = t.shape
        rows = int(np.prod(lead))
        n_bias = 0 if bias is None else bias.size
        setattr(spec, n, Mat(t.data.ctypes.data, t.data.nbytes, t.ggml_type, rows, cols, _ptr(bias), n_bias))
    return spec


# fetch(ctx, layer, e, cnt, h, T, ptrs) -> 0: the MoE's expert weights (expert_cache.py)
FETCH_FN = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_int64,
    ctypes.c_int64,
    ctypes.POINTER(ctypes.c_int32),
    ctypes.POINTER(ctypes.c_float),
    ctypes.c_int64,
    ctypes.POINTER(ctypes.c_void_p),
)

_work = np.empty(0, np.uint8)


def _work_for(need: int) -> np.ndarray:
    global _work
    if _work.nbytes < need:
        # threads write neighbouring 16-row slices of each output: at numpy's 16-byte alignment they
        # would share cache lines (2 threads: 128 instead of 165 tok/s, by process)
        _work = aligned(need)
    return _work


class LayerStack:
    """A model's blocks and the caches they fill, as arrays of pointers: forward() runs the whole
    stack in one compiled call (a call per block from Python cost ~3 % of a SmolLM2 decode token)."""

    def __init__(self, specs: list[LayerSpec], kc: list[np.ndarray], vc: list[np.ndarray]) -> None:
        assert all(k.dtype == v.dtype == np.float16 and k.flags.c_contiguous for k, v in zip(kc, vc))
        n = len(specs)
        self.specs, self._keep = specs, (kc, vc)  # all must outlive the pointers
        self.n_ctx = kc[0].shape[0]
        self._kv_elems = min(a.size for a in (*kc, *vc))  # the C side checks each block fits it
        self._blocks = (ctypes.c_void_p * n)(*[ctypes.addressof(s) for s in specs])
        self._kc = (ctypes.c_void_p * n)(*[k.ctypes.data for k in kc])
        self._vc = (ctypes.c_void_p * n)(*[v.ctypes.data for v in vc])
        self._need: dict[tuple[int, int], int] = {}  # (T, threads) -> work bytes, the most any block needs

    def forward(self, x: np.ndarray, pos0: int, n_out: int) -> None:
        """x (T, n_embd) <- the blocks applied in place; the last one's feed-forward only for the last
        n_out rows."""
        assert x.dtype == np.float32 and x.flags.c_contiguous and x.ndim == 2
        T, key = x.shape[0], (x.shape[0], _threads)
        if key not in self._need:
            sizes = (_lib.fl_layer_work_bytes(ctypes.byref(s), T, self.n_ctx, _threads) for s in self.specs)
            self._need[key] = max(sizes)
        work = _work_for(self._need[key])
        rc = _lib.fl_forward_layers(
            self._blocks, len(self.specs), self._kc, self._vc, self._kv_elems, self.n_ctx, x.ctypes.data,
            x.shape[1], T, pos0, n_out, work.ctypes.data, work.nbytes, _threads,
        )  # fmt: skip
        _check(rc, "layer")


def layer_forward(
    spec: LayerSpec,
    kc: np.ndarray,
    vc: np.ndarray,
    x: np.ndarray,
    pos0: int,
    n_out: int | None = None,
    y: np.ndarray | None = None,
    stage: int = STAGE_ALL,
) -> None:
    """x (T, n_embd) <- the block applied in place; kc/vc: this layer's fp16 caches (n_ctx, n_kv, hd).
    n_out: only the last n_out rows get the feed-forward half (default: all). A tensor-parallel
    shard runs STAGE_ATTN, STAGE_FFN, STAGE_DONE, summing y (T, n_embd) over the shards between them."""
    assert (
        x.dtype == np.float32 and x.flags.c_contiguous and x.ndim == 2 and kc.dtype == vc.dtype == np.float16
    )
    T, n_ctx = x.shape[0], kc.shape[0]
    if y is not None:
        assert y.dtype == np.float32 and y.flags.c_contiguous and y.shape == x.shape
    work = _work_for(_lib.fl_layer_work_bytes(ctypes.byref(spec), T, n_ctx, _threads))
    rc = _lib.fl_layer_forward(
        ctypes.byref(spec),
        kc.ctypes.data,
        vc.ctypes.data,
        min(kc.size, vc.size),
        n_ctx,
        x.ctypes.data,
        x.shape[1],
        T,
        pos0,
        T if n_out is None else n_out,
        None if y is None else y.ctypes.data,
        stage,
        work.ctypes.data,
        work.nbytes,
        _threads,
    )
    _check(rc, "layer")

"""The transformer block of the compiled core: the fl_layer / fl_mat / fl_vec mirrors, one block per
call (layer_forward) or a model's whole stack per call (LayerStack)."""

from __future__ import annotations

import ctypes

import numpy as np

from fitllm.kernels.blocks import aligned
from fitllm.kernels.lib import _lib, check_struct, constant, get_threads
from fitllm.kernels.lib import check as _check


class Mat(ctypes.Structure):
    """Mirror of fl_mat (csrc/fitllm_api.h): a weight matrix's blocks, shape and optional bias."""

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
#: RoPE scaling (models/rope_scaling.py); the defaults leave the angles as they are
_LAYER_ROPE = {"rope_freq_scale": 1.0, "rope_ext_factor": 0.0, "rope_attn_factor": 1.0, "rope_corr_lo": 0.0,
               "rope_corr_hi": 0.0}  # fmt: skip
_LAYER_VECS = ("attn_norm", "q_norm", "k_norm", "post_attn_norm", "ffn_norm", "post_ffn_norm", "rope_freqs")
_LAYER_MATS = ("q", "k", "v", "o", "gate", "up", "down")


_LAYER_MOE_INTS = ("n_expert", "n_expert_used", "expert_norm_w")
_LAYER_SHARD_INTS = ("head0", "n_group")  # a tensor-parallel shard's heads (distributed/tensor_parallel.py)
STAGE_ALL, STAGE_ATTN, STAGE_FFN, STAGE_DONE = (
    constant(f"FL_STAGE_{s}") for s in ("ALL", "ATTN", "FFN", "DONE")
)


class LayerSpec(ctypes.Structure):
    """Mirror of fl_layer (csrc/fitllm_api.h): one transformer block for fl_layer_forward."""

    _fields_ = (
        [(n, ctypes.c_int64) for n in _LAYER_INTS]
        + [(n, ctypes.c_double) for n in _LAYER_FLOATS + tuple(_LAYER_ROPE)]
        + [(n, Vec) for n in _LAYER_VECS[:-1]]
        + [("rope_freqs", Vec)]
        + [(n, Mat) for n in _LAYER_MATS]
        + [(n, ctypes.c_int64) for n in _LAYER_MOE_INTS]
        + [("gate_inp", Mat)]
        + [(n, ctypes.c_int64) for n in _LAYER_SHARD_INTS]
        + [("fetch", ctypes.c_void_p), ("fetch_ctx", ctypes.c_void_p), ("layer_id", ctypes.c_int64)]
    )


check_struct(Vec, "VEC", "fl_vec")
check_struct(Mat, "MAT", "fl_mat")
check_struct(LayerSpec, "LAYER", "fl_layer")


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
    for n, default in _LAYER_ROPE.items():
        setattr(spec, n, kw.get(n, default))
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
        # would share cache lines
        _work = aligned(need)
    return _work


class LayerStack:
    """A model's blocks and the caches they fill, as arrays of pointers: forward() runs the whole
    stack in one compiled call (a call per block from Python costs a share of every decode token)."""

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
        threads = get_threads()
        T, key = x.shape[0], (x.shape[0], threads)
        if key not in self._need:
            sizes = (_lib.fl_layer_work_bytes(ctypes.byref(s), T, self.n_ctx, threads) for s in self.specs)
            self._need[key] = max(sizes)
        work = _work_for(self._need[key])
        rc = _lib.fl_forward_layers(
            self._blocks, len(self.specs), self._kc, self._vc, self._kv_elems, self.n_ctx, x.ctypes.data,
            x.shape[1], T, pos0, n_out, work.ctypes.data, work.nbytes, threads,
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
    work = _work_for(_lib.fl_layer_work_bytes(ctypes.byref(spec), T, n_ctx, get_threads()))
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
        get_threads(),
    )
    _check(rc, "layer")

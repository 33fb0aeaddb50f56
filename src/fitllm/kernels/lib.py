"""Loading the compiled core (csrc/), its declared interface and the import-time ABI checks.

Every function Python calls is declared once in FUNCTIONS, with its C prototype (csrc/fitllm_api.h)
and named parameters; the constants and the layout of the structs Python mirrors are read from, or
checked against, the library when it is imported.
"""

from __future__ import annotations

import ctypes
import os
from ctypes import c_char_p, c_float, c_int, c_int64, c_size_t, c_uint64, c_void_p
from pathlib import Path

from threadpoolctl import threadpool_limits

# libgomp's threads spin 300,000 rounds at every barrier before they sleep; on a machine with other
# work a waiting thread burns the time slice its descheduled partner needs, and decode collapses.
# A bounded spin (as llama.cpp's --poll) keeps idle speed; libgomp reads it when it loads, below.
SPINCOUNT = "1000"
OWN_ENV: dict[str, str] = {}  # what fitllm put in os.environ (a benchmarked peer gets its own defaults)

# (name, restype, [(parameter, ctype), ...]): fitllm_api.h's FL_API functions, each once
# fmt: off
FUNCTIONS: list[tuple[str, type | None, list[tuple[str, type]]]] = [
    # int64_t fl_struct_layout(int which, int field)
    ("fl_struct_layout", c_int64, [("which", c_int), ("field", c_int)]),
    # int64_t fl_constant(const char *name, int *found)
    ("fl_constant", c_int64, [("name", c_char_p), ("found", c_void_p)]),
    # int fl_isa_supported(void)
    ("fl_isa_supported", c_int, []),
    # int fl_get_isa(void)
    ("fl_get_isa", c_int, []),
    # int fl_set_isa(int isa)
    ("fl_set_isa", c_int, [("isa", c_int)]),
    # int fl_batch_min_tokens(void)
    ("fl_batch_min_tokens", c_int, []),
    # size_t fl_row_bytes(int type, int64_t n)
    ("fl_row_bytes", c_size_t, [("type", c_int), ("n", c_int64)]),
    # int fl_dequantize(int type, const void *src, size_t src_bytes, int64_t nrows, int64_t ncols, float *dst,
    #                   int nthreads)
    ("fl_dequantize", c_int, [("type", c_int), ("src", c_void_p), ("src_bytes", c_size_t),
        ("nrows", c_int64), ("ncols", c_int64), ("dst", c_void_p), ("nthreads", c_int)]),
    # int fl_get_rows(int type, const void *w, size_t w_bytes, int64_t nrows, int64_t ncols,
    #                 const int32_t *ids, int64_t nids, float *dst)
    ("fl_get_rows", c_int, [("type", c_int), ("w", c_void_p), ("w_bytes", c_size_t), ("nrows", c_int64),
        ("ncols", c_int64), ("ids", c_void_p), ("nids", c_int64), ("dst", c_void_p)]),
    # int fl_quantize(int type, const float *x, int64_t nrows, int64_t ncols, uint8_t *out, size_t out_bytes,
    #                 int nthreads)
    ("fl_quantize", c_int, [("type", c_int), ("x", c_void_p), ("nrows", c_int64), ("ncols", c_int64),
        ("out", c_void_p), ("out_bytes", c_size_t), ("nthreads", c_int)]),
    # int fl_act_kind(int type)
    ("fl_act_kind", c_int, [("type", c_int)]),
    # size_t fl_act_row_bytes(int kind, int64_t n)
    ("fl_act_row_bytes", c_size_t, [("kind", c_int), ("n", c_int64)]),
    # int fl_quantize_act(int type, const float *x, int64_t T, int64_t n, void *out)
    ("fl_quantize_act", c_int, [("type", c_int), ("x", c_void_p), ("T", c_int64), ("n", c_int64),
        ("out", c_void_p)]),
    # int fl_matmul(int type, const void *w, size_t w_bytes, int64_t nrows, int64_t ncols, const float *x,
    #               int64_t T, float *y, int nthreads)
    ("fl_matmul", c_int, [("type", c_int), ("w", c_void_p), ("w_bytes", c_size_t), ("nrows", c_int64),
        ("ncols", c_int64), ("x", c_void_p), ("T", c_int64), ("y", c_void_p), ("nthreads", c_int)]),
    # int fl_rms_norm(const float *x, int64_t T, int64_t n, const float *w, int64_t w_n, float eps, float *y)
    ("fl_rms_norm", c_int, [("x", c_void_p), ("T", c_int64), ("n", c_int64), ("w", c_void_p),
        ("w_n", c_int64), ("eps", c_float), ("y", c_void_p)]),
    # size_t fl_layer_work_bytes(const fl_layer *L, int64_t T, int64_t n_ctx, int nthreads)
    ("fl_layer_work_bytes", c_size_t, [("L", c_void_p), ("T", c_int64), ("n_ctx", c_int64),
        ("nthreads", c_int)]),
    # int fl_layer_forward(const fl_layer *L, uint16_t *kc, uint16_t *vc, size_t kv_elems, int64_t n_ctx,
    #                      float *x, int64_t x_cols, int64_t T, int64_t pos0, int64_t n_out, float *y,
    #                      int stage, void *work, size_t work_bytes, int nthreads)
    ("fl_layer_forward", c_int, [("L", c_void_p), ("kc", c_void_p), ("vc", c_void_p),
        ("kv_elems", c_size_t), ("n_ctx", c_int64), ("x", c_void_p), ("x_cols", c_int64), ("T", c_int64),
        ("pos0", c_int64), ("n_out", c_int64), ("y", c_void_p), ("stage", c_int), ("work", c_void_p),
        ("work_bytes", c_size_t), ("nthreads", c_int)]),
    # int fl_forward_layers(const fl_layer *const *L, int64_t n, uint16_t *const *kc, uint16_t *const *vc,
    #                       size_t kv_elems, int64_t n_ctx, float *x, int64_t x_cols, int64_t T, int64_t pos0,
    #                       int64_t n_out, void *work, size_t work_bytes, int nthreads)
    ("fl_forward_layers", c_int, [("L", c_void_p), ("n", c_int64), ("kc", c_void_p), ("vc", c_void_p),
        ("kv_elems", c_size_t), ("n_ctx", c_int64), ("x", c_void_p), ("x_cols", c_int64), ("T", c_int64),
        ("pos0", c_int64), ("n_out", c_int64), ("work", c_void_p), ("work_bytes", c_size_t),
        ("nthreads", c_int)]),
    # size_t fl_packed_bytes(int type, int64_t nrows, int64_t ncols)
    ("fl_packed_bytes", c_size_t, [("type", c_int), ("nrows", c_int64), ("ncols", c_int64)]),
    # int fl_repack(int type, const void *src, size_t src_bytes, int64_t nrows, int64_t ncols, void *dst,
    #               size_t dst_bytes, int nthreads)
    ("fl_repack", c_int, [("type", c_int), ("src", c_void_p), ("src_bytes", c_size_t), ("nrows", c_int64),
        ("ncols", c_int64), ("dst", c_void_p), ("dst_bytes", c_size_t), ("nthreads", c_int)]),
    # int fl_repack_file(int fd, const fl_repack_job *jobs, int64_t njobs, int nthreads)
    ("fl_repack_file", c_int, [("fd", c_int), ("jobs", c_void_p), ("njobs", c_int64), ("nthreads", c_int)]),
    # int64_t fl_gguf_strings(const uint8_t *buf, size_t size, size_t off, int64_t n, int big_endian,
    #                         int64_t *starts, int64_t *lens)
    ("fl_gguf_strings", c_int64, [("buf", c_void_p), ("size", c_size_t), ("off", c_size_t), ("n", c_int64),
        ("big_endian", c_int), ("starts", c_void_p), ("lens", c_void_p)]),
    # uint64_t fl_read_sum(const uint8_t *buf, size_t n, int nthreads)
    ("fl_read_sum", c_uint64, [("buf", c_void_p), ("n", c_size_t), ("nthreads", c_int)]),
]
# fmt: on

REBUILD = "`pip install -e .` or `python setup.py build_ext --inplace`"
PARAMS: dict[str, list[str]] = {name: [p for p, _ in params] for name, _, params in FUNCTIONS}


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
    for name, restype, params in FUNCTIONS:
        try:
            fn = getattr(lib, name)
        except AttributeError:
            raise ImportError(f"fitllm's compiled kernels lack {name}: rebuild them ({REBUILD})") from None
        fn.argtypes = [t for _, t in params]
        fn.restype = restype
    return lib


_lib = _load()


def constant(name: str) -> int:
    """The value of one of the library's constants (fitllm_api.h), by its C name."""
    found = c_int(0)
    value = _lib.fl_constant(name.encode(), ctypes.addressof(found))
    if not found.value:
        raise ImportError(f"fitllm's compiled kernels have no constant {name}: rebuild them ({REBUILD})")
    return value


ISA_NAMES = {
    constant("FL_ISA_PORTABLE"): "portable",
    constant("FL_ISA_AVX2"): "avx2",
    constant("FL_ISA_AVX512VNNI"): "avx512-vnni",
}
ERRORS = {
    constant("FL_EBADTYPE"): "unsupported tensor type or width",
    constant("FL_ESIZE"): "buffer too small",
    constant("FL_EINDEX"): "index out of range",
    constant("FL_ENOMEM"): "out of memory",
    constant("FL_EFETCH"): "the experts could not be fetched",
    constant("FL_EIO"): "read error",
}
OK = constant("FL_OK")


def check(rc: int, what: str) -> None:
    if rc != OK:
        raise ValueError(f"{what}: {ERRORS.get(rc, rc)}")


def check_struct(cls: type[ctypes.Structure], which: str, c_name: str) -> None:
    """ImportError unless cls (a ctypes mirror) has the size and field offsets the library reports
    for struct `c_name` (FL_STRUCT_<which>), field for field in declaration order."""
    idx = constant(f"FL_STRUCT_{which}")
    fields = [f[0] for f in cls._fields_]
    for i, name in enumerate(fields):
        ours, theirs = getattr(cls, name).offset, _lib.fl_struct_layout(idx, i)
        if theirs < 0:
            raise ImportError(f"{cls.__name__} mirrors {c_name} with field {name} the library's struct lacks")
        if ours != theirs:
            raise ImportError(
                f"{cls.__name__} mirrors {c_name} with {name} at offset {ours}, the library's at {theirs}"
            )
    if _lib.fl_struct_layout(idx, len(fields)) >= 0:
        raise ImportError(f"{cls.__name__} mirrors {c_name} with {len(fields)} fields, the library has more")
    ours, theirs = ctypes.sizeof(cls), _lib.fl_struct_layout(idx, -1)
    if ours != theirs:
        raise ImportError(f"{cls.__name__} mirrors {c_name} in {ours} bytes, the library's takes {theirs}")


# numpy's BLAS only does the small attention products; its own spinning threads would fight the
# kernels' OpenMP threads for the cores
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
    if _lib.fl_set_isa(int(level)) != OK:
        raise ValueError(f"this CPU cannot run kernel path {ISA_NAMES.get(level, level)}")


if os.environ.get("FITLLM_ISA"):
    set_isa({v: k for k, v in ISA_NAMES.items()}.get(os.environ["FITLLM_ISA"], 0))

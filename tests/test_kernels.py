"""Compiled kernels against gguf-py (dequantization, bit-exact) and float64 numpy (matmul)."""

import os
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants

from fitllm import kernels as K
from fitllm.quant.activations import RECORD, dequantize_activations, quantize_activations

ALL = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]
# K-types: gguf-py cannot quantize them, so random blocks with finite fp16 scales (valid data)
K_SCALES = {
    T.Q2_K: (84, [80, 82]),
    T.Q3_K: (110, [108]),
    T.Q4_K: (144, [0, 2]),
    T.Q5_K: (176, [0, 2]),
    T.Q6_K: (210, [208]),
}
ISAS = list(range(K.isa_supported() + 1))


def make_weights(t, rows, cols, rng):
    if t in K_SCALES:
        size, offs = K_SCALES[t]
        b = rng.integers(0, 256, (rows, cols // 256, size), dtype=np.uint8)
        for off in offs:
            d = (rng.standard_normal((rows, cols // 256, 1)) * 0.01).astype(np.float16)
            b[..., off : off + 2] = d.view(np.uint8)
        return b.reshape(rows, -1)
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    return quants.quantize(x, t).view(np.uint8).reshape(rows, -1)


def act_reference(t, x):
    """The activations the product uses by the numpy spec, as float64 values."""
    a = quantize_activations(int(t), x)
    return a.astype(np.float64) if a.dtype != RECORD else dequantize_activations(a, x.shape)


@pytest.mark.parametrize("t", ALL, ids=lambda t: t.name)
def test_activations_bit_exact(t):  # every kernel path this CPU has
    x = np.random.default_rng(3).standard_normal((5, 512)).astype(np.float32) * 3
    x[1] = 0  # all-zero blocks
    x[2, :256] = -x[2, :256]  # a negative signed maximum (Q8_K)
    x[3, :32] = np.arange(32) - 15.5  # quants at ties (amax 15.5 -> x * 127 / 15.5), both signs
    x[3, 32:64] = np.r_[127, np.arange(31) + 0.5]  # amax 127: the quants x.5 round to even
    want = quantize_activations(int(t), x)
    for isa in range(K.isa_supported() + 1):  # portable, AVX2, AVX-512 where the CPU has them
        K.set_isa(isa)
        got = K.quantize_act(int(t), x)
        assert np.array_equal(got, want.view(np.uint8).reshape(-1)), K.ISA_NAMES[isa]


@pytest.fixture(autouse=True)
def restore_isa():
    yield
    K.set_isa(K.isa_supported())


@pytest.mark.parametrize("t", ALL, ids=lambda t: t.name)
def test_dequantize_bit_exact(t):
    rng = np.random.default_rng(int(t))
    w = make_weights(t, 48, 768, rng)
    ref = quants.dequantize(w, t).astype(np.float32)
    mine = K.dequantize(int(t), w, 48, 768)
    assert np.array_equal(ref.view(np.uint32), mine.view(np.uint32))
    ids = np.array([5, 0, 47, 5])
    assert np.array_equal(K.get_rows(int(t), w, 48, 768, ids), ref[ids])


@pytest.mark.parametrize("isa", ISAS, ids=lambda i: K.ISA_NAMES[i])
@pytest.mark.parametrize("t", ALL, ids=lambda t: t.name)
@pytest.mark.parametrize("n_tokens", [1, 7, 40])
def test_matmul(t, isa, n_tokens):
    K.set_isa(isa)
    rng = np.random.default_rng(100 + int(t))
    rows, cols = 70, 512  # rows not a multiple of the kernels' row tile
    w = make_weights(t, rows, cols, rng)
    wf = quants.dequantize(w, t).astype(np.float64)
    x = rng.standard_normal((n_tokens, cols)).astype(np.float32)
    y = K.matmul(int(t), w, rows, cols, x)
    exact = x.astype(np.float64) @ wf.T
    # llama.cpp's range for 8-bit activations against the exact product
    assert np.linalg.norm(y - exact) / np.linalg.norm(exact) < 1e-2
    # with the activations prepared as specified, only float rounding remains
    ref = act_reference(t, x) @ wf.T
    if t in (T.Q4_1, T.Q5_1):  # their offsets multiply Q8_1's fp16 sum s, not d * sum(q)
        a = quantize_activations(int(t), x).reshape(n_tokens, -1)
        m = w.reshape(rows, -1, {T.Q4_1: 20, T.Q5_1: 24}[t])[..., 2:4].copy().view(np.float16)[..., 0]
        ref += (a["s0"] - a["d"] * a["q"].sum(-1)).astype(np.float64) @ m.astype(np.float64).T
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_isa_paths_agree():
    rng = np.random.default_rng(7)
    w = make_weights(T.Q4_K, 33, 1024, rng)
    x = rng.standard_normal((3, 1024)).astype(np.float32)
    outs = []
    for isa in ISAS:
        K.set_isa(isa)
        outs.append(K.matmul(int(T.Q4_K), w, 33, 1024, x))
    for o in outs[1:]:
        np.testing.assert_allclose(o, outs[0], rtol=1e-5, atol=1e-5 * np.abs(outs[0]).max())


@pytest.mark.parametrize("t", [T.Q4_0, T.Q4_1, T.Q8_0, T.Q4_K, T.Q6_K], ids=lambda t: t.name)
def test_a_tokens_sums_depend_only_on_its_batch_side(t):
    """A token's product is bit-identical in every batch on the same side of batch_min_tokens()
    (the strip kernels from there on), whatever the thread count or where the rows fall."""
    rng = np.random.default_rng(3)
    rows, cols = 37, 512  # rows: two 16-row strips and a padded one
    w = make_weights(t, rows, cols, rng)
    x = rng.standard_normal((41, cols)).astype(np.float32)  # 41 tokens: tasks of 32 + 9
    lo = K.batch_min_tokens()
    threads = K.get_threads()
    try:
        for n in (1, 2):
            K.set_threads(n)
            big = K.matmul(int(t), w, rows, cols, x)
            for T_ in (max(lo, 1), 16, 33):
                assert np.array_equal(K.matmul(int(t), w, rows, cols, x[:T_]), big[:T_])
            small = K.matmul(int(t), w, rows, cols, x[: max(lo - 1, 1)])
            assert np.array_equal(K.matmul(int(t), w, rows, cols, x[:1]), small[:1])
    finally:
        K.set_threads(threads)


def test_sizes_are_checked():
    rng = np.random.default_rng(1)
    w = make_weights(T.Q4_0, 8, 64, rng)
    x = np.ones((1, 64), np.float32)
    with pytest.raises(ValueError, match="too small"):
        K.matmul(int(T.Q4_0), w[:7], 8, 64, x)
    with pytest.raises(ValueError, match="unsupported"):
        K.matmul(int(T.Q4_0), w, 8, 48, np.ones((1, 48), np.float32))  # 48 is not whole blocks
    with pytest.raises(ValueError, match="unsupported"):
        K.matmul(19, w, 8, 64, x)  # IQ1_S: no kernel
    with pytest.raises(ValueError, match="index"):
        K.get_rows(int(T.Q4_0), w, 8, 64, np.array([8]))
    with pytest.raises(ValueError):
        K.set_isa(99)


SIMD = [i for i in ISAS if i >= 1]  # the paths with strips: AVX2, AVX-512 VNNI


@pytest.mark.skipif(not SIMD, reason="repacked strips need AVX2 or AVX-512 VNNI")
@pytest.mark.parametrize("isa", SIMD, ids=K.ISA_NAMES.get)
@pytest.mark.parametrize("t", [T.Q4_0, T.Q4_1, T.Q5_0, T.Q8_0, T.Q4_K], ids=lambda t: t.name)
def test_repacked_matrix_sums_as_the_blocks_strips(t, isa, restore_isa):
    """A repacked matrix gives, for every batch size and thread count, the bits the blocks' own
    16-row strips give to batches of batch_min_tokens() or more (their arithmetic is the spec)."""
    K.set_isa(isa)
    assert K.batch_min_tokens() == 8
    rng = np.random.default_rng(11)
    # a padded last strip of more than one 8-row half (one token reads whole strips at once);
    # 18 groups of 32 (not a multiple of 64), or 3 K-quant blocks
    rows, cols = 45, 768 if t == T.Q4_K else 576
    w = make_weights(t, rows, cols, rng)
    packed = K.repack(int(t), w, rows, cols)
    d_dmin = 48 * 4 * cols // 256 if t == T.Q4_K else 0  # Q4_K's fp16 d, dmin per strip row and block
    assert packed is not None and packed.nbytes == 48 * w.nbytes // rows + d_dmin  # 3 strips of 16 rows
    x = rng.standard_normal((20, cols)).astype(np.float32)
    threads = K.get_threads()
    try:
        for n in (1, 2):
            K.set_threads(n)
            strips = K.matmul(int(t), w, rows, cols, x)  # 20 tokens: the blocks' strips
            for T_ in (1, 3, 4, 8, 20):
                got = K.matmul(int(t) | K.PACKED, packed, rows, cols, x[:T_])
                assert np.array_equal(got, strips[:T_]), (n, T_)
    finally:
        K.set_threads(threads)


@pytest.mark.skipif(K.isa_supported() < 1, reason="repacked strips need AVX2 or AVX-512 VNNI")
@pytest.mark.parametrize("t", [T.Q4_0, T.Q4_1, T.Q5_0, T.Q8_0, T.Q4_K], ids=lambda t: t.name)
def test_repacked_matrix_on_avx2(t):
    """The AVX2 strips: the VNNI strips' bits where the CPU has both, for every batch size and thread
    count, and everywhere the product of the activations as specified, up to float rounding."""
    rng = np.random.default_rng(12)
    rows, cols = 37, 768 if t == T.Q4_K else 576  # 8-row halves, the last two partial
    w = make_weights(t, rows, cols, rng)
    x = rng.standard_normal((20, cols)).astype(np.float32)
    K.set_isa(1)
    packed = K.repack(int(t), w, rows, cols)
    assert packed is not None
    ref = act_reference(t, x) @ quants.dequantize(w, t).astype(np.float64).T
    if t == T.Q4_1:  # its offsets multiply Q8_1's fp16 sum s, not d * sum(q)
        a = quantize_activations(int(t), x).reshape(20, -1)
        m = w.reshape(rows, -1, 20)[..., 2:4].copy().view(np.float16)[..., 0]
        ref += (a["s0"] - a["d"] * a["q"].sum(-1)).astype(np.float64) @ m.astype(np.float64).T
    threads = K.get_threads()
    try:
        for n in (1, 2):
            K.set_threads(n)
            for T_ in (1, 3, 4, 5, 20):
                K.set_isa(1)
                got = K.matmul(int(t) | K.PACKED, packed, rows, cols, x[:T_])
                np.testing.assert_allclose(got, ref[:T_], rtol=1e-4, atol=1e-4 * np.abs(ref).max())
                if K.isa_supported() >= 2:
                    K.set_isa(2)
                    assert np.array_equal(got, K.matmul(int(t) | K.PACKED, packed, rows, cols, x[:T_]))
    finally:
        K.set_threads(threads)


@pytest.mark.skipif(K.isa_supported() < 2, reason="compares AVX2 with AVX-512 VNNI")
@pytest.mark.parametrize("t", [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K], ids=lambda t: t.name)
def test_avx2_k_quants_sum_as_avx512(t, restore_isa):
    """AVX2's K-quant tiles give AVX-512's bits (below the strips' batch size): the offsets of Q3_K
    and Q6_K out of the integer sums, the mins per block, the same lanes. Gemma-3's outlier
    activations made AVX2's float offsets cancel and its perplexity drift from llama.cpp's."""
    rng = np.random.default_rng(13)
    rows, cols = 37, 768
    w = make_weights(t, rows, cols, rng)
    x = (rng.standard_normal((7, cols)) * np.exp(2 * rng.standard_normal(cols))).astype(np.float32)
    x[:, 5] = 3000.0  # an outlier channel, as Gemma-3's first token has
    for n in (1, 3, 4, 7):
        K.set_isa(1)
        got = K.matmul(int(t), w, rows, cols, x[:n])
        K.set_isa(2)
        assert np.array_equal(got, K.matmul(int(t), w, rows, cols, x[:n])), n


def test_repack_declines_what_it_has_no_kernel_for():
    rng = np.random.default_rng(2)
    assert K.repack(int(T.Q6_K), make_weights(T.Q6_K, 16, 256, rng), 16, 256) is None
    K.set_isa(0)  # a forced portable path keeps the blocks as they are
    assert K.repack(int(T.Q4_0), make_weights(T.Q4_0, 16, 64, rng), 16, 64) is None
    with pytest.raises(ValueError, match="unsupported"):  # a packed type whose width is not whole groups
        K.matmul(int(T.Q4_0) | K.PACKED, np.zeros(1024, np.uint8), 16, 48, np.ones((1, 48), np.float32))


@pytest.mark.parametrize("isa", ISAS, ids=lambda i: K.ISA_NAMES[i])
def test_read_sum_reads_every_word(isa):
    K.set_isa(isa)
    words = np.random.default_rng(5).integers(0, 2**63, 4096, dtype=np.uint64)  # 32 KiB: whole runs
    for threads in (1, 2):
        assert K.read_sum(words.view(np.uint8), threads) == int(words.sum(dtype=np.uint64))


def _gomp_view(env: dict) -> str:
    """libgomp's own settings, as the kernels' OpenMP runtime sees them after `import fitllm`."""
    code = "import ctypes, fitllm.kernels; ctypes.CDLL('libgomp.so.1').omp_display_env(1)"
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    cmd = [sys.executable, "-c", code]
    r = subprocess.run(cmd, env=clean | env, capture_output=True, text=True, check=True)
    return r.stderr + r.stdout


def test_openmp_spinning_is_bounded():
    # libgomp's default (300,000 spins a barrier) makes a busy machine decode 30-90x slower
    assert f"GOMP_SPINCOUNT = '{K.SPINCOUNT}'" in _gomp_view({})
    assert "GOMP_SPINCOUNT = '300000'" in _gomp_view({"GOMP_SPINCOUNT": "300000"})  # the user's choice stands
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in _gomp_view({"OMP_WAIT_POLICY": "active"})


def test_ctypes_mirrors_match_the_library():
    from fitllm.kernels import blocks, layer, lib

    for cls, which, c_name in (
        (layer.Mat, "MAT", "fl_mat"),
        (layer.Vec, "VEC", "fl_vec"),
        (layer.LayerSpec, "LAYER", "fl_layer"),
        (blocks.RepackJob, "REPACK_JOB", "fl_repack_job"),
    ):
        lib.check_struct(cls, which, c_name)  # what the import ran: no error
    assert K.PACKED == lib.constant("FL_PACKED") == 64
    assert (K.STAGE_ALL, K.STAGE_ATTN, K.STAGE_FFN, K.STAGE_DONE) == (0, 1, 2, 3)
    with pytest.raises(ImportError, match="no constant FL_NOPE"):
        lib.constant("FL_NOPE")


def test_a_wrong_struct_layout_fails_the_import_check(monkeypatch):
    import ctypes

    from fitllm.kernels import layer, lib

    fields = [(n, ctypes.c_int64 * 2 if n == "nbytes" else t) for n, t in layer.Mat._fields_]
    bad = type("Mat", (ctypes.Structure,), {"_fields_": fields})
    monkeypatch.setattr(layer, "Mat", bad)
    msg = r"^Mat mirrors fl_mat with type at offset 24, the library's at 16$"  # the field after the wrong one
    with pytest.raises(ImportError, match=msg):
        lib.check_struct(layer.Mat, "MAT", "fl_mat")
    short = type("Vec", (ctypes.Structure,), {"_fields_": layer.Vec._fields_[:1]})
    with pytest.raises(ImportError, match="Vec mirrors fl_vec with 1 fields, the library has more"):
        lib.check_struct(short, "VEC", "fl_vec")


def test_every_call_is_declared():
    from fitllm.kernels import lib

    names = [name for name, _, _ in lib.FUNCTIONS]
    assert len(names) == len(set(names))
    for name in names:
        fn = getattr(K._lib, name)
        assert fn.argtypes is not None and len(fn.argtypes) == len(lib.PARAMS[name])

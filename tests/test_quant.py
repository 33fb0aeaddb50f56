"""Quantizers (quant/quantize.py) against gguf-py's dequantizers and llama.cpp's error."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import quants

from fitllm.gguf.writer import GGUFStreamWriter
from fitllm.quant.quantize import OWN, quantize

# RMS error of llama.cpp's own quantizers (ggml_quantize_chunk of llama-cpp-python 0.3.36's
# libggml-base, no imatrix) on sample(); fitllm's measured 0.08491684, 0.04280897, 0.02093433
LLAMA_CPP_RMSE = {
    Q.Q2_K: 0.34895346,  # fitllm 0.35150895
    Q.Q3_K: 0.17837165,  # fitllm 0.17837165
    Q.Q4_K: 0.08423652,
    Q.Q5_K: 0.04274821,
    Q.Q6_K: 0.02093326,
}


def sample() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 1024)) * rng.uniform(0.1, 2, (64, 1))).astype(np.float32)
    x[3] = 0
    x[4, :300] = 1.5
    return x


# sha256 of llama.cpp's bytes for sample() (same source as LLAMA_CPP_RMSE): the compiled K quantizers
# (csrc/kquantize.c) write exactly these
LLAMA_CPP_SHA256 = {
    Q.Q2_K: "14bdc4c4f699d0ab1a767e302b74ede7a1b6ce50971b52e512701b7cf55c3c94",
    Q.Q3_K: "9d9c775d148629b16d9c371a39f19f5b2b37cb7d25f5163e70ee1eaff35101d4",
    Q.Q4_K: "8f679a956961383916eb91cee5732ca04073cbf28f15d854991ac99141f97f56",
    Q.Q5_K: "e886bd18c6dd540a4c2341caa6b828cca6a2479747e60a72b49e12838d4f64ee",
    Q.Q6_K: "365894219c7a0df063173991d4e89409ed97a4d0f09a0fbf3a08a757631a8456",
}


@pytest.mark.parametrize("t", list(LLAMA_CPP_SHA256))
def test_compiled_k_quantizers_are_llama_cpps_bytes(t):
    import hashlib

    from fitllm import kernels

    assert hashlib.sha256(kernels.quantize(int(t), sample()).tobytes()).hexdigest() == LLAMA_CPP_SHA256[t]


@pytest.mark.parametrize("numpy_spec", [False, True])
@pytest.mark.parametrize("t,size", [(Q.Q2_K, 84), (Q.Q3_K, 110), (Q.Q4_K, 144), (Q.Q5_K, 176), (Q.Q6_K, 210)])
def test_k_quant_error_is_llama_cpps(t, size, numpy_spec):
    # the compiled quantizer (where there is one) and the numpy statement of the algorithm
    x = sample()
    q = OWN[t](x) if numpy_spec else quantize(x, t)
    assert q.shape == (64, 1024 // 256 * size) and q.dtype == np.uint8
    back = quants.dequantize(q, t)
    assert np.sqrt(((back - x) ** 2).mean()) <= 1.01 * LLAMA_CPP_RMSE[t]
    assert (back[3] == 0).all()  # an all-zero row stays exactly zero


@pytest.mark.parametrize("t", [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.BF16, Q.F16, Q.F32])
def test_gguf_py_types_in_slices(t, monkeypatch):
    # the 32-element types run compiled (csrc/quantize.c): bit for bit gguf-py's, zero rows,
    # ties of magnitude and constant blocks included
    monkeypatch.setattr("fitllm.quant.quantize.CHUNK_ELEMENTS", 4096)  # many slices
    x = sample()
    x[5, :32], x[6, :32], x[7, :32] = -2.0, np.float32(1e-30), np.float32(0.5) * np.arange(32)
    x[8, :2] = [3.0, -3.0]  # equal magnitudes: the first one is the block's signed max
    plain = {Q.F16: np.float16, Q.F32: np.float32}
    ref = x.astype(plain[t]) if t in plain else quants.quantize(x, t)
    np.testing.assert_array_equal(quantize(x, t), ref)


def test_stream_writer_is_all_or_nothing(tmp_path):
    out = tmp_path / "m.gguf"
    with pytest.raises(RuntimeError):
        with GGUFStreamWriter(out, "llama") as w:
            w.declare("a.weight", (4, 32), Q.F32)
            w.begin()
            w.write("a.weight", np.zeros((2, 32), np.float32))
            raise RuntimeError("interrupted")
    assert not list(tmp_path.iterdir())
    with GGUFStreamWriter(out, "llama") as w:
        w.declare("a.weight", (4, 32), Q.F32)
        w.begin()
        for half in (np.zeros((2, 32), np.float32), np.ones((2, 32), np.float32)):
            w.write("a.weight", half)  # a tensor in slices
    from fitllm.gguf import GGUFFile

    t = GGUFFile(out).tensors["a.weight"]
    assert t.shape == (4, 32) and [p.name for p in tmp_path.iterdir()] == ["m.gguf"]

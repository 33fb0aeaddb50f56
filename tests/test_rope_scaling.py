"""RoPE scaling (llama3 frequency factors, linear, YaRN) as llama.cpp applies it: the compiled
block against the numpy reference on baby models, and against llama.cpp itself on SmolLM2 with the
scaling written into its metadata (llama.cpp reads the same keys)."""

import numpy as np
import pytest
from gguf import GGUFValueType as VT

from conftest import golden
from fitllm import Llama
from fitllm.gguf import GGUFError, GGUFFile
from fitllm.models import load_model
from fitllm.models.rope_scaling import corr_dims
from tiny_models import rewrite, write_tiny

# frequency divisors on every pair (llama3's are 1 on the fast pairs, where a short prompt would not
# show them)
FREQS = np.linspace(1.5, 8, 32).astype(np.float32)
SCALINGS = {
    "llama3": ({}, {"rope_freqs.weight": FREQS}),
    "linear": (
        {"llama.rope.scaling.type": ("linear", VT.STRING), "llama.rope.scaling.factor": (4.0, VT.FLOAT32)},
        {},
    ),
    "factor-only": ({"llama.rope.scaling.factor": (2.0, VT.FLOAT32)}, {}),  # llama.cpp: linear
    "yarn": (
        {
            "llama.rope.scaling.type": ("yarn", VT.STRING),
            "llama.rope.scaling.factor": (4.0, VT.FLOAT32),
            "llama.rope.scaling.original_context_length": (2048, VT.UINT32),
        },
        {},
    ),
}


def test_corr_dims_as_ggml():
    # ggml_rope_yarn_corr_dims(64, 2048, 10000, 32, 1) by hand: 64 ln(2048 / (32 2 pi)) / (2 ln 10000)
    # = 8.06 -> floor 8; 64 ln(2048 / (2 pi)) / (2 ln 10000) = 20.1 -> ceil 21
    assert corr_dims(64, 2048, 10000.0) == (8.0, 21.0)


@pytest.mark.parametrize("name", ["yarn", "linear"])
def test_compiled_scaling_matches_numpy_reference(name, tmp_path):
    kv, _ = SCALINGS[name]
    tiny = write_tiny(tmp_path / "t.gguf", "llama", n_layer=2)
    freqs = {"rope_freqs.weight": np.linspace(1, 4, 8).astype(np.float32)}
    m = load_model(GGUFFile(rewrite(tiny, tmp_path / "s.gguf", kv=kv, tensors=freqs)))
    plain = load_model(GGUFFile(tiny))
    toks = np.random.default_rng(2).integers(3, 64, 12)
    fast = m.forward(toks, m.new_cache(16), all_logits=True)
    ref = m.forward_reference(toks, m.new_cache(16), all_logits=True)
    np.testing.assert_allclose(fast, ref, rtol=2e-2, atol=2e-2 * np.abs(ref).max())
    assert not np.allclose(fast, plain.forward(toks, plain.new_cache(16), all_logits=True), atol=1e-3)


def test_unknown_scaling_type_is_refused(tmp_path):
    tiny = write_tiny(tmp_path / "t.gguf", "llama")
    bad = rewrite(tiny, tmp_path / "b.gguf", kv={"llama.rope.scaling.type": ("longrope", VT.STRING)})
    with pytest.raises(GGUFError, match=r"rope.scaling.type = 'longrope' is not implemented"):
        load_model(GGUFFile(bad))


PROMPT = (
    b"Rotary position embeddings rotate each pair of query and key dimensions by an angle that grows"
    b" with the position; scaling stretches those angles so that a model reaches further."
)


def _fitllm(path: str) -> np.ndarray:
    llm = Llama(path, n_ctx=256, n_threads=2, logits_all=True, verbose=False)
    toks = llm.tokenize(PROMPT)
    llm.eval(toks)
    return llm.scores[: len(toks)].copy()


def _at(logits: np.ndarray, g: dict) -> np.ndarray:
    """fitllm's logits at llama.cpp's 16 highest of each position."""
    return np.take_along_axis(logits, np.array(g["ids"]), -1)


def _rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(a.astype(np.float64) ** 2)))


@pytest.fixture(scope="module")
def unscaled(smollm2_path) -> np.ndarray:
    return _fitllm(smollm2_path)


@pytest.mark.parametrize("name", list(SCALINGS))
def test_scaled_smollm2_agrees_with_llama_cpp(name, smollm2_path, unscaled, tmp_path):
    """llama.cpp's 16 highest logits per position (tests/golden/rope_scaling.py): fitllm agrees with
    them on the scaled model as closely as on the unscaled one, where the scaling moves them far."""
    gold = golden("rope_scaling")
    g, g0 = gold[name], gold["none"]
    baseline = _rms(_at(unscaled, g0) - np.array(g0["logits"]))
    kv, tensors = SCALINGS[name]
    ours = _fitllm(rewrite(smollm2_path, tmp_path / f"{name}.gguf", kv=kv, tensors=tensors))
    theirs = np.array(g["logits"])
    assert _rms(_at(unscaled, g) - theirs) > 3 * baseline  # the scaling changes llama.cpp's logits
    assert _rms(_at(ours, g) - theirs) <= 1.5 * baseline
    clear = theirs[:, 0] - theirs[:, 1] >= 2 * baseline  # not a tie at the unscaled model's agreement
    assert (ours.argmax(-1) == np.array(g["ids"])[:, 0])[clear].all()

"""Real models against llama.cpp (golden data), and baby models per architecture."""

import numpy as np
import pytest

from conftest import golden
from fitllm import kernels
from fitllm.generate import decode_step, prefill
from fitllm.gguf import GGUFFile
from fitllm.kv_cache import ContextFullError
from fitllm.models import load_model
from tiny_models import upcycle, write_tiny

# Near-tie margin. The issue asks for 0.05, but llama.cpp fails that against itself: on the
# teacher-forced text below, llama.cpp with flash attention on (vs off, which made the golden data)
# flips the top-1 at margins up to 0.389 (SmolLM2, 94.3 % agreement) and 0.293 (Gemma, 97.4 %);
# with n_batch 7 instead of 512, Gemma flips at up to 0.166 (95.6 %). 8-bit activation rounding
# turns any difference in float summation order into noise of that size (fitllm's compiled path is
# bit-identical to llama.cpp through the first layers, then parts by float order). Measured with
# tests/golden/self_noise.py. 0.4 is above llama.cpp's own noise.
MARGIN = 0.4
MIN_AGREEMENT = 0.92  # llama.cpp against itself: 94.3 % (SmolLM2, FA on/off), 95.6 % (Gemma, n_batch 7)


@pytest.fixture(scope="module")
def models(model_paths):
    return {k: load_model(GGUFFile(p)) for k, p in model_paths.items()}


@pytest.mark.parametrize("name", ["smollm2", "gemma"])
def test_greedy_matches_llama_cpp(name, models):
    model = models[name]
    for case in golden(name)["greedy"]:
        kv = model.new_cache(256)
        logits = prefill(model, kv, case["prompt_tokens"])
        for step, (want, margin) in enumerate(zip(case["tokens"], case["margins"])):
            got = int(np.argmax(logits))
            if margin < MARGIN:
                break  # past a near tie two correct engines may part ways
            assert got == want, f"{case['prompt']!r}: step {step} gave {got}, llama.cpp {want}"
            logits = decode_step(model, kv, want)


@pytest.mark.parametrize("name", ["smollm2", "gemma"])
def test_teacher_forced_top1(name, models):
    g = golden(name)["teacher"]
    model = models[name]
    assert len(g["tokens"]) >= 200
    logits = prefill(model, model.new_cache(512), g["tokens"], all_logits=True)
    top1 = logits.argmax(-1)
    sure = np.array(g["margins"]) >= MARGIN
    bad = np.flatnonzero(sure & (top1 != np.array(g["top1"])))
    assert bad.size == 0, f"top-1 differs from llama.cpp at positions {bad.tolist()}"
    assert (top1 == np.array(g["top1"])).mean() >= MIN_AGREEMENT


# baby models: name -> (architecture, write_tiny options)
BABIES = {
    "llama": ("llama", {}),
    "qwen2": ("qwen2", {}),
    "gemma3": ("gemma3", {"sliding_window_pattern": 2}),
    "mixtral": ("llama", {"n_expert": 4}),
    "grok": ("grok", {}),
}


def baby(name, tmp_path, **kw):
    arch, opts = BABIES[name]
    return load_model(GGUFFile(write_tiny(tmp_path / f"{name}.gguf", arch, **{**opts, **kw})))


@pytest.mark.parametrize("arch", BABIES)
def test_baby_cache_equals_no_cache(arch, tmp_path):
    model = baby(arch, tmp_path)
    toks = np.random.default_rng(0).integers(3, 64, 12)
    full = prefill(model, model.new_cache(32), toks, all_logits=True)
    # without all_logits the last layer's feed-forward runs for the last token only (a batch of 1,
    # under kernels.batch_min_tokens(): float sums in another order)
    last = prefill(model, model.new_cache(32), toks)
    np.testing.assert_allclose(last, full[-1], rtol=1e-5, atol=1e-5 * np.abs(full).max())
    kv = model.new_cache(32)
    inc = [prefill(model, kv, toks[:5], all_logits=True)]
    inc += [decode_step(model, kv, t)[None] for t in toks[5:]]
    # batches and single tokens take different kernel tiles: float summation order, then fp16
    # rounding points (GELU table, q, softmax weights) can flip by one ulp
    np.testing.assert_allclose(np.concatenate(inc), full, rtol=1e-3, atol=1e-3 * np.abs(full).max())


def test_qwen2_biases_are_used(tmp_path):
    q = load_model(GGUFFile(write_tiny(tmp_path / "q.gguf", "qwen2")))
    assert q.blk[0].attn_q.bias is not None
    toks = np.array([5, 6, 7])
    with_bias = prefill(q, q.new_cache(8), toks)
    for b in q.blk:  # in place: the compiled specs point at these arrays
        b.attn_q.bias[:] = b.attn_k.bias[:] = b.attn_v.bias[:] = 0
    assert not np.allclose(with_bias, prefill(q, q.new_cache(8), toks), atol=1e-4)


@pytest.mark.parametrize("isa", range(kernels.isa_supported() + 1), ids=lambda i: kernels.ISA_NAMES[i])
@pytest.mark.parametrize("arch", BABIES)
def test_compiled_block_matches_numpy_reference(arch, isa, tmp_path):
    kernels.set_isa(isa)
    model = baby(arch, tmp_path, n_layer=4)
    toks = np.random.default_rng(1).integers(3, 64, 10)
    fast = model.forward(toks, model.new_cache(16), all_logits=True)
    ref = model.forward_reference(toks, model.new_cache(16), all_logits=True)
    # the compiled path rounds q and the softmax weights to fp16 as llama.cpp does; numpy does not
    kernels.set_isa(kernels.isa_supported())
    np.testing.assert_allclose(fast, ref, rtol=2e-2, atol=2e-2 * np.abs(ref).max())


def test_compiled_block_checks_sizes(tmp_path):
    m = load_model(GGUFFile(write_tiny(tmp_path / "l.gguf", "llama")))
    spec, kv = m.spec(0, m.blk[0]), m.new_cache(4)
    x = np.zeros((3, m.hp.n_embd), np.float32)
    with pytest.raises(ValueError, match="buffer too small"):
        kernels.layer_forward(spec, kv.k[0], kv.v[0], x, 2)  # positions 2..4 in a cache of 4
    spec.q.nbytes -= 1  # a weight shorter than its shape says
    with pytest.raises(ValueError, match="buffer too small"):
        kernels.layer_forward(spec, kv.k[0], kv.v[0], x, 0)


def test_gemma3_sliding_window(tmp_path):
    # every layer windowed (pattern 0), window 4, 2 layers: a token reaches at most 6 positions on
    m = load_model(GGUFFile(write_tiny(tmp_path / "g.gguf", "gemma3", sliding_window_pattern=0)))
    assert all(m.is_swa(i) for i in range(m.hp.n_layer))
    a, b = np.array([5, 6, 7, 8, 9, 10, 11, 12]), np.array([40, 6, 7, 8, 9, 10, 11, 12])
    la, lb = prefill(m, m.new_cache(16), a), prefill(m, m.new_cache(16), b)
    np.testing.assert_allclose(la, lb, atol=1e-5)  # position 7 cannot see position 0
    g = load_model(GGUFFile(write_tiny(tmp_path / "g6.gguf", "gemma3", n_layer=6)))  # layer 5 is global
    assert not np.allclose(prefill(g, g.new_cache(16), a), prefill(g, g.new_cache(16), b), atol=1e-5)


def test_context_full(tmp_path):
    m = load_model(GGUFFile(write_tiny(tmp_path / "l.gguf", "llama")))
    kv = m.new_cache(4)
    prefill(m, kv, [3, 4, 5, 6])
    with pytest.raises(ContextFullError, match="context is full"):
        decode_step(m, kv, 7)


@pytest.fixture(scope="module")
def upcycled(smollm2_path, tmp_path_factory):
    d = tmp_path_factory.mktemp("moe")
    return upcycle(smollm2_path, d / "moe.gguf"), upcycle(smollm2_path, d / "noisy.gguf", noise=0.05)


def test_moe_with_identical_experts_is_the_dense_model(smollm2_path, upcycled):
    # SmolLM2's MLP copied into 4 experts, top-2 of a random router, gates renormalised: the MoE is
    # the dense model up to y*g0 + y*g1 rounding one ulp away from y (llama.cpp: 0.7 max logit
    # difference at Q8_0), so the bar is llama.cpp's own self-noise, as for the golden tests
    toks = np.array(golden("smollm2")["teacher"]["tokens"][:96])
    dense, moe = load_model(GGUFFile(smollm2_path)), load_model(GGUFFile(upcycled[0]))
    assert moe.hp.n_expert == 4 and hasattr(moe.blk[0], "ffn_gate_exps")
    a = dense.forward(toks, dense.new_cache(128), all_logits=True)
    b = moe.forward(toks, moe.new_cache(128), all_logits=True)
    s = np.sort(a, axis=-1)
    sure = s[:, -1] - s[:, -2] >= MARGIN
    same = b.argmax(-1) == a.argmax(-1)
    assert same[sure].all() and same.mean() >= MIN_AGREEMENT
    noisy = load_model(GGUFFile(upcycled[1]))
    c = noisy.forward(toks, noisy.new_cache(128), all_logits=True)
    assert np.abs(c - a).max() > 1.0  # with perturbed experts the routing matters
    ref = noisy.forward_reference(toks[:24], noisy.new_cache(32), all_logits=True)
    assert (ref.argmax(-1) == c[:24].argmax(-1)).mean() >= 0.9

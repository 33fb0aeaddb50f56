"""The llama-cpp-python-shaped API on the real SmolLM2 model."""

import os
import time

import numpy as np
import pytest

from conftest import golden
from fitllm import Llama
from fitllm import kernels as K


@pytest.fixture(scope="module")
def llm(smollm2_path):
    return Llama(model_path=smollm2_path, n_ctx=512, n_batch=126, verbose=False)


def test_readme_snippet(llm):
    out = llm(
        "Q: Name the planets in the solar system? A: ",
        max_tokens=64,
        temperature=0.1,
        top_p=0.5,
        echo=False,
        stop=["#"],
    )
    assert out["object"] == "text_completion" and out["id"].startswith("cmpl-")
    choice = out["choices"][0]
    assert set(choice) == {"text", "index", "logprobs", "finish_reason"}
    assert choice["text"] and "#" not in choice["text"]
    assert choice["finish_reason"] in ("stop", "length")
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]


def test_stream_equals_whole_for_greedy(llm):
    kw = dict(max_tokens=24, temperature=0.0)
    whole = llm("def add(a, b):", **kw)["choices"][0]["text"]
    chunks = list(llm("def add(a, b):", stream=True, **kw))
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole
    assert chunks[-1]["choices"][0]["finish_reason"] is not None


def test_greedy_text_matches_llama_cpp_tokens(llm):
    case = golden("smollm2")["greedy"][0]
    out = llm(case["prompt"], max_tokens=8, temperature=0.0)
    assert out["choices"][0]["text"] == llm.detokenize(case["tokens"][:8]).decode()


def test_stop_and_echo(llm):
    out = llm("1, 2, 3, 4,", max_tokens=20, temperature=0.0, stop=[" 7"], echo=True)
    text = out["choices"][0]["text"]
    assert (
        text.startswith("1, 2, 3, 4,") and " 7" not in text and out["choices"][0]["finish_reason"] == "stop"
    )


def test_tokenize_detokenize(llm):
    ids = llm.tokenize(b"Hello world")
    assert llm.detokenize(ids) == b"Hello world"
    assert llm.tokenize(b"<|im_start|>", add_bos=False, special=True) == [1]


def test_eval_scores_reset(smollm2_path):
    llm = Llama(model_path=smollm2_path, n_ctx=64, logits_all=True, verbose=False)
    toks = llm.tokenize(b"The capital of France is")
    llm.eval(toks)
    assert llm.n_tokens == len(toks) and llm.scores.shape == (64, llm.n_vocab())
    first = llm.scores[: len(toks)].copy()
    llm.reset()
    for t in toks:  # one by one: same logits within 8-bit activation noise
        llm.eval([t])
    np.testing.assert_allclose(llm.scores[: len(toks)], first, atol=1.0)
    assert (llm.scores[: len(toks)].argmax(1) == first.argmax(1)).mean() > 0.8


def test_prompt_too_long(smollm2_path):
    llm = Llama(model_path=smollm2_path, n_ctx=16, verbose=False)
    with pytest.raises(ValueError, match="exceed context window"):
        llm("word " * 40, max_tokens=4)
    out = llm("Hi", max_tokens=100, temperature=0.0)  # stops at the context end, no error
    assert out["usage"]["total_tokens"] <= 16


def test_token_ids_out_of_range_are_refused(llm):
    n = llm.n_vocab()
    for bad in (2**40, n, -1):
        msg = f"token id {bad} out of range \\[0, {n}\\)"
        with pytest.raises(ValueError, match=msg):
            llm.create_completion([1, bad], max_tokens=1)
        with pytest.raises(ValueError, match=msg):
            llm.eval([bad])
    assert llm.create_completion([1, n - 1], max_tokens=1)["usage"]["prompt_tokens"] == 2


def test_stopping_criteria_end_generation(llm):
    seen = []

    def after_three(input_ids: np.ndarray, logits: np.ndarray) -> bool:
        seen.append((len(input_ids), logits.shape))
        return len(seen) > 3

    r = llm.create_completion("1, 2, 3,", max_tokens=50, temperature=0, stopping_criteria=after_three)
    assert r["usage"]["completion_tokens"] == 3 and r["choices"][0]["finish_reason"] == "stop"
    n = r["usage"]["prompt_tokens"]
    assert seen == [(n + i, (llm.n_vocab(),)) for i in range(4)]


def test_a_prompt_too_long_to_fit_is_refused_untokenized(llm):
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"Requested tokens \(at least \d+\) exceed context window of 512"):
        llm.create_completion("word " * 2_000_000, max_tokens=1)  # 10 MB: a minute to tokenize
    with pytest.raises(ValueError, match="exceed context window of 512"):
        llm.create_chat_completion([{"role": "user", "content": "word " * 2_000_000}], max_tokens=1)
    assert time.perf_counter() - t0 < 2


@pytest.fixture
def isa():
    yield
    K.set_isa(K.isa_supported())


@pytest.mark.parametrize("path", [p for p in (1, 2) if p <= K.isa_supported()], ids=K.ISA_NAMES.get)
def test_repacked_weights_decode_as_prompt_batches(smollm2_path, tmp_path, monkeypatch, isa, path):
    # repacked (the default with AVX2 or AVX-512 VNNI), a token's logits are the same bits one by one
    # as in a prompt batch, and those of the file's own blocks in batches of batch_min_tokens() or
    # more; a second load reads the strips the first one cached
    K.set_isa(path)
    monkeypatch.setenv("FITLLM_CACHE", str(tmp_path))
    toks = list(range(300, 312))  # 12 tokens: one batch over the strips' threshold
    llm = Llama(model_path=smollm2_path, n_ctx=32, logits_all=True, verbose=False)
    assert llm._model.output.weight.ggml_type & K.PACKED  # the tied output too, as its own copy
    assert not llm._model.token_embd.weight.ggml_type & K.PACKED  # the embedding rows stay in the file
    llm.eval(toks)
    batch = llm.scores[: len(toks)].copy()
    llm.reset()
    for t in toks:
        llm.eval([t])
    assert np.array_equal(llm.scores[: len(toks)], batch)
    for _ in range(100):  # the cache is written after the copy, beside the model's use
        if list(tmp_path.glob("packed/*.bin")):
            break
        time.sleep(0.05)
    (cached,) = tmp_path.glob("packed/*.bin")
    repacks, repack_file = [], K.repack_file
    monkeypatch.setattr(K, "repack_file", lambda *a: repacks.append(1) or repack_file(*a))
    again = Llama(model_path=smollm2_path, n_ctx=32, logits_all=True, verbose=False)
    again.eval(toks)
    assert np.array_equal(again.scores[: len(toks)], batch) and not repacks  # read from the cache
    cached.write_bytes(b"short")  # a damaged entry is made again
    Llama(model_path=smollm2_path, n_ctx=32, verbose=False).eval(toks[:1])
    assert repacks == [1]
    monkeypatch.setenv("FITLLM_REPACK", "0")
    blocks = Llama(model_path=smollm2_path, n_ctx=32, logits_all=True, verbose=False)
    blocks.eval(toks)
    assert np.array_equal(blocks.scores[: len(toks)], batch)


def test_strip_cache_keeps_the_recently_used(tmp_path):
    from fitllm.models.repack import _evict

    for i, age in enumerate([50, 10, 30, 20]):  # seconds since last use
        p = tmp_path / f"{i}.bin"
        p.write_bytes(b"x" * 1000)
        os.utime(p, (time.time() - age,) * 2)
    _evict(tmp_path, 2500)
    assert sorted(p.name for p in tmp_path.glob("*.bin")) == ["1.bin", "3.bin"]


def test_metadata_as_llama_cpp_python_gives_it(smollm2_path):
    md = Llama(model_path=smollm2_path, verbose=False).metadata
    assert md["general.architecture"] == "llama" and md["llama.block_count"] == "30"
    assert "tokenizer.ggml.tokens" not in md and "tokenizer.ggml.merges" not in md  # arrays left out

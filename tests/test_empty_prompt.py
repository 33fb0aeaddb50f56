"""An empty prompt starts from BOS (as llama.cpp and llama-cpp-python do) through the API, `fitllm
run` and the server, and never continues from what an earlier request left in the cache."""

import subprocess
import sys

import numpy as np
import pytest
from starlette.testclient import TestClient

from fitllm.api import Llama
from fitllm.server import Server
from tiny_models import write_tiny

GREEDY = dict(max_tokens=8, temperature=0)


@pytest.fixture(scope="module")
def llm(smollm2_path):
    return Llama(smollm2_path, n_ctx=256, verbose=False)


@pytest.fixture(scope="module")
def from_bos(smollm2_path) -> str:
    """What a fresh model writes after BOS alone, greedily."""
    fresh = Llama(smollm2_path, n_ctx=256, verbose=False)
    return fresh.create_completion([fresh.token_bos()], **GREEDY)["choices"][0]["text"]


@pytest.fixture(scope="module")
def no_bos_model(tmp_path_factory) -> str:
    return write_tiny(tmp_path_factory.mktemp("nobos") / "nobos.gguf", "llama", bos=False)


def fitllm(*args, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "fitllm", *args], capture_output=True, text=True, input=stdin, timeout=300
    )


def test_empty_prompt_starts_from_bos(llm, from_bos):
    assert from_bos  # BOS alone has something to say
    for prompt in ("", []):
        llm.reset()
        r = llm.create_completion(prompt, **GREEDY)
        assert r["choices"][0]["text"] == from_bos
        assert r["usage"]["prompt_tokens"] == 1
    llm.reset()
    chunks = llm.create_completion("", stream=True, **GREEDY)
    assert "".join(c["choices"][0]["text"] for c in chunks) == from_bos
    # sampled, not only greedy: this one indexed the missing logits
    assert isinstance(llm.create_completion("", max_tokens=4, seed=1)["choices"][0]["text"], str)


def test_empty_prompt_after_another_does_not_continue_it(llm, from_bos):
    llm.create_completion("The capital of France is", **GREEDY)
    assert llm.create_completion("", **GREEDY)["choices"][0]["text"] == from_bos
    # and the cache it leaves is sound for the next prompt
    after = llm.create_completion("Hello", **GREEDY)["choices"][0]["text"]
    llm.reset()
    assert after == llm.create_completion("Hello", **GREEDY)["choices"][0]["text"]


def test_eval_of_nothing_changes_nothing(llm):
    # llama-cpp-python's eval([]) is a no-op; the state (and the logits) stay the previous prompt's
    llm.eval(llm.tokenize(b"Hello"))
    ids, logits = list(llm.input_ids), llm._last_logits.copy()
    llm.eval([])
    assert llm.input_ids == ids and np.array_equal(llm._last_logits, logits)
    with pytest.raises(ValueError, match="no tokens"):
        llm._eval_prompt([])


def test_empty_prompt_without_bos_is_a_clear_error(no_bos_model):
    tiny = Llama(no_bos_model, n_ctx=64, verbose=False)
    assert tiny.token_bos() == -1
    with pytest.raises(ValueError, match="no BOS token"):
        tiny.create_completion("", max_tokens=2)
    r = fitllm("run", "-m", no_bos_model, "-p", "", "-n", "2")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "fitllm: error: the prompt is empty and the model has no BOS token to start from"
    ]


@pytest.mark.e2e
def test_cli_run_with_an_empty_prompt(smollm2_path):
    r = fitllm("run", "-m", smollm2_path, "-p", "", "-n", "6", "--seed", "1", "-c", "128")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.e2e
def test_cli_interactive_without_a_prompt(smollm2_path):
    args = ("run", "-m", smollm2_path, "-i", "-r", "User:", "-n", "6", "--seed", "1", "-c", "256")
    r = fitllm(*args, stdin="Hello\n")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and r.stdout.count("User:") == 2  # a turn, then EOF


@pytest.mark.e2e
def test_server_empty_prompt_after_another_request(smollm2_path, from_bos):
    server = Server(Llama(smollm2_path, n_ctx=256, verbose=False), parallel=1)
    with TestClient(server.app()) as client:

        def complete(prompt: str) -> str:
            r = client.post("/v1/completions", json={"prompt": prompt, **GREEDY})
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["text"]

        first = complete("The capital of France is")
        assert complete("") == from_bos != first

"""The server against clients that leave, send bad numbers, or send slowly or too much: each is
refused or dropped within a bound, and the server keeps answering and keeps its memory."""

import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from fitllm.api import Llama
from fitllm.server import Server, app
from test_server import health_latency, start
from tiny_models import write_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return write_tiny(tmp_path_factory.mktemp("srv") / "tiny.gguf", "llama")


@pytest.fixture(scope="module")
def client(tiny):
    return TestClient(Server(Llama(tiny, n_ctx=128, verbose=False)).app(), raise_server_exceptions=False)


@pytest.mark.e2e
def test_a_client_that_leaves_frees_its_slot(smollm2_path, caplog):
    """A non-streaming request given up by its client stops at once: the next one on a
    one-slot server does not wait for the abandoned one's 1000 tokens."""
    url, u = start(Server(Llama(smollm2_path, n_ctx=4096, verbose=False), parallel=1))
    body = {"prompt": "1, 2, 3, 4, 5, 6, 7, 8,", "max_tokens": 4000, "temperature": 0}
    with caplog.at_level(logging.INFO, logger="fitllm.server"):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/completions", json=body, timeout=1)
        left = time.time()
        r = httpx.post(url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 1}, timeout=60)
        waited = time.time() - left
    u.should_exit = True
    assert r.status_code == 200 and waited < 5, waited
    stopped = [rec for rec in caplog.records if "the client left" in rec.getMessage()]
    assert len(stopped) == 1, caplog.messages
    # stopped soon after the client went (at any decode speed), far short of the 4000 tokens
    assert stopped[0].created - left < 2.0
    assert int(re.search(r"after (\d+) tokens", stopped[0].getMessage())[1]) < 2000


@pytest.mark.parametrize("value", [0, -1, "16", 1.5, True])
def test_max_tokens_below_one_or_not_an_integer_is_400(client, value):
    for path, body in (("/v1/completions", {"prompt": "ab"}), ("/v1/chat/completions", {"messages": []})):
        body = {**body, "messages": [{"role": "user", "content": "ab"}], "max_tokens": value}
        r = client.post(path, json=body)
        assert r.status_code == 400, r.text
        assert "'max_tokens' must be a int in [1, 128]" == r.json()["error"]["message"]
    r = client.post("/v1/completions", json={"prompt": "ab", "max_completion_tokens": 0})
    assert r.status_code == 400 and "max_completion_tokens" in r.text


def test_token_ids_out_of_range_are_400(client):
    for ids in ([1, 2**40], [1, 64], [-1], [2**70]):
        r = client.post("/v1/completions", json={"prompt": ids, "max_tokens": 1})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["message"] == f"token id {ids[-1]} out of range [0, 64)"
    r = client.post("/v1/completions", json={"prompt": [5], "max_tokens": 1})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 1


def test_internal_errors_and_others_say_nothing_of_the_inside(client, tiny, monkeypatch, caplog):
    secret = f"{Path(tiny).parent}/ internals"

    def fail(*a, **kw):
        raise RuntimeError(secret)

    monkeypatch.setattr(Llama, "create_completion", fail)
    monkeypatch.setattr(app, "PAGE", Path(tiny).parent / "missing.html")  # the page fails to load
    generic = {
        "error": {"message": "internal server error", "type": "server_error", "param": None, "code": None}
    }
    with caplog.at_level(logging.ERROR, logger="fitllm.server"):
        for r in (client.post("/v1/completions", json={"prompt": "ab"}), client.get("/")):
            assert r.status_code == 500 and r.json() == generic
    assert secret in caplog.text and "missing.html" in caplog.text  # the log has them
    monkeypatch.undo()
    where = str(Path(tiny).parent)  # nor does any other response name the model's file
    gets = [client.get(p) for p in ("/", "/health", "/v1/models", "/props", "/../../etc")]
    posts = [client.post("/v1/completions", json={"prompt": p}) for p in ("a" * 500, 3, [99])]
    for r in gets + posts:
        assert where not in r.text and "tiny.gguf" not in r.text, r.text


@pytest.mark.e2e
def test_slow_request_heads_and_bodies_are_dropped(tiny):
    url, u = start(Server(Llama(tiny, n_ctx=64, verbose=False), timeout=1))
    port = int(url.rsplit(":", 1)[1])
    try:
        # a partial request line and headers, then nothing
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            t0 = time.perf_counter()
            assert s.recv(100) == b"" and 0.5 < time.perf_counter() - t0 < 3
        # a byte at a time does not put the deadline off
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            t0 = time.perf_counter()
            with pytest.raises(OSError):
                for b in b"GET /health HTTP/1.1\r\nX-Slow: " + b"a" * 100:
                    s.send(bytes([b]))
                    time.sleep(0.1)
            assert time.perf_counter() - t0 < 3
        # a whole head, and a body that never comes: 408
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{")
            t0 = time.perf_counter()
            assert s.recv(1000).startswith(b"HTTP/1.1 408 ") and time.perf_counter() - t0 < 3
        assert httpx.get(url + "/health").status_code == 200  # and a prompt one is answered
    finally:
        u.should_exit = True


def vm_rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status)[1]) << 10


@pytest.mark.e2e
def test_big_bodies_are_refused_before_they_are_read(tiny):
    """30 prompts of 5 MB against `fitllm serve` (1 MiB limit): each 413, /health answering
    throughout, and the server's memory as it was."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "fitllm",
        "serve",
        "-m",
        tiny,
        "-c",
        "128",
        "--port",
        str(port),
        "--no-access-log",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    server = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                httpx.get(url + "/health")
                break
            except httpx.TransportError:
                assert time.time() < deadline and server.poll() is None, "the server did not start"
                time.sleep(0.2)
        # encoded once: the client's own work would slow the /health poll in this process
        big = json.dumps({"prompt": "ab " * ((5 << 20) // 3), "max_tokens": 1}).encode()
        # under the body limit, over the context: refused by its length (300 kB), or tokenized
        long = [{"prompt": "ab " * n, "max_tokens": 1} for n in (100_000, 100)]
        ok = {"prompt": "ab", "max_tokens": 2}

        def refused_within() -> None:
            for body in long:
                r = httpx.post(url + "/v1/completions", json=body, timeout=60)
                assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"

        for _ in range(3):  # warm: every allocator pool and cache filled
            assert httpx.post(url + "/v1/completions", json=ok).status_code == 200
            refused_within()
        before = vm_rss(server.pid)
        with health_latency(url) as worst:
            refused_within()  # tokenized off the event loop
            for _ in range(30):
                r = httpx.post(url + "/v1/completions", content=big, timeout=60)
                assert r.status_code == 413 and "over 1048576 bytes" in r.json()["error"]["message"]
        after = vm_rss(server.pid)
        print(f"rss before {before >> 20} MiB, after {after >> 20} MiB; /health at worst {worst[0]:.3f} s")
        assert after < 1.1 * before and worst[0] < 0.5
    finally:
        server.terminate()
        server.wait(10)

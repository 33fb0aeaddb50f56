"""`fitllm serve` against the real `openai` client on loopback: the endpoints, errors, concurrency,
a client leaving mid-stream, a full queue, and many requests without memory growth."""

import json
import logging
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import openai
import pytest
import uvicorn

from fitllm.api import Llama
from fitllm.server import Server

pytestmark = pytest.mark.e2e
KEY = "sk-test"
CHAT = [{"role": "user", "content": "What is 2+2?"}]


def start(server: Server) -> tuple[str, uvicorn.Server]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    u = uvicorn.Server(server.config("127.0.0.1", port))
    threading.Thread(target=u.run, daemon=True).start()
    deadline = time.time() + 30
    while not u.started:
        assert time.time() < deadline, "the server did not start"
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", u


@contextmanager
def health_latency(url: str) -> Iterator[list[float]]:
    """Poll /health while the block runs; yields [the slowest answer's seconds], final on exit."""
    worst, done = [0.0], threading.Event()
    http = httpx.Client(timeout=5)  # one client: a new one per request would time TLS setup too

    def poll() -> None:
        while not done.is_set():
            t0 = time.perf_counter()
            assert http.get(url + "/health").status_code == 200
            worst[0] = max(worst[0], time.perf_counter() - t0)
            time.sleep(0.02)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        yield worst
    finally:
        done.set()
        poller.join()
        http.close()


@pytest.fixture(scope="module")
def served(smollm2_path):
    server = Server(Llama(smollm2_path, n_ctx=512, verbose=False), api_key=KEY, parallel=2, queue=32)
    url, u = start(server)
    yield url, server
    u.should_exit = True


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served[0] + "/v1", api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def reference(smollm2_path):
    llm = Llama(smollm2_path, n_ctx=512, verbose=False)
    chat = llm.create_chat_completion(CHAT, max_tokens=24, temperature=0)["choices"][0]["message"]["content"]
    text = llm.create_completion("Once upon a time", max_tokens=16, temperature=0)["choices"][0]["text"]
    return chat, text


def test_models_and_health(served, client):
    assert [m.id for m in client.models.list().data] == ["SmolLM2-135M-Instruct.Q4_1"]
    assert httpx.get(served[0] + "/health").json() == {"status": "ok"}


def test_responses_name_the_model_not_its_path(client, served):
    r = client.completions.create(model="m", prompt="Hi", max_tokens=1)
    assert r.model == "SmolLM2-135M-Instruct.Q4_1"
    r = client.chat.completions.create(model="m", messages=CHAT, max_tokens=1)
    assert r.model == "SmolLM2-135M-Instruct.Q4_1"
    stream = client.chat.completions.create(model="m", messages=CHAT, max_tokens=2, stream=True)
    assert {c.model for c in stream} == {"SmolLM2-135M-Instruct.Q4_1"}
    from starlette.testclient import TestClient

    aliased = TestClient(Server(served[1].llm.fork(), alias="smol").app())
    assert aliased.get("/v1/models").json()["data"][0]["id"] == "smol"
    r = aliased.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 1})
    assert r.json()["model"] == "smol"


def test_access_log_a_line_per_request(served, caplog):
    with caplog.at_level(logging.INFO, logger="fitllm.access"):
        httpx.get(served[0] + "/health")
        httpx.get(served[0] + "/v1/models")  # no key: 401
        deadline = time.time() + 5
        while len(caplog.records) < 2 and time.time() < deadline:
            time.sleep(0.05)
    lines = [r.getMessage() for r in caplog.records if r.name == "fitllm.access"]
    assert len(lines) == 2, lines
    assert re.fullmatch(r"127\.0\.0\.1:\d+ GET /health 200 \d+\.\d ms", lines[0]), lines
    assert re.fullmatch(r"127\.0\.0\.1:\d+ GET /v1/models 401 \d+\.\d ms", lines[1]), lines
    from starlette.testclient import TestClient

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fitllm.access"):
        TestClient(Server(served[1].llm, access_log=False).app()).get("/health")
    assert not caplog.records


def test_a_port_in_use_fails_before_loading(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        # a model that does not exist: the port is checked first
        model = str(tmp_path / "none.gguf")
        cmd = [sys.executable, "-m", "fitllm", "serve", "-m", model, "--port", str(port)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr == f"fitllm: error: port {port} is in use\n"


def test_completion_chat_and_stream_match_the_library(client, reference):
    chat, text = reference
    r = client.completions.create(model="m", prompt="Once upon a time", max_tokens=16, temperature=0)
    assert r.choices[0].text == text and r.usage.completion_tokens == 16
    r = client.chat.completions.create(model="m", messages=CHAT, max_tokens=24, temperature=0)
    assert r.choices[0].message.content == chat
    stream = client.chat.completions.create(
        model="m", messages=CHAT, max_tokens=24, temperature=0, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream) == chat
    r = client.chat.completions.create(model="m", messages=CHAT, max_tokens=24, temperature=0, stop=["4"])
    assert r.choices[0].finish_reason == "stop" and "4" not in r.choices[0].message.content


def test_errors(served, client):
    url = served[0] + "/v1/chat/completions"
    bad_key = openai.OpenAI(base_url=served[0] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.chat.completions.create(model="m", messages=CHAT)
    auth = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(url, content=b"{not json", headers=auth)
    assert r.status_code == 400 and "not JSON" in r.json()["error"]["message"]
    r = httpx.post(url, json={"messages": CHAT, "temperature": 7}, headers=auth)
    assert r.status_code == 400 and "temperature" in r.json()["error"]["message"]
    r = httpx.post(url, json={"messages": [{"role": "user"}]}, headers=auth)
    assert r.status_code == 400
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "word " * 2000}])
    assert e.value.code == "context_length_exceeded" and "context window of 512" in e.value.message


def test_eight_clients_at_once(client, reference):
    def one(i: int) -> str:
        r = client.chat.completions.create(model="m", messages=CHAT, max_tokens=24, temperature=0)
        return r.choices[0].message.content

    with ThreadPoolExecutor(8) as ex:
        assert list(ex.map(one, range(8))) == [reference[0]] * 8


def test_a_client_leaving_mid_stream_frees_its_slot(served, client, reference):
    url, server = served
    body = {"messages": CHAT, "max_tokens": 400, "stream": True, "temperature": 0.9, "seed": 1}
    for _ in range(3):  # more leavers than slots: each must give its slot back
        with httpx.stream(
            "POST", url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
        ) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
    deadline = time.time() + 10
    while server.slots.free.qsize() < 2 and time.time() < deadline:
        time.sleep(0.05)
    assert server.slots.free.qsize() == 2  # both slots free: the abandoned generations stopped
    r = client.chat.completions.create(model="m", messages=CHAT, max_tokens=24, temperature=0)
    assert r.choices[0].message.content == reference[0]


def test_a_full_queue_is_503(smollm2_path):
    server = Server(Llama(smollm2_path, n_ctx=512, verbose=False), parallel=1, queue=0)
    url, u = start(server)
    body = {"messages": CHAT, "max_tokens": 300, "stream": True, "temperature": 0.9}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body) as r:
        next(r.iter_lines())  # holds the only slot
        busy = httpx.post(url + "/v1/chat/completions", json={"messages": CHAT, "max_tokens": 2})
    assert busy.status_code == 503 and busy.json()["error"]["type"] == "server_error"
    u.should_exit = True


def rss() -> int:
    return int(next(x for x in open("/proc/self/status") if x.startswith("VmRSS")).split()[1]) * 1024


def test_a_thousand_requests(served):
    """1000 small completions, 8 at a time: no errors, and the process does not grow."""
    url = served[0] + "/v1/completions"
    http = httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=60)

    def one(i: int) -> int:
        r = http.post(url, json={"prompt": f"Count: {i % 50}", "max_tokens": 1, "temperature": 0})
        return r.status_code

    with ThreadPoolExecutor(8) as ex:
        list(ex.map(one, range(100)))  # warm: every allocator pool and cache filled
        before, t0 = rss(), time.perf_counter()
        codes = list(ex.map(one, range(1000)))
        dt, after = time.perf_counter() - t0, rss()
    print(json.dumps({"requests_per_s": 1000 / dt, "rss_before": before, "rss_after": after}))
    assert codes == [200] * 1000
    assert after - before < 16 << 20

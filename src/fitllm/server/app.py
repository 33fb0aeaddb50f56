"""`fitllm serve`: the OpenAI HTTP API on Starlette (ASGI, run by uvicorn).

Requests take one of `parallel` slots (forks of one Llama: shared weights, own KV cache); when all
are busy they wait in a FIFO queue of at most `queue` requests, beyond which they get 503. The
slots' forward passes take turns token by token (one lock: the kernels share work buffers and
every core). Generation runs on worker threads; a stream whose client goes away stops after the
token in flight and gives its slot back."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from anyio import to_thread
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from fitllm.api import Llama
from fitllm.chat import ChatTemplateError
from fitllm.kv_cache import ContextFullError

log = logging.getLogger(__name__)
access_log = logging.getLogger("fitllm.access")
PAGE = Path(__file__).with_name("page.html")


class HTTPError(Exception):
    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None
    ):
        super().__init__(message)
        self.status, self.kind, self.code = status, kind, code


def error_response(e: HTTPError) -> JSONResponse:
    body = {"error": {"message": str(e), "type": e.kind, "param": None, "code": e.code}}
    return JSONResponse(body, status_code=e.status)


class LockedModel:
    """A model whose forward passes take turns (shared by every slot)."""

    def __init__(self, model: Any, lock: threading.Lock) -> None:
        self._m, self._lock = model, lock

    def forward(self, *a: Any, **kw: Any):
        with self._lock:
            return self._m.forward(*a, **kw)

    def __getattr__(self, name: str):
        return getattr(self._m, name)


class Slots:
    """`parallel` forks of the model and a bounded FIFO of requests waiting for one."""

    def __init__(self, llm: Llama, parallel: int, queue: int) -> None:
        lock = threading.Lock()
        llm._model = LockedModel(llm._model, lock)
        self.free: asyncio.Queue[Llama] = asyncio.Queue()
        for i in range(parallel):
            self.free.put_nowait(llm if i == 0 else llm.fork())
        self.waiting, self.queue = 0, queue

    async def take(self) -> Llama:
        if self.free.empty() and self.waiting >= self.queue:
            raise HTTPError(503, "the server is busy: every slot and queue place is taken", "server_error")
        self.waiting += 1
        try:
            return await self.free.get()
        finally:
            self.waiting -= 1

    def give(self, slot: Llama) -> None:
        self.free.put_nowait(slot)


def _num(body: dict, key: str, kind: type, lo: float, hi: float, default: Any) -> Any:
    v = body.get(key)
    if v is None:
        return default
    if (
        isinstance(v, bool)
        or not isinstance(v, (int, float))
        or (kind is int and int(v) != v)
        or not lo <= v <= hi
    ):
        raise HTTPError(400, f"'{key}' must be a {kind.__name__} in [{lo}, {hi}]", code="invalid_value")
    return kind(v)


def sampling_args(body: dict, n_ctx: int) -> dict:
    """OpenAI's parameters, checked, as create_completion's keywords."""
    stop = body.get("stop")
    if (
        stop is not None
        and not isinstance(stop, str)
        and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise HTTPError(400, "'stop' must be a string or a list of strings", code="invalid_value")
    key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    return dict(
        max_tokens=_num(body, key, int, 0, n_ctx, None),
        temperature=_num(body, "temperature", float, 0.0, 2.0, 1.0),
        top_p=_num(body, "top_p", float, 0.0, 1.0, 1.0),
        min_p=_num(body, "min_p", float, 0.0, 1.0, 0.0),
        top_k=_num(body, "top_k", int, 0, 1 << 20, 0),
        repeat_penalty=_num(body, "repeat_penalty", float, 0.0, 10.0, 1.0),
        seed=_num(body, "seed", int, -(1 << 63), (1 << 63) - 1, None),
        stop=stop,
        stream=bool(body.get("stream", False)),
    )


class ClosingStream(StreamingResponse):
    """A stream whose generator is closed as soon as the response ends, however it ends (done,
    cancelled, or the client gone: a write error), not whenever it is garbage-collected."""

    async def stream_response(self, send) -> None:
        try:
            await super().stream_response(send)
        finally:
            await self.body_iterator.aclose()


class AccessLog:
    """ASGI middleware: a line per request when its response has ended (a stream: its last
    event), as uvicorn's access log but timed: client, method, path, status, duration."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), [500]  # 500: the app failed before it answered

        async def send_status(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            client = scope.get("client")
            access_log.info(
                "%s %s %s %d %.1f ms", f"{client[0]}:{client[1]}" if client else "-", scope["method"],
                scope["path"], status[0], 1000 * (time.perf_counter() - t0),
            )  # fmt: skip


def model_name(path: str) -> str:
    """What clients see as the model: the file's name without .gguf, not a local path."""
    name = Path(path).name
    return name[: -len(".gguf")] if name.lower().endswith(".gguf") else name


class Server:
    def __init__(
        self,
        llm: Llama,
        api_key: str | None = None,
        parallel: int = 1,
        queue: int = 64,
        alias: str | None = None,
        access_log: bool = True,
    ) -> None:
        """alias: the model's name for clients (llama-server's --alias; default: the file's name);
        access_log: a line per request on the fitllm.access logger (at INFO)."""
        self.llm, self.api_key = llm, api_key
        self.model_id = alias or model_name(llm.model_path)
        self.parallel, self.queue, self.access_log = parallel, queue, access_log
        self.slots: Slots | None = None  # made in the event loop that serves

    # --- plumbing ---------------------------------------------------------------------------
    def _auth(self, request: Request) -> None:
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            raise HTTPError(401, "invalid API key", "authentication_error", "invalid_api_key")

    async def _body(self, request: Request) -> dict:
        self._auth(request)
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise HTTPError(400, f"the body is not JSON: {e}") from None
        if not isinstance(body, dict):
            raise HTTPError(400, "the body must be a JSON object")
        return body

    async def _run(self, request: Request, start) -> Response:
        """Validate, take a slot, run start(slot, body) -> result or iterator of chunks."""
        try:
            body = await self._body(request)
            if self.slots is None:
                self.slots = Slots(self.llm, self.parallel, self.queue)
            slot = await self.slots.take()
        except HTTPError as e:
            return error_response(e)
        try:
            out = await to_thread.run_sync(start, slot, body)
        except HTTPError as e:
            self.slots.give(slot)
            return error_response(e)
        except Exception as e:
            self.slots.give(slot)
            return error_response(_as_http(e))
        if isinstance(out, dict):
            self.slots.give(slot)
            return JSONResponse(out)
        return ClosingStream(self._stream(slot, out), media_type="text/event-stream")

    async def _stream(self, slot: Llama, chunks: Iterator[dict]) -> AsyncIterator[bytes]:
        """Server-sent events of chunks made on a worker thread, one at a time; a stream that is
        cancelled (the client left) waits for the token in flight, then stops and frees the slot."""
        done = object()
        try:
            while True:
                c = await to_thread.run_sync(next, chunks, done)
                if c is done:
                    break
                yield f"data: {json.dumps(c)}\n\n".encode()
            yield b"data: [DONE]\n\n"
        finally:
            chunks.close()
            self.slots.give(slot)

    # --- endpoints --------------------------------------------------------------------------
    async def models(self, request: Request) -> Response:
        try:
            self._auth(request)
        except HTTPError as e:
            return error_response(e)
        model = {"id": self.model_id, "object": "model", "created": int(time.time()), "owned_by": "fitllm"}
        return JSONResponse({"object": "list", "data": [model]})

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def page(self, request: Request) -> Response:
        return HTMLResponse(PAGE.read_text())

    async def completions(self, request: Request) -> Response:
        def start(slot: Llama, body: dict):
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1:
                prompt = prompt[0]
            if not isinstance(prompt, str) and not (
                isinstance(prompt, list) and all(isinstance(t, int) for t in prompt)
            ):
                raise HTTPError(400, "'prompt' must be a string (or a list of token ids)")
            args = sampling_args(body, slot.n_ctx())
            echo = bool(body.get("echo", False))
            return slot.create_completion(prompt, echo=echo, model=self.model_id, **args)

        return await self._run(request, start)

    async def chat_completions(self, request: Request) -> Response:
        def start(slot: Llama, body: dict):
            args = sampling_args(body, slot.n_ctx())
            return slot.create_chat_completion(body.get("messages"), model=self.model_id, **args)

        return await self._run(request, start)

    def app(self) -> Starlette:
        routes = [
            Route("/", self.page),
            Route("/health", self.health),
            Route("/v1/models", self.models),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
        ]
        return Starlette(routes=routes, middleware=[Middleware(AccessLog)] if self.access_log else [])


def _as_http(e: Exception) -> HTTPError:
    if isinstance(e, ChatTemplateError):
        return HTTPError(500, str(e), "server_error", "chat_template_error")
    if isinstance(e, ContextFullError) or "context window" in str(e):
        return HTTPError(400, str(e), code="context_length_exceeded")
    if isinstance(e, ValueError):
        return HTTPError(400, str(e), code="invalid_value")
    log.exception("request failed")
    return HTTPError(500, f"{type(e).__name__}: {e}", "server_error")


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, made before the model loads: a port in use is a one-line
    error at once (ValueError), not after loading, and no other process can take it meanwhile."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT does not block
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ValueError(f"port {port} is in use") from None
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def serve(llm: Llama, sock: socket.socket, api_key: str | None, parallel: int, queue: int, **kw: Any) -> None:
    """Serve on a socket from bind(); kw: Server's alias and access_log."""
    import uvicorn

    if kw.get("access_log", True) and not access_log.isEnabledFor(logging.INFO):
        access_log.setLevel(logging.INFO)  # on by default, as uvicorn's
    host, port = sock.getsockname()[:2]
    app = Server(llm, api_key, parallel, queue, **kw).app()
    config = uvicorn.Config(app, host, port, log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])

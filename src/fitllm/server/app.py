"""`fitllm serve`: the OpenAI HTTP API on Starlette (ASGI, run by uvicorn).

Requests take one of `parallel` slots (forks of one Llama: shared weights, own KV cache); when all
are busy they wait in a FIFO queue of at most `queue` requests, beyond which they get 503. The
slots' forward passes take turns token by token (one lock: the kernels share work buffers and
every core). Templates, tokenization and generation run on worker threads, never on the event
loop; a request whose client goes away (streaming or not) stops after the token in flight and
gives its slot back."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from anyio import to_thread
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from fitllm.api import Llama
from fitllm.server.errors import HTTPError, as_http, error_response, internal_error
from fitllm.server.http import AccessLog, ClosingStream, cancel, read_body, watch_disconnect
from fitllm.server.params import prompt_of, sampling_args
from fitllm.server.protocol import uvicorn_config
from fitllm.server.slots import Slots

log = logging.getLogger("fitllm.server")
access_log = logging.getLogger("fitllm.access")
PAGE = Path(__file__).with_name("page.html")
# start(slot, body, gone) -> a result, or an iterator of chunks
Start = Callable[[Llama, dict, threading.Event], Any]


def model_name(path: str) -> str:
    """What clients see as the model: the file's name without .gguf, not a local path."""
    name = Path(path).name
    return name[: -len(".gguf")] if name.lower().endswith(".gguf") else name


def default_max_body(n_ctx: int) -> int:
    """Bytes a request may have: room for a context of JSON-escaped text, at least 1 MiB."""
    return max(1 << 20, 64 * n_ctx)


class Server:
    def __init__(
        self,
        llm: Llama,
        api_key: str | None = None,
        parallel: int = 1,
        queue: int = 64,
        alias: str | None = None,
        access_log: bool = True,
        timeout: float = 600.0,
        max_body: int | None = None,
    ) -> None:
        """alias: the model's name for clients (llama-server's --alias; default: the file's name);
        access_log: a line per request on the fitllm.access logger (at INFO); timeout: seconds a
        request's head and body may take to arrive (llama-server's --timeout); max_body: bytes a
        request's body may have (default: default_max_body)."""
        self.llm, self.api_key = llm, api_key
        self.model_id = alias or model_name(llm.model_path)
        self.parallel, self.queue, self.access_log = parallel, queue, access_log
        self.timeout = timeout
        self.max_body = max_body or default_max_body(llm.n_ctx())
        self.slots: Slots | None = None  # made in the event loop that serves

    # --- plumbing ---------------------------------------------------------------------------
    def _auth(self, request: Request) -> None:
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            raise HTTPError(401, "invalid API key", "authentication_error", "invalid_api_key")

    async def _body(self, request: Request) -> dict:
        self._auth(request)
        raw = await read_body(request, self.max_body, self.timeout)
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise HTTPError(400, f"the body is not JSON: {e}") from None
        if not isinstance(body, dict):
            raise HTTPError(400, "the body must be a JSON object")
        return body

    async def _run(self, request: Request, start: Start) -> Response:
        """Validate, take a slot, run start on a worker thread while watching for the client
        leaving (then `gone` is set, and generation stops at the next token)."""
        try:
            body = await self._body(request)
        except HTTPError as e:
            return error_response(e)
        gone = threading.Event()
        watch = asyncio.ensure_future(watch_disconnect(request, gone))
        try:
            return await self._generate(start, body, gone)
        except Exception as e:
            return error_response(as_http(e))
        finally:
            await cancel(watch)

    async def _generate(self, start: Start, body: dict, gone: threading.Event) -> Response:
        if self.slots is None:
            self.slots = Slots(self.llm, self.parallel, self.queue)
        slot = await self.slots.take()
        if gone.is_set():  # left while queued: nothing to do
            self.slots.give(slot)
            return Response(status_code=499)
        try:
            out = await to_thread.run_sync(start, slot, body, gone)
        except BaseException:
            self.slots.give(slot)
            raise
        if isinstance(out, dict):
            self.slots.give(slot)
            if gone.is_set():
                n = out.get("usage", {}).get("completion_tokens")
                log.info("the client left: generation stopped after %s tokens", n)
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
        def start(slot: Llama, body: dict, gone: threading.Event):
            prompt = prompt_of(body)
            args = sampling_args(body, slot.n_ctx())
            echo = bool(body.get("echo", False))
            return slot.create_completion(
                prompt, echo=echo, model=self.model_id, stopping_criteria=_until(gone), **args
            )

        return await self._run(request, start)

    async def chat_completions(self, request: Request) -> Response:
        def start(slot: Llama, body: dict, gone: threading.Event):
            args = sampling_args(body, slot.n_ctx())
            messages = body.get("messages")
            return slot.create_chat_completion(
                messages, model=self.model_id, stopping_criteria=_until(gone), **args
            )

        return await self._run(request, start)

    def app(self) -> Starlette:
        routes = [
            Route("/", self.page),
            Route("/health", self.health),
            Route("/v1/models", self.models),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
        ]
        return Starlette(
            routes=routes,
            middleware=[Middleware(AccessLog)] if self.access_log else [],
            exception_handlers={Exception: internal_error},
        )

    def config(self, host: str, port: int) -> Any:
        """uvicorn's configuration to serve this on host:port, with the request-head timeout."""
        return uvicorn_config(self.app(), host, port, self.timeout)


def _until(gone: threading.Event) -> Callable[[Any, Any], bool]:
    """A stopping criterion (llama-cpp-python's): stop when the client has gone."""
    return lambda input_ids, logits: gone.is_set()


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
    """Serve on a socket from bind(); kw: Server's alias, access_log, timeout and max_body."""
    import uvicorn

    if kw.get("access_log", True) and not access_log.isEnabledFor(logging.INFO):
        access_log.setLevel(logging.INFO)  # on by default, as uvicorn's
    host, port = sock.getsockname()[:2]
    config = Server(llm, api_key, parallel, queue, **kw).config(host, port)
    uvicorn.Server(config).run(sockets=[sock])

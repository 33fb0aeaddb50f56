"""HTTP plumbing: the body read within a size and a time limit, a watch for a client that left,
streams closed when their response ends, and the access log."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import StreamingResponse

from fitllm.server.errors import HTTPError

access_log = logging.getLogger("fitllm.access")


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The body, refused (413) past `limit` bytes before it is all read, or (408) when it has not
    all come within `timeout` seconds: a client cannot make the server buffer or wait unbounded."""
    too_big = HTTPError(413, f"the request body is over {limit} bytes (the server's --max-body)")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    try:
        with anyio.fail_after(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise too_big
                chunks.append(chunk)
    except TimeoutError:
        raise HTTPError(408, f"the request body did not arrive within {timeout:g} s") from None
    return b"".join(chunks)


async def watch_disconnect(request: Request, gone: threading.Event) -> None:
    """Set `gone` when the client disconnects (run as a task once the body is read: the server's
    receive() then answers only when the connection is lost or the response is done)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            gone.set()
            return


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


async def cancel(task: asyncio.Task) -> None:
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass

"""Errors as OpenAI's JSON error objects; what went wrong inside the server stays in the log."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse

from fitllm.chat import ChatTemplateError
from fitllm.kv_cache import ContextFullError

log = logging.getLogger("fitllm.server")


class HTTPError(Exception):
    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None
    ):
        super().__init__(message)
        self.status, self.kind, self.code = status, kind, code


def error_response(e: HTTPError) -> JSONResponse:
    body = {"error": {"message": str(e), "type": e.kind, "param": None, "code": e.code}}
    return JSONResponse(body, status_code=e.status)


INTERNAL = HTTPError(500, "internal server error", "server_error")


def as_http(e: Exception) -> HTTPError:
    """The client's mistakes (ValueError from what it sent) as 400s with their message; anything
    else a bare 500: its text could name files or internals, so only the log has it."""
    if isinstance(e, HTTPError):
        return e
    if isinstance(e, ChatTemplateError):
        return HTTPError(400, str(e), code="chat_template_error")
    if isinstance(e, ContextFullError) or "context window" in str(e):
        return HTTPError(400, str(e), code="context_length_exceeded")
    if isinstance(e, ValueError):
        return HTTPError(400, str(e), code="invalid_value")
    log.error("request failed", exc_info=e)
    return INTERNAL


async def internal_error(request: Request, e: Exception) -> JSONResponse:
    """Starlette's handler for what an endpoint let through: the generic 500, the traceback logged."""
    log.error("%s %s failed", request.method, request.url.path, exc_info=e)
    return error_response(INTERNAL)

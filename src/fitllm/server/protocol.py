"""uvicorn's h11 protocol with a deadline on each request's head: uvicorn only times idle
keep-alive connections, so a client sending its headers a byte at a time (slowloris) would hold
its connection for ever. As llama-server's --timeout, the default is 600 s."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("fitllm.server")


class HeadTimeoutProtocol(H11Protocol):
    """Closes a connection whose request head (request line and headers) has not all arrived
    `head_timeout` seconds after the connection opened or its first byte came; data arriving
    meanwhile does not extend the deadline."""

    head_timeout = 600.0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:  # still waiting for a whole request head
            self._arm()
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        log.info("%s: no request head within %g s: connection closed", self.client, self.head_timeout)
        try:
            self.conn.send(h11.ConnectionClosed())
        except h11.LocalProtocolError:
            pass
        self.transport.close()


def uvicorn_config(app: Any, host: str, port: int, timeout: float) -> uvicorn.Config:
    """uvicorn serving app with request heads due within `timeout` seconds (and idle keep-alive
    connections closed after 5 s, uvicorn's default, or `timeout` if shorter)."""
    http = type("HeadTimeoutH11", (HeadTimeoutProtocol,), {"head_timeout": timeout})
    return uvicorn.Config(
        app, host, port, http=http, timeout_keep_alive=min(5.0, timeout), log_level="warning"
    )

"""Server slots: forks of one Llama that take turns on the model, and the queue waiting for them."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from fitllm.api import Llama
from fitllm.server.errors import HTTPError


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

"""Server slots: forks of one Llama that take turns on the model, and the queue waiting for them."""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from fitllm.api import Llama
from fitllm.kv_cache import KVCache
from fitllm.models.protocol import Model
from fitllm.server.errors import HTTPError


class LockedModel:
    """A model whose forward passes take turns (shared by every slot): the kernels' work buffers
    are one per process."""

    def __init__(self, model: Model, lock: threading.Lock) -> None:
        self._m, self._lock = model, lock
        self.hp = model.hp

    def forward(self, tokens: np.ndarray, kv: KVCache, all_logits: bool = False) -> np.ndarray:
        with self._lock:
            return self._m.forward(tokens, kv, all_logits)

    def new_cache(self, n_ctx: int) -> KVCache:
        return self._m.new_cache(n_ctx)

    def summary(self) -> str:
        return self._m.summary()

    def close(self) -> None:
        self._m.close()


class Slots:
    """`parallel` forks of the model and a bounded FIFO of requests waiting for one."""

    def __init__(self, llm: Llama, parallel: int, queue: int) -> None:
        lock = threading.Lock()
        llm.model = LockedModel(llm.model, lock)
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

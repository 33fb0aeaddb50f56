"""What the pipeline and tensor-parallel models share: rank 0 drives, the other ranks follow.

Rank 0 is used like any model (new_cache, forward); each call first broadcasts a command header
(raw int64s), which the other ranks, in `serve`, receive and carry out with it. Every cache rank 0
makes has a slot number, and each rank keeps its own part of that cache under it, so that several
caches (a server's slots) can take turns: the header of a forward pass names its slot."""

from __future__ import annotations

import threading
import time
import weakref

import numpy as np

from fitllm.distributed.comm import Comm
from fitllm.kv_cache import KVCache
from fitllm.models.base import DecoderModel

CMD_STOP, CMD_FORWARD, CMD_CACHE = 0, 1, 2
HEADER = 6  # cmd, T, pos0, all_logits, n_ctx, slot


class SplitModel:
    bytes = 0  # weights this rank holds
    read_per_token = 0  # of them, what one token reads (MoE: the used experts' share)

    def __init__(self, model: DecoderModel, comm: Comm) -> None:
        self.model, self.comm, self.hp = model, comm, model.hp
        # rank 0: weak references to the caches it handed out (a dead one's slot is reused);
        # the other ranks: their part of each of those caches, by slot
        self._slots: list[weakref.ref[KVCache] | KVCache | None] = []
        self._lock = threading.Lock()  # a header and its step go out together, never interleaved
        self._stopped = False
        self.busy_s, self.n_tokens = 0.0, 0

    def _new_kv(self, n_ctx: int) -> KVCache:
        raise NotImplementedError

    def _step(
        self, kv: KVCache, tokens: np.ndarray | None, T: int, pos0: int, all_logits: bool
    ) -> np.ndarray | None:
        """One forward pass over T tokens at pos0 into kv, on every rank; the logits on rank 0."""
        raise NotImplementedError

    def _header(
        self, cmd: int, T: int = 0, pos0: int = 0, all_logits: bool = False, n_ctx: int = 0, slot: int = 0
    ) -> None:
        self.comm.bcast(np.array([cmd, T, pos0, int(all_logits), n_ctx, slot], np.int64))

    def _timed_step(
        self, kv: KVCache, tokens: np.ndarray | None, T: int, pos0: int, all_logits: bool
    ) -> np.ndarray | None:
        t0 = time.perf_counter()
        out = self._step(kv, tokens, T, pos0, all_logits)
        kv.n = pos0 + T  # rank 0's cache object counts the positions for every rank
        self.busy_s += time.perf_counter() - t0
        self.n_tokens += T
        return out

    def _free_slot(self) -> int:
        """Rank 0: the slot of a cache no longer in use, else a new one."""
        for i, ref in enumerate(self._slots):
            if ref is None or ref() is None:
                return i
        self._slots.append(None)
        return len(self._slots) - 1

    def _slot_of(self, kv: KVCache) -> int:
        for i, ref in enumerate(self._slots):
            if ref is not None and ref() is kv:
                return i
        raise ValueError("use a cache this model's new_cache made")

    def new_cache(self, n_ctx: int) -> KVCache:
        """Rank 0: a cache of its own on every rank (the others follow the header's slot)."""
        with self._lock:
            slot = self._free_slot()
            self._header(CMD_CACHE, n_ctx=n_ctx, slot=slot)
            kv = self._new_kv(n_ctx)
            self._slots[slot] = weakref.ref(kv)
            return kv

    def forward(self, tokens: np.ndarray, kv: KVCache, all_logits: bool = False) -> np.ndarray:
        """Rank 0: logits (T, vocab) of the new tokens (the last row unless all_logits)."""
        with self._lock:
            slot = self._slot_of(kv)
            tokens = self.model.check_tokens(tokens, kv)
            self._header(CMD_FORWARD, tokens.size, kv.n, all_logits, slot=slot)
            return self._timed_step(kv, tokens, tokens.size, kv.n, all_logits)

    def summary(self) -> str:
        return ""  # each rank reports its own numbers when it stops (close)

    def serve(self) -> None:
        """Ranks > 0: carry out rank 0's commands until it closes."""
        head = np.empty(HEADER, np.int64)
        while True:
            self.comm.bcast(head, idle=True)  # waiting for the next step is not a hang
            cmd, T, pos0, all_logits, n_ctx, slot = (int(v) for v in head)
            if cmd == CMD_STOP:
                break
            if cmd == CMD_CACHE:
                self._slots += [None] * (slot + 1 - len(self._slots))
                self._slots[slot] = None  # the old cache's memory goes before the new one's comes
                self._slots[slot] = self._new_kv(n_ctx)
            else:
                self._timed_step(self._slots[slot], None, T, pos0, bool(all_logits))
        self.comm.report(self.read_per_token, self.n_tokens, self.busy_s)

    def close(self) -> None:
        """Rank 0: stop the other ranks (each reports its bytes per token and time communicating)."""
        with self._lock:
            if self.comm.rank == 0 and not self._stopped:
                self._stopped = True
                self._header(CMD_STOP)
                self.comm.report(self.read_per_token, self.n_tokens, self.busy_s)

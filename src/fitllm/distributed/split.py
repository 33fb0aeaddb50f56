"""What the pipeline and tensor-parallel models share: rank 0 drives, the other ranks follow.

Rank 0 is used like any model (new_cache, forward); each call first broadcasts a command header
(raw int64s), which the other ranks, in `serve`, receive and carry out with it."""

from __future__ import annotations

import time

import numpy as np

from fitllm.distributed.comm import Comm
from fitllm.kv_cache import KVCache
from fitllm.models.base import DecoderModel

CMD_STOP, CMD_FORWARD, CMD_CACHE = 0, 1, 2


class SplitModel:
    bytes = 0  # weights this rank holds
    read_per_token = 0  # of them, what one token reads (MoE: the used experts' share)

    def __init__(self, model: DecoderModel, comm: Comm) -> None:
        self.model, self.comm, self.hp = model, comm, model.hp
        self._kv: KVCache | None = None
        self._stopped = False
        self.busy_s, self.n_tokens = 0.0, 0

    def _new_kv(self, n_ctx: int) -> KVCache:
        raise NotImplementedError

    def _step(self, tokens: np.ndarray | None, T: int, pos0: int, all_logits: bool) -> np.ndarray | None:
        """One forward pass over T tokens at pos0, on every rank; returns the logits on rank 0."""
        raise NotImplementedError

    def _header(self, cmd: int, T: int = 0, pos0: int = 0, all_logits: bool = False, n_ctx: int = 0) -> None:
        self.comm.bcast(np.array([cmd, T, pos0, int(all_logits), n_ctx], np.int64))

    def _timed_step(
        self, tokens: np.ndarray | None, T: int, pos0: int, all_logits: bool
    ) -> np.ndarray | None:
        t0 = time.perf_counter()
        out = self._step(tokens, T, pos0, all_logits)
        self._kv.n = pos0 + T  # rank 0's cache object counts the positions for every rank
        self.busy_s += time.perf_counter() - t0
        self.n_tokens += T
        return out

    def new_cache(self, n_ctx: int) -> KVCache:
        if self.comm.rank == 0:
            self._header(CMD_CACHE, n_ctx=n_ctx)
        self._kv = self._new_kv(n_ctx)
        return self._kv

    def forward(self, tokens: np.ndarray, kv: KVCache, all_logits: bool = False) -> np.ndarray:
        """Rank 0: logits (T, vocab) of the new tokens (the last row unless all_logits)."""
        assert kv is self._kv, "use the cache this model's new_cache made"
        tokens = self.model._tokens(tokens, kv)
        self._header(CMD_FORWARD, tokens.size, kv.n, all_logits)
        return self._timed_step(tokens, tokens.size, kv.n, all_logits)

    def serve(self) -> None:
        """Ranks > 0: carry out rank 0's commands until it closes."""
        head = np.empty(5, np.int64)
        while True:
            self.comm.bcast(head)
            cmd, T, pos0, all_logits, n_ctx = (int(v) for v in head)
            if cmd == CMD_STOP:
                break
            if cmd == CMD_CACHE:
                self.new_cache(n_ctx)
            else:
                self._timed_step(None, T, pos0, bool(all_logits))
        self.comm.report(self.read_per_token, self.n_tokens, self.busy_s)

    def close(self) -> None:
        """Rank 0: stop the other ranks (each reports its bytes per token and time communicating)."""
        if self.comm.rank == 0 and not self._stopped:
            self._stopped = True
            self._header(CMD_STOP)
            self.comm.report(self.read_per_token, self.n_tokens, self.busy_s)

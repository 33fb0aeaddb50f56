"""Pipeline split (memory first): each rank owns a contiguous range of layers.

Rank 0 embeds the tokens and runs its layers, each rank passes the hidden states on to the next,
the last rank (which holds the output head) sends the logits back to rank 0. A prompt goes through
in micro-batches, so rank r works on batch i while rank r + 1 works on batch i - 1. Every rank
keeps the KV cache of its own layers only, at the positions rank 0 announces."""

from __future__ import annotations

import numpy as np

from fitllm import kernels
from fitllm.distributed.comm import Comm
from fitllm.kv_cache import KVCache
from fitllm.models.base import DecoderModel

CMD_STOP, CMD_FORWARD = 0, 1


class PipelineModel:
    """The model as rank 0 sees it (forward, new_cache, hp); the other ranks run `serve`."""

    def __init__(self, model: DecoderModel, comm: Comm, layers: list[tuple[int, int]], micro_batch: int = 0):
        self.model, self.comm, self.hp = model, comm, model.hp
        self.a, self.b = layers[comm.rank]
        self.last = comm.rank == comm.size - 1
        self.micro_batch = micro_batch
        self._specs = [model.spec(i, model.blk[i]) for i in range(self.a, self.b)]
        self._kv: KVCache | None = None
        self._stopped = False

    def new_cache(self, n_ctx: int) -> KVCache:
        """Rank 0's cache object counts positions; the layers' caches live on their ranks."""
        self._kv = KVCache(self.b - self.a, n_ctx, self.hp.n_head_kv, self.hp.head_dim)
        head = np.array([CMD_FORWARD, 0, 0, 0, n_ctx], np.int64)  # every rank makes its cache
        self.comm.bcast(head)
        return self._kv

    def _chunks(self, T: int) -> list[tuple[int, int]]:
        mb = self.micro_batch or max(1, -(-T // (2 * self.comm.size)))
        return [(i, min(T, i + mb)) for i in range(0, T, mb)]

    def _run_layers(self, x: np.ndarray, kv: KVCache, pos0: int, n_out: int) -> None:
        for j, spec in enumerate(self._specs):
            last_layer = self.a + j == self.hp.n_layer - 1
            kernels.layer_forward(spec, kv.k[j], kv.v[j], x, pos0, n_out if last_layer else None)

    def _step(self, tokens: np.ndarray | None, T: int, pos0: int, all_logits: bool) -> np.ndarray | None:
        """One forward pass over T tokens, on every rank; rank 0 gets the logits."""
        c, E, reqs, out = self.comm, self.hp.n_embd, [], None
        chunks = self._chunks(T)
        for i, (s, e) in enumerate(chunks):
            final = i == len(chunks) - 1
            n_out = e - s if all_logits else 1
            if c.rank == 0:
                x = np.ascontiguousarray(self.model.embed(tokens[s:e]), np.float32)
            else:
                x = np.empty((e - s, E), np.float32)
                c.recv(x, c.rank - 1)
            self._run_layers(x, self._kv, pos0 + s, n_out)
            if not self.last:
                reqs.append(c.send(x, c.rank + 1))
            elif all_logits or final:
                logits = np.ascontiguousarray(self.model.logits(x[-n_out:]), np.float32)
                if c.rank == 0:
                    out = logits if out is None else np.concatenate([out, logits])
                else:
                    reqs.append(c.send(logits, 0))
        if c.rank == 0 and not self.last:
            parts = []
            for s, e in chunks if all_logits else chunks[-1:]:
                buf = np.empty((e - s if all_logits else 1, self.hp.n_vocab), np.float32)
                c.recv(buf, c.size - 1)
                parts.append(buf)
            out = np.concatenate(parts)
        c.wait_all(reqs)
        self._kv.n = pos0 + T
        return out

    def forward(self, tokens: np.ndarray, kv: KVCache, all_logits: bool = False) -> np.ndarray:
        tokens = self.model._tokens(tokens, kv)
        self.comm.bcast(np.array([CMD_FORWARD, tokens.size, kv.n, int(all_logits), 0], np.int64))
        return self._step(tokens, tokens.size, kv.n, all_logits)

    def serve(self) -> None:
        """Ranks > 0: follow rank 0's commands until it stops."""
        head = np.empty(5, np.int64)
        while True:
            self.comm.bcast(head)
            cmd, T, pos0, all_logits, n_ctx = (int(v) for v in head)
            if cmd == CMD_STOP:
                return
            if T == 0:
                self._kv = KVCache(self.b - self.a, n_ctx, self.hp.n_head_kv, self.hp.head_dim)
            else:
                self._step(None, T, pos0, bool(all_logits))

    def close(self) -> None:
        if self.comm.rank == 0 and not self._stopped:
            self._stopped = True
            self.comm.bcast(np.array([CMD_STOP, 0, 0, 0, 0], np.int64))

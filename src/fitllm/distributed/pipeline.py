"""Pipeline split (memory first): each rank owns a contiguous range of layers.

Rank 0 embeds the tokens and runs its layers, each rank passes the hidden states on to the next,
the last rank (which holds the output head) sends the logits back to rank 0. A prompt goes through
in micro-batches, so rank r works on batch i while rank r + 1 works on batch i - 1. Every rank
keeps the KV cache of its own layers only, at the positions rank 0 announces."""

from __future__ import annotations

import numpy as np

from fitllm import kernels
from fitllm.distributed.comm import Comm
from fitllm.distributed.split import SplitModel
from fitllm.kv_cache import KVCache
from fitllm.models.base import DecoderModel


class PipelineModel(SplitModel):
    def __init__(self, model: DecoderModel, comm: Comm, layers: list[tuple[int, int]], micro_batch: int = 0):
        super().__init__(model, comm)
        self.a, self.b = layers[comm.rank]
        self.last = comm.rank == comm.size - 1
        self.micro_batch = micro_batch
        self._compiled = [model.spec(i, model.blk[i]) for i in range(self.a, self.b)]

    def _new_kv(self, n_ctx: int) -> KVCache:
        return KVCache(self.b - self.a, n_ctx, self.hp.n_head_kv, self.hp.head_dim)

    def _chunks(self, T: int) -> list[tuple[int, int]]:
        """Micro-batches of about T / (2 ranks), even, and none under the kernels' batch size
        threshold when T is not: the same sums as one process running all T at once."""
        n = -(-T // self.micro_batch) if self.micro_batch else min(T, 2 * self.comm.size)
        lo = kernels.batch_min_tokens()
        if lo and T >= lo:
            n = max(1, min(n, T // lo))
        cuts = [T * i // n for i in range(n + 1)]
        return list(zip(cuts[:-1], cuts[1:]))

    def _run_layers(self, kv: KVCache, x: np.ndarray, pos0: int, n_out: int) -> None:
        for j, spec in enumerate(self._compiled):
            last_layer = self.a + j == self.hp.n_layer - 1
            kernels.layer_forward(spec, kv.k[j], kv.v[j], x, pos0, n_out if last_layer else None)

    def _step(
        self, kv: KVCache, tokens: np.ndarray | None, T: int, pos0: int, all_logits: bool
    ) -> np.ndarray | None:
        c, E, reqs, out = self.comm, self.hp.n_embd, [], []
        chunks = self._chunks(T)
        for i, (s, e) in enumerate(chunks):
            n_out = e - s if all_logits else 1
            if c.rank == 0:
                x = np.ascontiguousarray(self.model.embed(tokens[s:e]), np.float32)
            else:
                x = np.empty((e - s, E), np.float32)
                c.recv(x, c.rank - 1)
            self._run_layers(kv, x, pos0 + s, n_out)
            if not self.last:
                reqs.append(c.send(x, c.rank + 1))  # and on to the next micro-batch
            elif all_logits or i == len(chunks) - 1:
                logits = np.ascontiguousarray(self.model.logits(x[-n_out:]), np.float32)
                if c.rank == 0:
                    out.append(logits)
                else:
                    reqs.append(c.send(logits, 0))
        if c.rank == 0 and not self.last:
            for s, e in chunks if all_logits else chunks[-1:]:
                out.append(np.empty((e - s if all_logits else 1, self.hp.n_vocab), np.float32))
                c.recv(out[-1], c.size - 1)
        c.wait_all(reqs)
        return np.concatenate(out) if c.rank == 0 else None

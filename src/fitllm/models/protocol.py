"""The one interface a Llama drives its model through, whatever runs it: a DecoderModel in this
process, one whose experts stream from disk (ExpertCache), one split over MPI ranks (pipeline or
tensor parallel), or the server's turn-taking wrapper (LockedModel). Wrappers implement every member
themselves, so a caller never depends on what happens to sit underneath."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from fitllm.kv_cache import KVCache
from fitllm.models.base import HParams


@runtime_checkable
class Model(Protocol):
    hp: HParams  # sizes a caller allocates by (vocabulary for logits, layers for the log line)

    def forward(self, tokens: np.ndarray, kv: KVCache, all_logits: bool = False) -> np.ndarray:
        """Logits (T, vocab) of the tokens evaluated into kv after what it holds (the last row
        unless all_logits)."""
        ...

    def new_cache(self, n_ctx: int) -> KVCache:
        """An empty cache this model's forward accepts: a sequence's own context."""
        ...

    def summary(self) -> str:
        """A line about how the run went (expert cache hits, ...) for the log; "" when none."""
        ...

    def close(self) -> None:
        """Release what the model holds beyond memory (threads, files, other ranks)."""
        ...

"""Per-layer key/value cache, sized by n_ctx, in fp16 as llama.cpp keeps it by default."""

from __future__ import annotations

import numpy as np


class ContextFullError(RuntimeError):
    pass


class KVCache:
    def __init__(self, n_layer: int, n_ctx: int, n_kv: int, head_dim: int, head_dim_v: int | None = None):
        self.n_ctx = n_ctx
        self.n = 0  # positions filled
        self.k = [np.zeros((n_ctx, n_kv, head_dim), np.float16) for _ in range(n_layer)]
        self.v = [np.zeros((n_ctx, n_kv, head_dim_v or head_dim), np.float16) for _ in range(n_layer)]
        self.stack = None  # kernels.LayerStack: the model's blocks over these caches (models/base.py)

    def check_room(self, n_new: int) -> None:
        if self.n + n_new > self.n_ctx:
            raise ContextFullError(
                f"context is full: {self.n} cached + {n_new} new tokens > n_ctx {self.n_ctx} (raise -c)"
            )

    def store(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Write the new keys/values after the cached ones; return all keys/values so far."""
        end = self.n + k.shape[0]
        self.k[layer][self.n : end] = k
        self.v[layer][self.n : end] = v
        return self.k[layer][:end].astype(np.float32), self.v[layer][:end].astype(np.float32)

    def truncate(self, n: int) -> None:
        self.n = min(self.n, n)

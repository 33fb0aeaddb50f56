"""Generation steps: prefill (batched prompt) and decode_step (one token).
The sampling loop is Llama._stream_tokens in api.py."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fitllm.kv_cache import KVCache
from fitllm.models.base import DecoderModel


def prefill(
    model: DecoderModel, kv: KVCache, tokens: Sequence[int], n_batch: int = 512, all_logits: bool = False
) -> np.ndarray:
    """Evaluate tokens in batches of n_batch; logits of the last token (or of all of them)."""
    if not len(tokens):
        raise ValueError("prefill: no tokens to evaluate")
    out = []
    for i in range(0, len(tokens), n_batch):
        out.append(model.forward(np.asarray(tokens[i : i + n_batch]), kv, all_logits))
    return np.concatenate(out) if all_logits else out[-1][-1]


def decode_step(model: DecoderModel, kv: KVCache, token: int) -> np.ndarray:
    return model.forward(np.array([token]), kv)[-1]

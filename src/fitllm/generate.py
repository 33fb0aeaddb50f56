"""Generation as small functions plus a generator: prefill, decode_step, generate()."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np

from fitllm.kv_cache import KVCache
from fitllm.models.base import DecoderModel


def prefill(
    model: DecoderModel, kv: KVCache, tokens: Sequence[int], n_batch: int = 512, all_logits: bool = False
) -> np.ndarray:
    """Evaluate tokens in batches of n_batch; logits of the last token (or of all of them)."""
    out = []
    for i in range(0, len(tokens), n_batch):
        out.append(model.forward(np.asarray(tokens[i : i + n_batch]), kv, all_logits))
    return np.concatenate(out) if all_logits else out[-1][-1]


def decode_step(model: DecoderModel, kv: KVCache, token: int) -> np.ndarray:
    return model.forward(np.array([token]), kv)[-1]


def generate(
    model: DecoderModel,
    kv: KVCache,
    prompt: Sequence[int],
    sample: Callable[[np.ndarray, list], int],
    max_tokens: int,
    is_eog: Callable[[int], bool],
    n_batch: int = 512,
    logits: np.ndarray | None = None,
) -> Iterator[int]:
    """Yield sampled tokens until an end-of-generation token or max_tokens.

    `prompt` is evaluated unless `logits` (of its last token) are given."""
    history = list(prompt)
    if logits is None:
        logits = prefill(model, kv, prompt, n_batch)
    for _ in range(max_tokens):
        tok = sample(logits, history)
        if is_eog(tok):
            return
        yield tok
        history.append(tok)
        if kv.n >= kv.n_ctx:
            return
        logits = decode_step(model, kv, tok)

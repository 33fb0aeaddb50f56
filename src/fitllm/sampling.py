"""Samplers as pure, composable filters on a logits vector (llama.cpp's order:
repeat penalty -> top-k -> top-p -> min-p -> temperature -> draw)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

NEG_INF = np.float32(-np.inf)


def repeat_penalty(logits: np.ndarray, recent: Sequence[int], penalty: float) -> np.ndarray:
    """Divide positive logits of recently seen tokens by penalty, multiply negative ones."""
    if penalty == 1.0 or not len(recent):
        return logits
    ids = np.unique(np.asarray(recent, dtype=np.int64))
    out = logits.copy()
    v = out[ids]
    out[ids] = np.where(v > 0, v / penalty, v * penalty)
    return out


def top_k(logits: np.ndarray, k: int) -> np.ndarray:
    if k <= 0 or k >= logits.size:
        return logits
    kth = np.partition(logits, -k)[-k]
    return np.where(logits >= kth, logits, NEG_INF)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max())
    return e / e.sum()


def top_p(logits: np.ndarray, p: float, min_keep: int = 1) -> np.ndarray:
    """Keep the smallest set of most likely tokens whose probabilities sum to >= p."""
    if p >= 1.0:
        return logits
    order = np.argsort(-logits, kind="stable")
    cum = np.cumsum(_softmax(logits)[order])
    n = max(min_keep, int(np.searchsorted(cum, p)) + 1)
    out = np.full_like(logits, NEG_INF)
    out[order[:n]] = logits[order[:n]]
    return out


def min_p(logits: np.ndarray, p: float, min_keep: int = 1) -> np.ndarray:
    """Keep tokens whose probability is >= p times the most likely one's."""
    if p <= 0.0:
        return logits
    keep = logits >= logits.max() + np.log(p)
    if keep.sum() < min_keep:
        return logits
    return np.where(keep, logits, NEG_INF)


@dataclass
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64


def make_sampler(
    params: SamplingParams, rng: np.random.Generator
) -> Callable[[np.ndarray, Sequence[int]], int]:
    """A function (logits, previous tokens) -> next token."""

    def sample(logits: np.ndarray, history: Sequence[int]) -> int:
        recent = history[-params.repeat_last_n :] if params.repeat_last_n > 0 else []
        logits = repeat_penalty(np.asarray(logits, dtype=np.float32), recent, params.repeat_penalty)
        if params.temperature <= 0:
            return int(np.argmax(logits))
        logits = min_p(top_p(top_k(logits, params.top_k), params.top_p), params.min_p)
        probs = _softmax(logits.astype(np.float64) / params.temperature)
        return int(rng.choice(probs.size, p=probs))

    return sample

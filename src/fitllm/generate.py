"""Generation: a sequence's state, the steps that advance it (evaluate, step) and the sampling
loop (generate). A step takes the model and the state of the sequence it advances, and the state
holds everything that sequence owns (cache, tokens, logits), so that several sequences could one
day share a forward pass."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field

import numpy as np

from fitllm.kv_cache import KVCache
from fitllm.models.protocol import Model
from fitllm.timings import Timings

#: (logits of the last token, the tokens so far) -> the next token
Sampler = Callable[[np.ndarray, list[int]], int]
#: (tokens so far, logits of the last) -> True to end before the next token
Stopping = Callable[[np.ndarray, np.ndarray], bool]


@dataclass
class SeqState:
    """One sequence: its KV cache, the tokens evaluated into it and their logits. scores has a row
    per evaluated token when all_logits, else one row: the last token's (llama-cpp-python's
    `scores`)."""

    kv: KVCache
    scores: np.ndarray
    all_logits: bool = False
    tokens: list[int] = field(default_factory=list)
    logits: np.ndarray | None = None  # the last evaluated token's

    def truncate(self, n: int) -> None:
        """Forget every token from the n-th on (their cache entries are overwritten later)."""
        self.tokens = self.tokens[:n]
        self.kv.truncate(n)


def prefill(
    model: Model, kv: KVCache, tokens: Sequence[int], n_batch: int = 512, all_logits: bool = False
) -> np.ndarray:
    """Evaluate tokens in batches of n_batch; logits of the last token (or of all of them)."""
    if not len(tokens):
        raise ValueError("prefill: no tokens to evaluate")
    out = []
    for i in range(0, len(tokens), n_batch):
        out.append(model.forward(np.asarray(tokens[i : i + n_batch]), kv, all_logits))
    return np.concatenate(out) if all_logits else out[-1][-1]


def evaluate(model: Model, seq: SeqState, tokens: list[int], n_batch: int = 512) -> None:
    """Evaluate tokens after what seq holds, recording their logits in it."""
    start = len(seq.tokens)
    logits = prefill(model, seq.kv, tokens, n_batch, all_logits=seq.all_logits)
    seq.tokens.extend(tokens)
    if seq.all_logits:
        seq.scores[start : start + len(tokens)] = logits
        seq.logits = logits[-1]
    else:
        seq.scores[0] = seq.logits = logits


def decode_step(model: Model, kv: KVCache, token: int) -> np.ndarray:
    """One token evaluated into kv: its logits."""
    return model.forward(np.array([token]), kv)[-1]


def step(model: Model, seq: SeqState, token: int) -> None:
    """One sampled token evaluated into its sequence."""
    evaluate(model, seq, [token], 1)


def generate(
    model: Model,
    seq: SeqState,
    sample: Sampler,
    max_tokens: int,
    n_ctx: int,
    is_eog: Callable[[int], bool],
    stopping: Stopping | None = None,
    perf: Timings | None = None,
) -> Generator[int, None, str]:
    """Tokens sampled after seq's evaluated prompt, each evaluated before the next is sampled (the
    last one is not: nothing would read its logits). Returns why they ended: "stop" at an
    end-of-generation token or when stopping(tokens, logits) says so, else "length" (max_tokens
    reached, or the context holds prompt and completion)."""
    perf = perf or Timings()
    for i in range(max_tokens):
        if stopping is not None and stopping(np.asarray(seq.tokens), seq.logits):
            return "stop"
        t = time.perf_counter()
        tok = sample(seq.logits, seq.tokens)
        perf.sampled(t)
        if is_eog(tok):
            return "stop"
        yield tok
        if i + 1 == max_tokens or len(seq.tokens) + 1 >= n_ctx:
            return "length"
        t = time.perf_counter()
        step(model, seq, tok)
        perf.evaluated(t)
    return "length"

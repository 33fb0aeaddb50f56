"""`fitllm perplexity`: perplexity of a text, scored the way llama.cpp's perplexity tool does, so the
numbers compare: the tokens (with the model's BOS when it adds one) cut into chunks of n_ctx, each
chunk evaluated from an empty cache with its first token replaced by BOS (when the model adds one),
and only the second half of each chunk scored: -log p(token i+1 | tokens ..i) for i from n_ctx/2."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

log = logging.getLogger(__name__)


@dataclass
class Perplexity:
    ppl: float
    stderr: float  # of ppl, from the spread of the token log-likelihoods (as llama.cpp)
    tokens_scored: int
    running: list[float] = field(default_factory=list)  # ppl after each chunk

    def report(self) -> str:
        chunks = ",".join(f"[{i + 1}]{p:.4f}" for i, p in enumerate(self.running))
        return f"{chunks}\nFinal estimate: PPL = {self.ppl:.4f} +/- {self.stderr:.5f}"


def score(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits_i)[target_i] per row, in float64."""
    x = logits.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(x - m).sum(axis=1))
    return lse - x[np.arange(len(targets)), targets]


def perplexity(
    model, tokens: list[int], n_ctx: int, n_batch: int, bos_id: int | None, n_chunks: int = -1, progress=True
) -> Perplexity:
    """model: forward(tokens, kv, all_logits) and new_cache(n) (a DecoderModel, or a streamed or
    split one); bos_id: the BOS put at each chunk's start, None when the model adds none."""
    if n_ctx < 4:
        raise ValueError("perplexity needs a context of at least 4 tokens")
    n_max = len(tokens) // n_ctx
    if n_max < 1:
        raise ValueError(
            f"the text has {len(tokens)} tokens: at least one chunk of n_ctx = {n_ctx} is needed"
        )
    n = n_max if n_chunks < 0 else min(n_chunks, n_max)
    first, nll, nll2, count, running = n_ctx // 2, 0.0, 0.0, 0, []
    for c in tqdm(range(n), desc="perplexity", unit="chunk", disable=not progress):
        chunk = np.array(tokens[c * n_ctx : (c + 1) * n_ctx])
        inp = chunk.copy()
        if bos_id is not None:
            inp[0] = bos_id
        kv = model.new_cache(n_ctx)
        logits = np.concatenate(
            [model.forward(inp[i : i + n_batch], kv, all_logits=True) for i in range(0, n_ctx, n_batch)]
        )
        v = score(logits[first : n_ctx - 1], chunk[first + 1 :])
        nll, nll2, count = nll + v.sum(), nll2 + (v * v).sum(), count + len(v)
        running.append(float(np.exp(nll / count)))
        log.info("[%d]%.4f", c + 1, running[-1])
    mean, mean2 = nll / count, nll2 / count
    ppl = float(np.exp(mean))
    var = mean2 - mean * mean
    stderr = float(np.sqrt(var / (count - 1)) * ppl) if var > 0 and count > 1 else 0.0
    return Perplexity(ppl, stderr, count, running)

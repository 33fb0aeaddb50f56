"""`fitllm perplexity`: perplexity of a text, scored the way llama.cpp's perplexity tool does, so the
numbers compare: the tokens (with the model's BOS when it adds one) cut into chunks of n_ctx, each
chunk evaluated from an empty cache with its first token replaced by BOS (when the model adds one),
and only the second half of each chunk scored: -log p(token i+1 | tokens ..i) for i from n_ctx/2."""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from fitllm.models.protocol import Model

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
    model: Model,
    tokens: list[int],
    n_ctx: int,
    n_batch: int,
    bos_id: int | None,
    n_chunks: int = -1,
    progress: bool = True,
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


SWEEP_TYPES = ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_0", "Q4_K_M", "Q4_1", "Q4_0", "Q3_K_M", "Q2_K")


def sweep_path(model: str, out_dir: str, type_name: str) -> str:
    """Where sweep writes `model` quantized to type_name."""
    return os.path.join(out_dir, f"{os.path.basename(model).rsplit('.', 1)[0]}.{type_name}.gguf")


def sweep(
    model: str,
    text: str,
    out_dir: str,
    types=SWEEP_TYPES,
    n_ctx: int = 512,
    threads: int = 2,
    keep: bool = False,
    progress: bool = True,
) -> tuple[str, str]:
    """Quantize `model` to each type, measure file size and perplexity of `text`; write a table
    (sweep.md) and a chart of size against perplexity (sweep.png). Returns their paths. Each
    quantized model is deleted once measured (the disk holds one at a time) unless keep; with
    progress, a line per type on stderr (a sweep takes minutes)."""
    os.makedirs(out_dir, exist_ok=True)
    rows, t0 = [], time.perf_counter()
    if progress:  # a line per type when it is done (quantize's warnings come between)
        print(f"fitllm: sweep: {len(types)} types, each quantized into {out_dir} and scored", file=sys.stderr)
    for i, t in enumerate(types):
        path = sweep_path(model, out_dir, t)
        try:
            rows.append((t, os.path.getsize(_quantize(model, path, t, threads)), *_ppl(path, text, n_ctx)))
        finally:
            if not keep and os.path.exists(path):
                os.remove(path)
        if progress:
            took = time.perf_counter() - t0
            size, ppl = rows[-1][1] / 1e6, rows[-1][2]
            print(
                f"fitllm: sweep {i + 1}/{len(types)} {t}: {size:.1f} MB, PPL {ppl:.4f} ({took:.0f} s)",
                file=sys.stderr,
            )
        log.info("%s: %.1f MB, PPL %.4f", t, rows[-1][1] / 1e6, rows[-1][2])
    table = os.path.join(out_dir, "sweep.md")
    with open(table, "w") as f:
        f.write(
            f"| type | file MB | PPL (n_ctx {n_ctx}) | ± | PPL vs {rows[0][0]} |\n|---|---|---|---|---|\n"
        )
        for t, size, p, e in rows:
            f.write(f"| {t} | {size / 1e6:.1f} | {p:.4f} | {e:.4f} | {p / rows[0][2] - 1:+.2%} |\n")
    return table, _chart(rows, os.path.join(out_dir, "sweep.png"), os.path.basename(model))


def _quantize(model: str, path: str, type_name: str, threads: int) -> str:
    from fitllm.quant.gguf_quantize import quantize_gguf

    quantize_gguf(model, path, type_name, threads, progress=False)
    return path


def _ppl(path: str, text: str, n_ctx: int) -> tuple[float, float]:
    """Perplexity of text under the model at path, and its standard error."""
    from fitllm.api import Llama

    llm = Llama(path, n_ctx=n_ctx, verbose=False)
    tok = llm.tokenizer
    bos = tok.bos_id if tok.add_bos else None
    r = perplexity(llm.model, llm.tokenize(text.encode()), n_ctx, n_ctx, bos, progress=False)
    llm.close()
    return r.ppl, r.stderr


def _chart(rows: list, path: str, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = sorted(rows, key=lambda r: r[1])
    sizes, ppls = [r[1] / 1e6 for r in rows], [r[2] for r in rows]
    ax.errorbar(sizes, ppls, yerr=[r[3] for r in rows], fmt="o-", capsize=3)
    for (t, *_), x, y in zip(rows, sizes, ppls):
        ax.annotate(t, (x, y), textcoords="offset points", xytext=(5, 5))
    ax.set_xlabel("file size (MB)")
    ax.set_ylabel("perplexity (lower is better)")
    ax.set_title(f"{title}: size against perplexity")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

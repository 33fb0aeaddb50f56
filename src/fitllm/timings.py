"""Where a Llama's time went, as llama.cpp's llama_perf_context_print reports it at the end of a run."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


def _rate(label: str, ms: float, n: int, unit: str) -> str:
    per = ms / n if n else 0.0
    tps = 1000.0 * n / ms if ms > 0 else 0.0
    return (
        f"{label:>16} = {ms:10.2f} ms / {n:5d} {unit:<6} ({per:8.2f} ms per token,"
        f" {tps:8.2f} tokens per second)"
    )


@dataclass
class Timings:
    """Milliseconds spent loading, evaluating prompts (n_prompt tokens), evaluating sampled tokens
    one at a time (n_eval runs) and sampling (n_sample tokens); counted since load."""

    load_ms: float = 0.0
    prompt_ms: float = 0.0
    n_prompt: int = 0
    eval_ms: float = 0.0
    n_eval: int = 0
    sample_ms: float = 0.0
    n_sample: int = 0
    start: float = field(default_factory=time.perf_counter)  # when loading ended: the total's start

    def prompt(self, since: float, n: int) -> None:
        """n prompt tokens evaluated since perf_counter() was `since`."""
        self.prompt_ms += 1000.0 * (time.perf_counter() - since)
        self.n_prompt += n

    def evaluated(self, since: float) -> None:
        self.eval_ms += 1000.0 * (time.perf_counter() - since)
        self.n_eval += 1

    def sampled(self, since: float) -> None:
        self.sample_ms += 1000.0 * (time.perf_counter() - since)
        self.n_sample += 1

    def report(self, prefix: str = "fitllm: ") -> str:
        """llama.cpp's lines: sampling, load, prompt eval, eval and total time."""
        total = 1000.0 * (time.perf_counter() - self.start)
        lines = [
            _rate("sampling time", self.sample_ms, self.n_sample, "runs"),
            f"{'load time':>16} = {self.load_ms:10.2f} ms",
            _rate("prompt eval time", self.prompt_ms, self.n_prompt, "tokens"),
            _rate("eval time", self.eval_ms, self.n_eval, "runs"),
            f"{'total time':>16} = {total:10.2f} ms / {self.n_prompt + self.n_eval:5d} tokens",
        ]
        return "\n".join(prefix + line for line in lines)

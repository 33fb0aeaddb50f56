"""sha256 of a model's float32 logits: a fixed 40-token prompt, then 8 greedy decode steps, for each
kernel path this CPU runs (FITLLM_ISA) and with FITLLM_REPACK=0 and =1. A refactor that must not
change behaviour prints the same digests before and after.

    PYTHONPATH=src python benchmarks/logits_digest.py model.gguf [more.gguf ...]
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time, in a land far away, there lived"
N_PROMPT, N_DECODE = 40, 8


def digest(path: str) -> str:
    """One configuration (the environment is read at import): the logits' sha256."""
    import numpy as np

    from fitllm.api import Llama

    llm = Llama(path, n_ctx=128, n_threads=2, logits_all=True, verbose=False)
    toks = (llm.tokenize(PROMPT.encode()) * 8)[:N_PROMPT]
    h = hashlib.sha256()
    llm.eval(toks)
    h.update(np.ascontiguousarray(llm.scores[: len(toks)], np.float32).tobytes())
    for _ in range(N_DECODE):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        llm.eval([nxt])
        h.update(np.ascontiguousarray(llm.scores[llm.n_tokens - 1], np.float32).tobytes())
    return h.hexdigest()


def isas() -> list[str]:
    from fitllm import kernels

    return [kernels.ISA_NAMES[i] for i in range(kernels.isa_supported() + 1)]


def main(models: list[str]) -> None:
    for path in models:
        for isa in isas():
            for repack in ("0", "1"):
                env = dict(os.environ, FITLLM_ISA=isa, FITLLM_REPACK=repack)
                cmd = [sys.executable, __file__, "--one", path]
                run = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if run.returncode:
                    sys.exit(f"{path} FITLLM_ISA={isa} FITLLM_REPACK={repack} failed:\n{run.stderr}")
                out = run.stdout.strip()
                print(f"{os.path.basename(path)} isa={isa} repack={repack} {out}", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        print(digest(sys.argv[2]))
    else:
        main(sys.argv[1:])

"""How much llama.cpp disagrees with itself (the noise floor behind test_models.MARGIN).

    python tests/golden/self_noise.py SMOLLM2.gguf GEMMA3.gguf

Teacher-forced top-1 of llama.cpp under other settings against the golden data (flash attention
off, n_batch 512, 2 threads): agreement and the largest golden margin at which the top-1 flipped.
"""

import json
import sys
from pathlib import Path

import numpy as np
from llama_cpp import Llama

DATA = Path(__file__).parent.parent / "data"


def main(paths: list[str]) -> None:
    for path in paths:
        name = Path(path).name.split(".")[0].split("-")[0].lower()
        g = json.loads((DATA / f"golden_{name}.json").read_text())["teacher"]
        top1, marg = np.array(g["top1"]), np.array(g["margins"])
        for kw in [dict(flash_attn=True), dict(n_batch=32), dict(n_batch=7), dict(n_threads=1)]:
            args = dict(n_ctx=1024, n_batch=512, logits_all=True, n_threads=2, verbose=False) | kw
            ll = Llama(path, **args)
            ll.eval(g["tokens"])
            bad = np.array(ll.scores[: len(g["tokens"])]).argmax(-1) != top1
            flipped = marg[bad].max() if bad.any() else 0.0
            print(f"{name} {kw}: agreement {1 - bad.mean():.3f}, largest flipped margin {flipped:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])

"""Regenerate tests/data/golden_rope_scaling.json: llama.cpp's logits on SmolLM2 with each RoPE
scaling of tests/test_rope_scaling.py written into it (needs `pip install -e .[bench]`).

    python tests/golden/rope_scaling.py SMOLLM2.gguf

Made with llama-cpp-python 0.3.36 built from source, n_threads=2, n_ctx 256, the prompt evaluated
in one batch. Per scaling (and unscaled, "none"): at each prompt position the ids and logits of
llama.cpp's 16 highest logits.
"""

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from llama_cpp import Llama

sys.path.insert(0, str(Path(__file__).parents[1]))
from test_rope_scaling import PROMPT, SCALINGS
from tiny_models import rewrite

TOP = 16


def top(path: str) -> dict:
    llm = Llama(path, n_ctx=256, n_threads=2, logits_all=True, verbose=False)
    toks = llm.tokenize(PROMPT)
    llm.eval(toks)
    s = np.array(llm.scores[: len(toks)])
    ids = np.argsort(-s, axis=-1)[:, :TOP]
    return {"ids": ids.tolist(), "logits": np.take_along_axis(s, ids, -1).round(5).tolist()}


def main(model: str) -> None:
    out = {"none": top(model)}
    with tempfile.TemporaryDirectory() as d:
        for name, (kv, tensors) in SCALINGS.items():
            out[name] = top(rewrite(model, Path(d) / f"{name}.gguf", kv=kv, tensors=tensors))
    (Path(__file__).parents[1] / "data" / "golden_rope_scaling.json").write_text(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])

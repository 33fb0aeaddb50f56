"""llama.cpp's teacher-forced top-1 on the tiny converted Grok-1 (tests/data/golden_grok_tiny.json).

    python tests/golden/grok_tiny.py          # needs `pip install -e .[bench]` (llama-cpp-python)

The model is grok1_fixture.TINY_VOCAB (the real 131,072-piece tokenizer, random weights, seed 0),
converted by `fitllm convert --type f32` with the tokenizer embedded; llama-cpp-python 0.3.36
(AMX off), n_threads=2, logits_all. The GGUF's sha256 is stored as a record of the file it saw.
"""

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from llama_cpp import Llama

sys.path.insert(0, str(Path(__file__).parent.parent))
from grok1_fixture import GOLDEN_TOKENS, write_vocab_model  # noqa: E402

OUT = Path(__file__).parent.parent / "data" / "golden_grok_tiny.json"

with tempfile.TemporaryDirectory() as d:
    path = write_vocab_model(Path(d))
    ll = Llama(str(path), n_ctx=512, n_batch=512, n_threads=2, logits_all=True, verbose=False)
    ll.eval(GOLDEN_TOKENS)
    logits = np.array(ll.scores[: len(GOLDEN_TOKENS)])
    s = np.sort(logits, axis=-1)
    OUT.write_text(
        json.dumps(
            {
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "tokens": GOLDEN_TOKENS,
                "top1": logits.argmax(-1).tolist(),
                "margins": (s[:, -1] - s[:, -2]).round(4).tolist(),
            }
        )
    )
print("wrote", OUT)

"""Golden perplexities: llama.cpp (llama-cpp-python 0.3.36, built as in README) scoring
tests/data/ppl_text.txt the way its perplexity tool does (examples/perplexity: tokens with
add_special, chunks of n_ctx from an empty cache, first token -> BOS when the model adds one, the
second half of each chunk scored). Writes tests/data/golden_perplexity.json.
Run: python tests/golden/perplexity.py SMOLLM2.gguf GEMMA.gguf"""

import json
import sys
from pathlib import Path

import numpy as np
from llama_cpp import Llama, llama_cpp

DATA = Path(__file__).parents[1] / "data"
N_CTX = 128


def ppl(path: str) -> dict:
    llm = Llama(path, n_ctx=N_CTX, n_batch=N_CTX, logits_all=True, verbose=False, n_threads=2)
    tokens = llm.tokenize((DATA / "ppl_text.txt").read_bytes(), add_bos=True, special=False)
    add_bos = llama_cpp.llama_vocab_get_add_bos(llama_cpp.llama_model_get_vocab(llm.model))
    nll, count, running = 0.0, 0, []
    for c in range(len(tokens) // N_CTX):
        chunk = tokens[c * N_CTX : (c + 1) * N_CTX]
        inp = [llm.token_bos()] + chunk[1:] if add_bos else chunk
        llm.reset()
        llm.eval(inp)
        x = np.array(llm.scores[:N_CTX], np.float64)[N_CTX // 2 : N_CTX - 1]
        m = x.max(1, keepdims=True)
        v = m[:, 0] + np.log(np.exp(x - m).sum(1)) - x[np.arange(len(x)), chunk[N_CTX // 2 + 1 :]]
        nll, count = nll + v.sum(), count + len(v)
        running.append(float(np.exp(nll / count)))
    return {"n_ctx": N_CTX, "n_tokens": len(tokens), "ppl": running[-1], "running": running}


if __name__ == "__main__":
    out = {name: ppl(p) for name, p in zip(("smollm2", "gemma"), sys.argv[1:3])}
    (DATA / "golden_perplexity.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out))

"""Regenerate the llama.cpp golden data in tests/data/ (needs `pip install -e .[bench]`).

    python tests/golden/make_golden.py SMOLLM2.gguf GEMMA3.gguf

Made with llama-cpp-python 0.3.36 built from source with AMX off (see README), n_threads=2.
For each model it stores: token ids of ~600 varied strings (tokenize(add_bos=False, special=False),
plus a subset with add_bos=True/special=True); greedy 64-token continuations with llama.cpp's
top-1/top-2 margin at each step; and teacher-forced top-1 ids and margins over a text.
"""

import json
import sys
from pathlib import Path

import numpy as np
from llama_cpp import Llama

sys.path.insert(0, str(Path(__file__).parent))
from strings import PROMPTS, TEACHER_TEXT, test_strings

OUT = Path(__file__).parent.parent / "data"


def top2(row: np.ndarray) -> tuple[int, float]:
    i = np.argsort(row)[-2:]
    return int(i[1]), float(row[i[1]] - row[i[0]])


def tokens_golden(ll: Llama) -> dict:
    strings = test_strings()
    plain = [ll.tokenize(s.encode(), add_bos=False, special=False) for s in strings]
    special = [ll.tokenize(s.encode(), add_bos=True, special=True) for s in strings[:150]]
    return {"strings": strings, "plain": plain, "bos_special": special}


def greedy_golden(ll: Llama, n: int = 64) -> list:
    out = []
    for prompt in PROMPTS:
        ll.reset()
        toks = ll.tokenize(prompt.encode(), add_bos=True, special=True)
        ll.eval(toks)
        gen, margins = [], []
        for _ in range(n):
            tok, margin = top2(np.array(ll.scores[ll.n_tokens - 1]))
            gen.append(tok)
            margins.append(margin)
            ll.eval([tok])
        out.append({"prompt": prompt, "prompt_tokens": toks, "tokens": gen, "margins": margins})
    return out


def teacher_golden(ll: Llama) -> dict:
    ll.reset()
    toks = ll.tokenize(TEACHER_TEXT.encode(), add_bos=True, special=False)
    ll.eval(toks)
    scores = np.array(ll.scores[: len(toks)])
    tops = [top2(r) for r in scores]
    return {"tokens": toks, "top1": [t for t, _ in tops], "margins": [m for _, m in tops]}


def main(paths: list[str]) -> None:
    for path in paths:
        ll = Llama(path, n_ctx=1024, n_batch=512, logits_all=True, n_threads=2, verbose=False)
        name = Path(path).name.split(".")[0].split("-")[0].lower()
        data = {
            "model": Path(path).name,
            "tokens": tokens_golden(ll),
            "greedy": greedy_golden(ll),
            "teacher": teacher_golden(ll),
        }
        (OUT / f"golden_{name}.json").write_text(json.dumps(data, ensure_ascii=False))
        print(path, "->", OUT / f"golden_{name}.json")


if __name__ == "__main__":
    main(sys.argv[1:])

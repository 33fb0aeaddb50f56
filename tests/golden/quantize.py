"""Golden data for `fitllm quantize`, from llama.cpp (llama-cpp-python 0.3.36):
- llama_model_quantize (llama-quantize) on the same F16 source (SmolLM2-135M-Instruct Q4_1 decoded
  to F16 by fitllm): each tensor's type, the RMS error of its K-type tensors against the source,
  and its time at 2 threads;
- llama.cpp's greedy tokens on the files fitllm writes.
Writes tests/data/golden_quantize.json. Run: python tests/golden/quantize.py"""

import ctypes
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf import quants as gq
from llama_cpp import Llama, llama_cpp

from fitllm.default_model import default_model_path
from fitllm.quant.gguf_quantize import quantize_gguf
from fitllm.quant.recipe import FTYPES

PROMPT = "The capital of France is"
OUT = Path(__file__).parents[1] / "data" / "golden_quantize.json"


def sq_errors(src: str, out: str) -> dict:
    """Sum of squared errors and count per K type, against the source tensors."""
    s = {t.name: t for t in GGUFReader(src).tensors}
    acc: dict = {}
    for t in GGUFReader(out).tensors:
        if t.tensor_type.name.endswith("_K"):
            x = np.asarray(s[t.name].data, np.float32).reshape(-1)
            y = gq.dequantize(np.asarray(t.data), t.tensor_type).reshape(-1)
            e = acc.setdefault(t.tensor_type.name, [0.0, 0])
            e[0] += float(((y - x) ** 2).sum())
            e[1] += x.size
    return acc


def llama_cpp_quantize(src: str, out: str, ftype: int) -> float:
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype, p.nthread = ftype, 2
    t0 = time.perf_counter()
    assert llama_cpp.llama_model_quantize(src.encode(), out.encode(), ctypes.byref(p)) == 0
    return time.perf_counter() - t0


def main() -> None:
    d = Path(tempfile.mkdtemp())
    src = str(d / "f16.gguf")
    quantize_gguf(str(default_model_path()), src, "F16", progress=False)
    gold = {}
    for name, (_, ft) in FTYPES.items():
        if name in ("F32", "F16", "BF16"):
            continue
        ref, mine = str(d / f"ref-{name}.gguf"), str(d / f"fit-{name}.gguf")
        secs = llama_cpp_quantize(src, ref, ft)
        t0 = time.perf_counter()
        quantize_gguf(src, mine, name, 2, progress=False)
        fit_secs = time.perf_counter() - t0
        llm = Llama(mine, n_ctx=128, verbose=False)
        toks = llm.tokenize(PROMPT.encode(), add_bos=True)
        greedy = []
        for t in llm.generate(toks, temp=0.0, top_k=1):
            greedy.append(int(t))
            if len(greedy) == 16:
                break
        gold[name] = {
            "types": {t.name: t.tensor_type.name for t in GGUFReader(ref).tensors},
            "sq_errors": sq_errors(src, ref),
            "llama_cpp_s": secs,
            "fitllm_s": fit_secs,
            "llama_cpp_greedy_on_fitllm_file": greedy,
        }
        print(name, f"llama.cpp {secs:.2f} s, fitllm {fit_secs:.2f} s", greedy[:6])
    OUT.write_text(json.dumps({"prompt": PROMPT, "ftypes": gold}, indent=1))


if __name__ == "__main__":
    main()

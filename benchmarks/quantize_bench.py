"""fitllm quantize against llama.cpp's llama_model_quantize (llama-cpp-python): the same source
file, type and threads; seconds, MB/s of the source, ratio.

    python benchmarks/quantize_bench.py SRC.gguf [-t 2] [--types Q8_0 Q4_0 Q4_K_M Q6_K]"""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
import tempfile
import time


def llama_cpp(src: str, dst: str, ftype: int, threads: int) -> float:
    from llama_cpp import llama_cpp as L

    p = L.llama_model_quantize_default_params()
    p.ftype, p.nthread = ftype, threads
    t0 = time.perf_counter()
    assert L.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(p)) == 0
    return time.perf_counter() - t0


def fitllm(src: str, dst: str, name: str, threads: int) -> float:
    cmd = [sys.executable, "-m", "fitllm", "quantize", src, dst, name, "-t", str(threads), "--no-progress"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0  # the whole command, start-up included


def main() -> None:
    from fitllm.quant.recipe import FTYPES

    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--types", nargs="+", default=["Q8_0", "Q4_0", "Q5_1", "Q4_K_M", "Q5_K_M", "Q6_K"])
    a = ap.parse_args()
    mb = os.path.getsize(a.src) / 1e6
    d = tempfile.mkdtemp()
    print(f"source {os.path.basename(a.src)} ({mb:.0f} MB), {a.threads} threads")
    print("| type | llama.cpp s | fitllm s | fitllm MB/s | fitllm / llama.cpp time |\n|---|---|---|---|---|")
    for name in a.types:
        ref = llama_cpp(a.src, os.path.join(d, "ref.gguf"), FTYPES[name][1], a.threads)
        mine = fitllm(a.src, os.path.join(d, "fit.gguf"), name, a.threads)
        print(f"| {name} | {ref:.2f} | {mine:.2f} | {mb / mine:.0f} | {mine / ref:.2f} |")


if __name__ == "__main__":
    main()

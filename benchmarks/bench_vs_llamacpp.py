"""fitllm vs llama.cpp (llama-cpp-python) on the same GGUF and threads; same as `fitllm bench --vs-llamacpp`.

pip install -e .[bench]      # builds llama-cpp-python from source (~6 min; AMX off, see README)
python benchmarks/bench_vs_llamacpp.py MODEL.gguf [-t 2] [-p 128] [-n 128] [-r 3]
"""

import argparse

from fitllm.bench import run_bench

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-p", "--n-prompt", type=int, default=128)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("-r", "--rounds", type=int, default=3)
    a = ap.parse_args()
    print(run_bench(a.model, a.threads, a.n_prompt, a.n_gen, a.rounds, vs_llamacpp=True))

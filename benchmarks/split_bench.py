"""Split runs against one process on the same machine: prompt and decode tok/s, per-rank time
communicating. Every configuration uses the same number of cores (ranks x threads).

    python benchmarks/split_bench.py -m model.gguf [-n 2] [-p 64] [-g 32]

It starts `mpirun -n N python benchmarks/split_bench.py --inner ...` for each split mode; on one
machine the ranks share its memory bandwidth, so this measures the overhead of splitting (the
communication and the imbalance), not the gain of adding machines."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from fitllm.distributed.comm import LOCAL_MPIRUN as MPIRUN


def timed(model, kv_new, n_prompt: int, n_gen: int) -> dict:
    kv = kv_new(n_prompt + n_gen + 1)
    toks = np.random.default_rng(0).integers(10, model.hp.n_vocab, n_prompt)
    t0 = time.perf_counter()
    logits = model.forward(toks, kv)
    t1 = time.perf_counter()
    for _ in range(n_gen):
        logits = model.forward(np.array([int(logits[-1].argmax())]), kv)
    t2 = time.perf_counter()
    return {"prompt_tok_s": n_prompt / (t1 - t0), "decode_tok_s": n_gen / (t2 - t1)}


def inner(a: argparse.Namespace) -> None:
    from fitllm import kernels
    from fitllm.distributed import Comm, load_split
    from fitllm.gguf import GGUFFile

    kernels.set_threads(a.threads)
    comm = Comm()
    m = load_split(GGUFFile(a.model), a.n_prompt + a.n_gen + 1, a.inner, comm=comm)
    if comm.rank != 0:
        m.serve()
        return
    timed(m, m.new_cache, 8, 2)  # warm the pages and the caches
    m.comm.comm_s = 0.0
    r = timed(m, m.new_cache, a.n_prompt, a.n_gen)
    r["rank0_comm_s"] = m.comm.comm_s
    r["share_mib"] = m.bytes / 2**20
    m.close()
    print("RESULT " + json.dumps(r), flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("-m", "--model", required=True)
    p.add_argument("-n", "--ranks", type=int, default=2)
    p.add_argument("-t", "--threads", type=int, default=1, help="threads per rank")
    p.add_argument("-p", "--n-prompt", type=int, default=64)
    p.add_argument("-g", "--n-gen", type=int, default=32)
    p.add_argument("--inner", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.inner:
        return inner(a)
    from fitllm import kernels
    from fitllm.gguf import GGUFFile
    from fitllm.models import load_model

    kernels.set_threads(a.ranks * a.threads)
    m = load_model(GGUFFile(a.model))
    timed(m, m.new_cache, 8, 2)
    rows = {f"1 process, {a.ranks * a.threads} threads": timed(m, m.new_cache, a.n_prompt, a.n_gen)}
    del m
    for mode in ("layer", "tensor"):
        cmd = [*MPIRUN, "-n", str(a.ranks), sys.executable, __file__, "-m", a.model, "-t", str(a.threads)]
        cmd += ["-p", str(a.n_prompt), "-g", str(a.n_gen), "--inner", mode]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "FITLLM_THREADS": "1"})
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            sys.exit(f"{mode}: {out.stderr[-2000:]}")
        rows[f"{a.ranks} ranks x {a.threads} thread, {mode}"] = json.loads(line[0][7:])
    base = next(iter(rows.values()))
    print(
        f"| {os.path.basename(a.model)} | prompt tok/s | decode tok/s | decode vs 1 process | rank 0 comm s |"
    )
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['prompt_tok_s']:.1f} | {r['decode_tok_s']:.2f} |"
            f" {r['decode_tok_s'] / base['decode_tok_s']:.2f} | {r.get('rank0_comm_s', 0):.2f} |"
        )


if __name__ == "__main__":
    main()

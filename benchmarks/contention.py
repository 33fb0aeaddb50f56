"""Decode, prompt and load speed on an idle machine and under a competing CPU load (one busy process
per core), fitllm and llama.cpp (llama-cpp-python) in the same run, same GGUF and threads, engines
interleaved round by round. A busy desktop or shared server is where spinning thread pools collapse.

    python benchmarks/contention.py -m model.gguf -t 2 -r 3 [--busy 2] [--env GOMP_SPINCOUNT=...]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics

from fitllm.bench import _measure


def _spin() -> None:
    while True:
        pass


def _round(engines: list[str], model: str, threads: int, n_prompt: int, n_gen: int, busy: int) -> dict:
    procs = [mp.Process(target=_spin, daemon=True) for _ in range(busy)]
    for p in procs:
        p.start()
    try:
        return {e: _measure(e, model, threads, n_prompt, n_gen) for e in engines}
    finally:
        for p in procs:
            p.kill()
            p.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-t", "--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("-r", "--rounds", type=int, default=3)
    ap.add_argument("-p", "--n-prompt", type=int, default=64)
    ap.add_argument("-n", "--n-gen", type=int, default=32)
    ap.add_argument("--busy", type=int, default=len(os.sched_getaffinity(0)), help="busy processes")
    ap.add_argument("--no-llamacpp", action="store_true")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for both engines' processes")
    a = ap.parse_args()
    os.environ.update(dict(kv.split("=", 1) for kv in a.env))
    engines = ["fitllm"] + ([] if a.no_llamacpp else ["llama.cpp"])
    res: dict[tuple[str, int], list[dict]] = {}
    for i in range(a.rounds):
        for busy in (0, a.busy):
            for e, r in _round(engines, a.model, a.threads, a.n_prompt, a.n_gen, busy).items():
                res.setdefault((e, busy), []).append(r)
                print(f"round {i + 1} busy {busy} {e}: decode {r['decode_tps']:.1f} tok/s", flush=True)
    med = {k: {m: statistics.median(x[m] for x in v) for m in v[0]} for k, v in res.items()}
    print(f"\nmodel {a.model}  threads {a.threads}  busy processes {a.busy}  rounds {a.rounds}")
    print(f"{'engine':<10} {'load':<6} {'prompt tok/s':>12} {'decode tok/s':>12} {'load s':>7}")
    for (e, busy), m in sorted(med.items()):
        print(
            f"{e:<10} {'busy' if busy else 'idle':<6} {m['prompt_tps']:>12.1f} {m['decode_tps']:>12.1f}"
            f" {m['load_s']:>7.2f}"
        )
    for e in engines:
        idle, busy = med[(e, 0)], med[(e, a.busy)]
        print(
            f"{e}: busy/idle decode {busy['decode_tps'] / idle['decode_tps']:.2f}x"
            f"  prompt {busy['prompt_tps'] / idle['prompt_tps']:.2f}x  load {busy['load_s'] / idle['load_s']:.2f}x"
        )


if __name__ == "__main__":
    main()

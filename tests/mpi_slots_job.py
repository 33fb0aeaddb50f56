"""Run under mpirun by test_distributed.py: two caches (a server's slots) on one split model, taking
turns token by token, with an idle pause longer than the MPI timeout between the first prompt and
the rest. Usage: mpi_slots_job.py MODEL MODE OUT_DIR IDLE_S TIMEOUT_S"""

import gc
import json
import sys
import time
from pathlib import Path

import numpy as np

from fitllm import kernels
from fitllm.distributed import Comm, load_split
from fitllm.gguf import GGUFFile
from mpi_job import PROMPT


def greedy_turns(m, n: int, idle_s: float) -> tuple[list[int], list[int]]:
    """Slot a runs PROMPT and 3 tokens, idles, then slot b runs PROMPT (over the positions a
    filled) and both go on in turns: each must give one process's greedy tokens."""
    toks = np.array([t % m.hp.n_vocab for t in PROMPT])
    kv_a = m.new_cache(64)
    out = {"a": [int(m.forward(toks, kv_a)[-1].argmax())]}
    for _ in range(3):
        out["a"].append(int(m.forward(np.array(out["a"][-1:]), kv_a)[-1].argmax()))
    time.sleep(idle_s)  # the other ranks wait for the next step longer than their MPI timeout
    kv_b = m.new_cache(64)
    out["b"] = [int(m.forward(toks, kv_b)[-1].argmax())]
    while len(out["b"]) < n:
        for name, kv in (("a", kv_a), ("b", kv_b)):
            if len(out[name]) < n:
                out[name].append(int(m.forward(np.array(out[name][-1:]), kv)[-1].argmax()))
    return out["a"][:n], out["b"][:n]


def main() -> None:
    model, mode, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    idle_s, timeout_s = float(sys.argv[4]), float(sys.argv[5])
    kernels.set_threads(1)
    comm = Comm(timeout=60)  # loading may be slow on a busy machine: the short timeout is for steps
    m = load_split(GGUFFile(model), 64, mode, comm=comm)
    comm.timeout = timeout_s
    if comm.rank != 0:
        m.serve()
        return
    a, b = greedy_turns(m, 12, idle_s)
    gc.collect()  # both caches are gone: a new one takes a freed slot
    m.forward(np.array(PROMPT[:4]), m.new_cache(64))
    (out / "slots.json").write_text(json.dumps({"a": a, "b": b, "n_slots": len(m._slots)}))
    m.close()


if __name__ == "__main__":
    main()

"""Run under mpirun by test_distributed.py: one split model, its logits and greedy tokens, and what
each rank holds. Usage: mpi_job.py MODEL MODE SHARES|- OUT_DIR [kill-rank]"""

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from fitllm import kernels
from fitllm.distributed import Comm, load_split
from fitllm.gguf import GGUFFile

PROMPT = [1, 504, 3458, 282, 4649, 314, 7042, 30, 378, 3458, 282, 6262, 314]  # teacher-forced ids


def resident_weights(path: str, header: int) -> int:
    """Bytes of the model file mapped into this process (less its header, metadata not weights)."""
    rss, mine = 0, False
    for line in open("/proc/self/smaps"):
        if line[0] in "0123456789abcdef" and " " in line:
            mine = line.split()[-1] == path
        elif mine and line.startswith("Rss:"):
            rss += int(line.split()[1]) * 1024
    return max(0, rss - header)


def die_when(flag: Path) -> None:
    while not flag.exists():
        time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    model, mode, shares, out = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
    kill = int(sys.argv[5]) if len(sys.argv) > 5 else -1
    kernels.set_threads(1)
    comm = Comm(timeout=float(os.environ.get("FITLLM_MPI_TIMEOUT", 60)))
    f = GGUFFile(model)
    m = load_split(f, 64, mode, None if shares == "-" else [float(s) for s in shares.split(",")], comm=comm)
    if comm.rank == kill:  # dies mid-generation, once rank 0 says so
        threading.Thread(target=die_when, args=(out / "killing",), daemon=True).start()
    if comm.rank != 0:
        m.serve()
    else:
        vocab = m.hp.n_vocab
        kv = m.new_cache(64)
        logits = m.forward(np.array([t % vocab for t in PROMPT]), kv, all_logits=True)
        greedy, tok = [], int(logits[-1].argmax())
        for i in range(12):
            greedy.append(tok)
            if i == 4 and kill >= 0:
                (out / "killing").write_text(str(time.time()))
                while True:  # generate until the job is ended
                    kv.n = 0
                    m.forward(np.array(PROMPT[:4]), kv)
            tok = int(m.forward(np.array([tok]), kv)[-1].argmax())
        np.save(out / "logits.npy", logits)
        (out / "greedy.json").write_text(json.dumps(greedy))
        m.close()
    stats = dict(
        share=m.bytes,
        resident=resident_weights(model, f.data_offset) + getattr(m, "copied", 0),
        comm_s=comm.comm_s,
    )
    (out / f"rank{comm.rank}.json").write_text(json.dumps(stats))


if __name__ == "__main__":
    main()

"""The MPI side of a split run (mpi4py): who we are, raw-buffer transfers, and failure handling.

Activations move as numpy buffers (mpi4py's upper-case, buffer API), never as pickles; only the
start-up facts each rank reports (memory, header hash) are small Python objects. A wait inside a
step (or at start-up) that lasts longer than `timeout` seconds ends the process with a message
naming the peer, so a hung or vanished rank cannot hang the others; waiting between steps (an idle
server, a prompt at the terminal) is not timed. A rank that dies makes mpirun end the job."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# mpirun for ranks on this machine (tests, benchmarks): more ranks than cores, as root too, and
# plain copies in the shared-memory transport (containers may forbid its ptrace single copy)
LOCAL_MPIRUN = [
    "mpirun",
    "--oversubscribe",
    "--allow-run-as-root",
    "--mca",
    "btl_vader_single_copy_mechanism",
    "none",
]
_ENV = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")


def mpi_rank() -> int:
    """This process's rank as mpirun set it (0 when not under mpirun), without importing MPI."""
    for k in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"):
        if k in os.environ:
            return int(os.environ[k])
    return 0


def under_mpirun() -> bool:
    """Started by mpirun/mpiexec with more than one rank (without importing MPI)."""
    for k in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        if k in os.environ:
            return int(os.environ[k]) > 1
    return any(k in os.environ for k in _ENV[2:])


class DistributedError(RuntimeError):
    """A split run that cannot start: every rank raises the same one."""


class Comm:
    def __init__(self, timeout: float | None = None) -> None:
        from mpi4py import MPI

        self.MPI = MPI
        self.c = MPI.COMM_WORLD
        self.rank, self.size = self.c.Get_rank(), self.c.Get_size()
        self.timeout = float(os.environ.get("FITLLM_MPI_TIMEOUT", 600)) if timeout is None else timeout
        self.comm_s = 0.0  # seconds spent waiting in transfers and reductions
        self._watch: tuple[float, str] | None = None
        threading.Thread(target=self._watchdog, daemon=True).start()

    # --- failure handling --------------------------------------------------------------------
    def _watchdog(self) -> None:
        while True:
            time.sleep(1.0)
            w = self._watch
            if w and time.monotonic() - w[0] > self.timeout:
                sys.stderr.write(
                    f"fitllm rank {self.rank}: no answer from {w[1]} for {self.timeout:.0f} s; giving up\n"
                )
                sys.stderr.flush()
                os._exit(3)

    def _wait(self, what: str, fn, *args) -> Any:
        self._watch = (time.monotonic(), what)
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.comm_s += time.perf_counter() - t0
            self._watch = None

    def abort(self, message: str, code: int = 1) -> None:
        """End every rank of the job now (after an error on this one)."""
        sys.stderr.write(f"fitllm rank {self.rank}: {message}\n")
        sys.stderr.flush()
        self.c.Abort(code)

    # --- start-up facts ----------------------------------------------------------------------
    def allgather(self, value: Any) -> list[Any]:
        return self._wait("every rank (start-up)", self.c.allgather, value)

    def agree(self, what: str, value: Any) -> None:
        """Refuse to start unless every rank has the same value (a model file's header hash...)."""
        values = self.allgather(value)
        odd = [r for r, v in enumerate(values) if v != values[0]]
        if odd:
            raise DistributedError(f"{what} differs between rank 0 and rank(s) {', '.join(map(str, odd))}")

    def report(self, read_per_token: int, n_tokens: int, busy_s: float) -> None:
        """Log, on rank 0, what each rank read per token and how long it waited on the others."""
        rows = self.allgather((read_per_token, self.comm_s, busy_s))
        if self.rank == 0:
            for r, (read, comm_s, busy) in enumerate(rows):
                log.info(
                    "rank %d: %.1f MiB read per token; %.2f s in forward passes (%d tokens), of which %.2f s"
                    " communicating",
                    r, read / 2**20, busy, n_tokens, comm_s,
                )  # fmt: skip

    # --- activations -------------------------------------------------------------------------
    def bcast(self, buf: np.ndarray, idle: bool = False) -> None:
        """buf <- rank 0's. idle: a wait for the next step (rank 0 waits for a user or a request),
        neither watched nor counted as communication: only a wait inside a step can be a hang."""
        if idle:
            self.c.Bcast(buf, 0)
        else:
            self._wait("rank 0", self.c.Bcast, buf, 0)

    def send(self, buf: np.ndarray, dest: int):
        """Start sending; returns the request (keep buf alive until it is waited for)."""
        return self.c.Isend(buf, dest=dest)

    def recv(self, buf: np.ndarray, source: int) -> None:
        self._wait(f"rank {source}", self.c.Recv, buf, source)

    def wait_all(self, reqs: list) -> None:
        if reqs:
            self._wait("a receiving rank", self.MPI.Request.Waitall, reqs)

    def allreduce(self, buf: np.ndarray) -> None:
        """buf <- its sum over the ranks, in place."""
        self._wait("every rank (allreduce)", self.c.Allreduce, self.MPI.IN_PLACE, buf, self.MPI.SUM)

    def gather_cols(self, part: np.ndarray, widths: list[int]) -> np.ndarray | None:
        """Rank 0 gets the ranks' (R, widths[r]) blocks side by side as (R, sum(widths))."""
        rows = part.shape[0]
        out = np.empty(rows * sum(widths), np.float32) if self.rank == 0 else None
        counts = [rows * w for w in widths]
        recv = (
            [out, counts, np.cumsum([0] + counts[:-1]).tolist(), self.MPI.FLOAT] if self.rank == 0 else None
        )
        self._wait("every rank (gather)", self.c.Gatherv, np.ascontiguousarray(part, np.float32), recv, 0)
        if out is None:
            return None
        blocks, at = [], 0
        for c, w in zip(counts, widths):
            blocks.append(out[at : at + c].reshape(rows, w))
            at += c
        return np.concatenate(blocks, axis=1)

"""Loading one model split over MPI ranks.

`load_split` checks, on every rank and before anything is loaded, that all ranks have the same
model file (header hash), that the split is possible, and that each rank's share fits its
memory; every rank then raises the same error, so none is left waiting."""

from __future__ import annotations

import logging

from fitllm.distributed.comm import Comm, DistributedError
from fitllm.distributed.pipeline import PipelineModel
from fitllm.distributed.tensor_parallel import TensorParallelModel
from fitllm.gguf import GGUFFile
from fitllm.models import load_model
from fitllm.models.layers import FileRows
from fitllm.plan import (
    OVERHEAD,
    ModelShape,
    human_size,
    kv_bytes,
    machine_memory,
    pipeline_split,
    shape_of_gguf,
    tensor_split,
)

log = logging.getLogger(__name__)

# llama.cpp's split modes (LLAMA_SPLIT_MODE_LAYER = 1, _ROW = 2) and their names here
SPLIT_MODES = {
    1: "layer",
    2: "tensor",
    "layer": "layer",
    "pipeline": "layer",
    "row": "tensor",
    "tensor": "tensor",
}


def parse_split_mode(mode: int | str) -> str:
    if mode not in SPLIT_MODES:
        raise ValueError(f"unknown split mode {mode!r} (layer or tensor)")
    return SPLIT_MODES[mode]


def _shares(comm: Comm, split: list[float] | None) -> list[float]:
    if split:
        if len(split) != comm.size or min(split) <= 0:
            raise DistributedError(f"--split needs {comm.size} positive shares (one per rank), got {split}")
        return [float(s) for s in split]
    return [float(m) for m in comm.allgather(machine_memory())]  # each host's memory


def _check_memory(comm: Comm, share: int, kv: int, mmap_stream: bool) -> None:
    mem = machine_memory()
    need = share + kv + OVERHEAD
    rows = comm.allgather((need, mem))
    short = [f"rank {r} needs {human_size(n)} of {human_size(m)}" for r, (n, m) in enumerate(rows) if n > m]
    if short and not mmap_stream:
        raise DistributedError(
            "; ".join(short) + ": add ranks, change --split, or quantize further (fitllm plan)"
        )


def _read_per_token(shape: ModelShape, a: int, b: int, head: bool) -> int:
    """Bytes one token reads from layers [a, b) (and the output head, on the last rank)."""

    def mine(name: str) -> bool:
        layer = shape.layer_of(name)
        if layer is not None:
            return a <= layer < b
        # the head: output norm and matrix, or the embedding when it is the output too
        return head and (name != "token_embd.weight" or "output.weight" not in shape.tensors)

    return shape.read_per_token(mine)


def load_split(
    f: GGUFFile,
    n_ctx: int,
    mode: str = "layer",
    split: list[float] | None = None,
    mmap_stream: bool = False,
    comm: Comm | None = None,
) -> PipelineModel | TensorParallelModel:
    """This rank's part of the model. Rank 0 calls forward/new_cache/close on it; the others call
    serve(), which returns when rank 0 closes."""
    comm = comm or Comm()
    comm.agree("the model file (sha256 of its GGUF header)", f.header_hash())
    shares = _shares(comm, split)
    shape = shape_of_gguf(f)
    if mode == "layer":
        if comm.size > shape.n_layer:
            raise DistributedError(
                f"{comm.size} ranks but the model has {shape.n_layer} layers: use at most that many"
            )
        s = pipeline_split(shape, shares, n_ctx)
        a, b = s.layers[comm.rank]
        _check_memory(comm, s.weights[comm.rank], kv_bytes(shape, n_ctx, b - a), mmap_stream)
    else:
        s = tensor_split(shape, shares, n_ctx)
        _check_memory(comm, s.weights[comm.rank], s.kv[comm.rank], mmap_stream)
    model = load_model(f)
    model.token_embd = FileRows(f, f.tensor("token_embd.weight"))  # lookups by reads: no resident rows
    if mode == "layer":
        out = PipelineModel(model, comm, s.layers)
        out.bytes = s.weights[comm.rank]
        out.read_per_token = _read_per_token(shape, a, b, comm.rank == comm.size - 1)
    else:
        out = TensorParallelModel(model, comm, shares)
    log.info("rank %d of %d: %s split, %.1f MiB of weights", comm.rank, comm.size, mode, out.bytes / 2**20)
    return out

"""One model over several MPI ranks (`mpirun -n N fitllm run ...`): pipeline or tensor-parallel.

`load.py` loads a model split over the ranks; `comm.py` is the MPI layer, `pipeline.py` and
`tensor_parallel.py` the two splits. Only `comm` is imported up front: a run that is not under
mpirun pays for nothing else."""

from fitllm.distributed.comm import Comm, DistributedError, under_mpirun

__all__ = ["Comm", "DistributedError", "load_split", "parse_split_mode", "under_mpirun"]


def __getattr__(name: str):
    if name in ("load_split", "parse_split_mode"):
        from fitllm.distributed import load

        return getattr(load, name)
    raise AttributeError(name)

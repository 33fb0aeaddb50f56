"""A dense model's matrices regrouped in 16-row strips for the AVX-512 VNNI and AVX2 kernels
(csrc/repack.c), as llama.cpp repacks its weights at load. The strips of a file are kept in the
cache (up to CACHE_MAX bytes of them, in FITLLM_CACHE/packed): a later load reads them instead of
repacking. Mixtures of experts keep the file's layout (the expert
cache reads it; streamed or not, they give the same bits)."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Callable

import numpy as np

from fitllm import kernels
from fitllm.gguf import Tensor
from fitllm.models.base import DecoderModel
from fitllm.models.layers import FileRows, Linear
from fitllm.tokenizer import cache_dir

log = logging.getLogger(__name__)
LAYOUT = b"strips-2"  # changes with the layout of csrc/repack.c or the order of the matrices
CACHE_MAX = 4 << 30
#: the order a block computes its matrices in, which is their order in memory: the kernels prefetch
#: 4 KiB ahead, past the end of one matrix into the start of the next
COMPUTE_ORDER = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def _matrices(model: DecoderModel) -> list[tuple[object, str, Linear, int]]:
    """(owner, attribute, Linear, packed bytes) of every matrix with a strip kernel, in the order a
    forward uses them: block by block, then the output."""
    out = []
    for owner in [*model.blk, model]:
        names = sorted(
            vars(owner), key=lambda n: COMPUTE_ORDER.index(n) if n in COMPUTE_ORDER else len(COMPUTE_ORDER)
        )
        for name in names:
            lin = getattr(owner, name)
            if isinstance(lin, Linear) and name != "token_embd":  # the embedding: rows, by reads
                size = kernels.packed_bytes(lin.weight.ggml_type, *lin.weight.shape)
                out += [(owner, name, lin, size)] if size else []
    return out


def _cache_path(model: DecoderModel) -> Path:
    st = os.stat(model.file.path)
    h = hashlib.sha256(LAYOUT + f"|{model.file.header_hash()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return cache_dir() / "packed" / f"{h.hexdigest()[:32]}.bin"


def _read(path: Path) -> np.ndarray:
    """The cached strips, read into anonymous memory: numpy puts large arrays on transparent huge
    pages, and decode streams every strip each token (a mapping of the file has 4 KiB pages, whose
    TLB misses slow the reads)."""
    size = path.stat().st_size
    room = kernels.aligned(size, 4096)
    with open(path, "rb", buffering=0) as f:
        view, got = memoryview(room), 0
        while got < size:
            n = f.readinto(view[got:])
            if not n:
                raise OSError(f"{path}: cut short")
            got += n
    return room


def _save(room: np.ndarray, path: Path) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(memoryview(room))
        os.replace(tmp, path)
        _evict(path.parent, CACHE_MAX)
    except OSError as e:
        log.info("repacked weights not cached: %s", e)
        tmp.unlink(missing_ok=True)


def _evict(folder: Path, keep: int) -> None:
    """Delete the least recently used entries (a load touches its entry) until the rest take at
    most `keep` bytes: strips of other files, or of an older layout, do not pile up."""
    entries = sorted(((p.stat(), p) for p in folder.glob("*.bin")), key=lambda e: -e[0].st_mtime)
    total = 0
    for st, p in entries:
        total += st.st_size
        if total > keep:
            log.info("dropping cached strips %s (%.0f MB)", p.name, st.st_size / 1e6)
            p.unlink(missing_ok=True)


def repack(model: DecoderModel, threads: int = 1) -> Callable[[], None] | None:
    """Point the model's matrices at their strips: read from the cache, or copied from the file
    into anonymous memory (its pages never mapped: resident memory stays the model's size) on a
    thread, compiled (other Python work goes on beside it). Returns what to call before the first
    forward to wait for the copy (then saved to the cache), or None when there is nothing to wait for."""
    todo = [] if model.hp.n_expert else _matrices(model)
    if not todo:
        return None
    ends = np.cumsum([0] + [-(-size // 64) * 64 for *_, size in todo]).tolist()  # 64-byte aligned
    path = _cache_path(model)
    cached = path.is_file() and path.stat().st_size == ends[-1]
    if cached:
        os.utime(path)  # recently used: evicted last
    # a copy: page-aligned anonymous memory (numpy puts large arrays on transparent huge pages,
    # which fill far faster than 4 KiB pages)
    room = _read(path) if cached else kernels.aligned(ends[-1], 4096)
    jobs = []  # (the matrix as the file holds it, where its strips go)
    for (owner, name, lin, size), at in zip(todo, ends):
        w, packed = lin.weight, room[at : at + size]
        jobs.append((w, packed))
        # a new Linear: a tied output shares its tensor with the embedding lookup
        setattr(owner, name, Linear(Tensor(w.name, w.ggml_type | kernels.PACKED, w.shape, packed), lin.bias))
    # the embedding by reads: mapping its rows would add more of the file than they are
    model.token_embd = FileRows(model.file, model.file.tensor("token_embd.weight"))
    if cached:
        return None
    done, failed = threading.Event(), []

    def copy() -> None:
        try:
            for w, out in (job for job in jobs if not job[0].path):  # straddled byte parts: in memory
                out[:] = kernels.repack(w.ggml_type, w.data, *w.shape)
            for shard in dict.fromkeys(w.path for w, _ in jobs if w.path):  # each file of a split model
                fd = os.open(shard, os.O_RDONLY)
                try:
                    mine = [(w.ggml_type, w.offset, *w.shape, out) for w, out in jobs if w.path == shard]
                    kernels.repack_file(fd, mine, threads)
                finally:
                    os.close(fd)
        except BaseException as e:  # raised by the waiter
            failed.append(e)
        done.set()
        if not failed and ends[-1] <= CACHE_MAX:
            _save(room, path)

    threading.Thread(target=copy, name="fitllm-repack").start()

    def wait() -> None:
        done.wait()
        if failed:
            raise failed[0]

    return wait

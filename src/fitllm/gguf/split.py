"""`fitllm split` / `fitllm merge`: llama.cpp's gguf-split shard sets, written with gguf-py's own
splitting writer (the first shard holds the metadata, every shard split.no / split.count /
split.tensors.count, names PREFIX-00001-of-0000N.gguf), so that either tool loads the other's.
Everything is written into a temporary folder beside the output and renamed when complete."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter
from gguf.gguf_writer import GGUFValue

from fitllm.gguf.reader import GGUFError, GGUFFile, Tensor
from fitllm.gguf.writer import copy_metadata
from fitllm.quant import GGML_TYPES

log = logging.getLogger(__name__)
SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")


class _SplitWriter(GGUFWriter):
    """gguf-py's splitting writer with the split keys in llama-gguf-split's order (it sets
    split.count last), so that both tools write the same bytes."""

    def add_shard_kv_data(self) -> None:
        n, total = len(self.tensors), sum(len(t) for t in self.tensors)
        for i, kv in enumerate(self.kv_data + [{} for _ in range(len(self.kv_data), n)]):
            kv[SPLIT_KEYS[0]] = GGUFValue(i, GGUFValueType.UINT16)
            kv[SPLIT_KEYS[2]] = GGUFValue(total, GGUFValueType.INT32)
            kv[SPLIT_KEYS[1]] = GGUFValue(n, GGUFValueType.UINT16)  # a set of one is a set too
            if i >= len(self.kv_data):
                self.kv_data.append(kv)


def parse_split_size(text: str) -> int:
    """gguf-split's --split-max-size: a positive whole number of M (10^6) or G (10^9) bytes."""
    m = re.fullmatch(r"([0-9]+)([MG])", text.strip())
    if not m or int(m.group(1)) <= 0:
        raise ValueError(f"--max-size {text!r}: give a positive whole number of M or G bytes, e.g. 4G, 500M")
    return int(m.group(1)) * (10**6 if m.group(2) == "M" else 10**9)


def _byte_view(t: Tensor) -> np.ndarray:
    """The tensor's bytes shaped (..., bytes per row), as gguf-py's add_tensor takes quantized data."""
    _, block, size = GGML_TYPES[t.ggml_type]
    return t.data.reshape(*t.shape[:-1], t.shape[-1] // block * size)


def _write(w: GGUFWriter, f: GGUFFile, tmp: Path, stem: str) -> list[Path]:
    for t in f.tensors.values():
        w.add_tensor(t.name, _byte_view(t), raw_dtype=GGMLQuantizationType(t.ggml_type))
    w.write_header_to_file(path=tmp / f"{stem}.gguf")
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=True)
    w.close()
    return sorted(tmp.iterdir())


def split_gguf(src: str, prefix: str, max_size: int = 0, max_tensors: int = 0) -> list[str]:
    """Shards PREFIX-0000i-of-0000N.gguf of src, each at most max_size bytes of tensors or
    max_tensors tensors (as llama-gguf-split --split-max-size / --split-max-tensors)."""
    if (max_size > 0) == (max_tensors > 0):
        raise ValueError("split: give one of --max-size and --max-tensors")
    f = GGUFFile(src)
    out = Path(prefix)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as d:
        w = _SplitWriter(None, f.architecture, split_max_tensors=max_tensors, split_max_size=max_size)
        copy_metadata(f, w, SPLIT_KEYS)
        files = _write(w, f, Path(d), out.name)
        if len(files) == 1:  # gguf-py names a set of one as a plain file; llama-gguf-split does not
            one = Path(d) / f"{out.name}-00001-of-00001.gguf"
            files[0].rename(one)
            files = [one]
        done = [str(out.parent / p.name) for p in files]
        for p, final in zip(files, done):
            os.replace(p, final)
    log.info("split %s into %d shards", src, len(done))
    return done


def merge_gguf(first: str, dst: str) -> str:
    """One GGUF from a shard set (given its first shard), as llama-gguf-split --merge writes it:
    the first shard's metadata with split.count 0."""
    f = GGUFFile(first)
    if f.metadata.get("split.count", 0) < 1 or f.metadata.get("split.no", 0) != 0:
        raise GGUFError(f"{first}: not the first shard of a gguf-split set (no split.count)")
    if os.path.exists(dst):
        raise ValueError(f"{dst} exists: merge does not overwrite it")
    out = Path(dst)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent or ".") as d:
        w = GGUFWriter(None, f.architecture)
        copy_metadata(f, w, set_={"split.count": 0})  # not a set any more, as llama.cpp marks it
        files = _write(w, f, Path(d), "merged")
        os.replace(files[0], out)
    return str(out)

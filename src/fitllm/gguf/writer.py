"""Streaming GGUF writing on top of gguf-py's GGUFWriter.

Tensors are declared first (name, shape, type), then their bytes are written one at a time as
they are produced, so a converter holds one tensor in memory, never the model. The file is written
as OUT.part and renamed to OUT only when complete: an interrupted run leaves no half-written OUT."""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter

from fitllm.gguf.reader import GGUFFile
from fitllm.quant import tensor_nbytes


class GGUFStreamWriter:
    """with GGUFStreamWriter(path, arch) as w: w.meta.add_...(); w.declare(...); w.begin(); w.write(...)"""

    def __init__(self, path: str | os.PathLike, arch: str) -> None:
        self.path = Path(path)
        self.part = self.path.with_name(self.path.name + ".part")
        self.meta = GGUFWriter(str(self.part), arch)  # metadata: the add_* methods of gguf-py
        self._pending: list[tuple[str, int]] = []
        self._done = 0  # bytes of the current tensor written so far

    def declare(self, name: str, shape: tuple[int, ...], ggml_type: int) -> None:
        """A tensor of `shape` (numpy order, e.g. (rows, cols)) that write() will be given later."""
        nbytes = tensor_nbytes(shape, ggml_type)
        self.meta.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, GGMLQuantizationType(ggml_type))
        self._pending.append((name, nbytes))

    def begin(self) -> None:
        """Write the header, metadata and tensor table; then write() the tensors in declared order."""
        self.meta.write_header_to_file()
        self.meta.write_kv_data_to_file()
        self.meta.write_ti_data_to_file()

    def write(self, name: str, data: np.ndarray) -> None:
        """The next bytes of tensor `name`: all of it, or consecutive slices of it in several calls."""
        expect, nbytes = self._pending[0]
        if name != expect or self._done + data.nbytes > nbytes:
            raise ValueError(f"writing {data.nbytes} bytes of {name} where {expect} ({nbytes} bytes) is due")
        fout = self.meta.fout[0]
        if self._done == 0:
            self.meta.write_padding(fout, fout.tell())  # each tensor starts aligned
        np.ascontiguousarray(data).tofile(fout)
        self._done += data.nbytes
        if self._done == nbytes:
            self.meta.write_padding(fout, nbytes)
            self._pending.pop(0)
            self._done = 0

    def close(self) -> None:
        if self._pending:
            raise ValueError(
                f"{len(self._pending)} declared tensors were not written, first {self._pending[0][0]}"
            )
        self.meta.close()
        os.replace(self.part, self.path)

    def __enter__(self) -> GGUFStreamWriter:
        return self

    def __exit__(self, et: type | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if et is None:
            self.close()
            return
        self.meta.close()
        self.part.unlink(missing_ok=True)


def copy_metadata(f: GGUFFile, w: GGUFWriter, skip: tuple[str, ...] = (), set_: dict | None = None) -> None:
    """f's metadata into w (gguf-py's writer) in its order, less general.architecture (w has it) and
    `skip`, with the values in `set_` replaced; general.alignment also sets w's data alignment."""
    for key, value in f.metadata.items():
        if key == "general.architecture" or key in skip:
            continue
        value = (set_ or {}).get(key, value)
        if key == "general.alignment":
            w.add_custom_alignment(value)
            continue
        vtype, sub = f.value_types[key]
        value = value.tolist() if isinstance(value, np.ndarray) else list(value) if sub is not None else value
        w.add_key_value(
            key, value, GGUFValueType(vtype), sub_type=None if sub is None else GGUFValueType(sub)
        )

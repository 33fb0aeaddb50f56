"""Open a GGUF file with gguf-py's reader (np.memmap) and expose zero-copy tensor views.

Nothing is dequantized here: a Tensor holds the raw block bytes of the mmapped file.
Every way a file can be bad ends in one GGUFError with a one-line message.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType

from fitllm.quant import SUPPORTED_TYPES


class GGUFError(Exception):
    """A GGUF file that cannot be used; the message says why in one line."""


_REQUIRED = object()


@dataclass
class Tensor:
    name: str
    ggml_type: int
    shape: tuple[int, ...]  # numpy order: (rows, cols) for a matrix
    data: np.ndarray  # raw bytes (uint8), a view of the mmapped file
    offset: int = -1  # of data in the file

    @property
    def type_name(self) -> str:
        return GGMLQuantizationType(self.ggml_type).name

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape))


class _CheckedReader(GGUFReader):
    """gguf-py's reader, checking each tensor's type and extent before it maps it.

    Element reads go through a plain ndarray view of the same mapping: np.memmap's per-slice
    overhead made parsing a 262k-token vocabulary take seconds."""

    def _get(self, offset: int, dtype, count: int = 1, override_order=None) -> np.ndarray:
        plain = self.__dict__.get("_plain")
        if plain is None:  # also read by _get_field_parts
            plain = self.__dict__["_plain"] = self.data.view(np.ndarray)
        dt = np.dtype(dtype)
        count = int(count)
        arr = plain[offset : offset + dt.itemsize * count].view(dt)[:count]
        return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

    def _get_field_parts(self, orig_offs: int, raw_type: int):
        """Arrays in bulk: gguf-py makes two numpy arrays per element, seconds for a 262k vocabulary.
        A string array becomes one str per string, a scalar array one ndarray."""
        if raw_type != GGUFValueType.ARRAY:
            return super()._get_field_parts(orig_offs, raw_type)
        itype = GGUFValueType(int(self._get(orig_offs, np.uint32)[0]))
        n = int(self._get(orig_offs + 4, np.uint64)[0])
        offs = orig_offs + 12
        if itype == GGUFValueType.STRING:
            from fitllm.kernels import gguf_strings  # the walk over 262k length prefixes, in C

            plain = self.__dict__["_plain"]
            found = gguf_strings(plain, offs, n, self.byte_order != "I")
            if found is None:
                raise GGUFError("a metadata string runs past the end of the file: truncated or corrupt")
            starts, lens, end = found
            return (
                end - orig_offs,
                _decode_strings(plain, starts, lens),
                list(range(n)),
                [GGUFValueType.ARRAY, itype],
            )
        nptype = self.gguf_scalar_to_np.get(itype)
        if nptype is None:  # nested arrays: gguf-py's general path
            return super()._get_field_parts(orig_offs, raw_type)
        arr = self._get(offs, nptype, n)
        if arr.size != n:
            raise GGUFError("a metadata array runs past the end of the file: truncated or corrupt")
        return 12 + arr.nbytes, [arr], [0], [GGUFValueType.ARRAY, itype]

    def _build_tensors(self, start_offs: int, fields: list) -> None:
        size = len(self.data)
        for field in fields:
            _, name_data, _, dims, raw_dtype, offset = field.parts
            name = bytes(name_data).decode("utf-8", "replace")
            try:
                qtype = GGMLQuantizationType(int(raw_dtype[0]))
            except ValueError:
                raise GGUFError(f"tensor {name!r} has unknown tensor type {int(raw_dtype[0])}") from None
            block, type_size = GGML_QUANT_SIZES[qtype]
            n = int(np.prod(dims))
            if n % block:
                raise GGUFError(f"tensor {name!r}: {n} elements is not a whole number of {qtype.name} blocks")
            end = start_offs + int(offset[0]) + n // block * type_size
            if end > size:
                raise GGUFError(
                    f"tensor {name!r} runs past the end of the file (needs {end} bytes, file has {size}):"
                    " the file is truncated or corrupt"
                )
        super()._build_tensors(start_offs, fields)


def _decode_strings(buf: np.ndarray, starts: np.ndarray, lens: np.ndarray, chunk: int = 8192) -> list[str]:
    """The strings of a GGUF string array, decoded a chunk at a time (small transient copies): the
    8-byte length prefixes made NULs, one decode, one split (~6x faster than a str per slice); one by
    one where a string holds a NUL. (A NUL is never inside a multi-byte sequence, so each string
    decodes as it would alone.)"""
    out: list[str] = []
    for i in range(0, len(starts), chunk):
        st, ln = starts[i : i + chunk], lens[i : i + chunk]
        base, n = int(st[0]) - 8, len(st)
        region = buf[base : int(st[-1] + ln[-1])].copy()
        region[(st - 8 - base)[:, None] + np.arange(8)] = 0
        if np.count_nonzero(region == 0) == 8 * n:
            out += region[8:].tobytes().decode("utf-8", "surrogateescape").split("\0" * 8)
        else:
            mv = memoryview(buf)
            out += [str(mv[a : a + b], "utf-8", "surrogateescape") for a, b in zip(st.tolist(), ln.tolist())]
    return out


def _field_value(field) -> Any:
    if not field.types:
        return None
    if field.types[0] == GGUFValueType.ARRAY:
        sub = field.types[-1]
        if sub == GGUFValueType.STRING:  # decoded by _get_field_parts
            return [field.parts[i] for i in field.data]
        return np.concatenate([field.parts[i] for i in field.data]) if field.data else np.array([])
    if field.types[0] == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8", "surrogateescape")
    return field.parts[field.data[0]][0].item()


class GGUFFile:
    """A parsed GGUF file: `metadata` (key -> value) and `tensors` (name -> Tensor)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self._fd: int | None = None  # for read(), opened on first use
        if not os.path.isfile(self.path):
            raise GGUFError(f"{self.path}: no such file")
        size = os.path.getsize(self.path)
        if size < 24:
            raise GGUFError(f"{self.path}: {size} bytes is too small to be a GGUF file")
        with open(self.path, "rb") as f:
            magic = f.read(4)
        if magic != b"GGUF":
            raise GGUFError(f"{self.path}: not a GGUF file (magic {magic!r}, expected b'GGUF')")
        try:
            self._reader = _CheckedReader(self.path, "r")
        except GGUFError as e:
            raise GGUFError(f"{self.path}: {e}") from None
        except Exception as e:  # gguf-py signals a short or garbled header in many ways
            raise GGUFError(
                f"{self.path}: truncated or corrupt GGUF header ({type(e).__name__}: {e})"
            ) from None
        self.metadata: dict[str, Any] = {
            k: _field_value(f) for k, f in self._reader.fields.items() if not k.startswith("GGUF.")
        }
        # each key's GGUF value type (and an array's item type), to write the metadata out again
        self.value_types: dict[str, tuple[GGUFValueType, GGUFValueType | None]] = {
            k: (f.types[0], f.types[-1] if f.types[0] == GGUFValueType.ARRAY else None)
            for k, f in self._reader.fields.items()
            if k in self.metadata
        }
        self.tensors: dict[str, Tensor] = {}
        for t in self._reader.tensors:
            raw = np.asarray(t.data).reshape(-1).view(np.uint8)
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            self.tensors[t.name] = Tensor(t.name, int(t.tensor_type), shape, raw, int(t.data_offset))
        self.data_offset = min((t.offset for t in self.tensors.values()), default=size)
        # the parsed parts (one object per vocabulary string) are no longer needed: ~100 MB for 262k
        self._reader.fields.clear()
        self._reader.tensors = []

    @property
    def architecture(self) -> str:
        return self.get("general.architecture")

    def get(self, key: str, default: Any = _REQUIRED) -> Any:
        if key in self.metadata:
            return self.metadata[key]
        if default is _REQUIRED:
            raise GGUFError(f"{self.path}: required metadata key {key!r} is missing")
        return default

    def tensor(self, name: str, required: bool = True) -> Tensor | None:
        t = self.tensors.get(name)
        if t is None and required:
            raise GGUFError(f"{self.path}: required tensor {name!r} is missing")
        return t

    def read(self, t: Tensor, start: int = 0, n: int | None = None) -> np.ndarray:
        """Bytes [start, start + n) of a tensor's data, read from the file into a new array: what is
        read this way does not count in this process's resident memory, unlike touching the mmap."""
        n = t.nbytes - start if n is None else n
        if start < 0 or n < 0 or start + n > t.nbytes:
            raise ValueError(f"{t.name}: bytes [{start}, {start + n}) outside its {t.nbytes}")
        out = np.empty(n, np.uint8)
        if self._fd is None:  # one descriptor for every read (norms at load, rows per token)
            self._fd = os.open(self.path, os.O_RDONLY)
        view, got = memoryview(out), 0
        while got < n:  # one call reads at most ~2 GiB
            r = os.preadv(self._fd, [view[got:]], t.offset + start + got)
            if r <= 0:
                raise GGUFError(f"{self.path}: short read in tensor {t.name}")
            got += r
        return out

    def advise(self, advice: int, tensors: list[Tensor] | None = None) -> None:
        """madvise (mmap.MADV_*) the whole mapping, or the pages of the given tensors."""
        mm = self._reader.data._mmap
        if tensors is None:
            mm.madvise(advice)
        page = mmap.PAGESIZE
        for t in tensors or []:
            start = t.offset - t.offset % page
            mm.madvise(advice, start, t.offset + t.nbytes - start)

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def header_hash(self) -> str:
        """sha256 of the header (metadata and tensor table) and the file size: which model it is."""
        import hashlib

        with open(self.path, "rb") as f:
            h = hashlib.sha256(f.read(self.data_offset))
        h.update(str(os.path.getsize(self.path)).encode())
        return h.hexdigest()

    def check_supported(self) -> None:
        for t in self.tensors.values():
            if t.ggml_type not in SUPPORTED_TYPES:
                names = ", ".join(GGMLQuantizationType(x).name for x in sorted(SUPPORTED_TYPES))
                raise GGUFError(
                    f"{self.path}: tensor {t.name!r} has type {t.type_name}, which fitllm does"
                    f" not support (supported: {names})"
                )

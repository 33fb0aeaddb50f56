"""Read a GGUF file: its metadata, and zero-copy views of its tensors in one read-only mmap.

The header is walked here (string arrays located in C), not by gguf-py's GGUFReader, whose import
alone is a large share of a model load; tests check both read every file alike. Nothing is
dequantized: a Tensor holds the raw block bytes of the mapping. Every way a file can be bad ends
in one GGUFError with a one-line message.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from fitllm.quant import GGML_TYPES, SUPPORTED_TYPES, type_name

VERSIONS = (2, 3)
STRING, ARRAY = 8, 9  # GGUF value types; the scalars are below
#: GGUF scalar value type -> struct code (little-endian sizes)
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
UINT32 = 4


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
    path: str = ""  # the file (of a split model: the shard) that holds it

    @property
    def type_name(self) -> str:
        return type_name(self.ggml_type)

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape))


class _Cursor:
    """Reads the header's fields in order, each checked against the end of the file."""

    def __init__(self, buf: np.ndarray, order: str) -> None:
        self.buf, self.mv, self.order, self.pos = buf, memoryview(buf), order, 0

    def need(self, n: int) -> int:
        if n < 0 or self.pos + n > len(self.mv):
            raise GGUFError("the header runs past the end of the file: truncated or corrupt")
        start, self.pos = self.pos, self.pos + n
        return start

    def unpack(self, code: str) -> Any:
        return struct.unpack_from(self.order + code, self.mv, self.need(struct.calcsize(code)))[0]

    def string(self) -> str:
        n = self.unpack("Q")
        return str(self.mv[self.need(n) : self.pos], "utf-8", "surrogateescape")

    def value(self, vtype: int, depth: int = 0) -> tuple[Any, int | None]:
        """One metadata value of type vtype, and an array's item type."""
        if vtype == STRING:
            return self.string(), None
        if vtype in SCALARS:
            return self.unpack(SCALARS[vtype]), None
        if vtype != ARRAY:
            raise GGUFError(f"unknown metadata value type {vtype}: corrupt header")
        itype, n = self.unpack("I"), self.unpack("Q")
        if itype == STRING:
            return self.strings(n), itype
        if itype in SCALARS:
            dt = np.dtype(self.order + SCALARS[itype])
            start = self.need(n * dt.itemsize)
            return self.buf[start : self.pos].view(dt).astype(dt.newbyteorder("=")), itype
        if n > len(self.mv) - self.pos:  # nested arrays: each item takes at least 12 bytes
            raise GGUFError("a metadata array runs past the end of the file: truncated or corrupt")
        if depth > 8:
            raise GGUFError("metadata arrays nested more than 8 deep: corrupt header")
        return [self.value(itype, depth + 1)[0] for _ in range(n)], itype

    def strings(self, n: int) -> StringArray:
        from fitllm.kernels import gguf_strings  # the walk over 262k length prefixes, in C

        if n > (len(self.mv) - self.pos) // 8:  # each string takes at least its 8-byte length
            raise GGUFError("a metadata string array runs past the end of the file: truncated or corrupt")
        found = gguf_strings(self.buf, self.pos, n, self.order == ">")
        if found is None:
            raise GGUFError("a metadata string runs past the end of the file: truncated or corrupt")
        starts, lens, self.pos = found
        return StringArray(self.buf, starts, lens)


class StringArray(Sequence):
    """A GGUF string array, decoded on first use: a tokenizer loaded from the cache never reads the
    merges (49k-260k strings)."""

    def __init__(self, buf: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> None:
        self._buf, self._starts, self._lens = buf, starts, lens

    @cached_property
    def _items(self) -> list[str]:
        items = _decode_strings(self._buf, self._starts, self._lens) if len(self._starts) else []
        del self._buf, self._starts
        return items

    def __len__(self) -> int:
        return len(self._lens)

    def __getitem__(self, i):
        return self._items[i]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and not isinstance(other, str) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"StringArray({len(self)} strings)"


def _decode_strings(buf: np.ndarray, starts: np.ndarray, lens: np.ndarray, chunk: int = 8192) -> list[str]:
    """The strings of a GGUF string array, decoded a chunk at a time (small transient copies): the
    8-byte length prefixes made NULs, one decode, one split (not a str per slice); one by
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


def _map(path: str) -> mmap.mmap:
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def _open(path: str) -> tuple[mmap.mmap, np.ndarray, str]:
    """The file mapped read-only, as bytes, and its byte order ('<' or '>')."""
    size = os.path.getsize(path)
    if size < 24:
        raise GGUFError(f"{path}: {size} bytes is too small to be a GGUF file")
    mm = _map(path)
    magic = mm[:4]
    if magic != b"GGUF":
        raise GGUFError(f"{path}: not a GGUF file (magic {magic!r}, expected b'GGUF')")
    version = struct.unpack_from("<I", mm, 4)[0]
    order = "<" if version & 0xFFFF else ">"  # a big-endian file's version reads as 0x0N000000
    version = struct.unpack_from(order + "I", mm, 4)[0]
    if version not in VERSIONS:
        raise GGUFError(f"{path}: GGUF version {version} is not supported (supported: 2, 3)")
    return mm, np.frombuffer(mm, np.uint8), order


class GGUFFile:
    """A parsed GGUF file: `metadata` (key -> value) and `tensors` (name -> Tensor)."""

    def __init__(self, path: str | os.PathLike, shards: bool = True) -> None:
        self.path = os.fspath(path)
        self._fds: dict[str, int] = {}  # for read(), each opened on first use
        if not os.path.isfile(self.path):
            raise GGUFError(f"{self.path}: no such file")
        from fitllm.gguf.sets import byte_parts, join_shards

        #: (path, start in the model's bytes, bytes) of each file the bytes are cut into
        self._parts = byte_parts(self.path, os.path.getsize(self.path))
        self._mm, buf, order = _open(self.path)
        self._bufs = [buf] + [np.frombuffer(_map(p), np.uint8) for p, _, _ in self._parts[1:]]
        self._size = sum(n for _, _, n in self._parts)
        try:
            self._parse(_Cursor(buf, order))
        except GGUFError as e:
            raise GGUFError(f"{self.path}: {e}") from None
        #: every file of the model: the first, then the other shards of a gguf-split set
        self.shards: list[GGUFFile] = [self]
        if shards:
            join_shards(self)

    def _parse(self, c: _Cursor) -> None:
        c.pos = 8
        n_tensors, n_kv = c.unpack("Q"), c.unpack("Q")
        self.metadata: dict[str, Any] = {}
        #: each key's GGUF value type (and an array's item type), to write the metadata out again
        self.value_types: dict[str, tuple[int, int | None]] = {}
        self._spans: dict[str, tuple[int, int]] = {}  # of each value in the file
        for _ in range(n_kv):
            key, vtype = c.string(), c.unpack("I")
            if key in self.metadata:
                raise GGUFError(f"metadata key {key!r} appears twice")
            start = c.pos
            self.metadata[key], sub = c.value(vtype)
            self.value_types[key] = (vtype, sub)
            self._spans[key] = (start, c.pos)
        infos = [self._tensor_info(c) for _ in range(min(n_tensors, len(c.mv)))]
        if len(infos) < n_tensors:
            raise GGUFError("the tensor table runs past the end of the file: truncated or corrupt")
        align = self.metadata.get("general.alignment", 32)
        if (
            self.value_types.get("general.alignment", (UINT32,))[0] != UINT32
            or align <= 0
            or align & (align - 1)
        ):
            raise GGUFError(f"bad general.alignment {align!r}: not a power of two")
        start = -(-c.pos // align) * align
        self.tensors: dict[str, Tensor] = {}
        expected = 0  # as llama.cpp's gguf.cpp: each tensor at the aligned end of the one before
        for name, ggml_type, shape, offset, nbytes in infos:
            if name in self.tensors:
                raise GGUFError(f"tensor {name!r} appears twice")
            end = start + offset + nbytes
            if end > self._size:
                raise GGUFError(
                    f"tensor {name!r} runs past the end of the file (needs {end} bytes, file has"
                    f" {self._size}): the file is truncated or corrupt"
                )
            if offset != expected:  # overlapping, misaligned or out of order
                raise GGUFError(f"tensor {name!r} has data offset {offset}, expected {expected}")
            expected += -(-nbytes // align) * align
            self.tensors[name] = Tensor(name, ggml_type, shape, *self._bytes(start + offset, end))
        self.data_offset = -(-c.pos // align) * align

    def span(self, path: str, offset: int, n: int) -> np.ndarray:
        """A view of n bytes at offset of one of the model's files (a shard or byte part)."""
        for f in self.shards:
            for (p, _, size), buf in zip(f._parts, f._bufs):
                if p == path and 0 <= offset and offset + n <= size:
                    return buf[offset : offset + n]
        raise GGUFError(f"{path}: bytes [{offset}, {offset + n}) are not in the model's files")

    def _bytes(self, start: int, end: int) -> tuple[np.ndarray, int, str]:
        """Bytes [start, end) of the model: a view of the part holding them and where in it, or
        (straddling two byte parts) a copy in memory at offset -1 of no file."""
        for (path, at, n), buf in zip(self._parts, self._bufs):
            if at <= start and end <= at + n:
                return buf[start - at : end - at], start - at, path
        out = np.empty(end - start, np.uint8)
        for (_, at, n), buf in zip(self._parts, self._bufs):
            lo, hi = max(start, at), min(end, at + n)
            if lo < hi:
                out[lo - start : hi - start] = buf[lo - at : hi - at]
        return out, -1, ""

    @staticmethod
    def _tensor_info(c: _Cursor) -> tuple[str, int, tuple[int, ...], int, int]:
        name, n_dims = c.string(), c.unpack("I")
        if n_dims > 4:
            raise GGUFError(f"tensor {name!r} has {n_dims} dimensions (at most 4)")
        dims = [c.unpack("Q") for _ in range(n_dims)]
        if not dims or 0 in dims:
            raise GGUFError(f"tensor {name!r} has no elements (dimensions {dims})")
        ggml_type, offset = c.unpack("I"), c.unpack("Q")
        if ggml_type not in GGML_TYPES:
            raise GGUFError(f"tensor {name!r} has unknown tensor type {ggml_type}")
        _, block, type_size = GGML_TYPES[ggml_type]
        n = int(np.prod(dims, dtype=object))
        if n % block:
            raise GGUFError(
                f"tensor {name!r}: {n} elements is not a whole number of {type_name(ggml_type)} blocks"
            )
        return name, ggml_type, tuple(reversed(dims)), offset, n // block * type_size

    @property
    def architecture(self) -> str:
        a = self.get("general.architecture")
        if not isinstance(a, str):  # it names keys and picks the model class
            raise GGUFError(f"{self.path}: metadata general.architecture is not a string")
        return a

    def get(self, key: str, default: Any = _REQUIRED) -> Any:
        if key in self.metadata:
            return self.metadata[key]
        if default is _REQUIRED:
            raise GGUFError(f"{self.path}: required metadata key {key!r} is missing")
        return default

    def value_bytes(self, key: str) -> memoryview:
        """A metadata value's bytes as stored in the file: what to hash to know it."""
        start, end = self._spans[key]
        return memoryview(self._mm)[start:end]

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
        if not t.path:  # straddled two byte parts: already in memory
            return t.data[start : start + n].copy()
        out = np.empty(n, np.uint8)
        path = t.path
        if path not in self._fds:  # one descriptor per file for every read (norms at load, rows per token)
            self._fds[path] = os.open(path, os.O_RDONLY)
        view, got = memoryview(out), 0
        while got < n:  # one call reads at most ~2 GiB
            r = os.preadv(self._fds[path], [view[got:]], t.offset + start + got)
            if r <= 0:
                raise GGUFError(f"{path}: short read in tensor {t.name}")
            got += r
        return out

    def advise(self, advice: int, tensors: list[Tensor] | None = None) -> None:
        """madvise (mmap.MADV_*) the whole mapping of every shard, or the pages of the given tensors."""
        for f in self.shards:
            if tensors is None:
                f._mm.madvise(advice)
            page = mmap.PAGESIZE
            for t in tensors or []:
                if t.path == f.path:
                    start = t.offset - t.offset % page
                    f._mm.madvise(advice, start, t.offset + t.nbytes - start)

    def __del__(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            os.close(fd)

    def header_hash(self) -> str:
        """sha256 of the headers (metadata and tensor tables) and the sizes of every shard: which
        model it is."""
        import hashlib

        h = hashlib.sha256()
        for f in self.shards:
            h.update(memoryview(f._mm)[: f.data_offset])  # the mapped header, not a second read
            h.update(str(f._size).encode())
        return h.hexdigest()

    @property
    def nbytes(self) -> int:
        """The model's size on disk: every shard and byte part."""
        return sum(f._size for f in self.shards)

    def check_supported(self) -> None:
        for t in self.tensors.values():
            if t.ggml_type not in SUPPORTED_TYPES:
                names = ", ".join(type_name(x) for x in sorted(SUPPORTED_TYPES))
                raise GGUFError(
                    f"{self.path}: tensor {t.name!r} has type {t.type_name}, which fitllm does"
                    f" not support (supported: {names})"
                )

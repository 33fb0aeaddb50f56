"""Where each field of a GGUF header lies (byte offsets): what the fuzzer (fuzz_gguf.py) mutates.

Walks the header as the GGUF spec lays it out (little-endian files only: every model the fuzzer
starts from is one) and records the position and size of every field it may want to overwrite.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

#: GGUF scalar value type -> struct code
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9


@dataclass
class KV:
    key: str
    start: int  # of the key's length prefix
    type_at: int  # of the uint32 value type
    value_at: int  # of the value
    end: int  # after the value
    vtype: int
    sub: int | None = None  # an array's item type
    count_at: int = -1  # an array's uint64 count


@dataclass
class TensorInfo:
    name: str
    start: int
    name_at: int  # of the name's bytes (after the length prefix)
    n_dims: int
    dims_at: list[int]  # of each uint64 dim
    dims: list[int]
    type_at: int
    ggml_type: int
    offset_at: int
    offset: int
    end: int


@dataclass
class Layout:
    size: int
    n_tensors: int
    n_kv: int
    kvs: list[KV] = field(default_factory=list)
    tensors: list[TensorInfo] = field(default_factory=list)
    header_end: int = 0  # after the tensor table, before the alignment padding
    data_start: int = 0
    alignment: int = 32

    def kv(self, key: str) -> KV | None:
        return next((k for k in self.kvs if k.key == key), None)


class _Walk:
    def __init__(self, buf: bytes) -> None:
        self.buf, self.pos = buf, 0

    def take(self, code: str):
        v = struct.unpack_from("<" + code, self.buf, self.pos)[0]
        self.pos += struct.calcsize(code)
        return v

    def string(self) -> str:
        n = self.take("Q")
        s = self.buf[self.pos : self.pos + n].decode("utf-8", "replace")
        self.pos += n
        return s

    def skip_value(self, vtype: int) -> None:
        if vtype == STRING:
            self.pos += 8 + struct.unpack_from("<Q", self.buf, self.pos)[0]
        elif vtype in SCALARS:
            self.pos += struct.calcsize(SCALARS[vtype])
        else:
            sub, n = self.take("I"), self.take("Q")
            if sub in SCALARS:
                self.pos += n * struct.calcsize(SCALARS[sub])
            elif n > len(self.buf):
                raise ValueError("an array longer than the file")
            else:
                for _ in range(n):
                    self.skip_value(sub)


def parse(buf: bytes) -> Layout:
    """The layout of a well-formed GGUF file's header."""
    w = _Walk(buf)
    w.pos = 8
    lay = Layout(len(buf), w.take("Q"), w.take("Q"))
    if max(lay.n_kv, lay.n_tensors) > len(buf):
        raise ValueError("more entries than bytes")
    for _ in range(lay.n_kv):
        start = w.pos
        key = w.string()
        type_at = w.pos
        vtype = w.take("I")
        kv = KV(key, start, type_at, w.pos, 0, vtype)
        if vtype == ARRAY:
            kv.sub = struct.unpack_from("<I", buf, w.pos)[0]
            kv.count_at = w.pos + 4
        if key == "general.alignment":
            lay.alignment = struct.unpack_from("<I", buf, w.pos)[0]
        w.skip_value(vtype)
        kv.end = w.pos
        lay.kvs.append(kv)
    for _ in range(lay.n_tensors):
        start = w.pos
        name = w.string()
        name_at = w.pos - len(name.encode())
        n_dims = w.take("I")
        if n_dims > 8:  # a mutated header: nothing more to locate in it
            raise ValueError(f"tensor {name!r}: {n_dims} dimensions")
        dims_at = [w.pos + 8 * i for i in range(n_dims)]
        dims = [w.take("Q") for _ in range(n_dims)]
        type_at = w.pos
        ggml_type = w.take("I")
        offset_at = w.pos
        offset = w.take("Q")
        info = TensorInfo(
            name, start, name_at, n_dims, dims_at, dims, type_at, ggml_type, offset_at, offset, w.pos
        )
        lay.tensors.append(info)
    lay.header_end = w.pos
    lay.data_start = -(-w.pos // lay.alignment) * lay.alignment
    return lay

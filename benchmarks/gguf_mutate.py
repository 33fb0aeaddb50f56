"""Structure-aware mutations of a GGUF file (fuzz_gguf.py): each picks a field of the header by its
layout (gguf_layout.py) and overwrites, retypes, duplicates or cuts it, as a corrupted download or
a crafted file would."""

from __future__ import annotations

import random
import struct
from typing import Callable

from gguf_layout import ARRAY, SCALARS, STRING, Layout, parse

#: values that have broken loaders: zero, signs, powers of two and their neighbours, the report's
SPECIAL = [0, 1, 2, 3, 7, 0x7F, 0xFF, 0xFFFF, 0x124C0, 0x4E81DF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE,
           0xFFFFFFFF, 1 << 32, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]  # fmt: skip


def _int(rng: random.Random, old: int) -> int:
    choices = SPECIAL + [old // 2, old * 2, old + 1, max(old - 1, 0), rng.randrange(1 << 16)]
    return rng.choice(choices)


def _put(buf: bytearray, at: int, code: str, value: int | float) -> None:
    size = struct.calcsize(code)
    if code in "fd":
        struct.pack_into("<" + code, buf, at, float(value))
    else:
        struct.pack_into("<" + code.upper() if code != "?" else "<B", buf, at, int(value) % (1 << (8 * size)))


def header_count(buf: bytearray, lay: Layout, rng: random.Random) -> str:
    which = rng.choice(["n_tensors", "n_kv"])
    at, old = (8, lay.n_tensors) if which == "n_tensors" else (16, lay.n_kv)
    _put(buf, at, "Q", _int(rng, old))
    return f"header {which}"


def kv_int(buf: bytearray, lay: Layout, rng: random.Random) -> str:
    kvs = [k for k in lay.kvs if k.vtype in SCALARS]
    kv = rng.choice(kvs)
    code = SCALARS[kv.vtype]
    old = struct.unpack_from("<" + code, buf, kv.value_at)[0]
    if code in "fd":
        _put(buf, kv.value_at, code, rng.choice([0.0, -1.0, 1e30, float("nan"), float("inf"), old * 2, -old]))
    else:
        _put(buf, kv.value_at, code, _int(rng, int(old)))
    return f"kv value {kv.key}"


def kv_type(buf: bytearray, lay: Layout, rng: random.Random) -> str:
    kv = rng.choice(lay.kvs)
    new = rng.choice([*SCALARS, STRING, ARRAY, 13, 0xFFFFFFFF])
    struct.pack_into("<I", buf, kv.type_at, new)
    return f"kv type {kv.key} {kv.vtype}->{new}"


def kv_string(buf: bytearray, lay: Layout, rng: random.Random) -> str:
    kv = rng.choice(lay.kvs)
    if rng.random() < 0.5 or kv.vtype != STRING:  # the key's own name, or its length prefix
        n = struct.unpack_from("<Q", buf, kv.start)[0]
        if rng.random() < 0.5:
            _put(buf, kv.start, "Q", _int(rng, n))
            return f"key length {kv.key}"
        i = kv.start + 8 + rng.randrange(max(n, 1))
        buf[i] = rng.randrange(256)
        return f"key name {kv.key}"
    n = struct.unpack_from("<Q", buf, kv.value_at)[0]
    if rng.random() < 0.5 or n == 0:
        _put(buf, kv.value_at, "Q", _int(rng, n))
        return f"string length {kv.key}"
    buf[kv.value_at + 8 + rng.randrange(n)] = rng.randrange(256)
    return f"string bytes {kv.key}"


def kv_array(buf: bytearray, lay: Layout, rng: random.Random) -> str:
    arrays = [k for k in lay.kvs if k.vtype == ARRAY]
    kv = rng.choice(arrays)
    r = rng.random()
    if r < 0.3:
        _put(buf, kv.count_at, "Q", _int(rng, struct.unpack_from("<Q", buf, kv.count_at)[0]))
        return f"array count {kv.key}"
    if r < 0.5:
        struct.pack_into("<I", buf, kv.value_at, rng.choice([*SCALARS, STRING, ARRAY, 13]))
        return f"array item type {kv.key}"
    for _ in range(rng.randint(1, 8)):  # items: bytes of strings, their length prefixes, numbers
        buf[rng.randrange(kv.count_at + 8, kv.end)] = rng.randrange(256)
    return f"array items {kv.key}"


def tensor_dims(buf: bytearray, lay: Layout, rng: random.Random) -> str:
    t = rng.choice(lay.tensors)
    r = rng.random()
    if r < 0.15:
        n_dims = rng.choice([0, 1, 2, 3, 4, 5, 0xFFFF])
        struct.pack_into("<I", buf, t.start + 8 + len(t.name.encode()), n_dims)
        return f"n_dims {t.name}"
    if r < 0.35 and t.n_dims >= 2:  # same element count, another shape (passes the size checks)
        a, b = t.dims[0], t.dims[1]
        f = rng.choice([2, 4, 32])
        if a % f == 0 and (a // f) % 32 == 0:
            new = (a // f, b * f)
        else:
            new = (a * f, b // f) if b % f == 0 else (b, a)
        struct.pack_into("<QQ", buf, t.dims_at[0], *new)
        return f"reshape {t.name}"
    i = rng.randrange(t.n_dims)
    _put(buf, t.dims_at[i], "Q", _int(rng, t.dims[i]))
    return f"dim {t.name}"


def tensor_type(buf: bytearray, lay: Layout, rng: random.Random) -> str:
    t = rng.choice(lay.tensors)
    new = rng.choice([0, 1, 2, 3, 4, 6, 8, 12, 14, 16, 24, 30, 31, 39, 40, 1000, 0xFFFFFFFF])
    struct.pack_into("<I", buf, t.type_at, new)
    return f"type {t.name} {t.ggml_type}->{new}"


def tensor_offset(buf: bytearray, lay: Layout, rng: random.Random) -> str:
    t = rng.choice(lay.tensors)
    other = rng.choice(lay.tensors).offset
    new = rng.choice([t.offset + 1, t.offset + lay.alignment, max(t.offset - lay.alignment, 0), other,
                      lay.size, lay.size - lay.data_start, 1 << 40, (1 << 64) - 1])  # fmt: skip
    _put(buf, t.offset_at, "Q", new)
    return f"offset {t.name}"


def tensor_name(buf: bytearray, lay: Layout, rng: random.Random) -> str:
    t = rng.choice(lay.tensors)
    same = [u for u in lay.tensors if u is not t and len(u.name) == len(t.name)]
    if same and rng.random() < 0.5:  # another tensor's name: a duplicate
        u = rng.choice(same)
        buf[t.name_at : t.name_at + len(t.name)] = u.name.encode()
        return f"duplicate name {u.name}"
    i = rng.randrange(len(t.name))
    buf[t.name_at + i] = rng.choice(b"X.0129_ \xff")
    return f"name byte {t.name}"


def truncate(buf: bytearray, lay: Layout, rng: random.Random) -> str:
    in_header, in_data = rng.randrange(24, lay.header_end), rng.randrange(lay.data_start, lay.size)
    cut = rng.choice([in_header, in_data, lay.size - 1])
    del buf[cut:]
    return "truncate"


def flip(buf: bytearray, lay: Layout, rng: random.Random) -> str:
    for _ in range(rng.randint(1, 4)):
        buf[rng.randrange(8, lay.header_end)] ^= 1 << rng.randrange(8)
    return "header bit flips"


MUTATORS: list[Callable[[bytearray, Layout, random.Random], str]] = [
    header_count, kv_int, kv_int, kv_type, kv_string, kv_array, tensor_dims, tensor_dims, tensor_type,
    tensor_offset, tensor_name, truncate, flip,
]  # fmt: skip


def mutate(base: bytes, rng: random.Random) -> tuple[bytes, list[str]]:
    """1 to 3 mutations of base; each after the first sees the layout the first left, when it parses."""
    buf, done = bytearray(base), []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        try:
            lay = parse(bytes(buf))
        except (struct.error, ValueError, IndexError, OverflowError, ZeroDivisionError, RecursionError):
            break  # no longer a well-formed header: one mutation is enough
        if not lay.tensors or not lay.kvs:
            break
        done.append(rng.choice(MUTATORS)(buf, lay, rng))
    return bytes(buf), done

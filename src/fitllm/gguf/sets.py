"""The files of one model: a gguf-split shard set (PREFIX-00001-of-0000N.gguf, each a GGUF file
holding some of the tensors, the first all the metadata) and byte-split uploads (X.gguf.part1of3,
X.gguf.part01: one GGUF file cut by split(1)). GGUFFile opens them through these."""

from __future__ import annotations

import os
import re

from fitllm.gguf.reader import GGUFError, GGUFFile

#: llama.cpp's gguf-split shard names (llama_split_path): PREFIX-00001-of-00003.gguf
SHARD_NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
#: uploads cut into byte parts, meant to be joined with cat: X.gguf.part1of3, X.gguf.part01
PART_NAME = re.compile(r"^(?P<base>.+\.gguf)\.part(?P<no>\d+)(?:of(?P<count>\d+))?$")


def byte_parts(path: str, size: int) -> list[tuple[str, int, int]]:
    """(path, start, bytes) of each byte part of an upload cut with split(1) (X.gguf.part1of3 or
    X.gguf.part01, given the first), or of the one file."""
    m = PART_NAME.match(os.path.basename(path))
    if not m:
        return [(path, 0, size)]
    no, count, width = int(m["no"]), m["count"], len(m["no"])

    def name(i: int) -> str:
        return os.path.join(
            os.path.dirname(path), f"{m['base']}.part{str(i).zfill(width)}" + (f"of{count}" if count else "")
        )

    if no != 1:
        raise GGUFError(f"{path}: this is byte part {no}: open the first, {os.path.basename(name(1))}")

    parts, at, i = [(path, 0, size)], size, 2
    while (count and i <= int(count)) or (not count and os.path.isfile(name(i))):
        if not os.path.isfile(name(i)):
            raise GGUFError(f"{name(i)}: byte part {i} of {count} is missing")
        n = os.path.getsize(name(i))
        parts.append((name(i), at, n))
        at, i = at + n, i + 1
    if count and os.path.isfile(name(i)):
        raise GGUFError(f"{name(i)}: an extra byte part beside a set of {count}")
    return parts


def shard_paths(path: str, count: int) -> list[str]:
    """The names of a gguf-split set's shards, from its first shard's."""
    m = SHARD_NAME.match(os.path.basename(path))
    if not m or int(m["no"]) != 1 or int(m["count"]) != count:
        raise GGUFError(
            f"{path}: split.count is {count}, but the file is not named PREFIX-00001-of-{count:05d}.gguf"
            " (as llama.cpp's gguf-split names the first shard): the other shards cannot be found"
        )
    prefix = os.path.join(os.path.dirname(path), m["prefix"])
    return [f"{prefix}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


def _split_key(f: GGUFFile, key: str) -> int:
    v = f.metadata.get(key, 0)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise GGUFError(f"{f.path}: metadata {key} is {v!r}, not a count")
    return v


def join_shards(first: GGUFFile) -> None:
    """The tensors of every shard of a gguf-split set into `first`, each a view of its own shard's
    mapping; a missing, extra, reordered or foreign shard is a GGUFError naming it."""
    count, no = _split_key(first, "split.count"), _split_key(first, "split.no")
    if count <= 1:
        return
    if no != 0:
        m = SHARD_NAME.match(os.path.basename(first.path))
        name = f"{m['prefix']}-00001-of-{count:05d}.gguf" if m else "the first shard"
        raise GGUFError(f"{first.path}: this is shard {no + 1} of {count}: open {name} instead")
    paths = shard_paths(first.path, count)
    total = _split_key(first, "split.tensors.count")
    for i, path in enumerate(paths[1:], 1):
        if not os.path.isfile(path):
            raise GGUFError(f"{path}: shard {i + 1} of {count} is missing")
        f = GGUFFile(path, shards=False)
        got = (_split_key(f, "split.no"), _split_key(f, "split.count"), _split_key(f, "split.tensors.count"))
        if got != (i, count, total):
            raise GGUFError(
                f"{path}: says it is shard {got[0] + 1} of {got[1]} with {got[2]} tensors in all; expected"
                f" shard {i + 1} of {count} with {total}: shards reordered, renamed or of another model"
            )
        for name, t in f.tensors.items():
            if name in first.tensors:
                raise GGUFError(f"{path}: tensor {name!r} is also in an earlier shard")
            first.tensors[name] = t
        first.shards.append(f)
    _check_extra(first.path, count, paths)
    if total != len(first.tensors):
        raise GGUFError(
            f"{first.path}: the {count} shards hold {len(first.tensors)} tensors,"
            f" split.tensors.count says {total}"
        )


def _check_extra(path: str, count: int, paths: list[str]) -> None:
    """A shard of the same set beyond the count (left from an earlier split) would be silently unused."""
    prefix = SHARD_NAME.match(os.path.basename(path))["prefix"]
    folder = os.path.dirname(path) or "."
    for name in sorted(os.listdir(folder)):
        m = SHARD_NAME.match(name)
        full = os.path.join(os.path.dirname(path), name)
        if m and m["prefix"] == prefix and int(m["count"]) == count and full not in paths:
            raise GGUFError(f"{full}: an extra shard beside a set of {count}")

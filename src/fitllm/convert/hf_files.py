"""The tensors of a Hugging Face checkpoint folder, read lazily: `*.safetensors` (mmapped) or
`pytorch_model*.bin` (a zip of raw storages, unpickled by a loader that only builds tensors).

Neither format is loaded whole: a tensor is a read-only memmap view until rows of it are asked for
as float32. bfloat16 is read here because numpy (and safetensors' numpy API) has no such dtype."""

from __future__ import annotations

import json
import mmap
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fitllm.convert.grok1_checkpoint import CheckpointError

# safetensors / torch storage dtypes -> numpy (BF16 kept as its uint16 bits)
DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64, "I64": np.int64,
          "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}  # fmt: skip
TORCH_STORAGES = {"FloatStorage": "F32", "HalfStorage": "F16", "BFloat16Storage": "BF16",
                  "DoubleStorage": "F64", "LongStorage": "I64", "IntStorage": "I32", "ShortStorage": "I16",
                  "CharStorage": "I8", "ByteStorage": "U8", "BoolStorage": "BOOL"}  # fmt: skip


@dataclass
class HFTensor:
    dtype: str  # safetensors name: F32, F16, BF16, ...
    shape: tuple[int, ...]
    data: np.ndarray  # the stored elements (BF16 as uint16), shaped

    def rows(self, index: slice | np.ndarray = slice(None)) -> np.ndarray:
        """Rows (first axis) as float32."""
        x = self.data[index]
        if self.dtype == "BF16":
            return (x.astype(np.uint32) << 16).view(np.float32)
        return x.astype(np.float32)


def _safetensors(path: Path, raw: np.ndarray) -> dict[str, HFTensor]:
    size = raw.size
    n = int(raw[:8].view("<u8")[0]) if size >= 8 else -1
    if n < 2 or 8 + n > size:
        raise CheckpointError(f"{path}: not a safetensors file (header length {n}, file {size} bytes)")
    try:
        header = json.loads(raw[8 : 8 + n].tobytes())
    except ValueError as e:
        raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt, shape, (b, e) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        if dt not in DTYPES:
            raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {dt}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(DTYPES[dt]).itemsize
        if not 0 <= b <= e <= size - 8 - n or e - b != nbytes:
            raise CheckpointError(f"{path}: tensor {name} {shape} {dt} does not fit its bytes [{b}, {e})")
        out[name] = HFTensor(dt, shape, raw[8 + n + b : 8 + n + e].view(DTYPES[dt]).reshape(shape))
    return out


class _TorchUnpickler(pickle.Unpickler):
    """torch.save's data.pkl with weights_only semantics: only tensors, storages and dicts can be
    built; any other global (os.system, builtins.eval, ...) is refused before it is looked up."""

    def __init__(self, f, storage) -> None:
        super().__init__(f)
        self._storage = storage

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) in (("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")):
            return _rebuild_tensor
        if module == "torch" and name in TORCH_STORAGES:
            return TORCH_STORAGES[name]
        raise CheckpointError(
            f"refusing to load {module}.{name} from a checkpoint (only tensors are allowed)"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage" and pid[1] in DTYPES):
            raise CheckpointError(f"unexpected persistent id {pid!r} in a checkpoint")
        return self._storage(str(pid[2]), pid[1])


def _rebuild_tensor(storage, offset, size, stride, *_):
    dt, flat = storage
    size, stride = tuple(size), tuple(stride)
    item = flat.itemsize
    span = 1 + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else 0
    if offset < 0 or any(s < 0 for s in stride) or offset + span > flat.size:
        raise CheckpointError(f"a tensor {size} (strides {stride}) overruns its storage of {flat.size}")
    view = np.lib.stride_tricks.as_strided(flat[offset:], size, [s * item for s in stride], writeable=False)
    return HFTensor(dt, size, view)


def _torch_bin(path: Path, raw: np.ndarray) -> dict[str, HFTensor]:
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a torch.save zip archive (legacy pickles are not read)")
    z = zipfile.ZipFile(path)
    names = z.namelist()
    pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
    if pkl is None:
        raise CheckpointError(f"{path}: no data.pkl in the archive")
    prefix = pkl[: -len("data.pkl")]

    def storage(key: str, dt: str):
        info = z.getinfo(f"{prefix}data/{key}")
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(f"{path}: storage {key} is compressed")
        start = _member_offset(path, raw, info)
        flat = raw[start : start + info.file_size]
        item = np.dtype(DTYPES[dt]).itemsize
        return dt, flat[: len(flat) // item * item].view(DTYPES[dt])

    with z.open(pkl) as f:
        obj = _TorchUnpickler(f, storage).load()
    if not isinstance(obj, dict) or not all(isinstance(v, HFTensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    return dict(obj)


def _member_offset(path: Path, raw: np.ndarray, info: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes start: after its local header (name and extra field)."""
    h = raw[info.header_offset : info.header_offset + 30].tobytes()
    if h[:4] != b"PK\x03\x04":
        raise CheckpointError(f"{path}: bad zip member header for {info.filename}")
    name_len, extra_len = struct.unpack("<HH", h[26:30])
    return info.header_offset + 30 + name_len + extra_len


def weight_files(folder: Path) -> list[Path]:
    """The checkpoint's weight files: the shards an index names, else every *.safetensors, else
    pytorch_model*.bin."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            shards = json.loads((folder / index).read_text())["weight_map"].values()
            return [folder / s for s in sorted(set(shards))]
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise CheckpointError(f"{folder}: no *.safetensors or pytorch_model*.bin weights")
    return files


class HFCheckpoint:
    """The tensors of a checkpoint folder by name, as lazy views of the mmapped files."""

    def __init__(self, folder: Path) -> None:
        self.tensors: dict[str, HFTensor] = {}
        self._maps: list[mmap.mmap] = []
        for p in weight_files(folder):
            if p.stat().st_size == 0:
                raise CheckpointError(f"{p}: empty file")
            with open(p, "rb") as f:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._maps.append(mm)
            raw = np.frombuffer(mm, np.uint8)
            self.tensors.update(_safetensors(p, raw) if p.suffix == ".safetensors" else _torch_bin(p, raw))

    def release(self) -> None:
        """Drop the pages read so far from this process (they stay in the page cache): a converter
        that calls this after each tensor keeps its resident memory near one tensor."""
        for mm in self._maps:
            mm.madvise(mmap.MADV_DONTNEED)

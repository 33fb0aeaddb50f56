"""Reader for xAI's Grok-1 release checkpoint (ckpt-0/tensor{i:05d}_000, pickled numpy arrays).

Files are unpickled with a whitelist: numpy's array reconstruction, ml_dtypes' bfloat16 and the
release's `__main__.QuantizedWeight8bit` container. Any other global (os.system, builtins.eval, ...)
is refused before it is called. Weights are [in, out] int8 with bf16 scales per output column and
per row block (1 block for column-parallel weights, 8 for the row-parallel attention output and
expert down-projection); dequantized exactly as model.py does: bf16(bf16(int8) * scale)."""

from __future__ import annotations

import json
import os
import pickle
import struct
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from fitllm.convert.names import GROK1_GLOBAL_LEAVES, GROK1_LAYER_LEAVES, grok1_layer_order


class CheckpointError(Exception):
    """A checkpoint that cannot be converted; the message names the file."""


@dataclass
class Grok1Config:
    """run.py's hyper-parameters (field names as there); defaults are Grok-1's."""

    vocab_size: int = 128 * 1024
    emb_size: int = 48 * 128
    key_size: int = 128
    num_q_heads: int = 48
    num_kv_heads: int = 8
    num_layers: int = 64
    num_experts: int = 8
    num_selected_experts: int = 2
    widening_factor: float = 8
    sequence_len: int = 8192
    embedding_multiplier_scale: float = 78.38367176906169
    attn_output_multiplier: float = 0.08838834764831845
    output_multiplier_scale: float = 0.5773502691896257
    rope_base: float = 10000.0
    norm_eps: float = 1e-5

    @classmethod
    def from_json(cls, path: str | Path) -> Grok1Config:
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path}: cannot read the config: {e}") from None
        if not isinstance(raw, dict):
            raise CheckpointError(f"{path}: the config must be a JSON object")
        known = {f.name: f.type for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})

    @property
    def ffn_size(self) -> int:
        """model.py ffn_size: int(widening_factor * emb_size) * 2 // 3, rounded up to a multiple of 8."""
        size = int(self.widening_factor * self.emb_size) * 2 // 3
        return size + (-size) % 8


class QuantizedWeight8bit:
    """Stand-in for the release's dataclass: int8 `weight`, bf16 `scales`."""

    weight: np.ndarray
    scales: np.ndarray


def _safe_globals() -> dict[tuple[str, str], Any]:
    import ml_dtypes

    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's _reconstruct, wherever it lives
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("ml_dtypes", "bfloat16"): ml_dtypes.bfloat16,
        ("__main__", "QuantizedWeight8bit"): QuantizedWeight8bit,
    }


@dataclass
class FileArray:
    """An array left in its checkpoint file, read in slices of its first axis: the big leaves
    (3.2 GB of embeddings, 1.6 GB of experts) never sit in memory whole."""

    path: Path
    offset: int
    dtype: np.dtype
    shape: tuple[int, ...]

    def rows(self, r0: int, r1: int) -> np.ndarray:
        per_row = int(np.prod(self.shape[1:], dtype=np.int64))
        data = np.fromfile(
            self.path,
            self.dtype,
            (r1 - r0) * per_row,
            offset=self.offset + r0 * per_row * self.dtype.itemsize,
        )
        return data.reshape((r1 - r0,) + self.shape[1:])


def rows(a: np.ndarray | FileArray, r0: int, r1: int) -> np.ndarray:
    """a[r0:r1] in memory, for an array in memory or in its file."""
    return a.rows(r0, r1) if isinstance(a, FileArray) else a[r0:r1]


@dataclass
class _InFile:  # a bytes payload left in the file
    offset: int
    size: int


LAZY_BYTES = 1 << 20


class _RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler with a whitelist of globals, which leaves large byte strings (array
    data, written outside pickle's frames) in the file and makes their arrays FileArrays."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, f, path: Path) -> None:
        super().__init__(f)
        self.f, self.path, self.size = f, path, os.fstat(f.fileno()).st_size
        self.allowed = _safe_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"{self.path}: refusing to load {module}.{name}: a Grok-1 checkpoint holds only numpy arrays"
                " and QuantizedWeight8bit (the file may carry code to execute)"
            ) from None

    def _load_big_bytes(self, size_format: str) -> None:
        (n,) = struct.unpack(size_format, self.read(struct.calcsize(size_format)))
        frame = self._unframer.current_frame
        in_frame = frame is not None and frame.tell() < len(frame.getbuffer())
        if n < LAZY_BYTES or in_frame:
            self.append(self.read(n))
            return
        at = self.f.tell()
        if at + n > self.size:
            raise CheckpointError(f"{self.path}: truncated or corrupt checkpoint file (data past its end)")
        self.f.seek(n, os.SEEK_CUR)
        self.append(_InFile(at, n))

    def _load_build(self) -> None:
        state, inst = self.stack[-1], self.stack[-2]
        if isinstance(inst, np.ndarray) and isinstance(state, tuple) and len(state) == 5:
            _, shape, dtype, fortran, raw = state
            if isinstance(raw, _InFile):
                shape = tuple(int(d) for d in shape)
                if fortran or raw.size != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
                    raise CheckpointError(f"{self.path}: array data does not match its shape {shape}")
                self.stack.pop()
                self.stack[-1] = FileArray(self.path, raw.offset, dtype, shape)
                return
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BINBYTES[0]] = lambda self: self._load_big_bytes("<I")
    dispatch[pickle.BINBYTES8[0]] = lambda self: self._load_big_bytes("<Q")
    dispatch[pickle.BUILD[0]] = _load_build


def load_leaf(path: Path) -> Any:
    """Unpickle one checkpoint file with the whitelist; its big arrays stay in the file."""
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, path).load()
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing checkpoint file") from None
    except Exception as e:  # truncated or corrupt pickles fail in many ways
        why = f"{type(e).__name__}: {e}"
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint file ({why})") from None


@dataclass
class Leaf:
    index: int  # file tensor{index:05d}_000
    gguf_name: str  # e.g. blk.3.attn_q
    kind: str  # embedding, norm, router, linear, experts
    shape: tuple[int, ...]  # as stored: [in, out] for weights, [experts, in, out] for experts
    scale_groups: int = 1  # row blocks of the scales (8 for row-parallel weights)


def leaves(cfg: Grok1Config) -> list[Leaf]:
    """Every file of the checkpoint in order, with the shape the config implies."""
    D, F, E = cfg.emb_size, cfg.ffn_size, cfg.num_experts
    q, kv = cfg.num_q_heads * cfg.key_size, cfg.num_kv_heads * cfg.key_size
    shapes = {
        "token_embd": (cfg.vocab_size, D), "output_norm": (D,),
        "ffn_gate_exps": (E, D, F), "ffn_down_exps": (E, F, D), "ffn_up_exps": (E, D, F),
        "attn_k": (D, kv), "attn_output": (q, D), "attn_q": (D, q), "attn_v": (D, kv),
        "attn_norm": (D,), "attn_output_norm": (D,), "ffn_norm": (D,), "layer_output_norm": (D,),
        "ffn_gate_inp": (D, E),
    }  # fmt: skip
    row_parallel = {"ffn_down_exps", "attn_output"}
    out = [Leaf(i, name, kind, shapes[name]) for i, (_, name, kind) in enumerate(GROK1_GLOBAL_LEAVES)]
    for layer in grok1_layer_order(cfg.num_layers):
        for _, name, kind in GROK1_LAYER_LEAVES:
            groups = 8 if name in row_parallel else 1
            out.append(Leaf(len(out), f"blk.{layer}.{name}", kind, shapes[name], groups))
    return out


def find_files(ckpt: str | Path, cfg: Grok1Config) -> list[Path]:
    """The tensor files of CKPT (the folder holding ckpt-0/, or ckpt-0/ itself), checked against cfg."""
    root = Path(ckpt)
    d = root / "ckpt-0" if (root / "ckpt-0").is_dir() else root
    if not d.is_dir():
        raise CheckpointError(f"{ckpt}: no such checkpoint folder")
    found = sorted(p.name for p in d.glob("tensor*_000"))
    n = len(leaves(cfg))
    if len(found) > n:
        raise CheckpointError(
            f"{d}: {len(found)} tensor files, but the config ({cfg.num_layers} layers) has {n}:"
            " wrong --config?"
        )
    files = [d / f"tensor{i:05d}_000" for i in range(n)]
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"{f}: missing checkpoint file ({len(found)} of {n} present)")
    return files


def _check(path: Path, obj: Any, leaf: Leaf) -> None:
    quantized = leaf.kind in ("linear", "experts")
    if quantized != isinstance(obj, QuantizedWeight8bit):
        what = "QuantizedWeight8bit" if quantized else "a float32 array"
        raise CheckpointError(f"{path}: expected {what} for {leaf.gguf_name}, found {type(obj).__name__}")
    arr = obj.weight if quantized else obj
    want = np.int8 if quantized else np.float32
    if not isinstance(arr, (np.ndarray, FileArray)) or arr.dtype != want or tuple(arr.shape) != leaf.shape:
        got = f"{getattr(arr, 'dtype', '?')} {getattr(arr, 'shape', '?')}"
        raise CheckpointError(
            f"{path}: {leaf.gguf_name} is {got}, the config implies {np.dtype(want)} {leaf.shape}"
        )
    if quantized:
        s = obj.scales
        want_s = leaf.shape[:-2] + (leaf.scale_groups, leaf.shape[-1])
        if (
            not isinstance(s, (np.ndarray, FileArray))
            or s.dtype.name != "bfloat16"
            or tuple(s.shape) != want_s
        ):
            got = f"{getattr(s, 'dtype', '?')} {getattr(s, 'shape', '?')}"
            raise CheckpointError(f"{path}: scales of {leaf.gguf_name} are {got}, expected bfloat16 {want_s}")


def round_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> nearest bfloat16 (ties to even), kept as float32."""
    b = np.ascontiguousarray(x, np.float32).view(np.uint32)
    b = (b + np.uint32(0x7FFF) + ((b >> 16) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return b.view(np.float32)


def dequantize_rows(w: np.ndarray, scales: np.ndarray, r0: int, r1: int) -> np.ndarray:
    """Output rows r0:r1 (GGUF orientation: (out, in)) of an [in, out] int8 weight and its
    (groups, out) bf16 scales: bf16(bf16(w) * scale), as model.py's Linear dequantizes."""
    n_in, groups = w.shape[0], scales.shape[0]
    cols = w[:, r0:r1].astype(np.float32)  # (in, rows)
    s = scales[:, r0:r1].astype(np.float32)  # (groups, rows)
    cols *= np.repeat(s, n_in // groups, axis=0)  # exact in f32: 8-bit times 8-bit mantissas
    return round_bf16(cols.T)


def read_tensors(files: list[Path], cfg: Grok1Config) -> Iterator[tuple[Leaf, Any]]:
    """(leaf, checked object) per file, one at a time."""
    for path, leaf in zip(files, leaves(cfg)):
        obj = load_leaf(path)
        _check(path, obj, leaf)
        yield leaf, obj
        del obj  # before the next file is read

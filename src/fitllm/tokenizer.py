"""Tokenizers rebuilt from GGUF metadata, giving llama.cpp's token ids: byte-level BPE (`gpt2`) on HF
`tokenizers`, SentencePiece vocabularies (`llama`) on the sentencepiece library itself, from a
model proto written from the GGUF vocabulary (Gemma's 262k pieces must load within a model load).

Special tokens are split out first, as llama.cpp does (longest first; control tokens only when
`special=True`, user-defined ones always); the text between them goes through the BPE model.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tokenizers import Regex, Tokenizer, models, pre_tokenizers

from fitllm.gguf import GGUFError, GGUFFile
from fitllm.gguf.reader import StringArray

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    return Path(os.environ.get("FITLLM_CACHE", Path.home() / ".cache" / "fitllm"))


# token types (llama.cpp / gguf-py)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = _LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")

#: llama.cpp's pre-tokenizer regexes by `tokenizer.ggml.pre` (applied in sequence)
PRE_TOKENIZERS: dict[str, list[str]] = {
    "default": [_GPT2],
    "gpt-2": [_GPT2],
    "mpt": [_GPT2],
    "olmo": [_GPT2],
    "llama-bpe": [_LLAMA3],
    "llama3": [_LLAMA3],
    "falcon3": [_LLAMA3],
    "qwen2": [_QWEN2],
    "stablelm2": [_QWEN2],
    "smollm": [r"\p{N}", _GPT2],
    "starcoder": [r"\p{N}", _GPT2],
    "refact": [r"\p{N}", _GPT2],
    "command-r": [r"\p{N}", _GPT2],
}
_IGNORE_MERGES = {"llama-bpe", "llama3", "falcon3"}

#: token texts llama.cpp treats as end of generation (and so as control tokens, whatever the file says)
EOG_TEXTS = frozenset(
    {
        "<|eot_id|>",
        "<|im_end|>",
        "<|end|>",
        "<|return|>",
        "<|call|>",
        "<|flush|>",
        "<|calls|>",
        "<end_of_turn>",
        "<|endoftext|>",
        "</s>",
        "<|eom_id|>",
        "<EOT>",
        "_<EOT>",
        "[EOT]",
        "[EOS]",
        "<|end_of_text|>",
        "<end_of_utterance>",
        "<eos>",
        "<turn|>",
        "<|tool_response>",
        "<｜end▁of▁sentence｜>",
        "[e~[",
    }
)


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte <-> printable-unicode map, inverted."""
    bs = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    )
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(num: int, wire: int, payload: bytes) -> bytes:
    return _varint(num << 3 | wire) + payload


def _message(num: int, data: bytes) -> bytes:
    return _field(num, 2, _sized(data))


def _sized(data: bytes) -> bytes:
    """data after its length (a varint)"""
    n = len(data)
    return (bytes((n,)) if n < 0x80 else _varint(n)) + data


def spm_model_proto(tokens: list[str], scores, types: np.ndarray) -> bytes:
    """A sentencepiece ModelProto (BPE, byte fallback, no normalization, spaces as U+2581) from a GGUF
    vocabulary, serialized by hand (fields of sentencepiece_model.proto): sentencepiece's BPE merges
    the pair whose union scores highest, which is what llama.cpp's SPM tokenizer reimplements."""
    scores = np.zeros(len(tokens), np.float32) if scores is None else np.asarray(scores, np.float32)
    sc = scores.astype("<f4").tobytes()
    # piece i: field 1 { 1: text, 2: score (fixed32), 3: type (varint) }, tags written out (0x0a,
    # 0x15, 0x18): one bytes expression per piece, no message object per field (262k pieces)
    pieces = [
        b"\x0a" + _sized(b"\x0a" + _sized(t.encode("utf-8", "surrogateescape"))
                         + b"\x15" + sc[4 * i : 4 * i + 4] + b"\x18" + _varint(ty))
        for i, (t, ty) in enumerate(zip(tokens, types.tolist()))
    ]  # fmt: skip
    trainer = _field(3, 0, _varint(2)) + _field(35, 0, _varint(1))  # model_type BPE, byte_fallback
    # name, add_dummy_prefix off (encode adds the space as llama.cpp does), keep whitespace, escape it
    normalizer = _message(1, b"identity") + _field(3, 0, b"\0") + _field(4, 0, b"\0") + _field(5, 0, b"\1")
    return b"".join(pieces) + _message(2, trainer) + _message(3, normalizer)


def _merges_as_strings(js: str) -> str:
    """tokenizer.json with its merges as "a b" strings (GGUF's own form: no token of a merge holds
    a space), which `tokenizers` loads faster than [a, b] pairs."""
    import json

    d = json.loads(js)
    d["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in d["model"]["merges"]]
    return json.dumps(d, ensure_ascii=False)


def _hf_encoder(tok: Tokenizer) -> Callable[[str], list[int]]:
    return lambda text: tok.encode(text, add_special_tokens=False).ids


def _spm_encoder(model_proto: bytes) -> Callable[[str], list[int]]:
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(model_proto)
    except RuntimeError as e:
        raise GGUFError(f"the SentencePiece vocabulary cannot be loaded: {e}") from None
    return sp.encode


def _indices(items: list[str], item: str) -> Iterator[int]:
    """Where item is in items (scanned in C, not a Python loop: Gemma has 262k tokens)."""
    i = -1
    try:
        while True:
            i = items.index(item, i + 1)
            yield i
    except ValueError:
        return


def _is_strings(v: object) -> bool:
    return isinstance(v, StringArray) or (isinstance(v, list) and all(isinstance(x, str) for x in v))


def _check_metadata(f: GGUFFile) -> None:
    """The tokenizer keys of the types and sizes the code below relies on: a corrupted file ends in
    one GGUFError, not in a TypeError from deep inside `tokenizers` or numpy."""
    kind, tokens = f.get("tokenizer.ggml.model"), f.get("tokenizer.ggml.tokens")
    if not isinstance(kind, str):
        raise GGUFError(f"{f.path}: metadata tokenizer.ggml.model is not a string")
    if not _is_strings(tokens) or not len(tokens):
        raise GGUFError(f"{f.path}: metadata tokenizer.ggml.tokens is not a non-empty array of strings")
    n = len(tokens)
    for key in ("tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
        v = f.get(key, None)
        numeric = isinstance(v, np.ndarray) and v.dtype.kind in "iuf" and v.ndim == 1
        if v is not None and (not numeric or len(v) != n):
            raise GGUFError(f"{f.path}: metadata {key} is not an array of {n} numbers, one per token")
    for what in ("bos", "eos", "eot"):
        v = f.get(f"tokenizer.ggml.{what}_token_id", None)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < n):
            raise GGUFError(
                f"{f.path}: metadata tokenizer.ggml.{what}_token_id = {v!r} is not a token id below {n}"
            )
    merges = f.get("tokenizer.ggml.merges", [])
    if not _is_strings(merges):
        raise GGUFError(f"{f.path}: metadata tokenizer.ggml.merges is not an array of strings")


class GGUFTokenizer:
    def __init__(self, f: GGUFFile) -> None:
        _check_metadata(f)
        self.kind = f.get("tokenizer.ggml.model")
        self.tokens: list[str] = list(f.get("tokenizer.ggml.tokens"))
        n = len(self.tokens)
        self.types = np.array(f.get("tokenizer.ggml.token_type", np.full(n, NORMAL)), dtype=np.int32)
        self.scores = f.get("tokenizer.ggml.scores", None)
        self.bos_id = f.get("tokenizer.ggml.bos_token_id", None)
        self.eos_id = f.get("tokenizer.ggml.eos_token_id", None)
        self.eot_id = f.get("tokenizer.ggml.eot_token_id", None)
        spm = self.kind == "llama"
        self.add_bos = bool(f.get("tokenizer.ggml.add_bos_token", spm))
        self.add_eos = bool(f.get("tokenizer.ggml.add_eos_token", False))
        self.add_space_prefix = spm and bool(f.get("tokenizer.ggml.add_space_prefix", True))
        eog_by_text = [i for t in EOG_TEXTS.intersection(self.tokens) for i in _indices(self.tokens, t)]
        self.types[eog_by_text] = CONTROL
        self.eog_ids = frozenset(eog_by_text) | {i for i in (self.eos_id, self.eot_id) if i is not None}
        self._encode_text = self._cached(f)
        specials = [
            i
            for i in np.flatnonzero(np.isin(self.types, (CONTROL, USER_DEFINED, UNKNOWN))).tolist()
            if self.tokens[i]
        ]
        self._special_ids = {self.tokens[i]: i for i in specials}
        self._split_user = self._splitter([i for i in specials if self.types[i] == USER_DEFINED])

    @cached_property
    def _split_all(self) -> re.Pattern | None:
        """Every special token (Gemma has 6k control tokens: compiled when special=True is first used)."""
        return self._splitter(list(self._special_ids.values()))

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    def _cached(self, f: GGUFFile) -> Callable[[str], list[int]]:
        """The text encoder, built or loaded from the cache (building Gemma's 262k vocab takes seconds):
        a HF BPE for `gpt2` vocabularies, sentencepiece itself for `llama` (SentencePiece) ones."""
        pre = f.get("tokenizer.ggml.pre", "default")
        if self.kind == "gpt2" and pre not in PRE_TOKENIZERS:
            raise GGUFError(
                f"{f.path}: BPE pre-tokenizer {pre!r} is not supported"
                f" (supported: {', '.join(sorted(PRE_TOKENIZERS))})"
            )
        if self.kind not in ("gpt2", "llama"):
            raise GGUFError(
                f"{f.path}: tokenizer model {self.kind!r} is not supported (supported: gpt2, llama)"
            )
        h = hashlib.sha256(f"v4|{self.kind}|{pre}|".encode())
        for key in (
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.merges",
            "tokenizer.ggml.token_type",
            "tokenizer.ggml.scores",
        ):
            h.update(f.value_bytes(key) if key in f.metadata else b"-")  # as stored: nothing decoded
        suffix = "json" if self.kind == "gpt2" else "model"
        path = cache_dir() / "tokenizers" / f"{h.hexdigest()[:32]}.{suffix}"
        if path.exists():
            try:
                return self._load(path)
            except Exception:  # a damaged cache entry is rebuilt
                log.warning("rebuilding damaged tokenizer cache %s", path)
        try:
            if self.kind == "gpt2":
                tok = self._build_bpe(f.get("tokenizer.ggml.merges", []), pre)
                data, encode = _merges_as_strings(tok.to_str()).encode(), _hf_encoder(tok)
            else:
                data = spm_model_proto(self.tokens, self.scores, self.types)
                encode = _spm_encoder(data)
        except GGUFError:
            raise
        except Exception as e:  # `tokenizers` raises TypeError or its own Exception on a bad vocabulary
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise GGUFError(
                f"{f.path}: the tokenizer cannot be built from its vocabulary and merges: {first}"
            ) from None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as e:
            log.info("tokenizer cache not written: %s", e)
        return encode

    def _load(self, path: Path) -> Callable[[str], list[int]]:
        if self.kind == "gpt2":  # from the file: no transient copies of a multi-MB JSON
            return _hf_encoder(Tokenizer.from_file(str(path)))
        return _spm_encoder(path.read_bytes())

    def _splitter(self, ids: list[int]) -> re.Pattern | None:
        if not ids:
            return None
        texts = sorted({self.tokens[i] for i in ids}, key=len, reverse=True)
        return re.compile("(" + "|".join(map(re.escape, texts)) + ")")

    def _build_bpe(self, merges: list[str], pre: str) -> Tokenizer:
        vocab = {t: i for i, t in enumerate(self.tokens)}
        pairs = [tuple(m.split(" ", 1)) for m in merges]
        tok = Tokenizer(models.BPE(vocab, pairs, ignore_merges=pre in _IGNORE_MERGES))
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in PRE_TOKENIZERS[pre]]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
        return tok

    def encode(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        """Token ids as llama_tokenize(text, add_special=add_bos, parse_special=special) gives them."""
        out: list[int] = []
        if add_bos and self.add_bos and self.bos_id is not None:
            out.append(self.bos_id)
        splitter = self._split_all if special else self._split_user
        pieces = splitter.split(text) if splitter else [text]
        prev_special = True
        for k, piece in enumerate(pieces):
            if k % 2:  # a special token
                out.append(self._special_ids[piece])
                prev_special = True
            elif piece:
                if self.add_space_prefix and prev_special:
                    piece = " " + piece
                out.extend(self._encode_text(piece))
                prev_special = False
        if add_bos and self.add_eos and self.eos_id is not None:
            out.append(self.eos_id)
        return out

    @cached_property
    def _pieces(self) -> list[bytes]:
        """Bytes of each token as llama_token_to_piece(special=False) renders it."""
        out = []
        bd = _byte_decoder() if self.kind == "gpt2" else None
        for t, ty in zip(self.tokens, self.types.tolist()):
            if ty in (CONTROL, UNUSED):
                out.append(b"")
            elif ty == USER_DEFINED:
                out.append(t.encode("utf-8", "surrogateescape"))
            elif bd is not None:
                out.append(
                    bytes(bd[c] for c in t)
                    if all(c in bd for c in t)
                    else t.encode("utf-8", "surrogateescape")
                )
            elif ty == BYTE and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", t):
                out.append(bytes([int(t[3:5], 16)]))
            else:
                out.append(t.replace("▁", " ").encode("utf-8", "surrogateescape"))
        return out

    def token_to_piece(self, token: int, special: bool = False) -> bytes:
        if special and self.types[token] == CONTROL:
            return self.tokens[token].encode()
        return self._pieces[token]

    def decode(self, tokens, special: bool = False) -> bytes:
        return b"".join(self.token_to_piece(int(t), special) for t in tokens)

    def is_eog(self, token: int) -> bool:
        return token in self.eog_ids

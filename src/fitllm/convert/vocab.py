"""Tokenizers into GGUF metadata, as llama.cpp's converter writes them: a SentencePiece
tokenizer.model ("llama" model, with scores), or a Hugging Face tokenizer.json: byte-level BPE
("gpt2" model, merges, a pre-tokenizer name) or SentencePiece-style BPE with byte fallback
("llama" model, scores from the merge ranks). Special token ids, add_bos/add_eos and the chat
template come from tokenizer_config.json / config.json."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from gguf import GGUFWriter

from fitllm.convert.grok1_checkpoint import CheckpointError
from fitllm.convert.names import HF_PRE_TOKENIZERS
from fitllm.tokenizer import BYTE, CONTROL, NORMAL, UNKNOWN, UNUSED, USER_DEFINED


@dataclass
class Vocab:
    model: str  # "llama" (SentencePiece) or "gpt2" (byte-level BPE)
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    pre: str = "default"
    add_space_prefix: bool = False
    special: dict[str, int] = field(default_factory=dict)  # bos, eos, unk, pad -> id

    def pad_to(self, n: int) -> None:
        """llama.cpp pads a vocabulary smaller than the embedding with unused [PADi] tokens."""
        if len(self.tokens) > n:
            raise CheckpointError(f"the tokenizer has {len(self.tokens)} tokens, the model's vocab only {n}")
        for i in range(len(self.tokens), n):
            self.tokens.append(f"[PAD{i}]")
            self.types.append(UNUSED)
            if self.scores is not None:
                self.scores.append(-1000.0)


def sentencepiece_vocab(path: Path) -> Vocab:
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
    n = sp.get_piece_size()

    def kind(i: int) -> int:
        flags = (sp.is_control(i), sp.is_unknown(i), sp.is_unused(i), sp.is_byte(i))
        return next((t for f, t in zip(flags, (CONTROL, UNKNOWN, UNUSED, BYTE)) if f), NORMAL)

    special = {k: i for k, i in (("bos", sp.bos_id()), ("eos", sp.eos_id()), ("unk", sp.unk_id())) if i >= 0}
    special["pad"] = sp.pad_id() if sp.pad_id() >= 0 else 0
    return Vocab(
        "llama",
        [sp.id_to_piece(i) for i in range(n)],
        [kind(i) for i in range(n)],
        [sp.get_score(i) for i in range(n)],
        add_space_prefix=sp.encode_as_pieces("a")[0].startswith("\u2581"),  # the model's add_dummy_prefix
        special=special,
    )


def _pre_name(pre: dict | None) -> str:
    if not pre:
        raise CheckpointError("tokenizer.json has no pre-tokenizer: cannot tell llama.cpp's BPE variant")
    steps = pre.get("pretokenizers", [pre])
    key = "+".join(s["type"] for s in steps if s["type"] not in ("Split",))
    regex = [s["pattern"].get("Regex") for s in steps if s["type"] == "Split"]
    name = HF_PRE_TOKENIZERS.get(regex[0] if regex else key)
    if name is None:
        raise CheckpointError(f"tokenizer.json: pre-tokenizer {regex or key} is not one fitllm knows")
    return name


def tokenizer_json_vocab(t: dict) -> Vocab:
    """The vocabulary of a parsed tokenizer.json."""
    m = t["model"]
    if m.get("type") != "BPE":
        raise CheckpointError(f"tokenizer.json: a {m.get('type')} tokenizer is not supported (BPE only)")
    added = {a["id"]: a for a in t.get("added_tokens", [])}
    n = max([*m["vocab"].values(), *added, -1]) + 1
    tokens, types = [f"[PAD{i}]" for i in range(n)], [UNUSED] * n
    for text, i in m["vocab"].items():
        tokens[i], types[i] = text, NORMAL
    merges = [p if isinstance(p, str) else " ".join(p) for p in m.get("merges", [])]
    spm = bool(m.get("byte_fallback"))
    for i, a in added.items():
        tokens[i], types[i] = a["content"], CONTROL if a.get("special") else USER_DEFINED
    if not spm:
        return Vocab("gpt2", tokens, types, merges=merges, pre=_pre_name(t.get("pre_tokenizer")))
    # SentencePiece as BPE: a merged piece scores -rank, so llama.cpp's highest-score-first merging
    # follows the merge order; byte pieces <0xNN> are byte tokens
    score = {}
    for rank, pair in enumerate(merges):
        score.setdefault(pair.replace(" ", ""), -float(rank + 1))
    for i, text in enumerate(tokens):
        if types[i] == NORMAL and len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            types[i] = BYTE
        elif text == m.get("unk_token"):
            types[i] = UNKNOWN
    prefix = "Prepend" in json.dumps(t.get("normalizer")) or '"prepend_scheme": "always"' in json.dumps(
        t.get("pre_tokenizer")
    )
    return Vocab("llama", tokens, types, [score.get(x, 0.0) for x in tokens], add_space_prefix=prefix)


def _token_id(vocab: Vocab, value) -> int | None:
    text = value.get("content") if isinstance(value, dict) else value
    if not isinstance(text, str):
        return None
    try:
        return vocab.tokens.index(text)
    except ValueError:
        return None


def _adds(tc: dict, tj: dict | None) -> tuple[bool | None, bool | None]:
    """add_bos / add_eos: tokenizer_config.json's flags, else tokenizer.json's post-processor template."""
    bos, eos = tc.get("add_bos_token"), tc.get("add_eos_token")
    single = ((tj or {}).get("post_processor") or {}).get("single")
    if single:
        bos = "SpecialToken" in single[0] if bos is None else bos
        eos = "SpecialToken" in single[-1] if eos is None else eos
    return bos, eos


def hf_vocab(folder: Path, cfg: dict) -> tuple[Vocab, bool | None, bool | None]:
    """The checkpoint's tokenizer (tokenizer.model preferred, as llama.cpp does) with its special
    ids: tokenizer_config.json's token strings first, then config.json's ids."""
    tjp = folder / "tokenizer.json"
    tj = json.loads(tjp.read_text(encoding="utf-8")) if tjp.is_file() else None  # read once: it can be 30 MB
    if (folder / "tokenizer.model").is_file():
        v = sentencepiece_vocab(folder / "tokenizer.model")
    elif tj is not None:
        v = tokenizer_json_vocab(tj)
    else:
        raise CheckpointError(f"{folder}: no tokenizer.model or tokenizer.json")
    tc = cfg.get("_tokenizer_config", {})
    for k in ("bos", "eos", "unk", "pad"):
        i = _token_id(v, tc.get(f"{k}_token"))
        j = cfg.get(f"{k}_token_id")
        j = j[0] if isinstance(j, list) and j else j
        if i is not None or isinstance(j, int):
            v.special[k] = i if i is not None else j
    return v, *_adds(tc, tj)


def chat_template(folder: Path, cfg: dict) -> str | None:
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    t = cfg.get("_tokenizer_config", {}).get("chat_template")
    if isinstance(t, list):  # named templates: llama.cpp keeps the default one
        t = next((x["template"] for x in t if x.get("name") == "default"), None)
    return t


def write_vocab(m: GGUFWriter, v: Vocab, add_bos: bool | None = None, add_eos: bool | None = None) -> None:
    m.add_tokenizer_model(v.model)
    m.add_tokenizer_pre(v.pre)
    m.add_token_list(v.tokens)
    if v.scores is not None:
        m.add_token_scores(v.scores)
    m.add_token_types(v.types)
    if v.merges is not None:
        m.add_token_merges(v.merges)
    ids = {
        "bos": m.add_bos_token_id,
        "eos": m.add_eos_token_id,
        "unk": m.add_unk_token_id,
        "pad": m.add_pad_token_id,
    }
    for k, add in ids.items():
        if k in v.special:
            add(v.special[k])
    if add_bos is not None:
        m.add_add_bos_token(add_bos)
    if add_eos is not None:
        m.add_add_eos_token(add_eos)
    if v.model == "llama":
        m.add_add_space_prefix(v.add_space_prefix)

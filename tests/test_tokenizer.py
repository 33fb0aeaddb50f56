"""Token ids identical to llama.cpp's (golden data: tests/golden/make_golden.py)."""

import numpy as np
import pytest

from conftest import golden
from fitllm.gguf import GGUFFile
from fitllm.tokenizer import GGUFTokenizer


@pytest.mark.parametrize("name", ["smollm2", "gemma"])
def test_ids_match_llama_cpp(name, model_paths):
    g = golden(name)["tokens"]
    tok = GGUFTokenizer(GGUFFile(model_paths[name]))
    assert len(g["strings"]) >= 500
    bad = [
        s for s, ids in zip(g["strings"], g["plain"]) if tok.encode(s, add_bos=False, special=False) != ids
    ]
    assert not bad, f"{len(bad)} strings differ, e.g. {bad[:3]}"
    bad = [
        s
        for s, ids in zip(g["strings"], g["bos_special"])
        if tok.encode(s, add_bos=True, special=True) != ids
    ]
    assert not bad, f"{len(bad)} strings differ with BOS/special, e.g. {bad[:3]}"


@pytest.mark.parametrize("name", ["smollm2", "gemma"])
def test_decode_round_trip(name, model_paths):
    tok = GGUFTokenizer(GGUFFile(model_paths[name]))
    for s in golden(name)["tokens"]["strings"][:200]:
        assert tok.decode(tok.encode(s, add_bos=False)).decode("utf-8") == s


def test_special_tokens_smollm2(smollm2_path):
    tok = GGUFTokenizer(GGUFFile(smollm2_path))
    im_start = tok.tokens.index("<|im_start|>")
    assert tok.encode("<|im_start|>hi", add_bos=False, special=True)[0] == im_start
    assert im_start not in tok.encode("<|im_start|>hi", add_bos=False, special=False)
    assert tok.decode([im_start]) == b"" and tok.decode([im_start], special=True) == b"<|im_start|>"
    assert not tok.add_bos and tok.encode("hi", add_bos=True)[0] != tok.bos_id


def test_bos_gemma(gemma3_path):
    tok = GGUFTokenizer(GGUFFile(gemma3_path))
    assert tok.encode("hi", add_bos=True)[0] == tok.bos_id == 2
    assert tok.is_eog(tok.eos_id)


def test_sentencepiece_model_written_by_hand_loads():
    # the ModelProto is serialized without protobuf: long pieces (2-byte lengths), scores, types
    import sentencepiece

    from fitllm.tokenizer import spm_model_proto

    pieces = ["<unk>", "<s>", "</s>", "▁" + "x" * 200, "▁hi", "é" * 70] + [f"<0x{b:02X}>" for b in range(256)]
    types = np.array([2, 3, 3, 1, 1, 4] + [6] * 256, np.int32)  # byte fallback needs the 256 bytes
    scores = np.r_[0, 0, 0, -1.5, -2.0, 0.0, np.zeros(256)]
    sp = sentencepiece.SentencePieceProcessor()
    sp.LoadFromSerializedProto(spm_model_proto(pieces, scores, types))
    assert [sp.id_to_piece(i) for i in range(len(pieces))] == pieces
    assert sp.get_score(3) == -1.5 and sp.is_unknown(0) and sp.is_control(1)

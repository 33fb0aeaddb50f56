"""Grok-1 release checkpoint -> GGUF -> logits, against the spec's math in float64."""

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece

from conftest import golden
from fitllm.convert.grok1 import convert_grok1
from fitllm.convert.grok1_checkpoint import CheckpointError, FileArray, load_leaf
from fitllm.gguf import GGUFFile
from fitllm.models import load_model
from fitllm.tokenizer import GGUFTokenizer
from grok1_fixture import (
    TINY,
    TOKENIZER,
    make_params,
    oracle_logits,
    plant_bigrams,
    write_checkpoint,
    write_vocab_model,
)

sys.path.insert(0, str(Path(__file__).parent / "golden"))
from strings import test_strings as varied_strings  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("grok1")
    params = make_params(TINY)
    succ = plant_bigrams(params, TINY)
    write_checkpoint(root / "ckpt", params)
    (root / "config.json").write_text(json.dumps({**TINY, "unknown_key": 1}))
    return root, params, succ


def convert(tiny, out_type):
    root = tiny[0]
    out = root / f"tiny.{out_type}.gguf"
    if not out.exists():
        convert_grok1(root / "ckpt", out, out_type, config=root / "config.json", progress=False)
    return load_model(GGUFFile(out))


def logits(model, toks):
    return model.forward(toks, model.new_cache(len(toks)), all_logits=True)


TOKS = np.random.default_rng(7).integers(1, TINY["vocab_size"], 48)


def test_f32_logits_and_greedy_match_float64_spec(tiny):
    ref, _ = oracle_logits(tiny[1], TINY, TOKS)
    got = logits(convert(tiny, "f32"), TOKS)
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) <= 1e-2
    assert (got.argmax(-1) == ref.argmax(-1)).all()


def test_bf16_logits_match_float64_spec(tiny):
    # BF16 weights are lossless here (the checkpoint's weights are bf16 products), but llama.cpp
    # rounds the activations of a BF16 matmul to bf16 (0.4 %): where the router's k-th and
    # (k+1)-th choices are that close, the rounding picks the expert and later tokens see it
    # through attention (measured: 0.4 % over the tokens without a 1 % tie, 1.5 % with them).
    ref, gap = oracle_logits(tiny[1], TINY, TOKS)
    got = logits(convert(tiny, "bf16"), TOKS)
    k = gap >= 0.01
    assert k.mean() >= 0.8
    assert np.linalg.norm(got[k] - ref[k]) / np.linalg.norm(ref[k]) <= 1e-2
    assert (got.argmax(-1) == ref.argmax(-1)).all()


def test_quantized_files_agree_with_f32(tiny):
    # the f32 model predicts the bigrams planted in layer 0's experts (so its top-1s are decided
    # through the router and the expert matmuls); measured: f32 98 % successors, q8_0 100 %, q4_k 98 %
    toks = np.random.default_rng(3).integers(1, TINY["vocab_size"], 300)
    top = logits(convert(tiny, "f32"), toks).argmax(-1)
    assert (top == tiny[2][toks]).mean() >= 0.9
    assert (logits(convert(tiny, "q8_0"), toks).argmax(-1) == top).mean() >= 0.99
    assert (logits(convert(tiny, "q4_k"), toks).argmax(-1) == top).mean() >= 0.9


@pytest.fixture(scope="module")
def vocab_model(tmp_path_factory):
    return write_vocab_model(tmp_path_factory.mktemp("grok1v"))


def test_teacher_forced_top1_matches_llama_cpp(vocab_model):
    g = golden("grok_tiny")  # made by tests/golden/grok_tiny.py
    # g["sha256"] is the file llama.cpp saw; gguf-py versions may lay out metadata differently,
    # so the check is on what the model computes
    m = load_model(GGUFFile(vocab_model))
    top = logits(m, np.array(g["tokens"])).argmax(-1)
    assert (top == np.array(g["top1"])).mean() >= 0.95


def test_embedded_tokenizer_matches_sentencepiece(vocab_model):
    sp = sentencepiece.SentencePieceProcessor(model_file=str(TOKENIZER))
    tok = GGUFTokenizer(GGUFFile(vocab_model))
    strings = varied_strings() + ["a\n\n\n b 0123 3.14 $100", "  hello\n\nworld  x", "日本語 émoji 🤖"]
    assert len(strings) >= 600
    answer = [422, 3033, 356, 1180, 333, 9072, 360, 2175, 391, 359, 1805]  # grok-1's README example
    assert tok.encode("The answer to life the universe and everything is of course") == answer
    bad = [s for s in strings if tok.encode(s, add_bos=True) != sp.encode(s)]
    assert not bad, f"{len(bad)} strings differ, e.g. {bad[:3]!r}"


class Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_code_in_a_pickle_is_refused_unrun(tiny, tmp_path, monkeypatch):
    root, params, _ = tiny
    bad = tmp_path / "bad"
    write_checkpoint(bad, params)
    with open(bad / "ckpt-0" / "tensor00002_000", "wb") as f:
        pickle.dump(Payload(), f)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=r"tensor00002_000: refusing to load posix\.system"):
        convert_grok1(bad, tmp_path / "x.gguf", "f32", config=root / "config.json", progress=False)
    assert not (tmp_path / "PWNED").exists()
    assert not list(tmp_path.glob("x.gguf*"))  # nothing half-written is left


@pytest.mark.parametrize("damage", ["truncate", "truncate-big", "delete", "reshape"])
def test_damaged_checkpoint_names_the_file(tiny, tmp_path, damage):
    root, params, _ = tiny
    ck = write_checkpoint(tmp_path / "ck", params) / "ckpt-0"
    f = ck / "tensor00005_000"  # attention key: small, read whole
    if damage == "truncate":
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        msg = "tensor00005_000: truncated or corrupt"
    elif damage == "truncate-big":  # experts (1 MB): left in the file and read in slices
        f = ck / "tensor00002_000"
        f.write_bytes(f.read_bytes()[:-100])
        msg = "tensor00002_000: truncated or corrupt"
    elif damage == "delete":
        f.unlink()
        msg = "tensor00005_000: missing checkpoint file"
    else:
        pickle.dump(np.zeros((3, 3), np.float32), open(f, "wb"))
        msg = "tensor00005_000: expected QuantizedWeight8bit"
    with pytest.raises(CheckpointError, match=msg):
        convert_grok1(ck, tmp_path / "x.gguf", "q8_0", config=root / "config.json", progress=False)
    assert not list(tmp_path.glob("x.gguf*"))


def test_config_must_match_the_files(tiny, tmp_path):
    root = tiny[0]
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({**TINY, "emb_size": 128}))
    with pytest.raises(CheckpointError, match=r"tensor00000_000: token_embd is float32 \(512, 256\)"):
        convert_grok1(root / "ckpt", tmp_path / "x.gguf", "f32", config=cfg, progress=False)
    cfg.write_text(json.dumps({**TINY, "num_layers": 2}))
    with pytest.raises(CheckpointError, match="38 tensor files, but the config"):
        convert_grok1(root / "ckpt", tmp_path / "x.gguf", "f32", config=cfg, progress=False)


def test_big_arrays_stay_in_their_files(tiny):
    root, params, _ = tiny
    obj = load_leaf(root / "ckpt" / "ckpt-0" / "tensor00002_000")  # layer 0's gate experts, 1 MB
    assert isinstance(obj.weight, FileArray)
    np.testing.assert_array_equal(
        obj.weight.rows(3, 5), params["transformer/decoder_layer_0/moe/linear/w"].weight[3:5]
    )


def test_query_width_need_not_be_the_embedding_width(tmp_path):
    # model.py allows num_q_heads * key_size != emb_size (llama.cpp's grok does not)
    cfg = {**TINY, "num_q_heads": 4, "key_size": 48, "num_kv_heads": 2, "num_layers": 2}
    params = make_params(cfg)
    write_checkpoint(tmp_path / "ck", params)
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    out = convert_grok1(
        tmp_path / "ck", tmp_path / "m.gguf", "f32", config=tmp_path / "c.json", progress=False
    )
    m = load_model(GGUFFile(out))
    assert (m.hp.n_head, m.hp.head_dim, m.hp.n_embd) == (4, 48, 256)
    ref, gap = oracle_logits(params, cfg, TOKS)
    err = np.linalg.norm(logits(m, TOKS) - ref, axis=1) / np.linalg.norm(ref, axis=1)
    # one token here has its 2nd and 3rd experts within 0.2 %: the fp16 KV cache decides it
    assert np.median(err) <= 1e-3 and (err[gap > 0.01] <= 1e-2).all()


@pytest.mark.parametrize("layout", ["ckpt-0", "tensor files"])
def test_cli_takes_a_release_folder_with_a_config_for_xais(tiny, tmp_path, capsys, layout):
    # the folder holds run.py's config.json (no `architectures`) beside ckpt-0/ or its files: the
    # same GGUF as from ckpt-0/ alone, not a Hugging Face folder
    from fitllm.cli import main

    root, ckpt = tiny[0], tiny[0] / "ckpt" / "ckpt-0"
    folder = tmp_path / "release"
    folder.mkdir()
    if layout == "ckpt-0":
        (folder / "ckpt-0").symlink_to(ckpt)
    else:
        for f in ckpt.iterdir():
            (folder / f.name).symlink_to(f)
    (folder / "config.json").write_bytes((root / "config.json").read_bytes())
    want = root / "tiny.q8_0.gguf"
    convert(tiny, "q8_0")
    for config in (["--config", str(folder / "config.json")], []):
        out = tmp_path / f"out{len(config)}.gguf"
        args = ["convert", str(folder), "-o", str(out), "--type", "q8_0", "--no-progress", *config]
        if config:
            assert main(args) == 0
            assert out.read_bytes() == want.read_bytes()
        else:  # run.py's config.json, not given: Grok-1's own config, which these files do not match
            assert main(args) == 1
            assert "missing checkpoint file (38 of" in capsys.readouterr().err
            assert not out.exists()

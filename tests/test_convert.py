"""Grok-1 release checkpoint -> GGUF -> logits, against the spec's math in float64."""

import json
import pickle

import numpy as np
import pytest

from fitllm.convert.grok1 import convert_grok1
from fitllm.convert.grok1_checkpoint import CheckpointError
from fitllm.gguf import GGUFFile
from fitllm.models import load_model
from grok1_fixture import TINY, make_params, oracle_logits, write_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("grok1")
    params = make_params(TINY)
    write_checkpoint(root / "ckpt", params)
    (root / "config.json").write_text(json.dumps({**TINY, "unknown_key": 1}))
    return root, params


def convert(tiny, out_type):
    root, _ = tiny
    out = root / f"tiny.{out_type}.gguf"
    if not out.exists():
        convert_grok1(root / "ckpt", out, out_type, config=root / "config.json", progress=False)
    return load_model(GGUFFile(out))


def logits(model, toks):
    return model.forward(toks, model.new_cache(len(toks)), all_logits=True)


TOKS = np.random.default_rng(7).integers(1, TINY["vocab_size"], 48)


@pytest.mark.parametrize("out_type", ["f32", "bf16"])
def test_logits_match_float64_spec(tiny, out_type):
    ref = oracle_logits(tiny[1], TINY, TOKS)
    got = logits(convert(tiny, out_type), TOKS)
    rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert rel <= 1e-2, rel
    if out_type == "f32":
        assert (got.argmax(-1) == ref.argmax(-1)).all()


def test_quantized_files_agree_with_f32(tiny):
    toks = np.random.default_rng(3).integers(1, TINY["vocab_size"], 300)
    top = logits(convert(tiny, "f32"), toks).argmax(-1)
    assert (logits(convert(tiny, "q8_0"), toks).argmax(-1) == top).mean() >= 0.99
    assert (logits(convert(tiny, "q4_k"), toks).argmax(-1) == top).mean() >= 0.9


class Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_code_in_a_pickle_is_refused_unrun(tiny, tmp_path, monkeypatch):
    root, params = tiny
    bad = tmp_path / "bad"
    write_checkpoint(bad, params)
    with open(bad / "ckpt-0" / "tensor00002_000", "wb") as f:
        pickle.dump(Payload(), f)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=r"tensor00002_000: refusing to load posix\.system"):
        convert_grok1(bad, tmp_path / "x.gguf", "f32", config=root / "config.json", progress=False)
    assert not (tmp_path / "PWNED").exists()
    assert not list(tmp_path.glob("x.gguf*"))  # nothing half-written is left


@pytest.mark.parametrize("damage", ["truncate", "delete", "reshape"])
def test_damaged_checkpoint_names_the_file(tiny, tmp_path, damage):
    root, params = tiny
    ck = write_checkpoint(tmp_path / "ck", params) / "ckpt-0"
    f = ck / "tensor00005_000"
    if damage == "truncate":
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        msg = "tensor00005_000: truncated or corrupt"
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
    root, _ = tiny
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({**TINY, "emb_size": 128}))
    with pytest.raises(CheckpointError, match=r"tensor00000_000: token_embd is float32 \(512, 256\)"):
        convert_grok1(root / "ckpt", tmp_path / "x.gguf", "f32", config=cfg, progress=False)
    cfg.write_text(json.dumps({**TINY, "num_layers": 2}))
    with pytest.raises(CheckpointError, match="38 tensor files, but the config"):
        convert_grok1(root / "ckpt", tmp_path / "x.gguf", "f32", config=cfg, progress=False)

"""Older MoE files with one tensor per expert (blk.N.ffn_gate.E.weight) run as the stacked file
does: the same bits (streamed under a memory budget: tests/test_expert_cache.py)."""

import numpy as np
import pytest
from gguf import GGUFReader

from fitllm import Llama
from fitllm.gguf import GGUFError, GGUFFile
from fitllm.models import load_model
from tiny_models import rewrite, write_tiny

KINDS = ("gate", "up", "down")


def legacy(src: str, dst, drop: tuple[int, int] | None = None) -> str:
    """src with each stacked expert tensor written as one tensor per expert, in expert order."""
    r = GGUFReader(src)
    tensors = {}
    for t in r.tensors:
        if t.name.endswith("_exps.weight"):
            blk, kind = t.name.split(".")[1], t.name.split(".")[2][4:-5]
            tensors[t.name] = None
            raw = np.array(t.data)
            for e in range(raw.shape[0]):
                if (int(blk), e) != drop:
                    tensors[f"blk.{blk}.ffn_{kind}.{e}.weight"] = (raw[e], t.tensor_type)
    return rewrite(src, dst, tensors=tensors)


@pytest.fixture(scope="module")
def moe(tmp_path_factory) -> tuple[str, str]:
    d = tmp_path_factory.mktemp("legacy")
    stacked = write_tiny(d / "moe.gguf", "llama", n_layer=3, n_expert=4)
    return stacked, legacy(stacked, d / "legacy.gguf")


def _logits(path: str, **kw) -> np.ndarray:
    llm = Llama(path, n_ctx=64, verbose=False, logits_all=True, **kw)
    llm.eval([1, 5, 9, 2, 7])
    llm.eval([3])
    out = llm.scores[:6].copy()
    llm.close()
    return out


def test_per_expert_tensors_are_stacked_in_place(moe):
    stacked, old = moe
    f = GGUFFile(old)
    assert any(".ffn_gate.3.weight" in n for n in f.tensors)
    m = load_model(f)
    t = f.tensors["blk.1.ffn_down_exps.weight"]
    assert t.shape == GGUFFile(stacked).tensors["blk.1.ffn_down_exps.weight"].shape
    assert not t.data.flags.owndata  # adjacent in the file: a view, nothing copied
    assert not any(".ffn_gate.0.weight" in n for n in f.tensors) and m.hp.n_expert == 4


def test_legacy_experts_give_the_stacked_files_bits(moe):
    stacked, old = moe
    ref = _logits(stacked)
    assert np.array_equal(_logits(old), ref)  # streamed: tests/test_expert_cache.py


def test_a_missing_expert_is_refused(moe, tmp_path):
    bad = legacy(moe[0], tmp_path / "gap.gguf", drop=(2, 1))
    with pytest.raises(GGUFError, match=r"tensor 'blk.2.ffn_down.1.weight' is missing \(legacy experts\)"):
        load_model(GGUFFile(bad))

"""The loader validates before it allocates: crafted files end in one GGUFError naming the file and
the field or tensor (models/validate.py, gguf/reader.py), and the compiled block refuses widths it
was not given (csrc/layer.c)."""

import struct
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFValueType as VT

from fitllm import kernels
from fitllm.gguf import GGUFError, GGUFFile
from fitllm.info import describe
from fitllm.models import load_model
from fitllm.tokenizer import GGUFTokenizer
from tiny_models import rewrite, write_tiny

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from gguf_layout import parse  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return write_tiny(tmp_path_factory.mktemp("v") / "tiny.gguf", "llama")


def patched(tiny: str, tmp_path, edit) -> str:
    """A copy of tiny with bytes overwritten by edit(buf, layout)."""
    buf = bytearray(Path(tiny).read_bytes())
    edit(buf, parse(bytes(buf)))
    out = tmp_path / "bad.gguf"
    out.write_bytes(buf)
    return str(out)


def load(path: str):
    f = GGUFFile(path)
    return load_model(f), f


def tensor(lay, name):
    return next(t for t in lay.tensors if t.name == name)


def test_embedding_narrower_than_n_embd(tiny, tmp_path):
    # the reported heap overflow: token_embd [64, 64] read as [32, 128] (same bytes) made the
    # activations 32 wide for blocks 64 wide
    def edit(buf, lay):
        t = tensor(lay, "token_embd.weight")
        struct.pack_into("<QQ", buf, t.dims_at[0], 128, 32)

    with pytest.raises(
        GGUFError, match=r"bad.gguf: tensor 'token_embd.weight' has shape \[128, 32\], expected \["
    ):
        load(patched(tiny, tmp_path, edit))


def test_embedding_width_changed_in_place(tiny, tmp_path):
    # the report's edit itself (n_embd halved): the data offsets no longer add up
    def edit(buf, lay):
        struct.pack_into("<Q", buf, tensor(lay, "token_embd.weight").dims_at[0], 32)

    with pytest.raises(GGUFError, match="has data offset .* expected"):
        load(patched(tiny, tmp_path, edit))


def test_vocabulary_larger_than_embedding(tiny, tmp_path):
    f = GGUFFile(tiny)
    emb = f.tensor("token_embd.weight")
    rows = np.array(emb.data).reshape(64, -1)[:32]
    path = rewrite(tiny, tmp_path / "v.gguf", tensors={"token_embd.weight": (rows, emb.ggml_type)})
    with pytest.raises(GGUFError, match="vocabulary has 64 tokens but token_embd.weight has 32 rows"):
        load(path)


@pytest.mark.parametrize("n", [0xFFFFFFFE, 0x80000000, 0x4E81DF, 3, 1])
def test_block_count_beyond_the_tensors(tiny, tmp_path, n):
    def edit(buf, lay):
        struct.pack_into("<I", buf, lay.kv("llama.block_count").value_at, n)

    t0 = time.perf_counter()
    with pytest.raises(GGUFError, match=f"block_count {n}|outside"):
        load(patched(tiny, tmp_path, edit))
    assert time.perf_counter() - t0 < 2


def test_overlapping_and_misaligned_offsets(tiny, tmp_path):
    for shift in (-32, 1, 32):

        def edit(buf, lay):
            t = tensor(lay, "blk.0.attn_q.weight")
            struct.pack_into("<Q", buf, t.offset_at, t.offset + shift)

        with pytest.raises(GGUFError, match="'blk.0.attn_q.weight' has data offset"):
            GGUFFile(patched(tiny, tmp_path, edit))


def test_zero_element_tensor(tiny, tmp_path):
    def edit(buf, lay):
        struct.pack_into("<Q", buf, tensor(lay, "output_norm.weight").dims_at[0], 0)

    with pytest.raises(GGUFError, match="'output_norm.weight' has no elements"):
        GGUFFile(patched(tiny, tmp_path, edit))


def test_duplicate_tensor_name(tiny, tmp_path):
    def edit(buf, lay):
        t = tensor(lay, "blk.0.attn_k.weight")
        buf[t.name_at : t.name_at + len(t.name)] = b"blk.0.attn_q.weight"

    with pytest.raises(GGUFError, match="'blk.0.attn_q.weight' appears twice"):
        GGUFFile(patched(tiny, tmp_path, edit))


def test_norm_shorter_than_n_embd(tiny, tmp_path):
    path = rewrite(tiny, tmp_path / "n.gguf", tensors={"blk.1.ffn_norm.weight": np.ones(32, np.float32)})
    with pytest.raises(GGUFError, match=r"'blk.1.ffn_norm.weight' has shape \[32\], expected \[64\]"):
        load(path)


def test_block_name_not_a_number(tiny, tmp_path):
    def edit(buf, lay):
        t = tensor(lay, "blk.1.attn_q.weight")
        buf[t.name_at + 4] = ord("X")

    with pytest.raises(GGUFError, match="'blk.X.attn_q.weight' has no block number"):
        load(patched(tiny, tmp_path, edit))


@pytest.mark.parametrize(
    "key, new, match",
    [
        ("llama.attention.head_count", (0, VT.UINT32), "head_count = 0 is outside"),
        (
            "llama.attention.head_count",
            (8, VT.UINT32),
            r"attn_k.weight' has shape \[64, 32\], expected \[64, 16\]",
        ),
        ("llama.block_count", (2.0, VT.FLOAT32), "block_count = 2.0 is not an integer"),
        ("llama.attention.head_count_kv", (2.0, VT.FLOAT32), "head_count_kv = 2.0 is not an integer"),
        ("llama.attention.head_count_kv", (3, VT.UINT32), "not a multiple of head_count_kv 3"),
        ("llama.embedding_length", (1 << 40, VT.UINT64), "embedding_length = 1099511627776 is outside"),
        ("llama.context_length", ("long", VT.STRING), "context_length = 'long' is not an integer"),
        ("llama.attention.layer_norm_rms_epsilon", (float("nan"), VT.FLOAT32), "epsilon = nan is outside"),
    ],
)
def test_bad_hyper_parameters(tiny, tmp_path, key, new, match):
    path = rewrite(tiny, tmp_path / "h.gguf", kv={key: new})
    with pytest.raises(GGUFError, match=match):
        load(path)
    assert "tensors:" in describe(path)  # `fitllm info` describes what it can


def test_expert_dim_zero_and_mismatch(tmp_path):
    moe = write_tiny(tmp_path / "moe.gguf", "grok")
    bad = rewrite(moe, tmp_path / "m.gguf", kv={"grok.expert_count": (8, VT.UINT32)})
    with pytest.raises(GGUFError, match="'blk.0.ffn_gate_inp.weight' has shape"):
        load(bad)
    bad = rewrite(moe, tmp_path / "m0.gguf", kv={"grok.expert_used_count": (0, VT.UINT32)})
    with pytest.raises(GGUFError, match="expert_used_count 0 is outside"):
        load(bad)


@pytest.mark.parametrize(
    "kv, match",
    [
        ({"tokenizer.ggml.merges": (["a"], VT.ARRAY)}, "tokenizer cannot be built"),
        ({"tokenizer.ggml.merges": (["a zz"], VT.ARRAY)}, "tokenizer cannot be built"),
        ({"tokenizer.ggml.tokens": (7, VT.UINT32)}, "tokens is not a non-empty array of strings"),
        ({"tokenizer.ggml.token_type": ([1, 2], VT.ARRAY)}, "token_type is not an array of 64 numbers"),
        ({"tokenizer.ggml.bos_token_id": (64, VT.UINT32)}, "bos_token_id = 64 is not a token id"),
    ],
)
def test_corrupted_tokenizer(tiny, tmp_path, kv, match, monkeypatch):
    monkeypatch.setenv("FITLLM_CACHE", str(tmp_path))  # built, not loaded from the cache
    path = rewrite(tiny, tmp_path / "t.gguf", kv=kv)
    with pytest.raises(GGUFError, match=match):
        GGUFTokenizer(GGUFFile(path))


def test_architecture_not_a_string(tiny, tmp_path):
    path = rewrite(tiny, tmp_path / "a.gguf", kv={"general.architecture": (3, VT.UINT32)})
    with pytest.raises(GGUFError, match="general.architecture is not a string"):
        describe(path)


def test_layer_refuses_short_norms_and_narrow_activations(tiny):
    # the compiled block checks what it is given, whatever the Python side checked
    model, _ = load(tiny)
    spec_kw = dict(model.spec(0, model.blk[0]).keep)
    kv = model.new_cache(8)
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    kernels.layer_forward(kernels.layer_spec(**spec_kw), kv.k[0], kv.v[0], x.copy(), 0)  # as given: runs
    for name in ("attn_norm", "ffn_norm"):
        short = kernels.layer_spec(**{**spec_kw, name: spec_kw[name][:32].copy()})
        with pytest.raises(ValueError, match="layer: buffer too small"):
            kernels.layer_forward(short, kv.k[0], kv.v[0], x.copy(), 0)
    with pytest.raises(ValueError, match="layer: buffer too small"):  # activations 32 wide, block 64
        kernels.layer_forward(kernels.layer_spec(**spec_kw), kv.k[0], kv.v[0], x[:, :32].copy(), 0)
    small = model.new_cache(8)
    small.k[0] = small.k[0][:, :1].copy()  # a cache of one kv head where the block has two
    with pytest.raises(ValueError, match="layer: buffer too small"):
        kernels.layer_forward(kernels.layer_spec(**spec_kw), small.k[0], small.k[0], x.copy(), 0)


def test_rms_norm_refuses_a_short_weight():
    x, w = np.ones((2, 8), np.float32), np.ones(4, np.float32)
    rc = kernels._lib.fl_rms_norm(x.ctypes.data, 2, 8, w.ctypes.data, 4, 1e-5, x.ctypes.data)
    assert rc == -2


@pytest.mark.parametrize(
    "key, value, vtype, what",
    [
        ("llama.rope.scaling.yarn_log_multiplier", 0.1, VT.FLOAT32, "YaRN's log multiplier"),
        ("llama.attn_logit_softcapping", 50.0, VT.FLOAT32, "attention logit softcapping"),
        ("llama.final_logit_softcapping", 30.0, VT.FLOAT32, "final logit softcapping"),
        ("llama.attention.layernorm_eps", 1e-5, VT.FLOAT32, "LayerNorm"),
        ("llama.expert_shared_count", 2, VT.UINT32, "shared experts"),
    ],
)
def test_keys_that_change_the_math_are_refused(tiny, tmp_path, key, value, vtype, what):
    bad = rewrite(tiny, tmp_path / "k.gguf", kv={key: (value, vtype)})
    with pytest.raises(GGUFError, match=rf"k.gguf: metadata {key} = .* asks for {what}.*llama.cpp's$"):
        load(bad)


@pytest.mark.parametrize(
    "key, value, vtype",
    [("llama.rope.scaling.type", "none", VT.STRING), ("llama.rope.scaling.factor", 1.0, VT.FLOAT32)],
)
def test_neutral_math_keys_load(tiny, tmp_path, key, value, vtype):
    load(rewrite(tiny, tmp_path / "k.gguf", kv={key: (value, vtype)}))


def test_gemma3_final_softcap_is_implemented(tmp_path):
    g = write_tiny(tmp_path / "g.gguf", "gemma3")
    load(rewrite(g, tmp_path / "g2.gguf", kv={"gemma3.final_logit_softcapping": (30.0, VT.FLOAT32)}))


def test_unused_tensors_are_refused(tiny, tmp_path):
    """A tensor the blocks do not read (gpt-oss's attention sinks here) would change the math."""
    sinks = np.ones(4, np.float32)
    with pytest.raises(GGUFError, match=r"tensor 'blk.1.attn_sinks.weight' is not used by fitllm's llama"):
        load(rewrite(tiny, tmp_path / "s.gguf", tensors={"blk.1.attn_sinks.weight": sinks}))

"""fitllm convert HF_DIR: against transformers' forward pass (the source framework), llama.cpp's
converter (the same tensor bytes) and llama.cpp's run of the converted file (golden data:
tests/golden/convert_hf.py)."""

import hashlib
import json
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from conftest import golden, require

require("torch", "transformers", env="FITLLM_REQUIRE_TORCH", why="transformers is the oracle")

from fitllm import Llama  # noqa: E402
from fitllm.cli import main  # noqa: E402
from fitllm.convert.grok1_checkpoint import CheckpointError  # noqa: E402
from fitllm.convert.hf import convert_hf  # noqa: E402
from fitllm.gguf import GGUFFile  # noqa: E402
from grok1_fixture import TINY_VOCAB, TOKENIZER, ffn_size, write_vocab_model  # noqa: E402
from hf_fixture import hf_logits, real_from_gguf, tiny, tokenizer_from_gguf  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent / "golden"))
from strings import test_strings as sample_strings  # noqa: E402

pytestmark = pytest.mark.oracle

TEXT = b"The lighthouse keeper wrote the date, the weather, and 1962 ships in his notebook."
TOKENIZER_KEYS = [
    f"tokenizer.ggml.{k}"
    for k in (
        "model",
        "pre",
        "tokens",
        "token_type",
        "merges",
        "bos_token_id",
        "eos_token_id",
        "unknown_token_id",
        "padding_token_id",
        "add_bos_token",
    )
]
TOKENIZER_KEYS.append("tokenizer.chat_template")


@pytest.fixture(scope="module")
def smol_hf(tmp_path_factory, smollm2_path):
    return real_from_gguf(smollm2_path, tmp_path_factory.mktemp("smollm2-hf"))


@pytest.fixture(scope="module")
def smol_tok(tmp_path_factory, smollm2_path):
    return tokenizer_from_gguf(smollm2_path, tmp_path_factory.mktemp("smol-tok"), digits=True)


@pytest.fixture(scope="module")
def gemma_tok(tmp_path_factory, gemma3_path):
    return tokenizer_from_gguf(gemma3_path, tmp_path_factory.mktemp("gemma-tok"))


def our_logits(path: Path, ids: list[int]) -> np.ndarray:
    llm = Llama(str(path), n_ctx=256, logits_all=True, verbose=False)
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])


def same_tokens(llm: Llama, hf: Path) -> bool:
    """fitllm's tokens on the converted file = HF tokenizers' on tokenizer.json, over 200 strings."""
    ref = Tokenizer.from_file(str(hf / "tokenizer.json"))
    strings = sample_strings()[:200]
    bad = [
        x
        for x in strings
        if llm.tokenize(x.encode(), False, True) != ref.encode(x, add_special_tokens=False).ids
    ]
    assert not bad, f"{len(bad)} strings differ, e.g. {bad[:3]}"
    return True


def tensor_hashes(path: Path) -> dict:
    f = GGUFFile(str(path))
    return {n: [t.type_name, hashlib.sha256(bytes(t.data)).hexdigest()] for n, t in f.tensors.items()}


def test_real_smollm2_matches_transformers_and_llama_cpp(smol_hf, smollm2_path, tmp_path):
    out = convert_hf(smol_hf, tmp_path / "smol.f32.gguf", "f32", progress=False)
    g = golden("convert_hf")
    assert tensor_hashes(out) == g["llama_cpp_converter"]["f32"]  # llama.cpp's converter: same bytes
    llm = Llama(str(out), n_ctx=256, verbose=False)
    ids = llm.tokenize(TEXT, add_bos=False)
    ref, ours = hf_logits(smol_hf, ids), our_logits(out, ids)
    assert np.abs(ours - ref).max() < 0.05 * np.abs(ref).max() / 27  # 0.05 on logits up to ~27
    assert (ours.argmax(1) == ref.argmax(1)).all()
    # the tokenizer, chat template and special ids come back as the original GGUF had them
    conv, orig = GGUFFile(str(out)), GGUFFile(smollm2_path)
    for k in TOKENIZER_KEYS:
        assert np.array_equal(np.asarray(conv.get(k)), np.asarray(orig.get(k))), k
    assert same_tokens(llm, smol_hf)


def test_q8_0_file_runs_in_llama_cpp(smol_hf, tmp_path):
    out = convert_hf(smol_hf, tmp_path / "smol.q8_0.gguf", "q8_0", threads=2, progress=False)
    g = golden("convert_hf")
    assert tensor_hashes(out) == g["llama_cpp_converter"]["q8_0"]
    # teacher-forced on llama.cpp's greedy tokens: the same pick wherever the top two are 0.5 apart
    # (two engines' sums in other orders move SmolLM2's logits by up to ~1.5, test_gguf_quantize.py)
    greedy, prompt = g["llama_cpp_greedy"], g["prompt_tokens"]
    scores = our_logits(out, prompt + greedy)[len(prompt) - 1 : -1]
    top2 = np.sort(scores, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.5
    assert (scores.argmax(1) == greedy)[clear].all() and clear.mean() >= 0.5


@pytest.mark.parametrize(
    "kind, extra",
    [
        ("llama", dict(attention_bias=True)),  # q/k rows and biases permuted for llama's RoPE
        ("mixtral", dict(num_local_experts=4, num_experts_per_tok=2)),
        ("qwen2", dict()),
    ],
)
def test_tiny_families_match_transformers(kind, extra, smol_tok, tmp_path):
    hf = tiny(kind, tmp_path / kind, smol_tok, 49152, bin_format=kind == "llama", **extra)
    assert (hf / "pytorch_model.bin").is_file() == (kind == "llama")  # the torch.save path too
    out = convert_hf(hf, tmp_path / f"{kind}.gguf", "f32", progress=False)
    ids = Llama(str(out), verbose=False).tokenize(TEXT, add_bos=False)
    ref, ours = hf_logits(hf, ids), our_logits(out, ids)
    assert np.abs(ours - ref).max() < 5e-3 * np.abs(ref).max(), kind  # f16 KV cache, as llama.cpp


GEMMA3 = dict(num_hidden_layers=7, sliding_window=6, head_dim=32, query_pre_attn_scalar=32)


def test_tiny_gemma3_architecture_matches_transformers(smol_tok, tmp_path):
    # the architecture (sliding window, norms, scalings) on SmolLM2's small vocabulary; Gemma's own
    # 262k-piece one (slow for transformers to rebuild from the GGUF) in the slow tier below
    hf = tiny("gemma3", tmp_path / "g", smol_tok, 49152, **GEMMA3)
    out = convert_hf(hf, tmp_path / "g.gguf", "f32", progress=False)
    ids = Llama(str(out), verbose=False).tokenize(TEXT, add_bos=False)
    ref, ours = hf_logits(hf, ids), our_logits(out, ids)
    assert np.abs(ours - ref).max() < 2e-3 * np.abs(ref).max()


@pytest.mark.slow
def test_tiny_gemma3_sliding_window_matches_transformers(gemma_tok, tmp_path):
    extra = GEMMA3
    hf = tiny("gemma3", tmp_path / "g", gemma_tok, 262144, **extra)
    out = convert_hf(hf, tmp_path / "g.gguf", "f32", progress=False)
    llm = Llama(str(out), verbose=False)
    ids = llm.tokenize(TEXT)  # with <bos>, as Gemma's tokenizer adds it
    assert ids[0] == 2 and len(ids) > 12
    ref, ours = hf_logits(hf, ids), our_logits(out, ids)
    assert np.abs(ours - ref).max() < 2e-3 * np.abs(ref).max()
    assert same_tokens(llm, hf)  # SentencePiece-style BPE -> a "llama" vocab scored by merge rank


def test_cli_convert_to_a_k_mix(smol_tok, tmp_path):
    hf = tiny("llama", tmp_path / "m", smol_tok, 49152, hidden_size=256, intermediate_size=512)
    assert (
        main(["convert", str(hf), "-o", str(tmp_path / "m.gguf"), "--type", "Q4_K_M", "--no-progress"]) == 0
    )
    f = GGUFFile(str(tmp_path / "m.gguf"))
    assert f.get("general.file_type") == 15
    types = {n: t.type_name for n, t in f.tensors.items()}
    assert types["blk.0.attn_q.weight"] == "Q4_K" and types["blk.1.ffn_down.weight"] == "Q6_K"
    assert types["blk.0.attn_norm.weight"] == "F32"


def _malicious_bin(path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (subprocess.call, (["touch", str(path.parent / "pwned")],))

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"model.embed_tokens.weight": Evil()}))


def test_bad_checkpoints_are_refused_and_leave_nothing(smol_tok, tmp_path):
    hf = tiny("llama", tmp_path / "m", smol_tok, 49152)
    out = tmp_path / "out.gguf"
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in hf.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    st = bad / "model.safetensors"
    st.write_bytes(st.read_bytes()[:-100])  # truncated
    with pytest.raises(CheckpointError, match="does not fit"):
        convert_hf(bad, out, progress=False)
    st.unlink()
    _malicious_bin(bad / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refusing to load"):
        convert_hf(bad, out, progress=False)
    assert not (bad / "pwned").exists()
    cfg = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**cfg, "architectures": ["FalconForCausalLM"]}))
    with pytest.raises(CheckpointError, match="not supported"):
        convert_hf(hf, out, progress=False)
    assert not out.exists() and not Path(str(out) + ".part").exists()


def test_memory_stays_near_one_tensor(smol_hf, tmp_path):
    """Peak RSS of a 538 MB F32 -> F16 conversion, over the interpreter's after imports; the
    largest tensor (the embedding) is 113 MB."""
    code = (
        "import resource, sys; from fitllm.convert.hf import convert_hf; "
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
        "convert_hf(sys.argv[1], sys.argv[2], 'f16', progress=False); "
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(smol_hf), str(tmp_path / "o.gguf")], capture_output=True
    )
    grown_mb = float(r.stdout.decode().split()[-1])
    assert grown_mb < 2.5 * 113, grown_mb


# keyfan/grok-1-hf's layout (llama.cpp's GrokModel reads it), stated here apart from the converter's tables
GROK_HF = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "attn_q": "self_attn.q_proj",
           "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
           "attn_norm": "pre_attn_norm", "attn_output_norm": "post_attn_norm", "ffn_norm": "pre_moe_norm",
           "layer_output_norm": "post_moe_norm", "ffn_gate_inp": "block_sparse_moe.gate",
           "ffn_gate_exps": "w1", "ffn_down_exps": "w2", "ffn_up_exps": "w3"}  # fmt: skip


def grok_hf_from_gguf(src: Path, dst: Path, c: dict) -> Path:
    from safetensors.numpy import save_file

    dst.mkdir()
    weights = {}
    for name, t in GGUFFile(str(src)).tensors.items():
        parts = name.split(".")
        x = np.asarray(t.data).view(np.float32).reshape(t.shape)
        if parts[0] != "blk":
            weights[GROK_HF[parts[0]] + ".weight"] = x
        elif parts[2].endswith("_exps"):
            for e in range(x.shape[0]):
                weights[
                    f"model.layers.{parts[1]}.block_sparse_moe.experts.{e}.{GROK_HF[parts[2]]}.weight"
                ] = x[e]
        else:
            weights[f"model.layers.{parts[1]}.{GROK_HF[parts[2]]}.weight"] = x
    save_file(weights, str(dst / "model.safetensors"))
    fields = dict(vocab_size="vocab_size", hidden_size="emb_size", num_hidden_layers="num_layers",
                  num_attention_heads="num_q_heads", num_key_value_heads="num_kv_heads", head_dim="key_size",
                  max_position_embeddings="sequence_len", num_experts="num_experts",
                  num_experts_per_tok="num_selected_experts")  # fmt: skip
    for k in ("embedding_multiplier_scale", "output_multiplier_scale", "attn_output_multiplier"):
        fields[k] = k
    cfg = {k: c[v] for k, v in fields.items()}
    cfg.update(architectures=["Grok1ModelForCausalLM"], intermediate_size=ffn_size(c), rope_theta=1e4)
    cfg.update(rms_norm_eps=1e-5, max_attn_value=30.0, tie_word_embeddings=True)
    (dst / "config.json").write_text(json.dumps(cfg))
    (dst / "tokenizer.model").write_bytes(TOKENIZER.read_bytes())
    return dst


def test_grok1_hf_layout_gives_the_release_checkpoints_gguf(tmp_path):
    """The same weights through both converters: the HF layout's GGUF = the ckpt-0 one's."""
    ref = write_vocab_model(tmp_path, "f32")
    hf = grok_hf_from_gguf(ref, tmp_path / "grok-hf", TINY_VOCAB)
    out = convert_hf(hf, tmp_path / "hf.f32.gguf", "f32", progress=False)
    a, b = GGUFFile(str(ref)), GGUFFile(str(out))
    assert tensor_hashes(out) == tensor_hashes(ref)  # names, types and bytes (the order may differ)
    skip = ("general.name", "tokenizer.ggml.add_bos_token")  # a ckpt has no tokenizer_config.json
    for k in set(a.metadata) | set(b.metadata):
        if k not in skip:
            assert np.array_equal(np.asarray(a.get(k)), np.asarray(b.get(k))), k

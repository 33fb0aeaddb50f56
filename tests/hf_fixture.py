"""Hugging Face checkpoints for the convert tests, made with transformers (the source framework):
- the real SmolLM2-135M-Instruct, decoded from the embedded GGUF by transformers' own GGUF loader;
- tiny random models of each family, with a real tokenizer saved beside them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import transformers as T

TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2)  # fmt: skip


def _clean_config(folder: Path) -> None:
    """transformers notes the GGUF it decoded as a quantization; the saved weights are plain F32."""
    p = folder / "config.json"
    cfg = json.loads(p.read_text())
    cfg.pop("quantization_config", None)
    p.write_text(json.dumps(cfg, indent=2))


def tokenizer_from_gguf(gguf_path: str, dst: Path, digits: bool = False) -> Path:
    """tokenizer.json + tokenizer_config.json (+ chat template) as transformers rebuilds them from
    a GGUF. digits: put back SmolLM2's own pre-tokenizer (single digits, then byte-level), which
    the rebuild drops."""
    p = Path(gguf_path)
    T.AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name).save_pretrained(dst)
    if digits:
        tj = dst / "tokenizer.json"
        t = json.loads(tj.read_text())
        byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
        digits = {"type": "Digits", "individual_digits": True}
        t["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [digits, byte_level]}
        tj.write_text(json.dumps(t, ensure_ascii=False))
    return dst


def real_from_gguf(gguf_path: str, dst: Path) -> Path:
    """The model of a GGUF file as an HF checkpoint (F32 safetensors) with its tokenizer."""
    p = Path(gguf_path)
    tokenizer_from_gguf(gguf_path, dst, digits="SmolLM2" in p.name)
    m = T.AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=torch.float32)
    m.hf_quantizer = None
    m.save_pretrained(dst)
    _clean_config(dst)
    return dst


def tiny(kind: str, dst: Path, tokenizer: Path, vocab: int, bin_format: bool = False, **extra) -> Path:
    """A random model of `kind` (llama, mixtral, qwen2, gemma3) sized TINY, with the tokenizer files
    copied from `tokenizer`."""
    torch.manual_seed(0)
    cls = {
        "llama": (T.LlamaConfig, T.LlamaForCausalLM),
        "mixtral": (T.MixtralConfig, T.MixtralForCausalLM),
        "qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM),
        "gemma3": (T.Gemma3TextConfig, T.Gemma3ForCausalLM),
    }
    cfg_cls, model_cls = cls[kind]
    m = model_cls(cfg_cls(vocab_size=vocab, **{**TINY, **extra}))
    with torch.no_grad():  # random norms too, so that a missing +1 or a swapped norm shows
        for n, p in m.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.randn_like(p) * 0.3 + (0.0 if kind == "gemma3" else 1.0))
    m.save_pretrained(dst)
    if bin_format:  # the older pytorch_model.bin (a torch.save zip) instead of safetensors
        (dst / "model.safetensors").unlink()
        torch.save(m.state_dict(), dst / "pytorch_model.bin")
    for f in tokenizer.iterdir():
        if f.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


def hf_logits(folder: Path, ids: list[int]) -> np.ndarray:
    m = T.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        return m(torch.tensor([ids])).logits[0].numpy()

"""Name maps as tables: checkpoint leaves -> GGUF tensor names."""

from __future__ import annotations

# Grok-1 release checkpoint (xai-org/grok-1 checkpoint.py): one file per leaf of the parameter tree,
# leaves in JAX's flattening order, i.e. module paths sorted lexicographically.
# (haiku path, GGUF name, kind); kinds: embedding, norm, router, linear (int8 + bf16 scales),
# experts (stacked int8 + bf16 scales)
GROK1_GLOBAL_LEAVES = [
    ("language_model/in_out_embed/embeddings", "token_embd", "embedding"),
    ("language_model/rms_norm/scale", "output_norm", "norm"),
]
GROK1_LAYER_LEAVES = [  # under transformer/decoder_layer_{N}/
    ("moe/linear/w", "ffn_gate_exps", "experts"),  # W1, gelu branch
    ("moe/linear_1/w", "ffn_down_exps", "experts"),  # W2, row-parallel: 8 scale row blocks
    ("moe/linear_v/w", "ffn_up_exps", "experts"),  # Wv
    ("multi_head_attention/key/w", "attn_k", "linear"),
    ("multi_head_attention/linear/w", "attn_output", "linear"),  # row-parallel: 8 scale row blocks
    ("multi_head_attention/query/w", "attn_q", "linear"),
    ("multi_head_attention/value/w", "attn_v", "linear"),
    ("rms_norm/scale", "attn_norm", "norm"),
    ("rms_norm_1/scale", "attn_output_norm", "norm"),
    ("rms_norm_2/scale", "ffn_norm", "norm"),
    ("rms_norm_3/scale", "layer_output_norm", "norm"),
    ("router/w", "ffn_gate_inp", "router"),
]


def grok1_layer_order(num_layers: int) -> list[int]:
    """Layer numbers in file order: decoder_layer_0, _1, _10, _11, ... (string sort)."""
    return sorted(range(num_layers), key=str)


# Hugging Face checkpoints. Tensor names go through gguf-py's TensorNameMap (llama.cpp's own table);
# what follows are the facts it does not hold.

#: config.json "architectures" -> GGUF architecture
HF_ARCHITECTURES = {
    "LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "MixtralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Gemma3ForCausalLM": "gemma3", "Gemma3ForConditionalGeneration": "gemma3",
    "Grok1ModelForCausalLM": "grok", "Grok1ForCausalLM": "grok", "GrokForCausalLM": "grok",
}  # fmt: skip

#: "{arch}.<key>" <- the first of these config.json fields that is set (text_config's for Gemma3 VLMs)
HF_HPARAMS = [
    ("context_length", ("max_position_embeddings",)),
    ("embedding_length", ("hidden_size",)),
    ("block_count", ("num_hidden_layers",)),
    ("feed_forward_length", ("intermediate_size",)),
    ("attention.head_count", ("num_attention_heads",)),
    ("attention.head_count_kv", ("num_key_value_heads",)),
    ("attention.layer_norm_rms_epsilon", ("rms_norm_eps",)),
    ("expert_count", ("num_local_experts", "num_experts")),
    ("expert_used_count", ("num_experts_per_tok",)),
]

#: name prefixes rewritten before the lookup (multimodal wrappers around a text model)
HF_PREFIXES = [
    ("model.language_model.", "model."),
    ("language_model.model.", "model."),
    ("language_model.lm_head.", "lm_head."),
]
#: tensors a text model does not use
HF_SKIP = ("vision_tower.", "model.vision_tower.", "multi_modal_projector.", "model.multi_modal_projector.")
HF_SKIP_SUFFIXES = ("rotary_emb.inv_freq",)

#: GGUF names fitllm and llama.cpp load that differ from gguf-py's map, per architecture
GGUF_RENAMES = {"grok": {"post_ffw_norm": "layer_output_norm"}}  # llama.cpp's grok reads either

#: per-expert tensors (experts.N.w1 ...) are stacked into one 3-D tensor named as experts.w1 maps
HF_EXPERT = r"^(?P<base>.*\.experts)\.(?P<e>\d+)\.(?P<w>w1|w2|w3|gate_proj|up_proj|down_proj)\.weight$"

#: tokenizer.json pre-tokenizers -> llama.cpp's tokenizer.ggml.pre (the regex of a Split, or a shape)
HF_PRE_TOKENIZERS = {
    "ByteLevel": "gpt-2",
    "Digits+ByteLevel": "smollm",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",  # noqa: E501
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",  # noqa: E501
}

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

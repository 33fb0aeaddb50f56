"""Grok-1 (xai-org/grok-1 model.py): sandwich RMSNorms (four per layer, weights used as is),
GQA with half-split RoPE, attention logits times attn_output_multiplier then soft-capped with
30 tanh(x / 30), a mixture of 8 GELU experts (top 2 of the 8-way softmax, not renormalised), tied
output times output_multiplier_scale. Multipliers come from llama.cpp's grok keys, with Grok-1's
values when a file has none (GGUFs made by llama.cpp's converter carry none)."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from fitllm.gguf import GGUFFile
from fitllm.kv_cache import KVCache
from fitllm.models.base import DecoderModel, HParams
from fitllm.models.layers import attention, gelu_tanh, rms_norm, rope
from fitllm.models.validate import float_key, int_key

# run.py's Grok-1 config
EMBEDDING_MULTIPLIER_SCALE = 78.38367176906169
ATTN_OUTPUT_MULTIPLIER = 0.08838834764831845
OUTPUT_MULTIPLIER_SCALE = 0.5773502691896257
MAX_ATTN_VAL = 30.0


@dataclass
class GrokHParams(HParams):
    embedding_multiplier_scale: float = EMBEDDING_MULTIPLIER_SCALE
    attn_output_multiplier: float = ATTN_OUTPUT_MULTIPLIER
    output_multiplier_scale: float = OUTPUT_MULTIPLIER_SCALE
    max_attn_val: float = MAX_ATTN_VAL

    @classmethod
    def from_gguf(cls, f: GGUFFile, **extra) -> GrokHParams:
        return super().from_gguf(
            f,
            n_ff=int_key(f, "grok.expert_feed_forward_length", None)
            or int_key(f, "grok.feed_forward_length"),
            embedding_multiplier_scale=float_key(f, "grok.embedding_scale", EMBEDDING_MULTIPLIER_SCALE),
            attn_output_multiplier=float_key(f, "grok.attention.output_scale", ATTN_OUTPUT_MULTIPLIER),
            output_multiplier_scale=float_key(f, "grok.logit_scale", OUTPUT_MULTIPLIER_SCALE),
            max_attn_val=float_key(f, "grok.attn_logit_softcapping", MAX_ATTN_VAL),
            **extra,
        )


class GrokModel(DecoderModel):
    hparams_class = GrokHParams
    math_keys = ("attn_logit_softcapping", "embedding_scale", "logit_scale")
    moe_norm_w = False  # the reference gates with the raw 8-way probabilities (llama.cpp renormalises)

    def embed(self, tokens: np.ndarray) -> np.ndarray:
        return self.token_embd.rows(tokens) * np.float32(self.hp.embedding_multiplier_scale)

    def attn(self, i: int, blk: SimpleNamespace, h: np.ndarray, pos: np.ndarray, kv: KVCache) -> np.ndarray:
        hp, T = self.hp, h.shape[0]
        sc, freqs = hp.rope_scaling, getattr(self, "rope_freqs", None)
        q = rope(
            blk.attn_q(h).reshape(T, hp.n_head, hp.head_dim), pos, hp.rope_base, hp.n_rot, True, sc, freqs
        )
        k = rope(
            blk.attn_k(h).reshape(T, hp.n_head_kv, hp.head_dim), pos, hp.rope_base, hp.n_rot, True, sc, freqs
        )
        v = blk.attn_v(h).reshape(T, hp.n_head_kv, hp.head_dim)
        keys, values = kv.store(i, k, v)
        o = attention(q, keys, values, pos, hp.attn_output_multiplier, softcap=hp.max_attn_val)
        return blk.attn_output(o)

    def layer(self, i: int, blk: SimpleNamespace, x: np.ndarray, pos: np.ndarray, kv: KVCache) -> np.ndarray:
        eps = self.hp.norm_eps
        h = self.attn(i, blk, rms_norm(x, blk.attn_norm, eps), pos, kv)  # rms_norm
        x = x + rms_norm(h, blk.attn_output_norm, eps)  # rms_norm_1
        h = self.ffn_moe(blk, rms_norm(x, blk.ffn_norm, eps), gelu_tanh)  # rms_norm_2
        return x + rms_norm(h, blk.layer_output_norm, eps)  # rms_norm_3

    def layer_spec(self, i: int, blk: SimpleNamespace) -> dict:
        hp = self.hp
        return dict(
            rope_neox=1,
            act_gelu=1,
            post_attn_norm=blk.attn_output_norm,
            post_ffn_norm=blk.layer_output_norm,
            kq_scale=hp.attn_output_multiplier,
            attn_softcap=hp.max_attn_val,
        )

    def logits(self, x: np.ndarray) -> np.ndarray:
        return super().logits(x) * np.float32(self.hp.output_multiplier_scale)

"""Llama family (Llama 2/3, Mistral, Mixtral, SmolLM2): GQA, RoPE, SwiGLU or a mixture of SwiGLU
experts, tied or untied output."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from fitllm.kv_cache import KVCache
from fitllm.models.base import DecoderModel
from fitllm.models.layers import attention, rms_norm, rope, silu


class LlamaModel(DecoderModel):
    neox_rope = False  # llama.cpp's converter permutes q/k for the interleaved form

    def attn(self, i: int, blk: SimpleNamespace, h: np.ndarray, pos: np.ndarray, kv: KVCache) -> np.ndarray:
        hp, T = self.hp, h.shape[0]
        q = blk.attn_q(h).reshape(T, hp.n_head, hp.head_dim)
        k = blk.attn_k(h).reshape(T, hp.n_head_kv, hp.head_dim)
        v = blk.attn_v(h).reshape(T, hp.n_head_kv, hp.head_dim)
        freqs = getattr(self, "rope_freqs", None)
        q = rope(q, pos, hp.rope_base, hp.n_rot, self.neox_rope, hp.rope_scaling, freqs)
        k = rope(k, pos, hp.rope_base, hp.n_rot, self.neox_rope, hp.rope_scaling, freqs)
        keys, values = kv.store(i, k, v)
        o = attention(q, keys, values, pos, 1.0 / np.sqrt(hp.head_dim))
        return blk.attn_output(o)

    def layer_spec(self, i: int, blk: SimpleNamespace) -> dict:
        return dict(rope_neox=int(self.neox_rope), act_gelu=0)

    def layer(self, i: int, blk: SimpleNamespace, x: np.ndarray, pos: np.ndarray, kv: KVCache) -> np.ndarray:
        eps = self.hp.norm_eps
        x = x + self.attn(i, blk, rms_norm(x, blk.attn_norm, eps), pos, kv)
        h = rms_norm(x, blk.ffn_norm, eps)
        if self.is_moe(blk):  # Mixtral layout
            return x + self.ffn_moe(blk, h, silu)
        return x + blk.ffn_down(silu(blk.ffn_gate(h)) * blk.ffn_up(h))

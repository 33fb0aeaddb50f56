"""Gemma 3: q/k RMS norms, post-attention and post-FFN norms, scaled embeddings,
sliding-window attention on 5 of every 6 layers (with their own RoPE base), GELU-tanh, tied output.
Norm weights in GGUF already include Gemma's +1."""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import SimpleNamespace

import numpy as np

from fitllm.gguf import GGUFFile
from fitllm.kv_cache import KVCache
from fitllm.models.base import DecoderModel, HParams
from fitllm.models.layers import attention, gelu_tanh, rms_norm, rope
from fitllm.models.rope_scaling import RopeScaling
from fitllm.models.validate import MAX_CTX, MAX_LAYERS, float_key, int_key


@dataclass
class Gemma3HParams(HParams):
    sliding_window: int = 0
    swa_pattern: int = 6  # layers i with i % 6 < 5 use the window
    rope_base_swa: float = 10000.0
    attn_scale: float = 1.0
    final_softcap: float = 0.0

    @classmethod
    def from_gguf(cls, f: GGUFFile, **extra) -> Gemma3HParams:
        a = f.architecture
        n_embd, n_head = int_key(f, f"{a}.embedding_length"), int_key(f, f"{a}.attention.head_count")
        hd = int_key(f, f"{a}.attention.key_length", None) or max(n_embd // n_head, 1)
        # 27B scales queries by 1/sqrt(n_embd / n_head), the others by 1/sqrt(head_dim)
        n_layer = int_key(f, f"{a}.block_count", hi=MAX_LAYERS)
        scale_dim = max(n_embd // n_head, 1) if n_layer == 62 else hd
        return super().from_gguf(
            f,
            sliding_window=int_key(f, f"{a}.attention.sliding_window", 0, lo=0, hi=MAX_CTX),
            swa_pattern=int_key(f, f"{a}.attention.sliding_window_pattern", 6, lo=0, hi=MAX_LAYERS),
            rope_base_swa=float_key(f, f"{a}.rope.freq_base_swa", 10000.0, lo=1.0),
            attn_scale=1.0 / np.sqrt(scale_dim),
            final_softcap=float_key(f, f"{a}.final_logit_softcapping", 0.0),
            **extra,
        )


class Gemma3Model(DecoderModel):
    hparams_class = Gemma3HParams
    math_keys = ("final_logit_softcapping",)

    def is_swa(self, i: int) -> bool:
        hp = self.hp
        # llama.cpp: pattern 0 puts every layer in the window
        return hp.sliding_window > 0 and (hp.swa_pattern == 0 or i % hp.swa_pattern < hp.swa_pattern - 1)

    def embed(self, tokens: np.ndarray) -> np.ndarray:
        return self.token_embd.rows(tokens) * np.float32(np.sqrt(self.hp.n_embd))

    def attn(self, i: int, blk: SimpleNamespace, h: np.ndarray, pos: np.ndarray, kv: KVCache) -> np.ndarray:
        hp, T, eps = self.hp, h.shape[0], self.hp.norm_eps
        q = rms_norm(blk.attn_q(h).reshape(T, hp.n_head, hp.head_dim), blk.attn_q_norm, eps)
        k = rms_norm(blk.attn_k(h).reshape(T, hp.n_head_kv, hp.head_dim), blk.attn_k_norm, eps)
        v = blk.attn_v(h).reshape(T, hp.n_head_kv, hp.head_dim)
        swa = self.is_swa(i)
        base = hp.rope_base_swa if swa else hp.rope_base
        sc, freqs = self.rope_scaling(i), getattr(self, "rope_freqs", None)
        q = rope(q, pos, base, hp.n_rot, True, sc, freqs) * np.float32(hp.attn_scale)
        k = rope(k, pos, base, hp.n_rot, True, sc, freqs)
        keys, values = kv.store(i, k, v)
        o = attention(q, keys, values, pos, 1.0, window=hp.sliding_window if swa else 0)
        return blk.attn_output(o)

    def layer(self, i: int, blk: SimpleNamespace, x: np.ndarray, pos: np.ndarray, kv: KVCache) -> np.ndarray:
        eps = self.hp.norm_eps
        h = self.attn(i, blk, rms_norm(x, blk.attn_norm, eps), pos, kv)
        x = x + rms_norm(h, blk.post_attention_norm, eps)
        h = rms_norm(x, blk.ffn_norm, eps)
        h = blk.ffn_down(gelu_tanh(blk.ffn_gate(h)) * blk.ffn_up(h))
        return x + rms_norm(h, blk.post_ffw_norm, eps)

    def rope_scaling(self, i: int) -> RopeScaling:
        """llama.cpp scales the global layers' angles only (rope_freq_scale_train_swa is 1)."""
        sc = self.hp.rope_scaling
        return replace(sc, freq_scale=1.0) if self.is_swa(i) else sc

    def layer_spec(self, i: int, blk: SimpleNamespace) -> dict:
        hp, swa = self.hp, self.is_swa(i)
        return dict(
            **self.rope_scaling(i).spec(),
            rope_neox=1,
            act_gelu=1,
            q_norm=blk.attn_q_norm,
            k_norm=blk.attn_k_norm,
            post_attn_norm=blk.post_attention_norm,
            post_ffn_norm=blk.post_ffw_norm,
            rope_base=hp.rope_base_swa if swa else hp.rope_base,
            window=hp.sliding_window if swa else 0,
            q_scale=hp.attn_scale,
            kq_scale=1.0,
        )

    def logits(self, x: np.ndarray) -> np.ndarray:
        logits = super().logits(x)
        if self.hp.final_softcap:
            c = np.float32(self.hp.final_softcap)
            logits = np.tanh(logits / c) * c
        return logits

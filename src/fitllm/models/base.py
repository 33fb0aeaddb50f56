"""The decoder skeleton every architecture shares: hyper-parameters, loading, forward pass.

Attribute names are GGUF tensor names (blk[i].attn_q, token_embd, output_norm, ...), so loading
is a walk over the file's tensor dict. Each architecture states its block twice: `layer_spec`, the
flags of the compiled block (kernels/csrc/layer.c) that runs it, and `layer`, the same block in
numpy: readable, slow, the reference the compiled path is tested against.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from types import SimpleNamespace
from typing import Any

import numpy as np

from fitllm import kernels
from fitllm.gguf import GGUFError, GGUFFile
from fitllm.kv_cache import KVCache
from fitllm.models.layers import Linear
from fitllm.models.legacy_experts import stack_legacy_experts
from fitllm.models.moe import Experts, moe_ffn
from fitllm.models.rope_scaling import RopeScaling, rope_scaling
from fitllm.models.validate import (
    MAX_CTX,
    MAX_LAYERS,
    block_index,
    check_blocks,
    check_hparams,
    check_math_keys,
    check_tensors,
    float_key,
    int_key,
)


@dataclass
class HParams:
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    n_ctx_train: int
    norm_eps: float
    rope_base: float
    n_rot: int
    rope_scaling: RopeScaling = RopeScaling()
    n_expert: int = 0  # 0: dense FFN
    n_expert_used: int = 0

    @classmethod
    def from_gguf(cls, f: GGUFFile, **extra: Any) -> HParams:
        """The hyper-parameters, each of its GGUF type and in range (validate.py)."""
        a = f.architecture
        n_embd, n_head = int_key(f, f"{a}.embedding_length"), int_key(f, f"{a}.attention.head_count")
        head_dim = int_key(f, f"{a}.attention.key_length", None) or max(n_embd // n_head, 1)
        n_expert = int_key(f, f"{a}.expert_count", 0, lo=0, hi=1 << 16)
        base = dict(
            n_layer=int_key(f, f"{a}.block_count", hi=MAX_LAYERS),
            n_embd=n_embd,
            n_head=n_head,
            n_head_kv=int_key(f, f"{a}.attention.head_count_kv", n_head),
            head_dim=head_dim,
            n_ff=int_key(f, f"{a}.feed_forward_length"),
            n_vocab=f.tensor("token_embd.weight").shape[0],
            n_ctx_train=int_key(f, f"{a}.context_length", hi=MAX_CTX),
            norm_eps=float_key(f, f"{a}.attention.layer_norm_rms_epsilon", hi=1.0),
            rope_base=float_key(f, f"{a}.rope.freq_base", 10000.0, lo=1.0),
            n_rot=int_key(f, f"{a}.rope.dimension_count", head_dim, lo=0),
            n_expert=n_expert,
            n_expert_used=int_key(f, f"{a}.expert_used_count", 0, lo=0, hi=max(n_expert, 1)),
        )
        base["rope_scaling"] = rope_scaling(f, a, base["n_rot"], base["rope_base"], base["n_ctx_train"])
        base.update(extra)
        return cls(**{k.name: base[k.name] for k in fields(cls)})


class DecoderModel:
    hparams_class = HParams
    moe_norm_w = True  # MoE gates renormalised over the chosen experts (Mixtral)
    math_keys: tuple[str, ...] = ()  # the validate.MATH_KEYS this architecture implements

    def __init__(self, f: GGUFFile) -> None:
        f.check_supported()
        stack_legacy_experts(f)
        self.file = f
        self.hp = self.hparams_class.from_gguf(f)
        # everything sized by the hyper-parameters comes after they are checked against the tensors
        check_hparams(f, self.hp)
        check_blocks(f, self.hp.n_layer)
        check_math_keys(f, f.architecture, self.math_keys)
        used = check_tensors(f, self.hp, f.architecture)
        self.blk = [SimpleNamespace() for _ in range(self.hp.n_layer)]
        self._layer_specs: list[kernels.LayerSpec] | None = None
        for name, t in f.tensors.items():
            if name in used:
                self._place(name, t)
        if not hasattr(self, "output"):  # tied embeddings
            self.output = self.token_embd
        for required in ("token_embd", "output_norm"):
            if not hasattr(self, required):
                raise GGUFError(f"{f.path}: required tensor {required}.weight is missing")

    def _place(self, name: str, t) -> None:
        parts = name.split(".")
        owner = self
        idx = block_index(self.file, name)
        if idx is not None:  # check_blocks: 0 <= idx < n_layer
            owner, parts = self.blk[idx], parts[2:]
        attr, kind = parts[0], parts[-1]
        if len(t.shape) == 1:  # norms and biases: small f32 vectors, read (the mmap's pages stay untouched)
            vec = kernels.dequantize(t.ggml_type, self.file.read(t), 1, t.shape[0])[0]
            if kind == "bias":
                lin = getattr(owner, attr, None)
                if lin is None:  # bias met before its weight: keep it until then
                    setattr(owner, attr + "_bias", vec)
                else:
                    lin.bias = vec
            else:
                setattr(owner, attr, vec)
        elif len(t.shape) == 3:  # stacked experts
            setattr(owner, attr, Experts(t))
        else:
            lin = Linear(t, getattr(owner, attr + "_bias", None))
            setattr(owner, attr, lin)

    def new_cache(self, n_ctx: int) -> KVCache:
        return KVCache(self.hp.n_layer, n_ctx, self.hp.n_head_kv, self.hp.head_dim)

    def summary(self) -> str:
        return ""  # nothing beyond what the caller measures

    def close(self) -> None:
        pass  # the file's mapping goes with the last reference

    def embed(self, tokens: np.ndarray) -> np.ndarray:
        return self.token_embd.rows(tokens)

    def layer(self, i: int, blk: SimpleNamespace, x: np.ndarray, pos: np.ndarray, kv: KVCache) -> np.ndarray:
        raise NotImplementedError

    def layer_spec(self, i: int, blk: SimpleNamespace) -> dict[str, Any]:
        """What the compiled block needs beyond the common fields (see `spec`)."""
        raise NotImplementedError

    def spec(self, i: int, blk: SimpleNamespace) -> kernels.LayerSpec:
        """Block i for the compiled path: the common fields, then the architecture's (layer_spec)."""
        hp = self.hp
        common = dict(
            n_embd=hp.n_embd,
            n_head=hp.n_head,
            n_head_kv=hp.n_head_kv,
            head_dim=hp.head_dim,
            n_ff=hp.n_ff,
            n_rot=hp.n_rot,
            eps=hp.norm_eps,
            rope_base=hp.rope_base,
            window=0,
            q_scale=1.0,
            kq_scale=1.0 / np.sqrt(hp.head_dim),
            attn_softcap=0.0,
            rope_freqs=getattr(self, "rope_freqs", None),
            **hp.rope_scaling.spec(),
        )
        for name in ("attn_norm", "ffn_norm"):
            if not hasattr(blk, name):
                raise GGUFError(f"{self.file.path}: required tensor blk.{i}.{name}.weight is missing")
            common[name] = getattr(blk, name)
        mats = {"q": "attn_q", "k": "attn_k", "v": "attn_v", "o": "attn_output"}
        if self.is_moe(blk):
            mats.update(gate="ffn_gate_exps", up="ffn_up_exps", down="ffn_down_exps", gate_inp="ffn_gate_inp")
            exps = getattr(blk, "ffn_gate_exps", None)  # missing: reported by the loop below
            common.update(
                n_expert=hp.n_expert, n_expert_used=hp.n_expert_used, n_ff=exps.n_out if exps else 0
            )
            common["expert_norm_w"] = int(self.moe_norm_w)
        else:
            mats.update(gate="ffn_gate", up="ffn_up", down="ffn_down")
        for key, name in mats.items():
            lin = getattr(blk, name, None)
            if lin is None:
                raise GGUFError(f"{self.file.path}: required tensor blk.{i}.{name}.weight is missing")
            common[key] = (lin.weight, getattr(lin, "bias", None))
        try:
            own = self.layer_spec(i, blk)
        except AttributeError as e:  # a tensor the architecture needs is not in the file
            raise GGUFError(f"{self.file.path}: block {i} lacks a tensor: {e}") from None
        return kernels.layer_spec(**{**common, **own})

    def is_moe(self, blk: SimpleNamespace) -> bool:
        return self.hp.n_expert > 0 and hasattr(blk, "ffn_gate_inp")

    def ffn_moe(self, blk: SimpleNamespace, h: np.ndarray, act) -> np.ndarray:
        """The numpy MoE feed-forward of a block (models/moe.py)."""
        hp = self.hp
        return moe_ffn(
            h,
            blk.ffn_gate_inp,
            blk.ffn_gate_exps,
            blk.ffn_up_exps,
            blk.ffn_down_exps,
            hp.n_expert_used,
            self.moe_norm_w,
            act,
        )

    def layer_specs(self) -> list[kernels.LayerSpec]:
        """Every block for the compiled path, made on first use and then kept: each KV cache's
        layer stack is built on this very list, and the expert cache sets its callback in them."""
        if self._layer_specs is None:
            self._layer_specs = [self.spec(i, blk) for i, blk in enumerate(self.blk)]
        return self._layer_specs

    def check_tokens(self, tokens: np.ndarray, kv: KVCache) -> np.ndarray:
        """The tokens as int32, refused (ValueError) when out of the vocabulary or past kv's room."""
        tokens = np.asarray(tokens, dtype=np.int32).reshape(-1)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.hp.n_vocab):
            raise ValueError(f"token id out of range [0, {self.hp.n_vocab})")
        kv.check_room(tokens.size)
        return tokens

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.output(kernels.rms_norm(x, self.output_norm, self.hp.norm_eps))

    def forward(self, tokens: np.ndarray, kv: KVCache, all_logits: bool = False) -> np.ndarray:
        """Logits (T, vocab) for the new tokens (only the last row unless all_logits)."""
        tokens = self.check_tokens(tokens, kv)
        specs = self.layer_specs()
        x = np.ascontiguousarray(self.embed(tokens), dtype=np.float32)
        if kv.stack is None or kv.stack.specs is not specs:
            kv.stack = kernels.LayerStack(specs, kv.k, kv.v)
        # the last layer's feed-forward only for the rows whose logits are wanted, as llama.cpp
        kv.stack.forward(x, kv.n, tokens.size if all_logits else 1)
        kv.n += tokens.size
        return self.logits(x if all_logits else x[-1:])

    def forward_reference(self, tokens: np.ndarray, kv: KVCache, all_logits: bool = False) -> np.ndarray:
        """forward() in numpy, block by block (`layer`): the readable reference."""
        tokens = self.check_tokens(tokens, kv)
        pos = np.arange(kv.n, kv.n + tokens.size)
        x = self.embed(tokens)
        for i, blk in enumerate(self.blk):
            x = self.layer(i, blk, x, pos, kv)
        kv.n += tokens.size
        return self.logits(x if all_logits else x[-1:])

"""Check a model's hyper-parameters and tensor shapes against each other before anything is sized
by them: a crafted or corrupted file must end in one GGUFError, never in a billion-layer list, a
division by zero or a compiled kernel reading past a weight.

What is checked: numeric keys have the GGUF type they mean (an integer where a count is meant);
block_count is the number of blk.N groups present; head counts divide the widths; every tensor the
architecture knows has the shape the hyper-parameters give it (as llama.cpp's create_tensor does);
the vocabulary, the embedding rows and the output rows agree.
"""

from __future__ import annotations

import math
from typing import Any

from fitllm.gguf import GGUFError, GGUFFile

_REQUIRED = object()
#: bounds far beyond any real model, small enough that nothing sized by them overflows
MAX_DIM = 1 << 24
MAX_CTX = 1 << 24
MAX_LAYERS = 1 << 12


def int_key(f: GGUFFile, key: str, default: Any = _REQUIRED, lo: int = 1, hi: int = MAX_DIM) -> Any:
    """Metadata integer `key` in [lo, hi]; a float, bool, string or array there is an error."""
    v = f.get(key) if default is _REQUIRED else f.get(key, default)
    if v is default and default is not _REQUIRED:
        return v
    if isinstance(v, bool) or not isinstance(v, int):
        raise GGUFError(f"{f.path}: metadata {key} = {_short(v)} is not an integer")
    if not lo <= v <= hi:
        raise GGUFError(f"{f.path}: metadata {key} = {v} is outside [{lo}, {hi}]")
    return v


def float_key(f: GGUFFile, key: str, default: Any = _REQUIRED, lo: float = 0.0, hi: float = math.inf) -> Any:
    """Metadata number `key` (integer or float), finite and in [lo, hi]."""
    v = f.get(key) if default is _REQUIRED else f.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise GGUFError(f"{f.path}: metadata {key} = {_short(v)} is not a number")
    if not (math.isfinite(v) and lo <= v <= hi):
        raise GGUFError(f"{f.path}: metadata {key} = {v} is outside [{lo}, {hi}]")
    return float(v)


def _short(v: Any) -> str:
    s = repr(v) if isinstance(v, (str, int, float)) else f"<{type(v).__name__}>"
    return s if len(s) <= 40 else s[:37] + "..."


def block_index(f: GGUFFile, name: str) -> int | None:
    """N of a tensor named blk.N.*, None for a tensor outside the blocks."""
    parts = name.split(".")
    if parts[0] != "blk":
        return None
    if len(parts) < 3 or not parts[1].isdigit() or len(parts[1]) > 6:
        raise GGUFError(f"{f.path}: tensor {name!r} has no block number (expected blk.N.<name>)")
    return int(parts[1])


def check_blocks(f: GGUFFile, n_layer: int) -> None:
    """block_count must be the number of blk.N groups, numbered 0..n-1."""
    present = {i for i in (block_index(f, n) for n in f.tensors) if i is not None}
    if present != set(range(n_layer)):
        missing = sorted(set(range(n_layer)) - present)
        what = f"blocks {missing[:3]}... are missing" if missing else f"tensors of block {max(present)} exist"
        raise GGUFError(
            f"{f.path}: block_count {n_layer} does not match the file's {len(present)} blk.N groups ({what})"
        )


def check_hparams(f: GGUFFile, hp: Any) -> None:
    """Relations between the hyper-parameters (each already in range, as read by int_key)."""
    bad = []
    if hp.n_head % hp.n_head_kv:
        bad.append(f"head_count {hp.n_head} is not a multiple of head_count_kv {hp.n_head_kv}")
    if hp.head_dim % 2:
        bad.append(f"head dimension {hp.head_dim} is odd (RoPE rotates pairs)")
    if hp.n_rot > hp.head_dim or hp.n_rot % 2:
        bad.append(f"rope.dimension_count {hp.n_rot} is odd or exceeds the head dimension {hp.head_dim}")
    if hp.n_expert and not 1 <= hp.n_expert_used <= hp.n_expert:
        bad.append(f"expert_used_count {hp.n_expert_used} is outside [1, expert_count {hp.n_expert}]")
    if bad:
        raise GGUFError(f"{f.path}: {bad[0]}")


def expected_shapes(hp: Any, arch: str, n_ff_exp: int) -> dict[str, tuple[int, ...]]:
    """name -> numpy shape (rows, cols) of every tensor the architecture reads; blk.N. names hold
    the placeholder N."""
    E, V, hd, F = hp.n_embd, hp.n_vocab, hp.head_dim, hp.n_ff
    nq, nkv = hp.n_head * hd, hp.n_head_kv * hd
    out = {"token_embd.weight": (V, E), "output.weight": (V, E), "output_norm.weight": (E,)}
    out["rope_freqs.weight"] = (hp.n_rot // 2,)  # llama3's frequency factors, optional
    blk = {
        "attn_norm.weight": (E,),
        "ffn_norm.weight": (E,),
        "attn_q.weight": (nq, E),
        "attn_k.weight": (nkv, E),
        "attn_v.weight": (nkv, E),
        "attn_output.weight": (E, nq),
        "attn_q.bias": (nq,),
        "attn_k.bias": (nkv,),
        "attn_v.bias": (nkv,),
        "attn_output.bias": (E,),
        "ffn_gate.bias": (F,),
        "ffn_up.bias": (F,),
        "ffn_down.bias": (E,),
        "ffn_gate.weight": (F, E),
        "ffn_up.weight": (F, E),
        "ffn_down.weight": (E, F),
    }
    if hp.n_expert:
        X = hp.n_expert
        blk.update({
            "ffn_gate_inp.weight": (X, E),
            "ffn_gate_exps.weight": (X, n_ff_exp, E),
            "ffn_up_exps.weight": (X, n_ff_exp, E),
            "ffn_down_exps.weight": (X, E, n_ff_exp),
        })  # fmt: skip
    if arch == "gemma3":
        blk.update({"attn_q_norm.weight": (hd,), "attn_k_norm.weight": (hd,)})
        blk.update({"post_attention_norm.weight": (E,), "post_ffw_norm.weight": (E,)})
    if arch == "grok":
        blk.update({"attn_output_norm.weight": (E,), "layer_output_norm.weight": (E,)})
    out.update({"blk.N." + k: v for k, v in blk.items()})
    return out


def known_name(name: str) -> str:
    """The expected_shapes key of a tensor name (its block number made N)."""
    parts = name.split(".")
    return ".".join(["blk", "N", *parts[2:]]) if parts[0] == "blk" else name


#: metadata keys (after "<arch>.") that change a model's math, what they do, and the values that
#: leave it unchanged; an architecture lists in `math_keys` those it implements
MATH_KEYS: dict[str, tuple[str, tuple[Any, ...]]] = {
    "rope.scaling.yarn_log_multiplier": ("YaRN's log multiplier (DeepSeek)", (0,)),
    "attn_logit_softcapping": ("attention logit softcapping", (0,)),
    "final_logit_softcapping": ("final logit softcapping", (0,)),
    "attention.clamp_kqv": ("clamped q, k, v", (0,)),
    "attention.layernorm_eps": ("LayerNorm (fitllm's blocks use RMSNorm)", ()),
    "attention.scale": ("a set attention scale", (0,)),
    "expert_shared_count": ("shared experts", (0,)),
    "expert_weights_scale": ("scaled expert weights", (0, 1)),
    "embedding_scale": ("scaled embeddings", (1,)),
    "residual_scale": ("scaled residuals", (1,)),
    "logit_scale": ("scaled logits", (1,)),
}


def check_math_keys(f: GGUFFile, arch: str, implemented: tuple[str, ...]) -> None:
    """A key that would change the math in llama.cpp and that this architecture does not implement
    is refused: running without it would give other results than llama.cpp's."""
    for key, (what, neutral) in MATH_KEYS.items():
        v = f.metadata.get(f"{arch}.{key}")
        if v is None or key in implemented or (not isinstance(v, bool) and v in neutral):
            continue
        raise GGUFError(
            f"{f.path}: metadata {arch}.{key} = {_short(v)} asks for {what}, which fitllm does not"
            f" implement for {arch}: its results would differ from llama.cpp's"
        )


def check_tensors(f: GGUFFile, hp: Any, arch: str) -> set[str]:
    """Every tensor's shape against the hyper-parameters; a tensor the architecture does not read is
    refused (rope_freqs and the like change the math). Returns the names the model uses."""
    exps = [t for n, t in f.tensors.items() if n.endswith(".ffn_gate_exps.weight")]
    n_ff_exp = exps[0].shape[1] if exps and len(exps[0].shape) == 3 else hp.n_ff
    shapes = expected_shapes(hp, arch, n_ff_exp)
    used = set()
    for name, t in f.tensors.items():
        want = shapes.get(known_name(name))
        if want is None:
            raise GGUFError(
                f"{f.path}: tensor {name!r} is not used by fitllm's {arch}: running without it would give"
                " other results than llama.cpp's"
            )
        if tuple(t.shape) != want:
            raise GGUFError(
                f"{f.path}: tensor {name!r} has shape {_ggml(t.shape)}, expected {_ggml(want)}"
                " from the model's hyper-parameters"
            )
        used.add(name)
    tokens = f.get("tokenizer.ggml.tokens", None)
    if tokens is not None and len(tokens) != hp.n_vocab:
        raise GGUFError(
            f"{f.path}: the vocabulary has {len(tokens)} tokens but token_embd.weight has {hp.n_vocab} rows"
        )
    return used


def _ggml(shape: tuple[int, ...]) -> str:
    """A shape as GGUF and llama.cpp write it: innermost dimension first."""
    return "[" + ", ".join(str(d) for d in reversed(shape)) + "]"

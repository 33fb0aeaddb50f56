"""RoPE scaling from GGUF metadata, as llama.cpp derives it (llama-model.cpp, llama-context.cpp):
linear (angles times 1/factor), YaRN (a ramp between scaled and unscaled angles over the dims
between two correction dims, with a magnitude correction), and llama3's per-pair frequency factors
(the rope_freqs tensor, applied wherever it is present). The compiled block applies these fields
as ggml's rope_yarn does; rope() in layers.py is the numpy reference."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fitllm.gguf import GGUFError, GGUFFile
from fitllm.models.validate import float_key

#: ggml's defaults (llama-hparams.h); llama.cpp reads no key for them
YARN_BETA_FAST, YARN_BETA_SLOW = 32.0, 1.0
TYPES = ("none", "linear", "yarn")


@dataclass(frozen=True)
class RopeScaling:
    freq_scale: float = 1.0
    ext_factor: float = 0.0
    attn_factor: float = 1.0
    corr_lo: float = 0.0
    corr_hi: float = 0.0

    def spec(self) -> dict[str, float]:
        """The compiled block's fields (kernels.layer_spec)."""
        return {
            f"rope_{k}": getattr(self, k)
            for k in ("freq_scale", "ext_factor", "attn_factor", "corr_lo", "corr_hi")
        }


def _corr_dim(n_dims: int, n_ctx_orig: int, n_rot: float, base: float) -> float:
    f = np.float32
    return float(f(n_dims) * np.log(f(n_ctx_orig) / (f(n_rot) * 2 * f(math.pi))) / (2 * np.log(f(base))))


def corr_dims(n_dims: int, n_ctx_orig: int, base: float) -> tuple[float, float]:
    """ggml_rope_yarn_corr_dims: the first and last dims YaRN's ramp runs over."""
    start = math.floor(_corr_dim(n_dims, n_ctx_orig, YARN_BETA_FAST, base))
    end = math.ceil(_corr_dim(n_dims, n_ctx_orig, YARN_BETA_SLOW, base))
    return float(max(0, start)), float(min(n_dims - 1, end))


def rope_scaling(f: GGUFFile, arch: str, n_rot: int, base: float, n_ctx_train: int) -> RopeScaling:
    """The file's RoPE scaling; a type llama.cpp knows and fitllm does not is a GGUFError."""
    kind = f.get(f"{arch}.rope.scaling.type", "linear")  # llama.cpp's default when a factor is given
    if kind not in TYPES:
        raise GGUFError(
            f"{f.path}: metadata {arch}.rope.scaling.type = {kind!r} is not implemented"
            f" (known: {', '.join(TYPES)})"
        )
    factor = float_key(f, f"{arch}.rope.scaling.factor", 0.0) or float_key(
        f, f"{arch}.rope.scale_linear", 0.0
    )
    f32 = np.float32
    freq_scale = 1.0 if kind == "none" or factor == 0.0 else float(f32(1.0) / f32(factor))
    attn = f32(float_key(f, f"{arch}.rope.scaling.attn_factor", 1.0) or 1.0)
    if kind != "yarn":
        return RopeScaling(freq_scale, 0.0, float(attn))
    s = f32(1.0) / f32(freq_scale)  # llama_context: get_mscale(s, 1), then cancelled against ggml's own
    mscale = f32(1.0) if s <= 1 else f32(0.1) * np.log(s) + f32(1.0)
    yarn_attn = mscale * (f32(1.0) / (f32(1.0) + f32(0.1) * np.log(s))) * attn
    orig = int(f.get(f"{arch}.rope.scaling.original_context_length", n_ctx_train))
    return RopeScaling(freq_scale, 1.0, float(yarn_attn), *corr_dims(n_rot, orig, base))

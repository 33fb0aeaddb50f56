"""Which type each tensor of a model gets for a llama.cpp file type (Q4_K_M, Q5_K_S, Q8_0, ...):
llama.cpp's rules (src/llama-quant.cpp: llama_tensor_get_type) for the types fitllm can write.

The K mixes give more bits where quantization hurts most: the output matrix (Q6_K), attn_v and
ffn_down in the first and last eighth of the layers and every third one between (Q6_K for _M),
the first attn_v / ffn_down layers (Q5_K for Q4_K_S). Rows that are not whole 256-blocks fall
back to a 32-block type (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0), then F16."""

from __future__ import annotations

import re

from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q

# name -> (the type of most tensors, general.file_type = llama_ftype)
FTYPES = {
    "F32": (Q.F32, 0), "F16": (Q.F16, 1), "BF16": (Q.BF16, 32),
    "Q8_0": (Q.Q8_0, 7), "Q4_0": (Q.Q4_0, 2), "Q4_1": (Q.Q4_1, 3), "Q5_0": (Q.Q5_0, 8), "Q5_1": (Q.Q5_1, 9),
    "Q4_K_S": (Q.Q4_K, 14), "Q4_K_M": (Q.Q4_K, 15), "Q5_K_S": (Q.Q5_K, 16), "Q5_K_M": (Q.Q5_K, 17),
    "Q6_K": (Q.Q6_K, 18), "Q3_K_M": (Q.Q3_K, 12), "Q2_K": (Q.Q2_K, 10),
}  # fmt: skip
ALIASES = {"Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "Q3_K": "Q3_K_M"}
FALLBACK = {Q.Q2_K: Q.Q4_0, Q.Q3_K: Q.Q4_0, Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0}
NOT_YET = ("Q3_K_S", "Q3_K_L", "Q2_K_S")
FLOAT = (Q.F32, Q.F16, Q.BF16)


def ftype(name: str) -> str:
    n = ALIASES.get(name.upper(), name.upper())
    if n in NOT_YET:
        raise ValueError(f"{name}: fitllm cannot write this mix yet (choose from {', '.join(FTYPES)})")
    if n not in FTYPES:
        raise ValueError(f"unknown type {name!r} (choose from {', '.join(FTYPES)})")
    return n


def quantizable(name: str, shape: tuple[int, ...]) -> bool:
    """llama.cpp's tensor_allows_quantization: matrices (and stacked experts), not norms or routers."""
    return (
        len(shape) >= 2
        and name.endswith("weight")
        and "_norm.weight" not in name
        and "ffn_gate_inp" not in name
    )


def fit_rows(t: Q, cols: int) -> Q:
    """t, or its fallback (then F16) when rows of `cols` are not whole blocks of it."""
    if cols % GGML_QUANT_SIZES[t][0]:
        t = FALLBACK.get(t, t)
        if cols % GGML_QUANT_SIZES[t][0]:
            t = Q.F16
    return t


def _more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


class Recipe:
    """Types for the tensors of one model."""

    def __init__(self, name: str, names: list[str], n_layer: int, n_expert: int, n_gqa: int = 1) -> None:
        self.ftype = ftype(name)
        self.base, self.file_type = FTYPES[self.ftype]
        self.n_layer, self.n_expert, self.n_gqa = n_layer, n_expert, n_gqa
        self.tied = "output.weight" not in names
        # llama.cpp counts attn_v tensors in layer order (not the file's, often blk.0, blk.1, blk.10...)
        attn_v = sorted((n for n in names if ".attn_v." in n), key=lambda n: int(n.split(".")[1]))
        self.attn_v_index = {n: i for i, n in enumerate(attn_v)}

    def wanted(self, name: str, shape: tuple[int, ...]) -> Q | None:
        """The type the mix gives the tensor, before its rows are checked; None: kept as it is."""
        if not quantizable(name, shape):
            return None
        return self.base if self.base in FLOAT else self._mix(name, shape, self.base)

    def type_of(self, name: str, shape: tuple[int, ...]) -> Q | None:
        """The tensor's new type; None: kept as it is (norms, routers, ...)."""
        t = self.wanted(name, shape)
        return None if t is None else fit_rows(t, shape[-1])

    def _mix(self, name: str, shape: tuple[int, ...], t: Q) -> Q:
        f, m = self.ftype, re.match(r"blk\.(\d+)\.", name)
        layer = int(m.group(1)) if m else -1
        if name == "output.weight" or (self.tied and name == "token_embd.weight"):
            if shape[-1] % GGML_QUANT_SIZES[t][0]:
                return Q.Q8_0
            return t if t == Q.Q8_0 else Q.Q6_K
        if ".attn_v." in name:
            return self._attn_v(self.attn_v_index[name], t)
        if ".attn_k." in name and self.n_expert == 8:
            return Q.Q8_0
        if ".ffn_down" in name:
            return self._ffn_down(layer, t)
        if ".attn_output." in name:
            if self.n_expert == 8:
                return Q.Q5_K if f in ("Q2_K", "Q3_K_M", "Q4_K_S", "Q4_K_M") else t
            return {"Q2_K": Q.Q3_K, "Q3_K_M": Q.Q4_K}.get(f, t)
        if ".attn_qkv." in name:
            return {"Q3_K_M": Q.Q4_K, "Q4_K_M": Q.Q5_K, "Q5_K_M": Q.Q6_K}.get(f, t)
        return t

    def _attn_v(self, i: int, t: Q) -> Q:
        f = self.ftype
        if f == "Q2_K":
            t = Q.Q4_K if self.n_gqa >= 4 else Q.Q3_K
        elif f == "Q3_K_M":
            t = Q.Q5_K if i < 2 else Q.Q4_K
        elif f in ("Q4_K_M", "Q5_K_M") and _more_bits(i, len(self.attn_v_index)):
            t = Q.Q6_K
        elif f == "Q4_K_S" and i < 4:
            t = Q.Q5_K
        return Q.Q8_0 if self.n_expert == 8 else t

    def _ffn_down(self, layer: int, t: Q) -> Q:
        f, n = self.ftype, self.n_layer
        if f == "Q2_K":
            return Q.Q3_K
        if f == "Q3_K_M":
            return Q.Q5_K if layer < n // 16 else Q.Q4_K
        if f in ("Q4_K_M", "Q5_K_M") and _more_bits(layer, n):
            return Q.Q6_K
        if f == "Q4_K_S" and layer < n // 8:
            return Q.Q5_K
        return t


# fitllm convert's --type for Grok-1's release checkpoint (and plan's --quant): one type for the
# matrices, with these exceptions
OUT_TYPES = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q5_0": Q.Q5_0, "q5_1": Q.Q5_1,
             "q4_0": Q.Q4_0, "q4_1": Q.Q4_1, "q4_k": Q.Q4_K}  # fmt: skip
_LOW_BIT = {Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q4_K}


def pick_type(kind: str, n_in: int, out: Q) -> Q:
    """The GGUF type of a tensor when a model is written at `out`: norms and the router stay f32
    (as llama.cpp keeps them); the embedding, which is also the output matrix when tied, gets 8
    bits when the rest gets fewer; rows that are not whole blocks of the chosen type fall back to
    Q8_0, then F16. kind: norm, router, embedding or weight."""
    if kind in ("norm", "router"):
        return Q.F32
    t = Q.Q8_0 if kind == "embedding" and out in _LOW_BIT else out
    for cand in (t, Q.Q8_0, Q.F16):
        if n_in % GGML_QUANT_SIZES[cand][0] == 0:
            return cand
    return Q.F16

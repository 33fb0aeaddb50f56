"""Mixture of experts, shared by every MoE architecture (Mixtral-style llama, Grok).

GGUF stores each layer's experts stacked: ffn_{gate,up}_exps (n_expert, n_ff, n_embd) and
ffn_down_exps (n_expert, n_embd, n_ff); the router ffn_gate_inp is (n_expert, n_embd). This numpy
version is the reference for the compiled one (kernels/csrc/layer.c: route, moe)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from fitllm import kernels
from fitllm.gguf import Tensor


class Experts:
    """A stacked expert tensor; experts[e](x) = x W_e^T, read from rows of the raw GGUF blocks."""

    def __init__(self, weight: Tensor) -> None:
        self.weight = weight
        self.n_expert, self.n_out, self.n_in = weight.shape
        self.expert_bytes = weight.data.nbytes // self.n_expert

    def __getitem__(self, e: int) -> Callable[[np.ndarray], np.ndarray]:
        rows = self.weight.data.reshape(-1)[e * self.expert_bytes : (e + 1) * self.expert_bytes]
        return lambda x: kernels.matmul(self.weight.ggml_type, rows, self.n_out, self.n_in, x)


def route(logits: np.ndarray, k: int, norm_w: bool) -> tuple[np.ndarray, np.ndarray]:
    """Softmax over all experts, then the top k per token: (ids (T, k), gates (T, k)).
    norm_w rescales the k gates to sum 1 (Mixtral, llama.cpp's grok); Grok-1 itself does not."""
    p = np.exp(logits - logits.max(axis=-1, keepdims=True))
    p = p / p.sum(axis=-1, keepdims=True, dtype=np.float64).astype(np.float32)
    ids = np.argsort(-p, axis=-1, kind="stable")[:, :k]
    gates = np.take_along_axis(p, ids, axis=-1)
    if norm_w:
        gates = gates / np.maximum(gates.sum(axis=-1, keepdims=True), np.float32(6.103515625e-5))
    return ids, gates


def moe_ffn(
    h: np.ndarray,
    router: Callable[[np.ndarray], np.ndarray],
    gate: Experts,
    up: Experts,
    down: Experts,
    k: int,
    norm_w: bool,
    act: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """sum over the k chosen experts e of gate_e * down_e(act(gate_e(h)) * up_e(h)), per token."""
    ids, gates = route(router(h), k, norm_w)
    out = np.zeros_like(h)
    for e in np.unique(ids):
        tok, slot = np.nonzero(ids == e)  # each expert runs once, on all the tokens routed to it
        x = h[tok]
        y = down[e](act(gate[e](x)) * up[e](x))
        out[tok] += y * gates[tok, slot][:, None]
    return out

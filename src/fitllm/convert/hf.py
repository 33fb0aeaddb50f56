"""Hugging Face checkpoint (config.json + safetensors or pytorch_model*.bin) -> GGUF, streaming.

Llama/Mistral/Mixtral, Qwen2, Gemma3 and the HF layout of Grok-1 (keyfan/grok-1-hf), written as
llama.cpp's convert_hf_to_gguf.py writes them: its tensor names (gguf-py's TensorNameMap) and
metadata keys, q/k rows permuted for llama's interleaved RoPE, Gemma's norms stored as 1 + w,
per-expert matrices stacked into one tensor, tokenizer and chat template embedded. Tensors are
read from the mmapped files a slice of rows at a time and encoded on worker threads, so memory
stays near one tensor; the output is OUT.part until complete."""

from __future__ import annotations

import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q
from tqdm import tqdm

from fitllm.convert.grok1_checkpoint import CheckpointError
from fitllm.convert.hf_files import HFCheckpoint, HFTensor
from fitllm.convert.names import (
    GGUF_RENAMES,
    HF_ARCHITECTURES,
    HF_EXPERT,
    HF_HPARAMS,
    HF_PREFIXES,
    HF_SKIP,
    HF_SKIP_SUFFIXES,
)
from fitllm.convert.vocab import chat_template, hf_vocab, write_vocab
from fitllm.gguf.writer import GGUFStreamWriter
from fitllm.quant.gguf_quantize import encode_rows
from fitllm.quant.recipe import Recipe

log = logging.getLogger(__name__)


def is_hf_folder(path: str | Path, xai_config: bool = False) -> bool:
    """A folder with config.json, unless it is xAI's release layout (ckpt-0/ or its tensor files)
    and either its config is given apart (xai_config: --config) or config.json is run.py's (no
    `architectures`, which every Hugging Face config names)."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        return False
    if not ((folder / "ckpt-0").is_dir() or any(folder.glob("tensor*_000"))):
        return True
    cfg = _json_object(folder / "config.json")
    return not xai_config and (cfg is None or "architectures" in cfg)


def _json_object(path: Path) -> dict | None:
    """The JSON object in path; None when it is none (load_config then says why)."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def load_config(folder: Path) -> dict:
    """config.json (a VLM's text_config folded in), with tokenizer_config.json under _tokenizer_config."""
    cfg = json.loads((folder / "config.json").read_text())
    cfg = {**cfg, **cfg.get("text_config", {}), "architectures": cfg.get("architectures", [])}
    tc = folder / "tokenizer_config.json"
    cfg["_tokenizer_config"] = json.loads(tc.read_text()) if tc.is_file() else {}
    return cfg


def gguf_arch(cfg: dict) -> str:
    for a in cfg["architectures"]:
        if a in HF_ARCHITECTURES:
            return HF_ARCHITECTURES[a]
    raise CheckpointError(
        f"architecture {cfg['architectures']} is not supported (supported: {', '.join(HF_ARCHITECTURES)})"
    )


def _rope(cfg: dict, layer_type: str = "full_attention") -> float | None:
    """rope_theta: top level (transformers 4), rope_parameters (5), per layer type (Gemma3 in 5)."""
    rp = cfg.get("rope_parameters") or {}
    rp = rp.get(layer_type, rp) if isinstance(rp.get(layer_type), dict) else rp
    kind = rp.get("rope_type", "default")
    scaling = cfg.get("rope_scaling") or {}
    if kind != "default" or scaling.get("rope_type", scaling.get("type", "default")) != "default":
        raise CheckpointError(f"RoPE scaling {kind if kind != 'default' else scaling} is not supported")
    return rp.get("rope_theta", cfg.get("rope_theta"))


def head_dim(cfg: dict) -> int:
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def n_kv_heads(cfg: dict) -> int:
    return cfg.get("num_key_value_heads") or cfg["num_attention_heads"]


def n_experts(cfg: dict) -> int:
    return cfg.get("num_local_experts") or cfg.get("num_experts") or 0


def _swa_period(cfg: dict) -> int:
    """Gemma3's sliding-window period: every p-th layer attends globally (llama.cpp assumes 6)."""
    types = cfg.get("layer_types")
    if not types:
        return cfg.get("sliding_window_pattern", cfg.get("_sliding_window_pattern", 6))
    p = types.index("full_attention") + 1 if "full_attention" in types else len(types) + 1
    if any((t == "full_attention") != (i % p == p - 1) for i, t in enumerate(types)):
        raise CheckpointError(f"layer_types {types} are not a periodic sliding-window pattern")
    return p


def add_hparams(m: gguf.GGUFWriter, arch: str, cfg: dict) -> None:
    for key, fields in HF_HPARAMS:
        v = next((cfg[f] for f in fields if cfg.get(f) is not None), None)
        if v is not None:
            (m.add_float32 if isinstance(v, float) else m.add_uint32)(f"{arch}.{key}", v)
    m.add_rope_freq_base(float(_rope(cfg) or 10000.0))
    hd = head_dim(cfg)
    m.add_key_length(hd)
    m.add_value_length(hd)
    if arch in ("llama", "grok"):
        m.add_rope_dimension_count(hd)
    if arch == "llama":
        m.add_vocab_size(cfg["vocab_size"])
    if arch == "gemma3":
        m.add_sliding_window(cfg["sliding_window"])
        if (p := _swa_period(cfg)) != 6:
            m.add_uint32(f"{arch}.attention.sliding_window_pattern", p)
        swa = cfg.get("rope_local_base_freq") or _rope(cfg, "sliding_attention") or 10000.0
        m.add_float32(f"{arch}.rope.freq_base_swa", float(swa))
        if cfg.get("final_logit_softcapping"):
            m.add_final_logit_softcapping(cfg["final_logit_softcapping"])
    if arch == "grok":  # Grok's own names (xai-org/grok-1 model.py)
        m.add_expert_feed_forward_length(cfg.get("moe_intermediate_size") or cfg["intermediate_size"])
        m.add_embedding_scale(cfg["embedding_multiplier_scale"])
        m.add_attn_output_scale(cfg.get("attn_output_multiplier", hd**-0.5))
        m.add_logit_scale(cfg["output_multiplier_scale"])
        m.add_attn_logit_softcapping(cfg.get("max_attn_value", cfg.get("attn_logit_softcapping", 30.0)))


@dataclass
class OutTensor:
    name: str  # GGUF name
    sources: list[HFTensor]  # one, or one per expert, stacked in order
    rows: np.ndarray | None = None  # row order (llama q/k); None: as stored
    add_one: bool = False  # Gemma stores its norm weights w for (1 + w)

    @property
    def shape(self) -> tuple[int, ...]:
        s = self.sources[0].shape
        return (len(self.sources), *s) if len(self.sources) > 1 else s

    def read(self, src: HFTensor, r0: int, n: int) -> np.ndarray:
        x = src.rows(slice(r0, r0 + n) if self.rows is None else self.rows[r0 : r0 + n])
        return x + np.float32(1) if self.add_one else x


def _qk_rows(n_rows: int, n_head: int) -> np.ndarray:
    """llama.cpp's permute: each head's rows (two halves, rotate_half's layout) interleaved, for
    llama's pairwise RoPE."""
    return np.arange(n_rows).reshape(n_head, 2, n_rows // n_head // 2).swapaxes(1, 2).reshape(-1)


def _hf_name(name: str) -> str | None:
    if name.startswith(HF_SKIP) or name.endswith(HF_SKIP_SUFFIXES):
        return None
    for old, new in HF_PREFIXES:
        if name.startswith(old):
            return new + name[len(old) :]
    return name


def plan_tensors(tensors: dict[str, HFTensor], arch: str, cfg: dict) -> list[OutTensor]:
    """The output tensors, in the checkpoint's order, each with where its rows come from."""
    n_layer = cfg["num_hidden_layers"]
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], n_layer)
    renames = GGUF_RENAMES.get(arch, {})
    tied = cfg.get("tie_word_embeddings", arch in ("gemma3", "grok"))
    heads = {"attn_q": cfg["num_attention_heads"], "attn_k": n_kv_heads(cfg)}  # llama's permuted rows
    out: dict[str, OutTensor] = {}
    experts: dict[str, dict[int, HFTensor]] = {}
    unknown = []
    for raw_name, t in tensors.items():
        name = _hf_name(raw_name)
        if name is None or (tied and name == "lm_head.weight"):
            continue
        m = re.match(HF_EXPERT, name)
        key = f"{m['base']}.{m['w']}.weight" if m else name
        gname = tmap.get_name(key, try_suffixes=(".weight", ".bias"))
        if gname is None:
            unknown.append(raw_name)
            continue
        for old, new in renames.items():
            gname = gname.replace(f".{old}.", f".{new}.")
        if m:
            experts.setdefault(gname, {})[int(m["e"])] = t
            out.setdefault(gname, OutTensor(gname, []))
            continue
        o = out[gname] = OutTensor(gname, [t], add_one=arch == "gemma3" and gname.endswith("norm.weight"))
        kind = gname.split(".")[-2]
        if arch == "llama" and kind in heads:
            o.rows = _qk_rows(t.shape[0], heads[kind])
    if unknown:
        raise CheckpointError(f"{len(unknown)} tensors have no GGUF name, e.g. {unknown[:3]}")
    for gname, parts in experts.items():
        n = n_experts(cfg)
        if sorted(parts) != list(range(n)) or len({p.shape for p in parts.values()}) != 1:
            raise CheckpointError(f"{gname}: experts {sorted(parts)} of {n}, shapes differ or some missing")
        out[gname].sources = [parts[e] for e in range(n)]
    if not tied and "output.weight" not in out:
        raise CheckpointError("no lm_head.weight, and tie_word_embeddings is false")
    return list(out.values())


def _write(w: GGUFStreamWriter, o: OutTensor, t: Q, threads: int, pool: ThreadPoolExecutor) -> None:
    for src in o.sources:  # stacked experts: one at a time
        if len(src.shape) == 1:
            w.write(o.name, o.read(src, 0, src.shape[0]))
            continue
        rows, cols = src.shape[0], int(np.prod(src.shape[1:]))
        read = lambda r0, n, src=src: o.read(src, r0, n).reshape(n, cols)  # noqa: E731
        for part in encode_rows(read, rows, cols, t, threads, pool):
            w.write(o.name, part)


def convert_hf(
    folder: str | Path, out: str | Path, out_type: str = "f16", threads: int = 2, progress: bool = True
) -> Path:
    """Convert the checkpoint in `folder` to a GGUF at `out`, tensors at out_type (F32, F16, BF16,
    Q8_0, ... or a llama.cpp mix such as Q4_K_M: recipe.FTYPES)."""
    folder, out = Path(folder), Path(out)
    cfg = load_config(folder)
    arch = gguf_arch(cfg)
    ckpt = HFCheckpoint(folder)
    plan = plan_tensors(ckpt.tensors, arch, cfg)
    n_gqa = cfg["num_attention_heads"] // n_kv_heads(cfg)
    recipe = Recipe(out_type, [o.name for o in plan], cfg["num_hidden_layers"], n_experts(cfg), n_gqa)
    types = {o.name: recipe.type_of(o.name, o.shape) or Q.F32 for o in plan}
    vocab, add_bos, add_eos = hf_vocab(folder, cfg)
    vocab.pad_to(cfg["vocab_size"])
    total = sum(s.data.nbytes for o in plan for s in o.sources)
    with GGUFStreamWriter(out, arch) as w, ThreadPoolExecutor(threads) as pool:
        w.meta.add_type("model")
        w.meta.add_name(cfg.get("_name_or_path") or folder.name)
        add_hparams(w.meta, arch, cfg)
        w.meta.add_file_type(recipe.file_type)
        w.meta.add_quantization_version(gguf.GGML_QUANT_VERSION)
        write_vocab(w.meta, vocab, add_bos, add_eos)
        if template := chat_template(folder, cfg):
            w.meta.add_chat_template(template)
        for o in plan:
            w.declare(o.name, o.shape, types[o.name])
        w.begin()
        with tqdm(
            total=total, unit="B", unit_scale=True, desc=f"convert {out.name}", disable=not progress
        ) as bar:
            for o in plan:
                _write(w, o, types[o.name], threads, pool)
                ckpt.release()
                bar.update(sum(s.data.nbytes for s in o.sources))
    log.info("wrote %s (%s, %d tensors, %s)", out, arch, len(plan), recipe.ftype)
    return out

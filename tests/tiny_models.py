"""Random baby GGUF models per architecture, written with gguf-py's writer (for formats and
architectures nobody ships small)."""

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUFReader, GGUFValueType, GGUFWriter, quants
from gguf import GGMLQuantizationType as T

VOCAB = [f"<t{i}>" for i in range(3)] + [chr(c) for c in range(ord("a"), ord("a") + 61)]


def write_tiny(
    path,
    arch: str,
    n_layer=2,
    d=64,
    n_head=4,
    n_kv=2,
    ff=96,
    qtype=T.Q8_0,
    seed=0,
    n_expert=0,
    n_used=2,
    bos=True,
    **extra,
) -> str:
    """A random model; n_expert > 0 gives every layer a router and stacked experts (grok: always)."""
    if arch == "grok" and not n_expert:
        n_expert = 4
    rng = np.random.default_rng(seed)
    hd = d // n_head
    w = GGUFWriter(str(path), arch)
    w.add_block_count(n_layer)
    w.add_context_length(256)
    w.add_embedding_length(d)
    w.add_feed_forward_length(ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    if arch == "gemma3":
        w.add_sliding_window(4)
        w.add_key_length(hd)
        w.add_value_length(hd)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(VOCAB)
    w.add_token_types([3, 3, 3] + [1] * (len(VOCAB) - 3))
    w.add_token_merges([])
    if bos:  # bos=False: a vocabulary without one (an empty prompt has nothing to start from)
        w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    if n_expert:
        w.add_expert_count(n_expert)
        w.add_expert_used_count(n_used)
    for k, v in extra.items():
        getattr(w, f"add_{k}")(v)

    def mat(name, rows, cols, t=qtype, n=0):
        x = (rng.standard_normal((n, rows, cols) if n else (rows, cols)) / np.sqrt(cols)).astype(np.float32)
        w.add_tensor(name, quants.quantize(x, t) if t != T.F32 else x, raw_dtype=t)

    def vec(name, n, mean=1.0):
        w.add_tensor(name, (mean + 0.1 * rng.standard_normal(n)).astype(np.float32))

    mat("token_embd.weight", len(VOCAB), d)
    vec("output_norm.weight", d)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", d)
        vec(b + "ffn_norm.weight", d)
        mat(b + "attn_q.weight", n_head * hd, d)
        mat(b + "attn_k.weight", n_kv * hd, d)
        mat(b + "attn_v.weight", n_kv * hd, d)
        mat(b + "attn_output.weight", d, n_head * hd)
        if n_expert:
            mat(b + "ffn_gate_inp.weight", n_expert, d, T.F32)
            mat(b + "ffn_gate_exps.weight", ff, d, n=n_expert)
            mat(b + "ffn_up_exps.weight", ff, d, n=n_expert)
            mat(b + "ffn_down_exps.weight", d, ff, n=n_expert)
        else:
            mat(b + "ffn_gate.weight", ff, d)
            mat(b + "ffn_up.weight", ff, d)
            mat(b + "ffn_down.weight", d, ff)
        if arch == "grok":
            vec(b + "attn_output_norm.weight", d)
            vec(b + "layer_output_norm.weight", d)
        if arch == "qwen2":
            for n, k in (("attn_q", n_head * hd), ("attn_k", n_kv * hd), ("attn_v", n_kv * hd)):
                vec(b + n + ".bias", k, mean=0.0)
        if arch == "gemma3":
            for n in ("attn_q_norm", "attn_k_norm"):
                vec(b + n + ".weight", hd)
            for n in ("post_attention_norm", "post_ffw_norm"):
                vec(b + n + ".weight", d)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def upcycle(src, dst, n_expert=4, n_used=2, noise=0.0, seed=0, n_layer=None) -> str:
    """A Mixtral-layout MoE from a dense llama GGUF: every layer's MLP copied into n_expert experts
    (stacked ffn_*_exps) with a small random router. noise > 0 scales each block of each expert's
    gate projection by its own (1 + noise * N(0, 1)) (Q4_0/Q4_1/Q8_0: the fp16 d, and m), so that
    routing matters. n_layer: keep only the first n_layer blocks (default: all)."""
    rng = np.random.default_rng(seed)
    r = GGUFReader(str(src))
    arch = r.fields["general.architecture"].contents()
    w = GGUFWriter(str(dst), arch)
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        if n_layer is not None and f.name == f"{arch}.block_count":
            w.add_block_count(n_layer)
            continue
        sub = f.types[-1] if f.types[0] == GGUFValueType.ARRAY else None
        w.add_key_value(f.name, f.contents(), f.types[0], sub_type=sub)
    w.add_expert_count(n_expert)
    w.add_expert_used_count(n_used)
    for t in r.tensors:
        parts = t.name.split(".")
        if n_layer is not None and parts[0] == "blk" and int(parts[1]) >= n_layer:
            continue
        if len(parts) == 4 and parts[2] in ("ffn_gate", "ffn_up", "ffn_down"):
            experts = np.stack([np.array(t.data) for _ in range(n_expert)])
            if noise and parts[2] == "ffn_gate":
                bsize = GGML_QUANT_SIZES[t.tensor_type][1]
                blocks = experts.reshape(n_expert, -1, bsize)
                n_half = 2 if t.tensor_type == T.Q4_1 else 1  # fp16 fields at the block start
                half = blocks[:, :, : 2 * n_half].copy().view(np.float16).astype(np.float32)
                half *= 1 + noise * rng.standard_normal(half.shape[:2] + (1,)).astype(np.float32)
                blocks[:, :, : 2 * n_half] = half.astype(np.float16).view(np.uint8)
            w.add_tensor(f"blk.{parts[1]}.{parts[2]}_exps.weight", experts, raw_dtype=t.tensor_type)
            if parts[2] == "ffn_gate":
                d = int(t.shape[0])
                router = (0.02 * rng.standard_normal((n_expert, d))).astype(np.float32)
                w.add_tensor(f"blk.{parts[1]}.ffn_gate_inp.weight", router)
        else:
            w.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(dst)


def rewrite(src, dst, kv=None, tensors=None) -> str:
    """A copy of a GGUF file with metadata and tensors replaced: kv maps a key to (value, GGUFValueType)
    or None (dropped); tensors maps a name to an array (float32, or raw blocks with its type as
    (array, type)) or None (dropped); a new name is added. Laid out by gguf-py, so only what was
    asked for changes."""
    kv, tensors = kv or {}, tensors or {}
    r = GGUFReader(str(src))
    w = GGUFWriter(str(dst), r.fields["general.architecture"].contents())
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture" or f.name in kv:
            continue
        sub = f.types[-1] if f.types[0] == GGUFValueType.ARRAY else None
        w.add_key_value(f.name, f.contents(), f.types[0], sub_type=sub)
    for name, new in kv.items():
        if new is not None:
            value, vtype = new
            sub = GGUFValueType.get_type(value[0]) if vtype == GGUFValueType.ARRAY else None
            w.add_key_value(name, value, vtype, sub_type=sub)
    for t in r.tensors:
        new = tensors.get(t.name, t)
        if new is t:
            w.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
        elif isinstance(new, tuple):
            w.add_tensor(t.name, new[0], raw_dtype=new[1])
        elif new is not None:
            w.add_tensor(t.name, new)
    for name in [n for n in tensors if n not in {t.name for t in r.tensors}]:  # added, in order
        new = tensors[name]
        w.add_tensor(name, *new[:1], raw_dtype=new[1]) if isinstance(new, tuple) else w.add_tensor(name, new)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(dst)

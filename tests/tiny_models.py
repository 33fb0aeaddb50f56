"""Random baby GGUF models per architecture, written with gguf-py's writer (for formats and
architectures nobody ships small)."""

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFWriter, quants

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

"""Command line: thin argparse subcommands that call the library."""

from __future__ import annotations

import argparse
import logging
import sys

from fitllm.convert.grok1_checkpoint import CheckpointError
from fitllm.gguf import GGUFError
from fitllm.kv_cache import ContextFullError


def _run(a: argparse.Namespace) -> None:
    from fitllm import kernels
    from fitllm.api import Llama
    from fitllm.default_model import default_model_path
    from fitllm.runner import run

    if a.threads:
        kernels.set_threads(a.threads)
    llm = Llama(
        a.model or str(default_model_path()),
        n_ctx=a.ctx_size,
        n_batch=a.batch_size,
        seed=a.seed if a.seed >= 0 else 0xFFFFFFFF,
        verbose=False,
        mmap_stream=a.mmap_stream,
        split_mode=a.split_mode,
        memory_budget=a.memory_budget,
        expert_cache=a.expert_cache,
        tensor_split=[float(x) for x in a.split.split(",")] if a.split else None,
    )
    sampling = dict(
        temperature=a.temp,
        top_k=a.top_k,
        top_p=a.top_p,
        min_p=a.min_p,
        repeat_penalty=a.repeat_penalty,
        seed=a.seed if a.seed >= 0 else None,
    )
    prompt = a.prompt if a.prompt is not None else ("" if a.interactive else "Once upon a time")
    run(
        llm,
        prompt,
        a.n_predict,
        sampling,
        color=a.color,
        interactive=a.interactive or bool(a.reverse_prompt),
        reverse_prompts=a.reverse_prompt,
    )
    llm.close()


def _load(a: argparse.Namespace):
    from fitllm import kernels
    from fitllm.api import Llama
    from fitllm.default_model import default_model_path

    if a.threads:
        kernels.set_threads(a.threads)
    return Llama(a.model or str(default_model_path()), n_ctx=a.ctx_size, verbose=False)


def _serve(a: argparse.Namespace) -> None:
    from fitllm.server import serve

    llm = _load(a)
    print(f"fitllm: serving {llm.model_path} on http://{a.host}:{a.port} (chat page at /)", file=sys.stderr)
    serve(llm, a.host, a.port, a.api_key, a.parallel, a.queue)


def _chat(a: argparse.Namespace) -> None:
    from fitllm.runner import chat

    chat(_load(a), a.system, dict(temperature=a.temp, top_p=a.top_p, max_tokens=a.n_predict))


def _perplexity(a: argparse.Namespace) -> None:
    from fitllm.default_model import default_model_path
    from fitllm.perplexity import perplexity, sweep

    text = open(a.file, encoding="utf-8", errors="replace").read()
    if a.sweep:
        model = a.model or str(default_model_path())
        table, chart = sweep(model, text, a.sweep, n_ctx=a.ctx_size, threads=a.threads or 2)
        print(open(table).read() + f"chart: {chart}")
        return
    llm = _load(a)
    tokens = llm.tokenize(text.encode(), add_bos=True, special=False)  # as llama.cpp's tool does
    tok = llm._tok
    bos = tok.bos_id if tok.add_bos else None
    r = perplexity(llm._model, tokens, a.ctx_size, min(a.batch_size, a.ctx_size), bos, a.chunks)
    print(r.report())


def _quantize(a: argparse.Namespace) -> None:
    from fitllm.quant.gguf_quantize import quantize_gguf

    quantize_gguf(a.input, a.output, a.type, a.threads, progress=not a.no_progress)


def _info(a: argparse.Namespace) -> None:
    from fitllm.info import describe

    print(describe(a.model))


def _bench(a: argparse.Namespace) -> None:
    from fitllm.bench import run_bench
    from fitllm.default_model import default_model_path

    model = a.model or str(default_model_path())
    print(run_bench(model, a.threads, a.n_prompt, a.n_gen, a.rounds, a.vs_llamacpp, a.memory_budget or ""))


def _convert(a: argparse.Namespace) -> None:
    from fitllm.convert.grok1 import convert_grok1
    from fitllm.convert.hf import convert_hf, is_hf_folder

    if is_hf_folder(a.checkpoint):
        convert_hf(a.checkpoint, a.outfile, a.type or "f16", a.threads, progress=not a.no_progress)
    else:
        t = (a.type or "q8_0").lower()
        convert_grok1(a.checkpoint, a.outfile, t, a.tokenizer, a.config, progress=not a.no_progress)


def _plan(a: argparse.Namespace) -> None:
    import os

    from fitllm import plan as P
    from fitllm.bench import memory_bandwidth_gbs

    if bool(a.model) == bool(a.arch):
        raise ValueError("plan: give a GGUF file or --arch NAME")
    if a.arch and a.arch not in P.ARCHS:
        raise ValueError(f"plan: unknown --arch {a.arch!r} (known: {', '.join(P.ARCHS)})")
    m = P.shape_of_gguf(a.model, a.quant) if a.model else P.ARCHS[a.arch](a.quant or "q8_0")
    hosts = P.parse_hosts(a.hosts) if a.hosts else [os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")]
    bw = P.parse_size(a.bandwidth, binary=False) if a.bandwidth else memory_bandwidth_gbs() * 1e9
    net = (a.net_latency, P.parse_size(a.net_bandwidth, binary=False))
    text, _ = P.plan(m, hosts, a.ctx_size, bw, *net)
    print(text)
    disk = P.parse_size(a.disk_bandwidth, binary=False)
    stream = P.stream_estimate(m, min(hosts), a.ctx_size, disk, bw, a.hit_rate)
    if stream:
        print(stream)
    if a.arch:
        print(P.suggest(a.arch, hosts, a.ctx_size, bw, *net))


MODEL_HELP = "GGUF file (default: the embedded SmolLM2-135M-Instruct)"


def _add_run(sub) -> None:
    r = sub.add_parser("run", help="generate text (llama.cpp's flags)")
    r.add_argument("-m", "--model", help=MODEL_HELP)
    r.add_argument("-p", "--prompt")
    r.add_argument(
        "-n", "--n-predict", type=int, default=-1, help="tokens to generate (-1: until EOS/context)"
    )
    r.add_argument("-c", "--ctx-size", type=int, default=4096)
    r.add_argument("-b", "--batch-size", type=int, default=512)
    r.add_argument("-t", "--threads", type=int)
    r.add_argument("--temp", type=float, default=0.8)
    r.add_argument("--top-k", type=int, default=40)
    r.add_argument("--top-p", type=float, default=0.95)
    r.add_argument("--min-p", type=float, default=0.05)
    r.add_argument("--repeat-penalty", type=float, default=1.0)
    r.add_argument("--seed", type=int, default=-1)
    r.add_argument("--color", action="store_true")
    r.add_argument("-i", "--interactive", action="store_true")
    r.add_argument("-r", "--reverse-prompt", action="append", default=[])
    r.add_argument(
        "--mmap-stream", action="store_true", help="run a model bigger than memory from disk (slow)"
    )
    r.add_argument(
        "--memory-budget",
        help="memory to use, e.g. 16G (default: the machine's or cgroup's); a bigger MoE streams its experts",
    )
    r.add_argument(
        "--expert-cache", default="lfu", choices=["lfu", "lru"], help="expert cache policy (lru cycles)"
    )
    r.add_argument(
        "--split-mode",
        default="layer",
        choices=["layer", "pipeline", "row", "tensor"],
        help="under mpirun: layers per rank (layer, pipeline) or every layer split (row, tensor)",
    )
    r.add_argument(
        "--split",
        "--tensor-split",
        help="under mpirun: the ranks' shares, e.g. 3,2,2 (default: their memory)",
    )
    r.set_defaults(func=_run)


def _add_serving(sub) -> None:
    sv = sub.add_parser("serve", help="OpenAI-compatible HTTP server (and a chat page at /)")
    ch = sub.add_parser("chat", help="chat in the terminal with the model's chat template")
    for x in (sv, ch):
        x.add_argument("-m", "--model", help=MODEL_HELP)
        x.add_argument("-c", "--ctx-size", type=int, default=4096)
        x.add_argument("-t", "--threads", type=int)
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8080)
    sv.add_argument("--api-key", help="require 'Authorization: Bearer KEY'")
    sv.add_argument("--parallel", type=int, default=2, help="requests generated at once (slots)")
    sv.add_argument("--queue", type=int, default=64, help="requests that may wait for a slot (then 503)")
    sv.set_defaults(func=_serve)
    ch.add_argument("--system", help="a system message")
    ch.add_argument("--temp", type=float, default=0.7)
    ch.add_argument("--top-p", type=float, default=0.95)
    ch.add_argument(
        "-n", "--n-predict", type=int, default=512, help="tokens per reply at most (-1: until EOS/context)"
    )
    ch.set_defaults(func=_chat)


def _add_quality(sub) -> None:
    qz = sub.add_parser("quantize", help="re-encode a GGUF at a llama.cpp type (Q8_0, Q4_K_M, ...)")
    qz.add_argument("input")
    qz.add_argument("output")
    qz.add_argument(
        "type", help="F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q2_K Q3_K_M Q4_K_S Q4_K_M Q5_K_S Q5_K_M Q6_K"
    )
    qz.add_argument("-t", "--threads", type=int, default=len(__import__("os").sched_getaffinity(0)))
    qz.add_argument("--no-progress", action="store_true")
    qz.set_defaults(func=_quantize)
    pp = sub.add_parser("perplexity", help="perplexity of a text file, scored as llama.cpp's perplexity tool")
    pp.add_argument("-m", "--model", help=MODEL_HELP)
    pp.add_argument("-f", "--file", required=True, help="the text")
    pp.add_argument("-c", "--ctx-size", type=int, default=512, help="tokens per chunk")
    pp.add_argument("-b", "--batch-size", type=int, default=512)
    pp.add_argument("-t", "--threads", type=int)
    pp.add_argument("--chunks", type=int, default=-1, help="at most this many chunks")
    pp.add_argument("--sweep", metavar="DIR", help="quantize the model to each type into DIR: table + chart")
    pp.set_defaults(func=_perplexity)


def _add_tools(sub) -> None:
    i = sub.add_parser("info", help="architecture, hyper-parameters and tensor types of a GGUF file")
    i.add_argument("model")
    i.set_defaults(func=_info)

    b = sub.add_parser("bench", help="prompt/decode speed, load time and peak RSS (optionally vs llama.cpp)")
    b.add_argument("-m", "--model")
    b.add_argument("-t", "--threads", type=int, default=2)
    b.add_argument("-p", "--n-prompt", type=int, default=128)
    b.add_argument("-n", "--n-gen", type=int, default=128)
    b.add_argument("-r", "--rounds", type=int, default=3)
    b.add_argument("--vs-llamacpp", action="store_true")
    b.add_argument("--memory-budget", help="fitllm's memory budget: a MoE bigger than it streams its experts")
    b.set_defaults(func=_bench)


def _add_convert_plan(sub) -> None:
    c = sub.add_parser(
        "convert", help="convert a Hugging Face checkpoint or Grok-1's release checkpoint to GGUF"
    )
    c.add_argument(
        "checkpoint",
        help="a Hugging Face folder (config.json + weights), or the folder holding Grok-1's ckpt-0/",
    )
    c.add_argument("-o", "--outfile", required=True)
    c.add_argument(
        "--type",
        help="f32 f16 bf16 q8_0 ... or a llama.cpp mix such as Q4_K_M (default: f16; q8_0 for ckpt-0/,"
        " which takes f32 f16 bf16 q8_0 q5_0 q5_1 q4_0 q4_1 q4_k)",
    )
    c.add_argument("-t", "--threads", type=int, default=len(__import__("os").sched_getaffinity(0)))
    c.add_argument("--tokenizer", help="ckpt-0/: tokenizer.model (SentencePiece) to embed")
    c.add_argument("--config", help="ckpt-0/: JSON object with run.py's fields (default: Grok-1's config)")
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(func=_convert)

    pl = sub.add_parser("plan", help="memory per host, split and decode speed, before loading a model")
    pl.add_argument("model", nargs="?", help="a GGUF file (or use --arch)")
    pl.add_argument(
        "--arch", help="a known model by name, with its real shapes: grok-1, smollm2-135m, gemma3-270m"
    )
    pl.add_argument("--quant", help="at this quantization (as fitllm convert --type; --arch default q8_0)")
    pl.add_argument("-c", "--ctx-size", type=int, default=8192)
    pl.add_argument("--hosts", help="memory per host: 4x64G or 64G,32G (default: this machine)")
    pl.add_argument("--bandwidth", help="memory read bandwidth per host, e.g. 100G (default: measured)")
    pl.add_argument("--net-latency", type=float, default=50e-6, help="seconds per message (default 50e-6)")
    pl.add_argument("--net-bandwidth", default="1.25G", help="bytes/s between hosts (default 1.25G: 10 GbE)")
    pl.add_argument("--disk-bandwidth", default="1.5G", help="bytes/s read from disk (expert streaming)")
    pl.add_argument("--hit-rate", type=float, help="expert cache hit rate (default: uniform routing's)")
    pl.set_defaults(func=_plan)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fitllm", description="Run GGUF language models on the CPU.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_run, _add_serving, _add_quality, _add_tools, _add_convert_plan):
        add(sub)
    return p


def _abort_job(message: str) -> None:
    from mpi4py import MPI

    print(f"fitllm rank {MPI.COMM_WORLD.Get_rank()}: {message}", file=sys.stderr, flush=True)
    MPI.COMM_WORLD.Abort(1)


def main(argv: list[str] | None = None) -> int:
    from fitllm.distributed import DistributedError, under_mpirun
    from fitllm.distributed.comm import mpi_rank

    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING, format="fitllm: %(message)s")
    known = (GGUFError, CheckpointError, ContextFullError, ValueError, FileNotFoundError, MemoryError)
    try:
        a.func(a)
    except (*known, DistributedError) as e:
        if under_mpirun() and not isinstance(e, DistributedError):
            _abort_job(f"error: {e}")  # the other ranks would wait for this one forever
        if mpi_rank() == 0:  # a DistributedError is raised by every rank: say it once
            print(f"fitllm: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        if under_mpirun():
            _abort_job(f"{type(e).__name__}: {e}")
        raise
    except KeyboardInterrupt:
        return 130
    return 0

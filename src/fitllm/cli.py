"""Command line: thin argparse subcommands that call the library."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator

from fitllm.cli_args import build_parser
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
    _check_prompt(llm, prompt)
    run(
        llm,
        prompt,
        a.n_predict,
        sampling,
        color=a.color,
        interactive=a.interactive or bool(a.reverse_prompt),
        reverse_prompts=a.reverse_prompt,
    )
    print(llm.perf.report(), file=sys.stderr)  # as llama.cpp ends a run
    llm.close()


def _check_prompt(llm, prompt: str) -> None:
    """Refuse, before printing it, a prompt the context cannot hold with one token generated."""
    n, n_ctx = len(llm.tokenize(prompt.encode(), add_bos=True, special=True)), llm.n_ctx()
    if n >= n_ctx:
        raise ValueError(f"the prompt is {n} tokens but the context holds {n_ctx}: raise -c or shorten it")


def _load(a: argparse.Namespace):
    from fitllm import kernels
    from fitllm.api import Llama
    from fitllm.default_model import default_model_path

    if a.threads:
        kernels.set_threads(a.threads)
    return Llama(a.model or str(default_model_path()), n_ctx=a.ctx_size, verbose=False)


def _serve(a: argparse.Namespace) -> None:
    from fitllm.server import bind, serve

    sock = bind(a.host, a.port)  # a port in use fails here, before the model loads
    llm = _load(a)
    print(f"fitllm: serving {llm.model_path} on http://{a.host}:{a.port} (chat page at /)", file=sys.stderr)
    kw = dict(alias=a.alias, access_log=not a.no_access_log, timeout=a.timeout, max_body=a.max_body)
    serve(llm, sock, a.api_key, a.parallel, a.queue, **kw)


def _chat(a: argparse.Namespace) -> None:
    from fitllm.runner import chat

    chat(_load(a), a.system, dict(temperature=a.temp, top_p=a.top_p, max_tokens=a.n_predict))


def _perplexity(a: argparse.Namespace) -> None:
    from fitllm.default_model import default_model_path
    from fitllm.perplexity import SWEEP_TYPES, perplexity, sweep, sweep_path

    text = open(a.file, encoding="utf-8", errors="replace").read()
    if a.sweep:
        model = a.model or str(default_model_path())
        table, chart = sweep(model, text, a.sweep, n_ctx=a.ctx_size, threads=a.threads or 2, keep=a.keep)
        print(open(table).read() + f"chart: {chart}")
        if a.keep:
            print("quantized models: " + " ".join(sweep_path(model, a.sweep, t) for t in SWEEP_TYPES))
        return
    llm = _load(a)
    tokens = llm.tokenize(text.encode(), add_bos=True, special=False)  # as llama.cpp's tool does
    tok = llm.tokenizer
    bos = tok.bos_id if tok.add_bos else None
    r = perplexity(llm.model, tokens, a.ctx_size, min(a.batch_size, a.ctx_size), bos, a.chunks)
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

    if is_hf_folder(a.checkpoint, xai_config=bool(a.config)):
        convert_hf(a.checkpoint, a.outfile, a.type or "f16", a.threads, progress=not a.no_progress)
    else:
        t = (a.type or "q8_0").lower()
        convert_grok1(a.checkpoint, a.outfile, t, a.tokenizer, a.config, progress=not a.no_progress)


def _plan_bandwidth(a: argparse.Namespace) -> tuple[float, str]:
    """Memory bandwidth, bytes/s, and where it comes from: this machine's is measured only when
    planning for it (it says nothing of the --hosts asked about, and takes seconds)."""
    from fitllm import plan as P

    if a.bandwidth:
        return P.parse_size(a.bandwidth, binary=False), "given"
    if a.hosts:
        return P.ASSUMED_BANDWIDTH, "assumed, typical of a server: set the hosts' with --bandwidth"
    from fitllm import kernels
    from fitllm.bench import memory_bandwidth_gbs

    print("fitllm: measuring this machine's memory bandwidth ...", file=sys.stderr, flush=True)
    return memory_bandwidth_gbs() * 1e9, f"measured on this machine, {kernels.get_threads()} threads"


def _plan(a: argparse.Namespace) -> None:
    import os

    from fitllm import plan as P

    if bool(a.model) == bool(a.arch):
        raise ValueError("plan: give a GGUF file or --arch NAME")
    if a.arch and a.arch not in P.ARCHS:
        raise ValueError(f"plan: unknown --arch {a.arch!r} (known: {', '.join(P.ARCHS)})")
    m = P.shape_of_gguf(a.model, a.quant) if a.model else P.ARCHS[a.arch](a.quant or "q8_0")
    hosts = P.parse_hosts(a.hosts) if a.hosts else [os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")]
    bw, how = _plan_bandwidth(a)
    net = (a.net_latency, P.parse_size(a.net_bandwidth, binary=False))
    text, _ = P.plan(m, hosts, a.ctx_size, bw, *net, bandwidth_note=how)
    print(text)
    disk = P.parse_size(a.disk_bandwidth, binary=False)
    stream = P.stream_estimate(m, min(hosts), a.ctx_size, disk, bw, a.hit_rate)
    if stream:
        print(stream)
    if a.arch:
        print(P.suggest(a.arch, hosts, a.ctx_size, bw, *net))


def _split(a: argparse.Namespace) -> None:
    from fitllm.gguf.split import parse_split_size, split_gguf

    if a.max_tensors is not None and a.max_tensors < 1:
        raise ValueError(f"--max-tensors {a.max_tensors}: give at least 1")
    size = parse_split_size(a.max_size) if a.max_size else 0
    for path in split_gguf(a.input, a.prefix, size, a.max_tensors or 0):
        print(path)


def _merge(a: argparse.Namespace) -> None:
    from fitllm.gguf.split import merge_gguf

    print(merge_gguf(a.first_shard, a.output))


HANDLERS = {
    "run": _run, "serve": _serve, "chat": _chat, "quantize": _quantize, "perplexity": _perplexity,
    "info": _info, "bench": _bench, "convert": _convert, "plan": _plan, "split": _split, "merge": _merge,
}  # fmt: skip


# commands that write OUT.part: SIGTERM (kill, a job's end) must clean up as Ctrl-C does
WRITERS = ("quantize", "convert", "perplexity", "split", "merge")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as Ctrl-C's KeyboardInterrupt is, so that the same cleanup runs."""


def _terminated(signum: int, frame: object) -> None:
    raise Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt(command: str) -> Iterator[None]:
    """While a writing command runs (in the main thread), SIGTERM raises Terminated."""
    if command not in WRITERS or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
        with _sigterm_as_interrupt(a.command):
            HANDLERS[a.command](a)
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
    except KeyboardInterrupt as e:
        return 143 if isinstance(e, Terminated) else 130  # as a shell reports the signal
    return 0

"""fitllm's command line: the argparse parser (the subcommands' handlers are in cli.py)."""

from __future__ import annotations

import argparse
import os
import sys


class Parser(argparse.ArgumentParser):
    """Usage errors in one line (as the rest of fitllm's errors), with where to find the usage."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see {self.prog} -h)", file=sys.stderr)
        sys.exit(2)


def threads(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: threads must be at least 1")
    return n


def n_predict(text: str) -> int:
    n = int(text)
    if n < -1:
        raise argparse.ArgumentTypeError(f"{n}: give -1 (no limit) or a count of tokens >= 0")
    return n


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("fitllm")
    except PackageNotFoundError:  # run from a source tree
        from fitllm import __version__

        return __version__


MODEL_HELP = "GGUF file (default: the embedded SmolLM2-135M-Instruct)"


def _add_run(sub) -> None:
    r = sub.add_parser("run", help="generate text (llama.cpp's flags)")
    r.add_argument("-m", "--model", help=MODEL_HELP)
    r.add_argument("-p", "--prompt")
    r.add_argument(
        "-n", "--n-predict", type=n_predict, default=-1, help="tokens to generate (-1: until EOS/context)"
    )
    r.add_argument("-c", "--ctx-size", type=int, default=4096)
    r.add_argument("-b", "--batch-size", type=int, default=512)
    r.add_argument("-t", "--threads", type=threads)
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


def _add_serving(sub) -> None:
    sv = sub.add_parser("serve", help="OpenAI-compatible HTTP server (and a chat page at /)")
    ch = sub.add_parser("chat", help="chat in the terminal with the model's chat template")
    for x in (sv, ch):
        x.add_argument("-m", "--model", help=MODEL_HELP)
        x.add_argument("-c", "--ctx-size", type=int, default=4096)
        x.add_argument("-t", "--threads", type=threads)
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8080)
    sv.add_argument("--api-key", help="require 'Authorization: Bearer KEY'")
    sv.add_argument("--parallel", type=int, default=2, help="requests generated at once (slots)")
    sv.add_argument("--queue", type=int, default=64, help="requests that may wait for a slot (then 503)")
    sv.add_argument("-a", "--alias", help="the model's name for clients (default: the file's, less .gguf)")
    sv.add_argument("--no-access-log", action="store_true", help="no line per request on stderr")
    sv.add_argument(
        "--timeout", type=float, default=600.0, help="seconds a request's headers and body may take to arrive"
    )
    sv.add_argument(
        "--max-body", type=int, help="bytes a request body may have (default: 64 per context token, >= 1 MiB)"
    )
    ch.add_argument("--system", help="a system message")
    ch.add_argument("--temp", type=float, default=0.7)
    ch.add_argument("--top-p", type=float, default=0.95)
    ch.add_argument(
        "-n",
        "--n-predict",
        type=n_predict,
        default=512,
        help="tokens per reply at most (-1: until EOS/context)",
    )


def _add_quality(sub) -> None:
    qz = sub.add_parser("quantize", help="re-encode a GGUF at a llama.cpp type (Q8_0, Q4_K_M, ...)")
    qz.add_argument("input")
    qz.add_argument("output")
    qz.add_argument(
        "type", help="F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q2_K Q3_K_M Q4_K_S Q4_K_M Q5_K_S Q5_K_M Q6_K"
    )
    qz.add_argument("-t", "--threads", type=threads, default=len(os.sched_getaffinity(0)))
    qz.add_argument("--no-progress", action="store_true")
    sp = sub.add_parser("split", help="split a GGUF into gguf-split shards (PREFIX-00001-of-0000N.gguf)")
    sp.add_argument("input")
    sp.add_argument("prefix", help="output name before -00001-of-0000N.gguf")
    by = sp.add_mutually_exclusive_group(required=True)
    by.add_argument("--max-size", metavar="N(M|G)", help="tensor bytes per shard at most, e.g. 4G, 500M")
    by.add_argument("--max-tensors", type=int, metavar="N", help="tensors per shard at most")
    mg = sub.add_parser("merge", help="join a gguf-split shard set (give its first shard) into one GGUF")
    mg.add_argument("first_shard")
    mg.add_argument("output")
    pp = sub.add_parser("perplexity", help="perplexity of a text file, scored as llama.cpp's perplexity tool")
    pp.add_argument("-m", "--model", help=MODEL_HELP)
    pp.add_argument("-f", "--file", required=True, help="the text")
    pp.add_argument("-c", "--ctx-size", type=int, default=512, help="tokens per chunk")
    pp.add_argument("-b", "--batch-size", type=int, default=512)
    pp.add_argument("-t", "--threads", type=threads)
    pp.add_argument("--chunks", type=int, default=-1, help="at most this many chunks")
    pp.add_argument("--sweep", metavar="DIR", help="quantize the model to each type into DIR: table + chart")
    pp.add_argument(
        "--keep", action="store_true", help="--sweep: keep the quantized models (default: deleted)"
    )


def _add_tools(sub) -> None:
    i = sub.add_parser("info", help="architecture, hyper-parameters and tensor types of a GGUF file")
    i.add_argument("model")

    b = sub.add_parser("bench", help="prompt/decode speed, load time and peak RSS (optionally vs llama.cpp)")
    b.add_argument("-m", "--model")
    b.add_argument("-t", "--threads", type=threads, default=2)
    b.add_argument("-p", "--n-prompt", type=int, default=128)
    b.add_argument("-n", "--n-gen", type=int, default=128)
    b.add_argument("-r", "--rounds", type=int, default=3)
    b.add_argument("--vs-llamacpp", action="store_true")
    b.add_argument("--memory-budget", help="fitllm's memory budget: a MoE bigger than it streams its experts")


def _add_convert_plan(sub) -> None:
    c = sub.add_parser(
        "convert", help="convert a Hugging Face checkpoint or Grok-1's release checkpoint to GGUF"
    )
    c.add_argument(
        "checkpoint",
        help="a Hugging Face folder (config.json naming its architectures + weights), or the folder"
        " holding Grok-1's ckpt-0/ (taken as such with --config, whatever config.json it holds)",
    )
    c.add_argument("-o", "--outfile", required=True)
    c.add_argument(
        "--type",
        help="f32 f16 bf16 q8_0 ... or a llama.cpp mix such as Q4_K_M (default: f16; q8_0 for ckpt-0/,"
        " which takes f32 f16 bf16 q8_0 q5_0 q5_1 q4_0 q4_1 q4_k)",
    )
    c.add_argument("-t", "--threads", type=threads, default=len(os.sched_getaffinity(0)))
    c.add_argument("--tokenizer", help="ckpt-0/: tokenizer.model (SentencePiece) to embed")
    c.add_argument("--config", help="ckpt-0/: JSON object with run.py's fields (default: Grok-1's config)")
    c.add_argument("--no-progress", action="store_true")

    pl = sub.add_parser("plan", help="memory per host, split and decode speed, before loading a model")
    pl.add_argument("model", nargs="?", help="a GGUF file (or use --arch)")
    pl.add_argument(
        "--arch", help="a known model by name, with its real shapes: grok-1, smollm2-135m, gemma3-270m"
    )
    pl.add_argument("--quant", help="at this quantization (as fitllm convert --type; --arch default q8_0)")
    pl.add_argument("-c", "--ctx-size", type=int, default=8192)
    pl.add_argument("--hosts", help="memory per host: 4x64G or 64G,32G (default: this machine)")
    pl.add_argument(
        "--bandwidth",
        help="memory read bandwidth per host, e.g. 100G (default: measured on this machine; 50G"
        " assumed with --hosts)",
    )
    pl.add_argument("--net-latency", type=float, default=50e-6, help="seconds per message (default 50e-6)")
    pl.add_argument("--net-bandwidth", default="1.25G", help="bytes/s between hosts (default 1.25G: 10 GbE)")
    pl.add_argument("--disk-bandwidth", default="1.5G", help="bytes/s read from disk (expert streaming)")
    pl.add_argument("--hit-rate", type=float, help="expert cache hit rate (default: uniform routing's)")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="fitllm", description="Run GGUF language models on the CPU.")
    p.add_argument("-v", "--verbose", action="store_true", help="log what fitllm does")
    p.add_argument("--version", action="version", version=f"fitllm {version()}")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_run, _add_serving, _add_quality, _add_tools, _add_convert_plan):
        add(sub)
    for s in sub.choices.values():
        # also after the subcommand; SUPPRESS: absent there, it leaves the top level's value alone
        s.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log what fitllm does"
        )
    return p

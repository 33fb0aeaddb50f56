"""A MoE bigger than memory, under a real memory cap: fitllm streaming its experts, fitllm on plain
mmap, llama.cpp (mmap, no repacking; and its default, which repacks into anonymous memory).

    python benchmarks/expert_stream.py MODEL.gguf --cap 3G [-t 2] [-p 8] [-n 8] [--text PROMPT]

Needs root and cgroup v1 (a child of this process's memory cgroup gets memory.limit_in_bytes =
cap, which also caps the page cache). Before every run the file is dropped from the page cache.
Decode feeds random tokens (random weights route them near uniformly: the worst case for a cache),
or with --text "PROMPT" (a real model, e.g. an upcycled MoE) the prompt's greedy continuation,
written by the uncapped reference run and fed to every run alike.
Prints a table (s/token, peak memory of the cgroup, argmax tokens equal to fitllm uncapped) and fitllm's
expert-cache numbers, and the disk bound: bytes read per token / the disk's measured read speed."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from fitllm.plan import parse_size


def cgroup(cap: int) -> str:
    rel = next(x.split(":", 2)[2] for x in open("/proc/self/cgroup").read().splitlines() if ":memory:" in x)
    cg = f"/sys/fs/cgroup/memory{rel.rstrip('/')}/fitllm-bench"
    os.makedirs(cg, exist_ok=True)
    open(f"{cg}/memory.limit_in_bytes", "w").write(str(cap))
    return cg


def drop_cache(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)


def disk_speed(path: str, n: int = 1 << 30, streams: int = 4) -> float:
    """Bytes/s of cold reads of up to n bytes from the file's last two thirds, as `streams` parallel
    sequential readers, buffered and with O_DIRECT (as the expert cache reads): the best of the two."""
    import mmap
    from concurrent.futures import ThreadPoolExecutor

    base = os.path.getsize(path) // 3 // 4096 * 4096
    each = min(n, 2 * base) // streams // 4096 * 4096

    def read(off: int, flags: int) -> None:
        fd, buf, got = os.open(path, os.O_RDONLY | flags), mmap.mmap(-1, 16 << 20), 0
        while got < each:
            got += os.preadv(fd, [memoryview(buf)[: min(16 << 20, each - got)]], off + got)
        os.close(fd)

    best = 0.0
    for flags in (0, os.O_DIRECT):
        drop_cache(path)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(streams) as ex:
            list(ex.map(read, [base + i * each for i in range(streams)], [flags] * streams))
        best = max(best, each * streams / (time.perf_counter() - t0))
    return best


def tokens_to_feed(a: argparse.Namespace) -> dict:
    """Random tokens (random weights route them near uniformly: the worst case for a cache), or with
    --text a real prompt and the greedy text that follows it (a real model's routing)."""
    import numpy as np

    if a.text:
        from fitllm.gguf import GGUFFile
        from fitllm.tokenizer import GGUFTokenizer

        return {"prompt": GGUFTokenizer(GGUFFile(a.model)).encode(a.text), "gen": None}
    prompt, gen = (
        np.random.default_rng(0).integers(10, 1000, a.n_prompt),
        np.random.default_rng(1).integers(10, 1000, a.n_gen),
    )
    return {"prompt": prompt.tolist(), "gen": gen.tolist()}


def worker(a: argparse.Namespace) -> None:
    """One configuration, inside the cgroup: prompt, then n greedy tokens; JSON on stdout."""
    import numpy as np

    kind = a.worker
    feed = json.loads(a.feed)  # the prompt's tokens, and the decode steps' (None: feed back the argmax)
    ctx = len(feed["prompt"]) + a.n_gen + 1
    out: dict = {}
    if kind.startswith("llama.cpp"):
        import llama_cpp

        if kind == "llama.cpp-mmap":  # weights stay in the mapped file: no repacked copy
            default = llama_cpp.llama_cpp.llama_model_default_params

            def no_repack():
                p = default()
                p.use_extra_bufts = False
                return p

            llama_cpp.llama_cpp.llama_model_default_params = no_repack
        llm = llama_cpp.Llama(a.model, n_ctx=ctx, n_threads=a.threads, n_batch=ctx, verbose=False)
    else:
        from fitllm.api import Llama

        mode = dict(mmap_stream=True) if kind == "fitllm-mmap" else dict(memory_budget=a.budget or None)
        llm = Llama(a.model, n_ctx=ctx, n_threads=a.threads, verbose=False, expert_cache=a.policy, **mode)
    llm.eval(feed["prompt"])
    gen, times = [], []
    for i in range(a.n_gen):
        # llama-cpp-python keeps no logits without logits_all: its runs are fed, never compared
        gen.append(int(np.argmax(llm.scores[-1])) if kind.startswith("fitllm") else -1)
        t0 = time.perf_counter()
        llm.eval([feed["gen"][i] if feed["gen"] else gen[-1]])
        times.append(time.perf_counter() - t0)
    out["s_per_token"] = sum(times) / len(times)  # throughput; the median hides the fast hits
    out["median"] = sorted(times)[len(times) // 2]
    out["tokens"] = gen
    if hasattr(getattr(llm, "_model", None), "stats"):
        c = llm._model
        st = c.stats
        dec = [x for x in st.tokens if x[0] == 1]
        out["cache"] = c.summary()
        out["hit_rate"], out["guess_rate"] = st.hit_rate(), st.guess_rate()
        out["read_per_token"] = sum(x[3] for x in dec) / max(1, len(dec))
    print("RESULT " + json.dumps(out), flush=True)


def run(
    a: argparse.Namespace, kind: str, cg: str | None, feed: dict, policy: str = "lfu", budget: str = ""
) -> dict:
    drop_cache(a.model)
    if cg:
        open(f"{cg}/memory.max_usage_in_bytes", "w").write("0")
    cmd = [sys.executable, __file__, a.model, "--worker", kind, "-t", str(a.threads), "-p", str(a.n_prompt)]
    cmd += ["-n", str(a.n_gen), "--policy", policy, "--budget", budget, "--feed", json.dumps(feed)]

    def enter() -> None:
        if cg:
            open(f"{cg}/cgroup.procs", "w").write(str(os.getpid()))

    p = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=enter)
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    r = (
        json.loads(line[0][7:])
        if line
        else {"error": f"exit {p.returncode}" + (" (OOM-killed)" if p.returncode == -9 else p.stderr[-300:])}
    )
    if cg:
        r["peak"] = int(open(f"{cg}/memory.max_usage_in_bytes").read())
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--cap", default="3G")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-p", "--n-prompt", type=int, default=8)
    ap.add_argument("-n", "--n-gen", type=int, default=8)
    ap.add_argument("--text", help="a prompt for a real model: decode its greedy continuation")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--feed", help=argparse.SUPPRESS)
    ap.add_argument("--policy", default="lfu", help=argparse.SUPPRESS)
    ap.add_argument("--budget", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a)
    cap = parse_size(a.cap)
    speed = disk_speed(a.model)
    feed = tokens_to_feed(a)
    ref = run(a, "fitllm-mmap", None, feed)  # uncapped: the tokens to match
    if "error" in ref:
        raise SystemExit(f"the uncapped reference run failed: {ref['error']}")
    if feed["gen"] is None:  # every other run reads the text the reference wrote: the same routing
        feed["gen"] = ref["tokens"]
    cg = cgroup(cap)
    rows = {
        "fitllm, experts streamed (lfu)": run(a, "fitllm-stream", cg, feed, "lfu", a.cap),
        "fitllm, experts streamed (lru)": run(a, "fitllm-stream", cg, feed, "lru", a.cap),
        "fitllm, plain mmap": run(a, "fitllm-mmap", cg, feed),
        "llama.cpp, mmap (no repack)": run(a, "llama.cpp-mmap", cg, feed),
        "llama.cpp, default (repack)": run(a, "llama.cpp", cg, feed),
        "fitllm uncapped (reference)": ref,
    }
    os.rmdir(cg)
    size = os.path.getsize(a.model)
    print(f"{os.path.basename(a.model)}: {size / 2**30:.2f} GiB under a {cap / 2**30:.2f} GiB cap;"
          f" disk reads {speed / 1e9:.2f} GB/s; {a.threads} threads")  # fmt: skip
    print("| run | s/token (mean) | median | peak cgroup memory | tokens = uncapped |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        if "error" in r:
            print(f"| {name} | {r['error']} | | {r.get('peak', 0) / 2**30:.2f} GiB | - |")
            continue
        same = r["tokens"] == ref["tokens"] if not name.startswith("llama") else "-"
        peak = r.get("peak", 0) / 2**30
        print(f"| {name} | {r['s_per_token']:.3f} | {r['median']:.3f} | {peak:.2f} GiB | {same} |")
    for name, r in rows.items():
        if "cache" in r:
            bound = r["read_per_token"] / speed
            print(f"{name}: {r['cache']}; disk bound {bound:.3f} s/token ({r['s_per_token'] / bound:.2f}x)")


if __name__ == "__main__":
    main()

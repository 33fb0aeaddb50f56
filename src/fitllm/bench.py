"""`fitllm bench`: prompt and decode speed, load-to-first-token and peak RSS, optionally side by side
with llama.cpp (llama-cpp-python) on the same GGUF and threads. Each measurement runs in its own
process (clean RSS), engines interleaved round by round; medians and spread are reported."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

ENGINES = ("fitllm", "llama.cpp")


def _child(engine: str, model: str, threads: int, n_prompt: int, n_gen: int, budget: str = "") -> dict:
    t0 = time.perf_counter()
    extra = {}
    if engine == "fitllm":
        from fitllm import Llama

        extra = {"memory_budget": budget} if budget else {}
    else:
        from llama_cpp import Llama
    llm = Llama(
        model_path=model,
        n_ctx=n_prompt + n_gen + 8,
        n_batch=n_prompt,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
        **extra,
    )
    vocab = llm.n_vocab()
    prompt = [(i * 7919 + 13) % (vocab - 300) + 256 for i in range(n_prompt)]
    llm.eval(llm.tokenize(b"Hello")[:1])  # the first token of a real prompt: the tokenizer counts too
    load_s = time.perf_counter() - t0
    llm.reset()
    t = time.perf_counter()
    llm.eval(prompt)
    prompt_s = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(n_gen):
        llm.eval([prompt[i % n_prompt]])
    gen_s = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = {"load_s": load_s, "prompt_tps": n_prompt / prompt_s, "decode_tps": n_gen / gen_s, "rss": rss}
    summary = llm.model.summary() if engine == "fitllm" else ""  # experts streamed: how the cache did
    return out | ({"experts": summary} if summary else {})


def _measure(engine: str, model: str, threads: int, n_prompt: int, n_gen: int, budget: str = "") -> dict:
    cmd = [
        sys.executable,
        "-m",
        "fitllm.bench",
        engine,
        model,
        str(threads),
        str(n_prompt),
        str(n_gen),
        budget,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if engine != "fitllm":  # llama.cpp as its users run it, without the settings fitllm made for itself
        from fitllm.kernels import OWN_ENV

        env = {k: v for k, v in env.items() if OWN_ENV.get(k) != v}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        raise RuntimeError(f"{engine} benchmark failed: {r.stderr.strip().splitlines()[-1:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _fmt(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    med = statistics.median(values) * scale
    spread = (max(values) - min(values)) * scale / 2
    return f"{med:.{digits}f} ±{spread:.{digits}f}"


def memory_bandwidth_gbs(n_bytes: int = 1 << 29, threads: int | None = None) -> float:
    """Memory read speed, GB/s: a 512 MiB buffer read by the compiled kernels' threads with their
    widest loads, best of 5 (a one-thread numpy sum does not reach the memory's speed)."""
    import numpy as np

    from fitllm import kernels

    a = np.ones(n_bytes, np.uint8)
    best = 0.0
    for _ in range(5):
        t = time.perf_counter()
        kernels.read_sum(a, threads)
        best = max(best, n_bytes / (time.perf_counter() - t))
    return best / 1e9


def _byte_compile() -> None:
    """fitllm's modules byte-compiled, as pip installs them (and llama_cpp's are): an editable install
    under PYTHONDONTWRITEBYTECODE=1 would compile them again in every measured process."""
    import compileall

    import fitllm

    compileall.compile_dir(os.path.dirname(fitllm.__file__), quiet=2)


def check_llamacpp() -> None:
    """--vs-llamacpp's dependency, checked before any measurement (they take minutes)."""
    try:
        import llama_cpp  # noqa: F401
    except (ImportError, OSError) as e:  # OSError: the package is there but its library is not
        raise ValueError(f'--vs-llamacpp needs llama-cpp-python ({e}): pip install "fitllm[bench]"') from None


def _say(text: str, end: str = "\n") -> None:
    print(text, end=end, file=sys.stderr, flush=True)


def _measure_all(
    engines: tuple[str, ...], model: str, threads: int, n_prompt: int, n_gen: int, rounds: int, budget: str,
    progress: bool,
) -> dict[str, list[dict]]:  # fmt: skip
    """Each engine once per round, interleaved; with progress, a line per measurement on stderr."""
    res: dict[str, list[dict]] = {e: [] for e in engines}
    t0, n, k = time.perf_counter(), rounds * len(engines), 0
    for r in range(rounds):
        for e in engines:
            k += 1
            if progress:
                _say(f"fitllm: bench {k}/{n}: {e}, round {r + 1}/{rounds} ...", end="")
            x = _measure(e, model, threads, n_prompt, n_gen, budget if e == "fitllm" else "")
            res[e].append(x)
            if progress:
                took = time.perf_counter() - t0
                _say(
                    f" prompt {x['prompt_tps']:.1f} tok/s, decode {x['decode_tps']:.1f} tok/s ({took:.0f} s)"
                )
    return res


def run_bench(
    model: str,
    threads: int,
    n_prompt: int,
    n_gen: int,
    rounds: int,
    vs_llamacpp: bool,
    budget: str = "",
    progress: bool = True,
) -> str:
    """budget: fitllm's --memory-budget (a MoE bigger than it streams its experts). The model and
    the optional dependency are checked before the first measurement."""
    from fitllm.gguf import GGUFFile
    from fitllm.plan import shape_of_gguf

    GGUFFile(model).check_supported()  # GGUFError: missing, not a GGUF, corrupt, a type fitllm lacks
    if vs_llamacpp:
        check_llamacpp()
    engines = ENGINES if vs_llamacpp else ENGINES[:1]
    _byte_compile()
    res = _measure_all(engines, model, threads, n_prompt, n_gen, rounds, budget, progress)
    if progress:
        _say("fitllm: measuring the memory bandwidth ...")
    weight_bytes = shape_of_gguf(model).read_per_token()  # MoE: the used experts only
    bw = memory_bandwidth_gbs(threads=threads)
    ceiling = bw * 1e9 / weight_bytes
    lines = [
        f"model {model}  threads {threads}  prompt {n_prompt}  gen {n_gen}  rounds {rounds}",
        f"memory read bandwidth {bw:.1f} GB/s ({threads} threads); decode ceiling ~{ceiling:.0f} tok/s"
        f" ({weight_bytes / 1e6:.0f} MB of weights per token)",
        f"{'engine':<10} {'prompt tok/s':>16} {'decode tok/s':>16} {'% ceiling':>9} {'load->1st tok s':>16}"
        f" {'peak RSS MB':>12}",
    ]
    for e in engines:
        r = res[e]
        dec = [x["decode_tps"] for x in r]
        lines.append(
            f"{e:<10} {_fmt([x['prompt_tps'] for x in r]):>16} {_fmt(dec):>16}"
            f" {100 * statistics.median(dec) / ceiling:>8.0f}% {_fmt([x['load_s'] for x in r], 1, 2):>16}"
            f" {statistics.median([x['rss'] for x in r]) / 1e6:>12.0f}"
        )
    lines += [f"fitllm {x['experts']}" for x in res["fitllm"][-1:] if "experts" in x]
    if vs_llamacpp:
        med = {e: {k: statistics.median(x[k] for x in res[e]) for k in res[e][0]} for e in engines}
        a, b = med["fitllm"], med["llama.cpp"]
        lines.append(
            f"ratio fitllm/llama.cpp: prompt {a['prompt_tps'] / b['prompt_tps']:.2f}x  decode"
            f" {a['decode_tps'] / b['decode_tps']:.2f}x  load {a['load_s'] / b['load_s']:.2f}x"
            f"  RSS {a['rss'] / b['rss']:.2f}x"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    engine, model, threads, n_prompt, n_gen = sys.argv[1:6]
    budget = sys.argv[6] if len(sys.argv) > 6 else ""
    print(json.dumps(_child(engine, model, int(threads), int(n_prompt), int(n_gen), budget)))

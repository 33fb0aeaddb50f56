"""Fuzz fitllm's loader with structure-aware mutants of small GGUF models.

Each mutant (gguf_mutate.py: header counts, metadata values and types, strings, arrays, tensor dims,
types, offsets, names, truncations) runs through two paths, each in a forked child with a timeout:
`api` (Llama(...) load, then a 3-token completion) and `info` (`fitllm info` through the CLI's
main). Each outcome is classified:

  ok       it ran (the mutant was harmless, or valid)
  error    one GGUFError line naming the file: what the CLI prints as `fitllm: error: ...`
  unclear  any other exception, or a multi-line message (a traceback for the user)
  hang     no answer within --timeout seconds
  crash    the child died of a signal (or exited without an answer)

    PYTHONPATH=src python benchmarks/fuzz_gguf.py --n 2000 --seed 1 --arch llama,grok --jobs 2

The seed fixes every mutant: a finding is replayed with --only INDEX (--keep writes it out).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import resource
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from gguf_mutate import mutate  # noqa: E402

ARCHS = ("llama", "qwen2", "gemma3", "grok", "llama-moe", "smollm2")
OUTCOMES = ("ok", "error", "unclear", "hang", "crash")
SMOLLM2 = Path.home() / ".cache" / "fitllm" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def base_model(arch: str, workdir: Path) -> Path:
    """The unmutated model of an architecture, written once into workdir."""
    from tiny_models import rewrite, write_tiny

    path = workdir / f"base-{arch}.gguf"
    if path.exists():
        return path
    if arch == "smollm2":  # the real file cut to 2 blocks: its vocabulary, merges and quant types
        from gguf import GGUFValueType

        from fitllm.gguf import GGUFFile

        names = GGUFFile(SMOLLM2).tensors
        drop = {n: None for n in names if n.startswith("blk.") and int(n.split(".")[1]) >= 2}
        rewrite(SMOLLM2, path, kv={"llama.block_count": (2, GGUFValueType.UINT32)}, tensors=drop)
    elif arch == "llama-moe":
        write_tiny(path, "llama", n_expert=4, seed=1)
    else:
        write_tiny(path, arch, seed=2)
    return path


def _api(path: str) -> None:
    from fitllm.api import Llama

    llm = Llama(path, n_ctx=64, n_threads=1, verbose=False)
    llm.create_completion("ab ba", max_tokens=3)


def _info(path: str) -> None:
    from fitllm.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["info", path])
    if rc != 0:
        msg = err.getvalue().strip()
        raise _Printed(msg)


class _Printed(Exception):
    """What the CLI printed for an error it caught."""


def classify(path: str, exc: BaseException | None) -> tuple[str, str]:
    """An outcome and its detail, for an exception in the child (None: it ran)."""
    from fitllm.gguf import GGUFError

    if exc is None:
        return "ok", ""
    msg = str(exc)
    one_line = "\n" not in msg.strip() and path in msg
    if isinstance(exc, GGUFError) and one_line:
        return "error", msg.replace(path, "F")
    if isinstance(exc, _Printed) and one_line and msg.startswith("fitllm: error: "):
        return "error", msg.replace(path, "F")
    return "unclear", f"{type(exc).__name__}: {msg[:300]}".replace(path, "F")


def _child(path: str, which: str, out: str) -> None:
    """Runs in the forked child: one path on one mutant, its outcome written to `out`."""
    try:
        _api(path) if which == "api" else _info(path)
        exc = None
    except BaseException as e:  # noqa: BLE001 - every exception is a finding to classify
        exc = e
    try:
        kind, detail = classify(path, exc)
    except BaseException as e:  # noqa: BLE001
        kind, detail = "unclear", f"classify: {e!r}"
    Path(out).write_text(json.dumps([kind, detail]))


MEM_LIMIT = [8 << 30]  # bytes of address space per child (0: none; ASan needs none)


def run_one(path: str, which: str, timeout: float) -> tuple[str, str]:
    """Fork, run one path on one mutant, wait at most timeout seconds."""
    out = path + f".{which}.json"
    pid = os.fork()
    if pid == 0:  # the child never returns into the fuzzer
        code = 0
        try:
            os.setpgid(0, 0)
            if MEM_LIMIT[0]:  # an allocation sized by a corrupted field fails here, not on the machine
                resource.setrlimit(resource.RLIMIT_AS, (MEM_LIMIT[0], MEM_LIMIT[0]))
            _child(path, which, out)
        except BaseException:  # noqa: BLE001
            code = 3
        os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "hang", f"no answer in {timeout:.0f} s"
        time.sleep(0.002)
    if os.WIFSIGNALED(status):
        return "crash", f"signal {os.WTERMSIG(status)} ({signal.Signals(os.WTERMSIG(status)).name})"
    try:
        return tuple(json.loads(Path(out).read_text()))
    except (OSError, ValueError):
        return "crash", f"exit {os.WEXITSTATUS(status)} without an answer"
    finally:
        Path(out).unlink(missing_ok=True)


def mutant(bases: dict[str, bytes], seed: int, i: int) -> tuple[str, bytes, list[str]]:
    """Mutant i of the campaign `seed`: the same bytes on every run."""
    rng = random.Random(f"{seed}:{i}")
    arch = rng.choice(sorted(bases))
    data, what = mutate(bases[arch], rng)
    return arch, data, what


def campaign(archs: list[str], n: int, seed: int, timeout: float, workdir: Path, indices=None) -> list[dict]:
    """Run mutants [0, n) (or `indices`) in this process, one fork per path; a list of findings."""
    bases = {a: base_model(a, workdir).read_bytes() for a in archs}
    results = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for i in indices if indices is not None else range(n):
            arch, data, what = mutant(bases, seed, i)
            path = os.path.join(tmp, f"m{i}.gguf")
            Path(path).write_bytes(data)
            row = {"i": i, "arch": arch, "mutations": what}
            for which in ("api", "info"):
                row[which] = run_one(path, which, timeout)
            os.unlink(path)
            results.append(row)
    return results


def table(results: list[dict]) -> str:
    """Inputs and outcomes per path, as the hardening issue's table."""
    lines = [f"{'path':<6}{'inputs':>8}" + "".join(f"{o:>9}" for o in OUTCOMES)]
    for which in ("api", "info"):
        c = Counter(r[which][0] for r in results)
        lines.append(f"{which:<6}{len(results):>8}" + "".join(f"{c[o]:>9}" for o in OUTCOMES))
    return "\n".join(lines)


def findings(results: list[dict]) -> list[str]:
    """One line per unclear, hang or crash outcome."""
    out = []
    for r in results:
        for which in ("api", "info"):
            kind, detail = r[which]
            if kind in ("unclear", "hang", "crash"):
                out.append(f"#{r['i']} {r['arch']} {which} {kind}: {detail} <- {'; '.join(r['mutations'])}")
    return out


def _parallel(a: argparse.Namespace, archs: list[str], workdir: Path) -> list[dict]:
    """--jobs worker processes, each a share of the indices (each forks its own children)."""
    for arch in archs:  # written once, before the workers read them
        base_model(arch, workdir)
    indices = [list(range(a.n))[j :: a.jobs] for j in range(a.jobs)]
    pipes = []
    for share in indices:
        r, w = os.pipe()
        if os.fork() == 0:  # a worker: never returns into main
            os.close(r)
            try:
                res = campaign(archs, a.n, a.seed, a.timeout, workdir, share)
            except BaseException as e:  # noqa: BLE001 - reported by the parent
                res = [
                    {
                        "i": -1,
                        "arch": "-",
                        "mutations": [],
                        "api": ["crash", f"worker: {e!r}"],
                        "info": ["-", ""],
                    }
                ]
            with os.fdopen(w, "w") as f:
                json.dump(res, f)
            os._exit(0)
        os.close(w)
        pipes.append(r)
    results = []
    for r in pipes:
        with os.fdopen(r) as f:
            results += json.load(f)
    while True:
        try:
            os.wait()
        except ChildProcessError:
            break
    return sorted(results, key=lambda r: r["i"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=500, help="mutants")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arch", default="llama,qwen2,gemma3,grok,llama-moe", help=f"of {', '.join(ARCHS)}")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--timeout", type=float, default=20.0, help="seconds per mutant and path")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "fitllm-fuzz"))
    p.add_argument("--only", type=int, action="append", help="replay these mutant indices")
    p.add_argument("--keep", help="write the --only mutant to this file")
    p.add_argument("--json", help="write every outcome here")
    p.add_argument("--mem-limit", type=float, default=8, help="GiB of address space per child (0: none)")
    a = p.parse_args(argv)
    archs = a.arch.split(",")
    MEM_LIMIT[0] = int(a.mem_limit * (1 << 30))
    workdir = Path(a.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # mutants' tokenizers and repacked strips must not fill the user's cache
    os.environ["FITLLM_CACHE"] = str(workdir / "cache")
    from fitllm import kernels

    kernels.set_threads(1)
    if a.keep and a.only:
        bases = {x: base_model(x, workdir).read_bytes() for x in archs}
        Path(a.keep).write_bytes(mutant(bases, a.seed, a.only[0])[1])
    t0 = time.time()
    results = (
        campaign(archs, a.n, a.seed, a.timeout, workdir, a.only)
        if a.jobs <= 1 or a.only
        else _parallel(a, archs, workdir)
    )
    print(table(results))
    print(f"{len(results)} inputs in {time.time() - t0:.0f} s (seed {a.seed}, {','.join(archs)})")
    for line in findings(results):
        print(line)
    if a.json:
        Path(a.json).write_text(json.dumps(results))
    return 1 if findings(results) else 0


if __name__ == "__main__":
    sys.exit(main())

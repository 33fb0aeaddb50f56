"""The fast tier of the GGUF fuzzer (benchmarks/fuzz_gguf.py): a fixed set of structure-aware mutants of
the tiny models, each loaded and run through the API and `fitllm info` in a forked child. Every
outcome must be a run or one GGUFError line: no traceback, hang or crash.

FITLLM_ASAN=1 adds a tier that runs a sample under AddressSanitizer (the kernels built with
-fsanitize=address into a scratch copy of the package): it needs a compiler and a minute or two."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FUZZ = ROOT / "benchmarks" / "fuzz_gguf.py"


def _run(
    tmp_path: Path, n: int, seed: int, env: dict | None = None, jobs: int = 2, mem: int = 8
) -> list[dict]:
    out = tmp_path / "results.json"
    cmd = [
        sys.executable,
        str(FUZZ),
        "--n",
        str(n),
        "--seed",
        str(seed),
        "--jobs",
        str(jobs),
        "--mem-limit",
        str(mem),
    ]
    cmd += ["--workdir", str(tmp_path / "work"), "--json", str(out), "--timeout", "30"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert out.exists(), p.stdout + p.stderr
    results = json.loads(out.read_text())
    bad = [line for line in p.stdout.splitlines() if line.startswith("#")]
    assert p.returncode == 0 and not bad, p.stdout[-4000:] + p.stderr[-2000:]
    return results


def test_fuzz_fast_tier(tmp_path):
    results = _run(tmp_path, 240, seed=7)
    assert len(results) == 240
    for path in ("api", "info"):
        kinds = {r[path][0] for r in results}
        assert kinds <= {"ok", "error"}, kinds
    # the mutants mostly break the file: most end in an error, some run (harmless edits)
    assert sum(r["api"][0] == "error" for r in results) > 150


def _asan_runtime() -> str | None:
    cc = shutil.which("gcc")
    if not cc:
        return None
    lib = subprocess.run([cc, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    return lib if os.path.isabs(lib) and os.path.exists(lib) else None


ASAN = os.environ.get("FITLLM_ASAN") == "1"


@pytest.mark.skipif(not ASAN, reason="set FITLLM_ASAN=1 to run the fuzzer under ASan")
def test_fuzz_under_asan(tmp_path):
    runtime = _asan_runtime()
    if runtime is None:
        pytest.skip("no gcc with libasan to build the sanitized kernels")
    pkg = tmp_path / "src"
    shutil.copytree(ROOT / "src", pkg, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    shutil.copy(ROOT / "setup.py", tmp_path)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    flags = {"CFLAGS": "-fsanitize=address -fno-omit-frame-pointer -g", "LDFLAGS": "-fsanitize=address"}
    subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tmp_path, check=True,
        capture_output=True, env={**os.environ, **flags},
    )  # fmt: skip
    built = list((pkg / "fitllm" / "kernels").glob("_fitllm*.so"))
    assert built and b"__asan_init" in built[0].read_bytes()  # the tier is not run without the sanitizer
    env = {"LD_PRELOAD": runtime, "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1", "PYTHONPATH": str(pkg)}
    # a sanitizer report aborts the child: counted as a crash, which _run refuses
    results = _run(tmp_path, 60, seed=11, env=env, jobs=1, mem=0)  # ASan maps terabytes of shadow
    assert all(r["api"][0] in ("ok", "error") for r in results)

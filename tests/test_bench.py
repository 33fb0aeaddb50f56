"""`fitllm bench` (and the -m of every subcommand): checks before work, progress while it runs."""

import subprocess
import sys

import pytest

from fitllm import bench


def fitllm(*args):
    cmd = [sys.executable, "-m", "fitllm", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_a_missing_or_non_gguf_model_is_a_one_line_error(tmp_path):
    notes = tmp_path / "notes.gguf"
    notes.write_text("# not a model\n" * 10)
    for model, want in [(str(notes), "not a GGUF file"), (str(tmp_path / "none.gguf"), "no such file")]:
        for args in (["bench", "-r", "1"], ["run", "-n", "1"], ["chat"], ["perplexity", "-f", str(notes)],
                     ["serve", "--port", "0"]):  # fmt: skip
            r = fitllm(*args, "-m", model)
            assert r.returncode == 1 and r.stderr.startswith(f"fitllm: error: {model}: {want}"), args
            assert len(r.stderr.splitlines()) == 1, (args, r.stderr)


def test_vs_llamacpp_without_the_extra_fails_before_measuring(smollm2_path, monkeypatch, capsys):
    from fitllm.cli import main

    def measure(*a, **kw):
        raise AssertionError("measured before the dependency was checked")

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp raises ImportError
    monkeypatch.setattr(bench, "_measure", measure)
    assert main(["bench", "-m", smollm2_path, "--vs-llamacpp"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fitllm: error: --vs-llamacpp needs llama-cpp-python")
    assert err.endswith('pip install "fitllm[bench]"\n') and len(err.splitlines()) == 1


def test_a_line_of_progress_per_measurement(smollm2_path, monkeypatch, capsys):
    speeds = {"load_s": 0.1, "prompt_tps": 100.0, "decode_tps": 20.0, "rss": 1e8}
    monkeypatch.setattr(bench, "_measure", lambda *a, **kw: speeds)
    monkeypatch.setattr(bench, "_byte_compile", lambda: None)
    monkeypatch.setattr(bench, "memory_bandwidth_gbs", lambda *a, **kw: 10.0)
    report = bench.run_bench(smollm2_path, 2, 8, 4, 2, False)
    assert "fitllm " in report and "100.0 ±0.0" in report
    err = capsys.readouterr().err.splitlines()
    assert err[:2] == [
        f"fitllm: bench {i}/2: fitllm, round {i}/2 ... prompt 100.0 tok/s, decode 20.0 tok/s (0 s)"
        for i in (1, 2)
    ]
    assert err[2] == "fitllm: measuring the memory bandwidth ..."


@pytest.mark.parametrize("size", [0, 100])
def test_a_truncated_model_is_refused_before_measuring(smollm2_path, tmp_path, size, monkeypatch):
    from fitllm.gguf import GGUFError

    cut = tmp_path / "cut.gguf"
    cut.write_bytes(open(smollm2_path, "rb").read(size or 3_000_000))
    monkeypatch.setattr(bench, "_measure", lambda *a, **kw: pytest.fail("measured a corrupt file"))
    with pytest.raises(GGUFError, match="truncated or corrupt|too small"):
        bench.run_bench(str(cut), 2, 8, 4, 1, False)


def test_llama_cpp_runs_with_its_own_openmp_defaults(monkeypatch):
    # fitllm bounds libgomp's spinning for itself; the peer is measured as its users run it
    from fitllm import kernels

    seen = {}

    def run(cmd, env, **kw):
        seen[cmd[3]] = env
        return subprocess.CompletedProcess(cmd, 0, stdout='{"decode_tps": 1}\n', stderr="")

    monkeypatch.setattr(kernels, "OWN_ENV", {"GOMP_SPINCOUNT": "10000"})
    monkeypatch.setenv("GOMP_SPINCOUNT", "10000")
    monkeypatch.setattr(subprocess, "run", run)
    for engine in bench.ENGINES:
        bench._measure(engine, "m.gguf", 2, 8, 8)
    assert seen["fitllm"]["GOMP_SPINCOUNT"] == "10000"
    assert "GOMP_SPINCOUNT" not in seen["llama.cpp"]
    monkeypatch.setenv("GOMP_SPINCOUNT", "500")  # the user's own setting goes to both
    bench._measure("llama.cpp", "m.gguf", 2, 8, 8)
    assert seen["llama.cpp"]["GOMP_SPINCOUNT"] == "500"

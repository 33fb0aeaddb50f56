"""`fitllm run` / `info` / `convert` as a user calls them."""

import json
import subprocess
import sys

import pytest

from conftest import golden

pytestmark = pytest.mark.e2e


def fitllm(*args, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "fitllm", *args], capture_output=True, text=True, input=stdin, timeout=300
    )


def test_run_greedy(smollm2_path):
    # llama.cpp's greedy tokens (tests/data/golden_smollm2.json), as text after the prompt
    from fitllm.gguf import GGUFFile
    from fitllm.tokenizer import GGUFTokenizer

    case = golden("smollm2")["greedy"][0]
    want = GGUFTokenizer(GGUFFile(smollm2_path)).decode(case["tokens"][:6]).decode()
    r = fitllm("run", "-m", smollm2_path, "-p", case["prompt"], "-n", "6", "--temp", "0", "-c", "128")
    assert r.returncode == 0, r.stderr
    assert r.stdout == case["prompt"] + want + "\n"


def test_run_default_model_and_interactive(smollm2_path):
    r = fitllm("run", "-p", "Hello", "-n", "4", "--seed", "1", "-i", "-c", "256", stdin="How are you?\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Hello") and r.stdout.count("> ") >= 1


def test_info(smollm2_path):
    r = fitllm("info", smollm2_path)
    assert r.returncode == 0
    for want in ("architecture:  llama", "n_layer        30", "Q4_1", "Q8_0", "gpt2 (pre=smollm)"):
        assert want in r.stdout


def test_convert_then_run(tmp_path):
    from grok1_fixture import TINY_VOCAB, TOKENIZER, make_params, write_checkpoint

    write_checkpoint(tmp_path / "grok", make_params({**TINY_VOCAB, "num_layers": 1}))
    (tmp_path / "c.json").write_text(json.dumps({**TINY_VOCAB, "num_layers": 1}))
    out = tmp_path / "g.gguf"
    r = fitllm("convert", str(tmp_path / "grok" / "ckpt-0"), "-o", str(out), "--type", "q8_0",
               "--tokenizer", str(TOKENIZER), "--config", str(tmp_path / "c.json"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "convert -> g.gguf" in r.stderr and "100%" in r.stderr  # the progress bar
    r = fitllm("run", "-m", str(out), "-p", "The answer to life", "-n", "4", "--temp", "0")
    assert r.returncode == 0 and r.stdout.startswith("The answer to life"), r.stderr
    r = fitllm("info", str(out))
    assert "architecture:  grok" in r.stdout
    r = fitllm("convert", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x.gguf"))
    assert r.returncode == 1 and "no such checkpoint folder" in r.stderr


def test_version():
    from fitllm.cli_args import version

    r = fitllm("--version")
    assert r.returncode == 0 and r.stdout == f"fitllm {version()}\n", r.stderr


def test_verbose_before_or_after_the_subcommand():
    from fitllm.cli_args import build_parser

    p = build_parser()
    assert p.parse_args(["-v", "info", "x.gguf"]).verbose
    assert p.parse_args(["info", "x.gguf", "-v"]).verbose
    assert p.parse_args(["plan", "--verbose", "--arch", "grok-1"]).verbose
    assert not p.parse_args(["info", "x.gguf"]).verbose


def test_bad_counts_are_one_line_errors():
    for args, want in [
        (["run", "-n", "-5"], "-1 (no limit)"),
        (["run", "-t", "0"], "threads must be at least 1"),
        (["run", "-t", "-3"], "threads must be at least 1"),
        (["bench", "-t", "0"], "threads must be at least 1"),
        (["quantize", "a", "b", "Q8_0", "-t", "-1"], "threads must be at least 1"),
    ]:
        r = fitllm(*args)
        assert r.returncode == 2 and want in r.stderr, (args, r.stderr)
        assert len(r.stderr.splitlines()) == 1 and r.stdout == "", (args, r.stderr)


def test_run_prints_llama_cpp_timings_and_n_0_generates_nothing(smollm2_path):
    r = fitllm("run", "-m", smollm2_path, "-p", "Hello", "-n", "2", "--temp", "0", "-c", "64")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    for label in ("load time", "prompt eval time", "eval time", "total time"):
        assert any(f"{label} =" in line and " ms" in line for line in lines), (label, r.stderr)
    assert "/     1 runs" in r.stderr and "tokens per second" in r.stderr  # 2 tokens: 1 evaluated
    r = fitllm("run", "-m", smollm2_path, "-p", "Hello", "-n", "0", "-c", "64")
    assert r.returncode == 0 and r.stdout == "Hello\n" and "/     0 runs" in r.stderr, r.stderr


def test_a_prompt_longer_than_the_context_is_refused_before_it_is_printed(smollm2_path):
    r = fitllm("run", "-m", smollm2_path, "-p", "one two three four five six", "-c", "4")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("fitllm: error: the prompt is") and len(r.stderr.splitlines()) == 1


def test_sigterm_mid_quantize_leaves_no_part_and_keeps_the_destination(smollm2_path, tmp_path):
    import signal
    import time

    out = tmp_path / "q.gguf"
    out.write_bytes(b"the previous model")
    part = tmp_path / "q.gguf.part"
    cmd = [
        sys.executable,
        "-m",
        "fitllm",
        "quantize",
        smollm2_path,
        str(out),
        "Q8_0",
        "-t",
        "1",
        "--no-progress",
    ]
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (part.exists() and part.stat().st_size > 4 << 20):  # tensors are being written
        assert p.poll() is None and time.time() < deadline, "quantize ended before it could be stopped"
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)
    err = p.communicate(timeout=60)[1].decode()
    assert p.returncode == 143, err
    assert not part.exists()
    assert out.read_bytes() == b"the previous model"

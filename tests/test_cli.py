"""`fitllm run` / `info` / `convert` as a user calls them."""

import json
import subprocess
import sys

from conftest import golden


def fitllm(*args, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "fitllm", *args], capture_output=True, text=True, input=stdin, timeout=300
    )


def test_run_greedy(smollm2_path):
    case = golden("smollm2")["greedy"][0]
    r = fitllm("run", "-m", smollm2_path, "-p", case["prompt"], "-n", "6", "--temp", "0", "-c", "128")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(case["prompt"])
    assert case["prompt"].split()[-1] in r.stdout


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

"""`fitllm run` / `fitllm info` as a user calls them."""

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

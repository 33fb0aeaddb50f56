"""Perplexity scored as llama.cpp's tool, against llama.cpp's own numbers on the same files and text."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import DATA, golden
from fitllm.api import Llama
from fitllm.perplexity import perplexity, score


def test_score_is_minus_log_softmax():
    logits = np.array([[0.0, np.log(3.0)], [5.0, 5.0]], np.float32)
    np.testing.assert_allclose(score(logits, np.array([1, 0])), [np.log(4 / 3), np.log(2)], rtol=1e-6)


@pytest.mark.parametrize("name", ["smollm2", "gemma"])
def test_perplexity_agrees_with_llama_cpp(model_paths, name):
    g = golden("perplexity")[name]  # made by tests/golden/perplexity.py
    llm = Llama(model_paths[name], n_ctx=g["n_ctx"], verbose=False)
    tokens = llm.tokenize((DATA / "ppl_text.txt").read_bytes(), add_bos=True)
    assert len(tokens) == g["n_tokens"]
    bos = llm._tok.bos_id if llm._tok.add_bos else None
    r = perplexity(llm._model, tokens, g["n_ctx"], 64, bos, progress=False)
    assert abs(r.ppl / g["ppl"] - 1) <= 0.005  # measured: smollm2 +0.16 %, gemma -0.22 %
    assert len(r.running) == len(g["running"]) and r.tokens_scored == len(r.running) * (g["n_ctx"] // 2 - 1)


@pytest.mark.e2e
def test_cli(tmp_path):
    cmd = [sys.executable, "-m", "fitllm", "perplexity", "-f", str(DATA / "ppl_text.txt"), "-c", "128"]
    out = subprocess.run(cmd + ["--chunks", "2"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("[1]") and "Final estimate: PPL = " in out.stdout
    with pytest.raises(ValueError, match="at least one chunk"):
        perplexity(None, [1, 2, 3], 128, 64, None)
    assert Path(DATA / "ppl_text.txt").stat().st_size > 4000


def test_sweep_writes_a_table_and_a_chart(smollm2_path, tmp_path, capsys):
    from fitllm.perplexity import sweep, sweep_path

    text = (DATA / "ppl_text.txt").read_text()
    table, chart = sweep(smollm2_path, text, str(tmp_path), types=("Q8_0", "Q4_0"), n_ctx=128)
    err = capsys.readouterr().err.splitlines()
    steps = [line for line in err if line.startswith("fitllm: sweep ")]
    assert [line.split(":")[1] for line in steps] == [" sweep 1/2 Q8_0", " sweep 2/2 Q4_0"], err
    assert all(re.search(r"MB, PPL \d+\.\d{4} \(\d+ s\)$", line) for line in steps), steps
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.md", "sweep.png"]  # no models left
    short = text[:1500]  # two chunks: enough to keep a model
    sweep(smollm2_path, short, str(tmp_path / "k"), types=("Q4_0",), n_ctx=128, keep=True, progress=False)
    assert Path(sweep_path(smollm2_path, str(tmp_path / "k"), "Q4_0")).stat().st_size > 50e6
    assert capsys.readouterr().err == ""
    rows = Path(table).read_text().splitlines()
    assert rows[0].startswith("| type | file MB | PPL") and [r.split(" | ")[0] for r in rows[2:]] == [
        "| Q8_0",
        "| Q4_0",
    ]
    assert Path(chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

"""Split runs under mpirun (Open MPI): the same tokens and logits as one process, in both split
modes, on a real model and a MoE one; each rank's resident weights are its share; failures and
misconfigurations end every rank with a message. Each test starts an mpirun job (tests/mpi_job.py)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from fitllm.distributed.comm import LOCAL_MPIRUN
from fitllm.gguf import GGUFFile
from fitllm.models import load_model
from mpi_job import PROMPT
from tiny_models import upcycle

if not shutil.which("mpirun") or not __import__("importlib").util.find_spec("mpi4py"):
    if os.environ.get("FITLLM_REQUIRE_MPI"):  # CI installs Open MPI: there a skip would hide a failure
        raise RuntimeError("mpirun or mpi4py is missing")
    pytest.skip("needs Open MPI (mpirun) and mpi4py", allow_module_level=True)

pytestmark = pytest.mark.e2e
JOB = str(Path(__file__).parent / "mpi_job.py")
MPIRUN = LOCAL_MPIRUN


def job_env(**extra: str) -> dict[str, str]:
    """The jobs import mpi_job.py from here and fitllm from where the tests do (PYTHONPATH=src)."""
    path = os.pathsep.join(filter(None, [str(Path(JOB).parent), os.environ.get("PYTHONPATH")]))
    return {**os.environ, **extra, "PYTHONPATH": path}


def mpirun(n: int, model: str, mode: str, out: Path, shares: str = "-", extra=(), timeout=180):
    cmd = [*MPIRUN, "-n", str(n), sys.executable, JOB, model, mode, shares, str(out), *extra]
    env = job_env(FITLLM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def one_process(path: str) -> tuple[np.ndarray, list[int], float]:
    """Logits of PROMPT, 12 greedy tokens, and the float tolerance: the relative change of the
    logits when the embeddings are perturbed by ~1 ulp (1e-7), the most that adding the same
    numbers in another order can be asked to keep."""
    m = load_model(GGUFFile(path))
    kv = m.new_cache(64)
    toks = np.array([t % m.hp.n_vocab for t in PROMPT])
    logits = m.forward(toks, kv, all_logits=True)
    top2 = np.sort(logits[-1])[-2:]
    greedy, gaps, tok = [], [float(top2[1] - top2[0])], int(logits[-1].argmax())
    for _ in range(12):
        greedy.append(tok)
        last = m.forward(np.array([tok]), kv)[-1]
        top2 = np.sort(last)[-2:]
        gaps.append(float(top2[1] - top2[0]))
        tok = int(last.argmax())
    embed, rng, tol = m.embed, np.random.default_rng(0), 0.0
    for _ in range(2):
        m.embed = lambda t: (
            embed(t) * (1 + 1e-7 * rng.standard_normal((len(t), m.hp.n_embd))).astype(np.float32)
        )
        moved = m.forward(toks, m.new_cache(64), all_logits=True)
        tol = max(tol, np.linalg.norm(moved - logits) / np.linalg.norm(logits))
    return logits, (greedy, gaps), tol


def same_greedy(got: list[int], ref: tuple[list[int], list[float]]) -> bool:
    """The same greedy tokens up to the first near tie (top two within 0.5) of the reference, where
    sums in another order may pick the other one."""
    tokens, gaps = ref
    k = next((i for i, g in enumerate(gaps[: len(tokens)]) if g < 0.5), len(tokens))
    return len(got) == len(tokens) and got[:k] == tokens[:k]


@pytest.fixture(scope="module")
def models(smollm2_path, tmp_path_factory):
    moe = upcycle(smollm2_path, tmp_path_factory.mktemp("moe") / "moe.gguf", noise=0.05)
    return {"smollm2": smollm2_path, "moe": moe}


@pytest.fixture(scope="module")
def reference(models):
    return {name: one_process(p) for name, p in models.items()}


@pytest.mark.parametrize("name", ["smollm2", "moe"])
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("mode", ["layer", "tensor"])
def test_split_run_is_one_process(models, reference, tmp_path, name, n, mode):
    r = mpirun(n, models[name], mode, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    logits, greedy, tol = reference[name]
    assert same_greedy(json.loads((tmp_path / "greedy.json").read_text()), greedy)
    got = np.load(tmp_path / "logits.npy")
    if mode == "layer":  # the same kernels on the same rows: bit-identical
        np.testing.assert_array_equal(got, logits)
    else:
        # partial sums added over ranks: the order of float additions differs (1e-7), and where that
        # moves an activation across a rounding edge of its 8-bit quantization the next layer sees
        # another quantum: SmolLM2 (|x| up to 25000) moves its logits by 2-3 % for a 1e-7 nudge
        err = np.linalg.norm(got - logits) / np.linalg.norm(logits)
        assert err <= 2 * tol, (err, tol)
    stats = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(n)]
    total = GGUFFile(models[name]).tensors
    # each rank holds its share, and not more; Linux 6.16+ maps a file's large page-cache folios
    # whole on a fault (ext4: up to 2 MiB), so a range's first and last page may bring in a folio each
    for s in stats:
        assert s["resident"] <= 1.05 * s["share"] + 4 * 2**20
        assert s["share"] <= 1.1 * sum(t.nbytes for t in total.values()) / n


def test_tensor_split_shares_a_kv_head_over_ranks(gemma3_path, tmp_path):
    # Gemma 3 270M: 4 query heads on 1 KV head, Q4_K/Q6_K (256-element blocks), q/k norms, sliding
    # windows: 3 ranks each compute the one KV head
    logits, greedy, tol = one_process(gemma3_path)
    r = mpirun(3, gemma3_path, "tensor", tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert same_greedy(json.loads((tmp_path / "greedy.json").read_text()), greedy)
    got = np.load(tmp_path / "logits.npy")
    assert np.linalg.norm(got - logits) / np.linalg.norm(logits) <= 2 * tol


def test_uneven_shares(models, reference, tmp_path):
    r = mpirun(2, models["smollm2"], "tensor", tmp_path, shares="3,1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert same_greedy(json.loads((tmp_path / "greedy.json").read_text()), reference["smollm2"][1])
    a, b = (json.loads((tmp_path / f"rank{r}.json").read_text())["share"] for r in range(2))
    assert 2.5 <= a / b <= 3.5


def test_killed_rank_ends_the_job(models, tmp_path):
    r = mpirun(3, models["smollm2"], "layer", tmp_path, extra=["1"], timeout=90)
    waited = time.time() - float((tmp_path / "killing").read_text())  # from the kill to the job's end
    assert r.returncode != 0
    assert waited < 30
    assert "rank 1" in r.stdout + r.stderr


def two_ranks(tmp_path, model0: str, model1: str, rank1_env: tuple[str, ...] = ()):
    """A job of two differently started ranks (mpirun's MPMD form)."""
    job = [sys.executable, JOB, "layer", "-", str(tmp_path)]
    a, b = ([*job[:2], m, *job[2:]] for m in (model0, model1))
    cmd = [*MPIRUN, "-n", "1", *a, ":", "-n", "1", *rank1_env, *b]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=job_env())


def test_different_model_files_are_refused(models, tmp_path):
    r = two_ranks(tmp_path, models["smollm2"], models["moe"])
    assert r.returncode != 0
    assert "model file" in r.stderr and "rank(s) 1" in r.stderr


def test_rank_short_of_memory_is_refused(models, tmp_path):
    r = two_ranks(tmp_path, models["smollm2"], models["smollm2"], ("-x", "FITLLM_MEMORY=300M"))
    assert r.returncode != 0
    assert "rank 1 needs" in r.stderr


def test_more_ranks_than_layers_is_refused(tmp_path):
    from tiny_models import write_tiny

    path = write_tiny(tmp_path / "baby.gguf", "llama", n_layer=2)
    r = mpirun(3, str(path), "layer", tmp_path)
    assert r.returncode != 0
    assert "3 ranks but the model has 2 layers" in r.stderr


SLOTS_JOB = str(Path(__file__).parent / "mpi_slots_job.py")


def slots_job(model: str, mode: str, out: Path, idle_s: float, timeout_s: float) -> dict:
    cmd = [*MPIRUN, "-n", "2", sys.executable, SLOTS_JOB, model, mode, str(out), str(idle_s), str(timeout_s)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=job_env(FITLLM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((out / "slots.json").read_text())


@pytest.mark.parametrize("mode", ["layer", "tensor"])
def test_two_caches_take_turns(models, reference, tmp_path, mode):
    # slots a and b run the same prompt at different times, so a cache shared on the other ranks
    # would overwrite a's positions with b's
    got = slots_job(models["smollm2"], mode, tmp_path, 0, 60)
    assert same_greedy(got["a"], reference["smollm2"][1])
    assert same_greedy(got["b"], reference["smollm2"][1])
    assert got["n_slots"] == 2  # a dead cache's slot is reused: memory stays bounded


def test_idle_longer_than_the_mpi_timeout(models, reference, tmp_path):
    # rank 0 idles 4 s between steps (a server without requests, a prompt at the terminal) with a
    # 2 s timeout: the other ranks wait for the next step, which then still works
    got = slots_job(models["smollm2"], "layer", tmp_path, 4, 2)
    assert same_greedy(got["b"], reference["smollm2"][1])


def test_split_server_answers_two_slots_after_idling(smollm2_path):
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve = [sys.executable, "-m", "fitllm", "serve", "-m", smollm2_path, "-c", "256", "--port", str(port)]
    env = job_env(FITLLM_THREADS="1", FITLLM_MPI_TIMEOUT="2")
    p = subprocess.Popen([*MPIRUN, "-n", "2", *serve, "--parallel", "2"], env=env, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            assert p.poll() is None and time.time() < deadline, "the server did not start"
            try:
                httpx.get(url + "/health")
                break
            except httpx.TransportError:
                time.sleep(0.5)
        time.sleep(3)  # idle for longer than the MPI timeout
        body = {"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}
        with ThreadPoolExecutor(2) as ex:
            rs = list(ex.map(lambda _: httpx.post(url + "/v1/completions", json=body, timeout=120), range(2)))
        assert [r.status_code for r in rs] == [200, 200], [r.text for r in rs]
        texts = {r.json()["choices"][0]["text"] for r in rs}
        assert len(texts) == 1 and texts != {""}
    finally:
        p.terminate()
        err = p.communicate(timeout=60)[1].decode(errors="replace")
    assert "giving up" not in err, err[-2000:]


def _byte_parts(path: str, folder: Path) -> str:
    """path cut into 3 byte parts as split(1) cuts an upload; the first part's path."""
    data, folder = Path(path).read_bytes(), Path(folder)
    folder.mkdir()
    k = -(-len(data) // 3)
    for i in range(3):
        (folder / f"moe.gguf.part{i + 1}of3").write_bytes(data[i * k : (i + 1) * k])
    return str(folder / "moe.gguf.part1of3")


@pytest.mark.parametrize("cut", ["shards", "byte parts"])
@pytest.mark.parametrize("mode", ["layer", "tensor"])
def test_split_files_under_mpirun(models, reference, tmp_path, mode, cut):
    """gguf-split shards and byte parts of the MoE: each rank maps its tensors from whichever file
    holds them, with the single file's results."""
    from fitllm.gguf.split import split_gguf

    src = models["moe"]
    if cut == "shards":
        path = split_gguf(src, str(tmp_path / "s" / "moe"), max_tensors=60)[0]
    else:
        path = _byte_parts(src, tmp_path / "p")
    r = mpirun(2, path, mode, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    logits, greedy, tol = reference["moe"]
    assert same_greedy(json.loads((tmp_path / "greedy.json").read_text()), greedy)
    got = np.load(tmp_path / "logits.npy")
    if mode == "layer":
        np.testing.assert_array_equal(got, logits)
    else:
        assert np.linalg.norm(got - logits) / np.linalg.norm(logits) <= 2 * tol

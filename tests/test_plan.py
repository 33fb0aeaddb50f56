"""`fitllm plan`: bytes from real shapes, splits, fits."""

import subprocess
import sys

import pytest

from fitllm import plan as P
from fitllm.gguf import GGUFFile


def test_sizes_and_hosts():
    assert P.parse_hosts("4x64G") == [64 << 30] * 4
    assert P.parse_hosts("64G,32G") == [64 << 30, 32 << 30]
    assert P.parse_size("1.25G", binary=False) == 1_250_000_000
    with pytest.raises(ValueError):
        P.parse_size("lots")


def test_grok1_bytes_from_real_shapes():
    # Grok-1 (run.py): D 6144, F 32768, 48 x 128 query / 8 x 128 KV heads, 8 experts, vocab 131072, 64 layers
    D, F, E, V, L = 6144, 32768, 8, 131072, 64
    q4k = lambda n: n // 256 * 144  # noqa: E731
    q8 = lambda n: n // 32 * 34  # noqa: E731
    per_layer = q4k(3 * E * F * D) + q4k(2 * D * 6144 + 2 * 1024 * D) + 4 * (4 * D + E * D)
    want = L * per_layer + q8(V * D) + 4 * D  # the tied embedding at 8 bits, output norm
    m = P.shape_of_grok1("q4_k")
    assert m.weight_bytes == want
    assert m.read_per_token() < want / 3  # 2 of 8 experts per token


def test_splits(smollm2_path):
    m = P.shape_of_gguf(smollm2_path)
    f = GGUFFile(smollm2_path)
    total = sum(t.nbytes for t in f.tensors.values())
    assert m.weight_bytes == total
    hosts = [2 << 30, 1 << 30, 1 << 30]
    pipe = P.pipeline_split(m, hosts, 2048)
    assert pipe.layers[0][0] == 0 and pipe.layers[-1][1] == 30
    assert all(a < b and b == c for (a, b), (c, _) in zip(pipe.layers, pipe.layers[1:]))
    assert pipe.layers[0][1] - pipe.layers[0][0] > pipe.layers[1][1] - pipe.layers[1][0]  # bigger host, more
    tens = P.tensor_split(m, hosts, 2048)
    assert abs(sum(tens.weights) - total) <= 3
    text, fits = P.plan(m, hosts, 2048, 20e9, 50e-6, 1.25e9)
    assert fits and "pipeline split: fits" in text
    text, fits = P.plan(m, [100 << 20], 2048, 20e9, 50e-6, 1.25e9)
    assert not fits and "too big" in text


def test_test_models_by_name_at_a_quantization(smollm2_path):
    # SmolLM2 re-typed at Q4_1 by convert's rules is byte for byte the Q4_1 file llama.cpp made
    # (the tied embedding at Q8_0); at Q8_0, 143025408 bytes as llama.cpp's Q8_0 file has
    real = P.shape_of_gguf(smollm2_path)
    assert P.ARCHS["smollm2-135m"]("Q4_1").tensors == real.tensors
    assert P.ARCHS["smollm2-135m"]("q8_0").weight_bytes == 143025408
    with pytest.raises(ValueError, match="unknown quantization"):
        P.shape_of_gguf(smollm2_path, "q3_x")


def test_pipeline_balances_bytes_around_a_big_head(gemma3_path):
    # Gemma 3 270M: 18 layers of ~4 MB and a tied 170 MB embedding-output, which goes to the last
    # rank; the layers before it are split evenly, not left to fill the first rank
    m = P.shape_of_gguf(gemma3_path)
    pipe = P.pipeline_split(m, [1, 1, 1], 512)
    assert pipe.weights[2] == max(pipe.weights) and pipe.layers[2][1] - pipe.layers[2][0] >= 1
    layer = max(sum(b for n, (_, b) in m.tensors.items() if n.startswith(f"blk.{i}.")) for i in range(18))
    assert abs(pipe.weights[0] - pipe.weights[1]) <= layer  # as even as whole layers allow
    grok = P.shape_of_grok1("q4_k")
    pipe = P.pipeline_split(grok, [64, 32, 32], 8192)  # bytes in proportion to memory
    assert [b - a for a, b in pipe.layers] == [32, 16, 16]
    with pytest.raises(ValueError, match="65 hosts but the model has 64 layers"):
        P.pipeline_split(grok, [1] * 65, 8192)


@pytest.mark.e2e
def test_cli_suggests_a_quantization():
    r = subprocess.run(
        [sys.executable, "-m", "fitllm", "plan", "--arch", "grok-1", "--quant", "q4_k", "--hosts", "8x32G",
         "--bandwidth", "50G"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "Q4_K" in r.stdout and "tensor split: fits" in r.stdout and "suggested: --quant" in r.stdout


def test_run_refuses_a_model_bigger_than_memory(smollm2_path, monkeypatch):
    from fitllm import Llama

    monkeypatch.setattr(P, "machine_memory", lambda: 200 << 20)  # weights + overhead are ~690 MB
    with pytest.raises(MemoryError, match="--mmap-stream"):
        Llama(smollm2_path, verbose=False)
    assert Llama(smollm2_path, verbose=False, mmap_stream=True).n_vocab() == 49152


def test_expert_streaming_estimate():
    # Grok-1 Q4_K on one 128 GiB host: the dense part (attention, embedding) and KV stay, the rest
    # of the memory caches 384 of the 512 (64 layers x 8) experts
    g = P.shape_of_grok1("q4_k")
    text = P.stream_estimate(g, 128 << 30, 8192, 5e9, 400e9)
    assert "384 of 512 experts cached, hit rate 75%" in text
    assert "~0.44 tok/s" in text
    assert "hit rate 90% (given)" in P.stream_estimate(g, 128 << 30, 8192, 5e9, 400e9, hit_rate=0.9)
    assert P.stream_estimate(g, 400 << 30, 8192, 5e9, 400e9) is None  # it fits whole
    assert "does NOT fit" in P.stream_estimate(g, 6 << 30, 8192, 5e9, 400e9)  # dense 3.8 GiB + KV 2


def test_sizes_print_in_human_units(smollm2_path):
    assert [P.human_size(n) for n in (512, 1 << 20, 1536 << 20, 3 << 40)] == [
        "512 B", "1.00 MiB", "1.50 GiB", "3.00 TiB",
    ]  # fmt: skip
    from fitllm import Llama

    with pytest.raises(MemoryError, match=r"needs \d+\.\d\d MiB .* but the memory budget is 1.00 MiB"):
        Llama(smollm2_path, verbose=False, memory_budget="1M")
    text, _ = P.plan(P.shape_of_gguf(smollm2_path), [100 << 20], 2048, 20e9, 50e-6, 1.25e9)
    assert "of 100.00 MiB  <- too big" in text


def test_bandwidth_is_measured_only_for_this_machine(monkeypatch, capsys):
    import fitllm.bench
    from fitllm.cli import main

    def measured(*a, **kw):
        raise AssertionError("this machine's bandwidth says nothing of --hosts")

    monkeypatch.setattr(fitllm.bench, "memory_bandwidth_gbs", measured)
    assert main(["plan", "--arch", "smollm2-135m", "--hosts", "2x1G"]) == 0
    assert "memory bandwidth 50 GB/s (assumed" in capsys.readouterr().out
    assert main(["plan", "--arch", "smollm2-135m", "--hosts", "2x1G", "--bandwidth", "80G"]) == 0
    assert "memory bandwidth 80 GB/s (given)" in capsys.readouterr().out
    monkeypatch.setattr(fitllm.bench, "memory_bandwidth_gbs", lambda *a, **kw: 12.3)
    assert main(["plan", "--arch", "smollm2-135m"]) == 0
    assert "memory bandwidth 12 GB/s (measured on this machine" in capsys.readouterr().out


def fake_cgroup(tmp_path, monkeypatch, line: str, files: dict[str, str]) -> None:
    """This process in a fake cgroup tree: /proc/self/cgroup's line, and limit files under the root."""
    (tmp_path / "cgroup").write_text(line + "\n")
    for rel, text in files.items():
        (tmp_path / "root" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "root" / rel).write_text(text + "\n")
    monkeypatch.setattr(P, "PROC_CGROUP", str(tmp_path / "cgroup"))
    monkeypatch.setattr(P, "CGROUP_ROOT", str(tmp_path / "root"))


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_fitllm_memory_cannot_raise_a_cgroup_limit(tmp_path, monkeypatch, version):
    if version == "v2":  # the limit is on the parent; the leaf has none
        files = {"job/memory.max": "209715200", "job/task/memory.max": "max"}
        fake_cgroup(tmp_path, monkeypatch, "0::/job/task", files)
    else:
        files = {"memory/job/memory.limit_in_bytes": "209715200"}
        fake_cgroup(tmp_path, monkeypatch, "4:memory:/job", files)
    monkeypatch.setenv("FITLLM_MEMORY", "100G")
    assert P.machine_memory() == 200 << 20
    monkeypatch.setenv("FITLLM_MEMORY", "150M")  # lower than the cgroup: it holds
    assert P.machine_memory() == 150 << 20


def test_a_model_over_the_cgroup_limit_is_refused_with_the_numbers(smollm2_path, tmp_path, monkeypatch):
    from fitllm import Llama

    fake_cgroup(tmp_path, monkeypatch, "0::/job", {"job/memory.max": "209715200"})
    monkeypatch.setenv("FITLLM_MEMORY", "100G")
    with pytest.raises(MemoryError, match=r"needs \d+\.\d\d MiB .* but this machine has 200.00 MiB"):
        Llama(smollm2_path, verbose=False)
    # a --memory-budget above the cgroup's limit is no more than the limit either
    with pytest.raises(MemoryError, match=r"but this machine has 200.00 MiB"):
        Llama(smollm2_path, verbose=False, memory_budget="100G")

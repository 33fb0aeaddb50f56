"""Expert streaming: a MoE run under a memory budget smaller than it gives the same tokens and
logits as with everything in memory, and keeps to the budget."""

import gc
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fitllm.api import Llama
from fitllm.expert_cache import ExpertCache
from fitllm.gguf import GGUFFile
from fitllm.models import load_model
from fitllm.models.base import HParams
from fitllm.plan import kv_bytes, resident_bytes, shape_of_gguf, work_bytes
from tiny_models import upcycle

PROMPT = b"The capital of France is Paris. The capital of Germany is"
FRESH = 100 << 20  # a new process's memory when it has loaded fitllm and a small model
N_LAYER = 4  # of SmolLM2's 30: every layer streams its experts alike


@pytest.fixture(scope="module")
def moe(smollm2_path, tmp_path_factory):
    # SmolLM2's first 4 layers, each MLP as 8 experts with perturbed gates (routing matters)
    path = tmp_path_factory.mktemp("moe") / "moe8.gguf"
    return upcycle(smollm2_path, path, n_expert=8, noise=0.05, n_layer=N_LAYER)


@pytest.fixture(autouse=True)
def steady_resident(monkeypatch):
    """This process's resident memory as the budget sees it, held still: measured, it drifts by
    megabytes between a test's budget and the load (page reclaim, allocator pools), which is more
    than a few cache slots of this small MoE."""
    import fitllm.plan

    now = resident_bytes()
    monkeypatch.setattr(fitllm.plan, "resident_bytes", lambda: now)
    monkeypatch.setitem(globals(), "resident_bytes", lambda: now)


@pytest.fixture(scope="module")
def uncapped(moe):
    llm = Llama(moe, n_ctx=128, verbose=False, logits_all=True)
    toks = llm.tokenize(PROMPT)
    text = llm.create_completion(toks, max_tokens=16, temperature=0)["choices"][0]["text"]
    llm.reset()
    llm.eval(toks)
    return toks, text, llm.scores[: len(toks)].copy()


def budget_for(path: str, share: float, resident: int | None = None) -> int:
    """A budget that leaves share of the experts' bytes for the cache after the dense part, the KV
    cache, the work buffers and the process itself (resident: its memory; default this one's now)."""
    shape = shape_of_gguf(path)
    other = kv_bytes(shape, 128, shape.n_layer) + work_bytes(HParams.from_gguf(GGUFFile(path)), 128)
    gc.collect()  # the caches of earlier tests: freed now, not inside the constructor
    resident = resident_bytes() if resident is None else resident
    return int(shape.weight_bytes - shape.expert_bytes + share * shape.expert_bytes + other + resident)


@pytest.mark.parametrize("policy", ["lru", "lfu"])
@pytest.mark.parametrize("share", [0.6, 0.1])
def test_streamed_experts_give_the_same_tokens(moe, uncapped, policy, share):
    toks, text, logits = uncapped
    llm = Llama(
        moe,
        n_ctx=128,
        verbose=False,
        logits_all=True,
        memory_budget=budget_for(moe, share),
        expert_cache=policy,
    )
    cache = llm._model
    assert isinstance(cache, ExpertCache) and cache.n_slots < 8 * N_LAYER * share + 1
    assert llm.create_completion(toks, max_tokens=16, temperature=0)["choices"][0]["text"] == text
    llm.reset()
    llm.eval(toks)
    np.testing.assert_array_equal(llm.scores[: len(toks)], logits)
    st = cache.stats
    # every miss read at least its expert's bytes (a slot's padding is not read at the file's end)
    assert st.misses > 0 and st.bytes_read >= st.misses * sum(cache.parts)
    assert len(cache.slots) <= cache.n_slots  # the cache never grows past its budget
    assert "hit rate" in cache.summary()
    llm.close()


def test_prefetch_off_and_on_agree(moe, uncapped):
    toks, _, logits = uncapped
    m = load_model(GGUFFile(moe))
    cache = ExpertCache(m, 20 * 3 * m.blk[0].ffn_gate_exps.expert_bytes, "lru", prefetch=False)
    kv = cache.new_cache(128)
    np.testing.assert_array_equal(cache.forward(np.array(toks), kv, all_logits=True), logits)
    assert cache.stats.guesses == 0


def test_a_budget_below_one_expert_is_refused(moe):
    m = load_model(GGUFFile(moe))
    one = 3 * m.blk[0].ffn_gate_exps.expert_bytes
    with pytest.raises(MemoryError, match="does not fit"):
        ExpertCache(m, one - 1)
    shape = shape_of_gguf(moe)
    with pytest.raises(MemoryError, match="needs"):  # not even the dense part fits
        Llama(moe, n_ctx=128, verbose=False, memory_budget=shape.weight_bytes - shape.expert_bytes)


def rss_anon_and_file(path: str) -> tuple[int, int]:
    anon, mapped, cur = 0, 0, None
    for line in open("/proc/self/smaps"):
        if line[0] in "0123456789abcdef" and " " in line:
            cur = line.split()[-1] if len(line.split()) > 5 else ""
        elif line.startswith("Rss:"):
            kb = int(line.split()[1]) * 1024
            mapped += kb if cur == path else 0
        elif line.startswith("Anonymous:"):
            anon += int(line.split()[1]) * 1024
    return anon, mapped


def test_memory_stays_within_the_budget(moe, tmp_path):
    # in a fresh process: its peak resident memory, everything counted, stays under the budget, and
    # of the model file only the dense part is resident: experts are never touched through the mmap
    budget = budget_for(moe, 0.3, resident=FRESH)
    code = f"""
import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_expert_cache import rss_anon_and_file
from fitllm.api import Llama
llm = Llama({moe!r}, n_ctx=128, verbose=False, memory_budget={budget})
llm.create_completion(llm.tokenize(b"Once upon a time"), max_tokens=24, temperature=0)
peak = next(int(x.split()[1]) << 10 for x in open("/proc/self/status") if x.startswith("VmHWM:"))
print(peak, rss_anon_and_file({moe!r})[1], llm._model.n_slots * llm._model.slot_bytes)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    peak, mapped, slots = map(int, out.stdout.split())
    shape = shape_of_gguf(moe)
    dense = shape.weight_bytes - shape.expert_bytes
    # the dense part only, and its edges: the header (metadata) and up to 64 KiB per tensor that
    # the kernel maps around a fault (fault-around), from the experts beside it
    f = GGUFFile(moe)
    assert mapped <= dense + f.data_offset + (64 << 10) * len(f.tensors)
    assert peak <= budget
    assert 0.2 * shape.expert_bytes <= slots <= budget - dense


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.isdir("/sys/fs/cgroup/memory"), reason="needs root, cgroup v1"
)
def test_runs_under_a_memory_cgroup(moe, uncapped, tmp_path):
    # the kernel enforces the cap (page cache included): no OOM kill, the same text
    cap = budget_for(moe, 0.3, resident=FRESH)  # the interpreter and libraries included
    rel = next(x.split(":", 2)[2] for x in open("/proc/self/cgroup").read().splitlines() if ":memory:" in x)
    cg = f"/sys/fs/cgroup/memory{rel.rstrip('/')}/fitllm-test-{os.getpid()}"
    try:
        os.makedirs(cg)
        open(f"{cg}/memory.limit_in_bytes", "w").write(str(cap))
    except OSError:
        pytest.skip("cannot create a memory cgroup here")
    code = f"""
from fitllm.api import Llama
llm = Llama({moe!r}, n_ctx=128, verbose=False)
out = llm.create_completion(llm.tokenize({PROMPT!r}), max_tokens=16, temperature=0)
print(out["choices"][0]["text"], end="")
print("|" + type(llm._model).__name__)
"""
    try:
        fd = os.open(moe, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # pages are charged to whoever read them first
        os.close(fd)
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=300,
            preexec_fn=lambda: open(f"{cg}/cgroup.procs", "w").write(str(os.getpid())),
        )
    finally:
        os.rmdir(cg)
    assert out.returncode == 0, out.stderr[-2000:]
    text, kind = out.stdout.rsplit("|", 1)
    assert kind.strip() == "ExpertCache" and text == uncapped[1]


@pytest.mark.parametrize("layout", ["shards", "byte parts", "per-expert tensors"])
def test_streaming_from_split_and_legacy_files(moe, uncapped, tmp_path, layout):
    """Each expert is read from the file that holds it (gguf-split shard, byte part, or a tensor of
    its own in a legacy file; one straddling a byte-part cut from memory), with the same bits."""
    from fitllm.gguf.split import split_gguf
    from test_legacy_experts import legacy
    from test_split import _cut

    if layout == "shards":
        path = split_gguf(moe, str(tmp_path / "s" / "moe"), max_tensors=20)[0]
    elif layout == "byte parts":
        path = _cut(moe, tmp_path / "p", [f"moe.gguf.part{i}of3" for i in (1, 2, 3)])[0]
    else:
        path = legacy(moe, tmp_path / "legacy.gguf")
    toks, _, logits = uncapped
    copied = sum(t.nbytes for t in GGUFFile(path).tensors.values() if not t.path)  # straddling a cut
    llm = Llama(path, n_ctx=128, verbose=False, logits_all=True, memory_budget=budget_for(moe, 0.3) + copied)
    assert isinstance(llm.model, ExpertCache)
    llm.eval(toks)
    np.testing.assert_array_equal(llm.scores[: len(toks)], logits)
    assert llm.model.stats.misses > 0
    llm.close()

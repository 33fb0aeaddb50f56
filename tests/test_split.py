"""gguf-split shard sets: loaded as the single file (same bits), written and merged as
llama.cpp's llama-gguf-split writes them, and every broken set refused in one line naming the shard."""

import hashlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import golden
from fitllm import Llama
from fitllm.gguf import GGUFError, GGUFFile
from fitllm.gguf.split import merge_gguf, parse_split_size, split_gguf

PROMPT = b"The capital of France is"


@pytest.fixture(scope="module")
def shards(smollm2_path, tmp_path_factory) -> list[str]:
    return split_gguf(smollm2_path, str(tmp_path_factory.mktemp("split") / "smol"), max_tensors=100)


def _logits(path: str) -> np.ndarray:
    llm = Llama(path, n_threads=2, logits_all=True, verbose=False)
    toks = llm.tokenize(PROMPT)
    llm.eval(toks[:-1])
    llm.eval(toks[-1:])  # a batch, then one token (the decode path)
    out = llm.scores[: len(toks)].copy()
    llm.close()
    return out


@pytest.mark.parametrize("repack", ["1", "0"])
def test_shards_give_the_single_files_bits(shards, smollm2_path, monkeypatch, repack):
    monkeypatch.setenv("FITLLM_REPACK", repack)
    assert [os.path.basename(p) for p in shards] == [f"smol-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    f, one = GGUFFile(shards[0]), GGUFFile(smollm2_path)
    assert len(f.shards) == 3 and f.tensors.keys() == one.tensors.keys()
    assert {t.path for t in f.tensors.values()} == set(shards)  # each tensor a view of its own shard
    assert np.array_equal(_logits(shards[0]), _logits(smollm2_path))


def test_split_files_hold_what_llama_gguf_split_writes(shards, smollm2_path):
    """llama-gguf-split's layout: all metadata in the first shard, the three split keys in every one,
    tensors in their order, each shard's tensors counted from its own data start."""
    one = GGUFFile(smollm2_path)
    order = []
    for i, p in enumerate(shards):
        f = GGUFFile(p, shards=False)
        assert (f.get("split.no"), f.get("split.count"), f.get("split.tensors.count")) == (
            i,
            3,
            len(one.tensors),
        )
        assert f.value_types["split.no"][0] == f.value_types["split.count"][0] == 2  # uint16
        keys = set(f.metadata) - {"split.no", "split.count", "split.tensors.count"}
        assert keys == (set(one.metadata) if i == 0 else set())
        assert len(f.tensors) <= 100
        order += list(f.tensors)
    assert order == list(one.tensors)


def _sha(path: str) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.mark.parametrize(
    "run, kw",
    [
        ("tensors-100", {"max_tensors": 100}),
        ("size-40M", {"max_size": 40 * 10**6}),
        ("size-4G", {"max_size": 4 * 10**9}),  # a set of one shard
    ],
)
def test_the_bytes_llama_gguf_split_writes(smollm2_path, tmp_path, run, kw):
    """fitllm split and merge write byte for byte what llama.cpp's llama-gguf-split writes
    (tests/golden/gguf_split.py): each tool loads the other's shards."""
    gold = golden("gguf_split")
    shards = split_gguf(smollm2_path, str(tmp_path / run), **kw)
    assert {os.path.basename(p): _sha(p) for p in shards} == gold[run]
    merged = merge_gguf(shards[0], str(tmp_path / "merged.gguf"))
    assert _sha(merged) == gold["merged"]


@pytest.mark.e2e
def test_split_by_size_then_merge_is_the_file_again(smollm2_path, tmp_path):
    run = [sys.executable, "-m", "fitllm"]
    out = subprocess.run([*run, "split", smollm2_path, str(tmp_path / "m"), "--max-size", "40M"],
                         capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    assert len(out) == 3 and all(os.path.getsize(p) <= 40e6 + 2e6 for p in out)  # + a header
    merged = tmp_path / "merged.gguf"
    subprocess.run([*run, "merge", out[0], str(merged)], check=True, capture_output=True)
    a, b = GGUFFile(str(merged)), GGUFFile(smollm2_path)
    assert a.get("split.count") == 0 and len(a.shards) == 1  # as llama-gguf-split --merge marks it
    assert {k: v for k, v in a.metadata.items() if not k.startswith("split.")}.keys() == b.metadata.keys()
    for name, t in b.tensors.items():
        assert np.array_equal(a.tensors[name].data, t.data) and a.tensors[name].shape == t.shape
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary left
    r = subprocess.run([*run, "merge", out[0], str(merged)], capture_output=True, text=True)
    assert r.returncode == 1 and "exists" in r.stderr


def _copy_set(shards: list[str], folder) -> list[str]:
    folder.mkdir(exist_ok=True)
    return [str(shutil.copy(p, folder / os.path.basename(p))) for p in shards]


def test_a_broken_set_is_one_line_naming_the_shard(shards, tmp_path):
    s = _copy_set(shards, tmp_path / "missing")
    os.remove(s[1])
    with pytest.raises(GGUFError, match=r"smol-00002-of-00003.gguf: shard 2 of 3 is missing"):
        GGUFFile(s[0])
    s = _copy_set(shards, tmp_path / "reordered")
    os.replace(s[2], s[1])  # shard 3 named as shard 2
    with pytest.raises(GGUFError, match=r"smol-00002-of-00003.gguf: says it is shard 3 of 3"):
        GGUFFile(s[0])
    s = _copy_set(shards, tmp_path / "extra")
    shutil.copy(s[2], tmp_path / "extra" / "smol-00004-of-00003.gguf")
    with pytest.raises(GGUFError, match=r"smol-00004-of-00003.gguf: an extra shard"):
        GGUFFile(s[0])
    with pytest.raises(GGUFError, match=r"this is shard 2 of 3: open smol-00001-of-00003.gguf instead"):
        GGUFFile(s[1])
    shutil.copy(s[0], tmp_path / "renamed.gguf")
    with pytest.raises(GGUFError, match=r"not named PREFIX-00001-of-00003.gguf"):
        GGUFFile(str(tmp_path / "renamed.gguf"))
    r = subprocess.run([sys.executable, "-m", "fitllm", "info", s[1]], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "open smol-00001-of-00003.gguf" in r.stderr


def test_foreign_shard_is_refused(shards, smollm2_path, tmp_path):
    """A shard of another split of another model, renamed into the set: its tensor total differs."""
    other = split_gguf(smollm2_path, str(tmp_path / "o" / "smol"), max_tensors=150)  # 2 shards
    s = _copy_set(shards, tmp_path / "set")
    shutil.copy(other[1], s[2])
    with pytest.raises(GGUFError, match=r"smol-00003-of-00003.gguf: says it is shard 2 of 2"):
        GGUFFile(s[0])


def test_split_arguments():
    assert parse_split_size("4G") == 4 * 10**9 and parse_split_size("500M") == 500 * 10**6
    for bad in ("4GB", "0M", "1.5G", "12"):
        with pytest.raises(ValueError, match="--max-size"):
            parse_split_size(bad)
    with pytest.raises(ValueError, match="one of"):
        split_gguf("x.gguf", "y", 0, 0)


def test_merge_needs_a_set(smollm2_path, tmp_path):
    with pytest.raises(GGUFError, match="not the first shard"):
        merge_gguf(smollm2_path, str(tmp_path / "m.gguf"))


@pytest.mark.oracle
def test_llama_cpp_runs_fitllms_shards(shards, smollm2_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    outs = []
    for path in (shards[0], smollm2_path):
        llm = llama_cpp.Llama(path, n_threads=2, verbose=False)
        outs.append(
            llm.create_completion(PROMPT.decode(), max_tokens=12, temperature=0)["choices"][0]["text"]
        )
        llm.close()
    ours = Llama(shards[0], n_threads=2, verbose=False)
    assert (
        outs[0]
        == outs[1]
        == ours.create_completion(PROMPT.decode(), max_tokens=12, temperature=0)["choices"][0]["text"]
    )


def _cut(path: str, folder, names: list[str]) -> list[str]:
    """path cut into len(names) byte parts, as split(1) cuts an upload."""
    data = open(path, "rb").read()
    folder.mkdir(exist_ok=True)
    k = -(-len(data) // len(names))
    out = [str(folder / n) for n in names]
    for i, p in enumerate(out):
        open(p, "wb").write(data[i * k : (i + 1) * k])
    return out


@pytest.mark.parametrize("style", ["part01", "part1of3"])
def test_byte_parts_give_the_single_files_bits(smollm2_path, tmp_path, monkeypatch, style):
    names = [f"smol.gguf.part{i:02d}" if style == "part01" else f"smol.gguf.part{i}of3" for i in (1, 2, 3)]
    parts = _cut(smollm2_path, tmp_path, names)
    f = GGUFFile(parts[0])
    copied = [t.name for t in f.tensors.values() if not t.path]
    assert 1 <= len(copied) <= 2  # only what straddles a cut is in memory; the rest are views
    assert all(not t.data.flags.owndata for t in f.tensors.values() if t.path)
    for repack in ("1", "0"):
        monkeypatch.setenv("FITLLM_REPACK", repack)
        assert np.array_equal(_logits(parts[0]), _logits(smollm2_path))


def test_broken_byte_parts_are_one_line(smollm2_path, tmp_path):
    parts = _cut(smollm2_path, tmp_path / "a", [f"m.gguf.part{i}of3" for i in (1, 2, 3)])
    with pytest.raises(
        GGUFError, match=r"m.gguf.part2of3: this is byte part 2: open the first, m.gguf.part1of3"
    ):
        GGUFFile(parts[1])
    shutil.copy(parts[2], tmp_path / "a" / "m.gguf.part4of3")
    with pytest.raises(GGUFError, match=r"m.gguf.part4of3: an extra byte part beside a set of 3"):
        GGUFFile(parts[0])
    os.remove(parts[2])
    with pytest.raises(GGUFError, match=r"m.gguf.part3of3: byte part 3 of 3 is missing"):
        GGUFFile(parts[0])
    parts = _cut(smollm2_path, tmp_path / "b", [f"m.gguf.part{i:02d}" for i in (1, 2, 3)])
    os.remove(parts[2])  # without a count, the parts present are the file: it ends too soon
    with pytest.raises(GGUFError, match=r"runs past the end of the file"):
        GGUFFile(parts[0])


def _served_completion(first: str, prompt: str, n: int) -> str:
    """`fitllm serve -m first` in a subprocess; its greedy completion of prompt."""
    import socket
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "fitllm", "serve", "-m", first, "--port", str(port), "-t", "2", "-c", "256"]
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    url, deadline = f"http://127.0.0.1:{port}", time.time() + 120
    try:
        while True:
            assert p.poll() is None, p.stderr.read().decode()
            assert time.time() < deadline, "the server did not start"
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        body = {"prompt": prompt, "max_tokens": n, "temperature": 0}
        r = httpx.post(url + "/v1/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["text"]
    finally:
        p.terminate()
        p.wait(timeout=30)


@pytest.mark.e2e
def test_server_on_shards_and_byte_parts(shards, smollm2_path, tmp_path):
    prompt, n = "The three primary colors are", 24
    llm = Llama(smollm2_path, n_ctx=256, n_threads=2, verbose=False)
    want = llm.create_completion(prompt, max_tokens=n, temperature=0)["choices"][0]["text"]
    llm.close()
    parts = _cut(smollm2_path, tmp_path, [f"smol.gguf.part{i}of3" for i in (1, 2, 3)])
    assert len(want) > 20
    assert _served_completion(shards[0], prompt, n) == want
    assert _served_completion(parts[0], prompt, n) == want

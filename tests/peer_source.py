"""The peer's own test data: the llama-cpp-python sdist on PyPI (it vendors llama.cpp's whole tree).

Tests that compare with llama.cpp's tokenizer files (models/ggml-vocab-*.gguf with .inp/.out), its
chat template cases (tests/test-chat-template.cpp) or llama-cpp-python's own tests take them from
the sdist, fetched once with pip (no build) into the fitllm cache. Without network they skip, unless
FITLLM_REQUIRE_PEER_SOURCE is set (CI sets it)."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

VERSION = "0.3.36"
#: what the tests read from the sdist (paths below its top folder)
MEMBERS = ("vendor/llama.cpp/models/", "vendor/llama.cpp/tests/test-chat-template.cpp", "tests/")


def _cache() -> Path:
    from fitllm.tokenizer import cache_dir

    return cache_dir() / f"llama-cpp-python-{VERSION}"


def _fetch(dst: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*cmd, f"llama-cpp-python=={VERSION}", "-d", tmp], check=True, capture_output=True)
        (sdist,) = Path(tmp).glob("llama_cpp_python-*.tar.gz")
        part = dst.with_name(dst.name + ".part")
        with tarfile.open(sdist) as tar:
            wanted = (m for m in tar.getmembers() if m.isfile() or m.isdir())
            keep = [m for m in wanted if m.name.split("/", 1)[-1].startswith(MEMBERS)]
            for m in keep:
                m.name = m.name.split("/", 1)[-1]
            tar.extractall(part, members=keep, filter="data")
        part.rename(dst)


def peer_source() -> Path:
    """The sdist's top folder (vendor/llama.cpp/..., tests/...); skips the test when it cannot be had."""
    dst = _cache()
    if not dst.is_dir():
        try:
            _fetch(dst)
        except (subprocess.CalledProcessError, OSError, ValueError) as e:
            if os.environ.get("FITLLM_REQUIRE_PEER_SOURCE"):
                raise
            pytest.skip(f"llama-cpp-python {VERSION} sdist not available ({e})")
    return dst


def llama_cpp_tree() -> Path:
    return peer_source() / "vendor" / "llama.cpp"

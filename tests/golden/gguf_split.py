"""Regenerate tests/data/golden_gguf_split.json: sha256 of the files llama.cpp's llama-gguf-split
writes from SmolLM2 (built by ../shared/tools/build-llamacpp-tools.sh from llama-cpp-python 0.3.36's
vendored llama.cpp).

    python tests/golden/gguf_split.py SMOLLM2.gguf PATH/TO/llama-gguf-split
"""

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

RUNS = {
    "tensors-100": ["--split-max-tensors", "100"],
    "size-40M": ["--split-max-size", "40M"],
    "size-4G": ["--split-max-size", "4G"],  # a set of one
}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(model: str, tool: str) -> None:
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for name, args in RUNS.items():
            subprocess.run([tool, "--split", *args, model, f"{d}/{name}"], check=True, capture_output=True)
            shards = sorted(Path(d).glob(f"{name}-*-of-*.gguf"))
            out[name] = {p.name: sha(p) for p in shards}
        subprocess.run([tool, "--merge", str(shards[0]), f"{d}/merged.gguf"], check=True, capture_output=True)
        out["merged"] = sha(Path(d) / "merged.gguf")
    (Path(__file__).parents[1] / "data" / "golden_gguf_split.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])

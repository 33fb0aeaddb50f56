"""Peak RSS and throughput of `fitllm convert` on a Grok-1 checkpoint with real widths.

    python benchmarks/grok1_convert.py DIR [--layers 1] [--type q8_0]

Writes DIR/ckpt-0 in the release's format (pickled numpy arrays; `__main__.QuantizedWeight8bit`
with int8 weights and bf16 scales) with Grok-1's real shapes but only --layers layers and random
weights (one leaf in memory at a time), then converts it in a child process and reports the
child's peak RSS (ru_maxrss) and MB/s of checkpoint read."""

from __future__ import annotations

import argparse
import json
import pickle
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

from fitllm.convert.grok1_checkpoint import Grok1Config, leaves


@dataclass
class QuantizedWeight8bit:
    weight: np.ndarray
    scales: np.ndarray


QuantizedWeight8bit.__module__ = "__main__"


def write_checkpoint(root: Path, cfg: Grok1Config) -> None:
    d = root / "ckpt-0"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sys.modules["__main__"].QuantizedWeight8bit = QuantizedWeight8bit
    for leaf in leaves(cfg):
        path = d / f"tensor{leaf.index:05d}_000"
        if path.exists():
            continue
        if leaf.kind in ("linear", "experts"):
            w = rng.integers(-127, 128, leaf.shape, dtype=np.int8)
            s_shape = leaf.shape[:-2] + (leaf.scale_groups, leaf.shape[-1])
            s = (rng.uniform(0.5, 1.5, s_shape) / 127 / np.sqrt(leaf.shape[-2])).astype(ml_dtypes.bfloat16)
            obj = QuantizedWeight8bit(w, s)
        else:
            obj = rng.standard_normal(leaf.shape, np.float32) * (0.02 if leaf.kind != "norm" else 1)
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=4)
        del obj


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--type", default="q8_0")
    a = ap.parse_args()
    root = Path(a.dir)
    cfg = Grok1Config(num_layers=a.layers)
    (root / "config.json").write_text(json.dumps({"num_layers": a.layers}))
    t0 = time.time()
    write_checkpoint(root, cfg)
    size = sum(f.stat().st_size for f in (root / "ckpt-0").iterdir())
    print(f"checkpoint: {size / 1e9:.2f} GB, {a.layers} layer(s), written in {time.time() - t0:.0f} s")
    out = root / f"grok1-{a.layers}l.{a.type}.gguf"
    cmd = [sys.executable, "-m", "fitllm", "convert", str(root), "-o", str(out), "--type", a.type,
           "--config", str(root / "config.json"), "--no-progress"]  # fmt: skip
    t0 = time.time()
    subprocess.run(cmd, check=True)
    dt = time.time() - t0
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"convert --type {a.type}: {dt:.0f} s, {size / 1e6 / dt:.0f} MB/s read, peak RSS {rss:.0f} MB, "
          f"output {out.stat().st_size / 1e9:.2f} GB")  # fmt: skip


if __name__ == "__main__":
    main()

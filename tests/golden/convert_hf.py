"""Golden data for `fitllm convert HF_DIR`, from llama.cpp (llama-cpp-python 0.3.36's sources and build):
- the sha256 of every tensor that llama.cpp's convert_hf_to_gguf.py writes for SmolLM2-135M-Instruct
  (decoded from the embedded GGUF by transformers, tests/hf_fixture.py) at f32 and q8_0;
- llama.cpp's greedy tokens on the q8_0 file fitllm writes (with that file's sha256).
Writes tests/data/golden_convert_hf.json.
Run: python tests/golden/convert_hf.py <llama.cpp source folder, e.g. the sdist's vendor/llama.cpp>"""

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from gguf import GGUFReader
from llama_cpp import Llama

sys.path.insert(0, str(Path(__file__).parents[1]))
from fitllm.convert.hf import convert_hf  # noqa: E402
from fitllm.default_model import default_model_path  # noqa: E402
from hf_fixture import real_from_gguf  # noqa: E402

PROMPT = "The capital of France is"
OUT = Path(__file__).parents[1] / "data" / "golden_convert_hf.json"


def tensor_hashes(path: str) -> dict:
    return {
        t.name: [t.tensor_type.name, hashlib.sha256(t.data.tobytes()).hexdigest()]
        for t in GGUFReader(path).tensors
    }


def main(llama_cpp_src: str) -> None:
    tmp = Path(tempfile.mkdtemp())
    hf = real_from_gguf(str(default_model_path()), tmp / "hf")
    env = {**os.environ, "PYTHONPATH": f"{llama_cpp_src}/gguf-py"}
    out = {"prompt": PROMPT, "llama_cpp_converter": {}}
    for t in ("f32", "q8_0"):
        ref = tmp / f"ref.{t}.gguf"
        cmd = [
            sys.executable,
            f"{llama_cpp_src}/convert_hf_to_gguf.py",
            str(hf),
            "--outtype",
            t,
            "--outfile",
            str(ref),
        ]
        subprocess.run(cmd, check=True, env=env, capture_output=True)
        out["llama_cpp_converter"][t] = tensor_hashes(str(ref))
    ours = convert_hf(hf, tmp / "fitllm.q8_0.gguf", "q8_0", progress=False)
    out["fitllm_q8_0_sha256"] = hashlib.sha256(ours.read_bytes()).hexdigest()
    llm = Llama(str(ours), n_ctx=256, n_threads=2, verbose=False, use_extra_bufts=False)
    prompt = llm.tokenize(PROMPT.encode())
    greedy = []
    for t in llm.generate(prompt, temp=0.0):
        if t == llm.token_eos() or len(greedy) == 24:
            break
        greedy.append(t)
    out["prompt_tokens"], out["llama_cpp_greedy"] = prompt, greedy
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main(sys.argv[1])

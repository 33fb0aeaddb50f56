"""Golden chat prompts: llama-cpp-python 0.3.36's Jinja2ChatFormatter (what its server renders)
on the chat template embedded in SmolLM2-135M-Instruct's GGUF, and on ChatML for a file without
one. Writes tests/data/golden_chat.json. Run: python tests/golden/chat_templates.py"""

import json
from pathlib import Path

from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from fitllm.chat import CHATML
from fitllm.default_model import default_model_path
from fitllm.gguf import GGUFFile

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi!"}],
    [
        {"role": "user", "content": "Name a color."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one,\nplease — in French: «rouge»?"},
    ],
]


def main() -> None:
    f = GGUFFile(default_model_path())
    tokens = f.get("tokenizer.ggml.tokens")
    bos, eos = tokens[f.get("tokenizer.ggml.bos_token_id")], tokens[f.get("tokenizer.ggml.eos_token_id")]
    out = {"bos": bos, "eos": eos, "cases": []}
    for name, template in (("smollm2", f.get("tokenizer.chat_template")), ("chatml", CHATML)):
        fmt = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)
        for msgs in CONVERSATIONS:
            out["cases"].append({"template": name, "messages": msgs, "prompt": fmt(messages=msgs).prompt})
    (Path(__file__).parents[1] / "data" / "golden_chat.json").write_text(
        json.dumps(out, indent=1, ensure_ascii=False)
    )


if __name__ == "__main__":
    main()

"""Architecture registry: GGUF `general.architecture` -> model class."""

from __future__ import annotations

from fitllm.gguf import GGUFError, GGUFFile
from fitllm.models.base import DecoderModel
from fitllm.models.gemma3 import Gemma3Model
from fitllm.models.grok import GrokModel
from fitllm.models.llama import LlamaModel
from fitllm.models.qwen2 import Qwen2Model

ARCHITECTURES: dict[str, type[DecoderModel]] = {
    "llama": LlamaModel,
    "qwen2": Qwen2Model,
    "gemma3": Gemma3Model,
    "grok": GrokModel,
}


def load_model(f: GGUFFile) -> DecoderModel:
    arch = f.architecture
    cls = ARCHITECTURES.get(arch)
    if cls is None:
        raise GGUFError(
            f"{f.path}: architecture {arch!r} is not supported (supported: {', '.join(ARCHITECTURES)})"
        )
    return cls(f)

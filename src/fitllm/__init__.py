"""fitllm: run big language models from GGUF files on the CPU."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # lazy, so that `import fitllm.kernels` does not pull in the whole engine
    if name == "Llama":
        from fitllm.api import Llama

        return Llama
    raise AttributeError(name)

"""GGUF files: mmapped reading on top of gguf-py, with clear errors for bad files."""

from fitllm.gguf.reader import GGUFError, GGUFFile, Tensor

__all__ = ["GGUFError", "GGUFFile", "Tensor"]

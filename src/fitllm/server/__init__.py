"""OpenAI-compatible HTTP server (`fitllm serve`)."""

from fitllm.server.app import Server, serve

__all__ = ["Server", "serve"]

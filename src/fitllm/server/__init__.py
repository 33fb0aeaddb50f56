"""OpenAI-compatible HTTP server (`fitllm serve`)."""

from fitllm.server.app import Server, bind, serve

__all__ = ["Server", "bind", "serve"]

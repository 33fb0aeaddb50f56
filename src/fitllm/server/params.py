"""OpenAI's request parameters, checked: a wrong type or value is a 400 naming the parameter."""

from __future__ import annotations

from typing import Any

from fitllm.server.errors import HTTPError


def _num(body: dict, key: str, kind: type, lo: float, hi: float, default: Any) -> Any:
    v = body.get(key)
    if v is None:
        return default
    if (
        isinstance(v, bool)
        or not isinstance(v, (int, float))
        or (kind is int and int(v) != v)
        or not lo <= v <= hi
    ):
        raise HTTPError(400, f"'{key}' must be a {kind.__name__} in [{lo}, {hi}]", code="invalid_value")
    return kind(v)


def sampling_args(body: dict, n_ctx: int) -> dict:
    """OpenAI's parameters, checked, as create_completion's keywords. max_tokens is at least 1, as
    OpenAI asks (the library reads 0 as "until the context is full"); absent: until EOS or the
    context is full, as llama-server."""
    stop = body.get("stop")
    if (
        stop is not None
        and not isinstance(stop, str)
        and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise HTTPError(400, "'stop' must be a string or a list of strings", code="invalid_value")
    key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    return dict(
        max_tokens=_num(body, key, int, 1, n_ctx, None),
        temperature=_num(body, "temperature", float, 0.0, 2.0, 1.0),
        top_p=_num(body, "top_p", float, 0.0, 1.0, 1.0),
        min_p=_num(body, "min_p", float, 0.0, 1.0, 0.0),
        top_k=_num(body, "top_k", int, 0, 1 << 20, 0),
        repeat_penalty=_num(body, "repeat_penalty", float, 0.0, 10.0, 1.0),
        seed=_num(body, "seed", int, -(1 << 63), (1 << 63) - 1, None),
        stop=stop,
        stream=bool(body.get("stream", False)),
    )


def prompt_of(body: dict) -> str | list[int]:
    """/v1/completions' prompt: a string, or token ids (their range is the library's to check)."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return prompt
    raise HTTPError(400, "'prompt' must be a string (or a list of token ids)")

"""Chat: the model's own template (GGUF `tokenizer.chat_template`) rendered in jinja2's immutable
sandbox, as transformers and llama-cpp-python render it, and OpenAI chat.completion objects.

The sandbox refuses attribute access to Python internals (`__class__`, `__globals__`, ...), so a
hostile template (the CVE-2024-34359 class) raises ChatTemplateError and runs nothing; one that
would compute without end or fill memory is stopped at template_limits' bounds."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import jinja2

from fitllm.template_limits import MAX_CHARS, MAX_SECONDS, ChatTemplateError, LimitedSandbox, limited_render

# used when a file has no template: ChatML, as llama.cpp falls back to
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}"
)
ROLES = ("system", "user", "assistant", "tool", "developer")


__all__ = ["CHATML", "ChatTemplate", "ChatTemplateError", "chat_chunks", "chat_result", "check_messages"]


def _raise(message: str) -> None:
    raise ChatTemplateError(message)


class ChatTemplate:
    def __init__(
        self,
        source: str | None,
        bos_token: str = "",
        eos_token: str = "",
        max_chars: int = MAX_CHARS,
        max_seconds: float = MAX_SECONDS,
    ) -> None:
        """max_chars: the most a render may write (and any string it makes); max_seconds: the
        longest it may take."""
        # the options transformers' apply_chat_template uses
        env = LimitedSandbox(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"], max_chars=max_chars
        )
        self.max_chars, self.max_seconds = max_chars, max_seconds
        env.globals.update(raise_exception=_raise, strftime_now=lambda fmt: datetime.now().strftime(fmt))
        self.source = source or CHATML
        self.bos_token, self.eos_token = bos_token, eos_token
        try:
            self._t = env.from_string(self.source)
        except jinja2.TemplateError as e:
            raise ChatTemplateError(f"the model's chat template does not parse: {e}") from None

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **extra: Any) -> str:
        check_messages(messages)
        try:
            chunks = self._t.generate(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **extra,
            )
            return limited_render(chunks, self.max_chars, self.max_seconds)
        except ChatTemplateError:
            raise
        except Exception as e:  # SecurityError, UndefinedError, TypeError from the template's code...
            raise ChatTemplateError(f"the chat template failed: {type(e).__name__}: {e}") from None


def check_messages(messages: Any) -> None:
    """OpenAI's shape: a non-empty list of {role, content} with string content."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ValueError(f"messages[{i}] needs a 'role' of {', '.join(ROLES)}")
        if not isinstance(m.get("content"), str):
            raise ValueError(f"messages[{i}]['content'] must be a string")


def chat_result(completion: dict) -> dict:
    """A text_completion result as a chat.completion."""
    c = completion["choices"][0]
    return {
        "id": "chat" + completion["id"],
        "object": "chat.completion",
        "created": completion["created"],
        "model": completion["model"],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": c["text"]},
                "logprobs": None,
                "finish_reason": c["finish_reason"],
            }
        ],
        "usage": completion["usage"],
    }


def chat_chunks(chunks: Iterator[dict], model: str) -> Iterator[dict]:
    """Streamed text_completion chunks as chat.completion.chunk objects: the role first, then the
    content deltas, then an empty delta with the finish reason."""
    meta = {"id": f"chatcmpl-{uuid.uuid4()}", "object": "chat.completion.chunk", "created": int(time.time())}
    meta["model"] = model

    def chunk(delta: dict, reason: str | None = None) -> dict:
        return {**meta, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]}

    yield chunk({"role": "assistant", "content": ""})
    for c in chunks:
        choice = c["choices"][0]
        if choice["text"]:
            yield chunk({"content": choice["text"]})
        if choice["finish_reason"]:
            yield chunk({}, choice["finish_reason"])

"""OpenAI-style completion objects built from a token stream: stop strings, UTF-8 boundaries,
streaming chunks (text is held back while it could still turn into a stop string)."""

from __future__ import annotations

from collections.abc import Generator, Iterator

from fitllm.tokenizer import GGUFTokenizer

Tokens = Generator[int, None, str]  # generate()'s: the tokens, then the finish reason


def _first_stop(text: str, stops: list[str]) -> int:
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else -1


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest tail of text that is a proper prefix of a stop string."""
    n = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), n, -1):
            if text.endswith(s[:k]):
                n = k
                break
    return n


def _texts(tok: GGUFTokenizer, tokens: Tokens, stops: list[str]) -> Iterator[tuple[str, str | None, int]]:
    """Yield (new text, finish_reason or None, tokens so far); the last item has the reason."""
    raw, sent, n = b"", 0, 0
    while True:
        try:
            token = next(tokens)
        except StopIteration as end:
            reason = end.value or "stop"
            break
        n += 1
        raw += tok.token_to_piece(token)
        partial = _incomplete_utf8(raw)
        text = raw.decode("utf-8", "ignore") if partial else raw.decode("utf-8", "replace")
        cut = _first_stop(text, stops)
        if cut >= 0:
            tokens.close()
            yield text[sent:cut], "stop", n
            return
        safe = len(text) if partial else len(text) - _held_back(text, stops)
        if safe > sent:
            yield text[sent:safe], None, n
            sent = safe
    text = raw.decode("utf-8", "replace")
    yield text[sent:], reason, n


def _incomplete_utf8(b: bytes) -> bool:
    """True if b ends inside a multi-byte UTF-8 character."""
    for k in range(1, min(4, len(b)) + 1):
        c = b[-k]
        if c & 0xC0 != 0x80:  # a lead byte (or ASCII)
            need = 2 if c & 0xE0 == 0xC0 else 3 if c & 0xF0 == 0xE0 else 4 if c & 0xF8 == 0xF0 else 1
            return need > k
    return False


def _choice(text: str, reason: str | None) -> dict:
    return {"text": text, "index": 0, "logprobs": None, "finish_reason": reason}


def completion_result(
    tok: GGUFTokenizer, tokens: Tokens, stops: list[str], echo_text: str, meta: dict, n_prompt: int
) -> dict:
    text, reason, n = echo_text, "length", 0
    for piece, why, n in _texts(tok, tokens, stops):
        text += piece
        reason = why or reason
    return {
        **meta,
        "object": "text_completion",
        "choices": [_choice(text, reason)],
        "usage": {"prompt_tokens": n_prompt, "completion_tokens": n, "total_tokens": n_prompt + n},
    }


def completion_chunks(
    tok: GGUFTokenizer, tokens: Tokens, stops: list[str], echo_text: str, meta: dict
) -> Iterator[dict]:
    if echo_text:
        yield {**meta, "object": "text_completion", "choices": [_choice(echo_text, None)]}
    for piece, why, _ in _texts(tok, tokens, stops):
        yield {**meta, "object": "text_completion", "choices": [_choice(piece, why)]}

"""`fitllm run`: stream a completion to the terminal, llama.cpp style, optionally interactive;
`fitllm chat`: a conversation with the model's chat template. The terminal handling is in tty.py,
chat's slash commands in chat_commands.py."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from fitllm.api import Llama
from fitllm.chat_commands import Conversation, is_command, run_command
from fitllm.tty import line_editing, read_line, reply_mode

GREEN, RESET = "\033[32m", "\033[0m"


def _stream(
    chunks: Iterator[dict], piece: Callable[[dict], str], out: TextIO, stop: threading.Event | None = None
) -> str:
    """Print the chunks' text as it comes, until they end or stop is set; return the text."""
    text = ""
    try:
        for chunk in chunks:
            new = piece(chunk)
            text += new
            out.write(new)
            out.flush()
            if stop is not None and stop.is_set():
                break
    finally:
        chunks.close()  # a reply stopped early frees its generator now
    return text


def _completion_text(chunk: dict) -> str:
    return chunk["choices"][0]["text"]


def _chat_text(chunk: dict) -> str:
    return chunk["choices"][0]["delta"].get("content", "")


def run(
    llm: Llama,
    prompt: str,
    n_predict: int,
    sampling: dict,
    color: bool = False,
    interactive: bool = False,
    reverse_prompts: list[str] | None = None,
    out: TextIO = sys.stdout,
    inp: TextIO = sys.stdin,
    history: Path | None = None,
) -> None:
    """Complete `prompt`; in interactive mode hand over to the user after each turn, which ends at
    a reverse prompt (then shown, as llama.cpp does), at end of generation, or at Ctrl-C. As in
    llama.cpp, an empty line hands back to the model without adding anything, and Ctrl-D or Ctrl-C
    at the user's prompt leaves."""
    stops = list(reverse_prompts or []) if interactive else []
    out.write((GREEN + prompt + RESET) if color else prompt)
    transcript = shown = prompt

    def complete(stop: threading.Event | None = None) -> str:
        if n_predict == 0:
            return ""  # -n 0: nothing, as llama.cpp's (the API's 0 means "no limit", as llama-cpp-python's)
        tokens = llm.tokenize(transcript.encode(), add_bos=True, special=True)
        chunks = llm.create_completion(tokens, max_tokens=n_predict, stream=True, stop=stops, **sampling)
        return _stream(chunks, _completion_text, out, stop)

    if not interactive:
        complete()
        out.write("\n")
        return
    with line_editing(inp, history) as editing:
        while True:
            with reply_mode(inp) as stop:
                text = complete(stop)
            transcript += text
            # the reverse prompt (or "> ") follows the text on the screen's line: readline redraws it
            shown = (shown + text).rpartition("\n")[2] if stops else ""
            if not stops:
                out.write("\n")
            transcript += stops[0] if stops else ""
            try:
                line = read_line(
                    stops[0] if stops else "> ", inp, out, editing, GREEN if color else "", shown
                )
            except (EOFError, KeyboardInterrupt):
                out.write("\n")
                return
            shown = ""  # the Enter began a new line
            if line:  # an empty line hands back to the model, nothing added
                transcript += line + "\n"


def _reply(llm: Llama, conversation: Conversation, sampling: dict, inp: TextIO, out: TextIO) -> None:
    """Stream the model's reply into the conversation; Ctrl-C stops it and, as in llama.cpp, what
    it said so far stays in the conversation."""
    with reply_mode(inp) as stop:
        chunks = llm.create_chat_completion(conversation.messages, stream=True, **sampling)
        reply = _stream(chunks, _chat_text, out, stop)
    out.write("\n")
    conversation.add("assistant", reply)


def chat(
    llm: Llama,
    system: str | None,
    sampling: dict,
    out: TextIO = sys.stdout,
    inp: TextIO = sys.stdin,
    history: Path | None = None,
) -> None:
    """Interactive chat: the model's chat template, replies streamed, the conversation kept. Lines
    starting with "/" are commands (chat_commands.py); empty lines are ignored; Ctrl-D, or Ctrl-C
    at the prompt, leaves."""
    conversation = Conversation.start(system)
    out.write("fitllm chat: /help lists the commands, /exit leaves\n")
    with line_editing(inp, history) as editing:
        while True:
            try:
                line = read_line("> ", inp, out, editing)
            except (EOFError, KeyboardInterrupt):
                out.write("\n")
                return
            if not line.strip():
                continue
            if is_command(line):
                if run_command(line, conversation, out):
                    return
                continue
            conversation.add("user", line)
            _reply(llm, conversation, sampling, inp, out)

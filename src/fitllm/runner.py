"""`fitllm run`: stream a completion to the terminal, llama.cpp style, optionally interactive."""

from __future__ import annotations

import sys
from typing import TextIO

from fitllm.api import Llama

GREEN, RESET = "\033[32m", "\033[0m"


def stream_completion(
    llm: Llama, tokens: list[int], max_tokens: int, sampling: dict, stop: list[str], out: TextIO
) -> str:
    """Print a completion as it is produced; return its text. max_tokens -1: until end of
    generation or a full context; 0: nothing (as llama.cpp's -n)."""
    text = ""
    if max_tokens == 0:
        return text  # the API's 0 means "no limit", as llama-cpp-python's
    for chunk in llm.create_completion(tokens, max_tokens=max_tokens, stream=True, stop=stop, **sampling):
        piece = chunk["choices"][0]["text"]
        text += piece
        out.write(piece)
        out.flush()
    return text


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
) -> None:
    """Complete `prompt`; in interactive mode hand over to the user after each turn, which ends at
    a reverse prompt (then shown, as llama.cpp does) or at end of generation."""
    stops = list(reverse_prompts or []) if interactive else []
    out.write((GREEN + prompt + RESET) if color else prompt)
    transcript = prompt
    while True:
        tokens = llm.tokenize(transcript.encode(), add_bos=True, special=True)
        transcript += stream_completion(llm, tokens, n_predict, sampling, stops, out)
        if not interactive:
            out.write("\n")
            return
        if stops:
            out.write(stops[0])
            transcript += stops[0]
        else:
            out.write("\n> ")
        out.flush()
        line = inp.readline()
        if not line:
            out.write("\n")
            return
        if color:
            out.write(GREEN + line + RESET)
        transcript += line


def chat(
    llm: Llama, system: str | None, sampling: dict, out: TextIO = sys.stdout, inp: TextIO = sys.stdin
) -> None:
    """Interactive chat: the model's chat template, replies streamed, the history kept; /reset
    forgets it, /exit (or end of input) leaves."""
    history = [{"role": "system", "content": system}] if system else []
    start = len(history)
    out.write("fitllm chat: /reset forgets the conversation, /exit leaves\n")
    while True:
        out.write("> ")
        out.flush()
        line = inp.readline()
        if not line or line.strip() == "/exit":
            out.write("\n")
            return
        if line.strip() == "/reset":
            del history[start:]
            llm.reset()
            out.write("(conversation reset)\n")
            continue
        history.append({"role": "user", "content": line.rstrip("\n")})
        reply = ""
        for chunk in llm.create_chat_completion(history, stream=True, **sampling):
            piece = chunk["choices"][0]["delta"].get("content", "")
            reply += piece
            out.write(piece)
            out.flush()
        out.write("\n")
        history.append({"role": "assistant", "content": reply})

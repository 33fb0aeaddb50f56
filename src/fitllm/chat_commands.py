"""`fitllm chat`'s slash commands. A line that starts with "/" is a command: it acts on the
conversation and never reaches the model, even when it is not one of the commands."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

COMMANDS = {
    "/help": "list these commands",
    "/reset": "forget the conversation (a --system message stays)",
    "/save FILE": "write the conversation to FILE as JSON (OpenAI messages)",
    "/exit, /quit": "leave (so do Ctrl-D and Ctrl-C at an empty prompt)",
}
UNKNOWN = "unknown command {name}: /help lists the commands\n"


@dataclass
class Conversation:
    messages: list[dict[str, str]] = field(default_factory=list)
    kept: int = 0  # leading messages /reset keeps: the system message

    @classmethod
    def start(cls, system: str | None) -> Conversation:
        messages = [{"role": "system", "content": system}] if system else []
        return cls(messages, len(messages))

    def add(self, role: str, content: str) -> None:
        self.messages.append({"role": role, "content": content})

    def reset(self) -> None:
        del self.messages[self.kept :]


def is_command(line: str) -> bool:
    return line.lstrip().startswith("/")


def help_text() -> str:
    width = max(map(len, COMMANDS))
    return "".join(f"  {name:<{width}}  {what}\n" for name, what in COMMANDS.items())


def run_command(line: str, conversation: Conversation, out: TextIO) -> bool:
    """Do the slash command in line, writing what it says to out; True when it asks to leave."""
    name, _, arg = line.strip().partition(" ")
    arg = arg.strip()
    if name in ("/exit", "/quit"):
        return True
    if name == "/help":
        out.write(help_text())
    elif name == "/reset":
        conversation.reset()
        out.write("(conversation reset)\n")
    elif name == "/save":
        out.write(_save(conversation, arg))
    else:
        out.write(UNKNOWN.format(name=name))
    return False


def _save(conversation: Conversation, arg: str) -> str:
    if not arg:
        return "usage: /save FILE\n"
    path = Path(arg).expanduser()
    try:
        save_conversation(conversation.messages, path)
    except OSError as e:
        return f"could not save the conversation: {e}\n"
    return f"(conversation saved to {path})\n"


def save_conversation(messages: list[dict[str, str]], path: Path) -> None:
    """Write messages as JSON to a temporary file beside path, then rename it over path: an
    interrupted save leaves the old file whole, never half of the new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(messages, f, indent=2, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise

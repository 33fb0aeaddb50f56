"""Terminal helpers for `fitllm chat` and `fitllm run -i`: line editing and a persistent history
with the standard library's readline, and a reply mode in which typing is not echoed into the
streamed text and Ctrl-C asks the reply to stop instead of raising.

Every helper does nothing special when its stream is not a terminal (a pipe, a test's StringIO)."""

from __future__ import annotations

import logging
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TextIO

from fitllm.tokenizer import cache_dir

log = logging.getLogger(__name__)
HISTORY_LENGTH = 1000
RESET = "\033[0m"


def history_path() -> Path:
    """Where the typed lines are kept between sessions ($FITLLM_CACHE/chat_history)."""
    return cache_dir() / "chat_history"


def is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _readline_for(inp: TextIO) -> ModuleType | None:
    """readline when input() will use it: stdin and stdout are the terminal and it is built in."""
    if inp is not sys.stdin or not is_tty(inp) or not is_tty(sys.stdout):
        return None
    try:
        import readline
    except ImportError:  # a Python built without it: plain input() still works
        return None
    return readline


@contextmanager
def line_editing(inp: TextIO, history: Path | None = None) -> Iterator[bool]:
    """Arrow keys, editing and history for the lines read inside (True when on): the history is
    loaded from `history` (default history_path()) first and saved back however the block ends."""
    readline = _readline_for(inp)
    if readline is None:
        yield False
        return
    path = history or history_path()
    readline.clear_history()  # a second session in one process starts from the file, not twice over
    readline.set_history_length(HISTORY_LENGTH)
    try:
        readline.read_history_file(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("could not read the history %s: %s", path, e)
    try:
        yield True
    finally:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(path)
        except OSError as e:
            log.warning("could not save the history to %s: %s", path, e)


def read_line(prompt: str, inp: TextIO, out: TextIO, editing: bool, color: str = "", shown: str = "") -> str:
    """One line, without its newline: EOFError at end of input (Ctrl-D), KeyboardInterrupt on
    Ctrl-C. `color` is an escape sequence the typed text shows in; the terminal echoes the text
    itself, so it is never written here. `shown`: text already on the cursor's line."""
    try:
        if editing:
            return input(_readline_prompt(prompt, color, shown, out)).rstrip("\n")
        out.write(prompt + color)
        out.flush()
        line = inp.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")
    finally:
        if color:
            out.write(RESET)
            out.flush()


def _readline_prompt(prompt: str, color: str, shown: str, out: TextIO) -> str:
    """The prompt for input(): text already on the line is redrawn as part of it, so readline's
    redisplay (history, Ctrl-U) knows where typing starts; \001 \002 mark the colour as taking
    no columns."""
    if shown and len(shown) + len(prompt) < shutil.get_terminal_size().columns:
        out.write("\r")
        prompt = shown + prompt
    return prompt + (f"\001{color}\002" if color else "")


@contextmanager
def _echo_off(inp: TextIO) -> Iterator[None]:
    """The terminal does not echo what is typed inside; on the way out (however it ends) its
    settings come back and what was typed meanwhile is dropped, so it is not the next line."""
    if not is_tty(inp):
        yield
        return
    import termios

    fd = inp.fileno()
    saved = termios.tcgetattr(fd)
    quiet = list(saved)
    quiet[3] &= ~termios.ECHO  # lflag; ISIG stays, so Ctrl-C still signals
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        termios.tcflush(fd, termios.TCIFLUSH)


@contextmanager
def _sigint_sets(event: threading.Event) -> Iterator[None]:
    """Ctrl-C sets event instead of raising KeyboardInterrupt (signal handlers: main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: event.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def reply_mode(inp: TextIO) -> Iterator[threading.Event]:
    """While a reply streams: typing is not echoed into it, and Ctrl-C sets the yielded event, which
    the streaming loop checks between tokens (an exception inside a forward pass could leave the
    KV cache half written)."""
    stop = threading.Event()
    with _echo_off(inp), _sigint_sets(stop):
        yield stop

"""Chat templates (jinja2 sandbox) against llama-cpp-python's renderer, hostile templates, the
chat completion API, `fitllm chat` and `fitllm run -i` (commands, Ctrl-C, echo; in tmux for real)."""

import io
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import fitllm
from conftest import golden
from fitllm.api import Llama
from fitllm.chat import CHATML, ChatTemplate, ChatTemplateError
from fitllm.chat_commands import Conversation, is_command, run_command
from fitllm.cli import build_parser
from fitllm.gguf import GGUFFile
from fitllm.runner import chat, run
from fitllm.tty import read_line, reply_mode


@pytest.fixture(scope="module")
def llm(smollm2_path):
    return Llama(smollm2_path, n_ctx=512, verbose=False)


def test_templates_render_as_llama_cpp_python(smollm2_path):
    g = golden("chat")  # made by tests/golden/chat_templates.py
    smol = GGUFFile(smollm2_path).get("tokenizer.chat_template")
    for case in g["cases"]:
        source = smol if case["template"] == "smollm2" else CHATML
        assert ChatTemplate(source, g["bos"], g["eos"]).render(case["messages"]) == case["prompt"]


def test_the_models_template_is_used(llm):
    msgs = [{"role": "user", "content": "Hi!"}]
    assert llm.chat_template.render(msgs).startswith("<|im_start|>system\nYou are a helpful AI assistant")
    assert ChatTemplate(None).render(msgs) == "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"


HOSTILE = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('touch {flag}').read() }}",
    "{{ joiner.__init__.__globals__['__builtins__']['__import__']('os').system('touch {flag}') }}",
    "{% for m in messages %}{{ m.__class__.__base__.__subclasses__() }}{% endfor %}",
    "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.system('touch {flag}') }}",
    "{{ messages.append(1) }}",  # the sandbox is immutable
    "{% for i in range(10**9) %}x{% endfor %}",  # the sandbox caps ranges
]


@pytest.mark.parametrize("source", HOSTILE)
def test_hostile_templates_fail_safely(source, tmp_path):
    flag = tmp_path / "PWNED"
    t = ChatTemplate(source.replace("{flag}", str(flag)))
    with pytest.raises(ChatTemplateError):
        t.render([{"role": "user", "content": "hi"}])
    assert not flag.exists()


def test_template_errors_and_bad_messages():
    with pytest.raises(ChatTemplateError, match="only user"):
        ChatTemplate("{{ raise_exception('only user turns') }}").render([{"role": "user", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="does not parse"):
        ChatTemplate("{% for %}")
    for bad in ([], [{"role": "wizard", "content": "x"}], [{"role": "user", "content": 3}], "hi"):
        with pytest.raises(ValueError):
            ChatTemplate(None).render(bad)


def test_chat_completion_and_its_stream(llm):
    msgs = [{"role": "user", "content": "What is 2+2?"}]
    r = llm.create_chat_completion(msgs, max_tokens=24, temperature=0)
    assert r["object"] == "chat.completion" and r["choices"][0]["message"]["role"] == "assistant"
    text = r["choices"][0]["message"]["content"]
    assert "4" in text
    chunks = list(llm.create_chat_completion(msgs, max_tokens=24, temperature=0, stream=True))
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == text
    assert chunks[-1]["choices"][0]["finish_reason"] == r["choices"][0]["finish_reason"]
    prompt = llm.tokenize(llm.chat_template.render(msgs).encode(), add_bos=False, special=True)
    same = llm.create_completion(prompt, max_tokens=24, temperature=0)["choices"][0]["text"]
    assert same == text


def test_terminal_chat_keeps_history_and_resets(llm):
    out = io.StringIO()
    chat(
        llm,
        None,
        dict(temperature=0, max_tokens=12),
        out,
        io.StringIO("Hi\nWhat did I say?\n/reset\n/exit\n"),
    )
    text = out.getvalue()
    assert text.count("> ") == 4 and "(conversation reset)" in text
    assert os.linesep in text


# --- `fitllm chat` and `fitllm run -i` in the terminal -------------------------------------------


class FakeLlama:
    """Streams canned replies; sends itself SIGINT (Ctrl-C) after `interrupt_after` pieces."""

    def __init__(self, pieces: list[str], interrupt_after: int | None = None) -> None:
        self.pieces, self.interrupt_after = pieces, interrupt_after
        self.prompts: list = []

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> bytes:
        return text

    def _chunks(self, make) -> Iterator[dict]:
        for i, piece in enumerate(self.pieces):
            if i == self.interrupt_after:
                os.kill(os.getpid(), signal.SIGINT)
            yield make(piece)

    def create_completion(self, tokens: bytes, **kw) -> Iterator[dict]:
        self.prompts.append(tokens.decode())
        return self._chunks(lambda p: {"choices": [{"text": p}]})

    def create_chat_completion(self, messages: list, **kw) -> Iterator[dict]:
        self.prompts.append(json.loads(json.dumps(messages)))
        return self._chunks(lambda p: {"choices": [{"delta": {"content": p}}]})


def test_commands_act_on_the_conversation(tmp_path):
    c = Conversation.start("Be brief.")
    c.add("user", "Hi")
    c.add("assistant", "Hello!")
    out = io.StringIO()
    assert not run_command("/help", c, out)
    assert all(name in out.getvalue() for name in ("/help", "/reset", "/save FILE", "/exit, /quit"))
    target = tmp_path / "conv.json"
    target.write_text("old")
    out = io.StringIO()
    assert not run_command(f"/save {target}", c, out)
    assert json.loads(target.read_text()) == c.messages and len(c.messages) == 3
    assert os.listdir(tmp_path) == ["conv.json"]  # the temporary file was renamed, none left
    assert str(target) in out.getvalue()
    for line, said in (("/save", "usage: /save FILE"), (f"/save {tmp_path}/no/such.json", "could not save")):
        out = io.StringIO()
        assert not run_command(line, c, out) and out.getvalue().startswith(said)
    out = io.StringIO()
    assert not run_command("/bogus arg", c, out)
    assert out.getvalue() == "unknown command /bogus: /help lists the commands\n"
    assert not run_command("/reset", c, io.StringIO())
    assert c.messages == [{"role": "system", "content": "Be brief."}]
    assert run_command("/exit", c, io.StringIO()) and run_command(" /quit ", c, io.StringIO())
    assert is_command("/x") and not is_command("x /y")


def test_chat_keeps_commands_and_empty_lines_from_the_model(tmp_path):
    llm, out = FakeLlama(["Hel", "lo"]), io.StringIO()
    saved = tmp_path / "c.json"
    lines = f"/help\n\n   \n/bogus\nHi\n/save {saved}\n/quit\nnever read\n"
    chat(llm, None, {}, out, io.StringIO(lines))
    assert llm.prompts == [[{"role": "user", "content": "Hi"}]]
    assert json.loads(saved.read_text())[-1] == {"role": "assistant", "content": "Hello"}
    assert "/save FILE" in out.getvalue() and "unknown command /bogus" in out.getvalue()


def test_ctrl_c_stops_a_reply_and_keeps_it(tmp_path):
    llm, out = FakeLlama(["one ", "two ", "three ", "four "], interrupt_after=2), io.StringIO()
    chat(llm, None, {}, out, io.StringIO(f"Count\n/save {tmp_path / 'c.json'}\n"))
    # the handler runs as "three " is made: it is printed, then the stream stops
    reply = json.loads((tmp_path / "c.json").read_text())[-1]
    assert reply == {"role": "assistant", "content": "one two three "}
    assert "four" not in out.getvalue() and out.getvalue().count("> ") == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_chat_reply_length_default():
    assert build_parser().parse_args(["chat"]).n_predict == 512
    assert build_parser().parse_args(["chat", "-n", "-1"]).n_predict == -1


def test_run_interactive_color_ctrl_c_and_empty_line():
    llm, out = FakeLlama(["Once ", "upon ", "a ", "time"], interrupt_after=2), io.StringIO()
    run(
        llm,
        "Story:",
        -1,
        {},
        color=True,
        interactive=True,
        reverse_prompts=["User:"],
        out=out,
        inp=io.StringIO("Go on please\n\n"),
    )
    # the terminal echoes the typed line; fitllm writes it nowhere (it was shown twice)
    assert "Go on please" not in out.getvalue() and "\033[32m" in out.getvalue()
    # Ctrl-C stopped each turn after "a ", then the reverse prompt handed over to the user
    assert llm.prompts[:2] == ["Story:", "Story:Once upon a User:Go on please\n"]
    # an empty line hands back to the model with nothing added, as llama.cpp's interactive mode
    assert llm.prompts[2] == llm.prompts[1] + "Once upon a User:"
    assert len(llm.prompts) == 3 and out.getvalue().count("User:") == 3


def test_reply_mode_turns_echo_off_and_drops_typing():
    master, slave = os.openpty()
    with os.fdopen(slave, "r") as tty:
        before = termios.tcgetattr(slave)
        assert before[3] & termios.ECHO
        with pytest.raises(KeyboardInterrupt), reply_mode(tty):
            assert not termios.tcgetattr(slave)[3] & termios.ECHO
            os.write(master, b"typed during the reply\n")
            time.sleep(0.1)
            raise KeyboardInterrupt  # settings come back however the reply ends
        assert termios.tcgetattr(slave) == before
        assert select.select([slave], [], [], 0.2)[0] == []  # nothing left for the next prompt
    os.close(master)


def test_read_line_without_a_terminal():
    out = io.StringIO()
    inp = io.StringIO("a line\n")
    assert read_line("> ", inp, out, editing=False, color="\033[32m") == "a line"
    assert out.getvalue() == "> \033[32m\033[0m"
    with pytest.raises(EOFError):
        read_line("> ", inp, out, editing=False)


class Tmux:
    """A tmux server of its own (-L) with one 120x40 window running a command."""

    def __init__(self, name: str, command: str) -> None:
        self.base = ["tmux", "-L", name]
        size = ["-x", "120", "-y", "40"]
        subprocess.run([*self.base, "new-session", "-d", "-s", "t", *size, command], check=True)

    def keys(self, *keys: str) -> None:
        subprocess.run([*self.base, "send-keys", "-t", "t", *keys], check=True)

    def screen(self) -> str:
        return subprocess.run(
            [*self.base, "capture-pane", "-p", "-t", "t", "-S", "-100"], capture_output=True, text=True
        ).stdout

    def wait(self, ready, what: str, timeout: float = 20.0) -> str:
        deadline = time.time() + timeout
        while not ready(screen := self.screen()):
            assert time.time() < deadline, f"waited for {what}; the screen:\n{screen}"
            time.sleep(0.1)
        return screen

    def close(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True)


def _last_line(screen: str) -> str:
    lines = screen.rstrip().splitlines()
    return lines[-1].rstrip() if lines else ""


@pytest.mark.e2e
def test_chat_in_a_real_terminal(smollm2_path, tmp_path):
    """fitllm chat in tmux: /help, Ctrl-C in a reply (typing meanwhile not shown), history with
    the Up arrow (loaded from the file, saved back), /exit with status 0."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    from fitllm.tokenizer import cache_dir

    cache = tmp_path / "cache"  # a fresh history; the model's caches linked from the real one
    cache.mkdir()
    for sub in ("packed", "tokenizers"):
        if (cache_dir() / sub).exists():
            (cache / sub).symlink_to(cache_dir() / sub)
    (cache / "chat_history").write_text("an old question\n")
    src = Path(fitllm.__file__).parents[1]
    chat_cmd = f"{sys.executable} -m fitllm chat -m {smollm2_path} -c 512 -n -1"
    env = f"env PYTHONPATH={src} FITLLM_CACHE={cache} TERM=xterm"
    t = Tmux(f"fitllm-test-{os.getpid()}", f"{env} {chat_cmd}; echo exit status $?; sleep 60")
    try:
        t.wait(lambda s: _last_line(s) == ">", "the prompt", 60)
        t.keys("/help", "Enter")
        t.wait(lambda s: "/save FILE" in s and _last_line(s) == ">", "the command list")
        t.keys("Tell me a long story about a dragon.", "Enter")
        t.wait(lambda s: not _last_line(s).startswith(">"), "the reply")
        t.keys("zzqq")  # typed during the reply: neither shown nor left on the next prompt
        time.sleep(0.3)
        t.keys("C-c")
        stopped = t.wait(lambda s: _last_line(s) == ">", "the prompt after Ctrl-C", 10)
        time.sleep(1)
        assert t.screen() == stopped and "zzqq" not in stopped  # the reply stays stopped
        t.keys("Up")
        t.wait(lambda s: _last_line(s) == "> Tell me a long story about a dragon.", "the recalled line")
        t.keys("Up", "Up")
        t.wait(lambda s: _last_line(s) == "> an old question", "the line from the history file")
        t.keys("C-u", "/exit", "Enter")
        screen = t.wait(lambda s: "exit status" in s, "fitllm to exit")
    finally:
        t.close()
    print(screen)
    assert "exit status 0" in screen and "^[" not in screen and "Traceback" not in screen
    saved = (cache / "chat_history").read_text().splitlines()
    assert saved == ["an old question", "/help", "Tell me a long story about a dragon.", "/exit"]

"""Chat templates (jinja2 sandbox) against llama-cpp-python's renderer, hostile templates, the
chat completion API and `fitllm chat`."""

import io
import os

import pytest

from conftest import golden
from fitllm.api import Llama
from fitllm.chat import CHATML, ChatTemplate, ChatTemplateError
from fitllm.gguf import GGUFFile
from fitllm.runner import chat


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

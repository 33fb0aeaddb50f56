"""Chat templates that would compute without end or fill memory are refused within the limits
(template_limits.py), through the API and the server, and ordinary templates render unchanged."""

import time

import httpx
import pytest

from fitllm.api import Llama
from fitllm.chat import ChatTemplate, ChatTemplateError
from fitllm.server import Server
from test_server import health_latency, start
from tiny_models import write_tiny

HI = [{"role": "user", "content": "hi"}]
DOS = {
    "power": "{{ 10 ** 10000000000 }}",
    "range": "{% for i in range(10**9) %}x{% endfor %}",
    "repeat": "{{ 'a' * 10**10 }}",
    "loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "doubling": "{% macro f(s, n) %}{{ f(s ~ s, n - 1) if n else s }}{% endmacro %}{{ f('ab', 40) }}",
    "width": "{{ '%999999999999d' % 1 }}{{ '{:>999999999999}'.format(1) }}",
    "output": "{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}",
    "join": "{{ (['a' * 10000000] * 10)|join }}",
}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("dos")
    return {k: write_tiny(d / f"{k}.gguf", "llama", chat_template=v) for k, v in DOS.items()}


@pytest.mark.parametrize("name", DOS)
def test_hostile_templates_are_refused_in_time(models, name):
    llm = Llama(models[name], n_ctx=64, verbose=False)
    t0 = time.perf_counter()
    with pytest.raises(ChatTemplateError, match="chat template exceeded"):
        llm.create_chat_completion(HI, max_tokens=1)
    assert time.perf_counter() - t0 < 2


def test_limits_are_the_templates_own():
    ok = "{{ 'ab' * 3 }} {{ [1] * 2 }} {{ 2 ** 64 }} {{ '%05d' % 7 }} {{ '{:>4}'.format(1) }} {{ 'x' ~ 1 }}"
    assert ChatTemplate(ok).render(HI) == "ababab [1, 1] 18446744073709551616 00007    1 x1"
    small = ChatTemplate("{{ messages[0]['content'] * 3 }}", max_chars=5)
    with pytest.raises(ChatTemplateError, match="size limit of 5"):
        small.render(HI)
    slow = ChatTemplate(DOS["loops"], max_seconds=0.2)
    t0 = time.perf_counter()
    with pytest.raises(ChatTemplateError, match="time limit of 0.2 s"):
        slow.render(HI)
    assert time.perf_counter() - t0 < 0.5


def test_ordinary_templates_render_as_before(smollm2_path):
    """SmolLM2's template, for a long conversation, as jinja2's plain sandbox renders it."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from fitllm.gguf import GGUFFile

    source = GGUFFile(smollm2_path).get("tokenizer.chat_template")
    msgs = [{"role": ("user", "assistant")[i % 2], "content": f"turn {i} " * 30} for i in range(100)]
    plain = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(source)
    kw = dict(add_generation_prompt=True, bos_token="<s>", eos_token="</s>")
    assert ChatTemplate(source, "<s>", "</s>").render(msgs) == plain.render(messages=msgs, **kw)


@pytest.mark.e2e
def test_the_server_refuses_them_and_keeps_answering(models):
    url, u = start(Server(Llama(models["loops"], n_ctx=64, verbose=False), parallel=1))
    try:
        with health_latency(url) as worst:
            for _ in range(2):  # each renders for the whole time limit
                r = httpx.post(url + "/v1/chat/completions", json={"messages": HI}, timeout=10)
                assert r.status_code == 400, r.text
                err = r.json()["error"]
                assert "chat template exceeded the time limit" in err["message"]
                assert err["code"] == "chat_template_error"
    finally:
        u.should_exit = True
    print(f"/health at worst {worst[0]:.3f} s while templates were refused")
    assert worst[0] < 0.5, worst

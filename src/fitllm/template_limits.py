"""Limits on what a chat template (a model file's code) may compute: jinja2's sandbox stops it
reaching Python's internals but not burning CPU or memory. `{{ 10 ** 10 ** 10 }}`,
`{{ 'a' * 10 ** 10 }}` or loops within loops would run until the process is killed.

LimitedSandbox refuses, with ChatTemplateError("chat template exceeded ..."), before they are made:
a power or product over MAX_INT_BITS, a string or list over max_chars (from `*`, `+`, `~`, `%`,
str.format, a call or filter given a size or sized argument over it, join), and `range` over
jinja2's MAX_RANGE (100,000). limited_render() bounds the whole render's output and time."""

from __future__ import annotations

import functools
import re
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from jinja2.compiler import CodeGenerator, Frame
from jinja2.nodes import Concat
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_CHARS = 1 << 24  # any string or list a template makes, and its whole output
MAX_INT_BITS = 1 << 16  # 19,729 digits: more than any template needs, and instant to compute
MAX_SECONDS = 1.0  # a chat template renders in milliseconds
_NUMBER = re.compile(r"\d{4,}")


class ChatTemplateError(ValueError):
    pass


def exceeded(what: str) -> ChatTemplateError:
    return ChatTemplateError(f"chat template exceeded {what}")


def _size(x: Any) -> int:
    """Characters (or items) a value stands for: what joining or repeating it would make."""
    if isinstance(x, str):
        return len(x)
    if isinstance(x, (list, tuple)):
        return len(x) + sum(len(i) for i in x if isinstance(i, (str, list, tuple)))
    return 0


class _CheckedConcat(CodeGenerator):
    """Compiles `a ~ b` to environment.concat(...), which checks the result's length first."""

    def visit_Concat(self, node: Concat, frame: Frame) -> None:
        self.write("environment.concat_checked((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class LimitedSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"**", "*", "+", "%"})
    code_generator_class = _CheckedConcat

    def __init__(self, *a: Any, max_chars: int = MAX_CHARS, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.max_chars = max_chars
        for name, f in list(self.filters.items()):
            self.filters[name] = self._checked_filter(name, f)

    def _check(self, args: Any) -> None:
        """A size (int) or a sized value over the limit, as an argument, is refused."""
        for a in args:
            if isinstance(a, int) and not isinstance(a, bool) and abs(a) > self.max_chars:
                raise exceeded(f"the size limit: an argument of {a:.3g}")
            if _size(a) > self.max_chars:
                raise exceeded(f"the size limit of {self.max_chars} characters")

    def _check_format(self, fmt: str) -> None:
        # a width or precision in a format string (`%999999999d`, `{:>999999999}`) is a size
        for n in _NUMBER.findall(fmt):
            if int(n) > self.max_chars:
                raise exceeded(f"the size limit: a format width of {n}")

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0:
            if abs(left).bit_length() * right > MAX_INT_BITS:
                raise exceeded(f"the number limit: {left} ** {right} is over {MAX_INT_BITS} bits")
        elif operator == "*":
            ints = [x for x in (left, right) if isinstance(x, int)]
            if len(ints) == 2 and left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise exceeded(f"the number limit: a product over {MAX_INT_BITS} bits")
            seq = right if isinstance(left, int) else left
            if len(ints) == 1 and ints[0] > 0 and _size(seq) * ints[0] > self.max_chars:
                raise exceeded(f"the size limit of {self.max_chars} characters (from *)")
        elif operator == "+" and _size(left) + _size(right) > self.max_chars:
            raise exceeded(f"the size limit of {self.max_chars} characters (from +)")
        elif operator == "%" and isinstance(left, str):
            self._check_format(left)
            self._check(right if isinstance(right, tuple) else (right,))
        return super().call_binop(context, operator, left, right)

    def concat_checked(self, parts: tuple) -> str:
        strings = [str(p) for p in parts]
        if sum(map(len, strings)) > self.max_chars:
            raise exceeded(f"the size limit of {self.max_chars} characters (from ~)")
        return "".join(strings)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        __self._check(args)
        __self._check(kwargs.values())
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            self._check_format(value.__self__)
        return wrapped

    def _checked_filter(self, name: str, f: Callable) -> Callable:
        @functools.wraps(f)  # keeps jinja_pass_arg: the filter gets the context it asks for
        def checked(*args: Any, **kwargs: Any) -> Any:
            if name == "join" and len(args) > 1:  # (eval_ctx, value, ...): what it joins, counted
                args = (args[0], list(args[1]), *args[2:])
            self._check(args)
            self._check(kwargs.values())
            out = f(*args, **kwargs)
            if _size(out) > self.max_chars:
                raise exceeded(f"the size limit of {self.max_chars} characters (from {name})")
            return out

        return checked


def limited_render(chunks: Iterator[str], max_chars: int, seconds: float) -> str:
    """Join a template's generate() output, refusing it past max_chars or `seconds`; the time is
    checked on every line of the template's code (a trace on the compiled template's frames)."""
    deadline = time.monotonic() + seconds

    def line(frame: Any, event: str, arg: Any) -> Any:
        if time.monotonic() > deadline:
            raise exceeded(f"the time limit of {seconds:g} s")
        return line

    def call(frame: Any, event: str, arg: Any) -> Any:
        # only the template's own code: jinja2's and Python's run at full speed
        return line if frame.f_code.co_filename == "<template>" else None

    out, n, previous = [], 0, sys.gettrace()
    sys.settrace(call)
    try:
        for chunk in chunks:
            n += len(chunk)
            if n > max_chars:
                raise exceeded(f"the output limit of {max_chars} characters")
            out.append(chunk)
        if time.monotonic() > deadline:
            raise exceeded(f"the time limit of {seconds:g} s")
    finally:
        sys.settrace(previous)
        chunks.close()
    return "".join(out)

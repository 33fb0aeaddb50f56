"""The i-quants' tables in the compiled core are gguf-py's (and llama.cpp's, where its source is here)."""

import re
from pathlib import Path

import pytest

from fitllm.quant import tables

HEADER = Path(tables.__file__).parents[1] / "kernels" / "csrc" / "iq_tables.h"
GGML_COMMON = Path.home() / ".cache/llamacpp-tools/src/vendor/llama.cpp/ggml/src/ggml-common.h"


def test_header_is_generated_from_gguf_py():
    assert HEADER.read_text() == tables.c_header(), "run: python -m fitllm.quant.tables > " + str(HEADER)


def _arrays(text: str, pattern: str) -> dict[str, list[int]]:
    out = {}
    for m in re.finditer(pattern, text, re.S):
        out[m.group(1)] = [int(v, 0) for v in re.findall(r"-?0x[0-9a-fA-F]+|-?\d+", m.group(2))]
    return out


@pytest.mark.skipif(not GGML_COMMON.exists(), reason="llama.cpp's source is not here")
def test_tables_equal_llama_cpps():
    ours = _arrays(HEADER.read_text(), r"static const \w+ (\w+)\[\d+\] = \{(.*?)\};")
    text = GGML_COMMON.read_text()
    theirs = _arrays(text, r"GGML_TABLE_BEGIN\(\w+, (\w+), \w+\)(.*?)GGML_TABLE_END")
    theirs |= {a: theirs[b] for a, b in re.findall(r"#define (\w+) (\w+)\n", text) if b in theirs}
    for name, values in ours.items():
        want = [v & 0xFF if name.startswith("kvalues") else v for v in theirs[name]]
        got = [v & 0xFF if name.startswith("kvalues") else v for v in values]
        assert got == want, name

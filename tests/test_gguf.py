"""Bad GGUF files: a one-line GGUFError (and exit code 1 from the CLI), never a crash."""

import struct
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFWriter

from fitllm.gguf import GGUFError, GGUFFile
from fitllm.models import load_model
from tiny_models import write_tiny


@pytest.fixture
def tiny(tmp_path):
    return write_tiny(tmp_path / "tiny.gguf", "llama")


def test_opens_zero_copy(tiny):
    f = GGUFFile(tiny)
    t = f.tensor("blk.0.attn_q.weight")
    assert t.shape == (64, 64) and t.type_name == "Q8_0"
    assert not t.data.flags.owndata  # a view of the mapping, nothing dequantized
    assert f.get("llama.block_count") == 2


def corrupt(tmp_path, data: bytes) -> str:
    p = tmp_path / "bad.gguf"
    p.write_bytes(data)
    return str(p)


@pytest.mark.parametrize("cut", [10, 100, 1000, -100])
def test_truncated(tmp_path, tiny, cut):
    data = open(tiny, "rb").read()
    with pytest.raises(GGUFError) as e:
        GGUFFile(corrupt(tmp_path, data[:cut]))
    assert "\n" not in str(e.value)


def test_wrong_magic(tmp_path, tiny):
    data = open(tiny, "rb").read()
    with pytest.raises(GGUFError, match="not a GGUF file"):
        GGUFFile(corrupt(tmp_path, b"GGML" + data[4:]))


def _tensor_info_offset(data: bytes, name: bytes) -> int:
    """Offset of the (n_dims, dims, type, offset) record following a tensor name."""
    i = data.index(struct.pack("<Q", len(name)) + name)
    return i + 8 + len(name)


def test_unknown_tensor_type(tmp_path, tiny):
    data = bytearray(open(tiny, "rb").read())
    i = _tensor_info_offset(data, b"blk.0.attn_q.weight")
    n_dims = struct.unpack_from("<I", data, i)[0]
    struct.pack_into("<I", data, i + 4 + 8 * n_dims, 250)
    with pytest.raises(GGUFError, match="unknown tensor type 250"):
        GGUFFile(corrupt(tmp_path, bytes(data)))


def test_tensor_past_end(tmp_path, tiny):
    data = bytearray(open(tiny, "rb").read())
    i = _tensor_info_offset(data, b"blk.1.ffn_down.weight")
    n_dims = struct.unpack_from("<I", data, i)[0]
    struct.pack_into("<Q", data, i + 4 + 8 * n_dims + 4, 1 << 30)
    with pytest.raises(GGUFError, match="blk.1.ffn_down.weight.*past the end"):
        GGUFFile(corrupt(tmp_path, bytes(data)))


def test_unsupported_type(tmp_path):
    w = GGUFWriter(str(tmp_path / "iq.gguf"), "llama")
    w.add_tensor("x", np.zeros((4, 66), np.uint8), raw_dtype=GGMLQuantizationType.IQ2_XXS)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(GGUFError, match="IQ2_XXS.*not support"):
        GGUFFile(str(tmp_path / "iq.gguf")).check_supported()


def test_missing_key(tmp_path):
    p = write_tiny(tmp_path / "t.gguf", "llama")
    data = open(p, "rb").read().replace(b"llama.block_count", b"llama.block_cOunt")
    with pytest.raises(GGUFError, match="llama.block_count.*missing"):
        load_model(GGUFFile(corrupt(tmp_path, data)))


def test_unknown_architecture(tmp_path):
    p = write_tiny(tmp_path / "t.gguf", "llama")
    data = (
        open(p, "rb")
        .read()
        .replace(b"\x05\x00\x00\x00\x00\x00\x00\x00llama", b"\x05\x00\x00\x00\x00\x00\x00\x00llamb", 1)
    )
    with pytest.raises(GGUFError, match="not supported"):
        load_model(GGUFFile(corrupt(tmp_path, data)))


@pytest.mark.e2e
@pytest.mark.parametrize("cut", [50, 5000])
def test_cli_error_is_one_line(tmp_path, tiny, cut):
    bad = corrupt(tmp_path, open(tiny, "rb").read()[:cut])
    for args in (["info", bad], ["run", "-m", bad, "-p", "hi", "-n", "2"]):
        r = subprocess.run([sys.executable, "-m", "fitllm", *args], capture_output=True, text=True)
        assert r.returncode == 1
        assert r.stderr.startswith("fitllm: error:") and r.stderr.count("\n") == 1, r.stderr


@pytest.mark.parametrize("chunk", [8192, 3])
@pytest.mark.parametrize("odd", [[], ["a\0b"], [b"\xe2\x82", b"\xff"]])
def test_string_arrays_read_as_gguf_py_reads_them(tmp_path, monkeypatch, odd, chunk):
    # strings decode a chunk at a time in one pass, one by one in a chunk with a NUL: all against
    # gguf-py's own reader
    import functools

    from gguf import GGUFReader

    from fitllm.gguf import reader

    monkeypatch.setattr(reader, "_decode_strings", functools.partial(reader._decode_strings, chunk=chunk))

    items = ["", "hello", "▁the", "<|im_end|>", "", "日本", *odd, "last"]
    w = GGUFWriter(str(tmp_path / "s.gguf"), "llama")
    w.add_array("test.strings", items)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    ref = GGUFReader(str(tmp_path / "s.gguf")).fields["test.strings"]
    want = [bytes(ref.parts[i]).decode("utf-8", "surrogateescape") for i in ref.data]
    f = GGUFFile(str(tmp_path / "s.gguf"))
    assert f.get("test.strings") == want and len(want) == len(items)


def _gguf_py_view(path: str) -> tuple[dict, dict]:
    """Metadata and tensor table as gguf-py's own reader gives them."""
    from gguf import GGUFReader, GGUFValueType

    r = GGUFReader(path)
    meta = {}
    for k, fl in r.fields.items():
        if k.startswith("GGUF."):
            continue
        if fl.types[0] == GGUFValueType.ARRAY and fl.types[-1] == GGUFValueType.STRING:
            meta[k] = [bytes(fl.parts[i]).decode("utf-8", "surrogateescape") for i in fl.data]
        elif fl.types[0] == GGUFValueType.ARRAY:
            meta[k] = np.concatenate([fl.parts[i] for i in fl.data]).tolist()
        elif fl.types[0] == GGUFValueType.STRING:
            meta[k] = bytes(fl.parts[fl.data[0]]).decode("utf-8", "surrogateescape")
        else:
            meta[k] = fl.parts[fl.data[0]][0].item()
    tensors = {
        t.name: (int(t.tensor_type), tuple(reversed(t.shape.tolist())), int(t.data_offset), int(t.n_bytes))
        for t in r.tensors
    }
    return meta, tensors


# Gemma's 262k-piece vocabulary is slow through gguf-py's reader: the slow tier
@pytest.mark.parametrize(
    "name",
    [
        pytest.param("smollm2", marks=pytest.mark.model),
        pytest.param("gemma", marks=[pytest.mark.model, pytest.mark.slow]),
        "tiny",
    ],
)
def test_reads_real_models_as_gguf_py_does(request, tiny, name):
    # fitllm walks the header itself (load time); gguf-py's reader is the oracle
    fixture = {"smollm2": "smollm2_path", "gemma": "gemma3_path", "tiny": "tiny"}[name]
    path = request.getfixturevalue(fixture)
    meta, tensors = _gguf_py_view(path)
    f = GGUFFile(path)
    got = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in f.metadata.items()}
    assert got == meta
    assert {n: (t.ggml_type, t.shape, t.offset, t.nbytes) for n, t in f.tensors.items()} == tensors
    raw = open(path, "rb").read()
    for t in f.tensors.values():  # views of exactly the tensor's bytes
        assert bytes(t.data) == raw[t.offset : t.offset + t.nbytes] and not t.data.flags.owndata


def test_type_table_is_gguf_pys():
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    from fitllm.quant import GGML_TYPES, tensor_nbytes

    for i, (name, block, size) in GGML_TYPES.items():
        assert GGMLQuantizationType(i).name == name and GGML_QUANT_SIZES[GGMLQuantizationType(i)] == (
            block,
            size,
        )
        from gguf.quants import quant_shape_to_byte_shape

        assert tensor_nbytes((3, 4 * block), i) == int(np.prod(quant_shape_to_byte_shape((3, 4 * block), i)))


def test_loading_a_model_does_not_import_gguf_py(tiny):
    # gguf-py (with yaml and sentencepiece) takes ~30 ms to import: a third of load-to-first-token
    code = (
        "import sys; from fitllm import Llama; m = Llama(sys.argv[1], verbose=False);"
        " m.eval(m.tokenize(b'hi')); print(sorted(k for k in sys.modules if k.split('.')[0] == 'gguf'))"
    )
    r = subprocess.run([sys.executable, "-c", code, tiny], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


def test_big_endian_file(tmp_path):
    from gguf import GGUFEndian

    w = GGUFWriter(str(tmp_path / "be.gguf"), "llama", endianess=GGUFEndian.BIG)
    w.add_uint32("test.u32", 7)
    w.add_array("test.ints", [1, -2, 3])
    w.add_array("test.strings", ["a", "bc"])
    w.add_tensor("x", np.arange(32, dtype=np.float32).reshape(2, 16))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    f = GGUFFile(str(tmp_path / "be.gguf"))
    assert f.get("test.u32") == 7 and f.get("test.ints").tolist() == [1, -2, 3]
    assert f.get("test.strings") == ["a", "bc"]
    assert f.tensor("x").shape == (2, 16)
    assert f.tensor("x").data.view(">f4").tolist() == list(range(32))


def test_deeply_nested_arrays(tmp_path, tiny):
    # an array of arrays of ... (12 bytes a level) ends in a GGUFError, not a RecursionError
    data = bytearray(open(tiny, "rb").read())
    n_kv = struct.unpack_from("<Q", data, 16)[0]
    key = b"test.nested"
    nested = struct.pack("<Q", len(key)) + key + struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * 5000
    struct.pack_into("<Q", data, 16, n_kv + 1)
    with pytest.raises(GGUFError, match="nested"):
        GGUFFile(corrupt(tmp_path, bytes(data[:24] + nested + data[24:])))

"""The block formats fitllm computes with. Facts are a table; the kernels are in fitllm.kernels.

Each format's specification is gguf-py's numpy reference (gguf.quants); the compiled
dequantizers are tested bit-exact against it and the matrix products against float64.
The type table is gguf-py's GGML_QUANT_SIZES (a test checks they agree), kept here so that
loading a model does not import gguf-py.
"""

#: ggml type id -> (name, elements per block, bytes per block)
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
}
_ID = {name: i for i, (name, _, _) in GGML_TYPES.items()}

#: formats with a compiled dequantizer and matrix product
SUPPORTED_TYPES: frozenset[int] = frozenset(
    _ID[n]
    for n in (
        "F32",
        "F16",
        "BF16",
        "Q8_0",
        "Q4_0",
        "Q4_1",
        "Q5_0",
        "Q5_1",
        "Q2_K",
        "Q3_K",
        "Q4_K",
        "Q5_K",
        "Q6_K",
    )
)


def block_size(ggml_type: int) -> tuple[int, int]:
    """(elements per block, bytes per block)"""
    return GGML_TYPES[ggml_type][1:]


def tensor_nbytes(shape: tuple[int, ...], ggml_type: int) -> int:
    """Bytes of a tensor of `shape` (numpy order) stored as ggml_type; its rows must be whole blocks."""
    name, block, type_size = GGML_TYPES[ggml_type]
    if shape[-1] % block:
        raise ValueError(f"a row of {shape[-1]} values is not a whole number of {name} blocks of {block}")
    n = 1
    for d in shape[:-1]:
        n *= int(d)
    return n * (int(shape[-1]) // block) * type_size


def type_name(ggml_type: int) -> str:
    return GGML_TYPES[ggml_type][0]


def type_id(name: str) -> int:
    return _ID[name]

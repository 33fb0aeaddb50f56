"""The block formats fitllm computes with. Facts are a table; the kernels are in fitllm.kernels.

Each format's specification is gguf-py's numpy reference (gguf.quants); the compiled
dequantizers are tested bit-exact against it and the matrix products against float64.
"""

from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

#: formats with a compiled dequantizer and matrix product
SUPPORTED_TYPES: frozenset[int] = frozenset(
    int(t)
    for t in (
        T.F32,
        T.F16,
        T.BF16,
        T.Q8_0,
        T.Q4_0,
        T.Q4_1,
        T.Q5_0,
        T.Q5_1,
        T.Q2_K,
        T.Q3_K,
        T.Q4_K,
        T.Q5_K,
        T.Q6_K,
    )
)


def block_size(ggml_type: int) -> tuple[int, int]:
    """(elements per block, bytes per block)"""
    return GGML_QUANT_SIZES[T(ggml_type)]


def type_name(ggml_type: int) -> str:
    return T(ggml_type).name

"""ctypes binding of the compiled core (csrc/). ctypes drops the GIL for every call.

Weights are passed as the raw GGUF bytes of a tensor (a zero-copy view of the mmapped file);
the C side checks every size before it reads. lib.py loads the library and declares its functions,
blocks.py holds the block-level operations, layer.py the transformer block; all are re-exported here.
"""

from fitllm.kernels.blocks import (
    PACKED,
    QUANTIZE_TYPES,
    RepackJob,
    aligned,
    dequantize,
    get_rows,
    gguf_strings,
    matmul,
    packed_bytes,
    quantize,
    quantize_act,
    read_sum,
    repack,
    repack_file,
    rms_norm,
    row_bytes,
)
from fitllm.kernels.layer import (
    FETCH_FN,
    STAGE_ALL,
    STAGE_ATTN,
    STAGE_DONE,
    STAGE_FFN,
    LayerSpec,
    LayerStack,
    Mat,
    Vec,
    layer_forward,
    layer_spec,
)
from fitllm.kernels.lib import (
    ISA_NAMES,
    OWN_ENV,
    SPINCOUNT,
    _lib,
    batch_min_tokens,
    get_isa,
    get_threads,
    isa_supported,
    set_isa,
    set_threads,
)

__all__ = [
    "FETCH_FN", "ISA_NAMES", "OWN_ENV", "PACKED", "QUANTIZE_TYPES", "SPINCOUNT", "STAGE_ALL", "STAGE_ATTN",
    "STAGE_DONE", "STAGE_FFN", "LayerSpec", "LayerStack", "Mat", "RepackJob", "Vec", "_lib", "aligned",
    "batch_min_tokens",
    "dequantize", "get_isa", "get_rows", "get_threads", "gguf_strings", "isa_supported", "layer_forward",
    "layer_spec", "matmul", "packed_bytes", "quantize", "quantize_act", "read_sum", "repack", "repack_file",
    "rms_norm", "row_bytes", "set_isa", "set_threads",
]  # fmt: skip

"""Builds the compiled kernels (a plain C library loaded with ctypes) with the machine's gcc."""
from glob import glob

from setuptools import Extension, setup

CSRC = "src/fitllm/kernels/csrc/"
SOURCES = ("core.c", "abi.c", "act.c", "layer.c", "dequant.c", "quantize.c", "kquantize.c", "repack.c")
ISAS = ("isa_portable.c", "isa_avx2.c", "isa_avx512.c")
setup(
    ext_modules=[
        Extension(
            "fitllm.kernels._fitllm",
            sources=[CSRC + f for f in SOURCES + ISAS],
            # every header and included kernel body, so that a change to any rebuilds the library
            depends=sorted(glob(CSRC + "*.h") + glob(CSRC + "*.inc")),
            # each ISA file sets its own target with a pragma; the dispatcher picks one at run time.
            # Hidden visibility: only what fitllm_api.h marks FL_API is exported.
            extra_compile_args=["-O3", "-fopenmp", "-ffp-contract=off", "-std=gnu11", "-fvisibility=hidden"],
            extra_link_args=["-fopenmp"],
        )
    ]
)

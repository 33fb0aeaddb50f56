"""Builds the compiled kernels (a plain C library loaded with ctypes) with the machine's gcc."""
from setuptools import Extension, setup

CSRC = "src/fitllm/kernels/csrc/"
setup(
    ext_modules=[
        Extension(
            "fitllm.kernels._fitllm",
            sources=[CSRC + f for f in ("core.c", "act.c", "layer.c", "dequant.c", "quantize.c", "kquantize.c", "repack.c", "dot_portable.c", "dot_avx2.c", "dot_vnni.c")],
            depends=[CSRC + "fitllm.h", CSRC + "dot_impl.h", CSRC + "dot_avx512.h", CSRC + "vec_impl.h"],
            # each ISA file sets its own target with a pragma; the dispatcher picks one at run time
            extra_compile_args=["-O3", "-fopenmp", "-ffp-contract=off", "-std=gnu11"],
            extra_link_args=["-fopenmp"],
        )
    ]
)

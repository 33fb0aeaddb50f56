/* AVX2 + FMA + F16C kernels: the ops table FL_OPS_AVX2.
 * The same kernel bodies (*.inc) are compiled once per ISA; core.c picks a table at run time. */
#pragma GCC target("avx2,fma,f16c")
#define FL_SIMD 1
#define FL_VNNI 0
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include "fitllm.h"

#include "blocks.inc"
#include "simd_blocks.inc"
#include "tiles.inc"
#include "strips_avx2.inc"
#include "mm_simd.inc"
#include "matmul.inc"
#include "vec.inc"

const fl_ops FL_OPS_AVX2 = {
    .name = "avx2",
    .mm_q = mm_q,
    .mm_f = mm_f,
    .scores_f16 = scores_f16,
    .pv_f16 = pv_f16,
    .softmax = softmax,
    .swiglu = swiglu,
    .q8_0_row = q8_0_row,
    .read_sum = read_sum,
    .strip_sums = strip_sums,
    .mm_packed = mm_packed,
    .pack_act = NULL,
};

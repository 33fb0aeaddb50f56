/* Portable C kernels (any x86-64 or other CPU): the ops table FL_OPS_PORTABLE.
 * The same kernel bodies (*.inc) are compiled once per ISA; core.c picks a table at run time. */
#define FL_SIMD 0
#define FL_VNNI 0
#include <math.h>
#include <stdlib.h>
#include "fitllm.h"

#include "blocks.inc"
#include "rows_portable.inc"
#include "matmul.inc"
#include "vec.inc"

const fl_ops FL_OPS_PORTABLE = {
    .name = "portable",
    .mm_q = mm_q,
    .mm_f = mm_f,
    .scores_f16 = scores_f16,
    .pv_f16 = pv_f16,
    .softmax = softmax,
    .swiglu = swiglu,
    .q8_0_row = q8_0_row,
    .read_sum = read_sum,
    .strip_sums = NULL, /* no strips: fl_packed_bytes is 0 on this path */
    .mm_packed = NULL,
    .pack_act = NULL,
};

/* Activations for a matrix product, prepared exactly as llama.cpp prepares them for the same weight
 * type (its "vec_dot_type"), with the same rounding, so that our products equal llama.cpp's up to
 * the order of float additions:
 *   Q4_0 Q5_0 Q8_0 -> Q8_0: blocks of 32, d = amax/127 kept as fp16, quants from 127/amax;
 *   Q4_1 Q5_1      -> Q8_1: as Q8_0, plus s = d * sum(q) kept as fp16;
 *   IQ4_NL MXFP4   -> Q8_0;
 *   K-quants, the other i-quants, TQ1_0 TQ2_0 -> Q8_K: blocks of 256, iscale = -127/max (signed max),
 *                     d = 1/iscale (f32);
 *   F16 / BF16     -> the activations rounded to fp16 / bf16 (held as floats); F32 -> as is.
 * Every kind is stored as fl_q8 records (d, s0, s1, q[32]) that the dot kernels read. */
#include <math.h>
#include "fitllm.h"

int fl_act_kind(int type) {
    switch (type & ~FL_PACKED) {
    case FL_F32: return FL_ACT_F32;
    case FL_F16: return FL_ACT_F16;
    case FL_BF16: return FL_ACT_BF16;
    case FL_Q4_0: case FL_Q5_0: case FL_Q8_0: case FL_IQ4_NL: case FL_MXFP4: return FL_ACT_Q8_0;
    case FL_Q4_1: case FL_Q5_1: return FL_ACT_Q8_1;
    default: return FL_ACT_Q8_K;
    }
}

/* bytes of one row of n activations in this kind */
size_t fl_act_row_bytes(int kind, int64_t n) {
    return kind <= FL_ACT_BF16 ? (size_t)n * sizeof(float) : (size_t)(n / 32) * sizeof(fl_q8);
}

static void q8_k_row(const float *x, int64_t n, fl_q8 *out) {
    for (int64_t i = 0; i < n / 256; i++, x += 256, out += 8) {
        float max = 0.f, amax = 0.f;
        for (int j = 0; j < 256; j++) {
            float ax = fabsf(x[j]);
            if (ax > amax) { amax = ax; max = x[j]; }
        }
        const float iscale = amax != 0.f ? -127.f / max : 0.f, d = amax != 0.f ? 1.f / iscale : 0.f;
        for (int c = 0; c < 8; c++) {
            int s[2] = {0, 0};
            for (int j = 0; j < 32; j++) {
                int q = fl_near_int(iscale * x[32 * c + j]);
                q = q < 127 ? q : 127;
                out[c].q[j] = (int8_t)q;
                s[j >= 16] += q;
            }
            out[c].d = d;
            out[c].s0 = d * (float)s[0];
            out[c].s1 = d * (float)s[1];
        }
    }
}

void fl_act_row(int kind, const float *x, int64_t n, void *out) {
    float *f = (float *)out;
    switch (kind) {
    case FL_ACT_F32: memcpy(f, x, (size_t)n * sizeof(float)); break;
    case FL_ACT_F16: for (int64_t j = 0; j < n; j++) f[j] = fl_h2f(fl_f2h(x[j])); break;
    case FL_ACT_BF16: for (int64_t j = 0; j < n; j++) f[j] = fl_bf2f(fl_f2bf(x[j])); break;
    case FL_ACT_Q8_0: fl_ops_get()->q8_0_row(x, n, (fl_q8 *)out, 0); break;
    case FL_ACT_Q8_1: fl_ops_get()->q8_0_row(x, n, (fl_q8 *)out, 1); break;
    case FL_ACT_Q8_K: q8_k_row(x, n, (fl_q8 *)out); break;
    }
}

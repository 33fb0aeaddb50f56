/* Reference dequantizers, one per block format. The arithmetic is done in float32 in the same
 * order as gguf-py's numpy code (and ggml's reference), so results are bit-identical.
 * Built with -ffp-contract=off: a fused multiply-add would round differently. */
#include <math.h>
#include "fitllm.h"

const fl_type_info FL_TYPES[FL_NTYPES] = {
    [FL_F32] = {1, 4},     [FL_F16] = {1, 2},     [FL_BF16] = {1, 2},
    [FL_Q4_0] = {32, 18},  [FL_Q4_1] = {32, 20},  [FL_Q5_0] = {32, 22},
    [FL_Q5_1] = {32, 24},  [FL_Q8_0] = {32, 34},  [FL_Q2_K] = {256, 84},
    [FL_Q3_K] = {256, 110}, [FL_Q4_K] = {256, 144}, [FL_Q5_K] = {256, 176},
    [FL_Q6_K] = {256, 210}, [FL_IQ2_XXS] = {256, 66}, [FL_IQ2_XS] = {256, 74},
    [FL_IQ3_XXS] = {256, 98}, [FL_IQ1_S] = {256, 50}, [FL_IQ4_NL] = {32, 18},
    [FL_IQ3_S] = {256, 110}, [FL_IQ2_S] = {256, 82}, [FL_IQ4_XS] = {256, 136},
    [FL_IQ1_M] = {256, 56},  [FL_TQ1_0] = {256, 54}, [FL_TQ2_0] = {256, 66},
    [FL_MXFP4] = {32, 17},
};

static void deq_q4_0(const uint8_t *b, float *y) {
    float d = fl_h2f_at(b);
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)((b[2 + j] & 0xf) - 8);
        y[j + 16] = d * (float)((b[2 + j] >> 4) - 8);
    }
}

static void deq_q4_1(const uint8_t *b, float *y) {
    float d = fl_h2f_at(b), m = fl_h2f_at(b + 2);
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)(b[4 + j] & 0xf) + m;
        y[j + 16] = d * (float)(b[4 + j] >> 4) + m;
    }
}

static void deq_q5(const uint8_t *qh4, const uint8_t *qs, float d, float m, int off, float *y) {
    uint32_t qh;
    memcpy(&qh, qh4, 4);
    for (int j = 0; j < 16; j++) {
        int lo = (qs[j] & 0xf) | (((qh >> j) & 1) << 4);
        int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
        if (off) {
            y[j] = d * (float)(lo - 16);
            y[j + 16] = d * (float)(hi - 16);
        } else {
            y[j] = d * (float)lo + m;
            y[j + 16] = d * (float)hi + m;
        }
    }
}

static void deq_q8_0(const uint8_t *b, float *y) {
    float d = fl_h2f_at(b);
    for (int j = 0; j < 32; j++) y[j] = (float)(int8_t)b[2 + j] * d;
}

static void deq_q2_k(const uint8_t *b, float *y) {
    const uint8_t *sc = b, *qs = b + 16;
    float d = fl_h2f_at(b + 80), dmin = fl_h2f_at(b + 82);
    for (int e = 0; e < 256; e++) {
        int g = e / 16, c = e / 32, l = e % 32;
        float dl = d * (float)(sc[g] & 0xf), ml = dmin * (float)(sc[g] >> 4);
        int q = (qs[32 * (c / 4) + l] >> (2 * (c % 4))) & 3;
        y[e] = dl * (float)q - ml;
    }
}

/* Q3_K's 16 six-bit scales, packed low nibbles in bytes 0-7 and high pairs in bytes 8-11 */
static void deq_q3_k(const uint8_t *b, float *y) {
    const uint8_t *hm = b, *qs = b + 32;
    float d = fl_h2f_at(b + 108);
    int8_t sc[16];
    fl_q3k_scales(b + 96, sc);
    for (int e = 0; e < 256; e++) {
        int c = e / 32, l = e % 32;
        int q = ((qs[32 * (c / 4) + l] >> (2 * (c % 4))) & 3) - (((hm[l] >> c) & 1) ? 0 : 4);
        y[e] = (d * (float)sc[e / 16]) * (float)q;
    }
}

/* Q4_K/Q5_K: 8 six-bit scales and 8 six-bit mins in 12 bytes */
static void deq_q45_k(const uint8_t *b, float *y, int five) {
    float d = fl_h2f_at(b), dmin = fl_h2f_at(b + 2);
    uint8_t sc[8], mn[8];
    fl_k4_scales(b + 4, sc, mn);
    const uint8_t *qh = b + 16, *qs = five ? b + 48 : b + 16;
    for (int e = 0; e < 256; e++) {
        int c = e / 32, l = e % 32;
        int q = (qs[32 * (c / 2) + l] >> (4 * (c & 1))) & 0xf;
        if (five) q |= ((qh[l] >> c) & 1) << 4;
        y[e] = (d * (float)sc[c]) * (float)q - dmin * (float)mn[c];
    }
}

static void deq_q6_k(const uint8_t *b, float *y) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = fl_h2f_at(b + 208);
    for (int e = 0; e < 256; e++) {
        int c = e / 32, l = e % 32, h = c / 4, k = c % 4;
        int lo = (ql[64 * h + 32 * (k & 1) + l] >> (4 * (k >> 1))) & 0xf;
        int hi = (qh[32 * h + l] >> (2 * k)) & 3;
        y[e] = (d * (float)sc[e / 16]) * (float)((lo | (hi << 4)) - 32);
    }
}

void fl_dequantize_row(int type, const uint8_t *src, int64_t n, float *y) {
    const fl_type_info ti = FL_TYPES[type];
    int64_t nb = n / ti.blck;
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *b = src + i * ti.size;
        float *o = y + i * ti.blck;
        switch (type) {
        case FL_F32: memcpy(o, b, 4); break;
        case FL_F16: *o = fl_h2f_at(b); break;
        case FL_BF16: { uint16_t h; memcpy(&h, b, 2); *o = fl_bf2f(h); } break;
        case FL_Q4_0: deq_q4_0(b, o); break;
        case FL_Q4_1: deq_q4_1(b, o); break;
        case FL_Q5_0: deq_q5(b + 2, b + 6, fl_h2f_at(b), 0.f, 1, o); break;
        case FL_Q5_1: deq_q5(b + 4, b + 8, fl_h2f_at(b), fl_h2f_at(b + 2), 0, o); break;
        case FL_Q8_0: deq_q8_0(b, o); break;
        case FL_Q2_K: deq_q2_k(b, o); break;
        case FL_Q3_K: deq_q3_k(b, o); break;
        case FL_Q4_K: deq_q45_k(b, o, 0); break;
        case FL_Q5_K: deq_q45_k(b, o, 1); break;
        case FL_Q6_K: deq_q6_k(b, o); break;
        }
    }
}

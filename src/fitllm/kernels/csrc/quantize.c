/* Float rows to block formats. The 32-element ones here, bit for bit as gguf-py's quantizers (which are
 * llama.cpp's *_ref ones): the same float32 operations in the same order (this file is built with
 * -ffp-contract=off, so no multiply-add is fused), fp16 by round-to-nearest-even. */
#include <math.h>
#include <omp.h>
#include <string.h>
#include "fitllm.h"

static void put_h(uint8_t *p, float v) {
    const uint16_t h = fl_f2h(v);
    memcpy(p, &h, 2);
}

static void min_max(const float *x, float *mn, float *mx) {
    *mn = *mx = x[0];
    for (int i = 1; i < 32; i++) {
        *mn = x[i] < *mn ? x[i] : *mn;
        *mx = x[i] > *mx ? x[i] : *mx;
    }
}

static void q8_0(const float *x, uint8_t *y) {
    float amax = 0.f;
    for (int i = 0; i < 32; i++) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
    const float d = amax / 127.f, id = d != 0.f ? 1.f / d : 0.f;
    put_h(y, d);
    for (int i = 0; i < 32; i++) { /* gguf-py's np_roundf: halves away from zero */
        const float v = x[i] * id, a = fabsf(v), f = floorf(a), b = f + floorf(2.f * (a - f));
        y[2 + i] = (uint8_t)(int8_t)(v > 0.f ? b : v < 0.f ? -b : 0.f);
    }
}

/* levels trunc((x - mn) * id + off) clipped to [0, top] (mn 0 for the symmetric types: x - 0 is x) */
static void levels(const float *x, float mn, float id, float off, int top, uint8_t *q) {
    for (int i = 0; i < 32; i++) {
        const float v = (x[i] - mn) * id + off;
        const int l = (int)truncf(v);
        q[i] = (uint8_t)(l < 0 ? 0 : l > top ? top : l);
    }
}

static void nibbles(const uint8_t *q, uint8_t *qs) {
    for (int i = 0; i < 16; i++) qs[i] = (uint8_t)((q[i] & 0xF) | (q[i + 16] << 4));
}

static void fifth_bits(const uint8_t *q, uint8_t *qh) {
    uint32_t h = 0;
    for (int i = 0; i < 32; i++) h |= (uint32_t)(q[i] >> 4) << i;
    memcpy(qh, &h, 4); /* little-endian, as numpy's packbits(bitorder="little") */
}

/* Q4_0 / Q5_0: d = the largest-magnitude value / -2^(bits-1), levels x / d + 2^(bits-1) */
static void symmetric(const float *x, uint8_t *y, int bits) {
    const float half = (float)(1 << (bits - 1)), d = fl_signed_max(x, 32) / -half, id = d != 0.f ? 1.f / d : 0.f;
    uint8_t q[32];
    put_h(y, d);
    levels(x, 0.f, id, half + 0.5f, (1 << bits) - 1, q);
    if (bits == 5) fifth_bits(q, y + 2);
    nibbles(q, y + (bits == 5 ? 6 : 2));
}

/* Q4_1 / Q5_1: d = (max - min) / (2^bits - 1) and the min, levels (x - min) / d */
static void affine(const float *x, uint8_t *y, int bits) {
    float mn, mx;
    min_max(x, &mn, &mx);
    const int top = (1 << bits) - 1;
    const float d = (mx - mn) / (float)top, id = d != 0.f ? 1.f / d : 0.f;
    uint8_t q[32];
    put_h(y, d);
    put_h(y + 2, mn);
    levels(x, mn, id, 0.5f, top, q);
    if (bits == 5) fifth_bits(q, y + 4);
    nibbles(q, y + (bits == 5 ? 8 : 4));
}

static void q4_0(const float *x, uint8_t *y) { symmetric(x, y, 4); }
static void q5_0(const float *x, uint8_t *y) { symmetric(x, y, 5); }
static void q4_1(const float *x, uint8_t *y) { affine(x, y, 4); }
static void q5_1(const float *x, uint8_t *y) { affine(x, y, 5); }

typedef void (*block_fn)(const float *x, uint8_t *y);
void fl_quantize_q2_k(const float *x, uint8_t *y); /* kquantize.c: llama.cpp's reference algorithms */
void fl_quantize_q3_k(const float *x, uint8_t *y);
void fl_quantize_q4_k(const float *x, uint8_t *y);
void fl_quantize_q5_k(const float *x, uint8_t *y);
void fl_quantize_q6_k(const float *x, uint8_t *y);

static block_fn block_quantizer(int type) {
    switch (type) {
        case FL_Q8_0: return q8_0;
        case FL_Q4_0: return q4_0;
        case FL_Q4_1: return q4_1;
        case FL_Q5_0: return q5_0;
        case FL_Q5_1: return q5_1;
        case FL_Q2_K: return fl_quantize_q2_k;
        case FL_Q3_K: return fl_quantize_q3_k;
        case FL_Q4_K: return fl_quantize_q4_k;
        case FL_Q5_K: return fl_quantize_q5_k;
        case FL_Q6_K: return fl_quantize_q6_k;
        default: return NULL;
    }
}

/* rows (nrows, ncols) float32 -> out, nrows * row_bytes(type, ncols) bytes; rows split over threads */
int fl_quantize(int type, const float *x, int64_t nrows, int64_t ncols, uint8_t *out, size_t out_bytes,
                int nthreads) {
    const block_fn fn = block_quantizer(type);
    const size_t rb = fl_row_bytes(type, ncols);
    if (!fn || !rb) return FL_EBADTYPE;
    if (nrows < 0 || out_bytes < rb * (size_t)nrows) return FL_ESIZE;
    const int bsize = FL_TYPES[type].size, blck = FL_TYPES[type].blck;
#pragma omp parallel for num_threads(nthreads > 0 ? nthreads : 1) schedule(static)
    for (int64_t r = 0; r < nrows; r++)
        for (int64_t b = 0; b < ncols / blck; b++) fn(x + r * ncols + b * blck, out + r * rb + b * bsize);
    return FL_OK;
}

/* fitllm compiled core, internal declarations: block helpers, the per-ISA ops table, and what the
 * C files share. The public interface (what Python calls) is fitllm_api.h. */
#ifndef FITLLM_H
#define FITLLM_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "fitllm_api.h"

/* Activations quantized to 8 bits in blocks of 32, as llama.cpp does for decode.
 * s0/s1 = d * sum of the first/second 16 quants: they carry the weight blocks' offsets (mins). */
typedef struct {
    float d, s0, s1;
    int8_t q[32];
} fl_q8;

typedef struct {
    int blck;  /* elements per block */
    int size;  /* bytes per block */
} fl_type_info;

extern const fl_type_info FL_TYPES[FL_NTYPES];

static inline float fl_h2f(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline float fl_h2f_at(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return fl_h2f(h);
}

static inline float fl_bf2f(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* AVX-512: bytes per token and 64 elements of the tiles' packed activations (fl_ops.pack_act) */
#define FL_ZPACK_BYTES 192

/* AVX-512 VNNI: matrix products of at least this many tokens (`batch`, the whole product's) run
 * on repacked 16-row strips, which sum in another order than the smaller ones' tiles */
#define FL_STRIP_MIN_T 8
/* the types that take them: one scale (and min) per 32 elements. With a scale per 16 (Q2_K Q3_K
 * Q6_K) the float work per vpdpbusd doubles and the 2-row tiles are as fast. */
#define FL_STRIP_TYPE(t) \
    ((t) == FL_Q4_0 || (t) == FL_Q4_1 || (t) == FL_Q5_0 || (t) == FL_Q5_1 || (t) == FL_Q8_0 || (t) == FL_Q4_K || (t) == FL_Q5_K)

/* Matrices repacked in 16-row strips (repack.c) for the AVX-512 VNNI strip products (and their AVX2
 * twins, strips_avx2.inc): their type is the blocks' type | FL_PACKED (fitllm_api.h). QB, SB: bytes of quants, of
 * scales per 16 rows x 32 columns; BB per 16 rows x 256 columns (Q4_K's d, dmin). */
#define FL_PACKED_QB(t) ((t) == FL_Q8_0 ? 512 : (t) == FL_Q5_0 ? 320 : 256)
#define FL_PACKED_SB(t) ((t) == FL_Q4_1 ? 64 : 32)
#define FL_PACKED_BB(t) ((t) == FL_Q4_K ? 64 : 0)
int fl_packable(int type);
size_t fl_pack_strip(int type, const uint8_t *rows, size_t rb, int nr, int64_t ncols, uint8_t *out);
/* One ISA's kernels (isa_portable.c, isa_avx2.c, isa_avx512.c); fl_ops_get() gives the current one. */
typedef struct {
    const char *name;
    /* y[t*ldy + r] = dot(row r of w, activation t) for r in [r0, r1): 8-bit activations (pk: the
     * tiles' packed activations or, with `strip`, the strips' sums), and float ones */
    void (*mm_q)(int type, const uint8_t *w, size_t row_bytes, int64_t nb32, const fl_q8 *a, const void *pk,
                 int64_t T, int64_t r0, int64_t r1, float *y, int64_t ldy, int strip);
    void (*mm_f)(int type, const uint8_t *w, size_t row_bytes, int64_t ncols, const float *x, int64_t T,
                 int64_t r0, int64_t r1, float *y, int64_t ldy);
    /* attention on the fp16 cache: s[i] = fp16(q) . k[i * stride], their softmax, and
     * acc = sum_i p[i] * v[i * stride] */
    void (*scores_f16)(const float *q, const uint16_t *k, int64_t stride, int64_t n, int64_t hd, float *s);
    void (*pv_f16)(const float *p, const uint16_t *v, int64_t stride, int64_t n, int64_t hd, float *acc);
    void (*softmax)(float *s, int64_t n, float scale, float cap, float capscale);
    /* gate <- silu(gate) * up */
    void (*swiglu)(float *gate, const float *up, int64_t n);
    /* activations as Q8_0 records (with_sum: Q8_1) */
    void (*q8_0_row)(const float *x, int64_t n, fl_q8 *out, int with_sum);
    /* the sum of a run of 64-bit words (fl_read_sum's per-thread share) */
    uint64_t (*read_sum)(const uint8_t *p, size_t n);
    /* AVX2 / AVX-512 (NULL in portable): this thread's per-32 sums of a matmul's activation quants
     * (the strips' offsets), and rows [r0, r1) (r0 a multiple of 16) x T tokens of a packed matrix */
    const void *(*strip_sums)(const fl_q8 *a, int64_t nb32, int64_t T);
    void (*mm_packed)(int type, const uint8_t *w, int64_t nb32, const fl_q8 *a, const int32_t *sa, int64_t T,
                      int64_t r0, int64_t r1, float *y, int64_t ldy);
    /* AVX-512 (else NULL): this thread's copy of a matmul's activations in the tiles' layout,
     * FL_ZPACK_BYTES per token and 64 elements; NULL when it cannot be made (the tiles then use tile_q) */
    const void *(*pack_act)(const fl_q8 *a, int64_t nb32, int64_t T);
} fl_ops;
extern const fl_ops FL_OPS_PORTABLE, FL_OPS_AVX2, FL_OPS_AVX512;
const fl_ops *fl_ops_get(void);

/* round to nearest, ties to even, for |v| < 2^22: ggml's nearest_int and _mm256_round_ps agree */
static inline int fl_near_int(float v) {
    float f = v + 12582912.f;
    int32_t i;
    memcpy(&i, &f, 4);
    return (i & 0x007fffff) - 0x00400000;
}

/* float -> fp16, round to nearest even (what F16C and ggml's converters do) */
static inline uint16_t fl_f2h(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000;
    x &= 0x7fffffffu;
    if (x >= 0x7f800000u) return (uint16_t)(sign | 0x7c00 | (x > 0x7f800000u ? 0x200 : 0)); /* inf, nan */
    if (x >= 0x477ff000u) return (uint16_t)(sign | 0x7c00);                                 /* overflow */
    if (x < 0x38800000u) { /* fp16 subnormal or zero: add as a float to round at the right bit */
        float a;
        memcpy(&a, &x, 4);
        a += 0.5f;
        uint32_t b;
        memcpy(&b, &a, 4);
        return (uint16_t)(sign | (b - 0x3f000000u));
    }
    const uint32_t odd = (x >> 13) & 1;
    x += 0xc8000fffu + odd; /* rebias exponent (-112 << 23) and round the 13 dropped bits */
    return (uint16_t)(sign | (x >> 13));
}

static inline uint16_t fl_f2bf(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 64); /* quiet nan */
    return (uint16_t)((x + (0x7fff + ((x >> 16) & 1))) >> 16);
}

void fl_act_row(int kind, const float *x, int64_t n, void *out);

/* the packed 6-bit scales of Q3_K (signed) and of Q4_K/Q5_K (scales and mins) */
static inline void fl_q3k_scales(const uint8_t *s, int8_t *out) {
    for (int i = 0; i < 16; i++) {
        int lo = i < 8 ? (s[i] & 0xf) : (s[i - 8] >> 4);
        int hi = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        out[i] = (int8_t)((lo | (hi << 4)) - 32);
    }
}

static inline void fl_k4_scales(const uint8_t *s, uint8_t *sc, uint8_t *mn) {
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 0xf) | ((s[j] >> 6) << 4);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
}

void fl_dequantize_row(int type, const uint8_t *src, int64_t n, float *dst);

/* the value of largest magnitude among x[0..n), the first one on ties (the quantizers' "max") */
static inline float fl_signed_max(const float *x, int n) {
    float amax = 0.f, mx = 0.f;
    for (int i = 0; i < n; i++)
        if (x[i] > amax || -x[i] > amax) { amax = x[i] > 0 ? x[i] : -x[i]; mx = x[i]; }
    return mx;
}

/* shared by core.c and layer.c */
void fl_act_rows(int kind, const float *x, int64_t T, int64_t n, void *out, int ith, int nth);
void fl_mm_part(int type, const uint8_t *w, int64_t nrows, int64_t ncols, const float *bias, const void *act,
                int64_t T, float *y, int64_t ldy, int ith, int nth);
void fl_mm_prefetch(int type, const uint8_t *w, int64_t nrows, int64_t ncols, int64_t T, size_t bytes, int ith,
                    int nth);
void fl_rms_row(const float *x, int64_t n, const float *w, float eps, float *y);

#endif

/* Matrix products on raw GGUF blocks. Included three times: portable C, AVX2 and
 * AVX-512 VNNI (see dot_*.c); FL_SIMD / FL_VNNI select the instruction set.
 *
 * Every block format is read as: per 32-element chunk, unsigned quants u (Q8_0: signed) and
 * per 16 elements a scale and an offset, value = scale * u + offset. The dot product with 8-bit
 * activations a (scale da) is then  da * (scale * sum(u*a)) + offset * da * sum(a),
 * where da * sum(a) is precomputed per half-chunk (fl_q8.s0/s1). */
#include <math.h>
#include "fitllm.h"
#define FL_PASTE2(a, b) a##b
#define FL_PASTE(a, b) FL_PASTE2(a, b) /* the ISA's name on each exported kernel */
#if FL_SIMD
#include <immintrin.h>
#endif


#define ALWAYS_INLINE static inline __attribute__((always_inline))

ALWAYS_INLINE float h2f(const uint8_t *p) {
#if FL_SIMD
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
#else
    return fl_h2f_at(p);
#endif
}

/* Scales and offsets per 16 elements of one block (n16 of them); shared by all paths. */
ALWAYS_INLINE void blk_scales(const int type, const uint8_t *b, float *sc, float *mn) {
    switch (type) {
    case FL_Q4_0: sc[0] = sc[1] = h2f(b); mn[0] = mn[1] = -8.f * sc[0]; break;
    case FL_Q4_1: sc[0] = sc[1] = h2f(b); mn[0] = mn[1] = h2f(b + 2); break;
    case FL_Q5_0: sc[0] = sc[1] = h2f(b); mn[0] = mn[1] = -16.f * sc[0]; break;
    case FL_Q5_1: sc[0] = sc[1] = h2f(b); mn[0] = mn[1] = h2f(b + 2); break;
    case FL_Q8_0: sc[0] = sc[1] = h2f(b); mn[0] = mn[1] = FL_VNNI ? -128.f * sc[0] : 0.f; break;
    case FL_Q2_K: {
        float d = h2f(b + 80), dmin = h2f(b + 82);
        for (int g = 0; g < 16; g++) { sc[g] = d * (float)(b[g] & 0xf); mn[g] = -dmin * (float)(b[g] >> 4); }
    } break;
    case FL_Q3_K: {
        float d = h2f(b + 108);
        int8_t s[16];
        fl_q3k_scales(b + 96, s);
        for (int g = 0; g < 16; g++) { sc[g] = d * (float)s[g]; mn[g] = -4.f * sc[g]; }
    } break;
    case FL_Q4_K: case FL_Q5_K: {
        float d = h2f(b), dmin = h2f(b + 2);
        uint8_t s[8], m[8];
        fl_k4_scales(b + 4, s, m);
        for (int c = 0; c < 8; c++) {
            sc[2 * c] = sc[2 * c + 1] = d * (float)s[c];
            mn[2 * c] = mn[2 * c + 1] = -dmin * (float)m[c];
        }
    } break;
    case FL_Q6_K: {
        float d = h2f(b + 208);
        const int8_t *s = (const int8_t *)(b + 192);
        for (int g = 0; g < 16; g++) { sc[g] = d * (float)s[g]; mn[g] = -32.f * sc[g]; }
    } break;
    }
}

#if FL_SIMD
/* byte i = 0xFF where bit i of x is set */
ALWAYS_INLINE __m256i bits_to_bytes(uint32_t x) {
#if FL_VNNI
    return _mm256_movm_epi8(x);
#else
    const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                          2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201LL);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x), shuf);
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
#endif
}

/* 16 bytes of nibble pairs -> 32 quants: low nibbles first, then high nibbles */
ALWAYS_INLINE __m256i nibbles_lohi(const uint8_t *p) {
    __m128i t = _mm_loadu_si128((const __m128i *)p);
    __m256i v = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x0f));
}

ALWAYS_INLINE __m256i load32(const uint8_t *p) { return _mm256_loadu_si256((const __m256i *)p); }

/* 32 bytes shifted right by s bits each, masked */
ALWAYS_INLINE __m256i shr_mask(__m256i v, int s, int mask) {
    return _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(s)), _mm256_set1_epi8((char)mask));
}

/* where bit `bit` of byte i of p is set: add `val` */
ALWAYS_INLINE __m256i bitplane(const uint8_t *p, int bit, int val) {
    __m256i m = _mm256_set1_epi8((char)(1 << bit));
    __m256i hit = _mm256_cmpeq_epi8(_mm256_and_si256(load32(p), m), m);
    return _mm256_and_si256(hit, _mm256_set1_epi8((char)val));
}

/* The quants of chunk c (32 elements) of block b, as bytes (unsigned except Q8_0). */
ALWAYS_INLINE __m256i chunk_quants(const int type, const uint8_t *b, int c) {
    switch (type) {
    case FL_Q4_0: return nibbles_lohi(b + 2);
    case FL_Q4_1: return nibbles_lohi(b + 4);
    case FL_Q5_0: case FL_Q5_1: {
        const uint8_t *qh = b + (type == FL_Q5_0 ? 2 : 4);
        uint32_t h;
        memcpy(&h, qh, 4);
        __m256i hb = _mm256_and_si256(bits_to_bytes(h), _mm256_set1_epi8(0x10));
        return _mm256_or_si256(nibbles_lohi(qh + 4), hb);
    }
    case FL_Q8_0: return FL_VNNI ? _mm256_xor_si256(load32(b + 2), _mm256_set1_epi8((char)0x80)) : load32(b + 2);
    case FL_Q2_K: return shr_mask(load32(b + 16 + 32 * (c >> 2)), 2 * (c & 3), 3);
    case FL_Q3_K: {
        __m256i q = shr_mask(load32(b + 32 + 32 * (c >> 2)), 2 * (c & 3), 3);
        return _mm256_or_si256(q, bitplane(b, c, 4));
    }
    case FL_Q4_K: return shr_mask(load32(b + 16 + 32 * (c >> 1)), 4 * (c & 1), 0xf);
    case FL_Q5_K: {
        __m256i q = shr_mask(load32(b + 48 + 32 * (c >> 1)), 4 * (c & 1), 0xf);
        return _mm256_or_si256(q, bitplane(b + 16, c, 16));
    }
    case FL_Q6_K: {
        int h = c >> 2, k = c & 3;
        __m256i lo = shr_mask(load32(b + 64 * h + 32 * (k & 1)), 4 * (k >> 1), 0xf);
        __m256i hi = shr_mask(load32(b + 128 + 32 * h), 2 * k, 3);
        return _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4));
    }
    }
    return _mm256_setzero_si256();
}

/* int32 lanes of sum over groups of 4 of u*s (u unsigned, s signed), as floats.
 * Lanes 0-3 hold elements 0-15, lanes 4-7 elements 16-31. */
ALWAYS_INLINE __m256 dot_u8s8(__m256i u, __m256i s) {
#if FL_VNNI
    return _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s));
#else
    __m256i p = _mm256_maddubs_epi16(u, s);
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p, _mm256_set1_epi16(1)));
#endif
}

/* the integer offset of a type's quants (taken out of the sums as offset x the activations' sum) */
ALWAYS_INLINE int int_offset(const int type) {
    switch (type) {
    case FL_Q4_0: return 8;
    case FL_Q5_0: return 16;
    case FL_Q8_0: return 128;
    case FL_Q3_K: return 4;
    case FL_Q6_K: return 32;
    }
    return 0;
}

/* dot_u8s8 of (u - k) and s, the offset taken out in 16 bits: |(u - k) s| pair sums stay in range
 * for every type with an integer offset */
ALWAYS_INLINE __m256 dot_u8s8_off(__m256i u, __m256i s, int k) {
    const __m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(u, s), _mm256_maddubs_epi16(_mm256_set1_epi8((char)k), s));
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}

ALWAYS_INLINE float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* R rows x C tokens of dot products, R*C independent accumulators: each weight chunk is unpacked
 * once for C tokens and each activation chunk loaded once for R rows. The offsets (mins) go to a
 * second accumulator, two lanes per pair: (offset of the first 16) * s0 + (second 16) * s1. */
ALWAYS_INLINE void tile_q(const int type, const int R, const int C, const uint8_t *w, size_t rb, const fl_q8 *a,
                          int64_t nb32, int64_t nblk, float *y, int64_t ldy) {
    const int nch = FL_TYPES[type].blck / 32, bsz = FL_TYPES[type].size;
    /* AVX2: offsets that are a constant times the scale leave the integer sums exactly, as on
     * AVX-512 (as floats they cancel against the products and lose Gemma-3's outlier activations) */
    const int kq = FL_VNNI || type == FL_Q8_0 ? 0 : int_offset(type);
    /* fixed sizes (R, C <= 4 are constants after inlining): variable-length arrays would live on the
     * stack and put every accumulation through memory */
    __m256 acc[4][4];
    __m128 off[4][4];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < C; t++) { acc[r][t] = _mm256_setzero_ps(); off[r][t] = _mm_setzero_ps(); }
    for (int64_t i = 0; i < nblk; i++) {
        float sc[4][16], mn[4][16];
        for (int r = 0; r < R; r++) {
            /* the same block two tiles on: a tile takes about one memory latency (never faults); every
             * line of a K-quant block (its first alone: Q6_K read cold at 16 instead of 25 GB/s) */
            const uint8_t *ahead = w + (r + 2 * R) * rb + i * bsz;
            _mm_prefetch((const char *)ahead, _MM_HINT_T0);
            if (type >= FL_Q2_K && type <= FL_Q6_K) { /* a constant: 32-element types are as they were */
                for (int l = 64; l < bsz; l += 64) _mm_prefetch((const char *)(ahead + l), _MM_HINT_T0);
                _mm_prefetch((const char *)(ahead + bsz - 1), _MM_HINT_T0);
            }
            blk_scales(type, w + r * rb + i * bsz, sc[r], mn[r]);
        }
        for (int c = 0; c < nch; c++) {
            __m256i s[4];
            __m128 sp[4];
            float d[4];
            for (int t = 0; t < C; t++) {
                const fl_q8 *ab = a + t * nb32 + i * nch + c;
                s[t] = _mm256_loadu_si256((const __m256i *)ab->q);
                sp[t] = _mm_castpd_ps(_mm_load_sd((const double *)&ab->s0));
                d[t] = ab->d;
            }
            for (int r = 0; r < R; r++) {
                __m256i u = chunk_quants(type, w + r * rb + i * bsz, c);
                /* built from scalars: an 8-byte load over two 4-byte stores would stall store forwarding */
                const __m128 mp = kq ? _mm_setzero_ps()
                                  : nch == 1 ? _mm_set1_ps(mn[r][0]) : _mm_setr_ps(mn[r][2 * c], mn[r][2 * c + 1], 0.f, 0.f);
                for (int t = 0; t < C; t++) {
                    __m256 p;
                    if (type == FL_Q8_0 && !FL_VNNI) p = dot_u8s8(_mm256_sign_epi8(u, u), _mm256_sign_epi8(s[t], u));
                    else if (!FL_VNNI && kq) p = dot_u8s8_off(u, s[t], kq);
                    else p = dot_u8s8(u, s[t]);
                    const int same = nch == 1 || type == FL_Q4_K || type == FL_Q5_K; /* one scale per 32 */
                    const __m256 scale = same ? _mm256_set1_ps(sc[r][2 * c] * d[t])
                                                  : _mm256_set_m128(_mm_set1_ps(sc[r][2 * c + 1] * d[t]),
                                                                    _mm_set1_ps(sc[r][2 * c] * d[t]));
                    acc[r][t] = _mm256_fmadd_ps(p, scale, acc[r][t]);
                    off[r][t] = _mm_fmadd_ps(mp, sp[t], off[r][t]);
                }
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < C; t++) {
            const __m128 o = off[r][t];
            y[t * ldy + r] = hsum8(acc[r][t]) + (_mm_cvtss_f32(o) + _mm_cvtss_f32(_mm_movehdup_ps(o)));
        }
}

#if !FL_VNNI
/* AVX2 tiles of the K-quants, summed as dot_avx512.h's tile_z sums them, lane for lane: chunks c
 * and c + 1 of each pair into two 8-lane accumulators (tile_z's low and high halves), integer
 * offsets out of the integer sums, the mins added once per block, the same final reduction. So a
 * K-quant matrix gives the same bits on AVX2 as on AVX-512. */
ALWAYS_INLINE void tile_k(const int type, const int R, const int C, const uint8_t *w, size_t rb, const fl_q8 *a,
                          int64_t nb32, int64_t nblk, float *y, int64_t ldy) {
    const int bsz = FL_TYPES[type].size, kq = int_offset(type);
    const __m256i sidx = _mm256_setr_epi32(1, 2, 12, 13, 23, 24, 34, 35); /* s0, s1 of 4 records */
    __m256 lo[4][4], hi[4][4];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < C; t++) lo[r][t] = hi[r][t] = _mm256_setzero_ps();
    for (int64_t i = 0; i < nblk; i++) {
        float sc[4][16], mn[4][16];
        for (int r = 0; r < R; r++) {
            const uint8_t *ahead = w + (r + 2 * R) * rb + i * bsz; /* as tile_q: every line, two tiles on */
            for (int l = 0; l < bsz; l += 64) _mm_prefetch((const char *)(ahead + l), _MM_HINT_T0);
            _mm_prefetch((const char *)(ahead + bsz - 1), _MM_HINT_T0);
            blk_scales(type, w + r * rb + i * bsz, sc[r], mn[r]);
        }
        for (int c = 0; c < 8; c += 2) {
            __m256i u[4][2];
            for (int r = 0; r < R; r++) {
                u[r][0] = chunk_quants(type, w + r * rb + i * bsz, c);
                u[r][1] = chunk_quants(type, w + r * rb + i * bsz, c + 1);
            }
            for (int t = 0; t < C; t++) {
                const fl_q8 *ab = a + t * nb32 + i * 8 + c;
                const __m256i s0 = _mm256_loadu_si256((const __m256i *)ab[0].q);
                const __m256i s1 = _mm256_loadu_si256((const __m256i *)ab[1].q);
                for (int r = 0; r < R; r++) {
                    const __m256 p0 = kq ? dot_u8s8_off(u[r][0], s0, kq) : dot_u8s8(u[r][0], s0);
                    const __m256 p1 = kq ? dot_u8s8_off(u[r][1], s1, kq) : dot_u8s8(u[r][1], s1);
                    const __m256 w0 = _mm256_set_m128(_mm_set1_ps(sc[r][2 * c + 1] * ab[0].d), _mm_set1_ps(sc[r][2 * c] * ab[0].d));
                    const __m256 w1 = _mm256_set_m128(_mm_set1_ps(sc[r][2 * c + 3] * ab[1].d), _mm_set1_ps(sc[r][2 * c + 2] * ab[1].d));
                    lo[r][t] = _mm256_fmadd_ps(p0, w0, lo[r][t]);
                    hi[r][t] = _mm256_fmadd_ps(p1, w1, hi[r][t]);
                }
            }
        }
        if (!kq)
            for (int t = 0; t < C; t++) {
                const float *rec = (const float *)(a + t * nb32 + i * 8);
                const __m256 bl = _mm256_i32gather_ps(rec, sidx, 4), bh = _mm256_i32gather_ps(rec + 44, sidx, 4);
                for (int r = 0; r < R; r++) {
                    lo[r][t] = _mm256_fmadd_ps(_mm256_loadu_ps(mn[r]), bl, lo[r][t]);
                    hi[r][t] = _mm256_fmadd_ps(_mm256_loadu_ps(mn[r] + 8), bh, hi[r][t]);
                }
            }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < C; t++) y[t * ldy + r] = hsum8(_mm256_add_ps(hi[r][t], lo[r][t]));
}
#endif

#if FL_SIMD
static void *grow(void *p, size_t *cap, size_t need) {
    if (need <= *cap) return p;
    free(p);
    p = aligned_alloc(64, (need + 63) / 64 * 64);
    *cap = p ? need : 0;
    return p;
}

static __thread int32_t *SA; /* per token and 32 elements: the sum of the activation quants */
static __thread size_t SA_CAP;

/* the strips' offsets: this thread's sums of each 32 activation quants, once per matmul */
const void *FL_PASTE(fl_strip_sums_, FL_SUFFIX)(const fl_q8 *a, int64_t nb32, int64_t T) {
    SA = grow(SA, &SA_CAP, (size_t)T * nb32 * sizeof(int32_t));
    if (!SA) return NULL;
    const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
    for (int64_t t = 0; t < T * nb32; t++) { /* |sum| <= 32 x 128: exact in 16 bits */
        const __m256i s = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, load32((const uint8_t *)a[t].q)), ones16);
        __m128i h = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4e));
        SA[t] = _mm_cvtsi128_si32(_mm_add_epi32(h, _mm_shuffle_epi32(h, 0xb1)));
    }
    return SA;
}
#endif

#if FL_VNNI
#include "dot_avx512.h"
#elif FL_SIMD
#include "strips_avx2.h"
#endif

/* rows [r0, r1) x T_ tokens in tiles. AVX-512: with `strip` (products of FL_STRIP_MIN_T tokens
 * or more, pk their sums) on 16-row strips (dot_avx512.h) for the types with a scale per 32,
 * else 2 x 16, 8 or 4 (the 2 x C accumulators fill the registers), 4 x 1 for the rest; other ISAs
 * RT x CT, then 4 x 1. Every (row, token) dot product is summed in the same order whatever tile,
 * task or thread it falls to, so a token's result depends on its batch only through the batch's
 * size being under FL_STRIP_MIN_T or not (cache = no cache, an MoE expert's tokens = dense, within
 * each side). */
#define RT 2
#define CT (FL_VNNI ? 4 : 2)
ALWAYS_INLINE void mm_tiles(const int type, const uint8_t *w, size_t rb, int64_t nb32, const fl_q8 *a,
                            const void *pk, int64_t T_, int64_t r0, int64_t r1, float *y, int64_t ldy,
                            int strip) {
    const int64_t nblk = nb32 * 32 / FL_TYPES[type].blck;
    int64_t t = 0, r;
#if FL_VNNI
    /* tile_z takes blocks in pairs; Q4_1/Q5_1 (float mins per 32) are faster in tile_q */
    if (strip) {
        r0 = strip_rows(type, w, rb, nb32, a, (const int32_t *)pk, T_, r0, r1, y, ldy);
        if (r0 >= r1) return;
        pk = NULL; /* out of memory: the rest on tile_q */
    }
    if ((FL_TYPES[type].blck > 32 || nblk % 2 == 0) && type != FL_Q4_1 && type != FL_Q5_1 && pk) {
        const zpack *z = (const zpack *)pk; /* nb32 / 2 per token */
        for (; t + 16 <= T_; t += 16) zrows(type, 2, 16, w, rb, nb32, a + t * nb32, z + t * (nb32 / 2), nblk, r0, r1, y + t * ldy, ldy);
        for (; t + 8 <= T_; t += 8) zrows(type, 2, 8, w, rb, nb32, a + t * nb32, z + t * (nb32 / 2), nblk, r0, r1, y + t * ldy, ldy);
        for (; t + 4 <= T_; t += 4) zrows(type, 2, 4, w, rb, nb32, a + t * nb32, z + t * (nb32 / 2), nblk, r0, r1, y + t * ldy, ldy);
        for (; t < T_; t++) zrows(type, 4, 1, w, rb, nb32, a + t * nb32, z + t * (nb32 / 2), nblk, r0, r1, y + t * ldy, ldy);
        return;
    }
#else
    if (FL_TYPES[type].blck == 256) {
        for (; t + 2 <= T_; t += 2) {
            for (r = r0; r + 2 <= r1; r += 2) tile_k(type, 2, 2, w + r * rb, rb, a + t * nb32, nb32, nblk, y + t * ldy + r, ldy);
            for (; r < r1; r++) tile_k(type, 1, 2, w + r * rb, rb, a + t * nb32, nb32, nblk, y + t * ldy + r, ldy);
        }
        for (; t < T_; t++) {
            for (r = r0; r + 4 <= r1; r += 4) tile_k(type, 4, 1, w + r * rb, rb, a + t * nb32, nb32, nblk, y + t * ldy + r, ldy);
            for (; r < r1; r++) tile_k(type, 1, 1, w + r * rb, rb, a + t * nb32, nb32, nblk, y + t * ldy + r, ldy);
        }
        return;
    }
#endif
    for (; t + CT <= T_; t += CT) {
        for (r = r0; r + RT <= r1; r += RT) tile_q(type, RT, CT, w + r * rb, rb, a + t * nb32, nb32, nblk, y + t * ldy + r, ldy);
        for (; r < r1; r++) tile_q(type, 1, CT, w + r * rb, rb, a + t * nb32, nb32, nblk, y + t * ldy + r, ldy);
    }
    for (; t < T_; t++) {
        for (r = r0; r + 4 <= r1; r += 4) tile_q(type, 4, 1, w + r * rb, rb, a + t * nb32, nb32, nblk, y + t * ldy + r, ldy);
        for (; r < r1; r++) tile_q(type, 1, 1, w + r * rb, rb, a + t * nb32, nb32, nblk, y + t * ldy + r, ldy);
    }
}

ALWAYS_INLINE __m256 load8_float(const int type, const uint8_t *w, int64_t j) {
    if (type == FL_F32) return _mm256_loadu_ps((const float *)w + j);
    __m128i h = _mm_loadu_si128((const __m128i *)(w + 2 * j));
    if (type == FL_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

ALWAYS_INLINE float dot_row_f(const int type, const uint8_t *w, const float *x, int64_t n) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        acc0 = _mm256_fmadd_ps(load8_float(type, w, j), _mm256_loadu_ps(x + j), acc0);
        acc1 = _mm256_fmadd_ps(load8_float(type, w, j + 8), _mm256_loadu_ps(x + j + 8), acc1);
    }
    float s = hsum8(_mm256_add_ps(acc0, acc1));
    for (; j < n; j++) {
        float v;
        fl_dequantize_row(type, w + j * FL_TYPES[type].size, 1, &v);
        s += v * x[j];
    }
    return s;
}

#else /* portable C */

/* The quants of one whole block as small integers (unsigned except Q8_0). */
ALWAYS_INLINE void blk_quants(const int type, const uint8_t *b, int16_t *u) {
    switch (type) {
    case FL_Q4_0: case FL_Q4_1: {
        const uint8_t *qs = b + (type == FL_Q4_0 ? 2 : 4);
        for (int j = 0; j < 16; j++) { u[j] = qs[j] & 0xf; u[j + 16] = qs[j] >> 4; }
    } break;
    case FL_Q5_0: case FL_Q5_1: {
        const uint8_t *qh = b + (type == FL_Q5_0 ? 2 : 4);
        uint32_t h;
        memcpy(&h, qh, 4);
        for (int j = 0; j < 16; j++) {
            u[j] = (qh[4 + j] & 0xf) | (((h >> j) & 1) << 4);
            u[j + 16] = (qh[4 + j] >> 4) | (((h >> (j + 16)) & 1) << 4);
        }
    } break;
    case FL_Q8_0: for (int j = 0; j < 32; j++) u[j] = (int8_t)b[2 + j]; break;
    case FL_Q2_K: case FL_Q3_K: {
        const uint8_t *qs = b + (type == FL_Q2_K ? 16 : 32);
        for (int e = 0; e < 256; e++) {
            int c = e / 32, l = e % 32;
            u[e] = (qs[32 * (c / 4) + l] >> (2 * (c % 4))) & 3;
            if (type == FL_Q3_K) u[e] |= ((b[l] >> c) & 1) << 2;
        }
    } break;
    case FL_Q4_K: case FL_Q5_K: {
        const uint8_t *qs = b + (type == FL_Q4_K ? 16 : 48);
        for (int e = 0; e < 256; e++) {
            int c = e / 32, l = e % 32;
            u[e] = (qs[32 * (c / 2) + l] >> (4 * (c & 1))) & 0xf;
            if (type == FL_Q5_K) u[e] |= ((b[16 + l] >> c) & 1) << 4;
        }
    } break;
    case FL_Q6_K:
        for (int e = 0; e < 256; e++) {
            int c = e / 32, l = e % 32, h = c / 4, k = c % 4;
            int lo = (b[64 * h + 32 * (k & 1) + l] >> (4 * (k >> 1))) & 0xf;
            u[e] = lo | (((b[128 + 32 * h + l] >> (2 * k)) & 3) << 4);
        }
        break;
    }
}

ALWAYS_INLINE float dot_row_q(const int type, const uint8_t *w, const fl_q8 *a, int64_t nblk) {
    const int qk = FL_TYPES[type].blck, bsz = FL_TYPES[type].size;
    float acc = 0.f, sc[16] = {0}, mn[16] = {0};
    int16_t u[256];
    for (int64_t i = 0; i < nblk; i++) {
        const uint8_t *b = w + i * bsz;
        blk_scales(type, b, sc, mn);
        blk_quants(type, b, u);
        for (int g = 0; g < qk / 16; g++) {
            const fl_q8 *ab = a + i * (qk / 32) + g / 2;
            int isum = 0;
            for (int k = 0; k < 16; k++) isum += u[16 * g + k] * ab->q[16 * (g & 1) + k];
            acc += sc[g] * ab->d * (float)isum + mn[g] * ((g & 1) ? ab->s1 : ab->s0);
        }
    }
    return acc;
}

ALWAYS_INLINE float dot_row_f(const int type, const uint8_t *w, const float *x, int64_t n) {
    float s = 0.f, buf[64];
    for (int64_t j = 0; j < n; j += 64) {
        int64_t m = n - j < 64 ? n - j : 64;
        fl_dequantize_row(type, w + j * FL_TYPES[type].size, m, buf);
        for (int64_t k = 0; k < m; k++) s += buf[k] * x[j + k];
    }
    return s;
}
#endif

/* one case per type so that dot_row_q is specialised with the type as a constant */
#if FL_SIMD
#define FL_MM_CASE(T) case T: mm_tiles(T, w, row_bytes, nb32, a, pk, T_, r0, r1, y, ldy, strip); break;
#else
#define FL_MM_CASE(T)                                                              \
    case T:                                                                        \
        for (int64_t r = r0; r < r1; r++)                                          \
            for (int64_t t = 0; t < T_; t++)                                       \
                y[t * ldy + r] = dot_row_q(T, w + r * row_bytes, a + t * nb32, nblk); \
        break;
#endif

void FL_PASTE(fl_mm_q_, FL_SUFFIX)(int type, const uint8_t *w, size_t row_bytes, int64_t nb32, const fl_q8 *a,
                                   const void *pk, int64_t T_, int64_t r0, int64_t r1, float *y, int64_t ldy,
                                   int strip) {
    const int64_t nblk = nb32 * 32 / FL_TYPES[type].blck;
    (void)nblk;
    (void)pk;
    (void)strip;
    switch (type) {
        FL_MM_CASE(FL_Q4_0) FL_MM_CASE(FL_Q4_1) FL_MM_CASE(FL_Q5_0) FL_MM_CASE(FL_Q5_1)
        FL_MM_CASE(FL_Q8_0) FL_MM_CASE(FL_Q2_K) FL_MM_CASE(FL_Q3_K) FL_MM_CASE(FL_Q4_K)
        FL_MM_CASE(FL_Q5_K) FL_MM_CASE(FL_Q6_K)
    }
}

#define FL_MF_CASE(T)                                                                \
    case T:                                                                          \
        for (int64_t r = r0; r < r1; r++)                                            \
            for (int64_t t = 0; t < T_; t++)                                         \
                y[t * ldy + r] = dot_row_f(T, w + r * row_bytes, x + t * ncols, ncols); \
        break;

void FL_PASTE(fl_mm_f_, FL_SUFFIX)(int type, const uint8_t *w, size_t row_bytes, int64_t ncols,
                                   const float *x, int64_t T_, int64_t r0, int64_t r1, float *y, int64_t ldy) {
    switch (type) { FL_MF_CASE(FL_F32) FL_MF_CASE(FL_F16) FL_MF_CASE(FL_BF16) }
}

/* the other per-ISA vector kernels (attention, softmax, SwiGLU, memory read) */
#include "vec_impl.h"

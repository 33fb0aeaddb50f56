/* AVX2 twins of dot_avx512.h's packed kernels (included by dot_impl.h in the AVX2 build): the same
 * strips (repack.c), each 16-row strip taken as two 8-row halves of 8 ymm registers. The integer
 * sums are exact (vpmaddubsw + vpmaddwd; Q8_0's quants made signed first, as 2 x 255 x 127 would
 * saturate), and the float work is the VNNI kernel's lane for lane, so every row gets the same
 * bits on both ISAs. */

/* quant registers 2h and 2h + 1 of group s (at q) for rows 8 half .. 8 half + 7 */
ALWAYS_INLINE void half_pair(const int type, const uint8_t *q, int h, int half, __m256i *w0, __m256i *w1) {
    if (type == FL_Q8_0) { /* stored + 128: back to signed */
        *w0 = _mm256_xor_si256(load32(q + 128 * h + 32 * half), _mm256_set1_epi8((char)0x80));
        *w1 = _mm256_xor_si256(load32(q + 128 * h + 64 + 32 * half), _mm256_set1_epi8((char)0x80));
        return;
    }
    const __m256i lo4 = _mm256_set1_epi8(0x0f), v = load32(q + 64 * h + 32 * half);
    *w0 = _mm256_and_si256(v, lo4);
    *w1 = _mm256_and_si256(_mm256_srli_epi16(v, 4), lo4);
    if (type == FL_Q5_0) { /* bit i of the register's 32-bit mask -> 16 in byte i */
        const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2,
                                                2, 3, 3, 3, 3, 3, 3, 3, 3);
        const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
        __m256i *w[2] = {w0, w1};
        for (int k = 0; k < 2; k++) {
            uint64_t m;
            memcpy(&m, q + 256 + 8 * (2 * h + k), 8);
            const __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int)(uint32_t)(m >> (32 * half))), spread);
            const __m256i on = _mm256_cmpeq_epi8(_mm256_and_si256(b, bit), bit);
            *w[k] = _mm256_or_si256(*w[k], _mm256_and_si256(on, _mm256_set1_epi8(16)));
        }
    }
}

/* group s's scales dw and mins mw for rows 8 half .. 8 half + 7 */
ALWAYS_INLINE void half_scales(const int type, const uint8_t *ss, const uint8_t *bs, int64_t s, int half, __m256 *dw,
                               __m256 *mw) {
    const uint8_t *sc = ss + s * FL_PACKED_SB(type);
    if (type == FL_Q4_K) {
        const uint8_t *b = bs + (s / 8) * 64;
        const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + 16 * half)));
        const __m256i dmin = _mm256_castps_si256(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + 32 + 16 * half))));
        const __m256 ndmin = _mm256_castsi256_ps(_mm256_xor_si256(dmin, _mm256_set1_epi32((int)0x80000000u)));
        *dw = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(sc + 8 * half)))));
        *mw = _mm256_mul_ps(ndmin, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(sc + 16 + 8 * half)))));
    } else {
        *dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sc + 16 * half)));
        *mw = type == FL_Q4_1 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sc + 32 + 16 * half))) : _mm256_setzero_ps();
    }
}

/* group s of rows 8 half .. 8 half + 7: the 8 quant registers, scales dw and mins mw */
ALWAYS_INLINE void half_group(const int type, const uint8_t *qs, const uint8_t *ss, const uint8_t *bs, int64_t s,
                              int half, __m256i *wq, __m256 *dw, __m256 *mw) {
    const uint8_t *q = qs + s * FL_PACKED_QB(type);
    for (int l = 0; l < FL_PACKED_QB(type); l += 64) _mm_prefetch((const char *)(q + 4096 + l), _MM_HINT_T0);
    for (int h = 0; h < 4; h++) half_pair(type, q, h, half, &wq[2 * h], &wq[2 * h + 1]);
    half_scales(type, ss, bs, s, half, dw, mw);
}

/* the exact integer sum of quant register w with 4 activation bytes x */
ALWAYS_INLINE __m256i quad_sum(const int type, __m256i w, __m256i x) {
    const __m256i m = type == FL_Q8_0 ? _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w))
                                      : _mm256_maddubs_epi16(w, x);
    return _mm256_madd_epi16(m, _mm256_set1_epi16(1));
}

/* strip_group's sums for 8 rows: exact integers, then the same conversion, products and FMAs */
ALWAYS_INLINE void half_sums(const int type, const int C, const __m256i *wq, __m256 dw, __m256 mw, const fl_q8 *a,
                             int64_t nb32, const int32_t *sa, int64_t s, __m256 *acc) {
    const int kq = type == FL_Q8_0 ? 0 : int_offset(type), mins = int_offset(type) == 0;
    for (int t = 0; t < C; t++) {
        const fl_q8 *r = a + t * nb32 + s;
        __m256i p = _mm256_set1_epi32(-kq * sa[t * nb32 + s]);
        for (int g = 0; g < 8; g++) {
            int32_t q4;
            memcpy(&q4, r->q + 4 * g, 4);
            p = _mm256_add_epi32(p, quad_sum(type, wq[g], _mm256_set1_epi32(q4)));
        }
        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(dw, _mm256_set1_ps(r->d)), acc[t]);
        if (mins) acc[t] = _mm256_fmadd_ps(mw, _mm256_set1_ps(r->s0 + r->s1), acc[t]);
    }
}

/* rows nr of 8 (the rest of the strip past the matrix) x C tokens */
ALWAYS_INLINE void half_tile(const int type, const int C, const uint8_t *qs, const uint8_t *ss, const uint8_t *bs,
                             int half, const fl_q8 *a, int64_t nb32, const int32_t *sa, float *y, int64_t ldy, int nr) {
    __m256 acc[4];
    for (int t = 0; t < C; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t s = 0; s < nb32; s++) {
        __m256i wq[8];
        __m256 dw, mw;
        half_group(type, qs, ss, bs, s, half, wq, &dw, &mw);
        half_sums(type, C, wq, dw, mw, a, nb32, sa, s, acc);
    }
    for (int t = 0; t < C; t++) {
        if (nr == 8) {
            _mm256_storeu_ps(y + t * ldy, acc[t]);
        } else {
            float o[8];
            _mm256_storeu_ps(o, acc[t]);
            memcpy(y + t * ldy, o, (size_t)nr * sizeof(float));
        }
    }
}

/* one token, all rows nr of 16 of a strip in one pass over its bytes, so each cache line is read
 * once: per row the same integer sums and float steps as half_tile */
ALWAYS_INLINE void strip_one(const int type, const uint8_t *qs, const uint8_t *ss, const uint8_t *bs, const fl_q8 *a,
                             int64_t nb32, const int32_t *sa, float *y, int nr) {
    const int kq = type == FL_Q8_0 ? 0 : int_offset(type), mins = int_offset(type) == 0;
    __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t s = 0; s < nb32; s++) {
        const uint8_t *q = qs + s * FL_PACKED_QB(type);
        for (int l = 0; l < FL_PACKED_QB(type); l += 64) _mm_prefetch((const char *)(q + 2048 + l), _MM_HINT_T0);
        const fl_q8 *r = a + s;
        __m256i p[2] = {_mm256_set1_epi32(-kq * sa[s]), _mm256_set1_epi32(-kq * sa[s])};
        for (int h = 0; h < 4; h++) {
            int32_t q4[2];
            memcpy(q4, r->q + 8 * h, 8);
            const __m256i x0 = _mm256_set1_epi32(q4[0]), x1 = _mm256_set1_epi32(q4[1]);
            for (int half = 0; half < 2; half++) {
                __m256i w0, w1;
                half_pair(type, q, h, half, &w0, &w1);
                p[half] = _mm256_add_epi32(_mm256_add_epi32(p[half], quad_sum(type, w0, x0)), quad_sum(type, w1, x1));
            }
        }
        for (int half = 0; half < 2; half++) {
            __m256 dw, mw;
            half_scales(type, ss, bs, s, half, &dw, &mw);
            acc[half] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p[half]), _mm256_mul_ps(dw, _mm256_set1_ps(r->d)), acc[half]);
            if (mins) acc[half] = _mm256_fmadd_ps(mw, _mm256_set1_ps(r->s0 + r->s1), acc[half]);
        }
    }
    float o[16];
    _mm256_storeu_ps(o, acc[0]);
    _mm256_storeu_ps(o + 8, acc[1]);
    memcpy(y, o, (size_t)nr * sizeof(float));
}

void fl_mm_packed_avx2(int type, const uint8_t *w, int64_t nb32, const fl_q8 *a, const int32_t *sa, int64_t T,
                       int64_t r0, int64_t r1, float *y, int64_t ldy) {
#define FL_HALVES(TY)                                                                                          \
    do {                                                                                                       \
        const size_t qbytes = (size_t)nb32 * FL_PACKED_QB(TY), sbytes = (size_t)nb32 * FL_PACKED_SB(TY);       \
        const size_t strip = qbytes + sbytes + (size_t)(nb32 / 8) * FL_PACKED_BB(TY);                          \
        for (int64_t r = r0; r < r1; r += 8) {                                                                 \
            const int nr = r1 - r < 8 ? (int)(r1 - r) : 8, half = (int)(r / 8) % 2;                             \
            const uint8_t *qs = w + (size_t)(r / 16) * strip, *ss = qs + qbytes, *bs = ss + sbytes;             \
            if (T == 1 && half == 0 && r1 - r > 8) {                                                           \
                const int nr16 = r1 - r < 16 ? (int)(r1 - r) : 16;                                              \
                strip_one(TY, qs, ss, bs, a, nb32, sa, y + r, nr16);                                           \
                r += 8;                                                                                        \
                continue;                                                                                      \
            }                                                                                                  \
            int64_t t = 0;                                                                                     \
            for (; t + 4 <= T; t += 4)                                                                         \
                half_tile(TY, 4, qs, ss, bs, half, a + t * nb32, nb32, sa + t * nb32, y + t * ldy + r, ldy, nr); \
            for (; t < T; t++)                                                                                 \
                half_tile(TY, 1, qs, ss, bs, half, a + t * nb32, nb32, sa + t * nb32, y + t * ldy + r, ldy, nr); \
        }                                                                                                      \
    } while (0)
    switch (type) {
    case FL_Q4_0: FL_HALVES(FL_Q4_0); break;
    case FL_Q4_1: FL_HALVES(FL_Q4_1); break;
    case FL_Q5_0: FL_HALVES(FL_Q5_0); break;
    case FL_Q8_0: FL_HALVES(FL_Q8_0); break;
    case FL_Q4_K: FL_HALVES(FL_Q4_K); break;
    }
#undef FL_HALVES
}

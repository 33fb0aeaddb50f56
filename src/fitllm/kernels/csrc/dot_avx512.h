/* AVX-512 VNNI tiles of dot_impl.h (included there, inside FL_VNNI, after chunk_quants). */
/* AVX-512: two 32-element chunks per 512-bit register (two blocks of a 32-element format, or
 * chunks c and c+1 of a K-quant block), so one (row, token) pair costs one vpdpbusd, one
 * conversion, one scale product and one FMA per 64 elements. Offsets that are a constant times the
 * scale (Q4_0 Q5_0 Q8_0 Q3_K Q6_K) are taken out of the integer sums, exactly; the K-quant mins
 * (Q2_K Q4_K Q5_K) are added per block into the same accumulator, whose lanes are summed at the end.
 * Q4_1 and Q5_1 (a float min per 32) stay with tile_q, where they are faster. */
/* Activations packed per token and 64 elements, once per matmul (fl_pack_vnni): the quants of two
 * records, minus the sum of each 4 of them (the integer offset, times kq, of types with one), and
 * each lane's scale; the tiles then load what they used to join and compute for every 2 rows. */
typedef struct {
    int8_t q[64];
    int32_t negsum[16];
    float d[16];
} zpack;

_Static_assert(sizeof(zpack) == FL_ZPACK_BYTES, "zpack layout");

static __thread zpack *ZP;     /* this thread's packed activations */
static __thread size_t ZP_CAP; /* their capacity, in zpacks */

const void *fl_pack_vnni(const fl_q8 *a, int64_t nb32, int64_t T) {
    if (nb32 % 2) return NULL;
    const size_t n = (size_t)(T * nb32 / 2);
    if (n > ZP_CAP) {
        free(ZP);
        ZP = aligned_alloc(64, n * sizeof(zpack));
        ZP_CAP = ZP ? n : 0;
        if (!ZP) return NULL;
    }
    zpack *zp = ZP;
    const __m512i ones = _mm512_set1_epi8(1);
    for (size_t p = 0; p < n; p++) {
        const fl_q8 *r = a + 2 * p;
        const __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)r[0].q)),
                                             _mm256_loadu_si256((const __m256i *)r[1].q), 1);
        _mm512_store_si512(zp[p].q, q);
        _mm512_store_si512(zp[p].negsum, _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, q)));
        _mm512_store_ps(zp[p].d, _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(r[0].d), _mm512_set1_ps(r[1].d)));
    }
    return zp;
}

ALWAYS_INLINE __m512i join256(__m256i lo, __m256i hi) { return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1); }
ALWAYS_INLINE __m512 join_ps(float lo, float hi) { return _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(lo), _mm512_set1_ps(hi)); }

/* chunks c, c+1 of a K-quant block; Q4_K's pair shares one 32-byte load (low, high nibbles) */
ALWAYS_INLINE __m512i pair_quants(const int type, const uint8_t *b, int c) {
    if (type == FL_Q4_K) {
        const __m256i v = load32(b + 16 + 16 * c), m = _mm256_set1_epi8(0x0f);
        return join256(_mm256_and_si256(v, m), _mm256_and_si256(_mm256_srli_epi16(v, 4), m));
    }
    return join256(chunk_quants(type, b, c), chunk_quants(type, b, c + 1));
}

/* K-quant block scales as vectors, per 16 elements: swall (scale) and mnv (offset). Q4_K/Q5_K unpack
 * their twelve 6-bit fields with word masks (as llama.cpp does), Q6_K's are plain int8; the rest
 * go through blk_scales. */
ALWAYS_INLINE void kscales_z(const int type, const uint8_t *b, float *sc, float *mn, __m512 *swall, __m512 *mnv) {
    const __m512i dup = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    if (type == FL_Q4_K || type == FL_Q5_K) {
        uint32_t u[3], v[4];
        memcpy(u, b + 4, 12);
        const uint32_t k1 = 0x3f3f3f3f, k2 = 0x0f0f0f0f, k3 = 0x03030303;
        v[0] = u[0] & k1;                                      /* scales 0-3 */
        v[1] = (u[2] & k2) | (((u[0] >> 6) & k3) << 4);        /* scales 4-7 */
        v[2] = u[1] & k1;                                      /* mins 0-3 */
        v[3] = ((u[2] >> 4) & k2) | (((u[1] >> 6) & k3) << 4); /* mins 4-7 */
        const __m512 f = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)v)));
        const __m512 dm = join_ps(h2f(b), -h2f(b + 2)); /* d for the scales, -dmin for the mins */
        const __m512 sm = _mm512_mul_ps(f, dm);
        *swall = _mm512_permutexvar_ps(dup, sm);
        *mnv = _mm512_permutexvar_ps(_mm512_add_epi32(dup, _mm512_set1_epi32(8)), sm);
    } else if (type == FL_Q6_K) {
        const __m128i s8 = _mm_loadu_si128((const __m128i *)(b + 192));
        *swall = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(s8)), _mm512_set1_ps(h2f(b + 208)));
    } else {
        blk_scales(type, b, sc, mn);
        *swall = _mm512_loadu_ps(sc);
        *mnv = _mm512_loadu_ps(mn);
    }
}

ALWAYS_INLINE void tile_z(const int type, const int R, const int C, const uint8_t *w, size_t rb, const fl_q8 *a,
                          const zpack *pk, int64_t nb32, int64_t nblk, float *y, int64_t ldy) {
    const int nch = FL_TYPES[type].blck / 32, bsz = FL_TYPES[type].size, kq = int_offset(type);
    const int step = nch == 1 ? 2 : 1, mins = kq == 0; /* Q2_K Q4_K Q5_K (Q4_1, Q5_1 go to tile_q) */
    /* lanes 4j..4j+3 take the scale of 16-element group j of the pair */
    const __m512i gidx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    /* s0, s1 of the eight records of a K-quant block (records are 11 floats) */
    const __m512i sidx = _mm512_setr_epi32(1, 2, 12, 13, 23, 24, 34, 35, 45, 46, 56, 57, 67, 68, 78, 79);
    __m512 acc[4][16];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < C; t++) acc[r][t] = _mm512_setzero_ps();
    for (int64_t i = 0; i < nblk; i += step) {
        float sc[4][16], mn[4][16];
        __m512 swall[4], mnv[4];
        for (int r = 0; r < R; r++) {
            const uint8_t *b = w + r * rb + i * bsz;
            /* the same blocks two tiles on (a tile takes about one memory latency); every line of
             * them (Grok-shaped Q4_K +15 %; Q6_K read cold at 25 GB/s where its first three gave 16) */
            const uint8_t *ahead = b + 2 * R * rb;
            _mm_prefetch((const char *)ahead, _MM_HINT_T0);
            if (type >= FL_Q2_K && type <= FL_Q6_K) { /* a constant (nch is read from the table) */
                for (int l = 64; l < bsz; l += 64) _mm_prefetch((const char *)(ahead + l), _MM_HINT_T0);
                _mm_prefetch((const char *)(ahead + bsz - 1), _MM_HINT_T0);
            } else {
                _mm_prefetch((const char *)(ahead + (nch == 1 ? bsz : 64)), _MM_HINT_T0);
            }
            if (nch == 1) { /* d is the block's first fp16 field */
                swall[r] = join_ps(h2f(b), h2f(b + bsz));
            } else {
                kscales_z(type, b, sc[r], mn[r], &swall[r], &mnv[r]);
            }
        }
        for (int c = 0; c < nch; c += 2) {
            __m512i u[4];
            __m512 sw[4];
            for (int r = 0; r < R; r++) {
                const uint8_t *b = w + r * rb + i * bsz;
                u[r] = nch == 1 ? join256(chunk_quants(type, b, 0), chunk_quants(type, b + bsz, 0))
                                : pair_quants(type, b, c);
                sw[r] = nch == 1 ? swall[r] : _mm512_permutexvar_ps(_mm512_add_epi32(gidx, _mm512_set1_epi32(2 * c)), swall[r]);
            }
            for (int t = 0; t < C; t++) {
                const zpack *pt = pk + t * (nb32 / 2) + (i * nch + c) / 2;
                const __m512i s = _mm512_load_si512(pt->q);
                const __m512 da = _mm512_load_ps(pt->d);
                __m512i init = _mm512_setzero_si512();
                if (kq) init = _mm512_slli_epi32(_mm512_load_si512(pt->negsum), __builtin_ctz(kq));
                for (int r = 0; r < R; r++) {
                    const __m512 p = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(init, u[r], s));
                    acc[r][t] = _mm512_fmadd_ps(p, _mm512_mul_ps(sw[r], da), acc[r][t]);
                }
            }
        }
        if (mins)
            for (int t = 0; t < C; t++) {
                const __m512 bs = _mm512_i32gather_ps(sidx, (const float *)(a + t * nb32 + i * nch), 4);
                for (int r = 0; r < R; r++) acc[r][t] = _mm512_fmadd_ps(mnv[r], bs, acc[r][t]);
            }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < C; t++) y[t * ldy + r] = _mm512_reduce_add_ps(acc[r][t]);
}

/* rows [r0, r1) x C tokens in R-row tiles, then single rows */
ALWAYS_INLINE void zrows(const int type, const int R, const int C, const uint8_t *w, size_t rb, int64_t nb32,
                         const fl_q8 *a, const zpack *pk, int64_t nblk, int64_t r0, int64_t r1, float *y, int64_t ldy) {
    int64_t r = r0;
    for (; r + R <= r1; r += R) tile_z(type, R, C, w + r * rb, rb, a, pk, nb32, nblk, y + r, ldy);
    for (; r < r1; r++) tile_z(type, 1, C, w + r * rb, rb, a, pk, nb32, nblk, y + r, ldy);
}

/* Prompt batches: 16-row strips (FL_STRIP_TYPE: a scale, and for Q4_1 Q5_1 Q4_K Q5_K a min, per 32
 * elements). A task repacks its strip into this thread's buffer so that one register holds the same
 * 4 elements of 16 rows: one vpdpbusd with a token's 4 activation bytes broadcast advances 16 rows,
 * and the float work (conversion, scale product, FMA, min) is per 16 rows, not per row: ~0.7 vector
 * ops per (row, token, 32 elements) where tile_z needs 2 (1536 x 1536 by 128 tokens, 2 threads:
 * ~85 -> ~330 GMAC/s). Each (row, token) sum is exact per 32, then accumulated in block order, the
 * same for every token of every batch that takes this path. */
#define STRIP_SUB (8 * 64 + 128) /* bytes per 32 elements: 8 x (16 rows x 4 quants), 16 scales, 16 mins */

static __thread uint8_t *SB; /* this thread's repacked strip */
static __thread size_t SB_CAP;
/* rows nr..15 (past the matrix) are zeros */
ALWAYS_INLINE void strip_pack(const int type, const uint8_t *w, size_t rb, int64_t nblk, uint8_t *out, int nr) {
    const int nch = FL_TYPES[type].blck / 32, bsz = FL_TYPES[type].size;
    if (nr < 16) memset(out, 0, (size_t)nblk * nch * STRIP_SUB);
    for (int r = 0; r < nr; r++) {
        uint8_t *o = out;
        for (int64_t i = 0; i < nblk; i++) {
            const uint8_t *b = w + r * rb + i * bsz;
            float sc[16], mn[16];
            blk_scales(type, b, sc, mn);
            for (int c = 0; c < nch; c++, o += STRIP_SUB) {
                uint32_t u[8];
                _mm256_storeu_si256((__m256i *)u, chunk_quants(type, b, c));
                for (int g = 0; g < 8; g++) memcpy(o + g * 64 + 4 * r, &u[g], 4);
                float *f = (float *)(o + 8 * 64);
                f[r] = sc[2 * c];
                f[16 + r] = mn[2 * c];
            }
        }
    }
}

/* Group s (32 columns) of a strip for C tokens into acc: 16 rows' quants in wq (register g: 4
 * of each row), their scales dw and mins mw; the integer products exact (one token: four chains
 * of two vpdpbusd, the same sums), then one FMA per token, and one for the mins (Q4_1 Q5_1 Q4_K
 * Q5_K: times the token's d * sum(q), as its record holds it; Q8_1: fp16-rounded). */
ALWAYS_INLINE void strip_group(const int type, const int C, const __m512i *wq, __m512 dw, __m512 mw, const fl_q8 *a,
                               int64_t nb32, const int32_t *sa, int64_t s, __m512 *acc) {
    const int kq = int_offset(type), mins = kq == 0;
    const int J = C % 8 == 0 ? 8 : C % 4 ? 1 : 4; /* tokens whose 8-long vpdpbusd chains interleave */
    for (int t = 0; t < C; t += J) {
        __m512i p[8];
        if (J == 1) {
            const int8_t *q = a[t * nb32 + s].q;
            for (int c = 0; c < 4; c++) {
                int32_t q0, q1;
                memcpy(&q0, q + 8 * c, 4);
                memcpy(&q1, q + 8 * c + 4, 4);
                p[c] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wq[2 * c], _mm512_set1_epi32(q0));
                p[c] = _mm512_dpbusd_epi32(p[c], wq[2 * c + 1], _mm512_set1_epi32(q1));
            }
            p[0] = _mm512_add_epi32(_mm512_add_epi32(p[0], p[1]), _mm512_add_epi32(p[2], p[3]));
            p[0] = _mm512_add_epi32(p[0], _mm512_set1_epi32(-kq * sa[t * nb32 + s]));
        } else {
            for (int j = 0; j < J; j++) p[j] = _mm512_set1_epi32(-kq * sa[(t + j) * nb32 + s]);
            for (int g = 0; g < 8; g++)
                for (int j = 0; j < J; j++) {
                    int32_t q4;
                    memcpy(&q4, a[(t + j) * nb32 + s].q + 4 * g, 4);
                    p[j] = _mm512_dpbusd_epi32(p[j], wq[g], _mm512_set1_epi32(q4));
                }
        }
        for (int j = 0; j < J; j++) {
            const fl_q8 *r = a + (t + j) * nb32 + s;
            acc[t + j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p[j]), _mm512_mul_ps(dw, _mm512_set1_ps(r->d)), acc[t + j]);
            if (mins) acc[t + j] = _mm512_fmadd_ps(mw, _mm512_set1_ps(r->s0 + r->s1), acc[t + j]);
        }
    }
}

/* 16 rows x C tokens over the nb32 blocks of the packed strip */
ALWAYS_INLINE void strip_tile(const int type, const int C, const uint8_t *sp, const fl_q8 *a, int64_t nb32,
                              const int32_t *sa, float *y, int64_t ldy, __mmask16 rows) {
    const int mins = int_offset(type) == 0;
    __m512 acc[16];
    for (int t = 0; t < C; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t s = 0; s < nb32; s++, sp += STRIP_SUB) {
        __m512i wq[8];
        for (int g = 0; g < 8; g++) wq[g] = _mm512_load_si512(sp + 64 * g);
        const __m512 dw = _mm512_load_ps((const float *)(sp + 8 * 64));
        const __m512 mw = mins ? _mm512_load_ps((const float *)(sp + 8 * 64 + 64)) : _mm512_setzero_ps();
        strip_group(type, C, wq, dw, mw, a, nb32, sa, s, acc);
    }
    for (int t = 0; t < C; t++) _mm512_mask_storeu_ps(y + t * ldy, rows, acc[t]);
}

/* rows [r0, r1) x T_ tokens through packed strips (the last one padded), sa: the tokens' sums
 * (fl_strip_sums_vnni): every row's sums are the same whichever strip, task, thread or rank it falls
 * to. Returns r1, or r0 when out of memory. */
ALWAYS_INLINE int64_t strip_rows(const int type, const uint8_t *w, size_t rb, int64_t nb32, const fl_q8 *a,
                                 const int32_t *sa, int64_t T_, int64_t r0, int64_t r1, float *y, int64_t ldy) {
    const int64_t nblk = nb32 * 32 / FL_TYPES[type].blck;
    SB = grow(SB, &SB_CAP, (size_t)nb32 * STRIP_SUB);
    if (!SB) return r0;
    for (int64_t r = r0; r < r1; r += 16) {
        const int nr = r1 - r < 16 ? (int)(r1 - r) : 16;
        const __mmask16 m = (__mmask16)((1u << nr) - 1);
        strip_pack(type, w + r * rb, rb, nblk, SB, nr);
        int64_t t = 0;
        for (; t + 8 <= T_; t += 8) strip_tile(type, 8, SB, a + t * nb32, nb32, sa + t * nb32, y + t * ldy + r, ldy, m);
        for (; t + 4 <= T_; t += 4) strip_tile(type, 4, SB, a + t * nb32, nb32, sa + t * nb32, y + t * ldy + r, ldy, m);
        for (; t < T_; t++) strip_tile(type, 1, SB, a + t * nb32, nb32, sa + t * nb32, y + t * ldy + r, ldy, m);
    }
    return r1;
}

/* Packed matrices (repack.c): strip_tile's arithmetic on a strip as stored, its quants split from
 * their nibbles in registers, so every token's sums are the blocks' strips' (of any batch size). */

/* the 8 quant registers of group s, and its 16 scales (dw) and mins (mw, Q4_1 Q4_K) as blk_scales has them */
ALWAYS_INLINE void packed_group(const int type, const uint8_t *qs, const uint8_t *ss, const uint8_t *bs, int64_t s,
                                __m512i *wq, __m512 *dw, __m512 *mw) {
    const uint8_t *q = qs + s * FL_PACKED_QB(type), *sc = ss + s * FL_PACKED_SB(type);
    /* 4 KiB ahead (one thread reads ~30 GB/s; 2 KiB: SmolLM2 Q4_0 decode 196 instead of 224 tok/s) */
    for (int l = 0; l < FL_PACKED_QB(type); l += 64) _mm_prefetch((const char *)(q + 4096 + l), _MM_HINT_T0);
    for (int h = 0; h < 4; h++) {
        if (type == FL_Q8_0) {
            wq[2 * h] = _mm512_loadu_si512(q + 128 * h);
            wq[2 * h + 1] = _mm512_loadu_si512(q + 128 * h + 64);
        } else {
            const __m512i v = _mm512_loadu_si512(q + 64 * h), lo4 = _mm512_set1_epi8(0x0f);
            wq[2 * h] = _mm512_and_si512(v, lo4);
            wq[2 * h + 1] = _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4);
        }
    }
    if (type == FL_Q5_0)
        for (int g = 0; g < 8; g++) {
            uint64_t m;
            memcpy(&m, q + 256 + 8 * g, 8);
            wq[g] = _mm512_or_si512(wq[g], _mm512_maskz_mov_epi8(m, _mm512_set1_epi8(16)));
        }
    if (type == FL_Q4_K) {
        const uint8_t *b = bs + (s / 8) * 64;
        const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)b));
        const __m512i dmin = _mm512_castps_si512(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(b + 32))));
        const __m512 ndmin = _mm512_castsi512_ps(_mm512_xor_si512(dmin, _mm512_set1_epi32((int)0x80000000u)));
        *dw = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)sc))));
        *mw = _mm512_mul_ps(ndmin, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(sc + 16)))));
    } else {
        *dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)sc));
        *mw = type == FL_Q4_1 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(sc + 32))) : _mm512_setzero_ps();
    }
}

ALWAYS_INLINE void packed_tile(const int type, const int C, const uint8_t *qs, const uint8_t *ss, const uint8_t *bs,
                               const fl_q8 *a, int64_t nb32, const int32_t *sa, float *y, int64_t ldy, __mmask16 rows) {
    __m512 acc[8];
    for (int t = 0; t < C; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t s = 0; s < nb32; s++) {
        __m512i wq[8];
        __m512 dw, mw;
        packed_group(type, qs, ss, bs, s, wq, &dw, &mw);
        strip_group(type, C, wq, dw, mw, a, nb32, sa, s, acc);
    }
    for (int t = 0; t < C; t++) _mm512_mask_storeu_ps(y + t * ldy, rows, acc[t]);
}

ALWAYS_INLINE void packed_rows(const int type, const uint8_t *w, int64_t nb32, const fl_q8 *a, const int32_t *sa,
                               int64_t T_, int64_t r0, int64_t r1, float *y, int64_t ldy) {
    const size_t qbytes = (size_t)nb32 * FL_PACKED_QB(type), sbytes = (size_t)nb32 * FL_PACKED_SB(type);
    const size_t strip = qbytes + sbytes + (size_t)(nb32 / 8) * FL_PACKED_BB(type);
    for (int64_t r = r0; r < r1; r += 16) {
        const int nr = r1 - r < 16 ? (int)(r1 - r) : 16;
        const __mmask16 m = (__mmask16)((1u << nr) - 1);
        const uint8_t *qs = w + (size_t)(r / 16) * strip, *ss = qs + qbytes, *bs = ss + sbytes;
        int64_t t = 0;
        for (; t + 8 <= T_; t += 8) packed_tile(type, 8, qs, ss, bs, a + t * nb32, nb32, sa + t * nb32, y + t * ldy + r, ldy, m);
        for (; t + 4 <= T_; t += 4) packed_tile(type, 4, qs, ss, bs, a + t * nb32, nb32, sa + t * nb32, y + t * ldy + r, ldy, m);
        for (; t < T_; t++) packed_tile(type, 1, qs, ss, bs, a + t * nb32, nb32, sa + t * nb32, y + t * ldy + r, ldy, m);
    }
}

void fl_mm_packed_vnni(int type, const uint8_t *w, int64_t nb32, const fl_q8 *a, const int32_t *sa, int64_t T,
                       int64_t r0, int64_t r1, float *y, int64_t ldy) {
    switch (type) {
    case FL_Q4_0: packed_rows(FL_Q4_0, w, nb32, a, sa, T, r0, r1, y, ldy); break;
    case FL_Q4_1: packed_rows(FL_Q4_1, w, nb32, a, sa, T, r0, r1, y, ldy); break;
    case FL_Q5_0: packed_rows(FL_Q5_0, w, nb32, a, sa, T, r0, r1, y, ldy); break;
    case FL_Q8_0: packed_rows(FL_Q8_0, w, nb32, a, sa, T, r0, r1, y, ldy); break;
    case FL_Q4_K: packed_rows(FL_Q4_K, w, nb32, a, sa, T, r0, r1, y, ldy); break;
    }
}

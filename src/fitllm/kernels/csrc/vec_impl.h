/* The per-ISA vector kernels besides the matrix products (included by dot_impl.h, after the
 * helpers it defines): attention on the fp16 KV cache, softmax, SwiGLU, and a plain memory read. */
/* Attention on the fp16 cache: q.k with both sides fp16 (llama.cpp rounds q to fp16 for this
 * product), and acc = sum p * v. Products of two fp16 values are exact in f32. Each score is summed
 * in 8 lanes along the head, then the lanes as hsum8 adds them, 8 positions at a time; each output
 * dimension of p.v is one chain of FMAs in position order. */
#if FL_SIMD
/* one score, q rounded to fp16 on the fly (positions past the last 8, heads over 256 or not a
 * multiple of 8) */
ALWAYS_INLINE float dot_f32_f16(const float *a, const uint16_t *b, int64_t n) {
    int64_t j = 0;
    __m256 acc = _mm256_setzero_ps();
    for (; j + 8 <= n; j += 8)
        acc = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(a + j), _MM_FROUND_TO_NEAREST_INT)),
                              _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + j))), acc);
    float s = hsum8(acc);
    for (; j < n; j++) s += fl_h2f(fl_f2h(a[j])) * fl_h2f(b[j]);
    return s;
}

/* hsum8 of each of a[0..7], in hsum8's order of additions: (lo + hi), then (0 + 2) + (1 + 3) */
ALWAYS_INLINE __m256 hsum8x8(const __m256 *a) {
    __m256 z[4], c[2];
    for (int j = 0; j < 4; j++) /* [a[2j] lo + hi | a[2j+1] lo + hi] */
        z[j] = _mm256_add_ps(_mm256_permute2f128_ps(a[2 * j], a[2 * j + 1], 0x20),
                             _mm256_permute2f128_ps(a[2 * j], a[2 * j + 1], 0x31));
    for (int j = 0; j < 2; j++) /* per 128-bit lane: the (0 + 2), (1 + 3) pairs of two sums */
        c[j] = _mm256_add_ps(_mm256_shuffle_ps(z[2 * j], z[2 * j + 1], 0x44),
                             _mm256_shuffle_ps(z[2 * j], z[2 * j + 1], 0xEE));
    const __m256 h = _mm256_hadd_ps(c[0], c[1]); /* sums of a[0, 2, 4, 6 | 1, 3, 5, 7] */
    return _mm256_permutevar8x32_ps(h, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

void FL_PASTE(fl_scores_f16_, FL_SUFFIX)(const float *qf32, const uint16_t *k, int64_t stride, int64_t n,
                                         int64_t hd, float *s) {
    int64_t i = 0;
    if (hd % 8 == 0 && hd <= 256) {
        __m256 qf[32];
        for (int64_t d = 0; d < hd; d += 8)
            qf[d / 8] = _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(qf32 + d), _MM_FROUND_TO_NEAREST_INT));
        for (; i + 8 <= n; i += 8) {
            __m256 acc[8];
            for (int j = 0; j < 8; j++) acc[j] = _mm256_setzero_ps();
            const uint16_t *kr = k + i * stride;
            for (int64_t d = 0; d < hd; d += 8)
                for (int j = 0; j < 8; j++)
                    acc[j] = _mm256_fmadd_ps(qf[d / 8], _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kr + j * stride + d))),
                                             acc[j]);
            _mm256_storeu_ps(s + i, hsum8x8(acc));
        }
    }
    for (; i < n; i++) s[i] = dot_f32_f16(qf32, k + i * stride, hd);
}

/* acc[0 .. 8 NV) = sum_i p[i] * v[i * stride + 0 .. 8 NV), accumulators in registers */
ALWAYS_INLINE void pv_chunk(const int NV, const float *p, const uint16_t *v, int64_t stride, int64_t n, float *acc) {
    __m256 a[8];
    for (int j = 0; j < NV; j++) a[j] = _mm256_setzero_ps();
    for (int64_t i = 0; i < n; i++) {
        const __m256 pv = _mm256_set1_ps(p[i]);
        for (int j = 0; j < NV; j++)
            a[j] = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + i * stride + 8 * j))), pv, a[j]);
    }
    for (int j = 0; j < NV; j++) _mm256_storeu_ps(acc + 8 * j, a[j]);
}

void FL_PASTE(fl_pv_f16_, FL_SUFFIX)(const float *p, const uint16_t *v, int64_t stride, int64_t n, int64_t hd,
                                     float *acc) {
    int64_t d = 0;
    for (; d + 64 <= hd; d += 64) pv_chunk(8, p, v + d, stride, n, acc + d);
    for (; d + 8 <= hd; d += 8) pv_chunk(1, p, v + d, stride, n, acc + d);
    for (; d < hd; d++) {
        acc[d] = 0.f;
        for (int64_t i = 0; i < n; i++) acc[d] += p[i] * fl_h2f(v[i * stride + d]);
    }
}
#else
void FL_PASTE(fl_scores_f16_, FL_SUFFIX)(const float *q, const uint16_t *k, int64_t stride, int64_t n,
                                         int64_t hd, float *s) {
    for (int64_t i = 0; i < n; i++) {
        float acc = 0.f;
        for (int64_t j = 0; j < hd; j++) acc += fl_h2f(fl_f2h(q[j])) * fl_h2f(k[i * stride + j]);
        s[i] = acc;
    }
}

void FL_PASTE(fl_pv_f16_, FL_SUFFIX)(const float *p, const uint16_t *v, int64_t stride, int64_t n, int64_t hd,
                                     float *acc) {
    memset(acc, 0, (size_t)hd * sizeof(float));
    for (int64_t i = 0; i < n; i++)
        for (int64_t d = 0; d < hd; d++) acc[d] += p[i] * fl_h2f(v[i * stride + d]);
}
#endif

#if FL_SIMD
/* e^x to about 2 ulp (0 below -87.3; x clamped to 88): x = n ln2 + r, |r| <= ln2 / 2, e^r by its
 * degree-6 Taylor polynomial, 2^n made in the exponent bits. (ggml's SiLU uses a vector exp of
 * its own too, not libm's.) */
ALWAYS_INLINE __m256 exp8(__m256 x) {
    x = _mm256_min_ps(x, _mm256_set1_ps(88.0f));
    const __m256 under = _mm256_cmp_ps(x, _mm256_set1_ps(-87.33f), _CMP_LT_OQ);
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x); /* ln 2, high bits: exact */
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860682030941723e-6f), r);   /* and the rest */
    static const float c[7] = {1.f / 720, 1.f / 120, 1.f / 24, 1.f / 6, 0.5f, 1.f, 1.f};
    __m256 p = _mm256_set1_ps(c[0]);
    for (int k = 1; k < 7; k++) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c[k]));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

/* exp8 of x[i] for i < n (x[n..] read as -inf), into y */
ALWAYS_INLINE void exp_tail(const float *x, int64_t n, float *y) {
    float t[8];
    for (int j = 0; j < 8; j++) t[j] = j < n ? x[j] : -INFINITY;
    _mm256_storeu_ps(t, exp8(_mm256_loadu_ps(t)));
    for (int j = 0; j < n; j++) y[j] = t[j];
}
#endif

/* s[0..n) <- softmax of the scores times scale (or cap * tanh(s * capscale), Grok's soft cap), each
 * probability rounded to fp16 for p.v: max, then libm's expf and a double sum in position order
 * (exp8 here moved Gemma-3's perplexity by 0.8 %: 2-ulp differences that flip a probability's
 * fp16 rounding once in ~1e5 cascade through its layers) */
void FL_PASTE(fl_softmax_, FL_SUFFIX)(float *s, int64_t n, float scale, float cap, float capscale) {
    int64_t i = 0;
    float mx = -INFINITY;
#if FL_SIMD
    if (cap <= 0.f) {
        __m256 m8 = _mm256_set1_ps(-INFINITY);
        for (; i + 8 <= n; i += 8) {
            const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(s + i), _mm256_set1_ps(scale));
            _mm256_storeu_ps(s + i, v);
            m8 = _mm256_max_ps(m8, v);
        }
        float m[8];
        _mm256_storeu_ps(m, m8);
        for (int j = 0; j < 8; j++) mx = m[j] > mx ? m[j] : mx;
    }
#endif
    for (; i < n; i++) {
        const float v = cap > 0.f ? tanhf(s[i] * capscale) * cap : s[i] * scale; /* llama.cpp's grok order */
        s[i] = v;
        mx = v > mx ? v : mx;
    }
    double sum = 0.0;
    for (i = 0; i < n; i++) {
        s[i] = expf(s[i] - mx);
        sum += (double)s[i];
    }
    const float inv = (float)(1.0 / sum);
    i = 0;
#if FL_SIMD
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(s + i, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_mul_ps(_mm256_loadu_ps(s + i), _mm256_set1_ps(inv)),
                                                                _MM_FROUND_TO_NEAREST_INT)));
#endif
    for (; i < n; i++) s[i] = fl_h2f(fl_f2h(s[i] * inv));
}

/* gate[j] <- silu(gate[j]) * up[j] (SwiGLU) */
void FL_PASTE(fl_swiglu_, FL_SUFFIX)(float *gate, const float *up, int64_t n) {
    int64_t j = 0;
#if FL_SIMD
    const __m256 one = _mm256_set1_ps(1.f);
    for (; j + 8 <= n; j += 8) {
        const __m256 g = _mm256_loadu_ps(gate + j);
        const __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
        _mm256_storeu_ps(gate + j, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), _mm256_loadu_ps(up + j)));
    }
    if (j < n) {
        const int64_t j0 = j;
        float e[8], ng[8];
        for (int64_t k = 0; k < n - j0; k++) ng[k] = -gate[j0 + k];
        exp_tail(ng, n - j0, e);
        for (; j < n; j++) gate[j] = gate[j] / (1.0f + e[j - j0]) * up[j];
    }
#endif
    for (; j < n; j++) gate[j] = gate[j] / (1.0f + expf(-gate[j])) * up[j];
}

/* The sum of n / 32 * 4 64-bit words of p, read with the widest loads this ISA has and four
 * independent sums: what a thread's memory reads cost when they do nothing else. */
uint64_t FL_PASTE(fl_read_sum_, FL_SUFFIX)(const uint8_t *p, size_t n) {
    uint64_t s = 0;
    size_t i = 0;
#if FL_SIMD
    __m256i a[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
    for (; i + 128 <= n; i += 128)
        for (int k = 0; k < 4; k++) a[k] = _mm256_add_epi64(a[k], _mm256_loadu_si256((const __m256i *)(p + i + 32 * k)));
    uint64_t w[4];
    _mm256_storeu_si256((__m256i *)w, _mm256_add_epi64(_mm256_add_epi64(a[0], a[1]), _mm256_add_epi64(a[2], a[3])));
    s = w[0] + w[1] + w[2] + w[3];
#endif
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, p + i, 8);
        s += v;
    }
    return s;
}

/* Activations as Q8_0 records (with_sum: Q8_1), act.c's rules: d = amax / 127 kept as fp16, quants
 * rint(x * 127 / amax), and the sums of each half. The vectors give the same bits: the max and the
 * integer sums are exact, and each quant is one product and one rounding to nearest even. */
void FL_PASTE(fl_q8_0_row_, FL_SUFFIX)(const float *x, int64_t n, fl_q8 *out, int with_sum) {
    for (int64_t i = 0; i < n / 32; i++) {
        const float *v = x + 32 * i;
        float amax = 0.f;
        int s0 = 0, s1 = 0;
#if FL_SIMD
        __m256 xv[4], m = _mm256_setzero_ps();
        for (int k = 0; k < 4; k++) { /* max(|x|, m): a NaN is skipped, as by the scalar rule */
            xv[k] = _mm256_loadu_ps(v + 8 * k);
            m = _mm256_max_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.f), xv[k]), m);
        }
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        amax = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
        const __m256 id = _mm256_set1_ps(amax != 0.f ? 127.f / amax : 0.f);
        __m256i q[4];
        for (int k = 0; k < 4; k++) q[k] = _mm256_cvtps_epi32(_mm256_mul_ps(xv[k], id));
        const __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        _mm256_storeu_si256((__m256i *)out[i].q, _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
        int32_t t[8];
        _mm256_storeu_si256((__m256i *)t, _mm256_hadd_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
        s0 = t[0] + t[1] + t[4] + t[5];
        s1 = t[2] + t[3] + t[6] + t[7];
#else
        for (int j = 0; j < 32; j++) {
            const float ax = fabsf(v[j]);
            amax = ax > amax ? ax : amax; /* fmaxf, which is a libm call here */
        }
        const float id = amax != 0.f ? 127.f / amax : 0.f;
        for (int j = 0; j < 32; j++) {
            const int q = fl_near_int(v[j] * id);
            out[i].q[j] = (int8_t)q;
            if (j < 16) s0 += q; else s1 += q;
        }
#endif
        const float d = amax / 127.f, dh = fl_h2f(fl_f2h(d));
        out[i].d = dh;
        if (with_sum) { /* Q8_1: the offset term uses fp16(d * sum) with the f32 d */
            out[i].s0 = fl_h2f(fl_f2h(d * (float)(s0 + s1)));
            out[i].s1 = 0.f;
        } else {
            out[i].s0 = dh * (float)s0;
            out[i].s1 = dh * (float)s1;
        }
    }
}

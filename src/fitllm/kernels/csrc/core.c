/* Public entry points: size checks, activation quantization, threading and ISA dispatch.
 * Python calls these through ctypes, which releases the GIL for the duration of the call. */
#include <omp.h>
#include <math.h>
#include <stdlib.h>
#include "fitllm.h"

static int g_isa = -1;

int fl_isa_supported(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
        __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        return FL_ISA_AVX512VNNI;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        return FL_ISA_AVX2;
    return FL_ISA_PORTABLE;
}

int fl_batch_min_tokens(void) { return fl_get_isa() >= FL_ISA_AVX2 ? FL_STRIP_MIN_T : 0; }

int fl_get_isa(void) {
    if (g_isa < 0) g_isa = fl_isa_supported();
    return g_isa;
}

/* Force a lower path (tests); refuses one the CPU lacks. */
int fl_set_isa(int isa) {
    if (isa < 0 || isa > fl_isa_supported()) return FL_EBADTYPE;
    g_isa = isa;
    return FL_OK;
}

static int known(int type) { return type >= 0 && type < FL_NTYPES && FL_TYPES[type].blck > 0; }

/* bytes of a row of n elements, or 0 if the type is unknown or n is not a whole number of blocks */
size_t fl_row_bytes(int type, int64_t n) {
    if (type & FL_PACKED) return fl_packable(type & ~FL_PACKED) ? fl_row_bytes(type & ~FL_PACKED, n) : 0;
    if (!known(type) || n <= 0 || n % FL_TYPES[type].blck) return 0;
    return (size_t)(n / FL_TYPES[type].blck) * FL_TYPES[type].size;
}

int fl_dequantize(int type, const void *src, size_t src_bytes, int64_t nrows, int64_t ncols, float *dst,
                  int nthreads) {
    size_t rb = fl_row_bytes(type, ncols);
    if (!rb) return FL_EBADTYPE;
    if (nrows < 0 || src_bytes < rb * (size_t)nrows) return FL_ESIZE;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nrows * ncols > 65536)
    for (int64_t r = 0; r < nrows; r++)
        fl_dequantize_row(type, (const uint8_t *)src + r * rb, ncols, dst + r * ncols);
    return FL_OK;
}

int fl_get_rows(int type, const void *w, size_t w_bytes, int64_t nrows, int64_t ncols, const int32_t *ids,
                int64_t nids, float *dst) {
    size_t rb = fl_row_bytes(type, ncols);
    if (!rb) return FL_EBADTYPE;
    if (w_bytes < rb * (size_t)nrows) return FL_ESIZE;
    for (int64_t i = 0; i < nids; i++)
        if (ids[i] < 0 || ids[i] >= nrows) return FL_EINDEX;
    for (int64_t i = 0; i < nids; i++)
        fl_dequantize_row(type, (const uint8_t *)w + (size_t)ids[i] * rb, ncols, dst + i * ncols);
    return FL_OK;
}

/* one kernel table per ISA, indexed by FL_ISA_* */
static const fl_ops *const FL_OPS[] = {&FL_OPS_PORTABLE, &FL_OPS_AVX2, &FL_OPS_AVX512};

const fl_ops *fl_ops_get(void) { return FL_OPS[fl_get_isa()]; }

/* n bytes of buf read by nthreads threads, each its share: the machine's memory read speed
 * (`fitllm bench`'s decode ceiling); returns their sum, so that the reads are not dropped */
uint64_t fl_read_sum(const uint8_t *buf, size_t n, int nthreads) {
    uint64_t total = 0;
    uint64_t (*const f)(const uint8_t *, size_t) = fl_ops_get()->read_sum;
#pragma omp parallel num_threads(nthreads) reduction(+ : total)
    {
        const size_t per = n / (size_t)omp_get_num_threads() / 128 * 128, a = per * (size_t)omp_get_thread_num();
        total += f(buf + a, per);
    }
    return total;
}

/* Rows of activations [ith-th share of T] in the kind a weight type wants. Inside a parallel region. */
void fl_act_rows(int kind, const float *x, int64_t T, int64_t n, void *out, int ith, int nth) {
    const size_t rb = fl_act_row_bytes(kind, n);
    for (int64_t t = ith; t < T; t += nth) fl_act_row(kind, x + t * n, n, (uint8_t *)out + t * rb);
}

#define ROWS_PER_TASK 16
#define TOKENS_PER_TASK 32

static void add_bias(const float *bias, int64_t t0, int64_t nt, int64_t r0, int64_t r1, float *y, int64_t ldy) {
    if (bias)
        for (int64_t t = t0; t < t0 + nt; t++)
            for (int64_t r = r0; r < r1; r++) y[t * ldy + r] += bias[r];
}

/* fl_mm_part of a packed matrix: tasks of one strip x 128 tokens. Every token's sums are those of
 * the blocks' strips (FL_STRIP_MIN_T tokens or more), whatever the batch. */
static void mm_packed(int type, const uint8_t *w, int64_t nrows, int64_t ncols, const float *bias, const void *act,
                      int64_t T, float *y, int64_t ldy, int ith, int nth) {
    const int64_t nb32 = ncols / 32, nrt = (nrows + 15) / 16, tpt = 128, ntask = nrt * ((T + tpt - 1) / tpt);
    const int vnni = fl_get_isa() >= FL_ISA_AVX512VNNI;
    const fl_ops *const ops = vnni ? &FL_OPS_AVX512 : &FL_OPS_AVX2;
    const int32_t *sa = ops->strip_sums(act, nb32, T);
    void (*const packed)(int, const uint8_t *, int64_t, const fl_q8 *, const int32_t *, int64_t, int64_t, int64_t,
                         float *, int64_t) = ops->mm_packed;
    for (int64_t k = ntask * ith / nth, k1 = ntask * (ith + 1) / nth; k < k1; k++) {
        const int64_t r0 = (k % nrt) * 16, r1 = r0 + 16 < nrows ? r0 + 16 : nrows;
        const int64_t t0 = (k / nrt) * tpt, nt = T - t0 < tpt ? T - t0 : tpt;
        const fl_q8 *a = (const fl_q8 *)act + t0 * nb32;
        if (sa) {
            packed(type, w, nb32, a, sa + t0 * nb32, nt, r0, r1, y + t0 * ldy, ldy);
        } else { /* no memory for the sums: a token at a time, its sums on the stack */
            int32_t one[nb32];
            for (int64_t t = 0; t < nt; t++) {
                for (int64_t s = 0; s < nb32; s++) {
                    one[s] = 0;
                    for (int j = 0; j < 32; j++) one[s] += a[t * nb32 + s].q[j];
                }
                packed(type, w, nb32, a + t * nb32, one, 1, r0, r1, y + (t0 + t) * ldy, ldy);
            }
        }
        add_bias(bias, t0, nt, r0, r1, y, ldy);
    }
}

static __thread uint8_t *STRIP; /* AVX2: this thread's strip of a matrix's blocks */
static __thread size_t STRIP_CAP;

/* AVX2 prompt batches on a matrix's own blocks: each task's 16 rows repacked, then the packed
 * kernel, so that they sum as the repacked matrix (and AVX-512's strips) do. 0 when out of memory. */
static int mm_strip_avx2(int type, const uint8_t *w, size_t rb, int64_t r0, int64_t r1, int64_t ncols, const void *act,
                         const int32_t *sa, int64_t t0, int64_t nt, float *y, int64_t ldy) {
    const size_t need = fl_packed_bytes(type, 16, ncols);
    if (need > STRIP_CAP) {
        free(STRIP);
        STRIP = aligned_alloc(64, (need + 63) / 64 * 64);
        STRIP_CAP = STRIP ? need : 0;
    }
    if (!STRIP || !sa) return 0;
    fl_pack_strip(type, w + r0 * rb, rb, (int)(r1 - r0), ncols, STRIP);
    FL_OPS_AVX2.mm_packed(type, STRIP, ncols / 32, (const fl_q8 *)act + t0 * (ncols / 32), sa + t0 * (ncols / 32),
                          nt, 0, r1 - r0, y + t0 * ldy + r0, ldy);
    return 1;
}

/* This thread's share of y (T, ldy)[:, :nrows] = act . W^T (+ bias), in tasks of 16 rows x 32 tokens.
 * Inside a parallel region; the caller has checked the sizes. */
void fl_mm_part(int type, const uint8_t *w, int64_t nrows, int64_t ncols, const float *bias, const void *act,
                int64_t T, float *y, int64_t ldy, int ith, int nth) {
    if (type & FL_PACKED) {
        mm_packed(type & ~FL_PACKED, w, nrows, ncols, bias, act, T, y, ldy, ith, nth);
        return;
    }
    const int isa = fl_get_isa(), kind = fl_act_kind(type);
    const size_t rb = fl_row_bytes(type, ncols), ab = fl_act_row_bytes(kind, ncols);
    const int64_t nrt = (nrows + ROWS_PER_TASK - 1) / ROWS_PER_TASK;
    /* AVX-512 batches of FL_STRIP_MIN_T+ tokens on strips (pk: the tokens' sums), which are repacked
     * once per task: give them more tokens to share it; else the tiles (pk: packed activations) */
    const int strip = isa == FL_ISA_AVX512VNNI && T >= FL_STRIP_MIN_T && FL_STRIP_TYPE(type);
    const int strip2 = isa == FL_ISA_AVX2 && T >= FL_STRIP_MIN_T && fl_packable(type);
    const int32_t *sa2 = strip2 ? FL_OPS_AVX2.strip_sums(act, ncols / 32, T) : NULL;
    const int64_t tpt = strip || strip2 ? 128 : TOKENS_PER_TASK;
    const int64_t ntask = nrt * ((T + tpt - 1) / tpt);
    const fl_ops *const ops = FL_OPS[isa];
    const uint8_t *pk = strip ? FL_OPS_AVX512.strip_sums(act, ncols / 32, T)
                        : isa == FL_ISA_AVX512VNNI && kind >= FL_ACT_Q8_0 ? FL_OPS_AVX512.pack_act(act, ncols / 32, T)
                                                                          : NULL;
    const size_t pk_token = strip ? (size_t)(ncols / 32) * sizeof(int32_t) : (size_t)(ncols / 64) * FL_ZPACK_BYTES;
    for (int64_t k = ntask * ith / nth, k1 = ntask * (ith + 1) / nth; k < k1; k++) {
        const int64_t r0 = (k % nrt) * ROWS_PER_TASK, r1 = r0 + ROWS_PER_TASK < nrows ? r0 + ROWS_PER_TASK : nrows;
        const int64_t t0 = (k / nrt) * tpt, nt = T - t0 < tpt ? T - t0 : tpt;
        const uint8_t *a = (const uint8_t *)act + t0 * ab;
        if (strip2 && mm_strip_avx2(type, w, rb, r0, r1, ncols, act, sa2, t0, nt, y, ldy))
            ;
        else if (kind >= FL_ACT_Q8_0)
            ops->mm_q(type, w, rb, ncols / 32, (const fl_q8 *)a, pk ? pk + t0 * pk_token : NULL, nt, r0, r1,
                      y + t0 * ldy, ldy, strip && pk);
        else
            ops->mm_f(type, w, rb, ncols, (const float *)a, nt, r0, r1, y + t0 * ldy, ldy);
        add_bias(bias, t0, nt, r0, r1, y, ldy);
    }
}

/* The first bytes of this thread's share of a matrix fl_mm_part will read next, fetched while the
 * thread waits for the others: each share starts a new stream the hardware has yet to detect.
 * Small batches only, whose tasks are one per 16 rows (as fl_mm_part splits them). */
void fl_mm_prefetch(int type, const uint8_t *w, int64_t nrows, int64_t ncols, int64_t T, size_t bytes, int ith,
                    int nth) {
    const int packed = (type & FL_PACKED) != 0;
    const int64_t rows_per = packed ? 16 : ROWS_PER_TASK, nrt = (nrows + rows_per - 1) / rows_per;
    const size_t task = packed ? fl_packed_bytes(type & ~FL_PACKED, 16, ncols) : fl_row_bytes(type, ncols) * rows_per;
    if (!w || !task || T >= FL_STRIP_MIN_T) return; /* batches: each share is read many times over */
    const int64_t first = nrt * ith / nth, last = nrt * (ith + 1) / nth;
    const size_t n = (size_t)(last - first) * task < bytes ? (size_t)(last - first) * task : bytes;
    for (size_t l = 0; l < n; l += 64) __builtin_prefetch(w + (size_t)first * task + l, 0, 3);
}

/* y (T, nrows) = x (T, ncols) . W^T, W given as nrows rows of GGUF blocks. */
int fl_matmul(int type, const void *w, size_t w_bytes, int64_t nrows, int64_t ncols, const float *x, int64_t T,
              float *y, int nthreads) {
    size_t rb = fl_row_bytes(type, ncols);
    if (!rb) return FL_EBADTYPE;
    if (nrows <= 0 || T <= 0 || w_bytes < rb * (size_t)nrows) return FL_ESIZE;
    const int kind = fl_act_kind(type);
    void *a = malloc(fl_act_row_bytes(kind, ncols) * (size_t)T);
    if (!a) return FL_ENOMEM;
#pragma omp parallel num_threads(nthreads)
    {
        const int ith = omp_get_thread_num(), nth = omp_get_num_threads();
        fl_act_rows(kind, x, T, ncols, a, ith, nth);
#pragma omp barrier
        fl_mm_part(type, (const uint8_t *)w, nrows, ncols, NULL, a, T, y, nrows, ith, nth);
    }
    free(a);
    return FL_OK;
}

/* y = x / rms(x) * w per row, with ggml's rounding (sum of squares in double, the rest in float). */
void fl_rms_row(const float *x, int64_t n, const float *w, float eps, float *y) {
    double sum = 0.0;
    for (int64_t j = 0; j < n; j++) sum += (double)(x[j] * x[j]);
    const float mean = (float)(sum / (double)n), scale = 1.0f / sqrtf(mean + eps);
    for (int64_t j = 0; j < n; j++) y[j] = x[j] * scale * w[j];
}

int fl_rms_norm(const float *x, int64_t T, int64_t n, const float *w, int64_t w_n, float eps, float *y) {
    if (T < 0 || n <= 0 || w_n != n) return FL_ESIZE; /* a weight per column, never read past its end */
    for (int64_t t = 0; t < T; t++) fl_rms_row(x + t * n, n, w, eps, y + t * n);
    return FL_OK;
}

/* Activations as a matmul with this weight type prepares them (tests compare with the numpy spec). */
int fl_quantize_act(int type, const float *x, int64_t T, int64_t n, void *out) {
    if (!fl_row_bytes(type, n) || T < 0) return FL_EBADTYPE;
    fl_act_rows(fl_act_kind(type), x, T, n, out, 0, 1);
    return FL_OK;
}

/* GGUF string arrays: n strings, each a u64 length then its bytes, from buf[off]; their starts and
 * lengths. Returns the offset after the last one, or -1 if one runs past size. */
int64_t fl_gguf_strings(const uint8_t *buf, size_t size, size_t off, int64_t n, int big_endian, int64_t *starts,
                        int64_t *lens) {
    for (int64_t i = 0; i < n; i++) {
        if (off + 8 > size) return -1;
        uint64_t ln = 0;
        for (int b = 0; b < 8; b++) ln |= (uint64_t)buf[off + (big_endian ? 7 - b : b)] << (8 * b);
        if (ln > size - off - 8) return -1;
        starts[i] = (int64_t)(off + 8);
        lens[i] = (int64_t)ln;
        off += 8 + ln;
    }
    return (int64_t)off;
}

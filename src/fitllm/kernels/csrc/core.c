/* Public entry points: size checks, activation quantization, threading and ISA dispatch.
 * Python calls these through ctypes, which releases the GIL for the duration of the call. */
#include <omp.h>
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

typedef void (*mm_q_fn)(int, const uint8_t *, size_t, int64_t, const fl_q8 *, int64_t, int64_t, int64_t, float *,
                        int64_t);
typedef void (*mm_f_fn)(int, const uint8_t *, size_t, int64_t, const float *, int64_t, int64_t, int64_t, float *,
                        int64_t);
static const mm_q_fn MM_Q[] = {fl_mm_q_portable, fl_mm_q_avx2, fl_mm_q_vnni};
static const mm_f_fn MM_F[] = {fl_mm_f_portable, fl_mm_f_avx2, fl_mm_f_vnni};

#define ROWS_PER_TASK 16
#define TOKENS_PER_TASK 32

/* y (T, nrows) = x (T, ncols) . W^T, W given as nrows rows of GGUF blocks. */
int fl_matmul(int type, const void *w, size_t w_bytes, int64_t nrows, int64_t ncols, const float *x, int64_t T,
              float *y, int nthreads) {
    size_t rb = fl_row_bytes(type, ncols);
    if (!rb) return FL_EBADTYPE;
    if (nrows <= 0 || T <= 0 || w_bytes < rb * (size_t)nrows) return FL_ESIZE;
    const int isa = fl_get_isa();
    const uint8_t *wb = (const uint8_t *)w;
    const int quant = FL_TYPES[type].blck > 1;
    const int64_t nb32 = ncols / 32;
    fl_q8 *a = NULL;
    if (quant) {
        a = (fl_q8 *)malloc(sizeof(fl_q8) * (size_t)(nb32 * T));
        if (!a) return FL_ENOMEM;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (T > 4)
        for (int64_t t = 0; t < T; t++) fl_quantize_q8(x + t * ncols, ncols, a + t * nb32);
    }
    const int64_t nrt = (nrows + ROWS_PER_TASK - 1) / ROWS_PER_TASK;
    const int64_t ntt = (T + TOKENS_PER_TASK - 1) / TOKENS_PER_TASK;
#pragma omp parallel for schedule(static) collapse(2) num_threads(nthreads)
    for (int64_t it = 0; it < ntt; it++) {
        for (int64_t ir = 0; ir < nrt; ir++) {
            int64_t r0 = ir * ROWS_PER_TASK, r1 = r0 + ROWS_PER_TASK < nrows ? r0 + ROWS_PER_TASK : nrows;
            int64_t t0 = it * TOKENS_PER_TASK, nt = T - t0 < TOKENS_PER_TASK ? T - t0 : TOKENS_PER_TASK;
            if (quant)
                MM_Q[isa](type, wb, rb, nb32, a + t0 * nb32, nt, r0, r1, y + t0 * nrows, nrows);
            else
                MM_F[isa](type, wb, rb, ncols, x + t0 * ncols, nt, r0, r1, y + t0 * nrows, nrows);
        }
    }
    free(a);
    return FL_OK;
}

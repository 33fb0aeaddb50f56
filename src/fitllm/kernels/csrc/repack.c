/* Weights regrouped 16 rows at a time for the AVX-512 VNNI products (llama.cpp repacks Q4_0 and
 * Q4_K likewise at load). Per strip of 16 rows and per 32 columns, the quants come as the
 * strips' vpdpbusd operands want them: register g holds 4 quants of each of the 16 rows (bytes
 * 4r..4r+3 = elements 4g..4g+3 of row r), 4-bit ones two registers to a byte (g = 2h in the low
 * nibbles, 2h + 1 in the high), Q8_0's offset by 128; then the 16 fp16 scales (and Q4_1's 16
 * fp16 mins) of those 32 columns. A strip is [quants of every 32 columns][scales of every 32
 * columns]; rows past the matrix are zeros. The same bytes as the blocks, no more. */
#include <omp.h>
#include <stdlib.h>
#include <unistd.h>
#include "fitllm.h"

int fl_packable(int type) { return type == FL_Q4_0 || type == FL_Q4_1 || type == FL_Q8_0; }

size_t fl_packed_bytes(int type, int64_t nrows, int64_t ncols) {
    if (!fl_packable(type) || nrows <= 0 || ncols <= 0 || ncols % 32) return 0;
    return (size_t)((nrows + 15) / 16) * (size_t)(ncols / 32) * (FL_PACKED_QB(type) + FL_PACKED_SB(type));
}

/* row r (of 16) of one strip, from its blocks, four bytes at a time: a 4-bit block's byte j holds
 * elements j (low nibble) and j + 16 (high), the strip's byte 4r + k of register pair h elements
 * 8h + k (low) and 8h + 4 + k (high) */
static void pack_row(int type, const uint8_t *row, int64_t nb32, int r, uint8_t *qs, uint8_t *ss) {
    const int bsz = FL_TYPES[type].size, qb = FL_PACKED_QB(type), sb = FL_PACKED_SB(type);
    const uint32_t lo = 0x0f0f0f0fu, hi = 0xf0f0f0f0u;
    for (int64_t s = 0; s < nb32; s++) {
        const uint8_t *b = row + s * bsz;
        uint32_t w[8], o[8];
        uint8_t *q = qs + s * qb + 4 * r;
        if (type == FL_Q8_0) {
            memcpy(w, b + 2, 32);
            for (int g = 0; g < 8; g++) memcpy(q + 64 * g, &(uint32_t){w[g] ^ 0x80808080u}, 4);
        } else {
            memcpy(w, b + (type == FL_Q4_0 ? 2 : 4), 16);
            o[0] = (w[0] & lo) | (w[1] & lo) << 4;
            o[1] = (w[2] & lo) | (w[3] & lo) << 4;
            o[2] = (w[0] >> 4 & lo) | (w[1] & hi);
            o[3] = (w[2] >> 4 & lo) | (w[3] & hi);
            for (int h = 0; h < 4; h++) memcpy(q + 64 * h, &o[h], 4);
        }
        memcpy(ss + s * sb + 2 * r, b, 2); /* d */
        if (type == FL_Q4_1) memcpy(ss + s * sb + 32 + 2 * r, b + 2, 2); /* m */
    }
}

int fl_repack(int type, const void *src, size_t src_bytes, int64_t nrows, int64_t ncols, void *dst,
              size_t dst_bytes, int nthreads) {
    const size_t need = fl_packed_bytes(type, nrows, ncols), rb = fl_row_bytes(type, ncols);
    if (!need || !rb) return FL_EBADTYPE;
    if (src_bytes < rb * (size_t)nrows || dst_bytes < need) return FL_ESIZE;
    const int64_t nb32 = ncols / 32, nstrip = (nrows + 15) / 16;
    const size_t qbytes = (size_t)nb32 * FL_PACKED_QB(type), strip = need / (size_t)nstrip;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t st = 0; st < nstrip; st++) {
        uint8_t *qs = (uint8_t *)dst + st * strip, *ss = qs + qbytes;
        if (16 * st + 16 > nrows) memset(qs, 0, strip);
        for (int r = 0; r < 16 && 16 * st + r < nrows; r++)
            pack_row(type, (const uint8_t *)src + (16 * st + r) * rb, nb32, r, qs, ss);
    }
    return FL_OK;
}

/* One matrix of a file to repack: its blocks at `offset`, its strips into dst. */
typedef struct {
    int64_t type, offset, nrows, ncols;
    void *dst;
    int64_t dst_bytes;
} fl_repack_job;

/* Every job, the blocks read from fd in chunks of about 4 MiB (the file's pages are never mapped
 * into the process): one call, so that Python can run beside it (ctypes drops the GIL). */
int fl_repack_file(int fd, const fl_repack_job *jobs, int64_t njobs, int nthreads) {
    uint8_t *stage = NULL;
    size_t cap = 0;
    int rc = FL_OK;
    for (int64_t j = 0; j < njobs && rc == FL_OK; j++) {
        const fl_repack_job *jb = &jobs[j];
        const size_t rb = fl_row_bytes((int)jb->type, jb->ncols), need = fl_packed_bytes((int)jb->type, jb->nrows, jb->ncols);
        if (!rb || !need) { rc = FL_EBADTYPE; break; }
        if ((size_t)jb->dst_bytes < need || jb->offset < 0) { rc = FL_ESIZE; break; }
        const size_t strip = need / (size_t)((jb->nrows + 15) / 16);
        const int64_t rows = (int64_t)((4u << 20) / rb / 16 * 16) > 16 ? (int64_t)((4u << 20) / rb / 16 * 16) : 16;
        if (cap < rows * rb) {
            free(stage);
            cap = rows * rb;
            stage = malloc(cap);
            if (!stage) { rc = FL_ENOMEM; break; }
        }
        for (int64_t r = 0; r < jb->nrows && rc == FL_OK; r += rows) {
            const int64_t n = jb->nrows - r < rows ? jb->nrows - r : rows;
            size_t got = 0;
            while (got < n * rb) {
                const ssize_t k = pread(fd, stage + got, n * rb - got, (off_t)(jb->offset + r * rb + got));
                if (k <= 0) { rc = FL_EIO; break; }
                got += (size_t)k;
            }
            if (rc == FL_OK)
                rc = fl_repack((int)jb->type, stage, n * rb, n, jb->ncols, (uint8_t *)jb->dst + (r / 16) * strip,
                               (size_t)jb->dst_bytes - (r / 16) * strip, nthreads);
        }
    }
    free(stage);
    return rc;
}

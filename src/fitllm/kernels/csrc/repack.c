/* Weights regrouped 16 rows at a time for the AVX-512 VNNI products (llama.cpp repacks Q4_0 and
 * Q4_K likewise at load). Per strip of 16 rows and per 32 columns, the quants come as the strips'
 * vpdpbusd operands want them: register g holds 4 quants of each of the 16 rows (bytes 4r..4r+3 =
 * elements 4g..4g+3 of row r); 4-bit ones two registers to a byte (g = 2h in the low nibbles,
 * 2h + 1 in the high), Q5_0's fifth bits as one 64-bit mask per register, Q8_0's offset by 128.
 * A strip is [quants per 32 columns][scales per 32 columns][per 256-column block]: the 16 fp16
 * scales d (Q4_1: and mins m) of each 32; Q4_K's 6-bit scales and mins of each 32 as bytes, and
 * its fp16 d and dmin per block. Rows past the matrix are zeros. About the blocks' own size. */
#include <omp.h>
#include <stdlib.h>
#include <unistd.h>
#include "fitllm.h"

int fl_packable(int type) {
    return type == FL_Q4_0 || type == FL_Q4_1 || type == FL_Q5_0 || type == FL_Q8_0 || type == FL_Q4_K;
}

/* bytes of one strip of 16 rows */
static size_t strip_bytes(int type, int64_t ncols) {
    return (size_t)(ncols / 32) * (FL_PACKED_QB(type) + FL_PACKED_SB(type)) + (size_t)(ncols / 256) * FL_PACKED_BB(type);
}

size_t fl_packed_bytes(int type, int64_t nrows, int64_t ncols) {
    if (!fl_packable(type) || nrows <= 0 || !fl_row_bytes(type, ncols) || ncols % 32) return 0;
    return (size_t)((nrows + 15) / 16) * strip_bytes(type, ncols);
}

/* The 32 quants of group s of a row (unsigned; Q8_0 offset by 128), its scale (and min) bytes. */
static void group_quants(int type, const uint8_t *row, int64_t s, uint8_t *q) {
    const uint8_t *b = row + (s * 32 / FL_TYPES[type].blck) * FL_TYPES[type].size;
    switch (type) {
    case FL_Q8_0: for (int e = 0; e < 32; e++) q[e] = b[2 + e] ^ 0x80; break;
    case FL_Q4_0: case FL_Q4_1: case FL_Q5_0: {
        const uint8_t *n = b + (type == FL_Q4_1 ? 4 : type == FL_Q5_0 ? 6 : 2);
        for (int e = 0; e < 16; e++) { q[e] = n[e] & 0xf; q[e + 16] = n[e] >> 4; }
    } break;
    case FL_Q4_K: {
        const int c = (int)(s % 8);
        for (int e = 0; e < 32; e++) q[e] = (b[16 + 32 * (c / 2) + e] >> (4 * (c % 2))) & 0xf;
    } break;
    }
}

/* Strip rows [0, nr) from `rows` (row bytes rb) into qs | ss | bs */
static void pack_strip(int type, const uint8_t *rows, size_t rb, int nr, int64_t nb32, uint8_t *out) {
    const int qb = FL_PACKED_QB(type), sb = FL_PACKED_SB(type);
    uint8_t *ss = out + nb32 * qb, *bs = ss + nb32 * sb;
    for (int64_t s = 0; s < nb32; s++) {
        uint8_t *o = out + s * qb;
        uint64_t hb[8] = {0};
        for (int r = 0; r < nr; r++) {
            const uint8_t *row = rows + r * rb, *b = row + (s * 32 / FL_TYPES[type].blck) * FL_TYPES[type].size;
            uint8_t q[32];
            group_quants(type, row, s, q);
            for (int g = 0; g < 8; g++)
                for (int k = 0; k < 4; k++) {
                    if (type == FL_Q8_0) o[64 * g + 4 * r + k] = q[4 * g + k];
                    else if (g % 2 == 0) o[32 * g + 4 * r + k] = q[4 * g + k] | (uint8_t)(q[4 * g + 4 + k] << 4);
                }
            if (type == FL_Q5_0) {
                uint32_t h;
                memcpy(&h, b + 2, 4);
                for (int g = 0; g < 8; g++) hb[g] |= (uint64_t)((h >> (4 * g)) & 0xf) << (4 * r);
            }
            if (type == FL_Q4_K) {
                uint8_t sc[8], mn[8];
                fl_k4_scales(b + 4, sc, mn);
                ss[s * sb + r] = sc[s % 8];
                ss[s * sb + 16 + r] = mn[s % 8];
                if (s % 8 == 0) {
                    memcpy(bs + (s / 8) * 64 + 2 * r, b, 2);          /* d */
                    memcpy(bs + (s / 8) * 64 + 32 + 2 * r, b + 2, 2); /* dmin */
                }
            } else {
                memcpy(ss + s * sb + 2 * r, b, 2); /* d */
                if (type == FL_Q4_1) memcpy(ss + s * sb + 32 + 2 * r, b + 2, 2); /* m */
            }
        }
        if (type == FL_Q5_0) memcpy(o + 256, hb, 64);
    }
}

int fl_repack(int type, const void *src, size_t src_bytes, int64_t nrows, int64_t ncols, void *dst,
              size_t dst_bytes, int nthreads) {
    const size_t need = fl_packed_bytes(type, nrows, ncols), rb = fl_row_bytes(type, ncols);
    if (!need || !rb) return FL_EBADTYPE;
    if (src_bytes < rb * (size_t)nrows || dst_bytes < need) return FL_ESIZE;
    const int64_t nstrip = (nrows + 15) / 16;
    const size_t strip = strip_bytes(type, ncols);
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t st = 0; st < nstrip; st++) {
        uint8_t *out = (uint8_t *)dst + st * strip;
        const int nr = nrows - 16 * st < 16 ? (int)(nrows - 16 * st) : 16;
        if (nr < 16) memset(out, 0, strip);
        pack_strip(type, (const uint8_t *)src + 16 * st * rb, rb, nr, ncols / 32, out);
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
        const size_t strip = strip_bytes((int)jb->type, jb->ncols);
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

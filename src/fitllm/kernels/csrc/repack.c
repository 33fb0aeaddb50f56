/* Weights regrouped 16 rows at a time for the AVX-512 VNNI products, which AVX2 runs as two 8-row
 * halves (llama.cpp repacks Q4_0 and Q4_K likewise at load). Per strip of 16 rows and per 32
 * columns, the quants come as the strips' vpdpbusd operands want them: register g holds 4 quants
 * of each of the 16 rows (bytes 4r..4r+3 = elements 4g..4g+3 of row r); 4-bit ones two registers
 * to a byte (g = 2h in the low nibbles, 2h + 1 in the high), Q5_0's fifth bits as one 64-bit mask
 * per register, Q8_0's offset by 128.
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
    if (!fl_packable(type) || nrows <= 0 || !fl_row_bytes(type, ncols)) return 0; /* whole blocks of 32 or 256 */
    return (size_t)((nrows + 15) / 16) * strip_bytes(type, ncols);
}

/* Group s (32 columns) of a 4-bit row as 16 bytes, byte j = element j | element j + 16 << 4 (the
 * Q4_0 order), in four words */
static void group_nibbles(int type, const uint8_t *b, int64_t s, uint32_t *n) {
    const uint32_t lo = 0x0f0f0f0fu;
    if (type == FL_Q4_K) { /* chunk c of the block: low (even c) or high (odd) nibbles of 32 bytes */
        const int c = (int)(s % 8), sh = 4 * (c % 2);
        uint32_t w[8];
        memcpy(w, b + 16 + 32 * (c / 2), 32);
        for (int i = 0; i < 4; i++) n[i] = (w[i] >> sh & lo) | (w[i + 4] >> sh & lo) << 4;
    } else {
        memcpy(n, b + (type == FL_Q4_1 ? 4 : type == FL_Q5_0 ? 6 : 2), 16);
    }
}

/* Strip rows [0, nr) from `rows` (row bytes rb) into its quants | scales | per-block parts, four
 * bytes at a time: the strip's byte 4r + k of register pair h holds elements 8h + k (low nibble)
 * and 8h + 4 + k (high) of row r */
static void pack_strip(int type, const uint8_t *rows, size_t rb, int nr, int64_t nb32, uint8_t *out) {
    const int qb = FL_PACKED_QB(type), sb = FL_PACKED_SB(type);
    const uint32_t lo = 0x0f0f0f0fu, hi = 0xf0f0f0f0u;
    uint8_t *ss = out + nb32 * qb, *bs = ss + nb32 * sb;
    for (int64_t s = 0; s < nb32; s++) {
        uint8_t *o = out + s * qb, *sc = ss + s * sb;
        uint64_t hb[8] = {0};
        for (int r = 0; r < nr; r++) {
            const uint8_t *b = rows + r * rb + (s * 32 / FL_TYPES[type].blck) * FL_TYPES[type].size;
            uint32_t w[8];
            if (type == FL_Q8_0) {
                memcpy(w, b + 2, 32);
                for (int g = 0; g < 8; g++) w[g] ^= 0x80808080u;
                for (int g = 0; g < 8; g++) memcpy(o + 64 * g + 4 * r, &w[g], 4);
            } else {
                group_nibbles(type, b, s, w + 4);
                w[0] = (w[4] & lo) | (w[5] & lo) << 4;
                w[1] = (w[6] & lo) | (w[7] & lo) << 4;
                w[2] = (w[4] >> 4 & lo) | (w[5] & hi);
                w[3] = (w[6] >> 4 & lo) | (w[7] & hi);
                for (int h = 0; h < 4; h++) memcpy(o + 64 * h + 4 * r, &w[h], 4);
            }
            if (type == FL_Q5_0) {
                uint32_t h;
                memcpy(&h, b + 2, 4);
                for (int g = 0; g < 8; g++) hb[g] |= (uint64_t)((h >> (4 * g)) & 0xf) << (4 * r);
            }
            if (type == FL_Q4_K) {
                uint8_t sv[8], mv[8];
                fl_k4_scales(b + 4, sv, mv);
                sc[r] = sv[s % 8];
                sc[16 + r] = mv[s % 8];
                if (s % 8 == 0) {
                    memcpy(bs + (s / 8) * 64 + 2 * r, b, 2);          /* d */
                    memcpy(bs + (s / 8) * 64 + 32 + 2 * r, b + 2, 2); /* dmin */
                }
            } else {
                memcpy(sc + 2 * r, b, 2); /* d */
                if (type == FL_Q4_1) memcpy(sc + 32 + 2 * r, b + 2, 2); /* m */
            }
        }
        if (type == FL_Q5_0) memcpy(o + 256, hb, 64);
    }
}

/* nr (<= 16) rows of blocks as one strip in out (the rows past nr zero), for AVX2 prompt batches on
 * the file's own blocks: the bits of the repacked matrix. Returns the strip's bytes. */
size_t fl_pack_strip(int type, const uint8_t *rows, size_t rb, int nr, int64_t ncols, uint8_t *out) {
    const size_t strip = strip_bytes(type, ncols);
    if (nr < 16) memset(out, 0, strip);
    pack_strip(type, rows, rb, nr, ncols / 32, out);
    return strip;
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

/* fl_repack_job: fitllm_api.h */

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
        const int64_t fit = (int64_t)((4u << 20) / rb / 16 * 16), rows = fit > 16 ? fit : 16; /* ~4 MiB of whole strips */
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

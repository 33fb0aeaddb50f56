/* Weights regrouped 16 rows at a time for the AVX-512 VNNI products (llama.cpp repacks Q4_0 and
 * Q4_K likewise at load). Per strip of 16 rows and per 32 columns, the quants come as the
 * strips' vpdpbusd operands want them: register g holds 4 quants of each of the 16 rows (bytes
 * 4r..4r+3 = elements 4g..4g+3 of row r), 4-bit ones two registers to a byte (g = 2h in the low
 * nibbles, 2h + 1 in the high), Q8_0's offset by 128; then the 16 fp16 scales (and Q4_1's 16
 * fp16 mins) of those 32 columns. A strip is [quants of every 32 columns][scales of every 32
 * columns]; rows past the matrix are zeros. The same bytes as the blocks, no more. */
#include <omp.h>
#include <stdlib.h>
#include "fitllm.h"

int fl_packable(int type) { return type == FL_Q4_0 || type == FL_Q4_1 || type == FL_Q8_0; }

size_t fl_packed_bytes(int type, int64_t nrows, int64_t ncols) {
    if (!fl_packable(type) || nrows <= 0 || ncols <= 0 || ncols % 32) return 0;
    return (size_t)((nrows + 15) / 16) * (size_t)(ncols / 32) * (FL_PACKED_QB(type) + FL_PACKED_SB(type));
}

/* row r (of 16) of one strip, from its blocks */
static void pack_row(int type, const uint8_t *row, int64_t nb32, int r, uint8_t *qs, uint8_t *ss) {
    const int bsz = FL_TYPES[type].size, qb = FL_PACKED_QB(type), sb = FL_PACKED_SB(type);
    for (int64_t s = 0; s < nb32; s++) {
        const uint8_t *b = row + s * bsz;
        uint8_t q[32];
        if (type == FL_Q8_0) {
            for (int e = 0; e < 32; e++) q[e] = b[2 + e] ^ 0x80;
        } else {
            const uint8_t *n = b + (type == FL_Q4_0 ? 2 : 4);
            for (int e = 0; e < 16; e++) { q[e] = n[e] & 0xf; q[e + 16] = n[e] >> 4; }
        }
        uint8_t *o = qs + s * qb + 4 * r;
        for (int g = 0; g < 8; g++)
            for (int k = 0; k < 4; k++) {
                if (type == FL_Q8_0) o[64 * g + k] = q[4 * g + k];
                else if (g % 2 == 0) o[32 * g + k] = q[4 * g + k] | (uint8_t)(q[4 * g + 4 + k] << 4);
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

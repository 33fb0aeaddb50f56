/* Float blocks of 256 to Q2_K .. Q6_K: llama.cpp's reference algorithms
 * (quantize_row_q{4,5,6}_K_ref), written for one block per call; rows run on threads in
 * quantize.c. The numpy versions in quant/quantize.py state the same math vectorized. */
#include <math.h>
#include <string.h>
#include "fitllm.h"

static inline int nearest(float v) { return (int)lrintf(v); } /* round half to even */
static inline int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* (scale, -min) of n values with levels L in [0, nmax] minimising the weighted squared (mad:
 * absolute) error of scale * L + min over candidate scales (llama.cpp's make_qkx2_quants) */
static inline float loss(float d, int mad) { return mad ? fabsf(d) : d * d; }

static float qkx2(int n, int nmax, const float *x, const float *w, uint8_t *L, float *the_min, float rmin,
                  float rdelta, int nstep, int mad) {
    float mn = x[0], mx = x[0], sum_w = w[0], sum_x = w[0] * x[0];
    for (int i = 1; i < n; i++) {
        mn = x[i] < mn ? x[i] : mn;
        mx = x[i] > mx ? x[i] : mx;
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (mn > 0) mn = 0;
    if (mx == mn) {
        memset(L, 0, (size_t)n);
        *the_min = -mn;
        return 0.f;
    }
    float iscale = nmax / (mx - mn), scale = 1 / iscale, best = 0;
    for (int i = 0; i < n; i++) {
        L[i] = (uint8_t)clampi(nearest(iscale * (x[i] - mn)), 0, nmax);
        best += w[i] * loss(scale * L[i] + mn - x[i], mad);
    }
    uint8_t aux[32];
    for (int is = 0; is <= nstep; is++) {
        iscale = (rmin + rdelta * is + nmax) / (mx - mn);
        float sl = 0, sl2 = 0, sxl = 0;
        for (int i = 0; i < n; i++) {
            const int l = clampi(nearest(iscale * (x[i] - mn)), 0, nmax);
            aux[i] = (uint8_t)l;
            sl += w[i] * l;
            sl2 += w[i] * l * l;
            sxl += w[i] * l * x[i];
        }
        const float D = sum_w * sl2 - sl * sl;
        if (D <= 0) continue;
        float ts = (sum_w * sxl - sum_x * sl) / D, tm = (sl2 * sum_x - sl * sxl) / D;
        if (tm > 0) {
            tm = 0;
            ts = sxl / sl2;
        }
        float err = 0;
        for (int i = 0; i < n; i++) err += w[i] * loss(ts * aux[i] + tm - x[i], mad);
        if (err < best) {
            memcpy(L, aux, (size_t)n);
            best = err;
            scale = ts;
            mn = tm;
        }
    }
    *the_min = -mn;
    return scale;
}

/* Q4_K / Q5_K's common part: 8 (scale, min) pairs of 32 values as 6-bit numbers of d and dmin,
 * then every value's level in [0, nmax] */
static void k_levels(const float *x, int nmax, float rmin, int nstep, uint8_t *out, uint8_t *L) {
    float scales[8], mins[8], w[32], max_sc = 0, max_mn = 0;
    for (int j = 0; j < 8; j++) {
        float sx2 = 0;
        for (int l = 0; l < 32; l++) sx2 += x[32 * j + l] * x[32 * j + l];
        const float av = sqrtf(sx2 / 32);
        for (int l = 0; l < 32; l++) w[l] = av + fabsf(x[32 * j + l]);
        scales[j] = qkx2(32, nmax, x + 32 * j, w, L + 32 * j, &mins[j], rmin, 0.1f, nstep, 0);
        max_sc = scales[j] > max_sc ? scales[j] : max_sc;
        max_mn = mins[j] > max_mn ? mins[j] : max_mn;
    }
    const float inv_sc = max_sc > 0 ? 63.f / max_sc : 0.f, inv_mn = max_mn > 0 ? 63.f / max_mn : 0.f;
    uint8_t *sc = out + 4;
    for (int j = 0; j < 8; j++) {
        const uint8_t ls = (uint8_t)clampi(nearest(inv_sc * scales[j]), 0, 63);
        const uint8_t lm = (uint8_t)clampi(nearest(inv_mn * mins[j]), 0, 63);
        if (j < 4) {
            sc[j] = ls;
            sc[j + 4] = lm;
        } else {
            sc[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
            sc[j - 4] |= (uint8_t)((ls >> 4) << 6);
            sc[j] |= (uint8_t)((lm >> 4) << 6);
        }
    }
    const uint16_t hd = fl_f2h(max_sc / 63.f), hm = fl_f2h(max_mn / 63.f);
    memcpy(out, &hd, 2);
    memcpy(out + 2, &hm, 2);
    uint8_t s6[8], m6[8];
    fl_k4_scales(sc, s6, m6);
    for (int j = 0; j < 8; j++) {
        const float d = fl_h2f(hd) * s6[j];
        if (d == 0.f) continue;
        const float dm = fl_h2f(hm) * m6[j];
        for (int i = 0; i < 32; i++) L[32 * j + i] = (uint8_t)clampi(nearest((x[32 * j + i] + dm) / d), 0, nmax);
    }
}

void fl_quantize_q4_k(const float *x, uint8_t *y) { /* d, dmin, scales[12], qs[128] */
    uint8_t L[256];
    k_levels(x, 15, -1.f, 20, y, L);
    for (int j = 0; j < 256; j += 64)
        for (int l = 0; l < 32; l++) y[16 + j / 2 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
}

void fl_quantize_q5_k(const float *x, uint8_t *y) { /* d, dmin, scales[12], qh[32], qs[128] */
    uint8_t L[256], *qh = y + 16, *qs = y + 48;
    k_levels(x, 31, -0.5f, 15, y, L);
    memset(qh, 0, 32);
    for (int n = 0, b = 0; n < 256; n += 64, b += 2)
        for (int j = 0; j < 32; j++) {
            int l1 = L[n + j], l2 = L[n + j + 32];
            if (l1 > 15) { l1 -= 16; qh[j] |= (uint8_t)(1 << b); }
            if (l2 > 15) { l2 -= 16; qh[j] |= (uint8_t)(2 << b); }
            qs[n / 2 + j] = (uint8_t)(l1 | (l2 << 4));
        }
}

/* scale of 16 values with levels in [-nmax, nmax) (stored + nmax), x^2-weighted least squares over
 * 19 candidate scales (llama.cpp's make_qx_quants, rmse_type 1) */
static float qx16(const float *x, int nmax, int8_t *L) {
    const float mx = fl_signed_max(x, 16);
    if (fabsf(mx) < 1e-15f) {
        memset(L, 0, 16);
        return 0.f;
    }
    float iscale = -nmax / mx, slx = 0, sl2 = 0;
    for (int i = 0; i < 16; i++) {
        const int l = clampi(nearest(iscale * x[i]), -nmax, nmax - 1);
        L[i] = (int8_t)(l + nmax);
        const float w = x[i] * x[i];
        slx += w * x[i] * l;
        sl2 += w * l * l;
    }
    float scale = sl2 ? slx / sl2 : 0.f, best = scale * slx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / mx;
        float sx = 0, s2 = 0;
        for (int i = 0; i < 16; i++) {
            const int l = clampi(nearest(iscale * x[i]), -nmax, nmax - 1);
            const float w = x[i] * x[i];
            sx += w * x[i] * l;
            s2 += w * l * l;
        }
        if (s2 > 0 && sx * sx > best * s2) {
            for (int i = 0; i < 16; i++) L[i] = (int8_t)(nmax + clampi(nearest(iscale * x[i]), -nmax, nmax - 1));
            scale = sx / s2;
            best = scale * sx;
        }
    }
    return scale;
}

/* the 16 scales of a block's 16-value groups fitted by fit; returns the one of largest magnitude */
static float scales16(const float *x, float (*fit)(const float *, int, int8_t *), int nmax, int8_t *L,
                      float *scales) {
    float max_scale = 0, max_abs = 0;
    for (int j = 0; j < 16; j++) {
        scales[j] = fit(x + 16 * j, nmax, L + 16 * j);
        if (fabsf(scales[j]) > max_abs) { max_abs = fabsf(scales[j]); max_scale = scales[j]; }
    }
    return max_scale;
}

void fl_quantize_q6_k(const float *x, uint8_t *y) { /* ql[128], qh[64], scales[16], d */
    int8_t L[256];
    float scales[16];
    const float max_scale = scales16(x, qx16, 32, L, scales);
    memset(y, 0, 210);
    if (fabsf(max_scale) < 1e-15f) return;
    const float iscale = -128.f / max_scale;
    const uint16_t hd = fl_f2h(1 / iscale);
    memcpy(y + 208, &hd, 2);
    int8_t *sc = (int8_t *)(y + 192);
    for (int ib = 0; ib < 16; ib++) {
        const int v = nearest(iscale * scales[ib]);
        sc[ib] = (int8_t)(v > 127 ? 127 : v);
    }
    for (int j = 0; j < 16; j++) {
        const float d = fl_h2f(hd) * sc[j];
        if (d == 0.f) continue;
        for (int i = 0; i < 16; i++) L[16 * j + i] = (int8_t)(clampi(nearest(x[16 * j + i] / d), -32, 31) + 32);
    }
    uint8_t *ql = y, *qh = y + 128;
    for (int j = 0; j < 256; j += 128, ql += 64, qh += 32)
        for (int l = 0; l < 32; l++) {
            const uint8_t a = (uint8_t)L[j + l], b = (uint8_t)L[j + l + 32], c = (uint8_t)L[j + l + 64],
                          e = (uint8_t)L[j + l + 96];
            ql[l] = (uint8_t)((a & 0xF) | ((c & 0xF) << 4));
            ql[l + 32] = (uint8_t)((b & 0xF) | ((e & 0xF) << 4));
            qh[l] = (uint8_t)((a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6));
        }
}

/* the four 2-bit values of 32-value rows j, j+32, j+64, j+96 in one byte, per 128 values */
static void pack_2bit(const uint8_t *L, uint8_t *qs) {
    for (int j = 0; j < 256; j += 128)
        for (int l = 0; l < 32; l++)
            qs[j / 4 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
}

void fl_quantize_q2_k(const float *x, uint8_t *y) { /* scales[16], qs[64], d, dmin */
    uint8_t L[256], *sc = y;
    float scales[16], mins[16], w[16], max_sc = 0, max_mn = 0;
    for (int j = 0; j < 16; j++) {
        for (int l = 0; l < 16; l++) w[l] = fabsf(x[16 * j + l]);
        scales[j] = qkx2(16, 3, x + 16 * j, w, L + 16 * j, &mins[j], -0.5f, 0.1f, 15, 1);
        max_sc = scales[j] > max_sc ? scales[j] : max_sc;
        max_mn = mins[j] > max_mn ? mins[j] : max_mn;
    }
    uint16_t hd = 0, hm = 0;
    memset(sc, 0, 16);
    if (max_sc > 0) {
        for (int j = 0; j < 16; j++) sc[j] = (uint8_t)nearest(15.f / max_sc * scales[j]);
        hd = fl_f2h(max_sc / 15.f);
    }
    if (max_mn > 0) {
        for (int j = 0; j < 16; j++) sc[j] |= (uint8_t)(nearest(15.f / max_mn * mins[j]) << 4);
        hm = fl_f2h(max_mn / 15.f);
    }
    memcpy(y + 80, &hd, 2);
    memcpy(y + 82, &hm, 2);
    for (int j = 0; j < 16; j++) {
        const float d = fl_h2f(hd) * (sc[j] & 0xF);
        if (d == 0.f) continue;
        const float dm = fl_h2f(hm) * (sc[j] >> 4);
        for (int i = 0; i < 16; i++) L[16 * j + i] = (uint8_t)clampi(nearest((x[16 * j + i] + dm) / d), 0, 3);
    }
    pack_2bit(L, y + 16);
}

/* scale of 16 values with levels in [-nmax, nmax) (stored + nmax): x^2-weighted least squares, then
 * five rounds of moving single values where that lowers the error (llama.cpp's make_q3_quants) */
static float q3_16(const float *x, int nmax, int8_t *L) {
    const float mx = fl_signed_max(x, 16);
    if (fabsf(mx) < 1e-15f) {
        memset(L, 0, 16);
        return 0.f;
    }
    const float iscale = -nmax / mx;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < 16; i++) {
        L[i] = (int8_t)clampi(nearest(iscale * x[i]), -nmax, nmax - 1);
        const float w = x[i] * x[i];
        sumlx += w * x[i] * L[i];
        suml2 += w * L[i] * L[i];
    }
    for (int itry = 0; itry < 5; itry++) {
        int changed = 0;
        for (int i = 0; i < 16; i++) {
            const float w = x[i] * x[i];
            float slx = sumlx - w * x[i] * L[i];
            if (slx <= 0) continue;
            float sl2 = suml2 - w * L[i] * L[i];
            const int nl = clampi(nearest(x[i] * sl2 / slx), -nmax, nmax - 1);
            if (nl == L[i]) continue;
            slx += w * x[i] * nl;
            sl2 += w * nl * nl;
            if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
                L[i] = (int8_t)nl;
                sumlx = slx;
                suml2 = sl2;
                changed++;
            }
        }
        if (!changed) break;
    }
    for (int i = 0; i < 16; i++) L[i] = (int8_t)(L[i] + nmax);
    return sumlx / suml2;
}

void fl_quantize_q3_k(const float *x, uint8_t *y) { /* hmask[32], qs[64], scales[12], d */
    int8_t L[256];
    float scales[16];
    const float max_scale = scales16(x, q3_16, 4, L, scales);
    memset(y, 0, 110);
    uint8_t *hmask = y, *qs = y + 32, *sc = y + 96;
    uint16_t hd = 0;
    if (max_scale != 0.f) {
        const float iscale = -32.f / max_scale;
        for (int j = 0; j < 16; j++) {
            const int l = clampi(nearest(iscale * scales[j]), -32, 31) + 32;
            if (j < 8) sc[j] = (uint8_t)(l & 0xF);
            else sc[j - 8] |= (uint8_t)((l & 0xF) << 4);
            sc[j % 4 + 8] |= (uint8_t)((l >> 4) << (2 * (j / 4)));
        }
        hd = fl_f2h(1 / iscale);
    }
    memcpy(y + 108, &hd, 2);
    for (int j = 0; j < 16; j++) {
        const int s6 = ((j < 8 ? sc[j] & 0xF : sc[j - 8] >> 4) | (((sc[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
        const float d = fl_h2f(hd) * s6;
        if (d == 0.f) continue;
        for (int i = 0; i < 16; i++) L[16 * j + i] = (int8_t)(clampi(nearest(x[16 * j + i] / d), -4, 3) + 4);
    }
    uint8_t u[256];
    for (int j = 0; j < 256; j++) {
        u[j] = (uint8_t)L[j];
        if (u[j] > 3) {
            hmask[j % 32] |= (uint8_t)(1 << (j / 32));
            u[j] -= 4;
        }
    }
    pack_2bit(u, qs);
}

/* One transformer block per call: the decode and prompt hot path.
 *
 * One OpenMP team runs every step of the block, with a barrier between steps, so Python pays one
 * call per layer, not one per operation. The rounding points are llama.cpp's (CPU backend,
 * flash attention off): activations quantized per weight type (act.c), the KV cache in fp16, q
 * rounded to fp16 for q.k, softmax in f32, probabilities rounded to fp16 for p.v, RoPE angles by
 * repeated float multiplication, GELU from a table of fp16 values. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include "fitllm.h"

/* fl_mat, fl_vec, fl_layer and FL_STAGE_*: fitllm_api.h */

static uint16_t GELU_F16[65536];

/* ggml's GELU table: gelu of every fp16 value, rounded to fp16 */
__attribute__((constructor)) static void gelu_table(void) {
    for (int i = 0; i < 65536; i++) {
        const float x = fl_h2f((uint16_t)i);
        const float g = 0.5f * x * (1.0f + tanhf(0.79788456080286535587989211986876f * x * (1.0f + 0.044715f * x * x)));
        GELU_F16[i] = fl_f2h(g);
    }
}

static inline float gelu(float x) {
    if (x <= -10.0f) return 0.0f;
    if (x >= 10.0f) return x;
    return fl_h2f(GELU_F16[fl_f2h(x)]);
}

static int mat_ok(const fl_mat *m, int64_t nrows, int64_t ncols) {
    size_t rb = fl_row_bytes((int)m->type, ncols);
    return m->data && rb && m->nrows == nrows && m->ncols == ncols && m->nbytes >= 0 &&
           (size_t)m->nbytes >= rb * (size_t)nrows && (!m->bias || m->bias_n == nrows);
}

/* a norm of width n: given with exactly n weights (required), or absent */
static int vec_ok(const fl_vec *v, int64_t n, int required) { return v->data ? v->n == n : !required; }

static int64_t maxi(int64_t a, int64_t b) { return a > b ? a : b; }
#define ALIGN64(n) (((n) + 63) & ~(size_t)63)

typedef struct {
    float *h, *q, *k, *v, *att, *tmp, *gate, *up, *rope, *scr;
    float *ex, *ey, *logits, *wts; /* MoE: an expert's tokens in and out, router logits, gates */
    int32_t *sel, *cnt;            /* MoE: token ids per expert (n_expert x T), their count */
    const void **ptrs;             /* MoE with fetch: the experts' weights; ptrs[3 * n_expert] = status */
    uint8_t *act[3];
    size_t scr_floats;
} work_t;

/* Carve the work buffer; returns the bytes needed (and fills w when buf is given). */
static size_t work_layout(const fl_layer *L, int64_t T, int64_t n_ctx, int nthreads, uint8_t *buf, work_t *w) {
    const int64_t nq = L->n_head * L->head_dim, nkv = L->n_head_kv * L->head_dim, E = L->n_embd;
    const int64_t widest = maxi(maxi(E, nq), L->n_ff), ne = L->n_expert, moe = ne > 0;
    const size_t scr = (size_t)(2 * n_ctx + 2 * L->head_dim + 16);
    enum { NSLOT = 20 };
    size_t sizes[NSLOT] = {T * E, T * nq, T * nkv, T * nkv, T * nq, T * E, T * L->n_ff, T * L->n_ff, T * L->n_rot,
                           scr * nthreads, moe * T * E, moe * T * E, T * ne, T * ne, T * ne, ne, 2 * (3 * ne + 1),
                           T * widest, T * widest, T * widest};
    float **slots[NSLOT - 3] = {&w->h,   &w->q,   &w->k,      &w->v,   &w->att,           &w->tmp,
                                &w->gate, &w->up, &w->rope,   &w->scr, &w->ex,            &w->ey,
                                &w->logits, &w->wts, (float **)&w->sel, (float **)&w->cnt, (float **)&w->ptrs};
    size_t off = 0;
    for (int i = 0; i < NSLOT; i++) {
        if (buf) {
            if (i < NSLOT - 3) *slots[i] = (float *)(buf + off);
            else w->act[i - (NSLOT - 3)] = buf + off;
        }
        off += ALIGN64(sizes[i] * sizeof(float));
    }
    if (buf) w->scr_floats = scr;
    return off;
}

size_t fl_layer_work_bytes(const fl_layer *L, int64_t T, int64_t n_ctx, int nthreads) {
    work_t w;
    return work_layout(L, T, n_ctx, nthreads, NULL, &w);
}

static int layer_check(const fl_layer *L, int64_t T, int64_t pos0, int64_t n_ctx) {
    const int64_t E = L->n_embd, hd = L->head_dim, nq = L->n_head * hd, nkv = L->n_head_kv * hd;
    if (T <= 0 || pos0 < 0 || pos0 + T > n_ctx) return FL_ESIZE;
    if (L->n_head <= 0 || L->n_head_kv <= 0 || hd <= 0 || hd % 2 || L->head0 < 0 || L->n_group < 0) return FL_ESIZE;
    if (L->n_group ? (L->head0 + L->n_head - 1) / L->n_group - L->head0 / L->n_group + 1 != L->n_head_kv
                   : L->n_head % L->n_head_kv)
        return FL_ESIZE;
    if (L->n_rot < 0 || L->n_rot > hd || L->n_rot % 2) return FL_ESIZE;
    /* the norms' widths: a shorter weight vector would be read past its end (E <= 0 fails them) */
    if (E <= 0 || L->n_ff <= 0 || !vec_ok(&L->attn_norm, E, 1) || !vec_ok(&L->ffn_norm, E, 1) ||
        !vec_ok(&L->post_attn_norm, E, 0) || !vec_ok(&L->post_ffn_norm, E, 0) || !vec_ok(&L->q_norm, hd, 0) ||
        !vec_ok(&L->k_norm, hd, 0) || !vec_ok(&L->rope_freqs, L->n_rot / 2, 0))
        return FL_ESIZE;
    if (!mat_ok(&L->q, nq, E) || !mat_ok(&L->k, nkv, E) || !mat_ok(&L->v, nkv, E) || !mat_ok(&L->o, E, nq))
        return FL_ESIZE;
    const int64_t ne = L->n_expert ? L->n_expert : 1;
    if (L->n_expert < 0 || (L->n_expert && (L->n_expert_used < 1 || L->n_expert_used > L->n_expert)))
        return FL_ESIZE;
    if (L->n_expert && !mat_ok(&L->gate_inp, L->n_expert, E)) return FL_ESIZE;
    if (!mat_ok(&L->gate, ne * L->n_ff, E) || !mat_ok(&L->up, ne * L->n_ff, E) || !mat_ok(&L->down, ne * E, L->n_ff))
        return FL_ESIZE;
    return FL_OK;
}

static void mm(const fl_mat *m, const void *act, int64_t T, float *y, int ith, int nth) {
    fl_mm_part((int)m->type, (const uint8_t *)m->data, m->nrows, m->ncols, m->bias, act, T, y, m->nrows, ith, nth);
}

#define PREFETCH_BYTES 2048
/* before a barrier: the start of this thread's share of the matrix it multiplies next */
static void mm_next(const fl_mat *m, int64_t T, int ith, int nth) {
    fl_mm_prefetch((int)m->type, (const uint8_t *)m->data, m->nrows, m->ncols, T, PREFETCH_BYTES, ith, nth);
}

/* Activations of x (T, n) for every matrix in mats, one buffer per distinct kind; acts[i] for mats[i]. */
static void prepare(const fl_mat *const *mats, int nm, const float *x, int64_t T, int64_t n, work_t *w,
                    const void **acts, int ith, int nth) {
    int kinds[3];
    for (int i = 0; i < nm; i++) {
        kinds[i] = fl_act_kind((int)mats[i]->type);
        int j = 0;
        while (kinds[j] != kinds[i]) j++;
        acts[i] = w->act[j];
        if (j == i) fl_act_rows(kinds[i], x, T, n, w->act[j], ith, nth);
    }
}

/* cos, sin of pos * base^(-2i/n_rot), the angle grown by repeated float multiplication, divided by
 * the frequency factors and scaled as ggml's rope_cache_init and rope_yarn do */
static void rope_row(const fl_layer *L, float *cs, int64_t pos) {
    const int64_t n_rot = L->n_rot;
    const float theta_scale = powf((float)L->rope_base, -2.0f / (float)n_rot);
    const float freq_scale = (float)L->rope_freq_scale, ext = (float)L->rope_ext_factor;
    const float lo = (float)L->rope_corr_lo, hi = (float)L->rope_corr_hi;
    float theta = (float)pos;
    for (int64_t i = 0; i < n_rot / 2; i++) {
        const float extrap = theta / (L->rope_freqs.data ? L->rope_freqs.data[i] : 1.0f);
        const float interp = freq_scale * extrap;
        float th = interp, mscale = (float)L->rope_attn_factor;
        if (ext != 0.0f) {
            const float y = ((float)i - lo) / fmaxf(0.001f, hi - lo), mix = (1 - fminf(1, fmaxf(0, y))) * ext;
            th = interp * (1 - mix) + extrap * mix;
            mscale *= 1.0f + 0.1f * logf(1.0f / freq_scale);
        }
        cs[2 * i] = cosf(th) * mscale;
        cs[2 * i + 1] = sinf(th) * mscale;
        theta *= theta_scale;
    }
}

static void rope_apply(float *x, const float *cs, int64_t n_rot, int neox) {
    const int64_t half = n_rot / 2;
    for (int64_t i = 0; i < half; i++) {
        float *a = neox ? x + i : x + 2 * i, *b = neox ? x + i + half : x + 2 * i + 1;
        const float x0 = *a, x1 = *b, c = cs[2 * i], s = cs[2 * i + 1];
        *a = x0 * c - x1 * s;
        *b = x0 * s + x1 * c;
    }
}

/* Per (token, head): q/k norm, RoPE, q scale; keys and values into the fp16 cache at their position. */
static void qk_step(const fl_layer *L, work_t *w, int64_t T, int64_t pos0, uint16_t *kc, uint16_t *vc, int ith,
                    int nth) {
    const int64_t hd = L->head_dim, H = L->n_head, Hkv = L->n_head_kv, ntask = T * (H + Hkv);
    for (int64_t k = ith; k < ntask; k += nth) {
        const int64_t t = k / (H + Hkv), h = k % (H + Hkv);
        const float *cs = w->rope + t * L->n_rot;
        if (h < H) {
            float *q = w->q + (t * H + h) * hd;
            if (L->q_norm.data) fl_rms_row(q, hd, L->q_norm.data, (float)L->eps, q);
            rope_apply(q, cs, L->n_rot, (int)L->rope_neox);
            if (L->q_scale != 1.0)
                for (int64_t d = 0; d < hd; d++) q[d] *= (float)L->q_scale;
        } else {
            const int64_t g = h - H, at = ((pos0 + t) * Hkv + g) * hd;
            float *kk = w->k + (t * Hkv + g) * hd;
            const float *vv = w->v + (t * Hkv + g) * hd;
            if (L->k_norm.data) fl_rms_row(kk, hd, L->k_norm.data, (float)L->eps, kk);
            rope_apply(kk, cs, L->n_rot, (int)L->rope_neox);
            for (int64_t d = 0; d < hd; d++) {
                kc[at + d] = fl_f2h(kk[d]);
                vc[at + d] = fl_f2h(vv[d]);
            }
        }
    }
}

/* Causal (optionally windowed) attention for each (token, head) over the cache. */
static void attn_step(const fl_layer *L, work_t *w, int64_t T, int64_t pos0, const uint16_t *kc,
                      const uint16_t *vc, int ith, int nth) {
    const int64_t hd = L->head_dim, H = L->n_head, Hkv = L->n_head_kv, h0 = L->head0;
    const int64_t grp = L->n_group ? L->n_group : H / Hkv;
    float *s = w->scr + ith * w->scr_floats, *acc = s + 2 * (pos0 + T) + 8;
    const float scale = (float)L->kq_scale, cap = (float)L->attn_softcap, capscale = cap > 0.f ? scale / cap : 0.f;
    const fl_ops *const ops = fl_ops_get();
    void (*const scores)(const float *, const uint16_t *, int64_t, int64_t, int64_t, float *) = ops->scores_f16;
    void (*const softmax)(float *, int64_t, float, float, float) = ops->softmax;
    void (*const pv)(const float *, const uint16_t *, int64_t, int64_t, int64_t, float *) = ops->pv_f16;
    const int64_t stride = Hkv * hd;
    for (int64_t k = ith; k < T * H; k += nth) {
        const int64_t t = k / H, h = k % H, g = (h0 + h) / grp - h0 / grp, pos = pos0 + t;
        const int64_t lo = L->window > 0 && pos - L->window + 1 > 0 ? pos - L->window + 1 : 0, n = pos + 1 - lo;
        scores(w->q + (t * H + h) * hd, kc + (lo * Hkv + g) * hd, stride, n, hd, s);
        softmax(s, n, scale, cap, capscale);
        pv(s, vc + (lo * Hkv + g) * hd, stride, n, hd, acc);
        memcpy(w->att + (t * H + h) * hd, acc, (size_t)hd * sizeof(float));
    }
}

/* x += post_norm(y), then h = next_norm(x), for this thread's tokens */
static void residual(const fl_layer *L, float *x, const float *y, float *tmp, const float *post,
                     const float *next_norm, float *h, int64_t T, int ith, int nth) {
    const int64_t E = L->n_embd;
    for (int64_t t = ith; t < T; t += nth) {
        float *yt = tmp + t * E;
        if (post) fl_rms_row(y + t * E, E, post, (float)L->eps, yt);
        else if (yt != y + t * E) memcpy(yt, y + t * E, (size_t)E * sizeof(float));
        for (int64_t j = 0; j < E; j++) x[t * E + j] = yt[j] + x[t * E + j];
        if (next_norm) fl_rms_row(x + t * E, E, next_norm, (float)L->eps, h + t * E);
    }
}

/* y NULL: x += the block's output; else y = the output projection, before any norm or residual (a
 * tensor-parallel shard's part of the sum) */
static void attention_block(const fl_layer *L, work_t *w, float *x, int64_t T, int64_t pos0, uint16_t *kc,
                            uint16_t *vc, float *y, int ith, int nth) {
    const void *acts[3];
    for (int64_t t = ith; t < T; t += nth) {
        rope_row(L, w->rope + t * L->n_rot, pos0 + t);
        fl_rms_row(x + t * L->n_embd, L->n_embd, L->attn_norm.data, (float)L->eps, w->h + t * L->n_embd);
    }
#pragma omp barrier
    const fl_mat *qkv[3] = {&L->q, &L->k, &L->v};
    prepare(qkv, 3, w->h, T, L->n_embd, w, acts, ith, nth);
#pragma omp barrier
    mm(&L->q, acts[0], T, w->q, ith, nth);
    mm(&L->k, acts[1], T, w->k, ith, nth);
    mm(&L->v, acts[2], T, w->v, ith, nth);
    mm_next(&L->o, T, ith, nth);
#pragma omp barrier
    qk_step(L, w, T, pos0, kc, vc, ith, nth);
#pragma omp barrier
    attn_step(L, w, T, pos0, kc, vc, ith, nth);
#pragma omp barrier
    const fl_mat *o[1] = {&L->o};
    prepare(o, 1, w->att, T, L->n_head * L->head_dim, w, acts, ith, nth);
#pragma omp barrier
    mm(&L->o, acts[0], T, y ? y : w->tmp, ith, nth);
    if (!L->n_expert) {
        mm_next(&L->gate, T, ith, nth);
        mm_next(&L->up, T, ith, nth);
    }
    if (y) return;
#pragma omp barrier
    residual(L, x, w->tmp, w->tmp, L->post_attn_norm.data, L->ffn_norm.data, w->h, T, ith, nth);
}

/* y (T, n_embd) = down(act(gate(h)) * up(h)) for the matrices given (one expert's, or the dense ones) */
static void ffn(const fl_layer *L, const fl_mat *gate, const fl_mat *up, const fl_mat *down, work_t *w,
                const float *h, int64_t T, float *y, int ith, int nth) {
    const void *acts[3];
    const fl_mat *gu[2] = {gate, up};
    prepare(gu, 2, h, T, L->n_embd, w, acts, ith, nth);
#pragma omp barrier
    mm(gate, acts[0], T, w->gate, ith, nth);
    mm(up, acts[1], T, w->up, ith, nth);
    mm_next(down, T, ith, nth);
#pragma omp barrier
    const int64_t n = T * L->n_ff, per = (n + nth - 1) / nth, a = ith * per, b = a + per < n ? a + per : n;
    if (L->act_gelu)
        for (int64_t j = a; j < b; j++) w->gate[j] = gelu(w->gate[j]) * w->up[j];
    else if (b > a)
        fl_ops_get()->swiglu(w->gate + a, w->up + a, b - a);
#pragma omp barrier
    const fl_mat *dn[1] = {down};
    prepare(dn, 1, w->gate, T, L->n_ff, w, acts, ith, nth);
#pragma omp barrier
    mm(down, acts[0], T, y, ith, nth);
#pragma omp barrier
}

/* Rows [e * n, (e + 1) * n) of a stacked expert matrix, or where fetch put them (at, non-NULL) */
static fl_mat expert_rows(const fl_mat *m, int64_t e, int64_t n, const void *at) {
    fl_mat r = *m;
    const size_t rb = fl_row_bytes((int)m->type, m->ncols);
    r.data = at ? at : (const uint8_t *)m->data + (size_t)e * n * rb;
    r.nrows = n;
    r.nbytes = (int64_t)(n * rb);
    r.bias = NULL;
    return r;
}

/* Per token: softmax over the router logits (sum in double, as ggml), the top n_expert_used
 * experts, their gates (renormalised to sum 1 when expert_norm_w); then the token lists per expert. */
static void route(const fl_layer *L, work_t *w, int64_t T) {
    const int64_t ne = L->n_expert, k = L->n_expert_used;
    for (int64_t e = 0; e < ne; e++) w->cnt[e] = 0;
    for (int64_t t = 0; t < T; t++) {
        float *p = w->logits + t * ne, mx = -INFINITY;
        for (int64_t e = 0; e < ne; e++) mx = p[e] > mx ? p[e] : mx;
        double sum = 0.0;
        for (int64_t e = 0; e < ne; e++) sum += (double)(p[e] = expf(p[e] - mx));
        const float inv = (float)(1.0 / sum);
        for (int64_t e = 0; e < ne; e++) p[e] *= inv;
        float *g = w->wts + t * ne, gsum = 0.f;
        for (int64_t e = 0; e < ne; e++) g[e] = 0.f;
        for (int64_t j = 0; j < k; j++) { /* j-th largest; ties (and NaNs) to the lower index */
            int64_t best = -1;
            for (int64_t e = 0; e < ne; e++)
                if (p[e] != -2.f && (best < 0 || p[e] > p[best])) best = e;
            g[best] = p[best];
            gsum += p[best];
            p[best] = -2.f; /* taken: each expert at most once per token, so its list holds <= T */
            w->sel[best * T + w->cnt[best]++] = (int32_t)t;
        }
        if (L->expert_norm_w) {
            gsum = gsum > 6.103515625e-5f ? gsum : 6.103515625e-5f;
            for (int64_t e = 0; e < ne; e++) g[e] /= gsum;
        }
    }
}

/* Mixture of experts: each expert runs once on the tokens routed to it (its weights are read once
 * per batch); y = sum of gate * expert output per token. */
static void moe(const fl_layer *L, work_t *w, const float *h, int64_t T, float *y, int ith, int nth) {
    const int64_t E = L->n_embd, ne = L->n_expert;
    const void *acts[1];
    const fl_mat *r[1] = {&L->gate_inp};
    prepare(r, 1, h, T, E, w, acts, ith, nth);
#pragma omp barrier
    mm(&L->gate_inp, acts[0], T, w->logits, ith, nth);
#pragma omp barrier
    if (ith == 0) route(L, w, T);
    for (int64_t j = ith * E; j < T * E; j += nth * E) memset(y + j, 0, (size_t)E * sizeof(float));
    if (L->fetch && ith == 0) /* one thread waits for the weights; the others at the barrier */
        w->ptrs[3 * ne] = L->fetch(L->fetch_ctx, L->layer_id, -1, w->cnt, h, T, w->ptrs) ? (void *)1 : NULL;
#pragma omp barrier
    if (L->fetch && w->ptrs[3 * ne]) return;
    for (int64_t e = 0; e < ne; e++) {
        const int64_t n = w->cnt[e];
        if (n == 0) continue;
        const int32_t *tok = w->sel + e * T;
        if (L->fetch && ith == 0)
            w->ptrs[3 * ne] = L->fetch(L->fetch_ctx, L->layer_id, e, w->cnt, h, T, w->ptrs) ? (void *)1 : NULL;
        for (int64_t i = ith; i < n; i += nth) memcpy(w->ex + i * E, h + tok[i] * E, (size_t)E * sizeof(float));
#pragma omp barrier
        if (L->fetch && w->ptrs[3 * ne]) return;
        const void *const *at = L->fetch ? w->ptrs + 3 * e : (const void *const[3]){NULL, NULL, NULL};
        const fl_mat g = expert_rows(&L->gate, e, L->n_ff, at[0]), u = expert_rows(&L->up, e, L->n_ff, at[1]);
        const fl_mat d = expert_rows(&L->down, e, E, at[2]);
        ffn(L, &g, &u, &d, w, w->ex, n, w->ey, ith, nth);
        for (int64_t i = ith; i < n; i += nth) { /* a token appears once per expert: rows are disjoint */
            const float gate = w->wts[tok[i] * ne + e];
            float *yt = y + tok[i] * E;
            for (int64_t j = 0; j < E; j++) yt[j] += w->ey[i * E + j] * gate;
        }
#pragma omp barrier
    }
}

/* the feed-forward half for the last n tokens of x (the others' outputs are not wanted); y as in
 * attention_block (its last n rows) */
static void ffn_block(const fl_layer *L, work_t *w, float *x, int64_t T, int64_t n, float *y, int ith, int nth) {
    const int64_t E = L->n_embd;
    const float *h = w->h + (T - n) * E;
    float *out = y ? y + (T - n) * E : w->tmp;
    if (L->n_expert) moe(L, w, h, n, out, ith, nth);
    else ffn(L, &L->gate, &L->up, &L->down, w, h, n, out, ith, nth);
    if (!y) residual(L, x + (T - n) * E, w->tmp, w->tmp, L->post_ffn_norm.data, NULL, NULL, n, ith, nth);
}

/* x (T, n_embd) <- the block applied to x, tokens at positions pos0.. ; kc, vc: fp16 (n_ctx, n_head_kv,
 * head_dim) caches of this layer. Only the last n_out rows of x go through the feed-forward half
 * (the last layer: every token's keys and values are cached, only the logits' rows need the rest);
 * the other rows are left after attention. work: fl_layer_work_bytes(L, T, n_ctx, nthreads) bytes.
 * stage FL_STAGE_ALL runs the block; a tensor-parallel shard runs it in three calls, the caller
 * summing y (T, n_embd) over the shards between them: ATTN (y = attention output), FFN (x += post
 * norm of the summed y; y = feed-forward output of the last n_out rows), DONE (x += its post norm).
 * x_cols (x's and y's width) must be n_embd and each cache hold kv_elems >= n_ctx * n_head_kv * head_dim
 * values: nothing is written where the caller did not say there is room. */
int fl_layer_forward(const fl_layer *L, uint16_t *kc, uint16_t *vc, size_t kv_elems, int64_t n_ctx, float *x,
                     int64_t x_cols, int64_t T, int64_t pos0, int64_t n_out, float *y, int stage, void *work,
                     size_t work_bytes, int nthreads) {
    int rc = layer_check(L, T, pos0, n_ctx);
    if (rc) return rc;
    /* x (and y) hold T rows of x_cols floats, each cache kv_elems fp16: the block's widths must fit them */
    if (x_cols != L->n_embd || n_ctx <= 0 || kv_elems / (size_t)n_ctx < (size_t)(L->n_head_kv * L->head_dim))
        return FL_ESIZE;
    if (n_out < 1 || n_out > T || stage < FL_STAGE_ALL || stage > FL_STAGE_DONE || (stage && !y)) return FL_ESIZE;
    if (nthreads < 1) nthreads = 1;
    work_t w;
    if (!kc || !vc || !work || work_bytes < work_layout(L, T, n_ctx, nthreads, (uint8_t *)work, &w)) return FL_ESIZE;
    const int64_t E = L->n_embd, d = T - n_out;
    if (L->n_expert) w.ptrs[3 * L->n_expert] = NULL;
#pragma omp parallel num_threads(nthreads)
    {
        const int ith = omp_get_thread_num(), nth = omp_get_num_threads();
        if (stage == FL_STAGE_ALL) {
            attention_block(L, &w, x, T, pos0, kc, vc, NULL, ith, nth);
#pragma omp barrier
            ffn_block(L, &w, x, T, n_out, NULL, ith, nth);
        } else if (stage == FL_STAGE_ATTN) {
            attention_block(L, &w, x, T, pos0, kc, vc, y, ith, nth);
        } else if (stage == FL_STAGE_FFN) {
            residual(L, x, y, w.tmp, L->post_attn_norm.data, L->ffn_norm.data, w.h, T, ith, nth);
#pragma omp barrier
            ffn_block(L, &w, x, T, n_out, y, ith, nth);
        } else {
            residual(L, x + d * E, y + d * E, w.tmp, L->post_ffn_norm.data, NULL, NULL, n_out, ith, nth);
        }
    }
    return L->fetch && L->n_expert && w.ptrs[3 * L->n_expert] ? FL_EFETCH : FL_OK;
}

/* fl_layer_forward of blocks 0..n-1 in turn, in one call (a call per block from Python costs a
 * measurable share of a small model's decode token): L[i], kc[i], vc[i] block i and its caches;
 * the last block's feed-forward only for the last n_out rows. Stops at the first error. */
int fl_forward_layers(const fl_layer *const *L, int64_t n, uint16_t *const *kc, uint16_t *const *vc, size_t kv_elems,
                      int64_t n_ctx, float *x, int64_t x_cols, int64_t T, int64_t pos0, int64_t n_out, void *work,
                      size_t work_bytes, int nthreads) {
    for (int64_t i = 0; i < n; i++) {
        const int rc = fl_layer_forward(L[i], kc[i], vc[i], kv_elems, n_ctx, x, x_cols, T, pos0,
                                        i == n - 1 ? n_out : T, NULL, FL_STAGE_ALL, work, work_bytes, nthreads);
        if (rc) return rc;
    }
    return FL_OK;
}

/* fitllm's public C interface: what Python calls through ctypes (kernels/lib.py declares each
 * function once, by name and parameters). Only what this header marks FL_API is exported from the
 * shared library (built with -fvisibility=hidden). Weights are raw GGUF blocks; type ids are ggml's,
 * so a GGUF tensor's type number is passed straight through. Every function checks the sizes it is
 * given before it reads; those returning int return FL_OK or a negative error code. */
#ifndef FITLLM_API_H
#define FITLLM_API_H
#include <stddef.h>
#include <stdint.h>

#define FL_API __attribute__((visibility("default")))

enum {
    FL_F32 = 0, FL_F16 = 1, FL_Q4_0 = 2, FL_Q4_1 = 3, FL_Q5_0 = 6, FL_Q5_1 = 7, FL_Q8_0 = 8,
    FL_Q2_K = 10, FL_Q3_K = 11, FL_Q4_K = 12, FL_Q5_K = 13, FL_Q6_K = 14, FL_IQ2_XXS = 16, FL_IQ2_XS = 17,
    FL_IQ3_XXS = 18, FL_IQ1_S = 19, FL_IQ4_NL = 20, FL_IQ3_S = 21, FL_IQ2_S = 22, FL_IQ4_XS = 23, FL_IQ1_M = 29,
    FL_BF16 = 30, FL_TQ1_0 = 34, FL_TQ2_0 = 35, FL_MXFP4 = 39,
    FL_NTYPES = 40
};

/* error codes returned by the public functions */
enum { FL_OK = 0, FL_EBADTYPE = -1, FL_ESIZE = -2, FL_EINDEX = -3, FL_ENOMEM = -4, FL_EFETCH = -5, FL_EIO = -6 };

/* ISA levels, chosen at run time */
enum { FL_ISA_PORTABLE = 0, FL_ISA_AVX2 = 1, FL_ISA_AVX512VNNI = 2 };

/* the type flag of a matrix repacked in 16-row strips (repack.c): the blocks' type | FL_PACKED */
#define FL_PACKED 64

/* fl_layer_forward's stages: a tensor-parallel shard sums its partial outputs between them */
enum { FL_STAGE_ALL = 0, FL_STAGE_ATTN = 1, FL_STAGE_FFN = 2, FL_STAGE_DONE = 3 };

/* activation kinds: what llama.cpp converts a matmul's input to for each weight type */
enum { FL_ACT_F32 = 0, FL_ACT_F16 = 1, FL_ACT_BF16 = 2, FL_ACT_Q8_0 = 3, FL_ACT_Q8_1 = 4, FL_ACT_Q8_K = 5 };

/* ---- structs Python mirrors (kernels/layer.py, kernels/blocks.py); fl_struct_layout reports them ---- */

/* a weight matrix: nrows rows of raw blocks of `type`, and an optional bias */
typedef struct {
    const void *data;
    int64_t nbytes, type, nrows, ncols;
    const float *bias; /* NULL or bias_n (== nrows) floats */
    int64_t bias_n;
} fl_mat;

/* a norm's weights and their count: checked against the width they scale before any use */
typedef struct {
    const float *data; /* optional: NULL */
    int64_t n;
} fl_vec;

/* one transformer block (kernels.LayerSpec): every scalar is int64 or double */
typedef struct {
    int64_t n_embd, n_head, n_head_kv, head_dim, n_ff, n_rot, window, rope_neox, act_gelu;
    double eps, rope_base, q_scale, kq_scale, attn_softcap;
    /* RoPE scaling as ggml's rope_yarn: angle * freq_scale (linear), YaRN's ramp between it and the
     * unscaled angle over dims [corr_lo, corr_hi] when ext_factor != 0, cos/sin times attn_factor */
    double rope_freq_scale, rope_ext_factor, rope_attn_factor, rope_corr_lo, rope_corr_hi;
    fl_vec attn_norm, q_norm, k_norm, post_attn_norm, ffn_norm, post_ffn_norm; /* optional: data NULL */
    fl_vec rope_freqs; /* optional: llama3's per-pair frequency divisors (n_rot / 2) */
    fl_mat q, k, v, o, gate, up, down; /* MoE: gate/up/down hold every expert, stacked by rows */
    int64_t n_expert, n_expert_used, expert_norm_w; /* n_expert 0: a dense FFN */
    fl_mat gate_inp;                                /* the router, (n_expert, n_embd) */
    /* a tensor-parallel shard holds heads [head0, head0 + n_head) of a model whose query heads share
     * a key/value head n_group at a time (0: n_head / n_head_kv, the whole model) */
    int64_t head0, n_group;
    /* expert streaming: when fetch is set, the MoE calls it once its tokens are routed (e = -1: cnt
     * holds the tokens per expert, h the MoE's input (T, n_embd)), then before each chosen expert e
     * runs, for its weights: ptrs[3e + 0..2] = its gate, up, down rows, laid out as in the stacked
     * tensors (which then only give the shapes). A non-zero return fails the layer. */
    int (*fetch)(void *ctx, int64_t layer, int64_t e, const int32_t *cnt, const float *h, int64_t T,
                 const void **ptrs);
    void *fetch_ctx;
    int64_t layer_id;
} fl_layer;

/* one matrix of a file to repack (kernels.RepackJob): its blocks at `offset`, its strips into dst */
typedef struct {
    int64_t type, offset, nrows, ncols;
    void *dst;
    int64_t dst_bytes;
} fl_repack_job;

/* ---- the ABI check ---- */

enum { FL_STRUCT_MAT = 0, FL_STRUCT_VEC = 1, FL_STRUCT_LAYER = 2, FL_STRUCT_REPACK_JOB = 3 };
/* struct `which`: field -1 -> its sizeof, field i -> offsetof its i-th field (declaration order),
 * -1 past the last field or for an unknown struct */
FL_API int64_t fl_struct_layout(int which, int field);
/* the value of the constant named `name` (e.g. "FL_Q4_0", "FL_ESIZE"); *found 0 if there is none */
FL_API int64_t fl_constant(const char *name, int *found);

/* ---- ISA ---- */

/* best ISA level this CPU runs (FL_ISA_*) */
FL_API int fl_isa_supported(void);
/* the ISA level the kernels use (default: fl_isa_supported()) */
FL_API int fl_get_isa(void);
/* force a lower level (tests); FL_EBADTYPE for one this CPU lacks */
FL_API int fl_set_isa(int isa);
/* matrix products of at least this many tokens sum in another order than smaller ones (0: one order) */
FL_API int fl_batch_min_tokens(void);

/* ---- block formats ---- */

/* bytes of a row of n elements, 0 if the type is unknown or n not a whole number of blocks */
FL_API size_t fl_row_bytes(int type, int64_t n);
/* dst (nrows, ncols) float32 <- src's blocks, on nthreads threads */
FL_API int fl_dequantize(int type, const void *src, size_t src_bytes, int64_t nrows, int64_t ncols, float *dst,
                         int nthreads);
/* dst (nids, ncols) <- rows ids of w; FL_EINDEX for an id outside [0, nrows) */
FL_API int fl_get_rows(int type, const void *w, size_t w_bytes, int64_t nrows, int64_t ncols, const int32_t *ids,
                       int64_t nids, float *dst);
/* out (nrows, row bytes) <- x quantized to `type` (Q4_0..Q8_0 as gguf-py, K-quants as llama.cpp) */
FL_API int fl_quantize(int type, const float *x, int64_t nrows, int64_t ncols, uint8_t *out, size_t out_bytes,
                       int nthreads);
/* the activation kind (FL_ACT_*) a matmul with this weight type converts its input to */
FL_API int fl_act_kind(int type);
/* bytes of one row of n activations of that kind */
FL_API size_t fl_act_row_bytes(int kind, int64_t n);
/* out <- x (T, n) as a matmul with this weight type prepares it (tests compare with numpy) */
FL_API int fl_quantize_act(int type, const float *x, int64_t T, int64_t n, void *out);

/* ---- products and layers ---- */

/* y (T, nrows) = x (T, ncols) . W^T, W nrows rows of blocks (type may carry FL_PACKED) */
FL_API int fl_matmul(int type, const void *w, size_t w_bytes, int64_t nrows, int64_t ncols, const float *x,
                     int64_t T, float *y, int nthreads);
/* y = x / rms(x) * w per row of n; w_n must equal n */
FL_API int fl_rms_norm(const float *x, int64_t T, int64_t n, const float *w, int64_t w_n, float eps, float *y);
/* work bytes fl_layer_forward needs for T tokens, n_ctx cache rows and nthreads threads */
FL_API size_t fl_layer_work_bytes(const fl_layer *L, int64_t T, int64_t n_ctx, int nthreads);
/* x (T, x_cols == n_embd) <- block L applied in place at positions pos0.., kc/vc its fp16 caches; the
 * feed-forward only for the last n_out rows; y and stage: a tensor-parallel shard's (FL_STAGE_*) */
FL_API int fl_layer_forward(const fl_layer *L, uint16_t *kc, uint16_t *vc, size_t kv_elems, int64_t n_ctx, float *x,
                            int64_t x_cols, int64_t T, int64_t pos0, int64_t n_out, float *y, int stage, void *work,
                            size_t work_bytes, int nthreads);
/* fl_layer_forward of blocks L[0..n) in turn, in one call; stops at the first error */
FL_API int fl_forward_layers(const fl_layer *const *L, int64_t n, uint16_t *const *kc, uint16_t *const *vc,
                             size_t kv_elems, int64_t n_ctx, float *x, int64_t x_cols, int64_t T, int64_t pos0,
                             int64_t n_out, void *work, size_t work_bytes, int nthreads);

/* ---- repacking ---- */

/* bytes of the matrix repacked in 16-row strips, 0 if the type has no strip kernels */
FL_API size_t fl_packed_bytes(int type, int64_t nrows, int64_t ncols);
/* dst <- src's matrix in strips, on nthreads threads */
FL_API int fl_repack(int type, const void *src, size_t src_bytes, int64_t nrows, int64_t ncols, void *dst,
                     size_t dst_bytes, int nthreads);
/* every job's matrix read from fd (never mapped) and repacked into its dst, in one call */
FL_API int fl_repack_file(int fd, const fl_repack_job *jobs, int64_t njobs, int nthreads);

/* ---- misc ---- */

/* GGUF string arrays: starts and lengths of n u64-length-prefixed strings at buf[off]; the offset
 * after the last one, or -1 if one runs past size */
FL_API int64_t fl_gguf_strings(const uint8_t *buf, size_t size, size_t off, int64_t n, int big_endian, int64_t *starts,
                               int64_t *lens);
/* the sum of buf's 64-bit words read by nthreads threads (a memory read speed probe) */
FL_API uint64_t fl_read_sum(const uint8_t *buf, size_t n, int nthreads);

#endif

/* What Python checks its ctypes mirrors against at import (kernels/lib.py): the layout of the
 * structs it builds and the values of the constants it passes. */
#include <string.h>
#include "fitllm.h"

#define OFF(s, f) (int64_t) offsetof(s, f)
static const int64_t MAT[] = {OFF(fl_mat, data),  OFF(fl_mat, nbytes), OFF(fl_mat, type),  OFF(fl_mat, nrows),
                              OFF(fl_mat, ncols), OFF(fl_mat, bias),   OFF(fl_mat, bias_n)};
static const int64_t VEC[] = {OFF(fl_vec, data), OFF(fl_vec, n)};
static const int64_t LAYER[] = {OFF(fl_layer, n_embd),
                                OFF(fl_layer, n_head),
                                OFF(fl_layer, n_head_kv),
                                OFF(fl_layer, head_dim),
                                OFF(fl_layer, n_ff),
                                OFF(fl_layer, n_rot),
                                OFF(fl_layer, window),
                                OFF(fl_layer, rope_neox),
                                OFF(fl_layer, act_gelu),
                                OFF(fl_layer, eps),
                                OFF(fl_layer, rope_base),
                                OFF(fl_layer, q_scale),
                                OFF(fl_layer, kq_scale),
                                OFF(fl_layer, attn_softcap),
                                OFF(fl_layer, rope_freq_scale),
                                OFF(fl_layer, rope_ext_factor),
                                OFF(fl_layer, rope_attn_factor),
                                OFF(fl_layer, rope_corr_lo),
                                OFF(fl_layer, rope_corr_hi),
                                OFF(fl_layer, attn_norm),
                                OFF(fl_layer, q_norm),
                                OFF(fl_layer, k_norm),
                                OFF(fl_layer, post_attn_norm),
                                OFF(fl_layer, ffn_norm),
                                OFF(fl_layer, post_ffn_norm),
                                OFF(fl_layer, rope_freqs),
                                OFF(fl_layer, q),
                                OFF(fl_layer, k),
                                OFF(fl_layer, v),
                                OFF(fl_layer, o),
                                OFF(fl_layer, gate),
                                OFF(fl_layer, up),
                                OFF(fl_layer, down),
                                OFF(fl_layer, n_expert),
                                OFF(fl_layer, n_expert_used),
                                OFF(fl_layer, expert_norm_w),
                                OFF(fl_layer, gate_inp),
                                OFF(fl_layer, head0),
                                OFF(fl_layer, n_group),
                                OFF(fl_layer, fetch),
                                OFF(fl_layer, fetch_ctx),
                                OFF(fl_layer, layer_id)};
static const int64_t REPACK_JOB[] = {OFF(fl_repack_job, type),  OFF(fl_repack_job, offset),
                                     OFF(fl_repack_job, nrows), OFF(fl_repack_job, ncols),
                                     OFF(fl_repack_job, dst),   OFF(fl_repack_job, dst_bytes)};

#define N(a) (int)(sizeof(a) / sizeof(a[0]))
static const struct {
    const int64_t *off;
    int n;
    int64_t size;
} STRUCTS[] = {
    [FL_STRUCT_MAT] = {MAT, N(MAT), sizeof(fl_mat)},
    [FL_STRUCT_VEC] = {VEC, N(VEC), sizeof(fl_vec)},
    [FL_STRUCT_LAYER] = {LAYER, N(LAYER), sizeof(fl_layer)},
    [FL_STRUCT_REPACK_JOB] = {REPACK_JOB, N(REPACK_JOB), sizeof(fl_repack_job)},
};

int64_t fl_struct_layout(int which, int field) {
    if (which < 0 || which >= N(STRUCTS)) return -1;
    if (field == -1) return STRUCTS[which].size;
    return field >= 0 && field < STRUCTS[which].n ? STRUCTS[which].off[field] : -1;
}

#define C(name)                                                                                                        \
    { #name, name }
static const struct {
    const char *name;
    int64_t value;
} CONSTANTS[] = {
    C(FL_F32),          C(FL_F16),        C(FL_Q4_0),           C(FL_Q4_1),
    C(FL_Q5_0),         C(FL_Q5_1),       C(FL_Q8_0),           C(FL_Q2_K),
    C(FL_Q3_K),         C(FL_Q4_K),       C(FL_Q5_K),           C(FL_Q6_K),
    C(FL_BF16),         C(FL_OK),         C(FL_EBADTYPE),       C(FL_ESIZE),
    C(FL_EINDEX),       C(FL_ENOMEM),     C(FL_EFETCH),         C(FL_EIO),
    C(FL_ISA_PORTABLE), C(FL_ISA_AVX2),   C(FL_ISA_AVX512VNNI), C(FL_PACKED),
    C(FL_STAGE_ALL),    C(FL_STAGE_ATTN), C(FL_STAGE_FFN),      C(FL_STAGE_DONE),
    C(FL_STRUCT_MAT),   C(FL_STRUCT_VEC), C(FL_STRUCT_LAYER),   C(FL_STRUCT_REPACK_JOB),
};

int64_t fl_constant(const char *name, int *found) {
    for (int i = 0; i < N(CONSTANTS); i++)
        if (!strcmp(name, CONSTANTS[i].name)) {
            *found = 1;
            return CONSTANTS[i].value;
        }
    *found = 0;
    return 0;
}

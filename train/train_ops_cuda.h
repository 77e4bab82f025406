/* The CUDA side of the training ops (train_ops.h): each hae_tr_X_cuda has hae_tr_X's contract, arguments in device
 * memory (host where the contract says host), and runs on the backend's stream. train/ops.c calls them for a CUDA
 * backend; they exist only in CUDA builds. */
#ifndef HAE_TRAIN_OPS_CUDA_H
#define HAE_TRAIN_OPS_CUDA_H

#include "train_ops.h"

#ifdef __cplusplus
extern "C" {
#endif

hae_status hae_tr_embedding_fwd_cuda(hae_backend *be, const int32_t *ids, int64_t N, const float *E, int64_t D,
                                     float *x);
hae_status hae_tr_embedding_bwd_cuda(hae_backend *be, const int32_t *ids, int64_t N, const float *dx, int64_t D,
                                     float *dE);
hae_status hae_tr_rmsnorm_fwd_cuda(hae_backend *be, const float *x, const float *w, int64_t N, int64_t D, float eps,
                                   float *y, float *rstd);
hae_status hae_tr_rmsnorm_bwd_cuda(hae_backend *be, const float *x, const float *w, const float *rstd, const float *dy,
                                   int64_t N, int64_t D, float *dx, float *dw);
hae_status hae_tr_linear_fwd_cuda(hae_backend *be, hae_dtype mm, const float *x, const float *W, int64_t N, int64_t I,
                                  int64_t O, float *y, bool accumulate);
hae_status hae_tr_linear_bwd_cuda(hae_backend *be, hae_dtype mm, const float *x, const float *W, const float *dy,
                                  int64_t N, int64_t I, int64_t O, float *dx, bool dx_accumulate, float *dW);
hae_status hae_tr_rope_cuda(hae_backend *be, float *x, int64_t B, int64_t T, int64_t H, int64_t D, int64_t ld,
                            int rot_dims, const float *cs, const float *sn, bool inverse);
hae_status hae_tr_attention_fwd_cuda(hae_backend *be, const hae_tr_attn_shape *s, const float *qkv, float *P,
                                     float *out);
hae_status hae_tr_attention_bwd_cuda(hae_backend *be, const hae_tr_attn_shape *s, const float *qkv, const float *P,
                                     const float *out, const float *dout, float *dqkv);
hae_status hae_tr_delta_fwd_cuda(hae_backend *be, const hae_tr_delta_shape *s, const float *q, const float *k,
                                 const float *v, const float *g, const float *beta, float *S, float *o);
hae_status hae_tr_delta_bwd_cuda(hae_backend *be, const hae_tr_delta_shape *s, const float *q, const float *k,
                                 const float *v, const float *g, const float *beta, float *S, const float *dout,
                                 float *dq, float *dk, float *dv, float *dg, float *dbeta);
hae_status hae_tr_conv_fwd_cuda(hae_backend *be, const float *x, const float *weight, int64_t B, int64_t T, int64_t C,
                                int64_t W, bool silu, float *pre, float *out);
hae_status hae_tr_conv_bwd_cuda(hae_backend *be, const float *x, const float *weight, const float *pre,
                                const float *dout, int64_t B, int64_t T, int64_t C, int64_t W, bool silu, float *dx,
                                float *dweight);
hae_status hae_tr_l2norm_fwd_cuda(hae_backend *be, const float *x, int64_t N, int64_t D, float eps, float *y);
hae_status hae_tr_l2norm_bwd_cuda(hae_backend *be, const float *x, const float *dy, int64_t N, int64_t D, float eps,
                                  float *dx);
hae_status hae_tr_gated_norm_fwd_cuda(hae_backend *be, const float *x, const float *gate, const float *w, int64_t N,
                                      int64_t D, float eps, float *y);
hae_status hae_tr_gated_norm_bwd_cuda(hae_backend *be, const float *x, const float *gate, const float *w,
                                      const float *dy, int64_t N, int64_t D, float eps, float *dx, float *dgate,
                                      float *dw);
hae_status hae_tr_decay_fwd_cuda(hae_backend *be, const float *raw, const float *A_log, const float *dt_bias, int64_t N,
                                 int64_t HV, int64_t n, hae_gate_fn gate, float lower_bound, float *g);
hae_status hae_tr_decay_bwd_cuda(hae_backend *be, const float *raw, const float *A_log, const float *dt_bias,
                                 const float *dg, int64_t N, int64_t HV, int64_t n, hae_gate_fn gate, float lower_bound,
                                 float *draw, float *dA_log, float *ddt_bias);
hae_status hae_tr_layernorm_fwd_cuda(hae_backend *be, const float *x, const float *w, const float *bias, int64_t N,
                                     int64_t D, float eps, float *y, float *rstd);
hae_status hae_tr_layernorm_bwd_cuda(hae_backend *be, const float *x, const float *w, const float *rstd,
                                     const float *dy, int64_t N, int64_t D, float *dx, float *dw, float *dbias);
hae_status hae_tr_index_fwd_cuda(hae_backend *be, const hae_tr_index_shape *s, const float *q, const float *k,
                                 const float *w, float *I);
hae_status hae_tr_index_bwd_cuda(hae_backend *be, const hae_tr_index_shape *s, const float *q, const float *k,
                                 const float *w, const float *dI, float *dq, float *dk, float *dw);
hae_status hae_tr_index_select_cuda(hae_backend *be, const float *I, int64_t B, int64_t T, int64_t k, uint8_t *allow);
hae_status hae_tr_index_kl_cuda(hae_backend *be, const float *P, const float *I, const uint8_t *allow, int64_t B,
                                int64_t Hq, int64_t T, float scale, float *dI, double *kl_sum);
hae_status hae_tr_swiglu_fwd_cuda(hae_backend *be, const float *gu, int64_t N, int64_t F, float *a);
hae_status hae_tr_swiglu_bwd_cuda(hae_backend *be, const float *gu, const float *da, int64_t N, int64_t F, float *dgu);
hae_status hae_tr_xent_cuda(hae_backend *be, const float *z, const int32_t *target, int64_t S, int64_t V, float scale,
                            float *dz, uint8_t *correct, double *loss);
hae_status hae_tr_copy_cols_cuda(hae_backend *be, const hae_tr_cols *c);
hae_status hae_tr_gather_rows_cuda(hae_backend *be, const float *src, const int64_t *idx, int64_t n, int64_t D,
                                   float *dst);
hae_status hae_tr_scatter_add_rows_cuda(hae_backend *be, const float *src, const int64_t *idx, int64_t n, int64_t D,
                                        float *dst);
hae_status hae_tr_map_fwd_cuda(hae_backend *be, hae_tr_map f, const float *x, int64_t n, float *y);
hae_status hae_tr_map_bwd_cuda(hae_backend *be, hae_tr_map f, const float *x, const float *dy, int64_t n, float *dx);
hae_status hae_tr_fixed_decay_fwd_cuda(hae_backend *be, const float *A_log, int64_t N, int64_t HV, float *g);
hae_status hae_tr_fixed_decay_bwd_cuda(hae_backend *be, const float *g, const float *dg, int64_t N, int64_t HV,
                                       float *dA_log);
hae_status hae_tr_sumsq_cuda(hae_backend *be, const float *x, int64_t n, double *out);
hae_status hae_tr_adamw_cuda(hae_backend *be, const hae_tr_adamw_args *a, float *w, const float *g, float *m, float *v,
                             int64_t n);

#ifdef __cplusplus
}
#endif

#endif

/* The training ops: the forward of every op of the trained models, keeping what its backward needs, and the
 * backward, on either backend: train/ops.c holds the CPU reference and the dispatch, train/dense_cuda.cu,
 * attention_cuda.cu and linear_cuda.cu the CUDA kernels (train_ops_cuda.h). Every pointer is the backend's memory
 * (host on the CPU, device on CUDA) unless an argument says host. Values are f32; on the CPU the reductions (norms,
 * softmax sums, the loss) run in double. Rows are tokens, N = B T. A backward adds (+=) into the gradients of
 * parameters and of the residual stream and overwrites its other outputs, as each says; every output element is
 * written by one thread in a fixed order (no atomics), so results depend neither on the thread count nor on the
 * run. */
#ifndef HAE_TRAIN_OPS_H
#define HAE_TRAIN_OPS_H

#include "internal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* x[i, :] = E[ids[i], :] */
hae_status hae_tr_embedding_fwd(hae_backend *be, const int32_t *ids, int64_t N, const float *E, int64_t D, float *x);
/* dE[ids[i], :] += dx[i, :], rows in order */
hae_status hae_tr_embedding_bwd(hae_backend *be, const int32_t *ids, int64_t N, const float *dx, int64_t D, float *dE);

/* y = x r w with r = 1 / sqrt(mean(x^2) + eps) per row, kept in rstd [N] */
hae_status hae_tr_rmsnorm_fwd(hae_backend *be, const float *x, const float *w, int64_t N, int64_t D, float eps,
                              float *y, float *rstd);
/* dx += r (dy w) - x r^3 mean(dy w x);  dw += sum over rows of dy x r */
hae_status hae_tr_rmsnorm_bwd(hae_backend *be, const float *x, const float *w, const float *rstd, const float *dy,
                              int64_t N, int64_t D, float *dx, float *dw);

/* y = x W^T, or y += x W^T with accumulate: x [N, I], W [O, I] (PyTorch's Linear layout), y [N, O].
 * mm is the products' input precision: HAE_F32, or HAE_BF16 (train.matmul), where both operands of every product
 * are rounded to bf16 (nearest even) and the products summed in fp32; outputs stay fp32. */
hae_status hae_tr_linear_fwd(hae_backend *be, hae_dtype mm, const float *x, const float *W, int64_t N, int64_t I,
                             int64_t O, float *y, bool accumulate);
/* dx = dy W (dx += dy W with dx_accumulate; dx NULL: not wanted) and dW += dy^T x. */
hae_status hae_tr_linear_bwd(hae_backend *be, hae_dtype mm, const float *x, const float *W, const float *dy, int64_t N,
                             int64_t I, int64_t O, float *dx, bool dx_accumulate, float *dW);

/* cos and sin of RoPE's angles at positions [0, T) as hae_rope computes them (inv_freq_i = 1 / theta^(2i / rot),
 * angle = float(pos) inv_freq_i, fp32): tables [T, rot / 2]. */
void hae_tr_rope_table(int64_t T, int rot_dims, float theta, float *cs, float *sn);
/* In place on x [B, T, H, D], consecutive tokens ld floats apart: NeoX pairs (i, i + rot/2) rotated by the
 * position's angle, or by its negative with inverse (the rotation's transpose: the backward). */
hae_status hae_tr_rope(hae_backend *be, float *x, int64_t B, int64_t T, int64_t H, int64_t D, int64_t ld, int rot_dims,
                       const float *cs, const float *sn, bool inverse);

/* Causal softmax attention over fused rows qkv [B, T, (Hq + Hkv) Dh + Hkv Dv] (q, then k, then v, after RoPE): query
 * head h reads kv head h / (Hq / Hkv); query t attends to s in [lo, t], lo = max(0, t - window + 1) when window > 0,
 * else 0:
 *     P[b, h, t, s] = softmax_s(scale q_t . k_s),   out[b, t, h] = sum_s P[b, h, t, s] v_s
 * P [B, Hq, T, T] keeps the probabilities (0 outside the mask); out is [B, T, Hq Dv]. Dv = Dh unless given (mla's
 * value heads); the CUDA kernels take Dv = Dh only. */
typedef struct hae_tr_attn_shape {
    int64_t B, T, Hq, Hkv, Dh, window;
    int64_t Dv; /* 0: Dh */
    float scale;
    const uint8_t *allow; /* [B, T, T]: query t attends to s only where allow[b, t, s] (dsa's selection); NULL: all */
} hae_tr_attn_shape;
hae_status hae_tr_attention_fwd(hae_backend *be, const hae_tr_attn_shape *s, const float *qkv, float *P, float *out);
/* dqkv (overwritten, qkv's layout): with dP_ts = dout_t . v_s and dS = P (dP - rowsum(dout o)),
 * dq = scale dS k, dk = scale dS^T q, dv = P^T dout, summed over the query heads of a kv head. */
hae_status hae_tr_attention_bwd(hae_backend *be, const hae_tr_attn_shape *s, const float *qkv, const float *P,
                                const float *out, const float *dout, float *dqkv);

/* The linear family's recurrence (DESIGN.md §1.1), per sequence and head, on maps, gates and betas already
 * applied: with S_0 = 0 the K x V state,
 *     S'_t = diag(a_t) S_{t-1},   a_t = exp(g_t) per channel (kda, gla: g [.., K]) or per head (gdn, mamba2,
 *                                  retnet: g [..] broadcast; g NULL: no decay, a = 1)
 *     S_t  = S'_t + k_t u_t^T,    u_t = beta_t (v_t - S'_t^T k_t) (the delta rule), or u_t = v_t
 *     o_t  = scale S_t^T q_t
 * q, k [B, T, H, K], v and o [B, T, H, V], g [B, T, H, K] or [B, T, H], beta [B, T, H] (after the sigmoid; NULL
 * without the delta rule). S [B, H, hae_tr_delta_slots, K, V] holds the states for the backward: every state, or
 * with checkpoints every C tokens (1 < C < T) the last state of each chunk of C tokens followed by one chunk's
 * states, which the backward recomputes chunk by chunk from the checkpoint before it, bit for bit as the forward
 * made them (so its gradients are the same bits either way). */
typedef struct hae_tr_delta_shape {
    int64_t B, T, H, K, V;
    bool channel_decay; /* g is [.., K]; else [..] (when g is given) */
    float scale;
    int64_t every; /* C: checkpoints every C tokens; 0, 1 or >= T: every state kept */
    int64_t chunk; /* > 0: the chunk form over chunks of this many tokens (below); `every` is then unused */
} hae_tr_delta_shape;
/* States S holds per (sequence, head): T, or ceil(T / C) + C with checkpoints, or ceil(T / chunk) in the chunk
 * form (slot c the state after chunk c's last token). */
int64_t hae_tr_delta_slots(const hae_tr_delta_shape *s);
hae_status hae_tr_delta_fwd(hae_backend *be, const hae_tr_delta_shape *s, const float *q, const float *k,
                            const float *v, const float *g, const float *beta, float *S, float *o);
/* Walks the recurrence backwards with dS, the gradient of the state after step t:
 *     dS += scale q_t do_t^T;  dq_t = scale S_t do_t;
 *     delta: du = dS^T k_t, dk_t = dS u_t - beta_t S'_t du, dv_t = beta_t du, dbeta_t = du . (v_t - S'_t^T k_t),
 *            dS' = dS - beta_t k_t du^T;  else dk_t = dS v_t, dv_t = dS^T k_t, dS' = dS
 *     dg_t = a_t sum_v dS'[., v] S_{t-1}[., v] (summed over K for a head gate);  dS = diag(a_t) dS'
 * dq, dk, dv, dg, dbeta are overwritten (dg and dbeta may be NULL when g or beta is); with checkpoints the chunk's
 * states in S are rewritten. The CPU allocates its scratch. */
hae_status hae_tr_delta_bwd(hae_backend *be, const hae_tr_delta_shape *s, const float *q, const float *k,
                            const float *v, const float *g, const float *beta, float *S, const float *dout,
                            float *dq, float *dk, float *dv, float *dg, float *dbeta);
/* The chunk form (s->chunk = C > 0), the same function computed a chunk at a time: per chunk of n <= C tokens
 * with S0 the state before it, Γ_i = the sum of g over the chunk's tokens up to i (per channel; a head's gate
 * broadcast over K), E_ijc = e^{Γ_ic - Γ_jc} (j <= i, so <= 1), K~_i = k_i e^{Γ_i}, Q~_i = q_i e^{Γ_i},
 * K^_j = k_j e^{Γ_L - Γ_j} (L the chunk's last token), A_ij = sum_c k_ic k_jc E_ijc (j < i),
 * P_ij = sum_c q_ic k_jc E_ijc (j <= i):
 *     delta: M u = diag(beta) z,  M = I + diag(beta) A (unit lower triangular),  z = V - K~ S0;  else u = V
 *     O = scale (Q~ S0 + P u),   S_end = diag(e^{Γ_L}) S0 + K^^T u
 * The forward keeps S_end per chunk; the backward walks the chunks from the last with dS (the gradient of
 * S_end): du = scale P^T dO + K^ dS, w = M^-T du (delta; w = du without), dv = diag(beta) w,
 * dbeta_i = w_i . z_i - sum_{j<i} A_ij w_i . u_j, dA_ij = -beta_i w_i . u_j, each product's gradient into q, k
 * and Γ, dg_t = sum_{i >= t} dΓ_i (summed over K for a head gate), and the chunk before's
 * dS = diag(e^{Γ_L}) dS + scale Q~^T dO - K~^T diag(beta) w. The CPU computes it in double (states rounded to f32
 * in S), the GPU in f32. */

/* The linear layers' causal depthwise conv from a zero history (a sequence's start, as hae_conv_short):
 *     s[b, t, c] = sum_{w < W} weight[c, w] x[b, t + w - (W - 1), c]  (x = 0 before t = 0),  out = silu(s) or s
 * x, out and pre (s, kept for the backward) [B, T, C], weight [C, W]. */
hae_status hae_tr_conv_fwd(hae_backend *be, const float *x, const float *weight, int64_t B, int64_t T, int64_t C,
                           int64_t W, bool silu, float *pre, float *out);
/* ds = dout act'(s); dx[u] = sum_w weight[w] ds[u + W - 1 - w] (overwritten); dweight[c, w] += sum_t ds[t] x[t + w - W + 1]. */
hae_status hae_tr_conv_bwd(hae_backend *be, const float *x, const float *weight, const float *pre, const float *dout,
                           int64_t B, int64_t T, int64_t C, int64_t W, bool silu, float *dx, float *dweight);

/* Per-vector L2 normalisation of the linear layers' q and k: y = x / sqrt(sum x^2 + eps) over rows of D, N rows. */
hae_status hae_tr_l2norm_fwd(hae_backend *be, const float *x, int64_t N, int64_t D, float eps, float *y);
/* dx = (dy - y (y . dy)) / sqrt(sum x^2 + eps) (overwritten) */
hae_status hae_tr_l2norm_bwd(hae_backend *be, const float *x, const float *dy, int64_t N, int64_t D, float eps,
                             float *dx);

/* The output norm of the linear layers, over rows of D (N rows: tokens x heads), as hae_gated_rmsnorm:
 *     y = x r w sigmoid(gate),  r = 1 / sqrt(mean(x^2) + eps) */
hae_status hae_tr_gated_norm_fwd(hae_backend *be, const float *x, const float *gate, const float *w, int64_t N,
                                 int64_t D, float eps, float *y);
/* dx and dgate overwritten, dw added into: with z = x r and e = dy w sigmoid(gate),
 * dx = r (e - z mean(e z)), dgate = dy z w sigmoid'(gate), dw += sum of dy z sigmoid(gate) */
hae_status hae_tr_gated_norm_bwd(hae_backend *be, const float *x, const float *gate, const float *w, const float *dy,
                                 int64_t N, int64_t D, float eps, float *dx, float *dgate, float *dw);

/* The log decay g of the linear layers from their raw gate, as hae_linear_attn computes it, for N tokens of HV
 * value heads with n = K (channel decay) or 1 (head decay) raw values each, A = exp(A_log[j]), x = raw + dt_bias:
 *     softplus gate: g = -A softplus(x);   safe gate: g = lower_bound sigmoid(A x)
 * raw, g [N, HV, n]; A_log [HV]; dt_bias [HV n]. */
hae_status hae_tr_decay_fwd(hae_backend *be, const float *raw, const float *A_log, const float *dt_bias, int64_t N,
                            int64_t HV, int64_t n, hae_gate_fn gate, float lower_bound, float *g);
/* draw overwritten; dA_log and ddt_bias added into. */
hae_status hae_tr_decay_bwd(hae_backend *be, const float *raw, const float *A_log, const float *dt_bias,
                            const float *dg, int64_t N, int64_t HV, int64_t n, hae_gate_fn gate, float lower_bound,
                            float *draw, float *dA_log, float *ddt_bias);

/* The DSA indexer's LayerNorm of its key (hae_rmsnorm with center and bias): y = (x - mean) r w + bias,
 * r = 1 / sqrt(var + eps), r kept in rstd [N]. */
hae_status hae_tr_layernorm_fwd(hae_backend *be, const float *x, const float *w, const float *bias, int64_t N,
                                int64_t D, float eps, float *y, float *rstd);
/* dx overwritten; dw, dbias added into: with z = (x - mean) r and e = dy w, dx = r (e - mean(e) - z mean(e z)). */
hae_status hae_tr_layernorm_bwd(hae_backend *be, const float *x, const float *w, const float *rstd, const float *dy,
                                int64_t N, int64_t D, float *dx, float *dw, float *dbias);

/* The lightning indexer's scores in fp32 (DESIGN.md 1.2 without the FP8 rounding; the Hadamard rotation is
 * orthonormal and leaves the dots as they are): for s <= t,
 *     I[b, t, s] = scale sum_h w[b, t, h] relu(q[b, t, h] . k[b, s])
 * q [B, T, HI, DI], k [B, T, DI], w [B, T, HI]; I [B, T, T] (0 above the diagonal). */
typedef struct hae_tr_index_shape {
    int64_t B, T, HI, DI;
    float scale;
} hae_tr_index_shape;
hae_status hae_tr_index_fwd(hae_backend *be, const hae_tr_index_shape *s, const float *q, const float *k,
                            const float *w, float *I);
/* From dI (0 where not wanted): dq, dk, dw overwritten. */
hae_status hae_tr_index_bwd(hae_backend *be, const hae_tr_index_shape *s, const float *q, const float *k,
                            const float *w, const float *dI, float *dq, float *dk, float *dw);
/* allow [B, T, T] = the top-k of each row of I over s <= t, ties to the lower s (hae_topk's rule); every s <= t when
 * t < k. */
hae_status hae_tr_index_select(hae_backend *be, const float *I, int64_t B, int64_t T, int64_t k, uint8_t *allow);
/* The indexer's distillation loss (DeepSeek-V3.2): per query row over its set S (allow), p = the attention's
 * probabilities summed over the Hq heads and L1-normalised, q = softmax of I over S,
 *     KL_t = sum_{s in S} p_s log(p_s / q_s);   dI = scale (q - p) on S, 0 elsewhere (overwritten)
 * P [B, Hq, T, T] as hae_tr_attention_fwd keeps it. *kl_sum (host) = the sum of KL_t over the B T rows. */
hae_status hae_tr_index_kl(hae_backend *be, const float *P, const float *I, const uint8_t *allow, int64_t B, int64_t Hq,
                           int64_t T, float scale, float *dI, double *kl_sum);

/* a = silu(g) u over gu [N, 2F] (gate columns, then up), a [N, F] */
hae_status hae_tr_swiglu_fwd(hae_backend *be, const float *gu, int64_t N, int64_t F, float *a);
/* dgu (overwritten): dg = da u silu'(g), du = da silu(g) */
hae_status hae_tr_swiglu_bwd(hae_backend *be, const float *gu, const float *da, int64_t N, int64_t F, float *dgu);

/* Cross-entropy of S rows of logits z [S, V] against target ids: *loss (host) = the sum over rows, in row order, of
 * logsumexp(z) - z[target] (double); dz = scale (softmax(z) - onehot(target)) (overwritten; may be z itself, or NULL);
 * correct[r] = 1 when the argmax, ties to the lower id, is the target (correct may be NULL). */
hae_status hae_tr_xent(hae_backend *be, const float *z, const int32_t *target, int64_t S, int64_t V, float scale,
                       float *dz, uint8_t *correct, double *loss);

/* ---------------------------------------------------------------- data movement and small maps */

/* Columns [dst_off, dst_off + n) of dst [N, ld_dst] = (or += with add) columns [src_off, src_off + n) of
 * src [N, ld_src]. */
typedef struct hae_tr_cols {
    float *dst;
    const float *src;
    int64_t N, n, ld_dst, dst_off, ld_src, src_off;
    bool add;
} hae_tr_cols;
hae_status hae_tr_copy_cols(hae_backend *be, const hae_tr_cols *c);

/* Rows of D floats at n host-chosen row indices idx (backend memory): gather dst[i] = src[idx[i]], or scatter
 * dst[idx[i]] += src[i] (in i order where indices repeat). */
hae_status hae_tr_gather_rows(hae_backend *be, const float *src, const int64_t *idx, int64_t n, int64_t D, float *dst);
hae_status hae_tr_scatter_add_rows(hae_backend *be, const float *src, const int64_t *idx, int64_t n, int64_t D,
                                   float *dst);

/* Pointwise maps of the linear layers, y = f(x) (may be in place), and their backward dx = dy f'(x) (overwritten):
 * sigmoid (beta; the backward reads y = sigmoid(x) as x) and elu + 1 (the `linear` kind's q/k map). */
typedef enum hae_tr_map { HAE_TR_SIGMOID, HAE_TR_ELU1 } hae_tr_map;
hae_status hae_tr_map_fwd(hae_backend *be, hae_tr_map f, const float *x, int64_t n, float *y);
hae_status hae_tr_map_bwd(hae_backend *be, hae_tr_map f, const float *x, const float *dy, int64_t n, float *dx);

/* retnet's fixed decay g[i, j] = -exp(A_log[j]) over N rows of HV heads, and its backward
 * dA_log[j] += sum_i dg[i, j] g[i, j] (rows in order, in double). */
hae_status hae_tr_fixed_decay_fwd(hae_backend *be, const float *A_log, int64_t N, int64_t HV, float *g);
hae_status hae_tr_fixed_decay_bwd(hae_backend *be, const float *g, const float *dg, int64_t N, int64_t HV,
                                  float *dA_log);

/* ---------------------------------------------------------------- the optimiser */

/* *out (backend memory, one double) = sum of x[i]^2 in double. */
hae_status hae_tr_sumsq(hae_backend *be, const float *x, int64_t n, double *out);

/* PyTorch's AdamW on n weights, the gradient scaled by gscale first:
 *     m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  w *= decay;  w -= step_size m / (sqrt(v) / c2 + eps) */
typedef struct hae_tr_adamw_args {
    float gscale, b1, b2, eps, step_size, c2, decay;
} hae_tr_adamw_args;
hae_status hae_tr_adamw(hae_backend *be, const hae_tr_adamw_args *a, float *w, const float *g, float *m, float *v,
                        int64_t n);

#ifdef __cplusplus
}
#endif

#endif

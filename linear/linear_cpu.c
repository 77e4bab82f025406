/* CPU implementations of the linear family (the references the CUDA kernels are held to): the
 * recurrent form, the chunked form (WY/UT transform), the short convolution and the gated output
 * norm. fp32 throughout; one (sequence, value head) pair per work item of the thread pool. */
#include "internal.h"

#include <math.h>
#include <string.h>

/* ---------------------------------------------------------------- per-token inputs */

typedef struct {
    const hae_linear_attn_args *a;
    hae_backend *be;
    int64_t H, HV, K, V, G; /* G = HV / H value heads per q/k head */
    const int32_t *cu;      /* varlen boundaries, or NULL */
} la_ctx;

static float softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }
static float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

/* The q/k map in place. */
static void qk_map(float *x, int64_t K, hae_qk_map map) {
    if (map == HAE_QK_ELU1) {
        for (int64_t c = 0; c < K; c++) x[c] = x[c] > 0.0f ? x[c] + 1.0f : expf(x[c]);
        return;
    }
    float r = 1.0f / sqrtf(hae_dot_f32(x, x, K) + 1e-6f);
    for (int64_t c = 0; c < K; c++) x[c] *= r;
}

/* Log decay of value head j at token (b, t): K values for a per-channel decay, else one value
 * written to g[0]. */
static void log_decay(const la_ctx *c, int64_t b, int64_t t, int64_t j, float *g) {
    const hae_linear_attn_args *a = c->a;
    if (a->decay == HAE_DECAY_NONE) {
        g[0] = 0.0f;
        return;
    }
    float A = expf(((const float *)a->A_log.data)[j]);
    if (a->decay == HAE_DECAY_FIXED) {
        g[0] = -A;
        return;
    }
    int64_t n = a->decay == HAE_DECAY_CHANNEL ? c->K : 1;
    const float *bias = (const float *)a->dt_bias.data + j * n;
    const char *raw = hae_row_ptr(&a->g, b, t, j); /* [B, T, HV, K]: row (b, t, j); [B, T, HV]: row (b, t) */
    if (a->decay == HAE_DECAY_HEAD) raw += j * (int64_t)hae_dtype_size(a->g.dtype);
    hae_to_f32(raw, a->g.dtype, n, g);
    for (int64_t i = 0; i < n; i++) {
        float x = g[i] + bias[i];
        g[i] = a->gate == HAE_GATE_SAFE ? a->lower_bound * sigmoid(A * x) : -A * softplus(x);
    }
}

static float beta_of(const la_ctx *c, int64_t b, int64_t t, int64_t j) {
    const hae_tensor *bt = &c->a->beta;
    return sigmoid(hae_load_f(hae_row_ptr(bt, b, t, 0), bt->dtype, j));
}

/* Mapped q and k of value head j's q/k head, and v, at token (b, t). */
static void load_qkv(const la_ctx *c, int64_t b, int64_t t, int64_t j, float *q, float *k, float *v) {
    const hae_linear_attn_args *a = c->a;
    int64_t h = j / c->G;
    hae_to_f32(hae_row_ptr(&a->q, b, t, h), a->q.dtype, c->K, q);
    hae_to_f32(hae_row_ptr(&a->k, b, t, h), a->k.dtype, c->K, k);
    hae_to_f32(hae_row_ptr(&a->v, b, t, j), a->v.dtype, c->V, v);
    qk_map(q, c->K, a->qk_map);
    qk_map(k, c->K, a->qk_map);
}

/* Sequence n: its batch row and token range. */
static void seq_range(const la_ctx *c, int64_t n, int64_t *b, int64_t *t0, int64_t *t1) {
    if (c->cu) {
        *b = 0, *t0 = c->cu[n], *t1 = c->cu[n + 1];
    } else {
        *b = n, *t0 = 0, *t1 = c->a->q.shape[1];
    }
}

static float *thread_scratch(hae_backend *be) {
    return (float *)((char *)be->scratch + (size_t)hae_threadpool_worker() * be->scratch_per_thread);
}

/* ---------------------------------------------------------------- recurrent form
 * Per token: S = diag(e^g) S; delta: S += k (beta (v - S^T k))^T, else S += k v^T; o = scale S^T q. */

static void recurrent_item(void *p, int64_t item) {
    const la_ctx *c = p;
    const hae_linear_attn_args *a = c->a;
    const int64_t K = c->K, V = c->V, n = item / c->HV, j = item % c->HV;
    const bool channel = a->decay == HAE_DECAY_CHANNEL;
    float *S = (float *)a->state.data + (n * c->HV + j) * K * V;
    float *w = thread_scratch(c->be);
    float *q = w, *k = q + K, *v = k + K, *g = v + V, *u = g + K, *o = u + V;
    int64_t b, t0, t1;
    seq_range(c, n, &b, &t0, &t1);
    for (int64_t t = t0; t < t1; t++) {
        load_qkv(c, b, t, j, q, k, v);
        log_decay(c, b, t, j, g);
        if (a->decay != HAE_DECAY_NONE)
            for (int64_t r = 0; r < K; r++) {
                float d = expf(channel ? g[r] : g[0]);
                for (int64_t x = 0; x < V; x++) S[r * V + x] *= d;
            }
        if (a->delta) {
            float beta = beta_of(c, b, t, j);
            for (int64_t x = 0; x < V; x++) u[x] = v[x];
            for (int64_t r = 0; r < K; r++)
                for (int64_t x = 0; x < V; x++) u[x] -= k[r] * S[r * V + x];
            for (int64_t x = 0; x < V; x++) u[x] *= beta;
        } else {
            memcpy(u, v, sizeof(float) * (size_t)V);
        }
        for (int64_t x = 0; x < V; x++) o[x] = 0.0f;
        for (int64_t r = 0; r < K; r++) {
            float *row = S + r * V;
            for (int64_t x = 0; x < V; x++) {
                row[x] += k[r] * u[x];
                o[x] += q[r] * row[x];
            }
        }
        for (int64_t x = 0; x < V; x++) o[x] *= a->scale;
        hae_from_f32(hae_row_ptr(&a->out, b, t, j), a->out.dtype, o, V);
    }
}

/* ---------------------------------------------------------------- chunked form
 * A chunk of L <= C tokens, state S0 at its start, G_i = g_0 + ... + g_i (per channel or scalar):
 *     A_ij = sum_c k_ic k_jc e^{G_ic - G_jc}   (j < i)      P_ij = sum_c q_ic k_jc e^{G_ic - G_jc}   (j <= i)
 *     delta:  T = (I + diag(beta) A)^{-1} diag(beta)  (the UT transform),  w = T (K o e^G),  U = T V - w S0
 *     else:   U = V
 *     O_i   = scale (S0^T (q_i o e^{G_i}) + sum_{j<=i} P_ij U_j)
 *     S_end = diag(e^{G_last}) S0 + sum_j (k_j o e^{G_last - G_j}) U_j^T
 * Every exponent is a difference of cumulative gates inside the chunk, <= 0: nothing overflows,
 * however long the sequence or strong the gate. */

static size_t chunk_scratch_floats(int64_t C, int64_t K, int64_t V) {
    return (size_t)(5 * C * K + 3 * C * V + 3 * C * C + C + 2 * K);
}

/* e^{G_i - G_j} for key channel r (channel decay) or for the whole row (scalar decays). */
static inline float decay_between(const float *G, int64_t Kg, int64_t i, int64_t j, int64_t r) {
    return expf(G[i * Kg + r] - G[j * Kg + r]);
}

static void chunked_item(void *p, int64_t item) {
    const la_ctx *c = p;
    const hae_linear_attn_args *a = c->a;
    const int64_t K = c->K, V = c->V, C = a->chunk, n = item / c->HV, j = item % c->HV;
    const bool channel = a->decay == HAE_DECAY_CHANNEL, decays = a->decay != HAE_DECAY_NONE;
    const int64_t Kg = channel ? K : 1; /* gate values per token */
    float *S = (float *)a->state.data + (n * c->HV + j) * K * V;
    float *w = thread_scratch(c->be);
    float *Q = w, *Kc = Q + C * K, *G = Kc + C * K, *W = G + C * K, *KG = W + C * K; /* [C, K]; G: [C, Kg] */
    float *Vc = KG + C * K, *U = Vc + C * V, *O = U + C * V;                          /* [C, V] */
    float *A = O + C * V, *P = A + C * C, *T = P + C * C;           /* [C, C] each */
    float *beta = T + C * C, *gq = beta + C, *gk = gq + K;          /* [C], [K], [K] */
    int64_t b, t0, t1;
    seq_range(c, n, &b, &t0, &t1);
    for (int64_t s0 = t0; s0 < t1; s0 += C) {
        const int64_t L = t1 - s0 < C ? t1 - s0 : C;
        for (int64_t i = 0; i < L; i++) {
            load_qkv(c, b, s0 + i, j, Q + i * K, Kc + i * K, Vc + i * V);
            log_decay(c, b, s0 + i, j, G + i * Kg);
            if (i > 0)
                for (int64_t r = 0; r < Kg; r++) G[i * Kg + r] += G[(i - 1) * Kg + r];
            beta[i] = a->delta ? beta_of(c, b, s0 + i, j) : 1.0f;
        }
        /* A (strictly lower) and P (lower, diagonal included). */
        for (int64_t i = 0; i < L; i++)
            for (int64_t jj = 0; jj <= i; jj++) {
                float sa = 0.0f, sp = 0.0f;
                if (channel) {
                    for (int64_t r = 0; r < K; r++) {
                        float kd = Kc[jj * K + r] * decay_between(G, Kg, i, jj, r);
                        sa += Kc[i * K + r] * kd;
                        sp += Q[i * K + r] * kd;
                    }
                } else {
                    float d = decays ? decay_between(G, 1, i, jj, 0) : 1.0f;
                    sa = d * hae_dot_f32(Kc + i * K, Kc + jj * K, K);
                    sp = d * hae_dot_f32(Q + i * K, Kc + jj * K, K);
                }
                A[i * C + jj] = jj < i ? sa : 0.0f;
                P[i * C + jj] = sp;
            }
        if (a->delta) {
            /* T = M^{-1} diag(beta), M = I + diag(beta) A unit lower triangular: row i of M^{-1}
             * by forward substitution, (M^{-1})_ik = [i == k] - beta_i sum_{k <= m < i} A_im (M^{-1})_mk. */
            for (int64_t i = 0; i < L; i++)
                for (int64_t kk = 0; kk <= i; kk++) {
                    float s = 0.0f;
                    for (int64_t m = kk; m < i; m++) s += A[i * C + m] * T[m * C + kk];
                    T[i * C + kk] = (i == kk ? 1.0f : 0.0f) - beta[i] * s;
                }
            for (int64_t i = 0; i < L; i++)
                for (int64_t kk = 0; kk <= i; kk++) T[i * C + kk] *= beta[kk];
            /* W = T (K o e^G); U = T V - W S0. */
            for (int64_t i = 0; i < L; i++)
                for (int64_t r = 0; r < K; r++)
                    KG[i * K + r] = Kc[i * K + r] * (decays ? expf(G[i * Kg + (channel ? r : 0)]) : 1.0f);
            for (int64_t i = 0; i < L; i++) {
                float *wi = W + i * K, *ui = U + i * V;
                memset(wi, 0, sizeof(float) * (size_t)K);
                memset(ui, 0, sizeof(float) * (size_t)V);
                for (int64_t m = 0; m <= i; m++) {
                    float t = T[i * C + m];
                    for (int64_t r = 0; r < K; r++) wi[r] += t * KG[m * K + r];
                    for (int64_t x = 0; x < V; x++) ui[x] += t * Vc[m * V + x];
                }
                for (int64_t r = 0; r < K; r++)
                    for (int64_t x = 0; x < V; x++) ui[x] -= wi[r] * S[r * V + x];
            }
        } else {
            memcpy(U, Vc, sizeof(float) * (size_t)(L * V));
        }
        /* Outputs, before the state moves on. */
        for (int64_t i = 0; i < L; i++) {
            float *oi = O + i * V;
            memset(oi, 0, sizeof(float) * (size_t)V);
            for (int64_t r = 0; r < K; r++) gq[r] = Q[i * K + r] * (decays ? expf(G[i * Kg + (channel ? r : 0)]) : 1.0f);
            for (int64_t r = 0; r < K; r++)
                for (int64_t x = 0; x < V; x++) oi[x] += gq[r] * S[r * V + x];
            for (int64_t m = 0; m <= i; m++)
                for (int64_t x = 0; x < V; x++) oi[x] += P[i * C + m] * U[m * V + x];
            for (int64_t x = 0; x < V; x++) oi[x] *= a->scale;
            hae_from_f32(hae_row_ptr(&a->out, b, s0 + i, j), a->out.dtype, oi, V);
        }
        /* State: decay S0 by the whole chunk, add each token's write decayed from its position. */
        const int64_t last = L - 1;
        if (decays)
            for (int64_t r = 0; r < K; r++) {
                float d = expf(G[last * Kg + (channel ? r : 0)]);
                for (int64_t x = 0; x < V; x++) S[r * V + x] *= d;
            }
        for (int64_t m = 0; m < L; m++) {
            for (int64_t r = 0; r < K; r++)
                gk[r] = Kc[m * K + r] * (decays ? decay_between(G, Kg, last, m, channel ? r : 0) : 1.0f);
            for (int64_t r = 0; r < K; r++)
                for (int64_t x = 0; x < V; x++) S[r * V + x] += gk[r] * U[m * V + x];
        }
    }
}

hae_status hae_linear_attn_cpu(hae_backend *be, const hae_linear_attn_args *a) {
    la_ctx c = {.a = a, .be = be, .H = a->q.shape[2], .HV = a->v.shape[2], .K = a->q.shape[3], .V = a->v.shape[3]};
    c.G = c.HV / c.H;
    c.cu = a->cu_seqlens.data;
    int64_t N = a->state.shape[0];
    size_t need = sizeof(float) * (a->chunk ? chunk_scratch_floats(a->chunk, c.K, c.V) : (size_t)(3 * c.K + 3 * c.V));
    if (need > be->scratch_per_thread)
        return hae_error(HAE_ERR_UNSUPPORTED,
                         "hae_linear_attn (cpu): chunk %d with K %lld and V %lld needs %zu bytes of scratch per thread, "
                         "the backend has %zu (use a smaller chunk)",
                         a->chunk, (long long)c.K, (long long)c.V, need, be->scratch_per_thread);
    const int64_t per_item = (a->cu_seqlens.data ? a->q.shape[1] / N : a->q.shape[1]) * c.K * c.V * 4;
    hae_parallel_for_sized(be->pool, N * c.HV, per_item, a->chunk ? chunked_item : recurrent_item, &c);
    return HAE_OK;
}

/* ---------------------------------------------------------------- short convolution */

typedef struct {
    const hae_conv_short_args *a;
    int64_t C, W, T, blocks;
} conv_ctx;

#define CONV_BLOCK 64

/* One batch row and a block of channels: out_t = act(sum_w weight_w x'_{t+w}), x' = [state, x]. */
static void conv_item(void *p, int64_t item) {
    const conv_ctx *c = p;
    const hae_conv_short_args *a = c->a;
    const int64_t b = item / c->blocks, c0 = (item % c->blocks) * CONV_BLOCK;
    const int64_t nc = c->C - c0 < CONV_BLOCK ? c->C - c0 : CONV_BLOCK, W = c->W;
    const float *wt = (const float *)a->weight.data;
    float *st = (float *)a->state.data + b * (W - 1) * c->C;
    float hist[16][CONV_BLOCK]; /* the last W - 1 inputs of each channel, oldest first */
    float xin[CONV_BLOCK], o[CONV_BLOCK];
    for (int64_t w = 0; w < W - 1; w++) memcpy(hist[w], st + w * c->C + c0, sizeof(float) * (size_t)nc);
    for (int64_t t = 0; t < c->T; t++) {
        hae_to_f32((const char *)hae_row_ptr(&a->x, b, t, 0) + c0 * (int64_t)hae_dtype_size(a->x.dtype), a->x.dtype, nc,
                   xin);
        for (int64_t i = 0; i < nc; i++) {
            const float *wc = wt + (c0 + i) * W;
            float s = wc[W - 1] * xin[i];
            for (int64_t w = 0; w < W - 1; w++) s += wc[w] * hist[w][i];
            o[i] = a->silu ? s * sigmoid(s) : s;
        }
        for (int64_t w = 0; w + 1 < W - 1; w++) memcpy(hist[w], hist[w + 1], sizeof(float) * (size_t)nc);
        if (W > 1) memcpy(hist[W - 2], xin, sizeof(float) * (size_t)nc);
        hae_from_f32((char *)hae_row_ptr(&a->out, b, t, 0) + c0 * (int64_t)hae_dtype_size(a->out.dtype), a->out.dtype, o,
                     nc);
    }
    for (int64_t w = 0; w < W - 1; w++) memcpy(st + w * c->C + c0, hist[w], sizeof(float) * (size_t)nc);
}

hae_status hae_conv_short_cpu(hae_backend *be, const hae_conv_short_args *a) {
    conv_ctx c = {.a = a, .C = a->x.shape[2], .W = a->weight.shape[1], .T = a->x.shape[1]};
    c.blocks = (c.C + CONV_BLOCK - 1) / CONV_BLOCK;
    hae_parallel_for_sized(be->pool, a->x.shape[0] * c.blocks, c.T * CONV_BLOCK * c.W, conv_item, &c);
    return HAE_OK;
}

/* ---------------------------------------------------------------- gated output norm */

typedef struct {
    hae_backend *be;
    const hae_gated_rmsnorm_args *a;
    int64_t H, D;
} gnorm_ctx;

static void gnorm_item(void *p, int64_t item) {
    const gnorm_ctx *c = p;
    const hae_gated_rmsnorm_args *a = c->a;
    const int64_t n = item / c->H, h = item % c->H, D = c->D;
    float *x = thread_scratch(c->be), *g = x + D;
    hae_to_f32(hae_row_ptr(&a->x, n, h, 0), a->x.dtype, D, x);
    hae_to_f32(hae_row_ptr(&a->gate, n, h, 0), a->gate.dtype, D, g);
    double ss = 0.0;
    for (int64_t d = 0; d < D; d++) ss += (double)x[d] * x[d];
    float r = (float)(1.0 / sqrt(ss / (double)D + (double)a->eps));
    const float *wt = a->weight.data;
    for (int64_t d = 0; d < D; d++) x[d] = x[d] * r * wt[d] * sigmoid(g[d]);
    hae_from_f32(hae_row_ptr(&a->out, n, h, 0), a->out.dtype, x, D);
}

hae_status hae_gated_rmsnorm_cpu(hae_backend *be, const hae_gated_rmsnorm_args *a) {
    gnorm_ctx c = {.be = be, .a = a, .H = a->x.shape[1], .D = a->x.shape[2]};
    if (sizeof(float) * 2 * (size_t)c.D > be->scratch_per_thread)
        return hae_error(HAE_ERR_UNSUPPORTED, "hae_gated_rmsnorm (cpu): head dim %lld is too large", (long long)c.D);
    hae_parallel_for_sized(be->pool, a->x.shape[0] * c.H, 8 * c.D, gnorm_item, &c);
    return HAE_OK;
}

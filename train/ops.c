/* The training ops: each op's entry point, which hands a CUDA backend's call to train/dense_cuda.cu,
 * attention_cuda.cu or linear_cuda.cu, and the CPU reference (train_ops.h has their contracts). The forwards
 * compute what hae_model_forward's ops compute, in the same order where it matters for rounding, so a trained
 * model's logits are the engine's. */
#include "train_ops.h"
#ifdef HAE_HAVE_CUDA
#include "train_ops_cuda.h"
#define ON_CUDA(be, call)                                                                          \
    do {                                                                                           \
        if ((be)->device == HAE_CUDA) return call;                                                 \
    } while (0)
#else
#define ON_CUDA(be, call)                                                                          \
    do {                                                                                           \
        if ((be)->device == HAE_CUDA)                                                              \
            return hae_error(HAE_ERR_UNSUPPORTED, "%s: this build has no CUDA", __func__);         \
    } while (0)
#endif

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* ---------------------------------------------------------------- embedding */

hae_status hae_tr_embedding_fwd(hae_backend *be, const int32_t *ids, int64_t N, const float *E, int64_t D, float *x) {
    ON_CUDA(be, hae_tr_embedding_fwd_cuda(be, ids, N, E, D, x));
    for (int64_t i = 0; i < N; i++) memcpy(x + i * D, E + (int64_t)ids[i] * D, sizeof(float) * (size_t)D);
    return HAE_OK;
}

hae_status hae_tr_embedding_bwd(hae_backend *be, const int32_t *ids, int64_t N, const float *dx, int64_t D, float *dE) {
    ON_CUDA(be, hae_tr_embedding_bwd_cuda(be, ids, N, dx, D, dE));
    for (int64_t i = 0; i < N; i++) {
        float *row = dE + (int64_t)ids[i] * D;
        for (int64_t d = 0; d < D; d++) row[d] += dx[i * D + d];
    }
    return HAE_OK;
}

/* ---------------------------------------------------------------- rmsnorm */

typedef struct {
    const float *x, *w, *dy, *rstd;
    float *y, *rstd_out, *dx;
    int64_t D;
    float eps;
} norm_ctx;

/* As hae_rmsnorm: the sum of squares in double, r rounded to f32, y = x r w. */
static void norm_fwd_row(void *p, int64_t i) {
    const norm_ctx *c = p;
    const float *x = c->x + i * c->D;
    double ss = 0.0;
    for (int64_t d = 0; d < c->D; d++) ss += (double)x[d] * (double)x[d];
    float r = (float)(1.0 / sqrt(ss / (double)c->D + (double)c->eps));
    c->rstd_out[i] = r;
    float *y = c->y + i * c->D;
    for (int64_t d = 0; d < c->D; d++) y[d] = x[d] * r * c->w[d];
}

hae_status hae_tr_rmsnorm_fwd(hae_backend *be, const float *x, const float *w, int64_t N, int64_t D, float eps,
                              float *y, float *rstd) {
    ON_CUDA(be, hae_tr_rmsnorm_fwd_cuda(be, x, w, N, D, eps, y, rstd));
    norm_ctx c = {.x = x, .w = w, .y = y, .rstd_out = rstd, .D = D, .eps = eps};
    hae_parallel_for_sized(be->pool, N, 4 * D, norm_fwd_row, &c);
    return HAE_OK;
}

static void norm_bwd_row(void *p, int64_t i) {
    const norm_ctx *c = p;
    const int64_t D = c->D;
    const float *x = c->x + i * D, *dy = c->dy + i * D;
    const double r = c->rstd[i];
    double s = 0.0;
    for (int64_t d = 0; d < D; d++) s += (double)dy[d] * (double)c->w[d] * (double)x[d];
    const float a = (float)r, b = (float)(r * r * r * s / (double)D);
    float *dx = c->dx + i * D;
    for (int64_t d = 0; d < D; d++) dx[d] += a * dy[d] * c->w[d] - b * x[d];
}

#define NORM_COLS 64

hae_status hae_tr_rmsnorm_bwd(hae_backend *be, const float *x, const float *w, const float *rstd, const float *dy,
                              int64_t N, int64_t D, float *dx, float *dw) {
    ON_CUDA(be, hae_tr_rmsnorm_bwd_cuda(be, x, w, rstd, dy, N, D, dx, dw));
    norm_ctx c = {.x = x, .w = w, .dy = dy, .rstd = rstd, .dx = dx, .D = D};
    hae_parallel_for_sized(be->pool, N, 6 * D, norm_bwd_row, &c);
    /* dw: a column block's sums over every row in double, on this thread (N D products) */
    for (int64_t c0 = 0; c0 < D; c0 += NORM_COLS) {
        const int64_t n = min64(NORM_COLS, D - c0);
        double acc[NORM_COLS] = {0};
        for (int64_t i = 0; i < N; i++)
            for (int64_t k = 0; k < n; k++) acc[k] += (double)dy[i * D + c0 + k] * (double)x[i * D + c0 + k] * rstd[i];
        for (int64_t k = 0; k < n; k++) dw[c0 + k] += (float)acc[k];
    }
    return HAE_OK;
}

/* ---------------------------------------------------------------- linear
 * The forward is the engine's GEMM. The backward's two products run as rank-1 updates along contiguous rows, four
 * at a time (one load and store of the accumulator row per four products), so neither needs a transposed copy:
 *     dx[n, :] (+)= sum_o dy[n, o] W[o, :]        an item per block of rows n
 *     dW[o, :]   += sum_n dy[n, o] x[n, :]        an item per block of rows o, n in order */

#define LIN_ROWS 8

static hae_tensor mat(const float *p, int64_t rows, int64_t cols) {
    return hae_tensor_2d((void *)p, HAE_F32, HAE_CPU, rows, cols);
}

/* bf16 products on the CPU: the operands rounded into copies, then the fp32 path (a bf16 x bf16 product is exact in
 * fp32, so only the order of the sums differs from the GPU's tensor cores). dst[i] is NULL where src[i] is; the
 * copies share one block, *block (the caller frees it). */
static hae_status bf16_copies(int n, const float *const *src, const int64_t *len, float **dst, float **block) {
    int64_t total = 0;
    for (int i = 0; i < n; i++) total += src[i] ? len[i] : 0;
    float *p = *block = malloc(sizeof(float) * (size_t)(total ? total : 1));
    if (!p) return hae_error(HAE_ERR_OOM, "bf16 products: %lld floats of rounded operands", (long long)total);
    for (int i = 0; i < n; i++) {
        dst[i] = src[i] ? p : NULL;
        for (int64_t k = 0; src[i] && k < len[i]; k++) p[k] = hae_bf16_to_f32(hae_f32_to_bf16(src[i][k]));
        p += src[i] ? len[i] : 0;
    }
    return HAE_OK;
}

static hae_status check_mm(hae_dtype mm, const char *op) {
    if (mm == HAE_F32 || mm == HAE_BF16) return HAE_OK;
    return hae_error(HAE_ERR_INVALID, "%s: products in %s (expected f32 or bf16)", op, hae_dtype_name(mm));
}

hae_status hae_tr_linear_fwd(hae_backend *be, hae_dtype mm, const float *x, const float *W, int64_t N, int64_t I,
                             int64_t O, float *y, bool accumulate) {
    HAE_TRY(check_mm(mm, "hae_tr_linear_fwd"));
    ON_CUDA(be, hae_tr_linear_fwd_cuda(be, mm, x, W, N, I, O, y, accumulate));
    float *r[2] = {NULL, NULL}, *block = NULL;
    if (mm == HAE_BF16) HAE_TRY(bf16_copies(2, (const float *const[]){x, W}, (const int64_t[]){N * I, O * I}, r, &block));
    hae_status st = hae_gemm(be, &(hae_gemm_args){.a = mat(r[0] ? r[0] : x, N, I), .b = mat(r[1] ? r[1] : W, O, I),
                                                  .c = mat(y, N, O), .accumulate = accumulate});
    free(block);
    return st;
}

/* acc[0..n) += sum_k a[k * sa] src[k][0..n) over K rows src[k] = base + k * ld */
static void axpy_rows(float *restrict acc, const float *a, int64_t sa, const float *base, int64_t ld, int64_t K,
                      int64_t n) {
    int64_t k = 0;
    for (; k + 4 <= K; k += 4) {
        const float a0 = a[k * sa], a1 = a[(k + 1) * sa], a2 = a[(k + 2) * sa], a3 = a[(k + 3) * sa];
        const float *restrict s0 = base + k * ld, *restrict s1 = s0 + ld, *restrict s2 = s1 + ld, *restrict s3 = s2 + ld;
        for (int64_t i = 0; i < n; i++) acc[i] += a0 * s0[i] + a1 * s1[i] + a2 * s2[i] + a3 * s3[i];
    }
    for (; k < K; k++) {
        const float ak = a[k * sa], *restrict s0 = base + k * ld;
        for (int64_t i = 0; i < n; i++) acc[i] += ak * s0[i];
    }
}

typedef struct {
    const float *x, *W, *dy;
    float *dx, *dW;
    int64_t N, I, O;
    bool accumulate;
} lin_ctx;

static void lin_dx_block(void *p, int64_t blk) {
    const lin_ctx *c = p;
    const int64_t n1 = blk * LIN_ROWS + LIN_ROWS < c->N ? blk * LIN_ROWS + LIN_ROWS : c->N;
    for (int64_t n = blk * LIN_ROWS; n < n1; n++) {
        float *dx = c->dx + n * c->I;
        if (!c->accumulate) memset(dx, 0, sizeof(float) * (size_t)c->I);
        axpy_rows(dx, c->dy + n * c->O, 1, c->W, c->I, c->O, c->I);
    }
}

static void lin_dw_block(void *p, int64_t blk) {
    const lin_ctx *c = p;
    const int64_t o1 = blk * LIN_ROWS + LIN_ROWS < c->O ? blk * LIN_ROWS + LIN_ROWS : c->O;
    for (int64_t o = blk * LIN_ROWS; o < o1; o++) axpy_rows(c->dW + o * c->I, c->dy + o, c->O, c->x, c->I, c->N, c->I);
}

hae_status hae_tr_linear_bwd(hae_backend *be, hae_dtype mm, const float *x, const float *W, const float *dy, int64_t N,
                             int64_t I, int64_t O, float *dx, bool dx_accumulate, float *dW) {
    HAE_TRY(check_mm(mm, "hae_tr_linear_bwd"));
    ON_CUDA(be, hae_tr_linear_bwd_cuda(be, mm, x, W, dy, N, I, O, dx, dx_accumulate, dW));
    float *r[3] = {NULL, NULL, NULL}, *block = NULL;
    if (mm == HAE_BF16)
        HAE_TRY(bf16_copies(3, (const float *const[]){x, dx ? W : NULL, dy}, (const int64_t[]){N * I, O * I, N * O}, r,
                            &block));
    lin_ctx c = {r[0] ? r[0] : x, r[1] ? r[1] : W, r[2] ? r[2] : dy, dx, dW, N, I, O, dx_accumulate};
    if (dx) hae_parallel_for_sized(be->pool, (N + LIN_ROWS - 1) / LIN_ROWS, 2 * LIN_ROWS * I * O, lin_dx_block, &c);
    hae_parallel_for_sized(be->pool, (O + LIN_ROWS - 1) / LIN_ROWS, 2 * LIN_ROWS * I * N, lin_dw_block, &c);
    free(block);
    return HAE_OK;
}

/* ---------------------------------------------------------------- rope */

void hae_tr_rope_table(int64_t T, int rot_dims, float theta, float *cs, float *sn) {
    const int half = rot_dims / 2;
    for (int64_t t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            float inv_freq = 1.0f / powf(theta, (float)(2 * i) / (float)rot_dims), ang = (float)t * inv_freq;
            cs[t * half + i] = cosf(ang);
            sn[t * half + i] = sinf(ang);
        }
}

typedef struct {
    float *x;
    int64_t T, H, D, ld;
    int half;
    const float *cs, *sn;
    float sign;
} rope_ctx;

static void rope_row(void *p, int64_t r) {
    const rope_ctx *c = p;
    const int64_t t = r % c->T;
    const float *cs = c->cs + t * c->half, *sn = c->sn + t * c->half;
    for (int64_t h = 0; h < c->H; h++) {
        float *x = c->x + r * c->ld + h * c->D;
        for (int i = 0; i < c->half; i++) {
            const float x1 = x[i], x2 = x[i + c->half], s = c->sign * sn[i];
            x[i] = x1 * cs[i] - x2 * s;
            x[i + c->half] = x2 * cs[i] + x1 * s;
        }
    }
}

hae_status hae_tr_rope(hae_backend *be, float *x, int64_t B, int64_t T, int64_t H, int64_t D, int64_t ld, int rot_dims,
                       const float *cs, const float *sn, bool inverse) {
    ON_CUDA(be, hae_tr_rope_cuda(be, x, B, T, H, D, ld, rot_dims, cs, sn, inverse));
    if (rot_dims == 0) return HAE_OK;
    rope_ctx c = {x, T, H, D, ld, rot_dims / 2, cs, sn, inverse ? -1.0f : 1.0f};
    hae_parallel_for_sized(be->pool, B * T, 4 * H * rot_dims, rope_row, &c);
    return HAE_OK;
}

/* ---------------------------------------------------------------- attention */

typedef struct {
    const hae_tr_attn_shape *s;
    const float *qkv, *P, *out, *dout;
    float *Pw, *outw, *dqkv;
} attn_ctx;

static int64_t v_dim(const hae_tr_attn_shape *s) { return s->Dv > 0 ? s->Dv : s->Dh; }
static int64_t ld_qkv(const hae_tr_attn_shape *s) { return (s->Hq + s->Hkv) * s->Dh + s->Hkv * v_dim(s); }
static int64_t first_key(const hae_tr_attn_shape *s, int64_t t) {
    return s->window > 0 && t - s->window + 1 > 0 ? t - s->window + 1 : 0;
}

/* One (sequence, query head): every query's row of P, then its output. */
static void attn_fwd_item(void *p, int64_t item) {
    const attn_ctx *c = p;
    const hae_tr_attn_shape *s = c->s;
    const int64_t T = s->T, Dh = s->Dh, Dv = v_dim(s), ld = ld_qkv(s), b = item / s->Hq, h = item % s->Hq;
    const int64_t g = h / (s->Hq / s->Hkv);
    const float *base = c->qkv + b * T * ld;
    const float *kcol = base + (s->Hq + g) * Dh, *vcol = base + (s->Hq + s->Hkv) * Dh + g * Dv;
    for (int64_t t = 0; t < T; t++) {
        const float *q = base + t * ld + h * Dh;
        float *P = c->Pw + ((b * s->Hq + h) * T + t) * T;
        const int64_t lo = first_key(s, t);
        const uint8_t *allow = s->allow ? s->allow + (b * T + t) * T : NULL;
        float mx = -INFINITY;
        for (int64_t j = lo; j <= t; j++) {
            if (allow && !allow[j]) continue;
            P[j] = s->scale * hae_dot_f32(q, kcol + j * ld, Dh);
            mx = P[j] > mx ? P[j] : mx;
        }
        double sum = 0.0;
        for (int64_t j = lo; j <= t; j++) {
            if (allow && !allow[j]) continue;
            P[j] = expf(P[j] - mx);
            sum += P[j];
        }
        const float inv = (float)(1.0 / sum);
        for (int64_t j = 0; j < T; j++) P[j] = j >= lo && j <= t && (!allow || allow[j]) ? P[j] * inv : 0.0f;
        float *o = c->outw + (b * T + t) * s->Hq * Dv + h * Dv;
        memset(o, 0, sizeof(float) * (size_t)Dv);
        for (int64_t j = lo; j <= t; j++) {
            const float pj = P[j], *v = vcol + j * ld;
            for (int64_t d = 0; d < Dv; d++) o[d] += pj * v[d];
        }
    }
}

hae_status hae_tr_attention_fwd(hae_backend *be, const hae_tr_attn_shape *s, const float *qkv, float *P, float *out) {
    ON_CUDA(be, hae_tr_attention_fwd_cuda(be, s, qkv, P, out));
    attn_ctx c = {.s = s, .qkv = qkv, .Pw = P, .outw = out};
    hae_parallel_for_sized(be->pool, s->B * s->Hq, s->T * s->T * s->Dh, attn_fwd_item, &c);
    return HAE_OK;
}

/* One (sequence, kv head): its key and value gradients sum over the query heads reading it, so one item owns
 * them (and those heads' query gradients). */
static void attn_bwd_item(void *p, int64_t item) {
    const attn_ctx *c = p;
    const hae_tr_attn_shape *s = c->s;
    const int64_t T = s->T, Dh = s->Dh, Dv = v_dim(s), ld = ld_qkv(s), G = s->Hq / s->Hkv, b = item / s->Hkv;
    const int64_t g = item % s->Hkv, od = s->Hq * Dv, kc = (s->Hq + g) * Dh, vc = (s->Hq + s->Hkv) * Dh + g * Dv;
    const float *base = c->qkv + b * T * ld;
    float *dbase = c->dqkv + b * T * ld;
    for (int64_t t = 0; t < T; t++) {
        memset(dbase + t * ld + kc, 0, sizeof(float) * (size_t)Dh);
        memset(dbase + t * ld + vc, 0, sizeof(float) * (size_t)Dv);
    }
    for (int64_t h = g * G; h < (g + 1) * G; h++)
        for (int64_t t = 0; t < T; t++) {
            const float *P = c->P + ((b * s->Hq + h) * T + t) * T, *q = base + t * ld + h * Dh;
            const float *dout = c->dout + (b * T + t) * od + h * Dv, *o = c->out + (b * T + t) * od + h * Dv;
            float *dq = dbase + t * ld + h * Dh;
            memset(dq, 0, sizeof(float) * (size_t)Dh);
            const float rowsum = hae_dot_f32(dout, o, Dv);
            for (int64_t j = first_key(s, t); j <= t; j++) {
                if (P[j] == 0.0f) continue; /* contributes exactly nothing */
                const float *k = base + j * ld + kc, *v = base + j * ld + vc;
                float *dk = dbase + j * ld + kc, *dv = dbase + j * ld + vc;
                const float ds = P[j] * (hae_dot_f32(dout, v, Dv) - rowsum) * s->scale, pj = P[j];
                for (int64_t d = 0; d < Dh; d++) {
                    dq[d] += ds * k[d];
                    dk[d] += ds * q[d];
                }
                for (int64_t d = 0; d < Dv; d++) dv[d] += pj * dout[d];
            }
        }
}

hae_status hae_tr_attention_bwd(hae_backend *be, const hae_tr_attn_shape *s, const float *qkv, const float *P,
                                const float *out, const float *dout, float *dqkv) {
    ON_CUDA(be, hae_tr_attention_bwd_cuda(be, s, qkv, P, out, dout, dqkv));
    attn_ctx c = {.s = s, .qkv = qkv, .P = P, .out = out, .dout = dout, .dqkv = dqkv};
    hae_parallel_for_sized(be->pool, s->B * s->Hkv, 2 * s->T * s->T * s->Dh * (s->Hq / s->Hkv), attn_bwd_item, &c);
    return HAE_OK;
}

/* ---------------------------------------------------------------- swiglu */

typedef struct {
    const float *gu, *da;
    float *a, *dgu;
    int64_t F;
} swiglu_ctx;

static void swiglu_fwd_row(void *p, int64_t i) {
    const swiglu_ctx *c = p;
    const float *g = c->gu + i * 2 * c->F, *u = g + c->F;
    float *a = c->a + i * c->F;
    for (int64_t f = 0; f < c->F; f++) a[f] = g[f] / (1.0f + expf(-g[f])) * u[f];
}

static void swiglu_bwd_row(void *p, int64_t i) {
    const swiglu_ctx *c = p;
    const float *g = c->gu + i * 2 * c->F, *u = g + c->F, *da = c->da + i * c->F;
    float *dg = c->dgu + i * 2 * c->F, *du = dg + c->F;
    for (int64_t f = 0; f < c->F; f++) {
        const float sg = 1.0f / (1.0f + expf(-g[f]));
        dg[f] = da[f] * u[f] * sg * (1.0f + g[f] * (1.0f - sg));
        du[f] = da[f] * g[f] * sg;
    }
}

hae_status hae_tr_swiglu_fwd(hae_backend *be, const float *gu, int64_t N, int64_t F, float *a) {
    ON_CUDA(be, hae_tr_swiglu_fwd_cuda(be, gu, N, F, a));
    swiglu_ctx c = {.gu = gu, .a = a, .F = F};
    hae_parallel_for_sized(be->pool, N, 8 * F, swiglu_fwd_row, &c);
    return HAE_OK;
}

hae_status hae_tr_swiglu_bwd(hae_backend *be, const float *gu, const float *da, int64_t N, int64_t F, float *dgu) {
    ON_CUDA(be, hae_tr_swiglu_bwd_cuda(be, gu, da, N, F, dgu));
    swiglu_ctx c = {.gu = gu, .da = da, .dgu = dgu, .F = F};
    hae_parallel_for_sized(be->pool, N, 12 * F, swiglu_bwd_row, &c);
    return HAE_OK;
}

/* ---------------------------------------------------------------- cross-entropy */

hae_status hae_tr_xent(hae_backend *be, const float *z, const int32_t *target, int64_t S, int64_t V, float scale,
                       float *dz, uint8_t *correct, double *loss) {
    ON_CUDA(be, hae_tr_xent_cuda(be, z, target, S, V, scale, dz, correct, loss));
    double total = 0.0;
    for (int64_t r = 0; r < S; r++) {
        const float *zr = z + r * V;
        int64_t best = 0;
        float mx = -INFINITY;
        for (int64_t v = 0; v < V; v++)
            if (zr[v] > mx) mx = zr[v], best = v; /* strict: the lower id wins ties */
        double sum = 0.0;
        for (int64_t v = 0; v < V; v++) sum += exp((double)zr[v] - (double)mx);
        const double lse = (double)mx + log(sum);
        const int32_t y = target[r];
        total += lse - (double)zr[y];
        if (correct) correct[r] = best == y;
        float *dr = dz ? dz + r * V : NULL;
        for (int64_t v = 0; dr && v < V; v++) dr[v] = scale * (float)(exp((double)zr[v] - lse) - (v == y ? 1.0 : 0.0));
    }
    *loss = total;
    return HAE_OK;
}

/* ---------------------------------------------------------------- data movement and small maps */

hae_status hae_tr_copy_cols(hae_backend *be, const hae_tr_cols *c) {
    ON_CUDA(be, hae_tr_copy_cols_cuda(be, c));
    for (int64_t i = 0; i < c->N; i++) {
        float *d = c->dst + i * c->ld_dst + c->dst_off;
        const float *x = c->src + i * c->ld_src + c->src_off;
        if (c->add) {
            for (int64_t j = 0; j < c->n; j++) d[j] += x[j];
        } else {
            memcpy(d, x, sizeof(float) * (size_t)c->n);
        }
    }
    return HAE_OK;
}

hae_status hae_tr_gather_rows(hae_backend *be, const float *src, const int64_t *idx, int64_t n, int64_t D, float *dst) {
    ON_CUDA(be, hae_tr_gather_rows_cuda(be, src, idx, n, D, dst));
    for (int64_t i = 0; i < n; i++) memcpy(dst + i * D, src + idx[i] * D, sizeof(float) * (size_t)D);
    return HAE_OK;
}

hae_status hae_tr_scatter_add_rows(hae_backend *be, const float *src, const int64_t *idx, int64_t n, int64_t D,
                                   float *dst) {
    ON_CUDA(be, hae_tr_scatter_add_rows_cuda(be, src, idx, n, D, dst));
    for (int64_t i = 0; i < n; i++)
        for (int64_t k = 0; k < D; k++) dst[idx[i] * D + k] += src[i * D + k];
    return HAE_OK;
}

hae_status hae_tr_map_fwd(hae_backend *be, hae_tr_map f, const float *x, int64_t n, float *y) {
    ON_CUDA(be, hae_tr_map_fwd_cuda(be, f, x, n, y));
    for (int64_t i = 0; i < n; i++)
        y[i] = f == HAE_TR_SIGMOID ? 1.0f / (1.0f + expf(-x[i])) : x[i] > 0.0f ? x[i] + 1.0f : expf(x[i]);
    return HAE_OK;
}

hae_status hae_tr_map_bwd(hae_backend *be, hae_tr_map f, const float *x, const float *dy, int64_t n, float *dx) {
    ON_CUDA(be, hae_tr_map_bwd_cuda(be, f, x, dy, n, dx));
    for (int64_t i = 0; i < n; i++)
        dx[i] = dy[i] * (f == HAE_TR_SIGMOID ? x[i] * (1.0f - x[i]) : x[i] > 0.0f ? 1.0f : expf(x[i]));
    return HAE_OK;
}

hae_status hae_tr_fixed_decay_fwd(hae_backend *be, const float *A_log, int64_t N, int64_t HV, float *g) {
    ON_CUDA(be, hae_tr_fixed_decay_fwd_cuda(be, A_log, N, HV, g));
    for (int64_t i = 0; i < N * HV; i++) g[i] = -expf(A_log[i % HV]);
    return HAE_OK;
}

hae_status hae_tr_fixed_decay_bwd(hae_backend *be, const float *g, const float *dg, int64_t N, int64_t HV,
                                  float *dA_log) {
    ON_CUDA(be, hae_tr_fixed_decay_bwd_cuda(be, g, dg, N, HV, dA_log));
    for (int64_t j = 0; j < HV; j++) {
        double acc = 0.0;
        for (int64_t i = 0; i < N; i++) acc += (double)dg[i * HV + j] * (double)g[i * HV + j];
        dA_log[j] += (float)acc;
    }
    return HAE_OK;
}

/* ---------------------------------------------------------------- the optimiser */

hae_status hae_tr_sumsq(hae_backend *be, const float *x, int64_t n, double *out) {
    ON_CUDA(be, hae_tr_sumsq_cuda(be, x, n, out));
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++) ss += (double)x[i] * (double)x[i];
    *out = ss;
    return HAE_OK;
}

hae_status hae_tr_adamw(hae_backend *be, const hae_tr_adamw_args *a, float *w, const float *g, float *m, float *v,
                        int64_t n) {
    ON_CUDA(be, hae_tr_adamw_cuda(be, a, w, g, m, v, n));
    for (int64_t i = 0; i < n; i++) {
        const float gi = g[i] * a->gscale;
        m[i] = a->b1 * m[i] + (1.0f - a->b1) * gi;
        v[i] = a->b2 * v[i] + (1.0f - a->b2) * gi * gi;
        w[i] *= a->decay;
        w[i] -= a->step_size * m[i] / (sqrtf(v[i]) / a->c2 + a->eps);
    }
    return HAE_OK;
}

/* ---------------------------------------------------------------- the linear family's recurrence */

typedef struct {
    const hae_tr_delta_shape *s;
    const float *q, *k, *v, *g, *beta, *dout;
    float *Sw, *o, *dq, *dk, *dv, *dg, *dbeta;
    double *scratch; /* per (sequence, head): the backward's delta_scratch doubles, or the chunk form's chunk_scratch */
} delta_ctx;

/* dS, S'_t, a_t, du and v_t - S'_t^T k_t */
static int64_t delta_scratch(const hae_tr_delta_shape *s) { return 2 * s->K * s->V + s->K + 2 * s->V; }

/* Row (b, t, h) of a [B, T, H, w] tensor. */
static int64_t bth(const hae_tr_delta_shape *s, int64_t b, int64_t t, int64_t h) { return (b * s->T + t) * s->H + h; }

/* a_t's channel i (1 without decay). */
static double decay_at(const delta_ctx *c, int64_t row, int64_t i) {
    if (!c->g) return 1.0;
    return exp((double)(c->s->channel_decay ? c->g[row * c->s->K + i] : c->g[row]));
}

/* Checkpointing: C when 1 < C < T, else 0 (every state kept). */
static int64_t ckpt_every(const hae_tr_delta_shape *s) { return s->every > 1 && s->every < s->T ? s->every : 0; }

int64_t hae_tr_delta_slots(const hae_tr_delta_shape *s) {
    if (s->chunk > 0) return (s->T + s->chunk - 1) / s->chunk;
    const int64_t C = ckpt_every(s);
    return C ? (s->T + C - 1) / C + C : s->T;
}

/* State t of one (sequence, head)'s slots: slot t, or with checkpoints the chunk buffer's slot t mod C. */
static float *state_at(const hae_tr_delta_shape *s, float *S, int64_t t) {
    const int64_t C = ckpt_every(s), KV = s->K * s->V;
    return C ? S + ((s->T + C - 1) / C + t % C) * KV : S + t * KV;
}

/* S_t of row r from S_{t-1} (prev; NULL at t = 0): S'_t = diag(a_t) S_{t-1} rounded to f32, then the update. */
static void delta_step(const delta_ctx *c, int64_t r, const float *prev, float *St) {
    const int64_t K = c->s->K, V = c->s->V;
    const float *kt = c->k + r * K, *vt = c->v + r * V;
    for (int64_t i = 0; i < K; i++) {
        const double a = decay_at(c, r, i);
        for (int64_t j = 0; j < V; j++) St[i * V + j] = prev ? (float)(a * prev[i * V + j]) : 0.0f;
    }
    for (int64_t j = 0; j < V; j++) {
        double u = vt[j];
        if (c->beta) {
            double sk = 0;
            for (int64_t i = 0; i < K; i++) sk += (double)St[i * V + j] * kt[i];
            u = c->beta[r] * (vt[j] - sk);
        }
        for (int64_t i = 0; i < K; i++) St[i * V + j] = (float)(St[i * V + j] + kt[i] * u);
    }
}

/* One (sequence, head): every state in order, each chunk's last also to its checkpoint slot. */
static void delta_fwd_item(void *p, int64_t item) {
    const delta_ctx *c = p;
    const hae_tr_delta_shape *s = c->s;
    const int64_t b = item / s->H, h = item % s->H, K = s->K, V = s->V, KV = K * V, C = ckpt_every(s);
    float *S = c->Sw + item * hae_tr_delta_slots(s) * KV;
    for (int64_t t = 0; t < s->T; t++) {
        const int64_t r = bth(s, b, t, h);
        float *St = state_at(s, S, t);
        delta_step(c, r, t ? state_at(s, S, t - 1) : NULL, St);
        if (C && ((t + 1) % C == 0 || t + 1 == s->T)) memcpy(S + t / C * KV, St, sizeof(float) * (size_t)KV);
        const float *qt = c->q + r * K;
        float *ot = c->o + r * V;
        for (int64_t j = 0; j < V; j++) {
            double acc = 0;
            for (int64_t i = 0; i < K; i++) acc += (double)St[i * V + j] * qt[i];
            ot[j] = (float)(s->scale * acc);
        }
    }
}

/* One (sequence, head), backwards in time, a chunk at a time (the whole sequence without checkpoints): its states
 * recomputed from the checkpoint before it, then walked back; dS lives in double. */
static void delta_bwd_item(void *p, int64_t item) {
    const delta_ctx *c = p;
    const hae_tr_delta_shape *s = c->s;
    const int64_t b = item / s->H, h = item % s->H, K = s->K, V = s->V, KV = K * V, C = ckpt_every(s);
    const int64_t L = C ? C : s->T; /* chunk length */
    if (s->T == 0) return;
    float *S = c->Sw + item * hae_tr_delta_slots(s) * KV;
    double *dS = c->scratch + item * delta_scratch(s);
    memset(dS, 0, sizeof(double) * (size_t)KV);
    double *Sp = dS + KV, *a = Sp + KV, *du = a + K, *res = du + V; /* S'_t, a_t, du, v_t - S'_t^T k_t */
    for (int64_t c0 = (s->T - 1) / L * L; c0 >= 0; c0 -= L) {
        const int64_t c1 = c0 + L < s->T ? c0 + L : s->T;
        const float *before = c0 ? (C ? S + (c0 / C - 1) * KV : state_at(s, S, c0 - 1)) : NULL;
        for (int64_t t = c0; C && t < c1; t++)
            delta_step(c, bth(s, b, t, h), t > c0 ? state_at(s, S, t - 1) : before, state_at(s, S, t));
        for (int64_t t = c1 - 1; t >= c0; t--) {
            const int64_t r = bth(s, b, t, h);
            const float *qt = c->q + r * K, *kt = c->k + r * K, *vt = c->v + r * V, *dot = c->dout + r * V;
            const float *St = state_at(s, S, t), *prev = t > c0 ? state_at(s, S, t - 1) : before;
            for (int64_t i = 0; i < K; i++) {
                a[i] = decay_at(c, r, i);
                for (int64_t j = 0; j < V; j++) Sp[i * V + j] = prev ? a[i] * prev[i * V + j] : 0.0;
            }
            for (int64_t i = 0; i < K; i++) {
                double dqi = 0;
                for (int64_t j = 0; j < V; j++) {
                    dS[i * V + j] += s->scale * qt[i] * dot[j];
                    dqi += (double)St[i * V + j] * dot[j];
                }
                c->dq[r * K + i] = (float)(s->scale * dqi);
            }
            const double bt = c->beta ? c->beta[r] : 1.0;
            for (int64_t j = 0; j < V; j++) {
                double d = 0, sk = 0;
                for (int64_t i = 0; i < K; i++) d += dS[i * V + j] * kt[i], sk += Sp[i * V + j] * kt[i];
                du[j] = d;
                res[j] = c->beta ? vt[j] - sk : vt[j]; /* u = beta res */
                c->dv[r * V + j] = (float)(bt * d);
            }
            if (c->beta) {
                double db = 0;
                for (int64_t j = 0; j < V; j++) db += du[j] * res[j];
                c->dbeta[r] = (float)db;
            }
            for (int64_t i = 0; i < K; i++) {
                double dki = 0;
                for (int64_t j = 0; j < V; j++) {
                    dki += dS[i * V + j] * bt * res[j];
                    if (c->beta) dki -= bt * Sp[i * V + j] * du[j];
                }
                c->dk[r * K + i] = (float)dki;
            }
            if (c->beta) /* dS' = dS - beta k du^T */
                for (int64_t i = 0; i < K; i++)
                    for (int64_t j = 0; j < V; j++) dS[i * V + j] -= bt * kt[i] * du[j];
            /* S'_t = diag(a) S_{t-1}: the gate's gradient, then dS for step t - 1 */
            double dg_head = 0;
            for (int64_t i = 0; i < K; i++) {
                double acc = 0;
                for (int64_t j = 0; j < V; j++) acc += dS[i * V + j] * (prev ? prev[i * V + j] : 0.0);
                if (c->g && s->channel_decay) c->dg[r * K + i] = (float)(a[i] * acc);
                dg_head += a[i] * acc;
                for (int64_t j = 0; j < V; j++) dS[i * V + j] *= a[i];
            }
            if (c->g && !s->channel_decay) c->dg[r] = (float)dg_head;
        }
    }
}

/* ---------------------------------------------------------------- the recurrence's chunk form */

/* train_ops.h states the math; here it runs in double per (sequence, head), the states rounded to f32 in S. The
 * forward starts each chunk from the f32 state the chunk before left, so the backward, starting from the same
 * slot, recomputes exactly the forward's u. */

/* Chunk length: chunk, or T when a single chunk covers the sequence. */
static int64_t chunk_len(const hae_tr_delta_shape *s) { return min64(s->chunk, s->T); }

/* One chunk's working set, carved from the item's scratch: S0 and dS [K, V]; Γ, e^Γ, e^{Γ_L - Γ}, and the
 * backward's dΓ, dq, dk [C, K]; beta [C]; z, u, du and w [C, V]; A, P, dA, dP [C, C] (row i, column j <= i). */
typedef struct {
    double *S0, *dS, *gam, *eg, *eh, *dgam, *dq, *dk, *bet, *z, *u, *du, *w, *A, *P, *dA, *dP;
} chunk_work;

static int64_t chunk_scratch(const hae_tr_delta_shape *s) {
    const int64_t C = chunk_len(s);
    return 2 * s->K * s->V + C * (6 * s->K + 1 + 4 * s->V + 4 * C);
}

static chunk_work chunk_carve(const hae_tr_delta_shape *s, double *p) {
    const int64_t C = chunk_len(s), KV = s->K * s->V, CK = C * s->K, CV = C * s->V, CC = C * C;
    chunk_work w;
    double **part[] = {&w.S0, &w.dS, &w.gam, &w.eg, &w.eh, &w.dgam, &w.dq, &w.dk, &w.bet,
                       &w.z,  &w.u,  &w.du,  &w.w,  &w.A,  &w.P,    &w.dA, &w.dP};
    const int64_t len[] = {KV, KV, CK, CK, CK, CK, CK, CK, C, CV, CV, CV, CV, CC, CC, CC, CC};
    for (size_t i = 0; i < sizeof len / sizeof *len; i++) *part[i] = p, p += len[i];
    return w;
}

/* E_ijc = e^{Γ_ic - Γ_jc}: from the difference, which stays finite where e^Γ alone would underflow. */
static double chunk_E(const chunk_work *w, int64_t K, int64_t i, int64_t j, int64_t ch) {
    return exp(w->gam[i * K + ch] - w->gam[j * K + ch]);
}

/* For the n tokens from t0 of item (b, h), with w->S0 set: Γ, e^Γ, e^{Γ_L - Γ}, beta, A, P, and with the delta rule
 * z = V - K~ S0 and u by forward substitution in M u = diag(beta) z (u = V without it). */
static void chunk_prep(const delta_ctx *c, int64_t b, int64_t h, int64_t t0, int64_t n, const chunk_work *w) {
    const hae_tr_delta_shape *s = c->s;
    const int64_t K = s->K, V = s->V, C = chunk_len(s), L = n - 1;
    for (int64_t i = 0; i < n; i++) {
        const int64_t r = bth(s, b, t0 + i, h);
        for (int64_t ch = 0; ch < K; ch++) {
            const double gl = !c->g ? 0.0 : s->channel_decay ? c->g[r * K + ch] : c->g[r];
            w->gam[i * K + ch] = (i ? w->gam[(i - 1) * K + ch] : 0.0) + gl;
            w->eg[i * K + ch] = exp(w->gam[i * K + ch]);
        }
        w->bet[i] = c->beta ? c->beta[r] : 1.0;
    }
    for (int64_t i = 0; i < n; i++)
        for (int64_t ch = 0; ch < K; ch++) w->eh[i * K + ch] = exp(w->gam[L * K + ch] - w->gam[i * K + ch]);
    for (int64_t i = 0; i < n; i++) {
        const int64_t r = bth(s, b, t0 + i, h);
        const float *qi = c->q + r * K, *ki = c->k + r * K, *vi = c->v + r * V;
        for (int64_t j = 0; j <= i; j++) {
            const float *kj = c->k + bth(s, b, t0 + j, h) * K;
            double a = 0, pq = 0;
            for (int64_t ch = 0; ch < K; ch++) {
                const double e = chunk_E(w, K, i, j, ch);
                a += (double)ki[ch] * kj[ch] * e;
                pq += (double)qi[ch] * kj[ch] * e;
            }
            w->A[i * C + j] = a, w->P[i * C + j] = pq;
        }
        for (int64_t jv = 0; jv < V; jv++) {
            double x = vi[jv];
            if (c->beta) {
                for (int64_t ch = 0; ch < K; ch++) x -= ki[ch] * w->eg[i * K + ch] * w->S0[ch * V + jv];
                w->z[i * V + jv] = x;
                for (int64_t j = 0; j < i; j++) x -= w->A[i * C + j] * w->u[j * V + jv];
                x *= w->bet[i];
            }
            w->u[i * V + jv] = x;
        }
    }
}

/* The item's S0 for chunk ci: the f32 state after chunk ci - 1, or zero. */
static void chunk_start(const hae_tr_delta_shape *s, const float *S, int64_t ci, double *S0) {
    const int64_t KV = s->K * s->V;
    for (int64_t e = 0; e < KV; e++) S0[e] = ci ? S[(ci - 1) * KV + e] : 0.0;
}

/* One (sequence, head) forwards: O = scale (Q~ S0 + P u), S_end = diag(e^{Γ_L}) S0 + K^^T u into slot ci. */
static void chunk_fwd_item(void *p, int64_t item) {
    const delta_ctx *c = p;
    const hae_tr_delta_shape *s = c->s;
    const int64_t b = item / s->H, h = item % s->H, K = s->K, V = s->V, KV = K * V, C = chunk_len(s);
    float *S = c->Sw + item * hae_tr_delta_slots(s) * KV;
    const chunk_work w = chunk_carve(s, c->scratch + item * chunk_scratch(s));
    for (int64_t ci = 0; ci * C < s->T; ci++) {
        const int64_t t0 = ci * C, n = min64(C, s->T - t0), L = n - 1;
        chunk_start(s, S, ci, w.S0);
        chunk_prep(c, b, h, t0, n, &w);
        for (int64_t i = 0; i < n; i++) {
            const int64_t r = bth(s, b, t0 + i, h);
            const float *qi = c->q + r * K;
            for (int64_t jv = 0; jv < V; jv++) {
                double acc = 0;
                for (int64_t ch = 0; ch < K; ch++) acc += qi[ch] * w.eg[i * K + ch] * w.S0[ch * V + jv];
                for (int64_t j = 0; j <= i; j++) acc += w.P[i * C + j] * w.u[j * V + jv];
                c->o[r * V + jv] = (float)(s->scale * acc);
            }
        }
        for (int64_t ch = 0; ch < K; ch++)
            for (int64_t jv = 0; jv < V; jv++) {
                double acc = w.eg[L * K + ch] * w.S0[ch * V + jv];
                for (int64_t j = 0; j < n; j++)
                    acc += c->k[bth(s, b, t0 + j, h) * K + ch] * w.eh[j * K + ch] * w.u[j * V + jv];
                S[ci * KV + ch * V + jv] = (float)acc;
            }
    }
}

/* One (sequence, head) backwards, chunk by chunk from the last, dS the gradient of the chunk's S_end. */
static void chunk_bwd_item(void *p, int64_t item) {
    const delta_ctx *c = p;
    const hae_tr_delta_shape *s = c->s;
    const int64_t b = item / s->H, h = item % s->H, K = s->K, V = s->V, KV = K * V, C = chunk_len(s);
    const bool delta = c->beta != NULL;
    const float *S = c->Sw + item * hae_tr_delta_slots(s) * KV;
    const chunk_work w = chunk_carve(s, c->scratch + item * chunk_scratch(s));
    memset(w.dS, 0, sizeof(double) * (size_t)KV);
    for (int64_t ci = (s->T - 1) / C; ci >= 0; ci--) {
        const int64_t t0 = ci * C, n = min64(C, s->T - t0), L = n - 1;
        chunk_start(s, S, ci, w.S0);
        chunk_prep(c, b, h, t0, n, &w);
        memset(w.dgam, 0, sizeof(double) * (size_t)(n * K));
        memset(w.dq, 0, sizeof(double) * (size_t)(n * K));
        memset(w.dk, 0, sizeof(double) * (size_t)(n * K));
#define Q_(i) (c->q + bth(s, b, t0 + (i), h) * K)
#define K_(i) (c->k + bth(s, b, t0 + (i), h) * K)
#define DO_(i) (c->dout + bth(s, b, t0 + (i), h) * V)
        for (int64_t i = 0; i < n; i++) /* dP = scale dO u^T */
            for (int64_t j = 0; j <= i; j++) {
                double d = 0;
                for (int64_t jv = 0; jv < V; jv++) d += DO_(i)[jv] * w.u[j * V + jv];
                w.dP[i * C + j] = s->scale * d;
            }
        for (int64_t j = 0; j < n; j++) /* du = scale P^T dO + K^ dS */
            for (int64_t jv = 0; jv < V; jv++) {
                double d = 0;
                for (int64_t i = j; i < n; i++) d += w.P[i * C + j] * DO_(i)[jv];
                d *= s->scale;
                for (int64_t ch = 0; ch < K; ch++) d += K_(j)[ch] * w.eh[j * K + ch] * w.dS[ch * V + jv];
                w.du[j * V + jv] = d;
            }
        for (int64_t i = 0; i < n; i++) /* Q~ (through O) and K^ (through S_end) into q, k and Γ */
            for (int64_t ch = 0; ch < K; ch++) {
                double dqt = 0, dkh = 0;
                for (int64_t jv = 0; jv < V; jv++) {
                    dqt += DO_(i)[jv] * w.S0[ch * V + jv];
                    dkh += w.u[i * V + jv] * w.dS[ch * V + jv];
                }
                dqt *= s->scale;
                const double eg = w.eg[i * K + ch], eh = w.eh[i * K + ch], kh = dkh * K_(i)[ch] * eh;
                w.dq[i * K + ch] += dqt * eg;
                w.dgam[i * K + ch] += dqt * Q_(i)[ch] * eg - kh;
                w.dk[i * K + ch] += dkh * eh;
                w.dgam[L * K + ch] += kh;
            }
        if (delta) {
            for (int64_t j = n - 1; j >= 0; j--) /* w = M^-T du */
                for (int64_t jv = 0; jv < V; jv++) {
                    double x = w.du[j * V + jv];
                    for (int64_t i = j + 1; i < n; i++) x -= w.bet[i] * w.A[i * C + j] * w.w[i * V + jv];
                    w.w[j * V + jv] = x;
                }
            for (int64_t i = 0; i < n; i++) {
                const int64_t r = bth(s, b, t0 + i, h);
                double db = 0;
                for (int64_t jv = 0; jv < V; jv++) {
                    c->dv[r * V + jv] = (float)(w.bet[i] * w.w[i * V + jv]);
                    db += w.w[i * V + jv] * w.z[i * V + jv];
                }
                for (int64_t j = 0; j < i; j++) {
                    double wu = 0;
                    for (int64_t jv = 0; jv < V; jv++) wu += w.w[i * V + jv] * w.u[j * V + jv];
                    db -= w.A[i * C + j] * wu;
                    w.dA[i * C + j] = -w.bet[i] * wu;
                }
                c->dbeta[r] = (float)db;
                for (int64_t ch = 0; ch < K; ch++) { /* z = V - K~ S0: K~'s share (S0's below) */
                    double dkt = 0;
                    for (int64_t jv = 0; jv < V; jv++) dkt -= w.S0[ch * V + jv] * w.w[i * V + jv];
                    dkt *= w.bet[i] * w.eg[i * K + ch];
                    w.dk[i * K + ch] += dkt;
                    w.dgam[i * K + ch] += dkt * K_(i)[ch];
                }
            }
        } else {
            for (int64_t i = 0; i < n; i++)
                for (int64_t jv = 0; jv < V; jv++) c->dv[bth(s, b, t0 + i, h) * V + jv] = (float)w.du[i * V + jv];
        }
        for (int64_t i = 0; i < n; i++) /* P and A into q, k and Γ */
            for (int64_t j = 0; j <= i; j++)
                for (int64_t ch = 0; ch < K; ch++) {
                    const double e = chunk_E(&w, K, i, j, ch), qi = Q_(i)[ch], ki = K_(i)[ch], kj = K_(j)[ch];
                    const double dp = w.dP[i * C + j] * e;
                    w.dq[i * K + ch] += dp * kj;
                    w.dk[j * K + ch] += dp * qi;
                    double t = dp * qi * kj;
                    if (delta && j < i) {
                        const double da = w.dA[i * C + j] * e;
                        w.dk[i * K + ch] += da * kj;
                        w.dk[j * K + ch] += da * ki;
                        t += da * ki * kj;
                    }
                    w.dgam[i * K + ch] += t;
                    w.dgam[j * K + ch] -= t;
                }
        /* the chunk before's dS = diag(e^{Γ_L}) dS + scale Q~^T dO - K~^T diag(beta) w, after Γ_L's share */
        for (int64_t ch = 0; ch < K; ch++) {
            const double eL = w.eg[L * K + ch];
            double acc = 0;
            for (int64_t jv = 0; jv < V; jv++) acc += w.S0[ch * V + jv] * w.dS[ch * V + jv];
            w.dgam[L * K + ch] += eL * acc;
            for (int64_t jv = 0; jv < V; jv++) {
                double d = 0;
                for (int64_t i = 0; i < n; i++) {
                    d += s->scale * Q_(i)[ch] * w.eg[i * K + ch] * DO_(i)[jv];
                    if (delta) d -= w.bet[i] * K_(i)[ch] * w.eg[i * K + ch] * w.w[i * V + jv];
                }
                w.dS[ch * V + jv] = eL * w.dS[ch * V + jv] + d;
            }
        }
#undef Q_
#undef K_
#undef DO_
        for (int64_t i = n - 1; i >= 0; i--) { /* dq, dk; dg_t = sum_{i >= t} dΓ_i */
            const int64_t r = bth(s, b, t0 + i, h);
            double dg_head = 0;
            for (int64_t ch = 0; ch < K; ch++) {
                c->dq[r * K + ch] = (float)w.dq[i * K + ch];
                c->dk[r * K + ch] = (float)w.dk[i * K + ch];
                if (i < L) w.dgam[i * K + ch] += w.dgam[(i + 1) * K + ch];
                if (c->g && s->channel_decay) c->dg[r * K + ch] = (float)w.dgam[i * K + ch];
                dg_head += w.dgam[i * K + ch];
            }
            if (c->g && !s->channel_decay) c->dg[r] = (float)dg_head;
        }
    }
}

/* The chunk form's forward or backward over every (sequence, head), each with its scratch. */
static hae_status chunk_run(hae_backend *be, delta_ctx *c, hae_parallel_fn fn, int64_t work, const char *what) {
    const hae_tr_delta_shape *s = c->s;
    const int64_t items = s->B * s->H, per = chunk_scratch(s);
    if (s->T == 0 || items == 0) return HAE_OK;
    c->scratch = malloc(sizeof(double) * (size_t)(items * per));
    if (!c->scratch)
        return hae_error(HAE_ERR_OOM, "delta %s, chunk form: %lld x %lld doubles of scratch", what, (long long)items,
                         (long long)per);
    hae_parallel_for_sized(be->pool, items, work * s->T * (chunk_len(s) + s->V) * s->K, fn, c);
    free(c->scratch);
    return HAE_OK;
}

hae_status hae_tr_delta_fwd(hae_backend *be, const hae_tr_delta_shape *s, const float *q, const float *k,
                            const float *v, const float *g, const float *beta, float *S, float *o) {
    ON_CUDA(be, hae_tr_delta_fwd_cuda(be, s, q, k, v, g, beta, S, o));
    if (s->chunk < 0)
        return hae_error(HAE_ERR_INVALID, "delta forward: chunk %lld (expected >= 0)", (long long)s->chunk);
    delta_ctx c = {.s = s, .q = q, .k = k, .v = v, .g = g, .beta = beta, .Sw = S, .o = o};
    if (s->chunk > 0) return chunk_run(be, &c, chunk_fwd_item, 4, "forward");
    hae_parallel_for_sized(be->pool, s->B * s->H, 4 * s->T * s->K * s->V, delta_fwd_item, &c);
    return HAE_OK;
}

hae_status hae_tr_delta_bwd(hae_backend *be, const hae_tr_delta_shape *s, const float *q, const float *k,
                            const float *v, const float *g, const float *beta, float *S, const float *dout,
                            float *dq, float *dk, float *dv, float *dg, float *dbeta) {
    ON_CUDA(be, hae_tr_delta_bwd_cuda(be, s, q, k, v, g, beta, S, dout, dq, dk, dv, dg, dbeta));
    if (s->chunk < 0)
        return hae_error(HAE_ERR_INVALID, "delta backward: chunk %lld (expected >= 0)", (long long)s->chunk);
    delta_ctx c = {.s = s, .q = q, .k = k, .v = v, .g = g, .beta = beta, .Sw = S, .dout = dout,
                   .dq = dq, .dk = dk, .dv = dv, .dg = dg, .dbeta = dbeta};
    if (s->chunk > 0) return chunk_run(be, &c, chunk_bwd_item, 8, "backward");
    if (s->B * s->H == 0) return HAE_OK; /* malloc(0) may return NULL */
    c.scratch = malloc(sizeof(double) * (size_t)(s->B * s->H * delta_scratch(s)));
    if (!c.scratch)
        return hae_error(HAE_ERR_OOM, "delta backward: %lld x %lld doubles of scratch", (long long)(s->B * s->H),
                         (long long)delta_scratch(s));
    hae_parallel_for_sized(be->pool, s->B * s->H, 8 * s->T * s->K * s->V, delta_bwd_item, &c);
    free(c.scratch);
    return HAE_OK;
}

/* ---------------------------------------------------------------- the linear layers' conv and L2 norm */

typedef struct {
    const float *x, *weight, *pre, *dout;
    int64_t B, T, C, W;
    bool silu;
    float *pre_out, *out, *dx;
    double *part; /* [B, C, W]: each sequence's share of the weight gradient */
} conv_ctx;

static double silu_grad(double s) {
    const double sg = 1.0 / (1.0 + exp(-s));
    return sg * (1.0 + s * (1.0 - sg));
}

/* One channel of every sequence: independent of the others. */
static void conv_fwd_channel(void *p, int64_t ch) {
    const conv_ctx *c = p;
    const int64_t C = c->C, W = c->W;
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t t = 0; t < c->T; t++) {
            double s = 0;
            for (int64_t w = 0; w < W; w++) {
                const int64_t u = t + w - (W - 1);
                if (u >= 0) s += (double)c->weight[ch * W + w] * c->x[(b * c->T + u) * C + ch];
            }
            const int64_t i = (b * c->T + t) * C + ch;
            c->pre_out[i] = (float)s;
            c->out[i] = (float)(c->silu ? s / (1.0 + exp(-s)) : s);
        }
}

hae_status hae_tr_conv_fwd(hae_backend *be, const float *x, const float *weight, int64_t B, int64_t T, int64_t C,
                           int64_t W, bool silu, float *pre, float *out) {
    ON_CUDA(be, hae_tr_conv_fwd_cuda(be, x, weight, B, T, C, W, silu, pre, out));
    conv_ctx c = {.x = x, .weight = weight, .B = B, .T = T, .C = C, .W = W, .silu = silu, .pre_out = pre, .out = out};
    hae_parallel_for_sized(be->pool, C, 2 * B * T * W, conv_fwd_channel, &c);
    return HAE_OK;
}

/* Sequence b, row by row (channels contiguous): ds = dout act'(s) into dx; the weight's gradient from it into
 * part[b] (summed over the sequences in order after); then dx in place in ascending u (row u reads ds rows
 * u .. u + W - 1, and no later row reads ds row u). */
static void conv_bwd_seq(void *p, int64_t b) {
    const conv_ctx *c = p;
    const int64_t C = c->C, W = c->W, T = c->T;
    float *dx = c->dx + b * T * C;
    const float *x = c->x + b * T * C, *pre = c->pre + b * T * C, *dout = c->dout + b * T * C;
    double *part = c->part + b * C * W;
    for (int64_t i = 0; i < T * C; i++) dx[i] = (float)(c->silu ? dout[i] * silu_grad(pre[i]) : dout[i]);
    for (int64_t t = 0; t < T; t++)
        for (int64_t w = 0; w < W; w++) {
            const int64_t u = t + w - (W - 1);
            if (u < 0) continue;
            for (int64_t ch = 0; ch < C; ch++) part[ch * W + w] += (double)dx[t * C + ch] * x[u * C + ch];
        }
    for (int64_t u = 0; u < T; u++) /* x[u] feeds s[u + W - 1 - w] through weight[w] */
        for (int64_t ch = 0; ch < C; ch++) {
            double d = 0;
            for (int64_t w = 0; w < W; w++) {
                const int64_t t = u + (W - 1) - w;
                if (t < T) d += (double)c->weight[ch * W + w] * dx[t * C + ch];
            }
            dx[u * C + ch] = (float)d;
        }
}

hae_status hae_tr_conv_bwd(hae_backend *be, const float *x, const float *weight, const float *pre, const float *dout,
                           int64_t B, int64_t T, int64_t C, int64_t W, bool silu, float *dx, float *dweight) {
    ON_CUDA(be, hae_tr_conv_bwd_cuda(be, x, weight, pre, dout, B, T, C, W, silu, dx, dweight));
    double *part = calloc((size_t)(B * C * W), sizeof(double));
    if (!part) return hae_error(HAE_ERR_OOM, "train: out of host memory for the conv's weight gradient (%lld x %lld x %lld)",
                                (long long)B, (long long)C, (long long)W);
    conv_ctx c = {.x = x, .weight = weight, .pre = pre, .dout = dout, .B = B, .T = T, .C = C, .W = W, .silu = silu,
                  .dx = dx, .part = part};
    hae_parallel_for_sized(be->pool, B, 6 * T * C * W, conv_bwd_seq, &c);
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < C * W; i++) dweight[i] += (float)part[b * C * W + i];
    free(part);
    return HAE_OK;
}

typedef struct {
    const float *x, *dy;
    int64_t D;
    double eps;
    float *y, *dx;
} l2_ctx;

static double l2_rinv(const float *x, int64_t D, double eps) {
    double ss = 0;
    for (int64_t d = 0; d < D; d++) ss += (double)x[d] * x[d];
    return 1.0 / sqrt(ss + eps);
}

static void l2_fwd_row(void *p, int64_t i) {
    const l2_ctx *c = p;
    const float *x = c->x + i * c->D;
    const double r = l2_rinv(x, c->D, c->eps);
    for (int64_t d = 0; d < c->D; d++) c->y[i * c->D + d] = (float)(x[d] * r);
}

static void l2_bwd_row(void *p, int64_t i) {
    const l2_ctx *c = p;
    const float *x = c->x + i * c->D, *dy = c->dy + i * c->D;
    const double r = l2_rinv(x, c->D, c->eps);
    double ydy = 0;
    for (int64_t d = 0; d < c->D; d++) ydy += x[d] * r * dy[d];
    for (int64_t d = 0; d < c->D; d++) c->dx[i * c->D + d] = (float)((dy[d] - x[d] * r * ydy) * r);
}

hae_status hae_tr_l2norm_fwd(hae_backend *be, const float *x, int64_t N, int64_t D, float eps, float *y) {
    ON_CUDA(be, hae_tr_l2norm_fwd_cuda(be, x, N, D, eps, y));
    l2_ctx c = {.x = x, .D = D, .eps = eps, .y = y};
    hae_parallel_for_sized(be->pool, N, 3 * D, l2_fwd_row, &c);
    return HAE_OK;
}

hae_status hae_tr_l2norm_bwd(hae_backend *be, const float *x, const float *dy, int64_t N, int64_t D, float eps,
                             float *dx) {
    ON_CUDA(be, hae_tr_l2norm_bwd_cuda(be, x, dy, N, D, eps, dx));
    l2_ctx c = {.x = x, .dy = dy, .D = D, .eps = eps, .dx = dx};
    hae_parallel_for_sized(be->pool, N, 5 * D, l2_bwd_row, &c);
    return HAE_OK;
}

/* ---------------------------------------------------------------- the linear layers' output norm and gates */

typedef struct {
    const float *x, *gate, *w, *dy;
    int64_t D;
    double eps;
    float *y, *dx, *dgate;
} gnorm_ctx;

static double sig(double x) { return 1.0 / (1.0 + exp(-x)); }

static void gnorm_fwd_row(void *p, int64_t i) {
    const gnorm_ctx *c = p;
    const float *x = c->x + i * c->D, *g = c->gate + i * c->D;
    double ss = 0;
    for (int64_t d = 0; d < c->D; d++) ss += (double)x[d] * x[d];
    const double r = 1.0 / sqrt(ss / (double)c->D + c->eps);
    for (int64_t d = 0; d < c->D; d++) c->y[i * c->D + d] = (float)(x[d] * r * c->w[d] * sig(g[d]));
}

static void gnorm_bwd_row(void *p, int64_t i) {
    const gnorm_ctx *c = p;
    const float *x = c->x + i * c->D, *g = c->gate + i * c->D, *dy = c->dy + i * c->D;
    double ss = 0, ez = 0;
    for (int64_t d = 0; d < c->D; d++) ss += (double)x[d] * x[d];
    const double r = 1.0 / sqrt(ss / (double)c->D + c->eps);
    for (int64_t d = 0; d < c->D; d++) ez += dy[d] * c->w[d] * sig(g[d]) * x[d] * r;
    ez /= (double)c->D;
    for (int64_t d = 0; d < c->D; d++) {
        const double z = x[d] * r, sg = sig(g[d]);
        c->dx[i * c->D + d] = (float)(r * (dy[d] * c->w[d] * sg - z * ez));
        c->dgate[i * c->D + d] = (float)(dy[d] * z * c->w[d] * sg * (1.0 - sg));
    }
}

hae_status hae_tr_gated_norm_fwd(hae_backend *be, const float *x, const float *gate, const float *w, int64_t N,
                                 int64_t D, float eps, float *y) {
    ON_CUDA(be, hae_tr_gated_norm_fwd_cuda(be, x, gate, w, N, D, eps, y));
    gnorm_ctx c = {.x = x, .gate = gate, .w = w, .D = D, .eps = eps, .y = y};
    hae_parallel_for_sized(be->pool, N, 6 * D, gnorm_fwd_row, &c);
    return HAE_OK;
}

hae_status hae_tr_gated_norm_bwd(hae_backend *be, const float *x, const float *gate, const float *w, const float *dy,
                                 int64_t N, int64_t D, float eps, float *dx, float *dgate, float *dw) {
    ON_CUDA(be, hae_tr_gated_norm_bwd_cuda(be, x, gate, w, dy, N, D, eps, dx, dgate, dw));
    gnorm_ctx c = {.x = x, .gate = gate, .w = w, .dy = dy, .D = D, .eps = eps, .dx = dx, .dgate = dgate};
    hae_parallel_for_sized(be->pool, N, 10 * D, gnorm_bwd_row, &c);
    for (int64_t i = 0; i < N; i++) { /* dw: rows in order, one thread */
        const float *xi = x + i * D, *g = gate + i * D;
        double ss = 0;
        for (int64_t d = 0; d < D; d++) ss += (double)xi[d] * xi[d];
        const double r = 1.0 / sqrt(ss / (double)D + (double)eps);
        for (int64_t d = 0; d < D; d++) dw[d] += (float)(dy[i * D + d] * xi[d] * r * sig(g[d]));
    }
    return HAE_OK;
}

/* g and its derivatives dg/dx and dg/dA_log at x = raw + dt_bias. */
static double decay_of(double x, double A, hae_gate_fn gate, double lb, double *dx, double *dA_log) {
    if (gate == HAE_GATE_SAFE) {
        const double s = sig(A * x), ds = s * (1.0 - s);
        *dx = lb * ds * A, *dA_log = lb * ds * A * x;
        return lb * s;
    }
    const double sp = x > 20.0 ? x : log1p(exp(x));
    *dx = -A * sig(x), *dA_log = -A * sp;
    return -A * sp;
}

hae_status hae_tr_decay_fwd(hae_backend *be, const float *raw, const float *A_log, const float *dt_bias, int64_t N,
                            int64_t HV, int64_t n, hae_gate_fn gate, float lower_bound, float *g) {
    ON_CUDA(be, hae_tr_decay_fwd_cuda(be, raw, A_log, dt_bias, N, HV, n, gate, lower_bound, g));
    (void)be;
    for (int64_t t = 0; t < N; t++)
        for (int64_t j = 0; j < HV; j++)
            for (int64_t i = 0; i < n; i++) {
                double dx, da;
                const int64_t e = (t * HV + j) * n + i;
                g[e] = (float)decay_of((double)raw[e] + dt_bias[j * n + i], exp((double)A_log[j]), gate, lower_bound,
                                       &dx, &da);
            }
    return HAE_OK;
}

hae_status hae_tr_decay_bwd(hae_backend *be, const float *raw, const float *A_log, const float *dt_bias,
                            const float *dg, int64_t N, int64_t HV, int64_t n, hae_gate_fn gate, float lower_bound,
                            float *draw, float *dA_log, float *ddt_bias) {
    ON_CUDA(be, hae_tr_decay_bwd_cuda(be, raw, A_log, dt_bias, dg, N, HV, n, gate, lower_bound, draw, dA_log, ddt_bias));
    (void)be;
    for (int64_t j = 0; j < HV; j++) { /* one head's sums in token order */
        double sa = 0;
        for (int64_t i = 0; i < n; i++) {
            double sb = 0;
            for (int64_t t = 0; t < N; t++) {
                double dx, da;
                const int64_t e = (t * HV + j) * n + i;
                decay_of((double)raw[e] + dt_bias[j * n + i], exp((double)A_log[j]), gate, lower_bound, &dx, &da);
                draw[e] = (float)(dg[e] * dx);
                sb += dg[e] * dx, sa += dg[e] * da;
            }
            ddt_bias[j * n + i] += (float)sb;
        }
        dA_log[j] += (float)sa;
    }
    return HAE_OK;
}

/* ---------------------------------------------------------------- the DSA indexer */

typedef struct {
    const float *x, *w, *bias, *rstd, *dy;
    int64_t D;
    float eps;
    float *y, *r, *dx;
} ln_ctx;

static double ln_mean(const float *x, int64_t D) {
    double m = 0;
    for (int64_t d = 0; d < D; d++) m += x[d];
    return m / (double)D;
}

static void ln_fwd_row(void *p, int64_t i) {
    const ln_ctx *c = p;
    const float *x = c->x + i * c->D;
    const double mean = ln_mean(x, c->D);
    double ss = 0;
    for (int64_t d = 0; d < c->D; d++) ss += ((double)x[d] - mean) * ((double)x[d] - mean);
    const float r = (float)(1.0 / sqrt(ss / (double)c->D + (double)c->eps)), mu = (float)mean;
    c->r[i] = r;
    for (int64_t d = 0; d < c->D; d++) c->y[i * c->D + d] = (x[d] - mu) * r * c->w[d] + c->bias[d];
}

static void ln_bwd_row(void *p, int64_t i) {
    const ln_ctx *c = p;
    const float *x = c->x + i * c->D, *dy = c->dy + i * c->D;
    const double mean = ln_mean(x, c->D), r = c->rstd[i];
    double me = 0, mez = 0;
    for (int64_t d = 0; d < c->D; d++) {
        const double e = (double)dy[d] * c->w[d];
        me += e;
        mez += e * ((double)x[d] - mean) * r;
    }
    me /= (double)c->D, mez /= (double)c->D;
    for (int64_t d = 0; d < c->D; d++) {
        const double z = ((double)x[d] - mean) * r;
        c->dx[i * c->D + d] = (float)(r * ((double)dy[d] * c->w[d] - me - z * mez));
    }
}

hae_status hae_tr_layernorm_fwd(hae_backend *be, const float *x, const float *w, const float *bias, int64_t N,
                                int64_t D, float eps, float *y, float *rstd) {
    ON_CUDA(be, hae_tr_layernorm_fwd_cuda(be, x, w, bias, N, D, eps, y, rstd));
    ln_ctx c = {.x = x, .w = w, .bias = bias, .D = D, .eps = eps, .y = y, .r = rstd};
    hae_parallel_for_sized(be->pool, N, 4 * D, ln_fwd_row, &c);
    return HAE_OK;
}

hae_status hae_tr_layernorm_bwd(hae_backend *be, const float *x, const float *w, const float *rstd, const float *dy,
                                int64_t N, int64_t D, float *dx, float *dw, float *dbias) {
    ON_CUDA(be, hae_tr_layernorm_bwd_cuda(be, x, w, rstd, dy, N, D, dx, dw, dbias));
    ln_ctx c = {.x = x, .w = w, .rstd = rstd, .dy = dy, .D = D, .dx = dx};
    hae_parallel_for_sized(be->pool, N, 6 * D, ln_bwd_row, &c);
    for (int64_t i = 0; i < N; i++) { /* rows in order: the parameter sums do not depend on the threads */
        const double mean = ln_mean(x + i * D, D);
        for (int64_t d = 0; d < D; d++) {
            dw[d] += dy[i * D + d] * (float)(((double)x[i * D + d] - mean) * rstd[i]);
            dbias[d] += dy[i * D + d];
        }
    }
    return HAE_OK;
}

typedef struct {
    const hae_tr_index_shape *s;
    const float *q, *k, *w, *dI;
    float *I, *dq, *dk, *dw;
} index_ctx;

/* Row (b, t) of I. */
static void index_fwd_row(void *p, int64_t row) {
    const index_ctx *c = p;
    const hae_tr_index_shape *s = c->s;
    const int64_t T = s->T, b = row / T, t = row % T, HI = s->HI, DI = s->DI;
    const float *q = c->q + row * HI * DI, *w = c->w + row * HI;
    float *I = c->I + row * T;
    for (int64_t j = 0; j < T; j++) {
        if (j > t) {
            I[j] = 0.0f;
            continue;
        }
        const float *k = c->k + (b * T + j) * DI;
        float acc = 0.0f;
        for (int64_t h = 0; h < HI; h++) {
            const float a = hae_dot_f32(q + h * DI, k, DI);
            acc += w[h] * (a > 0.0f ? a : 0.0f);
        }
        I[j] = s->scale * acc;
    }
}

hae_status hae_tr_index_fwd(hae_backend *be, const hae_tr_index_shape *s, const float *q, const float *k,
                            const float *w, float *I) {
    ON_CUDA(be, hae_tr_index_fwd_cuda(be, s, q, k, w, I));
    index_ctx c = {.s = s, .q = q, .k = k, .w = w, .I = I};
    hae_parallel_for_sized(be->pool, s->B * s->T, s->T * s->HI * s->DI, index_fwd_row, &c);
    return HAE_OK;
}

/* Row (b, t): dq and dw of query t, summed over its keys. */
static void index_bwd_query(void *p, int64_t row) {
    const index_ctx *c = p;
    const hae_tr_index_shape *s = c->s;
    const int64_t T = s->T, b = row / T, t = row % T, HI = s->HI, DI = s->DI;
    const float *q = c->q + row * HI * DI, *w = c->w + row * HI, *dI = c->dI + row * T;
    float *dq = c->dq + row * HI * DI, *dw = c->dw + row * HI;
    memset(dq, 0, sizeof(float) * (size_t)(HI * DI));
    memset(dw, 0, sizeof(float) * (size_t)HI);
    for (int64_t j = 0; j <= t; j++) {
        if (dI[j] == 0.0f) continue;
        const float *k = c->k + (b * T + j) * DI, g = s->scale * dI[j];
        for (int64_t h = 0; h < HI; h++) {
            const float a = hae_dot_f32(q + h * DI, k, DI);
            if (a <= 0.0f) continue;
            dw[h] += g * a;
            for (int64_t d = 0; d < DI; d++) dq[h * DI + d] += g * w[h] * k[d];
        }
    }
}

/* Key (b, j): dk summed over the queries t >= j. */
static void index_bwd_key(void *p, int64_t row) {
    const index_ctx *c = p;
    const hae_tr_index_shape *s = c->s;
    const int64_t T = s->T, b = row / T, j = row % T, HI = s->HI, DI = s->DI;
    const float *k = c->k + row * DI;
    float *dk = c->dk + row * DI;
    memset(dk, 0, sizeof(float) * (size_t)DI);
    for (int64_t t = j; t < T; t++) {
        const float dIt = c->dI[(b * T + t) * T + j];
        if (dIt == 0.0f) continue;
        const float *q = c->q + (b * T + t) * HI * DI, *w = c->w + (b * T + t) * HI, g = s->scale * dIt;
        for (int64_t h = 0; h < HI; h++) {
            if (hae_dot_f32(q + h * DI, k, DI) <= 0.0f) continue;
            for (int64_t d = 0; d < DI; d++) dk[d] += g * w[h] * q[h * DI + d];
        }
    }
}

hae_status hae_tr_index_bwd(hae_backend *be, const hae_tr_index_shape *s, const float *q, const float *k,
                            const float *w, const float *dI, float *dq, float *dk, float *dw) {
    ON_CUDA(be, hae_tr_index_bwd_cuda(be, s, q, k, w, dI, dq, dk, dw));
    index_ctx c = {.s = s, .q = q, .k = k, .w = w, .dI = dI, .dq = dq, .dk = dk, .dw = dw};
    hae_parallel_for_sized(be->pool, s->B * s->T, s->T * s->HI * s->DI, index_bwd_query, &c);
    hae_parallel_for_sized(be->pool, s->B * s->T, s->T * s->HI * s->DI, index_bwd_key, &c);
    return HAE_OK;
}

typedef struct {
    const float *I, *P;  /* scores [B, T, T]; attention probabilities [B, Hq, T, T] (the KL) */
    int64_t T, k, Hq;    /* k: tokens selected */
    uint8_t *allow;      /* select: written */
    const uint8_t *sel;  /* KL: read */
    float scale, *dI;
    double *kl;          /* [B T] per row */
} select_ctx;

/* Row (b, t): the k largest of I[b, t, 0..t], by repeated selection (rows are short in training). */
static void index_select_row(void *p, int64_t row) {
    const select_ctx *c = p;
    const int64_t T = c->T, t = row % T, k = c->k;
    const float *I = c->I + row * T;
    uint8_t *a = c->allow + row * T;
    memset(a, 0, (size_t)T);
    if (t < k) {
        memset(a, 1, (size_t)(t + 1));
        return;
    }
    for (int64_t n = 0; n < k; n++) {
        int64_t best = -1;
        for (int64_t j = 0; j <= t; j++) /* strict >: the lower index wins a tie */
            if (!a[j] && (best < 0 || I[j] > I[best])) best = j;
        a[best] = 1;
    }
}

hae_status hae_tr_index_select(hae_backend *be, const float *I, int64_t B, int64_t T, int64_t k, uint8_t *allow) {
    ON_CUDA(be, hae_tr_index_select_cuda(be, I, B, T, k, allow));
    select_ctx c = {.I = I, .T = T, .k = k, .allow = allow};
    hae_parallel_for_sized(be->pool, B * T, T * (k < T ? k : T), index_select_row, &c);
    return HAE_OK;
}

static void index_kl_row(void *p, int64_t row) {
    const select_ctx *c = p;
    const int64_t T = c->T, b = row / T, t = row % T;
    const float *I = c->I + row * T;
    const uint8_t *a = c->sel + row * T;
    float *dI = c->dI + row * T;
    double mx = -INFINITY, z = 0, ptot = 0, kl = 0;
    for (int64_t j = 0; j <= t; j++)
        if (a[j]) mx = I[j] > mx ? I[j] : mx;
    for (int64_t j = 0; j <= t; j++)
        if (a[j]) z += exp((double)I[j] - mx);
    for (int64_t j = 0; j < T; j++) { /* p unnormalised into dI first */
        double pj = 0;
        if (j <= t && a[j])
            for (int64_t h = 0; h < c->Hq; h++) pj += c->P[((b * c->Hq + h) * T + t) * T + j];
        dI[j] = (float)pj;
        ptot += pj;
    }
    for (int64_t j = 0; j < T; j++) {
        if (j > t || !a[j]) {
            dI[j] = 0.0f;
            continue;
        }
        const double pj = ptot > 0 ? dI[j] / ptot : 0, lq = (double)I[j] - mx - log(z);
        if (pj > 0) kl += pj * (log(pj) - lq);
        dI[j] = (float)(c->scale * (exp(lq) - pj));
    }
    c->kl[row] = kl;
}

hae_status hae_tr_index_kl(hae_backend *be, const float *P, const float *I, const uint8_t *allow, int64_t B, int64_t Hq,
                           int64_t T, float scale, float *dI, double *kl_sum) {
    ON_CUDA(be, hae_tr_index_kl_cuda(be, P, I, allow, B, Hq, T, scale, dI, kl_sum));
    double *kl = malloc(sizeof(double) * (size_t)(B * T));
    if (!kl) return hae_error(HAE_ERR_OOM, "train: out of host memory for the indexer loss of %lld rows", (long long)(B * T));
    select_ctx c = {.I = I, .P = P, .T = T, .Hq = Hq, .sel = allow, .scale = scale, .dI = dI, .kl = kl};
    hae_parallel_for_sized(be->pool, B * T, T * Hq, index_kl_row, &c);
    double total = 0;
    for (int64_t i = 0; i < B * T; i++) total += kl[i];
    free(kl);
    *kl_sum = total;
    return HAE_OK;
}

/* CPU implementations of the dense ops: the references every CUDA kernel is held to. Math in fp32
 * (reductions in double where a row is long), work spread over the backend's thread pool. */
#include "internal.h"

#include <float.h>
#include <math.h>
#include <string.h>

static size_t esize(const hae_tensor *t) { return hae_dtype_size(t->dtype); }
static const char *row2(const hae_tensor *t, int64_t i) { return (const char *)t->data + i * t->stride[0] * (int64_t)esize(t); }

/* n values of a row as f32: one loop per dtype, so compilers vectorise the bf16 widening. */
void hae_to_f32(const void *src, hae_dtype dt, int64_t n, float *restrict dst) {
    if (dt == HAE_F32) {
        memcpy(dst, src, (size_t)n * sizeof(float));
    } else if (dt == HAE_BF16) {
        const uint16_t *h = src;
        for (int64_t i = 0; i < n; i++) {
            uint32_t u = (uint32_t)h[i] << 16;
            memcpy(dst + i, &u, sizeof u);
        }
    } else {
        for (int64_t i = 0; i < n; i++) dst[i] = hae_load_f(src, dt, i);
    }
}
/* Converts n values of a row to f32 (a no-op view for f32). */
static const float *row_f32(const void *src, hae_dtype dt, int64_t n, float *buf) {
    if (dt == HAE_F32) return src;
    hae_to_f32(src, dt, n, buf);
    return buf;
}
/* Dot product with 8 independent partial sums (vectorisable without reassociating). */
float hae_dot_f32(const float *restrict a, const float *restrict b, int64_t n) {
    float s[8] = {0};
    int64_t k = 0;
    for (; k + 8 <= n; k += 8)
        for (int l = 0; l < 8; l++) s[l] += a[k + l] * b[k + l];
    float r = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    for (; k < n; k++) r += a[k] * b[k];
    return r;
}
void hae_from_f32(void *dst, hae_dtype dt, const float *v, int64_t n) {
    if (dt == HAE_F32) {
        memcpy(dst, v, (size_t)n * sizeof(float));
        return;
    }
    for (int64_t i = 0; i < n; i++) hae_store_f(dst, dt, i, v[i]);
}
static float *scratch(hae_backend *be) {
    return (float *)((char *)be->scratch + (size_t)hae_threadpool_worker() * be->scratch_per_thread);
}
#define SCRATCH_FLOATS(be) ((int64_t)((be)->scratch_per_thread / sizeof(float)))

/* ---------------------------------------------------------------- embedding */

typedef struct {
    hae_backend *be;
    const hae_embedding_args *a;
} emb_ctx;

static void embedding_row(void *p, int64_t i) {
    emb_ctx *c = p;
    const hae_embedding_args *a = c->a;
    int32_t id = ((const int32_t *)a->ids.data)[i * a->ids.stride[0]];
    int64_t D = a->table.shape[1];
    float *out = (float *)row2(&a->out, i);
    const float *src = row_f32(row2(&a->table, id), a->table.dtype, D, out);
    if (src != out) memcpy(out, src, (size_t)D * sizeof(float));
}

hae_status hae_embedding_cpu(hae_backend *be, const hae_embedding_args *a) {
    int64_t N = a->ids.shape[0], V = a->table.shape[0];
    for (int64_t i = 0; i < N; i++) {
        int32_t id = ((const int32_t *)a->ids.data)[i * a->ids.stride[0]];
        if (id < 0 || id >= V)
            return hae_error(HAE_ERR_INVALID, "hae_embedding: ids[%lld] = %d is outside the vocabulary [0, %lld)",
                             (long long)i, id, (long long)V);
    }
    emb_ctx c = {be, a};
    hae_parallel_for_sized(be->pool, N, a->table.shape[1], embedding_row, &c);
    return HAE_OK;
}

/* ---------------------------------------------------------------- rmsnorm */

typedef struct {
    hae_backend *be;
    const hae_rmsnorm_args *a;
} norm_ctx;

static void rmsnorm_row(void *p, int64_t i) {
    norm_ctx *c = p;
    const hae_rmsnorm_args *a = c->a;
    int64_t D = a->x.shape[1];
    const float *x = (const float *)row2(&a->x, i), *w = a->weight.data, *bias = a->bias.data;
    double mean = 0.0, ss = 0.0;
    if (a->center) {
        for (int64_t d = 0; d < D; d++) mean += x[d];
        mean /= (double)D;
    }
    for (int64_t d = 0; d < D; d++) ss += ((double)x[d] - mean) * ((double)x[d] - mean);
    float r = (float)(1.0 / sqrt(ss / (double)D + (double)a->eps)), mu = (float)mean;
    void *out = (void *)row2(&a->out, i);
    if (a->out.dtype == HAE_F32 && !bias && !a->center) {
        float *o = out;
        for (int64_t d = 0; d < D; d++) o[d] = x[d] * r * w[d];
    } else {
        for (int64_t d = 0; d < D; d++) hae_store_f(out, a->out.dtype, d, (x[d] - mu) * r * w[d] + (bias ? bias[d] : 0.0f));
    }
}

hae_status hae_rmsnorm_cpu(hae_backend *be, const hae_rmsnorm_args *a) {
    norm_ctx c = {be, a};
    hae_parallel_for_sized(be->pool, a->x.shape[0], 4 * a->x.shape[1], rmsnorm_row, &c);
    return HAE_OK;
}

/* ---------------------------------------------------------------- gemm
 * c[M, N] (+)= a[M, K] b[N, K]^T. Each task owns one MB x NB tile of c: per K-block it packs the
 * tile's B panel transposed ([KB][NB], f32) and the A rows (f32), then runs rank-1 updates over NB
 * contiguous accumulators, a loop compilers vectorise without fast-math. */

#define GEMM_MB 64
#define GEMM_NB 64
#define GEMM_KB 256

typedef struct {
    hae_backend *be;
    const hae_gemm_args *a;
    int64_t tiles_n;
} gemm_ctx;

static void gemm_tile(void *p, int64_t t) {
    gemm_ctx *c = p;
    const hae_gemm_args *g = c->a;
    int64_t M = g->a.shape[0], N = g->b.shape[0], K = g->a.shape[1];
    int64_t m0 = (t / c->tiles_n) * GEMM_MB, n0 = (t % c->tiles_n) * GEMM_NB;
    int64_t mr = M - m0 < GEMM_MB ? M - m0 : GEMM_MB, nr = N - n0 < GEMM_NB ? N - n0 : GEMM_NB;
    float *bp = scratch(c->be);              /* [KB][NB] */
    float *ap = bp + GEMM_KB * GEMM_NB;      /* [MB][KB] */
    float *acc = ap + GEMM_MB * GEMM_KB;     /* [MB][NB], then one row of KB for staging */
    memset(acc, 0, sizeof(float) * GEMM_MB * GEMM_NB);
    for (int64_t k0 = 0; k0 < K; k0 += GEMM_KB) {
        int64_t kr = K - k0 < GEMM_KB ? K - k0 : GEMM_KB;
        for (int64_t i = 0; i < mr; i++)
            hae_to_f32((const char *)row2(&g->a, m0 + i) + k0 * (int64_t)esize(&g->a), g->a.dtype, kr, ap + i * GEMM_KB);
        if (mr < 4) { /* decode: too few rows to repay packing B; dot products straight off its rows */
            for (int64_t j = 0; j < nr; j++) {
                hae_to_f32((const char *)row2(&g->b, n0 + j) + k0 * (int64_t)esize(&g->b), g->b.dtype, kr, bp);
                for (int64_t i = 0; i < mr; i++) acc[i * GEMM_NB + j] += hae_dot_f32(ap + i * GEMM_KB, bp, kr);
            }
            continue;
        }
        for (int64_t j = 0; j < GEMM_NB; j++) {
            if (j < nr) {
                float *row = acc + GEMM_MB * GEMM_NB; /* staging after the accumulators */
                hae_to_f32((const char *)row2(&g->b, n0 + j) + k0 * (int64_t)esize(&g->b), g->b.dtype, kr, row);
                for (int64_t k = 0; k < kr; k++) bp[k * GEMM_NB + j] = row[k];
            } else {
                for (int64_t k = 0; k < kr; k++) bp[k * GEMM_NB + j] = 0.0f;
            }
        }
        int64_t i = 0;
        for (; i + 4 <= mr; i += 4) {
            float *restrict c0 = acc + i * GEMM_NB, *restrict c1 = c0 + GEMM_NB, *restrict c2 = c1 + GEMM_NB,
                            *restrict c3 = c2 + GEMM_NB;
            const float *a0 = ap + i * GEMM_KB;
            for (int64_t k = 0; k < kr; k++) {
                const float *restrict b = bp + k * GEMM_NB;
                float x0 = a0[k], x1 = a0[GEMM_KB + k], x2 = a0[2 * GEMM_KB + k], x3 = a0[3 * GEMM_KB + k];
                for (int j = 0; j < GEMM_NB; j++) {
                    c0[j] += x0 * b[j];
                    c1[j] += x1 * b[j];
                    c2[j] += x2 * b[j];
                    c3[j] += x3 * b[j];
                }
            }
        }
        for (; i < mr; i++) {
            float *restrict c0 = acc + i * GEMM_NB;
            for (int64_t k = 0; k < kr; k++) {
                const float *restrict b = bp + k * GEMM_NB;
                float x0 = ap[i * GEMM_KB + k];
                for (int j = 0; j < GEMM_NB; j++) c0[j] += x0 * b[j];
            }
        }
    }
    for (int64_t i = 0; i < mr; i++) {
        char *crow = (char *)row2(&g->c, m0 + i) + n0 * (int64_t)esize(&g->c);
        if (g->accumulate) {
            float *cf = (float *)crow;
            for (int64_t j = 0; j < nr; j++) cf[j] += acc[i * GEMM_NB + j];
        } else {
            hae_from_f32(crow, g->c.dtype, acc + i * GEMM_NB, nr);
        }
    }
}

hae_status hae_gemm_cpu(hae_backend *be, const hae_gemm_args *a) {
    HAE_ASSERT((GEMM_KB * GEMM_NB + GEMM_MB * GEMM_KB + GEMM_MB * GEMM_NB + GEMM_KB) <= SCRATCH_FLOATS(be));
    int64_t M = a->a.shape[0], N = a->b.shape[0];
    if (M == 0 || N == 0) return HAE_OK;
    /* a batch runs its products in turn, each over every thread */
    for (int64_t i = 0; i < (a->batch > 1 ? a->batch : 1); i++) {
        hae_gemm_args one = *a;
        one.a.data = (char *)a->a.data + i * a->stride_a * (int64_t)hae_dtype_size(a->a.dtype);
        one.b.data = (char *)a->b.data + i * a->stride_b * (int64_t)hae_dtype_size(a->b.dtype);
        one.c.data = (char *)a->c.data + i * a->stride_c * (int64_t)hae_dtype_size(a->c.dtype);
        gemm_ctx c = {be, &one, (N + GEMM_NB - 1) / GEMM_NB};
        hae_parallel_for(be->pool, ((M + GEMM_MB - 1) / GEMM_MB) * c.tiles_n, gemm_tile, &c);
    }
    return HAE_OK;
}

/* ---------------------------------------------------------------- swiglu */

typedef struct {
    const hae_swiglu_args *a;
} swiglu_ctx;

static void swiglu_row(void *p, int64_t i) {
    const hae_swiglu_args *a = ((swiglu_ctx *)p)->a;
    int64_t F = a->out.shape[1];
    const void *gu = row2(&a->gate_up, i);
    void *out = (void *)row2(&a->out, i);
    for (int64_t f = 0; f < F; f++) {
        float g = hae_load_f(gu, a->gate_up.dtype, f), u = hae_load_f(gu, a->gate_up.dtype, F + f);
        hae_store_f(out, a->out.dtype, f, g / (1.0f + expf(-g)) * u);
    }
}

hae_status hae_swiglu_cpu(hae_backend *be, const hae_swiglu_args *a) {
    swiglu_ctx c = {a};
    hae_parallel_for_sized(be->pool, a->out.shape[0], 8 * a->out.shape[1], swiglu_row, &c);
    return HAE_OK;
}

/* ---------------------------------------------------------------- rope
 * Angles as Hugging Face computes them, in fp32: inv_freq_i = 1 / theta^(2i / rot_dims),
 * angle = float(pos) * inv_freq_i. */

typedef struct {
    const hae_rope_args *a;
} rope_ctx;

static void rope_row(void *p, int64_t r) {
    const hae_rope_args *a = ((rope_ctx *)p)->a;
    int64_t T = a->x.shape[1], H = a->x.shape[2];
    int64_t b = r / T, t = r % T;
    int half = a->rot_dims / 2;
    float pos = (float)(a->pos0 + t);
    for (int i = 0; i < half; i++) {
        float inv_freq = 1.0f / powf(a->theta, (float)(2 * i) / (float)a->rot_dims);
        float ang = pos * inv_freq, cs = cosf(ang), sn = sinf(ang);
        for (int64_t h = 0; h < H; h++) {
            void *x = hae_row_ptr(&a->x, b, t, h);
            const int64_t i1 = a->rot_offset + i, i2 = i1 + half;
            float x1 = hae_load_f(x, a->x.dtype, i1), x2 = hae_load_f(x, a->x.dtype, i2);
            hae_store_f(x, a->x.dtype, i1, x1 * cs - x2 * sn);
            hae_store_f(x, a->x.dtype, i2, x2 * cs + x1 * sn);
        }
    }
}

hae_status hae_rope_cpu(hae_backend *be, const hae_rope_args *a) {
    rope_ctx c = {a};
    hae_parallel_for_sized(be->pool, a->x.shape[0] * a->x.shape[1], 8 * a->x.shape[2] * a->x.shape[3], rope_row, &c);
    return HAE_OK;
}

/* ---------------------------------------------------------------- convert */

typedef struct {
    const hae_tensor *src, *dst;
    int64_t n;
} convert_ctx;

#define CONVERT_BLOCK 65536

static void convert_block(void *p, int64_t blk) {
    convert_ctx *c = p;
    int64_t lo = blk * CONVERT_BLOCK, hi = lo + CONVERT_BLOCK < c->n ? lo + CONVERT_BLOCK : c->n;
    for (int64_t i = lo; i < hi; i++)
        hae_store_f(c->dst->data, c->dst->dtype, i, hae_load_f(c->src->data, c->src->dtype, i));
}

hae_status hae_convert_cpu(hae_backend *be, const hae_tensor *src, const hae_tensor *dst) {
    convert_ctx c = {src, dst, hae_tensor_numel(src)};
    if (src->dtype == dst->dtype) {
        memmove(dst->data, src->data, hae_tensor_nbytes(src));
        return HAE_OK;
    }
    hae_parallel_for(be->pool, (c.n + CONVERT_BLOCK - 1) / CONVERT_BLOCK, convert_block, &c);
    return HAE_OK;
}

/* ---------------------------------------------------------------- sampling */

float hae_uniform(uint64_t seed, uint64_t step, uint64_t row, uint64_t col) {
    return hae_uniform_hd(seed, step, row, col);
}

hae_status hae_sample_cpu(hae_backend *be, const hae_sample_args *a) {
    int64_t B = a->logits.shape[0], V = a->logits.shape[1];
    for (int64_t b = 0; b < B; b++) {
        const float *l = (const float *)row2(&a->logits, b);
        int64_t best = 0;
        float best_v = -INFINITY;
        for (int64_t i = 0; i < V; i++) {
            float v = l[i];
            if (a->temperature > 0.0f) v = v / a->temperature - logf(-logf(hae_uniform(a->seed, a->step, (uint64_t)b, (uint64_t)i)));
            if (v > best_v) { /* strict: the lowest index wins ties; NaN never wins */
                best_v = v;
                best = i;
            }
        }
        ((int32_t *)a->out.data)[b * a->out.stride[0]] = (int32_t)best;
    }
    return HAE_OK;
}

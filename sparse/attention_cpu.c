/* Attention on the CPU, gqa form: dense causal (full and sliding window) and sparse (DSA, over
 * given positions); the references the CUDA kernels are held to.
 *
 * For query (b, t, h) at position p, kv head g = h / (Hq / Hkv), over a set S of positions (q and
 * k of dim Dk, v and o of dim Dv):
 *     o = sum_{s in S} softmax_s(scale * q . k_s) v_s,      lse = ln sum_{s in S} exp(scale * q . k_s)
 * dense: p = pos0 + t, S = [lo, p], lo = max(0, p - window + 1) (window > 0) else 0;
 * sparse: p = seq_lens[b] - T + t, S = the entries j of idx[b, t] with 0 <= j <= p.
 * k_s, v_s sit in cache slot s % cap. One pass with a running max and sum (online softmax), fp32. */
#include "internal.h"

#include <math.h>
#include <string.h>

static const void *cache_row(const hae_tensor *c, int64_t b, int64_t slot, int64_t g) {
    return (const char *)c->data + (b * c->stride[0] + slot * c->stride[1] + g * c->stride[2]) * (int64_t)hae_dtype_size(c->dtype);
}

/* gqa's FP8 head (hae.h): D codes, D / 128 f32 scales at byte D, zeros to D + 16. */
void hae_fp8_head_pack(const float *v, int64_t D, uint8_t *row) {
    float scale[4];
    for (int64_t c = 0; c < D / 128; c++) scale[c] = hae_fp8_quant_block(v + 128 * c, row + 128 * c);
    memset(row + D, 0, 16);
    memcpy(row + D, scale, sizeof(float) * (size_t)(D / 128));
}

void hae_fp8_head_unpack(const uint8_t *row, int64_t D, float *v) {
    float scale[4];
    memcpy(scale, row + D, sizeof(float) * (size_t)(D / 128));
    for (int64_t d = 0; d < D; d++) v[d] = hae_fp8e4m3_to_f32(row[d]) * scale[d / 128];
}

/* mla's FP8 token (hae.h): its latent is a gqa FP8 head of 512 dims (the 4 scales fill the 16 bytes), then
 * the 64 rope dims in bf16. */
void hae_mla_fp8_pack(const float *v, uint8_t *row) {
    hae_fp8_head_pack(v, HAE_MLA_LATENT, row);
    hae_from_f32(row + HAE_MLA_FP8_ROPE, HAE_BF16, v + HAE_MLA_LATENT, HAE_MLA_ROPE);
}

void hae_mla_fp8_unpack(const uint8_t *row, float *v) {
    hae_fp8_head_unpack(row, HAE_MLA_LATENT, v);
    hae_to_f32(row + HAE_MLA_FP8_ROPE, HAE_BF16, HAE_MLA_ROPE, v + HAE_MLA_LATENT);
}

typedef struct {
    const hae_kv_write_args *a;
} kvw_ctx;

static void kv_write_row(void *p, int64_t r) {
    const hae_kv_write_args *a = ((kvw_ctx *)p)->a;
    int64_t T = a->src.shape[1], H = a->src.shape[2], D = a->src.shape[3], cap = a->cache.shape[1];
    int64_t b = r / T, t = r % T, slot = (a->pos0 + t) % cap;
    for (int64_t h = 0; h < H; h++) {
        const void *src = hae_row_ptr(&a->src, b, t, h);
        void *dst = (void *)cache_row(&a->cache, b, slot, h);
        if (a->cache.dtype == HAE_FP8_E4M3) { /* an FP8 layout: mla's for 576 values, else gqa's */
            float v[HAE_MLA_LATENT + HAE_MLA_ROPE];
            hae_to_f32(src, a->src.dtype, D, v);
            if (D == HAE_MLA_LATENT + HAE_MLA_ROPE) hae_mla_fp8_pack(v, dst);
            else hae_fp8_head_pack(v, D, dst);
        } else if (a->src.dtype == a->cache.dtype) {
            memcpy(dst, src, (size_t)D * hae_dtype_size(a->src.dtype));
        } else {
            for (int64_t d = 0; d < D; d++) hae_store_f(dst, a->cache.dtype, d, hae_load_f(src, a->src.dtype, d));
        }
    }
}

hae_status hae_kv_write_cpu(hae_backend *be, const hae_kv_write_args *a) {
    kvw_ctx c = {a};
    hae_parallel_for_sized(be->pool, a->src.shape[0] * a->src.shape[1], a->src.shape[2] * a->src.shape[3], kv_write_row, &c);
    return HAE_OK;
}

/* One work item = (b, t, kv head): the G = Hq / Hkv query heads sharing it read each K/V row once.
 * The positions are [lo, hi] when idx is NULL, else the usable entries of idx[0..n). */
typedef struct {
    const hae_tensor *q, *k_cache, *v_cache, *out;
    float scale;
    int64_t b, t, g;
    int64_t cb; /* the sequence's row in k_cache and v_cache */
    int64_t lo, hi;
    const int32_t *idx;
    int64_t n;
    float *lse; /* G values (one per query head of the group), or NULL */
} attend_job;

static void attend(const attend_job *j, float *scratch) {
    const int64_t Hq = j->q->shape[2], Dk = j->q->shape[3], Dv = j->out->shape[3], Hkv = j->k_cache->shape[2];
    const int64_t cap = j->k_cache->shape[1], G = Hq / Hkv;
    float *q = scratch, *acc = q + G * Dk, *kf = acc + G * Dv, *vf = kf + Dk, *m = vf + Dv, *l = m + G;
    for (int64_t h = 0; h < G; h++) {
        const void *qr = hae_row_ptr(j->q, j->b, j->t, j->g * G + h);
        for (int64_t d = 0; d < Dk; d++) q[h * Dk + d] = hae_load_f(qr, j->q->dtype, d) * j->scale;
        m[h] = -INFINITY;
        l[h] = 0.0f;
    }
    memset(acc, 0, sizeof(float) * (size_t)(G * Dv));
    const int64_t count = j->idx ? j->n : j->hi - j->lo + 1;
    for (int64_t i = 0; i < count; i++) {
        int64_t s = j->idx ? j->idx[i] : j->lo + i;
        if (j->idx && (s < 0 || s > j->hi)) continue;
        const void *kr = cache_row(j->k_cache, j->cb, s % cap, j->g), *vr = cache_row(j->v_cache, j->cb, s % cap, j->g);
        if (j->k_cache->dtype == HAE_FP8_E4M3 && Dk == HAE_MLA_LATENT + HAE_MLA_ROPE) {
            hae_mla_fp8_unpack(kr, kf); /* mla's FP8 layout: the values are the key's latent */
            memcpy(vf, kf, sizeof(float) * (size_t)Dv);
        } else if (j->k_cache->dtype == HAE_FP8_E4M3) { /* gqa's */
            hae_fp8_head_unpack(kr, Dk, kf);
            hae_fp8_head_unpack(vr, Dv, vf);
        } else {
            hae_to_f32(kr, j->k_cache->dtype, Dk, kf);
            hae_to_f32(vr, j->v_cache->dtype, Dv, vf);
        }
        for (int64_t h = 0; h < G; h++) {
            const float *qh = q + h * Dk;
            float sc = 0.0f;
            for (int64_t d = 0; d < Dk; d++) sc += qh[d] * kf[d];
            float *ah = acc + h * Dv;
            if (sc > m[h]) {
                float corr = expf(m[h] - sc); /* 0 on the first key (m = -inf) */
                l[h] *= corr;
                for (int64_t d = 0; d < Dv; d++) ah[d] *= corr;
                m[h] = sc;
            }
            float w = expf(sc - m[h]);
            l[h] += w;
            for (int64_t d = 0; d < Dv; d++) ah[d] += w * vf[d];
        }
    }
    for (int64_t h = 0; h < G; h++) {
        void *out = hae_row_ptr(j->out, j->b, j->t, j->g * G + h);
        float inv = l[h] > 0.0f ? 1.0f / l[h] : 0.0f; /* no usable position: out = 0 */
        for (int64_t d = 0; d < Dv; d++) hae_store_f(out, j->out->dtype, d, acc[h * Dv + d] * inv);
        if (j->lse) j->lse[h] = l[h] > 0.0f ? m[h] + logf(l[h]) : INFINITY;
    }
}

static size_t attend_scratch(int64_t G, int64_t Dk, int64_t Dv) {
    return sizeof(float) * (size_t)(G * (Dk + Dv) + Dk + Dv + 2 * G);
}

static hae_status check_scratch(hae_backend *be, const char *op, int64_t G, int64_t Dk, int64_t Dv) {
    size_t need = attend_scratch(G, Dk, Dv);
    if (need > be->scratch_per_thread)
        return hae_error(HAE_ERR_UNSUPPORTED,
                         "%s (cpu): %lld query heads per kv head x head dims %lld/%lld need %zu bytes of scratch per "
                         "thread, %zu available",
                         op, (long long)G, (long long)Dk, (long long)Dv, need, be->scratch_per_thread);
    return HAE_OK;
}

static float *worker_scratch(hae_backend *be) {
    return (float *)((char *)be->scratch + (size_t)hae_threadpool_worker() * be->scratch_per_thread);
}

typedef struct {
    hae_backend *be;
    const hae_attention_args *a;
} attn_ctx;

static void attention_group(void *p, int64_t item) {
    const attn_ctx *c = p;
    const hae_attention_args *a = c->a;
    const int64_t T = a->q.shape[1], Hkv = a->k_cache.shape[2];
    attend_job j = {.q = &a->q, .k_cache = &a->k_cache, .v_cache = &a->v_cache, .out = &a->out, .scale = a->scale,
                    .g = item % Hkv, .t = (item / Hkv) % T, .b = item / (Hkv * T)};
    j.cb = j.b;
    j.hi = a->pos0 + j.t;
    j.lo = a->window > 0 && j.hi - a->window + 1 > 0 ? j.hi - a->window + 1 : 0;
    attend(&j, worker_scratch(c->be));
}

hae_status hae_attention_cpu(hae_backend *be, const hae_attention_args *a) {
    const int64_t Hkv = a->k_cache.shape[2];
    HAE_TRY(check_scratch(be, "hae_attention", a->q.shape[2] / Hkv, a->q.shape[3], a->v_cache.shape[3]));
    attn_ctx c = {be, a};
    hae_parallel_for(be->pool, a->q.shape[0] * a->q.shape[1] * Hkv, attention_group, &c);
    return HAE_OK;
}

typedef struct {
    hae_backend *be;
    const hae_sparse_attention_args *a;
} sparse_ctx;

static void sparse_group(void *p, int64_t item) {
    const sparse_ctx *c = p;
    const hae_sparse_attention_args *a = c->a;
    const int64_t T = a->q.shape[1], Hkv = a->k_cache.shape[2], G = a->q.shape[2] / Hkv;
    attend_job j = {.q = &a->q, .k_cache = &a->k_cache, .v_cache = &a->v_cache, .out = &a->out, .scale = a->scale,
                    .g = item % Hkv, .t = (item / Hkv) % T, .b = item / (Hkv * T)};
    const hae_tensor *idx = &a->idx, *lens = &a->seq_lens;
    j.cb = j.b;
    if (a->k_cache2.data && j.b >= a->k_cache.shape[0]) { /* the batch's second part */
        j.k_cache = &a->k_cache2, j.v_cache = &a->v_cache2, idx = &a->idx2, lens = &a->seq_lens2;
        j.cb = j.b - a->k_cache.shape[0];
    }
    j.hi = ((const int32_t *)lens->data)[j.cb * lens->stride[0]] - T + j.t;
    j.idx = (const int32_t *)hae_row_ptr(idx, j.cb, j.t, 0);
    j.n = a->idx.shape[2];
    float lse[256];
    j.lse = a->lse.data ? lse : NULL;
    attend(&j, worker_scratch(c->be));
    if (j.lse) {
        float *dst = (float *)hae_row_ptr(&a->lse, j.b, j.t, 0) + j.g * G;
        memcpy(dst, lse, sizeof(float) * (size_t)G);
    }
}

hae_status hae_sparse_attention_cpu(hae_backend *be, const hae_sparse_attention_args *a) {
    const int64_t Hkv = a->k_cache.shape[2], G = a->q.shape[2] / Hkv;
    HAE_TRY(check_scratch(be, "hae_sparse_attention", G, a->q.shape[3], a->out.shape[3]));
    if (G > 256)
        return hae_error(HAE_ERR_UNSUPPORTED, "hae_sparse_attention (cpu): %lld query heads per kv head (at most 256)",
                         (long long)G);
    sparse_ctx c = {be, a};
    hae_parallel_for(be->pool, a->q.shape[0] * a->q.shape[1] * Hkv, sparse_group, &c);
    return HAE_OK;
}

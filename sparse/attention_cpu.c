/* Dense causal attention (full and sliding window), gqa form, on the CPU: the reference the CUDA
 * kernels are held to.
 *
 * For query (b, t, h) at position p = pos0 + t, kv head g = h / (Hq / Hkv), keys s in [lo, p]:
 *     o = sum_s softmax_s(scale * q . k_s) v_s,   lo = max(0, p - window + 1) (window > 0) else 0,
 * with k_s, v_s in cache slot s % cap. One pass with a running max and sum (online softmax), fp32. */
#include "internal.h"

#include <math.h>
#include <string.h>

static const void *cache_row(const hae_tensor *c, int64_t b, int64_t slot, int64_t g) {
    return (const char *)c->data + ((b * c->shape[1] + slot) * c->shape[2] + g) * c->shape[3] * (int64_t)hae_dtype_size(c->dtype);
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
        if (a->src.dtype == a->cache.dtype) {
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

/* One work item = (b, t, kv head): the G = Hq / Hkv query heads sharing it read each K/V row once. */
typedef struct {
    hae_backend *be;
    const hae_attention_args *a;
} attn_ctx;

static void attention_group(void *p, int64_t item) {
    attn_ctx *c = p;
    const hae_attention_args *a = c->a;
    int64_t T = a->q.shape[1], Hq = a->q.shape[2], D = a->q.shape[3];
    int64_t Hkv = a->k_cache.shape[2], cap = a->k_cache.shape[1], G = Hq / Hkv;
    int64_t g = item % Hkv, t = (item / Hkv) % T, b = item / (Hkv * T);
    int64_t pos = a->pos0 + t, lo = a->window > 0 && pos - a->window + 1 > 0 ? pos - a->window + 1 : 0;

    float *q = (float *)((char *)c->be->scratch + (size_t)hae_threadpool_worker() * c->be->scratch_per_thread);
    float *acc = q + G * D, *kf = acc + G * D, *vf = kf + D, *m = vf + D, *l = m + G;
    for (int64_t j = 0; j < G; j++) {
        const void *qr = hae_row_ptr(&a->q, b, t, g * G + j);
        for (int64_t d = 0; d < D; d++) q[j * D + d] = hae_load_f(qr, a->q.dtype, d) * a->scale;
        m[j] = -INFINITY;
        l[j] = 0.0f;
    }
    memset(acc, 0, sizeof(float) * (size_t)(G * D));
    for (int64_t s = lo; s <= pos; s++) {
        const void *kr = cache_row(&a->k_cache, b, s % cap, g), *vr = cache_row(&a->v_cache, b, s % cap, g);
        for (int64_t d = 0; d < D; d++) {
            kf[d] = hae_load_f(kr, a->k_cache.dtype, d);
            vf[d] = hae_load_f(vr, a->v_cache.dtype, d);
        }
        for (int64_t j = 0; j < G; j++) {
            const float *qj = q + j * D;
            float sc = 0.0f;
            for (int64_t d = 0; d < D; d++) sc += qj[d] * kf[d];
            float *aj = acc + j * D;
            if (sc > m[j]) {
                float corr = expf(m[j] - sc); /* 0 on the first key (m = -inf) */
                l[j] *= corr;
                for (int64_t d = 0; d < D; d++) aj[d] *= corr;
                m[j] = sc;
            }
            float w = expf(sc - m[j]);
            l[j] += w;
            for (int64_t d = 0; d < D; d++) aj[d] += w * vf[d];
        }
    }
    for (int64_t j = 0; j < G; j++) {
        void *out = hae_row_ptr(&a->out, b, t, g * G + j);
        float inv = 1.0f / l[j];
        for (int64_t d = 0; d < D; d++) hae_store_f(out, a->out.dtype, d, acc[j * D + d] * inv);
    }
}

hae_status hae_attention_cpu(hae_backend *be, const hae_attention_args *a) {
    int64_t Hq = a->q.shape[2], D = a->q.shape[3], Hkv = a->k_cache.shape[2], G = Hq / Hkv;
    size_t need = sizeof(float) * (size_t)(2 * G * D + 2 * D + 2 * G);
    if (need > be->scratch_per_thread)
        return hae_error(HAE_ERR_UNSUPPORTED,
                         "hae_attention (cpu): %lld query heads per kv head x head dim %lld need %zu bytes of scratch "
                         "per thread, %zu available",
                         (long long)G, (long long)D, need, be->scratch_per_thread);
    attn_ctx c = {be, a};
    hae_parallel_for(be->pool, a->q.shape[0] * a->q.shape[1] * Hkv, attention_group, &c);
    return HAE_OK;
}

/* The KV cache, for now one contiguous K and one V buffer per layer on the model's device (mla: one
 * latent buffer, V a view of its last dims). Its
 * interface (per-layer [B, cap, Hkv, D] views, slots p % cap) is what the paged, tiered pool of
 * DESIGN.md §2 will implement later. */
#include "internal.h"

#include <stdlib.h>

struct hae_kv_cache {
    hae_backend *be;
    int n_layers;
    int64_t batch;
    hae_dtype dtype;
    hae_kv_layer_spec *specs;
    void **k, **v;
    size_t bytes;
};

/* Bytes of one token's K (or V) in one layer. */
static size_t half_bytes(const hae_kv_layer_spec *spec, hae_dtype dtype) {
    return spec->cap > 0 ? (size_t)spec->kv_heads * (size_t)spec->head_dim * hae_dtype_size(dtype) : 0;
}

size_t hae_kv_bytes_per_token(const hae_kv_layer_spec *spec, hae_dtype dtype) {
    return (spec->v_dim > 0 ? 1 : 2) * half_bytes(spec, dtype);
}

hae_status hae_kv_cache_create(hae_backend *be, int n_layers, const hae_kv_layer_spec *specs, int64_t batch,
                               hae_dtype dtype, size_t budget, hae_kv_cache **out) {
    *out = NULL;
    if (dtype != HAE_F32 && dtype != HAE_BF16)
        return hae_error(HAE_ERR_INVALID, "kv cache: dtype %s (need f32 or bf16)", hae_dtype_name(dtype));
    size_t total = 0;
    for (int l = 0; l < n_layers; l++) {
        if (specs[l].cap < 0 || specs[l].kv_heads < 0 || specs[l].head_dim < 0 || specs[l].v_dim < 0)
            return hae_error(HAE_ERR_INVALID, "kv cache: layer %d has a negative size", l);
        if (specs[l].v_dim > 0 && (specs[l].v_dim > specs[l].head_dim || specs[l].kv_heads != 1))
            return hae_error(HAE_ERR_INVALID, "kv cache: layer %d: V as a view of K needs one kv head and v_dim <= "
                             "head_dim (got %lld heads, v_dim %lld, head_dim %lld)", l, (long long)specs[l].kv_heads,
                             (long long)specs[l].v_dim, (long long)specs[l].head_dim);
        total += (size_t)batch * (size_t)specs[l].cap * hae_kv_bytes_per_token(&specs[l], dtype);
    }
    size_t free_b = 0, total_b = 0;
    HAE_TRY(hae_backend_mem_info(be, &free_b, &total_b));
    size_t limit = budget ? budget : free_b;
    if (total > limit)
        return hae_error(HAE_ERR_OOM,
                         "kv cache: %zu bytes (%.2f GiB) asked on %s, %s %zu bytes (%.2f GiB)%s", total,
                         (double)total / (1 << 30), hae_backend_name(be),
                         budget ? "runtime.kv_budget allows" : "the device has free", limit, (double)limit / (1 << 30),
                         budget ? "" : "; lower runtime.batch, prefill or decode, or use a smaller model");

    hae_kv_cache *kv = calloc(1, sizeof *kv);
    if (!kv) return hae_error(HAE_ERR_OOM, "kv cache: out of host memory");
    kv->be = be;
    kv->n_layers = n_layers;
    kv->batch = batch;
    kv->dtype = dtype;
    kv->specs = calloc((size_t)n_layers, sizeof *kv->specs);
    kv->k = calloc((size_t)n_layers, sizeof(void *));
    kv->v = calloc((size_t)n_layers, sizeof(void *));
    if (!kv->specs || !kv->k || !kv->v) {
        hae_kv_cache_destroy(kv);
        return hae_error(HAE_ERR_OOM, "kv cache: out of host memory");
    }
    for (int l = 0; l < n_layers; l++) {
        kv->specs[l] = specs[l];
        size_t half = (size_t)batch * (size_t)specs[l].cap * half_bytes(&specs[l], dtype);
        if (!half) continue;
        hae_status st = hae_backend_alloc(be, half, &kv->k[l]);
        if (st == HAE_OK && specs[l].v_dim == 0) st = hae_backend_alloc(be, half, &kv->v[l]);
        if (st != HAE_OK) {
            hae_kv_cache_destroy(kv);
            return hae_error_wrap(st, "kv cache: layer %d of %d", l, n_layers);
        }
        kv->bytes += (specs[l].v_dim ? 1 : 2) * half;
    }
    *out = kv;
    return HAE_OK;
}

void hae_kv_cache_destroy(hae_kv_cache *kv) {
    if (!kv) return;
    for (int l = 0; l < kv->n_layers; l++) {
        if (kv->k) hae_backend_free(kv->be, kv->k[l]);
        if (kv->v) hae_backend_free(kv->be, kv->v[l]);
    }
    free(kv->k);
    free(kv->v);
    free(kv->specs);
    free(kv);
}

void hae_kv_cache_layer(const hae_kv_cache *kv, int layer, hae_tensor *k, hae_tensor *v) {
    HAE_ASSERT(layer >= 0 && layer < kv->n_layers);
    const hae_kv_layer_spec *s = &kv->specs[layer];
    hae_device dev = hae_backend_device(kv->be);
    *k = hae_tensor_4d(kv->k[layer], kv->dtype, dev, kv->batch, s->cap, s->kv_heads, s->head_dim);
    if (s->v_dim == 0) {
        *v = hae_tensor_4d(kv->v[layer], kv->dtype, dev, kv->batch, s->cap, s->kv_heads, s->head_dim);
        return;
    }
    *v = *k; /* one kv head: its stride is free, and set so the head reads as dense */
    v->shape[3] = v->stride[2] = s->v_dim;
    if (k->data) v->data = (char *)k->data + (s->head_dim - s->v_dim) * (int64_t)hae_dtype_size(kv->dtype);
}

size_t hae_kv_cache_bytes(const hae_kv_cache *kv) { return kv->bytes; }

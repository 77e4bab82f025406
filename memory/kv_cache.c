/* The KV cache: one contiguous K and one V buffer per layer and tier (mla: one latent buffer, V a view of its
 * first dims): the backend's memory, or host-tier memory that kernels read over PCIe; a host-tier layer may
 * keep its first gpu_seqs sequences in the backend's memory (a batch split between the tiers). Its interface
 * (per-layer [n, cap, Hkv, D] views, slots p % cap) is what the paged pool of DESIGN.md §2 will implement later. */
#include "internal.h"

#include <stdlib.h>

struct hae_kv_cache {
    hae_backend *be;
    int n_layers;
    int64_t batch;
    hae_dtype dtype;
    hae_kv_layer_spec *specs;
    void **k, **v; /* [layer * 2 + tier] */
    size_t bytes[HAE_TIER_COUNT];
};

/* Bytes of one token's K (or V) in one layer. */
static size_t half_bytes(const hae_kv_layer_spec *spec, hae_dtype dtype) {
    if (spec->cap <= 0) return 0;
    if (spec->fp8) /* mla's token (V a view of it), or gqa's heads */
        return spec->v_dim ? HAE_MLA_FP8_ROW : (size_t)spec->kv_heads * (size_t)HAE_FP8_HEAD(spec->head_dim);
    return (size_t)spec->kv_heads * (size_t)spec->head_dim * hae_dtype_size(dtype);
}

/* How many of a layer's sequences are in a tier. */
static int64_t seqs_in(const hae_kv_layer_spec *spec, int64_t batch, hae_tier tier) {
    if (spec->tier == HAE_TIER_GPU) return tier == HAE_TIER_GPU ? batch : 0;
    return tier == HAE_TIER_GPU ? spec->gpu_seqs : batch - spec->gpu_seqs;
}

size_t hae_kv_bytes_per_token(const hae_kv_layer_spec *spec, hae_dtype dtype) {
    return (spec->v_dim > 0 ? 1 : 2) * half_bytes(spec, dtype);
}

hae_status hae_kv_cache_create(hae_backend *be, int n_layers, const hae_kv_layer_spec *specs, int64_t batch,
                               hae_dtype dtype, size_t budget, size_t host_budget, hae_kv_cache **out) {
    *out = NULL;
    if (dtype != HAE_F32 && dtype != HAE_BF16)
        return hae_error(HAE_ERR_INVALID, "kv cache: dtype %s (need f32 or bf16)", hae_dtype_name(dtype));
    size_t total[HAE_TIER_COUNT] = {0};
    for (int l = 0; l < n_layers; l++) {
        if (specs[l].cap < 0 || specs[l].kv_heads < 0 || specs[l].head_dim < 0 || specs[l].v_dim < 0)
            return hae_error(HAE_ERR_INVALID, "kv cache: layer %d has a negative size", l);
        if ((unsigned)specs[l].tier >= HAE_TIER_COUNT)
            return hae_error(HAE_ERR_INVALID, "kv cache: layer %d: tier %d is not a hae_tier", l, (int)specs[l].tier);
        if (specs[l].gpu_seqs < 0 || specs[l].gpu_seqs > batch ||
            (specs[l].gpu_seqs > 0 && specs[l].tier != HAE_TIER_HOST))
            return hae_error(HAE_ERR_INVALID, "kv cache: layer %d: %lld sequences on the GPU of a batch of %lld in the "
                             "%s tier (a split needs the host tier and 0..batch)", l, (long long)specs[l].gpu_seqs,
                             (long long)batch, hae_tier_name(specs[l].tier));
        if (specs[l].v_dim > 0 && (specs[l].v_dim > specs[l].head_dim || specs[l].kv_heads != 1))
            return hae_error(HAE_ERR_INVALID, "kv cache: layer %d: V as a view of K needs one kv head and v_dim <= "
                             "head_dim (got %lld heads, v_dim %lld, head_dim %lld)", l, (long long)specs[l].kv_heads,
                             (long long)specs[l].v_dim, (long long)specs[l].head_dim);
        if (specs[l].fp8 && specs[l].v_dim && (specs[l].kv_heads != 1 || specs[l].head_dim != HAE_MLA_LATENT + HAE_MLA_ROPE ||
                                               specs[l].v_dim != HAE_MLA_LATENT))
            return hae_error(HAE_ERR_INVALID, "kv cache: layer %d: mla's FP8 layout holds one kv head of %d dims with "
                             "V its first %d (got %lld heads, head_dim %lld, v_dim %lld)", l,
                             HAE_MLA_LATENT + HAE_MLA_ROPE, HAE_MLA_LATENT, (long long)specs[l].kv_heads,
                             (long long)specs[l].head_dim, (long long)specs[l].v_dim);
        if (specs[l].fp8 && !specs[l].v_dim && !HAE_FP8_HEAD_DIM_OK(specs[l].head_dim))
            return hae_error(HAE_ERR_INVALID, "kv cache: layer %d: gqa's FP8 layout takes heads of 128, 256, 384 or 512 "
                             "dims (got head_dim %lld)", l, (long long)specs[l].head_dim);
        const size_t seq = (size_t)specs[l].cap * hae_kv_bytes_per_token(&specs[l], dtype);
        total[HAE_TIER_GPU] += (size_t)seqs_in(&specs[l], batch, HAE_TIER_GPU) * seq;
        total[HAE_TIER_HOST] += (size_t)seqs_in(&specs[l], batch, HAE_TIER_HOST) * seq;
    }
    size_t free_b = 0, total_b = 0;
    HAE_TRY(hae_backend_mem_info(be, &free_b, &total_b));
    size_t limit = budget ? budget : free_b;
    if (total[HAE_TIER_GPU] > limit)
        return hae_error(HAE_ERR_OOM,
                         "kv cache: %zu bytes (%.2f GiB) asked on %s, %s %zu bytes (%.2f GiB)%s", total[HAE_TIER_GPU],
                         (double)total[HAE_TIER_GPU] / (1 << 30), hae_backend_name(be),
                         budget ? "runtime.kv_budget allows" : "the device has free", limit, (double)limit / (1 << 30),
                         budget ? "" : "; lower runtime.batch, prefill or decode, put K/V on the host tier "
                                       "(memory.dsa_kv: host), or use a smaller model");
    if (total[HAE_TIER_HOST]) {
        size_t ram = hae_host_available_bytes(), hl = host_budget ? host_budget : ram;
        if (total[HAE_TIER_HOST] > hl)
            return hae_error(HAE_ERR_OOM, "kv cache: %zu bytes (%.2f GiB) asked in the host tier, %s %zu bytes (%.2f GiB)",
                             total[HAE_TIER_HOST], (double)total[HAE_TIER_HOST] / (1 << 30),
                             host_budget ? "memory.host_budget allows" : "the machine has available", hl,
                             (double)hl / (1 << 30));
    }

    hae_kv_cache *kv = calloc(1, sizeof *kv);
    if (!kv) return hae_error(HAE_ERR_OOM, "kv cache: out of host memory");
    kv->be = be;
    kv->n_layers = n_layers;
    kv->batch = batch;
    kv->dtype = dtype;
    kv->specs = calloc((size_t)n_layers, sizeof *kv->specs);
    kv->k = calloc(2 * (size_t)n_layers, sizeof(void *));
    kv->v = calloc(2 * (size_t)n_layers, sizeof(void *));
    if (!kv->specs || !kv->k || !kv->v) {
        hae_kv_cache_destroy(kv);
        return hae_error(HAE_ERR_OOM, "kv cache: out of host memory");
    }
    for (int l = 0; l < n_layers; l++) {
        kv->specs[l] = specs[l];
        for (int t = 0; t < HAE_TIER_COUNT; t++) {
            const size_t half = (size_t)seqs_in(&specs[l], batch, (hae_tier)t) * (size_t)specs[l].cap *
                                half_bytes(&specs[l], dtype);
            if (!half) continue;
            const bool host = t == HAE_TIER_HOST;
            void **k = &kv->k[2 * l + t], **v = &kv->v[2 * l + t];
            hae_status st = host ? hae_backend_alloc_host(be, half, k) : hae_backend_alloc(be, half, k);
            if (st == HAE_OK && specs[l].v_dim == 0)
                st = host ? hae_backend_alloc_host(be, half, v) : hae_backend_alloc(be, half, v);
            if (st != HAE_OK) {
                hae_kv_cache_destroy(kv);
                return hae_error_wrap(st, "kv cache: layer %d of %d (%s tier)", l, n_layers, hae_tier_name((hae_tier)t));
            }
            kv->bytes[t] += (specs[l].v_dim ? 1 : 2) * half;
        }
    }
    *out = kv;
    return HAE_OK;
}

void hae_kv_cache_destroy(hae_kv_cache *kv) {
    if (!kv) return;
    for (int i = 0; i < 2 * kv->n_layers; i++) {
        void (*release)(hae_backend *, void *) = i % 2 == HAE_TIER_HOST ? hae_backend_free_host : hae_backend_free;
        if (kv->k) release(kv->be, kv->k[i]);
        if (kv->v) release(kv->be, kv->v[i]);
    }
    free(kv->k);
    free(kv->v);
    free(kv->specs);
    free(kv);
}

void hae_kv_cache_layer(const hae_kv_cache *kv, int layer, hae_tier tier, hae_tensor *k, hae_tensor *v) {
    HAE_ASSERT(layer >= 0 && layer < kv->n_layers && (unsigned)tier < HAE_TIER_COUNT);
    const hae_kv_layer_spec *s = &kv->specs[layer];
    const hae_device dev = hae_backend_device(kv->be);
    const int64_t n = seqs_in(s, kv->batch, tier);
    void *kd = kv->k[2 * layer + tier], *vd = kv->v[2 * layer + tier];
    if (s->fp8 && s->v_dim)
        *k = hae_tensor_4d(kd, HAE_FP8_E4M3, dev, n, s->cap, 1, HAE_MLA_FP8_ROW);
    else if (s->fp8)
        *k = hae_tensor_4d(kd, HAE_FP8_E4M3, dev, n, s->cap, s->kv_heads, HAE_FP8_HEAD(s->head_dim));
    else
        *k = hae_tensor_4d(kd, kv->dtype, dev, n, s->cap, s->kv_heads, s->head_dim);
    if (s->v_dim == 0) {
        *v = *k;
        v->data = vd;
        return;
    }
    *v = *k; /* one kv head: its stride is free, and set so the head reads as dense */
    v->shape[3] = v->stride[2] = s->v_dim;
}

size_t hae_kv_cache_bytes(const hae_kv_cache *kv) { return kv->bytes[HAE_TIER_GPU] + kv->bytes[HAE_TIER_HOST]; }

size_t hae_kv_cache_tier_bytes(const hae_kv_cache *kv, hae_tier tier) {
    return (unsigned)tier < HAE_TIER_COUNT ? kv->bytes[tier] : 0;
}

/* Op entry points: check shapes, dtypes and devices, then run the backend's implementation. */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* Each check names the op, the argument and its description, so a caller sees what was passed. */
hae_status hae_check_tensor(const char *op, const char *name, const hae_tensor *t, const hae_backend *be,
                               int ndim, unsigned dtypes) {
    char d[96];
    if (t->data == NULL && hae_tensor_numel(t) > 0)
        return hae_error(HAE_ERR_INVALID, "%s: %s is NULL", op, name);
    if (t->ndim != ndim)
        return hae_error(HAE_ERR_INVALID, "%s: %s %s: expected %d dims", op, name, hae_tensor_describe(t, d, sizeof d),
                         ndim);
    if (!(dtypes & HAE_DTM(t->dtype)))
        return hae_error(HAE_ERR_INVALID, "%s: %s %s: dtype %s not supported here", op, name,
                         hae_tensor_describe(t, d, sizeof d), hae_dtype_name(t->dtype));
    if (t->device != be->device)
        return hae_error(HAE_ERR_INVALID, "%s: %s %s lives on %s but the backend is %s", op, name,
                         hae_tensor_describe(t, d, sizeof d), t->device == HAE_CUDA ? "cuda" : "cpu",
                         be->device == HAE_CUDA ? "cuda" : "cpu");
    for (int i = 0; i < ndim; i++)
        if (t->shape[i] < 0)
            return hae_error(HAE_ERR_INVALID, "%s: %s %s: negative dim", op, name, hae_tensor_describe(t, d, sizeof d));
    if (ndim > 0 && t->stride[ndim - 1] != 1)
        return hae_error(HAE_ERR_INVALID, "%s: %s %s: innermost stride %lld (need 1)", op, name,
                         hae_tensor_describe(t, d, sizeof d), (long long)t->stride[ndim - 1]);
    /* Rows may be strided ([B, T] of a wider buffer) but what lies inside a row must be dense. */
    for (int i = 2; i < ndim - 1; i++)
        if (t->stride[i] != t->stride[i + 1] * t->shape[i + 1])
            return hae_error(HAE_ERR_INVALID, "%s: %s %s: must be dense within a row", op, name,
                             hae_tensor_describe(t, d, sizeof d));
    return HAE_OK;
}

hae_status hae_shape_mismatch(const char *op, const char *what, const hae_tensor *x, const hae_tensor *y) {
    char a[96], b[96];
    return hae_error(HAE_ERR_INVALID, "%s: %s: %s vs %s", op, what, hae_tensor_describe(x, a, sizeof a),
                     hae_tensor_describe(y, b, sizeof b));
}

#define DISPATCH(op, be, a)                                                                        \
    ((be)->device == HAE_CUDA ? dispatch_cuda_##op(be, a) : hae_##op##_cpu(be, a))

#ifdef HAE_HAVE_CUDA
#define CUDA_IMPL(op)                                                                              \
    static hae_status dispatch_cuda_##op(hae_backend *be, const hae_##op##_args *a) { return hae_##op##_cuda(be, a); }
#else
#define CUDA_IMPL(op)                                                                              \
    static hae_status dispatch_cuda_##op(hae_backend *be, const hae_##op##_args *a) {               \
        (void)be, (void)a;                                                                         \
        return hae_error(HAE_ERR_UNSUPPORTED, "hae_" #op ": this build has no CUDA");              \
    }
#endif
CUDA_IMPL(embedding)
CUDA_IMPL(rmsnorm)
CUDA_IMPL(gemm)
CUDA_IMPL(swiglu)
CUDA_IMPL(rope)
CUDA_IMPL(sample)
CUDA_IMPL(kv_write)
CUDA_IMPL(attention)
CUDA_IMPL(sparse_attention)
CUDA_IMPL(kv_gather)
CUDA_IMPL(kv_slots)

hae_status hae_embedding(hae_backend *be, const hae_embedding_args *a) {
    const char *op = "hae_embedding";
    HAE_TRY(hae_check_tensor(op, "ids", &a->ids, be, 1, HAE_DTM(HAE_I32)));
    HAE_TRY(hae_check_tensor(op, "table", &a->table, be, 2, HAE_FLOATS));
    HAE_TRY(hae_check_tensor(op, "out", &a->out, be, 2, HAE_DTM(HAE_F32)));
    if (a->out.shape[0] != a->ids.shape[0] || a->out.shape[1] != a->table.shape[1])
        return hae_shape_mismatch(op, "out must be [N, D] for N ids and a [V, D] table", &a->out, &a->table);
    return DISPATCH(embedding, be, a);
}

hae_status hae_rmsnorm(hae_backend *be, const hae_rmsnorm_args *a) {
    const char *op = "hae_rmsnorm";
    HAE_TRY(hae_check_tensor(op, "x", &a->x, be, 2, HAE_DTM(HAE_F32)));
    HAE_TRY(hae_check_tensor(op, "weight", &a->weight, be, 1, HAE_DTM(HAE_F32)));
    HAE_TRY(hae_check_tensor(op, "out", &a->out, be, 2, HAE_FLOATS));
    if (a->weight.shape[0] != a->x.shape[1]) return hae_shape_mismatch(op, "weight must be [D]", &a->x, &a->weight);
    if (a->out.shape[0] != a->x.shape[0] || a->out.shape[1] != a->x.shape[1])
        return hae_shape_mismatch(op, "out must match x", &a->x, &a->out);
    if (!(a->eps > 0.0f)) return hae_error(HAE_ERR_INVALID, "%s: eps %g must be > 0", op, (double)a->eps);
    if (a->bias.data) {
        HAE_TRY(hae_check_tensor(op, "bias", &a->bias, be, 1, HAE_DTM(HAE_F32)));
        if (a->bias.shape[0] != a->x.shape[1]) return hae_shape_mismatch(op, "bias must be [D]", &a->x, &a->bias);
    }
    return DISPATCH(rmsnorm, be, a);
}

hae_status hae_gemm(hae_backend *be, const hae_gemm_args *a) {
    const char *op = "hae_gemm";
    HAE_TRY(hae_check_tensor(op, "a", &a->a, be, 2, HAE_FLOATS));
    HAE_TRY(hae_check_tensor(op, "b", &a->b, be, 2, HAE_FLOATS));
    HAE_TRY(hae_check_tensor(op, "c", &a->c, be, 2, a->accumulate ? HAE_DTM(HAE_F32) : HAE_FLOATS));
    if (a->a.dtype != a->b.dtype) return hae_shape_mismatch(op, "a and b must share a dtype", &a->a, &a->b);
    if (a->a.shape[1] != a->b.shape[1]) return hae_shape_mismatch(op, "a [M, K] and b [N, K] differ in K", &a->a, &a->b);
    if (a->c.shape[0] != a->a.shape[0] || a->c.shape[1] != a->b.shape[0])
        return hae_shape_mismatch(op, "c must be [M, N] for a [M, K] and b [N, K]", &a->c, &a->b);
    if (a->batch < 0 || a->stride_a < 0 || a->stride_b < 0 || a->stride_c < 0)
        return hae_error(HAE_ERR_INVALID, "%s: batch %lld and strides a %lld, b %lld, c %lld must be >= 0", op,
                         (long long)a->batch, (long long)a->stride_a, (long long)a->stride_b, (long long)a->stride_c);
    if (a->batch > 1) {
        /* the products' outputs: blocks side by side inside c's rows, or whole matrices one after another */
        const int64_t M = a->c.shape[0], N = a->c.shape[1], ld = a->c.stride[0];
        const bool beside = a->stride_c >= N && (M <= 1 || (a->batch - 1) * a->stride_c + N <= ld);
        const bool after = M >= 1 && a->stride_c >= (M - 1) * ld + N && (M <= 1 || ld >= N);
        if (!beside && !after)
            return hae_error(HAE_ERR_INVALID, "%s: %lld products of c [%lld, %lld] (row stride %lld) %lld elements "
                             "apart overlap", op, (long long)a->batch, (long long)M, (long long)N, (long long)ld,
                             (long long)a->stride_c);
    }
    return DISPATCH(gemm, be, a);
}

hae_status hae_swiglu(hae_backend *be, const hae_swiglu_args *a) {
    const char *op = "hae_swiglu";
    HAE_TRY(hae_check_tensor(op, "gate_up", &a->gate_up, be, 2, HAE_FLOATS));
    HAE_TRY(hae_check_tensor(op, "out", &a->out, be, 2, HAE_FLOATS));
    if (a->out.shape[0] != a->gate_up.shape[0] || a->gate_up.shape[1] != 2 * a->out.shape[1])
        return hae_shape_mismatch(op, "gate_up must be [N, 2F] for out [N, F]", &a->gate_up, &a->out);
    return DISPATCH(swiglu, be, a);
}

hae_status hae_rope(hae_backend *be, const hae_rope_args *a) {
    const char *op = "hae_rope";
    HAE_TRY(hae_check_tensor(op, "x", &a->x, be, 4, HAE_FLOATS));
    int64_t D = a->x.shape[3];
    if (a->rot_dims < 0 || a->rot_dims % 2 || a->rot_offset < 0 || a->rot_dims > D - a->rot_offset)
        return hae_error(HAE_ERR_INVALID, "%s: rot_dims %d must be even and rot_offset %d + rot_dims within D %lld", op,
                         a->rot_dims, a->rot_offset, (long long)D);
    if (a->rot_dims > 0 && !(a->theta > 0.0f))
        return hae_error(HAE_ERR_INVALID, "%s: theta %g must be > 0", op, (double)a->theta);
    if (a->pos0 < 0) return hae_error(HAE_ERR_INVALID, "%s: pos0 %lld < 0", op, (long long)a->pos0);
    if (a->rot_dims == 0 || hae_tensor_numel(&a->x) == 0) return HAE_OK;
    return DISPATCH(rope, be, a);
}

hae_status hae_sample(hae_backend *be, const hae_sample_args *a) {
    const char *op = "hae_sample";
    HAE_TRY(hae_check_tensor(op, "logits", &a->logits, be, 2, HAE_DTM(HAE_F32)));
    HAE_TRY(hae_check_tensor(op, "out", &a->out, be, 1, HAE_DTM(HAE_I32)));
    if (a->out.shape[0] != a->logits.shape[0]) return hae_shape_mismatch(op, "out must be [B]", &a->logits, &a->out);
    if (a->logits.shape[1] < 1) return hae_shape_mismatch(op, "logits need V >= 1", &a->logits, &a->out);
    if (a->temperature < 0.0f || a->temperature != a->temperature)
        return hae_error(HAE_ERR_INVALID, "%s: temperature %g must be >= 0", op, (double)a->temperature);
    return DISPATCH(sample, be, a);
}

hae_status hae_convert(hae_backend *be, const hae_tensor *src, const hae_tensor *dst) {
    const char *op = "hae_convert";
    unsigned ok = HAE_FLOATS | HAE_DTM(HAE_F16) | HAE_DTM(HAE_FP8_E4M3);
    HAE_TRY(hae_check_tensor(op, "src", src, be, src->ndim, ok));
    HAE_TRY(hae_check_tensor(op, "dst", dst, be, dst->ndim, ok));
    if (!hae_tensor_is_contiguous(src) || !hae_tensor_is_contiguous(dst) ||
        hae_tensor_numel(src) != hae_tensor_numel(dst))
        return hae_shape_mismatch(op, "src and dst must be contiguous with the same element count", src, dst);
    if (hae_tensor_numel(src) == 0) return HAE_OK;
#ifdef HAE_HAVE_CUDA
    if (be->device == HAE_CUDA) return hae_convert_cuda(be, src, dst);
#endif
    return hae_convert_cpu(be, src, dst);
}

/* A KV cache [B, cap, Hkv, D] for x's batch: slots may be strided (a view of a wider cache, such as
 * mla's values inside its latent) but must not overlap; heads are dense within a slot. */
static hae_status check_cache(const char *op, const char *name, const hae_tensor *cache, const hae_tensor *x,
                              int64_t D, hae_backend *be) {
    char d[96];
    HAE_TRY(hae_check_tensor(op, name, cache, be, 4, HAE_FLOATS));
    if (cache->shape[0] != x->shape[0] || cache->shape[3] != D)
        return hae_error(HAE_ERR_INVALID, "%s: %s %s: expected [%lld, cap, Hkv, %lld] for %s", op, name,
                         hae_tensor_describe(cache, d, sizeof d), (long long)x->shape[0], (long long)D,
                         hae_tensor_describe(x, (char[96]){0}, 96));
    if (cache->shape[1] < 1) return hae_shape_mismatch(op, "cache has no slots", cache, x);
    const int64_t slot = cache->shape[2] * cache->shape[3];
    if (cache->stride[1] < slot || (cache->shape[0] > 1 && cache->stride[0] < cache->shape[1] * cache->stride[1]))
        return hae_error(HAE_ERR_INVALID, "%s: %s %s: strides [%lld, %lld] make slots overlap (a slot holds %lld "
                         "elements)", op, name, hae_tensor_describe(cache, d, sizeof d), (long long)cache->stride[0],
                         (long long)cache->stride[1], (long long)slot);
    return HAE_OK;
}

/* An FP8 layout (hae.h) for rows x [B, .., H, D]: mla's, a cache [B, cap, 1, 656] of fp8-e4m3 bytes for D = 576
 * (512 latent + 64 rope); gqa's, [B, cap, Hkv, D + 16] for D a multiple of 128 up to 512. */
static hae_status check_fp8_cache(const char *op, const char *name, const hae_tensor *cache, const hae_tensor *x,
                                  int64_t D, hae_backend *be) {
    char d[96], e[96];
    HAE_TRY(hae_check_tensor(op, name, cache, be, 4, HAE_DTM(HAE_FP8_E4M3)));
    const bool mla = D == HAE_MLA_LATENT + HAE_MLA_ROPE;
    const int64_t row = mla ? HAE_MLA_FP8_ROW : HAE_FP8_HEAD(D);
    if (cache->shape[0] != x->shape[0] || x->shape[2] < 1 || (mla && cache->shape[2] != 1) ||
        (!mla && !HAE_FP8_HEAD_DIM_OK(D)) || cache->shape[3] != row)
        return hae_error(HAE_ERR_INVALID, "%s: %s %s with %s: an fp8-e4m3 cache holds mla's FP8 layout, [%lld, cap, 1, "
                         "%d] bytes for rows of %d (512 latent + 64 rope) values, or gqa's, [%lld, cap, Hkv, D + 16] "
                         "for heads of D = 128, 256, 384 or 512 values (D here: %lld)", op, name,
                         hae_tensor_describe(cache, d, sizeof d), hae_tensor_describe(x, e, sizeof e),
                         (long long)x->shape[0], HAE_MLA_FP8_ROW, HAE_MLA_LATENT + HAE_MLA_ROPE, (long long)x->shape[0],
                         (long long)D);
    if (cache->shape[1] < 1) return hae_shape_mismatch(op, "cache has no slots", cache, x);
    const int64_t slot = cache->shape[2] * row;
    if (cache->stride[1] < slot || cache->stride[1] % 16 || cache->stride[0] % 16 || (uintptr_t)cache->data % 16 ||
        (cache->shape[0] > 1 && cache->stride[0] < cache->shape[1] * cache->stride[1]))
        return hae_error(HAE_ERR_INVALID, "%s: %s %s at %p: strides [%lld, %lld]: slots must not overlap and start "
                         "16-byte aligned (a slot holds %lld bytes)", op, name, hae_tensor_describe(cache, d, sizeof d),
                         cache->data, (long long)cache->stride[0], (long long)cache->stride[1], (long long)slot);
    return HAE_OK;
}

hae_status hae_kv_write(hae_backend *be, const hae_kv_write_args *a) {
    const char *op = "hae_kv_write";
    HAE_TRY(hae_check_tensor(op, "src", &a->src, be, 4, HAE_FLOATS));
    if (a->cache.dtype == HAE_FP8_E4M3) HAE_TRY(check_fp8_cache(op, "cache", &a->cache, &a->src, a->src.shape[3], be));
    else HAE_TRY(check_cache(op, "cache", &a->cache, &a->src, a->src.shape[3], be));
    if (a->cache.shape[2] != a->src.shape[2]) return hae_shape_mismatch(op, "kv heads differ", &a->src, &a->cache);
    if (a->pos0 < 0) return hae_error(HAE_ERR_INVALID, "%s: pos0 %lld < 0", op, (long long)a->pos0);
    if (a->src.shape[1] > a->cache.shape[1])
        return hae_shape_mismatch(op, "more tokens than cache slots", &a->src, &a->cache);
    if (hae_tensor_numel(&a->src) == 0) return HAE_OK;
    return DISPATCH(kv_write, be, a);
}

/* What dense and sparse attention share: q [B, T, Hq, Dk], k_cache [B, cap, Hkv, Dk], v_cache
 * [B, cap, Hkv, Dv] and out [B, T, Hq, Dv] agree (gqa heads included). */
static hae_status check_qkv(const char *op, hae_backend *be, const hae_tensor *q, const hae_tensor *kc,
                            const hae_tensor *vc, const hae_tensor *out) {
    HAE_TRY(hae_check_tensor(op, "q", q, be, 4, HAE_FLOATS));
    HAE_TRY(hae_check_tensor(op, "out", out, be, 4, HAE_FLOATS));
    if (kc->dtype == HAE_FP8_E4M3 || vc->dtype == HAE_FP8_E4M3) { /* an FP8 layout (hae.h) */
        if (strcmp(op, "hae_sparse_attention"))
            return hae_error(HAE_ERR_UNSUPPORTED, "%s: the FP8 cache layouts are read by hae_sparse_attention only", op);
        HAE_TRY(check_fp8_cache(op, "k_cache", kc, q, q->shape[3], be));
        for (int i = 0; i < 3; i++)
            if (out->shape[i] != q->shape[i]) return hae_shape_mismatch(op, "out [B, T, Hq, Dv] must match q's B, T, Hq", q, out);
        if (q->shape[3] == HAE_MLA_LATENT + HAE_MLA_ROPE) { /* mla's: v_cache is k_cache's latent */
            if (vc->dtype != HAE_FP8_E4M3 || vc->data != kc->data || vc->ndim != 4 || vc->shape[0] != kc->shape[0] ||
                vc->shape[1] != kc->shape[1] || vc->shape[2] != 1 || vc->shape[3] != HAE_MLA_LATENT ||
                vc->stride[0] != kc->stride[0] || vc->stride[1] != kc->stride[1])
                return hae_shape_mismatch(op, "with mla's FP8 layout v_cache must view k_cache's bytes as [B, cap, 1, 512]",
                                          kc, vc);
            if (out->shape[3] != HAE_MLA_LATENT) return hae_shape_mismatch(op, "out's last dim must be v_cache's Dv", out, vc);
            return HAE_OK;
        }
        /* gqa's: V in its own buffer, in the same layout */
        if (vc->dtype != HAE_FP8_E4M3 || vc->ndim != 4 || vc->data == kc->data)
            return hae_shape_mismatch(op, "with gqa's FP8 layout v_cache must be an fp8-e4m3 cache of its own", kc, vc);
        HAE_TRY(check_fp8_cache(op, "v_cache", vc, q, out->shape[3], be));
        if (kc->shape[1] != vc->shape[1] || kc->shape[2] != vc->shape[2])
            return hae_shape_mismatch(op, "k_cache and v_cache differ in slots or kv heads", kc, vc);
        if (q->shape[2] % kc->shape[2]) return hae_shape_mismatch(op, "q heads must be a multiple of kv heads", q, kc);
        return HAE_OK;
    }
    HAE_TRY(hae_check_tensor(op, "v_cache", vc, be, 4, HAE_FLOATS));
    const int64_t Dv = vc->shape[3];
    HAE_TRY(check_cache(op, "k_cache", kc, q, q->shape[3], be));
    HAE_TRY(check_cache(op, "v_cache", vc, q, Dv, be));
    for (int i = 0; i < 3; i++)
        if (out->shape[i] != q->shape[i]) return hae_shape_mismatch(op, "out [B, T, Hq, Dv] must match q's B, T, Hq", q, out);
    if (out->shape[3] != Dv) return hae_shape_mismatch(op, "out's last dim must be v_cache's Dv", out, vc);
    if (kc->shape[1] != vc->shape[1] || kc->shape[2] != vc->shape[2])
        return hae_shape_mismatch(op, "k_cache and v_cache differ in slots or kv heads", kc, vc);
    if (kc->dtype != vc->dtype) return hae_shape_mismatch(op, "k_cache and v_cache differ in dtype", kc, vc);
    if (kc->shape[2] < 1 || q->shape[2] % kc->shape[2])
        return hae_shape_mismatch(op, "q heads must be a multiple of kv heads", q, kc);
    return HAE_OK;
}

hae_status hae_attention(hae_backend *be, const hae_attention_args *a) {
    const char *op = "hae_attention";
    HAE_TRY(check_qkv(op, be, &a->q, &a->k_cache, &a->v_cache, &a->out));
    const int64_t T = a->q.shape[1], cap = a->k_cache.shape[1];
    if (a->pos0 < 0 || a->window < 0)
        return hae_error(HAE_ERR_INVALID, "%s: pos0 %lld and window %lld must be >= 0", op, (long long)a->pos0,
                         (long long)a->window);
    int64_t need = a->pos0 + T;
    if (a->window > 0 && a->window + T - 1 < need) need = a->window + T - 1;
    if (cap < need)
        return hae_error(HAE_ERR_INVALID,
                         "%s: cache of %lld slots cannot hold the %lld positions that %lld queries from position %lld "
                         "read (window %lld)",
                         op, (long long)cap, (long long)need, (long long)T, (long long)a->pos0, (long long)a->window);
    if (!(a->scale > 0.0f)) return hae_error(HAE_ERR_INVALID, "%s: scale %g must be > 0", op, (double)a->scale);
    if (hae_tensor_numel(&a->q) == 0) return HAE_OK;
    return DISPATCH(attention, be, a);
}

/* One part of a sparse attention's batch: its rows of q and out against its caches, selections and lengths. */
static hae_status check_sparse_part(const char *op, hae_backend *be, const hae_tensor *q, const hae_tensor *out,
                                    const hae_tensor *kc, const hae_tensor *vc, const hae_tensor *idx,
                                    const hae_tensor *lens, const char *iname, const char *lname) {
    HAE_TRY(check_qkv(op, be, q, kc, vc, out));
    HAE_TRY(hae_check_tensor(op, iname, idx, be, 3, HAE_DTM(HAE_I32)));
    HAE_TRY(hae_check_tensor(op, lname, lens, be, 1, HAE_DTM(HAE_I32)));
    if (idx->shape[0] != q->shape[0] || idx->shape[1] != q->shape[1] || idx->shape[2] < 1)
        return hae_shape_mismatch(op, "idx must be [B, T, k] with k >= 1 (a part's rows of the batch)", q, idx);
    if (lens->shape[0] != q->shape[0]) return hae_shape_mismatch(op, "seq_lens must be [B] (a part's rows)", q, lens);
    return HAE_OK;
}

/* Lengths on the host: each must hold the T queries and fit its part's cache. */
static hae_status check_sparse_lens(const char *op, const hae_tensor *lens, int64_t T, int64_t cap, int64_t b0) {
    const int32_t *l = lens->data;
    for (int64_t b = 0; b < lens->shape[0]; b++)
        if (l[b * lens->stride[0]] < T || l[b * lens->stride[0]] > cap)
            return hae_error(HAE_ERR_INVALID,
                             "%s: seq_lens[%lld] = %d must hold the %lld queries and fit the cache of %lld slots", op,
                             (long long)(b0 + b), l[b * lens->stride[0]], (long long)T, (long long)cap);
    return HAE_OK;
}

hae_status hae_sparse_attention(hae_backend *be, const hae_sparse_attention_args *a) {
    const char *op = "hae_sparse_attention";
    const int64_t B = a->q.shape[0], T = a->q.shape[1], Hq = a->q.shape[2], cap = a->k_cache.shape[1];
    const bool split = a->k_cache2.data != NULL;
    const int64_t B1 = split ? a->k_cache.shape[0] : B;
    if (split && (a->q.ndim != 4 || a->k_cache.ndim != 4 || B1 < 1 || B1 >= B))
        return hae_shape_mismatch(op, "a batch in two parts needs 1 <= k_cache's B < q's B", &a->q, &a->k_cache);
    hae_tensor q1 = a->q, o1 = a->out;
    if (split) q1.shape[0] = o1.shape[0] = B1;
    HAE_TRY(check_sparse_part(op, be, &q1, &o1, &a->k_cache, &a->v_cache, &a->idx, &a->seq_lens, "idx", "seq_lens"));
    if (split) {
        hae_tensor q2 = hae_tensor_narrow(a->q, 0, B1, B - B1), o2 = hae_tensor_narrow(a->out, 0, B1, B - B1);
        const hae_tensor *k1 = &a->k_cache, *v1 = &a->v_cache, *k2 = &a->k_cache2, *v2 = &a->v_cache2;
        HAE_TRY(check_sparse_part(op, be, &q2, &o2, k2, v2, &a->idx2, &a->seq_lens2, "idx2", "seq_lens2"));
        /* one launch reads both parts with the first's layout */
        const bool view1 = v1->data == k1->data, view2 = v2->data == k2->data;
        if (k2->dtype != k1->dtype || k2->shape[2] != k1->shape[2] || k2->shape[3] != k1->shape[3] ||
            v2->shape[3] != v1->shape[3] || k2->stride[1] != k1->stride[1] || v2->stride[1] != v1->stride[1] ||
            k2->stride[2] != k1->stride[2] || v2->stride[2] != v1->stride[2] || view1 != view2 ||
            a->idx2.shape[2] != a->idx.shape[2] || a->idx2.stride[1] != a->idx.stride[1] || k2->shape[1] > cap)
            return hae_shape_mismatch(op, "the second part must share the first's dtype, heads, dims, token strides, "
                                      "k and V-as-a-view-of-K, with at most its slots", k1, k2);
    }
    if (a->lse.data) {
        HAE_TRY(hae_check_tensor(op, "lse", &a->lse, be, 3, HAE_DTM(HAE_F32)));
        if (a->lse.shape[0] != B || a->lse.shape[1] != T || a->lse.shape[2] != Hq)
            return hae_shape_mismatch(op, "lse must be [B, T, Hq]", &a->q, &a->lse);
    }
    if (!(a->scale > 0.0f && isfinite(a->scale)))
        return hae_error(HAE_ERR_INVALID, "%s: scale %g must be finite and > 0", op, (double)a->scale);
    if (hae_tensor_numel(&a->q) == 0) return HAE_OK;
    if (be->device == HAE_CUDA) return dispatch_cuda_sparse_attention(be, a); /* seq_lens stay on the device */
    HAE_TRY(check_sparse_lens(op, &a->seq_lens, T, cap, 0));
    if (split) HAE_TRY(check_sparse_lens(op, &a->seq_lens2, T, a->k_cache2.shape[1], B1));
    return hae_sparse_attention_cpu(be, a);
}

/* A [B, rows, W] side of the fetch: rows must not overlap (dst: entries write rows in parallel), strides
 * are >= 0. */
static hae_status check_gather_side(const char *op, const char *name, const hae_tensor *t, hae_backend *be) {
    char d[96];
    HAE_TRY(hae_check_tensor(op, name, t, be, 3, (1u << HAE_DTYPE_COUNT) - 1));
    const int64_t W = t->shape[2], R = t->shape[1];
    if (t->stride[0] < 0 || t->stride[1] < 0 || (R > 1 && t->stride[1] < W) ||
        (t->shape[0] > 1 && R > 0 && t->stride[0] < (R - 1) * t->stride[1] + W))
        return hae_error(HAE_ERR_INVALID, "%s: %s %s: strides [%lld, %lld] make rows of %lld elements overlap", op, name,
                         hae_tensor_describe(t, d, sizeof d), (long long)t->stride[0], (long long)t->stride[1],
                         (long long)W);
    return HAE_OK;
}

hae_status hae_kv_gather(hae_backend *be, const hae_kv_gather_args *a) {
    const char *op = "hae_kv_gather";
    HAE_TRY(check_gather_side(op, "src", &a->src, be));
    HAE_TRY(check_gather_side(op, "dst", &a->dst, be));
    if (a->dst.dtype != a->src.dtype) return hae_shape_mismatch(op, "src and dst must share a dtype", &a->src, &a->dst);
    if (a->dst.shape[0] != a->src.shape[0] || a->dst.shape[2] != a->src.shape[2])
        return hae_shape_mismatch(op, "src [B, cap, W] and dst [B, slots, W] differ in B or W", &a->src, &a->dst);
    if ((unsigned)a->method > HAE_GATHER_COPIES)
        return hae_error(HAE_ERR_INVALID, "%s: method %d is not a hae_gather_method", op, (int)a->method);
    if (a->max_blocks < 0) return hae_error(HAE_ERR_INVALID, "%s: max_blocks %d must be >= 0", op, a->max_blocks);
    /* The copies are described on the host, so their row lists are read there, in host memory. */
    const bool copies = a->method == HAE_GATHER_COPIES && be->device == HAE_CUDA;
    const char *rows_names[2] = {"src_rows", "dst_rows"};
    const hae_tensor *rows[2] = {&a->src_rows, &a->dst_rows};
    for (int r = 0; r < 2; r++) {
        char d[96];
        hae_tensor t = *rows[r];
        if (copies) {
            if (t.device != HAE_CPU)
                return hae_error(HAE_ERR_INVALID, "%s: %s %s: HAE_GATHER_COPIES reads the row lists on the host "
                                 "(device cpu)", op, rows_names[r], hae_tensor_describe(&t, d, sizeof d));
            t.device = be->device; /* the rest of the checks as for any tensor of the op */
        }
        HAE_TRY(hae_check_tensor(op, rows_names[r], &t, be, 2, HAE_DTM(HAE_I32)));
        if (t.shape[0] != a->src.shape[0])
            return hae_shape_mismatch(op, "the row lists must be [B, n] for src [B, cap, W]", rows[r], &a->src);
    }
    if (a->dst_rows.shape[1] != a->src_rows.shape[1])
        return hae_shape_mismatch(op, "src_rows and dst_rows must both be [B, n]", &a->src_rows, &a->dst_rows);
    if (hae_tensor_numel(&a->src_rows) == 0 || a->src.shape[2] == 0) return HAE_OK;
    return DISPATCH(kv_gather, be, a);
}

hae_status hae_kv_slots(hae_backend *be, const hae_kv_slots_args *a) {
    const char *op = "hae_kv_slots";
    const bool range = a->idx.data == NULL;
    HAE_TRY(hae_check_tensor(op, "map", &a->map, be, 2, HAE_DTM(HAE_I32)));
    HAE_TRY(hae_check_tensor(op, "owner", &a->owner, be, 2, HAE_DTM(HAE_I32)));
    HAE_TRY(hae_check_tensor(op, "stamp", &a->stamp, be, 2, HAE_DTM(HAE_I32)));
    HAE_TRY(hae_check_tensor(op, "src_rows", &a->src_rows, be, 2, HAE_DTM(HAE_I32)));
    HAE_TRY(hae_check_tensor(op, "dst_rows", &a->dst_rows, be, 2, HAE_DTM(HAE_I32)));
    HAE_TRY(hae_check_tensor(op, "counts", &a->counts, be, 1, HAE_DTM(HAE_I64)));
    const int64_t B = a->map.shape[0], cap = a->map.shape[1], S = a->owner.shape[1], n = a->src_rows.shape[1];
    if (a->owner.shape[0] != B || a->stamp.shape[0] != B || a->stamp.shape[1] != S)
        return hae_shape_mismatch(op, "owner and stamp must both be [B, S] for map [B, cap]", &a->owner, &a->stamp);
    if (a->src_rows.shape[0] != B || a->dst_rows.shape[0] != B || a->dst_rows.shape[1] != n)
        return hae_shape_mismatch(op, "src_rows and dst_rows must both be [B, n]", &a->src_rows, &a->dst_rows);
    if (a->counts.shape[0] != 2) return hae_shape_mismatch(op, "counts must be [2]", &a->map, &a->counts);
    if (S < 1 || S > INT32_MAX - 1 || cap > INT32_MAX - 1)
        return hae_error(HAE_ERR_INVALID, "%s: %lld slots and %lld tokens per sequence: each must be in [1, 2^31 - 2]", op,
                         (long long)S, (long long)cap);
    if (a->step < 1) return hae_error(HAE_ERR_INVALID, "%s: step %d must be >= 1", op, a->step);
    if (range) {
        if (a->lo < 0 || a->hi < a->lo || a->hi > S || a->hi > cap || a->hi - a->lo > n)
            return hae_error(HAE_ERR_INVALID, "%s: range [%lld, %lld) must lie in [0, min(S %lld, cap %lld)] and fit the "
                             "fetch list of %lld entries", op, (long long)a->lo, (long long)a->hi, (long long)S,
                             (long long)cap, (long long)n);
    } else {
        HAE_TRY(hae_check_tensor(op, "idx", &a->idx, be, 2, HAE_DTM(HAE_I32)));
        HAE_TRY(hae_check_tensor(op, "out", &a->out, be, 2, HAE_DTM(HAE_I32)));
        const int64_t k = a->idx.shape[1];
        if (a->idx.shape[0] != B || a->out.shape[0] != B || a->out.shape[1] != k)
            return hae_shape_mismatch(op, "idx and out must both be [B, k]", &a->idx, &a->out);
        if (k > S || k > n)
            return hae_error(HAE_ERR_INVALID, "%s: %lld entries per sequence need k <= S (%lld slots) and a fetch list of "
                             ">= k entries (%lld)", op, (long long)k, (long long)S, (long long)n);
    }
    if (B == 0 || (range ? a->hi == a->lo : a->idx.shape[1] == 0)) return HAE_OK;
    return DISPATCH(kv_slots, be, a);
}

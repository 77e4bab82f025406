/* Entry points of the linear-family ops: every argument is checked here, so the CPU and CUDA
 * implementations can rely on consistent shapes, dtypes and devices. */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#ifdef HAE_HAVE_CUDA
#define DISPATCH(op, be, a) ((be)->device == HAE_CUDA ? hae_##op##_cuda(be, a) : hae_##op##_cpu(be, a))
#else
#define DISPATCH(op, be, a)                                                                        \
    ((be)->device == HAE_CUDA ? hae_error(HAE_ERR_UNSUPPORTED, "hae_" #op ": this build has no CUDA")      \
                              : hae_##op##_cpu(be, a))
#endif

static bool same_dims(const hae_tensor *x, const hae_tensor *y, int n) {
    for (int i = 0; i < n; i++)
        if (x->shape[i] != y->shape[i]) return false;
    return true;
}

static hae_status check_f32_vec(const char *op, const char *name, const hae_tensor *t, hae_backend *be, int64_t n) {
    HAE_TRY(hae_check_tensor(op, name, t, be, 1, HAE_DTM(HAE_F32)));
    if (t->shape[0] != n) {
        char d[96];
        return hae_error(HAE_ERR_INVALID, "%s: %s %s: expected [%lld]", op, name, hae_tensor_describe(t, d, sizeof d),
                         (long long)n);
    }
    return HAE_OK;
}

/* The packed sequence boundaries: 0 = cu[0] <= cu[1] <= ... <= cu[N] = T. On a GPU they are read
 * back once here, which costs a synchronisation; equal-length batches need none. */
static hae_status check_cu_seqlens(const char *op, hae_backend *be, const hae_tensor *cu, int64_t T, int64_t N) {
    HAE_TRY(hae_check_tensor(op, "cu_seqlens", cu, be, 1, HAE_DTM(HAE_I32)));
    if (cu->shape[0] != N + 1)
        return hae_error(HAE_ERR_INVALID, "%s: cu_seqlens has %lld entries but state holds %lld sequences (need N + 1)",
                         op, (long long)cu->shape[0], (long long)N);
    const int32_t *c = cu->data;
    int32_t *host = NULL;
    if (be->device == HAE_CUDA) {
        host = malloc(sizeof(int32_t) * (size_t)(N + 1));
        if (!host) return hae_error(HAE_ERR_OOM, "%s: %lld bytes for cu_seqlens", op, (long long)(4 * (N + 1)));
        hae_status st = hae_backend_download(be, host, cu->data, sizeof(int32_t) * (size_t)(N + 1));
        if (st == HAE_OK) st = hae_backend_sync(be);
        if (st != HAE_OK) {
            free(host);
            return st;
        }
        c = host;
    }
    hae_status st = HAE_OK;
    if (c[0] != 0 || c[N] != T)
        st = hae_error(HAE_ERR_INVALID, "%s: cu_seqlens runs from %d to %d; it must run from 0 to T = %lld", op, c[0],
                       c[N], (long long)T);
    for (int64_t n = 0; n < N && st == HAE_OK; n++)
        if (c[n + 1] < c[n])
            st = hae_error(HAE_ERR_INVALID, "%s: cu_seqlens[%lld] = %d < cu_seqlens[%lld] = %d (must not decrease)", op,
                           (long long)(n + 1), c[n + 1], (long long)n, c[n]);
    free(host);
    return st;
}

hae_status hae_linear_attn(hae_backend *be, const hae_linear_attn_args *a) {
    const char *op = "hae_linear_attn";
    HAE_TRY(hae_check_tensor(op, "q", &a->q, be, 4, HAE_FLOATS));
    HAE_TRY(hae_check_tensor(op, "k", &a->k, be, 4, HAE_FLOATS));
    HAE_TRY(hae_check_tensor(op, "v", &a->v, be, 4, HAE_FLOATS));
    HAE_TRY(hae_check_tensor(op, "out", &a->out, be, 4, HAE_FLOATS));
    HAE_TRY(hae_check_tensor(op, "state", &a->state, be, 4, HAE_DTM(HAE_F32)));
    const int64_t B = a->q.shape[0], T = a->q.shape[1], H = a->q.shape[2], K = a->q.shape[3];
    const int64_t HV = a->v.shape[2], V = a->v.shape[3];
    if (!same_dims(&a->q, &a->k, 4)) return hae_shape_mismatch(op, "q and k must have one shape", &a->q, &a->k);
    if (a->q.dtype != a->k.dtype || a->q.dtype != a->v.dtype)
        return hae_shape_mismatch(op, "q, k and v must share a dtype", &a->q, &a->v);
    if (a->v.shape[0] != B || a->v.shape[1] != T)
        return hae_shape_mismatch(op, "v must be [B, T, HV, V] for q [B, T, H, K]", &a->q, &a->v);
    if (H < 1 || HV < H || HV % H)
        return hae_shape_mismatch(op, "value heads HV must be a multiple of q/k heads H", &a->q, &a->v);
    if (K < 1 || K > 256 || V < 1 || V > 256)
        return hae_shape_mismatch(op, "head dims K and V must be in 1..256", &a->q, &a->v);
    if (!same_dims(&a->out, &a->v, 4)) return hae_shape_mismatch(op, "out must match v", &a->v, &a->out);

    int64_t N = B;
    if (a->cu_seqlens.data) {
        if (B != 1) return hae_shape_mismatch(op, "with cu_seqlens the batch must be 1 (packed)", &a->q, &a->cu_seqlens);
        N = a->cu_seqlens.shape[0] - 1;
        if (N < 1) return hae_shape_mismatch(op, "cu_seqlens needs at least 2 entries", &a->q, &a->cu_seqlens);
    }
    if (a->state.shape[0] != N || a->state.shape[1] != HV || a->state.shape[2] != K || a->state.shape[3] != V ||
        !hae_tensor_is_contiguous(&a->state)) {
        char d[96];
        return hae_error(HAE_ERR_INVALID, "%s: state %s must be contiguous [%lld, %lld, %lld, %lld] (N, HV, K, V)", op,
                         hae_tensor_describe(&a->state, d, sizeof d), (long long)N, (long long)HV, (long long)K,
                         (long long)V);
    }

    if ((unsigned)a->decay > HAE_DECAY_CHANNEL)
        return hae_error(HAE_ERR_INVALID, "%s: decay %d is not a hae_decay", op, (int)a->decay);
    if ((unsigned)a->gate > HAE_GATE_SAFE) return hae_error(HAE_ERR_INVALID, "%s: gate %d is not a hae_gate_fn", op, (int)a->gate);
    if ((unsigned)a->qk_map > HAE_QK_ELU1)
        return hae_error(HAE_ERR_INVALID, "%s: qk_map %d is not a hae_qk_map", op, (int)a->qk_map);
    if (a->decay != HAE_DECAY_NONE) HAE_TRY(check_f32_vec(op, "A_log", &a->A_log, be, HV));
    if (a->decay == HAE_DECAY_CHANNEL || a->decay == HAE_DECAY_HEAD) {
        bool ch = a->decay == HAE_DECAY_CHANNEL;
        HAE_TRY(hae_check_tensor(op, "g", &a->g, be, ch ? 4 : 3, HAE_FLOATS));
        bool ok = a->g.shape[0] == B && a->g.shape[1] == T && a->g.shape[2] == HV && (!ch || a->g.shape[3] == K);
        if (!ok)
            return hae_shape_mismatch(op, ch ? "g must be [B, T, HV, K] for a per-channel decay"
                                             : "g must be [B, T, HV] for a per-head decay",
                                      &a->v, &a->g);
        HAE_TRY(check_f32_vec(op, "dt_bias", &a->dt_bias, be, ch ? HV * K : HV));
        if (a->gate == HAE_GATE_SAFE && !(a->lower_bound < 0.0f && isfinite(a->lower_bound)))
            return hae_error(HAE_ERR_INVALID, "%s: lower_bound %g of the safe gate must be finite and < 0", op,
                             (double)a->lower_bound);
    }
    if (a->delta) {
        HAE_TRY(hae_check_tensor(op, "beta", &a->beta, be, 3, HAE_FLOATS));
        if (a->beta.shape[0] != B || a->beta.shape[1] != T || a->beta.shape[2] != HV)
            return hae_shape_mismatch(op, "beta must be [B, T, HV]", &a->v, &a->beta);
    }
    if (!(a->scale > 0.0f && isfinite(a->scale)))
        return hae_error(HAE_ERR_INVALID, "%s: scale %g must be finite and > 0", op, (double)a->scale);
    if (a->chunk != 0 && a->chunk != 16 && a->chunk != 32 && a->chunk != 64 && a->chunk != 128)
        return hae_error(HAE_ERR_INVALID, "%s: chunk %d (expected 0 for the recurrent form, or 16, 32, 64, 128)", op,
                         a->chunk);
    if (a->cu_seqlens.data) HAE_TRY(check_cu_seqlens(op, be, &a->cu_seqlens, T, N));
    size_t need;
    HAE_TRY(hae_linear_attn_workspace(be, a, &need));
    if (need > 0 && (!a->workspace || a->workspace_bytes < need))
        return hae_error(HAE_ERR_INVALID, "%s: workspace of %zu bytes at %p, these shapes need %zu "
                         "(hae_linear_attn_workspace)", op, a->workspace_bytes, a->workspace, need);
    if (T == 0) return HAE_OK;
    return DISPATCH(linear_attn, be, a);
}

static void *ws_take(char *base, size_t *off, int64_t elems, size_t esz) {
    void *p = base ? base + *off : NULL;
    *off += ((size_t)elems * esz + 15) / 16 * 16;
    return p;
}

hae_chunk_ws hae_chunk_ws_layout(void *base, int64_t B, int64_t T, int64_t N, int64_t HV, int64_t K, int64_t V,
                                 size_t esz, size_t *bytes) {
    const int64_t C = HAE_LIN_CHUNK, G = B * ((T + C - 1) / C) + N, gh = G * HV;
    char *b = base;
    size_t off = 0;
    hae_chunk_ws w;
    w.w = ws_take(b, &off, gh * C * K, esz);
    w.u = ws_take(b, &off, gh * C * V, esz);
    w.kd = ws_take(b, &off, gh * C * K, esz);
    w.qg = ws_take(b, &off, gh * C * K, esz);
    w.P = ws_take(b, &off, gh * C * C, esz);
    /* bf16: chunk_state forms the outputs itself (linear_cuda.cu), no chunk start states are kept */
    w.h = esz == 2 ? NULL : ws_take(b, &off, gh * K * V, esz);
    w.gl = ws_take(b, &off, gh * K, sizeof(float));
    w.coff = ws_take(b, &off, N + 1, sizeof(int32_t));
    w.G = G;
    if (bytes) *bytes = off;
    return w;
}

size_t hae_linear_attn_workspace_on(hae_device dev, const hae_linear_attn_args *a) {
    if (dev != HAE_CUDA || a->chunk == 0) return 0;
    const int64_t B = a->q.shape[0], T = a->q.shape[1], K = a->q.shape[3], HV = a->v.shape[2], V = a->v.shape[3];
    const int64_t N = a->state.ndim == 4 ? a->state.shape[0] : a->cu_seqlens.ndim == 1 ? a->cu_seqlens.shape[0] - 1 : B;
    size_t bytes = 0;
    hae_chunk_ws_layout(NULL, B, T, N, HV, K, V, a->q.dtype == HAE_BF16 ? 2 : 4, &bytes);
    return bytes;
}

hae_status hae_linear_attn_workspace(hae_backend *be, const hae_linear_attn_args *a, size_t *bytes) {
    *bytes = 0;
    if (a->q.ndim != 4 || a->v.ndim != 4)
        return hae_error(HAE_ERR_INVALID, "hae_linear_attn_workspace: q and v must be 4-d ([B, T, H, K], [B, T, HV, V])");
    if (a->chunk != 0 && a->chunk != 16 && a->chunk != 32 && a->chunk != 64 && a->chunk != 128)
        return hae_error(HAE_ERR_INVALID, "hae_linear_attn_workspace: chunk %d (expected 0, 16, 32, 64 or 128)", a->chunk);
    *bytes = hae_linear_attn_workspace_on(be->device, a);
    return HAE_OK;
}

hae_status hae_conv_short(hae_backend *be, const hae_conv_short_args *a) {
    const char *op = "hae_conv_short";
    HAE_TRY(hae_check_tensor(op, "x", &a->x, be, 3, HAE_FLOATS));
    HAE_TRY(hae_check_tensor(op, "weight", &a->weight, be, 2, HAE_DTM(HAE_F32)));
    HAE_TRY(hae_check_tensor(op, "state", &a->state, be, 3, HAE_DTM(HAE_F32)));
    HAE_TRY(hae_check_tensor(op, "out", &a->out, be, 3, HAE_FLOATS));
    const int64_t B = a->x.shape[0], C = a->x.shape[2], W = a->weight.shape[1];
    if (a->weight.shape[0] != C || W < 1 || W > 16 || !hae_tensor_is_contiguous(&a->weight))
        return hae_shape_mismatch(op, "weight must be contiguous [C, W] with W in 1..16", &a->x, &a->weight);
    if (a->state.shape[0] != B || a->state.shape[1] != W - 1 || a->state.shape[2] != C ||
        !hae_tensor_is_contiguous(&a->state))
        return hae_shape_mismatch(op, "state must be contiguous [B, W - 1, C]", &a->x, &a->state);
    if (!same_dims(&a->x, &a->out, 3)) return hae_shape_mismatch(op, "out must match x", &a->x, &a->out);
    if (a->x.data == a->out.data && a->x.shape[1] > 0)
        return hae_shape_mismatch(op, "out must not alias x", &a->x, &a->out);
    if (hae_tensor_numel(&a->x) == 0) return HAE_OK;
    return DISPATCH(conv_short, be, a);
}

hae_status hae_gated_rmsnorm(hae_backend *be, const hae_gated_rmsnorm_args *a) {
    const char *op = "hae_gated_rmsnorm";
    HAE_TRY(hae_check_tensor(op, "x", &a->x, be, 3, HAE_FLOATS));
    HAE_TRY(hae_check_tensor(op, "gate", &a->gate, be, 3, HAE_FLOATS));
    HAE_TRY(hae_check_tensor(op, "out", &a->out, be, 3, HAE_FLOATS));
    HAE_TRY(check_f32_vec(op, "weight", &a->weight, be, a->x.shape[2]));
    if (!same_dims(&a->x, &a->gate, 3)) return hae_shape_mismatch(op, "gate must match x", &a->x, &a->gate);
    if (!same_dims(&a->x, &a->out, 3)) return hae_shape_mismatch(op, "out must match x", &a->x, &a->out);
    if (!(a->eps > 0.0f)) return hae_error(HAE_ERR_INVALID, "%s: eps %g must be > 0", op, (double)a->eps);
    if (hae_tensor_numel(&a->x) == 0) return HAE_OK;
    return DISPATCH(gated_rmsnorm, be, a);
}

bool hae_linear_kind_of(hae_layer_kind k, hae_linear_kind *out) {
    hae_linear_kind r = {HAE_DECAY_NONE, false, HAE_QK_L2};
    switch (k) {
    case HAE_LAYER_KDA: r.decay = HAE_DECAY_CHANNEL, r.delta = true; break;
    case HAE_LAYER_GDN: r.decay = HAE_DECAY_HEAD, r.delta = true; break;
    case HAE_LAYER_DELTANET: r.delta = true; break;
    case HAE_LAYER_GLA: r.decay = HAE_DECAY_CHANNEL; break;
    case HAE_LAYER_MAMBA2: r.decay = HAE_DECAY_HEAD; break;
    case HAE_LAYER_RETNET: r.decay = HAE_DECAY_FIXED; break;
    case HAE_LAYER_LINEAR: r.qk_map = HAE_QK_ELU1; break;
    default: return false;
    }
    *out = r;
    return true;
}

/* Entry points of the FP8 lightning indexer: every argument is checked here (shapes, dtypes,
 * devices, and on the CPU the values of seq_lens, lens and the block table entries an op will
 * touch), so the implementations can rely on them. On CUDA those values stay on the device (reading
 * them back would stall the stream): the kernels clamp instead, never reading or writing outside
 * the tensors whatever the values. */
#include "internal.h"

#include <math.h>
#include <stdio.h>

#define QBLOCK 128 /* values per fp8 scale */

#ifdef HAE_HAVE_CUDA
#define CUDA_OR(op, be, a) hae_##op##_cuda(be, a)
#else
#define CUDA_OR(op, be, a) hae_error(HAE_ERR_UNSUPPORTED, "hae_" #op ": this build has no CUDA")
#endif
/* Runs the CUDA implementation on a CUDA backend; on the CPU falls through to the value checks. */
#define ON_CUDA(op, be, a)                                                                         \
    do {                                                                                           \
        if ((be)->device == HAE_CUDA) return CUDA_OR(op, be, a);                                   \
    } while (0)

static bool dims_are(const hae_tensor *t, int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
    const int64_t want[4] = {d0, d1, d2, d3};
    for (int i = 0; i < t->ndim; i++)
        if (t->shape[i] != want[i]) return false;
    return true;
}

/* A mismatch naming the argument and what it should have been. */
static hae_status want_shape(const char *op, const char *name, const hae_tensor *t, const char *want) {
    char d[96];
    return hae_error(HAE_ERR_INVALID, "%s: %s %s: expected %s", op, name, hae_tensor_describe(t, d, sizeof d), want);
}

static hae_status check_head_dim(const char *op, const char *name, const hae_tensor *t, int64_t D) {
    char d[96];
    if (D < QBLOCK || D % QBLOCK)
        return hae_error(HAE_ERR_INVALID, "%s: %s %s: D = %lld must be a positive multiple of %d (one fp8 scale "
                         "per %d values)", op, name, hae_tensor_describe(t, d, sizeof d), (long long)D, QBLOCK, QBLOCK);
    return HAE_OK;
}

/* ---------------------------------------------------------------- fp8_quant, hadamard */

hae_status hae_fp8_quant(hae_backend *be, const hae_fp8_quant_args *a) {
    const char *op = "hae_fp8_quant";
    char w[64];
    HAE_TRY(hae_check_tensor(op, "x", &a->x, be, 2, HAE_FLOATS));
    HAE_TRY(hae_check_tensor(op, "q", &a->q, be, 2, HAE_DTM(HAE_FP8_E4M3)));
    HAE_TRY(hae_check_tensor(op, "scale", &a->scale, be, 2, HAE_DTM(HAE_F32)));
    const int64_t N = a->x.shape[0], D = a->x.shape[1];
    HAE_TRY(check_head_dim(op, "x", &a->x, D));
    snprintf(w, sizeof w, "[%lld, %lld] like x", (long long)N, (long long)D);
    if (!dims_are(&a->q, N, D, 0, 0)) return want_shape(op, "q", &a->q, w);
    snprintf(w, sizeof w, "[%lld, %lld] (N, D / %d)", (long long)N, (long long)(D / QBLOCK), QBLOCK);
    if (!dims_are(&a->scale, N, D / QBLOCK, 0, 0)) return want_shape(op, "scale", &a->scale, w);
    ON_CUDA(fp8_quant, be, a);
    return hae_fp8_quant_cpu(be, a);
}

hae_status hae_hadamard(hae_backend *be, const hae_hadamard_args *a) {
    const char *op = "hae_hadamard";
    char d[96];
    HAE_TRY(hae_check_tensor(op, "x", &a->x, be, 2, HAE_FLOATS));
    const int64_t D = a->x.shape[1];
    if (D < 1 || (D & (D - 1)))
        return hae_error(HAE_ERR_INVALID, "%s: x %s: D = %lld must be a power of two", op,
                         hae_tensor_describe(&a->x, d, sizeof d), (long long)D);
    ON_CUDA(hadamard, be, a);
    return hae_hadamard_cpu(be, a);
}

/* ---------------------------------------------------------------- the paged key cache */

/* The cache's tensors and sizes for B sequences of head dim D (q's or k's). The fp32 scales are
 * read in place, so every page must start 4-byte aligned. */
static hae_status check_cache(const char *op, hae_backend *be, const hae_index_cache *c, int64_t B, int64_t D,
                              const hae_tensor *from) {
    char d[96], e[96];
    HAE_TRY(hae_check_tensor(op, "cache.pages", &c->pages, be, 2, HAE_DTM(HAE_FP8_E4M3)));
    HAE_TRY(hae_check_tensor(op, "cache.block_table", &c->block_table, be, 2, HAE_DTM(HAE_I32)));
    if (c->head_dim != D)
        return hae_error(HAE_ERR_INVALID, "%s: cache.head_dim %d differs from D = %lld of %s", op, c->head_dim,
                         (long long)D, hae_tensor_describe(from, d, sizeof d));
    if (c->page_size < 1) return hae_error(HAE_ERR_INVALID, "%s: cache.page_size %d must be >= 1", op, c->page_size);
    const int64_t P = c->page_size, row = P * (D + 4 * (D / QBLOCK));
    if (c->pages.shape[1] != row)
        return hae_error(HAE_ERR_INVALID, "%s: cache.pages %s: a page of %lld tokens of D = %lld needs %lld bytes "
                         "(P (D + 4 D / %d)), not %lld", op, hae_tensor_describe(&c->pages, d, sizeof d), (long long)P,
                         (long long)D, (long long)row, QBLOCK, (long long)c->pages.shape[1]);
    if (((uintptr_t)c->pages.data | (uintptr_t)c->pages.stride[0]) % 4)
        return hae_error(HAE_ERR_INVALID, "%s: cache.pages %s at %p, page stride %lld: pages must start 4-byte aligned "
                         "(they hold fp32 scales)", op, hae_tensor_describe(&c->pages, d, sizeof d), c->pages.data,
                         (long long)c->pages.stride[0]);
    if (c->block_table.shape[0] != B)
        return hae_error(HAE_ERR_INVALID, "%s: cache.block_table %s: expected %lld rows, one per sequence of %s", op,
                         hae_tensor_describe(&c->block_table, d, sizeof d), (long long)B,
                         hae_tensor_describe(from, e, sizeof e));
    return HAE_OK;
}

static hae_status check_seq_lens_shape(const char *op, hae_backend *be, const hae_tensor *s, int64_t B) {
    char w[32];
    HAE_TRY(hae_check_tensor(op, "seq_lens", s, be, 1, HAE_DTM(HAE_I32)));
    snprintf(w, sizeof w, "[%lld] (B)", (long long)B);
    if (s->shape[0] != B) return want_shape(op, "seq_lens", s, w);
    return HAE_OK;
}

/* Host values: T <= seq_lens[b] <= min(max_pages P, L), and the block table entries of the pages
 * holding positions [first, seq_lens[b]) of each sequence, first = seq_lens[b] - T for a write
 * and 0 for the logits, name pages that exist. Entries past those are never read. */
static hae_status check_seq_values(const char *op, const hae_index_cache *c, const hae_tensor *seq_lens, int64_t T,
                                   int64_t L, bool from_zero) {
    const int32_t *len = seq_lens->data;
    const int64_t P = c->page_size, max_pages = c->block_table.shape[1], n_pages = c->pages.shape[0];
    for (int64_t b = 0; b < seq_lens->shape[0]; b++) {
        const int64_t n = len[b];
        if (n < T || n > max_pages * P)
            return hae_error(HAE_ERR_INVALID, "%s: seq_lens[%lld] = %lld must be in [T, max_pages P] = [%lld, %lld]", op,
                             (long long)b, (long long)n, (long long)T, (long long)(max_pages * P));
        if (n > L)
            return hae_error(HAE_ERR_INVALID, "%s: seq_lens[%lld] = %lld exceeds the logits' L = %lld", op,
                             (long long)b, (long long)n, (long long)L);
        if (T == 0) continue;
        const int32_t *bt = hae_row_ptr(&c->block_table, b, 0, 0);
        for (int64_t i = (from_zero ? 0 : n - T) / P; i <= (n - 1) / P; i++)
            if (bt[i] < 0 || bt[i] >= n_pages)
                return hae_error(HAE_ERR_INVALID, "%s: cache.block_table[%lld, %lld] = %d is not a page in [0, %lld) "
                                 "(sequence %lld of length %lld reads it)", op, (long long)b, (long long)i, bt[i],
                                 (long long)n_pages, (long long)b, (long long)n);
    }
    return HAE_OK;
}

/* ---------------------------------------------------------------- index_write, index_logits */

hae_status hae_index_write(hae_backend *be, const hae_index_write_args *a) {
    const char *op = "hae_index_write";
    char w[64];
    HAE_TRY(hae_check_tensor(op, "k", &a->k, be, 3, HAE_DTM(HAE_FP8_E4M3)));
    HAE_TRY(hae_check_tensor(op, "k_scale", &a->k_scale, be, 3, HAE_DTM(HAE_F32)));
    const int64_t B = a->k.shape[0], T = a->k.shape[1], D = a->k.shape[2];
    HAE_TRY(check_head_dim(op, "k", &a->k, D));
    snprintf(w, sizeof w, "[%lld, %lld, %lld] (B, T, D / %d)", (long long)B, (long long)T, (long long)(D / QBLOCK),
             QBLOCK);
    if (!dims_are(&a->k_scale, B, T, D / QBLOCK, 0)) return want_shape(op, "k_scale", &a->k_scale, w);
    HAE_TRY(check_cache(op, be, &a->cache, B, D, &a->k));
    HAE_TRY(check_seq_lens_shape(op, be, &a->seq_lens, B));
    ON_CUDA(index_write, be, a);
    HAE_TRY(check_seq_values(op, &a->cache, &a->seq_lens, T, INT64_MAX, false));
    return hae_index_write_cpu(be, a);
}

/* CTAs run in waves of `slots`, and a last wave half full costs as much as a full one. At 4096 queries x 128K
 * keys on an H200 (2048 query blocks, 132 slots) this takes 3 splits: 47 waves 99% full, not 16 at 97%. */
int64_t hae_index_split_tiles(int64_t tiles, int64_t rows, int64_t slots, int64_t kt, int64_t cta_keys) {
    if (tiles < 1) return 1;
    rows = rows < 1 ? 1 : rows, slots = slots < 1 ? 1 : slots;
    int64_t lo = (8 * slots + rows - 1) / rows;
    lo = lo < 1 ? 1 : lo > tiles ? tiles : lo;
    int64_t best = 0, best_cost = 0;
    for (int64_t s = lo; s <= 4 * lo && s <= tiles; s++) {
        const int64_t per = (tiles + s - 1) / s, ctas = rows * ((tiles + per - 1) / per);
        const int64_t cost = (ctas + slots - 1) / slots * (per * kt + cta_keys);
        if (!best || cost < best_cost) best = per, best_cost = cost;
    }
    return best;
}

hae_status hae_index_logits(hae_backend *be, const hae_index_logits_args *a) {
    const char *op = "hae_index_logits";
    char w[64], d[96];
    HAE_TRY(hae_check_tensor(op, "q", &a->q, be, 4, HAE_DTM(HAE_FP8_E4M3)));
    HAE_TRY(hae_check_tensor(op, "w", &a->w, be, 3, HAE_DTM(HAE_F32)));
    HAE_TRY(hae_check_tensor(op, "logits", &a->logits, be, 3, HAE_DTM(HAE_F32)));
    const int64_t B = a->q.shape[0], T = a->q.shape[1], H = a->q.shape[2], D = a->q.shape[3];
    if (H < 1)
        return hae_error(HAE_ERR_INVALID, "%s: q %s: needs at least one indexer head", op,
                         hae_tensor_describe(&a->q, d, sizeof d));
    HAE_TRY(check_head_dim(op, "q", &a->q, D));
    snprintf(w, sizeof w, "[%lld, %lld, %lld] (B, T, H_I)", (long long)B, (long long)T, (long long)H);
    if (!dims_are(&a->w, B, T, H, 0)) return want_shape(op, "w", &a->w, w);
    if (a->q_scale.data) {
        HAE_TRY(hae_check_tensor(op, "q_scale", &a->q_scale, be, 3, HAE_DTM(HAE_F32)));
        if (!dims_are(&a->q_scale, B, T, H, 0)) return want_shape(op, "q_scale", &a->q_scale, w);
    }
    if (!(a->w_scale > 0.0f && isfinite(a->w_scale)))
        return hae_error(HAE_ERR_INVALID, "%s: w_scale %g must be finite and > 0", op, (double)a->w_scale);
    snprintf(w, sizeof w, "[%lld, %lld, L] (B, T, L)", (long long)B, (long long)T);
    if (a->logits.shape[0] != B || a->logits.shape[1] != T) return want_shape(op, "logits", &a->logits, w);
    HAE_TRY(check_cache(op, be, &a->cache, B, D, &a->q));
    HAE_TRY(check_seq_lens_shape(op, be, &a->seq_lens, B));
    ON_CUDA(index_logits, be, a);
    HAE_TRY(check_seq_values(op, &a->cache, &a->seq_lens, T, a->logits.shape[2], true));
    return hae_index_logits_cpu(be, a);
}

/* ---------------------------------------------------------------- topk */

hae_status hae_topk(hae_backend *be, const hae_topk_args *a) {
    const char *op = "hae_topk";
    char w[64], d[96];
    HAE_TRY(hae_check_tensor(op, "logits", &a->logits, be, 2, HAE_DTM(HAE_F32)));
    HAE_TRY(hae_check_tensor(op, "lens", &a->lens, be, 1, HAE_DTM(HAE_I32)));
    HAE_TRY(hae_check_tensor(op, "out", &a->out, be, 2, HAE_DTM(HAE_I32)));
    const int64_t R = a->logits.shape[0], L = a->logits.shape[1];
    snprintf(w, sizeof w, "[%lld] (R)", (long long)R);
    if (a->lens.shape[0] != R) return want_shape(op, "lens", &a->lens, w);
    if (a->out.shape[0] != R || a->out.shape[1] < 1)
        return hae_error(HAE_ERR_INVALID, "%s: out %s: expected [%lld, k] with k >= 1", op,
                         hae_tensor_describe(&a->out, d, sizeof d), (long long)R);
    ON_CUDA(topk, be, a);
    const int32_t *lens = a->lens.data;
    for (int64_t r = 0; r < R; r++)
        if (lens[r] < 0 || lens[r] > L)
            return hae_error(HAE_ERR_INVALID, "%s: lens[%lld] = %d must be in [0, L = %lld]", op, (long long)r, lens[r],
                             (long long)L);
    return hae_topk_cpu(be, a);
}

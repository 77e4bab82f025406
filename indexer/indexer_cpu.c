/* CPU implementations of the FP8 lightning indexer (the references CUDA kernels will be held to):
 * blockwise e4m3 quantisation, the Walsh-Hadamard rotation, the paged key cache's write, the
 * logits and the top-k selection. Arguments were checked by indexer.c. fp32 throughout. */
#include "internal.h"

#include <math.h>
#include <string.h>

#define QBLOCK 128 /* values per fp8 scale */

static float *thread_scratch(hae_backend *be) {
    return (float *)((char *)be->scratch + (size_t)hae_threadpool_worker() * be->scratch_per_thread);
}

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* ---------------------------------------------------------------- fp8_quant
 * Per block of 128 values: amax = max |x|, scale = 2^e with the smallest e such that
 * amax <= 448 2^e, q = e4m3(x 2^-e) (nearest even). With amax = m 2^E, m in [0.5, 1), that e is
 * E - 9 when m <= 0.875 (448 = 0.875 2^9) and E - 8 otherwise: exact, where log2 would round. e is
 * kept >= -126 so the scale is a normal float (only blocks below 448 2^-126 notice). An all-zero
 * block gets scale 1; a block holding an inf or NaN gets a NaN scale and NaN codes, so the poison
 * stays visible downstream instead of turning into ordinary numbers. */

float hae_fp8_quant_block(const float *v, uint8_t *q) {
    uint32_t amax_bits = 0; /* |x| bits order like |x|, and NaN's above inf's */
    for (int i = 0; i < QBLOCK; i++) {
        uint32_t u = f32_bits(v[i]) & 0x7fffffffu;
        amax_bits = u > amax_bits ? u : amax_bits;
    }
    if (amax_bits >= 0x7f800000u) {
        memset(q, 0x7f, QBLOCK);
        return NAN;
    }
    int e = 0;
    if (amax_bits) {
        float amax;
        memcpy(&amax, &amax_bits, sizeof amax);
        int E;
        float m = frexpf(amax, &E);
        e = E - 9 + (m > 0.875f);
        if (e < -126) e = -126;
    }
    const float inv = ldexpf(1.0f, -e); /* a power of two: x inv is exactly x / scale */
    for (int i = 0; i < QBLOCK; i++) q[i] = hae_f32_to_fp8e4m3(v[i] * inv);
    return ldexpf(1.0f, e);
}

static void quant_row(void *p, int64_t n) {
    const hae_fp8_quant_args *a = p;
    const char *x = hae_row_ptr(&a->x, n, 0, 0);
    uint8_t *q = hae_row_ptr(&a->q, n, 0, 0);
    float *scale = hae_row_ptr(&a->scale, n, 0, 0);
    const size_t es = hae_dtype_size(a->x.dtype);
    float v[QBLOCK];
    for (int64_t c = 0; c < a->x.shape[1] / QBLOCK; c++) {
        hae_to_f32(x + (size_t)(c * QBLOCK) * es, a->x.dtype, QBLOCK, v);
        scale[c] = hae_fp8_quant_block(v, q + c * QBLOCK);
    }
}

hae_status hae_fp8_quant_cpu(hae_backend *be, const hae_fp8_quant_args *a) {
    hae_parallel_for_sized(be->pool, a->x.shape[0], 8 * a->x.shape[1], quant_row, (void *)a);
    return HAE_OK;
}

/* ---------------------------------------------------------------- hadamard
 * x <- H_D x / sqrt(D) by the fast Walsh-Hadamard butterfly: log2 D stages; stage h maps each pair
 * (x_i, x_{i+h}) inside a block of 2h to (x_i + x_{i+h}, x_i - x_{i+h}), which is Sylvester's
 * H_2n = [[H_n, H_n], [H_n, -H_n]] applied block by block. O(D log D) in fp32. */

typedef struct {
    hae_backend *be;
    const hae_hadamard_args *a;
    float norm;
} hadamard_ctx;

static void hadamard_row(void *p, int64_t n) {
    const hadamard_ctx *c = p;
    const hae_tensor *t = &c->a->x;
    const int64_t D = t->shape[1];
    void *row = hae_row_ptr(t, n, 0, 0);
    float *x = thread_scratch(c->be);
    hae_to_f32(row, t->dtype, D, x);
    for (int64_t h = 1; h < D; h *= 2)
        for (int64_t i0 = 0; i0 < D; i0 += 2 * h)
            for (int64_t i = i0; i < i0 + h; i++) {
                float u = x[i], v = x[i + h];
                x[i] = u + v;
                x[i + h] = u - v;
            }
    for (int64_t i = 0; i < D; i++) x[i] *= c->norm;
    hae_from_f32(row, t->dtype, x, D);
}

hae_status hae_hadamard_cpu(hae_backend *be, const hae_hadamard_args *a) {
    const int64_t D = a->x.shape[1];
    if (sizeof(float) * (size_t)D > be->scratch_per_thread)
        return hae_error(HAE_ERR_UNSUPPORTED, "hae_hadamard (cpu): D = %lld needs %zu bytes of scratch per thread, the "
                         "backend has %zu", (long long)D, sizeof(float) * (size_t)D, be->scratch_per_thread);
    hadamard_ctx c = {.be = be, .a = a, .norm = (float)(1.0 / sqrt((double)D))};
    int64_t logd = 0;
    while (((int64_t)1 << logd) < D) logd++;
    hae_parallel_for_sized(be->pool, a->x.shape[0], D * (logd + 2), hadamard_row, &c);
    return HAE_OK;
}

/* ---------------------------------------------------------------- the paged key cache */

/* Token row r of page `page`: its D fp8 bytes, and its D / 128 scales after the page's P x D bytes. */
static uint8_t *page_key(const hae_index_cache *c, int32_t page, int64_t r) {
    return (uint8_t *)c->pages.data + page * c->pages.stride[0] + r * c->head_dim;
}
static float *page_scale(const hae_index_cache *c, int32_t page, int64_t r) {
    uint8_t *base = (uint8_t *)c->pages.data + page * c->pages.stride[0] + (int64_t)c->page_size * c->head_dim;
    return (float *)base + r * (c->head_dim / QBLOCK);
}

/* Key (b, t) goes to position seq_lens[b] - T + t. One thread: the write moves 132 bytes a token,
 * bound by memory, and a single writer keeps a slot two sequences share deterministic. */
hae_status hae_index_write_cpu(hae_backend *be, const hae_index_write_args *a) {
    const hae_index_cache *c = &a->cache;
    const int64_t B = a->k.shape[0], T = a->k.shape[1], D = a->k.shape[2], P = c->page_size;
    const int32_t *len = a->seq_lens.data;
    for (int64_t b = 0; b < B; b++) {
        const int32_t *bt = hae_row_ptr(&c->block_table, b, 0, 0);
        for (int64_t t = 0; t < T; t++) {
            const int64_t s = len[b] - T + t;
            const size_t scale_bytes = sizeof(float) * (size_t)(D / QBLOCK);
            memcpy(page_key(c, bt[s / P], s % P), hae_row_ptr(&a->k, b, t, 0), (size_t)D);
            memcpy(page_scale(c, bt[s / P], s % P), hae_row_ptr(&a->k_scale, b, t, 0), scale_bytes);
        }
    }
    return HAE_OK;
}

/* ---------------------------------------------------------------- index_logits
 * Query (b, t) at p = seq_lens[b] - T + t, key s <= p, block scales k_scale(s, c) for c < D / 128,
 * head weight v(t, h) = w_scale w(t, h) q_scale(t, h) (q_scale 1 when absent):
 *     I(t, s) = sum_h v(t, h) ReLU( sum_d q(t, h, d) k(s, d) k_scale(s, d / 128) )
 * the header's formula with the key's scale moved inside the ReLU (equal, as the scale is > 0),
 * which extends it to several key scales. With hae_fp8_quant's power-of-two scales k k_scale is
 * exact, so every product is exact in fp32 and only the fp32 sums round. ReLU keeps NaN, so a NaN key shows up as
 * a NaN logit (which top-k ranks lowest) instead of vanishing. Work items are (b, t, a chunk of
 * keys), so decode rows spread over the threads too. */

#define KEY_CHUNK 4096

typedef struct {
    hae_backend *be;
    const hae_index_logits_args *a;
    int64_t T, H, D, L, n_chunks;
    float lut[256]; /* e4m3 code -> value */
} logits_ctx;

static void logits_item(void *p, int64_t item) {
    const logits_ctx *c = p;
    const hae_index_logits_args *a = c->a;
    const hae_index_cache *cache = &a->cache;
    const int64_t row = item / c->n_chunks, b = row / c->T, t = row % c->T, H = c->H, D = c->D;
    const int64_t s0 = item % c->n_chunks * KEY_CHUNK, s1 = s0 + KEY_CHUNK < c->L ? s0 + KEY_CHUNK : c->L;
    const int64_t pos = ((const int32_t *)a->seq_lens.data)[b] - c->T + t;
    float *out = hae_row_ptr(&a->logits, b, t, 0);
    const int64_t last = pos < s1 - 1 ? pos : s1 - 1; /* keys past pos are never read */
    if (last >= s0) {
        float *qf = thread_scratch(c->be), *kf = qf + H * D, *v = kf + D;
        const uint8_t *q = hae_row_ptr(&a->q, b, t, 0);
        const float *w = hae_row_ptr(&a->w, b, t, 0);
        const float *qs = a->q_scale.data ? hae_row_ptr(&a->q_scale, b, t, 0) : NULL;
        const int32_t *bt = hae_row_ptr(&cache->block_table, b, 0, 0);
        for (int64_t i = 0; i < H * D; i++) qf[i] = c->lut[q[i]];
        for (int64_t h = 0; h < H; h++) v[h] = a->w_scale * w[h] * (qs ? qs[h] : 1.0f);
        for (int64_t s = s0; s <= last; s++) {
            const int32_t page = bt[s / cache->page_size];
            const uint8_t *k = page_key(cache, page, s % cache->page_size);
            const float *ks = page_scale(cache, page, s % cache->page_size);
            for (int64_t d = 0; d < D; d++) kf[d] = c->lut[k[d]] * ks[d / QBLOCK];
            float acc = 0.0f;
            for (int64_t h = 0; h < H; h++) {
                float dot = hae_dot_f32(qf + h * D, kf, D);
                acc += v[h] * (dot < 0.0f ? 0.0f : dot);
            }
            out[s] = acc;
        }
    }
    for (int64_t s = last + 1 > s0 ? last + 1 : s0; s < s1; s++) out[s] = -INFINITY;
}

hae_status hae_index_logits_cpu(hae_backend *be, const hae_index_logits_args *a) {
    logits_ctx c = {.be = be, .a = a, .T = a->q.shape[1], .H = a->q.shape[2], .D = a->q.shape[3],
                    .L = a->logits.shape[2]};
    c.n_chunks = (c.L + KEY_CHUNK - 1) / KEY_CHUNK;
    const size_t need = sizeof(float) * (size_t)((c.H + 1) * c.D + c.H);
    if (need > be->scratch_per_thread)
        return hae_error(HAE_ERR_UNSUPPORTED, "hae_index_logits (cpu): H_I = %lld heads of D = %lld need %zu bytes of "
                         "scratch per thread, the backend has %zu", (long long)c.H, (long long)c.D, need,
                         be->scratch_per_thread);
    for (int i = 0; i < 256; i++) c.lut[i] = hae_fp8e4m3_to_f32((uint8_t)i);
    const int64_t chunk_len = c.L < KEY_CHUNK ? c.L : KEY_CHUNK;
    hae_parallel_for_sized(be->pool, a->q.shape[0] * c.T * c.n_chunks, chunk_len * c.H * c.D, logits_item, &c);
    return HAE_OK;
}

/* ---------------------------------------------------------------- topk
 * Each float maps to a uint32 key that orders like the float: negatives flip every bit,
 * non-negatives set the sign bit. -0 folds onto +0 (equal logits tie) and every NaN onto 0, below
 * -inf: NaN ranks lowest, taken only when a row has fewer than k numbers. A radix select finds
 * the k-th largest key K in three histogram passes over 11, 11 and 10 bits, most significant
 * first, each counting only the keys that share the digits fixed so far; that leaves `ties`, how
 * many keys equal to K belong to the k largest. One last pass in index order emits every key > K
 * and the first `ties` keys == K: ascending indices, ties to the lower index, O(L) a row. */

static inline uint32_t order_key(float f) {
    uint32_t u = f32_bits(f);
    uint32_t key = u ^ ((uint32_t)-(int32_t)(u >> 31) | 0x80000000u);
    key = key == 0x7fffffffu ? 0x80000000u : key; /* -0 */
    return (u & 0x7fffffffu) > 0x7f800000u ? 0 : key;
}

static void kth_largest_key(const float *x, int64_t n, int64_t k, uint32_t *key_k, int64_t *ties) {
    static const int shift[3] = {21, 10, 0}, bits[3] = {11, 11, 10};
    uint32_t hist[1 << 11], prefix = 0, mask = 0;
    int64_t need = k;
    for (int pass = 0; pass < 3; pass++) {
        const uint32_t nb = 1u << bits[pass], sh = (uint32_t)shift[pass];
        memset(hist, 0, nb * sizeof *hist);
        for (int64_t i = 0; i < n; i++) {
            uint32_t key = order_key(x[i]);
            if ((key & mask) == prefix) hist[(key >> sh) & (nb - 1)]++;
        }
        uint32_t d = nb - 1;
        while (hist[d] < need) need -= hist[d--]; /* the bins above d hold fewer than `need` keys */
        prefix |= d << sh;
        mask |= (nb - 1) << sh;
    }
    *key_k = prefix;
    *ties = need;
}

static void topk_row(void *p, int64_t r) {
    const hae_topk_args *a = p;
    const float *x = hae_row_ptr(&a->logits, r, 0, 0);
    int32_t *out = hae_row_ptr(&a->out, r, 0, 0);
    const int64_t n = ((const int32_t *)a->lens.data)[r], k = a->out.shape[1];
    int64_t m = 0;
    if (n <= k) {
        for (; m < n; m++) out[m] = (int32_t)m;
    } else {
        uint32_t kk;
        int64_t ties;
        kth_largest_key(x, n, k, &kk, &ties);
        for (int64_t i = 0; i < n && m < k; i++) {
            uint32_t key = order_key(x[i]);
            if (key > kk) {
                out[m++] = (int32_t)i;
            } else if (key == kk && ties > 0) {
                out[m++] = (int32_t)i;
                ties--;
            }
        }
    }
    for (; m < k; m++) out[m] = -1;
}

hae_status hae_topk_cpu(hae_backend *be, const hae_topk_args *a) {
    hae_parallel_for_sized(be->pool, a->logits.shape[0], 4 * a->logits.shape[1], topk_row, (void *)a);
    return HAE_OK;
}

/* Full and sliding-window attention on the CPU vs a naive O(T^2) float64 oracle, with the KV cache
 * written through hae_kv_write as the model writes it (ring slots for windows). Both attention forms:
 * gqa, key and value dims that differ, cache slots strided past their heads, and mla's absorbed shape
 * (Hkv 1, the value cache a view of the first Dv dims of the Dk-wide latent key cache). */
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int64_t B, T, pos0, Hq, Hkv, Dk, Dv, window, cap, chunk;
    hae_dtype dt;
    int64_t spad; /* elements between a slot's heads and the next slot */
    bool mla;     /* values = the first Dv dims of the keys, v_cache a view of k_cache */
} attn_case;

/* Element d of the value of (b, position s, kv head g): from V, or from K's first dims for mla. */
static double value_of(const attn_case *c, const void *K, const void *V, int64_t b, int64_t s, int64_t g, int64_t d) {
    const int64_t P = c->pos0 + c->T;
    if (c->mla) return tu_get(K, c->dt, ((b * P + s) * c->Hkv + g) * c->Dk + d);
    return tu_get(V, c->dt, ((b * P + s) * c->Hkv + g) * c->Dv + d);
}

/* Oracle: softmax(scale q . k_s) over s in [lo, p] for every (b, t, h), in double. */
static void oracle(const attn_case *c, const void *q, const void *K, const void *V, float scale, double *out) {
    int64_t P = c->pos0 + c->T, G = c->Hq / c->Hkv;
    double *w = malloc(sizeof(double) * (size_t)P);
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t t = 0; t < c->T; t++)
            for (int64_t h = 0; h < c->Hq; h++) {
                int64_t p = c->pos0 + t, lo = c->window > 0 && p - c->window + 1 > 0 ? p - c->window + 1 : 0, g = h / G;
                const int64_t row = (b * c->T + t) * c->Hq + h;
                double mx = -INFINITY, z = 0;
                for (int64_t s = lo; s <= p; s++) {
                    double dot = 0;
                    for (int64_t d = 0; d < c->Dk; d++)
                        dot += tu_get(q, c->dt, row * c->Dk + d) *
                               tu_get(K, c->dt, ((b * P + s) * c->Hkv + g) * c->Dk + d);
                    w[s] = dot * scale;
                    if (w[s] > mx) mx = w[s];
                }
                for (int64_t s = lo; s <= p; s++) z += w[s] = exp(w[s] - mx);
                for (int64_t d = 0; d < c->Dv; d++) {
                    double o = 0;
                    for (int64_t s = lo; s <= p; s++) o += w[s] * value_of(c, K, V, b, s, g, d);
                    out[row * c->Dv + d] = o / z;
                }
            }
    free(w);
}

/* A [B, cap, Hkv, D] cache view whose slots are `slot` elements apart. */
static hae_tensor cache_view(const attn_case *c, void *data, int64_t D, int64_t slot) {
    hae_tensor t = hae_tensor_4d(data, c->dt, HAE_CPU, c->B, c->cap, c->Hkv, D);
    t.stride[1] = slot;
    t.stride[0] = c->cap * slot;
    return t;
}

static void run_case(hae_backend *be, const attn_case *c, uint64_t seed) {
    tu_rng r = tu_rng_make(seed);
    const int64_t P = c->pos0 + c->T, es = (int64_t)hae_dtype_size(c->dt);
    const int64_t kslot = c->Hkv * c->Dk + c->spad, vslot = c->mla ? kslot : c->Hkv * c->Dv + c->spad;
    const int64_t nq = c->B * c->T * c->Hq * c->Dk, no = c->B * c->T * c->Hq * c->Dv;
    const int64_t nk = c->B * P * c->Hkv * c->Dk, nv = c->B * P * c->Hkv * c->Dv;
    void *q = malloc((size_t)(nq * es)), *K = malloc((size_t)(nk * es)), *V = malloc((size_t)(nv * es));
    void *kc = malloc((size_t)(c->B * c->cap * kslot * es)), *out = malloc((size_t)(no * es));
    void *vc = c->mla ? kc : malloc((size_t)(c->B * c->cap * vslot * es));
    double *ref = malloc(sizeof(double) * (size_t)no);
    tu_fill(q, c->dt, nq, &r, -1.5, 1.5);
    tu_fill(K, c->dt, nk, &r, -1.5, 1.5);
    tu_fill(V, c->dt, nv, &r, -1, 1);
    /* NaN poison: a slot read before it is written shows, and so does a read of the padding */
    memset(kc, 0xff, (size_t)(c->B * c->cap * kslot * es));
    if (!c->mla) memset(vc, 0xff, (size_t)(c->B * c->cap * vslot * es));
    memset(out, 0xff, (size_t)(no * es));
    float scale = 1.0f / sqrtf((float)c->Dk);
    oracle(c, q, K, V, scale, ref);

    hae_tensor kct = cache_view(c, kc, c->Dk, kslot), vct = cache_view(c, vc, c->Dv, vslot);
    /* the context before the queries in chunks, then the queries' own tokens, as the model writes them */
    hae_tensor Kt = hae_tensor_4d(K, c->dt, HAE_CPU, c->B, P, c->Hkv, c->Dk), Vt = hae_tensor_4d(V, c->dt, HAE_CPU, c->B, P, c->Hkv, c->Dv);
    for (int64_t p0 = 0, n; p0 < P; p0 += n) {
        n = p0 < c->pos0 ? (c->pos0 - p0 < c->chunk ? c->pos0 - p0 : c->chunk) : c->T;
        hae_kv_write_args wk = {.src = hae_tensor_narrow(Kt, 1, p0, n), .cache = kct, .pos0 = p0};
        hae_kv_write_args wv = {.src = hae_tensor_narrow(Vt, 1, p0, n), .cache = vct, .pos0 = p0};
        cr_assert_eq(hae_kv_write(be, &wk), HAE_OK, "%s", hae_last_error());
        if (!c->mla) cr_assert_eq(hae_kv_write(be, &wv), HAE_OK, "%s", hae_last_error()); /* mla: one latent write */
    }
    hae_attention_args a = {.q = hae_tensor_4d(q, c->dt, HAE_CPU, c->B, c->T, c->Hq, c->Dk),
                            .k_cache = kct, .v_cache = vct,
                            .out = hae_tensor_4d(out, c->dt, HAE_CPU, c->B, c->T, c->Hq, c->Dv),
                            .pos0 = c->pos0, .window = c->window, .scale = scale};
    cr_assert_eq(hae_attention(be, &a), HAE_OK, "%s", hae_last_error());
    char why[256];
    bool f32 = c->dt == HAE_F32;
    cr_expect(tu_close(out, c->dt, ref, no, f32 ? 2e-6 : 6e-3, f32 ? 1e-5 : 2e-2, f32 ? 1e-5 : 2e-2, why, sizeof why),
              "attention B=%lld T=%lld pos0=%lld Hq=%lld Hkv=%lld Dk=%lld Dv=%lld window=%lld cap=%lld %s slot pad "
              "%lld%s: %s",
              (long long)c->B, (long long)c->T, (long long)c->pos0, (long long)c->Hq, (long long)c->Hkv,
              (long long)c->Dk, (long long)c->Dv, (long long)c->window, (long long)c->cap, hae_dtype_name(c->dt),
              (long long)c->spad, c->mla ? " (mla view)" : "", why);
    if (!c->mla) free(vc);
    free(q), free(K), free(V), free(kc), free(out), free(ref);
}

Test(attention, full_and_window_vs_naive) {
    hae_backend *be = tu_cpu();
    const attn_case cases[] = {
        /* B  T  pos0 Hq Hkv Dk Dv  window cap chunk dt    spad mla */
        {1, 1, 0, 1, 1, 8, 8, 0, 1, 1, HAE_F32, 0, false},       /* one token attends to itself */
        {2, 40, 0, 4, 2, 16, 16, 0, 40, 40, HAE_F32, 0, false},  /* causal prefill, gqa 2 */
        {2, 13, 27, 8, 2, 32, 32, 0, 40, 9, HAE_F32, 0, false},  /* prefill continuing a cache, gqa 4 */
        {1, 1, 63, 4, 4, 64, 64, 0, 64, 16, HAE_F32, 0, false},  /* decode, mha */
        {2, 30, 0, 4, 1, 16, 16, 7, 36, 30, HAE_F32, 0, false},  /* window inside one chunk, mqa */
        {1, 10, 50, 4, 2, 16, 16, 12, 21, 10, HAE_F32, 0, false}, /* window over a ring that wrapped */
        {2, 1, 200, 2, 1, 24, 24, 16, 16, 1, HAE_F32, 0, false}, /* decode in a ring of exactly the window */
        {1, 5, 3, 2, 2, 8, 8, 100, 8, 5, HAE_F32, 0, false},     /* window longer than the context */
        {2, 17, 11, 4, 2, 64, 64, 0, 28, 17, HAE_BF16, 0, false}, /* bf16 cache and queries */
        {1, 1, 300, 8, 2, 128, 128, 64, 64, 1, HAE_BF16, 0, false},
        {2, 9, 6, 4, 2, 24, 40, 0, 15, 4, HAE_F32, 0, false},    /* Dv > Dk */
        {2, 7, 5, 4, 2, 40, 16, 0, 12, 5, HAE_F32, 6, false},    /* Dv < Dk, strided slots */
        {1, 6, 30, 4, 2, 32, 32, 10, 15, 7, HAE_BF16, 2, false}, /* window in a strided ring */
        {2, 5, 12, 16, 1, 72, 64, 0, 17, 6, HAE_F32, 0, true},   /* mla's absorbed shape, scaled down */
        {1, 3, 9, 8, 1, 72, 64, 0, 12, 9, HAE_BF16, 8, true},    /* mla view in a wider latent slot */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(be, &cases[i], 100 + i);
    hae_backend_destroy(be);
}

Test(attention, rejects_a_cache_too_small) {
    hae_backend *be = tu_cpu();
    float q[2 * 4 * 8], kc[6 * 2 * 8], vc[6 * 2 * 8], out[2 * 4 * 8];
    memset(q, 0, sizeof q), memset(kc, 0, sizeof kc), memset(vc, 0, sizeof vc);
    hae_attention_args a = {.q = hae_tensor_4d(q, HAE_F32, HAE_CPU, 1, 2, 4, 8),
                            .k_cache = hae_tensor_4d(kc, HAE_F32, HAE_CPU, 1, 6, 2, 8),
                            .v_cache = hae_tensor_4d(vc, HAE_F32, HAE_CPU, 1, 6, 2, 8),
                            .out = hae_tensor_4d(out, HAE_F32, HAE_CPU, 1, 2, 4, 8),
                            .pos0 = 5, .window = 0, .scale = 0.3f};
    cr_expect_eq(hae_attention(be, &a), HAE_ERR_INVALID, "full attention over 7 positions in 6 slots");
    cr_expect(strstr(hae_last_error(), "6 slots") && strstr(hae_last_error(), "7 positions"), "%s", hae_last_error());
    a.window = 5; /* window 5 + 2 queries - 1 = 6 slots: fits */
    cr_expect_eq(hae_attention(be, &a), HAE_OK, "%s", hae_last_error());
    a.q = hae_tensor_4d(q, HAE_F32, HAE_CPU, 1, 2, 3, 8);
    a.out = hae_tensor_4d(out, HAE_F32, HAE_CPU, 1, 2, 3, 8);
    cr_expect_eq(hae_attention(be, &a), HAE_ERR_INVALID, "3 q heads over 2 kv heads");
    cr_expect(strstr(hae_last_error(), "multiple"), "%s", hae_last_error());
    a.q = hae_tensor_4d(q, HAE_F32, HAE_CPU, 1, 2, 4, 8);
    a.out = hae_tensor_4d(out, HAE_F32, HAE_CPU, 1, 2, 4, 8);
    a.scale = 0.0f;
    cr_expect_eq(hae_attention(be, &a), HAE_ERR_INVALID);
    hae_kv_write_args w = {.src = hae_tensor_4d(q, HAE_F32, HAE_CPU, 1, 7, 1, 8),
                           .cache = hae_tensor_4d(kc, HAE_F32, HAE_CPU, 1, 6, 1, 8)};
    cr_expect_eq(hae_kv_write(be, &w), HAE_ERR_INVALID, "7 tokens into 6 slots");
    hae_backend_destroy(be);
}

/* Full and sliding-window attention on the CPU vs a naive O(T^2) float64 oracle, with the KV cache
 * written through hae_kv_write as the model writes it (ring slots for windows). */
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int64_t B, T, pos0, Hq, Hkv, D, window, cap, chunk;
    hae_dtype dt;
} attn_case;

/* Oracle: softmax(scale q . k_s) over s in [lo, p] for every (b, t, h), in double. */
static void oracle(const attn_case *c, const void *q, const void *K, const void *V, float scale, double *out) {
    int64_t P = c->pos0 + c->T, G = c->Hq / c->Hkv;
    double *w = malloc(sizeof(double) * (size_t)P);
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t t = 0; t < c->T; t++)
            for (int64_t h = 0; h < c->Hq; h++) {
                int64_t p = c->pos0 + t, lo = c->window > 0 && p - c->window + 1 > 0 ? p - c->window + 1 : 0, g = h / G;
                const int64_t qoff = ((b * c->T + t) * c->Hq + h) * c->D;
                double mx = -INFINITY, z = 0;
                for (int64_t s = lo; s <= p; s++) {
                    double dot = 0;
                    for (int64_t d = 0; d < c->D; d++)
                        dot += tu_get(q, c->dt, qoff + d) * tu_get(K, c->dt, ((b * P + s) * c->Hkv + g) * c->D + d);
                    w[s] = dot * scale;
                    if (w[s] > mx) mx = w[s];
                }
                for (int64_t s = lo; s <= p; s++) z += w[s] = exp(w[s] - mx);
                for (int64_t d = 0; d < c->D; d++) {
                    double o = 0;
                    for (int64_t s = lo; s <= p; s++) o += w[s] * tu_get(V, c->dt, ((b * P + s) * c->Hkv + g) * c->D + d);
                    out[qoff + d] = o / z;
                }
            }
    free(w);
}

static void run_case(hae_backend *be, const attn_case *c, uint64_t seed) {
    tu_rng r = tu_rng_make(seed);
    int64_t P = c->pos0 + c->T, es = (int64_t)hae_dtype_size(c->dt);
    int64_t nq = c->B * c->T * c->Hq * c->D, nkv = c->B * P * c->Hkv * c->D, ncache = c->B * c->cap * c->Hkv * c->D;
    void *q = malloc((size_t)(nq * es)), *K = malloc((size_t)(nkv * es)), *V = malloc((size_t)(nkv * es));
    void *kc = malloc((size_t)(ncache * es)), *vc = malloc((size_t)(ncache * es)), *out = malloc((size_t)(nq * es));
    double *ref = malloc(sizeof(double) * (size_t)nq);
    tu_fill(q, c->dt, nq, &r, -1.5, 1.5);
    tu_fill(K, c->dt, nkv, &r, -1.5, 1.5);
    tu_fill(V, c->dt, nkv, &r, -1, 1);
    memset(kc, 0xff, (size_t)(ncache * es)); /* NaN poison: a slot read before it is written shows */
    memset(vc, 0xff, (size_t)(ncache * es));
    memset(out, 0xff, (size_t)(nq * es));
    float scale = 1.0f / sqrtf((float)c->D);
    oracle(c, q, K, V, scale, ref);

    hae_tensor kct = hae_tensor_4d(kc, c->dt, HAE_CPU, c->B, c->cap, c->Hkv, c->D);
    hae_tensor vct = hae_tensor_4d(vc, c->dt, HAE_CPU, c->B, c->cap, c->Hkv, c->D);
    /* the context before the queries in chunks, then the queries' own tokens, as the model writes them */
    hae_tensor Kt = hae_tensor_4d(K, c->dt, HAE_CPU, c->B, P, c->Hkv, c->D), Vt = hae_tensor_4d(V, c->dt, HAE_CPU, c->B, P, c->Hkv, c->D);
    for (int64_t p0 = 0, n; p0 < P; p0 += n) {
        n = p0 < c->pos0 ? (c->pos0 - p0 < c->chunk ? c->pos0 - p0 : c->chunk) : c->T;
        hae_kv_write_args wk = {.src = hae_tensor_narrow(Kt, 1, p0, n), .cache = kct, .pos0 = p0};
        hae_kv_write_args wv = {.src = hae_tensor_narrow(Vt, 1, p0, n), .cache = vct, .pos0 = p0};
        cr_assert_eq(hae_kv_write(be, &wk), HAE_OK, "%s", hae_last_error());
        cr_assert_eq(hae_kv_write(be, &wv), HAE_OK, "%s", hae_last_error());
    }
    hae_attention_args a = {.q = hae_tensor_4d(q, c->dt, HAE_CPU, c->B, c->T, c->Hq, c->D),
                            .k_cache = kct, .v_cache = vct,
                            .out = hae_tensor_4d(out, c->dt, HAE_CPU, c->B, c->T, c->Hq, c->D),
                            .pos0 = c->pos0, .window = c->window, .scale = scale};
    cr_assert_eq(hae_attention(be, &a), HAE_OK, "%s", hae_last_error());
    char why[256];
    bool f32 = c->dt == HAE_F32;
    cr_expect(tu_close(out, c->dt, ref, nq, f32 ? 2e-6 : 6e-3, f32 ? 1e-5 : 2e-2, f32 ? 1e-5 : 2e-2, why, sizeof why),
              "attention B=%lld T=%lld pos0=%lld Hq=%lld Hkv=%lld D=%lld window=%lld cap=%lld %s: %s", (long long)c->B,
              (long long)c->T, (long long)c->pos0, (long long)c->Hq, (long long)c->Hkv, (long long)c->D,
              (long long)c->window, (long long)c->cap, hae_dtype_name(c->dt), why);
    free(q), free(K), free(V), free(kc), free(vc), free(out), free(ref);
}

Test(attention, full_and_window_vs_naive) {
    hae_backend *be = tu_cpu();
    const attn_case cases[] = {
        /* B  T  pos0 Hq Hkv D  window cap chunk dt */
        {1, 1, 0, 1, 1, 8, 0, 1, 1, HAE_F32},      /* one token attends to itself */
        {2, 40, 0, 4, 2, 16, 0, 40, 40, HAE_F32},  /* causal prefill, gqa 2 */
        {2, 13, 27, 8, 2, 32, 0, 40, 9, HAE_F32},  /* prefill continuing a cache, gqa 4 */
        {1, 1, 63, 4, 4, 64, 0, 64, 16, HAE_F32},  /* decode, mha */
        {2, 30, 0, 4, 1, 16, 7, 36, 30, HAE_F32},  /* window inside one chunk, mqa */
        {1, 10, 50, 4, 2, 16, 12, 21, 10, HAE_F32}, /* window over a ring that wrapped */
        {2, 1, 200, 2, 1, 24, 16, 16, 1, HAE_F32}, /* decode in a ring of exactly the window */
        {1, 5, 3, 2, 2, 8, 100, 8, 5, HAE_F32},    /* window longer than the context */
        {2, 17, 11, 4, 2, 64, 0, 28, 17, HAE_BF16}, /* bf16 cache and queries */
        {1, 1, 300, 8, 2, 128, 64, 64, 1, HAE_BF16},
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

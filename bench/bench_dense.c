/* CUDA microbenchmarks of the dense ops and attention: GEMM bf16 4096^3, rmsnorm and SwiGLU on
 * [8192, 4096], attention prefill (B 1, T 4096, Hq 32, Hkv 8, D 128) and decode (B 16, context 16384).
 * Each op: fresh random inputs, warm-up, then >= 20 repetitions, each timed alone with CUDA events
 * on the backend's stream after an L2 flush; prints the median (and min..max) with TFLOP/s and GB/s
 * from the median. Without CUDA or a GPU it says so and exits 0. */
#include "internal.h"

#include "bench_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef HAE_HAVE_CUDA

#define WARMUP 3
#define REPS 25


static hae_backend *g_be;
static hae_cuda_timer *g_timer;

/* Device memory of n elements of dt, filled with uniform [lo, hi) values (a 4M-element random block
 * generated once per call and uploaded as often as the buffer needs). */
static void *dev_random(hae_dtype dt, int64_t n, uint64_t seed, float lo, float hi) {
    size_t es = hae_dtype_size(dt), bytes = (size_t)n * es;
    void *d = NULL;
    CHECK("alloc", hae_backend_alloc(g_be, bytes, &d));
    int64_t chunk = n < ((int64_t)1 << 22) ? n : ((int64_t)1 << 22);
    void *h = malloc((size_t)chunk * es);
    if (!h) {
        fprintf(stderr, "bench_dense: out of host memory\n");
        exit(1);
    }
    uint64_t s = seed;
    for (int64_t i = 0; i < chunk; i++) {
        float u = (float)(hae_mix64(s++) >> 40) * (1.0f / 16777216.0f);
        hae_store_f(h, dt, i, lo + (hi - lo) * u);
    }
    for (int64_t off = 0; off < n; off += chunk) {
        int64_t len = n - off < chunk ? n - off : chunk;
        CHECK("upload", hae_backend_upload(g_be, (char *)d + (size_t)off * es, h, (size_t)len * es));
    }
    CHECK("sync", hae_backend_sync(g_be));
    free(h);
    return d;
}

typedef hae_status (*op_fn)(const void *args);

static hae_status run_gemm(const void *a) { return hae_gemm(g_be, a); }
static hae_status run_rmsnorm(const void *a) { return hae_rmsnorm(g_be, a); }
static hae_status run_swiglu(const void *a) { return hae_swiglu(g_be, a); }
static hae_status run_attention(const void *a) { return hae_attention(g_be, a); }

static int cmp_float(const void *x, const void *y) {
    float a = *(const float *)x, b = *(const float *)y;
    return (a > b) - (a < b);
}

/* Times fn(args) and prints one row; flops and bytes are per call. */
static void bench(const char *name, const char *shape, op_fn fn, const void *args, double flops, double bytes) {
    float ms[REPS];
    for (int i = 0; i < WARMUP; i++) CHECK(name, fn(args));
    CHECK(name, hae_backend_sync(g_be));
    for (int i = 0; i < REPS; i++) {
        CHECK("flush", hae_cuda_timer_flush_l2(g_timer));
        CHECK("timer", hae_cuda_timer_start(g_timer));
        CHECK(name, fn(args));
        CHECK("timer", hae_cuda_timer_stop(g_timer, &ms[i]));
    }
    qsort(ms, REPS, sizeof ms[0], cmp_float);
    double med_s = (double)ms[REPS / 2] * 1e-3;
    char tf[32] = "-", gb[32] = "-";
    if (flops > 0) snprintf(tf, sizeof tf, "%.1f", flops / med_s * 1e-12);
    if (bytes > 0) snprintf(gb, sizeof gb, "%.0f", bytes / med_s * 1e-9);
    printf("| %-22s | %-44s | %10.1f | %9.1f..%-9.1f | %8s | %7s |\n", name, shape, med_s * 1e6,
           (double)ms[0] * 1e3, (double)ms[REPS - 1] * 1e3, tf, gb);
    fflush(stdout);
}

static void bench_gemm(hae_dtype cdt) {
    const int64_t M = 4096, N = 4096, K = 4096;
    void *a = dev_random(HAE_BF16, M * K, 1, -1, 1), *b = dev_random(HAE_BF16, N * K, 2, -1, 1);
    void *c = dev_random(cdt, M * N, 3, -1, 1);
    hae_gemm_args g = {hae_tensor_2d(a, HAE_BF16, HAE_CUDA, M, K), hae_tensor_2d(b, HAE_BF16, HAE_CUDA, N, K),
                       hae_tensor_2d(c, cdt, HAE_CUDA, M, N), false};
    char name[64];
    snprintf(name, sizeof name, "gemm bf16 -> %s", hae_dtype_name(cdt));
    bench(name, "M 4096 N 4096 K 4096", run_gemm, &g, 2.0 * M * N * K,
          (double)(M * K + N * K) * 2 + (double)(M * N) * (double)hae_dtype_size(cdt));
    hae_backend_free(g_be, a), hae_backend_free(g_be, b), hae_backend_free(g_be, c);
}

static void bench_rmsnorm(hae_dtype odt) {
    const int64_t N = 8192, D = 4096;
    void *x = dev_random(HAE_F32, N * D, 4, -2, 2), *w = dev_random(HAE_F32, D, 5, 0.5f, 1.5f);
    void *o = dev_random(odt, N * D, 6, -1, 1);
    hae_rmsnorm_args r = {.x = hae_tensor_2d(x, HAE_F32, HAE_CUDA, N, D), .weight = hae_tensor_1d(w, HAE_F32, HAE_CUDA, D),
                          .out = hae_tensor_2d(o, odt, HAE_CUDA, N, D), .eps = 1e-6f};
    char name[64];
    snprintf(name, sizeof name, "rmsnorm f32 -> %s", hae_dtype_name(odt));
    bench(name, "[8192, 4096]", run_rmsnorm, &r, 0,
          (double)(N * D) * (4.0 + (double)hae_dtype_size(odt)) + 4.0 * (double)D);
    hae_backend_free(g_be, x), hae_backend_free(g_be, w), hae_backend_free(g_be, o);
}

static void bench_swiglu(void) {
    const int64_t N = 8192, F = 4096;
    void *gu = dev_random(HAE_BF16, N * 2 * F, 7, -4, 4), *o = dev_random(HAE_BF16, N * F, 8, -1, 1);
    hae_swiglu_args s = {hae_tensor_2d(gu, HAE_BF16, HAE_CUDA, N, 2 * F), hae_tensor_2d(o, HAE_BF16, HAE_CUDA, N, F)};
    bench("swiglu bf16", "gate_up [8192, 8192] -> [8192, 4096]", run_swiglu, &s, 0, (double)(N * 3 * F) * 2.0);
    hae_backend_free(g_be, gu), hae_backend_free(g_be, o);
}

/* Full causal attention of T new tokens from position pos0 over a cache of pos0 + T tokens. */
static void bench_attention(const char *name, int64_t B, int64_t T, int64_t pos0, int64_t Hq, int64_t Hkv,
                            int64_t D) {
    const int64_t cap = pos0 + T;
    void *q = dev_random(HAE_BF16, B * T * Hq * D, 9, -2, 2), *o = dev_random(HAE_BF16, B * T * Hq * D, 10, -1, 1);
    void *k = dev_random(HAE_BF16, B * cap * Hkv * D, 11, -1, 1), *v = dev_random(HAE_BF16, B * cap * Hkv * D, 12, -1, 1);
    hae_attention_args a = {hae_tensor_4d(q, HAE_BF16, HAE_CUDA, B, T, Hq, D),
                            hae_tensor_4d(k, HAE_BF16, HAE_CUDA, B, cap, Hkv, D),
                            hae_tensor_4d(v, HAE_BF16, HAE_CUDA, B, cap, Hkv, D),
                            hae_tensor_4d(o, HAE_BF16, HAE_CUDA, B, T, Hq, D),
                            pos0,
                            0,
                            0.08838834764f};
    double keys = 0; /* sum over queries of the keys each attends to */
    for (int64_t t = 0; t < T; t++) keys += (double)(pos0 + t + 1);
    double flops = 4.0 * (double)D * (double)Hq * (double)B * keys;
    double bytes = 2.0 * (double)(B * T * Hq * D) * 2.0 + 2.0 * (double)(B * cap * Hkv * D) * 2.0;
    char shape[96];
    snprintf(shape, sizeof shape, "B %lld T %lld ctx %lld Hq %lld Hkv %lld D %lld", (long long)B, (long long)T,
             (long long)cap, (long long)Hq, (long long)Hkv, (long long)D);
    bench(name, shape, run_attention, &a, flops, bytes);
    hae_backend_free(g_be, q), hae_backend_free(g_be, o), hae_backend_free(g_be, k), hae_backend_free(g_be, v);
}

static int bench_main(void) {
    if (!hae_cuda_available()) {
        printf("bench_dense: no GPU: skipped\n");
        return 0;
    }
    CHECK("cuda backend", hae_backend_create(HAE_CUDA, 0, &g_be));
    CHECK("timer", hae_cuda_timer_create(g_be, &g_timer));
    char rt[16], drv[16];
    hae_cuda_versions(rt, drv, sizeof rt);
    size_t l2 = 0, mem = 0;
    int sms = 0;
    CHECK("device facts", hae_cuda_device_facts(g_be, &l2, &sms, &mem));
    printf("# bench_dense on %s: %d SMs, L2 %.0f MiB, %.1f GiB; CUDA runtime %s, driver %s\n", hae_backend_name(g_be),
           sms, (double)l2 / 1048576.0, (double)mem / 1073741824.0, rt, drv);
    printf("# %d warm-up calls, then %d calls each timed alone after an L2 flush; rates from the median\n\n", WARMUP,
           REPS);
    printf("| %-22s | %-44s | %10s | %-20s | %8s | %7s |\n", "op", "shape", "median us", "min..max us", "TFLOP/s",
           "GB/s");
    printf("|------------------------|----------------------------------------------|------------|----------------------|"
           "----------|---------|\n");
    bench_gemm(HAE_BF16);
    bench_gemm(HAE_F32);
    bench_rmsnorm(HAE_F32);
    bench_rmsnorm(HAE_BF16);
    bench_swiglu();
    bench_attention("attention prefill bf16", 1, 4096, 0, 32, 8, 128);
    bench_attention("attention decode bf16", 16, 1, 16383, 32, 8, 128);
    hae_cuda_timer_destroy(g_timer);
    hae_backend_destroy(g_be);
    return 0;
}

#endif

int main(void) {
#ifdef HAE_HAVE_CUDA
    return bench_main();
#else
    printf("bench_dense: this build has no CUDA: skipped\n");
    return 0;
#endif
}

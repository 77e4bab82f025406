/* CUDA microbenchmarks of the dense ops and attention: GEMM bf16 4096^3, rmsnorm and SwiGLU on
 * [8192, 4096], then dense causal attention (bf16, Hq 32, Hkv 8, D 128) at the shapes of its anchors:
 * prefill T 4096 and T 32768 (full and a 4096-token window) and decode B 16 at a 131072-token context.
 * Each op: fresh random inputs, warm-up, then >= 20 repetitions, each timed alone with CUDA events
 * on the backend's stream after an L2 flush; prints the median (and min..max) with TFLOP/s and GB/s
 * from the median. Attention is first checked against the CPU backend at a reduced size on the same
 * path (random inputs, outputs poisoned on both sides) and stops with an error if it is wrong; its
 * rows add the ratio to the H100 anchors (torch SDPA) and decode's share of the measured copy
 * ceiling. Without CUDA or a GPU it says so and exits 0. */
#include "internal.h"

#include "bench_util.h"

#include <math.h>
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

static hae_status run_gemm(void *a) { return hae_gemm(g_be, a); }
static hae_status run_rmsnorm(void *a) { return hae_rmsnorm(g_be, a); }
static hae_status run_swiglu(void *a) { return hae_swiglu(g_be, a); }
static hae_status run_attention(void *a) { return hae_attention(g_be, a); }

/* Times fn(args) and prints one row; flops and bytes are per call. */
static void bench(const char *name, const char *shape, hae_bench_fn fn, void *args, double flops, double bytes) {
    const hae_bench_times tm = hae_bench_time(g_timer, g_be, name, fn, args, WARMUP, REPS);
    const double med_s = tm.median_us * 1e-6;
    char tf[32] = "-", gb[32] = "-";
    if (flops > 0) snprintf(tf, sizeof tf, "%.1f", flops / med_s * 1e-12);
    if (bytes > 0) snprintf(gb, sizeof gb, "%.0f", bytes / med_s * 1e-9);
    printf("| %-22s | %-44s | %10.1f | %9.1f..%-9.1f | %8s | %7s |\n", name, shape, tm.median_us, tm.min_us, tm.max_us,
           tf, gb);
    fflush(stdout);
}

static void bench_gemm(hae_dtype cdt) {
    const int64_t M = 4096, N = 4096, K = 4096;
    void *a = dev_random(HAE_BF16, M * K, 1, -1, 1), *b = dev_random(HAE_BF16, N * K, 2, -1, 1);
    void *c = dev_random(cdt, M * N, 3, -1, 1);
    hae_gemm_args g = {.a = hae_tensor_2d(a, HAE_BF16, HAE_CUDA, M, K), .b = hae_tensor_2d(b, HAE_BF16, HAE_CUDA, N, K),
                       .c = hae_tensor_2d(c, cdt, HAE_CUDA, M, N)};
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

/* ---------------------------------------------------------------- attention */

#define COPY_CEILING_GBS 4250.0 /* device-to-device copy on the H200 (bench/RESULTS.md) */

/* Attention of T new tokens from position pos0 over a cache of pos0 + T tokens, bf16 throughout; mla:
 * one kv head whose values are the first Dv dims of its keys (the absorbed form, Dk 576 and Dv 512). */
typedef struct {
    const char *name;
    int64_t B, T, pos0, Hq, Hkv, Dk, Dv, window;
    bool mla;
    double anchor_ms; /* torch SDPA on an H100 (the anchor); 0: none */
    double target_ms; /* what this engine aims for */
} attn_shape;

static int64_t attn_keys(const attn_shape *a, int64_t t) {
    const int64_t p = a->pos0 + t;
    return a->window > 0 && a->window < p + 1 ? a->window : p + 1;
}

/* The attention's tensors over q [B, T, Hq, Dk], k [B, cap, Hkv, Dk], v (for mla a view of k) and out. */
static hae_attention_args attn_args(const attn_shape *a, hae_device dev, void *q, void *k, void *v, void *o) {
    const int64_t B = a->B, T = a->T, cap = a->pos0 + T;
    hae_attention_args r = {hae_tensor_4d(q, HAE_BF16, dev, B, T, a->Hq, a->Dk),
                            hae_tensor_4d(k, HAE_BF16, dev, B, cap, a->Hkv, a->Dk),
                            hae_tensor_4d(a->mla ? k : v, HAE_BF16, dev, B, cap, a->Hkv, a->Dv),
                            hae_tensor_4d(o, HAE_BF16, dev, B, T, a->Hq, a->Dv),
                            a->pos0,
                            a->window,
                            1.0f / sqrtf((float)a->Dk)};
    if (a->mla) r.v_cache.stride[0] = r.k_cache.stride[0], r.v_cache.stride[1] = r.k_cache.stride[1];
    return r;
}

/* Random bf16 inputs on the CPU and the GPU, the outputs poisoned on both sides (NaN), both backends
 * run, then NaN positions and ||gpu - cpu|| / ||cpu|| <= 1e-2 over the whole output: stops otherwise. */
static void check_attention(hae_backend *cpu, const attn_shape *a) {
    const int64_t B = a->B, T = a->T, cap = a->pos0 + T;
    const int64_t nq = B * T * a->Hq * a->Dk, nk = B * cap * a->Hkv * a->Dk, nv = a->mla ? 0 : B * cap * a->Hkv * a->Dv;
    const int64_t no = B * T * a->Hq * a->Dv;
    const size_t bq = 2 * (size_t)nq, bk = 2 * (size_t)nk, bv = 2 * (size_t)(nv > 0 ? nv : 1), bo = 2 * (size_t)no;
    uint16_t *q = malloc(bq), *k = malloc(bk), *v = malloc(bv), *oc = malloc(bo), *og = malloc(bo);
    if (!q || !k || !v || !oc || !og) {
        fprintf(stderr, "bench_dense: out of host memory\n");
        exit(1);
    }
    uint64_t s = 77;
    for (int64_t i = 0; i < nq; i++) q[i] = hae_f32_to_bf16(4.0f * (float)(hae_mix64(s++) >> 40) / 16777216.0f - 2.0f);
    for (int64_t i = 0; i < nk; i++) k[i] = hae_f32_to_bf16(2.0f * (float)(hae_mix64(s++) >> 40) / 16777216.0f - 1.0f);
    for (int64_t i = 0; i < nv; i++) v[i] = hae_f32_to_bf16(2.0f * (float)(hae_mix64(s++) >> 40) / 16777216.0f - 1.0f);
    memset(oc, 0xFF, bo);
    void *dq = NULL, *dk = NULL, *dv = NULL, *dout = NULL;
    CHECK("alloc", hae_backend_alloc(g_be, bq, &dq));
    CHECK("alloc", hae_backend_alloc(g_be, bk, &dk));
    CHECK("alloc", hae_backend_alloc(g_be, bv, &dv));
    CHECK("alloc", hae_backend_alloc(g_be, bo, &dout));
    CHECK("upload", hae_backend_upload(g_be, dq, q, bq));
    CHECK("upload", hae_backend_upload(g_be, dk, k, bk));
    CHECK("upload", hae_backend_upload(g_be, dv, v, bv));
    CHECK("upload", hae_backend_upload(g_be, dout, oc, bo));
    hae_attention_args ac = attn_args(a, HAE_CPU, q, k, v, oc), ag = attn_args(a, HAE_CUDA, dq, dk, dv, dout);
    CHECK("attention (cpu check)", hae_attention(cpu, &ac));
    CHECK("attention (gpu check)", hae_attention(g_be, &ag));
    CHECK("download", hae_backend_download(g_be, og, dout, bo));
    double num = 0, den = 0;
    int64_t nan_diff = 0, first = -1;
    for (int64_t i = 0; i < no; i++) {
        const double c = hae_bf16_to_f32(oc[i]), g = hae_bf16_to_f32(og[i]);
        if (isnan(c) != isnan(g) || isnan(c)) {
            if (first < 0) first = i;
            nan_diff++;
            continue;
        }
        num += (g - c) * (g - c);
        den += c * c;
    }
    const double rel = den > 0 ? sqrt(num / den) : INFINITY;
    if (nan_diff || !(rel <= 1e-2)) {
        fprintf(stderr, "bench_dense: %s is wrong at the check shape B %lld T %lld pos0 %lld window %lld: %lld NaN "
                        "elements (first %lld), relative error %.3g > 1e-2\n",
                a->name, (long long)B, (long long)T, (long long)a->pos0, (long long)a->window, (long long)nan_diff,
                (long long)first, rel);
        exit(1);
    }
    printf("# %s: checked against the CPU at B %lld T %lld context %lld window %lld, %lldq/%lldkv, d %lld/%lld: relative "
           "error %.2g\n",
           a->name, (long long)B, (long long)T, (long long)cap, (long long)a->window, (long long)a->Hq,
           (long long)a->Hkv, (long long)a->Dk, (long long)a->Dv, rel);
    hae_backend_free(g_be, dq), hae_backend_free(g_be, dk), hae_backend_free(g_be, dv), hae_backend_free(g_be, dout);
    free(q), free(k), free(v), free(oc), free(og);
}

/* Prints one attention row: median time, TFLOP/s (2 Hq (Dk + Dv) per query-key pair), GB/s of q, the K/V
 * rows read and out (and for decode the share of the copy ceiling), and the ratio to the anchor's time. */
static void bench_attention(const attn_shape *a) {
    const int64_t B = a->B, T = a->T, Hq = a->Hq, Hkv = a->Hkv, cap = a->pos0 + T;
    void *q = dev_random(HAE_BF16, B * T * Hq * a->Dk, 9, -2, 2), *o = dev_random(HAE_BF16, B * T * Hq * a->Dv, 10, -1, 1);
    void *k = dev_random(HAE_BF16, B * cap * Hkv * a->Dk, 11, -1, 1);
    void *v = a->mla ? NULL : dev_random(HAE_BF16, B * cap * Hkv * a->Dv, 12, -1, 1);
    hae_attention_args args = attn_args(a, HAE_CUDA, q, k, v, o);
    double pairs = 0; /* query-key pairs */
    for (int64_t t = 0; t < T; t++) pairs += (double)attn_keys(a, t);
    const double flops = 2.0 * (double)(Hq * (a->Dk + a->Dv)) * (double)B * pairs;
    const int64_t read = a->window > 0 && a->window < cap ? a->window + T - 1 : cap; /* positions read */
    const double row = (double)Hkv * (double)(a->mla ? a->Dk : a->Dk + a->Dv); /* K/V elements a position */
    const double bytes = 2.0 * (double)(B * T * Hq * (a->Dk + a->Dv)) + 2.0 * (double)(B * read) * row;
    const hae_bench_times tm = hae_bench_time(g_timer, g_be, a->name, run_attention, &args, WARMUP, REPS);
    const double med = tm.median_us * 1e-3, lo = tm.min_us * 1e-3, hi = tm.max_us * 1e-3; /* ms */
    char shape[96], gb[48], anchor[64] = "-";
    snprintf(shape, sizeof shape, "B %lld T %lld ctx %lld window %lld, %lldq/%lldkv%s", (long long)B, (long long)T,
             (long long)cap, (long long)a->window, (long long)Hq, (long long)Hkv, a->mla ? " mla 576/512" : "");
    if (T == 1)
        snprintf(gb, sizeof gb, "%.0f (%.0f%% of copy)", bytes / (med * 1e-3) * 1e-9,
                 100.0 * bytes / (med * 1e-3) * 1e-9 / COPY_CEILING_GBS);
    else
        snprintf(gb, sizeof gb, "%.0f", bytes / (med * 1e-3) * 1e-9);
    if (a->anchor_ms > 0)
        snprintf(anchor, sizeof anchor, "%.2fx of %.2f ms (target <= %.1f ms)", med / a->anchor_ms, a->anchor_ms,
                 a->target_ms);
    printf("| %-24s | %-48s | %10.1f | %9.1f..%-9.1f | %7.1f | %-22s | %-36s |\n", a->name, shape, med * 1e3,
           (double)lo * 1e3, (double)hi * 1e3, flops / (med * 1e-3) * 1e-12, gb, anchor);
    fflush(stdout);
    hae_backend_free(g_be, q), hae_backend_free(g_be, o), hae_backend_free(g_be, k);
    if (v) hae_backend_free(g_be, v);
}

static void bench_attentions(void) {
    /* Hq 32, Hkv 8, D 128; anchors: torch SDPA on an H100, prefill T 32768 14.0 ms, decode 2.77 ms */
    static const attn_shape shapes[] = {
        {"attention prefill", 1, 4096, 0, 32, 8, 128, 128, 0, false, 0, 0},
        {"attention prefill", 1, 32768, 0, 32, 8, 128, 128, 0, false, 14.0, 21.0},
        {"attention prefill swa", 1, 32768, 0, 32, 8, 128, 128, 4096, false, 0, 0},
        {"attention decode", 16, 1, 131071, 32, 8, 128, 128, 0, false, 2.77, 3.1},
        /* hybrid-1b-twin's layers at batch 1: 4 kv heads, so the keys split into many CTAs */
        {"attention decode", 1, 1, 32767, 16, 4, 128, 128, 0, false, 0, 0},
        {"attention decode", 1, 1, 131071, 16, 4, 128, 128, 0, false, 0, 0},
        /* the mla twin's layers (hybrid-1b's 16 heads; DeepSeek's 128), absorbed: one 576-wide latent a token */
        {"mla attention decode", 1, 1, 32767, 16, 1, 576, 512, 0, true, 0, 0},
        {"mla attention decode", 1, 1, 131071, 16, 1, 576, 512, 0, true, 0, 0},
        {"mla attention decode", 64, 1, 8191, 128, 1, 576, 512, 0, true, 0, 0},
        {"mla attention prefill", 1, 4096, 0, 16, 1, 576, 512, 0, true, 0, 0},
    };
    /* the same paths at sizes the CPU checks in seconds: prefill (T > 16) and split-KV decode */
    static const attn_shape checks[] = {
        {"attention prefill", 1, 600, 0, 32, 8, 128, 128, 0, false, 0, 0},
        {"attention prefill swa", 1, 700, 0, 32, 8, 128, 128, 256, false, 0, 0},
        {"attention decode", 2, 1, 6000, 32, 8, 128, 128, 0, false, 0, 0},
        {"attention decode", 1, 1, 40000, 16, 4, 128, 128, 0, false, 0, 0},
        {"mla attention decode", 2, 1, 3000, 16, 1, 576, 512, 0, true, 0, 0},
        {"mla attention decode", 1, 1, 2000, 128, 1, 576, 512, 0, true, 0, 0},
        {"mla attention prefill", 1, 200, 0, 16, 1, 576, 512, 0, true, 0, 0},
    };
    hae_backend *cpu = NULL;
    CHECK("cpu backend", hae_backend_create(HAE_CPU, 0, &cpu));
    for (size_t i = 0; i < sizeof checks / sizeof checks[0]; i++) check_attention(cpu, &checks[i]);
    hae_backend_destroy(cpu);
    printf("\n| %-24s | %-48s | %10s | %-20s | %7s | %-22s | %-36s |\n", "attention bf16", "shape",
           "median us", "min..max us", "TFLOP/s", "GB/s", "vs H100 anchor (SDPA)");
    printf("|--------------------------|--------------------------------------------------|------------|----------------------|"
           "---------|------------------------|--------------------------------------|\n");
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) bench_attention(&shapes[i]);
}

static int bench_main(void) {
    if (!hae_bench_start("bench_dense", &g_be, NULL, &g_timer)) return 0;
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
    bench_attentions();
    hae_cuda_timer_destroy(g_timer);
    hae_backend_destroy(g_be);
    return 0;
}

#endif

HAE_BENCH_MAIN("bench_dense")

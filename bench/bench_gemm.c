/* CUDA microbenchmark of hae_gemm at a decode step's shapes: M = 1 and 4 rows (sequences) of bf16
 * activations against hybrid-1b's bf16 weights (d_model 2048: a kda layer's fused projections, the
 * output projection, the MLP's gate/up and down, the LM head). These rows take gemv_kernel (one warp
 * per weight row, streamed once); beside each, cuBLAS's cublasGemmEx on the same operands (the path
 * every larger M takes), so the table is the side-by-side of the two.
 *
 * Each shape is first checked against a float64 product on the host, fresh random inputs, poisoned output.
 * Then warm-up and 21 repetitions each alone with CUDA events after an L2 flush; median and min..max. A
 * call's time includes its launch, so cuBLAS's host-side work per call counts; `ncu` gives the kernels alone.
 * GB/s: the weights, a's rows and c over the median time (the weights dominate: M <= 4). Without CUDA or
 * a GPU it says so and exits 0. */
#include "internal.h"

#include "bench_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef HAE_HAVE_CUDA
#include <cublas_v2.h>
#include <cuda_runtime.h>

#define WARMUP 5
#define REPS 21

static hae_backend *g_be;
static hae_cuda_timer *g_timer;

typedef struct {
    const char *name;
    int64_t N, K;
} shape;

typedef struct {
    hae_gemm_args a;
    void *da, *db, *dc;
} problem;

static void *upload_random(int64_t n, uint64_t seed, float *keep) {
    uint16_t *h = malloc(sizeof(uint16_t) * (size_t)n);
    if (!h) hae_bench_die("host buffer", hae_error(HAE_ERR_OOM, "%lld values", (long long)n));
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (int64_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        h[i] = hae_f32_to_bf16((float)((double)(x >> 11) / 9007199254740992.0 * 2.0 - 1.0));
        if (keep) keep[i] = hae_bf16_to_f32(h[i]);
    }
    void *d = NULL;
    CHECK("alloc", hae_backend_alloc(g_be, sizeof(uint16_t) * (size_t)n, &d));
    CHECK("upload", hae_backend_upload(g_be, d, h, sizeof(uint16_t) * (size_t)n));
    CHECK("sync", hae_backend_sync(g_be));
    free(h);
    return d;
}

static hae_status run_gemm(void *p) { return hae_gemm(g_be, &((problem *)p)->a); }

/* hae_gemm vs a double-precision reference on the same bf16 values: relative RMS of c (f32). */
static double verify(const shape *s, int64_t M) {
    const int64_t N = s->N, K = s->K;
    float *a = malloc(sizeof(float) * (size_t)(M * K)), *b = malloc(sizeof(float) * (size_t)(N * K));
    float *c = malloc(sizeof(float) * (size_t)(M * N));
    if (!a || !b || !c) hae_bench_die("verify", hae_error(HAE_ERR_OOM, "host buffers"));
    void *da = upload_random(M * K, 11 + (uint64_t)N, a), *db = upload_random(N * K, 12 + (uint64_t)K, b), *dc = NULL;
    CHECK("alloc", hae_backend_alloc(g_be, sizeof(float) * (size_t)(M * N), &dc));
    memset(c, 0xff, sizeof(float) * (size_t)(M * N)); /* NaN poison */
    CHECK("upload", hae_backend_upload(g_be, dc, c, sizeof(float) * (size_t)(M * N)));
    const hae_gemm_args g = {.a = hae_tensor_2d(da, HAE_BF16, HAE_CUDA, M, K), .b = hae_tensor_2d(db, HAE_BF16, HAE_CUDA, N, K),
                             .c = hae_tensor_2d(dc, HAE_F32, HAE_CUDA, M, N)};
    CHECK(s->name, hae_gemm(g_be, &g));
    CHECK("download", hae_backend_download(g_be, c, dc, sizeof(float) * (size_t)(M * N)));
    CHECK("sync", hae_backend_sync(g_be));
    double num = 0.0, den = 0.0;
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double ref = 0.0;
            for (int64_t k = 0; k < K; k++) ref += (double)a[m * K + k] * (double)b[n * K + k];
            const double d = (double)c[m * N + n] - ref;
            num += d * d, den += ref * ref;
        }
    hae_backend_free(g_be, da), hae_backend_free(g_be, db), hae_backend_free(g_be, dc);
    free(a), free(b), free(c);
    return den > 0.0 ? sqrt(num / den) : (num == 0.0 ? 0.0 : INFINITY);
}

static void bench(const shape *s, int64_t M, cublasHandle_t blas) {
    const int64_t N = s->N, K = s->K;
    const double rel = verify(s, M);
    if (!(rel <= 1e-5)) {
        fprintf(stderr, "bench_gemm: %s M %lld: rel rms %.3g vs the float64 reference; not timing it\n", s->name,
                (long long)M, rel);
        exit(1);
    }
    problem p = {.da = upload_random(M * K, 21, NULL), .db = upload_random(N * K, 22, NULL)};
    CHECK("alloc", hae_backend_alloc(g_be, sizeof(uint16_t) * (size_t)(M * N), &p.dc));
    p.a = (hae_gemm_args){.a = hae_tensor_2d(p.da, HAE_BF16, HAE_CUDA, M, K),
                          .b = hae_tensor_2d(p.db, HAE_BF16, HAE_CUDA, N, K),
                          .c = hae_tensor_2d(p.dc, HAE_BF16, HAE_CUDA, M, N)};
    const hae_bench_times t = hae_bench_time(g_timer, g_be, s->name, run_gemm, &p, WARMUP, REPS);

    /* cuBLAS on the legacy stream, the same operands, timed with its own events after the same flush */
    float ms[REPS];
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0), cudaEventCreate(&e1);
    const float alpha = 1.0f, beta = 0.0f;
    for (int i = -WARMUP; i < REPS; i++) {
        CHECK("flush", hae_cuda_timer_flush_l2(g_timer));
        CHECK("sync", hae_backend_sync(g_be));
        cudaEventRecord(e0, 0);
        const cublasStatus_t bs = cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)M, (int)K, &alpha, p.db,
                                               CUDA_R_16BF, (int)K, p.da, CUDA_R_16BF, (int)K, &beta, p.dc, CUDA_R_16BF,
                                               (int)N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        cudaEventRecord(e1, 0);
        if (bs != CUBLAS_STATUS_SUCCESS || cudaEventSynchronize(e1) != cudaSuccess) {
            fprintf(stderr, "bench_gemm: cublasGemmEx failed (%d)\n", (int)bs);
            exit(1);
        }
        if (i >= 0) cudaEventElapsedTime(&ms[i], e0, e1);
    }
    cudaEventDestroy(e0), cudaEventDestroy(e1);
    qsort(ms, REPS, sizeof ms[0], hae_bench_cmp_float);
    const double cub_us = (double)ms[REPS / 2] * 1e3;
    const double bytes = 2.0 * (double)(N * K + M * K + M * N);
    printf("| %-10s | %lld | %5lld x %5lld | %8.2f | %7.2f..%-7.2f | %6.0f | %8.2f | %6.0f | %5.2fx |\n", s->name,
           (long long)M, (long long)N, (long long)K, t.median_us, t.min_us, t.max_us, bytes / t.median_us * 1e-3,
           cub_us, bytes / cub_us * 1e-3, cub_us / t.median_us);
    fflush(stdout);
    hae_backend_free(g_be, p.da), hae_backend_free(g_be, p.db), hae_backend_free(g_be, p.dc);
}

static int bench_main(void) {
    if (!hae_bench_start("bench_gemm", &g_be, NULL, &g_timer)) return 0;
    cublasHandle_t blas;
    if (cublasCreate(&blas) != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "bench_gemm: cublasCreate failed\n");
        return 1;
    }
    printf("# bf16 a [M, K] and b [N, K], bf16 c [M, N] = a b^T (f32 sums); each shape checked against float64 first\n");
    printf("# %d warm-up calls, then %d calls each timed alone after an L2 flush; rates from the median\n\n", WARMUP, REPS);
    printf("| %-10s | M | %-13s | %8s | %-15s | %6s | %8s | %6s | %6s |\n", "weights", "N x K", "hae us", "min..max us",
           "GB/s", "cuBLAS us", "GB/s", "ratio");
    printf("|------------|---|---------------|----------|-----------------|--------|----------|--------|--------|\n");
    static const shape shapes[] = {
        {"kda in", 6416, 2048}, {"o_proj", 2048, 2048}, {"gate_up", 11264, 2048}, {"down", 2048, 5632},
        {"lm head", 32000, 2048},
    };
    for (int m = 1; m <= 4; m += 3)
        for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) bench(&shapes[i], m, blas);
    cublasDestroy(blas);
    hae_cuda_timer_destroy(g_timer);
    hae_backend_destroy(g_be);
    return 0;
}

#endif

HAE_BENCH_MAIN("bench_gemm")

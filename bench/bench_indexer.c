/* CUDA microbenchmarks of the FP8 lightning indexer at DeepSeek-V3.2's shapes (H_I 64, D 128, pages of
 * 64 tokens) against DeepGEMM's anchors on an H100:
 *   decode logits   B 64 sequences of 128K keys, one query each; GB/s counts 132 bytes a key read and
 *                   4 bytes a logit written; anchor fp8_paged_mqa_logits 404 us (2.83 TB/s), target <= 450 us;
 *   prefill logits  the last 4096 positions of a 128K context (causal); TFLOP/s counts 2 H D flops a
 *                   (query, key <= position) pair; anchor fp8_mqa_logits 1.0-1.13 PFLOP/s, target >= 0.7;
 *   fp8_quant and hadamard on [64K x 128 heads, 128] bf16 (GB/s, for information).
 * Each kernel is first checked against the CPU on fresh random inputs with poisoned outputs at a
 * smaller shape (bit-exact for fp8_quant and hadamard; the logits on integer codes, which the FP8
 * tensor cores sum exactly, to 1e-5); a failure stops the benchmark. Then: warm-up, REPS calls each
 * timed alone with CUDA events after an L2 flush, median and min..max. Without CUDA or a GPU it says
 * so and exits 0. */
#include "internal.h"

#include "bench_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef HAE_HAVE_CUDA

#define WARMUP 3
#define REPS 20

#define ANCHOR_DECODE_US 404.0       /* DeepGEMM fp8_paged_mqa_logits, H100 */
#define TARGET_DECODE_US 450.0
#define ANCHOR_PREFILL_TFLOPS 1000.0 /* DeepGEMM fp8_mqa_logits, H100: 1.0-1.13 PFLOP/s */
#define TARGET_PREFILL_TFLOPS 700.0

static hae_backend *g_be, *g_cpu;
static hae_cuda_timer *g_timer;

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "bench_indexer: out of host memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

static uint64_t g_rng = 0x5eed;
static double uniform(void) { return (double)(hae_mix64(g_rng++) >> 11) * (1.0 / 9007199254740992.0); }

/* e4m3 code of a random value: an integer in [-4, 4] (exact regime) or N(0, 8^2)-like otherwise. */
static uint8_t rand_code(bool exact) {
    if (exact) return hae_f32_to_fp8e4m3((float)floor(uniform() * 9.0 - 4.0));
    const double g = sqrt(-2.0 * log(uniform() + 1e-300)) * cos(6.283185307179586 * uniform());
    return hae_f32_to_fp8e4m3((float)(8.0 * g));
}

static void *dev_alloc(hae_backend *be, size_t bytes) {
    void *d = NULL;
    CHECK("alloc", hae_backend_alloc(be, bytes ? bytes : 1, &d));
    return d;
}

/* Device (or CPU-backend) copy of host bytes. */
static void *dev_copy(hae_backend *be, const void *h, size_t bytes) {
    void *d = dev_alloc(be, bytes);
    CHECK("upload", hae_backend_upload(be, d, h, bytes));
    return d;
}

/* ---------------------------------------------------------------- one logits problem */

typedef struct {
    hae_backend *be;
    int64_t B, T, H, D, P, L, n_pages, max_pages, row_bytes;
    void *pages, *bt, *lens, *q, *w, *qs, *logits;
    hae_index_logits_args a;
} logits_problem;

/* B sequences of `len` tokens each, the last T of them the queries; pages in a shuffled order, filled
 * with random codes and power-of-two scales (a block of 64 random pages repeated over the pool). The
 * logits are poisoned. The same seed gives the same bytes on every backend. */
static void problem_make(logits_problem *p, hae_backend *be, int64_t B, int64_t T, int64_t len, int64_t L, bool exact,
                         uint64_t seed) {
    memset(p, 0, sizeof *p);
    g_rng = seed;
    const int64_t H = 64, D = 128, P = 64;
    p->be = be, p->B = B, p->T = T, p->H = H, p->D = D, p->P = P, p->L = L;
    p->max_pages = (len + P - 1) / P;
    p->n_pages = B * p->max_pages;
    p->row_bytes = P * (D + 4);
    const int64_t blk_pages = p->n_pages < 64 ? p->n_pages : 64;
    uint8_t *blk = xmalloc((size_t)(blk_pages * p->row_bytes));
    for (int64_t pg = 0; pg < blk_pages; pg++) {
        uint8_t *base = blk + pg * p->row_bytes;
        for (int64_t i = 0; i < P * D; i++) base[i] = rand_code(exact);
        for (int64_t i = 0; i < P; i++) ((float *)(base + P * D))[i] = ldexpf(1.0f, -(int)(uniform() * 8));
    }
    p->pages = dev_alloc(be, (size_t)(p->n_pages * p->row_bytes));
    for (int64_t pg = 0; pg < p->n_pages; pg += blk_pages) {
        const int64_t n = p->n_pages - pg < blk_pages ? p->n_pages - pg : blk_pages;
        CHECK("upload pages", hae_backend_upload(be, (char *)p->pages + pg * p->row_bytes, blk, (size_t)(n * p->row_bytes)));
    }
    free(blk);
    int32_t *bt = xmalloc(sizeof(int32_t) * (size_t)p->n_pages), *lens = xmalloc(sizeof(int32_t) * (size_t)B);
    for (int64_t i = 0; i < p->n_pages; i++) bt[i] = (int32_t)i;
    for (int64_t i = p->n_pages - 1; i > 0; i--) {
        const int64_t j = (int64_t)(uniform() * (double)(i + 1));
        const int32_t t = bt[i];
        bt[i] = bt[j], bt[j] = t;
    }
    for (int64_t b = 0; b < B; b++) lens[b] = (int32_t)len;
    p->bt = dev_copy(be, bt, sizeof(int32_t) * (size_t)p->n_pages);
    p->lens = dev_copy(be, lens, sizeof(int32_t) * (size_t)B);
    free(bt), free(lens);
    const int64_t nq = B * T;
    uint8_t *q = xmalloc((size_t)(nq * H * D));
    float *w = xmalloc(sizeof(float) * (size_t)(nq * H)), *qs = xmalloc(sizeof(float) * (size_t)(nq * H));
    for (int64_t i = 0; i < nq * H * D; i++) q[i] = rand_code(exact);
    for (int64_t i = 0; i < nq * H; i++) w[i] = (float)(uniform() * 1.5 - 0.5), qs[i] = ldexpf(1.0f, -(int)(uniform() * 8));
    p->q = dev_copy(be, q, (size_t)(nq * H * D));
    p->w = dev_copy(be, w, sizeof(float) * (size_t)(nq * H));
    p->qs = dev_copy(be, qs, sizeof(float) * (size_t)(nq * H));
    free(q), free(w), free(qs);
    const size_t lbytes = sizeof(float) * (size_t)(nq * L);
    p->logits = dev_alloc(be, lbytes);
    void *poison = xmalloc(lbytes < ((size_t)64 << 20) ? lbytes : ((size_t)64 << 20));
    memset(poison, 0xff, lbytes < ((size_t)64 << 20) ? lbytes : ((size_t)64 << 20));
    for (size_t off = 0; off < lbytes; off += (size_t)64 << 20) {
        const size_t n = lbytes - off < ((size_t)64 << 20) ? lbytes - off : ((size_t)64 << 20);
        CHECK("poison logits", hae_backend_upload(be, (char *)p->logits + off, poison, n));
    }
    free(poison);
    const hae_device dev = hae_backend_device(be);
    p->a = (hae_index_logits_args){
        .q = hae_tensor_4d(p->q, HAE_FP8_E4M3, dev, B, T, H, D),
        .w = hae_tensor_3d(p->w, HAE_F32, dev, B, T, H),
        .cache = {.pages = hae_tensor_2d(p->pages, HAE_FP8_E4M3, dev, p->n_pages, p->row_bytes),
                  .block_table = hae_tensor_2d(p->bt, HAE_I32, dev, B, p->max_pages),
                  .page_size = (int)P,
                  .head_dim = (int)D},
        .seq_lens = hae_tensor_1d(p->lens, HAE_I32, dev, B),
        .logits = hae_tensor_3d(p->logits, HAE_F32, dev, B, T, L),
        .q_scale = hae_tensor_3d(p->qs, HAE_F32, dev, B, T, H),
        .w_scale = (float)(1.0 / sqrt((double)(H * D)))};
    CHECK("sync", hae_backend_sync(be));
}

static void problem_free(logits_problem *p) {
    void *ptrs[] = {p->pages, p->bt, p->lens, p->q, p->w, p->qs, p->logits};
    for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++) hae_backend_free(p->be, ptrs[i]);
}

/* The GPU logits against the CPU's on integer codes (exact in the tensor cores): the NaN/inf pattern
 * identical and ||gpu - cpu|| / ||cpu|| <= 1e-5 over the finite logits. */
static void verify_logits(const char *name, int64_t B, int64_t T, int64_t len, int64_t L) {
    logits_problem gp, cp;
    problem_make(&gp, g_be, B, T, len, L, true, 77);
    problem_make(&cp, g_cpu, B, T, len, L, true, 77);
    CHECK(name, hae_index_logits(g_be, &gp.a));
    CHECK(name, hae_index_logits(g_cpu, &cp.a));
    const int64_t n = B * T * L;
    float *g = xmalloc(sizeof(float) * (size_t)n);
    CHECK("download", hae_backend_download(g_be, g, gp.logits, sizeof(float) * (size_t)n));
    CHECK("sync", hae_backend_sync(g_be));
    const float *c = cp.logits;
    double num = 0, den = 0;
    int64_t pattern = 0;
    for (int64_t i = 0; i < n; i++) {
        if (isnan(g[i]) != isnan(c[i]) || isinf(g[i]) != isinf(c[i]) || (isinf(c[i]) && g[i] != c[i])) {
            pattern++;
            continue;
        }
        if (!isfinite(c[i])) continue;
        num += ((double)g[i] - c[i]) * ((double)g[i] - c[i]);
        den += (double)c[i] * c[i];
    }
    const double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    const bool ok = pattern == 0 && rel <= 1e-5;
    printf("# check %-15s B %lld T %lld len %lld L %lld H 64 D 128 P 64: rel %.2e, NaN/inf mismatches %lld: %s\n", name,
           (long long)B, (long long)T, (long long)len, (long long)L, rel, (long long)pattern, ok ? "ok" : "FAIL");
    free(g);
    problem_free(&gp), problem_free(&cp);
    if (!ok) {
        fprintf(stderr, "bench_indexer: %s does not match the CPU reference; not timing it\n", name);
        exit(1);
    }
}

/* ---------------------------------------------------------------- fp8_quant, hadamard */

/* x [N, D] bf16 with random values on both backends; both ops bit-exact against the CPU. */
static void verify_elementwise(int64_t N, int64_t D) {
    g_rng = 91;
    const size_t xb = (size_t)(N * D) * 2;
    uint16_t *x = xmalloc(xb);
    for (int64_t i = 0; i < N * D; i++) x[i] = hae_f32_to_bf16((float)((uniform() * 2 - 1) * ldexp(1.0, (int)(i / D % 40) - 20)));
    hae_backend *bes[2] = {g_cpu, g_be};
    void *xs[2], *qs[2], *ss[2];
    for (int k = 0; k < 2; k++) {
        xs[k] = dev_copy(bes[k], x, xb);
        qs[k] = dev_alloc(bes[k], (size_t)(N * D));
        ss[k] = dev_alloc(bes[k], sizeof(float) * (size_t)(N * D / 128));
        CHECK("zero", hae_backend_zero(bes[k], qs[k], (size_t)(N * D)));
        const hae_device dev = hae_backend_device(bes[k]);
        hae_hadamard_args h = {hae_tensor_2d(xs[k], HAE_BF16, dev, N, D)};
        CHECK("hadamard", hae_hadamard(bes[k], &h));
        hae_fp8_quant_args f = {hae_tensor_2d(xs[k], HAE_BF16, dev, N, D), hae_tensor_2d(qs[k], HAE_FP8_E4M3, dev, N, D),
                                hae_tensor_2d(ss[k], HAE_F32, dev, N, D / 128)};
        CHECK("fp8_quant", hae_fp8_quant(bes[k], &f));
    }
    uint8_t *gx = xmalloc(xb), *gq = xmalloc((size_t)(N * D)), *gs = xmalloc(sizeof(float) * (size_t)(N * D / 128));
    CHECK("download", hae_backend_download(g_be, gx, xs[1], xb));
    CHECK("download", hae_backend_download(g_be, gq, qs[1], (size_t)(N * D)));
    CHECK("download", hae_backend_download(g_be, gs, ss[1], sizeof(float) * (size_t)(N * D / 128)));
    CHECK("sync", hae_backend_sync(g_be));
    const bool hx = memcmp(gx, xs[0], xb) == 0, fq = memcmp(gq, qs[0], (size_t)(N * D)) == 0,
               fs = memcmp(gs, ss[0], sizeof(float) * (size_t)(N * D / 128)) == 0;
    printf("# check hadamard, then fp8_quant, x [%lld, %lld] bf16: rotated rows %s, codes %s, scales %s\n", (long long)N,
           (long long)D, hx ? "bit-exact" : "DIFFER", fq ? "bit-exact" : "DIFFER", fs ? "bit-exact" : "DIFFER");
    for (int k = 0; k < 2; k++) hae_backend_free(bes[k], xs[k]), hae_backend_free(bes[k], qs[k]), hae_backend_free(bes[k], ss[k]);
    free(x), free(gx), free(gq), free(gs);
    if (!(hx && fq && fs)) {
        fprintf(stderr, "bench_indexer: hadamard / fp8_quant do not match the CPU bit for bit; not timing them\n");
        exit(1);
    }
}

/* ---------------------------------------------------------------- timing */

static hae_status run_logits(void *a) { return hae_index_logits(g_be, a); }
static hae_status run_quant(void *a) { return hae_fp8_quant(g_be, a); }
static hae_status run_hadamard(void *a) { return hae_hadamard(g_be, a); }

/* Median seconds of REPS calls; min and max (us) to lo and hi. */
static double time_op(const char *name, hae_bench_fn fn, void *args, double *lo_us, double *hi_us) {
    const hae_bench_times tm = hae_bench_time(g_timer, g_be, name, fn, args, WARMUP, REPS);
    *lo_us = tm.min_us, *hi_us = tm.max_us;
    return tm.median_us * 1e-6;
}

static void row(const char *name, const char *shape, double sec, double lo, double hi, const char *tf, const char *gb,
                const char *anchor, const char *target) {
    printf("| %-16s | %-40s | %10.1f | %9.1f..%-9.1f | %8s | %7s | %-22s | %-14s |\n", name, shape, sec * 1e6, lo, hi, tf,
           gb, anchor, target);
    fflush(stdout);
}

static void bench_decode(void) {
    const int64_t B = 64, len = 131072;
    logits_problem p;
    problem_make(&p, g_be, B, 1, len, len, false, 5);
    double lo, hi;
    const double sec = time_op("decode logits", run_logits, &p.a, &lo, &hi);
    const double bytes = (double)B * (double)len * (132.0 + 4.0);
    char gb[32], an[64], tg[32];
    snprintf(gb, sizeof gb, "%.0f", bytes / sec * 1e-9);
    snprintf(an, sizeof an, "%.2fx of 404 us", ANCHOR_DECODE_US / (sec * 1e6));
    snprintf(tg, sizeof tg, "<= 450 us: %s", sec * 1e6 <= TARGET_DECODE_US ? "yes" : "no");
    row("decode logits", "B 64, 128K keys, H 64, D 128, P 64", sec, lo, hi, "-", gb, an, tg);
    problem_free(&p);
}

static void bench_prefill(void) {
    const int64_t T = 4096, len = 131072;
    logits_problem p;
    problem_make(&p, g_be, 1, T, len, len, false, 6);
    double lo, hi;
    const double sec = time_op("prefill logits", run_logits, &p.a, &lo, &hi);
    double pairs = 0; /* query t at position len - T + t scores keys 0..position */
    for (int64_t t = 0; t < T; t++) pairs += (double)(len - T + t + 1);
    const double tflops = 2.0 * 64 * 128 * pairs / sec * 1e-12;
    char tf[32], an[64], tg[32];
    snprintf(tf, sizeof tf, "%.1f", tflops);
    snprintf(an, sizeof an, "%.2fx of 1.0-1.13 PF", tflops / ANCHOR_PREFILL_TFLOPS);
    snprintf(tg, sizeof tg, ">= 0.7 PF: %s", tflops >= TARGET_PREFILL_TFLOPS ? "yes" : "no");
    row("prefill logits", "last 4096 of 128K causal, H 64, D 128", sec, lo, hi, tf, "-", an, tg);
    problem_free(&p);
}

/* fp8_quant and hadamard on N = 64K x 128 rows of 128 bf16 values (random bytes of bf16 in [-1, 1)). */
static void bench_elementwise(void) {
    const int64_t N = (int64_t)65536 * 128, D = 128;
    const size_t xb = (size_t)(N * D) * 2, chunk = (size_t)64 << 20;
    void *x = dev_alloc(g_be, xb), *q = dev_alloc(g_be, (size_t)(N * D)), *s = dev_alloc(g_be, sizeof(float) * (size_t)(N));
    uint16_t *h = xmalloc(chunk);
    g_rng = 7;
    for (size_t i = 0; i < chunk / 2; i++) h[i] = hae_f32_to_bf16((float)(uniform() * 2 - 1));
    for (size_t off = 0; off < xb; off += chunk) CHECK("upload", hae_backend_upload(g_be, (char *)x + off, h, xb - off < chunk ? xb - off : chunk));
    free(h);
    hae_fp8_quant_args f = {hae_tensor_2d(x, HAE_BF16, HAE_CUDA, N, D), hae_tensor_2d(q, HAE_FP8_E4M3, HAE_CUDA, N, D),
                            hae_tensor_2d(s, HAE_F32, HAE_CUDA, N, 1)};
    hae_hadamard_args hd = {hae_tensor_2d(x, HAE_BF16, HAE_CUDA, N, D)};
    double lo, hi;
    char gb[32];
    double sec = time_op("fp8_quant", run_quant, &f, &lo, &hi);
    snprintf(gb, sizeof gb, "%.0f", (double)(N * D) * (2.0 + 1.0 + 4.0 / 128.0) / sec * 1e-9);
    row("fp8_quant bf16", "[64K x 128, 128]", sec, lo, hi, "-", gb, "-", "-");
    sec = time_op("hadamard", run_hadamard, &hd, &lo, &hi);
    snprintf(gb, sizeof gb, "%.0f", (double)(N * D) * 4.0 / sec * 1e-9);
    row("hadamard bf16", "[64K x 128, 128] in place", sec, lo, hi, "-", gb, "-", "-");
    hae_backend_free(g_be, x), hae_backend_free(g_be, q), hae_backend_free(g_be, s);
}

static int bench_main(void) {
    if (!hae_bench_start("bench_indexer", &g_be, &g_cpu, &g_timer)) return 0;
    printf("# H_I 64, D 128, pages of 64 tokens, q_scale passed apart; anchors: DeepGEMM on an H100\n");
    verify_logits("decode logits", 4, 1, 8192, 8200);
    verify_logits("decode logits", 3, 2, 5000, 5000);
    verify_logits("prefill logits", 1, 64, 2048, 2048);
    verify_logits("prefill logits", 2, 37, 700, 777);
    verify_elementwise(4096, 128);
    printf("# %d warm-up calls, then %d calls each timed alone after an L2 flush; rates from the median\n\n", WARMUP,
           REPS);
    printf("| %-16s | %-40s | %10s | %-20s | %8s | %7s | %-22s | %-14s |\n", "op", "shape", "median us", "min..max us",
           "TFLOP/s", "GB/s", "vs anchor", "target");
    printf("|------------------|------------------------------------------|------------|----------------------|----------|"
           "---------|------------------------|----------------|\n");
    bench_decode();
    bench_prefill();
    bench_elementwise();
    hae_cuda_timer_destroy(g_timer);
    hae_backend_destroy(g_cpu);
    hae_backend_destroy(g_be);
    return 0;
}

#endif

HAE_BENCH_MAIN("bench_indexer")

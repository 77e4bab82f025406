/* CUDA microbenchmark of hae_topk at DeepSeek-V3.2's shapes, k = 2048 of 128K-logit rows: decode with
 * 1 to 256 rows (and shorter contexts), and a 4096-token prefill whose rows' lengths rise causally to 128K (row r holds
 * 128K - 4096 + r + 1 logits). Every launch variant (block size x CTAs a row, and the default that
 * hae_topk picks) is first checked against the CPU reference on the same random logits (every row,
 * index for index, out poisoned with 0x5A bytes) and not timed if it differs; then: warm-up, >= 20
 * calls each timed alone with CUDA events after an L2 flush, median and min..max, and where the time
 * of one call goes (clock readings of the first CTA, medians of a few calls). GB/s counts the logits
 * read (each row's lens[r] floats once). Anchors: torch.topk on an H100 takes 112 us for one row; the
 * targets are <= 20 us for one row and <= 60 us for 64 rows. Without CUDA or a GPU it says so and
 * exits 0; it exits 1 when a variant differs from the CPU. */
#include "internal.h"

#include "bench_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef HAE_HAVE_CUDA

#define WARMUP 3
#define REPS 25
#define STAMP_REPS 5
#define N_STAMPS 9
#define CLOCK_GHZ 1.98 /* H200 SM boost clock: converts the clock readings to us */

#define TORCH_TOPK_H100_1ROW_US 112.0
#define TARGET_1ROW_US 20.0
#define TARGET_64ROWS_US 60.0
/* Device-to-device copy on the same H200 (bench/RESULTS.md), bytes read + written. */
#define COPY_CEILING_GBS 4250.0

static hae_backend *g_be, *g_cpu;
static hae_cuda_timer *g_timer;

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "bench_topk: out of host memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

static int cmp_u64(const void *x, const void *y) {
    unsigned long long a = *(const unsigned long long *)x, b = *(const unsigned long long *)y;
    return (a > b) - (a < b);
}

/* One shape: R rows of L logits (uniform in [-1, 1), distinct per row and seed), lens, out [R, k]. */
typedef struct {
    const char *name;
    int64_t R, L, k;
    bool causal;               /* lens[r] = L - R + r + 1, else L */
    double peer_us, target_us; /* 0: none */
} shape;

/* A launch of hae_topk_cuda_with; threads 0 is the default hae_topk takes. */
typedef struct {
    const char *name;
    int threads, clusters;
} variant;

static const variant variants[] = {
    {"default", 0, 0},    {"512 x 1", 512, 1},   {"512 x 2", 512, 2},   {"512 x 4", 512, 4},
    {"512 x 8", 512, 8},  {"512 x 16", 512, 16}, {"1024 x 1", 1024, 1}, {"1024 x 2", 1024, 2},
    {"1024 x 4", 1024, 4}, {"1024 x 8", 1024, 8}, {"1024 x 16", 1024, 16},
};
enum { N_VARIANTS = sizeof variants / sizeof variants[0] };

/* A shape's buffers on the GPU and the CPU's answer. */
typedef struct {
    const shape *sh;
    void *dx, *dl, *dout, *dstamps;
    hae_topk_args a;
    double logits_read;
    int32_t *cpu, *gpu, *lens;
    double med_us[N_VARIANTS]; /* 0: not timed */
} problem;

static hae_status run_variant(problem *p, const variant *v, unsigned long long *stamps) {
    if (!v->threads) return hae_topk(g_be, &p->a);
    return hae_topk_cuda_with(g_be, &p->a, v->threads, v->clusters, stamps);
}

static void prepare(problem *p, const shape *sh, uint64_t seed) {
    const int64_t R = sh->R, L = sh->L, k = sh->k;
    float *x = xmalloc(sizeof(float) * (size_t)(R * L));
    int32_t *lens = xmalloc(sizeof(int32_t) * (size_t)R);
    memset(p, 0, sizeof *p);
    p->sh = sh;
    for (int64_t r = 0; r < R; r++) {
        lens[r] = (int32_t)(sh->causal ? L - R + r + 1 : L);
        p->logits_read += (double)lens[r];
        uint64_t st = hae_mix64(seed ^ hae_mix64((uint64_t)r));
        for (int64_t i = 0; i < L; i++) {
            st = hae_mix64(st);
            x[r * L + i] = (float)(st >> 40) * (2.0f / 16777216.0f) - 1.0f;
        }
    }
    const size_t xb = sizeof(float) * (size_t)(R * L), lb = sizeof(int32_t) * (size_t)R;
    const size_t ob = sizeof(int32_t) * (size_t)(R * k);
    CHECK("alloc", hae_backend_alloc(g_be, xb, &p->dx));
    CHECK("alloc", hae_backend_alloc(g_be, lb, &p->dl));
    CHECK("alloc", hae_backend_alloc(g_be, ob, &p->dout));
    CHECK("alloc", hae_backend_alloc(g_be, sizeof(unsigned long long) * N_STAMPS, &p->dstamps));
    CHECK("upload", hae_backend_upload(g_be, p->dx, x, xb));
    CHECK("upload", hae_backend_upload(g_be, p->dl, lens, lb));
    p->a = (hae_topk_args){hae_tensor_2d(p->dx, HAE_F32, HAE_CUDA, R, L), hae_tensor_1d(p->dl, HAE_I32, HAE_CUDA, R),
                           hae_tensor_2d(p->dout, HAE_I32, HAE_CUDA, R, k)};
    p->cpu = xmalloc(ob);
    p->gpu = xmalloc(ob);
    memset(p->cpu, 0x5a, ob);
    hae_topk_args ac = {hae_tensor_2d(x, HAE_F32, HAE_CPU, R, L), hae_tensor_1d(lens, HAE_I32, HAE_CPU, R),
                        hae_tensor_2d(p->cpu, HAE_I32, HAE_CPU, R, k)};
    CHECK("cpu reference", hae_topk(g_cpu, &ac));
    p->lens = lens;
    free(x);
}

/* 1: every row matches the CPU over 0x5A poison; 0: it differs (said on stdout); -1: not supported. */
static int check(problem *p, const variant *v) {
    const shape *sh = p->sh;
    const int64_t R = sh->R, k = sh->k;
    const size_t ob = sizeof(int32_t) * (size_t)(R * k);
    memset(p->gpu, 0x5a, ob);
    CHECK("upload", hae_backend_upload(g_be, p->dout, p->gpu, ob));
    hae_status st = run_variant(p, v, NULL);
    if (st == HAE_ERR_UNSUPPORTED) {
        printf("# check %-13s %-9s: not supported here: %s\n", sh->name, v->name, hae_last_error());
        return -1;
    }
    CHECK(sh->name, st);
    CHECK("download", hae_backend_download(g_be, p->gpu, p->dout, ob));
    CHECK("sync", hae_backend_sync(g_be));
    int64_t bad_rows = 0, first = -1;
    for (int64_t r = 0; r < R; r++)
        if (memcmp(p->cpu + r * k, p->gpu + r * k, sizeof(int32_t) * (size_t)k) != 0) {
            if (first < 0)
                for (first = r * k; p->cpu[first] == p->gpu[first];) first++;
            bad_rows++;
        }
    if (first >= 0) {
        printf("# check %-13s %-9s R %lld k %lld: FAIL: %lld rows differ; first: row %lld (lens %d) out[%lld] cpu %d "
               "gpu %d\n",
               sh->name, v->name, (long long)R, (long long)k, (long long)bad_rows, (long long)(first / k),
               p->lens[first / k], (long long)(first % k), p->cpu[first], p->gpu[first]);
        fflush(stdout);
        return 0;
    }
    return 1;
}

/* One timed call of a problem's variant. */
typedef struct {
    problem *p;
    const variant *v;
} timed_call;
static hae_status run_timed(void *ctx) {
    const timed_call *c = ctx;
    return run_variant(c->p, c->v, NULL);
}

static void bench(problem *p, int vi) {
    const shape *sh = p->sh;
    const variant *v = &variants[vi];
    timed_call call = {p, v};
    const hae_bench_times tm = hae_bench_time(g_timer, g_be, sh->name, run_timed, &call, WARMUP, REPS);
    const double med_us = tm.median_us;
    p->med_us[vi] = med_us;
    const double gbs = p->logits_read * 4.0 / (med_us * 1e-6) * 1e-9;
    char peer[32] = "-", target[48] = "-", lens_s[48];
    if (sh->peer_us > 0) snprintf(peer, sizeof peer, "%.2fx", sh->peer_us / med_us);
    if (sh->target_us > 0)
        snprintf(target, sizeof target, "%.0f us: %.2fx, %s", sh->target_us, sh->target_us / med_us,
                 med_us <= sh->target_us ? "met" : "MISSED");
    if (sh->causal) snprintf(lens_s, sizeof lens_s, "%lld..%lld", (long long)(sh->L - sh->R + 1), (long long)sh->L);
    else snprintf(lens_s, sizeof lens_s, "%lld", (long long)sh->L);
    printf("| %-13s | %-9s | %5lld | %-14s | %5lld | %10.1f | %9.1f..%-9.1f | %7.0f | %7.0f%% | %14s | %-22s |\n",
           sh->name, v->name, (long long)sh->R, lens_s, (long long)sh->k, med_us, tm.min_us,
           tm.max_us, gbs, 100.0 * gbs / COPY_CEILING_GBS, peer, target);
    fflush(stdout);
}

/* Where one call's time goes in the first CTA: clock readings at the phase ends, medians of a few
 * calls, each after an L2 flush. */
static void phases(problem *p, int vi) {
    const variant *v = &variants[vi];
    if (!v->threads) return;
    unsigned long long s[STAMP_REPS][N_STAMPS], d[N_STAMPS - 1][STAMP_REPS];
    for (int i = 0; i < STAMP_REPS; i++) {
        CHECK("zero", hae_backend_zero(g_be, p->dstamps, sizeof s[i]));
        CHECK("flush", hae_cuda_timer_flush_l2(g_timer));
        CHECK(p->sh->name, hae_topk_cuda_with(g_be, &p->a, v->threads, v->clusters, p->dstamps));
        CHECK("download", hae_backend_download(g_be, s[i], p->dstamps, sizeof s[i]));
        CHECK("sync", hae_backend_sync(g_be));
    }
    printf("| %-13s | %-9s |", p->sh->name, v->name);
    for (int j = 1; j < N_STAMPS; j++) {
        int have = 0;
        for (int i = 0; i < STAMP_REPS; i++) {
            int prev = j - 1;
            while (prev > 0 && !s[i][prev]) prev--; /* a skipped pass left its reading 0 */
            if (s[i][j] && s[i][prev]) d[j - 1][have++] = s[i][j] - s[i][prev];
        }
        if (!have) {
            printf(" %6s |", "-");
            continue;
        }
        qsort(d[j - 1], (size_t)have, sizeof d[j - 1][0], cmp_u64);
        printf(" %6.2f |", (double)d[j - 1][have / 2] / (CLOCK_GHZ * 1e3));
    }
    unsigned long long tot[STAMP_REPS];
    for (int i = 0; i < STAMP_REPS; i++) tot[i] = s[i][N_STAMPS - 1] - s[i][0];
    qsort(tot, STAMP_REPS, sizeof tot[0], cmp_u64);
    printf(" %6.2f |\n", (double)tot[STAMP_REPS / 2] / (CLOCK_GHZ * 1e3));
    fflush(stdout);
}

static int bench_main(void) {
    if (!hae_bench_start("bench_topk", &g_be, &g_cpu, &g_timer)) return 0;
    printf("# f32 logits uniform in [-1, 1); %d warm-up calls, then %d calls each timed alone after an L2 flush; "
           "rates from the median; GB/s counts the logits read once; variant: threads x CTAs a row\n",
           WARMUP, REPS);
    static const shape shapes[] = {
        {"decode B 1", 1, 131072, 2048, false, TORCH_TOPK_H100_1ROW_US, TARGET_1ROW_US},
        {"decode B 4", 4, 131072, 2048, false, 0, 0},
        {"decode B 16", 16, 131072, 2048, false, 0, 0},
        {"decode B 64", 64, 131072, 2048, false, 0, TARGET_64ROWS_US},
        {"decode B 256", 256, 131072, 2048, false, 0, 0},
        {"32K B 1", 1, 32768, 2048, false, 0, 0},
        {"16K B 64", 64, 16384, 2048, false, 0, 0},
        {"prefill 4096", 4096, 131072, 2048, true, 0, 0},
    };
    enum { N = sizeof shapes / sizeof shapes[0] };
    static problem probs[N];
    int ok[N][N_VARIANTS], failed = 0;
    for (int i = 0; i < N; i++) { /* every check before any timing */
        prepare(&probs[i], &shapes[i], 1000 + (uint64_t)i);
        int good = 0;
        for (int v = 0; v < N_VARIANTS; v++) {
            ok[i][v] = check(&probs[i], &variants[v]);
            failed += ok[i][v] == 0;
            good += ok[i][v] == 1;
        }
        printf("# check %-13s R %lld L %lld k %lld: %d of %d variants match the CPU on every row\n", shapes[i].name,
               (long long)shapes[i].R, (long long)shapes[i].L, (long long)shapes[i].k, good, (int)N_VARIANTS);
        fflush(stdout);
    }
    printf("\n| %-13s | %-9s | %5s | %-14s | %5s | %10s | %-20s | %7s | %8s | %14s | %-22s |\n", "op", "variant", "R",
           "lens", "k", "median us", "min..max us", "GB/s", "vs copy", "vs torch H100", "target");
    printf("|---------------|-----------|-------|----------------|-------|------------|----------------------|"
           "---------|----------|----------------|------------------------|\n");
    for (int i = 0; i < N; i++)
        for (int v = 0; v < N_VARIANTS; v++)
            if (ok[i][v] == 1) bench(&probs[i], v);
    printf("\nphases of the first CTA, us at %.2f GHz (median of %d calls): 1 lens + clear, 2 first digit's histogram, "
           "3 its select (cluster barrier incl.), 4 candidates, 5 second digit, 6 third digit, 7 counts + barrier, "
           "8 emission + exit barrier\n\n",
           CLOCK_GHZ, STAMP_REPS);
    printf("| %-13s | %-9s | %6s | %6s | %6s | %6s | %6s | %6s | %6s | %6s | %6s |\n", "op", "variant", "1", "2", "3",
           "4", "5", "6", "7", "8", "total");
    printf("|---------------|-----------|--------|--------|--------|--------|--------|--------|--------|--------|"
           "--------|\n");
    for (int i = 0; i < N; i++)
        for (int v = 0; v < N_VARIANTS; v++)
            if (ok[i][v] == 1 && shapes[i].R <= 64) phases(&probs[i], v);
    printf("\nsummary: median us per variant\n\n| %-13s |", "op");
    for (int v = 0; v < N_VARIANTS; v++) printf(" %9s |", variants[v].name);
    printf("\n|---------------|");
    for (int v = 0; v < N_VARIANTS; v++) printf("-----------|");
    printf("\n");
    for (int i = 0; i < N; i++) {
        printf("| %-13s |", shapes[i].name);
        for (int v = 0; v < N_VARIANTS; v++) {
            if (ok[i][v] == 1) printf(" %9.1f |", probs[i].med_us[v]);
            else printf(" %9s |", ok[i][v] ? "n/a" : "WRONG");
        }
        printf("\n");
    }
    for (int i = 0; i < N; i++) {
        hae_backend_free(g_be, probs[i].dx), hae_backend_free(g_be, probs[i].dl);
        hae_backend_free(g_be, probs[i].dout), hae_backend_free(g_be, probs[i].dstamps);
        free(probs[i].cpu), free(probs[i].gpu), free(probs[i].lens);
    }
    hae_cuda_timer_destroy(g_timer);
    hae_backend_destroy(g_cpu);
    hae_backend_destroy(g_be);
    if (failed) fprintf(stderr, "bench_topk: %d variant checks differ from the CPU\n", failed);
    return failed ? 1 : 0;
}

#endif

HAE_BENCH_MAIN("bench_topk")

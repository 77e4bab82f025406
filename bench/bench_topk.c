/* CUDA microbenchmark of hae_topk at DeepSeek-V3.2's shapes, k = 2048 of 128K-logit rows: decode with
 * one row and with 64 rows, and a 4096-token prefill whose rows' lengths rise causally to 128K (row r
 * holds 128K - 4096 + r + 1 logits). Each shape is first checked against the CPU reference on the
 * same random logits (every row, index for index, out poisoned with 0x5A bytes) and not timed if it
 * differs; then: warm-up, >= 20 calls each timed alone with CUDA events after an L2 flush, median and
 * min..max. GB/s counts the logits read (each row's lens[r] floats once). Anchors: torch.topk on an
 * H100 takes 112 us for one row; the targets are <= 20 us for one row and <= 60 us for 64 rows.
 * Without CUDA or a GPU it says so and exits 0. */
#include "internal.h"

#include "bench_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef HAE_HAVE_CUDA

#define WARMUP 3
#define REPS 25

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

static int cmp_float(const void *x, const void *y) {
    float a = *(const float *)x, b = *(const float *)y;
    return (a > b) - (a < b);
}

/* One shape: R rows of L logits (uniform in [-1, 1), distinct per row and seed), lens, out [R, k]. */
typedef struct {
    const char *name;
    int64_t R, L, k;
    bool causal;               /* lens[r] = L - R + r + 1, else L */
    double peer_us, target_us; /* 0: none */
} shape;

/* A shape's buffers on the GPU, checked against the CPU. */
typedef struct {
    const shape *sh;
    void *dx, *dl, *dout;
    hae_topk_args a;
    double logits_read;
} problem;

static void prepare(problem *p, const shape *sh, uint64_t seed) {
    const int64_t R = sh->R, L = sh->L, k = sh->k;
    float *x = xmalloc(sizeof(float) * (size_t)(R * L));
    int32_t *lens = xmalloc(sizeof(int32_t) * (size_t)R);
    p->sh = sh;
    p->logits_read = 0;
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
    CHECK("upload", hae_backend_upload(g_be, p->dx, x, xb));
    CHECK("upload", hae_backend_upload(g_be, p->dl, lens, lb));
    p->a = (hae_topk_args){hae_tensor_2d(p->dx, HAE_F32, HAE_CUDA, R, L), hae_tensor_1d(p->dl, HAE_I32, HAE_CUDA, R),
                           hae_tensor_2d(p->dout, HAE_I32, HAE_CUDA, R, k)};

    /* Both sides over 0x5A poison (not -1, not an index), every row compared. */
    int32_t *cpu = xmalloc(ob), *gpu = xmalloc(ob);
    memset(cpu, 0x5a, ob);
    memset(gpu, 0x5a, ob);
    CHECK("upload", hae_backend_upload(g_be, p->dout, gpu, ob));
    hae_topk_args ac = {hae_tensor_2d(x, HAE_F32, HAE_CPU, R, L), hae_tensor_1d(lens, HAE_I32, HAE_CPU, R),
                        hae_tensor_2d(cpu, HAE_I32, HAE_CPU, R, k)};
    CHECK(sh->name, hae_topk(g_be, &p->a));
    CHECK("download", hae_backend_download(g_be, gpu, p->dout, ob));
    CHECK("sync", hae_backend_sync(g_be));
    CHECK("cpu reference", hae_topk(g_cpu, &ac));
    int64_t bad_rows = 0, first = -1;
    for (int64_t r = 0; r < R; r++)
        if (memcmp(cpu + r * k, gpu + r * k, sizeof(int32_t) * (size_t)k) != 0) {
            if (first < 0)
                for (first = r * k; cpu[first] == gpu[first];) first++;
            bad_rows++;
        }
    if (first >= 0) {
        printf("# check %-14s R %lld L %lld k %lld: FAIL: %lld rows differ; first: row %lld (lens %d) out[%lld] "
               "cpu %d gpu %d\n",
               sh->name, (long long)R, (long long)L, (long long)k, (long long)bad_rows, (long long)(first / k),
               lens[first / k], (long long)(first % k), cpu[first], gpu[first]);
        fprintf(stderr, "bench_topk: %s does not match the CPU reference; not timing it\n", sh->name);
        exit(1);
    }
    printf("# check %-14s R %lld L %lld k %lld: every row matches the CPU\n", sh->name, (long long)R, (long long)L,
           (long long)k);
    fflush(stdout);
    free(cpu), free(gpu), free(x), free(lens);
}

static void bench(const problem *p) {
    const shape *sh = p->sh;
    float ms[REPS];
    for (int i = 0; i < WARMUP; i++) CHECK(sh->name, hae_topk(g_be, &p->a));
    CHECK(sh->name, hae_backend_sync(g_be));
    for (int i = 0; i < REPS; i++) {
        CHECK("flush", hae_cuda_timer_flush_l2(g_timer));
        CHECK("timer", hae_cuda_timer_start(g_timer));
        CHECK(sh->name, hae_topk(g_be, &p->a));
        CHECK("timer", hae_cuda_timer_stop(g_timer, &ms[i]));
    }
    qsort(ms, REPS, sizeof ms[0], cmp_float);
    const double med_us = (double)ms[REPS / 2] * 1e3;
    const double gbs = p->logits_read * 4.0 / (med_us * 1e-6) * 1e-9;
    char peer[32] = "-", target[48] = "-", lens_s[48];
    if (sh->peer_us > 0) snprintf(peer, sizeof peer, "%.2fx", sh->peer_us / med_us);
    if (sh->target_us > 0)
        snprintf(target, sizeof target, "%.0f us: %.2fx, %s", sh->target_us, sh->target_us / med_us,
                 med_us <= sh->target_us ? "met" : "MISSED");
    if (sh->causal) snprintf(lens_s, sizeof lens_s, "%lld..%lld", (long long)(sh->L - sh->R + 1), (long long)sh->L);
    else snprintf(lens_s, sizeof lens_s, "%lld", (long long)sh->L);
    printf("| %-14s | %5lld | %-14s | %5lld | %10.1f | %9.1f..%-9.1f | %7.0f | %7.0f%% | %14s | %-22s |\n", sh->name,
           (long long)sh->R, lens_s, (long long)sh->k, med_us, (double)ms[0] * 1e3, (double)ms[REPS - 1] * 1e3, gbs,
           100.0 * gbs / COPY_CEILING_GBS, peer, target);
    fflush(stdout);
}

static int bench_main(void) {
    if (!hae_cuda_available()) {
        printf("bench_topk: no GPU: skipped\n");
        return 0;
    }
    CHECK("cuda backend", hae_backend_create(HAE_CUDA, 0, &g_be));
    CHECK("cpu backend", hae_backend_create(HAE_CPU, 0, &g_cpu));
    CHECK("timer", hae_cuda_timer_create(g_be, &g_timer));
    char rt[16], drv[16];
    hae_cuda_versions(rt, drv, sizeof rt);
    size_t l2 = 0, mem = 0;
    int sms = 0;
    CHECK("device facts", hae_cuda_device_facts(g_be, &l2, &sms, &mem));
    printf("# bench_topk on %s: %d SMs, L2 %.0f MiB, %.1f GiB; CUDA runtime %s, driver %s\n", hae_backend_name(g_be),
           sms, (double)l2 / 1048576.0, (double)mem / 1073741824.0, rt, drv);
    printf("# f32 logits uniform in [-1, 1); %d warm-up calls, then %d calls each timed alone after an L2 flush; "
           "rates from the median; GB/s counts the logits read once\n",
           WARMUP, REPS);
    static const shape shapes[] = {
        {"decode B 1", 1, 131072, 2048, false, TORCH_TOPK_H100_1ROW_US, TARGET_1ROW_US},
        {"decode B 64", 64, 131072, 2048, false, 0, TARGET_64ROWS_US},
        {"prefill 4096", 4096, 131072, 2048, true, 0, 0},
    };
    enum { N = sizeof shapes / sizeof shapes[0] };
    problem probs[N];
    for (int i = 0; i < N; i++) prepare(&probs[i], &shapes[i], 1000 + (uint64_t)i); /* every check before any timing */
    printf("\n| %-14s | %5s | %-14s | %5s | %10s | %-20s | %7s | %8s | %14s | %-22s |\n", "op", "R", "lens", "k",
           "median us", "min..max us", "GB/s", "vs copy", "vs torch H100", "target");
    printf("|----------------|-------|----------------|-------|------------|----------------------|---------|"
           "----------|----------------|------------------------|\n");
    for (int i = 0; i < N; i++) bench(&probs[i]);
    for (int i = 0; i < N; i++)
        hae_backend_free(g_be, probs[i].dx), hae_backend_free(g_be, probs[i].dl), hae_backend_free(g_be, probs[i].dout);
    hae_cuda_timer_destroy(g_timer);
    hae_backend_destroy(g_cpu);
    hae_backend_destroy(g_be);
    return 0;
}

#endif

int main(void) {
#ifdef HAE_HAVE_CUDA
    return bench_main();
#else
    printf("bench_topk: this build has no CUDA: skipped\n");
    return 0;
#endif
}

/* The host tier and the token-granular fetch (issue 5) on CUDA, one table:
 *  1. the pinned host-to-device copy ceiling: cudaMemcpyAsync from host-tier memory (hae_backend_alloc_host)
 *     of 1 MiB .. 256 MiB, and from pageable memory for contrast;
 *  2. pinning: hae_backend_alloc_host of 8 GiB, 32 GiB and 100 GB (cudaHostRegister in 1 GiB chunks; sizes
 *     that do not fit the free RAM are skipped) against cudaHostAlloc of 1 and 4 GiB, wall clock; then where
 *     the time goes: first touch and registration of 8 GiB timed apart, with and without huge pages;
 *  3. hae_kv_gather of k = 2048 scattered tokens (random distinct rows of 128K, into a random permutation of
 *     the slots) per sequence, B = 1 and 4, rows of 656, 1152 and 4096 bytes, nothing cached: the kernel
 *     with its default grid and at most 4, 8, 16, 32, 48 and 132 blocks, and the batched copies; each
 *     first checked byte for byte against the CPU op with poisoned destinations;
 *  4. interference: a memory-bound kernel (hae_convert bf16 -> f32 of 128M elements, 768 MB moved) timed
 *     alone and while gathers (the kernel's default grid, 4, 8, 16 and 48 blocks, the copies) run back to
 *     back on a second backend's stream.
 * Targets (issue 5, from an H100 80GB with PCIe Gen5 x16): pinned H2D 52-55 GB/s; pinning 100 GB in < 10 s
 * (23-27 GB/s measured, cudaHostAlloc 1.4-2.0); gather of 2048 tokens <= 40 us at 656 B and <= 180 us at
 * 4096 B, >= 45 GB/s with at most 48 blocks; a concurrent memory-bound kernel slowed by <= 5%. Without CUDA
 * or a GPU it says so and exits 0. */
#include "internal.h"

#include "bench_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#ifdef HAE_HAVE_CUDA
#include <cuda_runtime_api.h>

#define WARMUP 3
#define REPS 21
#define MIB ((size_t)1 << 20)
#define GIB ((size_t)1 << 30)
#define CAP 131072 /* tokens per sequence in the host tier */
#define TOPK 2048  /* tokens fetched per sequence */
#define MAX_B 4
#define MAX_ROW 4096
#define H2D_ANCHOR_GBS 52.0 /* H100 pinned H2D, >= 16 MiB */
#define GATHER_TARGET_GBS 45.0
#define SLOWDOWN_TARGET 5.0 /* percent */

static hae_backend *g_be, *g_be2, *g_cpu;
static hae_cuda_timer *g_timer;

static void die(const char *what) {
    fprintf(stderr, "bench_fetch: %s\n", what);
    exit(1);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void table_row(const char *what, const char *cs, double med_us, double min_us, double max_us, double gbs,
                      const char *target, const char *result) {
    char spread[48] = "-", rate[24] = "-";
    if (min_us >= 0) snprintf(spread, sizeof spread, "%.1f..%.1f", min_us, max_us);
    if (gbs >= 0) snprintf(rate, sizeof rate, "%.1f", gbs);
    printf("| %-20s | %-34s | %11.1f | %-19s | %7s | %-22s | %-22s |\n", what, cs, med_us, spread, rate, target, result);
    fflush(stdout);
}

/* ---------------------------------------------------------------- 1. the H2D ceiling */

typedef struct {
    void *dst;
    const void *src;
    size_t bytes;
} copy_ctx;

static hae_status run_upload(void *c) {
    const copy_ctx *x = c;
    return hae_backend_upload(g_be, x->dst, x->src, x->bytes);
}

static void bench_h2d(void) {
    const size_t max = 256 * MIB;
    void *pinned = NULL, *dev = NULL, *pageable = malloc(max);
    if (!pageable) die("out of host memory");
    memset(pageable, 0x3c, max);
    CHECK("alloc_host", hae_backend_alloc_host(g_be, max, &pinned));
    memset(pinned, 0x3c, max);
    CHECK("alloc", hae_backend_alloc(g_be, max, &dev));
    for (int k = 0; k < 2; k++)
        for (size_t sz = MIB; sz <= max; sz *= 4) {
            copy_ctx c = {dev, k ? pageable : pinned, sz};
            const hae_bench_times t = hae_bench_time(g_timer, g_be, "h2d copy", run_upload, &c, WARMUP, REPS);
            const double gbs = (double)sz / (t.median_us * 1e-6) * 1e-9;
            char cs[48], res[32] = "-";
            snprintf(cs, sizeof cs, "%s, %zu MiB", k ? "pageable" : "pinned (alloc_host)", sz / MIB);
            if (!k) snprintf(res, sizeof res, "%.2fx H100", gbs / H2D_ANCHOR_GBS);
            table_row("h2d copy", cs, t.median_us, t.min_us, t.max_us, gbs, k ? "-" : ">= 16 MiB: 52-55 GB/s", res);
        }
    hae_backend_free(g_be, dev);
    hae_backend_free_host(g_be, pinned);
    free(pageable);
}

/* ---------------------------------------------------------------- 2. pinning */

static void bench_pinning(void) {
    size_t free_b = 0, total_b = 0;
    CHECK("mem info", hae_backend_mem_info(g_cpu, &free_b, &total_b));
    const size_t sizes[] = {8 * GIB, 32 * GIB, (size_t)100e9}; /* the last: the target's 100 GB */
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        char cs[64], res[48];
        if (sizes[k] % GIB) snprintf(cs, sizeof cs, "alloc_host, %.0f GB", (double)sizes[k] * 1e-9);
        else snprintf(cs, sizeof cs, "alloc_host, %zu GiB", sizes[k] / GIB);
        if (sizes[k] + 8 * GIB > free_b) {
            snprintf(res, sizeof res, "skipped: %.1f GiB RAM free", (double)free_b / (double)GIB);
            table_row("pinning", cs, 0.0, -1, -1, -1, "100 GB < 10 s", res);
            continue;
        }
        void *p = NULL;
        const double t0 = now_s();
        CHECK("alloc_host", hae_backend_alloc_host(g_be, sizes[k], &p));
        const double t1 = now_s();
        hae_backend_free_host(g_be, p);
        const double t2 = now_s(), gbs = (double)sizes[k] / (t1 - t0) * 1e-9;
        snprintf(res, sizeof res, "%s; free %.2f s", gbs >= 10.0 ? "met" : "missed", t2 - t1);
        table_row("pinning", cs, (t1 - t0) * 1e6, -1, -1, gbs, "100 GB < 10 s", res);
    }
    const size_t alloc_sizes[] = {GIB, 4 * GIB};
    for (size_t k = 0; k < sizeof alloc_sizes / sizeof alloc_sizes[0]; k++) {
        char cs[64], res[48];
        snprintf(cs, sizeof cs, "cudaHostAlloc, %zu GiB", alloc_sizes[k] / GIB);
        void *p = NULL;
        const double t0 = now_s();
        cudaError_t e = cudaHostAlloc(&p, alloc_sizes[k], cudaHostAllocPortable | cudaHostAllocMapped);
        const double t1 = now_s();
        if (e != cudaSuccess) {
            fprintf(stderr, "bench_fetch: cudaHostAlloc of %zu bytes: %s\n", alloc_sizes[k], cudaGetErrorString(e));
            exit(1);
        }
        if (cudaFreeHost(p) != cudaSuccess) die("cudaFreeHost failed");
        const double t2 = now_s();
        snprintf(res, sizeof res, "H100: 1.4-2.0 GB/s; free %.2f s", t2 - t1);
        table_row("pinning", cs, (t1 - t0) * 1e6, -1, -1, (double)alloc_sizes[k] / (t1 - t0) * 1e-9, "-", res);
    }
}

/* Where pinning's time goes: first-touching anonymous memory (page faults and zeroing) on T threads, then
 * cudaHostRegister of the touched memory in 1 GiB chunks on 1 and on T threads; and whether the kernel gave
 * transparent huge pages. */
typedef struct {
    char *base;
    size_t chunks, next;
    int reg; /* 0: touch, 1: register */
    pthread_mutex_t lock;
} pin_job;

static void *pin_worker(void *p) {
    pin_job *j = p;
    for (;;) {
        pthread_mutex_lock(&j->lock);
        const size_t c = j->next++;
        pthread_mutex_unlock(&j->lock);
        if (c >= j->chunks) return NULL;
        char *at = j->base + c * GIB;
        if (!j->reg) memset(at, 0, GIB);
        else if (cudaHostRegister(at, GIB, cudaHostRegisterPortable | cudaHostRegisterMapped) != cudaSuccess)
            die("cudaHostRegister failed");
    }
}

static double pin_pass(char *base, size_t chunks, int reg, int threads) {
    pin_job j = {base, chunks, 0, reg, PTHREAD_MUTEX_INITIALIZER};
    pthread_t tid[64];
    const double t0 = now_s();
    int started = 0;
    while (started < threads && pthread_create(&tid[started], NULL, pin_worker, &j) == 0) started++;
    if (started == 0) pin_worker(&j); /* no thread could start: this one does it all */
    for (int t = 0; t < started; t++) pthread_join(tid[t], NULL);
    return now_s() - t0;
}

static long anon_huge_kb(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "AnonHugePages: %ld kB", &kb) == 1) break;
    if (f) fclose(f);
    return kb;
}

static void bench_pinning_breakdown(void) {
    char thp[128] = "?";
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    if (f && fgets(thp, sizeof thp, f)) thp[strcspn(thp, "\n")] = 0;
    if (f) fclose(f);
    const long cores = sysconf(_SC_NPROCESSORS_ONLN);
    const int T = cores > 64 ? 64 : cores > 0 ? (int)cores : 1;
    const size_t chunks = 8, bytes = chunks * GIB;
    for (int huge = 0; huge < 2; huge++) {
        char *raw = mmap(NULL, bytes + GIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (raw == MAP_FAILED) die("mmap failed");
        char *base = (char *)(((uintptr_t)raw + GIB - 1) / GIB * GIB);
        madvise(base, bytes, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
        const long h0 = anon_huge_kb();
        const double touch = pin_pass(base, chunks, 0, T);
        const long h1 = anon_huge_kb();
        const double reg1 = pin_pass(base, 1, 1, 1); /* one chunk alone, then the rest on T threads */
        const double regT = pin_pass(base + GIB, chunks - 1, 1, T);
        for (size_t c = 0; c < chunks; c++) cudaHostUnregister(base + c * GIB);
        munmap(raw, bytes + GIB);
        printf("pinning breakdown (%s, THP %s): first touch of %zu GiB on %d threads %.2f s (%.1f GB/s, %ld MiB in huge "
               "pages); register 1 GiB on 1 thread %.3f s (%.1f GB/s), %zu GiB on %d threads %.2f s (%.1f GB/s)\n",
               huge ? "MADV_HUGEPAGE" : "MADV_NOHUGEPAGE", thp, chunks, T, touch, (double)bytes / touch * 1e-9,
               (h1 - h0) / 1024, reg1, (double)GIB / reg1 * 1e-9, chunks - 1, T, regT,
               (double)((chunks - 1) * GIB) / regT * 1e-9);
    }
}

/* ---------------------------------------------------------------- 3. the gather */

typedef struct {
    hae_backend *be;
    hae_kv_gather_args a;
} gather_ctx;

static hae_status run_gather(void *c) {
    const gather_ctx *g = c;
    return hae_kv_gather(g->be, &g->a);
}

/* What every gather shares: the host tier (room for MAX_B x CAP rows of MAX_ROW bytes), the row lists on
 * the host and on the device, the device destination and the CPU's. */
typedef struct {
    unsigned char *tier;
    int32_t *srows, *drows; /* [MAX_B, TOPK] */
    void *srows_d, *drows_d;
    unsigned char *dst_d, *ref, *got, *poison;
    size_t dst_max;
} fixture;

static void fixture_make(fixture *f) {
    memset(f, 0, sizeof *f);
    CHECK("alloc_host", hae_backend_alloc_host(g_be, (size_t)MAX_B * CAP * MAX_ROW, (void **)&f->tier));
    const size_t lb = sizeof(int32_t) * MAX_B * TOPK;
    f->srows = malloc(lb), f->drows = malloc(lb);
    int32_t *perm = malloc(sizeof(int32_t) * CAP);
    f->dst_max = (size_t)MAX_B * TOPK * MAX_ROW;
    f->ref = malloc(f->dst_max), f->got = malloc(f->dst_max), f->poison = malloc(f->dst_max);
    if (!f->srows || !f->drows || !perm || !f->ref || !f->got || !f->poison) die("out of host memory");
    memset(f->poison, 0xFF, f->dst_max);
    uint64_t rng = 12345;
    for (int b = 0; b < MAX_B; b++) {
        for (int i = 0; i < CAP; i++) perm[i] = i;
        for (int i = 0; i < TOPK; i++) { /* distinct scattered tokens */
            const int j = i + (int)((rng = hae_mix64(rng)) % (uint64_t)(CAP - i)), t = perm[i];
            perm[i] = perm[j], perm[j] = t;
            f->srows[b * TOPK + i] = perm[i];
        }
        for (int i = 0; i < TOPK; i++) perm[i] = i;
        for (int i = 0; i < TOPK; i++) { /* slots in a random order */
            const int j = i + (int)((rng = hae_mix64(rng)) % (uint64_t)(TOPK - i)), t = perm[i];
            perm[i] = perm[j], perm[j] = t;
            f->drows[b * TOPK + i] = perm[i];
        }
    }
    free(perm);
    CHECK("alloc", hae_backend_alloc(g_be, lb, &f->srows_d));
    CHECK("alloc", hae_backend_alloc(g_be, lb, &f->drows_d));
    CHECK("upload", hae_backend_upload(g_be, f->srows_d, f->srows, lb));
    CHECK("upload", hae_backend_upload(g_be, f->drows_d, f->drows, lb));
    CHECK("alloc", hae_backend_alloc(g_be, f->dst_max, (void **)&f->dst_d));
}

static void fixture_free(fixture *f) {
    hae_backend_free_host(g_be, f->tier);
    hae_backend_free(g_be, f->srows_d), hae_backend_free(g_be, f->drows_d), hae_backend_free(g_be, f->dst_d);
    free(f->srows), free(f->drows), free(f->ref), free(f->got), free(f->poison);
}

/* Sequence b's rows in the tier as [B, CAP, row] bytes; fp8 so that W counts bytes. */
static hae_kv_gather_args gather_args(const fixture *f, int B, int row, hae_gather_method method, int max_blocks) {
    const bool copies = method == HAE_GATHER_COPIES;
    hae_kv_gather_args a = {
        .src = hae_tensor_3d(f->tier, HAE_FP8_E4M3, HAE_CUDA, B, CAP, row),
        .dst = hae_tensor_3d(f->dst_d, HAE_FP8_E4M3, HAE_CUDA, B, TOPK, row),
        .src_rows = hae_tensor_2d(copies ? (void *)f->srows : f->srows_d, HAE_I32, copies ? HAE_CPU : HAE_CUDA, B, TOPK),
        .dst_rows = hae_tensor_2d(copies ? (void *)f->drows : f->drows_d, HAE_I32, copies ? HAE_CPU : HAE_CUDA, B, TOPK),
        .method = method,
        .max_blocks = max_blocks,
    };
    return a;
}

/* Random bytes in the rows the lists select, and the CPU op's result on the same tier as the reference. */
static void prepare(fixture *f, int B, int row) {
    uint64_t rng = (uint64_t)row * 7919u + (uint64_t)B;
    for (int b = 0; b < B; b++)
        for (int i = 0; i < TOPK; i++) {
            unsigned char *p = f->tier + ((size_t)b * CAP + (size_t)f->srows[b * TOPK + i]) * (size_t)row;
            for (int j = 0; j < row; j += 8) {
                const uint64_t v = (rng = hae_mix64(rng));
                memcpy(p + j, &v, row - j < 8 ? (size_t)(row - j) : 8);
            }
        }
    const size_t bytes = (size_t)B * TOPK * (size_t)row;
    memset(f->ref, 0xFF, bytes);
    hae_kv_gather_args a = gather_args(f, B, row, HAE_GATHER_KERNEL, 0);
    a.src.device = a.dst.device = a.src_rows.device = a.dst_rows.device = HAE_CPU;
    a.dst.data = f->ref, a.src_rows.data = f->srows, a.dst_rows.data = f->drows;
    CHECK("cpu gather", hae_kv_gather(g_cpu, &a));
}

/* The GPU's gather into a poisoned destination, byte for byte against the CPU's. */
static void verify(fixture *f, const gather_ctx *g, int B, int row, const char *name) {
    const size_t bytes = (size_t)B * TOPK * (size_t)row;
    CHECK("poison", hae_backend_upload(g_be, f->dst_d, f->poison, bytes));
    CHECK(name, run_gather((void *)g));
    CHECK("sync", hae_backend_sync(g->be));
    CHECK("download", hae_backend_download(g_be, f->got, f->dst_d, bytes));
    for (size_t i = 0; i < bytes; i++)
        if (f->got[i] != f->ref[i]) {
            fprintf(stderr, "bench_fetch: %s, B %d, %d-byte rows: dst byte %zu (sequence %zu, slot %zu) is 0x%02x, the "
                    "CPU's 0x%02x; not timing it\n", name, B, row, i, i / ((size_t)TOPK * row), i / row % TOPK,
                    f->got[i], f->ref[i]);
            exit(1);
        }
}

/* The methods measured; the interference takes those marked. */
static const struct {
    const char *name;
    hae_gather_method method;
    int blocks; /* 0: the op's default */
    bool interference;
} g_methods[] = {
    {"kernel, default blocks", HAE_GATHER_KERNEL, 0, true}, {"kernel, 4 blocks", HAE_GATHER_KERNEL, 4, true},
    {"kernel, 8 blocks", HAE_GATHER_KERNEL, 8, true},       {"kernel, 16 blocks", HAE_GATHER_KERNEL, 16, true},
    {"kernel, 32 blocks", HAE_GATHER_KERNEL, 32, false},    {"kernel, 48 blocks", HAE_GATHER_KERNEL, 48, true},
    {"kernel, 132 blocks", HAE_GATHER_KERNEL, 132, false},  {"batched copies", HAE_GATHER_COPIES, 0, true},
};
#define N_METHODS (sizeof g_methods / sizeof g_methods[0])
/* Median gather time of each method at B = 1, per row size, for the interference. */
static double g_us[3][N_METHODS];
static const int g_rows[3] = {656, 1152, 4096};

static void bench_gather(fixture *f) {
    for (int r = 0; r < 3; r++)
        for (int B = 1; B <= MAX_B; B += MAX_B - 1) {
            const int row = g_rows[r];
            prepare(f, B, row);
            const double bytes = (double)B * TOPK * row;
            const double target_us = row == 656 ? 40.0 * B : row == 4096 ? 180.0 * B
                                                                       : bytes / (GATHER_TARGET_GBS * 1e9) * 1e6;
            for (size_t m = 0; m < N_METHODS; m++) {
                gather_ctx g = {g_be, gather_args(f, B, row, g_methods[m].method, g_methods[m].blocks)};
                verify(f, &g, B, row, g_methods[m].name);
                /* copies may take milliseconds: fewer repetitions then */
                const double t0 = now_s();
                CHECK("gather", run_gather(&g));
                CHECK("sync", hae_backend_sync(g_be));
                const bool slow = now_s() - t0 > 5e-3;
                const hae_bench_times t =
                    hae_bench_time(g_timer, g_be, g_methods[m].name, run_gather, &g, slow ? 1 : WARMUP, slow ? 5 : REPS);
                const double gbs = bytes / (t.median_us * 1e-6) * 1e-9;
                char cs[64], target[40], res[40];
                snprintf(cs, sizeof cs, "%d B x %d x %d, %s", row, B, TOPK, g_methods[m].name);
                snprintf(target, sizeof target, "<= %.0f us, >= %.0f GB/s", target_us, GATHER_TARGET_GBS);
                const bool met = t.median_us <= target_us && gbs >= GATHER_TARGET_GBS;
                snprintf(res, sizeof res, "%s (%.2fx)", met ? "met" : "missed", target_us / t.median_us);
                table_row("gather", cs, t.median_us, t.min_us, t.max_us, gbs, target, res);
                if (B == 1) g_us[r][m] = t.median_us;
            }
        }
}

/* ---------------------------------------------------------------- 4. interference */

typedef struct {
    hae_tensor src, dst;
} convert_ctx;

static hae_status run_convert(void *c) {
    const convert_ctx *x = c;
    return hae_convert(g_be, &x->src, &x->dst);
}

/* The victim's median with `per_rep` gathers queued on the second backend's stream before each timed
 * call (0: alone); each repetition after an L2 flush. */
static double victim_us(convert_ctx *v, const gather_ctx *g, int per_rep) {
    float ms[REPS];
    CHECK("victim", run_convert(v));
    CHECK("sync", hae_backend_sync(g_be));
    for (int i = 0; i < REPS; i++) {
        CHECK("flush", hae_cuda_timer_flush_l2(g_timer));
        for (int k = 0; k < per_rep; k++) CHECK("gather", run_gather((void *)g));
        CHECK("timer", hae_cuda_timer_start(g_timer));
        CHECK("victim", run_convert(v));
        CHECK("timer", hae_cuda_timer_stop(g_timer, &ms[i]));
    }
    CHECK("sync", hae_backend_sync(g_be2));
    qsort(ms, REPS, sizeof ms[0], hae_bench_cmp_float);
    return (double)ms[REPS / 2] * 1e3;
}

static void bench_interference(fixture *f) {
    const int64_t n = (int64_t)128 << 20;
    void *src = NULL, *dst = NULL;
    CHECK("alloc", hae_backend_alloc(g_be, (size_t)n * 2, &src));
    CHECK("alloc", hae_backend_alloc(g_be, (size_t)n * 4, &dst));
    CHECK("zero", hae_backend_zero(g_be, src, (size_t)n * 2));
    convert_ctx v = {hae_tensor_1d(src, HAE_BF16, HAE_CUDA, n), hae_tensor_1d(dst, HAE_F32, HAE_CUDA, n)};
    const double alone = victim_us(&v, NULL, 0), moved = (double)n * 6;
    table_row("interference", "convert bf16->f32 128M, alone", alone, -1, -1, moved / (alone * 1e-6) * 1e-9, "-", "-");
    for (int r = 0; r < 3; r += 2)
        for (size_t m = 0; m < N_METHODS; m++) {
            if (!g_methods[m].interference) continue;
            const int row = g_rows[r];
            const double gather = g_us[r][m];
            prepare(f, 1, row);
            gather_ctx g = {g_be2, gather_args(f, 1, row, g_methods[m].method, g_methods[m].blocks)};
            /* enough gathers to run through the flush and the victim, half again */
            const int per_rep = (int)ceil(1.5 * (alone + 100.0) / gather) + 1;
            const double with = victim_us(&v, &g, per_rep), slow = 100.0 * (with / alone - 1.0);
            char cs[64], res[40];
            snprintf(cs, sizeof cs, "convert + %d B gathers (%s)", row, g_methods[m].name);
            snprintf(res, sizeof res, "%+.1f%%: %s", slow, slow <= SLOWDOWN_TARGET ? "met" : "missed");
            table_row("interference", cs, with, -1, -1, moved / (with * 1e-6) * 1e-9, "<= 5% slower", res);
        }
    hae_backend_free(g_be, src), hae_backend_free(g_be, dst);
}

static int bench_main(void) {
    if (!hae_bench_start("bench_fetch", &g_be, &g_cpu, &g_timer)) return 0;
    CHECK("second cuda backend", hae_backend_create(HAE_CUDA, 0, &g_be2));
    printf("# gathers: k = %d random distinct tokens of %d per sequence, fp8 rows (bytes = elements), each checked "
           "against the CPU op first; %d warm-up calls, then %d timed alone after an L2 flush; GB/s from the median\n\n",
           TOPK, CAP, WARMUP, REPS);
    printf("| %-20s | %-34s | %11s | %-19s | %7s | %-22s | %-22s |\n", "what", "case", "median us", "min..max us",
           "GB/s", "target", "result");
    printf("|----------------------|------------------------------------|-------------|---------------------|--------"
           "-|------------------------|------------------------|\n");
    bench_h2d();
    bench_pinning();
    bench_pinning_breakdown();
    fixture f;
    fixture_make(&f);
    bench_gather(&f);
    bench_interference(&f);
    fixture_free(&f);
    hae_backend_destroy(g_be2);
    hae_cuda_timer_destroy(g_timer);
    hae_backend_destroy(g_cpu);
    hae_backend_destroy(g_be);
    return 0;
}

#endif

HAE_BENCH_MAIN("bench_fetch")

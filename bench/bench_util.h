/* Timing helpers for the CUDA microbenchmarks (implemented in engine/backend_cuda.cu, CUDA builds
 * only): CUDA events recorded on the backend's stream, and an L2 flush between repetitions. */
#ifndef HAE_BENCH_UTIL_H
#define HAE_BENCH_UTIL_H

#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Benchmarks stop at the first failure, saying which step and why. */
static inline void hae_bench_die(const char *what, hae_status st) {
    fprintf(stderr, "%s: %s: %s: %s\n", program_invocation_short_name, what, hae_status_name(st), hae_last_error());
    exit(1);
}
#define CHECK(what, expr)                                                                          \
    do {                                                                                           \
        hae_status st_ = (expr);                                                                   \
        if (st_ != HAE_OK) hae_bench_die(what, st_);                                               \
    } while (0)

/* Whether the benchmark row labelled `label` (its op's name, then its shape where a name has several) is
 * timed: every row, or with HAE_BENCH_ONLY set those whose label contains it (HAE_BENCH_ONLY=fp8
 * bench_sparse: the FP8 rows; HAE_BENCH_ONLY="kda prefill B 1 T 32768" bench_linear: that one shape). */
static inline bool hae_bench_selected(const char *label) {
    const char *only = getenv("HAE_BENCH_ONLY");
    return !only || !*only || strstr(label, only) != NULL;
}
/* Whether the checks of op run: those of every op a selected row may belong to (HAE_BENCH_ONLY inside op's
 * name, or beginning with it). */
static inline bool hae_bench_checked(const char *op) {
    const char *only = getenv("HAE_BENCH_ONLY");
    return !only || !*only || strstr(op, only) != NULL || strncmp(only, op, strlen(op)) == 0;
}

/* A benchmark's main(): its bench_main() where this build has CUDA, else a line saying it is skipped. */
#ifdef HAE_HAVE_CUDA
#define HAE_BENCH_MAIN(name)                                                                       \
    int main(void) { return bench_main(); }
#else
#define HAE_BENCH_MAIN(name)                                                                       \
    int main(void) {                                                                               \
        printf("%s: this build has no CUDA: skipped\n", name);                                     \
        return 0;                                                                                  \
    }
#endif

typedef struct hae_cuda_timer hae_cuda_timer;

/* A timer on be's stream; also holds a scratch buffer twice the size of the L2 cache for flushes. */
hae_status hae_cuda_timer_create(hae_backend *be, hae_cuda_timer **out);
void hae_cuda_timer_destroy(hae_cuda_timer *t); /* accepts NULL */
/* Overwrites the scratch buffer on the stream, evicting what earlier work left in L2. */
hae_status hae_cuda_timer_flush_l2(hae_cuda_timer *t);
hae_status hae_cuda_timer_start(hae_cuda_timer *t);
/* Records the stop event, waits for it and returns the milliseconds since start. */
hae_status hae_cuda_timer_stop(hae_cuda_timer *t, float *ms);
/* L2 size, multiprocessor count and memory size of be's device, for the benchmark header. */
hae_status hae_cuda_device_facts(hae_backend *be, size_t *l2_bytes, int *sms, size_t *mem_bytes);

/* A benchmark's start: false after printing "NAME: no GPU: skipped" where no GPU answers; else the CUDA
 * backend, a CPU backend for the checks against the CPU (cpu may be NULL), a timer and the machine line. */
static inline bool hae_bench_start(const char *name, hae_backend **gpu, hae_backend **cpu, hae_cuda_timer **timer) {
    if (!hae_cuda_available()) {
        printf("%s: no GPU: skipped\n", name);
        return false;
    }
    CHECK("cuda backend", hae_backend_create(HAE_CUDA, 0, gpu));
    if (cpu) CHECK("cpu backend", hae_backend_create(HAE_CPU, 0, cpu));
    CHECK("timer", hae_cuda_timer_create(*gpu, timer));
    char rt[16], drv[16];
    hae_cuda_versions(rt, drv, sizeof rt);
    size_t l2 = 0, mem = 0;
    int sms = 0;
    CHECK("device facts", hae_cuda_device_facts(*gpu, &l2, &sms, &mem));
    printf("# %s on %s: %d SMs, L2 %.0f MiB, %.1f GiB; CUDA runtime %s, driver %s\n", name, hae_backend_name(*gpu), sms,
           (double)l2 / 1048576.0, (double)mem / 1073741824.0, rt, drv);
    return true;
}

/* The timing every benchmark shares: `warmup` untimed calls of fn(ctx), then `reps` calls each timed
 * alone with CUDA events after an L2 flush. Stops the benchmark at the first failure. */
typedef struct hae_bench_times {
    double median_us, min_us, max_us;
} hae_bench_times;
typedef hae_status (*hae_bench_fn)(void *ctx);

static inline int hae_bench_cmp_float(const void *x, const void *y) {
    const float a = *(const float *)x, b = *(const float *)y;
    return (a > b) - (a < b);
}

static inline hae_bench_times hae_bench_time(hae_cuda_timer *t, hae_backend *be, const char *name, hae_bench_fn fn,
                                             void *ctx, int warmup, int reps) {
    float *ms = (float *)malloc(sizeof(float) * (size_t)reps);
    if (!ms) hae_bench_die(name, hae_error(HAE_ERR_OOM, "%d timings", reps));
    for (int i = 0; i < warmup; i++) CHECK(name, fn(ctx));
    CHECK(name, hae_backend_sync(be));
    for (int i = 0; i < reps; i++) {
        CHECK("flush", hae_cuda_timer_flush_l2(t));
        CHECK("timer", hae_cuda_timer_start(t));
        CHECK(name, fn(ctx));
        CHECK("timer", hae_cuda_timer_stop(t, &ms[i]));
    }
    qsort(ms, (size_t)reps, sizeof ms[0], hae_bench_cmp_float);
    hae_bench_times r = {(double)ms[reps / 2] * 1e3, (double)ms[0] * 1e3, (double)ms[reps - 1] * 1e3};
    free(ms);
    return r;
}

#ifdef __cplusplus
}
#endif
#endif

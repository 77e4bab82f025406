/* Timing helpers for the CUDA microbenchmarks (implemented in engine/backend_cuda.cu, CUDA builds
 * only): CUDA events recorded on the backend's stream, and an L2 flush between repetitions. */
#ifndef HAE_BENCH_UTIL_H
#define HAE_BENCH_UTIL_H

#include "hae.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

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

#ifdef __cplusplus
}
#endif
#endif

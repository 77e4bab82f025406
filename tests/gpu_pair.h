/* What the GPU tests share (tests/gpu_pair.c): a CPU and a CUDA backend, made by each suite's init,
 * and buffers that hold the same bytes on both. */
#ifndef HAE_GPU_PAIR_H
#define HAE_GPU_PAIR_H

#include "testutil.h"

#include <stddef.h>

extern hae_backend *g_cpu, *g_gpu;
/* A suite's .init and .fini: both backends, asserting success. */
void gpu_pair_setup(void);
void gpu_pair_teardown(void);

typedef struct {
    size_t bytes;
    void *c; /* on the CPU backend */
    void *g; /* on the GPU, the same bytes */
} pbuf;

/* bytes of host on both backends; pb_set overwrites both with new host bytes. */
pbuf pb_new(const void *host, size_t bytes);
void pb_set(pbuf *p, const void *host);
void pb_free(pbuf *p);
/* A host buffer of `bytes` 0xFF bytes (NaN as f32/bf16/f16; e4m3 NaN; -1 as i32), and a pbuf of them. */
void *host_poison(size_t bytes);
pbuf pb_poison(size_t bytes);

/* Fills rows (b, t) of `inner` elements at b*s0 + t*s1 of a host buffer with uniform [lo, hi) values;
 * what lies between rows keeps its bytes (poison). 2-d [R, C] with row stride ld: B = 1, T = R, s1 = ld. */
void fill_rows(void *h, hae_dtype dt, int64_t B, int64_t T, int64_t inner, int64_t s0, int64_t s1, tu_rng *r,
               double lo, double hi);

/* A view of data with the given shape and, if stride is not NULL, strides (elements). */
hae_tensor tv(void *data, hae_dtype dt, hae_device dev, int ndim, const int64_t *shape, const int64_t *stride);

#endif

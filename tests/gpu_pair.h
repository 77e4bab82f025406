/* What the GPU tests share (tests/gpu_pair.c): a CPU and a CUDA backend, made by each suite's init,
 * and buffers that hold the same bytes on both. */
#ifndef HAE_GPU_PAIR_H
#define HAE_GPU_PAIR_H

#include "testutil.h"

#include <stdbool.h>
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

/* The GPU side of p, downloaded into malloc'd host memory (asserting success). */
void *pb_fetch(const pbuf *p);

/* True when st is HAE_OK; else an expectation failure naming the op, its context and the side. */
bool gpu_ran(hae_status st, const char *side, const char *op, const char *ctx);
/* A sync after the GPU op: asynchronous kernel faults surface here, with the op's context. */
bool gpu_done(const char *op, const char *ctx);

/* Compares the whole buffer p, CPU side against GPU side, as elements of dt (padding and guards included).
 * tol < 0: bit-exact, every element's bytes. Otherwise NaN/Inf must sit at the same places with the same
 * signs, and ||gpu - cpu|| / ||cpu|| over the finite elements must be <= tol. A failure names the first
 * differing element (or the largest error) and both values; where (or NULL) says what element i is. */
typedef const char *(*pb_where_fn)(int64_t i, char *buf, size_t n, const void *ctx);
bool pb_compare_at(const char *op, const char *ctx, const pbuf *p, hae_dtype dt, double tol, pb_where_fn where,
                   const void *where_ctx);
bool pb_compare(const char *op, const char *ctx, const pbuf *p, hae_dtype dt, double tol);

/* A view of data with the given shape and, if stride is not NULL, strides (elements). */
hae_tensor tv(void *data, hae_dtype dt, hae_device dev, int ndim, const int64_t *shape, const int64_t *stride);

#endif

#include "gpu_pair.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

hae_backend *g_cpu, *g_gpu;

void gpu_pair_setup(void) {
    g_cpu = tu_cpu();
    hae_status st = hae_backend_create(HAE_CUDA, 0, &g_gpu);
    cr_assert_eq(st, HAE_OK, "cuda backend: %s: %s", hae_status_name(st), hae_last_error());
}

void gpu_pair_teardown(void) {
    hae_backend_destroy(g_gpu);
    hae_backend_destroy(g_cpu);
    g_gpu = g_cpu = NULL;
}

void pb_set(pbuf *p, const void *host) {
    if (!p->bytes) return;
    memcpy(p->c, host, p->bytes);
    hae_status st = hae_backend_upload(g_gpu, p->g, host, p->bytes);
    cr_assert_eq(st, HAE_OK, "upload of %zu bytes: %s", p->bytes, hae_last_error());
}

pbuf pb_new(const void *host, size_t bytes) {
    pbuf p = {bytes, NULL, NULL};
    hae_status st = hae_backend_alloc(g_cpu, bytes, &p.c);
    cr_assert_eq(st, HAE_OK, "cpu alloc of %zu bytes: %s", bytes, hae_last_error());
    st = hae_backend_alloc(g_gpu, bytes, &p.g);
    cr_assert_eq(st, HAE_OK, "gpu alloc of %zu bytes: %s", bytes, hae_last_error());
    pb_set(&p, host);
    return p;
}

void pb_free(pbuf *p) {
    hae_backend_free(g_cpu, p->c);
    hae_backend_free(g_gpu, p->g);
    p->c = p->g = NULL;
}

void *host_poison(size_t bytes) {
    void *h = malloc(bytes ? bytes : 1);
    cr_assert(h != NULL);
    memset(h, 0xFF, bytes);
    return h;
}

pbuf pb_poison(size_t bytes) {
    void *h = host_poison(bytes);
    pbuf p = pb_new(h, bytes);
    free(h);
    return p;
}

void fill_rows(void *h, hae_dtype dt, int64_t B, int64_t T, int64_t inner, int64_t s0, int64_t s1, tu_rng *r,
               double lo, double hi) {
    const size_t es = hae_dtype_size(dt);
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++) tu_fill((char *)h + (size_t)(b * s0 + t * s1) * es, dt, inner, r, lo, hi);
}

hae_tensor tv(void *data, hae_dtype dt, hae_device dev, int ndim, const int64_t *shape, const int64_t *stride) {
    hae_tensor t = hae_tensor_make(data, dt, dev, ndim, shape);
    if (stride)
        for (int d = 0; d < ndim; d++) t.stride[d] = stride[d];
    return t;
}

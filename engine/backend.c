/* Backends: the CPU (a thread pool and per-thread scratch) and CUDA (engine/backend_cuda.cu). */
#include "internal.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Per-thread CPU scratch: GEMM packs a K-block of B (HAE_GEMM_KB x HAE_GEMM_NB floats), a block of
 * accumulators and the converted rows of A (see ops_cpu.c); the chunked linear attention keeps one
 * chunk's matrices there (linear/linear_cpu.c). */
#define HAE_CPU_SCRATCH (2u << 20)

bool hae_built_with_cuda(void) {
#ifdef HAE_HAVE_CUDA
    return true;
#else
    return false;
#endif
}

bool hae_cuda_available(void) {
#ifdef HAE_HAVE_CUDA
    return hae_cuda_device_count() > 0;
#else
    return false;
#endif
}

static int online_cores(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (int)n;
}

hae_status hae_backend_create(hae_device dev, int index, hae_backend **out) {
    *out = NULL;
    hae_backend *be = calloc(1, sizeof *be);
    if (!be) return hae_error(HAE_ERR_OOM, "backend: out of host memory");
    be->device = dev;
    if (dev == HAE_CPU) {
        if (index < 0) {
            free(be);
            return hae_error(HAE_ERR_INVALID, "cpu backend: %d threads (need >= 0, 0 = all cores)", index);
        }
        int n = index ? index : online_cores();
        hae_status st = hae_threadpool_create(n, &be->pool);
        if (st != HAE_OK) {
            free(be);
            return st;
        }
        be->scratch_per_thread = HAE_CPU_SCRATCH;
        be->scratch = aligned_alloc(64, HAE_CPU_SCRATCH * (size_t)n);
        if (!be->scratch) {
            hae_backend_destroy(be);
            return hae_error(HAE_ERR_OOM, "cpu backend: %zu bytes of scratch", HAE_CPU_SCRATCH * (size_t)n);
        }
        snprintf(be->name, sizeof be->name, "cpu (%d thread%s)", n, n == 1 ? "" : "s");
        *out = be;
        return HAE_OK;
    }
#ifdef HAE_HAVE_CUDA
    int count = hae_cuda_device_count();
    if (count == 0) {
        free(be);
        return hae_error(HAE_ERR_UNSUPPORTED, "cuda backend: no GPU found");
    }
    if (index < 0 || index >= count) {
        free(be);
        return hae_error(HAE_ERR_INVALID, "cuda backend: device %d does not exist (%d GPU%s)", index, count,
                         count == 1 ? "" : "s");
    }
    hae_status st = hae_cuda_ctx_create(index, &be->cuda, be->name, sizeof be->name);
    if (st != HAE_OK) {
        free(be);
        return st;
    }
    *out = be;
    return HAE_OK;
#else
    free(be);
    return hae_error(HAE_ERR_UNSUPPORTED, "cuda backend: this build has no CUDA (nvcc was not found at build time)");
#endif
}

void hae_backend_destroy(hae_backend *be) {
    if (!be) return;
    hae_threadpool_destroy(be->pool);
    free(be->scratch);
#ifdef HAE_HAVE_CUDA
    if (be->cuda) hae_cuda_ctx_destroy(be->cuda);
#endif
    free(be);
}

hae_device hae_backend_device(const hae_backend *be) { return be->device; }
const char *hae_backend_name(const hae_backend *be) { return be->name; }
int hae_backend_threads(const hae_backend *be) { return be->pool ? hae_threadpool_size(be->pool) : 0; }

/* 64-byte aligned host memory for the CPU backend; `what` names it in the error. */
static hae_status cpu_alloc(hae_backend *be, size_t bytes, const char *what, void **out) {
    if (bytes > SIZE_MAX - 63) return hae_error(HAE_ERR_OOM, "cpu: %s of %zu bytes cannot be allocated", what, bytes);
    *out = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (!*out) {
        size_t free_b = 0, total = 0;
        hae_backend_mem_info(be, &free_b, &total);
        return hae_error(HAE_ERR_OOM, "cpu: could not allocate %s of %zu bytes (%zu of %zu bytes available)", what,
                         bytes, free_b, total);
    }
    return HAE_OK;
}

hae_status hae_backend_alloc(hae_backend *be, size_t bytes, void **out) {
    *out = NULL;
    if (bytes == 0) bytes = 1;
#ifdef HAE_HAVE_CUDA
    if (be->device == HAE_CUDA) return hae_cuda_alloc(be->cuda, bytes, out);
#endif
    return cpu_alloc(be, bytes, "a buffer", out);
}

void hae_backend_free(hae_backend *be, void *p) {
    if (!p) return;
#ifdef HAE_HAVE_CUDA
    if (be->device == HAE_CUDA) {
        hae_cuda_free(be->cuda, p);
        return;
    }
#endif
    free(p);
}

hae_status hae_backend_alloc_host(hae_backend *be, size_t bytes, void **out) {
    *out = NULL;
    if (bytes == 0) bytes = 1;
#ifdef HAE_HAVE_CUDA
    if (be->device == HAE_CUDA) return hae_cuda_alloc_host(be->cuda, bytes, out);
#endif
    return cpu_alloc(be, bytes, "a host tier", out);
}

void hae_backend_free_host(hae_backend *be, void *p) {
    if (!p) return;
#ifdef HAE_HAVE_CUDA
    if (be->device == HAE_CUDA) {
        hae_cuda_free_host(be->cuda, p);
        return;
    }
#endif
    free(p);
}

hae_status hae_backend_mem_info(hae_backend *be, size_t *free_bytes, size_t *total_bytes) {
#ifdef HAE_HAVE_CUDA
    if (be->device == HAE_CUDA) return hae_cuda_mem_info(be->cuda, free_bytes, total_bytes);
#endif
    long page = sysconf(_SC_PAGESIZE), avail = sysconf(_SC_AVPHYS_PAGES), total = sysconf(_SC_PHYS_PAGES);
    *free_bytes = (size_t)(avail > 0 ? avail : 0) * (size_t)page;
    *total_bytes = (size_t)(total > 0 ? total : 0) * (size_t)page;
    return HAE_OK;
}

hae_status hae_backend_upload(hae_backend *be, void *dst, const void *src_host, size_t bytes) {
#ifdef HAE_HAVE_CUDA
    if (be->device == HAE_CUDA) return hae_cuda_upload(be->cuda, dst, src_host, bytes);
#endif
    if (bytes) memmove(dst, src_host, bytes);
    return HAE_OK;
}

hae_status hae_backend_zero(hae_backend *be, void *dst, size_t bytes) {
#ifdef HAE_HAVE_CUDA
    if (be->device == HAE_CUDA) return hae_cuda_zero(be->cuda, dst, bytes);
#endif
    if (bytes) memset(dst, 0, bytes);
    return HAE_OK;
}

hae_status hae_backend_download(hae_backend *be, void *dst_host, const void *src, size_t bytes) {
    if (be->side)
        return hae_error(HAE_ERR_INVALID, "hae_backend_download: side work is copies to the device; download after "
                         "hae_backend_side_end and hae_backend_side_wait");
#ifdef HAE_HAVE_CUDA
    if (be->device == HAE_CUDA) return hae_cuda_download(be->cuda, dst_host, src, bytes);
#endif
    if (bytes) memmove(dst_host, src, bytes);
    return HAE_OK;
}

hae_status hae_backend_sync(hae_backend *be) {
#ifdef HAE_HAVE_CUDA
    if (be->device == HAE_CUDA) return hae_cuda_sync(be->cuda);
#endif
    return HAE_OK;
}

struct hae_fence {
    hae_backend *be;
    void *event; /* CUDA: a cudaEvent_t */
};

hae_status hae_fence_create(hae_backend *be, hae_fence **out) {
    *out = NULL;
    hae_fence *f = calloc(1, sizeof *f);
    if (!f) return hae_error(HAE_ERR_OOM, "hae_fence_create: out of host memory");
    f->be = be;
#ifdef HAE_HAVE_CUDA
    if (be->device == HAE_CUDA) {
        hae_status st = hae_cuda_event_create(be->cuda, &f->event);
        if (st != HAE_OK) {
            free(f);
            return st;
        }
    }
#endif
    *out = f;
    return HAE_OK;
}

void hae_fence_destroy(hae_fence *f) {
    if (!f) return;
#ifdef HAE_HAVE_CUDA
    if (f->event) hae_cuda_event_destroy(f->be->cuda, f->event);
#endif
    free(f);
}

hae_status hae_backend_side_begin(hae_backend *be) {
    if (be->side) return hae_error(HAE_ERR_INVALID, "hae_backend_side_begin: already inside side work (no nesting)");
#ifdef HAE_HAVE_CUDA
    if (be->device == HAE_CUDA) HAE_TRY(hae_cuda_side_begin(be->cuda, !be->unfenced));
#endif
    be->side = true;
    return HAE_OK;
}

hae_status hae_backend_side_end(hae_backend *be, hae_fence *done) {
    if (!be->side) return hae_error(HAE_ERR_INVALID, "hae_backend_side_end: no side work begun");
    if (!done || done->be != be)
        return hae_error(HAE_ERR_INVALID, "hae_backend_side_end: the fence must come from this backend");
    be->side = false;
#ifdef HAE_HAVE_CUDA
    if (be->device == HAE_CUDA) return hae_cuda_side_end(be->cuda, done->event);
#endif
    return HAE_OK;
}

hae_status hae_backend_side_wait(hae_backend *be, const hae_fence *f) {
    if (!f || f->be != be) return hae_error(HAE_ERR_INVALID, "hae_backend_side_wait: the fence must come from this backend");
    if (be->side) return hae_error(HAE_ERR_INVALID, "hae_backend_side_wait: inside side work (end it first)");
#ifdef HAE_HAVE_CUDA
    if (be->device == HAE_CUDA && !be->unfenced) return hae_cuda_side_wait(be->cuda, f->event);
#endif
    return HAE_OK;
}

void hae_backend_set_unfenced(hae_backend *be, bool on) { be->unfenced = on; }

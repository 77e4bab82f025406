/* The CUDA side of a hae_backend: a device, one stream that every op runs on, a cuBLAS handle bound
 * to that stream (with its own workspace) and a cuBLASLt handle; memory and copies. */
#include "cuda_check.cuh"

#include "../bench/bench_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static hae_status ctx_init(struct hae_cuda_ctx *ctx, char *name, size_t name_n) {
    HAE_CUDA_CHECK(cudaSetDevice(ctx->device));
    cudaDeviceProp prop;
    HAE_CUDA_CHECK(cudaGetDeviceProperties(&prop, ctx->device));
    if (name && name_n) snprintf(name, name_n, "%s", prop.name);
    /* A blocking stream: it stays ordered with the legacy default stream that other code may use. */
    HAE_CUDA_CHECK(cudaStreamCreate(&ctx->stream));
    HAE_CUBLAS_CHECK(cublasCreate(&ctx->blas));
    HAE_CUBLAS_CHECK(cublasSetStream(ctx->blas, ctx->stream));
    /* Default math: f32 GEMMs stay f32 (no TF32 tensor-op shortcut). */
    HAE_CUBLAS_CHECK(cublasSetMathMode(ctx->blas, CUBLAS_DEFAULT_MATH));
    HAE_CUDA_CHECK(cudaMalloc(&ctx->workspace, HAE_CUDA_WORKSPACE_BYTES));
    ctx->workspace_bytes = HAE_CUDA_WORKSPACE_BYTES;
    HAE_CUBLAS_CHECK(cublasSetWorkspace(ctx->blas, ctx->workspace, ctx->workspace_bytes));
    HAE_CUBLAS_CHECK(cublasLtCreate(&ctx->lt));
    HAE_CUDA_CHECK(cudaMalloc(&ctx->scratch, HAE_CUDA_SCRATCH_BYTES));
    ctx->scratch_bytes = HAE_CUDA_SCRATCH_BYTES;
    return HAE_OK;
}

extern "C" hae_status hae_cuda_ctx_create(int device, struct hae_cuda_ctx **out, char *name, size_t name_n) {
    *out = NULL;
    int count = hae_cuda_device_count();
    if (count == 0) return hae_error(HAE_ERR_UNSUPPORTED, "cuda: no GPU answers");
    if (device < 0 || device >= count)
        return hae_error(HAE_ERR_INVALID, "cuda: device %d does not exist (%d GPU%s)", device, count,
                         count == 1 ? "" : "s");
    struct hae_cuda_ctx *ctx = (struct hae_cuda_ctx *)calloc(1, sizeof *ctx);
    if (!ctx) return hae_error(HAE_ERR_OOM, "cuda: %zu bytes of host memory for the context", sizeof *ctx);
    ctx->device = device;
    hae_status st = ctx_init(ctx, name, name_n);
    if (st != HAE_OK) {
        hae_cuda_ctx_destroy(ctx); /* leaves the message of the failure alone */
        return st;
    }
    *out = ctx;
    return HAE_OK;
}

extern "C" void hae_cuda_ctx_destroy(struct hae_cuda_ctx *ctx) {
    if (!ctx) return;
    if (cudaSetDevice(ctx->device) == cudaSuccess) {
        if (ctx->stream) (void)cudaStreamSynchronize(ctx->stream);
        if (ctx->lt) (void)cublasLtDestroy(ctx->lt);
        if (ctx->blas) (void)cublasDestroy(ctx->blas);
        if (ctx->workspace) (void)cudaFree(ctx->workspace);
        if (ctx->scratch) (void)cudaFree(ctx->scratch);
        if (ctx->stream) (void)cudaStreamDestroy(ctx->stream);
    }
    (void)cudaGetLastError();
    free(ctx);
}

extern "C" hae_status hae_cuda_alloc(struct hae_cuda_ctx *ctx, size_t bytes, void **out) {
    *out = NULL;
    if (bytes == 0) return HAE_OK;
    HAE_CUDA_CHECK(cudaSetDevice(ctx->device));
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        size_t free_b = 0, total_b = 0;
        if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) (void)cudaGetLastError();
        return hae_error(HAE_ERR_OOM,
                         "cuda device %d: cannot allocate %zu bytes (%.1f MiB): %zu bytes (%.1f MiB) free of %zu "
                         "(%.1f MiB) total",
                         ctx->device, bytes, (double)bytes / 1048576.0, free_b, (double)free_b / 1048576.0, total_b,
                         (double)total_b / 1048576.0);
    }
    if (e != cudaSuccess) return hae_cuda_fail(e, __FILE__, __LINE__, "cudaMalloc(&p, bytes)");
    *out = p;
    return HAE_OK;
}

extern "C" void hae_cuda_free(struct hae_cuda_ctx *ctx, void *p) {
    if (!p) return;
    if (cudaSetDevice(ctx->device) != cudaSuccess || cudaFree(p) != cudaSuccess) (void)cudaGetLastError();
}

/* ---------------------------------------------------------------- host tier
 * Page-aligned memory behind a header page that records what the free needs (so no registry), pinned
 * and mapped chunk by chunk with cudaHostRegister: a failure names its chunk, and no single call pins
 * more than kHostChunk bytes. Kernels read it at the host address, which the device must accept. */

static const size_t kHostChunk = (size_t)1 << 30;
static const uint64_t kHostMagic = 0x9e3779b97f4a7c15ull;

struct host_header {
    uint64_t magic;
    size_t chunks; /* chunks registered after the header page */
};

/* The header's size and the alignment: a page, so that no two registrations share one. */
static size_t host_page(void) {
    const long pg = sysconf(_SC_PAGESIZE);
    return pg >= (long)sizeof(host_header) ? (size_t)pg : 4096;
}

static void host_unregister(char *base, size_t chunks) {
    for (size_t c = 0; c < chunks; c++)
        if (cudaHostUnregister(base + c * kHostChunk) != cudaSuccess) (void)cudaGetLastError();
}

/* Registers [base, base + bytes) chunk by chunk; *done counts the chunks registered, failure or not. */
static hae_status host_register(int device, char *base, size_t bytes, size_t *done) {
    const size_t n = (bytes + kHostChunk - 1) / kHostChunk;
    *done = 0;
    for (size_t c = 0; c < n; c++) {
        const size_t off = c * kHostChunk, len = bytes - off < kHostChunk ? bytes - off : kHostChunk;
        cudaError_t e = cudaHostRegister(base + off, len, cudaHostRegisterPortable | cudaHostRegisterMapped);
        void *dev = NULL;
        if (e == cudaSuccess) {
            *done = c + 1;
            e = cudaHostGetDevicePointer(&dev, base + off, 0);
        }
        if (e != cudaSuccess) {
            (void)cudaGetLastError();
            return hae_error(e == cudaErrorMemoryAllocation ? HAE_ERR_OOM : HAE_ERR_CUDA,
                             "cuda device %d: pinning chunk %zu of %zu (bytes %zu..%zu of a %zu-byte host tier) "
                             "failed: %s", device, c, n, off, off + len, bytes, cudaGetErrorString(e));
        }
        if (dev != base + off)
            return hae_error(HAE_ERR_UNSUPPORTED, "cuda device %d: chunk %zu of the host tier is mapped at %p, not at "
                             "its host address %p: kernels could not read it in place", device, c, dev,
                             (void *)(base + off));
    }
    return HAE_OK;
}

extern "C" hae_status hae_cuda_alloc_host(struct hae_cuda_ctx *ctx, size_t bytes, void **out) {
    *out = NULL;
    HAE_CUDA_CHECK(cudaSetDevice(ctx->device));
    int same = 0;
    HAE_CUDA_CHECK(cudaDeviceGetAttribute(&same, cudaDevAttrCanUseHostPointerForRegisteredMem, ctx->device));
    if (!same)
        return hae_error(HAE_ERR_UNSUPPORTED, "cuda device %d cannot use host pointers of registered memory "
                         "(cudaDevAttrCanUseHostPointerForRegisteredMem = 0): the host tier must be read at its host "
                         "address", ctx->device);
    const size_t page = host_page();
    if (bytes > SIZE_MAX - 2 * page)
        return hae_error(HAE_ERR_OOM, "cuda device %d: a host tier of %zu bytes cannot be allocated", ctx->device, bytes);
    const size_t rounded = (bytes + page - 1) / page * page;
    char *raw = (char *)aligned_alloc(page, page + rounded);
    if (!raw) {
        const long avail = sysconf(_SC_AVPHYS_PAGES);
        return hae_error(HAE_ERR_OOM, "cuda device %d: could not allocate a host tier of %zu bytes (%zu bytes of RAM "
                         "free)", ctx->device, bytes, (size_t)(avail > 0 ? avail : 0) * page);
    }
    size_t done = 0;
    hae_status st = host_register(ctx->device, raw + page, rounded, &done);
    if (st != HAE_OK) {
        host_unregister(raw + page, done);
        free(raw);
        return st;
    }
    host_header *h = (host_header *)raw;
    h->magic = kHostMagic, h->chunks = done;
    *out = raw + page;
    return HAE_OK;
}

extern "C" void hae_cuda_free_host(struct hae_cuda_ctx *ctx, void *p) {
    if (!p) return;
    char *raw = (char *)p - host_page();
    host_header *h = (host_header *)raw;
    HAE_ASSERT(h->magic == kHostMagic); /* p came from hae_cuda_alloc_host */
    if (cudaSetDevice(ctx->device) != cudaSuccess) (void)cudaGetLastError();
    host_unregister((char *)p, h->chunks);
    h->magic = 0;
    free(raw);
}

extern "C" hae_status hae_cuda_mem_info(struct hae_cuda_ctx *ctx, size_t *free_bytes, size_t *total_bytes) {
    *free_bytes = *total_bytes = 0;
    HAE_CUDA_CHECK(cudaSetDevice(ctx->device));
    HAE_CUDA_CHECK(cudaMemGetInfo(free_bytes, total_bytes));
    return HAE_OK;
}

/* From pageable host memory the runtime stages the bytes before returning, so src may be reused at
 * once; pinned src (cudaHostAlloc) must stay unchanged until the stream has run the copy. */
extern "C" hae_status hae_cuda_upload(struct hae_cuda_ctx *ctx, void *dst, const void *src, size_t bytes) {
    if (bytes == 0) return HAE_OK;
    HAE_CUDA_CHECK(cudaSetDevice(ctx->device));
    HAE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, ctx->stream));
    return HAE_OK;
}

extern "C" hae_status hae_cuda_zero(struct hae_cuda_ctx *ctx, void *dst, size_t bytes) {
    if (bytes == 0) return HAE_OK;
    HAE_CUDA_CHECK(cudaSetDevice(ctx->device));
    HAE_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, ctx->stream));
    return HAE_OK;
}

extern "C" hae_status hae_cuda_download(struct hae_cuda_ctx *ctx, void *dst, const void *src, size_t bytes) {
    if (bytes == 0) return HAE_OK;
    HAE_CUDA_CHECK(cudaSetDevice(ctx->device));
    HAE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, ctx->stream));
    HAE_CUDA_CHECK(cudaStreamSynchronize(ctx->stream));
    return HAE_OK;
}

extern "C" hae_status hae_cuda_sync(struct hae_cuda_ctx *ctx) {
    HAE_CUDA_CHECK(cudaSetDevice(ctx->device));
    HAE_CUDA_CHECK(cudaStreamSynchronize(ctx->stream));
    return HAE_OK;
}

extern "C" int hae_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n;
}

static void version_string(int v, char *buf, size_t n) {
    if (v <= 0) snprintf(buf, n, "?");
    else snprintf(buf, n, "%d.%d", v / 1000, (v % 1000) / 10);
}

extern "C" void hae_cuda_versions(char *runtime, char *driver, size_t n) {
    int rv = 0, dv = 0;
    if (cudaRuntimeGetVersion(&rv) != cudaSuccess) rv = 0;
    if (cudaDriverGetVersion(&dv) != cudaSuccess) dv = 0;
    (void)cudaGetLastError();
    if (runtime && n) version_string(rv, runtime, n);
    if (driver && n) version_string(dv, driver, n);
}

/* ---------------------------------------------------------------- benchmark timing (bench_util.h) */

struct hae_cuda_timer {
    struct hae_cuda_ctx *ctx;
    cudaEvent_t start, stop;
    void *flush;
    size_t flush_bytes;
};

extern "C" hae_status hae_cuda_device_facts(hae_backend *be, size_t *l2_bytes, int *sms, size_t *mem_bytes) {
    HAE_CUDA_CHECK(cudaSetDevice(be->cuda->device));
    cudaDeviceProp prop;
    HAE_CUDA_CHECK(cudaGetDeviceProperties(&prop, be->cuda->device));
    if (l2_bytes) *l2_bytes = (size_t)prop.l2CacheSize;
    if (sms) *sms = prop.multiProcessorCount;
    if (mem_bytes) *mem_bytes = prop.totalGlobalMem;
    return HAE_OK;
}

static hae_status timer_init(hae_cuda_timer *t, hae_backend *be) {
    size_t l2 = 0;
    HAE_TRY(hae_cuda_device_facts(be, &l2, NULL, NULL));
    HAE_CUDA_CHECK(cudaEventCreate(&t->start));
    HAE_CUDA_CHECK(cudaEventCreate(&t->stop));
    t->flush_bytes = 2 * (l2 > 0 ? l2 : ((size_t)64 << 20));
    return hae_cuda_alloc(t->ctx, t->flush_bytes, &t->flush);
}

extern "C" hae_status hae_cuda_timer_create(hae_backend *be, hae_cuda_timer **out) {
    *out = NULL;
    if (!be || be->device != HAE_CUDA || !be->cuda)
        return hae_error(HAE_ERR_INVALID, "hae_cuda_timer_create: not a CUDA backend");
    hae_cuda_timer *t = (hae_cuda_timer *)calloc(1, sizeof *t);
    if (!t) return hae_error(HAE_ERR_OOM, "hae_cuda_timer_create: out of host memory");
    t->ctx = be->cuda;
    hae_status st = timer_init(t, be);
    if (st != HAE_OK) {
        hae_cuda_timer_destroy(t);
        return st;
    }
    *out = t;
    return HAE_OK;
}

extern "C" void hae_cuda_timer_destroy(hae_cuda_timer *t) {
    if (!t) return;
    if (cudaSetDevice(t->ctx->device) == cudaSuccess) {
        if (t->start) (void)cudaEventDestroy(t->start);
        if (t->stop) (void)cudaEventDestroy(t->stop);
    }
    (void)cudaGetLastError();
    hae_cuda_free(t->ctx, t->flush);
    free(t);
}

extern "C" hae_status hae_cuda_timer_flush_l2(hae_cuda_timer *t) {
    HAE_CUDA_CHECK(cudaSetDevice(t->ctx->device));
    HAE_CUDA_CHECK(cudaMemsetAsync(t->flush, 0x5a, t->flush_bytes, t->ctx->stream));
    return HAE_OK;
}

extern "C" hae_status hae_cuda_timer_start(hae_cuda_timer *t) {
    HAE_CUDA_CHECK(cudaSetDevice(t->ctx->device));
    HAE_CUDA_CHECK(cudaEventRecord(t->start, t->ctx->stream));
    return HAE_OK;
}

extern "C" hae_status hae_cuda_timer_stop(hae_cuda_timer *t, float *ms) {
    *ms = 0.0f;
    HAE_CUDA_CHECK(cudaSetDevice(t->ctx->device));
    HAE_CUDA_CHECK(cudaEventRecord(t->stop, t->ctx->stream));
    HAE_CUDA_CHECK(cudaEventSynchronize(t->stop));
    HAE_CUDA_CHECK(cudaEventElapsedTime(ms, t->start, t->stop));
    return HAE_OK;
}

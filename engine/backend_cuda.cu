/* The CUDA side of a hae_backend: a device, one stream that every op runs on, a cuBLAS handle bound
 * to that stream (with its own workspace) and a cuBLASLt handle; memory and copies; a side stream for
 * copies that overlap compute, fenced by events. */
#include "cuda_check.cuh"

#include "../bench/bench_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

static hae_status ctx_init(struct hae_cuda_ctx *ctx, char *name, size_t name_n) {
    HAE_CUDA_CHECK(cudaSetDevice(ctx->device));
    cudaDeviceProp prop;
    HAE_CUDA_CHECK(cudaGetDeviceProperties(&prop, ctx->device));
    if (name && name_n) snprintf(name, name_n, "%s", prop.name);
    /* A blocking stream: it stays ordered with the legacy default stream that other code may use. */
    HAE_CUDA_CHECK(cudaStreamCreate(&ctx->stream));
    /* The side stream's blocks go first: a fetch is small and the attention waits for it. */
    int least = 0, greatest = 0;
    HAE_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    HAE_CUDA_CHECK(cudaStreamCreateWithPriority(&ctx->side_stream, cudaStreamDefault, greatest));
    HAE_CUDA_CHECK(cudaEventCreateWithFlags(&ctx->side_start, cudaEventDisableTiming));
    ctx->copy_stream = ctx->stream;
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
        if (ctx->side_stream) (void)cudaStreamSynchronize(ctx->side_stream);
        if (ctx->lt) (void)cublasLtDestroy(ctx->lt);
        if (ctx->blas) (void)cublasDestroy(ctx->blas);
        if (ctx->workspace) (void)cudaFree(ctx->workspace);
        if (ctx->scratch) (void)cudaFree(ctx->scratch);
        if (ctx->stream) (void)cudaStreamDestroy(ctx->stream);
        if (ctx->side_stream) (void)cudaStreamDestroy(ctx->side_stream);
        if (ctx->side_start) (void)cudaEventDestroy(ctx->side_start);
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
 * Anonymous memory (transparent huge pages where the kernel gives them) pinned and mapped in chunks of
 * kHostChunk bytes with cudaHostRegister, each chunk first touched by one of several threads: pinning
 * faults every page in, and one thread faulting and zeroing pages runs at a few GB/s (the registrations
 * themselves were measured not to overlap). The chunks start at multiples
 * of kHostChunk, so a copy that must stay inside one registration splits at those addresses
 * (hae_host_tier_run). A header page just below the first chunk records what the free needs. Kernels
 * read the memory at its host address, which the device must accept. */

static const size_t kHostChunk = HAE_HOST_CHUNK;
static const uint64_t kHostMagic = 0x9e3779b97f4a7c15ull;

struct host_header {
    uint64_t magic;
    size_t bytes;  /* registered after the header page */
    size_t chunks; /* registered chunks */
};

static size_t host_page(void) {
    const long pg = sysconf(_SC_PAGESIZE);
    return pg >= (long)sizeof(host_header) ? (size_t)pg : 4096;
}

static void host_unregister(char *base, size_t chunks) {
    for (size_t c = 0; c < chunks; c++)
        if (cudaHostUnregister(base + c * kHostChunk) != cudaSuccess) (void)cudaGetLastError();
}

struct host_register_job {
    int device;
    char *base;
    size_t bytes, n, next;
    pthread_mutex_t lock;
    cudaError_t err;
    size_t err_chunk;
    bool *ok;         /* [n] chunk registered */
    bool wrong_place; /* a chunk mapped at another device address */
};

static void *host_register_worker(void *p) {
    host_register_job *j = (host_register_job *)p;
    if (cudaSetDevice(j->device) != cudaSuccess) (void)cudaGetLastError();
    for (;;) {
        pthread_mutex_lock(&j->lock);
        const size_t c = j->next++;
        const bool stop = c >= j->n || j->err != cudaSuccess || j->wrong_place;
        pthread_mutex_unlock(&j->lock);
        if (stop) return NULL;
        const size_t off = c * kHostChunk, len = j->bytes - off < kHostChunk ? j->bytes - off : kHostChunk;
        memset(j->base + off, 0, len); /* the faults here, on this thread, rather than inside the driver's lock */
        cudaError_t e = cudaHostRegister(j->base + off, len, cudaHostRegisterPortable | cudaHostRegisterMapped);
        void *dev = NULL;
        if (e == cudaSuccess) {
            j->ok[c] = true;
            e = cudaHostGetDevicePointer(&dev, j->base + off, 0);
        }
        pthread_mutex_lock(&j->lock);
        if (e != cudaSuccess && j->err == cudaSuccess) j->err = e, j->err_chunk = c;
        if (e == cudaSuccess && dev != j->base + off && !j->wrong_place) j->wrong_place = true, j->err_chunk = c;
        pthread_mutex_unlock(&j->lock);
        if (e != cudaSuccess) (void)cudaGetLastError();
    }
}

/* Registers [base, base + bytes) chunk by chunk on up to `threads` threads. */
static hae_status host_register(int device, char *base, size_t bytes, bool *ok, size_t n) {
    host_register_job j = {};
    j.device = device, j.base = base, j.bytes = bytes, j.n = n, j.ok = ok, j.err = cudaSuccess;
    pthread_mutex_init(&j.lock, NULL);
    const long cores = sysconf(_SC_NPROCESSORS_ONLN);
    size_t threads = cores > 0 ? (size_t)cores : 1;
    if (threads > n) threads = n;
    if (threads > 64) threads = 64;
    pthread_t tid[64];
    size_t started = 0;
    for (; started + 1 < threads; started++)
        if (pthread_create(&tid[started], NULL, host_register_worker, &j) != 0) break;
    host_register_worker(&j);
    for (size_t t = 0; t < started; t++) pthread_join(tid[t], NULL);
    pthread_mutex_destroy(&j.lock);
    const size_t off = j.err_chunk * kHostChunk;
    if (j.err != cudaSuccess)
        return hae_error(j.err == cudaErrorMemoryAllocation ? HAE_ERR_OOM : HAE_ERR_CUDA,
                         "cuda device %d: pinning chunk %zu of %zu (bytes %zu..%zu of a %zu-byte host tier) failed: %s",
                         device, j.err_chunk, n, off, off + kHostChunk < bytes ? off + kHostChunk : bytes, bytes,
                         cudaGetErrorString(j.err));
    if (j.wrong_place)
        return hae_error(HAE_ERR_UNSUPPORTED, "cuda device %d: chunk %zu of the host tier is not mapped at its host "
                         "address %p: kernels could not read it in place", device, j.err_chunk, (void *)(base + off));
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
    if (bytes > SIZE_MAX / 2 - 2 * kHostChunk)
        return hae_error(HAE_ERR_OOM, "cuda device %d: a host tier of %zu bytes cannot be allocated", ctx->device, bytes);
    const size_t rounded = (bytes + page - 1) / page * page, span = rounded + kHostChunk + page;
    /* reserve enough to place the first chunk at a multiple of kHostChunk, then give back the rest */
    char *raw = (char *)mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (raw == (char *)MAP_FAILED) {
        const long avail = sysconf(_SC_AVPHYS_PAGES);
        return hae_error(HAE_ERR_OOM, "cuda device %d: could not reserve a host tier of %zu bytes (%zu bytes of RAM "
                         "free)", ctx->device, bytes, (size_t)(avail > 0 ? avail : 0) * page);
    }
    char *base = (char *)(((uintptr_t)raw + page + kHostChunk - 1) / kHostChunk * kHostChunk);
    if (base - page > raw) munmap(raw, (size_t)(base - page - raw));
    if (raw + span > base + rounded) munmap(base + rounded, (size_t)(raw + span - (base + rounded)));
    madvise(base, rounded, MADV_HUGEPAGE); /* advice: fewer faults while pinning */
    const size_t n = (rounded + kHostChunk - 1) / kHostChunk;
    bool *ok = (bool *)calloc(n, sizeof *ok);
    hae_status st = ok ? host_register(ctx->device, base, rounded, ok, n)
                       : hae_error(HAE_ERR_OOM, "cuda device %d: host tier bookkeeping", ctx->device);
    if (st != HAE_OK) {
        for (size_t c = 0; ok && c < n; c++)
            if (ok[c] && cudaHostUnregister(base + c * kHostChunk) != cudaSuccess) (void)cudaGetLastError();
        free(ok);
        munmap(base - page, page + rounded);
        return st;
    }
    free(ok);
    host_header *h = (host_header *)(base - page);
    h->magic = kHostMagic, h->bytes = rounded, h->chunks = n;
    *out = base;
    return HAE_OK;
}

extern "C" void hae_cuda_free_host(struct hae_cuda_ctx *ctx, void *p) {
    if (!p) return;
    const size_t page = host_page();
    host_header *h = (host_header *)((char *)p - page);
    HAE_ASSERT(h->magic == kHostMagic); /* p came from hae_cuda_alloc_host */
    if (cudaSetDevice(ctx->device) != cudaSuccess) (void)cudaGetLastError();
    host_unregister((char *)p, h->chunks);
    h->magic = 0;
    munmap((char *)p - page, page + h->bytes);
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
    HAE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, ctx->copy_stream));
    return HAE_OK;
}

extern "C" hae_status hae_cuda_zero(struct hae_cuda_ctx *ctx, void *dst, size_t bytes) {
    if (bytes == 0) return HAE_OK;
    HAE_CUDA_CHECK(cudaSetDevice(ctx->device));
    HAE_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, ctx->copy_stream));
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
    HAE_CUDA_CHECK(cudaStreamSynchronize(ctx->side_stream));
    return HAE_OK;
}

extern "C" hae_status hae_cuda_event_create(struct hae_cuda_ctx *ctx, void **out) {
    HAE_CUDA_CHECK(cudaSetDevice(ctx->device));
    cudaEvent_t ev;
    HAE_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    *out = (void *)ev;
    return HAE_OK;
}

extern "C" void hae_cuda_event_destroy(struct hae_cuda_ctx *ctx, void *ev) {
    if (cudaSetDevice(ctx->device) != cudaSuccess || cudaEventDestroy((cudaEvent_t)ev) != cudaSuccess)
        (void)cudaGetLastError();
}

/* Unfenced (tests only), side work starts at once, whatever the main stream is still doing. */
extern "C" hae_status hae_cuda_side_begin(struct hae_cuda_ctx *ctx, bool fenced) {
    HAE_CUDA_CHECK(cudaSetDevice(ctx->device));
    if (fenced) {
        HAE_CUDA_CHECK(cudaEventRecord(ctx->side_start, ctx->stream));
        HAE_CUDA_CHECK(cudaStreamWaitEvent(ctx->side_stream, ctx->side_start, 0));
    }
    ctx->copy_stream = ctx->side_stream;
    return HAE_OK;
}

extern "C" hae_status hae_cuda_side_end(struct hae_cuda_ctx *ctx, void *ev) {
    ctx->copy_stream = ctx->stream;
    HAE_CUDA_CHECK(cudaSetDevice(ctx->device));
    HAE_CUDA_CHECK(cudaEventRecord((cudaEvent_t)ev, ctx->side_stream));
    return HAE_OK;
}

extern "C" hae_status hae_cuda_side_wait(struct hae_cuda_ctx *ctx, void *ev) {
    HAE_CUDA_CHECK(cudaSetDevice(ctx->device));
    HAE_CUDA_CHECK(cudaStreamWaitEvent(ctx->stream, (cudaEvent_t)ev, 0));
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

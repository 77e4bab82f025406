/* Shared by the engine's CUDA sources: the CUDA context behind a hae_backend, error checks that
 * turn a failed CUDA or cuBLAS call into a hae_status with file:line, device and statement, and the
 * element loads/stores every kernel uses (f32 and bf16 storage, math in fp32). */
#ifndef HAE_CUDA_CHECK_CUH
#define HAE_CUDA_CHECK_CUH

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "internal.h"

/* What a CUDA backend owns: every op of the backend runs on `stream`, in order; side work (copies and
 * gathers between hae_backend_side_begin and _end) on `side_stream`, fenced by events. */
struct hae_cuda_ctx {
    int device;
    cudaStream_t stream;
    cudaStream_t side_stream;
    cudaStream_t copy_stream; /* where copies go now: stream, or side_stream inside side work */
    cudaEvent_t side_start;   /* recorded on stream at a side begin; side_stream waits for it */
    cublasHandle_t blas;  /* bound to stream, workspace below */
    cublasLtHandle_t lt;  /* for FP8 matmuls (indexer) */
    void *workspace;      /* cuBLAS workspace */
    size_t workspace_bytes;
    /* Scratch for kernels' partial results (split-KV attention, multi-block top-k): allocated with the
     * context so no op allocates; an op may use it only between its first and last launch, which the
     * one stream orders against every other op. */
    void *scratch;
    size_t scratch_bytes;
};

#define HAE_CUDA_WORKSPACE_BYTES ((size_t)32 << 20)
#define HAE_CUDA_SCRATCH_BYTES ((size_t)64 << 20)

static inline int hae_cuda_current_device(void) {
    int d = -1;
    if (cudaGetDevice(&d) != cudaSuccess) d = -1;
    return d;
}

/* Clears the runtime's last (non-sticky) error so it is not blamed on the next launch. */
static inline hae_status hae_cuda_fail(cudaError_t e, const char *file, int line, const char *what) {
    (void)cudaGetLastError();
    return hae_error(HAE_ERR_CUDA, "%s:%d: device %d: %s failed: %s", file, line, hae_cuda_current_device(), what,
                     cudaGetErrorString(e));
}

static inline hae_status hae_cublas_fail(cublasStatus_t s, const char *file, int line, const char *what) {
    return hae_error(HAE_ERR_CUDA, "%s:%d: device %d: %s failed: %s (%s)", file, line, hae_cuda_current_device(), what,
                     cublasGetStatusName(s), cublasGetStatusString(s));
}

#define HAE_CUDA_CHECK(call)                                                                       \
    do {                                                                                           \
        cudaError_t hae_e_ = (call);                                                               \
        if (hae_e_ != cudaSuccess) return hae_cuda_fail(hae_e_, __FILE__, __LINE__, #call);        \
    } while (0)

#define HAE_CUBLAS_CHECK(call)                                                                     \
    do {                                                                                           \
        cublasStatus_t hae_s_ = (call);                                                            \
        if (hae_s_ != CUBLAS_STATUS_SUCCESS) return hae_cublas_fail(hae_s_, __FILE__, __LINE__, #call); \
    } while (0)

/* Programmatic dependent launch for the small kernels of a decode step (and the linear prefill's
 * sequential kernel): launched this way, a kernel's CTAs may be scheduled while the kernel before it on
 * the stream finishes, so launch and prologue overlap that kernel's tail. Such a kernel must begin with
 * hae_pdl_enter(): it waits until every earlier kernel has completed and its writes are visible (nothing
 * is read or written before), then lets the next kernel be scheduled. */
static __device__ __forceinline__ void hae_pdl_enter() {
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}

template <typename... P, typename... A>
static inline cudaError_t hae_launch_pdl(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t s,
                                         A... args) {
    cudaLaunchAttribute attr;
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid, cfg.blockDim = block, cfg.dynamicSmemBytes = smem, cfg.stream = s;
    cfg.attrs = &attr, cfg.numAttrs = 1;
    return cudaLaunchKernelEx(&cfg, kernel, ((P)args)...);
}

/* After every kernel launch: `name` says which kernel. */
#define HAE_CUDA_LAUNCH_CHECK(name)                                                                \
    do {                                                                                           \
        cudaError_t hae_e_ = cudaGetLastError();                                                   \
        if (hae_e_ != cudaSuccess) return hae_cuda_fail(hae_e_, __FILE__, __LINE__, "launch of " name); \
    } while (0)

/* Makes the backend's device current and hands out its stream; every op starts with this. Inside side
 * work only copies run (hae_cuda_enter_copy): any other op would run on the wrong stream, and the
 * scratch and the cuBLAS handle belong to the main one. */
static inline hae_status hae_cuda_enter(hae_backend *be, cudaStream_t *stream) {
    *stream = be->cuda->stream;
    if (be->side)
        return hae_error(HAE_ERR_INVALID, "cuda: only copies and hae_kv_gather may run as side work (between "
                         "hae_backend_side_begin and hae_backend_side_end)");
    HAE_CUDA_CHECK(cudaSetDevice(be->cuda->device));
    return HAE_OK;
}

/* The stream of a copy-like op: the side stream inside side work, else the main one. */
static inline hae_status hae_cuda_enter_copy(hae_backend *be, cudaStream_t *stream) {
    *stream = be->cuda->copy_stream;
    HAE_CUDA_CHECK(cudaSetDevice(be->cuda->device));
    return HAE_OK;
}

/* Blocks for a grid-stride loop over n items (at least 1; capped, the loop covers the rest). */
static inline unsigned hae_cuda_blocks(int64_t n, int threads) {
    int64_t b = (n + threads - 1) / threads;
    if (b < 1) b = 1;
    if (b > 65536) b = 65536;
    return (unsigned)b;
}

/* ---------------------------------------------------------------- reductions */

/* 2^x in one MUFU op, results below 2^-126 flushed to 0 (exp2f adds the denormal range around it, four
 * instructions in all): the softmax kernels' exponentials, whose tiny terms vanish in the sums anyway, and
 * the linear chunk form's decay factors, which reach 2^-126 only where their terms are negligible. */
static __device__ __forceinline__ float hae_ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

/* The sum over a warp by an xor butterfly; a + b == b + a, so every lane ends with the same value. */
template <typename T> static __device__ __forceinline__ T hae_warp_sum(T v) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

/* The sum over the block (blockDim.x a multiple of 32, at most 1024), its warps combined in a fixed tree; every
 * thread gets the result. */
template <typename T> static __device__ T hae_block_sum(T v) {
    __shared__ T part[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = hae_warp_sum(v);
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        T w = lane < nwarps ? part[lane] : T(0);
        w = hae_warp_sum(w);
        if (lane == 0) part[0] = w;
    }
    __syncthreads();
    const T r = part[0];
    __syncthreads(); /* part may be reused by a later call */
    return r;
}

/* ---------------------------------------------------------------- element types
 * bf16 is stored as its bits; conversions are the CPU's (tensor.c) bit for bit. */

struct hae_bf16_t {
    uint16_t bits;
};

static __device__ __forceinline__ uint16_t hae_dev_f32_to_bf16(float f) {
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                             /* nearest even */
    return (uint16_t)(u >> 16);
}
static __device__ __forceinline__ float hae_dev_bf16_to_f32(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }

/* tensor.c's hae_f32_to_fp8e4m3 in bits: nearest even on the e4m3 grid (steps of 2^-9 below 2^-6,
 * three mantissa bits above), saturating to +-448 (inf included), NaN -> 0x7f; zero keeps its sign. */
static __device__ __forceinline__ uint8_t hae_dev_f32_to_e4m3(float f) {
    const uint32_t u = __float_as_uint(f), a = u & 0x7fffffffu, sign = (u >> 24) & 0x80u;
    if (a > 0x7f800000u) return 0x7f;
    if (a >= 0x43e00000u) return (uint8_t)(sign | 0x7eu); /* |f| >= 448 */
    if (a < 0x3c800000u)                                   /* |f| < 2^-6: code = rne(|f| 2^9), 8 = 2^-6 */
        return (uint8_t)(sign | __float2uint_rn(__fmul_rn(__uint_as_float(a), 512.0f)));
    /* round the 23-bit mantissa to 3 bits (a carry moves into the exponent); rebias 127 -> 7 */
    const uint32_t r = (a + 0x7ffffu + ((a >> 20) & 1u)) >> 20;
    return (uint8_t)(sign | (r - (120u << 3)));
}
/* tensor.c's hae_fp8e4m3_to_f32: exact (0x7f and 0xff are NaN, exponent 0 holds multiples of 2^-9). */
static __device__ __forceinline__ float hae_dev_e4m3_to_f32(uint32_t b) {
    const uint32_t e = (b >> 3) & 0xfu, m = b & 7u, sign = (b & 0x80u) << 24;
    if (e == 0xfu && m == 7u) return __uint_as_float(0x7fc00000u);
    if (e == 0) return __uint_as_float(sign | __float_as_uint((float)m * 0x1p-9f));
    return __uint_as_float(sign | (e + 120u) << 23 | m << 20);
}
/* hae_fp8_quant's rule for one block of 128 values held by a warp, lane l holding v[j] = x[l + 32 j]:
 * amax = max |x| as bits (|x| bits order like |x|, NaN above inf). With amax = (1 + f 2^-23) 2^(E - 127)
 * normal, frexp's exponent is E - 126 and its mantissa exceeds 0.875 exactly when f > 0x600000, so the
 * CPU's e = E_frexp - 9 + (m > 0.875) is E - 135 + (f > 0x600000), kept >= -126 (a subnormal amax lands
 * there too); codes q[j] = e4m3(v[j] 2^-e); returns the scale 2^e. All-zero: e = 0. Inf or NaN in the
 * block: a NaN scale and codes 0x7f. */
static __device__ __forceinline__ float hae_dev_fp8_block(const float (&v)[4], uint8_t (&q)[4]) {
    uint32_t amax = 0;
#pragma unroll
    for (int j = 0; j < 4; j++) amax = max(amax, __float_as_uint(v[j]) & 0x7fffffffu);
    amax = __reduce_max_sync(0xffffffffu, amax);
    if (amax >= 0x7f800000u) {
#pragma unroll
        for (int j = 0; j < 4; j++) q[j] = 0x7f;
        return __uint_as_float(0x7fc00000u);
    }
    int e = 0;
    if (amax) {
        e = (int)(amax >> 23) - 135 + ((amax & 0x7fffffu) > 0x600000u);
        e = e < -126 ? -126 : e;
    }
    const float inv = __uint_as_float((uint32_t)(127 - e) << 23); /* 2^-e, e in [-126, 120] */
#pragma unroll
    for (int j = 0; j < 4; j++) q[j] = hae_dev_f32_to_e4m3(__fmul_rn(v[j], inv));
    return __uint_as_float((uint32_t)(127 + e) << 23);
}

static __device__ __forceinline__ float hae_ld(const float *p) { return *p; }
static __device__ __forceinline__ float hae_ld(const hae_bf16_t *p) { return hae_dev_bf16_to_f32(p->bits); }
static __device__ __forceinline__ void hae_st(float *p, float v) { *p = v; }
static __device__ __forceinline__ void hae_st(hae_bf16_t *p, float v) { p->bits = hae_dev_f32_to_bf16(v); }

/* dst = src converted; a plain copy (NaN payloads too) when the types agree, as the CPU's memcpy. */
template <typename TD, typename TS> static __device__ __forceinline__ void hae_mov(TD *dst, const TS *src) {
    hae_st(dst, hae_ld(src));
}
static __device__ __forceinline__ void hae_mov(float *dst, const float *src) { *dst = *src; }
static __device__ __forceinline__ void hae_mov(hae_bf16_t *dst, const hae_bf16_t *src) { dst->bits = src->bits; }

/* Calls f(T{}) with T the storage type of dt (f32 or bf16); other dtypes are unsupported. */
template <typename F> static inline hae_status hae_cuda_dispatch(hae_dtype dt, const char *what, F &&f) {
    switch (dt) {
    case HAE_F32: return f(float{});
    case HAE_BF16: return f(hae_bf16_t{});
    default:
        return hae_error(HAE_ERR_UNSUPPORTED, "%s (cuda): dtype %s is not supported", what, hae_dtype_name(dt));
    }
}

#endif

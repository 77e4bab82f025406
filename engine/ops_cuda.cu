/* CUDA implementations of the dense ops (contracts in hae.h; arguments already checked by ops.c:
 * innermost strides are 1, shapes agree). Storage f32 or bf16, math in fp32 except where the CPU
 * reference (ops_cpu.c) uses double and the GPU follows it so both round alike. */
#include "cuda_check.cuh"

#include <limits.h>
#include <math.h>

namespace {

constexpr int kRowThreads = 256; /* one block per row: rmsnorm, sampling */

__device__ __forceinline__ float quiet_nan() { return __uint_as_float(0x7fc00000u); }

/* ---------------------------------------------------------------- embedding
 * out[i, :] = table[ids[i], :]. The CPU rejects ids outside [0, V); the device cannot report that
 * without a sync, so such rows come out NaN. */
template <typename TT>
__global__ void embedding_kernel(const int32_t *ids, int64_t ids_s, const TT *table, int64_t tab_s, int64_t V,
                                 float *out, int64_t out_s, int64_t D) {
    const int64_t i = blockIdx.x;
    const int32_t id = ids[i * ids_s];
    const bool ok = id >= 0 && (int64_t)id < V;
    const TT *src = table + (ok ? (int64_t)id : 0) * tab_s;
    float *dst = out + i * out_s;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) dst[d] = ok ? hae_ld(src + d) : quiet_nan();
}

/* ---------------------------------------------------------------- rmsnorm
 * out = (x - mu) * r * w (+ bias) with r = 1 / sqrt(mean((x - mu)^2) + eps); mu = mean(x) for LayerNorm
 * (center), else 0; the sums in double as on the CPU. */
template <typename TO>
__global__ void __launch_bounds__(kRowThreads)
    rmsnorm_kernel(const float *x, int64_t x_s, const float *w, int64_t w_s, const float *bias, int64_t b_s, TO *out,
                   int64_t out_s, int64_t D, float eps, bool center) {
    hae_pdl_enter();
    const float *xr = x + (int64_t)blockIdx.x * x_s;
    TO *o = out + (int64_t)blockIdx.x * out_s;
    /* unrolled so that a thread's loads are in flight together: a decode step's rows are one block each,
     * and a load at a time made each pass a chain of memory latencies */
    double mean = 0.0;
    if (center) {
#pragma unroll 8
        for (int64_t d = threadIdx.x; d < D; d += blockDim.x) mean += (double)xr[d];
        mean = hae_block_sum(mean) / (double)D;
    }
    double ss = 0.0;
#pragma unroll 8
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) ss += ((double)xr[d] - mean) * ((double)xr[d] - mean);
    ss = hae_block_sum(ss);
    const float r = (float)(1.0 / sqrt(ss / (double)D + (double)eps)), mu = (float)mean;
#pragma unroll 8
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
        hae_st(o + d, (xr[d] - mu) * r * w[d * w_s] + (bias ? bias[d * b_s] : 0.0f));
}

/* ---------------------------------------------------------------- swiglu
 * out[n, f] = silu(gu[n, f]) * gu[n, F + f]; rows over grid.y, columns over grid.x (no divisions). */
template <typename TI, typename TO>
__global__ void swiglu_kernel(const TI *gu, int64_t gu_s, TO *out, int64_t out_s, int64_t N, int64_t F) {
    hae_pdl_enter();
    for (int64_t n = blockIdx.y; n < N; n += gridDim.y) {
        const TI *g = gu + n * gu_s;
        TO *o = out + n * out_s;
        for (int64_t f = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; f < F; f += (int64_t)gridDim.x * blockDim.x) {
            const float gv = hae_ld(g + f), uv = hae_ld(g + F + f);
            hae_st(o + f, gv / (1.0f + expf(-gv)) * uv);
        }
    }
}

/* ---------------------------------------------------------------- rope
 * NeoX rotate-half over dims [rot_offset, rot_offset + rot_dims). inv_freq comes from the host, computed with the
 * CPU's expression (1 / powf(theta, 2i / rot_dims)), so both sides rotate by the same float angle
 * pos * inv_freq; sinf/cosf are the precise device functions. */
constexpr int kRopeMaxHalf = 512;
struct RopeFreqs {
    float inv_freq[kRopeMaxHalf];
};

template <typename T>
__global__ void rope_kernel(T *x, int64_t s0, int64_t s1, int64_t s2, int64_t T_, int64_t rows, int H, int half,
                            int64_t pos0, RopeFreqs fr) {
    hae_pdl_enter();
    __shared__ float inv_freq[kRopeMaxHalf];
    for (int i = threadIdx.x; i < half; i += blockDim.x) inv_freq[i] = fr.inv_freq[i];
    __syncthreads();
    const int pairs = H * half;
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
        const int64_t b = r / T_, t = r % T_;
        const float pos = (float)(pos0 + t);
        for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < pairs; j += gridDim.x * blockDim.x) {
            const int h = j / half, i = j % half;
            T *row = x + b * s0 + t * s1 + (int64_t)h * s2;
            const float ang = pos * inv_freq[i];
            const float cs = cosf(ang), sn = sinf(ang);
            const float x1 = hae_ld(row + i), x2 = hae_ld(row + i + half);
            hae_st(row + i, x1 * cs - x2 * sn);
            hae_st(row + i + half, x2 * cs + x1 * sn);
        }
    }
}

/* ---------------------------------------------------------------- sampling
 * One block per row: each thread keeps its first maximum over a strided subset (strict >, so NaN never
 * wins and within a thread the lowest index does), then (value, index) pairs reduce with the lowest
 * index winning equal values. A row with no candidate (all -inf or NaN) gives 0, as on the CPU. */
__device__ __forceinline__ void argmax_merge(float &v, long long &i, float ov, long long oi) {
    if (ov > v || (ov == v && oi < i)) {
        v = ov;
        i = oi;
    }
}

__global__ void __launch_bounds__(kRowThreads)
    sample_kernel(const float *logits, int64_t l_s, int64_t V, int32_t *out, int64_t out_s, float temperature,
                  uint64_t seed, uint64_t step) {
    __shared__ float sv[32];
    __shared__ long long si[32];
    const int64_t row = blockIdx.x;
    const float *l = logits + row * l_s;
    float best = -INFINITY;
    long long bi = LLONG_MAX;
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
        float v = l[i];
        if (temperature > 0.0f)
            v = v / temperature - logf(-logf(hae_uniform_hd(seed, step, (uint64_t)row, (uint64_t)i)));
        if (v > best) {
            best = v;
            bi = i;
        }
    }
    for (int off = 16; off > 0; off >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, best, off);
        const long long oi = __shfl_xor_sync(0xffffffffu, bi, off);
        argmax_merge(best, bi, ov, oi);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    if (lane == 0) {
        sv[warp] = best;
        si[warp] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < nwarps; w++) argmax_merge(best, bi, sv[w], si[w]);
        out[row * out_s] = bi == LLONG_MAX ? 0 : (int32_t)bi;
    }
}

/* ---------------------------------------------------------------- convert
 * Ports of tensor.c's scalar conversions, bit for bit (rounding to nearest even, e4m3 saturating to
 * +-448, the same NaN encodings). */
__device__ float dev_round_to_grid(float a, int man_bits, int emin) {
    int e;
    frexpf(a, &e);
    int ex = e - 1;
    if (ex < emin) ex = emin;
    const float quantum = ldexpf(1.0f, ex - man_bits);
    return nearbyintf(a / quantum) * quantum;
}

__device__ float dev_f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, ex = (h >> 10) & 0x1f, man = h & 0x3ffu;
    if (ex == 0x1f) return __uint_as_float(sign | 0x7f800000u | (man << 13));
    if (ex == 0) {
        const float v = ldexpf((float)man, -24);
        return sign ? -v : v;
    }
    return __uint_as_float(sign | ((ex + 112u) << 23) | (man << 13));
}

__device__ uint16_t dev_f32_to_f16(float f) {
    const uint32_t u = __float_as_uint(f);
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    const float a = fabsf(f);
    if (isnan(f)) return (uint16_t)(sign | 0x7e00u);
    const float r = dev_round_to_grid(a, 10, -14);
    if (r >= 65520.0f || isinf(a)) return (uint16_t)(sign | 0x7c00u);
    if (r == 0.0f) return sign;
    int e;
    const float m = frexpf(r, &e);
    const int ex = e - 1;
    if (ex < -14) return (uint16_t)(sign | (uint16_t)(r / ldexpf(1.0f, -24)));
    const uint16_t man = (uint16_t)((m * 2.0f - 1.0f) * 1024.0f);
    return (uint16_t)(sign | (uint16_t)((ex + 15) << 10) | man);
}

__device__ float dev_fp8_to_f32(uint8_t b) {
    const int sign = b >> 7, ex = (b >> 3) & 0xf, man = b & 7;
    if (ex == 0xf && man == 7) return quiet_nan();
    const float v = ex == 0 ? ldexpf((float)man, -9) : ldexpf(1.0f + (float)man / 8.0f, ex - 7);
    return sign ? -v : v;
}

__device__ uint8_t dev_f32_to_fp8(float f) {
    const uint8_t sign = signbit(f) ? 0x80 : 0;
    if (isnan(f)) return 0x7f;
    const float a = fabsf(f);
    float r = a >= 448.0f ? 448.0f : dev_round_to_grid(a, 3, -6);
    if (r > 448.0f) r = 448.0f;
    if (r == 0.0f) return sign;
    int e;
    const float m = frexpf(r, &e);
    const int ex = e - 1;
    if (ex < -6) return (uint8_t)(sign | (uint8_t)(r / ldexpf(1.0f, -9)));
    const uint8_t man = (uint8_t)((m * 2.0f - 1.0f) * 8.0f);
    return (uint8_t)(sign | (uint8_t)((ex + 7) << 3) | man);
}

__device__ __forceinline__ float dev_load_any(const void *p, hae_dtype dt, int64_t i) {
    switch (dt) {
    case HAE_F32: return ((const float *)p)[i];
    case HAE_BF16: return hae_dev_bf16_to_f32(((const uint16_t *)p)[i]);
    case HAE_F16: return dev_f16_to_f32(((const uint16_t *)p)[i]);
    case HAE_FP8_E4M3: return dev_fp8_to_f32(((const uint8_t *)p)[i]);
    default: return 0.0f;
    }
}

__device__ __forceinline__ void dev_store_any(void *p, hae_dtype dt, int64_t i, float v) {
    switch (dt) {
    case HAE_F32: ((float *)p)[i] = v; break;
    case HAE_BF16: ((uint16_t *)p)[i] = hae_dev_f32_to_bf16(v); break;
    case HAE_F16: ((uint16_t *)p)[i] = dev_f32_to_f16(v); break;
    case HAE_FP8_E4M3: ((uint8_t *)p)[i] = dev_f32_to_fp8(v); break;
    default: break;
    }
}

__global__ void convert_kernel(const void *src, hae_dtype sdt, void *dst, hae_dtype ddt, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        dev_store_any(dst, ddt, i, dev_load_any(src, sdt, i));
}

/* ---------------------------------------------------------------- gemm fallback
 * cuBLAS has no f32 x f32 -> bf16 GemmEx; that rare case runs here: c[m, n] = sum_k a[m, k] b[n, k]
 * with 16 x 16 tiles of a and b staged in shared memory. */
constexpr int kTile = 16;

template <typename TC>
__global__ void gemm_f32_tiled_kernel(const float *a, int64_t lda, const float *b, int64_t ldb, TC *c, int64_t ldc,
                                      int64_t M, int64_t N, int64_t K) {
    __shared__ float as[kTile][kTile + 1], bs[kTile][kTile + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int64_t m = (int64_t)blockIdx.y * kTile + ty;  /* row of c this thread writes */
    const int64_t n = (int64_t)blockIdx.x * kTile + tx;  /* column of c this thread writes */
    const int64_t nb = (int64_t)blockIdx.x * kTile + ty; /* row of b this thread stages */
    float acc = 0.0f;
    for (int64_t k0 = 0; k0 < K; k0 += kTile) {
        const int64_t k = k0 + tx;
        as[ty][tx] = (m < M && k < K) ? a[m * lda + k] : 0.0f;
        bs[ty][tx] = (nb < N && k < K) ? b[nb * ldb + k] : 0.0f;
        __syncthreads();
        for (int kk = 0; kk < kTile; kk++) acc += as[ty][kk] * bs[tx][kk];
        __syncthreads();
    }
    if (m < M && n < N) hae_st(c + m * ldc + n, acc);
}

/* ---------------------------------------------------------------- gemm, decode rows
 * c[m, n] (+)= sum_k a[m, k] b[n, k] for M <= kGemvRows rows of bf16 a (a decode step: a row per
 * sequence) against bf16 weights b: one warp per column n streams b's row in 16-byte pieces, read once
 * and kept out of L1; a's rows come from L1. cuBLAS splits K for the tall shapes and adds a reduction
 * kernel; in a hybrid-1b decode step this took 12% less GEMM time and fewer launches (bench/RESULTS.md).
 * Accumulation in fp32: the sum order differs from cuBLAS's, not the rounding of c. */
constexpr int kGemvRows = 4;
constexpr int kGemvWarps = 8;

__device__ __forceinline__ float bf16_lo(uint32_t u) { return __uint_as_float(u << 16); }
__device__ __forceinline__ float bf16_hi(uint32_t u) { return __uint_as_float(u & 0xffff0000u); }

__device__ __forceinline__ uint4 ld_stream(const uint4 *p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

template <int M, typename TC>
__global__ void __launch_bounds__(32 * kGemvWarps)
    gemv_kernel(const hae_bf16_t *a, int64_t lda, int64_t sa, const hae_bf16_t *b, int64_t ldb, int64_t sb, TC *c,
                int64_t ldc, int64_t sc, int N, int K8, bool accumulate) {
    hae_pdl_enter();
    const int lane = threadIdx.x & 31, n = blockIdx.x * kGemvWarps + (threadIdx.x >> 5);
    if (n >= N) return;
    const int64_t z = blockIdx.y;
    const uint4 *brow = (const uint4 *)(b + z * sb + n * ldb), *arow = (const uint4 *)(a + z * sa);
    const int64_t la = lda / 8;
    float acc[M] = {};
#pragma unroll 4
    for (int k = lane; k < K8; k += 32) {
        const uint4 w = ld_stream(brow + k);
#pragma unroll
        for (int m = 0; m < M; m++) {
            const uint4 x = __ldg(arow + m * la + k);
            float s = acc[m];
            s = fmaf(bf16_lo(w.x), bf16_lo(x.x), s), s = fmaf(bf16_hi(w.x), bf16_hi(x.x), s);
            s = fmaf(bf16_lo(w.y), bf16_lo(x.y), s), s = fmaf(bf16_hi(w.y), bf16_hi(x.y), s);
            s = fmaf(bf16_lo(w.z), bf16_lo(x.z), s), s = fmaf(bf16_hi(w.z), bf16_hi(x.z), s);
            s = fmaf(bf16_lo(w.w), bf16_lo(x.w), s), s = fmaf(bf16_hi(w.w), bf16_hi(x.w), s);
            acc[m] = s;
        }
    }
#pragma unroll
    for (int m = 0; m < M; m++) {
        const float v = hae_warp_sum(acc[m]);
        TC *o = c + z * sc + m * ldc + n;
        if (lane == 0) hae_st(o, accumulate ? hae_ld(o) + v : v);
    }
}

template <typename TC>
cudaError_t gemv_launch(int M, const hae_bf16_t *a, int64_t lda, int64_t sa, const hae_bf16_t *b, int64_t ldb,
                        int64_t sb, TC *c, int64_t ldc, int64_t sc, int N, int K, int batch, bool acc, cudaStream_t s) {
    const dim3 grid((unsigned)((N + kGemvWarps - 1) / kGemvWarps), (unsigned)batch);
    auto kern = M == 1   ? gemv_kernel<1, TC>
                : M == 2 ? gemv_kernel<2, TC>
                : M == 3 ? gemv_kernel<3, TC>
                         : gemv_kernel<4, TC>;
    return hae_launch_pdl(kern, grid, dim3(32 * kGemvWarps), 0, s, a, lda, sa, b, ldb, sb, c, ldc, sc, N, K / 8, acc);
}

hae_status too_large(const char *op, const char *what, int64_t v, int64_t limit) {
    return hae_error(HAE_ERR_UNSUPPORTED, "%s (cuda): %s = %lld exceeds %lld", op, what, (long long)v,
                     (long long)limit);
}

} // namespace

/* ---------------------------------------------------------------- entry points */

extern "C" hae_status hae_embedding_cuda(hae_backend *be, const hae_embedding_args *a) {
    const int64_t N = a->ids.shape[0], V = a->table.shape[0], D = a->table.shape[1];
    if (N == 0 || D == 0) return HAE_OK;
    if (N > INT_MAX) return too_large("hae_embedding", "N", N, INT_MAX);
    cudaStream_t s = nullptr;
    HAE_TRY(hae_cuda_enter(be, &s));
    return hae_cuda_dispatch(a->table.dtype, "hae_embedding", [&](auto tag) -> hae_status {
        using TT = decltype(tag);
        embedding_kernel<TT><<<(unsigned)N, 128, 0, s>>>((const int32_t *)a->ids.data, a->ids.stride[0],
                                                        (const TT *)a->table.data, a->table.stride[0], V,
                                                        (float *)a->out.data, a->out.stride[0], D);
        HAE_CUDA_LAUNCH_CHECK("embedding_kernel");
        return HAE_OK;
    });
}

extern "C" hae_status hae_rmsnorm_cuda(hae_backend *be, const hae_rmsnorm_args *a) {
    const int64_t N = a->x.shape[0], D = a->x.shape[1];
    if (N == 0 || D == 0) return HAE_OK;
    if (N > INT_MAX) return too_large("hae_rmsnorm", "N", N, INT_MAX);
    cudaStream_t s = nullptr;
    HAE_TRY(hae_cuda_enter(be, &s));
    return hae_cuda_dispatch(a->out.dtype, "hae_rmsnorm", [&](auto tag) -> hae_status {
        using TO = decltype(tag);
        HAE_CUDA_CHECK(hae_launch_pdl(rmsnorm_kernel<TO>, dim3((unsigned)N), dim3(kRowThreads), 0, s,
            (const float *)a->x.data, a->x.stride[0], (const float *)a->weight.data, a->weight.stride[0],
            (const float *)a->bias.data, a->bias.stride[0], (TO *)a->out.data, a->out.stride[0], D, a->eps, a->center));
        HAE_CUDA_LAUNCH_CHECK("rmsnorm_kernel");
        return HAE_OK;
    });
}

extern "C" hae_status hae_gemm_cuda(hae_backend *be, const hae_gemm_args *g) {
    const int64_t M = g->a.shape[0], K = g->a.shape[1], N = g->b.shape[0];
    if (M == 0 || N == 0) return HAE_OK;
    /* A matrix with one row may carry any row stride; cuBLAS wants ld >= the row length. */
    int64_t lda = g->a.stride[0], ldb = g->b.stride[0], ldc = g->c.stride[0];
    if (M == 1 && lda < K) lda = K;
    if (N == 1 && ldb < K) ldb = K;
    if (M == 1 && ldc < N) ldc = N;
    if (lda < 1) lda = 1;
    if (ldb < 1) ldb = 1;
    if (lda < K || ldb < K || ldc < N) {
        char da[96], db[96], dc[96];
        return hae_error(HAE_ERR_UNSUPPORTED, "hae_gemm (cuda): overlapping rows: a %s, b %s, c %s",
                         hae_tensor_describe(&g->a, da, sizeof da), hae_tensor_describe(&g->b, db, sizeof db),
                         hae_tensor_describe(&g->c, dc, sizeof dc));
    }
    const int64_t lim = INT_MAX;
    if (M > lim) return too_large("hae_gemm", "M", M, lim);
    if (N > lim) return too_large("hae_gemm", "N", N, lim);
    if (K > lim) return too_large("hae_gemm", "K", K, lim);
    if (lda > lim || ldb > lim || ldc > lim) return too_large("hae_gemm", "a row stride", lda > ldb ? lda : ldb, lim);
    cudaStream_t s = nullptr;
    HAE_TRY(hae_cuda_enter(be, &s));

    const int64_t batch = g->batch > 1 ? g->batch : 1;
    if (g->a.dtype == HAE_F32 && g->c.dtype == HAE_BF16) {
        const int64_t gy = (M + kTile - 1) / kTile, gx = (N + kTile - 1) / kTile;
        if (gy > 65535) return too_large("hae_gemm", "M (f32 operands, bf16 output)", M, 65535 * kTile);
        for (int64_t i = 0; i < batch; i++) {
            gemm_f32_tiled_kernel<hae_bf16_t><<<dim3((unsigned)gx, (unsigned)gy), dim3(kTile, kTile), 0, s>>>(
                (const float *)g->a.data + i * g->stride_a, lda, (const float *)g->b.data + i * g->stride_b, ldb,
                (hae_bf16_t *)g->c.data + i * g->stride_c, ldc, M, N, K);
            HAE_CUDA_LAUNCH_CHECK("gemm_f32_tiled_kernel");
        }
        return HAE_OK;
    }

    /* a few rows of bf16 a (decode) whose rows and products start on 16 bytes: gemv_kernel */
    const bool a16 = ((uintptr_t)g->a.data | (uintptr_t)g->b.data) % 16 == 0 && (lda | ldb) % 8 == 0 &&
                     (batch == 1 || (g->stride_a | g->stride_b) % 8 == 0);
    if (g->a.dtype == HAE_BF16 && M <= kGemvRows && K % 8 == 0 && a16 && batch <= 65535) {
        const hae_bf16_t *ga = (const hae_bf16_t *)g->a.data, *gb = (const hae_bf16_t *)g->b.data;
        const int64_t sa = batch > 1 ? g->stride_a : 0, sb = batch > 1 ? g->stride_b : 0;
        const int64_t sc = batch > 1 ? g->stride_c : 0;
        const int n = (int)N, k = (int)K, nb = (int)batch;
        HAE_CUDA_CHECK(g->c.dtype == HAE_BF16
                           ? gemv_launch((int)M, ga, lda, sa, gb, ldb, sb, (hae_bf16_t *)g->c.data, ldc, sc, n, k, nb,
                                         g->accumulate, s)
                           : gemv_launch((int)M, ga, lda, sa, gb, ldb, sb, (float *)g->c.data, ldc, sc, n, k, nb,
                                         g->accumulate, s));
        HAE_CUDA_LAUNCH_CHECK("gemv_kernel");
        return HAE_OK;
    }
    /* Row-major c[M, N] = a[M, K] b[N, K]^T is column-major c^T[N, M] = b a^T: cuBLAS sees b as a
     * K x N column-major matrix (transposed: op T) and a as K x M (op N). */
    const cudaDataType_t ab_t = g->a.dtype == HAE_BF16 ? CUDA_R_16BF : CUDA_R_32F;
    const cudaDataType_t c_t = g->c.dtype == HAE_BF16 ? CUDA_R_16BF : CUDA_R_32F;
    const float alpha = 1.0f, beta = g->accumulate ? 1.0f : 0.0f;
    if (batch == 1) {
        HAE_CUBLAS_CHECK(cublasGemmEx(be->cuda->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)M, (int)K, &alpha,
                                      g->b.data, ab_t, (int)ldb, g->a.data, ab_t, (int)lda, &beta, g->c.data, c_t,
                                      (int)ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        return HAE_OK;
    }
    if (batch > lim) return too_large("hae_gemm", "batch", batch, lim);
    HAE_CUBLAS_CHECK(cublasGemmStridedBatchedEx(be->cuda->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)M, (int)K,
                                                &alpha, g->b.data, ab_t, (int)ldb, g->stride_b, g->a.data, ab_t,
                                                (int)lda, g->stride_a, &beta, g->c.data, c_t, (int)ldc, g->stride_c,
                                                (int)batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return HAE_OK;
}

extern "C" hae_status hae_swiglu_cuda(hae_backend *be, const hae_swiglu_args *a) {
    const int64_t N = a->out.shape[0], F = a->out.shape[1];
    if (N == 0 || F == 0) return HAE_OK;
    cudaStream_t s = nullptr;
    HAE_TRY(hae_cuda_enter(be, &s));
    const int threads = 256;
    int64_t gx = (F + threads - 1) / threads;
    if (gx > 1024) gx = 1024;
    const int64_t gy = N < 65535 ? N : 65535;
    return hae_cuda_dispatch(a->gate_up.dtype, "hae_swiglu", [&](auto ti) -> hae_status {
        using TI = decltype(ti);
        return hae_cuda_dispatch(a->out.dtype, "hae_swiglu", [&](auto to) -> hae_status {
            using TO = decltype(to);
            HAE_CUDA_CHECK(hae_launch_pdl(swiglu_kernel<TI, TO>, dim3((unsigned)gx, (unsigned)gy), dim3(threads), 0, s,
                (const TI *)a->gate_up.data, a->gate_up.stride[0], (TO *)a->out.data, a->out.stride[0], N, F));
            HAE_CUDA_LAUNCH_CHECK("swiglu_kernel");
            return HAE_OK;
        });
    });
}

extern "C" hae_status hae_rope_cuda(hae_backend *be, const hae_rope_args *a) {
    const int64_t B = a->x.shape[0], T = a->x.shape[1], H = a->x.shape[2];
    const int half = a->rot_dims / 2;
    if (half == 0 || B * T * H == 0) return HAE_OK;
    if (half > kRopeMaxHalf) return too_large("hae_rope", "rot_dims", a->rot_dims, 2 * kRopeMaxHalf);
    if (H * half > INT_MAX) return too_large("hae_rope", "heads x rot_dims/2", H * half, INT_MAX);
    RopeFreqs fr;
    for (int i = 0; i < kRopeMaxHalf; i++)
        fr.inv_freq[i] = i < half ? 1.0f / powf(a->theta, (float)(2 * i) / (float)a->rot_dims) : 0.0f;
    cudaStream_t s = nullptr;
    HAE_TRY(hae_cuda_enter(be, &s));
    const int threads = 128;
    const int64_t rows = B * T, pairs = H * half;
    int64_t gx = (pairs + threads - 1) / threads;
    if (gx > 1024) gx = 1024;
    const int64_t gy = rows < 65535 ? rows : 65535;
    return hae_cuda_dispatch(a->x.dtype, "hae_rope", [&](auto tag) -> hae_status {
        using TX = decltype(tag);
        HAE_CUDA_CHECK(hae_launch_pdl(rope_kernel<TX>, dim3((unsigned)gx, (unsigned)gy), dim3(threads), 0, s,
            (TX *)a->x.data + a->rot_offset, a->x.stride[0], a->x.stride[1], a->x.stride[2], T, rows, (int)H, half,
            a->pos0, fr));
        HAE_CUDA_LAUNCH_CHECK("rope_kernel");
        return HAE_OK;
    });
}

extern "C" hae_status hae_sample_cuda(hae_backend *be, const hae_sample_args *a) {
    const int64_t B = a->logits.shape[0], V = a->logits.shape[1];
    if (B == 0) return HAE_OK;
    if (B > INT_MAX) return too_large("hae_sample", "B", B, INT_MAX);
    if (V > INT_MAX) return too_large("hae_sample", "V", V, INT_MAX);
    cudaStream_t s = nullptr;
    HAE_TRY(hae_cuda_enter(be, &s));
    sample_kernel<<<(unsigned)B, kRowThreads, 0, s>>>((const float *)a->logits.data, a->logits.stride[0], V,
                                                      (int32_t *)a->out.data, a->out.stride[0], a->temperature,
                                                      a->seed, a->step);
    HAE_CUDA_LAUNCH_CHECK("sample_kernel");
    return HAE_OK;
}

extern "C" hae_status hae_convert_cuda(hae_backend *be, const hae_tensor *src, const hae_tensor *dst) {
    const int64_t n = hae_tensor_numel(src);
    if (n == 0) return HAE_OK;
    const hae_dtype dts[2] = {src->dtype, dst->dtype};
    for (int k = 0; k < 2; k++)
        if (dts[k] != HAE_F32 && dts[k] != HAE_BF16 && dts[k] != HAE_F16 && dts[k] != HAE_FP8_E4M3)
            return hae_error(HAE_ERR_UNSUPPORTED, "hae_convert (cuda): dtype %s is not supported",
                             hae_dtype_name(dts[k]));
    cudaStream_t s = nullptr;
    HAE_TRY(hae_cuda_enter(be, &s));
    if (src->dtype == dst->dtype) {
        HAE_CUDA_CHECK(cudaMemcpyAsync(dst->data, src->data, hae_tensor_nbytes(src), cudaMemcpyDeviceToDevice, s));
        return HAE_OK;
    }
    convert_kernel<<<hae_cuda_blocks(n, 256), 256, 0, s>>>(src->data, src->dtype, dst->data, dst->dtype, n);
    HAE_CUDA_LAUNCH_CHECK("convert_kernel");
    return HAE_OK;
}

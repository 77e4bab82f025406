/* The FP8 lightning indexer's elementwise kernels on CUDA: blockwise e4m3 quantisation, the
 * Walsh-Hadamard rotation and the paged key cache's write. The contracts are hae.h's; the first two
 * are bit for bit indexer_cpu.c's (same fp32 operations in the same data flow, conversions ported bit
 * by bit), the write copies bytes. The logits kernel is in index_logits_cuda.cu. */
#include "cuda_check.cuh"

#include <math.h>

namespace {

constexpr int kQBlock = 128; /* values per fp8 scale */
constexpr unsigned kFull = 0xffffffffu;

/* ---------------------------------------------------------------- fp8_quant
 * One warp per block of 128 values (hae_dev_fp8_block). */

template <typename TX>
__global__ void fp8_quant_kernel(const TX *x, int64_t xs, uint8_t *q, int64_t qs, float *scale, int64_t ss, int64_t N,
                                 int64_t nb) {
    hae_pdl_enter();
    const int lane = threadIdx.x & 31;
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x / 32);
    for (int64_t w = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; w < N * nb; w += warps) {
        const int64_t n = w / nb, c = w % nb;
        const TX *xb = x + n * xs + c * kQBlock;
        uint8_t *qb = q + n * qs + c * kQBlock;
        float v[4];
        uint8_t code[4];
#pragma unroll
        for (int j = 0; j < 4; j++) v[j] = hae_ld(xb + lane + 32 * j);
        const float sc = hae_dev_fp8_block(v, code);
#pragma unroll
        for (int j = 0; j < 4; j++) qb[lane + 32 * j] = code[j];
        if (lane == 0) scale[n * ss + c] = sc;
    }
}

/* ---------------------------------------------------------------- hadamard
 * x <- H_D x / sqrt(D) with the CPU's butterfly: stage h = 1, 2, 4, ... maps (x_i, x_{i+h}), i & h = 0,
 * to (x_i + x_{i+h}, x_i - x_{i+h}); the same adds in the same data flow give the same bits whatever
 * the order the pairs run in. R = D / E threads share a row, thread r holding x_{r + R j}, j < E, in
 * registers: stages h < min(R, 32) pair lanes r ^ h (shuffles), 32 <= h < R go through the row in
 * shared memory, h >= R pair registers j ^ (h / R). E = 1 for D <= 32, D / 32 up to D = 1024 (a warp a
 * row), 32 above (D / 32 threads a row, up to 512: 128 registers a thread hold E = 32 without spills). Rows are independent, so in place is safe: a
 * thread writes back only the elements it read. */

constexpr int kHadThreads = 256;
constexpr int kHadMaxD = 16 * 1024;

template <typename TX, int E>
__global__ void __launch_bounds__(512) hadamard_kernel(TX *x, int64_t xs, int64_t N, int D, float norm) {
    extern __shared__ float row_buf[]; /* rows_per_block x D floats when R > 32 */
    hae_pdl_enter();
    const int R = D / E, rows_per_block = blockDim.x / R;
    const int r = threadIdx.x % R, sub = threadIdx.x / R;
    float *sm = row_buf + (size_t)sub * D;
    const int64_t groups = (N + rows_per_block - 1) / rows_per_block;
    /* the loop bound is the same for the whole block, so every thread meets every barrier */
    for (int64_t g = blockIdx.x; g < groups; g += gridDim.x) {
        const int64_t n = g * rows_per_block + sub;
        const bool live = n < N;
        TX *row = x + (live ? n : 0) * xs;
        float v[E];
#pragma unroll
        for (int j = 0; j < E; j++) v[j] = live ? hae_ld(row + r + R * j) : 0.0f;
        for (int h = 1; h < R; h *= 2) {
            const bool upper = (r & h) != 0;
            if (h < 32) {
#pragma unroll
                for (int j = 0; j < E; j++) {
                    const float p = __shfl_xor_sync(kFull, v[j], h);
                    v[j] = upper ? __fsub_rn(p, v[j]) : __fadd_rn(v[j], p);
                }
            } else {
#pragma unroll
                for (int j = 0; j < E; j++) sm[r + R * j] = v[j];
                __syncthreads();
#pragma unroll
                for (int j = 0; j < E; j++) {
                    const float p = sm[(r ^ h) + R * j];
                    v[j] = upper ? __fsub_rn(p, v[j]) : __fadd_rn(v[j], p);
                }
                __syncthreads();
            }
        }
#pragma unroll
        for (int m = 1; m < E; m *= 2)
#pragma unroll
            for (int j = 0; j < E; j++)
                if (!(j & m)) {
                    const float u = v[j], w = v[j | m];
                    v[j] = __fadd_rn(u, w);
                    v[j | m] = __fsub_rn(u, w);
                }
        if (live)
#pragma unroll
            for (int j = 0; j < E; j++) hae_st(row + r + R * j, __fmul_rn(v[j], norm));
    }
}

template <typename TX, int E>
hae_status launch_hadamard(const hae_hadamard_args *a, int D, float norm, int sms, cudaStream_t s) {
    const int R = D / E;
    const int rows_per_block = R >= kHadThreads ? 1 : kHadThreads / R, threads = R * rows_per_block;
    const size_t smem = R > 32 ? sizeof(float) * (size_t)rows_per_block * (size_t)D : 0;
    auto kern = hadamard_kernel<TX, E>;
    if (smem > 48 * 1024) HAE_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    const int64_t N = a->x.shape[0], groups = (N + rows_per_block - 1) / rows_per_block;
    const int64_t cap = (int64_t)sms * 32;
    const unsigned blocks = (unsigned)(groups < cap ? groups : cap);
    HAE_CUDA_CHECK(hae_launch_pdl(kern, dim3(blocks), dim3(threads), smem, s, (TX *)a->x.data, a->x.stride[0], N, D, norm));
    HAE_CUDA_LAUNCH_CHECK("hadamard_kernel");
    return HAE_OK;
}

/* ---------------------------------------------------------------- index_write
 * One warp per new key (b, t): position s = seq_lens[b] - T + t goes to page block_table[b, s / P], row
 * s % P (its D bytes, then its D / 128 scales after the page's P D bytes). seq_lens and the table are
 * not checked on the host: a key whose s is outside [0, max_pages P) or whose page is outside
 * [0, n_pages) is skipped. Two keys aimed at one slot in one call race: either may stay. */
__global__ void index_write_kernel(const uint8_t *k, int64_t k_sb, int64_t k_st, const float *ks, int64_t ks_sb,
                                   int64_t ks_st, uint8_t *pages, int64_t page_stride, int64_t n_pages,
                                   const int32_t *bt, int64_t bt_sb, int64_t max_pages, const int32_t *seq_lens,
                                   int64_t B, int64_t T, int64_t P, int D) {
    hae_pdl_enter();
    const int lane = threadIdx.x & 31, nb = D / kQBlock;
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x / 32);
    for (int64_t w = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; w < B * T; w += warps) {
        const int64_t b = w / T, t = w % T;
        const int64_t s = (int64_t)seq_lens[b] - T + t;
        if (s < 0 || s >= max_pages * P) continue;
        const int64_t page = bt[b * bt_sb + s / P];
        if (page < 0 || page >= n_pages) continue;
        uint8_t *base = pages + page * page_stride;
        const uint8_t *src = k + b * k_sb + t * k_st;
        uint8_t *dst = base + (s % P) * D;
        for (int i = lane; i < D; i += 32) dst[i] = src[i];
        const float *ssrc = ks + b * ks_sb + t * ks_st;
        float *sdst = (float *)(base + P * D) + (s % P) * nb;
        for (int i = lane; i < nb; i += 32) sdst[i] = ssrc[i];
    }
}

} // namespace

extern "C" hae_status hae_fp8_quant_cuda(hae_backend *be, const hae_fp8_quant_args *a) {
    const int64_t N = a->x.shape[0], nb = a->x.shape[1] / kQBlock;
    if (N * nb == 0) return HAE_OK;
    cudaStream_t s = nullptr;
    HAE_TRY(hae_cuda_enter(be, &s));
    const int threads = 256;
    const unsigned blocks = hae_cuda_blocks(N * nb * 32, threads);
    return hae_cuda_dispatch(a->x.dtype, "hae_fp8_quant", [&](auto tx) -> hae_status {
        using TX = decltype(tx);
        HAE_CUDA_CHECK(hae_launch_pdl(fp8_quant_kernel<TX>, dim3(blocks), dim3(threads), 0, s, (const TX *)a->x.data,
                                      a->x.stride[0], (uint8_t *)a->q.data, a->q.stride[0], (float *)a->scale.data,
                                      a->scale.stride[0], N, nb));
        HAE_CUDA_LAUNCH_CHECK("fp8_quant_kernel");
        return HAE_OK;
    });
}

extern "C" hae_status hae_hadamard_cuda(hae_backend *be, const hae_hadamard_args *a) {
    const int64_t N = a->x.shape[0], D = a->x.shape[1];
    if (N == 0) return HAE_OK;
    if (D > kHadMaxD)
        return hae_error(HAE_ERR_UNSUPPORTED, "hae_hadamard (cuda): D = %lld: at most %d (a row lives in one CTA's "
                         "registers and shared memory)", (long long)D, kHadMaxD);
    cudaStream_t s = nullptr;
    HAE_TRY(hae_cuda_enter(be, &s));
    int sms = 0;
    HAE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, be->cuda->device));
    const float norm = (float)(1.0 / sqrt((double)D));
    const int d = (int)D;
    return hae_cuda_dispatch(a->x.dtype, "hae_hadamard", [&](auto tx) -> hae_status {
        using TX = decltype(tx);
        if (d <= 32) return launch_hadamard<TX, 1>(a, d, norm, sms, s);
        if (d >= 1024) return launch_hadamard<TX, 32>(a, d, norm, sms, s);
        switch (d / 32) {
        case 2: return launch_hadamard<TX, 2>(a, d, norm, sms, s);
        case 4: return launch_hadamard<TX, 4>(a, d, norm, sms, s);
        case 8: return launch_hadamard<TX, 8>(a, d, norm, sms, s);
        default: return launch_hadamard<TX, 16>(a, d, norm, sms, s);
        }
    });
}

extern "C" hae_status hae_index_write_cuda(hae_backend *be, const hae_index_write_args *a) {
    const int64_t B = a->k.shape[0], T = a->k.shape[1], D = a->k.shape[2];
    const hae_index_cache *c = &a->cache;
    if (B * T == 0) return HAE_OK;
    cudaStream_t s = nullptr;
    HAE_TRY(hae_cuda_enter(be, &s));
    const int threads = 256;
    HAE_CUDA_CHECK(hae_launch_pdl(
        index_write_kernel, dim3(hae_cuda_blocks(B * T * 32, threads)), dim3(threads), 0, s, (const uint8_t *)a->k.data, a->k.stride[0], a->k.stride[1], (const float *)a->k_scale.data,
        a->k_scale.stride[0], a->k_scale.stride[1], (uint8_t *)c->pages.data, c->pages.stride[0], c->pages.shape[0],
        (const int32_t *)c->block_table.data, c->block_table.stride[0], c->block_table.shape[1],
        (const int32_t *)a->seq_lens.data, B, T, c->page_size, (int)D));
    HAE_CUDA_LAUNCH_CHECK("index_write_kernel");
    return HAE_OK;
}

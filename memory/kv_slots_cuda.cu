/* The token-slot cache's bookkeeping (hae_kv_slots) on CUDA: one block per sequence, the same steps as
 * memory/kv_slots.c so that both leave the same state:
 *   1. entries: a hit takes its slot and stamps it; a miss gets its rank among the misses in entry order
 *      (a block-wide scan), kept in out as -2 - rank, and its token in the fetch list;
 *   2. the LRU threshold: tau = the m-th smallest stamp among the slots not stamped at this step, by a
 *      radix select of three 11-bit passes (shared-memory histograms);
 *   3. the victims, in slot order (a scan): stamps below tau, then the first slots stamped tau; victim j
 *      takes miss j's token, evicting its own;
 *   4. each miss entry reads its slot back from the fetch list.
 * Global memory written in one step is read by other threads after __syncthreads, which orders it within
 * the block. A lookup costs a few passes over S slots: small next to the fetch it drives. */
#include "cuda_check.cuh"

#include <stdint.h>

namespace {

constexpr int kThreads = 1024;
constexpr int kBins = 2048;

struct SlotsParams {
    const int32_t *idx;
    int32_t *map, *owner, *stamp, *out, *src, *dst;
    unsigned long long *counts;
    int64_t idx_sb, map_sb, owner_sb, stamp_sb, out_sb, src_sb, dst_sb;
    int64_t cap, S, k, n, lo, hi;
    int32_t step;
};

/* Exclusive prefix sum of one flag per thread over the block; *total gets the sum. */
__device__ int block_scan(int flag, int *total) {
    __shared__ int warp_sums[kThreads / 32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int x = flag;
    for (int o = 1; o < 32; o <<= 1) {
        const int y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o) x += y;
    }
    if (lane == 31) warp_sums[warp] = x;
    __syncthreads();
    if (warp == 0) {
        int w = lane < kThreads / 32 ? warp_sums[lane] : 0;
        for (int o = 1; o < 32; o <<= 1) {
            const int y = __shfl_up_sync(0xffffffffu, w, o);
            if (lane >= o) w += y;
        }
        if (lane < kThreads / 32) warp_sums[lane] = w;
    }
    __syncthreads();
    const int before = (warp ? warp_sums[warp - 1] : 0) + x - flag;
    *total = warp_sums[kThreads / 32 - 1];
    __syncthreads(); /* warp_sums is reused by the next call */
    return before;
}

__global__ void __launch_bounds__(kThreads) kv_lookup_kernel(const SlotsParams p) {
    __shared__ unsigned hist[kBins];
    __shared__ uint32_t prefix_s;
    __shared__ long long need_s;
    const int64_t b = blockIdx.x;
    const int32_t *idx = p.idx + b * p.idx_sb;
    int32_t *map = p.map + b * p.map_sb, *owner = p.owner + b * p.owner_sb, *stamp = p.stamp + b * p.stamp_sb;
    int32_t *out = p.out + b * p.out_sb, *src = p.src + b * p.src_sb, *dst = p.dst + b * p.dst_sb;

    /* 1. hits and misses */
    long long m = 0;
    int hits = 0;
    for (int64_t base = 0; base < p.k; base += kThreads) {
        const int64_t i = base + threadIdx.x;
        int miss = 0;
        int32_t t = -1;
        if (i < p.k) {
            t = idx[i];
            if (t < 0 || t >= p.cap) {
                out[i] = -1;
            } else if (map[t] > 0) {
                const int32_t s = map[t] - 1;
                out[i] = s, stamp[s] = p.step, hits++;
            } else {
                miss = 1;
            }
        }
        int total;
        const int rank = block_scan(miss, &total);
        if (miss) out[i] = (int32_t)(-2 - (m + rank)), src[m + rank] = t;
        m += total;
    }
    for (int o = 16; o > 0; o >>= 1) hits += __shfl_down_sync(0xffffffffu, hits, o);
    if ((threadIdx.x & 31) == 0 && hits) atomicAdd(&p.counts[0], (unsigned long long)hits);
    if (threadIdx.x == 0 && m) atomicAdd(&p.counts[1], (unsigned long long)m);
    __syncthreads();

    if (m) {
        /* 2. tau: the m-th smallest stamp among the slots not used at this step */
        if (threadIdx.x == 0) prefix_s = 0, need_s = m;
        for (int shift = 22; shift >= 0; shift -= 11) {
            for (int i = threadIdx.x; i < kBins; i += kThreads) hist[i] = 0;
            __syncthreads();
            const uint64_t high = (uint64_t)prefix_s >> (shift + 11);
            for (int64_t s = threadIdx.x; s < p.S; s += kThreads) {
                const uint32_t v = (uint32_t)stamp[s];
                if (stamp[s] != p.step && ((uint64_t)v >> (shift + 11)) == high) atomicAdd(&hist[(v >> shift) & (kBins - 1)], 1u);
            }
            __syncthreads();
            if (threadIdx.x == 0) {
                long long need = need_s;
                int bin = 0;
                while (need > (long long)hist[bin]) need -= hist[bin++];
                need_s = need, prefix_s |= (uint32_t)bin << shift;
            }
            __syncthreads();
        }
        const int32_t tau = (int32_t)prefix_s;
        const long long take_equal = need_s;

        /* 3. the victims in slot order take the misses in rank order */
        long long equal_seen = 0, j0 = 0;
        for (int64_t base = 0; base < p.S && j0 < m; base += kThreads) {
            const int64_t s = base + threadIdx.x;
            const int32_t st = s < p.S ? stamp[s] : p.step;
            int equal_total, victim_total;
            const int eq = st != p.step && st == tau;
            const int eq_rank = block_scan(eq, &equal_total);
            const int victim = st != p.step && (st < tau || (eq && equal_seen + eq_rank < take_equal));
            const long long j = j0 + block_scan(victim, &victim_total);
            if (victim && j < m) {
                const int32_t t = src[j];
                if (owner[s] > 0) map[owner[s] - 1] = 0;
                owner[s] = t + 1, map[t] = (int32_t)s + 1, stamp[s] = p.step, dst[j] = (int32_t)s;
            }
            equal_seen += equal_total, j0 += victim_total;
        }
        __syncthreads();
        /* 4. each miss reads its slot */
        for (int64_t i = threadIdx.x; i < p.k; i += kThreads)
            if (out[i] <= -2) out[i] = dst[-(out[i] + 2)];
    }
    for (int64_t j = m + threadIdx.x; j < p.n; j += kThreads) src[j] = -1, dst[j] = 0;
}

/* Range: tokens [lo, hi) into slots [lo, hi), and the fetch list copying them. */
__global__ void kv_mirror_kernel(const SlotsParams p) {
    const int64_t b = blockIdx.y;
    int32_t *map = p.map + b * p.map_sb, *owner = p.owner + b * p.owner_sb, *stamp = p.stamp + b * p.stamp_sb;
    int32_t *src = p.src + b * p.src_sb, *dst = p.dst + b * p.dst_sb;
    for (int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j < p.n; j += (int64_t)gridDim.x * blockDim.x) {
        const int64_t t = p.lo + j;
        if (t < p.hi) {
            if (owner[t] > 0 && owner[t] - 1 != t) map[owner[t] - 1] = 0;
            owner[t] = (int32_t)t + 1, map[t] = (int32_t)t + 1, stamp[t] = p.step;
            src[j] = dst[j] = (int32_t)t;
        } else {
            src[j] = -1, dst[j] = 0;
        }
    }
}

} // namespace

extern "C" hae_status hae_kv_slots_cuda(hae_backend *be, const hae_kv_slots_args *a) {
    cudaStream_t stream;
    HAE_TRY(hae_cuda_enter(be, &stream));
    SlotsParams p = {};
    p.idx = (const int32_t *)a->idx.data;
    p.map = (int32_t *)a->map.data, p.owner = (int32_t *)a->owner.data, p.stamp = (int32_t *)a->stamp.data;
    p.out = (int32_t *)a->out.data, p.src = (int32_t *)a->src_rows.data, p.dst = (int32_t *)a->dst_rows.data;
    p.counts = (unsigned long long *)a->counts.data;
    p.idx_sb = a->idx.stride[0], p.map_sb = a->map.stride[0], p.owner_sb = a->owner.stride[0];
    p.stamp_sb = a->stamp.stride[0], p.out_sb = a->out.stride[0], p.src_sb = a->src_rows.stride[0];
    p.dst_sb = a->dst_rows.stride[0];
    p.cap = a->map.shape[1], p.S = a->owner.shape[1], p.n = a->src_rows.shape[1];
    p.k = a->idx.data ? a->idx.shape[1] : 0, p.lo = a->lo, p.hi = a->hi, p.step = a->step;
    const unsigned B = (unsigned)a->map.shape[0];
    if (a->idx.data) {
        kv_lookup_kernel<<<B, kThreads, 0, stream>>>(p);
        HAE_CUDA_LAUNCH_CHECK("kv_lookup_kernel");
    } else {
        kv_mirror_kernel<<<dim3(hae_cuda_blocks(p.n, 256), B), 256, 0, stream>>>(p);
        HAE_CUDA_LAUNCH_CHECK("kv_mirror_kernel");
    }
    return HAE_OK;
}

/* Top-k selection on CUDA; the contract is hae.h's hae_topk and the output is indexer_cpu.c's, index
 * for index.
 *
 * Every float maps to the CPU's order key (a uint32 ordered like the float; -0 folds onto +0, NaN onto
 * 0, below -inf). Row r keeps the k largest keys of its first n = clamp(lens[r], 0, L) logits, ties
 * to the lower index: with K the k-th largest key and ties = k - #{key > K}, every key > K and the
 * first `ties` keys == K, written in index order. That set is unique, so any exact method matches the
 * CPU's. Rows with n <= k are 0 .. n-1, then -1.
 *
 * A row is split over a cluster of C CTAs (C = 1, 2, 4 or 8, picked at launch from R and L): CTA c
 * takes a contiguous chunk of the row and each of its 16 warps a contiguous segment of the chunk, so
 * (CTA, warp, step of 32 lanes) order is index order.
 *  1. K by radix select over digits of 12, 10 and 10 bits, most significant first. Per digit each CTA
 *     builds a shared-memory histogram of its keys that share the digits fixed so far (one atomic per
 *     warp when its 32 keys fall in one bin: runs of equal logits), CTA c sums slice c of the C
 *     histograms through distributed shared memory and writes the sums into every CTA, and each CTA
 *     scans them from the top bin down to the bin d holding the need-th largest key (need -= keys
 *     above d; need ends as `ties`).
 *  2. A chunk of up to 16K logits is read from global memory once: the first pass copies it into shared
 *     memory (cp.async, the whole chunk in flight at once); a longer one is read again after the first
 *     pass. Then each warp compacts, in index order, the keys whose first digit is >= d (every key > K
 *     is one; a few hundred of 16K for most rows) into its own part of shared memory, and the later
 *     passes walk those. When a part overflows (many ties, or a large k) they walk the cached chunk,
 *     or re-read the uncached one.
 *  3. Emission: each warp counts its keys > K and == K; the counts of the warps and CTAs before it
 *     (distributed shared memory again) start its running counts, and a key at index i that is > K, or
 *     == K with fewer than `ties` equal keys before it, goes to out[#{> K before i} +
 *     min(#{== K before i}, ties)]: ascending without a sort. */
#include "cuda_check.cuh"

#include <cooperative_groups.h>
#include <limits.h>

namespace cg = cooperative_groups;

namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxCluster = 8;                           /* the portable cluster size */
constexpr int kCacheLogits = 16384;                      /* a chunk's logits cached in shared memory */
constexpr int kBins0 = 4096, kBins12 = 1024;             /* 12-bit, then two 10-bit digits */
/* Candidates (key, index) a warp may keep: beside a cached chunk, and in place of the cache. */
constexpr int kListCached = (kBins0 - kBins12) / kWarps;
constexpr int kListUncached = kCacheLogits / 2 / kWarps;
constexpr int kUnroll = 8;                               /* global loads in flight per lane */
constexpr int64_t kMinChunk = 2048;                      /* a row is not split finer to fill the GPU */
constexpr int kMaxDevices = 64;                          /* devices whose launch facts are remembered */
constexpr size_t kSmemBytes = (size_t)(2 * kBins0 + kCacheLogits) * sizeof(uint32_t);

struct TopkParams {
    const float *x; /* [R, L] row stride ldx */
    int64_t ldx;
    const int32_t *lens; /* [R] */
    int32_t *out;        /* [R, k] row stride ldo */
    int64_t ldo, L, k;
};

/* Per CTA: the block scan's warp sums, each warp's counts of keys > K and == K (read by later CTAs of
 * the cluster), and the digit select_bin found. */
struct TopkShared {
    uint32_t warp_sum[kWarps];
    uint32_t n_gt[kWarps], n_eq[kWarps];
    uint32_t digit, need;
};

enum Source { FROM_GLOBAL, FROM_CACHE, FROM_LIST };

/* The keys one warp walks, in index order. */
struct Segment {
    Source src;
    const float *x;       /* FROM_GLOBAL: the row; FROM_CACHE: the segment's logits in shared memory */
    int64_t first;        /* FROM_GLOBAL, FROM_CACHE: the row index of item 0 */
    const uint32_t *key;  /* FROM_LIST: item j's key */
    const int32_t *index; /* FROM_LIST: item j's row index */
    int64_t n;
};

__device__ __forceinline__ uint32_t order_key(float f) {
    const uint32_t u = __float_as_uint(f);
    uint32_t key = u ^ ((uint32_t)-(int32_t)(u >> 31) | 0x80000000u);
    key = key == 0x7fffffffu ? 0x80000000u : key; /* -0 */
    return (u & 0x7fffffffu) > 0x7f800000u ? 0u : key;
}

/* f(j, row index, key, valid) for items j of the segment, 32 at a time (lane j % 32); every lane of
 * the warp takes part in every call (valid is false past the end), so f may use warp votes. */
template <class F> __device__ __forceinline__ void walk(const Segment &s, F &&f) {
    const int lane = threadIdx.x & 31;
    if (s.src == FROM_GLOBAL) {
        for (int64_t j0 = 0; j0 < s.n; j0 += 32 * kUnroll) {
            float v[kUnroll];
#pragma unroll
            for (int u = 0; u < kUnroll; u++) {
                const int64_t j = j0 + 32 * u + lane;
                v[u] = j < s.n ? __ldg(s.x + s.first + j) : 0.0f;
            }
#pragma unroll
            for (int u = 0; u < kUnroll; u++) {
                const int64_t j = j0 + 32 * u + lane;
                f(j, s.first + j, order_key(v[u]), j < s.n);
            }
        }
    } else {
        const bool list = s.src == FROM_LIST;
        for (int64_t j0 = 0; j0 < s.n; j0 += 32) {
            const int64_t j = j0 + lane;
            const bool ok = j < s.n;
            const uint32_t key = !ok ? 0u : list ? s.key[j] : order_key(s.x[j]);
            const int64_t i = !list ? s.first + j : ok ? (int64_t)s.index[j] : -1;
            f(j, i, key, ok);
        }
    }
}

/* *dst = *src (4 bytes) through cp.async: no register waits for it, so a warp puts its whole segment in
 * flight at once; copy_wait makes the lane's copies visible to the warp. */
__device__ __forceinline__ void copy_async(float *dst, const float *src) {
    const uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(d), "l"(src) : "memory");
}
__device__ __forceinline__ void copy_wait() {
    asm volatile("cp.async.wait_all;\n" ::: "memory");
    __syncwarp();
}

/* h[bin] += 1 for the lanes with `in`: one atomic for the warp when those lanes agree on the bin, so
 * a row of equal logits does not serialise 32 atomics on one address. */
__device__ __forceinline__ void hist_add(uint32_t *h, uint32_t bin, bool in) {
    const unsigned m = __ballot_sync(~0u, in);
    if (!m) return;
    const int lead = __ffs(m) - 1;
    const uint32_t b0 = __shfl_sync(~0u, bin, lead);
    if (__all_sync(~0u, !in || bin == b0)) {
        if ((int)(threadIdx.x & 31) == lead) atomicAdd(&h[b0], (uint32_t)__popc(m));
    } else if (in) {
        atomicAdd(&h[bin], 1u);
    }
}

/* Exclusive prefix sum of v over the block's threads in thread order; *total gets the whole sum. */
__device__ uint32_t block_exclusive_sum(uint32_t v, uint32_t *total, TopkShared &sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    uint32_t x = v;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
        const uint32_t y = __shfl_up_sync(~0u, x, off);
        if (lane >= off) x += y;
    }
    if (lane == 31) sh.warp_sum[warp] = x;
    __syncthreads();
    uint32_t before = 0, all = 0;
#pragma unroll
    for (int w = 0; w < kWarps; w++) {
        const uint32_t t = sh.warp_sum[w];
        before += w < warp ? t : 0u;
        all += t;
    }
    *total = all;
    return before + x - v;
}

/* The bin d of counts t[0, nb) holding the need-th largest key, counting from the top bin, and need
 * less the keys in the bins above d. The caller guarantees sum(t) >= need >= 1, so exactly one bin
 * qualifies. Ends with every thread holding the answer. */
__device__ void select_bin(const uint32_t *t, int nb, uint32_t &digit, uint32_t &need, TopkShared &sh) {
    const int per = nb / kThreads, b0 = (int)threadIdx.x * per;
    uint32_t own = 0;
    for (int i = 0; i < per; i++) own += t[b0 + i];
    uint32_t total;
    const uint32_t before = block_exclusive_sum(own, &total, sh);
    uint32_t above = total - before - own; /* the bins of the threads after this one */
    for (int b = b0 + per - 1; b >= b0; b--) {
        const uint32_t c = t[b];
        if (above < need && above + c >= need) {
            sh.digit = (uint32_t)b;
            sh.need = need - above;
        }
        above += c;
    }
    __syncthreads();
    digit = sh.digit;
    need = sh.need;
}

/* One row per cluster of C = gridDim.x / R CTAs; kThreads threads, kSmemBytes of dynamic shared memory. */
__global__ void __launch_bounds__(kThreads, 2) topk_kernel(const TopkParams p) {
    extern __shared__ __align__(16) uint32_t smem[];
    __shared__ TopkShared sh;
    uint32_t *hist = smem, *sums = smem + kBins0, *data = smem + 2 * kBins0;
    cg::cluster_group cluster = cg::this_cluster();
    const int C = (int)cluster.num_blocks(), c = (int)cluster.block_rank();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t r = blockIdx.x / C;
    int32_t *out = p.out + r * p.ldo;
    int64_t n = p.lens[r]; /* unchecked on the host: clamp, never read outside the row */
    n = n < 0 ? 0 : n > p.L ? p.L : n;
    if (n <= p.k) { /* the same branch in every CTA of the cluster, before any cluster barrier */
        for (int64_t j = (int64_t)c * kThreads + threadIdx.x; j < p.k; j += (int64_t)C * kThreads)
            out[j] = j < n ? (int32_t)j : -1;
        return;
    }

    /* This CTA's chunk [start, start + m) and this warp's segment of it; multiples of 32 logits. */
    const int64_t per = ((n + C - 1) / C + 31) / 32 * 32;
    const int64_t start = min((int64_t)c * per, n), m = min(per, n - start);
    const int64_t seg = ((m + kWarps - 1) / kWarps + 31) / 32 * 32;
    const int64_t lo = min((int64_t)warp * seg, m);
    Segment s = {FROM_GLOBAL, p.x + r * p.ldx, start + lo, nullptr, nullptr, min(seg, m - lo)};
    const bool cached = m <= kCacheLogits;

    uint32_t prefix = 0, mask = 0, need = (uint32_t)p.k; /* k < n <= INT32_MAX here */
    for (int pass = 0; pass < 3; pass++) {
        const int shift = pass == 0 ? 20 : pass == 1 ? 10 : 0, nb = pass == 0 ? kBins0 : kBins12;
        /* The last readers of hist (this CTA's select_bin, other CTAs' sums) are past a barrier. */
        for (int b = threadIdx.x; b < nb; b += kThreads) hist[b] = 0;
        __syncthreads();
        if (pass == 0 && cached) { /* each warp caches its own segment, and reads only that */
            float *mine = (float *)data + lo;
            for (int64_t j = lane; j < s.n; j += 32) copy_async(mine + j, s.x + s.first + j);
            copy_wait();
            s.src = FROM_CACHE;
            s.x = mine;
        }
        walk(s, [&](int64_t, int64_t, uint32_t key, bool ok) {
            hist_add(hist, (key >> shift) & (uint32_t)(nb - 1), ok && (key & mask) == prefix);
        });
        cluster.sync(); /* every CTA's histogram is complete */
        const uint32_t *counts = hist;
        if (C > 1) {
            const int slice = nb / C;
            for (int b = c * slice + (int)threadIdx.x; b < (c + 1) * slice; b += kThreads) {
                uint32_t t = 0;
                for (int q = 0; q < C; q++) t += cluster.map_shared_rank(hist, q)[b];
                for (int q = 0; q < C; q++) cluster.map_shared_rank(sums, q)[b] = t;
            }
            cluster.sync(); /* sums complete everywhere; no CTA reads another's hist after this */
            counts = sums;
        }
        uint32_t digit;
        select_bin(counts, nb, digit, need, sh);
        prefix |= digit << shift;
        mask |= (uint32_t)(nb - 1) << shift;

        if (pass == 0) {
            /* The candidates: beside a cached chunk, in the first digit's bins the later digits do not
             * use (every CTA is past its last read of them); else where the cache would be. */
            const int64_t cap = cached ? kListCached : kListUncached;
            uint32_t *lkey = cached ? hist + kBins12 + warp * cap : data + warp * cap;
            int32_t *lidx = (int32_t *)(cached ? sums + kBins12 : data + kWarps * kListUncached) + warp * cap;
            const unsigned below = (1u << lane) - 1u;
            int64_t cnt = 0;
            walk(s, [&](int64_t, int64_t i, uint32_t key, bool ok) {
                const bool keep = ok && (key >> 20) >= digit;
                const unsigned b = __ballot_sync(~0u, keep);
                const int64_t at = cnt + __popc(b & below);
                if (keep && at < cap) {
                    lkey[at] = key;
                    lidx[at] = (int32_t)i;
                }
                cnt += __popc(b);
            });
            if (!__syncthreads_or(cnt > cap)) {
                s.src = FROM_LIST;
                s.key = lkey;
                s.index = lidx;
                s.n = cnt;
            }
        }
    }

    const uint32_t K = prefix, ties = need;
    uint32_t gt = 0, eq = 0;
    walk(s, [&](int64_t, int64_t, uint32_t key, bool ok) {
        gt += (uint32_t)__popc(__ballot_sync(~0u, ok && key > K));
        eq += (uint32_t)__popc(__ballot_sync(~0u, ok && key == K));
    });
    if (lane == 0) {
        sh.n_gt[warp] = gt;
        sh.n_eq[warp] = eq;
    }
    cluster.sync(); /* every warp's counts are published */
    uint32_t gt_run = lane < warp ? sh.n_gt[lane] : 0u, eq_run = lane < warp ? sh.n_eq[lane] : 0u;
    for (int q = 0; q < c; q++)
        if (lane < kWarps) {
            gt_run += cluster.map_shared_rank(sh.n_gt, q)[lane];
            eq_run += cluster.map_shared_rank(sh.n_eq, q)[lane];
        }
    gt_run = __reduce_add_sync(~0u, gt_run);
    eq_run = __reduce_add_sync(~0u, eq_run);
    cluster.barrier_arrive(); /* done reading other CTAs' shared memory */

    const unsigned below = (1u << lane) - 1u;
    walk(s, [&](int64_t, int64_t i, uint32_t key, bool ok) {
        const bool g = ok && key > K, e = ok && key == K;
        const unsigned bg = __ballot_sync(~0u, g), be = __ballot_sync(~0u, e);
        const uint32_t gb = gt_run + (uint32_t)__popc(bg & below), eb = eq_run + (uint32_t)__popc(be & below);
        int64_t at = -1;
        if (g) at = (int64_t)gb + min(eb, ties);
        else if (e && eb < ties) at = (int64_t)gb + eb;
        if (at >= 0 && at < p.k) out[at] = (int32_t)i;
        gt_run += (uint32_t)__popc(bg);
        eq_run += (uint32_t)__popc(be);
    });
    cluster.barrier_wait(); /* no CTA leaves while another may still read its shared memory */
}

} // namespace

extern "C" hae_status hae_topk_cuda(hae_backend *be, const hae_topk_args *a) {
    const int64_t R = a->logits.shape[0], L = a->logits.shape[1], k = a->out.shape[1];
    if (R == 0) return HAE_OK;
    if (L > INT32_MAX)
        return hae_error(HAE_ERR_UNSUPPORTED, "hae_topk (cuda): rows of %lld logits: indices are i32", (long long)L);
    cudaStream_t s = nullptr;
    HAE_TRY(hae_cuda_enter(be, &s));
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = 1;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.blockDim = dim3(kThreads);
    cfg.dynamicSmemBytes = kSmemBytes;
    cfg.stream = s;
    cfg.attrs = attr;
    cfg.numAttrs = 1;

    /* Per device, once: the kernel's shared-memory limit, the SM count and the largest cluster the
     * device can hold (no host work between a caller's events and the launch but the launch).
     * Doing it twice is harmless. */
    static int sms_of[kMaxDevices], cluster_of[kMaxDevices];
    const int dev = be->cuda->device;
    const bool known = dev >= 0 && dev < kMaxDevices && sms_of[dev] > 0;
    int sms = known ? sms_of[dev] : 0, max_c = known ? cluster_of[dev] : 0;
    if (!known) {
        HAE_CUDA_CHECK(
            cudaFuncSetAttribute(topk_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)kSmemBytes));
        HAE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
        for (max_c = kMaxCluster; max_c > 1; max_c /= 2) {
            int active = 0;
            attr[0].val.clusterDim.x = (unsigned)max_c;
            cfg.gridDim = dim3((unsigned)max_c);
            if (cudaOccupancyMaxActiveClusters(&active, topk_kernel, &cfg) != cudaSuccess) {
                (void)cudaGetLastError(); /* a size it refuses: try a smaller one */
                active = 0;
            }
            if (active > 0) break;
        }
        if (dev >= 0 && dev < kMaxDevices) cluster_of[dev] = max_c, sms_of[dev] = sms; /* sms_of last: "known" */
    }

    /* The fewest CTAs a row whose chunks fit the key cache, then more while the GPU would sit idle. */
    int64_t C = 1;
    while (C < max_c && ((L + C - 1) / C + 31) / 32 * 32 > kCacheLogits) C *= 2;
    while (C < max_c && R * C < 2 * (int64_t)sms && L / (2 * C) >= kMinChunk) C *= 2;
    if (R * C > INT_MAX)
        return hae_error(HAE_ERR_UNSUPPORTED, "hae_topk (cuda): %lld rows of %lld logits need %lld CTAs, over %d",
                         (long long)R, (long long)L, (long long)(R * C), INT_MAX);

    TopkParams p;
    p.x = (const float *)a->logits.data;
    p.ldx = a->logits.stride[0];
    p.lens = (const int32_t *)a->lens.data;
    p.out = (int32_t *)a->out.data;
    p.ldo = a->out.stride[0];
    p.L = L;
    p.k = k;

    attr[0].val.clusterDim.x = (unsigned)C;
    cfg.gridDim = dim3((unsigned)(R * C));
    HAE_CUDA_CHECK(cudaLaunchKernelEx(&cfg, topk_kernel, p));
    HAE_CUDA_LAUNCH_CHECK("topk_kernel");
    return HAE_OK;
}

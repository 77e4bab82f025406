/* Top-k selection on CUDA; the contract is hae.h's hae_topk and the output is indexer_cpu.c's, index
 * for index.
 *
 * Every float maps to the CPU's order key (a uint32 ordered like the float; -0 folds onto +0, NaN onto
 * 0, below -inf). Row r keeps the k largest keys of its first n = clamp(lens[r], 0, L) logits, ties
 * to the lower index: with K the k-th largest key and ties = k - #{key > K}, every key > K and the
 * first `ties` keys == K, written in index order. That set is unique, so any exact method matches the
 * CPU's. Rows with n <= k are 0 .. n-1, then -1.
 *
 * A row is split over a cluster of C CTAs of T threads (C = 1, 2, 4, 8 or 16; T = 512 or 1024; picked
 * at launch from R and L, see hae_topk_cuda_with): CTA c takes a contiguous chunk of the row and each
 * of its warps a contiguous segment of the chunk, so (CTA, warp, step of 32 lanes) order is index
 * order.
 *  1. K by radix select over digits of 12, 10 and 10 bits, most significant first. Per digit each CTA
 *     builds a shared-memory histogram of its keys that share the digits fixed so far (one atomic for
 *     the lanes that agree with the warp's first lane: runs of equal logits) and its sums over groups
 *     of sqrt(bins) bins. After one cluster barrier warp 0 of every CTA reads the group sums of all C
 *     CTAs (distributed shared memory), finds the group holding the need-th largest key counting from
 *     the top, then reads that group's bins of all C CTAs and finds the bin d (need -= keys above d).
 *     Each pass has its own histogram (all zeroed at the start): no second barrier guards a reuse.
 *     When d holds exactly `need` keys every key of d is taken and the later digits are not needed.
 *  2. The first pass reads the segment from global memory 32 x 16 logits a warp at a time (16 loads in
 *     flight a lane); a segment of one such tile stays in registers. Then each warp compacts, in
 *     index order, the keys whose first digit is >= d (every key > K is one; a few hundred of 128K for
 *     most rows) into its part of shared memory (up to 512), re-reading a longer segment; the later
 *     passes walk those. A warp whose part overflows (many ties) re-reads its segment every pass.
 *  3. Emission: each warp counts its keys > K and == K (on the digits resolved); the counts of the
 *     warps and CTAs before it (distributed shared memory again) start its running counts, and a key
 *     at index i that is > K, or == K with fewer than `ties` equal keys before it, goes to
 *     out[#{> K before i} + min(#{== K before i}, ties)]: ascending without a sort. */
#include "cuda_check.cuh"

#include <cooperative_groups.h>
#include <limits.h>

namespace cg = cooperative_groups;

namespace {

constexpr int kU = 16;          /* logits a lane loads per tile: its loads in flight */
constexpr int kTile = 32 * kU;  /* a warp's tile, and the candidates a warp keeps */
constexpr int kMaxCluster = 16; /* non-portable beyond 8 */
constexpr int kBins0 = 4096, kGroups0 = 64; /* 12-bit digit, then two of 10 bits */
constexpr int kBins1 = 1024, kGroups1 = 32;
/* Shared words: each pass's histogram and group sums, then the candidates' keys and indices. */
constexpr int kHist0 = 0, kHist1 = kHist0 + kBins0, kHist2 = kHist1 + kBins1;
constexpr int kSum0 = kHist2 + kBins1, kSum1 = kSum0 + kGroups0, kSum2 = kSum1 + kGroups1;
constexpr int kHistWords = kSum2 + kGroups1;
constexpr int kMaxDevices = 64; /* devices whose launch facts are remembered */

template <int T> constexpr size_t smem_bytes() {
    return (size_t)kHistWords * sizeof(uint32_t) + (size_t)(T / 32) * kTile * (sizeof(uint32_t) + sizeof(int32_t));
}

struct TopkParams {
    const float *x; /* [R, L] row stride ldx */
    int64_t ldx;
    const int32_t *lens; /* [R] */
    int32_t *out;        /* [R, k] row stride ldo */
    int64_t ldo, L, k;
    unsigned long long *stamps; /* NULL, or 9 clock64() readings of CTA 0 */
};

/* Per CTA: the select's answer, each warp's counts of keys > K and == K and their sums (read by later
 * CTAs of the cluster). */
template <int W> struct TopkShared {
    uint32_t digit, need, count;
    uint32_t n_gt[W], n_eq[W];
    uint32_t tot_gt, tot_eq;
};

#define STAMP(i)                                                                                   \
    do {                                                                                           \
        if (p.stamps && blockIdx.x == 0 && threadIdx.x == 0) p.stamps[i] = clock64();              \
    } while (0)

enum Source { FROM_GLOBAL, FROM_LIST };

/* The keys one warp walks, in index order. Offsets in a row fit 32 bits: n <= INT32_MAX, so even
 * n + 32 kU does not wrap. */
struct Segment {
    Source src;
    const float *x;       /* FROM_GLOBAL: the row */
    uint32_t first;       /* FROM_GLOBAL: the row index of item 0 */
    const uint32_t *key;  /* FROM_LIST: item j's key */
    const int32_t *index; /* FROM_LIST: item j's row index */
    uint32_t n;
};

/* Warp w's part [first, first + n) of a row of n logits split over C CTAs; multiples of 32 logits. */
struct Span {
    uint32_t first, n;
};
__device__ __forceinline__ Span warp_span(uint32_t n, int C, int c, int W, int w) {
    const uint32_t per = ((n + C - 1) / C + 31) / 32 * 32;
    const uint32_t start = min((uint32_t)c * per, n), m = min(per, n - start);
    const uint32_t seg = ((m + W - 1) / W + 31) / 32 * 32;
    const uint32_t lo = min((uint32_t)w * seg, m);
    return {start + lo, min(seg, m - lo)};
}

__device__ __forceinline__ uint32_t order_key(float f) {
    const uint32_t u = __float_as_uint(f);
    uint32_t key = u ^ ((uint32_t)-(int32_t)(u >> 31) | 0x80000000u);
    key = key == 0x7fffffffu ? 0x80000000u : key; /* -0 */
    return (u & 0x7fffffffu) > 0x7f800000u ? 0u : key;
}

/* v[u] = x[j0 + 32 u + lane] for those below n: a warp's tile, every load in flight at once. */
__device__ __forceinline__ void load_tile(float (&v)[kU], const float *x, uint32_t n, uint32_t j0) {
    const uint32_t lane = threadIdx.x & 31;
#pragma unroll
    for (int u = 0; u < kU; u++) {
        const uint32_t j = j0 + 32 * u + lane;
        v[u] = j < n ? __ldg(x + j) : 0.0f;
    }
}

/* f(row index, key, valid) for the segment's items, 32 at a time; every lane of the warp takes part
 * in every call (valid is false past the end), so f may use warp votes. */
template <class F> __device__ __forceinline__ void walk(const Segment &s, F &&f) {
    const uint32_t lane = threadIdx.x & 31;
    if (s.src == FROM_GLOBAL) {
        for (uint32_t j0 = 0; j0 < s.n; j0 += kTile) {
            float v[kU];
            load_tile(v, s.x + s.first, s.n, j0);
#pragma unroll
            for (int u = 0; u < kU; u++) {
                const uint32_t j = j0 + 32 * u + lane;
                f(s.first + j, order_key(v[u]), j < s.n);
            }
        }
    } else {
        for (uint32_t j0 = 0; j0 < s.n; j0 += 32) {
            const uint32_t j = j0 + lane;
            const bool ok = j < s.n;
            f(ok ? (uint32_t)s.index[j] : 0u, ok ? s.key[j] : 0u, ok);
        }
    }
}

/* h[bin] += 1 for the lanes with `in`: the lanes that agree with the first one add in one atomic, so
 * a row of equal logits (or of zeros among a few others) does not serialise 32 atomics on one address. */
__device__ __forceinline__ void hist_add(uint32_t *h, uint32_t bin, bool in) {
    const unsigned m = __ballot_sync(~0u, in);
    if (!m) return;
    const int lead = __ffs(m) - 1;
    const uint32_t b0 = __shfl_sync(~0u, bin, lead);
    const unsigned same = __ballot_sync(~0u, in && bin == b0);
    if ((int)(threadIdx.x & 31) == lead) atomicAdd(&h[b0], (uint32_t)__popc(same));
    else if (in && bin != b0) atomicAdd(&h[bin], 1u);
}

/* g[j] = the sum of h's bins [j NB / NG, (j + 1) NB / NG), by T threads; h is complete. */
template <int NB, int NG, int T> __device__ __forceinline__ void group_sums(const uint32_t *h, uint32_t *g) {
    constexpr int per = NB / T, tpg = T / NG; /* bins a thread, threads a group */
    static_assert(per >= 1 && tpg >= 1 && tpg <= 32 && per * tpg * NG == NB, "group layout");
    uint32_t s = 0;
#pragma unroll
    for (int i = 0; i < per; i++) s += h[threadIdx.x * per + i];
#pragma unroll
    for (int o = tpg / 2; o > 0; o >>= 1) s += __shfl_xor_sync(~0u, s, o);
    if (threadIdx.x % tpg == 0) g[threadIdx.x / tpg] = s;
}

/* v[i] = sum over the cluster's C CTAs of their word w[at + i] (this CTA's own when C == 1). */
template <int P>
__device__ __forceinline__ void cluster_sum(uint32_t (&v)[P], uint32_t *w, int at, cg::cluster_group &cluster, int C) {
#pragma unroll
    for (int i = 0; i < P; i++) v[i] = C == 1 ? w[at + i] : 0u;
    if (C == 1) return;
#pragma unroll
    for (int q = 0; q < kMaxCluster; q++)
        if (q < C) {
            const uint32_t *src = cluster.map_shared_rank(w, q);
#pragma unroll
            for (int i = 0; i < P; i++) v[i] += src[at + i];
        }
}

/* For one warp, lane l holding counts c[0, P) of bins l P .. l P + P - 1: the bin holding the need-th
 * largest key counting from the top bin, need less the keys in the bins above it, and its count. The
 * caller guarantees sum >= need >= 1, so exactly one bin qualifies; every lane gets the answer. */
template <int P>
__device__ __forceinline__ void warp_select(const uint32_t (&c)[P], uint32_t need, uint32_t &bin, uint32_t &rest,
                                            uint32_t &count) {
    const int lane = threadIdx.x & 31;
    uint32_t own = 0;
#pragma unroll
    for (int i = 0; i < P; i++) own += c[i];
    uint32_t suffix = own; /* the lanes >= this one */
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
        const uint32_t y = __shfl_down_sync(~0u, suffix, off);
        if (lane + off < 32) suffix += y;
    }
    uint32_t above = suffix - own;
    int hit = -1;
    uint32_t r = 0, n = 0;
#pragma unroll
    for (int i = P - 1; i >= 0; i--) {
        if (above < need && above + c[i] >= need) hit = lane * P + i, r = need - above, n = c[i];
        above += c[i];
    }
    const unsigned m = __ballot_sync(~0u, hit >= 0);
    const int src = m ? __ffs(m) - 1 : 0;
    bin = (uint32_t)max(__shfl_sync(~0u, hit, src), 0); /* never out of the bins, even on broken counts */
    rest = __shfl_sync(~0u, r, src);
    count = __shfl_sync(~0u, n, src);
}

/* The digit of the need-th largest key from the cluster's histograms h (NB bins, complete in every
 * CTA, as are their NG group sums g): warp 0 picks the group, then the bin; need becomes the rank
 * within the bin and count the bin's keys. Ends with every thread holding the answer. */
template <int NB, int NG, int W>
__device__ __forceinline__ void select_digit(uint32_t *h, uint32_t *g, uint32_t &digit, uint32_t &need,
                                             uint32_t &count, cg::cluster_group &cluster, int C, TopkShared<W> &sh) {
    constexpr int B = NB / NG, PG = NG / 32, PB = B / 32;
    static_assert(PG >= 1 && PB >= 1 && PG * 32 == NG && PB * 32 == B, "select layout");
    if (threadIdx.x < 32) {
        const int lane = threadIdx.x;
        uint32_t gc[PG], grp, need1, n1;
        cluster_sum(gc, g, lane * PG, cluster, C);
        warp_select(gc, need, grp, need1, n1);
        uint32_t bc[PB], bin, need2, n2;
        cluster_sum(bc, h, (int)grp * B + lane * PB, cluster, C);
        warp_select(bc, need1, bin, need2, n2);
        if (lane == 0) {
            sh.digit = grp * B + bin;
            sh.need = need2;
            sh.count = n2;
        }
    }
    __syncthreads();
    digit = sh.digit;
    need = sh.need;
    count = sh.count;
}

__device__ __forceinline__ void prefetch_l2(const float *p) {
    asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p));
}

/* One row per cluster of C = gridDim.x / R CTAs of T threads, smem_bytes<T>() of dynamic shared memory. */
template <int T> __global__ void __launch_bounds__(T, 1024 / T) topk_kernel(const TopkParams p) {
    constexpr int W = T / 32;
    extern __shared__ __align__(16) uint32_t smem[];
    __shared__ TopkShared<W> sh;
    hae_pdl_enter();
    cg::cluster_group cluster = cg::this_cluster();
    const int C = (int)cluster.num_blocks(), c = (int)cluster.block_rank();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t r = blockIdx.x / C;
    const float *row = p.x + r * p.ldx;
    STAMP(0);
    { /* this warp's first tile into L2 as if lens[r] were L, while lens[r] is on its way */
        const Span g = warp_span((uint32_t)p.L, C, c, W, warp);
        if (lane < kU && 32 * lane < g.n) prefetch_l2(row + g.first + 32 * lane);
    }
    int32_t *out = p.out + r * p.ldo;
    int64_t n = p.lens[r]; /* unchecked on the host: clamp, never read outside the row */
    n = n < 0 ? 0 : n > p.L ? p.L : n;
    if (n <= p.k) { /* the same branch in every CTA of the cluster, before any cluster barrier */
        for (int64_t j = (int64_t)c * T + threadIdx.x; j < p.k; j += (int64_t)C * T) out[j] = j < n ? (int32_t)j : -1;
        return;
    }
    for (int i = threadIdx.x; i < kHistWords; i += T) smem[i] = 0;
    __syncthreads();
    STAMP(1);

    const uint32_t k = (uint32_t)p.k; /* k < n <= INT32_MAX here */
    const Span sp = warp_span((uint32_t)n, C, c, W, warp);
    Segment s = {FROM_GLOBAL, row, sp.first, nullptr, nullptr, sp.n};

    /* Pass 0: the first digit of every key; the keys of a one-tile segment stay in registers. */
    uint32_t key[kU];
#pragma unroll
    for (int u = 0; u < kU; u++) key[u] = 0;
    for (uint32_t j0 = 0; j0 < s.n; j0 += kTile) {
        float v[kU];
        load_tile(v, row + s.first, s.n, j0);
#pragma unroll
        for (int u = 0; u < kU; u++) {
            key[u] = order_key(v[u]);
            hist_add(smem + kHist0, key[u] >> 20, j0 + 32 * u + lane < s.n);
        }
    }
    __syncthreads();
    group_sums<kBins0, kGroups0, T>(smem + kHist0, smem + kSum0);
    STAMP(2);
    if (C > 1) cluster.sync(); /* every CTA's histogram and group sums are complete */
    else __syncthreads();
    uint32_t digit, need = k, count;
    select_digit<kBins0, kGroups0>(smem + kHist0, smem + kSum0, digit, need, count, cluster, C, sh);
    uint32_t prefix = digit << 20, mask = 0xfff00000u;
    STAMP(3);

    { /* The candidates: keys whose first digit is >= d, in index order. */
        uint32_t *lkey = smem + kHistWords + warp * kTile;
        int32_t *lidx = (int32_t *)(smem + kHistWords + W * kTile) + warp * kTile;
        const unsigned below = (1u << lane) - 1u;
        uint32_t cnt = 0;
        auto keep = [&](uint32_t i, uint32_t kk, bool ok) {
            const bool in = ok && (kk >> 20) >= digit;
            const unsigned b = __ballot_sync(~0u, in);
            const uint32_t at = cnt + (uint32_t)__popc(b & below);
            if (in && at < (uint32_t)kTile) {
                lkey[at] = kk;
                lidx[at] = (int32_t)i;
            }
            cnt += (uint32_t)__popc(b);
        };
        if (s.n <= kTile) {
#pragma unroll
            for (int u = 0; u < kU; u++) keep(s.first + 32 * u + lane, key[u], 32u * u + lane < s.n);
        } else {
            walk(s, keep);
        }
        if (cnt <= (uint32_t)kTile) {
            s.src = FROM_LIST;
            s.key = lkey;
            s.index = lidx;
            s.n = cnt;
        }
    }
    STAMP(4);

    for (int pass = 1; pass < 3 && count != need; pass++) {
        const int shift = pass == 1 ? 10 : 0;
        uint32_t *h = smem + (pass == 1 ? kHist1 : kHist2), *g = smem + (pass == 1 ? kSum1 : kSum2);
        walk(s, [&](uint32_t, uint32_t kk, bool ok) {
            hist_add(h, (kk >> shift) & (uint32_t)(kBins1 - 1), ok && (kk & mask) == prefix);
        });
        __syncthreads();
        group_sums<kBins1, kGroups1, T>(h, g);
        if (C > 1) cluster.sync();
        else __syncthreads();
        select_digit<kBins1, kGroups1>(h, g, digit, need, count, cluster, C, sh);
        prefix |= digit << shift;
        mask |= (uint32_t)(kBins1 - 1) << shift;
        STAMP(4 + pass);
    }

    /* On the digits resolved (all of them unless the last bin is taken whole): K = prefix. */
    const uint32_t K = prefix, ties = need;
    uint32_t gt = 0, eq = 0;
    walk(s, [&](uint32_t, uint32_t kk, bool ok) {
        gt += (uint32_t)__popc(__ballot_sync(~0u, ok && (kk & mask) > K));
        eq += (uint32_t)__popc(__ballot_sync(~0u, ok && (kk & mask) == K));
    });
    if (lane == 0) {
        sh.n_gt[warp] = gt;
        sh.n_eq[warp] = eq;
    }
    __syncthreads();
    if (C > 1) {
        if (warp == 0) {
            const uint32_t a = __reduce_add_sync(~0u, lane < W ? sh.n_gt[lane] : 0u);
            const uint32_t b = __reduce_add_sync(~0u, lane < W ? sh.n_eq[lane] : 0u);
            if (lane == 0) sh.tot_gt = a, sh.tot_eq = b;
        }
        cluster.sync(); /* every CTA's counts are published */
    }
    STAMP(7);
    uint32_t gt_run = lane < warp ? sh.n_gt[lane] : 0u, eq_run = lane < warp ? sh.n_eq[lane] : 0u;
    if (lane < c) {
        gt_run += *cluster.map_shared_rank(&sh.tot_gt, lane);
        eq_run += *cluster.map_shared_rank(&sh.tot_eq, lane);
    }
    gt_run = __reduce_add_sync(~0u, gt_run);
    eq_run = __reduce_add_sync(~0u, eq_run);
    if (C > 1) cluster.barrier_arrive(); /* done reading other CTAs' shared memory */

    const unsigned below = (1u << lane) - 1u;
    walk(s, [&](uint32_t i, uint32_t kk, bool ok) {
        const bool g = ok && (kk & mask) > K, e = ok && (kk & mask) == K;
        const unsigned bg = __ballot_sync(~0u, g), be = __ballot_sync(~0u, e);
        const uint32_t gb = gt_run + (uint32_t)__popc(bg & below), eb = eq_run + (uint32_t)__popc(be & below);
        /* at < k when the counts are right; k (skipped) otherwise */
        const uint32_t at = g ? gb + min(eb, ties) : e && eb < ties ? gb + eb : k;
        if (at < k) out[at] = (int32_t)i;
        gt_run += (uint32_t)__popc(bg);
        eq_run += (uint32_t)__popc(be);
    });
    if (C > 1) cluster.barrier_wait(); /* no CTA leaves while another may still read its shared memory */
    STAMP(8);
}

/* What a device can launch, asked once: its SMs and how many clusters of 2, 4, 8 and 16 CTAs of each
 * block size it holds at once (0: none). */
struct DeviceFacts {
    int sms, clusters[2][4]; /* [512 or 1024 threads][log2(C) - 1] */
};

template <int T> hae_status cluster_room(cudaLaunchConfig_t *cfg, cudaLaunchAttribute *attr, int (&room)[4]) {
    HAE_CUDA_CHECK(
        cudaFuncSetAttribute(topk_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_bytes<T>()));
    if (cudaFuncSetAttribute(topk_kernel<T>, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) != cudaSuccess)
        (void)cudaGetLastError(); /* then the portable sizes only */
    cfg->blockDim = dim3(T);
    cfg->dynamicSmemBytes = smem_bytes<T>();
    for (int i = 0; i < 4; i++) {
        attr->val.clusterDim.x = 2u << i;
        cfg->gridDim = dim3(2u << i);
        if (cudaOccupancyMaxActiveClusters(&room[i], topk_kernel<T>, cfg) != cudaSuccess) {
            (void)cudaGetLastError(); /* a size it refuses */
            room[i] = 0;
        }
    }
    return HAE_OK;
}

template <int T>
hae_status launch(cudaLaunchConfig_t *cfg, cudaLaunchAttribute *attr, int C, int64_t R, const TopkParams &p) {
    cfg->blockDim = dim3(T);
    cfg->dynamicSmemBytes = smem_bytes<T>();
    attr->val.clusterDim.x = (unsigned)C;
    cfg->gridDim = dim3((unsigned)(R * C));
    HAE_CUDA_CHECK(cudaLaunchKernelEx(cfg, topk_kernel<T>, p));
    HAE_CUDA_LAUNCH_CHECK("topk_kernel");
    return HAE_OK;
}

} // namespace

/* hae_topk on CUDA with a chosen block size (512 or 1024 threads) and cluster size (1, 2, 4, 8 or 16
 * CTAs a row); 0 picks what hae_topk_cuda would. stamps: NULL, or 9 words for CTA 0's clock64() at
 * the phase ends (bench_topk's breakdown). */
extern "C" hae_status hae_topk_cuda_with(hae_backend *be, const hae_topk_args *a, int threads, int clusters,
                                         unsigned long long *stamps);
extern "C" hae_status hae_topk_cuda_with(hae_backend *be, const hae_topk_args *a, int threads, int clusters,
                                         unsigned long long *stamps) {
    const int64_t R = a->logits.shape[0], L = a->logits.shape[1], k = a->out.shape[1];
    if (threads != 0 && threads != 512 && threads != 1024)
        return hae_error(HAE_ERR_UNSUPPORTED, "hae_topk (cuda): blocks of %d threads: 512 or 1024", threads);
    if (clusters < 0 || clusters > kMaxCluster || (clusters & (clusters - 1)))
        return hae_error(HAE_ERR_UNSUPPORTED, "hae_topk (cuda): clusters of %d CTAs: 1, 2, 4, 8 or 16", clusters);
    if (R == 0) return HAE_OK;
    if (L > INT32_MAX)
        return hae_error(HAE_ERR_UNSUPPORTED, "hae_topk (cuda): rows of %lld logits: indices are i32", (long long)L);
    cudaStream_t s = nullptr;
    HAE_TRY(hae_cuda_enter(be, &s));
    cudaLaunchAttribute attr[2];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = 1;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    attr[1].id = cudaLaunchAttributeProgrammaticStreamSerialization; /* as hae_launch_pdl's */
    attr[1].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.stream = s;
    cfg.attrs = attr;
    cfg.numAttrs = 2;

    /* Per device, once (no host work between a caller's events and the launch but the launch). Doing
     * it twice is harmless. */
    static DeviceFacts facts_of[kMaxDevices];
    const int dev = be->cuda->device;
    DeviceFacts f = dev >= 0 && dev < kMaxDevices ? facts_of[dev] : DeviceFacts{};
    if (f.sms <= 0) {
        HAE_TRY(cluster_room<512>(&cfg, attr, f.clusters[0]));
        HAE_TRY(cluster_room<1024>(&cfg, attr, f.clusters[1]));
        HAE_CUDA_CHECK(cudaDeviceGetAttribute(&f.sms, cudaDevAttrMultiProcessorCount, dev));
        if (dev >= 0 && dev < kMaxDevices) facts_of[dev] = f; /* sms last: "known" */
    }

    /* The default, from bench_topk on an H200: with more rows than SMs, a CTA of 512 threads a row (two
     * an SM). Else CTAs of 1024 threads (one an SM), as many a row as keep every row's cluster resident
     * at once (a second wave doubles the time) and give each CTA at least one tile a warp (16K logits):
     * a CTA's time grows with its chunk, a cluster's barriers cost more as it grows. */
    const int T = threads ? threads : R <= f.sms ? 1024 : 512;
    const int *room = f.clusters[T == 1024];
    int C = clusters;
    if (!C)
        for (C = 1; C < kMaxCluster && R <= room[__builtin_ctz(2 * C) - 1] && L / (2 * C) >= (int64_t)T * kU;) C *= 2;
    if (C > 1 && room[__builtin_ctz(C) - 1] <= 0)
        return hae_error(HAE_ERR_UNSUPPORTED, "hae_topk (cuda): device %d holds no cluster of %d CTAs of %d threads",
                         dev, C, T);
    if (R * C > INT_MAX)
        return hae_error(HAE_ERR_UNSUPPORTED, "hae_topk (cuda): %lld rows of %lld logits need %lld CTAs, over %d",
                         (long long)R, (long long)L, (long long)R * C, INT_MAX);

    TopkParams p;
    p.x = (const float *)a->logits.data;
    p.ldx = a->logits.stride[0];
    p.lens = (const int32_t *)a->lens.data;
    p.out = (int32_t *)a->out.data;
    p.ldo = a->out.stride[0];
    p.L = L;
    p.k = k;
    p.stamps = stamps;
    return T == 1024 ? launch<1024>(&cfg, attr, C, R, p) : launch<512>(&cfg, attr, C, R, p);
}

extern "C" hae_status hae_topk_cuda(hae_backend *be, const hae_topk_args *a) {
    return hae_topk_cuda_with(be, a, 0, 0, nullptr);
}

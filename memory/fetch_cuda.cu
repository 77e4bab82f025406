/* The token-granular fetch (hae_kv_gather) on CUDA; the contract is hae.h's and the reference
 * memory/fetch.c. For every entry (b, i) with s = src_rows[b, i] in [0, cap) and d = dst_rows[b, i] in
 * [0, slots):
 *     dst[b, d, :] = src[b, s, :]    (the row's bytes, whatever the dtype)
 * other entries are skipped. Two methods:
 *  - the kernel: one warp per entry, grid-stride over the B x n entries with at most max_blocks blocks
 *    (by default as few as fill the link), so that a concurrent kernel keeps the other SMs. src is host
 *    memory mapped at its host address, so every load crosses PCIe (~1-2 us): a warp keeps kUnroll
 *    loads per lane in flight and fetches its next entry's row indices while the current row travels,
 *    and the blocks' many warps together keep enough bytes in flight to fill the link (e.g. 16 blocks
 *    x 16 warps x 656 B ~ 170 KB, against ~50 GB/s x 2 us = 100 KB needed). Rows move in the widest
 *    unit (16, 8, 4, 2 or 1 bytes) that every row start divides, a row's last bytes one per lane when
 *    its length is not a multiple of the unit;
 *  - copies: one cudaMemcpyBatchAsync descriptor per entry (entries adjacent in both src and dst merge
 *    into one; a row across a pinned chunk's end splits in two, since a copy may not span two
 *    registrations), described on the host from row lists in host memory, in batches of kCopyBatch. */
#include "cuda_check.cuh"

#include <stdint.h>

namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kUnroll = 4;
/* The default grid: enough warps to keep kInFlight bytes of rows on their way over PCIe (~50 GB/s x ~2 us
 * of latency), at most kMaxDefaultBlocks: 13 blocks for 656 B rows, 8 for 1152 B, 4 for 2 KB and more. A
 * gather slows a concurrent memory-bound kernel the more, the more SMs it runs on: on an H200 4096 B rows
 * cost a bf16 -> f32 convert +38% with 48 blocks, +11.5% with 16, +7.5% with 8, +2.9% with 4, while 4 to
 * 132 blocks gather them equally fast; 1152 B rows gather as fast with 8 blocks as with 16 (74 KB in
 * flight with 4 blocks: 1.32x slower). bench_fetch, bench/RESULTS.md. */
constexpr int64_t kInFlight = 128 << 10;
constexpr int kMaxDefaultBlocks = 16;
constexpr int kCopyBatch = 512;

struct GatherParams {
    const unsigned char *src;
    unsigned char *dst;
    const int32_t *src_rows, *dst_rows;
    int64_t src_sb, src_sr; /* bytes between sequences and rows of src [B, cap, W] */
    int64_t dst_sb, dst_sr; /* of dst [B, slots, W] */
    int64_t srow_sb, drow_sb; /* elements between sequences of the row lists [B, n] */
    int64_t n, entries, cap, slots;
    int64_t units; /* a row is `units` units then `tail` bytes (tail < the unit) */
    int tail;
};

/* Entry e's (source, destination) rows. */
__device__ __forceinline__ int2 entry_rows(const GatherParams &p, int64_t e) {
    const int64_t b = e / p.n, i = e - b * p.n;
    return make_int2(p.src_rows[b * p.srow_sb + i], p.dst_rows[b * p.drow_sb + i]);
}

/* L2-only loads (ld.global.cg): each byte is read once, and the non-coherent path is for memory that
 * device kernels own, not for the host's. */
template <typename U>
__global__ void __launch_bounds__(kThreads) kv_gather_kernel(const GatherParams p) {
    const int lane = threadIdx.x & 31;
    const int64_t step = (int64_t)gridDim.x * kWarps;
    int64_t e = (int64_t)blockIdx.x * kWarps + (threadIdx.x >> 5);
    int2 cur = e < p.entries ? entry_rows(p, e) : make_int2(-1, -1);
    for (; e < p.entries; e += step) {
        const int2 next = e + step < p.entries ? entry_rows(p, e + step) : make_int2(-1, -1);
        if (cur.x >= 0 && cur.x < p.cap && cur.y >= 0 && cur.y < p.slots) { /* uniform across the warp */
            const int64_t b = e / p.n;
            const unsigned char *s = p.src + b * p.src_sb + (int64_t)cur.x * p.src_sr;
            unsigned char *d = p.dst + b * p.dst_sb + (int64_t)cur.y * p.dst_sr;
            const U *su = reinterpret_cast<const U *>(s);
            U *du = reinterpret_cast<U *>(d);
            for (int64_t j = lane; j < p.units; j += 32 * kUnroll) {
                U v[kUnroll];
#pragma unroll
                for (int k = 0; k < kUnroll; k++)
                    if (j + 32 * k < p.units) v[k] = __ldcg(su + j + 32 * k);
#pragma unroll
                for (int k = 0; k < kUnroll; k++)
                    if (j + 32 * k < p.units) du[j + 32 * k] = v[k];
            }
            if (lane < p.tail) {
                const int64_t o = p.units * (int64_t)sizeof(U) + lane;
                d[o] = __ldcg(s + o);
            }
        }
        cur = next;
    }
}

template <typename U> hae_status launch(const GatherParams &p, int blocks, cudaStream_t stream) {
    kv_gather_kernel<U><<<blocks, kThreads, 0, stream>>>(p);
    HAE_CUDA_LAUNCH_CHECK("kv_gather_kernel");
    return HAE_OK;
}

hae_status gather_kernel(const hae_kv_gather_args *a, cudaStream_t stream) {
    const size_t es = hae_dtype_size(a->src.dtype);
    const int64_t B = a->src.shape[0], n = a->src_rows.shape[1], row = a->src.shape[2] * (int64_t)es;
    GatherParams p;
    p.src = (const unsigned char *)a->src.data;
    p.dst = (unsigned char *)a->dst.data;
    p.src_rows = (const int32_t *)a->src_rows.data;
    p.dst_rows = (const int32_t *)a->dst_rows.data;
    p.src_sb = a->src.stride[0] * (int64_t)es, p.src_sr = a->src.stride[1] * (int64_t)es;
    p.dst_sb = a->dst.stride[0] * (int64_t)es, p.dst_sr = a->dst.stride[1] * (int64_t)es;
    p.srow_sb = a->src_rows.stride[0], p.drow_sb = a->dst_rows.stride[0];
    p.n = n, p.entries = B * n, p.cap = a->src.shape[1], p.slots = a->dst.shape[1];
    /* The unit: the largest power of two up to 16 dividing every row start (strides of dims of size 1
     * never multiply a nonzero index, so they do not count). */
    uint64_t g = (uint64_t)(uintptr_t)p.src | (uint64_t)(uintptr_t)p.dst;
    if (B > 1) g |= (uint64_t)p.src_sb | (uint64_t)p.dst_sb;
    if (p.cap > 1) g |= (uint64_t)p.src_sr;
    if (p.slots > 1) g |= (uint64_t)p.dst_sr;
    int unit = 16;
    while (unit > 1 && g % (uint64_t)unit) unit /= 2;
    p.units = row / unit, p.tail = (int)(row % unit);
    /* a warp has one row in flight, or kUnroll units per lane of a longer one */
    const int64_t per_warp = row < 32 * kUnroll * unit ? (row > 0 ? row : 1) : 32 * kUnroll * unit;
    const int64_t need = (kInFlight + kWarps * per_warp - 1) / (kWarps * per_warp);
    const int64_t fill = need < kMaxDefaultBlocks ? need : kMaxDefaultBlocks;
    const int64_t want = (p.entries + kWarps - 1) / kWarps, cap = a->max_blocks ? a->max_blocks : fill;
    const int blocks = (int)(want < cap ? want : cap);
    switch (unit) {
    case 16: return launch<uint4>(p, blocks, stream);
    case 8: return launch<uint2>(p, blocks, stream);
    case 4: return launch<unsigned int>(p, blocks, stream);
    case 2: return launch<unsigned short>(p, blocks, stream);
    default: return launch<unsigned char>(p, blocks, stream);
    }
}

struct CopyBatch {
    void *dst[kCopyBatch];
    const void *src[kCopyBatch];
    size_t size[kCopyBatch];
    size_t count;
};

hae_status copies_flush(CopyBatch *c, cudaStream_t stream) {
    if (!c->count) return HAE_OK;
    cudaMemcpyAttributes attr = {};
    attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
    attr.flags = cudaMemcpyFlagPreferOverlapWithCompute; /* copy engines, leaving the SMs to the kernels */
    size_t first = 0;
    HAE_CUDA_CHECK(cudaMemcpyBatchAsync(c->dst, c->src, c->size, c->count, &attr, &first, 1, stream));
    c->count = 0;
    return HAE_OK;
}

hae_status gather_copies(const hae_kv_gather_args *a, cudaStream_t stream) {
    const size_t es = hae_dtype_size(a->src.dtype), row = (size_t)a->src.shape[2] * es;
    const int64_t B = a->src.shape[0], n = a->src_rows.shape[1], cap = a->src.shape[1], slots = a->dst.shape[1];
    const int32_t *srows = (const int32_t *)a->src_rows.data, *drows = (const int32_t *)a->dst_rows.data;
    CopyBatch c; /* ~12 KB of descriptors on the stack, reused batch after batch */
    c.count = 0;
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < n; i++) {
            const int32_t s = srows[b * a->src_rows.stride[0] + i], d = drows[b * a->dst_rows.stride[0] + i];
            if (s < 0 || s >= cap || d < 0 || d >= slots) continue;
            const char *sp = (const char *)hae_row_ptr(&a->src, b, s, 0);
            char *dp = (char *)hae_row_ptr(&a->dst, b, d, 0);
            for (size_t left = row, run; left; left -= run, sp += run, dp += run) {
                run = hae_host_run(sp, left); /* a descriptor stays inside one pinned chunk */
                if (c.count) {
                    const size_t k = c.count - 1;
                    if ((const char *)c.src[k] + c.size[k] == sp && (char *)c.dst[k] + c.size[k] == dp &&
                        hae_host_run(c.src[k], c.size[k] + run) == c.size[k] + run) {
                        c.size[k] += run;
                        continue;
                    }
                }
                if (c.count == kCopyBatch) HAE_TRY(copies_flush(&c, stream));
                c.dst[c.count] = dp, c.src[c.count] = sp, c.size[c.count] = run;
                c.count++;
            }
        }
    return copies_flush(&c, stream);
}

} // namespace

extern "C" hae_status hae_kv_gather_cuda(hae_backend *be, const hae_kv_gather_args *a) {
    cudaStream_t stream;
    HAE_TRY(hae_cuda_enter_copy(be, &stream));
    return a->method == HAE_GATHER_COPIES ? gather_copies(a, stream) : gather_kernel(a, stream);
}

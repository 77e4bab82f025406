/* KV cache writes and dense causal attention (full and sliding window) on CUDA; the contract is
 * hae.h's and the reference sparse/attention_cpu.c.
 *
 * Attention, for query (b, t, h) at position p = pos0 + t, kv head g = h / (Hq / Hkv):
 *     o = sum_{s in [lo(p), p]} softmax_s(scale * q . k_s) v_s,   k_s, v_s in cache slot s % cap,
 *     lo(p) = max(0, p - window + 1) when window > 0, else 0.
 * Three paths, picked per call:
 *  - flash prefill: bf16 q and caches, Dk = Dv in {64, 128}, 16-byte aligned rows and slots (cp.async),
 *    T > kDecodeMaxT: tensor cores, one CTA per 128 query rows of one (b, h);
 *  - split-KV decode: the same operands with T <= kDecodeMaxT: one CTA per (b, kv head, split of the
 *    keys) serving all G = Hq / Hkv heads x T queries of the kv head, then a combine kernel;
 *  - mla's absorbed form (bf16, Dk 576, Dv 512): the sparse attention's tensor-core kernels, each query's
 *    list its whole window (hae_attention_mla_cuda in sparse_attention_cuda.cu);
 *  - a CUDA-core kernel for every other shape the CPU takes (f32, odd head dims, Dk != Dv).
 * The tensor-core paths share one warp-level step (warp_attend) and keep softmax statistics in the
 * log2 domain: with c = scale * log2(e), m = max_s(c q.k_s) and p_s = 2^(c q.k_s - m), so each
 * exponential is one FFMA and one ex2. */
#include "cuda_check.cuh"
#include "mma.cuh"
#include "wgmma.cuh"

#include <cuda_bf16.h>
#include <limits.h>
#include <math.h>

namespace {

struct AttnParams {
    const void *q;
    int64_t q_sb, q_st; /* [B, T, Hq, Dk], heads dense within a row */
    const void *k;
    int64_t k_sb, k_ss; /* [B, cap, Hkv, Dk], heads dense within a slot */
    const void *v;
    int64_t v_sb, v_ss; /* [B, cap, Hkv, Dv] */
    void *out;
    int64_t o_sb, o_st; /* [B, T, Hq, Dv] */
    int64_t T, cap, pos0, window;
    int Hq, group, Dk, Dv; /* group = Hq / Hkv */
    float scale;
};

__host__ __device__ __forceinline__ int64_t window_lo(int64_t p, int64_t window) {
    return window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
}
__device__ __forceinline__ int64_t ring_slot(int64_t s, int64_t cap) { return s < cap ? s : s % cap; }

/* ================================================================ CUDA-core path
 * One block of 4 warps per query row (b, t, h). Warp w takes the keys lo + w*U + j*(4U) .. + U-1
 * (U = 4 keys in flight); lane l holds the elements d = l + 32 j (j < NJ) of q, of each key and value
 * row, and of its accumulator. Per key the warp reduces the dot product with xor shuffles (every lane
 * ends with the same score), then updates an online softmax (running max m, sum l, accumulator) in
 * fp32. The 4 warps' states merge in shared memory at the end:
 *     M = max_w m_w,   out = sum_w e^(m_w - M) acc_w / sum_w e^(m_w - M) l_w. */

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kKeysInFlight = 4; /* U above */
constexpr int kMaxD = 576;       /* mla's latent + rope */

template <typename TQ, typename TKV, typename TO, int NJ>
__global__ void __launch_bounds__(kThreads) attention_simple_kernel(const AttnParams p) {
    __shared__ float sh_acc[kWarps][kMaxD];
    __shared__ float sh_m[kWarps], sh_l[kWarps];

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t row = blockIdx.x; /* ((b * T) + t) * Hq + h */
    const int h = (int)(row % p.Hq);
    const int64_t t = (row / p.Hq) % p.T, b = row / ((int64_t)p.Hq * p.T);
    const int g = h / p.group;
    const int64_t pos = p.pos0 + t, lo = window_lo(pos, p.window);

    /* q pre-scaled, as on the CPU */
    const TQ *q = (const TQ *)p.q + b * p.q_sb + t * p.q_st + (int64_t)h * p.Dk;
    float qv[NJ], acc[NJ];
#pragma unroll
    for (int j = 0; j < NJ; j++) {
        const int d = lane + 32 * j;
        qv[j] = d < p.Dk ? hae_ld(q + d) * p.scale : 0.0f;
        acc[j] = 0.0f;
    }
    const TKV *kbase = (const TKV *)p.k + b * p.k_sb + (int64_t)g * p.Dk;
    const TKV *vbase = (const TKV *)p.v + b * p.v_sb + (int64_t)g * p.Dv;

    float m = -INFINITY, l = 0.0f;
    /* base is the same in every lane of a warp, so the shuffles below see the whole warp */
    for (int64_t base = lo + (int64_t)warp * kKeysInFlight; base <= pos; base += kWarps * kKeysInFlight) {
        float sc[kKeysInFlight];
        int64_t slot[kKeysInFlight];
#pragma unroll
        for (int u = 0; u < kKeysInFlight; u++) {
            const int64_t s = base + u;
            slot[u] = ring_slot(s, p.cap);
            float part = 0.0f;
            if (s <= pos) {
                const TKV *kr = kbase + slot[u] * p.k_ss;
#pragma unroll
                for (int j = 0; j < NJ; j++) {
                    const int d = lane + 32 * j;
                    if (d < p.Dk) part += qv[j] * hae_ld(kr + d);
                }
            }
            sc[u] = part;
        }
        float mx = m;
#pragma unroll
        for (int u = 0; u < kKeysInFlight; u++) {
            sc[u] = hae_warp_sum(sc[u]);
            if (base + u > pos) sc[u] = -INFINITY;
            mx = fmaxf(mx, sc[u]);
        }
        /* key `base` is always valid, so mx is finite here; alpha = 0 on the warp's first keys */
        const float alpha = expf(m - mx);
        l *= alpha;
#pragma unroll
        for (int j = 0; j < NJ; j++) acc[j] *= alpha;
#pragma unroll
        for (int u = 0; u < kKeysInFlight; u++) {
            if (base + u > pos) continue;
            const float w = expf(sc[u] - mx);
            l += w;
            const TKV *vr = vbase + slot[u] * p.v_ss;
#pragma unroll
            for (int j = 0; j < NJ; j++) {
                const int d = lane + 32 * j;
                if (d < p.Dv) acc[j] += w * hae_ld(vr + d);
            }
        }
        m = mx;
    }

    /* a warp that saw no key keeps m = -inf, l = 0, acc = 0 and gets weight 0 below */
#pragma unroll
    for (int j = 0; j < NJ; j++) {
        const int d = lane + 32 * j;
        if (d < p.Dv) sh_acc[warp][d] = acc[j];
    }
    if (lane == 0) {
        sh_m[warp] = m;
        sh_l[warp] = l;
    }
    __syncthreads();

    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; w++) M = fmaxf(M, sh_m[w]);
    float wt[kWarps], L = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; w++) {
        wt[w] = expf(sh_m[w] - M); /* M is finite: key p itself is always attended */
        L += wt[w] * sh_l[w];
    }
    const float inv = 1.0f / L;
    TO *o = (TO *)p.out + b * p.o_sb + t * p.o_st + (int64_t)h * p.Dv;
    for (int d = threadIdx.x; d < p.Dv; d += kThreads) {
        float s = 0.0f;
#pragma unroll
        for (int w = 0; w < kWarps; w++) s += wt[w] * sh_acc[w][d];
        hae_st(o + d, s * inv);
    }
}

template <typename TQ, typename TKV, typename TO>
hae_status launch_simple(const AttnParams &p, int64_t rows, cudaStream_t s) {
    const int d = p.Dk > p.Dv ? p.Dk : p.Dv;
    if (d <= 64) attention_simple_kernel<TQ, TKV, TO, 2><<<(unsigned)rows, kThreads, 0, s>>>(p);
    else if (d <= 128) attention_simple_kernel<TQ, TKV, TO, 4><<<(unsigned)rows, kThreads, 0, s>>>(p);
    else if (d <= 256) attention_simple_kernel<TQ, TKV, TO, 8><<<(unsigned)rows, kThreads, 0, s>>>(p);
    else attention_simple_kernel<TQ, TKV, TO, kMaxD / 32><<<(unsigned)rows, kThreads, 0, s>>>(p);
    HAE_CUDA_LAUNCH_CHECK("attention_simple_kernel");
    return HAE_OK;
}

/* ================================================================ tensor-core paths
 * Tiles of bf16 rows live in shared memory as 16-byte chunks, chunk c of row r at chunk position
 * c ^ (r & 7): the 8 rows an ldmatrix reads at one logical chunk fall in 8 different bank groups. */

constexpr int kTileN = 64;        /* keys per K/V tile in shared memory */
constexpr int kTcThreads = 128;   /* 4 warps */
constexpr int kDecodeStages = 3;
constexpr int kDecodeMaxT = 16; /* queries per sequence up to which the split-KV path runs */
constexpr int kMaxRel = 1 << 30; /* positions inside a CTA's key range are ints below this */

template <int D> __device__ __forceinline__ int swz(int r, int c) { return r * D + ((c ^ (r & 7)) << 3); }


__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi); /* lo in the low half: the lower column */
    return *reinterpret_cast<const uint32_t *>(&v);
}

/* One warp's step of flash attention over NK keys of a K/V tile, for its 16*MT query rows:
 *     S = Q K^T (fp32), masked entries -inf;  m' = max(m, c rowmax(S));  P = 2^(c S - m');
 *     l' = 2^(m - m') l + rowsum(P);  O' = 2^(m - m') O + P V   (P rounded to bf16 for the product).
 * sq: the warp's first Q row, sk/sv: the tile's first key row (all at row multiples of 8, so the
 * swizzle of local rows is the tile's). This lane holds rows g and g+8 of each m-tile mt, index
 * [mt][i] for row mt*16 + g + 8i; l is this lane's part of the row sum (its columns only: the 4 lanes
 * of a row add theirs at the end). With `masked`, key n of the NK is kept for row [mt][i] iff
 * h - wm1 <= n <= h, h = row_hi(mt, i) the row's position minus the first key's (wm1 = window - 1;
 * keys before h - wm1 lie before the window). row_hi runs on masked tiles only, so no per-row
 * positions hold registers across the products. A row whose keys were all masked so far keeps
 * m = -inf and P = 0. */
template <int D, int MT, int NK, typename RowHi>
__device__ __forceinline__ void warp_attend(uint32_t sq, uint32_t sk, uint32_t sv, int lane,
                                            bool masked, RowHi row_hi, int wm1, float c, float (&o)[MT][D / 8][4],
                                            float (&m)[MT][2], float (&l)[MT][2]) {
    /* Each lane reads rows with r & 7 = lane & 7 at chunks 2k + hi (hi one bit of the lane), so one
     * table of four byte offsets per bit covers every chunk: chunk 8a + 2j + hi is at 128a + off[j]. */
    const int x = lane & 7, hq = lane >> 4, hk = (lane >> 3) & 1;
    uint32_t offq[4], offk[4];
#pragma unroll
    for (int j = 0; j < 4; j++) {
        offq[j] = (uint32_t)(((2 * j + hq) ^ x) << 4);
        offk[j] = (uint32_t)(((2 * j + hk) ^ x) << 4);
    }
    /* row starts: Q rows lane & 15, K rows (lane & 7) + 8 (lane >> 4), V rows (lane & 7) + 8 hk */
    const uint32_t aq = sq + (lane & 15) * D * 2, ak = sk + ((lane & 7) + 8 * hq) * D * 2,
                   av = sv + ((lane & 7) + 8 * hk) * D * 2;
    float s[MT][NK / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int nt = 0; nt < NK / 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) s[mt][nt][e] = 0.0f;

#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        uint32_t a[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++) ldsm_x4(a[mt], aq + mt * 16 * D * 2 + (kk >> 2) * 128 + offq[kk & 3]);
#pragma unroll
        for (int np = 0; np < NK / 16; np++) {
            /* matrices: keys np*16 + 0..7 at dims chunk 2kk, 2kk+1; keys + 8..15 at the same chunks */
            uint32_t bk[4];
            ldsm_x4(bk, ak + np * 16 * D * 2 + (kk >> 2) * 128 + offk[kk & 3]);
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                mma_bf16(s[mt][2 * np], a[mt], bk[0], bk[1]);
                mma_bf16(s[mt][2 * np + 1], a[mt], bk[2], bk[3]);
            }
        }
    }

    if (masked) {
        const int col = 2 * (lane & 3);
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const int hi = row_hi(mt, i), lo = hi - wm1;
#pragma unroll
                for (int nt = 0; nt < NK / 8; nt++)
#pragma unroll
                    for (int e = 2 * i; e < 2 * i + 2; e++) {
                        const int n = nt * 8 + col + (e & 1);
                        if (n < lo || n > hi) s[mt][nt][e] = -INFINITY;
                    }
            }
    }

    float alpha[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int i = 0; i < 2; i++) {
            float mx = -INFINITY;
#pragma unroll
            for (int nt = 0; nt < NK / 8; nt++) mx = fmaxf(mx, fmaxf(s[mt][nt][2 * i], s[mt][nt][2 * i + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float mnew = fmaxf(m[mt][i], mx * c);
            const float mref = mnew == -INFINITY ? 0.0f : mnew; /* all masked so far: P = 2^-inf = 0 */
            alpha[mt][i] = hae_ex2(m[mt][i] - mref);
            m[mt][i] = mnew;
            float sum = 0.0f;
#pragma unroll
            for (int nt = 0; nt < NK / 8; nt++)
#pragma unroll
                for (int e = 2 * i; e < 2 * i + 2; e++) {
                    s[mt][nt][e] = hae_ex2(fmaf(s[mt][nt][e], c, -mref));
                    sum += s[mt][nt][e];
                }
            l[mt][i] = l[mt][i] * alpha[mt][i] + sum;
        }
    /* once the running maxima settle, most tiles leave every row's max alone: skip multiplying by 1 */
    bool grew = false;
#pragma unroll
    for (int mt = 0; mt < MT; mt++) grew |= alpha[mt][0] != 1.0f || alpha[mt][1] != 1.0f;
    if (__any_sync(0xffffffffu, grew)) {
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int nd = 0; nd < D / 8; nd++)
#pragma unroll
                for (int e = 0; e < 4; e++) o[mt][nd][e] *= alpha[mt][e >> 1];
    }

#pragma unroll
    for (int kk = 0; kk < NK / 16; kk++) {
        /* P's accumulator layout is the A layout of the next product: keys 16kk.. are n-tiles 2kk, 2kk+1 */
        uint32_t a[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            a[mt][0] = pack_bf16(s[mt][2 * kk][0], s[mt][2 * kk][1]);
            a[mt][1] = pack_bf16(s[mt][2 * kk][2], s[mt][2 * kk][3]);
            a[mt][2] = pack_bf16(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
            a[mt][3] = pack_bf16(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
        }
#pragma unroll
        for (int dp = 0; dp < D / 16; dp++) {
            /* transposed matrices: keys 16kk + 0..7, + 8..15 at dims chunk 2dp, then at chunk 2dp+1 */
            uint32_t bv[4];
            ldsm_x4_t(bv, av + kk * 16 * D * 2 + (dp >> 2) * 128 + offq[dp & 3]);
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                mma_bf16(o[mt][2 * dp], a[mt], bv[0], bv[1]);
                mma_bf16(o[mt][2 * dp + 1], a[mt], bv[2], bv[3]);
            }
        }
    }
}

/* The keys a CTA reads: positions kmin + n, n in [0, len), of one sequence and kv head (k, v: its
 * first slot's row), key n in slot (slot0 + n) % cap with slot0 = kmin % cap. Positions inside the
 * range, like cap, are ints (the host keeps them below 2^30), so the loop has no 64-bit division. */
struct KeyRange {
    const uint16_t *k, *v;
    int len, slot0, cap;
};
__device__ __forceinline__ KeyRange key_range(const AttnParams &p, int64_t b, int g, int D, int64_t kmin,
                                              int64_t kmax) {
    return {(const uint16_t *)p.k + b * p.k_sb + (int64_t)g * D, (const uint16_t *)p.v + b * p.v_sb + (int64_t)g * D,
            (int)(kmax - kmin + 1), (int)(kmin % p.cap), (int)p.cap};
}

/* Issues the cp.async of one K and one V tile, keys n0 .. n0 + 63 of the range, from their ring slots,
 * by NT threads; chunk ch of key r lands at byte off(r, ch) of each tile. Keys past the range come as
 * zeros, so nothing outside the cached positions is read and a NaN in an unused slot cannot reach P V. */
template <int D, int NT, typename Off>
__device__ __forceinline__ void load_kv_tile(const AttnParams &p, const KeyRange &kr, int n0, uint32_t sk,
                                             uint32_t sv, int tid, Off off) {
    constexpr int CPR = D / 8, RPI = NT / CPR; /* 16-byte chunks per row, rows per pass */
    static_assert(NT % CPR == 0 && kTileN % RPI == 0, "whole rows per pass, whole passes per tile");
    const int ch = tid % CPR;
    int r = tid / CPR;
    unsigned slot = (unsigned)(kr.slot0 + n0 + r) % (unsigned)kr.cap; /* then stepped by RPI rows */
#pragma unroll
    for (int it = 0; it < kTileN / RPI; it++, r += RPI) {
        const bool valid = n0 + r < kr.len;
        cp_async16z(sk + off(r, ch), kr.k + (valid ? (int64_t)slot * p.k_ss + ch * 8 : 0), valid);
        cp_async16z(sv + off(r, ch), kr.v + (valid ? (int64_t)slot * p.v_ss + ch * 8 : 0), valid);
        slot += RPI;
        if (slot >= (unsigned)kr.cap) slot = kr.cap >= RPI ? slot - kr.cap : slot % (unsigned)kr.cap;
    }
}
/* the row-major swizzle of the mma.sync kernels */
template <int D> struct SwzRows {
    __device__ __forceinline__ uint32_t operator()(int r, int ch) const { return 2 * swz<D>(r, ch); }
};

/* window - 1 for the mask (full attention: a distance no key reaches) */
__device__ __forceinline__ int window_m1(int64_t window) {
    return window > 0 && window <= kMaxRel ? (int)(window - 1) : kMaxRel;
}

/* Whether keys [n0, n0 + n) of a range need the per-element mask for rows at positions [first, last]
 * (all relative to kmin): some key lies after the earliest row, or before the last row's window start
 * lo_last = max(last - window + 1, 0). */
__device__ __forceinline__ bool keys_masked(int n0, int n, int first, int lo_last) {
    return n0 + n - 1 > first || n0 < lo_last;
}

/* ---------------------------------------------------------------- flash prefill (wgmma)
 * CTA = kPrefillRows query rows t0 .. of one (b, h), kPrefillWG warpgroups of 64 rows each (wgmma's
 * M); its keys [lo(p_first), p_last] stream in tiles of 64 through a kPrefillStages-deep cp.async ring
 * shared by the warpgroups, K and V as 128-byte-swizzled blocks of 64 dims (engine/wgmma.cuh); Q
 * passes through shared memory into registers. Per tile i a warpgroup issues S_i = Q K_i^T (wgmma
 * 64 x 64 x 16, Q from registers, K K-major), then O += P_{i-1} V_{i-1} (64 x D x 16, P from
 * registers, V read transposed), waits for S_i only, runs the softmax of tile i beside that product,
 * and waits for it before rescaling O: the exponentials of one tile overlap the tensor cores' work on
 * the previous one. With both A operands in registers, shared memory serves only K, V and the copies
 * (Q read from it as well had it as busy as the tensor cores). Like the sparse kernel, a row's base m
 * moves only when a tile's max passes it by more than kLazy (P <= 2^kLazy, O rescaled on few tiles).
 * Tiles that cross the diagonal or the window's lower edge of a warpgroup's rows are masked; CTAs
 * are launched heaviest (latest rows) first. */
constexpr int kPrefillWG = 2;                 /* warpgroups per CTA */
constexpr int kPrefillRows = 64 * kPrefillWG; /* query rows per CTA */
constexpr int kPrefillStages = 4;             /* K/V tiles resident: the one in P V, the one scored, two loading */
constexpr float kLazy = 8.0f;

/* byte offset of chunk ch of row r in a tile of R rows stored as 128-byte-swizzled 64-dim blocks */
template <int R> struct SwzBlocks {
    __device__ __forceinline__ uint32_t operator()(int r, int ch) const {
        return (uint32_t)((ch >> 3) * R * 128 + r * 128 + (((ch & 7) ^ (r & 7)) << 4));
    }
};

/* d (+)= A B, 64 x N x 16 (N = 64 or 128, the size of d), A from registers, B in shared memory by
 * descriptor (its low word b): K-major (TB = 0) or transposed (TB = 1); accumulate false: d = A B. */
template <int TB>
__device__ __forceinline__ void wgmma_rs(float (&d)[32], const uint32_t (&a)[4], uint32_t b, bool accumulate) {
    asm volatile("{\n.reg .pred p;\n.reg .b64 db;\nmov.b64 db, {%36, %37};\nsetp.ne.b32 p, %38, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {" HAE_WG_D32 "}, "
                 "{%32, %33, %34, %35}, db, p, 1, 1, %39;\n}"
                 : HAE_WG_F8(d, 0), HAE_WG_F8(d, 8), HAE_WG_F8(d, 16), HAE_WG_F8(d, 24)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b), "r"(kWgDescHi), "r"((int)accumulate), "n"(TB)
                 : "memory");
}
template <int TB>
__device__ __forceinline__ void wgmma_rs(float (&d)[64], const uint32_t (&a)[4], uint32_t b, bool accumulate) {
    asm volatile("{\n.reg .pred p;\n.reg .b64 db;\nmov.b64 db, {%68, %69};\nsetp.ne.b32 p, %70, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" HAE_WG_D64 "}, "
                 "{%64, %65, %66, %67}, db, p, 1, 1, %71;\n}"
                 : HAE_WG_F8(d, 0), HAE_WG_F8(d, 8), HAE_WG_F8(d, 16), HAE_WG_F8(d, 24), HAE_WG_F8(d, 32),
                   HAE_WG_F8(d, 40), HAE_WG_F8(d, 48), HAE_WG_F8(d, 56)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b), "r"(kWgDescHi), "r"((int)accumulate), "n"(TB)
                 : "memory");
}
template <int D> constexpr size_t prefill_smem_bytes() {
    return 1024 + (size_t)(kPrefillRows + 2 * kPrefillStages * kTileN) * D * 2; /* + slack for 1024 alignment */
}

template <int D, typename TO>
__global__ void __launch_bounds__(128 * kPrefillWG, 1) flash_prefill_kernel(const AttnParams p) {
    extern __shared__ __align__(128) uint16_t smem[];
    constexpr int CPR = D / 8, NT = 128 * kPrefillWG, KB = D / 64; /* 64-dim blocks */
    constexpr uint32_t QBLK = kPrefillRows * 128, TBLK = kTileN * 128, TB = KB * TBLK;
    const uint32_t sq = (hae_smem_addr(smem) + 1023u) & ~1023u, sk = sq + KB * QBLK, sv = sk + kPrefillStages * TB;

    const int tid = threadIdx.x, wg = tid >> 7, wi = (tid >> 5) & 3, lane = tid & 31;
    const int h = (int)(blockIdx.x % (unsigned)p.Hq);
    const int64_t b = blockIdx.x / (unsigned)p.Hq;
    const int64_t t0 = (int64_t)(gridDim.y - 1 - blockIdx.y) * kPrefillRows;
    const int g = h / p.group;
    const int64_t t_last = (t0 + kPrefillRows < p.T ? t0 + kPrefillRows : p.T) - 1;
    const int64_t p_first = p.pos0 + t0, p_last = p.pos0 + t_last, kmin = window_lo(p_first, p.window);
    const KeyRange kr = key_range(p, b, g, D, kmin, p_last);
    const int ntiles = (kr.len + kTileN - 1) / kTileN;

    const uint16_t *qg = (const uint16_t *)p.q + b * p.q_sb + (int64_t)h * D;
#pragma unroll
    for (int it = 0; it < kPrefillRows * CPR / NT; it++) {
        const int i = tid + it * NT, r = i / CPR, ch = i % CPR;
        const bool valid = t0 + r < p.T;
        cp_async16z(sq + SwzBlocks<kPrefillRows>()(r, ch), qg + (valid ? (t0 + r) * p.q_st + ch * 8 : 0), valid);
    }
#pragma unroll
    for (int j = 0; j < kPrefillStages - 2; j++) {
        if (j < ntiles) load_kv_tile<D, NT>(p, kr, j * kTileN, sk + j * TB, sv + j * TB, tid, SwzBlocks<kTileN>());
        cp_async_commit(); /* one group per tile, empty or not, so the wait count below is fixed */
    }

    /* this warpgroup's rows, positions relative to kmin: from wfirst, the last stored at wlast */
    const int64_t wt0 = t0 + 64 * wg;
    const int wfirst = (int)(p_first + 64 * wg - kmin);
    const int wlast = (int)((wt0 + 63 < p.T ? wt0 + 63 : p.T - 1) + p.pos0 - kmin);
    const int wlo_last = (int)(window_lo(wlast + kmin, p.window) - kmin);
    const int wm1 = window_m1(p.window);
    const int r0 = wfirst + 16 * wi + (lane >> 2); /* this thread's rows: r0 and r0 + 8 */
    const int t4 = lane & 3;
    const float c = p.scale * 1.4426950408889634f;
    float o[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; i++) o[i] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;

    uint32_t qa[D / 16][4]; /* this warpgroup's Q, A fragments of the k steps of S */

    /* Every warpgroup takes every tile of the CTA's range (a tile past its rows is masked whole: one
     * tile in a hundred at long T), so no wgmma sits under a per-warpgroup branch, which would make
     * the compiler serialize them. */
    auto wait_tile = [&](int i) { /* tile i landed everywhere; tile i - 2's stage is free for tile i + S - 2 */
        cp_async_wait<kPrefillStages - 3>();
        fence_async_smem(); /* this thread's copies, visible to wgmma after the barrier */
        __syncthreads();
        const int jn = i + kPrefillStages - 2, bn = jn % kPrefillStages;
        if (jn < ntiles) load_kv_tile<D, NT>(p, kr, jn * kTileN, sk + bn * TB, sv + bn * TB, tid, SwzBlocks<kTileN>());
        cp_async_commit();
    };
    auto issue_s = [&](int i, float (&s)[32]) { /* S = Q K_i^T: k step kk is 32 bytes into 64-dim block kk / 4 */
        const uint32_t dk = wg_desc_lo(sk + (i % kPrefillStages) * TB, 16);
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) wgmma_rs<0>(s, qa[kk], dk + (uint32_t)((kk >> 2) * (TBLK >> 4) + (kk & 3) * 2), kk > 0);
        wg_commit();
    };
    auto issue_pv = [&](int i, const uint32_t (&pa)[4][4]) { /* O += P V_i: V transposed, k step 16 keys on */
        const uint32_t dv = wg_desc_lo(sv + (i % kPrefillStages) * TB, TBLK);
#pragma unroll
        for (int kc = 0; kc < 4; kc++) wgmma_rs<1>(o, pa[kc], dv + (uint32_t)(kc * 128), true);
        wg_commit();
    };
    /* The softmax of tile i into P (A fragments of 4 k steps), the rows' factors for O in al0, al1;
     * returns whether any is not 1. */
    auto softmax = [&](int i, float (&s)[32], uint32_t (&pn)[4][4], float &al0, float &al1) -> bool {
        if (keys_masked(i * kTileN, kTileN, wfirst, wlo_last)) {
            const int h0 = r0 - i * kTileN, h1 = h0 + 8; /* the rows' positions from the tile's first key */
#pragma unroll
            for (int cc = 0; cc < 8; cc++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int n = 8 * cc + 2 * t4 + e;
                    if (n < h0 - wm1 || n > h0) s[4 * cc + e] = -INFINITY;
                    if (n < h1 - wm1 || n > h1) s[4 * cc + 2 + e] = -INFINITY;
                }
        }
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int cc = 0; cc < 8; cc++) {
            mx0 = fmaxf(mx0, fmaxf(s[4 * cc], s[4 * cc + 1]));
            mx1 = fmaxf(mx1, fmaxf(s[4 * cc + 2], s[4 * cc + 3]));
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        const float mt0 = mx0 * c, mt1 = mx1 * c;
        const bool up0 = mt0 > m0 + kLazy, up1 = mt1 > m1 + kLazy;
        al0 = up0 ? hae_ex2(m0 - mt0) : 1.0f, al1 = up1 ? hae_ex2(m1 - mt1) : 1.0f; /* 0 at a row's first keys */
        m0 = up0 ? mt0 : m0, m1 = up1 ? mt1 : m1;
        const float base0 = m0 == -INFINITY ? 0.0f : m0, base1 = m1 == -INFINITY ? 0.0f : m1; /* all masked: P = 0 */
        float ps0 = 0.0f, ps1 = 0.0f;
#pragma unroll
        for (int cc = 0; cc < 8; cc++) {
            const float p00 = hae_ex2(fmaf(s[4 * cc], c, -base0)), p01 = hae_ex2(fmaf(s[4 * cc + 1], c, -base0));
            const float p10 = hae_ex2(fmaf(s[4 * cc + 2], c, -base1)), p11 = hae_ex2(fmaf(s[4 * cc + 3], c, -base1));
            ps0 += p00 + p01;
            ps1 += p10 + p11;
            /* keys 8 cc .. are k step cc / 2, its columns 0..7 (a0, a1) or 8..15 (a2, a3) */
            pn[cc >> 1][2 * (cc & 1)] = pack_bf16(p00, p01);
            pn[cc >> 1][2 * (cc & 1) + 1] = pack_bf16(p10, p11);
        }
        l0 = l0 * al0 + ps0;
        l1 = l1 * al1 + ps1;
        return __any_sync(0xffffffffu, up0 || up1); /* else every factor is 1 */
    };

    uint32_t pa[4][4], pb[4][4]; /* P of the last scored tile */
    {
        float al0, al1;
        float s[32] = {}; /* the first wgmma ignores it */
        wait_tile(0);
        /* Q as A fragments, rows 16 wi + (lane & 15) at chunks 2 kk + (lane >> 4) */
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++)
            ldsm_x4(qa[kk], sq + SwzBlocks<kPrefillRows>()(64 * wg + 16 * wi + (lane & 15), 2 * kk + (lane >> 4)));
        wg_hold(s); /* defined before the fence, as the wgmma requires */
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) wg_hold(qa[kk]);
        wg_fence();
        issue_s(0, s);
        wg_wait<0>();
        wg_hold(s);
        softmax(0, s, pa, al0, al1); /* O is 0: nothing to rescale */
    }
    /* Tile i: S_i and P_{i-1} V_{i-1} in flight together, the softmax of S_i beside the product. P
     * alternates between two register sets (pin read by the product, pout written by the softmax):
     * a copy between them lets ptxas merge the two and serialize every wgmma. */
    auto step = [&](int i, uint32_t (&pin)[4][4], uint32_t (&pout)[4][4]) {
        float s[32] = {};
        wait_tile(i);
        wg_hold(s); /* registers the wgmmas read, all defined before the fence */
        wg_hold(o);
#pragma unroll
        for (int kc = 0; kc < 4; kc++) wg_hold(pin[kc]);
        wg_fence();
        issue_s(i, s);
        issue_pv(i - 1, pin);
        wg_wait<1>(); /* S_i done, P V_{i-1} may still run */
        wg_hold(s);
        float al0, al1;
        const bool rescale = softmax(i, s, pout, al0, al1);
        wg_wait<0>();
        wg_hold(o);
#pragma unroll
        for (int kc = 0; kc < 4; kc++) wg_hold(pin[kc]); /* read by that product until now */
        if (rescale)
#pragma unroll
            for (int cc = 0; cc < D / 8; cc++) {
                o[4 * cc] *= al0, o[4 * cc + 1] *= al0;
                o[4 * cc + 2] *= al1, o[4 * cc + 3] *= al1;
            }
    };
    auto last_pv = [&](const uint32_t (&pin)[4][4]) {
        wg_hold(o);
        wg_fence();
        issue_pv(ntiles - 1, pin);
        wg_wait<0>();
        wg_hold(o);
    };
    int i = 1;
    for (; i + 1 < ntiles; i += 2) {
        step(i, pa, pb);
        step(i + 1, pb, pa);
    }
    if (i < ntiles) {
        step(i, pa, pb);
        last_pv(pb);
    } else {
        last_pv(pa);
    }
    cp_async_wait_all();

    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    TO *og = (TO *)p.out + b * p.o_sb + (int64_t)h * D + 2 * t4;
#pragma unroll
    for (int half = 0; half < 2; half++) {
        const int64_t t = wt0 + 16 * wi + (lane >> 2) + 8 * half;
        if (t >= p.T) continue;
        const float inv = 1.0f / (half ? l1 : l0); /* > 0: row p attends to key p */
        TO *orow = og + t * p.o_st;
#pragma unroll
        for (int cc = 0; cc < D / 8; cc++) {
            hae_st(orow + 8 * cc, o[4 * cc + 2 * half] * inv);
            hae_st(orow + 8 * cc + 1, o[4 * cc + 2 * half + 1] * inv);
        }
    }
}

/* ---------------------------------------------------------------- split-KV decode
 * The R = G * T query rows of (b, kv head g), row r = t * G + (h - g G), go in groups of RB = 16 MT
 * rows; CTA (split, g * nrg + rg, b) takes row group rg and the tiles [split * tps, (split + 1) * tps)
 * of the keys [lo(pos0), pos0 + T - 1], each K/V byte read once for all its rows. Warp w takes keys
 * 16w .. 16w+15 of every tile (its own softmax state); at the end the 4 warps merge in shared memory
 * into this split's (max, sum, unnormalised output) per row, written to scratch, or the final
 * output when there is one split:
 *     M = max_w m_w,   L = sum_w 2^(m_w - M) l_w,   O = sum_w 2^(m_w - M) O_w. */

struct SplitParams {
    int nrg;      /* row groups per kv head */
    int nsplit;   /* splits of the key range */
    int tps;      /* tiles per split */
    float *part;  /* [cta][RB][Dv] unnormalised outputs, cta = (b * Hkv * nrg + g * nrg + rg) * nsplit + split */
    float *ml;    /* [cta][RB][2] (M, L), M in the log2 domain */
};

template <int D, int MT> constexpr size_t decode_smem_bytes() {
    constexpr size_t pipe = (size_t)(16 * MT * D + 2 * kDecodeStages * kTileN * D) * 2;
    constexpr size_t merge = (size_t)4 * 16 * MT * (D + 2) * 4;
    return pipe > merge ? pipe : merge;
}

template <int D, int MT, typename TO>
__global__ void __launch_bounds__(kTcThreads, 2) flash_decode_kernel(const AttnParams p, const SplitParams sp) {
    hae_pdl_enter();
    extern __shared__ __align__(128) uint16_t smem[];
    constexpr int CPR = D / 8, RB = 16 * MT, KW = kTileN / 4; /* keys per warp per tile */
    constexpr uint32_t TB = kTileN * D * 2, WB = KW * D * 2; /* bytes of a tile, of a warp's keys */
    const uint32_t sq = hae_smem_addr(smem), sk = sq + RB * D * 2, sv = sk + kDecodeStages * TB;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int split = blockIdx.x, g = blockIdx.y / sp.nrg, rg = blockIdx.y % sp.nrg;
    const int64_t b = blockIdx.z;
    const int G = p.group, R = G * (int)p.T;
    const int64_t kmin = window_lo(p.pos0, p.window);
    const KeyRange kr = key_range(p, b, g, D, kmin, p.pos0 + p.T - 1);
    const int first = (int)(p.pos0 - kmin), lo_last = (int)(window_lo(p.pos0 + p.T - 1, p.window) - kmin);
    const int ntiles = (kr.len + kTileN - 1) / kTileN;
    const int j0 = split * sp.tps, j1 = j0 + sp.tps < ntiles ? j0 + sp.tps : ntiles;
    const int n = j1 > j0 ? j1 - j0 : 0;

    const uint16_t *qg = (const uint16_t *)p.q + b * p.q_sb;
#pragma unroll
    for (int it = 0; it < RB * CPR / kTcThreads; it++) {
        const int i = tid + it * kTcThreads, rl = i / CPR, ch = i % CPR, r = rg * RB + rl;
        const bool valid = r < R;
        const int64_t off = valid ? (int64_t)(r / G) * p.q_st + (int64_t)(g * G + r % G) * D + ch * 8 : 0;
        cp_async16z(sq + 2 * swz<D>(rl, ch), qg + off, valid);
    }
#pragma unroll
    for (int j = 0; j < kDecodeStages - 1; j++) {
        if (j < n) load_kv_tile<D, kTcThreads>(p, kr, (j0 + j) * kTileN, sk + j * TB, sv + j * TB, tid, SwzRows<D>());
        cp_async_commit();
    }

    /* row r sits at position pos0 + r / G, i.e. first + r / G; rows past R (zero q, never stored) take
     * the last row's */
    const int r0 = rg * RB + (lane >> 2), wm1 = window_m1(p.window);

    float o[MT][D / 8][4], m[MT][2], l[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
        for (int nd = 0; nd < D / 8; nd++)
#pragma unroll
            for (int e = 0; e < 4; e++) o[mt][nd][e] = 0.0f;
        m[mt][0] = m[mt][1] = -INFINITY;
        l[mt][0] = l[mt][1] = 0.0f;
    }
    const float c = p.scale * 1.4426950408889634f;

    for (int j = 0; j < n; j++) {
        cp_async_wait<kDecodeStages - 2>();
        __syncthreads();
        const int jn = j + kDecodeStages - 1, bn = jn % kDecodeStages;
        if (jn < n) load_kv_tile<D, kTcThreads>(p, kr, (j0 + jn) * kTileN, sk + bn * TB, sv + bn * TB, tid, SwzRows<D>());
        cp_async_commit();

        const int off = (j0 + j) * kTileN + warp * KW; /* this warp's first key */
        const bool masked = keys_masked(off, KW, first, lo_last);
        const int base = first - off;
        const int bj = j % kDecodeStages;
        warp_attend<D, MT, KW>(
            sq, sk + bj * TB + warp * WB, sv + bj * TB + warp * WB, lane, masked,
            [=](int mt, int i) {
                const int r = r0 + mt * 16 + 8 * i;
                return base + (r < R ? r : R - 1) / G;
            },
            wm1, c, o, m, l);
    }

    /* merge the 4 warps: shared memory is free once every copy has landed and every warp is done */
    cp_async_wait<0>();
    __syncthreads();
    float *macc = (float *)smem;              /* [4][RB][D] */
    float *mml = macc + 4 * RB * D;           /* [4][RB][2] */
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const int rl = mt * 16 + (lane >> 2) + 8 * i;
            float sum = l[mt][i];
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
            if ((lane & 3) == 0) {
                mml[(warp * RB + rl) * 2] = m[mt][i];
                mml[(warp * RB + rl) * 2 + 1] = sum;
            }
            float *arow = macc + (warp * RB + rl) * D + 2 * (lane & 3);
#pragma unroll
            for (int nd = 0; nd < D / 8; nd++) {
                arow[nd * 8] = o[mt][nd][2 * i];
                arow[nd * 8 + 1] = o[mt][nd][2 * i + 1];
            }
        }
    __syncthreads();

    const int64_t cta = ((b * gridDim.y) + blockIdx.y) * sp.nsplit + split;
    for (int i = tid; i < RB * D; i += kTcThreads) {
        const int rl = i / D, d = i % D, r = rg * RB + rl;
        if (r >= R) continue;
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < 4; w++) M = fmaxf(M, mml[(w * RB + rl) * 2]);
        float L = 0.0f, acc = 0.0f;
#pragma unroll
        for (int w = 0; w < 4; w++) {
            const float mw = mml[(w * RB + rl) * 2];
            const float wt = mw == -INFINITY ? 0.0f : hae_ex2(mw - M); /* a warp with no key has weight 0 */
            L += wt * mml[(w * RB + rl) * 2 + 1];
            acc += wt * macc[(w * RB + rl) * D + d];
        }
        if (sp.nsplit == 1) {
            const int t = r / G, h = g * G + r % G;
            hae_st((TO *)p.out + b * p.o_sb + t * p.o_st + (int64_t)h * D + d, acc / L);
        } else {
            sp.part[(cta * RB + rl) * D + d] = acc;
            if (d == 0) {
                sp.ml[(cta * RB + rl) * 2] = M;
                sp.ml[(cta * RB + rl) * 2 + 1] = L;
            }
        }
    }
}

/* out(b, t, h) = sum_s 2^(M_s - M) O_s / sum_s 2^(M_s - M) L_s over the splits s, M = max_s M_s (a
 * split with no key for the row has M_s = -inf, weight 0). One block of kCombineWarps warps per query
 * row: the threads find M over the splits together, then warp w sums splits w, w + kCombineWarps, ...
 * (lane: dims lane + 32 i), and the warps' sums add in shared memory. A thread per dim walking every
 * split in turn took a chain of hundreds of dependent L2 reads at 128K (512 splits at batch 1). */
constexpr int kCombineWarps = 8;

template <int D, typename TO>
__global__ void __launch_bounds__(32 * kCombineWarps) decode_combine_kernel(const AttnParams p, const SplitParams sp,
                                                                            int RB) {
    hae_pdl_enter();
    __shared__ float red[kCombineWarps][D + 1];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int64_t row = blockIdx.x; /* ((b * T) + t) * Hq + h */
    const int h = (int)(row % p.Hq);
    const int64_t t = (row / p.Hq) % p.T, b = row / ((int64_t)p.Hq * p.T);
    const int G = p.group, g = h / G, r = (int)t * G + h % G, rg = r / RB, rl = r % RB;
    const int64_t Y = (int64_t)(p.Hq / G) * sp.nrg;
    const int64_t cta0 = (b * Y + (int64_t)g * sp.nrg + rg) * sp.nsplit;
    float M = -INFINITY;
    for (int s = tid; s < sp.nsplit; s += 32 * kCombineWarps) M = fmaxf(M, sp.ml[((cta0 + s) * RB + rl) * 2]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
    if (lane == 0) red[warp][0] = M;
    __syncthreads();
#pragma unroll
    for (int w = 0; w < kCombineWarps; w++) M = fmaxf(M, red[w][0]);
    __syncthreads();

    float acc[D / 32] = {}, L = 0.0f;
#pragma unroll 4
    for (int s = warp; s < sp.nsplit; s += kCombineWarps) {
        const int64_t pr = (cta0 + s) * RB + rl;
        const float ms = sp.ml[pr * 2];
        const float wt = ms == -INFINITY ? 0.0f : hae_ex2(ms - M);
        L += wt * sp.ml[pr * 2 + 1];
#pragma unroll
        for (int i = 0; i < D / 32; i++) acc[i] += wt * sp.part[pr * D + lane + 32 * i];
    }
#pragma unroll
    for (int i = 0; i < D / 32; i++) red[warp][lane + 32 * i] = acc[i];
    if (lane == 0) red[warp][D] = L;
    __syncthreads();
    TO *orow = (TO *)p.out + b * p.o_sb + t * p.o_st + (int64_t)h * D;
    for (int d = tid; d < D; d += 32 * kCombineWarps) {
        float o = 0.0f, l = 0.0f;
#pragma unroll
        for (int w = 0; w < kCombineWarps; w++) o += red[w][d], l += red[w][D];
        hae_st(orow + d, o / l);
    }
}

template <typename K> hae_status set_smem(K kernel, size_t bytes) {
    HAE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
    return HAE_OK;
}

template <int D, typename TO> hae_status launch_prefill(const AttnParams &p, int64_t B, cudaStream_t s) {
    constexpr size_t smem = prefill_smem_bytes<D>();
    const int64_t mblocks = (p.T + kPrefillRows - 1) / kPrefillRows;
    if (mblocks > 65535 || B * p.Hq > INT_MAX)
        return hae_error(HAE_ERR_UNSUPPORTED, "hae_attention (cuda): %lld query blocks x %lld heads exceed the grid",
                         (long long)mblocks, (long long)(B * p.Hq));
    HAE_TRY(set_smem(flash_prefill_kernel<D, TO>, smem));
    flash_prefill_kernel<D, TO><<<dim3((unsigned)(B * p.Hq), (unsigned)mblocks), 128 * kPrefillWG, smem, s>>>(p);
    HAE_CUDA_LAUNCH_CHECK("flash_prefill_kernel");
    return HAE_OK;
}

template <int D, int MT, typename TO>
hae_status launch_decode(hae_backend *be, const AttnParams &p, int64_t B, cudaStream_t s) {
    constexpr int RB = 16 * MT;
    const int64_t Hkv = p.Hq / p.group, R = (int64_t)p.group * p.T;
    const int64_t ntiles = (p.pos0 + p.T - window_lo(p.pos0, p.window) + kTileN - 1) / kTileN; /* as the kernel's */
    SplitParams sp;
    sp.nrg = (int)((R + RB - 1) / RB);
    const int64_t base = B * Hkv * sp.nrg;
    if (Hkv * sp.nrg > 65535 || B > 65535)
        return hae_error(HAE_ERR_UNSUPPORTED, "hae_attention (cuda): %lld sequences x %lld row groups exceed the grid",
                         (long long)B, (long long)(Hkv * sp.nrg));
    /* About 8 waves of 2 CTAs per SM, at least 16 tiles per split, partials within the scratch. With at least 4
     * and the combine walking the splits in turn, batch 1 at 128K (4 kv heads) made 2048 CTAs of 4 tiles and 512
     * splits per row to combine: 222 us on an H200; 88 us with both changed */
    int dev = 0, sms = 0;
    HAE_CUDA_CHECK(cudaGetDevice(&dev));
    HAE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    int64_t nsplit = (16 * (int64_t)sms + base - 1) / base;
    if (nsplit > ntiles / 16) nsplit = ntiles / 16;
    const int64_t per_split = base * RB * (D + 2) * (int64_t)sizeof(float);
    const int64_t fit = (int64_t)(be->cuda->scratch_bytes / (size_t)per_split);
    if (nsplit > fit) nsplit = fit;
    if (nsplit > 65535) nsplit = 65535;
    if (nsplit < 1) nsplit = 1;
    const int64_t tps = (ntiles + nsplit - 1) / nsplit;
    sp.tps = (int)tps;
    sp.nsplit = (int)((ntiles + tps - 1) / tps);
    sp.part = (float *)be->cuda->scratch;
    sp.ml = sp.part + base * sp.nsplit * RB * D;

    constexpr size_t smem = decode_smem_bytes<D, MT>();
    HAE_TRY(set_smem(flash_decode_kernel<D, MT, TO>, smem));
    HAE_CUDA_CHECK(hae_launch_pdl(flash_decode_kernel<D, MT, TO>, dim3((unsigned)sp.nsplit, (unsigned)(Hkv * sp.nrg),
                                  (unsigned)B), dim3(kTcThreads), smem, s, p, sp));
    HAE_CUDA_LAUNCH_CHECK("flash_decode_kernel");
    if (sp.nsplit > 1) {
        HAE_CUDA_CHECK(hae_launch_pdl(decode_combine_kernel<D, TO>, dim3((unsigned)(B * p.T * p.Hq)),
                                      dim3(32 * kCombineWarps), 0, s, p, sp, RB));
        HAE_CUDA_LAUNCH_CHECK("decode_combine_kernel");
    }
    return HAE_OK;
}

template <int D, typename TO>
hae_status launch_tensor_core(hae_backend *be, const AttnParams &p, int64_t B, cudaStream_t s) {
    if (p.T > kDecodeMaxT) return launch_prefill<D, TO>(p, B, s);
    if ((int64_t)p.group * p.T <= 16) return launch_decode<D, 1, TO>(be, p, B, s);
    return launch_decode<D, 2, TO>(be, p, B, s);
}

/* cache[b, (pos0 + t) % cap, h, d] = src[b, t, h, d] for t >= t_first: when T > cap only the last cap
 * tokens land (later tokens overwrite earlier ones sequentially; in parallel, skipping is the same). */
template <typename TS, typename TC>
__global__ void kv_write_kernel(const TS *src, int64_t s_sb, int64_t s_st, int64_t s_sh, TC *cache, int64_t c_sb,
                                int64_t c_ss, int64_t c_sh, int64_t Tw, int64_t t_first, int64_t H, int64_t D,
                                int64_t cap, int64_t pos0, int64_t rows) {
    hae_pdl_enter();
    /* rows = B * Tw * H, one (b, t, h) row of D elements per grid.y step */
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
        const int64_t h = r % H, tw = (r / H) % Tw, b = r / (H * Tw);
        const int64_t t = t_first + tw;
        const int64_t slot = (pos0 + t) % cap;
        const TS *sr = src + b * s_sb + t * s_st + h * s_sh;
        TC *cr = cache + b * c_sb + slot * c_ss + h * c_sh;
        for (int64_t d = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; d < D; d += (int64_t)gridDim.x * blockDim.x)
            hae_mov(cr + d, sr + d);
    }
}

/* The FP8 layouts (hae.h): one warp per (b, t >= t_first, kv head) of src [B, T, H, D]: the D / 128 blocks of
 * codes and scales by hae_dev_fp8_block (bit for bit the CPU's); mla's (D 576) its 64 rope dims as bf16 after
 * the latent's 512, gqa's zeros up to the head's 16-byte boundary. */
template <typename TS>
__global__ void fp8_write_kernel(const TS *src, int64_t s_sb, int64_t s_st, int64_t s_sh, uint8_t *cache, int64_t c_sb,
                                 int64_t c_ss, int64_t c_sh, int64_t Tw, int64_t t_first, int64_t H, int D, int64_t cap,
                                 int64_t pos0, int64_t rows) {
    const int lane = threadIdx.x & 31;
    const bool mla = D == HAE_MLA_LATENT + HAE_MLA_ROPE;
    const int codes = mla ? HAE_MLA_LATENT : D;
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x / 32);
    for (int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; r < rows; r += warps) {
        const int64_t h = r % H, b = r / H / Tw, t = t_first + r / H % Tw;
        const TS *x = src + b * s_sb + t * s_st + h * s_sh;
        uint8_t *row = cache + b * c_sb + ((pos0 + t) % cap) * c_ss + h * c_sh;
        float *scales = (float *)(row + codes);
        for (int c = 0; c < codes / 128; c++) {
            float v[4];
            uint8_t q[4];
#pragma unroll
            for (int j = 0; j < 4; j++) v[j] = hae_ld(x + 128 * c + lane + 32 * j);
            const float sc = hae_dev_fp8_block(v, q);
#pragma unroll
            for (int j = 0; j < 4; j++) row[128 * c + lane + 32 * j] = q[j];
            if (lane == 0) scales[c] = sc;
        }
        if (mla) {
            uint16_t *rope = (uint16_t *)(row + HAE_MLA_FP8_ROPE);
            for (int d = lane; d < HAE_MLA_ROPE; d += 32) rope[d] = hae_dev_f32_to_bf16(hae_ld(x + HAE_MLA_LATENT + d));
        } else if (lane >= codes / 128 && lane < 4) {
            scales[lane] = 0.0f; /* the padding */
        }
    }
}

bool aligned16(const void *ptr, int64_t a, int64_t b) {
    return ((uintptr_t)ptr & 15) == 0 && a % 8 == 0 && b % 8 == 0;
}

} // namespace

extern "C" hae_status hae_kv_write_cuda(hae_backend *be, const hae_kv_write_args *a) {
    const int64_t B = a->src.shape[0], T = a->src.shape[1], H = a->src.shape[2], D = a->src.shape[3];
    const int64_t cap = a->cache.shape[1];
    if (B * T * H * D == 0) return HAE_OK;
    const int64_t t_first = T > cap ? T - cap : 0, Tw = T - t_first;
    const int64_t rows = B * Tw * H;
    cudaStream_t s = nullptr;
    HAE_TRY(hae_cuda_enter(be, &s));
    if (a->cache.dtype == HAE_FP8_E4M3) /* an FP8 layout (hae_kv_write checked the shapes) */
        return hae_cuda_dispatch(a->src.dtype, "hae_kv_write", [&](auto ts) -> hae_status {
            using TS = decltype(ts);
            const int64_t blocks = rows < 4096 ? (rows + 3) / 4 : 1024;
            fp8_write_kernel<TS><<<(unsigned)blocks, 128, 0, s>>>(
                (const TS *)a->src.data, a->src.stride[0], a->src.stride[1], a->src.stride[2], (uint8_t *)a->cache.data,
                a->cache.stride[0], a->cache.stride[1], a->cache.stride[2], Tw, t_first, H, (int)D, cap, a->pos0, rows);
            HAE_CUDA_LAUNCH_CHECK("fp8_write_kernel");
            return HAE_OK;
        });
    const int threads = 128;
    int64_t gx = (D + threads - 1) / threads;
    if (gx > 64) gx = 64;
    const int64_t gy = rows < 65535 ? rows : 65535;
    return hae_cuda_dispatch(a->src.dtype, "hae_kv_write", [&](auto ts) -> hae_status {
        using TS = decltype(ts);
        return hae_cuda_dispatch(a->cache.dtype, "hae_kv_write", [&](auto tc) -> hae_status {
            using TC = decltype(tc);
            HAE_CUDA_CHECK(hae_launch_pdl(kv_write_kernel<TS, TC>, dim3((unsigned)gx, (unsigned)gy), dim3(threads), 0,
                                          s,
                (const TS *)a->src.data, a->src.stride[0], a->src.stride[1], a->src.stride[2], (TC *)a->cache.data,
                a->cache.stride[0], a->cache.stride[1], a->cache.stride[2], Tw, t_first, H, D, cap, a->pos0, rows));
            HAE_CUDA_LAUNCH_CHECK("kv_write_kernel");
            return HAE_OK;
        });
    });
}

extern "C" hae_status hae_attention_cuda(hae_backend *be, const hae_attention_args *a) {
    const int64_t B = a->q.shape[0], T = a->q.shape[1], Hq = a->q.shape[2], Dk = a->q.shape[3];
    const int64_t Hkv = a->k_cache.shape[2], Dv = a->v_cache.shape[3];
    if (B * T * Hq == 0) return HAE_OK;
    if (Dk > kMaxD || Dv > kMaxD || Dk < 1 || Dv < 1)
        return hae_error(HAE_ERR_UNSUPPORTED, "hae_attention (cuda): head dims %lld/%lld outside 1..%d", (long long)Dk,
                         (long long)Dv, kMaxD);
    const int64_t rows = B * T * Hq;
    if (rows > INT_MAX)
        return hae_error(HAE_ERR_UNSUPPORTED, "hae_attention (cuda): %lld query rows exceed %d", (long long)rows,
                         INT_MAX);

    AttnParams p;
    p.q = a->q.data;
    p.q_sb = a->q.stride[0];
    p.q_st = a->q.stride[1];
    p.k = a->k_cache.data;
    p.k_sb = a->k_cache.stride[0];
    p.k_ss = a->k_cache.stride[1];
    p.v = a->v_cache.data;
    p.v_sb = a->v_cache.stride[0];
    p.v_ss = a->v_cache.stride[1];
    p.out = a->out.data;
    p.o_sb = a->out.stride[0];
    p.o_st = a->out.stride[1];
    p.T = T;
    p.cap = a->k_cache.shape[1];
    p.pos0 = a->pos0;
    p.window = a->window;
    p.Hq = (int)Hq;
    p.group = (int)(Hq / Hkv);
    p.Dk = (int)Dk;
    p.Dv = (int)Dv;
    p.scale = a->scale;

    cudaStream_t s = nullptr;
    HAE_TRY(hae_cuda_enter(be, &s));

    /* The tensor cores take bf16 q and caches with Dk = Dv in {64, 128}, 16-byte aligned rows (cp.async),
     * and positions and slots that fit an int. */
    const bool tc = a->q.dtype == HAE_BF16 && a->k_cache.dtype == HAE_BF16 && Dk == Dv && (Dk == 64 || Dk == 128) &&
                    aligned16(p.q, p.q_sb, p.q_st) && aligned16(p.k, p.k_sb, p.k_ss) &&
                    aligned16(p.v, p.v_sb, p.v_ss) && p.pos0 + T + kPrefillRows < kMaxRel && p.cap < kMaxRel;
    if (tc)
        return hae_cuda_dispatch(a->out.dtype, "hae_attention", [&](auto to) -> hae_status {
            using TO = decltype(to);
            return Dk == 64 ? launch_tensor_core<64, TO>(be, p, B, s) : launch_tensor_core<128, TO>(be, p, B, s);
        });
    if (Dk == 576 && Dv == 512) { /* mla: the sparse kernels over each query's whole window */
        bool ran = false;
        HAE_TRY(hae_attention_mla_cuda(be, a, &ran));
        if (ran) return HAE_OK;
    }
    return hae_cuda_dispatch(a->q.dtype, "hae_attention", [&](auto tq) -> hae_status {
        using TQ = decltype(tq);
        return hae_cuda_dispatch(a->k_cache.dtype, "hae_attention", [&](auto tkv) -> hae_status {
            using TKV = decltype(tkv);
            return hae_cuda_dispatch(a->out.dtype, "hae_attention", [&](auto to) -> hae_status {
                using TO = decltype(to);
                return launch_simple<TQ, TKV, TO>(p, rows, s);
            });
        });
    });
}

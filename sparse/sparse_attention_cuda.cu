/* DSA sparse attention on CUDA (contract in hae.h, reference sparse/attention_cpu.c; arguments
 * already checked by engine/ops.c, but not seq_lens, which stay on the device).
 *
 * For query (b, t, h) at p = seq_lens[b] - T + t, kv head g = h / G (G = Hq / Hkv), over the set J of
 * entries j of idx[b, t, :] with 0 <= j <= p (none when p is outside [0, cap)); j sits in slot j:
 *     s_j = scale q . k_j,   out = sum_{j in J} e^{s_j - m} v_j / sum_{j in J} e^{s_j - m},
 *     lse = m + ln sum_{j in J} e^{s_j - m},   m = max_j s_j;   J empty: out = 0, lse = +inf.
 *
 * Four kernels compute it:
 *  - ws_kernel, mla (Dk 576, Dv 512, v_cache a view of k_cache, bf16, groups past 16 heads) over idx lists
 *    of up to 131072 entries: wgmma (sm_90a), 64 heads a CTA, one warpgroup gathering key tiles and two
 *    computing, each taking every other tile (its comment says how). On an H200 at DeepSeek-V3.2's shapes
 *    (128 heads, top-2048 of 64K): decode at batch 64 in 92-94 us, prefill of 4096 tokens at 442-481
 *    TFLOP/s.
 *  - wg_kernel, the same shapes for dense lists (hae_attention_mla_cuda), mla's FP8 cache and longer lists:
 *    wgmma with both warpgroups computing each tile and gathering the next (its comment says how); over a
 *    bf16 cache at the shapes above, decode 101-103 us and prefill 391-421 TFLOP/s, where tc_kernel took
 *    183 us and 226 TFLOP/s.
 *  - tc_kernel, bf16 q and caches, (Dk, Dv) in {(576, 512), (128, 128), (64, 64)}, or gqa's FP8 caches of
 *    (128, 128) decoded into the bf16 tiles (its F8 form, for half the bytes: on an H200 as fast as over bf16 in
 *    decode at 32/8 heads, 17% slower at 16/4, 35% slower in prefill at 32/8): flash-style on
 *    mma.sync m16n8k16 (bf16 in, fp32 accumulate). A CTA takes R = 16 MT query heads of one kv head
 *    and one token (the rows of the MMA's M dimension; heads past G are zero rows, never written) and
 *    walks idx in tiles of 64 entries: the tile's K (and V) rows are gathered by index into shared
 *    memory with cp.async (unusable entries zero-filled, never read; a tile with no usable entry is
 *    skipped), two stages, rows XOR-swizzled in 16-byte chunks so ldmatrix is conflict-free.
 *    S = Q K^T is split over the warps by (m tile, key range); the online softmax works in the log2
 *    domain (x = s log2 e, exp2), its row maxima exchanged through shared memory; P goes to shared
 *    memory as bf16 and O += P V is split over the warps by value columns, each warp holding all R
 *    rows of its Dv / NW columns in registers (mla: 64 heads x 64 columns, 128 floats a thread).
 *    mla's V is the first 512 dims of the gathered K rows (v_cache a view of k_cache): no second gather.
 *    When the CTAs would not fill the GPU (decode at small batch), idx is split into `splits` ranges
 *    (both tensor-core kernels);
 *    each writes unnormalised O, its max and sum to the context's scratch and combine_kernel merges:
 *        M = max_s m_s,  L = sum_s 2^{m_s - M} l_s,  out = sum_s 2^{m_s - M} O_s / L,  lse = (M + log2 L) ln 2.
 *  - simple_kernel, everything else (f32, other head dims up to 576, unaligned rows): a block of four
 *    warps per query row, each warp taking every fourth group of four entries, lanes holding the dims,
 *    an online softmax in fp32 (natural exp, as the CPU), the warps merged through shared memory. */
#include "cuda_check.cuh"
#include "mma.cuh"
#include "wgmma.cuh"
#include "cluster.cuh"

#include <cuda_fp16.h>
#include <limits.h>
#include <math.h>
#include <utility>

namespace {

constexpr int kBN = 64;          /* idx entries (keys) per tile */
/* Split-KV ranges: at most kSplits, or kMaxSplits where each range still gets kLongSplitTiles tiles. Measured on
 * an H200, one sequence's 16-head mla decode: 32K keys 57.5 us in 64 ranges of 8 tiles, 64.3 us in 128 of 4;
 * 128K keys 143.0 us in 64 ranges, 106.7 us in 128 of 16. */
constexpr int kSplits = 64;
constexpr int kMaxSplits = 128;
constexpr int kLongSplitTiles = 8;
constexpr int kCombineThreads = 128; /* one weight per split */
static_assert(kMaxSplits <= kCombineThreads, "combine_kernel's weights");
constexpr int kMinSplitTiles = 2; /* tiles per split at least */
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

struct SparseParams {
    const void *q;
    int64_t q_sb, q_st; /* q's head stride is Dk (dense within a row) */
    const void *k, *v;
    int64_t k_sb, k_ss, v_sb, v_ss;
    int64_t k_sh, v_sh; /* kv head strides: Dk and Dv, or HAE_FP8_HEAD of them in gqa's FP8 layout */
    const int32_t *idx;
    int64_t i_sb, i_st;
    const int32_t *lens;
    int64_t l_s;
    void *out;
    int64_t o_sb, o_st;
    float *lse; /* NULL: not asked */
    int64_t e_sb, e_st;
    float *part;    /* split-KV: unnormalised O [B T Hq][splits][Dv] */
    float *part_ml; /* and (max, sum) [B T Hq][splits][2], log2 domain */
    int64_t T, cap, nk;
    /* dense (idx NULL): each query's list is its causal window, positions lo..pos0 + t (lo = 0, or the
     * window's start), K/V in a ring of cap slots; hae_attention_mla_cuda's */
    bool dense;
    int64_t pos0, window;
    /* queries per CTA (dense, warpgroup kernel: 64 / G of them share a CTA's 64 rows and its key tiles), and
     * the groups of them along T; 1 and T otherwise */
    int qpack;
    int64_t tgroups;
    int Hq, Hkv, G, Dk, Dv;
    int hblocks, splits, tiles_per_split;
    bool out_bf16, v_shared;
    bool out_pairs; /* out and its row strides allow two-element stores */
    float scale, scale_log2;
    /* a batch split between two caches: rows b >= B1 read part 2 (row b - B1), same token and head strides */
    int64_t B1; /* kWhole: one part */
    const void *k2, *v2;
    int64_t k2_sb, v2_sb;
    const int32_t *idx2, *lens2;
    int64_t i2_sb, l2_s, cap2;
};
constexpr int64_t kWhole = INT64_MAX;

/* Sequence b's K and V rows: the first part's, or the second's past B1. SPLIT is whether a call has a second
 * part: each kernel comes in both forms, so a batch in one part runs the code it ran before parts existed, and a
 * split batch the same arithmetic (its outputs the same bits, as tests/gpu_sparse.c checks). */
template <bool SPLIT, class T> __device__ __forceinline__ const T *k_seq(const SparseParams &p, int64_t b) {
    return !SPLIT || b < p.B1 ? (const T *)p.k + b * p.k_sb : (const T *)p.k2 + (b - p.B1) * p.k2_sb;
}
template <bool SPLIT, class T> __device__ __forceinline__ const T *v_seq(const SparseParams &p, int64_t b) {
    return !SPLIT || b < p.B1 ? (const T *)p.v + b * p.v_sb : (const T *)p.v2 + (b - p.B1) * p.v2_sb;
}

__device__ __forceinline__ void st_out(void *p, bool bf16, int64_t i, float v) {
    if (bf16) ((uint16_t *)p)[i] = hae_dev_f32_to_bf16(v);
    else ((float *)p)[i] = v;
}

/* The usable range of query (b, t): entries j with 0 <= j <= hi; hi = -1 when p is outside [0, cap).
 * Dense: its position, every earlier one of its window held in the ring. */
template <bool SPLIT> __device__ __forceinline__ int64_t usable_hi(const SparseParams &p, int64_t b, int64_t t) {
    if (p.dense) return p.pos0 + t;
    const bool one = !SPLIT || b < p.B1;
    const int64_t pos = (int64_t)(one ? p.lens[b * p.l_s] : p.lens2[(b - p.B1) * p.l2_s]) - p.T + t;
    return pos >= 0 && pos < (one ? p.cap : p.cap2) ? pos : -1;
}
/* Where a dense query's list starts: its window's first position (0 without a window). */
__device__ __forceinline__ int64_t list_lo(const SparseParams &p, int64_t hi) {
    return p.dense && p.window > 0 && hi - p.window + 1 > 0 ? hi - p.window + 1 : 0;
}
/* Entry i of a query's list (idx row irow, or dense from lo); -1 past the list. */
__device__ __forceinline__ int64_t entry_at(const SparseParams &p, const int32_t *irow, int64_t lo, int64_t i) {
    return i >= p.nk ? -1 : p.dense ? lo + i : (int64_t)__ldg(irow + i);
}
/* The cache slot of position j (a window's ring wraps; sparse positions are below cap). */
__device__ __forceinline__ int64_t slot_of(const SparseParams &p, int64_t j) { return j < p.cap ? j : j % p.cap; }
/* The idx row of query (b, t); none when dense. */
template <bool SPLIT> __device__ __forceinline__ const int32_t *idx_row(const SparseParams &p, int64_t b, int64_t t) {
    if (p.dense) return nullptr;
    return !SPLIT || b < p.B1 ? p.idx + b * p.i_sb + t * p.i_st : p.idx2 + (b - p.B1) * p.i2_sb + t * p.i_st;
}

/* ---------------------------------------------------------------- tensor-core pieces
 * mma.sync m16n8k16 bf16 (row.col) fragments, g = lane / 4, t = lane % 4 (two bf16 per register):
 *   A 16x16: a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..)
 *   B 16x8:  b0 (k 2t..2t+1, n g), b1 (k 2t+8.., n g)
 *   C 16x8:  c0 (g, 2t), c1 (g, 2t+1), c2 (g+8, 2t), c3 (g+8, 2t+1)
 * Shared tiles are rows of RC 16-byte chunks (RC a multiple of 8); chunk c of row r is stored at
 * chunk c ^ (r & 7), so the 8 rows an ldmatrix phase reads at one chunk hit 8 distinct bank groups. */
__device__ __forceinline__ uint32_t swz(uint32_t base, int row, int chunk, int rc) {
    return base + (uint32_t)((row * rc + (chunk ^ (row & 7))) * 16);
}

/* Two floats as bf16x2, round to nearest even; lo lands at the lower address. */
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    uint32_t r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

/* Eight e4m3 values (v's bytes in order) times their scale, as eight bf16 */
__device__ __forceinline__ uint4 fp8x8_to_bf16(uint2 v, float sk) {
    uint32_t o[4];
#pragma unroll
    for (int h = 0; h < 4; h++) {
        uint32_t f16x2;
        asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(f16x2) : "h"((uint16_t)((h < 2 ? v.x : v.y) >> (16 * (h & 1)))));
        o[h] = pack_bf16(__half2float(__ushort_as_half((uint16_t)f16x2)) * sk,
                         __half2float(__ushort_as_half((uint16_t)(f16x2 >> 16))) * sk);
    }
    return make_uint4(o[0], o[1], o[2], o[3]);
}
__device__ __forceinline__ void st_shared16(uint32_t at, uint4 v) {
    asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};" ::"r"(at), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w) : "memory");
}
/* gqa's FP8 layout: row r's raw bytes (D codes, then thread sub's copy of the head's scales at D + 16 sub) into
 * a bf16 stage of swizzled rows of D / 8 chunks; thread sub takes code chunks sub, sub + TPK, ... */
template <int D, int TPK> __device__ __forceinline__ void decode_fp8_row(uint32_t raw, uint32_t stage, int r, int sub) {
    float4 sc;
    asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];"
                 : "=f"(sc.x), "=f"(sc.y), "=f"(sc.z), "=f"(sc.w) : "r"(raw + (uint32_t)(D + 16 * sub)));
#pragma unroll
    for (int c = sub; c < D / 16; c += TPK) {
        uint4 v;
        asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];"
                     : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(raw + (uint32_t)(16 * c)));
        const float sk = c < 8 ? sc.x : c < 16 ? sc.y : c < 24 ? sc.z : sc.w; /* 128 dims a scale */
        st_shared16(swz(stage, r, 2 * c, D / 8), fp8x8_to_bf16(make_uint2(v.x, v.y), sk));
        st_shared16(swz(stage, r, 2 * c + 1, D / 8), fp8x8_to_bf16(make_uint2(v.z, v.w), sk));
    }
}

/* Shapes of one tensor-core configuration: DK/DV head dims, MT m tiles (R = 16 MT rows), NW warps. */
template <int DK, int DV, int MT, int NW> struct Tc {
    static constexpr int NT = 32 * NW, R = 16 * MT;
    static constexpr int KG = NW / MT;   /* warps sharing an m tile in S, each taking SN keys */
    static constexpr int SN = kBN / KG, SNT = SN / 8;
    static constexpr int ONT = DV / NW / 8; /* n8 tiles of O per warp */
    static constexpr int KC = DK / 8, VC = DV / 8, PC = kBN / 8; /* 16-byte chunks per row */
    static constexpr int TPK = NT / kBN; /* threads gathering one key row */
    static_assert(NW % MT == 0 && kBN % KG == 0 && SNT % 2 == 0, "S split");
    static_assert(DV % (NW * 16) == 0 && ONT % 2 == 0, "O split");
    static_assert(KC % 8 == 0 && VC % 8 == 0 && PC % 8 == 0 && DK % 16 == 0, "swizzled rows");
    static_assert(NT % kBN == 0 && KC % TPK == 0 && VC % TPK == 0, "gather");
    /* gqa's FP8 layout: a raw row, its codes then each gathering thread's copy of the scales */
    static constexpr int RK = DK + 16 * TPK, RV = DV + 16 * TPK, RAW = 2 * kBN * (RK + RV);
    /* shared memory, bytes: Q [R][DK], K [2][BN][DK], V [2][BN][DV] (absent when shared with K),
     * P [R][BN] bf16, red [KG][R] f32, alpha [R] f32, kidx [2][BN] i32; FP8: the raw K and V rows of
     * two tiles [2][BN][RK + RV] */
    static constexpr int Q_OFF = 0, K_OFF = R * DK * 2, KBYTES = kBN * DK * 2, VBYTES = kBN * DV * 2;
    static __host__ __device__ constexpr int v_off() { return K_OFF + 2 * KBYTES; }
    static __host__ __device__ constexpr int p_off(bool shared) { return v_off() + (shared ? 0 : 2 * VBYTES); }
    static __host__ __device__ constexpr int red_off(bool shared) { return p_off(shared) + R * kBN * 2; }
    static __host__ __device__ constexpr int alpha_off(bool shared) { return red_off(shared) + KG * R * 4; }
    static __host__ __device__ constexpr int kidx_off(bool shared) { return alpha_off(shared) + R * 4; }
    static __host__ __device__ constexpr int raw_off(bool shared) { return kidx_off(shared) + 2 * kBN * 4; }
    static __host__ __device__ constexpr int smem(bool shared, bool f8) { return raw_off(shared) + (f8 ? RAW : 0); }
};

/* F8: K and V in gqa's FP8 layout (DK, DV multiples of 128, not shared): a tile's raw rows come by cp.async,
 * each thread's own rows, which it decodes into the bf16 stage once they have landed (before the barrier that
 * precedes S): each element e4m3 -> f16 -> f32 times its scale, exact in bf16; zero-filled rows decode to 0.
 * Measured on an H200 (gqa decode, B 64, top-2048 of 32K, 32/8 and 16/4 heads; prefill of 4096 queries at 32/8),
 * this 231 / 119 / 12598 us (the bf16 cache 231 / 102 / 9281); the MMAs in f16 over unscaled codes (one cvt a
 * pair; the scales applied to S's columns and P's, O kept in units of the tile's largest V scale) 245 / 125 /
 * 14389; one bf16 stage, so that three CTAs fit an SM, 328 / 135 / 12680. */
template <int DK, int DV, int MT, int NW, bool SPLIT, bool F8>
__global__ void __launch_bounds__(32 * NW, DK > 256 ? 1 : 2) tc_kernel(const SparseParams p) {
    using C = Tc<DK, DV, MT, NW>;
    static_assert(!F8 || (DK % 128 == 0 && DV % 128 == 0), "gqa's FP8 heads");
    extern __shared__ __align__(128) unsigned char smem[];
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, g8 = lane >> 2, t4 = lane & 3;

    int64_t blk = blockIdx.x; /* (((b T + t) Hkv + gk) hblocks + hb) splits + split */
    const int split = (int)(blk % p.splits);
    blk /= p.splits;
    const int hb = (int)(blk % p.hblocks);
    blk /= p.hblocks;
    const int gk = (int)(blk % p.Hkv);
    blk /= p.Hkv;
    const int64_t t = blk % p.T, b = blk / p.T;
    const int h0 = gk * p.G + hb * C::R; /* first query head of this CTA */
    const int nh = min(C::R, p.G - hb * C::R);
    /* positions fit an int (hae_attention and idx's i32 entries) */
    const int hi = (int)min(usable_hi<SPLIT>(p, b, t), (int64_t)INT_MAX);
    const int64_t lo = list_lo(p, hi);
    const int ntiles = (int)((p.nk + kBN - 1) / kBN);
    const int tile0 = split * p.tiles_per_split, tile1 = min(ntiles, tile0 + p.tiles_per_split);

    const uint32_t sbase = (uint32_t)__cvta_generic_to_shared(smem);
    const uint32_t sQ = sbase + C::Q_OFF, sK = sbase + C::K_OFF;
    const uint32_t sV = p.v_shared ? sK : sbase + C::v_off();
    const int vrc = p.v_shared ? C::KC : C::VC; /* chunks per row of the V tile */
    const int vbytes = p.v_shared ? C::KBYTES : C::VBYTES;
    const uint32_t sP = sbase + C::p_off(p.v_shared);
    float *red = (float *)(smem + C::red_off(p.v_shared));
    float *alpha_s = (float *)(smem + C::alpha_off(p.v_shared));
    int *kidx = (int *)(smem + C::kidx_off(p.v_shared));

    const uint16_t *kbase = k_seq<SPLIT, uint16_t>(p, b) + (int64_t)gk * DK;
    const uint16_t *vbase = v_seq<SPLIT, uint16_t>(p, b) + (int64_t)gk * DV;
    const uint8_t *kbase8 = k_seq<SPLIT, uint8_t>(p, b) + (int64_t)gk * p.k_sh; /* F8: strides in bytes */
    const uint8_t *vbase8 = v_seq<SPLIT, uint8_t>(p, b) + (int64_t)gk * p.v_sh;
    const uint32_t sRaw = sbase + C::raw_off(false);
    const int32_t *irow = idx_row<SPLIT>(p, b, t);

    /* Q rows (zero rows past the group's heads) */
    {
        const uint16_t *qrow = (const uint16_t *)p.q + b * p.q_sb + t * p.q_st + (int64_t)h0 * DK;
        for (int i = tid; i < C::R * C::KC; i += C::NT) {
            const int r = i / C::KC, c = i % C::KC;
            const bool ok = r < nh;
            cp_async16z(swz(sQ, r, c, C::KC), ok ? qrow + (int64_t)r * DK + c * 8 : qrow, ok);
        }
        cp_async_commit();
    }

    /* The gather: thread tid fetches chunks sub, sub + TPK, ... of key row kr of a tile. */
    const int kr = tid / C::TPK, sub = tid % C::TPK;
    /* Records the tile's usable entries in kidx[st]; true when it has one (a CTA-wide vote). */
    auto probe = [&](int tile, int st, int &j) -> bool {
        const int64_t i = (int64_t)tile * kBN + kr;
        j = (int)entry_at(p, irow, lo, i);
        const bool ok = j >= 0 && j <= hi;
        if (sub == 0) kidx[st * kBN + kr] = ok ? j : -1;
        return __syncthreads_or(ok) != 0;
    };
    /* F8: this thread's raw K and V rows of stage st */
    const uint32_t rawK0 = sRaw + (uint32_t)(kr * C::RK), rawV0 = sRaw + (uint32_t)(kBN * C::RK + kr * C::RV);
    auto issue = [&](int st, int j) {
        const bool ok = j >= 0 && j <= hi;
        if (F8) {
            const uint8_t *ks = kbase8 + (ok ? slot_of(p, j) : 0) * p.k_ss, *vs = vbase8 + (ok ? slot_of(p, j) : 0) * p.v_ss;
            const uint32_t rk = rawK0 + (uint32_t)(st * (C::RAW / 2)), rv = rawV0 + (uint32_t)(st * (C::RAW / 2));
            for (int c = sub; c < DK / 16; c += C::TPK) cp_async16z(rk + 16 * c, ks + 16 * c, ok);
            for (int c = sub; c < DV / 16; c += C::TPK) cp_async16z(rv + 16 * c, vs + 16 * c, ok);
            cp_async16z(rk + DK + 16 * sub, ks + DK, ok);
            cp_async16z(rv + DV + 16 * sub, vs + DV, ok);
            return;
        }
        const uint16_t *kr_src = kbase + (ok ? slot_of(p, j) : 0) * p.k_ss;
        const uint32_t dk = sK + (uint32_t)(st * C::KBYTES);
        for (int c = sub; c < C::KC; c += C::TPK) cp_async16z(swz(dk, kr, c, C::KC), kr_src + c * 8, ok);
        if (!p.v_shared) {
            const uint16_t *vr_src = vbase + (ok ? slot_of(p, j) : 0) * p.v_ss;
            const uint32_t dv = sV + (uint32_t)(st * C::VBYTES);
            for (int c = sub; c < C::VC; c += C::TPK) cp_async16z(swz(dv, kr, c, C::VC), vr_src + c * 8, ok);
        }
    };
    /* The first tile at or after `from` with a usable entry (tile1 if none); its kidx go to stage st. */
    auto next_tile = [&](int from, int st, int &j) -> int {
        int tl = from;
        while (tl < tile1 && !probe(tl, st, j)) tl++;
        return tl;
    };

    /* S warp: m tile mt, keys [n0, n0 + SN); O warp: all R rows, value columns [d0, d0 + DV / NW). */
    const int mt = w % MT, n0 = (w / MT) * C::SN, d0 = w * (DV / NW);
    const int r0 = mt * 16 + g8, r1 = r0 + 8;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
    float o[MT][C::ONT][4];
#pragma unroll
    for (int mi = 0; mi < MT; mi++)
#pragma unroll
        for (int ni = 0; ni < C::ONT; ni++) o[mi][ni][0] = o[mi][ni][1] = o[mi][ni][2] = o[mi][ni][3] = 0.0f;

    int j = -1;
    int cur = next_tile(tile0, 0, j), st = 0;
    if (cur < tile1) issue(0, j);
    cp_async_commit();
    while (cur < tile1) {
        /* prefetch the next tile into the other stage (free: its tile ended with a barrier) */
        const int nxt = next_tile(cur + 1, st ^ 1, j);
        if (nxt < tile1) issue(st ^ 1, j);
        cp_async_commit();
        cp_async_wait<1>();
        if (F8) { /* this thread's rows of the tile, into the bf16 stage */
            const uint32_t rk = rawK0 + (uint32_t)(st * (C::RAW / 2)), rv = rawV0 + (uint32_t)(st * (C::RAW / 2));
            decode_fp8_row<DK, C::TPK>(rk, sK + (uint32_t)(st * C::KBYTES), kr, sub);
            decode_fp8_row<DV, C::TPK>(rv, sV + (uint32_t)(st * C::VBYTES), kr, sub);
        }
        __syncthreads();

        const uint32_t sKs = sK + (uint32_t)(st * C::KBYTES), sVs = sV + (uint32_t)(st * vbytes);
        const int *kid = kidx + st * kBN;

        /* S = Q K^T for rows of m tile mt and keys [n0, n0 + SN) */
        float s[C::SNT][4];
#pragma unroll
        for (int nj = 0; nj < C::SNT; nj++) s[nj][0] = s[nj][1] = s[nj][2] = s[nj][3] = 0.0f;
        {
            const int arow = mt * 16 + (lane & 15), ahalf = lane >> 4;
            const int brow = n0 + (lane & 7) + ((lane >> 4) << 3), bhalf = (lane >> 3) & 1;
#pragma unroll 2
            for (int kc = 0; kc < DK / 16; kc++) {
                uint32_t a[4];
                ldsm_x4(a, swz(sQ, arow, 2 * kc + ahalf, C::KC));
#pragma unroll
                for (int jj = 0; jj < C::SNT / 2; jj++) {
                    uint32_t bb[4];
                    ldsm_x4(bb, swz(sKs, brow + 16 * jj, 2 * kc + bhalf, C::KC));
                    mma_bf16(s[2 * jj], a, bb[0], bb[1]);
                    mma_bf16(s[2 * jj + 1], a, bb[2], bb[3]);
                }
            }
        }

        /* online softmax, log2 domain; unusable keys -> -inf */
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int nj = 0; nj < C::SNT; nj++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const bool ok = kid[n0 + 8 * nj + 2 * t4 + e] >= 0;
                s[nj][e] = ok ? s[nj][e] * p.scale_log2 : -INFINITY;
                s[nj][2 + e] = ok ? s[nj][2 + e] * p.scale_log2 : -INFINITY;
                mx0 = fmaxf(mx0, s[nj][e]);
                mx1 = fmaxf(mx1, s[nj][2 + e]);
            }
        mx0 = quad_max(mx0);
        mx1 = quad_max(mx1);
        if (t4 == 0) {
            red[(w / MT) * C::R + r0] = mx0;
            red[(w / MT) * C::R + r1] = mx1;
        }
        __syncthreads();
        float mn0 = m0, mn1 = m1;
#pragma unroll
        for (int kg = 0; kg < C::KG; kg++) {
            mn0 = fmaxf(mn0, red[kg * C::R + r0]);
            mn1 = fmaxf(mn1, red[kg * C::R + r1]);
        }
        /* the tile has a usable key, so mn is finite; the guard keeps exp2 off (-inf) - (-inf) */
        const float base0 = mn0 == -INFINITY ? 0.0f : mn0, base1 = mn1 == -INFINITY ? 0.0f : mn1;
        const float al0 = hae_ex2(m0 - base0), al1 = hae_ex2(m1 - base1); /* 0 on the first tile */
        m0 = mn0, m1 = mn1;
        float ps0 = 0.0f, ps1 = 0.0f;
#pragma unroll
        for (int nj = 0; nj < C::SNT; nj++) {
            const float p00 = hae_ex2(s[nj][0] - base0), p01 = hae_ex2(s[nj][1] - base0);
            const float p10 = hae_ex2(s[nj][2] - base1), p11 = hae_ex2(s[nj][3] - base1);
            ps0 += p00 + p01;
            ps1 += p10 + p11;
            const int ch = (n0 + 8 * nj) / 8;
            asm volatile("st.shared.b32 [%0], %1;" ::"r"(swz(sP, r0, ch, C::PC) + 4 * t4), "r"(pack_bf16(p00, p01)));
            asm volatile("st.shared.b32 [%0], %1;" ::"r"(swz(sP, r1, ch, C::PC) + 4 * t4), "r"(pack_bf16(p10, p11)));
        }
        l0 = l0 * al0 + ps0;
        l1 = l1 * al1 + ps1;
        if (w < MT && t4 == 0) {
            alpha_s[r0] = al0;
            alpha_s[r1] = al1;
        }
        __syncthreads();

        /* O = alpha O + P V for all R rows and value columns [d0, d0 + DV / NW) */
#pragma unroll
        for (int mi = 0; mi < MT; mi++) {
            const float a0 = alpha_s[mi * 16 + g8], a1 = alpha_s[mi * 16 + g8 + 8];
#pragma unroll
            for (int ni = 0; ni < C::ONT; ni++) {
                o[mi][ni][0] *= a0, o[mi][ni][1] *= a0;
                o[mi][ni][2] *= a1, o[mi][ni][3] *= a1;
            }
        }
        {
            const int prow = lane & 15, phalf = lane >> 4;
            const int vrow = (lane & 7) + (((lane >> 3) & 1) << 3), vhalf = lane >> 4;
#pragma unroll
            for (int kc = 0; kc < kBN / 16; kc++) {
                uint32_t a[MT][4];
#pragma unroll
                for (int mi = 0; mi < MT; mi++) ldsm_x4(a[mi], swz(sP, mi * 16 + prow, 2 * kc + phalf, C::PC));
#pragma unroll
                for (int nj = 0; nj < C::ONT / 2; nj++) {
                    uint32_t bb[4];
                    ldsm_x4_t(bb, swz(sVs, 16 * kc + vrow, d0 / 8 + 2 * nj + vhalf, vrc));
#pragma unroll
                    for (int mi = 0; mi < MT; mi++) {
                        mma_bf16(o[mi][2 * nj], a[mi], bb[0], bb[1]);
                        mma_bf16(o[mi][2 * nj + 1], a[mi], bb[2], bb[3]);
                    }
                }
            }
        }
        __syncthreads(); /* stage st, P, red and alpha are free again */
        cur = nxt;
        st ^= 1;
    }
    cp_async_wait_all();

    /* row sums over the quad and the KG warps of an m tile; the final max of each row */
    l0 = quad_sum(l0);
    l1 = quad_sum(l1);
    if (t4 == 0) {
        red[(w / MT) * C::R + r0] = l0;
        red[(w / MT) * C::R + r1] = l1;
        if (w < MT) {
            alpha_s[r0] = m0;
            alpha_s[r1] = m1;
        }
    }
    __syncthreads();
#pragma unroll
    for (int mi = 0; mi < MT; mi++)
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const int r = mi * 16 + g8 + 8 * half;
            if (r >= nh) continue;
            float L = 0.0f;
#pragma unroll
            for (int kg = 0; kg < C::KG; kg++) L += red[kg * C::R + r];
            const float M = alpha_s[r];
            const int h = h0 + r;
            const int64_t row = (b * p.T + t) * p.Hq + h;
            if (p.splits == 1) {
                const float inv = L > 0.0f ? 1.0f / L : 0.0f; /* no usable index: out = 0 */
                const int64_t ob = b * p.o_sb + t * p.o_st + (int64_t)h * DV;
#pragma unroll
                for (int ni = 0; ni < C::ONT; ni++) {
                    const int d = d0 + 8 * ni + 2 * t4;
                    st_out(p.out, p.out_bf16, ob + d, o[mi][ni][2 * half] * inv);
                    st_out(p.out, p.out_bf16, ob + d + 1, o[mi][ni][2 * half + 1] * inv);
                }
                if (p.lse && w == 0 && t4 == 0)
                    p.lse[b * p.e_sb + t * p.e_st + h] = L > 0.0f ? (M + log2f(L)) * kLn2 : INFINITY;
            } else {
                float *dst = p.part + (row * p.splits + split) * DV;
#pragma unroll
                for (int ni = 0; ni < C::ONT; ni++) {
                    const int d = d0 + 8 * ni + 2 * t4;
                    *(float2 *)(dst + d) = make_float2(o[mi][ni][2 * half], o[mi][ni][2 * half + 1]);
                }
                if (w == 0 && t4 == 0) {
                    p.part_ml[(row * p.splits + split) * 2] = M;
                    p.part_ml[(row * p.splits + split) * 2 + 1] = L;
                }
            }
        }
}

/* Merges the splits of one query row (b, t, h): the formula above the file. */
__global__ void __launch_bounds__(kCombineThreads) combine_kernel(const SparseParams p) {
    __shared__ float wsh[kMaxSplits];
    const int64_t row = blockIdx.x;
    const int h = (int)(row % p.Hq);
    const int64_t t = (row / p.Hq) % p.T, b = row / ((int64_t)p.Hq * p.T);
    const float *ml = p.part_ml + row * p.splits * 2;
    float M = -INFINITY;
    for (int s = 0; s < p.splits; s++) M = fmaxf(M, ml[2 * s]);
    if (threadIdx.x < p.splits) {
        const float ms = ml[2 * threadIdx.x];
        wsh[threadIdx.x] = ms == -INFINITY ? 0.0f : hae_ex2(ms - M);
    }
    __syncthreads();
    float L = 0.0f;
    for (int s = 0; s < p.splits; s++) L += wsh[s] * ml[2 * s + 1];
    const float inv = L > 0.0f ? 1.0f / L : 0.0f;
    const float *po = p.part + row * p.splits * p.Dv;
    const int64_t ob = b * p.o_sb + t * p.o_st + (int64_t)h * p.Dv;
    for (int d = threadIdx.x; d < p.Dv; d += blockDim.x) {
        float acc = 0.0f;
        for (int s = 0; s < p.splits; s++) acc += wsh[s] * po[(int64_t)s * p.Dv + d];
        st_out(p.out, p.out_bf16, ob + d, acc * inv);
    }
    if (p.lse && threadIdx.x == 0) p.lse[b * p.e_sb + t * p.e_st + h] = L > 0.0f ? (M + log2f(L)) * kLn2 : INFINITY;
}

/* ---------------------------------------------------------------- the warpgroup kernel (mla)
 * wgmma (sm_90a): D = A B with A [64 x 16] and B [16 x N] bf16 read from shared memory through
 * descriptors, fp32 D in registers: warp i of the warpgroup holds rows 16 i + g and 16 i + g + 8
 * (g = lane / 4), register 4 c + e holding column 8 c + 2 (lane % 4) + (e & 1) of row 16 i + g + 8 (e >> 1).
 * Tiles are 128-byte-swizzled blocks of 64 bf16 columns: element (r, c) of a tile with R rows sits in
 * block c / 64 at byte r 128 + ((c / 8 % 8) ^ (r % 8)) 16 + (c % 8) 2, blocks R 128 bytes apart and
 * 1024-byte aligned. Read with rows as the k-contiguous ("K-major") operand, 8-row groups are 1024
 * bytes apart; read transposed (a key tile as the [keys x dims] B of P V, "MN-major"), 8-key groups are
 * 1024 bytes apart and 64-dim blocks R 128 bytes apart. */

constexpr int kWgRows = 64;                        /* query heads per CTA: wgmma's M */
constexpr int kWgDk = 576, kWgDv = 512;            /* mla's latent and value dims */
constexpr int kWgThreads = 256;                    /* two warpgroups */
constexpr int kWgBlock = kWgRows * 128;            /* one 64-column block of a 64-row tile, bytes */
constexpr int kWgTile = kWgDk / 64 * kWgBlock;     /* Q, or one stage of gathered keys */
constexpr int kWgChunks = kWgDk / 8;               /* 16-byte chunks of a row */
/* FP8: a raw tile's row stride in shared memory, 176 words, so the 16 lanes of one 8-byte access phase
 * (two rows, eight chunks each) hit 32 distinct banks */
constexpr int kFp8Ld = 704;
/* How the warpgroup kernel takes its key rows: bf16 by cp.async; mla's FP8 layout, each CTA decoding whole
 * tiles; or mla's FP8 layout decoded half by each CTA of a cluster of two that share a query's keys (two
 * 64-head blocks), each writing its decoded half into both CTAs' stages. */
enum WgKv { kWgBf16, kWgFp8, kWgFp8Pair };
/* Shared memory after Q: bf16 and FP8 pair two key stages, P in a stage's rope block; FP8 one stage, the
 * raw tile and P (the room of a second stage) */
template <WgKv KV> struct WgLayout {
    static constexpr bool kRawTile = KV == kWgFp8;
    static constexpr int kRaw = 2 * kWgTile;                              /* FP8 [64][kFp8Ld] bytes */
    static constexpr int kP = kRaw + kBN * kFp8Ld;                        /* FP8 [64 x 64] bf16, swizzled */
    static constexpr int kRed = kRawTile ? kP + kWgBlock : 3 * kWgTile;  /* row maxima / sums [2][64] f32 */
    static constexpr int kOk = kRed + 2 * kWgRows * 4;                     /* usable flags of each stage's keys [2][64] */
    static constexpr int kBar = kOk + 2 * kBN * 4;                         /* FP8 pair: each stage's mbarrier */
    static constexpr int kSmem = kBar + 16 + 1024;                         /* + slack to align the base to 1024 */
};
static_assert(kBN == kWgRows && kWgDk % 64 == 0 && kWgDk - kWgDv >= 64, "bf16: P lives in a stage's last block");

__device__ __forceinline__ uint32_t swz128(uint32_t tile, int row, int chunk) {
    return tile + (uint32_t)((chunk >> 3) * kWgBlock + row * 128 + (((chunk & 7) ^ (row & 7)) << 4));
}
/* d (+)= A B, 64 x 32 x 16, both K-major; a, b: descriptor low words; accumulate false: d = A B. */
__device__ __forceinline__ void wgmma_64x32(float (&d)[16], uint32_t a, uint32_t b, bool accumulate) {
    asm volatile("{\n.reg .pred p;\n.reg .b64 da, db;\nmov.b64 da, {%16, %18};\nmov.b64 db, {%17, %18};\n"
                 "setp.ne.b32 p, %19, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, da, db, p, 1, 1, 0, 0;\n}"
                 : HAE_WG_F8(d, 0), HAE_WG_F8(d, 8)
                 : "r"(a), "r"(b), "r"(kWgDescHi), "r"((int)accumulate)
                 : "memory");
}
/* d += A B, 64 x 256 x 16, A K-major, B transposed (MN-major); a, b: descriptor low words. */
__device__ __forceinline__ void wgmma_64x256_bt(float (&d)[128], uint32_t a, uint32_t b) {
    asm volatile("{\n.reg .pred p;\n.reg .b64 da, db;\nmov.b64 da, {%128, %130};\nmov.b64 db, {%129, %130};\n"
                 "setp.ne.b32 p, %131, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {" HAE_WG_D128 "}, "
                 "da, db, p, 1, 1, 0, 1;\n}"
                 : HAE_WG_F128(d)
                 : "r"(a), "r"(b), "r"(kWgDescHi), "r"(1)
                 : "memory");
}

/* mla, bf16, V the first 512 dims of the gathered K rows. A CTA takes 64 query heads of one token
 * (zero rows past the group) and walks its idx range in tiles of 64 entries, two stages: while tile
 * i is computed, tile i + 1 is gathered by index with cp.async into the other stage (all 256 threads,
 * four per key row; unusable entries zero-filled, a tile with none skipped after a CTA-wide vote).
 * Warpgroup w computes S = Q K^T for keys [32 w, 32 w + 32) of the tile (wgmma 64x32x16 over 576
 * dims, Q and K from shared memory), the two exchange row maxima through shared memory, write
 * P = 2^(s - m) as bf16 into the stage's last 64-dim block (rope dims, no longer read), and warpgroup
 * w accumulates O[:, 256 w, 256 w + 256) += P V (wgmma 64x256x16, V read transposed from the same
 * stage), 128 fp32 registers a thread. The base m of a row moves only when a tile's max passes it by
 * more than kLazy (so P <= 2^kLazy, and O is rescaled on few tiles); out and lse use the same base.
 * Measured on an H200 against two alternatives: each warpgroup taking whole tiles in turn, passing the
 * base and P to the other (FlashMLA's schedule), was slower here (decode 127 us, prefill 364 TFLOP/s:
 * each stage frees later, so the gathers wait); a P V left in flight over the next tile's S gained
 * nothing (the next gather then starts later). That schedule with a third warpgroup doing the gathers
 * is ws_kernel, which now takes bf16 sparse lists; here stay dense lists, FP8 keys and lists past its
 * tile list. An L2 prefetch of the tile after the one being gathered (one cp.async.bulk.prefetch a row)
 * made this kernel slower: decode 103 -> 122 us, prefill 5953 -> 6864 us. */
constexpr float kLazy = 8.0f;

/* FP8 (mla's layout, hae.h): a tile's raw token rows come by cp.async into their own buffer (the room of a
 * second stage) once the last tile's were decoded, and are decoded into the one bf16 stage while the previous
 * tile's P V runs: warpgroup w decodes value blocks 4 w .. 4 w + 3 (the ones its own P V reads) 16 keys at a
 * time, as each 16-key step of its P V completes; the rope block, which P V does not read, is copied first.
 * Each element: e4m3 -> f16 -> f32 times its 128-dim block's scale, exact in bf16 (8 mantissa bits hold
 * e4m3's 3). Unusable rows were zero-filled by the gather, so they decode to zeros.
 * Measured on an H200 at the decode shape (B 64, 128 heads, top-2048; the bf16 cache 102 us): rows loaded
 * into registers one S ahead and decoded from there, 149 us; one raw tile decoded on its own at the top of
 * each step, 144 us; this, 143 us, and 138.5 us with the rows requested after S is issued (16 heads 87.6 ->
 * 81.9 -> 84.7 us). Two raw tiles, loads a tile and a half ahead (all 227 KB), took 157 us although leaving
 * out either its decode or its loads gave 133-135 us. */
/* Keys 16 kc .. 16 kc + 15 of value blocks 4 w .. 4 w + 3, thread tw of warpgroup w: key 16 kc + tw / 8,
 * bf16 chunk tw % 8 of each block (8 raw bytes; two keys' rows are 16 banks apart, so no conflicts). */
__device__ __forceinline__ void fp8_decode_keys(uint32_t stage, uint32_t raw, int w, int tw, int kc) {
    const int r = 16 * kc + (tw >> 3), c = tw & 7;
    const uint32_t row = raw + (uint32_t)(r * kFp8Ld);
    float2 sc; /* the scales of blocks 4 w, 4 w + 1 and 4 w + 2, 4 w + 3 */
    asm volatile("ld.shared.v2.f32 {%0, %1}, [%2];" : "=f"(sc.x), "=f"(sc.y) : "r"(row + HAE_MLA_FP8_SCALES + 8 * w));
#pragma unroll
    for (int x = 0; x < 4; x++) {
        const int kb = 4 * w + x;
        const float sk = x < 2 ? sc.x : sc.y;
        uint2 v;
        asm volatile("ld.shared.v2.b32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "r"(row + (uint32_t)(64 * kb + 8 * c)));
        st_shared16(stage + (uint32_t)(kb * kWgBlock + r * 128 + ((c ^ (r & 7)) << 4)), fp8x8_to_bf16(v, sk));
    }
}
/* The 64 keys' rope dims (bf16 already) into the stage's last block, 16 bytes a step, 256 threads. */
__device__ __forceinline__ void fp8_copy_rope(uint32_t stage, uint32_t raw, int tid) {
#pragma unroll
    for (int x = 0; x < kBN * 8 / kWgThreads; x++) {
        const int i = tid + x * kWgThreads, r = i >> 3, c = i & 7;
        uint4 v;
        asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];"
                     : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                     : "r"(raw + (uint32_t)(r * kFp8Ld + HAE_MLA_FP8_ROPE + 16 * c)));
        st_shared16(swz128(stage + HAE_MLA_LATENT / 64 * kWgBlock, r, c), v);
    }
}
/* wgmma.wait_group with a count known only after unrolling */
__device__ __forceinline__ void wg_wait_n(int n) {
    if (n == 0) wg_wait<0>();
    else if (n == 1) wg_wait<1>();
    else if (n == 2) wg_wait<2>();
    else wg_wait<3>();
}

/* FP8 pair (FlashMLA's "crossover"): the two CTAs of a query's two 64-head blocks need the same decoded
 * tiles, so each decodes half of every tile for both. CTA `rank` takes key rows 32 rank .. 32 rank + 31,
 * thread tid row 32 rank + tid / 8: bf16 chunk c = tid % 8 of every 64-dim block (raw bytes 64 kb + 8 c)
 * and the rope's 16-byte chunk c, loaded into registers while S runs and decoded while P V runs, into the
 * same place of its own stage and (st.async) of the other CTA's, where they complete on that stage's
 * barrier. A warp's four rows fill all eight 16-byte places of their 128-byte lines, four stores a place:
 * no bank conflicts. Unusable rows load as zeros and decode to zeros. Two bf16 stages, as bf16 keys have.
 * Measured on an H200 (B 64, 128 heads, top-2048): 123 us against 138.5 us for one CTA decoding whole
 * tiles; 136.5 us while the per-tile cluster arrival was a release (it waited for the stores into the other
 * CTA: ncu put 30% of the samples there). */
struct Fp8Half {
    uint2 v[HAE_MLA_LATENT / 64];
    float4 sc;
    uint4 rope;
};
constexpr uint32_t kFp8HalfBytes = kBN / 2 * kWgDk * 2; /* what the other CTA stores into a stage */
__device__ __forceinline__ void fp8_load_half(Fp8Half &h, const uint8_t *row, bool ok, int c) {
#pragma unroll
    for (int kb = 0; kb < HAE_MLA_LATENT / 64; kb++)
        h.v[kb] = ok ? __ldg((const uint2 *)(row + 64 * kb + 8 * c)) : make_uint2(0, 0);
    h.sc = ok ? __ldg((const float4 *)(row + HAE_MLA_FP8_SCALES)) : make_float4(0, 0, 0, 0);
    h.rope = ok ? __ldg((const uint4 *)(row + HAE_MLA_FP8_ROPE + 16 * c)) : make_uint4(0, 0, 0, 0);
}
/* peer: the other CTA's address of a shared address minus its own; bar: its barrier of this stage */
__device__ __forceinline__ void fp8_store_half(const Fp8Half &h, uint32_t stage, uint32_t peer, uint32_t bar, int r, int c) {
    const uint32_t at = stage + (uint32_t)(r * 128 + ((c ^ (r & 7)) << 4));
#pragma unroll
    for (int kb = 0; kb < HAE_MLA_LATENT / 64; kb++) {
        const float sk = kb < 2 ? h.sc.x : kb < 4 ? h.sc.y : kb < 6 ? h.sc.z : h.sc.w;
        const uint4 o = fp8x8_to_bf16(h.v[kb], sk);
        st_shared16(at + (uint32_t)(kb * kWgBlock), o);
        st_async16(at + (uint32_t)(kb * kWgBlock) + peer, o, bar);
    }
    st_shared16(at + (uint32_t)(HAE_MLA_LATENT / 64 * kWgBlock), h.rope);
    st_async16(at + (uint32_t)(HAE_MLA_LATENT / 64 * kWgBlock) + peer, h.rope, bar);
}

/* The work of a CTA of the warpgroup kernels: block (((b tgroups + tg) Hkv + gk) splits + split) hblocks + hb, its
 * queries t0 = tg qpack ..; a query's head blocks are neighbours, so a pair of them is a cluster (FP8 pair:
 * hblocks even, the CTA's rank hb % 2). */
struct WgBlock {
    int hb, split, gk;
    int64_t t0, b;
};
__device__ __forceinline__ WgBlock wg_block(const SparseParams &p) {
    int64_t blk = blockIdx.x;
    WgBlock k;
    k.hb = (int)(blk % p.hblocks);
    blk /= p.hblocks;
    k.split = (int)(blk % p.splits);
    blk /= p.splits;
    k.gk = (int)(blk % p.Hkv);
    blk /= p.Hkv;
    k.t0 = blk % p.tgroups * p.qpack, k.b = blk / p.tgroups;
    return k;
}

/* The end of both mla kernels: rows r0 and r0 + 8 of this thread's half of O (columns 256 wg ..), m0 / m1 their
 * base (log2 domain), rs the row sums [2][64] of both warpgroups: out and lse, or the split's partials. */
struct WgRows {
    int wg, r0, t4;
    int64_t b, t0;
    int h0, GP, nh, split;
};
__device__ __forceinline__ void wg_write_rows(const SparseParams &p, const float (&o)[128], const float *red, float m0,
                                              float m1, const WgRows &w) {
    const int wg = w.wg, r0 = w.r0, r1 = r0 + 8, t4 = w.t4, split = w.split;
    const int64_t b = w.b;
    auto row_ok = [&](int r) { return r % w.GP < w.nh && w.t0 + r / w.GP < p.T; };
#pragma unroll
    for (int half = 0; half < 2; half++) {
        const int r = half ? r1 : r0;
        if (!row_ok(r)) continue;
        const float L = red[r] + red[kWgRows + r], M = half ? m1 : m0;
        const int h = w.h0 + r % w.GP;
        const int64_t t = w.t0 + r / w.GP, row = (b * p.T + t) * p.Hq + h;
        if (p.splits == 1) {
            const float inv = L > 0.0f ? 1.0f / L : 0.0f; /* no usable index: out = 0 */
            const int64_t ob = b * p.o_sb + t * p.o_st + (int64_t)h * kWgDv + wg * (kWgDv / 2) + 2 * t4;
            /* one unrolled loop a store form: run once a CTA, this code is cold, and the forms chosen per
             * element spanned 52 KB of instructions (ncu: 13% of the FP8 decode's samples waited on them) */
            if (p.out_pairs && p.out_bf16) {
                uint32_t *dst = (uint32_t *)((uint16_t *)p.out + ob);
#pragma unroll
                for (int c = 0; c < 32; c++) dst[4 * c] = pack_bf16(o[4 * c + 2 * half] * inv, o[4 * c + 2 * half + 1] * inv);
            } else if (p.out_pairs) {
                float2 *dst = (float2 *)((float *)p.out + ob);
#pragma unroll
                for (int c = 0; c < 32; c++) dst[4 * c] = make_float2(o[4 * c + 2 * half] * inv, o[4 * c + 2 * half + 1] * inv);
            } else {
#pragma unroll
                for (int c = 0; c < 32; c++) {
                    st_out(p.out, p.out_bf16, ob + 8 * c, o[4 * c + 2 * half] * inv);
                    st_out(p.out, p.out_bf16, ob + 8 * c + 1, o[4 * c + 2 * half + 1] * inv);
                }
            }
            if (p.lse && wg == 0 && t4 == 0)
                p.lse[b * p.e_sb + t * p.e_st + h] = L > 0.0f ? (M + log2f(L)) * kLn2 : INFINITY;
        } else {
            float *dst = p.part + (row * p.splits + split) * kWgDv + wg * (kWgDv / 2) + 2 * t4;
#pragma unroll
            for (int c = 0; c < 32; c++)
                *(float2 *)(dst + 8 * c) = make_float2(o[4 * c + 2 * half], o[4 * c + 2 * half + 1]);
            if (wg == 0 && t4 == 0) {
                p.part_ml[(row * p.splits + split) * 2] = M;
                p.part_ml[(row * p.splits + split) * 2 + 1] = L;
            }
        }
    }
}

/* KV: how key rows come (WgKv); FP8: raw rows by cp.async, decoded during P V; bf16: rows by cp.async; FP8
 * pair: half the rows into registers, decoded during P V into both CTAs' stages. */
template <WgKv KV, bool SPLIT>
__global__ void __launch_bounds__(kWgThreads, 1) wg_kernel(const SparseParams p) {
    extern __shared__ unsigned char wsmem[];
    const uint32_t sraw = (uint32_t)__cvta_generic_to_shared(wsmem);
    const uint32_t sbase = (sraw + 1023u) & ~1023u; /* swizzle atoms need 1024-byte alignment */
    unsigned char *gbase = wsmem + (sbase - sraw);
    const uint32_t sQ = sbase, sK = sbase + kWgTile;
    constexpr bool FP8 = KV == kWgFp8, PAIR = KV == kWgFp8Pair;
    using L = WgLayout<KV>;
    float *red = (float *)(gbase + L::kRed);
    int *kok = (int *)(gbase + L::kOk);
    const int tid = threadIdx.x, wg = tid >> 7, wi = (tid >> 5) & 3, lane = tid & 31, g8 = lane >> 2, t4 = lane & 3;

    const WgBlock k = wg_block(p);
    const int hb = k.hb, split = k.split, gk = k.gk;
    const int64_t t0 = k.t0, b = k.b;
    const int h0 = gk * p.G + hb * kWgRows;
    const int nh = min(kWgRows, p.G - hb * kWgRows);
    /* row r: head h0 + r % GP of query t0 + r / GP; valid when the head is in the group and the query in T */
    const int GP = p.qpack > 1 ? p.G : kWgRows;
    auto row_ok = [&](int r) { return r % GP < nh && t0 + r / GP < p.T; };
    /* the CTA walks the union of its queries' lists; each row masks the keys outside its own */
    const int64_t tl = min(t0 + p.qpack, p.T) - 1;
    const int hi = (int)min(usable_hi<SPLIT>(p, b, tl), (int64_t)INT_MAX);
    const int64_t lo = list_lo(p, (int)min(usable_hi<SPLIT>(p, b, t0), (int64_t)INT_MAX));
    const int ntiles = (int)((p.nk + kBN - 1) / kBN);
    const int tile0 = split * p.tiles_per_split, tile1 = min(ntiles, tile0 + p.tiles_per_split);

    const uint16_t *kbase = k_seq<SPLIT, uint16_t>(p, b) + (int64_t)gk * kWgDk;
    const uint8_t *kbase8 = k_seq<SPLIT, uint8_t>(p, b); /* FP8: one kv head, strides in bytes */
    const int32_t *irow = idx_row<SPLIT>(p, b, t0); /* sparse: one query per CTA */

    {
        const uint16_t *qb = (const uint16_t *)p.q + b * p.q_sb + t0 * p.q_st + (int64_t)h0 * kWgDk;
        for (int i = tid; i < kWgRows * kWgChunks; i += kWgThreads) {
            const int r = i / kWgChunks, c = i % kWgChunks;
            const bool ok = row_ok(r);
            const uint16_t *src = qb + (r / GP) * p.q_st + (int64_t)(r % GP) * kWgDk + c * 8;
            cp_async16z(swz128(sQ, r, c), ok ? src : qb, ok);
        }
    }

    /* gather roles: thread tid fetches, of key row kr, bf16: chunks sub and sub + 4 of every 64-dim block,
     * stored at d0 and d0 ^ 64 of the block; FP8: the raw row's 16-byte chunks sub, sub + 4, ... */
    const int kr = tid >> 2, sub = tid & 3;
    const uint32_t d0 = (uint32_t)(kr * 128 + ((sub ^ (kr & 7)) << 4)), d1 = d0 ^ 64u;
    auto entry_of = [&](int tile, int r) -> int {
        return tile < tile1 ? (int)entry_at(p, irow, lo, (int64_t)tile * kBN + r) : -1;
    };
    auto entry = [&](int tile) { return entry_of(tile, kr); };
    auto usable = [&](int j) { return j >= 0 && j <= hi; };
    /* The first tile >= from with a usable entry (tile1 if none), j its entry of row kr; jc holds the
     * entry of tile from. Always one CTA barrier at least. */
    auto find = [&](int from, int jc, int &j) -> int {
        int tl = from;
        j = jc;
        while (!__syncthreads_or(tl < tile1 && usable(j)) && tl < tile1) j = entry(++tl);
        return tl;
    };
    const uint32_t sRaw = sbase + (uint32_t)L::kRaw, sRawRow = sRaw + (uint32_t)(kr * kFp8Ld); /* FP8 */
    /* FP8 pair: this CTA's rows of a tile, loaded by gather into h and stored by decode_half */
    const int rank = hb & 1, hr = 32 * rank + (tid >> 3), hc = tid & 7;
    const uint32_t sBar = sbase + (uint32_t)L::kBar, peer = PAIR ? cluster_map(sbase, rank ^ 1) - sbase : 0u;
    Fp8Half h;
    int jh_tile = -1, jh_pre = -1; /* FP8 pair: row hr's entry of tile jh_tile, loaded a tile ahead */
    uint32_t phase = 0; /* FP8 pair: bit st, the parity of stage st's barrier's next phase */
    auto decode_half = [&](int st) {
        if (tid == 0) mbar_arrive_tx(sBar + 8 * st, kFp8HalfBytes); /* the other CTA's half */
        fp8_store_half(h, sK + (uint32_t)(st * kWgTile), peer, sBar + 8 * st + peer, hr, hc);
    };
    auto gather = [&](int st, int tile, int j) {
        const bool ok = usable(j);
        if (PAIR) {
            const int jh = tile == jh_tile ? jh_pre : entry_of(tile, hr);
            const bool okh = usable(jh);
            fp8_load_half(h, kbase8 + (okh ? (int64_t)jh : 0) * p.k_ss, okh, hc);
            if (sub == 0) kok[st * kBN + kr] = ok ? j : -1;
            return;
        }
        if (FP8) { /* the raw row; its usable flag is set when it is decoded */
            const uint8_t *src = kbase8 + (ok ? (int64_t)j : 0) * p.k_ss;
#pragma unroll
            for (int c = sub; c < HAE_MLA_FP8_ROW / 16; c += 4) cp_async16z(sRawRow + (uint32_t)(16 * c), src + 16 * c, ok);
            return;
        }
        const uint32_t dst = sK + (uint32_t)(st * kWgTile);
        const uint16_t *src = kbase + (ok ? slot_of(p, j) : 0) * p.k_ss + sub * 8;
#pragma unroll
        for (int kb = 0; kb < kWgDk / 64; kb++) {
            cp_async16z(dst + (uint32_t)(kb * kWgBlock) + d0, src + kb * 64, ok);
            cp_async16z(dst + (uint32_t)(kb * kWgBlock) + d1, src + kb * 64 + 32, ok);
        }
        if (sub == 0) kok[st * kBN + kr] = ok ? j : -1;
    };

    const int r0 = wi * 16 + g8, r1 = r0 + 8; /* this thread's rows of S and O */
    /* each row's own list lo_r .. hi_r (sparse: every gathered entry) */
    const int hi0 = (int)min(usable_hi<SPLIT>(p, b, t0 + r0 / GP), (int64_t)INT_MAX), lo0 = (int)list_lo(p, hi0);
    const int hi1 = (int)min(usable_hi<SPLIT>(p, b, t0 + r1 / GP), (int64_t)INT_MAX), lo1 = (int)list_lo(p, hi1);
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
    float o[128];
#pragma unroll
    for (int i = 0; i < 128; i++) o[i] = 0.0f;
    const uint32_t dq = wg_desc_lo(sQ, 16);

    /* FP8 pair: the cluster barrier orders each stage's reuse. A CTA arrives once its P V on a stage is done
     * and waits (a tile later, before decoding into that stage again) for the other's arrival; the first
     * arrival frees stage 1, and the other CTA's barriers are ready before the first store into them. */
    if (PAIR) {
        if (tid == 0) {
            mbar_init(sBar, 1);
            mbar_init(sBar + 8, 1);
            mbar_init_fence();
        }
        cluster_arrive();
        cluster_wait();
        cluster_arrive();
    }
    int j = -1;
    int cur = find(tile0, entry(tile0), j), st = 0, nxt = tile1;
    if (cur < tile1) gather(0, cur, j);
    cp_async_commit(); /* Q and the first tile */
    int jnext = entry(cur + 1);
    if (PAIR) jh_pre = entry_of(jh_tile = cur + 1, hr);
    const int tw = tid & 127;
    if (PAIR && cur < tile1) decode_half(0);
    if (FP8) { /* the first tile decoded whole, the second found (requested during the first's S) */
        cp_async_wait_all();
        __syncthreads();
        if (cur < tile1) {
            fp8_copy_rope(sK, sRaw, tid);
#pragma unroll
            for (int kc = 0; kc < kBN / 16; kc++) fp8_decode_keys(sK, sRaw, wg, tw, kc);
            if (sub == 0) kok[kr] = usable(j) ? j : -1;
        }
        fence_async_smem();
        nxt = find(cur + 1, jnext, j);
    }
    while (cur < tile1) {
        if (!FP8) {
            cp_async_wait_all();
            fence_async_smem(); /* this thread's gathered (decoded) bytes, visible to wgmma after the barrier */
            nxt = find(cur + 1, jnext, j);
        }
        if (PAIR) { /* the other CTA's half of the tile */
            mbar_wait(sBar + 8 * st, phase >> st & 1);
            phase ^= 1u << st;
        }
        const uint32_t sKs = sK + (uint32_t)(st * kWgTile);
        const uint32_t sP = FP8 ? sbase + (uint32_t)L::kP : sKs + (uint32_t)((kWgDk / 64 - 1) * kWgBlock);

        /* S = Q K^T on keys [32 wg, 32 wg + 32): k step kk is 32 bytes into 64-dim block kk / 4 */
        float s[16] = {}; /* the first wgmma ignores it */
        const uint32_t dk = wg_desc_lo(sKs + (uint32_t)(wg * 32 * 128), 16);
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < kWgDk / 16; kk++) {
            const uint32_t off = (uint32_t)((kk >> 2) * (kWgBlock >> 4) + (kk & 3) * 2);
            wgmma_64x32(s, dq + off, dk + off, kk > 0);
        }
        wg_commit();
        /* the next tile's rows, requested while S runs (FP8 issued them before S: ncu had a sixth of the
         * kernel's samples on their issue, holding S back): bf16 into stage st ^ 1, free since its P V
         * finished before find's barrier; FP8 into the raw tile, free since it was decoded before it; FP8
         * pair into registers */
        if (nxt < tile1) gather(st ^ 1, nxt, j);
        cp_async_commit();
        jnext = entry(nxt + 1);
        if (PAIR) jh_pre = entry_of(jh_tile = nxt + 1, hr);
        wg_wait<0>();
        wg_hold(s);

        /* online softmax, log2 domain; keys outside a row's list -> -inf */
        const int *ok = kok + st * kBN + wg * 32;
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int c = 0; c < 4; c++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int jk = ok[8 * c + 2 * t4 + e];
                const bool u0 = jk >= 0 && jk >= lo0 && jk <= hi0, u1 = jk >= 0 && jk >= lo1 && jk <= hi1;
                s[4 * c + e] = u0 ? s[4 * c + e] * p.scale_log2 : -INFINITY;
                s[4 * c + 2 + e] = u1 ? s[4 * c + 2 + e] * p.scale_log2 : -INFINITY;
                mx0 = fmaxf(mx0, s[4 * c + e]);
                mx1 = fmaxf(mx1, s[4 * c + 2 + e]);
            }
        mx0 = quad_max(mx0);
        mx1 = quad_max(mx1);
        if (t4 == 0) {
            red[wg * kWgRows + r0] = mx0;
            red[wg * kWgRows + r1] = mx1;
        }
        __syncthreads(); /* maxima exchanged; S done in both warpgroups, so the P block is free */
        const float mt0 = fmaxf(mx0, red[(wg ^ 1) * kWgRows + r0]), mt1 = fmaxf(mx1, red[(wg ^ 1) * kWgRows + r1]);
        const bool up0 = mt0 > m0 + kLazy, up1 = mt1 > m1 + kLazy; /* both warpgroups decide alike */
        const float al0 = up0 ? hae_ex2(m0 - mt0) : 1.0f, al1 = up1 ? hae_ex2(m1 - mt1) : 1.0f; /* 0 on the first tile */
        m0 = up0 ? mt0 : m0, m1 = up1 ? mt1 : m1;
        /* a row none of whose keys so far is in its list keeps m = -inf; the guard keeps exp2 off (-inf) - (-inf) */
        const float base0 = m0 == -INFINITY ? 0.0f : m0, base1 = m1 == -INFINITY ? 0.0f : m1;
        float ps0 = 0.0f, ps1 = 0.0f;
#pragma unroll
        for (int c = 0; c < 4; c++) {
            const float p00 = hae_ex2(s[4 * c] - base0), p01 = hae_ex2(s[4 * c + 1] - base0);
            const float p10 = hae_ex2(s[4 * c + 2] - base1), p11 = hae_ex2(s[4 * c + 3] - base1);
            ps0 += p00 + p01;
            ps1 += p10 + p11;
            const int ch = wg * 4 + c; /* keys 8 ch .. 8 ch + 7 */
            asm volatile("st.shared.b32 [%0], %1;" ::"r"(swz128(sP, r0, ch) + 4 * t4), "r"(pack_bf16(p00, p01)));
            asm volatile("st.shared.b32 [%0], %1;" ::"r"(swz128(sP, r1, ch) + 4 * t4), "r"(pack_bf16(p10, p11)));
        }
        l0 = l0 * al0 + ps0;
        l1 = l1 * al1 + ps1;
        if (__any_sync(0xffffffffu, up0 || up1)) /* else every alpha is 1 */
#pragma unroll
            for (int c = 0; c < 32; c++) {
                o[4 * c] *= al0, o[4 * c + 1] *= al0;
                o[4 * c + 2] *= al1, o[4 * c + 3] *= al1;
            }
        if (FP8) cp_async_wait_all(); /* tile nxt's raw rows, everyone's after the barrier */
        fence_async_smem();           /* P, visible to wgmma after the barrier */
        __syncthreads();

        /* O[:, 256 wg ..) += P V: P [64 x 64] K-major, V = keys x dims of this stage, transposed;
         * k step kc: 32 bytes into P, 16 key rows (2048 bytes) into V. FP8: one group a step, and the
         * keys of each finished step take tile nxt's decoded values */
        const uint32_t dp = wg_desc_lo(sP, 16), dv = wg_desc_lo(sKs + (uint32_t)(wg * 4 * kWgBlock), kWgBlock);
        wg_fence();
#pragma unroll
        for (int kc = 0; kc < kBN / 16; kc++) {
            wgmma_64x256_bt(o, dp + (uint32_t)(kc * 2), dv + (uint32_t)(kc * 128));
            if (FP8) wg_commit();
        }
        if (!FP8) wg_commit();
        if (FP8 && nxt < tile1) {
            fp8_copy_rope(sK, sRaw, tid); /* S is done in both warpgroups (the barrier above) */
            if (sub == 0) kok[kr] = usable(j) ? j : -1; /* the softmax above read the last flags */
#pragma unroll
            for (int kc = 0; kc < kBN / 16; kc++) {
                wg_wait_n(kBN / 16 - 1 - kc);
                fp8_decode_keys(sK, sRaw, wg, tw, kc);
            }
        }
        if (PAIR) { /* tile nxt into stage st ^ 1 of both CTAs, once the other's P V on it is done */
            cluster_wait();
            if (nxt < tile1) decode_half(st ^ 1);
        }
        wg_wait<0>();
        wg_hold(o);
        if (PAIR) cluster_arrive(); /* stage st is free here */
        if (FP8) { /* the decoded tile visible, the raw tile free after find's barrier */
            fence_async_smem();
            const int nn = find(nxt + 1, jnext, j);
            cur = nxt, nxt = nn;
        } else {
            cur = nxt;
            st ^= 1;
        }
    }
    cp_async_wait_all();
    if (PAIR) cluster_wait(); /* the last arrival: neither CTA leaves while the other may store into it */

    /* row sums over the quad, then over the two warpgroups */
    l0 = quad_sum(l0);
    l1 = quad_sum(l1);
    __syncthreads();
    if (t4 == 0) {
        red[wg * kWgRows + r0] = l0;
        red[wg * kWgRows + r1] = l1;
    }
    __syncthreads();
    wg_write_rows(p, o, red, m0, m1, WgRows{wg, r0, t4, b, t0, h0, GP, nh, split});
}

/* ---------------------------------------------------------------- the warp-specialised kernel (mla, bf16, sparse)
 * FlashMLA's division of labour for its sparse prefill (the schedule as its authors describe it; the code is
 * this file's). Three warpgroups share a CTA of 64 query heads of one token, as in wg_kernel: warpgroup 2 only
 * gathers key tiles into two stages; warpgroups 0 and 1 take the tiles in turn, 0 the even ones (stage 0), 1
 * the odd ones (stage 1), each computing S = Q K^T of a whole tile (wgmma 64x64x16: Q and K from shared
 * memory, which is what its bandwidth allows at that width, where wg_kernel's 32-key halves wait on it).
 * Each warpgroup still owns half of O's columns (256 w ..), so P of each tile goes to both: its own
 * warpgroup multiplies it from registers, the other reads it from the stage's rope block (read only by S).
 * The tiles of a pair, A (even) and B (odd), share one running max: m_A = max(m, max S_A), m_B = max(m_A,
 * max S_B), so
 *     warpgroup 0: S_A; P_A = 2^(S_A - m_A); O0 += P_A V_A[:, :256]; then, given m_B, P_A 2^(m_A - m_B) to the
 *                  rope block of stage 0, O0 2^(m_A - m_B) + P_B V_B[:, :256]
 *     warpgroup 1: S_B; given m_A, P_B = 2^(S_B - m_B) to the rope block of stage 1; O1 += P_B V_B[:, 256:]
 *                  + (P_A 2^(m_A - m_B)) V_A[:, 256:]
 * and one warpgroup's softmax runs while the other's MMAs hold the tensor cores. Named barriers pass m_A, m_B,
 * P_A and P_B between the two (warpgroup 0 stores P_A as soon as m_B is in, before its own P V is done).
 * The gathering warpgroup's warps 0-1 fill stage 0 and warps 2-3 stage 1, each stage in two parts, dims
 * 0..255 and 256..575 (the rope block among them), each part behind a "ready" mbarrier (its cp.async
 * completions) and a "free" one (an arrival from each math warp that reads the part, after its last wgmma
 * read of it; stage 0's first part is read by warpgroup 0 alone), so a part is refilled as soon as its
 * readers are done and S starts on the first part while the second may still land.
 * Tiles with no usable entry are left out: the gatherers list the others first (while the math warpgroups
 * load Q); an odd count gets a last tile of no entries (zero rows, P = 0).
 * Measured on an H200 (128 heads, top-2048 of 64K; medians of 21 calls, across five calls): prefill of 4096
 * tokens 4861-5301 us (442-481 TFLOP/s) and decode at batch 64 92.4-94.4 us, where wg_kernel took 5548-5990
 * us and 102-103 us in the same calls. The same schedule with one 128-thread gatherer filling both stages in
 * turn and stage 0's first part also waiting for warpgroup 1: 5176-5528 us, 98 us (ncu: the math warps
 * waited on "ready" for a quarter of their time);
 * warpgroup 1 multiplying P_A (on m_A) before its S_B so stage 0 frees early: 5405-5623 us (the two
 * softmaxes then ran in sequence, each warpgroup waiting on the other's P for ~11% of the samples). */
constexpr int kWsThreads = 384;
constexpr int kWsMaxTiles = 2048; /* listed tiles (idx rows up to 131072 entries); longer rows take wg_kernel */
struct WsLayout {
    static constexpr int kStage = kWgTile;              /* stage s at kStage (1 + s), Q at 0 */
    static constexpr int kRed = 3 * kWgTile;            /* row sums [2][64] f32, then m_A [64], m_B [64] */
    static constexpr int kList = kRed + 4 * kWgRows * 4; /* tile numbers [kWsMaxTiles] int16, then the count */
    static constexpr int kBar = kList + kWsMaxTiles * 2 + 16; /* ready L, ready R, free L, free R; [2] each */
    static constexpr int kSmem = kBar + 8 * 8 + 1024;
};
enum { kBarMA = 1, kBarMB, kBarPA, kBarPB, kBarMath, kBarGather }; /* named barriers; 0 is __syncthreads */

/* d (+)= A B, 64 x 64 x 16, both K-major; accumulate false: d = A B. */
__device__ __forceinline__ void wgmma_64x64(float (&d)[32], uint32_t a, uint32_t b, bool accumulate) {
    asm volatile("{\n.reg .pred p;\n.reg .b64 da, db;\nmov.b64 da, {%32, %34};\nmov.b64 db, {%33, %34};\n"
                 "setp.ne.b32 p, %35, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {" HAE_WG_D32 "}, da, db, p, 1, 1, 0, 0;\n}"
                 : HAE_WG_F8(d, 0), HAE_WG_F8(d, 8), HAE_WG_F8(d, 16), HAE_WG_F8(d, 24)
                 : "r"(a), "r"(b), "r"(kWgDescHi), "r"((int)accumulate)
                 : "memory");
}
/* d += A B, 64 x 256 x 16, A from registers (mma.sync's a fragment layout), B transposed (MN-major). */
__device__ __forceinline__ void wgmma_64x256_rs(float (&d)[128], const uint32_t (&a)[4], uint32_t b) {
    asm volatile("{\n.reg .pred p;\n.reg .b64 db;\nmov.b64 db, {%132, %133};\nsetp.eq.u32 p, 1, 1;\n"
                 "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {" HAE_WG_D128 "}, "
                 "{%128, %129, %130, %131}, db, p, 1, 1, 1;\n}"
                 : HAE_WG_F128(d)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b), "r"(kWgDescHi)
                 : "memory");
}

/* One row's 16-byte chunk at 64-dim blocks KB... of a stage (dst: its place in block 0) from src (its place in
 * dims 0..63), offsets as immediates: the gatherers run on 48 registers, too few for an address per chunk. */
template <int KB> __device__ __forceinline__ void cp_async_block(uint32_t dst, const uint16_t *src, uint32_t bytes) {
    asm volatile("cp.async.cg.shared.global [%0+%2], [%1+%3], 16, %4;" ::"r"(dst), "l"(src), "n"(KB * kWgBlock),
                 "n"(KB * 128), "r"(bytes)
                 : "memory");
}
template <int... KB>
__device__ __forceinline__ void cp_async_blocks(uint32_t dst, const uint16_t *src, bool ok,
                                                std::integer_sequence<int, KB...>) {
    (cp_async_block<KB>(dst, src, ok ? 16u : 0u), ...);
}

template <bool SPLIT> __global__ void __launch_bounds__(kWsThreads, 1) ws_kernel(const SparseParams p) {
    extern __shared__ unsigned char wsmem[];
    const uint32_t sraw = (uint32_t)__cvta_generic_to_shared(wsmem);
    const uint32_t sbase = (sraw + 1023u) & ~1023u;
    unsigned char *gbase = wsmem + (sbase - sraw);
    using L = WsLayout;
    const uint32_t sQ = sbase;
    auto stage = [&](int st) { return sbase + (uint32_t)(L::kStage * (1 + st)); };
    float *red = (float *)(gbase + L::kRed), *mA = red + 2 * kWgRows, *mB = mA + kWgRows;
    int16_t *list = (int16_t *)(gbase + L::kList);
    int *nlisted = (int *)(gbase + L::kList + kWsMaxTiles * 2);
    /* bar(kind, st): kind 0 ready L, 1 ready R, 2 free L, 3 free R */
    auto bar = [&](int kind, int st) { return sbase + (uint32_t)(L::kBar + 8 * (2 * kind + st)); };
    const int tid = threadIdx.x, tw = tid & 127, lane = tid & 31;
    /* warp-uniform to the compiler, or it serialises the wgmmas */
    const int wg = __shfl_sync(0xffffffffu, tid >> 7, 0);

    const WgBlock k = wg_block(p); /* qpack 1: one query a CTA */
    const int hb = k.hb, split = k.split, gk = k.gk;
    const int64_t t0 = k.t0, b = k.b;
    const int h0 = gk * p.G + hb * kWgRows, nh = min(kWgRows, p.G - hb * kWgRows);
    const int hi = (int)min(usable_hi<SPLIT>(p, b, t0), (int64_t)INT_MAX);
    const int ntiles = (int)((p.nk + kBN - 1) / kBN);
    const int tile0 = split * p.tiles_per_split, tile1 = min(ntiles, tile0 + p.tiles_per_split);
    const int32_t *irow = idx_row<SPLIT>(p, b, t0);
    auto usable = [&](int j) { return j >= 0 && j <= hi; };

    if (wg == 2) { /* the tiles with a usable entry, in order: a thread a tile, 128 a pass */
        if (tw == 0) {
            for (int k = 0; k < 4; k++) mbar_init(bar(0, 0) + 8 * k, 64); /* ready: a stage's gatherers' copies */
            /* free: each math warp that reads the part; stage 0's first part only warpgroup 0's */
            for (int k = 4; k < 8; k++) mbar_init(bar(0, 0) + 8 * k, k == 4 ? 4 : 8);
            mbar_init_fence();
        }
        int *wcount = (int *)red; /* per warp, before the math warpgroups use red */
        int n = 0;
        for (int base = tile0; base < tile1; base += 128) {
            const int tl = base + tw;
            bool any = false;
            if (tl < tile1)
#pragma unroll 16
                for (int e = 0; e < kBN; e++) any |= usable((int)entry_at(p, irow, 0, (int64_t)tl * kBN + e));
            const unsigned bal = __ballot_sync(0xffffffffu, any);
            if (lane == 0) wcount[tw >> 5] = __popc(bal);
            bar_sync(kBarGather, 128);
            int at = n + __popc(bal & ((1u << lane) - 1));
            for (int w = 0; w < (tw >> 5); w++) at += wcount[w];
            if (any) list[at] = (int16_t)(tl - tile0);
            n += wcount[0] + wcount[1] + wcount[2] + wcount[3];
            bar_sync(kBarGather, 128);
        }
        if (tw == 0) *nlisted = n;
    } else { /* Q, landing while the list is made */
        const uint16_t *qb = (const uint16_t *)p.q + b * p.q_sb + t0 * p.q_st + (int64_t)h0 * kWgDk;
        for (int i = tid; i < kWgRows * kWgChunks; i += 256) {
            const int r = i / kWgChunks, c = i % kWgChunks;
            cp_async16z(swz128(sQ, r, c), r < nh ? qb + (int64_t)r * kWgDk + c * 8 : qb, r < nh);
        }
        cp_async_commit();
    }
    __syncthreads(); /* the list and the barriers */
    const int nt = *nlisted, npairs = (nt + 1) / 2;

    if (wg == 2) { /* the gatherers: warps 0-1 fill stage 0 (even tiles), warps 2-3 stage 1, dims 0..255 first (S
                    * reads them first); thread tq copies chunk tq % 8 of each 64-dim block of rows tq / 8 + 8 i */
        asm volatile("setmaxnreg.dec.sync.aligned.u32 48;\n" ::: "memory");
        const int st = tw >> 6, tq = tw & 63, rg = tq >> 3, c8 = tq & 7;
        const uint16_t *kbase = k_seq<SPLIT, uint16_t>(p, b) + (int64_t)gk * kWgDk;
        const uint32_t dst = stage(st);
        for (int n = st; n < 2 * npairs; n += 2) {
            const uint32_t par = ((n >> 1) & 1) ^ 1;
            const int tl = n < nt ? tile0 + list[n] : -1;
            int jr[8]; /* the rows' slots (a sparse list's positions are below cap), -1 where unusable (zero-filled) */
#pragma unroll
            for (int i = 0; i < 8; i++) {
                const int j = tl >= 0 ? (int)entry_at(p, irow, 0, (int64_t)tl * kBN + rg + 8 * i) : -1;
                jr[i] = usable(j) ? j : -1;
            }
#pragma unroll
            for (int part = 0; part < 2; part++) {
                mbar_wait(bar(2 + part, st), par);
#pragma unroll
                for (int i = 0; i < 8; i++) {
                    const int r = rg + 8 * i;
                    const uint32_t d = dst + (uint32_t)(r * 128 + ((c8 ^ (r & 7)) << 4));
                    const uint16_t *src = kbase + (jr[i] >= 0 ? (int64_t)jr[i] : 0) * p.k_ss + c8 * 8;
                    if (part) cp_async_blocks(d, src, jr[i] >= 0, std::integer_sequence<int, 4, 5, 6, 7, 8>());
                    else cp_async_blocks(d, src, jr[i] >= 0, std::integer_sequence<int, 0, 1, 2, 3>());
                }
                mbar_arrive_cp_async(bar(part, st));
            }
        }
        cp_async_wait_all();
        return;
    }

    asm volatile("setmaxnreg.inc.sync.aligned.u32 224;\n" ::: "memory");
    const int wi = tw >> 5, g8 = lane >> 2, t4 = lane & 3;
    const int r0 = wi * 16 + g8, r1 = r0 + 8;
    cp_async_wait_all(); /* Q */
    fence_async_smem();
    bar_sync(kBarMath, 256);
    float o[128];
#pragma unroll
    for (int i = 0; i < 128; i++) o[i] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f; /* rows r0, r1: base and this thread's sum */
    const uint32_t dq = wg_desc_lo(sQ, 16);
    const uint32_t own = stage(wg), other = stage(wg ^ 1);
    auto free_part = [&](int part, int st) {
        if (lane == 0) mbar_arrive(bar(2 + part, st));
    };
    auto scaled = [](float m_old, float m_new) { return m_new == -INFINITY ? 1.0f : hae_ex2(m_old - m_new); };

    for (int pr = 0; pr < npairs; pr++) {
        const uint32_t par = pr & 1;
        const int n = 2 * pr + wg; /* this warpgroup's tile */
        const int tl = n < nt ? tile0 + list[n] : -1;
        /* S = Q K^T over the whole tile, dims 0..255 as soon as they land, then the rest */
        float s[32] = {}; /* the first wgmma ignores it */
        wg_fence();
        mbar_wait(bar(0, wg), par);
#pragma unroll
        for (int kk = 0; kk < kWgDk / 16; kk++) {
            if (kk == 16) mbar_wait(bar(1, wg), par);
            const uint32_t off = (uint32_t)((kk >> 2) * (kWgBlock >> 4) + (kk & 3) * 2);
            wgmma_64x64(s, dq + off, wg_desc_lo(own, 16) + off, kk > 0);
        }
        wg_commit();
        int2 jk[8]; /* this thread's keys: columns 8 c + 2 t4 + {0, 1} */
#pragma unroll
        for (int c = 0; c < 8; c++) {
            const int64_t i = (int64_t)(tl < 0 ? 0 : tl) * kBN + 8 * c + 2 * t4;
            jk[c] = tl < 0 ? make_int2(-1, -1)
                           : make_int2((int)entry_at(p, irow, 0, i), (int)entry_at(p, irow, 0, i + 1));
        }
        wg_wait<0>();
        wg_hold(s);
        /* warpgroup 0 reads nothing more of its stage's second part (warpgroup 1 frees it after reading P_A);
         * warpgroup 1 nothing more of its stage's first part (warpgroup 0 frees it after P_B V) */
        free_part(wg == 0 ? 1 : 0, wg);

        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int c = 0; c < 8; c++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const bool u = usable(e ? jk[c].y : jk[c].x);
                s[4 * c + e] = u ? s[4 * c + e] * p.scale_log2 : -INFINITY;
                s[4 * c + 2 + e] = u ? s[4 * c + 2 + e] * p.scale_log2 : -INFINITY;
                mx0 = fmaxf(mx0, s[4 * c + e]);
                mx1 = fmaxf(mx1, s[4 * c + 2 + e]);
            }
        mx0 = quad_max(mx0);
        mx1 = quad_max(mx1);
        float prev0 = m0, prev1 = m1; /* the base this warpgroup's O and l are on */
        if (wg == 1) { /* m_B over m_A */
            bar_sync(kBarMA, 256);
            m0 = mA[r0], m1 = mA[r1];
        }
        m0 = fmaxf(m0, mx0), m1 = fmaxf(m1, mx1);
        const float base0 = m0 == -INFINITY ? 0.0f : m0, base1 = m1 == -INFINITY ? 0.0f : m1;
        float ps0 = 0.0f, ps1 = 0.0f;
#pragma unroll
        for (int c = 0; c < 8; c++) {
            s[4 * c] = hae_ex2(s[4 * c] - base0), s[4 * c + 1] = hae_ex2(s[4 * c + 1] - base0);
            s[4 * c + 2] = hae_ex2(s[4 * c + 2] - base1), s[4 * c + 3] = hae_ex2(s[4 * c + 3] - base1);
            ps0 += s[4 * c] + s[4 * c + 1];
            ps1 += s[4 * c + 2] + s[4 * c + 3];
        }
        const float al0 = scaled(prev0, m0), al1 = scaled(prev1, m1);
        l0 = l0 * al0 + ps0, l1 = l1 * al1 + ps1;
        if (t4 == 0) {
            float *mo = wg == 0 ? mA : mB;
            mo[r0] = m0, mo[r1] = m1;
        }
        bar_arrive(wg == 0 ? kBarMA : kBarMB, 256);
        uint32_t pa[16]; /* P as wgmma's register a operand, 16 keys a k step */
#pragma unroll
        for (int kc = 0; kc < 4; kc++) {
            pa[4 * kc] = pack_bf16(s[8 * kc], s[8 * kc + 1]);
            pa[4 * kc + 1] = pack_bf16(s[8 * kc + 2], s[8 * kc + 3]);
            pa[4 * kc + 2] = pack_bf16(s[8 * kc + 4], s[8 * kc + 5]);
            pa[4 * kc + 3] = pack_bf16(s[8 * kc + 6], s[8 * kc + 7]);
        }
        /* P into the own stage's rope block (keys 8 c .. as 16-byte chunk c), for the other warpgroup:
         * warpgroup 1 at once (its base is the pair's), warpgroup 0 once m_B has rescaled it */
        auto store_p = [&](float f0, float f1) {
            const uint32_t sp = own + (uint32_t)((kWgDk / 64 - 1) * kWgBlock);
#pragma unroll
            for (int c = 0; c < 8; c++) {
                asm volatile("st.shared.b32 [%0], %1;" ::"r"(swz128(sp, r0, c) + 4 * t4),
                             "r"(pack_bf16(s[4 * c] * f0, s[4 * c + 1] * f0)));
                asm volatile("st.shared.b32 [%0], %1;" ::"r"(swz128(sp, r1, c) + 4 * t4),
                             "r"(pack_bf16(s[4 * c + 2] * f1, s[4 * c + 3] * f1)));
            }
            fence_async_smem();
        };
        auto rescale_o = [&](float f0, float f1) {
            if (__any_sync(0xffffffffu, f0 != 1.0f || f1 != 1.0f))
#pragma unroll
                for (int c = 0; c < 32; c++) {
                    o[4 * c] *= f0, o[4 * c + 1] *= f0;
                    o[4 * c + 2] *= f1, o[4 * c + 3] *= f1;
                }
        };
        if (wg == 1) {
            store_p(1.0f, 1.0f);
            bar_arrive(kBarPB, 256);
        }
        rescale_o(al0, al1);
        /* O += P V over this warpgroup's columns of the own tile: V = the stage's rows, transposed */
        const uint32_t dv_own = wg_desc_lo(own + (uint32_t)(wg * 4 * kWgBlock), kWgBlock);
        wg_fence();
#pragma unroll
        for (int kc = 0; kc < kBN / 16; kc++) {
            const uint32_t a[4] = {pa[4 * kc], pa[4 * kc + 1], pa[4 * kc + 2], pa[4 * kc + 3]};
            wgmma_64x256_rs(o, a, dv_own + (uint32_t)(kc * 128));
        }
        wg_commit();
        if (wg == 0) {
            bar_sync(kBarMB, 256);
            const float nb0 = mB[r0], nb1 = mB[r1];
            const float f0 = scaled(m0, nb0), f1 = scaled(m1, nb1);
            store_p(f0, f1); /* P_A on m_B: the base both warpgroups' O are on from here */
            bar_arrive(kBarPA, 256);
            wg_wait<0>();
            wg_hold(o);
            wg_hold(pa);
            free_part(0, 0);
            rescale_o(f0, f1);
            l0 *= f0, l1 *= f1;
            m0 = nb0, m1 = nb1;
            bar_sync(kBarPB, 256);
            mbar_wait(bar(0, 1), par); /* (complete already: warpgroup 1's S read it) */
        } else {
            bar_sync(kBarPA, 256);
            mbar_wait(bar(1, 0), par);
        }
        /* O += P V of the other warpgroup's tile: its P from its stage's rope block */
        const uint32_t dp = wg_desc_lo(other + (uint32_t)((kWgDk / 64 - 1) * kWgBlock), 16);
        const uint32_t dv_oth = wg_desc_lo(other + (uint32_t)(wg * 4 * kWgBlock), kWgBlock);
        wg_fence();
#pragma unroll
        for (int kc = 0; kc < kBN / 16; kc++)
            wgmma_64x256_bt(o, dp + (uint32_t)(kc * 2), dv_oth + (uint32_t)(kc * 128));
        wg_commit();
        wg_wait<0>();
        wg_hold(o);
        if (wg == 1) {
            wg_hold(pa);
            free_part(1, 1); /* V_B[:, 256:] and the S of B done; P_B still read by warpgroup 0 until it frees */
            free_part(1, 0);
        } else {
            free_part(0, 1), free_part(1, 1);
        }
    }

    l0 = quad_sum(l0);
    l1 = quad_sum(l1);
    if (t4 == 0) {
        red[wg * kWgRows + r0] = l0;
        red[wg * kWgRows + r1] = l1;
    }
    bar_sync(kBarMath, 256);
    wg_write_rows(p, o, red, m0, m1, WgRows{wg, r0, t4, b, t0, h0, kWgRows, nh, split});
}

/* ---------------------------------------------------------------- the simple kernel */

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kKeysInFlight = 4;
constexpr int kMaxD = 576;

/* Element d of a head's row of D values: f32/bf16 rows, or an FP8 layout (hae.h; Fp8Mla and Fp8Gqa rows are
 * its bytes: codes, the scales after them at byte 512 or D, mla's rope after its scales). */
struct Fp8Mla {
    uint8_t b;
};
struct Fp8Gqa {
    uint8_t b;
};
template <typename T> __device__ __forceinline__ float kv_at(const T *row, int d, int) { return hae_ld(row + d); }
__device__ __forceinline__ float kv_at(const Fp8Mla *row, int d, int) {
    const uint8_t *r = &row->b;
    if (d < HAE_MLA_LATENT) return hae_dev_e4m3_to_f32(r[d]) * ((const float *)(r + HAE_MLA_FP8_SCALES))[d >> 7];
    return hae_dev_bf16_to_f32(((const uint16_t *)(r + HAE_MLA_FP8_ROPE))[d - HAE_MLA_LATENT]);
}
__device__ __forceinline__ float kv_at(const Fp8Gqa *row, int d, int D) {
    const uint8_t *r = &row->b;
    return hae_dev_e4m3_to_f32(r[d]) * ((const float *)(r + D))[d >> 7];
}

/* NJ: dims per lane, 32 NJ >= max(Dk, Dv). */
template <typename TQ, typename TKV, int NJ, bool SPLIT>
__global__ void __launch_bounds__(kThreads) simple_kernel(const SparseParams p) {
    __shared__ float sh_acc[kWarps][32 * NJ];
    __shared__ float sh_m[kWarps], sh_l[kWarps];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t row = blockIdx.x; /* (b T + t) Hq + h */
    const int h = (int)(row % p.Hq);
    const int64_t t = (row / p.Hq) % p.T, b = row / ((int64_t)p.Hq * p.T);
    const int gk = h / p.G;
    const int64_t hi = usable_hi<SPLIT>(p, b, t);

    const TQ *q = (const TQ *)p.q + b * p.q_sb + t * p.q_st + (int64_t)h * p.Dk;
    float qv[NJ], acc[NJ];
#pragma unroll
    for (int j = 0; j < NJ; j++) {
        const int d = lane + 32 * j;
        qv[j] = d < p.Dk ? hae_ld(q + d) * p.scale : 0.0f; /* q pre-scaled, as on the CPU */
        acc[j] = 0.0f;
    }
    /* mla's FP8 layout has one kv head: gk is 0 */
    const TKV *kbase = k_seq<SPLIT, TKV>(p, b) + (int64_t)gk * p.k_sh;
    const TKV *vbase = v_seq<SPLIT, TKV>(p, b) + (int64_t)gk * p.v_sh;
    const int32_t *irow = idx_row<SPLIT>(p, b, t);

    float m = -INFINITY, l = 0.0f;
    /* i0 is the same in every lane of a warp, so the shuffles below see the whole warp */
    for (int64_t i0 = (int64_t)warp * kKeysInFlight; i0 < p.nk; i0 += kWarps * kKeysInFlight) {
        float sc[kKeysInFlight];
        int64_t jj[kKeysInFlight];
#pragma unroll
        for (int u = 0; u < kKeysInFlight; u++) {
            const int64_t i = i0 + u;
            const int64_t j = i < p.nk ? irow[i] : -1;
            jj[u] = j >= 0 && j <= hi ? j : -1;
            float part = 0.0f;
            if (jj[u] >= 0) {
                const TKV *kr = kbase + jj[u] * p.k_ss;
#pragma unroll
                for (int x = 0; x < NJ; x++) {
                    const int d = lane + 32 * x;
                    if (d < p.Dk) part += qv[x] * kv_at(kr, d, p.Dk);
                }
            }
            sc[u] = part;
        }
        float mx = m;
#pragma unroll
        for (int u = 0; u < kKeysInFlight; u++) {
            sc[u] = hae_warp_sum(sc[u]);
            if (jj[u] < 0) sc[u] = -INFINITY;
            mx = fmaxf(mx, sc[u]);
        }
        if (mx == -INFINITY) continue; /* nothing usable yet */
        const float alpha = expf(m - mx); /* 0 on the warp's first usable keys */
        l *= alpha;
#pragma unroll
        for (int x = 0; x < NJ; x++) acc[x] *= alpha;
#pragma unroll
        for (int u = 0; u < kKeysInFlight; u++) {
            if (jj[u] < 0) continue;
            const float wgt = expf(sc[u] - mx);
            l += wgt;
            const TKV *vr = vbase + jj[u] * p.v_ss;
#pragma unroll
            for (int x = 0; x < NJ; x++) {
                const int d = lane + 32 * x;
                if (d < p.Dv) acc[x] += wgt * kv_at(vr, d, p.Dv);
            }
        }
        m = mx;
    }

#pragma unroll
    for (int x = 0; x < NJ; x++) sh_acc[warp][lane + 32 * x] = acc[x];
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
        wt[w] = sh_m[w] == -INFINITY ? 0.0f : expf(sh_m[w] - M); /* a warp that saw no key weighs 0 */
        L += wt[w] * sh_l[w];
    }
    const float inv = L > 0.0f ? 1.0f / L : 0.0f;
    const int64_t ob = b * p.o_sb + t * p.o_st + (int64_t)h * p.Dv;
    for (int d = threadIdx.x; d < p.Dv; d += kThreads) {
        float s = 0.0f;
#pragma unroll
        for (int w = 0; w < kWarps; w++) s += wt[w] * sh_acc[w][d];
        st_out(p.out, p.out_bf16, ob + d, s * inv);
    }
    if (p.lse && threadIdx.x == 0) p.lse[b * p.e_sb + t * p.e_st + h] = L > 0.0f ? M + logf(L) : INFINITY;
}

/* ---------------------------------------------------------------- launches */

template <typename TQ, typename TKV, bool SPLIT>
hae_status launch_simple(const SparseParams &p, int64_t rows, cudaStream_t s) {
    const int d = p.Dk > p.Dv ? p.Dk : p.Dv;
    if (d <= 64) simple_kernel<TQ, TKV, 2, SPLIT><<<(unsigned)rows, kThreads, 0, s>>>(p);
    else if (d <= 128) simple_kernel<TQ, TKV, 4, SPLIT><<<(unsigned)rows, kThreads, 0, s>>>(p);
    else if (d <= 256) simple_kernel<TQ, TKV, 8, SPLIT><<<(unsigned)rows, kThreads, 0, s>>>(p);
    else simple_kernel<TQ, TKV, kMaxD / 32, SPLIT><<<(unsigned)rows, kThreads, 0, s>>>(p);
    HAE_CUDA_LAUNCH_CHECK("simple_kernel");
    return HAE_OK;
}

/* Runs kern (threads per CTA, smem bytes, `rows` query heads of a kv head per CTA) over every
 * (query, kv head, head block) when its shared memory fits; *ran false otherwise (nothing launched).
 * Splits idx when the CTAs would leave SMs idle and the partials fit the context's scratch. cluster: CTAs
 * a cluster (2 for the FP8 pair: the head blocks must come in pairs, and a cluster must fit the GPU). */
hae_status launch(hae_backend *be, SparseParams p, int64_t B, cudaStream_t s, void (*kern)(SparseParams), int threads,
                  int smem, int rows, bool *ran, int cluster = 1) {
    const int dev = be->cuda->device;
    int smem_max = 0, sms = 0, occ = 0;
    HAE_CUDA_CHECK(cudaDeviceGetAttribute(&smem_max, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    *ran = false;
    if (smem > smem_max) return HAE_OK;
    HAE_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    HAE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    HAE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, kern, threads, smem));
    if (occ < 1) return HAE_OK;

    p.hblocks = (p.G + rows - 1) / rows;
    cudaLaunchAttribute attr = {};
    attr.id = cudaLaunchAttributeClusterDimension;
    attr.val.clusterDim.x = (unsigned)cluster;
    attr.val.clusterDim.y = attr.val.clusterDim.z = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.blockDim = dim3((unsigned)threads);
    cfg.dynamicSmemBytes = (size_t)smem;
    cfg.stream = s;
    cfg.attrs = &attr;
    cfg.numAttrs = cluster > 1 ? 1 : 0;
    if (cluster > 1) {
        int room = 0;
        cfg.gridDim = dim3((unsigned)cluster);
        if (p.hblocks % cluster != 0 || cudaOccupancyMaxActiveClusters(&room, kern, &cfg) != cudaSuccess || room < 1) {
            (void)cudaGetLastError(); /* not launchable here: the caller takes another kernel */
            return HAE_OK;
        }
    }
    const int64_t ctas = B * p.tgroups * p.Hkv * p.hblocks;
    const int ntiles = (int)((p.nk + kBN - 1) / kBN);
    int64_t splits = 1;
    const int64_t slots = (int64_t)sms * occ;
    if (ctas < slots) {
        splits = slots / ctas;
        const int64_t by_tiles = ntiles / kMinSplitTiles;
        if (splits > by_tiles) splits = by_tiles;
        const int64_t cap = ntiles / kLongSplitTiles > kSplits ? ntiles / kLongSplitTiles : kSplits;
        if (splits > cap) splits = cap < kMaxSplits ? cap : kMaxSplits;
        const int64_t nrows = B * p.T * p.Hq;
        const int64_t per_split = nrows * ((int64_t)p.Dv + 2) * (int64_t)sizeof(float);
        if (per_split > 0 && splits * per_split > (int64_t)be->cuda->scratch_bytes)
            splits = (int64_t)be->cuda->scratch_bytes / per_split;
        if (splits < 2) splits = 1;
    }
    p.tiles_per_split = (int)((ntiles + splits - 1) / splits);
    p.splits = (int)((ntiles + p.tiles_per_split - 1) / p.tiles_per_split); /* no empty ranges */
    if (p.splits < 1) p.splits = 1;
    if (ctas * p.splits > INT_MAX) return HAE_OK;
    if (p.splits > 1) {
        p.part = (float *)be->cuda->scratch;
        p.part_ml = p.part + B * p.T * p.Hq * (int64_t)p.splits * p.Dv;
    }
    cfg.gridDim = dim3((unsigned)(ctas * p.splits));
    HAE_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kern, p));
    HAE_CUDA_LAUNCH_CHECK("the tensor-core kernel");
    if (p.splits > 1) {
        combine_kernel<<<(unsigned)(B * p.T * p.Hq), kCombineThreads, 0, s>>>(p);
        HAE_CUDA_LAUNCH_CHECK("combine_kernel");
    }
    *ran = true;
    return HAE_OK;
}

template <int DK, int DV, int MT, int NW, bool SPLIT, bool F8 = false>
hae_status launch_tc(hae_backend *be, const SparseParams &p, int64_t B, cudaStream_t s, bool *ran) {
    using C = Tc<DK, DV, MT, NW>;
    return launch(be, p, B, s, tc_kernel<DK, DV, MT, NW, SPLIT, F8>, C::NT, C::smem(p.v_shared, F8), C::R, ran);
}

bool aligned16(const void *ptr, int64_t s0, int64_t s1) {
    return ((uintptr_t)ptr % 16) == 0 && s0 % 8 == 0 && s1 % 8 == 0;
}

/* The shape, the output's form and the scale; one query a CTA, one split, one head block (launch sets the last
 * two). p.out must be set. */
void fill_shape(SparseParams &p, int64_t T, int64_t Hq, int64_t Hkv, int64_t Dk, int64_t Dv, hae_dtype out,
                float scale) {
    p.T = T;
    p.Hq = (int)Hq;
    p.Hkv = (int)Hkv;
    p.G = (int)(Hq / Hkv);
    p.Dk = (int)Dk;
    p.Dv = (int)Dv;
    p.hblocks = 1;
    p.splits = 1;
    p.tiles_per_split = INT_MAX;
    p.qpack = 1;
    p.tgroups = T;
    p.out_bf16 = out == HAE_BF16;
    p.out_pairs = (uintptr_t)p.out % 8 == 0 && p.o_sb % 2 == 0 && p.o_st % 2 == 0;
    p.scale = scale;
    p.scale_log2 = scale * kLog2e;
}

/* The tensor-core configuration for these head dims and group size, if any (F8: gqa's FP8 layout, 128 dims). */
template <bool SPLIT, bool F8>
hae_status try_tc(hae_backend *be, const SparseParams &p, int64_t B, cudaStream_t s, bool *ran) {
    *ran = false;
    const bool wide = p.G > 16; /* 64 rows per CTA; else 16 rows, G / 16 CTAs */
    if (p.Dk == 128 && p.Dv == 128)
        return wide ? launch_tc<128, 128, 4, 8, SPLIT, F8>(be, p, B, s, ran)
                    : launch_tc<128, 128, 1, 4, SPLIT, F8>(be, p, B, s, ran);
    if constexpr (!F8) {
        if (p.Dk == kWgDk && p.Dv == kWgDv && p.v_shared && wide) {
            if (!p.dense && (p.nk + kBN - 1) / kBN <= kWsMaxTiles) {
                HAE_TRY(launch(be, p, B, s, ws_kernel<SPLIT>, kWsThreads, WsLayout::kSmem, kWgRows, ran));
                if (*ran) return HAE_OK;
            }
            return launch(be, p, B, s, wg_kernel<kWgBf16, SPLIT>, kWgThreads, WgLayout<kWgBf16>::kSmem, kWgRows, ran);
        }
        if (p.Dk == 576 && p.Dv == 512)
            return wide ? launch_tc<576, 512, 4, 8, SPLIT>(be, p, B, s, ran) : launch_tc<576, 512, 1, 4, SPLIT>(be, p, B, s, ran);
        if (p.Dk == 64 && p.Dv == 64) return launch_tc<64, 64, 1, 4, SPLIT>(be, p, B, s, ran);
    }
    return HAE_OK;
}

/* The kernel for the call: mla's FP8 layout on the warpgroup kernels and gqa's on the tensor-core ones
 * (fp8_tc: bf16 q, aligned rows), bf16 caches on the tensor-core ones (tc: bf16 q and caches, aligned rows),
 * else the CUDA-core kernel. */
template <bool SPLIT>
hae_status run_sparse(hae_backend *be, const SparseParams &p, const hae_sparse_attention_args *a, int64_t B,
                      int64_t rows, bool fp8_tc, bool tc, cudaStream_t s) {
    const bool fp8 = a->k_cache.dtype == HAE_FP8_E4M3; /* hae_sparse_attention checked the layout */
    const bool mla8 = fp8 && p.Dk == HAE_MLA_LATENT + HAE_MLA_ROPE;
    /* mla's FP8 at any group size: below 64 heads a CTA masks its spare MMA rows (tensor-core time the gather's
     * decode and the memory traffic hide in decode; 4x the MMA work at 16 heads in prefill), which still
     * beats the CUDA-core kernel by an order of magnitude */
    if (mla8 && fp8_tc) {
        bool ran = false;
        if ((p.G + kWgRows - 1) / kWgRows % 2 == 0) /* a query's head blocks share the decode in pairs */
            HAE_TRY(launch(be, p, B, s, wg_kernel<kWgFp8Pair, SPLIT>, kWgThreads, WgLayout<kWgFp8Pair>::kSmem, kWgRows,
                           &ran, 2));
        if (!ran) HAE_TRY(launch(be, p, B, s, wg_kernel<kWgFp8, SPLIT>, kWgThreads, WgLayout<kWgFp8>::kSmem, kWgRows, &ran));
        if (ran) return HAE_OK;
    }
    if (fp8 ? !mla8 && fp8_tc : tc) {
        bool ran = false;
        const hae_status st = fp8 ? try_tc<SPLIT, true>(be, p, B, s, &ran) : try_tc<SPLIT, false>(be, p, B, s, &ran);
        if (st != HAE_OK) return st;
        if (ran) return HAE_OK;
    }
    return hae_cuda_dispatch(a->q.dtype, "hae_sparse_attention", [&](auto tq) -> hae_status {
        using TQ = decltype(tq);
        if (mla8) return launch_simple<TQ, Fp8Mla, SPLIT>(p, rows, s);
        if (fp8) return launch_simple<TQ, Fp8Gqa, SPLIT>(p, rows, s);
        return hae_cuda_dispatch(a->k_cache.dtype, "hae_sparse_attention", [&](auto tkv) -> hae_status {
            using TKV = decltype(tkv);
            return launch_simple<TQ, TKV, SPLIT>(p, rows, s);
        });
    });
}

} // namespace

extern "C" hae_status hae_sparse_attention_cuda(hae_backend *be, const hae_sparse_attention_args *a) {
    const int64_t B = a->q.shape[0], T = a->q.shape[1], Hq = a->q.shape[2], Dk = a->q.shape[3];
    const int64_t Hkv = a->k_cache.shape[2], Dv = a->out.shape[3];
    if (B * T * Hq == 0) return HAE_OK;
    if (Dk > kMaxD || Dv > kMaxD)
        return hae_error(HAE_ERR_UNSUPPORTED,
                         "hae_sparse_attention (cuda): head dims %lld/%lld: at most %d (mla's 576/512) are implemented",
                         (long long)Dk, (long long)Dv, kMaxD);
    const int64_t rows = B * T * Hq;
    if (rows > INT_MAX)
        return hae_error(HAE_ERR_UNSUPPORTED, "hae_sparse_attention (cuda): %lld query rows exceed %d", (long long)rows,
                         INT_MAX);

    SparseParams p = {};
    p.q = a->q.data;
    p.q_sb = a->q.stride[0];
    p.q_st = a->q.stride[1];
    p.k = a->k_cache.data;
    p.v = a->v_cache.data;
    p.k_sb = a->k_cache.stride[0];
    p.k_ss = a->k_cache.stride[1];
    p.v_sb = a->v_cache.stride[0];
    p.v_ss = a->v_cache.stride[1];
    const bool gqa8 = a->k_cache.dtype == HAE_FP8_E4M3 && Dk != HAE_MLA_LATENT + HAE_MLA_ROPE;
    p.k_sh = gqa8 ? HAE_FP8_HEAD(Dk) : Dk;
    p.v_sh = gqa8 ? HAE_FP8_HEAD(Dv) : Dv;
    p.idx = (const int32_t *)a->idx.data;
    p.i_sb = a->idx.stride[0];
    p.i_st = a->idx.stride[1];
    p.lens = (const int32_t *)a->seq_lens.data;
    p.l_s = a->seq_lens.stride[0];
    p.out = a->out.data;
    p.o_sb = a->out.stride[0];
    p.o_st = a->out.stride[1];
    p.lse = (float *)a->lse.data;
    p.e_sb = a->lse.stride[0];
    p.e_st = a->lse.stride[1];
    fill_shape(p, T, Hq, Hkv, Dk, Dv, a->out.dtype, a->scale);
    p.cap = a->k_cache.shape[1];
    p.nk = a->idx.shape[2];
    p.B1 = kWhole;
    if (a->k_cache2.data) { /* hae_sparse_attention checked that it shares the first part's layout */
        p.B1 = a->k_cache.shape[0];
        p.k2 = a->k_cache2.data;
        p.v2 = a->v_cache2.data;
        p.k2_sb = a->k_cache2.stride[0];
        p.v2_sb = a->v_cache2.stride[0];
        p.idx2 = (const int32_t *)a->idx2.data;
        p.i2_sb = a->idx2.stride[0];
        p.lens2 = (const int32_t *)a->seq_lens2.data;
        p.l2_s = a->seq_lens2.stride[0];
        p.cap2 = a->k_cache2.shape[1];
    }
    /* the kernels below read part 2 with part 1's alignment */
    const bool part2_aligned = !a->k_cache2.data || (aligned16(p.k2, p.k2_sb, p.k_ss) && aligned16(p.v2, p.v2_sb, p.v_ss));
    /* mla: the values are the first Dv dims of each key row (same rows, same kv head stride) */
    p.v_shared = a->v_cache.data == a->k_cache.data && p.v_sb == p.k_sb && p.v_ss == p.k_ss && Dv <= Dk &&
                 (Hkv == 1 || Dv == Dk);

    cudaStream_t s = nullptr;
    HAE_TRY(hae_cuda_enter(be, &s));
    const bool fp8_tc = a->q.dtype == HAE_BF16 && aligned16(p.q, p.q_sb, p.q_st) && (uintptr_t)p.k % 16 == 0 &&
                        (uintptr_t)p.v % 16 == 0 && part2_aligned;
    const bool tc = a->q.dtype == HAE_BF16 && a->k_cache.dtype == HAE_BF16 && aligned16(p.q, p.q_sb, p.q_st) &&
                    aligned16(p.k, p.k_sb, p.k_ss) && aligned16(p.v, p.v_sb, p.v_ss) && part2_aligned;
    return p.B1 == kWhole ? run_sparse<false>(be, p, a, B, rows, fp8_tc, tc, s)
                          : run_sparse<true>(be, p, a, B, rows, fp8_tc, tc, s);
}

/* Dense attention of mla's absorbed form on the kernels above: a query's list is every position of its causal
 * window, read from the ring of cache slots, so these kernels' gather and softmax serve the twin's full and swa
 * layers as they serve dsa's top-k. Takes bf16 q and caches, values a view of the keys (Dk 576, Dv 512, one kv
 * head), 16-byte aligned rows; *ran false for anything else (hae_attention's CUDA-core kernel then runs). */
extern "C" hae_status hae_attention_mla_cuda(hae_backend *be, const hae_attention_args *a, bool *ran) {
    *ran = false;
    const int64_t B = a->q.shape[0], T = a->q.shape[1], Hq = a->q.shape[2], Dk = a->q.shape[3];
    const int64_t Hkv = a->k_cache.shape[2], Dv = a->v_cache.shape[3], cap = a->k_cache.shape[1];
    const int64_t last = a->pos0 + T; /* positions 0 .. last - 1 */
    if (Dk != kWgDk || Dv != kWgDv || Hkv != 1 || a->q.dtype != HAE_BF16 || a->k_cache.dtype != HAE_BF16 ||
        a->v_cache.data != a->k_cache.data || a->v_cache.stride[0] != a->k_cache.stride[0] ||
        a->v_cache.stride[1] != a->k_cache.stride[1] || last > INT_MAX || B * T * Hq > INT_MAX)
        return HAE_OK;
    SparseParams p = {};
    p.q = a->q.data;
    p.q_sb = a->q.stride[0];
    p.q_st = a->q.stride[1];
    p.k = p.v = a->k_cache.data;
    p.k_sb = p.v_sb = a->k_cache.stride[0];
    p.k_ss = p.v_ss = a->k_cache.stride[1];
    if (!aligned16(p.q, p.q_sb, p.q_st) || !aligned16(p.k, p.k_sb, p.k_ss)) return HAE_OK;
    p.out = a->out.data;
    p.o_sb = a->out.stride[0];
    p.o_st = a->out.stride[1];
    fill_shape(p, T, Hq, 1, Dk, Dv, a->out.dtype, a->scale);
    p.cap = cap;
    p.dense = true;
    p.pos0 = a->pos0;
    p.window = a->window;
    /* the longest list: a whole window, or every position up to the last query */
    p.nk = a->window > 0 && a->window < last ? a->window : last;
    p.v_shared = true;
    cudaStream_t s = nullptr;
    HAE_TRY(hae_cuda_enter(be, &s));
    /* prefill with fewer than 64 heads: 64 / Hq queries share a CTA of the warpgroup kernel, so a key tile is
     * gathered once for all of them (16 heads: a quarter of the key traffic of one query per CTA) */
    if (T > 1 && Hq < kWgRows && kWgRows % Hq == 0) {
        p.qpack = (int)(kWgRows / Hq);
        p.tgroups = (T + p.qpack - 1) / p.qpack;
        p.nk += p.qpack - 1; /* a group's union of lists */
        return launch(be, p, B, s, wg_kernel<kWgBf16, false>, kWgThreads, WgLayout<kWgBf16>::kSmem, kWgRows, ran);
    }
    return try_tc<false, false>(be, p, B, s, ran);
}

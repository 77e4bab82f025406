/* The lightning indexer's logits on CUDA, on FP8 tensor cores; the contract is hae.h's
 * hae_index_logits and the reference indexer_cpu.c's.
 *
 * Query (b, t) at p = seq_lens[b] - T + t, cached key s <= p, head weight
 * v(t, h) = w_scale w(t, h) q_scale(t, h) (q_scale 1 when absent), key block scales ks(s, c):
 *     D = 128:  I(t, s) = ks(s) sum_h v(t, h) ReLU(q(t, h) . k(s))
 *     D > 128:  I(t, s) = sum_h v(t, h) ReLU(sum_c ks(s, c) q_c(t, h) . k_c(s))       (blocks c of 128)
 * (the scale outside the ReLU for D = 128 is the header's formula; scales are > 0, so it equals the
 * CPU's scale inside), and I(t, s) = -inf for p < s < L. Rows whose seq_len is out of range are
 * clamped: keys s <= min(p, L - 1) are computed, a key with no valid page (block-table index past
 * max_pages, or an entry outside [0, n_pages)) gets a NaN scale, so a NaN logit, and is not read.
 *
 * Two kernels. D = 128 with 16-byte aligned key rows (DeepSeek-V3.2's indexer) takes wgmma
 * (index_logits_wgmma_kernel below); other D and unaligned pages take mma.sync m16n8k32 e4m3:
 * M = heads (padded to 16 MT with zero queries and zero weights), N = 8 keys, K = 32 bytes of D. Its
 * CTA takes QB query rows of one sequence (sharing every key tile) and a range of keys (a split); its
 * QB KW warps are (row, key group) pairs. Key tiles of KT = KW 16 R keys (their D bytes in rows
 * padded by 16 bytes, so the 8 rows an ldmatrix reads fall in distinct banks, and their fp32 scales)
 * stream through shared memory in kStages cp.async stages. Each warp keeps its query's A fragments
 * (MT x D / 32 x 4 registers, loaded once with ldmatrix when D = 128, per 128-block otherwise) and
 * takes 16 keys at a time: B fragments by ldmatrix, 2 MT D / 32 MMAs, then in registers ReLU and the
 * head weight on each accumulator, the sum over a lane's heads, then over the 8 lanes that share a key
 * column (xor shuffles), times the scale. On an H200 at DeepSeek-V3.2's decode shape this form is
 * bound by instruction issue (IPC 2.5, integer pipe busiest, DRAM at 23%), hence the wgmma kernel.
 *
 * Precision. Products of e4m3 values are exact. The mma.sync form sums them as fp32 does (measured on
 * an H200: worst 5e-8 of mag = sum_h |v| sum_d |q k ks| on N(0, 8^2) codes). wgmma's FP8 path keeps
 * ~14 bits when it accumulates (DeepSeek-V3 §3.5.2; public measurements find each k32 step's result
 * truncated to e8m13): each of the 4 steps of a D = 128 dot errs by < 2^-13 of the magnitude summed
 * so far, so a logit errs by < 4 2^-13 mag (4.9e-4; measured worst 5.5e-5 on the same codes), and
 * integer dots below 2^14 (the tests' exact regime) stay exact. K = 128 is one promotion interval of
 * DeepGEMM's FP8 GEMMs (whose fp8_mqa_logits keeps the whole dot in the MMA likewise); splitting it
 * into fresh accumulators would cost registers and FADDs for at most the factor 4 of the bound. */
#include "cuda_check.cuh"
#include "mma.cuh"
#include "wgmma.cuh"

#include <limits.h>
#include <math.h>

namespace {

constexpr int kQBlock = 128;    /* values per fp8 scale */
constexpr int kStages = 4;      /* key tiles in flight */
constexpr int kPad = 16;        /* bytes after each shared-memory row of D bytes */
constexpr int kMaxWarps = 8;
constexpr int kMaxHeads = 64;   /* MT <= 4: the A fragments of a 128-block fill 64 registers */
constexpr unsigned kFull = 0xffffffffu;

/* n-tiles of 8 keys a warp takes at once: 2 while the accumulators fit beside the fragments */
__host__ __device__ constexpr int nt_of(int MT) { return MT <= 2 ? 2 : 1; }

struct LogitsParams {
    const uint8_t *q; /* [B, T, H, D], a (b, t) row is H D dense bytes */
    int64_t q_sb, q_st;
    const float *w; /* [B, T, H] */
    int64_t w_sb, w_st;
    const float *qs; /* [B, T, H] or null */
    int64_t qs_sb, qs_st;
    const uint8_t *pages; /* [n_pages, P (D + 4 D / 128)] */
    int64_t page_stride, n_pages;
    const int32_t *bt; /* [B, max_pages] */
    int64_t bt_sb, max_pages;
    const int32_t *seq_lens; /* [B] */
    float *logits;           /* [B, T, L], L <= INT_MAX */
    int64_t l_sb, l_st;
    int64_t T;
    int L, split; /* split: keys per CTA, a multiple of the tile */
    int H, D, P, QB, KW, R;
    int P_shift; /* log2 P where P is a power of two (a shift, not a division, per key), else -1 */
    float w_scale;
    bool q_vec; /* q's rows start 16-byte aligned */
};

/* Dynamic shared memory of a CTA: queries [QB][16 MT][D + kPad], weights [QB][16 MT] f32, key tiles
 * [kStages][KT][D + kPad], key scales [kStages][KT][D / 128] f32, where each key of the next two tiles
 * lives [2][KT] (page, row). Every offset is a multiple of 16. */
struct Layout {
    int kstr, kt, v_off, k_off, s_off, p_off, bytes;
};
__host__ __device__ inline Layout layout_of(int MT, int D, int QB, int KW, int R) {
    Layout l;
    l.kstr = D + kPad;
    l.kt = KW * 8 * nt_of(MT) * R;
    l.v_off = QB * 16 * MT * l.kstr;
    l.k_off = l.v_off + QB * 16 * MT * (int)sizeof(float);
    l.s_off = l.k_off + kStages * l.kt * l.kstr;
    l.p_off = l.s_off + (kStages * l.kt * (D / kQBlock) * (int)sizeof(float) + 15) / 16 * 16;
    l.bytes = l.p_off + 2 * l.kt * (int)sizeof(int2);
    return l;
}

template <int VEC> __device__ __forceinline__ void cp_async(uint32_t dst, const void *src) {
    if constexpr (VEC == 16)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src) : "memory");
    else
        asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(dst), "l"(src) : "memory");
}

/* Four 8x8 b16 matrices (8 rows of 16 bytes each); lane l gives the address of row l % 8 of matrix
 * l / 8 and receives, from matrix j, word l % 4 of row l / 4 in r[j]. */
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
}

/* c += a b, 16x32 e4m3 (row) by 32x8 e4m3 (col). With g = lane / 4, q = lane % 4: a[0], a[1] hold rows
 * g, g + 8 at k bytes 4q..4q+3 and a[2], a[3] the same rows at 16 + 4q..; b0, b1 hold column g at
 * those k; c[0], c[1] are (g, 2q), (g, 2q + 1) and c[2], c[3] rows g + 8. */
__device__ __forceinline__ void mma_e4m3(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* ReLU that keeps NaN (as the CPU's x < 0 ? 0 : x), so a NaN key stays visible; one instruction. */
__device__ __forceinline__ float relu(float x) {
    float y;
    asm("max.NaN.f32 %0, %1, 0f00000000;" : "=f"(y) : "f"(x));
    return y;
}

/* The A fragments of one 128-block of D for the 16 MT head rows at `lane_addr` (the lane's ldmatrix
 * row: head (l % 8) + 8 ((l / 8) % 2), byte 16 (l / 16)). */
template <int MT>
__device__ __forceinline__ void load_q(uint32_t (&qf)[MT][4][4], uint32_t lane_addr, int kstr, int blk) {
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int kk = 0; kk < 4; kk++) ldmatrix_x4(qf[mt][kk], lane_addr + mt * 16 * kstr + blk * kQBlock + kk * 32);
}

/* What a CTA of QB query rows and one key split covers: sequence b, rows t0 .. t0 + rows - 1 at
 * positions pos0 + i, keys [k_begin, c_end) computed, [c_end, k_end) past every row's position. */
struct CtaKeys {
    int64_t b, t0, pos0;
    int rows, k_begin, c_end;
    float *out0; /* logits of row t0 */
};

/* The CTA's keys; writes -inf past every row's position (nothing read there). Returns false when the
 * CTA has nothing left to compute, the same for the whole CTA, so before any barrier. */
__device__ __forceinline__ bool cta_keys(const LogitsParams &p, int QB, CtaKeys &k) {
    k.b = blockIdx.z, k.t0 = (int64_t)blockIdx.y * QB;
    k.rows = (int)min((int64_t)QB, p.T - k.t0);
    k.pos0 = (int64_t)p.seq_lens[k.b] - p.T + k.t0;
    const int64_t s_hi = min(k.pos0 + k.rows - 1, (int64_t)p.L - 1); /* the last key any row needs */
    k.k_begin = (int)blockIdx.x * p.split;
    const int k_end = (int)min((int64_t)p.L, (int64_t)k.k_begin + p.split);
    k.c_end = (int)max((int64_t)k.k_begin, min((int64_t)k_end, s_hi + 1));
    k.out0 = p.logits + k.b * p.l_sb + k.t0 * p.l_st;
    if (k.c_end < k_end) {
        const int64_t n = k_end - k.c_end;
        for (int64_t i = threadIdx.x; i < k.rows * n; i += blockDim.x) k.out0[(i / n) * p.l_st + k.c_end + i % n] = -INFINITY;
    }
    return k.c_end > k.k_begin;
}

/* The CTA's queries as rows of D bytes, head row n = qi HP + h (zero for padded heads and rows), 16-byte
 * piece c of row n at sq + at(n, c), and the head weights sv[n]. */
template <typename At>
__device__ __forceinline__ void stage_queries(const LogitsParams &p, const CtaKeys &k, int QB, int HP, uint8_t *sq,
                                              float *sv, At at) {
    const int pieces = p.D / 16;
    for (int i = threadIdx.x; i < QB * HP * pieces; i += blockDim.x) {
        const int c = i % pieces, n = i / pieces, h = n % HP, qi = n / HP;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (qi < k.rows && h < p.H) {
            const uint8_t *src = p.q + k.b * p.q_sb + (k.t0 + qi) * p.q_st + (int64_t)h * p.D + c * 16;
            if (p.q_vec) {
                v = *(const uint4 *)src;
            } else {
                uint32_t wd[4];
#pragma unroll
                for (int j = 0; j < 4; j++)
                    wd[j] = (uint32_t)src[4 * j] | (uint32_t)src[4 * j + 1] << 8 | (uint32_t)src[4 * j + 2] << 16 |
                            (uint32_t)src[4 * j + 3] << 24;
                v = make_uint4(wd[0], wd[1], wd[2], wd[3]);
            }
        }
        *(uint4 *)(sq + at(n, c)) = v;
    }
    for (int i = threadIdx.x; i < QB * HP; i += blockDim.x) {
        const int h = i % HP, qi = i / HP;
        float v = 0.0f;
        if (qi < k.rows && h < p.H) {
            const int64_t t = k.t0 + qi;
            const float qsv = p.qs ? p.qs[k.b * p.qs_sb + t * p.qs_st + h] : 1.0f;
            v = __fmul_rn(__fmul_rn(p.w_scale, p.w[k.b * p.w_sb + t * p.w_st + h]), qsv); /* the CPU's order */
        }
        sv[i] = v;
    }
}

constexpr int kNoKey = -1;  /* past c_end: nothing read, nothing written */
constexpr int kNoPage = -2; /* no valid page: NaN scale, the logit turns NaN */

template <int MT, bool ONE, int VEC>
__global__ void __launch_bounds__(32 * kMaxWarps, 2) index_logits_kernel(const LogitsParams p) {
    constexpr int NT = nt_of(MT), CH = 8 * NT; /* keys a warp takes at once */
    extern __shared__ __align__(16) uint8_t smem[];
    hae_pdl_enter();
    const Layout ly = layout_of(MT, p.D, p.QB, p.KW, p.R);
    const int nb = p.D / kQBlock, H16 = 16 * MT, KSTR = ly.kstr, KT = ly.kt;
    uint8_t *sq = smem, *sk = smem + ly.k_off;
    float *sv = (float *)(smem + ly.v_off), *ss = (float *)(smem + ly.s_off);
    int2 *loc = (int2 *)(smem + ly.p_off);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nthreads = blockDim.x;

    CtaKeys ck;
    if (!cta_keys(p, p.QB, ck)) return;
    const int64_t b = ck.b, pos0 = ck.pos0;
    const int rows = ck.rows, k_begin = ck.k_begin, c_end = ck.c_end;
    float *out0 = ck.out0;
    stage_queries(p, ck, p.QB, H16, sq, sv, [&](int n, int c) { return n * KSTR + c * 16; });

    /* Where the keys of tile `tile` live, into slot tile % 2: (page, row), kNoKey past c_end, kNoPage
     * when the block-table index is past max_pages or its entry outside [0, n_pages). */
    const int32_t *btr = p.bt + b * p.bt_sb;
    auto locate = [&](int tile) {
        for (int key = tid; key < KT; key += nthreads) {
            const int64_t s = (int64_t)k_begin + (int64_t)tile * KT + key;
            int2 v = make_int2(kNoKey, 0);
            if (s < c_end) {
                const int si = (int)s, i = p.P_shift >= 0 ? si >> p.P_shift : si / p.P;
                const int64_t pg = i < p.max_pages ? (int64_t)__ldg(btr + i) : -1;
                v = pg >= 0 && pg < p.n_pages ? make_int2((int)pg, si - i * p.P) : make_int2(kNoPage, 0);
            }
            loc[(tile & 1) * KT + key] = v;
        }
    };
    /* The copies of tile `tile` into stage `tile % kStages`: thread tid takes copies tid + j threads,
     * copy i being piece i % n of key i / n (walked without divisions). */
    const int kpieces = p.D / VEC, PD = p.P * p.D;
    auto issue = [&](int tile) {
        const int2 *lt = loc + (tile & 1) * KT;
        const int st = tile % kStages;
        const uint32_t dk = hae_smem_addr(sk + st * KT * KSTR);
        int key = tid / kpieces, c = tid % kpieces;
        const int dkey = nthreads / kpieces, dc = nthreads % kpieces;
        for (; key < KT; key += dkey, c += dc) {
            if (c >= kpieces) c -= kpieces, key++;
            if (key >= KT) break;
            const int2 pr = lt[key];
            if (pr.x >= 0)
                cp_async<VEC>(dk + key * KSTR + c * VEC, p.pages + pr.x * p.page_stride + pr.y * p.D + c * VEC);
        }
        float *ds = ss + st * KT * nb;
        for (int i = tid; i < KT * nb; i += nthreads) {
            const int2 pr = lt[i / nb];
            if (pr.x >= 0)
                cp_async<4>(hae_smem_addr(ds + i), p.pages + pr.x * p.page_stride + PD + (pr.y * nb + i % nb) * 4);
            else if (pr.x == kNoPage)
                ds[i] = __uint_as_float(0x7fc00000u);
        }
    };

    /* prologue: locate tile i + 1 while issuing tile i, a barrier between steps (slots alternate) */
    const int n_tiles = (c_end - k_begin + KT - 1) / KT;
    locate(0);
    __syncthreads(); /* also publishes the queries and weights */
    for (int i = 0; i < kStages - 1; i++) {
        if (i + 1 < n_tiles) locate(i + 1);
        if (i < n_tiles) issue(i);
        cp_async_commit();
        __syncthreads();
    }

    const int qi = warp / p.KW, kw = warp % p.KW, g = lane >> 2, tq = lane & 3;
    const bool active = qi < rows;
    const int64_t pos_raw = pos0 + qi;
    const int pos = (int)max((int64_t)-1, min(pos_raw, (int64_t)INT_MAX)); /* keys s <= pos are scored */
    float *out = out0 + qi * p.l_st;
    const uint32_t q_lane = hae_smem_addr(sq + (qi * H16 + (lane & 7) + ((lane >> 3) & 1) * 8) * KSTR + (lane >> 4) * 16);
    const int b_off = (lane & 7) * KSTR + (lane >> 3) * 16; /* key row l % 8, bytes 16 (l / 8): 64 bytes of 8 keys */
    float vw[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
        vw[mt][0] = sv[qi * H16 + mt * 16 + g];
        vw[mt][1] = sv[qi * H16 + mt * 16 + g + 8];
    }
    uint32_t qf[MT][4][4];
    if (ONE) load_q<MT>(qf, q_lane, KSTR, 0);

    for (int it = 0; it < n_tiles; it++) {
        cp_async_wait<kStages - 2>(); /* this thread's copies of tile `it` landed */
        __syncthreads();              /* everyone's did, tile it - 1 is done with, tile it + kStages - 1 located */
        if (it + kStages - 1 < n_tiles) issue(it + kStages - 1);
        cp_async_commit();
        if (active) {
            const int st = it % kStages;
            const uint8_t *tk = sk + st * KT * KSTR;
            const float *ts = ss + st * KT * nb;
            for (int c = 0; c < p.R; c++) {
                const int kb = (kw * p.R + c) * CH; /* the chunk's first key in the tile */
                const int s_chunk = k_begin + it * KT + kb;
                if (s_chunk >= c_end) break;
                const uint32_t b_lane = hae_smem_addr(tk + kb * KSTR + b_off);
                float x[NT][MT][4];
                for (int blk = 0; blk < (ONE ? 1 : nb); blk++) {
                    if (!ONE) load_q<MT>(qf, q_lane, KSTR, blk);
                    float acc[NT][MT][4] = {};
#pragma unroll
                    for (int kk2 = 0; kk2 < 2; kk2++) { /* 64 bytes of the block */
                        uint32_t bf[NT][4];
#pragma unroll
                        for (int nt = 0; nt < NT; nt++)
                            ldmatrix_x4(bf[nt], b_lane + nt * 8 * KSTR + blk * kQBlock + kk2 * 64);
#pragma unroll
                        for (int kk = 0; kk < 2; kk++)
#pragma unroll
                            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                                for (int mt = 0; mt < MT; mt++)
                                    mma_e4m3(acc[nt][mt], qf[mt][2 * kk2 + kk], bf[nt][2 * kk], bf[nt][2 * kk + 1]);
                    }
#pragma unroll
                    for (int nt = 0; nt < NT; nt++) {
                        float sc[2] = {1.0f, 1.0f};
                        if (!ONE) {
                            sc[0] = ts[(kb + nt * 8 + 2 * tq) * nb + blk];
                            sc[1] = ts[(kb + nt * 8 + 2 * tq + 1) * nb + blk];
                        }
#pragma unroll
                        for (int mt = 0; mt < MT; mt++)
#pragma unroll
                            for (int i = 0; i < 4; i++) {
                                const float v = ONE ? acc[nt][mt][i] : acc[nt][mt][i] * sc[i & 1];
                                x[nt][mt][i] = blk ? x[nt][mt][i] + v : v;
                            }
                    }
                }
                /* sum over heads: a lane's 2 MT rows, then the 8 lanes (g) sharing its columns 2 tq, 2 tq + 1 */
                float part[NT][2];
#pragma unroll
                for (int nt = 0; nt < NT; nt++)
#pragma unroll
                    for (int j = 0; j < 2; j++) {
                        float s = 0.0f;
#pragma unroll
                        for (int mt = 0; mt < MT; mt++)
                            s += vw[mt][0] * relu(x[nt][mt][j]) + vw[mt][1] * relu(x[nt][mt][2 + j]);
                        s += __shfl_xor_sync(kFull, s, 4);
                        s += __shfl_xor_sync(kFull, s, 8);
                        s += __shfl_xor_sync(kFull, s, 16);
                        part[nt][j] = ONE ? s * ts[kb + nt * 8 + 2 * tq + j] : s;
                    }
                /* lane (g, tq), g < 2 NT, writes key 8 (g / 2) + 2 tq + g % 2 of the chunk */
                if (g < 2 * NT) {
                    float val = 0.0f;
#pragma unroll
                    for (int i = 0; i < 2 * NT; i++)
                        if (g == i) val = part[i / 2][i % 2];
                    const int s = s_chunk + 8 * (g / 2) + 2 * tq + g % 2;
                    if (s < c_end) out[s] = s <= pos ? val : -INFINITY;
                }
            }
        }
        /* after the tile's math, so a block-table miss stalls behind it rather than before it */
        if (it + kStages < n_tiles) locate(it + kStages);
    }
}

/* ---------------------------------------------------------------- wgmma path: D = 128, aligned key rows
 *
 * S^T = K Q^T on wgmma m64nNk32 e4m3 -> f32: M = 64 keys of a tile, N = 64 QB heads (64 per query,
 * padded with zero queries and zero weights) of the CTA's QB queries, K = 32 bytes of D, both operands
 * K-major in shared memory in the 128-byte swizzle (a key's or a head's 128 bytes in one row; 16-byte
 * chunk c of row r stored at chunk c ^ (r % 8) of a 1024-byte aligned tile). A thread's accumulators
 * are 2 keys by 16 heads of each query, so ReLU, head weights and the head sum are 32 FMAs a query in
 * registers and 2 shuffles over the 4 lanes that share a key. One MMA for both queries of a prefill
 * CTA (N = 128) reads each key tile from shared memory once: with N = 64 a query, the two operands'
 * reads alone kept shared memory as busy as the tensor cores. A CTA takes a range of keys; its NWG
 * warpgroups take its 64-key tiles in turn, each with its own S-stage cp.async pipeline and named
 * barrier, so one warpgroup's epilogue runs beside another's MMAs. */
constexpr int kTileKeys = 64; /* wgmma's M */
constexpr int kHP = 64;       /* heads per query, padded: wgmma's N */
constexpr int kRow = 128;     /* bytes of D = 128 */
constexpr int kTileBytes = kTileKeys * kRow;

/* Byte offset of 16-byte chunk c of row r in a 128-byte-swizzled tile. */
__device__ __forceinline__ int sw128(int r, int c) { return r * kRow + ((c ^ (r & 7)) << 4); }

/* Shared-memory matrix descriptor of a K-major, 128-byte-swizzled tile at `addr` (1024-byte aligned,
 * or that plus a multiple of 32 to step K): 8-row groups 1024 bytes apart. */
__device__ __forceinline__ uint64_t sw128_desc(uint32_t addr) {
    return (uint64_t)((addr & 0x3FFFF) >> 4) | (uint64_t)1 << 16 | (uint64_t)(1024 >> 4) << 32 | (uint64_t)1 << 62;
}

/* d (+)= A B^T, A 64x32 keys, B Nx32 heads (N = 64 or 128: the size of d), both e4m3 by descriptor;
 * d[4 j + 2 r + c] is key 16 warp + lane / 4 + 8 r, head 8 j + 2 (lane % 4) + c. */
__device__ __forceinline__ void wgmma_fp8(float (&d)[32], uint64_t a, uint64_t b, int accumulate) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3 {" HAE_WG_D32 "}, %32, %33, p, 1, 1;\n}\n"
                 : HAE_WG_F8(d, 0), HAE_WG_F8(d, 8), HAE_WG_F8(d, 16), HAE_WG_F8(d, 24)
                 : "l"(a), "l"(b), "r"(accumulate));
}
__device__ __forceinline__ void wgmma_fp8(float (&d)[64], uint64_t a, uint64_t b, int accumulate) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 {" HAE_WG_D64 "}, %64, %65, p, 1, 1;\n}\n"
                 : HAE_WG_F8(d, 0), HAE_WG_F8(d, 8), HAE_WG_F8(d, 16), HAE_WG_F8(d, 24), HAE_WG_F8(d, 32),
                   HAE_WG_F8(d, 40), HAE_WG_F8(d, 48), HAE_WG_F8(d, 56)
                 : "l"(a), "l"(b), "r"(accumulate));
}
__device__ __forceinline__ void wg_sync(int wg) { asm volatile("bar.sync %0, 128;" ::"r"(1 + wg) : "memory"); }

/* Dynamic shared memory of a wgmma CTA past its 1024-byte aligned start: queries [QB][64][128]
 * swizzled, key tiles [NWG][S][64][128] swizzled, key scales [NWG][S][64] f32, weights [QB][64] f32. */
__host__ __device__ constexpr int wgmma_smem(int QB, int NWG, int S) {
    return 1024 + QB * kHP * kRow + NWG * S * (kTileBytes + kTileKeys * 4) + QB * kHP * 4;
}

template <int QB, int NWG, int S>
__global__ void __launch_bounds__(128 * NWG, 1) index_logits_wgmma_kernel(const LogitsParams p) {
    static_assert((QB == 1 || QB == 2) && S >= 2, "wgmma N = 64 QB; the pipeline at least two stages");
    extern __shared__ __align__(16) uint8_t smem_raw[];
    hae_pdl_enter();
    uint8_t *const sq = smem_raw + ((1024 - (hae_smem_addr(smem_raw) & 1023)) & 1023);
    uint8_t *const sk = sq + QB * kHP * kRow;
    float *const ss = (float *)(sk + NWG * S * kTileBytes);
    float *const sv = ss + NWG * S * kTileKeys;
    const int tid = threadIdx.x;

    CtaKeys ck;
    if (!cta_keys(p, QB, ck)) return;
    const int64_t b = ck.b, pos0 = ck.pos0;
    const int rows = ck.rows, k_begin = ck.k_begin, c_end = ck.c_end;
    float *out0 = ck.out0;
    stage_queries(p, ck, QB, kHP, sq, sv, [](int n, int c) { return sw128(n, c); });
    fence_async_smem();
    __syncthreads(); /* the last CTA-wide barrier: warpgroups part here */

    const int wg = tid >> 7, wt = tid & 127, warp = wt >> 5, lane = tid & 31;
    const int n_tiles = (c_end - k_begin + kTileKeys - 1) / kTileKeys;
    const int my_tiles = (n_tiles - wg + NWG - 1) / NWG; /* tiles wg, wg + NWG, ... of the CTA's keys */
    if (my_tiles <= 0) return;
    uint8_t *const wk = sk + wg * S * kTileBytes;
    float *const ws = ss + wg * S * kTileKeys;

    /* Copies: thread wt takes key wt / 2 of a tile, bytes 64 (wt % 2) .. + 63, and (even wt) its scale.
     * Where that key lives: (page, row), kNoKey past c_end, kNoPage for a bad block-table entry. */
    const int ckey = wt >> 1, chalf = wt & 1;
    const int32_t *btr = p.bt + b * p.bt_sb;
    const int64_t PD = (int64_t)p.P * kRow;
    auto locate = [&](int i) {
        const int64_t s = (int64_t)k_begin + (int64_t)(wg + i * NWG) * kTileKeys + ckey;
        if (s >= c_end) return make_int2(kNoKey, 0);
        const int si = (int)s, pi = p.P_shift >= 0 ? si >> p.P_shift : si / p.P;
        const int64_t pg = pi < p.max_pages ? (int64_t)__ldg(btr + pi) : -1;
        return pg >= 0 && pg < p.n_pages ? make_int2((int)pg, si - pi * p.P) : make_int2(kNoPage, 0);
    };
    auto issue = [&](int i, int2 pr) {
        const int st = i % S;
        if (pr.x >= 0) {
            const uint8_t *page = p.pages + (int64_t)pr.x * p.page_stride;
            const uint8_t *src = page + (int64_t)pr.y * kRow + chalf * 64;
            const uint32_t dst = hae_smem_addr(wk + st * kTileBytes);
#pragma unroll
            for (int j = 0; j < 4; j++) cp_async<16>(dst + sw128(ckey, 4 * chalf + j), src + 16 * j);
            if (!chalf) cp_async<4>(hae_smem_addr(ws + st * kTileKeys + ckey), page + PD + (int64_t)pr.y * 4);
        } else if (pr.x == kNoPage && !chalf) {
            ws[st * kTileKeys + ckey] = __uint_as_float(0x7fc00000u);
        }
    };

    int2 next = locate(0); /* where the next tile to issue lives */
#pragma unroll
    for (int i = 0; i < S - 1; i++) {
        if (i < my_tiles) issue(i, next);
        if (i + 1 < my_tiles) next = locate(i + 1);
        cp_async_commit();
    }

    /* this thread's head weights: 8 j + 2 (lane % 4) + c of each query */
    float wv[QB][16];
#pragma unroll
    for (int q = 0; q < QB; q++)
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int c = 0; c < 2; c++) wv[q][2 * j + c] = sv[q * kHP + 8 * j + 2 * (lane & 3) + c];
    int pos[QB]; /* keys s <= pos[q] are scored */
#pragma unroll
    for (int q = 0; q < QB; q++) pos[q] = (int)max((int64_t)-1, min(pos0 + q, (int64_t)INT_MAX));
    const uint64_t qdesc = sw128_desc(hae_smem_addr(sq));
    /* after the reduction lane l holds key row r = l % 2 of its quad; lanes with l % 4 < 2 write */
    const int key = 16 * warp + (lane >> 2) + 8 * (lane & 1);
    const bool writer = !(lane & 2);
    float acc[32 * QB] = {}; /* the first MMA overwrites them */

    for (int it = 0; it < my_tiles; it++) {
        cp_async_wait<S - 2>(); /* this thread's copies of tile `it` landed */
        fence_async_smem();
        wg_sync(wg); /* everyone's did, and tile it - 1 is done with */
        if (it + S - 1 < my_tiles) issue(it + S - 1, next);
        cp_async_commit();
        if (it + S < my_tiles) next = locate(it + S); /* its latency hides behind this tile's math */

        const int st = it % S;
        const uint64_t kdesc = sw128_desc(hae_smem_addr(wk + st * kTileBytes));
        wg_fence();
#pragma unroll
        for (int k = 0; k < kRow / 32; k++) wgmma_fp8(acc, kdesc + 2 * k, qdesc + 2 * k, k);
        wg_commit();
        const int s = k_begin + (wg + it * NWG) * kTileKeys + key;
        const float ks = ws[st * kTileKeys + key];
        wg_wait<0>();
        wg_hold(acc);
#pragma unroll
        for (int q = 0; q < QB; q++) {
            float x[2][2] = {};
#pragma unroll
            for (int j = 0; j < 8; j++)
#pragma unroll
                for (int r = 0; r < 2; r++)
#pragma unroll
                    for (int c = 0; c < 2; c++)
                        x[r][c] = fmaf(relu(acc[32 * q + 4 * j + 2 * r + c]), wv[q][2 * j + c], x[r][c]);
            const float v0 = x[0][0] + x[0][1], v1 = x[1][0] + x[1][1];
            /* sum over the quad: lane bit 0 keeps row (lane & 1), then bit 1 completes it */
            float v = (lane & 1) ? v1 : v0;
            v += __shfl_xor_sync(kFull, (lane & 1) ? v0 : v1, 1);
            v += __shfl_xor_sync(kFull, v, 2);
            if (writer && q < rows && s < c_end) out0[q * p.l_st + s] = s <= pos[q] ? v * ks : -INFINITY;
        }
    }
}

/* Splits the keys so that at least 8 waves of CTAs fill the GPU and the last is nearly full
 * (hae_index_split_tiles; the lengths are on the device, so L stands for them), a split being whole
 * tiles of kt keys; the grid is (splits, query blocks, B). */
hae_status grid_of(hae_backend *be, const void *kern, int threads, int smem, int kt, int64_t B, LogitsParams &p, int QB,
                   dim3 &grid) {
    const int dev = be->cuda->device;
    int sms = 0, occ = 0;
    HAE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    HAE_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    HAE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, kern, threads, smem));
    if (occ < 1)
        return hae_error(HAE_ERR_UNSUPPORTED, "hae_index_logits (cuda): a CTA of %d threads and %d bytes of shared "
                         "memory does not fit an SM", threads, smem);
    const int64_t qblocks = (p.T + QB - 1) / QB;
    if (qblocks > 65535 || B > 65535)
        return hae_error(HAE_ERR_UNSUPPORTED, "hae_index_logits (cuda): B = %lld sequences of T = %lld queries: the grid "
                         "takes at most 65535 sequences and 65535 blocks of %d queries", (long long)B, (long long)p.T, QB);
    const int64_t tiles = ((int64_t)p.L + kt - 1) / kt;
    /* a CTA's fixed cost (queries staged, pipeline filled) is about 512 keys' work */
    const int64_t split = hae_index_split_tiles(tiles, B * qblocks, (int64_t)sms * occ, kt, 512) * kt;
    if (split > INT_MAX - kt)
        return hae_error(HAE_ERR_UNSUPPORTED, "hae_index_logits (cuda): L = %d keys is too long", p.L);
    p.split = (int)split;
    grid = dim3((unsigned)(((int64_t)p.L + split - 1) / split), (unsigned)qblocks, (unsigned)B);
    return HAE_OK;
}

/* The mma.sync kernel: picks the CTA shape and launches. */
template <int MT, bool ONE, int VEC>
hae_status launch(hae_backend *be, LogitsParams p, int64_t B, cudaStream_t s) {
    auto kern = index_logits_kernel<MT, ONE, VEC>;
    int smem_max = 0;
    HAE_CUDA_CHECK(cudaDeviceGetAttribute(&smem_max, cudaDevAttrMaxSharedMemoryPerBlockOptin, be->cuda->device));
    /* decode (T <= 2): the warps split 128-key tiles; prefill: 8 query rows share 64-key tiles */
    const int ch = 8 * nt_of(MT);
    p.QB = p.T >= 5 ? 8 : p.T >= 3 ? 4 : (int)p.T;
    p.KW = kMaxWarps / p.QB;
    p.R = (p.QB == 1 ? 128 : 64) / (p.KW * ch);
    p.R = p.R < 1 ? 1 : p.R;
    while (layout_of(MT, p.D, p.QB, p.KW, p.R).bytes > smem_max) {
        if (p.KW > 1) p.KW /= 2;
        else if (p.R > 1) p.R /= 2;
        else if (p.QB > 1) p.QB /= 2;
        else
            return hae_error(HAE_ERR_UNSUPPORTED, "hae_index_logits (cuda): D = %d needs %d bytes of shared memory for "
                             "one query row and %d key stages; the device has %d", p.D,
                             layout_of(MT, p.D, 1, 1, 1).bytes, kStages, smem_max);
    }
    const Layout ly = layout_of(MT, p.D, p.QB, p.KW, p.R);
    const int threads = 32 * p.QB * p.KW;
    dim3 grid;
    HAE_TRY(grid_of(be, (const void *)kern, threads, ly.bytes, ly.kt, B, p, p.QB, grid));
    HAE_CUDA_CHECK(hae_launch_pdl(kern, grid, dim3(threads), ly.bytes, s, p));
    HAE_CUDA_LAUNCH_CHECK("index_logits_kernel");
    return HAE_OK;
}

template <int MT> hae_status launch_mt(hae_backend *be, const LogitsParams &p, int64_t B, bool vec16, cudaStream_t s) {
    const bool one = p.D == kQBlock;
    if (one) return vec16 ? launch<MT, true, 16>(be, p, B, s) : launch<MT, true, 4>(be, p, B, s);
    return vec16 ? launch<MT, false, 16>(be, p, B, s) : launch<MT, false, 4>(be, p, B, s);
}

/* The wgmma kernel with QB queries per CTA. */
template <int QB, int NWG, int S> hae_status launch_wgmma(hae_backend *be, LogitsParams p, int64_t B, cudaStream_t s) {
    auto kern = index_logits_wgmma_kernel<QB, NWG, S>;
    constexpr int smem = wgmma_smem(QB, NWG, S), threads = 128 * NWG;
    dim3 grid;
    HAE_TRY(grid_of(be, (const void *)kern, threads, smem, kTileKeys * NWG, B, p, QB, grid));
    HAE_CUDA_CHECK(hae_launch_pdl(kern, grid, dim3(threads), smem, s, p));
    HAE_CUDA_LAUNCH_CHECK("index_logits_wgmma_kernel");
    return HAE_OK;
}

} // namespace

extern "C" hae_status hae_index_logits_cuda(hae_backend *be, const hae_index_logits_args *a) {
    const int64_t B = a->q.shape[0], T = a->q.shape[1], H = a->q.shape[2], D = a->q.shape[3], L = a->logits.shape[2];
    const hae_index_cache *c = &a->cache;
    if (B * T == 0 || L == 0) return HAE_OK;
    if (H > kMaxHeads)
        return hae_error(HAE_ERR_UNSUPPORTED, "hae_index_logits (cuda): H_I = %lld heads: at most %d (one warp holds "
                         "every head's query fragments)", (long long)H, kMaxHeads);
    if (D > 4096 || L > INT_MAX - 1024 || (int64_t)c->page_size * D > INT_MAX / 2)
        return hae_error(HAE_ERR_UNSUPPORTED, "hae_index_logits (cuda): D = %lld, P = %d, L = %lld: at most D = 4096 "
                         "and L < 2^31 - 1024 keys, with P D < 2^30", (long long)D, c->page_size, (long long)L);

    LogitsParams p = {};
    p.q = (const uint8_t *)a->q.data;
    p.q_sb = a->q.stride[0];
    p.q_st = a->q.stride[1];
    p.w = (const float *)a->w.data;
    p.w_sb = a->w.stride[0];
    p.w_st = a->w.stride[1];
    p.qs = (const float *)a->q_scale.data;
    p.qs_sb = p.qs ? a->q_scale.stride[0] : 0;
    p.qs_st = p.qs ? a->q_scale.stride[1] : 0;
    p.pages = (const uint8_t *)c->pages.data;
    p.page_stride = c->pages.stride[0];
    p.n_pages = c->pages.shape[0];
    p.bt = (const int32_t *)c->block_table.data;
    p.bt_sb = c->block_table.stride[0];
    p.max_pages = c->block_table.shape[1];
    p.seq_lens = (const int32_t *)a->seq_lens.data;
    p.logits = (float *)a->logits.data;
    p.l_sb = a->logits.stride[0];
    p.l_st = a->logits.stride[1];
    p.T = T;
    p.L = (int)L;
    p.H = (int)H;
    p.D = (int)D;
    p.P = c->page_size;
    p.P_shift = (p.P & (p.P - 1)) == 0 ? __builtin_ctz((unsigned)p.P) : -1;
    p.w_scale = a->w_scale;
    p.q_vec = ((uintptr_t)p.q | (uintptr_t)p.q_sb | (uintptr_t)p.q_st) % 16 == 0;
    /* 16-byte key copies when every key row starts 16-byte aligned (P D is a multiple of 128) */
    const bool vec16 = ((uintptr_t)p.pages | (uintptr_t)p.page_stride) % 16 == 0;

    cudaStream_t s = nullptr;
    HAE_TRY(hae_cuda_enter(be, &s));
    /* Measured on an H200 over 1-4 warpgroups, 3-6 stages and 1, 2 or 4 queries per CTA: decode is
     * bound by memory and wants 3 warpgroups of 4 stages; prefill by the epilogue beside the MMAs and
     * wants 4 warpgroups (2 queries keep them within 128 registers). */
    if (D == kRow && vec16 && !a->exact)
        return T == 1 ? launch_wgmma<1, 3, 4>(be, p, B, s) : launch_wgmma<2, 4, 3>(be, p, B, s);
    switch ((H + 15) / 16) {
    case 1: return launch_mt<1>(be, p, B, vec16, s);
    case 2: return launch_mt<2>(be, p, B, vec16, s);
    case 3: return launch_mt<3>(be, p, B, vec16, s);
    default: return launch_mt<4>(be, p, B, vec16, s);
    }
}

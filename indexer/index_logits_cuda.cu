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
 * Tensor cores: S = Q K^T with mma.sync m16n8k32 e4m3 -> f32: M = heads (padded to 16 MT with zero
 * queries and zero weights), N = 8 keys, K = 32 bytes of D. A CTA takes QB query rows of one sequence
 * (sharing every key tile) and a range of keys (a split); its QB KW warps are (row, key group) pairs.
 * Key tiles of KT = KW 16 R keys (their D bytes in rows padded by 16 bytes, so the 8 rows an ldmatrix
 * reads fall in distinct banks, and their fp32 scales) stream through shared memory in kStages
 * cp.async stages. Each warp keeps its query's A fragments (MT x D / 32 x 4 registers, loaded once with
 * ldmatrix when D = 128, per 128-block otherwise) and takes 16 keys at a time: B fragments by
 * ldmatrix, 2 MT D / 32 MMAs, then in registers ReLU and the head weight on each accumulator, the sum
 * over a lane's heads, then over the 8 lanes that share a key column (xor shuffles), times the scale.
 *
 * Precision: products of e4m3 values are exact and, measured on an H200, this mma.sync form sums them
 * as fp32 does (worst 5e-8 of sum_h |v| sum_d |q k ks| on N(0, 8^2) codes over 10 shapes), unlike the
 * ~14-bit fixed-point accumulation DeepSeek-V3 reports (§3.5.2) for Hopper's wgmma FP8 path; logits
 * differ from the CPU's only by the order of their fp32 sums. */
#include "cuda_check.cuh"

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

__device__ __forceinline__ uint32_t smem_addr(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

template <int VEC> __device__ __forceinline__ void cp_async(uint32_t dst, const void *src) {
    if constexpr (VEC == 16)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src) : "memory");
    else
        asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(dst), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
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

/* ReLU that keeps NaN (as the CPU's x < 0 ? 0 : x), so a NaN key stays visible. */
__device__ __forceinline__ float relu(float x) { return x < 0.0f ? 0.0f : x; }

/* The A fragments of one 128-block of D for the 16 MT head rows at `lane_addr` (the lane's ldmatrix
 * row: head (l % 8) + 8 ((l / 8) % 2), byte 16 (l / 16)). */
template <int MT>
__device__ __forceinline__ void load_q(uint32_t (&qf)[MT][4][4], uint32_t lane_addr, int kstr, int blk) {
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int kk = 0; kk < 4; kk++) ldmatrix_x4(qf[mt][kk], lane_addr + mt * 16 * kstr + blk * kQBlock + kk * 32);
}

constexpr int kNoKey = -1;  /* past c_end: nothing read, nothing written */
constexpr int kNoPage = -2; /* no valid page: NaN scale, the logit turns NaN */

template <int MT, bool ONE, int VEC>
__global__ void __launch_bounds__(32 * kMaxWarps, 2) index_logits_kernel(const LogitsParams p) {
    constexpr int NT = nt_of(MT), CH = 8 * NT; /* keys a warp takes at once */
    extern __shared__ __align__(16) uint8_t smem[];
    const Layout ly = layout_of(MT, p.D, p.QB, p.KW, p.R);
    const int nb = p.D / kQBlock, H16 = 16 * MT, KSTR = ly.kstr, KT = ly.kt;
    uint8_t *sq = smem, *sk = smem + ly.k_off;
    float *sv = (float *)(smem + ly.v_off), *ss = (float *)(smem + ly.s_off);
    int2 *loc = (int2 *)(smem + ly.p_off);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nthreads = blockDim.x;

    const int64_t b = blockIdx.z, t0 = (int64_t)blockIdx.y * p.QB;
    const int rows = (int)min((int64_t)p.QB, p.T - t0);
    const int64_t pos0 = (int64_t)p.seq_lens[b] - p.T + t0; /* position of the CTA's first row */
    const int64_t s_hi = min(pos0 + rows - 1, (int64_t)p.L - 1); /* the last key any row needs */
    const int k_begin = (int)blockIdx.x * p.split, k_end = (int)min((int64_t)p.L, (int64_t)k_begin + p.split);
    const int c_end = (int)max((int64_t)k_begin, min((int64_t)k_end, s_hi + 1)); /* keys [k_begin, c_end) computed */
    float *out0 = p.logits + b * p.l_sb + t0 * p.l_st;

    /* keys past every row's position: -inf, nothing read */
    if (c_end < k_end) {
        const int64_t n = k_end - c_end;
        for (int64_t i = tid; i < rows * n; i += nthreads) out0[(i / n) * p.l_st + c_end + i % n] = -INFINITY;
    }
    if (c_end == k_begin) return; /* the same for the whole CTA, before any barrier */

    /* the queries (zero for padded heads and rows) and the head weights */
    const int qpieces = p.D / 16;
    for (int i = tid; i < p.QB * H16 * qpieces; i += nthreads) {
        const int c = i % qpieces, rh = i / qpieces, h = rh % H16, qi = rh / H16;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (qi < rows && h < p.H) {
            const uint8_t *src = p.q + b * p.q_sb + (t0 + qi) * p.q_st + (int64_t)h * p.D + c * 16;
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
        *(uint4 *)(sq + rh * KSTR + c * 16) = v;
    }
    for (int i = tid; i < p.QB * H16; i += nthreads) {
        const int h = i % H16, qi = i / H16;
        float v = 0.0f;
        if (qi < rows && h < p.H) {
            const int64_t t = t0 + qi;
            const float qsv = p.qs ? p.qs[b * p.qs_sb + t * p.qs_st + h] : 1.0f;
            v = __fmul_rn(__fmul_rn(p.w_scale, p.w[b * p.w_sb + t * p.w_st + h]), qsv); /* the CPU's order */
        }
        sv[i] = v;
    }

    /* Where the keys of tile `tile` live, into slot tile % 2: (page, row), kNoKey past c_end, kNoPage
     * when the block-table index is past max_pages or its entry outside [0, n_pages). */
    const int32_t *btr = p.bt + b * p.bt_sb;
    auto locate = [&](int tile) {
        for (int key = tid; key < KT; key += nthreads) {
            const int64_t s = (int64_t)k_begin + (int64_t)tile * KT + key;
            int2 v = make_int2(kNoKey, 0);
            if (s < c_end) {
                const int si = (int)s, i = si / p.P;
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
        const uint32_t dk = smem_addr(sk + st * KT * KSTR);
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
                cp_async<4>(smem_addr(ds + i), p.pages + pr.x * p.page_stride + PD + (pr.y * nb + i % nb) * 4);
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
    const uint32_t q_lane = smem_addr(sq + (qi * H16 + (lane & 7) + ((lane >> 3) & 1) * 8) * KSTR + (lane >> 4) * 16);
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
                const uint32_t b_lane = smem_addr(tk + kb * KSTR + b_off);
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

/* Picks the CTA shape, the key splits and launches. */
template <int MT, bool ONE, int VEC>
hae_status launch(hae_backend *be, LogitsParams p, int64_t B, cudaStream_t s) {
    auto kern = index_logits_kernel<MT, ONE, VEC>;
    const int dev = be->cuda->device;
    int smem_max = 0, sms = 0;
    HAE_CUDA_CHECK(cudaDeviceGetAttribute(&smem_max, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    HAE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
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
    const int64_t qblocks = (p.T + p.QB - 1) / p.QB;
    if (qblocks > 65535 || B > 65535)
        return hae_error(HAE_ERR_UNSUPPORTED, "hae_index_logits (cuda): B = %lld sequences of T = %lld queries: the grid "
                         "takes at most 65535 sequences and 65535 blocks of %d queries", (long long)B, (long long)p.T,
                         p.QB);
    HAE_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, ly.bytes));
    int occ = 0;
    HAE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, kern, threads, ly.bytes));
    if (occ < 1)
        return hae_error(HAE_ERR_UNSUPPORTED, "hae_index_logits (cuda): a CTA of %d threads and %d bytes of shared "
                         "memory does not fit an SM", threads, ly.bytes);

    /* Split the keys so that about 8 waves of CTAs fill the GPU (the lengths are on the device, so L
     * stands for them); splits are whole tiles. */
    const int64_t tiles = ((int64_t)p.L + ly.kt - 1) / ly.kt;
    const int64_t want = 8 * (int64_t)sms * occ, rows = B * qblocks;
    int64_t splits = (want + rows - 1) / rows;
    splits = splits < 1 ? 1 : splits > tiles ? tiles : splits;
    const int64_t split = (tiles + splits - 1) / splits * ly.kt;
    if (split > INT_MAX - ly.kt)
        return hae_error(HAE_ERR_UNSUPPORTED, "hae_index_logits (cuda): L = %d keys is too long", p.L);
    p.split = (int)split;
    splits = ((int64_t)p.L + split - 1) / split;
    kern<<<dim3((unsigned)splits, (unsigned)qblocks, (unsigned)B), threads, ly.bytes, s>>>(p);
    HAE_CUDA_LAUNCH_CHECK("index_logits_kernel");
    return HAE_OK;
}

template <int MT> hae_status launch_mt(hae_backend *be, const LogitsParams &p, int64_t B, bool vec16, cudaStream_t s) {
    const bool one = p.D == kQBlock;
    if (one) return vec16 ? launch<MT, true, 16>(be, p, B, s) : launch<MT, true, 4>(be, p, B, s);
    return vec16 ? launch<MT, false, 16>(be, p, B, s) : launch<MT, false, 4>(be, p, B, s);
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
    p.w_scale = a->w_scale;
    p.q_vec = ((uintptr_t)p.q | (uintptr_t)p.q_sb | (uintptr_t)p.q_st) % 16 == 0;
    /* 16-byte key copies when every key row starts 16-byte aligned (P D is a multiple of 128) */
    const bool vec16 = ((uintptr_t)p.pages | (uintptr_t)p.page_stride) % 16 == 0;

    cudaStream_t s = nullptr;
    HAE_TRY(hae_cuda_enter(be, &s));
    switch ((H + 15) / 16) {
    case 1: return launch_mt<1>(be, p, B, vec16, s);
    case 2: return launch_mt<2>(be, p, B, vec16, s);
    case 3: return launch_mt<3>(be, p, B, vec16, s);
    default: return launch_mt<4>(be, p, B, vec16, s);
    }
}

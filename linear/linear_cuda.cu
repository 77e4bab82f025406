/* The linear-attention family on CUDA (contracts in hae.h, reference linear/linear_cpu.c; arguments
 * already checked by linear/linear.c: innermost strides 1, dense inside a token, shapes agree).
 *
 * One kernel family for every variant: the decay kind and the delta switch are template parameters
 * (they change the structure), the gate function and the q/k map are uniform runtime switches (one
 * scalar branch each). q, k, v are f32 or bf16 (a template parameter); g, beta and out are read and
 * written through a runtime dtype flag. State and all accumulation are fp32.
 *
 * Supported: K and V in {64, 128} (K != V allowed), chunk 0 (recurrent) or 64 (chunked). Other head
 * dims and chunk sizes return HAE_ERR_UNSUPPORTED.
 *
 * Tensor cores: the chunked form's products (C x K x C, C x K x V, K x C x V) run on mma.sync with
 * operands of the inputs' precision. f32 inputs: m16n8k8 TF32 with the 3xTF32 split (a = hi + lo,
 * a*b ~ hi*hi + hi*lo + lo*hi), fp32 accuracy (~1e-6 relative per product) at a third of the TF32
 * rate, and an fp32 workspace. bf16 inputs (flash-linear-attention's precision): A', P, w and u0 on
 * plain TF32, the workspace between the kernels in bf16 and the state and output passes on
 * m16n8k16 bf16 products; 2-3e-3 relative RMS to the fp32 reference (state, output). */
#include "cuda_check.cuh"
#include "mma.cuh"

#include <math.h>
#include <stdint.h>

namespace {

/* ---------------------------------------------------------------- shared pieces */

/* Compile-time tags: f(IntTag<decay>, BoolTag<delta>) and f(IntTag<K>) on the host; in kernels,
 * specialised(b, f) runs f's form for b (one uniform branch where a runtime switch inside f's loops had
 * both forms compiled as predicated instructions issued side by side). */
template <int D> struct IntTag {
    static constexpr int value = D;
};
template <bool B> struct BoolTag {
    static constexpr bool value = B;
};
template <typename F> __device__ __forceinline__ void specialised(bool b, F &&f) {
    if (b) f(BoolTag<true>{});
    else f(BoolTag<false>{});
}

struct LinParams {
    const void *q, *k, *v, *g, *beta;
    int64_t q_sb, q_st, k_sb, k_st, v_sb, v_st, g_sb, g_st, b_sb, b_st; /* strides of dims 0, 1 */
    const float *A_log, *dt_bias;
    float *state;
    void *out;
    int64_t o_sb, o_st;
    const int32_t *cu; /* NULL: B equal-length sequences */
    int64_t T;
    int N, H, HV, V;
    bool g_bf16, b_bf16, o_bf16;
    bool o_pairs; /* out's base, row strides and V even (f32: 8-byte aligned): columns 2 i, 2 i + 1 stored at once */
    bool o_quads; /* bf16 out, its base 8-byte aligned, row strides and V multiples of 4: four columns at once */
    bool softplus, elu1;
    float lower_bound, scale;
    bool diag_mma; /* chunked: diagonal blocks of A' and P on the tensor cores (see chunk_prep) */
    bool vec;      /* q, k, v and a channel gate's rows start 16-byte aligned: chunk_prep loads 16 bytes at once */
};

__device__ __forceinline__ float ld_dt(const void *p, bool bf16, int64_t i) {
    return bf16 ? hae_dev_bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}
__device__ __forceinline__ void st_dt(void *p, bool bf16, int64_t i, float v) {
    if (bf16) ((uint16_t *)p)[i] = hae_dev_f32_to_bf16(v);
    else ((float *)p)[i] = v;
}

/* Fast-math forms (a few ulp): the limits hold, 1 / (1 + inf) = 0. */
__device__ __forceinline__ float sigmoidf_(float x) { return __fdividef(1.0f, 1.0f + __expf(-x)); }

/* Log decay from the raw gate x = graw + dt_bias (hae.h), eA = exp(A_log): softplus or the bounded
 * safe gate. */
__device__ __forceinline__ float gate_softplus(float x, float eA) { return -eA * (x > 20.0f ? x : log1pf(expf(x))); }
__device__ __forceinline__ float gate_safe(const LinParams &p, float x, float eA) {
    return p.lower_bound * sigmoidf_(eA * x);
}
/* The safe gate in base 2 (log2 of the decay), ga = -eA log2 e, gb = lower_bound log2 e: five instructions */
__device__ __forceinline__ float gate_safe_log2(float x, float ga, float gb) {
    return __fdividef(gb, 1.0f + hae_ex2(ga * x));
}
__device__ __forceinline__ float gate_fn_e(const LinParams &p, float x, float eA) {
    return p.softplus ? gate_softplus(x, eA) : gate_safe(p, x, eA);
}
__device__ __forceinline__ float gate_fn(const LinParams &p, float x, float A_log) {
    return gate_fn_e(p, x, expf(A_log));
}

/* 16-byte asynchronous global -> shared copies (both addresses 16-byte aligned). */
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem) {
    const uint32_t s = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(gmem) : "memory");
}

/* Eight consecutive elements (f32 or bf16) as raw 32-bit words: vec, one or two 16-byte loads (the
 * address is 16-byte aligned); else element by element. */
struct Raw8 {
    uint32_t u[8];
};
__device__ __forceinline__ void raw8_load(Raw8 &r, const void *p, bool bf16, bool vec) {
    if (vec) {
        *(uint4 *)&r.u[0] = ((const uint4 *)p)[0];
        if (!bf16) *(uint4 *)&r.u[4] = ((const uint4 *)p)[1];
        return;
    }
#pragma unroll
    for (int e = 0; e < 8; e++) {
        if (bf16) {
            const uint32_t b = ((const uint16_t *)p)[e];
            r.u[e >> 1] = (e & 1) ? (r.u[e >> 1] | b << 16) : b;
        } else {
            r.u[e] = ((const uint32_t *)p)[e];
        }
    }
}
/* The eight elements to s (16-byte aligned) as they are. */
__device__ __forceinline__ void raw8_store(void *s, const Raw8 &r, bool bf16) {
    *(uint4 *)s = *(const uint4 *)&r.u[0];
    if (!bf16) ((uint4 *)s)[1] = *(const uint4 *)&r.u[4];
}
/* Eight elements copied global -> shared as they are: asynchronously (cp.async_wait_all before reading
 * them) when vec, else through registers. */
__device__ __forceinline__ void raw8_copy(void *s, const void *g, bool bf16, bool vec) {
    if (vec) {
        cp_async16(s, g);
        if (!bf16) cp_async16((char *)s + 16, (const char *)g + 16);
        return;
    }
    Raw8 r;
    raw8_load(r, g, bf16, false);
    raw8_store(s, r, bf16);
}
__device__ __forceinline__ float raw8_get(const Raw8 &r, bool bf16, int e) {
    return bf16 ? __uint_as_float((r.u[e >> 1] >> (16 * (e & 1))) << 16) : __uint_as_float(r.u[e]);
}

/* The q/k feature map before the (optional) L2 norm. */
__device__ __forceinline__ float elu1(float x) { return x > 0.0f ? x + 1.0f : expf(x); }
__device__ __forceinline__ float qk_map(const LinParams &p, float x) { return p.elu1 ? elu1(x) : x; }

/* Log decay of token row `row` (element offset of the token in g), channel c, value head j. */
template <int DECAY>
__device__ __forceinline__ float log_decay(const LinParams &p, int64_t row, int j, int c, int K) {
    if (DECAY == HAE_DECAY_NONE) return 0.0f;
    if (DECAY == HAE_DECAY_FIXED) return -expf(p.A_log[j]);
    if (DECAY == HAE_DECAY_HEAD) return gate_fn(p, ld_dt(p.g, p.g_bf16, row + j) + p.dt_bias[j], p.A_log[j]);
    return gate_fn(p, ld_dt(p.g, p.g_bf16, row + (int64_t)j * K + c) + p.dt_bias[(int64_t)j * K + c], p.A_log[j]);
}

/* Sequence n: batch index, first token and length. */
struct SeqRange {
    int64_t b, t0, len;
};
__device__ __forceinline__ SeqRange seq_range(const LinParams &p, int n) {
    if (p.cu) return {0, p.cu[n], (int64_t)p.cu[n + 1] - p.cu[n]};
    return {n, 0, p.T};
}

/* ---------------------------------------------------------------- recurrent form (chunk 0)
 * Per token, with S' = diag(e^g) S the decayed state:
 *     delta: u = beta (v - S'^T k),  else u = v;   S = S' + k u^T;
 *     o = scale S^T q = scale (S'^T q + (q . k) u)
 * so one pass over S' gives both S'^T k and S'^T q (one reduction per token). A CTA owns a K x 32
 * slice of one head's state (split V: B = 1, H = 32, V = 128 gives 128 CTAs), in registers for all
 * T tokens: thread (rg, cg) holds rows rg + 16 r and columns 4 cg .. 4 cg + 3 as float4, so a warp
 * loads 4 rows x 128 contiguous bytes per instruction. Bandwidth-bound: the state is read and
 * written once per call. Measured on H200 (bench_linear, H 32, K = V = 128): 7.9 us at B = 1,
 * 373 us = 2.9 TB/s (68% of copy) at B = 256. */
constexpr int kRecVT = 32;
constexpr int kRecThreads = 128;

template <typename TI, int K, int DECAY, bool DELTA>
__global__ void __launch_bounds__(kRecThreads) recurrent_kernel(const LinParams p) {
    hae_pdl_enter();
    constexpr int RPT = K / 16;
    __shared__ float sq[K], sk[K], seg[K];
    __shared__ float part[4][3];
    __shared__ float red[4][8][8];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int cg = tid & 7, rg = tid >> 3;
    const int vt = blockIdx.x, j = blockIdx.y, n = blockIdx.z;
    const int h = j / (p.HV / p.H);
    const SeqRange sr = seq_range(p, n);
    if (sr.len <= 0) return;
    const int col = vt * kRecVT + cg * 4;
    float *S = p.state + ((int64_t)n * p.HV + j) * K * p.V + col;
    float4 s[RPT];
#pragma unroll
    for (int r = 0; r < RPT; r++) s[r] = *(const float4 *)(S + (int64_t)(rg + 16 * r) * p.V);

    const TI *qb = (const TI *)p.q + sr.b * p.q_sb + (int64_t)h * K;
    const TI *kb = (const TI *)p.k + sr.b * p.k_sb + (int64_t)h * K;
    const TI *vb = (const TI *)p.v + sr.b * p.v_sb + (int64_t)j * p.V + col;
    for (int64_t t = sr.t0; t < sr.t0 + sr.len; t++) {
        float qv = 0.0f, kv = 0.0f;
        if (tid < K) {
            qv = qk_map(p, hae_ld(qb + t * p.q_st + tid));
            kv = qk_map(p, hae_ld(kb + t * p.k_st + tid));
            sq[tid] = qv;
            sk[tid] = kv;
            seg[tid] = expf(log_decay<DECAY>(p, sr.b * p.g_sb + t * p.g_st, j, tid, K));
        }
        float vv[4];
#pragma unroll
        for (int x = 0; x < 4; x++) vv[x] = hae_ld(vb + t * p.v_st + x);
        const float bsig = DELTA ? sigmoidf_(ld_dt(p.beta, p.b_bf16, sr.b * p.b_sb + t * p.b_st + j)) : 1.0f;
        float a0 = hae_warp_sum(qv * qv), a1 = hae_warp_sum(kv * kv), a2 = hae_warp_sum(qv * kv);
        if (lane == 0) {
            part[warp][0] = a0;
            part[warp][1] = a1;
            part[warp][2] = a2;
        }
        __syncthreads();
        float ssq = 0.0f, ssk = 0.0f, sqk = 0.0f;
#pragma unroll
        for (int w = 0; w < 4; w++) ssq += part[w][0], ssk += part[w][1], sqk += part[w][2];
        const float rq = p.elu1 ? 1.0f : 1.0f / sqrtf(ssq + 1e-6f);
        const float rk = p.elu1 ? 1.0f : 1.0f / sqrtf(ssk + 1e-6f);
        const float qk = sqk * rq * rk;

        float ks[4] = {0, 0, 0, 0}, qs[4] = {0, 0, 0, 0};
#pragma unroll
        for (int r = 0; r < RPT; r++) {
            const int row = rg + 16 * r;
            const float e = seg[row], kr = sk[row] * rk, qr = sq[row] * rq;
            s[r].x *= e, s[r].y *= e, s[r].z *= e, s[r].w *= e;
            ks[0] += kr * s[r].x, ks[1] += kr * s[r].y, ks[2] += kr * s[r].z, ks[3] += kr * s[r].w;
            qs[0] += qr * s[r].x, qs[1] += qr * s[r].y, qs[2] += qr * s[r].z, qs[3] += qr * s[r].w;
        }
#pragma unroll
        for (int x = 0; x < 4; x++) {
            ks[x] += __shfl_xor_sync(0xffffffffu, ks[x], 8);
            ks[x] += __shfl_xor_sync(0xffffffffu, ks[x], 16);
            qs[x] += __shfl_xor_sync(0xffffffffu, qs[x], 8);
            qs[x] += __shfl_xor_sync(0xffffffffu, qs[x], 16);
        }
        if (lane < 8) {
#pragma unroll
            for (int x = 0; x < 4; x++) red[warp][lane][x] = ks[x], red[warp][lane][4 + x] = qs[x];
        }
        __syncthreads();
        float u[4], o[4];
#pragma unroll
        for (int x = 0; x < 4; x++) {
            float kt = 0.0f, qt = 0.0f;
#pragma unroll
            for (int w = 0; w < 4; w++) kt += red[w][cg][x], qt += red[w][cg][4 + x];
            u[x] = DELTA ? bsig * (vv[x] - kt) : vv[x];
            o[x] = p.scale * (qt + qk * u[x]);
        }
#pragma unroll
        for (int r = 0; r < RPT; r++) {
            const float kr = sk[rg + 16 * r] * rk;
            s[r].x += kr * u[0], s[r].y += kr * u[1], s[r].z += kr * u[2], s[r].w += kr * u[3];
        }
        if (rg == 0) {
            const int64_t oo = sr.b * p.o_sb + t * p.o_st + (int64_t)j * p.V + col;
#pragma unroll
            for (int x = 0; x < 4; x++) st_dt(p.out, p.o_bf16, oo + x, o[x]);
        }
    }
#pragma unroll
    for (int r = 0; r < RPT; r++) *(float4 *)(S + (int64_t)(rg + 16 * r) * p.V) = s[r];
}

/* ---------------------------------------------------------------- 3xTF32 tensor-core tiles
 * mma.sync m16n8k8 (row.col) fragments, g = lane / 4, t = lane % 4:
 *   A 16x8: a0 (g, t), a1 (g + 8, t), a2 (g, t + 4), a3 (g + 8, t + 4)
 *   B 8x8:  b0 (t, g), b1 (t + 4, g)
 *   C 16x8: c0 (g, 2t), c1 (g, 2t + 1), c2 (g + 8, 2t), c3 (g + 8, 2t + 1) */
__device__ __forceinline__ uint32_t to_tf32(float x) {
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
}
/* X3: the 3xTF32 split (fp32 accuracy); else plain TF32 (10-bit mantissa, what bf16 inputs carry): the
 * fp32 bits as they are, whose low 13 the tensor cores ignore (rounding toward zero; NaN and inf stay
 * non-finite, a NaN with its payload only in those bits reading as inf), where a rounding conversion
 * costs two instructions at every use. */
template <bool X3 = true> __device__ __forceinline__ void split_tf32(float x, uint32_t &hi, uint32_t &lo) {
    hi = X3 ? to_tf32(x) : __float_as_uint(x);
    lo = X3 ? to_tf32(x - __uint_as_float(hi)) : 0u;
}
__device__ __forceinline__ void mma_tf32(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
/* c += a b from split operands: hi*hi + hi*lo + lo*hi (X3), else hi*hi. */
template <bool X3>
__device__ __forceinline__ void mma_tf32x(float (&c)[4], const uint32_t (&ah)[4], const uint32_t (&al)[4],
                                          const uint32_t (&bh)[2], const uint32_t (&bl)[2]) {
    if (X3) {
        mma_tf32(c, al, bh);
        mma_tf32(c, ah, bl);
    }
    mma_tf32(c, ah, bh);
}

/* acc[nt] (+)= A (16 x KD) B (KD x 8 NT), A(m, k) = a[m * am + k * ak], B(k, n) = b[k * bk + n * bn],
 * all in shared memory, k < kend; one warp. */
template <int KD, int NT>
__device__ __forceinline__ void warp_mma(float (&acc)[NT][4], const float *a, int am, int ak, const float *b, int bk,
                                         int bn, int kend = KD) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll 2
    for (int k0 = 0; k0 < KD && k0 < kend; k0 += 8) {
        uint32_t ah[4], al[4];
        split_tf32(a[g * am + (k0 + t) * ak], ah[0], al[0]);
        split_tf32(a[(g + 8) * am + (k0 + t) * ak], ah[1], al[1]);
        split_tf32(a[g * am + (k0 + t + 4) * ak], ah[2], al[2]);
        split_tf32(a[(g + 8) * am + (k0 + t + 4) * ak], ah[3], al[3]);
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            uint32_t bh[2], bl[2];
            split_tf32(b[(k0 + t) * bk + (nt * 8 + g) * bn], bh[0], bl[0]);
            split_tf32(b[(k0 + t + 4) * bk + (nt * 8 + g) * bn], bh[1], bl[1]);
            mma_tf32(acc[nt], al, bh);
            mma_tf32(acc[nt], ah, bl);
            mma_tf32(acc[nt], ah, bh);
        }
    }
}

/* ---------------------------------------------------------------- bf16 tensor-core tiles
 * mma.sync m16n8k16 (bf16 in, fp32 accumulate; engine/mma.cuh), fragments by ldmatrix from shared
 * memory whose rows are 16-byte multiples (every stride below is padded to one).
 *
 * acc[nt] (+)= A (16 x KD) B (KD x 8 NT) for one warp, the operands in shared memory as the workspace
 * type: A(m, k) = AT ? a[k * lda + m] : a[m * lda + k], B(k, n) = b[k * ldb + n]; k < kend only (a
 * multiple of 16: a causal A's zero blocks skipped). fp32 operands run 3xTF32 (fp32 accuracy), bf16 ones
 * one bf16 MMA per 16 x 8 x 16. */
template <int KD, int NT, bool AT>
__device__ __forceinline__ void tile_mma(float (&acc)[NT][4], const float *a, int lda, const float *b, int ldb,
                                         int kend = KD) {
    warp_mma<KD, NT>(acc, a, AT ? 1 : lda, AT ? lda : 1, b, ldb, 1, kend);
}
template <int KD, int NT, bool AT>
__device__ __forceinline__ void tile_mma(float (&acc)[NT][4], const hae_bf16_t *a, int lda, const hae_bf16_t *b,
                                         int ldb, int kend = KD) {
    static_assert(NT % 2 == 0, "B fragments come in pairs of n-tiles");
    const int lane = threadIdx.x & 31, q = lane >> 3, r = lane & 7;
    /* matrix q of an x4 load: A's (rows + 8 (q & 1), k + 8 (q >> 1)); B's (k + 8 (q & 1), n + 8 (q >> 1)) */
    const hae_bf16_t *pa = AT ? a + (8 * (q >> 1) + r) * lda + 8 * (q & 1) : a + (8 * (q & 1) + r) * lda + 8 * (q >> 1);
    const hae_bf16_t *pb = b + (8 * (q & 1) + r) * ldb + 8 * (q >> 1);
#pragma unroll
    for (int k0 = 0; k0 < KD; k0 += 16) {
        if (k0 >= kend) break;
        uint32_t af[4];
        if (AT) ldsm_x4_t(af, hae_smem_addr(pa + k0 * lda));
        else ldsm_x4(af, hae_smem_addr(pa + k0));
#pragma unroll
        for (int nt = 0; nt < NT; nt += 2) {
            uint32_t bf[4];
            ldsm_x4_t(bf, hae_smem_addr(pb + k0 * ldb + nt * 8));
            mma_bf16(acc[nt], af, bf[0], bf[1]);
            mma_bf16(acc[nt + 1], af, bf[2], bf[3]);
        }
    }
}

/* Two adjacent workspace elements (fp32 or bf16) from / to fp32. */
/* Two fp32 values as a bf16 pair (x in the low half), nearest even as hae_dev_f32_to_bf16 (NaNs: any
 * quiet one), and back. */
__device__ __forceinline__ uint32_t bf16x2(float x, float y) {
    uint32_t r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(y), "f"(x));
    return r;
}
__device__ __forceinline__ float2 unbf16x2(uint32_t u) {
    return make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u));
}
__device__ __forceinline__ void st2(float *p, float x, float y) { *(float2 *)p = make_float2(x, y); }
__device__ __forceinline__ void st2(hae_bf16_t *p, float x, float y) { *(uint32_t *)p = bf16x2(x, y); }
/* out[i], out[i + 1] (i even): one store when p.o_pairs */
__device__ __forceinline__ void st_out2(const LinParams &p, int64_t i, float v0, float v1) {
    if (p.o_pairs && p.o_bf16) st2((hae_bf16_t *)p.out + i, v0, v1);
    else if (p.o_pairs) st2((float *)p.out + i, v0, v1);
    else st_dt(p.out, p.o_bf16, i, v0), st_dt(p.out, p.o_bf16, i + 1, v1);
}
/* Columns 0..15 of an accumulator row held as m16n8 C fragments (n-tile 0's pair c00, c01 and n-tile 1's
 * c10, c11 at columns 2t, 2t + 1 and 8 + 2t, 8 + 2t + 1), regrouped so that lane t of each quad holds columns
 * 4t .. 4t + 3 as bf16: one 8-byte store a row fills a 32-byte sector, where four-byte pairs from two
 * store instructions half-filled it twice (measured: half-filled sectors cost the L2-bound chunk_state
 * as much as whole ones). Every lane of the warp takes part. */
__device__ __forceinline__ uint2 quad_cols4(float c00, float c01, float c10, float c11) {
    const int lane = threadIdx.x & 31, t = lane & 3, s = (lane & ~3) | (t & 1) * 2;
    const uint32_t p0 = bf16x2(c00, c01), p1 = bf16x2(c10, c11);
    const uint32_t a0 = __shfl_sync(0xffffffffu, p0, s), a1 = __shfl_sync(0xffffffffu, p1, s);
    const uint32_t b0 = __shfl_sync(0xffffffffu, p0, s + 1), b1 = __shfl_sync(0xffffffffu, p1, s + 1);
    return t >> 1 ? make_uint2(a1, b1) : make_uint2(a0, b0);
}
/* Four (8- or 16-byte aligned) and eight (16-byte aligned) adjacent elements from fp32. */
__device__ __forceinline__ void st4(float *p, float4 v) { *(float4 *)p = v; }
__device__ __forceinline__ void st4(hae_bf16_t *p, float4 v) {
    *(uint2 *)p = make_uint2(bf16x2(v.x, v.y), bf16x2(v.z, v.w));
}
__device__ __forceinline__ void st8(float *p, const float (&v)[8]) {
    *(float4 *)p = make_float4(v[0], v[1], v[2], v[3]);
    *(float4 *)(p + 4) = make_float4(v[4], v[5], v[6], v[7]);
}
__device__ __forceinline__ void st8(hae_bf16_t *p, const float (&v)[8]) {
    *(uint4 *)p = make_uint4(bf16x2(v[0], v[1]), bf16x2(v[2], v[3]), bf16x2(v[4], v[5]), bf16x2(v[6], v[7]));
}
/* Two (4- or 8-byte aligned) and four (8- or 16-byte aligned) adjacent elements as fp32. */
__device__ __forceinline__ float2 ld2(const float *p) { return *(const float2 *)p; }
__device__ __forceinline__ float2 ld2(const hae_bf16_t *p) { return unbf16x2(*(const uint32_t *)p); }
__device__ __forceinline__ float4 ld4(const float *p) { return *(const float4 *)p; }
__device__ __forceinline__ float4 ld4(const hae_bf16_t *p) {
    const uint2 u = *(const uint2 *)p;
    const float2 a = unbf16x2(u.x), b = unbf16x2(u.y);
    return make_float4(a.x, a.y, b.x, b.y);
}

/* ---------------------------------------------------------------- chunked form (chunk 64)
 * Per chunk of C tokens and value head (hae.h's math; Γ_i = cumulative log decay over the chunk's
 * tokens 0..i, ≤ 0 and non-increasing; K~_i = k_i e^{Γ_i}):
 *   A'_ij = Σ_c k_ic k_jc e^{Γ_ic - Γ_jc} (j < i),  P_ij = Σ_c q_ic k_jc e^{Γ_ic - Γ_jc} (j ≤ i)
 *   delta: w_i = β_i (K~_i - Σ_{j<i} A'_ij w_j),  u0_i = β_i (v_i - Σ_{j<i} A'_ij u0_j),  U = u0 - w S0
 *   no delta: U = V
 *   O_i = scale (q_i e^{Γ_i})^T S0 + scale Σ_{j≤i} P_ij U_j
 *   S_end = diag(e^{Γ_L}) S0 + Σ_j (k_j e^{Γ_L - Γ_j}) U_j^T          (L = C - 1; padded rows have g = 0)
 * Stability: every exponent is a difference Γ_a - Γ_b with a after b (≤ 0). Below the 16 x 16
 * diagonal blocks, for rows in block I (first row i0), e^{Γ_i - Γ_j} = e^{Γ_i - Γ_i0} e^{Γ_i0 - Γ_j}
 * with both factors ≤ 1 since j < i0 ≤ i, so the blocks are products of scaled copies: exact for any
 * gate, the unbounded softplus one included. The diagonal blocks factor around their middle row when
 * the gate is bounded (|g| ≤ 10: factors ≤ e^80), else take one exponential per term.
 *
 * Kernels: (1) chunk_prep, parallel over (chunk, head): gates, Γ, A', P (global), w, u0 (blocked
 * inverse of I + diag(β) A', then two tensor-core products), q e^Γ, k e^{Γ_L - Γ}, e^{Γ_L};
 * (2) chunk_state, sequential over a sequence's chunks, parallel over (sequence, head, 32 value
 * columns): U = u0 - w S0, S = e^{Γ_L} S + (k e^{Γ_L-Γ})^T U, the state in mma accumulators; with bf16
 * inputs it also forms O from the S0 and U it holds (a warp group of its own), with fp32 ones it stores
 * each chunk's start state and U for (3) chunk_out, parallel over (chunk, head, 64 value columns): O.
 * Measured on an H200 (bench_linear, H 32, K = V = 128, bf16, bench/RESULTS.md): 0.53 ms at B 1 T 8192,
 * 2.03 ms at T 32768. Kernel 2 is bound by what it moves through L2 (four CTAs a head read the same w, kd,
 * q e^Γ and P tiles): it reads only P's causal blocks, and every bf16 store of both kernels fills whole
 * 32-byte sectors (quad_cols4): half-filled ones cost as much as whole ones (2212 -> 2028 us at T 32768).
 * ncu's stall samples steered the steps: kernel 1 is latency-bound, so it runs three
 * CTAs an SM on 16-bit tiles (two left half the issue slots empty), and warps that a phase leaves idle
 * take the next phase's independent work instead of waiting at its barrier (the q e^Γ stores beside the
 * A'/P blocks, D_I beside K~, w and u0 a row block at a time beside the inverse's block rows); kernel 2's
 * chain per chunk is MMA and barrier latency, so its copies and the outputs are other warps' work and its
 * tile copies take one division a tile instead of one a 16-byte chunk. */
constexpr int kC = HAE_LIN_CHUNK; /* tokens per chunk */
constexpr size_t cmax(size_t a, size_t b) { return a > b ? a : b; }
constexpr float kLog2e = 1.4426950408889634f;
constexpr int kNB = kC / 16;  /* 16-row blocks per chunk */
constexpr int kPrepThreads = 256;
constexpr int kStateVT = 32;  /* value columns per chunk_state CTA (w and kd are re-read once per tile) */
constexpr int kStateThreads = 256;
constexpr int kOutThreads = 256;

using ChunkWs = hae_chunk_ws; /* the layout: engine/internal.h */

/* Chunk offsets of the sequences (sequence n owns global chunks [coff[n], coff[n + 1])). */
__global__ void chunk_offsets_kernel(const LinParams p, int32_t *coff) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    int32_t acc = 0;
    coff[0] = 0;
    for (int n = 0; n < p.N; n++) {
        const SeqRange sr = seq_range(p, n);
        acc += (int32_t)((sr.len + kC - 1) / kC);
        coff[n + 1] = acc;
    }
}

/* The sequence owning global chunk gc (-1 past the end) and its chunk index in it: arithmetic for
 * equal-length sequences (no dependent loads ahead of a kernel's first), else the last n with
 * coff[n] <= gc (zero-length sequences repeat offsets). */
__device__ __forceinline__ int chunk_seq(const LinParams &p, const int32_t *coff, int64_t gc, int64_t &ci) {
    if (!p.cu) {
        const int64_t cps = (p.T + kC - 1) / kC, n = cps ? gc / cps : p.N;
        ci = n < p.N ? gc - n * cps : 0;
        return n < p.N ? (int)n : -1;
    }
    if (gc >= coff[p.N]) return -1;
    int lo = 0, hi = p.N;
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (coff[mid] <= gc) lo = mid;
        else hi = mid - 1;
    }
    ci = gc - coff[lo];
    return lo;
}

/* Kernel 1's shared memory. q, k hold the chunk's rows as they came (TS = the input type; mapped only
 * under elu1) with their L2-norm factors rq, rk applied to the products (exact tiles, at 16 bits for
 * bf16), row stride LK = K + 8: a warp's fragment reads, rows g and channel pairs t, are conflict-free
 * (32-bit pairs of bf16 over a warp, 64-bit pairs of fp32 per half-warp). G
 * (fp32) holds the log decays unpadded, channel c of row r at c ^ 8 (r & 7): the fragment walks' 8-byte
 * reads (rows g, channel pairs t) are conflict-free per half-warp. L holds β_i A'_ij: the six 16 x 16
 * blocks below the diagonal, then the four diagonal ones as strict lower triangles. Once A' and P are
 * done the regions are reused: q holds T = (I + diag(β) A')^{-1} (fp32, stride LT), k holds K~ in place
 * and G holds V as it came (TS, stride LV = 136, any V ≤ 128: the B fragment walks, rows t and columns
 * g, are conflict-free). With bf16 inputs and K = 128 that is 76,416 bytes: three CTAs an SM (the kernel
 * is latency-bound; at two it left half the issue slots empty); fp32 inputs take 113,280, two. */
template <typename TS, int K> struct PrepSmem {
    static constexpr int LK = K + 8;
    static constexpr int LT = kC + 4;
    static constexpr int LV = 136;
    static constexpr size_t QB = cmax(kC * LK * sizeof(TS), kC * LT * sizeof(float));
    static constexpr size_t GB = cmax(kC * K * sizeof(float), kC * LV * sizeof(TS));
    alignas(16) unsigned char qb[QB];
    alignas(16) TS k[kC * LK];
    alignas(16) unsigned char gb[GB];
    float L[6 * 256 + 4 * 120];
    float beta[kC], rq[kC], rk[kC]; /* β and the rows' L2-norm factors */
    __device__ TS *q() { return (TS *)qb; }
    __device__ float *T() { return (float *)qb; }
    __device__ float *G() { return (float *)gb; }
    __device__ TS *bv() { return (TS *)gb; }
    /* G's element (r, c) */
    __device__ static int gi(int r, int c) { return r * K + (c ^ ((r & 7) << 3)); }
};
static_assert(sizeof(PrepSmem<hae_bf16_t, 128>) <= 76800, "three CTAs an SM: 233,472 bytes less 1 KB each");

/* β A' block (I, J), J ≤ I: the six below the diagonal as 16 x 16 row-major, the diagonal ones packed
 * (row il's entries jl < il from il (il - 1) / 2). */
__device__ __forceinline__ int lblk(int I, int J) { return (I * (I - 1) / 2 + J) * 256; }
__device__ __forceinline__ int ldiag(int I, int il, int jl) { return 6 * 256 + I * 120 + il * (il - 1) / 2 + jl; }


/* w = T diag(β) K~ and u0 = T diag(β) V, T = (I + diag(β) A')^{-1} lower unitriangular: T's 16 x 16
 * diagonal blocks D_I by 16-step substitution (one thread per column), then block row by block
 * row T_IJ = -D_I Σ_{J≤M<I} (β A')_IM T_MJ (one MMA warp per block), then the two products on the
 * tensor cores. Padded rows
 * have β = 0, so their rows of T are unit rows and their w, u0 are 0. */
template <typename TI, int K, int DECAY, bool DELTA>
__global__ void __launch_bounds__(kPrepThreads, sizeof(TI) == 2 ? 3 : 2)
    chunk_prep_kernel(const LinParams p, const ChunkWs ws) {
    hae_pdl_enter(); /* chunk_state's fused form may then take the SMs the last wave leaves idle */
    using Sm = PrepSmem<TI, K>;
    constexpr int LK = Sm::LK, LT = Sm::LT, LV = Sm::LV;
    constexpr bool kX3 = sizeof(TI) == 4; /* fp32 inputs: fp32-accurate products; bf16: TF32 */
    extern __shared__ __align__(16) unsigned char smem_raw[];
    Sm &sm = *reinterpret_cast<Sm *>(smem_raw);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const int64_t gc = blockIdx.x;
    const int j = blockIdx.y, h = j / (p.HV / p.H), V = p.V;
    int64_t ci;
    const int n = chunk_seq(p, ws.coff, gc, ci);
    if (n < 0) return;
    const SeqRange sr = seq_range(p, n);
    const int64_t tc0 = sr.t0 + ci * kC; /* first token of the chunk */
    const int nc = (int)min((int64_t)kC, sr.t0 + sr.len - tc0);
    const int64_t hj = gc * p.HV + j;
    const TI *vb = (const TI *)p.v + sr.b * p.v_sb + tc0 * p.v_st + (int64_t)j * V;

    /* load q, k (mapped in place only under elu1; their L2 norms kept as row factors rq, rk) and the log
     * decays in base 2 (G below is log2 of the decay: exp2 is one instruction); padded rows are zero.
     * Thread tid takes channels c0 .. c0 + 7 of rows tid / VPR + RPP x. It first copies its pieces of q,
     * k, g as they are into their tiles (g, when bf16, into the second half of its fp32 row), every copy in
     * flight at once without holding registers, then reads them back: registers, not shared memory,
     * bounded the CTAs an SM when the loads went through them. */
    {
        constexpr int VPR = K / 8, RPP = kPrepThreads / VPR, NP = kC / RPP;
        constexpr bool kCh = DECAY == HAE_DECAY_CHANNEL;
        constexpr bool kB = sizeof(TI) == 2;
        const int c0 = 8 * (tid % VPR);
        const float eA = DECAY == HAE_DECAY_NONE ? 0.0f : expf(p.A_log[j]);
        const float ga = -eA * kLog2e, gb = p.lower_bound * kLog2e;
        float db[8];
#pragma unroll
        for (int e = 0; e < 8; e++) db[e] = kCh ? p.dt_bias[(int64_t)j * K + c0 + e] : 0.0f;
        auto graw = [&](int r, bool gbf) -> void * {
            return gbf ? (void *)(sm.gb + r * K * 4 + K * 2 + c0 * 2) : (void *)(sm.G() + Sm::gi(r, c0));
        };
        auto fetch = [&](auto vec_tag) {
            constexpr bool vec = decltype(vec_tag)::value;
#pragma unroll
            for (int x = 0; x < NP; x++) {
                const int r = tid / VPR + RPP * x;
                if (r >= nc) continue;
                const int64_t t_ = tc0 + r;
                raw8_copy(sm.q() + r * LK + c0, (const TI *)p.q + sr.b * p.q_sb + t_ * p.q_st + (int64_t)h * K + c0,
                          kB, vec);
                raw8_copy(sm.k + r * LK + c0, (const TI *)p.k + sr.b * p.k_sb + t_ * p.k_st + (int64_t)h * K + c0,
                          kB, vec);
                if (kCh) {
                    const int64_t ge = sr.b * p.g_sb + t_ * p.g_st + (int64_t)j * K + c0;
                    raw8_copy(graw(r, p.g_bf16), (const char *)p.g + ge * (p.g_bf16 ? 2 : 4), p.g_bf16, vec);
                }
            }
            if (vec) cp_async_wait_all(); /* each thread reads back only what it copied */
        };
        /* β of row tid, its load in flight beside the copies */
        float bt = 0.0f;
        if (DELTA && tid < nc) bt = ld_dt(p.beta, p.b_bf16, sr.b * p.b_sb + (tc0 + tid) * p.b_st + j);
        specialised(p.vec, fetch);
        if (tid < kC) sm.beta[tid] = DELTA && tid < nc ? sigmoidf_(bt) : 0.0f;
        /* g's element type fixed per loop (both decodings and a select an element, else) */
        auto rows = [&](auto gb_tag) {
            constexpr bool gbf = decltype(gb_tag)::value;
            for (int x = 0; x < NP; x++) {
                const int r = tid / VPR + RPP * x;
                const bool valid = r < nc;
                Raw8 rq, rk, rg;
                raw8_load(rq, sm.q() + r * LK + c0, kB, true);
                raw8_load(rk, sm.k + r * LK + c0, kB, true);
                if (kCh) raw8_load(rg, graw(r, gbf), gbf, true);
                __syncwarp(); /* the row's bf16 g is read before its fp32 form overwrites it */
                const int64_t t_ = tc0 + r;
                float qv[8], kv[8], gv[8], ssq = 0.0f, ssk = 0.0f;
                float gh = 0.0f; /* a decay shared by the row's channels */
                if (DECAY == HAE_DECAY_FIXED) gh = -eA;
                if (DECAY == HAE_DECAY_HEAD && valid)
                    gh = gate_fn_e(p, ld_dt(p.g, p.g_bf16, sr.b * p.g_sb + t_ * p.g_st + j) + p.dt_bias[j], eA);
                /* the feature map and the gate's form branch once a row, not once an element */
#pragma unroll
                for (int e = 0; e < 8; e++) {
                    qv[e] = raw8_get(rq, kB, e);
                    kv[e] = raw8_get(rk, kB, e);
                    gv[e] = kCh ? raw8_get(rg, gbf, e) + db[e] : gh;
                }
                if (p.elu1)
#pragma unroll
                    for (int e = 0; e < 8; e++) qv[e] = elu1(qv[e]), kv[e] = elu1(kv[e]);
                /* in base 2 */
                if (kCh && p.softplus)
#pragma unroll
                    for (int e = 0; e < 8; e++) gv[e] = kLog2e * gate_softplus(gv[e], eA);
                else if (kCh)
#pragma unroll
                    for (int e = 0; e < 8; e++) gv[e] = gate_safe_log2(gv[e], ga, gb);
                else
#pragma unroll
                    for (int e = 0; e < 8; e++) gv[e] *= kLog2e;
#pragma unroll
                for (int e = 0; e < 8; e++) { /* a padded row's sums are garbage, and unused */
                    gv[e] = valid ? gv[e] : 0.0f;
                    ssq += qv[e] * qv[e];
                    ssk += kv[e] * kv[e];
                }
#pragma unroll
                for (int o = VPR / 2; o > 0; o >>= 1) {
                    ssq += __shfl_xor_sync(0xffffffffu, ssq, o);
                    ssk += __shfl_xor_sync(0xffffffffu, ssk, o);
                }
                if (tid % VPR == 0) { /* padded rows 0: their garbage must not reach a product */
                    sm.rq[r] = !valid ? 0.0f : p.elu1 ? 1.0f : 1.0f / sqrtf(ssq + 1e-6f);
                    sm.rk[r] = !valid ? 0.0f : p.elu1 ? 1.0f : 1.0f / sqrtf(ssk + 1e-6f);
                }
#pragma unroll
                for (int e = 0; e < 8; e += 4) {
                    if (p.elu1 || !valid) { /* else the tiles keep the inputs as they are */
                        st4(sm.q() + r * LK + c0 + e, valid ? make_float4(qv[e], qv[e + 1], qv[e + 2], qv[e + 3])
                                                             : make_float4(0.0f, 0.0f, 0.0f, 0.0f));
                        st4(sm.k + r * LK + c0 + e, valid ? make_float4(kv[e], kv[e + 1], kv[e + 2], kv[e + 3])
                                                           : make_float4(0.0f, 0.0f, 0.0f, 0.0f));
                    }
                    st4(sm.G() + Sm::gi(r, c0 + e), make_float4(gv[e], gv[e + 1], gv[e + 2], gv[e + 3]));
                }
            }
        };
        if (kCh) specialised(p.g_bf16, rows);
        else rows(BoolTag<false>{});
    }
    __syncthreads();
    /* Γ: each channel's scan in two halves of the chunk (a thread each), then the second half adds the
     * first's total: half the serial chain */
    {
        static_assert(kPrepThreads == 2 * K || kPrepThreads == 4 * K, "two threads (or four) a channel");
        const int c = tid % K, h = tid / K, r0 = h * (kC / 2);
        float acc = 0.0f, *G = sm.G();
        if (h < 2)
            for (int i = r0; i < r0 + kC / 2; i++) {
                acc += G[Sm::gi(i, c)];
                G[Sm::gi(i, c)] = acc;
            }
        __syncthreads();
        if (h == 1) {
            const float base = G[Sm::gi(kC / 2 - 1, c)];
            for (int i = r0; i < r0 + kC / 2; i++) G[Sm::gi(i, c)] += base;
        }
    }
    __syncthreads();

    TI *qg = (TI *)ws.qg + hj * kC * K, *kd = (TI *)ws.kd + hj * kC * K, *P = (TI *)ws.P + hj * kC * kC;

    /* The ten 16 x 16 blocks on and below the diagonal as tensor-core products of scaled copies, one
     * block per warp at a time: e^{Γ_i - Γ_j} = e^{Γ_i - Γ_m} e^{Γ_m - Γ_j}. Below the diagonal m is
     * the block's first row, so both factors are ≤ 1 for any gate. On a diagonal block m is its middle
     * row and a factor may reach e^{8 |g|}: p.diag_mma holds only when that fits fp32 (safe gate with
     * lower_bound ≥ -10); otherwise those four blocks take one exponential per term. Decays uniform over
     * the channels (head, fixed, none) need no copies: the plain dot product times e^{Γ_i - Γ_j}. The
     * k index of the fragments is permuted, positions t and t + 4 of an 8-channel step taking channels
     * 2t and 2t + 1 (the same in A and B, so the sum is unchanged): each pair is one shared read. */
    constexpr bool kUniform = DECAY != HAE_DECAY_CHANNEL;
    const float *G = sm.G();
    const TI *qs = sm.q(), *ks = sm.k;
    constexpr int kWarps = kPrepThreads / 32;
    const int nblk = kUniform || p.diag_mma ? 10 : 6;
    for (int blk = warp; blk < nblk; blk += kWarps) {
        const bool diag = blk >= 6;
        const int I = diag ? blk - 6 : blk < 1 ? 1 : blk < 3 ? 2 : 3, J = diag ? I : blk - I * (I - 1) / 2;
        const int i0 = I * 16, jb = J * 16, m = diag ? i0 + 8 : i0;
        float accA[2][4] = {}, accP[2][4] = {};
#pragma unroll 2
        for (int k0 = 0; k0 < K; k0 += 8) {
            uint32_t kh[4], kl[4], qh[4], ql[4], bh[2][2], bl[2][2];
            const int c = k0 + 2 * t;
            float2 gm = make_float2(0.0f, 0.0f);
            if (!kUniform) gm = ld2(G + Sm::gi(m, c));
#pragma unroll
            for (int y = 0; y < 2; y++) { /* fragment rows g + 8 y: positions y and y + 2 */
                const int r = i0 + g + 8 * y;
                float2 f = make_float2(1.0f, 1.0f);
                if (!kUniform) {
                    const float2 gr = ld2(G + Sm::gi(r, c));
                    f = make_float2(hae_ex2(gr.x - gm.x), hae_ex2(gr.y - gm.y));
                }
                const float2 kk = ld2(ks + r * LK + c), qq = ld2(qs + r * LK + c);
                split_tf32<kX3>(kk.x * f.x, kh[y], kl[y]);
                split_tf32<kX3>(kk.y * f.y, kh[y + 2], kl[y + 2]);
                split_tf32<kX3>(qq.x * f.x, qh[y], ql[y]);
                split_tf32<kX3>(qq.y * f.y, qh[y + 2], ql[y + 2]);
            }
#pragma unroll
            for (int nt = 0; nt < 2; nt++) {
                const int r = jb + nt * 8 + g;
                float2 f = make_float2(1.0f, 1.0f);
                if (!kUniform) {
                    const float2 gr = ld2(G + Sm::gi(r, c));
                    f = make_float2(hae_ex2(gm.x - gr.x), hae_ex2(gm.y - gr.y));
                }
                const float2 kk = ld2(ks + r * LK + c);
                split_tf32<kX3>(kk.x * f.x, bh[nt][0], bl[nt][0]);
                split_tf32<kX3>(kk.y * f.y, bh[nt][1], bl[nt][1]);
            }
#pragma unroll
            for (int nt = 0; nt < 2; nt++) {
                if (DELTA) mma_tf32x<kX3>(accA[nt], kh, kl, bh[nt], bl[nt]);
                mma_tf32x<kX3>(accP[nt], qh, ql, bh[nt], bl[nt]);
            }
        }
        /* select, not multiply: above a diagonal block's diagonal the products may be inf */
        float pv[2][4];
#pragma unroll
        for (int nt = 0; nt < 2; nt++) {
#pragma unroll
            for (int x = 0; x < 4; x++) {
                const int il = g + (x >> 1) * 8, jl = nt * 8 + 2 * t + (x & 1), i = i0 + il, jr = jb + jl;
                const float e = (kUniform ? hae_ex2(G[Sm::gi(i, 0)] - G[Sm::gi(jr, 0)]) : 1.0f) * sm.rk[jr];
                const bool keepP = !diag || jl <= il;
                pv[nt][x] = keepP ? p.scale * sm.rq[i] * accP[nt][x] * e : 0.0f;
                const float a = sm.beta[i] * sm.rk[i] * accA[nt][x] * e;
                if (DELTA && !diag) sm.L[lblk(I, J) + il * 16 + jl] = a;
                if (DELTA && diag && jl < il) sm.L[ldiag(I, il, jl)] = a;
            }
        }
#pragma unroll
        for (int y = 0; y < 2; y++) {
            TI *row = P + (i0 + g + 8 * y) * kC + jb;
            if constexpr (sizeof(TI) == 2)
                *(uint2 *)(row + 4 * t) = quad_cols4(pv[0][2 * y], pv[0][2 * y + 1], pv[1][2 * y], pv[1][2 * y + 1]);
            else
#pragma unroll
                for (int nt = 0; nt < 2; nt++) st2(row + nt * 8 + 2 * t, pv[nt][2 * y], pv[nt][2 * y + 1]);
        }
    }
    /* What kernels 2 and 3 read besides: q e^Γ (times scale), k e^{Γ_L - Γ}, e^{Γ_L}, and for fp32's
     * chunk_out P's blocks above the diagonal (0; the diagonal blocks write their own upper parts). Written
     * by the warps that took one block fewer above (warps 2-7 of 10 blocks), while the others finish theirs:
     * ncu had them idle at the next barrier for a block's time. */
    {
        const int helpers = nblk % kWarps ? kWarps - nblk % kWarps : kWarps, h0 = 32 * (kWarps - helpers);
        if (tid >= h0) {
            const int ht = tid - h0, nh = 32 * helpers;
            for (int e = ht; e < kC * K / 8; e += nh) {
                const int i = e / (K / 8), c = 8 * (e % (K / 8));
                const float sq = p.scale * sm.rq[i], sk = sm.rk[i];
                float a[8], d[8];
#pragma unroll
                for (int x = 0; x < 8; x += 4) {
                    const float4 Gi = ld4(G + Sm::gi(i, c + x)), GL = ld4(G + Sm::gi(kC - 1, c + x));
                    const float4 q = ld4(qs + i * LK + c + x), k = ld4(ks + i * LK + c + x);
                    a[x] = sq * q.x * hae_ex2(Gi.x), a[x + 1] = sq * q.y * hae_ex2(Gi.y);
                    a[x + 2] = sq * q.z * hae_ex2(Gi.z), a[x + 3] = sq * q.w * hae_ex2(Gi.w);
                    d[x] = sk * k.x * hae_ex2(GL.x - Gi.x), d[x + 1] = sk * k.y * hae_ex2(GL.y - Gi.y);
                    d[x + 2] = sk * k.z * hae_ex2(GL.z - Gi.z), d[x + 3] = sk * k.w * hae_ex2(GL.w - Gi.w);
                }
                st8(qg + i * K + c, a);
                st8(kd + i * K + c, d);
            }
            for (int c = ht; c < K; c += nh) ws.gl[hj * K + c] = hae_ex2(G[Sm::gi(kC - 1, c)]);
            /* the six 16 x 16 blocks above the diagonal, 16 bytes a store (fp32's chunk_out reads whole
             * tiles; bf16's chunk_state reads none of them) */
            constexpr int E = 16 / sizeof(TI), CPR = 16 / E; /* elements a store, stores a block row */
            for (int e = ht; sizeof(TI) == 4 && e < kC * kNB * CPR; e += nh) {
                const int i = e / (kNB * CPR), J = e / CPR % kNB;
                if (J > i / 16) *(uint4 *)(P + i * kC + J * 16 + e % CPR * E) = make_uint4(0, 0, 0, 0);
            }
        }
    }
    if (nblk == 6) {
        /* diagonal blocks of an unbounded channel gate: one exponential per term */
        for (int e = tid; e < kNB * 256; e += kPrepThreads) {
            const int blk = e >> 8, il = (e >> 4) & 15, jl = e & 15;
            const int i = blk * 16 + il, jr = blk * 16 + jl;
            if (jl > il) {
                hae_st(P + i * kC + jr, 0.0f);
                continue;
            }
            float a = 0.0f, pp = 0.0f;
            for (int c = 0; c < K; c++) {
                const float kk = hae_ld(ks + jr * LK + c) * hae_ex2(G[Sm::gi(i, c)] - G[Sm::gi(jr, c)]);
                a += hae_ld(ks + i * LK + c) * kk;
                pp += hae_ld(qs + i * LK + c) * kk;
            }
            if (DELTA && jl < il) sm.L[ldiag(blk, il, jl)] = sm.beta[i] * sm.rk[i] * sm.rk[jr] * a;
            hae_st(P + i * kC + jr, p.scale * sm.rq[i] * sm.rk[jr] * pp);
        }
    }

    if (!DELTA) {
        TI *ug = (TI *)ws.u + hj * kC * V;
        for (int e = tid; e < kC * V; e += kPrepThreads) {
            const int i = e / V, c = e % V;
            hae_st(ug + e, i < nc ? hae_ld(vb + (int64_t)i * p.v_st + c) : 0.0f);
        }
        return;
    }
    /* v as eight-channel pieces (rows tid / 16 + 16 x, channels c0 ..), in flight during the solve */
    const int vc0 = 8 * (tid % 16);
    Raw8 rv[4];
    auto load_v = [&](auto vec_tag) {
#pragma unroll
        for (int x = 0; x < 4; x++)
            if (vc0 < V && tid / 16 + 16 * x < nc)
                raw8_load(rv[x], vb + (int64_t)(tid / 16 + 16 * x) * p.v_st + vc0, sizeof(TI) == 2,
                          decltype(vec_tag)::value);
    };
    specialised(p.vec, load_v);
    __syncthreads(); /* q, k, G, L complete; q is free */

    /* D_I into T's diagonal blocks (upper parts 0) on warps 0-1, K~ in place on the others meanwhile */
    for (int e = tid - 64; e >= 0 && e < kC * K / 4; e += kPrepThreads - 64) { /* 4 channels at once */
        const int i = e / (K / 4), c = 4 * (e % (K / 4));
        TI *kk = sm.k + i * LK + c;
        const float4 k4 = ld4(kk), g4 = ld4(sm.G() + Sm::gi(i, c));
        const float b = sm.rk[i];
        st4(kk, make_float4(k4.x * b * hae_ex2(g4.x), k4.y * b * hae_ex2(g4.y), k4.z * b * hae_ex2(g4.z),
                             k4.w * b * hae_ex2(g4.w)));
    }
    float *T = sm.T();
    if (tid < 64) {
        const int I = tid >> 4, c = tid & 15;
        float *Tc = T + I * 16 * LT + I * 16 + c;
#pragma unroll
        for (int r = 0; r < 16; r++) {
            float s = 0.0f;
#pragma unroll
            for (int m = 0; m < r; m++) s += sm.L[ldiag(I, r, m)] * Tc[m * LT];
            Tc[r * LT] = r == c ? 1.0f : (r < c ? 0.0f : -s);
        }
    }
    __syncthreads(); /* G is free */
#pragma unroll
    for (int x = 0; x < 4; x++) { /* V as it came (padded rows 0: 0 times a NaN is NaN) */
        const int i = tid / 16 + 16 * x;
        if (i >= nc) rv[x] = Raw8{};
        if (vc0 < V) raw8_store(sm.bv() + i * LV + vc0, rv[x], sizeof(TI) == 2);
    }
    __syncthreads(); /* V, K~ and D_I complete */

    /* Block row I of T, one warp per block J < I on the tensor cores (3xTF32: T stays fp32-accurate):
     * X = Σ_{J≤M<I} (β A')_IM T_MJ, staged in T_IJ, then T_IJ = -D_I X. Interleaved with it, w = T diag(β) K~
     * and u0 = T diag(β) V a row block at a time (warp per 32 columns, T's upper blocks skipped; β applied
     * to T's fragments, so that V stays exact in the tile and K~ is rounded once): row block I - 1 needs
     * T's rows up to I - 1 only, so the warps the inverse leaves idle compute it meanwhile. */
    const bool isw = warp < K / 32;
    const int n0 = (isw ? warp : warp - K / 32) * 32;
    const bool has_cols = isw || n0 < V;
    const TI *b = isw ? sm.k + n0 : sm.bv() + n0;
    const int ldb = isw ? LK : LV;
    TI *dst = isw ? (TI *)ws.w + hj * kC * K : (TI *)ws.u + hj * kC * V;
    const int ld = isw ? K : V;
    for (int I = 1; I <= kNB; I++) {
        if (I < kNB && warp < I) {
            const int J = warp;
            float *Tij = T + I * 16 * LT + J * 16;
            float x[2][4] = {};
            for (int M = J; M < I; M++)
                warp_mma<16, 2>(x, sm.L + lblk(I, M), 16, 1, T + M * 16 * LT + J * 16, LT, 1);
#pragma unroll
            for (int nt = 0; nt < 2; nt++)
#pragma unroll
                for (int y = 0; y < 2; y++)
                    st2(Tij + (g + 8 * y) * LT + nt * 8 + 2 * t, x[nt][2 * y], x[nt][2 * y + 1]);
            __syncwarp();
            float d[2][4] = {};
            warp_mma<16, 2>(d, T + I * 16 * LT + I * 16, LT, 1, Tij, LT, 1);
            __syncwarp();
#pragma unroll
            for (int nt = 0; nt < 2; nt++)
#pragma unroll
                for (int y = 0; y < 2; y++)
                    st2(Tij + (g + 8 * y) * LT + nt * 8 + 2 * t, -d[nt][2 * y], -d[nt][2 * y + 1]);
        }
        if (has_cols) {
            const int mt = I - 1;
            float acc[4][4] = {};
            for (int k0 = 0; k0 < (mt + 1) * 16; k0 += 8) {
                uint32_t bh[4][2], bl[4][2], ah[4], al[4];
#pragma unroll
                for (int nt = 0; nt < 4; nt++) {
                    split_tf32<kX3>(hae_ld(b + (k0 + t) * ldb + nt * 8 + g), bh[nt][0], bl[nt][0]);
                    split_tf32<kX3>(hae_ld(b + (k0 + t + 4) * ldb + nt * 8 + g), bh[nt][1], bl[nt][1]);
                }
                const float *a = T + mt * 16 * LT + k0, b0 = sm.beta[k0 + t], b1 = sm.beta[k0 + t + 4];
                split_tf32<kX3>(a[g * LT + t] * b0, ah[0], al[0]);
                split_tf32<kX3>(a[(g + 8) * LT + t] * b0, ah[1], al[1]);
                split_tf32<kX3>(a[g * LT + t + 4] * b1, ah[2], al[2]);
                split_tf32<kX3>(a[(g + 8) * LT + t + 4] * b1, ah[3], al[3]);
#pragma unroll
                for (int nt = 0; nt < 4; nt++) mma_tf32x<kX3>(acc[nt], ah, al, bh[nt], bl[nt]);
            }
#pragma unroll
            for (int y = 0; y < 2; y++) {
                TI *row = dst + (int64_t)(mt * 16 + g + y * 8) * ld + n0;
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    if constexpr (sizeof(TI) == 2)
                        *(uint2 *)(row + 16 * h + 4 * t) = quad_cols4(acc[2 * h][2 * y], acc[2 * h][2 * y + 1],
                                                                      acc[2 * h + 1][2 * y], acc[2 * h + 1][2 * y + 1]);
                    else
#pragma unroll
                        for (int nt = 2 * h; nt < 2 * h + 2; nt++)
                            st2(row + nt * 8 + 2 * t, acc[nt][2 * y], acc[nt][2 * y + 1]);
                }
            }
        }
        if (I < kNB) __syncthreads(); /* T's block row I complete */
    }
}

/* Row strides (elements) of the shared tiles: bf16 rows are padded to 16-byte multiples whose 8
 * ldmatrix rows fall in distinct banks; fp32 ones so that the 3xTF32 fragment walks are conflict-free
 * (A row-major: +4; A read transposed and B: +8). */
template <typename TW> struct Pad {
    static constexpr int A = sizeof(TW) == 2 ? 8 : 4, AT = 8, B = 8;
};

/* w, kd, U and gl (and with OUT qg and P) in NBUF buffers: chunks gc + 1 .. gc + NBUF - 1 are in flight during
 * chunk gc. Three with OUT (one CTA an SM anyway; S0 has three copies then, see chunk_state_kernel), two in
 * the separate-pass form (two CTAs an SM). */
template <typename TW, int K, bool OUT> struct StateSmem {
    static constexpr int VT = kStateVT, LW = K + Pad<TW>::A, LD = K + Pad<TW>::AT, LS = VT + Pad<TW>::B,
                         LP = kC + Pad<TW>::A, NBUF = OUT ? 3 : 2;
    TW w[NBUF][kC * LW], kd[NBUF][kC * LD], S[OUT ? 3 : 1][K * LS], U[NBUF][kC * LS];
    float gl[NBUF][K];
    TW qg[OUT ? NBUF : 1][OUT ? kC * LW : 8], P[OUT ? NBUF : 1][OUT ? kC * LP : 8];
};
static_assert(sizeof(StateSmem<hae_bf16_t, 128, true>) <= 232448, "the fused form's 227 KB a CTA");

/* 16-byte chunk copies of a rows x cols tile global -> shared and shared -> global. cols is a multiple of
 * 16 bytes whose chunk count divides nthreads, and the tile's chunk count a multiple of nthreads (every
 * tile here: rows and cols 32, 64 or 128 of 256 threads), so a thread keeps one column chunk and walks
 * the same number of rows as every other: one division a call, not one a chunk (ncu: chunk_state spent
 * a quarter of its issue slots on the per-chunk index arithmetic), in a loop the compiler unrolls. */
template <typename TW>
__device__ __forceinline__ void tile_async(TW *dst, int ld, const TW *src, int64_t lds, int rows, int cols,
                                           int tid, int nthreads) {
    constexpr int E = 16 / sizeof(TW);
    const int per = cols / E, step = nthreads / per, c = tid % per * E, r0 = tid / per;
#pragma unroll 8
    for (int i = 0; i < rows; i += step) cp_async16(dst + (i + r0) * ld + c, src + (int64_t)(i + r0) * lds + c);
}
template <typename TW>
__device__ __forceinline__ void tile_copy(TW *dst, int64_t ld, const TW *src, int lds, int rows, int cols, int tid,
                                          int nthreads) {
    constexpr int E = 16 / sizeof(TW);
    const int per = cols / E, step = nthreads / per, c = tid % per * E, r0 = tid / per;
#pragma unroll 8
    for (int i = 0; i < rows; i += step)
        *(uint4 *)(dst + (int64_t)(i + r0) * ld + c) = *(const uint4 *)(src + (i + r0) * lds + c);
}

/* With OUT the CTA has two more warp groups beside the 8 warps of the recurrence: 8 warps that form each
 * chunk's outputs and 4 that load the tiles, so that O (half the MMAs) and the copies are off the
 * recurrence's critical path (ncu: issuing the copies stalled the warps that issued them). The recurrence
 * signals "chunk c's S0 and U are in" on kBarU + c % 2 (its reads of chunk c - 1's buffer done); the
 * output warps wait there, as do the loaders, who then know chunk c - 1's O done too: they wait for chunk
 * c + 1's tiles, signal them on kBarReady + (c + 1) % 2 and refill chunk c - 1's buffer with chunk c + 2.
 * S0 has three copies: the recurrence writes chunk c's before it waits for kBarReady, which the loaders
 * may signal while chunk c - 2's O still reads its copy. Two ids each: a group a chunk ahead could
 * otherwise complete a barrier's generation by itself. */
enum { kBarState = 1, kBarU, kBarReady = kBarU + 2 }; /* named barriers; 0 is __syncthreads */
constexpr int kLoadThreads = 128;
template <bool OUT> constexpr int state_threads() { return OUT ? 2 * kStateThreads + kLoadThreads : kStateThreads; }

template <typename TW, int K, bool DELTA, bool OUT>
__global__ void __launch_bounds__(state_threads<OUT>()) chunk_state_kernel(const LinParams p, const ChunkWs ws) {
    hae_pdl_enter();
    using Sm = StateSmem<TW, K, OUT>;
    constexpr int VT = Sm::VT, LW = Sm::LW, LD = Sm::LD, LS = Sm::LS, LP = Sm::LP, NBUF = Sm::NBUF;
    /* 8 warps a group. S (K x VT): warp w takes 16-row tile w / WPS and NS of its VT / 8 column tiles;
     * U and O (C x VT): 16-row tile w / 2 and half of its columns. */
    constexpr int WPS = kStateThreads / 32 / (K / 16), NS = VT / 8 / WPS, NU = VT / 16;
    constexpr int kUN = state_threads<OUT>(), kReadyN = kStateThreads + kLoadThreads;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    Sm &sm = *reinterpret_cast<Sm *>(smem_raw);
    const int tid = threadIdx.x % kStateThreads, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const int vt = blockIdx.x, j = blockIdx.y, n = blockIdx.z, V = p.V, c0 = vt * VT;
    float *state = p.state + ((int64_t)n * p.HV + j) * K * V + c0;
    const int32_t cbeg = ws.coff[n], cend = ws.coff[n + 1];
    if (cbeg == cend) return;
    const SeqRange sr = seq_range(p, n);
    const int ru = warp / 2 * 16, cu = warp % 2 * NU * 8;

    /* chunk gcl's w, kd, u0 and gl (and q e^Γ, P with OUT) into its buffer by nt threads (lt = this one's
     * index), one commit group a chunk (empty past the end) */
    auto load_next = [&](int32_t gcl, int lt, int nt) {
        if (gcl < cend) {
            const int b = (gcl - cbeg) % NBUF;
            const int64_t hl = (int64_t)gcl * p.HV + j;
            if (DELTA) tile_async(sm.w[b], LW, (const TW *)ws.w + hl * kC * K, K, kC, K, lt, nt);
            tile_async(sm.kd[b], LD, (const TW *)ws.kd + hl * kC * K, K, kC, K, lt, nt);
            tile_async(sm.U[b], LS, (const TW *)ws.u + hl * kC * V + c0, V, kC, VT, lt, nt);
            for (int c = lt * 4; c < K; c += nt * 4) cp_async16(sm.gl[b] + c, ws.gl + hl * K + c);
            if (OUT) {
                tile_async(sm.qg[b], LW, (const TW *)ws.qg + hl * kC * K, K, kC, K, lt, nt);
                /* P's blocks on and below the diagonal, all that O reads: the kernel is bound by what it
                 * reads out of L2 (four CTAs a head read the same tiles) */
                constexpr int E = 16 / sizeof(TW), PR = kC / E;
                for (int e = lt; e < kC * PR; e += nt) {
                    const int i = e / PR, col = e % PR * E;
                    if (col < (i / 16 + 1) * 16)
                        cp_async16(sm.P[b] + i * LP + col, (const TW *)ws.P + (hl * kC + i) * kC + col);
                }
            }
        }
        cp_async_commit();
    };

    if (OUT && threadIdx.x >= 2 * kStateThreads) { /* the loaders */
        const int lt = threadIdx.x - 2 * kStateThreads;
        load_next(cbeg, lt, kLoadThreads);
        load_next(cbeg + 1, lt, kLoadThreads);
        cp_async_wait<1>();
        bar_arrive(kBarReady, kReadyN);
        for (int32_t gc = cbeg; gc < cend; gc++) {
            const int c = gc - cbeg;
            bar_sync(kBarU + c % 2, kUN);
            cp_async_wait<0>();
            if (gc + 1 < cend) bar_arrive(kBarReady + (c + 1) % 2, kReadyN);
            load_next(gc + 2, lt, kLoadThreads);
        }
        return;
    }
    if (OUT && threadIdx.x >= kStateThreads) { /* the outputs */
        for (int32_t gc = cbeg; gc < cend; gc++) {
            const int c = gc - cbeg, b = c % NBUF;
            bar_sync(kBarU + c % 2, kUN);
            /* O = (q e^Γ) S0 + P U on the U tile's rows and columns */
            const int64_t tc0 = sr.t0 + (int64_t)c * kC;
            const int nc = (int)min((int64_t)kC, sr.t0 + sr.len - tc0);
            float oacc[NU][4] = {};
            tile_mma<K, NU, false>(oacc, sm.qg[b] + ru * LW, LW, sm.S[c % 3] + cu, LS);
            tile_mma<kC, NU, false>(oacc, sm.P[b] + ru * LP, LP, sm.U[b] + cu, LS, ru + 16); /* P is causal */
            const int64_t ob = sr.b * p.o_sb + (int64_t)j * V + c0 + cu;
            if (p.o_quads) {
                static_assert(NU == 2, "16 columns a warp");
#pragma unroll
                for (int y = 0; y < 2; y++) {
                    const uint2 v = quad_cols4(oacc[0][2 * y], oacc[0][2 * y + 1], oacc[1][2 * y], oacc[1][2 * y + 1]);
                    const int i = ru + g + y * 8;
                    if (i < nc) *(uint2 *)((hae_bf16_t *)p.out + ob + (tc0 + i) * p.o_st + 4 * t) = v;
                }
            } else {
#pragma unroll
                for (int nt = 0; nt < NU; nt++)
#pragma unroll
                    for (int y = 0; y < 2; y++) {
                        const int i = ru + g + y * 8;
                        if (i < nc)
                            st_out2(p, ob + (tc0 + i) * p.o_st + nt * 8 + 2 * t, oacc[nt][2 * y], oacc[nt][2 * y + 1]);
                    }
            }
        }
        return;
    }
    auto sync = [] {
        if (OUT) bar_sync(kBarState, kStateThreads);
        else __syncthreads();
    };

    /* the state in accumulator fragments: rows rs + g (+ 8), columns cs + nt 8 + 2 t (+ 1) */
    const int rs = warp / WPS * 16, cs = warp % WPS * NS * 8;
    float acc[NS][4];
#pragma unroll
    for (int nt = 0; nt < NS; nt++)
#pragma unroll
        for (int y = 0; y < 2; y++) {
            const float2 v = *(const float2 *)(state + (int64_t)(rs + g + 8 * y) * V + cs + nt * 8 + 2 * t);
            acc[nt][2 * y] = v.x, acc[nt][2 * y + 1] = v.y;
        }
    if (!OUT)
        for (int x = 0; x < NBUF - 1; x++) load_next(cbeg + x, tid, kStateThreads);
    for (int32_t gc = cbeg; gc < cend; gc++) {
        const int64_t hj = (int64_t)gc * p.HV + j;
        const int c = gc - cbeg, b = c % NBUF;
        TW *U = sm.U[b], *S = sm.S[OUT ? c % 3 : 0];
#pragma unroll
        for (int nt = 0; nt < NS; nt++)
#pragma unroll
            for (int y = 0; y < 2; y++)
                st2(S + (rs + g + 8 * y) * LS + cs + nt * 8 + 2 * t, acc[nt][2 * y], acc[nt][2 * y + 1]);
        if (OUT) {
            bar_sync(kBarReady + c % 2, kReadyN); /* this chunk's tiles, and S0 from every warp */
        } else {
            load_next(gc + NBUF - 1, tid, kStateThreads); /* into the buffer the last step left (free since its
                                                           * final barrier) */
            cp_async_wait<NBUF - 1>(); /* this chunk's tiles */
            __syncthreads();
            /* the chunk's start state (as the workspace type), for chunk_out */
            tile_copy((TW *)ws.h + hj * K * V + c0, V, S, LS, K, VT, tid, kStateThreads);
        }
        if (DELTA) {
            /* U = u0 - w S0 on this warp's 16 rows and NU column tiles */
            float uacc[NU][4] = {};
            tile_mma<K, NU, false>(uacc, sm.w[b] + ru * LW, LW, S + cu, LS);
#pragma unroll
            for (int nt = 0; nt < NU; nt++)
#pragma unroll
                for (int y = 0; y < 2; y++) {
                    TW *u = U + (ru + g + 8 * y) * LS + cu + nt * 8 + 2 * t;
                    const float2 u0 = ld2(u);
                    st2(u, u0.x - uacc[nt][2 * y], u0.y - uacc[nt][2 * y + 1]);
                }
            sync();
            if (!OUT) tile_copy((TW *)ws.u + hj * kC * V + c0, V, U, LS, kC, VT, tid, kStateThreads);
        }
        if (OUT) bar_arrive(kBarU + c % 2, kUN); /* S0 and U of chunk gc are in */
        /* S = diag(e^{Γ_L}) S + kd^T U */
        {
            const float e0 = sm.gl[b][rs + g], e1 = sm.gl[b][rs + g + 8];
#pragma unroll
            for (int nt = 0; nt < NS; nt++) {
                acc[nt][0] *= e0, acc[nt][1] *= e0, acc[nt][2] *= e1, acc[nt][3] *= e1;
            }
            tile_mma<kC, NS, true>(acc, sm.kd[b] + rs, LD, U + cs, LS);
        }
        if (!OUT) sync();
    }
#pragma unroll
    for (int nt = 0; nt < NS; nt++)
#pragma unroll
        for (int y = 0; y < 2; y++)
            *(float2 *)(state + (int64_t)(rs + g + 8 * y) * V + cs + nt * 8 + 2 * t) =
                make_float2(acc[nt][2 * y], acc[nt][2 * y + 1]);
}

/* chunk_out (fp32 inputs; bf16's outputs come from chunk_state) takes 64 value columns a CTA (shared
 * memory). */
constexpr int kOutVT = 64;
__host__ __device__ inline int out_cols(int V, int vt) { return V < vt ? V : vt; }

template <typename TW, int K> struct OutSmem {
    static constexpr int LQ = K + Pad<TW>::A, LP = kC + Pad<TW>::A, LH = kOutVT + Pad<TW>::B;
    TW q[kC * LQ], h[K * LH], P[kC * LP], U[kC * LH];
};

template <typename TW, int K>
__global__ void __launch_bounds__(kOutThreads) chunk_out_kernel(const LinParams p, const ChunkWs ws) {
    using Sm = OutSmem<TW, K>;
    constexpr int LQ = Sm::LQ, LP = Sm::LP, LH = Sm::LH;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    Sm &sm = *reinterpret_cast<Sm *>(smem_raw);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const int64_t gc = blockIdx.x;
    const int j = blockIdx.y, V = p.V, W = out_cols(V, kOutVT), c0 = blockIdx.z * W;
    int64_t ci;
    const int n = chunk_seq(p, ws.coff, gc, ci);
    if (n < 0) return;
    const SeqRange sr = seq_range(p, n);
    const int64_t tc0 = sr.t0 + ci * kC;
    const int nc = (int)min((int64_t)kC, sr.t0 + sr.len - tc0);
    const int64_t hj = gc * p.HV + j;

    tile_async(sm.q, LQ, (const TW *)ws.qg + hj * kC * K, K, kC, K, tid, kOutThreads);
    tile_async(sm.h, LH, (const TW *)ws.h + hj * K * V + c0, V, K, W, tid, kOutThreads);
    tile_async(sm.P, LP, (const TW *)ws.P + hj * kC * kC, kC, kC, kC, tid, kOutThreads);
    tile_async(sm.U, LH, (const TW *)ws.u + hj * kC * V + c0, V, kC, W, tid, kOutThreads);
    cp_async_wait_all();
    __syncthreads();
    /* warp: 16 rows, 32 columns of each 64-column half */
    const int mt = warp >> 1;
    for (int nb = (warp & 1) * 32; nb < W; nb += 64) {
        float acc[4][4] = {};
        tile_mma<K, 4, false>(acc, sm.q + mt * 16 * LQ, LQ, sm.h + nb, LH);
        tile_mma<kC, 4, false>(acc, sm.P + mt * 16 * LP, LP, sm.U + nb, LH, (mt + 1) * 16); /* P is causal */
#pragma unroll
        for (int nt = 0; nt < 4; nt++)
#pragma unroll
            for (int y = 0; y < 2; y++) {
                const int i = mt * 16 + g + y * 8, c = c0 + nb + nt * 8 + 2 * t;
                if (i < nc)
                    st_out2(p, sr.b * p.o_sb + (tc0 + i) * p.o_st + (int64_t)j * V + c, acc[nt][2 * y], acc[nt][2 * y + 1]);
            }
    }
}

/* ---------------------------------------------------------------- launching */

hae_status lin_unsupported(const hae_linear_attn_args *a, const char *why) {
    return hae_error(HAE_ERR_UNSUPPORTED,
                     "hae_linear_attn (cuda): q [%lld, %lld, %lld, %lld], v [.., %lld, %lld], chunk %d: %s",
                     (long long)a->q.shape[0], (long long)a->q.shape[1], (long long)a->q.shape[2],
                     (long long)a->q.shape[3], (long long)a->v.shape[2], (long long)a->v.shape[3], a->chunk, why);
}

LinParams make_params(const hae_linear_attn_args *a, int64_t N) {
    LinParams p;
    p.q = a->q.data, p.k = a->k.data, p.v = a->v.data;
    p.q_sb = a->q.stride[0], p.q_st = a->q.stride[1];
    p.k_sb = a->k.stride[0], p.k_st = a->k.stride[1];
    p.v_sb = a->v.stride[0], p.v_st = a->v.stride[1];
    const bool gated = a->decay == HAE_DECAY_CHANNEL || a->decay == HAE_DECAY_HEAD;
    p.g = gated ? a->g.data : nullptr;
    p.g_sb = gated ? a->g.stride[0] : 0, p.g_st = gated ? a->g.stride[1] : 0;
    p.g_bf16 = gated && a->g.dtype == HAE_BF16;
    p.beta = a->delta ? a->beta.data : nullptr;
    p.b_sb = a->delta ? a->beta.stride[0] : 0, p.b_st = a->delta ? a->beta.stride[1] : 0;
    p.b_bf16 = a->delta && a->beta.dtype == HAE_BF16;
    p.A_log = a->decay != HAE_DECAY_NONE ? (const float *)a->A_log.data : nullptr;
    p.dt_bias = gated ? (const float *)a->dt_bias.data : nullptr;
    p.state = (float *)a->state.data;
    p.out = a->out.data;
    p.o_sb = a->out.stride[0], p.o_st = a->out.stride[1];
    p.o_bf16 = a->out.dtype == HAE_BF16;
    p.o_pairs = (uintptr_t)p.out % (p.o_bf16 ? 4 : 8) == 0 && p.o_sb % 2 == 0 && p.o_st % 2 == 0 && a->v.shape[3] % 2 == 0;
    p.o_quads = p.o_bf16 && (uintptr_t)p.out % 8 == 0 && p.o_sb % 4 == 0 && p.o_st % 4 == 0 && a->v.shape[3] % 4 == 0;
    p.cu = (const int32_t *)a->cu_seqlens.data;
    p.T = a->q.shape[1];
    p.N = (int)N, p.H = (int)a->q.shape[2], p.HV = (int)a->v.shape[2], p.V = (int)a->v.shape[3];
    p.softplus = a->gate == HAE_GATE_SOFTPLUS;
    p.elu1 = a->qk_map == HAE_QK_ELU1;
    p.lower_bound = a->lower_bound, p.scale = a->scale;
    p.diag_mma = a->gate == HAE_GATE_SAFE && a->lower_bound >= -10.0f;
    auto rows16 = [](const hae_tensor &t) {
        const int64_t es = (int64_t)hae_dtype_size(t.dtype);
        return (uintptr_t)t.data % 16 == 0 && t.stride[0] * es % 16 == 0 && t.stride[1] * es % 16 == 0;
    };
    p.vec = rows16(a->q) && rows16(a->k) && rows16(a->v) && (a->decay != HAE_DECAY_CHANNEL || rows16(a->g));
    return p;
}

template <typename F> hae_status with_decay_delta(hae_decay d, bool delta, F &&f) {
    auto by_delta = [&](auto dt) -> hae_status {
        return delta ? f(dt, BoolTag<true>{}) : f(dt, BoolTag<false>{});
    };
    switch (d) {
    case HAE_DECAY_NONE: return by_delta(IntTag<HAE_DECAY_NONE>{});
    case HAE_DECAY_FIXED: return by_delta(IntTag<HAE_DECAY_FIXED>{});
    case HAE_DECAY_HEAD: return by_delta(IntTag<HAE_DECAY_HEAD>{});
    default: return by_delta(IntTag<HAE_DECAY_CHANNEL>{});
    }
}
template <typename F> hae_status with_k(int64_t K, F &&f) {
    return K == 64 ? f(IntTag<64>{}) : f(IntTag<128>{});
}

template <typename F> hae_status set_smem(F *kernel, size_t bytes) {
    HAE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
    return HAE_OK;
}

hae_status launch_recurrent(const hae_linear_attn_args *a, const LinParams &p, cudaStream_t s) {
    const dim3 grid((unsigned)(p.V / kRecVT), (unsigned)p.HV, (unsigned)p.N);
    return hae_cuda_dispatch(a->q.dtype, "hae_linear_attn", [&](auto ti) -> hae_status {
        using TI = decltype(ti);
        return with_k(a->q.shape[3], [&](auto kt) -> hae_status {
            constexpr int K = decltype(kt)::value;
            return with_decay_delta(a->decay, a->delta, [&](auto dt, auto del) -> hae_status {
                HAE_CUDA_CHECK(hae_launch_pdl(recurrent_kernel<TI, K, decltype(dt)::value, decltype(del)::value>, grid,
                                              dim3(kRecThreads), 0, s, p));
                HAE_CUDA_LAUNCH_CHECK("recurrent_kernel");
                return HAE_OK;
            });
        });
    });
}

hae_status launch_chunked(const hae_linear_attn_args *a, const LinParams &p, cudaStream_t s) {
    const int64_t B = a->q.shape[0], T = a->q.shape[1], HV = p.HV, K = a->q.shape[3], V = p.V;
    const ChunkWs ws = hae_chunk_ws_layout(a->workspace, B, T, p.N, HV, K, V, hae_dtype_size(a->q.dtype), nullptr);
    chunk_offsets_kernel<<<1, 32, 0, s>>>(p, ws.coff);
    HAE_CUDA_LAUNCH_CHECK("chunk_offsets_kernel");
    return hae_cuda_dispatch(a->q.dtype, "hae_linear_attn", [&](auto ti) -> hae_status {
        using TI = decltype(ti);
        return with_k(K, [&](auto kt) -> hae_status {
            constexpr int KK = decltype(kt)::value;
            return with_decay_delta(a->decay, a->delta, [&](auto dt, auto del) -> hae_status {
                constexpr int DECAY = decltype(dt)::value;
                constexpr bool DELTA = decltype(del)::value;
                auto *prep = chunk_prep_kernel<TI, KK, DECAY, DELTA>;
                HAE_TRY(set_smem(prep, sizeof(PrepSmem<TI, KK>)));
                prep<<<dim3((unsigned)ws.G, (unsigned)HV), kPrepThreads, sizeof(PrepSmem<TI, KK>), s>>>(p, ws);
                HAE_CUDA_LAUNCH_CHECK("chunk_prep_kernel");
                const dim3 sgrid((unsigned)(V / kStateVT), (unsigned)HV, (unsigned)p.N);
                if constexpr (sizeof(TI) == 2) {
                    /* bf16: chunk_state forms the outputs too (measured against the separate pass on an H200:
                     * 96 us faster at B 8 T 4096, the same within 0.3% at B 64 T 512), launched
                     * programmatically: its CTAs wait at the top for chunk_prep's results, placed meanwhile on
                     * the SMs chunk_prep's last wave leaves (4 us at B 1 T 8192) */
                    auto *state = chunk_state_kernel<TI, KK, DELTA, true>;
                    HAE_TRY(set_smem(state, sizeof(StateSmem<TI, KK, true>)));
                    HAE_CUDA_CHECK(hae_launch_pdl(state, sgrid, dim3(state_threads<true>()),
                                                  sizeof(StateSmem<TI, KK, true>), s, p, ws));
                    HAE_CUDA_LAUNCH_CHECK("chunk_state_kernel");
                } else {
                    /* fp32's tiles leave no room for q e^Γ and P: each chunk's start state to the workspace, the
                     * outputs by chunk_out, parallel over chunks (plain launches: as programmatic ones they made
                     * B 8 T 4096 43 us slower in bf16's separate pass) */
                    auto *state = chunk_state_kernel<TI, KK, DELTA, false>;
                    auto *outk = chunk_out_kernel<TI, KK>;
                    HAE_TRY(set_smem(state, sizeof(StateSmem<TI, KK, false>)));
                    HAE_TRY(set_smem(outk, sizeof(OutSmem<TI, KK>)));
                    state<<<sgrid, kStateThreads, sizeof(StateSmem<TI, KK, false>), s>>>(p, ws);
                    HAE_CUDA_LAUNCH_CHECK("chunk_state_kernel");
                    outk<<<dim3((unsigned)ws.G, (unsigned)HV, (unsigned)(V / out_cols((int)V, kOutVT))),
                           kOutThreads, sizeof(OutSmem<TI, KK>), s>>>(p, ws);
                    HAE_CUDA_LAUNCH_CHECK("chunk_out_kernel");
                }
                return HAE_OK;
            });
        });
    });
}

/* ---------------------------------------------------------------- short convolution
 * out[b, t, c] = act(Σ_{w<W} weight[c, w] x'[t + w]), x' = concat(state, x). One thread per
 * (b, segment of kConvSeg tokens, c) with the window's W - 1 previous inputs in registers (c fastest:
 * coalesced). Only segment 0's thread touches the state: it reads the old one for its window and
 * writes the new one, the last W - 1 inputs of x' (old state entries too when T < W - 1). */
constexpr int kConvMaxW = 16;
constexpr int kConvSeg = 64;

template <typename TX, typename TO>
__global__ void conv_short_kernel(const TX *x, int64_t x_sb, int64_t x_st, const float *weight, float *state,
                                  TO *out, int64_t o_sb, int64_t o_st, int64_t B, int64_t T, int64_t C, int W,
                                  bool silu) {
    hae_pdl_enter();
    const int64_t nseg = (T + kConvSeg - 1) / kConvSeg;
    const int64_t total = B * nseg * C;
    for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (int64_t)gridDim.x * blockDim.x) {
        const int64_t c = idx % C, seg = (idx / C) % nseg, b = idx / (C * nseg);
        const int64_t tb = seg * kConvSeg, te = min(T, tb + kConvSeg);
        const TX *xb = x + b * x_sb + c;
        float *st = state + b * (int64_t)(W - 1) * C + c;
        const float wlast = weight[c * W + W - 1];
        float wt[kConvMaxW], win[kConvMaxW];
#pragma unroll
        for (int w = 0; w < kConvMaxW; w++) {
            wt[w] = w < W ? weight[c * W + w] : 0.0f;
            win[w] = 0.0f;
            if (w < W - 1) {
                const int64_t tau = tb - (W - 1) + w; /* time of window slot w */
                win[w] = tau >= 0 ? hae_ld(xb + tau * x_st) : st[(tau + W - 1) * C];
            }
        }
        if (seg == 0) {
            /* new state: x' at times T - (W - 1) .. T - 1 */
#pragma unroll
            for (int w = 0; w < kConvMaxW - 1; w++) {
                if (w >= W - 1) continue;
                /* slot tau + W - 1 > w of the old state is read before it is overwritten */
                const int64_t tau = T - (W - 1) + w;
                const float v = tau >= 0 ? hae_ld(xb + tau * x_st) : st[(tau + W - 1) * C];
                st[(int64_t)w * C] = v;
            }
        }
        for (int64_t t = tb; t < te; t++) {
            const float xt = hae_ld(xb + t * x_st);
            float acc = wlast * xt;
#pragma unroll
            for (int w = 0; w < kConvMaxW - 1; w++)
                if (w < W - 1) acc += wt[w] * win[w];
#pragma unroll
            for (int w = 0; w < kConvMaxW - 2; w++)
                if (w < W - 2) win[w] = win[w + 1];
#pragma unroll
            for (int w = 0; w < kConvMaxW - 1; w++)
                if (w == W - 2) win[w] = xt;
            if (silu) acc = acc / (1.0f + expf(-acc));
            hae_st(out + b * o_sb + t * o_st + c, acc);
        }
    }
}

/* ---------------------------------------------------------------- gated rmsnorm
 * out = x / sqrt(mean(x^2) + eps) * weight * sigmoid(gate), per (n, h) row of D; one warp per row. */
constexpr int kNormThreads = 256;

template <typename TX, typename TG, typename TO>
__global__ void __launch_bounds__(kNormThreads)
    gated_rmsnorm_kernel(const TX *x, int64_t x_s0, int64_t x_s1, const TG *gate, int64_t g_s0, int64_t g_s1,
                         const float *weight, TO *out, int64_t o_s0, int64_t o_s1, int64_t rows, int64_t H, int64_t D,
                         float eps) {
    hae_pdl_enter();
    const int lane = threadIdx.x & 31;
    for (int64_t r = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; r < rows;
         r += ((int64_t)gridDim.x * blockDim.x) >> 5) {
        const int64_t n = r / H, h = r % H;
        const TX *xr = x + n * x_s0 + h * x_s1;
        const TG *gr = gate + n * g_s0 + h * g_s1;
        TO *orow = out + n * o_s0 + h * o_s1;
        float ss = 0.0f;
#pragma unroll 4 /* the row's loads in flight together */
        for (int64_t d = lane; d < D; d += 32) {
            const float v = hae_ld(xr + d);
            ss += v * v;
        }
        ss = hae_warp_sum(ss);
        const float rs = 1.0f / sqrtf(ss / (float)D + eps);
#pragma unroll 4
        for (int64_t d = lane; d < D; d += 32) {
            const float gv = hae_ld(gr + d);
            hae_st(orow + d, hae_ld(xr + d) * rs * weight[d] * (1.0f / (1.0f + expf(-gv))));
        }
    }
}

} // namespace

extern "C" const char *hae_linear_attn_cuda_unsupported(int64_t K, int64_t V, int chunk) {
    if ((K != 64 && K != 128) || (V != 64 && V != 128)) return "K and V must be 64 or 128";
    if (chunk != 0 && chunk != kC) return "the chunked form supports chunk 64 only";
    return nullptr;
}

extern "C" hae_status hae_linear_attn_cuda(hae_backend *be, const hae_linear_attn_args *a) {
    const int64_t K = a->q.shape[3], V = a->v.shape[3], HV = a->v.shape[2];
    const int64_t N = a->state.shape[0];
    const char *why = hae_linear_attn_cuda_unsupported(K, V, a->chunk);
    if (why) return lin_unsupported(a, why);
    if (N > 65535 || HV > 65535) return lin_unsupported(a, "more than 65535 sequences or value heads");
    if ((uintptr_t)a->state.data % 16) return lin_unsupported(a, "the state must be 16-byte aligned");
    if (a->chunk != 0) {
        const int64_t G = hae_chunk_ws_layout(nullptr, a->q.shape[0], a->q.shape[1], N, HV, K, V, 2, nullptr).G;
        if (G > INT32_MAX) return lin_unsupported(a, "more than 2^31 chunks");
        if ((uintptr_t)a->workspace % 16) return lin_unsupported(a, "the workspace must be 16-byte aligned");
    }
    const LinParams p = make_params(a, N);
    cudaStream_t s = nullptr;
    HAE_TRY(hae_cuda_enter(be, &s));
    return a->chunk == 0 ? launch_recurrent(a, p, s) : launch_chunked(a, p, s);
}

extern "C" hae_status hae_conv_short_cuda(hae_backend *be, const hae_conv_short_args *a) {
    const int64_t B = a->x.shape[0], T = a->x.shape[1], C = a->x.shape[2];
    const int W = (int)a->weight.shape[1];
    if (W > kConvMaxW)
        return hae_error(HAE_ERR_UNSUPPORTED, "hae_conv_short (cuda): width %d > %d", W, kConvMaxW);
    cudaStream_t s = nullptr;
    HAE_TRY(hae_cuda_enter(be, &s));
    const int threads = 256;
    const unsigned blocks = hae_cuda_blocks(B * ((T + kConvSeg - 1) / kConvSeg) * C, threads);
    return hae_cuda_dispatch(a->x.dtype, "hae_conv_short", [&](auto tx) -> hae_status {
        using TX = decltype(tx);
        return hae_cuda_dispatch(a->out.dtype, "hae_conv_short", [&](auto to) -> hae_status {
            using TO = decltype(to);
            HAE_CUDA_CHECK(hae_launch_pdl(conv_short_kernel<TX, TO>, dim3(blocks), dim3(threads), 0, s,
                (const TX *)a->x.data, a->x.stride[0], a->x.stride[1], (const float *)a->weight.data,
                (float *)a->state.data, (TO *)a->out.data, a->out.stride[0], a->out.stride[1], B, T, C, W, a->silu));
            HAE_CUDA_LAUNCH_CHECK("conv_short_kernel");
            return HAE_OK;
        });
    });
}

extern "C" hae_status hae_gated_rmsnorm_cuda(hae_backend *be, const hae_gated_rmsnorm_args *a) {
    const int64_t N = a->x.shape[0], H = a->x.shape[1], D = a->x.shape[2];
    cudaStream_t s = nullptr;
    HAE_TRY(hae_cuda_enter(be, &s));
    const unsigned blocks = hae_cuda_blocks(N * H, kNormThreads / 32);
    return hae_cuda_dispatch(a->x.dtype, "hae_gated_rmsnorm", [&](auto tx) -> hae_status {
        using TX = decltype(tx);
        return hae_cuda_dispatch(a->gate.dtype, "hae_gated_rmsnorm", [&](auto tg) -> hae_status {
            using TG = decltype(tg);
            return hae_cuda_dispatch(a->out.dtype, "hae_gated_rmsnorm", [&](auto to) -> hae_status {
                using TO = decltype(to);
                HAE_CUDA_CHECK(hae_launch_pdl(gated_rmsnorm_kernel<TX, TG, TO>, dim3(blocks), dim3(kNormThreads), 0, s,
                    (const TX *)a->x.data, a->x.stride[0], a->x.stride[1], (const TG *)a->gate.data,
                    a->gate.stride[0], a->gate.stride[1], (const float *)a->weight.data, (TO *)a->out.data,
                    a->out.stride[0], a->out.stride[1], N * H, H, D, a->eps));
                HAE_CUDA_LAUNCH_CHECK("gated_rmsnorm_kernel");
                return HAE_OK;
            });
        });
    });
}

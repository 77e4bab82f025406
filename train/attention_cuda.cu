/* The training attention and the DSA indexer's ops on CUDA (contracts in train_ops.h, the CPU reference in
 * train/ops.c). Each output element is summed by one thread in a fixed order and the block reductions combine
 * their warps in a fixed order, so results are bit-identical run to run; no floating-point atomics. Where the
 * CPU rounds in fp32 the kernels do, where it sums in double they do; sums run in the CPU's order except the
 * dot products and block reductions (a different but fixed tree). */
#include "cuda_check.cuh"
#include "train_ops_cuda.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>

namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kCols = 2;               /* attention: thread d owns columns d and d + kThreads (mla heads of 192) */
constexpr int kMaxDh = kCols * kThreads;
constexpr int kTile = 32;             /* the backwards' rows of dS computed per step */
constexpr size_t kMaxShared = 48 << 10; /* dynamic shared memory without opting in */
constexpr int64_t kMaxSelectT = 1 << 16; /* the select key's index bits */

struct Sum {
    template <typename T> __device__ T operator()(T a, T b) const { return a + b; }
};
struct Max {
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

template <typename T, typename F> __device__ __forceinline__ T warp_reduce(T v, F op) {
    for (int off = 16; off > 0; off >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}

/* Over the block of kThreads; every thread gets the same result (warps combined in order). */
template <typename T, typename F> __device__ T block_reduce(T v, F op) {
    __shared__ T part[kWarps];
    v = warp_reduce(v, op);
    __syncthreads(); /* part may still be read by the previous call */
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    v = part[0];
    for (int w = 1; w < kWarps; w++) v = op(v, part[w]);
    return v;
}

/* a . b over n, by the whole warp; every lane gets the same value. */
__device__ __forceinline__ float warp_dot(const float *a, const float *b, int64_t n) {
    float acc = 0.0f;
    for (int64_t d = threadIdx.x & 31; d < n; d += 32) acc += a[d] * b[d];
    return warp_reduce(acc, Sum());
}

/* ================================================================ attention */

/* Fused rows [q heads | k heads | v heads]: q and k heads of Dh, v heads of Dv (mla's value heads; Dh otherwise). */
__device__ __forceinline__ int64_t v_dim(const hae_tr_attn_shape &s) { return s.Dv > 0 ? s.Dv : s.Dh; }
__device__ __forceinline__ int64_t ld_qkv(const hae_tr_attn_shape &s) { return (s.Hq + s.Hkv) * s.Dh + s.Hkv * v_dim(s); }
__device__ __forceinline__ int64_t v_col(const hae_tr_attn_shape &s, int64_t g) {
    return (s.Hq + s.Hkv) * s.Dh + g * v_dim(s);
}
__device__ __forceinline__ int64_t first_key(const hae_tr_attn_shape &s, int64_t t) {
    return s.window > 0 && t - s.window + 1 > 0 ? t - s.window + 1 : 0;
}
__device__ __forceinline__ int64_t last_query(const hae_tr_attn_shape &s, int64_t j) {
    return s.window > 0 && j + s.window - 1 < s.T - 1 ? j + s.window - 1 : s.T - 1;
}

/* Row (b, h, t) of P and out, as the CPU: P_s = softmax_s(scale q_t . k_s) over the allowed s in [lo, t] with
 * fp32 scores and exponentials and their sum in double, 0 elsewhere; out_t = sum_s P_s v_s, thread d in key
 * order. The row of P holds the scores and exponentials between the passes. */
__global__ void __launch_bounds__(kThreads)
    attn_fwd_kernel(const hae_tr_attn_shape s, const float *qkv, float *P, float *out) {
    __shared__ float sq[kMaxDh];
    const int warp = threadIdx.x >> 5, tid = threadIdx.x;
    const int64_t row = blockIdx.x, t = row % s.T, h = row / s.T % s.Hq, b = row / (s.T * s.Hq);
    const int64_t ld = ld_qkv(s), Dh = s.Dh, Dv = v_dim(s), g = h / (s.Hq / s.Hkv), lo = first_key(s, t);
    const float *base = qkv + b * s.T * ld, *kcol = base + (s.Hq + g) * Dh, *vcol = base + v_col(s, g);
    const uint8_t *allow = s.allow ? s.allow + (b * s.T + t) * s.T : nullptr;
    float *p = P + row * s.T;
    for (int64_t d = tid; d < Dh; d += kThreads) sq[d] = base[t * ld + h * Dh + d];
    __syncthreads();

    float mx = -INFINITY;
    for (int64_t j = lo + warp; j <= t; j += kWarps) {
        if (allow && !allow[j]) continue;
        const float sc = s.scale * warp_dot(sq, kcol + j * ld, Dh);
        if ((tid & 31) == 0) p[j] = sc;
        mx = fmaxf(mx, sc);
    }
    mx = block_reduce(mx, Max());
    double sum = 0.0;
    for (int64_t j = lo + tid; j <= t; j += kThreads) {
        if (allow && !allow[j]) continue;
        p[j] = expf(p[j] - mx);
        sum += p[j];
    }
    const float inv = (float)(1.0 / block_reduce(sum, Sum()));
    for (int64_t j = tid; j < s.T; j += kThreads) p[j] = j >= lo && j <= t && (!allow || allow[j]) ? p[j] * inv : 0.0f;
    __syncthreads();

    for (int64_t d = tid; d < Dv; d += kThreads) {
        float acc = 0.0f;
        for (int64_t j = lo; j <= t; j++)
            if (p[j] != 0.0f) acc += p[j] * vcol[j * ld + d];
        out[(b * s.T + t) * s.Hq * Dv + h * Dv + d] = acc;
    }
}

/* dS_ts / scale = P_ts (dout_t . v_s - D_t), as the CPU rounds it; 0 where P_ts = 0 (no dot then). By the warp. */
__device__ __forceinline__ float attn_ds(float p, const float *dout, const float *v, float D, int64_t Dv, float scale) {
    return p != 0.0f ? p * (warp_dot(dout, v, Dv) - D) * scale : 0.0f;
}

/* Row (b, h, t): D_t = dout_t . out_t (kept in Drow for the key pass), dq_t = scale sum_s dS_ts k_s. The keys
 * go kTile at a time: the warps compute the tile's dS, then thread d adds its column in key order. */
__global__ void __launch_bounds__(kThreads) attn_dq_kernel(const hae_tr_attn_shape s, const float *qkv, const float *P,
                                                           const float *out, const float *dout, float *dqkv,
                                                           float *Drow /* [B, Hq, T] */) {
    __shared__ float sdo[kMaxDh], sds[kTile];
    const int warp = threadIdx.x >> 5, tid = threadIdx.x;
    const int64_t row = blockIdx.x, t = row % s.T, h = row / s.T % s.Hq, b = row / (s.T * s.Hq);
    const int64_t ld = ld_qkv(s), Dh = s.Dh, Dv = v_dim(s), g = h / (s.Hq / s.Hkv), lo = first_key(s, t);
    const float *base = qkv + b * s.T * ld, *kcol = base + (s.Hq + g) * Dh, *vcol = base + v_col(s, g);
    const float *p = P + row * s.T;
    const int64_t orow = (b * s.T + t) * s.Hq * Dv + h * Dv;
    float part = 0.0f;
    for (int64_t d = tid; d < Dv; d += kThreads) {
        sdo[d] = dout[orow + d];
        part += sdo[d] * out[orow + d];
    }
    const float D = block_reduce(part, Sum());
    if (tid == 0) Drow[row] = D;

    float acc[kCols] = {};
    for (int64_t s0 = lo; s0 <= t; s0 += kTile) {
        const int n = (int)(t - s0 + 1 < kTile ? t - s0 + 1 : kTile);
        for (int i = warp; i < n; i += kWarps) {
            const float ds = attn_ds(p[s0 + i], sdo, vcol + (s0 + i) * ld, D, Dv, s.scale);
            if ((tid & 31) == 0) sds[i] = ds;
        }
        __syncthreads();
        for (int c = 0; c < kCols; c++) {
            const int64_t d = tid + c * kThreads;
            if (d < Dh)
                for (int i = 0; i < n; i++)
                    if (sds[i] != 0.0f) acc[c] += sds[i] * kcol[(s0 + i) * ld + d];
        }
        __syncthreads();
    }
    for (int c = 0; c < kCols; c++)
        if (tid + c * kThreads < Dh) dqkv[(b * s.T + t) * ld + h * Dh + tid + c * kThreads] = acc[c];
}

/* Key j of kv head g in sequence b: over the query heads h of g, then the queries t in [j, last_query(j)] (where
 * P_tj can be nonzero), dk_j = scale sum dS_tj q_t and dv_j = sum P_tj dout_t, thread d in that order. */
__global__ void __launch_bounds__(kThreads) attn_dkv_kernel(const hae_tr_attn_shape s, const float *qkv,
                                                            const float *P, const float *dout, const float *Drow,
                                                            float *dqkv) {
    __shared__ float sv[kMaxDh], sds[kTile], sp[kTile];
    const int warp = threadIdx.x >> 5, tid = threadIdx.x;
    const int64_t row = blockIdx.x, j = row % s.T, g = row / s.T % s.Hkv, b = row / (s.T * s.Hkv);
    const int64_t ld = ld_qkv(s), Dh = s.Dh, Dv = v_dim(s), G = s.Hq / s.Hkv, hi = last_query(s, j);
    const int64_t kc = (s.Hq + g) * Dh, vc = v_col(s, g);
    const float *base = qkv + b * s.T * ld;
    for (int64_t d = tid; d < Dv; d += kThreads) sv[d] = base[j * ld + vc + d];
    __syncthreads();

    float dk[kCols] = {}, dv[kCols] = {};
    for (int64_t h = g * G; h < (g + 1) * G; h++) {
        const int64_t prow = (b * s.Hq + h) * s.T; /* row t of head h: prow + t */
        for (int64_t t0 = j; t0 <= hi; t0 += kTile) {
            const int n = (int)(hi - t0 + 1 < kTile ? hi - t0 + 1 : kTile);
            for (int i = warp; i < n; i += kWarps) {
                const int64_t t = t0 + i;
                const float pt = P[(prow + t) * s.T + j];
                const float ds = attn_ds(pt, dout + (b * s.T + t) * s.Hq * Dv + h * Dv, sv, Drow[prow + t], Dv,
                                         s.scale);
                if ((tid & 31) == 0) {
                    sds[i] = ds;
                    sp[i] = pt;
                }
            }
            __syncthreads();
            for (int i = 0; i < n; i++) {
                if (sp[i] == 0.0f) continue;
                const int64_t t = t0 + i;
                for (int c = 0; c < kCols; c++) {
                    const int64_t d = tid + c * kThreads;
                    if (d < Dh) dk[c] += sds[i] * base[t * ld + h * Dh + d];
                    if (d < Dv) dv[c] += sp[i] * dout[(b * s.T + t) * s.Hq * Dv + h * Dv + d];
                }
            }
            __syncthreads();
        }
    }
    for (int c = 0; c < kCols; c++) {
        const int64_t d = tid + c * kThreads;
        if (d < Dh) dqkv[b * s.T * ld + j * ld + kc + d] = dk[c];
        if (d < Dv) dqkv[b * s.T * ld + j * ld + vc + d] = dv[c];
    }
}

hae_status attn_check(const char *op, const hae_tr_attn_shape *s) {
    if (s->Hkv <= 0 || s->Hq % s->Hkv != 0)
        return hae_error(HAE_ERR_INVALID, "%s (cuda): Hq = %lld is not a multiple of Hkv = %lld", op,
                         (long long)s->Hq, (long long)s->Hkv);
    const int64_t Dv = s->Dv > 0 ? s->Dv : s->Dh;
    if (s->Dh > kMaxDh || Dv > kMaxDh || s->B * s->Hq * s->T > INT_MAX)
        return hae_error(HAE_ERR_UNSUPPORTED,
                         "%s (cuda): B %lld, T %lld, Hq %lld, Dh %lld, Dv %lld: supports Dh, Dv <= %d and B Hq T <= %d",
                         op, (long long)s->B, (long long)s->T, (long long)s->Hq, (long long)s->Dh, (long long)Dv,
                         kMaxDh, INT_MAX);
    return HAE_OK;
}

/* ================================================================ indexer scores */

/* The query row's q [HI, DI] and w [HI] into shared memory (sq, then sw). */
__device__ __forceinline__ void load_query(float *sh, const hae_tr_index_shape &s, const float *q, const float *w,
                                           int64_t row) {
    const int64_t n = s.HI * s.DI;
    for (int64_t e = threadIdx.x; e < n; e += kThreads) sh[e] = q[row * n + e];
    for (int64_t h = threadIdx.x; h < s.HI; h += kThreads) sh[n + h] = w[row * s.HI + h];
    __syncthreads();
}

/* Row (b, t): I_s = scale sum_h w_h relu(q_h . k_s) for s <= t (fp32, heads in order), 0 above; warp per key. */
__global__ void __launch_bounds__(kThreads)
    index_fwd_kernel(const hae_tr_index_shape s, const float *q, const float *k, const float *w, float *I) {
    extern __shared__ float sh[]; /* q [HI DI], w [HI] */
    const int64_t row = blockIdx.x, t = row % s.T, b = row / s.T, HI = s.HI, DI = s.DI;
    const float *sq = sh, *sw = sh + HI * DI;
    load_query(sh, s, q, w, row);
    for (int64_t j = t + 1 + threadIdx.x; j < s.T; j += kThreads) I[row * s.T + j] = 0.0f;
    for (int64_t j = threadIdx.x >> 5; j <= t; j += kWarps) {
        float acc = 0.0f;
        for (int64_t h = 0; h < HI; h++) {
            const float a = warp_dot(sq + h * DI, k + (b * s.T + j) * DI, DI);
            acc += sw[h] * (a > 0.0f ? a : 0.0f);
        }
        if ((threadIdx.x & 31) == 0) I[row * s.T + j] = s.scale * acc;
    }
}

/* The backward's coefficient of head h for the pair (t, s), by the warp: with g = scale dI_ts and a = q_th . k_s,
 * g w_th where a > 0 and dI_ts != 0, else 0; *ga = g a there (dw's term), else 0. */
__device__ __forceinline__ float index_coef(float dI, const float *q, const float *k, float w,
                                            const hae_tr_index_shape &s, float *ga) {
    *ga = 0.0f;
    if (dI == 0.0f) return 0.0f;
    const float a = warp_dot(q, k, s.DI), g = s.scale * dI;
    if (a <= 0.0f) return 0.0f;
    *ga = g * a;
    return g * w;
}

/* Row (b, t): dq_th = sum_s c_tsh k_s and dw_th = sum_s g_ts a_tsh (index_coef), keys in order. The keys go
 * kTile at a time: the warps fill the tile's coefficients, then each accumulator (dq's HI DI, then dw's HI, in
 * shared memory, owned by thread e mod kThreads) adds the tile. */
__global__ void __launch_bounds__(kThreads)
    index_dq_kernel(const hae_tr_index_shape s, const float *q, const float *k, const float *w, const float *dI,
                    float *dq, float *dw) {
    extern __shared__ float sh[]; /* q [HI DI], w [HI], acc [HI DI + HI], c [kTile HI], ga [kTile HI] */
    const int64_t row = blockIdx.x, t = row % s.T, b = row / s.T, HI = s.HI, DI = s.DI, n = HI * DI;
    float *sw = sh + n, *acc = sw + HI, *sc = acc + n + HI, *sga = sc + kTile * HI;
    for (int64_t e = threadIdx.x; e < n + HI; e += kThreads) acc[e] = 0.0f;
    load_query(sh, s, q, w, row);
    for (int64_t s0 = 0; s0 <= t; s0 += kTile) {
        const int m = (int)(t - s0 + 1 < kTile ? t - s0 + 1 : kTile);
        for (int i = threadIdx.x >> 5; i < m; i += kWarps)
            for (int64_t h = 0; h < HI; h++) {
                float ga;
                const float c =
                    index_coef(dI[row * s.T + s0 + i], sh + h * DI, k + (b * s.T + s0 + i) * DI, sw[h], s, &ga);
                if ((threadIdx.x & 31) == 0) {
                    sc[i * HI + h] = c;
                    sga[i * HI + h] = ga;
                }
            }
        __syncthreads();
        for (int64_t e = threadIdx.x; e < n + HI; e += kThreads) {
            const float *col = e < n ? sc + e / DI : sga + (e - n); /* the tile's coefficients of e's head */
            float a = acc[e];
            for (int i = 0; i < m; i++) {
                const float c = col[i * HI];
                if (c != 0.0f) a += e < n ? c * k[(b * s.T + s0 + i) * DI + e % DI] : c;
            }
            acc[e] = a;
        }
        __syncthreads();
    }
    for (int64_t e = threadIdx.x; e < n; e += kThreads) dq[row * n + e] = acc[e];
    for (int64_t h = threadIdx.x; h < HI; h += kThreads) dw[row * HI + h] = acc[n + h];
}

/* Key (b, j): dk_j = sum over the queries t >= j, then the heads h, of c_tjh q_th (index_coef), kTile queries at
 * a time as index_dq_kernel, accumulator d (shared) owned by thread d mod kThreads. */
__global__ void __launch_bounds__(kThreads) index_dk_kernel(const hae_tr_index_shape s, const float *q, const float *k,
                                                            const float *w, const float *dI, float *dk) {
    extern __shared__ float sh[]; /* k [DI], acc [DI], c [kTile HI] */
    const int64_t row = blockIdx.x, j = row % s.T, b = row / s.T, HI = s.HI, DI = s.DI;
    float *sk = sh, *acc = sh + DI, *sc = acc + DI;
    for (int64_t d = threadIdx.x; d < DI; d += kThreads) {
        sk[d] = k[row * DI + d];
        acc[d] = 0.0f;
    }
    __syncthreads();
    for (int64_t t0 = j; t0 < s.T; t0 += kTile) {
        const int m = (int)(s.T - t0 < kTile ? s.T - t0 : kTile);
        for (int i = threadIdx.x >> 5; i < m; i += kWarps) {
            const int64_t qr = b * s.T + t0 + i;
            for (int64_t h = 0; h < HI; h++) {
                float ga;
                const float c = index_coef(dI[qr * s.T + j], q + (qr * HI + h) * DI, sk, w[qr * HI + h], s, &ga);
                if ((threadIdx.x & 31) == 0) sc[i * HI + h] = c;
            }
        }
        __syncthreads();
        for (int64_t d = threadIdx.x; d < DI; d += kThreads) {
            float a = acc[d];
            for (int i = 0; i < m; i++)
                for (int64_t h = 0; h < HI; h++)
                    if (sc[i * HI + h] != 0.0f) a += sc[i * HI + h] * q[((b * s.T + t0 + i) * HI + h) * DI + d];
            acc[d] = a;
        }
        __syncthreads();
    }
    for (int64_t d = threadIdx.x; d < DI; d += kThreads) dk[row * DI + d] = acc[d];
}

size_t index_dq_shared(const hae_tr_index_shape *s) {
    return sizeof(float) * (size_t)(2 * s->HI * s->DI + 2 * s->HI + 2 * kTile * s->HI);
}

hae_status index_check(const char *op, const hae_tr_index_shape *s) {
    if (index_dq_shared(s) > kMaxShared || s->B * s->T > INT_MAX)
        return hae_error(HAE_ERR_UNSUPPORTED,
                         "%s (cuda): B %lld, T %lld, HI %lld, DI %lld: needs %zu bytes of shared memory (at most "
                         "%zu) and B T <= %d",
                         op, (long long)s->B, (long long)s->T, (long long)s->HI, (long long)s->DI,
                         index_dq_shared(s), kMaxShared, INT_MAX);
    return HAE_OK;
}

/* ================================================================ indexer selection and loss */

/* Larger key = larger score, ties to the lower index (the CPU's strict > scan); -0 ties with +0 as there. */
__device__ __forceinline__ uint64_t select_key(float v, int64_t j) {
    uint32_t u = __float_as_uint(v == 0.0f ? 0.0f : v);
    u = u & 0x80000000u ? ~u : u | 0x80000000u;
    return (uint64_t)u << 16 | (uint64_t)(kMaxSelectT - 1 - j);
}

/* Row (b, t): allow_j = 1 for the k largest I_j over j <= t, ties to the lower j (every j <= t when t < k). Keys
 * (select_key) are distinct, so the top k are the keys >= the k-th largest, found by a radix select over the
 * 48 key bits, 8 per pass (a shared histogram of integer counts per pass). */
__global__ void __launch_bounds__(kThreads) index_select_kernel(const float *I, int64_t T, int64_t k, uint8_t *allow) {
    __shared__ unsigned hist[256];
    __shared__ uint64_t prefix; /* the k-th key's bits found so far */
    __shared__ unsigned want;   /* its rank among the keys with those bits */
    const int64_t row = blockIdx.x, t = row % T;
    const float *x = I + row * T;
    const bool all = t < k;
    if (threadIdx.x == 0) {
        prefix = 0;
        want = (unsigned)k;
    }
    for (int shift = 40; !all && k > 0 && shift >= 0; shift -= 8) {
        for (int i = threadIdx.x; i < 256; i += kThreads) hist[i] = 0;
        __syncthreads();
        const uint64_t above = ~0ull << (shift + 8);
        for (int64_t j = threadIdx.x; j <= t; j += kThreads) {
            const uint64_t key = select_key(x[j], j);
            if ((key & above) == prefix) atomicAdd(&hist[key >> shift & 255], 1u);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            unsigned bin = 255;
            while (hist[bin] < want) want -= hist[bin--];
            prefix |= (uint64_t)bin << shift;
        }
        __syncthreads();
    }
    for (int64_t j = threadIdx.x; j < T; j += kThreads)
        allow[row * T + j] = j <= t && (all || (k > 0 && select_key(x[j], j) >= prefix));
}

/* Row (b, t) over its set S = {j <= t : allow_j}, in double as the CPU: p_j = sum_h P[b, h, t, j] (rounded to
 * float, as the CPU keeps it in dI) / sum_S p, lq_j = I_j - max_S I - log sum_S exp(I - max),
 * KL_t = sum_S p_j (log p_j - lq_j) into kl[row], dI_j = scale (exp(lq_j) - p_j) on S, 0 elsewhere. */
__global__ void __launch_bounds__(kThreads) index_kl_kernel(const float *P, const float *I, const uint8_t *allow,
                                                            int64_t Hq, int64_t T, float scale, float *dI,
                                                            double *kl /* [B T] */) {
    const int64_t row = blockIdx.x, t = row % T, b = row / T;
    const float *x = I + row * T;
    const uint8_t *a = allow + row * T;
    float *d = dI + row * T;
    float mxf = -INFINITY;
    for (int64_t j = threadIdx.x; j <= t; j += kThreads)
        if (a[j]) mxf = fmaxf(mxf, x[j]);
    const double mx = block_reduce(mxf, Max());
    double z = 0.0, ptot = 0.0;
    for (int64_t j = threadIdx.x; j < T; j += kThreads) {
        double pj = 0.0;
        if (j <= t && a[j]) {
            z += exp((double)x[j] - mx);
            for (int64_t h = 0; h < Hq; h++) pj += P[((b * Hq + h) * T + t) * T + j];
        }
        d[j] = (float)pj;
        ptot += pj;
    }
    z = block_reduce(z, Sum());
    ptot = block_reduce(ptot, Sum());
    const double lz = log(z);
    double klt = 0.0;
    for (int64_t j = threadIdx.x; j < T; j += kThreads) {
        if (j > t || !a[j]) {
            d[j] = 0.0f;
            continue;
        }
        const double pj = ptot > 0 ? d[j] / ptot : 0, lq = (double)x[j] - mx - lz;
        if (pj > 0) klt += pj * (log(pj) - lq);
        d[j] = (float)(scale * (exp(lq) - pj));
    }
    klt = block_reduce(klt, Sum());
    if (threadIdx.x == 0) kl[row] = klt;
}

} // namespace

/* ---------------------------------------------------------------- entry points */

extern "C" hae_status hae_tr_attention_fwd_cuda(hae_backend *be, const hae_tr_attn_shape *s, const float *qkv,
                                                float *P, float *out) {
    cudaStream_t st;
    HAE_TRY(hae_cuda_enter(be, &st));
    HAE_TRY(attn_check("hae_tr_attention_fwd", s));
    const int64_t rows = s->B * s->Hq * s->T;
    if (rows == 0) return HAE_OK;
    attn_fwd_kernel<<<(unsigned)rows, kThreads, 0, st>>>(*s, qkv, P, out);
    HAE_CUDA_LAUNCH_CHECK("attn_fwd_kernel");
    return HAE_OK;
}

extern "C" hae_status hae_tr_attention_bwd_cuda(hae_backend *be, const hae_tr_attn_shape *s, const float *qkv,
                                                const float *P, const float *out, const float *dout, float *dqkv) {
    cudaStream_t st;
    HAE_TRY(hae_cuda_enter(be, &st));
    HAE_TRY(attn_check("hae_tr_attention_bwd", s));
    const int64_t rows = s->B * s->Hq * s->T;
    if (rows == 0) return HAE_OK;
    if ((size_t)rows * sizeof(float) > be->cuda->scratch_bytes)
        return hae_error(HAE_ERR_UNSUPPORTED,
                         "hae_tr_attention_bwd (cuda): B %lld, T %lld, Hq %lld: %zu bytes of row sums exceed the "
                         "%zu bytes of scratch",
                         (long long)s->B, (long long)s->T, (long long)s->Hq, (size_t)rows * sizeof(float),
                         be->cuda->scratch_bytes);
    float *Drow = (float *)be->cuda->scratch; /* [B, Hq, T] */
    attn_dq_kernel<<<(unsigned)rows, kThreads, 0, st>>>(*s, qkv, P, out, dout, dqkv, Drow);
    HAE_CUDA_LAUNCH_CHECK("attn_dq_kernel");
    attn_dkv_kernel<<<(unsigned)(s->B * s->Hkv * s->T), kThreads, 0, st>>>(*s, qkv, P, dout, Drow, dqkv);
    HAE_CUDA_LAUNCH_CHECK("attn_dkv_kernel");
    return HAE_OK;
}

extern "C" hae_status hae_tr_index_fwd_cuda(hae_backend *be, const hae_tr_index_shape *s, const float *q,
                                            const float *k, const float *w, float *I) {
    cudaStream_t st;
    HAE_TRY(hae_cuda_enter(be, &st));
    HAE_TRY(index_check("hae_tr_index_fwd", s));
    if (s->B * s->T == 0) return HAE_OK;
    const size_t shared = sizeof(float) * (size_t)(s->HI * s->DI + s->HI);
    index_fwd_kernel<<<(unsigned)(s->B * s->T), kThreads, shared, st>>>(*s, q, k, w, I);
    HAE_CUDA_LAUNCH_CHECK("index_fwd_kernel");
    return HAE_OK;
}

extern "C" hae_status hae_tr_index_bwd_cuda(hae_backend *be, const hae_tr_index_shape *s, const float *q,
                                            const float *k, const float *w, const float *dI, float *dq, float *dk,
                                            float *dw) {
    cudaStream_t st;
    HAE_TRY(hae_cuda_enter(be, &st));
    HAE_TRY(index_check("hae_tr_index_bwd", s));
    const int64_t rows = s->B * s->T;
    if (rows == 0) return HAE_OK;
    index_dq_kernel<<<(unsigned)rows, kThreads, index_dq_shared(s), st>>>(*s, q, k, w, dI, dq, dw);
    HAE_CUDA_LAUNCH_CHECK("index_dq_kernel");
    const size_t shared = sizeof(float) * (size_t)(2 * s->DI + kTile * s->HI);
    index_dk_kernel<<<(unsigned)rows, kThreads, shared, st>>>(*s, q, k, w, dI, dk);
    HAE_CUDA_LAUNCH_CHECK("index_dk_kernel");
    return HAE_OK;
}

extern "C" hae_status hae_tr_index_select_cuda(hae_backend *be, const float *I, int64_t B, int64_t T, int64_t k,
                                               uint8_t *allow) {
    cudaStream_t st;
    HAE_TRY(hae_cuda_enter(be, &st));
    if (T > kMaxSelectT || B * T > INT_MAX)
        return hae_error(HAE_ERR_UNSUPPORTED,
                         "hae_tr_index_select (cuda): B %lld, T %lld: supports T <= %lld and B T <= %d", (long long)B,
                         (long long)T, (long long)kMaxSelectT, INT_MAX);
    if (B * T == 0) return HAE_OK;
    index_select_kernel<<<(unsigned)(B * T), kThreads, 0, st>>>(I, T, k, allow);
    HAE_CUDA_LAUNCH_CHECK("index_select_kernel");
    return HAE_OK;
}

extern "C" hae_status hae_tr_index_kl_cuda(hae_backend *be, const float *P, const float *I, const uint8_t *allow,
                                           int64_t B, int64_t Hq, int64_t T, float scale, float *dI, double *kl_sum) {
    cudaStream_t st;
    HAE_TRY(hae_cuda_enter(be, &st));
    const int64_t rows = B * T;
    if (rows == 0) {
        *kl_sum = 0.0;
        return HAE_OK;
    }
    const size_t bytes = sizeof(double) * (size_t)rows;
    if (rows > INT_MAX || bytes > be->cuda->scratch_bytes)
        return hae_error(HAE_ERR_UNSUPPORTED,
                         "hae_tr_index_kl (cuda): B %lld, T %lld: %zu bytes of per-row KL exceed the %zu bytes of "
                         "scratch",
                         (long long)B, (long long)T, bytes, be->cuda->scratch_bytes);
    double *kl_dev = (double *)be->cuda->scratch;
    index_kl_kernel<<<(unsigned)rows, kThreads, 0, st>>>(P, I, allow, Hq, T, scale, dI, kl_dev);
    HAE_CUDA_LAUNCH_CHECK("index_kl_kernel");
    double *kl = (double *)malloc(bytes);
    if (!kl)
        return hae_error(HAE_ERR_OOM, "hae_tr_index_kl (cuda): out of host memory for the KL of %lld rows",
                         (long long)rows);
    const hae_status rc = hae_cuda_download(be->cuda, kl, kl_dev, bytes);
    double total = 0.0;
    for (int64_t i = 0; rc == HAE_OK && i < rows; i++) total += kl[i]; /* row order, as the CPU */
    free(kl);
    if (rc == HAE_OK) *kl_sum = total;
    return rc;
}

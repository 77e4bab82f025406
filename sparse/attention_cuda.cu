/* KV cache writes and dense causal attention (full and sliding window), gqa form, on CUDA; the
 * contract is hae.h's and the reference sparse/attention_cpu.c.
 *
 * Attention, for query (b, t, h) at position p = pos0 + t, kv head g = h / (Hq / Hkv):
 *     o = sum_{s in [lo, p]} softmax_s(scale * q . k_s) v_s,   k_s, v_s in cache slot s % cap,
 *     lo = max(0, p - window + 1) when window > 0, else 0.
 * One block of 4 warps per query row (b, t, h); decode (T = 1) and prefill use the same kernel.
 * Warp w takes the keys lo + w*U + j*(4U) .. + U-1 (U = 4 keys in flight); lane l holds the elements
 * d = l + 32 j (j < NJ) of q, of each key and value row, and of its accumulator. Per key the warp
 * reduces the dot product with xor shuffles (every lane ends with the same score), then updates an
 * online softmax (running max m, sum l, accumulator) in fp32. The 4 warps' states merge in shared
 * memory at the end: M = max m_w, out = sum_w e^(m_w - M) acc_w / sum_w e^(m_w - M) l_w. */
#include "cuda_check.cuh"

#include <limits.h>
#include <math.h>

namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kKeysInFlight = 4; /* U above */
constexpr int kMaxD = 256;

struct AttnParams {
    const void *q;
    int64_t q_sb, q_st, q_sh; /* strides of q's b, t, h dims (elements; d is dense) */
    const void *k, *v;
    int64_t c_sb, c_ss, c_sh; /* strides of the caches' b, slot, kv-head dims (k and v alike) */
    void *out;
    int64_t o_sb, o_st, o_sh;
    int64_t T, cap, pos0, window;
    int Hq, group, D; /* group = Hq / Hkv */
    float scale;
};

__device__ __forceinline__ float warp_sum(float v) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

template <typename TQ, typename TKV, typename TO, int NJ>
__global__ void __launch_bounds__(kThreads) attention_kernel(const AttnParams p) {
    __shared__ float sh_acc[kWarps][kMaxD];
    __shared__ float sh_m[kWarps], sh_l[kWarps];

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t row = blockIdx.x; /* ((b * T) + t) * Hq + h */
    const int h = (int)(row % p.Hq);
    const int64_t t = (row / p.Hq) % p.T, b = row / ((int64_t)p.Hq * p.T);
    const int g = h / p.group;
    const int64_t pos = p.pos0 + t;
    const int64_t lo = (p.window > 0 && pos - p.window + 1 > 0) ? pos - p.window + 1 : 0;

    /* q pre-scaled, as on the CPU */
    const TQ *q = (const TQ *)p.q + b * p.q_sb + t * p.q_st + (int64_t)h * p.q_sh;
    float qv[NJ], acc[NJ];
#pragma unroll
    for (int j = 0; j < NJ; j++) {
        const int d = lane + 32 * j;
        qv[j] = d < p.D ? hae_ld(q + d) * p.scale : 0.0f;
        acc[j] = 0.0f;
    }
    const TKV *kbase = (const TKV *)p.k + b * p.c_sb + (int64_t)g * p.c_sh;
    const TKV *vbase = (const TKV *)p.v + b * p.c_sb + (int64_t)g * p.c_sh;

    float m = -INFINITY, l = 0.0f;
    /* base is the same in every lane of a warp, so the shuffles below see the whole warp */
    for (int64_t base = lo + (int64_t)warp * kKeysInFlight; base <= pos; base += kWarps * kKeysInFlight) {
        float sc[kKeysInFlight];
        int64_t slot[kKeysInFlight];
#pragma unroll
        for (int u = 0; u < kKeysInFlight; u++) {
            const int64_t s = base + u;
            slot[u] = s < p.cap ? s : s % p.cap;
            float part = 0.0f;
            if (s <= pos) {
                const TKV *kr = kbase + slot[u] * p.c_ss;
#pragma unroll
                for (int j = 0; j < NJ; j++) {
                    const int d = lane + 32 * j;
                    if (d < p.D) part += qv[j] * hae_ld(kr + d);
                }
            }
            sc[u] = part;
        }
        float mx = m;
#pragma unroll
        for (int u = 0; u < kKeysInFlight; u++) {
            sc[u] = warp_sum(sc[u]);
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
            const TKV *vr = vbase + slot[u] * p.c_ss;
#pragma unroll
            for (int j = 0; j < NJ; j++) {
                const int d = lane + 32 * j;
                if (d < p.D) acc[j] += w * hae_ld(vr + d);
            }
        }
        m = mx;
    }

    /* a warp that saw no key keeps m = -inf, l = 0, acc = 0 and gets weight 0 below */
#pragma unroll
    for (int j = 0; j < NJ; j++) {
        const int d = lane + 32 * j;
        if (d < p.D) sh_acc[warp][d] = acc[j];
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
    TO *o = (TO *)p.out + b * p.o_sb + t * p.o_st + (int64_t)h * p.o_sh;
    for (int d = threadIdx.x; d < p.D; d += kThreads) {
        float s = 0.0f;
#pragma unroll
        for (int w = 0; w < kWarps; w++) s += wt[w] * sh_acc[w][d];
        hae_st(o + d, s * inv);
    }
}

template <typename TQ, typename TKV, typename TO>
hae_status launch_attention(const AttnParams &p, int64_t rows, cudaStream_t s) {
    if (p.D <= 64) attention_kernel<TQ, TKV, TO, 2><<<(unsigned)rows, kThreads, 0, s>>>(p);
    else if (p.D <= 128) attention_kernel<TQ, TKV, TO, 4><<<(unsigned)rows, kThreads, 0, s>>>(p);
    else attention_kernel<TQ, TKV, TO, 8><<<(unsigned)rows, kThreads, 0, s>>>(p);
    HAE_CUDA_LAUNCH_CHECK("attention_kernel");
    return HAE_OK;
}

/* cache[b, (pos0 + t) % cap, h, d] = src[b, t, h, d] for t >= t_first: when T > cap only the last cap
 * tokens land (later tokens overwrite earlier ones sequentially; in parallel, skipping is the same). */
template <typename TS, typename TC>
__global__ void kv_write_kernel(const TS *src, int64_t s_sb, int64_t s_st, int64_t s_sh, TC *cache, int64_t c_sb,
                                int64_t c_ss, int64_t c_sh, int64_t Tw, int64_t t_first, int64_t H, int64_t D,
                                int64_t cap, int64_t pos0, int64_t rows) {
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

} // namespace

extern "C" hae_status hae_kv_write_cuda(hae_backend *be, const hae_kv_write_args *a) {
    const int64_t B = a->src.shape[0], T = a->src.shape[1], H = a->src.shape[2], D = a->src.shape[3];
    const int64_t cap = a->cache.shape[1];
    if (B * T * H * D == 0) return HAE_OK;
    const int64_t t_first = T > cap ? T - cap : 0, Tw = T - t_first;
    const int64_t rows = B * Tw * H;
    cudaStream_t s = nullptr;
    HAE_TRY(hae_cuda_enter(be, &s));
    const int threads = 128;
    int64_t gx = (D + threads - 1) / threads;
    if (gx > 64) gx = 64;
    const int64_t gy = rows < 65535 ? rows : 65535;
    return hae_cuda_dispatch(a->src.dtype, "hae_kv_write", [&](auto ts) -> hae_status {
        using TS = decltype(ts);
        return hae_cuda_dispatch(a->cache.dtype, "hae_kv_write", [&](auto tc) -> hae_status {
            using TC = decltype(tc);
            kv_write_kernel<TS, TC><<<dim3((unsigned)gx, (unsigned)gy), threads, 0, s>>>(
                (const TS *)a->src.data, a->src.stride[0], a->src.stride[1], a->src.stride[2], (TC *)a->cache.data,
                a->cache.stride[0], a->cache.stride[1], a->cache.stride[2], Tw, t_first, H, D, cap, a->pos0, rows);
            HAE_CUDA_LAUNCH_CHECK("kv_write_kernel");
            return HAE_OK;
        });
    });
}

extern "C" hae_status hae_attention_cuda(hae_backend *be, const hae_attention_args *a) {
    const int64_t B = a->q.shape[0], T = a->q.shape[1], Hq = a->q.shape[2], D = a->q.shape[3];
    const int64_t Hkv = a->k_cache.shape[2];
    if (B * T * Hq == 0) return HAE_OK;
    if (D > kMaxD)
        return hae_error(HAE_ERR_UNSUPPORTED, "hae_attention (cuda): head dim %lld > %d is not implemented",
                         (long long)D, kMaxD);
    if (D < 1) return hae_error(HAE_ERR_UNSUPPORTED, "hae_attention (cuda): head dim %lld", (long long)D);
    const int64_t rows = B * T * Hq;
    if (rows > INT_MAX)
        return hae_error(HAE_ERR_UNSUPPORTED, "hae_attention (cuda): %lld query rows exceed %d", (long long)rows,
                         INT_MAX);
    if (a->k_cache.stride[0] != a->v_cache.stride[0] || a->k_cache.stride[1] != a->v_cache.stride[1] ||
        a->k_cache.stride[2] != a->v_cache.stride[2])
        return hae_error(HAE_ERR_UNSUPPORTED, "hae_attention (cuda): k_cache and v_cache strides differ");
    if (a->k_cache.dtype != a->v_cache.dtype)
        return hae_error(HAE_ERR_UNSUPPORTED, "hae_attention (cuda): k_cache and v_cache dtypes differ");

    AttnParams p;
    p.q = a->q.data;
    p.q_sb = a->q.stride[0];
    p.q_st = a->q.stride[1];
    p.q_sh = a->q.stride[2];
    p.k = a->k_cache.data;
    p.v = a->v_cache.data;
    p.c_sb = a->k_cache.stride[0];
    p.c_ss = a->k_cache.stride[1];
    p.c_sh = a->k_cache.stride[2];
    p.out = a->out.data;
    p.o_sb = a->out.stride[0];
    p.o_st = a->out.stride[1];
    p.o_sh = a->out.stride[2];
    p.T = T;
    p.cap = a->k_cache.shape[1];
    p.pos0 = a->pos0;
    p.window = a->window;
    p.Hq = (int)Hq;
    p.group = (int)(Hq / Hkv);
    p.D = (int)D;
    p.scale = a->scale;

    cudaStream_t s = nullptr;
    HAE_TRY(hae_cuda_enter(be, &s));
    return hae_cuda_dispatch(a->q.dtype, "hae_attention", [&](auto tq) -> hae_status {
        using TQ = decltype(tq);
        return hae_cuda_dispatch(a->k_cache.dtype, "hae_attention", [&](auto tkv) -> hae_status {
            using TKV = decltype(tkv);
            return hae_cuda_dispatch(a->out.dtype, "hae_attention", [&](auto to) -> hae_status {
                using TO = decltype(to);
                return launch_attention<TQ, TKV, TO>(p, rows, s);
            });
        });
    });
}

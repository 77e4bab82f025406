/* The linear layers' training ops on CUDA: the recurrence, the conv, the L2 and gated norms, the log decay
 * (contracts in train_ops.h; train/ops.c is the CPU reference, whose arithmetic these follow: double where it
 * uses double, rounded to f32 where it rounds).
 *
 * Determinism: no atomics. Every output element is written by one thread. A sum split over threads is split by
 * a partition that depends on the shape alone and its partial sums (double) are added in a fixed order, so a
 * result is the same on every run; it can differ from the CPU's single sequential order in the last bits. */
#include "cuda_check.cuh"
#include "train_ops_cuda.h"

#include <math.h>
#include <stdint.h>

namespace {

__host__ __device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

__device__ __forceinline__ double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

/* x's total from n partials part[g * stride + x], added in g order. */
__device__ __forceinline__ double group_sum(const double *part, int n, int stride, int x) {
    double s = 0;
    for (int g = 0; g < n; g++) s += part[g * stride + x];
    return s;
}

/* ---------------------------------------------------------------- sums over rows, in two stages
 * An op's first stage writes part[c, col], the sum over chunk c of the rows in row order; sum_chunks adds the
 * chunks in order into the f32 output. */
constexpr int kThreads = 256;
constexpr int64_t kChunkRows = 256; /* enough rows per thread of a first stage to repay its launch */

/* out[col] += sum over c of part[c, col] */
__global__ void sum_chunks_kernel(const double *part, int64_t nch, int64_t cols, float *out) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t col = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; col < cols; col += stride) {
        double s = 0;
        for (int64_t c = 0; c < nch; c++) s += part[c * cols + col];
        out[col] += (float)s;
    }
}

hae_status sum_chunks(cudaStream_t st, const double *part, int64_t nch, int64_t cols, float *out) {
    sum_chunks_kernel<<<hae_cuda_blocks(cols, kThreads), kThreads, 0, st>>>(part, nch, cols, out);
    HAE_CUDA_LAUNCH_CHECK("sum_chunks_kernel");
    return HAE_OK;
}

/* Rows per chunk for N rows with per_chunk doubles of partials each, so that they fit in budget bytes (the
 * caller checks that one chunk does). A function of the shape alone: the partition, and so the rounding, is the
 * same on every run. */
int64_t chunk_rows(int64_t N, int64_t per_chunk, size_t budget) {
    int64_t rows = kChunkRows;
    while (rows < N && (size_t)((N + rows - 1) / rows * per_chunk) * sizeof(double) > budget) rows *= 2;
    return rows;
}

/* ---------------------------------------------------------------- the linear family's recurrence
 * One block per (sequence, head) walks t in order (forward) or backwards (backward) with the K x V state, or its
 * gradient, in shared memory. Thread rp Pc + cp owns rows rp, rp + Pr, .. and columns cp, cp + Pc, ..: a column's
 * sum over K is its Pr row groups' partials added in group order, a row's sum over V its Pc column groups'.
 * Pc = min(V, 32) keeps a warp on consecutive columns: conflict-free shared memory, coalesced state rows. */
constexpr int kDeltaThreads = 512;

struct DeltaArgs {
    const float *q, *k, *v, *g, *beta, *dout;
    float *S, *o, *dq, *dk, *dv, *dg, *dbeta; /* S: the states (hae_tr_delta_slots per block) */
    int64_t T, H, C, nck, slots;              /* checkpoints every C tokens (0: none), nck of them, slots per block */
    int K, V, Pr, Pc;
    bool channel;
    float scale;
};

/* The backward's partial area after its rows partials (see delta_bwd_kernel). */
__host__ __device__ __forceinline__ int64_t delta_cols(int64_t K, int64_t V, int64_t Pr, int64_t Pc) {
    return 2 * Pr * V > Pc * (K + 1) ? 2 * Pr * V : Pc * (K + 1);
}

/* Where state t lives in a block's slots: slot t, or with checkpoints the chunk buffer's slot t mod C. */
__device__ __forceinline__ int64_t state_slot(const DeltaArgs &p, int64_t t) { return p.C ? p.nck + t % p.C : t; }

/* Row r's a_t (double, as the CPU's decay_at: 1 without decay), q_t, k_t, v_t and, for the backward, do_t. */
__device__ void delta_load(const DeltaArgs &p, int64_t r, double *a, float *q, float *k, float *v, float *dout) {
    for (int i = threadIdx.x; i < p.K; i += blockDim.x) {
        a[i] = p.g ? exp((double)(p.channel ? p.g[r * p.K + i] : p.g[r])) : 1.0;
        q[i] = p.q[r * p.K + i], k[i] = p.k[r * p.K + i];
    }
    for (int j = threadIdx.x; j < p.V; j += blockDim.x) {
        v[j] = p.v[r * p.V + j];
        if (dout) dout[j] = p.dout[r * p.V + j];
    }
}

/* S'_t = diag(a_t) S_{t-1} rounded to f32, u_t = beta_t (v_t - S'_t^T k_t) or v_t, S_t = S'_t + k_t u_t^T (f32),
 * o_t = scale S_t^T q_t, the sums over K in double. Shared: a [K] and the row groups' partials of S'^T k and
 * S^T q [Pr, V] (double); S [K, V], q, k [K], v [V]. */
__global__ void __launch_bounds__(kDeltaThreads) delta_fwd_kernel(const DeltaArgs p) {
    extern __shared__ double sm[];
    const int K = p.K, V = p.V, Pr = p.Pr, Pc = p.Pc, rp = threadIdx.x / Pc, cp = threadIdx.x % Pc;
    const int64_t b = blockIdx.x / p.H, h = blockIdx.x % p.H, KV = (int64_t)K * V;
    double *a = sm, *skp = a + K, *qsp = skp + Pr * V;
    float *S = (float *)(qsp + Pr * V), *q = S + KV, *k = q + K, *v = k + K;
    float *Sw = p.S + blockIdx.x * p.slots * KV;
    for (int64_t t = 0; t < p.T; t++) {
        const int64_t r = (b * p.T + t) * p.H + h;
        delta_load(p, r, a, q, k, v, nullptr);
        __syncthreads();
        for (int j = cp; j < V; j += Pc) {
            double sk = 0;
            for (int i = rp; i < K; i += Pr) {
                float &s = S[i * V + j];
                s = t ? (float)(a[i] * s) : 0.0f;
                sk += (double)s * k[i];
            }
            skp[rp * V + j] = sk;
        }
        __syncthreads();
        float *St = Sw + state_slot(p, t) * KV;
        float *ck = p.C && ((t + 1) % p.C == 0 || t + 1 == p.T) ? Sw + t / p.C * KV : nullptr; /* a chunk's last */
        for (int j = cp; j < V; j += Pc) {
            const double u = p.beta ? p.beta[r] * (v[j] - group_sum(skp, Pr, V, j)) : v[j];
            double qs = 0;
            for (int i = rp; i < K; i += Pr) {
                float &s = S[i * V + j];
                s = (float)(s + k[i] * u);
                St[i * V + j] = s;
                if (ck) ck[i * V + j] = s;
                qs += (double)s * q[i];
            }
            qsp[rp * V + j] = qs;
        }
        __syncthreads();
        for (int j = threadIdx.x; j < V; j += blockDim.x)
            p.o[r * V + j] = (float)(p.scale * group_sum(qsp, Pr, V, j));
    }
}

/* Backwards over t with dS, the gradient of the state after step t, in double as the CPU; S'_t = diag(a_t) S_{t-1}
 * in double, beta = 1 without the delta rule:
 *     dS += scale q_t do_t^T;  dq_t = scale S_t do_t;  du = dS^T k_t;  res = v_t - S'_t^T k_t (delta) or v_t;
 *     dv_t = beta du;  dbeta_t = du . res;  dk_t = beta dS res - beta S'_t du (the second term with delta only);
 *     delta: dS -= beta k_t du^T;  dg_t = a_t (row dots of dS and S_{t-1}), summed over K for a head gate;
 *     dS *= a_t (row-wise)
 * Shared, double: dS [K, V], a and da (dg's terms) [K], du, res [V], the partials rows [Pc, K + 1] (S_t do, then
 * dk) and cols (dS^T k and S'^T k [2, Pr, V], then dS S_{t-1} [Pc, K + 1]); f32: q, k [K], v, do [V]. The
 * padding K + 1 spreads a warp's writes of one row's partials over the banks. With checkpoints, a chunk at a time
 * from the last: its states first recomputed into the chunk buffer from the checkpoint before it, by the forward's
 * arithmetic in the forward's order (so the same bits), the partials of S'^T k in cols. */
__global__ void __launch_bounds__(kDeltaThreads) delta_bwd_kernel(const DeltaArgs p) {
    extern __shared__ double sm[];
    const int K = p.K, V = p.V, Pr = p.Pr, Pc = p.Pc, Kp = K + 1, rp = threadIdx.x / Pc, cp = threadIdx.x % Pc;
    const int tid = threadIdx.x, nt = blockDim.x;
    const int64_t b = blockIdx.x / p.H, h = blockIdx.x % p.H, KV = (int64_t)K * V;
    double *dS = sm, *a = dS + KV, *da = a + K, *du = da + K, *res = du + V, *rows = res + V, *cols = rows + Pc * Kp;
    float *q = (float *)(cols + delta_cols(K, V, Pr, Pc)), *k = q + K, *v = k + K, *dout = v + V;
    float *S = p.S + blockIdx.x * p.slots * KV;
    for (int64_t e = tid; e < KV; e += nt) dS[e] = 0;
    const int64_t L = p.C ? p.C : p.T; /* chunk length */
    for (int64_t c0 = (p.T - 1) / L * L; c0 >= 0; c0 -= L) {
        const int64_t c1 = c0 + L < p.T ? c0 + L : p.T;
        const float *before = c0 ? S + (p.C ? c0 / p.C - 1 : c0 - 1) * KV : nullptr; /* S_{c0 - 1} */
        for (int64_t t = c0; p.C && t < c1; t++) { /* the chunk's states again, as delta_fwd_kernel made them */
            const int64_t r = (b * p.T + t) * p.H + h;
            float *St = S + state_slot(p, t) * KV;
            const float *pv = t > c0 ? S + state_slot(p, t - 1) * KV : before;
            delta_load(p, r, a, q, k, v, nullptr);
            __syncthreads();
            for (int j = cp; j < V; j += Pc) {
                double sk = 0;
                for (int i = rp; i < K; i += Pr) {
                    const float sp = pv ? (float)(a[i] * pv[i * V + j]) : 0.0f;
                    St[i * V + j] = sp;
                    sk += (double)sp * k[i];
                }
                cols[rp * V + j] = sk;
            }
            __syncthreads();
            for (int j = cp; j < V; j += Pc) {
                const double u = p.beta ? p.beta[r] * (v[j] - group_sum(cols, Pr, V, j)) : v[j];
                for (int i = rp; i < K; i += Pr) St[i * V + j] = (float)(St[i * V + j] + k[i] * u);
            }
            __syncthreads();
        }
        for (int64_t t = c1 - 1; t >= c0; t--) {
            const int64_t r = (b * p.T + t) * p.H + h;
            const double bt = p.beta ? p.beta[r] : 1.0;
            const float *St = S + state_slot(p, t) * KV, *prev = t > c0 ? S + state_slot(p, t - 1) * KV : before;
            delta_load(p, r, a, q, k, v, dout);
            __syncthreads();
            for (int i = rp; i < K; i += Pr) {
                double dq = 0;
                for (int j = cp; j < V; j += Pc) dq += (double)St[i * V + j] * dout[j];
                rows[cp * Kp + i] = dq;
            }
            for (int j = cp; j < V; j += Pc) {
                double d = 0, sk = 0;
                for (int i = rp; i < K; i += Pr) {
                    double &ds = dS[i * V + j];
                    ds += p.scale * q[i] * dout[j];
                    d += ds * k[i];
                    if (prev) sk += a[i] * prev[i * V + j] * k[i];
                }
                cols[rp * V + j] = d, cols[(Pr + rp) * V + j] = sk;
            }
            __syncthreads();
            for (int j = tid; j < V; j += nt) {
                du[j] = group_sum(cols, Pr, V, j);
                res[j] = p.beta ? v[j] - group_sum(cols + Pr * V, Pr, V, j) : v[j];
                p.dv[r * V + j] = (float)(bt * du[j]);
            }
            for (int i = tid; i < K; i += nt) p.dq[r * K + i] = (float)(p.scale * group_sum(rows, Pc, Kp, i));
            __syncthreads();
            if (p.beta && tid == 0) {
                double db = 0;
                for (int j = 0; j < V; j++) db += du[j] * res[j];
                p.dbeta[r] = (float)db;
            }
            for (int i = rp; i < K; i += Pr) {
                double dk = 0, acc = 0;
                for (int j = cp; j < V; j += Pc) {
                    double &ds = dS[i * V + j];
                    const double pv = prev ? prev[i * V + j] : 0.0;
                    dk += ds * bt * res[j];
                    if (p.beta) {
                        dk -= bt * (a[i] * pv) * du[j];
                        ds -= bt * k[i] * du[j];
                    }
                    acc += ds * pv;
                    ds *= a[i];
                }
                rows[cp * Kp + i] = dk, cols[cp * Kp + i] = acc;
            }
            __syncthreads();
            for (int i = tid; i < K; i += nt) {
                p.dk[r * K + i] = (float)group_sum(rows, Pc, Kp, i);
                da[i] = a[i] * group_sum(cols, Pc, Kp, i);
                if (p.g && p.channel) p.dg[r * K + i] = (float)da[i];
            }
            __syncthreads(); /* before the next step's loads overwrite a */
            if (p.g && !p.channel && tid == 0) {
                double dg = 0;
                for (int i = 0; i < K; i++) dg += da[i];
                p.dg[r] = (float)dg;
            }
        }
    }
}

/* The shape's sizes and chunk, for either form. */
hae_status delta_check(const hae_tr_delta_shape *s, const char *op) {
    if (s->B < 0 || s->T < 0 || s->H < 0 || s->K < 1 || s->V < 1 || s->chunk < 0)
        return hae_error(HAE_ERR_INVALID, "%s (cuda): B %lld, T %lld, H %lld, K %lld, V %lld, chunk %lld", op,
                         (long long)s->B, (long long)s->T, (long long)s->H, (long long)s->K, (long long)s->V,
                         (long long)s->chunk);
    return HAE_OK;
}

/* Checks the shape against the device's shared memory and fills the arguments common to both directions;
 * *bytes = 0 when there is nothing to do. */
hae_status delta_setup(hae_backend *be, const hae_tr_delta_shape *s, bool bwd, DeltaArgs *p, size_t *bytes) {
    const char *op = bwd ? "hae_tr_delta_bwd" : "hae_tr_delta_fwd";
    HAE_TRY(delta_check(s, op));
    *bytes = 0;
    if (s->B * s->H * s->T == 0) return HAE_OK;
    const int64_t K = s->K, V = s->V, Pc = min64(V, 32), Pr = min64(K, kDeltaThreads / Pc);
    const int64_t nd = bwd ? K * V + 2 * K + 2 * V + Pc * (K + 1) + delta_cols(K, V, Pr, Pc) : K + 2 * Pr * V;
    const int64_t nf = bwd ? 2 * K + 2 * V : K * V + 2 * K + V;
    const size_t need = (size_t)nd * sizeof(double) + (size_t)nf * sizeof(float);
    int optin = 0;
    HAE_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, be->cuda->device));
    if (need > (size_t)optin)
        return hae_error(HAE_ERR_UNSUPPORTED,
                         "%s (cuda): a K x V = %lld x %lld state needs %zu bytes of shared memory, the device has %d",
                         op, (long long)K, (long long)V, need, optin);
    HAE_CUDA_CHECK(cudaFuncSetAttribute(bwd ? delta_bwd_kernel : delta_fwd_kernel,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, (int)need));
    *p = DeltaArgs{};
    p->T = s->T, p->H = s->H, p->K = (int)K, p->V = (int)V, p->Pr = (int)Pr, p->Pc = (int)Pc;
    p->C = s->every > 1 && s->every < s->T ? s->every : 0; /* as hae_tr_delta_slots */
    p->nck = p->C ? (s->T + p->C - 1) / p->C : 0, p->slots = p->C ? p->nck + p->C : s->T;
    p->channel = s->channel_decay, p->scale = s->scale;
    *bytes = need;
    return HAE_OK;
}

/* ---------------------------------------------------------------- the recurrence's chunk form
 * The math is train_ops.h's (hae_tr_delta_shape.chunk). One block per (sequence, head) walks its chunks in order
 * (forward) or from the last (backward); inside a chunk every product is spread over the threads, one output
 * element per thread and its sum in a fixed order (no atomics), in f32. Where the recurrence takes one step per
 * token, this takes about a dozen barriers per chunk. Decay factors are exponentials of differences of Γ within a
 * chunk (Γ falls with i), so none exceeds 1 and nothing overflows. */
constexpr int kChunkThreads = 256;

struct ChunkArgs {
    const float *q, *k, *v, *g, *beta, *dout;
    float *S, *o, *dq, *dk, *dv, *dg, *dbeta; /* S: one state per chunk, nck per block */
    int64_t T, H, nck;
    int K, V, L; /* L: the chunk length */
    bool channel;
    float scale;
};

/* Shared floats of the per-chunk preparation: Γ, q, k [L, K], A, P [L, L], u, z [L, V], beta [L]. */
__host__ __device__ __forceinline__ int64_t chunk_prep_floats(int64_t K, int64_t V, int64_t L) {
    return 3 * L * K + 2 * L * L + 2 * L * V + L;
}

/* The x-th term of a sum over n starting at off (< n): threads whose rows are n apart in shared memory start at
 * different offsets, so a warp's reads spread over the banks. */
__device__ __forceinline__ int skew(int x, int off, int n) { return x + off < n ? x + off : x + off - n; }

struct ChunkSmem {
    float *gam, *q, *k, *A, *P, *u, *z, *bet;
};

__device__ ChunkSmem chunk_smem(const ChunkArgs &p, float *base) {
    ChunkSmem m;
    const int L = p.L, K = p.K, V = p.V;
    m.gam = base, m.q = m.gam + L * K, m.k = m.q + L * K, m.A = m.k + L * K, m.P = m.A + L * L;
    m.u = m.P + L * L, m.z = m.u + L * V, m.bet = m.z + L * V;
    return m;
}

/* Tokens t0 .. t0 + n - 1 of (b, h) with S0 the state before them (NULL: zero): Γ, q, k and beta into shared
 * memory, then A, P and z = V - K~ S0 (or V), then u (M u = diag(beta) z by forward substitution, one thread per
 * value column; u = V without the delta rule). Ends on a barrier. */
__device__ void chunk_prep(const ChunkArgs &p, const ChunkSmem &m, int64_t b, int64_t h, int64_t t0, int n,
                           const float *S0) {
    const int K = p.K, V = p.V, tid = threadIdx.x, nt = blockDim.x;
    const bool delta = p.beta != nullptr;
    auto row = [&](int i) { return (b * p.T + t0 + i) * p.H + h; };
    for (int e = tid; e < n * K; e += nt) {
        const int i = e / K, c = e % K;
        m.q[e] = p.q[row(i) * K + c], m.k[e] = p.k[row(i) * K + c];
    }
    for (int c = tid; c < K; c += nt) {
        float acc = 0.0f;
        for (int i = 0; i < n; i++) {
            if (p.g) acc += p.channel ? p.g[row(i) * K + c] : p.g[row(i)];
            m.gam[i * K + c] = acc;
        }
    }
    for (int i = tid; i < n; i += nt) m.bet[i] = delta ? p.beta[row(i)] : 1.0f;
    __syncthreads();
    for (int e = tid; e < n * n; e += nt) {
        const int i = e / n, j = e % n;
        float a = 0.0f, pq = 0.0f;
        if (j <= i)
            for (int x = 0; x < K; x++) {
                const int c = skew(x, j % K, K);
                const float E = __expf(m.gam[i * K + c] - m.gam[j * K + c]) * m.k[j * K + c];
                a += m.k[i * K + c] * E, pq += m.q[i * K + c] * E;
            }
        m.A[i * p.L + j] = j < i ? a : 0.0f, m.P[i * p.L + j] = pq;
    }
    for (int e = tid; e < n * V; e += nt) {
        const int i = e / V, jv = e % V;
        float z = p.v[row(i) * V + jv];
        if (delta && S0)
            for (int c = 0; c < K; c++) z -= m.k[i * K + c] * __expf(m.gam[i * K + c]) * S0[c * V + jv];
        m.z[i * V + jv] = z;
    }
    __syncthreads();
    for (int jv = tid; jv < V; jv += nt)
        for (int i = 0; i < n; i++) {
            float acc = m.z[i * V + jv];
            for (int j = 0; delta && j < i; j++) acc -= m.A[i * p.L + j] * m.u[j * V + jv];
            m.u[i * V + jv] = delta ? m.bet[i] * acc : acc;
        }
    __syncthreads();
}

/* Per chunk: o = scale (Q~ S0 + P u), then S = diag(e^{Γ_L}) S0 + K^^T u, kept in shared memory and stored as
 * the chunk's slot. Shared: the preparation's floats, then S [K, V]. */
__global__ void __launch_bounds__(kChunkThreads) chunk_fwd_kernel(const ChunkArgs p) {
    extern __shared__ float fsm[];
    const ChunkSmem m = chunk_smem(p, fsm);
    const int K = p.K, V = p.V, L = p.L, tid = threadIdx.x, nt = blockDim.x;
    const int64_t b = blockIdx.x / p.H, h = blockIdx.x % p.H, KV = (int64_t)K * V;
    float *S = fsm + chunk_prep_floats(K, V, L);
    float *Sw = p.S + blockIdx.x * p.nck * KV;
    for (int64_t c0 = 0, ck = 0; c0 < p.T; c0 += L, ck++) {
        const int n = (int)min64(L, p.T - c0), last = n - 1;
        chunk_prep(p, m, b, h, c0, n, c0 ? S : nullptr);
        for (int e = tid; e < n * V; e += nt) {
            const int i = e / V, jv = e % V;
            float acc = 0.0f;
            for (int c = 0; c0 && c < K; c++) acc += m.q[i * K + c] * __expf(m.gam[i * K + c]) * S[c * V + jv];
            for (int j = 0; j <= i; j++) acc += m.P[i * L + j] * m.u[j * V + jv];
            p.o[((b * p.T + c0 + i) * p.H + h) * V + jv] = p.scale * acc;
        }
        __syncthreads();
        for (int64_t e = tid; e < KV; e += nt) {
            const int c = (int)(e / V), jv = (int)(e % V);
            const float gl = m.gam[last * K + c];
            float acc = c0 ? __expf(gl) * S[e] : 0.0f;
            for (int j = 0; j < n; j++) acc += m.k[j * K + c] * __expf(gl - m.gam[j * K + c]) * m.u[j * V + jv];
            S[e] = acc;
            Sw[ck * KV + e] = acc;
        }
        __syncthreads();
    }
}

/* Per chunk from the last, with dS the gradient of its final state: the preparation again from the stored S0,
 * then dP = scale dO u^T and du = scale P^T dO + K^ dS; w = M^-T du (back substitution per value column); dv,
 * dbeta and wu_ij = w_i . u_j (so dA_ij = -beta_i wu_ij); then per (token, channel) dq, dk and dΓ, each a sum
 * over the chunk's tokens of its products' terms; dg from the reversed running sum of dΓ; last the chunk
 * before's dS. Shared: the preparation's floats, then dS [K, V], dO and w [L, V], dP and wu [L, L], dΓ and
 * Γ_L's terms from K^ [L, K]. */
__global__ void __launch_bounds__(kChunkThreads) chunk_bwd_kernel(const ChunkArgs p) {
    extern __shared__ float fsm[];
    const ChunkSmem m = chunk_smem(p, fsm);
    const int K = p.K, V = p.V, L = p.L, tid = threadIdx.x, nt = blockDim.x;
    const bool delta = p.beta != nullptr;
    const int64_t b = blockIdx.x / p.H, h = blockIdx.x % p.H, KV = (int64_t)K * V;
    float *dS = fsm + chunk_prep_floats(K, V, L), *dO = dS + KV, *w = dO + L * V, *dP = w + L * V, *wu = dP + L * L;
    float *dgam = wu + L * L, *gl_terms = dgam + L * K;
    const float *Sw = p.S + blockIdx.x * p.nck * KV;
    for (int64_t e = tid; e < KV; e += nt) dS[e] = 0.0f;
    for (int64_t ck = p.nck - 1; ck >= 0; ck--) {
        const int64_t c0 = ck * L;
        const int n = (int)min64(L, p.T - c0), last = n - 1;
        const float *S0 = ck ? Sw + (ck - 1) * KV : nullptr;
        auto row = [&](int i) { return (b * p.T + c0 + i) * p.H + h; };
        for (int e = tid; e < n * V; e += nt) dO[e] = p.dout[row(e / V) * V + e % V];
        chunk_prep(p, m, b, h, c0, n, S0); /* its first barrier also covers dO */
        for (int e = tid; e < n * n; e += nt) {
            const int i = e / n, j = e % n;
            float d = 0.0f;
            for (int x = 0; j <= i && x < V; x++) {
                const int jv = skew(x, j % V, V);
                d += dO[i * V + jv] * m.u[j * V + jv];
            }
            dP[i * L + j] = p.scale * d;
        }
        for (int e = tid; e < n * V; e += nt) {
            const int j = e / V, jv = e % V;
            float d = 0.0f;
            for (int i = j; i < n; i++) d += m.P[i * L + j] * dO[i * V + jv];
            d *= p.scale;
            for (int c = 0; c < K; c++)
                d += m.k[j * K + c] * __expf(m.gam[last * K + c] - m.gam[j * K + c]) * dS[c * V + jv];
            w[e] = d;
        }
        __syncthreads();
        for (int jv = tid; delta && jv < V; jv += nt)
            for (int j = n - 2; j >= 0; j--) {
                float acc = w[j * V + jv];
                for (int i = j + 1; i < n; i++) acc -= m.bet[i] * m.A[i * L + j] * w[i * V + jv];
                w[j * V + jv] = acc;
            }
        __syncthreads();
        for (int e = tid; e < n * n; e += nt) {
            const int i = e / n, j = e % n;
            float d = 0.0f;
            for (int x = 0; delta && j < i && x < V; x++) {
                const int jv = skew(x, j % V, V);
                d += w[i * V + jv] * m.u[j * V + jv];
            }
            wu[i * L + j] = d;
        }
        for (int e = tid; e < n * V; e += nt) p.dv[row(e / V) * V + e % V] = m.bet[e / V] * w[e];
        __syncthreads();
        for (int i = tid; delta && i < n; i += nt) {
            float db = 0.0f;
            for (int jv = 0; jv < V; jv++) db += w[i * V + jv] * m.z[i * V + jv];
            for (int j = 0; j < i; j++) db -= m.A[i * L + j] * wu[i * L + j];
            p.dbeta[row(i)] = db;
        }
        for (int e = tid; e < n * K; e += nt) {
            const int i = e / K, c = e % K;
            const float qi = m.q[e], ki = m.k[e], gi = m.gam[e], ei = __expf(gi), eh = __expf(m.gam[last * K + c] - gi);
            float dqt = 0.0f, dkh = 0.0f, dkt = 0.0f;
            for (int x = 0; x < V; x++) {
                const int jv = skew(x, c % V, V);
                const float s0 = S0 ? S0[c * V + jv] : 0.0f;
                dqt += dO[i * V + jv] * s0;
                dkh += m.u[i * V + jv] * dS[c * V + jv];
                dkt += s0 * w[i * V + jv];
            }
            dqt *= p.scale;
            dkt = delta ? -m.bet[i] * dkt : 0.0f;
            float dq = dqt * ei, dk = dkh * eh + dkt * ei, dg = (dqt * qi + dkt * ki) * ei - dkh * ki * eh;
            for (int j = 0; j <= i; j++) { /* j <= i: P_ij and A_ij (j < i) hold q_i or k_i against k_j */
                const float E = __expf(gi - m.gam[j * K + c]), kj = m.k[j * K + c];
                const float dA = j < i ? -m.bet[i] * wu[i * L + j] : 0.0f, coef = dP[i * L + j] * qi + dA * ki;
                dq += dP[i * L + j] * kj * E;
                dk += dA * kj * E;
                dg += coef * kj * E;
            }
            for (int t = i; t < n; t++) { /* t >= i: P_ti and A_ti (t > i) hold q_t or k_t against k_i */
                const float E = __expf(m.gam[t * K + c] - gi);
                const float dA = t > i ? -m.bet[t] * wu[t * L + i] : 0.0f;
                const float coef = dP[t * L + i] * m.q[t * K + c] + dA * m.k[t * K + c];
                dk += coef * E;
                dg -= coef * ki * E;
            }
            p.dq[row(i) * K + c] = dq, p.dk[row(i) * K + c] = dk;
            dgam[e] = dg, gl_terms[e] = dkh * ki * eh;
        }
        __syncthreads();
        for (int c = tid; p.g && c < K; c += nt) {
            const float gl = m.gam[last * K + c];
            float acc = 0.0f, sd = 0.0f;
            for (int i = 0; i < n; i++) acc += gl_terms[i * K + c];
            for (int x = 0; S0 && x < V; x++) {
                const int jv = skew(x, c % V, V);
                sd += S0[c * V + jv] * dS[c * V + jv];
            }
            float run = dgam[last * K + c] + acc + __expf(gl) * sd;
            dgam[last * K + c] = run;
            for (int i = last - 1; i >= 0; i--) {
                run += dgam[i * K + c];
                dgam[i * K + c] = run;
            }
            for (int i = 0; p.channel && i < n; i++) p.dg[row(i) * K + c] = dgam[i * K + c];
        }
        __syncthreads();
        for (int i = tid; p.g && !p.channel && i < n; i += nt) {
            float acc = 0.0f;
            for (int c = 0; c < K; c++) acc += dgam[i * K + c];
            p.dg[row(i)] = acc;
        }
        for (int64_t e = tid; e < KV; e += nt) {
            const int c = (int)(e / V), jv = (int)(e % V);
            float acc = __expf(m.gam[last * K + c]) * dS[e];
            for (int i = 0; i < n; i++) {
                const float ei = __expf(m.gam[i * K + c]);
                acc += p.scale * m.q[i * K + c] * ei * dO[i * V + jv];
                if (delta) acc -= m.bet[i] * m.k[i * K + c] * ei * w[i * V + jv];
            }
            dS[e] = acc;
        }
        __syncthreads();
    }
}

/* Checks the chunk form's shape against the device's shared memory and fills its arguments; *bytes = 0 when
 * there is nothing to do. */
hae_status chunk_setup(hae_backend *be, const hae_tr_delta_shape *s, bool bwd, ChunkArgs *p, size_t *bytes) {
    const char *op = bwd ? "hae_tr_delta_bwd" : "hae_tr_delta_fwd";
    HAE_TRY(delta_check(s, op));
    *bytes = 0;
    if (s->B * s->H * s->T == 0) return HAE_OK;
    const int64_t K = s->K, V = s->V, L = min64(s->chunk, s->T);
    const int64_t nf = chunk_prep_floats(K, V, L) + K * V + (bwd ? 2 * L * V + 2 * L * L + 2 * L * K : 0);
    const size_t need = (size_t)nf * sizeof(float);
    int optin = 0;
    HAE_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, be->cuda->device));
    if (need > (size_t)optin)
        return hae_error(HAE_ERR_UNSUPPORTED,
                         "%s (cuda): the chunk form with chunks of %lld tokens and a K x V = %lld x %lld state needs "
                         "%zu bytes of shared memory, the device has %d; a shorter chunk needs less",
                         op, (long long)L, (long long)K, (long long)V, need, optin);
    HAE_CUDA_CHECK(cudaFuncSetAttribute(bwd ? chunk_bwd_kernel : chunk_fwd_kernel,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, (int)need));
    *p = ChunkArgs{};
    p->T = s->T, p->H = s->H, p->K = (int)K, p->V = (int)V, p->L = (int)L;
    p->nck = (s->T + L - 1) / L;
    p->channel = s->channel_decay, p->scale = s->scale;
    *bytes = need;
    return HAE_OK;
}

/* ---------------------------------------------------------------- the causal depthwise conv */
constexpr int kConvMaxW = 8; /* the weight gradient's per-thread accumulators */

hae_status conv_check(const char *op, int64_t W) {
    if (W < 1 || W > kConvMaxW)
        return hae_error(HAE_ERR_UNSUPPORTED, "%s (cuda): conv width %lld not in [1, %d]", op, (long long)W, kConvMaxW);
    return HAE_OK;
}

/* s[b, t, c] = sum_w weight[c, w] x[b, t + w - (W - 1), c] in double (x = 0 before t = 0); pre = s,
 * out = silu(s) or s. One thread per element. */
__global__ void conv_fwd_kernel(const float *x, const float *weight, int64_t n, int64_t T, int64_t C, int W, bool silu,
                                float *pre, float *out) {
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t c = e % C, t = e / C % T;
        double s = 0;
        for (int w = 0; w < W; w++) {
            const int64_t u = t + w - (W - 1);
            if (u >= 0) s += (double)weight[c * W + w] * x[e + (u - t) * C];
        }
        pre[e] = (float)s;
        out[e] = (float)(silu ? s / (1.0 + exp(-s)) : s);
    }
}

/* ds = dout act'(s) at element e, rounded to f32 as the CPU keeps it. */
__device__ __forceinline__ float conv_ds(const float *dout, const float *pre, bool silu, int64_t e) {
    if (!silu) return dout[e];
    const double s = pre[e], sg = sigmoid(s);
    return (float)(dout[e] * (sg * (1.0 + s * (1.0 - sg))));
}

/* dx[b, u, c] = sum_w weight[c, w] ds[b, u + W - 1 - w, c] over t < T. One thread per element. */
__global__ void conv_dx_kernel(const float *weight, const float *pre, const float *dout, int64_t n, int64_t T,
                               int64_t C, int W, bool silu, float *dx) {
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t c = e % C, u = e / C % T;
        double d = 0;
        for (int w = 0; w < W; w++) {
            const int64_t t = u + (W - 1) - w;
            if (t < T) d += (double)weight[c * W + w] * conv_ds(dout, pre, silu, e + (t - u) * C);
        }
        dx[e] = (float)d;
    }
}

/* part[b, c, w] = sum over t in order of ds[b, t, c] x[b, t + w - (W - 1), c]: sequence b's share of the weight
 * gradient (the first stage; the chunks are the sequences). One thread per (b, c). */
__global__ void conv_dw_kernel(const float *x, const float *pre, const float *dout, int64_t B, int64_t T, int64_t C,
                               int W, bool silu, double *part) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t bc = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; bc < B * C; bc += stride) {
        const int64_t base = bc / C * T * C + bc % C; /* element (b, 0, c) */
        double acc[kConvMaxW] = {};
        for (int64_t t = 0; t < T; t++) {
            const double ds = conv_ds(dout, pre, silu, base + t * C);
#pragma unroll
            for (int w = 0; w < kConvMaxW; w++) {
                const int64_t u = t + w - (W - 1);
                if (w < W && u >= 0) acc[w] += ds * x[base + u * C];
            }
        }
#pragma unroll
        for (int w = 0; w < kConvMaxW; w++)
            if (w < W) part[bc * W + w] = acc[w];
    }
}

/* ---------------------------------------------------------------- per-row norms: one warp per row
 * Lane l takes columns l, l + 32, ..; a row's sums go through hae_warp_sum. */

/* r = 1 / sqrt(sum x^2 + eps) (as l2_rinv); forward y = x r; backward dx = (dy - x r (x r . dy)) r. */
template <bool BWD>
__global__ void l2norm_kernel(const float *x, const float *dy, int64_t N, int64_t D, double eps, float *out) {
    const int lane = threadIdx.x & 31;
    for (int64_t row = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32; row < N;
         row += (int64_t)gridDim.x * blockDim.x / 32) {
        const float *xr = x + row * D, *dyr = BWD ? dy + row * D : nullptr;
        double ss = 0;
        for (int64_t d = lane; d < D; d += 32) ss += (double)xr[d] * xr[d];
        const double r = 1.0 / sqrt(hae_warp_sum(ss) + eps);
        double ydy = 0;
        if (BWD) {
            for (int64_t d = lane; d < D; d += 32) ydy += xr[d] * r * dyr[d];
            ydy = hae_warp_sum(ydy);
        }
        for (int64_t d = lane; d < D; d += 32)
            out[row * D + d] = (float)(BWD ? (dyr[d] - xr[d] * r * ydy) * r : xr[d] * r);
    }
}

/* r = 1 / sqrt(mean x^2 + eps), z = x r, sg = sigmoid(gate). Forward: y = z w sg. Backward, with
 * ez = mean(dy w sg z): dx = r (dy w sg - z ez), dgate = dy z w sg (1 - sg), and r kept in rinv for dw. */
template <bool BWD>
__global__ void gnorm_kernel(const float *x, const float *gate, const float *w, const float *dy, int64_t N, int64_t D,
                             double eps, float *out, float *dgate, double *rinv) {
    const int lane = threadIdx.x & 31;
    for (int64_t row = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32; row < N;
         row += (int64_t)gridDim.x * blockDim.x / 32) {
        const float *xr = x + row * D, *g = gate + row * D, *dyr = BWD ? dy + row * D : nullptr;
        double ss = 0;
        for (int64_t d = lane; d < D; d += 32) ss += (double)xr[d] * xr[d];
        const double r = 1.0 / sqrt(hae_warp_sum(ss) / (double)D + eps);
        if (!BWD) {
            for (int64_t d = lane; d < D; d += 32) out[row * D + d] = (float)(xr[d] * r * w[d] * sigmoid(g[d]));
            continue;
        }
        double ez = 0;
        for (int64_t d = lane; d < D; d += 32) ez += dyr[d] * w[d] * sigmoid(g[d]) * xr[d] * r;
        ez = hae_warp_sum(ez) / (double)D;
        for (int64_t d = lane; d < D; d += 32) {
            const double z = xr[d] * r, sg = sigmoid(g[d]);
            out[row * D + d] = (float)(r * (dyr[d] * w[d] * sg - z * ez));
            dgate[row * D + d] = (float)(dyr[d] * z * w[d] * sg * (1.0 - sg));
        }
        if (lane == 0) rinv[row] = r;
    }
}

/* part[c, d] = sum over chunk c's rows i in order of dy x r_i sigmoid(gate): the first stage of dw. */
__global__ void gnorm_dw_kernel(const float *x, const float *gate, const float *dy, const double *rinv, int64_t N,
                                int64_t D, int64_t rows, int64_t nch, double *part) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t cd = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; cd < nch * D; cd += stride) {
        const int64_t c = cd / D, d = cd % D;
        double s = 0;
        for (int64_t i = c * rows; i < min64(N, (c + 1) * rows); i++) {
            const int64_t e = i * D + d;
            s += dy[e] * x[e] * rinv[i] * sigmoid(gate[e]);
        }
        part[cd] = s;
    }
}

/* ---------------------------------------------------------------- the log decay from the raw gate
 * For N tokens of HV heads with n raw values each: column col = j n + i of a token's HV n. */
constexpr int kDecayThreads = 128;

/* g at x = raw + dt_bias with A = exp(A_log), and dg/dx, dg/dA_log, in double as the CPU's decay_of:
 * softplus gate g = -A softplus(x); safe gate g = lb sigmoid(A x). */
__device__ double decay_of(double x, double A, bool safe, double lb, double *dx, double *dA_log) {
    if (safe) {
        const double s = sigmoid(A * x), ds = s * (1.0 - s);
        *dx = lb * ds * A, *dA_log = lb * ds * A * x;
        return lb * s;
    }
    const double sp = x > 20.0 ? x : log1p(exp(x));
    *dx = -A * sigmoid(x), *dA_log = -A * sp;
    return -A * sp;
}

/* One thread per element. */
__global__ void decay_fwd_kernel(const float *raw, const float *A_log, const float *dt_bias, int64_t total,
                                 int64_t HV, int64_t n, bool safe, double lb, float *g) {
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t col = e % (HV * n);
        double dx, da;
        g[e] = (float)decay_of((double)raw[e] + dt_bias[col], exp((double)A_log[col / n]), safe, lb, &dx, &da);
    }
}

/* Block (c, j): chunk c of the tokens, head j, threads over the head's n columns. draw = dg dg/dx;
 * part_b[c, j n + i] = the chunk's sum of dg dg/dx in token order (ddt_bias's first stage); part_a[c, j] = that
 * of dg dg/dA_log over the chunk's tokens and the head's columns, thread by thread (dA_log's). */
__global__ void __launch_bounds__(kDecayThreads)
    decay_bwd_kernel(const float *raw, const float *A_log, const float *dt_bias, const float *dg, int64_t N, int64_t HV,
                     int64_t n, bool safe, double lb, int64_t rows, float *draw, double *part_b, double *part_a) {
    __shared__ double sa_part[kDecayThreads];
    const int64_t c = blockIdx.x, j = blockIdx.y, t1 = min64(N, (c + 1) * rows);
    const double A = exp((double)A_log[j]);
    double sa = 0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        double sb = 0;
        for (int64_t t = c * rows; t < t1; t++) {
            const int64_t e = (t * HV + j) * n + i;
            double dx, da;
            decay_of((double)raw[e] + dt_bias[j * n + i], A, safe, lb, &dx, &da);
            draw[e] = (float)(dg[e] * dx);
            sb += dg[e] * dx, sa += dg[e] * da;
        }
        part_b[(c * HV + j) * n + i] = sb;
    }
    sa_part[threadIdx.x] = sa;
    __syncthreads();
    if (threadIdx.x == 0) part_a[c * HV + j] = group_sum(sa_part, blockDim.x, 1, 0);
}

} // namespace

/* ---------------------------------------------------------------- entry points */

extern "C" hae_status hae_tr_delta_fwd_cuda(hae_backend *be, const hae_tr_delta_shape *s, const float *q,
                                            const float *k, const float *v, const float *g, const float *beta,
                                            float *S, float *o) {
    cudaStream_t st;
    HAE_TRY(hae_cuda_enter(be, &st));
    size_t bytes;
    if (s->chunk > 0) {
        ChunkArgs c;
        HAE_TRY(chunk_setup(be, s, false, &c, &bytes));
        if (!bytes) return HAE_OK;
        c.q = q, c.k = k, c.v = v, c.g = g, c.beta = beta, c.S = S, c.o = o;
        chunk_fwd_kernel<<<(unsigned)(s->B * s->H), kChunkThreads, bytes, st>>>(c);
        HAE_CUDA_LAUNCH_CHECK("chunk_fwd_kernel");
        return HAE_OK;
    }
    DeltaArgs p;
    HAE_TRY(delta_setup(be, s, false, &p, &bytes));
    if (!bytes) return HAE_OK;
    p.q = q, p.k = k, p.v = v, p.g = g, p.beta = beta, p.S = S, p.o = o;
    delta_fwd_kernel<<<(unsigned)(s->B * s->H), p.Pr * p.Pc, bytes, st>>>(p);
    HAE_CUDA_LAUNCH_CHECK("delta_fwd_kernel");
    return HAE_OK;
}

extern "C" hae_status hae_tr_delta_bwd_cuda(hae_backend *be, const hae_tr_delta_shape *s, const float *q,
                                            const float *k, const float *v, const float *g, const float *beta,
                                            float *S, const float *dout, float *dq, float *dk, float *dv,
                                            float *dg, float *dbeta) {
    cudaStream_t st;
    HAE_TRY(hae_cuda_enter(be, &st));
    size_t bytes;
    if (s->chunk > 0) {
        ChunkArgs c;
        HAE_TRY(chunk_setup(be, s, true, &c, &bytes));
        if (!bytes) return HAE_OK;
        c.q = q, c.k = k, c.v = v, c.g = g, c.beta = beta, c.S = S, c.dout = dout;
        c.dq = dq, c.dk = dk, c.dv = dv, c.dg = dg, c.dbeta = dbeta;
        chunk_bwd_kernel<<<(unsigned)(s->B * s->H), kChunkThreads, bytes, st>>>(c);
        HAE_CUDA_LAUNCH_CHECK("chunk_bwd_kernel");
        return HAE_OK;
    }
    DeltaArgs p;
    HAE_TRY(delta_setup(be, s, true, &p, &bytes));
    if (!bytes) return HAE_OK;
    p.q = q, p.k = k, p.v = v, p.g = g, p.beta = beta, p.S = S, p.dout = dout;
    p.dq = dq, p.dk = dk, p.dv = dv, p.dg = dg, p.dbeta = dbeta;
    delta_bwd_kernel<<<(unsigned)(s->B * s->H), p.Pr * p.Pc, bytes, st>>>(p);
    HAE_CUDA_LAUNCH_CHECK("delta_bwd_kernel");
    return HAE_OK;
}

extern "C" hae_status hae_tr_conv_fwd_cuda(hae_backend *be, const float *x, const float *weight, int64_t B, int64_t T,
                                           int64_t C, int64_t W, bool silu, float *pre, float *out) {
    cudaStream_t st;
    HAE_TRY(hae_cuda_enter(be, &st));
    HAE_TRY(conv_check("hae_tr_conv_fwd", W));
    const int64_t n = B * T * C;
    conv_fwd_kernel<<<hae_cuda_blocks(n, kThreads), kThreads, 0, st>>>(x, weight, n, T, C, (int)W, silu, pre, out);
    HAE_CUDA_LAUNCH_CHECK("conv_fwd_kernel");
    return HAE_OK;
}

extern "C" hae_status hae_tr_conv_bwd_cuda(hae_backend *be, const float *x, const float *weight, const float *pre,
                                           const float *dout, int64_t B, int64_t T, int64_t C, int64_t W, bool silu,
                                           float *dx, float *dweight) {
    cudaStream_t st;
    HAE_TRY(hae_cuda_enter(be, &st));
    HAE_TRY(conv_check("hae_tr_conv_bwd", W));
    if ((size_t)(B * C * W) * sizeof(double) > be->cuda->scratch_bytes)
        return hae_error(HAE_ERR_UNSUPPORTED,
                         "hae_tr_conv_bwd (cuda): B x C x W = %lld x %lld x %lld partials exceed %zu bytes of scratch",
                         (long long)B, (long long)C, (long long)W, be->cuda->scratch_bytes);
    double *part = (double *)be->cuda->scratch;
    conv_dw_kernel<<<hae_cuda_blocks(B * C, kThreads), kThreads, 0, st>>>(x, pre, dout, B, T, C, (int)W, silu, part);
    HAE_CUDA_LAUNCH_CHECK("conv_dw_kernel");
    HAE_TRY(sum_chunks(st, part, B, C * W, dweight));
    const int64_t n = B * T * C;
    conv_dx_kernel<<<hae_cuda_blocks(n, kThreads), kThreads, 0, st>>>(weight, pre, dout, n, T, C, (int)W, silu, dx);
    HAE_CUDA_LAUNCH_CHECK("conv_dx_kernel");
    return HAE_OK;
}

extern "C" hae_status hae_tr_l2norm_fwd_cuda(hae_backend *be, const float *x, int64_t N, int64_t D, float eps,
                                             float *y) {
    cudaStream_t st;
    HAE_TRY(hae_cuda_enter(be, &st));
    l2norm_kernel<false><<<hae_cuda_blocks(N, kThreads / 32), kThreads, 0, st>>>(x, nullptr, N, D, eps, y);
    HAE_CUDA_LAUNCH_CHECK("l2norm_kernel<fwd>");
    return HAE_OK;
}

extern "C" hae_status hae_tr_l2norm_bwd_cuda(hae_backend *be, const float *x, const float *dy, int64_t N, int64_t D,
                                             float eps, float *dx) {
    cudaStream_t st;
    HAE_TRY(hae_cuda_enter(be, &st));
    l2norm_kernel<true><<<hae_cuda_blocks(N, kThreads / 32), kThreads, 0, st>>>(x, dy, N, D, eps, dx);
    HAE_CUDA_LAUNCH_CHECK("l2norm_kernel<bwd>");
    return HAE_OK;
}

extern "C" hae_status hae_tr_gated_norm_fwd_cuda(hae_backend *be, const float *x, const float *gate, const float *w,
                                                 int64_t N, int64_t D, float eps, float *y) {
    cudaStream_t st;
    HAE_TRY(hae_cuda_enter(be, &st));
    gnorm_kernel<false><<<hae_cuda_blocks(N, kThreads / 32), kThreads, 0, st>>>(x, gate, w, nullptr, N, D, eps, y,
                                                                               nullptr, nullptr);
    HAE_CUDA_LAUNCH_CHECK("gnorm_kernel<fwd>");
    return HAE_OK;
}

/* Scratch: r per row [N], then dw's chunk partials. */
extern "C" hae_status hae_tr_gated_norm_bwd_cuda(hae_backend *be, const float *x, const float *gate, const float *w,
                                                 const float *dy, int64_t N, int64_t D, float eps, float *dx,
                                                 float *dgate, float *dw) {
    cudaStream_t st;
    HAE_TRY(hae_cuda_enter(be, &st));
    const size_t avail = be->cuda->scratch_bytes;
    if ((size_t)(N + D) * sizeof(double) > avail)
        return hae_error(HAE_ERR_UNSUPPORTED,
                         "hae_tr_gated_norm_bwd (cuda): N = %lld rows of D = %lld need more than %zu bytes of scratch",
                         (long long)N, (long long)D, avail);
    double *rinv = (double *)be->cuda->scratch, *part = rinv + N;
    const int64_t rows = chunk_rows(N, D, avail - (size_t)N * sizeof(double)), nch = (N + rows - 1) / rows;
    gnorm_kernel<true><<<hae_cuda_blocks(N, kThreads / 32), kThreads, 0, st>>>(x, gate, w, dy, N, D, eps, dx, dgate,
                                                                              rinv);
    HAE_CUDA_LAUNCH_CHECK("gnorm_kernel<bwd>");
    gnorm_dw_kernel<<<hae_cuda_blocks(nch * D, kThreads), kThreads, 0, st>>>(x, gate, dy, rinv, N, D, rows, nch, part);
    HAE_CUDA_LAUNCH_CHECK("gnorm_dw_kernel");
    return sum_chunks(st, part, nch, D, dw);
}

extern "C" hae_status hae_tr_decay_fwd_cuda(hae_backend *be, const float *raw, const float *A_log,
                                            const float *dt_bias, int64_t N, int64_t HV, int64_t n, hae_gate_fn gate,
                                            float lower_bound, float *g) {
    cudaStream_t st;
    HAE_TRY(hae_cuda_enter(be, &st));
    const int64_t total = N * HV * n;
    decay_fwd_kernel<<<hae_cuda_blocks(total, kThreads), kThreads, 0, st>>>(raw, A_log, dt_bias, total, HV, n,
                                                                            gate == HAE_GATE_SAFE, lower_bound, g);
    HAE_CUDA_LAUNCH_CHECK("decay_fwd_kernel");
    return HAE_OK;
}

/* Scratch: the chunks' partials of ddt_bias [nch, HV n], then of dA_log [nch, HV]. */
extern "C" hae_status hae_tr_decay_bwd_cuda(hae_backend *be, const float *raw, const float *A_log,
                                            const float *dt_bias, const float *dg, int64_t N, int64_t HV, int64_t n,
                                            hae_gate_fn gate, float lower_bound, float *draw, float *dA_log,
                                            float *ddt_bias) {
    cudaStream_t st;
    HAE_TRY(hae_cuda_enter(be, &st));
    if (N <= 0 || HV <= 0 || n <= 0) return HAE_OK;
    const size_t avail = be->cuda->scratch_bytes;
    const int64_t per_chunk = HV * n + HV;
    if (HV > 65535 || (size_t)per_chunk * sizeof(double) > avail) /* the grid's y; one chunk's partials */
        return hae_error(HAE_ERR_UNSUPPORTED, "hae_tr_decay_bwd (cuda): HV = %lld heads of n = %lld not supported",
                         (long long)HV, (long long)n);
    const int64_t rows = chunk_rows(N, per_chunk, avail), nch = (N + rows - 1) / rows;
    double *part_b = (double *)be->cuda->scratch, *part_a = part_b + nch * HV * n;
    decay_bwd_kernel<<<dim3((unsigned)nch, (unsigned)HV), (unsigned)min64(n, kDecayThreads), 0, st>>>(
        raw, A_log, dt_bias, dg, N, HV, n, gate == HAE_GATE_SAFE, lower_bound, rows, draw, part_b, part_a);
    HAE_CUDA_LAUNCH_CHECK("decay_bwd_kernel");
    HAE_TRY(sum_chunks(st, part_b, nch, HV * n, ddt_bias));
    return sum_chunks(st, part_a, nch, HV, dA_log);
}

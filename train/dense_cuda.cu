/* CUDA implementations of the training's dense ops, data movement and optimiser (contracts in train_ops.h, CPU
 * references in train/ops.c): fp32 math, double where the CPU sums in double. Deterministic: every output element
 * has one writer, and every reduction runs in an order fixed by the shapes alone (no atomics). */
#include "cuda_check.cuh"
#include "train_ops_cuda.h"

#include <cuda_bf16.h>

#include <limits.h>
#include <math.h>
#include <stdlib.h>

namespace {

constexpr int kThreads = 256;     /* per block: elementwise kernels, and one block per row */
constexpr int kSlices = 64;       /* scatter_add: row index classes, each owned by its own threads */
constexpr int64_t kParts = 256;   /* col_sum: at most this many row ranges summed in parallel */
constexpr unsigned kSumBlocks = 1024; /* sumsq: stage-one blocks at most */

__device__ __forceinline__ int64_t grid_start() { return (int64_t)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t grid_step() { return (int64_t)gridDim.x * blockDim.x; }

/* The larger value wins, the lower index on equal values; NaN never wins (a strict > everywhere). */
__device__ __forceinline__ void argmax_merge(float &v, long long &i, float ov, long long oi) {
    if (ov > v || (ov == v && oi < i)) v = ov, i = oi;
}

/* (v, i) = the block's maximum and its lowest index; every thread gets them. */
__device__ void block_argmax(float &v, long long &i) {
    __shared__ float sv[32];
    __shared__ long long si[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    for (int off = 16; off > 0; off >>= 1)
        argmax_merge(v, i, __shfl_xor_sync(0xffffffffu, v, off), __shfl_xor_sync(0xffffffffu, i, off));
    if (lane == 0) sv[warp] = v, si[warp] = i;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < nwarps; w++) argmax_merge(v, i, sv[w], si[w]);
        sv[0] = v, si[0] = i;
    }
    __syncthreads();
    v = sv[0], i = si[0];
    __syncthreads();
}

/* Threads for one block per row of n values: a multiple of 32 (hae_block_sum), at most kThreads. */
int row_threads(int64_t n) {
    const int64_t t = (n + 31) / 32 * 32;
    return t < 32 ? 32 : t > kThreads ? kThreads : (int)t;
}

hae_status need_scratch(hae_backend *be, size_t bytes, const char *op, int64_t rows, int64_t cols) {
    if (bytes <= be->cuda->scratch_bytes) return HAE_OK;
    return hae_error(HAE_ERR_UNSUPPORTED, "%s (cuda): [%lld, %lld] needs %zu bytes of scratch, the backend has %zu", op,
                     (long long)rows, (long long)cols, bytes, be->cuda->scratch_bytes);
}

/* ---------------------------------------------------------------- rows by index (embedding, gather, scatter) */

/* dst[i, :] = src[idx[i], :] over n rows of D */
template <typename Idx>
__global__ void gather_rows_kernel(const float *src, const Idx *idx, int64_t n, int64_t D, float *dst) {
    for (int64_t e = grid_start(); e < n * D; e += grid_step()) dst[e] = src[(int64_t)idx[e / D] * D + e % D];
}

/* dst[idx[i], :] += src[i, :], i in order. Thread (column d, slice s) owns column d of the rows whose index is s
 * mod kSlices: one writer per element, adding in i order as the CPU; the slices split the read-modify-writes, and
 * each scans all of idx (warp-uniform loads). */
template <typename Idx>
__global__ void scatter_add_rows_kernel(const float *__restrict__ src, const Idx *__restrict__ idx, int64_t n,
                                        int64_t D, float *__restrict__ dst) {
    const int64_t d = grid_start();
    if (d >= D) return;
    for (int64_t i = 0; i < n; i++) {
        const int64_t r = idx[i];
        if (r % kSlices == (int64_t)blockIdx.y) dst[r * D + d] += src[i * D + d];
    }
}

template <typename Idx>
hae_status gather_rows(hae_backend *be, const float *src, const Idx *idx, int64_t n, int64_t D, float *dst) {
    cudaStream_t st;
    HAE_TRY(hae_cuda_enter(be, &st));
    gather_rows_kernel<<<hae_cuda_blocks(n * D, kThreads), kThreads, 0, st>>>(src, idx, n, D, dst);
    HAE_CUDA_LAUNCH_CHECK("gather_rows_kernel");
    return HAE_OK;
}

template <typename Idx>
hae_status scatter_add_rows(hae_backend *be, const float *src, const Idx *idx, int64_t n, int64_t D, float *dst) {
    cudaStream_t st;
    HAE_TRY(hae_cuda_enter(be, &st));
    scatter_add_rows_kernel<<<dim3(hae_cuda_blocks(D, kThreads), kSlices), kThreads, 0, st>>>(src, idx, n, D, dst);
    HAE_CUDA_LAUNCH_CHECK("scatter_add_rows_kernel");
    return HAE_OK;
}

/* ---------------------------------------------------------------- column sums
 * out[c] += (float) sum_i term(i, c) over N rows, in double: the rows split into at most kParts ranges of a size
 * fixed by N, each summed in row order into part [P, C] (scratch), then the parts summed in order. */

/* term = a[i, c] b[i, c] s[i] in double, b and s optional */
struct ProdTerm {
    const float *a, *b, *s;
    int64_t C;
    __device__ double operator()(int64_t i, int64_t c) const {
        double v = a[i * C + c];
        if (b) v *= b[i * C + c];
        if (s) v *= s[i];
        return v;
    }
};

/* LayerNorm's dw: dy z, z = (x - mean) r rounded to f32 as the CPU */
struct LnDwTerm {
    const float *x, *dy, *rstd;
    const double *mean;
    int64_t D;
    __device__ double operator()(int64_t i, int64_t d) const {
        return dy[i * D + d] * (float)(((double)x[i * D + d] - mean[i]) * rstd[i]);
    }
};

template <typename Term>
__global__ void col_sum_part_kernel(Term term, int64_t N, int64_t C, int64_t rows, double *part) {
    const int64_t c = grid_start(), p = blockIdx.y, i1 = (p + 1) * rows < N ? (p + 1) * rows : N;
    if (c >= C) return;
    double acc = 0.0;
    for (int64_t i = p * rows; i < i1; i++) acc += term(i, c);
    part[p * C + c] = acc;
}

__global__ void col_sum_finish_kernel(const double *part, int64_t P, int64_t C, float *out) {
    for (int64_t c = grid_start(); c < C; c += grid_step()) {
        double acc = 0.0;
        for (int64_t p = 0; p < P; p++) acc += part[p * C + c];
        out[c] += (float)acc;
    }
}

/* part: kParts C doubles of scratch */
template <typename Term>
hae_status col_sum(cudaStream_t st, const Term &term, int64_t N, int64_t C, double *part, float *out) {
    if (N == 0) return HAE_OK;
    const int64_t rows = (N + kParts - 1) / kParts, P = (N + rows - 1) / rows;
    col_sum_part_kernel<<<dim3(hae_cuda_blocks(C, kThreads), (unsigned)P), kThreads, 0, st>>>(term, N, C, rows, part);
    HAE_CUDA_LAUNCH_CHECK("col_sum_part_kernel");
    col_sum_finish_kernel<<<hae_cuda_blocks(C, kThreads), kThreads, 0, st>>>(part, P, C, out);
    HAE_CUDA_LAUNCH_CHECK("col_sum_finish_kernel");
    return HAE_OK;
}

/* ---------------------------------------------------------------- norms
 * One block per row (grid-stride over rows). */

/* y = (x - mu) r w (+ bias), r = 1 / sqrt(mean((x - mu)^2) + eps) kept in rstd; mu = mean(x) for LayerNorm
 * (center), else 0; the sums in double, r and mu rounded to f32, as the CPU. */
__global__ void norm_fwd_kernel(const float *x, const float *w, const float *bias, int64_t N, int64_t D, float eps,
                                bool center, float *y, float *rstd) {
    for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {
        const float *xr = x + i * D;
        double mean = 0.0, ss = 0.0;
        if (center) {
            for (int64_t d = threadIdx.x; d < D; d += blockDim.x) mean += xr[d];
            mean = hae_block_sum(mean) / (double)D;
        }
        for (int64_t d = threadIdx.x; d < D; d += blockDim.x) ss += ((double)xr[d] - mean) * ((double)xr[d] - mean);
        ss = hae_block_sum(ss);
        const float r = (float)(1.0 / sqrt(ss / (double)D + (double)eps)), mu = (float)mean;
        if (threadIdx.x == 0) rstd[i] = r;
        for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
            const float v = (xr[d] - mu) * r * w[d];
            y[i * D + d] = bias ? v + bias[d] : v;
        }
    }
}

/* Per row, with e = dy w and s = sum_d e (x - mu) in double, mu = mean(x) for LayerNorm (center), else 0:
 *     RMSNorm:   dx += r dy w - x r^3 s / D                          (f32, as the CPU)
 *     LayerNorm: dx  = r (e - mean(e) - z r s / D),  z = (x - mu) r  (double; mu kept in mean_out for dw) */
__global__ void norm_bwd_kernel(const float *x, const float *w, const float *rstd, const float *dy, int64_t N,
                                int64_t D, bool center, float *dx, double *mean_out) {
    for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {
        const float *xr = x + i * D, *dyr = dy + i * D;
        float *dxr = dx + i * D;
        double mean = 0.0, se = 0.0, s = 0.0;
        if (center) {
            for (int64_t d = threadIdx.x; d < D; d += blockDim.x) mean += xr[d];
            mean = hae_block_sum(mean) / (double)D;
        }
        for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
            const double e = (double)dyr[d] * w[d];
            se += e;
            s += e * ((double)xr[d] - mean);
        }
        if (center) se = hae_block_sum(se);
        s = hae_block_sum(s);
        const double r = rstd[i];
        if (center) {
            const double me = se / (double)D, mez = s * r / (double)D;
            for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
                dxr[d] = (float)(r * ((double)dyr[d] * w[d] - me - ((double)xr[d] - mean) * r * mez));
            if (threadIdx.x == 0) mean_out[i] = mean;
        } else {
            const float a = (float)r, b = (float)(r * r * r * s / (double)D);
            for (int64_t d = threadIdx.x; d < D; d += blockDim.x) dxr[d] += a * dyr[d] * w[d] - b * xr[d];
        }
    }
}

hae_status norm_fwd(hae_backend *be, const float *x, const float *w, const float *bias, int64_t N, int64_t D, float eps,
                    bool center, float *y, float *rstd) {
    cudaStream_t st;
    HAE_TRY(hae_cuda_enter(be, &st));
    norm_fwd_kernel<<<hae_cuda_blocks(N, 1), row_threads(D), 0, st>>>(x, w, bias, N, D, eps, center, y, rstd);
    HAE_CUDA_LAUNCH_CHECK("norm_fwd_kernel");
    return HAE_OK;
}

/* ---------------------------------------------------------------- elementwise */

/* x1' = x1 c - x2 s, x2' = x2 c + x1 s for the pairs (i, i + half) of every head of token row r, (c, s) the tables'
 * entries at the row's position t = r mod T (s negated for the inverse). */
__global__ void rope_kernel(float *x, int64_t rows, int64_t T, int64_t H, int64_t D, int64_t ld, int half,
                            const float *cs, const float *sn, float sign) {
    for (int64_t e = grid_start(); e < rows * H * half; e += grid_step()) {
        const int64_t i = e % half, h = e / half % H, r = e / half / H, t = r % T;
        float *p = x + r * ld + h * D;
        const float c = cs[t * half + i], s = sign * sn[t * half + i], x1 = p[i], x2 = p[i + half];
        p[i] = x1 * c - x2 * s;
        p[i + half] = x2 * c + x1 * s;
    }
}

/* a[n, f] = silu(g) u, g = gu[n, f], u = gu[n, F + f] */
__global__ void swiglu_fwd_kernel(const float *gu, int64_t N, int64_t F, float *a) {
    for (int64_t e = grid_start(); e < N * F; e += grid_step()) {
        const float g = gu[e / F * 2 * F + e % F], u = gu[e / F * 2 * F + F + e % F];
        a[e] = g / (1.0f + expf(-g)) * u;
    }
}

/* dg = da u sg (1 + g (1 - sg)) (= da u silu'(g)), du = da g sg, sg = sigmoid(g) */
__global__ void swiglu_bwd_kernel(const float *gu, const float *da, int64_t N, int64_t F, float *dgu) {
    for (int64_t e = grid_start(); e < N * F; e += grid_step()) {
        const int64_t gi = e / F * 2 * F + e % F;
        const float g = gu[gi], u = gu[gi + F], sg = 1.0f / (1.0f + expf(-g));
        dgu[gi] = da[e] * u * sg * (1.0f + g * (1.0f - sg));
        dgu[gi + F] = da[e] * g * sg;
    }
}

/* dst[r, dst_off + k] = (or +=) src[r, src_off + k], k < n */
__global__ void copy_cols_kernel(hae_tr_cols c) {
    for (int64_t e = grid_start(); e < c.N * c.n; e += grid_step()) {
        const int64_t r = e / c.n, k = e % c.n;
        const float v = c.src[r * c.ld_src + c.src_off + k];
        float *d = c.dst + r * c.ld_dst + c.dst_off + k;
        *d = c.add ? *d + v : v;
    }
}

/* y = f(x), or dx = dy f'(x) when dy is given:
 *     sigmoid: f = 1 / (1 + e^-x), f' = y (1 - y) from y = sigmoid(x), which its backward gets as x
 *     elu + 1: f = x + 1 for x > 0, else e^x;  f' = 1 for x > 0, else e^x */
__global__ void map_kernel(hae_tr_map f, const float *x, const float *dy, int64_t n, float *out) {
    for (int64_t i = grid_start(); i < n; i += grid_step()) {
        const float v = x[i];
        if (f == HAE_TR_SIGMOID)
            out[i] = dy ? dy[i] * v * (1.0f - v) : 1.0f / (1.0f + expf(-v));
        else
            out[i] = dy ? dy[i] * (v > 0.0f ? 1.0f : expf(v)) : v > 0.0f ? v + 1.0f : expf(v);
    }
}

/* y = f(x), or dx = dy f'(x) with dy */
hae_status run_map(hae_backend *be, hae_tr_map f, const float *x, const float *dy, int64_t n, float *out) {
    cudaStream_t st;
    HAE_TRY(hae_cuda_enter(be, &st));
    map_kernel<<<hae_cuda_blocks(n, kThreads), kThreads, 0, st>>>(f, x, dy, n, out);
    HAE_CUDA_LAUNCH_CHECK("map_kernel");
    return HAE_OK;
}

/* g[i, j] = -exp(A_log[j]) */
__global__ void fixed_decay_kernel(const float *A_log, int64_t N, int64_t HV, float *g) {
    for (int64_t e = grid_start(); e < N * HV; e += grid_step()) g[e] = -expf(A_log[e % HV]);
}

/* m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  w = w decay - step_size m / (sqrt(v) / c2 + eps), g scaled by
 * gscale */
__global__ void adamw_kernel(hae_tr_adamw_args a, float *w, const float *g, float *m, float *v, int64_t n) {
    for (int64_t i = grid_start(); i < n; i += grid_step()) {
        const float gi = g[i] * a.gscale;
        m[i] = a.b1 * m[i] + (1.0f - a.b1) * gi;
        v[i] = a.b2 * v[i] + (1.0f - a.b2) * gi * gi;
        w[i] *= a.decay;
        w[i] -= a.step_size * m[i] / (sqrtf(v[i]) / a.c2 + a.eps);
    }
}

/* ---------------------------------------------------------------- reductions to scalars */

/* Row r of z [S, V], y = target[r]: (mx, best) = the max and its lowest index; lse = mx + log(sum_v exp(z_v - mx))
 * in double; row_loss[r] = lse - z_y; correct[r] = best == y (best 0 when no value wins, as the CPU);
 * dz = scale (exp(z - lse) - onehot(y)). dz may be z: the row's reads all precede the last hae_block_sum's barrier and
 * each thread then writes only the elements it reads. */
__global__ void xent_kernel(const float *z, const int32_t *target, int64_t S, int64_t V, float scale, float *dz,
                            uint8_t *correct, double *row_loss) {
    for (int64_t r = blockIdx.x; r < S; r += gridDim.x) {
        const float *zr = z + r * V;
        const int32_t y = target[r];
        const double zy = zr[y];
        float mx = -INFINITY;
        long long best = LLONG_MAX;
        for (int64_t v = threadIdx.x; v < V; v += blockDim.x)
            if (zr[v] > mx) mx = zr[v], best = v;
        block_argmax(mx, best);
        double sum = 0.0;
        for (int64_t v = threadIdx.x; v < V; v += blockDim.x) sum += exp((double)zr[v] - (double)mx);
        const double lse = (double)mx + log(hae_block_sum(sum));
        if (threadIdx.x == 0) {
            row_loss[r] = lse - zy;
            if (correct) correct[r] = (best == LLONG_MAX ? 0 : best) == y;
        }
        if (dz)
            for (int64_t v = threadIdx.x; v < V; v += blockDim.x)
                dz[r * V + v] = scale * (float)(exp((double)zr[v] - lse) - (v == y ? 1.0 : 0.0));
    }
}

/* out[blockIdx.x] = the sum of v^2 (square) or v over the block's grid-stride share of v[0, n), in double; the
 * share depends only on n and the launch, so the sum's order is fixed. */
template <typename T> __global__ void block_sums_kernel(const T *v, int64_t n, bool square, double *out) {
    double acc = 0.0;
    for (int64_t i = grid_start(); i < n; i += grid_step()) {
        const double a = v[i];
        acc += square ? a * a : a;
    }
    acc = hae_block_sum(acc);
    if (threadIdx.x == 0) out[blockIdx.x] = acc;
}

hae_status blas_dims(const char *op, int64_t N, int64_t I, int64_t O) {
    if (N <= INT_MAX && I <= INT_MAX && O <= INT_MAX) return HAE_OK;
    return hae_error(HAE_ERR_UNSUPPORTED, "%s (cuda): N %lld, I %lld, O %lld exceed cuBLAS's int dimensions", op,
                     (long long)N, (long long)I, (long long)O);
}

} // namespace

/* ---------------------------------------------------------------- entry points */

hae_status hae_tr_embedding_fwd_cuda(hae_backend *be, const int32_t *ids, int64_t N, const float *E, int64_t D,
                                     float *x) {
    return gather_rows(be, E, ids, N, D, x);
}

hae_status hae_tr_embedding_bwd_cuda(hae_backend *be, const int32_t *ids, int64_t N, const float *dx, int64_t D,
                                     float *dE) {
    return scatter_add_rows(be, dx, ids, N, D, dE);
}

hae_status hae_tr_gather_rows_cuda(hae_backend *be, const float *src, const int64_t *idx, int64_t n, int64_t D,
                                   float *dst) {
    return gather_rows(be, src, idx, n, D, dst);
}

hae_status hae_tr_scatter_add_rows_cuda(hae_backend *be, const float *src, const int64_t *idx, int64_t n, int64_t D,
                                        float *dst) {
    return scatter_add_rows(be, src, idx, n, D, dst);
}

hae_status hae_tr_rmsnorm_fwd_cuda(hae_backend *be, const float *x, const float *w, int64_t N, int64_t D, float eps,
                                   float *y, float *rstd) {
    return norm_fwd(be, x, w, NULL, N, D, eps, false, y, rstd);
}

hae_status hae_tr_layernorm_fwd_cuda(hae_backend *be, const float *x, const float *w, const float *bias, int64_t N,
                                     int64_t D, float eps, float *y, float *rstd) {
    return norm_fwd(be, x, w, bias, N, D, eps, true, y, rstd);
}

hae_status hae_tr_rmsnorm_bwd_cuda(hae_backend *be, const float *x, const float *w, const float *rstd, const float *dy,
                                   int64_t N, int64_t D, float *dx, float *dw) {
    cudaStream_t st;
    HAE_TRY(hae_cuda_enter(be, &st));
    HAE_TRY(need_scratch(be, sizeof(double) * (size_t)(kParts * D), "rmsnorm_bwd", N, D));
    norm_bwd_kernel<<<hae_cuda_blocks(N, 1), row_threads(D), 0, st>>>(x, w, rstd, dy, N, D, false, dx, NULL);
    HAE_CUDA_LAUNCH_CHECK("norm_bwd_kernel");
    return col_sum(st, ProdTerm{dy, x, rstd, D}, N, D, (double *)be->cuda->scratch, dw);
}

hae_status hae_tr_layernorm_bwd_cuda(hae_backend *be, const float *x, const float *w, const float *rstd,
                                     const float *dy, int64_t N, int64_t D, float *dx, float *dw, float *dbias) {
    cudaStream_t st;
    HAE_TRY(hae_cuda_enter(be, &st));
    HAE_TRY(need_scratch(be, sizeof(double) * (size_t)(N + kParts * D), "layernorm_bwd", N, D));
    double *mean = (double *)be->cuda->scratch, *part = mean + N;
    norm_bwd_kernel<<<hae_cuda_blocks(N, 1), row_threads(D), 0, st>>>(x, w, rstd, dy, N, D, true, dx, mean);
    HAE_CUDA_LAUNCH_CHECK("norm_bwd_kernel");
    HAE_TRY(col_sum(st, LnDwTerm{x, dy, rstd, mean, D}, N, D, part, dw));
    return col_sum(st, ProdTerm{dy, NULL, NULL, D}, N, D, part, dbias);
}

/* cuBLAS is column-major, where a row-major [R, C] matrix reads as its [C, R] transpose: y^T = W x^T,
 * dx^T = W^T dy^T and dW^T += x^T dy. */
enum Product { kY, kDx, kDw };

static __global__ void to_bf16_kernel(const float *__restrict__ x, int64_t n, __nv_bfloat16 *__restrict__ y) {
    for (int64_t i = grid_start(); i < n; i += grid_step()) y[i] = __float2bfloat16_rn(x[i]);
}

static hae_status to_bf16(cudaStream_t st, const float *x, int64_t n, __nv_bfloat16 *y) {
    to_bf16_kernel<<<hae_cuda_blocks(n, kThreads), kThreads, 0, st>>>(x, n, y);
    HAE_CUDA_LAUNCH_CHECK("to_bf16_kernel");
    return HAE_OK;
}

/* One product with bf16 operands (rounded to nearest even, as the CPU rounds) and fp32 accumulation and output:
 * W rounded once into the scratch, then the rows of x / dy in chunks that fit beside it (dW sums the chunks). */
static hae_status product_bf16(hae_backend *be, cudaStream_t st, Product p, const float *x, const float *W,
                               const float *dy, int64_t N, int64_t I, int64_t O, float beta, float *out) {
    const float one = 1.0f;
    const int64_t w_elems = p == kDw ? 0 : O * I, per_row = p == kY ? I : p == kDx ? O : I + O;
    const int64_t cap = (int64_t)(be->cuda->scratch_bytes / sizeof(__nv_bfloat16)), R = (cap - w_elems) / per_row;
    if (R < 1)
        return hae_error(HAE_ERR_UNSUPPORTED, "linear (cuda, bf16 products): W [%lld, %lld] and a row need %lld bytes of "
                         "scratch, the backend has %zu", (long long)O, (long long)I,
                         (long long)(sizeof(__nv_bfloat16) * (size_t)(w_elems + per_row)), be->cuda->scratch_bytes);
    __nv_bfloat16 *w = (__nv_bfloat16 *)be->cuda->scratch, *a = w + w_elems, *b = a + R * (p == kDw ? I : 0);
    if (w_elems) HAE_TRY(to_bf16(st, W, w_elems, w));
    const cudaDataType bf = CUDA_R_16BF;
    for (int64_t n0 = 0; n0 < N; n0 += R) {
        const int64_t n = N - n0 < R ? N - n0 : R;
        if (p == kY) {
            HAE_TRY(to_bf16(st, x + n0 * I, n * I, a));
            HAE_CUBLAS_CHECK(cublasGemmEx(be->cuda->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)O, (int)n, (int)I, &one, w, bf,
                                          (int)I, a, bf, (int)I, &beta, out + n0 * O, CUDA_R_32F, (int)O,
                                          CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        } else if (p == kDx) {
            HAE_TRY(to_bf16(st, dy + n0 * O, n * O, a));
            HAE_CUBLAS_CHECK(cublasGemmEx(be->cuda->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)I, (int)n, (int)O, &one, w, bf,
                                          (int)I, a, bf, (int)O, &beta, out + n0 * I, CUDA_R_32F, (int)I,
                                          CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        } else {
            HAE_TRY(to_bf16(st, x + n0 * I, n * I, a));
            HAE_TRY(to_bf16(st, dy + n0 * O, n * O, b));
            HAE_CUBLAS_CHECK(cublasGemmEx(be->cuda->blas, CUBLAS_OP_N, CUBLAS_OP_T, (int)I, (int)O, (int)n, &one, a, bf,
                                          (int)I, b, bf, (int)O, &one, out, CUDA_R_32F, (int)I, CUBLAS_COMPUTE_32F,
                                          CUBLAS_GEMM_DEFAULT));
        }
    }
    return HAE_OK;
}

static hae_status product(hae_backend *be, cudaStream_t st, hae_dtype mm, Product p, const float *x, const float *W,
                          const float *dy, int64_t N, int64_t I, int64_t O, float beta, float *out) {
    if (mm == HAE_BF16) return product_bf16(be, st, p, x, W, dy, N, I, O, beta, out);
    const float one = 1.0f;
    if (p == kY)
        HAE_CUBLAS_CHECK(cublasSgemm(be->cuda->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)O, (int)N, (int)I, &one, W, (int)I,
                                     x, (int)I, &beta, out, (int)O));
    else if (p == kDx)
        HAE_CUBLAS_CHECK(cublasSgemm(be->cuda->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)I, (int)N, (int)O, &one, W, (int)I,
                                     dy, (int)O, &beta, out, (int)I));
    else
        HAE_CUBLAS_CHECK(cublasSgemm(be->cuda->blas, CUBLAS_OP_N, CUBLAS_OP_T, (int)I, (int)O, (int)N, &one, x, (int)I,
                                     dy, (int)O, &one, out, (int)I));
    return HAE_OK;
}

hae_status hae_tr_linear_fwd_cuda(hae_backend *be, hae_dtype mm, const float *x, const float *W, int64_t N, int64_t I,
                                  int64_t O, float *y, bool accumulate) {
    cudaStream_t st;
    HAE_TRY(hae_cuda_enter(be, &st));
    HAE_TRY(blas_dims("linear_fwd", N, I, O));
    return product(be, st, mm, kY, x, W, NULL, N, I, O, accumulate ? 1.0f : 0.0f, y);
}

hae_status hae_tr_linear_bwd_cuda(hae_backend *be, hae_dtype mm, const float *x, const float *W, const float *dy,
                                  int64_t N, int64_t I, int64_t O, float *dx, bool dx_accumulate, float *dW) {
    cudaStream_t st;
    HAE_TRY(hae_cuda_enter(be, &st));
    HAE_TRY(blas_dims("linear_bwd", N, I, O));
    if (dx) HAE_TRY(product(be, st, mm, kDx, x, W, dy, N, I, O, dx_accumulate ? 1.0f : 0.0f, dx));
    return product(be, st, mm, kDw, x, W, dy, N, I, O, 1.0f, dW);
}

hae_status hae_tr_rope_cuda(hae_backend *be, float *x, int64_t B, int64_t T, int64_t H, int64_t D, int64_t ld,
                            int rot_dims, const float *cs, const float *sn, bool inverse) {
    cudaStream_t st;
    HAE_TRY(hae_cuda_enter(be, &st));
    const int half = rot_dims / 2;
    if (half == 0) return HAE_OK;
    rope_kernel<<<hae_cuda_blocks(B * T * H * half, kThreads), kThreads, 0, st>>>(x, B * T, T, H, D, ld, half, cs, sn,
                                                                                   inverse ? -1.0f : 1.0f);
    HAE_CUDA_LAUNCH_CHECK("rope_kernel");
    return HAE_OK;
}

hae_status hae_tr_swiglu_fwd_cuda(hae_backend *be, const float *gu, int64_t N, int64_t F, float *a) {
    cudaStream_t st;
    HAE_TRY(hae_cuda_enter(be, &st));
    swiglu_fwd_kernel<<<hae_cuda_blocks(N * F, kThreads), kThreads, 0, st>>>(gu, N, F, a);
    HAE_CUDA_LAUNCH_CHECK("swiglu_fwd_kernel");
    return HAE_OK;
}

hae_status hae_tr_swiglu_bwd_cuda(hae_backend *be, const float *gu, const float *da, int64_t N, int64_t F, float *dgu) {
    cudaStream_t st;
    HAE_TRY(hae_cuda_enter(be, &st));
    swiglu_bwd_kernel<<<hae_cuda_blocks(N * F, kThreads), kThreads, 0, st>>>(gu, da, N, F, dgu);
    HAE_CUDA_LAUNCH_CHECK("swiglu_bwd_kernel");
    return HAE_OK;
}

/* The rows' losses go to the host and are summed there in row order, as the CPU. */
hae_status hae_tr_xent_cuda(hae_backend *be, const float *z, const int32_t *target, int64_t S, int64_t V, float scale,
                            float *dz, uint8_t *correct, double *loss) {
    cudaStream_t st;
    HAE_TRY(hae_cuda_enter(be, &st));
    *loss = 0.0;
    if (S == 0) return HAE_OK;
    HAE_TRY(need_scratch(be, sizeof(double) * (size_t)S, "xent", S, V));
    double *row_loss = (double *)be->cuda->scratch;
    xent_kernel<<<hae_cuda_blocks(S, 1), row_threads(V), 0, st>>>(z, target, S, V, scale, dz, correct, row_loss);
    HAE_CUDA_LAUNCH_CHECK("xent_kernel");
    double *host = (double *)malloc(sizeof(double) * (size_t)S);
    if (!host) return hae_error(HAE_ERR_OOM, "xent (cuda): no host memory for the losses of %lld rows", (long long)S);
    cudaError_t e = cudaMemcpyAsync(host, row_loss, sizeof(double) * (size_t)S, cudaMemcpyDeviceToHost, st);
    if (e == cudaSuccess) e = cudaStreamSynchronize(st);
    for (int64_t r = 0; e == cudaSuccess && r < S; r++) *loss += host[r];
    free(host);
    if (e != cudaSuccess) return hae_cuda_fail(e, __FILE__, __LINE__, "xent: download of the rows' losses");
    return HAE_OK;
}

hae_status hae_tr_copy_cols_cuda(hae_backend *be, const hae_tr_cols *c) {
    cudaStream_t st;
    HAE_TRY(hae_cuda_enter(be, &st));
    copy_cols_kernel<<<hae_cuda_blocks(c->N * c->n, kThreads), kThreads, 0, st>>>(*c);
    HAE_CUDA_LAUNCH_CHECK("copy_cols_kernel");
    return HAE_OK;
}

hae_status hae_tr_map_fwd_cuda(hae_backend *be, hae_tr_map f, const float *x, int64_t n, float *y) {
    return run_map(be, f, x, NULL, n, y);
}

hae_status hae_tr_map_bwd_cuda(hae_backend *be, hae_tr_map f, const float *x, const float *dy, int64_t n, float *dx) {
    return run_map(be, f, x, dy, n, dx);
}

hae_status hae_tr_fixed_decay_fwd_cuda(hae_backend *be, const float *A_log, int64_t N, int64_t HV, float *g) {
    cudaStream_t st;
    HAE_TRY(hae_cuda_enter(be, &st));
    fixed_decay_kernel<<<hae_cuda_blocks(N * HV, kThreads), kThreads, 0, st>>>(A_log, N, HV, g);
    HAE_CUDA_LAUNCH_CHECK("fixed_decay_kernel");
    return HAE_OK;
}

hae_status hae_tr_fixed_decay_bwd_cuda(hae_backend *be, const float *g, const float *dg, int64_t N, int64_t HV,
                                       float *dA_log) {
    cudaStream_t st;
    HAE_TRY(hae_cuda_enter(be, &st));
    HAE_TRY(need_scratch(be, sizeof(double) * (size_t)(kParts * HV), "fixed_decay_bwd", N, HV));
    return col_sum(st, ProdTerm{dg, g, NULL, HV}, N, HV, (double *)be->cuda->scratch, dA_log);
}

hae_status hae_tr_sumsq_cuda(hae_backend *be, const float *x, int64_t n, double *out) {
    cudaStream_t st;
    HAE_TRY(hae_cuda_enter(be, &st));
    const unsigned blocks = hae_cuda_blocks(n, kThreads) < kSumBlocks ? hae_cuda_blocks(n, kThreads) : kSumBlocks;
    double *part = (double *)be->cuda->scratch;
    block_sums_kernel<<<blocks, kThreads, 0, st>>>(x, n, true, part);
    HAE_CUDA_LAUNCH_CHECK("block_sums_kernel");
    block_sums_kernel<<<1, kThreads, 0, st>>>((const double *)part, (int64_t)blocks, false, out);
    HAE_CUDA_LAUNCH_CHECK("block_sums_kernel");
    return HAE_OK;
}

hae_status hae_tr_adamw_cuda(hae_backend *be, const hae_tr_adamw_args *a, float *w, const float *g, float *m, float *v,
                             int64_t n) {
    cudaStream_t st;
    HAE_TRY(hae_cuda_enter(be, &st));
    adamw_kernel<<<hae_cuda_blocks(n, kThreads), kThreads, 0, st>>>(*a, w, g, m, v, n);
    HAE_CUDA_LAUNCH_CHECK("adamw_kernel");
    return HAE_OK;
}

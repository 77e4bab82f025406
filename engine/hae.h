/* hae — Hybrid Attention Engine: the public API.
 *
 * Conventions (DESIGN.md §4):
 *  - shapes are outermost-first, strides are in elements; a hae_tensor is a view and owns nothing;
 *  - every function that can fail returns hae_status and leaves a message in hae_last_error()
 *    (per thread) that says what and where: config file:line:col, shapes, bytes asked vs available;
 *  - ops take one args struct; the entry point picks the CPU or CUDA implementation by the device
 *    of the backend, and checks shapes, dtypes and devices first.
 */
#ifndef HAE_H
#define HAE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h> /* FILE, for hae_probe_report */

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- status */

typedef enum hae_status {
    HAE_OK = 0,
    HAE_ERR_INVALID = -1,     /* bad argument, shape, config value */
    HAE_ERR_OOM = -2,         /* a budget or an allocation was exceeded */
    HAE_ERR_UNSUPPORTED = -3, /* valid, but not implemented for this case or build */
    HAE_ERR_IO = -4,          /* a file could not be read or written */
    HAE_ERR_FORMAT = -5,      /* a file's content is malformed */
    HAE_ERR_CUDA = -6,        /* a CUDA runtime or library call failed */
} hae_status;

const char *hae_status_name(hae_status st);
/* The message of the last failure on this thread ("" if none). */
const char *hae_last_error(void);
void hae_clear_error(void);
/* Sets this thread's message (printf format) and returns st, so callers write
 * `return hae_error(HAE_ERR_INVALID, "...")`. */
hae_status hae_error(hae_status st, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* Prefixes this thread's current message with more context ("loading x.safetensors: ..."). */
hae_status hae_error_wrap(hae_status st, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

#define HAE_TRY(expr)                                                                              \
    do {                                                                                           \
        hae_status hae_try_st_ = (expr);                                                           \
        if (hae_try_st_ != HAE_OK) return hae_try_st_;                                             \
    } while (0)

/* Internal invariants only (never user input): always on, prints file:line and aborts. */
void hae_assert_fail(const char *expr, const char *file, int line);
#define HAE_ASSERT(cond) ((cond) ? (void)0 : hae_assert_fail(#cond, __FILE__, __LINE__))

/* ---------------------------------------------------------------- dtypes and tensors */

typedef enum hae_dtype {
    HAE_F32,
    HAE_BF16,
    HAE_F16,
    HAE_FP8_E4M3,
    HAE_I32,
    HAE_I64,
    HAE_DTYPE_COUNT
} hae_dtype;

size_t hae_dtype_size(hae_dtype dt);
const char *hae_dtype_name(hae_dtype dt); /* "f32", "bf16", ... */

/* Scalar conversions, round-to-nearest-even; e4m3 saturates to +-448 (no inf in e4m3fn). */
float hae_bf16_to_f32(uint16_t h);
uint16_t hae_f32_to_bf16(float f);
float hae_f16_to_f32(uint16_t h);
uint16_t hae_f32_to_f16(float f);
float hae_fp8e4m3_to_f32(uint8_t b);
uint8_t hae_f32_to_fp8e4m3(float f);

typedef enum hae_device { HAE_CPU = 0, HAE_CUDA = 1 } hae_device;

#define HAE_MAX_DIMS 4

typedef struct hae_tensor {
    void *data;
    hae_dtype dtype;
    hae_device device;
    int ndim;
    int64_t shape[HAE_MAX_DIMS];
    int64_t stride[HAE_MAX_DIMS]; /* elements */
} hae_tensor;

/* A contiguous view of `data` with the given shape. */
hae_tensor hae_tensor_make(void *data, hae_dtype dt, hae_device dev, int ndim, const int64_t *shape);
/* Shorthands for 1-4 dimensional contiguous views. */
hae_tensor hae_tensor_1d(void *data, hae_dtype dt, hae_device dev, int64_t d0);
hae_tensor hae_tensor_2d(void *data, hae_dtype dt, hae_device dev, int64_t d0, int64_t d1);
hae_tensor hae_tensor_3d(void *data, hae_dtype dt, hae_device dev, int64_t d0, int64_t d1, int64_t d2);
hae_tensor hae_tensor_4d(void *data, hae_dtype dt, hae_device dev, int64_t d0, int64_t d1, int64_t d2,
                         int64_t d3);
int64_t hae_tensor_numel(const hae_tensor *t);
size_t hae_tensor_nbytes(const hae_tensor *t); /* numel * dtype size (contiguous extent) */
bool hae_tensor_is_contiguous(const hae_tensor *t);
/* View of [start, start+len) along dim (same strides, data pointer advanced). */
hae_tensor hae_tensor_narrow(hae_tensor t, int dim, int64_t start, int64_t len);
/* "[2, 16, 64] bf16 cuda" into buf; returns buf. */
const char *hae_tensor_describe(const hae_tensor *t, char *buf, size_t n);

/* ---------------------------------------------------------------- backends */

typedef struct hae_backend hae_backend;

/* CPU: `index` = worker threads (0: all online cores). CUDA: `index` = device ordinal.
 * Creating a CUDA backend in a build without CUDA, or with no GPU, is HAE_ERR_UNSUPPORTED. */
hae_status hae_backend_create(hae_device dev, int index, hae_backend **out);
void hae_backend_destroy(hae_backend *be); /* accepts NULL */
hae_device hae_backend_device(const hae_backend *be);
const char *hae_backend_name(const hae_backend *be); /* "cpu (2 threads)", "NVIDIA H100 80GB HBM3" */
int hae_backend_threads(const hae_backend *be);      /* CPU worker threads; 0 for CUDA */

/* True when this build has CUDA and at least one GPU answers. Never call from a file-scope
 * initialiser or a Criterion generator: it initialises the CUDA runtime. */
bool hae_cuda_available(void);
bool hae_built_with_cuda(void);

/* Memory on the backend's device (host memory for CPU, 64-byte aligned). */
hae_status hae_backend_alloc(hae_backend *be, size_t bytes, void **out);
void hae_backend_free(hae_backend *be, void *p); /* accepts NULL */
/* Free and total bytes of the backend's memory (CPU: available and total RAM). */
hae_status hae_backend_mem_info(hae_backend *be, size_t *free_bytes, size_t *total_bytes);
/* Copies between host memory and the backend's memory (ordered on the backend's stream). */
hae_status hae_backend_upload(hae_backend *be, void *dst, const void *src_host, size_t bytes);
hae_status hae_backend_download(hae_backend *be, void *dst_host, const void *src, size_t bytes);
/* Sets bytes of the backend's memory to zero (ordered on the backend's stream). */
hae_status hae_backend_zero(hae_backend *be, void *dst, size_t bytes);
/* Waits for everything enqueued, side work included. */
hae_status hae_backend_sync(hae_backend *be);

/* Side work: copies that overlap compute (DESIGN.md §2, the host tier's fetches). Between
 * hae_backend_side_begin and hae_backend_side_end, hae_backend_upload, hae_backend_zero and hae_kv_gather
 * run on the backend's side stream: they start once every op enqueued before the begin has run (so they
 * never overwrite what an earlier op still reads), and ops enqueued after the end run alongside them until
 * hae_backend_side_wait on the end's fence (so nothing reads what they have not written yet). On the CPU
 * side work runs at once, in order. On CUDA any other op between begin and end (a GEMM, an attention) is
 * HAE_ERR_INVALID: it would run on the wrong stream. A fence not yet marked by an end is passed at once. */
typedef struct hae_fence hae_fence;
hae_status hae_fence_create(hae_backend *be, hae_fence **out);
void hae_fence_destroy(hae_fence *f); /* accepts NULL */
hae_status hae_backend_side_begin(hae_backend *be);       /* HAE_ERR_INVALID inside side work */
hae_status hae_backend_side_end(hae_backend *be, hae_fence *done); /* HAE_ERR_INVALID outside it */
hae_status hae_backend_side_wait(hae_backend *be, const hae_fence *f);

/* ---------------------------------------------------------------- dense ops
 * N = rows (batch x tokens). "f32|bf16" means either dtype; math is always fp32. */

/* out[i, :] = table[ids[i], :]. On the CPU ids outside [0, V) are HAE_ERR_INVALID; the CUDA kernel
 * cannot report without a sync and writes NaN rows for them (the model checks tokens on the host). */
typedef struct hae_embedding_args {
    hae_tensor ids;   /* [N] i32 */
    hae_tensor table; /* [V, D] f32|bf16 */
    hae_tensor out;   /* [N, D] f32 */
} hae_embedding_args;
hae_status hae_embedding(hae_backend *be, const hae_embedding_args *a);

/* out = x / sqrt(mean(x^2) + eps) * weight (+ bias); with center, LayerNorm:
 * out = (x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) * weight (+ bias). */
typedef struct hae_rmsnorm_args {
    hae_tensor x;      /* [N, D] f32 */
    hae_tensor weight; /* [D] f32 */
    hae_tensor out;    /* [N, D] f32|bf16 */
    float eps;
    hae_tensor bias;   /* [D] f32, or data NULL */
    bool center;
} hae_rmsnorm_args;
hae_status hae_rmsnorm(hae_backend *be, const hae_rmsnorm_args *a);

/* c = a b^T (accumulate: c += a b^T). b is a weight in PyTorch Linear layout [out, in].
 * a and b share one dtype; c is f32, or bf16 when not accumulating. Rows may be strided.
 * Batched (batch > 1): c_i = a_i b_i^T for i < batch, where operand x_i is the view x moved by
 * i * stride_x elements (stride 0: every product shares it, as one input shared by several heads'
 * weights); the c_i lie side by side within c's rows or one after another, never overlapping. */
typedef struct hae_gemm_args {
    hae_tensor a; /* [M, K] f32|bf16 */
    hae_tensor b; /* [N, K] f32|bf16 */
    hae_tensor c; /* [M, N] f32|bf16 */
    bool accumulate;
    int64_t batch;                        /* products; 0 or 1: one */
    int64_t stride_a, stride_b, stride_c; /* elements from one product's operand to the next's */
} hae_gemm_args;
hae_status hae_gemm(hae_backend *be, const hae_gemm_args *a);

/* out = silu(gate) * up, with gate = gate_up[:, :F], up = gate_up[:, F:]. */
typedef struct hae_swiglu_args {
    hae_tensor gate_up; /* [N, 2F] f32|bf16 */
    hae_tensor out;     /* [N, F] f32|bf16 */
} hae_swiglu_args;
hae_status hae_swiglu(hae_backend *be, const hae_swiglu_args *a);

/* Rotary embedding in place, NeoX (rotate-half) pairing over the first rot_dims dims of each head:
 * for i < rot_dims/2, (x_i, x_{i+rot_dims/2}) rotates by angle pos * theta^(-2i/rot_dims).
 * Row (b, t) has position pos0 + t. rot_dims = 0 leaves x unchanged (rope "none"). */
typedef struct hae_rope_args {
    hae_tensor x; /* [B, T, H, D] f32|bf16, rows may be strided */
    int64_t pos0;
    int rot_dims;   /* even */
    int rot_offset; /* rotates dims [rot_offset, rot_offset + rot_dims) (mla: the rope dims after the latent) */
    float theta;
} hae_rope_args;
hae_status hae_rope(hae_backend *be, const hae_rope_args *a);

/* Converts between dtypes (f32, bf16, f16, fp8-e4m3); same shape, both contiguous. */
hae_status hae_convert(hae_backend *be, const hae_tensor *src, const hae_tensor *dst);

/* Next token per row. temperature <= 0: greedy argmax. temperature > 0: Gumbel-max,
 * argmax_i(logits_i / T + g_i) with g_i = -log(-log(u_i)), u_i = hae_uniform(seed, step, row, i),
 * which samples softmax(logits / T) exactly and gives CPU and GPU the same token for the same
 * logits. Ties go to the lowest index. */
typedef struct hae_sample_args {
    hae_tensor logits; /* [B, V] f32 */
    hae_tensor out;    /* [B] i32 */
    float temperature;
    uint64_t seed;
    uint64_t step;
} hae_sample_args;
hae_status hae_sample(hae_backend *be, const hae_sample_args *a);
/* Counter-based uniform in (0, 1), identical on CPU and GPU. */
float hae_uniform(uint64_t seed, uint64_t step, uint64_t row, uint64_t col);

/* ---------------------------------------------------------------- attention (sparse/)
 * KV caches hold one slot per token, [B, cap, Hkv, D]; token at position p sits in slot p % cap
 * (a ring when cap is smaller than the context, as for sliding windows). */

/* cache[b, (pos0 + t) % cap, :, :] = src[b, t, :, :] */
typedef struct hae_kv_write_args {
    hae_tensor src;   /* [B, T, Hkv, D] f32|bf16, rows may be strided */
    hae_tensor cache; /* [B, cap, Hkv, D] f32|bf16, or an FP8 layout: mla's [B, cap, 1, 656] for D = 576, gqa's [B, cap, Hkv, D + 16] */
    int64_t pos0;
} hae_kv_write_args;
hae_status hae_kv_write(hae_backend *be, const hae_kv_write_args *a);

/* Both attention ops take the shapes of either attention form (DESIGN.md §1.2): q heads Hq, kv heads
 * Hkv (Hq a multiple of Hkv), a key/query dim Dk and a value dim Dv. gqa: Dk = Dv (e.g. 128); mla in
 * absorbed form: Hkv = 1, Dk = 576 (512 latent + 64 rope), Dv = 512, the value cache being a view of
 * the first 512 dims of the key cache (v_cache.data = k_cache.data, slot stride 576). A cache's slots
 * and sequences may be strided (stride[0], stride[1] in elements); within a slot the kv heads are
 * dense (stride[2] = D). k_cache and v_cache share their dtype. */

/* mla's FP8 cache layout (DeepSeek-V3.2's, read by FlashMLA's sparse kernels): a token's 576 values in
 * HAE_MLA_FP8_ROW = 656 bytes: the 512 latent dims as e4m3 codes, their 4 fp32 scales (one per 128 dims,
 * hae_fp8_quant's powers of two), then the 64 rope dims as bf16 (1.75x smaller than 1152 bf16 bytes).
 * Such a k_cache is an fp8-e4m3 tensor [B, cap, 1, 656] (bytes); its v_cache is the same bytes viewed
 * as [B, cap, 1, 512] (same data pointer and strides). hae_kv_write quantizes [B, T, 1, 576] rows into
 * it and hae_sparse_attention reads it (q [.., 576], out [.., 512]); hae_attention does not. */
#define HAE_MLA_FP8_ROW 656
#define HAE_MLA_LATENT 512
#define HAE_MLA_ROPE 64
#define HAE_MLA_FP8_SCALES HAE_MLA_LATENT          /* byte offsets in a token: the 4 fp32 scales */
#define HAE_MLA_FP8_ROPE (HAE_MLA_LATENT + 16)     /* the 64 bf16 rope dims */

/* gqa's FP8 cache layout: each kv head of D dims (D a multiple of 128, at most 512) in HAE_FP8_HEAD(D) =
 * D + 16 bytes: D e4m3 codes, one fp32 scale per 128 dims (as mla's latent, which is such a head of 512),
 * zeros to the 16-byte boundary, so every head's codes start 16-byte aligned. For Hkv 4 x 128 a token's K
 * and V take 1152 bytes instead of 2048 in bf16. k_cache and v_cache are then fp8-e4m3 tensors
 * [B, cap, Hkv, Dk + 16] and [B, cap, Hkv, Dv + 16] (bytes) in their own buffers; hae_kv_write quantizes
 * [B, T, Hkv, D] rows into them and hae_sparse_attention reads them; hae_attention does not. */
#define HAE_FP8_HEAD(d) ((d) + 16)
#define HAE_FP8_HEAD_DIM_OK(d) ((d) >= 128 && (d) <= 512 && (d) % 128 == 0) /* head dims the layout takes */

/* Causal softmax attention: query (b, t, h) at position p = pos0 + t attends to positions s in
 * [lo, p], lo = max(0, p - window + 1) when window > 0 (swa) else 0 (full); head h reads kv head
 * h / (Hq / Hkv). The cache must already hold those positions: cap >= pos0 + T for full attention,
 * cap >= min(pos0 + T, window + T - 1) for a window. */
typedef struct hae_attention_args {
    hae_tensor q;       /* [B, T, Hq, Dk] f32|bf16, rows may be strided */
    hae_tensor k_cache; /* [B, cap, Hkv, Dk] */
    hae_tensor v_cache; /* [B, cap, Hkv, Dv] */
    hae_tensor out;     /* [B, T, Hq, Dv] f32|bf16 */
    int64_t pos0;
    int64_t window; /* 0: full causal */
    float scale;    /* softmax scale, usually 1/sqrt(Dk) */
} hae_attention_args;
hae_status hae_attention(hae_backend *be, const hae_attention_args *a);

/* Exact softmax attention of each query over the cached positions its row of idx names (DSA's
 * sparse attention: head h reads kv head h / (Hq / Hkv)). Query t of sequence b sits at
 * p = seq_lens[b] - T + t; an index j is used when 0 <= j <= p and skipped (never read) otherwise,
 * -1 included; each position should appear at most once (as top-k gives them). Over the used j:
 *     out = sum_j softmax_j(scale q . k_j) v_j,      lse = ln sum_j exp(scale q . k_j)
 * A query with no usable index gets out = 0 and lse = +inf. Position j lives in cache slot j % cap.
 * On the CPU seq_lens outside [T, cap] are an error; on CUDA they are not read back, and a row whose
 * p falls outside [0, cap) uses no index. */
typedef struct hae_sparse_attention_args {
    hae_tensor q;        /* [B, T, Hq, Dk] f32|bf16, rows may be strided */
    hae_tensor k_cache;  /* [B, cap, Hkv, Dk], or an FP8 layout (above): mla's [B, cap, 1, 656], gqa's [B, cap, Hkv, Dk + 16] */
    hae_tensor v_cache;  /* [B, cap, Hkv, Dv], or mla's view [B, cap, 1, 512], or gqa's [B, cap, Hkv, Dv + 16] */
    hae_tensor idx;      /* [B, T, k] i32 */
    hae_tensor seq_lens; /* [B] i32, each in [T, cap] */
    hae_tensor out;      /* [B, T, Hq, Dv] f32|bf16 */
    hae_tensor lse;      /* [B, T, Hq] f32, or data NULL */
    float scale;
    /* A batch split between two caches (dsa K/V partly in the host tier): rows b >= B1 = k_cache.shape[0] read
     * row b - B1 of these instead, with their own selections and lengths; data NULL: every row is in k_cache.
     * Same dtype, heads, dims and token strides as the first part, V a view of K where it is there; cap at
     * most k_cache's, every position in use below it. One launch for both, so a row's result is the same bits
     * whichever part holds it. */
    hae_tensor k_cache2, v_cache2; /* [B - B1, cap2, Hkv, D] */
    hae_tensor idx2;               /* [B - B1, T, k] i32 */
    hae_tensor seq_lens2;          /* [B - B1] i32 */
} hae_sparse_attention_args;
hae_status hae_sparse_attention(hae_backend *be, const hae_sparse_attention_args *a);

/* ---------------------------------------------------------------- the FP8 lightning indexer (indexer/)
 * DeepSeek-V3.2's indexer (DESIGN.md §1.2). For query token t and cached token s <= t:
 *     I(t, s) = k_scale(s) * sum_h w(t, h) * ReLU(q(t, h) . k(s))        h < H_I heads of dim D_I
 * where q and k are the FP8 e4m3 values of the Hadamard-rotated indexer query and key, each vector
 * with one power-of-two (ue8m0) fp32 scale per 128 values (D_I = 128: one scale per vector), and
 * w(t, h) = (W_w x_t)_h * H_I^-1/2 * D_I^-1/2 * q_scale(t, h): the query scale folds into the head
 * weight because ReLU(c x) = c ReLU(x) for c > 0. With D_I > 128 the key's block scales apply inside
 * the ReLU, I = sum_h w * ReLU(sum_blocks k_scale_blk q_blk . k_blk), and each query vector needs a
 * single scale (the model uses D_I = 128). */

/* Blockwise FP8 e4m3: each block of 128 values of a row gets scale = 2^ceil(log2(amax / 448)) (1 when
 * the block is all zero; never below 2^-126, so it stays a normal float) and q = e4m3(x / scale),
 * rounded to nearest even; x ~ q * scale. A block holding Inf or NaN gets a NaN scale and NaN codes. */
typedef struct hae_fp8_quant_args {
    hae_tensor x;     /* [N, D] f32|bf16, rows may be strided; D a multiple of 128 */
    hae_tensor q;     /* [N, D] fp8-e4m3 */
    hae_tensor scale; /* [N, D / 128] f32 */
} hae_fp8_quant_args;
hae_status hae_fp8_quant(hae_backend *be, const hae_fp8_quant_args *a);

/* In place, every row x <- H x / sqrt(D), H the Sylvester Walsh-Hadamard matrix (H_1 = [1],
 * H_2n = [[H_n, H_n], [H_n, -H_n]]), D a power of two: orthonormal, so dot products are kept while
 * an outlier spreads over every dim before FP8 rounding. */
typedef struct hae_hadamard_args {
    hae_tensor x; /* [N, D] f32|bf16, rows may be strided */
} hae_hadamard_args;
hae_status hae_hadamard(hae_backend *be, const hae_hadamard_args *a);

/* The indexer's key cache of one layer: pages of P tokens; a page holds its P x D FP8 bytes, then
 * P x (D / 128) fp32 scales; sequence b's token s lives in page block_table[b, s / P], row s % P.
 * For D = 128 that is 132 bytes per token. */
typedef struct hae_index_cache {
    hae_tensor pages;       /* [n_pages, P (D + 4 D / 128)] fp8-e4m3 (raw bytes) */
    hae_tensor block_table; /* [B, max_pages] i32 */
    int page_size;          /* P */
    int head_dim;           /* D */
} hae_index_cache;

/* Stores the T new keys of each sequence at positions seq_lens[b] - T + t. Sequences own their pages:
 * where two write one slot in one call, the CPU keeps the later one's key and CUDA either. On CUDA a
 * key whose position or page is out of range is skipped (the CPU refuses the call). */
typedef struct hae_index_write_args {
    hae_tensor k;        /* [B, T, D] fp8-e4m3, rows may be strided */
    hae_tensor k_scale;  /* [B, T, D / 128] f32 */
    hae_index_cache cache;
    hae_tensor seq_lens; /* [B] i32: tokens each sequence holds once these are written */
} hae_index_write_args;
hae_status hae_index_write(hae_backend *be, const hae_index_write_args *a);

/* Logits of the T queries of each sequence, query t at position p = seq_lens[b] - T + t, against
 * cached tokens s <= p; logits[b, t, s] for s > p (up to L) are -inf and no key past p is read.
 * The head weight is w_scale * w(t, h) * q_scale(t, h), q_scale the query's FP8 scale (one per
 * vector, D = 128), so callers pass hae_fp8_quant's output unchanged. The CPU refuses lengths or
 * block-table entries out of range; CUDA does not read them back: it clamps p to L - 1 and gives NaN
 * for a key whose page is out of range. CUDA takes H_I <= 64 and D <= 4096. Precision on CUDA: with
 * D = 128 and 16-byte-aligned pages each dot runs on wgmma's FP8 path, which truncates every step of
 * 32 products to about 13 fraction bits, so a logit is within 4 2^-13 of sum_h |w| sum_d |q k k_scale|
 * of the CPU's fp32 sums (measured worst 5.5e-5 of it); other shapes sum in fp32 like the CPU. */
typedef struct hae_index_logits_args {
    hae_tensor q;        /* [B, T, H_I, D] fp8-e4m3 */
    hae_tensor w;        /* [B, T, H_I] f32 */
    hae_index_cache cache;
    hae_tensor seq_lens; /* [B] i32 */
    hae_tensor logits;   /* [B, T, L] f32, L >= max seq_lens, rows may be strided */
    hae_tensor q_scale;  /* [B, T, H_I] f32, one per query vector, or data NULL (scales already in w) */
    float w_scale;       /* > 0; DeepSeek-V3.2 uses H_I^-1/2 D^-1/2 */
    bool exact;          /* CUDA: every dot summed in fp32 (the mma.sync kernel, ~3x slower at DeepSeek-V3.2's
                            decode shape) instead of wgmma's FP8 path; selections then match the CPU's but for
                            fp32 ties. The CPU always sums in fp32. */
} hae_index_logits_args;
hae_status hae_index_logits(hae_backend *be, const hae_index_logits_args *a);

/* The k largest of each row's first lens[r] logits, as indices in ascending order, padded with -1
 * when a row has fewer than k; among equal logits the lower index wins (-0 equals +0; NaN ranks
 * below -inf), so every backend selects the same set. */
typedef struct hae_topk_args {
    hae_tensor logits; /* [R, L] f32, rows may be strided */
    hae_tensor lens;   /* [R] i32, each in [0, L] */
    hae_tensor out;    /* [R, k] i32 */
} hae_topk_args;
hae_status hae_topk(hae_backend *be, const hae_topk_args *a);

/* ---------------------------------------------------------------- linear attention (linear/)
 * The linear family of DESIGN.md §1.1 as one recurrence with two switches. Per sequence and value
 * head j (q/k head j / (HV / H)), state S in R^{K x V} (fp32), per token t:
 *     q, k  = map(q_t), map(k_t)       map: L2 norm x / sqrt(sum x^2 + 1e-6), or elu(x) + 1
 *     g     = log decay (<= 0), per key channel [K] or one per head:
 *               channel/head, softplus:  g = -exp(A_log[j]) * softplus(graw + dt_bias)
 *               channel/head, safe:      g = lower_bound * sigmoid(exp(A_log[j]) * (graw + dt_bias))
 *               fixed:                   g = -exp(A_log[j]) every token (RetNet's gamma = exp(g))
 *               none:                    g = 0
 *     S     = diag(exp(g)) S
 *     delta: S += k (sigmoid(b_t) (v_t - S^T k))^T      else: S += k v_t^T
 *     o_t   = scale * S^T q
 * The chunked form (chunk > 0) computes the same function C tokens at a time with the WY/UT
 * transform; exponentials are only ever taken of gate differences inside a chunk. Precision on CUDA:
 * the state and every sum are fp32; the chunked form's products take operands of the inputs' type
 * (f32 inputs: 3xTF32, as accurate as fp32; bf16 inputs: bf16 operands, as flash-linear-attention,
 * 2-3e-3 relative RMS against the CPU at T = 200). The CPU computes in fp32 throughout. */

typedef enum hae_decay {
    HAE_DECAY_NONE,    /* deltanet, linear */
    HAE_DECAY_FIXED,   /* retnet: a constant rate per head, from A_log */
    HAE_DECAY_HEAD,    /* gdn, mamba2: one data-dependent rate per head */
    HAE_DECAY_CHANNEL, /* kda, gla: one data-dependent rate per key channel */
} hae_decay;
typedef enum hae_gate_fn { HAE_GATE_SOFTPLUS, HAE_GATE_SAFE } hae_gate_fn;
typedef enum hae_qk_map { HAE_QK_L2, HAE_QK_ELU1 } hae_qk_map;

/* Rows (tokens) of q, k, v, g, beta and out may be strided; what is inside a token is dense; out
 * must not overlap the inputs. dt_bias is head-major (dt_bias[j K + c]). With cu_seqlens (varlen),
 * B is 1 and the T tokens are N sequences packed back to back, sequence n being tokens
 * [cu_seqlens[n], cu_seqlens[n+1]) (chunks restart at each sequence; an empty one keeps its state);
 * state then holds N states. cu_seqlens lives where the backend computes (host memory for the CPU).
 * g, beta, A_log, dt_bias and the gate fields are read only by the kinds that use them. A call that
 * fails its checks writes nothing. */
typedef struct hae_linear_attn_args {
    hae_tensor q;       /* [B, T, H, K] f32|bf16, after the short conv, before the map */
    hae_tensor k;       /* [B, T, H, K] */
    hae_tensor v;       /* [B, T, HV, V] */
    hae_tensor g;       /* raw gate: [B, T, HV, K] (channel) or [B, T, HV] (head); unused otherwise */
    hae_tensor beta;    /* [B, T, HV] logits (delta rule only) */
    hae_tensor A_log;   /* [HV] f32 (any decay but none) */
    hae_tensor dt_bias; /* [HV * K] (channel) or [HV] (head) f32 */
    hae_tensor state;   /* [N, HV, K, V] f32, read then overwritten with the state after the last token */
    hae_tensor out;     /* [B, T, HV, V] f32|bf16 */
    hae_tensor cu_seqlens; /* [N + 1] i32, or data NULL for B equal-length sequences */
    hae_decay decay;
    bool delta;
    hae_gate_fn gate;
    float lower_bound; /* safe gate: log decay in (lower_bound, 0), lower_bound < 0 */
    hae_qk_map qk_map;
    float scale;       /* usually 1/sqrt(K) */
    int chunk;         /* 0: recurrent (one token at a time); else 16, 32, 64 or 128 tokens per chunk */
    void *workspace;   /* device memory of at least hae_linear_attn_workspace() bytes, or NULL if that is 0 */
    size_t workspace_bytes;
} hae_linear_attn_args;
hae_status hae_linear_attn(hae_backend *be, const hae_linear_attn_args *a);
/* Workspace bytes hae_linear_attn needs for these shapes and form (pointers may be NULL here); a
 * workspace sized for T tokens also serves any call with fewer. The CPU needs none. */
hae_status hae_linear_attn_workspace(hae_backend *be, const hae_linear_attn_args *a, size_t *bytes);

/* Causal depthwise convolution of width W over time, optionally followed by SiLU:
 *     out[b, t, c] = act(sum_{w < W} weight[c, w] * x'[b, t + w, c]),  x' = concat(state[b], x[b])
 * state holds the W - 1 inputs before x (zeros at a sequence's start) and is overwritten with the
 * last W - 1 inputs of concat(state, x), so a sequence split over calls gives the same outputs. */
typedef struct hae_conv_short_args {
    hae_tensor x;      /* [B, T, C] f32|bf16, rows may be strided */
    hae_tensor weight; /* [C, W] f32 */
    hae_tensor state;  /* [B, W - 1, C] f32 */
    hae_tensor out;    /* [B, T, C] f32|bf16 */
    bool silu;
} hae_conv_short_args;
hae_status hae_conv_short(hae_backend *be, const hae_conv_short_args *a);

/* Per-head output norm with a sigmoid gate (KDA's o_norm):
 *     out[n, h, :] = x[n, h, :] / sqrt(mean(x[n, h, :]^2) + eps) * weight * sigmoid(gate[n, h, :]) */
typedef struct hae_gated_rmsnorm_args {
    hae_tensor x;      /* [N, H, D] f32|bf16, rows may be strided */
    hae_tensor gate;   /* [N, H, D] f32|bf16, rows may be strided */
    hae_tensor weight; /* [D] f32 */
    hae_tensor out;    /* [N, H, D] f32|bf16 */
    float eps;
} hae_gated_rmsnorm_args;
hae_status hae_gated_rmsnorm(hae_backend *be, const hae_gated_rmsnorm_args *a);

/* ---------------------------------------------------------------- configs */

typedef enum hae_layer_kind {
    HAE_LAYER_FULL,
    HAE_LAYER_SWA,
    HAE_LAYER_DSA,
    HAE_LAYER_KDA,
    HAE_LAYER_GDN,
    HAE_LAYER_DELTANET,
    HAE_LAYER_GLA,
    HAE_LAYER_LINEAR,
    HAE_LAYER_MAMBA2,
    HAE_LAYER_RETNET,
    HAE_LAYER_KIND_COUNT
} hae_layer_kind;
const char *hae_layer_kind_name(hae_layer_kind k);
/* Whether this build can run the kind (pattern entries naming others are config errors). */
bool hae_layer_kind_built(hae_layer_kind k);
/* The two switches (and the q/k map) of a linear kind: kda = channel decay + delta, gdn = head +
 * delta, deltanet = none + delta, gla = channel, mamba2 = head, retnet = fixed, linear = none with
 * the elu+1 map. False (and *out untouched) for the softmax kinds. */
typedef struct hae_linear_kind {
    hae_decay decay;
    bool delta;
    hae_qk_map qk_map;
} hae_linear_kind;
bool hae_linear_kind_of(hae_layer_kind k, hae_linear_kind *out);

typedef enum hae_rope_mode { HAE_ROPE_NONE, HAE_ROPE_FULL, HAE_ROPE_PARTIAL } hae_rope_mode;
typedef enum hae_attn_form { HAE_ATTN_GQA, HAE_ATTN_MLA } hae_attn_form;
typedef enum hae_backend_choice { HAE_BACKEND_AUTO, HAE_BACKEND_CPU, HAE_BACKEND_CUDA } hae_backend_choice;
/* Where the memory manager keeps a kind of bytes (DESIGN.md §2): GPU memory or host RAM. */
/* Memory tiers. HAE_TIER_AUTO is a placement, not a tier (memory.dsa_kv only): the GPU tier when the
 * whole plan fits the GPU, else the host tier, decided before anything is allocated. */
typedef enum hae_tier { HAE_TIER_GPU, HAE_TIER_HOST, HAE_TIER_AUTO } hae_tier;
enum { HAE_TIER_COUNT = 2 };

#define HAE_MAX_LAYERS 256
#define HAE_MAX_SWEEP_AXES 8
#define HAE_MAX_SWEEP_VALUES 64
#define HAE_NAME_MAX 128
#define HAE_PATH_MAX 1024

/* The recall tasks and the two forms of a multi-hop question (eval/, the eval section below); the
 * config's eval section names them. */
typedef enum hae_task_kind { HAE_TASK_MQAR, HAE_TASK_MULTIHOP, HAE_TASK_NIAH, HAE_TASK_KIND_COUNT } hae_task_kind;
typedef enum hae_hops_form { HAE_HOPS_FOLLOW, HAE_HOPS_LIST } hae_hops_form;
/* A list-valued eval key: one axis of the grid `hae eval` runs. */
#define HAE_EVAL_MAX_VALUES 32
#define HAE_MICRO_MAX 8 /* decode micro-batches of a batch (runtime.micro_batches) */
typedef struct hae_eval_list {
    int n;
    int64_t v[HAE_EVAL_MAX_VALUES];
} hae_eval_list;

typedef struct hae_config {
    char name[HAE_NAME_MAX];
    uint64_t seed;
    char output_dir[HAE_PATH_MAX];
    struct {
        int64_t vocab_size;
        int64_t d_model;
        int64_t n_layers;
        hae_layer_kind layers[HAE_MAX_LAYERS]; /* resolved kind of every layer */
        float norm_eps;                        /* rms_norm_eps */
        bool tie_word_embeddings;
        float initializer_range; /* std of the normal init */
        struct {
            int64_t intermediate_size; /* SwiGLU d_ff */
        } mlp;
        struct { /* shared by full, swa (and dsa) layers */
            hae_attn_form form;
            int64_t num_heads;
            int64_t num_kv_heads;
            int64_t head_dim;
            hae_rope_mode rope;
            float rope_theta;
            float partial_rotary_factor; /* fraction of head_dim rotated when rope = partial */
            float softmax_scale;         /* 0: 1/sqrt(head_dim) (gqa), 1/sqrt(qk_nope + qk_rope) (mla) */
            /* mla (DeepSeek's names): per token one latent of kv_lora_rank dims plus a shared RoPE key of
             * qk_rope_head_dim dims is cached; each head's query/key has qk_nope + qk_rope dims and its value
             * v_head_dim. num_kv_heads and head_dim are unused by mla. */
            int64_t kv_lora_rank;
            int64_t qk_nope_head_dim;
            int64_t qk_rope_head_dim;
            int64_t v_head_dim;
        } attention;
        struct {
            int64_t window_size;
        } swa;
        struct { /* shared by the linear kinds (kda, gdn, deltanet, gla, mamba2, retnet, linear) */
            int64_t num_heads;   /* q/k heads H */
            int64_t num_v_heads; /* value heads HV (GVA when > num_heads); 0: num_heads */
            int64_t head_dim;    /* K */
            float expand_v;      /* V = head_dim x expand_v */
            int64_t conv_size;   /* short convolution width W */
            int64_t chunk_size;  /* tokens per chunk of the chunked prefill: 16, 32, 64 or 128 */
            bool safe_gate;      /* lower_bound * sigmoid(...) instead of -exp(A_log) * softplus(...) */
            float lower_bound;
        } linear_attn;
        struct { /* dsa layers: attention as model.attention, tokens picked by the FP8 lightning indexer */
            int64_t index_n_heads;  /* H_I */
            int64_t index_head_dim; /* D_I (128: one FP8 scale per vector) */
            int64_t index_topk;     /* tokens each query attends to */
            int64_t index_rope_dim; /* leading indexer dims rotated by RoPE (NeoX pairing); 0: none */
            bool derived;           /* indexer from the layer's own q/k, no weights of its own */
            bool exact_logits;      /* CUDA: indexer dots summed in fp32 instead of wgmma's FP8 path */
            int64_t page_size;      /* tokens per page of the indexer's key cache */
        } dsa;
    } model;
    struct {
        hae_backend_choice backend;
        int device; /* CUDA ordinal */
        int threads; /* CPU worker threads, 0: all cores */
        hae_dtype dtype; /* weights, KV cache and GEMM operands: f32 or bf16 */
        int64_t batch;
        int64_t prefill;
        int64_t decode;
        int64_t prefill_chunk; /* tokens per prefill forward; 0: the whole prefill at once */
        float temperature;     /* 0: greedy */
        int64_t kv_budget;     /* bytes the KV cache may take on its device; 0: what the device has free */
        hae_eval_list micro_batches; /* decode micro-batches: sizes adding up to batch, in sequence order (at most
                                        HAE_MICRO_MAX); empty: auto (see hae_model_create) */
    } runtime;
    struct { /* the tiered memory manager (DESIGN.md §2) */
        int64_t page_size;     /* tokens per KV page */
        int64_t gpu_budget;    /* bytes the GPU tier may take; 0: what the device has */
        int64_t host_budget;   /* bytes the host tier may take; 0: what the machine's RAM has */
        hae_tier dsa_kv;       /* dsa layers' K/V pages (their indexer keys stay on the GPU); auto: the GPU
                                  when the run's plan fits gpu_budget (or the device's free memory), else host */
        hae_tier full_kv;      /* full and swa layers' K/V; host: streamed to the GPU every step */
        hae_tier linear_state; /* linear layers' states; host: parked there between requests */
        int64_t cache_tokens;  /* GPU token slots per dsa layer and sequence caching host-tier K/V */
        bool dsa_kv_fp8;       /* dsa layers cache K/V in FP8: mla's 656-byte token, or gqa's D + 16 bytes a head */
        int64_t dsa_gpu_seqs;  /* dsa_kv host: the first dsa_gpu_seqs sequences of the batch keep their dsa K/V on
                                  the GPU (-1: none); auto sets it: the most sequences the budget fits there */
    } memory;
    struct { /* recall evals (DESIGN.md §3, `hae eval`): each list is an axis of the grid */
        hae_eval_list tasks;   /* hae_task_kind values */
        hae_eval_list lengths; /* tokens per task */
        hae_eval_list pairs;   /* mqar pairs, niah needles, multihop links (as pairs / hops chains) when chains is 0 */
        hae_eval_list hops;    /* multihop: links per chain */
        hae_eval_list chains;  /* multihop: chains written (the unasked ones are distractors); 0: pairs / hops */
        int64_t queries;       /* questions per task; 0: every pair, needle or chain */
        hae_hops_form form;    /* multihop questions: follow the chain, or list every variable on it */
        bool shuffle;          /* multihop: a chain's links in any order */
        float power;           /* mqar: 0 uniform questions, > 0 favouring recent pairs */
        int64_t noise_vocab;   /* distinct filler tokens; 0: PAD */
        int64_t vocab;         /* task token ids [0, vocab); 0: model.vocab_size */
        int64_t seeds;         /* tasks per grid point, seeds 1..seeds */
        struct { /* `hae eval --probe`: the tasks written into each kind's real ops, no weights */
            hae_eval_list kinds; /* hae_layer_kind values */
            hae_eval_list K;     /* key dim = value dim */
            hae_eval_list topk;  /* dsa */
            hae_dtype index_dtype; /* dsa: fp8-e4m3 (the lightning indexer), bf16 or f32 ranking */
            float key_cos;       /* cosine between any two key codes, [0, 1) */
            float log_decay;     /* decaying linear kinds, <= 0 (0: no forgetting) */
            bool orthogonal;     /* the context's keys orthonormal */
        } probe;
        struct { /* `hae eval --circuit`: hand-built circuits (hae_circuit_build) through the whole engine */
            hae_eval_list kinds;     /* hae_layer_kind values: a circuit per kind, every hop of it */
            hae_eval_list hop_kinds; /* when not empty, one circuit whose hop j is hop_kinds[j mod n] (kinds unused) */
            int64_t code_dim;        /* n: the binary codes' dims, 1..128 */
            int64_t window;          /* swa hops' window; 0: model.swa.window_size */
            int64_t topk;            /* dsa hops' top-k; 0: model.dsa.index_topk */
            float log_decay;         /* the decaying linear kinds' log decay per token, <= 0 (0: no forgetting) */
            bool decode;             /* one decode step per token from the first question on, not prefill chunks */
        } circuit;
    } eval;
    struct { /* `hae train` (train/): AdamW on the eval section's tasks, generated on the fly from seeds */
        int64_t steps;            /* optimiser steps */
        int64_t batch;            /* sequences per step */
        float lr;                 /* peak learning rate */
        float min_lr_ratio;       /* the cosine's floor, as a fraction of lr */
        int64_t warmup;           /* steps of linear warmup, fewer than steps */
        float weight_decay;       /* AdamW's decoupled decay of the matrices (norm weights are not decayed) */
        float beta1, beta2, eps;  /* AdamW's moment decays and denominator epsilon */
        float clip;               /* the gradients' global norm is clipped to this; 0: no clipping */
        int64_t eval_every;       /* held-out eval every this many steps, and after the last; 0: after the last only */
        int64_t checkpoint_every; /* a checkpoint every this many steps, and after the last; 0: after the last only */
        int64_t log_every;        /* a progress line every this many steps */
        int64_t indexer_warmup;   /* dsa layers: the first steps attend densely and train only the indexers (KL to the
                                     dense attention); then top-k attention, the indexers distilled on their selection */
        hae_eval_list eval_lengths; /* each held-out eval also scores the tasks at these lengths (longer than trained
                                       on) through the engine's forward; empty: none */
        hae_dtype matmul;         /* the products' inputs: f32, or bf16 rounded (fp32 sums, weights, gradients, moments) */
        int64_t state_checkpoint; /* linear layers: keep the recurrence's state every this many tokens and recompute
                                     the rest in the backward (same gradients, a third more recurrence work); 0: keep
                                     every state */
        int64_t linear_chunk;     /* linear layers: run the recurrence in its chunk form over chunks of this many
                                     tokens, one state kept per chunk (not with state_checkpoint); 0: token by token */
        hae_eval_list lengths, pairs; /* the training mixture, zipped: point i is (lengths[i], pairs[i]) of every eval
                                         task and hop count, the steps cycling through the points (Zoology's mixture of
                                         short sequences with few pairs and long ones with many); empty: the eval grid */
    } train;
    struct {
        int n_axes;
        struct {
            char key[HAE_NAME_MAX];
            int n_values;
            char values[HAE_MAX_SWEEP_VALUES][HAE_NAME_MAX]; /* YAML scalars or flow sequences */
        } axes[HAE_MAX_SWEEP_AXES];
    } sweep;
    char source[HAE_PATH_MAX]; /* file it was loaded from, or "<default>" */
} hae_config;

/* The built-in default (configs/default.yaml compiled in). */
const char *hae_config_default_yaml(void);

/* Parses YAML text (`source` names it in messages), applies `--set` style overrides
 * ("a.b.c=value", value in YAML syntax), validates everything and fills cfg. Any problem is
 * HAE_ERR_INVALID with one line "source:line:col: dotted.path: what is wrong". */
hae_status hae_config_parse(const char *yaml, size_t len, const char *source, const char *const *overrides,
                            int n_overrides, hae_config *cfg);
hae_status hae_config_load(const char *path, const char *const *overrides, int n_overrides, hae_config *cfg);
/* Number of sweep jobs (product of axis lengths; 1 without a sweep). */
int hae_config_sweep_jobs(const hae_config *cfg);
/* Config of sweep job j: the base with job j's overrides applied (and no sweep), plus a short
 * label "model.d_model=128,runtime.batch=4" for the run directory. */
hae_status hae_config_sweep_job(const hae_config *cfg, int j, hae_config *job, char *label, size_t label_n);
/* Writes every field, defaults included, as YAML that hae_config_parse reads back to the same config. */
hae_status hae_config_write_yaml(const hae_config *cfg, const char *path);
/* Same into a malloc'd string (caller frees). */
hae_status hae_config_to_yaml(const hae_config *cfg, char **out);

/* ---------------------------------------------------------------- safetensors */

typedef struct hae_st_tensor {
    char name[256];
    hae_dtype dtype; /* F32, BF16, F16, F8_E4M3, I32, I64 */
    int ndim;
    int64_t shape[HAE_MAX_DIMS];
    const void *data; /* points into the loaded file; may be unaligned for its dtype (copy, don't cast) */
    size_t nbytes;
} hae_st_tensor;

typedef struct hae_st_file hae_st_file;
/* Reads and checks a whole safetensors file: header length, JSON, dtypes, shapes vs byte ranges;
 * as in Hugging Face's reader the tensors must tile the data section (no overlaps, holes or trailing
 * bytes); names are at most 255 bytes; 0-d and zero-size tensors are allowed. A tensor of a dtype
 * hae does not map (F64, U8, ...) fails the open with HAE_ERR_UNSUPPORTED. */
hae_status hae_st_open(const char *path, hae_st_file **out);
void hae_st_close(hae_st_file *f); /* accepts NULL */
int hae_st_count(const hae_st_file *f);
const hae_st_tensor *hae_st_get(const hae_st_file *f, int i);
const hae_st_tensor *hae_st_find(const hae_st_file *f, const char *name); /* NULL if absent */
/* Value of a "__metadata__" key, or NULL. */
const char *hae_st_metadata(const hae_st_file *f, const char *key);
/* Writes tensors (data on the host) with optional metadata pairs (keys[i], values[i]) to path.tmp,
 * then renames it: a failed write never leaves a truncated file. Bad input is HAE_ERR_INVALID and
 * writes nothing; I/O failures are HAE_ERR_IO. */
hae_status hae_st_write(const char *path, const hae_st_tensor *tensors, int n, const char *const *meta_keys,
                        const char *const *meta_values, int n_meta);

/* ---------------------------------------------------------------- KV cache (memory/) */

typedef struct hae_kv_cache hae_kv_cache;
typedef struct hae_kv_layer_spec {
    int64_t cap; /* slots per sequence; 0: this layer keeps no KV */
    int64_t kv_heads;
    int64_t head_dim;
    int64_t v_dim; /* 0: V has its own buffer like K's; > 0 (mla, one kv head): V is the first v_dim dims of K */
    hae_tier tier; /* GPU: the backend's memory; host: hae_backend_alloc_host (device-mapped on CUDA) */
    int64_t gpu_seqs; /* host tier: sequences [0, gpu_seqs) stay in the backend's memory, [gpu_seqs, batch) in the host tier */
    bool fp8;      /* the FP8 layouts (above hae_attention_args): mla's (v_dim 512: HAE_MLA_FP8_ROW bytes a token, K
                      fp8-e4m3 [B, cap, 1, 656], V its [B, cap, 1, 512] view; head_dim 576, one kv head) or gqa's
                      (v_dim 0: K and V fp8-e4m3 [B, cap, kv_heads, head_dim + 16]; head_dim a multiple of 128 up
                      to 512); the cache's dtype elsewhere */
} hae_kv_layer_spec;
/* One contiguous K buffer per layer, [batch, cap, kv_heads, head_dim] in `dtype`, in its tier, and a V
 * buffer of the same shape unless V is a view of K. Fails before allocating anything when the GPU tier's
 * total exceeds `budget` bytes (0: the device's free memory) or the host tier's `host_budget` (0: the
 * machine's available RAM), naming bytes asked and available. */
hae_status hae_kv_cache_create(hae_backend *be, int n_layers, const hae_kv_layer_spec *specs, int64_t batch,
                               hae_dtype dtype, size_t budget, size_t host_budget, hae_kv_cache **out);
void hae_kv_cache_destroy(hae_kv_cache *kv);
/* K and V views of one layer ([B, cap, Hkv, D] and [B, cap, Hkv, Dv]: Dv = D, or v_dim with V's slots
 * strided inside K's); data NULL for layers without KV. */
/* The layer's sequences in one tier, [n, cap, kv_heads, head_dim] views (n = 0 and data NULL when it has none
 * there): a GPU-tier layer's are all on the GPU; a host-tier layer's first gpu_seqs on the GPU, the rest host. */
void hae_kv_cache_layer(const hae_kv_cache *kv, int layer, hae_tier tier, hae_tensor *k, hae_tensor *v);
size_t hae_kv_cache_bytes(const hae_kv_cache *kv);                   /* both tiers */
size_t hae_kv_cache_tier_bytes(const hae_kv_cache *kv, hae_tier tier); /* one tier */
/* Bytes of KV one token adds to one layer (K, and V unless it is a view of K). */
size_t hae_kv_bytes_per_token(const hae_kv_layer_spec *spec, hae_dtype dtype);

/* ---------------------------------------------------------------- the model */

typedef struct hae_model hae_model;

typedef struct hae_model_options {
    bool all_logits; /* keep logits of every position (for tests); else only the last per sequence */
    size_t index_logits_bytes; /* dsa layers: the indexer's logits buffer at most this large (their slices
                                  of a chunk are computed in turn; one token per sequence at least); 0: 256 MiB */
} hae_model_options;

/* Builds the stack of cfg on the backend: weights (initialised from cfg->seed), KV cache
 * (sized for prefill + decode tokens of runtime.batch sequences) and activations, all allocated
 * here; nothing allocates during forward. */
hae_status hae_model_create(const hae_config *cfg, hae_backend *be, const hae_model_options *opt,
                            hae_model **out);
void hae_model_destroy(hae_model *m);
/* Re-initialises every weight from seed (normal(0, initializer_range); output projections scaled
 * by 1/sqrt(2 n_layers); norms 1). Same seed, same weights, on every backend. */
hae_status hae_model_init_weights(hae_model *m, uint64_t seed);
/* Forgets all context: the next forward starts at position 0. */
void hae_model_reset(hae_model *m);
int64_t hae_model_position(const hae_model *m);

/* Runs T new tokens of each of the B sequences (tokens: host [B, T]) from the current position,
 * in chunks of runtime.prefill_chunk. On return *logits views the device logits, f32: with
 * all_logits [B, prefill + decode, V] indexed by absolute position, else [B, V] of the last token. */
hae_status hae_model_forward(hae_model *m, const int32_t *tokens, int64_t T, hae_tensor *logits);

/* A model's context (position, linear-layer states and KV cache) as host bytes, so that several
 * continuations can branch off one prefix (a shared eval context, a replayed decode). Restoring into
 * a model of other shapes, or from a buffer of another size, is HAE_ERR_INVALID and changes nothing. */
size_t hae_model_snapshot_bytes(const hae_model *m);
hae_status hae_model_snapshot_save(const hae_model *m, void *host, size_t bytes);
hae_status hae_model_snapshot_restore(hae_model *m, const void *host, size_t bytes);

/* Writes the dsa selections of every following decode forward (one token a sequence) to path, as text: a
 * line per step, dsa layer and sequence, "POS LAYER SEQ t1 .. tk": the position decoded and the k token
 * positions the indexer picked (-1 where the context holds fewer than k), for replaying cache policies
 * offline (bench/slot-policies.py). Each step waits for its selections to reach the host: an analysis
 * mode, not a serving one. NULL closes the file. A model without dsa layers, or a path that cannot be
 * written, is an error. */
hae_status hae_model_trace_selections(hae_model *m, const char *path);

/* Weights as safetensors with Hugging Face Llama names (model.layers.N.self_attn.q_proj.weight, ...). */
hae_status hae_model_save(const hae_model *m, const char *path);
/* Loads weights saved by hae_model_save or any file with those names and shapes; F32/BF16/F16
 * tensors convert to the model's dtype. Missing tensors and shape mismatches are errors; tensors the model
 * has no use for are skipped and counted (hae_model_unused_tensors). */
hae_status hae_model_load(hae_model *m, const char *path);
/* Tensors of the last loaded file that the model did not read (a deeper model's layers, or a learned indexer
 * under model.dsa.derived: true), and the first of their names (*first may be NULL; "" when none). */
int hae_model_unused_tensors(const hae_model *m, const char **first);

/* What a config allocates, computed without allocating (for `hae info` and budgets). */
typedef struct hae_model_plan {
    int64_t n_params;
    size_t weight_bytes;
    size_t kv_bytes;         /* all layers, runtime.batch sequences */
    size_t activation_bytes;
    int64_t context;                           /* prefill + decode */
    int64_t kv_slots[HAE_MAX_LAYERS];          /* KV slots per sequence of each layer */
    size_t kv_bytes_per_token[HAE_MAX_LAYERS]; /* K + V bytes one token adds to each layer */
    size_t state_bytes;                        /* recurrent and conv states, all layers and sequences */
    size_t state_bytes_per_seq[HAE_MAX_LAYERS]; /* each layer's fixed state per sequence */
} hae_model_plan;
hae_status hae_model_plan_get(const hae_config *cfg, const hae_model_options *opt, hae_model_plan *out);

typedef struct hae_model_stats {
    int64_t n_params;
    size_t weight_bytes;
    size_t kv_bytes;         /* allocated KV cache */
    size_t state_bytes;      /* recurrent states (linear layers) */
    size_t activation_bytes; /* activation and logits buffers */
    hae_device device;
    /* memory.dsa_kv = host: K/V bytes in the host tier (kv_bytes holds them too), the GPU token-slot
     * caches and prefill staging, and since creation the decode lookups that hit or missed the slots and
     * the bytes fetched H2D */
    size_t kv_host_bytes, slot_cache_bytes, stage_bytes;
    int64_t slot_hits, slot_misses;
    size_t fetched_bytes;
    hae_tier dsa_kv; /* where the dsa layers' K/V went (memory.dsa_kv: auto resolved) */
    int64_t dsa_gpu_seqs; /* how many sequences (the first) keep their dsa K/V on the GPU: the batch on the GPU tier */
    int n_micro;          /* decode micro-batches (1: one batch) and their sizes, in sequence order */
    int64_t micro[HAE_MICRO_MAX];
} hae_model_stats;
void hae_model_stats_get(const hae_model *m, hae_model_stats *s);
hae_backend *hae_model_backend(const hae_model *m);

/* ---------------------------------------------------------------- eval: recall tasks and mechanism probes (eval/)
 * DESIGN.md §3. Seeded generators of recall tasks whose answers are known by construction, and probes
 * that write the same tasks directly as keys and values into one layer kind's real ops (no weights).
 *
 * Token layout, shared by every task (f = HAE_TOK_FIRST + noise_vocab):
 *     0 PAD (filler carrying nothing), 1 BOS, 2 QUERY, 3 LINK, 4 LIST, 5 NEEDLE, 6-7 reserved
 *     [HAE_TOK_FIRST, f)            noise tokens (the filler; PAD when noise_vocab is 0)
 *     mqar, niah:  keys [f, f + n), values [f + n, f + 2 n), n = (vocab - f) / 2
 *     multihop:    variables [f, vocab) (both the keys and the values)
 * Sequences: BOS, the context (blocks at uniformly random positions among filler), then the questions,
 * each followed by its answers teacher-forced, so a model is scored on its next-token prediction at
 * query_pos[i] + j for the j-th answer of question i:
 *     mqar      context of "k v" pairs;             questions "QUERY k" -> v (the latest value written to k)
 *     multihop  context of "LINK a_i a_i+1" links;  "QUERY a0" -> aH (follow the chain), or
 *                                                   "LIST a0" -> a1 ... aH (every variable holding a0's value)
 *     niah      context of "NEEDLE k v" needles;    "QUERY k" -> v
 * Arguments left 0 take the default their comment gives. */

enum { HAE_TOK_PAD, HAE_TOK_BOS, HAE_TOK_QUERY, HAE_TOK_LINK, HAE_TOK_LIST, HAE_TOK_NEEDLE, HAE_TOK_FIRST = 8 };

const char *hae_task_kind_name(hae_task_kind k); /* "mqar", "multihop", "niah" */

/* Zoology's multi-query associative recall. */
typedef struct hae_mqar_args {
    int64_t length;      /* tokens in all, >= 64 */
    int64_t vocab;       /* token ids in [0, vocab) */
    int64_t pairs;       /* key/value pairs written, >= 1; values are distinct */
    int64_t queries;     /* pairs asked (at most one question per key); 0: every key written */
    float power;         /* which pairs are asked: 0 uniform, > 0 P(pair) ~ distance^-power (distance from
                            the pair to the end of the context), favouring recent pairs */
    int64_t noise_vocab; /* distinct noise tokens filling the context; 0: PAD */
    bool dup_keys;       /* keys drawn with replacement (a later pair overwrites); else all distinct */
    uint64_t seed;
} hae_mqar_args;

/* RULER-style variable tracking: chains a0 -> a1 -> ... -> aH of distinct variables. */
typedef struct hae_multihop_args {
    int64_t length;      /* >= 64 */
    int64_t vocab;
    int hops;            /* H >= 1 links per chain */
    int64_t chains;      /* chains written, >= 1; those not asked are distractors */
    int64_t queries;     /* chains asked; 0: every chain */
    hae_hops_form form;
    bool shuffle;        /* a chain's links in any order; else in hop order, as variable tracking writes them */
    int64_t noise_vocab; /* 0: PAD filler */
    uint64_t seed;
} hae_multihop_args;

/* Needles in a haystack: one (single) or several keys (multi-key: the unasked needles are decoys). */
typedef struct hae_niah_args {
    int64_t length; /* >= 64 */
    int64_t vocab;
    int64_t needles;     /* >= 1, distinct keys and values */
    int64_t queries;     /* needles asked; 0: every needle */
    int64_t noise_vocab; /* 0: PAD filler */
    uint64_t seed;
} hae_niah_args;

/* A generated task; every array is owned by the task (hae_task_free). */
typedef struct hae_task {
    hae_task_kind kind;
    int64_t vocab;
    int64_t n_tokens;
    int32_t *tokens;     /* [n_tokens] */
    int64_t context;     /* tokens before the first question */
    int32_t noise_lo, noise_hi, key_lo, key_hi, value_lo, value_hi; /* the layout's ranges, [lo, hi) */
    int64_t n_pairs;     /* associations the context writes, in position order */
    int64_t *pair_pos;   /* [n_pairs] position of the key token (k, a_i) */
    int32_t *pair_key;   /* [n_pairs] */
    int32_t *pair_value; /* [n_pairs] */
    int hops;            /* lookups from a question's key to its last answer (1 but for multihop) */
    int64_t n_queries;
    int64_t *query_pos;  /* [n_queries] position of the asked key (k, a0) */
    int32_t *query_key;  /* [n_queries] */
    int64_t *answer_off; /* [n_queries + 1] question i's answers are answers[answer_off[i] .. answer_off[i+1]) */
    int32_t *answers;    /* the last answer_off[i+1] - answer_off[i] of its hops lookups, in hop order */
} hae_task;

/* With out NULL a generator only makes its checks (lengths, vocabulary room), generating nothing; mqar with
 * dup_keys can still fail when generating, if the seed draws fewer distinct keys than queries asks. */
hae_status hae_task_mqar(const hae_mqar_args *a, hae_task **out);
hae_status hae_task_multihop(const hae_multihop_args *a, hae_task **out);
hae_status hae_task_niah(const hae_niah_args *a, hae_task **out);
void hae_task_free(hae_task *t); /* accepts NULL */

/* Mechanism probes. Every token id gets a key code (K dims) and a value code (V dims): key and variable
 * tokens random unit vectors, noise tokens too, PAD, BOS and markers zero. The context's position t
 * writes (key code, value code) of the pair whose key sits at t, of the noise token at t (paired with
 * a value token's code chosen by its id), or nothing (zero vectors). Then each question's key code is
 * the query; the output is decoded to the value token whose code has the largest dot product (none
 * for a zero output), which is fed back as the next query for multi-hop. Per kind:
 *   full      hae_attention over a KV cache of the context (q, k, v of dim max(K, V), zero padded);
 *   dsa       the FP8 lightning indexer over the same keys (one head, D_I = 128: Hadamard, hae_fp8_quant,
 *             hae_index_write, hae_index_logits, hae_topk), then hae_sparse_attention over the top-k;
 *             or a bf16 / f32 ranking (hae_gemm on the rotated keys, no ReLU: it only reorders negative
 *             scores) in place of the FP8 logits, to isolate the FP8 effect;
 *   linear    the kind's recurrence (hae_linear_kind_of) through hae_linear_attn over the context with
 *   kinds     scale 1, then a read-only call (zero keys and values, no decay) answering every question
 *             from the final state S: o = S^T map(q). */
typedef enum hae_value_code { HAE_CODE_RANDOM, HAE_CODE_ONEHOT } hae_value_code;

typedef struct hae_probe_args {
    hae_layer_kind kind;   /* full, dsa or a linear kind */
    int64_t K;             /* key dim (the linear state is K x V) */
    int64_t V;             /* value dim */
    hae_value_code values; /* random unit codes, or one-hot (needs V >= the task's value tokens) */
    bool orthogonal;       /* the keys the context writes orthonormal (needs their count, + 1 if key_cos > 0, <= K) */
    double key_cos;        /* in [0, 1): cosine between any two key tokens' codes (decoys near each true key) */
    float scale;           /* full, dsa: softmax scale on unit keys */
    int64_t topk;          /* dsa: tokens each query attends to */
    hae_dtype index_dtype; /* dsa: fp8-e4m3 (the real indexer), bf16 or f32 ranking */
    float log_decay;       /* decaying linear kinds: log decay per token, <= 0; 0: no forgetting (run as decay none) */
    float beta_logit;      /* delta kinds: beta = sigmoid(beta_logit) for every write */
    bool kind_qk_map;      /* linear kinds: the kind's own q/k map (elu+1 for linear), else the L2 norm */
    int chunk;             /* linear kinds: 0 recurrent, or 16, 32, 64, 128 tokens per chunk */
    uint64_t seed;         /* of the codes */
} hae_probe_args;
/* K = V = 64, random codes, scale 32, top-k 64, fp8, log_decay 0, beta_logit 40 (writes fully), chunk 64. */
hae_probe_args hae_probe_defaults(hae_layer_kind kind);

typedef struct hae_probe_result {
    hae_layer_kind kind;
    hae_task_kind task;
    int64_t context;       /* tokens written */
    int64_t pairs;         /* associations among them */
    int hops;
    int64_t K, V;
    int64_t topk;          /* dsa; 0 otherwise */
    hae_dtype index_dtype; /* dsa */
    double key_cos;
    float log_decay;       /* linear kinds */
    hae_qk_map qk_map;     /* linear kinds */
    int64_t queries;
    int64_t correct;       /* questions whose every answer decoded exactly */
    double recall;         /* correct / queries */
} hae_probe_result;

/* One probe run of `task` on be (any backend the kind's ops support). */
hae_status hae_probe_run(hae_backend *be, const hae_probe_args *p, const hae_task *task, hae_probe_result *out);
/* Writes n results as a markdown table and/or JSONL lines (either FILE may be NULL); HAE_ERR_IO if a write fails. */
hae_status hae_probe_report(const hae_probe_result *r, int64_t n, FILE *markdown, FILE *jsonl);

/* Softmax dilution: a query equal to one needle's key among `length` random keys (entries N(0, 1),
 * D dims, scale 1/sqrt(D)), so the needle's logit is |k|^2 / sqrt(D) ~ sqrt(D) against N(0, 1) for
 * the rest. full_weight is the needle's softmax weight over every key (e^sqrt(D) / (e^sqrt(D) +
 * length e^(1/2)) in expectation: it falls with length); sparse_weight is its weight when the FP8
 * lightning indexer (the same keys, Hadamard-rotated, e4m3) picks the top-k first (0 when the needle
 * is not picked). Both weights are read from hae_sparse_attention's LSE. */
typedef struct hae_dilution_args {
    int64_t length; /* keys, >= 2 */
    int64_t D;      /* 128 */
    int64_t topk;   /* >= 1 */
    uint64_t seed;
} hae_dilution_args;
typedef struct hae_dilution_result {
    double full_weight, sparse_weight;
    bool needle_picked;
} hae_dilution_result;
hae_status hae_probe_dilution(hae_backend *be, const hae_dilution_args *a, hae_dilution_result *out);

/* Hand-built circuits: models whose weights are constructed, not trained, so that a known stack answers a
 * task's questions exactly, run through the whole engine (hae_model_forward: chunked prefill, decode steps,
 * KV caches, the FP8 indexer and top-k, the linear kernels). The stack, in f32:
 *     layer 0    deltanet, the previous-token step: its short conv reads token t-1 (and the marker's distance)
 *                into the residual stream; the MLP after it gates on the marker (SwiGLU as an AND)
 *     layer 1..h one retrieval layer per hop, of the kind the caller picks: query = the current key's code,
 *                key = the code of the token before an association's value, value = that value's code
 *     LM head    the value code read back as logits (ties go to the lowest token id, as greedy sampling)
 * Every token that can be asked or answered has a binary code of n dims (one-hot while the codes fit in n,
 * else distinct sets of w ones: any two overlap in at most w - 1). Associations are marked by the layout:
 * mqar "k v" (the token before v is a key), niah "NEEDLE k v", multihop "LINK a b". A softmax hop scores
 * 48 per unit of code overlap, so the match beats every other key by e^48; swa sees only its window; dsa
 * attends over the top-k of the derived indexer (the FP8 copy of the same q and k); a linear hop writes
 * k v^T for marked positions only and reads S^T q, exact while the keys are orthonormal (codes one-hot).
 * eval/README.md gives the full construction and what each kind scores. */
#define HAE_CIRCUIT_MAX_HOPS 16

typedef struct hae_circuit_args {
    hae_task_kind task;    /* the layout read: mqar or niah (1 hop), multihop */
    int64_t vocab;         /* the task's vocab and noise_vocab */
    int64_t noise_vocab;
    int hops;              /* retrieval layers, 1..HAE_CIRCUIT_MAX_HOPS */
    hae_layer_kind kinds[HAE_CIRCUIT_MAX_HOPS]; /* each hop's mixer: any layer kind */
    int64_t context;       /* tokens the model is sized for (runtime.prefill); 0 in hae_circuit_eval: the task's */
    int64_t code_dim;      /* n, 1..128; 0: 64. The linear and attention heads are 64 wide (128 when n > 64) */
    int64_t window;        /* swa hops' model.swa.window_size; 0: the base config's */
    int64_t topk;          /* dsa hops' model.dsa.index_topk; 0: the base config's */
    float log_decay;       /* decaying linear kinds: log decay per token, <= 0; 0: no forgetting */
    float beta_logit;      /* delta kinds: beta = sigmoid(beta_logit); 0: 40 (writes fully) */
    uint64_t seed;         /* of the codes when they are not one-hot */
} hae_circuit_args;

/* The circuit's config and weights: base (NULL: the built-in default) keeps its runtime, memory and dsa
 * settings; the model section is the circuit's (dtype f32, batch 1, prefill = context, decode 0). The weights
 * go to weights_path as safetensors under the model's names, for hae_model_load. */
hae_status hae_circuit_build(const hae_circuit_args *a, const hae_config *base, hae_config *cfg,
                             const char *weights_path);
/* hae_circuit_build's checks (a, and the circuit's config on base) without building anything; *code_weight
 * (NULL: not wanted) gets w, the ones per code (1: one-hot, so the written keys are orthonormal). */
hae_status hae_circuit_check(const hae_circuit_args *a, const hae_config *base, int *code_weight);

typedef struct hae_circuit_result {
    int64_t queries;
    int64_t correct;         /* questions whose every answer was the argmax */
    double recall;           /* correct / queries */
    int64_t answers, answers_correct;
    int code_weight;         /* w: ones per code (1: one-hot, orthonormal keys) */
} hae_circuit_result;

/* Scores task t on a model built from a (batch 1): with decode false one forward over every token (the model
 * must keep all logits, hae_model_options.all_logits), else a prefill of the context and then one decode step
 * per question token, teacher-forced. A question is correct when the argmax at query_pos[i] + j is its j-th
 * answer for every j. correct, when not NULL, gets [n_queries] 0/1. Multihop's follow form needs hops equal
 * to the task's, its list form 1 hop. The model is reset first. */
hae_status hae_circuit_run(hae_model *m, const hae_circuit_args *a, const hae_task *t, bool decode,
                           hae_circuit_result *out, uint8_t *correct);
/* Build, create on be, load, run, destroy: one call per (circuit, task). */
hae_status hae_circuit_eval(hae_backend *be, const hae_circuit_args *a, const hae_config *base, const hae_task *t,
                            bool decode, const char *weights_path, hae_circuit_result *out, uint8_t *correct);

/* The eval grid: the points the config's eval section names (DESIGN.md §3; docs/config.md, eval). */
typedef struct hae_eval_point {
    hae_task_kind task;
    int64_t length; /* tokens per task */
    int64_t pairs;  /* the pairs axis value: mqar pairs, niah needles, multihop links when chains is 0; else 0 */
    int64_t hops;   /* 1 but for multihop */
    int64_t chains; /* multihop: the chains axis value (0: pairs / hops chains); 0 for the other tasks */
} hae_eval_point;
#define HAE_EVAL_MAX_POINTS 100000

/* The points of cfg->eval, task outermost and length innermost (so consecutive points read as recall vs
 * length): mqar and niah pairs x lengths; multihop hops x chains x lengths, each chain value 0 taking the
 * pairs axis (pairs / hops chains). *points is malloc'd (caller frees); more than HAE_EVAL_MAX_POINTS is
 * HAE_ERR_INVALID. */
hae_status hae_eval_grid(const hae_config *cfg, hae_eval_point **points, int64_t *n);
/* The task of point p with `seed`, its knobs from cfg->eval (vocab 0: model.vocab_size); with out NULL only
 * the generator's checks run. A failure names the point. */
hae_status hae_eval_task(const hae_config *cfg, const hae_eval_point *p, uint64_t seed, hae_task **out);

/* Model-level runs: tasks through a whole model (hae_model_forward), batched over runtime.batch sequences
 * that share one layout (seeds of one grid point). Each sequence is prefilled up to its first scored position,
 * then fed up to each next one in turn, the answers being in its tokens (teacher forcing); at position
 * query_pos[i] + j the next-token logits are scored against answer j of question i: the argmax (ties to the
 * lower id) must be that answer. A question is correct when all its answers are. */
typedef struct hae_eval_site {
    int64_t row;          /* the sequence in the batch */
    const hae_task *task; /* its task */
    int64_t question;     /* i */
    int64_t answer;       /* j: the token answers[answer_off[i] + j] is expected */
    int64_t pos;          /* query_pos[i] + j: the logits predict token pos + 1 */
} hae_eval_site;
/* A stand-in for the model's last step: called with the host logits [V] at every scored site before they are
 * scored, it may overwrite them. A causal one reads only task->tokens[0 .. pos] and the layout's ranges. */
typedef hae_status (*hae_eval_logits_fn)(void *ctx, const hae_eval_site *site, float *logits, int64_t V);
/* Test doubles. The oracle answers from the tokens up to the site alone (the latest value written to the key,
 * or the next or last variable of the chain), so it scores 100% exactly when the scored positions and answers
 * line up; ctx is unused. The random double picks uniformly, from hae_uniform(*(const uint64_t *)ctx, ...) (ctx
 * NULL: seed 0) keyed by the site and the asked token, one token of the answer's range (a model that knows the
 * format but not the answers): it scores hae_eval_score's chance. */
hae_status hae_eval_oracle(void *ctx, const hae_eval_site *site, float *logits, int64_t V);
hae_status hae_eval_random(void *ctx, const hae_eval_site *site, float *logits, int64_t V);

typedef struct hae_eval_score {
    int64_t questions, correct;       /* questions asked; those whose every answer was the argmax */
    int64_t answers, answers_correct; /* the same per answer token */
    double chance;                    /* sum over questions of a uniform pick's odds: prod over answers of 1 / the
                                         answer range's size (mqar, niah: values; multihop: variables) */
    int64_t tokens;                   /* tokens fed to the model, padding rows left out */
    double seconds;                   /* wall time of the forwards and the scoring */
} hae_eval_score;

typedef struct hae_eval_runner hae_eval_runner;
/* cfg's model on be for tasks of up to max_tokens tokens: its KV cache and states sized for runtime.batch
 * sequences of max_tokens (runtime.prefill and decode are not used), only the last position's logits kept.
 * Weights from cfg->seed, or loaded from `weights` (NULL: none). */
hae_status hae_eval_runner_create(const hae_config *cfg, hae_backend *be, int64_t max_tokens, const char *weights,
                                  hae_eval_runner **out);
void hae_eval_runner_destroy(hae_eval_runner *r); /* accepts NULL */
int64_t hae_eval_runner_batch(const hae_eval_runner *r);
const hae_model *hae_eval_runner_model(const hae_eval_runner *r);
/* New weights for the runner's model (a file hae_model_load takes): `hae train` scores its weights as it goes. */
hae_status hae_eval_runner_load(hae_eval_runner *r, const char *weights);
/* Decode mode (off when created): each sequence is prefilled up to its task's context (the tokens before the
 * first question), then fed a token per forward (a decode step each, as generation runs) instead of a forward
 * per span up to the next scored position. The scored positions and answers are the same. */
void hae_eval_runner_set_decode(hae_eval_runner *r, bool decode);
/* Runs n tasks (1 <= n <= the batch, one layout: tokens, context, questions and answer positions; token ids
 * below model.vocab_size) as one batch and adds their counts to *score. Rows past n repeat task 0 unscored.
 * hook (NULL: none) sees every scored site first. */
hae_status hae_eval_runner_run(hae_eval_runner *r, const hae_task *const *tasks, int64_t n, hae_eval_logits_fn hook,
                               void *hook_ctx, hae_eval_score *score);

/* Reports. A results table is a CSV file as `hae eval` writes it: a header, then a row per grid point (its knobs
 * and config keys, then its results). hae_eval_report merges tables (columns united in first-seen order, a `run`
 * column first when runs are named), then writes recall as markdown pivot tables and SVG line charts: against
 * length (recall_vs_length.svg, always) and against hops (recall_vs_hops.svg, when some series has two or
 * more). A series is the rows alike in every column but the x axis, the results (context, stored_pairs,
 * questions, correct, answers, answers_correct, recall, chance, seconds, tokens_per_s, error, job, run) and the
 * execution settings (backend, seeds, output_dir, runtime.*, memory.*); rows alike at one x pool their
 * questions. Its label names the columns that vary between series. */
typedef struct hae_eval_report_args {
    const char *const *inputs; /* [n_inputs] results.csv paths */
    const char *const *runs;   /* [n_inputs] the `run` column's value per input, or NULL for no such column */
    int n_inputs;
    const char *title;         /* heads the charts */
    const char *merged_csv;    /* where to write the merged table, or NULL */
    const char *svg_dir;       /* where to write the charts, or NULL */
} hae_eval_report_args;
hae_status hae_eval_report(const hae_eval_report_args *a, FILE *markdown);
/* The resolved config as CSV: its dotted keys (hae_config_to_yaml's, less the eval and sweep sections) and their
 * values, each a line of comma-separated cells without a newline, malloc'd (caller frees). */
hae_status hae_eval_config_csv(const hae_config *cfg, char **keys, char **values);

/* ---------------------------------------------------------------- memory manager (memory/)
 * DESIGN.md §2. Two tiers, GPU memory and host RAM, each with a byte budget checked before anything is
 * allocated. The page pool below holds pages of several classes in both tiers, with per-tier and per-kind
 * accounting; a model's K/V is one buffer per layer in the tier its kind is placed in (the KV cache above),
 * host-tier layers reached through GPU token slots and a staging buffer (memory/slot_cache.c); the model
 * does not page its K/V through the pool yet. */

typedef enum hae_mem_kind {
    HAE_MEM_WEIGHTS,      /* the model's parameters (plans only) */
    HAE_MEM_ACTIVATIONS,  /* activation, logits and workspace buffers (plans only) */
    HAE_MEM_DSA_KV,       /* K/V of dsa layers, and the GPU cache of host-tier K/V */
    HAE_MEM_INDEX_KEYS,   /* the FP8 indexer keys of dsa layers */
    HAE_MEM_FULL_KV,      /* K/V of full and swa layers, and the staging of host-tier K/V streamed to the GPU */
    HAE_MEM_LINEAR_STATE, /* recurrent and conv states of the linear layers */
    HAE_MEM_KIND_COUNT
} hae_mem_kind;
const char *hae_tier_name(hae_tier t);         /* "gpu", "host", "auto" */
const char *hae_mem_kind_name(hae_mem_kind k); /* "weights", "activations", "dsa_kv", ... */

/* A class of pages: all of one size and kind, e.g. the K/V of a group of layers that share shapes and
 * placement (a page then holds those layers' K/V for the same P tokens). */
typedef struct hae_page_class {
    hae_mem_kind kind;
    size_t page_bytes;               /* bytes of one page, >= 1 */
    int64_t pages[HAE_TIER_COUNT];   /* pages of this class each tier's arena holds */
    bool fixed;                      /* one page per sequence whatever its length (recurrent states) */
} hae_page_class;

typedef struct hae_page_pool_desc {
    int64_t page_tokens;             /* P: tokens per page (memory.page_size) */
    int64_t max_seqs;                /* sequences 0 .. max_seqs - 1 */
    int64_t max_seq_tokens;          /* tokens one sequence may hold (bounds its page lists) */
    int n_classes;
    const hae_page_class *classes;   /* [n_classes] */
    size_t budget[HAE_TIER_COUNT];   /* bytes each tier's pages may take; 0: what the backend's device (gpu
                                        tier) or the machine's RAM (host tier) has free */
    bool fail_arena[HAE_TIER_COUNT]; /* tests: that tier's arena allocation fails as if out of memory */
} hae_page_pool_desc;

/* Bytes resident, their peak, and bytes moved between tiers since the pool was created (a decode step's
 * moves are the difference of two snapshots). */
typedef struct hae_mem_stats {
    size_t budget[HAE_TIER_COUNT];                         /* the limit each tier was checked against */
    size_t capacity[HAE_TIER_COUNT][HAE_MEM_KIND_COUNT];   /* bytes of the arenas' pages */
    size_t resident[HAE_TIER_COUNT][HAE_MEM_KIND_COUNT];   /* bytes of pages in use */
    size_t peak[HAE_TIER_COUNT][HAE_MEM_KIND_COUNT];
    size_t resident_total[HAE_TIER_COUNT], peak_total[HAE_TIER_COUNT];
    size_t h2d[HAE_MEM_KIND_COUNT], d2h[HAE_MEM_KIND_COUNT]; /* host -> GPU tier, GPU -> host tier */
} hae_mem_stats;

typedef struct hae_page_pool hae_page_pool;

/* Checks the arenas against the budgets (every tier, before allocating anything: a pool that cannot fit
 * is HAE_ERR_OOM naming the bytes asked and available per tier), then allocates them: the GPU tier with
 * the backend (device memory on CUDA, host memory on the CPU), the host tier in host RAM. Padding that
 * aligns each class to 256 bytes is not counted. A pool is used from one thread at a time. */
hae_status hae_page_pool_create(hae_backend *be, const hae_page_pool_desc *d, hae_page_pool **out);
void hae_page_pool_destroy(hae_page_pool *p); /* accepts NULL */
/* Grows sequence seq's page list of class cls to hold `tokens` tokens (ceil(tokens / P) pages; one for a
 * fixed class), new pages taken from `tier`; never shrinks. All or nothing: when the tier has too few
 * free pages (HAE_ERR_OOM with the numbers) or an allocation fails, the pool is left as it was. */
hae_status hae_page_pool_grow(hae_page_pool *p, int64_t seq, int cls, int64_t tokens, hae_tier tier);
/* Returns every page of sequence seq, of every class, to its tier. */
hae_status hae_page_pool_free_seq(hae_page_pool *p, int64_t seq);
/* Moves page `page` of seq's list of class cls to tier `to`, its bytes copied (H2D or D2H on CUDA); the
 * page keeps its place in the list. No free page in `to`: HAE_ERR_OOM, nothing changed. */
hae_status hae_page_pool_move(hae_page_pool *p, int64_t seq, int cls, int64_t page, hae_tier to);
/* Pages in seq's list of class cls (0 for arguments out of range). */
int64_t hae_page_pool_seq_pages(const hae_page_pool *p, int64_t seq, int cls);
/* Where page `page` of seq's list of class cls lives: its bytes (device memory for the GPU tier on CUDA)
 * and its tier. */
hae_status hae_page_pool_page(const hae_page_pool *p, int64_t seq, int cls, int64_t page, void **data,
                              hae_tier *tier);
/* Free pages of class cls in a tier (0 for arguments out of range). */
int64_t hae_page_pool_free_pages(const hae_page_pool *p, int cls, hae_tier tier);
void hae_page_pool_stats(const hae_page_pool *p, hae_mem_stats *out);
/* Checks every invariant (each page either free or in exactly one list, lists and owners agreeing, the
 * accounting equal to the pages in use); HAE_ERR_INVALID naming the first one broken. For tests and
 * debugging: it walks every page and allocates a scratch bitmap. */
hae_status hae_page_pool_validate(const hae_page_pool *p);
/* Tests: the n-th page taken from `tier` from now on (1: the next) fails as an allocation failure would;
 * 0 clears it. */
void hae_page_pool_fail_after(hae_page_pool *p, hae_tier tier, int64_t n);

/* The analytic plan: what a config takes at `context` tokens per sequence for runtime.batch sequences,
 * placed as its memory section says, without building anything. Weights and activations (from
 * hae_model_plan_get at that context) are on the GPU; K/V in pages of memory.page_size tokens (swa
 * layers: their window's slots); indexer keys on the GPU; dsa K/V on the host tier add their GPU token
 * cache (memory.cache_tokens slots per layer and sequence); host-tier layers add one staging buffer of
 * the largest such layer's K/V, as a run allocates it (full/swa layers stream through it at every step,
 * dsa layers when the context outgrows the slots); linear states on the host tier are parking room:
 * the running batch's states stay on the GPU as well. */
typedef struct hae_mem_plan {
    int64_t context, batch;
    hae_tier dsa_kv; /* the placement of dsa K/V: memory.dsa_kv, auto resolved against memory.gpu_budget (0:
                        unbounded, so the GPU): the GPU when all fit there, else host with */
    int64_t dsa_gpu_seqs; /* the sequences (the first) whose dsa K/V are on the GPU: the batch on the GPU tier, else
                             the split (auto: the most that fit) */
    size_t bytes[HAE_TIER_COUNT][HAE_MEM_KIND_COUNT];
    size_t total[HAE_TIER_COUNT];
} hae_mem_plan;
hae_status hae_mem_plan_get(const hae_config *cfg, int64_t context, hae_mem_plan *out);
/* The config's full-attention twin: the same shapes, every layer `full`, everything on the GPU. */
void hae_mem_twin(const hae_config *cfg, hae_config *twin);
/* The longest context per sequence whose GPU total fits gpu_budget bytes and, when memory.host_budget is
 * set, whose host total fits that (bisection on the plan); 0 when not even one token fits;
 * HAE_MEM_MAX_CONTEXT (or less, where the bytes would overflow) when the bytes never reach the budgets. */
#define HAE_MEM_MAX_CONTEXT ((int64_t)1 << 40)
hae_status hae_mem_max_context(const hae_config *cfg, size_t gpu_budget, int64_t *out);

/* `hae mem`'s report: for each context, the config's and its twin's bytes per tier and kind, the GPU
 * saving, and the longest context each fits in gpu_budget: a markdown table, a CSV (one row per model and
 * context) and an SVG chart of GPU bytes against context with the budget as a line. Any FILE may be NULL. */
typedef struct hae_mem_report_args {
    const hae_config *cfg;
    const int64_t *contexts; /* [n_contexts], each >= 1 */
    int n_contexts;
    size_t gpu_budget;
    const char *budget_note; /* where gpu_budget came from ("memory.gpu_budget", ...), or NULL */
} hae_mem_report_args;
hae_status hae_mem_report(const hae_mem_report_args *a, FILE *markdown, FILE *csv, FILE *svg);

/* Host-tier memory: on CUDA page-locked in chunks of HAE_HOST_CHUNK bytes starting at multiples of it
 * (cudaHostRegister, chunks in parallel, where cudaHostAlloc zero-fills through the driver) and mapped into
 * the device's address space at the same address, so a kernel reads it over PCIe and a tensor over it
 * carries the backend's device; a copy engine's copy (cudaMemcpy*) must not span two chunks. On the CPU
 * ordinary memory, 64-byte aligned. Not zeroed. */
#define HAE_HOST_CHUNK ((size_t)1 << 30)
hae_status hae_backend_alloc_host(hae_backend *be, size_t bytes, void **out);
void hae_backend_free_host(hae_backend *be, void *p); /* accepts NULL */

/* Token-granular fetch from the host tier into GPU slots (DESIGN.md §2): for every sequence b and entry
 * i < n with src_rows[b, i] >= 0,
 *     dst[b, dst_rows[b, i], :] = src[b, src_rows[b, i], :]
 * a row being W elements of any one dtype (a token's K, V or mla latent); entries with src_rows < 0 are
 * skipped, and one sequence's dst_rows are distinct. Rows out of range are skipped on the GPU (a kernel
 * cannot report them without a sync) and HAE_ERR_INVALID on the CPU. */
typedef enum hae_gather_method {
    HAE_GATHER_AUTO,   /* the kernel */
    HAE_GATHER_KERNEL, /* at most max_blocks thread blocks read the mapped rows over PCIe, 16 B per lane */
    HAE_GATHER_COPIES  /* one cudaMemcpyBatchAsync descriptor per row: src_rows and dst_rows in host memory */
} hae_gather_method;
typedef struct hae_kv_gather_args {
    hae_tensor src;      /* [B, cap, W] host-tier memory (hae_backend_alloc_host), rows may be strided */
    hae_tensor dst;      /* [B, slots, W] the backend's memory, src's dtype */
    hae_tensor src_rows; /* [B, n] i32 in [-1, cap) */
    hae_tensor dst_rows; /* [B, n] i32 in [0, slots) */
    hae_gather_method method;
    int max_blocks;      /* HAE_GATHER_KERNEL: 0 = as few as keep ~256 KiB of rows in flight (they fill PCIe; at
                          * most 16), so a concurrent kernel keeps the other SMs */
} hae_kv_gather_args;
hae_status hae_kv_gather(hae_backend *be, const hae_kv_gather_args *a);

/* The GPU token-slot cache of a dsa layer's host-tier K/V: S slots per sequence, each holding a token
 * fetched before. State per sequence: map[t] = slot + 1 of token t (0: none), owner[s] = token + 1 held
 * by slot s (0: free), stamp[s] = the step that last used slot s (0: never); all zeros is empty. Lookup
 * (idx given), for every sequence b, exact LRU:
 *   - an entry whose token holds a slot hits: out = that slot, its stamp = step;
 *   - the misses take the m slots not used at this step with the smallest (stamp, slot), each evicting
 *     the token it held; the i-th miss in entry order gets the i-th of those slots in slot order;
 *     out = the slot, stamp = step, and the fetch list gets src_rows = token, dst_rows = slot;
 *   - entries < 0 or >= cap stay -1 in out; the rest of the fetch list is src_rows -1, dst_rows 0.
 * One sequence's valid tokens must be distinct (top-k's are); k <= S. Range (idx.data NULL): tokens
 * [lo, hi) take slots [lo, hi) (hi <= S; the cache mirrors a prefix, so it must hold only tokens < lo),
 * and the fetch list's first hi - lo entries copy them. counts[0] += hits and counts[1] += misses of
 * lookups (range copies count as neither). */
typedef struct hae_kv_slots_args {
    hae_tensor idx;      /* [B, k] i32 tokens, or data NULL for a range */
    hae_tensor map;      /* [B, cap] i32 state */
    hae_tensor owner;    /* [B, S] i32 state */
    hae_tensor stamp;    /* [B, S] i32 state */
    hae_tensor out;      /* [B, k] i32 slots (lookups) */
    hae_tensor src_rows; /* [B, n] i32: n >= k (lookup) or >= hi - lo (range), for hae_kv_gather */
    hae_tensor dst_rows; /* [B, n] i32 */
    hae_tensor counts;   /* [2] i64 */
    int32_t step;        /* >= 1; a lookup's step must exceed every earlier one's */
    int64_t lo, hi;      /* range */
} hae_kv_slots_args;
hae_status hae_kv_slots(hae_backend *be, const hae_kv_slots_args *a);

/* ---------------------------------------------------------------- training (train/)
 * A training copy of a config's model on the CPU or a GPU: fp32 master weights under the model's names, a forward that
 * keeps its activations and computes the logits hae_model_forward computes, a hand-written backward, AdamW.
 * Every layer kind: full, swa, the linear family, and dsa with a learned indexer (distilled from the layer's
 * attention, train.indexer_warmup); attention of the gqa form, or mla on the CPU. */

typedef struct hae_trainer hae_trainer;
/* cfg's model for batches of up to max_batch sequences of max_tokens tokens, on be (CPU or CUDA: weights, moments
 * and activations in its memory); weights from cfg->seed (the values hae_model_init_weights gives), the optimiser
 * at step 0. Derived dsa indexers, and the mla form on CUDA, are HAE_ERR_UNSUPPORTED. */
hae_status hae_trainer_create(const hae_config *cfg, hae_backend *be, int64_t max_batch, int64_t max_tokens,
                              hae_trainer **out);
void hae_trainer_destroy(hae_trainer *t); /* accepts NULL */
/* The weights as f32 safetensors under the model's names (hae_model_load and `hae eval --weights` read them);
 * loading takes any file hae_model_load takes. */
hae_status hae_trainer_save(const hae_trainer *t, const char *path);
hae_status hae_trainer_load(hae_trainer *t, const char *path);
/* The optimiser's state: AdamW's moments per parameter (NAME.exp_avg, NAME.exp_avg_sq) and the step count. */
hae_status hae_trainer_save_optim(const hae_trainer *t, const char *path);
hae_status hae_trainer_load_optim(hae_trainer *t, const char *path);

/* B sequences of T tokens, of which n positions are scored: row pos[i] = b T + t predicts target[i]. */
typedef struct hae_train_batch {
    const int32_t *tokens; /* [B, T] */
    int64_t B, T;
    const int64_t *pos;    /* [n] */
    const int32_t *target; /* [n] */
    int64_t n;
} hae_train_batch;
/* The forward: the scored rows' logits (host [n, V], or NULL), their mean cross-entropy and, per scored row,
 * whether the argmax (ties to the lower id) is the target (correct [n], or NULL). */
hae_status hae_trainer_forward(hae_trainer *t, const hae_train_batch *b, float *logits, double *loss, uint8_t *correct);
/* The forward, then the gradients of the mean loss (replacing the last ones). */
hae_status hae_trainer_backward(hae_trainer *t, const hae_train_batch *b, double *loss, uint8_t *correct);
/* One AdamW step at learning rate lr from the gradients, first scaled down to the global norm train.clip when
 * above it; *grad_norm (may be NULL) gets the norm before clipping. */
hae_status hae_trainer_step(hae_trainer *t, float lr, double *grad_norm);
int64_t hae_trainer_steps(const hae_trainer *t); /* optimiser steps taken */
/* The last backward's indexer loss: the mean KL per query row, summed over the dsa layers (0 without them). */
double hae_trainer_index_kl(const hae_trainer *t);
/* The model FLOPs of the last backward (its forward included): 2 per multiply-add of the products (projections, the
 * LM head over the scored rows, attention's q . k and P v over the attended pairs, the linear layers' state reads and
 * writes, the indexer's scores), 3 x the forward's (2 for the indexer's projections, which pass no input gradient);
 * norms, maps and the optimiser not counted. */
double hae_trainer_flops(const hae_trainer *t);
/* Parameter i of hae_trainer_param_count: its name, weights and gradients (n f32 values each). On a CUDA backend
 * the weights and gradients asked for are host copies taken at the call: writing them changes nothing. */
int hae_trainer_param_count(const hae_trainer *t);
hae_status hae_trainer_param(hae_trainer *t, int i, const char **name, float **w, float **g, int64_t *n);
/* The learning rate of step s (0-based): linear warmup to train.lr over train.warmup steps, then a cosine down
 * to train.min_lr_ratio x lr at the last step. */
float hae_train_lr(const hae_config *cfg, int64_t step);

/* `hae train`: train.steps steps of train.batch tasks of the eval section's grid (a point per step, in turn),
 * generated from seeds no eval uses, scored at the tasks' answer positions; held-out evals on the tasks
 * `hae eval` runs (seeds 1..eval.seeds of every point). The run directory gets config.resolved.yaml, env.json,
 * metrics.jsonl (a line per step), summary.json, and checkpoints/step-NNNNNN/ holding model.safetensors (the
 * weights, for hae_model_load), optim.safetensors and, written last, a `complete` marker. */
typedef struct hae_train_args {
    const hae_config *cfg;
    hae_backend *be;  /* CPU */
    const char *dir;  /* the run directory; must exist */
    bool resume;      /* continue bit for bit from dir's latest complete checkpoint (none: from step 0) */
    int64_t until;    /* stop after this step, with a checkpoint; 0: train.steps */
    FILE *progress;   /* progress lines, or NULL */
} hae_train_args;
typedef struct hae_train_result {
    int64_t first_step, last_step; /* steps this run took: (first_step, last_step] */
    double loss, accuracy;         /* mean over the last train.log_every steps */
    double eval_accuracy;          /* the last held-out eval: questions right / asked */
    int64_t eval_questions;
    double eval_at[HAE_EVAL_MAX_VALUES]; /* the last eval at train.eval_lengths[i] (through the engine) */
    double seconds, tokens_per_s;
    double tflop_s;                     /* model TFLOP/s of the training steps (hae_trainer_flops over seconds) */
    char checkpoint[HAE_PATH_MAX + 64]; /* the last checkpoint's directory */
} hae_train_result;
hae_status hae_train_run(const hae_train_args *a, hae_train_result *out);

#ifdef __cplusplus
}
#endif
#endif /* HAE_H */

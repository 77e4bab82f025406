/* GPU tests of dense attention: hae_attention on CUDA (flash prefill, split-KV decode and the CUDA-core
 * path) and the KV cache writes it reads, held to the CPU backend on the same inputs.
 *
 * Every case makes fresh seeded random inputs (never zeros), puts the same bytes on both backends and
 * POISONS (0xFF bytes: NaN) the outputs, the padding between q/out rows and inside cache slots, and
 * every cache slot that holds no position the queries may read, so a kernel that reads or writes
 * outside its range shows up as NaN. The whole out buffer (padding included) is compared: NaN/Inf
 * positions first, then ||gpu - cpu|| / ||cpu||, the first bad element and the largest error named
 * by (b, t, h, d). Tolerances: bf16 q and caches (which the tensor cores take, with the softmax
 * weights rounded to bf16 for P V) or a bf16 output 1e-2; otherwise 1e-5, times sqrt(keys / 4096)
 * past 4096 attended keys (the CPU's own sequential fp32 sums drift like sqrt(keys): 3.9e-6 against
 * float64 at 16K keys). Each message names the shapes, strides, the path the case should take, and
 * the seed. main() is tests/main_gpu.c's. */
#include "internal.h"
#include "gpu_pair.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOL_F32 1e-5
#define TOL_BF16 1e-2
#define CTX_N 480

TestSuite(gpu_attention, .init = gpu_pair_setup, .fini = gpu_pair_teardown, .timeout = 600);

#define TV_C(p, dt, nd, shape, stride) tv((p).c, dt, HAE_CPU, nd, shape, stride)
#define TV_G(p, dt, nd, shape, stride) tv((p).g, dt, HAE_CUDA, nd, shape, stride)

static const char *dn(hae_dtype dt) { return hae_dtype_name(dt); }

/* A [B, T, H, D] buffer with strides (s0, s1, D, 1). */
typedef struct {
    const int64_t *shape;
    int64_t s0, s1;
} layout;

/* Where element i of such a buffer lies, as "(b, t, h, d)" or "padding". */
static const char *where(int64_t i, char *buf, size_t n, const void *ctx) {
    const layout *l = ctx;
    const int64_t b = i / l->s0, t = (i % l->s0) / l->s1, hd = (i % l->s0) % l->s1, h = hd / l->shape[3],
                  d = hd % l->shape[3];
    if (b < l->shape[0] && t < l->shape[1] && h < l->shape[2])
        snprintf(buf, n, "(b %lld, t %lld, h %lld, d %lld)", (long long)b, (long long)t, (long long)h, (long long)d);
    else
        snprintf(buf, n, "padding after (b %lld, t %lld)", (long long)b, (long long)t);
    return buf;
}

/* pb_compare of a [B, T, H, D] tensor of dt with strides (s0, s1, D, 1); tol < 0: bit-exact. */
static bool compare(const char *op, const char *ctx, const pbuf *p, hae_dtype dt, const int64_t shape[4], int64_t s0,
                    int64_t s1, double tol) {
    const layout l = {shape, s0, s1};
    return pb_compare_at(op, ctx, p, dt, tol, where, &l);
}

/* ---------------------------------------------------------------- attention */

typedef struct {
    int64_t B, T, Hq, Hkv, Dk, Dv, pos0, window, cap;
    int64_t pad;        /* extra elements after each q/out row (token) and sequence */
    int64_t kpad, vpad; /* extra elements after each k/v cache slot */
    bool mla;           /* v_cache views the first Dv dims of k_cache's slots (Hkv 1, vpad unused) */
    hae_dtype q, kv, out;
    float scale;        /* 0: 1 / sqrt(Dk) */
} attn_case;

static bool bf16_operands(const attn_case *k) { return k->q == HAE_BF16 && k->kv == HAE_BF16; }

static double attention_tol(const attn_case *k) {
    if (bf16_operands(k) || k->out == HAE_BF16) return TOL_BF16;
    const int64_t context = k->pos0 + k->T, keys = k->window > 0 && k->window < context ? k->window : context;
    return keys > 4096 ? TOL_F32 * sqrt((double)keys / 4096.0) : TOL_F32;
}

/* The kernel sparse/attention_cuda.cu should pick, for the failure messages. */
static const char *expected_path(const attn_case *k, int64_t q1, int64_t ks, int64_t vs) {
    const bool tc = bf16_operands(k) && k->Dk == k->Dv && (k->Dk == 64 || k->Dk == 128) && q1 % 8 == 0 &&
                    ks % 8 == 0 && vs % 8 == 0 && (k->pad % 8 == 0);
    if (bf16_operands(k) && k->mla && k->Dk == 576 && k->Dv == 512 && q1 % 8 == 0 && ks % 8 == 0)
        return k->Hq > 16 ? "mla on the sparse wgmma kernel" : "mla on the sparse mma.sync kernel";
    if (!tc) return "cuda cores";
    return k->T <= 16 ? "split-KV decode" : "flash prefill";
}

/* Whether cache slot `slot` holds a position some query reads: [lo(pos0), pos0 + T - 1] mod cap. */
static bool slot_read(const attn_case *k, int64_t slot) {
    const int64_t lo = k->window > 0 && k->pos0 - k->window + 1 > 0 ? k->pos0 - k->window + 1 : 0;
    const int64_t n = k->pos0 + k->T - lo;
    if (n >= k->cap) return true;
    return ((slot - lo % k->cap) + k->cap) % k->cap < n;
}

static void run_attention_case(const attn_case *k, uint64_t seed) {
    const int64_t B = k->B, T = k->T, Hq = k->Hq, Hkv = k->Hkv, Dk = k->Dk, Dv = k->Dv, cap = k->cap;
    /* q rows strided like a fused qkv projection plus pad; out rows plus pad */
    const int64_t q1 = (Hq + 2 * Hkv) * Dk + k->pad, q0 = T * q1 + k->pad;
    const int64_t o1 = Hq * Dv + k->pad, o0 = T * o1 + k->pad;
    const int64_t ks = Hkv * Dk + k->kpad, k0 = cap * ks + k->kpad;
    const int64_t vs = k->mla ? ks : Hkv * Dv + k->vpad, v0 = k->mla ? k0 : cap * vs + k->vpad;
    const float scale = k->scale > 0 ? k->scale : 1.0f / sqrtf((float)Dk);
    char ctx[CTX_N];
    snprintf(ctx, sizeof ctx,
             "B %lld T %lld Hq %lld Hkv %lld Dk %lld Dv %lld, pos0 %lld window %lld cap %lld, q %s (strides %lld, "
             "%lld), k %s (slot stride %lld), v (slot stride %lld%s), out %s (strides %lld, %lld), scale %g, path %s, "
             "seed %llu",
             (long long)B, (long long)T, (long long)Hq, (long long)Hkv, (long long)Dk, (long long)Dv, (long long)k->pos0,
             (long long)k->window, (long long)cap, dn(k->q), (long long)q0, (long long)q1, dn(k->kv), (long long)ks,
             (long long)vs, k->mla ? ", a view of k" : "", dn(k->out), (long long)o0, (long long)o1, (double)scale,
             expected_path(k, q1, ks, vs), (unsigned long long)seed);
    tu_rng r = tu_rng_make(seed);
    const size_t eq = hae_dtype_size(k->q), ekv = hae_dtype_size(k->kv), eo = hae_dtype_size(k->out);
    void *hq = host_poison(eq * (size_t)(B * q0));
    fill_rows(hq, k->q, B, T, Hq * Dk, q0, q1, &r, -2, 2);
    void *hk = host_poison(ekv * (size_t)(B * k0)), *hv = k->mla ? NULL : host_poison(ekv * (size_t)(B * v0));
    for (int64_t b = 0; b < B; b++)
        for (int64_t s = 0; s < cap; s++) {
            if (!slot_read(k, s)) continue;
            tu_fill((char *)hk + (size_t)(b * k0 + s * ks) * ekv, k->kv, Hkv * Dk, &r, -1, 1);
            if (hv) tu_fill((char *)hv + (size_t)(b * v0 + s * vs) * ekv, k->kv, Hkv * Dv, &r, -1, 1);
        }
    pbuf pq = pb_new(hq, eq * (size_t)(B * q0)), pk = pb_new(hk, ekv * (size_t)(B * k0));
    pbuf pv = hv ? pb_new(hv, ekv * (size_t)(B * v0)) : pk;
    pbuf po = pb_poison(eo * (size_t)(B * o0));
    const int64_t sq[4] = {B, T, Hq, Dk}, stq[4] = {q0, q1, Dk, 1}, so[4] = {B, T, Hq, Dv}, sto[4] = {o0, o1, Dv, 1};
    const int64_t sk[4] = {B, cap, Hkv, Dk}, stk[4] = {k0, ks, Dk, 1}, sv[4] = {B, cap, Hkv, Dv},
                  stv[4] = {v0, vs, Dv, 1};
    hae_attention_args ac = {TV_C(pq, k->q, 4, sq, stq), TV_C(pk, k->kv, 4, sk, stk), TV_C(pv, k->kv, 4, sv, stv),
                             TV_C(po, k->out, 4, so, sto), k->pos0, k->window, scale};
    hae_attention_args ag = {TV_G(pq, k->q, 4, sq, stq), TV_G(pk, k->kv, 4, sk, stk), TV_G(pv, k->kv, 4, sv, stv),
                             TV_G(po, k->out, 4, so, sto), k->pos0, k->window, scale};
    if (gpu_ran(hae_attention(g_cpu, &ac), "cpu", "attention", ctx) &&
        gpu_ran(hae_attention(g_gpu, &ag), "cuda", "attention", ctx) && gpu_done("attention", ctx))
        compare("attention", ctx, &po, k->out, so, o0, o1, attention_tol(k));
    pb_free(&pq), pb_free(&pk), pb_free(&po);
    if (hv) pb_free(&pv);
    free(hq), free(hk), free(hv);
}

static void run_cases(const attn_case *cases, size_t n, uint64_t seed0) {
    for (size_t ci = 0; ci < n; ci++) run_attention_case(&cases[ci], seed0 + ci);
}

#define BF HAE_BF16
#define F32 HAE_F32

/* bf16 q and caches, Dk = Dv in {64, 128}, T > 16: the flash prefill kernel (128 query rows per CTA,
 * 64-key tiles). */
Test(gpu_attention, prefill_tensor_cores) {
    static const attn_case cases[] = {
        /* B  T    Hq Hkv Dk   Dv   pos0  window cap   pad kpad vpad mla q   kv  out  scale */
        {2, 37, 4, 4, 64, 64, 0, 0, 64, 0, 0, 0, false, BF, BF, BF, 0},        /* one partial block, ratio 1 */
        {2, 64, 8, 4, 128, 128, 10, 0, 80, 16, 0, 0, false, BF, BF, BF, 0},    /* gqa 2, pos0 > 0, strided */
        {2, 300, 8, 2, 128, 128, 0, 0, 300, 0, 0, 0, false, BF, BF, F32, 0},   /* gqa 4, 3 blocks, f32 out */
        {1, 333, 8, 1, 64, 64, 100, 0, 440, 8, 0, 0, false, BF, BF, BF, 0},    /* mqa, prefill continuing */
        {1, 130, 4, 4, 128, 128, 1000, 0, 1130, 0, 8, 24, false, BF, BF, F32, 0}, /* long context, k/v strides differ */
        {1, 700, 2, 1, 128, 128, 0, 0, 700, 0, 0, 0, false, BF, BF, F32, 1.0f}, /* peaked softmax, many tiles */
        {2, 200, 4, 2, 128, 128, 50, 40, 239, 0, 0, 0, false, BF, BF, BF, 0},  /* window < tile, ring */
        {1, 300, 4, 2, 64, 64, 500, 100, 399, 0, 0, 0, false, BF, BF, F32, 0}, /* window > tile, ring wraps */
        {1, 1000, 4, 1, 128, 128, 0, 256, 1000, 0, 0, 0, false, BF, BF, BF, 0}, /* window, tiles skipped */
        {2, 20, 4, 2, 128, 128, 0, 1000, 20, 0, 0, 0, false, BF, BF, BF, 0},  /* window wider than the context */
        {1, 40, 2, 1, 64, 64, 0, 1, 40, 0, 0, 0, false, BF, BF, F32, 0},      /* window 1: itself only */
        {2, 129, 4, 2, 64, 64, 63, 0, 192, 0, 0, 0, false, BF, BF, BF, 0},    /* one row past a block */
        {1, 17, 8, 8, 128, 128, 4000, 3000, 3016, 0, 0, 0, false, BF, BF, BF, 0}, /* smallest prefill T, ring */
    };
    run_cases(cases, sizeof cases / sizeof cases[0], 2000);
}

/* bf16 operands with T <= 16: split-KV decode (one CTA per sequence, kv head and split, then the
 * combine), long contexts so that the keys split. */
Test(gpu_attention, decode_tensor_cores) {
    static const attn_case cases[] = {
        /* B  T   Hq  Hkv Dk   Dv   pos0   window cap    pad kpad vpad mla q   kv  out  scale */
        {2, 1, 8, 2, 128, 128, 777, 0, 1024, 0, 0, 0, false, BF, BF, F32, 0},     /* one split */
        {2, 1, 8, 2, 128, 128, 1000, 64, 64, 0, 0, 0, false, BF, BF, BF, 0},      /* window, ring = window */
        {1, 1, 32, 8, 128, 128, 20479, 0, 20480, 0, 0, 0, false, BF, BF, F32, 0}, /* 20K keys, splits */
        {1, 1, 32, 8, 128, 128, 16383, 0, 16384, 0, 0, 0, false, BF, BF, BF, 0},  /* 16K keys */
        {2, 4, 16, 2, 64, 64, 20000, 0, 20004, 8, 8, 16, false, BF, BF, F32, 0},  /* 32 rows per kv head */
        {1, 16, 32, 4, 128, 128, 3000, 0, 3016, 0, 0, 0, false, BF, BF, BF, 0},   /* 128 rows: 4 row groups */
        {2, 5, 4, 4, 128, 128, 9000, 700, 704, 0, 0, 0, false, BF, BF, F32, 0},   /* window, ring, T 5 */
        {1, 1, 8, 2, 128, 128, 19999, 5000, 5000, 0, 0, 0, false, BF, BF, BF, 0}, /* long window, ring */
        {3, 2, 8, 8, 64, 64, 0, 0, 2, 0, 0, 0, false, BF, BF, F32, 0},            /* the first two tokens */
        {2, 1, 4, 2, 64, 64, 0, 0, 1, 0, 0, 0, false, BF, BF, BF, 0},             /* the first token */
        {1, 1, 16, 1, 128, 128, 50000, 0, 50001, 0, 0, 0, false, BF, BF, F32, 2.0f}, /* mqa, peaked, 50K keys */
        {4, 3, 12, 4, 64, 64, 4095, 2048, 2050, 0, 0, 0, false, BF, BF, BF, 0},   /* G 3, window at a tile edge */
        {1, 1, 16, 4, 128, 128, 131071, 0, 131072, 0, 0, 0, false, BF, BF, BF, 0}, /* hybrid-1b-twin at 128K: 128 splits */
    };
    run_cases(cases, sizeof cases / sizeof cases[0], 2100);
}

/* mla's absorbed form in bf16 (Dk 576, Dv 512, the value cache a view of the key cache): the sparse
 * attention's tensor-core kernels over each query's whole window (decode with 16 heads: 16-row CTAs; 64 and
 * 128 heads: the wgmma kernel; prefill with 8, 16 or 32 heads: the wgmma kernel with 64 / Hq queries a CTA,
 * each row masked to its own window), decode with split-KV, prefill, a window's ring, padded slots, f32 out. */
Test(gpu_attention, mla_dense_on_sparse_kernels) {
    static const attn_case cases[] = {
        /* B  T    Hq  Hkv Dk   Dv   pos0   window cap    pad kpad vpad mla   q    kv   out  scale */
        {1, 1, 16, 1, 576, 512, 300, 0, 320, 0, 0, 0, true, BF, BF, BF, 0},       /* decode, 16 heads */
        {1, 1, 16, 1, 576, 512, 0, 0, 8, 0, 0, 0, true, BF, BF, BF, 0},           /* the first token */
        {2, 1, 64, 1, 576, 512, 5000, 0, 5001, 0, 0, 0, true, BF, BF, BF, 0},     /* 64 heads, split-KV */
        {1, 1, 128, 1, 576, 512, 9000, 0, 9001, 0, 8, 0, true, BF, BF, BF, 0},    /* 128 heads, padded slots */
        {1, 24, 16, 1, 576, 512, 100, 0, 130, 0, 0, 0, true, BF, BF, BF, 0},      /* prefill */
        {2, 16, 64, 1, 576, 512, 40, 0, 56, 0, 0, 0, true, BF, BF, F32, 0},       /* prefill, 64 heads, f32 out */
        {1, 8, 16, 1, 576, 512, 200, 64, 72, 0, 0, 0, true, BF, BF, BF, 0},       /* window 64 in a ring of 72 */
        {1, 1, 64, 1, 576, 512, 3000, 100, 128, 0, 0, 0, true, BF, BF, BF, 0},    /* window 100 in a ring of 128 */
        {2, 13, 8, 1, 576, 512, 30, 5, 24, 0, 0, 0, true, BF, BF, BF, 0},         /* 8 queries a CTA, 13 of them */
        {1, 7, 32, 1, 576, 512, 0, 0, 7, 0, 8, 0, true, BF, BF, F32, 0},          /* 2 queries a CTA, from 0 */
        {1, 300, 16, 1, 576, 512, 700, 0, 1000, 0, 0, 0, true, BF, BF, BF, 0},    /* 4 queries a CTA, 1000 keys */
    };
    run_cases(cases, sizeof cases / sizeof cases[0], 2150);
}

/* Every other shape the CPU takes: f32 operands, odd head dims, Dk != Dv (mla's absorbed form in f32,
 * its value cache a view of the key cache), unaligned strides: the CUDA-core kernel. */
Test(gpu_attention, cuda_cores) {
    static const attn_case cases[] = {
        /* B  T    Hq  Hkv Dk   Dv   pos0   window cap    pad kpad vpad mla   q    kv   out  scale */
        {2, 37, 4, 4, 64, 64, 0, 0, 64, 0, 0, 0, false, F32, F32, F32, 0},        /* f32 prefill */
        {2, 300, 4, 1, 64, 64, 0, 0, 304, 8, 0, 0, false, F32, F32, F32, 0},      /* mqa, T 300, f32 */
        {2, 1, 8, 2, 64, 64, 777, 0, 1024, 0, 0, 0, false, F32, F32, F32, 0},     /* f32 decode */
        {1, 1, 8, 2, 64, 64, 20000, 0, 20001, 0, 0, 0, false, F32, F32, F32, 0},  /* f32 decode, 20K keys */
        {2, 50, 8, 4, 64, 64, 100, 32, 81, 0, 0, 0, false, F32, F32, F32, 0},     /* f32 window, ring */
        {1, 33, 4, 2, 80, 80, 3, 0, 40, 4, 0, 0, false, F32, BF, F32, 0},         /* D 80, f32 q, bf16 cache */
        {1, 9, 2, 1, 256, 256, 0, 0, 16, 0, 0, 0, false, BF, BF, BF, 0},          /* D 256 */
        {2, 3, 4, 4, 2, 2, 5, 0, 8, 0, 0, 0, false, F32, F32, F32, 0},            /* D 2 */
        {2, 2, 4, 4, 96, 96, 0, 1, 2, 0, 0, 0, false, F32, F32, F32, 0},          /* window 1 */
        {2, 40, 4, 2, 72, 72, 30, 0, 70, 0, 0, 0, false, BF, BF, F32, 0},         /* D 72, bf16 */
        {1, 20, 8, 1, 576, 512, 10, 0, 30, 0, 8, 0, true, F32, F32, F32, 0},      /* mla prefill, padded slots */
        {2, 10, 4, 2, 64, 32, 5, 0, 15, 0, 3, 5, false, F32, F32, F32, 0},        /* Dk != Dv, odd slot strides */
        {2, 30, 4, 2, 128, 128, 0, 0, 30, 3, 0, 0, false, BF, BF, BF, 0},         /* bf16, q rows unaligned */
        {1, 5, 8, 2, 128, 128, 100, 0, 105, 0, 5, 0, false, BF, BF, F32, 0},      /* bf16, k slots unaligned */
    };
    run_cases(cases, sizeof cases / sizeof cases[0], 2200);
}

/* ---------------------------------------------------------------- kv_write into strided caches */

/* A cache whose slots are wider than Hkv x D (mla's values inside the latent): the write lands in the
 * slot's first Hkv x D elements and leaves the rest (poison) alone; bit-exact. */
Test(gpu_attention, kv_write_strided) {
    static const struct {
        int64_t B, T, H, D, cap, pos0, spad, cpad;
        hae_dtype src, cache;
    } cases[] = {
        {2, 3, 1, 512, 8, 5, 64, 64, HAE_BF16, HAE_BF16}, /* v into mla's 576-wide latent */
        {1, 12, 2, 64, 16, 30, 0, 8, HAE_F32, HAE_BF16},  /* wraps, padded slots */
        {2, 1, 8, 128, 40, 1000, 8, 3, HAE_BF16, HAE_F32}, /* decode, odd slot stride */
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const int64_t B = cases[ci].B, T = cases[ci].T, H = cases[ci].H, D = cases[ci].D, cap = cases[ci].cap;
        const int64_t s1 = H * D + cases[ci].spad, s0 = T * s1, c1 = H * D + cases[ci].cpad, c0 = cap * c1 + 7;
        const hae_dtype sd = cases[ci].src, cd = cases[ci].cache;
        const uint64_t seed = 2300 + ci;
        char ctx[CTX_N];
        snprintf(ctx, sizeof ctx, "src [%lld, %lld, %lld, %lld] %s (strides %lld, %lld), cache [%lld, %lld, %lld, %lld] "
                 "%s (strides %lld, %lld), pos0 %lld, seed %llu",
                 (long long)B, (long long)T, (long long)H, (long long)D, dn(sd), (long long)s0, (long long)s1,
                 (long long)B, (long long)cap, (long long)H, (long long)D, dn(cd), (long long)c0, (long long)c1,
                 (long long)cases[ci].pos0, (unsigned long long)seed);
        tu_rng r = tu_rng_make(seed);
        void *hs = host_poison(hae_dtype_size(sd) * (size_t)(B * s0));
        fill_rows(hs, sd, B, T, H * D, s0, s1, &r, -1, 1);
        pbuf ps = pb_new(hs, hae_dtype_size(sd) * (size_t)(B * s0));
        pbuf pc = pb_poison(hae_dtype_size(cd) * (size_t)(B * c0));
        const int64_t ss[4] = {B, T, H, D}, sst[4] = {s0, s1, D, 1}, sc[4] = {B, cap, H, D}, stc[4] = {c0, c1, D, 1};
        hae_kv_write_args ac = {TV_C(ps, sd, 4, ss, sst), TV_C(pc, cd, 4, sc, stc), cases[ci].pos0};
        hae_kv_write_args ag = {TV_G(ps, sd, 4, ss, sst), TV_G(pc, cd, 4, sc, stc), cases[ci].pos0};
        if (gpu_ran(hae_kv_write(g_cpu, &ac), "cpu", "kv_write", ctx) &&
            gpu_ran(hae_kv_write(g_gpu, &ag), "cuda", "kv_write", ctx) && gpu_done("kv_write", ctx))
            compare("kv_write", ctx, &pc, cd, sc, c0, c1, -1);
        pb_free(&ps), pb_free(&pc);
        free(hs);
    }
}

/* ---------------------------------------------------------------- decode step by step */

/* kv_write + attention step by step, as decode runs them: a sliding window whose ring (cap = window)
 * is much shorter than the context, bf16 cache, both backends fed the same tokens. With f32 queries
 * the CUDA-core kernel runs, with bf16 queries the split-KV decode. */
static void decode_ring(hae_dtype qd, uint64_t seed) {
    const int64_t B = 2, Hq = 4, Hkv = 2, D = 64, W = 16, cap = 16, P = 10, steps = 40;
    tu_rng r = tu_rng_make(seed);
    const hae_dtype kvd = HAE_BF16;
    const size_t eq = hae_dtype_size(qd);
    pbuf pk = pb_poison(2 * (size_t)(B * cap * Hkv * D)), pv = pb_poison(2 * (size_t)(B * cap * Hkv * D));
    const int64_t sc[4] = {B, cap, Hkv, D};
    int64_t pos = 0;
    bool ok = true;
    for (int64_t step = 0; step <= steps && ok; step++) {
        const int64_t T = step == 0 ? P : 1;
        char ctx[CTX_N];
        snprintf(ctx, sizeof ctx, "decode ring: B %lld Hq %lld Hkv %lld D %lld window %lld cap %lld, q %s, step %lld "
                 "(pos0 %lld, T %lld), seed %llu",
                 (long long)B, (long long)Hq, (long long)Hkv, (long long)D, (long long)W, (long long)cap, dn(qd),
                 (long long)step, (long long)pos, (long long)T, (unsigned long long)seed);
        const int64_t nkv = B * T * Hkv * D, nq = B * T * Hq * D;
        uint16_t *hk = malloc(2 * (size_t)nkv), *hv = malloc(2 * (size_t)nkv);
        void *hq = malloc(eq * (size_t)nq);
        tu_fill(hk, kvd, nkv, &r, -1, 1);
        tu_fill(hv, kvd, nkv, &r, -1, 1);
        tu_fill(hq, qd, nq, &r, -2, 2);
        pbuf nk = pb_new(hk, 2 * (size_t)nkv), nv = pb_new(hv, 2 * (size_t)nkv), pq = pb_new(hq, eq * (size_t)nq);
        pbuf po = pb_poison(4 * (size_t)nq);
        const int64_t skv[4] = {B, T, Hkv, D}, sq[4] = {B, T, Hq, D};
        hae_kv_write_args kc = {TV_C(nk, kvd, 4, skv, NULL), TV_C(pk, kvd, 4, sc, NULL), pos};
        hae_kv_write_args kg = {TV_G(nk, kvd, 4, skv, NULL), TV_G(pk, kvd, 4, sc, NULL), pos};
        hae_kv_write_args vc = {TV_C(nv, kvd, 4, skv, NULL), TV_C(pv, kvd, 4, sc, NULL), pos};
        hae_kv_write_args vg = {TV_G(nv, kvd, 4, skv, NULL), TV_G(pv, kvd, 4, sc, NULL), pos};
        hae_attention_args ac = {TV_C(pq, qd, 4, sq, NULL), TV_C(pk, kvd, 4, sc, NULL), TV_C(pv, kvd, 4, sc, NULL),
                                 TV_C(po, HAE_F32, 4, sq, NULL), pos, W, 1.0f / sqrtf((float)D)};
        hae_attention_args ag = {TV_G(pq, qd, 4, sq, NULL), TV_G(pk, kvd, 4, sc, NULL), TV_G(pv, kvd, 4, sc, NULL),
                                 TV_G(po, HAE_F32, 4, sq, NULL), pos, W, 1.0f / sqrtf((float)D)};
        ok = gpu_ran(hae_kv_write(g_cpu, &kc), "cpu", "kv_write", ctx) && gpu_ran(hae_kv_write(g_cpu, &vc), "cpu", "kv_write", ctx) &&
             gpu_ran(hae_kv_write(g_gpu, &kg), "cuda", "kv_write", ctx) && gpu_ran(hae_kv_write(g_gpu, &vg), "cuda", "kv_write", ctx) &&
             gpu_ran(hae_attention(g_cpu, &ac), "cpu", "attention", ctx) &&
             gpu_ran(hae_attention(g_gpu, &ag), "cuda", "attention", ctx) && gpu_done("decode ring", ctx);
        if (ok) {
            ok = compare("decode ring: k cache", ctx, &pk, kvd, sc, cap * Hkv * D, Hkv * D, -1) &&
                 compare("decode ring: v cache", ctx, &pv, kvd, sc, cap * Hkv * D, Hkv * D, -1);
            ok = compare("decode ring: attention", ctx, &po, HAE_F32, sq, T * Hq * D, Hq * D,
                         qd == HAE_BF16 ? TOL_BF16 : TOL_F32) && ok;
        }
        pos += T;
        pb_free(&nk), pb_free(&nv), pb_free(&pq), pb_free(&po);
        free(hk), free(hv), free(hq);
    }
    pb_free(&pk), pb_free(&pv);
}

Test(gpu_attention, decode_ring_cuda_cores) { decode_ring(HAE_F32, 1100); }
Test(gpu_attention, decode_ring_tensor_cores) { decode_ring(HAE_BF16, 1101); }

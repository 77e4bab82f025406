/* GPU tests: every CUDA op held to the CPU reference on the same inputs.
 *
 * Each case makes fresh seeded random inputs (never zeros; bf16 values are bf16-representable),
 * puts the same bytes on the CPU backend and on the GPU, POISONS the output buffers of both (bytes
 * 0xFF: NaN in f32/bf16/f16, -1 in i32) where the op does not read them, runs the op on both and
 * compares the whole buffers, padding included: NaN/Inf positions first, then the max abs error and
 * ||gpu - cpu|| / ||cpu||. Tolerances: copies and conversions bit-exact; f32 outputs 1e-5 relative;
 * bf16 outputs 1e-2 relative; sampled tokens identical (with temperature: except where the two best
 * Gumbel scores are within 1e-5). Every message names the op, the shape and the seed. Attention has
 * its own file, tests/gpu_attention.c. main() is tests/main_gpu.c's. */
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
#define CTX_N 320

TestSuite(gpu, .init = gpu_pair_setup, .fini = gpu_pair_teardown, .timeout = 600);

static double tol_for(hae_dtype dt) { return dt == HAE_BF16 ? TOL_BF16 : TOL_F32; }
static const char *dn(hae_dtype dt) { return hae_dtype_name(dt); }

/* The CPU and GPU views of a pbuf. */
#define TV_C(p, dt, nd, shape, stride) tv((p).c, dt, HAE_CPU, nd, shape, stride)
#define TV_G(p, dt, nd, shape, stride) tv((p).g, dt, HAE_CUDA, nd, shape, stride)

/* ---------------------------------------------------------------- running and comparing */

/* ---------------------------------------------------------------- embedding */

Test(gpu, embedding) {
    static const struct {
        int64_t N, V, D, pad;
        hae_dtype dt;
    } cases[] = {
        {1, 10, 64, 0, HAE_F32},     {77, 1000, 33, 0, HAE_BF16}, {33, 50000, 256, 5, HAE_BF16},
        {7, 5, 1000, 3, HAE_F32},    {128, 32000, 2048, 0, HAE_BF16},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const int64_t N = cases[ci].N, V = cases[ci].V, D = cases[ci].D, ld = D + cases[ci].pad;
        const hae_dtype dt = cases[ci].dt;
        const uint64_t seed = 100 + ci;
        char ctx[CTX_N];
        snprintf(ctx, sizeof ctx, "ids [%lld], table [%lld, %lld] %s, out [%lld, %lld] f32 row stride %lld, seed %llu",
                 (long long)N, (long long)V, (long long)D, dn(dt), (long long)N, (long long)D, (long long)ld,
                 (unsigned long long)seed);
        tu_rng r = tu_rng_make(seed);
        int32_t *ids = malloc(sizeof(int32_t) * (size_t)N);
        for (int64_t i = 0; i < N; i++) ids[i] = (int32_t)tu_uniform(&r, 0, (double)V);
        ids[0] = 0;
        if (N > 1) ids[N - 1] = (int32_t)(V - 1);
        void *tab = malloc((size_t)(V * D) * hae_dtype_size(dt));
        tu_fill(tab, dt, V * D, &r, -1, 1);
        pbuf pi = pb_new(ids, sizeof(int32_t) * (size_t)N), pt = pb_new(tab, (size_t)(V * D) * hae_dtype_size(dt));
        pbuf po = pb_poison(sizeof(float) * (size_t)(N * ld));
        const int64_t si[1] = {N}, st[2] = {V, D}, so[2] = {N, D}, sto[2] = {ld, 1};
        hae_embedding_args ac = {TV_C(pi, HAE_I32, 1, si, NULL), TV_C(pt, dt, 2, st, NULL), TV_C(po, HAE_F32, 2, so, sto)};
        hae_embedding_args ag = {TV_G(pi, HAE_I32, 1, si, NULL), TV_G(pt, dt, 2, st, NULL), TV_G(po, HAE_F32, 2, so, sto)};
        if (gpu_ran(hae_embedding(g_cpu, &ac), "cpu", "embedding", ctx) &&
            gpu_ran(hae_embedding(g_gpu, &ag), "cuda", "embedding", ctx) && gpu_done("embedding", ctx))
            pb_compare("embedding", ctx, &po, HAE_F32, -1);
        pb_free(&pi), pb_free(&pt), pb_free(&po);
        free(ids), free(tab);
    }
}

/* ---------------------------------------------------------------- rmsnorm */

Test(gpu, rmsnorm) {
    static const struct {
        int64_t N, D, pad;
        hae_dtype out;
        float eps;
    } cases[] = {
        {1, 64, 0, HAE_F32, 1e-5f},   {7, 4096, 0, HAE_BF16, 1e-6f}, {33, 999, 5, HAE_F32, 1e-5f},
        {5, 1000, 3, HAE_BF16, 1e-5f}, {128, 2048, 0, HAE_F32, 1e-6f}, {3, 7, 1, HAE_F32, 1e-5f},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const int64_t N = cases[ci].N, D = cases[ci].D, ld = D + cases[ci].pad;
        const hae_dtype od = cases[ci].out;
        const uint64_t seed = 200 + ci;
        char ctx[CTX_N];
        snprintf(ctx, sizeof ctx, "x [%lld, %lld] f32 row stride %lld, out %s row stride %lld, eps %g, seed %llu",
                 (long long)N, (long long)D, (long long)ld, dn(od), (long long)ld, (double)cases[ci].eps,
                 (unsigned long long)seed);
        tu_rng r = tu_rng_make(seed);
        float *x = host_poison(sizeof(float) * (size_t)(N * ld));
        for (int64_t i = 0; i < N; i++) {
            double s = 0.05 + 3.0 * (double)i / (double)N; /* rows of different scales */
            tu_fill(x + i * ld, HAE_F32, D, &r, -s, s);
        }
        float *w = malloc(sizeof(float) * (size_t)D), *bias = malloc(sizeof(float) * (size_t)D);
        tu_fill(w, HAE_F32, D, &r, 0.5, 1.5);
        tu_fill(bias, HAE_F32, D, &r, -1, 1);
        pbuf px = pb_new(x, sizeof(float) * (size_t)(N * ld)), pw = pb_new(w, sizeof(float) * (size_t)D);
        pbuf pbias = pb_new(bias, sizeof(float) * (size_t)D);
        const int64_t sx[2] = {N, D}, sw[1] = {D}, str[2] = {ld, 1};
        /* RMSNorm, then LayerNorm (the case index picks whether it has a bias) */
        for (int form = 0; form < 2; form++) {
            pbuf po = pb_poison(hae_dtype_size(od) * (size_t)(N * ld));
            hae_rmsnorm_args ac = {.x = TV_C(px, HAE_F32, 2, sx, str), .weight = TV_C(pw, HAE_F32, 1, sw, NULL),
                                   .out = TV_C(po, od, 2, sx, str), .eps = cases[ci].eps};
            hae_rmsnorm_args ag = {.x = TV_G(px, HAE_F32, 2, sx, str), .weight = TV_G(pw, HAE_F32, 1, sw, NULL),
                                   .out = TV_G(po, od, 2, sx, str), .eps = cases[ci].eps};
            if (form == 1) {
                ac.center = ag.center = true;
                if (ci % 2) ac.bias = TV_C(pbias, HAE_F32, 1, sw, NULL), ag.bias = TV_G(pbias, HAE_F32, 1, sw, NULL);
            }
            const char *name = form == 0 ? "rmsnorm" : ci % 2 ? "layernorm+bias" : "layernorm";
            if (gpu_ran(hae_rmsnorm(g_cpu, &ac), "cpu", name, ctx) && gpu_ran(hae_rmsnorm(g_gpu, &ag), "cuda", name, ctx) &&
                gpu_done(name, ctx))
                pb_compare(name, ctx, &po, od, tol_for(od));
            pb_free(&po);
        }
        pb_free(&px), pb_free(&pw), pb_free(&pbias);
        free(x), free(w), free(bias);
    }
}

/* ---------------------------------------------------------------- gemm */

/* Batched cases (batch > 1) share a (stride 0, as mla's heads share the layer input), stack the b_i and
 * put the c_i side by side in c's rows, one column of poison between them. */
Test(gpu, gemm) {
    static const struct {
        int64_t M, N, K, pad;
        hae_dtype ab, c;
        bool acc;
        int64_t batch;
    } cases[] = {
        /* f32 operands (cuBLAS, no TF32) */
        {1, 64, 64, 0, HAE_F32, HAE_F32, false, 1},
        {7, 33, 17, 3, HAE_F32, HAE_F32, false, 1},
        {33, 100, 96, 0, HAE_F32, HAE_F32, true, 1},
        {64, 129, 300, 5, HAE_F32, HAE_F32, true, 1},
        {128, 256, 512, 0, HAE_F32, HAE_F32, false, 1},
        {1, 1, 1, 0, HAE_F32, HAE_F32, false, 1},
        {200, 3, 1000, 1, HAE_F32, HAE_F32, false, 1},
        /* bf16 operands, f32 or bf16 output */
        {1, 64, 64, 0, HAE_BF16, HAE_F32, false, 1},
        {7, 33, 17, 0, HAE_BF16, HAE_F32, true, 1},
        {33, 100, 96, 2, HAE_BF16, HAE_BF16, false, 1},
        {65, 130, 258, 4, HAE_BF16, HAE_F32, false, 1},
        {128, 256, 512, 0, HAE_BF16, HAE_BF16, false, 1},
        {33, 50, 7, 1, HAE_BF16, HAE_F32, true, 1},
        {1, 1000, 333, 3, HAE_BF16, HAE_BF16, false, 1},
        {257, 511, 1024, 0, HAE_BF16, HAE_F32, false, 1},
        /* a few bf16 rows against 16-byte aligned rows of b (gemv_kernel), then shapes it leaves to cuBLAS */
        {1, 2048, 2048, 0, HAE_BF16, HAE_BF16, false, 1},
        {1, 300, 5632, 8, HAE_BF16, HAE_F32, true, 1},
        {2, 77, 136, 0, HAE_BF16, HAE_F32, true, 1},
        {3, 9, 8, 16, HAE_BF16, HAE_F32, false, 1},
        {4, 513, 1024, 8, HAE_BF16, HAE_BF16, false, 1},
        {4, 64, 256, 0, HAE_BF16, HAE_F32, true, 3},
        {1, 40, 64, 0, HAE_BF16, HAE_BF16, false, 8},
        {4, 100, 132, 0, HAE_BF16, HAE_F32, false, 1}, /* K % 8 = 4: cuBLAS */
        {2, 100, 128, 4, HAE_BF16, HAE_BF16, false, 1}, /* rows 8 bytes apart: cuBLAS */
        {5, 100, 128, 0, HAE_BF16, HAE_F32, true, 1},   /* 5 rows: cuBLAS */
        /* f32 operands with a bf16 output (the tiled fallback kernel) */
        {33, 70, 45, 1, HAE_F32, HAE_BF16, false, 1},
        {1, 64, 64, 0, HAE_F32, HAE_BF16, false, 1},
        {100, 17, 300, 0, HAE_F32, HAE_BF16, false, 1},
        /* batched */
        {5, 64, 128, 0, HAE_BF16, HAE_BF16, false, 16},
        {1, 128, 64, 2, HAE_BF16, HAE_F32, false, 4},
        {33, 20, 70, 1, HAE_F32, HAE_F32, true, 3},
        {7, 16, 40, 0, HAE_F32, HAE_BF16, false, 2},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const int64_t M = cases[ci].M, N = cases[ci].N, K = cases[ci].K, pad = cases[ci].pad;
        const int64_t nb = cases[ci].batch > 1 ? cases[ci].batch : 1, nbr = nb * N; /* b rows of every product */
        const int64_t lda = K + pad, ldb = K + pad, ldc = nb * (N + 1) + pad;
        const hae_dtype abt = cases[ci].ab, ct = cases[ci].c;
        const bool acc = cases[ci].acc;
        const uint64_t seed = 300 + ci;
        char ctx[CTX_N];
        snprintf(ctx, sizeof ctx,
                 "M %lld N %lld K %lld, a/b %s (row strides %lld/%lld), c %s (row stride %lld), accumulate %d, batch %lld, "
                 "seed %llu", (long long)M, (long long)N, (long long)K, dn(abt), (long long)lda, (long long)ldb, dn(ct),
                 (long long)ldc, (int)acc, (long long)nb, (unsigned long long)seed);
        tu_rng r = tu_rng_make(seed);
        size_t ea = hae_dtype_size(abt), ec = hae_dtype_size(ct);
        /* padding between rows and products stays NaN: a kernel that reads or writes it shows up */
        void *ha = host_poison(ea * (size_t)(M * lda)), *hb = host_poison(ea * (size_t)(nbr * ldb));
        void *hc = host_poison(ec * (size_t)(M * ldc));
        fill_rows(ha, abt, 1, M, K, 0, lda, &r, -1, 1);
        fill_rows(hb, abt, 1, nbr, K, 0, ldb, &r, -1, 1);
        for (int64_t i = 0; acc && i < nb; i++)
            fill_rows((char *)hc + ec * (size_t)(i * (N + 1)), ct, 1, M, N, 0, ldc, &r, -1, 1);
        pbuf pa = pb_new(ha, ea * (size_t)(M * lda)), pbb = pb_new(hb, ea * (size_t)(nbr * ldb));
        pbuf pc = pb_new(hc, ec * (size_t)(M * ldc));
        const int64_t sa[2] = {M, K}, sb[2] = {N, K}, sc[2] = {M, N};
        const int64_t sta[2] = {lda, 1}, stb[2] = {ldb, 1}, stc[2] = {ldc, 1};
        hae_gemm_args ac = {.a = TV_C(pa, abt, 2, sa, sta), .b = TV_C(pbb, abt, 2, sb, stb), .c = TV_C(pc, ct, 2, sc, stc),
                            .accumulate = acc, .batch = nb, .stride_b = N * ldb, .stride_c = N + 1};
        hae_gemm_args ag = ac;
        ag.a = TV_G(pa, abt, 2, sa, sta), ag.b = TV_G(pbb, abt, 2, sb, stb), ag.c = TV_G(pc, ct, 2, sc, stc);
        if (gpu_ran(hae_gemm(g_cpu, &ac), "cpu", "gemm", ctx) && gpu_ran(hae_gemm(g_gpu, &ag), "cuda", "gemm", ctx) &&
            gpu_done("gemm", ctx))
            pb_compare("gemm", ctx, &pc, ct, tol_for(ct));
        pb_free(&pa), pb_free(&pbb), pb_free(&pc);
        free(ha), free(hb), free(hc);
    }
}

/* ---------------------------------------------------------------- swiglu */

Test(gpu, swiglu) {
    static const struct {
        int64_t N, F, pad;
        hae_dtype in, out;
    } cases[] = {
        {1, 64, 0, HAE_F32, HAE_F32},     {7, 100, 3, HAE_BF16, HAE_BF16}, {33, 1376, 0, HAE_BF16, HAE_F32},
        {5, 33, 1, HAE_F32, HAE_BF16},    {64, 4096, 0, HAE_BF16, HAE_BF16}, {3, 1, 0, HAE_F32, HAE_F32},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const int64_t N = cases[ci].N, F = cases[ci].F, lgu = 2 * F + cases[ci].pad, lo = F + cases[ci].pad;
        const hae_dtype it = cases[ci].in, ot = cases[ci].out;
        const uint64_t seed = 400 + ci;
        char ctx[CTX_N];
        snprintf(ctx, sizeof ctx, "gate_up [%lld, %lld] %s row stride %lld, out [%lld, %lld] %s row stride %lld, seed %llu",
                 (long long)N, (long long)(2 * F), dn(it), (long long)lgu, (long long)N, (long long)F, dn(ot),
                 (long long)lo, (unsigned long long)seed);
        tu_rng r = tu_rng_make(seed);
        void *hg = host_poison(hae_dtype_size(it) * (size_t)(N * lgu));
        fill_rows(hg, it, 1, N, 2 * F, 0, lgu, &r, -4, 4);
        pbuf pg = pb_new(hg, hae_dtype_size(it) * (size_t)(N * lgu));
        pbuf po = pb_poison(hae_dtype_size(ot) * (size_t)(N * lo));
        const int64_t sg[2] = {N, 2 * F}, so[2] = {N, F}, stg[2] = {lgu, 1}, sto[2] = {lo, 1};
        hae_swiglu_args ac = {TV_C(pg, it, 2, sg, stg), TV_C(po, ot, 2, so, sto)};
        hae_swiglu_args ag = {TV_G(pg, it, 2, sg, stg), TV_G(po, ot, 2, so, sto)};
        if (gpu_ran(hae_swiglu(g_cpu, &ac), "cpu", "swiglu", ctx) && gpu_ran(hae_swiglu(g_gpu, &ag), "cuda", "swiglu", ctx) &&
            gpu_done("swiglu", ctx))
            pb_compare("swiglu", ctx, &po, ot, tol_for(ot));
        pb_free(&pg), pb_free(&po);
        free(hg);
    }
}

/* ---------------------------------------------------------------- rope */

Test(gpu, rope) {
    static const struct {
        int64_t B, T, H, D;
        int rot;
        int64_t pos0;
        float theta;
        hae_dtype dt;
        int64_t pad;
        int off;
    } cases[] = {
        {2, 5, 3, 64, 64, 0, 10000.0f, HAE_F32, 0, 0},        /* full */
        {2, 5, 3, 64, 0, 9, 10000.0f, HAE_F32, 2, 0},         /* none: x unchanged */
        {1, 7, 4, 128, 64, 1000, 10000.0f, HAE_BF16, 8, 0},   /* partial, pos0 > 0 */
        {2, 3, 2, 80, 24, 123456, 1e6f, HAE_F32, 4, 0},       /* partial, odd head dim, far position */
        {1, 1, 32, 128, 128, 65535, 500000.0f, HAE_BF16, 0, 0}, /* decode */
        {2, 4, 2, 256, 256, 7, 10000.0f, HAE_F32, 0, 0},
        {3, 33, 2, 64, 32, 4000, 10000.0f, HAE_F32, 16, 0},
        {2, 6, 16, 576, 64, 300, 10000.0f, HAE_BF16, 0, 512}, /* mla: the rope dims after a 512 latent */
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const int64_t B = cases[ci].B, T = cases[ci].T, H = cases[ci].H, D = cases[ci].D, pad = cases[ci].pad;
        const hae_dtype dt = cases[ci].dt;
        const int64_t s1 = H * D + pad, s0 = T * s1 + pad, n = B * s0;
        const uint64_t seed = 500 + ci;
        char ctx[CTX_N];
        snprintf(ctx, sizeof ctx, "x [%lld, %lld, %lld, %lld] %s strides [%lld, %lld, %lld, 1], rot_dims %d at %d, "
                 "pos0 %lld, theta %g, seed %llu",
                 (long long)B, (long long)T, (long long)H, (long long)D, dn(dt), (long long)s0, (long long)s1,
                 (long long)D, cases[ci].rot, cases[ci].off, (long long)cases[ci].pos0, (double)cases[ci].theta,
                 (unsigned long long)seed);
        tu_rng r = tu_rng_make(seed);
        void *hx = host_poison(hae_dtype_size(dt) * (size_t)n);
        fill_rows(hx, dt, B, T, H * D, s0, s1, &r, -2, 2);
        pbuf px = pb_new(hx, hae_dtype_size(dt) * (size_t)n);
        const int64_t sx[4] = {B, T, H, D}, st[4] = {s0, s1, D, 1};
        hae_rope_args ac = {TV_C(px, dt, 4, sx, st), cases[ci].pos0, cases[ci].rot, cases[ci].off, cases[ci].theta};
        hae_rope_args ag = {TV_G(px, dt, 4, sx, st), cases[ci].pos0, cases[ci].rot, cases[ci].off, cases[ci].theta};
        if (gpu_ran(hae_rope(g_cpu, &ac), "cpu", "rope", ctx) && gpu_ran(hae_rope(g_gpu, &ag), "cuda", "rope", ctx) &&
            gpu_done("rope", ctx))
            pb_compare("rope", ctx, &px, dt, cases[ci].rot == 0 ? -1 : tol_for(dt));
        pb_free(&px);
        free(hx);
    }
}

/* ---------------------------------------------------------------- convert */

/* Source values: every bit pattern of the 16- and 8-bit types; for f32 random bit patterns (NaN
 * payloads, subnormals, infinities) and values around the e4m3, f16 and bf16 rounding edges. */
static int64_t make_convert_source(void *h, hae_dtype dt, tu_rng *r) {
    if (dt == HAE_BF16 || dt == HAE_F16) {
        for (int64_t i = 0; i < 65536; i++) ((uint16_t *)h)[i] = (uint16_t)i;
        return 65536;
    }
    if (dt == HAE_FP8_E4M3) {
        for (int64_t i = 0; i < 1024; i++) ((uint8_t *)h)[i] = (uint8_t)i;
        return 1024;
    }
    static const float special[] = {0.0f,   -0.0f,       1.0f,        -1.0f,      448.0f,     449.0f,   464.0f,
                                    465.0f, 480.0f,      -500.0f,     65504.0f,   65519.0f,   65520.0f, 1e9f,
                                    1e-8f,  6e-8f,       0x1p-9f,     0x1p-10f,   0x1.8p-10f, 0x1p-24f, 0x1p-25f,
                                    0x1.8p-25f, 1.0625f, 1.1875f,     3.140625f,  1e-40f,     -1e-45f,  INFINITY,
                                    -INFINITY, NAN};
    int64_t n = 0;
    for (size_t i = 0; i < sizeof special / sizeof special[0]; i++) ((float *)h)[n++] = special[i];
    for (int64_t i = 0; i < 30000; i++) {
        uint32_t u = (uint32_t)(tu_uniform(r, 0, 4294967296.0));
        float f;
        memcpy(&f, &u, 4);
        ((float *)h)[n++] = f;
    }
    for (int64_t i = 0; i < 30000; i++) {
        double e = tu_uniform(r, -30, 20), s = tu_uniform(r, -1, 1) < 0 ? -1 : 1;
        ((float *)h)[n++] = (float)(s * pow(2.0, e));
    }
    return n;
}

Test(gpu, convert) {
    static const hae_dtype dts[] = {HAE_F32, HAE_BF16, HAE_F16, HAE_FP8_E4M3};
    for (int si = 0; si < 4; si++)
        for (int di = 0; di < 4; di++) {
            const hae_dtype sd = dts[si], dd = dts[di];
            const uint64_t seed = 600 + (uint64_t)(si * 4 + di);
            tu_rng r = tu_rng_make(seed);
            void *hs = malloc(sizeof(float) * 70000);
            const int64_t n = make_convert_source(hs, sd, &r);
            char ctx[CTX_N];
            snprintf(ctx, sizeof ctx, "[%lld] %s -> %s, seed %llu", (long long)n, dn(sd), dn(dd),
                     (unsigned long long)seed);
            pbuf ps = pb_new(hs, hae_dtype_size(sd) * (size_t)n);
            pbuf pd = pb_poison(hae_dtype_size(dd) * (size_t)n);
            const int64_t shape[1] = {n};
            hae_tensor sc = TV_C(ps, sd, 1, shape, NULL), dc = TV_C(pd, dd, 1, shape, NULL);
            hae_tensor sg = TV_G(ps, sd, 1, shape, NULL), dg = TV_G(pd, dd, 1, shape, NULL);
            if (gpu_ran(hae_convert(g_cpu, &sc, &dc), "cpu", "convert", ctx) &&
                gpu_ran(hae_convert(g_gpu, &sg, &dg), "cuda", "convert", ctx) && gpu_done("convert", ctx))
                pb_compare("convert", ctx, &pd, dd, -1);
            pb_free(&ps), pb_free(&pd);
            free(hs);
        }
}

/* ---------------------------------------------------------------- sampling */

static int32_t *fetch_tokens(const pbuf *p) { return pb_fetch(p); }

/* Rows with known answers: 0 random, 1 three tied maxima, 2 all equal, 3 NaN and -inf around a max,
 * 4 all -inf (token 0), 5.. random. */
static void make_greedy_logits(float *l, int64_t B, int64_t V, int64_t ld, tu_rng *r) {
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < V; i++) l[b * ld + i] = (float)(3.0 * tu_normal(r));
    if (B > 1) {
        float mx = 50.0f;
        l[1 * ld + V - 1] = mx;
        if (V > 10) l[1 * ld + 10] = mx;
        if (V > 3) l[1 * ld + 3] = mx;
    }
    if (B > 2)
        for (int64_t i = 0; i < V; i++) l[2 * ld + i] = 1.5f;
    if (B > 3) {
        l[3 * ld + 0] = NAN;
        for (int64_t i = 1; i < V && i < 50; i++) l[3 * ld + i] = -INFINITY;
        l[3 * ld + V / 2] = 40.0f;
    }
    if (B > 4)
        for (int64_t i = 0; i < V; i++) l[4 * ld + i] = -INFINITY;
}

Test(gpu, sample_greedy) {
    static const int64_t Vs[] = {1, 7, 1000, 32000, 50257};
    const int64_t B = 6;
    for (size_t vi = 0; vi < sizeof Vs / sizeof Vs[0]; vi++) {
        const int64_t V = Vs[vi], ld = V + (vi % 2 ? 3 : 0);
        const uint64_t seed = 700 + vi;
        char ctx[CTX_N];
        snprintf(ctx, sizeof ctx, "logits [%lld, %lld] f32 row stride %lld, greedy, seed %llu", (long long)B,
                 (long long)V, (long long)ld, (unsigned long long)seed);
        tu_rng r = tu_rng_make(seed);
        float *l = host_poison(sizeof(float) * (size_t)(B * ld));
        make_greedy_logits(l, B, V, ld, &r);
        pbuf pl = pb_new(l, sizeof(float) * (size_t)(B * ld)), po = pb_poison(sizeof(int32_t) * (size_t)B);
        const int64_t sl[2] = {B, V}, stl[2] = {ld, 1}, so[1] = {B};
        hae_sample_args ac = {TV_C(pl, HAE_F32, 2, sl, stl), TV_C(po, HAE_I32, 1, so, NULL), 0.0f, 1, 0};
        hae_sample_args ag = {TV_G(pl, HAE_F32, 2, sl, stl), TV_G(po, HAE_I32, 1, so, NULL), 0.0f, 1, 0};
        if (gpu_ran(hae_sample(g_cpu, &ac), "cpu", "sample", ctx) && gpu_ran(hae_sample(g_gpu, &ag), "cuda", "sample", ctx) &&
            gpu_done("sample", ctx)) {
            int32_t *gt = fetch_tokens(&po);
            const int32_t *ct = po.c;
            for (int64_t b = 0; b < B; b++)
                cr_expect_eq(gt[b], ct[b], "sample [%s]: row %lld: gpu token %d, cpu token %d", ctx, (long long)b,
                             gt[b], ct[b]);
            /* the known answers, so a shared mistake does not pass */
            if (V > 3) cr_expect_eq(ct[1], 3, "sample [%s]: row 1 (tied maxima at 3, 10, V-1): cpu token %d", ctx, ct[1]);
            cr_expect_eq(gt[2], 0, "sample [%s]: row 2 (all equal): gpu token %d", ctx, gt[2]);
            cr_expect_eq(gt[4], 0, "sample [%s]: row 4 (all -inf): gpu token %d", ctx, gt[4]);
            if (V > 1) cr_expect_eq(gt[3], (int32_t)(V / 2), "sample [%s]: row 3 (NaN, -inf, max at V/2): gpu token %d", ctx, gt[3]);
            free(gt);
        }
        pb_free(&pl), pb_free(&po);
        free(l);
    }
}

Test(gpu, sample_temperature) {
    static const struct {
        int64_t B, V;
        float temp;
        uint64_t seed, step;
    } cases[] = {
        {8, 32000, 1.0f, 1, 0}, {8, 32000, 0.7f, 2, 5}, {16, 1000, 2.5f, 3, 123}, {4, 50257, 0.3f, 4, 9},
        {64, 7, 1.0f, 5, 1},    {3, 1, 1.0f, 6, 2},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const int64_t B = cases[ci].B, V = cases[ci].V;
        const float temp = cases[ci].temp;
        const uint64_t seed = 800 + ci;
        char ctx[CTX_N];
        snprintf(ctx, sizeof ctx, "logits [%lld, %lld] f32, temperature %g, sample seed %llu step %llu, data seed %llu",
                 (long long)B, (long long)V, (double)temp, (unsigned long long)cases[ci].seed,
                 (unsigned long long)cases[ci].step, (unsigned long long)seed);
        tu_rng r = tu_rng_make(seed);
        float *l = malloc(sizeof(float) * (size_t)(B * V));
        for (int64_t i = 0; i < B * V; i++) l[i] = (float)(2.0 * tu_normal(&r));
        pbuf pl = pb_new(l, sizeof(float) * (size_t)(B * V)), po = pb_poison(sizeof(int32_t) * (size_t)B);
        const int64_t sl[2] = {B, V}, so[1] = {B};
        hae_sample_args ac = {TV_C(pl, HAE_F32, 2, sl, NULL), TV_C(po, HAE_I32, 1, so, NULL), temp, cases[ci].seed,
                              cases[ci].step};
        hae_sample_args ag = {TV_G(pl, HAE_F32, 2, sl, NULL), TV_G(po, HAE_I32, 1, so, NULL), temp, cases[ci].seed,
                              cases[ci].step};
        if (gpu_ran(hae_sample(g_cpu, &ac), "cpu", "sample", ctx) && gpu_ran(hae_sample(g_gpu, &ag), "cuda", "sample", ctx) &&
            gpu_done("sample", ctx)) {
            int32_t *gt = fetch_tokens(&po);
            const int32_t *ct = po.c;
            int near_ties = 0;
            for (int64_t b = 0; b < B; b++) {
                if (gt[b] == ct[b]) continue;
                /* the host's Gumbel scores: a mismatch is allowed only where the two best are within 1e-5 */
                double best = -INFINITY, second = -INFINITY;
                for (int64_t i = 0; i < V; i++) {
                    float u = hae_uniform(cases[ci].seed, cases[ci].step, (uint64_t)b, (uint64_t)i);
                    double s = (double)(l[b * V + i] / temp - logf(-logf(u)));
                    if (s > best) {
                        second = best;
                        best = s;
                    } else if (s > second) {
                        second = s;
                    }
                }
                if (best - second <= 1e-5) {
                    near_ties++;
                    continue;
                }
                cr_expect(0, "sample [%s]: row %lld: gpu token %d, cpu token %d (best Gumbel score %.9g, second %.9g, "
                             "gap %.3g > 1e-5)",
                          ctx, (long long)b, gt[b], ct[b], best, second, best - second);
            }
            if (near_ties) cr_log_info("sample [%s]: %d rows differ within a 1e-5 Gumbel near-tie", ctx, near_ties);
            free(gt);
        }
        pb_free(&pl), pb_free(&po);
        free(l);
    }
}

/* ---------------------------------------------------------------- kv_write */

Test(gpu, kv_write) {
    static const struct {
        int64_t B, T, H, D, cap, pos0, pad;
        hae_dtype src, cache;
    } cases[] = {
        {2, 1, 2, 64, 64, 37, 0, HAE_F32, HAE_F32},     /* decode */
        {2, 17, 4, 128, 64, 0, 5, HAE_BF16, HAE_BF16},  /* prefill, strided src */
        {2, 12, 2, 64, 16, 10, 0, HAE_F32, HAE_BF16},   /* wraps around the ring */
        {1, 16, 1, 80, 16, 100, 3, HAE_BF16, HAE_F32},  /* T == cap, wrapping */
        {2, 1, 8, 128, 32, 1000, 0, HAE_BF16, HAE_BF16}, /* decode far into a ring */
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const int64_t B = cases[ci].B, T = cases[ci].T, H = cases[ci].H, D = cases[ci].D, cap = cases[ci].cap;
        const int64_t pos0 = cases[ci].pos0, s1 = H * D + cases[ci].pad, s0 = T * s1 + cases[ci].pad;
        const hae_dtype sd = cases[ci].src, cd = cases[ci].cache;
        const uint64_t seed = 900 + ci;
        char ctx[CTX_N];
        snprintf(ctx, sizeof ctx, "src [%lld, %lld, %lld, %lld] %s strides [%lld, %lld], cache [%lld, %lld, %lld, %lld] %s, "
                 "pos0 %lld, seed %llu",
                 (long long)B, (long long)T, (long long)H, (long long)D, dn(sd), (long long)s0, (long long)s1,
                 (long long)B, (long long)cap, (long long)H, (long long)D, dn(cd), (long long)pos0,
                 (unsigned long long)seed);
        tu_rng r = tu_rng_make(seed);
        void *hs = host_poison(hae_dtype_size(sd) * (size_t)(B * s0));
        fill_rows(hs, sd, B, T, H * D, s0, s1, &r, -1, 1);
        pbuf ps = pb_new(hs, hae_dtype_size(sd) * (size_t)(B * s0));
        /* slots the write must not touch stay NaN on both sides */
        pbuf pc = pb_poison(hae_dtype_size(cd) * (size_t)(B * cap * H * D));
        const int64_t ss[4] = {B, T, H, D}, sst[4] = {s0, s1, D, 1}, sc[4] = {B, cap, H, D};
        hae_kv_write_args ac = {TV_C(ps, sd, 4, ss, sst), TV_C(pc, cd, 4, sc, NULL), pos0};
        hae_kv_write_args ag = {TV_G(ps, sd, 4, ss, sst), TV_G(pc, cd, 4, sc, NULL), pos0};
        if (gpu_ran(hae_kv_write(g_cpu, &ac), "cpu", "kv_write", ctx) &&
            gpu_ran(hae_kv_write(g_gpu, &ag), "cuda", "kv_write", ctx) && gpu_done("kv_write", ctx))
            pb_compare("kv_write", ctx, &pc, cd, -1);
        pb_free(&ps), pb_free(&pc);
        free(hs);
    }
}

/* GPU tests of training: every CUDA training op (train_ops_cuda.h) held to the CPU reference (train/ops.c), then
 * whole models: the CUDA trainer's loss, gradients and AdamW steps against the CPU trainer's from the same weights
 * and batch, run to run determinism, and `hae train` on the GPU (the loss falls, a resumed run ends bit for bit
 * where an uninterrupted one does).
 *
 * Each op case makes fresh seeded random inputs, the same bytes on both backends, POISONS what the op overwrites
 * (0xFF bytes: NaN) and fills what it adds into with random values, runs the op on both and compares whole buffers
 * (pb_compare: NaN positions, then ||gpu - cpu|| / ||cpu||). Tolerances: copies, selections and gathers bit-exact;
 * f32 outputs 1e-5 relative (2e-5 where a recurrence or a softmax over many terms sits in between). Every message
 * names the op, the shape and the seed. main() is tests/main_gpu.c's. */
#include "gpu_pair.h"
#include "testutil.h"

#include "../train/train_ops.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define CTX_N 320
#define TOL 1e-5
#define TOL_LONG 2e-5

TestSuite(gpu_train, .init = gpu_pair_setup, .fini = gpu_pair_teardown, .timeout = 600);

/* ---------------------------------------------------------------- harness */

/* Inside `SIDES`: the backend and the pointer of pbuf p on the side being run. */
#define BE (side ? g_gpu : g_cpu)
#define F(p) ((float *)(side ? (p).g : (p).c))
#define PTR(type, p) ((type *)(side ? (p).g : (p).c))
/* Runs `call` on the CPU, then on the GPU (and syncs); ok is false when either failed. */
#define SIDES(ok, op, ctx, call)                                                                                     \
    do {                                                                                                             \
        ok = true;                                                                                                   \
        for (int side = 0; side < 2; side++) ok = gpu_ran((call), side ? "cuda" : "cpu", op, ctx) && ok;             \
        ok = gpu_done(op, ctx) && ok;                                                                                \
    } while (0)

/* n uniform [lo, hi) floats on both backends */
static pbuf rnd(int64_t n, tu_rng *r, double lo, double hi) {
    float *h = malloc(sizeof(float) * (size_t)(n ? n : 1));
    tu_fill(h, HAE_F32, n, r, lo, hi);
    pbuf p = pb_new(h, sizeof(float) * (size_t)n);
    free(h);
    return p;
}

static pbuf nan_buf(int64_t n) { return pb_poison(sizeof(float) * (size_t)n); }

static void cmp(const char *op, const char *ctx, const char *what, const pbuf *p, double tol) {
    char c[2 * CTX_N];
    snprintf(c, sizeof c, "%.400s: %.200s", ctx, what);
    pb_compare(op, c, p, HAE_F32, tol);
}

static void free_all(pbuf *p, int n) {
    for (int i = 0; i < n; i++) pb_free(&p[i]);
}

/* ---------------------------------------------------------------- dense ops */

Test(gpu_train, norms_swiglu_rope) {
    static const int64_t shapes[][2] = {{1, 8}, {37, 64}, {300, 24}, {1024, 256}};
    for (int si = 0; si < 4; si++) {
        const int64_t N = shapes[si][0], D = shapes[si][1];
        const uint64_t seed = 10 + (uint64_t)si;
        char ctx[CTX_N];
        snprintf(ctx, sizeof ctx, "x [%lld, %lld], seed %llu", (long long)N, (long long)D, (unsigned long long)seed);
        tu_rng r = tu_rng_make(seed);
        pbuf b[] = {rnd(N * D, &r, -2, 2),    rnd(D, &r, 0.5, 1.5),   rnd(D, &r, -0.3, 0.3), rnd(N * D, &r, -1, 1),
                    nan_buf(N * D),           nan_buf(N),             rnd(N * D, &r, -1, 1), rnd(D, &r, -1, 1),
                    rnd(D, &r, -1, 1),        rnd(N * 2 * D, &r, -3, 3), nan_buf(N * D),     nan_buf(N * 2 * D)};
        pbuf *x = &b[0], *w = &b[1], *bias = &b[2], *dy = &b[3], *y = &b[4], *rs = &b[5], *dx = &b[6], *dw = &b[7],
             *db = &b[8], *gu = &b[9], *a = &b[10], *dgu = &b[11];
        bool ok;
        SIDES(ok, "hae_tr_rmsnorm_fwd", ctx, hae_tr_rmsnorm_fwd(BE, F(*x), F(*w), N, D, 1e-6f, F(*y), F(*rs)));
        if (ok) cmp("hae_tr_rmsnorm_fwd", ctx, "y", y, TOL), cmp("hae_tr_rmsnorm_fwd", ctx, "rstd", rs, TOL);
        SIDES(ok, "hae_tr_rmsnorm_bwd", ctx,
              hae_tr_rmsnorm_bwd(BE, F(*x), F(*w), F(*rs), F(*dy), N, D, F(*dx), F(*dw)));
        if (ok) cmp("hae_tr_rmsnorm_bwd", ctx, "dx (added into)", dx, TOL), cmp("hae_tr_rmsnorm_bwd", ctx, "dw", dw, TOL);
        pb_free(y), pb_free(rs), pb_free(dx);
        *y = nan_buf(N * D), *rs = nan_buf(N), *dx = nan_buf(N * D);
        SIDES(ok, "hae_tr_layernorm_fwd", ctx,
              hae_tr_layernorm_fwd(BE, F(*x), F(*w), F(*bias), N, D, 1e-6f, F(*y), F(*rs)));
        if (ok) cmp("hae_tr_layernorm_fwd", ctx, "y", y, TOL), cmp("hae_tr_layernorm_fwd", ctx, "rstd", rs, TOL);
        SIDES(ok, "hae_tr_layernorm_bwd", ctx,
              hae_tr_layernorm_bwd(BE, F(*x), F(*w), F(*rs), F(*dy), N, D, F(*dx), F(*dw), F(*db)));
        if (ok)
            cmp("hae_tr_layernorm_bwd", ctx, "dx", dx, TOL), cmp("hae_tr_layernorm_bwd", ctx, "dw", dw, TOL),
                cmp("hae_tr_layernorm_bwd", ctx, "dbias", db, TOL);
        SIDES(ok, "hae_tr_swiglu_fwd", ctx, hae_tr_swiglu_fwd(BE, F(*gu), N, D, F(*a)));
        if (ok) cmp("hae_tr_swiglu_fwd", ctx, "a", a, TOL);
        SIDES(ok, "hae_tr_swiglu_bwd", ctx, hae_tr_swiglu_bwd(BE, F(*gu), F(*dy), N, D, F(*dgu)));
        if (ok) cmp("hae_tr_swiglu_bwd", ctx, "dgu", dgu, TOL);
        /* RoPE over 3 heads of D / 2... as the trainer's fused rows: heads of Dh = 8 with a row stride past them */
        const int64_t H = 3, Dh = 8, ld = 5 * Dh, T = N, rot = 4;
        float *tab = malloc(sizeof(float) * (size_t)(2 * T * rot / 2));
        hae_tr_rope_table(T, (int)rot, 10000.0f, tab, tab + T * rot / 2);
        pbuf cs = pb_new(tab, sizeof(float) * (size_t)(T * rot / 2)), sn = pb_new(tab + T * rot / 2, sizeof(float) * (size_t)(T * rot / 2));
        pbuf q = rnd(T * ld, &r, -1, 1);
        for (int inv = 0; inv < 2; inv++) {
            SIDES(ok, "hae_tr_rope", ctx, hae_tr_rope(BE, F(q), 1, T, H, Dh, ld, (int)rot, F(cs), F(sn), inv));
            if (ok) cmp("hae_tr_rope", ctx, inv ? "inverse" : "forward", &q, TOL);
        }
        free(tab), pb_free(&cs), pb_free(&sn), pb_free(&q);
        free_all(b, 12);
    }
}

Test(gpu_train, linear_embedding_xent) {
    /* The last shape's bf16 dW runs in two chunks of rows (the scratch holds 65536 rows of x and dy); its dW sums
     * 70000 terms, which the CPU adds in fp32 one after another (relative error ~ 6e-8 sqrt(70000 / 2)): TOL_LONG. */
    static const int64_t shapes[][3] = {{5, 7, 3}, {300, 64, 200}, {2048, 128, 384}, {70000, 64, 448}};
    for (int si = 0; si < 4; si++) {
        const int64_t N = shapes[si][0], I = shapes[si][1], O = shapes[si][2];
        const double tol = si == 3 ? TOL_LONG : TOL;
        const uint64_t seed = 20 + (uint64_t)si;
        char ctx[CTX_N];
        snprintf(ctx, sizeof ctx, "x [%lld, %lld], W [%lld, %lld], seed %llu", (long long)N, (long long)I, (long long)O,
                 (long long)I, (unsigned long long)seed);
        tu_rng r = tu_rng_make(seed);
        pbuf x = rnd(N * I, &r, -1, 1), W = rnd(O * I, &r, -0.5, 0.5), y = nan_buf(N * O), dy = rnd(N * O, &r, -1, 1);
        pbuf dx = rnd(N * I, &r, -1, 1), dW = rnd(O * I, &r, -1, 1);
        bool ok;
        /* f32 products, then bf16 ones (train.matmul): cuBLAS's tensor cores against the CPU's rounded operands */
        for (int bf = 0; bf < 2; bf++) {
            const hae_dtype mm = bf ? HAE_BF16 : HAE_F32;
            char c2[CTX_N + 16];
            snprintf(c2, sizeof c2, "%s, %s products", ctx, hae_dtype_name(mm));
            SIDES(ok, "hae_tr_linear_fwd", c2, hae_tr_linear_fwd(BE, mm, F(x), F(W), N, I, O, F(y), false));
            if (ok) cmp("hae_tr_linear_fwd", c2, "y", &y, tol);
            SIDES(ok, "hae_tr_linear_fwd", c2, hae_tr_linear_fwd(BE, mm, F(x), F(W), N, I, O, F(y), true));
            if (ok) cmp("hae_tr_linear_fwd", c2, "y (accumulated)", &y, tol);
            SIDES(ok, "hae_tr_linear_bwd", c2, hae_tr_linear_bwd(BE, mm, F(x), F(W), F(dy), N, I, O, F(dx), true, F(dW)));
            if (ok) cmp("hae_tr_linear_bwd", c2, "dx (accumulated)", &dx, tol), cmp("hae_tr_linear_bwd", c2, "dW", &dW, tol);
            SIDES(ok, "hae_tr_linear_bwd", c2, hae_tr_linear_bwd(BE, mm, F(x), F(W), F(dy), N, I, O, NULL, false, F(dW)));
            if (ok) cmp("hae_tr_linear_bwd", c2, "dW, no dx", &dW, tol);
        }
        /* embedding: a vocabulary of O rows of I, every id repeated */
        int32_t *ids = malloc(sizeof(int32_t) * (size_t)N);
        for (int64_t i = 0; i < N; i++) ids[i] = (int32_t)tu_uniform(&r, 0, (double)(O < 4 ? O : O / 4));
        pbuf pid = pb_new(ids, sizeof(int32_t) * (size_t)N), e = nan_buf(N * I), E = rnd(O * I, &r, -1, 1);
        SIDES(ok, "hae_tr_embedding_fwd", ctx, hae_tr_embedding_fwd(BE, PTR(int32_t, pid), N, F(E), I, F(e)));
        if (ok) pb_compare("hae_tr_embedding_fwd", ctx, &e, HAE_F32, -1);
        SIDES(ok, "hae_tr_embedding_bwd", ctx, hae_tr_embedding_bwd(BE, PTR(int32_t, pid), N, F(x), I, F(E)));
        if (ok) cmp("hae_tr_embedding_bwd", ctx, "dE (repeated ids)", &E, TOL);
        /* cross-entropy of N rows of O logits; ties put at the target's neighbour in a few rows */
        float *z = malloc(sizeof(float) * (size_t)(N * O));
        tu_fill(z, HAE_F32, N * O, &r, -4, 4);
        for (int64_t i = 0; i < N; i++) ids[i] = (int32_t)tu_uniform(&r, 0, (double)O);
        for (int64_t i = 0; i < N; i += 3) z[i * O + (i % O)] = z[i * O + (i + 1) % O] = 9.0f;
        pbuf pz = pb_new(z, sizeof(float) * (size_t)(N * O)), pt = pb_new(ids, sizeof(int32_t) * (size_t)N);
        pbuf dz = nan_buf(N * O), corr = pb_poison((size_t)N);
        double loss[2] = {0, 0};
        SIDES(ok, "hae_tr_xent", ctx,
              hae_tr_xent(BE, F(pz), PTR(int32_t, pt), N, O, 0.5f, F(dz), PTR(uint8_t, corr), &loss[side]));
        if (ok) {
            cr_expect(fabs(loss[1] - loss[0]) <= 1e-9 * fabs(loss[0]), "hae_tr_xent [%s]: loss %.12g on cuda, %.12g on cpu",
                      ctx, loss[1], loss[0]);
            cmp("hae_tr_xent", ctx, "dz", &dz, TOL);
            uint8_t *cg = pb_fetch(&corr);
            cr_expect(memcmp(cg, corr.c, (size_t)N) == 0, "hae_tr_xent [%s]: correct flags differ", ctx);
            free(cg);
        }
        SIDES(ok, "hae_tr_xent", ctx, hae_tr_xent(BE, F(pz), PTR(int32_t, pt), N, O, 0.5f, F(pz), NULL, &loss[side]));
        if (ok) cmp("hae_tr_xent", ctx, "dz in place", &pz, TOL);
        free(ids), free(z);
        pbuf all[] = {x, W, y, dy, dx, dW, pid, e, E, pz, pt, dz, corr};
        free_all(all, 13);
    }
}

Test(gpu_train, moves_maps_optimiser) {
    const int64_t N = 333, C = 70;
    const uint64_t seed = 30;
    char ctx[CTX_N];
    snprintf(ctx, sizeof ctx, "[%lld, %lld], seed %llu", (long long)N, (long long)C, (unsigned long long)seed);
    tu_rng r = tu_rng_make(seed);
    pbuf src = rnd(N * C, &r, -2, 2), dst = rnd(N * 50, &r, -1, 1), dst2 = nan_buf(N * 20);
    bool ok;
    SIDES(ok, "hae_tr_copy_cols", ctx,
          hae_tr_copy_cols(BE, &(hae_tr_cols){.dst = F(dst), .src = F(src), .N = N, .n = 20, .ld_dst = 50, .dst_off = 7,
                                              .ld_src = C, .src_off = 45, .add = true}));
    if (ok) cmp("hae_tr_copy_cols", ctx, "added into columns 7..27 of 50", &dst, TOL);
    SIDES(ok, "hae_tr_copy_cols", ctx,
          hae_tr_copy_cols(BE, &(hae_tr_cols){.dst = F(dst2), .src = F(src), .N = N, .n = 20, .ld_dst = 20, .ld_src = C,
                                              .src_off = 3}));
    if (ok) pb_compare("hae_tr_copy_cols", ctx, &dst2, HAE_F32, -1);
    int64_t idx[100];
    for (int i = 0; i < 100; i++) idx[i] = (int64_t)tu_uniform(&r, 0, 40); /* repeats */
    pbuf pidx = pb_new(idx, sizeof idx), rows = nan_buf(100 * C), acc = rnd(N * C, &r, -1, 1);
    SIDES(ok, "hae_tr_gather_rows", ctx, hae_tr_gather_rows(BE, F(src), PTR(int64_t, pidx), 100, C, F(rows)));
    if (ok) pb_compare("hae_tr_gather_rows", ctx, &rows, HAE_F32, -1);
    SIDES(ok, "hae_tr_scatter_add_rows", ctx, hae_tr_scatter_add_rows(BE, F(rows), PTR(int64_t, pidx), 100, C, F(acc)));
    if (ok) cmp("hae_tr_scatter_add_rows", ctx, "repeated rows", &acc, TOL);
    pbuf y = nan_buf(N * C), dx = nan_buf(N * C), dy = rnd(N * C, &r, -1, 1);
    for (int f = 0; f < 2; f++) {
        const char *name = f ? "elu+1" : "sigmoid";
        SIDES(ok, "hae_tr_map_fwd", ctx, hae_tr_map_fwd(BE, (hae_tr_map)f, F(src), N * C, F(y)));
        if (ok) cmp("hae_tr_map_fwd", ctx, name, &y, TOL);
        SIDES(ok, "hae_tr_map_bwd", ctx, hae_tr_map_bwd(BE, (hae_tr_map)f, F(f ? src : y), F(dy), N * C, F(dx)));
        if (ok) cmp("hae_tr_map_bwd", ctx, name, &dx, TOL);
    }
    pbuf alog = rnd(C, &r, -1, 2), g = nan_buf(N * C), dal = rnd(C, &r, -1, 1);
    SIDES(ok, "hae_tr_fixed_decay_fwd", ctx, hae_tr_fixed_decay_fwd(BE, F(alog), N, C, F(g)));
    if (ok) cmp("hae_tr_fixed_decay_fwd", ctx, "g", &g, TOL);
    SIDES(ok, "hae_tr_fixed_decay_bwd", ctx, hae_tr_fixed_decay_bwd(BE, F(g), F(dy), N, C, F(dal)));
    if (ok) cmp("hae_tr_fixed_decay_bwd", ctx, "dA_log", &dal, TOL);
    /* the squared norm and AdamW over an odd count */
    const int64_t n = 100003;
    pbuf w = rnd(n, &r, -1, 1), gr = rnd(n, &r, -1, 1), m = rnd(n, &r, -0.1, 0.1), v = rnd(n, &r, 0.001, 0.01);
    pbuf ss = pb_poison(sizeof(double));
    SIDES(ok, "hae_tr_sumsq", ctx, hae_tr_sumsq(BE, F(gr), n, PTR(double, ss)));
    if (ok) {
        double *sg = pb_fetch(&ss), sc = *(double *)ss.c;
        cr_expect(fabs(*sg - sc) <= 1e-12 * sc, "hae_tr_sumsq [%lld values]: %.15g on cuda, %.15g on cpu", (long long)n,
                  *sg, sc);
        free(sg);
    }
    const hae_tr_adamw_args a = {.gscale = 0.7f, .b1 = 0.9f, .b2 = 0.95f, .eps = 1e-8f, .step_size = 1e-3f, .c2 = 0.3f,
                                 .decay = 0.999f};
    SIDES(ok, "hae_tr_adamw", ctx, hae_tr_adamw(BE, &a, F(w), F(gr), F(m), F(v), n));
    if (ok) cmp("hae_tr_adamw", ctx, "w", &w, TOL), cmp("hae_tr_adamw", ctx, "m", &m, TOL), cmp("hae_tr_adamw", ctx, "v", &v, TOL);
    pbuf all[] = {src, dst, dst2, pidx, rows, acc, y, dx, dy, alog, g, dal, w, gr, m, v, ss};
    free_all(all, 17);
}

/* ---------------------------------------------------------------- attention and the indexer */

Test(gpu_train, attention) {
    /* Dv: value heads of their own (mla's); 0: Dh */
    static const struct {
        int64_t B, T, Hq, Hkv, Dh, Dv, window;
        bool allow;
    } cases[] = {{1, 1, 1, 1, 8, 0, 0, false},     {2, 37, 4, 2, 16, 0, 0, false},   {3, 64, 2, 2, 32, 0, 5, false},
                 {2, 100, 4, 1, 16, 0, 0, true},   {4, 128, 2, 2, 32, 0, 0, false},  {2, 512, 2, 2, 64, 0, 16, false},
                 {2, 700, 2, 2, 64, 0, 0, false},  {2, 37, 4, 4, 24, 16, 0, false},  {2, 100, 2, 2, 16, 32, 7, false},
                 {2, 64, 2, 2, 192, 128, 0, true}};
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        const int64_t B = cases[ci].B, T = cases[ci].T, Hq = cases[ci].Hq, Hkv = cases[ci].Hkv, Dh = cases[ci].Dh;
        const int64_t Dv = cases[ci].Dv ? cases[ci].Dv : Dh;
        const uint64_t seed = 40 + ci;
        char ctx[CTX_N];
        snprintf(ctx, sizeof ctx, "B %lld T %lld, %lld q / %lld kv heads of %lld (v %lld), window %lld%s, seed %llu",
                 (long long)B, (long long)T, (long long)Hq, (long long)Hkv, (long long)Dh, (long long)Dv,
                 (long long)cases[ci].window, cases[ci].allow ? ", a random selection" : "", (unsigned long long)seed);
        tu_rng r = tu_rng_make(seed);
        const int64_t N = B * T, ld = (Hq + Hkv) * Dh + Hkv * Dv;
        uint8_t *al = malloc((size_t)(B * T * T));
        for (int64_t i = 0; i < B * T * T; i++) al[i] = tu_uniform(&r, 0, 1) < 0.4;
        pbuf allow = pb_new(al, (size_t)(B * T * T));
        free(al);
        pbuf qkv = rnd(N * ld, &r, -1, 1), P = nan_buf(B * Hq * T * T), out = nan_buf(N * Hq * Dv);
        pbuf dout = rnd(N * Hq * Dv, &r, -1, 1), dqkv = nan_buf(N * ld);
        bool ok;
        for (int side = 0; side < 2; side++) { /* the shape holds the side's allow pointer */
            const hae_tr_attn_shape s = {.B = B, .T = T, .Hq = Hq, .Hkv = Hkv, .Dh = Dh, .Dv = cases[ci].Dv,
                                         .window = cases[ci].window,
                                         .scale = 1.0f / sqrtf((float)Dh),
                                         .allow = cases[ci].allow ? PTR(uint8_t, allow) : NULL};
            ok = gpu_ran(hae_tr_attention_fwd(BE, &s, F(qkv), F(P), F(out)), side ? "cuda" : "cpu", "hae_tr_attention_fwd",
                         ctx);
            ok = ok && (!side || gpu_done("hae_tr_attention_fwd", ctx));
            ok = ok && gpu_ran(hae_tr_attention_bwd(BE, &s, F(qkv), F(P), F(out), F(dout), F(dqkv)),
                               side ? "cuda" : "cpu", "hae_tr_attention_bwd", ctx);
            ok = ok && (!side || gpu_done("hae_tr_attention_bwd", ctx));
        }
        if (ok) {
            cmp("hae_tr_attention_fwd", ctx, "P", &P, TOL), cmp("hae_tr_attention_fwd", ctx, "out", &out, TOL);
            cmp("hae_tr_attention_bwd", ctx, "dqkv", &dqkv, TOL_LONG);
        }
        pbuf all[] = {allow, qkv, P, out, dout, dqkv};
        free_all(all, 6);
    }
}

Test(gpu_train, indexer) {
    static const int64_t cases[][5] = {{1, 9, 1, 16, 4}, {2, 64, 2, 32, 16}, {3, 130, 4, 64, 17}, {2, 512, 2, 128, 64}};
    for (int ci = 0; ci < 4; ci++) {
        const int64_t B = cases[ci][0], T = cases[ci][1], HI = cases[ci][2], DI = cases[ci][3], k = cases[ci][4];
        const int64_t Hq = 2, N = B * T;
        const uint64_t seed = 50 + (uint64_t)ci;
        char ctx[CTX_N];
        snprintf(ctx, sizeof ctx, "B %lld T %lld, %lld indexer heads of %lld, top-%lld, seed %llu", (long long)B,
                 (long long)T, (long long)HI, (long long)DI, (long long)k, (unsigned long long)seed);
        tu_rng r = tu_rng_make(seed);
        const hae_tr_index_shape s = {.B = B, .T = T, .HI = HI, .DI = DI, .scale = 1.0f / sqrtf((float)(HI * DI))};
        pbuf q = rnd(N * HI * DI, &r, -1, 1), kk = rnd(N * DI, &r, -1, 1), w = rnd(N * HI, &r, -1, 1);
        pbuf I = nan_buf(B * T * T), allow = pb_poison((size_t)(B * T * T)), dI = nan_buf(B * T * T);
        pbuf dq = nan_buf(N * HI * DI), dk = nan_buf(N * DI), dw = nan_buf(N * HI);
        bool ok;
        SIDES(ok, "hae_tr_index_fwd", ctx, hae_tr_index_fwd(BE, &s, F(q), F(kk), F(w), F(I)));
        if (ok) cmp("hae_tr_index_fwd", ctx, "I", &I, TOL);
        /* the selection from the CPU's scores on both sides, with ties: every 5th score of a row made equal */
        float *hI = malloc(sizeof(float) * (size_t)(B * T * T));
        memcpy(hI, I.c, sizeof(float) * (size_t)(B * T * T));
        for (int64_t i = 0; i < B * T * T; i += 5) hI[i] = 0.25f;
        pb_set(&I, hI);
        free(hI);
        SIDES(ok, "hae_tr_index_select", ctx, hae_tr_index_select(BE, F(I), B, T, k, PTR(uint8_t, allow)));
        if (ok) {
            uint8_t *ag = pb_fetch(&allow);
            int64_t first = -1;
            for (int64_t i = 0; i < B * T * T && first < 0; i++)
                if (ag[i] != ((uint8_t *)allow.c)[i]) first = i;
            cr_expect(first < 0, "hae_tr_index_select [%s]: selections differ first at [%lld, %lld, %lld]", ctx,
                      (long long)(first / (T * T)), (long long)(first / T % T), (long long)(first % T));
            free(ag);
        }
        /* the loss against a random attention: P rows softmax-like (positive, normalised per head) */
        float *hp = malloc(sizeof(float) * (size_t)(B * Hq * T * T));
        for (int64_t row = 0; row < B * Hq * T; row++) {
            const int64_t t = row % T;
            double sum = 0;
            for (int64_t u = 0; u < T; u++) sum += hp[row * T + u] = u <= t ? (float)tu_uniform(&r, 0.01, 1) : 0.0f;
            for (int64_t u = 0; u <= t; u++) hp[row * T + u] = (float)(hp[row * T + u] / sum);
        }
        pbuf P = pb_new(hp, sizeof(float) * (size_t)(B * Hq * T * T));
        free(hp);
        double kl[2] = {0, 0};
        SIDES(ok, "hae_tr_index_kl", ctx,
              hae_tr_index_kl(BE, F(P), F(I), PTR(uint8_t, allow), B, Hq, T, 0.5f, F(dI), &kl[side]));
        if (ok) {
            cr_expect(fabs(kl[1] - kl[0]) <= 1e-6 * fabs(kl[0]), "hae_tr_index_kl [%s]: %.12g on cuda, %.12g on cpu", ctx,
                      kl[1], kl[0]);
            cmp("hae_tr_index_kl", ctx, "dI", &dI, TOL);
        }
        SIDES(ok, "hae_tr_index_bwd", ctx, hae_tr_index_bwd(BE, &s, F(q), F(kk), F(w), F(dI), F(dq), F(dk), F(dw)));
        if (ok)
            cmp("hae_tr_index_bwd", ctx, "dq", &dq, TOL), cmp("hae_tr_index_bwd", ctx, "dk", &dk, TOL),
                cmp("hae_tr_index_bwd", ctx, "dw", &dw, TOL);
        pbuf all[] = {q, kk, w, I, allow, dI, dq, dk, dw, P};
        free_all(all, 10);
    }
}

/* ---------------------------------------------------------------- the linear family */

/* The recurrence token by token (every state kept, or checkpoints), then in its chunk form: the GPU's f32 chunk
 * kernels against the CPU's chunk form in double, to 1e-4 (the products' f32 sums and exponentials). */
Test(gpu_train, delta_recurrence) {
    /* every: state checkpoints every this many tokens, the backward recomputing the rest (0: every state kept);
     * chunk: the chunk form over chunks of this many tokens (0: token by token) */
    static const struct {
        int64_t B, T, H, K, V;
        int decay; /* 0 none, 1 per head, 2 per channel */
        bool delta;
        int64_t every, chunk;
    } cases[] = {{1, 1, 1, 16, 16, 2, true, 0, 0},     {2, 37, 2, 16, 16, 2, true, 0, 0},
                 {2, 37, 3, 16, 32, 1, true, 0, 0},    {1, 64, 2, 32, 16, 0, true, 0, 0},
                 {2, 50, 2, 16, 16, 1, false, 0, 0},   {1, 33, 1, 64, 64, 2, true, 0, 0},
                 {1, 20, 1, 128, 128, 1, true, 0, 0},  {2, 512, 2, 16, 16, 2, true, 0, 0},
                 {2, 37, 2, 16, 16, 2, true, 5, 0},    {1, 64, 2, 32, 16, 0, true, 8, 0},
                 {2, 50, 2, 16, 16, 1, false, 7, 0},   {1, 33, 1, 64, 64, 2, true, 4, 0},
                 {1, 20, 1, 128, 128, 1, true, 6, 0},  {2, 512, 2, 16, 16, 2, true, 23, 0},
                 {1, 1, 1, 16, 16, 2, true, 0, 16},    {2, 37, 2, 16, 16, 2, true, 0, 8},  /* a short last chunk */
                 {2, 37, 3, 16, 32, 1, true, 0, 16},   {1, 64, 2, 32, 16, 0, true, 0, 32}, /* no decay */
                 {2, 50, 2, 16, 16, 1, false, 0, 16},  {1, 33, 1, 64, 64, 2, true, 0, 32}, /* no delta rule */
                 {1, 40, 1, 128, 128, 1, true, 0, 16}, {2, 512, 2, 16, 16, 2, true, 0, 64},
                 {2, 512, 2, 64, 64, 2, true, 0, 32},  {1, 10, 2, 16, 16, 2, true, 0, 64}, /* one chunk, shorter */
                 {2, 300, 2, 32, 48, 2, false, 0, 24}};
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        const int64_t B = cases[ci].B, T = cases[ci].T, H = cases[ci].H, K = cases[ci].K, V = cases[ci].V;
        const int dec = cases[ci].decay;
        const bool delta = cases[ci].delta;
        const uint64_t seed = 60 + ci;
        char ctx[CTX_N];
        snprintf(ctx, sizeof ctx, "B %lld T %lld H %lld, K %lld V %lld, decay %s, %s, checkpoints every %lld, chunk "
                 "form %lld, seed %llu", (long long)B, (long long)T, (long long)H, (long long)K, (long long)V,
                 dec == 2 ? "per channel" : dec ? "per head" : "none", delta ? "delta rule" : "no delta rule",
                 (long long)cases[ci].every, (long long)cases[ci].chunk, (unsigned long long)seed);
        tu_rng r = tu_rng_make(seed);
        const hae_tr_delta_shape s = {.B = B, .T = T, .H = H, .K = K, .V = V, .channel_decay = dec == 2,
                                      .scale = 1.0f / sqrtf((float)K), .every = cases[ci].every,
                                      .chunk = cases[ci].chunk};
        const double tol = s.chunk ? 1e-4 : TOL_LONG;
        const int64_t N = B * T, nS = B * H * hae_tr_delta_slots(&s) * K * V;
        /* q and k of unit norm per head, as the L2 map makes them */
        float *hq = malloc(sizeof(float) * (size_t)(2 * N * H * K));
        tu_fill(hq, HAE_F32, 2 * N * H * K, &r, -1, 1);
        for (int64_t row = 0; row < 2 * N * H; row++) {
            double ss = 0;
            for (int64_t c = 0; c < K; c++) ss += (double)hq[row * K + c] * hq[row * K + c];
            for (int64_t c = 0; c < K; c++) hq[row * K + c] = (float)(hq[row * K + c] / sqrt(ss));
        }
        pbuf q = pb_new(hq, sizeof(float) * (size_t)(N * H * K)), k = pb_new(hq + N * H * K, sizeof(float) * (size_t)(N * H * K));
        free(hq);
        pbuf v = rnd(N * H * V, &r, -1, 1), g = rnd(N * H * (dec == 2 ? K : 1), &r, -0.5, -0.01), beta = rnd(N * H, &r, 0.1, 0.9);
        pbuf S = nan_buf(nS), o = nan_buf(N * H * V), dout = rnd(N * H * V, &r, -1, 1);
        pbuf dq = nan_buf(N * H * K), dk = nan_buf(N * H * K), dv = nan_buf(N * H * V), dg = nan_buf(N * H * (dec == 2 ? K : 1)),
             db = nan_buf(N * H);
        bool ok;
        SIDES(ok, "hae_tr_delta_fwd", ctx,
              hae_tr_delta_fwd(BE, &s, F(q), F(k), F(v), dec ? F(g) : NULL, delta ? F(beta) : NULL, F(S), F(o)));
        if (ok) cmp("hae_tr_delta_fwd", ctx, "states", &S, tol), cmp("hae_tr_delta_fwd", ctx, "o", &o, tol);
        SIDES(ok, "hae_tr_delta_bwd", ctx,
              hae_tr_delta_bwd(BE, &s, F(q), F(k), F(v), dec ? F(g) : NULL, delta ? F(beta) : NULL, F(S), F(dout), F(dq),
                               F(dk), F(dv), dec ? F(dg) : NULL, delta ? F(db) : NULL));
        if (ok) {
            cmp("hae_tr_delta_bwd", ctx, "dq", &dq, tol), cmp("hae_tr_delta_bwd", ctx, "dk", &dk, tol);
            cmp("hae_tr_delta_bwd", ctx, "dv", &dv, tol);
            if (dec) cmp("hae_tr_delta_bwd", ctx, "dg", &dg, tol);
            if (delta) cmp("hae_tr_delta_bwd", ctx, "dbeta", &db, tol);
        }
        pbuf all[] = {q, k, v, g, beta, S, o, dout, dq, dk, dv, dg, db};
        free_all(all, 13);
    }
}

Test(gpu_train, conv_norms_gates) {
    static const int64_t cases[][5] = {{1, 3, 8, 4, 8}, {2, 37, 96, 4, 16}, {3, 130, 160, 3, 32}, {4, 128, 256, 4, 64}};
    for (int ci = 0; ci < 4; ci++) {
        const int64_t B = cases[ci][0], T = cases[ci][1], C = cases[ci][2], W = cases[ci][3], D = cases[ci][4];
        const int64_t N = B * T, HV = C / D;
        const uint64_t seed = 70 + (uint64_t)ci;
        char ctx[CTX_N];
        snprintf(ctx, sizeof ctx, "B %lld T %lld, %lld channels, width %lld, rows of %lld, seed %llu", (long long)B,
                 (long long)T, (long long)C, (long long)W, (long long)D, (unsigned long long)seed);
        tu_rng r = tu_rng_make(seed);
        pbuf x = rnd(N * C, &r, -2, 2), wt = rnd(C * W, &r, -0.5, 0.5), pre = nan_buf(N * C), out = nan_buf(N * C);
        pbuf dout = rnd(N * C, &r, -1, 1), dx = nan_buf(N * C), dwt = rnd(C * W, &r, -1, 1);
        bool ok;
        for (int silu = 0; silu < 2; silu++) {
            SIDES(ok, "hae_tr_conv_fwd", ctx, hae_tr_conv_fwd(BE, F(x), F(wt), B, T, C, W, silu, F(pre), F(out)));
            if (ok) cmp("hae_tr_conv_fwd", ctx, "pre", &pre, TOL), cmp("hae_tr_conv_fwd", ctx, silu ? "silu out" : "out", &out, TOL);
            SIDES(ok, "hae_tr_conv_bwd", ctx,
                  hae_tr_conv_bwd(BE, F(x), F(wt), F(pre), F(dout), B, T, C, W, silu, F(dx), F(dwt)));
            if (ok) cmp("hae_tr_conv_bwd", ctx, "dx", &dx, TOL), cmp("hae_tr_conv_bwd", ctx, "dweight", &dwt, TOL);
        }
        /* rows of D: l2 norm; the gated output norm over N HV rows */
        pbuf y = nan_buf(N * C), gate = rnd(N * C, &r, -3, 3), nw = rnd(D, &r, 0.5, 1.5), dgate = nan_buf(N * C);
        pbuf dnw = rnd(D, &r, -1, 1);
        SIDES(ok, "hae_tr_l2norm_fwd", ctx, hae_tr_l2norm_fwd(BE, F(x), N * HV, D, 1e-6f, F(y)));
        if (ok) cmp("hae_tr_l2norm_fwd", ctx, "y", &y, TOL);
        SIDES(ok, "hae_tr_l2norm_bwd", ctx, hae_tr_l2norm_bwd(BE, F(x), F(dout), N * HV, D, 1e-6f, F(dx)));
        if (ok) cmp("hae_tr_l2norm_bwd", ctx, "dx", &dx, TOL);
        SIDES(ok, "hae_tr_gated_norm_fwd", ctx, hae_tr_gated_norm_fwd(BE, F(x), F(gate), F(nw), N * HV, D, 1e-6f, F(y)));
        if (ok) cmp("hae_tr_gated_norm_fwd", ctx, "y", &y, TOL);
        SIDES(ok, "hae_tr_gated_norm_bwd", ctx,
              hae_tr_gated_norm_bwd(BE, F(x), F(gate), F(nw), F(dout), N * HV, D, 1e-6f, F(dx), F(dgate), F(dnw)));
        if (ok)
            cmp("hae_tr_gated_norm_bwd", ctx, "dx", &dx, TOL), cmp("hae_tr_gated_norm_bwd", ctx, "dgate", &dgate, TOL),
                cmp("hae_tr_gated_norm_bwd", ctx, "dw", &dnw, TOL);
        /* the decay gate: HV heads of D raw values (per channel) or of 1 (per head), both gate forms */
        pbuf alog = rnd(HV, &r, 0, 2.7), dtb = rnd(HV * D, &r, -4, -1), g = nan_buf(N * C), draw = nan_buf(N * C);
        pbuf dal = rnd(HV, &r, -1, 1), ddt = rnd(HV * D, &r, -1, 1);
        for (int form = 0; form < 4; form++) {
            const int64_t n = form & 1 ? 1 : D;
            const hae_gate_fn gf = form & 2 ? HAE_GATE_SOFTPLUS : HAE_GATE_SAFE;
            char c2[CTX_N + 64];
            snprintf(c2, sizeof c2, "%s, %s gate, %s", ctx, gf == HAE_GATE_SAFE ? "safe" : "softplus",
                     n == 1 ? "per head" : "per channel");
            SIDES(ok, "hae_tr_decay_fwd", c2, hae_tr_decay_fwd(BE, F(x), F(alog), F(dtb), N, HV, n, gf, -5.0f, F(g)));
            if (ok) cmp("hae_tr_decay_fwd", c2, "g", &g, TOL);
            SIDES(ok, "hae_tr_decay_bwd", c2,
                  hae_tr_decay_bwd(BE, F(x), F(alog), F(dtb), F(dout), N, HV, n, gf, -5.0f, F(draw), F(dal), F(ddt)));
            if (ok)
                cmp("hae_tr_decay_bwd", c2, "draw", &draw, TOL), cmp("hae_tr_decay_bwd", c2, "dA_log", &dal, TOL),
                    cmp("hae_tr_decay_bwd", c2, "ddt_bias", &ddt, TOL);
        }
        pbuf all[] = {x, wt, pre, out, dout, dx, dwt, y, gate, nw, dgate, dnw, alog, dtb, g, draw, dal, ddt};
        free_all(all, 18);
    }
}

/* ---------------------------------------------------------------- whole models */

static const char *model_yaml = "name: gpu-train\n"
                                "seed: 5\n"
                                "model:\n"
                                "  vocab_size: 61\n"
                                "  d_model: 48\n"
                                "  n_layers: 2\n"
                                "  layer_pattern: [full, swa]\n"
                                "  mlp: {intermediate_size: 80}\n"
                                "  attention: {num_heads: 4, num_kv_heads: 2, head_dim: 16, rope: partial,\n"
                                "              partial_rotary_factor: 0.5}\n"
                                "  swa: {window_size: 7}\n"
                                "  linear_attn: {num_heads: 2, head_dim: 16, conv_size: 4}\n"
                                "  dsa: {index_n_heads: 2, index_topk: 9, index_rope_dim: 16}\n"
                                "runtime: {backend: cpu, dtype: f32}\n"
                                "train: {steps: 100, lr: 3.0e-3, weight_decay: 0.1, clip: 1.0}\n";

static hae_trainer *make(hae_backend *be, const hae_config *cfg, int64_t B, int64_t T) {
    hae_trainer *t = NULL;
    cr_assert_eq(hae_trainer_create(cfg, be, B, T, &t), HAE_OK, "%s", hae_last_error());
    return t;
}

/* ||a - b|| / ||b|| */
static double rel(const float *a, const float *b, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]), den += (double)b[i] * b[i];
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* The CUDA trainer against the CPU one from the same weights (the CPU's init moved at random, saved and loaded):
 * the loss, every parameter's gradient and the weights after three AdamW steps; and a second CUDA backward of the
 * same batch gives the same gradients bit for bit. */
Test(gpu_train, models_match_the_cpu) {
    const char *const variants[][2] = {
        {"model.layer_pattern=[full, swa]", "model.tie_word_embeddings=true"},
        {"model.layer_pattern=[kda, full]", "model.linear_attn.num_v_heads=4"},
        {"model.layer_pattern=[gdn, deltanet]", "model.linear_attn.expand_v=2"},
        {"model.layer_pattern=[gla, mamba2, retnet]", "model.linear_attn.safe_gate=false"},
        {"model.layer_pattern=[linear, kda]", "model.linear_attn.head_dim=32"},
        {"model.layer_pattern=[kda, dsa]", "train.indexer_warmup=0"},
        {"model.layer_pattern=[dsa, full]", "train.indexer_warmup=2"},
        {"model.attention.form=mla", "model.attention.rope=full"}, /* value heads of 128, q/k heads of 192 */
        {"model.layer_pattern=[kda, gdn]", "train.linear_chunk=16"}, /* chunks of 16, 16 and 8 */
    };
    enum { B = 3, T = 40 };
    for (int k = 0; k < (int)(sizeof variants / sizeof *variants); k++) {
        hae_config cfg;
        hae_status st = hae_config_parse(model_yaml, strlen(model_yaml), "gpu-train.yaml", variants[k], 2, &cfg);
        cr_assert_eq(st, HAE_OK, "%s", hae_last_error());
        char ctx[CTX_N];
        snprintf(ctx, sizeof ctx, "%s, %s, B %lld T %lld", variants[k][0], variants[k][1], (long long)B, (long long)T);
        hae_trainer *tc = make(g_cpu, &cfg, B, T), *tg = make(g_gpu, &cfg, B, T);
        tu_rng r = tu_rng_make(200 + (uint64_t)k);
        for (int p = 0; p < hae_trainer_param_count(tc); p++) {
            float *w;
            int64_t n;
            cr_assert_eq(hae_trainer_param(tc, p, NULL, &w, NULL, &n), HAE_OK);
            for (int64_t i = 0; i < n; i++) w[i] += (float)tu_uniform(&r, -0.1, 0.1);
        }
        char path[256];
        tu_tmp_path("gpu-train.safetensors", path, sizeof path);
        cr_assert_eq(hae_trainer_save(tc, path), HAE_OK, "%s", hae_last_error());
        cr_assert_eq(hae_trainer_load(tg, path), HAE_OK, "%s", hae_last_error());
        remove(path);
        int32_t tok[B * T], target[B * T];
        int64_t pos[B * T];
        int64_t n = 0;
        for (int64_t i = 0; i < B * T; i++) {
            tok[i] = (int32_t)tu_uniform(&r, 0, (double)cfg.model.vocab_size);
            if (i % 3 == 1) pos[n] = i, target[n++] = (int32_t)tu_uniform(&r, 0, (double)cfg.model.vocab_size);
        }
        const hae_train_batch b = {.tokens = tok, .B = B, .T = T, .pos = pos, .target = target, .n = n};
        for (int step = 0; step < 3; step++) {
            double lc, lg, nc, ng;
            uint8_t cc[B * T], cg[B * T];
            cr_assert_eq(hae_trainer_backward(tc, &b, &lc, cc), HAE_OK, "%s", hae_last_error());
            st = hae_trainer_backward(tg, &b, &lg, cg);
            cr_assert_eq(st, HAE_OK, "%s: cuda backward: %s", ctx, hae_last_error());
            cr_expect(fabs(lg - lc) <= 1e-5 * fabs(lc), "%s, step %d: loss %.9g on cuda, %.9g on cpu", ctx, step, lg, lc);
            cr_expect(fabs(hae_trainer_index_kl(tg) - hae_trainer_index_kl(tc)) <= 1e-4 * fabs(hae_trainer_index_kl(tc)) + 1e-9,
                      "%s, step %d: indexer loss %.9g on cuda, %.9g on cpu", ctx, step, hae_trainer_index_kl(tg),
                      hae_trainer_index_kl(tc));
            for (int p = 0; p < hae_trainer_param_count(tc); p++) {
                const char *name;
                float *gc, *gg, *wc, *wg;
                int64_t np;
                cr_assert_eq(hae_trainer_param(tc, p, &name, &wc, &gc, &np), HAE_OK);
                cr_assert_eq(hae_trainer_param(tg, p, NULL, &wg, &gg, NULL), HAE_OK, "%s", hae_last_error());
                const double eg = rel(gg, gc, np), ew = rel(wg, wc, np);
                cr_expect(eg <= 1e-4, "%s, step %d: gradient of %s differs by %.3g (relative)", ctx, step, name, eg);
                /* AdamW's m / sqrt(v) moves a weight by up to lr whatever its gradient's size, so the gradients' 1e-6
                 * differences where they are near 0 show in the weights as ~1e-5 */
                cr_expect(ew <= 1e-4, "%s, step %d: weights of %s differ by %.3g (relative)", ctx, step, name, ew);
            }
            if (step == 0) { /* determinism: the same batch again gives the same bytes */
                float *g1 = NULL;
                int64_t total = 0;
                for (int p = 0; p < hae_trainer_param_count(tg); p++) {
                    float *gg;
                    int64_t np;
                    cr_assert_eq(hae_trainer_param(tg, p, NULL, NULL, &gg, &np), HAE_OK);
                    g1 = realloc(g1, sizeof(float) * (size_t)(total + np));
                    memcpy(g1 + total, gg, sizeof(float) * (size_t)np), total += np;
                }
                cr_assert_eq(hae_trainer_backward(tg, &b, &lg, cg), HAE_OK, "%s", hae_last_error());
                int64_t at = 0;
                for (int p = 0; p < hae_trainer_param_count(tg); p++) {
                    const char *name;
                    float *gg;
                    int64_t np;
                    cr_assert_eq(hae_trainer_param(tg, p, &name, NULL, &gg, &np), HAE_OK);
                    cr_expect(memcmp(g1 + at, gg, sizeof(float) * (size_t)np) == 0,
                              "%s: a second cuda backward of the same batch changed the gradient of %s", ctx, name);
                    at += np;
                }
                free(g1);
            }
            double g_norm;
            cr_assert_eq(hae_trainer_step(tc, 1e-3f, &nc), HAE_OK, "%s", hae_last_error());
            cr_assert_eq(hae_trainer_step(tg, 1e-3f, &ng), HAE_OK, "%s", hae_last_error());
            g_norm = nc;
            cr_expect(fabs(ng - g_norm) <= 1e-4 * g_norm, "%s, step %d: gradient norm %.9g on cuda, %.9g on cpu", ctx,
                      step, ng, g_norm);
        }
        hae_trainer_destroy(tc), hae_trainer_destroy(tg);
    }
}

/* ---------------------------------------------------------------- hae train on the GPU */

static const char *run_yaml = "name: gpu-smoke\n"
                              "seed: 3\n"
                              "model:\n"
                              "  vocab_size: 72\n"
                              "  d_model: 32\n"
                              "  n_layers: 2\n"
                              "  layer_pattern: [kda, dsa]\n"
                              "  mlp: {intermediate_size: 64}\n"
                              "  attention: {num_heads: 2, num_kv_heads: 2, head_dim: 16}\n"
                              "  linear_attn: {num_heads: 2, head_dim: 16}\n"
                              "  dsa: {index_n_heads: 2, index_topk: 16}\n"
                              "runtime: {backend: cuda, dtype: f32}\n"
                              "eval: {tasks: [mqar], lengths: [64], pairs: [4], noise_vocab: 48, seeds: 8}\n"
                              "train: {steps: 60, batch: 8, lr: 3.0e-3, warmup: 5, eval_every: 30, checkpoint_every: 20,\n"
                              "        log_every: 10}\n";

static hae_status train_gpu(const hae_config *cfg, const char *dir, bool resume, int64_t until, hae_train_result *res) {
    mkdir(dir, 0755);
    hae_train_args a = {.cfg = cfg, .be = g_gpu, .dir = dir, .resume = resume, .until = until};
    return hae_train_run(&a, res);
}

/* A KDA + DSA model trained on the GPU: the loss falls as on the CPU (tests/test_train.c's smoke bar), and a run
 * stopped at step 25 and resumed repeats the uninterrupted run's losses and final checkpoint bit for bit. */
Test(gpu_train, hae_train_on_the_gpu) {
    hae_config cfg;
    cr_assert_eq(hae_config_parse(run_yaml, strlen(run_yaml), "gpu-smoke.yaml", NULL, 0, &cfg), HAE_OK, "%s",
                 hae_last_error());
    char a[256], b[256];
    tu_tmp_path("gpu-train-whole", a, sizeof a);
    tu_tmp_path("gpu-train-paused", b, sizeof b);
    hae_train_result r;
    cr_assert_eq(train_gpu(&cfg, a, false, 0, &r), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(train_gpu(&cfg, b, false, 25, &r), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(train_gpu(&cfg, b, true, 0, &r), HAE_OK, "%s", hae_last_error());
    cr_expect_eq(r.first_step, 25, "resumed from step %lld", (long long)r.first_step);
    double la[61], lb[61];
    cr_expect_eq(tu_read_losses(a, la, 60), 60);
    cr_expect_eq(tu_read_losses(b, lb, 60), 60);
    double first = 0, last = 0;
    for (int i = 1; i <= 10; i++) first += la[i] / 10, last += la[50 + i] / 10;
    cr_expect_lt(last, 0.7 * first, "mean loss of steps 51-60 %.4f is not below 0.7 x that of steps 1-10 (%.4f)", last,
                 first);
    for (int s = 1; s <= 60; s++)
        cr_expect(la[s] == lb[s], "step %d: loss %.9g uninterrupted, %.9g resumed", s, la[s], lb[s]);
    for (int i = 0; i < 2; i++) {
        const char *f = i ? "optim.safetensors" : "model.safetensors";
        char pa[512], pb[512];
        snprintf(pa, sizeof pa, "%s/checkpoints/step-000060/%s", a, f);
        snprintf(pb, sizeof pb, "%s/checkpoints/step-000060/%s", b, f);
        FILE *fa = fopen(pa, "rb"), *fb = fopen(pb, "rb");
        cr_assert(fa && fb, "no %s or %s", pa, pb);
        int ca, cb;
        long at = 0;
        do {
            ca = fgetc(fa), cb = fgetc(fb), at++;
        } while (ca == cb && ca != EOF);
        cr_expect(ca == cb, "%s and %s differ at byte %ld", pa, pb, at - 1);
        fclose(fa), fclose(fb);
    }
}

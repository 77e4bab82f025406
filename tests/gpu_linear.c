/* GPU tests of the linear family: hae_linear_attn (recurrent and chunked), hae_conv_short and
 * hae_gated_rmsnorm on CUDA held to the CPU backend on the same inputs.
 *
 * Every case makes fresh seeded random inputs (never zeros), puts the same bytes on both backends,
 * poisons the outputs (0xFF bytes: NaN) and the padding between strided rows, runs both and compares
 * every element of out (padding included) and of the final state: NaN/Inf positions first, then
 * ||gpu - cpu|| / ||cpu||. The CPU reference always runs the recurrent form (chunk 0). Tolerances:
 * f32 recurrent 2e-5; f32 chunked (3xTF32 tensor cores, another summation order) 1e-4; bf16 outputs
 * 2e-3; bf16 inputs chunked (bf16 tensor-core products with fp32 accumulation, out and state) 5e-3. Every message names the variant, the shapes, the form and the seed. main() is
 * tests/main_gpu.c's. */
#include "internal.h"
#include "gpu_pair.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CTX_N 400

TestSuite(gpu_linear, .init = gpu_pair_setup, .fini = gpu_pair_teardown, .timeout = 600);

/* Fills [B, T] rows of `inner` values at b * s0 + t * s1 (what lies between rows stays poison). */
/* ---------------------------------------------------------------- linear attention */

typedef struct {
    const char *name;
    hae_decay decay;
    bool delta;
    hae_qk_map map;
} variant;

static const variant VARIANTS[] = {
    {"kda", HAE_DECAY_CHANNEL, true, HAE_QK_L2},     {"gdn", HAE_DECAY_HEAD, true, HAE_QK_L2},
    {"deltanet", HAE_DECAY_NONE, true, HAE_QK_L2},   {"gla", HAE_DECAY_CHANNEL, false, HAE_QK_L2},
    {"mamba2", HAE_DECAY_HEAD, false, HAE_QK_L2},    {"retnet", HAE_DECAY_FIXED, false, HAE_QK_L2},
    {"linear", HAE_DECAY_NONE, false, HAE_QK_ELU1},
};
#define N_VARIANTS (int)(sizeof VARIANTS / sizeof VARIANTS[0])

typedef struct {
    int64_t B, T, H, HV, K, V;
    hae_dtype in, out;
    hae_gate_fn gate;
    float lower_bound;
    double graw_lo, graw_hi; /* raw gate range */
    int64_t pad;             /* extra elements after each token row of q, k, v, g, beta, out */
    int nseq;                /* > 0: varlen with these lengths (B = 1, T = their sum) */
    int32_t lens[8];
} lshape;

/* Runs one variant on one shape in one form on both backends and compares out and state. */
static void run_linear(const variant *vr, const lshape *s, int chunk, uint64_t seed) {
    const int64_t B = s->B, H = s->H, HV = s->HV, K = s->K, V = s->V, pad = s->pad;
    int64_t T = s->T, N = B;
    int32_t cu[9] = {0};
    if (s->nseq > 0) {
        N = s->nseq;
        for (int i = 0; i < s->nseq; i++) cu[i + 1] = cu[i] + s->lens[i];
        T = cu[s->nseq];
    }
    const bool ch = vr->decay == HAE_DECAY_CHANNEL;
    const float lb = s->gate == HAE_GATE_SAFE ? s->lower_bound : 0.0f;
    char ctx[CTX_N];
    char lens[96] = "";
    for (int i = 0; i < s->nseq; i++)
        snprintf(lens + strlen(lens), sizeof lens - strlen(lens), "%s%d", i ? "," : " varlen {", s->lens[i]);
    if (s->nseq) strcat(lens, "}");
    snprintf(ctx, sizeof ctx,
             "%s chunk %d: B %lld T %lld H %lld HV %lld K %lld V %lld, in %s out %s, gate %s lb %g graw [%g, %g], "
             "row pad %lld%s, seed %llu",
             vr->name, chunk, (long long)B, (long long)T, (long long)H, (long long)HV, (long long)K, (long long)V,
             hae_dtype_name(s->in), hae_dtype_name(s->out), s->gate == HAE_GATE_SAFE ? "safe" : "softplus", (double)lb,
             s->graw_lo, s->graw_hi, (long long)pad, lens, (unsigned long long)seed);
    tu_rng r = tu_rng_make(seed);
    const hae_dtype dt = s->in;
    const size_t es = hae_dtype_size(dt), eo = hae_dtype_size(s->out);
    /* token rows [T, inner + pad]; batch stride T rows */
    const int64_t qs1 = H * K + pad, vs1 = HV * V + pad, gs1 = (ch ? HV * K : HV) + pad, bs1 = HV + pad;
    const int64_t os1 = HV * V + pad;
    const int64_t nq = B * T * qs1, nv = B * T * vs1, ng = B * T * gs1, nb = B * T * bs1, no = B * T * os1;
    void *hq = host_poison(es * (size_t)nq), *hk = host_poison(es * (size_t)nq), *hv = host_poison(es * (size_t)nv);
    void *hg = host_poison(es * (size_t)ng), *hb = host_poison(es * (size_t)nb);
    fill_rows(hq, dt, B, T, H * K, T * qs1, qs1, &r, -1, 1);
    fill_rows(hk, dt, B, T, H * K, T * qs1, qs1, &r, -1, 1);
    fill_rows(hv, dt, B, T, HV * V, T * vs1, vs1, &r, -1, 1);
    fill_rows(hg, dt, B, T, ch ? HV * K : HV, T * gs1, gs1, &r, s->graw_lo, s->graw_hi);
    fill_rows(hb, dt, B, T, HV, T * bs1, bs1, &r, -3, 3);
    float *alog = malloc(sizeof(float) * (size_t)HV), *dtb = malloc(sizeof(float) * (size_t)(HV * K));
    tu_fill(alog, HAE_F32, HV, &r, -3, 0.5);
    tu_fill(dtb, HAE_F32, HV * K, &r, -0.5, 0.5);
    const int64_t nst = N * HV * K * V;
    float *hs = malloc(sizeof(float) * (size_t)nst);
    tu_fill(hs, HAE_F32, nst, &r, -0.5, 0.5);

    pbuf pq = pb_new(hq, es * (size_t)nq), pk = pb_new(hk, es * (size_t)nq), pv = pb_new(hv, es * (size_t)nv);
    pbuf pg = pb_new(hg, es * (size_t)ng), pbt = pb_new(hb, es * (size_t)nb);
    pbuf pa = pb_new(alog, sizeof(float) * (size_t)HV), pd = pb_new(dtb, sizeof(float) * (size_t)(HV * K));
    pbuf ps = pb_new(hs, sizeof(float) * (size_t)nst), po = pb_poison(eo * (size_t)no);
    pbuf pc = pb_new(cu, sizeof(int32_t) * (size_t)(N + 1));

    const int64_t shq[4] = {B, T, H, K}, stq[4] = {T * qs1, qs1, K, 1};
    const int64_t shv[4] = {B, T, HV, V}, stv[4] = {T * vs1, vs1, V, 1}, sto[4] = {T * os1, os1, V, 1};
    const int64_t shg4[4] = {B, T, HV, K}, stg4[4] = {T * gs1, gs1, K, 1};
    const int64_t shg3[3] = {B, T, HV}, stg3[3] = {T * gs1, gs1, 1}, stb[3] = {T * bs1, bs1, 1};
    const int64_t sha[1] = {HV}, shd[1] = {ch ? HV * K : HV}, shs[4] = {N, HV, K, V}, shc[1] = {N + 1};
    hae_linear_attn_args arg[2];
    for (int side = 0; side < 2; side++) {
        const hae_device dev = side ? HAE_CUDA : HAE_CPU;
#define PTR(p) (side ? (p).g : (p).c)
        hae_linear_attn_args *a = &arg[side];
        memset(a, 0, sizeof *a);
        a->q = tv(PTR(pq), dt, dev, 4, shq, stq);
        a->k = tv(PTR(pk), dt, dev, 4, shq, stq);
        a->v = tv(PTR(pv), dt, dev, 4, shv, stv);
        a->g = ch ? tv(PTR(pg), dt, dev, 4, shg4, stg4) : tv(PTR(pg), dt, dev, 3, shg3, stg3);
        a->beta = tv(PTR(pbt), dt, dev, 3, shg3, stb);
        a->A_log = tv(PTR(pa), HAE_F32, dev, 1, sha, NULL);
        a->dt_bias = tv(PTR(pd), HAE_F32, dev, 1, shd, NULL);
        a->state = tv(PTR(ps), HAE_F32, dev, 4, shs, NULL);
        a->out = tv(PTR(po), s->out, dev, 4, shv, sto);
        a->cu_seqlens = s->nseq ? tv(PTR(pc), HAE_I32, dev, 1, shc, NULL) : tv(NULL, HAE_I32, dev, 1, shc, NULL);
        a->decay = vr->decay;
        a->delta = vr->delta;
        a->gate = s->gate;
        a->lower_bound = lb;
        a->qk_map = vr->map;
        a->scale = 1.0f / sqrtf((float)K);
        a->chunk = side ? chunk : 0;
#undef PTR
    }
    size_t wsb = 0;
    void *ws = NULL;
    hae_status st = hae_linear_attn_workspace(g_gpu, &arg[1], &wsb);
    cr_assert_eq(st, HAE_OK, "workspace query [%s]: %s", ctx, hae_last_error());
    if (wsb) cr_assert_eq(hae_backend_alloc(g_gpu, wsb, &ws), HAE_OK, "workspace of %zu bytes [%s]", wsb, ctx);
    arg[1].workspace = ws;
    arg[1].workspace_bytes = wsb;

    const bool f32out = s->out == HAE_F32, bf16chunk = chunk && s->in == HAE_BF16;
    const double tol_out = bf16chunk ? 5e-3 : f32out ? (chunk ? 1e-4 : 2e-5) : 2e-3;
    const double tol_state = bf16chunk ? 5e-3 : chunk ? 1e-4 : 2e-5;
    if (gpu_ran(hae_linear_attn(g_cpu, &arg[0]), "cpu", "linear_attn", ctx) &&
        gpu_ran(hae_linear_attn(g_gpu, &arg[1]), "cuda", "linear_attn", ctx) &&
        gpu_ran(hae_backend_sync(g_gpu), "cuda (sync after the op)", "linear_attn", ctx)) {
        pb_compare("linear_attn out", ctx, &po, s->out, tol_out);
        pb_compare("linear_attn state", ctx, &ps, HAE_F32, tol_state);
    }
    hae_backend_free(g_gpu, ws);
    pb_free(&pq), pb_free(&pk), pb_free(&pv), pb_free(&pg), pb_free(&pbt), pb_free(&pa), pb_free(&pd);
    pb_free(&ps), pb_free(&po), pb_free(&pc);
    free(hq), free(hk), free(hv), free(hg), free(hb), free(alog), free(dtb), free(hs);
}

#define SP HAE_GATE_SOFTPLUS
#define SAFE HAE_GATE_SAFE
#define F32 HAE_F32
#define BF16 HAE_BF16

/* Shapes every variant runs in both forms. */
static const lshape COMMON[] = {
    /* B, T, H, HV, K, V, in, out, gate, lb, graw, pad, varlen */
    {2, 65, 2, 4, 64, 64, F32, F32, SP, 0, -2, 2, 3, 0, {0}},
    {1, 200, 2, 4, 128, 128, BF16, BF16, SAFE, -5, -2, 2, 0, 0, {0}},
    {1, 0, 2, 4, 64, 128, F32, F32, SAFE, -5, -2, 2, 5, 5, {1, 64, 0, 100, 35}},
    {3, 63, 1, 1, 128, 64, BF16, F32, SP, 0, -2, 2, 2, 0, {0}},
};

Test(gpu_linear, variants) {
    uint64_t seed = 1000;
    for (int vi = 0; vi < N_VARIANTS; vi++)
        for (size_t si = 0; si < sizeof COMMON / sizeof COMMON[0]; si++)
            for (int form = 0; form < 2; form++) run_linear(&VARIANTS[vi], &COMMON[si], form ? 64 : 0, seed++);
}

/* Chunk boundaries, decode batches, GVA, K != V, varlen edge cases, both gates and dtypes. The chunked
 * form on bf16 computes the output inside its sequential kernel, in warp groups passing each chunk's
 * buffers along by named barriers: the 1000-token case turns its three buffers over five times (16
 * chunks), the second case runs 512 CTAs (several waves); f32 stores start states for a pass of its own.
 * bf16 outputs go four columns a store when their rows allow it (row pad 0 and 4), else in pairs (pad 2). */
Test(gpu_linear, shapes) {
    static const lshape cases[] = {
        {1, 1, 2, 4, 128, 128, F32, F32, SP, 0, -2, 2, 0, 0, {0}},
        {4, 1, 32, 32, 128, 128, BF16, BF16, SAFE, -5, -2, 2, 0, 0, {0}},
        {2, 63, 2, 2, 64, 64, F32, F32, SAFE, -5, -2, 2, 1, 0, {0}},
        {2, 64, 2, 4, 128, 128, F32, F32, SP, 0, -2, 2, 0, 0, {0}},
        {1, 65, 1, 4, 128, 64, BF16, BF16, SP, 0, -2, 2, 4, 0, {0}},
        {1, 200, 2, 2, 64, 128, F32, BF16, SAFE, -5, -2, 2, 0, 0, {0}},
        {1, 0, 2, 4, 128, 128, BF16, BF16, SAFE, -5, -2, 2, 0, 6, {0, 64, 1, 0, 129, 0}},
        {1, 0, 1, 2, 64, 64, F32, F32, SP, 0, -2, 2, 2, 4, {63, 65, 128, 2}},
        {1, 0, 2, 4, 128, 128, F32, F32, SP, 0, -2, 2, 0, 3, {0, 0, 70}},
        {1, 1000, 2, 4, 128, 128, BF16, BF16, SAFE, -5, -2, 2, 0, 0, {0}},
        {1, 130, 2, 4, 128, 128, BF16, BF16, SAFE, -5, -2, 2, 2, 0, {0}},
    };
    uint64_t seed = 2000;
    for (size_t si = 0; si < sizeof cases / sizeof cases[0]; si++)
        for (int vi = 0; vi < N_VARIANTS; vi += 3) /* kda, mamba2... a spread of variants */
            for (int form = 0; form < 2; form++) run_linear(&VARIANTS[vi], &cases[si], form ? 64 : 0, seed++);
}

/* Gates at their extremes: softplus with raw gate ~ +30 (decay ~e^-30 per token, and -1e4-like
 * cumulative gates in a chunk), safe lower bounds -5 and -1e-3, and -10 / -20 on both sides of the
 * CUDA chunked form's switch (diagonal blocks factored on the tensor cores down to -10, with factors
 * up to e^80; one exponential per term below). */
Test(gpu_linear, extreme_gates) {
    static const lshape cases[] = {
        {1, 130, 2, 4, 128, 128, F32, F32, SP, 0, 29, 31, 0, 0, {0}},
        {2, 70, 2, 2, 64, 64, BF16, BF16, SP, 0, 29, 31, 1, 0, {0}},
        {1, 130, 2, 4, 128, 128, F32, F32, SAFE, -5, 4, 6, 0, 0, {0}},
        {1, 130, 2, 4, 128, 128, F32, F32, SAFE, -10, 4, 6, 0, 0, {0}},
        {1, 130, 2, 2, 128, 128, BF16, BF16, SAFE, -10, 4, 6, 0, 0, {0}},
        {1, 130, 2, 4, 128, 128, F32, F32, SAFE, -20, 4, 6, 0, 0, {0}},
        {1, 130, 2, 4, 128, 128, F32, F32, SAFE, -1e-3f, -2, 2, 0, 0, {0}},
        {1, 200, 1, 2, 64, 128, F32, F32, SP, 0, -30, -20, 0, 0, {0}},
    };
    static const int vis[] = {0, 1, 3, 4}; /* kda, gdn, gla, mamba2: the gated variants */
    uint64_t seed = 3000;
    for (size_t si = 0; si < sizeof cases / sizeof cases[0]; si++)
        for (size_t v = 0; v < sizeof vis / sizeof vis[0]; v++)
            for (int form = 0; form < 2; form++) run_linear(&VARIANTS[vis[v]], &cases[si], form ? 64 : 0, seed++);
}

/* What the CUDA path does not implement says so instead of computing. */
Test(gpu_linear, unsupported) {
    const int64_t B = 1, T = 4, H = 1, K = 32, V = 64;
    float *buf = NULL;
    cr_assert_eq(hae_backend_alloc(g_gpu, sizeof(float) * 4096, (void **)&buf), HAE_OK);
    const int64_t shq[4] = {B, T, H, K}, shv[4] = {B, T, H, V}, shs[4] = {B, H, K, V};
    hae_linear_attn_args a;
    memset(&a, 0, sizeof a);
    a.q = hae_tensor_make(buf, HAE_F32, HAE_CUDA, 4, shq);
    a.k = a.q;
    a.v = hae_tensor_make(buf, HAE_F32, HAE_CUDA, 4, shv);
    a.out = hae_tensor_make(buf + 1024, HAE_F32, HAE_CUDA, 4, shv);
    a.state = hae_tensor_make(buf + 2048, HAE_F32, HAE_CUDA, 4, shs);
    a.decay = HAE_DECAY_NONE;
    a.scale = 0.125f;
    hae_status st = hae_linear_attn(g_gpu, &a);
    cr_expect_eq(st, HAE_ERR_UNSUPPORTED, "K 32 should be unsupported, got %s: %s", hae_status_name(st),
                 hae_last_error());
    cr_expect(strstr(hae_last_error(), "64 or 128") != NULL, "message: %s", hae_last_error());
    hae_backend_free(g_gpu, buf);
}

/* ---------------------------------------------------------------- conv_short */

Test(gpu_linear, conv_short) {
    static const struct {
        int64_t B, T, C, W, pad;
        hae_dtype in, out;
        bool silu;
    } cases[] = {
        {1, 1, 64, 4, 0, F32, F32, true},      {3, 2, 100, 4, 3, BF16, BF16, true}, {2, 3, 33, 4, 1, F32, BF16, false},
        {2, 200, 256, 4, 0, BF16, F32, true},  {1, 130, 4096, 4, 8, BF16, BF16, true}, {2, 5, 17, 1, 0, F32, F32, false},
        {1, 70, 64, 7, 2, F32, F32, true},     {4, 6, 48, 16, 0, F32, F32, false},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const int64_t B = cases[ci].B, T = cases[ci].T, C = cases[ci].C, W = cases[ci].W, pad = cases[ci].pad;
        const hae_dtype it = cases[ci].in, ot = cases[ci].out;
        const int64_t s1 = C + pad, s0 = T * s1;
        const uint64_t seed = 4000 + ci;
        char ctx[CTX_N];
        snprintf(ctx, sizeof ctx, "x [%lld, %lld, %lld] %s row pad %lld, W %lld, out %s, silu %d, seed %llu",
                 (long long)B, (long long)T, (long long)C, hae_dtype_name(it), (long long)pad, (long long)W,
                 hae_dtype_name(ot), (int)cases[ci].silu, (unsigned long long)seed);
        tu_rng r = tu_rng_make(seed);
        void *hx = host_poison(hae_dtype_size(it) * (size_t)(B * s0));
        fill_rows(hx, it, B, T, C, s0, s1, &r, -2, 2);
        float *hw = malloc(sizeof(float) * (size_t)(C * W)), *hs = malloc(sizeof(float) * (size_t)(B * (W - 1) * C + 1));
        tu_fill(hw, F32, C * W, &r, -1, 1);
        if (W > 1) tu_fill(hs, F32, B * (W - 1) * C, &r, -1, 1);
        pbuf px = pb_new(hx, hae_dtype_size(it) * (size_t)(B * s0)), pw = pb_new(hw, sizeof(float) * (size_t)(C * W));
        pbuf ps = pb_new(hs, sizeof(float) * (size_t)(B * (W - 1) * C)), po = pb_poison(hae_dtype_size(ot) * (size_t)(B * s0));
        const int64_t shx[3] = {B, T, C}, stx[3] = {s0, s1, 1}, shw[2] = {C, W}, shs[3] = {B, W - 1, C};
        hae_conv_short_args ac = {tv(px.c, it, HAE_CPU, 3, shx, stx), tv(pw.c, F32, HAE_CPU, 2, shw, NULL),
                                  tv(ps.c, F32, HAE_CPU, 3, shs, NULL), tv(po.c, ot, HAE_CPU, 3, shx, stx),
                                  cases[ci].silu};
        hae_conv_short_args ag = {tv(px.g, it, HAE_CUDA, 3, shx, stx), tv(pw.g, F32, HAE_CUDA, 2, shw, NULL),
                                  tv(ps.g, F32, HAE_CUDA, 3, shs, NULL), tv(po.g, ot, HAE_CUDA, 3, shx, stx),
                                  cases[ci].silu};
        /* twice: the second call continues the sequence from the state the first left */
        for (int call = 0; call < 2; call++) {
            if (!(gpu_ran(hae_conv_short(g_cpu, &ac), "cpu", "conv_short", ctx) &&
                  gpu_ran(hae_conv_short(g_gpu, &ag), "cuda", "conv_short", ctx) &&
                  gpu_ran(hae_backend_sync(g_gpu), "cuda (sync)", "conv_short", ctx)))
                break;
            pb_compare(call ? "conv_short out (second call)" : "conv_short out", ctx, &po, ot, ot == BF16 ? 2e-3 : 1e-5);
            pb_compare(call ? "conv_short state (second call)" : "conv_short state", ctx, &ps, F32, 1e-6);
        }
        pb_free(&px), pb_free(&pw), pb_free(&ps), pb_free(&po);
        free(hx), free(hw), free(hs);
    }
}

/* ---------------------------------------------------------------- gated_rmsnorm */

Test(gpu_linear, gated_rmsnorm) {
    static const struct {
        int64_t N, H, D, pad;
        hae_dtype x, gate, out;
    } cases[] = {
        {1, 1, 64, 0, F32, F32, F32},     {7, 4, 128, 3, BF16, BF16, BF16}, {33, 32, 128, 0, BF16, F32, F32},
        {5, 3, 100, 1, F32, BF16, BF16},  {2, 2, 33, 2, F32, F32, F32},     {300, 16, 128, 0, BF16, BF16, BF16},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const int64_t N = cases[ci].N, H = cases[ci].H, D = cases[ci].D, pad = cases[ci].pad;
        const hae_dtype xt = cases[ci].x, gt = cases[ci].gate, ot = cases[ci].out;
        const int64_t s0 = H * D + pad;
        const uint64_t seed = 5000 + ci;
        char ctx[CTX_N];
        snprintf(ctx, sizeof ctx, "x [%lld, %lld, %lld] %s, gate %s, out %s, row pad %lld, seed %llu", (long long)N,
                 (long long)H, (long long)D, hae_dtype_name(xt), hae_dtype_name(gt), hae_dtype_name(ot),
                 (long long)pad, (unsigned long long)seed);
        tu_rng r = tu_rng_make(seed);
        void *hx = host_poison(hae_dtype_size(xt) * (size_t)(N * s0)), *hg = host_poison(hae_dtype_size(gt) * (size_t)(N * s0));
        fill_rows(hx, xt, 1, N, H * D, 0, s0, &r, -2, 2);
        fill_rows(hg, gt, 1, N, H * D, 0, s0, &r, -4, 4);
        float *hw = malloc(sizeof(float) * (size_t)D);
        tu_fill(hw, F32, D, &r, 0.5, 1.5);
        pbuf px = pb_new(hx, hae_dtype_size(xt) * (size_t)(N * s0)), pg = pb_new(hg, hae_dtype_size(gt) * (size_t)(N * s0));
        pbuf pw = pb_new(hw, sizeof(float) * (size_t)D), po = pb_poison(hae_dtype_size(ot) * (size_t)(N * s0));
        const int64_t sh[3] = {N, H, D}, st[3] = {s0, D, 1}, shw[1] = {D};
        hae_gated_rmsnorm_args ac = {tv(px.c, xt, HAE_CPU, 3, sh, st), tv(pg.c, gt, HAE_CPU, 3, sh, st),
                                     tv(pw.c, F32, HAE_CPU, 1, shw, NULL), tv(po.c, ot, HAE_CPU, 3, sh, st), 1e-5f};
        hae_gated_rmsnorm_args ag = {tv(px.g, xt, HAE_CUDA, 3, sh, st), tv(pg.g, gt, HAE_CUDA, 3, sh, st),
                                     tv(pw.g, F32, HAE_CUDA, 1, shw, NULL), tv(po.g, ot, HAE_CUDA, 3, sh, st), 1e-5f};
        if (gpu_ran(hae_gated_rmsnorm(g_cpu, &ac), "cpu", "gated_rmsnorm", ctx) &&
            gpu_ran(hae_gated_rmsnorm(g_gpu, &ag), "cuda", "gated_rmsnorm", ctx) &&
            gpu_ran(hae_backend_sync(g_gpu), "cuda (sync)", "gated_rmsnorm", ctx))
            pb_compare("gated_rmsnorm out", ctx, &po, ot, ot == BF16 ? 2e-3 : 1e-5);
        pb_free(&px), pb_free(&pg), pb_free(&pw), pb_free(&po);
        free(hx), free(hg), free(hw);
    }
}

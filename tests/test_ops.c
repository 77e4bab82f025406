/* Dense ops on the CPU backend vs float64 oracles, plus the errors a caller can provoke. */
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static hae_backend *be;
static void setup(void) { be = tu_cpu(); }
static void teardown(void) { hae_backend_destroy(be); }
TestSuite(ops, .init = setup, .fini = teardown);

static void *alloc_fill(hae_dtype dt, int64_t n, tu_rng *r, double lo, double hi) {
    void *p = malloc((size_t)n * hae_dtype_size(dt) + 1);
    tu_fill(p, dt, n, r, lo, hi);
    return p;
}

/* ---------------------------------------------------------------- conversions */

Test(ops, bf16_rounding) {
    cr_expect_eq(hae_f32_to_bf16(1.0f), 0x3f80);
    cr_expect_eq(hae_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80, "a tie rounds to even (down)");
    cr_expect_eq(hae_f32_to_bf16(1.0f + 0x1p-7f + 0x1p-8f), 0x3f82, "a tie rounds to even (up)");
    cr_expect_eq(hae_f32_to_bf16(-2.5f), 0xc020);
    cr_expect(isnan(hae_bf16_to_f32(hae_f32_to_bf16(NAN))));
    cr_expect(isinf(hae_bf16_to_f32(hae_f32_to_bf16(INFINITY))));
    cr_expect_eq(hae_bf16_to_f32(hae_f32_to_bf16(3.140625f)), 3.140625f);
}

Test(ops, f16_and_fp8_values) {
    cr_expect_eq(hae_f32_to_f16(1.0f), 0x3c00);
    cr_expect_eq(hae_f32_to_f16(65504.0f), 0x7bff);
    cr_expect_eq(hae_f32_to_f16(1e6f), 0x7c00, "overflow goes to inf");
    cr_expect_eq(hae_f16_to_f32(0x0001), 0x1p-24f, "smallest subnormal");
    cr_expect_eq(hae_f16_to_f32(hae_f32_to_f16(0x1p-24f)), 0x1p-24f);
    cr_expect_eq(hae_f32_to_fp8e4m3(1.0f), 0x38);
    cr_expect_eq(hae_f32_to_fp8e4m3(448.0f), 0x7e);
    cr_expect_eq(hae_f32_to_fp8e4m3(1e4f), 0x7e, "e4m3fn saturates to 448");
    cr_expect_eq(hae_f32_to_fp8e4m3(-1e4f), 0xfe);
    cr_expect_eq(hae_fp8e4m3_to_f32(0x01), 0x1p-9f, "smallest subnormal");
    cr_expect_eq(hae_f32_to_fp8e4m3(1.0625f), 0x38, "a tie rounds to even");
    cr_expect_eq(hae_f32_to_fp8e4m3(1.1875f), 0x3a, "a tie rounds to even (up)");
    cr_expect(isnan(hae_fp8e4m3_to_f32(hae_f32_to_fp8e4m3(NAN))));
    /* every e4m3 value converts back to itself */
    for (int b = 0; b < 256; b++) {
        float v = hae_fp8e4m3_to_f32((uint8_t)b);
        if (isnan(v)) continue;
        uint8_t back = hae_f32_to_fp8e4m3(v);
        cr_expect(back == b || (v == 0.0f && (back & 0x7f) == 0), "e4m3 0x%02x -> %g -> 0x%02x", b, v, back);
    }
}

Test(ops, convert_roundtrip) {
    tu_rng r = tu_rng_make(11);
    int64_t n = 70001;
    float *src = alloc_fill(HAE_F32, n, &r, -300, 300);
    uint16_t *mid = malloc(sizeof(uint16_t) * (size_t)n);
    float *back = malloc(sizeof(float) * (size_t)n);
    hae_tensor ts = hae_tensor_1d(src, HAE_F32, HAE_CPU, n), tm = hae_tensor_1d(mid, HAE_BF16, HAE_CPU, n),
               tb = hae_tensor_1d(back, HAE_F32, HAE_CPU, n);
    cr_assert_eq(hae_convert(be, &ts, &tm), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(hae_convert(be, &tm, &tb), HAE_OK, "%s", hae_last_error());
    for (int64_t i = 0; i < n; i++) {
        cr_assert_eq(mid[i], hae_f32_to_bf16(src[i]), "element %lld", (long long)i);
        cr_assert_leq(fabsf(back[i] - src[i]), fabsf(src[i]) * 0x1p-8f, "element %lld", (long long)i);
    }
    free(src), free(mid), free(back);
}

/* ---------------------------------------------------------------- embedding */

Test(ops, embedding) {
    tu_rng r = tu_rng_make(1);
    hae_dtype dts[] = {HAE_F32, HAE_BF16};
    for (int k = 0; k < 2; k++) {
        int64_t V = 50, D = 24, N = 37;
        void *table = alloc_fill(dts[k], V * D, &r, -1, 1);
        int32_t *ids = malloc(sizeof(int32_t) * N);
        for (int64_t i = 0; i < N; i++) ids[i] = (int32_t)tu_uniform(&r, 0, (double)V);
        ids[0] = 0, ids[1] = (int32_t)V - 1;
        float *out = malloc(sizeof(float) * (size_t)(N * D));
        hae_embedding_args a = {.ids = hae_tensor_1d(ids, HAE_I32, HAE_CPU, N),
                                .table = hae_tensor_2d(table, dts[k], HAE_CPU, V, D),
                                .out = hae_tensor_2d(out, HAE_F32, HAE_CPU, N, D)};
        cr_assert_eq(hae_embedding(be, &a), HAE_OK, "%s", hae_last_error());
        for (int64_t i = 0; i < N; i++)
            for (int64_t d = 0; d < D; d++)
                cr_assert_eq((double)out[i * D + d], tu_get(table, dts[k], ids[i] * D + d), "%s row %lld",
                             hae_dtype_name(dts[k]), (long long)i);
        ids[5] = (int32_t)V;
        cr_expect_eq(hae_embedding(be, &a), HAE_ERR_INVALID);
        cr_expect(strstr(hae_last_error(), "outside the vocabulary"), "%s", hae_last_error());
        ids[5] = -1;
        cr_expect_eq(hae_embedding(be, &a), HAE_ERR_INVALID);
        free(table), free(ids), free(out);
    }
}

/* ---------------------------------------------------------------- rmsnorm */

/* RMSNorm, and LayerNorm (center) with and without a bias; rows offset by +2 so centring matters. */
Test(ops, rmsnorm) {
    tu_rng r = tu_rng_make(2);
    int64_t shapes[][2] = {{1, 1}, {3, 7}, {17, 256}, {5, 2049}};
    hae_dtype outs[] = {HAE_F32, HAE_BF16};
    for (int s = 0; s < 4; s++)
        for (int k = 0; k < 2; k++)
            for (int form = 0; form < 3; form++) {
                const bool center = form > 0, with_bias = form == 2;
                int64_t N = shapes[s][0], D = shapes[s][1];
                float *x = alloc_fill(HAE_F32, N * D, &r, -1, 5), *w = alloc_fill(HAE_F32, D, &r, 0.5, 1.5);
                float *bias = alloc_fill(HAE_F32, D, &r, -1, 1);
                void *out = malloc((size_t)(N * D) * 4);
                double *ref = malloc(sizeof(double) * (size_t)(N * D));
                float eps = 1e-5f;
                for (int64_t i = 0; i < N; i++) {
                    double mu = 0, ss = 0;
                    for (int64_t d = 0; d < D && center; d++) mu += x[i * D + d] / (double)D;
                    for (int64_t d = 0; d < D; d++) ss += (x[i * D + d] - mu) * (x[i * D + d] - mu);
                    double rr = 1.0 / sqrt(ss / (double)D + eps);
                    for (int64_t d = 0; d < D; d++)
                        ref[i * D + d] = (x[i * D + d] - mu) * rr * w[d] + (with_bias ? bias[d] : 0.0);
                }
                hae_rmsnorm_args a = {.x = hae_tensor_2d(x, HAE_F32, HAE_CPU, N, D),
                                      .weight = hae_tensor_1d(w, HAE_F32, HAE_CPU, D),
                                      .out = hae_tensor_2d(out, outs[k], HAE_CPU, N, D), .eps = eps,
                                      .bias = hae_tensor_1d(with_bias ? bias : NULL, HAE_F32, HAE_CPU, D),
                                      .center = center};
                cr_assert_eq(hae_rmsnorm(be, &a), HAE_OK, "%s", hae_last_error());
                char why[256];
                bool f32 = outs[k] == HAE_F32;
                cr_expect(tu_close(out, outs[k], ref, N * D, f32 ? 1e-6 : 4e-3, 1e-6, f32 ? 1e-5 : 8e-3, why, sizeof why),
                          "%s [%lld, %lld] -> %s: %s", form == 0 ? "rmsnorm" : form == 1 ? "layernorm" : "layernorm+bias",
                          (long long)N, (long long)D, hae_dtype_name(outs[k]), why);
                free(x), free(w), free(bias), free(out), free(ref);
            }
}

/* ---------------------------------------------------------------- gemm */

typedef struct {
    int64_t M, N, K, lda_pad;
    hae_dtype dt, out;
    bool accumulate;
} gemm_case;

static void check_gemm(const gemm_case *g, tu_rng *r) {
    int64_t lda = g->K + g->lda_pad;
    void *A = alloc_fill(g->dt, g->M * lda, r, -1, 1), *B = alloc_fill(g->dt, g->N * g->K, r, -1, 1);
    void *C = alloc_fill(g->out, g->M * g->N, r, -1, 1);
    double *ref = malloc(sizeof(double) * (size_t)(g->M * g->N + 1));
    for (int64_t i = 0; i < g->M; i++)
        for (int64_t j = 0; j < g->N; j++) {
            double s = g->accumulate ? tu_get(C, g->out, i * g->N + j) : 0.0;
            for (int64_t k = 0; k < g->K; k++) s += tu_get(A, g->dt, i * lda + k) * tu_get(B, g->dt, j * g->K + k);
            ref[i * g->N + j] = s;
        }
    hae_gemm_args a = {.a = hae_tensor_2d(A, g->dt, HAE_CPU, g->M, g->K),
                       .b = hae_tensor_2d(B, g->dt, HAE_CPU, g->N, g->K),
                       .c = hae_tensor_2d(C, g->out, HAE_CPU, g->M, g->N),
                       .accumulate = g->accumulate};
    a.a.stride[0] = lda;
    cr_assert_eq(hae_gemm(be, &a), HAE_OK, "%s", hae_last_error());
    char why[256];
    bool f32 = g->out == HAE_F32;
    double tol = f32 ? 1e-6 * sqrt((double)g->K) : 4e-3;
    cr_expect(tu_close(C, g->out, ref, g->M * g->N, tol, 1e-5 * sqrt((double)g->K), f32 ? 1e-4 : 8e-3, why, sizeof why),
              "gemm M=%lld N=%lld K=%lld lda=%lld %s->%s acc=%d: %s", (long long)g->M, (long long)g->N,
              (long long)g->K, (long long)lda, hae_dtype_name(g->dt), hae_dtype_name(g->out), g->accumulate, why);
    free(A), free(B), free(C), free(ref);
}

Test(ops, gemm) {
    tu_rng r = tu_rng_make(3);
    const gemm_case cases[] = {
        {1, 1, 1, 0, HAE_F32, HAE_F32, false},      {7, 33, 65, 0, HAE_F32, HAE_F32, false},
        {64, 64, 256, 0, HAE_F32, HAE_F32, false},  {130, 70, 300, 3, HAE_F32, HAE_F32, true},
        {5, 129, 513, 0, HAE_BF16, HAE_F32, false}, {66, 65, 257, 8, HAE_BF16, HAE_BF16, false},
        {3, 200, 40, 0, HAE_BF16, HAE_F32, true},   {1, 512, 256, 0, HAE_BF16, HAE_F32, false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_gemm(&cases[i], &r);
}

/* A batch of products: a shared (stride 0) or stacked, b stacked, the c_i side by side in c's rows
 * with a gap of untouched sentinels, or stacked; each against the float64 product of its operands. */
Test(ops, gemm_batched) {
    tu_rng r = tu_rng_make(31);
    const int64_t M = 6, N = 5, K = 9, nb = 4;
    for (int form = 0; form < 2; form++) {
        const bool beside = form == 0;
        const int64_t ldc = beside ? nb * (N + 2) : N, sc = beside ? N + 2 : M * N, sa = beside ? 0 : M * K;
        float *A = alloc_fill(HAE_F32, nb * M * K, &r, -1, 1), *B = alloc_fill(HAE_F32, nb * N * K, &r, -1, 1);
        float *C = malloc(sizeof(float) * (size_t)(nb * M * ldc));
        for (int64_t i = 0; i < nb * M * ldc; i++) C[i] = 1234.5f;
        hae_gemm_args g = {.a = hae_tensor_2d(A, HAE_F32, HAE_CPU, M, K), .b = hae_tensor_2d(B, HAE_F32, HAE_CPU, N, K),
                           .c = hae_tensor_2d(C, HAE_F32, HAE_CPU, M, N), .batch = nb, .stride_a = sa,
                           .stride_b = N * K, .stride_c = sc};
        g.c.stride[0] = ldc;
        cr_assert_eq(hae_gemm(be, &g), HAE_OK, "%s", hae_last_error());
        int64_t bad = 0, written = 0;
        for (int64_t p = 0; p < nb; p++)
            for (int64_t i = 0; i < M; i++)
                for (int64_t j = 0; j < N; j++) {
                    double ref = 0;
                    for (int64_t k = 0; k < K; k++) ref += (double)A[p * sa + i * K + k] * B[(p * N + j) * K + k];
                    bad += fabs(C[p * sc + i * ldc + j] - ref) > 1e-5;
                    written++;
                }
        int64_t untouched = 0;
        for (int64_t i = 0; i < nb * M * ldc; i++) untouched += C[i] == 1234.5f;
        cr_expect_eq(bad, 0, "%s: %lld of %lld batched products wrong", beside ? "side by side" : "stacked",
                     (long long)bad, (long long)written);
        cr_expect_eq(untouched, nb * M * ldc - written, "%s: a product wrote outside its block",
                     beside ? "side by side" : "stacked");
        free(A), free(B), free(C);
    }
}

Test(ops, gemm_rejects_bad_shapes) {
    float a[12], b[12], c[12];
    hae_gemm_args g = {.a = hae_tensor_2d(a, HAE_F32, HAE_CPU, 3, 4), .b = hae_tensor_2d(b, HAE_F32, HAE_CPU, 3, 3),
                       .c = hae_tensor_2d(c, HAE_F32, HAE_CPU, 3, 3)};
    cr_expect_eq(hae_gemm(be, &g), HAE_ERR_INVALID);
    cr_expect(strstr(hae_last_error(), "[3, 4] f32 cpu") && strstr(hae_last_error(), "[3, 3] f32 cpu"), "%s",
              hae_last_error());
    g.b = hae_tensor_2d(b, HAE_BF16, HAE_CPU, 3, 4);
    cr_expect_eq(hae_gemm(be, &g), HAE_ERR_INVALID, "mixed operand dtypes");
    g.b = hae_tensor_2d(b, HAE_F32, HAE_CPU, 3, 4);
    g.c = hae_tensor_2d(c, HAE_BF16, HAE_CPU, 3, 3);
    g.accumulate = true;
    cr_expect_eq(hae_gemm(be, &g), HAE_ERR_INVALID, "accumulating into bf16");
    g.accumulate = false;
    g.c = hae_tensor_2d(c, HAE_F32, HAE_CUDA, 3, 3);
    cr_expect_eq(hae_gemm(be, &g), HAE_ERR_INVALID);
    cr_expect(strstr(hae_last_error(), "lives on cuda"), "%s", hae_last_error());
    g.c = hae_tensor_2d(NULL, HAE_F32, HAE_CPU, 3, 3);
    cr_expect_eq(hae_gemm(be, &g), HAE_ERR_INVALID);
    cr_expect(strstr(hae_last_error(), "NULL"), "%s", hae_last_error());
    g.c = hae_tensor_2d(c, HAE_F32, HAE_CPU, 3, 3);
    g.c.stride[1] = 2;
    cr_expect_eq(hae_gemm(be, &g), HAE_ERR_INVALID);
    cr_expect(strstr(hae_last_error(), "innermost stride"), "%s", hae_last_error());
    g.c = hae_tensor_3d(c, HAE_F32, HAE_CPU, 1, 3, 3);
    cr_expect_eq(hae_gemm(be, &g), HAE_ERR_INVALID);
    cr_expect(strstr(hae_last_error(), "expected 2 dims"), "%s", hae_last_error());
    g.c = hae_tensor_2d(c, HAE_F32, HAE_CPU, 3, 3);
    g.batch = 2, g.stride_c = 2; /* the second product's c starts inside the first's */
    cr_expect_eq(hae_gemm(be, &g), HAE_ERR_INVALID);
    cr_expect(strstr(hae_last_error(), "2 products of c [3, 3] (row stride 3) 2 elements apart overlap"), "%s",
              hae_last_error());
    g.stride_c = -9;
    cr_expect_eq(hae_gemm(be, &g), HAE_ERR_INVALID);
    cr_expect(strstr(hae_last_error(), "must be >= 0"), "%s", hae_last_error());
}

/* ---------------------------------------------------------------- swiglu */

Test(ops, swiglu) {
    tu_rng r = tu_rng_make(4);
    hae_dtype dts[] = {HAE_F32, HAE_BF16};
    for (int k = 0; k < 2; k++) {
        int64_t N = 9, F = 77;
        void *gu = alloc_fill(dts[k], N * 2 * F, &r, -6, 6);
        void *out = malloc((size_t)(N * F) * 4);
        double *ref = malloc(sizeof(double) * (size_t)(N * F));
        for (int64_t i = 0; i < N; i++)
            for (int64_t f = 0; f < F; f++) {
                double g = tu_get(gu, dts[k], i * 2 * F + f), u = tu_get(gu, dts[k], i * 2 * F + F + f);
                ref[i * F + f] = g / (1.0 + exp(-g)) * u;
            }
        hae_swiglu_args a = {.gate_up = hae_tensor_2d(gu, dts[k], HAE_CPU, N, 2 * F),
                             .out = hae_tensor_2d(out, dts[k], HAE_CPU, N, F)};
        cr_assert_eq(hae_swiglu(be, &a), HAE_OK, "%s", hae_last_error());
        char why[256];
        bool f32 = dts[k] == HAE_F32;
        cr_expect(tu_close(out, dts[k], ref, N * F, f32 ? 1e-6 : 4e-3, 1e-6, f32 ? 1e-5 : 8e-3, why, sizeof why),
                  "swiglu %s: %s", hae_dtype_name(dts[k]), why);
        a.out = hae_tensor_2d(out, dts[k], HAE_CPU, N, F + 1);
        cr_expect_eq(hae_swiglu(be, &a), HAE_ERR_INVALID);
        free(gu), free(out), free(ref);
    }
}

/* ---------------------------------------------------------------- rope */

Test(ops, rope) {
    tu_rng r = tu_rng_make(5);
    struct {
        int64_t B, T, H, D;
        int rot;
        int64_t pos0;
        hae_dtype dt;
        int off;
    } cases[] = {{2, 5, 3, 16, 16, 0, HAE_F32, 0},    {1, 9, 2, 64, 32, 1000, HAE_F32, 0},
                 {2, 3, 4, 128, 128, 77, HAE_BF16, 0}, {1, 4, 1, 8, 0, 3, HAE_F32, 0},
                 {2, 3, 2, 40, 8, 50, HAE_F32, 32} /* mla: the rope dims after the latent */};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int64_t B = cases[c].B, T = cases[c].T, H = cases[c].H, D = cases[c].D, n = B * T * H * D;
        int rot = cases[c].rot;
        hae_dtype dt = cases[c].dt;
        float theta = 10000.0f;
        void *x = alloc_fill(dt, n, &r, -2, 2);
        double *ref = malloc(sizeof(double) * (size_t)n);
        for (int64_t i = 0; i < n; i++) ref[i] = tu_get(x, dt, i);
        for (int64_t b = 0; b < B; b++)
            for (int64_t t = 0; t < T; t++)
                for (int64_t h = 0; h < H; h++) {
                    double *v = ref + ((b * T + t) * H + h) * D + cases[c].off;
                    for (int i = 0; i < rot / 2; i++) {
                        double ang = (double)(cases[c].pos0 + t) * pow(theta, -2.0 * i / rot);
                        double x1 = v[i], x2 = v[i + rot / 2];
                        v[i] = x1 * cos(ang) - x2 * sin(ang);
                        v[i + rot / 2] = x2 * cos(ang) + x1 * sin(ang);
                    }
                }
        hae_rope_args a = {.x = hae_tensor_4d(x, dt, HAE_CPU, B, T, H, D), .pos0 = cases[c].pos0, .rot_dims = rot,
                           .rot_offset = cases[c].off, .theta = theta};
        cr_assert_eq(hae_rope(be, &a), HAE_OK, "%s", hae_last_error());
        char why[256];
        bool f32 = dt == HAE_F32;
        /* fp32 angles (as Hugging Face computes them) lose ~pos * 2^-24 radians */
        double abs_tol = f32 ? 4e-7 * (double)(cases[c].pos0 + T + 1) : 2e-2;
        cr_expect(tu_close(x, dt, ref, n, f32 ? 1e-5 : 5e-3, abs_tol, f32 ? 1e-6 : 8e-3, why, sizeof why),
                  "rope case %zu [%lld,%lld,%lld,%lld] rot %d pos0 %lld %s: %s", c, (long long)B, (long long)T,
                  (long long)H, (long long)D, rot, (long long)cases[c].pos0, hae_dtype_name(dt), why);
        free(x), free(ref);
    }
    float buf[16];
    hae_rope_args bad = {.x = hae_tensor_4d(buf, HAE_F32, HAE_CPU, 1, 1, 2, 8), .rot_dims = 3, .theta = 1e4f};
    cr_expect_eq(hae_rope(be, &bad), HAE_ERR_INVALID);
    cr_expect(strstr(hae_last_error(), "rot_dims 3"), "%s", hae_last_error());
    bad.rot_dims = 10;
    cr_expect_eq(hae_rope(be, &bad), HAE_ERR_INVALID);
    bad.rot_dims = 4, bad.rot_offset = 6; /* dims 6..9 of 8 */
    cr_expect_eq(hae_rope(be, &bad), HAE_ERR_INVALID);
    cr_expect(strstr(hae_last_error(), "rot_offset 6"), "%s", hae_last_error());
    bad.rot_offset = -2;
    cr_expect_eq(hae_rope(be, &bad), HAE_ERR_INVALID);
}

/* ---------------------------------------------------------------- sampling */

Test(ops, sample_greedy_ties_and_nan) {
    float logits[2][6] = {{0.5f, 2.0f, -1.0f, 2.0f, 1.0f, 0.0f}, {NAN, -INFINITY, 3.0f, 3.0f, 3.0f, NAN}};
    int32_t out[2] = {-7, -7};
    hae_sample_args a = {.logits = hae_tensor_2d(logits, HAE_F32, HAE_CPU, 2, 6),
                         .out = hae_tensor_1d(out, HAE_I32, HAE_CPU, 2)};
    cr_assert_eq(hae_sample(be, &a), HAE_OK, "%s", hae_last_error());
    cr_expect_eq(out[0], 1, "ties go to the lowest index");
    cr_expect_eq(out[1], 2, "NaN never wins");
    a.temperature = -1.0f;
    cr_expect_eq(hae_sample(be, &a), HAE_ERR_INVALID);
}

Test(ops, sample_temperature_matches_softmax) {
    /* Gumbel-max over 40000 steps: every token's frequency within 4 sigma of softmax(logits / T). */
    float logits[5] = {1.0f, 0.0f, -0.5f, 2.0f, 0.3f};
    float T = 0.7f;
    double p[5], z = 0;
    for (int i = 0; i < 5; i++) z += p[i] = exp(logits[i] / T);
    int count[5] = {0};
    int steps = 40000;
    int32_t out;
    hae_sample_args a = {.logits = hae_tensor_2d(logits, HAE_F32, HAE_CPU, 1, 5), .out = hae_tensor_1d(&out, HAE_I32, HAE_CPU, 1),
                         .temperature = T, .seed = 99};
    for (int s = 0; s < steps; s++) {
        a.step = (uint64_t)s;
        cr_assert_eq(hae_sample(be, &a), HAE_OK);
        cr_assert(out >= 0 && out < 5);
        count[out]++;
    }
    for (int i = 0; i < 5; i++) {
        double q = p[i] / z, f = (double)count[i] / steps, sigma = sqrt(q * (1 - q) / steps);
        cr_expect(fabs(f - q) < 4 * sigma, "token %d: frequency %.4f vs probability %.4f", i, f, q);
    }
    /* same seed and step: same token */
    a.step = 12345;
    int32_t first;
    hae_sample(be, &a);
    first = out;
    hae_sample(be, &a);
    cr_expect_eq(out, first);
}

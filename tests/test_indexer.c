/* The FP8 lightning indexer (indexer/) on the CPU against float64 oracles written here from hae.h's
 * contracts, independently of the implementation: e4m3 quantisation (power-of-two scales, the
 * nearest code, round trips, zero and non-finite blocks, bf16 and strided rows), the Hadamard
 * rotation (Sylvester's matrix, orthonormality, involution, outliers), the paged key cache's write
 * and the logits (shuffled pages, prefill and decode, causal masking, keys past the position never
 * read), top-k (ties, short rows, -inf and NaN, 128K rows), the argument checks and the CUDA logits'
 * key splits (host arithmetic). */
#include "internal.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static hae_backend *be;
static void setup(void) { be = tu_cpu(); }
static void teardown(void) { hae_backend_destroy(be); }
TestSuite(indexer, .init = setup, .fini = teardown);

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    cr_assert(p, "out of memory (%zu bytes)", n);
    return p;
}

/* A strided 2-d view: n rows of `cols` elements, row i at data + i * row_stride elements. */
static hae_tensor view2(void *data, hae_dtype dt, int64_t n, int64_t cols, int64_t row_stride) {
    hae_tensor t = hae_tensor_2d(data, dt, HAE_CPU, n, cols);
    t.stride[0] = row_stride;
    return t;
}

/* Element i of an f32 or bf16 buffer. */
static void put(void *x, hae_dtype dt, int64_t i, float v) {
    if (dt == HAE_F32) ((float *)x)[i] = v;
    else ((uint16_t *)x)[i] = hae_f32_to_bf16(v);
}

static bool bytes_all(const void *p, size_t n, unsigned char v) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != v) return false;
    return true;
}

/* ---------------------------------------------------------------- e4m3 in float64 */

/* e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa bits; S.1111.111 is NaN, no infinity. */
static double e4m3(uint8_t b) {
    int e = (b >> 3) & 15, m = b & 7;
    if (e == 15 && m == 7) return NAN;
    double v = e ? ldexp(1.0 + m / 8.0, e - 7) : ldexp(m, -9);
    return b & 0x80 ? -v : v;
}

/* The code of the e4m3 value nearest y (|y| <= 448); halfway goes to the even code. Positive
 * codes 0..126 increase with their value, so neighbours differ by one code. */
static uint8_t e4m3_nearest(double y) {
    double a = fabs(y), bd = INFINITY;
    int best = 0;
    for (int c = 0; c < 0x7f; c++) {
        double d = fabs(e4m3((uint8_t)c) - a);
        if (d < bd || (d == bd && !(c & 1))) bd = d, best = c;
    }
    return (uint8_t)(signbit(y) ? best | 0x80 : best);
}

/* ---------------------------------------------------------------- fp8_quant */

/* The header's scale: the smallest power of two with amax / scale <= 448 (a normal float, so at
 * least 2^-126), 1 for an all-zero block. */
static double scale_oracle(double amax) {
    if (amax == 0) return 1;
    int e = -126;
    while (amax / ldexp(1, e) > 448) e++;
    return ldexp(1, e);
}

/* Quantises N rows of D values of x (dtype dt, row strides xs, qs, ss) and checks every scale and
 * code against the oracle, and the gaps between strided rows stay untouched. */
static void quant_check(const char *what, const void *x, hae_dtype dt, int64_t N, int64_t D, int64_t xs, int64_t qs,
                        int64_t ss) {
    const int64_t nb = D / 128;
    uint8_t *q = xmalloc((size_t)(N * qs));
    float *sc = xmalloc(sizeof(float) * (size_t)(N * ss));
    memset(q, 0xa5, (size_t)(N * qs));
    memset(sc, 0xa5, sizeof(float) * (size_t)(N * ss));
    hae_fp8_quant_args a = {.x = view2((void *)x, dt, N, D, xs), .q = view2(q, HAE_FP8_E4M3, N, D, qs),
                            .scale = view2(sc, HAE_F32, N, nb, ss)};
    cr_assert_eq(hae_fp8_quant(be, &a), HAE_OK, "%s: x [%lld, %lld] %s: %s", what, (long long)N, (long long)D,
                 hae_dtype_name(dt), hae_last_error());
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < nb; c++) {
            double amax = 0;
            for (int64_t i = c * 128; i < (c + 1) * 128; i++) amax = fmax(amax, fabs(tu_get(x, dt, n * xs + i)));
            const double s = scale_oracle(amax), got_s = sc[n * ss + c];
            cr_assert_eq(got_s, s, "%s: x [%lld, %lld] %s, row %lld block %lld: scale %a, expected %a (amax %g)", what,
                         (long long)N, (long long)D, hae_dtype_name(dt), (long long)n, (long long)c, got_s, s, amax);
            for (int64_t i = c * 128; i < (c + 1) * 128; i++) {
                const double xv = tu_get(x, dt, n * xs + i), y = xv / s; /* exact: s is a power of two */
                const uint8_t got = q[n * qs + i], want = e4m3_nearest(y);
                const double deq = e4m3(got) * s, half_ulp = fabs(y) >= 0x1p-6 ? 0x1p-4 * fabs(xv) : 0x1p-10 * s;
                cr_assert(got == want && fabs(deq - xv) <= half_ulp,
                          "%s: x [%lld, %lld] %s, element (%lld, %lld): x %.9g / scale %a = %.9g gave code 0x%02x (%g), "
                          "nearest is 0x%02x (%g); |dequantised - x| = %g, half an ulp %g",
                          what, (long long)N, (long long)D, hae_dtype_name(dt), (long long)n, (long long)i, xv, s, y,
                          got, e4m3(got), want, e4m3(want), fabs(deq - xv), half_ulp);
            }
        }
    for (int64_t n = 0; n < N; n++)
        cr_assert(bytes_all(q + n * qs + D, (size_t)(qs - D), 0xa5) &&
                      bytes_all(sc + n * ss + nb, sizeof(float) * (size_t)(ss - nb), 0xa5),
                  "%s: x [%lld, %lld]: bytes between the rows of q or scale were written", what, (long long)N, (long long)D);
    free(q), free(sc);
}

/* Normal values with a per-row magnitude spread over 2^-20 .. 2^20. */
static void fill_spread(void *x, hae_dtype dt, int64_t N, int64_t D, int64_t xs, tu_rng *r) {
    for (int64_t n = 0; n < N; n++) {
        const double mag = ldexp(1.0, (int)tu_uniform(r, -20, 20));
        for (int64_t i = 0; i < D; i++) put(x, dt, n * xs + i, (float)(tu_normal(r) * mag));
    }
}

Test(indexer, fp8_quant_random_rows_f32_bf16_strided) {
    const int64_t Ds[] = {128, 256, 512};
    const hae_dtype dts[] = {HAE_F32, HAE_BF16};
    for (int di = 0; di < 3; di++)
        for (int ti = 0; ti < 2; ti++)
            for (int strided = 0; strided < 2; strided++) {
                const int64_t N = 9, D = Ds[di], xs = D + (strided ? 37 : 0);
                tu_rng r = tu_rng_make(100 + (uint64_t)(di * 4 + ti * 2 + strided));
                void *x = xmalloc((size_t)(N * xs) * hae_dtype_size(dts[ti]));
                memset(x, 0, (size_t)(N * xs) * hae_dtype_size(dts[ti]));
                fill_spread(x, dts[ti], N, D, xs, &r);
                quant_check(strided ? "random, strided rows" : "random", x, dts[ti], N, D, xs, D + (strided ? 5 : 0),
                            D / 128 + (strided ? 3 : 0));
                free(x);
            }
}

/* One row whose blocks span the whole fp32 range: tiny, normal, huge, exactly 448 and just above,
 * all zero, a subnormal block (scale floored at 2^-126) and a block next to FLT_MAX. */
Test(indexer, fp8_quant_blocks_of_very_different_magnitudes) {
    const double mags[] = {1e-3, 1e3, 1e-30, 448, 449, 0, 1e-42, 3e38, 1.0, 7e-5};
    const int64_t nb = 10, D = nb * 128;
    float *x = xmalloc(sizeof(float) * (size_t)D);
    tu_rng r = tu_rng_make(200);
    for (int64_t c = 0; c < nb; c++)
        for (int64_t i = 0; i < 128; i++) {
            double v = mags[c] == 448 || mags[c] == 449 ? (i == 17 ? mags[c] : tu_uniform(&r, -448, 448))
                                                        : mags[c] * tu_uniform(&r, -1, 1);
            if (mags[c] == 3e38 && i == 3) v = 3.4028234663852886e38; /* FLT_MAX */
            x[c * 128 + i] = (float)v;
        }
    quant_check("blocks of very different magnitudes", x, HAE_F32, 1, D, D, D, nb);
    free(x);
}

/* e4m3 values times a power of two come back exactly (the scale never exceeds that power), and an
 * all-zero block gives scale 1 and zero codes. */
Test(indexer, fp8_quant_round_trip_and_zero_blocks) {
    const int64_t N = 6, D = 256;
    float *x = xmalloc(sizeof(float) * (size_t)(N * D));
    uint8_t *q = xmalloc((size_t)(N * D));
    float *sc = xmalloc(sizeof(float) * (size_t)(N * 2));
    tu_rng r = tu_rng_make(300);
    for (int64_t n = 0; n < N; n++) {
        const int j = (int)tu_uniform(&r, -40, 40);
        for (int64_t i = 0; i < D; i++) {
            uint8_t code = (uint8_t)tu_uniform(&r, 0, 256);
            if ((code & 0x7f) == 0x7f) code = 0x7e;
            x[n * D + i] = n == N - 1 && i < 128 ? 0.0f : (float)ldexp(e4m3(code), j);
        }
    }
    quant_check("e4m3-representable inputs", x, HAE_F32, N, D, D, D, 2);
    hae_fp8_quant_args a = {.x = hae_tensor_2d(x, HAE_F32, HAE_CPU, N, D), .q = hae_tensor_2d(q, HAE_FP8_E4M3, HAE_CPU, N, D),
                            .scale = hae_tensor_2d(sc, HAE_F32, HAE_CPU, N, 2)};
    memset(q, 0xa5, (size_t)(N * D));
    cr_assert_eq(hae_fp8_quant(be, &a), HAE_OK, "%s", hae_last_error());
    for (int64_t n = 0; n < N; n++)
        for (int64_t i = 0; i < D; i++)
            cr_assert_eq(e4m3(q[n * D + i]) * sc[n * 2 + i / 128], (double)x[n * D + i],
                         "round trip x [%lld, %lld], element (%lld, %lld): %g came back as %g", (long long)N, (long long)D,
                         (long long)n, (long long)i, (double)x[n * D + i], e4m3(q[n * D + i]) * sc[n * 2 + i / 128]);
    cr_assert_eq(sc[(N - 1) * 2], 1.0f, "all-zero block of x [%lld, %lld]: scale %g, expected 1", (long long)N,
                 (long long)D, (double)sc[(N - 1) * 2]);
    cr_assert(bytes_all(q + (N - 1) * D, 128, 0), "all-zero block of x [%lld, %lld]: codes are not all +0", (long long)N,
              (long long)D);
    free(x), free(q), free(sc);
}

/* Documented in indexer_cpu.c: a block holding an inf or NaN gets a NaN scale and NaN codes; the
 * other blocks of the row are unaffected. */
Test(indexer, fp8_quant_non_finite_blocks_stay_visible) {
    const int64_t D = 384;
    float x[384];
    uint8_t q[384];
    float sc[3];
    for (int i = 0; i < D; i++) x[i] = (float)(i % 7) - 3.0f;
    x[5] = INFINITY;
    x[128 + 9] = NAN;
    hae_fp8_quant_args a = {.x = hae_tensor_2d(x, HAE_F32, HAE_CPU, 1, D), .q = hae_tensor_2d(q, HAE_FP8_E4M3, HAE_CPU, 1, D),
                            .scale = hae_tensor_2d(sc, HAE_F32, HAE_CPU, 1, 3)};
    cr_assert_eq(hae_fp8_quant(be, &a), HAE_OK, "%s", hae_last_error());
    cr_assert(isnan(sc[0]) && isnan(sc[1]), "x [1, 384] with inf in block 0, NaN in block 1: scales %g %g, expected NaN",
              (double)sc[0], (double)sc[1]);
    for (int i = 0; i < 256; i++) cr_assert(isnan(e4m3(q[i])), "x [1, 384]: code %d of a non-finite block is 0x%02x", i, q[i]);
    cr_assert_eq(sc[2], 0x1p-7f, "x [1, 384]: the finite block's scale %a, expected 2^-7 (amax 3)", (double)sc[2]);
    for (int i = 256; i < D; i++)
        cr_assert_eq(e4m3(q[i]) * sc[2], (double)x[i], "x [1, 384]: element %d of the finite block: %g vs %g", i,
                     e4m3(q[i]) * sc[2], (double)x[i]);
}

/* ---------------------------------------------------------------- hadamard */

static double sylvester(int64_t i, int64_t j) { return __builtin_popcountll((unsigned long long)(i & j)) & 1 ? -1.0 : 1.0; }

static void run_hadamard(const char *what, void *x, hae_dtype dt, int64_t N, int64_t D, int64_t xs) {
    hae_hadamard_args a = {.x = view2(x, dt, N, D, xs)};
    cr_assert_eq(hae_hadamard(be, &a), HAE_OK, "%s: x [%lld, %lld] %s: %s", what, (long long)N, (long long)D,
                 hae_dtype_name(dt), hae_last_error());
}

/* The identity's rows become H / sqrt(D), whose rows are orthonormal (H H^T = D I). */
Test(indexer, hadamard_of_identity_is_orthonormal_sylvester) {
    for (int64_t D = 1; D <= 256; D *= 2) {
        float *x = xmalloc(sizeof(float) * (size_t)(D * D));
        for (int64_t i = 0; i < D * D; i++) x[i] = i / D == i % D ? 1.0f : 0.0f;
        run_hadamard("identity", x, HAE_F32, D, D, D);
        for (int64_t i = 0; i < D; i++)
            for (int64_t j = 0; j < D; j++) {
                const double want = sylvester(i, j) / sqrt((double)D);
                cr_assert(fabs(x[i * D + j] - want) <= 1e-6, "identity [%lld, %lld]: element (%lld, %lld) = %.9g, H/sqrt(D) "
                          "has %.9g", (long long)D, (long long)D, (long long)i, (long long)j, (double)x[i * D + j], want);
            }
        for (int64_t i = 0; i < D; i++)
            for (int64_t j = 0; j < D; j++) {
                double g = 0;
                for (int64_t l = 0; l < D; l++) g += (double)x[i * D + l] * x[j * D + l];
                cr_assert(fabs(g - (i == j)) <= 1e-6, "identity [%lld, %lld]: (H H^T / D)[%lld, %lld] = %.9g",
                          (long long)D, (long long)D, (long long)i, (long long)j, g);
            }
        free(x);
    }
}

/* Random rows against the float64 product with Sylvester's H, then: twice is the identity, dot
 * products are kept, a one-hot outlier spreads to 100 / sqrt(D) in every dim. f32 and bf16, strided. */
Test(indexer, hadamard_matches_matrix_product_involution_dots_outlier) {
    for (int64_t D = 1; D <= 256; D *= 2)
        for (int ti = 0; ti < 2; ti++) {
            const hae_dtype dt = ti ? HAE_BF16 : HAE_F32;
            const int64_t N = 6, xs = D + 3, es = (int64_t)hae_dtype_size(dt);
            tu_rng r = tu_rng_make(400 + (uint64_t)(D * 2 + ti));
            char *x = xmalloc((size_t)(N * xs * es));
            memset(x, 0x5a, (size_t)(N * xs * es));
            tu_fill(x, dt, N * xs, &r, -2, 2);
            for (int64_t i = 0; i < D; i++) put(x, dt, (N - 1) * xs + i, i == D / 3 ? 100.0f : 0.0f);
            for (int64_t n = 0; n < N; n++) memset(x + (n * xs + D) * es, 0x5a, (size_t)((xs - D) * es));
            double *x0 = xmalloc(sizeof(double) * (size_t)(N * D)), *ref = xmalloc(sizeof(double) * (size_t)(N * D));
            for (int64_t n = 0; n < N; n++)
                for (int64_t i = 0; i < D; i++) x0[n * D + i] = tu_get(x, dt, n * xs + i);
            for (int64_t n = 0; n < N; n++)
                for (int64_t i = 0; i < D; i++) {
                    ref[n * D + i] = 0;
                    for (int64_t j = 0; j < D; j++) ref[n * D + i] += sylvester(i, j) * x0[n * D + j] / sqrt((double)D);
                }
            run_hadamard("random rows", x, dt, N, D, xs);
            /* fp32: log2 D rounded stages, well under 1e-6 ||x||; bf16 adds its storage rounding (2^-9). */
            const double rel_store = dt == HAE_BF16 ? 0x1p-8 : 0.0;
            for (int64_t n = 0; n < N; n++) {
                double nx = 0;
                for (int64_t i = 0; i < D; i++) nx += x0[n * D + i] * x0[n * D + i];
                nx = sqrt(nx);
                for (int64_t i = 0; i < D; i++) {
                    const double g = tu_get(x, dt, n * xs + i), e = ref[n * D + i];
                    cr_assert(fabs(g - e) <= 1e-6 * nx + rel_store * fabs(e),
                              "H x / sqrt(D), x [%lld, %lld] %s: element (%lld, %lld) = %.9g, float64 %.9g", (long long)N,
                              (long long)D, hae_dtype_name(dt), (long long)n, (long long)i, g, e);
                }
                cr_assert(bytes_all(x + (n * xs + D) * es, (size_t)((xs - D) * es), 0x5a),
                          "x [%lld, %lld] %s: bytes between strided rows were written", (long long)N, (long long)D,
                          hae_dtype_name(dt));
            }
            for (int64_t i = 0; i < D; i++) {
                const double g = tu_get(x, dt, (N - 1) * xs + i), e = sylvester(i, D / 3) * 100.0 / sqrt((double)D);
                cr_assert(fabs(g - e) <= 1e-6 * fabs(e) + rel_store * fabs(e),
                          "outlier 100 e_%lld, D = %lld %s: dim %lld = %.9g, expected %.9g", (long long)(D / 3),
                          (long long)D, hae_dtype_name(dt), (long long)i, g, e);
            }
            if (dt == HAE_F32) {
                for (int64_t n = 0; n + 1 < N; n += 2) {
                    double d0 = 0, d1 = 0, na = 0, nb = 0;
                    for (int64_t i = 0; i < D; i++) {
                        d0 += x0[n * D + i] * x0[(n + 1) * D + i];
                        d1 += tu_get(x, dt, n * xs + i) * tu_get(x, dt, (n + 1) * xs + i);
                        na += x0[n * D + i] * x0[n * D + i], nb += x0[(n + 1) * D + i] * x0[(n + 1) * D + i];
                    }
                    cr_assert(fabs(d1 - d0) <= 1e-5 * sqrt(na * nb), "D = %lld: <Hx, Hy> = %.9g but <x, y> = %.9g",
                              (long long)D, d1, d0);
                }
                run_hadamard("the second application", x, dt, N, D, xs);
                for (int64_t n = 0; n < N; n++) {
                    double nx = 0;
                    for (int64_t i = 0; i < D; i++) nx += x0[n * D + i] * x0[n * D + i];
                    for (int64_t i = 0; i < D; i++)
                        cr_assert(fabs(tu_get(x, dt, n * xs + i) - x0[n * D + i]) <= 2e-6 * sqrt(nx),
                                  "H H x / D, x [%lld, %lld]: element (%lld, %lld) = %.9g, x had %.9g", (long long)N,
                                  (long long)D, (long long)n, (long long)i, tu_get(x, dt, n * xs + i), x0[n * D + i]);
                }
            }
            free(x), free(x0), free(ref);
        }
}

/* ---------------------------------------------------------------- index_write + index_logits */

typedef struct {
    const char *what;
    int B, T, H, D, P;
    int lens[4];
    int L;
    bool q_scale; /* pass the queries' scales apart (else they count as folded into w) */
} idx_case;

static const char *idx_desc(const idx_case *c, char *buf, size_t n) {
    int used = snprintf(buf, n, "%s: B=%d T=%d H_I=%d D=%d P=%d L=%d%s seq_lens {", c->what, c->B, c->T, c->H, c->D,
                        c->P, c->L, c->q_scale ? " q_scale" : "");
    for (int b = 0; b < c->B && used > 0 && (size_t)used < n; b++)
        used += snprintf(buf + used, n - (size_t)used, "%s%d", b ? ", " : "", c->lens[b]);
    if (used > 0 && (size_t)used < n) snprintf(buf + used, n - (size_t)used, "}");
    return buf;
}

/* Host data of one case: keys of every position and the new queries, a shuffled paged cache. */
typedef struct {
    int maxlen, max_pages, n_pages, nsc;
    int64_t row_bytes;
    uint8_t *k, *q;      /* [B, maxlen, D], [B, T, H, D] */
    float *ks, *w, *qs;  /* [B, maxlen, D / 128], [B, T, H], [B, T, H] */
    float w_scale;       /* H_I^-1/2 D^-1/2 as in DeepSeek-V3.2 */
    int32_t *bt, *lens;  /* [B, max_pages], [B] */
    uint8_t *pages;      /* [n_pages, row_bytes], poisoned with NaN codes */
} idx_data;

static idx_data idx_make(const idx_case *c, uint64_t seed) {
    idx_data d = {0};
    tu_rng r = tu_rng_make(seed);
    int used = 0;
    for (int b = 0; b < c->B; b++) {
        d.maxlen = c->lens[b] > d.maxlen ? c->lens[b] : d.maxlen;
        used += (c->lens[b] + c->P - 1) / c->P;
    }
    d.max_pages = (d.maxlen + c->P - 1) / c->P + 2;
    d.n_pages = used + 3;
    d.nsc = c->D / 128;
    d.row_bytes = (int64_t)c->P * (c->D + 4 * d.nsc);
    d.k = xmalloc((size_t)(c->B * d.maxlen * c->D));
    d.ks = xmalloc(sizeof(float) * (size_t)(c->B * d.maxlen * d.nsc));
    d.q = xmalloc((size_t)(c->B * c->T * c->H * c->D));
    d.w = xmalloc(sizeof(float) * (size_t)(c->B * c->T * c->H));
    d.qs = xmalloc(sizeof(float) * (size_t)(c->B * c->T * c->H));
    d.w_scale = (float)(1.0 / sqrt((double)c->H * c->D));
    d.bt = xmalloc(sizeof(int32_t) * (size_t)(c->B * d.max_pages));
    d.lens = xmalloc(sizeof(int32_t) * (size_t)c->B);
    d.pages = xmalloc((size_t)(d.n_pages * d.row_bytes));
    memset(d.pages, 0x7f, (size_t)(d.n_pages * d.row_bytes));
    for (int64_t i = 0; i < (int64_t)c->B * d.maxlen * c->D; i++) d.k[i] = hae_f32_to_fp8e4m3((float)(tu_normal(&r) * 8));
    for (int64_t i = 0; i < (int64_t)c->B * d.maxlen * d.nsc; i++) d.ks[i] = ldexpf(1.0f, -(int)tu_uniform(&r, 0, 8));
    for (int64_t i = 0; i < (int64_t)c->B * c->T * c->H * c->D; i++) d.q[i] = hae_f32_to_fp8e4m3((float)(tu_normal(&r) * 8));
    for (int64_t i = 0; i < (int64_t)c->B * c->T * c->H; i++) d.w[i] = (float)tu_uniform(&r, -0.5, 1.0);
    for (int64_t i = 0; i < (int64_t)c->B * c->T * c->H; i++) d.qs[i] = ldexpf(1.0f, -(int)tu_uniform(&r, 0, 8));
    /* pages in a shuffled order; entries past a sequence's pages are garbage that must not be read */
    int32_t *perm = xmalloc(sizeof(int32_t) * (size_t)d.n_pages);
    for (int i = 0; i < d.n_pages; i++) perm[i] = i;
    for (int i = d.n_pages - 1; i > 0; i--) {
        int j = (int)tu_uniform(&r, 0, i + 1);
        int32_t t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    int next = 0;
    for (int b = 0; b < c->B; b++) {
        d.lens[b] = c->lens[b];
        for (int i = 0; i < d.max_pages; i++)
            d.bt[b * d.max_pages + i] = i < (c->lens[b] + c->P - 1) / c->P ? perm[next++] : (i % 2 ? -1 : INT32_MAX);
    }
    free(perm);
    return d;
}

static void idx_free(idx_data *d) {
    free(d->k), free(d->ks), free(d->q), free(d->w), free(d->qs), free(d->bt), free(d->lens), free(d->pages);
}

static hae_index_cache idx_cache(const idx_case *c, idx_data *d) {
    return (hae_index_cache){.pages = hae_tensor_2d(d->pages, HAE_FP8_E4M3, HAE_CPU, d->n_pages, d->row_bytes),
                             .block_table = hae_tensor_2d(d->bt, HAE_I32, HAE_CPU, c->B, d->max_pages),
                             .page_size = c->P, .head_dim = c->D};
}

/* Fills the cache the way a run would: each sequence's history [0, len - T) by a call of its own
 * (B = 1 views), then the T new keys of all sequences in one call from strided rows. Then checks
 * every byte of the pages against where the header says each token lives. */
static void idx_fill_cache(const idx_case *c, idx_data *d) {
    char dd[160];
    const int64_t D = c->D, nsc = d->nsc, T = c->T;
    hae_index_cache cache = idx_cache(c, d);
    for (int b = 0; b < c->B; b++) {
        int32_t hist = c->lens[b] - c->T;
        if (hist == 0) continue;
        hae_index_write_args w = {
            .k = hae_tensor_3d(d->k + (int64_t)b * d->maxlen * D, HAE_FP8_E4M3, HAE_CPU, 1, hist, D),
            .k_scale = hae_tensor_3d(d->ks + (int64_t)b * d->maxlen * nsc, HAE_F32, HAE_CPU, 1, hist, nsc),
            .cache = cache,
            .seq_lens = hae_tensor_1d(&hist, HAE_I32, HAE_CPU, 1)};
        w.cache.block_table = hae_tensor_narrow(cache.block_table, 0, b, 1);
        cr_assert_eq(hae_index_write(be, &w), HAE_OK, "history of sequence %d: %s (%s)", b, hae_last_error(),
                     idx_desc(c, dd, sizeof dd));
    }
    const int64_t kst = D + 16; /* new keys in strided rows */
    uint8_t *kn = xmalloc((size_t)(c->B * T * kst));
    float *ksn = xmalloc(sizeof(float) * (size_t)(c->B * T * nsc));
    for (int b = 0; b < c->B; b++)
        for (int64_t t = 0; t < T; t++) {
            const int64_t s = c->lens[b] - T + t;
            memcpy(kn + (b * T + t) * kst, d->k + ((int64_t)b * d->maxlen + s) * D, (size_t)D);
            memcpy(ksn + (b * T + t) * nsc, d->ks + ((int64_t)b * d->maxlen + s) * nsc, sizeof(float) * (size_t)nsc);
        }
    hae_index_write_args w = {.k = hae_tensor_3d(kn, HAE_FP8_E4M3, HAE_CPU, c->B, T, D),
                              .k_scale = hae_tensor_3d(ksn, HAE_F32, HAE_CPU, c->B, T, nsc),
                              .cache = cache,
                              .seq_lens = hae_tensor_1d(d->lens, HAE_I32, HAE_CPU, c->B)};
    w.k.stride[1] = kst, w.k.stride[0] = T * kst;
    cr_assert_eq(hae_index_write(be, &w), HAE_OK, "new keys: %s (%s)", hae_last_error(), idx_desc(c, dd, sizeof dd));
    free(kn), free(ksn);

    uint8_t *want = xmalloc((size_t)(d->n_pages * d->row_bytes));
    memset(want, 0x7f, (size_t)(d->n_pages * d->row_bytes));
    for (int b = 0; b < c->B; b++)
        for (int64_t s = 0; s < c->lens[b]; s++) {
            uint8_t *page = want + d->bt[b * d->max_pages + s / c->P] * d->row_bytes;
            memcpy(page + (s % c->P) * D, d->k + ((int64_t)b * d->maxlen + s) * D, (size_t)D);
            memcpy(page + c->P * D + (s % c->P) * nsc * 4, d->ks + ((int64_t)b * d->maxlen + s) * nsc, 4 * (size_t)nsc);
        }
    for (int64_t i = 0; i < d->n_pages * d->row_bytes; i++)
        cr_assert_eq(d->pages[i], want[i], "index_write: page %lld byte %lld is 0x%02x, expected 0x%02x (%s)",
                     (long long)(i / d->row_bytes), (long long)(i % d->row_bytes), d->pages[i], want[i],
                     idx_desc(c, dd, sizeof dd));
    free(want);
}

/* logits [B, T, L] in rows of Ls floats, poisoned with NaN bytes; gaps must stay so. */
static hae_status idx_logits(hae_backend *b_, const idx_case *c, idx_data *d, float *logits, int64_t Ls) {
    memset(logits, 0xff, sizeof(float) * (size_t)(c->B * c->T * Ls));
    hae_index_logits_args a = {.q = hae_tensor_4d(d->q, HAE_FP8_E4M3, HAE_CPU, c->B, c->T, c->H, c->D),
                               .w = hae_tensor_3d(d->w, HAE_F32, HAE_CPU, c->B, c->T, c->H),
                               .cache = idx_cache(c, d),
                               .seq_lens = hae_tensor_1d(d->lens, HAE_I32, HAE_CPU, c->B),
                               .logits = hae_tensor_3d(logits, HAE_F32, HAE_CPU, c->B, c->T, c->L),
                               .w_scale = d->w_scale};
    if (c->q_scale) a.q_scale = hae_tensor_3d(d->qs, HAE_F32, HAE_CPU, c->B, c->T, c->H);
    a.logits.stride[1] = Ls, a.logits.stride[0] = c->T * Ls;
    return hae_index_logits(b_, &a);
}

/* The header's formula in float64 from the FP8 codes and scales, head weight w_scale w q_scale;
 * every element within 1e-5 of sum_h |weight| sum_d |q k k_scale| (fp32 sums of exact products),
 * -inf exactly past the position. */
static void idx_check_logits(const idx_case *c, const idx_data *d, const float *logits, int64_t Ls) {
    char dd[160];
    const int64_t D = c->D, H = c->H;
    double num = 0, den = 0;
    for (int b = 0; b < c->B; b++)
        for (int64_t t = 0; t < c->T; t++) {
            const int64_t p = c->lens[b] - c->T + t;
            const float *row = logits + (b * c->T + t) * Ls;
            for (int64_t s = 0; s < c->L; s++) {
                const double got = row[s];
                if (s > p) {
                    cr_assert(got == -INFINITY, "logits[%d, %lld, %lld] = %g past the position %lld, expected -inf (%s)", b,
                              (long long)t, (long long)s, got, (long long)p, idx_desc(c, dd, sizeof dd));
                    continue;
                }
                double ref = 0, mag = 0;
                for (int64_t h = 0; h < H; h++) {
                    const uint8_t *q = d->q + ((b * c->T + t) * H + h) * D, *k = d->k + ((int64_t)b * d->maxlen + s) * D;
                    double dot = 0, m = 0;
                    for (int64_t i = 0; i < D; i++) {
                        const double prod = e4m3(q[i]) * e4m3(k[i]) * d->ks[((int64_t)b * d->maxlen + s) * d->nsc + i / 128];
                        dot += prod, m += fabs(prod);
                    }
                    const int64_t wi = (b * c->T + t) * H + h;
                    const double wh = (double)d->w_scale * d->w[wi] * (c->q_scale ? d->qs[wi] : 1.0);
                    ref += wh * (dot > 0 ? dot : 0);
                    mag += fabs(wh) * m;
                }
                cr_assert(fabs(got - ref) <= 1e-5 * mag, "logits[%d, %lld, %lld] = %.9g, float64 %.9g, error %.3g > 1e-5 "
                          "x %.3g (%s)", b, (long long)t, (long long)s, got, ref, fabs(got - ref), mag,
                          idx_desc(c, dd, sizeof dd));
                num += (got - ref) * (got - ref), den += ref * ref;
            }
            cr_assert(bytes_all(row + c->L, sizeof(float) * (size_t)(Ls - c->L), 0xff),
                      "logits row (%d, %lld): the gap after L was written (%s)", b, (long long)t, idx_desc(c, dd, sizeof dd));
        }
    cr_assert(num <= 1e-12 * den, "logits: relative RMS error %.3g > 1e-6 (%s)", sqrt(num / den), idx_desc(c, dd, sizeof dd));
}

static const idx_case IDX_CASES[] = {
    {"prefill", 3, 6, 4, 128, 16, {6, 37, 150}, 160, true},
    {"prefill, 64 heads", 2, 9, 64, 128, 64, {9, 100}, 128, false},
    {"decode, 64 heads", 4, 1, 64, 128, 16, {1, 17, 64, 200}, 200, true},
    {"decode, D 256", 3, 1, 4, 256, 8, {5, 33, 90}, 96, false},
    {"prefill, D 256, 64 heads, pages of 1", 2, 4, 64, 256, 1, {4, 21}, 24, true},
    {"one token", 1, 1, 4, 128, 64, {1}, 1, false},
    {"long rows", 2, 3, 4, 128, 64, {4100, 5000}, 5003, true},
};

Test(indexer, index_write_and_logits_vs_oracle) {
    for (size_t ci = 0; ci < sizeof IDX_CASES / sizeof *IDX_CASES; ci++) {
        const idx_case *c = &IDX_CASES[ci];
        char dd[160];
        idx_data d = idx_make(c, 500 + ci);
        idx_fill_cache(c, &d);
        const int64_t Ls = c->L + 5;
        float *logits = xmalloc(sizeof(float) * (size_t)(c->B * c->T * Ls));
        cr_assert_eq(idx_logits(be, c, &d, logits, Ls), HAE_OK, "%s (%s)", hae_last_error(), idx_desc(c, dd, sizeof dd));
        idx_check_logits(c, &d, logits, Ls);
        free(logits);
        idx_free(&d);
    }
}

/* A key past a query's position never reaches its logits: NaN codes written into the last token
 * of each sequence change only the last query's entry for it (NaN: ReLU keeps it). Every thread
 * count gives the same bits. */
Test(indexer, index_logits_never_read_past_the_position) {
    const idx_case c = {"prefill, last key poisoned", 3, 5, 4, 256, 16, {5, 40, 77}, 80, true};
    char dd[160];
    idx_data d = idx_make(&c, 600);
    idx_fill_cache(&c, &d);
    const int64_t Ls = c.L, n = (int64_t)c.B * c.T * Ls;
    float *l0 = xmalloc(sizeof(float) * (size_t)n), *l1 = xmalloc(sizeof(float) * (size_t)n);
    float *l2 = xmalloc(sizeof(float) * (size_t)n);
    cr_assert_eq(idx_logits(be, &c, &d, l0, Ls), HAE_OK, "%s", hae_last_error());
    hae_backend *one = NULL;
    cr_assert_eq(hae_backend_create(HAE_CPU, 1, &one), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(idx_logits(one, &c, &d, l2, Ls), HAE_OK, "%s", hae_last_error());
    hae_backend_destroy(one);
    cr_assert(memcmp(l0, l2, sizeof(float) * (size_t)n) == 0, "1 and 2 threads give different logits (%s)",
              idx_desc(&c, dd, sizeof dd));
    for (int b = 0; b < c.B; b++) {
        const int64_t s = c.lens[b] - 1;
        uint8_t *page = d.pages + d.bt[b * d.max_pages + s / c.P] * d.row_bytes;
        memset(page + (s % c.P) * c.D, 0x7f, (size_t)c.D);
        const float nan = NAN;
        for (int i = 0; i < d.nsc; i++) memcpy(page + c.P * c.D + ((s % c.P) * d.nsc + i) * 4, &nan, 4);
    }
    cr_assert_eq(idx_logits(be, &c, &d, l1, Ls), HAE_OK, "%s", hae_last_error());
    for (int b = 0; b < c.B; b++)
        for (int64_t t = 0; t < c.T; t++)
            for (int64_t s = 0; s < c.L; s++) {
                const int64_t i = (b * c.T + t) * Ls + s;
                if (t == c.T - 1 && s == c.lens[b] - 1)
                    cr_assert(isnan(l1[i]), "logits[%d, %lld, %lld] of the poisoned key is %g, expected NaN (%s)", b,
                              (long long)t, (long long)s, (double)l1[i], idx_desc(&c, dd, sizeof dd));
                else
                    cr_assert(memcmp(&l0[i], &l1[i], 4) == 0, "logits[%d, %lld, %lld] changed from %g to %g when a key "
                              "past its position was poisoned (%s)", b, (long long)t, (long long)s, (double)l0[i],
                              (double)l1[i], idx_desc(&c, dd, sizeof dd));
            }
    free(l0), free(l1), free(l2);
    idx_free(&d);
}

/* ---------------------------------------------------------------- topk */

typedef struct {
    double v;
    int nan;
    int32_t i;
} tk_ent;

/* (logit descending, NaN last, index ascending) */
static int tk_cmp(const void *x, const void *y) {
    const tk_ent *a = x, *b = y;
    if (a->nan != b->nan) return a->nan - b->nan;
    if (!a->nan && a->v != b->v) return a->v > b->v ? -1 : 1;
    return a->i - b->i;
}
static int int_cmp(const void *x, const void *y) { return *(const int32_t *)x - *(const int32_t *)y; }

static void topk_oracle(const float *x, int64_t n, int64_t k, int32_t *ref) {
    tk_ent *e = xmalloc(sizeof(tk_ent) * (size_t)n);
    for (int64_t i = 0; i < n; i++) e[i] = (tk_ent){x[i], isnan(x[i]) != 0, (int32_t)i};
    qsort(e, (size_t)n, sizeof *e, tk_cmp);
    const int64_t m = n < k ? n : k;
    for (int64_t i = 0; i < m; i++) ref[i] = e[i].i;
    qsort(ref, (size_t)m, sizeof *ref, int_cmp);
    for (int64_t i = m; i < k; i++) ref[i] = -1;
    free(e);
}

/* Runs top-k on R rows (row stride Ls floats) and compares each row with the oracle exactly;
 * returns the seconds hae_topk took. */
static double topk_check(const char *what, const float *x, int64_t R, int64_t L, int64_t Ls, const int32_t *lens,
                         int64_t k) {
    const int64_t os = k + 2;
    int32_t *out = xmalloc(sizeof(int32_t) * (size_t)(R * os)), *ref = xmalloc(sizeof(int32_t) * (size_t)k);
    memset(out, 0x5a, sizeof(int32_t) * (size_t)(R * os));
    hae_topk_args a = {.logits = view2((void *)x, HAE_F32, R, L, Ls), .lens = hae_tensor_1d((void *)lens, HAE_I32, HAE_CPU, R),
                       .out = view2(out, HAE_I32, R, k, os)};
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    hae_status st = hae_topk(be, &a);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    cr_assert_eq(st, HAE_OK, "%s: logits [%lld, %lld] k %lld: %s", what, (long long)R, (long long)L, (long long)k,
                 hae_last_error());
    for (int64_t r = 0; r < R; r++) {
        topk_oracle(x + r * Ls, lens[r], k, ref);
        for (int64_t j = 0; j < k; j++)
            cr_assert_eq(out[r * os + j], ref[j], "%s: logits [%lld, %lld] k %lld, row %lld (len %d): out[%lld] = %d, "
                         "expected %d", what, (long long)R, (long long)L, (long long)k, (long long)r, lens[r],
                         (long long)j, out[r * os + j], ref[j]);
        cr_assert(bytes_all(out + r * os + k, 8, 0x5a), "%s: logits [%lld, %lld] k %lld: out's row gap was written", what,
                  (long long)R, (long long)L, (long long)k);
    }
    free(out), free(ref);
    return (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
}

/* Values of a row: kind 0 uniform in [-5, 5], 1 from {-1, -0, +0, 0.5, 2} (ties, signed zeros),
 * 2 the same with -inf, +inf and NaN mixed in, 3 all equal. */
static void topk_fill(float *x, int64_t n, int kind, tu_rng *r) {
    static const float levels[] = {-1.0f, -0.0f, 0.0f, 0.5f, 2.0f};
    for (int64_t i = 0; i < n; i++) {
        double u = tu_uniform(r, 0, 1);
        if (kind == 0) x[i] = (float)(u * 10 - 5);
        else if (kind == 3) x[i] = 0.25f;
        else x[i] = levels[(int)(u * 5)];
        if (kind == 2) {
            double v = tu_uniform(r, 0, 1);
            if (v < 0.1) x[i] = -INFINITY;
            else if (v < 0.13) x[i] = INFINITY;
            else if (v < 0.2) x[i] = NAN;
        }
    }
}

Test(indexer, topk_vs_sort_oracle) {
    const int64_t R = 8, L = 777, Ls = L + 9;
    const int64_t ks[] = {1, 2, 50, 300, L - 1, L, L + 5};
    float *x = xmalloc(sizeof(float) * (size_t)(R * Ls));
    int32_t lens[8];
    tu_rng r = tu_rng_make(700);
    for (int kind = 0; kind < 4; kind++)
        for (size_t ki = 0; ki < sizeof ks / sizeof *ks; ki++) {
            for (int64_t row = 0; row < R; row++) {
                topk_fill(x + row * Ls, Ls, row == R - 1 && kind != 3 ? 2 : kind, &r);
                /* lens: 0, 1, shorter than k, L, and random */
                lens[row] = row == 0 ? 0 : row == 1 ? 1 : row == 2 ? (int32_t)(ks[ki] > 1 ? ks[ki] - 1 : 0)
                          : row == 3 ? (int32_t)L : (int32_t)tu_uniform(&r, 0, (double)L + 1);
                if (lens[row] > L) lens[row] = (int32_t)L;
            }
            char what[64];
            snprintf(what, sizeof what, "value kind %d", kind);
            topk_check(what, x, R, L, Ls, lens, ks[ki]);
        }
    for (int64_t row = 0; row < R; row++) lens[row] = 0;
    topk_check("every row empty", x, R, L, Ls, lens, 16);
    free(x);
}

/* DeepSeek-V3.2's shape: 128K-token rows at k = 2048, one random and one of five tied levels. */
Test(indexer, topk_rows_of_128k) {
    const int64_t R = 2, L = 131072, k = 2048;
    float *x = xmalloc(sizeof(float) * (size_t)(R * L));
    tu_rng r = tu_rng_make(800);
    for (int64_t i = 0; i < L; i++) x[i] = (float)tu_normal(&r);
    topk_fill(x + L, L, 1, &r);
    const int32_t lens[2] = {(int32_t)L, (int32_t)L - 3};
    double sec = topk_check("128K rows", x, R, L, L, lens, k);
    cr_log_info("topk: %lld rows of %lld logits, k %lld: %.2f ms (%.2f ms a row)", (long long)R, (long long)L,
                (long long)k, 1e3 * sec, 1e3 * sec / (double)R);
    free(x);
}

/* ---------------------------------------------------------------- bad inputs */

static int n_bad;

/* st must be HAE_ERR_INVALID, the message must name `needle`, and the n bytes of `out` and the n2
 * of `out2` (snapshots in `before`, `before2`) must be untouched. */
static void expect_invalid(hae_status st, const char *needle, const char *what, const void *out, const void *before,
                           size_t n, const void *out2, const void *before2, size_t n2) {
    n_bad++;
    cr_expect_eq(st, HAE_ERR_INVALID, "bad input \"%s\": status %s, message \"%s\"", what, hae_status_name(st),
                 hae_last_error());
    cr_expect(strstr(hae_last_error(), needle) != NULL, "bad input \"%s\": message \"%s\" does not mention \"%s\"", what,
              hae_last_error(), needle);
    cr_expect(memcmp(out, before, n) == 0 && (n2 == 0 || memcmp(out2, before2, n2) == 0),
              "bad input \"%s\": the output was written", what);
}

Test(indexer, rejects_bad_arguments) {
    /* valid bases: x [4, 256] f32; a cache of 2 sequences (lens 5 and 12, T = 2), P = 4, D = 128 */
    float x[4 * 256], xs[4 * 256];
    uint8_t q[4 * 256], qs[4 * 256];
    float sc[8], scs[8];
    tu_rng r = tu_rng_make(900);
    tu_fill(x, HAE_F32, 4 * 256, &r, -3, 3);
    memset(q, 0xa5, sizeof q), memset(sc, 0xa5, sizeof sc);
    memcpy(qs, q, sizeof q), memcpy(scs, sc, sizeof sc), memcpy(xs, x, sizeof x);
    n_bad = 0;

    const hae_fp8_quant_args qb = {.x = hae_tensor_2d(x, HAE_F32, HAE_CPU, 4, 256),
                                   .q = hae_tensor_2d(q, HAE_FP8_E4M3, HAE_CPU, 4, 256),
                                   .scale = hae_tensor_2d(sc, HAE_F32, HAE_CPU, 4, 2)};
    hae_fp8_quant_args qa;
#define BADQ(needle, what, ...)                                                                                        \
    do {                                                                                                               \
        qa = qb;                                                                                                       \
        __VA_ARGS__;                                                                                                   \
        expect_invalid(hae_fp8_quant(be, &qa), needle, what, q, qs, sizeof q, sc, scs, sizeof sc);                     \
    } while (0)
    BADQ("multiple of 128", "quant: D = 200", qa.x = hae_tensor_2d(x, HAE_F32, HAE_CPU, 4, 200),
         qa.q = hae_tensor_2d(q, HAE_FP8_E4M3, HAE_CPU, 4, 200));
    BADQ("q [4, 256] f32", "quant: q is f32", qa.q = hae_tensor_2d(sc, HAE_F32, HAE_CPU, 4, 256));
    BADQ("scale [4, 1]", "quant: scale has one column for D = 256", qa.scale = hae_tensor_2d(sc, HAE_F32, HAE_CPU, 4, 1));
    BADQ("q [3, 256]", "quant: q has 3 rows", qa.q = hae_tensor_2d(q, HAE_FP8_E4M3, HAE_CPU, 3, 256));
    BADQ("x [4, 256] i32", "quant: x is i32", qa.x.dtype = HAE_I32);
    BADQ("cuda", "quant: x on the GPU", qa.x.device = HAE_CUDA);
    BADQ("scale [4, 2] bf16", "quant: scale is bf16", qa.scale.dtype = HAE_BF16);
    BADQ("innermost stride", "quant: x with a column stride of 2", qa.x.stride[1] = 2);

    hae_hadamard_args ha;
#define BADH(needle, what, ...)                                                                                        \
    do {                                                                                                               \
        ha = (hae_hadamard_args){.x = hae_tensor_2d(x, HAE_F32, HAE_CPU, 4, 256)};                                      \
        __VA_ARGS__;                                                                                                   \
        expect_invalid(hae_hadamard(be, &ha), needle, what, x, xs, sizeof x, NULL, NULL, 0);                                        \
    } while (0)
    BADH("power of two", "hadamard: D = 96", ha.x = hae_tensor_2d(x, HAE_F32, HAE_CPU, 4, 96));
    BADH("power of two", "hadamard: D = 0", ha.x = hae_tensor_2d(x, HAE_F32, HAE_CPU, 4, 0));
    BADH("expected 2 dims", "hadamard: x is 3-d", ha.x = hae_tensor_3d(x, HAE_F32, HAE_CPU, 2, 2, 256));
    BADH("x [4, 256] f16", "hadamard: x is f16", ha.x.dtype = HAE_F16);

    const idx_case c = {"bad", 2, 2, 4, 128, 4, {5, 12}, 16, true};
    idx_data d = idx_make(&c, 901);
    idx_fill_cache(&c, &d);
    uint8_t *pages0 = xmalloc((size_t)(d.n_pages * d.row_bytes));
    memcpy(pages0, d.pages, (size_t)(d.n_pages * d.row_bytes));
    uint8_t kn[2 * 2 * 256];
    float ksn[2 * 2 * 2];
    int32_t bad_lens[2], bt2[2 * 16], lens_buf[3] = {5, 12, 12};
    memset(kn, 0x31, sizeof kn);
    for (int i = 0; i < 8; i++) ksn[i] = 0.5f;
    const hae_index_cache cache = idx_cache(&c, &d);
    const hae_index_write_args wb = {.k = hae_tensor_3d(kn, HAE_FP8_E4M3, HAE_CPU, 2, 2, 128),
                                     .k_scale = hae_tensor_3d(ksn, HAE_F32, HAE_CPU, 2, 2, 1),
                                     .cache = cache,
                                     .seq_lens = hae_tensor_1d(d.lens, HAE_I32, HAE_CPU, 2)};
    hae_index_write_args wa = wb;
    cr_assert_eq(hae_index_write(be, &wa), HAE_OK, "the valid base write: %s", hae_last_error());
    memcpy(pages0, d.pages, (size_t)(d.n_pages * d.row_bytes));
    const size_t pb = (size_t)(d.n_pages * d.row_bytes);
#define BADW(needle, what, ...)                                                                                        \
    do {                                                                                                               \
        wa = wb;                                                                                                       \
        __VA_ARGS__;                                                                                                   \
        expect_invalid(hae_index_write(be, &wa), needle, what, d.pages, pages0, pb, NULL, NULL, 0);                                 \
    } while (0)
    BADW("k [2, 2, 128] f32", "write: k is f32", wa.k.dtype = HAE_F32);
    BADW("k_scale [2, 2, 2]", "write: k_scale has 2 scales for D = 128", wa.k_scale = hae_tensor_3d(ksn, HAE_F32, HAE_CPU, 2, 2, 2));
    BADW("multiple of 128", "write: D = 64", wa.k = hae_tensor_3d(kn, HAE_FP8_E4M3, HAE_CPU, 2, 2, 64));
    BADW("cache.head_dim 256", "write: head_dim 256 for D = 128", wa.cache.head_dim = 256);
    BADW("cache.page_size 0", "write: page size 0", wa.cache.page_size = 0);
    BADW("cache.pages", "write: pages rows of the wrong size",
         wa.cache.pages = hae_tensor_2d(d.pages, HAE_FP8_E4M3, HAE_CPU, d.n_pages / 2, d.row_bytes * 2));
    BADW("4-byte aligned", "write: misaligned pages", wa.cache.pages.data = d.pages + 1, wa.cache.pages.shape[0] -= 1);
    BADW("cache.block_table [2, 5] i64", "write: block_table is i64", wa.cache.block_table.dtype = HAE_I64);
    BADW("cache.block_table [1, 5]", "write: block_table has 1 row for B = 2", wa.cache.block_table.shape[0] = 1);
    BADW("seq_lens [3] i32", "write: seq_lens has 3 entries", wa.seq_lens = hae_tensor_1d(lens_buf, HAE_I32, HAE_CPU, 3));
    BADW("seq_lens[1] = 1", "write: seq_lens below T", memcpy(bad_lens, (int32_t[]){5, 1}, 8),
         wa.seq_lens = hae_tensor_1d(bad_lens, HAE_I32, HAE_CPU, 2));
    BADW("seq_lens[0] = 21", "write: seq_lens past max_pages P", memcpy(bad_lens, (int32_t[]){21, 12}, 8),
         wa.seq_lens = hae_tensor_1d(bad_lens, HAE_I32, HAE_CPU, 2));
    /* sequence 1 writes positions 10 and 11: table entry 2 */
    memcpy(bt2, d.bt, sizeof(int32_t) * (size_t)(2 * d.max_pages));
    bt2[d.max_pages + 2] = d.n_pages;
    BADW("cache.block_table[1, 2]", "write: a touched table entry past the pages",
         wa.cache.block_table = hae_tensor_2d(bt2, HAE_I32, HAE_CPU, 2, d.max_pages));

    float lg[2 * 2 * 16], lg0[2 * 2 * 16];
    memset(lg, 0xee, sizeof lg), memcpy(lg0, lg, sizeof lg);
    const hae_index_logits_args lb = {.q = hae_tensor_4d(d.q, HAE_FP8_E4M3, HAE_CPU, 2, 2, 4, 128),
                                      .w = hae_tensor_3d(d.w, HAE_F32, HAE_CPU, 2, 2, 4),
                                      .cache = cache,
                                      .seq_lens = hae_tensor_1d(d.lens, HAE_I32, HAE_CPU, 2),
                                      .logits = hae_tensor_3d(lg, HAE_F32, HAE_CPU, 2, 2, 16),
                                      .q_scale = hae_tensor_3d(d.qs, HAE_F32, HAE_CPU, 2, 2, 4),
                                      .w_scale = d.w_scale};
    hae_index_logits_args la = lb;
    cr_assert_eq(hae_index_logits(be, &la), HAE_OK, "the valid base logits: %s", hae_last_error());
    memset(lg, 0xee, sizeof lg);
#define BADL(needle, what, ...)                                                                                        \
    do {                                                                                                               \
        la = lb;                                                                                                       \
        __VA_ARGS__;                                                                                                   \
        expect_invalid(hae_index_logits(be, &la), needle, what, lg, lg0, sizeof lg, NULL, NULL, 0);                                 \
    } while (0)
    BADL("w [2, 2, 3]", "logits: w with 3 heads for H_I = 4", la.w = hae_tensor_3d(d.w, HAE_F32, HAE_CPU, 2, 2, 3));
    BADL("logits [2, 3, 16]", "logits: logits with T = 3", la.logits = hae_tensor_3d(lg, HAE_F32, HAE_CPU, 2, 3, 16));
    BADL("exceeds the logits' L = 11", "logits: L below seq_lens", la.logits = hae_tensor_3d(lg, HAE_F32, HAE_CPU, 2, 2, 11));
    BADL("cache.head_dim 128", "logits: q of D = 256", la.q = hae_tensor_4d(d.q, HAE_FP8_E4M3, HAE_CPU, 2, 2, 2, 256),
         la.w = hae_tensor_3d(d.w, HAE_F32, HAE_CPU, 2, 2, 2), la.q_scale = hae_tensor_3d(d.qs, HAE_F32, HAE_CPU, 2, 2, 2));
    BADL("expected 4 dims", "logits: q is 3-d", la.q = hae_tensor_3d(d.q, HAE_FP8_E4M3, HAE_CPU, 2, 2, 512));
    BADL("q [2, 2, 4, 128] bf16", "logits: q is bf16", la.q.dtype = HAE_BF16);
    BADL("at least one indexer head", "logits: no heads", la.q = hae_tensor_4d(d.q, HAE_FP8_E4M3, HAE_CPU, 2, 2, 0, 128),
         la.w = hae_tensor_3d(d.w, HAE_F32, HAE_CPU, 2, 2, 0), la.q_scale.data = NULL);
    BADL("dense within a row", "logits: q heads strided", la.q.stride[2] = 256);
    /* sequence 0 (length 5) reads pages 0 and 1 */
    memcpy(bt2, d.bt, sizeof(int32_t) * (size_t)(2 * d.max_pages));
    bt2[1] = -3;
    BADL("cache.block_table[0, 1] = -3", "logits: a negative table entry that is read",
         la.cache.block_table = hae_tensor_2d(bt2, HAE_I32, HAE_CPU, 2, d.max_pages));
    BADL("seq_lens[0] = 1", "logits: seq_lens below T", memcpy(bad_lens, (int32_t[]){1, 12}, 8),
         la.seq_lens = hae_tensor_1d(bad_lens, HAE_I32, HAE_CPU, 2));
    BADL("seq_lens [2] f32", "logits: seq_lens is f32", la.seq_lens.dtype = HAE_F32);
    BADL("q_scale [2, 2, 2]", "logits: q_scale with 2 heads for H_I = 4",
         la.q_scale = hae_tensor_3d(d.qs, HAE_F32, HAE_CPU, 2, 2, 2));
    BADL("q_scale [2, 2, 4] bf16", "logits: q_scale is bf16", la.q_scale.dtype = HAE_BF16);
    BADL("w_scale 0", "logits: w_scale left at 0", la.w_scale = 0.0f);
    BADL("w_scale nan", "logits: w_scale NaN", la.w_scale = NAN);
    BADL("w_scale -0.5", "logits: negative w_scale", la.w_scale = -0.5f);

    float tl[3 * 10];
    int32_t out[3 * 4], out0[3 * 4], tlens[3] = {10, 4, 0};
    tu_fill(tl, HAE_F32, 30, &r, -1, 1);
    memset(out, 0x5a, sizeof out), memcpy(out0, out, sizeof out);
    const hae_topk_args tb = {.logits = hae_tensor_2d(tl, HAE_F32, HAE_CPU, 3, 10),
                              .lens = hae_tensor_1d(tlens, HAE_I32, HAE_CPU, 3),
                              .out = hae_tensor_2d(out, HAE_I32, HAE_CPU, 3, 4)};
    hae_topk_args ta;
#define BADT(needle, what, ...)                                                                                        \
    do {                                                                                                               \
        ta = tb;                                                                                                       \
        __VA_ARGS__;                                                                                                   \
        expect_invalid(hae_topk(be, &ta), needle, what, out, out0, sizeof out, NULL, NULL, 0);                                      \
    } while (0)
    int32_t tl_bad[3];
    BADT("lens[1] = 11", "topk: a length past L", memcpy(tl_bad, (int32_t[]){10, 11, 0}, 12),
         ta.lens = hae_tensor_1d(tl_bad, HAE_I32, HAE_CPU, 3));
    BADT("lens[2] = -1", "topk: a negative length", memcpy(tl_bad, (int32_t[]){10, 1, -1}, 12),
         ta.lens = hae_tensor_1d(tl_bad, HAE_I32, HAE_CPU, 3));
    BADT("k >= 1", "topk: k = 0", ta.out = hae_tensor_2d(out, HAE_I32, HAE_CPU, 3, 0));
    BADT("out [2, 4]", "topk: out has 2 rows", ta.out = hae_tensor_2d(out, HAE_I32, HAE_CPU, 2, 4));
    BADT("logits [3, 10] bf16", "topk: logits are bf16", ta.logits.dtype = HAE_BF16);
    BADT("lens [3] f32", "topk: lens are f32", ta.lens.dtype = HAE_F32);
    BADT("lens [2]", "topk: lens has 2 entries", ta.lens = hae_tensor_1d(tlens, HAE_I32, HAE_CPU, 2));
    BADT("out [3, 4] i64", "topk: out is i64", ta.out.dtype = HAE_I64);
    cr_assert_geq(n_bad, 25, "only %d bad inputs were tried", n_bad);
    cr_log_info("%d bad inputs rejected", n_bad);
    free(pages0);
    idx_free(&d);
}

/* The logits kernel's key splits: at DeepSeek-V3.2's prefill on an H200 (2048 blocks of 2 queries, 132 CTAs at
 * once, 512 tiles of 256 keys) 3 splits, whose 47 waves are 99% full where 1 split left the 16th half empty; and
 * over a grid of shapes a split within the row, never costlier (waves x keys a CTA) than the fewest splits that
 * make 8 waves. */
static int64_t split_cost(int64_t tiles, int64_t rows, int64_t slots, int64_t kt, int64_t per) {
    const int64_t ctas = rows * ((tiles + per - 1) / per);
    return (ctas + slots - 1) / slots * (per * kt + 512);
}

Test(indexer, logits_key_splits_fill_the_last_wave) {
    const int64_t per = hae_index_split_tiles(512, 2048, 132, 256, 512);
    const int64_t splits = (512 + per - 1) / per, ctas = 2048 * splits, waves = (ctas + 131) / 132;
    cr_expect_eq(splits, 3, "4096 x 128K: %lld splits of %lld tiles, expected 3", (long long)splits, (long long)per);
    cr_expect((double)ctas / (double)(waves * 132) >= 0.99, "%lld CTAs in %lld waves of 132", (long long)ctas,
              (long long)waves);
    static const int64_t tiles_[] = {1, 2, 7, 64, 512, 683, 4096}, rows_[] = {1, 3, 64, 2048, 100000},
                         slots_[] = {1, 132, 264};
    for (size_t a = 0; a < sizeof tiles_ / sizeof *tiles_; a++)
        for (size_t b = 0; b < sizeof rows_ / sizeof *rows_; b++)
            for (size_t c = 0; c < sizeof slots_ / sizeof *slots_; c++) {
                const int64_t t = tiles_[a], r = rows_[b], s = slots_[c], kt = 192;
                const int64_t got = hae_index_split_tiles(t, r, s, kt, 512);
                int64_t lo = (8 * s + r - 1) / r;
                lo = lo < 1 ? 1 : lo > t ? t : lo;
                const int64_t fewest = (t + lo - 1) / lo;
                cr_expect(got >= 1 && got <= t, "tiles %lld rows %lld slots %lld: %lld tiles a CTA", (long long)t,
                          (long long)r, (long long)s, (long long)got);
                cr_expect(got <= fewest && split_cost(t, r, s, kt, got) <= split_cost(t, r, s, kt, fewest),
                          "tiles %lld rows %lld slots %lld: %lld tiles a CTA against %lld", (long long)t, (long long)r,
                          (long long)s, (long long)got, (long long)fewest);
            }
}

/* Gradients of the training ops and of a whole model against central finite differences in float64.
 *
 * Each op's forward is written again here in double; for a fixed random weighting c of its outputs the loss
 * L = sum c y is differenced in double (step 1e-5 on inputs of order 1: truncation and rounding errors near
 * 1e-10), and the f32 backward, given dy = c, must match to f32 rounding. Outputs a backward adds into start
 * from random values, outputs it overwrites from NaN, so both contracts are checked too. The whole-model check
 * differences a float64 model written from the trainer's parameter names. The recurrence's chunk form is
 * differenced too, and held to the recurrent form over longer sequences and several chunk lengths. */
#include "testutil.h"

#include "../train/train_ops.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FD_STEP 1e-5

/* ---------------------------------------------------------------- helpers */

static double *dalloc(int64_t n) {
    double *p = calloc((size_t)n, sizeof(double));
    cr_assert(p);
    return p;
}
static float *falloc(int64_t n) {
    float *p = calloc((size_t)n, sizeof(float));
    cr_assert(p);
    return p;
}

/* n values uniform in [lo, hi), rounded to f32 so the f32 op and the double reference see the same inputs. */
static void fill_pair(float *f, double *d, int64_t n, tu_rng *r, double lo, double hi) {
    for (int64_t i = 0; i < n; i++) {
        f[i] = (float)tu_uniform(r, lo, hi);
        d[i] = f[i];
    }
}
static void poison(float *p, int64_t n) { memset(p, 0xFF, sizeof(float) * (size_t)n); }

/* A loss of the double inputs, for differencing. */
typedef double (*loss_fn)(void *ctx);

/* The elements differenced: all of a small tensor; of a large one the first and last 16 and FD_SAMPLES - 32
 * drawn uniformly (fd holds NAN elsewhere and those are not compared). */
#define FD_SAMPLES 256

/* Central differences of loss over x[0..n): into fd. */
static void finite_diff(loss_fn f, void *ctx, double *x, int64_t n, double *fd) {
    tu_rng r = tu_rng_make((uint64_t)n);
    for (int64_t i = 0; i < n; i++) fd[i] = n <= FD_SAMPLES || i < 16 || i >= n - 16 ? 0.0 : NAN;
    for (int k = 0; n > FD_SAMPLES && k < FD_SAMPLES - 32; k++) fd[(int64_t)tu_uniform(&r, 16, (double)(n - 16))] = 0.0;
    for (int64_t i = 0; i < n; i++) {
        if (isnan(fd[i])) continue;
        const double x0 = x[i];
        x[i] = x0 + FD_STEP;
        const double up = f(ctx);
        x[i] = x0 - FD_STEP;
        const double dn = f(ctx);
        x[i] = x0;
        fd[i] = (up - dn) / (2 * FD_STEP);
    }
}

static double weighted(const double *c, const double *y, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += c[i] * y[i];
    return s;
}

static double max_abs(const double *x, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) m = fabs(x[i]) > m ? fabs(x[i]) : m;
    return m;
}

/* got (f32, minus `base` when the op added into it) against fd where differenced: f32 rounding of sums of a few
 * hundred terms. */
static void expect_grad(const char *what, const char *shape, const float *got, const float *base, const double *fd,
                        int64_t n) {
    float *d = falloc(n);
    double *ref = dalloc(n);
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++) {
        if (isnan(fd[i])) continue;
        d[m] = base ? got[i] - base[i] : got[i];
        ref[m++] = fd[i];
    }
    char why[256];
    const double scale = max_abs(ref, m);
    bool ok = tu_close(d, HAE_F32, ref, m, 2e-5, 1e-5 * scale + 1e-7, 1e-4, why, sizeof why);
    cr_expect(ok, "%s %s: backward vs finite differences at %lld of %lld elements: %s", what, shape, (long long)m,
              (long long)n, why);
    if (getenv("HAE_TEST_VERBOSE")) fprintf(stderr, "%-22s %-50s %s\n", what, shape, why);
    free(d), free(ref);
}

static void expect_fwd(const char *what, const char *shape, const float *got, const double *ref, int64_t n) {
    char why[256];
    bool ok = tu_close(got, HAE_F32, ref, n, 1e-6, 1e-6 * max_abs(ref, n) + 1e-7, 1e-5, why, sizeof why);
    cr_expect(ok, "%s %s: f32 forward vs float64: %s", what, shape, why);
}

/* ---------------------------------------------------------------- float64 references */

static void ref_rmsnorm(const double *x, const double *w, int64_t N, int64_t D, double eps, double *y) {
    for (int64_t i = 0; i < N; i++) {
        double ss = 0;
        for (int64_t d = 0; d < D; d++) ss += x[i * D + d] * x[i * D + d];
        const double r = 1.0 / sqrt(ss / (double)D + eps);
        for (int64_t d = 0; d < D; d++) y[i * D + d] = x[i * D + d] * r * w[d];
    }
}

static void ref_linear(const double *x, const double *W, int64_t N, int64_t I, int64_t O, double *y) {
    for (int64_t n = 0; n < N; n++)
        for (int64_t o = 0; o < O; o++) {
            double s = 0;
            for (int64_t i = 0; i < I; i++) s += x[n * I + i] * W[o * I + i];
            y[n * O + o] = s;
        }
}

/* In place, with the f32 angle tables the trainer uses (checked against double angles in rope_table). */
static void ref_rope(double *x, int64_t B, int64_t T, int64_t H, int64_t D, int64_t ld, int rot, const float *cs,
                     const float *sn) {
    const int half = rot / 2;
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++)
            for (int64_t h = 0; h < H; h++) {
                double *v = x + (b * T + t) * ld + h * D;
                for (int i = 0; i < half; i++) {
                    const double c = cs[t * half + i], s = sn[t * half + i], x1 = v[i], x2 = v[i + half];
                    v[i] = x1 * c - x2 * s;
                    v[i + half] = x2 * c + x1 * s;
                }
            }
}

/* Causal (windowed, or over s->allow) softmax attention; psum [B, T, T] (or NULL) gets the probabilities summed
 * over the heads. */
static void ref_attention(const hae_tr_attn_shape *s, const double *qkv, double *out, double *psum) {
    const int64_t T = s->T, Dh = s->Dh, Dv = s->Dv ? s->Dv : Dh, ld = (s->Hq + s->Hkv) * Dh + s->Hkv * Dv;
    const int64_t G = s->Hq / s->Hkv;
    double *p = dalloc(T);
    if (psum) memset(psum, 0, sizeof(double) * (size_t)(s->B * T * T));
    for (int64_t b = 0; b < s->B; b++)
        for (int64_t h = 0; h < s->Hq; h++)
            for (int64_t t = 0; t < T; t++) {
                const int64_t g = h / G, lo = s->window > 0 && t - s->window + 1 > 0 ? t - s->window + 1 : 0;
                const double *q = qkv + (b * T + t) * ld + h * Dh;
                const uint8_t *allow = s->allow ? s->allow + (b * T + t) * T : NULL;
                double mx = -INFINITY, sum = 0;
                for (int64_t j = lo; j <= t; j++) {
                    p[j] = -INFINITY;
                    if (allow && !allow[j]) continue;
                    const double *k = qkv + (b * T + j) * ld + (s->Hq + g) * Dh;
                    double dot = 0;
                    for (int64_t d = 0; d < Dh; d++) dot += q[d] * k[d];
                    p[j] = s->scale * dot;
                    mx = p[j] > mx ? p[j] : mx;
                }
                for (int64_t j = lo; j <= t; j++) sum += p[j] = exp(p[j] - mx);
                if (psum)
                    for (int64_t j = lo; j <= t; j++) psum[(b * T + t) * T + j] += p[j] / sum;
                double *o = out + (b * T + t) * s->Hq * Dv + h * Dv;
                for (int64_t d = 0; d < Dv; d++) o[d] = 0;
                for (int64_t j = lo; j <= t; j++) {
                    const double *v = qkv + (b * T + j) * ld + (s->Hq + s->Hkv) * Dh + g * Dv;
                    for (int64_t d = 0; d < Dv; d++) o[d] += p[j] / sum * v[d];
                }
            }
    free(p);
}

static void ref_swiglu(const double *gu, int64_t N, int64_t F, double *a) {
    for (int64_t n = 0; n < N; n++)
        for (int64_t f = 0; f < F; f++) {
            const double g = gu[n * 2 * F + f], u = gu[n * 2 * F + F + f];
            a[n * F + f] = g / (1.0 + exp(-g)) * u;
        }
}

/* mean over rows of logsumexp(z) - z[target] */
static double ref_xent(const double *z, const int32_t *target, int64_t S, int64_t V) {
    double total = 0;
    for (int64_t r = 0; r < S; r++) {
        double mx = -INFINITY, sum = 0;
        for (int64_t v = 0; v < V; v++) mx = z[r * V + v] > mx ? z[r * V + v] : mx;
        for (int64_t v = 0; v < V; v++) sum += exp(z[r * V + v] - mx);
        total += mx + log(sum) - z[r * V + target[r]];
    }
    return total / (double)S;
}

/* ---------------------------------------------------------------- ops */

typedef struct {
    int64_t N, D;
    double *x, *w, *c, *y;
} norm_case;

static double norm_loss(void *p) {
    norm_case *k = p;
    ref_rmsnorm(k->x, k->w, k->N, k->D, 1e-6, k->y);
    return weighted(k->c, k->y, k->N * k->D);
}

Test(train_grad, rmsnorm) {
    const int64_t shapes[][2] = {{1, 2}, {3, 7}, {5, 64}, {9, 130}};
    hae_backend *be = tu_cpu();
    for (int s = 0; s < 4; s++) {
        const int64_t N = shapes[s][0], D = shapes[s][1];
        char shape[64];
        snprintf(shape, sizeof shape, "[N %lld, D %lld]", (long long)N, (long long)D);
        tu_rng r = tu_rng_make(10 + (uint64_t)s);
        norm_case k = {N, D, dalloc(N * D), dalloc(D), dalloc(N * D), dalloc(N * D)};
        float *x = falloc(N * D), *w = falloc(D), *c = falloc(N * D), *y = falloc(N * D), *rstd = falloc(N);
        float *dx = falloc(N * D), *dw = falloc(D), *dx0 = falloc(N * D), *dw0 = falloc(D);
        fill_pair(x, k.x, N * D, &r, -2, 2);
        fill_pair(w, k.w, D, &r, 0.5, 1.5);
        fill_pair(c, k.c, N * D, &r, -1, 1);
        double *junk = dalloc(N * D);
        fill_pair(dx0, junk, N * D, &r, -1, 1);
        fill_pair(dw0, junk, D, &r, -1, 1);
        memcpy(dx, dx0, sizeof(float) * (size_t)(N * D));
        memcpy(dw, dw0, sizeof(float) * (size_t)D);
        poison(y, N * D), poison(rstd, N);
        hae_tr_rmsnorm_fwd(be, x, w, N, D, 1e-6f, y, rstd);
        norm_loss(&k);
        expect_fwd("rmsnorm", shape, y, k.y, N * D);
        hae_tr_rmsnorm_bwd(be, x, w, rstd, c, N, D, dx, dw);
        double *fd = dalloc(N * D);
        finite_diff(norm_loss, &k, k.x, N * D, fd);
        expect_grad("rmsnorm dx", shape, dx, dx0, fd, N * D);
        finite_diff(norm_loss, &k, k.w, D, fd);
        expect_grad("rmsnorm dw", shape, dw, dw0, fd, D);
        free(fd), free(junk), free(k.x), free(k.w), free(k.c), free(k.y);
        free(x), free(w), free(c), free(y), free(rstd), free(dx), free(dw), free(dx0), free(dw0);
    }
    hae_backend_destroy(be);
}

typedef struct {
    int64_t N, I, O;
    double *x, *W, *c, *y;
} linear_case;

static double linear_loss(void *p) {
    linear_case *k = p;
    ref_linear(k->x, k->W, k->N, k->I, k->O, k->y);
    return weighted(k->c, k->y, k->N * k->O);
}

/* Shapes across the GEMM's 64-wide tiles and 256-deep blocks, a single row, and both dx contracts. */
Test(train_grad, linear) {
    const int64_t shapes[][3] = {{1, 1, 1}, {3, 5, 7}, {70, 33, 65}, {129, 260, 17}};
    hae_backend *be = tu_cpu();
    for (int s = 0; s < 4; s++) {
        const int64_t N = shapes[s][0], I = shapes[s][1], O = shapes[s][2];
        const bool acc = s % 2;
        char shape[96];
        snprintf(shape, sizeof shape, "[N %lld, in %lld, out %lld, dx %s]", (long long)N, (long long)I, (long long)O,
                 acc ? "+=" : "=");
        tu_rng r = tu_rng_make(20 + (uint64_t)s);
        linear_case k = {N, I, O, dalloc(N * I), dalloc(O * I), dalloc(N * O), dalloc(N * O)};
        float *x = falloc(N * I), *W = falloc(O * I), *c = falloc(N * O), *y = falloc(N * O);
        float *dx = falloc(N * I), *dW = falloc(O * I), *dx0 = falloc(N * I), *dW0 = falloc(O * I);
        double *junk = dalloc(N * I + O * I);
        fill_pair(x, k.x, N * I, &r, -1, 1);
        fill_pair(W, k.W, O * I, &r, -1, 1);
        fill_pair(c, k.c, N * O, &r, -1, 1);
        fill_pair(dx0, junk, N * I, &r, -1, 1);
        fill_pair(dW0, junk, O * I, &r, -1, 1);
        if (acc) memcpy(dx, dx0, sizeof(float) * (size_t)(N * I));
        else poison(dx, N * I);
        memcpy(dW, dW0, sizeof(float) * (size_t)(O * I));
        poison(y, N * O);
        cr_assert_eq(hae_tr_linear_fwd(be, HAE_F32, x, W, N, I, O, y, false), HAE_OK, "%s", hae_last_error());
        linear_loss(&k);
        expect_fwd("linear", shape, y, k.y, N * O);
        hae_tr_linear_bwd(be, HAE_F32, x, W, c, N, I, O, dx, acc, dW);
        double *fd = dalloc(N * I > O * I ? N * I : O * I);
        finite_diff(linear_loss, &k, k.x, N * I, fd);
        expect_grad("linear dx", shape, dx, acc ? dx0 : NULL, fd, N * I);
        finite_diff(linear_loss, &k, k.W, O * I, fd);
        expect_grad("linear dW", shape, dW, dW0, fd, O * I);
        free(fd), free(junk), free(k.x), free(k.W), free(k.c), free(k.y);
        free(x), free(W), free(c), free(y), free(dx), free(dW), free(dx0), free(dW0);
    }
    hae_backend_destroy(be);
}

static void transpose(const double *a, int64_t rows, int64_t cols, double *out) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) out[c * rows + r] = a[r * cols + c];
}

static double bf16_of(float v) { return (double)hae_bf16_to_f32(hae_f32_to_bf16(v)); }

/* train.matmul bf16: each product's operands rounded to bf16 (nearest even), summed in fp32. The forward and both
 * backward products match a float64 sum over the rounded operands to fp32 rounding, and differ from the f32
 * products by bf16's rounding (so a path that forgot to round fails); products in f16 are refused. */
Test(train_grad, linear_bf16_products) {
    const int64_t N = 37, I = 48, O = 29;
    hae_backend *be = tu_cpu();
    tu_rng r = tu_rng_make(77);
    float *x = falloc(N * I), *W = falloc(O * I), *dy = falloc(N * O), *y = falloc(N * O), *y32 = falloc(N * O);
    float *dx = falloc(N * I), *dW = falloc(O * I);
    double *rx = dalloc(N * I), *rW = dalloc(O * I), *rdy = dalloc(N * O), *ref = dalloc(N * I > O * I ? N * I : O * I);
    double *junk = dalloc(N * I + O * I + N * O);
    fill_pair(x, junk, N * I, &r, -1, 1);
    fill_pair(W, junk, O * I, &r, -1, 1);
    fill_pair(dy, junk, N * O, &r, -1, 1);
    for (int64_t i = 0; i < N * I; i++) rx[i] = bf16_of(x[i]);
    for (int64_t i = 0; i < O * I; i++) rW[i] = bf16_of(W[i]);
    for (int64_t i = 0; i < N * O; i++) rdy[i] = bf16_of(dy[i]);
    poison(y, N * O), poison(y32, N * O), poison(dx, N * I);
    cr_assert_eq(hae_tr_linear_fwd(be, HAE_BF16, x, W, N, I, O, y, false), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(hae_tr_linear_fwd(be, HAE_F32, x, W, N, I, O, y32, false), HAE_OK, "%s", hae_last_error());
    ref_linear(rx, rW, N, I, O, ref);
    expect_fwd("linear bf16 y", "[37, 48] x [29, 48]^T", y, ref, N * O);
    double diff = 0, norm = 0;
    for (int64_t i = 0; i < N * O; i++) diff += ((double)y[i] - y32[i]) * ((double)y[i] - y32[i]), norm += ref[i] * ref[i];
    cr_expect(sqrt(diff / norm) > 1e-4, "bf16 products within %.3g of f32 ones: the operands were not rounded",
              sqrt(diff / norm));
    memset(dW, 0, sizeof(float) * (size_t)(O * I));
    cr_assert_eq(hae_tr_linear_bwd(be, HAE_BF16, x, W, dy, N, I, O, dx, false, dW), HAE_OK, "%s", hae_last_error());
    double *t1 = dalloc(N * O > O * I ? N * O : O * I), *t2 = dalloc(N * I);
    transpose(rW, O, I, t1); /* dx = dy W: rows of dy against rows of W^T */
    ref_linear(rdy, t1, N, O, I, ref);
    expect_fwd("linear bf16 dx", "[37, 29] x [29, 48]", dx, ref, N * I);
    transpose(rdy, N, O, t1); /* dW = dy^T x: rows of dy^T against rows of x^T */
    transpose(rx, N, I, t2);
    ref_linear(t1, t2, O, N, I, ref);
    expect_fwd("linear bf16 dW", "[37, 29]^T x [37, 48]", dW, ref, O * I);
    cr_expect_eq(hae_tr_linear_fwd(be, HAE_F16, x, W, N, I, O, y, false), HAE_ERR_INVALID, "f16 products ran");
    cr_expect(strstr(hae_last_error(), "f16") && strstr(hae_last_error(), "bf16"), "%s", hae_last_error());
    free(x), free(W), free(dy), free(y), free(y32), free(dx), free(dW);
    free(rx), free(rW), free(rdy), free(ref), free(junk), free(t1), free(t2);
    hae_backend_destroy(be);
}

/* The angle tables against double angles, then the rotation and its transpose. */
Test(train_grad, rope) {
    const int64_t B = 2, T = 9, H = 3, D = 10, ld = 37;
    const int rots[] = {2, 6, 10};
    hae_backend *be = tu_cpu();
    for (int s = 0; s < 3; s++) {
        const int rot = rots[s], half = rot / 2;
        char shape[96];
        snprintf(shape, sizeof shape, "[B %lld, T %lld, H %lld, D %lld, row %lld, rot %d]", (long long)B, (long long)T,
                 (long long)H, (long long)D, (long long)ld, rot);
        float *cs = falloc(T * half), *sn = falloc(T * half);
        hae_tr_rope_table(T, rot, 500.0f, cs, sn);
        for (int64_t t = 0; t < T; t++)
            for (int i = 0; i < half; i++) {
                const double ang = (double)t * pow(500.0, -2.0 * i / rot);
                cr_expect(fabs(cs[t * half + i] - cos(ang)) < 2e-6 && fabs(sn[t * half + i] - sin(ang)) < 2e-6,
                          "rope table %s: position %lld pair %d: cos %g sin %g, angle %g", shape, (long long)t, i,
                          (double)cs[t * half + i], (double)sn[t * half + i], ang);
            }
        tu_rng r = tu_rng_make(30 + (uint64_t)s);
        const int64_t n = B * T * ld;
        float *x = falloc(n), *c = falloc(n);
        double *xd = dalloc(n), *cd = dalloc(n);
        fill_pair(x, xd, n, &r, -1, 1);
        fill_pair(c, cd, n, &r, -1, 1);
        hae_tr_rope(be, x, B, T, H, D, ld, rot, cs, sn, false);
        ref_rope(xd, B, T, H, D, ld, rot, cs, sn);
        expect_fwd("rope", shape, x, xd, n);
        /* L = c . R x, so dL/dx = R^T c: the inverse rotation of c (columns outside the heads pass through) */
        double *fd = dalloc(n);
        for (int64_t i = 0; i < n; i++) {
            memset(xd, 0, sizeof(double) * (size_t)n);
            xd[i] = 1;
            ref_rope(xd, B, T, H, D, ld, rot, cs, sn);
            fd[i] = weighted(cd, xd, n);
        }
        hae_tr_rope(be, c, B, T, H, D, ld, rot, cs, sn, true);
        expect_grad("rope inverse", shape, c, NULL, fd, n);
        free(cs), free(sn), free(x), free(c), free(xd), free(cd), free(fd);
    }
    hae_backend_destroy(be);
}

typedef struct {
    hae_tr_attn_shape s;
    double *qkv, *c, *out;
} attn_case;

static double attn_loss(void *p) {
    attn_case *k = p;
    ref_attention(&k->s, k->qkv, k->out, NULL);
    return weighted(k->c, k->out, k->s.B * k->s.T * k->s.Hq * (k->s.Dv ? k->s.Dv : k->s.Dh));
}

Test(train_grad, attention) {
    const hae_tr_attn_shape shapes[] = {
        {.B = 1, .T = 1, .Hq = 1, .Hkv = 1, .Dh = 3, .window = 0, .scale = 0.6f},
        {.B = 2, .T = 6, .Hq = 4, .Hkv = 2, .Dh = 5, .window = 0, .scale = 0.45f},
        {.B = 2, .T = 9, .Hq = 3, .Hkv = 1, .Dh = 4, .window = 3, .scale = 0.5f},
        {.B = 1, .T = 13, .Hq = 2, .Hkv = 2, .Dh = 9, .window = 1, .scale = 0.33f},
        {.B = 2, .T = 7, .Hq = 3, .Hkv = 3, .Dh = 6, .Dv = 4, .window = 0, .scale = 0.4f}, /* mla: v dim != q/k dim */
    };
    hae_backend *be = tu_cpu();
    for (int s = 0; s < 5; s++) {
        const hae_tr_attn_shape *sh = &shapes[s];
        const int64_t T = sh->T, Dv = sh->Dv ? sh->Dv : sh->Dh, ld = (sh->Hq + sh->Hkv) * sh->Dh + sh->Hkv * Dv;
        const int64_t n = sh->B * T * ld, no = sh->B * T * sh->Hq * Dv;
        char shape[128];
        snprintf(shape, sizeof shape, "[B %lld, T %lld, Hq %lld, Hkv %lld, Dh %lld, Dv %lld, window %lld]",
                 (long long)sh->B, (long long)T, (long long)sh->Hq, (long long)sh->Hkv, (long long)sh->Dh, (long long)Dv,
                 (long long)sh->window);
        tu_rng r = tu_rng_make(40 + (uint64_t)s);
        attn_case k = {*sh, dalloc(n), dalloc(no), dalloc(no)};
        float *qkv = falloc(n), *c = falloc(no), *out = falloc(no), *P = falloc(sh->B * sh->Hq * T * T), *dqkv = falloc(n);
        fill_pair(qkv, k.qkv, n, &r, -1.5, 1.5);
        fill_pair(c, k.c, no, &r, -1, 1);
        poison(out, no), poison(P, sh->B * sh->Hq * T * T), poison(dqkv, n);
        hae_tr_attention_fwd(be, sh, qkv, P, out);
        attn_loss(&k);
        expect_fwd("attention", shape, out, k.out, no);
        for (int64_t row = 0; row < sh->B * sh->Hq * T; row++) { /* rows of P: a distribution over the mask */
            const int64_t t = row % T, lo = sh->window > 0 && t - sh->window + 1 > 0 ? t - sh->window + 1 : 0;
            double sum = 0;
            bool outside = true;
            for (int64_t j = 0; j < T; j++) {
                sum += P[row * T + j];
                if (j < lo || j > t) outside = outside && P[row * T + j] == 0.0f;
            }
            cr_expect(fabs(sum - 1) < 1e-5 && outside, "attention %s: P row %lld sums to %.9g%s", shape, (long long)row,
                      sum, outside ? "" : " or is non-zero outside its mask");
        }
        hae_tr_attention_bwd(be, sh, qkv, P, out, c, dqkv);
        double *fd = dalloc(n);
        finite_diff(attn_loss, &k, k.qkv, n, fd);
        expect_grad("attention dqkv", shape, dqkv, NULL, fd, n);
        free(fd), free(k.qkv), free(k.c), free(k.out), free(qkv), free(c), free(out), free(P), free(dqkv);
    }
    hae_backend_destroy(be);
}

typedef struct {
    int64_t N, F;
    double *gu, *c, *a;
} swiglu_case;

static double swiglu_loss(void *p) {
    swiglu_case *k = p;
    ref_swiglu(k->gu, k->N, k->F, k->a);
    return weighted(k->c, k->a, k->N * k->F);
}

Test(train_grad, swiglu) {
    const int64_t shapes[][2] = {{1, 1}, {4, 9}, {17, 70}};
    hae_backend *be = tu_cpu();
    for (int s = 0; s < 3; s++) {
        const int64_t N = shapes[s][0], F = shapes[s][1];
        char shape[64];
        snprintf(shape, sizeof shape, "[N %lld, F %lld]", (long long)N, (long long)F);
        tu_rng r = tu_rng_make(50 + (uint64_t)s);
        swiglu_case k = {N, F, dalloc(N * 2 * F), dalloc(N * F), dalloc(N * F)};
        float *gu = falloc(N * 2 * F), *c = falloc(N * F), *a = falloc(N * F), *dgu = falloc(N * 2 * F);
        fill_pair(gu, k.gu, N * 2 * F, &r, -6, 6);
        fill_pair(c, k.c, N * F, &r, -1, 1);
        poison(a, N * F), poison(dgu, N * 2 * F);
        hae_tr_swiglu_fwd(be, gu, N, F, a);
        swiglu_loss(&k);
        expect_fwd("swiglu", shape, a, k.a, N * F);
        hae_tr_swiglu_bwd(be, gu, c, N, F, dgu);
        double *fd = dalloc(N * 2 * F);
        finite_diff(swiglu_loss, &k, k.gu, N * 2 * F, fd);
        expect_grad("swiglu dgu", shape, dgu, NULL, fd, N * 2 * F);
        free(fd), free(k.gu), free(k.c), free(k.a), free(gu), free(c), free(a), free(dgu);
    }
    hae_backend_destroy(be);
}

/* The linear family's recurrence in double, S_0 = 0 (train_ops.h's math), and sum c o as the loss. */
typedef struct {
    hae_tr_delta_shape s;
    double *q, *k, *v, *g, *beta, *c, *o;
} delta_case;

static double delta_loss(void *p) {
    delta_case *d = p;
    const hae_tr_delta_shape *s = &d->s;
    const int64_t K = s->K, V = s->V;
    double *S = dalloc(K * V);
    for (int64_t b = 0; b < s->B; b++)
        for (int64_t h = 0; h < s->H; h++) {
            memset(S, 0, sizeof(double) * (size_t)(K * V));
            for (int64_t t = 0; t < s->T; t++) {
                const int64_t r = (b * s->T + t) * s->H + h;
                for (int64_t i = 0; i < K; i++) {
                    const double a = d->g ? exp(s->channel_decay ? d->g[r * K + i] : d->g[r]) : 1.0;
                    for (int64_t j = 0; j < V; j++) S[i * V + j] *= a;
                }
                for (int64_t j = 0; j < V; j++) {
                    double u = d->v[r * V + j];
                    if (d->beta) {
                        double sk = 0;
                        for (int64_t i = 0; i < K; i++) sk += S[i * V + j] * d->k[r * K + i];
                        u = d->beta[r] * (d->v[r * V + j] - sk);
                    }
                    for (int64_t i = 0; i < K; i++) S[i * V + j] += d->k[r * K + i] * u;
                }
                for (int64_t j = 0; j < V; j++) {
                    double acc = 0;
                    for (int64_t i = 0; i < K; i++) acc += S[i * V + j] * d->q[r * K + i];
                    d->o[r * V + j] = s->scale * acc;
                }
            }
        }
    free(S);
    return weighted(d->c, d->o, s->B * s->T * s->H * V);
}

/* Every member of the family: kda (channel decay, delta), gdn (head decay, delta), deltanet (delta), gla
 * (channel decay), mamba2/retnet (head decay), linear (neither); L2-normalised keys as the delta rule uses them,
 * decays log-uniform in [-0.5, -0.01]; token by token and in the chunk form over chunks of 3 (the last short). */
Test(train_grad, delta_recurrence) {
    static const struct {
        const char *name;
        int decay; /* 0 none, 1 head, 2 channel */
        bool delta;
    } kinds[] = {{"kda", 2, true}, {"gdn", 1, true}, {"deltanet", 0, true}, {"gla", 2, false}, {"mamba2", 1, false},
                 {"linear", 0, false}};
    hae_backend *be = tu_cpu();
    for (size_t kc = 0; kc < 2 * sizeof kinds / sizeof *kinds; kc++) {
        const size_t ki = kc / 2;
        const hae_tr_delta_shape s = {.B = 2, .T = 7, .H = 2, .K = 5, .V = 4, .channel_decay = kinds[ki].decay == 2,
                                      .scale = 0.45f, .chunk = kc % 2 ? 3 : 0};
        const int64_t NK = s.B * s.T * s.H * s.K, NV = s.B * s.T * s.H * s.V, NH = s.B * s.T * s.H;
        const int64_t NG = kinds[ki].decay == 2 ? NK : NH;
        char shape[96];
        snprintf(shape, sizeof shape, "%s [B 2, T 7, H 2, K 5, V 4, chunk %lld]", kinds[ki].name, (long long)s.chunk);
        tu_rng r = tu_rng_make(90 + ki);
        delta_case d = {s, dalloc(NK), dalloc(NK), dalloc(NV), kinds[ki].decay ? dalloc(NG) : NULL,
                        kinds[ki].delta ? dalloc(NH) : NULL, dalloc(NV), dalloc(NV)};
        float *q = falloc(NK), *k = falloc(NK), *v = falloc(NV), *g = d.g ? falloc(NG) : NULL;
        float *beta = d.beta ? falloc(NH) : NULL, *c = falloc(NV), *o = falloc(NV);
        float *S = falloc(s.B * s.H * s.T * s.K * s.V), *dq = falloc(NK), *dk = falloc(NK), *dv = falloc(NV);
        float *dg = d.g ? falloc(NG) : NULL, *db = d.beta ? falloc(NH) : NULL;
        fill_pair(q, d.q, NK, &r, -1, 1);
        fill_pair(v, d.v, NV, &r, -1, 1);
        fill_pair(c, d.c, NV, &r, -1, 1);
        for (int64_t row = 0; row < NH; row++) { /* unit keys */
            double n2 = 0;
            float kv[5];
            for (int i = 0; i < 5; i++) kv[i] = (float)tu_uniform(&r, -1, 1), n2 += (double)kv[i] * kv[i];
            for (int i = 0; i < 5; i++) k[row * 5 + i] = (float)(kv[i] / sqrt(n2)), d.k[row * 5 + i] = k[row * 5 + i];
        }
        if (g) fill_pair(g, d.g, NG, &r, -0.5, -0.01);
        if (beta) fill_pair(beta, d.beta, NH, &r, 0.1, 0.95);
        poison(o, NV), poison(dq, NK), poison(dk, NK), poison(dv, NV);
        if (dg) poison(dg, NG);
        if (db) poison(db, NH);
        cr_assert_eq(hae_tr_delta_fwd(be, &s, q, k, v, g, beta, S, o), HAE_OK, "%s", hae_last_error());
        delta_loss(&d);
        expect_fwd("delta", shape, o, d.o, NV);
        cr_assert_eq(hae_tr_delta_bwd(be, &s, q, k, v, g, beta, S, c, dq, dk, dv, dg, db), HAE_OK, "%s",
                     hae_last_error());
        double *fd = dalloc(NK > NV ? NK : NV);
        const struct {
            const char *what;
            double *x;
            const float *got;
            int64_t n;
        } wrt[] = {{"delta dq", d.q, dq, NK}, {"delta dk", d.k, dk, NK}, {"delta dv", d.v, dv, NV},
                   {"delta dg", d.g, dg, NG}, {"delta dbeta", d.beta, db, NH}};
        for (size_t w = 0; w < sizeof wrt / sizeof *wrt; w++) {
            if (!wrt[w].x) continue;
            finite_diff(delta_loss, &d, wrt[w].x, wrt[w].n, fd);
            expect_grad(wrt[w].what, shape, wrt[w].got, NULL, fd, wrt[w].n);
        }
        free(fd), free(d.q), free(d.k), free(d.v), free(d.g), free(d.beta), free(d.c), free(d.o);
        free(q), free(k), free(v), free(g), free(beta), free(c), free(o), free(S), free(dq), free(dk), free(dv), free(dg),
            free(db);
    }
    hae_backend_destroy(be);
}

/* The conv and the L2 norm in double, each with sum c y as the loss. */
typedef struct {
    int64_t B, T, C, W;
    bool silu;
    double *x, *w, *c, *y;
} conv_case;

static double conv_loss(void *p) {
    conv_case *k = p;
    for (int64_t b = 0; b < k->B; b++)
        for (int64_t t = 0; t < k->T; t++)
            for (int64_t ch = 0; ch < k->C; ch++) {
                double s = 0;
                for (int64_t w = 0; w < k->W; w++) {
                    const int64_t u = t + w - (k->W - 1);
                    if (u >= 0) s += k->w[ch * k->W + w] * k->x[(b * k->T + u) * k->C + ch];
                }
                k->y[(b * k->T + t) * k->C + ch] = k->silu ? s / (1.0 + exp(-s)) : s;
            }
    return weighted(k->c, k->y, k->B * k->T * k->C);
}

typedef struct {
    int64_t N, D;
    double eps, *x, *c, *y;
} l2_case;

static double l2_loss(void *p) {
    l2_case *k = p;
    for (int64_t i = 0; i < k->N; i++) {
        double ss = 0;
        for (int64_t d = 0; d < k->D; d++) ss += k->x[i * k->D + d] * k->x[i * k->D + d];
        for (int64_t d = 0; d < k->D; d++) k->y[i * k->D + d] = k->x[i * k->D + d] / sqrt(ss + k->eps);
    }
    return weighted(k->c, k->y, k->N * k->D);
}

/* Widths 1 (a scale), 4 (the layers') and one longer than the sequence; with and without SiLU; then the L2 norm. */
/* State checkpoints (every C tokens, the rest recomputed in the backward) give the same bits as keeping every
 * state: the outputs, every gradient, and the checkpoints are the states at the chunks' ends. Chunks that divide T
 * and that do not, C = 2 and C = T - 1, every kind of decay and both updates. */
Test(train_grad, delta_checkpoints_same_bits) {
    static const int decays[] = {2, 1, 0, 2};
    static const bool deltas[] = {true, true, true, false};
    static const int64_t everys[] = {2, 5, 8, 36};
    hae_backend *be = tu_cpu();
    for (int ki = 0; ki < 4; ki++)
        for (int ei = 0; ei < 4; ei++) {
            const hae_tr_delta_shape all = {.B = 2, .T = 37, .H = 2, .K = 6, .V = 5, .channel_decay = decays[ki] == 2,
                                            .scale = 0.4f};
            hae_tr_delta_shape ck = all;
            ck.every = everys[ei];
            const int64_t NK = all.B * all.T * all.H * all.K, NV = all.B * all.T * all.H * all.V, NH = all.B * all.T * all.H;
            const int64_t NG = decays[ki] == 2 ? NK : NH, KV = all.K * all.V, C = everys[ei], nck = (37 + C - 1) / C;
            cr_assert_eq(hae_tr_delta_slots(&ck), nck + C, "C %lld: %lld slots", (long long)C,
                         (long long)hae_tr_delta_slots(&ck));
            cr_assert_eq(hae_tr_delta_slots(&all), 37);
            tu_rng r = tu_rng_make(300 + (uint64_t)(ki * 4 + ei));
            float *in = falloc(2 * NK + 2 * NV + NG + NH), *q = in, *k = q + NK, *v = k + NK, *c = v + NV, *g = c + NV,
                  *beta = g + NG;
            tu_fill(in, HAE_F32, 2 * NK + 2 * NV, &r, -0.6, 0.6);
            tu_fill(g, HAE_F32, NG, &r, -0.5, -0.01);
            tu_fill(beta, HAE_F32, NH, &r, 0.1, 0.95);
            float *out[2][7];
            const int64_t n[7] = {NV, NK, NK, NV, NG, NH, all.B * all.H * (nck + C > 37 ? nck + C : 37) * KV};
            for (int side = 0; side < 2; side++) {
                const hae_tr_delta_shape *sh = side ? &ck : &all;
                for (int j = 0; j < 7; j++) poison(out[side][j] = falloc(n[j]), n[j]);
                float **o = out[side];
                cr_assert_eq(hae_tr_delta_fwd(be, sh, q, k, v, decays[ki] ? g : NULL, deltas[ki] ? beta : NULL, o[6],
                                              o[0]), HAE_OK, "%s", hae_last_error());
                if (side) /* the checkpoints, before the backward rewrites the chunk buffer */
                    for (int64_t it = 0; it < all.B * all.H; it++)
                        for (int64_t cc = 0; cc < nck; cc++) {
                            const int64_t t = cc + 1 < nck ? (cc + 1) * C - 1 : 36;
                            cr_expect(memcmp(o[6] + (it * (nck + C) + cc) * KV, out[0][6] + (it * 37 + t) * KV,
                                             sizeof(float) * (size_t)KV) == 0, "C %lld: checkpoint %lld of item %lld is not "
                                             "state %lld", (long long)C, (long long)cc, (long long)it, (long long)t);
                        }
                cr_assert_eq(hae_tr_delta_bwd(be, sh, q, k, v, decays[ki] ? g : NULL, deltas[ki] ? beta : NULL, o[6], c,
                                              o[1], o[2], o[3], decays[ki] ? o[4] : NULL, deltas[ki] ? o[5] : NULL),
                             HAE_OK, "%s", hae_last_error());
            }
            static const char *what[6] = {"o", "dq", "dk", "dv", "dg", "dbeta"};
            for (int j = 0; j < 6; j++) {
                if ((j == 4 && !decays[ki]) || (j == 5 && !deltas[ki])) continue;
                cr_expect(memcmp(out[0][j], out[1][j], sizeof(float) * (size_t)n[j]) == 0,
                          "decay %d, delta %d, C %lld: %s differs from keeping every state", decays[ki], deltas[ki],
                          (long long)C, what[j]);
            }
            for (int side = 0; side < 2; side++)
                for (int j = 0; j < 7; j++) free(out[side][j]);
            free(in);
        }
    hae_backend_destroy(be);
}

Test(train_grad, conv_and_l2norm) {
    hae_backend *be = tu_cpu();
    const int64_t widths[] = {1, 4, 9};
    for (int cs = 0; cs < 6; cs++) {
        const int64_t B = 2, T = 7, C = 5, W = widths[cs % 3], n = B * T * C;
        const bool silu = cs >= 3;
        char shape[96];
        snprintf(shape, sizeof shape, "[B 2, T 7, C 5, W %lld]%s", (long long)W, silu ? " silu" : "");
        tu_rng r = tu_rng_make(120 + (uint64_t)cs);
        conv_case k = {B, T, C, W, silu, dalloc(n), dalloc(C * W), dalloc(n), dalloc(n)};
        float *x = falloc(n), *w = falloc(C * W), *c = falloc(n), *pre = falloc(n), *y = falloc(n), *dx = falloc(n);
        float *dw = falloc(C * W), *dw0 = falloc(C * W);
        fill_pair(x, k.x, n, &r, -2, 2);
        fill_pair(w, k.w, C * W, &r, -1, 1);
        fill_pair(c, k.c, n, &r, -1, 1);
        for (int64_t i = 0; i < C * W; i++) dw[i] = dw0[i] = (float)tu_uniform(&r, -1, 1); /* dweight adds into these */
        poison(pre, n), poison(y, n), poison(dx, n);
        hae_tr_conv_fwd(be, x, w, B, T, C, W, silu, pre, y);
        conv_loss(&k);
        expect_fwd("conv", shape, y, k.y, n);
        { /* the engine's hae_conv_short from a zero history gives the same outputs */
            float *st = falloc(B * (W > 1 ? W - 1 : 1) * C), *ye = falloc(n);
            hae_conv_short_args ca = {.x = hae_tensor_3d(x, HAE_F32, HAE_CPU, B, T, C),
                                      .weight = hae_tensor_2d(w, HAE_F32, HAE_CPU, C, W),
                                      .state = hae_tensor_3d(st, HAE_F32, HAE_CPU, B, W - 1, C),
                                      .out = hae_tensor_3d(ye, HAE_F32, HAE_CPU, B, T, C), .silu = silu};
            cr_assert_eq(hae_conv_short(be, &ca), HAE_OK, "%s", hae_last_error());
            double *yd = dalloc(n);
            for (int64_t i = 0; i < n; i++) yd[i] = ye[i];
            expect_fwd("conv vs hae_conv_short", shape, y, yd, n);
            free(st), free(ye), free(yd);
        }
        cr_assert_eq(hae_tr_conv_bwd(be, x, w, pre, c, B, T, C, W, silu, dx, dw), HAE_OK, "%s", hae_last_error());
        double *fd = dalloc(n);
        finite_diff(conv_loss, &k, k.x, n, fd);
        expect_grad("conv dx", shape, dx, NULL, fd, n);
        finite_diff(conv_loss, &k, k.w, C * W, fd);
        expect_grad("conv dweight", shape, dw, dw0, fd, C * W);
        free(fd), free(k.x), free(k.w), free(k.c), free(k.y), free(x), free(w), free(c), free(pre), free(y), free(dx),
            free(dw), free(dw0);
    }
    const int64_t N = 6, D = 8;
    l2_case k = {N, D, 1e-6, dalloc(N * D), dalloc(N * D), dalloc(N * D)};
    float *x = falloc(N * D), *c = falloc(N * D), *y = falloc(N * D), *dx = falloc(N * D);
    tu_rng r = tu_rng_make(130);
    fill_pair(x, k.x, N * D, &r, -2, 2);
    fill_pair(c, k.c, N * D, &r, -1, 1);
    poison(y, N * D), poison(dx, N * D);
    hae_tr_l2norm_fwd(be, x, N, D, 1e-6f, y);
    l2_loss(&k);
    expect_fwd("l2norm", "[N 6, D 8]", y, k.y, N * D);
    hae_tr_l2norm_bwd(be, x, c, N, D, 1e-6f, dx);
    double *fd = dalloc(N * D);
    finite_diff(l2_loss, &k, k.x, N * D, fd);
    expect_grad("l2norm dx", "[N 6, D 8]", dx, NULL, fd, N * D);
    free(fd), free(k.x), free(k.c), free(k.y), free(x), free(c), free(y), free(dx);
    hae_backend_destroy(be);
}

/* The output norm and the decay gate in double, each with sum c y as the loss. */
typedef struct {
    int64_t N, D;
    double eps, *x, *gate, *w, *c, *y;
} gnorm_case;

static double gnorm_loss(void *p) {
    gnorm_case *k = p;
    for (int64_t i = 0; i < k->N; i++) {
        double ss = 0;
        for (int64_t d = 0; d < k->D; d++) ss += k->x[i * k->D + d] * k->x[i * k->D + d];
        const double r = 1.0 / sqrt(ss / (double)k->D + k->eps);
        for (int64_t d = 0; d < k->D; d++)
            k->y[i * k->D + d] = k->x[i * k->D + d] * r * k->w[d] / (1.0 + exp(-k->gate[i * k->D + d]));
    }
    return weighted(k->c, k->y, k->N * k->D);
}

typedef struct {
    int64_t N, HV, n;
    hae_gate_fn gate;
    double lb, *raw, *A_log, *bias, *c, *y;
} decay_case;

static double decay_loss(void *p) {
    decay_case *k = p;
    for (int64_t t = 0; t < k->N; t++)
        for (int64_t j = 0; j < k->HV; j++)
            for (int64_t i = 0; i < k->n; i++) {
                const int64_t e = (t * k->HV + j) * k->n + i;
                const double x = k->raw[e] + k->bias[j * k->n + i], A = exp(k->A_log[j]);
                k->y[e] = k->gate == HAE_GATE_SAFE ? k->lb / (1.0 + exp(-A * x)) : -A * log1p(exp(x));
            }
    return weighted(k->c, k->y, k->N * k->HV * k->n);
}

/* The gated output norm (and its equality with hae_gated_rmsnorm), then the decay gate: softplus and safe, per
 * channel and per head. */
Test(train_grad, gated_norm_and_decay) {
    hae_backend *be = tu_cpu();
    const int64_t N = 6, D = 8;
    gnorm_case k = {N, D, 1e-6, dalloc(N * D), dalloc(N * D), dalloc(D), dalloc(N * D), dalloc(N * D)};
    float *x = falloc(N * D), *g = falloc(N * D), *w = falloc(D), *c = falloc(N * D), *y = falloc(N * D), *ye = falloc(N * D);
    float *dx = falloc(N * D), *dg = falloc(N * D), *dw = falloc(D), *dw0 = falloc(D);
    tu_rng r = tu_rng_make(140);
    fill_pair(x, k.x, N * D, &r, -2, 2);
    fill_pair(g, k.gate, N * D, &r, -3, 3);
    fill_pair(w, k.w, D, &r, 0.5, 1.5);
    fill_pair(c, k.c, N * D, &r, -1, 1);
    for (int64_t d = 0; d < D; d++) dw[d] = dw0[d] = (float)tu_uniform(&r, -1, 1);
    poison(y, N * D), poison(dx, N * D), poison(dg, N * D);
    hae_tr_gated_norm_fwd(be, x, g, w, N, D, 1e-6f, y);
    gnorm_loss(&k);
    expect_fwd("gated norm", "[N 6, D 8]", y, k.y, N * D);
    hae_gated_rmsnorm_args ga = {.x = hae_tensor_3d(x, HAE_F32, HAE_CPU, N, 1, D), .gate = hae_tensor_3d(g, HAE_F32, HAE_CPU, N, 1, D),
                                 .weight = hae_tensor_1d(w, HAE_F32, HAE_CPU, D),
                                 .out = hae_tensor_3d(ye, HAE_F32, HAE_CPU, N, 1, D), .eps = 1e-6f};
    cr_assert_eq(hae_gated_rmsnorm(be, &ga), HAE_OK, "%s", hae_last_error());
    double *yd = dalloc(N * D);
    for (int64_t i = 0; i < N * D; i++) yd[i] = ye[i];
    expect_fwd("gated norm vs hae_gated_rmsnorm", "[N 6, D 8]", y, yd, N * D);
    hae_tr_gated_norm_bwd(be, x, g, w, c, N, D, 1e-6f, dx, dg, dw);
    double *fd = dalloc(N * D);
    finite_diff(gnorm_loss, &k, k.x, N * D, fd);
    expect_grad("gated norm dx", "[N 6, D 8]", dx, NULL, fd, N * D);
    finite_diff(gnorm_loss, &k, k.gate, N * D, fd);
    expect_grad("gated norm dgate", "[N 6, D 8]", dg, NULL, fd, N * D);
    finite_diff(gnorm_loss, &k, k.w, D, fd);
    expect_grad("gated norm dw", "[N 6, D 8]", dw, dw0, fd, D);
    free(fd), free(yd), free(k.x), free(k.gate), free(k.w), free(k.c), free(k.y);
    free(x), free(g), free(w), free(c), free(y), free(ye), free(dx), free(dg), free(dw), free(dw0);

    for (int cs = 0; cs < 4; cs++) {
        const int64_t T = 5, HV = 3, n = cs % 2 ? 4 : 1, e = T * HV * n;
        const hae_gate_fn gf = cs < 2 ? HAE_GATE_SOFTPLUS : HAE_GATE_SAFE;
        char shape[96];
        snprintf(shape, sizeof shape, "[N 5, HV 3, n %lld] %s", (long long)n, gf == HAE_GATE_SAFE ? "safe" : "softplus");
        decay_case d = {T, HV, n, gf, -5.0, dalloc(e), dalloc(HV), dalloc(HV * n), dalloc(e), dalloc(e)};
        float *raw = falloc(e), *A = falloc(HV), *bias = falloc(HV * n), *cc = falloc(e), *gg = falloc(e), *draw = falloc(e);
        float *dA = falloc(HV), *dA0 = falloc(HV), *db = falloc(HV * n), *db0 = falloc(HV * n);
        tu_rng rr = tu_rng_make(150 + (uint64_t)cs);
        fill_pair(raw, d.raw, e, &rr, -3, 3);
        fill_pair(A, d.A_log, HV, &rr, 0, 2.7);
        fill_pair(bias, d.bias, HV * n, &rr, -2, 1);
        fill_pair(cc, d.c, e, &rr, -1, 1);
        for (int64_t i = 0; i < HV; i++) dA[i] = dA0[i] = (float)tu_uniform(&rr, -1, 1);
        for (int64_t i = 0; i < HV * n; i++) db[i] = db0[i] = (float)tu_uniform(&rr, -1, 1);
        poison(gg, e), poison(draw, e);
        hae_tr_decay_fwd(be, raw, A, bias, T, HV, n, gf, -5.0f, gg);
        decay_loss(&d);
        expect_fwd("decay", shape, gg, d.y, e);
        hae_tr_decay_bwd(be, raw, A, bias, cc, T, HV, n, gf, -5.0f, draw, dA, db);
        double *f2 = dalloc(e);
        finite_diff(decay_loss, &d, d.raw, e, f2);
        expect_grad("decay draw", shape, draw, NULL, f2, e);
        finite_diff(decay_loss, &d, d.A_log, HV, f2);
        expect_grad("decay dA_log", shape, dA, dA0, f2, HV);
        finite_diff(decay_loss, &d, d.bias, HV * n, f2);
        expect_grad("decay ddt_bias", shape, db, db0, f2, HV * n);
        free(f2), free(d.raw), free(d.A_log), free(d.bias), free(d.c), free(d.y);
        free(raw), free(A), free(bias), free(cc), free(gg), free(draw), free(dA), free(dA0), free(db), free(db0);
    }
    hae_backend_destroy(be);
}

typedef struct {
    int64_t S, V;
    double *z;
    const int32_t *target;
} xent_case;

static double xent_loss(void *p) {
    xent_case *k = p;
    return ref_xent(k->z, k->target, k->S, k->V);
}

/* The mean loss and its gradient (scale 1 / S), large logits that overflow a naive exp, and ties to the lower id. */
Test(train_grad, cross_entropy) {
    const int64_t S = 6, V = 11;
    tu_rng r = tu_rng_make(60);
    float *z = falloc(S * V), *dz = falloc(S * V);
    double *zd = dalloc(S * V);
    fill_pair(z, zd, S * V, &r, -4, 4);
    for (int64_t v = 0; v < V; v++) z[V + v] = zd[V + v] = 300.0f + (float)v; /* row 1: exp(300) overflows in f32 */
    z[2 * V + 3] = z[2 * V + 7] = zd[2 * V + 3] = zd[2 * V + 7] = 9.0f;       /* row 2: a tie, 3 wins */
    const int32_t target[] = {0, 10, 7, 5, 2, 9};
    uint8_t correct[6];
    xent_case k = {S, V, zd, target};
    poison(dz, S * V);
    double total = 0.0;
    cr_assert_eq(hae_tr_xent(tu_cpu(), z, target, S, V, 1.0f / (float)S, dz, correct, &total), HAE_OK);
    const double loss = total / (double)S, ref = xent_loss(&k);
    cr_expect(fabs(loss - ref) <= 1e-9 * fabs(ref), "cross-entropy [S %lld, V %lld]: loss %.12g, float64 %.12g",
              (long long)S, (long long)V, loss, ref);
    double *fd = dalloc(S * V);
    finite_diff(xent_loss, &k, zd, S * V, fd);
    expect_grad("cross-entropy dz", "[S 6, V 11]", dz, NULL, fd, S * V);
    for (int64_t i = 0; i < S; i++) {
        int64_t best = 0;
        for (int64_t v = 1; v < V; v++) best = z[i * V + v] > z[i * V + best] ? v : best;
        cr_expect_eq(correct[i], best == target[i], "cross-entropy row %lld: correct %d, argmax %lld, target %d",
                     (long long)i, correct[i], (long long)best, target[i]);
    }
    cr_expect(!correct[2], "a tie goes to the lower id: row 2 picks 3, not its target 7");
    /* in place (dz = z) gives the same gradient */
    float *dz2 = falloc(S * V);
    memcpy(dz2, z, sizeof(float) * (size_t)(S * V));
    cr_assert_eq(hae_tr_xent(tu_cpu(), dz2, target, S, V, 1.0f / (float)S, dz2, NULL, &total), HAE_OK);
    cr_expect(memcmp(dz, dz2, sizeof(float) * (size_t)(S * V)) == 0, "cross-entropy in place differs");
    free(z), free(dz), free(dz2), free(zd), free(fd);
}

Test(train_grad, embedding) {
    const int64_t N = 7, V = 5, D = 6;
    const int32_t ids[] = {3, 0, 3, 4, 3, 1, 0};
    tu_rng r = tu_rng_make(70);
    float *E = falloc(V * D), *x = falloc(N * D), *dx = falloc(N * D), *dE = falloc(V * D), *dE0 = falloc(V * D);
    double *junk = dalloc(V * D + N * D);
    fill_pair(E, junk, V * D, &r, -1, 1);
    fill_pair(dx, junk, N * D, &r, -1, 1);
    fill_pair(dE0, junk, V * D, &r, -1, 1);
    memcpy(dE, dE0, sizeof(float) * (size_t)(V * D));
    poison(x, N * D);
    cr_assert_eq(hae_tr_embedding_fwd(tu_cpu(), ids, N, E, D, x), HAE_OK);
    cr_assert_eq(hae_tr_embedding_bwd(tu_cpu(), ids, N, dx, D, dE), HAE_OK);
    for (int64_t v = 0; v < V; v++)
        for (int64_t d = 0; d < D; d++) {
            double want = dE0[v * D + d];
            for (int64_t i = 0; i < N; i++) want += ids[i] == v ? dx[i * D + d] : 0.0;
            cr_expect(fabs(dE[v * D + d] - want) < 1e-6, "embedding dE[%lld, %lld] = %g, want %g", (long long)v,
                      (long long)d, (double)dE[v * D + d], want);
        }
    for (int64_t i = 0; i < N * D; i++)
        cr_expect_eq(x[i], E[ids[i / D] * D + i % D], "embedding row %lld", (long long)(i / D));
    free(E), free(x), free(dx), free(dE), free(dE0), free(junk);
}

/* The DSA indexer's ops in double, each with sum c y as the loss: the key's LayerNorm, the scores, the KL. */
typedef struct {
    int64_t N, D;
    double *x, *w, *b, *c, *y;
} ln_case;

static double ln_loss(void *p) {
    ln_case *k = p;
    for (int64_t i = 0; i < k->N; i++) {
        double m = 0, v = 0;
        for (int64_t d = 0; d < k->D; d++) m += k->x[i * k->D + d] / (double)k->D;
        for (int64_t d = 0; d < k->D; d++) v += (k->x[i * k->D + d] - m) * (k->x[i * k->D + d] - m) / (double)k->D;
        for (int64_t d = 0; d < k->D; d++) k->y[i * k->D + d] = (k->x[i * k->D + d] - m) / sqrt(v + 1e-6) * k->w[d] + k->b[d];
    }
    return weighted(k->c, k->y, k->N * k->D);
}

typedef struct {
    hae_tr_index_shape s;
    double *q, *k, *w, *c, *I;
} index_case;

static double index_loss(void *p) {
    index_case *k = p;
    const hae_tr_index_shape *s = &k->s;
    for (int64_t b = 0; b < s->B; b++)
        for (int64_t t = 0; t < s->T; t++)
            for (int64_t j = 0; j < s->T; j++) {
                double acc = 0;
                for (int64_t h = 0; j <= t && h < s->HI; h++) {
                    double dot = 0;
                    for (int64_t e = 0; e < s->DI; e++) dot += k->q[((b * s->T + t) * s->HI + h) * s->DI + e] * k->k[(b * s->T + j) * s->DI + e];
                    acc += k->w[(b * s->T + t) * s->HI + h] * (dot > 0 ? dot : 0);
                }
                k->I[(b * s->T + t) * s->T + j] = s->scale * acc;
            }
    return weighted(k->c, k->I, s->B * s->T * s->T);
}

static double ref_index_kl(const double *psum, const double *I, const uint8_t *allow, int64_t rows, int64_t T);

typedef struct {
    int64_t rows, T;
    double *psum, *I;
    const uint8_t *allow;
} kl_case;

static double kl_loss(void *p) {
    kl_case *k = p;
    return ref_index_kl(k->psum, k->I, k->allow, k->rows, k->T);
}

/* The key norm (and its equality with hae_rmsnorm's centred form), the scores with half their dots negative (the
 * ReLU), the KL over a selection, and the top-k's tie rule. */
Test(train_grad, indexer) {
    hae_backend *be = tu_cpu();
    {
        const int64_t N = 5, D = 9;
        ln_case k = {N, D, dalloc(N * D), dalloc(D), dalloc(D), dalloc(N * D), dalloc(N * D)};
        float *x = falloc(N * D), *w = falloc(D), *b = falloc(D), *c = falloc(N * D), *y = falloc(N * D), *ye = falloc(N * D);
        float *rs = falloc(N), *dx = falloc(N * D), *dw = falloc(D), *dw0 = falloc(D), *db = falloc(D), *db0 = falloc(D);
        tu_rng r = tu_rng_make(170);
        fill_pair(x, k.x, N * D, &r, -2, 3);
        fill_pair(w, k.w, D, &r, 0.5, 1.5);
        fill_pair(b, k.b, D, &r, -0.5, 0.5);
        fill_pair(c, k.c, N * D, &r, -1, 1);
        for (int64_t d = 0; d < D; d++) dw[d] = dw0[d] = (float)tu_uniform(&r, -1, 1), db[d] = db0[d] = (float)tu_uniform(&r, -1, 1);
        poison(y, N * D), poison(dx, N * D);
        hae_tr_layernorm_fwd(be, x, w, b, N, D, 1e-6f, y, rs);
        ln_loss(&k);
        expect_fwd("layernorm", "[N 5, D 9]", y, k.y, N * D);
        hae_rmsnorm_args na = {.x = hae_tensor_2d(x, HAE_F32, HAE_CPU, N, D), .weight = hae_tensor_1d(w, HAE_F32, HAE_CPU, D),
                               .bias = hae_tensor_1d(b, HAE_F32, HAE_CPU, D), .center = true,
                               .out = hae_tensor_2d(ye, HAE_F32, HAE_CPU, N, D), .eps = 1e-6f};
        cr_assert_eq(hae_rmsnorm(be, &na), HAE_OK, "%s", hae_last_error());
        double *yd = dalloc(N * D);
        for (int64_t i = 0; i < N * D; i++) yd[i] = ye[i];
        expect_fwd("layernorm vs hae_rmsnorm (center, bias)", "[N 5, D 9]", y, yd, N * D);
        hae_tr_layernorm_bwd(be, x, w, rs, c, N, D, dx, dw, db);
        double *fd = dalloc(N * D);
        finite_diff(ln_loss, &k, k.x, N * D, fd);
        expect_grad("layernorm dx", "[N 5, D 9]", dx, NULL, fd, N * D);
        finite_diff(ln_loss, &k, k.w, D, fd);
        expect_grad("layernorm dw", "[N 5, D 9]", dw, dw0, fd, D);
        finite_diff(ln_loss, &k, k.b, D, fd);
        expect_grad("layernorm dbias", "[N 5, D 9]", db, db0, fd, D);
        free(fd), free(yd), free(k.x), free(k.w), free(k.b), free(k.c), free(k.y);
        free(x), free(w), free(b), free(c), free(y), free(ye), free(rs), free(dx), free(dw), free(dw0), free(db), free(db0);
    }
    {
        const hae_tr_index_shape s = {.B = 2, .T = 6, .HI = 3, .DI = 5, .scale = 0.3f};
        const int64_t NQ = s.B * s.T * s.HI * s.DI, NK = s.B * s.T * s.DI, NW = s.B * s.T * s.HI, NI = s.B * s.T * s.T;
        index_case k = {s, dalloc(NQ), dalloc(NK), dalloc(NW), dalloc(NI), dalloc(NI)};
        float *q = falloc(NQ), *kk = falloc(NK), *w = falloc(NW), *c = falloc(NI), *I = falloc(NI);
        float *dq = falloc(NQ), *dk = falloc(NK), *dw = falloc(NW);
        tu_rng r = tu_rng_make(171);
        fill_pair(q, k.q, NQ, &r, -1, 1);
        fill_pair(kk, k.k, NK, &r, -1, 1);
        fill_pair(w, k.w, NW, &r, -1, 1);
        fill_pair(c, k.c, NI, &r, -1, 1);
        for (int64_t i = 0; i < NI; i++) /* the gradient of I exists below the diagonal only */
            if (i % s.T > (i / s.T) % s.T) c[i] = 0.0f, k.c[i] = 0.0;
        poison(I, NI), poison(dq, NQ), poison(dk, NK), poison(dw, NW);
        hae_tr_index_fwd(be, &s, q, kk, w, I);
        index_loss(&k);
        expect_fwd("index scores", "[B 2, T 6, HI 3, DI 5]", I, k.I, NI);
        hae_tr_index_bwd(be, &s, q, kk, w, c, dq, dk, dw);
        double *fd = dalloc(NQ);
        finite_diff(index_loss, &k, k.q, NQ, fd);
        expect_grad("index dq", "[B 2, T 6, HI 3, DI 5]", dq, NULL, fd, NQ);
        finite_diff(index_loss, &k, k.k, NK, fd);
        expect_grad("index dk", "[B 2, T 6, HI 3, DI 5]", dk, NULL, fd, NK);
        finite_diff(index_loss, &k, k.w, NW, fd);
        expect_grad("index dw", "[B 2, T 6, HI 3, DI 5]", dw, NULL, fd, NW);
        free(fd), free(k.q), free(k.k), free(k.w), free(k.c), free(k.I), free(q), free(kk), free(w), free(c), free(I);
        free(dq), free(dk), free(dw);
    }
    {
        /* scores with ties (multiples of 0.5): the top-3 of each row against picking the largest, lowest index first */
        const int64_t B = 2, T = 7, K = 3, Hq = 2, rows = B * T;
        float *I = falloc(rows * T), *P = falloc(B * Hq * T * T), *dI = falloc(rows * T);
        uint8_t *allow = malloc((size_t)(rows * T));
        tu_rng r = tu_rng_make(172);
        for (int64_t i = 0; i < rows * T; i++) I[i] = 0.5f * (float)(int)tu_uniform(&r, 0, 4);
        hae_tr_index_select(be, I, B, T, K, allow);
        for (int64_t row = 0; row < rows; row++) {
            const int64_t t = row % T;
            uint8_t want[7] = {0};
            for (int64_t m = 0; m < (t < K ? t + 1 : K); m++) {
                int64_t best = -1;
                for (int64_t j = 0; j <= t; j++)
                    if (!want[j] && (best < 0 || I[row * T + j] > I[row * T + best])) best = j;
                want[best] = 1;
            }
            for (int64_t j = 0; j < T; j++)
                cr_expect_eq(allow[row * T + j], want[j], "top-%lld of row %lld: token %lld %s", (long long)K, (long long)row,
                             (long long)j, want[j] ? "not selected" : "selected");
        }
        /* the KL over those selections, P normalised over them per head */
        kl_case k = {rows, T, dalloc(rows * T), dalloc(rows * T), allow};
        for (int64_t i = 0; i < rows * T; i++) I[i] = (float)tu_uniform(&r, -2, 2), k.I[i] = I[i];
        memset(k.psum, 0, sizeof(double) * (size_t)(rows * T));
        for (int64_t b = 0; b < B; b++)
            for (int64_t h = 0; h < Hq; h++)
                for (int64_t t = 0; t < T; t++) {
                    float *p = P + ((b * Hq + h) * T + t) * T, sum = 0;
                    for (int64_t j = 0; j < T; j++) sum += p[j] = allow[(b * T + t) * T + j] ? (float)tu_uniform(&r, 0.1, 1) : 0;
                    for (int64_t j = 0; j < T; j++) p[j] /= sum, k.psum[(b * T + t) * T + j] += p[j];
                }
        poison(dI, rows * T);
        double got = 0;
        cr_assert_eq(hae_tr_index_kl(be, P, I, allow, B, Hq, T, 1.0f / (float)rows, dI, &got), HAE_OK, "%s", hae_last_error());
        const double want = kl_loss(&k);
        cr_expect(fabs(got / (double)rows - want) <= 1e-6 * want, "KL %.10g, float64 %.10g", got / (double)rows, want);
        double *fd = dalloc(rows * T);
        finite_diff(kl_loss, &k, k.I, rows * T, fd);
        expect_grad("index KL dI", "[B 2, T 7, top-3, Hq 2]", dI, NULL, fd, rows * T);
        free(fd), free(k.psum), free(k.I), free(I), free(P), free(dI), free(allow);
    }
    hae_backend_destroy(be);
}

/* ---------------------------------------------------------------- the whole model */

/* Two layers (full, then a window of 3), gqa 2q/1kv, full RoPE; tied and untied LM heads. Linear layers: one q/k
 * head of 4 read by 2 value heads (GVA), conv width 3. */
static const char *model_yaml = "model:\n"
                                "  vocab_size: 13\n"
                                "  d_model: 8\n"
                                "  n_layers: 2\n"
                                "  layer_pattern: [full, swa]\n"
                                "  mlp: {intermediate_size: 12}\n"
                                "  attention: {num_heads: 2, num_kv_heads: 1, head_dim: 4, rope: full, rope_theta: 100,\n"
                                "              kv_lora_rank: 5, qk_nope_head_dim: 3, qk_rope_head_dim: 4, v_head_dim: 3}\n"
                                "  swa: {window_size: 3}\n"
                                "  linear_attn: {num_heads: 1, num_v_heads: 2, head_dim: 4, conv_size: 3}\n"
                                "  dsa: {index_n_heads: 2, index_topk: 3, index_rope_dim: 4}\n";

typedef struct {
    const hae_config *cfg;
    hae_trainer *t;
    double **w; /* a double copy of every parameter, in the trainer's order */
    const int32_t *tok, *target;
    const int64_t *pos;
    int64_t B, T, n;
    const float *cs, *sn;
    bool want_kl; /* model_loss gives the indexers' distillation loss instead of the cross-entropy */
} model_case;

static const double *param(const model_case *k, const char *fmt, long long l) {
    char name[96];
    snprintf(name, sizeof name, fmt, l);
    for (int p = 0; p < hae_trainer_param_count(k->t); p++) {
        const char *pn;
        hae_trainer_param(k->t, p, &pn, NULL, NULL, NULL);
        if (!strcmp(pn, name)) return k->w[p];
    }
    return NULL;
}

/* y [N, O] = columns of x [N, I] through parameter `name` of layer l; appended to proj [N, ld] at *col. */
static void ref_proj(const model_case *k, const char *name, long long l, const double *h, int64_t N, int64_t I,
                     int64_t O, double *proj, int64_t ld, int64_t *col) {
    double *y = dalloc(N * O);
    ref_linear(h, param(k, name, l), N, I, O, y);
    for (int64_t i = 0; i < N; i++) memcpy(proj + i * ld + *col, y + i * O, sizeof(double) * (size_t)O);
    *col += O;
    free(y);
}

/* dst [N, n] = columns [off, off + n) of src [N, ld] */
static void ref_cols(double *dst, const double *src, int64_t N, int64_t ld, int64_t off, int64_t n) {
    for (int64_t i = 0; i < N; i++) memcpy(dst + i * n, src + i * ld + off, sizeof(double) * (size_t)n);
}

/* DESIGN.md 1.1's mixer of layer l on h [N, d], into out [N, HV V] (before o_proj), through the ops' double
 * references above. */
static void ref_linear_mixer(const model_case *k, long long l, const double *h, double *out) {
    const hae_config *c = k->cfg;
    hae_linear_kind lk;
    hae_linear_kind_of(c->model.layers[l], &lk);
    const int64_t B = k->B, T = k->T, N = B * T, d = c->model.d_model, H = c->model.linear_attn.num_heads;
    const int64_t HV = c->model.linear_attn.num_v_heads, K = c->model.linear_attn.head_dim, V = K;
    const int64_t W = c->model.linear_attn.conv_size, C = 2 * H * K + HV * V, G = HV / H;
    const int64_t ld = C + 2 * HV * K + V;
    double *proj = dalloc(N * ld), *zero = dalloc(N * HV * K * V + N * C), *raw = dalloc(N * HV * K);
    int64_t col = 0;
    ref_proj(k, "model.layers.%lld.attn.q_proj.weight", l, h, N, d, H * K, proj, ld, &col);
    ref_proj(k, "model.layers.%lld.attn.k_proj.weight", l, h, N, d, H * K, proj, ld, &col);
    ref_proj(k, "model.layers.%lld.attn.v_proj.weight", l, h, N, d, HV * V, proj, ld, &col);
    /* the short conv with SiLU over q, k, v */
    double *cw = dalloc(C * W), *cin = dalloc(N * C), *cout = dalloc(N * C);
    const char *conv[3] = {"model.layers.%lld.attn.q_conv1d.weight", "model.layers.%lld.attn.k_conv1d.weight",
                           "model.layers.%lld.attn.v_conv1d.weight"};
    const int64_t ch[3] = {H * K, H * K, HV * V};
    for (int i = 0, row = 0; i < 3; row += (int)ch[i], i++)
        memcpy(cw + row * W, param(k, conv[i], l), sizeof(double) * (size_t)(ch[i] * W));
    ref_cols(cin, proj, N, ld, 0, C);
    conv_case cc = {B, T, C, W, true, cin, cw, zero, cout};
    conv_loss(&cc);
    /* q and k mapped, one row per value head; v */
    double *qk[2] = {dalloc(N * HV * K), dalloc(N * HV * K)}, *x = dalloc(N * H * K), *y = dalloc(N * H * K);
    double *v = dalloc(N * HV * V);
    for (int w = 0; w < 2; w++) {
        ref_cols(x, cout, N, C, w * H * K, H * K);
        if (lk.qk_map == HAE_QK_L2) {
            l2_case lc = {N * H, K, 1e-6, x, zero, y};
            l2_loss(&lc);
        } else {
            for (int64_t i = 0; i < N * H * K; i++) y[i] = x[i] > 0 ? x[i] + 1 : exp(x[i]);
        }
        for (int64_t i = 0; i < N; i++)
            for (int64_t j = 0; j < HV; j++)
                memcpy(qk[w] + (i * HV + j) * K, y + (i * H + j / G) * K, sizeof(double) * (size_t)K);
    }
    ref_cols(v, cout, N, C, 2 * H * K, HV * V);
    /* decays, betas, the output gate */
    double *g = lk.decay == HAE_DECAY_NONE ? NULL : dalloc(N * HV * K), *beta = lk.delta ? dalloc(N * HV) : NULL;
    double *gout = dalloc(N * HV * V), *o = dalloc(N * HV * V), *g1 = dalloc(N * V);
    const int64_t gn = lk.decay == HAE_DECAY_CHANNEL ? K : 1;
    if (lk.decay == HAE_DECAY_CHANNEL) {
        ref_proj(k, "model.layers.%lld.attn.f_proj.0.weight", l, h, N, d, V, proj, ld, &col);
        ref_cols(g1, proj, N, ld, col - V, V);
        ref_linear(g1, param(k, "model.layers.%lld.attn.f_proj.1.weight", l), N, V, HV * K, raw);
    } else if (lk.decay == HAE_DECAY_HEAD) {
        ref_proj(k, "model.layers.%lld.attn.a_proj.weight", l, h, N, d, HV, proj, ld, &col);
        ref_cols(raw, proj, N, ld, col - HV, HV);
    }
    if (lk.decay == HAE_DECAY_CHANNEL || lk.decay == HAE_DECAY_HEAD) {
        decay_case dc = {N, HV, gn, c->model.linear_attn.safe_gate ? HAE_GATE_SAFE : HAE_GATE_SOFTPLUS,
                         c->model.linear_attn.lower_bound, raw, (double *)param(k, "model.layers.%lld.attn.A_log", l),
                         (double *)param(k, "model.layers.%lld.attn.dt_bias", l), zero, g};
        decay_loss(&dc);
    }
    if (lk.decay == HAE_DECAY_FIXED)
        for (int64_t i = 0; i < N * HV; i++) g[i] = -exp(param(k, "model.layers.%lld.attn.A_log", l)[i % HV]);
    if (lk.delta) {
        ref_proj(k, "model.layers.%lld.attn.b_proj.weight", l, h, N, d, HV, proj, ld, &col);
        for (int64_t i = 0; i < N; i++)
            for (int64_t j = 0; j < HV; j++) beta[i * HV + j] = 1 / (1 + exp(-proj[i * ld + col - HV + j]));
    }
    ref_proj(k, "model.layers.%lld.attn.g_proj.0.weight", l, h, N, d, V, proj, ld, &col);
    ref_cols(g1, proj, N, ld, col - V, V);
    ref_linear(g1, param(k, "model.layers.%lld.attn.g_proj.1.weight", l), N, V, HV * V, gout);
    /* the recurrence and the gated norm */
    delta_case dl = {{.B = B, .T = T, .H = HV, .K = K, .V = V, .channel_decay = lk.decay == HAE_DECAY_CHANNEL,
                      .scale = 1.0f / sqrtf((float)K)},
                     qk[0], qk[1], v, g, beta, zero, o};
    delta_loss(&dl);
    gnorm_case gc = {N * HV, V, c->model.norm_eps, o, gout, (double *)param(k, "model.layers.%lld.attn.o_norm.weight", l),
                     zero, out};
    gnorm_loss(&gc);
    free(proj), free(zero), free(raw), free(cw), free(cin), free(cout), free(qk[0]), free(qk[1]), free(x), free(y);
    free(v), free(g), free(beta), free(gout), free(o), free(g1);
}

/* Layer l's lightning indexer on h in float64 (fp32 form: no FP8), its top-k into allow (every earlier token while
 * train.indexer_warmup lasts) and its scores into I [B, T, T]. */
static void ref_index(const model_case *k, long long l, const double *h, double *I, uint8_t *allow) {
    const hae_config *c = k->cfg;
    const int64_t B = k->B, T = k->T, N = B * T, d = c->model.d_model, HI = c->model.dsa.index_n_heads;
    const int64_t DI = c->model.dsa.index_head_dim, rot = c->model.dsa.index_rope_dim;
    double *q = dalloc(N * HI * DI), *kr = dalloc(N * DI), *kk = dalloc(N * DI), *w = dalloc(N * HI);
    ref_linear(h, param(k, "model.layers.%lld.self_attn.indexer.wq.weight", l), N, d, HI * DI, q);
    ref_linear(h, param(k, "model.layers.%lld.self_attn.indexer.wk.weight", l), N, d, DI, kr);
    ref_linear(h, param(k, "model.layers.%lld.self_attn.indexer.weights_proj.weight", l), N, d, HI, w);
    const double *nw = param(k, "model.layers.%lld.self_attn.indexer.k_norm.weight", l);
    const double *nb = param(k, "model.layers.%lld.self_attn.indexer.k_norm.bias", l);
    for (int64_t i = 0; i < N; i++) {
        double mean = 0, var = 0;
        for (int64_t e = 0; e < DI; e++) mean += kr[i * DI + e] / (double)DI;
        for (int64_t e = 0; e < DI; e++) var += (kr[i * DI + e] - mean) * (kr[i * DI + e] - mean) / (double)DI;
        for (int64_t e = 0; e < DI; e++) kk[i * DI + e] = (kr[i * DI + e] - mean) / sqrt(var + 1e-6) * nw[e] + nb[e];
    }
    float *cs = falloc(T * rot / 2), *sn = falloc(T * rot / 2);
    hae_tr_rope_table(T, (int)rot, c->model.attention.rope_theta, cs, sn);
    ref_rope(q, B, T, HI, DI, HI * DI, (int)rot, cs, sn);
    ref_rope(kk, B, T, 1, DI, DI, (int)rot, cs, sn);
    const int64_t topk = k->t && hae_trainer_steps(k->t) < c->train.indexer_warmup ? T : c->model.dsa.index_topk;
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++) {
            double *row = I + (b * T + t) * T;
            for (int64_t j = 0; j < T; j++) {
                row[j] = 0;
                for (int64_t hh = 0; j <= t && hh < HI; hh++) {
                    double dot = 0;
                    for (int64_t e = 0; e < DI; e++) dot += q[((b * T + t) * HI + hh) * DI + e] * kk[(b * T + j) * DI + e];
                    row[j] += w[(b * T + t) * HI + hh] * (dot > 0 ? dot : 0) / sqrt((double)(HI * DI));
                }
            }
            uint8_t *a = allow + (b * T + t) * T;
            for (int64_t j = 0; j < T; j++) a[j] = j <= t && t < topk;
            for (int64_t m = 0; t >= topk && m < topk; m++) {
                int64_t best = -1;
                for (int64_t j = 0; j <= t; j++)
                    if (!a[j] && (best < 0 || row[j] > row[best])) best = j;
                a[best] = 1;
            }
        }
    free(q), free(kr), free(kk), free(w), free(cs), free(sn);
}

/* The mean over query rows of KL(p || softmax(I)) over each row's selection, p the heads' summed probabilities. */
static double ref_index_kl(const double *psum, const double *I, const uint8_t *allow, int64_t rows, int64_t T) {
    double total = 0;
    for (int64_t r = 0; r < rows; r++) {
        const double *p = psum + r * T, *row = I + r * T;
        const uint8_t *a = allow + r * T;
        double mx = -INFINITY, z = 0, pt = 0;
        for (int64_t j = 0; j < T; j++)
            if (a[j]) mx = row[j] > mx ? row[j] : mx, pt += p[j];
        for (int64_t j = 0; j < T; j++)
            if (a[j]) z += exp(row[j] - mx);
        for (int64_t j = 0; j < T; j++)
            if (a[j] && p[j] > 0) total += p[j] / pt * (log(p[j] / pt) - (row[j] - mx - log(z)));
    }
    return total / (double)rows;
}

/* mla's attention rows [N, 2 H (nope + rope) + H vd], before RoPE, as DeepSeek-V2 writes the layer: q = h Wq^T
 * (heads [nope | rope]); [c | k_rope] = h Wkv_a^T; [k_nope_h | v_h] = kv_b(rmsnorm(c)); k_h = [k_nope_h | k_rope]. */
static void ref_mla_rows(const model_case *k, long long l, const double *h, double *rows) {
    const hae_config *c = k->cfg;
    const int64_t N = k->B * k->T, d = c->model.d_model, H = c->model.attention.num_heads;
    const int64_t n = c->model.attention.qk_nope_head_dim, r = c->model.attention.qk_rope_head_dim;
    const int64_t L = c->model.attention.kv_lora_rank, vd = c->model.attention.v_head_dim, Dk = n + r;
    const int64_t ld = 2 * H * Dk + H * vd;
    double *q = dalloc(N * H * Dk), *a = dalloc(N * (L + r)), *cn = dalloc(N * L), *kv = dalloc(N * H * (n + vd));
    ref_linear(h, param(k, "model.layers.%lld.self_attn.q_proj.weight", l), N, d, H * Dk, q);
    ref_linear(h, param(k, "model.layers.%lld.self_attn.kv_a_proj_with_mqa.weight", l), N, d, L + r, a);
    for (int64_t i = 0; i < N; i++) memcpy(cn + i * L, a + i * (L + r), sizeof(double) * (size_t)L);
    ref_rmsnorm(cn, param(k, "model.layers.%lld.self_attn.kv_a_layernorm.weight", l), N, L, c->model.norm_eps, cn);
    ref_linear(cn, param(k, "model.layers.%lld.self_attn.kv_b_proj.weight", l), N, L, H * (n + vd), kv);
    for (int64_t i = 0; i < N; i++) {
        double *row = rows + i * ld;
        memcpy(row, q + i * H * Dk, sizeof(double) * (size_t)(H * Dk));
        for (int64_t hh = 0; hh < H; hh++) {
            const double *kvh = kv + i * H * (n + vd) + hh * (n + vd);
            memcpy(row + H * Dk + hh * Dk, kvh, sizeof(double) * (size_t)n);
            memcpy(row + H * Dk + hh * Dk + n, a + i * (L + r) + L, sizeof(double) * (size_t)r);
            memcpy(row + 2 * H * Dk + hh * vd, kvh + n, sizeof(double) * (size_t)vd);
        }
    }
    free(q), free(a), free(cn), free(kv);
}

/* The model of DESIGN.md section 1 in float64, from the saved tensor names. */
static double model_loss(void *p) {
    const model_case *k = p;
    const hae_config *c = k->cfg;
    const int64_t B = k->B, T = k->T, N = B * T, d = c->model.d_model, V = c->model.vocab_size, F = c->model.mlp.intermediate_size;
    const int64_t Hq = c->model.attention.num_heads, Hkv = c->model.attention.num_kv_heads, Dh = c->model.attention.head_dim;
    const int64_t qd = Hq * Dh, kd = Hkv * Dh, ld = qd + 2 * kd;
    const bool mla = c->model.attention.form == HAE_ATTN_MLA;
    const int64_t mla_qk = c->model.attention.qk_nope_head_dim + c->model.attention.qk_rope_head_dim;
    const int64_t rows_w = mla ? 2 * Hq * mla_qk + Hq * c->model.attention.v_head_dim : ld;
    const double eps = c->model.norm_eps;
    double *x = dalloc(N * d), *h = dalloc(N * d), *qkv = dalloc(N * rows_w);
    double *tmp = dalloc(N * (ld > 2 * F ? ld : 2 * F));
    const int64_t lhv = c->model.linear_attn.num_v_heads * c->model.linear_attn.head_dim;
    double *att = dalloc(N * (qd > lhv ? qd : lhv)), *gu = dalloc(N * 2 * F), *a = dalloc(N * F), *y = dalloc(N * d);
    double *I = dalloc(B * T * T), *psum = dalloc(B * T * T), kl = 0;
    uint8_t *allow = malloc((size_t)(B * T * T));
    const double *E = param(k, "model.embed_tokens.weight", 0);
    for (int64_t i = 0; i < N; i++) memcpy(x + i * d, E + k->tok[i] * d, sizeof(double) * (size_t)d);
    for (long long l = 0; l < c->model.n_layers; l++) {
        ref_rmsnorm(x, param(k, "model.layers.%lld.input_layernorm.weight", l), N, d, eps, h);
        if (hae_linear_kind_of(c->model.layers[l], &(hae_linear_kind){0})) {
            ref_linear_mixer(k, l, h, att);
            ref_linear(att, param(k, "model.layers.%lld.attn.o_proj.weight", l), N, lhv, d, y);
        } else {
        const bool dsa = c->model.layers[l] == HAE_LAYER_DSA;
        hae_tr_attn_shape s = {.B = B, .T = T, .Hq = Hq, .Hkv = Hkv, .Dh = Dh, .scale = 1.0f / sqrtf((float)Dh),
                               .window = c->model.layers[l] == HAE_LAYER_SWA ? c->model.swa.window_size : 0,
                               .allow = dsa ? allow : NULL};
        if (mla) {
            ref_mla_rows(k, l, h, qkv);
            s.Hkv = Hq, s.Dh = mla_qk, s.Dv = c->model.attention.v_head_dim, s.scale = 1.0f / sqrtf((float)mla_qk);
            const int64_t mld = 2 * Hq * mla_qk + Hq * s.Dv, nope = c->model.attention.qk_nope_head_dim;
            ref_rope(qkv + nope, B, T, Hq, mla_qk, mld, 4, k->cs, k->sn);
            ref_rope(qkv + Hq * mla_qk + nope, B, T, Hq, mla_qk, mld, 4, k->cs, k->sn);
        } else {
            const char *proj[3] = {"model.layers.%lld.self_attn.q_proj.weight", "model.layers.%lld.self_attn.k_proj.weight",
                                   "model.layers.%lld.self_attn.v_proj.weight"};
            const int64_t cols[3] = {qd, kd, kd}, at[3] = {0, qd, qd + kd};
            for (int j = 0; j < 3; j++) {
                ref_linear(h, param(k, proj[j], l), N, d, cols[j], tmp);
                for (int64_t i = 0; i < N; i++)
                    memcpy(qkv + i * ld + at[j], tmp + i * cols[j], sizeof(double) * (size_t)cols[j]);
            }
            ref_rope(qkv, B, T, Hq, Dh, ld, (int)Dh, k->cs, k->sn);
            ref_rope(qkv + qd, B, T, Hkv, Dh, ld, (int)Dh, k->cs, k->sn);
        }
        if (dsa) ref_index(k, l, h, I, allow);
        ref_attention(&s, qkv, att, dsa ? psum : NULL);
        if (dsa) kl += ref_index_kl(psum, I, allow, N, T);
        const int64_t od = Hq * (s.Dv ? s.Dv : Dh);
        ref_linear(att, param(k, "model.layers.%lld.self_attn.o_proj.weight", l), N, od, d, y);
        }
        for (int64_t i = 0; i < N * d; i++) x[i] += y[i];
        ref_rmsnorm(x, param(k, "model.layers.%lld.post_attention_layernorm.weight", l), N, d, eps, h);
        ref_linear(h, param(k, "model.layers.%lld.mlp.gate_proj.weight", l), N, d, F, tmp);
        for (int64_t i = 0; i < N; i++) memcpy(gu + i * 2 * F, tmp + i * F, sizeof(double) * (size_t)F);
        ref_linear(h, param(k, "model.layers.%lld.mlp.up_proj.weight", l), N, d, F, tmp);
        for (int64_t i = 0; i < N; i++) memcpy(gu + i * 2 * F + F, tmp + i * F, sizeof(double) * (size_t)F);
        ref_swiglu(gu, N, F, a);
        ref_linear(a, param(k, "model.layers.%lld.mlp.down_proj.weight", l), N, F, d, y);
        for (int64_t i = 0; i < N * d; i++) x[i] += y[i];
    }
    double *xs = dalloc(k->n * d), *hs = dalloc(k->n * d), *z = dalloc(k->n * V);
    for (int64_t i = 0; i < k->n; i++) memcpy(xs + i * d, x + k->pos[i] * d, sizeof(double) * (size_t)d);
    ref_rmsnorm(xs, param(k, "model.norm.weight", 0), k->n, d, eps, hs);
    const double *head = c->model.tie_word_embeddings ? E : param(k, "lm_head.weight", 0);
    ref_linear(hs, head, k->n, d, V, z);
    const double loss = ref_xent(z, k->target, k->n, V);
    free(x), free(h), free(qkv), free(tmp), free(att), free(gu), free(a), free(y), free(xs), free(hs), free(z);
    free(I), free(psum), free(allow);
    return k->want_kl ? kl : loss;
}

/* Every parameter's gradient (sampled where large) against the float64 model's, and the loss. */
Test(train_grad, whole_model) {
    const char *const sets[][2] = {
        {"model.tie_word_embeddings=false", "model.linear_attn.safe_gate=true"},
        {"model.tie_word_embeddings=true", "model.linear_attn.safe_gate=true"},
        {"model.layer_pattern=[kda, swa]", "model.linear_attn.safe_gate=true"},
        {"model.layer_pattern=[gdn, deltanet]", "model.linear_attn.safe_gate=true"},
        {"model.layer_pattern=[gla, mamba2]", "model.linear_attn.safe_gate=true"},
        {"model.layer_pattern=[kda, gdn]", "model.linear_attn.safe_gate=false"},
        {"model.layer_pattern=[retnet, linear]", "model.linear_attn.safe_gate=true"},
        /* top-3 of 7 tokens: the selection matters from the fourth on; then the dense stage (every earlier token) */
        {"model.layer_pattern=[dsa, kda]", "train.indexer_warmup=0"},
        {"model.layer_pattern=[dsa, full]", "train.indexer_warmup=1"},
        /* mla (latent 5, heads of 3 nope + 4 rope dims for q and k, 3 for v) over a full and a windowed layer */
        {"model.attention.form=mla", "model.tie_word_embeddings=false"},
    };
    hae_backend *be = tu_cpu();
    for (int v = 0; v < 10; v++) {
        char variant[128];
        snprintf(variant, sizeof variant, "%s, %s", sets[v][0], sets[v][1]);
        hae_config cfg;
        cr_assert_eq(hae_config_parse(model_yaml, strlen(model_yaml), "model.yaml", sets[v], 2, &cfg), HAE_OK, "%s",
                     hae_last_error());
        const int64_t B = 2, T = 7, n = 5;
        hae_trainer *t = NULL;
        cr_assert_eq(hae_trainer_create(&cfg, be, B, T, &t), HAE_OK, "%s", hae_last_error());
        const int np = hae_trainer_param_count(t);
        double **w = calloc((size_t)np, sizeof *w);
        tu_rng r = tu_rng_make(80 + (uint64_t)v);
        for (int p = 0; p < np; p++) { /* off the init, so that every path carries gradient */
            float *wf;
            const char *name;
            int64_t m;
            hae_trainer_param(t, p, &name, &wf, NULL, &m);
            w[p] = dalloc(m);
            /* the decays' init saturates the gate (slow decay, gradients of 1e-9): A = e^A_log and dt_bias of order
             * 1 instead, so that the gate's derivative is of order 1 too */
            const bool gate = strstr(name, "A_log") || strstr(name, "dt_bias");
            for (int64_t i = 0; i < m; i++) w[p][i] = wf[i] = gate ? (float)tu_uniform(&r, -1, 1) : wf[i] + (float)tu_uniform(&r, -0.4, 0.4);
        }
        int32_t tok[14], target[5];
        for (int i = 0; i < 14; i++) tok[i] = (int32_t)tu_uniform(&r, 0, 13);
        for (int i = 0; i < 5; i++) target[i] = (int32_t)tu_uniform(&r, 0, 13);
        const int64_t pos[5] = {2, 6, 7, 11, 13};
        float cs[7 * 2], sn[7 * 2];
        hae_tr_rope_table(T, 4, 100.0f, cs, sn);
        model_case k = {&cfg, t, w, tok, target, pos, B, T, n, cs, sn, false};
        hae_train_batch b = {.tokens = tok, .B = B, .T = T, .pos = pos, .target = target, .n = n};
        double loss = 0;
        cr_assert_eq(hae_trainer_backward(t, &b, &loss, NULL), HAE_OK, "%s", hae_last_error());
        const double ref = model_loss(&k);
        cr_expect(fabs(loss - ref) <= 1e-6 * fabs(ref), "%s: loss %.10g, float64 model %.10g", variant, loss, ref);
        k.want_kl = true;
        const double kl = hae_trainer_index_kl(t), kl_ref = model_loss(&k);
        cr_expect(fabs(kl - kl_ref) <= 1e-5 * fabs(kl_ref) + 1e-9, "%s: indexer loss %.10g, float64 model %.10g", variant,
                  kl, kl_ref);
        for (int p = 0; p < np; p++) {
            const char *name;
            float *g;
            int64_t m;
            hae_trainer_param(t, p, &name, NULL, &g, &m);
            double *fd = dalloc(m);
            k.want_kl = strstr(name, ".indexer.") != NULL; /* the indexers learn from their own loss only */
            finite_diff(model_loss, &k, w[p], m, fd);
            char what[160];
            snprintf(what, sizeof what, "%s %s", variant, name);
            expect_grad(what, "[B 2, T 7, 5 scored]", g, NULL, fd, m);
            free(fd);
        }
        for (int p = 0; p < np; p++) free(w[p]);
        free(w);
        hae_trainer_destroy(t);
    }
    hae_backend_destroy(be);
}

/* got against want, each element within 1e-5 of want's scale (its largest magnitude, at least 1); NaN fails. */
static void expect_scaled(const char *what, const char *shape, const float *got, const float *want, int64_t n) {
    double scale = 1, worst = 0;
    int64_t at = 0;
    for (int64_t i = 0; i < n; i++) scale = fmax(scale, fabs((double)want[i]));
    for (int64_t i = 0; i < n; i++) {
        const double e = fabs((double)got[i] - (double)want[i]);
        if (!(e <= worst)) worst = e, at = i;
    }
    cr_expect(worst <= 1e-5 * scale, "%s %s: [%lld] = %g, the recurrent form's %g (worst of %lld, scale %g)", shape,
              what, (long long)at, (double)got[at], (double)want[at], (long long)n, scale);
    if (getenv("HAE_TEST_VERBOSE"))
        fprintf(stderr, "%-36s %-16s worst %.3g of scale %.3g\n", shape, what, worst, scale);
}

/* The chunk form (train_ops.h) against the recurrent form on the same inputs, for every decay kind, with and
 * without the delta rule and with unit beta, chunks of 1, 5, 16 and 64 over 37 tokens (a short last chunk, and
 * one chunk longer than the sequence): the outputs, each chunk's end state against the recurrent state at that
 * token, and every gradient, each within 1e-5 of its scale. The two agree to 2e-7 of scale; a 0.1% change to any
 * one term of the chunk form fails it (the least sensitive, dA's share of dΓ, moves dg by 9e-5).
 * A negative chunk is refused. */
Test(train_grad, delta_chunk_form_matches_recurrent) {
    static const int decays[] = {0, 1, 2};
    static const int64_t chunks[] = {1, 5, 16, 64};
    hae_backend *be = tu_cpu();
    for (int ki = 0; ki < 3; ki++)
        for (int de = 0; de < 3; de++) /* delta with random beta, delta with beta 1, no delta */
            for (int ci = 0; ci < 4; ci++) {
                const hae_tr_delta_shape rec = {.B = 2, .T = 37, .H = 2, .K = 6, .V = 5,
                                                .channel_decay = decays[ki] == 2, .scale = 0.4f};
                hae_tr_delta_shape chk = rec;
                chk.chunk = chunks[ci];
                const int64_t C = chunks[ci], nc = (37 + C - 1) / C, KV = rec.K * rec.V;
                cr_assert_eq(hae_tr_delta_slots(&chk), nc, "chunk %lld: %lld slots", (long long)C,
                             (long long)hae_tr_delta_slots(&chk));
                const bool delta = de < 2;
                const int64_t NK = rec.B * rec.T * rec.H * rec.K, NV = rec.B * rec.T * rec.H * rec.V;
                const int64_t NH = rec.B * rec.T * rec.H, NG = decays[ki] == 2 ? NK : NH;
                char shape[96];
                snprintf(shape, sizeof shape, "decay %d, %s, chunk %lld:", decays[ki],
                         de == 0 ? "delta" : de == 1 ? "delta, beta 1" : "no delta", (long long)C);
                tu_rng r = tu_rng_make(900 + (uint64_t)(ki * 12 + de * 4 + ci));
                float *in = falloc(2 * NK + 2 * NV + NG + NH), *q = in, *k = q + NK, *v = k + NK, *dout = v + NV,
                      *g = dout + NV, *beta = g + NG;
                tu_fill(in, HAE_F32, 2 * NK + 2 * NV, &r, -0.6, 0.6);
                tu_fill(g, HAE_F32, NG, &r, -0.5, -0.01);
                tu_fill(beta, HAE_F32, NH, &r, 0.1, 0.95);
                if (de == 1)
                    for (int64_t i = 0; i < NH; i++) beta[i] = 1.0f;
                const float *gg = decays[ki] ? g : NULL, *bb = delta ? beta : NULL;
                /* o, dq, dk, dv, dg, dbeta, then the states: the recurrent form's and the chunk form's */
                const int64_t n[7] = {NV, NK, NK, NV, NG, NH, rec.B * rec.H * 37 * KV};
                float *want[7], *got[7];
                for (int j = 0; j < 7; j++) poison(want[j] = falloc(n[j]), n[j]), poison(got[j] = falloc(n[j]), n[j]);
                cr_assert_eq(hae_tr_delta_fwd(be, &rec, q, k, v, gg, bb, want[6], want[0]), HAE_OK, "%s",
                             hae_last_error());
                cr_assert_eq(hae_tr_delta_fwd(be, &chk, q, k, v, gg, bb, got[6], got[0]), HAE_OK, "%s",
                             hae_last_error());
                float *ends = falloc(rec.B * rec.H * nc * KV); /* the recurrent states at the chunks' last tokens */
                for (int64_t it = 0; it < rec.B * rec.H; it++)
                    for (int64_t cc = 0; cc < nc; cc++) {
                        const int64_t t = (cc + 1) * C < 37 ? (cc + 1) * C - 1 : 36;
                        memcpy(ends + (it * nc + cc) * KV, want[6] + (it * 37 + t) * KV, sizeof(float) * (size_t)KV);
                    }
                expect_scaled("o", shape, got[0], want[0], NV);
                expect_scaled("chunk-end states", shape, got[6], ends, rec.B * rec.H * nc * KV);
                cr_assert_eq(hae_tr_delta_bwd(be, &rec, q, k, v, gg, bb, want[6], dout, want[1], want[2], want[3],
                                              gg ? want[4] : NULL, bb ? want[5] : NULL),
                             HAE_OK, "%s", hae_last_error());
                cr_assert_eq(hae_tr_delta_bwd(be, &chk, q, k, v, gg, bb, got[6], dout, got[1], got[2], got[3],
                                              gg ? got[4] : NULL, bb ? got[5] : NULL),
                             HAE_OK, "%s", hae_last_error());
                static const char *what[6] = {"o", "dq", "dk", "dv", "dg", "dbeta"};
                for (int j = 1; j < 6; j++)
                    if ((j != 4 || gg) && (j != 5 || bb)) expect_scaled(what[j], shape, got[j], want[j], n[j]);
                for (int j = 0; j < 7; j++) free(got[j]), free(want[j]);
                free(ends), free(in);
            }
    hae_tr_delta_shape bad = {.B = 1, .T = 4, .H = 1, .K = 2, .V = 2, .scale = 1.0f, .chunk = -1};
    float buf[64] = {0};
    cr_expect_eq(hae_tr_delta_fwd(be, &bad, buf, buf, buf, NULL, NULL, buf, buf), HAE_ERR_INVALID);
    cr_expect(strstr(hae_last_error(), "chunk -1") != NULL, "%s", hae_last_error());
    cr_expect_eq(hae_tr_delta_bwd(be, &bad, buf, buf, buf, NULL, NULL, buf, buf, buf, buf, buf, NULL, NULL),
                 HAE_ERR_INVALID);
    hae_backend_destroy(be);
}

/* GPU tests of the FP8 lightning indexer (indexer/): every CUDA kernel held to the CPU implementation
 * on the same fresh seeded inputs, outputs POISONED (0xFF bytes) on both sides first, whole buffers
 * compared (gaps between strided rows included). Every message names the op, the shape and the seed.
 *
 *  - fp8_quant and hadamard: bit-exact (codes, scales, rotated rows), f32 and bf16, strided rows, blocks
 *    of every magnitude class (zero, subnormal, 448 and just above, FLT_MAX, inf, NaN, the midpoints
 *    between neighbouring e4m3 codes), D up to 16384 for the rotation.
 *  - index_write: the pages bit-exact, through the same calls a run makes.
 *  - index_logits: NaN and -inf positions identical, then per element
 *        |gpu - cpu| <= tol * mag(b, t, s)
 *    with mag the same logit over magnitudes. Why the tolerance: products of FP8 codes are exact on
 *    both sides; the CPU sums them in fp32, CUDA in its tensor cores (see index_logits_cuda.cu): the
 *    wgmma kernel (D = 128, 16-byte aligned pages) truncates each 32-byte step of a dot to 13
 *    fraction bits, the mma.sync kernel (every other case) sums as fp32 does. Two input regimes:
 *      exact: codes are integers in [-4, 4] (products <= 16, a 128-block's dot <= 2048 < 2^14), which
 *        every step of either MMA holds exactly; power-of-two scales keep the scaled dots exact on both
 *        sides, so only the fp32 sum over heads differs in order: |error| <= (H + 2) 2^-24 sum_h |v
 *        relu(dot)|, and tol = 1e-5 with mag = sum_h |v_h| relu(dot_h) ks (the CPU's logits with |w|)
 *        holds it;
 *      realistic: codes of N(0, 8^2) values over the whole e4m3 range, mag = sum_h |v_h| sum_d |q k ks|
 *        (the CPU's logits with |w| and sign-cleared codes). wgmma: each of a dot's 4 steps errs by
 *        < 2^-13 of the magnitude summed so far, so tol = 4.9e-4 (> 4 2^-13; an H200 gave 5.5e-5 at
 *        worst). mma.sync: fp32 sums of H D terms in two orders differ by at most ~(H + D) 2^-24 of the
 *        sum of their magnitudes, so tol = 1e-6. The worst ratio seen is logged.
 *    Plus a garbage block table and garbage seq_lens: no fault, nothing written outside the logits
 *    (guard bytes on both sides), NaN exactly for keys of bad pages, the rest as the CPU's.
 * main() is tests/main_gpu.c's. */
#include "internal.h"
#include "gpu_pair.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CTX_N 320

TestSuite(gpu_indexer, .init = gpu_pair_setup, .fini = gpu_pair_teardown, .timeout = 600);

#define TV_C(p, dt, nd, shape, stride) tv((p).c, dt, HAE_CPU, nd, shape, stride)
#define TV_G(p, dt, nd, shape, stride) tv((p).g, dt, HAE_CUDA, nd, shape, stride)

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    cr_assert(p, "out of memory (%zu bytes)", n);
    return p;
}

/* ---------------------------------------------------------------- fp8_quant */

static void put(void *x, hae_dtype dt, int64_t i, float v) {
    if (dt == HAE_F32) ((float *)x)[i] = v;
    else ((uint16_t *)x)[i] = hae_f32_to_bf16(v);
}

/* Runs both sides on N rows of D values of host x (row stride xs), q and scale with row strides qs and
 * ss (gaps poisoned), and compares q and scale bit for bit. */
static void quant_pair(const char *what, const void *x, hae_dtype dt, int64_t N, int64_t D, int64_t xs, int64_t qs,
                       int64_t ss, uint64_t seed) {
    const int64_t nb = D / 128;
    char ctx[CTX_N];
    snprintf(ctx, sizeof ctx, "%s: x [%lld, %lld] %s row stride %lld, q row stride %lld, scale row stride %lld, seed %llu",
             what, (long long)N, (long long)D, hae_dtype_name(dt), (long long)xs, (long long)qs, (long long)ss,
             (unsigned long long)seed);
    pbuf px = pb_new(x, (size_t)(N * xs) * hae_dtype_size(dt));
    pbuf pq = pb_poison((size_t)(N * qs)), ps = pb_poison(sizeof(float) * (size_t)(N * ss));
    const int64_t sx[2] = {N, D}, stx[2] = {xs, 1}, stq[2] = {qs, 1}, ssh[2] = {N, nb}, sts[2] = {ss, 1};
    hae_fp8_quant_args ac = {TV_C(px, dt, 2, sx, stx), TV_C(pq, HAE_FP8_E4M3, 2, sx, stq), TV_C(ps, HAE_F32, 2, ssh, sts)};
    hae_fp8_quant_args ag = {TV_G(px, dt, 2, sx, stx), TV_G(pq, HAE_FP8_E4M3, 2, sx, stq), TV_G(ps, HAE_F32, 2, ssh, sts)};
    if (gpu_ran(hae_fp8_quant(g_cpu, &ac), "cpu", "fp8_quant", ctx) && gpu_ran(hae_fp8_quant(g_gpu, &ag), "cuda", "fp8_quant", ctx) &&
        gpu_done("fp8_quant", ctx)) {
        pb_compare("fp8_quant: codes", ctx, &pq, HAE_FP8_E4M3, -1);
        pb_compare("fp8_quant: scales", ctx, &ps, HAE_F32, -1);
    }
    pb_free(&px), pb_free(&pq), pb_free(&ps);
}

Test(gpu_indexer, fp8_quant_random_rows_f32_bf16_strided) {
    static const struct {
        int64_t N, D, xpad, qpad, spad;
    } cases[] = {{1, 128, 0, 0, 0}, {9, 256, 37, 5, 3}, {33, 512, 0, 7, 1}, {1000, 128, 3, 0, 0}, {4097, 384, 1, 16, 2}};
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++)
        for (int ti = 0; ti < 2; ti++) {
            const hae_dtype dt = ti ? HAE_BF16 : HAE_F32;
            const int64_t N = cases[ci].N, D = cases[ci].D, xs = D + cases[ci].xpad;
            const uint64_t seed = 100 + 2 * ci + (uint64_t)ti;
            tu_rng r = tu_rng_make(seed);
            void *x = host_poison((size_t)(N * xs) * hae_dtype_size(dt));
            for (int64_t n = 0; n < N; n++) {
                const double mag = ldexp(1.0, (int)tu_uniform(&r, -40, 40)); /* a magnitude per row */
                for (int64_t i = 0; i < D; i++) put(x, dt, n * xs + i, (float)(tu_normal(&r) * mag));
            }
            quant_pair("random rows, magnitudes 2^-40..2^40", x, dt, N, D, xs, D + cases[ci].qpad,
                       D / 128 + cases[ci].spad, seed);
            free(x);
        }
}

/* One row of blocks, each a magnitude class the conversion must get right bit for bit. */
Test(gpu_indexer, fp8_quant_every_magnitude_class) {
    enum { NB = 12 };
    const int64_t D = NB * 128;
    for (int ti = 0; ti < 2; ti++) {
        const hae_dtype dt = ti ? HAE_BF16 : HAE_F32;
        const uint64_t seed = 150 + (uint64_t)ti;
        tu_rng r = tu_rng_make(seed);
        void *x = xmalloc((size_t)D * hae_dtype_size(dt));
        for (int64_t i = 0; i < D; i++) {
            const int c = (int)(i / 128), j = (int)(i % 128);
            const double u = tu_uniform(&r, -1, 1);
            double v;
            switch (c) {
            case 0: v = j % 3 ? 0.0 : -0.0; break;                        /* all zero: scale 1, signed zeros */
            case 1: v = 1e-42 * u; break;                                 /* subnormal floats: scale 2^-126 */
            case 2: v = j == 17 ? 448.0 : 448.0 * u; break;               /* amax exactly 448: scale 1 */
            case 3: v = j == 5 ? -449.0 : 448.0 * u; break;               /* just above: scale 2 */
            case 4: v = j == 3 ? FLT_MAX : 3e38 * u; break;               /* the top of the range */
            case 5: v = j == 9 ? INFINITY : u; break;                     /* inf: NaN scale, NaN codes */
            case 6: v = j == 100 ? NAN : u; break;                        /* NaN likewise */
            case 7: v = 1e-30 * u; break;                                 /* tiny but normal */
            case 8: /* the midpoints between neighbouring positive codes up to 432, and 448 to pin the scale to 1 */
            case 9: /* ... and their negatives */
                v = j >= 126 ? 448.0
                             : 0.5 * ((double)hae_fp8e4m3_to_f32((uint8_t)j) + hae_fp8e4m3_to_f32((uint8_t)(j + 1)));
                if (c == 9 && j < 126) v = -v;
                break;
            case 10: v = j == 0 ? 448.0 : ldexp(1.5 * u, -6); break;     /* around e4m3's subnormal boundary */
            default: v = tu_normal(&r) * 3.0; break;
            }
            put(x, dt, i, (float)v);
        }
        quant_pair("every magnitude class", x, dt, 1, D, D, D, NB, seed);
        free(x);
    }
}

/* ---------------------------------------------------------------- hadamard */

Test(gpu_indexer, hadamard_bit_exact_up_to_16384) {
    for (int64_t D = 1; D <= 16384; D *= 2)
        for (int ti = 0; ti < 2; ti++) {
            const hae_dtype dt = ti ? HAE_BF16 : HAE_F32;
            const int64_t N = D <= 1024 ? 37 : 5, xs = D + 3, es = (int64_t)hae_dtype_size(dt);
            const uint64_t seed = 200 + (uint64_t)(D * 2 + ti);
            char ctx[CTX_N];
            snprintf(ctx, sizeof ctx, "x [%lld, %lld] %s row stride %lld, seed %llu", (long long)N, (long long)D,
                     hae_dtype_name(dt), (long long)xs, (unsigned long long)seed);
            tu_rng r = tu_rng_make(seed);
            void *x = host_poison((size_t)(N * xs * es));
            for (int64_t n = 0; n < N; n++) tu_fill((char *)x + n * xs * es, dt, D, &r, -2, 2);
            for (int64_t i = 0; i < D; i++) put(x, dt, (N - 1) * xs + i, i == D / 3 ? 100.0f : 0.0f); /* an outlier */
            pbuf px = pb_new(x, (size_t)(N * xs * es));
            const int64_t sx[2] = {N, D}, st[2] = {xs, 1};
            hae_hadamard_args ac = {TV_C(px, dt, 2, sx, st)}, ag = {TV_G(px, dt, 2, sx, st)};
            if (gpu_ran(hae_hadamard(g_cpu, &ac), "cpu", "hadamard", ctx) && gpu_ran(hae_hadamard(g_gpu, &ag), "cuda", "hadamard", ctx) &&
                gpu_done("hadamard", ctx))
                pb_compare("hadamard: rows (in place, gaps included)", ctx, &px, dt, -1);
            pb_free(&px);
            free(x);
        }
}

/* Past what one CTA holds the CUDA rotation says so instead of running. */
Test(gpu_indexer, hadamard_too_long_rows_are_unsupported) {
    const int64_t D = 32768;
    pbuf px = pb_poison(sizeof(float) * (size_t)D);
    const int64_t sx[2] = {1, D};
    hae_hadamard_args ag = {TV_G(px, HAE_F32, 2, sx, NULL)};
    hae_status st = hae_hadamard(g_gpu, &ag);
    cr_expect_eq(st, HAE_ERR_UNSUPPORTED, "hadamard x [1, %lld] f32: status %s (%s), expected unsupported", (long long)D,
                 hae_status_name(st), hae_last_error());
    cr_expect(strstr(hae_last_error(), "32768") != NULL, "hadamard D = 32768: message \"%s\" does not name D",
              hae_last_error());
    pb_free(&px);
}

/* ---------------------------------------------------------------- the paged cache and the logits */

typedef struct {
    const char *what;
    int B, T, H, D, P;
    int lens[4];
    int L;
    bool q_scale;  /* the queries' scales passed apart (else folded into w) */
    int q_pad;     /* bytes after each (b, t) query row (4: rows not 16-byte aligned) */
    bool pages_off; /* the pages start 4 bytes into their buffer (4-byte key copies) */
} idx_case;

static const idx_case IDX_CASES[] = {
    {"decode, 64 heads, pages of 64", 4, 1, 64, 128, 64, {1, 100, 4097, 9000}, 9100, true, 0, false},
    {"decode of 2, 32 heads", 3, 2, 32, 128, 16, {2, 33, 700}, 720, false, 0, false},
    {"3 queries, 3 heads", 2, 3, 3, 128, 16, {3, 50}, 64, true, 4, false},
    {"prefill, 64 heads", 2, 9, 64, 128, 64, {9, 300}, 310, true, 0, false},
    {"prefill, one head, pages of 1", 2, 17, 1, 128, 1, {17, 90}, 100, false, 0, false},
    {"D 256, 64 heads, pages of 1", 2, 4, 64, 256, 1, {4, 21}, 24, true, 0, false},
    {"decode, D 256", 3, 1, 4, 256, 8, {5, 33, 90}, 96, false, 4, false},
    {"long prefill, 64 heads", 1, 64, 64, 128, 64, {3000}, 3100, true, 0, false},
    {"one token", 1, 1, 4, 128, 64, {1}, 1, false, 0, false},
    {"decode, 48 heads, unaligned pages", 2, 1, 48, 128, 32, {500, 77}, 600, true, 0, true},
    {"prefill, 16 heads, unaligned pages", 2, 5, 16, 128, 64, {5, 200}, 260, false, 4, true},
    {"prefill, 64 heads, pages of 48", 2, 6, 64, 128, 48, {6, 500}, 520, true, 0, false},
    {"decode, 64 heads, pages of 24", 3, 1, 64, 128, 24, {1, 250, 1000}, 1010, false, 0, false},
};

static int idx_desc(const idx_case *c, bool exact, uint64_t seed, char *buf, size_t n) {
    int used = snprintf(buf, n, "%s: B=%d T=%d H_I=%d D=%d P=%d L=%d%s%s%s, %s codes, seed %llu, seq_lens {", c->what,
                        c->B, c->T, c->H, c->D, c->P, c->L, c->q_scale ? " q_scale" : "", c->q_pad ? " q rows +4" : "",
                        c->pages_off ? " pages +4" : "", exact ? "integer" : "normal", (unsigned long long)seed);
    for (int b = 0; b < c->B && used > 0 && (size_t)used < n; b++)
        used += snprintf(buf + used, n - (size_t)used, "%s%d", b ? ", " : "", c->lens[b]);
    if (used > 0 && (size_t)used < n) used += snprintf(buf + used, n - (size_t)used, "}");
    return used;
}

/* Host data of one case: keys of every position, the new queries, a shuffled block table whose entries
 * past each sequence's pages are garbage (never read), and poisoned pages. */
typedef struct {
    int maxlen, max_pages, n_pages, nsc;
    int64_t row_bytes, q_row;
    uint8_t *k, *q;     /* [B, maxlen, D], [B, T] rows of q_row bytes (H D, then q_pad) */
    float *ks, *w, *qs; /* [B, maxlen, D / 128], [B, T, H], [B, T, H] */
    float w_scale;
    int32_t *bt, *lens; /* [B, max_pages], [B] */
} idx_data;

static uint8_t code_of(tu_rng *r, bool exact) {
    return hae_f32_to_fp8e4m3(exact ? (float)floor(tu_uniform(r, -4, 5)) : (float)(tu_normal(r) * 8));
}

static idx_data idx_make(const idx_case *c, bool exact, uint64_t seed) {
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
    d.q_row = (int64_t)c->H * c->D + c->q_pad;
    const int64_t nk = (int64_t)c->B * d.maxlen, nq = (int64_t)c->B * c->T;
    d.k = xmalloc((size_t)(nk * c->D));
    d.ks = xmalloc(sizeof(float) * (size_t)(nk * d.nsc));
    d.q = host_poison((size_t)(nq * d.q_row));
    d.w = xmalloc(sizeof(float) * (size_t)(nq * c->H));
    d.qs = xmalloc(sizeof(float) * (size_t)(nq * c->H));
    d.w_scale = (float)(1.0 / sqrt((double)c->H * c->D));
    d.bt = xmalloc(sizeof(int32_t) * (size_t)(c->B * d.max_pages));
    d.lens = xmalloc(sizeof(int32_t) * (size_t)c->B);
    for (int64_t i = 0; i < nk * c->D; i++) d.k[i] = code_of(&r, exact);
    for (int64_t i = 0; i < nk * d.nsc; i++) d.ks[i] = ldexpf(1.0f, -(int)tu_uniform(&r, 0, 8));
    for (int64_t i = 0; i < nq; i++)
        for (int64_t j = 0; j < (int64_t)c->H * c->D; j++) d.q[i * d.q_row + j] = code_of(&r, exact);
    for (int64_t i = 0; i < nq * c->H; i++) d.w[i] = (float)tu_uniform(&r, -0.5, 1.0);
    for (int64_t i = 0; i < nq * c->H; i++) d.qs[i] = ldexpf(1.0f, -(int)tu_uniform(&r, 0, 8));
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

static void idx_free(idx_data *d) { free(d->k), free(d->ks), free(d->q), free(d->w), free(d->qs), free(d->bt), free(d->lens); }

/* The paged cache on both sides: pages (poisoned; `off` bytes into their buffer) and the block table. */
typedef struct {
    pbuf pages, bt;
    int64_t off;
} idx_cache_pair;

static idx_cache_pair cache_pair(const idx_case *c, const idx_data *d) {
    idx_cache_pair cp;
    cp.off = c->pages_off ? 4 : 0;
    cp.pages = pb_poison((size_t)(cp.off + d->n_pages * d->row_bytes));
    cp.bt = pb_new(d->bt, sizeof(int32_t) * (size_t)(c->B * d->max_pages));
    return cp;
}

static hae_index_cache cache_view(const idx_case *c, const idx_data *d, const idx_cache_pair *cp, bool gpu) {
    const hae_device dev = gpu ? HAE_CUDA : HAE_CPU;
    char *pages = (char *)(gpu ? cp->pages.g : cp->pages.c) + cp->off;
    return (hae_index_cache){.pages = hae_tensor_2d(pages, HAE_FP8_E4M3, dev, d->n_pages, d->row_bytes),
                             .block_table = hae_tensor_2d(gpu ? cp->bt.g : cp->bt.c, HAE_I32, dev, c->B, d->max_pages),
                             .page_size = c->P,
                             .head_dim = c->D};
}

/* Fills the cache on both sides the way a run does: each sequence's history [0, len - T) by a call of
 * its own (B = 1 views), then the T new keys of all sequences in one call from strided rows; the pages
 * must come out bit-identical. */
static bool fill_cache_pair(const idx_case *c, const idx_data *d, idx_cache_pair *cp, const char *ctx) {
    const int64_t D = c->D, nsc = d->nsc, T = c->T;
    bool ok = true;
    for (int b = 0; b < c->B && ok; b++) {
        int32_t hist = c->lens[b] - c->T;
        if (hist == 0) continue;
        pbuf pk = pb_new(d->k + (int64_t)b * d->maxlen * D, (size_t)(hist * D));
        pbuf ps = pb_new(d->ks + (int64_t)b * d->maxlen * nsc, sizeof(float) * (size_t)(hist * nsc));
        pbuf pl = pb_new(&hist, sizeof hist);
        for (int side = 0; side < 2 && ok; side++) {
            const bool gpu = side == 1;
            const hae_device dev = gpu ? HAE_CUDA : HAE_CPU;
            hae_index_write_args w = {
                .k = hae_tensor_3d(gpu ? pk.g : pk.c, HAE_FP8_E4M3, dev, 1, hist, D),
                .k_scale = hae_tensor_3d(gpu ? ps.g : ps.c, HAE_F32, dev, 1, hist, nsc),
                .cache = cache_view(c, d, cp, gpu),
                .seq_lens = hae_tensor_1d(gpu ? pl.g : pl.c, HAE_I32, dev, 1)};
            w.cache.block_table = hae_tensor_narrow(w.cache.block_table, 0, b, 1);
            ok = gpu_ran(hae_index_write(gpu ? g_gpu : g_cpu, &w), gpu ? "cuda" : "cpu", "index_write (history)", ctx);
        }
        ok = ok && gpu_done("index_write (history)", ctx);
        pb_free(&pk), pb_free(&ps), pb_free(&pl);
    }
    if (!ok) return false;
    const int64_t kst = D + 16; /* new keys in strided rows */
    uint8_t *kn = host_poison((size_t)(c->B * T * kst));
    float *ksn = xmalloc(sizeof(float) * (size_t)(c->B * T * nsc));
    for (int b = 0; b < c->B; b++)
        for (int64_t t = 0; t < T; t++) {
            const int64_t s = c->lens[b] - T + t;
            memcpy(kn + (b * T + t) * kst, d->k + ((int64_t)b * d->maxlen + s) * D, (size_t)D);
            memcpy(ksn + (b * T + t) * nsc, d->ks + ((int64_t)b * d->maxlen + s) * nsc, sizeof(float) * (size_t)nsc);
        }
    pbuf pk = pb_new(kn, (size_t)(c->B * T * kst)), ps = pb_new(ksn, sizeof(float) * (size_t)(c->B * T * nsc));
    pbuf pl = pb_new(d->lens, sizeof(int32_t) * (size_t)c->B);
    const int64_t shk[3] = {c->B, T, D}, stk[3] = {T * kst, kst, 1}, shs[3] = {c->B, T, nsc};
    for (int side = 0; side < 2 && ok; side++) {
        const bool gpu = side == 1;
        hae_index_write_args w = {.k = gpu ? TV_G(pk, HAE_FP8_E4M3, 3, shk, stk) : TV_C(pk, HAE_FP8_E4M3, 3, shk, stk),
                                  .k_scale = gpu ? TV_G(ps, HAE_F32, 3, shs, NULL) : TV_C(ps, HAE_F32, 3, shs, NULL),
                                  .cache = cache_view(c, d, cp, gpu),
                                  .seq_lens = gpu ? TV_G(pl, HAE_I32, 1, (int64_t[]){c->B}, NULL)
                                                  : TV_C(pl, HAE_I32, 1, (int64_t[]){c->B}, NULL)};
        ok = gpu_ran(hae_index_write(gpu ? g_gpu : g_cpu, &w), gpu ? "cuda" : "cpu", "index_write (new keys)", ctx);
    }
    ok = ok && gpu_done("index_write (new keys)", ctx) && pb_compare("index_write: pages", ctx, &cp->pages, HAE_FP8_E4M3, -1);
    pb_free(&pk), pb_free(&ps), pb_free(&pl);
    free(kn), free(ksn);
    return ok;
}

/* The logits buffer: [B, T] rows of Ls floats, with kGuard floats of guard bytes before and after. */
enum { kGuard = 64 };
#define GUARD_BYTE 0xAB

typedef struct {
    pbuf buf;
    int64_t Ls, n; /* row stride, floats of the logits proper */
} logits_pair;

static logits_pair logits_poisoned(int64_t rows, int64_t Ls) {
    logits_pair lp = {.Ls = Ls, .n = rows * Ls};
    const size_t bytes = sizeof(float) * (size_t)(lp.n + 2 * kGuard);
    unsigned char *h = host_poison(bytes);
    memset(h, GUARD_BYTE, sizeof(float) * kGuard);
    memset(h + bytes - sizeof(float) * kGuard, GUARD_BYTE, sizeof(float) * kGuard);
    lp.buf = pb_new(h, bytes);
    free(h);
    return lp;
}

static hae_tensor logits_view(const logits_pair *lp, int B, int T, int L, bool gpu) {
    float *base = (float *)(gpu ? lp->buf.g : lp->buf.c) + kGuard;
    hae_tensor t = hae_tensor_3d(base, HAE_F32, gpu ? HAE_CUDA : HAE_CPU, B, T, L);
    t.stride[1] = lp->Ls, t.stride[0] = T * lp->Ls;
    return t;
}

/* The guard bytes of the GPU's copy are untouched. */
static bool guards_intact(const logits_pair *lp, const float *g, const char *ctx) {
    const unsigned char *h = (const unsigned char *)g;
    const size_t tail = sizeof(float) * (size_t)(kGuard + lp->n);
    for (size_t i = 0; i < sizeof(float) * kGuard; i++)
        if (h[i] != GUARD_BYTE || h[tail + i] != GUARD_BYTE) {
            cr_expect(0, "index_logits [%s]: a guard byte %s the logits was written (byte %zu of %d)", ctx,
                      h[i] != GUARD_BYTE ? "before" : "after", i, (int)(sizeof(float) * kGuard));
            return false;
        }
    return true;
}

/* Runs index_logits on one side into lp with the given queries, weights and pages views. */
static hae_status logits_run(hae_backend *be, const idx_case *c, const idx_data *d, const pbuf *pq, const pbuf *pw,
                             const pbuf *pqs, const pbuf *pl, hae_index_cache cache, const logits_pair *lp,
                             bool fp32) {
    const bool gpu = be == g_gpu;
    const hae_device dev = gpu ? HAE_CUDA : HAE_CPU;
    hae_index_logits_args a = {
        .q = hae_tensor_4d(gpu ? pq->g : pq->c, HAE_FP8_E4M3, dev, c->B, c->T, c->H, c->D),
        .w = hae_tensor_3d(gpu ? pw->g : pw->c, HAE_F32, dev, c->B, c->T, c->H),
        .cache = cache,
        .seq_lens = hae_tensor_1d(gpu ? pl->g : pl->c, HAE_I32, dev, c->B),
        .logits = logits_view(lp, c->B, c->T, c->L, gpu),
        .w_scale = d->w_scale,
        .exact = fp32};
    a.q.stride[1] = d->q_row, a.q.stride[0] = c->T * d->q_row;
    if (c->q_scale) a.q_scale = hae_tensor_3d(gpu ? pqs->g : pqs->c, HAE_F32, dev, c->B, c->T, c->H);
    return hae_index_logits(be, &a);
}

/* NaN / inf positions must agree, then |gpu - cpu| <= tol mag element by element (mag from the CPU
 * run over magnitudes, same layout). Returns the largest |gpu - cpu| / mag seen (0 where mag = 0). */
static double logits_compare(const float *cpu, const float *gpu, const float *mag, int64_t n, double tol, const char *ctx,
                             int64_t Ls) {
    int64_t bad = 0, first_bad = -1, worst = -1;
    double worst_ratio = 0;
    for (int64_t i = 0; i < n; i++) {
        const float cv = cpu[i], gv = gpu[i];
        const bool cn = isnan(cv), gn = isnan(gv), ci = isinf(cv), gi = isinf(gv);
        if (cn != gn || ci != gi || (ci && (cv > 0) != (gv > 0))) {
            if (first_bad < 0) first_bad = i;
            bad++;
            continue;
        }
        if (cn || ci) continue;
        const double err = fabs((double)gv - (double)cv), m = mag[i];
        const double ratio = m > 0 ? err / m : (err > 0 ? INFINITY : 0.0);
        if (ratio > worst_ratio || worst < 0) worst_ratio = ratio, worst = i;
    }
    if (bad)
        cr_expect(0, "index_logits [%s]: %lld elements are NaN/inf on one side only; first at row %lld key %lld: cpu "
                  "%.9g gpu %.9g", ctx, (long long)bad, (long long)(first_bad / Ls), (long long)(first_bad % Ls),
                  (double)cpu[first_bad], (double)gpu[first_bad]);
    if (worst >= 0 && !(worst_ratio <= tol))
        cr_expect(0, "index_logits [%s]: |gpu - cpu| / mag = %.3g > %.3g at row %lld key %lld: cpu %.9g gpu %.9g mag "
                  "%.9g", ctx, worst_ratio, tol, (long long)(worst / Ls), (long long)(worst % Ls), (double)cpu[worst],
                  (double)gpu[worst], (double)mag[worst]);
    return worst_ratio;
}

/* One case in one regime: write the cache on both sides, compute the logits on both, the magnitudes
 * on the CPU, compare. fp32: the op's `exact` switch (every dot summed in fp32 on CUDA). */
static void logits_case(const idx_case *c, bool exact, bool fp32, uint64_t seed) {
    char ctx[CTX_N];
    const int len = idx_desc(c, exact, seed, ctx, sizeof ctx);
    if (fp32 && len > 0 && len < CTX_N) snprintf(ctx + len, sizeof ctx - (size_t)len, ", exact sums");
    idx_data d = idx_make(c, exact, seed);
    idx_cache_pair cp = cache_pair(c, &d);
    const int64_t nq = (int64_t)c->B * c->T;
    if (!fill_cache_pair(c, &d, &cp, ctx)) goto out_cache;
    {
        pbuf pq = pb_new(d.q, (size_t)(nq * d.q_row)), pw = pb_new(d.w, sizeof(float) * (size_t)(nq * c->H));
        pbuf pqs = pb_new(d.qs, sizeof(float) * (size_t)(nq * c->H)), pl = pb_new(d.lens, sizeof(int32_t) * (size_t)c->B);
        logits_pair lp = logits_poisoned(nq, c->L + 5);
        if (gpu_ran(logits_run(g_cpu, c, &d, &pq, &pw, &pqs, &pl, cache_view(c, &d, &cp, false), &lp, fp32), "cpu",
                "index_logits", ctx) &&
            gpu_ran(logits_run(g_gpu, c, &d, &pq, &pw, &pqs, &pl, cache_view(c, &d, &cp, true), &lp, fp32), "cuda",
                "index_logits", ctx) &&
            gpu_done("index_logits", ctx)) {
            float *g = pb_fetch(&lp.buf);
            /* magnitudes: |w| always; in the realistic regime sign-cleared codes of q and of the keys */
            float *aw = xmalloc(sizeof(float) * (size_t)(nq * c->H));
            for (int64_t i = 0; i < nq * c->H; i++) aw[i] = fabsf(d.w[i]);
            uint8_t *aq = xmalloc((size_t)(nq * d.q_row)), *apg = xmalloc(cp.pages.bytes);
            memcpy(aq, d.q, (size_t)(nq * d.q_row));
            memcpy(apg, cp.pages.c, cp.pages.bytes);
            if (!exact) {
                for (int64_t i = 0; i < nq * d.q_row; i++) aq[i] &= 0x7f;
                for (int64_t pg = 0; pg < d.n_pages; pg++)
                    for (int64_t i = 0; i < (int64_t)c->P * c->D; i++) apg[cp.off + pg * d.row_bytes + i] &= 0x7f;
            }
            pbuf mq = {.bytes = pq.bytes, .c = aq}, mw = {.bytes = pw.bytes, .c = aw};
            hae_index_cache mc = cache_view(c, &d, &cp, false);
            mc.pages.data = apg + cp.off;
            logits_pair mp = {.buf = {.bytes = lp.buf.bytes, .c = xmalloc(lp.buf.bytes)}, .Ls = lp.Ls, .n = lp.n};
            if (gpu_ran(logits_run(g_cpu, c, &d, &mq, &mw, &pqs, &pl, mc, &mp, true), "cpu", "index_logits (magnitudes)",
                    ctx)) {
                const float *cpu = (const float *)lp.buf.c + kGuard, *gpu = g + kGuard, *mag = (const float *)mp.buf.c + kGuard;
                guards_intact(&lp, g, ctx);
                const bool wgmma = c->D == 128 && !c->pages_off && !fp32; /* the kernel that takes this case */
                const double tol = exact ? 1e-5 : wgmma ? 4.9e-4 : 1e-6;
                const double worst = logits_compare(cpu, gpu, mag, lp.n, tol, ctx, lp.Ls);
                cr_log_info("index_logits [%s]: worst |gpu - cpu| / mag %.3g (tolerance %.3g)", ctx, worst, tol);
            }
            free(mp.buf.c), free(aq), free(apg), free(aw), free(g);
        }
        pb_free(&pq), pb_free(&pw), pb_free(&pqs), pb_free(&pl), pb_free(&lp.buf);
    }
out_cache:
    pb_free(&cp.pages), pb_free(&cp.bt);
    idx_free(&d);
}

Test(gpu_indexer, index_write_and_logits_exact_inputs) {
    for (size_t ci = 0; ci < sizeof IDX_CASES / sizeof *IDX_CASES; ci++) logits_case(&IDX_CASES[ci], true, false, 500 + ci);
}

Test(gpu_indexer, index_write_and_logits_realistic_inputs) {
    for (size_t ci = 0; ci < sizeof IDX_CASES / sizeof *IDX_CASES; ci++) logits_case(&IDX_CASES[ci], false, false, 600 + ci);
}

/* The exact switch: every case, wgmma's shapes included, within fp32 rounding of the CPU. */
Test(gpu_indexer, index_write_and_logits_exact_sums) {
    for (size_t ci = 0; ci < sizeof IDX_CASES / sizeof *IDX_CASES; ci++) logits_case(&IDX_CASES[ci], false, true, 700 + ci);
}

/* ---------------------------------------------------------------- garbage seq_lens and block tables
 * The CUDA ops do not read the lengths back, so they must survive any values: sequences of lengths
 * INT_MAX, INT_MIN, -5, 0, past max_pages P and past L, and a valid one whose table holds -1 and
 * n_pages + 3 for two of its pages. Nothing may be written outside the logits (guards) or into pages
 * no valid slot names; keys of the bad pages come out NaN, the rest of the valid sequences as on the
 * CPU (which runs them with the bad entries repaired; integer codes and weights >= 0, so the two differ
 * only by fp32 rounding of positive sums), rows of negative positions all -inf. */
Test(gpu_indexer, garbage_lengths_and_block_table_stay_inside) {
    const int B = 7, T = 2, H = 16, D = 128, P = 16, L = 200, max_pages = 8, n_real = 24;
    const int n_pages = n_real + 2; /* pages 0 and n_pages - 1: no valid entry names them */
    const int64_t row_bytes = (int64_t)P * (D + 4), Ls = L + 3;
    const int32_t lens[7] = {120, INT32_MAX, INT32_MIN, -5, 0, max_pages * P + 40, 100};
    const uint64_t seed = 900;
    char ctx[CTX_N];
    snprintf(ctx, sizeof ctx, "garbage: B=%d T=%d H_I=%d D=%d P=%d L=%d max_pages=%d, pages 1..%d real, seq_lens {120, "
             "INT_MAX, INT_MIN, -5, 0, %d, 100}, seed %llu", B, T, H, D, P, L, max_pages, n_real, max_pages * P + 40,
             (unsigned long long)seed);
    tu_rng r = tu_rng_make(seed);
    uint8_t *pages = xmalloc((size_t)(n_pages * row_bytes));
    for (int64_t pg = 0; pg < n_pages; pg++) {
        uint8_t *base = pages + pg * row_bytes;
        for (int64_t i = 0; i < (int64_t)P * D; i++) base[i] = code_of(&r, true);
        for (int i = 0; i < P; i++) ((float *)(base + P * D))[i] = ldexpf(1.0f, -(int)tu_uniform(&r, 0, 6));
    }
    int32_t bt[7 * 8], bt_fixed[7 * 8];
    for (int i = 0; i < B * max_pages; i++) bt[i] = 1 + (int32_t)tu_uniform(&r, 0, n_real);
    bt[0 * max_pages + 2] = -1; /* sequence 0: keys 32..47 and 80..95 have no page */
    bt[0 * max_pages + 5] = n_pages + 3;
    bt[3 * max_pages + 1] = INT32_MIN, bt[5 * max_pages + 7] = INT32_MAX;
    memcpy(bt_fixed, bt, sizeof bt);
    bt_fixed[0 * max_pages + 2] = 3, bt_fixed[0 * max_pages + 5] = 4;
    uint8_t *q = xmalloc((size_t)(B * T * H * D));
    float *w = xmalloc(sizeof(float) * (size_t)(B * T * H));
    for (int64_t i = 0; i < (int64_t)B * T * H * D; i++) q[i] = code_of(&r, true);
    for (int64_t i = 0; i < (int64_t)B * T * H; i++) w[i] = (float)tu_uniform(&r, 0.0, 1.0);

    /* index_write with the same garbage: only tokens whose slot exists may land, and nowhere else */
    uint8_t *kn = xmalloc((size_t)(B * T * D));
    float *ksn = xmalloc(sizeof(float) * (size_t)(B * T));
    for (int64_t i = 0; i < (int64_t)B * T * D; i++) kn[i] = code_of(&r, false);
    for (int64_t i = 0; i < (int64_t)B * T; i++) ksn[i] = ldexpf(1.0f, -(int)tu_uniform(&r, 0, 6));
    uint8_t *want = xmalloc((size_t)(n_pages * row_bytes));
    memcpy(want, pages, (size_t)(n_pages * row_bytes));
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const int64_t s = (int64_t)lens[b] - T + t;
            if (s < 0 || s >= (int64_t)max_pages * P) continue;
            const int32_t pg = bt[b * max_pages + s / P];
            if (pg < 0 || pg >= n_pages) continue;
            memcpy(want + pg * row_bytes + (s % P) * D, kn + ((int64_t)b * T + t) * D, (size_t)D);
            memcpy(want + pg * row_bytes + P * D + (s % P) * 4, ksn + b * T + t, 4);
        }
    pbuf pp = pb_new(pages, (size_t)(n_pages * row_bytes)), pbt = pb_new(bt, sizeof bt), plen = pb_new(lens, sizeof lens);
    pbuf pk = pb_new(kn, (size_t)(B * T * D)), pks = pb_new(ksn, sizeof(float) * (size_t)(B * T));
    hae_index_cache gc = {.pages = hae_tensor_2d(pp.g, HAE_FP8_E4M3, HAE_CUDA, n_pages, row_bytes),
                          .block_table = hae_tensor_2d(pbt.g, HAE_I32, HAE_CUDA, B, max_pages), .page_size = P, .head_dim = D};
    hae_index_write_args wa = {.k = hae_tensor_3d(pk.g, HAE_FP8_E4M3, HAE_CUDA, B, T, D),
                               .k_scale = hae_tensor_3d(pks.g, HAE_F32, HAE_CUDA, B, T, 1), .cache = gc,
                               .seq_lens = hae_tensor_1d(plen.g, HAE_I32, HAE_CUDA, B)};
    if (gpu_ran(hae_index_write(g_gpu, &wa), "cuda", "index_write (garbage)", ctx) && gpu_done("index_write (garbage)", ctx)) {
        uint8_t *got = pb_fetch(&pp);
        for (int64_t i = 0; i < n_pages * row_bytes; i++)
            if (got[i] != want[i]) {
                cr_expect(0, "index_write [%s]: page %lld byte %lld is 0x%02x, expected 0x%02x", ctx,
                          (long long)(i / row_bytes), (long long)(i % row_bytes), got[i], want[i]);
                break;
            }
        free(got);
    }
    pb_set(&pp, pages); /* the logits below read the original pages */

    /* the logits with the garbage on the GPU; on the CPU the valid sequences alone, bad pages repaired */
    pbuf pq = pb_new(q, (size_t)(B * T * H * D)), pw = pb_new(w, sizeof(float) * (size_t)(B * T * H));
    logits_pair lp = logits_poisoned((int64_t)B * T, Ls);
    hae_index_logits_args ga = {.q = hae_tensor_4d(pq.g, HAE_FP8_E4M3, HAE_CUDA, B, T, H, D),
                                .w = hae_tensor_3d(pw.g, HAE_F32, HAE_CUDA, B, T, H), .cache = gc,
                                .seq_lens = hae_tensor_1d(plen.g, HAE_I32, HAE_CUDA, B),
                                .logits = logits_view(&lp, B, T, L, true), .w_scale = 0.125f};
    if (gpu_ran(hae_index_logits(g_gpu, &ga), "cuda", "index_logits (garbage)", ctx) && gpu_done("index_logits (garbage)", ctx)) {
        float *g = pb_fetch(&lp.buf);
        guards_intact(&lp, g, ctx);
        const float *gl = g + kGuard;
        bool bad = false;
        for (int b = 0; b < B && !bad; b++)
            for (int t = 0; t < T && !bad; t++) {
                const int64_t pos = (int64_t)lens[b] - T + t;
                const float *row = gl + ((int64_t)b * T + t) * Ls;
                for (int s = 0; s < L && !bad; s++) {
                    const int32_t pg = s / P < max_pages ? bt[b * max_pages + s / P] : -1;
                    const bool scored = s <= pos, no_page = pg < 0 || pg >= n_pages;
                    const float v = row[s];
                    bad = !(!scored ? v == -INFINITY : no_page ? isnan(v) : isfinite(v));
                    if (bad)
                        cr_expect(0, "index_logits [%s]: logits[%d, %d, %d] = %g: expected %s (position %lld)", ctx, b, t,
                                  s, (double)v, !scored ? "-inf" : no_page ? "NaN (no page)" : "a finite logit",
                                  (long long)pos);
                }
                for (int64_t s = L; s < Ls && !bad; s++) {
                    bad = !isnan(row[s]); /* the poison between rows stays */
                    if (bad) cr_expect(0, "index_logits [%s]: row (%d, %d): the gap after L was written", ctx, b, t);
                }
            }
        /* the valid sequences (0 and 6) against the CPU on the repaired table */
        for (int bi = 0; bi < 2; bi++) {
            const int b = bi ? 6 : 0;
            const int32_t len = lens[b];
            float *cl = xmalloc(sizeof(float) * (size_t)(T * L));
            hae_index_logits_args ca = {
                .q = hae_tensor_4d(q + (int64_t)b * T * H * D, HAE_FP8_E4M3, HAE_CPU, 1, T, H, D),
                .w = hae_tensor_3d(w + (int64_t)b * T * H, HAE_F32, HAE_CPU, 1, T, H),
                .cache = {.pages = hae_tensor_2d(pages, HAE_FP8_E4M3, HAE_CPU, n_pages, row_bytes),
                          .block_table = hae_tensor_2d(bt_fixed + b * max_pages, HAE_I32, HAE_CPU, 1, max_pages),
                          .page_size = P, .head_dim = D},
                .seq_lens = hae_tensor_1d((void *)&len, HAE_I32, HAE_CPU, 1),
                .logits = hae_tensor_3d(cl, HAE_F32, HAE_CPU, 1, T, L), .w_scale = 0.125f};
            if (gpu_ran(hae_index_logits(g_cpu, &ca), "cpu", "index_logits (valid rows)", ctx)) {
                bool off = false;
                for (int t = 0; t < T && !off; t++)
                    for (int s = 0; s < L && !off; s++) {
                        const float gv = gl[((int64_t)b * T + t) * Ls + s], cv = cl[t * L + s];
                        if (isnan(gv) || isinf(cv)) continue; /* bad pages (checked above), masked keys */
                        off = !(fabsf(gv - cv) <= 1e-5f * fabsf(cv));
                        if (off)
                            cr_expect(0, "index_logits [%s]: valid sequence %d, logits[%d, %d]: gpu %.9g cpu %.9g", ctx,
                                      b, t, s, (double)gv, (double)cv);
                    }
            }
            free(cl);
        }
        free(g);
    }
    pb_free(&pp), pb_free(&pbt), pb_free(&plen), pb_free(&pk), pb_free(&pks), pb_free(&pq), pb_free(&pw), pb_free(&lp.buf);
    free(pages), free(q), free(w), free(kn), free(ksn), free(want);
}

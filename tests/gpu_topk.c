/* GPU tests of hae_topk: the CUDA kernel against the CPU reference (indexer/indexer_cpu.c), index for
 * index, as hae_topk launches it and with every block size and cluster size it can pick.
 *
 * Every case makes fresh seeded logits of one kind (below), puts the same bytes on both backends,
 * POISONS out on both sides (0xFF bytes) including the gaps of strided rows and guard words after the
 * last row, runs both and compares: every out[r, j], j < k, must equal the CPU's, and every word
 * outside those must keep its poison. 0xFF bytes read as -1 in i32, the padding value, so the GPU
 * runs a second time over 0x5A bytes (not -1, not an index) and is compared again: padding it did
 * not write shows there. Then each forced launch (512 or 1024 threads, 1 to 16 CTAs a row; those the
 * device cannot hold are skipped) runs once more over 0x5A. A failure names the case (shape, k,
 * kinds, seed), the launch, the number of bad rows, and for the first: its length, the first
 * differing position with both indices and their logits, how many positions differ, and each side's
 * count of indices and whether they ascend.
 * Lengths outside [0, L] (which the CUDA entry does not check) run on the GPU alone: no fault,
 * every entry in [-1, L), poison outside the rows untouched. main() is tests/main_gpu.c's. */
#include "internal.h"
#include "gpu_pair.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CTX_N 320
#define GUARD 64 /* poisoned words after the last row of out */
#define POISON_FF 0xFFFFFFFFu
#define POISON_5A 0x5A5A5A5Au

#ifndef HAE_HAVE_CUDA
/* A build without CUDA skips these tests before any runs (hae_topk_cuda_with exists only with CUDA). */
hae_status hae_topk_cuda_with(hae_backend *be, const hae_topk_args *a, int threads, int clusters,
                              unsigned long long *stamps) {
    return HAE_ERR_UNSUPPORTED;
}
#endif

/* Forced launches: threads, CTAs a row. */
static const int launches[][2] = {{512, 1},  {512, 2},  {512, 4},  {512, 8},  {512, 16},
                                  {1024, 1}, {1024, 2}, {1024, 4}, {1024, 8}, {1024, 16}};
enum { N_LAUNCHES = sizeof launches / sizeof launches[0] };

TestSuite(gpu_topk, .init = gpu_pair_setup, .fini = gpu_pair_teardown, .timeout = 600);

/* Logit kinds. */
enum {
    V_UNIFORM,    /* uniform in [-5, 5) */
    V_NORMAL,     /* standard normal */
    V_LEVELS3,    /* from {-1, 0.5, 2}: ties everywhere */
    V_LEVELS5,    /* from {-1, -0, +0, 0.5, 2}: ties and signed zeros */
    V_SPECIAL,    /* uniform with -inf 10%, +inf 3%, NaN 7%, -0 5%, +0 5% */
    V_MOSTLY_NAN, /* NaN 90%, else uniform: NaN must be taken when the rest is fewer than k */
    V_ZEROS,      /* +0 or -0 90%, else uniform in (0, 3): a ReLU'd indexer's rows */
    V_EQUAL,      /* every logit 0.25 */
    V_ASCENDING,  /* x[i] = i: the top k at the row's end */
    V_DESCENDING, /* x[i] = -i: the top k at the row's start */
};
static const char *const kind_name[] = {"uniform", "normal", "3 levels", "5 levels with -0/+0", "special",
                                        "mostly NaN", "mostly zeros", "all equal", "ascending", "descending"};

/* Row lengths. */
enum {
    N_FULL,   /* L */
    N_SHORT,  /* uniform in [0, min(k, L + 1)): shorter than k */
    N_ZERO,   /* 0 */
    N_VARY,   /* uniform in [0, L] */
    N_CAUSAL, /* L - R + r + 1 (prefill) */
    N_MIXED,  /* rows 0..4: 0, 1, k - 1, k, k + 1 (capped at L), then uniform in [0, L] */
};
static const char *const lens_name[] = {"L",      "shorter than k", "0", "random in [0, L]",
                                        "causal", "0, 1, k-1, k, k+1, random"};

typedef struct {
    int64_t R, L, k, pad; /* logits row stride L + pad; out row stride k + pad */
    int kind, lens;
    uint64_t seed;
} topk_case;

static void fill_logits(float *x, int64_t n, int kind, tu_rng *r) {
    static const float lv3[] = {-1.0f, 0.5f, 2.0f}, lv5[] = {-1.0f, -0.0f, 0.0f, 0.5f, 2.0f};
    for (int64_t i = 0; i < n; i++) {
        const double u = tu_uniform(r, 0, 1);
        float v = (float)(u * 10 - 5);
        switch (kind) {
        case V_NORMAL: v = (float)tu_normal(r); break;
        case V_LEVELS3: v = lv3[(int)(u * 3)]; break;
        case V_LEVELS5: v = lv5[(int)(u * 5)]; break;
        case V_SPECIAL: {
            const double w = tu_uniform(r, 0, 1);
            v = w < 0.10 ? -INFINITY : w < 0.13 ? INFINITY : w < 0.20 ? NAN : w < 0.25 ? -0.0f : w < 0.30 ? 0.0f : v;
            break;
        }
        case V_MOSTLY_NAN: v = u < 0.9 ? NAN : (float)tu_uniform(r, -5, 5); break;
        case V_ZEROS: v = u < 0.45 ? 0.0f : u < 0.9 ? -0.0f : (float)tu_uniform(r, 1e-3, 3); break;
        case V_EQUAL: v = 0.25f; break;
        case V_ASCENDING: v = (float)i; break;
        case V_DESCENDING: v = -(float)i; break;
        default: break;
        }
        x[i] = v;
    }
}

static int32_t row_len(const topk_case *tc, int64_t row, tu_rng *r) {
    const int64_t L = tc->L, k = tc->k;
    int64_t n = L;
    switch (tc->lens) {
    case N_SHORT: n = (int64_t)tu_uniform(r, 0, (double)(k < L + 1 ? k : L + 1)); break;
    case N_ZERO: n = 0; break;
    case N_VARY: n = (int64_t)tu_uniform(r, 0, (double)L + 1); break;
    case N_CAUSAL: n = L - tc->R + row + 1; break;
    case N_MIXED: {
        const int64_t first[5] = {0, 1, k - 1, k, k + 1};
        n = row < 5 ? first[row] : (int64_t)tu_uniform(r, 0, (double)L + 1);
        break;
    }
    default: break;
    }
    return (int32_t)(n < 0 ? 0 : n > L ? L : n);
}

static void describe(const topk_case *tc, char *ctx, size_t n) {
    snprintf(ctx, n, "logits [%lld, %lld] row stride %lld, k %lld, out row stride %lld, %s logits, lens %s, seed %llu",
             (long long)tc->R, (long long)tc->L, (long long)(tc->L + tc->pad), (long long)tc->k,
             (long long)(tc->k + tc->pad), kind_name[tc->kind], lens_name[tc->lens], (unsigned long long)tc->seed);
}

static void fill_words(int32_t *p, int64_t n, uint32_t w) {
    for (int64_t i = 0; i < n; i++) memcpy(p + i, &w, sizeof w);
}

/* Indices in a row before the -1 padding, and whether they ascend and are in [0, n) with only -1 after. */
static int64_t row_shape(const int32_t *o, int64_t k, int64_t n, bool *well_formed) {
    int64_t m = 0;
    while (m < k && o[m] >= 0) m++;
    bool ok = true;
    for (int64_t j = 0; j < m; j++) ok = ok && o[j] < n && (j == 0 || o[j] > o[j - 1]);
    for (int64_t j = m; j < k; j++) ok = ok && o[j] == -1;
    *well_formed = ok;
    return m;
}

static double logit_at(const float *x, int64_t ldx, int64_t L, int64_t row, int32_t i) {
    return i >= 0 && i < L ? (double)x[row * ldx + i] : NAN;
}

/* The GPU's out (words, R * ldo + GUARD) against the CPU's rows; every other word must be `poison`. */
static bool same_rows(const char *ctx, const char *run, const topk_case *tc, const float *x, const int32_t *lens,
                      const int32_t *cpu, const int32_t *gpu, uint32_t poison) {
    const int64_t R = tc->R, L = tc->L, k = tc->k, ldx = L + tc->pad, ldo = k + tc->pad, words = R * ldo + GUARD;
    int64_t bad_rows = 0, first_row = -1;
    for (int64_t r = 0; r < R; r++)
        if (memcmp(cpu + r * ldo, gpu + r * ldo, sizeof(int32_t) * (size_t)k) != 0) {
            if (first_row < 0) first_row = r;
            bad_rows++;
        }
    bool ok = true;
    if (bad_rows) {
        const int64_t r = first_row;
        const int32_t *c = cpu + r * ldo, *g = gpu + r * ldo;
        int64_t first = -1, diff = 0;
        for (int64_t j = 0; j < k; j++)
            if (c[j] != g[j]) {
                if (first < 0) first = j;
                diff++;
            }
        bool cw, gw;
        const int64_t cm = row_shape(c, k, lens[r], &cw), gm = row_shape(g, k, lens[r], &gw);
        cr_expect(0,
                  "topk [%s] %s: %lld of %lld rows differ; first: row %lld (lens %d): out[%lld] cpu %d (logit %.9g) "
                  "gpu %d (logit %.9g); %lld of %lld positions differ; cpu %lld indices%s, gpu %lld indices%s",
                  ctx, run, (long long)bad_rows, (long long)R, (long long)r, lens[r], (long long)first, c[first],
                  logit_at(x, ldx, L, r, c[first]), g[first], logit_at(x, ldx, L, r, g[first]), (long long)diff,
                  (long long)k, (long long)cm, cw ? "" : " (NOT ascending in [0, lens) then -1)", (long long)gm,
                  gw ? ", ascending" : " (NOT ascending in [0, lens) then -1)");
        ok = false;
    }
    int64_t touched = 0, first_w = -1;
    for (int64_t i = 0; i < words; i++) {
        const int64_t r = i / ldo, j = i % ldo;
        if (r < R && j < k) continue;
        uint32_t w;
        memcpy(&w, gpu + i, sizeof w);
        if (w != poison) {
            if (first_w < 0) first_w = i;
            touched++;
        }
    }
    if (touched) {
        cr_expect(0,
                  "topk [%s] %s: %lld words outside the rows' k entries were written (row gaps or the %d guard "
                  "words after out); first: word %lld = %d",
                  ctx, run, (long long)touched, GUARD, (long long)first_w, gpu[first_w]);
        ok = false;
    }
    return ok;
}

static bool ran(hae_status st, const char *side, const char *ctx) {
    if (st == HAE_OK) return true;
    cr_expect(0, "topk [%s] on %s: %s: %s", ctx, side, hae_status_name(st), hae_last_error());
    return false;
}

static void run_case(const topk_case *tc) {
    const int64_t R = tc->R, L = tc->L, k = tc->k, ldx = L + tc->pad, ldo = k + tc->pad;
    const int64_t words = R * ldo + GUARD;
    char ctx[CTX_N];
    describe(tc, ctx, sizeof ctx);
    tu_rng rng = tu_rng_make(tc->seed);
    float *x = host_poison(sizeof(float) * (size_t)(R * ldx));
    int32_t *lens = malloc(sizeof(int32_t) * (size_t)(R ? R : 1));
    cr_assert(lens != NULL);
    for (int64_t r = 0; r < R; r++) {
        fill_logits(x + r * ldx, L, tc->kind, &rng);
        lens[r] = row_len(tc, r, &rng);
    }
    pbuf px = pb_new(x, sizeof(float) * (size_t)(R * ldx)), pl = pb_new(lens, sizeof(int32_t) * (size_t)R);
    pbuf po = pb_poison(sizeof(int32_t) * (size_t)words);
    const int64_t sx[2] = {R, L}, stx[2] = {ldx, 1}, sl[1] = {R}, so[2] = {R, k}, sto[2] = {ldo, 1};
    hae_topk_args ac = {tv(px.c, HAE_F32, HAE_CPU, 2, sx, stx), tv(pl.c, HAE_I32, HAE_CPU, 1, sl, NULL),
                        tv(po.c, HAE_I32, HAE_CPU, 2, so, sto)};
    hae_topk_args ag = {tv(px.g, HAE_F32, HAE_CUDA, 2, sx, stx), tv(pl.g, HAE_I32, HAE_CUDA, 1, sl, NULL),
                        tv(po.g, HAE_I32, HAE_CUDA, 2, so, sto)};
    int32_t *g = malloc(sizeof(int32_t) * (size_t)words);
    cr_assert(g != NULL);
    if (ran(hae_topk(g_cpu, &ac), "cpu", ctx)) {
        static const uint32_t poisons[2] = {POISON_FF, POISON_5A};
        for (int pi = 0; pi < 2; pi++) {
            if (pi == 1) {
                fill_words(g, words, POISON_5A);
                cr_assert_eq(hae_backend_upload(g_gpu, po.g, g, sizeof(int32_t) * (size_t)words), HAE_OK, "%s",
                             hae_last_error());
            }
            if (!ran(hae_topk(g_gpu, &ag), "cuda", ctx) || !ran(hae_backend_sync(g_gpu), "cuda (sync after)", ctx))
                break;
            cr_assert_eq(hae_backend_download(g_gpu, g, po.g, sizeof(int32_t) * (size_t)words), HAE_OK, "%s",
                         hae_last_error());
            if (!same_rows(ctx, pi ? "out poisoned 0x5A" : "out poisoned 0xFF", tc, x, lens, po.c, g, poisons[pi]))
                break;
        }
        for (int li = 0; li < N_LAUNCHES; li++) {
            char run[64];
            snprintf(run, sizeof run, "%d threads x %d CTAs a row, out poisoned 0x5A", launches[li][0],
                     launches[li][1]);
            fill_words(g, words, POISON_5A);
            cr_assert_eq(hae_backend_upload(g_gpu, po.g, g, sizeof(int32_t) * (size_t)words), HAE_OK, "%s",
                         hae_last_error());
            const hae_status st = hae_topk_cuda_with(g_gpu, &ag, launches[li][0], launches[li][1], NULL);
            if (st == HAE_ERR_UNSUPPORTED) continue; /* a cluster this device cannot hold */
            if (!ran(st, run, ctx) || !ran(hae_backend_sync(g_gpu), "cuda (sync after)", ctx)) break;
            cr_assert_eq(hae_backend_download(g_gpu, g, po.g, sizeof(int32_t) * (size_t)words), HAE_OK, "%s",
                         hae_last_error());
            if (!same_rows(ctx, run, tc, x, lens, po.c, g, POISON_5A)) break;
        }
    }
    pb_free(&px), pb_free(&pl), pb_free(&po);
    free(x), free(lens), free(g);
}

static void run_cases(const topk_case *cases, size_t n) {
    for (size_t i = 0; i < n; i++) run_case(&cases[i]);
}

/* Random rows and rows of ties, short rows (one CTA a row) to rows split over CTAs. */
Test(gpu_topk, values) {
    static const topk_case cases[] = {
        {7, 5000, 100, 3, V_UNIFORM, N_FULL, 1},
        {7, 5000, 100, 0, V_NORMAL, N_MIXED, 2},
        {16, 20000, 2048, 0, V_LEVELS3, N_FULL, 3},
        {6, 20000, 8000, 0, V_LEVELS3, N_FULL, 12},   /* K below the top level: equal keys before greater ones */
        {40, 20000, 8000, 2, V_LEVELS5, N_VARY, 13},
        {5, 3000, 700, 1, V_LEVELS5, N_VARY, 4},
        {3, 40000, 2048, 0, V_EQUAL, N_FULL, 5},
        {8, 4096, 512, 2, V_SPECIAL, N_FULL, 6},
        {6, 70000, 3000, 0, V_SPECIAL, N_VARY, 7},
        {4, 10000, 3000, 0, V_MOSTLY_NAN, N_FULL, 8},
        {6, 30000, 1000, 0, V_ZEROS, N_FULL, 9},
        {4, 200000, 4096, 0, V_ASCENDING, N_FULL, 10},
        {4, 200000, 4096, 5, V_DESCENDING, N_FULL, 11},
        {3, 4096, 512, 0, V_ASCENDING, N_FULL, 14},   /* K's first-digit bin taken whole: no later digit */
        {3, 4096, 1536, 1, V_ASCENDING, N_FULL, 15},
    };
    run_cases(cases, sizeof cases / sizeof cases[0]);
}

/* Lengths and k at their edges. */
Test(gpu_topk, lengths_and_k) {
    static const topk_case cases[] = {
        {9, 1000, 2048, 5, V_UNIFORM, N_SHORT, 20},   /* every row shorter than k */
        {9, 50000, 4096, 0, V_NORMAL, N_SHORT, 21},   /* the same, long rows */
        {4, 1000, 64, 0, V_UNIFORM, N_ZERO, 22},      /* lens 0 */
        {33, 3000, 1, 0, V_UNIFORM, N_MIXED, 23},     /* k 1 */
        {6, 3000, 1, 2, V_LEVELS3, N_FULL, 24},       /* k 1 among ties: the first maximum */
        {5, 777, 777, 2, V_UNIFORM, N_FULL, 25},      /* k = L */
        {5, 777, 782, 0, V_UNIFORM, N_MIXED, 26},     /* k > L */
        {5, 777, 776, 0, V_LEVELS5, N_FULL, 27},      /* k = L - 1 */
        {3, 131072, 16384, 0, V_NORMAL, N_FULL, 28},  /* k 16384 */
        {3, 131072, 16384, 3, V_LEVELS5, N_MIXED, 29},
        {1, 1, 1, 0, V_UNIFORM, N_FULL, 30},          /* the smallest problem */
        {2, 0, 4, 1, V_UNIFORM, N_FULL, 31},          /* L = 0 */
    };
    run_cases(cases, sizeof cases / sizeof cases[0]);
}

/* Rows longer than eight chunks of cached keys: compacted candidates, and ties that overflow them. */
Test(gpu_topk, long_rows) {
    static const topk_case cases[] = {
        {2, 1048576, 2048, 0, V_NORMAL, N_FULL, 40},   /* L 1M, k 2048 */
        {2, 1048576, 2048, 7, V_UNIFORM, N_VARY, 41},
        {2, 300000, 2048, 0, V_LEVELS3, N_FULL, 42},   /* ties overflow the candidates: chunk re-read */
        {3, 1048576, 16384, 0, V_LEVELS5, N_FULL, 43},
        {3, 600000, 2048, 0, V_ZEROS, N_FULL, 44},
        {64, 140000, 2048, 7, V_NORMAL, N_VARY, 45},   /* cached and compacted chunks in one launch */
        {1, 131072, 2048, 0, V_NORMAL, N_FULL, 46},    /* decode: one 128K row */
        {1, 131073, 2048, 0, V_NORMAL, N_FULL, 47},
    };
    run_cases(cases, sizeof cases / sizeof cases[0]);
}

/* Many rows: one CTA a row, two and four CTAs a row, prefill's causal lengths. */
Test(gpu_topk, many_rows) {
    static const topk_case cases[] = {
        {300, 3000, 256, 0, V_UNIFORM, N_VARY, 60},
        {300, 20000, 2048, 1, V_NORMAL, N_FULL, 61},
        {200, 50000, 2048, 0, V_NORMAL, N_MIXED, 62},
        {256, 131072, 2048, 0, V_NORMAL, N_CAUSAL, 63},
        {20000, 300, 32, 1, V_UNIFORM, N_VARY, 64},
        {5000, 4096, 64, 0, V_LEVELS5, N_VARY, 65},
    };
    run_cases(cases, sizeof cases / sizeof cases[0]);
}

/* lens outside [0, L] (the CUDA entry does not check them: that would stall the stream): no fault, every
 * entry in [-1, L), nothing written outside the rows' k entries. */
Test(gpu_topk, bad_lens) {
    static const int32_t bad[] = {-1, INT32_MIN, 1001, INT32_MAX, 0, 1000, 500, -100, 2000000, 1};
    const int64_t R = sizeof bad / sizeof bad[0], L = 1000, ks[] = {1, 64, 999, 1000, 1500};
    float *x = malloc(sizeof(float) * (size_t)(R * L));
    cr_assert(x != NULL);
    tu_rng rng = tu_rng_make(90);
    fill_logits(x, R * L, V_NORMAL, &rng);
    pbuf px = pb_new(x, sizeof(float) * (size_t)(R * L)), pl = pb_new(bad, sizeof bad);
    for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++) {
        const int64_t k = ks[ki], ldo = k + 3, words = R * ldo + GUARD;
        int32_t *g = malloc(sizeof(int32_t) * (size_t)words);
        cr_assert(g != NULL);
        void *dout = NULL;
        cr_assert_eq(hae_backend_alloc(g_gpu, sizeof(int32_t) * (size_t)words, &dout), HAE_OK, "%s", hae_last_error());
        const int64_t sx[2] = {R, L}, sl[1] = {R}, so[2] = {R, k}, sto[2] = {ldo, 1};
        hae_topk_args ag = {tv(px.g, HAE_F32, HAE_CUDA, 2, sx, NULL), tv(pl.g, HAE_I32, HAE_CUDA, 1, sl, NULL),
                            tv(dout, HAE_I32, HAE_CUDA, 2, so, sto)};
        for (int li = -1; li < N_LAUNCHES; li++) { /* -1: as hae_topk launches it */
            char ctx[CTX_N];
            snprintf(ctx, sizeof ctx, "logits [%lld, %lld], k %lld, out row stride %lld, lens out of [0, L], %s",
                     (long long)R, (long long)L, (long long)k, (long long)ldo, li < 0 ? "as hae_topk launches it" : "");
            if (li >= 0)
                snprintf(ctx + strlen(ctx), sizeof ctx - strlen(ctx), "%d threads x %d CTAs a row", launches[li][0],
                         launches[li][1]);
            fill_words(g, words, POISON_5A);
            cr_assert_eq(hae_backend_upload(g_gpu, dout, g, sizeof(int32_t) * (size_t)words), HAE_OK, "%s",
                         hae_last_error());
            const hae_status st =
                li < 0 ? hae_topk(g_gpu, &ag) : hae_topk_cuda_with(g_gpu, &ag, launches[li][0], launches[li][1], NULL);
            if (li >= 0 && st == HAE_ERR_UNSUPPORTED) continue; /* a cluster this device cannot hold */
            if (!ran(st, "cuda", ctx) || !ran(hae_backend_sync(g_gpu), "cuda (sync after)", ctx)) break;
            cr_assert_eq(hae_backend_download(g_gpu, g, dout, sizeof(int32_t) * (size_t)words), HAE_OK, "%s",
                         hae_last_error());
            int64_t out_of_range = 0, touched = 0, first_o = -1, first_t = -1;
            for (int64_t i = 0; i < words; i++) {
                const int64_t r = i / ldo, j = i % ldo;
                if (r < R && j < k) {
                    if (g[i] < -1 || g[i] >= L) {
                        if (first_o < 0) first_o = i;
                        out_of_range++;
                    }
                } else {
                    uint32_t w;
                    memcpy(&w, g + i, sizeof w);
                    if (w != POISON_5A) {
                        if (first_t < 0) first_t = i;
                        touched++;
                    }
                }
            }
            cr_expect(out_of_range == 0,
                      "topk [%s]: %lld entries outside [-1, L); first: row %lld (lens %d) out[%lld] = %d", ctx,
                      (long long)out_of_range, (long long)(first_o / ldo), first_o >= 0 ? bad[first_o / ldo] : 0,
                      (long long)(first_o % ldo), first_o >= 0 ? g[first_o] : 0);
            cr_expect(touched == 0, "topk [%s]: %lld words outside the rows' k entries were written; first: word %lld",
                      ctx, (long long)touched, (long long)first_t);
        }
        hae_backend_free(g_gpu, dout);
        free(g);
    }
    pb_free(&px), pb_free(&pl);
    free(x);
}

/* The token-granular fetch (hae_kv_gather) and host-tier memory on the CPU backend: the op against a
 * naive loop on random row lists (skipped entries, one source row fetched into several slots, strided
 * rows, every dtype, rows of odd byte counts), bad row indices refused with dst untouched, and every
 * bad argument a clear error; side work (hae_backend_side_begin/_end/_wait) runs at once on the CPU and its
 * misuses are refused. */
#include "testutil.h"

#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static hae_backend *be;
static void setup(void) { be = tu_cpu(); }
static void teardown(void) { hae_backend_destroy(be); }
TestSuite(fetch, .init = setup, .fini = teardown);

/* One fetch: src [B, cap, W] inside rows of src_ld elements (sequences src_sb apart), dst [B, slots, W]
 * likewise, row lists [B, n] with row stride ld_rows; all on the host. */
typedef struct {
    hae_dtype dt;
    int64_t B, cap, slots, W, n;
    int64_t src_ld, src_sb, dst_ld, dst_sb, ld_rows;
    double skip; /* share of entries with src_rows -1 */
    uint64_t seed;
} fetch_case;

typedef struct {
    fetch_case c;
    size_t es, src_bytes, dst_bytes;
    unsigned char *src, *dst, *want;
    int32_t *src_rows, *dst_rows;
    hae_kv_gather_args a;
} fetch_run;

/* Random bytes in src (every byte, padding too), 0xFF in dst and in want (until naive); source rows drawn with repeats, destination
 * slots a random choice without repeats, a share of entries skipped (-1, or another negative). */
static void run_make(fetch_run *r, const fetch_case *c) {
    memset(r, 0, sizeof *r);
    r->c = *c;
    r->es = hae_dtype_size(c->dt);
    r->src_bytes = (size_t)(c->B * c->src_sb) * r->es;
    r->dst_bytes = (size_t)(c->B * c->dst_sb) * r->es;
    cr_assert_eq(hae_backend_alloc_host(be, r->src_bytes, (void **)&r->src), HAE_OK, "%s", hae_last_error());
    r->dst = malloc(r->dst_bytes + 1);
    r->want = malloc(r->dst_bytes + 1);
    const size_t rows_n = (size_t)(c->B * c->ld_rows) + 1;
    r->src_rows = malloc(rows_n * sizeof(int32_t));
    r->dst_rows = malloc(rows_n * sizeof(int32_t));
    int32_t *perm = malloc((size_t)(c->slots + 1) * sizeof(int32_t));
    cr_assert(r->dst && r->want && r->src_rows && r->dst_rows && perm);
    tu_rng g = tu_rng_make(c->seed);
    for (size_t i = 0; i < r->src_bytes; i++) r->src[i] = (unsigned char)tu_uniform(&g, 0, 256);
    memset(r->dst, 0xFF, r->dst_bytes);
    memset(r->want, 0xFF, r->dst_bytes);
    memset(r->src_rows, 0x5A, rows_n * sizeof(int32_t)); /* what lies between the lists is never read */
    memset(r->dst_rows, 0x5A, rows_n * sizeof(int32_t));
    for (int64_t b = 0; b < c->B; b++) {
        for (int64_t s = 0; s < c->slots; s++) perm[s] = (int32_t)s;
        for (int64_t i = 0; i < c->n; i++) { /* partial Fisher-Yates: n distinct slots */
            int64_t j = i + (int64_t)tu_uniform(&g, 0, (double)(c->slots - i));
            int32_t t = perm[i];
            perm[i] = perm[j], perm[j] = t;
            int32_t s = (int32_t)tu_uniform(&g, 0, (double)c->cap);
            if (tu_uniform(&g, 0, 1) < c->skip) s = tu_uniform(&g, 0, 1) < 0.5 ? -1 : -7;
            r->src_rows[b * c->ld_rows + i] = s;
            r->dst_rows[b * c->ld_rows + i] = perm[i];
        }
    }
    free(perm);
    r->a.src = hae_tensor_3d(r->src, c->dt, HAE_CPU, c->B, c->cap, c->W);
    r->a.src.stride[0] = c->src_sb, r->a.src.stride[1] = c->src_ld;
    r->a.dst = hae_tensor_3d(r->dst, c->dt, HAE_CPU, c->B, c->slots, c->W);
    r->a.dst.stride[0] = c->dst_sb, r->a.dst.stride[1] = c->dst_ld;
    r->a.src_rows = hae_tensor_2d(r->src_rows, HAE_I32, HAE_CPU, c->B, c->n);
    r->a.src_rows.stride[0] = c->ld_rows;
    r->a.dst_rows = hae_tensor_2d(r->dst_rows, HAE_I32, HAE_CPU, c->B, c->n);
    r->a.dst_rows.stride[0] = c->ld_rows;
}

/* want: the poisoned dst with the naive loop's rows copied element by element. */
static void naive(fetch_run *r) {
    const fetch_case *c = &r->c;
    memset(r->want, 0xFF, r->dst_bytes);
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t i = 0; i < c->n; i++) {
            const int32_t s = r->src_rows[b * c->ld_rows + i], d = r->dst_rows[b * c->ld_rows + i];
            if (s < 0) continue;
            for (int64_t w = 0; w < c->W; w++)
                memcpy(r->want + (size_t)(b * c->dst_sb + d * c->dst_ld + w) * r->es,
                       r->src + (size_t)(b * c->src_sb + s * c->src_ld + w) * r->es, r->es);
        }
}

static void run_free(fetch_run *r) {
    hae_backend_free_host(be, r->src);
    free(r->dst), free(r->want), free(r->src_rows), free(r->dst_rows);
}

static const char *describe(const fetch_case *c, char *buf, size_t n) {
    snprintf(buf, n, "%s B %lld cap %lld slots %lld W %lld n %lld, src ld %lld sb %lld, dst ld %lld sb %lld, seed %llu",
             hae_dtype_name(c->dt), (long long)c->B, (long long)c->cap, (long long)c->slots, (long long)c->W,
             (long long)c->n, (long long)c->src_ld, (long long)c->src_sb, (long long)c->dst_ld, (long long)c->dst_sb,
             (unsigned long long)c->seed);
    return buf;
}

/* The whole dst buffer, gaps between rows included, equal to the naive loop's. */
static void expect_dst(const fetch_run *r, const unsigned char *want, const char *what) {
    char d[256];
    for (size_t i = 0; i < r->dst_bytes; i++)
        if (r->dst[i] != want[i]) {
            const size_t el = i / r->es;
            cr_expect(0, "%s [%s]: dst byte %zu (element %zu: sequence %lld, row %lld, column %lld) is 0x%02x, "
                      "expected 0x%02x", what, describe(&r->c, d, sizeof d), i, el, (long long)(el / r->c.dst_sb),
                      (long long)(el % r->c.dst_sb / r->c.dst_ld), (long long)(el % r->c.dst_sb % r->c.dst_ld),
                      r->dst[i], want[i]);
            return;
        }
}

/* A dense case of the given dtype and row, with 8 elements of padding after each row and 3 rows after
 * each sequence on both sides. */
static fetch_case strided(hae_dtype dt, int64_t B, int64_t cap, int64_t slots, int64_t W, int64_t n, uint64_t seed) {
    fetch_case c = {dt, B, cap, slots, W, n, W + 8, 0, W + 8, 0, n + 5, 0.15, seed};
    c.src_sb = (cap + 3) * c.src_ld;
    c.dst_sb = (slots + 3) * c.dst_ld;
    return c;
}

Test(fetch, matches_a_naive_loop) {
    const fetch_case cases[] = {
        strided(HAE_BF16, 1, 700, 300, 328, 300, 1),  /* 656-byte rows (FlashMLA's fp8 layout in bf16 units) */
        strided(HAE_BF16, 3, 500, 257, 576, 200, 2),  /* 1152-byte mla latents */
        strided(HAE_BF16, 2, 300, 129, 2048, 129, 3), /* 4096-byte gqa rows */
        strided(HAE_FP8_E4M3, 2, 400, 100, 656, 64, 4),
        strided(HAE_F32, 4, 90, 40, 7, 40, 5),        /* 28-byte rows */
        strided(HAE_FP8_E4M3, 3, 50, 33, 1, 33, 6),   /* one byte per row */
        strided(HAE_I64, 1, 10, 10, 3, 10, 7),
        strided(HAE_F16, 2, 1, 5, 5, 5, 8),           /* cap 1: every fetch reads the same row */
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        for (int dense = 0; dense < 2; dense++) {
            fetch_case c = cases[k];
            if (dense) { /* the same without gaps */
                c.src_ld = c.dst_ld = c.W;
                c.src_sb = c.cap * c.W, c.dst_sb = c.slots * c.W, c.ld_rows = c.n;
            }
            for (int m = HAE_GATHER_AUTO; m <= HAE_GATHER_COPIES; m++) {
                fetch_run r;
                run_make(&r, &c);
                r.a.method = (hae_gather_method)m;
                char d[256];
                naive(&r);
                cr_assert_eq(hae_kv_gather(be, &r.a), HAE_OK, "[%s] method %d: %s", describe(&c, d, sizeof d), m,
                             hae_last_error());
                expect_dst(&r, r.want, "hae_kv_gather");
                run_free(&r);
            }
        }
    }
}

Test(fetch, skipped_and_empty) {
    fetch_case c = strided(HAE_BF16, 2, 64, 32, 100, 32, 9);
    c.skip = 1.0; /* every entry skipped: dst stays poisoned */
    fetch_run r;
    run_make(&r, &c);
    naive(&r);
    cr_assert_eq(hae_kv_gather(be, &r.a), HAE_OK, "%s", hae_last_error());
    expect_dst(&r, r.want, "all skipped");
    r.a.src_rows.shape[1] = r.a.dst_rows.shape[1] = 0; /* n = 0 */
    cr_assert_eq(hae_kv_gather(be, &r.a), HAE_OK, "%s", hae_last_error());
    run_free(&r);
}

/* A row index out of range: HAE_ERR_INVALID naming the entry, and not one byte of dst written (the bad
 * entry is the last, so every earlier one would have been copied by an op that checks as it goes). */
Test(fetch, rows_out_of_range) {
    const struct {
        int32_t src, dst;
        const char *what;
    } bad[] = {{64, 0, "src row == cap"}, {1000, 3, "src row > cap"}, {5, 32, "dst row == slots"},
               {5, -1, "negative dst row"}};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        fetch_case c = strided(HAE_BF16, 2, 64, 32, 100, 32, 10 + k);
        c.skip = 0;
        fetch_run r;
        run_make(&r, &c);
        const int64_t last = c.ld_rows + c.n - 1;
        r.src_rows[last] = bad[k].src;
        r.dst_rows[last] = bad[k].dst;
        hae_status st = hae_kv_gather(be, &r.a);
        cr_expect_eq(st, HAE_ERR_INVALID, "%s: got %s", bad[k].what, hae_status_name(st));
        cr_expect(strstr(hae_last_error(), "entry [1, 31]") != NULL, "%s: message '%s' names the entry", bad[k].what,
                  hae_last_error());
        expect_dst(&r, r.want, bad[k].what); /* want is still all poison */
        run_free(&r);
    }
    /* a skipped entry's dst row is not looked at */
    fetch_case c = strided(HAE_BF16, 1, 64, 32, 100, 32, 20);
    fetch_run r;
    run_make(&r, &c);
    r.src_rows[3] = -1, r.dst_rows[3] = -100;
    naive(&r);
    cr_assert_eq(hae_kv_gather(be, &r.a), HAE_OK, "%s", hae_last_error());
    expect_dst(&r, r.want, "skipped entry with a bad dst row");
    run_free(&r);
}

Test(fetch, bad_arguments) {
    fetch_case c = strided(HAE_BF16, 2, 64, 32, 100, 16, 30);
    fetch_run r;
    run_make(&r, &c);
    int64_t i64_rows[64] = {0};
    const struct {
        const char *what, *word;
    } cases[] = {
        {"src 2-d", "src"},          {"dst dtype differs", "dtype"},  {"W differs", "W"},
        {"B differs (dst)", "B"},    {"B differs (rows)", "[B, n]"},  {"n differs", "[B, n]"},
        {"i64 rows", "i64"},         {"rows on cuda", "cuda"},        {"src on cuda", "cuda"},
        {"bad method", "method"},    {"max_blocks < 0", "max_blocks"}, {"dst rows overlap", "overlap"},
        {"dst sequences overlap", "overlap"}, {"src NULL", "NULL"},   {"negative stride", "overlap"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        hae_kv_gather_args a = r.a;
        switch (k) {
        case 0: a.src.ndim = 2; break;
        case 1: a.dst.dtype = HAE_F16; break;
        case 2: a.dst.shape[2] = 99; break;
        case 3: a.dst.shape[0] = 1; break;
        case 4: a.src_rows.shape[0] = 1, a.dst_rows.shape[0] = 1; break;
        case 5: a.dst_rows.shape[1] = 15; break;
        case 6: a.src_rows = hae_tensor_2d(i64_rows, HAE_I64, HAE_CPU, 2, 16); break;
        case 7: a.dst_rows.device = HAE_CUDA; break;
        case 8: a.src.device = HAE_CUDA; break;
        case 9: a.method = (hae_gather_method)7; break;
        case 10: a.max_blocks = -1; break;
        case 11: a.dst.stride[1] = 99; break;
        case 12: a.dst.stride[0] = 31 * a.dst.stride[1]; break;
        case 13: a.src.data = NULL; break;
        case 14: a.src.stride[1] = -a.src.stride[1]; break;
        }
        hae_status st = hae_kv_gather(be, &a);
        cr_expect_eq(st, HAE_ERR_INVALID, "%s: got %s (%s)", cases[k].what, hae_status_name(st), hae_last_error());
        cr_expect(strstr(hae_last_error(), "hae_kv_gather") && strstr(hae_last_error(), cases[k].word),
                  "%s: message '%s' should name hae_kv_gather and '%s'", cases[k].what, hae_last_error(),
                  cases[k].word);
    }
    expect_dst(&r, r.want, "after refused calls"); /* want is still all poison */
    run_free(&r);
}

Test(fetch, alloc_host_on_the_cpu) {
    const size_t sizes[] = {0, 1, 63, 65, (size_t)3 << 20};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        unsigned char *p = NULL;
        cr_assert_eq(hae_backend_alloc_host(be, sizes[k], (void **)&p), HAE_OK, "%zu bytes: %s", sizes[k],
                     hae_last_error());
        cr_assert(p != NULL && (uintptr_t)p % 64 == 0, "%zu bytes at %p: 64-byte aligned", sizes[k], (void *)p);
        memset(p, 0xA5, sizes[k]); /* ASan: every byte asked for is ours */
        hae_backend_free_host(be, p);
    }
    hae_backend_free_host(be, NULL);
    void *p = (void *)1;
    hae_status st = hae_backend_alloc_host(be, SIZE_MAX - 8, &p);
    cr_expect_eq(st, HAE_ERR_OOM, "an impossible size: got %s", hae_status_name(st));
    cr_expect(p == NULL && strstr(hae_last_error(), "host tier"), "%s", hae_last_error());
}

/* Side work on the CPU runs at once and in order; its misuses are refused with the call named. */
Test(fetch, side_work_on_the_cpu) {
    fetch_case c = strided(HAE_F32, 2, 64, 32, 24, 16, 30);
    fetch_run r;
    run_make(&r, &c);
    naive(&r);
    hae_fence *f = NULL, *other = NULL;
    hae_backend *be2 = tu_cpu();
    cr_assert_eq(hae_fence_create(be, &f), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(hae_fence_create(be2, &other), HAE_OK, "%s", hae_last_error());
    cr_expect_eq(hae_backend_side_wait(be, f), HAE_OK, "a fence never marked is passed: %s", hae_last_error());
    cr_expect_eq(hae_backend_side_end(be, f), HAE_ERR_INVALID, "an end without a begin");
    cr_expect(strstr(hae_last_error(), "hae_backend_side_end"), "%s", hae_last_error());

    cr_assert_eq(hae_backend_side_begin(be), HAE_OK, "%s", hae_last_error());
    cr_expect_eq(hae_backend_side_begin(be), HAE_ERR_INVALID, "a nested begin");
    cr_expect(strstr(hae_last_error(), "already inside side work"), "%s", hae_last_error());
    cr_expect_eq(hae_backend_side_wait(be, f), HAE_ERR_INVALID, "a wait inside side work");
    unsigned char byte;
    cr_expect_eq(hae_backend_download(be, &byte, r.src, 1), HAE_ERR_INVALID, "a download inside side work");
    cr_expect(strstr(hae_last_error(), "hae_backend_download"), "%s", hae_last_error());
    cr_assert_eq(hae_kv_gather(be, &r.a), HAE_OK, "%s", hae_last_error());
    expect_dst(&r, r.want, "a gather as side work runs at once on the CPU");
    cr_expect_eq(hae_backend_side_end(be, other), HAE_ERR_INVALID, "another backend's fence");
    cr_expect(strstr(hae_last_error(), "this backend"), "%s", hae_last_error());
    cr_assert_eq(hae_backend_side_end(be, f), HAE_OK, "%s", hae_last_error());
    cr_expect_eq(hae_backend_side_wait(be, other), HAE_ERR_INVALID, "a wait on another backend's fence");
    cr_expect_eq(hae_backend_side_wait(be, f), HAE_OK, "%s", hae_last_error());
    cr_expect_eq(hae_backend_download(be, &byte, r.src, 1), HAE_OK, "%s", hae_last_error());
    hae_fence_destroy(f);
    hae_fence_destroy(other);
    hae_fence_destroy(NULL);
    hae_backend_destroy(be2);
    run_free(&r);
}

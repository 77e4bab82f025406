/* GPU tests of the host tier and the token-granular fetch: hae_kv_gather on CUDA (the kernel with several
 * block limits, the kernel reading row lists from the host tier, the batched copies) held to the CPU op on
 * the same inputs.
 *
 * Each case makes seeded random rows in host-tier memory (hae_backend_alloc_host of the CUDA backend; the
 * CPU op reads the same bytes), row lists with repeated source rows, skipped entries (-1 and other
 * negatives), and entries out of range (source row >= cap, destination row < 0 or >= slots), which the GPU
 * skips and the CPU refuses, so the CPU reference is given those entries as skips. Both destinations are
 * POISONED (0xFF) before each run and compared whole, gaps between rows included, byte for byte; a
 * mismatch names the case, the method, the byte's (sequence, row, column), the entry that wrote the row
 * and both values. Shapes: 656-, 1152- and 4096-byte rows (bf16 and fp8), B = 1 and 4, n = 1, 2048 and
 * 8192, and rows whose start alignment or length picks each unit of the kernel (16, 8, 4, 2, 1 bytes,
 * with and without a tail). Also: a 3 GiB host tier (4 chunks) read across its chunk boundaries, and the
 * page pool's pinned host pages moved and read in place. main() is tests/main_gpu.c's. */
#include "internal.h"
#include "gpu_pair.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

TestSuite(gpu_fetch, .init = gpu_pair_setup, .fini = gpu_pair_teardown, .timeout = 600);

typedef struct {
    hae_dtype dt;
    int64_t B, cap, slots, W, n;
    int64_t pad;    /* elements after each row, on both sides */
    int64_t offset; /* elements src starts after its allocation's (page-aligned) start */
    uint64_t seed;
} gcase;

static const char *describe(const gcase *c, char *buf, size_t n) {
    snprintf(buf, n, "%s B %lld cap %lld slots %lld W %lld (%lld-byte rows) n %lld pad %lld offset %lld seed %llu",
             hae_dtype_name(c->dt), (long long)c->B, (long long)c->cap, (long long)c->slots, (long long)c->W,
             (long long)(c->W * (int64_t)hae_dtype_size(c->dt)), (long long)c->n, (long long)c->pad,
             (long long)c->offset, (unsigned long long)c->seed);
    return buf;
}

/* Bytes from a seeded stream, 8 at a time. */
static void fill_bytes(unsigned char *p, size_t n, uint64_t seed) {
    for (size_t i = 0; i < n; i += 8) {
        uint64_t v = hae_mix64(seed ^ hae_mix64(i));
        memcpy(p + i, &v, n - i < 8 ? n - i : 8);
    }
}

typedef struct {
    gcase c;
    size_t es;
    int64_t ld;          /* row stride of both sides (elements) */
    int64_t ld_rows;     /* row lists' sequence stride */
    size_t src_bytes, dst_bytes;
    unsigned char *src_alloc, *src; /* host tier */
    int32_t *srows, *drows;        /* host copies of the lists the GPU gets */
    int32_t *ref_srows;            /* the CPU's: out-of-range entries skipped */
    int32_t *hrows[2];             /* the lists in the host tier (device-visible) */
    pbuf srows_pb, drows_pb;       /* the lists in device memory */
    pbuf dst;
    void *poison;
    int64_t copied, skipped, out_of_range;
} grun;

static void grun_make(grun *r, const gcase *c) {
    memset(r, 0, sizeof *r);
    r->c = *c;
    r->es = hae_dtype_size(c->dt);
    r->ld = c->W + c->pad;
    r->ld_rows = c->n + 3;
    r->src_bytes = (size_t)((c->B * c->cap * r->ld + c->offset)) * r->es;
    r->dst_bytes = (size_t)(c->B * c->slots * r->ld) * r->es;
    hae_status st = hae_backend_alloc_host(g_gpu, r->src_bytes, (void **)&r->src_alloc);
    cr_assert_eq(st, HAE_OK, "alloc_host of %zu bytes: %s", r->src_bytes, hae_last_error());
    fill_bytes(r->src_alloc, r->src_bytes, c->seed);
    r->src = r->src_alloc + (size_t)c->offset * r->es;

    const size_t nl = (size_t)(c->B * r->ld_rows), lb = nl * sizeof(int32_t);
    r->srows = malloc(lb), r->drows = malloc(lb), r->ref_srows = malloc(lb);
    int32_t *perm = malloc((size_t)c->slots * sizeof(int32_t));
    cr_assert(r->srows && r->drows && r->ref_srows && perm);
    memset(r->srows, 0x5A, lb), memset(r->drows, 0x5A, lb); /* between the lists: never read */
    tu_rng g = tu_rng_make(c->seed * 31 + 7);
    for (int64_t b = 0; b < c->B; b++) {
        for (int64_t s = 0; s < c->slots; s++) perm[s] = (int32_t)s;
        for (int64_t i = 0; i < c->n; i++) {
            const int64_t j = i + (int64_t)tu_uniform(&g, 0, (double)(c->slots - i));
            const int32_t t = perm[i];
            perm[i] = perm[j], perm[j] = t;
            int32_t s = (int32_t)tu_uniform(&g, 0, (double)c->cap), d = perm[i];
            const double u = i == 0 ? 1.0 : tu_uniform(&g, 0, 1); /* entry 0 always copies */
            if (u < 0.08) s = -1;
            else if (u < 0.10) s = -2 - (int32_t)tu_uniform(&g, 0, 100);
            else if (u < 0.12) s = (int32_t)(c->cap + (int64_t)tu_uniform(&g, 0, 3));
            else if (u < 0.13) d = -1 - (int32_t)tu_uniform(&g, 0, 3);
            else if (u < 0.14) d = (int32_t)(c->slots + (int64_t)tu_uniform(&g, 0, 3));
            const size_t k = (size_t)(b * r->ld_rows + i);
            r->srows[k] = s, r->drows[k] = d;
        }
    }
    free(perm);
    memcpy(r->ref_srows, r->srows, lb);
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t i = 0; i < c->n; i++) {
            const size_t k = (size_t)(b * r->ld_rows + i);
            const int32_t s = r->srows[k], d = r->drows[k];
            if (s < 0) r->skipped++;
            else if (s >= c->cap || d < 0 || d >= c->slots) r->out_of_range++, r->ref_srows[k] = -1;
            else r->copied++;
        }
    for (int k = 0; k < 2; k++) {
        st = hae_backend_alloc_host(g_gpu, lb, (void **)&r->hrows[k]);
        cr_assert_eq(st, HAE_OK, "alloc_host of %zu bytes: %s", lb, hae_last_error());
        memcpy(r->hrows[k], k ? r->drows : r->srows, lb);
    }
    r->srows_pb = pb_new(r->srows, lb);
    r->drows_pb = pb_new(r->drows, lb);
    r->poison = host_poison(r->dst_bytes);
    r->dst = pb_new(r->poison, r->dst_bytes);
}

static void grun_free(grun *r) {
    hae_backend_free_host(g_gpu, r->src_alloc);
    for (int k = 0; k < 2; k++) hae_backend_free_host(g_gpu, r->hrows[k]);
    pb_free(&r->srows_pb), pb_free(&r->drows_pb), pb_free(&r->dst);
    free(r->srows), free(r->drows), free(r->ref_srows), free(r->poison);
}

static hae_tensor side(void *data, const grun *r, int64_t rows, hae_device dev) {
    const int64_t shape[3] = {r->c.B, rows, r->c.W}, stride[3] = {rows * r->ld, r->ld, 1};
    return tv(data, r->c.dt, dev, 3, shape, stride);
}
static hae_tensor list(void *data, const grun *r, hae_device dev) {
    const int64_t shape[2] = {r->c.B, r->c.n}, stride[2] = {r->ld_rows, 1};
    return tv(data, HAE_I32, dev, 2, shape, stride);
}

/* The entry of sequence b that writes destination row d, or -1. */
static int64_t writer(const grun *r, int64_t b, int64_t d) {
    for (int64_t i = 0; i < r->c.n; i++)
        if (r->drows[b * r->ld_rows + i] == d && r->ref_srows[b * r->ld_rows + i] >= 0) return i;
    return -1;
}

/* The GPU's dst against the CPU's, byte for byte; the first difference named. */
static void compare(const grun *r, const char *method) {
    unsigned char *got = malloc(r->dst_bytes);
    cr_assert(got);
    hae_status st = hae_backend_download(g_gpu, got, r->dst.g, r->dst_bytes);
    cr_assert_eq(st, HAE_OK, "download: %s", hae_last_error());
    const unsigned char *want = r->dst.c;
    size_t first = SIZE_MAX, count = 0;
    for (size_t i = 0; i < r->dst_bytes; i++)
        if (got[i] != want[i]) {
            if (first == SIZE_MAX) first = i;
            count++;
        }
    if (count) {
        char d[256];
        const int64_t el = (int64_t)(first / r->es), seq_el = r->c.slots * r->ld;
        const int64_t b = el / seq_el, row = el % seq_el / r->ld, col = el % seq_el % r->ld, i = writer(r, b, row);
        cr_expect(0, "%s [%s]: %zu of %zu dst bytes differ; first at byte %zu: sequence %lld, row %lld, column %lld "
                  "(%s), written by entry %lld (src row %d): cpu 0x%02x, gpu 0x%02x", method,
                  describe(&r->c, d, sizeof d), count, r->dst_bytes, first, (long long)b, (long long)row,
                  (long long)col, col < r->c.W ? "in the row" : "in the padding", (long long)i,
                  i >= 0 ? r->srows[b * r->ld_rows + i] : -1, want[first], got[first]);
    }
    free(got);
}

typedef struct {
    const char *name;
    hae_gather_method method;
    int max_blocks;
    int lists; /* 0: device memory, 1: host tier (device-visible), 2: host (copies) */
} gmethod;

static const gmethod methods[] = {
    {"kernel (48 blocks)", HAE_GATHER_KERNEL, 0, 0}, {"kernel (1 block)", HAE_GATHER_KERNEL, 1, 0},
    {"kernel (132 blocks)", HAE_GATHER_KERNEL, 132, 0}, {"auto", HAE_GATHER_AUTO, 0, 0},
    {"kernel, lists in the host tier", HAE_GATHER_KERNEL, 16, 1}, {"copies", HAE_GATHER_COPIES, 0, 2},
};

static void run_case(const gcase *c) {
    grun r;
    grun_make(&r, c);
    char d[256];
    cr_assert(r.copied > 0, "[%s]: no entry copies", describe(c, d, sizeof d));
    /* the CPU reference, once */
    hae_kv_gather_args ca = {.src = side(r.src, &r, c->cap, HAE_CPU), .dst = side(r.dst.c, &r, c->slots, HAE_CPU),
                             .src_rows = list(r.ref_srows, &r, HAE_CPU), .dst_rows = list(r.drows, &r, HAE_CPU)};
    hae_status st = hae_kv_gather(g_cpu, &ca);
    cr_assert_eq(st, HAE_OK, "cpu [%s]: %s", describe(c, d, sizeof d), hae_last_error());
    for (size_t m = 0; m < sizeof methods / sizeof methods[0]; m++) {
        const gmethod *g = &methods[m];
        st = hae_backend_upload(g_gpu, r.dst.g, r.poison, r.dst_bytes); /* the GPU side only: dst.c is the reference */
        cr_assert_eq(st, HAE_OK, "poison: %s", hae_last_error());
        hae_kv_gather_args ga = {.src = side(r.src, &r, c->cap, HAE_CUDA), .dst = side(r.dst.g, &r, c->slots, HAE_CUDA),
                                 .method = g->method, .max_blocks = g->max_blocks};
        if (g->lists == 0)
            ga.src_rows = list(r.srows_pb.g, &r, HAE_CUDA), ga.dst_rows = list(r.drows_pb.g, &r, HAE_CUDA);
        else if (g->lists == 1)
            ga.src_rows = list(r.hrows[0], &r, HAE_CUDA), ga.dst_rows = list(r.hrows[1], &r, HAE_CUDA);
        else
            ga.src_rows = list(r.srows, &r, HAE_CPU), ga.dst_rows = list(r.drows, &r, HAE_CPU);
        st = hae_kv_gather(g_gpu, &ga);
        if (st == HAE_OK) st = hae_backend_sync(g_gpu);
        cr_expect_eq(st, HAE_OK, "%s [%s]: %s", g->name, describe(c, d, sizeof d), hae_last_error());
        if (st == HAE_OK) compare(&r, g->name);
    }
    grun_free(&r);
}

static const gcase cases[] = {
    /* dt            B  cap    slots W     n     pad off seed */
    {HAE_BF16,       1, 4096,  2048, 328,  2048, 0,  0,  1},  /* 656-byte rows, the fetch */
    {HAE_BF16,       4, 16384, 8192, 328,  8192, 8,  0,  2},  /* strided rows of 672 bytes */
    {HAE_FP8_E4M3,   4, 8192,  2048, 656,  2048, 16, 0,  3},
    {HAE_BF16,       1, 8192,  8192, 576,  8192, 0,  0,  4},  /* 1152-byte mla latents */
    {HAE_BF16,       4, 4096,  2048, 576,  2048, 0,  0,  5},
    {HAE_FP8_E4M3,   1, 100,   1,    1152, 1,    0,  0,  6},  /* n = 1 */
    {HAE_BF16,       4, 4,     1,    576,  1,    0,  0,  7},
    {HAE_BF16,       1, 4096,  4096, 2048, 2048, 0,  0,  8},  /* 4096-byte gqa rows */
    {HAE_BF16,       4, 2048,  2048, 2048, 2048, 0,  0,  9},
    {HAE_FP8_E4M3,   1, 16384, 8192, 4096, 8192, 0,  0,  10},
    {HAE_F32,        2, 300,   128,  7,    100,  1,  0,  11}, /* 28-byte rows 32 apart: 16-byte unit, 12-byte tail */
    {HAE_BF16,       3, 300,   128,  100,  128,  4,  0,  12}, /* 200-byte rows 208 apart: 16-byte unit, 8-byte tail */
    {HAE_I64,        2, 300,   64,   5,    60,   0,  0,  13}, /* 40-byte rows: 8-byte unit */
    {HAE_BF16,       2, 500,   200,  328,  200,  0,  2,  14}, /* src 4 bytes off: 4-byte unit */
    {HAE_F16,        2, 300,   64,   3,    64,   0,  0,  15}, /* 6-byte rows: 2-byte unit */
    {HAE_FP8_E4M3,   2, 500,   200,  13,   200,  0,  1,  16}, /* 13-byte rows 1 byte off: 1-byte unit */
};

Test(gpu_fetch, matches_the_cpu) {
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) run_case(&cases[k]);
}

/* A host tier of 3 GiB and a bit (four chunks): rows of 4100 bytes, so that some straddle each 1 GiB
 * chunk boundary, fetched from both ends and around every boundary by each method: the chunks are mapped
 * at their host addresses, back to back. */
Test(gpu_fetch, host_tier_in_chunks_is_mapped) {
    const size_t chunk = (size_t)1 << 30, bytes = 3 * chunk + 12345;
    const int64_t W = 4100, cap = (int64_t)(bytes / (size_t)W);
    unsigned char *h = NULL;
    hae_status st = hae_backend_alloc_host(g_gpu, bytes, (void **)&h);
    cr_assert_eq(st, HAE_OK, "alloc_host of %zu bytes: %s", bytes, hae_last_error());
    int32_t rows[32] = {0}, slots[32] = {0};
    int n = 0;
    rows[n++] = 0;
    for (size_t k = 1; k <= 3; k++) {
        const int32_t r0 = (int32_t)(k * chunk / (size_t)W);
        for (int32_t r = r0 - 1; r <= r0 + 1; r++) rows[n++] = r;
    }
    rows[n++] = (int32_t)(cap - 1);
    for (int i = 0; i < n; i++) {
        slots[i] = n - 1 - i;
        fill_bytes(h + (size_t)rows[i] * (size_t)W, (size_t)W, 1000 + (uint64_t)i);
    }
    void *dst = NULL, *rows_d = NULL, *slots_d = NULL;
    cr_assert_eq(hae_backend_alloc(g_gpu, (size_t)(n * W), &dst), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(hae_backend_alloc(g_gpu, sizeof rows, &rows_d), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(hae_backend_alloc(g_gpu, sizeof slots, &slots_d), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(hae_backend_upload(g_gpu, rows_d, rows, sizeof rows), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(hae_backend_upload(g_gpu, slots_d, slots, sizeof slots), HAE_OK, "%s", hae_last_error());
    unsigned char *got = malloc((size_t)(n * W)), *poison = host_poison((size_t)(n * W));
    cr_assert(got);
    for (int m = 0; m < 2; m++) {
        const bool copies = m == 1;
        cr_assert_eq(hae_backend_upload(g_gpu, dst, poison, (size_t)(n * W)), HAE_OK, "%s", hae_last_error());
        hae_kv_gather_args a = {
            .src = hae_tensor_3d(h, HAE_FP8_E4M3, HAE_CUDA, 1, cap, W),
            .dst = hae_tensor_3d(dst, HAE_FP8_E4M3, HAE_CUDA, 1, n, W),
            .src_rows = hae_tensor_2d(copies ? (void *)rows : rows_d, HAE_I32, copies ? HAE_CPU : HAE_CUDA, 1, n),
            .dst_rows = hae_tensor_2d(copies ? (void *)slots : slots_d, HAE_I32, copies ? HAE_CPU : HAE_CUDA, 1, n),
            .method = copies ? HAE_GATHER_COPIES : HAE_GATHER_KERNEL,
        };
        st = hae_kv_gather(g_gpu, &a);
        if (st == HAE_OK) st = hae_backend_download(g_gpu, got, dst, (size_t)(n * W));
        cr_assert_eq(st, HAE_OK, "%s: %s", copies ? "copies" : "kernel", hae_last_error());
        for (int i = 0; i < n; i++) {
            const unsigned char *want = h + (size_t)rows[i] * (size_t)W, *row = got + (size_t)slots[i] * (size_t)W;
            for (int64_t j = 0; j < W; j++)
                if (row[j] != want[j]) {
                    cr_expect(0, "%s: host tier row %d (bytes %zu.. of %zu, chunk %zu) byte %lld: 0x%02x, expected "
                              "0x%02x", copies ? "copies" : "kernel", rows[i], (size_t)rows[i] * (size_t)W, bytes,
                              (size_t)rows[i] * (size_t)W / chunk, (long long)j, row[j], want[j]);
                    break;
                }
        }
    }
    free(got), free(poison);
    hae_backend_free(g_gpu, dst), hae_backend_free(g_gpu, rows_d), hae_backend_free(g_gpu, slots_d);
    hae_backend_free_host(g_gpu, h);
    /* sizes that cannot be: a clear error, nothing allocated */
    void *p = (void *)1;
    st = hae_backend_alloc_host(g_gpu, SIZE_MAX - 8, &p);
    cr_expect(st == HAE_ERR_OOM && p == NULL && strstr(hae_last_error(), "host tier"), "%s: %s", hae_status_name(st),
              hae_last_error());
    hae_backend_free_host(g_gpu, NULL);
    cr_assert_eq(hae_backend_alloc_host(g_gpu, 0, &p), HAE_OK, "%s", hae_last_error());
    hae_backend_free_host(g_gpu, p);
}

/* The page pool's host tier on CUDA is pinned and mapped: a page written on the host moves to the GPU
 * and back with its bytes, its host page may be rewritten as soon as the move returns, and the fetch
 * kernel reads a host page in place. */
Test(gpu_fetch, page_pool_host_pages) {
    const size_t page_bytes = 64 * 656;
    const hae_page_class cls = {.kind = HAE_MEM_DSA_KV, .page_bytes = page_bytes, .pages = {2, 2}};
    hae_page_pool_desc d = {.page_tokens = 64, .max_seqs = 1, .max_seq_tokens = 128, .n_classes = 1, .classes = &cls};
    hae_page_pool *pool = NULL;
    cr_assert_eq(hae_page_pool_create(g_gpu, &d, &pool), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(hae_page_pool_grow(pool, 0, 0, 128, HAE_TIER_HOST), HAE_OK, "%s", hae_last_error());
    unsigned char *want = malloc(page_bytes), *got = malloc(page_bytes);
    cr_assert(want && got);
    void *data = NULL;
    hae_tier tier;
    cr_assert_eq(hae_page_pool_page(pool, 0, 0, 0, &data, &tier), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(tier, HAE_TIER_HOST);
    fill_bytes(data, page_bytes, 77);
    memcpy(want, data, page_bytes);
    void *old = data;
    cr_assert_eq(hae_page_pool_move(pool, 0, 0, 0, HAE_TIER_GPU), HAE_OK, "%s", hae_last_error());
    memset(old, 0x11, page_bytes); /* the freed host page, rewritten at once */
    cr_assert_eq(hae_page_pool_page(pool, 0, 0, 0, &data, &tier), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(tier, HAE_TIER_GPU);
    cr_assert_eq(hae_backend_download(g_gpu, got, data, page_bytes), HAE_OK, "%s", hae_last_error());
    cr_expect(memcmp(got, want, page_bytes) == 0, "page 0 changed on its way to the GPU");
    cr_assert_eq(hae_page_pool_move(pool, 0, 0, 0, HAE_TIER_HOST), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(hae_page_pool_page(pool, 0, 0, 0, &data, &tier), HAE_OK, "%s", hae_last_error());
    cr_expect(memcmp(data, want, page_bytes) == 0, "page 0 changed on its way back to the host");

    /* the kernel reads the host page's 64 tokens of 656 bytes in place, in reverse order */
    void *dst = NULL, *lists = NULL;
    int32_t rows[128];
    for (int i = 0; i < 64; i++) rows[i] = i, rows[64 + i] = 63 - i;
    cr_assert_eq(hae_backend_alloc(g_gpu, page_bytes, &dst), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(hae_backend_alloc(g_gpu, sizeof rows, &lists), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(hae_backend_upload(g_gpu, lists, rows, sizeof rows), HAE_OK, "%s", hae_last_error());
    hae_kv_gather_args a = {.src = hae_tensor_3d(data, HAE_FP8_E4M3, HAE_CUDA, 1, 64, 656),
                            .dst = hae_tensor_3d(dst, HAE_FP8_E4M3, HAE_CUDA, 1, 64, 656),
                            .src_rows = hae_tensor_2d(lists, HAE_I32, HAE_CUDA, 1, 64),
                            .dst_rows = hae_tensor_2d((int32_t *)lists + 64, HAE_I32, HAE_CUDA, 1, 64)};
    cr_assert_eq(hae_kv_gather(g_gpu, &a), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(hae_backend_download(g_gpu, got, dst, page_bytes), HAE_OK, "%s", hae_last_error());
    for (int t = 0; t < 64; t++)
        cr_expect(memcmp(got + (size_t)(63 - t) * 656, want + (size_t)t * 656, 656) == 0,
                  "token %d of the host page, fetched into slot %d, differs", t, 63 - t);
    hae_backend_free(g_gpu, dst), hae_backend_free(g_gpu, lists);
    cr_expect_eq(hae_page_pool_validate(pool), HAE_OK, "%s", hae_last_error());
    hae_page_pool_destroy(pool);
    free(want), free(got);
}

/* GPU tests of side work (hae_backend_side_begin/_end/_wait): the races that silently corrupt KV offload
 * systems, provoked on purpose. A slow kernel on the main stream (an f32 GEMM of 4096^3, a few ms) and a
 * copy on the side stream touch the same rows:
 *   - the copy overwrites rows the GEMM still reads (its operand) or still writes (its output);
 *   - the GEMM reads rows the copy has not written yet;
 *   - a decode step's fetch (hae_slot_cache) evicts slots that a GEMM over the slots still reads;
 *   - a decode micro-batch's GEMM reads its slots while its fetch, left in flight, is still arriving.
 * Each case runs fenced, where the results must equal a run without side work bit for bit, and then with
 * the fences switched off (hae_backend_set_unfenced), where the same check must fail: the test would
 * catch a version that left the events out. main() is tests/main_gpu.c's. */
#include "internal.h"
#include "gpu_pair.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

TestSuite(gpu_side, .init = gpu_pair_setup, .fini = gpu_pair_teardown, .timeout = 600);

enum { N = 4096 };
static const size_t kBytes = (size_t)N * N * sizeof(float);

typedef struct {
    float *x, *w, *z;    /* device: the GEMM z = x w^T */
    float *host;         /* host tier: the rows the side work brings in */
    float *a, *c;        /* host: x's values, the host tier's */
    int32_t *rows;       /* device: 0..N-1 */
    hae_fence *fence;
} bufs;

static void *dev(size_t bytes) {
    void *p = NULL;
    cr_assert_eq(hae_backend_alloc(g_gpu, bytes, &p), HAE_OK, "%s", hae_last_error());
    return p;
}

static bufs make(void) {
    bufs b = {.x = dev(kBytes), .w = dev(kBytes), .z = dev(kBytes), .a = malloc(kBytes), .c = malloc(kBytes)};
    cr_assert(b.a && b.c);
    cr_assert_eq(hae_backend_alloc_host(g_gpu, kBytes, (void **)&b.host), HAE_OK, "%s", hae_last_error());
    tu_rng g = tu_rng_make(11);
    tu_fill(b.a, HAE_F32, (int64_t)N * N, &g, -1, 1);
    tu_fill(b.c, HAE_F32, (int64_t)N * N, &g, -1, 1);
    memcpy(b.host, b.c, kBytes);
    float *w = malloc(kBytes);
    int32_t *rows = malloc(N * sizeof(int32_t));
    cr_assert(w && rows);
    tu_fill(w, HAE_F32, (int64_t)N * N, &g, -1, 1);
    for (int i = 0; i < N; i++) rows[i] = i;
    b.rows = dev(N * sizeof(int32_t));
    cr_assert_eq(hae_backend_upload(g_gpu, b.w, w, kBytes), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(hae_backend_upload(g_gpu, b.rows, rows, N * sizeof(int32_t)), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(hae_backend_sync(g_gpu), HAE_OK, "%s", hae_last_error());
    free(w), free(rows);
    cr_assert_eq(hae_fence_create(g_gpu, &b.fence), HAE_OK, "%s", hae_last_error());
    return b;
}

static void drop(bufs *b) {
    hae_backend_free(g_gpu, b->x), hae_backend_free(g_gpu, b->w), hae_backend_free(g_gpu, b->z);
    hae_backend_free(g_gpu, b->rows), hae_backend_free_host(g_gpu, b->host);
    hae_fence_destroy(b->fence);
    free(b->a), free(b->c);
}

static hae_status gemm(bufs *b, float *x) {
    return hae_gemm(g_gpu, &(hae_gemm_args){.a = hae_tensor_2d(x, HAE_F32, HAE_CUDA, N, N),
                                            .b = hae_tensor_2d(b->w, HAE_F32, HAE_CUDA, N, N),
                                            .c = hae_tensor_2d(b->z, HAE_F32, HAE_CUDA, N, N)});
}

/* All N rows of the host tier into dst, by the gather kernel, as side work. */
static hae_status side_gather(bufs *b, float *dst) {
    HAE_TRY(hae_backend_side_begin(g_gpu));
    const hae_tensor rows = hae_tensor_2d(b->rows, HAE_I32, HAE_CUDA, 1, N);
    const hae_status st = hae_kv_gather(g_gpu, &(hae_kv_gather_args){.src = hae_tensor_3d(b->host, HAE_F32, HAE_CUDA, 1, N, N),
                                                                     .dst = hae_tensor_3d(dst, HAE_F32, HAE_CUDA, 1, N, N),
                                                                     .src_rows = rows, .dst_rows = rows});
    HAE_TRY(hae_backend_side_end(g_gpu, b->fence));
    HAE_TRY(st);
    return hae_backend_side_wait(g_gpu, b->fence);
}

static float *download(const float *p) {
    float *h = malloc(kBytes);
    cr_assert(h);
    cr_assert_eq(hae_backend_download(g_gpu, h, p, kBytes), HAE_OK, "%s", hae_last_error());
    return h;
}

static int64_t differing(const float *x, const float *y) {
    int64_t n = 0;
    for (int64_t i = 0; i < (int64_t)N * N; i++) n += memcmp(&x[i], &y[i], sizeof(float)) != 0;
    return n;
}

/* z = gemm(x), x holding values (or, NULL, what it holds): the result without side work. */
static float *reference(bufs *b, float *x, const float *values) {
    if (values) cr_assert_eq(hae_backend_upload(g_gpu, x, values, kBytes), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(gemm(b, x), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(hae_backend_sync(g_gpu), HAE_OK, "%s", hae_last_error());
    return download(b->z);
}

/* The copy comes after the GEMM in program order: fenced, it waits for the GEMM, so the GEMM read the old
 * operand (write after read) and the copy's rows are what the output holds at the end (write after write). */
Test(gpu_side, a_copy_waits_for_the_kernels_before_it) {
    bufs b = make();
    float *z_a = reference(&b, b.x, b.a);
    for (int what = 0; what < 2; what++) {
        const char *name = what == 0 ? "gather into the GEMM's operand" : "gather into the GEMM's output";
        for (int fenced = 1; fenced >= 0; fenced--) {
            cr_assert_eq(hae_backend_upload(g_gpu, b.x, b.a, kBytes), HAE_OK, "%s", hae_last_error());
            cr_assert_eq(hae_backend_sync(g_gpu), HAE_OK, "%s", hae_last_error());
            hae_backend_set_unfenced(g_gpu, !fenced);
            hae_status st = gemm(&b, b.x);
            if (st == HAE_OK) st = side_gather(&b, what == 0 ? b.x : b.z);
            if (st == HAE_OK) st = hae_backend_sync(g_gpu);
            hae_backend_set_unfenced(g_gpu, false);
            cr_assert_eq(st, HAE_OK, "%s: %s", name, hae_last_error());
            float *z = download(b.z), *x = download(b.x);
            const int64_t bad = what == 0 ? differing(z, z_a) : differing(z, b.c);
            if (fenced) {
                cr_expect_eq(bad, 0, "%s, fenced: %lld of %d outputs differ from the run without side work", name,
                             (long long)bad, N * N);
                if (what == 0) cr_expect_eq(differing(x, b.c), 0, "%s, fenced: the operand holds the fetched rows", name);
            } else {
                cr_expect_gt(bad, 0, "%s, unfenced: the race went unseen (the GEMM took too little time?)", name);
            }
            free(z), free(x);
        }
    }
    free(z_a);
    drop(&b);
}

/* The GEMM comes after the copy (an upload on the copy engine): fenced, it reads only what the copy wrote.
 * Unfenced, the race shows unless the copy happens to finish first (once seen on a just-started machine), so
 * that half gets three tries. */
Test(gpu_side, kernels_after_a_wait_see_the_whole_copy) {
    bufs b = make();
    float *z_c = reference(&b, b.x, b.c);
    for (int fenced = 1, tries = 0; fenced >= 0; fenced--) {
        cr_assert_eq(hae_backend_upload(g_gpu, b.x, b.a, kBytes), HAE_OK, "%s", hae_last_error());
        cr_assert_eq(hae_backend_sync(g_gpu), HAE_OK, "%s", hae_last_error());
        hae_backend_set_unfenced(g_gpu, !fenced);
        hae_status st = hae_backend_side_begin(g_gpu);
        for (size_t at = 0; st == HAE_OK && at < kBytes; at += hae_host_run((char *)b.host + at, kBytes - at))
            st = hae_backend_upload(g_gpu, (char *)b.x + at, (char *)b.host + at, hae_host_run((char *)b.host + at, kBytes - at));
        if (st == HAE_OK) st = hae_backend_side_end(g_gpu, b.fence);
        if (st == HAE_OK) st = hae_backend_side_wait(g_gpu, b.fence);
        if (st == HAE_OK) st = gemm(&b, b.x);
        if (st == HAE_OK) st = hae_backend_sync(g_gpu);
        hae_backend_set_unfenced(g_gpu, false);
        cr_assert_eq(st, HAE_OK, "%s", hae_last_error());
        float *z = download(b.z);
        const int64_t bad = differing(z, z_c);
        free(z);
        if (fenced) {
            cr_expect_eq(bad, 0, "fenced: %lld of %d outputs differ from the run without side work", (long long)bad, N * N);
        } else if (bad == 0 && ++tries < 3) {
            fenced = 1; /* the loop's decrement tries the unfenced half again */
        } else {
            cr_expect_gt(bad, 0, "unfenced: the race went unseen in %d tries (the copy took too little time?)", tries);
        }
    }
    free(z_c);
    drop(&b);
}

/* A dsa layer's token slots (hae_slot_cache, N slots of N floats per token, top-N/2 lookups): steps 1 and 2
 * fill the slots, a GEMM reads all of them, and step 3's lookup evicts the half that step 1 filled and fetches
 * new tokens into it as side work. Fenced, the GEMM sees the slots of step 2 and every slot step 3 names holds
 * its token's row afterwards. */
Test(gpu_side, a_decode_fetch_does_not_evict_slots_in_use) {
    bufs b = make();
    const int64_t cap = 2 * N, k = N / 2;
    float *host = NULL;
    cr_assert_eq(hae_backend_alloc_host(g_gpu, 2 * kBytes, (void **)&host), HAE_OK, "%s", hae_last_error());
    tu_rng g = tu_rng_make(12);
    tu_fill(host, HAE_F32, cap * N, &g, -1, 1);
    const hae_tensor kh = hae_tensor_4d(host, HAE_F32, HAE_CUDA, 1, cap, 32, N / 32);
    int32_t *sel_h = malloc((size_t)k * sizeof(int32_t)), *slots_h = malloc((size_t)k * sizeof(int32_t));
    int32_t *sel = dev((size_t)k * sizeof(int32_t));
    cr_assert(sel_h && slots_h);
    for (int fenced = 1; fenced >= 0; fenced--) {
        hae_slot_cache *c = NULL;
        cr_assert_eq(hae_slot_cache_create(g_gpu, &kh, &kh, N, k, 1, NULL, &c), HAE_OK, "%s", hae_last_error());
        hae_tensor ks, vs, idx, lens;
        float *z_ref = NULL;
        for (int step = 0; step < 3; step++) {
            for (int64_t i = 0; i < k; i++) sel_h[i] = (int32_t)(step * k + i); /* disjoint: all misses */
            cr_assert_eq(hae_backend_upload(g_gpu, sel, sel_h, (size_t)k * sizeof(int32_t)), HAE_OK, "%s", hae_last_error());
            idx = hae_tensor_3d(sel, HAE_I32, HAE_CUDA, 1, 1, k);
            if (step == 2) hae_backend_set_unfenced(g_gpu, !fenced);
            hae_status st = hae_slot_cache_prepare(c, 0, 0, 1, cap - 1, 1, &ks, &vs, &idx, &lens);
            if (st == HAE_OK) st = hae_slot_cache_wait(c, 0);
            hae_backend_set_unfenced(g_gpu, false);
            cr_assert_eq(st, HAE_OK, "step %d: %s", step + 1, hae_last_error());
            if (step == 1) { /* what the slow reader over every slot must see, then the reader, left running */
                cr_assert_eq(hae_backend_sync(g_gpu), HAE_OK, "%s", hae_last_error());
                z_ref = reference(&b, ks.data, NULL);
                cr_assert_eq(gemm(&b, ks.data), HAE_OK, "%s", hae_last_error());
            }
        }
        cr_assert_eq(hae_backend_sync(g_gpu), HAE_OK, "%s", hae_last_error());
        float *z = download(b.z), *slots = download(ks.data);
        cr_assert_eq(hae_backend_download(g_gpu, slots_h, idx.data, (size_t)k * sizeof(int32_t)), HAE_OK, "%s",
                     hae_last_error());
        int64_t stale = 0;
        for (int64_t i = 0; i < k; i++)
            stale += slots_h[i] < 0 || slots_h[i] >= N ||
                     memcmp(slots + (int64_t)slots_h[i] * N, host + (2 * k + i) * N, N * sizeof(float)) != 0;
        const int64_t bad = differing(z, z_ref);
        if (fenced) {
            cr_expect_eq(bad, 0, "fenced: the GEMM over the slots saw %lld values change under it", (long long)bad);
            cr_expect_eq(stale, 0, "fenced: %lld of step 3's %lld slots do not hold their token's row", (long long)stale,
                         (long long)k);
        } else {
            cr_expect(bad > 0 || stale > 0, "unfenced: the race went unseen");
        }
        free(z), free(slots), free(z_ref);
        hae_slot_cache_destroy(c);
    }
    hae_backend_free(g_gpu, sel), hae_backend_free_host(g_gpu, host);
    free(sel_h), free(slots_h);
    drop(&b);
}

/* Decode micro-batches: two sequences of one slot cache fetch as parts 0 and 1 (hae_slot_cache_prepare),
 * both fetches left in flight, N rows of N floats each; a GEMM over sequence 0's slots comes after waiting for
 * part 0 only, while part 1's fetch is still queued behind it. Fenced, the GEMM reads part 0's fetched rows and
 * both sequences' slots end holding their tokens' rows; unfenced, it starts before the rows arrive. */
Test(gpu_side, a_micro_batch_waits_for_its_own_fetch) {
    bufs b = make();
    const int64_t cap = 2 * N;
    float *host = NULL;
    cr_assert_eq(hae_backend_alloc_host(g_gpu, 4 * kBytes, (void **)&host), HAE_OK, "%s", hae_last_error());
    tu_rng g = tu_rng_make(13);
    tu_fill(host, HAE_F32, 2 * cap * N, &g, -1, 1);
    const hae_tensor kh = hae_tensor_4d(host, HAE_F32, HAE_CUDA, 2, cap, 32, N / 32);
    int32_t *sel_h = malloc(2 * N * sizeof(int32_t));
    int32_t *sel = dev(2 * N * sizeof(int32_t));
    cr_assert(sel_h);
    for (int64_t i = 0; i < N; i++) sel_h[i] = (int32_t)i, sel_h[N + i] = (int32_t)(N + i); /* all misses */
    cr_assert_eq(hae_backend_upload(g_gpu, sel, sel_h, 2 * N * sizeof(int32_t)), HAE_OK, "%s", hae_last_error());
    for (int fenced = 1; fenced >= 0; fenced--) {
        /* new values for the second run, since its slots may reuse the first run's memory, which holds the old */
        if (!fenced)
            for (int64_t i = 0; i < (int64_t)N * N; i++) host[i] = -host[i];
        float *z_ref = reference(&b, b.x, host); /* sequence 0's tokens 0..N-1, in the slots the lookup gives them */
        hae_slot_cache *c = NULL;
        cr_assert_eq(hae_slot_cache_create(g_gpu, &kh, &kh, N, N, 1, NULL, &c), HAE_OK, "%s", hae_last_error());
        hae_tensor ks[2], vs, idx[2], lens;
        hae_status st = HAE_OK;
        for (int part = 0; part < 2 && st == HAE_OK; part++) {
            idx[part] = hae_tensor_3d(sel + part * N, HAE_I32, HAE_CUDA, 1, 1, N);
            st = hae_slot_cache_prepare(c, part, part, 1, cap - 1, 1, &ks[part], &vs, &idx[part], &lens);
        }
        hae_backend_set_unfenced(g_gpu, !fenced);
        if (st == HAE_OK) st = hae_slot_cache_wait(c, 0);
        if (st == HAE_OK) st = gemm(&b, ks[0].data);
        hae_backend_set_unfenced(g_gpu, false);
        if (st == HAE_OK) st = hae_slot_cache_wait(c, 1);
        if (st == HAE_OK) st = hae_backend_sync(g_gpu);
        cr_assert_eq(st, HAE_OK, "%s", hae_last_error());
        float *z = download(b.z);
        int64_t stale = 0;
        for (int part = 0; part < 2; part++) {
            float *slots = download(ks[part].data);
            stale += differing(slots, host + (size_t)part * (size_t)(cap + N) * N); /* tokens part N.. of it */
            free(slots);
        }
        const int64_t bad = differing(z, z_ref);
        if (fenced) {
            cr_expect_eq(bad, 0, "fenced: the GEMM over part 0's slots saw %lld values other than its rows", (long long)bad);
            cr_expect_eq(stale, 0, "fenced: %lld slot values are not their tokens'", (long long)stale);
        } else {
            cr_expect_gt(bad, 0, "unfenced: the GEMM did not race part 0's fetch");
        }
        free(z), free(z_ref);
        hae_slot_cache_destroy(c);
    }
    hae_backend_free(g_gpu, sel), hae_backend_free_host(g_gpu, host);
    free(sel_h);
    drop(&b);
}

/* Inside side work only copies and gathers run: a GEMM there would run on the wrong stream. */
Test(gpu_side, other_ops_are_refused_inside_side_work) {
    float *x = dev(64 * sizeof(float)), *z = dev(64 * sizeof(float));
    hae_fence *f = NULL;
    cr_assert_eq(hae_fence_create(g_gpu, &f), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(hae_backend_side_begin(g_gpu), HAE_OK, "%s", hae_last_error());
    const hae_status st = hae_gemm(g_gpu, &(hae_gemm_args){.a = hae_tensor_2d(x, HAE_F32, HAE_CUDA, 8, 8),
                                                           .b = hae_tensor_2d(x, HAE_F32, HAE_CUDA, 8, 8),
                                                           .c = hae_tensor_2d(z, HAE_F32, HAE_CUDA, 8, 8)});
    cr_expect_eq(st, HAE_ERR_INVALID, "a GEMM inside side work: got %s", hae_status_name(st));
    cr_expect(strstr(hae_last_error(), "side work"), "%s", hae_last_error());
    cr_expect_eq(hae_backend_zero(g_gpu, z, 64 * sizeof(float)), HAE_OK, "a zeroing is side work: %s", hae_last_error());
    cr_assert_eq(hae_backend_side_end(g_gpu, f), HAE_OK, "%s", hae_last_error());
    cr_expect_eq(hae_backend_side_wait(g_gpu, f), HAE_OK, "%s", hae_last_error());
    cr_expect_eq(hae_gemm(g_gpu, &(hae_gemm_args){.a = hae_tensor_2d(x, HAE_F32, HAE_CUDA, 8, 8),
                                                  .b = hae_tensor_2d(x, HAE_F32, HAE_CUDA, 8, 8),
                                                  .c = hae_tensor_2d(z, HAE_F32, HAE_CUDA, 8, 8)}),
                 HAE_OK, "after the end: %s", hae_last_error());
    cr_expect_eq(hae_backend_sync(g_gpu), HAE_OK, "%s", hae_last_error());
    hae_fence_destroy(f);
    hae_backend_free(g_gpu, x), hae_backend_free(g_gpu, z);
}

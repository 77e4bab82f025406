/* CUDA microbenchmarks of DSA's sparse attention (hae_sparse_attention) at DeepSeek-V3.2's shapes: mla in absorbed
 * form (Hkv 1, Dk 576, Dv 512, v_cache a view of the latent k_cache, 128 heads, top-2048) for decode (B 64) and
 * prefill (4096 queries), over a 64K-token context; and gqa (Hq 32, Hkv 8, D 128, top-2048) for decode (B 64) and
 * prefill (4096 queries) over a 32K context. Indices are 2048 distinct random positions <= each query's position.
 * bf16 q, caches and out, with lse; the mla decode and prefill also over mla's FP8 cache layout (656 bytes a token,
 * hae_kv_write from the same bf16 rows), the form FlashMLA's sparse decode reads, and the gqa ones over gqa's (144
 * bytes a head of 128); and the decode at hybrid-1b's gqa heads (16 q, 4 kv) in both.
 *
 * Each shape is first checked against the CPU reference on fresh random inputs with poisoned outputs at a reduced
 * batch or query count (same heads, dims and top-k), and not timed if it is wrong. Then: fresh random inputs,
 * warm-up, >= 20 repetitions each alone with CUDA events after an L2 flush, median and min..max. FLOPs: 2 Hq k (Dk
 * + Dv) per query. GB/s: the K/V rows gathered (each query token's k rows of every kv head, read once: mla's values
 * are inside its keys) plus q, out and lse, over the median time. HAE_BENCH_ONLY=fp8 runs only the rows whose name
 * holds "fp8". Anchors: FlashMLA on an H100 SXM (sparse decode 99.6 us, ~400 TFLOP/s; sparse prefill 539-673
 * TFLOP/s) and this engine's targets on an H200 (decode <= 130 us, prefill >= 400 TFLOP/s). Without CUDA or a GPU
 * it says so and exits 0. */
#include "internal.h"

#include "bench_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef HAE_HAVE_CUDA

#define WARMUP 3
#define REPS 21

#define FLASHMLA_DECODE_US 99.6
#define FLASHMLA_PREFILL_TF_LO 539.0
#define FLASHMLA_PREFILL_TF_HI 673.0
#define TARGET_DECODE_US 130.0
#define TARGET_PREFILL_TF 400.0

static hae_backend *g_be, *g_cpu;
static hae_cuda_timer *g_timer;

typedef struct {
    const char *name;
    int64_t B, T, Hq, Hkv, Dk, Dv, context, k;
    bool mla; /* v_cache = the first Dv dims of k_cache */
    bool fp8; /* the FP8 cache layout of the form (mla: 656 bytes a token; gqa: Dk + 16 and Dv + 16 a head), written by
                 hae_kv_write from bf16 rows */
} shape;

/* One problem's inputs on one backend. */
typedef struct {
    hae_backend *be;
    void *q, *kc, *vc, *idx, *lens, *out, *lse;
    hae_sparse_attention_args a;
} problem;

static void *alloc_on(hae_backend *be, size_t bytes) {
    void *d = NULL;
    CHECK("alloc", hae_backend_alloc(be, bytes ? bytes : 1, &d));
    return d;
}

/* n values of dt in [lo, hi) at dst on be: a block of up to 4M values from the seed, repeated (so a
 * multi-GB cache costs one block's generation); the same bytes on every backend for one seed. */
static void fill_random(hae_backend *be, void *dst, hae_dtype dt, int64_t n, uint64_t seed, float lo, float hi) {
    const size_t es = hae_dtype_size(dt);
    const int64_t chunk = n < ((int64_t)1 << 22) ? n : ((int64_t)1 << 22);
    void *h = malloc((size_t)chunk * es + 1);
    if (!h) {
        fprintf(stderr, "bench_sparse: out of host memory\n");
        exit(1);
    }
    for (int64_t i = 0; i < chunk; i++) {
        const float u = (float)(hae_mix64(seed * 0x100000001ull + (uint64_t)i) >> 40) * (1.0f / 16777216.0f);
        hae_store_f(h, dt, i, lo + (hi - lo) * u);
    }
    for (int64_t off = 0; off < n; off += chunk) {
        const int64_t len = n - off < chunk ? n - off : chunk;
        CHECK("upload", hae_backend_upload(be, (char *)dst + (size_t)off * es, h, (size_t)len * es));
    }
    CHECK("sync", hae_backend_sync(be));
    free(h);
}

/* k distinct random positions in [0, p] per query (p = context - T + t), host memory. */
static int32_t *make_indices(const shape *s, uint64_t seed) {
    const int64_t rows = s->B * s->T;
    int32_t *idx = malloc(sizeof(int32_t) * (size_t)(rows * s->k));
    uint8_t *seen = calloc((size_t)s->context, 1);
    if (!idx || !seen) {
        fprintf(stderr, "bench_sparse: out of host memory\n");
        exit(1);
    }
    uint64_t ctr = seed;
    for (int64_t r = 0; r < rows; r++) {
        const int64_t p = s->context - s->T + r % s->T;
        int32_t *ix = idx + r * s->k;
        for (int64_t i = 0; i < s->k; i++) {
            int64_t j;
            do j = (int64_t)(hae_mix64(ctr++) % (uint64_t)(p + 1));
            while (seen[j]);
            seen[j] = 1;
            ix[i] = (int32_t)j;
        }
        for (int64_t i = 0; i < s->k; i++) seen[ix[i]] = 0;
    }
    free(seen);
    return idx;
}

static void problem_make(problem *p, hae_backend *be, const shape *s, uint64_t seed) {
    memset(p, 0, sizeof *p);
    p->be = be;
    const hae_dtype dt = HAE_BF16;
    const hae_device dev = hae_backend_device(be);
    const int64_t B = s->B, T = s->T, cap = s->context;
    const int64_t nq = B * T * s->Hq * s->Dk, no = B * T * s->Hq * s->Dv, nk = B * cap * s->Hkv * s->Dk;
    const int64_t nv = s->mla ? 0 : B * cap * s->Hkv * s->Dv, ni = B * T * s->k;
    p->q = alloc_on(be, (size_t)nq * 2);
    /* bytes a token of K (V) in the FP8 layouts */
    const int64_t k8 = s->mla ? HAE_MLA_FP8_ROW : s->Hkv * HAE_FP8_HEAD(s->Dk), v8 = s->Hkv * HAE_FP8_HEAD(s->Dv);
    p->kc = alloc_on(be, s->fp8 ? (size_t)(B * cap * k8) : (size_t)nk * 2);
    p->vc = s->mla ? p->kc : alloc_on(be, s->fp8 ? (size_t)(B * cap * v8) : (size_t)nv * 2);
    p->idx = alloc_on(be, (size_t)ni * 4);
    p->lens = alloc_on(be, (size_t)B * 4);
    p->out = alloc_on(be, (size_t)no * 2);
    p->lse = alloc_on(be, (size_t)(B * T * s->Hq) * 4);
    fill_random(be, p->q, dt, nq, seed, -1, 1);
    for (int v = 0; v < (s->mla ? 1 : 2); v++) {
        const int64_t n = v ? nv : nk, D = v ? s->Dv : s->Dk;
        if (!s->fp8) {
            fill_random(be, v ? p->vc : p->kc, dt, n, seed + 1 + (uint64_t)v, -1, 1);
            continue;
        }
        /* the same random rows, quantized into the layout */
        void *rows = alloc_on(be, (size_t)n * 2);
        fill_random(be, rows, dt, n, seed + 1 + (uint64_t)v, -1, 1);
        hae_kv_write_args w = {.src = hae_tensor_4d(rows, dt, dev, B, cap, s->Hkv, D),
                               .cache = hae_tensor_4d(v ? p->vc : p->kc, HAE_FP8_E4M3, dev, B, cap, s->Hkv,
                                                      s->mla ? HAE_MLA_FP8_ROW : HAE_FP8_HEAD(D))};
        CHECK("kv_write (fp8)", hae_kv_write(be, &w));
        CHECK("sync", hae_backend_sync(be));
        hae_backend_free(be, rows);
    }
    int32_t *idx = make_indices(s, seed + 3), *lens = malloc(sizeof(int32_t) * (size_t)B);
    for (int64_t b = 0; b < B; b++) lens[b] = (int32_t)cap;
    CHECK("upload", hae_backend_upload(be, p->idx, idx, (size_t)ni * 4));
    CHECK("upload", hae_backend_upload(be, p->lens, lens, (size_t)B * 4));
    /* outputs poisoned (0xFF: NaN), so a row the kernel skips shows */
    const size_t ob = (size_t)no * 2, eb = (size_t)(B * T * s->Hq) * 4;
    void *poison = malloc(ob > eb ? ob : eb);
    if (!poison) {
        fprintf(stderr, "bench_sparse: out of host memory\n");
        exit(1);
    }
    memset(poison, 0xFF, ob > eb ? ob : eb);
    CHECK("upload", hae_backend_upload(be, p->out, poison, ob));
    CHECK("upload", hae_backend_upload(be, p->lse, poison, eb));
    CHECK("sync", hae_backend_sync(be));
    free(poison), free(idx), free(lens);
    hae_sparse_attention_args *a = &p->a;
    a->q = hae_tensor_4d(p->q, dt, dev, B, T, s->Hq, s->Dk);
    const hae_dtype kt = s->fp8 ? HAE_FP8_E4M3 : dt;
    a->k_cache = s->fp8 && s->mla ? hae_tensor_4d(p->kc, kt, dev, B, cap, 1, HAE_MLA_FP8_ROW)
                 : s->fp8         ? hae_tensor_4d(p->kc, kt, dev, B, cap, s->Hkv, HAE_FP8_HEAD(s->Dk))
                                  : hae_tensor_4d(p->kc, dt, dev, B, cap, s->Hkv, s->Dk);
    if (s->mla) { /* the first Dv dims (bytes with fp8) of each latent slot */
        a->v_cache = hae_tensor_4d(p->kc, kt, dev, B, cap, s->Hkv, s->Dv);
        a->v_cache.stride[0] = a->k_cache.stride[0];
        a->v_cache.stride[1] = a->k_cache.stride[1];
    } else {
        a->v_cache = hae_tensor_4d(p->vc, kt, dev, B, cap, s->Hkv, s->fp8 ? HAE_FP8_HEAD(s->Dv) : s->Dv);
    }
    a->idx = hae_tensor_3d(p->idx, HAE_I32, dev, B, T, s->k);
    a->seq_lens = hae_tensor_1d(p->lens, HAE_I32, dev, B);
    a->out = hae_tensor_4d(p->out, dt, dev, B, T, s->Hq, s->Dv);
    a->lse = hae_tensor_3d(p->lse, HAE_F32, dev, B, T, s->Hq);
    a->scale = 1.0f / sqrtf((float)s->Dk);
}

static void problem_free(problem *p) {
    void *ptrs[] = {p->q, p->kc, p->vc == p->kc ? NULL : p->vc, p->idx, p->lens, p->out, p->lse};
    for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++) hae_backend_free(p->be, ptrs[i]);
}

/* ||x - ref|| / ||ref|| of n values; a NaN or Inf on one side only counts as failure. */
static double rel_rms(const void *x, const void *ref, hae_dtype dt, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        const double a = hae_load_f(x, dt, i), b = hae_load_f(ref, dt, i);
        if (isinf(a) && isinf(b) && (a > 0) == (b > 0)) continue;
        if (!isfinite(a) || !isfinite(b)) return INFINITY;
        num += (a - b) * (a - b);
        den += b * b;
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* The GPU against the CPU reference at the shape s with B and T reduced as given. */
static void verify(const shape *full, int64_t B, int64_t T, int64_t context) {
    if (!hae_bench_checked(full->name)) return;
    shape s = *full;
    s.B = B, s.T = T, s.context = context;
    problem gp, cp;
    problem_make(&gp, g_be, &s, 91);
    problem_make(&cp, g_cpu, &s, 91);
    CHECK(s.name, hae_sparse_attention(g_be, &gp.a));
    CHECK(s.name, hae_sparse_attention(g_cpu, &cp.a));
    const int64_t no = B * T * s.Hq * s.Dv, ne = B * T * s.Hq;
    void *go = malloc((size_t)no * 2), *ge = malloc((size_t)ne * 4);
    CHECK("download", hae_backend_download(g_be, go, gp.out, (size_t)no * 2));
    CHECK("download", hae_backend_download(g_be, ge, gp.lse, (size_t)ne * 4));
    CHECK("sync", hae_backend_sync(g_be));
    const double eo = rel_rms(go, cp.out, HAE_BF16, no), ee = rel_rms(ge, cp.lse, HAE_F32, ne);
    const bool ok = eo <= 1e-2 && ee <= 1e-5;
    printf("# check %-12s B %lld T %lld context %lld Hq %lld Hkv %lld Dk %lld Dv %lld k %lld: out rel %.2e, lse rel "
           "%.2e: %s\n",
           s.name, (long long)B, (long long)T, (long long)context, (long long)s.Hq, (long long)s.Hkv, (long long)s.Dk,
           (long long)s.Dv, (long long)s.k, eo, ee, ok ? "ok" : "FAIL");
    fflush(stdout);
    free(go), free(ge);
    problem_free(&gp), problem_free(&cp);
    if (!ok) {
        fprintf(stderr, "bench_sparse: %s does not match the CPU reference; not timing it\n", s.name);
        exit(1);
    }
}

static hae_status run_sparse(void *a) { return hae_sparse_attention(g_be, a); }

/* Times one shape and prints a row; decode rows compare time, prefill rows TFLOP/s. */
static void bench(const shape *s, bool decode) {
    if (!hae_bench_selected(s->name)) return;
    problem p;
    problem_make(&p, g_be, s, 5);
    const hae_bench_times tm = hae_bench_time(g_timer, g_be, s->name, run_sparse, &p.a, WARMUP, REPS);
    const double med_us = tm.median_us, med_s = med_us * 1e-6;
    const double queries = (double)(s->B * s->T);
    const double flops = 2.0 * (double)s->Hq * (double)s->k * (double)(s->Dk + s->Dv) * queries;
    const double row_bytes = s->fp8 && s->mla ? HAE_MLA_FP8_ROW
                             : s->fp8         ? (double)(HAE_FP8_HEAD(s->Dk) + HAE_FP8_HEAD(s->Dv))
                                              : 2.0 * (double)(s->mla ? s->Dk : s->Dk + s->Dv);
    const double bytes = queries * ((double)s->Hkv * (double)s->k * row_bytes +
                                    (double)s->Hq * (2.0 * (double)(s->Dk + s->Dv) + 4.0));
    const double tf = flops / med_s * 1e-12;
    char peer[40] = "-", target[40] = "-";
    if (s->mla && decode && s->Hq == 128) { /* the peers' shapes */
        snprintf(peer, sizeof peer, "%.2fx of %.1f us", FLASHMLA_DECODE_US / med_us, FLASHMLA_DECODE_US);
        snprintf(target, sizeof target, "%s (<= %.0f us)", med_us <= TARGET_DECODE_US ? "met" : "missed",
                 TARGET_DECODE_US);
    } else if (s->mla && s->Hq == 128) {
        snprintf(peer, sizeof peer, "%.2f-%.2fx of %.0f-%.0f TF", tf / FLASHMLA_PREFILL_TF_HI,
                 tf / FLASHMLA_PREFILL_TF_LO, FLASHMLA_PREFILL_TF_LO, FLASHMLA_PREFILL_TF_HI);
        snprintf(target, sizeof target, "%s (>= %.0f TF)", tf >= TARGET_PREFILL_TF ? "met" : "missed",
                 TARGET_PREFILL_TF);
    }
    char shp[112];
    snprintf(shp, sizeof shp, "B %lld T %lld ctx %lld Hq %lld Hkv %lld D %lld/%lld k %lld", (long long)s->B,
             (long long)s->T, (long long)s->context, (long long)s->Hq, (long long)s->Hkv, (long long)s->Dk,
             (long long)s->Dv, (long long)s->k);
    printf("| %-12s | %-56s | %10.1f | %9.1f..%-9.1f | %7.1f | %7.0f | %-24s | %-20s |\n", s->name, shp, med_us,
           tm.min_us, tm.max_us, tf, bytes / med_s * 1e-9, peer, target);
    fflush(stdout);
    problem_free(&p);
}

static int bench_main(void) {
    if (!hae_bench_start("bench_sparse", &g_be, &g_cpu, &g_timer)) return 0;
    printf("# bf16 q, caches and out, f32 lse; indices: k distinct random positions <= each query's\n");

    const shape mla_dec = {"mla decode", 64, 1, 128, 1, 576, 512, 65536, 2048, true, false};
    const shape mla_pre = {"mla prefill", 1, 4096, 128, 1, 576, 512, 65536, 2048, true, false};
    const shape fp8_dec = {"mla fp8 dec", 64, 1, 128, 1, 576, 512, 65536, 2048, true, true};
    const shape fp8_pre = {"mla fp8 pre", 1, 4096, 128, 1, 576, 512, 65536, 2048, true, true};
    /* hybrid-1b's mla form: 16 heads, so the FP8 kernel's 64-row MMAs are a quarter used */
    const shape m16_dec = {"mla16 dec", 64, 1, 16, 1, 576, 512, 65536, 2048, true, false};
    const shape m16_fp8_dec = {"mla16 fp8 dec", 64, 1, 16, 1, 576, 512, 65536, 2048, true, true};
    const shape m16_pre = {"mla16 pre", 1, 4096, 16, 1, 576, 512, 65536, 2048, true, false};
    const shape m16_fp8_pre = {"mla16 fp8 pre", 1, 4096, 16, 1, 576, 512, 65536, 2048, true, true};
    const shape gqa_dec = {"gqa decode", 64, 1, 32, 8, 128, 128, 32768, 2048, false, false};
    const shape gqa_pre = {"gqa prefill", 1, 4096, 32, 8, 128, 128, 32768, 2048, false, false};
    const shape gqa_fp8_dec = {"gqa fp8 dec", 64, 1, 32, 8, 128, 128, 32768, 2048, false, true};
    const shape gqa_fp8_pre = {"gqa fp8 pre", 1, 4096, 32, 8, 128, 128, 32768, 2048, false, true};
    /* hybrid-1b's gqa form: 16 q heads, 4 kv heads */
    const shape g16_dec = {"gqa16 dec", 64, 1, 16, 4, 128, 128, 32768, 2048, false, false};
    const shape g16_fp8_dec = {"gqa16 fp8 dec", 64, 1, 16, 4, 128, 128, 32768, 2048, false, true};
    verify(&mla_dec, 2, 1, 4096);  /* split over idx */
    verify(&mla_pre, 1, 70, 4096); /* one range per CTA, as timed */
    verify(&fp8_dec, 2, 1, 4096);
    verify(&fp8_pre, 1, 70, 4096);
    verify(&m16_fp8_dec, 2, 1, 4096);
    verify(&m16_fp8_pre, 1, 40, 4096);
    verify(&gqa_dec, 4, 1, 4096);
    verify(&gqa_pre, 1, 64, 4096);
    verify(&gqa_fp8_dec, 4, 1, 4096);
    verify(&gqa_fp8_pre, 1, 64, 4096);
    verify(&g16_fp8_dec, 4, 1, 4096);

    printf("# %d warm-up calls, then %d calls each timed alone after an L2 flush; rates from the median\n\n", WARMUP,
           REPS);
    printf("| %-12s | %-56s | %10s | %-20s | %7s | %7s | %-24s | %-20s |\n", "op", "shape", "median us", "min..max us",
           "TFLOP/s", "GB/s", "vs FlashMLA (H100)", "target (H200)");
    printf("|--------------|----------------------------------------------------------|------------|-------------------"
           "---|---------|---------|--------------------------|----------------------|\n");
    bench(&mla_dec, true);
    bench(&mla_pre, false);
    bench(&fp8_dec, true);
    bench(&fp8_pre, false);
    bench(&m16_dec, true);
    bench(&m16_fp8_dec, true);
    bench(&m16_pre, false);
    bench(&m16_fp8_pre, false);
    bench(&gqa_dec, true);
    bench(&gqa_pre, false);
    bench(&gqa_fp8_dec, true);
    bench(&gqa_fp8_pre, false);
    bench(&g16_dec, true);
    bench(&g16_fp8_dec, true);
    hae_cuda_timer_destroy(g_timer);
    hae_backend_destroy(g_cpu);
    hae_backend_destroy(g_be);
    return 0;
}

#endif

HAE_BENCH_MAIN("bench_sparse")

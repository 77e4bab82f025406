/* CUDA microbenchmarks of the linear family against flash-linear-attention's anchors: KDA prefill
 * (chunk 64, bf16, H 32, K = V = 128, safe gate lower_bound -5, delta, L2 map) at B 1 T 8192,
 * B 1 T 32768 and B 8 T 4096 (and B 64 T 512: as many tokens in short sequences, no anchor), and with
 * f32 inputs (the 3xTF32 path) at B 1 T 8192; KDA decode of one token (chunk 0) at B 1 and B 256 with an
 * fp32 state [B, 32, 128, 128]; GDN prefill at B 1 T 8192.
 * Each kernel is first checked against the CPU reference (recurrent form) on random inputs of the same
 * H, K, V at a reduced T; then timed: fresh random inputs, warm-up, >= 20 repetitions each alone with
 * CUDA events after an L2 flush, median and min..max. Without CUDA or a GPU it says so and exits 0.
 * HAE_BENCH_ONLY="kda prefill B 1 T 8192" times that row alone (with its op's checks).
 *
 * FLOPs counted for the chunked form, per chunk of C tokens and value head (multiply-adds x 2):
 *   A' and P (lower triangles)              C^2 K
 *   forward substitution for w and u0       C^2 (K + V) / 2
 *   U = u0 - w S0, S update, O = q S0       3 C K V
 *   O += P U (lower triangle)               C^2 V / 2
 * Decode GB/s counts the state read and written plus q, k, v, g, beta and out once. */
#include "internal.h"

#include "bench_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef HAE_HAVE_CUDA

#define WARMUP 3
#define REPS 21

/* flash-linear-attention (commit bc3b101d) on the same GPU kind: measured 2026-12-02 on an NVIDIA H200 with
 * bench/peer_fla_kda.py in the same call as this benchmark (microseconds; bench/RESULTS.md). Its T 8192
 * prefill and B 1 decode have moved by up to 1.7x between runs on other days (1665.5 / 1358.8 us, 146.9 /
 * 106.3 us): the ratios printed hold for this run. */
#define PEER_CHUNK_KDA_B1_T8192_US 974.5
#define PEER_CHUNK_KDA_B1_T32768_US 3734.5
#define PEER_CHUNK_KDA_B8_T4096_US 3664.1
#define PEER_RECURRENT_KDA_B1_US 71.7
#define PEER_RECURRENT_KDA_B256_US 392.9
/* Device-to-device copy on the same H200 (bench/RESULTS.md), bytes read + written. */
#define COPY_CEILING_GBS 4250.0


static hae_backend *g_be, *g_cpu;
static hae_cuda_timer *g_timer;

/* n random values of dt in [lo, hi) into host memory (deterministic from seed). */
static void *host_random(hae_dtype dt, int64_t n, uint64_t seed, float lo, float hi) {
    void *h = malloc((size_t)n * hae_dtype_size(dt) + 1);
    if (!h) {
        fprintf(stderr, "bench_linear: out of host memory\n");
        exit(1);
    }
    for (int64_t i = 0; i < n; i++) {
        float u = (float)(hae_mix64(seed * 0x100000001ull + (uint64_t)i) >> 40) * (1.0f / 16777216.0f);
        hae_store_f(h, dt, i, lo + (hi - lo) * u);
    }
    return h;
}

static void *to_device(hae_backend *be, const void *h, size_t bytes) {
    void *d = NULL;
    CHECK("alloc", hae_backend_alloc(be, bytes ? bytes : 1, &d));
    if (bytes) CHECK("upload", hae_backend_upload(be, d, h, bytes));
    return d;
}

/* One problem's inputs on one backend. */
typedef struct {
    hae_backend *be;
    void *q, *k, *v, *g, *beta, *alog, *dtb, *state, *out, *ws;
    hae_linear_attn_args a;
} problem;

static void problem_make(problem *p, hae_backend *be, hae_dtype dt, int64_t B, int64_t T, int64_t H, int64_t K,
                         int64_t V, hae_decay decay, int chunk, uint64_t seed) {
    memset(p, 0, sizeof *p);
    p->be = be;
    const hae_device dev = hae_backend_device(be);
    const bool ch = decay == HAE_DECAY_CHANNEL;
    const int64_t nq = B * T * H * K, nv = B * T * H * V, ng = ch ? nq : B * T * H, nb = B * T * H;
    const int64_t ns = B * H * K * V;
    struct {
        void **dst;
        hae_dtype dt;
        int64_t n;
        float lo, hi;
    } bufs[] = {
        {&p->q, dt, nq, -1, 1},          {&p->k, dt, nq, -1, 1},       {&p->v, dt, nv, -1, 1},
        {&p->g, dt, ng, -2, 2},          {&p->beta, dt, nb, -3, 3},    {&p->alog, HAE_F32, H, -3, 0.5f},
        {&p->dtb, HAE_F32, ch ? H * K : H, -0.5f, 0.5f}, {&p->state, HAE_F32, ns, -0.5f, 0.5f},
    };
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        void *h = host_random(bufs[i].dt, bufs[i].n, seed + i, bufs[i].lo, bufs[i].hi);
        *bufs[i].dst = to_device(be, h, (size_t)bufs[i].n * hae_dtype_size(bufs[i].dt));
        free(h);
    }
    CHECK("alloc out", hae_backend_alloc(be, (size_t)nv * hae_dtype_size(dt), &p->out));
    hae_linear_attn_args *a = &p->a;
    a->q = hae_tensor_4d(p->q, dt, dev, B, T, H, K);
    a->k = hae_tensor_4d(p->k, dt, dev, B, T, H, K);
    a->v = hae_tensor_4d(p->v, dt, dev, B, T, H, V);
    a->g = ch ? hae_tensor_4d(p->g, dt, dev, B, T, H, K) : hae_tensor_3d(p->g, dt, dev, B, T, H);
    a->beta = hae_tensor_3d(p->beta, dt, dev, B, T, H);
    a->A_log = hae_tensor_1d(p->alog, HAE_F32, dev, H);
    a->dt_bias = hae_tensor_1d(p->dtb, HAE_F32, dev, ch ? H * K : H);
    a->state = hae_tensor_4d(p->state, HAE_F32, dev, B, H, K, V);
    a->out = hae_tensor_4d(p->out, dt, dev, B, T, H, V);
    a->cu_seqlens = hae_tensor_1d(NULL, HAE_I32, dev, B + 1);
    a->decay = decay;
    a->delta = true;
    a->gate = HAE_GATE_SAFE;
    a->lower_bound = -5.0f;
    a->qk_map = HAE_QK_L2;
    a->scale = 1.0f / sqrtf((float)K);
    a->chunk = chunk;
    size_t wsb = 0;
    CHECK("workspace", hae_linear_attn_workspace(be, a, &wsb));
    if (wsb) CHECK("alloc workspace", hae_backend_alloc(be, wsb, &p->ws));
    a->workspace = p->ws;
    a->workspace_bytes = wsb;
}

static void problem_free(problem *p) {
    void *ptrs[] = {p->q, p->k, p->v, p->g, p->beta, p->alog, p->dtb, p->state, p->out, p->ws};
    for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++) hae_backend_free(p->be, ptrs[i]);
}

/* Relative RMS difference of n values (dtype dt) on the host; NaN anywhere counts as failure. */
static double rel_rms(const void *x, const void *ref, hae_dtype dt, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double a = hae_load_f(x, dt, i), b = hae_load_f(ref, dt, i);
        if (!isfinite(a) || !isfinite(b)) return INFINITY;
        num += (a - b) * (a - b);
        den += b * b;
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* The GPU kernel (chunk as given) against the CPU recurrent form on the same inputs (dtype dt in and out). */
static void verify(const char *name, hae_dtype dt, int64_t B, int64_t T, int64_t H, int64_t K, int64_t V,
                   hae_decay decay, int chunk) {
    if (!hae_bench_checked(name)) return;
    problem gp, cp;
    problem_make(&gp, g_be, dt, B, T, H, K, V, decay, chunk, 77);
    problem_make(&cp, g_cpu, dt, B, T, H, K, V, decay, 0, 77);
    CHECK(name, hae_linear_attn(g_be, &gp.a));
    CHECK(name, hae_linear_attn(g_cpu, &cp.a));
    const int64_t no = B * T * H * V, ns = B * H * K * V;
    const size_t eo_sz = hae_dtype_size(dt);
    void *go = malloc((size_t)no * eo_sz), *gs = malloc((size_t)ns * 4);
    CHECK("download", hae_backend_download(g_be, go, gp.out, (size_t)no * eo_sz));
    CHECK("download", hae_backend_download(g_be, gs, gp.state, (size_t)ns * 4));
    CHECK("sync", hae_backend_sync(g_be));
    const double eo = rel_rms(go, cp.out, dt, no), es = rel_rms(gs, cp.state, HAE_F32, ns);
    /* tests/gpu_linear.c's tolerances: bf16 chunked multiplies bf16 operands (fp32 accumulation), f32
     * chunked runs 3xTF32 */
    const bool bf = dt == HAE_BF16;
    const double to = chunk ? (bf ? 5e-3 : 1e-4) : (bf ? 2e-3 : 2e-5), ts = chunk ? (bf ? 5e-3 : 1e-4) : 1e-4;
    const bool ok = eo <= to && es <= ts;
    printf("# check %-28s B %lld T %lld H %lld K %lld V %lld chunk %d: out rel %.2e, state rel %.2e: %s\n", name,
           (long long)B, (long long)T, (long long)H, (long long)K, (long long)V, chunk, eo, es, ok ? "ok" : "FAIL");
    free(go), free(gs);
    problem_free(&gp), problem_free(&cp);
    if (!ok) {
        fprintf(stderr, "bench_linear: %s does not match the CPU reference; not timing it\n", name);
        exit(1);
    }
}

static hae_status run_linear(void *a) { return hae_linear_attn(g_be, a); }

/* Times one problem and prints a row. peer_us / copy: the ratios' references (0: none). */
static void bench(const char *name, hae_dtype dt, int64_t B, int64_t T, int64_t H, int64_t K, int64_t V,
                  hae_decay decay, int chunk, double peer_us) {
    char label[96];
    snprintf(label, sizeof label, "%s B %lld T %lld", name, (long long)B, (long long)T);
    if (!hae_bench_selected(label)) return;
    problem p;
    problem_make(&p, g_be, dt, B, T, H, K, V, decay, chunk, 5);
    const hae_bench_times tm = hae_bench_time(g_timer, g_be, name, run_linear, &p.a, WARMUP, REPS);
    const double med_us = tm.median_us, med_s = med_us * 1e-6;
    const double tokens = (double)(B * T);
    char tf[32] = "-", gb[32] = "-", peer[32] = "-", ceil_s[32] = "-";
    if (chunk > 0) {
        const double C = chunk, chunks = ceil((double)T / C) * (double)B * (double)H;
        const double mac = C * C * K + C * C * (K + V) / 2.0 + 3.0 * C * K * V + C * C * V / 2.0;
        snprintf(tf, sizeof tf, "%.1f", 2.0 * mac * chunks / med_s * 1e-12);
    } else {
        const bool ch = decay == HAE_DECAY_CHANNEL;
        const double bytes = 2.0 * 4.0 * (double)(B * H * K * V) +
                             (double)hae_dtype_size(dt) * tokens * (double)H * (2.0 * K + 2.0 * V + (ch ? K : 1) + 1);
        const double gbs = bytes / med_s * 1e-9;
        snprintf(gb, sizeof gb, "%.0f", gbs);
        snprintf(ceil_s, sizeof ceil_s, "%.0f%%", 100.0 * gbs / COPY_CEILING_GBS);
    }
    if (peer_us > 0) snprintf(peer, sizeof peer, "%.2fx", peer_us / med_us);
    char shape[96];
    snprintf(shape, sizeof shape, "B %lld T %lld H %lld K %lld V %lld C %d", (long long)B, (long long)T, (long long)H,
             (long long)K, (long long)V, chunk);
    printf("| %-16s | %-36s | %10.1f | %9.1f..%-9.1f | %12.0f | %7s | %7s | %10s | %9s |\n", name, shape, med_us,
           tm.min_us, tm.max_us, tokens / med_s, tf, gb, peer, ceil_s);
    fflush(stdout);
    problem_free(&p);
}

static int bench_main(void) {
    if (!hae_bench_start("bench_linear", &g_be, &g_cpu, &g_timer)) return 0;
    printf("# bf16 inputs (f32 rows: f32 in and out), fp32 state, safe gate lower_bound -5, delta rule, L2 q/k map\n");
    const hae_dtype BF = HAE_BF16, F32 = HAE_F32;
    verify("kda prefill", BF, 1, 200, 32, 128, 128, HAE_DECAY_CHANNEL, 64);
    verify("kda prefill", BF, 2, 130, 32, 128, 128, HAE_DECAY_CHANNEL, 64);
    verify("gdn prefill", BF, 1, 200, 32, 128, 128, HAE_DECAY_HEAD, 64);
    verify("kda prefill f32", F32, 1, 200, 32, 128, 128, HAE_DECAY_CHANNEL, 64);
    verify("kda decode", BF, 1, 1, 32, 128, 128, HAE_DECAY_CHANNEL, 0);
    verify("kda decode", BF, 8, 1, 32, 128, 128, HAE_DECAY_CHANNEL, 0);
    printf("# %d warm-up calls, then %d calls each timed alone after an L2 flush; rates from the median\n\n", WARMUP,
           REPS);
    printf("| %-16s | %-36s | %10s | %-20s | %12s | %7s | %7s | %10s | %9s |\n", "op", "shape", "median us",
           "min..max us", "tokens/s", "TFLOP/s", "GB/s", "vs FLA", "vs copy");
    printf("|------------------|--------------------------------------|------------|----------------------|-------------"
           "-|---------|---------|------------|-----------|\n");
    bench("kda prefill", BF, 1, 8192, 32, 128, 128, HAE_DECAY_CHANNEL, 64, PEER_CHUNK_KDA_B1_T8192_US);
    bench("kda prefill", BF, 1, 32768, 32, 128, 128, HAE_DECAY_CHANNEL, 64, PEER_CHUNK_KDA_B1_T32768_US);
    bench("kda prefill", BF, 8, 4096, 32, 128, 128, HAE_DECAY_CHANNEL, 64, PEER_CHUNK_KDA_B8_T4096_US);
    bench("kda prefill", BF, 64, 512, 32, 128, 128, HAE_DECAY_CHANNEL, 64, 0); /* many short sequences */
    bench("gdn prefill", BF, 1, 8192, 32, 128, 128, HAE_DECAY_HEAD, 64, 0);
    bench("kda prefill f32", F32, 1, 8192, 32, 128, 128, HAE_DECAY_CHANNEL, 64, 0);
    bench("kda decode", BF, 1, 1, 32, 128, 128, HAE_DECAY_CHANNEL, 0, PEER_RECURRENT_KDA_B1_US);
    bench("kda decode", BF, 256, 1, 32, 128, 128, HAE_DECAY_CHANNEL, 0, PEER_RECURRENT_KDA_B256_US);
    hae_cuda_timer_destroy(g_timer);
    hae_backend_destroy(g_cpu);
    hae_backend_destroy(g_be);
    return 0;
}

#endif

HAE_BENCH_MAIN("bench_linear")

/* The linear-attention family (linear/) on the CPU against a float64 per-token oracle written here
 * from hae.h's contract, independently of the implementation: every kind and gate, the chunked form
 * against the oracle and the recurrent form, extreme gates (the chunked form may only take
 * exponentials of in-chunk gate differences), identities between the kinds, the delta rule's
 * capacity, state carried over calls, varlen packing, strided views, the short conv, the gated
 * norm, and the argument checks. */
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static hae_backend *be;
static void setup(void) { be = tu_cpu(); }
static void teardown(void) { hae_backend_destroy(be); }
TestSuite(linear, .init = setup, .fini = teardown);

/* ---------------------------------------------------------------- cases, data, oracle */

typedef struct {
    const char *name;
    hae_decay decay;
    bool delta;
    hae_qk_map map;
} lin_kind;

enum { KDA, GDN, DELTANET, GLA, MAMBA2, RETNET, LINEAR, N_KINDS };
static const lin_kind KINDS[N_KINDS] = {
    [KDA] = {"kda", HAE_DECAY_CHANNEL, true, HAE_QK_L2},
    [GDN] = {"gdn", HAE_DECAY_HEAD, true, HAE_QK_L2},
    [DELTANET] = {"deltanet", HAE_DECAY_NONE, true, HAE_QK_L2},
    [GLA] = {"gla", HAE_DECAY_CHANNEL, false, HAE_QK_L2},
    [MAMBA2] = {"mamba2", HAE_DECAY_HEAD, false, HAE_QK_L2},
    [RETNET] = {"retnet", HAE_DECAY_FIXED, false, HAE_QK_L2},
    [LINEAR] = {"linear", HAE_DECAY_NONE, false, HAE_QK_ELU1},
};

typedef struct {
    lin_kind kind;
    int64_t B, T, H, HV, K, V;
    hae_dtype dt, gdt, odt; /* q/k/v; g and beta; out */
    hae_gate_fn gate;
    float lower_bound;
    float scale;
    int chunk;
    int64_t N;          /* sequences in the state: B, or the packed count */
    const int32_t *cu;  /* N + 1 packed offsets (B = 1), or NULL */
} lin_case;

static lin_case mk_case(int kind, int64_t B, int64_t T, int64_t H, int64_t HV, int64_t K, int64_t V) {
    return (lin_case){.kind = KINDS[kind], .B = B, .T = T, .H = H, .HV = HV, .K = K, .V = V, .dt = HAE_F32,
                      .gdt = HAE_F32, .odt = HAE_F32, .gate = HAE_GATE_SOFTPLUS, .lower_bound = -5.0f,
                      .scale = 1.0f / sqrtf((float)K), .chunk = 0, .N = B, .cu = NULL};
}

static const char *desc(const lin_case *c, char *buf, size_t n) {
    char gate[48] = "";
    if (c->kind.decay == HAE_DECAY_CHANNEL || c->kind.decay == HAE_DECAY_HEAD) {
        if (c->gate == HAE_GATE_SAFE) snprintf(gate, sizeof gate, " gate safe lb %g", (double)c->lower_bound);
        else snprintf(gate, sizeof gate, " gate softplus");
    }
    snprintf(buf, n, "%s (decay %d delta %d map %s) B=%lld T=%lld H=%lld HV=%lld K=%lld V=%lld qkv %s g/beta %s out %s%s "
             "scale %g chunk %d%s N=%lld",
             c->kind.name, (int)c->kind.decay, (int)c->kind.delta, c->kind.map == HAE_QK_L2 ? "l2" : "elu+1",
             (long long)c->B, (long long)c->T, (long long)c->H, (long long)c->HV, (long long)c->K, (long long)c->V,
             hae_dtype_name(c->dt), hae_dtype_name(c->gdt), hae_dtype_name(c->odt), gate, (double)c->scale, c->chunk,
             c->cu ? " varlen" : "", (long long)c->N);
    return buf;
}

static int64_t gsz(const lin_case *c) { return c->kind.decay == HAE_DECAY_CHANNEL ? c->K : 1; }
static int64_t n_qk(const lin_case *c) { return c->B * c->T * c->H * c->K; }
static int64_t n_v(const lin_case *c) { return c->B * c->T * c->HV * c->V; }
static int64_t n_g(const lin_case *c) { return c->B * c->T * c->HV * gsz(c); }
static int64_t n_b(const lin_case *c) { return c->B * c->T * c->HV; }
static int64_t n_state(const lin_case *c) { return c->N * c->HV * c->K * c->V; }
static size_t out_bytes(const lin_case *c) { return (size_t)n_v(c) * hae_dtype_size(c->odt); }
static size_t state_bytes(const lin_case *c) { return (size_t)n_state(c) * sizeof(float); }

/* Host inputs of one case, contiguous. g holds [B, T, HV, K] for channel decay, [B, T, HV] else. */
typedef struct {
    void *q, *k, *v, *g, *beta;
    float *A_log, *dt_bias, *state0;
} lin_data;

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    cr_assert(p, "out of memory (%zu bytes)", n);
    return p;
}

static void fill_f32(float *p, int64_t n, tu_rng *r, double lo, double hi) { tu_fill(p, HAE_F32, n, r, lo, hi); }

/* Raw gates, A_log and dt_bias in ranges that keep a memory of a few to tens of tokens. */
static void fill_gates(const lin_case *c, lin_data *d, tu_rng *r) {
    bool safe = c->gate == HAE_GATE_SAFE;
    if (c->kind.decay == HAE_DECAY_FIXED) {
        fill_f32(d->A_log, c->HV, r, -4.0, -1.0); /* gamma in (0.69, 0.98) */
        return;
    }
    tu_fill(d->g, c->gdt, n_g(c), r, safe ? -6.0 : -4.0, safe ? 1.0 : 3.0);
    fill_f32(d->A_log, c->HV, r, safe ? -0.5 : -1.5, safe ? 0.5 : -0.5);
    fill_f32(d->dt_bias, c->HV * gsz(c), r, -0.5, 0.5);
}

static lin_data lin_make(const lin_case *c, uint64_t seed) {
    tu_rng r = tu_rng_make(seed);
    lin_data d;
    size_t es = hae_dtype_size(c->dt), gs = hae_dtype_size(c->gdt);
    d.q = xmalloc((size_t)n_qk(c) * es);
    d.k = xmalloc((size_t)n_qk(c) * es);
    d.v = xmalloc((size_t)n_v(c) * es);
    d.g = xmalloc((size_t)(c->B * c->T * c->HV * c->K) * gs);
    d.beta = xmalloc((size_t)n_b(c) * gs);
    d.A_log = xmalloc(sizeof(float) * (size_t)c->HV);
    d.dt_bias = xmalloc(sizeof(float) * (size_t)(c->HV * c->K));
    d.state0 = xmalloc(state_bytes(c));
    tu_fill(d.q, c->dt, n_qk(c), &r, -1.0, 1.0);
    tu_fill(d.k, c->dt, n_qk(c), &r, -1.0, 1.0);
    tu_fill(d.v, c->dt, n_v(c), &r, -1.0, 1.0);
    tu_fill(d.beta, c->gdt, n_b(c), &r, -2.0, 3.0);
    fill_f32(d.state0, n_state(c), &r, -0.5, 0.5);
    fill_f32(d.A_log, c->HV, &r, -1.0, 0.0);
    fill_f32(d.dt_bias, c->HV * c->K, &r, -0.5, 0.5);
    tu_fill(d.g, c->gdt, c->B * c->T * c->HV * c->K, &r, -1.0, 1.0);
    fill_gates(c, &d, &r);
    return d;
}

static void lin_free(lin_data *d) {
    free(d->q), free(d->k), free(d->v), free(d->g), free(d->beta), free(d->A_log), free(d->dt_bias), free(d->state0);
}

/* Contiguous views of d for case c; arguments a kind does not use stay empty (data NULL). */
static hae_linear_attn_args lin_args(const lin_case *c, const lin_data *d, void *out, float *state) {
    hae_linear_attn_args a;
    memset(&a, 0, sizeof a);
    a.q = hae_tensor_4d(d->q, c->dt, HAE_CPU, c->B, c->T, c->H, c->K);
    a.k = hae_tensor_4d(d->k, c->dt, HAE_CPU, c->B, c->T, c->H, c->K);
    a.v = hae_tensor_4d(d->v, c->dt, HAE_CPU, c->B, c->T, c->HV, c->V);
    if (c->kind.decay == HAE_DECAY_CHANNEL) a.g = hae_tensor_4d(d->g, c->gdt, HAE_CPU, c->B, c->T, c->HV, c->K);
    if (c->kind.decay == HAE_DECAY_HEAD) a.g = hae_tensor_3d(d->g, c->gdt, HAE_CPU, c->B, c->T, c->HV);
    if (c->kind.delta) a.beta = hae_tensor_3d(d->beta, c->gdt, HAE_CPU, c->B, c->T, c->HV);
    if (c->kind.decay != HAE_DECAY_NONE) a.A_log = hae_tensor_1d(d->A_log, HAE_F32, HAE_CPU, c->HV);
    if (c->kind.decay == HAE_DECAY_CHANNEL || c->kind.decay == HAE_DECAY_HEAD)
        a.dt_bias = hae_tensor_1d(d->dt_bias, HAE_F32, HAE_CPU, c->HV * gsz(c));
    a.state = hae_tensor_4d(state, HAE_F32, HAE_CPU, c->N, c->HV, c->K, c->V);
    a.out = hae_tensor_4d(out, c->odt, HAE_CPU, c->B, c->T, c->HV, c->V);
    if (c->cu) a.cu_seqlens = hae_tensor_1d((void *)c->cu, HAE_I32, HAE_CPU, c->N + 1);
    a.decay = c->kind.decay;
    a.delta = c->kind.delta;
    a.gate = c->gate;
    a.lower_bound = c->lower_bound;
    a.qk_map = c->kind.map;
    a.scale = c->scale;
    a.chunk = c->chunk;
    return a;
}

/* The library on c: out is poisoned with NaN first, state starts from d->state0. */
static hae_status lin_run(const lin_case *c, const lin_data *d, void *out, float *state) {
    memset(out, 0xff, out_bytes(c));
    memcpy(state, d->state0, state_bytes(c));
    hae_linear_attn_args a = lin_args(c, d, out, state);
    return hae_linear_attn(be, &a);
}

static double sigm(double x) { return 1.0 / (1.0 + exp(-x)); }
static double softplus(double x) { return (x > 0 ? x : 0.0) + log1p(exp(-fabs(x))); }

static void qk_map(const void *p, hae_dtype dt, int64_t off, int64_t K, hae_qk_map map, double *o) {
    double ss = 0;
    for (int64_t i = 0; i < K; i++) {
        double x = tu_get(p, dt, off + i);
        o[i] = map == HAE_QK_L2 ? x : (x > 0 ? x + 1.0 : exp(x));
        ss += x * x;
    }
    if (map == HAE_QK_L2)
        for (int64_t i = 0; i < K; i++) o[i] /= sqrt(ss + 1e-6);
}

/* The header's recurrence, token by token in double: decay the rows of S, then the delta update (or
 * the plain write), then o = scale S^T q. out is [B, T, HV, V], state [N, HV, K, V] (final). If
 * gmin is given it receives the smallest cumulative log decay any channel reached. */
static void lin_oracle(const lin_case *c, const lin_data *d, double *out, double *state, double *gmin) {
    const int64_t T = c->T, H = c->H, HV = c->HV, K = c->K, V = c->V, G = HV / H, gs = gsz(c);
    double *qm = xmalloc(sizeof(double) * (size_t)K), *km = xmalloc(sizeof(double) * (size_t)K);
    double *u = xmalloc(sizeof(double) * (size_t)V), *cum = xmalloc(sizeof(double) * (size_t)K);
    for (int64_t i = 0; i < n_state(c); i++) state[i] = d->state0[i];
    if (gmin) *gmin = 0;
    for (int64_t n = 0; n < c->N; n++) {
        int64_t b = c->cu ? 0 : n, t0 = c->cu ? c->cu[n] : 0, t1 = c->cu ? c->cu[n + 1] : T;
        for (int64_t j = 0; j < HV; j++) {
            double *S = state + (n * HV + j) * K * V;
            int64_t h = j / G;
            double A = c->kind.decay != HAE_DECAY_NONE ? exp((double)d->A_log[j]) : 0.0;
            for (int64_t ch = 0; ch < K; ch++) cum[ch] = 0;
            for (int64_t t = t0; t < t1; t++) {
                int64_t row = b * T + t, vo = (row * HV + j) * V;
                qk_map(d->q, c->dt, (row * H + h) * K, K, c->kind.map, qm);
                qk_map(d->k, c->dt, (row * H + h) * K, K, c->kind.map, km);
                for (int64_t ch = 0; ch < K; ch++) {
                    double g = 0;
                    if (c->kind.decay == HAE_DECAY_FIXED) g = -A;
                    if (c->kind.decay == HAE_DECAY_CHANNEL || c->kind.decay == HAE_DECAY_HEAD) {
                        int64_t gi = c->kind.decay == HAE_DECAY_CHANNEL ? ch : 0;
                        double x = tu_get(d->g, c->gdt, (row * HV + j) * gs + gi) + (double)d->dt_bias[j * gs + gi];
                        g = c->gate == HAE_GATE_SOFTPLUS ? -A * softplus(x) : (double)c->lower_bound * sigm(A * x);
                    }
                    cum[ch] += g;
                    if (gmin && cum[ch] < *gmin) *gmin = cum[ch];
                    double e = exp(g);
                    for (int64_t x = 0; x < V; x++) S[ch * V + x] *= e;
                }
                if (c->kind.delta) {
                    double bt = sigm(tu_get(d->beta, c->gdt, row * HV + j));
                    for (int64_t x = 0; x < V; x++) {
                        double s = 0;
                        for (int64_t ch = 0; ch < K; ch++) s += S[ch * V + x] * km[ch];
                        u[x] = bt * (tu_get(d->v, c->dt, vo + x) - s);
                    }
                } else {
                    for (int64_t x = 0; x < V; x++) u[x] = tu_get(d->v, c->dt, vo + x);
                }
                for (int64_t ch = 0; ch < K; ch++)
                    for (int64_t x = 0; x < V; x++) S[ch * V + x] += km[ch] * u[x];
                for (int64_t x = 0; x < V; x++) {
                    double o = 0;
                    for (int64_t ch = 0; ch < K; ch++) o += S[ch * V + x] * qm[ch];
                    out[vo + x] = (double)c->scale * o;
                }
            }
        }
    }
    free(qm), free(km), free(u), free(cum);
}

/* ---------------------------------------------------------------- comparisons */

/* NaN/Inf positions first; then the error relative to the reference's scale: the RMS ratio
 * ||got - ref|| / ||ref|| and the largest element error over max |ref|. `why` gets the numbers
 * whether or not the check passes. */
static bool close_to(const void *got, hae_dtype dt, const double *ref, int64_t n, double rms_tol, double max_tol,
                     char *why, size_t wn) {
    double num = 0, den = 0, maxe = 0, maxr = 0;
    int64_t im = 0;
    for (int64_t i = 0; i < n; i++) {
        double g = tu_get(got, dt, i), r = ref[i];
        if (isfinite(g) != isfinite(r) || isnan(g) != isnan(r)) {
            snprintf(why, wn, "element %lld of %lld: got %g, reference %g (non-finite mismatch)", (long long)i,
                     (long long)n, g, r);
            return false;
        }
        if (!isfinite(r)) continue;
        double e = fabs(g - r);
        if (e > maxe) maxe = e, im = i;
        if (fabs(r) > maxr) maxr = fabs(r);
        num += e * e;
        den += r * r;
    }
    double rms = den > 0 ? sqrt(num / den) : sqrt(num), rel = maxr > 0 ? maxe / maxr : maxe;
    bool ok = rms <= rms_tol && rel <= max_tol;
    snprintf(why, wn,
             "%s: rms error %.3g (tol %.3g); max error %.3g at element %lld of %lld (got %.9g, ref %.9g) = %.3g of "
             "max |ref| %.4g (tol %.3g)",
             ok ? "ok" : "FAILED", rms, rms_tol, maxe, (long long)im, (long long)n, n ? tu_get(got, dt, im) : 0.0,
             n ? ref[im] : 0.0, rel, maxr, max_tol);
    return ok;
}

static double *to_double(const void *p, hae_dtype dt, int64_t n) {
    double *o = xmalloc(sizeof(double) * (size_t)n);
    for (int64_t i = 0; i < n; i++) o[i] = tu_get(p, dt, i);
    return o;
}

static double rms_tol(hae_dtype dt) { return dt == HAE_F32 ? 1e-5 : 4e-3; }
static double max_tol(hae_dtype dt) { return dt == HAE_F32 ? 5e-5 : 8e-3; }

/* Library output of c against a reference in double (out and state), with the case in the message. */
static bool expect_out_state(const lin_case *c, const char *what, const void *out, const float *state,
                             const double *ref_out, const double *ref_state, double rms_f32, double max_f32) {
    char why[512], dd[400];
    double rt = c->odt == HAE_F32 ? rms_f32 : rms_tol(c->odt), mt = c->odt == HAE_F32 ? max_f32 : max_tol(c->odt);
    bool ok1 = close_to(out, c->odt, ref_out, n_v(c), rt, mt, why, sizeof why);
    cr_expect(ok1, "%s, out: %s\n  case: %s", what, why, desc(c, dd, sizeof dd));
    bool ok2 = close_to(state, HAE_F32, ref_state, n_state(c), rms_f32, max_f32, why, sizeof why);
    cr_expect(ok2, "%s, final state: %s\n  case: %s", what, why, desc(c, dd, sizeof dd));
    return ok1 && ok2;
}

/* Runs c through the library and the oracle; checks output and final state; leaves the library's
 * results in out/state when those are given (caller frees). */
static bool check_vs_oracle(const lin_case *c, const lin_data *d, const char *what, void **out_keep,
                            float **state_keep) {
    void *out = xmalloc(out_bytes(c));
    float *state = xmalloc(state_bytes(c));
    double *ro = xmalloc(sizeof(double) * (size_t)n_v(c)), *rs = xmalloc(sizeof(double) * (size_t)n_state(c));
    char dd[400];
    hae_status st = lin_run(c, d, out, state);
    cr_assert_eq(st, HAE_OK, "%s: %s\n  case: %s", what, hae_last_error(), desc(c, dd, sizeof dd));
    lin_oracle(c, d, ro, rs, NULL);
    bool ok = expect_out_state(c, what, out, state, ro, rs, rms_tol(HAE_F32), max_tol(HAE_F32));
    free(ro), free(rs);
    if (out_keep) *out_keep = out;
    else free(out);
    if (state_keep) *state_keep = state;
    else free(state);
    return ok;
}

/* Two library runs of the same function (out of dtype dt and f32 states) agree. */
static bool expect_same(const lin_case *c, const char *what, const void *out_a, const float *st_a, const void *out_b,
                        const float *st_b, double rms_f32, double max_f32) {
    double *ro = to_double(out_b, c->odt, n_v(c)), *rs = to_double(st_b, HAE_F32, n_state(c));
    bool ok = expect_out_state(c, what, out_a, st_a, ro, rs, rms_f32, max_f32);
    free(ro), free(rs);
    return ok;
}

/* ---------------------------------------------------------------- 1. recurrent vs the oracle */

Test(linear, recurrent_vs_oracle_every_kind) {
    const int64_t shapes[][6] = {/* B, T, H, HV, K, V */
                                 {2, 37, 2, 4, 32, 48}, /* GVA 2, K != V, batch */
                                 {1, 20, 3, 3, 8, 16},
                                 {3, 9, 1, 4, 16, 8},
                                 {2, 13, 1, 2, 7, 5}}; /* odd head dims */
    const hae_dtype dts[][3] = {/* q/k/v, g/beta, out */
                                {HAE_F32, HAE_F32, HAE_F32},
                                {HAE_BF16, HAE_BF16, HAE_F32},
                                {HAE_BF16, HAE_F32, HAE_BF16},
                                {HAE_F32, HAE_BF16, HAE_BF16}};
    uint64_t seed = 1000;
    for (int s = 0; s < 4; s++)
        for (int kind = 0; kind < N_KINDS; kind++)
            for (int gate = 0; gate < 2; gate++)
                for (int t = 0; t < 4; t++) {
                    lin_case c = mk_case(kind, shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3], shapes[s][4],
                                         shapes[s][5]);
                    c.gate = gate ? HAE_GATE_SAFE : HAE_GATE_SOFTPLUS;
                    c.dt = dts[t][0], c.gdt = dts[t][1], c.odt = dts[t][2];
                    lin_data d = lin_make(&c, seed++);
                    check_vs_oracle(&c, &d, "recurrent vs oracle", NULL, NULL);
                    lin_free(&d);
                }
}

/* ---------------------------------------------------------------- 2. chunked vs oracle and recurrent */

static void chunked_case(lin_case c, uint64_t seed) {
    lin_data d = lin_make(&c, seed);
    void *out_c, *out_r;
    float *st_c, *st_r;
    check_vs_oracle(&c, &d, "chunked vs oracle", &out_c, &st_c);
    lin_case r = c;
    r.chunk = 0;
    out_r = xmalloc(out_bytes(&r));
    st_r = xmalloc(state_bytes(&r));
    cr_assert_eq(lin_run(&r, &d, out_r, st_r), HAE_OK, "%s", hae_last_error());
    expect_same(&c, "chunked vs recurrent", out_c, st_c, out_r, st_r, rms_tol(HAE_F32), max_tol(HAE_F32));
    free(out_c), free(st_c), free(out_r), free(st_r);
    lin_free(&d);
}

Test(linear, chunked_vs_oracle_and_recurrent) {
    const int chunks[] = {16, 32, 64, 128};
    uint64_t seed = 2000;
    for (int ci = 0; ci < 4; ci++) {
        int C = chunks[ci];
        const int64_t Ts[] = {1, C - 1, C, C + 1, 3 * C + 5};
        for (int ti = 0; ti < 5; ti++)
            for (int kind = 0; kind < N_KINDS; kind++) {
                lin_case c = mk_case(kind, 2, Ts[ti], 1, 2, 32, 24);
                c.gate = (kind + ti + ci) % 2 ? HAE_GATE_SAFE : HAE_GATE_SOFTPLUS;
                c.chunk = C;
                chunked_case(c, seed++);
            }
        /* GVA with bf16 inputs across chunk boundaries */
        for (int kind = 0; kind < N_KINDS; kind++) {
            lin_case c = mk_case(kind, 1, 2 * C + 3, 2, 4, 16, 32);
            c.dt = HAE_BF16, c.gdt = HAE_BF16;
            c.gate = (kind + ci) % 2 ? HAE_GATE_SOFTPLUS : HAE_GATE_SAFE;
            c.chunk = C;
            chunked_case(c, seed++);
        }
        /* odd head dims */
        for (int kind = 0; kind < N_KINDS; kind++) {
            lin_case c = mk_case(kind, 1, C + 7, 1, 3, 7, 5);
            c.gate = (kind + ci) % 2 ? HAE_GATE_SAFE : HAE_GATE_SOFTPLUS;
            c.chunk = C;
            chunked_case(c, seed++);
        }
    }
}

Test(linear, head_dims_256_with_chunk_128) {
    /* the largest head dims allowed with the largest chunk */
    const int kinds[] = {KDA, GLA};
    for (int ki = 0; ki < 2; ki++) {
        lin_case c = mk_case(kinds[ki], 1, 130, 1, 1, 256, 256);
        c.chunk = 128;
        chunked_case(c, 2900 + (uint64_t)ki);
    }
}

Test(linear, head_dim_one) {
    /* K = 1 (V = 1 and 3): a per-channel gate [B, T, HV, 1] has as many values as a per-head one */
    uint64_t seed = 2950;
    for (int kind = 0; kind < N_KINDS; kind++)
        for (int ci = 0; ci < 2; ci++)
            for (int64_t V = 1; V <= 3; V += 2) {
                lin_case c = mk_case(kind, 2, 40, 1, 2, 1, V);
                c.chunk = ci ? 16 : 0;
                c.gate = (kind + ci) % 2 ? HAE_GATE_SAFE : HAE_GATE_SOFTPLUS;
                if (c.chunk) chunked_case(c, seed++);
                else {
                    lin_data d = lin_make(&c, seed++);
                    check_vs_oracle(&c, &d, "recurrent vs oracle", NULL, NULL);
                    lin_free(&d);
                }
            }
}

/* ---------------------------------------------------------------- 3. extreme gates */

Test(linear, extreme_gates) {
    const int kinds[] = {KDA, GDN, GLA, MAMBA2};
    const int chunks[] = {0, 16, 64, 128};
    uint64_t seed = 3000;
    for (int ki = 0; ki < 4; ki++)
        for (int ci = 0; ci < 4; ci++) {
            /* safe gate saturated at its bound: about -5 per token */
            lin_case c = mk_case(kinds[ki], 1, 150, 1, 2, 16, 16);
            c.gate = HAE_GATE_SAFE, c.lower_bound = -5.0f, c.chunk = chunks[ci];
            lin_data d = lin_make(&c, seed++);
            tu_rng r = tu_rng_make(seed++);
            tu_fill(d.g, c.gdt, n_g(&c), &r, 2.0, 8.0);
            fill_f32(d.A_log, c.HV, &r, 0.4, 0.6);
            check_vs_oracle(&c, &d, "safe gate at lower_bound -5", NULL, NULL);
            /* safe gate with a tiny bound: almost no decay, long memory */
            c.lower_bound = -1e-3f;
            tu_fill(d.g, c.gdt, n_g(&c), &r, -6.0, 6.0);
            check_vs_oracle(&c, &d, "safe gate with lower_bound -1e-3", NULL, NULL);
            lin_free(&d);

            /* softplus of raw gates around +30: e^-30 per token, the state all but vanishes */
            c = mk_case(kinds[ki], 1, 150, 1, 2, 16, 16);
            c.gate = HAE_GATE_SOFTPLUS, c.chunk = chunks[ci];
            d = lin_make(&c, seed++);
            tu_fill(d.g, c.gdt, n_g(&c), &r, 28.0, 32.0);
            for (int64_t j = 0; j < c.HV; j++) d.A_log[j] = 0.0f;
            for (int64_t i = 0; i < c.HV * gsz(&c); i++) d.dt_bias[i] = 0.0f;
            check_vs_oracle(&c, &d, "softplus gate, raw gates ~ +30", NULL, NULL);
            lin_free(&d);
        }
}

Test(linear, long_sequence_cumulative_gates) {
    /* T = 4096 tokens at about -4.95 per token: cumulative log decays near -2e4, far outside exp's
     * range; the chunked form must only exponentiate in-chunk differences. */
    const int kinds[] = {KDA, GDN, GLA, MAMBA2};
    for (int ki = 0; ki < 4; ki++) {
        lin_case c = mk_case(kinds[ki], 1, 4096, 1, 1, 16, 16);
        c.gate = HAE_GATE_SAFE, c.lower_bound = -5.0f, c.chunk = 64;
        lin_data d = lin_make(&c, 3500 + (uint64_t)ki);
        tu_rng r = tu_rng_make(3600 + (uint64_t)ki);
        tu_fill(d.g, c.gdt, n_g(&c), &r, 3.0, 9.0);
        d.A_log[0] = 0.5f;
        void *out = xmalloc(out_bytes(&c)), *out_r = xmalloc(out_bytes(&c));
        float *st = xmalloc(state_bytes(&c)), *st_r = xmalloc(state_bytes(&c));
        double *ro = xmalloc(sizeof(double) * (size_t)n_v(&c)), *rs = xmalloc(sizeof(double) * (size_t)n_state(&c)), gmin;
        char dd[400];
        cr_assert_eq(lin_run(&c, &d, out, st), HAE_OK, "%s", hae_last_error());
        lin_oracle(&c, &d, ro, rs, &gmin);
        cr_log_info("long sequence %s: smallest cumulative log decay %.1f", c.kind.name, gmin);
        cr_expect_lt(gmin, -1.95e4, "the test needs cumulative gates near -2e4, got %g (%s)", gmin, desc(&c, dd, sizeof dd));
        for (int64_t i = 0; i < n_v(&c); i++)
            if (!isfinite(tu_get(out, c.odt, i))) {
                cr_expect(false, "chunked output element %lld is %g (%s)", (long long)i, tu_get(out, c.odt, i),
                          desc(&c, dd, sizeof dd));
                break;
            }
        expect_out_state(&c, "long sequence, chunked vs oracle", out, st, ro, rs, rms_tol(HAE_F32), max_tol(HAE_F32));
        lin_case rc = c;
        rc.chunk = 0;
        cr_assert_eq(lin_run(&rc, &d, out_r, st_r), HAE_OK, "%s", hae_last_error());
        expect_same(&c, "long sequence, chunked vs recurrent", out, st, out_r, st_r, rms_tol(HAE_F32), max_tol(HAE_F32));
        free(out), free(out_r), free(st), free(st_r), free(ro), free(rs);
        lin_free(&d);
    }
}

/* ---------------------------------------------------------------- 4. identities between kinds */

/* Runs a and b (same shapes, their own data) and expects the same outputs and final states. */
static void expect_equivalent(const lin_case *a, const lin_data *da, const lin_case *b, const lin_data *db,
                              const char *what, double rms, double mx) {
    void *oa = xmalloc(out_bytes(a)), *ob = xmalloc(out_bytes(b));
    float *sa = xmalloc(state_bytes(a)), *sb = xmalloc(state_bytes(b));
    char dd[400];
    cr_assert_eq(lin_run(a, da, oa, sa), HAE_OK, "%s: %s (%s)", what, hae_last_error(), desc(a, dd, sizeof dd));
    cr_assert_eq(lin_run(b, db, ob, sb), HAE_OK, "%s: %s (%s)", what, hae_last_error(), desc(b, dd, sizeof dd));
    char w2[600];
    snprintf(w2, sizeof w2, "%s [other side: %s]", what, desc(b, dd, sizeof dd));
    expect_same(a, w2, oa, sa, ob, sb, rms, mx);
    free(oa), free(ob), free(sa), free(sb);
}

/* A copy of d's arrays for case c (so a derived case can change some of them). */
static lin_data lin_copy(const lin_case *c, const lin_data *d) {
    lin_data e = lin_make(c, 1);
    size_t es = hae_dtype_size(c->dt), gs = hae_dtype_size(c->gdt);
    memcpy(e.q, d->q, (size_t)n_qk(c) * es);
    memcpy(e.k, d->k, (size_t)n_qk(c) * es);
    memcpy(e.v, d->v, (size_t)n_v(c) * es);
    memcpy(e.beta, d->beta, (size_t)n_b(c) * gs);
    memcpy(e.A_log, d->A_log, sizeof(float) * (size_t)c->HV);
    memcpy(e.state0, d->state0, state_bytes(c));
    return e;
}

Test(linear, kda_with_equal_channels_is_gdn) {
    const int chunks[] = {0, 16, 64};
    uint64_t seed = 4000;
    for (int gate = 0; gate < 2; gate++)
        for (int ci = 0; ci < 3; ci++) {
            lin_case g = mk_case(GDN, 2, 70, 2, 4, 16, 24);
            g.gate = gate ? HAE_GATE_SAFE : HAE_GATE_SOFTPLUS, g.chunk = chunks[ci];
            lin_data dg = lin_make(&g, seed++);
            lin_case k = g;
            k.kind = KINDS[KDA];
            lin_data dk = lin_copy(&k, &dg);
            for (int64_t i = 0; i < n_b(&g); i++)
                for (int64_t ch = 0; ch < g.K; ch++) ((float *)dk.g)[i * g.K + ch] = ((float *)dg.g)[i];
            for (int64_t j = 0; j < g.HV; j++)
                for (int64_t ch = 0; ch < g.K; ch++) dk.dt_bias[j * g.K + ch] = dg.dt_bias[j];
            expect_equivalent(&k, &dk, &g, &dg, "kda with one gate across channels == gdn", 1e-6, 5e-6);
            lin_free(&dg), lin_free(&dk);
        }
}

Test(linear, vanishing_decay_is_no_decay) {
    /* A_log = -80: g = -e^-80 softplus(.) ~ -1e-35, so exp(g) = 1 in float: kda == deltanet and
     * gla == the no-decay kind with the L2 map. */
    const int chunks[] = {0, 32};
    uint64_t seed = 4100;
    for (int ci = 0; ci < 2; ci++)
        for (int delta = 0; delta < 2; delta++) {
            lin_case n = mk_case(DELTANET, 2, 45, 1, 2, 16, 16);
            n.kind.delta = delta;
            n.kind.name = delta ? "deltanet" : "linear-with-l2";
            n.chunk = chunks[ci];
            lin_data dn = lin_make(&n, seed++);
            for (int kind = 0; kind < 2; kind++) { /* channel (kda / gla), head (gdn / mamba2) */
                lin_case k = n;
                k.kind = KINDS[kind == 0 ? (delta ? KDA : GLA) : (delta ? GDN : MAMBA2)];
                lin_data dk = lin_copy(&k, &dn);
                tu_rng r = tu_rng_make(seed++);
                tu_fill(dk.g, k.gdt, n_g(&k), &r, -3.0, 3.0);
                for (int64_t j = 0; j < k.HV; j++) dk.A_log[j] = -80.0f;
                expect_equivalent(&k, &dk, &n, &dn, "A_log = -80 (no decay)", 1e-6, 5e-6);
                lin_free(&dk);
            }
            lin_free(&dn);
        }
}

Test(linear, mamba2_with_constant_gate_is_retnet) {
    /* a per-head gate constant over tokens: g_j = -e^A_log[j] softplus(c + dt_bias[j]) is a fixed decay
     * -e^A'[j] with A'[j] = A_log[j] + log(softplus(c + dt_bias[j])) */
    const int chunks[] = {0, 16, 64};
    for (int ci = 0; ci < 3; ci++) {
        lin_case m = mk_case(MAMBA2, 2, 80, 2, 4, 16, 16);
        m.chunk = chunks[ci];
        lin_data dm = lin_make(&m, 4200 + (uint64_t)ci);
        float craw = -1.25f;
        for (int64_t i = 0; i < n_b(&m); i++) ((float *)dm.g)[i] = craw;
        lin_case rt = m;
        rt.kind = KINDS[RETNET];
        lin_data dr = lin_copy(&rt, &dm);
        for (int64_t j = 0; j < m.HV; j++)
            dr.A_log[j] = (float)((double)dm.A_log[j] + log(softplus((double)craw + (double)dm.dt_bias[j])));
        expect_equivalent(&m, &dm, &rt, &dr, "mamba2 with a constant gate == retnet", 1e-6, 5e-6);
        lin_free(&dm), lin_free(&dr);
    }
}

/* ---------------------------------------------------------------- state carried over calls */

/* Calls the library on tokens [t0, t0 + len) of every sequence of c (views), state carried in `state`. */
static hae_status run_slice(const lin_case *c, const lin_data *d, void *out, float *state, int64_t t0, int64_t len,
                            int chunk) {
    hae_linear_attn_args a = lin_args(c, d, out, state);
    a.q = hae_tensor_narrow(a.q, 1, t0, len);
    a.k = hae_tensor_narrow(a.k, 1, t0, len);
    a.v = hae_tensor_narrow(a.v, 1, t0, len);
    a.out = hae_tensor_narrow(a.out, 1, t0, len);
    if (a.g.data) a.g = hae_tensor_narrow(a.g, 1, t0, len);
    if (a.beta.data) a.beta = hae_tensor_narrow(a.beta, 1, t0, len);
    a.chunk = chunk;
    return hae_linear_attn(be, &a);
}

Test(linear, prefill_then_decode) {
    for (int ki = 0; ki < N_KINDS; ki++) {
        lin_case c = mk_case(ki, 2, 53, 2, 4, 16, 24);
        c.chunk = 32;
        c.gate = ki % 2 ? HAE_GATE_SAFE : HAE_GATE_SOFTPLUS;
        lin_data d = lin_make(&c, 4300 + (uint64_t)ki);
        void *one = xmalloc(out_bytes(&c)), *split = xmalloc(out_bytes(&c));
        float *s1 = xmalloc(state_bytes(&c)), *s2 = xmalloc(state_bytes(&c));
        cr_assert_eq(lin_run(&c, &d, one, s1), HAE_OK, "%s", hae_last_error());
        memset(split, 0xff, out_bytes(&c));
        memcpy(s2, d.state0, state_bytes(&c));
        const int64_t T1 = 45;
        cr_assert_eq(run_slice(&c, &d, split, s2, 0, T1, 32), HAE_OK, "prefill: %s", hae_last_error());
        for (int64_t t = T1; t < c.T; t++)
            cr_assert_eq(run_slice(&c, &d, split, s2, t, 1, 0), HAE_OK, "decode t=%lld: %s", (long long)t,
                         hae_last_error());
        expect_same(&c, "chunked prefill of 45 then 8 recurrent decode steps vs one chunked call", split, s2, one, s1,
                    rms_tol(HAE_F32), max_tol(HAE_F32));
        free(one), free(split), free(s1), free(s2);
        lin_free(&d);
    }
}

Test(linear, split_calls_carry_the_state) {
    const int64_t lens[] = {1, 17, 3, 40, 30, 5, 64, 1}; /* 161 tokens */
    const int chunks[] = {0, 16, 64, 32, 128, 0, 16, 64};
    for (int kind = 0; kind < N_KINDS; kind++) {
        lin_case c = mk_case(kind, 2, 161, 1, 2, 16, 16);
        c.chunk = 32;
        c.gate = kind % 2 ? HAE_GATE_SOFTPLUS : HAE_GATE_SAFE;
        lin_data d = lin_make(&c, 4400 + (uint64_t)kind);
        void *one = xmalloc(out_bytes(&c)), *split = xmalloc(out_bytes(&c));
        float *s1 = xmalloc(state_bytes(&c)), *s2 = xmalloc(state_bytes(&c));
        cr_assert_eq(lin_run(&c, &d, one, s1), HAE_OK, "%s", hae_last_error());
        memset(split, 0xff, out_bytes(&c));
        memcpy(s2, d.state0, state_bytes(&c));
        int64_t t0 = 0;
        for (int i = 0; i < 8; i++) {
            cr_assert_eq(run_slice(&c, &d, split, s2, t0, lens[i], chunks[i]), HAE_OK, "piece %d: %s", i,
                         hae_last_error());
            t0 += lens[i];
        }
        cr_assert_eq(t0, c.T);
        expect_same(&c, "calls of 1,17,3,40,30,5,64,1 tokens (chunks 0,16,64,32,128,0,16,64) vs one chunked call",
                    split, s2, one, s1, rms_tol(HAE_F32), max_tol(HAE_F32));
        free(one), free(split), free(s1), free(s2);
        lin_free(&d);
    }
}

Test(linear, state_save_and_restore) {
    const int chunks[] = {0, 16};
    for (int ci = 0; ci < 2; ci++)
        for (int kind = 0; kind < N_KINDS; kind++) {
            lin_case c = mk_case(kind, 2, 60, 2, 4, 16, 16);
            c.gate = kind % 2 ? HAE_GATE_SAFE : HAE_GATE_SOFTPLUS;
            lin_data d = lin_make(&c, 4500 + (uint64_t)(10 * ci + kind));
            void *o1 = xmalloc(out_bytes(&c)), *o2 = xmalloc(out_bytes(&c));
            float *st = xmalloc(state_bytes(&c)), *saved = xmalloc(state_bytes(&c)), *after = xmalloc(state_bytes(&c));
            char dd[400];
            memcpy(st, d.state0, state_bytes(&c));
            memset(o1, 0xff, out_bytes(&c));
            memset(o2, 0xff, out_bytes(&c));
            const int64_t T1 = 25, T2 = 35;
            cr_assert_eq(run_slice(&c, &d, o1, st, 0, T1, chunks[ci]), HAE_OK, "%s", hae_last_error());
            memcpy(saved, st, state_bytes(&c));
            cr_assert_eq(run_slice(&c, &d, o1, st, T1, T2, chunks[ci]), HAE_OK, "%s", hae_last_error());
            memcpy(after, st, state_bytes(&c));
            memcpy(st, saved, state_bytes(&c));
            cr_assert_eq(run_slice(&c, &d, o2, st, T1, T2, chunks[ci]), HAE_OK, "%s", hae_last_error());
            size_t es = hae_dtype_size(c.odt), row = (size_t)(c.HV * c.V) * es;
            for (int64_t b = 0; b < c.B; b++)
                cr_expect(memcmp((char *)o1 + (size_t)(b * c.T + T1) * row, (char *)o2 + (size_t)(b * c.T + T1) * row,
                                 (size_t)T2 * row) == 0,
                          "restored state: the second run of tokens %lld.. differs (batch %lld, chunk %d) %s",
                          (long long)T1, (long long)b, chunks[ci], desc(&c, dd, sizeof dd));
            cr_expect(memcmp(after, st, state_bytes(&c)) == 0, "restored state: final states differ, %s",
                      desc(&c, dd, sizeof dd));
            free(o1), free(o2), free(st), free(saved), free(after);
            lin_free(&d);
        }
}

Test(linear, same_result_on_any_thread_count) {
    /* work is split over (sequence, head) pairs: the numbers must not depend on the split */
    const int chunks[] = {0, 32};
    for (int ci = 0; ci < 2; ci++)
        for (int kind = 0; kind < N_KINDS; kind++) {
            lin_case c = mk_case(kind, 3, 50, 1, 3, 16, 8);
            c.chunk = chunks[ci];
            lin_data d = lin_make(&c, 4600 + (uint64_t)(10 * ci + kind));
            void *o2 = xmalloc(out_bytes(&c)), *o1 = xmalloc(out_bytes(&c)), *o5 = xmalloc(out_bytes(&c));
            float *s2 = xmalloc(state_bytes(&c)), *s1 = xmalloc(state_bytes(&c)), *s5 = xmalloc(state_bytes(&c));
            cr_assert_eq(lin_run(&c, &d, o2, s2), HAE_OK, "%s", hae_last_error());
            hae_backend *keep = be, *b1 = NULL, *b5 = NULL;
            cr_assert_eq(hae_backend_create(HAE_CPU, 1, &b1), HAE_OK, "%s", hae_last_error());
            cr_assert_eq(hae_backend_create(HAE_CPU, 5, &b5), HAE_OK, "%s", hae_last_error());
            be = b1;
            cr_assert_eq(lin_run(&c, &d, o1, s1), HAE_OK, "%s", hae_last_error());
            be = b5;
            cr_assert_eq(lin_run(&c, &d, o5, s5), HAE_OK, "%s", hae_last_error());
            be = keep;
            hae_backend_destroy(b1), hae_backend_destroy(b5);
            char dd[400];
            cr_expect(memcmp(o1, o2, out_bytes(&c)) == 0 && memcmp(s1, s2, state_bytes(&c)) == 0,
                      "1 vs 2 threads differ: %s", desc(&c, dd, sizeof dd));
            cr_expect(memcmp(o5, o2, out_bytes(&c)) == 0 && memcmp(s5, s2, state_bytes(&c)) == 0,
                      "5 vs 2 threads differ: %s", desc(&c, dd, sizeof dd));
            free(o1), free(o2), free(o5), free(s1), free(s2), free(s5);
            lin_free(&d);
        }
}

/* ---------------------------------------------------------------- 5. capacity of the delta rule */

/* n orthonormal rows of length K (Gram-Schmidt in double on normal vectors). */
static void orthonormal(double *Q, int64_t n, int64_t K, tu_rng *r) {
    for (int64_t i = 0; i < n; i++) {
        double *q = Q + i * K;
        for (;;) {
            for (int64_t x = 0; x < K; x++) q[x] = tu_normal(r);
            for (int pass = 0; pass < 2; pass++)
                for (int64_t j = 0; j < i; j++) {
                    double dot = 0;
                    for (int64_t x = 0; x < K; x++) dot += q[x] * Q[j * K + x];
                    for (int64_t x = 0; x < K; x++) q[x] -= dot * Q[j * K + x];
                }
            double nn = 0;
            for (int64_t x = 0; x < K; x++) nn += q[x] * q[x];
            if (nn < 1e-6) continue;
            for (int64_t x = 0; x < K; x++) q[x] /= sqrt(nn);
            break;
        }
    }
}

/* A memory run: token t has key = query = keys[t] (unit vectors, through the L2 map), value vals[t]
 * and beta logit betas[t]; scale 1. Returns the outputs [T, V] in double. */
static double *memory_run(lin_case c, const double *keys, const double *vals, const double *betas, bool zero_state,
                          uint64_t seed) {
    c.scale = 1.0f;
    lin_data d = lin_make(&c, seed);
    for (int64_t t = 0; t < c.T; t++) {
        for (int64_t x = 0; x < c.K; x++) ((float *)d.q)[t * c.K + x] = ((float *)d.k)[t * c.K + x] = (float)keys[t * c.K + x];
        for (int64_t x = 0; x < c.V; x++) ((float *)d.v)[t * c.V + x] = (float)vals[t * c.V + x];
        ((float *)d.beta)[t] = (float)betas[t];
    }
    if (c.kind.decay != HAE_DECAY_NONE) d.A_log[0] = -80.0f; /* kda / gdn without decay */
    if (zero_state) memset(d.state0, 0, state_bytes(&c));
    void *out = xmalloc(out_bytes(&c));
    float *st = xmalloc(state_bytes(&c));
    char dd[400];
    cr_assert_eq(lin_run(&c, &d, out, st), HAE_OK, "%s (%s)", hae_last_error(), desc(&c, dd, sizeof dd));
    double *o = to_double(out, c.odt, n_v(&c));
    free(out), free(st);
    lin_free(&d);
    return o;
}

/* Largest |out[t0 + i] - want[i]| over n rows of V, relative to max |want|. */
static double recall_error(const double *out, int64_t t0, const double *want, int64_t n, int64_t V) {
    double e = 0, m = 0;
    for (int64_t i = 0; i < n * V; i++) {
        double d = fabs(out[t0 * V + i] - want[i]);
        if (!(d <= e)) e = d; /* NaN propagates */
        if (fabs(want[i]) > m) m = fabs(want[i]);
    }
    return e / m;
}

static lin_case memory_case(int kind, int64_t T, int64_t K, int64_t V, int chunk) {
    lin_case c = mk_case(kind, 1, T, 1, 1, K, V);
    c.chunk = chunk;
    if (kind == LINEAR) c.kind.map = HAE_QK_L2; /* plain outer-product memory with unit keys */
    return c;
}

Test(linear, delta_rule_recalls_orthonormal_keys) {
    const int64_t K = 32, V = 16;
    const int64_t Ns[] = {8, 32};
    const int kinds[] = {DELTANET, KDA, GDN};
    const int chunks[] = {0, 16};
    tu_rng r = tu_rng_make(5000);
    for (int ni = 0; ni < 2; ni++) {
        int64_t N = Ns[ni], T = 2 * N;
        double *keys = xmalloc(sizeof(double) * (size_t)(T * K)), *vals = xmalloc(sizeof(double) * (size_t)(T * V));
        double *betas = xmalloc(sizeof(double) * (size_t)T);
        orthonormal(keys, N, K, &r);
        for (int64_t i = 0; i < N; i++) {
            /* write key i with value i (beta = sigmoid(40) = 1), later read it with beta = sigmoid(-40) = 0 */
            memcpy(keys + (N + i) * K, keys + i * K, sizeof(double) * (size_t)K);
            for (int64_t x = 0; x < V; x++) vals[i * V + x] = tu_uniform(&r, -1, 1), vals[(N + i) * V + x] = 0;
            betas[i] = 40, betas[N + i] = -40;
        }
        for (int ki = 0; ki < 3; ki++)
            for (int ci = 0; ci < 2; ci++) {
                lin_case c = memory_case(kinds[ki], T, K, V, chunks[ci]);
                /* any initial state: a delta write with beta = 1 sets S^T k exactly */
                double *o = memory_run(c, keys, vals, betas, false, 5100 + (uint64_t)(ki * 10 + ci));
                double e = recall_error(o, N, vals, N, V);
                cr_log_info("recall of %lld orthonormal keys in K=%lld, %s%s chunk %d: relative error %.3g", (long long)N,
                            (long long)K, c.kind.name, c.kind.decay != HAE_DECAY_NONE ? " (A_log -80)" : "", c.chunk, e);
                cr_expect_leq(e, 1e-5, "%s (no decay) chunk %d: reading back %lld orthonormal keys in K=%lld: error %.3g",
                              c.kind.name, c.chunk, (long long)N, (long long)K, e);
                free(o);
            }
        free(keys), free(vals), free(betas);
    }
}

Test(linear, delta_rule_overwrites) {
    /* tokens: (k1, a), (k2, c), (k1, b), read k1, read k2 */
    const int64_t K = 16, V = 16, T = 5;
    tu_rng r = tu_rng_make(5200);
    double basis[2 * 16], keys[5 * 16], vals[5 * 16], betas[5] = {40, 40, 40, -40, -40};
    orthonormal(basis, 2, K, &r);
    const int which[5] = {0, 1, 0, 0, 1};
    for (int t = 0; t < 5; t++) memcpy(keys + t * K, basis + which[t] * K, sizeof(double) * (size_t)K);
    for (int64_t i = 0; i < T * V; i++) vals[i] = i < 3 * V ? tu_uniform(&r, -1, 1) : 0.0;
    double want_delta[2 * 16], want_plain[2 * 16];
    for (int64_t x = 0; x < V; x++) {
        want_delta[x] = vals[2 * V + x], want_delta[V + x] = vals[V + x];
        want_plain[x] = vals[x] + vals[2 * V + x], want_plain[V + x] = vals[V + x];
    }
    const int chunks[] = {0, 16};
    for (int ci = 0; ci < 2; ci++) {
        double *od = memory_run(memory_case(DELTANET, T, K, V, chunks[ci]), keys, vals, betas, false, 5300);
        double *op = memory_run(memory_case(LINEAR, T, K, V, chunks[ci]), keys, vals, betas, true, 5301);
        double ed = recall_error(od, 3, want_delta, 2, V), ep = recall_error(op, 3, want_plain, 2, V);
        cr_log_info("overwrite, chunk %d: deltanet returns b with error %.3g; no-delta returns a + b with error %.3g",
                    chunks[ci], ed, ep);
        cr_expect_leq(ed, 1e-5, "deltanet chunk %d: key written with a then b reads %.3g away from b", chunks[ci], ed);
        cr_expect_leq(ep, 1e-5, "no-delta (l2 map) chunk %d: key written with a then b reads %.3g away from a + b",
                      chunks[ci], ep);
        free(od), free(op);
    }
}

Test(linear, delta_rule_beyond_capacity) {
    /* 2K writes: K random unit keys, then an orthonormal basis. The delta rule overwrites every
     * direction, so the basis reads back exactly; a plain outer-product memory does not. */
    const int64_t K = 16, V = 16, N = 2 * K, T = 3 * K;
    tu_rng r = tu_rng_make(5400);
    double *keys = xmalloc(sizeof(double) * (size_t)(T * K)), *vals = xmalloc(sizeof(double) * (size_t)(T * V));
    double *betas = xmalloc(sizeof(double) * (size_t)T);
    for (int64_t i = 0; i < K; i++) orthonormal(keys + i * K, 1, K, &r); /* random unit vectors */
    orthonormal(keys + K * K, K, K, &r);
    memcpy(keys + N * K, keys + K * K, sizeof(double) * (size_t)(K * K));
    for (int64_t t = 0; t < T; t++) {
        for (int64_t x = 0; x < V; x++) vals[t * V + x] = t < N ? tu_uniform(&r, -1, 1) : 0.0;
        betas[t] = t < N ? 40 : -40;
    }
    const int chunks[] = {0, 16};
    for (int ci = 0; ci < 2; ci++) {
        double *od = memory_run(memory_case(DELTANET, T, K, V, chunks[ci]), keys, vals, betas, false, 5500);
        double *op = memory_run(memory_case(LINEAR, T, K, V, chunks[ci]), keys, vals, betas, true, 5501);
        double ed = recall_error(od, N, vals + K * V, K, V), ep = recall_error(op, N, vals + K * V, K, V);
        cr_log_info("2K = %lld writes in K = %lld, chunk %d: deltanet recall error %.3g, no-delta recall error %.3g",
                    (long long)N, (long long)K, chunks[ci], ed, ep);
        fprintf(stderr, "delta_rule_beyond_capacity chunk %d: deltanet error %.3g, no-delta error %.3g\n", chunks[ci],
                ed, ep);
        cr_expect_leq(ed, 1e-5, "deltanet chunk %d: the last K writes (a basis) read back with error %.3g", chunks[ci], ed);
        cr_expect_gt(ep, 0.1, "no-delta chunk %d: expected interference of order 1, got %.3g", chunks[ci], ep);
        free(od), free(op);
    }
    free(keys), free(vals), free(betas);
}

/* ---------------------------------------------------------------- 6. varlen */

Test(linear, varlen_equals_separate_calls) {
    static const int32_t cu[] = {0, 5, 69, 70, 70, 147}; /* lengths 5, 64, 1, 0, 77 */
    const int chunks[] = {0, 16, 64};
    uint64_t seed = 6000;
    for (int ci = 0; ci < 3; ci++)
        for (int kind = 0; kind < N_KINDS; kind++) {
            lin_case c = mk_case(kind, 1, 147, 2, 4, 16, 24);
            c.N = 5, c.cu = cu, c.chunk = chunks[ci];
            c.gate = (kind + ci) % 2 ? HAE_GATE_SAFE : HAE_GATE_SOFTPLUS;
            lin_data d = lin_make(&c, seed++);
            void *packed;
            float *sp;
            check_vs_oracle(&c, &d, "varlen vs oracle", &packed, &sp);
            /* each sequence alone: views of the same buffers, its own state [1, HV, K, V] */
            void *sep = xmalloc(out_bytes(&c));
            float *ss = xmalloc(state_bytes(&c));
            memset(sep, 0xff, out_bytes(&c));
            memcpy(ss, d.state0, state_bytes(&c));
            lin_case one = c;
            one.cu = NULL, one.N = 1;
            for (int n = 0; n < 5; n++) {
                hae_linear_attn_args a = lin_args(&one, &d, sep, ss + n * c.HV * c.K * c.V);
                int64_t t0 = cu[n], len = cu[n + 1] - cu[n];
                a.q = hae_tensor_narrow(a.q, 1, t0, len);
                a.k = hae_tensor_narrow(a.k, 1, t0, len);
                a.v = hae_tensor_narrow(a.v, 1, t0, len);
                a.out = hae_tensor_narrow(a.out, 1, t0, len);
                if (a.g.data) a.g = hae_tensor_narrow(a.g, 1, t0, len);
                if (a.beta.data) a.beta = hae_tensor_narrow(a.beta, 1, t0, len);
                cr_assert_eq(hae_linear_attn(be, &a), HAE_OK, "sequence %d: %s", n, hae_last_error());
            }
            expect_same(&c, "varlen {5, 64, 1, 0, 77} vs one call per sequence", packed, sp, sep, ss, 1e-6, 5e-6);
            char dd[400];
            size_t one_state = (size_t)(c.HV * c.K * c.V) * sizeof(float);
            cr_expect(memcmp(sp + 3 * c.HV * c.K * c.V, d.state0 + 3 * c.HV * c.K * c.V, one_state) == 0,
                      "varlen: the empty sequence's state changed (%s)", desc(&c, dd, sizeof dd));
            free(packed), free(sp), free(sep), free(ss);
            lin_free(&d);
        }
}

Test(linear, empty_call_keeps_the_state) {
    lin_case c = mk_case(KDA, 2, 0, 1, 2, 16, 16);
    lin_data d = lin_make(&c, 6100);
    float out[1];
    float *st = xmalloc(state_bytes(&c));
    const int chunks[] = {0, 64};
    for (int ci = 0; ci < 2; ci++) {
        c.chunk = chunks[ci];
        cr_assert_eq(lin_run(&c, &d, out, st), HAE_OK, "T = 0: %s", hae_last_error());
        cr_expect(memcmp(st, d.state0, state_bytes(&c)) == 0, "T = 0 chunk %d changed the state", c.chunk);
    }
    free(st);
    lin_free(&d);
}

/* ---------------------------------------------------------------- 7. strided inputs */

Test(linear, strided_views_equal_contiguous) {
    const hae_dtype dts[] = {HAE_F32, HAE_BF16};
    const int kinds[] = {KDA, GDN, LINEAR, RETNET};
    const int chunks[] = {0, 32};
    uint64_t seed = 7000;
    for (int ti = 0; ti < 2; ti++)
        for (int ki = 0; ki < 4; ki++)
            for (int ci = 0; ci < 2; ci++) {
                lin_case c = mk_case(kinds[ki], 2, 41, 2, 4, 16, 8);
                c.dt = c.gdt = c.odt = dts[ti];
                c.chunk = chunks[ci];
                c.gate = ki % 2 ? HAE_GATE_SAFE : HAE_GATE_SOFTPLUS;
                lin_data d = lin_make(&c, seed++);
                void *ref;
                float *sref;
                check_vs_oracle(&c, &d, "contiguous (for the strided test)", &ref, &sref);

                /* one fused row per token: [q | k | v | g | beta | pad], batches apart by 7 more elements */
                const int64_t B = c.B, T = c.T, qk = c.H * c.K, nv = c.HV * c.V, ng = c.HV * gsz(&c), nb = c.HV;
                const int64_t row = 2 * qk + nv + ng + nb + 3, bstride = T * row + 7;
                const int64_t orow = nv + 5, obstride = T * orow + 3;
                size_t es = hae_dtype_size(c.dt);
                char *fused = xmalloc((size_t)(B * bstride) * es), *obuf = xmalloc((size_t)(B * obstride) * es);
                memset(fused, 0x7f, (size_t)(B * bstride) * es);
                memset(obuf, 0x5a, (size_t)(B * obstride) * es);
                for (int64_t b = 0; b < B; b++)
                    for (int64_t t = 0; t < T; t++) {
                        char *dst = fused + (size_t)(b * bstride + t * row) * es;
                        int64_t r0 = b * T + t;
                        memcpy(dst, (char *)d.q + (size_t)(r0 * qk) * es, (size_t)qk * es);
                        memcpy(dst + qk * es, (char *)d.k + (size_t)(r0 * qk) * es, (size_t)qk * es);
                        memcpy(dst + 2 * qk * es, (char *)d.v + (size_t)(r0 * nv) * es, (size_t)nv * es);
                        memcpy(dst + (2 * qk + nv) * es, (char *)d.g + (size_t)(r0 * ng) * es, (size_t)ng * es);
                        memcpy(dst + (2 * qk + nv + ng) * es, (char *)d.beta + (size_t)(r0 * nb) * es, (size_t)nb * es);
                        memset(obuf + (size_t)(b * obstride + t * orow) * es, 0xff, (size_t)nv * es); /* NaN */
                    }
                float *st = xmalloc(state_bytes(&c));
                memcpy(st, d.state0, state_bytes(&c));
                hae_linear_attn_args a = lin_args(&c, &d, NULL, st);
                hae_tensor *views[] = {&a.q, &a.k, &a.v, &a.g, &a.beta};
                const int64_t offs[] = {0, qk, 2 * qk, 2 * qk + nv, 2 * qk + nv + ng};
                for (int i = 0; i < 5; i++) {
                    if (!views[i]->data) continue;
                    views[i]->data = fused + (size_t)offs[i] * es;
                    views[i]->stride[0] = bstride;
                    views[i]->stride[1] = row;
                }
                a.out.data = obuf;
                a.out.stride[0] = obstride;
                a.out.stride[1] = orow;
                char dd[400];
                cr_assert_eq(hae_linear_attn(be, &a), HAE_OK, "strided: %s (%s)", hae_last_error(), desc(&c, dd, sizeof dd));
                /* gather the strided output; the gaps between rows must be untouched */
                char *got = xmalloc(out_bytes(&c));
                bool gaps_ok = true;
                for (int64_t b = 0; b < B; b++) {
                    const unsigned char *ob = (const unsigned char *)obuf + (size_t)(b * obstride) * es;
                    for (int64_t t = 0; t < T; t++)
                        memcpy(got + (size_t)((b * T + t) * nv) * es, ob + (size_t)(t * orow) * es, (size_t)nv * es);
                    for (int64_t i = 0; i < obstride * (int64_t)es; i++)
                        if (i / (int64_t)es >= T * orow || (i / (int64_t)es) % orow >= nv) gaps_ok &= ob[i] == 0x5a;
                }
                cr_expect(gaps_ok, "strided out: bytes between rows were written (%s)", desc(&c, dd, sizeof dd));
                expect_same(&c, "strided views vs contiguous", got, st, ref, sref, 1e-6, 5e-6);
                free(fused), free(obuf), free(got), free(st), free(ref), free(sref);
                lin_free(&d);
            }
}

/* ---------------------------------------------------------------- 8. short conv */

typedef struct {
    int64_t B, T, C, W;
    bool silu;
    hae_dtype dt, odt;
} conv_case;

static const char *conv_desc(const conv_case *c, char *buf, size_t n) {
    snprintf(buf, n, "conv B=%lld T=%lld C=%lld W=%lld silu %d x %s out %s", (long long)c->B, (long long)c->T,
             (long long)c->C, (long long)c->W, (int)c->silu, hae_dtype_name(c->dt), hae_dtype_name(c->odt));
    return buf;
}

/* out[b, t, c] = act(sum_w weight[c, w] x'[b, t + w, c]), x' = concat(state[b], x[b]); new state =
 * the last W - 1 rows of x'. x is contiguous [B, T, C]. */
static void conv_oracle(const conv_case *c, const void *x, const float *w, const float *state0, double *out,
                        double *state) {
    const int64_t B = c->B, T = c->T, C = c->C, W = c->W;
    for (int64_t b = 0; b < B; b++) {
        for (int64_t t = 0; t < T; t++)
            for (int64_t ch = 0; ch < C; ch++) {
                double s = 0;
                for (int64_t k = 0; k < W; k++) {
                    int64_t i = t + k; /* position in x' */
                    double xv = i < W - 1 ? state0[(b * (W - 1) + i) * C + ch] : tu_get(x, c->dt, (b * T + i - (W - 1)) * C + ch);
                    s += (double)w[ch * W + k] * xv;
                }
                out[(b * T + t) * C + ch] = c->silu ? s * sigm(s) : s;
            }
        for (int64_t i = 0; i < W - 1; i++)
            for (int64_t ch = 0; ch < C; ch++) {
                int64_t p = T + i; /* position in x' */
                state[(b * (W - 1) + i) * C + ch] =
                    p < W - 1 ? state0[(b * (W - 1) + p) * C + ch] : tu_get(x, c->dt, (b * T + p - (W - 1)) * C + ch);
            }
    }
}

Test(linear, conv_short_vs_oracle_and_split_calls) {
    const int64_t Ws[] = {4, 1, 2, 3};
    const hae_dtype dts[][2] = {{HAE_F32, HAE_F32}, {HAE_BF16, HAE_BF16}, {HAE_BF16, HAE_F32}};
    uint64_t seed = 8000;
    for (int wi = 0; wi < 4; wi++)
        for (int silu = 0; silu < 2; silu++)
            for (int di = 0; di < 3; di++) {
                /* C = 100: more channels than one block of a vectorised kernel, and a ragged tail */
                conv_case c = {2, 11, (wi + silu + di) % 2 ? 100 : 24, Ws[wi], silu, dts[di][0], dts[di][1]};
                const int64_t B = c.B, T = c.T, C = c.C, W = c.W, pad = 3, xrow = C + pad;
                tu_rng r = tu_rng_make(seed++);
                size_t es = hae_dtype_size(c.dt), os = hae_dtype_size(c.odt);
                void *x = xmalloc((size_t)(B * T * C) * es);
                char *xs = xmalloc((size_t)(B * T * xrow) * es); /* strided copy */
                float *w = xmalloc(sizeof(float) * (size_t)(C * W));
                float *s0 = xmalloc(sizeof(float) * (size_t)(B * (W - 1) * C + 1));
                float *st = xmalloc(sizeof(float) * (size_t)(B * (W - 1) * C + 1));
                void *out = xmalloc((size_t)(B * T * C) * os);
                double *ro = xmalloc(sizeof(double) * (size_t)(B * T * C)), *rs = xmalloc(sizeof(double) * (size_t)(B * (W - 1) * C + 1));
                tu_fill(x, c.dt, B * T * C, &r, -2, 2);
                tu_fill(w, HAE_F32, C * W, &r, -1, 1);
                tu_fill(s0, HAE_F32, B * (W - 1) * C, &r, -2, 2);
                memset(xs, 0xff, (size_t)(B * T * xrow) * es);
                for (int64_t i = 0; i < B * T; i++) memcpy(xs + (size_t)(i * xrow) * es, (char *)x + (size_t)(i * C) * es, (size_t)C * es);
                conv_oracle(&c, x, w, s0, ro, rs);

                hae_conv_short_args a = {.x = hae_tensor_3d(xs, c.dt, HAE_CPU, B, T, C),
                                         .weight = hae_tensor_2d(w, HAE_F32, HAE_CPU, C, W),
                                         .state = hae_tensor_3d(st, HAE_F32, HAE_CPU, B, W - 1, C),
                                         .out = hae_tensor_3d(out, c.odt, HAE_CPU, B, T, C),
                                         .silu = c.silu};
                a.x.stride[1] = xrow, a.x.stride[0] = T * xrow;
                memcpy(st, s0, sizeof(float) * (size_t)(B * (W - 1) * C));
                memset(out, 0xff, (size_t)(B * T * C) * os);
                char dd[200], why[512];
                cr_assert_eq(hae_conv_short(be, &a), HAE_OK, "%s (%s)", hae_last_error(), conv_desc(&c, dd, sizeof dd));
                bool f32 = c.odt == HAE_F32;
                cr_expect(close_to(out, c.odt, ro, B * T * C, f32 ? 1e-6 : 4e-3, f32 ? 1e-6 : 8e-3, why, sizeof why),
                          "one call, out: %s (%s)", why, conv_desc(&c, dd, sizeof dd));
                cr_expect(close_to(st, HAE_F32, rs, B * (W - 1) * C, 0, 0, why, sizeof why), "one call, state: %s (%s)",
                          why, conv_desc(&c, dd, sizeof dd));

                /* the same sequence in pieces: single tokens, and pieces shorter than W - 1 */
                void *one = xmalloc((size_t)(B * T * C) * os);
                memcpy(one, out, (size_t)(B * T * C) * os);
                float *st_one = xmalloc(sizeof(float) * (size_t)(B * (W - 1) * C + 1));
                memcpy(st_one, st, sizeof(float) * (size_t)(B * (W - 1) * C));
                const int64_t steps[] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
                const int64_t small[] = {1, 2, 1, 2, 2, 1, 2}; /* 11 tokens, pieces < W - 1 for W = 4 */
                for (int mode = 0; mode < 2; mode++) {
                    const int64_t *lens = mode ? small : steps;
                    int np = mode ? 7 : 11;
                    memcpy(st, s0, sizeof(float) * (size_t)(B * (W - 1) * C));
                    memset(out, 0xff, (size_t)(B * T * C) * os);
                    int64_t t0 = 0;
                    for (int p = 0; p < np; p++) {
                        hae_conv_short_args s = a;
                        s.x = hae_tensor_narrow(a.x, 1, t0, lens[p]);
                        s.out = hae_tensor_narrow(a.out, 1, t0, lens[p]);
                        cr_assert_eq(hae_conv_short(be, &s), HAE_OK, "%s", hae_last_error());
                        t0 += lens[p];
                    }
                    cr_assert_eq(t0, T);
                    double *od = to_double(one, c.odt, B * T * C), *sd = to_double(st_one, HAE_F32, B * (W - 1) * C);
                    cr_expect(close_to(out, c.odt, od, B * T * C, 1e-6, 1e-6, why, sizeof why),
                              "%s vs one call, out: %s (%s)", mode ? "pieces 1,2,1,2,2,1,2" : "single steps", why,
                              conv_desc(&c, dd, sizeof dd));
                    cr_expect(close_to(st, HAE_F32, sd, B * (W - 1) * C, 0, 0, why, sizeof why),
                              "%s vs one call, state: %s (%s)", mode ? "pieces 1,2,1,2,2,1,2" : "single steps", why,
                              conv_desc(&c, dd, sizeof dd));
                    free(od), free(sd);
                }
                free(x), free(xs), free(w), free(s0), free(st), free(out), free(ro), free(rs), free(one), free(st_one);
            }
}

/* ---------------------------------------------------------------- 9. gated rmsnorm */

Test(linear, gated_rmsnorm_vs_oracle) {
    const int64_t shapes[][3] = {{7, 3, 32}, {1, 1, 1}, {5, 4, 128}, {3, 2, 48}};
    const hae_dtype dts[][2] = {{HAE_F32, HAE_F32}, {HAE_BF16, HAE_BF16}, {HAE_BF16, HAE_F32}, {HAE_F32, HAE_BF16}};
    uint64_t seed = 9000;
    for (int s = 0; s < 4; s++)
        for (int di = 0; di < 4; di++)
            for (int inplace = 0; inplace < 2; inplace++) {
                hae_dtype dt = dts[di][0], odt = inplace ? dt : dts[di][1];
                if (inplace && di >= 2) continue;
                const int64_t N = shapes[s][0], H = shapes[s][1], D = shapes[s][2], pad = inplace ? 0 : 5;
                const int64_t rs = H * D + pad, n = N * H * D;
                tu_rng r = tu_rng_make(seed++);
                size_t es = hae_dtype_size(dt), os = hae_dtype_size(odt);
                char *x = xmalloc((size_t)(N * rs) * es), *gt = xmalloc((size_t)(N * rs) * es);
                float *w = xmalloc(sizeof(float) * (size_t)D);
                tu_fill(x, dt, N * rs, &r, -3, 3);
                tu_fill(gt, dt, N * rs, &r, -4, 4);
                tu_fill(w, HAE_F32, D, &r, 0.5, 1.5);
                float eps = 1e-5f;
                double *ref = xmalloc(sizeof(double) * (size_t)n);
                for (int64_t i = 0; i < N; i++)
                    for (int64_t h = 0; h < H; h++) {
                        double ss = 0;
                        for (int64_t e = 0; e < D; e++) ss += pow(tu_get(x, dt, i * rs + h * D + e), 2);
                        double rr = 1.0 / sqrt(ss / (double)D + eps);
                        for (int64_t e = 0; e < D; e++)
                            ref[(i * H + h) * D + e] = tu_get(x, dt, i * rs + h * D + e) * rr * w[e] *
                                                       sigm(tu_get(gt, dt, i * rs + h * D + e));
                    }
                void *out = inplace ? (void *)x : xmalloc((size_t)n * os);
                if (!inplace) memset(out, 0xff, (size_t)n * os);
                hae_gated_rmsnorm_args a = {.x = hae_tensor_3d(x, dt, HAE_CPU, N, H, D),
                                            .gate = hae_tensor_3d(gt, dt, HAE_CPU, N, H, D),
                                            .weight = hae_tensor_1d(w, HAE_F32, HAE_CPU, D),
                                            .out = hae_tensor_3d(out, odt, HAE_CPU, N, H, D),
                                            .eps = eps};
                a.x.stride[0] = a.gate.stride[0] = rs;
                char why[512];
                cr_assert_eq(hae_gated_rmsnorm(be, &a), HAE_OK, "%s", hae_last_error());
                bool f32 = odt == HAE_F32;
                cr_expect(close_to(out, odt, ref, n, f32 ? 1e-6 : 4e-3, f32 ? 2e-6 : 8e-3, why, sizeof why),
                          "gated_rmsnorm N=%lld H=%lld D=%lld x %s out %s%s%s: %s", (long long)N, (long long)H,
                          (long long)D, hae_dtype_name(dt), hae_dtype_name(odt), pad ? " (x, gate rows strided)" : "",
                          inplace ? " in place (out == x)" : "", why);
                if (!inplace) free(out);
                free(x), free(gt), free(w), free(ref);
            }
}

/* ---------------------------------------------------------------- 10. bad inputs */

static int n_bad;

static void expect_invalid_la(const hae_linear_attn_args *a, const char *needle, const char *what, float *state,
                              const float *state0, size_t sb, void *out, size_t ob) {
    hae_clear_error();
    memcpy(state, state0, sb);
    memset(out, 0xff, ob);
    hae_status st = hae_linear_attn(be, a);
    n_bad++;
    cr_expect_eq(st, HAE_ERR_INVALID, "bad input \"%s\": status %s, message \"%s\"", what, hae_status_name(st),
                 hae_last_error());
    cr_expect(strstr(hae_last_error(), needle) != NULL, "bad input \"%s\": message \"%s\" does not mention \"%s\"", what,
              hae_last_error(), needle);
    cr_expect(memcmp(state, state0, sb) == 0, "bad input \"%s\": the state was written", what);
    const unsigned char *o = out;
    bool untouched = true;
    for (size_t i = 0; i < ob; i++) untouched &= o[i] == 0xff;
    cr_expect(untouched, "bad input \"%s\": out was written", what);
}

Test(linear, rejects_bad_linear_attn_args) {
    /* valid base: kda, B=1, T=8, H=2, HV=4, K=V=16, safe gate; buffers large enough for any variant below */
    lin_case c = mk_case(KDA, 1, 8, 2, 4, 16, 16);
    c.gate = HAE_GATE_SAFE;
    lin_data d = lin_make(&c, 10000);
    size_t big = 4 * 8 * 8 * 300 * sizeof(float);
    float *buf = xmalloc(big), *out = xmalloc(big), *st = xmalloc(state_bytes(&c) * 4), *st0 = xmalloc(state_bytes(&c) * 4);
    tu_rng r = tu_rng_make(10001);
    tu_fill(buf, HAE_F32, (int64_t)(big / sizeof(float)), &r, -1, 1);
    tu_fill(st0, HAE_F32, n_state(&c) * 4, &r, -1, 1);
    size_t sb = state_bytes(&c), ob = out_bytes(&c);
    hae_linear_attn_args base = lin_args(&c, &d, out, st);
    memcpy(st, st0, sb);
    cr_assert_eq(hae_linear_attn(be, &base), HAE_OK, "the valid base call: %s", hae_last_error());
    base.chunk = 16;
    memcpy(st, st0, sb);
    cr_assert_eq(hae_linear_attn(be, &base), HAE_OK, "the valid base call, chunked: %s", hae_last_error());
    base.chunk = 0;
    hae_linear_attn_args a;
    n_bad = 0;
#define BAD(needle, what, ...)                                                                                         \
    do {                                                                                                               \
        a = base;                                                                                                      \
        __VA_ARGS__;                                                                                                   \
        expect_invalid_la(&a, needle, what, st, st0, sb, out, ob);                                                     \
    } while (0)
    BAD("[1, 8, 2, 8]", "q and k shapes differ", a.k = hae_tensor_4d(buf, HAE_F32, HAE_CPU, 1, 8, 2, 8));
    BAD("k and v", "k dtype differs from q", a.k = hae_tensor_4d(buf, HAE_BF16, HAE_CPU, 1, 8, 2, 16));
    BAD("multiple", "HV = 4 not a multiple of H = 3", a.q = hae_tensor_4d(buf, HAE_F32, HAE_CPU, 1, 8, 3, 16);
        a.k = a.q);
    BAD("[1, 8, 8, 16]", "HV = 4 < H = 8", a.q = hae_tensor_4d(buf, HAE_F32, HAE_CPU, 1, 8, 8, 16); a.k = a.q);
    BAD("[1, 8, 2, 0]", "K = 0", a.q = hae_tensor_4d(buf, HAE_F32, HAE_CPU, 1, 8, 2, 0); a.k = a.q);
    BAD("[1, 8, 2, 300]", "K = 300", a.q = hae_tensor_4d(buf, HAE_F32, HAE_CPU, 1, 8, 2, 300); a.k = a.q);
    BAD("[1, 8, 4, 0]", "V = 0", a.v = hae_tensor_4d(buf, HAE_F32, HAE_CPU, 1, 8, 4, 0));
    BAD("[2, 8, 4, 16]", "v batch differs", a.v = hae_tensor_4d(buf, HAE_F32, HAE_CPU, 2, 8, 4, 16));
    BAD("[1, 7, 4, 16]", "v length differs", a.v = hae_tensor_4d(buf, HAE_F32, HAE_CPU, 1, 7, 4, 16));
    BAD("[1, 8, 4, 15]", "out shape differs", a.out.shape[3] = 15; a.out.stride[2] = 15; a.out.stride[1] = 60;
        a.out.stride[0] = 480);
    BAD("out", "out dtype f16", a.out.dtype = HAE_F16);
    BAD("q [1, 8, 2, 16] f16", "q dtype f16", a.q.dtype = HAE_F16; a.k.dtype = HAE_F16; a.v.dtype = HAE_F16);
    BAD("q [1, 8, 2, 16] f32 cuda", "q on the GPU", a.q.device = HAE_CUDA);
    BAD("innermost stride", "q innermost stride 2", a.q.stride[3] = 2);
    BAD("dense within a row", "k heads not dense", a.k.stride[2] = 17);
    BAD("state", "state wrong shape", a.state = hae_tensor_4d(st, HAE_F32, HAE_CPU, 1, 4, 16, 8));
    BAD("state", "state [2, HV, K, V] for B = 1", a.state = hae_tensor_4d(st, HAE_F32, HAE_CPU, 2, 4, 16, 16));
    BAD("state", "state not contiguous (heads)", a.state.stride[1] = 16 * 16 + 1; a.state.stride[0] = 4 * 257);
    BAD("state", "state not contiguous (rows)", a.state.stride[2] = 32; a.state.stride[1] = 16 * 32;
        a.state.stride[0] = 4 * 16 * 32);
    BAD("state", "state dtype bf16", a.state.dtype = HAE_BF16);
    BAD("state is NULL", "state NULL", a.state.data = NULL);
    BAD("g is NULL", "g missing for channel decay", a.g.data = NULL);
    BAD("g [1, 8, 4]", "g [B, T, HV] for channel decay", a.g = hae_tensor_3d(buf, HAE_F32, HAE_CPU, 1, 8, 4));
    BAD("[1, 8, 4, 8]", "g with K = 8 for channel decay", a.g = hae_tensor_4d(buf, HAE_F32, HAE_CPU, 1, 8, 4, 8));
    BAD("g [1, 8, 4, 16]", "g [B, T, HV, K] for head decay", a.decay = HAE_DECAY_HEAD;
        a.dt_bias = hae_tensor_1d(buf, HAE_F32, HAE_CPU, 4));
    BAD("dt_bias", "dt_bias [HV] for channel decay", a.dt_bias = hae_tensor_1d(buf, HAE_F32, HAE_CPU, 4));
    BAD("dt_bias", "dt_bias [HV * K] for head decay", a.decay = HAE_DECAY_HEAD;
        a.g = hae_tensor_3d(buf, HAE_F32, HAE_CPU, 1, 8, 4));
    BAD("dt_bias", "dt_bias missing", a.dt_bias.data = NULL);
    BAD("dt_bias", "dt_bias bf16", a.dt_bias.dtype = HAE_BF16);
    BAD("A_log", "A_log missing for fixed decay", a.decay = HAE_DECAY_FIXED; a.A_log = (hae_tensor){0});
    BAD("A_log", "A_log length HV + 1", a.A_log = hae_tensor_1d(buf, HAE_F32, HAE_CPU, 5));
    BAD("beta", "beta missing with the delta rule", a.beta = (hae_tensor){0});
    BAD("beta", "beta [1, 8, 2]", a.beta = hae_tensor_3d(buf, HAE_F32, HAE_CPU, 1, 8, 2));
    BAD("lower_bound", "lower_bound 0", a.lower_bound = 0.0f);
    BAD("lower_bound", "lower_bound +1", a.lower_bound = 1.0f);
    BAD("lower_bound", "lower_bound NaN", a.lower_bound = NAN);
    BAD("lower_bound", "lower_bound -inf", a.lower_bound = -INFINITY);
    BAD("lower_bound", "lower_bound 0, head decay", a.lower_bound = 0.0f; a.decay = HAE_DECAY_HEAD;
        a.g = hae_tensor_3d(buf, HAE_F32, HAE_CPU, 1, 8, 4); a.dt_bias = hae_tensor_1d(buf, HAE_F32, HAE_CPU, 4));
    BAD("scale", "scale 0", a.scale = 0.0f);
    BAD("scale", "scale NaN", a.scale = NAN);
    BAD("scale", "scale -0.25", a.scale = -0.25f);
    BAD("scale", "scale inf", a.scale = INFINITY);
    BAD("chunk 48", "chunk 48", a.chunk = 48);
    BAD("chunk -1", "chunk -1", a.chunk = -1);
    BAD("chunk 256", "chunk 256", a.chunk = 256);
    BAD("decay 7", "decay 7 (not a hae_decay)", a.decay = (hae_decay)7);
    BAD("gate 9", "gate 9 (not a hae_gate_fn)", a.gate = (hae_gate_fn)9);
    BAD("qk_map 5", "qk_map 5 (not a hae_qk_map)", a.qk_map = (hae_qk_map)5);
    BAD("q [8, 2, 16]", "q 3-d", a.q = hae_tensor_3d(buf, HAE_F32, HAE_CPU, 8, 2, 16));
    /* varlen */
    int32_t cu_ok[] = {0, 3, 8}, cu_start[] = {1, 3, 8}, cu_dec[] = {0, 5, 3, 8}, cu_end[] = {0, 3, 7}, cu_one[] = {0};
    int64_t cu_i64[] = {0, 3, 8};
    hae_linear_attn_args vbase = base;
    vbase.cu_seqlens = hae_tensor_1d(cu_ok, HAE_I32, HAE_CPU, 3);
    vbase.state = hae_tensor_4d(st, HAE_F32, HAE_CPU, 2, 4, 16, 16);
    memcpy(st, st0, 2 * sb);
    cr_assert_eq(hae_linear_attn(be, &vbase), HAE_OK, "the valid varlen base call: %s", hae_last_error());
    base = vbase;
    sb *= 2;
    BAD("cu_seqlens", "cu_seqlens with B = 2", a.q = hae_tensor_4d(buf, HAE_F32, HAE_CPU, 2, 4, 2, 16); a.k = a.q;
        a.v = hae_tensor_4d(buf, HAE_F32, HAE_CPU, 2, 4, 4, 16); a.out = hae_tensor_4d(out, HAE_F32, HAE_CPU, 2, 4, 4, 16);
        a.g = hae_tensor_4d(buf, HAE_F32, HAE_CPU, 2, 4, 4, 16); a.beta = hae_tensor_3d(buf, HAE_F32, HAE_CPU, 2, 4, 4));
    BAD("cu_seqlens", "cu_seqlens not starting at 0", a.cu_seqlens.data = cu_start);
    BAD("cu_seqlens", "cu_seqlens decreasing", a.cu_seqlens = hae_tensor_1d(cu_dec, HAE_I32, HAE_CPU, 4);
        a.state = hae_tensor_4d(st, HAE_F32, HAE_CPU, 3, 4, 16, 16));
    BAD("cu_seqlens", "cu_seqlens ending at 7 for T = 8", a.cu_seqlens.data = cu_end);
    BAD("state", "cu_seqlens of 3 sequences, state of 2", a.cu_seqlens = hae_tensor_1d(cu_dec, HAE_I32, HAE_CPU, 4));
    BAD("cu_seqlens", "cu_seqlens with one entry", a.cu_seqlens = hae_tensor_1d(cu_one, HAE_I32, HAE_CPU, 1));
    BAD("cu_seqlens", "cu_seqlens i64", a.cu_seqlens = hae_tensor_1d(cu_i64, HAE_I64, HAE_CPU, 3));
#undef BAD
    cr_log_info("%d bad hae_linear_attn calls rejected", n_bad);
    cr_expect_geq(n_bad, 25);
    free(buf), free(out), free(st), free(st0);
    lin_free(&d);
}

Test(linear, rejects_bad_conv_and_norm_args) {
    float x[2 * 5 * 8], w[8 * 17], st[2 * 16 * 8], out[2 * 5 * 8], g[2 * 5 * 8];
    tu_rng r = tu_rng_make(10100);
    tu_fill(x, HAE_F32, 80, &r, -1, 1), tu_fill(w, HAE_F32, 136, &r, -1, 1), tu_fill(st, HAE_F32, 256, &r, -1, 1);
    tu_fill(g, HAE_F32, 80, &r, -1, 1);
    hae_conv_short_args base = {.x = hae_tensor_3d(x, HAE_F32, HAE_CPU, 2, 5, 8),
                                .weight = hae_tensor_2d(w, HAE_F32, HAE_CPU, 8, 4),
                                .state = hae_tensor_3d(st, HAE_F32, HAE_CPU, 2, 3, 8),
                                .out = hae_tensor_3d(out, HAE_F32, HAE_CPU, 2, 5, 8),
                                .silu = true};
    cr_assert_eq(hae_conv_short(be, &base), HAE_OK, "the valid base call: %s", hae_last_error());
    int n = 0;
    hae_conv_short_args a;
#define BADC(needle, what, ...)                                                                                        \
    do {                                                                                                               \
        a = base;                                                                                                      \
        __VA_ARGS__;                                                                                                   \
        hae_clear_error();                                                                                             \
        hae_status s_ = hae_conv_short(be, &a);                                                                        \
        n++;                                                                                                           \
        cr_expect_eq(s_, HAE_ERR_INVALID, "conv bad input \"%s\": status %s, message \"%s\"", what,                   \
                     hae_status_name(s_), hae_last_error());                                                           \
        cr_expect(strstr(hae_last_error(), needle), "conv bad input \"%s\": \"%s\" does not mention \"%s\"", what,     \
                  hae_last_error(), needle);                                                                           \
    } while (0)
    BADC("weight", "weight W = 0", a.weight = hae_tensor_2d(w, HAE_F32, HAE_CPU, 8, 0);
         a.state = hae_tensor_3d(st, HAE_F32, HAE_CPU, 2, 0, 8));
    BADC("weight", "weight W = 17", a.weight = hae_tensor_2d(w, HAE_F32, HAE_CPU, 8, 17);
         a.state = hae_tensor_3d(st, HAE_F32, HAE_CPU, 2, 16, 8));
    BADC("weight", "weight [7, 4] for C = 8", a.weight = hae_tensor_2d(w, HAE_F32, HAE_CPU, 7, 4));
    BADC("weight", "weight bf16", a.weight.dtype = HAE_BF16);
    BADC("weight", "weight not contiguous", a.weight.stride[0] = 5);
    BADC("state", "state [2, 4, 8] for W = 4", a.state = hae_tensor_3d(st, HAE_F32, HAE_CPU, 2, 4, 8));
    BADC("state", "state [1, 3, 8] for B = 2", a.state = hae_tensor_3d(st, HAE_F32, HAE_CPU, 1, 3, 8));
    BADC("state", "state not contiguous", a.state.stride[0] = 25);
    BADC("state", "state bf16", a.state.dtype = HAE_BF16);
    BADC("alias", "out aliasing x", a.out.data = x);
    BADC("out", "out shape differs", a.out = hae_tensor_3d(out, HAE_F32, HAE_CPU, 2, 4, 8));
    BADC("x [2, 5, 8] f16", "x dtype f16", a.x.dtype = HAE_F16);
#undef BADC
    hae_gated_rmsnorm_args nb = {.x = hae_tensor_3d(x, HAE_F32, HAE_CPU, 5, 2, 8),
                                 .gate = hae_tensor_3d(g, HAE_F32, HAE_CPU, 5, 2, 8),
                                 .weight = hae_tensor_1d(w, HAE_F32, HAE_CPU, 8),
                                 .out = hae_tensor_3d(out, HAE_F32, HAE_CPU, 5, 2, 8),
                                 .eps = 1e-6f};
    cr_assert_eq(hae_gated_rmsnorm(be, &nb), HAE_OK, "the valid base call: %s", hae_last_error());
    hae_gated_rmsnorm_args b;
#define BADN(needle, what, ...)                                                                                        \
    do {                                                                                                               \
        b = nb;                                                                                                        \
        __VA_ARGS__;                                                                                                   \
        hae_clear_error();                                                                                             \
        hae_status s_ = hae_gated_rmsnorm(be, &b);                                                                     \
        n++;                                                                                                           \
        cr_expect_eq(s_, HAE_ERR_INVALID, "gated_rmsnorm bad input \"%s\": status %s, message \"%s\"", what,          \
                     hae_status_name(s_), hae_last_error());                                                           \
        cr_expect(strstr(hae_last_error(), needle), "gated_rmsnorm bad input \"%s\": \"%s\" does not mention \"%s\"",  \
                  what, hae_last_error(), needle);                                                                     \
    } while (0)
    BADN("weight", "weight [7] for D = 8", b.weight = hae_tensor_1d(w, HAE_F32, HAE_CPU, 7));
    BADN("weight", "weight bf16", b.weight.dtype = HAE_BF16);
    BADN("eps", "eps 0", b.eps = 0.0f);
    BADN("eps", "eps -1", b.eps = -1.0f);
    BADN("eps", "eps NaN", b.eps = NAN);
    BADN("gate", "gate shape differs", b.gate = hae_tensor_3d(g, HAE_F32, HAE_CPU, 5, 2, 7));
    BADN("out", "out shape differs", b.out = hae_tensor_3d(out, HAE_F32, HAE_CPU, 5, 1, 8));
    BADN("x [10, 8]", "x 2-d", b.x = hae_tensor_2d(x, HAE_F32, HAE_CPU, 10, 8));
#undef BADN
    cr_log_info("%d bad conv / gated_rmsnorm calls rejected", n);
}

/* DSA's sparse attention on the CPU: against a float64 oracle over the same index sets, unusable
 * indices never read (their cache slots hold NaN), empty rows, equality with dense attention when
 * the indices cover the whole causal context, and the errors a caller can make. Both attention
 * forms: gqa (Dk = Dv), key and value dims that differ, cache slots strided past their heads, and
 * mla's absorbed shape (Hkv 1, values the first Dv dims of the Dk-wide latent keys, one buffer). */
#include "internal.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int64_t B, T, Hq, Hkv, Dk, Dv, cap, k;
    hae_dtype dt; /* q, caches, out */
    int64_t spad; /* elements between a slot's heads and the next slot */
    bool mla;     /* v_cache is a view of the first Dv dims of k_cache (needs Hkv 1, Dv <= Dk) */
} sp_shape;

typedef struct {
    void *q, *kc, *vc, *out;
    int32_t *idx, *lens;
    float *lse;
} sp_data;

static size_t es(hae_dtype dt) { return hae_dtype_size(dt); }

/* Elements per cache slot of the key and value caches. */
static int64_t kslot(const sp_shape *s) { return s->Hkv * s->Dk + s->spad; }
static int64_t vslot(const sp_shape *s) { return s->mla ? kslot(s) : s->Hkv * s->Dv + s->spad; }

static sp_data sp_alloc(const sp_shape *s) {
    sp_data d;
    d.q = malloc((size_t)(s->B * s->T * s->Hq * s->Dk) * es(s->dt));
    d.kc = malloc((size_t)(s->B * s->cap * kslot(s)) * es(s->dt));
    d.vc = s->mla ? d.kc : malloc((size_t)(s->B * s->cap * vslot(s)) * es(s->dt));
    d.out = malloc((size_t)(s->B * s->T * s->Hq * s->Dv) * es(s->dt));
    d.idx = malloc(sizeof(int32_t) * (size_t)(s->B * s->T * s->k));
    d.lens = malloc(sizeof(int32_t) * (size_t)s->B);
    d.lse = malloc(sizeof(float) * (size_t)(s->B * s->T * s->Hq));
    cr_assert(d.q && d.kc && d.vc && d.out && d.idx && d.lens && d.lse);
    return d;
}

static void sp_free(sp_data *d) {
    if (d->vc != d->kc) free(d->vc);
    free(d->q), free(d->kc), free(d->out), free(d->idx), free(d->lens), free(d->lse);
}

/* A [B, cap, Hkv, D] cache view whose slots are `slot` elements apart. */
static hae_tensor cache_view(const sp_shape *s, void *data, int64_t D, int64_t slot) {
    hae_tensor t = hae_tensor_4d(data, s->dt, HAE_CPU, s->B, s->cap, s->Hkv, D);
    t.stride[1] = slot;
    t.stride[0] = s->cap * slot;
    return t;
}

static hae_sparse_attention_args sp_args(const sp_shape *s, const sp_data *d, float scale) {
    return (hae_sparse_attention_args){
        .q = hae_tensor_4d(d->q, s->dt, HAE_CPU, s->B, s->T, s->Hq, s->Dk),
        .k_cache = cache_view(s, d->kc, s->Dk, kslot(s)),
        .v_cache = cache_view(s, d->vc, s->Dv, vslot(s)),
        .idx = hae_tensor_3d(d->idx, HAE_I32, HAE_CPU, s->B, s->T, s->k),
        .seq_lens = hae_tensor_1d(d->lens, HAE_I32, HAE_CPU, s->B),
        .out = hae_tensor_4d(d->out, s->dt, HAE_CPU, s->B, s->T, s->Hq, s->Dv),
        .lse = hae_tensor_3d(d->lse, HAE_F32, HAE_CPU, s->B, s->T, s->Hq),
        .scale = scale,
    };
}

/* Element d of kv head g in slot `slot` of sequence b, read from the raw buffer (not through views). */
static double key_at(const sp_shape *s, const sp_data *x, int64_t b, int64_t slot, int64_t g, int64_t d) {
    return tu_get(x->kc, s->dt, (b * s->cap + slot) * kslot(s) + g * s->Dk + d);
}
static double value_at(const sp_shape *s, const sp_data *x, int64_t b, int64_t slot, int64_t g, int64_t d) {
    if (s->mla) return key_at(s, x, b, slot, 0, d);
    return tu_get(x->vc, s->dt, (b * s->cap + slot) * vslot(s) + g * s->Dv + d);
}

/* out [B, T, Hq, Dv] and lse [B, T, Hq] in float64 over the usable entries of idx. */
static void sp_oracle(const sp_shape *s, const sp_data *d, double scale, double *out, double *lse) {
    const int64_t G = s->Hq / s->Hkv;
    for (int64_t b = 0; b < s->B; b++)
        for (int64_t t = 0; t < s->T; t++) {
            const int64_t p = d->lens[b] - s->T + t;
            const int32_t *ix = d->idx + (b * s->T + t) * s->k;
            for (int64_t h = 0; h < s->Hq; h++) {
                const int64_t g = h / G, row = (b * s->T + t) * s->Hq + h;
                double mx = -INFINITY, z = 0, *o = out + row * s->Dv;
                double *sc = malloc(sizeof(double) * (size_t)s->k);
                for (int64_t j = 0; j < s->k; j++) {
                    sc[j] = -INFINITY;
                    if (ix[j] < 0 || ix[j] > p) continue;
                    double acc = 0;
                    for (int64_t e = 0; e < s->Dk; e++)
                        acc += tu_get(d->q, s->dt, row * s->Dk + e) * key_at(s, d, b, ix[j] % s->cap, g, e);
                    sc[j] = acc * scale;
                    if (sc[j] > mx) mx = sc[j];
                }
                for (int64_t e = 0; e < s->Dv; e++) o[e] = 0;
                for (int64_t j = 0; j < s->k; j++) {
                    if (sc[j] == -INFINITY) continue;
                    double w = exp(sc[j] - mx);
                    z += w;
                    for (int64_t e = 0; e < s->Dv; e++) o[e] += w * value_at(s, d, b, ix[j] % s->cap, g, e);
                }
                for (int64_t e = 0; e < s->Dv; e++) o[e] = z > 0 ? o[e] / z : 0.0;
                lse[row] = z > 0 ? mx + log(z) : INFINITY;
                free(sc);
            }
        }
}

/* Fills n elements of a cache buffer with NaN from element off. */
static void nan_fill(const sp_shape *s, void *c, int64_t off, int64_t n) {
    for (int64_t i = 0; i < n; i++) hae_store_f(c, s->dt, off + i, NAN);
}

/* Random inputs; every cache slot at or past a sequence's length, and the padding between slots,
 * holds NaN, so reading one that an index names (out of range) shows in the output. Positions past a
 * query but inside the sequence (the later queries' keys) are finite: the oracle skips them, so using
 * one shows as a mismatch. */
static void sp_fill(const sp_shape *s, sp_data *d, tu_rng *r) {
    tu_fill(d->q, s->dt, s->B * s->T * s->Hq * s->Dk, r, -1, 1);
    tu_fill(d->kc, s->dt, s->B * s->cap * kslot(s), r, -1, 1);
    if (!s->mla) tu_fill(d->vc, s->dt, s->B * s->cap * vslot(s), r, -1, 1);
    for (int64_t b = 0; b < s->B; b++) {
        d->lens[b] = (int32_t)tu_uniform(r, (double)s->T, (double)s->cap + 1);
        for (int64_t slot = 0; slot < s->cap; slot++) {
            const int64_t ko = (b * s->cap + slot) * kslot(s), vo = (b * s->cap + slot) * vslot(s);
            nan_fill(s, d->kc, ko + s->Hkv * s->Dk, s->spad);
            if (!s->mla) nan_fill(s, d->vc, vo + s->Hkv * s->Dv, s->spad);
            if (slot < d->lens[b]) continue;
            nan_fill(s, d->kc, ko, kslot(s));
            if (!s->mla) nan_fill(s, d->vc, vo, vslot(s));
        }
    }
    memset(d->out, 0xFF, (size_t)(s->B * s->T * s->Hq * s->Dv) * es(s->dt));
    memset(d->lse, 0xFF, sizeof(float) * (size_t)(s->B * s->T * s->Hq));
}

/* Index rows: distinct positions from [0, lens) (some past the query: to be skipped), -1 padding and
 * a few out-of-range values (cap + 3, -7). */
static void sp_random_idx(const sp_shape *s, sp_data *d, tu_rng *r) {
    for (int64_t b = 0; b < s->B; b++)
        for (int64_t t = 0; t < s->T; t++) {
            int32_t *ix = d->idx + (b * s->T + t) * s->k;
            int64_t L = d->lens[b], n = 0;
            for (int64_t pos = 0; pos < L && n < s->k; pos++)
                if (tu_uniform(r, 0, 1) < (double)s->k / (double)(2 * L) + 0.2) ix[n++] = (int32_t)pos;
            for (; n < s->k; n++) {
                double u = tu_uniform(r, 0, 1);
                ix[n] = u < 0.8 ? -1 : u < 0.9 ? (int32_t)(s->cap + 3) : -7;
            }
            for (int64_t i = s->k - 1; i > 0; i--) { /* shuffle */
                int64_t j = (int64_t)tu_uniform(r, 0, (double)(i + 1));
                int32_t x = ix[i];
                ix[i] = ix[j], ix[j] = x;
            }
        }
}

static void expect_matches_oracle(const sp_shape *s, sp_data *d, float scale, const char *what) {
    hae_backend *be = tu_cpu();
    hae_sparse_attention_args a = sp_args(s, d, scale);
    cr_assert_eq(hae_sparse_attention(be, &a), HAE_OK, "%s: %s", what, hae_last_error());
    int64_t n = s->B * s->T * s->Hq;
    double *ref = malloc(sizeof(double) * (size_t)(n * s->Dv)), *lref = malloc(sizeof(double) * (size_t)n);
    sp_oracle(s, d, scale, ref, lref);
    double tol = s->dt == HAE_F32 ? 1e-5 : 1e-2;
    char why[256];
    cr_expect(tu_close(d->out, s->dt, ref, n * s->Dv, tol, tol, 10 * tol, why, sizeof why),
              "%s: out, B %lld T %lld Hq %lld Hkv %lld Dk %lld Dv %lld cap %lld k %lld %s slot pad %lld%s: %s", what,
              (long long)s->B, (long long)s->T, (long long)s->Hq, (long long)s->Hkv, (long long)s->Dk,
              (long long)s->Dv, (long long)s->cap, (long long)s->k, hae_dtype_name(s->dt), (long long)s->spad,
              s->mla ? " (mla view)" : "", why);
    for (int64_t i = 0; i < n; i++) {
        if (isinf(lref[i])) {
            cr_expect(isinf(d->lse[i]) && d->lse[i] > 0, "%s: lse[%lld] = %g, want +inf (no usable index)", what,
                      (long long)i, (double)d->lse[i]);
        } else {
            cr_expect(fabs(d->lse[i] - lref[i]) <= 1e-4 * (1 + fabs(lref[i])), "%s: lse[%lld] = %.7g, want %.7g", what,
                      (long long)i, (double)d->lse[i], lref[i]);
        }
    }
    free(ref), free(lref);
    hae_backend_destroy(be);
}

Test(sparse, matches_float64_oracle_and_skips_unusable_indices) {
    const sp_shape shapes[] = {
        /* B  T  Hq Hkv Dk  Dv  cap k   dt        spad mla */
        {2, 5, 8, 2, 16, 16, 40, 12, HAE_F32, 0, false},  {1, 1, 4, 4, 32, 32, 64, 64, HAE_F32, 0, false},
        {3, 7, 6, 1, 8, 8, 30, 5, HAE_F32, 0, false},     {2, 3, 8, 2, 16, 16, 50, 20, HAE_BF16, 0, false},
        {1, 9, 2, 2, 64, 64, 9, 9, HAE_BF16, 0, false},
        {2, 4, 8, 2, 24, 40, 30, 16, HAE_F32, 0, false},  /* Dv > Dk */
        {2, 3, 4, 2, 40, 12, 30, 16, HAE_F32, 5, false},  /* Dv < Dk, strided slots */
        {2, 6, 8, 4, 16, 16, 33, 10, HAE_BF16, 3, false}, /* gqa, strided slots */
        {2, 3, 16, 1, 72, 64, 40, 24, HAE_F32, 0, true},  /* mla's absorbed shape, scaled down */
        {1, 5, 4, 1, 72, 64, 20, 30, HAE_BF16, 8, true},  /* mla view in a wider latent slot */
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        const sp_shape *s = &shapes[i];
        tu_rng r = tu_rng_make(100 + i);
        sp_data d = sp_alloc(s);
        sp_fill(s, &d, &r);
        sp_random_idx(s, &d, &r);
        expect_matches_oracle(s, &d, 1.0f / sqrtf((float)s->Dk), "random index sets");
        sp_free(&d);
    }
}

Test(sparse, empty_rows_give_zero_and_infinite_lse) {
    const sp_shape s = {2, 3, 4, 2, 8, 8, 16, 6, HAE_F32, 0, false};
    tu_rng r = tu_rng_make(7);
    sp_data d = sp_alloc(&s);
    sp_fill(&s, &d, &r);
    for (int64_t i = 0; i < s.B * s.T * s.k; i++) d.idx[i] = i % 2 ? -1 : (int32_t)(s.cap + i); /* nothing usable */
    d.idx[0] = 0;                                                                               /* row 0 has one */
    expect_matches_oracle(&s, &d, 0.5f, "empty rows");
    for (int64_t h = 0; h < s.Hq; h++) cr_expect(isfinite(d.lse[h]), "row 0 has position 0");
    for (int64_t i = s.Hq; i < s.B * s.T * s.Hq; i++) cr_expect(isinf(d.lse[i]) && d.lse[i] > 0, "lse[%lld]", (long long)i);
    for (int64_t i = s.Hq * s.Dv; i < s.B * s.T * s.Hq * s.Dv; i++)
        cr_expect_eq(((float *)d.out)[i], 0.0f, "out[%lld] of an empty row", (long long)i);
    sp_free(&d);
}

/* With every causal position listed (in any order, padded with -1), DSA's attention is full attention. */
Test(sparse, covering_indices_equal_full_attention) {
    hae_backend *be = tu_cpu();
    for (int dec = 0; dec < 2; dec++) {
        const int64_t B = 2, T = dec ? 1 : 7, Hq = 8, Hkv = 2, D = 32, pos0 = dec ? 20 : 3, cap = 32, k = 40;
        sp_shape s = {B, T, Hq, Hkv, D, D, cap, k, HAE_F32, 0, false};
        tu_rng r = tu_rng_make(55 + (uint64_t)dec);
        sp_data d = sp_alloc(&s);
        sp_fill(&s, &d, &r);
        for (int64_t b = 0; b < B; b++) d.lens[b] = (int32_t)(pos0 + T);
        tu_fill(d.kc, HAE_F32, B * cap * Hkv * D, &r, -1, 1); /* every slot finite: dense attention reads [0, p] */
        tu_fill(d.vc, HAE_F32, B * cap * Hkv * D, &r, -1, 1);
        for (int64_t b = 0; b < B; b++)
            for (int64_t t = 0; t < T; t++) {
                int32_t *ix = d.idx + (b * T + t) * k;
                for (int64_t j = 0; j < k; j++) ix[j] = j <= pos0 + t ? (int32_t)(pos0 + t - j) : -1;
            }
        hae_sparse_attention_args a = sp_args(&s, &d, 1.0f / sqrtf((float)D));
        cr_assert_eq(hae_sparse_attention(be, &a), HAE_OK, "%s", hae_last_error());
        float *dense = malloc(sizeof(float) * (size_t)(B * T * Hq * D));
        hae_attention_args f = {.q = a.q, .k_cache = a.k_cache, .v_cache = a.v_cache,
                                .out = hae_tensor_4d(dense, HAE_F32, HAE_CPU, B, T, Hq, D), .pos0 = pos0, .scale = a.scale};
        cr_assert_eq(hae_attention(be, &f), HAE_OK, "%s", hae_last_error());
        double *ref = malloc(sizeof(double) * (size_t)(B * T * Hq * D));
        for (int64_t i = 0; i < B * T * Hq * D; i++) ref[i] = dense[i];
        char why[256];
        cr_expect(tu_close(d.out, HAE_F32, ref, B * T * Hq * D, 1e-6, 1e-6, 1e-5, why, sizeof why),
                  "%s: sparse over every position vs full attention: %s", dec ? "decode" : "prefill", why);
        free(dense), free(ref);
        sp_free(&d);
    }
    hae_backend_destroy(be);
}

/* A call each bad argument must fail: HAE_ERR_INVALID, a message holding `needle`, out not written. */
typedef struct {
    const char *what, *needle;
    hae_sparse_attention_args a;
} sp_bad;

#define SP_BAD(w, nd, mutate)                                                                      \
    a = base;                                                                                      \
    mutate;                                                                                        \
    cases[n].what = w, cases[n].needle = nd, cases[n].a = a, n++

static void expect_rejected(hae_backend *be, const sp_bad *cases, int n, void *out, size_t out_bytes) {
    for (int i = 0; i < n; i++) {
        memset(out, 0x7F, out_bytes);
        cr_expect_eq(hae_sparse_attention(be, &cases[i].a), HAE_ERR_INVALID, "%s", cases[i].what);
        cr_expect(strstr(hae_last_error(), cases[i].needle), "%s: '%s' not in: %s", cases[i].what, cases[i].needle,
                  hae_last_error());
        cr_expect_eq(((uint32_t *)out)[0], 0x7F7F7F7Fu, "%s: out written", cases[i].what);
    }
}

Test(sparse, rejects_bad_arguments) {
    hae_backend *be = tu_cpu();
    const sp_shape s = {2, 3, 4, 2, 8, 8, 16, 6, HAE_F32, 0, false};
    tu_rng r = tu_rng_make(9);
    sp_data d = sp_alloc(&s);
    sp_fill(&s, &d, &r);
    sp_random_idx(&s, &d, &r);
    int32_t big_lens[2] = {17, 5}, short_lens[2] = {2, 5};
    sp_bad cases[12];
    int n = 0;
    hae_sparse_attention_args base = sp_args(&s, &d, 0.5f), a;
    SP_BAD("heads not a multiple", "multiple of kv heads", a.q.shape[2] = 3; a.out.shape[2] = 3; a.lse.shape[2] = 3);
    SP_BAD("idx of another T", "idx must be [B, T, k]", a.idx.shape[1] = 2);
    SP_BAD("idx dtype", "idx", a.idx.dtype = HAE_I64);
    SP_BAD("seq_lens length", "seq_lens must be [B]", a.seq_lens.shape[0] = 1);
    SP_BAD("seq_lens past the cache", "seq_lens[0] = 17", a.seq_lens.data = big_lens);
    SP_BAD("seq_lens shorter than T", "seq_lens[0] = 2", a.seq_lens.data = short_lens);
    SP_BAD("lse shape", "lse must be [B, T, Hq]", a.lse.shape[2] = 2);
    SP_BAD("scale", "scale", a.scale = 0.0f);
    SP_BAD("out of another Dv", "out's last dim must be v_cache's Dv", a.out = hae_tensor_4d(d.out, HAE_F32, HAE_CPU, 2, 3, 4, 4));
    SP_BAD("out of other heads", "must match q's B, T, Hq", a.out = hae_tensor_4d(d.out, HAE_F32, HAE_CPU, 2, 3, 2, 8));
    SP_BAD("v_cache of other slots", "differ in slots or kv heads", a.v_cache.shape[1] = 8);
    SP_BAD("overlapping slots", "make slots overlap", a.k_cache.stride[1] = 8; a.k_cache.stride[0] = 16 * 8);
    expect_rejected(be, cases, n, d.out, (size_t)(s.B * s.T * s.Hq * s.Dv) * 4);
    sp_free(&d);
    hae_backend_destroy(be);
}

/* ---------------------------------------------------------------- a batch in two parts */

/* Sequences [b1, B) of d in caches of their own with cap2 slots (which must hold their lengths), and their
 * selections and lengths apart: the second part of a batch split between two caches. */
typedef struct {
    void *kc, *vc;
    int32_t *idx, *lens;
    int64_t n, cap2;
} sp_part;

static sp_part sp_split(const sp_shape *s, const sp_data *d, int64_t b1, int64_t cap2) {
    sp_part p = {.n = s->B - b1, .cap2 = cap2};
    const size_t e = es(s->dt);
    p.kc = malloc((size_t)(p.n * cap2 * kslot(s)) * e);
    p.vc = s->mla ? p.kc : malloc((size_t)(p.n * cap2 * vslot(s)) * e);
    p.idx = malloc(sizeof(int32_t) * (size_t)(p.n * s->T * s->k));
    p.lens = malloc(sizeof(int32_t) * (size_t)p.n);
    cr_assert(p.kc && p.vc && p.idx && p.lens);
    for (int64_t b = 0; b < p.n; b++) {
        memcpy((char *)p.kc + (size_t)(b * cap2 * kslot(s)) * e, (char *)d->kc + (size_t)((b1 + b) * s->cap * kslot(s)) * e,
               (size_t)(cap2 * kslot(s)) * e);
        if (!s->mla)
            memcpy((char *)p.vc + (size_t)(b * cap2 * vslot(s)) * e,
                   (char *)d->vc + (size_t)((b1 + b) * s->cap * vslot(s)) * e, (size_t)(cap2 * vslot(s)) * e);
        p.lens[b] = d->lens[b1 + b];
        cr_assert_leq(p.lens[b], cap2);
    }
    memcpy(p.idx, d->idx + b1 * s->T * s->k, sizeof(int32_t) * (size_t)(p.n * s->T * s->k));
    return p;
}

static void sp_part_free(sp_part *p) {
    if (p->vc != p->kc) free(p->vc);
    free(p->kc), free(p->idx), free(p->lens);
}

/* The arguments of d split at b1: the first part in d's caches, the second in p's. */
static hae_sparse_attention_args sp_args_split(const sp_shape *s, const sp_data *d, const sp_part *p, int64_t b1,
                                               float scale) {
    hae_sparse_attention_args a = sp_args(s, d, scale);
    a.k_cache.shape[0] = a.v_cache.shape[0] = b1;
    a.idx.shape[0] = a.seq_lens.shape[0] = b1;
    sp_shape s2 = *s;
    s2.B = p->n, s2.cap = p->cap2;
    a.k_cache2 = cache_view(&s2, p->kc, s->Dk, kslot(s));
    a.v_cache2 = cache_view(&s2, p->vc, s->Dv, vslot(s));
    a.idx2 = hae_tensor_3d(p->idx, HAE_I32, HAE_CPU, p->n, s->T, s->k);
    a.seq_lens2 = hae_tensor_1d(p->lens, HAE_I32, HAE_CPU, p->n);
    return a;
}

/* Split anywhere, with the second part's caches as long as the first's or only as long as its sequences: every
 * output and lse the same bits as the batch in one cache. */
Test(sparse, a_batch_in_two_parts_equals_one) {
    const sp_shape shapes[] = {
        {3, 5, 8, 2, 16, 16, 40, 12, HAE_F32, 0, false},  {4, 1, 8, 2, 16, 16, 50, 20, HAE_BF16, 0, false},
        {3, 6, 8, 4, 16, 16, 33, 10, HAE_BF16, 3, false}, {3, 3, 16, 1, 72, 64, 40, 24, HAE_F32, 0, true},
        {2, 1, 4, 1, 72, 64, 20, 30, HAE_BF16, 8, true},
    };
    hae_backend *be = tu_cpu();
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        const sp_shape *s = &shapes[i];
        tu_rng r = tu_rng_make(300 + i);
        sp_data d = sp_alloc(s);
        sp_fill(s, &d, &r);
        sp_random_idx(s, &d, &r);
        hae_sparse_attention_args whole = sp_args(s, &d, 0.3f);
        cr_assert_eq(hae_sparse_attention(be, &whole), HAE_OK, "%s", hae_last_error());
        const size_t on = (size_t)(s->B * s->T * s->Hq * s->Dv) * es(s->dt), ln = sizeof(float) * (size_t)(s->B * s->T * s->Hq);
        void *want = malloc(on), *lwant = malloc(ln);
        cr_assert(want && lwant);
        memcpy(want, d.out, on), memcpy(lwant, d.lse, ln);
        for (int64_t b1 = 1; b1 < s->B; b1++)
            for (int tight = 0; tight < 2; tight++) {
                int64_t cap2 = s->cap;
                if (tight)
                    for (int64_t b = b1, m = 0; b < s->B; b++) cap2 = m = d.lens[b] > m ? d.lens[b] : m;
                sp_part p = sp_split(s, &d, b1, cap2);
                memset(d.out, 0xFF, on), memset(d.lse, 0xFF, ln);
                hae_sparse_attention_args a = sp_args_split(s, &d, &p, b1, 0.3f);
                cr_assert_eq(hae_sparse_attention(be, &a), HAE_OK, "%s", hae_last_error());
                cr_expect(!memcmp(d.out, want, on) && !memcmp(d.lse, lwant, ln),
                          "shape %zu split at %lld (second part's cap %lld): not the one-cache result", i,
                          (long long)b1, (long long)cap2);
                sp_part_free(&p);
            }
        free(want), free(lwant);
        sp_free(&d);
    }
    hae_backend_destroy(be);
}

Test(sparse, a_batch_in_two_parts_rejects_bad_arguments) {
    hae_backend *be = tu_cpu();
    const sp_shape s = {3, 2, 4, 2, 8, 8, 16, 6, HAE_F32, 0, false};
    tu_rng r = tu_rng_make(19);
    sp_data d = sp_alloc(&s);
    sp_fill(&s, &d, &r);
    sp_random_idx(&s, &d, &r);
    sp_part p = sp_split(&s, &d, 1, s.cap);
    int32_t big_lens[2] = {5, 17};
    hae_sparse_attention_args base = sp_args_split(&s, &d, &p, 1, 0.5f), a;
    sp_bad cases[8];
    int n = 0;
    SP_BAD("first part holds the batch", "1 <= k_cache's B < q's B", a.k_cache.shape[0] = a.v_cache.shape[0] = 3;
         a.idx.shape[0] = a.seq_lens.shape[0] = 3);
    SP_BAD("second part of the wrong B", "expected [2, cap", a.k_cache2.shape[0] = 1);
    SP_BAD("second part's idx of another T", "idx must be [B, T, k]", a.idx2.shape[1] = 1);
    SP_BAD("second part's seq_lens", "seq_lens must be [B]", a.seq_lens2.shape[0] = 1);
    SP_BAD("second part of another dtype", "share the first's", a.k_cache2.dtype = a.v_cache2.dtype = HAE_BF16);
    SP_BAD("second part with more slots", "at most its slots", a.k_cache2.shape[1] = a.v_cache2.shape[1] = 17;
         a.k_cache2.stride[0] = a.v_cache2.stride[0] = 17 * 16);
    SP_BAD("second part's lengths past its cache", "seq_lens[2] = 17", a.seq_lens2.data = big_lens);
    SP_BAD("second part's selections of another k", "share the first's", a.idx2.shape[2] = 5);
    expect_rejected(be, cases, n, d.out, (size_t)(s.B * s.T * s.Hq * s.Dv) * 4);
    sp_part_free(&p);
    sp_free(&d);
    hae_backend_destroy(be);
}

/* ---------------------------------------------------------------- mla's FP8 cache layout */

enum { MLA_D = HAE_MLA_LATENT + HAE_MLA_ROPE, FP8_B = 2, FP8_CAP = 40 };

/* Random mla rows [B, cap, 1, 576] with each 128-dim block at its own magnitude (1e-3 .. 1e2), written
 * into an FP8 cache by hae_kv_write; slots at or past a sequence's length then hold 0xFF bytes (NaN codes
 * and scales). Also the f32 cache of what the FP8 bytes decode to (NaN there too). */
static void fp8_cache(const int32_t *lens, float *src, uint8_t *fp8, float *deq, tu_rng *r) {
    hae_backend *be = tu_cpu();
    for (int64_t i = 0; i < FP8_B * FP8_CAP; i++)
        for (int d = 0; d < MLA_D; d++)
            src[i * MLA_D + d] = (float)(tu_uniform(r, -1, 1) * pow(10.0, d < 512 ? d / 128 - 3 : 0));
    memset(fp8, 0, (size_t)(FP8_B * FP8_CAP * HAE_MLA_FP8_ROW));
    hae_kv_write_args w = {.src = hae_tensor_4d(src, HAE_F32, HAE_CPU, FP8_B, FP8_CAP, 1, MLA_D),
                           .cache = hae_tensor_4d(fp8, HAE_FP8_E4M3, HAE_CPU, FP8_B, FP8_CAP, 1, HAE_MLA_FP8_ROW)};
    cr_assert_eq(hae_kv_write(be, &w), HAE_OK, "%s", hae_last_error());
    for (int64_t b = 0; b < FP8_B; b++)
        for (int64_t s = 0; s < FP8_CAP; s++) {
            uint8_t *row = fp8 + (b * FP8_CAP + s) * HAE_MLA_FP8_ROW;
            if (s >= lens[b]) memset(row, 0xFF, HAE_MLA_FP8_ROW);
            hae_mla_fp8_unpack(row, deq + (b * FP8_CAP + s) * MLA_D);
        }
    hae_backend_destroy(be);
}

Test(sparse, mla_fp8_layout_round_trip) {
    tu_rng r = tu_rng_make(31);
    const int32_t lens[FP8_B] = {FP8_CAP, FP8_CAP};
    float *src = malloc(sizeof(float) * FP8_B * FP8_CAP * MLA_D), *deq = malloc(sizeof(float) * FP8_B * FP8_CAP * MLA_D);
    uint8_t *fp8 = malloc(FP8_B * FP8_CAP * HAE_MLA_FP8_ROW);
    cr_assert(src && deq && fp8);
    fp8_cache(lens, src, fp8, deq, &r);
    int bad = 0;
    for (int64_t i = 0; i < FP8_B * FP8_CAP; i++) {
        const uint8_t *row = fp8 + i * HAE_MLA_FP8_ROW;
        const float *x = src + i * MLA_D, *y = deq + i * MLA_D;
        for (int c = 0; c < 4; c++) { /* a power-of-two scale with the block's amax in (224, 448] of it */
            float sc, amax = 0;
            memcpy(&sc, row + 512 + 4 * c, 4);
            for (int d = 0; d < 128; d++) amax = fmaxf(amax, fabsf(x[128 * c + d]));
            int e;
            cr_expect(frexpf(sc, &e) == 0.5f && amax / sc > 224 && amax / sc <= 448, "row %lld block %d: scale %g amax %g",
                      (long long)i, c, (double)sc, (double)amax);
            for (int d = 0; d < 128; d++) /* e4m3: 3 mantissa bits, steps of 2^-9 below 2^-6 */
                bad += fabsf(y[128 * c + d] - x[128 * c + d]) > fabsf(x[128 * c + d]) / 16 + sc * 0x1p-10f;
        }
        for (int d = 512; d < MLA_D; d++) bad += y[d] != hae_bf16_to_f32(hae_f32_to_bf16(x[d])); /* rope: bf16 */
    }
    cr_expect_eq(bad, 0, "%d values off by more than e4m3's (latent) or bf16's (rope) rounding", bad);
    free(src), free(deq), free(fp8);
}

/* Sparse attention over the FP8 cache is attention over what its bytes decode to (the f32 cache of
 * them, bit for bit), and within FP8's error of attention over the unquantized rows. */
Test(sparse, mla_fp8_layout_equals_its_decoded_cache) {
    hae_backend *be = tu_cpu();
    tu_rng r = tu_rng_make(32);
    const int64_t T = 3, Hq = 16, K = 12;
    const int32_t lens[FP8_B] = {25, FP8_CAP};
    float *src = malloc(sizeof(float) * FP8_B * FP8_CAP * MLA_D), *deq = malloc(sizeof(float) * FP8_B * FP8_CAP * MLA_D);
    uint8_t *fp8 = malloc(FP8_B * FP8_CAP * HAE_MLA_FP8_ROW);
    float *q = malloc(sizeof(float) * FP8_B * T * Hq * MLA_D), *o[3], lse[3][FP8_B * 3 * 16];
    int32_t idx[FP8_B * 3 * 12];
    cr_assert(src && deq && fp8 && q);
    fp8_cache(lens, src, fp8, deq, &r);
    for (int64_t i = 0; i < FP8_B * FP8_CAP; i++) /* NaN past the lengths in the unquantized cache too */
        if (i % FP8_CAP >= lens[i / FP8_CAP])
            for (int d = 0; d < MLA_D; d++) src[i * MLA_D + d] = NAN;
    tu_fill(q, HAE_F32, FP8_B * T * Hq * MLA_D, &r, -0.05, 0.05);
    for (int64_t i = 0; i < FP8_B * T * K; i++) { /* -1, positions (some past the query) and out of range */
        const int64_t b = i / (T * K);
        const double u = tu_uniform(&r, 0, 1);
        idx[i] = u < 0.1 ? -1 : u < 0.15 ? FP8_CAP + 2 : (int32_t)tu_uniform(&r, 0, lens[b]);
    }
    for (int v = 0; v < 3; v++) {
        o[v] = malloc(sizeof(float) * FP8_B * T * Hq * 512);
        memset(o[v], 0xFF, sizeof(float) * FP8_B * T * Hq * 512);
    }
    const hae_tensor kc[3] = {hae_tensor_4d(fp8, HAE_FP8_E4M3, HAE_CPU, FP8_B, FP8_CAP, 1, HAE_MLA_FP8_ROW),
                              hae_tensor_4d(deq, HAE_F32, HAE_CPU, FP8_B, FP8_CAP, 1, MLA_D),
                              hae_tensor_4d(src, HAE_F32, HAE_CPU, FP8_B, FP8_CAP, 1, MLA_D)};
    for (int v = 0; v < 3; v++) {
        hae_tensor vc = hae_tensor_4d(kc[v].data, kc[v].dtype, HAE_CPU, FP8_B, FP8_CAP, 1, 512);
        vc.stride[1] = kc[v].stride[1], vc.stride[0] = kc[v].stride[0];
        hae_sparse_attention_args a = {
            .q = hae_tensor_4d(q, HAE_F32, HAE_CPU, FP8_B, T, Hq, MLA_D), .k_cache = kc[v], .v_cache = vc,
            .idx = hae_tensor_3d(idx, HAE_I32, HAE_CPU, FP8_B, T, K), .seq_lens = hae_tensor_1d((void *)lens, HAE_I32, HAE_CPU, FP8_B),
            .out = hae_tensor_4d(o[v], HAE_F32, HAE_CPU, FP8_B, T, Hq, 512),
            .lse = hae_tensor_3d(lse[v], HAE_F32, HAE_CPU, FP8_B, T, Hq), .scale = 0.3f};
        cr_assert_eq(hae_sparse_attention(be, &a), HAE_OK, "%s", hae_last_error());
    }
    const size_t n = (size_t)(FP8_B * T * Hq * 512);
    cr_expect(memcmp(o[0], o[1], sizeof(float) * n) == 0 && memcmp(lse[0], lse[1], sizeof lse[0]) == 0,
              "FP8 bytes and their decoded f32 cache give the same out and lse");
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) num += (o[0][i] - o[2][i]) * (double)(o[0][i] - o[2][i]), den += (double)o[2][i] * o[2][i];
    cr_expect(isfinite(num) && sqrt(num / den) < 0.05, "FP8 vs unquantized: relative RMS %.3g", sqrt(num / den));
    for (int v = 0; v < 3; v++) free(o[v]);
    free(src), free(deq), free(fp8), free(q);
    hae_backend_destroy(be);
}

/* ---------------------------------------------------------------- gqa's FP8 cache layout */

enum { G8_B = 2, G8_CAP = 30, G8_HKV = 2, G8_DK = 128, G8_DV = 256 };

/* Random rows [B, cap, Hkv, D] with each 128-dim block at its own magnitude, written into gqa's FP8 layout by
 * hae_kv_write; checks each head's scales (powers of two, the block's amax in (224, 448] of them) and its zero
 * padding, and returns what the bytes decode to (NaN past a sequence's length, where the bytes are 0xFF). */
static void gqa8_cache(const int32_t *lens, int64_t D, float *src, uint8_t *fp8, float *deq, tu_rng *r) {
    hae_backend *be = tu_cpu();
    const int64_t H8 = HAE_FP8_HEAD(D), n = G8_B * G8_CAP * G8_HKV;
    for (int64_t i = 0; i < n; i++)
        for (int64_t d = 0; d < D; d++) src[i * D + d] = (float)(tu_uniform(r, -1, 1) * pow(10.0, (double)(d / 128) - 1));
    memset(fp8, 0xAB, (size_t)(n * H8));
    hae_kv_write_args w = {.src = hae_tensor_4d(src, HAE_F32, HAE_CPU, G8_B, G8_CAP, G8_HKV, D),
                           .cache = hae_tensor_4d(fp8, HAE_FP8_E4M3, HAE_CPU, G8_B, G8_CAP, G8_HKV, H8)};
    cr_assert_eq(hae_kv_write(be, &w), HAE_OK, "%s", hae_last_error());
    int bad = 0;
    for (int64_t i = 0; i < n; i++) {
        uint8_t *row = fp8 + i * H8;
        for (int64_t c = 0; c < D / 128; c++) {
            float sc, amax = 0;
            memcpy(&sc, row + D + 4 * c, 4);
            for (int d = 0; d < 128; d++) amax = fmaxf(amax, fabsf(src[i * D + 128 * c + d]));
            int e;
            bad += !(frexpf(sc, &e) == 0.5f && amax / sc > 224 && amax / sc <= 448);
        }
        for (int64_t x = D + 4 * (D / 128); x < H8; x++) bad += row[x] != 0;
        if (i / G8_HKV % G8_CAP >= lens[i / (G8_HKV * G8_CAP)]) memset(row, 0xFF, (size_t)H8);
        hae_fp8_head_unpack(row, D, deq + i * D);
        if (row[0] != 0xFF)
            for (int64_t d = 0; d < D; d++) {
                float sc;
                memcpy(&sc, row + D + 4 * (d / 128), 4);
                bad += fabsf(deq[i * D + d] - src[i * D + d]) > fabsf(src[i * D + d]) / 16 + sc * 0x1p-10f;
            }
    }
    cr_expect_eq(bad, 0, "%d scales, paddings or values off", bad);
    hae_backend_destroy(be);
}

/* Sparse attention over gqa's FP8 caches (Dk 128 with one scale a head, Dv 256 with two; 3 query heads a kv
 * head) is attention over what their bytes decode to, bit for bit, and within FP8's error of the f32 rows. */
Test(sparse, gqa_fp8_layout_equals_its_decoded_cache) {
    hae_backend *be = tu_cpu();
    tu_rng r = tu_rng_make(33);
    const int64_t T = 3, Hq = 3 * G8_HKV, K = 10, rows = G8_B * G8_CAP * G8_HKV;
    const int32_t lens[G8_B] = {17, G8_CAP};
    float *ks = malloc(sizeof(float) * rows * G8_DK), *kd = malloc(sizeof(float) * rows * G8_DK);
    float *vs = malloc(sizeof(float) * rows * G8_DV), *vd = malloc(sizeof(float) * rows * G8_DV);
    uint8_t *k8 = malloc((size_t)(rows * HAE_FP8_HEAD(G8_DK))), *v8 = malloc((size_t)(rows * HAE_FP8_HEAD(G8_DV)));
    float *q = malloc(sizeof(float) * G8_B * T * Hq * G8_DK), *o[3], lse[3][G8_B * 3 * 6];
    int32_t idx[G8_B * 3 * 10];
    cr_assert(ks && kd && vs && vd && k8 && v8 && q);
    gqa8_cache(lens, G8_DK, ks, k8, kd, &r);
    gqa8_cache(lens, G8_DV, vs, v8, vd, &r);
    for (int64_t i = 0; i < rows; i++) /* NaN past the lengths in the unquantized caches too */
        if (i / G8_HKV % G8_CAP >= lens[i / (G8_HKV * G8_CAP)]) {
            for (int d = 0; d < G8_DK; d++) ks[i * G8_DK + d] = NAN;
            for (int d = 0; d < G8_DV; d++) vs[i * G8_DV + d] = NAN;
        }
    tu_fill(q, HAE_F32, G8_B * T * Hq * G8_DK, &r, -0.5, 0.5);
    for (int64_t i = 0; i < G8_B * T * K; i++) { /* -1, positions (some past the query) and out of range */
        const double u = tu_uniform(&r, 0, 1);
        idx[i] = u < 0.1 ? -1 : u < 0.15 ? G8_CAP + 2 : (int32_t)tu_uniform(&r, 0, lens[i / (T * K)]);
    }
    const size_t n = (size_t)(G8_B * T * Hq * G8_DV);
    const hae_tensor kc[3] = {hae_tensor_4d(k8, HAE_FP8_E4M3, HAE_CPU, G8_B, G8_CAP, G8_HKV, HAE_FP8_HEAD(G8_DK)),
                              hae_tensor_4d(kd, HAE_F32, HAE_CPU, G8_B, G8_CAP, G8_HKV, G8_DK),
                              hae_tensor_4d(ks, HAE_F32, HAE_CPU, G8_B, G8_CAP, G8_HKV, G8_DK)};
    const hae_tensor vc[3] = {hae_tensor_4d(v8, HAE_FP8_E4M3, HAE_CPU, G8_B, G8_CAP, G8_HKV, HAE_FP8_HEAD(G8_DV)),
                              hae_tensor_4d(vd, HAE_F32, HAE_CPU, G8_B, G8_CAP, G8_HKV, G8_DV),
                              hae_tensor_4d(vs, HAE_F32, HAE_CPU, G8_B, G8_CAP, G8_HKV, G8_DV)};
    for (int v = 0; v < 3; v++) {
        o[v] = malloc(sizeof(float) * n);
        cr_assert(o[v]);
        memset(o[v], 0xFF, sizeof(float) * n);
        hae_sparse_attention_args a = {
            .q = hae_tensor_4d(q, HAE_F32, HAE_CPU, G8_B, T, Hq, G8_DK), .k_cache = kc[v], .v_cache = vc[v],
            .idx = hae_tensor_3d(idx, HAE_I32, HAE_CPU, G8_B, T, K), .seq_lens = hae_tensor_1d((void *)lens, HAE_I32, HAE_CPU, G8_B),
            .out = hae_tensor_4d(o[v], HAE_F32, HAE_CPU, G8_B, T, Hq, G8_DV),
            .lse = hae_tensor_3d(lse[v], HAE_F32, HAE_CPU, G8_B, T, Hq), .scale = 0.2f};
        cr_assert_eq(hae_sparse_attention(be, &a), HAE_OK, "%s", hae_last_error());
    }
    cr_expect(memcmp(o[0], o[1], sizeof(float) * n) == 0 && memcmp(lse[0], lse[1], sizeof lse[0]) == 0,
              "FP8 bytes and their decoded f32 caches give the same out and lse");
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) num += (o[0][i] - o[2][i]) * (double)(o[0][i] - o[2][i]), den += (double)o[2][i] * o[2][i];
    cr_expect(isfinite(num) && den > 0 && sqrt(num / den) < 0.05, "FP8 vs unquantized: relative RMS %.3g", sqrt(num / den));
    for (int v = 0; v < 3; v++) free(o[v]);
    free(ks), free(kd), free(vs), free(vd), free(k8), free(v8), free(q);
    hae_backend_destroy(be);
}

static void expect_error(hae_status got, hae_status want, const char *needle) {
    cr_expect_eq(got, want, "status %d, want %d (%s)", (int)got, (int)want, needle);
    cr_expect(strstr(hae_last_error(), needle), "'%s' not in: %s", needle, hae_last_error());
}

/* Arguments over FP8 caches that hae_sparse_attention takes: B 2, T 1, 4 query heads, 4 entries a row. */
static hae_sparse_attention_args fp8_args(float *q, int64_t Dk, hae_tensor kc, hae_tensor vc, float *out, int64_t Dv,
                                          int32_t *idx, int32_t *lens) {
    return (hae_sparse_attention_args){
        .q = hae_tensor_4d(q, HAE_F32, HAE_CPU, 2, 1, 4, Dk), .k_cache = kc, .v_cache = vc,
        .idx = hae_tensor_3d(idx, HAE_I32, HAE_CPU, 2, 1, 4), .seq_lens = hae_tensor_1d(lens, HAE_I32, HAE_CPU, 2),
        .out = hae_tensor_4d(out, HAE_F32, HAE_CPU, 2, 1, 4, Dv), .scale = 0.1f};
}

Test(sparse, mla_fp8_layout_rejects_bad_arguments) {
    hae_backend *be = tu_cpu();
    static _Alignas(16) uint8_t fp8[2 * 8 * HAE_MLA_FP8_ROW];
    static float q[2 * 1 * 4 * MLA_D], out[2 * 4 * 512], f[2 * 8 * MLA_D];
    static int32_t idx[2 * 4], lens[2] = {4, 4};
    const hae_tensor kc = hae_tensor_4d(fp8, HAE_FP8_E4M3, HAE_CPU, 2, 8, 1, HAE_MLA_FP8_ROW);
    hae_tensor vc = hae_tensor_4d(fp8, HAE_FP8_E4M3, HAE_CPU, 2, 8, 1, 512);
    vc.stride[1] = kc.stride[1], vc.stride[0] = kc.stride[0];
    const hae_sparse_attention_args good = fp8_args(q, MLA_D, kc, vc, out, 512, idx, lens);
    cr_expect_eq(hae_sparse_attention(be, &good), HAE_OK, "%s", hae_last_error());
    hae_sparse_attention_args a = good;
    a.k_cache = hae_tensor_4d(fp8, HAE_FP8_E4M3, HAE_CPU, 2, 8, 1, 576);
    expect_error(hae_sparse_attention(be, &a), HAE_ERR_INVALID, "mla's FP8 layout");
    a = good;
    a.v_cache.data = fp8 + 16;
    expect_error(hae_sparse_attention(be, &a), HAE_ERR_INVALID, "v_cache must view k_cache's bytes");
    a = good;
    a.v_cache.shape[3] = 576;
    expect_error(hae_sparse_attention(be, &a), HAE_ERR_INVALID, "v_cache must view");
    a = good;
    a.k_cache.stride[1] = a.v_cache.stride[1] = 660, a.k_cache.stride[0] = a.v_cache.stride[0] = 8 * 660;
    a.k_cache.shape[1] = a.v_cache.shape[1] = 7;
    expect_error(hae_sparse_attention(be, &a), HAE_ERR_INVALID, "16-byte");
    a = good;
    a.k_cache.data = a.v_cache.data = fp8 + 8; /* 8 slots from byte 8: still inside the buffer, but unaligned */
    a.k_cache.shape[1] = a.v_cache.shape[1] = 7;
    expect_error(hae_sparse_attention(be, &a), HAE_ERR_INVALID, "16-byte");
    hae_attention_args d = {.q = good.q, .k_cache = kc, .v_cache = vc, .out = good.out, .scale = 0.1f};
    expect_error(hae_attention(be, &d), HAE_ERR_UNSUPPORTED, "read by hae_sparse_attention only");
    hae_kv_write_args w = {.src = hae_tensor_4d(f, HAE_F32, HAE_CPU, 2, 8, 1, 512), .cache = kc};
    expect_error(hae_kv_write(be, &w), HAE_ERR_INVALID, "512 latent + 64 rope");
    w.src = hae_tensor_4d(f, HAE_F32, HAE_CPU, 2, 4, 2, MLA_D);
    expect_error(hae_kv_write(be, &w), HAE_ERR_INVALID, "kv heads differ");
    hae_backend_destroy(be);
}

Test(sparse, gqa_fp8_layout_rejects_bad_arguments) {
    hae_backend *be = tu_cpu();
    enum { H8 = HAE_FP8_HEAD(128) };
    static _Alignas(16) uint8_t k8[2 * 8 * (2 * H8 + 8)], v8[2 * 8 * 2 * H8];
    static float q[2 * 1 * 4 * 128], out[2 * 4 * 128], f[2 * 8 * 2 * 128];
    static int32_t idx[2 * 4], lens[2] = {4, 4};
    const hae_sparse_attention_args good = fp8_args(q, 128, hae_tensor_4d(k8, HAE_FP8_E4M3, HAE_CPU, 2, 8, 2, H8),
                                                    hae_tensor_4d(v8, HAE_FP8_E4M3, HAE_CPU, 2, 8, 2, H8), out, 128, idx,
                                                    lens);
    cr_expect_eq(hae_sparse_attention(be, &good), HAE_OK, "%s", hae_last_error());
    hae_sparse_attention_args a = good;
    a.k_cache = hae_tensor_4d(k8, HAE_FP8_E4M3, HAE_CPU, 2, 8, 2, 128);
    expect_error(hae_sparse_attention(be, &a), HAE_ERR_INVALID, "gqa's, [2, cap, Hkv, D + 16]");
    a = good;
    a.q = hae_tensor_4d(q, HAE_F32, HAE_CPU, 2, 1, 4, 64), a.out = hae_tensor_4d(out, HAE_F32, HAE_CPU, 2, 1, 4, 64);
    a.k_cache = hae_tensor_4d(k8, HAE_FP8_E4M3, HAE_CPU, 2, 8, 2, 80); /* heads of 64: no FP8 layout */
    a.v_cache = hae_tensor_4d(v8, HAE_FP8_E4M3, HAE_CPU, 2, 8, 2, 80);
    expect_error(hae_sparse_attention(be, &a), HAE_ERR_INVALID, "D here: 64");
    a = good;
    a.v_cache = a.k_cache;
    expect_error(hae_sparse_attention(be, &a), HAE_ERR_INVALID, "v_cache must be an fp8-e4m3 cache of its own");
    a = good;
    a.v_cache = hae_tensor_4d(f, HAE_F32, HAE_CPU, 2, 8, 2, 128);
    expect_error(hae_sparse_attention(be, &a), HAE_ERR_INVALID, "cache of its own");
    a = good;
    a.k_cache.stride[1] = 2 * H8 + 8, a.k_cache.stride[0] = 8 * (2 * H8 + 8); /* slots 8 bytes off the 16 */
    expect_error(hae_sparse_attention(be, &a), HAE_ERR_INVALID, "16-byte aligned");
    a = good;
    a.v_cache.shape[2] = 1, a.v_cache.stride[1] = H8, a.v_cache.stride[0] = 8 * H8;
    expect_error(hae_sparse_attention(be, &a), HAE_ERR_INVALID, "differ in slots or kv heads");
    a = good;
    a.q.shape[2] = a.out.shape[2] = 3;
    expect_error(hae_sparse_attention(be, &a), HAE_ERR_INVALID, "multiple of kv heads");
    hae_kv_write_args w = {.src = hae_tensor_4d(f, HAE_F32, HAE_CPU, 2, 8, 2, 128), .cache = good.k_cache};
    cr_expect_eq(hae_kv_write(be, &w), HAE_OK, "%s", hae_last_error());
    w.src.shape[3] = 96, w.src.stride[2] = 96, w.src.stride[1] = 192, w.src.stride[0] = 8 * 192;
    expect_error(hae_kv_write(be, &w), HAE_ERR_INVALID, "D here: 96");
    hae_backend_destroy(be);
}

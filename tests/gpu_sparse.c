/* GPU tests of DSA's sparse attention: hae_sparse_attention on CUDA held to the CPU backend on the same
 * inputs, both attention forms (gqa; mla's absorbed shape with v_cache a view of the latent k_cache).
 *
 * Every case makes fresh seeded random inputs (never zeros), puts the same bytes on both backends,
 * POISONS out and lse (0xFF bytes: NaN) including the padding between strided rows and guard elements
 * past the end, runs both and compares the whole buffers: NaN/Inf positions first, then the max abs
 * error and ||gpu - cpu|| / ||cpu||. Cache slots past a sequence's length and the padding inside
 * strided slots hold NaN, so a read of anything an index does not name shows. Index rows mix distinct
 * positions (some past the query: skipped), -1, negative values, values past the query, >= cap and
 * INT32_MAX, and some rows have no usable index at all (out = 0, lse = +inf). Every case with two or more
 * sequences runs again on CUDA with its batch split between two caches: the same bits as the whole call.
 *
 * Tolerances: f32 1e-5 relative (fp32 math on both sides in another order; past 4096 indices times
 * sqrt(k / 4096), as the CPU's own sequential sums drift like sqrt(n)). bf16 1e-2 relative: a bf16
 * output rounds to 2^-9 relative, and bf16 q and caches take the tensor-core kernel, which rounds the
 * softmax weights P to bf16 (2^-9 relative each) before P V. lse is f32 math on both sides (the
 * tensor-core kernel sums the unrounded weights): 1e-5, widened like f32 outputs. Every message names
 * the case, the shapes, dtypes, strides and the seed. main() is tests/main_gpu.c's. */
#include "internal.h"
#include "gpu_pair.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CTX_N 480
#define GUARD 37 /* poisoned elements past the end of out and lse */

TestSuite(gpu_sparse, .init = gpu_pair_setup, .fini = gpu_pair_teardown, .timeout = 600);

/* ---------------------------------------------------------------- cases */

typedef enum {
    IDX_RANDOM,   /* distinct positions of the sequence mixed with unusable entries; some rows empty */
    IDX_COVERING, /* every position 0..p, then unusable entries (k may exceed the cache) */
    IDX_EMPTY,    /* only unusable entries in every other row */
} idx_kind;

typedef struct {
    const char *what;
    int64_t B, T, Hq, Hkv, Dk, Dv, cap, k;
    hae_dtype q, kv, out;
    int64_t pad;  /* elements after every q, out, idx and lse row (strided rows) and every sequence */
    int64_t spad; /* elements after the heads of a cache slot (strided slots) */
    bool mla;     /* v_cache = the first Dv dims of k_cache (Hkv 1) */
    bool lse;
    idx_kind idx;
} sp_case;

/* Host inputs of one case; strides in elements. */
typedef struct {
    int64_t q1, q0, o1, o0, i1, i0, e1, e0, kslot, vslot;
    size_t nq, nk, nv, no, ni, ne; /* elements of each buffer (out and lse with their guard) */
    void *q, *kc, *vc;
    int32_t *idx, *lens;
} sp_host;

static void layout(const sp_case *c, sp_host *h) {
    h->q1 = c->Hq * c->Dk + c->pad, h->q0 = c->T * h->q1 + c->pad;
    h->o1 = c->Hq * c->Dv + c->pad, h->o0 = c->T * h->o1 + c->pad;
    h->i1 = c->k + c->pad, h->i0 = c->T * h->i1 + c->pad;
    h->e1 = c->Hq + c->pad, h->e0 = c->T * h->e1 + c->pad;
    h->kslot = c->Hkv * c->Dk + c->spad;
    h->vslot = c->mla ? h->kslot : c->Hkv * c->Dv + c->spad;
    h->nq = (size_t)(c->B * h->q0);
    h->nk = (size_t)(c->B * c->cap * h->kslot);
    h->nv = c->mla ? 0 : (size_t)(c->B * c->cap * h->vslot);
    h->no = (size_t)(c->B * h->o0 + GUARD);
    h->ni = (size_t)(c->B * h->i0);
    h->ne = (size_t)(c->B * h->e0 + GUARD);
}

static void nan_fill(hae_dtype dt, void *p, int64_t off, int64_t n) {
    for (int64_t i = 0; i < n; i++) hae_store_f(p, dt, off + i, NAN);
}

/* Random q and caches; NaN in the slot padding and in slots at or past each sequence's length. */
static void make_inputs(const sp_case *c, sp_host *h, tu_rng *r) {
    layout(c, h);
    const size_t eq = hae_dtype_size(c->q), ekv = hae_dtype_size(c->kv);
    h->q = host_poison(eq * h->nq);
    fill_rows(h->q, c->q, c->B, c->T, c->Hq * c->Dk, h->q0, h->q1, r, -1, 1);
    h->kc = malloc(ekv * h->nk);
    h->vc = c->mla ? NULL : malloc(ekv * h->nv);
    cr_assert(h->kc && (c->mla || h->vc));
    tu_fill(h->kc, c->kv, (int64_t)h->nk, r, -1, 1);
    if (!c->mla) tu_fill(h->vc, c->kv, (int64_t)h->nv, r, -1, 1);
    h->lens = malloc(sizeof(int32_t) * (size_t)c->B);
    for (int64_t b = 0; b < c->B; b++) {
        h->lens[b] = (int32_t)tu_uniform(r, (double)c->T, (double)c->cap + 1);
        if (c->idx == IDX_COVERING) h->lens[b] = (int32_t)c->cap;
        for (int64_t s = 0; s < c->cap; s++) {
            const int64_t ko = (b * c->cap + s) * h->kslot, vo = (b * c->cap + s) * h->vslot;
            const bool dead = s >= h->lens[b];
            nan_fill(c->kv, h->kc, dead ? ko : ko + c->Hkv * c->Dk, dead ? h->kslot : c->spad);
            if (!c->mla) nan_fill(c->kv, h->vc, dead ? vo : vo + c->Hkv * c->Dv, dead ? h->vslot : c->spad);
        }
    }
    h->idx = host_poison(sizeof(int32_t) * h->ni);
    int32_t *perm = malloc(sizeof(int32_t) * (size_t)c->cap);
    cr_assert(perm != NULL);
    const int32_t junk[] = {-1, -1, -1, -7, (int32_t)c->cap, (int32_t)c->cap + 3, INT32_MAX, INT32_MIN};
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t t = 0; t < c->T; t++) {
            int32_t *ix = h->idx + b * h->i0 + t * h->i1;
            const int64_t L = h->lens[b], p = L - c->T + t;
            const bool empty = (c->idx == IDX_EMPTY && (b + t) % 2 == 1) || (c->idx == IDX_RANDOM && (b * c->T + t) % 7 == 3);
            int64_t n = 0;
            if (c->idx == IDX_COVERING) {
                for (int64_t s = p; s >= 0 && n < c->k; s--) ix[n++] = (int32_t)s;
            } else if (!empty) {
                for (int64_t s = 0; s < L; s++) perm[s] = (int32_t)s; /* a partial shuffle: distinct positions */
                const int64_t want = c->k - c->k / 8 < L ? c->k - c->k / 8 : L;
                for (; n < want; n++) {
                    const int64_t j = n + (int64_t)tu_uniform(r, 0, (double)(L - n));
                    const int32_t x = perm[n];
                    perm[n] = perm[j], perm[j] = x;
                    ix[n] = perm[n];
                }
            } else {
                for (; n < c->k && p + 1 + n < c->cap; n++) ix[n] = (int32_t)(p + 1 + n); /* past the query */
            }
            for (; n < c->k; n++) ix[n] = junk[(int)tu_uniform(r, 0, sizeof junk / sizeof junk[0])];
            if (c->idx != IDX_COVERING)
                for (int64_t i = c->k - 1; i > 0; i--) { /* unusable entries anywhere in the row */
                    const int64_t j = (int64_t)tu_uniform(r, 0, (double)(i + 1));
                    const int32_t x = ix[i];
                    ix[i] = ix[j], ix[j] = x;
                }
        }
    free(perm);
}

static void free_inputs(sp_host *h) { free(h->q), free(h->kc), free(h->vc), free(h->idx), free(h->lens); }

static double tol_out(const sp_case *c) {
    if (c->out == HAE_BF16 || (c->q == HAE_BF16 && c->kv == HAE_BF16)) return 1e-2;
    return c->k > 4096 ? 1e-5 * sqrt((double)c->k / 4096.0) : 1e-5;
}
static double tol_lse(const sp_case *c) { return c->k > 4096 ? 1e-5 * sqrt((double)c->k / 4096.0) : 1e-5; }

static void describe(const sp_case *c, uint64_t seed, char *ctx, size_t n) {
    snprintf(ctx, n,
             "%s: B %lld T %lld Hq %lld Hkv %lld Dk %lld Dv %lld cap %lld k %lld, q %s kv %s out %s, row pad %lld, "
             "slot pad %lld%s, lse %s, seed %llu",
             c->what, (long long)c->B, (long long)c->T, (long long)c->Hq, (long long)c->Hkv, (long long)c->Dk,
             (long long)c->Dv, (long long)c->cap, (long long)c->k, hae_dtype_name(c->q), hae_dtype_name(c->kv),
             hae_dtype_name(c->out), (long long)c->pad, (long long)c->spad, c->mla ? ", v a view of k (mla)" : "",
             c->lse ? "yes" : "no", (unsigned long long)seed);
}

/* The pbufs of one case and the args viewing them on one side. */
typedef struct {
    pbuf q, k, v, idx, lens, out, lse;
} sp_bufs;

static hae_sparse_attention_args args_of(const sp_case *c, const sp_host *h, const sp_bufs *p, bool gpu) {
    const hae_device dev = gpu ? HAE_CUDA : HAE_CPU;
#define SIDE(pb) (gpu ? (pb).g : (pb).c)
    const int64_t sq[4] = {c->B, c->T, c->Hq, c->Dk}, stq[4] = {h->q0, h->q1, c->Dk, 1};
    const int64_t sk[4] = {c->B, c->cap, c->Hkv, c->Dk}, stk[4] = {c->cap * h->kslot, h->kslot, c->Dk, 1};
    const int64_t sv[4] = {c->B, c->cap, c->Hkv, c->Dv}, stv[4] = {c->cap * h->vslot, h->vslot, c->Dv, 1};
    const int64_t si[3] = {c->B, c->T, c->k}, sti[3] = {h->i0, h->i1, 1};
    const int64_t sl[1] = {c->B};
    const int64_t so[4] = {c->B, c->T, c->Hq, c->Dv}, sto[4] = {h->o0, h->o1, c->Dv, 1};
    const int64_t se[3] = {c->B, c->T, c->Hq}, ste[3] = {h->e0, h->e1, 1};
    hae_sparse_attention_args a = {
        .q = tv(SIDE(p->q), c->q, dev, 4, sq, stq),
        .k_cache = tv(SIDE(p->k), c->kv, dev, 4, sk, stk),
        .v_cache = tv(c->mla ? SIDE(p->k) : SIDE(p->v), c->kv, dev, 4, sv, stv),
        .idx = tv(SIDE(p->idx), HAE_I32, dev, 3, si, sti),
        .seq_lens = tv(SIDE(p->lens), HAE_I32, dev, 1, sl, NULL),
        .out = tv(SIDE(p->out), c->out, dev, 4, so, sto),
        .lse = tv(c->lse ? SIDE(p->lse) : NULL, HAE_F32, dev, 3, se, ste),
        .scale = 1.0f / sqrtf((float)c->Dk),
    };
#undef SIDE
    return a;
}

static sp_bufs upload(const sp_case *c, const sp_host *h) {
    sp_bufs p;
    memset(&p, 0, sizeof p);
    p.q = pb_new(h->q, hae_dtype_size(c->q) * h->nq);
    p.k = pb_new(h->kc, hae_dtype_size(c->kv) * h->nk);
    if (!c->mla) p.v = pb_new(h->vc, hae_dtype_size(c->kv) * h->nv);
    p.idx = pb_new(h->idx, sizeof(int32_t) * h->ni);
    p.lens = pb_new(h->lens, sizeof(int32_t) * (size_t)c->B);
    p.out = pb_poison(hae_dtype_size(c->out) * h->no);
    p.lse = pb_poison(sizeof(float) * h->ne);
    return p;
}

static void free_bufs(const sp_case *c, sp_bufs *p) {
    pb_free(&p->q), pb_free(&p->k), pb_free(&p->idx), pb_free(&p->lens), pb_free(&p->out), pb_free(&p->lse);
    if (!c->mla) pb_free(&p->v);
}

/* The same GPU call with sequences [B / 2, B) moved to caches, selections and lengths of their own (the batch
 * split between two caches, as dsa K/V split between the tiers): out and lse must be the whole call's bits.
 * ag is the whole call, already run, its outputs in out and lse; k (v, unless V views K), idx and lens hold
 * its inputs on both sides, each sequence's rows contiguous. */
static void expect_split_same(const hae_sparse_attention_args *ag, pbuf *k, pbuf *v, pbuf *idx, pbuf *lens,
                              const pbuf *out, const pbuf *lse, const char *ctx) {
    const int64_t B = ag->q.shape[0], b1 = B / 2, n2 = B - b1;
    if (B < 2) return;
    const size_t ke = hae_dtype_size(ag->k_cache.dtype), kseq = (size_t)ag->k_cache.stride[0] * ke,
                 vseq = (size_t)ag->v_cache.stride[0] * ke, iseq = (size_t)ag->idx.stride[0] * sizeof(int32_t);
    pbuf k2 = pb_new((char *)k->c + b1 * kseq, n2 * kseq), i2 = pb_new((char *)idx->c + b1 * iseq, n2 * iseq),
         l2 = pb_new((int32_t *)lens->c + b1, sizeof(int32_t) * (size_t)n2), v2 = {0};
    if (v) v2 = pb_new((char *)v->c + b1 * vseq, n2 * vseq);
    pbuf o2 = pb_poison(out->bytes), e2 = pb_poison(lse ? lse->bytes : 4);
    hae_sparse_attention_args a = *ag;
    a.k_cache.shape[0] = a.v_cache.shape[0] = a.idx.shape[0] = a.seq_lens.shape[0] = b1;
    a.k_cache2 = a.k_cache, a.v_cache2 = a.v_cache, a.idx2 = a.idx, a.seq_lens2 = a.seq_lens;
    a.k_cache2.shape[0] = a.v_cache2.shape[0] = a.idx2.shape[0] = a.seq_lens2.shape[0] = n2;
    a.k_cache2.data = k2.g;
    a.v_cache2.data = v ? v2.g : (char *)k2.g + ((char *)ag->v_cache.data - (char *)ag->k_cache.data);
    a.idx2.data = i2.g, a.seq_lens2.data = l2.g;
    a.out.data = o2.g;
    if (lse) a.lse.data = e2.g;
    if (gpu_ran(hae_sparse_attention(g_gpu, &a), "cuda", "sparse_attention (two parts)", ctx) &&
        gpu_done("sparse_attention (two parts)", ctx)) {
        void *w = pb_fetch(out), *g = pb_fetch(&o2);
        cr_expect(!memcmp(w, g, out->bytes), "%s: out of the batch split at sequence %lld differs from the whole "
                  "call's", ctx, (long long)b1);
        free(w), free(g);
        if (lse) {
            w = pb_fetch(lse), g = pb_fetch(&e2);
            cr_expect(!memcmp(w, g, lse->bytes), "%s: lse of the split batch differs from the whole call's", ctx);
            free(w), free(g);
        }
    }
    pb_free(&k2), pb_free(&i2), pb_free(&l2), pb_free(&o2), pb_free(&e2);
    if (v) pb_free(&v2);
}

static void run_case(const sp_case *c, uint64_t seed) {
    char ctx[CTX_N];
    describe(c, seed, ctx, sizeof ctx);
    tu_rng r = tu_rng_make(seed);
    sp_host h;
    make_inputs(c, &h, &r);
    sp_bufs p = upload(c, &h);
    hae_sparse_attention_args ac = args_of(c, &h, &p, false), ag = args_of(c, &h, &p, true);
    if (gpu_ran(hae_sparse_attention(g_cpu, &ac), "cpu", "sparse_attention", ctx) &&
        gpu_ran(hae_sparse_attention(g_gpu, &ag), "cuda", "sparse_attention", ctx) &&
        gpu_ran(hae_backend_sync(g_gpu), "cuda (sync after the op)", "sparse_attention", ctx)) {
        pb_compare("sparse_attention: out", ctx, &p.out, c->out, tol_out(c));
        pb_compare("sparse_attention: lse", ctx, &p.lse, HAE_F32, tol_lse(c));
        expect_split_same(&ag, &p.k, c->mla ? NULL : &p.v, &p.idx, &p.lens, &p.out, c->lse ? &p.lse : NULL, ctx);
    }
    free_bufs(c, &p);
    free_inputs(&h);
}

#define BF HAE_BF16
#define F32 HAE_F32

Test(gpu_sparse, gqa) {
    static const sp_case cases[] = {
        /* what                                B  T  Hq  Hkv Dk   Dv   cap  k    q    kv   out  pad spad mla lse  idx */
        {"gqa 4, decode", 3, 1, 32, 8, 128, 128, 600, 256, BF, BF, BF, 8, 0, false, true, IDX_RANDOM},
        {"gqa 8, prefill, k not a tile multiple", 2, 5, 16, 2, 128, 128, 300, 130, BF, BF, F32, 0, 0, false, false, IDX_RANDOM},
        {"mha, D 64", 2, 3, 4, 4, 64, 64, 200, 64, BF, BF, BF, 16, 0, false, true, IDX_RANDOM},
        {"gqa 4, D 64, k 1", 2, 4, 8, 2, 64, 64, 40, 1, BF, BF, F32, 0, 0, false, true, IDX_RANDOM},
        {"gqa 4, f32", 2, 4, 16, 4, 128, 128, 300, 100, F32, F32, F32, 3, 0, false, true, IDX_RANDOM},
        {"gqa 8, f32, k > cap", 2, 1, 16, 2, 64, 64, 50, 80, F32, F32, F32, 0, 0, false, true, IDX_COVERING},
        {"bf16, k > cap, covering", 2, 3, 8, 2, 128, 128, 70, 100, BF, BF, BF, 0, 0, false, true, IDX_COVERING},
        {"mha f32, D 64, prefill", 1, 6, 4, 4, 64, 64, 100, 40, F32, F32, BF, 0, 0, false, true, IDX_RANDOM},
        {"bf16 with unaligned q rows", 2, 3, 8, 2, 128, 128, 200, 90, BF, BF, F32, 3, 0, false, true, IDX_RANDOM},
        {"bf16, strided slots, group 16", 2, 2, 16, 1, 128, 128, 150, 120, BF, BF, BF, 0, 8, false, true, IDX_RANDOM},
        {"bf16, strided slots, odd slot pad", 1, 2, 8, 2, 128, 128, 150, 70, BF, BF, F32, 0, 3, false, true, IDX_RANDOM},
        {"mqa, group 32 (64-row CTAs)", 2, 2, 32, 1, 128, 128, 400, 200, BF, BF, F32, 8, 0, false, true, IDX_RANDOM},
        {"mqa, group 24, D 64 (two head blocks)", 2, 2, 24, 1, 64, 64, 300, 150, BF, BF, BF, 0, 0, false, true, IDX_RANDOM},
        {"f32 q, bf16 caches, D 80", 2, 3, 8, 2, 80, 80, 100, 50, F32, BF, F32, 0, 0, false, true, IDX_RANDOM},
        {"D 2", 2, 3, 4, 2, 2, 2, 20, 12, F32, F32, F32, 1, 0, false, true, IDX_RANDOM},
        {"Dk 40 Dv 24 f32", 2, 3, 8, 2, 40, 24, 60, 30, F32, F32, F32, 0, 5, false, true, IDX_RANDOM},
        {"empty rows, bf16", 2, 4, 8, 2, 128, 128, 100, 70, BF, BF, BF, 0, 0, false, true, IDX_EMPTY},
        {"empty rows, f32", 2, 4, 8, 2, 64, 64, 100, 70, F32, F32, F32, 0, 0, false, true, IDX_EMPTY},
        {"decode, long index rows (split)", 1, 1, 8, 2, 128, 128, 5000, 4100, BF, BF, F32, 0, 0, false, true, IDX_RANDOM},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i], 3000 + i);
}

Test(gpu_sparse, mla) {
    static const sp_case cases[] = {
        /* what                                B  T  Hq   Hkv Dk   Dv   cap   k     q    kv   out  pad spad mla  lse  idx */
        {"mla 16 heads, decode, top-2048 (split)", 2, 1, 16, 1, 576, 512, 2100, 2048, BF, BF, BF, 0, 0, true, true, IDX_RANDOM},
        {"mla 128 heads, decode (split)", 2, 1, 128, 1, 576, 512, 700, 512, BF, BF, F32, 8, 0, true, true, IDX_RANDOM},
        {"mla 128 heads, prefill, wider latent slot", 1, 3, 128, 1, 576, 512, 300, 200, BF, BF, BF, 0, 8, true, true, IDX_RANDOM},
        {"mla 128 heads, 70 queries (no split)", 1, 70, 128, 1, 576, 512, 256, 128, BF, BF, BF, 0, 0, true, false, IDX_RANDOM},
        {"mla 64 heads, empty rows", 2, 2, 64, 1, 576, 512, 200, 100, BF, BF, F32, 0, 0, true, true, IDX_EMPTY},
        {"mla 16 heads, f32", 2, 2, 16, 1, 576, 512, 150, 90, F32, F32, F32, 0, 0, true, true, IDX_RANDOM},
        {"mla 16 heads, covering, k > cap", 1, 2, 16, 1, 576, 512, 60, 100, BF, BF, F32, 0, 0, true, true, IDX_COVERING},
        {"mla shapes, separate value cache", 1, 2, 16, 1, 576, 512, 100, 70, BF, BF, BF, 0, 0, false, true, IDX_RANDOM},
        {"mla 40 heads (partial head block), odd out rows", 2, 2, 40, 1, 576, 512, 300, 150, BF, BF, BF, 3, 0, true, true, IDX_RANDOM},
        {"mla 96 heads (two head blocks), f32 out", 1, 3, 96, 1, 576, 512, 400, 300, BF, BF, F32, 0, 0, true, true, IDX_RANDOM},
        {"mla 128 heads, covering, trailing empty tiles", 1, 2, 128, 1, 576, 512, 60, 300, BF, BF, BF, 0, 0, true, true, IDX_COVERING},
        {"mla 128 heads, decode, top-2048 (split)", 1, 1, 128, 1, 576, 512, 2100, 2048, BF, BF, BF, 0, 0, true, true, IDX_RANDOM},
        {"mla 64 heads, odd f32 out rows, wider slot", 2, 2, 64, 1, 576, 512, 150, 100, BF, BF, F32, 1, 16, true, true, IDX_RANDOM},
        {"mla 128 heads, few usable entries (whole tiles left out between others)", 2, 2, 128, 1, 576, 512, 40, 512, BF, BF, BF, 0, 0, true, true, IDX_RANDOM},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i], 4000 + i);
}

/* mla's FP8 cache layout (hae.h): hae_kv_write's bytes on CUDA equal the CPU's bit for bit (codes, scales, rope),
 * and sparse attention over them matches the CPU (bf16 q: the wgmma kernel decoding FP8 into its bf16 tiles, 96,
 * 128 and 256 heads with two CTAs sharing each tile's decode; else the CUDA-core kernel). Slots past a sequence's
 * length hold 0xFF bytes (NaN codes and scales), so reading one an index does not name shows. hae_kv_write's scales
 * are powers of two, so the wgmma kernel's bf16 tiles hold code * scale exactly; in the `odd` cases half the
 * tokens' scales are not (another writer's): the tiles then round it, as a bf16 cache would (the lse bound widens
 * to match). In the `tiny` case every latent block is one large value and 127 subnormal codes, and q weighs only
 * the latter: a decode that flushed subnormals would give S = 0 and miss the lse bound. */
Test(gpu_sparse, mla_fp8) {
    static const struct {
        const char *what;
        int64_t B, T, Hq, cap, k;
        hae_dtype q, out;
        bool odd, tiny, holes; /* holes: whole 64-entry tiles without a usable entry (skipped) */
    } cases[] = {
        {"fp8 64 heads, decode (split)", 2, 1, 64, 700, 512, BF, BF, false, false, false},
        {"fp8 128 heads, prefill", 1, 3, 128, 300, 200, BF, F32, false, false, false},
        {"fp8 128 heads, top-2048", 1, 1, 128, 2100, 2048, BF, BF, false, false, false},
        {"fp8 16 heads (64-row MMAs, 48 masked)", 2, 2, 16, 150, 90, BF, BF, false, false, false},
        {"fp8 8 heads, prefill", 1, 9, 8, 400, 256, BF, BF, false, false, false},
        {"fp8 32 heads, f32 q (CUDA cores)", 1, 2, 32, 120, 64, F32, F32, false, false, false},
        {"fp8 128 heads, odd scales", 2, 1, 128, 900, 640, BF, BF, true, false, false},
        {"fp8 64 heads, odd scales, prefill", 1, 4, 64, 300, 256, BF, F32, true, false, false},
        {"fp8 128 heads, subnormal codes", 2, 1, 128, 600, 384, BF, BF, false, true, false},
        {"fp8 128 heads, unusable tiles skipped", 2, 1, 128, 1500, 1024, BF, BF, false, false, true},
        {"fp8 96 heads (a CTA pair, one block partial)", 2, 1, 96, 400, 256, BF, BF, false, false, false},
        {"fp8 256 heads, prefill (two CTA pairs a query)", 1, 2, 256, 500, 320, BF, BF, false, false, false},
        {"fp8 16 heads, unusable tiles skipped, prefill", 1, 3, 16, 900, 640, BF, BF, false, false, true},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const int64_t B = cases[ci].B, T = cases[ci].T, Hq = cases[ci].Hq, cap = cases[ci].cap, K = cases[ci].k;
        const int64_t D = HAE_MLA_LATENT + HAE_MLA_ROPE, R = HAE_MLA_FP8_ROW;
        char ctx[CTX_N];
        snprintf(ctx, sizeof ctx, "%s: B %lld T %lld Hq %lld cap %lld k %lld, q %s, out %s, seed %zu", cases[ci].what,
                 (long long)B, (long long)T, (long long)Hq, (long long)cap, (long long)K,
                 hae_dtype_name(cases[ci].q), hae_dtype_name(cases[ci].out), 5000 + ci);
        tu_rng r = tu_rng_make(5000 + ci);
        /* the rows written: bf16, each 128-dim latent block at its own magnitude */
        uint16_t *src = malloc(sizeof(uint16_t) * (size_t)(B * cap * D));
        cr_assert(src);
        for (int64_t i = 0; i < B * cap * D; i++) {
            const int64_t d = i % D;
            /* tiny: scale 2^-2 (for 100), codes below 2^-6 scale = 0.0039 subnormal */
            const double v = !cases[ci].tiny ? tu_uniform(&r, -1, 1) * pow(10.0, d < 512 ? (double)(d / 128) - 2 : 0)
                             : d >= 512 ? tu_uniform(&r, -1, 1) : d % 128 ? tu_uniform(&r, -0.003, 0.003) : 100.0;
            src[i] = hae_f32_to_bf16((float)v);
        }
        pbuf ps = pb_new(src, sizeof(uint16_t) * (size_t)(B * cap * D)), pk = pb_poison((size_t)(B * cap * R));
        const int64_t sshape[4] = {B, cap, 1, D}, kshape[4] = {B, cap, 1, R}, vshape[4] = {B, cap, 1, 512},
                      kstride[4] = {cap * R, R, R, 1};
        bool ok = true;
        for (int g = 0; g < 2 && ok; g++) {
            const hae_device dev = g ? HAE_CUDA : HAE_CPU;
            hae_kv_write_args w = {.src = tv(g ? ps.g : ps.c, HAE_BF16, dev, 4, sshape, NULL),
                                   .cache = tv(g ? pk.g : pk.c, HAE_FP8_E4M3, dev, 4, kshape, NULL)};
            ok = gpu_ran(hae_kv_write(g ? g_gpu : g_cpu, &w), g ? "cuda" : "cpu", "kv_write (fp8)", ctx);
        }
        if (ok && gpu_done("kv_write (fp8)", ctx)) ok = pb_compare("kv_write (fp8): cache bytes", ctx, &pk, HAE_FP8_E4M3, -1);
        int32_t *lens = malloc(sizeof(int32_t) * (size_t)B), *idx = malloc(sizeof(int32_t) * (size_t)(B * T * K));
        uint8_t *kh = malloc((size_t)(B * cap * R));
        cr_assert(lens && idx && kh);
        memcpy(kh, pk.c, (size_t)(B * cap * R));
        for (int64_t t = 0; cases[ci].odd && t < B * cap; t++) {
            if (tu_uniform(&r, 0, 1) < 0.5) continue;
            float sc[HAE_MLA_LATENT / 128];
            memcpy(sc, kh + t * R + HAE_MLA_FP8_SCALES, sizeof sc);
            for (int c = 0; c < HAE_MLA_LATENT / 128; c++) sc[c] *= (float)tu_uniform(&r, 1.1, 1.9);
            memcpy(kh + t * R + HAE_MLA_FP8_SCALES, sc, sizeof sc);
        }
        for (int64_t b = 0; b < B; b++) {
            lens[b] = (int32_t)tu_uniform(&r, (double)T + 10, (double)cap + 1);
            memset(kh + (b * cap + lens[b]) * R, 0xFF, (size_t)((cap - lens[b]) * R));
        }
        for (int64_t i = 0; i < B * T * K; i++) {
            const double u = tu_uniform(&r, 0, 1);
            idx[i] = u < 0.1 ? -1 : u < 0.13 ? (int32_t)cap + 5 : (int32_t)tu_uniform(&r, 0, (double)lens[i / (T * K)]);
            const int64_t tile = i % K / 64; /* runs of skipped tiles: the first, two in the middle, the last */
            if (cases[ci].holes && (tile == 0 || tile == 3 || tile == 4 || tile == (K - 1) / 64))
                idx[i] = u < 0.5 ? -1 : (int32_t)cap + 5;
        }
        pb_set(&pk, kh);
        void *qh = malloc(hae_dtype_size(cases[ci].q) * (size_t)(B * T * Hq * D));
        cr_assert(qh);
        fill_rows(qh, cases[ci].q, 1, B * T * Hq, D, 0, D, &r, -0.3, 0.3);
        cr_assert(!cases[ci].tiny || cases[ci].q == BF, "%s: the tiny case edits q as bf16", ctx);
        for (int64_t i = 0; cases[ci].tiny && i < B * T * Hq * D; i++) { /* bf16 q: only the subnormal codes' dims */
            const int64_t d = i % D;
            uint16_t *qb = (uint16_t *)qh + i;
            *qb = hae_f32_to_bf16(d < 512 && d % 128 ? 30.0f * hae_bf16_to_f32(*qb) : 0.0f);
        }
        pbuf pq = pb_new(qh, hae_dtype_size(cases[ci].q) * (size_t)(B * T * Hq * D)),
             pi = pb_new(idx, sizeof(int32_t) * (size_t)(B * T * K)), pl = pb_new(lens, sizeof(int32_t) * (size_t)B),
             po = pb_poison(hae_dtype_size(cases[ci].out) * (size_t)(B * T * Hq * 512)),
             pe = pb_poison(sizeof(float) * (size_t)(B * T * Hq));
        const int64_t qshape[4] = {B, T, Hq, D}, ishape[3] = {B, T, K}, oshape[4] = {B, T, Hq, 512}, eshape[3] = {B, T, Hq};
        hae_sparse_attention_args ag = {0};
        for (int g = 0; g < 2 && ok; g++) {
            const hae_device dev = g ? HAE_CUDA : HAE_CPU;
            hae_sparse_attention_args a = {
                .q = tv(g ? pq.g : pq.c, cases[ci].q, dev, 4, qshape, NULL),
                .k_cache = tv(g ? pk.g : pk.c, HAE_FP8_E4M3, dev, 4, kshape, NULL),
                .v_cache = tv(g ? pk.g : pk.c, HAE_FP8_E4M3, dev, 4, vshape, kstride),
                .idx = tv(g ? pi.g : pi.c, HAE_I32, dev, 3, ishape, NULL),
                .seq_lens = tv(g ? pl.g : pl.c, HAE_I32, dev, 1, &B, NULL),
                .out = tv(g ? po.g : po.c, cases[ci].out, dev, 4, oshape, NULL),
                .lse = tv(g ? pe.g : pe.c, HAE_F32, dev, 3, eshape, NULL),
                .scale = 0.06f};
            ok = gpu_ran(hae_sparse_attention(g ? g_gpu : g_cpu, &a), g ? "cuda" : "cpu", "sparse_attention (fp8)", ctx);
            if (g) ag = a;
        }
        if (ok && gpu_done("sparse_attention (fp8)", ctx)) {
            pb_compare("sparse_attention (fp8): out", ctx, &po, cases[ci].out, cases[ci].q == F32 ? 1e-5 : 1e-2);
            pb_compare("sparse_attention (fp8): lse", ctx, &pe, HAE_F32, cases[ci].odd ? 3e-4 : 1e-5);
            expect_split_same(&ag, &pk, NULL, &pi, &pl, &po, &pe, ctx);
        }
        pb_free(&ps), pb_free(&pk), pb_free(&pq), pb_free(&pi), pb_free(&pl), pb_free(&po), pb_free(&pe);
        free(src), free(lens), free(idx), free(kh), free(qh);
    }
}

/* gqa's FP8 cache layout (hae.h): hae_kv_write's K and V bytes on CUDA equal the CPU's bit for bit (codes,
 * scales, zero padding), and sparse attention over them matches the CPU: bf16 q on heads of 128 runs the
 * tensor-core kernel decoding each tile's FP8 rows into its bf16 stage (16-row CTAs, or 64-row ones past 16
 * heads a group); f32 q and heads of 256 the CUDA-core kernel. Slots past a sequence's length hold 0xFF bytes
 * (NaN codes and scales), so reading one an index does not name shows; the batch split in two parts gives the
 * whole call's bits. */
Test(gpu_sparse, gqa_fp8) {
    static const struct {
        const char *what;
        int64_t B, T, Hq, Hkv, D, cap, k;
        hae_dtype q, out;
        bool holes; /* whole 64-entry tiles without a usable entry (skipped) */
    } cases[] = {
        {"fp8 16q/4kv x 128, decode, top-2048 (split)", 3, 1, 16, 4, 128, 2100, 2048, BF, BF, false},
        {"fp8 16q/4kv x 128, prefill", 1, 5, 16, 4, 128, 300, 200, BF, F32, false},
        {"fp8 64q/2kv x 128 (64-row CTAs)", 2, 2, 64, 2, 128, 400, 256, BF, BF, false},
        {"fp8 8q/8kv x 128, unusable tiles skipped", 2, 1, 8, 8, 128, 1500, 1024, BF, BF, true},
        {"fp8 8q/2kv x 128, f32 q (CUDA cores)", 2, 2, 8, 2, 128, 120, 64, F32, F32, false},
        {"fp8 8q/2kv x 256 (CUDA cores)", 2, 1, 8, 2, 256, 200, 96, BF, BF, false},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const int64_t B = cases[ci].B, T = cases[ci].T, Hq = cases[ci].Hq, Hkv = cases[ci].Hkv, D = cases[ci].D;
        const int64_t cap = cases[ci].cap, K = cases[ci].k, H8 = HAE_FP8_HEAD(D), row = Hkv * H8;
        char ctx[CTX_N];
        snprintf(ctx, sizeof ctx, "%s: B %lld T %lld Hq %lld Hkv %lld D %lld cap %lld k %lld, q %s, out %s, seed %zu",
                 cases[ci].what, (long long)B, (long long)T, (long long)Hq, (long long)Hkv, (long long)D, (long long)cap,
                 (long long)K, hae_dtype_name(cases[ci].q), hae_dtype_name(cases[ci].out), 5100 + ci);
        tu_rng r = tu_rng_make(5100 + ci);
        const int64_t sshape[4] = {B, cap, Hkv, D}, cshape[4] = {B, cap, Hkv, H8};
        pbuf pc[2], ps[2]; /* K and V: the FP8 caches and the bf16 rows written into them */
        uint8_t *ch[2];
        bool ok = true;
        for (int kv = 0; kv < 2; kv++) {
            uint16_t *src = malloc(sizeof(uint16_t) * (size_t)(B * cap * Hkv * D));
            cr_assert(src);
            for (int64_t i = 0; i < B * cap * Hkv * D; i++) /* each 128-dim block at its own magnitude */
                src[i] = hae_f32_to_bf16((float)(tu_uniform(&r, -1, 1) * pow(10.0, (double)(i % D / 128) - 1)));
            ps[kv] = pb_new(src, sizeof(uint16_t) * (size_t)(B * cap * Hkv * D));
            pc[kv] = pb_poison((size_t)(B * cap * row));
            free(src);
            for (int g = 0; g < 2 && ok; g++) {
                const hae_device dev = g ? HAE_CUDA : HAE_CPU;
                hae_kv_write_args w = {.src = tv(g ? ps[kv].g : ps[kv].c, HAE_BF16, dev, 4, sshape, NULL),
                                       .cache = tv(g ? pc[kv].g : pc[kv].c, HAE_FP8_E4M3, dev, 4, cshape, NULL)};
                ok = gpu_ran(hae_kv_write(g ? g_gpu : g_cpu, &w), g ? "cuda" : "cpu", "kv_write (gqa fp8)", ctx);
            }
            if (ok && gpu_done("kv_write (gqa fp8)", ctx))
                ok = pb_compare(kv ? "kv_write (gqa fp8): V bytes" : "kv_write (gqa fp8): K bytes", ctx, &pc[kv],
                                HAE_FP8_E4M3, -1);
            ch[kv] = malloc((size_t)(B * cap * row));
            cr_assert(ch[kv]);
            memcpy(ch[kv], pc[kv].c, (size_t)(B * cap * row));
        }
        int32_t *lens = malloc(sizeof(int32_t) * (size_t)B), *idx = malloc(sizeof(int32_t) * (size_t)(B * T * K));
        cr_assert(lens && idx);
        for (int64_t b = 0; b < B; b++) {
            lens[b] = (int32_t)tu_uniform(&r, (double)T + 10, (double)cap + 1);
            for (int kv = 0; kv < 2; kv++) memset(ch[kv] + (b * cap + lens[b]) * row, 0xFF, (size_t)((cap - lens[b]) * row));
        }
        for (int kv = 0; kv < 2; kv++) pb_set(&pc[kv], ch[kv]);
        for (int64_t i = 0; i < B * T * K; i++) {
            const double u = tu_uniform(&r, 0, 1);
            idx[i] = u < 0.1 ? -1 : u < 0.13 ? (int32_t)cap + 5 : (int32_t)tu_uniform(&r, 0, (double)lens[i / (T * K)]);
            const int64_t tile = i % K / 64;
            if (cases[ci].holes && (tile == 0 || tile == 3 || tile == 4 || tile == (K - 1) / 64))
                idx[i] = u < 0.5 ? -1 : (int32_t)cap + 5;
        }
        void *qh = malloc(hae_dtype_size(cases[ci].q) * (size_t)(B * T * Hq * D));
        cr_assert(qh);
        fill_rows(qh, cases[ci].q, 1, B * T * Hq, D, 0, D, &r, -0.3, 0.3);
        pbuf pq = pb_new(qh, hae_dtype_size(cases[ci].q) * (size_t)(B * T * Hq * D)),
             pi = pb_new(idx, sizeof(int32_t) * (size_t)(B * T * K)), pl = pb_new(lens, sizeof(int32_t) * (size_t)B),
             po = pb_poison(hae_dtype_size(cases[ci].out) * (size_t)(B * T * Hq * D)),
             pe = pb_poison(sizeof(float) * (size_t)(B * T * Hq));
        const int64_t qshape[4] = {B, T, Hq, D}, ishape[3] = {B, T, K}, eshape[3] = {B, T, Hq};
        hae_sparse_attention_args ag = {0};
        for (int g = 0; g < 2 && ok; g++) {
            const hae_device dev = g ? HAE_CUDA : HAE_CPU;
            hae_sparse_attention_args a = {
                .q = tv(g ? pq.g : pq.c, cases[ci].q, dev, 4, qshape, NULL),
                .k_cache = tv(g ? pc[0].g : pc[0].c, HAE_FP8_E4M3, dev, 4, cshape, NULL),
                .v_cache = tv(g ? pc[1].g : pc[1].c, HAE_FP8_E4M3, dev, 4, cshape, NULL),
                .idx = tv(g ? pi.g : pi.c, HAE_I32, dev, 3, ishape, NULL),
                .seq_lens = tv(g ? pl.g : pl.c, HAE_I32, dev, 1, &B, NULL),
                .out = tv(g ? po.g : po.c, cases[ci].out, dev, 4, qshape, NULL),
                .lse = tv(g ? pe.g : pe.c, HAE_F32, dev, 3, eshape, NULL),
                .scale = 0.09f};
            ok = gpu_ran(hae_sparse_attention(g ? g_gpu : g_cpu, &a), g ? "cuda" : "cpu", "sparse_attention (gqa fp8)",
                         ctx);
            if (g) ag = a;
        }
        if (ok && gpu_done("sparse_attention (gqa fp8)", ctx)) {
            pb_compare("sparse_attention (gqa fp8): out", ctx, &po, cases[ci].out, cases[ci].q == F32 ? 1e-5 : 1e-2);
            pb_compare("sparse_attention (gqa fp8): lse", ctx, &pe, HAE_F32, 1e-5);
            expect_split_same(&ag, &pc[0], &pc[1], &pi, &pl, &po, &pe, ctx);
        }
        for (int kv = 0; kv < 2; kv++) pb_free(&pc[kv]), pb_free(&ps[kv]), free(ch[kv]);
        pb_free(&pq), pb_free(&pi), pb_free(&pl), pb_free(&po), pb_free(&pe);
        free(lens), free(idx), free(qh);
    }
}

/* seq_lens are not checked on the host for CUDA: a row whose p = seq_lens[b] - T + t is outside [0, cap)
 * uses no index (out = 0, lse = +inf), rows of good sequences match the CPU, nothing past out or lse is
 * written, and nothing faults. Sequence 0 ends past the cache, 1 is negative, 2 is shorter than T (its
 * first two rows have p < 0), 3 is fine. */
Test(gpu_sparse, bad_seq_lens_on_cuda) {
    static const sp_case cases[] = {
        {"bad seq_lens, bf16", 4, 3, 16, 2, 128, 128, 200, 150, BF, BF, BF, 8, 0, false, true, IDX_RANDOM},
        {"bad seq_lens, f32", 4, 3, 8, 2, 64, 64, 200, 150, F32, F32, F32, 0, 0, false, true, IDX_RANDOM},
        {"bad seq_lens, mla (split)", 4, 3, 16, 1, 576, 512, 600, 512, BF, BF, F32, 0, 0, true, true, IDX_RANDOM},
        {"bad seq_lens, mla 64 heads (split)", 4, 3, 64, 1, 576, 512, 600, 512, BF, BF, BF, 0, 0, true, true, IDX_RANDOM},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const sp_case *c = &cases[ci];
        const uint64_t seed = 5000 + ci;
        char ctx[CTX_N];
        describe(c, seed, ctx, sizeof ctx);
        tu_rng r = tu_rng_make(seed);
        sp_host h;
        make_inputs(c, &h, &r);
        const int32_t good = h.lens[3];
        h.idx[2 * h.i0 + 2 * h.i1] = 0; /* sequence 2's last row (p = 0) has a usable index */
        sp_bufs p = upload(c, &h);
        /* the CPU sees only good lengths; its rows of sequence 3 are the reference */
        hae_sparse_attention_args ac = args_of(c, &h, &p, false), ag = args_of(c, &h, &p, true);
        const int32_t bad[4] = {(int32_t)(c->cap + c->T + 5), -9, (int32_t)(c->T - 2), good};
        pb_set(&p.lens, bad);
        const int32_t fine[4] = {(int32_t)c->T, (int32_t)c->T, (int32_t)c->T, good};
        memcpy(p.lens.c, fine, sizeof fine);
        if (!gpu_ran(hae_sparse_attention(g_cpu, &ac), "cpu", "sparse_attention", ctx) ||
            !gpu_ran(hae_sparse_attention(g_gpu, &ag), "cuda", "sparse_attention", ctx) ||
            !gpu_ran(hae_backend_sync(g_gpu), "cuda (sync after the op)", "sparse_attention", ctx)) {
            free_bufs(c, &p), free_inputs(&h);
            continue;
        }
        void *go = pb_fetch(&p.out);
        float *ge = pb_fetch(&p.lse);
        const float *ce = p.lse.c;
        int64_t wrong = 0;
        for (int64_t b = 0; b < c->B && wrong < 5; b++)
            for (int64_t t = 0; t < c->T && wrong < 5; t++) {
                const int64_t pos = (int64_t)bad[b] - c->T + t;
                const bool usable = pos >= 0 && pos < c->cap;
                for (int64_t hh = 0; hh < c->Hq; hh++) {
                    const int64_t ob = b * h.o0 + t * h.o1 + hh * c->Dv;
                    const float lse = ge[b * h.e0 + t * h.e1 + hh];
                    if (!usable) {
                        bool zero = isinf(lse) && lse > 0;
                        for (int64_t d = 0; d < c->Dv; d++) zero = zero && tu_get(go, c->out, ob + d) == 0.0;
                        if (!zero && wrong++ < 5)
                            cr_expect(0, "[%s]: row (b %lld, t %lld, h %lld) with p %lld outside [0, %lld): lse %g, out[0] "
                                         "%g; want +inf and zeros",
                                      ctx, (long long)b, (long long)t, (long long)hh, (long long)pos, (long long)c->cap,
                                      (double)lse, tu_get(go, c->out, ob));
                    } else if (b == 3) {
                        for (int64_t d = 0; d < c->Dv; d++) {
                            const double gv = tu_get(go, c->out, ob + d), cv = tu_get(p.out.c, c->out, ob + d);
                            if (!(fabs(gv - cv) <= 0.05 * (1 + fabs(cv))) && wrong++ < 5)
                                cr_expect(0, "[%s]: good sequence 3, (t %lld, h %lld, d %lld): gpu %.6g cpu %.6g", ctx,
                                          (long long)t, (long long)hh, (long long)d, gv, cv);
                        }
                        const float cl = ce[b * h.e0 + t * h.e1 + hh];
                        if (!(lse == cl || fabsf(lse - cl) <= 1e-4f * (1 + fabsf(cl))) && wrong++ < 5) /* +inf: no index */
                            cr_expect(0, "[%s]: good sequence 3, lse (t %lld, h %lld): gpu %.7g cpu %.7g", ctx,
                                      (long long)t, (long long)hh, (double)lse, (double)cl);
                    } else {
                        bool finite = isfinite(lse);
                        for (int64_t d = 0; d < c->Dv; d++) finite = finite && isfinite(tu_get(go, c->out, ob + d));
                        if (!finite && wrong++ < 5)
                            cr_expect(0, "[%s]: row (b %lld, t %lld, h %lld) with p %lld: not finite (lse %g)", ctx,
                                      (long long)b, (long long)t, (long long)hh, (long long)pos, (double)lse);
                    }
                }
            }
        /* what lies between rows and the guards past the ends keep their poison */
        const size_t eo = hae_dtype_size(c->out);
        bool *wo = calloc(h.no, 1), *we = calloc(h.ne, 1);
        cr_assert(wo && we);
        for (int64_t b = 0; b < c->B; b++)
            for (int64_t t = 0; t < c->T; t++)
                for (int64_t hh = 0; hh < c->Hq; hh++) {
                    we[b * h.e0 + t * h.e1 + hh] = true;
                    for (int64_t d = 0; d < c->Dv; d++) wo[b * h.o0 + t * h.o1 + hh * c->Dv + d] = true;
                }
        const uint8_t *ob = go, *eb = (const uint8_t *)ge;
        for (size_t i = 0; i < h.no * eo; i++)
            if (!wo[i / eo] && ob[i] != 0xFF && wrong++ < 5)
                cr_expect(0, "[%s]: out byte %zu (element %zu, not an element of out) was written", ctx, i, i / eo);
        for (size_t i = 0; i < h.ne * 4; i++)
            if (!we[i / 4] && eb[i] != 0xFF && wrong++ < 5)
                cr_expect(0, "[%s]: lse byte %zu (element %zu, not an element of lse) was written", ctx, i, i / 4);
        free(wo), free(we);
        free(go), free(ge);
        free_bufs(c, &p);
        free_inputs(&h);
    }
}

/* Head dims past what the CUDA kernels hold are refused, naming the dims, and write nothing. */
Test(gpu_sparse, unsupported_head_dims) {
    const sp_case c = {"Dk 640", 1, 1, 2, 1, 640, 64, 8, 4, F32, F32, F32, 0, 0, false, true, IDX_RANDOM};
    char ctx[CTX_N];
    describe(&c, 6000, ctx, sizeof ctx);
    tu_rng r = tu_rng_make(6000);
    sp_host h;
    make_inputs(&c, &h, &r);
    sp_bufs p = upload(&c, &h);
    hae_sparse_attention_args ag = args_of(&c, &h, &p, true);
    cr_expect_eq(hae_sparse_attention(g_gpu, &ag), HAE_ERR_UNSUPPORTED, "[%s]", ctx);
    cr_expect(strstr(hae_last_error(), "640"), "[%s]: %s", ctx, hae_last_error());
    uint8_t *go = pb_fetch(&p.out);
    for (size_t i = 0; i < p.out.bytes; i++)
        if (go[i] != 0xFF) {
            cr_expect(0, "[%s]: out byte %zu written by a refused call", ctx, i);
            break;
        }
    free(go);
    free_bufs(&c, &p);
    free_inputs(&h);
}

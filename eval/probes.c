/* Mechanism probes (DESIGN.md §3, contract in hae.h): a generated task written directly as keys and
 * values into one layer kind's real ops, questions answered by nearest-neighbour decoding over the
 * value codes, multi-hop by feeding each decoded token back as the next query. Data lives on the
 * backend's device (uploaded once); only queries and outputs cross per hop. */
#include "eval_rng.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

hae_probe_args hae_probe_defaults(hae_layer_kind kind) {
    return (hae_probe_args){.kind = kind, .K = 64, .V = 64, .values = HAE_CODE_RANDOM, .scale = 32.0f, .topk = 64,
                            .index_dtype = HAE_FP8_E4M3, .beta_logit = 40.0f, .chunk = 64};
}

/* ---------------------------------------------------------------- device buffers */

#define MAX_BUFS 24
typedef struct {
    hae_backend *be;
    void *p[MAX_BUFS];
    int n;
} bufs;

/* bytes of zeroed device memory, freed by bufs_free */
static hae_status dev_zeros(bufs *b, size_t bytes, void **out) {
    HAE_ASSERT(b->n < MAX_BUFS);
    HAE_TRY(hae_backend_alloc(b->be, bytes ? bytes : 64, out));
    b->p[b->n++] = *out;
    return hae_backend_zero(b->be, *out, bytes);
}
static hae_status dev_put(bufs *b, const void *host, size_t bytes, void **out) {
    HAE_TRY(dev_zeros(b, bytes, out));
    return hae_backend_upload(b->be, *out, host, bytes);
}
static void bufs_free(bufs *b) {
    for (int i = 0; i < b->n; i++) hae_backend_free(b->be, b->p[i]);
    b->n = 0;
}

/* ---------------------------------------------------------------- the probe */

typedef struct {
    const hae_probe_args *p;
    const hae_task *task;
    hae_backend *be;
    int64_t K, V, L, Q, H;
    float *kc, *vc;   /* [vocab, K], [vocab, V] codes of every token id */
    float *wk, *wv;   /* [L, K], [L, V] what each context position writes */
    int32_t *cur;     /* [Q] the token each question asks at this hop (-1: nothing decoded) */
    int32_t *decoded; /* [Q, H] the token decoded at each hop (-1: zero output) */
    float *qh, *oh;   /* host staging: [Q, max(K, V, 128)] queries, [Q, max(K, V)] outputs */
} probe;

static bool is_noise(const hae_task *t, int32_t x) { return x >= t->noise_lo && x < t->noise_hi; }

static void unit(float *x, const double *v, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += v[i] * v[i];
    for (int64_t i = 0; i < n; i++) x[i] = (float)(v[i] / sqrt(s));
}

/* v -= (v . b) b for each unit row b of basis (twice, for orthogonality to rounding); false when
 * nothing is left of v. */
static bool orthogonalize(double *v, const double *basis, int64_t nb, int64_t K) {
    for (int pass = 0; pass < 2; pass++)
        for (int64_t j = 0; j < nb; j++) {
            double d = 0;
            for (int64_t x = 0; x < K; x++) d += v[x] * basis[j * K + x];
            for (int64_t x = 0; x < K; x++) v[x] -= d * basis[j * K + x];
        }
    double s = 0;
    for (int64_t x = 0; x < K; x++) s += v[x] * v[x];
    if (s < 1e-12) return false;
    for (int64_t x = 0; x < K; x++) v[x] /= sqrt(s);
    return true;
}

/* Key codes: each noise and key-class token a random unit vector "own"; a key-class token's code is
 * sqrt(c) u + sqrt(1 - c) own with u a shared unit vector and own orthogonal to u, so any two keys
 * have cosine c + (1 - c) own_i . own_j (exactly c when orthogonal). With `orthogonal`, the own vectors
 * of the tokens the context writes are Gram-Schmidt'ed against u and each other in order of first
 * write; the other tokens' own vectors are only made orthogonal to u.
 * Value codes: value-class tokens random unit vectors or one-hot (e_{x - value_lo}); a noise token
 * writes the code of value token value_lo + hash(x) mod n_values. */
static hae_status make_codes(probe *pr) {
    const hae_probe_args *p = pr->p;
    const hae_task *t = pr->task;
    const int64_t K = pr->K, V = pr->V, nvals = t->value_hi - t->value_lo;
    const double c = p->key_cos;
    eval_rng r = eval_rng_make(p->seed, 0x636f646573u);
    double *basis = malloc(sizeof(double) * (size_t)((K + 1) * K)), *v = malloc(sizeof(double) * (size_t)(K > V ? K : V));
    uint8_t *written = calloc((size_t)t->vocab, 1);
    int32_t *order = malloc(sizeof(int32_t) * (size_t)(t->n_pairs + pr->L));
    hae_status st = HAE_OK;
    if (!basis || !v || !written || !order) {
        st = hae_error(HAE_ERR_OOM, "hae_probe_run: code scratch for K = %lld", (long long)K);
        goto done;
    }
    int64_t nb = 0, nw = 0;
    if (c > 0) {
        for (int64_t x = 0; x < K; x++) basis[x] = eval_rng_normal(&r);
        orthogonalize(basis, NULL, 0, K);
        nb = 1;
    }
    for (int32_t x = t->noise_lo; x < t->key_hi; x++) {
        bool key = x >= t->key_lo;
        do
            for (int64_t i = 0; i < K; i++) v[i] = eval_rng_normal(&r);
        while (!orthogonalize(v, basis, key ? nb : 0, K));
        float *kx = pr->kc + (int64_t)x * K;
        for (int64_t i = 0; i < K; i++) kx[i] = key ? (float)(sqrt(c) * (nb ? basis[i] : 0) + sqrt(1 - c) * v[i]) : (float)v[i];
    }
    if (p->orthogonal) {
        for (int64_t s = 0, i = 0; s < pr->L; s++) {
            int32_t x = t->tokens[s];
            if (i < t->n_pairs && t->pair_pos[i] == s) x = t->pair_key[i++];
            else if (!is_noise(t, x)) continue;
            if (!written[x]) written[x] = 1, order[nw++] = x;
        }
        if (nw + nb > K) {
            st = hae_error(HAE_ERR_INVALID,
                           "hae_probe_run: orthogonal keys: the context writes %lld distinct keys%s, more than K = %lld",
                           (long long)nw, nb ? " plus the shared direction of key_cos" : "", (long long)K);
            goto done;
        }
        for (int64_t w = 0; w < nw; w++) {
            int32_t x = order[w];
            bool key = x >= t->key_lo;
            do
                for (int64_t i = 0; i < K; i++) v[i] = eval_rng_normal(&r);
            while (!orthogonalize(v, basis, nb, K));
            memcpy(basis + nb * K, v, sizeof(double) * (size_t)K);
            nb++;
            float *kx = pr->kc + (int64_t)x * K;
            for (int64_t i = 0; i < K; i++) kx[i] = key ? (float)(sqrt(c) * (c > 0 ? basis[i] : 0) + sqrt(1 - c) * v[i]) : (float)v[i];
        }
    }
    for (int32_t x = t->value_lo; x < t->value_hi; x++) {
        float *vx = pr->vc + (int64_t)x * V;
        if (p->values == HAE_CODE_ONEHOT) {
            vx[x - t->value_lo] = 1.0f;
            continue;
        }
        for (int64_t i = 0; i < V; i++) v[i] = eval_rng_normal(&r);
        unit(vx, v, V);
    }
    for (int32_t x = t->noise_lo; x < t->noise_hi; x++)
        memcpy(pr->vc + (int64_t)x * V, pr->vc + (t->value_lo + (int64_t)(hae_mix64((uint64_t)x) % (uint64_t)nvals)) * V,
               sizeof(float) * (size_t)V);
    /* what the context writes: pairs at their key's position, noise tokens, nothing elsewhere */
    for (int64_t s = 0, i = 0; s < pr->L; s++) {
        int32_t kx = t->tokens[s], vx = kx;
        if (i < t->n_pairs && t->pair_pos[i] == s) kx = t->pair_key[i], vx = t->pair_value[i++];
        else if (!is_noise(t, kx)) continue;
        memcpy(pr->wk + s * K, pr->kc + (int64_t)kx * K, sizeof(float) * (size_t)K);
        memcpy(pr->wv + s * V, pr->vc + (int64_t)vx * V, sizeof(float) * (size_t)V);
    }
done:
    free(basis), free(v), free(written), free(order);
    return st;
}

/* Queries of this hop into pr->qh as [Q, dim] rows (key codes zero padded; zero for no token). */
static void hop_queries(probe *pr, int64_t dim) {
    memset(pr->qh, 0, sizeof(float) * (size_t)(pr->Q * dim));
    for (int64_t i = 0; i < pr->Q; i++)
        if (pr->cur[i] >= 0) memcpy(pr->qh + i * dim, pr->kc + (int64_t)pr->cur[i] * pr->K, sizeof(float) * (size_t)pr->K);
}

/* Decodes the outputs pr->oh ([Q, stride], first V used) of hop h: the value token of largest
 * o . code (the lowest id on ties), none for a zero output; it becomes the next hop's query. */
static void hop_decode(probe *pr, int64_t stride, int64_t h) {
    const hae_task *t = pr->task;
    for (int64_t i = 0; i < pr->Q; i++) {
        const float *o = pr->oh + i * stride;
        int32_t best = -1;
        double bd = 0;
        bool zero = true;
        for (int64_t x = 0; x < pr->V; x++) zero = zero && o[x] == 0.0f;
        for (int32_t x = t->value_lo; x < t->value_hi && !zero; x++) {
            double d = hae_dot_f32(o, pr->vc + (int64_t)x * pr->V, pr->V);
            if (best < 0 || d > bd) best = x, bd = d;
        }
        pr->decoded[i * pr->H + h] = best;
        pr->cur[i] = best;
    }
}

static hae_tensor t2(void *p, hae_dtype dt, int64_t a, int64_t b) { return hae_tensor_2d(p, dt, HAE_CPU, a, b); }
/* a view on the backend's device */
static hae_tensor on(hae_backend *be, hae_tensor t) {
    t.device = hae_backend_device(be);
    return t;
}

/* K/V cache [1, L + Q, 1, D] of the context, D = max(K, V); the question slots stay zero. */
static hae_status kv_cache(probe *pr, bufs *b, int64_t D, void **kd, void **vd) {
    const int64_t cap = pr->L + pr->Q;
    float *kh = calloc((size_t)(cap * D), sizeof(float)), *vh = calloc((size_t)(cap * D), sizeof(float));
    hae_status st = HAE_OK;
    if (!kh || !vh) st = hae_error(HAE_ERR_OOM, "hae_probe_run: a %lld x %lld KV cache", (long long)cap, (long long)D);
    for (int64_t s = 0; st == HAE_OK && s < pr->L; s++) {
        memcpy(kh + s * D, pr->wk + s * pr->K, sizeof(float) * (size_t)pr->K);
        memcpy(vh + s * D, pr->wv + s * pr->V, sizeof(float) * (size_t)pr->V);
    }
    if (st == HAE_OK) st = dev_put(b, kh, sizeof(float) * (size_t)(cap * D), kd);
    if (st == HAE_OK) st = dev_put(b, vh, sizeof(float) * (size_t)(cap * D), vd);
    free(kh), free(vh);
    return st;
}

/* full: question i at position L + i attends to every slot up to its own (the question slots hold
 * zero keys and values, which only scale the output down and so cannot change the decode). */
static hae_status run_full(probe *pr, bufs *b) {
    hae_backend *be = pr->be;
    const int64_t D = pr->K > pr->V ? pr->K : pr->V, cap = pr->L + pr->Q, Q = pr->Q;
    void *kd, *vd, *qd, *od;
    HAE_TRY(kv_cache(pr, b, D, &kd, &vd));
    HAE_TRY(dev_zeros(b, sizeof(float) * (size_t)(Q * D), &qd));
    HAE_TRY(dev_zeros(b, sizeof(float) * (size_t)(Q * D), &od));
    for (int64_t h = 0; h < pr->H; h++) {
        hop_queries(pr, D);
        HAE_TRY(hae_backend_upload(be, qd, pr->qh, sizeof(float) * (size_t)(Q * D)));
        hae_attention_args a = {.q = on(be, hae_tensor_4d(qd, HAE_F32, HAE_CPU, 1, Q, 1, D)),
                                .k_cache = on(be, hae_tensor_4d(kd, HAE_F32, HAE_CPU, 1, cap, 1, D)),
                                .v_cache = on(be, hae_tensor_4d(vd, HAE_F32, HAE_CPU, 1, cap, 1, D)),
                                .out = on(be, hae_tensor_4d(od, HAE_F32, HAE_CPU, 1, Q, 1, D)),
                                .pos0 = pr->L, .window = 0, .scale = pr->p->scale};
        HAE_TRY(hae_attention(be, &a));
        HAE_TRY(hae_backend_download(be, pr->oh, od, sizeof(float) * (size_t)(Q * D)));
        hop_decode(pr, D, h);
    }
    return HAE_OK;
}

/* dsa: the indexer keys are the key codes zero padded to D_I = 128 and Hadamard-rotated; FP8 puts them
 * in a page cache (pages of 64 tokens) and scores I(t, s) = k_scale(s) q_scale(t) ReLU(q8 . k8(s)) with
 * one head of weight 1; bf16 / f32 score q . k(s) with a GEMM. Question i (position L + i) ranks the
 * L + i + 1 slots up to its own; sparse attention reads exactly its top-k. */
static hae_status run_dsa(probe *pr, bufs *b) {
    hae_backend *be = pr->be;
    const hae_dtype idt = pr->p->index_dtype;
    const int64_t D = pr->K > pr->V ? pr->K : pr->V, DI = 128, cap = pr->L + pr->Q, Q = pr->Q, k = pr->p->topk;
    const int64_t P = 64, pages = (cap + P - 1) / P, row = P * (DI + 4);
    void *kd, *vd, *ikd, *icache = NULL, *ktab = NULL, *kr = NULL, *qid, *qcd, *qsd, *qd, *od, *ld, *lensd, *idxd, *sld, *wd;
    HAE_TRY(kv_cache(pr, b, D, &kd, &vd));
    float *ik = calloc((size_t)(cap * DI), sizeof(float)), *ones = malloc(sizeof(float) * (size_t)Q);
    int32_t *table = malloc(sizeof(int32_t) * (size_t)pages), *lens = malloc(sizeof(int32_t) * (size_t)Q);
    int32_t seq_len = (int32_t)cap;
    hae_status st = HAE_OK;
    if (!ik || !ones || !table || !lens) st = hae_error(HAE_ERR_OOM, "hae_probe_run (dsa): indexer scratch");
    for (int64_t s = 0; st == HAE_OK && s < pr->L; s++) memcpy(ik + s * DI, pr->wk + s * pr->K, sizeof(float) * (size_t)pr->K);
    for (int64_t j = 0; st == HAE_OK && j < pages; j++) table[j] = (int32_t)j;
    for (int64_t i = 0; st == HAE_OK && i < Q; i++) ones[i] = 1.0f, lens[i] = (int32_t)(pr->L + i + 1);
    if (st == HAE_OK) st = dev_put(b, ik, sizeof(float) * (size_t)(cap * DI), &ikd);
    if (st == HAE_OK) st = dev_put(b, ones, sizeof(float) * (size_t)Q, &wd);
    if (st == HAE_OK) st = dev_put(b, lens, sizeof(int32_t) * (size_t)Q, &lensd);
    if (st == HAE_OK) st = dev_put(b, &seq_len, sizeof seq_len, &sld);
    if (st == HAE_OK && idt == HAE_FP8_E4M3) st = dev_put(b, table, sizeof(int32_t) * (size_t)pages, &ktab);
    free(ik), free(ones), free(table), free(lens);
    HAE_TRY(st);
    HAE_TRY(hae_hadamard(be, &(hae_hadamard_args){.x = on(be, t2(ikd, HAE_F32, cap, DI))}));
    hae_index_cache ic = {0};
    if (idt == HAE_FP8_E4M3) {
        void *k8, *ks;
        HAE_TRY(dev_zeros(b, (size_t)(cap * DI), &k8));
        HAE_TRY(dev_zeros(b, sizeof(float) * (size_t)cap, &ks));
        HAE_TRY(dev_zeros(b, (size_t)(pages * row), &icache));
        HAE_TRY(hae_fp8_quant(be, &(hae_fp8_quant_args){.x = on(be, t2(ikd, HAE_F32, cap, DI)),
                                                        .q = on(be, t2(k8, HAE_FP8_E4M3, cap, DI)),
                                                        .scale = on(be, t2(ks, HAE_F32, cap, 1))}));
        ic = (hae_index_cache){.pages = on(be, t2(icache, HAE_FP8_E4M3, pages, row)),
                               .block_table = on(be, t2(ktab, HAE_I32, 1, pages)), .page_size = (int)P,
                               .head_dim = (int)DI};
        HAE_TRY(hae_index_write(be, &(hae_index_write_args){
                                        .k = on(be, hae_tensor_3d(k8, HAE_FP8_E4M3, HAE_CPU, 1, cap, DI)),
                                        .k_scale = on(be, hae_tensor_3d(ks, HAE_F32, HAE_CPU, 1, cap, 1)), .cache = ic,
                                        .seq_lens = on(be, hae_tensor_1d(sld, HAE_I32, HAE_CPU, 1))}));
    } else if (idt == HAE_BF16) {
        HAE_TRY(dev_zeros(b, 2 * (size_t)(cap * DI), &kr));
        hae_tensor src = on(be, t2(ikd, HAE_F32, cap, DI)), dst = on(be, t2(kr, HAE_BF16, cap, DI));
        HAE_TRY(hae_convert(be, &src, &dst));
    } else {
        kr = ikd;
    }
    HAE_TRY(dev_zeros(b, sizeof(float) * (size_t)(Q * DI), &qid));
    if (idt == HAE_F32) qcd = qid; /* the rotated f32 queries are the ranking's operand */
    else HAE_TRY(dev_zeros(b, (size_t)(Q * DI) * hae_dtype_size(idt), &qcd));
    HAE_TRY(dev_zeros(b, sizeof(float) * (size_t)Q, &qsd));
    HAE_TRY(dev_zeros(b, sizeof(float) * (size_t)(Q * D), &qd));
    HAE_TRY(dev_zeros(b, sizeof(float) * (size_t)(Q * D), &od));
    HAE_TRY(dev_zeros(b, sizeof(float) * (size_t)(Q * cap), &ld));
    HAE_TRY(dev_zeros(b, sizeof(int32_t) * (size_t)(Q * k), &idxd));
    for (int64_t h = 0; h < pr->H; h++) {
        hop_queries(pr, DI);
        HAE_TRY(hae_backend_upload(be, qid, pr->qh, sizeof(float) * (size_t)(Q * DI)));
        HAE_TRY(hae_hadamard(be, &(hae_hadamard_args){.x = on(be, t2(qid, HAE_F32, Q, DI))}));
        hae_tensor qf = on(be, t2(qid, HAE_F32, Q, DI)), qc = on(be, t2(qcd, idt, Q, DI));
        if (idt == HAE_FP8_E4M3) {
            HAE_TRY(hae_fp8_quant(be, &(hae_fp8_quant_args){.x = qf, .q = qc, .scale = on(be, t2(qsd, HAE_F32, Q, 1))}));
            HAE_TRY(hae_index_logits(be, &(hae_index_logits_args){
                                             .q = on(be, hae_tensor_4d(qcd, HAE_FP8_E4M3, HAE_CPU, 1, Q, 1, DI)),
                                             .w = on(be, hae_tensor_3d(wd, HAE_F32, HAE_CPU, 1, Q, 1)), .cache = ic,
                                             .seq_lens = on(be, hae_tensor_1d(sld, HAE_I32, HAE_CPU, 1)),
                                             .logits = on(be, hae_tensor_3d(ld, HAE_F32, HAE_CPU, 1, Q, cap)),
                                             .q_scale = on(be, hae_tensor_3d(qsd, HAE_F32, HAE_CPU, 1, Q, 1)),
                                             .w_scale = 1.0f}));
        } else {
            if (idt == HAE_BF16) HAE_TRY(hae_convert(be, &qf, &qc));
            HAE_TRY(hae_gemm(be, &(hae_gemm_args){.a = qc, .b = on(be, t2(kr, idt, cap, DI)),
                                                  .c = on(be, t2(ld, HAE_F32, Q, cap))}));
        }
        HAE_TRY(hae_topk(be, &(hae_topk_args){.logits = on(be, t2(ld, HAE_F32, Q, cap)),
                                              .lens = on(be, hae_tensor_1d(lensd, HAE_I32, HAE_CPU, Q)),
                                              .out = on(be, t2(idxd, HAE_I32, Q, k))}));
        hop_queries(pr, D);
        HAE_TRY(hae_backend_upload(be, qd, pr->qh, sizeof(float) * (size_t)(Q * D)));
        hae_sparse_attention_args a = {.q = on(be, hae_tensor_4d(qd, HAE_F32, HAE_CPU, 1, Q, 1, D)),
                                       .k_cache = on(be, hae_tensor_4d(kd, HAE_F32, HAE_CPU, 1, cap, 1, D)),
                                       .v_cache = on(be, hae_tensor_4d(vd, HAE_F32, HAE_CPU, 1, cap, 1, D)),
                                       .idx = on(be, hae_tensor_3d(idxd, HAE_I32, HAE_CPU, 1, Q, k)),
                                       .seq_lens = on(be, hae_tensor_1d(sld, HAE_I32, HAE_CPU, 1)),
                                       .out = on(be, hae_tensor_4d(od, HAE_F32, HAE_CPU, 1, Q, 1, D)),
                                       .scale = pr->p->scale};
        HAE_TRY(hae_sparse_attention(be, &a));
        HAE_TRY(hae_backend_download(be, pr->oh, od, sizeof(float) * (size_t)(Q * D)));
        hop_decode(pr, D, h);
    }
    return HAE_OK;
}

/* The linear kinds: the context through the kind's recurrence, every token with the same gate:
 * log decay g per token from raw gate log(expm1(-g)) (softplus gate, A_log 0, dt_bias 0), or for the
 * fixed decay A_log = log(-g); beta = sigmoid(beta_logit). The questions are then a call with zero
 * keys and values, no decay and no delta: each writes k v^T = 0, so every question reads the state
 * the context left and the state is unchanged for the next hop. */
static hae_status run_linear(probe *pr, bufs *b, hae_linear_kind lk) {
    hae_backend *be = pr->be;
    const hae_probe_args *p = pr->p;
    const int64_t K = pr->K, V = pr->V, L = pr->L, Q = pr->Q;
    const hae_decay decay = p->log_decay == 0.0f ? HAE_DECAY_NONE : lk.decay;
    const hae_qk_map map = p->kind_qk_map ? lk.qk_map : HAE_QK_L2;
    const int64_t ng = decay == HAE_DECAY_CHANNEL ? L * K : L;
    float *g = malloc(sizeof(float) * (size_t)ng), *beta = malloc(sizeof(float) * (size_t)L);
    hae_status st = HAE_OK;
    if (!g || !beta) st = hae_error(HAE_ERR_OOM, "hae_probe_run (%s): gates of %lld tokens", hae_layer_kind_name(p->kind), (long long)L);
    const float raw = p->log_decay < 0 ? (float)log(expm1(-(double)p->log_decay)) : 0.0f;
    const float a_log = decay == HAE_DECAY_FIXED ? (float)log(-(double)p->log_decay) : 0.0f;
    for (int64_t i = 0; st == HAE_OK && i < ng; i++) g[i] = raw;
    for (int64_t i = 0; st == HAE_OK && i < L; i++) beta[i] = p->beta_logit;
    void *qz, *kd, *vd, *gd, *bd, *ad, *dtd, *sd, *od, *qd, *kz, *vz, *ws = NULL;
    if (st == HAE_OK) st = dev_zeros(b, sizeof(float) * (size_t)(L * K), &qz);
    if (st == HAE_OK) st = dev_put(b, pr->wk, sizeof(float) * (size_t)(L * K), &kd);
    if (st == HAE_OK) st = dev_put(b, pr->wv, sizeof(float) * (size_t)(L * V), &vd);
    if (st == HAE_OK) st = dev_put(b, g, sizeof(float) * (size_t)ng, &gd);
    if (st == HAE_OK) st = dev_put(b, beta, sizeof(float) * (size_t)L, &bd);
    if (st == HAE_OK) st = dev_put(b, &a_log, sizeof a_log, &ad);
    if (st == HAE_OK) st = dev_zeros(b, sizeof(float) * (size_t)K, &dtd);
    if (st == HAE_OK) st = dev_zeros(b, sizeof(float) * (size_t)(K * V), &sd);
    if (st == HAE_OK) st = dev_zeros(b, sizeof(float) * (size_t)((L > Q ? L : Q) * V), &od);
    free(g), free(beta);
    HAE_TRY(st);
    hae_linear_attn_args a = {.q = on(be, hae_tensor_4d(qz, HAE_F32, HAE_CPU, 1, L, 1, K)),
                              .k = on(be, hae_tensor_4d(kd, HAE_F32, HAE_CPU, 1, L, 1, K)),
                              .v = on(be, hae_tensor_4d(vd, HAE_F32, HAE_CPU, 1, L, 1, V)),
                              .state = on(be, hae_tensor_4d(sd, HAE_F32, HAE_CPU, 1, 1, K, V)),
                              .out = on(be, hae_tensor_4d(od, HAE_F32, HAE_CPU, 1, L, 1, V)),
                              .decay = decay, .delta = lk.delta, .gate = HAE_GATE_SOFTPLUS, .lower_bound = -5.0f,
                              .qk_map = map, .scale = 1.0f, .chunk = p->chunk};
    if (decay == HAE_DECAY_CHANNEL) a.g = on(be, hae_tensor_4d(gd, HAE_F32, HAE_CPU, 1, L, 1, K));
    if (decay == HAE_DECAY_HEAD) a.g = on(be, hae_tensor_3d(gd, HAE_F32, HAE_CPU, 1, L, 1));
    if (lk.delta) a.beta = on(be, hae_tensor_3d(bd, HAE_F32, HAE_CPU, 1, L, 1));
    if (decay != HAE_DECAY_NONE) a.A_log = on(be, hae_tensor_1d(ad, HAE_F32, HAE_CPU, 1));
    if (decay == HAE_DECAY_CHANNEL || decay == HAE_DECAY_HEAD)
        a.dt_bias = on(be, hae_tensor_1d(dtd, HAE_F32, HAE_CPU, decay == HAE_DECAY_CHANNEL ? K : 1));
    HAE_TRY(hae_linear_attn_workspace(be, &a, &a.workspace_bytes));
    if (a.workspace_bytes) HAE_TRY(dev_zeros(b, a.workspace_bytes, &ws));
    a.workspace = ws;
    HAE_TRY(hae_linear_attn(be, &a));

    HAE_TRY(dev_zeros(b, sizeof(float) * (size_t)(Q * K), &qd));
    HAE_TRY(dev_zeros(b, sizeof(float) * (size_t)(Q * K), &kz));
    HAE_TRY(dev_zeros(b, sizeof(float) * (size_t)(Q * V), &vz));
    hae_linear_attn_args r = {.q = on(be, hae_tensor_4d(qd, HAE_F32, HAE_CPU, 1, Q, 1, K)),
                              .k = on(be, hae_tensor_4d(kz, HAE_F32, HAE_CPU, 1, Q, 1, K)),
                              .v = on(be, hae_tensor_4d(vz, HAE_F32, HAE_CPU, 1, Q, 1, V)), .state = a.state,
                              .out = on(be, hae_tensor_4d(od, HAE_F32, HAE_CPU, 1, Q, 1, V)), .decay = HAE_DECAY_NONE,
                              .delta = false, .gate = HAE_GATE_SOFTPLUS, .lower_bound = -5.0f, .qk_map = map,
                              .scale = 1.0f, .chunk = 0};
    for (int64_t h = 0; h < pr->H; h++) {
        hop_queries(pr, K);
        HAE_TRY(hae_backend_upload(be, qd, pr->qh, sizeof(float) * (size_t)(Q * K)));
        HAE_TRY(hae_linear_attn(be, &r));
        HAE_TRY(hae_backend_download(be, pr->oh, od, sizeof(float) * (size_t)(Q * V)));
        hop_decode(pr, V, h);
    }
    return HAE_OK;
}

/* ---------------------------------------------------------------- entry point */

static hae_status check_probe(const hae_probe_args *p, const hae_task *t, hae_linear_kind *lk, bool *linear) {
    const char *op = "hae_probe_run";
    if ((unsigned)p->kind >= HAE_LAYER_KIND_COUNT)
        return hae_error(HAE_ERR_INVALID, "%s: kind %d is not a hae_layer_kind", op, (int)p->kind);
    *linear = hae_linear_kind_of(p->kind, lk);
    const char *kn = hae_layer_kind_name(p->kind);
    if (!*linear && p->kind != HAE_LAYER_FULL && p->kind != HAE_LAYER_DSA)
        return hae_error(HAE_ERR_UNSUPPORTED, "%s: kind %s is not probed (probes: full, dsa and the linear kinds)", op, kn);
    if (t->n_queries < 1 || t->hops < 1 || t->context < 1 || t->context > t->n_tokens || !t->tokens)
        return hae_error(HAE_ERR_INVALID, "%s: task %s with %lld questions, %d hops, context %lld of %lld tokens is not a "
                         "generated task", op, hae_task_kind_name(t->kind), (long long)t->n_queries, t->hops,
                         (long long)t->context, (long long)t->n_tokens);
    if (p->K < 1 || p->V < 1)
        return hae_error(HAE_ERR_INVALID, "%s (%s): K = %lld and V = %lld must be >= 1", op, kn, (long long)p->K, (long long)p->V);
    if (p->K > 4096 || p->V > 4096)
        return hae_error(HAE_ERR_INVALID, "%s (%s): K = %lld and V = %lld must be <= 4096", op, kn, (long long)p->K,
                         (long long)p->V);
    if (!(p->key_cos >= 0 && p->key_cos < 1))
        return hae_error(HAE_ERR_INVALID, "%s (%s): key_cos %g must be in [0, 1)", op, kn, p->key_cos);
    if ((unsigned)p->values > HAE_CODE_ONEHOT)
        return hae_error(HAE_ERR_INVALID, "%s (%s): values %d is not a hae_value_code", op, kn, (int)p->values);
    const int64_t nvals = t->value_hi - t->value_lo;
    if (p->values == HAE_CODE_ONEHOT && nvals > p->V)
        return hae_error(HAE_ERR_INVALID, "%s (%s): one-hot value codes need V >= the task's %lld value tokens, V = %lld",
                         op, kn, (long long)nvals, (long long)p->V);
    if (!*linear && !(p->scale > 0 && isfinite(p->scale)))
        return hae_error(HAE_ERR_INVALID, "%s (%s): scale %g must be finite and > 0", op, kn, (double)p->scale);
    if (p->kind == HAE_LAYER_DSA) {
        if (p->topk < 1) return hae_error(HAE_ERR_INVALID, "%s (dsa): topk %lld < 1", op, (long long)p->topk);
        if (p->K > 128)
            return hae_error(HAE_ERR_INVALID, "%s (dsa): K = %lld exceeds the indexer's D_I = 128", op, (long long)p->K);
        if (p->index_dtype != HAE_FP8_E4M3 && p->index_dtype != HAE_BF16 && p->index_dtype != HAE_F32)
            return hae_error(HAE_ERR_INVALID, "%s (dsa): index_dtype %s (expected fp8-e4m3, bf16 or f32)", op,
                             hae_dtype_name(p->index_dtype));
    }
    if (*linear) {
        if (!(p->log_decay <= 0 && isfinite(p->log_decay)))
            return hae_error(HAE_ERR_INVALID, "%s (%s): log_decay %g must be finite and <= 0 (0: no forgetting)", op, kn,
                             (double)p->log_decay);
        if (!isfinite(p->beta_logit))
            return hae_error(HAE_ERR_INVALID, "%s (%s): beta_logit %g must be finite", op, kn, (double)p->beta_logit);
    }
    return HAE_OK;
}

/* A question is right when its last n decoded tokens are its n answers (n = 1 but for the list form). */
static int64_t score(const probe *pr) {
    const hae_task *t = pr->task;
    int64_t correct = 0;
    for (int64_t i = 0; i < pr->Q; i++) {
        int64_t n = t->answer_off[i + 1] - t->answer_off[i];
        bool ok = n >= 1 && n <= pr->H;
        for (int64_t j = 0; ok && j < n; j++) ok = pr->decoded[i * pr->H + pr->H - n + j] == t->answers[t->answer_off[i] + j];
        correct += ok;
    }
    return correct;
}

hae_status hae_probe_run(hae_backend *be, const hae_probe_args *p, const hae_task *task, hae_probe_result *out) {
    if (!be || !p || !task || !out) return hae_error(HAE_ERR_INVALID, "hae_probe_run: be, p, task and out must not be NULL");
    hae_linear_kind lk = {0}; /* stays zero for the softmax kinds */
    bool linear = false;
    HAE_TRY(check_probe(p, task, &lk, &linear));
    probe pr = {.p = p, .task = task, .be = be, .K = p->K, .V = p->V, .L = task->context, .Q = task->n_queries,
                .H = task->hops};
    const int64_t D = p->K > p->V ? p->K : p->V, DQ = D > 128 ? D : 128;
    pr.kc = calloc((size_t)(task->vocab * p->K), sizeof(float));
    pr.vc = calloc((size_t)(task->vocab * p->V), sizeof(float));
    pr.wk = calloc((size_t)(pr.L * p->K), sizeof(float));
    pr.wv = calloc((size_t)(pr.L * p->V), sizeof(float));
    pr.cur = malloc(sizeof(int32_t) * (size_t)pr.Q);
    pr.decoded = malloc(sizeof(int32_t) * (size_t)(pr.Q * pr.H));
    pr.qh = malloc(sizeof(float) * (size_t)(pr.Q * DQ));
    pr.oh = malloc(sizeof(float) * (size_t)(pr.Q * D));
    bufs b = {.be = be};
    hae_status st = HAE_OK;
    if (!pr.kc || !pr.vc || !pr.wk || !pr.wv || !pr.cur || !pr.decoded || !pr.qh || !pr.oh)
        st = hae_error(HAE_ERR_OOM, "hae_probe_run: codes for a vocabulary of %lld and a context of %lld tokens",
                       (long long)task->vocab, (long long)pr.L);
    if (st == HAE_OK) st = make_codes(&pr);
    if (st == HAE_OK) {
        memcpy(pr.cur, task->query_key, sizeof(int32_t) * (size_t)pr.Q);
        st = p->kind == HAE_LAYER_FULL ? run_full(&pr, &b) : p->kind == HAE_LAYER_DSA ? run_dsa(&pr, &b) : run_linear(&pr, &b, lk);
        if (st != HAE_OK)
            hae_error_wrap(st, "hae_probe_run (%s on %s, context %lld)", hae_layer_kind_name(p->kind),
                           hae_task_kind_name(task->kind), (long long)pr.L);
    }
    if (st == HAE_OK) {
        const bool decays = linear && lk.decay != HAE_DECAY_NONE;
        *out = (hae_probe_result){.kind = p->kind, .task = task->kind, .context = pr.L, .pairs = task->n_pairs,
                                  .hops = task->hops, .K = p->K, .V = p->V,
                                  .topk = p->kind == HAE_LAYER_DSA ? p->topk : 0, .index_dtype = p->index_dtype,
                                  .key_cos = p->key_cos, .log_decay = decays ? p->log_decay : 0.0f,
                                  .qk_map = linear && p->kind_qk_map ? lk.qk_map : HAE_QK_L2, .queries = pr.Q,
                                  .correct = score(&pr)};
        out->recall = (double)out->correct / (double)out->queries;
    }
    bufs_free(&b);
    free(pr.kc), free(pr.vc), free(pr.wk), free(pr.wv), free(pr.cur), free(pr.decoded), free(pr.qh), free(pr.oh);
    return st;
}

/* ---------------------------------------------------------------- reports */

hae_status hae_probe_report(const hae_probe_result *r, int64_t n, FILE *markdown, FILE *jsonl) {
    if (n < 0 || (n > 0 && !r)) return hae_error(HAE_ERR_INVALID, "hae_probe_report: %lld results at %p", (long long)n, (const void *)r);
    if (markdown) {
        fprintf(markdown, "| kind | task | context | pairs | hops | K | V | top-k | index | key cos | log decay | map | "
                          "queries | recall |\n|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|---:|---:|\n");
        for (int64_t i = 0; i < n; i++) {
            const hae_probe_result *x = r + i;
            bool dsa = x->kind == HAE_LAYER_DSA, lin = hae_linear_kind_of(x->kind, &(hae_linear_kind){0});
            char topk[24] = "-";
            if (dsa) snprintf(topk, sizeof topk, "%lld", (long long)x->topk);
            fprintf(markdown, "| %s | %s | %lld | %lld | %d | %lld | %lld | %s | %s | %.6g | %.4g | %s | %lld | %.4f |\n",
                    hae_layer_kind_name(x->kind), hae_task_kind_name(x->task), (long long)x->context, (long long)x->pairs,
                    x->hops, (long long)x->K, (long long)x->V, topk, dsa ? hae_dtype_name(x->index_dtype) : "-",
                    x->key_cos, (double)x->log_decay, lin ? (x->qk_map == HAE_QK_L2 ? "l2" : "elu+1") : "-",
                    (long long)x->queries, x->recall);
        }
        if (ferror(markdown)) return hae_error(HAE_ERR_IO, "hae_probe_report: writing the markdown table failed");
    }
    if (jsonl) {
        for (int64_t i = 0; i < n; i++) {
            const hae_probe_result *x = r + i;
            bool dsa = x->kind == HAE_LAYER_DSA, lin = hae_linear_kind_of(x->kind, &(hae_linear_kind){0});
            fprintf(jsonl,
                    "{\"kind\":\"%s\",\"task\":\"%s\",\"context\":%lld,\"pairs\":%lld,\"hops\":%d,\"K\":%lld,\"V\":%lld,"
                    "\"topk\":%lld,\"index_dtype\":%s%s%s,\"key_cos\":%.17g,\"log_decay\":%.7g,\"qk_map\":%s,"
                    "\"queries\":%lld,\"correct\":%lld,\"recall\":%.17g}\n",
                    hae_layer_kind_name(x->kind), hae_task_kind_name(x->task), (long long)x->context, (long long)x->pairs,
                    x->hops, (long long)x->K, (long long)x->V, (long long)x->topk, dsa ? "\"" : "",
                    dsa ? hae_dtype_name(x->index_dtype) : "null", dsa ? "\"" : "", x->key_cos, (double)x->log_decay,
                    lin ? (x->qk_map == HAE_QK_L2 ? "\"l2\"" : "\"elu+1\"") : "null", (long long)x->queries,
                    (long long)x->correct, x->recall);
        }
        if (ferror(jsonl)) return hae_error(HAE_ERR_IO, "hae_probe_report: writing JSONL failed");
    }
    return HAE_OK;
}

/* ---------------------------------------------------------------- softmax dilution */

/* The needle sits at a random position; the query is its key. The needle's weight is
 * exp(scale q . k_needle - lse), with lse from sparse attention over every position (full) or over
 * the indexer's top-k (sparse). Values are zero: only the LSE is used. */
hae_status hae_probe_dilution(hae_backend *be, const hae_dilution_args *a, hae_dilution_result *out) {
    const char *op = "hae_probe_dilution";
    if (!be || !a || !out) return hae_error(HAE_ERR_INVALID, "%s: NULL argument", op);
    if (a->length < 2 || a->length > INT32_MAX)
        return hae_error(HAE_ERR_INVALID, "%s: length %lld must be in [2, 2^31)", op, (long long)a->length);
    if (a->D != 128) return hae_error(HAE_ERR_INVALID, "%s: D %lld must be 128 (the indexer's head dim)", op, (long long)a->D);
    if (a->topk < 1) return hae_error(HAE_ERR_INVALID, "%s: topk %lld must be >= 1", op, (long long)a->topk);
    const int64_t L = a->length, D = a->D, k = a->topk < L ? a->topk : L, P = 64, pages = (L + P - 1) / P;
    const int64_t row = P * (D + 4);
    eval_rng r = eval_rng_make(a->seed, 0x64696cu);
    const int64_t needle = eval_rng_below(&r, L);
    float *keys = malloc(sizeof(float) * (size_t)(L * D)), *q = malloc(sizeof(float) * (size_t)D);
    int32_t *all = malloc(sizeof(int32_t) * (size_t)L), *table = malloc(sizeof(int32_t) * (size_t)pages);
    int32_t *picked = malloc(sizeof(int32_t) * (size_t)k), len = (int32_t)L;
    bufs b = {.be = be};
    hae_status st = keys && q && all && table && picked ? HAE_OK : hae_error(HAE_ERR_OOM, "%s: %lld keys", op, (long long)L);
    for (int64_t i = 0; st == HAE_OK && i < L * D; i++) keys[i] = (float)eval_rng_normal(&r);
    double logit = 0;
    for (int64_t e = 0; st == HAE_OK && e < D; e++) q[e] = keys[needle * D + e], logit += (double)q[e] * q[e];
    logit /= sqrt((double)D);
    for (int64_t s = 0; st == HAE_OK && s < L; s++) all[s] = (int32_t)s;
    for (int64_t j = 0; st == HAE_OK && j < pages; j++) table[j] = (int32_t)j;
    void *kd = NULL, *vd = NULL, *qd = NULL, *od = NULL, *lsed = NULL, *alld = NULL, *lend = NULL, *rot = NULL;
    void *q8 = NULL, *qs = NULL, *k8 = NULL, *ks = NULL, *cache = NULL, *tab = NULL, *one = NULL, *lg = NULL, *idx = NULL;
    const float w1 = 1.0f;
    if (st == HAE_OK) st = dev_put(&b, keys, sizeof(float) * (size_t)(L * D), &kd);
    if (st == HAE_OK) st = dev_zeros(&b, sizeof(float) * (size_t)(L * D), &vd);
    if (st == HAE_OK) st = dev_put(&b, q, sizeof(float) * (size_t)D, &qd);
    if (st == HAE_OK) st = dev_zeros(&b, sizeof(float) * (size_t)D, &od);
    if (st == HAE_OK) st = dev_zeros(&b, sizeof(float), &lsed);
    if (st == HAE_OK) st = dev_put(&b, all, sizeof(int32_t) * (size_t)L, &alld);
    if (st == HAE_OK) st = dev_put(&b, &len, sizeof len, &lend);
    hae_tensor sl = on(be, hae_tensor_1d(lend, HAE_I32, HAE_CPU, 1));
    hae_sparse_attention_args sa = {.q = on(be, hae_tensor_4d(qd, HAE_F32, HAE_CPU, 1, 1, 1, D)),
                                    .k_cache = on(be, hae_tensor_4d(kd, HAE_F32, HAE_CPU, 1, L, 1, D)),
                                    .v_cache = on(be, hae_tensor_4d(vd, HAE_F32, HAE_CPU, 1, L, 1, D)),
                                    .idx = on(be, hae_tensor_3d(alld, HAE_I32, HAE_CPU, 1, 1, L)), .seq_lens = sl,
                                    .out = on(be, hae_tensor_4d(od, HAE_F32, HAE_CPU, 1, 1, 1, D)),
                                    .lse = on(be, hae_tensor_3d(lsed, HAE_F32, HAE_CPU, 1, 1, 1)),
                                    .scale = 1.0f / sqrtf((float)D)};
    float lse = 0;
    if (st == HAE_OK) st = hae_sparse_attention(be, &sa);
    if (st == HAE_OK) st = hae_backend_download(be, &lse, lsed, sizeof lse);
    if (st == HAE_OK) st = hae_backend_sync(be);
    if (st == HAE_OK) out->full_weight = exp(logit - (double)lse);
    /* the indexer: rotated copies of the keys and the query, FP8, the page cache, logits, top-k */
    if (st == HAE_OK) st = dev_put(&b, keys, sizeof(float) * (size_t)(L * D), &rot);
    if (st == HAE_OK) st = dev_zeros(&b, (size_t)(L * D), &k8);
    if (st == HAE_OK) st = dev_zeros(&b, sizeof(float) * (size_t)L, &ks);
    if (st == HAE_OK) st = dev_zeros(&b, (size_t)(pages * row), &cache);
    if (st == HAE_OK) st = dev_put(&b, table, sizeof(int32_t) * (size_t)pages, &tab);
    if (st == HAE_OK) st = dev_zeros(&b, (size_t)D, &q8);
    if (st == HAE_OK) st = dev_zeros(&b, sizeof(float), &qs);
    if (st == HAE_OK) st = dev_put(&b, &w1, sizeof w1, &one);
    if (st == HAE_OK) st = dev_zeros(&b, sizeof(float) * (size_t)L, &lg);
    if (st == HAE_OK) st = dev_zeros(&b, sizeof(int32_t) * (size_t)k, &idx);
    hae_index_cache ic = {.pages = on(be, t2(cache, HAE_FP8_E4M3, pages, row)),
                          .block_table = on(be, t2(tab, HAE_I32, 1, pages)), .page_size = (int)P, .head_dim = (int)D};
    hae_tensor kr = on(be, t2(rot, HAE_F32, L, D)), qr = on(be, t2(qd, HAE_F32, 1, D));
    if (st == HAE_OK) st = hae_hadamard(be, &(hae_hadamard_args){.x = kr});
    if (st == HAE_OK)
        st = hae_fp8_quant(be, &(hae_fp8_quant_args){.x = kr, .q = on(be, t2(k8, HAE_FP8_E4M3, L, D)),
                                                     .scale = on(be, t2(ks, HAE_F32, L, 1))});
    if (st == HAE_OK)
        st = hae_index_write(be, &(hae_index_write_args){.k = on(be, hae_tensor_3d(k8, HAE_FP8_E4M3, HAE_CPU, 1, L, D)),
                                                         .k_scale = on(be, hae_tensor_3d(ks, HAE_F32, HAE_CPU, 1, L, 1)),
                                                         .cache = ic, .seq_lens = sl});
    if (st == HAE_OK) st = hae_hadamard(be, &(hae_hadamard_args){.x = qr}); /* the attention query is reuploaded below */
    if (st == HAE_OK)
        st = hae_fp8_quant(be, &(hae_fp8_quant_args){.x = qr, .q = on(be, t2(q8, HAE_FP8_E4M3, 1, D)),
                                                     .scale = on(be, t2(qs, HAE_F32, 1, 1))});
    if (st == HAE_OK)
        st = hae_index_logits(be, &(hae_index_logits_args){
                                      .q = on(be, hae_tensor_4d(q8, HAE_FP8_E4M3, HAE_CPU, 1, 1, 1, D)),
                                      .w = on(be, hae_tensor_3d(one, HAE_F32, HAE_CPU, 1, 1, 1)), .cache = ic,
                                      .seq_lens = sl, .logits = on(be, hae_tensor_3d(lg, HAE_F32, HAE_CPU, 1, 1, L)),
                                      .q_scale = on(be, hae_tensor_3d(qs, HAE_F32, HAE_CPU, 1, 1, 1)), .w_scale = 1.0f});
    if (st == HAE_OK)
        st = hae_topk(be, &(hae_topk_args){.logits = on(be, t2(lg, HAE_F32, 1, L)), .lens = sl,
                                           .out = on(be, t2(idx, HAE_I32, 1, k))});
    if (st == HAE_OK) st = hae_backend_upload(be, qd, q, sizeof(float) * (size_t)D);
    sa.idx = on(be, hae_tensor_3d(idx, HAE_I32, HAE_CPU, 1, 1, k));
    if (st == HAE_OK) st = hae_sparse_attention(be, &sa);
    if (st == HAE_OK) st = hae_backend_download(be, &lse, lsed, sizeof lse);
    if (st == HAE_OK) st = hae_backend_download(be, picked, idx, sizeof(int32_t) * (size_t)k);
    if (st == HAE_OK) st = hae_backend_sync(be);
    if (st == HAE_OK) {
        out->needle_picked = false;
        for (int64_t i = 0; i < k; i++) out->needle_picked |= picked[i] == needle;
        out->sparse_weight = out->needle_picked ? exp(logit - (double)lse) : 0.0;
    }
    bufs_free(&b);
    free(keys), free(q), free(all), free(table), free(picked);
    return st;
}

/* Hand-built circuits (contract in hae.h, the construction in eval/README.md): a config and weights that
 * make the engine's own stack answer a task's questions exactly, and the scoring of a task through
 * hae_model_forward.
 *
 * The residual stream x (d_model dims, f32) holds, per position t:
 *     ONE   c0 = 1e4 for every token: it dominates every RMSNorm, so each norm is a fixed scale (to
 *           |content|^2 / c0^2 ~ 1e-8) and, through norm weights c0 / sqrt(d), h = (1, content)
 *     TOK   code(tok_t)                       (n dims; the MLP after layer 0 leaves mark_t code(tok_t))
 *     FLAG  [tok_t is the layout's marker]     (mqar: a key; niah: NEEDLE; multihop: LINK)
 *     PREV  code(tok_t-1)                      (layer 0; its MLP leaves mark_t code(tok_t-1): the key)
 *     MARK  [marker at t - dist]               (layer 0; dist 1 for mqar, 2 for niah and multihop)
 *     CUR   the current query: code(tok_t) after layer 0, each hop's answer after that hop's MLP
 *     NEW   a hop's output, moved to CUR and cleared by the MLP after it
 * Layer 0 is deltanet with a constant key (q = k = e0, beta = 1), so S_t = e0 v_t^T and o_t = v_t: the
 * short conv's taps put code(tok_t-1) in head 0 and FLAG(tok_t-dist) in head 1, SiLU(32 x) = 32 x for
 * binary x, and the gated RMSNorm and o_proj scale them back to 0/1. Every MLP is SwiGLU used two ways:
 * gate silu(32) = 32 makes a linear unit, gate silu(32 (2 MARK - 1)) an AND with MARK. Retrieval hop j:
 *     softmax kinds  q = sqrt(48) CUR, k = sqrt(48) PREV, v = TOK, scale 1: logit 48 x code overlap
 *     linear kinds   q, k, v = SiLU(32 CUR), SiLU(32 PREV), SiLU(32 TOK) (current conv tap), the kind's
 *                    map, decay and beta; o = S^T q through the gated RMSNorm, scaled so that an exact
 *                    answer comes out as its code
 * and the LM head's row for a value token is its code over CUR. */
#include "eval_rng.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define C_ONE 1e4       /* the constant channel */
#define AMP 32.0f       /* linear layers' inputs: SiLU(32) = 32 to 4e-13, SiLU(0) = 0 */
#define GATE 40.0f      /* sigmoid(40) = 1 in f32: beta of the previous-token step, every output gate */
#define GAP 48.0        /* softmax hops: logit per unit of code overlap */
#define MLP_G 32.0      /* SwiGLU gates: silu(32) = 32 (a linear unit), silu(-32) = -4e-13 (a closed one) */
#define NO_DECAY -80.0f /* A_log of a decay exp(-e^-80) = 1 in f32 */
#define CONV_W 4        /* short conv width: taps t-3 .. t */
#define LIN_H 4         /* linear layers' heads (2 used): the default configs' shapes, whose rows CUDA has run */
#define MAX_W 16        /* most ones per code */

typedef struct {
    const hae_circuit_args *a;
    int64_t f;       /* first task token (after the noise range) */
    int64_t nh;      /* mqar, niah: keys (and values) per range */
    int64_t n, K;    /* code dims; head dim of the linear and attention layers (64 or 128) */
    int64_t d, F, V; /* d_model, MLP width, vocab */
    int64_t n_codes;
    int w;           /* ones per code */
    int dist;        /* the marker sits dist tokens before the association's value */
    int64_t one, tok, flag, prev, mark, cur, nw; /* residual offsets */
    uint8_t *ch;     /* [n_codes, w] the channels of each code's ones, ascending */
} circuit;

static double binom(int64_t n, int k) {
    double r = 1;
    for (int i = 0; i < k; i++) r = r * (double)(n - i) / (double)(i + 1);
    return r;
}

static hae_status circuit_init(circuit *c, const hae_circuit_args *a, const char *op) {
    memset(c, 0, sizeof *c);
    if (!a) return hae_error(HAE_ERR_INVALID, "%s: args must not be NULL", op);
    c->a = a;
    if ((unsigned)a->task >= HAE_TASK_KIND_COUNT)
        return hae_error(HAE_ERR_INVALID, "%s: task %d is not a hae_task_kind", op, (int)a->task);
    if (a->hops < 1 || a->hops > HAE_CIRCUIT_MAX_HOPS)
        return hae_error(HAE_ERR_INVALID, "%s: hops %d outside 1..%d (a retrieval layer per hop)", op, a->hops,
                         HAE_CIRCUIT_MAX_HOPS);
    if (a->task != HAE_TASK_MULTIHOP && a->hops != 1)
        return hae_error(HAE_ERR_INVALID, "%s: %s is one lookup per question; hops %d needs the multihop layout", op,
                         hae_task_kind_name(a->task), a->hops);
    for (int j = 0; j < a->hops; j++)
        if ((unsigned)a->kinds[j] >= HAE_LAYER_KIND_COUNT || !hae_layer_kind_built(a->kinds[j]))
            return hae_error(HAE_ERR_INVALID, "%s: hop %d's kind %d is not a built layer kind", op, j + 1,
                             (int)a->kinds[j]);
    c->n = a->code_dim ? a->code_dim : 64;
    if (c->n < 1 || c->n > 128)
        return hae_error(HAE_ERR_INVALID, "%s: code_dim %lld outside 1..128 (the codes live in one 128-wide head)", op,
                         (long long)a->code_dim);
    if (a->noise_vocab < 0) return hae_error(HAE_ERR_INVALID, "%s: noise_vocab %lld < 0", op, (long long)a->noise_vocab);
    c->f = HAE_TOK_FIRST + a->noise_vocab;
    if (a->vocab < c->f + 2 || a->vocab > INT32_MAX)
        return hae_error(HAE_ERR_INVALID, "%s: vocab %lld must be in [%lld, 2^31): %d special ids + noise_vocab %lld + "
                         "at least 2 task tokens", op, (long long)a->vocab, (long long)(c->f + 2), HAE_TOK_FIRST,
                         (long long)a->noise_vocab);
    if (!(a->log_decay <= 0.0f && isfinite(a->log_decay)))
        return hae_error(HAE_ERR_INVALID, "%s: log_decay %g must be finite and <= 0 (0: no forgetting)", op,
                         (double)a->log_decay);
    if (!isfinite(a->beta_logit)) return hae_error(HAE_ERR_INVALID, "%s: beta_logit %g is not finite", op, (double)a->beta_logit);
    if (a->window < 0 || a->topk < 0 || a->context < 0)
        return hae_error(HAE_ERR_INVALID, "%s: window %lld, topk %lld and context %lld must be >= 0 (0: the default)", op,
                         (long long)a->window, (long long)a->topk, (long long)a->context);
    c->nh = (a->vocab - c->f) / 2;
    c->n_codes = a->task == HAE_TASK_MULTIHOP ? a->vocab - c->f : c->nh;
    /* the fewest ones that give every code its own set (C(n, w) grows up to w = n / 2) */
    const int wmax = c->n < 2 ? 1 : c->n / 2 < MAX_W ? (int)(c->n / 2) : MAX_W;
    c->w = 1;
    while (c->w < wmax && binom(c->n, c->w) < (double)c->n_codes) c->w++;
    if (binom(c->n, c->w) < (double)c->n_codes)
        return hae_error(HAE_ERR_INVALID, "%s: vocab %lld has %lld tokens to code; code_dim %lld holds at most %.0f codes "
                         "(sets of %d ones)", op, (long long)a->vocab, (long long)c->n_codes, (long long)c->n,
                         binom(c->n, wmax), wmax);
    c->dist = a->task == HAE_TASK_MQAR ? 1 : 2;
    c->K = c->n <= 64 ? 64 : 128;
    c->V = a->vocab;
    c->F = 4 * c->n;
    c->one = 0, c->tok = 1, c->flag = 1 + c->n, c->prev = 2 + c->n, c->mark = 2 + 2 * c->n, c->cur = 3 + 2 * c->n;
    c->nw = 3 + 3 * c->n;
    c->d = (3 + 4 * c->n + 15) / 16 * 16;
    return HAE_OK;
}

/* Code index of token t (-1: none) and whether it can be an answer (the LM head decodes those). mqar and
 * niah give key i and value i the same code: keys are only ever read as keys, values as values. */
static int64_t code_of(const circuit *c, int64_t t, bool *value) {
    *value = false;
    if (t < c->f) return -1;
    if (c->a->task == HAE_TASK_MULTIHOP) return *value = true, t - c->f;
    if (t < c->f + c->nh) return t - c->f;
    if (t < c->f + 2 * c->nh) return *value = true, t - c->f - c->nh;
    return -1;
}

static bool is_marker(const circuit *c, int64_t t) {
    switch (c->a->task) {
    case HAE_TASK_MQAR: return t >= c->f && t < c->f + c->nh;
    case HAE_TASK_NIAH: return t == HAE_TOK_NEEDLE;
    default: return t == HAE_TOK_LINK;
    }
}

/* One-hot codes while they fit, else distinct random sets of w ones (128-bit masks in a hash set). */
static hae_status make_codes(circuit *c) {
    const int64_t N = c->n_codes, w = c->w;
    c->ch = malloc((size_t)(N * w));
    int64_t cap = 16;
    while (cap < 2 * N) cap *= 2;
    uint64_t *set = w > 1 ? calloc((size_t)(2 * cap), sizeof(uint64_t)) : NULL;
    if (!c->ch || (w > 1 && !set)) {
        free(set);
        return hae_error(HAE_ERR_OOM, "circuit: codes for %lld tokens", (long long)N);
    }
    eval_rng r = eval_rng_make(c->a->seed, 0x63697263u);
    uint8_t perm[128];
    for (int64_t i = 0; i < N; i++) {
        if (w == 1) {
            c->ch[i] = (uint8_t)i;
            continue;
        }
        for (;;) {
            for (int64_t x = 0; x < c->n; x++) perm[x] = (uint8_t)x;
            uint64_t lo = 0, hi = 0; /* the set's mask: never zero, so an empty slot is 0, 0 */
            for (int64_t x = 0; x < w; x++) {
                int64_t y = x + eval_rng_below(&r, c->n - x);
                uint8_t s = perm[x];
                perm[x] = perm[y], perm[y] = s;
                if (perm[x] < 64) lo |= 1ull << perm[x];
                else hi |= 1ull << (perm[x] - 64);
            }
            int64_t slot = (int64_t)(hae_mix64(lo ^ hae_mix64(hi)) & (uint64_t)(cap - 1));
            while ((set[2 * slot] || set[2 * slot + 1]) && (set[2 * slot] != lo || set[2 * slot + 1] != hi))
                slot = (slot + 1) & (cap - 1);
            if (set[2 * slot] == lo && set[2 * slot + 1] == hi) continue; /* drawn before */
            set[2 * slot] = lo, set[2 * slot + 1] = hi;
            for (int64_t x = 0, k = 0; x < c->n; x++)
                if (x < 64 ? (lo >> x) & 1 : (hi >> (x - 64)) & 1) c->ch[i * w + k++] = (uint8_t)x;
            break;
        }
    }
    free(set);
    return HAE_OK;
}

/* ---------------------------------------------------------------- the weights */

/* Named f32 tensors, zeroed, written as one safetensors file. */
typedef struct {
    hae_st_tensor t[24 * (HAE_CIRCUIT_MAX_HOPS + 1) + 4];
    float *buf[24 * (HAE_CIRCUIT_MAX_HOPS + 1) + 4];
    int n;
    bool oom;
} wlist;

static float *wl_add(wlist *l, int ndim, int64_t d0, int64_t d1, int64_t d2, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 6, 7)))
#endif
    ;
static float *wl_add(wlist *l, int ndim, int64_t d0, int64_t d1, int64_t d2, const char *fmt, ...) {
    static float dummy[1];
    HAE_ASSERT(l->n < (int)(sizeof l->t / sizeof l->t[0]));
    const int64_t numel = d0 * (ndim > 1 ? d1 : 1) * (ndim > 2 ? d2 : 1);
    float *p = calloc((size_t)numel, sizeof(float));
    if (!p) {
        l->oom = true;
        return dummy; /* writes land in a scratch element; the build fails afterwards */
    }
    hae_st_tensor *t = &l->t[l->n];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    t->dtype = HAE_F32;
    t->ndim = ndim;
    t->shape[0] = d0, t->shape[1] = d1, t->shape[2] = d2;
    t->data = p;
    t->nbytes = (size_t)numel * sizeof(float);
    l->buf[l->n++] = p;
    return p;
}

/* A matrix's element (r, c) of `cols` columns, guarded so that the scratch of a failed allocation is safe. */
#define AT(l, m, cols, r, c) (*((l)->oom ? (m) : (m) + (int64_t)(r) * (cols) + (c)))

/* w is wl_add's result: oom is read here, after the call has set it. */
static void norm_weights(const wlist *wl, const circuit *c, float *w) {
    if (wl->oom) return;
    w[c->one] = (float)(1.0 / sqrt((double)c->d));
    for (int64_t i = 1; i < 3 + 4 * c->n; i++) w[i] = (float)(C_ONE / sqrt((double)c->d));
}

/* The MLP after layer l (F = 4n units of silu(gate) up). After layer 0: PREV <- MARK PREV, TOK <- MARK TOK,
 * CUR <- TOK; after a hop: CUR <- NEW, NEW <- 0. */
static void mlp(wlist *wl, const circuit *c, int l) {
    const int64_t n = c->n, d = c->d, F = c->F;
    float *gate = wl_add(wl, 2, F, d, 0, "model.layers.%d.mlp.gate_proj.weight", l);
    float *up = wl_add(wl, 2, F, d, 0, "model.layers.%d.mlp.up_proj.weight", l);
    float *down = wl_add(wl, 2, d, F, 0, "model.layers.%d.mlp.down_proj.weight", l);
    const float s = (float)(1.0 / (MLP_G / (1.0 + exp(-MLP_G)))); /* 1 / silu(32) */
    for (int64_t j = 0; j < n; j++) {
        if (l == 0) {
            /* units j, 2n + j: open when MARK = 1; units n + j, 3n + j: linear */
            for (int64_t u = j; u < F; u += n) {
                const bool gated = u < n || (u >= 2 * n && u < 3 * n);
                AT(wl, gate, d, u, c->one) = (float)(gated ? -MLP_G : MLP_G);
                if (gated) AT(wl, gate, d, u, c->mark) = (float)(2 * MLP_G);
                const int64_t src = u < 2 * n ? c->prev + j : c->tok + j;
                AT(wl, up, d, u, src) = 1.0f;
                AT(wl, down, F, src, u) = gated ? s : -s;
            }
            AT(wl, down, F, c->cur + j, 3 * n + j) = s;
        } else {
            AT(wl, gate, d, j, c->one) = (float)MLP_G;
            AT(wl, gate, d, n + j, c->one) = (float)MLP_G;
            AT(wl, up, d, j, c->nw + j) = 1.0f;
            AT(wl, up, d, j, c->cur + j) = -1.0f;
            AT(wl, down, F, c->cur + j, j) = s;
            AT(wl, up, d, n + j, c->nw + j) = 1.0f;
            AT(wl, down, F, c->nw + j, n + j) = -s;
        }
    }
}

/* A linear-family layer (LIN_H heads of K, V = K, conv width 4). Layer 0 is the previous-token step (deltanet,
 * heads 0 and 1); a hop reads CUR, PREV and TOK through the current conv tap into head 0. Unused heads have
 * zero keys and values, so their state stays zero and their output is RMSNorm(0) = 0. */
static void linear_layer(wlist *wl, const circuit *c, int l, hae_layer_kind kind) {
    const int64_t n = c->n, d = c->d, K = c->K, H = LIN_H, W = CONV_W;
    const hae_circuit_args *a = c->a;
    const bool shift = l == 0;
    hae_linear_kind lk;
    HAE_ASSERT(hae_linear_kind_of(kind, &lk));
    char pre[64];
    snprintf(pre, sizeof pre, "model.layers.%d.attn.", l);
    float *q = wl_add(wl, 2, H * K, d, 0, "%sq_proj.weight", pre);
    float *k = wl_add(wl, 2, H * K, d, 0, "%sk_proj.weight", pre);
    float *v = wl_add(wl, 2, H * K, d, 0, "%sv_proj.weight", pre);
    if (lk.decay == HAE_DECAY_CHANNEL) wl_add(wl, 2, K, d, 0, "%sf_proj.0.weight", pre);
    if (lk.decay == HAE_DECAY_HEAD) wl_add(wl, 2, H, d, 0, "%sa_proj.weight", pre);
    if (lk.delta) {
        float *b = wl_add(wl, 2, H, d, 0, "%sb_proj.weight", pre);
        for (int64_t h = 0; h < H; h++) AT(wl, b, d, h, c->one) = shift ? GATE : a->beta_logit ? a->beta_logit : GATE;
    }
    float *g1 = wl_add(wl, 2, K, d, 0, "%sg_proj.0.weight", pre);
    AT(wl, g1, d, 0, c->one) = 1.0f;
    float *qc = wl_add(wl, 3, H * K, 1, W, "%sq_conv1d.weight", pre);
    float *kc = wl_add(wl, 3, H * K, 1, W, "%sk_conv1d.weight", pre);
    float *vc = wl_add(wl, 3, H * K, 1, W, "%sv_conv1d.weight", pre);
    if (lk.decay == HAE_DECAY_CHANNEL) wl_add(wl, 2, H * K, K, 0, "%sf_proj.1.weight", pre);
    float *g2 = wl_add(wl, 2, H * K, K, 0, "%sg_proj.1.weight", pre);
    for (int64_t r = 0; r < H * K; r++) AT(wl, g2, K, r, 0) = GATE;
    if (lk.decay != HAE_DECAY_NONE) {
        /* g = -exp(A_log) every token (fixed), or -exp(A_log) softplus(0 + dt_bias) with dt_bias 0 */
        const double per = lk.decay == HAE_DECAY_FIXED ? 1.0 : log(2.0);
        const float A = a->log_decay < 0 ? (float)log(-(double)a->log_decay / per) : NO_DECAY;
        float *Al = wl_add(wl, 1, H, 0, 0, "%sA_log", pre);
        for (int64_t h = 0; h < H && !wl->oom; h++) Al[h] = A;
        if (lk.decay != HAE_DECAY_FIXED)
            wl_add(wl, 1, lk.decay == HAE_DECAY_CHANNEL ? H * K : H, 0, 0, "%sdt_bias", pre);
    }
    float *on = wl_add(wl, 1, K, 0, 0, "%so_norm.weight", pre);
    for (int64_t i = 0; i < K && !wl->oom; i++) on[i] = 1.0f;
    float *o = wl_add(wl, 2, d, H * K, 0, "%so_proj.weight", pre);
    /* An exact head-0 output is AMP code / sqrt(K) on w of its K channels: the norm makes it sqrt(K / w). */
    const float back = (float)sqrt((double)c->w / (double)K);
    if (shift) {
        for (int64_t h = 0; h < H; h++) {
            AT(wl, q, d, h * K, c->one) = AMP;
            AT(wl, k, d, h * K, c->one) = AMP;
        }
        for (int64_t ch = 0; ch < H * K; ch++) {
            AT(wl, qc, W, ch, W - 1) = 1.0f;
            AT(wl, kc, W, ch, W - 1) = 1.0f;
        }
        for (int64_t j = 0; j < n; j++) {
            AT(wl, v, d, j, c->tok + j) = AMP;
            AT(wl, vc, W, j, W - 2) = 1.0f; /* token t - 1 */
            AT(wl, o, H * K, c->prev + j, j) = back;
        }
        AT(wl, v, d, K, c->flag) = AMP;
        AT(wl, vc, W, K, W - 1 - c->dist) = 1.0f; /* token t - dist */
        AT(wl, o, H * K, c->mark, K) = (float)(1.0 / sqrt((double)K));
        return;
    }
    for (int64_t j = 0; j < n; j++) {
        AT(wl, q, d, j, c->cur + j) = AMP;
        AT(wl, k, d, j, c->prev + j) = AMP;
        AT(wl, v, d, j, c->tok + j) = AMP;
        AT(wl, o, H * K, c->nw + j, j) = back;
    }
    for (int64_t ch = 0; ch < H * K; ch++) {
        AT(wl, qc, W, ch, W - 1) = 1.0f;
        AT(wl, kc, W, ch, W - 1) = 1.0f;
        AT(wl, vc, W, ch, W - 1) = 1.0f;
    }
}

/* A softmax hop (full, swa, dsa; one head of K, scale 1): logit GAP x overlap(CUR, PREV), value TOK -> NEW. */
static void attention_layer(wlist *wl, const circuit *c, int l) {
    const int64_t d = c->d, K = c->K;
    float *q = wl_add(wl, 2, K, d, 0, "model.layers.%d.self_attn.q_proj.weight", l);
    float *k = wl_add(wl, 2, K, d, 0, "model.layers.%d.self_attn.k_proj.weight", l);
    float *v = wl_add(wl, 2, K, d, 0, "model.layers.%d.self_attn.v_proj.weight", l);
    float *o = wl_add(wl, 2, d, K, 0, "model.layers.%d.self_attn.o_proj.weight", l);
    const float s = (float)sqrt(GAP);
    for (int64_t j = 0; j < c->n; j++) {
        AT(wl, q, d, j, c->cur + j) = s;
        AT(wl, k, d, j, c->prev + j) = s;
        AT(wl, v, d, j, c->tok + j) = 1.0f;
        AT(wl, o, K, c->nw + j, j) = 1.0f;
    }
}

static hae_status write_weights(const circuit *c, const char *path) {
    const int64_t V = c->V, d = c->d, w = c->w;
    wlist *wl = calloc(1, sizeof *wl);
    if (!wl) return hae_error(HAE_ERR_OOM, "circuit weights: out of host memory");
    float *emb = wl_add(wl, 2, V, d, 0, "model.embed_tokens.weight");
    float *head = wl_add(wl, 2, V, d, 0, "lm_head.weight");
    for (int64_t t = 0; t < V && !wl->oom; t++) {
        bool value;
        const int64_t code = code_of(c, t, &value);
        emb[t * d + c->one] = (float)C_ONE;
        if (is_marker(c, t)) emb[t * d + c->flag] = 1.0f;
        for (int64_t x = 0; code >= 0 && x < w; x++) {
            emb[t * d + c->tok + c->ch[code * w + x]] = 1.0f;
            if (value) head[t * d + c->cur + c->ch[code * w + x]] = 1.0f;
        }
    }
    norm_weights(wl, c, wl_add(wl, 1, d, 0, 0, "model.norm.weight"));
    for (int l = 0; l <= c->a->hops; l++) {
        const hae_layer_kind kind = l ? c->a->kinds[l - 1] : HAE_LAYER_DELTANET;
        norm_weights(wl, c, wl_add(wl, 1, d, 0, 0, "model.layers.%d.input_layernorm.weight", l));
        norm_weights(wl, c, wl_add(wl, 1, d, 0, 0, "model.layers.%d.post_attention_layernorm.weight", l));
        if (hae_linear_kind_of(kind, &(hae_linear_kind){0})) linear_layer(wl, c, l, kind);
        else attention_layer(wl, c, l);
        mlp(wl, c, l);
    }
    const char *keys[] = {"format", "producer"}, *vals[] = {"pt", "hae circuit"};
    hae_status st = wl->oom ? hae_error(HAE_ERR_OOM, "circuit weights: out of host memory (vocab %lld, d_model %lld)",
                                        (long long)V, (long long)d)
                            : hae_st_write(path, wl->t, wl->n, keys, vals, 2);
    for (int i = 0; i < wl->n; i++) free(wl->buf[i]);
    free(wl);
    return st;
}

/* ---------------------------------------------------------------- config, build */

static hae_status circuit_config(const circuit *c, const hae_config *base, hae_config *cfg, const char *op) {
    const hae_circuit_args *a = c->a;
    char ov[32][512], pattern[400] = "[deltanet";
    const char *ovp[32];
    int n = 0;
    for (int j = 0; j < a->hops; j++)
        snprintf(pattern + strlen(pattern), sizeof pattern - strlen(pattern), ", %s", hae_layer_kind_name(a->kinds[j]));
    strcat(pattern, "]");
#define OV(...) snprintf(ov[n++], sizeof ov[0], __VA_ARGS__)
    OV("name=circuit-%s", hae_task_kind_name(a->task));
    OV("model.vocab_size=%lld", (long long)c->V);
    OV("model.d_model=%lld", (long long)c->d);
    OV("model.n_layers=%d", a->hops + 1);
    OV("model.layer_pattern=%s", pattern);
    OV("model.rms_norm_eps=1e-6");
    OV("model.tie_word_embeddings=false");
    OV("model.mlp.intermediate_size=%lld", (long long)c->F);
    OV("model.attention.form=gqa");
    OV("model.attention.num_heads=1");
    OV("model.attention.num_kv_heads=1");
    OV("model.attention.head_dim=%lld", (long long)c->K);
    OV("model.attention.rope=none");
    OV("model.attention.softmax_scale=1");
    OV("model.linear_attn.num_heads=%d", LIN_H);
    OV("model.linear_attn.num_v_heads=0");
    OV("model.linear_attn.head_dim=%lld", (long long)c->K);
    OV("model.linear_attn.expand_v=1");
    OV("model.linear_attn.conv_size=%d", CONV_W);
    OV("model.linear_attn.safe_gate=false");
    OV("model.dsa.derived=true");
    OV("model.dsa.index_rope_dim=0");
    if (a->window) OV("model.swa.window_size=%lld", (long long)a->window);
    if (a->topk) OV("model.dsa.index_topk=%lld", (long long)a->topk);
    OV("runtime.dtype=f32");
    OV("runtime.batch=1");
    OV("runtime.prefill=%lld", (long long)a->context);
    OV("runtime.decode=0");
#undef OV
    HAE_ASSERT(n <= 32);
    for (int i = 0; i < n; i++) ovp[i] = ov[i];
    /* the base's text without its sweep and eval sections: they describe runs, not this model, and its eval
     * grid is checked against the model's vocabulary, which the circuit replaces */
    const char *dflt = hae_config_default_yaml();
    char *yaml = NULL;
    hae_config *two = base ? malloc(2 * sizeof *two) : NULL; /* the default, the base as used */
    hae_status st = base && !two ? hae_error(HAE_ERR_OOM, "%s: copies of the config", op) : HAE_OK;
    if (two) {
        st = hae_config_parse(dflt, strlen(dflt), "<default>", NULL, 0, &two[0]);
        two[1] = *base;
        two[1].eval = two[0].eval;
        two[1].sweep.n_axes = 0;
        if (st == HAE_OK) st = hae_config_to_yaml(&two[1], &yaml);
    }
    const char *text = base ? yaml : dflt;
    if (st == HAE_OK) st = hae_config_parse(text, strlen(text), base ? base->source : "<default>", ovp, n, cfg);
    free(yaml), free(two);
    return st == HAE_OK ? HAE_OK : hae_error_wrap(st, "%s", op);
}

hae_status hae_circuit_check(const hae_circuit_args *a, const hae_config *base, int *code_weight) {
    const char *op = "hae_circuit_check";
    circuit c;
    HAE_TRY(circuit_init(&c, a, op));
    if (a->context < 1) return hae_error(HAE_ERR_INVALID, "%s: context %lld < 1", op, (long long)a->context);
    hae_config *cfg = malloc(sizeof *cfg);
    if (!cfg) return hae_error(HAE_ERR_OOM, "%s: a config", op);
    hae_status st = circuit_config(&c, base, cfg, op);
    free(cfg);
    if (st == HAE_OK && code_weight) *code_weight = c.w;
    return st;
}

hae_status hae_circuit_build(const hae_circuit_args *a, const hae_config *base, hae_config *cfg,
                             const char *weights_path) {
    const char *op = "hae_circuit_build";
    circuit c;
    HAE_TRY(circuit_init(&c, a, op));
    if (!cfg || !weights_path) return hae_error(HAE_ERR_INVALID, "%s: cfg and weights_path must not be NULL", op);
    if (a->context < 1) return hae_error(HAE_ERR_INVALID, "%s: context %lld < 1", op, (long long)a->context);
    HAE_TRY(circuit_config(&c, base, cfg, op));
    hae_status st = make_codes(&c);
    if (st == HAE_OK) st = write_weights(&c, weights_path);
    free(c.ch);
    return st;
}

/* ---------------------------------------------------------------- scoring */

/* The argmax of a logits row on the device (ties to the lowest id). */
static hae_status argmax_row(hae_backend *be, const float *row_dev, float *host, int64_t V, int32_t *out) {
    HAE_TRY(hae_backend_download(be, host, row_dev, sizeof(float) * (size_t)V));
    int64_t best = 0;
    for (int64_t i = 1; i < V; i++)
        if (host[i] > host[best]) best = i;
    *out = (int32_t)best;
    return HAE_OK;
}

static hae_status check_task(const circuit *c, const hae_task *t) {
    const char *op = "hae_circuit_run";
    if (t->kind != c->a->task)
        return hae_error(HAE_ERR_INVALID, "%s: a %s task on a circuit built for %s", op, hae_task_kind_name(t->kind),
                         hae_task_kind_name(c->a->task));
    if (t->vocab != c->V || t->noise_hi != c->f)
        return hae_error(HAE_ERR_INVALID, "%s: the task's vocab %lld and noise range [%d, %d) differ from the circuit's "
                         "vocab %lld and noise_vocab %lld", op, (long long)t->vocab, t->noise_lo, t->noise_hi,
                         (long long)c->V, (long long)c->a->noise_vocab);
    if (t->n_queries < 1) return hae_error(HAE_ERR_INVALID, "%s: the task asks no question", op);
    /* follow (and mqar, niah): one answer after `hops` lookups; list: each answer one lookup on */
    const bool list = t->answer_off[1] - t->answer_off[0] > 1;
    const int need = list ? 1 : t->hops;
    if (c->a->hops != need)
        return hae_error(HAE_ERR_INVALID, "%s: the task's questions take %d lookup%s each (%s form of %d hops); the "
                         "circuit has %d hop%s", op, need, need > 1 ? "s" : "", list ? "list" : "follow", t->hops,
                         c->a->hops, c->a->hops > 1 ? "s" : "");
    return HAE_OK;
}

hae_status hae_circuit_run(hae_model *m, const hae_circuit_args *a, const hae_task *t, bool decode,
                           hae_circuit_result *out, uint8_t *correct) {
    const char *op = "hae_circuit_run";
    circuit c;
    HAE_TRY(circuit_init(&c, a, op));
    if (!m || !t || !out) return hae_error(HAE_ERR_INVALID, "%s: model, task and out must not be NULL", op);
    HAE_TRY(check_task(&c, t));
    hae_backend *be = hae_model_backend(m);
    const int64_t L = t->n_tokens, V = c.V, Q = t->n_queries;
    const int64_t last = t->query_pos[Q - 1] + t->answer_off[Q] - t->answer_off[Q - 1] - 1; /* last scored position */
    int32_t *pred = malloc(sizeof(int32_t) * (size_t)L);
    float *row = malloc(sizeof(float) * (size_t)V);
    if (!pred || !row) {
        free(pred), free(row);
        return hae_error(HAE_ERR_OOM, "%s: %lld predictions and a row of %lld logits", op, (long long)L, (long long)V);
    }
    for (int64_t i = 0; i < L; i++) pred[i] = -1;
    hae_model_reset(m);
    hae_tensor lg;
    hae_status st = hae_model_forward(m, t->tokens, decode ? t->context : L, &lg);
    if (st == HAE_OK && !decode && !(lg.ndim == 3 && lg.shape[0] == 1 && lg.shape[1] >= L))
        st = hae_error(HAE_ERR_INVALID, "%s: scoring a prefill needs a model of batch 1 that keeps all logits "
                       "(hae_model_options.all_logits); its logits are %dd", op, lg.ndim);
    for (int64_t i = 0; i < Q && st == HAE_OK && !decode; i++)
        for (int64_t p = t->query_pos[i]; p < t->query_pos[i] + t->answer_off[i + 1] - t->answer_off[i] && st == HAE_OK; p++)
            st = argmax_row(be, (const float *)lg.data + p * lg.stride[1], row, V, &pred[p]);
    /* decode: one step per token from the first question on; each step's logits predict the next token */
    for (int64_t p = t->context; decode && p <= last && st == HAE_OK; p++) {
        st = hae_model_forward(m, t->tokens + p, 1, &lg);
        if (st == HAE_OK && lg.shape[0] != 1)
            st = hae_error(HAE_ERR_INVALID, "%s: the model has batch %lld (a circuit runs one sequence)", op,
                           (long long)lg.shape[0]);
        if (st == HAE_OK)
            st = argmax_row(be, (const float *)lg.data + (lg.ndim == 3 ? p * lg.stride[1] : 0), row, V, &pred[p]);
    }
    if (st == HAE_OK) {
        *out = (hae_circuit_result){.queries = Q, .code_weight = c.w};
        for (int64_t i = 0; i < Q; i++) {
            bool ok = true;
            for (int64_t j = t->answer_off[i]; j < t->answer_off[i + 1]; j++) {
                const bool hit = pred[t->query_pos[i] + j - t->answer_off[i]] == t->answers[j];
                out->answers++, out->answers_correct += hit, ok &= hit;
            }
            out->correct += ok;
            if (correct) correct[i] = ok;
        }
        out->recall = (double)out->correct / (double)Q;
    }
    free(pred), free(row);
    return st;
}

hae_status hae_circuit_eval(hae_backend *be, const hae_circuit_args *a, const hae_config *base, const hae_task *t,
                            bool decode, const char *weights_path, hae_circuit_result *out, uint8_t *correct) {
    if (!a || !t) return hae_error(HAE_ERR_INVALID, "hae_circuit_eval: args and task must not be NULL");
    hae_circuit_args b = *a;
    if (!b.context) b.context = t->n_tokens;
    hae_config cfg;
    HAE_TRY(hae_circuit_build(&b, base, &cfg, weights_path));
    hae_model *m = NULL;
    HAE_TRY(hae_model_create(&cfg, be, &(hae_model_options){.all_logits = !decode}, &m));
    hae_status st = hae_model_load(m, weights_path);
    if (st == HAE_OK) st = hae_circuit_run(m, &b, t, decode, out, correct);
    hae_model_destroy(m);
    return st;
}

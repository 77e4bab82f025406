/* The training copy of a model (hae.h, the training section): fp32 master weights in one flat buffer, laid out
 * and named as engine/model.c lays out a gqa stack of full and swa layers (q/k/v and gate/up fused, saved as
 * their Llama tensors), the forward keeping every activation its backward reads, the backward, and AdamW.
 *
 *     x = E[tokens];  per layer:  x += Wo attn(rope(Wqkv norm1(x)));  x += Wdown swiglu(Wgu norm2(x))
 *     logits = lm_head norm(x) at the scored rows;  loss = mean cross-entropy there
 *
 * The backward walks this in reverse with the residual's gradient dx: each block adds its input's gradient
 * to dx, and the embedding takes dx last. */
#include "train_ops.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char name[96];
    int64_t off, n; /* elements, in the flat buffers */
    int ndim;
    int64_t shape[2];
    float std;  /* normal(0, std) init; 0: ones (norm weights) */
    bool decay; /* matrices decay, norm weights do not */
} tparam;

typedef struct {
    int64_t attn_norm, wqkv, wo, mlp_norm, wgu, wdown; /* offsets of the weights */
    int64_t window;                                    /* swa; 0 for full */
    /* the last forward's activations: the block inputs, norms (and their 1/rms), the fused q/k/v after RoPE,
     * the attention probabilities and output, the MLP's gate/up and activation */
    float *x, *h1, *r1, *qkv, *P, *att, *xm, *h2, *r2, *gu, *act;
} tlayer;

struct hae_trainer {
    hae_config cfg;
    hae_backend *be;
    int64_t V, d, L, Hq, Hkv, Dh, F, qkv_dim, Bmax, Tmax;
    int rot_dims;
    float scale, eps;
    tparam *params;
    int n_params;
    int64_t n_elems, embed, final_norm, lm_head;
    float *w, *g, *m, *v; /* weights, gradients, AdamW's moments */
    int64_t step;
    tlayer *layers;
    float *act_mem;
    float *xL, *xs, *hs, *rs, *logits; /* the final residual; the scored rows' residual, norm and logits */
    float *dx, *dh, *da, *db;           /* gradients of the residual, of a norm's output, two wide ones */
    float *cs, *sn;                     /* RoPE tables [Tmax, rot/2] */
    int32_t *ids;                       /* the last forward's tokens */
    int64_t B, T, n;                    /* its shapes */
};

/* ---------------------------------------------------------------- layout */

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

static int64_t add_param(hae_trainer *t, const char *name, int64_t rows, int64_t cols, float std) {
    tparam *p = &t->params[t->n_params++];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->off = t->n_elems;
    p->ndim = cols ? 2 : 1;
    p->shape[0] = rows, p->shape[1] = cols;
    p->n = rows * (cols ? cols : 1);
    p->std = std;
    p->decay = cols != 0;
    t->n_elems += p->n;
    return p->off;
}

/* The parameters in engine/model.c's order (its init counters are the parameter's index), fused tensors as
 * consecutive parameters so that q/k/v and gate/up are each one contiguous matrix. */
static void layout(hae_trainer *t) {
    const float std = t->cfg.model.initializer_range, std_out = std / sqrtf(2.0f * (float)t->L);
    const int64_t qd = t->Hq * t->Dh, kd = t->Hkv * t->Dh;
    char name[96];
    t->embed = add_param(t, "model.embed_tokens.weight", t->V, t->d, std);
    for (int64_t l = 0; l < t->L; l++) {
        tlayer *w = &t->layers[l];
#define P(suffix, rows, cols, s) \
    (snprintf(name, sizeof name, "model.layers.%lld.%s", (long long)l, suffix), add_param(t, name, rows, cols, s))
        w->attn_norm = P("input_layernorm.weight", t->d, 0, 0.0f);
        w->wqkv = P("self_attn.q_proj.weight", qd, t->d, std);
        P("self_attn.k_proj.weight", kd, t->d, std);
        P("self_attn.v_proj.weight", kd, t->d, std);
        w->wo = P("self_attn.o_proj.weight", t->d, qd, std_out);
        w->mlp_norm = P("post_attention_layernorm.weight", t->d, 0, 0.0f);
        w->wgu = P("mlp.gate_proj.weight", t->F, t->d, std);
        P("mlp.up_proj.weight", t->F, t->d, std);
        w->wdown = P("mlp.down_proj.weight", t->d, t->F, std_out);
#undef P
        w->window = t->cfg.model.layers[l] == HAE_LAYER_SWA ? t->cfg.model.swa.window_size : 0;
    }
    t->final_norm = add_param(t, "model.norm.weight", t->d, 0, 0.0f);
    t->lm_head = t->cfg.model.tie_word_embeddings ? t->embed : add_param(t, "lm_head.weight", t->V, t->d, std);
}

/* hae_model_init_weights' values: normal deviates by Box-Muller on counters (seed, parameter, element). */
static void init_weights(hae_trainer *t, uint64_t seed) {
    for (int p = 0; p < t->n_params; p++) {
        const tparam *pr = &t->params[p];
        float *w = t->w + pr->off;
        for (int64_t i = 0; i < pr->n; i++) {
            if (pr->std == 0.0f) {
                w[i] = 1.0f;
                continue;
            }
            double u1 = hae_uniform(seed, (uint64_t)p, (uint64_t)i, 0), u2 = hae_uniform(seed, (uint64_t)p, (uint64_t)i, 1);
            w[i] = pr->std * (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
        }
    }
}

static hae_status check_model(const hae_config *cfg, hae_backend *be) {
    if (!be || hae_backend_device(be) != HAE_CPU)
        return hae_error(HAE_ERR_UNSUPPORTED, "train: training runs on the CPU backend (runtime.backend: cpu); the "
                                              "CUDA backward is not built yet");
    if (cfg->model.attention.form != HAE_ATTN_GQA)
        return hae_error(HAE_ERR_UNSUPPORTED, "train: model.attention.form 'mla' has no backward yet (gqa only)");
    for (int64_t l = 0; l < cfg->model.n_layers; l++) {
        hae_layer_kind k = cfg->model.layers[l];
        if (k != HAE_LAYER_FULL && k != HAE_LAYER_SWA)
            return hae_error(HAE_ERR_UNSUPPORTED,
                             "train: layer %lld is '%s', which has no backward yet (training takes full and swa layers)",
                             (long long)l, hae_layer_kind_name(k));
    }
    return HAE_OK;
}

/* Carves the activations (sizes only when base is NULL); returns the floats used. */
static int64_t carve_acts(hae_trainer *t, float *base) {
    const int64_t N = t->Bmax * t->Tmax, d = t->d, wide = max64(max64(t->qkv_dim, 2 * t->F), max64(t->Hq * t->Dh, d));
    int64_t used = 0;
#define CARVE(ptr, n) (ptr = base ? base + used : NULL, used += ((n) + 15) & ~(int64_t)15)
    for (int64_t l = 0; l < t->L; l++) {
        tlayer *w = &t->layers[l];
        CARVE(w->x, N * d), CARVE(w->h1, N * d), CARVE(w->r1, N), CARVE(w->qkv, N * t->qkv_dim);
        CARVE(w->P, t->Bmax * t->Hq * t->Tmax * t->Tmax), CARVE(w->att, N * t->Hq * t->Dh);
        CARVE(w->xm, N * d), CARVE(w->h2, N * d), CARVE(w->r2, N), CARVE(w->gu, N * 2 * t->F), CARVE(w->act, N * t->F);
    }
    CARVE(t->xL, N * d), CARVE(t->xs, N * d), CARVE(t->hs, N * d), CARVE(t->rs, N), CARVE(t->logits, N * t->V);
    CARVE(t->dx, N * d), CARVE(t->dh, N * d), CARVE(t->da, N * wide), CARVE(t->db, N * wide);
    const int64_t rot = t->rot_dims / 2 ? t->rot_dims / 2 : 1;
    CARVE(t->cs, t->Tmax * rot), CARVE(t->sn, t->Tmax * rot);
#undef CARVE
    return used;
}

hae_status hae_trainer_create(const hae_config *cfg, hae_backend *be, int64_t max_batch, int64_t max_tokens,
                              hae_trainer **out) {
    if (!cfg || !out) return hae_error(HAE_ERR_INVALID, "hae_trainer_create: NULL argument");
    *out = NULL;
    HAE_TRY(check_model(cfg, be));
    if (max_batch < 1 || max_tokens < 1)
        return hae_error(HAE_ERR_INVALID, "hae_trainer_create: batches of %lld sequences of %lld tokens (need >= 1 each)",
                         (long long)max_batch, (long long)max_tokens);
    hae_trainer *t = calloc(1, sizeof *t);
    if (!t) return hae_error(HAE_ERR_OOM, "train: out of host memory");
    t->cfg = *cfg;
    t->be = be;
    t->V = cfg->model.vocab_size, t->d = cfg->model.d_model, t->L = cfg->model.n_layers;
    t->Hq = cfg->model.attention.num_heads, t->Hkv = cfg->model.attention.num_kv_heads;
    t->Dh = cfg->model.attention.head_dim, t->F = cfg->model.mlp.intermediate_size;
    t->qkv_dim = (t->Hq + 2 * t->Hkv) * t->Dh;
    t->Bmax = max_batch, t->Tmax = max_tokens;
    t->eps = cfg->model.norm_eps;
    t->scale = cfg->model.attention.softmax_scale > 0 ? cfg->model.attention.softmax_scale : 1.0f / sqrtf((float)t->Dh);
    switch (cfg->model.attention.rope) { /* as engine/model.c */
    case HAE_ROPE_NONE: t->rot_dims = 0; break;
    case HAE_ROPE_FULL: t->rot_dims = (int)t->Dh; break;
    case HAE_ROPE_PARTIAL: t->rot_dims = (int)lroundf((float)t->Dh * cfg->model.attention.partial_rotary_factor); break;
    }
    t->layers = calloc((size_t)t->L, sizeof *t->layers);
    t->params = calloc((size_t)(9 * t->L + 3), sizeof *t->params);
    if (!t->layers || !t->params) {
        hae_trainer_destroy(t);
        return hae_error(HAE_ERR_OOM, "train: out of host memory");
    }
    layout(t);
    const int64_t acts = carve_acts(t, NULL);
    const double bytes = 4.0 * (double)(4 * t->n_elems + acts);
    t->w = calloc((size_t)(4 * t->n_elems), sizeof(float));
    t->act_mem = malloc(sizeof(float) * (size_t)acts);
    t->ids = malloc(sizeof(int32_t) * (size_t)(t->Bmax * t->Tmax));
    if (!t->w || !t->act_mem || !t->ids) {
        hae_trainer_destroy(t);
        return hae_error(HAE_ERR_OOM, "train: %.0f MiB of host memory for %lld parameters and the activations of %lld x "
                                      "%lld tokens", bytes / 1048576.0, (long long)(t->n_elems), (long long)max_batch,
                         (long long)max_tokens);
    }
    t->g = t->w + t->n_elems, t->m = t->g + t->n_elems, t->v = t->m + t->n_elems;
    carve_acts(t, t->act_mem);
    if (t->rot_dims) hae_tr_rope_table(t->Tmax, t->rot_dims, cfg->model.attention.rope_theta, t->cs, t->sn);
    init_weights(t, cfg->seed);
    *out = t;
    return HAE_OK;
}

void hae_trainer_destroy(hae_trainer *t) {
    if (!t) return;
    free(t->w), free(t->act_mem), free(t->ids), free(t->layers), free(t->params);
    free(t);
}

int64_t hae_trainer_steps(const hae_trainer *t) { return t->step; }
int hae_trainer_param_count(const hae_trainer *t) { return t->n_params; }

hae_status hae_trainer_param(hae_trainer *t, int i, const char **name, float **w, float **g, int64_t *n) {
    if (i < 0 || i >= t->n_params)
        return hae_error(HAE_ERR_INVALID, "hae_trainer_param: index %d outside [0, %d)", i, t->n_params);
    const tparam *p = &t->params[i];
    if (name) *name = p->name;
    if (w) *w = t->w + p->off;
    if (g) *g = t->g + p->off;
    if (n) *n = p->n;
    return HAE_OK;
}

/* ---------------------------------------------------------------- safetensors */

/* Writes `buf` (weights or a moment) under the parameters' names + suffix. */
static hae_status save_flat(const hae_trainer *t, const float *buf, const char *suffix, const char *path,
                            const char *const *keys, const char *const *vals, int n_meta) {
    hae_st_tensor *ts = calloc((size_t)t->n_params, sizeof *ts);
    if (!ts) return hae_error(HAE_ERR_OOM, "saving %s: out of host memory", path);
    for (int p = 0; p < t->n_params; p++) {
        const tparam *pr = &t->params[p];
        snprintf(ts[p].name, sizeof ts[p].name, "%s%s", pr->name, suffix);
        ts[p].dtype = HAE_F32;
        ts[p].ndim = pr->ndim;
        ts[p].shape[0] = pr->shape[0], ts[p].shape[1] = pr->shape[1];
        ts[p].data = buf + pr->off;
        ts[p].nbytes = sizeof(float) * (size_t)pr->n;
    }
    hae_status st = hae_st_write(path, ts, t->n_params, keys, vals, n_meta);
    free(ts);
    return st;
}

/* Reads every parameter's tensor (name + suffix) of f into buf, converting bf16/f16; all must be present and of
 * the parameter's shape. */
static hae_status load_flat(hae_trainer *t, hae_st_file *f, const char *path, const char *suffix, float *buf) {
    char name[128];
    for (int p = 0; p < t->n_params; p++) {
        const tparam *pr = &t->params[p];
        snprintf(name, sizeof name, "%s%s", pr->name, suffix);
        const hae_st_tensor *ts = hae_st_find(f, name);
        char want[64];
        if (pr->ndim == 2) snprintf(want, sizeof want, "[%lld, %lld]", (long long)pr->shape[0], (long long)pr->shape[1]);
        else snprintf(want, sizeof want, "[%lld]", (long long)pr->shape[0]);
        if (!ts) return hae_error(HAE_ERR_FORMAT, "%s: tensor '%s' is missing (the model needs %s f32)", path, name, want);
        bool same = ts->ndim == pr->ndim;
        for (int k = 0; same && k < pr->ndim; k++) same = ts->shape[k] == pr->shape[k];
        if (!same) {
            hae_tensor got = hae_tensor_make(NULL, ts->dtype, HAE_CPU, ts->ndim, ts->shape);
            char desc[96];
            return hae_error(HAE_ERR_FORMAT, "%s: tensor '%s' is %s but the model needs %s", path, name,
                             hae_tensor_describe(&got, desc, sizeof desc), want);
        }
        if (ts->dtype != HAE_F32 && ts->dtype != HAE_BF16 && ts->dtype != HAE_F16)
            return hae_error(HAE_ERR_UNSUPPORTED, "%s: tensor '%s' is %s; weights load from f32, bf16 or f16", path, name,
                             hae_dtype_name(ts->dtype));
        const size_t es = hae_dtype_size(ts->dtype);
        float *dst = buf + pr->off;
        for (int64_t i = 0; i < pr->n; i++) { /* file data may be unaligned: copy each value before reading it */
            uint32_t raw = 0;
            memcpy(&raw, (const char *)ts->data + (size_t)i * es, es);
            dst[i] = hae_load_f(&raw, ts->dtype, 0);
        }
    }
    return HAE_OK;
}

hae_status hae_trainer_save(const hae_trainer *t, const char *path) {
    char layers[32], step[32];
    snprintf(layers, sizeof layers, "%lld", (long long)t->L);
    snprintf(step, sizeof step, "%lld", (long long)t->step);
    const char *keys[] = {"format", "producer", "n_layers", "step"}, *vals[] = {"pt", "hae train", layers, step};
    return save_flat(t, t->w, "", path, keys, vals, 4);
}

hae_status hae_trainer_load(hae_trainer *t, const char *path) {
    hae_st_file *f = NULL;
    HAE_TRY(hae_st_open(path, &f));
    hae_status st = load_flat(t, f, path, "", t->w);
    hae_st_close(f);
    return st;
}

hae_status hae_trainer_save_optim(const hae_trainer *t, const char *path) {
    char step[32];
    snprintf(step, sizeof step, "%lld", (long long)t->step);
    const char *keys[] = {"format", "step"}, *vals[] = {"hae-adamw", step};
    /* one file: the first moments, then the second, under their own names */
    hae_st_tensor *ts = calloc((size_t)(2 * t->n_params), sizeof *ts);
    if (!ts) return hae_error(HAE_ERR_OOM, "saving %s: out of host memory", path);
    for (int k = 0; k < 2; k++)
        for (int p = 0; p < t->n_params; p++) {
            const tparam *pr = &t->params[p];
            hae_st_tensor *s = &ts[k * t->n_params + p];
            snprintf(s->name, sizeof s->name, "%s%s", pr->name, k ? ".exp_avg_sq" : ".exp_avg");
            s->dtype = HAE_F32;
            s->ndim = pr->ndim;
            s->shape[0] = pr->shape[0], s->shape[1] = pr->shape[1];
            s->data = (k ? t->v : t->m) + pr->off;
            s->nbytes = sizeof(float) * (size_t)pr->n;
        }
    hae_status st = hae_st_write(path, ts, 2 * t->n_params, keys, vals, 2);
    free(ts);
    return st;
}

hae_status hae_trainer_load_optim(hae_trainer *t, const char *path) {
    hae_st_file *f = NULL;
    HAE_TRY(hae_st_open(path, &f));
    const char *fmt = hae_st_metadata(f, "format"), *step = hae_st_metadata(f, "step");
    char *end = NULL;
    long long s = step ? strtoll(step, &end, 10) : -1;
    hae_status st = HAE_OK;
    if (!fmt || strcmp(fmt, "hae-adamw") || !step || *end || s < 0)
        st = hae_error(HAE_ERR_FORMAT, "%s: not an optimiser state (metadata format 'hae-adamw' and a step expected)",
                       path);
    if (st == HAE_OK) st = load_flat(t, f, path, ".exp_avg", t->m);
    if (st == HAE_OK) st = load_flat(t, f, path, ".exp_avg_sq", t->v);
    if (st == HAE_OK) t->step = s;
    hae_st_close(f);
    return st;
}

/* ---------------------------------------------------------------- forward and backward */

static hae_status check_batch(const hae_trainer *t, const hae_train_batch *b) {
    if (!b || !b->tokens || (b->n && (!b->pos || !b->target)))
        return hae_error(HAE_ERR_INVALID, "train batch: NULL tokens, positions or targets");
    if (b->B < 1 || b->T < 1 || b->B > t->Bmax || b->T > t->Tmax)
        return hae_error(HAE_ERR_INVALID, "train batch: %lld sequences of %lld tokens; the trainer takes 1..%lld of 1..%lld",
                         (long long)b->B, (long long)b->T, (long long)t->Bmax, (long long)t->Tmax);
    if (b->n < 1 || b->n > b->B * b->T)
        return hae_error(HAE_ERR_INVALID, "train batch: %lld scored positions (need 1..%lld)", (long long)b->n,
                         (long long)(b->B * b->T));
    for (int64_t i = 0; i < b->B * b->T; i++)
        if (b->tokens[i] < 0 || b->tokens[i] >= t->V)
            return hae_error(HAE_ERR_INVALID, "train batch: token %d (sequence %lld, index %lld) is outside the vocabulary "
                                              "[0, %lld)", b->tokens[i], (long long)(i / b->T), (long long)(i % b->T),
                             (long long)t->V);
    for (int64_t i = 0; i < b->n; i++) {
        if (b->pos[i] < 0 || b->pos[i] >= b->B * b->T)
            return hae_error(HAE_ERR_INVALID, "train batch: scored position %lld is row %lld, outside [0, %lld)",
                             (long long)i, (long long)b->pos[i], (long long)(b->B * b->T));
        if (b->target[i] < 0 || b->target[i] >= t->V)
            return hae_error(HAE_ERR_INVALID, "train batch: target %lld is %d, outside the vocabulary [0, %lld)",
                             (long long)i, b->target[i], (long long)t->V);
    }
    return HAE_OK;
}

static hae_tr_attn_shape attn_shape(const hae_trainer *t, const tlayer *w) {
    return (hae_tr_attn_shape){.B = t->B, .T = t->T, .Hq = t->Hq, .Hkv = t->Hkv, .Dh = t->Dh, .window = w->window,
                               .scale = t->scale};
}

/* RoPE on the q and k columns of fused rows [N, qkv_dim] (forward, or inverse on their gradients). */
static void rope_qk(hae_trainer *t, float *qkv, bool inverse) {
    hae_tr_rope(t->be, qkv, t->B, t->T, t->Hq, t->Dh, t->qkv_dim, t->rot_dims, t->cs, t->sn, inverse);
    hae_tr_rope(t->be, qkv + t->Hq * t->Dh, t->B, t->T, t->Hkv, t->Dh, t->qkv_dim, t->rot_dims, t->cs, t->sn, inverse);
}

/* The forward up to the scored rows' logits, into t->logits. */
static hae_status forward(hae_trainer *t, const hae_train_batch *b) {
    HAE_TRY(check_batch(t, b));
    hae_backend *be = t->be;
    t->B = b->B, t->T = b->T, t->n = b->n;
    const int64_t N = b->B * b->T, d = t->d, qd = t->Hq * t->Dh;
    memcpy(t->ids, b->tokens, sizeof(int32_t) * (size_t)N);
    hae_tr_embedding_fwd(t->ids, N, t->w + t->embed, d, t->layers[0].x);
    for (int64_t l = 0; l < t->L; l++) {
        tlayer *w = &t->layers[l];
        float *next = l + 1 < t->L ? t->layers[l + 1].x : t->xL;
        hae_tr_rmsnorm_fwd(be, w->x, t->w + w->attn_norm, N, d, t->eps, w->h1, w->r1);
        HAE_TRY(hae_tr_linear_fwd(be, w->h1, t->w + w->wqkv, N, d, t->qkv_dim, w->qkv, false));
        rope_qk(t, w->qkv, false);
        const hae_tr_attn_shape s = attn_shape(t, w);
        hae_tr_attention_fwd(be, &s, w->qkv, w->P, w->att);
        memcpy(w->xm, w->x, sizeof(float) * (size_t)(N * d));
        HAE_TRY(hae_tr_linear_fwd(be, w->att, t->w + w->wo, N, qd, d, w->xm, true));
        hae_tr_rmsnorm_fwd(be, w->xm, t->w + w->mlp_norm, N, d, t->eps, w->h2, w->r2);
        HAE_TRY(hae_tr_linear_fwd(be, w->h2, t->w + w->wgu, N, d, 2 * t->F, w->gu, false));
        hae_tr_swiglu_fwd(be, w->gu, N, t->F, w->act);
        memcpy(next, w->xm, sizeof(float) * (size_t)(N * d));
        HAE_TRY(hae_tr_linear_fwd(be, w->act, t->w + w->wdown, N, t->F, d, next, true));
    }
    for (int64_t i = 0; i < b->n; i++) memcpy(t->xs + i * d, t->xL + b->pos[i] * d, sizeof(float) * (size_t)d);
    hae_tr_rmsnorm_fwd(be, t->xs, t->w + t->final_norm, b->n, d, t->eps, t->hs, t->rs);
    return hae_tr_linear_fwd(be, t->hs, t->w + t->lm_head, b->n, d, t->V, t->logits, false);
}

hae_status hae_trainer_forward(hae_trainer *t, const hae_train_batch *b, float *logits, double *loss, uint8_t *correct) {
    HAE_TRY(forward(t, b));
    if (logits) memcpy(logits, t->logits, sizeof(float) * (size_t)(b->n * t->V));
    if (loss || correct) {
        double total = hae_tr_xent(t->logits, b->target, b->n, t->V, 0.0f, NULL, correct);
        if (loss) *loss = total / (double)b->n;
    }
    return HAE_OK;
}

hae_status hae_trainer_backward(hae_trainer *t, const hae_train_batch *b, double *loss, uint8_t *correct) {
    HAE_TRY(forward(t, b));
    hae_backend *be = t->be;
    const int64_t N = t->B * t->T, d = t->d, qd = t->Hq * t->Dh, n = t->n;
    const double total = hae_tr_xent(t->logits, b->target, n, t->V, 1.0f / (float)n, t->logits, correct);
    if (loss) *loss = total / (double)n;
    memset(t->g, 0, sizeof(float) * (size_t)t->n_elems);
    /* LM head and final norm over the scored rows, their gradient scattered into the residual's */
    hae_tr_linear_bwd(be, t->hs, t->w + t->lm_head, t->logits, n, d, t->V, t->dh, false, t->g + t->lm_head);
    memset(t->da, 0, sizeof(float) * (size_t)(n * d));
    hae_tr_rmsnorm_bwd(be, t->xs, t->w + t->final_norm, t->rs, t->dh, n, d, t->da, t->g + t->final_norm);
    memset(t->dx, 0, sizeof(float) * (size_t)(N * d));
    for (int64_t i = 0; i < n; i++) {
        float *dst = t->dx + b->pos[i] * d;
        for (int64_t k = 0; k < d; k++) dst[k] += t->da[i * d + k];
    }
    for (int64_t l = t->L - 1; l >= 0; l--) {
        tlayer *w = &t->layers[l];
        /* x_out = xm + Wdown swiglu(Wgu norm2(xm)) */
        hae_tr_linear_bwd(be, w->act, t->w + w->wdown, t->dx, N, t->F, d, t->da, false, t->g + w->wdown);
        hae_tr_swiglu_bwd(be, w->gu, t->da, N, t->F, t->db);
        hae_tr_linear_bwd(be, w->h2, t->w + w->wgu, t->db, N, d, 2 * t->F, t->dh, false, t->g + w->wgu);
        hae_tr_rmsnorm_bwd(be, w->xm, t->w + w->mlp_norm, w->r2, t->dh, N, d, t->dx, t->g + w->mlp_norm);
        /* xm = x + Wo attn(rope(Wqkv norm1(x))) */
        hae_tr_linear_bwd(be, w->att, t->w + w->wo, t->dx, N, qd, d, t->da, false, t->g + w->wo);
        const hae_tr_attn_shape s = attn_shape(t, w);
        hae_tr_attention_bwd(be, &s, w->qkv, w->P, w->att, t->da, t->db);
        rope_qk(t, t->db, true);
        hae_tr_linear_bwd(be, w->h1, t->w + w->wqkv, t->db, N, d, t->qkv_dim, t->dh, false, t->g + w->wqkv);
        hae_tr_rmsnorm_bwd(be, w->x, t->w + w->attn_norm, w->r1, t->dh, N, d, t->dx, t->g + w->attn_norm);
    }
    hae_tr_embedding_bwd(t->ids, N, t->dx, d, t->g + t->embed);
    return HAE_OK;
}

/* ---------------------------------------------------------------- AdamW */

float hae_train_lr(const hae_config *cfg, int64_t step) {
    const double lr = cfg->train.lr, lo = lr * cfg->train.min_lr_ratio;
    const int64_t W = cfg->train.warmup, S = cfg->train.steps;
    if (step < W) return (float)(lr * (double)(step + 1) / (double)W);
    if (S - 1 <= W) return (float)lr;
    const double p = (double)(step - W) / (double)(S - 1 - W);
    return (float)(lo + 0.5 * (lr - lo) * (1.0 + cos(3.141592653589793 * (p < 1.0 ? p : 1.0))));
}

/* PyTorch's AdamW: w -= lr wd w (matrices only), then w -= lr m^ / (sqrt(v^) + eps) with the moments'
 * bias corrections; the gradients enter scaled by clip / norm when their norm exceeds clip. */
hae_status hae_trainer_step(hae_trainer *t, float lr, double *grad_norm) {
    if (!(lr >= 0.0f) || !isfinite(lr)) return hae_error(HAE_ERR_INVALID, "train step: learning rate %g", (double)lr);
    double ss = 0.0;
    for (int64_t i = 0; i < t->n_elems; i++) ss += (double)t->g[i] * (double)t->g[i];
    const double norm = sqrt(ss);
    if (grad_norm) *grad_norm = norm;
    if (!isfinite(norm))
        return hae_error(HAE_ERR_INVALID, "train step %lld: the gradients' norm is %g (the loss diverged; lower train.lr "
                                          "or set train.clip)", (long long)t->step + 1, norm);
    const float clip = t->cfg.train.clip;
    const float gs = clip > 0.0f && norm > clip ? (float)(clip / norm) : 1.0f;
    const float b1 = t->cfg.train.beta1, b2 = t->cfg.train.beta2, eps = t->cfg.train.eps;
    t->step++;
    const float c1 = (float)(1.0 - pow(b1, (double)t->step)), c2 = (float)sqrt(1.0 - pow(b2, (double)t->step));
    const float step_size = lr / c1, decay = 1.0f - lr * t->cfg.train.weight_decay;
    for (int p = 0; p < t->n_params; p++) {
        const tparam *pr = &t->params[p];
        float *w = t->w + pr->off, *g = t->g + pr->off, *m = t->m + pr->off, *v = t->v + pr->off;
        for (int64_t i = 0; i < pr->n; i++) {
            const float gi = g[i] * gs;
            m[i] = b1 * m[i] + (1.0f - b1) * gi;
            v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
            if (pr->decay) w[i] *= decay;
            w[i] -= step_size * m[i] / (sqrtf(v[i]) / c2 + eps);
        }
    }
    return HAE_OK;
}

/* The decoder stack (DESIGN.md §1):
 *     embedding -> [ x += Mixer(RMSNorm(x)); x += SwiGLU(RMSNorm(x)) ] x n_layers -> RMSNorm -> LM head
 * Weights use Hugging Face Llama names and layouts ([out, in]); q/k/v and gate/up are stored fused
 * (one GEMM each) and saved as their separate Llama tensors. The residual stream x is f32; GEMM
 * operands, weights and the KV cache are runtime.dtype; the residual add is the accumulate of the
 * output projections' GEMM. */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    hae_tensor attn_norm; /* [d] f32 */
    hae_tensor wqkv;      /* [(Hq + 2 Hkv) Dh, d] */
    hae_tensor wo;        /* [d, Hq Dh] */
    hae_tensor mlp_norm;  /* [d] f32 */
    hae_tensor wgu;       /* [2F, d]: gate rows then up rows */
    hae_tensor wdown;     /* [d, F] */
    int64_t window;       /* swa window; 0 for full */
} layer_weights;

/* One named parameter as saved: a view into a weight tensor, and how it is initialised. */
typedef struct {
    char name[96];
    hae_tensor t;
    float std; /* 0: ones (norm weights) */
} param;

struct hae_model {
    hae_config cfg;
    hae_backend *be;
    hae_model_options opt;
    hae_dtype dt;
    int64_t B, V, d, L, Hq, Hkv, Dh, F, qkv_dim, chunk, ctx_max;
    int rot_dims;
    float scale;

    void *weight_mem;
    size_t weight_bytes;
    hae_tensor embed, final_norm, lm_head;
    layer_weights *layers;
    param *params;
    int n_params;
    int64_t n_param_elems;

    void *act_mem;
    size_t act_bytes;
    hae_tensor ids, x, h, qkv, att, gu, act, hlast, logits;
    int32_t *ids_host; /* [B * chunk] staging for a chunk's tokens */

    hae_kv_cache *kv;
    int64_t pos;
};

/* ---------------------------------------------------------------- layout */

static size_t align_up(size_t n) { return (n + 255) & ~(size_t)255; }

/* Carves tensors out of one allocation: a first pass with base NULL only sums the bytes. */
typedef struct {
    char *base;
    size_t used;
    hae_device dev;
} carver;

static hae_tensor carve(carver *c, hae_dtype dt, int ndim, const int64_t *shape) {
    hae_tensor t = hae_tensor_make(NULL, dt, c->dev, ndim, shape);
    if (c->base) t.data = c->base + c->used;
    c->used += align_up(hae_tensor_nbytes(&t));
    return t;
}
static hae_tensor carve1(carver *c, hae_dtype dt, int64_t d0) { return carve(c, dt, 1, (int64_t[]){d0}); }
static hae_tensor carve2(carver *c, hae_dtype dt, int64_t d0, int64_t d1) {
    return carve(c, dt, 2, (int64_t[]){d0, d1});
}

static void add_param(hae_model *m, const char *name, hae_tensor t, float std) {
    param *p = &m->params[m->n_params++];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->t = t;
    p->std = std;
    m->n_param_elems += hae_tensor_numel(&t);
}

static void layout_weights(hae_model *m, carver *c) {
    float std = m->cfg.model.initializer_range, std_out = std / sqrtf(2.0f * (float)m->L);
    char name[96];
    m->n_params = 0;
    m->n_param_elems = 0;
    m->embed = carve2(c, m->dt, m->V, m->d);
    add_param(m, "model.embed_tokens.weight", m->embed, std);
    for (int64_t l = 0; l < m->L; l++) {
        layer_weights *w = &m->layers[l];
        w->attn_norm = carve1(c, HAE_F32, m->d);
        w->wqkv = carve2(c, m->dt, m->qkv_dim, m->d);
        w->wo = carve2(c, m->dt, m->d, m->Hq * m->Dh);
        w->mlp_norm = carve1(c, HAE_F32, m->d);
        w->wgu = carve2(c, m->dt, 2 * m->F, m->d);
        w->wdown = carve2(c, m->dt, m->d, m->F);
        w->window = m->cfg.model.layers[l] == HAE_LAYER_SWA ? m->cfg.model.swa.window_size : 0;
#define P(suffix, t, s)                                                                            \
    snprintf(name, sizeof name, "model.layers.%lld.%s", (long long)l, suffix);                      \
    add_param(m, name, t, s)
        int64_t qd = m->Hq * m->Dh, kd = m->Hkv * m->Dh;
        P("input_layernorm.weight", w->attn_norm, 0.0f);
        P("self_attn.q_proj.weight", hae_tensor_narrow(w->wqkv, 0, 0, qd), std);
        P("self_attn.k_proj.weight", hae_tensor_narrow(w->wqkv, 0, qd, kd), std);
        P("self_attn.v_proj.weight", hae_tensor_narrow(w->wqkv, 0, qd + kd, kd), std);
        P("self_attn.o_proj.weight", w->wo, std_out);
        P("post_attention_layernorm.weight", w->mlp_norm, 0.0f);
        P("mlp.gate_proj.weight", hae_tensor_narrow(w->wgu, 0, 0, m->F), std);
        P("mlp.up_proj.weight", hae_tensor_narrow(w->wgu, 0, m->F, m->F), std);
        P("mlp.down_proj.weight", w->wdown, std_out);
#undef P
    }
    m->final_norm = carve1(c, HAE_F32, m->d);
    add_param(m, "model.norm.weight", m->final_norm, 0.0f);
    if (m->cfg.model.tie_word_embeddings) {
        m->lm_head = m->embed;
    } else {
        m->lm_head = carve2(c, m->dt, m->V, m->d);
        add_param(m, "lm_head.weight", m->lm_head, std);
    }
}

static void layout_activations(hae_model *m, carver *c) {
    int64_t N = m->B * m->chunk;
    m->ids = carve1(c, HAE_I32, N);
    m->x = carve2(c, HAE_F32, N, m->d);
    m->h = carve2(c, m->dt, N, m->d);
    m->qkv = carve2(c, m->dt, N, m->qkv_dim);
    m->att = carve2(c, m->dt, N, m->Hq * m->Dh);
    m->gu = carve2(c, m->dt, N, 2 * m->F);
    m->act = carve2(c, m->dt, N, m->F);
    m->hlast = carve2(c, m->dt, m->B, m->d);
    m->logits = m->opt.all_logits ? carve(c, HAE_F32, 3, (int64_t[]){m->B, m->ctx_max, m->V})
                                  : carve2(c, HAE_F32, m->B, m->V);
}

/* ---------------------------------------------------------------- create / destroy */

/* Shapes of the stack from the config; no allocation. */
static hae_status model_dims(hae_model *m, const hae_config *cfg, const hae_model_options *opt) {
    for (int64_t l = 0; l < cfg->model.n_layers; l++) {
        hae_layer_kind k = cfg->model.layers[l];
        if (k != HAE_LAYER_FULL && k != HAE_LAYER_SWA)
            return hae_error(HAE_ERR_UNSUPPORTED, "model: layer %lld is '%s', which is not built yet", (long long)l,
                             hae_layer_kind_name(k));
    }
    if (cfg->runtime.dtype != HAE_F32 && cfg->runtime.dtype != HAE_BF16)
        return hae_error(HAE_ERR_INVALID, "model: runtime.dtype %s (need f32 or bf16)", hae_dtype_name(cfg->runtime.dtype));
    m->cfg = *cfg;
    if (opt) m->opt = *opt;
    m->dt = cfg->runtime.dtype;
    m->B = cfg->runtime.batch;
    m->V = cfg->model.vocab_size;
    m->d = cfg->model.d_model;
    m->L = cfg->model.n_layers;
    m->Hq = cfg->model.attention.num_heads;
    m->Hkv = cfg->model.attention.num_kv_heads;
    m->Dh = cfg->model.attention.head_dim;
    m->F = cfg->model.mlp.intermediate_size;
    m->qkv_dim = (m->Hq + 2 * m->Hkv) * m->Dh;
    m->ctx_max = cfg->runtime.prefill + cfg->runtime.decode;
    m->chunk = cfg->runtime.prefill_chunk > 0 && cfg->runtime.prefill_chunk < m->ctx_max ? cfg->runtime.prefill_chunk
                                                                                          : m->ctx_max;
    switch (cfg->model.attention.rope) {
    case HAE_ROPE_NONE: m->rot_dims = 0; break;
    case HAE_ROPE_FULL: m->rot_dims = (int)m->Dh; break;
    case HAE_ROPE_PARTIAL: m->rot_dims = (int)lroundf((float)m->Dh * cfg->model.attention.partial_rotary_factor); break;
    }
    m->scale = cfg->model.attention.softmax_scale > 0 ? cfg->model.attention.softmax_scale : 1.0f / sqrtf((float)m->Dh);
    return HAE_OK;
}

/* KV slots per sequence of layer l: the whole context for full attention; for a window, the window
 * plus a chunk, since a chunk's first query still reads window - 1 positions before the chunk. */
static hae_kv_layer_spec kv_spec(const hae_model *m, int64_t l) {
    int64_t cap = m->ctx_max;
    if (m->cfg.model.layers[l] == HAE_LAYER_SWA && m->cfg.model.swa.window_size + m->chunk - 1 < cap)
        cap = m->cfg.model.swa.window_size + m->chunk - 1;
    return (hae_kv_layer_spec){.cap = cap, .kv_heads = m->Hkv, .head_dim = m->Dh};
}

hae_status hae_model_plan_get(const hae_config *cfg, const hae_model_options *opt, hae_model_plan *out) {
    memset(out, 0, sizeof *out);
    hae_model *m = calloc(1, sizeof *m);
    if (!m) return hae_error(HAE_ERR_OOM, "model plan: out of host memory");
    hae_status st = model_dims(m, cfg, opt);
    if (st == HAE_OK) {
        m->layers = calloc((size_t)m->L, sizeof *m->layers);
        m->params = calloc((size_t)(m->L * 9 + 4), sizeof *m->params);
        if (!m->layers || !m->params) st = hae_error(HAE_ERR_OOM, "model plan: out of host memory");
    }
    if (st == HAE_OK) {
        carver c = {NULL, 0, HAE_CPU};
        layout_weights(m, &c);
        out->n_params = m->n_param_elems;
        out->weight_bytes = c.used;
        c = (carver){NULL, 0, HAE_CPU};
        layout_activations(m, &c);
        out->activation_bytes = c.used;
        out->context = m->ctx_max;
        for (int64_t l = 0; l < m->L; l++) {
            hae_kv_layer_spec s = kv_spec(m, l);
            out->kv_slots[l] = s.cap;
            out->kv_bytes_per_token[l] = hae_kv_bytes_per_token(&s, m->dt);
            out->kv_bytes += (size_t)m->B * (size_t)s.cap * out->kv_bytes_per_token[l];
        }
    }
    free(m->layers);
    free(m->params);
    free(m);
    return st;
}

hae_status hae_model_create(const hae_config *cfg, hae_backend *be, const hae_model_options *opt, hae_model **out) {
    *out = NULL;
    hae_model *m = calloc(1, sizeof *m);
    if (!m) return hae_error(HAE_ERR_OOM, "model: out of host memory");
    m->be = be;
    hae_status dims = model_dims(m, cfg, opt);
    if (dims != HAE_OK) {
        free(m);
        return dims;
    }

    hae_status st = HAE_ERR_OOM;
    m->layers = calloc((size_t)m->L, sizeof *m->layers);
    m->params = calloc((size_t)(m->L * 9 + 4), sizeof *m->params);
    m->ids_host = malloc(sizeof(int32_t) * (size_t)(m->B * m->chunk));
    if (!m->layers || !m->params || !m->ids_host) {
        hae_model_destroy(m);
        return hae_error(st, "model: out of host memory");
    }

    /* KV first: its budget check is the one a user tunes, and it fails before anything large is allocated. */
    hae_kv_layer_spec *specs = calloc((size_t)m->L, sizeof *specs);
    if (!specs) {
        hae_model_destroy(m);
        return hae_error(st, "model: out of host memory");
    }
    for (int64_t l = 0; l < m->L; l++) specs[l] = kv_spec(m, l);
    st = hae_kv_cache_create(be, (int)m->L, specs, m->B, m->dt, (size_t)cfg->runtime.kv_budget, &m->kv);
    free(specs);
    if (st != HAE_OK) {
        hae_model_destroy(m);
        return st;
    }

    carver c = {NULL, 0, hae_backend_device(be)};
    layout_weights(m, &c);
    m->weight_bytes = c.used;
    st = hae_backend_alloc(be, m->weight_bytes, &m->weight_mem);
    if (st != HAE_OK) {
        hae_model_destroy(m);
        return hae_error_wrap(st, "model weights");
    }
    c = (carver){m->weight_mem, 0, hae_backend_device(be)};
    layout_weights(m, &c);

    c = (carver){NULL, 0, hae_backend_device(be)};
    layout_activations(m, &c);
    m->act_bytes = c.used;
    st = hae_backend_alloc(be, m->act_bytes, &m->act_mem);
    if (st != HAE_OK) {
        long long tokens = (long long)(m->B * m->chunk);
        hae_model_destroy(m);
        return hae_error_wrap(st, "model activations (%lld tokens per chunk)", tokens);
    }
    c = (carver){m->act_mem, 0, hae_backend_device(be)};
    layout_activations(m, &c);

    st = hae_model_init_weights(m, cfg->seed);
    if (st != HAE_OK) {
        hae_model_destroy(m);
        return st;
    }
    *out = m;
    return HAE_OK;
}

void hae_model_destroy(hae_model *m) {
    if (!m) return;
    hae_kv_cache_destroy(m->kv);
    hae_backend_free(m->be, m->weight_mem);
    hae_backend_free(m->be, m->act_mem);
    free(m->layers);
    free(m->params);
    free(m->ids_host);
    free(m);
}

void hae_model_reset(hae_model *m) { m->pos = 0; }
int64_t hae_model_position(const hae_model *m) { return m->pos; }
hae_backend *hae_model_backend(const hae_model *m) { return m->be; }

void hae_model_stats_get(const hae_model *m, hae_model_stats *s) {
    s->n_params = m->n_param_elems;
    s->weight_bytes = m->weight_bytes;
    s->kv_bytes = hae_kv_cache_bytes(m->kv);
    s->state_bytes = 0;
    s->activation_bytes = m->act_bytes;
    s->device = hae_backend_device(m->be);
}

/* ---------------------------------------------------------------- weights: init, save, load */

/* Host staging for moving weights in blocks: f32 values and their bytes in the target dtype. */
#define STAGE_ELEMS (1 << 20)

typedef struct {
    float *f;
    void *raw;
} stage;

static hae_status stage_alloc(stage *s) {
    s->f = malloc(sizeof(float) * STAGE_ELEMS);
    s->raw = malloc(sizeof(float) * STAGE_ELEMS);
    if (!s->f || !s->raw) {
        free(s->f);
        free(s->raw);
        return hae_error(HAE_ERR_OOM, "model: %zu bytes of host staging", 2 * sizeof(float) * STAGE_ELEMS);
    }
    return HAE_OK;
}
static void stage_free(stage *s) {
    free(s->f);
    free(s->raw);
}

/* Writes f32 values [off, off + n) of a contiguous device tensor, converting to its dtype. */
static hae_status put_block(hae_model *m, stage *s, const hae_tensor *t, int64_t off, int64_t n) {
    size_t es = hae_dtype_size(t->dtype);
    for (int64_t i = 0; i < n; i++) hae_store_f(s->raw, t->dtype, i, s->f[i]);
    return hae_backend_upload(m->be, (char *)t->data + off * (int64_t)es, s->raw, (size_t)n * es);
}

/* Normal deviates from counters (Box-Muller on hae_uniform), so element i of parameter p has the same
 * value whatever the backend, the order of initialisation or the thread count. */
static float normal_at(uint64_t seed, uint64_t p, uint64_t i) {
    double u1 = hae_uniform(seed, p, i, 0), u2 = hae_uniform(seed, p, i, 1);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

hae_status hae_model_init_weights(hae_model *m, uint64_t seed) {
    stage s;
    HAE_TRY(stage_alloc(&s));
    hae_status st = HAE_OK;
    for (int p = 0; p < m->n_params && st == HAE_OK; p++) {
        const param *pr = &m->params[p];
        int64_t n = hae_tensor_numel(&pr->t);
        for (int64_t off = 0; off < n && st == HAE_OK; off += STAGE_ELEMS) {
            int64_t k = n - off < STAGE_ELEMS ? n - off : STAGE_ELEMS;
            for (int64_t i = 0; i < k; i++)
                s.f[i] = pr->std == 0.0f ? 1.0f : pr->std * normal_at(seed, (uint64_t)p, (uint64_t)(off + i));
            st = put_block(m, &s, &pr->t, off, k);
        }
    }
    stage_free(&s);
    if (st == HAE_OK) st = hae_backend_sync(m->be);
    return st;
}

hae_status hae_model_save(const hae_model *m, const char *path) {
    hae_st_tensor *ts = calloc((size_t)m->n_params, sizeof *ts);
    char *host = malloc(m->weight_bytes);
    if (!ts || !host) {
        free(ts);
        free(host);
        return hae_error(HAE_ERR_OOM, "saving %s: %zu bytes of host memory", path, m->weight_bytes);
    }
    hae_status st = HAE_OK;
    size_t off = 0;
    for (int p = 0; p < m->n_params && st == HAE_OK; p++) {
        const param *pr = &m->params[p];
        size_t nb = hae_tensor_nbytes(&pr->t);
        st = hae_backend_download(m->be, host + off, pr->t.data, nb);
        snprintf(ts[p].name, sizeof ts[p].name, "%s", pr->name);
        ts[p].dtype = pr->t.dtype;
        ts[p].ndim = pr->t.ndim;
        memcpy(ts[p].shape, pr->t.shape, sizeof ts[p].shape);
        ts[p].data = host + off;
        ts[p].nbytes = nb;
        off += nb;
    }
    char layers[64];
    snprintf(layers, sizeof layers, "%lld", (long long)m->L);
    const char *keys[] = {"format", "producer", "n_layers"}, *vals[] = {"pt", "hae", layers};
    if (st == HAE_OK) st = hae_st_write(path, ts, m->n_params, keys, vals, 3);
    free(ts);
    free(host);
    return st;
}

hae_status hae_model_load(hae_model *m, const char *path) {
    hae_st_file *f = NULL;
    HAE_TRY(hae_st_open(path, &f));
    stage s;
    hae_status st = stage_alloc(&s);
    char a[96], b[96];
    for (int p = 0; p < m->n_params && st == HAE_OK; p++) {
        const param *pr = &m->params[p];
        const hae_st_tensor *t = hae_st_find(f, pr->name);
        if (!t) {
            st = hae_error(HAE_ERR_FORMAT, "%s: tensor '%s' is missing (the model needs %s)", path, pr->name,
                           hae_tensor_describe(&pr->t, a, sizeof a));
            break;
        }
        hae_tensor ft = hae_tensor_make((void *)t->data, t->dtype, HAE_CPU, t->ndim, t->shape);
        bool same = t->ndim == pr->t.ndim;
        for (int d = 0; same && d < t->ndim; d++) same = t->shape[d] == pr->t.shape[d];
        if (!same) {
            st = hae_error(HAE_ERR_FORMAT, "%s: tensor '%s' is %s but the model needs %s", path, pr->name,
                           hae_tensor_describe(&ft, a, sizeof a), hae_tensor_describe(&pr->t, b, sizeof b));
            break;
        }
        if (t->dtype != HAE_F32 && t->dtype != HAE_BF16 && t->dtype != HAE_F16) {
            st = hae_error(HAE_ERR_UNSUPPORTED, "%s: tensor '%s' is %s; weights load from f32, bf16 or f16", path,
                           pr->name, hae_dtype_name(t->dtype));
            break;
        }
        int64_t n = hae_tensor_numel(&pr->t);
        for (int64_t off = 0; off < n && st == HAE_OK; off += STAGE_ELEMS) {
            int64_t k = n - off < STAGE_ELEMS ? n - off : STAGE_ELEMS;
            size_t es = hae_dtype_size(t->dtype); /* file data may be unaligned: copy before reading */
            memcpy(s.raw, (const char *)t->data + (size_t)off * es, (size_t)k * es);
            for (int64_t i = 0; i < k; i++) s.f[i] = hae_load_f(s.raw, t->dtype, i);
            st = put_block(m, &s, &pr->t, off, k);
        }
    }
    if (st == HAE_OK) st = hae_backend_sync(m->be);
    stage_free(&s);
    hae_st_close(f);
    return st;
}

/* ---------------------------------------------------------------- forward */

/* Views of the [B, T, H, Dh] heads inside the fused qkv rows of a chunk of T tokens. */
static hae_tensor qkv_heads(const hae_model *m, int64_t T, int64_t col0, int64_t heads) {
    hae_tensor t = hae_tensor_4d((char *)m->qkv.data + col0 * (int64_t)hae_dtype_size(m->dt), m->dt,
                                 hae_backend_device(m->be), m->B, T, heads, m->Dh);
    t.stride[1] = m->qkv_dim;
    t.stride[0] = T * m->qkv_dim;
    return t;
}

static hae_tensor rows(hae_tensor t, int64_t n) { return hae_tensor_narrow(t, 0, 0, n); }

static hae_status attention_block(hae_model *m, int64_t l, int64_t T) {
    const layer_weights *w = &m->layers[l];
    hae_backend *be = m->be;
    int64_t N = m->B * T, qd = m->Hq * m->Dh, kd = m->Hkv * m->Dh;
    float eps = m->cfg.model.norm_eps;
    HAE_TRY(hae_rmsnorm(be, &(hae_rmsnorm_args){.x = rows(m->x, N), .weight = w->attn_norm, .out = rows(m->h, N), .eps = eps}));
    HAE_TRY(hae_gemm(be, &(hae_gemm_args){.a = rows(m->h, N), .b = w->wqkv, .c = rows(m->qkv, N)}));
    hae_tensor q = qkv_heads(m, T, 0, m->Hq), k = qkv_heads(m, T, qd, m->Hkv), v = qkv_heads(m, T, qd + kd, m->Hkv);
    float theta = m->cfg.model.attention.rope_theta;
    HAE_TRY(hae_rope(be, &(hae_rope_args){.x = q, .pos0 = m->pos, .rot_dims = m->rot_dims, .theta = theta}));
    HAE_TRY(hae_rope(be, &(hae_rope_args){.x = k, .pos0 = m->pos, .rot_dims = m->rot_dims, .theta = theta}));
    hae_tensor kc, vc;
    hae_kv_cache_layer(m->kv, (int)l, &kc, &vc);
    HAE_TRY(hae_kv_write(be, &(hae_kv_write_args){.src = k, .cache = kc, .pos0 = m->pos}));
    HAE_TRY(hae_kv_write(be, &(hae_kv_write_args){.src = v, .cache = vc, .pos0 = m->pos}));
    hae_tensor att = hae_tensor_4d(m->att.data, m->dt, hae_backend_device(be), m->B, T, m->Hq, m->Dh);
    HAE_TRY(hae_attention(be, &(hae_attention_args){.q = q, .k_cache = kc, .v_cache = vc, .out = att, .pos0 = m->pos,
                                                    .window = w->window, .scale = m->scale}));
    return hae_gemm(be, &(hae_gemm_args){.a = rows(m->att, N), .b = w->wo, .c = rows(m->x, N), .accumulate = true});
}

static hae_status mlp_block(hae_model *m, int64_t l, int64_t T) {
    const layer_weights *w = &m->layers[l];
    hae_backend *be = m->be;
    int64_t N = m->B * T;
    HAE_TRY(hae_rmsnorm(be, &(hae_rmsnorm_args){.x = rows(m->x, N), .weight = w->mlp_norm, .out = rows(m->h, N),
                                                .eps = m->cfg.model.norm_eps}));
    HAE_TRY(hae_gemm(be, &(hae_gemm_args){.a = rows(m->h, N), .b = w->wgu, .c = rows(m->gu, N)}));
    HAE_TRY(hae_swiglu(be, &(hae_swiglu_args){.gate_up = rows(m->gu, N), .out = rows(m->act, N)}));
    return hae_gemm(be, &(hae_gemm_args){.a = rows(m->act, N), .b = w->wdown, .c = rows(m->x, N), .accumulate = true});
}

/* LM head over the chunk: every row into logits[b, pos0 + t] (all_logits), or the last row of each
 * sequence into logits[b] when this chunk ends the forward. */
static hae_status lm_head(hae_model *m, int64_t T, bool last_chunk) {
    hae_backend *be = m->be;
    float eps = m->cfg.model.norm_eps;
    if (m->opt.all_logits) {
        int64_t N = m->B * T;
        HAE_TRY(hae_rmsnorm(be, &(hae_rmsnorm_args){.x = rows(m->x, N), .weight = m->final_norm, .out = rows(m->h, N), .eps = eps}));
        for (int64_t b = 0; b < m->B; b++) {
            hae_tensor lg = hae_tensor_narrow(m->logits, 0, b, 1);
            lg = hae_tensor_2d((char *)lg.data + m->pos * m->V * 4, HAE_F32, lg.device, T, m->V);
            HAE_TRY(hae_gemm(be, &(hae_gemm_args){.a = hae_tensor_narrow(m->h, 0, b * T, T), .b = m->lm_head, .c = lg}));
        }
        return HAE_OK;
    }
    if (!last_chunk) return HAE_OK;
    hae_tensor xl = hae_tensor_narrow(m->x, 0, T - 1, 1); /* row T-1 of each sequence: stride T rows */
    xl.shape[0] = m->B;
    xl.stride[0] = T * m->d;
    HAE_TRY(hae_rmsnorm(be, &(hae_rmsnorm_args){.x = xl, .weight = m->final_norm, .out = m->hlast, .eps = eps}));
    return hae_gemm(be, &(hae_gemm_args){.a = m->hlast, .b = m->lm_head, .c = m->logits});
}

hae_status hae_model_forward(hae_model *m, const int32_t *tokens, int64_t T, hae_tensor *logits) {
    if (T < 1) return hae_error(HAE_ERR_INVALID, "model forward: %lld tokens (need >= 1)", (long long)T);
    if (m->pos + T > m->ctx_max)
        return hae_error(HAE_ERR_INVALID,
                         "model forward: %lld tokens at position %lld exceed the context of %lld tokens the model was "
                         "sized for (runtime.prefill + runtime.decode)",
                         (long long)T, (long long)m->pos, (long long)m->ctx_max);
    for (int64_t i = 0; i < m->B * T; i++)
        if (tokens[i] < 0 || tokens[i] >= m->V)
            return hae_error(HAE_ERR_INVALID, "model forward: token %d (sequence %lld, index %lld) is outside the vocabulary [0, %lld)",
                             tokens[i], (long long)(i / T), (long long)(i % T), (long long)m->V);
    for (int64_t t0 = 0; t0 < T; t0 += m->chunk) {
        int64_t n = T - t0 < m->chunk ? T - t0 : m->chunk, N = m->B * n;
        for (int64_t b = 0; b < m->B; b++) memcpy(m->ids_host + b * n, tokens + b * T + t0, sizeof(int32_t) * (size_t)n);
        HAE_TRY(hae_backend_upload(m->be, m->ids.data, m->ids_host, sizeof(int32_t) * (size_t)N));
        HAE_TRY(hae_embedding(m->be, &(hae_embedding_args){.ids = rows(m->ids, N), .table = m->embed, .out = rows(m->x, N)}));
        for (int64_t l = 0; l < m->L; l++) {
            HAE_TRY(attention_block(m, l, n));
            HAE_TRY(mlp_block(m, l, n));
        }
        HAE_TRY(lm_head(m, n, t0 + n == T));
        m->pos += n;
    }
    *logits = m->logits;
    return HAE_OK;
}

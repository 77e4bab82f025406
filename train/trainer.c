/* The training copy of a model (hae.h, the training section): fp32 master weights in one flat buffer, laid out
 * and named as engine/model.c lays out a stack of full, swa, dsa and linear-family layers, attention of the gqa or
 * mla form (fused projections saved as their separate tensors), the forward keeping every activation its backward
 * reads, the backward, and AdamW.
 *
 *     x = E[tokens];  per layer:  x += Mixer(norm1(x));  x += Wdown swiglu(Wgu norm2(x))
 *     attention mixer:  Wo attn(rope(Wqkv h));  mla: the rows of mla_forward (q, the latent's up-projected keys
 *                       and values, one shared RoPE key), unabsorbed
 *     linear mixer:     Wo gated_norm(delta(map(conv(q, k, v)), decay(Wf2 f1), sigmoid(b)), Wg2 g1)
 *                       with [q | k | v | f1 or a | b | g1] = Wqkv h, as engine/model.c's linear_block
 *     dsa mixer:        the attention mixer over each query's top-k under the indexer's scores
 *                       I = sum_h w_h relu(q^I_h . k^I) / sqrt(H_I D_I) (fp32: the engine's FP8 rounding is not
 *                       applied), q^I = rope(Wq_i h), k^I = rope(layernorm(Wk_i h)), w = Wp h
 *     logits = lm_head norm(x) at the scored rows;  loss = mean cross-entropy there
 *
 * The backward walks this in reverse with the residual's gradient dx: each block adds its input's gradient
 * to dx, and the embedding takes dx last. The indexers learn only from their distillation loss (hae_tr_index_kl),
 * their input h detached; the selection passes no gradient. Weights, moments and activations live in the
 * backend's memory (on CUDA every op is a kernel of train_ops_cuda.h); safetensors pass through the host. */
#include "train_ops.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char name[96];
    int64_t off, n; /* elements, in the flat buffers */
    int ndim;
    int64_t shape[3];
    hae_init_kind init;
    float std;
    bool decay; /* matrices decay; norm weights, A_log and dt_bias do not */
    bool indexer; /* a dsa indexer's weight: the only ones trained during train.indexer_warmup */
} tparam;

typedef struct {
    int64_t attn_norm, wqkv, wo, mlp_norm, wgu, wdown; /* offsets of the weights */
    int64_t window;                                    /* swa; 0 for full */
    bool linear;
    hae_linear_kind lk;
    int64_t in_dim, f_dim, b_dim;                      /* linear: fused projection width, f and b columns */
    int64_t conv_w, wf2, wg2, A_log, dt_bias, o_norm;  /* linear: offsets (-1 where the kind has none) */
    bool dsa;
    int64_t wq_i, wk_i, kn_w, kn_b, wp;                /* dsa: the indexer's q, k, key norm weight and bias, heads */
    int64_t kv_norm, wkvb;                             /* mla: the latent's norm weight, its up-projection kv_b */
    /* the last forward's activations: the block inputs, norms (and their 1/rms), the MLP's gate/up and activation;
     * attention: the fused q/k/v after RoPE, the probabilities, the output; linear: the projection, the conv's
     * pre-activation and output, mapped q and k (one row per value head), v, the raw and log decays, the betas,
     * the output gate, every state, the recurrence's output and the norm's */
    float *x, *h1, *r1, *xm, *h2, *r2, *gu, *act;
    float *qkv, *P, *att;
    float *proj, *cpre, *cout, *qm, *km, *vv, *graw, *g, *beta, *gout, *S, *o, *y;
    /* dsa: the indexer's queries, key before and after its norm (and 1/std), head weights, scores, the selection */
    float *qi, *kr, *ki, *krs, *wi, *I;
    uint8_t *allow;
    /* mla: the latent before and after its norm (and 1/rms), kv_b's output (per head k nope, then v); the fused
     * projection [q | latent | k rope] is proj */
    float *lat, *latn, *lrs, *kvb;
} tlayer;

struct hae_trainer {
    hae_config cfg;
    hae_backend *be;
    int64_t V, d, L, Hq, Hkv, Dh, F, qkv_dim, Bmax, Tmax;
    hae_dtype mm;           /* train.matmul: the GEMMs' input precision */
    bool mla;               /* attention heads of Dh = nope + rope dims for q and k and Dv for v; Hkv = Hq */
    int64_t Dv, nope, rdim, lora, rope_off; /* v dim; mla's per-head dims and latent rank; RoPE's first dim in a head */
    int64_t LH, LHV, LK, LV, conv_W, conv_ch; /* linear layers: q/k heads, value heads, head dims, conv width and channels */
    bool has_linear, has_dsa;
    int64_t HI, DI, irope, topk; /* dsa: indexer heads, head dim, RoPE dims; tokens selected */
    int rot_dims;
    float scale, eps;
    tparam *params;
    int n_params;
    int64_t n_elems, embed, final_norm, lm_head;
    float *w, *g, *m, *v; /* weights, gradients, AdamW's moments (backend memory) */
    float *host;          /* CUDA: a host copy of w and g for hae_trainer_param; NULL on the CPU */
    double *sumsq;        /* [n_params] the gradients' squared norms (backend memory) */
    int64_t step;
    tlayer *layers;
    float *act_mem;
    float *xL, *xs, *hs, *rs, *logits; /* the final residual; the scored rows' residual, norm and logits */
    float *dx, *dh, *da, *db;           /* gradients of the residual, of a norm's output, two wide ones */
    float *cs, *sn;                     /* RoPE tables [Tmax, rot/2] */
    /* linear layers' backward: gradients of the norm's output, the recurrence's output, the output gate, mapped
     * q and k, v, the decays, the betas, the conv's output and input, the projection; two column buffers */
    float *ly, *lo, *lgo, *lq, *lk, *lv, *lg, *lb, *lcout, *lcin, *lproj, *c1, *c2;
    /* dsa layers' backward: the scores' gradient, the indexer's q, k (after and before its norm) and w; its RoPE tables */
    float *dI, *dqi, *dki, *dkr, *dwi, *ics, *isn;
    float *mproj, *mkvb, *mlat, *mlatx; /* mla's backward: gradients of proj, kv_b's output, the normed latent, the latent */
    double index_kl; /* the last backward's indexer loss: mean KL per query row, summed over the dsa layers */
    int32_t *ids, *target;              /* the last forward's tokens and targets (backend memory) */
    int64_t *pos;                       /* its scored rows (backend memory) */
    uint8_t *correct;                   /* per scored row (backend memory) */
    int64_t B, T, n;                    /* its shapes */
};

/* ---------------------------------------------------------------- layout */

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* A parameter of shape [d0] (d1 = 0), [d0, d1] or [d0, 1, d1] (conv3: PyTorch's depthwise Conv1d weights). */
static int64_t add_param(hae_trainer *t, const char *name, int64_t d0, int64_t d1, bool conv3, hae_init_kind init,
                         float std) {
    tparam *p = &t->params[t->n_params++];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->off = t->n_elems;
    p->ndim = conv3 ? 3 : d1 ? 2 : 1;
    if (conv3) p->shape[0] = d0, p->shape[1] = 1, p->shape[2] = d1;
    else p->shape[0] = d0, p->shape[1] = d1;
    p->n = d0 * (d1 ? d1 : 1);
    p->init = init;
    p->std = std;
    p->decay = init == INIT_NORMAL || init == INIT_UNIFORM;
    t->n_elems += p->n;
    return p->off;
}

/* A linear layer's mixer, named and ordered as engine/model.c's layout_linear. */
static void layout_linear(hae_trainer *t, tlayer *w, int64_t l, float std, float std_out) {
    const int64_t H = t->LH, HV = t->LHV, K = t->LK, V = t->LV, W = t->conv_W;
    const hae_decay dec = w->lk.decay;
    char name[96];
    const hae_linear_dims ld = hae_linear_dims_of(&t->cfg);
    w->in_dim = hae_linear_in_dim(&ld, &w->lk, &w->f_dim, &w->b_dim);
    w->wf2 = w->A_log = w->dt_bias = -1;
#define P(suffix, d0, d1, conv3, init, s) \
    (snprintf(name, sizeof name, "model.layers.%lld.attn.%s", (long long)l, suffix), add_param(t, name, d0, d1, conv3, init, s))
    w->wqkv = P("q_proj.weight", H * K, t->d, false, INIT_NORMAL, std);
    P("k_proj.weight", H * K, t->d, false, INIT_NORMAL, std);
    P("v_proj.weight", HV * V, t->d, false, INIT_NORMAL, std);
    if (dec == HAE_DECAY_CHANNEL) P("f_proj.0.weight", V, t->d, false, INIT_NORMAL, std);
    if (dec == HAE_DECAY_HEAD) P("a_proj.weight", HV, t->d, false, INIT_NORMAL, std);
    if (w->lk.delta) P("b_proj.weight", HV, t->d, false, INIT_NORMAL, std);
    P("g_proj.0.weight", V, t->d, false, INIT_NORMAL, std);
    const float bound = 1.0f / sqrtf((float)W);
    w->conv_w = P("q_conv1d.weight", H * K, W, true, INIT_UNIFORM, bound);
    P("k_conv1d.weight", H * K, W, true, INIT_UNIFORM, bound);
    P("v_conv1d.weight", HV * V, W, true, INIT_UNIFORM, bound);
    if (dec == HAE_DECAY_CHANNEL) w->wf2 = P("f_proj.1.weight", HV * K, V, false, INIT_NORMAL, std);
    w->wg2 = P("g_proj.1.weight", HV * V, V, false, INIT_NORMAL, std);
    if (dec == HAE_DECAY_FIXED) w->A_log = P("A_log", HV, 0, false, INIT_RETNET, 0.0f);
    if (dec == HAE_DECAY_CHANNEL || dec == HAE_DECAY_HEAD) {
        w->A_log = P("A_log", HV, 0, false, INIT_A_LOG, 0.0f);
        w->dt_bias = P("dt_bias", dec == HAE_DECAY_CHANNEL ? HV * K : HV, 0, false, INIT_DT_BIAS, 0.0f);
    }
    w->o_norm = P("o_norm.weight", V, 0, false, INIT_ONES, 0.0f);
    w->wo = P("o_proj.weight", t->d, HV * V, false, INIT_NORMAL, std_out);
#undef P
}

/* The parameters in engine/model.c's order (its init counters are the parameter's index), fused tensors as
 * consecutive parameters so that q/k/v and gate/up are each one contiguous matrix. */
static void layout(hae_trainer *t) {
    const float std = t->cfg.model.initializer_range, std_out = std / sqrtf(2.0f * (float)t->L);
    const int64_t qd = t->Hq * t->Dh, kd = t->Hkv * t->Dh, d = t->d;
    char name[96];
    t->embed = add_param(t, "model.embed_tokens.weight", t->V, d, false, INIT_NORMAL, std);
    for (int64_t l = 0; l < t->L; l++) {
        tlayer *w = &t->layers[l];
#define P(suffix, d0, d1, init, s) \
    (snprintf(name, sizeof name, "model.layers.%lld.%s", (long long)l, suffix), add_param(t, name, d0, d1, false, init, s))
        w->attn_norm = P("input_layernorm.weight", d, 0, INIT_ONES, 0.0f);
        w->linear = hae_linear_kind_of(t->cfg.model.layers[l], &w->lk);
        if (w->linear) {
            layout_linear(t, w, l, std, std_out);
        } else if (t->mla) { /* engine/model.c's names and order: q_proj rows per head [nope | rope], kv_a rows
                              * [latent | rope], kv_b rows per head [k nope | v] */
            w->wqkv = P("self_attn.q_proj.weight", t->Hq * t->Dh, d, INIT_NORMAL, std);
            P("self_attn.kv_a_proj_with_mqa.weight", t->lora + t->rdim, d, INIT_NORMAL, std);
            w->kv_norm = P("self_attn.kv_a_layernorm.weight", t->lora, 0, INIT_ONES, 0.0f);
            w->wkvb = P("self_attn.kv_b_proj.weight", t->Hq * (t->nope + t->Dv), t->lora, INIT_NORMAL, std);
            w->wo = P("self_attn.o_proj.weight", d, t->Hq * t->Dv, INIT_NORMAL, std_out);
            w->window = t->cfg.model.layers[l] == HAE_LAYER_SWA ? t->cfg.model.swa.window_size : 0;
        } else {
            w->wqkv = P("self_attn.q_proj.weight", qd, d, INIT_NORMAL, std);
            P("self_attn.k_proj.weight", kd, d, INIT_NORMAL, std);
            P("self_attn.v_proj.weight", kd, d, INIT_NORMAL, std);
            w->wo = P("self_attn.o_proj.weight", d, qd, INIT_NORMAL, std_out);
            w->window = t->cfg.model.layers[l] == HAE_LAYER_SWA ? t->cfg.model.swa.window_size : 0;
        }
        w->dsa = t->cfg.model.layers[l] == HAE_LAYER_DSA;
        if (w->dsa) {
            const int first = t->n_params;
            w->wq_i = P("self_attn.indexer.wq.weight", t->HI * t->DI, d, INIT_NORMAL, std);
            w->wk_i = P("self_attn.indexer.wk.weight", t->DI, d, INIT_NORMAL, std);
            w->kn_w = P("self_attn.indexer.k_norm.weight", t->DI, 0, INIT_ONES, 0.0f);
            w->kn_b = P("self_attn.indexer.k_norm.bias", t->DI, 0, INIT_ZEROS, 0.0f);
            w->wp = P("self_attn.indexer.weights_proj.weight", t->HI, d, INIT_NORMAL, std);
            for (int p = first; p < t->n_params; p++) t->params[p].indexer = true;
        }
        w->mlp_norm = P("post_attention_layernorm.weight", d, 0, INIT_ONES, 0.0f);
        w->wgu = P("mlp.gate_proj.weight", t->F, d, INIT_NORMAL, std);
        P("mlp.up_proj.weight", t->F, d, INIT_NORMAL, std);
        w->wdown = P("mlp.down_proj.weight", d, t->F, INIT_NORMAL, std_out);
#undef P
    }
    t->final_norm = add_param(t, "model.norm.weight", d, 0, false, INIT_ONES, 0.0f);
    t->lm_head = t->cfg.model.tie_word_embeddings ? t->embed
                                                  : add_param(t, "lm_head.weight", t->V, d, false, INIT_NORMAL, std);
}

static bool on_cuda(const hae_trainer *t) { return hae_backend_device(t->be) == HAE_CUDA; }

/* A host view of n floats of backend memory: buf itself on the CPU, else a copy in *tmp (freed by the caller). */
static hae_status host_view(const hae_trainer *t, const float *buf, int64_t n, float **tmp, const float **out) {
    *tmp = NULL;
    *out = buf;
    if (!on_cuda(t)) return HAE_OK;
    *tmp = malloc(sizeof(float) * (size_t)n);
    if (!*tmp) return hae_error(HAE_ERR_OOM, "train: %lld floats of host memory for a copy of the weights", (long long)n);
    *out = *tmp;
    return hae_backend_download(t->be, *tmp, buf, sizeof(float) * (size_t)n);
}

/* hae_model_init_weights' values (the same function of the same counters), made on the host. */
static hae_status init_weights(hae_trainer *t, uint64_t seed) {
    float *w = on_cuda(t) ? t->host : t->w;
    for (int p = 0; p < t->n_params; p++) {
        const tparam *pr = &t->params[p];
        for (int64_t i = 0; i < pr->n; i++)
            w[pr->off + i] = hae_init_value(pr->init, pr->std, seed, (uint64_t)p, (uint64_t)i);
    }
    return on_cuda(t) ? hae_backend_upload(t->be, t->w, w, sizeof(float) * (size_t)t->n_elems) : HAE_OK;
}

static hae_status check_model(const hae_config *cfg, hae_backend *be) {
    if (!be) return hae_error(HAE_ERR_INVALID, "hae_trainer_create: NULL backend");
    for (int64_t l = 0; l < cfg->model.n_layers; l++) {
        hae_layer_kind k = cfg->model.layers[l];
        if (k == HAE_LAYER_DSA && cfg->model.dsa.derived)
            return hae_error(HAE_ERR_UNSUPPORTED,
                             "train: layer %lld is 'dsa' with model.dsa.derived: true, whose indexer has no weights to "
                             "train (set model.dsa.derived: false for a learned indexer)",
                             (long long)l);
    }
    return HAE_OK;
}

/* cos and sin tables [Tmax, half] from the host into backend memory. */
static hae_status upload_tables(hae_trainer *t, const float *tab, int64_t half, float *cs, float *sn) {
    const size_t bytes = sizeof(float) * (size_t)(t->Tmax * half);
    HAE_TRY(hae_backend_upload(t->be, cs, tab, bytes));
    return hae_backend_upload(t->be, sn, tab + t->Tmax * half, bytes);
}

/* Carves the activations (sizes only when base is NULL); returns the floats used. */
static int64_t carve_acts(hae_trainer *t, float *base) {
    const int64_t B = t->Bmax, T = t->Tmax, N = B * T, d = t->d;
    const int64_t HV = t->LHV, K = t->LK, V = t->LV, ck = t->conv_ch > HV * K ? t->conv_ch : HV * K;
    int64_t wide = max64(max64(t->qkv_dim, 2 * t->F), max64(t->Hq * t->Dv, d));
    const int64_t mproj = t->Hq * t->Dh + t->lora + t->rdim, mkvb = t->Hq * (t->nope + t->Dv); /* mla */
    int64_t used = 0;
#define CARVE(ptr, n) (ptr = base ? base + used : NULL, used += ((n) + 15) & ~(int64_t)15)
    for (int64_t l = 0; l < t->L; l++) {
        tlayer *w = &t->layers[l];
        CARVE(w->x, N * d), CARVE(w->h1, N * d), CARVE(w->r1, N);
        CARVE(w->xm, N * d), CARVE(w->h2, N * d), CARVE(w->r2, N), CARVE(w->gu, N * 2 * t->F), CARVE(w->act, N * t->F);
        if (w->dsa) {
            CARVE(w->qi, N * t->HI * t->DI), CARVE(w->kr, N * t->DI), CARVE(w->ki, N * t->DI), CARVE(w->krs, N);
            CARVE(w->wi, N * t->HI), CARVE(w->I, B * T * T);
            float *allow;
            CARVE(allow, (B * T * T + 3) / 4);
            w->allow = (uint8_t *)allow;
        }
        if (!w->linear) {
            CARVE(w->qkv, N * t->qkv_dim), CARVE(w->P, B * t->Hq * T * T), CARVE(w->att, N * t->Hq * t->Dv);
            if (t->mla) {
                CARVE(w->proj, N * mproj), CARVE(w->lat, N * t->lora), CARVE(w->latn, N * t->lora), CARVE(w->lrs, N);
                CARVE(w->kvb, N * mkvb);
            }
            continue;
        }
        CARVE(w->proj, N * w->in_dim), CARVE(w->cpre, N * t->conv_ch), CARVE(w->cout, N * t->conv_ch);
        CARVE(w->qm, N * HV * K), CARVE(w->km, N * HV * K), CARVE(w->vv, N * HV * V);
        CARVE(w->graw, N * HV * K), CARVE(w->g, N * HV * K), CARVE(w->beta, N * HV);
        CARVE(w->gout, N * HV * V), CARVE(w->o, N * HV * V), CARVE(w->y, N * HV * V);
        const hae_tr_delta_shape ds = {.T = T, .every = t->cfg.train.state_checkpoint,
                                       .chunk = t->cfg.train.linear_chunk}; /* the most slots: at T */
        CARVE(w->S, B * HV * hae_tr_delta_slots(&ds) * K * V);
        wide = max64(wide, HV * V);
    }
    CARVE(t->xL, N * d), CARVE(t->xs, N * d), CARVE(t->hs, N * d), CARVE(t->rs, N), CARVE(t->logits, N * t->V);
    CARVE(t->dx, N * d), CARVE(t->dh, N * d), CARVE(t->da, N * wide), CARVE(t->db, N * wide);
    const int64_t rot = t->rot_dims / 2 ? t->rot_dims / 2 : 1;
    CARVE(t->cs, T * rot), CARVE(t->sn, T * rot);
    if (t->has_linear) {
        int64_t in_max = 0;
        for (int64_t l = 0; l < t->L; l++) in_max = max64(in_max, t->layers[l].in_dim);
        CARVE(t->ly, N * HV * V), CARVE(t->lo, N * HV * V), CARVE(t->lgo, N * HV * V);
        CARVE(t->lq, N * HV * K), CARVE(t->lk, N * HV * K), CARVE(t->lv, N * HV * V), CARVE(t->lg, N * HV * K);
        CARVE(t->lb, N * HV), CARVE(t->lcout, N * t->conv_ch), CARVE(t->lcin, N * ck);
        CARVE(t->lproj, N * in_max), CARVE(t->c1, N * ck), CARVE(t->c2, N * ck);
    }
    if (t->mla) {
        CARVE(t->mproj, N * mproj), CARVE(t->mkvb, N * mkvb), CARVE(t->mlat, N * t->lora), CARVE(t->mlatx, N * t->lora);
    }
    if (t->has_dsa) {
        const int64_t irot = t->irope / 2 ? t->irope / 2 : 1;
        CARVE(t->dI, B * T * T), CARVE(t->dqi, N * t->HI * t->DI), CARVE(t->dki, N * t->DI), CARVE(t->dkr, N * t->DI);
        CARVE(t->dwi, N * t->HI), CARVE(t->ics, T * irot), CARVE(t->isn, T * irot);
    }
#undef CARVE
    return used;
}

/* The weights, gradients and moments, the activations and the batch's ids in the backend's memory, and the RoPE
 * tables (made on the host). */
static hae_status alloc_all(hae_trainer *t) {
    const int64_t acts = carve_acts(t, NULL), n = t->Bmax * t->Tmax;
    const size_t weights = sizeof(float) * (size_t)(4 * t->n_elems), act_bytes = sizeof(float) * (size_t)acts;
    const size_t batch = (sizeof(int32_t) + sizeof(int64_t) + sizeof(int32_t) + 1) * (size_t)n;
    hae_status st = hae_backend_alloc(t->be, weights, (void **)&t->w);
    if (st == HAE_OK) st = hae_backend_alloc(t->be, act_bytes, (void **)&t->act_mem);
    if (st == HAE_OK) st = hae_backend_alloc(t->be, batch, (void **)&t->pos);
    if (st == HAE_OK) st = hae_backend_alloc(t->be, sizeof(double) * (size_t)t->n_params, (void **)&t->sumsq);
    if (st != HAE_OK)
        return hae_error_wrap(st, "train: %.1f MiB on %s for %lld parameters (weights, gradients, moments) and the "
                                  "activations of %lld x %lld tokens", (double)(weights + act_bytes + batch) / 1048576.0,
                              hae_backend_name(t->be), (long long)t->n_elems, (long long)t->Bmax, (long long)t->Tmax);
    HAE_TRY(hae_backend_zero(t->be, t->w, weights));
    t->g = t->w + t->n_elems, t->m = t->g + t->n_elems, t->v = t->m + t->n_elems;
    t->ids = (int32_t *)(t->pos + n), t->target = t->ids + n, t->correct = (uint8_t *)(t->target + n);
    carve_acts(t, t->act_mem);
    if (on_cuda(t)) {
        t->host = malloc(sizeof(float) * (size_t)(2 * t->n_elems));
        if (!t->host) return hae_error(HAE_ERR_OOM, "train: a host copy of %lld weights", (long long)t->n_elems);
    }
    const int64_t rot = t->rot_dims / 2, irot = t->irope / 2, tabs = 2 * t->Tmax * (rot > irot ? rot : irot);
    float *tab = malloc(sizeof(float) * (size_t)(tabs ? tabs : 1));
    if (!tab) return hae_error(HAE_ERR_OOM, "train: RoPE tables");
    st = HAE_OK;
    if (rot) {
        hae_tr_rope_table(t->Tmax, t->rot_dims, t->cfg.model.attention.rope_theta, tab, tab + t->Tmax * rot);
        st = upload_tables(t, tab, rot, t->cs, t->sn);
    }
    if (st == HAE_OK && t->has_dsa && irot) {
        hae_tr_rope_table(t->Tmax, (int)t->irope, t->cfg.model.attention.rope_theta, tab, tab + t->Tmax * irot);
        st = upload_tables(t, tab, irot, t->ics, t->isn);
    }
    free(tab);
    return st;
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
    t->mm = cfg->train.matmul;
    t->V = cfg->model.vocab_size, t->d = cfg->model.d_model, t->L = cfg->model.n_layers;
    t->Hq = cfg->model.attention.num_heads, t->Hkv = cfg->model.attention.num_kv_heads;
    t->Dh = cfg->model.attention.head_dim, t->F = cfg->model.mlp.intermediate_size;
    t->Dv = t->Dh;
    t->mla = cfg->model.attention.form == HAE_ATTN_MLA;
    if (t->mla) { /* heads of [nope | rope] for q and k (the latent's up-projection and the shared RoPE key), v_head_dim */
        t->nope = cfg->model.attention.qk_nope_head_dim, t->rdim = cfg->model.attention.qk_rope_head_dim;
        t->lora = cfg->model.attention.kv_lora_rank, t->Dv = cfg->model.attention.v_head_dim;
        t->Hkv = t->Hq, t->Dh = t->nope + t->rdim, t->rope_off = t->nope;
    }
    t->qkv_dim = (t->Hq + t->Hkv) * t->Dh + t->Hkv * t->Dv;
    const hae_linear_dims ld = hae_linear_dims_of(cfg);
    t->LH = ld.H, t->LHV = ld.HV, t->LK = ld.K, t->LV = ld.V, t->conv_W = ld.W, t->conv_ch = ld.C;
    for (int64_t l = 0; l < t->L; l++) {
        t->has_linear |= hae_linear_kind_of(cfg->model.layers[l], &(hae_linear_kind){0});
        t->has_dsa |= cfg->model.layers[l] == HAE_LAYER_DSA;
    }
    t->HI = cfg->model.dsa.index_n_heads, t->DI = cfg->model.dsa.index_head_dim;
    t->irope = cfg->model.dsa.index_rope_dim, t->topk = cfg->model.dsa.index_topk;
    t->Bmax = max_batch, t->Tmax = max_tokens;
    t->eps = cfg->model.norm_eps;
    t->scale = cfg->model.attention.softmax_scale > 0 ? cfg->model.attention.softmax_scale : 1.0f / sqrtf((float)t->Dh);
    switch (cfg->model.attention.rope) { /* as engine/model.c */
    case HAE_ROPE_NONE: t->rot_dims = 0; break;
    case HAE_ROPE_FULL: t->rot_dims = (int)(t->mla ? t->rdim : t->Dh); break;
    case HAE_ROPE_PARTIAL: t->rot_dims = (int)lroundf((float)t->Dh * cfg->model.attention.partial_rotary_factor); break;
    }
    t->layers = calloc((size_t)t->L, sizeof *t->layers);
    t->params = calloc((size_t)(20 * t->L + 3), sizeof *t->params); /* a layer has at most 19 */
    if (!t->layers || !t->params) {
        hae_trainer_destroy(t);
        return hae_error(HAE_ERR_OOM, "train: out of host memory");
    }
    layout(t);
    hae_status st = alloc_all(t);
    if (st == HAE_OK) st = init_weights(t, cfg->seed);
    if (st != HAE_OK) {
        hae_trainer_destroy(t);
        return st;
    }
    *out = t;
    return HAE_OK;
}

void hae_trainer_destroy(hae_trainer *t) {
    if (!t) return;
    if (t->be) {
        hae_backend_free(t->be, t->w), hae_backend_free(t->be, t->act_mem), hae_backend_free(t->be, t->pos);
        hae_backend_free(t->be, t->sumsq);
    }
    free(t->host), free(t->layers), free(t->params);
    free(t);
}

int64_t hae_trainer_steps(const hae_trainer *t) { return t->step; }
double hae_trainer_index_kl(const hae_trainer *t) { return t->index_kl; }
int hae_trainer_param_count(const hae_trainer *t) { return t->n_params; }

hae_status hae_trainer_param(hae_trainer *t, int i, const char **name, float **w, float **g, int64_t *n) {
    if (i < 0 || i >= t->n_params)
        return hae_error(HAE_ERR_INVALID, "hae_trainer_param: index %d outside [0, %d)", i, t->n_params);
    const tparam *p = &t->params[i];
    if (name) *name = p->name;
    if (n) *n = p->n;
    const size_t bytes = sizeof(float) * (size_t)p->n;
    float *hw = on_cuda(t) ? t->host + p->off : t->w + p->off;
    float *hg = on_cuda(t) ? t->host + t->n_elems + p->off : t->g + p->off;
    if (w && on_cuda(t)) HAE_TRY(hae_backend_download(t->be, hw, t->w + p->off, bytes));
    if (g && on_cuda(t)) HAE_TRY(hae_backend_download(t->be, hg, t->g + p->off, bytes));
    if (w) *w = hw;
    if (g) *g = hg;
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
        memcpy(ts[p].shape, pr->shape, sizeof pr->shape);
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
        int at = snprintf(want, sizeof want, "[%lld", (long long)pr->shape[0]);
        for (int k = 1; k < pr->ndim; k++) at += snprintf(want + at, sizeof want - (size_t)at, ", %lld", (long long)pr->shape[k]);
        snprintf(want + at, sizeof want - (size_t)at, "]");
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
    float *tmp;
    const float *w;
    hae_status st = host_view(t, t->w, t->n_elems, &tmp, &w);
    if (st == HAE_OK) st = save_flat(t, w, "", path, keys, vals, 4);
    free(tmp);
    return st;
}

hae_status hae_trainer_load(hae_trainer *t, const char *path) {
    hae_st_file *f = NULL;
    HAE_TRY(hae_st_open(path, &f));
    float *w = on_cuda(t) ? t->host : t->w;
    hae_status st = load_flat(t, f, path, "", w);
    hae_st_close(f);
    if (st == HAE_OK && on_cuda(t)) st = hae_backend_upload(t->be, t->w, w, sizeof(float) * (size_t)t->n_elems);
    return st;
}

hae_status hae_trainer_save_optim(const hae_trainer *t, const char *path) {
    char step[32];
    snprintf(step, sizeof step, "%lld", (long long)t->step);
    const char *keys[] = {"format", "step"}, *vals[] = {"hae-adamw", step};
    /* one file: the first moments, then the second, under their own names */
    float *tmp;
    const float *mv; /* m, then v */
    HAE_TRY(host_view(t, t->m, 2 * t->n_elems, &tmp, &mv));
    hae_st_tensor *ts = calloc((size_t)(2 * t->n_params), sizeof *ts);
    if (!ts) {
        free(tmp);
        return hae_error(HAE_ERR_OOM, "saving %s: out of host memory", path);
    }
    for (int k = 0; k < 2; k++)
        for (int p = 0; p < t->n_params; p++) {
            const tparam *pr = &t->params[p];
            hae_st_tensor *s = &ts[k * t->n_params + p];
            snprintf(s->name, sizeof s->name, "%s%s", pr->name, k ? ".exp_avg_sq" : ".exp_avg");
            s->dtype = HAE_F32;
            s->ndim = pr->ndim;
            memcpy(s->shape, pr->shape, sizeof pr->shape);
            s->data = mv + k * t->n_elems + pr->off;
            s->nbytes = sizeof(float) * (size_t)pr->n;
        }
    hae_status st = hae_st_write(path, ts, 2 * t->n_params, keys, vals, 2);
    free(ts), free(tmp);
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
    float *mv = on_cuda(t) ? t->host : t->m; /* m, then v */
    if (st == HAE_OK) st = load_flat(t, f, path, ".exp_avg", mv);
    if (st == HAE_OK) st = load_flat(t, f, path, ".exp_avg_sq", mv + t->n_elems);
    if (st == HAE_OK && on_cuda(t)) st = hae_backend_upload(t->be, t->m, mv, sizeof(float) * (size_t)(2 * t->n_elems));
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
    return (hae_tr_attn_shape){.B = t->B, .T = t->T, .Hq = t->Hq, .Hkv = t->Hkv, .Dh = t->Dh, .Dv = t->Dv,
                               .window = w->window,
                               .scale = t->scale, .allow = w->dsa ? w->allow : NULL};
}

/* ---------------------------------------------------------------- dsa layers */

/* The indexer's stage at this step: dense (every earlier token attended, only the indexers trained) during
 * train.indexer_warmup, then sparse. */
static bool index_dense(const hae_trainer *t) { return t->step < t->cfg.train.indexer_warmup; }

static hae_tr_index_shape index_shape(const hae_trainer *t) {
    return (hae_tr_index_shape){.B = t->B, .T = t->T, .HI = t->HI, .DI = t->DI,
                                .scale = 1.0f / sqrtf((float)(t->HI * t->DI))};
}

/* The LayerNorm epsilon of the indexer key, as engine/model.c's dsa_select */
#define INDEX_NORM_EPS 1e-6f

/* The indexer's scores of layer w from h1 and the tokens each query attends to (w->allow). */
static hae_status index_forward(hae_trainer *t, tlayer *w, int64_t N) {
    hae_backend *be = t->be;
    const int64_t HI = t->HI, DI = t->DI, d = t->d;
    HAE_TRY(hae_tr_linear_fwd(be, t->mm, w->h1, t->w + w->wq_i, N, d, HI * DI, w->qi, false));
    HAE_TRY(hae_tr_linear_fwd(be, t->mm, w->h1, t->w + w->wk_i, N, d, DI, w->kr, false));
    HAE_TRY(hae_tr_linear_fwd(be, t->mm, w->h1, t->w + w->wp, N, d, HI, w->wi, false));
    HAE_TRY(hae_tr_layernorm_fwd(be, w->kr, t->w + w->kn_w, t->w + w->kn_b, N, DI, INDEX_NORM_EPS, w->ki, w->krs));
    if (t->irope) {
        HAE_TRY(hae_tr_rope(be, w->qi, t->B, t->T, HI, DI, HI * DI, (int)t->irope, t->ics, t->isn, false));
        HAE_TRY(hae_tr_rope(be, w->ki, t->B, t->T, 1, DI, DI, (int)t->irope, t->ics, t->isn, false));
    }
    const hae_tr_index_shape s = index_shape(t);
    HAE_TRY(hae_tr_index_fwd(be, &s, w->qi, w->ki, w->wi, w->I));
    return hae_tr_index_select(be, w->I, t->B, t->T, index_dense(t) ? t->T : t->topk, w->allow);
}

/* The indexer's distillation loss on the attention of layer w (its probabilities kept by the forward), added to
 * t->index_kl, and its gradients into the indexer's weights only. */
static hae_status index_backward(hae_trainer *t, tlayer *w, int64_t N) {
    hae_backend *be = t->be;
    const int64_t HI = t->HI, DI = t->DI, d = t->d, rows = t->B * t->T;
    double kl = 0;
    HAE_TRY(hae_tr_index_kl(be, w->P, w->I, w->allow, t->B, t->Hq, t->T, 1.0f / (float)rows, t->dI, &kl));
    t->index_kl += kl / (double)rows;
    const hae_tr_index_shape s = index_shape(t);
    HAE_TRY(hae_tr_index_bwd(be, &s, w->qi, w->ki, w->wi, t->dI, t->dqi, t->dki, t->dwi));
    if (t->irope) {
        HAE_TRY(hae_tr_rope(be, t->dqi, t->B, t->T, HI, DI, HI * DI, (int)t->irope, t->ics, t->isn, true));
        HAE_TRY(hae_tr_rope(be, t->dki, t->B, t->T, 1, DI, DI, (int)t->irope, t->ics, t->isn, true));
    }
    float *G = t->g;
    HAE_TRY(hae_tr_layernorm_bwd(be, w->kr, t->w + w->kn_w, w->krs, t->dki, N, DI, t->dkr, G + w->kn_w, G + w->kn_b));
    HAE_TRY(hae_tr_linear_bwd(be, t->mm, w->h1, t->w + w->wq_i, t->dqi, N, d, HI * DI, NULL, false, G + w->wq_i));
    HAE_TRY(hae_tr_linear_bwd(be, t->mm, w->h1, t->w + w->wk_i, t->dkr, N, d, DI, NULL, false, G + w->wk_i));
    return hae_tr_linear_bwd(be, t->mm, w->h1, t->w + w->wp, t->dwi, N, d, HI, NULL, false, G + w->wp);
}

/* RoPE on the q and k columns of fused rows [N, qkv_dim] (forward, or inverse on their gradients). */
static hae_status rope_qk(hae_trainer *t, float *qkv, bool inverse) {
    float *q = qkv + t->rope_off, *k = q + t->Hq * t->Dh; /* mla rotates the last rdim dims of each head */
    HAE_TRY(hae_tr_rope(t->be, q, t->B, t->T, t->Hq, t->Dh, t->qkv_dim, t->rot_dims, t->cs, t->sn, inverse));
    return hae_tr_rope(t->be, k, t->B, t->T, t->Hkv, t->Dh, t->qkv_dim, t->rot_dims, t->cs, t->sn, inverse);
}

/* ---------------------------------------------------------------- linear layers */

/* dst [N, n] = columns [off, off + n) of src [N, ld] */
static hae_status cols_get(hae_trainer *t, float *dst, const float *src, int64_t N, int64_t ld, int64_t off,
                           int64_t n) {
    return hae_tr_copy_cols(t->be, &(hae_tr_cols){.dst = dst, .src = src, .N = N, .n = n, .ld_dst = n, .ld_src = ld,
                                                  .src_off = off});
}

/* columns [off, off + n) of dst [N, ld] += src [N, n] (= with add false) */
static hae_status cols_put(hae_trainer *t, float *dst, int64_t ld, int64_t off, const float *src, int64_t N, int64_t n,
                           bool add) {
    return hae_tr_copy_cols(t->be, &(hae_tr_cols){.dst = dst, .src = src, .N = N, .n = n, .ld_dst = ld, .dst_off = off,
                                                  .ld_src = n, .add = add});
}

/* dst = src, n floats */
static hae_status copy(hae_trainer *t, float *dst, const float *src, int64_t n) {
    return cols_get(t, dst, src, 1, n, 0, n);
}

/* L2 norm's epsilon inside the square root, as linear/linear_cpu.c's q/k map */
#define QK_L2_EPS 1e-6f

/* The q or k heads (columns [off, off + H K) of the conv output) mapped, one row per value head: out [N, HV, K]. */
static hae_status qk_forward(hae_trainer *t, const tlayer *w, int64_t N, int64_t off, float *out) {
    const int64_t H = t->LH, HV = t->LHV, K = t->LK, G = HV / H;
    HAE_TRY(cols_get(t, t->c1, w->cout, N, t->conv_ch, off, H * K));
    if (w->lk.qk_map == HAE_QK_L2) HAE_TRY(hae_tr_l2norm_fwd(t->be, t->c1, N * H, K, QK_L2_EPS, t->c2));
    else HAE_TRY(hae_tr_map_fwd(t->be, HAE_TR_ELU1, t->c1, N * H * K, t->c2));
    if (G == 1) return copy(t, out, t->c2, N * HV * K);
    for (int64_t j = 0; j < HV; j++) /* GVA: value head j reads q/k head j / G */
        HAE_TRY(hae_tr_copy_cols(t->be, &(hae_tr_cols){.dst = out, .src = t->c2, .N = N, .n = K, .ld_dst = HV * K,
                                                        .dst_off = j * K, .ld_src = H * K, .src_off = j / G * K}));
    return HAE_OK;
}

/* The gradient of qk_forward's input from that of its output (d [N, HV, K]), into columns [off, off + H K) of
 * t->lcout: the value heads of a q/k head summed, then the map's backward. */
static hae_status qk_backward(hae_trainer *t, const tlayer *w, int64_t N, int64_t off, const float *d) {
    const int64_t H = t->LH, HV = t->LHV, K = t->LK, G = HV / H;
    if (G == 1) {
        HAE_TRY(copy(t, t->c2, d, N * HV * K));
    } else {
        HAE_TRY(hae_backend_zero(t->be, t->c2, sizeof(float) * (size_t)(N * H * K)));
        for (int64_t j = 0; j < HV; j++)
            HAE_TRY(hae_tr_copy_cols(t->be, &(hae_tr_cols){.dst = t->c2, .src = d, .N = N, .n = K, .ld_dst = H * K,
                                                            .dst_off = j / G * K, .ld_src = HV * K, .src_off = j * K,
                                                            .add = true}));
    }
    HAE_TRY(cols_get(t, t->c1, w->cout, N, t->conv_ch, off, H * K));
    float *dx = t->c1 + N * H * K; /* c1 holds 2 H K columns' worth: x, then its gradient */
    if (w->lk.qk_map == HAE_QK_L2) HAE_TRY(hae_tr_l2norm_bwd(t->be, t->c1, t->c2, N * H, K, QK_L2_EPS, dx));
    else HAE_TRY(hae_tr_map_bwd(t->be, HAE_TR_ELU1, t->c1, t->c2, N * H * K, dx));
    return cols_put(t, t->lcout, t->conv_ch, off, dx, N, H * K, false);
}

static hae_tr_delta_shape delta_shape(const hae_trainer *t, const tlayer *w) {
    return (hae_tr_delta_shape){.B = t->B, .T = t->T, .H = t->LHV, .K = t->LK, .V = t->LV,
                                .channel_decay = w->lk.decay == HAE_DECAY_CHANNEL, .scale = 1.0f / sqrtf((float)t->LK),
                                .every = t->cfg.train.state_checkpoint, .chunk = t->cfg.train.linear_chunk};
}

static hae_gate_fn gate_fn(const hae_trainer *t) {
    return t->cfg.model.linear_attn.safe_gate ? HAE_GATE_SAFE : HAE_GATE_SOFTPLUS;
}

/* xm = x + the linear mixer of h1 (the header's second line). */
static hae_status linear_forward(hae_trainer *t, tlayer *w, int64_t N) {
    hae_backend *be = t->be;
    const int64_t HV = t->LHV, K = t->LK, V = t->LV, C = t->conv_ch, in = w->in_dim;
    const float *W = t->w;
    HAE_TRY(hae_tr_linear_fwd(be, t->mm, w->h1, W + w->wqkv, N, t->d, in, w->proj, false));
    HAE_TRY(cols_get(t, t->c1, w->proj, N, in, 0, C));
    HAE_TRY(hae_tr_conv_fwd(be, t->c1, W + w->conv_w, t->B, t->T, C, t->conv_W, true, w->cpre, w->cout));
    HAE_TRY(qk_forward(t, w, N, 0, w->qm));
    HAE_TRY(qk_forward(t, w, N, t->LH * K, w->km));
    HAE_TRY(cols_get(t, w->vv, w->cout, N, C, 2 * t->LH * K, HV * V));
    int64_t col = C;
    const hae_decay dec = w->lk.decay;
    if (dec == HAE_DECAY_CHANNEL) {
        HAE_TRY(cols_get(t, t->c1, w->proj, N, in, col, V));
        HAE_TRY(hae_tr_linear_fwd(be, t->mm, t->c1, W + w->wf2, N, V, HV * K, w->graw, false));
    } else if (dec == HAE_DECAY_HEAD) {
        HAE_TRY(cols_get(t, w->graw, w->proj, N, in, col, HV));
    }
    if (dec == HAE_DECAY_CHANNEL || dec == HAE_DECAY_HEAD)
        HAE_TRY(hae_tr_decay_fwd(be, w->graw, W + w->A_log, W + w->dt_bias, N, HV, dec == HAE_DECAY_CHANNEL ? K : 1,
                                 gate_fn(t), t->cfg.model.linear_attn.lower_bound, w->g));
    if (dec == HAE_DECAY_FIXED) HAE_TRY(hae_tr_fixed_decay_fwd(be, W + w->A_log, N, HV, w->g));
    col += w->f_dim;
    if (w->lk.delta) {
        HAE_TRY(cols_get(t, w->beta, w->proj, N, in, col, HV));
        HAE_TRY(hae_tr_map_fwd(be, HAE_TR_SIGMOID, w->beta, N * HV, w->beta));
    }
    col += w->b_dim;
    HAE_TRY(cols_get(t, t->c1, w->proj, N, in, col, V));
    HAE_TRY(hae_tr_linear_fwd(be, t->mm, t->c1, W + w->wg2, N, V, HV * V, w->gout, false));
    const hae_tr_delta_shape s = delta_shape(t, w);
    HAE_TRY(hae_tr_delta_fwd(be, &s, w->qm, w->km, w->vv, dec == HAE_DECAY_NONE ? NULL : w->g,
                             w->lk.delta ? w->beta : NULL, w->S, w->o));
    HAE_TRY(hae_tr_gated_norm_fwd(be, w->o, w->gout, W + w->o_norm, N * HV, V, t->eps, w->y));
    HAE_TRY(copy(t, w->xm, w->x, N * t->d));
    return hae_tr_linear_fwd(be, t->mm, w->y, W + w->wo, N, HV * V, t->d, w->xm, true);
}

/* From dx (the gradient of xm), the mixer's weight gradients and the gradient of h1, into t->dh. */
static hae_status linear_backward(hae_trainer *t, tlayer *w, int64_t N) {
    hae_backend *be = t->be;
    const int64_t HV = t->LHV, K = t->LK, V = t->LV, C = t->conv_ch, in = w->in_dim;
    const float *W = t->w;
    float *G = t->g;
    const hae_decay dec = w->lk.decay;
    HAE_TRY(hae_tr_linear_bwd(be, t->mm, w->y, W + w->wo, t->dx, N, HV * V, t->d, t->ly, false, G + w->wo));
    HAE_TRY(hae_tr_gated_norm_bwd(be, w->o, w->gout, W + w->o_norm, t->ly, N * HV, V, t->eps, t->lo, t->lgo,
                                  G + w->o_norm));
    const hae_tr_delta_shape s = delta_shape(t, w);
    HAE_TRY(hae_tr_delta_bwd(be, &s, w->qm, w->km, w->vv, dec == HAE_DECAY_NONE ? NULL : w->g,
                             w->lk.delta ? w->beta : NULL, w->S, t->lo, t->lq, t->lk, t->lv,
                             dec == HAE_DECAY_NONE ? NULL : t->lg, w->lk.delta ? t->lb : NULL));
    float *dproj = t->lproj;
    HAE_TRY(hae_backend_zero(be, dproj, sizeof(float) * (size_t)(N * in)));
    int64_t col = C + w->f_dim + w->b_dim; /* the output gate's input g1 */
    HAE_TRY(cols_get(t, t->c1, w->proj, N, in, col, V));
    HAE_TRY(hae_tr_linear_bwd(be, t->mm, t->c1, W + w->wg2, t->lgo, N, V, HV * V, t->c2, false, G + w->wg2));
    HAE_TRY(cols_put(t, dproj, in, col, t->c2, N, V, true));
    if (w->lk.delta) { /* beta = sigmoid(b) */
        HAE_TRY(hae_tr_map_bwd(be, HAE_TR_SIGMOID, w->beta, t->lb, N * HV, t->c1));
        HAE_TRY(cols_put(t, dproj, in, C + w->f_dim, t->c1, N, HV, false));
    }
    if (dec == HAE_DECAY_CHANNEL || dec == HAE_DECAY_HEAD) {
        const int64_t n = dec == HAE_DECAY_CHANNEL ? K : 1;
        float *draw = t->lcin; /* free until the conv's backward */
        HAE_TRY(hae_tr_decay_bwd(be, w->graw, W + w->A_log, W + w->dt_bias, t->lg, N, HV, n, gate_fn(t),
                                 t->cfg.model.linear_attn.lower_bound, draw, G + w->A_log, G + w->dt_bias));
        if (dec == HAE_DECAY_CHANNEL) { /* graw = f1 Wf2^T */
            HAE_TRY(cols_get(t, t->c1, w->proj, N, in, C, V));
            HAE_TRY(hae_tr_linear_bwd(be, t->mm, t->c1, W + w->wf2, draw, N, V, HV * K, t->c2, false, G + w->wf2));
            HAE_TRY(cols_put(t, dproj, in, C, t->c2, N, V, true));
        } else {
            HAE_TRY(cols_put(t, dproj, in, C, draw, N, HV, true));
        }
    }
    if (dec == HAE_DECAY_FIXED) HAE_TRY(hae_tr_fixed_decay_bwd(be, w->g, t->lg, N, HV, G + w->A_log));
    HAE_TRY(qk_backward(t, w, N, 0, t->lq));
    HAE_TRY(qk_backward(t, w, N, t->LH * K, t->lk));
    HAE_TRY(cols_put(t, t->lcout, C, 2 * t->LH * K, t->lv, N, HV * V, false));
    HAE_TRY(cols_get(t, t->c1, w->proj, N, in, 0, C));
    HAE_TRY(hae_tr_conv_bwd(be, t->c1, W + w->conv_w, w->cpre, t->lcout, t->B, t->T, C, t->conv_W, true, t->lcin,
                            G + w->conv_w));
    HAE_TRY(cols_put(t, dproj, in, 0, t->lcin, N, C, true));
    return hae_tr_linear_bwd(be, t->mm, w->h1, W + w->wqkv, dproj, N, t->d, in, t->dh, false, G + w->wqkv);
}

/* ---------------------------------------------------------------- mla attention layers */

/* mla's attention rows from h1, unabsorbed (engine/model.c runs the same products absorbed): with
 * [q | latent c | k_rope] = h1 [Wq | Wkv_a]^T and [k_nope_h | v_h] = kv_b(rmsnorm(c)), head h's query is q_h =
 * [q_nope_h | q_rope_h], its key [k_nope_h | k_rope] (the one RoPE key copied to every head) and its value v_h:
 * w->qkv [N, 2 Hq Dh + Hq Dv] before RoPE. */
static hae_status mla_forward(hae_trainer *t, tlayer *w, int64_t N) {
    hae_backend *be = t->be;
    const int64_t H = t->Hq, n = t->nope, r = t->rdim, L = t->lora, vd = t->Dv, Dk = t->Dh, qd = H * Dk;
    const int64_t PQ = qd + L + r, KV = H * (n + vd), ld = t->qkv_dim;
    HAE_TRY(hae_tr_linear_fwd(be, t->mm, w->h1, t->w + w->wqkv, N, t->d, PQ, w->proj, false));
    HAE_TRY(cols_get(t, w->lat, w->proj, N, PQ, qd, L));
    HAE_TRY(hae_tr_rmsnorm_fwd(be, w->lat, t->w + w->kv_norm, N, L, t->eps, w->latn, w->lrs));
    HAE_TRY(hae_tr_linear_fwd(be, t->mm, w->latn, t->w + w->wkvb, N, L, KV, w->kvb, false));
    HAE_TRY(hae_tr_copy_cols(be, &(hae_tr_cols){.dst = w->qkv, .src = w->proj, .N = N, .n = qd, .ld_dst = ld,
                                                 .ld_src = PQ}));
    for (int64_t h = 0; h < H; h++) {
        hae_tr_cols k = {.dst = w->qkv, .src = w->kvb, .N = N, .n = n, .ld_dst = ld, .dst_off = qd + h * Dk,
                         .ld_src = KV, .src_off = h * (n + vd)};
        HAE_TRY(hae_tr_copy_cols(be, &k));
        k.src = w->proj, k.n = r, k.dst_off += n, k.ld_src = PQ, k.src_off = qd + L;
        if (r) HAE_TRY(hae_tr_copy_cols(be, &k));
        k.src = w->kvb, k.n = vd, k.dst_off = 2 * qd + h * vd, k.ld_src = KV, k.src_off = h * (n + vd) + n;
        HAE_TRY(hae_tr_copy_cols(be, &k));
    }
    return HAE_OK;
}

/* From the attention rows' gradient t->db (RoPE undone), the weights' gradients and h1's into t->dh: the heads'
 * k_rope gradients summed into the one RoPE key's. */
static hae_status mla_backward(hae_trainer *t, tlayer *w, int64_t N) {
    hae_backend *be = t->be;
    const int64_t H = t->Hq, n = t->nope, r = t->rdim, L = t->lora, vd = t->Dv, Dk = t->Dh, qd = H * Dk;
    const int64_t PQ = qd + L + r, KV = H * (n + vd), ld = t->qkv_dim;
    float *G = t->g;
    HAE_TRY(hae_backend_zero(be, t->mproj, sizeof(float) * (size_t)(N * PQ)));
    HAE_TRY(hae_tr_copy_cols(be, &(hae_tr_cols){.dst = t->mproj, .src = t->db, .N = N, .n = qd, .ld_dst = PQ,
                                                 .ld_src = ld}));
    for (int64_t h = 0; h < H; h++) {
        hae_tr_cols k = {.dst = t->mkvb, .src = t->db, .N = N, .n = n, .ld_dst = KV, .dst_off = h * (n + vd),
                         .ld_src = ld, .src_off = qd + h * Dk};
        HAE_TRY(hae_tr_copy_cols(be, &k));
        k.dst = t->mproj, k.n = r, k.ld_dst = PQ, k.dst_off = qd + L, k.src_off += n, k.add = true;
        if (r) HAE_TRY(hae_tr_copy_cols(be, &k));
        k.dst = t->mkvb, k.n = vd, k.ld_dst = KV, k.dst_off = h * (n + vd) + n, k.src_off = 2 * qd + h * vd, k.add = false;
        HAE_TRY(hae_tr_copy_cols(be, &k));
    }
    HAE_TRY(hae_tr_linear_bwd(be, t->mm, w->latn, t->w + w->wkvb, t->mkvb, N, L, KV, t->mlat, false, G + w->wkvb));
    HAE_TRY(hae_backend_zero(be, t->mlatx, sizeof(float) * (size_t)(N * L)));
    HAE_TRY(hae_tr_rmsnorm_bwd(be, w->lat, t->w + w->kv_norm, w->lrs, t->mlat, N, L, t->mlatx, G + w->kv_norm));
    HAE_TRY(cols_put(t, t->mproj, PQ, qd, t->mlatx, N, L, false));
    return hae_tr_linear_bwd(be, t->mm, w->h1, t->w + w->wqkv, t->mproj, N, t->d, PQ, t->dh, false, G + w->wqkv);
}

/* ---------------------------------------------------------------- the model */

/* The forward up to the scored rows' logits, into t->logits. */
static hae_status forward(hae_trainer *t, const hae_train_batch *b) {
    HAE_TRY(check_batch(t, b));
    hae_backend *be = t->be;
    t->B = b->B, t->T = b->T, t->n = b->n;
    const int64_t N = b->B * b->T, d = t->d, qd = t->Hq * t->Dv;
    HAE_TRY(hae_backend_upload(be, t->ids, b->tokens, sizeof(int32_t) * (size_t)N));
    HAE_TRY(hae_backend_upload(be, t->pos, b->pos, sizeof(int64_t) * (size_t)b->n));
    HAE_TRY(hae_backend_upload(be, t->target, b->target, sizeof(int32_t) * (size_t)b->n));
    HAE_TRY(hae_tr_embedding_fwd(be, t->ids, N, t->w + t->embed, d, t->layers[0].x));
    for (int64_t l = 0; l < t->L; l++) {
        tlayer *w = &t->layers[l];
        float *next = l + 1 < t->L ? t->layers[l + 1].x : t->xL;
        HAE_TRY(hae_tr_rmsnorm_fwd(be, w->x, t->w + w->attn_norm, N, d, t->eps, w->h1, w->r1));
        if (w->linear) {
            HAE_TRY(linear_forward(t, w, N));
        } else {
            if (w->dsa) HAE_TRY(index_forward(t, w, N));
            if (t->mla) HAE_TRY(mla_forward(t, w, N));
            else HAE_TRY(hae_tr_linear_fwd(be, t->mm, w->h1, t->w + w->wqkv, N, d, t->qkv_dim, w->qkv, false));
            HAE_TRY(rope_qk(t, w->qkv, false));
            const hae_tr_attn_shape s = attn_shape(t, w);
            HAE_TRY(hae_tr_attention_fwd(be, &s, w->qkv, w->P, w->att));
            HAE_TRY(copy(t, w->xm, w->x, N * d));
            HAE_TRY(hae_tr_linear_fwd(be, t->mm, w->att, t->w + w->wo, N, qd, d, w->xm, true));
        }
        HAE_TRY(hae_tr_rmsnorm_fwd(be, w->xm, t->w + w->mlp_norm, N, d, t->eps, w->h2, w->r2));
        HAE_TRY(hae_tr_linear_fwd(be, t->mm, w->h2, t->w + w->wgu, N, d, 2 * t->F, w->gu, false));
        HAE_TRY(hae_tr_swiglu_fwd(be, w->gu, N, t->F, w->act));
        HAE_TRY(copy(t, next, w->xm, N * d));
        HAE_TRY(hae_tr_linear_fwd(be, t->mm, w->act, t->w + w->wdown, N, t->F, d, next, true));
    }
    HAE_TRY(hae_tr_gather_rows(be, t->xL, t->pos, b->n, d, t->xs));
    HAE_TRY(hae_tr_rmsnorm_fwd(be, t->xs, t->w + t->final_norm, b->n, d, t->eps, t->hs, t->rs));
    return hae_tr_linear_fwd(be, t->mm, t->hs, t->w + t->lm_head, b->n, d, t->V, t->logits, false);
}

/* The loss over the scored rows (and dlogits into t->logits with scale > 0); correct (host) from the device's. */
static hae_status xent(hae_trainer *t, float scale, double *loss, uint8_t *correct) {
    double total = 0.0;
    HAE_TRY(hae_tr_xent(t->be, t->logits, t->target, t->n, t->V, scale, scale > 0.0f ? t->logits : NULL,
                        correct ? t->correct : NULL, &total));
    if (loss) *loss = total / (double)t->n;
    return correct ? hae_backend_download(t->be, correct, t->correct, (size_t)t->n) : HAE_OK;
}

hae_status hae_trainer_forward(hae_trainer *t, const hae_train_batch *b, float *logits, double *loss, uint8_t *correct) {
    HAE_TRY(forward(t, b));
    if (logits) HAE_TRY(hae_backend_download(t->be, logits, t->logits, sizeof(float) * (size_t)(b->n * t->V)));
    return loss || correct ? xent(t, 0.0f, loss, correct) : HAE_OK;
}

hae_status hae_trainer_backward(hae_trainer *t, const hae_train_batch *b, double *loss, uint8_t *correct) {
    HAE_TRY(forward(t, b));
    hae_backend *be = t->be;
    const int64_t N = t->B * t->T, d = t->d, qd = t->Hq * t->Dv, n = t->n;
    HAE_TRY(xent(t, 1.0f / (float)n, loss, correct));
    HAE_TRY(hae_backend_zero(be, t->g, sizeof(float) * (size_t)t->n_elems));
    t->index_kl = 0;
    /* LM head and final norm over the scored rows, their gradient scattered into the residual's */
    HAE_TRY(hae_tr_linear_bwd(be, t->mm, t->hs, t->w + t->lm_head, t->logits, n, d, t->V, t->dh, false, t->g + t->lm_head));
    HAE_TRY(hae_backend_zero(be, t->da, sizeof(float) * (size_t)(n * d)));
    HAE_TRY(hae_tr_rmsnorm_bwd(be, t->xs, t->w + t->final_norm, t->rs, t->dh, n, d, t->da, t->g + t->final_norm));
    HAE_TRY(hae_backend_zero(be, t->dx, sizeof(float) * (size_t)(N * d)));
    HAE_TRY(hae_tr_scatter_add_rows(be, t->da, t->pos, n, d, t->dx));
    for (int64_t l = t->L - 1; l >= 0; l--) {
        tlayer *w = &t->layers[l];
        /* x_out = xm + Wdown swiglu(Wgu norm2(xm)) */
        HAE_TRY(hae_tr_linear_bwd(be, t->mm, w->act, t->w + w->wdown, t->dx, N, t->F, d, t->da, false, t->g + w->wdown));
        HAE_TRY(hae_tr_swiglu_bwd(be, w->gu, t->da, N, t->F, t->db));
        HAE_TRY(hae_tr_linear_bwd(be, t->mm, w->h2, t->w + w->wgu, t->db, N, d, 2 * t->F, t->dh, false, t->g + w->wgu));
        HAE_TRY(hae_tr_rmsnorm_bwd(be, w->xm, t->w + w->mlp_norm, w->r2, t->dh, N, d, t->dx, t->g + w->mlp_norm));
        /* xm = x + Mixer(norm1(x)) */
        if (w->linear) {
            HAE_TRY(linear_backward(t, w, N));
        } else {
            HAE_TRY(hae_tr_linear_bwd(be, t->mm, w->att, t->w + w->wo, t->dx, N, qd, d, t->da, false, t->g + w->wo));
            const hae_tr_attn_shape s = attn_shape(t, w);
            HAE_TRY(hae_tr_attention_bwd(be, &s, w->qkv, w->P, w->att, t->da, t->db));
            if (w->dsa) HAE_TRY(index_backward(t, w, N));
            HAE_TRY(rope_qk(t, t->db, true));
            if (t->mla) HAE_TRY(mla_backward(t, w, N));
            else HAE_TRY(hae_tr_linear_bwd(be, t->mm, w->h1, t->w + w->wqkv, t->db, N, d, t->qkv_dim, t->dh, false,
                                           t->g + w->wqkv));
        }
        HAE_TRY(hae_tr_rmsnorm_bwd(be, w->x, t->w + w->attn_norm, w->r1, t->dh, N, d, t->dx, t->g + w->attn_norm));
    }
    return hae_tr_embedding_bwd(be, t->ids, N, t->dx, d, t->g + t->embed);
}

/* Query-key pairs a query row of a sequence of T tokens attends to, summed over the rows: t + 1 each, at most
 * `cap` (a window or a top-k; 0: no cap). */
static double pairs(int64_t T, int64_t cap) {
    if (cap <= 0 || cap >= T) return 0.5 * (double)T * (double)(T + 1);
    return 0.5 * (double)cap * (double)(cap + 1) + (double)(T - cap) * (double)cap;
}

double hae_trainer_flops(const hae_trainer *t) {
    /* multiply-adds of the forward: most run three times (forward, then the input's and the weight's gradients;
     * the attention and recurrence cores' backward does twice their forward's products too), the indexer's
     * projections twice (no input gradient) */
    const double B = (double)t->B, N = (double)(t->B * t->T), d = (double)t->d, F = (double)t->F;
    double thrice = (double)t->n * d * (double)t->V, twice = 0.0;
    for (int64_t l = 0; l < t->L; l++) {
        const tlayer *w = &t->layers[l];
        thrice += N * 3.0 * d * F; /* gate/up d -> 2 F, down F -> d */
        if (w->linear) {
            const double HV = (double)t->LHV, K = (double)t->LK, V = (double)t->LV;
            thrice += N * (d * (double)w->in_dim + (w->wf2 >= 0 ? V * HV * K : 0.0) + V * HV * V + HV * V * d);
            thrice += N * 3.0 * HV * K * V; /* the state read (S'^T k), written (k u^T) and read out (S^T q) */
        } else {
            const int64_t cap = w->dsa && !index_dense(t) ? t->topk : w->window;
            const double H = (double)t->Hq, Dk = (double)t->Dh, Dv = (double)t->Dv;
            if (t->mla) /* [q | latent | k rope], then kv_b of the normed latent */
                thrice += N * (d * (H * Dk + (double)(t->lora + t->rdim)) + (double)t->lora * H * ((double)t->nope + Dv));
            else
                thrice += N * d * (double)t->qkv_dim;
            thrice += N * H * Dv * d;                               /* o_proj */
            thrice += B * pairs(t->T, cap) * H * (Dk + Dv);         /* q . k and P v */
        }
        if (w->dsa) {
            twice += N * d * (double)(t->HI * t->DI + t->DI + t->HI);
            thrice += B * pairs(t->T, 0) * (double)(t->HI * t->DI); /* the scores of every earlier token */
        }
    }
    return 2.0 * (3.0 * thrice + 2.0 * twice);
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
 * bias corrections; the gradients enter scaled by clip / norm when their norm exceeds clip. The global norm is
 * the sum, in parameter order, of each parameter's squared norm. */
hae_status hae_trainer_step(hae_trainer *t, float lr, double *grad_norm) {
    if (!(lr >= 0.0f) || !isfinite(lr)) return hae_error(HAE_ERR_INVALID, "train step: learning rate %g", (double)lr);
    const bool only_indexers = t->has_dsa && index_dense(t); /* the rest stays frozen, moments included */
    for (int p = 0; p < t->n_params; p++)
        HAE_TRY(hae_tr_sumsq(t->be, t->g + t->params[p].off, t->params[p].n, t->sumsq + p));
    double *ssp = malloc(sizeof(double) * (size_t)t->n_params);
    if (!ssp) return hae_error(HAE_ERR_OOM, "train step: %d doubles of host memory", t->n_params);
    hae_status st = hae_backend_download(t->be, ssp, t->sumsq, sizeof(double) * (size_t)t->n_params);
    double ss = 0.0;
    for (int p = 0; p < t->n_params; p++)
        if (!only_indexers || t->params[p].indexer) ss += ssp[p];
    free(ssp);
    HAE_TRY(st);
    const double norm = sqrt(ss);
    if (grad_norm) *grad_norm = norm;
    if (!isfinite(norm))
        return hae_error(HAE_ERR_INVALID, "train step %lld: the gradients' norm is %g (the loss diverged; lower train.lr "
                                          "or set train.clip)", (long long)t->step + 1, norm);
    const float clip = t->cfg.train.clip, b1 = t->cfg.train.beta1, b2 = t->cfg.train.beta2;
    t->step++;
    hae_tr_adamw_args a = {.gscale = clip > 0.0f && norm > clip ? (float)(clip / norm) : 1.0f, .b1 = b1, .b2 = b2,
                           .eps = t->cfg.train.eps, .step_size = lr / (float)(1.0 - pow(b1, (double)t->step)),
                           .c2 = (float)sqrt(1.0 - pow(b2, (double)t->step))};
    const float decay = 1.0f - lr * t->cfg.train.weight_decay;
    for (int p = 0; p < t->n_params; p++) {
        const tparam *pr = &t->params[p];
        if (only_indexers && !pr->indexer) continue;
        a.decay = pr->decay ? decay : 1.0f;
        HAE_TRY(hae_tr_adamw(t->be, &a, t->w + pr->off, t->g + pr->off, t->m + pr->off, t->v + pr->off, pr->n));
    }
    return HAE_OK;
}

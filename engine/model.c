/* The decoder stack (DESIGN.md §1):
 *     embedding -> [ x += Mixer(RMSNorm(x)); x += SwiGLU(RMSNorm(x)) ] x n_layers -> RMSNorm -> LM head
 * Weights use Hugging Face Llama names and layouts ([out, in]); q/k/v and gate/up are stored fused
 * (one GEMM each) and saved as their separate Llama tensors. The residual stream x is f32; GEMM
 * operands, weights and the KV cache are runtime.dtype; the residual add is the accumulate of the
 * output projections' GEMM.
 *
 * A linear layer (kda and its family, DESIGN.md §1.1) reads x through one fused input projection
 *     [q (H K) | k (H K) | v (HV V) | f (decay input) | b (HV logits, delta kinds) | g1 (V)]
 * then: causal short conv + SiLU over q, k, v; per-channel gates f2(f); output gate g2(g1);
 * hae_linear_attn; the gated per-head RMSNorm; o_proj (accumulating into x). Names follow
 * flash-linear-attention's layers (attn.q_proj, attn.f_proj.0, attn.A_log, ...).
 *
 * Attention layers of the mla form (DeepSeek-V2 names) cache one latent per token and run absorbed:
 * see mla_project. dsa layers add the FP8 lightning indexer (dsa_select) before sparse attention. */
#include "internal.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    hae_layer_kind kind;
    bool linear;          /* a linear-family layer */
    hae_linear_kind lk;   /* its switches */
    hae_tensor attn_norm; /* [d] f32 */
    hae_tensor wqkv;      /* gqa: [(Hq + 2 Hkv) Dh, d]; mla: [Hq (nope + rope) + lora + rope, d]; linear: the
                             fused input projection [in_dim, d] */
    hae_tensor wo;        /* [d, Hq Dh], [d, Hq vd] (mla) or [d, HV V] */
    hae_tensor mlp_norm;  /* [d] f32 */
    hae_tensor wgu;       /* [2F, d]: gate rows then up rows */
    hae_tensor wdown;     /* [d, F] */
    int64_t window;       /* swa window; 0 for full */
    /* mla attention layers */
    hae_tensor wkvb;      /* [Hq (nope + vd), lora]: kv_b_proj, the per-head up-projections of the latent */
    hae_tensor kva_norm;  /* [lora] f32 */
    hae_tensor wuk_t;     /* [Hq lora, nope]: each head's key up-projection transposed (absorbed into q) */
    /* linear layers */
    int64_t in_dim, f_dim, b_dim; /* fused projection width; columns of f and of b */
    hae_tensor conv_w;    /* [2 H K + HV V, W] f32 */
    hae_tensor wf2;       /* [HV K, V] (channel decay) */
    hae_tensor wg2;       /* [HV V, V] */
    hae_tensor A_log;     /* [HV] f32 */
    hae_tensor dt_bias;   /* [HV K] or [HV] f32 */
    hae_tensor o_norm;    /* [V] f32 */
    hae_tensor conv_state; /* [B, W - 1, 2 H K + HV V] f32 */
    hae_tensor state;     /* [B, HV, K, V] f32 */
    /* dsa layers: the indexer's weights (learned form) and its FP8 key cache */
    hae_tensor wq_i;      /* [H_I D_I, d] */
    hae_tensor wk_i;      /* [D_I, d] */
    hae_tensor k_norm_w, k_norm_b; /* [D_I] f32: LayerNorm of the indexer key */
    hae_tensor w_proj;    /* [H_I, d]: per-head weights */
    hae_index_cache icache;
} layer_weights;

/* What an attention layer's attention will read, from attention_in to attention_out. */
typedef struct {
    hae_tensor q, kc, vc;         /* dense attention */
    hae_sparse_attention_args sa; /* dsa layers */
    hae_slot_cache *slots;        /* the layer's slots when they hold some of the (micro-)batch, else NULL */
} attn_pending;

/* One named parameter as saved: a view into a weight tensor, and how it is initialised. */
typedef struct {
    char name[96];
    hae_tensor t;
    hae_init_kind init;
    float std;
} param;

struct hae_model {
    hae_config cfg;
    hae_backend *be;
    hae_model_options opt;
    hae_dtype dt;
    int64_t B, V, d, L, Hq, Hkv, Dh, F, qkv_dim, chunk, ctx_max;
    int rot_dims;
    float scale;
    /* attention layers as the ops see them: q/k dim Dk, v dim Dv (gqa: both Dh; mla: lora + rope and
     * lora); mla's latent rank, per-head nope/rope/value dims */
    int64_t Dk, Dv, lora, nope, rdim, vd;
    bool mla;
    /* linear layers: q/k heads, value heads, head dims, conv width and channels, widest projection */
    int64_t LH, LHV, LK, LV, conv_W, conv_ch, proj_dim, mix_dim;
    hae_linear_dims ld; /* the same linear-layer shapes, as hae_linear_in_dim takes them */
    bool has_linear;
    size_t la_workspace;
    /* dsa layers: indexer heads and dim, top-k, RoPE dims, pages of the key cache */
    int64_t HI, DI, topk, irope, page, pages_per_seq;
    int64_t index_T; /* tokens per sequence whose indexer logits are computed at once (bounds ilogits) */
    bool has_dsa, derived;

    void *weight_mem;
    size_t weight_bytes;
    hae_tensor embed, final_norm, lm_head;
    layer_weights *layers;
    param *params;
    int n_params;
    int64_t n_param_elems;

    /* Per-sequence tensors (activations, states, block tables): micro_view narrows each one to a micro-batch's
     * sequences, so one added here must be added there too. */
    void *act_mem;
    size_t act_bytes;
    hae_tensor ids, x, h, qkv, att, gu, act, hlast, logits;
    hae_tensor conv_out, graw, gout, workspace; /* linear layers */
    hae_tensor ckv, ov; /* mla: the latent before its norm [N, lora] f32; heads' values [N, Hq vd] */
    /* dsa layers: indexer queries, keys, head weights, their FP8 forms, logits, selections */
    hae_tensor qi, ki, wi, q8, qs, k8, ks, ilogits, ilens, idx, seq_lens, sub_lens;
    hae_tensor pq, pk, ones; /* derived indexer: the fixed maps from the layer's q and k; unit head weights */
    int32_t *ids_host; /* [B * chunk] staging for a chunk's tokens */
    int32_t *lens_host; /* [B * chunk] staging for the indexer's row lengths */
    void *index_mem;   /* the indexer key caches and block tables */
    size_t index_bytes;

    FILE *trace;        /* hae_model_trace_selections: the decode steps' selections, or NULL */
    int32_t *trace_buf; /* [B, topk] their host copy */

    hae_kv_cache *kv;
    hae_slot_cache **slots; /* [L]: the GPU token slots of dsa layers whose K/V are in the host tier, else NULL */
    int64_t dsa_gpu;        /* dsa K/V in the host tier: how many sequences (the first) keep theirs on the GPU */
    void *stage_mem;        /* the host-tier layers' shared staging (one layer's K/V): dsa chunks past the slots,
                               full/swa layers at every forward */
    size_t stage_bytes;
    int n_unused;               /* tensors of the last loaded file the model did not read */
    char first_unused[sizeof(((hae_st_tensor *)0)->name)];
    void *state_mem; /* recurrent and conv states of the linear layers */
    size_t state_bytes;
    int64_t pos;
    attn_pending pend;
    /* Decode steps in micro-batches (runtime.micro_batches): mb[i] is this model narrowed to the i-th one's
     * sequences, b0 the first of them within the model's batch, slot_part the slot caches' part its host-tier
     * sequences fetch under (-1: it has none). */
    hae_model *mb[HAE_MICRO_MAX];
    int n_mb;
    int64_t b0;
    int slot_part;
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

static void add_param(hae_model *m, const char *name, hae_tensor t, hae_init_kind init, float std) {
    param *p = &m->params[m->n_params++];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->t = t;
    p->init = init;
    p->std = std;
    m->n_param_elems += hae_tensor_numel(&t);
}

hae_linear_dims hae_linear_dims_of(const hae_config *cfg) {
    hae_linear_dims d = {.H = cfg->model.linear_attn.num_heads, .K = cfg->model.linear_attn.head_dim,
                         .W = cfg->model.linear_attn.conv_size};
    d.HV = cfg->model.linear_attn.num_v_heads > 0 ? cfg->model.linear_attn.num_v_heads : d.H;
    d.V = (int64_t)llround((double)d.K * (double)cfg->model.linear_attn.expand_v);
    d.C = 2 * d.H * d.K + d.HV * d.V;
    return d;
}

int64_t hae_linear_in_dim(const hae_linear_dims *d, const hae_linear_kind *lk, int64_t *f_dim, int64_t *b_dim) {
    *f_dim = lk->decay == HAE_DECAY_CHANNEL ? d->V : lk->decay == HAE_DECAY_HEAD ? d->HV : 0;
    *b_dim = lk->delta ? d->HV : 0;
    return d->C + *f_dim + *b_dim + d->V;
}

/* Parameters a layer can have at most (a linear layer with every part, plus the MLP). */
#define PARAMS_PER_LAYER 24
/* The indexer's logits of a chunk ([B, T, context] f32) are made a slice of tokens at a time so that
 * their buffer stays under this many bytes whatever the context (hae_model_options can lower it). */
#define INDEX_LOGITS_BYTES ((size_t)256 << 20)

/* The weights of linear layer l, named as flash-linear-attention's layers name them. */
static void layout_linear(hae_model *m, carver *c, int64_t l, float std, float std_out) {
    layer_weights *w = &m->layers[l];
    const int64_t H = m->LH, HV = m->LHV, K = m->LK, V = m->LV, W = m->conv_W;
    const hae_decay dec = w->lk.decay;
    w->in_dim = hae_linear_in_dim(&m->ld, &w->lk, &w->f_dim, &w->b_dim);
    w->wqkv = carve2(c, m->dt, w->in_dim, m->d);
    w->conv_w = carve2(c, HAE_F32, m->conv_ch, W);
    if (dec == HAE_DECAY_CHANNEL) w->wf2 = carve2(c, m->dt, HV * K, V);
    w->wg2 = carve2(c, m->dt, HV * V, V);
    if (dec != HAE_DECAY_NONE) w->A_log = carve1(c, HAE_F32, HV);
    if (dec == HAE_DECAY_CHANNEL || dec == HAE_DECAY_HEAD) w->dt_bias = carve1(c, HAE_F32, dec == HAE_DECAY_CHANNEL ? HV * K : HV);
    w->o_norm = carve1(c, HAE_F32, V);
    w->wo = carve2(c, m->dt, m->d, HV * V);
    char name[96];
    int64_t col = 0;
#define P(suffix, t, init, s)                                                                      \
    snprintf(name, sizeof name, "model.layers.%lld.attn.%s", (long long)l, suffix);                \
    add_param(m, name, t, init, s)
#define PROJ(suffix, n)                                                                            \
    P(suffix, hae_tensor_narrow(w->wqkv, 0, col, n), INIT_NORMAL, std);                           \
    col += n
    PROJ("q_proj.weight", H * K);
    PROJ("k_proj.weight", H * K);
    PROJ("v_proj.weight", HV * V);
    if (dec == HAE_DECAY_CHANNEL) {
        PROJ("f_proj.0.weight", V);
    } else if (dec == HAE_DECAY_HEAD) {
        PROJ("a_proj.weight", HV);
    }
    if (w->lk.delta) {
        PROJ("b_proj.weight", HV);
    }
    PROJ("g_proj.0.weight", V);
#undef PROJ
    /* The conv weights are saved [C, 1, W], as PyTorch's depthwise Conv1d holds them. */
    const int64_t ch[3] = {H * K, H * K, HV * V};
    const char *const conv_names[3] = {"q_conv1d.weight", "k_conv1d.weight", "v_conv1d.weight"};
    float bound = 1.0f / sqrtf((float)W);
    for (int i = 0, row = 0; i < 3; row += (int)ch[i], i++) {
        hae_tensor cw = hae_tensor_3d((float *)w->conv_w.data + (int64_t)row * W, HAE_F32, c->dev, ch[i], 1, W);
        P(conv_names[i], cw, INIT_UNIFORM, bound);
    }
    if (dec == HAE_DECAY_CHANNEL) {
        P("f_proj.1.weight", w->wf2, INIT_NORMAL, std);
    }
    P("g_proj.1.weight", w->wg2, INIT_NORMAL, std);
    if (dec == HAE_DECAY_FIXED) {
        P("A_log", w->A_log, INIT_RETNET, 0.0f);
    } else if (dec != HAE_DECAY_NONE) {
        P("A_log", w->A_log, INIT_A_LOG, 0.0f);
        P("dt_bias", w->dt_bias, INIT_DT_BIAS, 0.0f);
    }
    P("o_norm.weight", w->o_norm, INIT_ONES, 0.0f);
    P("o_proj.weight", w->wo, INIT_NORMAL, std_out);
#undef P
}

/* The derived indexer's fixed maps (not parameters: built from the shapes, never saved). Query head
 * h's indexer query is Pq_h q_h and the shared key is sum_g Pk_g k_g, so q^I_h . k^I = q_h^T Pq_h^T Pk_g k_g
 * over kv heads g (mla: the one latent key, the absorbed queries). When the kv heads fit in D_I dims,
 * Pk places head g at dims [g Dk, (g + 1) Dk) and
 * Pq_h places q_h at its own kv head's dims: the indexer computes the attention logits exactly. Wider
 * kv heads get seeded Gaussian maps of variance 1 / D_I (Johnson-Lindenstrauss): the same logits
 * approximately, plus cross terms between kv heads of mean zero. */
static void layout_derived(hae_model *m, carver *c) {
    if (!m->has_dsa || !m->derived) return;
    m->ones = carve2(c, HAE_F32, m->B * m->chunk, m->HI);
    m->pq = carve2(c, m->dt, m->HI * m->DI, m->Hq * m->Dk);
    m->pk = carve2(c, m->dt, m->DI, m->Hkv * m->Dk);
}

static float derived_pk(const hae_model *m, int64_t row, int64_t col) {
    if (m->Hkv * m->Dk <= m->DI) return row == col ? 1.0f : 0.0f;
    double u1 = hae_uniform(m->cfg.seed ^ 0xD5A, 1, (uint64_t)row, (uint64_t)col * 2);
    double u2 = hae_uniform(m->cfg.seed ^ 0xD5A, 1, (uint64_t)row, (uint64_t)col * 2 + 1);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2) / sqrt((double)m->DI));
}

/* Pq row h D_I + r, column h' Dk + e: Pk's entry for q head h's kv head, on the block diagonal. */
static float derived_pq(const hae_model *m, int64_t row, int64_t col) {
    const int64_t h = row / m->DI, r = row % m->DI, h2 = col / m->Dk, e = col % m->Dk;
    if (h != h2) return 0.0f;
    return derived_pk(m, r, (h / (m->Hq / m->Hkv)) * m->Dk + e);
}

static void layout_weights(hae_model *m, carver *c) {
    float std = m->cfg.model.initializer_range, std_out = std / sqrtf(2.0f * (float)m->L);
    char name[96];
    m->n_params = 0;
    m->n_param_elems = 0;
    m->embed = carve2(c, m->dt, m->V, m->d);
    add_param(m, "model.embed_tokens.weight", m->embed, INIT_NORMAL, std);
    for (int64_t l = 0; l < m->L; l++) {
        layer_weights *w = &m->layers[l];
        w->kind = m->cfg.model.layers[l];
        w->linear = hae_linear_kind_of(w->kind, &w->lk);
#define P(suffix, t, init, s)                                                                      \
    snprintf(name, sizeof name, "model.layers.%lld.%s", (long long)l, suffix);                      \
    add_param(m, name, t, init, s)
        w->attn_norm = carve1(c, HAE_F32, m->d);
        P("input_layernorm.weight", w->attn_norm, INIT_ONES, 0.0f);
        if (w->linear) {
            layout_linear(m, c, l, std, std_out);
        } else if (m->mla) {
            /* DeepSeek-V2/V3's names, without q compression: q_proj rows are per head [nope | rope],
             * kv_a_proj_with_mqa rows [latent (lora) | rope], kv_b_proj rows per head [k nope | v] */
            const int64_t qd = m->Hq * (m->nope + m->rdim);
            w->wqkv = carve2(c, m->dt, qd + m->lora + m->rdim, m->d);
            w->kva_norm = carve1(c, HAE_F32, m->lora);
            w->wkvb = carve2(c, m->dt, m->Hq * (m->nope + m->vd), m->lora);
            w->wo = carve2(c, m->dt, m->d, m->Hq * m->vd);
            w->wuk_t = carve2(c, m->dt, m->Hq * m->lora, m->nope);
            w->window = w->kind == HAE_LAYER_SWA ? m->cfg.model.swa.window_size : 0;
            P("self_attn.q_proj.weight", hae_tensor_narrow(w->wqkv, 0, 0, qd), INIT_NORMAL, std);
            P("self_attn.kv_a_proj_with_mqa.weight", hae_tensor_narrow(w->wqkv, 0, qd, m->lora + m->rdim), INIT_NORMAL,
              std);
            P("self_attn.kv_a_layernorm.weight", w->kva_norm, INIT_ONES, 0.0f);
            P("self_attn.kv_b_proj.weight", w->wkvb, INIT_NORMAL, std);
            P("self_attn.o_proj.weight", w->wo, INIT_NORMAL, std_out);
        } else {
            int64_t qd = m->Hq * m->Dh, kd = m->Hkv * m->Dh;
            w->wqkv = carve2(c, m->dt, m->qkv_dim, m->d);
            w->wo = carve2(c, m->dt, m->d, m->Hq * m->Dh);
            w->window = w->kind == HAE_LAYER_SWA ? m->cfg.model.swa.window_size : 0;
            P("self_attn.q_proj.weight", hae_tensor_narrow(w->wqkv, 0, 0, qd), INIT_NORMAL, std);
            P("self_attn.k_proj.weight", hae_tensor_narrow(w->wqkv, 0, qd, kd), INIT_NORMAL, std);
            P("self_attn.v_proj.weight", hae_tensor_narrow(w->wqkv, 0, qd + kd, kd), INIT_NORMAL, std);
            P("self_attn.o_proj.weight", w->wo, INIT_NORMAL, std_out);
        }
        if (w->kind == HAE_LAYER_DSA && !m->derived) {
            w->wq_i = carve2(c, m->dt, m->HI * m->DI, m->d);
            w->wk_i = carve2(c, m->dt, m->DI, m->d);
            w->k_norm_w = carve1(c, HAE_F32, m->DI);
            w->k_norm_b = carve1(c, HAE_F32, m->DI);
            w->w_proj = carve2(c, m->dt, m->HI, m->d);
            P("self_attn.indexer.wq.weight", w->wq_i, INIT_NORMAL, std);
            P("self_attn.indexer.wk.weight", w->wk_i, INIT_NORMAL, std);
            P("self_attn.indexer.k_norm.weight", w->k_norm_w, INIT_ONES, 0.0f);
            P("self_attn.indexer.k_norm.bias", w->k_norm_b, INIT_ZEROS, 0.0f);
            P("self_attn.indexer.weights_proj.weight", w->w_proj, INIT_NORMAL, std);
        }
        w->mlp_norm = carve1(c, HAE_F32, m->d);
        w->wgu = carve2(c, m->dt, 2 * m->F, m->d);
        w->wdown = carve2(c, m->dt, m->d, m->F);
        P("post_attention_layernorm.weight", w->mlp_norm, INIT_ONES, 0.0f);
        P("mlp.gate_proj.weight", hae_tensor_narrow(w->wgu, 0, 0, m->F), INIT_NORMAL, std);
        P("mlp.up_proj.weight", hae_tensor_narrow(w->wgu, 0, m->F, m->F), INIT_NORMAL, std);
        P("mlp.down_proj.weight", w->wdown, INIT_NORMAL, std_out);
#undef P
    }
    m->final_norm = carve1(c, HAE_F32, m->d);
    add_param(m, "model.norm.weight", m->final_norm, INIT_ONES, 0.0f);
    if (m->cfg.model.tie_word_embeddings) {
        m->lm_head = m->embed;
    } else {
        m->lm_head = carve2(c, m->dt, m->V, m->d);
        add_param(m, "lm_head.weight", m->lm_head, INIT_NORMAL, std);
    }
    layout_derived(m, c);
}

/* The indexer key cache of every dsa layer (pages of P tokens of 132 bytes for D_I = 128) and the
 * block tables, in one allocation: sequence b owns pages [b pages_per_seq, (b + 1) pages_per_seq). */
static void layout_index(hae_model *m, carver *c) {
    const int64_t row = m->page * (m->DI + 4 * (m->DI / 128));
    for (int64_t l = 0; l < m->L; l++) {
        layer_weights *w = &m->layers[l];
        if (w->kind != HAE_LAYER_DSA) continue;
        w->icache.pages = carve2(c, HAE_FP8_E4M3, m->B * m->pages_per_seq, row);
        w->icache.block_table = carve2(c, HAE_I32, m->B, m->pages_per_seq);
        w->icache.page_size = (int)m->page;
        w->icache.head_dim = (int)m->DI;
    }
}

/* Conv tails and recurrent states of the linear layers, in their own allocation (zeroed whenever
 * a forward starts at position 0). */
static void layout_states(hae_model *m, carver *c) {
    for (int64_t l = 0; l < m->L; l++) {
        layer_weights *w = &m->layers[l];
        if (!w->linear) continue;
        w->conv_state = carve(c, HAE_F32, 3, (int64_t[]){m->B, m->conv_W - 1, m->conv_ch});
        w->state = carve(c, HAE_F32, 4, (int64_t[]){m->B, m->LHV, m->LK, m->LV});
    }
}

static void layout_activations(hae_model *m, carver *c) {
    int64_t N = m->B * m->chunk;
    m->ids = carve1(c, HAE_I32, N);
    m->x = carve2(c, HAE_F32, N, m->d);
    m->h = carve2(c, m->dt, N, m->d);
    m->qkv = carve2(c, m->dt, N, m->proj_dim);
    m->att = carve2(c, m->dt, N, m->mix_dim);
    if (m->mla) {
        m->ckv = carve2(c, HAE_F32, N, m->lora);
        m->ov = carve2(c, m->dt, N, m->Hq * m->vd);
    }
    if (m->has_linear) {
        m->conv_out = carve2(c, m->dt, N, m->conv_ch);
        m->graw = carve2(c, m->dt, N, m->LHV * m->LK);
        m->gout = carve2(c, m->dt, N, m->LHV * m->LV);
        m->workspace = carve1(c, HAE_I32, (int64_t)((m->la_workspace + 3) / 4));
    }
    if (m->has_dsa) {
        m->qi = carve2(c, HAE_F32, N * m->HI, m->DI);
        m->ki = carve2(c, HAE_F32, N, m->DI);
        if (!m->derived) m->wi = carve2(c, HAE_F32, N, m->HI); /* derived: unit weights, m->ones */
        m->q8 = carve2(c, HAE_FP8_E4M3, N * m->HI, m->DI);
        m->qs = carve2(c, HAE_F32, N * m->HI, m->DI / 128);
        m->k8 = carve2(c, HAE_FP8_E4M3, N, m->DI);
        m->ks = carve2(c, HAE_F32, N, m->DI / 128);
        m->ilogits = carve2(c, HAE_F32, m->B * m->index_T, m->ctx_max);
        m->ilens = carve1(c, HAE_I32, N);
        m->idx = carve2(c, HAE_I32, N, m->topk);
        m->seq_lens = carve1(c, HAE_I32, m->B);
        m->sub_lens = carve1(c, HAE_I32, m->B);
    }
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
        if (!hae_layer_kind_built(k))
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
    m->mla = cfg->model.attention.form == HAE_ATTN_MLA;
    m->Dk = m->Dv = m->Dh;
    m->qkv_dim = (m->Hq + 2 * m->Hkv) * m->Dh;
    if (m->mla) {
        /* one latent per token: [normed latent (lora) | RoPE key (rdim)], the order of mla's FP8 token
         * layout; V is the latent, the row's first lora dims */
        m->lora = cfg->model.attention.kv_lora_rank;
        m->nope = cfg->model.attention.qk_nope_head_dim;
        m->rdim = cfg->model.attention.qk_rope_head_dim;
        m->vd = cfg->model.attention.v_head_dim;
        m->Hkv = 1;
        m->Dk = m->rdim + m->lora;
        m->Dv = m->lora;
        m->qkv_dim = m->Hq * m->Dk + m->Dk + m->Hq * m->nope; /* absorbed queries | latent key | q_nope */
    }
    m->ctx_max = cfg->runtime.prefill + cfg->runtime.decode;
    m->chunk = cfg->runtime.prefill_chunk > 0 && cfg->runtime.prefill_chunk < m->ctx_max ? cfg->runtime.prefill_chunk
                                                                                          : m->ctx_max;
    switch (cfg->model.attention.rope) {
    case HAE_ROPE_NONE: m->rot_dims = 0; break;
    case HAE_ROPE_FULL: m->rot_dims = (int)(m->mla ? m->rdim : m->Dh); break;
    case HAE_ROPE_PARTIAL: m->rot_dims = (int)lroundf((float)m->Dh * cfg->model.attention.partial_rotary_factor); break;
    }
    const float qk_dim = (float)(m->mla ? m->nope + m->rdim : m->Dh);
    m->scale = cfg->model.attention.softmax_scale > 0 ? cfg->model.attention.softmax_scale : 1.0f / sqrtf(qk_dim);

    m->ld = hae_linear_dims_of(cfg);
    m->LH = m->ld.H, m->LHV = m->ld.HV, m->LK = m->ld.K, m->LV = m->ld.V, m->conv_W = m->ld.W, m->conv_ch = m->ld.C;
    m->proj_dim = m->qkv_dim;
    m->mix_dim = m->Hq * m->Dv;
    m->has_dsa = false;
    for (int64_t l = 0; l < m->L; l++) m->has_dsa |= cfg->model.layers[l] == HAE_LAYER_DSA;
    m->derived = cfg->model.dsa.derived;
    m->HI = m->derived ? m->Hq : cfg->model.dsa.index_n_heads;
    m->DI = cfg->model.dsa.index_head_dim;
    m->topk = cfg->model.dsa.index_topk;
    m->irope = cfg->model.dsa.index_rope_dim;
    m->page = cfg->model.dsa.page_size;
    m->pages_per_seq = (m->ctx_max + m->page - 1) / m->page;
    const size_t logits_cap = opt && opt->index_logits_bytes ? opt->index_logits_bytes : INDEX_LOGITS_BYTES;
    m->index_T = (int64_t)(logits_cap / (sizeof(float) * (size_t)(m->B * m->ctx_max)));
    m->index_T = m->index_T < 1 ? 1 : m->index_T > m->chunk ? m->chunk : m->index_T;
    m->has_linear = false;
    for (int64_t l = 0; l < m->L; l++) {
        hae_linear_kind lk;
        if (!hae_linear_kind_of(cfg->model.layers[l], &lk)) continue;
        int64_t f, b, in = hae_linear_in_dim(&m->ld, &lk, &f, &b);
        m->has_linear = true;
        if (in > m->proj_dim) m->proj_dim = in;
        if (m->LHV * m->LV > m->mix_dim) m->mix_dim = m->LHV * m->LV;
    }
    return HAE_OK;
}

/* The linear-attention arguments of a chunk of T tokens (shapes only: what the workspace depends on). */
static hae_linear_attn_args linear_shapes(const hae_model *m, int64_t T, int chunk, hae_device dev) {
    hae_linear_attn_args a = {0};
    a.q = hae_tensor_4d(NULL, m->dt, dev, m->B, T, m->LH, m->LK);
    a.v = hae_tensor_4d(NULL, m->dt, dev, m->B, T, m->LHV, m->LV);
    a.chunk = chunk;
    return a;
}

/* Workspace of the linear layers on a device: the larger of a prefill chunk's and a decode step's. */
static size_t linear_workspace(const hae_model *m, hae_device dev) {
    if (!m->has_linear) return 0;
    hae_linear_attn_args p = linear_shapes(m, m->chunk, (int)m->cfg.model.linear_attn.chunk_size, dev);
    hae_linear_attn_args d = linear_shapes(m, 1, 0, dev);
    size_t a = hae_linear_attn_workspace_on(dev, &p), b = hae_linear_attn_workspace_on(dev, &d);
    return a > b ? a : b;
}

/* KV slots per sequence of layer l: the whole context for full attention; for a window, the window
 * plus a chunk, since a chunk's first query still reads window - 1 positions before the chunk. */
static hae_kv_layer_spec kv_spec(const hae_model *m, int64_t l) {
    if (hae_linear_kind_of(m->cfg.model.layers[l], &(hae_linear_kind){0})) return (hae_kv_layer_spec){0};
    int64_t cap = m->ctx_max;
    if (m->cfg.model.layers[l] == HAE_LAYER_SWA && m->cfg.model.swa.window_size + m->chunk - 1 < cap)
        cap = m->cfg.model.swa.window_size + m->chunk - 1;
    const bool dsa = m->cfg.model.layers[l] == HAE_LAYER_DSA;
    const hae_tier tier = dsa ? m->cfg.memory.dsa_kv : m->cfg.memory.full_kv;
    return (hae_kv_layer_spec){.cap = cap, .kv_heads = m->Hkv, .head_dim = m->Dk, .v_dim = m->mla ? m->Dv : 0,
                               .tier = tier, .gpu_seqs = dsa && tier == HAE_TIER_HOST ? m->dsa_gpu : 0,
                               .fp8 = dsa && m->cfg.memory.dsa_kv_fp8};
}

/* FP8 key bytes and scales one token adds to a dsa layer's indexer cache (132 for D_I = 128). */
static size_t index_bytes_per_token(const hae_model *m) { return (size_t)(m->DI + 4 * (m->DI / 128)); }

hae_status hae_model_plan_get(const hae_config *cfg, const hae_model_options *opt, hae_model_plan *out) {
    memset(out, 0, sizeof *out);
    hae_model *m = calloc(1, sizeof *m);
    if (!m) return hae_error(HAE_ERR_OOM, "model plan: out of host memory");
    hae_status st = model_dims(m, cfg, opt);
    if (st == HAE_OK) {
        m->layers = calloc((size_t)m->L, sizeof *m->layers);
        m->params = calloc((size_t)(m->L * PARAMS_PER_LAYER + 4), sizeof *m->params);
        if (!m->layers || !m->params) st = hae_error(HAE_ERR_OOM, "model plan: out of host memory");
    }
    if (st == HAE_OK) {
        carver c = {NULL, 0, HAE_CPU};
        layout_weights(m, &c);
        out->n_params = m->n_param_elems;
        out->weight_bytes = c.used;
        /* The GPU's linear-attention workspace counts wherever the run may take the GPU, in a build without
         * CUDA too: hae mem plans for the GPU a config will run on, not for the machine it is asked on. */
        bool gpu = cfg->runtime.backend != HAE_BACKEND_CPU;
        m->la_workspace = linear_workspace(m, gpu ? HAE_CUDA : HAE_CPU);
        c = (carver){NULL, 0, HAE_CPU};
        layout_activations(m, &c);
        out->activation_bytes = c.used;
        c = (carver){NULL, 0, HAE_CPU};
        layout_states(m, &c);
        out->state_bytes = c.used;
        for (int64_t l = 0; l < m->L; l++)
            if (m->layers[l].linear)
                out->state_bytes_per_seq[l] = (hae_tensor_nbytes(&m->layers[l].conv_state) +
                                               hae_tensor_nbytes(&m->layers[l].state)) / (size_t)m->B;
        out->context = m->ctx_max;
        for (int64_t l = 0; l < m->L; l++) {
            hae_kv_layer_spec s = kv_spec(m, l);
            out->kv_slots[l] = s.cap;
            out->kv_bytes_per_token[l] = hae_kv_bytes_per_token(&s, m->dt);
            out->kv_bytes += (size_t)m->B * (size_t)s.cap * out->kv_bytes_per_token[l];
        }
        c = (carver){NULL, 0, HAE_CPU};
        layout_index(m, &c);
        for (int64_t l = 0; l < m->L; l++)
            if (m->layers[l].kind == HAE_LAYER_DSA) out->kv_bytes_per_token[l] += index_bytes_per_token(m);
        out->kv_bytes += c.used;
    }
    free(m->layers);
    free(m->params);
    free(m);
    return st;
}

static hae_status init_dsa_constants(hae_model *m);

/* ---------------------------------------------------------------- micro-batches */

static void narrow_seqs(hae_tensor *t, int64_t b0, int64_t n, int64_t per) {
    if (t->data) *t = hae_tensor_narrow(*t, 0, b0 * per, n * per);
}

/* Sequences [b0, b0 + n) of a decode step: the model with every per-sequence tensor narrowed to them (one
 * token a sequence, so sequence b is row b of the activations and rows [b H_I, (b + 1) H_I) of the indexer's
 * queries); weights, KV cache, slot caches and workspace shared. */
static hae_status micro_view(hae_model *m, int64_t b0, int64_t n, int part, hae_model **out) {
    hae_model *v = malloc(sizeof *v);
    layer_weights *layers = malloc(sizeof *layers * (size_t)m->L);
    if (!v || !layers) {
        free(v), free(layers);
        return hae_error(HAE_ERR_OOM, "model: out of host memory");
    }
    *v = *m;
    v->B = n, v->b0 = b0, v->slot_part = part, v->layers = layers, v->trace = NULL, v->n_mb = 0;
    memcpy(layers, m->layers, sizeof *layers * (size_t)m->L);
    for (int64_t l = 0; l < m->L; l++) {
        narrow_seqs(&layers[l].conv_state, b0, n, 1);
        narrow_seqs(&layers[l].state, b0, n, 1);
        narrow_seqs(&layers[l].icache.block_table, b0, n, 1);
    }
    hae_tensor *one[] = {&v->ids, &v->x, &v->h, &v->qkv, &v->att, &v->gu, &v->act, &v->hlast, &v->logits,
                         &v->conv_out, &v->graw, &v->gout, &v->ckv, &v->ov, &v->ki, &v->wi, &v->k8, &v->ks,
                         &v->ilogits, &v->ilens, &v->idx, &v->seq_lens, &v->sub_lens};
    for (size_t i = 0; i < sizeof one / sizeof one[0]; i++) narrow_seqs(one[i], b0, n, 1);
    hae_tensor *heads[] = {&v->qi, &v->q8, &v->qs};
    for (size_t i = 0; i < sizeof heads / sizeof heads[0]; i++) narrow_seqs(heads[i], b0, n, m->HI);
    *out = v;
    return HAE_OK;
}

static void micro_free(hae_model *v) {
    if (!v) return;
    free(v->layers), free(v);
}

/* Decode micro-batches pay for themselves when a host-tier fetch has other work to hide under, and each launches
 * every kernel again: auto cuts a batch split between the tiers at the split, and a host part without such a GPU
 * part in two halves, each micro-batch of at least this many sequences (a smaller GPU part joins the first half).
 * Measured on hybrid-1b at 90 sequences (bench/RESULTS.md): 52 + 38 and 45 + 45 beat one batch, 52 + 19 + 19 did
 * not. */
#define MICRO_MIN_SEQS 16

/* runtime.micro_batches, or auto's: sizes in sequence order; *n = 1 for one batch. */
static void micro_sizes(const hae_model *m, int64_t *size, int *n) {
    const hae_eval_list *l = &m->cfg.runtime.micro_batches;
    *n = 0;
    if (l->n > 0) {
        for (int i = 0; i < l->n; i++) size[(*n)++] = l->v[i];
        return;
    }
    const int64_t G = m->cfg.memory.dsa_kv == HAE_TIER_HOST ? m->dsa_gpu : m->B, H = m->B - G;
    if (G >= MICRO_MIN_SEQS && H >= MICRO_MIN_SEQS) {
        size[(*n)++] = G;
        size[(*n)++] = H;
    } else if (G < MICRO_MIN_SEQS && H >= 2 * MICRO_MIN_SEQS) {
        size[(*n)++] = G + (H + 1) / 2;
        size[(*n)++] = H / 2;
    } else {
        size[(*n)++] = m->B;
    }
}

static hae_status resolve_micro(hae_model *m) {
    bool streamed = false; /* full or swa layers staged whole at every step */
    for (int64_t l = 0; l < m->L; l++)
        streamed |= !m->layers[l].linear && m->slots[l] && m->layers[l].kind != HAE_LAYER_DSA;
    int64_t size[HAE_MICRO_MAX], sum = 0;
    int n;
    m->slot_part = 0;
    if (streamed && m->cfg.runtime.micro_batches.n <= 1) return HAE_OK; /* config.c refuses more than one */
    micro_sizes(m, size, &n);
    for (int i = 0; i < n; i++) sum += size[i];
    if (sum != m->B) /* config.c checks the sum against runtime.batch; a caller may have changed one of them */
        return hae_error(HAE_ERR_INVALID, "runtime.micro_batches add up to %lld sequences and the batch is %lld",
                         (long long)sum, (long long)m->B);
    if (n <= 1) return HAE_OK;
    const int64_t G = m->cfg.memory.dsa_kv == HAE_TIER_HOST ? m->dsa_gpu : m->B;
    int parts = 0;
    for (int64_t i = 0, b0 = 0; i < n; b0 += size[i++]) {
        HAE_TRY(micro_view(m, b0, size[i], b0 + size[i] > G ? parts : -1, &m->mb[i]));
        parts += b0 + size[i] > G;
        m->n_mb = (int)i + 1;
    }
    return HAE_OK;
}

/* memory.dsa_kv auto: the plan of the whole run (weights, activations, every K/V and state) with the dsa
 * K/V on the GPU, against memory.gpu_budget or, without one, the device's free memory now; when that does not
 * fit, the host tier for the fewest sequences it takes (HiSparse spills always and decodes 0.92x at batch 1). */
static hae_status resolve_dsa_kv(hae_model *m, hae_backend *be) {
    m->dsa_gpu = m->cfg.memory.dsa_kv == HAE_TIER_HOST && m->cfg.memory.dsa_gpu_seqs > 0 ? m->cfg.memory.dsa_gpu_seqs : 0;
    if (m->dsa_gpu >= m->B) m->cfg.memory.dsa_kv = HAE_TIER_GPU, m->dsa_gpu = 0; /* every sequence on the GPU */
    if (m->cfg.memory.dsa_kv != HAE_TIER_AUTO) return HAE_OK;
    hae_config *c = malloc(sizeof *c);
    if (!c) return hae_error(HAE_ERR_OOM, "model: out of host memory");
    *c = m->cfg;
    c->runtime.backend = hae_backend_device(be) == HAE_CUDA ? HAE_BACKEND_CUDA : HAE_BACKEND_CPU; /* what this run allocates */
    hae_status st = HAE_OK;
    if (c->memory.gpu_budget <= 0) {
        size_t free_b = 0, total_b = 0;
        st = hae_backend_mem_info(be, &free_b, &total_b);
        c->memory.gpu_budget = (int64_t)(free_b > (size_t)INT64_MAX ? (size_t)INT64_MAX : free_b);
    }
    hae_mem_plan plan;
    if (st == HAE_OK) st = hae_mem_plan_get(c, m->ctx_max, &plan);
    if (st == HAE_OK) {
        m->cfg.memory.dsa_kv = plan.dsa_kv;
        m->dsa_gpu = plan.dsa_kv == HAE_TIER_HOST ? plan.dsa_gpu_seqs : 0;
    }
    free(c);
    return st == HAE_OK ? HAE_OK : hae_error_wrap(st, "memory.dsa_kv: auto");
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

#ifdef HAE_HAVE_CUDA
    const char *why = m->has_linear && hae_backend_device(be) == HAE_CUDA
                          ? hae_linear_attn_cuda_unsupported(m->LK, m->LV, (int)cfg->model.linear_attn.chunk_size)
                          : NULL;
    if (why) {
        long long k = (long long)m->LK, v = (long long)m->LV, c = (long long)cfg->model.linear_attn.chunk_size;
        free(m);
        return hae_error(HAE_ERR_UNSUPPORTED,
                         "model: the CUDA linear layers cannot run head_dim %lld, head_v_dim %lld, chunk_size %lld: %s "
                         "(model.linear_attn; the CPU backend runs any)",
                         k, v, c, why);
    }
#endif
    hae_status st = resolve_dsa_kv(m, be);
    if (st != HAE_OK) {
        hae_model_destroy(m);
        return st;
    }
    st = HAE_ERR_OOM;
    m->layers = calloc((size_t)m->L, sizeof *m->layers);
    m->params = calloc((size_t)(m->L * PARAMS_PER_LAYER + 4), sizeof *m->params);
    m->ids_host = malloc(sizeof(int32_t) * (size_t)(m->B * m->chunk));
    m->lens_host = malloc(sizeof(int32_t) * (size_t)(m->B * m->chunk + m->B * m->pages_per_seq));
    if (!m->layers || !m->params || !m->ids_host || !m->lens_host) {
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
    st = hae_kv_cache_create(be, (int)m->L, specs, m->B, m->dt, (size_t)cfg->runtime.kv_budget,
                             (size_t)cfg->memory.host_budget, &m->kv);
    free(specs);
    if (st != HAE_OK) {
        hae_model_destroy(m);
        return st;
    }
    m->slots = calloc((size_t)m->L, sizeof *m->slots);
    if (!m->slots) {
        hae_model_destroy(m);
        return hae_error(HAE_ERR_OOM, "model: out of host memory");
    }
    /* Host-tier layers: dsa layers get GPU token slots (more than the context would never be used), full and
     * swa layers none (streamed whole at every forward); both stage through one buffer when they need it. */
    const int64_t S = cfg->memory.cache_tokens < m->ctx_max ? cfg->memory.cache_tokens : m->ctx_max;
    for (int64_t l = 0; l < m->L; l++) {
        hae_tensor kc, vc;
        hae_kv_cache_layer(m->kv, (int)l, HAE_TIER_HOST, &kc, &vc);
        const hae_layer_kind kind = cfg->model.layers[l];
        const bool streamed = (kind == HAE_LAYER_FULL || kind == HAE_LAYER_SWA) && cfg->memory.full_kv == HAE_TIER_HOST;
        const bool staged = kind == HAE_LAYER_DSA && m->cfg.memory.dsa_kv == HAE_TIER_HOST && m->chunk > 1 && S < m->ctx_max;
        const size_t need = streamed || staged ? hae_slot_cache_stage_bytes(&kc, &vc) : 0;
        if (need > m->stage_bytes) m->stage_bytes = need;
    }
    if (m->stage_bytes) {
        st = hae_backend_alloc(be, m->stage_bytes, &m->stage_mem);
        if (st != HAE_OK) st = hae_error_wrap(st, "the host tier's staging (one layer's K/V)");
    }
    for (int64_t l = 0; l < m->L && st == HAE_OK; l++) {
        const hae_layer_kind kind = cfg->model.layers[l];
        const bool dsa = kind == HAE_LAYER_DSA && m->cfg.memory.dsa_kv == HAE_TIER_HOST;
        const bool streamed = (kind == HAE_LAYER_FULL || kind == HAE_LAYER_SWA) && cfg->memory.full_kv == HAE_TIER_HOST;
        if (!dsa && !streamed) continue;
        hae_tensor kc, vc;
        hae_kv_cache_layer(m->kv, (int)l, HAE_TIER_HOST, &kc, &vc);
        st = hae_slot_cache_create(be, &kc, &vc, dsa ? S : 0, dsa ? m->topk : 0, m->chunk, m->stage_mem, &m->slots[l]);
        if (st != HAE_OK)
            st = hae_error_wrap(st, "layer %lld (%s)", (long long)l, dsa ? "memory.dsa_kv: host" : "memory.full_kv: host");
    }
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
    layout_states(m, &c);
    m->state_bytes = c.used;
    st = hae_backend_alloc(be, m->state_bytes, &m->state_mem);
    if (st != HAE_OK) {
        long long seqs = (long long)m->B;
        hae_model_destroy(m);
        return hae_error_wrap(st, "linear-layer states (%lld sequences)", seqs);
    }
    c = (carver){m->state_mem, 0, hae_backend_device(be)};
    layout_states(m, &c);

    c = (carver){NULL, 0, hae_backend_device(be)};
    layout_index(m, &c);
    m->index_bytes = c.used;
    st = hae_backend_alloc(be, m->index_bytes, &m->index_mem);
    if (st != HAE_OK) {
        hae_model_destroy(m);
        return hae_error_wrap(st, "indexer key caches");
    }
    c = (carver){m->index_mem, 0, hae_backend_device(be)};
    layout_index(m, &c);

    m->la_workspace = linear_workspace(m, hae_backend_device(be));
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
    if (st == HAE_OK) st = init_dsa_constants(m);
    if (st == HAE_OK) st = resolve_micro(m);
    if (st != HAE_OK) {
        hae_model_destroy(m);
        return st;
    }
    *out = m;
    return HAE_OK;
}

void hae_model_destroy(hae_model *m) {
    if (!m) return;
    for (int i = 0; i < m->n_mb; i++) micro_free(m->mb[i]);
    if (m->trace) fclose(m->trace);
    free(m->trace_buf);
    for (int64_t l = 0; m->slots && l < m->L; l++) hae_slot_cache_destroy(m->slots[l]);
    free(m->slots);
    hae_backend_free(m->be, m->stage_mem);
    hae_kv_cache_destroy(m->kv);
    hae_backend_free(m->be, m->weight_mem);
    hae_backend_free(m->be, m->act_mem);
    hae_backend_free(m->be, m->state_mem);
    hae_backend_free(m->be, m->index_mem);
    free(m->layers);
    free(m->params);
    free(m->ids_host);
    free(m->lens_host);
    free(m);
}

hae_status hae_model_trace_selections(hae_model *m, const char *path) {
    hae_status st = HAE_OK;
    if (m->trace && fclose(m->trace) != 0)
        st = hae_error(HAE_ERR_IO, "selection trace: closing it failed: %s", strerror(errno));
    m->trace = NULL;
    if (!path || st != HAE_OK) return st;
    if (!m->has_dsa) return hae_error(HAE_ERR_INVALID, "selection trace %s: the model has no dsa layer", path);
    if (!m->trace_buf && !(m->trace_buf = malloc(sizeof(int32_t) * (size_t)(m->B * m->topk))))
        return hae_error(HAE_ERR_OOM, "selection trace: out of host memory");
    if (!(m->trace = fopen(path, "w")))
        return hae_error(HAE_ERR_IO, "selection trace %s: cannot open for writing: %s", path, strerror(errno));
    return HAE_OK;
}

/* A decode step's selections of dsa layer l, one line a sequence (hae_model_trace_selections). */
static hae_status trace_step(hae_model *m, int64_t l) {
    const int64_t B = m->B, k = m->topk;
    HAE_TRY(hae_backend_download(m->be, m->trace_buf, m->idx.data, sizeof(int32_t) * (size_t)(B * k)));
    HAE_TRY(hae_backend_sync(m->be));
    for (int64_t b = 0; b < B; b++) {
        fprintf(m->trace, "%lld %lld %lld", (long long)m->pos, (long long)l, (long long)b);
        for (int64_t i = 0; i < k; i++) fprintf(m->trace, " %d", m->trace_buf[b * k + i]);
        fputc('\n', m->trace);
    }
    if (ferror(m->trace)) return hae_error(HAE_ERR_IO, "selection trace: writing it failed (disk full?)");
    return HAE_OK;
}

void hae_model_reset(hae_model *m) { m->pos = 0; }
int64_t hae_model_position(const hae_model *m) { return m->pos; }
hae_backend *hae_model_backend(const hae_model *m) { return m->be; }

void hae_model_stats_get(const hae_model *m, hae_model_stats *s) {
    s->n_params = m->n_param_elems;
    s->weight_bytes = m->weight_bytes;
    s->kv_bytes = hae_kv_cache_bytes(m->kv) + m->index_bytes;
    s->state_bytes = m->state_bytes;
    s->activation_bytes = m->act_bytes;
    s->device = hae_backend_device(m->be);
    s->kv_host_bytes = hae_kv_cache_tier_bytes(m->kv, HAE_TIER_HOST);
    s->slot_cache_bytes = 0, s->slot_hits = s->slot_misses = 0, s->fetched_bytes = 0;
    s->stage_bytes = m->stage_bytes;
    s->dsa_kv = m->cfg.memory.dsa_kv;
    s->dsa_gpu_seqs = m->cfg.memory.dsa_kv == HAE_TIER_HOST ? m->dsa_gpu : m->B;
    s->n_micro = m->n_mb ? m->n_mb : 1;
    for (int i = 0; i < HAE_MICRO_MAX; i++) s->micro[i] = i < m->n_mb ? m->mb[i]->B : i == 0 ? m->B : 0;
    for (int64_t l = 0; l < m->L; l++) {
        if (!m->slots[l]) continue;
        s->slot_cache_bytes += hae_slot_cache_bytes(m->slots[l]);
        if (hae_slot_cache_stats(m->slots[l], &s->slot_hits, &s->slot_misses, &s->fetched_bytes) != HAE_OK)
            s->slot_hits = s->slot_misses = -1; /* unknown: the device did not answer */
    }
}

/* A new context, or one restored: the slots hold tokens of another. */
static hae_status reset_slots(hae_model *m) {
    for (int64_t l = 0; l < m->L; l++)
        if (m->slots[l]) HAE_TRY(hae_slot_cache_reset(m->slots[l]));
    return HAE_OK;
}

/* ---------------------------------------------------------------- snapshots */

typedef struct {
    char magic[8];
    int64_t pos;
    uint64_t shapes; /* hash of what the bytes mean: kinds, dims, dtype, batch, context */
    uint64_t state_bytes, kv_bytes;
} snapshot_header;

static uint64_t shape_hash(const hae_model *m) {
    const int64_t dims[] = {m->B, m->V, m->d, m->L, m->Hq, m->Hkv, m->Dh, m->F, m->ctx_max, m->chunk,
                            m->LH, m->LHV, m->LK, m->LV, m->conv_W, (int64_t)m->dt, m->HI, m->DI, m->page};
    uint64_t h = 0;
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++) h = hae_mix64(h ^ (uint64_t)dims[i]);
    for (int64_t l = 0; l < m->L; l++) h = hae_mix64(h ^ (uint64_t)m->layers[l].kind ^ ((uint64_t)m->layers[l].window << 8));
    return h;
}

static const char snapshot_magic[8] = {'h', 'a', 'e', 's', 'n', 'a', 'p', '1'};

size_t hae_model_snapshot_bytes(const hae_model *m) {
    return sizeof(snapshot_header) + m->state_bytes + hae_kv_cache_bytes(m->kv) + m->index_bytes;
}

/* Copies the state and every layer's K and V between the device and a host buffer, in one order. */
static hae_status snapshot_copy(hae_model *m, char *host, bool save) {
    hae_status st = save ? hae_backend_download(m->be, host, m->state_mem, m->state_bytes)
                         : hae_backend_upload(m->be, m->state_mem, host, m->state_bytes);
    host += m->state_bytes;
    if (st == HAE_OK)
        st = save ? hae_backend_download(m->be, host, m->index_mem, m->index_bytes)
                  : hae_backend_upload(m->be, m->index_mem, host, m->index_bytes);
    host += m->index_bytes;
    for (int64_t l = 0; l < m->L && st == HAE_OK; l++) {
        for (int t = 0; t < HAE_TIER_COUNT && st == HAE_OK; t++) {
            hae_tensor kv[2];
            hae_kv_cache_layer(m->kv, (int)l, (hae_tier)t, &kv[0], &kv[1]);
            for (int i = 0; i < 2 && st == HAE_OK; i++) {
                size_t n = kv[i].data ? hae_tensor_nbytes(&kv[i]) : 0;
                st = save ? hae_backend_download(m->be, host, kv[i].data, n) : hae_backend_upload(m->be, kv[i].data, host, n);
                host += n;
            }
        }
    }
    return st == HAE_OK ? hae_backend_sync(m->be) : st;
}

hae_status hae_model_snapshot_save(const hae_model *m, void *host, size_t bytes) {
    if (bytes != hae_model_snapshot_bytes(m))
        return hae_error(HAE_ERR_INVALID, "model snapshot: buffer of %zu bytes, this model's snapshot is %zu", bytes,
                         hae_model_snapshot_bytes(m));
    snapshot_header h = {.pos = m->pos, .shapes = shape_hash(m), .state_bytes = m->state_bytes,
                         .kv_bytes = hae_kv_cache_bytes(m->kv) + m->index_bytes};
    memcpy(h.magic, snapshot_magic, sizeof h.magic);
    memcpy(host, &h, sizeof h);
    return snapshot_copy((hae_model *)m, (char *)host + sizeof h, true);
}

hae_status hae_model_snapshot_restore(hae_model *m, const void *host, size_t bytes) {
    snapshot_header h;
    if (bytes < sizeof h) return hae_error(HAE_ERR_INVALID, "model snapshot: %zu bytes is not a snapshot", bytes);
    memcpy(&h, host, sizeof h);
    if (memcmp(h.magic, snapshot_magic, sizeof h.magic) != 0)
        return hae_error(HAE_ERR_INVALID, "model snapshot: not a snapshot (bad magic)");
    if (h.state_bytes != m->state_bytes || h.kv_bytes != hae_kv_cache_bytes(m->kv) + m->index_bytes ||
        bytes != hae_model_snapshot_bytes(m))
        return hae_error(HAE_ERR_INVALID,
                         "model snapshot: taken of a model with %llu state and %llu KV bytes (%zu in all); this model "
                         "has %zu and %zu (%zu)",
                         (unsigned long long)h.state_bytes, (unsigned long long)h.kv_bytes, bytes, m->state_bytes,
                         hae_kv_cache_bytes(m->kv) + m->index_bytes, hae_model_snapshot_bytes(m));
    if (h.shapes != shape_hash(m))
        return hae_error(HAE_ERR_INVALID, "model snapshot: taken of a model with other layer kinds or shapes");
    if (h.pos < 0 || h.pos > m->ctx_max)
        return hae_error(HAE_ERR_INVALID, "model snapshot: position %lld outside this model's context of %lld",
                         (long long)h.pos, (long long)m->ctx_max);
    HAE_TRY(snapshot_copy(m, (char *)host + sizeof h, false));
    HAE_TRY(reset_slots(m));
    m->pos = h.pos;
    return HAE_OK;
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

/* Fills the derived indexer's maps, the unit head weights and the block tables. */
static hae_status init_dsa_constants(hae_model *m) {
    if (!m->has_dsa) return HAE_OK;
    stage s;
    HAE_TRY(stage_alloc(&s));
    hae_status st = HAE_OK;
    const hae_tensor *maps[3] = {&m->ones, &m->pq, &m->pk};
    for (int k = 0; k < 3 && st == HAE_OK && m->derived; k++) {
        const int64_t n = hae_tensor_numel(maps[k]), cols = maps[k]->shape[1];
        for (int64_t off = 0; off < n && st == HAE_OK; off += STAGE_ELEMS) {
            int64_t len = n - off < STAGE_ELEMS ? n - off : STAGE_ELEMS;
            for (int64_t i = 0; i < len; i++) {
                int64_t row = (off + i) / cols, col = (off + i) % cols;
                s.f[i] = k == 0 ? 1.0f : k == 1 ? derived_pq(m, row, col) : derived_pk(m, row, col);
            }
            st = put_block(m, &s, maps[k], off, len);
        }
    }
    stage_free(&s);
    int32_t *table = m->lens_host;
    for (int64_t b = 0; b < m->B * m->pages_per_seq; b++) table[b] = (int32_t)b;
    for (int64_t l = 0; l < m->L && st == HAE_OK; l++)
        if (m->layers[l].kind == HAE_LAYER_DSA)
            st = hae_backend_upload(m->be, m->layers[l].icache.block_table.data, table,
                                    sizeof(int32_t) * (size_t)(m->B * m->pages_per_seq));
    return st == HAE_OK ? hae_backend_sync(m->be) : st;
}

/* mla's absorbed key up-projections: wuk_t[h lora + j, i] = kv_b_proj[h (nope + vd) + i, j] for i < nope,
 * rebuilt whenever the weights change (they are not parameters of their own). */
static hae_status absorb_mla(hae_model *m) {
    if (!m->mla) return HAE_OK;
    const size_t es = hae_dtype_size(m->dt), n = (size_t)(m->Hq * (m->nope + m->vd) * m->lora);
    char *kvb = malloc(n * es), *uk = malloc((size_t)(m->Hq * m->lora * m->nope) * es);
    hae_status st = kvb && uk ? HAE_OK : hae_error(HAE_ERR_OOM, "model: %zu bytes of host memory for mla's absorbed "
                                                               "weights", 2 * n * es);
    for (int64_t l = 0; l < m->L && st == HAE_OK; l++) {
        const layer_weights *w = &m->layers[l];
        if (w->linear) continue;
        st = hae_backend_download(m->be, kvb, w->wkvb.data, n * es);
        for (int64_t h = 0; h < m->Hq && st == HAE_OK; h++)
            for (int64_t j = 0; j < m->lora; j++)
                for (int64_t i = 0; i < m->nope; i++)
                    memcpy(uk + (size_t)((h * m->lora + j) * m->nope + i) * es,
                           kvb + (size_t)((h * (m->nope + m->vd) + i) * m->lora + j) * es, es);
        if (st == HAE_OK) st = hae_backend_upload(m->be, w->wuk_t.data, uk, hae_tensor_nbytes(&w->wuk_t));
    }
    if (st == HAE_OK) st = hae_backend_sync(m->be); /* before the host buffers go */
    free(kvb);
    free(uk);
    return st;
}

/* Normal deviates from counters (Box-Muller on hae_uniform), so element i of parameter p has the same
 * value whatever the backend, the order of initialisation or the thread count. */
static float normal_at(uint64_t seed, uint64_t p, uint64_t i) {
    double u1 = hae_uniform(seed, p, i, 0), u2 = hae_uniform(seed, p, i, 1);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

float hae_init_value(hae_init_kind init, float std, uint64_t seed, uint64_t p, uint64_t i) {
    double u = hae_uniform(seed, p, i, 0);
    switch (init) {
    case INIT_NORMAL: return std * normal_at(seed, p, i);
    case INIT_ONES: return 1.0f;
    case INIT_ZEROS: return 0.0f;
    case INIT_UNIFORM: return std * (float)(2.0 * u - 1.0);
    case INIT_A_LOG: return (float)log(1.0 + 15.0 * u);
    case INIT_DT_BIAS: {
        double dt = exp(u * (log(0.1) - log(0.001)) + log(0.001));
        if (dt < 1e-4) dt = 1e-4;
        return (float)(dt + log(-expm1(-dt)));
    }
    case INIT_RETNET: return (float)log(-log1p(-ldexp(1.0, -5 - (int)i)));
    }
    return 0.0f;
}

/* Values [off, off + n) of parameter p into f, INIT_BLOCK at a time (the values depend only on their
 * counters, so any thread may compute any block). */
#define INIT_BLOCK 4096
typedef struct {
    const param *pr;
    uint64_t seed, p;
    int64_t off, n;
    float *f;
} init_ctx;

static void init_block(void *ctx, int64_t blk) {
    const init_ctx *c = ctx;
    const int64_t i0 = blk * INIT_BLOCK, i1 = i0 + INIT_BLOCK < c->n ? i0 + INIT_BLOCK : c->n;
    for (int64_t i = i0; i < i1; i++) c->f[i] = hae_init_value(c->pr->init, c->pr->std, c->seed, c->p, (uint64_t)(c->off + i));
}

hae_status hae_model_init_weights(hae_model *m, uint64_t seed) {
    /* a billion Box-Muller draws take a minute on one core: a GPU model borrows a pool of host threads */
    hae_threadpool *pool = m->be->pool, *own = NULL;
    if (!pool) {
        long cores = m->cfg.runtime.threads > 0 ? m->cfg.runtime.threads : sysconf(_SC_NPROCESSORS_ONLN);
        HAE_TRY(hae_threadpool_create(cores > 0 ? (int)cores : 1, &own));
        pool = own;
    }
    stage s;
    hae_status st = stage_alloc(&s);
    if (st != HAE_OK) {
        hae_threadpool_destroy(own);
        return st;
    }
    for (int p = 0; p < m->n_params && st == HAE_OK; p++) {
        const param *pr = &m->params[p];
        int64_t n = hae_tensor_numel(&pr->t);
        for (int64_t off = 0; off < n && st == HAE_OK; off += STAGE_ELEMS) {
            int64_t k = n - off < STAGE_ELEMS ? n - off : STAGE_ELEMS;
            init_ctx c = {.pr = pr, .seed = seed, .p = (uint64_t)p, .off = off, .n = k, .f = s.f};
            hae_parallel_for_sized(pool, (k + INIT_BLOCK - 1) / INIT_BLOCK, 64 * INIT_BLOCK, init_block, &c);
            st = put_block(m, &s, &pr->t, off, k);
        }
    }
    stage_free(&s);
    hae_threadpool_destroy(own);
    if (st == HAE_OK) st = hae_backend_sync(m->be);
    return st == HAE_OK ? absorb_mla(m) : st;
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
    m->n_unused = 0, m->first_unused[0] = '\0';
    for (int i = 0; st == HAE_OK && i < hae_st_count(f); i++) {
        const char *name = hae_st_get(f, i)->name;
        bool used = false;
        for (int p = 0; p < m->n_params && !used; p++) used = strcmp(m->params[p].name, name) == 0;
        if (!used && m->n_unused++ == 0) snprintf(m->first_unused, sizeof m->first_unused, "%s", name);
    }
    stage_free(&s);
    hae_st_close(f);
    return st == HAE_OK ? absorb_mla(m) : st;
}

int hae_model_unused_tensors(const hae_model *m, const char **first) {
    if (first) *first = m->first_unused;
    return m->n_unused;
}

/* ---------------------------------------------------------------- forward */

/* Views of the [B, T, H, Dh] heads inside the fused qkv rows of a chunk of T tokens. */
static hae_tensor qkv_heads(const hae_model *m, int64_t T, int64_t col0, int64_t heads, int64_t dim) {
    hae_tensor t = hae_tensor_4d((char *)m->qkv.data + col0 * (int64_t)hae_dtype_size(m->dt), m->dt,
                                 hae_backend_device(m->be), m->B, T, heads, dim);
    t.stride[1] = m->qkv_dim;
    t.stride[0] = T * m->qkv_dim;
    return t;
}

static hae_tensor rows(hae_tensor t, int64_t n) { return hae_tensor_narrow(t, 0, 0, n); }

/* A buffer's first n rows seen as a contiguous [n, width] matrix (buffers are sized for the widest use). */
static hae_tensor view2(const hae_tensor *buf, int64_t n, int64_t width) {
    return hae_tensor_2d(buf->data, buf->dtype, buf->device, n, width);
}

/* [B, T, heads, dim] (or [B, T, heads] when dim is 0) at column col0 of a contiguous [B T, width] matrix. */
static hae_tensor head_view(const hae_tensor *mat, int64_t B, int64_t T, int64_t col0, int64_t heads, int64_t dim) {
    const int64_t width = mat->shape[1];
    void *p = (char *)mat->data + col0 * (int64_t)hae_dtype_size(mat->dtype);
    hae_tensor t = dim ? hae_tensor_4d(p, mat->dtype, mat->device, B, T, heads, dim)
                       : hae_tensor_3d(p, mat->dtype, mat->device, B, T, heads);
    t.stride[0] = T * width;
    t.stride[1] = width;
    return t;
}

/* The indexer's lengths of a chunk of T tokens at m->pos, the same for every dsa layer: uploaded once per chunk
 * (an upload between two kernels holds the second until the first is done, and a decode step has 2 per layer). */
static hae_status dsa_lengths(hae_model *m, int64_t T) {
    const int64_t B = m->B, N = B * T;
    int32_t *cand = m->lens_host, *seqs = m->lens_host + N;
    for (int64_t b = 0; b < B; b++) {
        seqs[b] = (int32_t)(m->pos + T);
        for (int64_t t = 0; t < T; t++) cand[b * T + t] = (int32_t)(m->pos + t + 1); /* causal candidates */
    }
    HAE_TRY(hae_backend_upload(m->be, m->ilens.data, cand, sizeof(int32_t) * (size_t)N));
    return hae_backend_upload(m->be, m->seq_lens.data, seqs, sizeof(int32_t) * (size_t)B);
}

/* DSA's token selection for a chunk of T tokens whose q and k are in m->qkv (after RoPE) and whose
 * K/V are cached: the indexer's query and key (its own weights, or the derived maps of the layer's q
 * and k), RoPE on its leading dims, the Hadamard rotation, FP8 with per-vector scales, the key into
 * the page cache, the logits against every cached key and the top-k of each query into m->idx. */
static hae_status dsa_select(hae_model *m, int64_t l, int64_t T) {
    const layer_weights *w = &m->layers[l];
    hae_backend *be = m->be;
    const hae_device dev = hae_backend_device(be);
    const int64_t B = m->B, N = B * T, HI = m->HI, DI = m->DI;
    int32_t *seqs = m->lens_host + N; /* the slices' lengths (dsa_lengths uploaded the chunk's) */

    hae_tensor qi = hae_tensor_2d(m->qi.data, HAE_F32, dev, N, HI * DI), ki = rows(m->ki, N);
    hae_tensor wi = rows(m->derived ? m->ones : m->wi, N);
    if (m->derived) {
        hae_tensor qkv = view2(&m->qkv, N, m->qkv_dim);
        HAE_TRY(hae_gemm(be, &(hae_gemm_args){.a = hae_tensor_narrow(qkv, 1, 0, m->Hq * m->Dk), .b = m->pq, .c = qi}));
        HAE_TRY(hae_gemm(be, &(hae_gemm_args){.a = hae_tensor_narrow(qkv, 1, m->Hq * m->Dk, m->Hkv * m->Dk), .b = m->pk,
                                              .c = ki}));
    } else {
        HAE_TRY(hae_gemm(be, &(hae_gemm_args){.a = rows(m->h, N), .b = w->wq_i, .c = qi}));
        HAE_TRY(hae_gemm(be, &(hae_gemm_args){.a = rows(m->h, N), .b = w->wk_i, .c = ki}));
        HAE_TRY(hae_gemm(be, &(hae_gemm_args){.a = rows(m->h, N), .b = w->w_proj, .c = wi}));
        HAE_TRY(hae_rmsnorm(be, &(hae_rmsnorm_args){.x = ki, .weight = w->k_norm_w, .bias = w->k_norm_b, .center = true,
                                                    .out = ki, .eps = 1e-6f}));
        if (m->irope > 0) {
            float theta = m->cfg.model.attention.rope_theta;
            HAE_TRY(hae_rope(be, &(hae_rope_args){.x = hae_tensor_4d(qi.data, HAE_F32, dev, B, T, HI, DI), .pos0 = m->pos,
                                                  .rot_dims = (int)m->irope, .theta = theta}));
            HAE_TRY(hae_rope(be, &(hae_rope_args){.x = hae_tensor_4d(ki.data, HAE_F32, dev, B, T, 1, DI), .pos0 = m->pos,
                                                  .rot_dims = (int)m->irope, .theta = theta}));
        }
    }
    hae_tensor qrows = rows(m->qi, N * HI), q8 = rows(m->q8, N * HI), qs = rows(m->qs, N * HI);
    HAE_TRY(hae_hadamard(be, &(hae_hadamard_args){.x = qrows}));
    HAE_TRY(hae_hadamard(be, &(hae_hadamard_args){.x = ki}));
    HAE_TRY(hae_fp8_quant(be, &(hae_fp8_quant_args){.x = qrows, .q = q8, .scale = qs}));
    HAE_TRY(hae_fp8_quant(be, &(hae_fp8_quant_args){.x = ki, .q = rows(m->k8, N), .scale = rows(m->ks, N)}));
    HAE_TRY(hae_index_write(be, &(hae_index_write_args){.k = hae_tensor_3d(m->k8.data, HAE_FP8_E4M3, dev, B, T, DI),
                                                        .k_scale = hae_tensor_3d(m->ks.data, HAE_F32, dev, B, T, DI / 128),
                                                        .cache = w->icache, .seq_lens = m->seq_lens}));
    /* Logits and top-k of tokens [t0, t0 + n) of every sequence: their own lengths (query t sits at
     * position seq_len - n + t), a [B, n, context] logits slice, and the selections into idx. */
    hae_tensor q4 = hae_tensor_4d(q8.data, HAE_FP8_E4M3, dev, B, T, HI, DI);
    hae_tensor w3 = hae_tensor_3d(wi.data, HAE_F32, dev, B, T, HI), qs3 = hae_tensor_3d(qs.data, HAE_F32, dev, B, T, HI);
    for (int64_t t0 = 0; t0 < T; t0 += m->index_T) {
        const int64_t n = T - t0 < m->index_T ? T - t0 : m->index_T;
        hae_tensor lens = m->seq_lens;
        if (n < T) {
            for (int64_t b = 0; b < B; b++) seqs[b] = (int32_t)(m->pos + t0 + n);
            HAE_TRY(hae_backend_upload(be, m->sub_lens.data, seqs, sizeof(int32_t) * (size_t)B));
            lens = m->sub_lens;
        }
        hae_tensor logits = hae_tensor_3d(m->ilogits.data, HAE_F32, dev, B, n, m->ctx_max);
        HAE_TRY(hae_index_logits(be, &(hae_index_logits_args){
                                         .q = hae_tensor_narrow(q4, 1, t0, n), .w = hae_tensor_narrow(w3, 1, t0, n),
                                         .cache = w->icache, .seq_lens = lens, .logits = logits,
                                         .q_scale = hae_tensor_narrow(qs3, 1, t0, n),
                                         .w_scale = 1.0f / sqrtf((float)(HI * DI)),
                                         .exact = m->cfg.model.dsa.exact_logits}));
        if (n == T) {
            HAE_TRY(hae_topk(be, &(hae_topk_args){.logits = rows(m->ilogits, N), .lens = rows(m->ilens, N),
                                                  .out = rows(m->idx, N)}));
            continue;
        }
        /* a slice's rows of idx are contiguous only within a sequence */
        for (int64_t b = 0; b < B; b++)
            HAE_TRY(hae_topk(be, &(hae_topk_args){
                                     .logits = hae_tensor_narrow(m->ilogits, 0, b * n, n),
                                     .lens = hae_tensor_narrow(m->ilens, 0, b * T + t0, n),
                                     .out = hae_tensor_narrow(rows(m->idx, N), 0, b * T + t0, n)}));
    }
    if (m->trace && T == 1) HAE_TRY(trace_step(m, l));
    return HAE_OK;
}

/* mla's queries and latent key in absorbed form (DeepSeek-V2 §2.1): with c the normed latent of a
 * token and W_UK_h, W_UV_h head h's key and value up-projections (rows of kv_b_proj),
 *     q_h . k_h = (W_UK_h^T q_nope_h) . c + q_rope_h . k_rope,     o_h = W_UV_h sum_s p_s c_s
 * so attention runs over the cached [c | k_rope] (Dk = lora + rdim) with one kv head, values c
 * (Dv = lora), queries [W_UK_h^T q_nope_h | q_rope_h], and W_UV_h applies after it. Into m->qkv
 * rows: the Hq absorbed queries, the latent key, then q_nope of every head; each per-head step is
 * one batched GEMM over the heads. */
static hae_status mla_project(hae_model *m, const layer_weights *w, int64_t T) {
    hae_backend *be = m->be;
    const int64_t N = m->B * T, H = m->Hq, qrow = m->nope + m->rdim, qd = H * qrow, qcols = H * m->Dk;
    const hae_tensor h = rows(m->h, N), qkv = view2(&m->qkv, N, m->qkv_dim);
    const hae_tensor qn = hae_tensor_narrow(qkv, 1, qcols + m->Dk, m->nope), kl = hae_tensor_narrow(qkv, 1, qcols, m->Dk);
    HAE_TRY(hae_gemm(be, &(hae_gemm_args){.a = h, .b = hae_tensor_narrow(w->wqkv, 0, 0, m->nope), .c = qn, .batch = H,
                                          .stride_b = qrow * m->d, .stride_c = m->nope}));
    HAE_TRY(hae_gemm(be, &(hae_gemm_args){.a = qn, .b = hae_tensor_narrow(w->wuk_t, 0, 0, m->lora),
                                          .c = hae_tensor_narrow(qkv, 1, 0, m->lora), .batch = H,
                                          .stride_a = m->nope, .stride_b = m->lora * m->nope, .stride_c = m->Dk}));
    if (m->rdim) {
        HAE_TRY(hae_gemm(be, &(hae_gemm_args){.a = h, .b = hae_tensor_narrow(w->wqkv, 0, m->nope, m->rdim),
                                              .c = hae_tensor_narrow(qkv, 1, m->lora, m->rdim), .batch = H,
                                              .stride_b = qrow * m->d, .stride_c = m->Dk}));
        HAE_TRY(hae_gemm(be, &(hae_gemm_args){.a = h, .b = hae_tensor_narrow(w->wqkv, 0, qd + m->lora, m->rdim),
                                              .c = hae_tensor_narrow(kl, 1, m->lora, m->rdim)}));
    }
    HAE_TRY(hae_gemm(be, &(hae_gemm_args){.a = h, .b = hae_tensor_narrow(w->wqkv, 0, qd, m->lora), .c = rows(m->ckv, N)}));
    return hae_rmsnorm(be, &(hae_rmsnorm_args){.x = rows(m->ckv, N), .weight = w->kva_norm, .eps = m->cfg.model.norm_eps,
                                               .out = hae_tensor_narrow(kl, 1, 0, m->lora)});
}

/* The layers that attend over the host tier's staging share it: once one's attention is enqueued, the next
 * one's context before the chunk is copied there as side work, overlapping the layers in between. */
static hae_status prefetch_after(hae_model *m, int64_t l, int64_t T) {
    for (int64_t j = l + 1; j < m->L; j++)
        if (m->slots[j] && hae_slot_cache_stages(m->slots[j], m->pos, T)) return hae_slot_cache_prefetch(m->slots[j], m->pos, T);
    return HAE_OK;
}

/* Rows [lo, hi) of the batch within a tier's part, which holds rows [p0, p0 + part->shape[0]). */
static hae_tensor part_rows(hae_tensor part, int64_t p0, int64_t lo, int64_t hi) {
    const int64_t n = part.shape[0], a = lo - p0 < 0 ? 0 : lo - p0 > n ? n : lo - p0,
                  b = hi - p0 < 0 ? 0 : hi - p0 > n ? n : hi - p0;
    return hae_tensor_narrow(part, 0, a, b - a);
}

/* An attention layer up to its attention: the projections, RoPE, the K/V written, and for dsa layers the
 * selection and, in the host tier, the fetch of the selected tokens (which a decode step leaves in flight:
 * attention_out waits for it). What the attention will read is kept in m->pend. */
static hae_status attention_in(hae_model *m, int64_t l, int64_t T) {
    const layer_weights *w = &m->layers[l];
    hae_backend *be = m->be;
    const int64_t N = m->B * T, qd = m->Hq * m->Dk, kd = m->Hkv * m->Dk;
    float eps = m->cfg.model.norm_eps;
    HAE_TRY(hae_rmsnorm(be, &(hae_rmsnorm_args){.x = rows(m->x, N), .weight = w->attn_norm, .out = rows(m->h, N), .eps = eps}));
    if (m->mla) HAE_TRY(mla_project(m, w, T));
    else HAE_TRY(hae_gemm(be, &(hae_gemm_args){.a = rows(m->h, N), .b = w->wqkv, .c = view2(&m->qkv, N, m->qkv_dim)}));
    hae_tensor q = qkv_heads(m, T, 0, m->Hq, m->Dk), k = qkv_heads(m, T, qd, m->Hkv, m->Dk);
    float theta = m->cfg.model.attention.rope_theta;
    const int r0 = m->mla ? (int)m->lora : 0; /* mla's rope dims follow the latent */
    HAE_TRY(hae_rope(be, &(hae_rope_args){.x = q, .pos0 = m->pos, .rot_dims = m->rot_dims, .rot_offset = r0,
                                          .theta = theta}));
    HAE_TRY(hae_rope(be, &(hae_rope_args){.x = k, .pos0 = m->pos, .rot_dims = m->rot_dims, .rot_offset = r0,
                                          .theta = theta}));
    /* the first G sequences' K/V on the GPU, the rest in the host tier (all of one or the other but for dsa
     * layers with memory.dsa_gpu_seqs); a micro-batch holds sequences [b0, b0 + B) of them */
    hae_tensor kc, vc, kh, vh, v = m->mla ? k : qkv_heads(m, T, qd + kd, m->Hkv, m->Dv);
    hae_kv_cache_layer(m->kv, (int)l, HAE_TIER_GPU, &kc, &vc);
    hae_kv_cache_layer(m->kv, (int)l, HAE_TIER_HOST, &kh, &vh);
    const int64_t Gall = kc.shape[0], b1 = m->b0 + m->B;
    kc = part_rows(kc, 0, m->b0, b1), vc = part_rows(vc, 0, m->b0, b1);
    kh = part_rows(kh, Gall, m->b0, b1), vh = part_rows(vh, Gall, m->b0, b1);
    const int64_t G = kc.shape[0], hs0 = m->b0 + G - Gall, hn = kh.shape[0]; /* our host-part sequences, in it */
    for (int part = 0; part < 2; part++) {
        const hae_tensor *kp = part ? &kh : &kc, *vp = part ? &vh : &vc;
        const int64_t r0b = part ? G : 0, n = kp->shape[0];
        if (!n) continue;
        HAE_TRY(hae_kv_write(be, &(hae_kv_write_args){.src = hae_tensor_narrow(k, 0, r0b, n), .cache = *kp,
                                                      .pos0 = m->pos}));
        if (!m->mla) /* mla's values are a view of the latent just written */
            HAE_TRY(hae_kv_write(be, &(hae_kv_write_args){.src = hae_tensor_narrow(v, 0, r0b, n), .cache = *vp,
                                                          .pos0 = m->pos}));
    }
    if (!G) kc = kh, vc = vh;
    hae_tensor att = hae_tensor_4d(m->att.data, m->dt, hae_backend_device(be), m->B, T, m->Hq, m->Dv);
    hae_slot_cache *sc = hn ? m->slots[l] : NULL;
    const int part = m->slot_part;
    m->pend = (attn_pending){.q = q, .kc = kc, .vc = vc, .slots = sc};
    if (w->kind != HAE_LAYER_DSA)
        return sc ? hae_slot_cache_prepare(sc, part, hs0, hn, m->pos, T, &m->pend.kc, &m->pend.vc, NULL, NULL)
                  : HAE_OK;
    HAE_TRY(dsa_select(m, l, T));
    hae_tensor idx = hae_tensor_3d(m->idx.data, HAE_I32, m->idx.device, m->B, T, m->topk), lens = m->seq_lens;
    hae_sparse_attention_args *sa = &m->pend.sa;
    *sa = (hae_sparse_attention_args){.q = q, .k_cache = kc, .v_cache = vc, .idx = idx, .seq_lens = lens, .out = att,
                                      .scale = m->scale};
    if (!sc) return HAE_OK;
    if (!G)
        return hae_slot_cache_prepare(sc, part, hs0, hn, m->pos, T, &sa->k_cache, &sa->v_cache, &sa->idx,
                                      &sa->seq_lens);
    /* a batch split between the tiers: one attention over both parts */
    sa->idx = hae_tensor_narrow(idx, 0, 0, G), sa->seq_lens = hae_tensor_narrow(lens, 0, 0, G);
    sa->k_cache2 = kh, sa->v_cache2 = vh;
    sa->idx2 = hae_tensor_narrow(idx, 0, G, hn), sa->seq_lens2 = hae_tensor_narrow(lens, 0, G, hn);
    return hae_slot_cache_prepare(sc, part, hs0, hn, m->pos, T, &sa->k_cache2, &sa->v_cache2, &sa->idx2,
                                  &sa->seq_lens2);
}

/* The attention attention_in prepared, once its fetch is in, and the output projection into x. */
static hae_status attention_out(hae_model *m, int64_t l, int64_t T) {
    const layer_weights *w = &m->layers[l];
    hae_backend *be = m->be;
    const int64_t N = m->B * T;
    if (m->pend.slots) HAE_TRY(hae_slot_cache_wait(m->pend.slots, m->slot_part));
    if (w->kind == HAE_LAYER_DSA) {
        HAE_TRY(hae_sparse_attention(be, &m->pend.sa));
    } else {
        hae_tensor att = hae_tensor_4d(m->att.data, m->dt, hae_backend_device(be), m->B, T, m->Hq, m->Dv);
        HAE_TRY(hae_attention(be, &(hae_attention_args){.q = m->pend.q, .k_cache = m->pend.kc, .v_cache = m->pend.vc,
                                                        .out = att, .pos0 = m->pos, .window = w->window, .scale = m->scale}));
    }
    if (m->slots[l] && hae_slot_cache_stages(m->slots[l], m->pos, T)) HAE_TRY(prefetch_after(m, l, T));
    hae_tensor o = view2(&m->att, N, m->Hq * m->Dv);
    if (m->mla) { /* each head's value up-projection W_UV_h of its attended latent */
        HAE_TRY(hae_gemm(be, &(hae_gemm_args){.a = hae_tensor_narrow(o, 1, 0, m->lora),
                                              .b = hae_tensor_narrow(w->wkvb, 0, m->nope, m->vd),
                                              .c = hae_tensor_narrow(rows(m->ov, N), 1, 0, m->vd), .batch = m->Hq,
                                              .stride_a = m->lora, .stride_b = (m->nope + m->vd) * m->lora,
                                              .stride_c = m->vd}));
        o = rows(m->ov, N);
    }
    return hae_gemm(be, &(hae_gemm_args){.a = o, .b = w->wo, .c = rows(m->x, N), .accumulate = true});
}

/* x += o_proj(gated_norm(linear_attn(conv(q, k, v), gates), g2(g1))), every projection of x in one GEMM. */
static hae_status linear_block(hae_model *m, int64_t l, int64_t T) {
    const layer_weights *w = &m->layers[l];
    hae_backend *be = m->be;
    const int64_t B = m->B, N = B * T, H = m->LH, HV = m->LHV, K = m->LK, V = m->LV;
    const float eps = m->cfg.model.norm_eps;
    HAE_TRY(hae_rmsnorm(be, &(hae_rmsnorm_args){.x = rows(m->x, N), .weight = w->attn_norm, .out = rows(m->h, N), .eps = eps}));
    hae_tensor proj = view2(&m->qkv, N, w->in_dim);
    HAE_TRY(hae_gemm(be, &(hae_gemm_args){.a = rows(m->h, N), .b = w->wqkv, .c = proj}));

    hae_tensor conv = view2(&m->conv_out, N, m->conv_ch);
    hae_tensor conv_in = head_view(&proj, B, T, 0, m->conv_ch, 0);
    HAE_TRY(hae_conv_short(be, &(hae_conv_short_args){.x = conv_in, .weight = w->conv_w, .state = w->conv_state,
                                                      .out = head_view(&conv, B, T, 0, m->conv_ch, 0), .silu = true}));
    int64_t col = m->conv_ch;
    hae_tensor g = {0}, beta = {0};
    if (w->lk.decay == HAE_DECAY_CHANNEL) {
        hae_tensor graw = view2(&m->graw, N, HV * K);
        HAE_TRY(hae_gemm(be, &(hae_gemm_args){.a = hae_tensor_narrow(proj, 1, col, V), .b = w->wf2, .c = graw}));
        g = head_view(&graw, B, T, 0, HV, K);
    } else if (w->lk.decay == HAE_DECAY_HEAD) {
        g = head_view(&proj, B, T, col, HV, 0);
    }
    col += w->f_dim;
    if (w->lk.delta) beta = head_view(&proj, B, T, col, HV, 0);
    col += w->b_dim;
    hae_tensor gout = view2(&m->gout, N, HV * V);
    HAE_TRY(hae_gemm(be, &(hae_gemm_args){.a = hae_tensor_narrow(proj, 1, col, V), .b = w->wg2, .c = gout}));

    hae_tensor o = view2(&m->att, N, HV * V);
    hae_linear_attn_args la = {
        .q = head_view(&conv, B, T, 0, H, K), .k = head_view(&conv, B, T, H * K, H, K),
        .v = head_view(&conv, B, T, 2 * H * K, HV, V), .g = g, .beta = beta, .A_log = w->A_log,
        .dt_bias = w->dt_bias, .state = w->state, .out = head_view(&o, B, T, 0, HV, V),
        .decay = w->lk.decay, .delta = w->lk.delta, .gate = m->cfg.model.linear_attn.safe_gate ? HAE_GATE_SAFE : HAE_GATE_SOFTPLUS,
        .lower_bound = m->cfg.model.linear_attn.lower_bound, .qk_map = w->lk.qk_map, .scale = 1.0f / sqrtf((float)K),
        .chunk = T == 1 ? 0 : (int)m->cfg.model.linear_attn.chunk_size,
        .workspace = m->workspace.data, .workspace_bytes = m->la_workspace,
    };
    HAE_TRY(hae_linear_attn(be, &la));
    hae_tensor o3 = hae_tensor_3d(o.data, o.dtype, o.device, N, HV, V);
    HAE_TRY(hae_gated_rmsnorm(be, &(hae_gated_rmsnorm_args){.x = o3, .gate = hae_tensor_3d(gout.data, gout.dtype, gout.device, N, HV, V),
                                                            .weight = w->o_norm, .out = o3, .eps = eps}));
    return hae_gemm(be, &(hae_gemm_args){.a = o, .b = w->wo, .c = rows(m->x, N), .accumulate = true});
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

static hae_status layer_block(hae_model *m, int64_t l, int64_t T) {
    if (m->layers[l].linear) return linear_block(m, l, T);
    HAE_TRY(attention_in(m, l, T));
    return attention_out(m, l, T);
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

/* One micro-batch's layers from the attention of dsa layer `from` (-1: the first layer) to the selection and
 * fetch of dsa layer d (m->L: through the LM head). */
static hae_status micro_segment(hae_model *v, int64_t from, int64_t d) {
    if (from >= 0) {
        HAE_TRY(attention_out(v, from, 1));
        HAE_TRY(mlp_block(v, from, 1));
    }
    for (int64_t l = from + 1; l < d; l++) {
        HAE_TRY(layer_block(v, l, 1));
        HAE_TRY(mlp_block(v, l, 1));
    }
    return d < v->L ? attention_in(v, d, 1) : lm_head(v, 1, true);
}

/* A decode step in micro-batches (runtime.micro_batches), interleaved at every dsa layer's attention: those
 * holding host-tier sequences go first, each leaving its dsa layer's fetch in flight, so that the fetches queue
 * on the side stream while the later micro-batches run their layers up to the same point; a micro-batch waits
 * for its fetch only when it resumes. Each runs the ops it would run as a batch of its own. */
static hae_status decode_micro(hae_model *m) {
    hae_model *order[HAE_MICRO_MAX];
    int n = 0;
    for (int host = 1; host >= 0; host--)
        for (int i = 0; i < m->n_mb; i++)
            if ((m->mb[i]->slot_part >= 0) == host) order[n++] = m->mb[i];
    for (int i = 0; i < n; i++) order[i]->pos = m->pos;
    for (int64_t from = -1, d; from < m->L; from = d) {
        for (d = from + 1; d < m->L && m->layers[d].kind != HAE_LAYER_DSA; d++) {}
        for (int i = 0; i < n; i++) HAE_TRY(micro_segment(order[i], from, d));
        if (m->trace && d < m->L) HAE_TRY(trace_step(m, d));
    }
    return HAE_OK;
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
    if (m->pos == 0) { /* a new context */
        HAE_TRY(hae_backend_zero(m->be, m->state_mem, m->state_bytes));
        HAE_TRY(reset_slots(m));
    }
    for (int64_t t0 = 0; t0 < T; t0 += m->chunk) {
        int64_t n = T - t0 < m->chunk ? T - t0 : m->chunk, N = m->B * n;
        for (int64_t b = 0; b < m->B; b++) memcpy(m->ids_host + b * n, tokens + b * T + t0, sizeof(int32_t) * (size_t)n);
        HAE_TRY(hae_backend_upload(m->be, m->ids.data, m->ids_host, sizeof(int32_t) * (size_t)N));
        HAE_TRY(hae_embedding(m->be, &(hae_embedding_args){.ids = rows(m->ids, N), .table = m->embed, .out = rows(m->x, N)}));
        if (m->has_dsa) HAE_TRY(dsa_lengths(m, n));
        HAE_TRY(prefetch_after(m, -1, n));
        if (T == 1 && m->n_mb > 1) {
            HAE_TRY(decode_micro(m));
        } else {
            for (int64_t l = 0; l < m->L; l++) {
                HAE_TRY(layer_block(m, l, n));
                HAE_TRY(mlp_block(m, l, n));
            }
            HAE_TRY(lm_head(m, n, t0 + n == T));
        }
        m->pos += n;
    }
    *logits = m->logits;
    return HAE_OK;
}

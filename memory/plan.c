/* The analytic memory plan (DESIGN.md §2): bytes per tier and kind of a config at a context length, the
 * same for its full-attention twin, and the longest context that fits a GPU budget; nothing is built.
 * What the model allocates (weights, activations, K/V bytes per token, states) comes from
 * hae_model_plan_get; this file adds the placement and the pages. A dsa layer's bytes per token there
 * hold its K/V (in an FP8 layout with memory.dsa_kv_fp8) and its indexer key, counted apart. */
#include "internal.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* Saturating size arithmetic: SIZE_MAX stands for "does not fit anywhere". */
static size_t sat_mul(size_t a, size_t b) { return b && a > SIZE_MAX / b ? SIZE_MAX : a * b; }
static size_t sat_add(size_t a, size_t b) { return a > SIZE_MAX - b ? SIZE_MAX : a + b; }

static int64_t ceil_to(int64_t n, int64_t m) { return (n + m - 1) / m * m; }
static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

void hae_mem_twin(const hae_config *cfg, hae_config *twin) {
    if (twin != cfg) memcpy(twin, cfg, sizeof *twin);
    for (int64_t l = 0; l < twin->model.n_layers && l < HAE_MAX_LAYERS; l++) twin->model.layers[l] = HAE_LAYER_FULL;
    twin->memory.dsa_kv = twin->memory.full_kv = twin->memory.linear_state = HAE_TIER_GPU;
    twin->memory.dsa_kv_fp8 = false;
    twin->sweep.n_axes = 0;
}

/* FP8 key bytes and scales one token adds to a dsa layer's indexer cache (hae_index_cache's layout). */
static size_t index_bytes_per_token(const hae_config *cfg) {
    const int64_t D = cfg->model.dsa.index_head_dim;
    return (size_t)(D + 4 * ((D + 127) / 128));
}

/* The plan of cfg from the model's plan of it (mp) at the same context, with the dsa K/V of the first gpu_seqs
 * sequences on the GPU when they are in the host tier. */
static void place(const hae_config *cfg, const hae_model_plan *mp, int64_t gpu_seqs, hae_mem_plan *out) {
    memset(out->bytes, 0, sizeof out->bytes);
    memset(out->total, 0, sizeof out->total);
    const int64_t L = mp->context, B = cfg->runtime.batch, P = cfg->memory.page_size, Pi = cfg->model.dsa.page_size,
                  cache = cfg->memory.cache_tokens;
    size_t(*b)[HAE_MEM_KIND_COUNT] = out->bytes;
    const size_t Bz = (size_t)B;
    b[HAE_TIER_GPU][HAE_MEM_WEIGHTS] = mp->weight_bytes;
    b[HAE_TIER_GPU][HAE_MEM_ACTIVATIONS] = mp->activation_bytes;
    size_t staging = 0; /* one host-tier layer's K/V, the largest: what a run stages it through */
    for (int64_t l = 0; l < cfg->model.n_layers; l++) {
        const hae_layer_kind kind = cfg->model.layers[l];
        const size_t kv_bpt =
            kind == HAE_LAYER_DSA ? mp->kv_bytes_per_token[l] - index_bytes_per_token(cfg) : mp->kv_bytes_per_token[l];
        if (hae_linear_kind_of(kind, &(hae_linear_kind){0})) {
            const size_t s = sat_mul(Bz, mp->state_bytes_per_seq[l]);
            /* the running batch's states are on the GPU; the host tier parks them between requests */
            b[HAE_TIER_GPU][HAE_MEM_LINEAR_STATE] = sat_add(b[HAE_TIER_GPU][HAE_MEM_LINEAR_STATE], s);
            if (cfg->memory.linear_state == HAE_TIER_HOST)
                b[HAE_TIER_HOST][HAE_MEM_LINEAR_STATE] = sat_add(b[HAE_TIER_HOST][HAE_MEM_LINEAR_STATE], s);
        } else if (kind == HAE_LAYER_DSA) {
            /* host: the first gpu_seqs sequences' pages on the GPU all the same */
            const size_t on_gpu = cfg->memory.dsa_kv == HAE_TIER_HOST ? (size_t)gpu_seqs : Bz, spilled = Bz - on_gpu;
            const size_t seq = sat_mul((size_t)ceil_to(L, P), kv_bpt);
            b[HAE_TIER_GPU][HAE_MEM_DSA_KV] = sat_add(b[HAE_TIER_GPU][HAE_MEM_DSA_KV], sat_mul(on_gpu, seq));
            if (spilled) {
                b[HAE_TIER_HOST][HAE_MEM_DSA_KV] = sat_add(b[HAE_TIER_HOST][HAE_MEM_DSA_KV], sat_mul(spilled, seq));
                const size_t slots = sat_mul(sat_mul(spilled, (size_t)min64(cache, L)), kv_bpt);
                b[HAE_TIER_GPU][HAE_MEM_DSA_KV] = sat_add(b[HAE_TIER_GPU][HAE_MEM_DSA_KV], slots);
                /* prefill chunks past the slots are staged whole */
                const size_t whole = sat_mul(sat_mul(spilled, (size_t)L), kv_bpt);
                if (cache < L && whole > staging) staging = whole;
            }
            const int64_t ipages = ceil_to(L, Pi) / Pi;
            const size_t keys = sat_mul(sat_mul(Bz, (size_t)ipages),
                                        sat_add(sat_mul((size_t)Pi, index_bytes_per_token(cfg)), sizeof(int32_t)));
            b[HAE_TIER_GPU][HAE_MEM_INDEX_KEYS] = sat_add(b[HAE_TIER_GPU][HAE_MEM_INDEX_KEYS], keys);
        } else {
            const hae_tier t = cfg->memory.full_kv;
            const int64_t slots = mp->kv_slots[l];
            const size_t pages = sat_mul(sat_mul(Bz, (size_t)ceil_to(slots, P)), kv_bpt);
            b[t][HAE_MEM_FULL_KV] = sat_add(b[t][HAE_MEM_FULL_KV], pages);
            /* streamed: each attention stages the layer's slots whole */
            const size_t whole = sat_mul(sat_mul(Bz, (size_t)slots), kv_bpt);
            if (t == HAE_TIER_HOST && whole > staging) staging = whole;
        }
    }
    /* one staging buffer serves every host-tier layer; counted with the full/swa K/V when those stream */
    const hae_mem_kind sk = cfg->memory.full_kv == HAE_TIER_HOST ? HAE_MEM_FULL_KV : HAE_MEM_DSA_KV;
    b[HAE_TIER_GPU][sk] = sat_add(b[HAE_TIER_GPU][sk], staging);
    for (int t = 0; t < HAE_TIER_COUNT; t++)
        for (int k = 0; k < HAE_MEM_KIND_COUNT; k++) out->total[t] = sat_add(out->total[t], b[t][k]);
}

/* The plan at `context` (dsa_kv auto resolved against gpu_budget bytes, 0: unbounded); also the largest
 * bytes one token adds to a sequence, when asked. */
static hae_status plan_at(const hae_config *cfg, int64_t context, size_t gpu_budget, hae_mem_plan *out,
                          size_t *token_bytes) {
    memset(out, 0, sizeof *out);
    hae_config *c = malloc(sizeof *c), *tw = malloc(sizeof *tw);
    hae_model_plan *mp = malloc(sizeof *mp), *tp = malloc(sizeof *tp);
    hae_status st = c && tw && mp && tp ? HAE_OK : hae_error(HAE_ERR_OOM, "memory plan: out of host memory");
    if (st == HAE_OK) {
        memcpy(c, cfg, sizeof *c);
        c->runtime.prefill = context;
        c->runtime.decode = 0;
        c->sweep.n_axes = 0;
        hae_mem_twin(c, tw);
        st = hae_model_plan_get(c, NULL, mp);
        if (st == HAE_OK) st = hae_model_plan_get(tw, NULL, tp);
        if (st != HAE_OK) st = hae_error_wrap(st, "memory plan of %s at context %" PRId64, cfg->name, context);
    }
    if (st == HAE_OK) {
        out->context = context;
        out->batch = c->runtime.batch;
        /* dsa_kv auto: the GPU when everything fits the budget there, else the host tier for the fewest
         * sequences that makes it fit (all of them when none does). Moving a sequence to the host frees its
         * pages but adds its slots and staging, so the GPU bytes need not fall with every one: each split is
         * tried, the most sequences on the GPU first. */
        const bool autoplace = c->memory.dsa_kv == HAE_TIER_AUTO;
        int64_t gpu_seqs = c->memory.dsa_gpu_seqs > 0 ? c->memory.dsa_gpu_seqs : 0;
        if (autoplace || gpu_seqs >= c->runtime.batch) c->memory.dsa_kv = HAE_TIER_GPU, gpu_seqs = 0;
        place(c, mp, gpu_seqs, out);
        if (autoplace && gpu_budget > 0 && out->total[HAE_TIER_GPU] > gpu_budget) {
            c->memory.dsa_kv = HAE_TIER_HOST;
            for (gpu_seqs = c->runtime.batch - 1; gpu_seqs > 0; gpu_seqs--) {
                place(c, mp, gpu_seqs, out);
                if (out->total[HAE_TIER_GPU] <= gpu_budget) break;
            }
            if (gpu_seqs == 0) place(c, mp, 0, out);
        }
        out->dsa_kv = c->memory.dsa_kv;
        out->dsa_gpu_seqs = out->dsa_kv == HAE_TIER_HOST ? gpu_seqs : c->runtime.batch;
        if (token_bytes) {
            size_t per = 16; /* the indexer's logits and slack */
            for (int64_t l = 0; l < c->model.n_layers; l++)
                per += mp->kv_bytes_per_token[l] > tp->kv_bytes_per_token[l] ? mp->kv_bytes_per_token[l]
                                                                             : tp->kv_bytes_per_token[l];
            *token_bytes = sat_mul(per, (size_t)c->runtime.batch);
        }
    }
    free(c), free(tw), free(mp), free(tp);
    return st;
}

hae_status hae_mem_plan_get(const hae_config *cfg, int64_t context, hae_mem_plan *out) {
    if (!cfg || !out) return hae_error(HAE_ERR_INVALID, "memory plan: NULL argument");
    if (context < 1 || context > HAE_MEM_MAX_CONTEXT)
        return hae_error(HAE_ERR_INVALID, "memory plan: context %" PRId64 " (expected 1..2^40 tokens)", context);
    HAE_TRY(plan_at(cfg, context, (size_t)cfg->memory.gpu_budget, out, NULL));
    for (int t = 0; t < HAE_TIER_COUNT; t++)
        if (out->total[t] == SIZE_MAX)
            return hae_error(HAE_ERR_INVALID, "memory plan of %s: %s bytes at context %" PRId64 " x batch %" PRId64
                             " overflow 64 bits", cfg->name, hae_tier_name((hae_tier)t), context, out->batch);
    return HAE_OK;
}

/* Whether the plan at `context` fits the GPU budget and, when memory.host_budget is set, the host's. */
static hae_status fits(const hae_config *cfg, int64_t context, size_t budget, bool *ok) {
    hae_mem_plan p;
    HAE_TRY(plan_at(cfg, context, budget, &p, NULL));
    const size_t host = (size_t)cfg->memory.host_budget;
    *ok = p.total[HAE_TIER_GPU] <= budget && (!host || p.total[HAE_TIER_HOST] <= host);
    return HAE_OK;
}

hae_status hae_mem_max_context(const hae_config *cfg, size_t gpu_budget, int64_t *out) {
    if (!cfg || !out) return hae_error(HAE_ERR_INVALID, "memory plan: NULL argument");
    *out = 0;
    hae_mem_plan p;
    size_t per_token = 0;
    HAE_TRY(plan_at(cfg, 1, gpu_budget, &p, &per_token));
    bool ok = true;
    HAE_TRY(fits(cfg, 1, gpu_budget, &ok));
    if (!ok) return HAE_OK;
    /* contexts past cap could overflow the model's own byte counts */
    int64_t cap = HAE_MEM_MAX_CONTEXT;
    if ((size_t)cap > (SIZE_MAX / 4) / per_token) cap = (int64_t)((SIZE_MAX / 4) / per_token);
    /* Doubling, then bisection between a context that fits (lo) and one that does not (hi). The GPU
     * bytes grow with the context but for the indexer's logits buffer, which the model slices to stay
     * near 256 MiB: where that saws, the answer fits but may miss a slightly longer one. */
    int64_t lo = 1, hi = 2;
    while (ok && hi <= cap) {
        HAE_TRY(fits(cfg, hi, gpu_budget, &ok));
        if (ok) lo = hi, hi *= 2;
    }
    if (ok) { /* hi passed cap with every doubling fitting */
        HAE_TRY(fits(cfg, cap, gpu_budget, &ok));
        if (ok) return *out = cap, HAE_OK;
        hi = cap;
    }
    while (hi - lo > 1) {
        int64_t mid = lo + (hi - lo) / 2;
        HAE_TRY(fits(cfg, mid, gpu_budget, &ok));
        if (ok) lo = mid;
        else hi = mid;
    }
    *out = lo;
    return HAE_OK;
}

/* Models with dsa layers on the CPU: with a top-k that covers the context, DSA is full attention
 * (the derived indexer adds no weights, so the twin has the same ones); decode after prefill equals
 * one prefill with a top-k that drops tokens; the indexer changes the result when it must choose;
 * saved names, the KV accounting with the indexer's 132 bytes per token, snapshots; the selection trace. */
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *yaml_fmt = "name: tiny-dsa\n"
                              "seed: 21\n"
                              "model:\n"
                              "  vocab_size: 47\n"
                              "  d_model: 32\n"
                              "  n_layers: 2\n"
                              "  layer_pattern: [%s, %s]\n"
                              "  mlp: {intermediate_size: 40}\n"
                              "  attention: {num_heads: 4, num_kv_heads: 2, head_dim: 8, rope: full}\n"
                              "  dsa: {index_n_heads: 2, index_head_dim: 128, index_topk: %d, index_rope_dim: %d,\n"
                              "        derived: %s, page_size: 4}\n"
                              "runtime:\n"
                              "  backend: cpu\n"
                              "  dtype: %s\n"
                              "  batch: 2\n"
                              "  prefill: 21\n"
                              "  decode: 6\n"
                              "  prefill_chunk: %d\n";

#define CTX 27

static void make_cfg(hae_config *cfg, const char *k0, const char *k1, int topk, int rope, bool derived,
                     const char *dtype, int chunk) {
    char y[2048];
    snprintf(y, sizeof y, yaml_fmt, k0, k1, topk, rope, derived ? "true" : "false", dtype, chunk);
    tu_config(y, cfg);
}

static const int64_t one_shot[] = {CTX};
static const int64_t prefill_then_decode[] = {21, 1, 1, 1, 1, 1, 1};
static const int64_t ragged[] = {5, 1, 17, 1, 3};

/* The mla form (latent 16, 4 heads of nope 8 + rope 4, values 6) in place of gqa. */
static void use_mla(hae_config *cfg) {
    cfg->model.attention.form = HAE_ATTN_MLA;
    cfg->model.attention.kv_lora_rank = 16;
    cfg->model.attention.qk_nope_head_dim = 8;
    cfg->model.attention.qk_rope_head_dim = 4;
    cfg->model.attention.v_head_dim = 6;
}

Test(model_dsa, covering_topk_is_full_attention) {
    hae_backend *be = tu_cpu();
    for (int dm = 0; dm < 4; dm++) {
        const int dec = dm % 2, mla = dm / 2;
        hae_config dsa, full;
        make_cfg(&dsa, "dsa", "full", 64, 0, true, "f32", 8);
        make_cfg(&full, "full", "full", 64, 0, true, "f32", 8);
        if (mla) use_mla(&dsa), use_mla(&full);
        hae_model *a = tu_model(be, &dsa), *b = tu_model(be, &full);
        int32_t tok[2 * CTX];
        tu_tokens(&dsa, CTX, tok, 3);
        const int64_t *lens = dec ? prefill_then_decode : one_shot;
        int n_lens = dec ? 7 : 1;
        float *la = tu_model_logits(a, &dsa, CTX, tok, lens, n_lens), *lb = tu_model_logits(b, &full, CTX, tok, lens, n_lens);
        double d = tu_rel_rms(la, lb, 2 * CTX * dsa.model.vocab_size);
        cr_expect_leq(d, 1e-6, "%s %s: dsa with top-64 of a 27-token context vs full attention: %.3g",
                      mla ? "mla" : "gqa", dec ? "prefill then decode" : "one prefill", d);
        free(la), free(lb);
        hae_model_destroy(a), hae_model_destroy(b);
    }
    hae_backend_destroy(be);
}

Test(model_dsa, decode_after_prefill_equals_one_prefill) {
    hae_backend *be = tu_cpu();
    for (int form = 0; form < 4; form++) {
        const bool derived = form == 0 || form == 3;
        const int rope = form == 2 ? 16 : 0;
        hae_config cfg, cfg0;
        make_cfg(&cfg, "dsa", "dsa", 5, rope, derived, "f32", 8);
        make_cfg(&cfg0, "dsa", "dsa", 5, rope, derived, "f32", 0);
        if (form == 3) use_mla(&cfg), use_mla(&cfg0);
        hae_model *m = tu_model(be, &cfg), *m0 = tu_model(be, &cfg0);
        int32_t tok[2 * CTX];
        tu_tokens(&cfg, CTX, tok, 40 + (uint64_t)form);
        float *a = tu_model_logits(m0, &cfg0, CTX, tok, one_shot, 1);
        float *b = tu_model_logits(m, &cfg, CTX, tok, prefill_then_decode, 7);
        float *c = tu_model_logits(m, &cfg, CTX, tok, ragged, 5);
        int64_t n = 2 * CTX * cfg.model.vocab_size;
        const char *what = form == 3 ? "mla, derived" : derived ? "derived" : rope ? "learned, indexer rope 16" : "learned";
        cr_expect_leq(tu_rel_rms(b, a, n), 1e-5, "%s top-5: prefill then decode vs one prefill: %.3g", what,
                      tu_rel_rms(b, a, n));
        cr_expect_leq(tu_rel_rms(c, a, n), 1e-5, "%s top-5: ragged forwards vs one prefill: %.3g", what,
                      tu_rel_rms(c, a, n));
        /* the same model with a covering top-k attends to more tokens: other logits */
        hae_config wide = cfg0;
        wide.model.dsa.index_topk = 64;
        hae_model *mw = tu_model(be, &wide);
        float *w = tu_model_logits(mw, &wide, CTX, tok, one_shot, 1);
        cr_expect_gt(tu_rel_rms(w, a, n), 1e-3, "%s: top-5 and top-64 give the same logits: is the indexer used?", what);
        free(a), free(b), free(c), free(w);
        hae_model_destroy(m), hae_model_destroy(m0), hae_model_destroy(mw);
    }
    hae_backend_destroy(be);
}

/* memory.dsa_kv_fp8: dsa layers cache their form's FP8 layout, mla's 656-byte token or gqa's heads of 128 in 144
 * bytes each for K and V (full layers keep the run's dtype). With a covering top-k the logits are the bf16 cache's
 * to FP8 rounding; decode after prefill and ragged forwards equal one prefill; the plan and the allocation count the
 * FP8 bytes and the indexer's 132 a token for the dsa layer. */
Test(model_dsa, fp8_caches) {
    hae_backend *be = tu_cpu();
    for (int gqa = 0; gqa < 2; gqa++) {
        hae_config bf, q8, q8c;
        make_cfg(&bf, "dsa", "full", 64, 0, false, "bf16", 8);
        if (gqa) {
            bf.model.attention.head_dim = 128;
        } else {
            use_mla(&bf);
            bf.model.attention.kv_lora_rank = HAE_MLA_LATENT, bf.model.attention.qk_rope_head_dim = HAE_MLA_ROPE;
        }
        const char *form = gqa ? "gqa" : "mla";
        const size_t hkv = (size_t)bf.model.attention.num_kv_heads;
        const size_t dsa = gqa ? 2 * hkv * HAE_FP8_HEAD(128) : HAE_MLA_FP8_ROW, full = gqa ? 2 * hkv * 128 * 2 : 576 * 2;
        q8 = bf, q8.memory.dsa_kv_fp8 = true;
        int32_t tok[2 * CTX];
        tu_tokens(&bf, CTX, tok, 8 + (uint64_t)gqa);
        const int64_t n = 2 * CTX * bf.model.vocab_size;
        hae_model *mb = tu_model(be, &bf), *m8 = tu_model(be, &q8);
        float *lb = tu_model_logits(mb, &bf, CTX, tok, one_shot, 1), *l8 = tu_model_logits(m8, &q8, CTX, tok, one_shot, 1);
        const double d = tu_rel_rms(l8, lb, n);
        cr_expect(d > 1e-4 && d < 2e-2, "%s: logits over the FP8 cache vs the bf16 one: rel rms %.3g (want FP8 "
                  "rounding: 1e-4 .. 2e-2)", form, d);
        hae_model_plan p;
        cr_assert_eq(hae_model_plan_get(&q8, NULL, &p), HAE_OK, "%s", hae_last_error());
        hae_model_stats st;
        hae_model_stats_get(m8, &st);
        cr_expect_eq(p.kv_bytes_per_token[0], dsa + 132, "%s dsa: %zu bytes of FP8 K/V and the indexer's 132", form, dsa);
        cr_expect_eq(p.kv_bytes_per_token[1], full, "%s full: bf16 K/V", form);
        cr_expect_eq(st.kv_bytes, p.kv_bytes);
        free(lb), free(l8);
        hae_model_destroy(mb), hae_model_destroy(m8);

        q8c = q8, q8.model.dsa.index_topk = q8c.model.dsa.index_topk = 5, q8.runtime.prefill_chunk = 0;
        hae_model *one = tu_model(be, &q8), *chunked = tu_model(be, &q8c);
        float *a = tu_model_logits(one, &q8, CTX, tok, one_shot, 1);
        float *b = tu_model_logits(chunked, &q8c, CTX, tok, prefill_then_decode, 7);
        float *c = tu_model_logits(chunked, &q8c, CTX, tok, ragged, 5);
        cr_expect_leq(tu_rel_rms(b, a, n), 1e-5, "%s FP8 cache, top-5: prefill then decode vs one prefill: %.3g", form,
                      tu_rel_rms(b, a, n));
        cr_expect_leq(tu_rel_rms(c, a, n), 1e-5, "%s FP8 cache, top-5: ragged forwards vs one prefill: %.3g", form,
                      tu_rel_rms(c, a, n));
        free(a), free(b), free(c);
        hae_model_destroy(one), hae_model_destroy(chunked);
    }
    hae_backend_destroy(be);
}

/* A bounded indexer-logits buffer computes a chunk's logits in slices of tokens: same selections,
 * same logits, for prefill chunks that are and are not a multiple of the slice. */
Test(model_dsa, sliced_indexer_logits_equal_one_pass) {
    hae_backend *be = tu_cpu();
    hae_config cfg;
    make_cfg(&cfg, "dsa", "dsa", 5, 16, false, "f32", 8);
    int32_t tok[2 * CTX];
    tu_tokens(&cfg, CTX, tok, 77);
    hae_model *one = tu_model(be, &cfg);
    float *ref = tu_model_logits(one, &cfg, CTX, tok, ragged, 5);
    const int64_t n = 2 * CTX * cfg.model.vocab_size;
    for (int slice = 1; slice <= 3; slice++) {
        hae_model_options opt = {.all_logits = true, .index_logits_bytes = sizeof(float) * 2 * CTX * (size_t)slice};
        hae_model *m = NULL;
        cr_assert_eq(hae_model_create(&cfg, be, &opt, &m), HAE_OK, "%s", hae_last_error());
        float *got = tu_model_logits(m, &cfg, CTX, tok, ragged, 5);
        cr_expect_eq(tu_rel_rms(got, ref, n), 0.0, "logits in slices of %d tokens vs one pass: %.3g", slice,
                     tu_rel_rms(got, ref, n));
        free(got);
        hae_model_destroy(m);
    }
    free(ref);
    hae_model_destroy(one);
    hae_backend_destroy(be);
}

Test(model_dsa, saved_names_kv_accounting_and_snapshot) {
    hae_backend *be = tu_cpu();
    hae_config cfg;
    make_cfg(&cfg, "dsa", "full", 5, 16, false, "bf16", 8);
    hae_model_plan p;
    cr_assert_eq(hae_model_plan_get(&cfg, NULL, &p), HAE_OK, "%s", hae_last_error());
    hae_model *m = tu_model(be, &cfg);
    hae_model_stats st;
    hae_model_stats_get(m, &st);
    cr_expect_eq(p.kv_bytes_per_token[0], 2 * 2 * 8 * 2 + 132, "dsa: K and V in bf16 plus 128 FP8 bytes and a scale");
    cr_expect_eq(p.kv_bytes_per_token[1], 2 * 2 * 8 * 2);
    cr_expect_eq(st.kv_bytes, p.kv_bytes);
    /* the indexer cache: 27 tokens in pages of 4 = 7 pages per sequence, plus the block tables */
    cr_expect_geq(p.kv_bytes, (size_t)2 * CTX * (64 + 132) + (size_t)2 * CTX * 64);
    cr_expect_eq(st.n_params, p.n_params);

    char path[512];
    tu_tmp_path("dsa.safetensors", path, sizeof path);
    cr_assert_eq(hae_model_save(m, path), HAE_OK, "%s", hae_last_error());
    hae_st_file *f;
    cr_assert_eq(hae_st_open(path, &f), HAE_OK, "%s", hae_last_error());
    static const struct {
        const char *name;
        int64_t r, c;
    } want[] = {
        {"model.layers.0.self_attn.indexer.wq.weight", 256, 32},
        {"model.layers.0.self_attn.indexer.wk.weight", 128, 32},
        {"model.layers.0.self_attn.indexer.weights_proj.weight", 2, 32},
        {"model.layers.0.self_attn.indexer.k_norm.weight", 128, 0},
        {"model.layers.0.self_attn.indexer.k_norm.bias", 128, 0},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const hae_st_tensor *t = hae_st_find(f, want[i].name);
        cr_expect(t, "%s missing", want[i].name);
        if (t) cr_expect(t->shape[0] == want[i].r && (want[i].c == 0 || t->shape[1] == want[i].c), "%s shape", want[i].name);
    }
    cr_expect_null(hae_st_find(f, "model.layers.1.self_attn.indexer.wq.weight"), "layer 1 is full");
    hae_st_close(f);
    remove(path);

    /* a snapshot holds the indexer cache too: a branch continues identically */
    int32_t tok[2 * CTX], step[2] = {5, 6};
    tu_tokens(&cfg, CTX, tok, 8);
    hae_tensor lg;
    cr_assert_eq(hae_model_forward(m, tok, 21, &lg), HAE_OK, "%s", hae_last_error());
    size_t n = hae_model_snapshot_bytes(m);
    void *snap = malloc(n);
    cr_assert_eq(hae_model_snapshot_save(m, snap, n), HAE_OK, "%s", hae_last_error());
    int64_t V = cfg.model.vocab_size;
    float *a = malloc(sizeof(float) * (size_t)V);
    cr_assert_eq(hae_model_forward(m, step, 1, &lg), HAE_OK);
    memcpy(a, (float *)lg.data + 21 * V, sizeof(float) * (size_t)V);
    cr_assert_eq(hae_model_forward(m, step, 1, &lg), HAE_OK);
    cr_assert_eq(hae_model_snapshot_restore(m, snap, n), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(hae_model_forward(m, step, 1, &lg), HAE_OK);
    cr_expect(memcmp(a, (float *)lg.data + 21 * V, sizeof(float) * (size_t)V) == 0, "restored prefix continues identically");
    free(a), free(snap);
    hae_model_destroy(m);
    hae_backend_destroy(be);
}

/* ---------------------------------------------------------------- the derived indexer's recall */

/* The derived indexer (q heads placed at their kv head's dims, the kv heads side by side as the one
 * key) through the real ops: Hadamard, FP8, the page cache, logits, top-k. Its selection is compared
 * with the true top-k by attention mass (the sum over heads of softmax(scale q_h . k_s)) on random
 * inputs, and the recall printed. One head: the same ranking up to FP8 rounding. Several heads: a
 * ReLU-sum of logits is not a sum of softmaxes, so the two differ; the recall says by how much. */
static double derived_recall(int64_t Hq, int64_t Hkv, int64_t Dh, int64_t T, int64_t k, uint64_t seed) {
    hae_backend *be = tu_cpu();
    const int64_t DI = 128, G = Hq / Hkv, P = 16, pages = (T + P - 1) / P, row = P * (DI + 4);
    cr_assert(Hkv * Dh <= DI);
    tu_rng r = tu_rng_make(seed);
    float *q = malloc(sizeof(float) * (size_t)(T * Hq * Dh)), *kk = malloc(sizeof(float) * (size_t)(T * Hkv * Dh));
    tu_fill(q, HAE_F32, T * Hq * Dh, &r, -1, 1);
    tu_fill(kk, HAE_F32, T * Hkv * Dh, &r, -1, 1);
    float *qi = calloc((size_t)(T * Hq * DI), sizeof(float)), *ki = calloc((size_t)(T * DI), sizeof(float));
    for (int64_t t = 0; t < T; t++) {
        for (int64_t h = 0; h < Hq; h++)
            memcpy(qi + (t * Hq + h) * DI + (h / G) * Dh, q + (t * Hq + h) * Dh, sizeof(float) * (size_t)Dh);
        memcpy(ki + t * DI, kk + t * Hkv * Dh, sizeof(float) * (size_t)(Hkv * Dh));
    }
    uint8_t *q8 = malloc((size_t)(T * Hq * DI)), *k8 = malloc((size_t)(T * DI)), *cache = malloc((size_t)(pages * row));
    float *qs = malloc(sizeof(float) * (size_t)(T * Hq)), *ks = malloc(sizeof(float) * (size_t)T);
    float *ones = malloc(sizeof(float) * (size_t)(T * Hq)), *logits = malloc(sizeof(float) * (size_t)(T * T));
    int32_t *table = malloc(sizeof(int32_t) * (size_t)pages), lens[1] = {(int32_t)T}, *cand = malloc(sizeof(int32_t) * (size_t)T);
    int32_t *sel = malloc(sizeof(int32_t) * (size_t)(T * k));
    for (int64_t i = 0; i < T * Hq; i++) ones[i] = 1.0f;
    for (int64_t j = 0; j < pages; j++) table[j] = (int32_t)(pages - 1 - j); /* pages in reverse order */
    for (int64_t t = 0; t < T; t++) cand[t] = (int32_t)(t + 1);
    hae_tensor tq = hae_tensor_2d(qi, HAE_F32, HAE_CPU, T * Hq, DI), tk = hae_tensor_2d(ki, HAE_F32, HAE_CPU, T, DI);
    cr_assert_eq(hae_hadamard(be, &(hae_hadamard_args){.x = tq}), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(hae_hadamard(be, &(hae_hadamard_args){.x = tk}), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(hae_fp8_quant(be, &(hae_fp8_quant_args){.x = tq, .q = hae_tensor_2d(q8, HAE_FP8_E4M3, HAE_CPU, T * Hq, DI),
                                                         .scale = hae_tensor_2d(qs, HAE_F32, HAE_CPU, T * Hq, 1)}),
                 HAE_OK, "%s", hae_last_error());
    cr_assert_eq(hae_fp8_quant(be, &(hae_fp8_quant_args){.x = tk, .q = hae_tensor_2d(k8, HAE_FP8_E4M3, HAE_CPU, T, DI),
                                                         .scale = hae_tensor_2d(ks, HAE_F32, HAE_CPU, T, 1)}),
                 HAE_OK, "%s", hae_last_error());
    hae_index_cache ic = {.pages = hae_tensor_2d(cache, HAE_FP8_E4M3, HAE_CPU, pages, row),
                          .block_table = hae_tensor_2d(table, HAE_I32, HAE_CPU, 1, pages), .page_size = (int)P,
                          .head_dim = (int)DI};
    hae_tensor tl = hae_tensor_1d(lens, HAE_I32, HAE_CPU, 1);
    cr_assert_eq(hae_index_write(be, &(hae_index_write_args){.k = hae_tensor_3d(k8, HAE_FP8_E4M3, HAE_CPU, 1, T, DI),
                                                             .k_scale = hae_tensor_3d(ks, HAE_F32, HAE_CPU, 1, T, 1),
                                                             .cache = ic, .seq_lens = tl}),
                 HAE_OK, "%s", hae_last_error());
    cr_assert_eq(hae_index_logits(be, &(hae_index_logits_args){
                                          .q = hae_tensor_4d(q8, HAE_FP8_E4M3, HAE_CPU, 1, T, Hq, DI),
                                          .w = hae_tensor_3d(ones, HAE_F32, HAE_CPU, 1, T, Hq), .cache = ic,
                                          .seq_lens = tl, .logits = hae_tensor_3d(logits, HAE_F32, HAE_CPU, 1, T, T),
                                          .q_scale = hae_tensor_3d(qs, HAE_F32, HAE_CPU, 1, T, Hq), .w_scale = 1.0f}),
                 HAE_OK, "%s", hae_last_error());
    cr_assert_eq(hae_topk(be, &(hae_topk_args){.logits = hae_tensor_2d(logits, HAE_F32, HAE_CPU, T, T),
                                               .lens = hae_tensor_1d(cand, HAE_I32, HAE_CPU, T),
                                               .out = hae_tensor_2d(sel, HAE_I32, HAE_CPU, T, k)}),
                 HAE_OK, "%s", hae_last_error());
    /* recall over the queries that have more than k candidates */
    double hit = 0, total = 0, *mass = malloc(sizeof(double) * (size_t)T);
    int64_t *order = malloc(sizeof(int64_t) * (size_t)T);
    for (int64_t t = k; t < T; t++) {
        for (int64_t s = 0; s <= t; s++) mass[s] = 0;
        for (int64_t h = 0; h < Hq; h++) {
            double mx = -INFINITY, z = 0, *sc = malloc(sizeof(double) * (size_t)(t + 1));
            for (int64_t s = 0; s <= t; s++) {
                double dot = 0;
                for (int64_t e = 0; e < Dh; e++) dot += (double)q[(t * Hq + h) * Dh + e] * kk[(s * Hkv + h / G) * Dh + e];
                sc[s] = dot / sqrt((double)Dh);
                if (sc[s] > mx) mx = sc[s];
            }
            for (int64_t s = 0; s <= t; s++) z += sc[s] = exp(sc[s] - mx);
            for (int64_t s = 0; s <= t; s++) mass[s] += sc[s] / z;
            free(sc);
        }
        for (int64_t s = 0; s <= t; s++) order[s] = s;
        for (int64_t i = 0; i < k; i++) /* partial selection sort: the k heaviest */
            for (int64_t j = i + 1; j <= t; j++)
                if (mass[order[j]] > mass[order[i]]) {
                    int64_t x = order[i];
                    order[i] = order[j], order[j] = x;
                }
        for (int64_t i = 0; i < k; i++)
            for (int64_t j = 0; j < k; j++) hit += sel[t * k + j] == order[i];
        total += (double)k;
    }
    free(q), free(kk), free(qi), free(ki), free(q8), free(k8), free(cache), free(qs), free(ks), free(ones);
    free(logits), free(table), free(cand), free(sel), free(mass), free(order);
    hae_backend_destroy(be);
    return hit / total;
}

Test(model_dsa, derived_indexer_recall_of_attention_mass) {
    double one = derived_recall(1, 1, 64, 256, 16, 1), gqa = derived_recall(4, 2, 32, 256, 16, 2);
    printf("derived indexer recall@16 of the attention-mass top-16 (256 tokens, random q, k): "
           "1 head %.3f, 4 q heads / 2 kv heads %.3f\n", one, gqa);
    cr_expect_geq(one, 0.95, "one head: the indexer ranks by q.k as softmax does (recall %.3f)", one);
    cr_expect_geq(gqa, 0.75, "4 heads: recall %.3f", gqa);
}

/* hae_model_trace_selections: a line per decode step, dsa layer and sequence, with the position and the
 * top-k positions picked (in the context, distinct); multi-token forwards write nothing, so tracing from
 * the start gives the same file; no dsa layer, or a path that cannot be written, is a clear error. */
static int trace_run(hae_backend *be, const hae_config *cfg, const int32_t *tok, const char *path, bool from_start) {
    hae_model *m = tu_model(be, cfg);
    const int64_t B = cfg->runtime.batch, P = cfg->runtime.prefill;
    int32_t in[2 * CTX];
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < P; t++) in[b * P + t] = tok[b * CTX + t];
    hae_tensor logits;
    if (from_start) cr_assert_eq(hae_model_trace_selections(m, path), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(hae_model_forward(m, in, P, &logits), HAE_OK, "%s", hae_last_error());
    if (!from_start) cr_assert_eq(hae_model_trace_selections(m, path), HAE_OK, "%s", hae_last_error());
    for (int64_t s = 0; P + s < CTX; s++) {
        for (int64_t b = 0; b < B; b++) in[b] = tok[b * CTX + P + s];
        cr_assert_eq(hae_model_forward(m, in, 1, &logits), HAE_OK, "%s", hae_last_error());
    }
    cr_assert_eq(hae_model_trace_selections(m, NULL), HAE_OK, "%s", hae_last_error());
    hae_model_destroy(m);
    return (int)(CTX - P);
}

Test(model_dsa, selection_trace) {
    hae_backend *be = tu_cpu();
    hae_config cfg;
    make_cfg(&cfg, "full", "dsa", 5, 0, false, "f32", 8);
    int32_t tok[2 * CTX];
    tu_tokens(&cfg, CTX, tok, 77);
    char p1[512], p2[512];
    tu_tmp_path("trace-a", p1, sizeof p1), tu_tmp_path("trace-b", p2, sizeof p2);
    const int steps = trace_run(be, &cfg, tok, p1, false);
    trace_run(be, &cfg, tok, p2, true);

    FILE *f = fopen(p1, "r"), *g = fopen(p2, "r");
    cr_assert(f && g, "the traces %s and %s were not written", p1, p2);
    int lines = 0;
    char a[1024], b[1024];
    while (fgets(a, sizeof a, f)) {
        cr_assert(fgets(b, sizeof b, g), "the trace from the start is shorter (line %d)", lines + 1);
        cr_expect_str_eq(a, b, "line %d: tracing from the start traced something else", lines + 1);
        long long pos, layer, seq, t[5];
        const int n = sscanf(a, "%lld %lld %lld %lld %lld %lld %lld %lld", &pos, &layer, &seq, &t[0], &t[1], &t[2], &t[3],
                             &t[4]);
        cr_assert_eq(n, 8, "line %d: '%s' is not POS LAYER SEQ and 5 selections", lines + 1, a);
        cr_expect_eq(pos, cfg.runtime.prefill + lines / 2, "line %d: position %lld", lines + 1, pos);
        cr_expect_eq(layer, 1, "line %d: layer %lld is not the dsa layer", lines + 1, layer);
        cr_expect_eq(seq, lines % 2, "line %d: sequence %lld", lines + 1, seq);
        for (int i = 0; i < 5; i++) {
            cr_expect(t[i] >= 0 && t[i] <= pos, "line %d: selection %lld outside the context [0, %lld]", lines + 1, t[i],
                      pos);
            for (int j = 0; j < i; j++) cr_expect_neq(t[i], t[j], "line %d: %lld selected twice", lines + 1, t[i]);
        }
        lines++;
    }
    cr_expect(!fgets(b, sizeof b, g), "the trace from the start is longer");
    cr_expect_eq(lines, steps * cfg.runtime.batch, "%d lines for %d decode steps of %lld sequences", lines, steps,
                 (long long)cfg.runtime.batch);
    fclose(f), fclose(g);
    remove(p1), remove(p2);

    hae_config full;
    make_cfg(&full, "full", "full", 5, 0, false, "f32", 8);
    hae_model *m = tu_model(be, &full);
    cr_expect_eq(hae_model_trace_selections(m, p1), HAE_ERR_INVALID, "a model without dsa layers traced");
    cr_expect(strstr(hae_last_error(), "no dsa layer"), "unclear error: %s", hae_last_error());
    hae_model_destroy(m);
    hae_model *d = tu_model(be, &cfg);
    cr_expect_eq(hae_model_trace_selections(d, "/nonexistent-dir/trace.txt"), HAE_ERR_IO, "an unwritable path traced");
    cr_expect(strstr(hae_last_error(), "/nonexistent-dir/trace.txt"), "the error names no path: %s", hae_last_error());
    hae_model_destroy(d);
    hae_backend_destroy(be);
}

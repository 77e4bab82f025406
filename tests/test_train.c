/* Training on the CPU: the trainer's weights and logits are the engine's (hae_model_init_weights, hae_model_forward
 * on the same safetensors), `hae train` lowers the loss, resumes bit for bit and skips unfinished checkpoints, and
 * bad train configs are refused with the key and the reason. */
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* A tiny stack with every shape the trainer handles: gqa 4q/2kv, partial RoPE, a sliding window. */
static const char *tiny_yaml = "name: tiny\n"
                               "seed: 11\n"
                               "model:\n"
                               "  vocab_size: 53\n"
                               "  d_model: 24\n"
                               "  n_layers: 3\n"
                               "  layer_pattern: [full, swa]\n"
                               "  mlp: {intermediate_size: 40}\n"
                               "  attention: {num_heads: 4, num_kv_heads: 2, head_dim: 8, rope: partial,\n"
                               "              partial_rotary_factor: 0.5}\n"
                               "  swa: {window_size: 5}\n"
                               "runtime: {backend: cpu, dtype: f32, batch: 2, prefill: 17, decode: 0, prefill_chunk: 0}\n";

static void tiny(hae_config *cfg, const char *const *sets, int n_sets) {
    hae_status st = hae_config_parse(tiny_yaml, strlen(tiny_yaml), "tiny.yaml", sets, n_sets, cfg);
    cr_assert_eq(st, HAE_OK, "%s", hae_last_error());
}

static hae_trainer *trainer(hae_backend *be, const hae_config *cfg, int64_t B, int64_t T) {
    hae_trainer *t = NULL;
    cr_assert_eq(hae_trainer_create(cfg, be, B, T, &t), HAE_OK, "%s", hae_last_error());
    return t;
}

/* Every weight moved off its init (norm weights are all ones there), so that every tensor shows in the logits. */
static void perturb(hae_trainer *t, uint64_t seed) {
    tu_rng r = tu_rng_make(seed);
    for (int p = 0; p < hae_trainer_param_count(t); p++) {
        float *w;
        int64_t n;
        cr_assert_eq(hae_trainer_param(t, p, NULL, &w, NULL, &n), HAE_OK);
        for (int64_t i = 0; i < n; i++) w[i] += (float)tu_uniform(&r, -0.15, 0.15);
    }
}

Test(train, init_is_the_models) {
    const char *const variants[] = {"model.tie_word_embeddings=false", "model.tie_word_embeddings=true"};
    for (int k = 0; k < 2; k++) {
        hae_backend *be = tu_cpu();
        hae_config cfg;
        tiny(&cfg, &variants[k], 1);
        hae_trainer *t = trainer(be, &cfg, 1, 8);
        hae_model *m = tu_model(be, &cfg);
        char pa[256], pb[256];
        tu_tmp_path("init-trainer.safetensors", pa, sizeof pa);
        tu_tmp_path("init-model.safetensors", pb, sizeof pb);
        cr_assert_eq(hae_trainer_save(t, pa), HAE_OK, "%s", hae_last_error());
        cr_assert_eq(hae_model_save(m, pb), HAE_OK, "%s", hae_last_error());
        hae_st_file *fa = NULL, *fb = NULL;
        cr_assert_eq(hae_st_open(pa, &fa), HAE_OK, "%s", hae_last_error());
        cr_assert_eq(hae_st_open(pb, &fb), HAE_OK, "%s", hae_last_error());
        cr_expect_eq(hae_st_count(fa), hae_st_count(fb), "%s: %d tensors, the model saves %d", variants[k],
                     hae_st_count(fa), hae_st_count(fb));
        for (int i = 0; i < hae_st_count(fb); i++) {
            const hae_st_tensor *b = hae_st_get(fb, i), *a = hae_st_find(fa, b->name);
            cr_assert(a, "%s: the trainer has no '%s'", variants[k], b->name);
            cr_expect(a->nbytes == b->nbytes && memcmp(a->data, b->data, a->nbytes) == 0,
                      "%s: '%s' differs from the model's init (%zu vs %zu bytes)", variants[k], b->name, a->nbytes,
                      b->nbytes);
        }
        hae_st_close(fa), hae_st_close(fb);
        remove(pa), remove(pb);
        hae_model_destroy(m);
        hae_trainer_destroy(t);
        hae_backend_destroy(be);
    }
}

/* The trainer's logits at every position equal hae_model_forward's for the same weights (saved by the trainer,
 * loaded by the model): both fp32, so only the order of a few sums differs. */
Test(train, logits_are_the_models) {
    const char *const variants[][2] = {
        {"model.tie_word_embeddings=false", "model.attention.rope=partial"},
        {"model.tie_word_embeddings=true", "model.attention.rope=full"},
        {"model.layer_pattern=[full]", "model.attention.rope=none"},
        {"model.attention.num_kv_heads=4", "model.attention.softmax_scale=0.7"},
    };
    for (int k = 0; k < 4; k++) {
        hae_backend *be = tu_cpu();
        hae_config cfg;
        tiny(&cfg, variants[k], 2);
        const int64_t B = cfg.runtime.batch, T = cfg.runtime.prefill, V = cfg.model.vocab_size, N = B * T;
        hae_trainer *t = trainer(be, &cfg, B, T);
        perturb(t, 100 + (uint64_t)k);
        char path[256];
        tu_tmp_path("logits.safetensors", path, sizeof path);
        cr_assert_eq(hae_trainer_save(t, path), HAE_OK, "%s", hae_last_error());
        hae_model *m = tu_model(be, &cfg);
        cr_assert_eq(hae_model_load(m, path), HAE_OK, "%s", hae_last_error());
        remove(path);
        int32_t *tok = malloc(sizeof(int32_t) * (size_t)N), *target = calloc((size_t)N, sizeof(int32_t));
        int64_t *pos = malloc(sizeof(int64_t) * (size_t)N);
        tu_tokens(&cfg, T, tok, 5 + (uint64_t)k);
        for (int64_t i = 0; i < N; i++) pos[i] = i;
        float *got = malloc(sizeof(float) * (size_t)(N * V));
        hae_train_batch b = {.tokens = tok, .B = B, .T = T, .pos = pos, .target = target, .n = N};
        cr_assert_eq(hae_trainer_forward(t, &b, got, NULL, NULL), HAE_OK, "%s", hae_last_error());
        const int64_t lens[] = {T};
        float *ref = tu_model_logits(m, &cfg, T, tok, lens, 1);
        double *r64 = malloc(sizeof(double) * (size_t)(N * V));
        for (int64_t i = 0; i < N * V; i++) r64[i] = ref[i];
        char why[256];
        bool ok = tu_close(got, HAE_F32, r64, N * V, 1e-5, 1e-4, 1e-4, why, sizeof why);
        cr_expect(ok, "%s, %s: trainer vs hae_model_forward logits [%lld, %lld, %lld]: %s", variants[k][0], variants[k][1],
                  (long long)B, (long long)T, (long long)V, why);
        free(tok), free(target), free(pos), free(got), free(ref), free(r64);
        hae_model_destroy(m);
        hae_trainer_destroy(t);
        hae_backend_destroy(be);
    }
}

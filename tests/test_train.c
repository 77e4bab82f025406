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

/* A tiny stack with every shape the trainer handles: gqa 4q/2kv, partial RoPE, a sliding window; linear layers of
 * 2 q/k heads (chunks of 16 tokens in the engine, so 17 tokens cross a chunk boundary). */
static const char *tiny_yaml = "name: tiny\n"
                               "seed: 11\n"
                               "model:\n"
                               "  vocab_size: 53\n"
                               "  d_model: 24\n"
                               "  n_layers: 3\n"
                               "  layer_pattern: [full, swa]\n"
                               "  mlp: {intermediate_size: 40}\n"
                               "  attention: {num_heads: 4, num_kv_heads: 2, head_dim: 8, rope: partial,\n"
                               "              partial_rotary_factor: 0.5, kv_lora_rank: 16, qk_nope_head_dim: 8,\n"
                               "              qk_rope_head_dim: 4, v_head_dim: 6}\n"
                               "  swa: {window_size: 5}\n"
                               "  linear_attn: {num_heads: 2, head_dim: 8, conv_size: 4, chunk_size: 16}\n"
                               "runtime: {backend: cpu, dtype: f32, batch: 2, prefill: 17, decode: 0, prefill_chunk: 0}\n";

/* yaml (named `name` in messages) with the overrides, asserting success. */
static void parse_ok(const char *yaml, const char *name, hae_config *cfg, const char *const *sets, int n_sets) {
    hae_status st = hae_config_parse(yaml, strlen(yaml), name, sets, n_sets, cfg);
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
    const char *const variants[][2] = {
        {"model.tie_word_embeddings=false", "model.attention.rope=partial"},
        {"model.tie_word_embeddings=true", "model.attention.rope=partial"},
        {"model.layer_pattern=[kda, gdn, retnet]", "model.attention.rope=partial"},
        {"model.layer_pattern=[deltanet, gla, mamba2]", "model.attention.rope=partial"},
        {"model.layer_pattern=[linear, full]", "model.attention.rope=partial"},
        {"model.layer_pattern=[dsa, kda, full]", "model.attention.rope=partial"},
        {"model.attention.form=mla", "model.attention.rope=full"},
    };
    for (int k = 0; k < 7; k++) {
        hae_backend *be = tu_cpu();
        hae_config cfg;
        parse_ok(tiny_yaml, "tiny.yaml", &cfg, variants[k], 2);
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
        cr_expect_eq(hae_st_count(fa), hae_st_count(fb), "%s: %d tensors, the model saves %d", variants[k][0],
                     hae_st_count(fa), hae_st_count(fb));
        for (int i = 0; i < hae_st_count(fb); i++) {
            const hae_st_tensor *b = hae_st_get(fb, i), *a = hae_st_find(fa, b->name);
            cr_assert(a, "%s: the trainer has no '%s'", variants[k][0], b->name);
            cr_expect(a->nbytes == b->nbytes && memcmp(a->data, b->data, a->nbytes) == 0,
                      "%s: '%s' differs from the model's init (%zu vs %zu bytes)", variants[k][0], b->name, a->nbytes,
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
        /* every linear kind; GVA (4 value heads on 2 q/k heads), wider values, both gate forms */
        {"model.layer_pattern=[kda, full]", "model.linear_attn.num_v_heads=4"},
        {"model.layer_pattern=[gdn, deltanet, swa]", "model.linear_attn.expand_v=2"},
        {"model.layer_pattern=[gla, mamba2, retnet]", "model.linear_attn.safe_gate=false"},
        {"model.layer_pattern=[linear, kda, gdn]", "model.linear_attn.safe_gate=false"},
        /* dsa selecting every earlier token (top-k >= T): the engine's FP8 indexer and the trainer's fp32 one pick
         * the same sets, so the logits must agree; selections below T are held to the float64 model in test_train_grad */
        {"model.layer_pattern=[dsa, kda]", "model.dsa.index_topk=32"},
        /* mla, run unabsorbed by the trainer and absorbed by the engine */
        {"model.attention.form=mla", "model.attention.rope=full"},
        {"model.attention.form=mla", "model.attention.rope=none"},
    };
    for (int k = 0; k < 11; k++) {
        hae_backend *be = tu_cpu();
        hae_config cfg;
        parse_ok(tiny_yaml, "tiny.yaml", &cfg, variants[k], 2);
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

/* hae_trainer_flops of one backward of a [B, T] batch, every row scored. */
static double flops_of(const char *const *sets, int n_sets, int64_t B, int64_t T) {
    hae_config cfg;
    parse_ok(tiny_yaml, "tiny.yaml", &cfg, sets, n_sets);
    hae_backend *be = tu_cpu();
    hae_trainer *t = trainer(be, &cfg, B, T);
    const int64_t N = B * T;
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)N), *target = calloc((size_t)N, sizeof(int32_t));
    int64_t *pos = malloc(sizeof(int64_t) * (size_t)N);
    for (int64_t i = 0; i < N; i++) tok[i] = (int32_t)((7 * i + 3) % cfg.model.vocab_size), pos[i] = i;
    const hae_train_batch b = {.tokens = tok, .B = B, .T = T, .pos = pos, .target = target, .n = N};
    cr_assert_eq(hae_trainer_backward(t, &b, NULL, NULL), HAE_OK, "%s", hae_last_error());
    const double f = hae_trainer_flops(t);
    free(tok), free(target), free(pos);
    hae_trainer_destroy(t);
    hae_backend_destroy(be);
    return f;
}

/* The model FLOPs follow what each kind attends to: a window as long as the sequence counts as a full layer and a
 * shorter one less, by exactly its missing query-key pairs (12 FLOPs per pair and head dim: q.k and P v, forward and
 * backward); a dsa layer selecting every token counts the full layer plus its indexer; the count is linear in B. */
Test(train, flops_follow_the_attention) {
    const int64_t T = 17, Hq = 4, Dh = 8, W = 5;
    const char *full[] = {"model.layer_pattern=[full]", "model.n_layers=1"};
    const char *swa_all[] = {"model.layer_pattern=[swa]", "model.n_layers=1", "model.swa.window_size=17"};
    const char *swa[] = {"model.layer_pattern=[swa]", "model.n_layers=1", "model.swa.window_size=5"};
    const char *dsa[] = {"model.layer_pattern=[dsa]", "model.n_layers=1", "model.dsa.index_topk=17"};
    const double f = flops_of(full, 2, 2, T);
    cr_expect_gt(f, 0.0);
    cr_expect_eq(flops_of(swa_all, 3, 2, T), f, "a window of T counts as a full layer");
    double missing = 0; /* pairs (t, s) with s < t - W + 1 */
    for (int64_t t = 0; t < T; t++) missing += (double)(t - W + 1 > 0 ? t - W + 1 : 0);
    const double want = f - 2.0 * missing * 12.0 * (double)(Hq * Dh);
    cr_expect(fabs(flops_of(swa, 3, 2, T) - want) <= 1e-9 * want, "window %lld: %.6g FLOPs, want %.6g", (long long)W,
              flops_of(swa, 3, 2, T), want);
    cr_expect_gt(flops_of(dsa, 3, 2, T), f, "a dsa layer adds its indexer to the attention it runs");
    cr_expect(fabs(flops_of(full, 2, 4, T) - 2.0 * f) <= 1e-9 * f, "twice the batch, twice the FLOPs");
}

/* A [2, 17] batch of the config's tokens from seed, every row scored, the target `shift` tokens on. */
typedef struct {
    int32_t tok[34], target[34];
    int64_t pos[34];
} fixed_batch;

static hae_train_batch fixed_batch_make(const hae_config *cfg, uint64_t seed, int64_t shift, fixed_batch *f) {
    const int64_t B = 2, T = 17, N = B * T;
    tu_tokens(cfg, T, f->tok, seed);
    for (int64_t i = 0; i < N; i++) f->pos[i] = i, f->target[i] = f->tok[(i + shift) % N];
    return (hae_train_batch){.tokens = f->tok, .B = B, .T = T, .pos = f->pos, .target = f->target, .n = N};
}

/* The loss of one backward of a fixed [2, 17] batch under the config's train.matmul. */
static double loss_with(const char *matmul) {
    hae_config cfg;
    const char *sets[] = {"model.layer_pattern=[kda, full]", matmul};
    parse_ok(tiny_yaml, "tiny.yaml", &cfg, sets, 2);
    hae_backend *be = tu_cpu();
    hae_trainer *t = trainer(be, &cfg, 2, 17);
    fixed_batch fb;
    const hae_train_batch b = fixed_batch_make(&cfg, 5, 3, &fb);
    double loss = 0;
    cr_assert_eq(hae_trainer_backward(t, &b, &loss, NULL), HAE_OK, "%s", hae_last_error());
    hae_trainer_destroy(t);
    hae_backend_destroy(be);
    return loss;
}

/* train.matmul=bf16 reaches the trainer's products: the loss moves by bf16's rounding, no more; f16 is refused. */
Test(train, matmul_bf16) {
    const double l32 = loss_with("train.matmul=f32"), l16 = loss_with("train.matmul=bf16");
    cr_expect(l16 != l32, "bf16 products left the loss %.9g unchanged", l32);
    cr_expect(fabs(l16 - l32) < 1e-2 * l32, "bf16 products moved the loss from %.6g to %.6g", l32, l16);
    hae_config cfg;
    const char *bad = "train.matmul=f16";
    cr_expect_eq(hae_config_parse(tiny_yaml, strlen(tiny_yaml), "tiny.yaml", &bad, 1, &cfg), HAE_ERR_INVALID);
    cr_expect(strstr(hae_last_error(), "train.matmul") && strstr(hae_last_error(), "f32, bf16"), "%s", hae_last_error());
}

/* train.state_checkpoint: the linear layers keep a state every C tokens and recompute the rest, and the loss and
 * every gradient are the same bits as keeping every state. */
Test(train, state_checkpoint_same_bits) {
    float *grads[2] = {NULL, NULL};
    double loss[2];
    int64_t total = 0;
    for (int side = 0; side < 2; side++) {
        hae_config cfg;
        const char *sets[] = {"model.layer_pattern=[kda, gdn]", side ? "train.state_checkpoint=4" : "train.state_checkpoint=0"};
        parse_ok(tiny_yaml, "tiny.yaml", &cfg, sets, 2);
        hae_backend *be = tu_cpu();
        hae_trainer *t = trainer(be, &cfg, 2, 17);
        fixed_batch fb;
        const hae_train_batch b = fixed_batch_make(&cfg, 9, 2, &fb);
        cr_assert_eq(hae_trainer_backward(t, &b, &loss[side], NULL), HAE_OK, "%s", hae_last_error());
        total = 0;
        for (int p = 0; p < hae_trainer_param_count(t); p++) {
            int64_t n = 0;
            float *g = NULL;
            cr_assert_eq(hae_trainer_param(t, p, NULL, NULL, &g, &n), HAE_OK, "%s", hae_last_error());
            grads[side] = realloc(grads[side], sizeof(float) * (size_t)(total + n));
            memcpy(grads[side] + total, g, sizeof(float) * (size_t)n);
            total += n;
        }
        hae_trainer_destroy(t);
        hae_backend_destroy(be);
    }
    cr_expect(loss[0] == loss[1], "loss %.17g keeping every state, %.17g with checkpoints", loss[0], loss[1]);
    cr_expect(memcmp(grads[0], grads[1], sizeof(float) * (size_t)total) == 0, "the gradients differ with checkpoints");
    free(grads[0]), free(grads[1]);
}

/* train.linear_chunk: the linear layers run the recurrence in its chunk form, which rounds differently (in double
 * over a chunk, the states rounded to f32 once per chunk), so a few AdamW steps keep the losses within 1e-4
 * relative of token by token, not the same bits. */
Test(train, linear_chunk_same_losses) {
    enum { STEPS = 4 };
    double loss[2][STEPS];
    for (int side = 0; side < 2; side++) {
        hae_config cfg;
        const char *sets[] = {"model.layer_pattern=[kda, gdn]", side ? "train.linear_chunk=8" : "train.linear_chunk=0"};
        parse_ok(tiny_yaml, "tiny.yaml", &cfg, sets, 2);
        hae_backend *be = tu_cpu();
        hae_trainer *t = trainer(be, &cfg, 2, 17);
        fixed_batch fb;
        const hae_train_batch b = fixed_batch_make(&cfg, 9, 2, &fb);
        for (int i = 0; i < STEPS; i++) {
            cr_assert_eq(hae_trainer_backward(t, &b, &loss[side][i], NULL), HAE_OK, "%s", hae_last_error());
            cr_assert_eq(hae_trainer_step(t, 1e-2f, NULL), HAE_OK, "%s", hae_last_error());
        }
        hae_trainer_destroy(t);
        hae_backend_destroy(be);
    }
    for (int i = 0; i < STEPS; i++)
        cr_expect(fabs(loss[1][i] - loss[0][i]) <= 1e-4 * fabs(loss[0][i]), "step %d: loss %.9g token by token, %.9g "
                  "in chunks of 8", i + 1, loss[0][i], loss[1][i]);
    cr_expect(loss[1][0] != loss[0][0], "train.linear_chunk=8 gave token by token's loss bits %.17g: no chunk form",
              loss[0][0]);
    cr_expect(loss[0][STEPS - 1] < loss[0][0], "the steps did not lower the loss (%.6g to %.6g)", loss[0][0],
              loss[0][STEPS - 1]);
}

/* A negative train.linear_chunk, and the chunk form together with state checkpoints, are refused naming the keys
 * and where they are set. */
Test(train, linear_chunk_bad_config) {
    hae_config cfg;
    const char *neg = "train.linear_chunk=-1";
    hae_status st = hae_config_parse(tiny_yaml, strlen(tiny_yaml), "tiny.yaml", &neg, 1, &cfg);
    cr_expect_eq(st, HAE_ERR_INVALID, "--set %s: status %d", neg, st);
    cr_expect(strstr(hae_last_error(), "train.linear_chunk"), "no key named in: %s", hae_last_error());
    const char *both[] = {"train.linear_chunk=8", "train.state_checkpoint=4"};
    st = hae_config_parse(tiny_yaml, strlen(tiny_yaml), "tiny.yaml", both, 2, &cfg);
    cr_expect_eq(st, HAE_ERR_INVALID, "--set %s --set %s: status %d", both[0], both[1], st);
    cr_expect(strstr(hae_last_error(), "train.linear_chunk") && strstr(hae_last_error(), "train.state_checkpoint"),
              "both keys not named in: %s", hae_last_error());
    char yaml[2048];
    snprintf(yaml, sizeof yaml, "%strain: {state_checkpoint: 4, linear_chunk: 8}\n", tiny_yaml);
    st = hae_config_parse(yaml, strlen(yaml), "tiny.yaml", NULL, 0, &cfg);
    cr_expect_eq(st, HAE_ERR_INVALID, "linear_chunk and state_checkpoint in the file: status %d", st);
    cr_expect(strstr(hae_last_error(), "tiny.yaml:15:"), "no file:line in: %s", hae_last_error());
}

/* ---------------------------------------------------------------- hae train */

/* A model small enough for ASan: mqar of 4 pairs in 64 tokens, 8 keys and 8 values among 48 noise tokens (the
 * filler), so that the loss has far to fall from ln 72 once the model knows which tokens answer. */
static const char *run_yaml = "name: smoke\n"
                              "seed: 3\n"
                              "model:\n"
                              "  vocab_size: 72\n"
                              "  d_model: 32\n"
                              "  n_layers: 2\n"
                              "  layer_pattern: [full]\n"
                              "  mlp: {intermediate_size: 64}\n"
                              "  attention: {num_heads: 2, num_kv_heads: 2, head_dim: 16}\n"
                              "runtime: {backend: cpu, dtype: f32}\n"
                              "eval: {tasks: [mqar], lengths: [64], pairs: [4], noise_vocab: 48, seeds: 8}\n"
                              "train: {steps: 50, batch: 8, lr: 3.0e-3, warmup: 5, eval_every: 25, checkpoint_every: 20,\n"
                              "        log_every: 10}\n";

static const char *run_dir(const char *tag, char *buf, size_t n) {
    tu_tmp_path(tag, buf, n);
    mkdir(buf, 0755);
    return buf;
}

static hae_status train(const hae_config *cfg, const char *dir, bool resume, int64_t until, hae_train_result *res) {
    hae_backend *be = tu_cpu();
    hae_train_args a = {.cfg = cfg, .be = be, .dir = dir, .resume = resume, .until = until};
    hae_status st = hae_train_run(&a, res);
    hae_backend_destroy(be);
    return st;
}

static bool file_exists(const char *dir, const char *file) {
    char path[768];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* Bytes of a file, malloc'd (caller frees). */
static char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    cr_assert(f, "cannot read %s", path);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc(*n ? *n : 1);
    cr_assert_eq(fread(p, 1, *n, f), *n);
    fclose(f);
    return p;
}

static void expect_same_file(const char *a, const char *b) {
    size_t na, nb;
    char *pa = slurp(a, &na), *pb = slurp(b, &nb);
    cr_expect(na == nb && memcmp(pa, pb, na) == 0, "%s and %s differ (%zu and %zu bytes)", a, b, na, nb);
    free(pa), free(pb);
}

/* The CI smoke run: 50 steps lower the loss well below where it starts, and leave a run directory whose
 * checkpoint the engine loads; for attention, KDA and a KDA + DSA hybrid (top-16 of 64 tokens). */
static void smoke(const char *pattern, const char *tag) {
    hae_config cfg;
    char set[96];
    snprintf(set, sizeof set, "model.layer_pattern=%s", pattern);
    const char *sets[] = {set, "model.linear_attn.num_heads=2", "model.linear_attn.head_dim=16", "model.dsa.index_topk=16",
                          "model.dsa.index_n_heads=2"};
    parse_ok(run_yaml, "smoke.yaml", &cfg, sets, 5);
    char dir[256];
    run_dir(tag, dir, sizeof dir);
    hae_train_result res;
    cr_assert_eq(train(&cfg, dir, false, 0, &res), HAE_OK, "%s", hae_last_error());
    double loss[51];
    cr_expect_eq(tu_read_losses(dir, loss, 50), 50, "a metrics line per step");
    double first = 0, last = 0;
    for (int i = 1; i <= 10; i++) first += loss[i] / 10, last += loss[40 + i] / 10;
    cr_expect_lt(last, 0.7 * first, "%s: mean loss of steps 41-50 %.4f is not below 0.7 x that of steps 1-10 (%.4f)",
                 pattern, last, first);
    cr_expect_eq(res.last_step, 50);
    cr_expect_eq(res.eval_questions, 8 * 4, "held-out: 8 seeds x 4 questions, got %lld", (long long)res.eval_questions);
    const char *files[] = {"config.resolved.yaml", "env.json", "summary.json", "checkpoints/step-000020/complete",
                           "checkpoints/step-000040/complete", "checkpoints/step-000050/model.safetensors",
                           "checkpoints/step-000050/optim.safetensors", "checkpoints/step-000050/complete"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++)
        cr_expect(file_exists(dir, files[i]), "%s: no %s", dir, files[i]);
    /* the checkpoint is the engine's weights */
    hae_backend *be = tu_cpu();
    hae_model *m = NULL;
    cr_assert_eq(hae_model_create(&cfg, be, NULL, &m), HAE_OK, "%s", hae_last_error());
    char path[512];
    snprintf(path, sizeof path, "%s/checkpoints/step-000050/model.safetensors", dir);
    cr_expect_eq(hae_model_load(m, path), HAE_OK, "%s", hae_last_error());
    hae_model_destroy(m);
    hae_backend_destroy(be);
}

Test(train, smoke_loss_falls) { smoke("[full]", "train-smoke"); }
Test(train, smoke_loss_falls_kda) { smoke("[kda]", "train-smoke-kda"); }
Test(train, smoke_loss_falls_kda_dsa) { smoke("[kda, dsa]", "train-smoke-kda-dsa"); }

/* A run stopped at step 5 and resumed ends bit for bit where an uninterrupted run ends; so does one whose last
 * checkpoint lost its completion marker (it resumes from the one before). */
Test(train, resume_is_bit_exact) {
    hae_config cfg;
    const char *sets[] = {"train.steps=12", "train.checkpoint_every=4", "train.eval_every=6", "train.warmup=3"};
    parse_ok(run_yaml, "smoke.yaml", &cfg, sets, 4);
    char a[256], b[256], c[256], pa[512], pb[512];
    run_dir("train-whole", a, sizeof a);
    run_dir("train-paused", b, sizeof b);
    run_dir("train-torn", c, sizeof c);
    hae_train_result r;
    cr_assert_eq(train(&cfg, a, false, 0, &r), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(train(&cfg, b, false, 5, &r), HAE_OK, "%s", hae_last_error());
    cr_expect_eq(r.last_step, 5, "--until 5 stopped after %lld steps", (long long)r.last_step);
    cr_expect(file_exists(b, "checkpoints/step-000004/complete") && file_exists(b, "checkpoints/step-000005/complete"));
    cr_assert_eq(train(&cfg, b, true, 0, &r), HAE_OK, "%s", hae_last_error());
    cr_expect_eq(r.first_step, 5, "resumed from step %lld, not 5", (long long)r.first_step);
    cr_assert_eq(train(&cfg, c, false, 6, &r), HAE_OK, "%s", hae_last_error());
    snprintf(pa, sizeof pa, "%s/checkpoints/step-000006/complete", c);
    cr_assert_eq(remove(pa), 0, "no marker %s", pa);
    cr_assert_eq(train(&cfg, c, true, 0, &r), HAE_OK, "%s", hae_last_error());
    cr_expect_eq(r.first_step, 4, "a checkpoint without its marker was resumed (from step %lld)", (long long)r.first_step);
    const char *files[] = {"model.safetensors", "optim.safetensors"};
    for (int i = 0; i < 2; i++) {
        snprintf(pa, sizeof pa, "%s/checkpoints/step-000012/%s", a, files[i]);
        snprintf(pb, sizeof pb, "%s/checkpoints/step-000012/%s", b, files[i]);
        expect_same_file(pa, pb);
        snprintf(pb, sizeof pb, "%s/checkpoints/step-000012/%s", c, files[i]);
        expect_same_file(pa, pb);
    }
    double la[13], lb[13], lc[13];
    cr_expect_eq(tu_read_losses(a, la, 12), 12);
    cr_expect_eq(tu_read_losses(b, lb, 12), 12, "the resumed run's metrics.jsonl has a line per step");
    cr_expect_eq(tu_read_losses(c, lc, 12), 12, "the run resumed past a torn checkpoint has a line per step");
    for (int s = 1; s <= 12; s++)
        cr_expect(la[s] == lb[s] && la[s] == lc[s], "step %d: loss %.9g uninterrupted, %.9g resumed, %.9g past a torn "
                                                    "checkpoint", s, la[s], lb[s], lc[s]);
}

/* train.eval_lengths scores the weights through the engine as training goes: at the training length it asks the
 * held-out eval's questions (seeds 1..eval.seeds) of a model whose logits equal the trainer's, so the two
 * accuracies agree; longer lengths are scored too and written to metrics.jsonl and summary.json. */
Test(train, eval_lengths) {
    hae_config cfg;
    const char *sets[] = {"train.steps=50", "train.eval_lengths=[64, 256]"};
    parse_ok(run_yaml, "smoke.yaml", &cfg, sets, 2);
    char dir[256];
    run_dir("train-eval-lengths", dir, sizeof dir);
    hae_train_result r;
    cr_assert_eq(train(&cfg, dir, false, 0, &r), HAE_OK, "%s", hae_last_error());
    cr_expect(r.eval_accuracy > 0.0, "held-out accuracy %.4f: nothing to compare", r.eval_accuracy);
    cr_expect_eq(r.eval_at[0], r.eval_accuracy, "at the training length the engine scores %.6f, the trainer %.6f",
                 r.eval_at[0], r.eval_accuracy);
    cr_expect(r.eval_at[1] >= 0.0 && r.eval_at[1] <= 1.0, "accuracy at 256 tokens %.6f", r.eval_at[1]);
    char path[512], line[4096];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    FILE *f = fopen(path, "r");
    cr_assert(f, "no %s", path);
    int with = 0;
    while (fgets(line, sizeof line, f)) with += strstr(line, "\"eval_at\": {\"64\": ") != NULL;
    fclose(f);
    cr_expect_eq(with, 2, "%d lines of metrics.jsonl with eval_at (evals at steps 25 and 50)", with);
    size_t n;
    snprintf(path, sizeof path, "%s/summary.json", dir);
    char *sum = slurp(path, &n);
    char want[96];
    snprintf(want, sizeof want, "\"eval_at\": {\"64\": %.6f, \"256\": %.6f}", r.eval_at[0], r.eval_at[1]);
    cr_expect(memmem(sum, n, want, strlen(want)) != NULL, "summary.json lacks %s", want);
    free(sum);
    const char *bad = "train.eval_lengths=[32]";
    hae_status st = hae_config_parse(run_yaml, strlen(run_yaml), "smoke.yaml", &bad, 1, &cfg);
    cr_expect_eq(st, HAE_ERR_INVALID, "--set %s: status %d", bad, st);
    cr_expect(strstr(hae_last_error(), "train.eval_lengths"), "no key named in: %s", hae_last_error());
}

/* train.lengths and train.pairs: the steps cycle through the zipped mixture (a step's tokens are its point's
 * length x the batch) while the held-out eval stays on the eval grid; mismatched lists and a point whose tasks do
 * not fit are refused with the keys named, before any step. */
Test(train, mixture) {
    hae_config cfg;
    const char *sets[] = {"train.steps=4", "train.warmup=1", "train.eval_every=4", "train.lengths=[64, 128, 128]",
                          "train.pairs=[2, 8, 8]"};
    parse_ok(run_yaml, "smoke.yaml", &cfg, sets, 5);
    char dir[256];
    run_dir("train-mixture", dir, sizeof dir);
    hae_train_result r;
    cr_assert_eq(train(&cfg, dir, false, 0, &r), HAE_OK, "%s", hae_last_error());
    char path[512], line[4096];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    FILE *f = fopen(path, "r");
    cr_assert(f, "no %s", path);
    const long long want[] = {8 * 64, 8 * 128, 8 * 128, 8 * 64};
    int k = 0;
    while (fgets(line, sizeof line, f) && k < 4) {
        const char *t = strstr(line, "\"tokens\": ");
        cr_assert(t, "no tokens in %s", line);
        long long got = atoll(t + 10);
        cr_expect_eq(got, want[k], "step %d: %lld tokens, the mixture's point %d has %lld", k + 1, got, k % 3, want[k]);
        k++;
    }
    fclose(f);
    cr_expect_eq(k, 4, "%d steps in metrics.jsonl", k);
    hae_config plain;
    parse_ok(run_yaml, "smoke.yaml", &plain, sets, 3);
    run_dir("train-mixture-plain", dir, sizeof dir);
    hae_train_result rp;
    cr_assert_eq(train(&plain, dir, false, 0, &rp), HAE_OK, "%s", hae_last_error());
    cr_expect(r.eval_questions > 0 && r.eval_questions == rp.eval_questions,
              "the held-out eval asks %lld questions with the mixture, %lld on the eval grid",
              (long long)r.eval_questions, (long long)rp.eval_questions);

    const char *uneven[] = {"train.lengths=[64, 128]", "train.pairs=[4]"}, *unfit[] = {"train.lengths=[64, 64]",
                                                                                      "train.pairs=[4, 60]"};
    hae_status st = hae_config_parse(run_yaml, strlen(run_yaml), "smoke.yaml", uneven, 2, &cfg);
    cr_expect_eq(st, HAE_ERR_INVALID, "uneven mixture: status %d", st);
    cr_expect(strstr(hae_last_error(), "train.pairs") && strstr(hae_last_error(), "item by item"), "%s", hae_last_error());
    parse_ok(run_yaml, "smoke.yaml", &cfg, unfit, 2);
    run_dir("train-mixture-unfit", dir, sizeof dir);
    cr_expect_eq(train(&cfg, dir, false, 0, &r), HAE_ERR_INVALID, "60 pairs in 64 tokens trained");
    cr_expect(strstr(hae_last_error(), "train.lengths[1], train.pairs[1]"), "no point named in: %s", hae_last_error());
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    cr_expect(!file_exists(dir, "metrics.jsonl"), "a refused run wrote %s", path);
}

/* train.indexer_warmup: its steps move the indexers' weights only (the rest and its AdamW moments stay as they
 * were); the step after it moves every weight. */
Test(train, indexer_warmup_freezes_all_but_the_indexers) {
    hae_backend *be = tu_cpu();
    hae_config cfg;
    const char *sets[] = {"model.layer_pattern=[dsa, kda]", "train.indexer_warmup=1", "model.dsa.index_topk=4"};
    parse_ok(tiny_yaml, "tiny.yaml", &cfg, sets, 3);
    hae_trainer *t = trainer(be, &cfg, 2, 17);
    fixed_batch fb;
    const hae_train_batch b = fixed_batch_make(&cfg, 7, 1, &fb);
    const int np = hae_trainer_param_count(t);
    float **before = calloc((size_t)np, sizeof *before);
    for (int stage = 0; stage < 2; stage++) {
        for (int p = 0; p < np; p++) {
            float *w;
            int64_t n;
            hae_trainer_param(t, p, NULL, &w, NULL, &n);
            free(before[p]);
            before[p] = malloc(sizeof(float) * (size_t)n);
            memcpy(before[p], w, sizeof(float) * (size_t)n);
        }
        cr_assert_eq(hae_trainer_backward(t, &b, NULL, NULL), HAE_OK, "%s", hae_last_error());
        cr_expect(hae_trainer_index_kl(t) > 0.0, "stage %d: indexer loss %g", stage, hae_trainer_index_kl(t));
        cr_assert_eq(hae_trainer_step(t, 1e-2f, NULL), HAE_OK, "%s", hae_last_error());
        int moved = 0, indexer = 0;
        for (int p = 0; p < np; p++) {
            const char *name;
            float *w;
            int64_t n;
            hae_trainer_param(t, p, &name, &w, NULL, &n);
            const bool is_indexer = strstr(name, ".indexer.") != NULL, same = memcmp(w, before[p], sizeof(float) * (size_t)n) == 0;
            indexer += is_indexer;
            moved += !same;
            if (stage == 0) cr_expect(is_indexer ? !same : same, "dense stage: '%s' %s", name, same ? "did not move" : "moved");
        }
        cr_expect_eq(indexer, 10, "%d indexer tensors (wq, wk, k_norm weight and bias, weights_proj of layers 0 and 2)", indexer);
        if (stage == 1) cr_expect(moved > np - 3, "after the dense stage only %d of %d tensors moved", moved, np);
    }
    for (int p = 0; p < np; p++) free(before[p]);
    free(before);
    hae_trainer_destroy(t);
    hae_backend_destroy(be);
}

/* Models and tasks the trainer does not take are refused before anything is written. */
Test(train, refusals) {
    const struct {
        const char *set[2], *word;
        hae_status st;
    } bad[] = {
        {{"model.layer_pattern=[full, dsa]", "model.dsa.derived=true"},
         "layer 1 is 'dsa' with model.dsa.derived: true, whose indexer has no weights", HAE_ERR_UNSUPPORTED},
        {{"eval.vocab=80", "seed=3"}, "eval.vocab 80 exceeds model.vocab_size 72", HAE_ERR_INVALID},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        hae_config cfg;
        parse_ok(run_yaml, "smoke.yaml", &cfg, bad[i].set, 2);
        char dir[256];
        run_dir("train-refused", dir, sizeof dir);
        hae_train_result r;
        hae_status st = train(&cfg, dir, false, 0, &r);
        cr_expect_eq(st, bad[i].st, "--set %s: status %d (%s)", bad[i].set[0], st, hae_last_error());
        cr_expect(strstr(hae_last_error(), bad[i].word), "--set %s: no '%s' in: %s", bad[i].set[0], bad[i].word,
                  hae_last_error());
        cr_expect(!file_exists(dir, "metrics.jsonl"), "--set %s: a refused run wrote metrics.jsonl", bad[i].set[0]);
    }
    hae_backend *be = tu_cpu();
    hae_config cfg;
    parse_ok(run_yaml, "smoke.yaml", &cfg, NULL, 0);
    hae_trainer *t = trainer(be, &cfg, 2, 64);
    int32_t tok[128] = {0}, target[1] = {80};
    int64_t pos[1] = {3};
    hae_train_batch b = {.tokens = tok, .B = 2, .T = 64, .pos = pos, .target = target, .n = 1};
    cr_expect_eq(hae_trainer_backward(t, &b, NULL, NULL), HAE_ERR_INVALID);
    cr_expect(strstr(hae_last_error(), "target 0 is 80, outside the vocabulary [0, 72)"), "%s", hae_last_error());
    b.T = 65;
    cr_expect_eq(hae_trainer_backward(t, &b, NULL, NULL), HAE_ERR_INVALID);
    cr_expect(strstr(hae_last_error(), "takes 1..2 of 1..64"), "%s", hae_last_error());
    hae_trainer_destroy(t);
    hae_backend_destroy(be);
}

Test(train, bad_train_keys) {
    const struct {
        const char *name, *yaml, *where, *path, *word;
    } bad[] = {
        {"steps 0", "train:\n  steps: 0\n", "t.yaml:2:10:", "train.steps", "0 is out of range (expected 1..2147483647)"},
        {"batch", "train:\n  batch: 0\n", "t.yaml:2:10:", "train.batch", "out of range (expected 1..65536)"},
        {"lr 0", "train:\n  lr: 0\n", "t.yaml:2:7:", "train.lr", "0 is out of range (expected (0, 10])"},
        {"lr text", "train:\n  lr: fast\n", "t.yaml:2:7:", "train.lr", "expected a number"},
        {"min lr", "train:\n  min_lr_ratio: 1.5\n", "t.yaml:2:17:", "train.min_lr_ratio", "1.5 is out of range (expected [0, 1])"},
        {"beta2 1", "train:\n  beta2: 1\n", "t.yaml:2:10:", "train.beta2", "1 is out of range (expected [0, 1))"},
        {"clip", "train:\n  clip: -1\n", "t.yaml:2:9:", "train.clip", "out of range (expected >= 0)"},
        {"log every", "train:\n  log_every: 0\n", "t.yaml:2:14:", "train.log_every", "out of range"},
        {"unknown", "train:\n  stpes: 10\n", "t.yaml:2:3:", "train.stpes", "did you mean 'steps'?"},
        {"warmup", "train:\n  steps: 50\n  warmup: 60\n", "t.yaml:3:11:", "train.warmup", "warmup 60 exceeds steps 50"},
        {"warmup default", "train:\n  steps: 50\n", "t.yaml:2:10:", "train.steps",
         "warmup 100 (default) exceeds steps 50"},
    };
    hae_config *cfg = malloc(sizeof *cfg);
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        tu_expect_bad_config(bad[i].name, bad[i].yaml, NULL, bad[i].where, bad[i].path, bad[i].word, cfg);
    free(cfg);
}

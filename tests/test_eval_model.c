/* Model-level eval runs (eval/model_eval.c, eval/grid.c) proven with test doubles through a real model on the
 * CPU: the oracle scores 100% on every task and question form (so the scored positions and answers line up),
 * and reads nothing past its site; the random double scores the computed chance within binomial bounds; the
 * runner refuses batches it cannot run; the grid enumerates the config's axes in order. */
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* A tiny hybrid (kda + full) whose forwards cost little; batch 3 so that 5 seeds make a full and a partial batch. */
#define MODEL                                                                                                       \
    "name: t\nseed: 3\nmodel:\n  vocab_size: 256\n  d_model: 32\n  n_layers: 2\n  layer_pattern: [kda, full]\n"    \
    "  mlp:\n    intermediate_size: 64\n  attention:\n    num_heads: 2\n    num_kv_heads: 1\n    head_dim: 16\n"     \
    "  linear_attn:\n    num_heads: 2\n    head_dim: 16\nruntime:\n  backend: cpu\n  dtype: f32\n  batch: 3\n"        \
    "  prefill_chunk: 64\n"

static hae_config *config(const char *eval_yaml) {
    hae_config *cfg = malloc(sizeof *cfg);
    cr_assert(cfg);
    char *yaml = NULL;
    cr_assert(asprintf(&yaml, "%s%s", MODEL, eval_yaml) > 0);
    tu_config(yaml, cfg);
    free(yaml);
    return cfg;
}

/* The point's eval.seeds tasks through one runner, runtime.batch at a time, as `hae eval` runs them. */
static hae_eval_score run_point(hae_eval_runner *r, const hae_config *cfg, const hae_eval_point *p,
                                hae_eval_logits_fn hook, void *ctx) {
    const int64_t B = hae_eval_runner_batch(r);
    hae_task *tasks[8] = {0};
    hae_eval_score s = {0};
    cr_assert_leq(B, 8);
    for (int64_t s0 = 1; s0 <= cfg->eval.seeds; s0 += B) {
        int64_t n = cfg->eval.seeds - s0 + 1 < B ? cfg->eval.seeds - s0 + 1 : B;
        for (int64_t b = 0; b < n; b++)
            cr_assert_eq(hae_eval_task(cfg, p, (uint64_t)(s0 + b), &tasks[b]), HAE_OK, "%s", hae_last_error());
        cr_assert_eq(hae_eval_runner_run(r, (const hae_task *const *)tasks, n, hook, ctx, &s), HAE_OK, "%s %s length %lld: %s",
                     hae_task_kind_name(p->task), cfg->eval.form ? "list" : "follow", (long long)p->length,
                     hae_last_error());
        for (int64_t b = 0; b < n; b++) hae_task_free(tasks[b]), tasks[b] = NULL;
    }
    return s;
}

/* Every point of cfg's grid through one runner (sized for its longest task) with the hook. */
static void each_point(const hae_config *cfg, hae_eval_logits_fn hook, void *ctx,
                       void (*check)(const hae_eval_point *, const hae_eval_score *)) {
    hae_backend *be = tu_cpu();
    hae_eval_point *pts = NULL;
    int64_t n = 0, longest = 0;
    cr_assert_eq(hae_eval_grid(cfg, &pts, &n), HAE_OK, "%s", hae_last_error());
    for (int64_t i = 0; i < n; i++) longest = pts[i].length > longest ? pts[i].length : longest;
    hae_eval_runner *r = NULL;
    cr_assert_eq(hae_eval_runner_create(cfg, be, longest, NULL, &r), HAE_OK, "%s", hae_last_error());
    for (int64_t i = 0; i < n; i++) {
        hae_eval_score s = run_point(r, cfg, &pts[i], hook, ctx);
        check(&pts[i], &s);
    }
    hae_eval_runner_destroy(r);
    hae_backend_destroy(be);
    free(pts);
}

static void all_right(const hae_eval_point *p, const hae_eval_score *s) {
    cr_expect_gt(s->questions, 0);
    cr_expect(s->correct == s->questions && s->answers_correct == s->answers,
              "oracle on %s length %lld pairs %lld hops %lld chains %lld: %lld/%lld questions, %lld/%lld answers",
              hae_task_kind_name(p->task), (long long)p->length, (long long)p->pairs, (long long)p->hops,
              (long long)p->chains, (long long)s->correct, (long long)s->questions, (long long)s->answers_correct,
              (long long)s->answers);
    cr_expect_gt(s->tokens, 0);
}

Test(eval_model, oracle_scores_every_question_of_every_task_and_form) {
    const char *forms[] = {"  form: follow\n  shuffle: false\n", "  form: list\n  shuffle: true\n"};
    for (int f = 0; f < 2; f++) {
        char yaml[512];
        snprintf(yaml, sizeof yaml,
                 "eval:\n  tasks: [mqar, multihop, niah]\n  lengths: [128, 300]\n  pairs: [6]\n  hops: [1, 3]\n"
                 "  chains: [0, 2]\n  noise_vocab: 16\n  seeds: 5\n%s", forms[f]);
        hae_config *cfg = config(yaml);
        each_point(cfg, hae_eval_oracle, NULL, all_right);
        free(cfg);
    }
}

/* The oracle reads nothing past its site: with every later token overwritten it answers the same. */
Test(eval_model, oracle_reads_only_the_tokens_up_to_its_site) {
    hae_task *t = NULL;
    cr_assert_eq(hae_task_multihop(&(hae_multihop_args){.length = 200, .vocab = 256, .hops = 3, .chains = 4,
                                                        .form = HAE_HOPS_LIST, .noise_vocab = 16, .seed = 9},
                                   &t),
                 HAE_OK, "%s", hae_last_error());
    int32_t *saved = malloc(sizeof(int32_t) * (size_t)t->n_tokens);
    float a[256], b[256];
    memcpy(saved, t->tokens, sizeof(int32_t) * (size_t)t->n_tokens);
    for (int64_t q = 0; q < t->n_queries; q++)
        for (int64_t j = 0; j < t->answer_off[q + 1] - t->answer_off[q]; j++) {
            hae_eval_site s = {.row = 0, .task = t, .question = q, .answer = j, .pos = t->query_pos[q] + j};
            cr_assert_eq(hae_eval_oracle(NULL, &s, a, 256), HAE_OK, "%s", hae_last_error());
            for (int64_t i = s.pos + 1; i < t->n_tokens; i++) t->tokens[i] = HAE_TOK_PAD;
            cr_assert_eq(hae_eval_oracle(NULL, &s, b, 256), HAE_OK, "%s", hae_last_error());
            memcpy(t->tokens, saved, sizeof(int32_t) * (size_t)t->n_tokens);
            cr_expect(!memcmp(a, b, sizeof a), "question %lld answer %lld: the oracle read past position %lld",
                      (long long)q, (long long)j, (long long)s.pos);
            cr_expect_eq(a[t->answers[t->answer_off[q] + j]], 1.0f, "question %lld answer %lld", (long long)q, (long long)j);
        }
    free(saved);
    hae_task_free(t);
}

/* Binomial bounds: the count of hits among n trials of odds p is within 4.5 standard deviations of n p. */
static void near_chance(const char *what, double hits, double n, double p) {
    double sd = sqrt(n * p * (1 - p));
    cr_expect(fabs(hits - n * p) <= 4.5 * sd, "%s: %.0f hits of %.0f at odds %.5f (expected %.1f +- %.1f)", what, hits,
              n, p, n * p, 4.5 * sd);
}

static void at_chance(const hae_eval_point *p, const hae_eval_score *s) {
    /* eval.vocab 40, no noise: f = 8, so mqar values 16 ids, multihop variables 32 ids */
    const double per_answer = p->task == HAE_TASK_MULTIHOP ? 1.0 / 32 : 1.0 / 16;
    const int64_t per_question = s->answers / s->questions;
    cr_expect_float_eq(s->chance / (double)s->questions, pow(per_answer, (double)per_question), 1e-15,
                       "chance %.6g for %lld answers per question", s->chance / (double)s->questions,
                       (long long)per_question);
    near_chance(hae_task_kind_name(p->task), (double)s->answers_correct, (double)s->answers, per_answer);
    if (per_question == 1) near_chance("questions", (double)s->correct, (double)s->questions, per_answer);
}

Test(eval_model, random_double_scores_chance) {
    const char *forms[] = {"  form: follow\n", "  form: list\n"};
    for (int f = 0; f < 2; f++) {
        char yaml[512];
        snprintf(yaml, sizeof yaml,
                 "eval:\n  tasks: [mqar, multihop]\n  lengths: [128]\n  pairs: [16]\n  hops: [2]\n  chains: [4]\n"
                 "  noise_vocab: 0\n  vocab: 40\n  seeds: 60\n%s", forms[f]);
        hae_config *cfg = config(yaml);
        uint64_t seed = 77;
        each_point(cfg, hae_eval_random, &seed, at_chance);
        free(cfg);
    }
}

static hae_status failing_hook(void *ctx, const hae_eval_site *s, float *logits, int64_t V) {
    (void)ctx, (void)s, (void)logits, (void)V;
    return hae_error(HAE_ERR_IO, "hook says no");
}

static void expect_error(hae_status got, hae_status want, const char *needle, const char *what) {
    cr_expect_eq(got, want, "%s: status %d, expected %d (%s)", what, got, want, hae_last_error());
    cr_expect(strstr(hae_last_error(), needle), "%s: \"%s\" does not say \"%s\"", what, hae_last_error(), needle);
}

Test(eval_model, runner_refuses_what_it_cannot_run) {
    hae_config *cfg = config("");
    hae_backend *be = tu_cpu();
    hae_eval_runner *r = NULL;
    expect_error(hae_eval_runner_create(cfg, be, 0, NULL, &r), HAE_ERR_INVALID, "max_tokens 0", "no tokens");
    expect_error(hae_eval_runner_create(cfg, be, 200, "/nonexistent/w.safetensors", &r), HAE_ERR_IO, "nonexistent",
                 "missing weights");
    cr_assert_null(r);
    cr_assert_eq(hae_eval_runner_create(cfg, be, 200, NULL, &r), HAE_OK, "%s", hae_last_error());
    cr_expect_eq(hae_eval_runner_batch(r), 3);
    hae_task *a = NULL, *b = NULL, *c = NULL, *d = NULL;
    cr_assert_eq(hae_task_mqar(&(hae_mqar_args){.length = 128, .vocab = 256, .pairs = 8, .seed = 1}, &a), HAE_OK);
    cr_assert_eq(hae_task_mqar(&(hae_mqar_args){.length = 160, .vocab = 256, .pairs = 8, .seed = 2}, &b), HAE_OK);
    cr_assert_eq(hae_task_mqar(&(hae_mqar_args){.length = 128, .vocab = 300, .pairs = 8, .seed = 3}, &c), HAE_OK);
    cr_assert_eq(hae_task_mqar(&(hae_mqar_args){.length = 256, .vocab = 256, .pairs = 8, .seed = 4}, &d), HAE_OK);
    hae_eval_score s = {0};
    expect_error(hae_eval_runner_run(r, (const hae_task *const[]){a, b}, 2, NULL, NULL, &s), HAE_ERR_INVALID,
                 "differ in layout", "two lengths");
    expect_error(hae_eval_runner_run(r, (const hae_task *const[]){a}, 0, NULL, NULL, &s), HAE_ERR_INVALID, "0 tasks",
                 "none");
    expect_error(hae_eval_runner_run(r, (const hae_task *const[]){a, a, a, a}, 4, NULL, NULL, &s), HAE_ERR_INVALID,
                 "expected 1..3", "beyond the batch");
    expect_error(hae_eval_runner_run(r, (const hae_task *const[]){c}, 1, NULL, NULL, &s), HAE_ERR_INVALID,
                 "beyond model.vocab_size 256", "vocabulary");
    expect_error(hae_eval_runner_run(r, (const hae_task *const[]){d}, 1, NULL, NULL, &s), HAE_ERR_INVALID,
                 "the runner holds 200", "too long");
    expect_error(hae_eval_runner_run(r, (const hae_task *const[]){a}, 1, failing_hook, NULL, &s), HAE_ERR_IO,
                 "hook says no", "hook");
    cr_expect(s.questions == 0 && s.answers == 0 && s.tokens == 0, "a failed run adds nothing to the score");
    /* a batch after the failures still runs, the padding row unscored */
    cr_assert_eq(hae_eval_runner_run(r, (const hae_task *const[]){a, a}, 2, hae_eval_oracle, NULL, &s), HAE_OK, "%s",
                 hae_last_error());
    cr_expect_eq(s.questions, 2 * a->n_queries);
    cr_expect_eq(s.correct, s.questions);
    hae_task_free(a), hae_task_free(b), hae_task_free(c), hae_task_free(d);
    hae_eval_runner_destroy(r);
    hae_backend_destroy(be);
    free(cfg);
}

Test(eval_model, grid_enumerates_the_axes_in_order) {
    hae_config *cfg = config("eval:\n  tasks: [mqar, multihop]\n  lengths: [100, 200]\n  pairs: [8, 16]\n"
                             "  hops: [1, 2]\n  chains: [0, 3]\n");
    hae_eval_point *p = NULL;
    int64_t n = 0;
    cr_assert_eq(hae_eval_grid(cfg, &p, &n), HAE_OK, "%s", hae_last_error());
    /* mqar: pairs x lengths; multihop: per hop count, chains 0 takes the pairs axis (2 x 2), chains 3 the lengths */
    cr_assert_eq(n, 4 + 2 * (4 + 2));
    const hae_eval_point want[] = {
        {HAE_TASK_MQAR, 100, 8, 1, 0},      {HAE_TASK_MQAR, 200, 8, 1, 0},      {HAE_TASK_MQAR, 100, 16, 1, 0},
        {HAE_TASK_MQAR, 200, 16, 1, 0},     {HAE_TASK_MULTIHOP, 100, 8, 1, 0},  {HAE_TASK_MULTIHOP, 200, 8, 1, 0},
        {HAE_TASK_MULTIHOP, 100, 16, 1, 0}, {HAE_TASK_MULTIHOP, 200, 16, 1, 0}, {HAE_TASK_MULTIHOP, 100, 0, 1, 3},
        {HAE_TASK_MULTIHOP, 200, 0, 1, 3},  {HAE_TASK_MULTIHOP, 100, 8, 2, 0},
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        cr_expect(p[i].task == want[i].task && p[i].length == want[i].length && p[i].pairs == want[i].pairs &&
                      p[i].hops == want[i].hops && p[i].chains == want[i].chains,
                  "point %zu: %s length %lld pairs %lld hops %lld chains %lld", i,
                  hae_task_kind_name(p[i].task), (long long)p[i].length, (long long)p[i].pairs, (long long)p[i].hops,
                  (long long)p[i].chains);
    /* chains 0: pairs / hops chains; chains > 0: that many */
    hae_task *t = NULL;
    cr_assert_eq(hae_eval_task(cfg, &(hae_eval_point){HAE_TASK_MULTIHOP, 200, 16, 2, 0}, 5, &t), HAE_OK, "%s",
                 hae_last_error());
    cr_expect(t->n_queries == 8 && t->hops == 2 && t->n_pairs == 16, "%lld chains of %d hops", (long long)t->n_queries,
              t->hops);
    hae_task_free(t);
    cr_assert_eq(hae_eval_task(cfg, &(hae_eval_point){HAE_TASK_MULTIHOP, 200, 0, 2, 3}, 5, &t), HAE_OK);
    cr_expect(t->n_queries == 3 && t->n_pairs == 6);
    hae_task_free(t);
    expect_error(hae_eval_task(cfg, &(hae_eval_point){HAE_TASK_MULTIHOP, 200, 1, 2, 0}, 5, NULL), HAE_ERR_INVALID,
                 "pairs / hops", "pairs below hops");
    expect_error(hae_eval_task(cfg, &(hae_eval_point){HAE_TASK_NIAH, 64, 30, 1, 0}, 5, NULL), HAE_ERR_INVALID,
                 "eval task niah, length 64, 30 needles", "niah too short");
    /* vocab 0: the model's; checks only, nothing generated with out NULL */
    cr_expect_eq(hae_eval_task(cfg, &p[0], 1, NULL), HAE_OK, "%s", hae_last_error());
    free(p);
    free(cfg);
}

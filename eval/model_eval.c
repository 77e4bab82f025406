/* Model-level runs (hae.h, the eval section): tasks through a whole model, scored by exact match at the
 * positions the token layout names, and the two test doubles that prove the path (an oracle and a random
 * guesser). */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

struct hae_eval_runner {
    hae_config *cfg; /* the model's config: runtime.prefill = max_tokens, decode 0 */
    hae_backend *be;
    hae_model *model;
    int64_t B, V, max_tokens;
    int32_t *seg; /* [B, max_tokens] host: the tokens of one forward */
    float *logits; /* [B, V] host: the logits of the last position */
    bool *ok;      /* [B] the current question right so far, per row */
    bool decode;   /* hae_eval_runner_set_decode */
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void hae_eval_runner_destroy(hae_eval_runner *r) {
    if (!r) return;
    hae_model_destroy(r->model);
    free(r->cfg), free(r->seg), free(r->logits), free(r->ok);
    free(r);
}

int64_t hae_eval_runner_batch(const hae_eval_runner *r) { return r ? r->B : 0; }
const hae_model *hae_eval_runner_model(const hae_eval_runner *r) { return r ? r->model : NULL; }

hae_status hae_eval_runner_load(hae_eval_runner *r, const char *weights) {
    if (!r || !weights) return hae_error(HAE_ERR_INVALID, "hae_eval_runner_load: NULL argument");
    return hae_model_load(r->model, weights);
}

void hae_eval_runner_set_decode(hae_eval_runner *r, bool decode) {
    if (r) r->decode = decode;
}

hae_status hae_eval_runner_create(const hae_config *cfg, hae_backend *be, int64_t max_tokens, const char *weights,
                                  hae_eval_runner **out) {
    if (!cfg || !be || !out) return hae_error(HAE_ERR_INVALID, "hae_eval_runner_create: NULL argument");
    *out = NULL;
    if (max_tokens < 1 || max_tokens > INT32_MAX)
        return hae_error(HAE_ERR_INVALID, "hae_eval_runner_create: max_tokens %lld must be in [1, 2^31)", (long long)max_tokens);
    hae_eval_runner *r = calloc(1, sizeof *r);
    hae_status st = r && (r->cfg = malloc(sizeof *r->cfg)) ? HAE_OK : hae_error(HAE_ERR_OOM, "eval: out of host memory");
    if (st == HAE_OK) {
        *r->cfg = *cfg;
        r->cfg->runtime.prefill = max_tokens, r->cfg->runtime.decode = 0;
        r->be = be, r->B = cfg->runtime.batch, r->V = cfg->model.vocab_size, r->max_tokens = max_tokens;
        r->seg = malloc(sizeof(int32_t) * (size_t)(r->B * max_tokens));
        r->logits = malloc(sizeof(float) * (size_t)(r->B * r->V));
        r->ok = malloc(sizeof(bool) * (size_t)r->B);
        if (!r->seg || !r->logits || !r->ok)
            st = hae_error(HAE_ERR_OOM, "eval: host buffers for %lld sequences of %lld tokens and %lld logits",
                           (long long)r->B, (long long)max_tokens, (long long)r->V);
    }
    if (st == HAE_OK) st = hae_model_create(r->cfg, be, NULL, &r->model);
    if (st == HAE_OK && weights) st = hae_model_load(r->model, weights);
    if (st != HAE_OK) return hae_eval_runner_destroy(r), st;
    *out = r;
    return HAE_OK;
}

/* Tasks run as one batch must agree on every position the run visits. */
static bool same_layout(const hae_task *a, const hae_task *b) {
    if (a->n_tokens != b->n_tokens || a->context != b->context || a->n_queries != b->n_queries) return false;
    for (int64_t i = 0; i < a->n_queries; i++)
        if (a->query_pos[i] != b->query_pos[i] || a->answer_off[i + 1] != b->answer_off[i + 1]) return false;
    return true;
}

/* Token ids an answer can take: the values (mqar, niah) or the variables (multihop). */
static void answer_range(const hae_task *t, int32_t *lo, int32_t *hi) {
    bool chained = t->kind == HAE_TASK_MULTIHOP;
    *lo = chained ? t->key_lo : t->value_lo, *hi = chained ? t->key_hi : t->value_hi;
}

/* Greedy pick: the largest logit, ties to the lower id, NaN never; -1 when every logit is NaN. */
static int64_t argmax(const float *x, int64_t n) {
    int64_t best = -1;
    for (int64_t i = 0; i < n; i++)
        if (x[i] == x[i] && (best < 0 || x[i] > x[best])) best = i;
    return best;
}

static hae_status check_batch(const hae_eval_runner *r, const hae_task *const *tasks, int64_t n) {
    const char *op = "hae_eval_runner_run";
    if (n < 1 || n > r->B)
        return hae_error(HAE_ERR_INVALID, "%s: %lld tasks, expected 1..%lld (runtime.batch)", op, (long long)n, (long long)r->B);
    for (int64_t i = 0; i < n; i++) {
        const hae_task *t = tasks[i];
        if (!t) return hae_error(HAE_ERR_INVALID, "%s: task %lld is NULL", op, (long long)i);
        if (!same_layout(tasks[0], t))
            return hae_error(HAE_ERR_INVALID,
                             "%s: task %lld (%lld tokens, %lld questions) and task 0 (%lld tokens, %lld questions) differ "
                             "in layout; a batch shares its scored positions",
                             op, (long long)i, (long long)t->n_tokens, (long long)t->n_queries,
                             (long long)tasks[0]->n_tokens, (long long)tasks[0]->n_queries);
        if (t->vocab > r->V)
            return hae_error(HAE_ERR_INVALID, "%s: task %lld uses token ids up to %lld, beyond model.vocab_size %lld", op,
                             (long long)i, (long long)t->vocab - 1, (long long)r->V);
    }
    const hae_task *t = tasks[0];
    if (t->n_tokens > r->max_tokens)
        return hae_error(HAE_ERR_INVALID, "%s: %lld tokens per task, the runner holds %lld", op, (long long)t->n_tokens,
                         (long long)r->max_tokens);
    for (int64_t q = 0; q < t->n_queries; q++) {
        int64_t first = t->query_pos[q], last = first + t->answer_off[q + 1] - t->answer_off[q] - 1;
        bool after = q == 0 || first > t->query_pos[q - 1] + (t->answer_off[q] - t->answer_off[q - 1]) - 1;
        if (first < 0 || last + 1 >= t->n_tokens || last < first || !after)
            return hae_error(HAE_ERR_INVALID, "%s: question %lld scores positions %lld..%lld, out of order or past the "
                             "%lld tokens", op, (long long)q, (long long)first, (long long)last, (long long)t->n_tokens);
    }
    return HAE_OK;
}

/* Forwards tokens [from, to) of every row (rows past n repeat task 0): as one forward, or in decode mode the part
 * before the first question as one prefill and the rest a token per forward. *logits are position to - 1's. */
static hae_status feed(hae_eval_runner *r, const hae_task *const *tasks, int64_t n, int64_t from, int64_t to,
                       hae_tensor *logits) {
    const int64_t context = tasks[0]->context;
    while (from < to) {
        int64_t end = to;
        if (r->decode) end = from >= context ? from + 1 : context < to ? context : to;
        const int64_t T = end - from;
        for (int64_t b = 0; b < r->B; b++)
            memcpy(r->seg + b * T, tasks[b < n ? b : 0]->tokens + from, sizeof(int32_t) * (size_t)T);
        HAE_TRY(hae_model_forward(r->model, r->seg, T, logits));
        from = end;
    }
    return HAE_OK;
}

hae_status hae_eval_runner_run(hae_eval_runner *r, const hae_task *const *tasks, int64_t n, hae_eval_logits_fn hook,
                               void *hook_ctx, hae_eval_score *score) {
    if (!r || !tasks || !score) return hae_error(HAE_ERR_INVALID, "hae_eval_runner_run: NULL argument");
    HAE_TRY(check_batch(r, tasks, n));
    const double t0 = now_s();
    const hae_task *lead = tasks[0];
    hae_eval_score add = {0};
    int64_t fed = 0; /* positions every row has been fed */
    hae_model_reset(r->model);
    for (int64_t q = 0; q < lead->n_queries; q++) {
        const int64_t n_ans = lead->answer_off[q + 1] - lead->answer_off[q];
        for (int64_t b = 0; b < n; b++) r->ok[b] = true;
        for (int64_t j = 0; j < n_ans; j++) {
            /* feed [fed, p]: the logits of position p predict the answer at p + 1 */
            const int64_t p = lead->query_pos[q] + j;
            hae_tensor logits;
            HAE_TRY(feed(r, tasks, n, fed, p + 1, &logits));
            HAE_TRY(hae_backend_download(r->be, r->logits, logits.data, sizeof(float) * (size_t)(r->B * r->V)));
            fed = p + 1;
            for (int64_t b = 0; b < n; b++) {
                float *row = r->logits + b * r->V;
                if (hook) {
                    hae_eval_site site = {.row = b, .task = tasks[b], .question = q, .answer = j, .pos = p};
                    HAE_TRY(hook(hook_ctx, &site, row, r->V));
                }
                bool hit = argmax(row, r->V) == tasks[b]->answers[tasks[b]->answer_off[q] + j];
                add.answers++, add.answers_correct += hit;
                r->ok[b] &= hit;
            }
        }
        for (int64_t b = 0; b < n; b++) {
            int32_t lo, hi;
            answer_range(tasks[b], &lo, &hi);
            double odds = 1.0;
            for (int64_t j = 0; j < n_ans; j++) odds /= (double)(hi - lo);
            add.questions++, add.correct += r->ok[b], add.chance += odds;
        }
    }
    score->questions += add.questions, score->correct += add.correct;
    score->answers += add.answers, score->answers_correct += add.answers_correct;
    score->chance += add.chance;
    score->tokens += n * fed;
    score->seconds += now_s() - t0;
    return HAE_OK;
}

/* ---------------------------------------------------------------- test doubles */

static hae_status check_site(const char *op, const hae_eval_site *s, const float *logits, int64_t V) {
    if (!s || !s->task || !logits) return hae_error(HAE_ERR_INVALID, "%s: NULL argument", op);
    const hae_task *t = s->task;
    if (s->pos < 1 || s->pos >= t->n_tokens || t->vocab > V)
        return hae_error(HAE_ERR_INVALID, "%s: position %lld of a %lld-token task, vocabulary %lld of %lld logits", op,
                         (long long)s->pos, (long long)t->n_tokens, (long long)t->vocab, (long long)V);
    return HAE_OK;
}

static bool in(int32_t x, int32_t lo, int32_t hi) { return x >= lo && x < hi; }

/* The oracle walks tokens[1 .. pos] once: mqar "k v" (a key then a value) and niah "NEEDLE k v" write
 * map[k] = v, a later write winning; multihop "LINK a b" writes map[a] = b. The question is read from the
 * tokens just before the site: the key after QUERY (its value, or its chain's last variable), or a variable
 * after LIST a0 ... (the next one on its chain). */
hae_status hae_eval_oracle(void *ctx, const hae_eval_site *s, float *logits, int64_t V) {
    (void)ctx;
    HAE_TRY(check_site("hae_eval_oracle", s, logits, V));
    const hae_task *t = s->task;
    const int32_t *tok = t->tokens;
    const bool chained = t->kind == HAE_TASK_MULTIHOP;
    int32_t *map = malloc(sizeof(int32_t) * (size_t)t->vocab);
    if (!map) return hae_error(HAE_ERR_OOM, "hae_eval_oracle: a map of %lld tokens", (long long)t->vocab);
    for (int64_t v = 0; v < t->vocab; v++) map[v] = -1;
    for (int64_t i = 1; i <= s->pos; i++) {
        if (t->kind == HAE_TASK_MQAR && in(tok[i - 1], t->key_lo, t->key_hi) && in(tok[i], t->value_lo, t->value_hi))
            map[tok[i - 1]] = tok[i];
        if (t->kind != HAE_TASK_MQAR && i >= 2 && tok[i - 2] == (chained ? HAE_TOK_LINK : HAE_TOK_NEEDLE) &&
            in(tok[i - 1], t->key_lo, t->key_hi))
            map[tok[i - 1]] = tok[i];
    }
    const int32_t x = tok[s->pos];
    int64_t marker = s->pos;
    while (chained && marker > 0 && in(tok[marker], t->key_lo, t->key_hi)) marker--;
    int32_t answer = in(x, 0, (int32_t)t->vocab) ? map[x] : -1;
    if (chained && tok[marker] == HAE_TOK_QUERY)
        for (int64_t step = 0; answer >= 0 && map[answer] >= 0 && step < t->vocab; step++) answer = map[answer];
    free(map);
    if (answer >= 0) {
        for (int64_t v = 0; v < V; v++) logits[v] = 0.0f;
        logits[answer] = 1.0f;
    }
    return HAE_OK;
}

hae_status hae_eval_random(void *ctx, const hae_eval_site *s, float *logits, int64_t V) {
    HAE_TRY(check_site("hae_eval_random", s, logits, V));
    int32_t lo, hi;
    answer_range(s->task, &lo, &hi);
    const uint64_t seed = ctx ? *(const uint64_t *)ctx : 0;
    const float u = hae_uniform(seed, (uint64_t)s->pos, (uint64_t)s->row, (uint64_t)s->task->tokens[s->pos]);
    int64_t pick = lo + (int64_t)(u * (float)(hi - lo));
    if (pick >= hi) pick = hi - 1;
    for (int64_t v = 0; v < V; v++) logits[v] = 0.0f;
    logits[pick] = 1.0f;
    return HAE_OK;
}

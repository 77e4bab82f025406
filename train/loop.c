/* `hae train`'s loop (hae.h, hae_train_run): tasks of the eval grid generated per step from seeds no eval uses,
 * AdamW on a warmup + cosine schedule, held-out evals on the tasks `hae eval` runs, metrics, and checkpoints that
 * resume bit for bit. Everything a step does is a function of the config, the step's index and the weights and
 * moments, so a run resumed from step s's checkpoint repeats the steps after s exactly. */
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Training tasks' seeds have the top bit set: `hae eval` uses seeds 1..eval.seeds. */
static uint64_t train_seed(uint64_t seed, int64_t step, int64_t row) {
    return hae_mix64(hae_mix64(seed ^ 0x747261696e696e67ull) ^ hae_mix64((uint64_t)step) ^ (uint64_t)row) |
           (1ull << 63);
}

/* ---------------------------------------------------------------- batches of tasks */

typedef struct {
    int64_t B, T, n, questions;
    int32_t *tokens;  /* [B, T] */
    int64_t *pos;     /* [n] scored rows */
    int32_t *target;  /* [n] */
    int64_t *q_first; /* [questions + 1]: question k's answers are scored entries [q_first[k], q_first[k + 1]) */
    uint8_t *correct; /* [n] */
} batch;

static void batch_free(batch *b) {
    free(b->tokens), free(b->pos), free(b->target), free(b->q_first), free(b->correct);
    memset(b, 0, sizeof *b);
}

/* The tasks of point p with seeds[0..B) as one batch: every task's answers scored at their positions. */
static hae_status batch_make(const hae_config *cfg, const hae_eval_point *p, const uint64_t *seeds, int64_t B,
                             batch *out) {
    batch_free(out);
    hae_task **tasks = calloc((size_t)B, sizeof *tasks);
    if (!tasks) return hae_error(HAE_ERR_OOM, "train: out of host memory");
    hae_status st = HAE_OK;
    int64_t n = 0, q = 0;
    for (int64_t b = 0; b < B && st == HAE_OK; b++) {
        st = hae_eval_task(cfg, p, seeds[b], &tasks[b]);
        if (st == HAE_OK) n += tasks[b]->answer_off[tasks[b]->n_queries], q += tasks[b]->n_queries;
    }
    const int64_t T = p->length;
    if (st == HAE_OK) {
        out->B = B, out->T = T, out->n = n, out->questions = q;
        out->tokens = malloc(sizeof(int32_t) * (size_t)(B * T));
        out->pos = malloc(sizeof(int64_t) * (size_t)n);
        out->target = malloc(sizeof(int32_t) * (size_t)n);
        out->q_first = malloc(sizeof(int64_t) * (size_t)(q + 1));
        out->correct = malloc((size_t)n);
        if (!out->tokens || !out->pos || !out->target || !out->q_first || !out->correct)
            st = hae_error(HAE_ERR_OOM, "train: a batch of %lld x %lld tokens", (long long)B, (long long)T);
    }
    for (int64_t b = 0, k = 0, i = 0; b < B && st == HAE_OK; b++) {
        const hae_task *t = tasks[b];
        memcpy(out->tokens + b * T, t->tokens, sizeof(int32_t) * (size_t)T);
        for (int64_t j = 0; j < t->n_queries; j++, k++) {
            out->q_first[k] = i;
            for (int64_t a = t->answer_off[j]; a < t->answer_off[j + 1]; a++, i++) {
                out->pos[i] = b * T + t->query_pos[j] + (a - t->answer_off[j]);
                out->target[i] = t->answers[a];
            }
        }
    }
    if (st == HAE_OK) out->q_first[q] = n;
    for (int64_t b = 0; b < B; b++) hae_task_free(tasks[b]);
    free(tasks);
    if (st != HAE_OK) batch_free(out);
    return st;
}

static hae_train_batch batch_view(const batch *b) {
    return (hae_train_batch){.tokens = b->tokens, .B = b->B, .T = b->T, .pos = b->pos, .target = b->target, .n = b->n};
}

/* Questions whose every answer was the argmax. */
static int64_t questions_right(const batch *b) {
    int64_t right = 0;
    for (int64_t k = 0; k < b->questions; k++) {
        bool ok = true;
        for (int64_t i = b->q_first[k]; i < b->q_first[k + 1]; i++) ok = ok && b->correct[i];
        right += ok;
    }
    return right;
}

/* The held-out eval: seeds 1..eval.seeds of every grid point, train.batch tasks per forward. */
static hae_status held_out(hae_trainer *tr, const hae_config *cfg, const hae_eval_point *pts, int64_t n_pts,
                           int64_t *right, int64_t *asked) {
    const int64_t S = cfg->eval.seeds, B = cfg->train.batch;
    uint64_t *seeds = malloc(sizeof(uint64_t) * (size_t)B);
    if (!seeds) return hae_error(HAE_ERR_OOM, "train: out of host memory");
    batch b = {0};
    hae_status st = HAE_OK;
    *right = *asked = 0;
    for (int64_t p = 0; p < n_pts && st == HAE_OK; p++)
        for (int64_t s0 = 0; s0 < S && st == HAE_OK; s0 += B) {
            const int64_t n = S - s0 < B ? S - s0 : B;
            for (int64_t i = 0; i < n; i++) seeds[i] = (uint64_t)(s0 + i + 1);
            st = batch_make(cfg, &pts[p], seeds, n, &b);
            hae_train_batch v = batch_view(&b);
            if (st == HAE_OK) st = hae_trainer_forward(tr, &v, NULL, NULL, b.correct);
            if (st == HAE_OK) *right += questions_right(&b), *asked += b.questions;
        }
    batch_free(&b);
    free(seeds);
    return st;
}

/* ---------------------------------------------------------------- files */

static hae_status write_file(const char *path, const char *text) {
    char tmp[HAE_PATH_MAX + 160];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return hae_error(HAE_ERR_IO, "cannot write %s: %s", tmp, strerror(errno));
    bool ok = fputs(text, f) >= 0;
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) return hae_error(HAE_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    return HAE_OK;
}

static hae_status make_dir(const char *path) {
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        return hae_error(HAE_ERR_IO, "cannot create directory %s: %s", path, strerror(errno));
    return HAE_OK;
}

static void ckpt_dir(const char *dir, int64_t step, char *out, size_t n) {
    snprintf(out, n, "%s/checkpoints/step-%06lld", dir, (long long)step);
}

/* model.safetensors, optim.safetensors, then the marker: a directory without it is never resumed. */
static hae_status checkpoint(hae_trainer *tr, const char *dir, char *out, size_t n) {
    char path[HAE_PATH_MAX + 128];
    snprintf(path, sizeof path, "%s/checkpoints", dir);
    HAE_TRY(make_dir(path));
    ckpt_dir(dir, hae_trainer_steps(tr), out, n);
    HAE_TRY(make_dir(out));
    snprintf(path, sizeof path, "%s/complete", out);
    remove(path);
    snprintf(path, sizeof path, "%s/model.safetensors", out);
    HAE_TRY(hae_trainer_save(tr, path));
    snprintf(path, sizeof path, "%s/optim.safetensors", out);
    HAE_TRY(hae_trainer_save_optim(tr, path));
    char text[64];
    snprintf(text, sizeof text, "step %lld\n", (long long)hae_trainer_steps(tr));
    snprintf(path, sizeof path, "%s/complete", out);
    return write_file(path, text);
}

/* The highest step of dir/checkpoints/step-N/ that holds its marker; 0 when none does. */
static int64_t latest_checkpoint(const char *dir) {
    char path[HAE_PATH_MAX + 128];
    snprintf(path, sizeof path, "%s/checkpoints", dir);
    DIR *d = opendir(path);
    if (!d) return 0;
    int64_t best = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        char *end = NULL;
        if (strncmp(e->d_name, "step-", 5)) continue;
        long long s = strtoll(e->d_name + 5, &end, 10);
        if (*end || s <= best) continue;
        struct stat sb;
        snprintf(path, sizeof path, "%s/checkpoints/%s/complete", dir, e->d_name);
        if (stat(path, &sb) == 0) best = s;
    }
    closedir(d);
    return best;
}

/* metrics.jsonl's lines of steps up to `step` kept (a resumed run rewrites the ones after), opened to append. */
static hae_status open_metrics(const char *dir, int64_t step, FILE **out) {
    char path[HAE_PATH_MAX + 64], tmp[HAE_PATH_MAX + 80];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if (step > 0) {
        FILE *in = fopen(path, "r"), *o = in ? fopen(tmp, "w") : NULL;
        bool ok = o != NULL;
        char line[4096];
        while (ok && fgets(line, sizeof line, in)) {
            long long s = 0;
            if (sscanf(line, "{\"step\": %lld", &s) == 1 && s <= step) ok = fputs(line, o) >= 0;
        }
        if (in) fclose(in);
        if (o) ok = fclose(o) == 0 && ok;
        if (in && (!ok || rename(tmp, path) != 0))
            return hae_error(HAE_ERR_IO, "cannot rewrite %s: %s", path, strerror(errno));
    }
    *out = fopen(path, step > 0 ? "a" : "w");
    if (!*out) return hae_error(HAE_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    return HAE_OK;
}

static const char *fmt_time(double s, char *buf, size_t n) {
    if (s >= 3600) snprintf(buf, n, "%dh%02dm", (int)(s / 3600), (int)fmod(s / 60, 60));
    else if (s >= 60) snprintf(buf, n, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
    else snprintf(buf, n, "%.1fs", s);
    return buf;
}

/* ---------------------------------------------------------------- the run */

/* The points of cfg's grid, checked against the model: token ids within its vocabulary, every task generable;
 * *T grows to the longest. */
static hae_status grid_points(const hae_config *cfg, const char *what, hae_eval_point **pts, int64_t *n, int64_t *T) {
    HAE_TRY(hae_eval_grid(cfg, pts, n));
    for (int64_t i = 0; i < *n; i++) {
        hae_status st = hae_eval_task(cfg, &(*pts)[i], 1, NULL);
        if (st != HAE_OK) {
            free(*pts), *pts = NULL;
            return hae_error_wrap(st, "%s", what);
        }
        if ((*pts)[i].length > *T) *T = (*pts)[i].length;
    }
    return HAE_OK;
}

/* The held-out grid (the eval section's) and the training points: the mixture train.lengths and train.pairs zip,
 * each pair of them one point of every task and hop count, or the held-out grid itself. */
static hae_status train_points(const hae_config *cfg, hae_eval_point **eval, int64_t *n_eval, hae_eval_point **train,
                               int64_t *n_train, int64_t *T) {
    if (cfg->eval.vocab > cfg->model.vocab_size)
        return hae_error(HAE_ERR_INVALID, "train: eval.vocab %lld exceeds model.vocab_size %lld (the tasks' token ids "
                                          "must be the model's)", (long long)cfg->eval.vocab,
                         (long long)cfg->model.vocab_size);
    *T = 0;
    HAE_TRY(grid_points(cfg, "train", eval, n_eval, T));
    const int n_mix = cfg->train.lengths.n;
    if (n_mix == 0) {
        if (!(*train = malloc(sizeof **train * (size_t)*n_eval))) return hae_error(HAE_ERR_OOM, "train: out of host memory");
        memcpy(*train, *eval, sizeof **train * (size_t)*n_eval);
        *n_train = *n_eval;
        return HAE_OK;
    }
    hae_config *one = malloc(sizeof *one);
    if (!one) return hae_error(HAE_ERR_OOM, "train: out of host memory");
    *one = *cfg;
    *train = NULL, *n_train = 0;
    hae_status st = HAE_OK;
    for (int i = 0; i < n_mix && st == HAE_OK; i++) {
        one->eval.lengths = (hae_eval_list){.n = 1, .v = {cfg->train.lengths.v[i]}};
        one->eval.pairs = (hae_eval_list){.n = 1, .v = {cfg->train.pairs.v[i]}};
        hae_eval_point *p = NULL, *all = NULL;
        int64_t n = 0;
        char what[96];
        snprintf(what, sizeof what, "train.lengths[%d], train.pairs[%d]", i, i);
        st = grid_points(one, what, &p, &n, T);
        if (st == HAE_OK && !(all = realloc(*train, sizeof *all * (size_t)(*n_train + n))))
            st = hae_error(HAE_ERR_OOM, "train: out of host memory");
        if (st == HAE_OK) memcpy(all + *n_train, p, sizeof *p * (size_t)n), *train = all, *n_train += n;
        free(p);
    }
    free(one);
    return st;
}

static bool has_dsa(const hae_config *cfg) {
    for (int64_t l = 0; l < cfg->model.n_layers; l++)
        if (cfg->model.layers[l] == HAE_LAYER_DSA) return true;
    return false;
}

typedef struct {
    hae_trainer *tr;
    hae_eval_point *pts, *train_pts; /* the held-out grid; the points trained on */
    int64_t n_pts, n_train;
    uint64_t *seeds;
    batch b;
    FILE *metrics;
    double *loss, *acc, *kl; /* rings of the last log_every steps (kl: the indexer loss) */
    /* train.eval_lengths: the grid at those lengths and the engine's model that scores it */
    hae_config *long_cfg;
    hae_eval_point *long_pts;
    int64_t n_long;
    hae_eval_runner *runner;
    hae_backend *long_be; /* a CPU backend of its own when the engine's CUDA kernels cannot run the model */
} run_state;

static void run_free(run_state *r) {
    hae_trainer_destroy(r->tr);
    hae_eval_runner_destroy(r->runner);
    hae_backend_destroy(r->long_be);
    free(r->long_cfg), free(r->long_pts);
    free(r->pts), free(r->train_pts), free(r->seeds), free(r->loss), free(r->acc), free(r->kl);
    batch_free(&r->b);
    if (r->metrics) fclose(r->metrics);
}

/* The eval grid at train.eval_lengths, checked (every task fits its length and the vocabulary), and an engine
 * model on the training backend to score it; on the CPU when the engine's CUDA kernels do not take the model's
 * shapes (its linear layers run heads of 64 or 128 on CUDA; the trainer any). */
static hae_status long_start(const hae_train_args *a, run_state *r) {
    const hae_config *cfg = a->cfg;
    if (cfg->train.eval_lengths.n == 0) return HAE_OK;
    if (!(r->long_cfg = malloc(sizeof *r->long_cfg))) return hae_error(HAE_ERR_OOM, "train: out of host memory");
    *r->long_cfg = *cfg;
    r->long_cfg->eval.lengths = cfg->train.eval_lengths;
    hae_status st = hae_eval_grid(r->long_cfg, &r->long_pts, &r->n_long);
    int64_t T = 0;
    for (int64_t i = 0; st == HAE_OK && i < r->n_long; i++) {
        st = hae_eval_task(r->long_cfg, &r->long_pts[i], 1, NULL);
        if (r->long_pts[i].length > T) T = r->long_pts[i].length;
    }
    if (st != HAE_OK) return hae_error_wrap(st, "train.eval_lengths");
    st = hae_eval_runner_create(r->long_cfg, a->be, T, NULL, &r->runner);
    if (st != HAE_ERR_UNSUPPORTED || hae_backend_device(a->be) != HAE_CUDA) return st;
    if (a->progress) fprintf(a->progress, "train.eval_lengths: scored on the CPU: %s\n", hae_last_error());
    HAE_TRY(hae_backend_create(HAE_CPU, cfg->runtime.threads, &r->long_be));
    return hae_eval_runner_create(r->long_cfg, r->long_be, T, NULL, &r->runner);
}

/* Held-out accuracy at each of train.eval_lengths through the engine, the trainer's weights passed through a file
 * in the run directory (removed after). */
static hae_status long_eval(run_state *r, const char *dir, double *acc) {
    const hae_config *cfg = r->long_cfg;
    char path[HAE_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/eval-weights.safetensors", dir);
    HAE_TRY(hae_trainer_save(r->tr, path));
    hae_status st = hae_eval_runner_load(r->runner, path);
    remove(path);
    HAE_TRY(st);
    const int64_t B = hae_eval_runner_batch(r->runner), S = cfg->eval.seeds;
    hae_task **tasks = calloc((size_t)B, sizeof *tasks);
    if (!tasks) return hae_error(HAE_ERR_OOM, "train: out of host memory");
    for (int i = 0; i < cfg->eval.lengths.n && st == HAE_OK; i++) {
        hae_eval_score score = {0};
        for (int64_t p = 0; p < r->n_long && st == HAE_OK; p++) {
            if (r->long_pts[p].length != cfg->eval.lengths.v[i]) continue;
            for (int64_t s0 = 1; s0 <= S && st == HAE_OK; s0 += B) {
                const int64_t n = S - s0 + 1 < B ? S - s0 + 1 : B;
                for (int64_t b = 0; b < n && st == HAE_OK; b++) st = hae_eval_task(cfg, &r->long_pts[p], (uint64_t)(s0 + b), &tasks[b]);
                if (st == HAE_OK) st = hae_eval_runner_run(r->runner, (const hae_task *const *)tasks, n, NULL, NULL, &score);
                for (int64_t b = 0; b < n; b++) hae_task_free(tasks[b]), tasks[b] = NULL;
            }
        }
        acc[i] = score.questions ? (double)score.correct / (double)score.questions : NAN;
    }
    free(tasks);
    return st;
}

/* `"eval_at": {"512": 0.25, ...}` of the last long eval, into buf. */
static void eval_at_json(const hae_config *cfg, const double *acc, char *buf, size_t cap) {
    size_t at = (size_t)snprintf(buf, cap, "\"eval_at\": {");
    for (int i = 0; i < cfg->train.eval_lengths.n && at < cap; i++)
        at += (size_t)snprintf(buf + at, cap - at, "%s\"%lld\": %.6f", i ? ", " : "", (long long)cfg->train.eval_lengths.v[i],
                               acc[i]);
    if (at < cap) snprintf(buf + at, cap - at, "}");
}

static hae_status start(const hae_train_args *a, run_state *r, int64_t *first) {
    const hae_config *cfg = a->cfg;
    int64_t T = 0;
    HAE_TRY(train_points(cfg, &r->pts, &r->n_pts, &r->train_pts, &r->n_train, &T));
    HAE_TRY(long_start(a, r));
    HAE_TRY(hae_trainer_create(cfg, a->be, cfg->train.batch, T, &r->tr));
    const int64_t W = cfg->train.log_every;
    r->seeds = malloc(sizeof(uint64_t) * (size_t)cfg->train.batch);
    r->loss = calloc((size_t)W, sizeof(double));
    r->acc = calloc((size_t)W, sizeof(double));
    r->kl = calloc((size_t)W, sizeof(double));
    if (!r->seeds || !r->loss || !r->acc || !r->kl) return hae_error(HAE_ERR_OOM, "train: out of host memory");
    char path[HAE_PATH_MAX + 128];
    *first = a->resume ? latest_checkpoint(a->dir) : 0;
    if (*first > 0) {
        char ck[HAE_PATH_MAX + 64];
        ckpt_dir(a->dir, *first, ck, sizeof ck);
        snprintf(path, sizeof path, "%s/model.safetensors", ck);
        HAE_TRY(hae_trainer_load(r->tr, path));
        snprintf(path, sizeof path, "%s/optim.safetensors", ck);
        HAE_TRY(hae_trainer_load_optim(r->tr, path));
        if (hae_trainer_steps(r->tr) != *first)
            return hae_error(HAE_ERR_FORMAT, "%s: the optimiser state is of step %lld, its directory says %lld", path,
                             (long long)hae_trainer_steps(r->tr), (long long)*first);
    }
    char *text = NULL;
    snprintf(path, sizeof path, "%s/config.resolved.yaml", a->dir);
    HAE_TRY(hae_config_to_yaml(cfg, &text));
    hae_status st = write_file(path, text);
    free(text);
    HAE_TRY(st);
    if (!(text = hae_env_json(a->be))) return hae_error(HAE_ERR_OOM, "train: out of host memory");
    snprintf(path, sizeof path, "%s/env.json", a->dir);
    st = write_file(path, text);
    free(text);
    HAE_TRY(st);
    return open_metrics(a->dir, *first, &r->metrics);
}

static hae_status summary(const hae_train_args *a, const hae_train_result *res, int64_t n_params) {
    char text[4096 + 64 * HAE_EVAL_MAX_VALUES], path[HAE_PATH_MAX + 64], at[64 * HAE_EVAL_MAX_VALUES] = "";
    if (a->cfg->train.eval_lengths.n > 0) {
        eval_at_json(a->cfg, res->eval_at, at + 2, sizeof at - 4);
        memcpy(at, "  ", 2);
        strcat(at, ",\n");
    }
    snprintf(text, sizeof text,
             "{\n  \"name\": \"%s\",\n  \"steps\": %lld,\n  \"first_step\": %lld,\n  \"params\": %lld,\n"
             "  \"loss\": %.6f,\n  \"accuracy\": %.6f,\n  \"eval_accuracy\": %.6f,\n  \"eval_questions\": %lld,\n%s"
             "  \"seconds\": %.3f,\n  \"tokens_per_s\": %.1f,\n  \"tflop_s\": %.4f,\n  \"checkpoint\": \"%s\"\n}\n",
             a->cfg->name, (long long)res->last_step, (long long)res->first_step, (long long)n_params, res->loss,
             res->accuracy, res->eval_accuracy, (long long)res->eval_questions, at, res->seconds, res->tokens_per_s,
             res->tflop_s, res->checkpoint);
    snprintf(path, sizeof path, "%s/summary.json", a->dir);
    return write_file(path, text);
}

hae_status hae_train_run(const hae_train_args *a, hae_train_result *out) {
    if (!a || !a->cfg || !a->dir || !out) return hae_error(HAE_ERR_INVALID, "hae_train_run: NULL argument");
    memset(out, 0, sizeof *out);
    const hae_config *cfg = a->cfg;
    const int64_t steps = cfg->train.steps, W = cfg->train.log_every, B = cfg->train.batch;
    const int64_t last = a->until > 0 && a->until < steps ? a->until : steps;
    run_state r = {0};
    int64_t first = 0;
    hae_status st = start(a, &r, &first);
    out->first_step = out->last_step = first;
    out->eval_accuracy = NAN;
    int64_t n_params = 0;
    for (int p = 0; r.tr && p < hae_trainer_param_count(r.tr); p++) {
        int64_t n = 0;
        hae_trainer_param(r.tr, p, NULL, NULL, NULL, &n);
        n_params += n;
    }
    if (st == HAE_OK && a->progress)
        fprintf(a->progress,
                "  train %s: %lld parameters, steps %lld..%lld of %lld, batch %lld, %lld training points, %lld held out\n",
                cfg->name, (long long)n_params, (long long)first + 1, (long long)last, (long long)steps, (long long)B,
                (long long)r.n_train, (long long)r.n_pts);
    const double t0 = now_s();
    int64_t tokens = 0, logged = 0;
    double flops = 0;
    for (int64_t s = first; s < last && st == HAE_OK; s++) {
        const hae_eval_point *p = &r.train_pts[s % r.n_train];
        for (int64_t b = 0; b < B; b++) r.seeds[b] = train_seed(cfg->seed, s, b);
        double loss = 0, norm = 0;
        st = batch_make(cfg, p, r.seeds, B, &r.b);
        hae_train_batch v = batch_view(&r.b);
        if (st == HAE_OK) st = hae_trainer_backward(r.tr, &v, &loss, r.b.correct);
        const float lr = hae_train_lr(cfg, s);
        if (st == HAE_OK) st = hae_trainer_step(r.tr, lr, &norm);
        if (st != HAE_OK) break;
        tokens += B * p->length;
        flops += hae_trainer_flops(r.tr);
        const double acc = (double)questions_right(&r.b) / (double)r.b.questions, el = now_s() - t0;
        r.loss[s % W] = loss, r.acc[s % W] = acc, r.kl[s % W] = hae_trainer_index_kl(r.tr), logged++;
        fprintf(r.metrics, "{\"step\": %lld, \"loss\": %.9g, \"accuracy\": %.6f, \"lr\": %.9g, \"grad_norm\": %.9g, "
                           "\"tokens\": %lld, \"seconds\": %.3f",
                (long long)s + 1, loss, acc, (double)lr, norm, (long long)(B * p->length), el);
        if (has_dsa(cfg)) fprintf(r.metrics, ", \"index_kl\": %.9g", hae_trainer_index_kl(r.tr));
        const bool eval = s + 1 == steps || (cfg->train.eval_every > 0 && (s + 1) % cfg->train.eval_every == 0);
        if (eval) {
            int64_t right = 0, asked = 0;
            st = held_out(r.tr, cfg, r.pts, r.n_pts, &right, &asked);
            out->eval_accuracy = asked ? (double)right / (double)asked : NAN;
            out->eval_questions = asked;
            if (st == HAE_OK) fprintf(r.metrics, ", \"eval_accuracy\": %.6f, \"eval_questions\": %lld",
                                      out->eval_accuracy, (long long)asked);
            if (st == HAE_OK && r.runner) st = long_eval(&r, a->dir, out->eval_at);
            if (st == HAE_OK && r.runner) {
                char js[64 * HAE_EVAL_MAX_VALUES];
                eval_at_json(cfg, out->eval_at, js, sizeof js);
                fprintf(r.metrics, ", %s", js);
            }
        }
        fprintf(r.metrics, "}\n");
        if (fflush(r.metrics) != 0 && st == HAE_OK) st = hae_error(HAE_ERR_IO, "cannot write %s/metrics.jsonl", a->dir);
        const bool ckpt = s + 1 == last || (cfg->train.checkpoint_every > 0 && (s + 1) % cfg->train.checkpoint_every == 0);
        if (st == HAE_OK && ckpt) st = checkpoint(r.tr, a->dir, out->checkpoint, sizeof out->checkpoint);
        out->last_step = s + 1;
        if (a->progress && st == HAE_OK && ((s + 1) % W == 0 || s + 1 == last || eval)) {
            const int64_t k = logged < W ? logged : W;
            double ml = 0, ma = 0, mk = 0;
            for (int64_t i = 0; i < k; i++) ml += r.loss[(s - i) % W], ma += r.acc[(s - i) % W], mk += r.kl[(s - i) % W];
            char e[32 + 32 * HAE_EVAL_MAX_VALUES] = "", kl[32] = "", t1[16], t2[16];
            if (has_dsa(cfg)) snprintf(kl, sizeof kl, "  index kl %.4f", mk / (double)k);
            if (eval) {
                int at = snprintf(e, sizeof e, "  eval %.3f", out->eval_accuracy);
                for (int i = 0; r.runner && i < cfg->train.eval_lengths.n; i++)
                    at += snprintf(e + at, sizeof e - (size_t)at, "%s%lld: %.3f%s", i ? ", " : " (",
                                   (long long)cfg->train.eval_lengths.v[i], out->eval_at[i],
                                   i + 1 == cfg->train.eval_lengths.n ? ")" : "");
            }
            fprintf(a->progress, "  step %lld/%lld  loss %.4f  acc %.3f%s%s  %.0f tok/s  %s, %s left\n", (long long)s + 1,
                    (long long)steps, ml / (double)k, ma / (double)k, kl, e, (double)tokens / el, fmt_time(el, t1, sizeof t1),
                    fmt_time(el / (double)(s + 1 - first) * (double)(last - s - 1), t2, sizeof t2));
        }
    }
    out->seconds = now_s() - t0;
    out->tokens_per_s = out->seconds > 0 ? (double)tokens / out->seconds : 0;
    out->tflop_s = out->seconds > 0 ? flops / out->seconds / 1e12 : 0;
    const int64_t k = logged < W ? logged : W;
    for (int64_t i = 0; i < k; i++) {
        out->loss += r.loss[(out->last_step - 1 - i) % W] / (double)k;
        out->accuracy += r.acc[(out->last_step - 1 - i) % W] / (double)k;
    }
    if (st == HAE_OK && first == last && first > 0) ckpt_dir(a->dir, first, out->checkpoint, sizeof out->checkpoint);
    if (st == HAE_OK) st = summary(a, out, n_params);
    run_free(&r);
    return st;
}

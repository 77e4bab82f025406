/* The `hae` command line: run, info, eval, report, mem, train. Results go to stdout, progress to stderr. */
#include "internal.h"
#include "../eval/chart.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_SETS 64

static const char *usage_main =
    "usage: hae COMMAND [options]\n"
    "\n"
    "commands:\n"
    "  run  [CONFIG]   prefill + decode on random tokens; prints speed and memory, writes a run directory\n"
    "  info [CONFIG]   the resolved stack, parameters and KV bytes, next to its full-attention twin\n"
    "  eval [CONFIG]   recall on mqar, multi-hop and needle tasks: through the model, (--probe) through each\n"
    "                  layer kind's real ops with no weights, or (--circuit) through hand-built circuits of each\n"
    "                  kind; the grid is the config's eval section\n"
    "  report DIR...   eval run directories merged into one table and chart\n"
    "  mem  [CONFIG]   GPU and host bytes at several contexts vs the full-attention twin; the longest that fits\n"
    "  train [CONFIG]  trains the model on the eval section's tasks (CPU or GPU), with checkpoints `hae eval` reads\n"
    "\n"
    "CONFIG is a YAML file (configs/*.yaml); without one, the built-in default (configs/default.yaml).\n"
    "`hae COMMAND --help` lists a command's options; docs/config.md lists every config key.\n";

static const char *usage_run =
    "usage: hae run [CONFIG] [options]\n"
    "\n"
    "Builds the model of CONFIG (weights from its seed, or --weights), prefills runtime.prefill random\n"
    "tokens per sequence, then decodes runtime.decode tokens (greedy, or runtime.temperature). With a\n"
    "`sweep:` section, runs every job of the sweep, one run directory each.\n"
    "\n"
    "options:\n"
    "  --set KEY=VALUE     override a config key (dotted path, YAML value), repeatable\n"
    "  --backend B         auto | cpu | cuda (same as --set runtime.backend=B)\n"
    "  --out DIR           run directory (default: OUTPUT_DIR/NAME-YYYYmmdd-HHMMSS)\n"
    "  --weights FILE      load weights from a safetensors file instead of initialising them\n"
    "  --save-weights FILE save the weights as safetensors after the run\n"
    "  --trace-selections  write the dsa layers' selections of every decode step to selections.txt (a line\n"
    "                      per step, layer and sequence: POS LAYER SEQ t1 .. tk), for replaying cache\n"
    "                      policies offline (bench/slot-policies.py); each step then waits for its copy\n"
    "\n"
    "On a GPU, one chunk and one decode step run first as a warm-up and are not timed.\n"
    "\n"
    "writes: config.resolved.yaml, env.json, metrics.jsonl (one line per step), summary.json\n";

static const char *usage_info =
    "usage: hae info [CONFIG] [--set KEY=VALUE]...\n"
    "\n"
    "Prints the resolved stack (layers by kind, parameters, bytes of weights and activations) and the KV\n"
    "bytes per token of every layer and at the configured context, next to the config's full-attention\n"
    "twin (same shapes, every layer `full`), so the memory saving is visible before any run.\n";

typedef struct {
    const char *config;
    const char *sets[MAX_SETS];
    int n_sets;
    const char *out_dir;
    const char *weights;
    const char *save_weights;
    bool trace; /* --trace-selections */
    char backend_set[64];
} options;

static int fail(const char *what) {
    fprintf(stderr, "hae: %s%s%s\n", what ? what : "", what ? ": " : "", hae_last_error());
    return 1;
}

/* A weights file with tensors the model did not read loads, but says so: a deeper model's layers or a learned
 * indexer under a derived one are skipped, and a config that does not match its weights shows here. */
static void warn_unused(const hae_model *m, const char *weights) {
    const char *first = NULL;
    const int n = hae_model_unused_tensors(m, &first);
    if (n > 0)
        fprintf(stderr, "hae: warning: %d tensor%s of %s %s not used by this model (the first: '%s')\n", n, n > 1 ? "s" : "",
                weights, n > 1 ? "are" : "is", first);
}

/* Parses argv after the command; returns 0 ok, 1 error, 2 help printed. */
static int parse_options(int argc, char **argv, bool is_run, options *o) {
    memset(o, 0, sizeof *o);
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(is_run ? usage_run : usage_info, stdout);
            return 2;
        } else if (!strcmp(a, "--set")) {
            if (!val) return fprintf(stderr, "hae: --set needs KEY=VALUE\n"), 1;
            if (o->n_sets == MAX_SETS) return fprintf(stderr, "hae: more than %d --set options\n", MAX_SETS), 1;
            o->sets[o->n_sets++] = val;
            i++;
        } else if (!strncmp(a, "--set=", 6)) {
            if (o->n_sets == MAX_SETS) return fprintf(stderr, "hae: more than %d --set options\n", MAX_SETS), 1;
            o->sets[o->n_sets++] = a + 6;
        } else if (is_run && !strcmp(a, "--backend")) {
            if (!val) return fprintf(stderr, "hae: --backend needs auto, cpu or cuda\n"), 1;
            snprintf(o->backend_set, sizeof o->backend_set, "runtime.backend=%s", val);
            if (o->n_sets == MAX_SETS) return fprintf(stderr, "hae: more than %d --set options\n", MAX_SETS), 1;
            o->sets[o->n_sets++] = o->backend_set;
            i++;
        } else if (is_run && !strcmp(a, "--trace-selections")) {
            o->trace = true;
        } else if (is_run && (!strcmp(a, "--out") || !strcmp(a, "--weights") || !strcmp(a, "--save-weights"))) {
            if (!val) return fprintf(stderr, "hae: %s needs a path\n", a), 1;
            if (!strcmp(a, "--out")) o->out_dir = val;
            else if (!strcmp(a, "--weights")) o->weights = val;
            else o->save_weights = val;
            i++;
        } else if (a[0] == '-') {
            fprintf(stderr, "hae: unknown option '%s' (see hae %s --help)\n", a, is_run ? "run" : "info");
            return 1;
        } else if (!o->config) {
            o->config = a;
        } else {
            fprintf(stderr, "hae: more than one config given ('%s' and '%s')\n", o->config, a);
            return 1;
        }
    }
    return 0;
}

static hae_status load_config(const options *o, hae_config *cfg) {
    if (o->config) return hae_config_load(o->config, o->sets, o->n_sets, cfg);
    const char *y = hae_config_default_yaml();
    return hae_config_parse(y, strlen(y), "<default>", o->sets, o->n_sets, cfg);
}

/* ---------------------------------------------------------------- formatting */

static const char *fmt_bytes(double b, char *buf, size_t n) {
    const char *unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (b >= 1024.0 && u < 4) b /= 1024.0, u++;
    snprintf(buf, n, u ? "%.2f %s" : "%.0f %s", b, unit[u]);
    return buf;
}

static const char *fmt_count(double c, char *buf, size_t n) {
    if (c >= 1e9) snprintf(buf, n, "%.2fB", c / 1e9);
    else if (c >= 1e6) snprintf(buf, n, "%.2fM", c / 1e6);
    else if (c >= 1e3) snprintf(buf, n, "%.1fK", c / 1e3);
    else snprintf(buf, n, "%.0f", c);
    return buf;
}

/* "0-2 swa, 3 full" style summary of which layers are which kind. */
static void layer_summary(const hae_config *cfg, char *out, size_t n) {
    size_t used = 0;
    out[0] = '\0';
    for (int64_t l = 0; l < cfg->model.n_layers;) {
        int64_t e = l;
        while (e + 1 < cfg->model.n_layers && cfg->model.layers[e + 1] == cfg->model.layers[l]) e++;
        char r[64];
        if (e > l) snprintf(r, sizeof r, "%lld-%lld", (long long)l, (long long)e);
        else snprintf(r, sizeof r, "%lld", (long long)l);
        used += (size_t)snprintf(out + used, used < n ? n - used : 0, "%s%s %s", l ? ", " : "", r,
                                 hae_layer_kind_name(cfg->model.layers[l]));
        l = e + 1;
    }
}

static void twin_of(const hae_config *cfg, hae_config *twin) {
    *twin = *cfg;
    for (int64_t l = 0; l < twin->model.n_layers; l++) twin->model.layers[l] = HAE_LAYER_FULL;
}

/* ---------------------------------------------------------------- info */

static int cmd_info(int argc, char **argv) {
    options o;
    int r = parse_options(argc, argv, false, &o);
    if (r) return r == 2 ? 0 : 1;
    hae_config cfg, twin;
    if (load_config(&o, &cfg) != HAE_OK) return fail(NULL);
    twin_of(&cfg, &twin);
    hae_model_plan *p = malloc(sizeof *p), *pt = malloc(sizeof *pt);
    if (!p || !pt) return free(p), free(pt), fprintf(stderr, "hae: out of memory\n"), 1;
    if (hae_model_plan_get(&cfg, NULL, p) != HAE_OK || hae_model_plan_get(&twin, NULL, pt) != HAE_OK) {
        free(p), free(pt);
        return fail(cfg.source);
    }
    char b1[32], b2[32], b3[32], kinds[2048];
    layer_summary(&cfg, kinds, sizeof kinds);
    int counts[HAE_LAYER_KIND_COUNT] = {0};
    for (int64_t l = 0; l < cfg.model.n_layers; l++) counts[cfg.model.layers[l]]++;
    printf("config      %s (%s)\n", cfg.name, cfg.source);
    printf("stack       %lld layers: %s\n", (long long)cfg.model.n_layers, kinds);
    printf("by kind    ");
    for (int k = 0; k < HAE_LAYER_KIND_COUNT; k++)
        if (counts[k]) printf(" %s x%d", hae_layer_kind_name((hae_layer_kind)k), counts[k]);
    printf("\n");
    const char *rope = cfg.model.attention.rope == HAE_ROPE_NONE   ? "none"
                       : cfg.model.attention.rope == HAE_ROPE_FULL ? "full"
                                                                    : "partial";
    if (cfg.model.attention.form == HAE_ATTN_GQA)
        printf("shapes      vocab %lld, d_model %lld, attention gqa %lldq/%lldkv x %lld, rope %s, d_ff %lld\n",
               (long long)cfg.model.vocab_size, (long long)cfg.model.d_model, (long long)cfg.model.attention.num_heads,
               (long long)cfg.model.attention.num_kv_heads, (long long)cfg.model.attention.head_dim, rope,
               (long long)cfg.model.mlp.intermediate_size);
    else
        printf("shapes      vocab %lld, d_model %lld, attention mla %lld heads (q/k %lld nope + %lld rope, v %lld) over "
               "a latent of %lld + %lld rope, rope %s, d_ff %lld\n",
               (long long)cfg.model.vocab_size, (long long)cfg.model.d_model, (long long)cfg.model.attention.num_heads,
               (long long)cfg.model.attention.qk_nope_head_dim, (long long)cfg.model.attention.qk_rope_head_dim,
               (long long)cfg.model.attention.v_head_dim, (long long)cfg.model.attention.kv_lora_rank,
               (long long)cfg.model.attention.qk_rope_head_dim, rope, (long long)cfg.model.mlp.intermediate_size);
    bool linear = false;
    for (int64_t l = 0; l < cfg.model.n_layers; l++) linear |= hae_linear_kind_of(cfg.model.layers[l], &(hae_linear_kind){0});
    if (linear) {
        int64_t h = cfg.model.linear_attn.num_heads, hv = cfg.model.linear_attn.num_v_heads,
                k = cfg.model.linear_attn.head_dim;
        printf("linear      %lld q/k heads x %lld, %lld v heads x %lld, conv %lld, chunk %lld, gate %s", (long long)h,
               (long long)k, (long long)(hv ? hv : h), (long long)llround((double)k * cfg.model.linear_attn.expand_v),
               (long long)cfg.model.linear_attn.conv_size, (long long)cfg.model.linear_attn.chunk_size,
               cfg.model.linear_attn.safe_gate ? "safe" : "softplus");
        if (cfg.model.linear_attn.safe_gate) printf(" (lower bound %g)", (double)cfg.model.linear_attn.lower_bound);
        printf("\n");
    }
    if (counts[HAE_LAYER_DSA])
        printf("dsa         indexer %s%lld heads x %lld FP8, top-%lld, rope %lld dims, key pages of %lld tokens%s\n",
               cfg.model.dsa.derived ? "derived from q/k, " : "",
               (long long)(cfg.model.dsa.derived ? cfg.model.attention.num_heads : cfg.model.dsa.index_n_heads),
               (long long)cfg.model.dsa.index_head_dim, (long long)cfg.model.dsa.index_topk,
               (long long)cfg.model.dsa.index_rope_dim, (long long)cfg.model.dsa.page_size,
               !cfg.memory.dsa_kv_fp8                     ? ""
               : cfg.model.attention.form == HAE_ATTN_MLA ? "; K/V in mla's FP8 token layout (656 B)"
                                                          : "; K/V in gqa's FP8 layout (e4m3 heads, a scale per 128 dims)");
    printf("parameters  %s (%s of weights in %s)\n", fmt_count((double)p->n_params, b1, sizeof b1),
           fmt_bytes((double)p->weight_bytes, b2, sizeof b2), hae_dtype_name(cfg.runtime.dtype));
    printf("runtime     batch %lld, context %lld (prefill %lld + decode %lld), chunk %lld, activations %s\n",
           (long long)cfg.runtime.batch, (long long)p->context, (long long)cfg.runtime.prefill,
           (long long)cfg.runtime.decode, (long long)(cfg.runtime.prefill_chunk ? cfg.runtime.prefill_chunk : p->context),
           fmt_bytes((double)p->activation_bytes, b3, sizeof b3));
    printf("\n%-6s %-8s %12s %10s %14s %14s %16s\n", "layer", "kind", "kv B/token", "kv slots", "kv bytes",
           "state B/seq", "twin kv bytes");
    for (int64_t l = 0; l < cfg.model.n_layers; l++) {
        size_t kb = (size_t)cfg.runtime.batch * (size_t)p->kv_slots[l] * p->kv_bytes_per_token[l];
        size_t tb = (size_t)cfg.runtime.batch * (size_t)pt->kv_slots[l] * pt->kv_bytes_per_token[l];
        printf("%-6lld %-8s %12zu %10lld %14s %14zu %16s\n", (long long)l, hae_layer_kind_name(cfg.model.layers[l]),
               p->kv_bytes_per_token[l], (long long)p->kv_slots[l], fmt_bytes((double)kb, b1, sizeof b1),
               p->state_bytes_per_seq[l], fmt_bytes((double)tb, b2, sizeof b2));
    }
    printf("%-6s %-8s %12s %10s %14s %14s %16s\n", "total", "", "", "", fmt_bytes((double)p->kv_bytes, b1, sizeof b1),
           fmt_bytes((double)p->state_bytes, b3, sizeof b3), fmt_bytes((double)pt->kv_bytes, b2, sizeof b2));
    size_t mine = p->kv_bytes + p->state_bytes;
    double saving = pt->kv_bytes ? 100.0 * (1.0 - (double)mine / (double)pt->kv_bytes) : 0.0;
    printf("\nKV cache + states at context %lld: %s vs %s for the full-attention twin (%.1f%% less)\n",
           (long long)p->context, fmt_bytes((double)mine, b1, sizeof b1), fmt_bytes((double)pt->kv_bytes, b2, sizeof b2),
           saving);
    free(p);
    free(pt);
    return 0;
}

/* ---------------------------------------------------------------- run */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Percentile by nearest rank over a sorted array. */
static double percentile(const double *sorted, int64_t n, double q) {
    if (n == 0) return 0.0;
    int64_t k = (int64_t)ceil(q * (double)n) - 1;
    if (k < 0) k = 0;
    if (k >= n) k = n - 1;
    return sorted[k];
}

static hae_status mkdirs(const char *path) {
    char buf[2 * HAE_PATH_MAX];
    size_t len = strlen(path);
    if (len >= sizeof buf) return hae_error(HAE_ERR_IO, "directory path of %zu bytes is too long", len);
    memcpy(buf, path, len + 1);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buf, 0755) && errno != EEXIST)
            return hae_error(HAE_ERR_IO, "cannot create directory %s: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0755) && errno != EEXIST)
        return hae_error(HAE_ERR_IO, "cannot create directory %s: %s", buf, strerror(errno));
    return HAE_OK;
}

static hae_status write_text(const char *dir, const char *file, const char *text) {
    char path[2 * HAE_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    FILE *f = fopen(path, "w");
    if (!f) return hae_error(HAE_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    fputs(text, f);
    if (fclose(f)) return hae_error(HAE_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    return HAE_OK;
}

typedef struct {
    char label[256];
    char backend[160];
    double prefill_tok_s, decode_tok_s, p50_ms, p99_ms;
    double issue_p50_ms; /* host time issuing a decode step's work (hae_model_forward before the sync) */
    hae_model_stats stats;
    double step_fetched, step_hit_rate; /* host tier: bytes fetched per decode step, the decode steps' hit rate */
} job_result;

/* Progress on stderr: a bar redrawn in place on a terminal, one line per quarter otherwise. */
typedef struct {
    bool tty, quiet;
    int last_quarter;
} progress;

static void progress_step(progress *pg, int64_t done, int64_t total, double ms) {
    if (pg->quiet || total <= 0) return;
    if (pg->tty) {
        int width = 30, fill = (int)(width * done / total);
        fprintf(stderr, "\r  decode [%.*s%*s] %lld/%lld  %.2f ms/step", fill, "##############################",
                width - fill, "", (long long)done, (long long)total, ms);
        if (done == total) fputc('\n', stderr);
    } else {
        int q = (int)(4 * done / total);
        if (q > pg->last_quarter) {
            pg->last_quarter = q;
            fprintf(stderr, "  decode %lld/%lld (%d%%), %.2f ms/step\n", (long long)done, (long long)total,
                    (int)(100 * done / total), ms);
        }
    }
}

/* One chunk of the prompt and one decode step, then forget them: lazy kernel loading and cuBLAS's
 * first-call work stay out of the timings. */
static hae_status warm_up(hae_model *m, const hae_config *cfg, const int32_t *tokens) {
    int64_t B = cfg->runtime.batch, T = cfg->runtime.prefill, n = cfg->runtime.prefill_chunk;
    if (n <= 0 || n > T) n = T;
    if (n + 1 > T + cfg->runtime.decode) n = T + cfg->runtime.decode - 1;
    int32_t *w = malloc(sizeof(int32_t) * (size_t)(B * n + B));
    if (!w) return hae_error(HAE_ERR_OOM, "run: out of host memory");
    for (int64_t b = 0; b < B; b++) memcpy(w + b * n, tokens + b * T, sizeof(int32_t) * (size_t)n);
    hae_tensor logits;
    hae_status st = n > 0 ? hae_model_forward(m, w, n, &logits) : HAE_OK;
    if (st == HAE_OK) st = hae_model_forward(m, w, 1, &logits);
    if (st == HAE_OK) st = hae_backend_sync(hae_model_backend(m));
    hae_model_reset(m);
    free(w);
    return st;
}

static hae_status run_job(const hae_config *cfg, const options *o, const char *dir, job_result *res) {
    hae_device dev = HAE_CPU;
    if (cfg->runtime.backend == HAE_BACKEND_CUDA) dev = HAE_CUDA;
    else if (cfg->runtime.backend == HAE_BACKEND_AUTO && hae_cuda_available()) dev = HAE_CUDA;
    hae_backend *be = NULL;
    HAE_TRY(hae_backend_create(dev, dev == HAE_CUDA ? cfg->runtime.device : cfg->runtime.threads, &be));
    snprintf(res->backend, sizeof res->backend, "%s", hae_backend_name(be));

    hae_model *m = NULL;
    hae_status st = hae_model_create(cfg, be, NULL, &m);
    int64_t B = cfg->runtime.batch, T = cfg->runtime.prefill, N = cfg->runtime.decode;
    int32_t *tokens = NULL, *gen = NULL;
    double *lat = NULL, *iss = NULL;
    void *ids_dev = NULL;
    FILE *metrics = NULL;
    char *text = NULL;
    if (st == HAE_OK && o->trace) { /* before any work: a model with nothing to trace is a mistake */
        bool dsa = false;
        for (int l = 0; l < cfg->model.n_layers; l++) dsa |= cfg->model.layers[l] == HAE_LAYER_DSA;
        if (!dsa) st = hae_error(HAE_ERR_INVALID, "--trace-selections: the model has no dsa layer");
    }
    if (st == HAE_OK && o->weights) st = hae_model_load(m, o->weights);
    if (st == HAE_OK && o->weights) warn_unused(m, o->weights);
    if (st == HAE_OK) {
        tokens = malloc(sizeof(int32_t) * (size_t)(B * T));
        gen = malloc(sizeof(int32_t) * (size_t)(B * (N + 1)));
        lat = malloc(sizeof(double) * (size_t)(N + 1));
        iss = malloc(sizeof(double) * (size_t)(N + 1));
        if (!tokens || !gen || !lat || !iss) st = hae_error(HAE_ERR_OOM, "run: out of host memory");
    }
    if (st == HAE_OK) st = hae_backend_alloc(be, sizeof(int32_t) * (size_t)B, &ids_dev);
    if (st == HAE_OK) st = hae_config_to_yaml(cfg, &text);
    if (st == HAE_OK) st = write_text(dir, "config.resolved.yaml", text);
    free(text);
    text = NULL;
    if (st == HAE_OK && !(text = hae_env_json(be))) st = hae_error(HAE_ERR_OOM, "run: out of host memory");
    if (st == HAE_OK) st = write_text(dir, "env.json", text);
    free(text);
    char path[2 * HAE_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    if (st == HAE_OK && !(metrics = fopen(path, "w")))
        st = hae_error(HAE_ERR_IO, "cannot write %s: %s", path, strerror(errno));

    progress pg = {isatty(2) != 0, getenv("HAE_NO_PROGRESS") != NULL, 0};
    double prefill_s = 0, decode_s = 0;
    hae_model_stats before = {0}; /* after the prefill: the decode loop's own fetches are the difference */
    if (st == HAE_OK) {
        /* The prompt: uniform random tokens from the config's seed. */
        for (int64_t i = 0; i < B * T; i++)
            tokens[i] = (int32_t)(hae_uniform(cfg->seed, 0x70726f6d7074ull, (uint64_t)(i / T), (uint64_t)(i % T)) *
                                  (float)cfg->model.vocab_size);
        hae_tensor logits;
        if (dev == HAE_CUDA) st = warm_up(m, cfg, tokens);
        if (!pg.quiet) fprintf(stderr, "  prefill %lld x %lld tokens on %s\n", (long long)B, (long long)T, res->backend);
        double t0 = now_s();
        if (st == HAE_OK) st = hae_model_forward(m, tokens, T, &logits);
        if (st == HAE_OK) st = hae_backend_sync(be);
        prefill_s = now_s() - t0;
        if (st == HAE_OK)
            fprintf(metrics, "{\"phase\": \"prefill\", \"batch\": %lld, \"tokens\": %lld, \"seconds\": %.6f, \"tok_s\": %.1f}\n",
                    (long long)B, (long long)T, prefill_s, (double)(B * T) / prefill_s);
        if (st == HAE_OK) hae_model_stats_get(m, &before);
        if (st == HAE_OK && o->trace) {
            char tpath[2 * HAE_PATH_MAX + 64];
            snprintf(tpath, sizeof tpath, "%s/selections.txt", dir);
            st = hae_model_trace_selections(m, tpath);
        }
        hae_tensor ids = hae_tensor_1d(ids_dev, HAE_I32, hae_backend_device(be), B);
        for (int64_t s = 0; s < N && st == HAE_OK; s++) {
            double ts = now_s();
            st = hae_sample(be, &(hae_sample_args){.logits = logits, .out = ids, .temperature = cfg->runtime.temperature,
                                                   .seed = cfg->seed, .step = (uint64_t)s});
            if (st == HAE_OK) st = hae_backend_download(be, gen + s * B, ids_dev, sizeof(int32_t) * (size_t)B);
            const double ti = now_s();
            if (st == HAE_OK) st = hae_model_forward(m, gen + s * B, 1, &logits);
            iss[s] = now_s() - ti;
            if (st == HAE_OK) st = hae_backend_sync(be);
            lat[s] = now_s() - ts;
            decode_s += lat[s];
            if (st == HAE_OK)
                fprintf(metrics, "{\"phase\": \"decode\", \"step\": %lld, \"position\": %lld, \"ms\": %.4f, "
                                 "\"issue_ms\": %.4f, \"token\": %d}\n",
                        (long long)s, (long long)(T + s), 1e3 * lat[s], 1e3 * iss[s], gen[s * B]);
            progress_step(&pg, s + 1, N, 1e3 * lat[s]);
        }
    }
    if (metrics && fclose(metrics) && st == HAE_OK) st = hae_error(HAE_ERR_IO, "cannot write %s", path);
    if (m && o->trace) { /* closes the trace, reporting a failed write */
        const hae_status ct = hae_model_trace_selections(m, NULL);
        if (st == HAE_OK) st = ct;
    }
    if (st == HAE_OK && o->save_weights) st = hae_model_save(m, o->save_weights);

    if (st == HAE_OK) {
        hae_model_stats_get(m, &res->stats);
        const int64_t looked = res->stats.slot_hits + res->stats.slot_misses - before.slot_hits - before.slot_misses;
        res->step_fetched = N ? (double)(res->stats.fetched_bytes - before.fetched_bytes) / (double)N : 0.0;
        res->step_hit_rate = looked > 0 ? (double)(res->stats.slot_hits - before.slot_hits) / (double)looked : 0.0;
        res->prefill_tok_s = (double)(B * T) / prefill_s;
        res->decode_tok_s = N ? (double)(B * N) / decode_s : 0.0;
        qsort(lat, (size_t)N, sizeof(double), cmp_double);
        res->p50_ms = 1e3 * percentile(lat, N, 0.5);
        res->p99_ms = 1e3 * percentile(lat, N, 0.99);
        qsort(iss, (size_t)N, sizeof(double), cmp_double);
        res->issue_p50_ms = 1e3 * percentile(iss, N, 0.5);
        char summary[8192];
        size_t u = (size_t)snprintf(summary, sizeof summary,
                                    "{\n  \"name\": \"%s\",\n  \"job\": \"%s\",\n  \"backend\": \"%s\",\n  \"dtype\": \"%s\",\n"
                                    "  \"batch\": %lld,\n  \"prefill_tokens\": %lld,\n  \"prefill_seconds\": %.6f,\n"
                                    "  \"prefill_tok_s\": %.2f,\n  \"decode_tokens\": %lld,\n  \"decode_seconds\": %.6f,\n"
                                    "  \"decode_tok_s\": %.2f,\n  \"decode_p50_ms\": %.4f,\n  \"decode_p99_ms\": %.4f,\n"
                                    "  \"decode_issue_p50_ms\": %.4f,\n"
                                    "  \"params\": %lld,\n  \"device\": \"%s\",\n  \"weight_bytes\": %zu,\n  \"kv_bytes\": %zu,\n"
                                    "  \"state_bytes\": %zu,\n  \"activation_bytes\": %zu,\n  \"kv_host_bytes\": %zu,\n"
                                    "  \"slot_cache_bytes\": %zu,\n  \"stage_bytes\": %zu,\n  \"slot_hits\": %lld,\n  \"slot_misses\": %lld,\n"
                                    "  \"fetched_bytes\": %zu,\n  \"decode_fetched_bytes_per_step\": %.0f,\n"
                                    "  \"decode_slot_hit_rate\": %.6f,\n  \"dsa_kv\": \"%s\",\n  \"dsa_gpu_seqs\": %lld,\n"
                                    "  \"micro_batches\": [",
                                    cfg->name, res->label, res->backend, hae_dtype_name(cfg->runtime.dtype), (long long)B,
                                    (long long)T, prefill_s, res->prefill_tok_s, (long long)N, decode_s, res->decode_tok_s,
                                    res->p50_ms, res->p99_ms, res->issue_p50_ms, (long long)res->stats.n_params,
                                    res->stats.device == HAE_CUDA ? "cuda" : "cpu", res->stats.weight_bytes,
                                    res->stats.kv_bytes, res->stats.state_bytes, res->stats.activation_bytes,
                                    res->stats.kv_host_bytes, res->stats.slot_cache_bytes, res->stats.stage_bytes,
                                    (long long)res->stats.slot_hits,
                                    (long long)res->stats.slot_misses, res->stats.fetched_bytes, res->step_fetched,
                                    res->step_hit_rate, hae_tier_name(res->stats.dsa_kv),
                                    (long long)res->stats.dsa_gpu_seqs);
        for (int i = 0; i < res->stats.n_micro; i++)
            u += (size_t)snprintf(summary + u, sizeof summary - u, "%s%lld", i ? ", " : "", (long long)res->stats.micro[i]);
        u += (size_t)snprintf(summary + u, sizeof summary - u, "],\n  \"generated\": [");
        for (int64_t s = 0; s < N && s < 64 && u < sizeof summary - 32; s++)
            u += (size_t)snprintf(summary + u, sizeof summary - u, "%s%d", s ? ", " : "", gen[s * B]);
        snprintf(summary + u, sizeof summary - u, "]\n}\n");
        st = write_text(dir, "summary.json", summary);
    }
    hae_backend_free(be, ids_dev);
    free(tokens);
    free(gen);
    free(lat);
    free(iss);
    hae_model_destroy(m);
    hae_backend_destroy(be);
    return st;
}

static void print_job(const hae_config *cfg, const job_result *r, const char *dir) {
    char b1[32], b2[32], b3[32], b4[32];
    const char *dev = r->stats.device == HAE_CUDA ? "gpu" : "cpu";
    printf("%s%s%s on %s, %s, batch %lld\n", cfg->name, r->label[0] ? " " : "", r->label, r->backend,
           hae_dtype_name(cfg->runtime.dtype), (long long)cfg->runtime.batch);
    printf("  %-10s %8lld tokens  %12.1f tok/s\n", "prefill", (long long)cfg->runtime.prefill, r->prefill_tok_s);
    if (cfg->runtime.decode)
        printf("  %-10s %8lld tokens  %12.1f tok/s   step p50 %.3f ms  p99 %.3f ms\n", "decode",
               (long long)cfg->runtime.decode, r->decode_tok_s, r->p50_ms, r->p99_ms);
    /* a GPU step whose issuing takes most of it is bound by kernel launches, not by the GPU */
    if (cfg->runtime.decode && r->stats.device == HAE_CUDA)
        printf("  %-10s issuing a step's kernels p50 %.3f ms (%.0f%% of the step)\n", "host", r->issue_p50_ms,
               r->p50_ms > 0 ? 100.0 * r->issue_p50_ms / r->p50_ms : 0.0);
    printf("  %-10s weights %s, kv cache %s, recurrent state %s, activations %s (all on %s)\n", "memory",
           fmt_bytes((double)r->stats.weight_bytes, b1, sizeof b1), fmt_bytes((double)(r->stats.kv_bytes - r->stats.kv_host_bytes), b2, sizeof b2),
           fmt_bytes((double)r->stats.state_bytes, b3, sizeof b3),
           fmt_bytes((double)r->stats.activation_bytes, b4, sizeof b4), dev);
    const char *room = cfg->memory.gpu_budget > 0 ? "memory.gpu_budget" : "the device's memory";
    if (cfg->memory.dsa_kv == HAE_TIER_AUTO && r->stats.dsa_kv == HAE_TIER_GPU)
        printf("  %-10s dsa K/V on the gpu tier (memory.dsa_kv: auto; the whole run fits %s)\n", "placement", room);
    else if (cfg->memory.dsa_kv == HAE_TIER_AUTO || (r->stats.dsa_kv == HAE_TIER_HOST && r->stats.dsa_gpu_seqs > 0)) {
        char why[112];
        if (cfg->memory.dsa_kv == HAE_TIER_AUTO)
            snprintf(why, sizeof why, "memory.dsa_kv: auto; the run does not fit %s with more on the GPU", room);
        else
            snprintf(why, sizeof why, "memory.dsa_gpu_seqs %lld", (long long)r->stats.dsa_gpu_seqs);
        printf("  %-10s dsa K/V of %lld of %lld sequences on the host tier (%s)\n", "placement",
               (long long)(cfg->runtime.batch - r->stats.dsa_gpu_seqs), (long long)cfg->runtime.batch, why);
    }
    if (r->stats.n_micro > 1) {
        char sizes[8 * HAE_MICRO_MAX + 8];
        size_t u = 0;
        for (int i = 0; i < r->stats.n_micro; i++)
            u += (size_t)snprintf(sizes + u, sizeof sizes - u, "%s%lld", i ? " + " : "", (long long)r->stats.micro[i]);
        printf("  %-10s decode steps in %d micro-batches of %s sequences (runtime.micro_batches%s)\n", "schedule",
               r->stats.n_micro, sizes, cfg->runtime.micro_batches.n ? "" : ": auto");
    }
    if (r->stats.kv_host_bytes) {
        printf("  %-10s dsa K/V %s in the host tier; GPU token slots %s, prefill staging %s; fetched H2D %s in all\n",
               "host tier", fmt_bytes((double)r->stats.kv_host_bytes, b1, sizeof b1),
               fmt_bytes((double)r->stats.slot_cache_bytes, b2, sizeof b2),
               fmt_bytes((double)r->stats.stage_bytes, b4, sizeof b4),
               fmt_bytes((double)r->stats.fetched_bytes, b3, sizeof b3));
        if (cfg->runtime.decode)
            printf("  %-10s slot hit rate %.1f%%, fetched H2D %s per step\n", "decode",
                   100.0 * r->step_hit_rate, fmt_bytes(r->step_fetched, b1, sizeof b1));
    }
    printf("  %-10s %s\n", "run dir", dir);
}

static int cmd_run(int argc, char **argv) {
    options o;
    int r = parse_options(argc, argv, true, &o);
    if (r) return r == 2 ? 0 : 1;
    hae_config *cfg = malloc(sizeof *cfg), *job = malloc(sizeof *job);
    if (!cfg || !job) return free(cfg), free(job), fprintf(stderr, "hae: out of memory\n"), 1;
    if (load_config(&o, cfg) != HAE_OK) return free(cfg), free(job), fail(NULL);

    char base[HAE_PATH_MAX];
    if (o.out_dir) {
        snprintf(base, sizeof base, "%s", o.out_dir);
    } else {
        char stamp[32];
        time_t now = time(NULL);
        strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", localtime(&now));
        snprintf(base, sizeof base, "%.500s/%.127s-%s", cfg->output_dir, cfg->name, stamp);
    }
    int jobs = hae_config_sweep_jobs(cfg), failed = 0;
    job_result *res = calloc((size_t)jobs, sizeof *res);
    if (!res) return free(cfg), free(job), fprintf(stderr, "hae: out of memory\n"), 1;
    for (int j = 0; j < jobs; j++) {
        char dir[2 * HAE_PATH_MAX];
        if (hae_config_sweep_job(cfg, j, job, res[j].label, sizeof res[j].label) != HAE_OK) {
            failed++;
            fail("sweep");
            continue;
        }
        if (jobs > 1) snprintf(dir, sizeof dir, "%s/%03d-%s", base, j, res[j].label);
        else snprintf(dir, sizeof dir, "%s", base);
        if (jobs > 1) fprintf(stderr, "job %d/%d: %s\n", j + 1, jobs, res[j].label);
        if (mkdirs(dir) != HAE_OK || run_job(job, &o, dir, &res[j]) != HAE_OK) {
            failed++;
            fprintf(stderr, "hae: %s%s%s: %s\n", job->name, res[j].label[0] ? " " : "", res[j].label, hae_last_error());
            res[j].backend[0] = '\0';
            continue;
        }
        print_job(job, &res[j], dir);
    }
    if (jobs > 1) {
        printf("\nsweep %s: %d jobs, %d failed (%s)\n", cfg->name, jobs, failed, base);
        int w = 8;
        for (int j = 0; j < jobs; j++)
            if ((int)strlen(res[j].label) > w) w = (int)strlen(res[j].label);
        printf("%-4s %-*s %14s %14s %10s %12s\n", "job", w, "settings", "prefill tok/s", "decode tok/s", "p50 ms",
               "kv bytes");
        for (int j = 0; j < jobs; j++) {
            if (!res[j].backend[0]) {
                printf("%-4d %-*s %14s\n", j, w, res[j].label, "failed");
                continue;
            }
            printf("%-4d %-*s %14.1f %14.1f %10.3f %12zu\n", j, w, res[j].label, res[j].prefill_tok_s,
                   res[j].decode_tok_s, res[j].p50_ms, res[j].stats.kv_bytes);
        }
    }
    free(res);
    free(cfg);
    free(job);
    return failed ? 1 : 0;
}

/* ---------------------------------------------------------------- eval */

static const char *usage_eval =
    "usage: hae eval [CONFIG] [options]             the tasks through CONFIG's model, scored by exact match\n"
    "       hae eval --probe [CONFIG] [options]     the tasks written into each layer kind's real ops, no weights\n"
    "       hae eval --circuit [CONFIG] [options]   the tasks through hand-built circuits of each layer kind\n"
    "\n"
    "Recall tasks whose answers are known by construction (DESIGN.md section 3, eval/README.md): mqar\n"
    "(key/value pairs, later queried), multihop (chains a0 -> a1 -> ... -> aH among distractor chains), niah\n"
    "(needles among decoys). The grid is the config's `eval:` section (docs/config.md): per task, lengths x\n"
    "pairs (mqar, niah) or lengths x hops x chains (multihop), each point pooled over eval.seeds tasks (seeds\n"
    "1..N); a `sweep:` section runs the grid once per job. The options below set those keys. LIST: comma-\n"
    "separated values, one axis; a K, M or G suffix multiplies a length by 2^10, 2^20, 2^30.\n"
    "\n"
    "Model runs: a grid point's tasks go through hae_model_forward runtime.batch at a time; each sequence is\n"
    "prefilled up to its first question, then fed up to each scored position in turn, the answers being in\n"
    "its tokens (teacher forcing); a question is right when, at each of its answers, the argmax of the next-\n"
    "token logits is that answer. recall = questions right / asked; chance = what a uniform pick among the\n"
    "answer tokens scores. Probes: every token gets a random unit key code and value code, the context writes\n"
    "them into one kind's real kernels, and each question's output is decoded to the nearest value code\n"
    "(multi-hop feeds the decoded token back as the next query). Circuits: models whose weights are\n"
    "constructed (hae_circuit_build): a deltanet layer reading the previous token, then one retrieval layer per\n"
    "hop of the kind measured (a multihop follow question takes hops lookups, every other question one), run\n"
    "and scored as a model run is, in f32 with the config's runtime, memory and dsa settings; full and dsa\n"
    "answer every question, swa those inside its window, the linear kinds exactly while the keys' codes are\n"
    "one-hot (the code_weight column is 1).\n"
    "\n"
    "task options (config key: meaning, range (default)):\n"
    "  --task LIST        eval.tasks: mqar, multihop, niah (mqar)\n"
    "  --lengths LIST     eval.lengths: tokens per task, 64 .. 2^31-1 (256,1024,4096)\n"
    "  --pairs LIST       eval.pairs: mqar key/value pairs; niah needles, the unasked ones decoys; multihop links,\n"
    "                     as pairs/hops chains, where eval.chains is 0; >= 1 (32)\n"
    "  --hops LIST        eval.hops: multihop links per chain, 1 .. 1024 (1,2,4)\n"
    "  --chains LIST      eval.chains: multihop chains written, the unasked ones distractors; 0: pairs/hops (0)\n"
    "  --queries N        eval.queries: questions per task; 0: every pair, needle or chain (0)\n"
    "  --form F           eval.form: multihop questions, follow (QUERY a0 -> aH) | list (LIST a0 -> a1 .. aH)\n"
    "                     (follow)\n"
    "  --shuffle          eval.shuffle: multihop links in any order, not hop order (off)\n"
    "  --power X          eval.power: which mqar pairs are asked, 0 uniform, > 0 P ~ distance^-X (0)\n"
    "  --noise N          eval.noise_vocab: distinct filler tokens, >= 0; 0: PAD (64)\n"
    "  --vocab N          eval.vocab: task token ids [0, N); 0: model.vocab_size (0)\n"
    "  --seeds N          eval.seeds: tasks per grid point, seeds 1..N, 1 .. 10000 (2)\n"
    "probe options (with --probe):\n"
    "  --kinds LIST       eval.probe.kinds: full, dsa, kda, gdn, deltanet, gla, mamba2, retnet, linear (all nine)\n"
    "  --K LIST           eval.probe.K: key dim = value dim (the linear state is K x K), 1 .. 4096; dsa <= 128 (64)\n"
    "  --topk LIST        eval.probe.topk: tokens each dsa question attends to, >= 1 (64)\n"
    "  --index-dtype D    eval.probe.index_dtype: the dsa ranking, fp8 (the FP8 lightning indexer) | bf16 | f32 (fp8)\n"
    "  --key-cos C        eval.probe.key_cos: cosine between any two key codes, [0, 1) (0)\n"
    "  --log-decay X      eval.probe.log_decay: the decaying linear kinds' log decay per token, [-1000, 0]; 0 is no\n"
    "                     forgetting, so kda = gdn = deltanet and gla = mamba2 = retnet = linear (0)\n"
    "  --orthogonal       eval.probe.orthogonal: the context's keys orthonormal (their count <= K) (off)\n"
    "                     fixed: V = K, random unit value codes, softmax scale 32 on unit keys, beta = 1 (delta\n"
    "                     kinds), L2-normalised q/k and chunk 64 (linear kinds), every stored key asked once\n"
    "circuit options (with --circuit):\n"
    "  --kinds LIST       eval.circuit.kinds: a circuit per kind, every hop of it: full, dsa, swa, kda, gdn,\n"
    "                     deltanet, gla, mamba2, retnet, linear (all ten)\n"
    "  --hop-kinds LIST   eval.circuit.hop_kinds: one circuit instead, hop j of kind LIST[j mod n], e.g. dsa,full\n"
    "                     (kinds may repeat; none)\n"
    "  --code-dim N       eval.circuit.code_dim: dims of the tokens' binary codes, 1 .. 128: one-hot while the\n"
    "                     tokens fit, else sets of ones that overlap (64)\n"
    "  --window N         eval.circuit.window: swa hops' window, >= 0; 0: model.swa.window_size (0)\n"
    "  --topk N           eval.circuit.topk: dsa hops' top-k, 0 .. 2^20; 0: model.dsa.index_topk (0)\n"
    "  --log-decay X      eval.circuit.log_decay: the decaying linear kinds' log decay per token, [-1000, 0]; 0 is\n"
    "                     no forgetting (0)\n"
    "  --decode           eval.circuit.decode: a decode step per token from the first question on, not a forward\n"
    "                     per span up to the next answer (off)\n"
    "                     fixed: f32, beta = 1 (delta kinds), codes drawn from the config's seed\n"
    "model options:\n"
    "  --weights FILE     the model's weights (safetensors with hae's tensor names)\n"
    "  --double D         oracle | random: the logits at every scored position replaced by a solver's answer,\n"
    "                     read from the tokens so far (scores 100%), or by a uniform pick among the answer tokens\n"
    "                     (scores chance): checks the whole path, prefill and scoring, without a trained model\n"
    "  --untrained        run the seed's random init anyway: a baseline, never a result (without --weights or\n"
    "                     --double, hae eval refuses to score an untrained model)\n"
    "options:\n"
    "  --batch N          runtime.batch: sequences per forward (model runs and circuits), 1 .. 65536 (1)\n"
    "  --set KEY=VALUE    override any config key (dotted path, YAML value), repeatable\n"
    "  --backend B        runtime.backend: auto | cpu | cuda (auto)\n"
    "  --out DIR          run directory (default OUTPUT_DIR/eval-NAME-YYYYmmdd-HHMMSS; probe-NAME-... with --probe,\n"
    "                     circuit-NAME-... with --circuit)\n"
    "\n"
    "prints: the markdown summary on stdout; a line per grid point on stderr, redrawn with a bar on a terminal\n"
    "        (HAE_NO_PROGRESS=1 silences it)\n"
    "writes: config.resolved.yaml, env.json, metrics.jsonl (a JSON line per point), results.csv (a row per point:\n"
    "        its knobs, the results, the job and, for model runs, every config key; probes and circuits: a kind\n"
    "        column, so a chart draws a line per kind), results.md (recall by length and by hops),\n"
    "        recall_vs_length.svg and, when a series spans two or more hops, recall_vs_hops.svg; `hae report`\n"
    "        merges run directories into one table and chart\n"
    "exit status: 0 when every point ran; 1 on a bad value (then nothing is written) or a failed point\n";

/* The three modes; a flag may apply to several, and may set a different key in each. */
enum { FOR_MODEL = 1, FOR_PROBE = 2, FOR_CIRCUIT = 4, FOR_ALL = 7 };

/* The options that set a config key: "--flag VALUE" is "--set KEY=VALUE"; a switch sets KEY=true. */
static const struct {
    const char *flag, *key;
    int modes;
    bool takes_value;
} eval_flags[] = {
    {"--task", "eval.tasks", FOR_ALL, true},          {"--lengths", "eval.lengths", FOR_ALL, true},
    {"--pairs", "eval.pairs", FOR_ALL, true},         {"--hops", "eval.hops", FOR_ALL, true},
    {"--chains", "eval.chains", FOR_ALL, true},       {"--queries", "eval.queries", FOR_ALL, true},
    {"--form", "eval.form", FOR_ALL, true},           {"--shuffle", "eval.shuffle", FOR_ALL, false},
    {"--power", "eval.power", FOR_ALL, true},         {"--noise", "eval.noise_vocab", FOR_ALL, true},
    {"--vocab", "eval.vocab", FOR_ALL, true},         {"--seeds", "eval.seeds", FOR_ALL, true},
    {"--kinds", "eval.probe.kinds", FOR_PROBE, true}, {"--K", "eval.probe.K", FOR_PROBE, true},
    {"--topk", "eval.probe.topk", FOR_PROBE, true},   {"--index-dtype", "eval.probe.index_dtype", FOR_PROBE, true},
    {"--key-cos", "eval.probe.key_cos", FOR_PROBE, true}, {"--log-decay", "eval.probe.log_decay", FOR_PROBE, true},
    {"--orthogonal", "eval.probe.orthogonal", FOR_PROBE, false},
    {"--kinds", "eval.circuit.kinds", FOR_CIRCUIT, true}, {"--hop-kinds", "eval.circuit.hop_kinds", FOR_CIRCUIT, true},
    {"--code-dim", "eval.circuit.code_dim", FOR_CIRCUIT, true}, {"--window", "eval.circuit.window", FOR_CIRCUIT, true},
    {"--topk", "eval.circuit.topk", FOR_CIRCUIT, true}, {"--log-decay", "eval.circuit.log_decay", FOR_CIRCUIT, true},
    {"--decode", "eval.circuit.decode", FOR_CIRCUIT, false},
    {"--batch", "runtime.batch", FOR_MODEL | FOR_CIRCUIT, true}, {"--backend", "runtime.backend", FOR_ALL, true},
};
#define N_EVAL_FLAGS (int)(sizeof eval_flags / sizeof *eval_flags)

typedef struct {
    options o; /* CONFIG, the overrides, --out, --weights */
    char sets[MAX_SETS][2 * HAE_NAME_MAX];
    int mode; /* FOR_MODEL, FOR_PROBE or FOR_CIRCUIT */
    bool untrained;
    int dbl; /* 0 none, 1 oracle, 2 random */
} eval_options;

static const char *const double_names[] = {"", "oracle", "random"};

/* "model runs", "--probe", "--circuit" or two of them joined by "and". */
static const char *mode_names(int modes, char *buf, size_t n) {
    static const char *const names[] = {"model runs", "--probe", "--circuit"};
    size_t u = 0;
    buf[0] = '\0';
    for (int m = 0, k = 0; m < 3; m++)
        if (modes & (1 << m)) u += (size_t)snprintf(buf + u, n - u, "%s%s", k++ ? " and " : "", names[m]);
    return buf;
}

/* Parses argv after `eval`; returns 0 ok, 1 error, 2 help printed. */
static int parse_eval(int argc, char **argv, eval_options *e) {
    memset(e, 0, sizeof *e);
    e->mode = FOR_MODEL;
    const char *mode_flag = NULL, *kinds_flag = NULL, *hop_kinds_flag = NULL;
    /* the mode first: it decides which key a flag such as --kinds sets (a value never starts with "--") */
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--probe") && strcmp(argv[i], "--circuit")) continue;
        if (mode_flag && strcmp(mode_flag, argv[i]))
            return fprintf(stderr, "hae: --probe and --circuit are two modes of hae eval; give one\n"), 1;
        mode_flag = argv[i], e->mode = !strcmp(argv[i], "--probe") ? FOR_PROBE : FOR_CIRCUIT;
    }
    char here[32], there[64];
    mode_names(e->mode, here, sizeof here);
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        int f = N_EVAL_FLAGS, modes = 0; /* the flag's entry for this mode; the modes of all its entries */
        for (int k = N_EVAL_FLAGS - 1; k >= 0; k--)
            if (!strcmp(a, eval_flags[k].flag)) {
                modes |= eval_flags[k].modes;
                if (eval_flags[k].modes & e->mode) f = k;
            }
        if (modes && f == N_EVAL_FLAGS)
            return fprintf(stderr, "hae: %s applies to %s, not %s\n", a, mode_names(modes, there, sizeof there), here), 1;
        const bool model_only = !strcmp(a, "--weights") || !strcmp(a, "--double") || !strcmp(a, "--untrained");
        if (model_only && e->mode != FOR_MODEL) return fprintf(stderr, "hae: %s applies to model runs, not %s\n", a, here), 1;
        bool value = f < N_EVAL_FLAGS ? eval_flags[f].takes_value
                                      : !strcmp(a, "--set") || !strcmp(a, "--out") || !strcmp(a, "--weights") ||
                                            !strcmp(a, "--double");
        /* "--K --out x" is a forgotten value, not the value "--out" (a negative number has one dash) */
        if (value && (i + 1 == argc || !strncmp(argv[i + 1], "--", 2)))
            return fprintf(stderr, "hae: %s needs a value (see hae eval --help)\n", a), 1;
        const char *val = value ? argv[++i] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage_eval, stdout);
            return 2;
        } else if (!strcmp(a, "--probe") || !strcmp(a, "--circuit")) {
            continue;
        } else if (!strcmp(a, "--untrained")) {
            e->untrained = true;
        } else if (!strcmp(a, "--out")) {
            e->o.out_dir = val;
        } else if (!strcmp(a, "--weights")) {
            e->o.weights = val;
        } else if (!strcmp(a, "--double")) {
            e->dbl = !strcmp(val, "oracle") ? 1 : !strcmp(val, "random") ? 2 : 0;
            if (!e->dbl) return fprintf(stderr, "hae: --double '%s': expected oracle or random\n", val), 1;
        } else if (f < N_EVAL_FLAGS || !strcmp(a, "--set")) {
            if (e->o.n_sets == MAX_SETS) return fprintf(stderr, "hae: more than %d --set options\n", MAX_SETS), 1;
            if (f < N_EVAL_FLAGS)
                snprintf(e->sets[e->o.n_sets], sizeof e->sets[0], "%s=%.200s", eval_flags[f].key, val ? val : "true");
            e->o.sets[e->o.n_sets] = f < N_EVAL_FLAGS ? e->sets[e->o.n_sets] : val;
            e->o.n_sets++;
            if (!strcmp(a, "--kinds")) kinds_flag = a;
            if (!strcmp(a, "--hop-kinds")) hop_kinds_flag = a;
        } else if (a[0] == '-') {
            fprintf(stderr, "hae: unknown eval option '%s' (see hae eval --help)\n", a);
            return 1;
        } else if (!e->o.config) {
            e->o.config = a;
        } else {
            fprintf(stderr, "hae: more than one config given ('%s' and '%s')\n", e->o.config, a);
            return 1;
        }
    }
    if (kinds_flag && hop_kinds_flag && e->mode == FOR_CIRCUIT)
        return fprintf(stderr, "hae: --kinds and --hop-kinds: give one (--hop-kinds builds one circuit of those hops, "
                               "and eval.circuit.kinds is then unused)\n"), 1;
    return 0;
}

/* --out, else OUTPUT_DIR/PREFIX-NAME-YYYYmmdd-HHMMSS. */
static void make_run_dir(const hae_config *cfg, const char *out, const char *prefix, char *dir, size_t n) {
    if (out) {
        snprintf(dir, n, "%s", out);
        return;
    }
    char stamp[32];
    time_t now = time(NULL);
    strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", localtime(&now));
    snprintf(dir, n, "%.500s/%s-%.127s-%s", cfg->output_dir, prefix, cfg->name, stamp);
}

static FILE *open_in(const char *dir, const char *file) {
    char path[2 * HAE_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    FILE *f = fopen(path, "w");
    if (!f) hae_error(HAE_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    return f;
}

/* A line per grid point: redrawn in place with a bar on a terminal, appended otherwise. */
static void eval_progress(const progress *pg, int64_t done, int64_t total, const char *label, const char *what) {
    if (pg->quiet) return;
    if (pg->tty) {
        int width = 20, fill = (int)(width * done / (total ? total : 1));
        fprintf(stderr, "\r\033[K  eval [%.*s%*s] %lld/%lld  %s: %s", fill, "####################", width - fill, "",
                (long long)done, (long long)total, label, what);
    } else {
        fprintf(stderr, "  eval %lld/%lld  %s: %s\n", (long long)done, (long long)total, label, what);
    }
}

static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') fprintf(f, "\\%c", *s);
        else if ((unsigned char)*s < 0x20) fprintf(f, "\\u%04x", *s);
        else fputc(*s, f);
    }
    fputc('"', f);
}

/* Every job's grid checked on seed 1 without generating anything (the config checks its eval section only
 * where it sets some of it), so a bad combination is refused before anything is written. */
static bool check_jobs(const hae_config *cfg, hae_config *job) {
    for (int j = 0; j < hae_config_sweep_jobs(cfg); j++) {
        char label[1024];
        hae_eval_point *pt = NULL;
        int64_t n = 0;
        hae_status st = hae_config_sweep_job(cfg, j, job, label, sizeof label);
        if (st == HAE_OK) st = hae_eval_grid(job, &pt, &n);
        for (int64_t i = 0; st == HAE_OK && i < n; i++) st = hae_eval_task(job, &pt[i], 1, NULL);
        free(pt);
        if (st != HAE_OK)
            return fprintf(stderr, "hae: %s%s%s: %s\n", cfg->source, label[0] ? " job " : "", label, hae_last_error()),
                   false;
    }
    return true;
}

/* What every run directory starts with: the resolved config (its sweep included) and env.json. */
static hae_status start_run_dir(const char *dir, const hae_config *cfg, hae_backend *be) {
    char path[HAE_PATH_MAX + 32], *env = NULL;
    HAE_TRY(mkdirs(dir));
    snprintf(path, sizeof path, "%s/config.resolved.yaml", dir);
    HAE_TRY(hae_config_write_yaml(cfg, path));
    if (!(env = hae_env_json(be))) return hae_error(HAE_ERR_OOM, "eval: out of host memory");
    hae_status st = write_text(dir, "env.json", env);
    free(env);
    return st;
}

/* results.md, also printed: the command, what the run was, recall by length and by hops (hae_eval_report on
 * the run's results.csv, which also draws the charts), the points, and the points that failed. */
static hae_status write_summary(const char *dir, const char *title, int argc, char **argv, const char *about,
                                const char *points, const char *failures) {
    char csv[HAE_PATH_MAX + 32], *md = NULL;
    size_t md_n = 0;
    snprintf(csv, sizeof csv, "%s/results.csv", dir);
    FILE *f = open_memstream(&md, &md_n);
    if (!f) return hae_error(HAE_ERR_OOM, "eval: out of host memory");
    fprintf(f, "# %s\n\n`hae eval", title);
    for (int i = 0; i < argc; i++) fprintf(f, " %s", argv[i]);
    fprintf(f, "`\n\n%s\n", about);
    const char *inputs[1] = {csv};
    hae_status st = hae_eval_report(&(hae_eval_report_args){.inputs = inputs, .n_inputs = 1, .title = title, .svg_dir = dir}, f);
    fprintf(f, "%s", points);
    if (failures[0]) fprintf(f, "\nfailed:\n%s", failures);
    if (fclose(f) && st == HAE_OK) st = hae_error(HAE_ERR_OOM, "eval: out of host memory");
    if (st == HAE_OK) st = write_text(dir, "results.md", md);
    if (st == HAE_OK) fputs(md, stdout);
    free(md);
    return st;
}

static hae_status backend_of(const hae_config *cfg, hae_backend **be) {
    bool cuda = cfg->runtime.backend == HAE_BACKEND_CUDA || (cfg->runtime.backend == HAE_BACKEND_AUTO && hae_cuda_available());
    return hae_backend_create(cuda ? HAE_CUDA : HAE_CPU, cuda ? cfg->runtime.device : cfg->runtime.threads, be);
}

/* A run's open files and tallies, shared by both modes. */
typedef struct {
    char dir[HAE_PATH_MAX];
    FILE *jsonl, *csv, *fails, *points;
    char *failures, *points_md;
    size_t failures_n, points_n;
    int64_t done, total, failed;
    progress pg;
} eval_run;

static hae_status eval_run_open(eval_run *r, const hae_config *cfg, const char *out, const char *prefix, hae_backend *be) {
    memset(r, 0, sizeof *r);
    r->pg = (progress){isatty(2) != 0, getenv("HAE_NO_PROGRESS") != NULL, 0};
    make_run_dir(cfg, out, prefix, r->dir, sizeof r->dir);
    r->fails = open_memstream(&r->failures, &r->failures_n);
    r->points = open_memstream(&r->points_md, &r->points_n);
    if (!r->fails || !r->points) return hae_error(HAE_ERR_OOM, "eval: out of host memory");
    HAE_TRY(start_run_dir(r->dir, cfg, be));
    if (!(r->jsonl = open_in(r->dir, "metrics.jsonl")) || !(r->csv = open_in(r->dir, "results.csv"))) return HAE_ERR_IO;
    return HAE_OK;
}

/* Closes the files (a failed close is the run's failure when it had none) and writes the summary. */
static hae_status eval_run_close(eval_run *r, hae_status st, const char *title, int argc, char **argv, const char *about) {
    if (!r->pg.quiet && r->pg.tty && r->done) fputc('\n', stderr);
    if (r->jsonl && fclose(r->jsonl) && st == HAE_OK) st = hae_error(HAE_ERR_IO, "cannot write %s/metrics.jsonl", r->dir);
    if (r->csv && fclose(r->csv) && st == HAE_OK) st = hae_error(HAE_ERR_IO, "cannot write %s/results.csv", r->dir);
    if (r->fails) fclose(r->fails);
    if (r->points) fclose(r->points);
    if (st == HAE_OK) st = write_summary(r->dir, title, argc, argv, about, r->points_md ? r->points_md : "",
                                         r->failures ? r->failures : "");
    if (st != HAE_OK) fprintf(stderr, "hae: eval: %s\n", hae_last_error());
    else fprintf(stderr, "%shae eval: %lld of %lld points ran; results in %s\n", r->failures ? r->failures : "",
                 (long long)(r->done - r->failed), (long long)r->total, r->dir);
    free(r->failures), free(r->points_md);
    return st;
}

/* A point's row finished: flushed (a long GPU sweep cut short keeps what ran), a failure listed. */
static void point_done(eval_run *r, const char *label, const char *error, const char *what) {
    if (error) fprintf(r->fails, "- %s: %s\n", label, error), r->failed++;
    fflush(r->csv), fflush(r->jsonl);
    eval_progress(&r->pg, ++r->done, r->total, label, error ? "failed" : what);
}

/* ---------------------------------------------------------------- eval --probe */

/* One probe point: a grid point through one kind at one K (and top-k, dsa), pooled over the seeds. */
typedef struct {
    hae_eval_point pt;
    hae_layer_kind kind;
    int64_t K, topk; /* topk 0 but for dsa */
} probe_point;

/* Per task: kind, K and top-k outside the task's points (length innermost), so a series reads as recall vs
 * length. */
static hae_status probe_grid(const hae_config *cfg, probe_point **out, int64_t *n) {
    const hae_eval_list *kinds = &cfg->eval.probe.kinds, *K = &cfg->eval.probe.K, *topk = &cfg->eval.probe.topk;
    hae_eval_point *pts = NULL;
    int64_t np = 0, count = 0;
    *out = NULL, *n = 0;
    HAE_TRY(hae_eval_grid(cfg, &pts, &np));
    for (int k = 0; k < kinds->n; k++) count += np * K->n * (kinds->v[k] == HAE_LAYER_DSA ? topk->n : 1);
    probe_point *g = count <= HAE_EVAL_MAX_POINTS ? malloc(sizeof *g * (size_t)(count ? count : 1)) : NULL;
    if (!g) {
        free(pts);
        return count > HAE_EVAL_MAX_POINTS ? hae_error(HAE_ERR_INVALID, "eval: %lld probe points, more than %d",
                                                       (long long)count, HAE_EVAL_MAX_POINTS)
                                           : hae_error(HAE_ERR_OOM, "eval: %lld probe points", (long long)count);
    }
    for (int64_t s = 0, e; s < np; s = e) {
        for (e = s; e < np && pts[e].task == pts[s].task; e++) {}
        for (int k = 0; k < kinds->n; k++) {
            bool dsa = kinds->v[k] == HAE_LAYER_DSA;
            for (int d = 0; d < K->n; d++)
                for (int x = 0; x < (dsa ? topk->n : 1); x++)
                    for (int64_t i = s; i < e; i++)
                        g[(*n)++] = (probe_point){pts[i], (hae_layer_kind)kinds->v[k], K->v[d], dsa ? topk->v[x] : 0};
        }
    }
    free(pts);
    *out = g;
    return HAE_OK;
}

static hae_probe_args probe_args(const hae_config *cfg, const probe_point *p, uint64_t seed) {
    hae_probe_args a = hae_probe_defaults(p->kind);
    a.K = a.V = p->K;
    if (p->topk) a.topk = p->topk;
    a.index_dtype = cfg->eval.probe.index_dtype, a.key_cos = cfg->eval.probe.key_cos;
    a.log_decay = cfg->eval.probe.log_decay, a.orthogonal = cfg->eval.probe.orthogonal, a.seed = seed;
    return a;
}

/* The probe's own argument checks (a kind it does not probe, K beyond dsa's indexer) answered on a one-pair
 * task on the CPU, before anything is written; what only the chosen backend or a real task can refuse becomes
 * that point's error row. */
static bool check_kinds(const hae_config *cfg) {
    hae_backend *be = NULL;
    hae_task *t = NULL;
    bool ok = hae_backend_create(HAE_CPU, 1, &be) == HAE_OK &&
              hae_task_mqar(&(hae_mqar_args){.length = 64, .vocab = 64, .pairs = 1, .seed = 1}, &t) == HAE_OK;
    if (!ok) fprintf(stderr, "hae: eval: %s\n", hae_last_error());
    for (int k = 0; ok && k < cfg->eval.probe.kinds.n; k++)
        for (int d = 0; ok && d < cfg->eval.probe.K.n; d++) {
            probe_point p = {.kind = (hae_layer_kind)cfg->eval.probe.kinds.v[k], .K = cfg->eval.probe.K.v[d],
                             .topk = cfg->eval.probe.topk.v[0]};
            hae_probe_args a = probe_args(cfg, &p, 1);
            hae_probe_result r;
            ok = hae_probe_run(be, &a, t, &r) == HAE_OK;
            if (!ok)
                fprintf(stderr, "hae: eval.probe.kinds %s, eval.probe.K %lld: %s\n", hae_layer_kind_name(p.kind),
                        (long long)p.K, hae_last_error());
        }
    hae_task_free(t);
    hae_backend_destroy(be);
    return ok;
}

/* The point over seeds 1..N: task and codes from seed s; questions and correct summed. */
static hae_status run_probe_point(hae_backend *be, const hae_config *cfg, const probe_point *p, hae_probe_result *out) {
    for (int64_t s = 1; s <= cfg->eval.seeds; s++) {
        hae_task *t = NULL;
        hae_probe_args a = probe_args(cfg, p, (uint64_t)s);
        hae_probe_result r;
        hae_status st = hae_eval_task(cfg, &p->pt, (uint64_t)s, &t);
        if (st == HAE_OK) st = hae_probe_run(be, &a, t, &r);
        hae_task_free(t);
        HAE_TRY(st);
        if (s == 1) *out = r, out->queries = out->correct = 0;
        out->queries += r.queries, out->correct += r.correct;
    }
    out->recall = (double)out->correct / (double)out->queries;
    return HAE_OK;
}

static void point_text(const hae_eval_point *p, char *buf, size_t n) {
    int u = snprintf(buf, n, "%s length %lld", hae_task_kind_name(p->task), (long long)p->length);
    if (p->pairs) u += snprintf(buf + u, n - (size_t)u, " pairs %lld", (long long)p->pairs);
    if (p->task == HAE_TASK_MULTIHOP) u += snprintf(buf + u, n - (size_t)u, " hops %lld", (long long)p->hops);
    if (p->chains) snprintf(buf + u, n - (size_t)u, " chains %lld", (long long)p->chains);
}

static void probe_label(const probe_point *p, const char *job, char *buf, size_t n) {
    char pt[160];
    point_text(&p->pt, pt, sizeof pt);
    int u = snprintf(buf, n, "%s%s%s %s K %lld", job, job[0] ? ": " : "", hae_layer_kind_name(p->kind), pt, (long long)p->K);
    if (p->topk) snprintf(buf + u, n - (size_t)u, " top-k %lld", (long long)p->topk);
}

/* The knobs every row shares: task, length, pairs, hops and chains, empty where they do not apply. */
static void point_cells(FILE *f, const hae_eval_point *p) {
    bool chained = p->task == HAE_TASK_MULTIHOP;
    fprintf(f, "%s,%lld,", hae_task_kind_name(p->task), (long long)p->length);
    if (p->pairs) fprintf(f, "%lld", (long long)p->pairs);
    fputc(',', f);
    if (chained) fprintf(f, "%lld,%lld", (long long)p->hops, (long long)p->chains);
    else fputc(',', f);
}

static void probe_csv_header(FILE *f) {
    fputs("kind,task,length,pairs,hops,chains,K,V,topk,index_dtype,key_cos,log_decay,orthogonal,vocab,noise,seeds,"
          "backend,context,stored_pairs,questions,correct,recall,error,job\n", f);
}

/* One row: the knobs (empty where they do not apply to the kind), then the result or the error, then the job. */
static void probe_csv_row(FILE *f, const hae_config *cfg, const probe_point *p, hae_device dev,
                          const hae_probe_result *r, const char *error, const char *job) {
    bool dsa = p->kind == HAE_LAYER_DSA, lin = hae_linear_kind_of(p->kind, &(hae_linear_kind){0});
    fprintf(f, "%s,", hae_layer_kind_name(p->kind));
    point_cells(f, &p->pt);
    fprintf(f, ",%lld,%lld,", (long long)p->K, (long long)p->K);
    if (dsa) fprintf(f, "%lld,%s", (long long)p->topk, hae_dtype_name(cfg->eval.probe.index_dtype));
    else fputc(',', f);
    fprintf(f, ",%.9g,", (double)cfg->eval.probe.key_cos);
    if (lin) fprintf(f, "%.9g", (double)cfg->eval.probe.log_decay);
    fprintf(f, ",%d,%lld,%lld,%lld,%s,", cfg->eval.probe.orthogonal,
            (long long)(cfg->eval.vocab ? cfg->eval.vocab : cfg->model.vocab_size), (long long)cfg->eval.noise_vocab,
            (long long)cfg->eval.seeds, dev == HAE_CUDA ? "cuda" : "cpu");
    if (r)
        fprintf(f, "%lld,%lld,%lld,%lld,%.6f,", (long long)r->context, (long long)r->pairs, (long long)r->queries,
                (long long)r->correct, r->recall);
    else
        fputs(",,,,,", f);
    hae_csv_cell(f, error ? error : "");
    fputc(',', f);
    hae_csv_cell(f, job);
    fputc('\n', f);
}

/* Runs one job's probe grid into the run's files, appending its results to res[*n_res]. */
static hae_status probe_job(eval_run *run, hae_backend *be, const hae_config *cfg, const char *job,
                            hae_probe_result *res, int64_t *n_res) {
    probe_point *g = NULL;
    int64_t n = 0;
    HAE_TRY(probe_grid(cfg, &g, &n));
    hae_device dev = hae_backend_device(be);
    for (int64_t i = 0; i < n; i++) {
        char label[1400], what[64] = "";
        hae_probe_result *r = &res[*n_res];
        probe_label(&g[i], job, label, sizeof label);
        double t0 = now_s();
        bool ok = run_probe_point(be, cfg, &g[i], r) == HAE_OK;
        probe_csv_row(run->csv, cfg, &g[i], dev, ok ? r : NULL, ok ? NULL : hae_last_error(), job);
        if (ok) {
            hae_probe_report(r, 1, NULL, run->jsonl);
            snprintf(what, sizeof what, "recall %.4f (%.2f s)", r->recall, now_s() - t0);
            ++*n_res;
        }
        point_done(run, label, ok ? NULL : hae_last_error(), what);
    }
    free(g);
    return HAE_OK;
}

static int eval_probe(const eval_options *e, const hae_config *cfg, hae_config *job, int argc, char **argv) {
    int jobs = hae_config_sweep_jobs(cfg);
    int64_t total = 0;
    for (int j = 0; j < jobs; j++) {
        probe_point *g = NULL;
        int64_t n = 0;
        if (hae_config_sweep_job(cfg, j, job, NULL, 0) != HAE_OK || probe_grid(job, &g, &n) != HAE_OK)
            return fprintf(stderr, "hae: eval: %s\n", hae_last_error()), 1;
        free(g);
        total += n;
        if (!check_kinds(job)) return 1;
    }
    hae_backend *be = NULL;
    hae_probe_result *res = malloc(sizeof *res * (size_t)(total ? total : 1));
    if (!res) return fprintf(stderr, "hae: out of memory\n"), 1;
    if (backend_of(cfg, &be) != HAE_OK) return free(res), fprintf(stderr, "hae: eval --probe: %s\n", hae_last_error()), 1;
    eval_run run;
    int64_t n_res = 0;
    hae_status st = eval_run_open(&run, cfg, e->o.out_dir, "probe", be);
    run.total = total;
    if (st == HAE_OK) probe_csv_header(run.csv);
    for (int j = 0; j < jobs && st == HAE_OK; j++) {
        char label[1024];
        st = hae_config_sweep_job(cfg, j, job, label, sizeof label);
        if (st == HAE_OK) st = probe_job(&run, be, job, label, res, &n_res);
    }
    if (run.points) fputs("### points\n\n", run.points), hae_probe_report(res, n_res, run.points, NULL);
    free(res);
    char about[512], title[HAE_NAME_MAX + 32];
    snprintf(about, sizeof about, "Mechanism probes on %s: each task written as random unit key and value codes into the "
             "kind's real ops, no weights; recall = questions whose every answer decoded exactly / questions.\n",
             hae_backend_name(be));
    snprintf(title, sizeof title, "hae eval --probe: %s", cfg->name);
    st = eval_run_close(&run, st, title, argc, argv, about);
    hae_backend_destroy(be);
    return st == HAE_OK && !run.failed ? 0 : 1;
}

/* ---------------------------------------------------------------- eval: model runs */

static void model_csv_header(FILE *f, const char *config_keys) {
    fprintf(f, "task,length,pairs,hops,chains,queries,form,shuffle,power,noise,vocab,seeds,weights,double,context,"
               "stored_pairs,questions,correct,answers,answers_correct,recall,chance,seconds,tokens_per_s,error,job,%s\n",
            config_keys);
}

/* The task's knobs: point_cells, then queries, form, shuffle, power, noise, vocab, seeds (empty where they do
 * not apply to the task). */
static void task_cells(FILE *f, const hae_config *cfg, const hae_eval_point *p) {
    bool chained = p->task == HAE_TASK_MULTIHOP;
    point_cells(f, p);
    fprintf(f, ",%lld,%s,%s,", (long long)cfg->eval.queries, chained ? (cfg->eval.form ? "list" : "follow") : "",
            chained ? (cfg->eval.shuffle ? "true" : "false") : "");
    if (p->task == HAE_TASK_MQAR) fprintf(f, "%.9g", (double)cfg->eval.power);
    fprintf(f, ",%lld,%lld,%lld", (long long)cfg->eval.noise_vocab,
            (long long)(cfg->eval.vocab ? cfg->eval.vocab : cfg->model.vocab_size), (long long)cfg->eval.seeds);
}

/* The results, context .. tokens_per_s (empty on an error), then the error. */
static void score_cells(FILE *f, const hae_task *t, const hae_eval_score *s, const char *error) {
    if (!error)
        fprintf(f, "%lld,%lld,%lld,%lld,%lld,%lld,%.6f,%.6g,%.3f,%.1f,", (long long)t->context, (long long)t->n_pairs,
                (long long)s->questions, (long long)s->correct, (long long)s->answers, (long long)s->answers_correct,
                (double)s->correct / (double)s->questions, s->chance / (double)s->questions, s->seconds,
                s->seconds > 0 ? (double)s->tokens / s->seconds : 0.0);
    else
        fputs(",,,,,,,,,,", f);
    hae_csv_cell(f, error ? error : "");
}

static void point_json(FILE *f, const hae_eval_point *p) {
    fprintf(f, "\"task\":\"%s\",\"length\":%lld,\"pairs\":%lld,\"hops\":%lld,\"chains\":%lld", hae_task_kind_name(p->task),
            (long long)p->length, (long long)p->pairs, (long long)p->hops, (long long)p->chains);
}

/* The results as the last fields of a JSON line, which they close. */
static void score_json(FILE *f, const hae_task *t, const hae_eval_score *s) {
    fprintf(f, ",\"context\":%lld,\"stored_pairs\":%lld,\"questions\":%lld,\"correct\":%lld,\"answers\":%lld,"
               "\"answers_correct\":%lld,\"recall\":%.17g,\"chance\":%.17g,\"seconds\":%.6f,\"tokens_per_s\":%.1f}\n",
            (long long)t->context, (long long)t->n_pairs, (long long)s->questions, (long long)s->correct,
            (long long)s->answers, (long long)s->answers_correct, (double)s->correct / (double)s->questions,
            s->chance / (double)s->questions, s->seconds, s->seconds > 0 ? (double)s->tokens / s->seconds : 0.0);
}

/* A row of results.md's points table: the job, the kind (NULL: no such column), the point and its results. */
static void point_line(FILE *f, const char *job, const char *kind, const char *pt, const hae_eval_score *s) {
    fprintf(f, "| %s |", job[0] ? job : "-");
    if (kind) fprintf(f, " %s |", kind);
    fprintf(f, " %s | %lld | %lld | %.4f | %.3g | %.1f |\n", pt, (long long)s->questions, (long long)s->correct,
            (double)s->correct / (double)s->questions, s->chance / (double)s->questions,
            s->seconds > 0 ? (double)s->tokens / s->seconds : 0.0);
}

typedef struct {
    const hae_config *cfg;
    const char *weights, *dbl, *job, *config_values;
} model_row;

static void model_csv_row(FILE *f, const model_row *m, const hae_eval_point *p, const hae_task *t,
                          const hae_eval_score *s, const char *error) {
    task_cells(f, m->cfg, p);
    fputc(',', f);
    hae_csv_cell(f, m->weights);
    fprintf(f, ",%s,", m->dbl);
    score_cells(f, t, s, error);
    fputc(',', f);
    hae_csv_cell(f, m->job);
    fprintf(f, ",%s\n", m->config_values);
}

static void model_jsonl(FILE *f, const model_row *m, const hae_eval_point *p, const hae_task *t, const hae_eval_score *s) {
    fputs("{\"job\":", f);
    json_str(f, m->job);
    fputc(',', f);
    point_json(f, p);
    fputs(",\"weights\":", f);
    json_str(f, m->weights);
    fprintf(f, ",\"double\":\"%s\"", m->dbl);
    score_json(f, t, s);
}

/* The point's eval.seeds tasks, runtime.batch at a time; *first keeps seed 1's task (its context and pairs
 * name the row). Progress per batch on a terminal. */
static hae_status model_point(eval_run *run, hae_eval_runner *r, const hae_config *cfg, const hae_eval_point *p,
                              int dbl, const char *label, hae_task **first, hae_eval_score *s) {
    const int64_t B = hae_eval_runner_batch(r), S = cfg->eval.seeds;
    hae_task **tasks = calloc((size_t)B, sizeof *tasks);
    if (!tasks) return hae_error(HAE_ERR_OOM, "eval: out of host memory");
    uint64_t seed = cfg->seed;
    hae_eval_logits_fn hook = dbl == 1 ? hae_eval_oracle : dbl == 2 ? hae_eval_random : NULL;
    hae_status st = HAE_OK;
    for (int64_t s0 = 1; s0 <= S && st == HAE_OK; s0 += B) {
        int64_t n = S - s0 + 1 < B ? S - s0 + 1 : B;
        for (int64_t b = 0; b < n && st == HAE_OK; b++) st = hae_eval_task(cfg, p, (uint64_t)(s0 + b), &tasks[b]);
        if (st == HAE_OK) st = hae_eval_runner_run(r, (const hae_task *const *)tasks, n, hook, &seed, s);
        if (st == HAE_OK && run->pg.tty && !run->pg.quiet) {
            char what[96];
            snprintf(what, sizeof what, "seeds %lld/%lld, recall %.4f", (long long)(s0 + n - 1), (long long)S,
                     (double)s->correct / (double)s->questions);
            eval_progress(&run->pg, run->done, run->total, label, what);
        }
        if (s0 == 1) *first = tasks[0], tasks[0] = NULL;
        for (int64_t b = 0; b < n; b++) hae_task_free(tasks[b]), tasks[b] = NULL;
    }
    free(tasks);
    return st;
}

/* A point's rows: the CSV row, and the JSON line unless error is set. */
typedef void (*point_rows_fn)(eval_run *run, const void *ctx, int64_t i, const hae_task *first,
                              const hae_eval_score *s, const char *error);

/* Point i (p) through the runner r, or failed with `why` when r could not be built: its rows, its line of
 * the points table and its progress line. kind (or NULL) labels it. */
static void score_point(eval_run *run, hae_eval_runner *r, const char *why, const hae_config *cfg,
                        const hae_eval_point *p, int dbl, const char *job, const char *kind, point_rows_fn rows,
                        const void *ctx, int64_t i) {
    char label[1600], pt[160], what[96] = "";
    point_text(p, pt, sizeof pt);
    snprintf(label, sizeof label, "%s%s%s%s%s", job, job[0] ? ": " : "", kind ? kind : "", kind ? " " : "", pt);
    hae_task *first = NULL;
    hae_eval_score s = {0};
    const char *error = r ? NULL : why;
    if (r && model_point(run, r, cfg, p, dbl, label, &first, &s) != HAE_OK) error = hae_last_error();
    rows(run, ctx, i, first, &s, error);
    if (!error) {
        point_line(run->points, job, kind, pt, &s);
        snprintf(what, sizeof what, "recall %.4f (%.2f s)", (double)s.correct / (double)s.questions, s.seconds);
    }
    point_done(run, label, error, what);
    hae_task_free(first);
}

typedef struct {
    const model_row *m;
    const hae_eval_point *pts;
} model_rows_ctx;

static void model_rows(eval_run *run, const void *ctx, int64_t i, const hae_task *first, const hae_eval_score *s,
                       const char *error) {
    const model_rows_ctx *c = ctx;
    model_csv_row(run->csv, c->m, &c->pts[i], first, s, error);
    if (!error) model_jsonl(run->jsonl, c->m, &c->pts[i], first, s);
}

/* One job: its model built once for the longest task of its grid, then every point. */
static hae_status model_job(eval_run *run, const eval_options *e, const hae_config *cfg, const char *job,
                            bool header) {
    hae_eval_point *pts = NULL;
    int64_t n = 0, longest = 0;
    char *keys = NULL, *values = NULL, weights[HAE_PATH_MAX + 64];
    if (e->o.weights) snprintf(weights, sizeof weights, "%s", e->o.weights);
    else snprintf(weights, sizeof weights, "untrained (seed %llu)", (unsigned long long)cfg->seed);
    HAE_TRY(hae_eval_grid(cfg, &pts, &n));
    hae_status st = hae_eval_config_csv(cfg, &keys, &values);
    if (st == HAE_OK && header) model_csv_header(run->csv, keys);
    for (int64_t i = 0; i < n; i++) longest = pts[i].length > longest ? pts[i].length : longest;
    hae_backend *be = NULL;
    hae_eval_runner *r = NULL;
    hae_status built = st == HAE_OK ? backend_of(cfg, &be) : st;
    if (built == HAE_OK) built = hae_eval_runner_create(cfg, be, longest, e->o.weights, &r);
    if (built == HAE_OK && e->o.weights) warn_unused(hae_eval_runner_model(r), e->o.weights);
    char why[1024] = "";
    if (built != HAE_OK) snprintf(why, sizeof why, "%s", hae_last_error());
    const model_row m = {cfg, weights, double_names[e->dbl], job, values ? values : ""};
    const model_rows_ctx rc = {&m, pts};
    for (int64_t i = 0; i < n && st == HAE_OK; i++)
        score_point(run, built == HAE_OK ? r : NULL, why, cfg, &pts[i], e->dbl, job, NULL, model_rows, &rc, i);
    hae_eval_runner_destroy(r);
    hae_backend_destroy(be);
    free(pts), free(keys), free(values);
    return st;
}

static int eval_models(const eval_options *e, const hae_config *cfg, hae_config *job, int argc, char **argv) {
    if (!e->o.weights && !e->dbl && !e->untrained)
        return fprintf(stderr, "hae: eval: the model would run its seed's random init, which is untrained: give "
                               "--weights FILE, or --double oracle|random to check the pipeline, or --untrained to "
                               "measure it as a baseline (never a result)\n"),
               1;
    int jobs = hae_config_sweep_jobs(cfg);
    int64_t total = 0;
    for (int j = 0; j < jobs; j++) {
        hae_eval_point *pts = NULL;
        int64_t n = 0;
        if (hae_config_sweep_job(cfg, j, job, NULL, 0) != HAE_OK || hae_eval_grid(job, &pts, &n) != HAE_OK)
            return fprintf(stderr, "hae: eval: %s\n", hae_last_error()), 1;
        free(pts);
        if (job->eval.vocab > job->model.vocab_size)
            return fprintf(stderr, "hae: eval: eval.vocab %lld exceeds model.vocab_size %lld: the tasks' tokens are the "
                           "model's\n", (long long)job->eval.vocab, (long long)job->model.vocab_size), 1;
        total += n;
    }
    eval_run run;
    hae_backend *be = NULL;
    hae_status st = backend_of(cfg, &be);
    if (st == HAE_OK) st = eval_run_open(&run, cfg, e->o.out_dir, "eval", be);
    else return fprintf(stderr, "hae: eval: %s\n", hae_last_error()), 1;
    run.total = total;
    fputs("### points\n\n| job | point | questions | correct | recall | chance | tokens/s |\n"
          "|---|---|---:|---:|---:|---:|---:|\n", run.points);
    for (int j = 0; j < jobs && st == HAE_OK; j++) {
        char label[1024];
        st = hae_config_sweep_job(cfg, j, job, label, sizeof label);
        if (st == HAE_OK) st = model_job(&run, e, job, label, j == 0);
    }
    char kinds[2048], about[4096], title[HAE_NAME_MAX + 32];
    layer_summary(cfg, kinds, sizeof kinds);
    size_t u = (size_t)snprintf(about, sizeof about, "Model %s (%s): %lld layers, %s; batch %lld on %s.\n",
                                cfg->name, cfg->source, (long long)cfg->model.n_layers, kinds,
                                (long long)cfg->runtime.batch, hae_backend_name(be));
    if (e->dbl == 1)
        snprintf(about + u, sizeof about - u, "\n**Pipeline check, not a result:** the logits at every scored position "
                 "were replaced by an oracle's answer read from the tokens so far; it must score 1.000.\n");
    else if (e->dbl == 2)
        snprintf(about + u, sizeof about - u, "\n**Pipeline check, not a result:** the logits at every scored position "
                 "were replaced by a uniform pick among the answer tokens; it must score the chance column.\n");
    else if (!e->o.weights)
        snprintf(about + u, sizeof about - u, "\n**Untrained model (random init from seed %llu): a baseline, not a "
                 "result.**\n", (unsigned long long)cfg->seed);
    else snprintf(about + u, sizeof about - u, "Weights: %s.\n", e->o.weights);
    snprintf(title, sizeof title, "hae eval: %s", cfg->name);
    fputc('\n', run.points);
    st = eval_run_close(&run, st, title, argc, argv, about);
    hae_backend_destroy(be);
    return st == HAE_OK && !run.failed ? 0 : 1;
}

/* ---------------------------------------------------------------- eval --circuit */

/* A grid point through one circuit: every hop of kind eval.circuit.kinds[kind], or (kind -1) the hops of
 * eval.circuit.hop_kinds. */
typedef struct {
    hae_eval_point pt;
    int kind;
} circuit_point;

/* Per task: each kind outside the task's points (length innermost), so a series reads as recall vs length and
 * consecutive points of one kind and hop count share a circuit. */
static hae_status circuit_grid(const hae_config *cfg, circuit_point **out, int64_t *n) {
    const bool pattern = cfg->eval.circuit.hop_kinds.n > 0;
    const int kinds = pattern ? 1 : cfg->eval.circuit.kinds.n;
    hae_eval_point *pts = NULL;
    int64_t np = 0;
    *out = NULL, *n = 0;
    HAE_TRY(hae_eval_grid(cfg, &pts, &np));
    const int64_t count = np * kinds;
    circuit_point *g = count <= HAE_EVAL_MAX_POINTS ? malloc(sizeof *g * (size_t)(count ? count : 1)) : NULL;
    if (!g) {
        free(pts);
        return count > HAE_EVAL_MAX_POINTS ? hae_error(HAE_ERR_INVALID, "eval: %lld circuit points, more than %d",
                                                       (long long)count, HAE_EVAL_MAX_POINTS)
                                           : hae_error(HAE_ERR_OOM, "eval: %lld circuit points", (long long)count);
    }
    for (int64_t s = 0, e; s < np; s = e) {
        for (e = s; e < np && pts[e].task == pts[s].task; e++) {}
        for (int k = 0; k < kinds; k++)
            for (int64_t i = s; i < e; i++) g[(*n)++] = (circuit_point){pts[i], pattern ? -1 : k};
    }
    free(pts);
    *out = g;
    return HAE_OK;
}

/* Retrieval layers of a point's circuit: a multihop follow question takes its hops lookups; a list question
 * (each answer one link on), mqar and niah one. */
static int64_t circuit_hops(const hae_config *cfg, const hae_eval_point *p) {
    return p->task == HAE_TASK_MULTIHOP && cfg->eval.form == HAE_HOPS_FOLLOW ? p->hops : 1;
}

static hae_layer_kind hop_kind(const hae_config *cfg, const circuit_point *c, int64_t j) {
    const hae_eval_list *pat = &cfg->eval.circuit.hop_kinds;
    return (hae_layer_kind)(c->kind < 0 ? pat->v[j % pat->n] : cfg->eval.circuit.kinds.v[c->kind]);
}

static bool same_circuit(const hae_config *cfg, const circuit_point *a, const circuit_point *b) {
    return a->pt.task == b->pt.task && a->kind == b->kind && circuit_hops(cfg, &a->pt) == circuit_hops(cfg, &b->pt);
}

/* The circuit of c's point sized for `context` tokens (hops beyond HAE_CIRCUIT_MAX_HOPS are left to its checks). */
static hae_circuit_args circuit_args(const hae_config *cfg, const circuit_point *c, int64_t context) {
    const int64_t hops = circuit_hops(cfg, &c->pt);
    hae_circuit_args a = {.task = c->pt.task, .vocab = cfg->eval.vocab ? cfg->eval.vocab : cfg->model.vocab_size,
                          .noise_vocab = cfg->eval.noise_vocab, .hops = (int)hops, .context = context,
                          .code_dim = cfg->eval.circuit.code_dim, .window = cfg->eval.circuit.window,
                          .topk = cfg->eval.circuit.topk, .log_decay = cfg->eval.circuit.log_decay, .seed = cfg->seed};
    for (int64_t j = 0; j < hops && j < HAE_CIRCUIT_MAX_HOPS; j++) a.kinds[j] = hop_kind(cfg, c, j);
    return a;
}

/* The kind column: the kind, or the hop pattern joined by '+' ("dsa+full"). */
static const char *circuit_kind(const hae_config *cfg, const circuit_point *c, char *buf, size_t n) {
    const int m = c->kind < 0 ? cfg->eval.circuit.hop_kinds.n : 1;
    size_t u = 0;
    buf[0] = '\0';
    for (int j = 0; j < m && u < n; j++)
        u += (size_t)snprintf(buf + u, n - u, "%s%s", j ? "+" : "", hae_layer_kind_name(hop_kind(cfg, c, j)));
    return buf;
}

/* The knobs that apply to a circuit's kinds (all of its pattern, so every hop count of a series has the same
 * cells): the swa window, the dsa top-k, the log decay of a decaying linear kind. */
enum { USES_WINDOW = 1, USES_TOPK = 2, USES_DECAY = 4 };
static int circuit_uses(const hae_config *cfg, const circuit_point *c) {
    int uses = 0;
    for (int j = 0; j < (c->kind < 0 ? cfg->eval.circuit.hop_kinds.n : 1); j++) {
        const hae_layer_kind k = hop_kind(cfg, c, j);
        hae_linear_kind lk;
        if (k == HAE_LAYER_SWA) uses |= USES_WINDOW;
        if (k == HAE_LAYER_DSA) uses |= USES_TOPK;
        if (hae_linear_kind_of(k, &lk) && lk.decay != HAE_DECAY_NONE) uses |= USES_DECAY;
    }
    return uses;
}

static void circuit_csv_header(FILE *f) {
    fputs("kind,task,length,pairs,hops,chains,queries,form,shuffle,power,noise,vocab,seeds,code_dim,code_weight,window,"
          "topk,log_decay,decode,backend,context,stored_pairs,questions,correct,answers,answers_correct,recall,chance,"
          "seconds,tokens_per_s,error,job\n", f);
}

/* What a circuit's rows share beyond the point: its kind column, code weight (0: unknown) and backend. */
typedef struct {
    const hae_config *cfg;
    const char *kind, *job;
    int code_weight;
    hae_device dev;
} circuit_row;

/* One row: the kind, the task's knobs, the circuit's (empty where they do not apply), the results or the error,
 * the job. */
static void circuit_csv_row(FILE *f, const circuit_row *c, const circuit_point *p, const hae_task *t,
                            const hae_eval_score *s, const char *error) {
    const hae_config *cfg = c->cfg;
    const int uses = circuit_uses(cfg, p);
    hae_csv_cell(f, c->kind);
    fputc(',', f);
    task_cells(f, cfg, &p->pt);
    fprintf(f, ",%lld,", (long long)cfg->eval.circuit.code_dim);
    if (c->code_weight) fprintf(f, "%d", c->code_weight);
    fputc(',', f);
    if (uses & USES_WINDOW)
        fprintf(f, "%lld", (long long)(cfg->eval.circuit.window ? cfg->eval.circuit.window : cfg->model.swa.window_size));
    fputc(',', f);
    if (uses & USES_TOPK)
        fprintf(f, "%lld", (long long)(cfg->eval.circuit.topk ? cfg->eval.circuit.topk : cfg->model.dsa.index_topk));
    fputc(',', f);
    if (uses & USES_DECAY) fprintf(f, "%.9g", (double)cfg->eval.circuit.log_decay);
    fprintf(f, ",%s,%s,", cfg->eval.circuit.decode ? "true" : "false", c->dev == HAE_CUDA ? "cuda" : "cpu");
    score_cells(f, t, s, error);
    fputc(',', f);
    hae_csv_cell(f, c->job);
    fputc('\n', f);
}

static void circuit_jsonl(FILE *f, const circuit_row *c, const circuit_point *p, const hae_task *t,
                          const hae_eval_score *s) {
    const hae_config *cfg = c->cfg;
    const int uses = circuit_uses(cfg, p);
    fputs("{\"job\":", f);
    json_str(f, c->job);
    fputs(",\"kind\":", f);
    json_str(f, c->kind);
    fputc(',', f);
    point_json(f, &p->pt);
    fprintf(f, ",\"code_dim\":%lld,\"code_weight\":%d,\"window\":", (long long)cfg->eval.circuit.code_dim,
            c->code_weight);
    if (uses & USES_WINDOW)
        fprintf(f, "%lld", (long long)(cfg->eval.circuit.window ? cfg->eval.circuit.window : cfg->model.swa.window_size));
    else fputs("null", f);
    fputs(",\"topk\":", f);
    if (uses & USES_TOPK)
        fprintf(f, "%lld", (long long)(cfg->eval.circuit.topk ? cfg->eval.circuit.topk : cfg->model.dsa.index_topk));
    else fputs("null", f);
    fputs(",\"log_decay\":", f);
    if (uses & USES_DECAY) fprintf(f, "%.9g", (double)cfg->eval.circuit.log_decay);
    else fputs("null", f);
    fprintf(f, ",\"decode\":%s,\"backend\":\"%s\"", cfg->eval.circuit.decode ? "true" : "false",
            c->dev == HAE_CUDA ? "cuda" : "cpu");
    score_json(f, t, s);
}

typedef struct {
    const circuit_row *row;
    const circuit_point *g;
} circuit_rows_ctx;

static void circuit_rows(eval_run *run, const void *ctx, int64_t i, const hae_task *first, const hae_eval_score *s,
                         const char *error) {
    const circuit_rows_ctx *c = ctx;
    circuit_csv_row(run->csv, c->row, &c->g[i], first, s, error);
    if (!error) circuit_jsonl(run->jsonl, c->row, &c->g[i], first, s);
}

static int64_t longest_of(const circuit_point *g, int64_t n) {
    int64_t longest = 0;
    for (int64_t i = 0; i < n; i++) longest = g[i].pt.length > longest ? g[i].pt.length : longest;
    return longest;
}

/* Consecutive points of one kind and hop count share a circuit: built once for their longest task, its weights
 * written into the run directory, loaded by a runner of runtime.batch sequences and removed; then each point's
 * seeds go through the runner as a model run's do. A circuit that fails to build fails its points. */
static void circuit_block(eval_run *run, hae_backend *be, const hae_config *cfg, const circuit_point *g, int64_t n,
                          const char *job) {
    const int64_t longest = longest_of(g, n);
    const hae_circuit_args a = circuit_args(cfg, &g[0], longest);
    char path[HAE_PATH_MAX + 32], kind[HAE_NAME_MAX], why[1024] = "";
    snprintf(path, sizeof path, "%s/circuit.safetensors", run->dir);
    circuit_row row = {cfg, circuit_kind(cfg, &g[0], kind, sizeof kind), job, 0, hae_backend_device(be)};
    hae_config *cc = malloc(sizeof *cc);
    hae_eval_runner *r = NULL;
    hae_status built = cc ? hae_circuit_check(&a, cfg, &row.code_weight) : hae_error(HAE_ERR_OOM, "eval: a config");
    if (built == HAE_OK) built = hae_circuit_build(&a, cfg, cc, path);
    if (built == HAE_OK) {
        cc->runtime.batch = cfg->runtime.batch; /* built for one sequence; the runner runs a batch of them */
        built = hae_eval_runner_create(cc, be, longest, path, &r);
    }
    remove(path);
    if (built == HAE_OK) hae_eval_runner_set_decode(r, cfg->eval.circuit.decode);
    else snprintf(why, sizeof why, "%s", hae_last_error());
    const circuit_rows_ctx rc = {&row, g};
    for (int64_t i = 0; i < n; i++)
        score_point(run, built == HAE_OK ? r : NULL, why, cfg, &g[i].pt, 0, job, kind, circuit_rows, &rc, i);
    hae_eval_runner_destroy(r);
    free(cc);
}

/* Every job's circuits checked (hops, the codes against the vocabulary, the circuit's config on the job's)
 * before anything is written; *total gets the points of all jobs. */
static bool check_circuits(const hae_config *cfg, hae_config *job, int64_t *total) {
    *total = 0;
    for (int j = 0; j < hae_config_sweep_jobs(cfg); j++) {
        char label[1024], kind[HAE_NAME_MAX];
        circuit_point *g = NULL;
        int64_t n = 0;
        hae_status st = hae_config_sweep_job(cfg, j, job, label, sizeof label);
        if (st == HAE_OK) st = circuit_grid(job, &g, &n);
        if (st != HAE_OK) return fprintf(stderr, "hae: eval --circuit: %s\n", hae_last_error()), false;
        *total += n;
        for (int64_t s = 0, e; s < n && st == HAE_OK; s = e) {
            for (e = s + 1; e < n && same_circuit(job, &g[s], &g[e]); e++) {}
            const hae_circuit_args a = circuit_args(job, &g[s], longest_of(g + s, e - s));
            if ((st = hae_circuit_check(&a, job, NULL)) != HAE_OK)
                fprintf(stderr, "hae: eval --circuit: %s%s%s circuit for %s (%d hop%s): %s\n", label, label[0] ? ": " : "",
                        circuit_kind(job, &g[s], kind, sizeof kind), hae_task_kind_name(a.task), a.hops,
                        a.hops == 1 ? "" : "s", hae_last_error());
        }
        free(g);
        if (st != HAE_OK) return false;
    }
    return true;
}

static int eval_circuits(const eval_options *e, const hae_config *cfg, hae_config *job, int argc, char **argv) {
    int64_t total = 0;
    if (!check_circuits(cfg, job, &total)) return 1;
    hae_backend *be = NULL;
    if (backend_of(cfg, &be) != HAE_OK) return fprintf(stderr, "hae: eval --circuit: %s\n", hae_last_error()), 1;
    eval_run run;
    hae_status st = eval_run_open(&run, cfg, e->o.out_dir, "circuit", be);
    run.total = total;
    if (st == HAE_OK) {
        circuit_csv_header(run.csv);
        fputs("### points\n\n| job | kind | point | questions | correct | recall | chance | tokens/s |\n"
              "|---|---|---|---:|---:|---:|---:|---:|\n", run.points);
    }
    for (int j = 0; j < hae_config_sweep_jobs(cfg) && st == HAE_OK; j++) {
        char label[1024];
        circuit_point *g = NULL;
        int64_t n = 0;
        st = hae_config_sweep_job(cfg, j, job, label, sizeof label);
        if (st == HAE_OK) st = circuit_grid(job, &g, &n);
        for (int64_t s = 0, x; s < n && st == HAE_OK; s = x) {
            for (x = s + 1; x < n && same_circuit(job, &g[s], &g[x]); x++) {}
            circuit_block(&run, be, job, g + s, x - s, label);
        }
        free(g);
    }
    char about[1024], title[HAE_NAME_MAX + 32];
    snprintf(about, sizeof about, "Hand-built circuits (hae_circuit_build, eval/README.md) on %s: a deltanet layer "
             "reading the previous token, then a retrieval layer per hop of the kind in the kind column; f32, batch "
             "%lld, %s; exact match at every answer. Tokens have binary codes of code_weight ones in code_dim dims "
             "(1: one-hot, the written keys orthonormal).\n", hae_backend_name(be), (long long)cfg->runtime.batch,
             cfg->eval.circuit.decode ? "prefilled up to the first question, then a decode step per token"
                                      : "prefilled up to the first question, then a forward per span up to each answer");
    snprintf(title, sizeof title, "hae eval --circuit: %s", cfg->name);
    if (run.points) fputc('\n', run.points);
    st = eval_run_close(&run, st, title, argc, argv, about);
    hae_backend_destroy(be);
    return st == HAE_OK && !run.failed ? 0 : 1;
}

static int cmd_eval(int argc, char **argv) {
    eval_options e;
    int r = parse_eval(argc, argv, &e);
    if (r) return r == 2 ? 0 : 1;
    hae_config *cfg = malloc(sizeof *cfg), *job = malloc(sizeof *job);
    if (!cfg || !job) return free(cfg), free(job), fprintf(stderr, "hae: out of memory\n"), 1;
    if (load_config(&e.o, cfg) != HAE_OK) return free(cfg), free(job), fail(NULL);
    r = !check_jobs(cfg, job)        ? 1
        : e.mode == FOR_PROBE   ? eval_probe(&e, cfg, job, argc, argv)
        : e.mode == FOR_CIRCUIT ? eval_circuits(&e, cfg, job, argc, argv)
                                : eval_models(&e, cfg, job, argc, argv);
    free(cfg), free(job);
    return r;
}

/* ---------------------------------------------------------------- report */

static const char *usage_report =
    "usage: hae report RUN_DIR... [--out DIR] [--title TEXT]\n"
    "\n"
    "Merges the results.csv of each run directory (hae eval, hae eval --probe, hae report) into one table: the\n"
    "columns united, a `run` column first naming each row's directory. Series are the rows alike in every\n"
    "column but the x axis, the results and the execution settings (backend, seeds, runtime.*, memory.*), so\n"
    "the same config measured in several runs (4K-128K on one machine, 1M on another) makes one line; rows\n"
    "alike at one length pool their questions.\n"
    "\n"
    "options:\n"
    "  --out DIR      output directory (default runs/report-YYYYmmdd-HHMMSS)\n"
    "  --title TEXT   heads the charts (default: the run directories' names)\n"
    "\n"
    "prints: the markdown tables (recall by length, and by hops when a series spans two or more)\n"
    "writes: results.csv (merged), results.md, recall_vs_length.svg, recall_vs_hops.svg (when it applies)\n";

static int cmd_report(int argc, char **argv) {
    const char *out = NULL, *title = NULL;
    char **dirs = calloc((size_t)argc + 1, sizeof *dirs), **csvs = calloc((size_t)argc + 1, sizeof *csvs);
    const char **runs = calloc((size_t)argc + 1, sizeof *runs);
    int n = 0, rc = 1;
    if (!dirs || !csvs || !runs) return free(dirs), free(csvs), free(runs), fprintf(stderr, "hae: out of memory\n"), 1;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage_report, stdout);
            rc = 0;
            goto done;
        } else if (!strcmp(a, "--out") || !strcmp(a, "--title")) {
            if (i + 1 == argc) {
                fprintf(stderr, "hae: %s needs a value (see hae report --help)\n", a);
                goto done;
            }
            *(!strcmp(a, "--out") ? &out : &title) = argv[++i];
        } else if (a[0] == '-') {
            fprintf(stderr, "hae: unknown report option '%s' (see hae report --help)\n", a);
            goto done;
        } else {
            size_t len = strlen(a);
            while (len > 1 && a[len - 1] == '/') len--;
            const char *base = a + len;
            while (base > a && base[-1] != '/') base--;
            dirs[n] = strndup(base, (size_t)(a + len - base));
            if (asprintf(&csvs[n], "%.*s/results.csv", (int)len, a) < 0) csvs[n] = NULL;
            if (!dirs[n] || !csvs[n]) {
                fprintf(stderr, "hae: out of memory\n");
                goto done;
            }
            runs[n] = dirs[n], n++;
        }
    }
    if (!n) {
        fprintf(stderr, "hae: report needs at least one run directory (see hae report --help)\n");
        goto done;
    }
    char dir[HAE_PATH_MAX], merged[HAE_PATH_MAX + 32], names[1024] = "";
    for (int i = 0, u = 0; i < n && u < (int)sizeof names; i++)
        u += snprintf(names + u, sizeof names - (size_t)u, "%s%s", i ? ", " : "", runs[i]);
    if (out) {
        snprintf(dir, sizeof dir, "%s", out);
    } else {
        char stamp[32];
        time_t now = time(NULL);
        strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", localtime(&now));
        snprintf(dir, sizeof dir, "runs/report-%s", stamp);
    }
    snprintf(merged, sizeof merged, "%s/results.csv", dir);
    char *md = NULL;
    size_t md_n = 0;
    FILE *f = open_memstream(&md, &md_n);
    hae_status st = f ? mkdirs(dir) : hae_error(HAE_ERR_OOM, "report: out of host memory");
    if (st == HAE_OK) {
        fprintf(f, "# hae report: %s\n\n`hae report", title ? title : names);
        for (int i = 0; i < argc; i++) fprintf(f, " %s", argv[i]);
        fputs("`\n\n", f);
        st = hae_eval_report(&(hae_eval_report_args){.inputs = (const char *const *)csvs, .runs = runs, .n_inputs = n,
                                                     .title = title ? title : names, .merged_csv = merged, .svg_dir = dir},
                             f);
    }
    if (f && fclose(f) && st == HAE_OK) st = hae_error(HAE_ERR_OOM, "report: out of host memory");
    if (st == HAE_OK) st = write_text(dir, "results.md", md);
    if (st == HAE_OK) {
        fputs(md, stdout);
        fprintf(stderr, "hae report: %d runs merged into %s\n", n, dir);
        rc = 0;
    } else {
        fprintf(stderr, "hae: report: %s\n", hae_last_error());
    }
    free(md);
done:
    for (int i = 0; i < n; i++) free(dirs[i]), free(csvs[i]);
    free(dirs), free(csvs), free(runs);
    return rc;
}

/* ---------------------------------------------------------------- mem */

static const char *usage_mem =
    "usage: hae mem [CONFIG] [options]\n"
    "\n"
    "The analytic memory plan, without building the model: at each context length, the bytes the config\n"
    "keeps on the GPU and on the host per kind (weights, activations, dsa K/V, indexer keys, full K/V,\n"
    "linear states), placed as its `memory:` section says, next to its full-attention twin (every layer\n"
    "`full`, everything on the GPU); the GPU saving; and the longest context per sequence each fits in the\n"
    "GPU budget. Prints a markdown table; writes it as CSV and an SVG chart. The bytes are a GPU run's\n"
    "(the linear layers' CUDA workspace included) on any machine, unless runtime.backend is cpu.\n"
    "\n"
    "options:\n"
    "  --context LIST      context lengths per sequence, K = 1024, M = 2^20 (default 4K,32K,128K,1M)\n"
    "  --gpu-budget BYTES  GPU bytes, e.g. 80GiB (same as --set memory.gpu_budget=BYTES); default: the config's,\n"
    "                      else the GPU's total memory, else 80 GiB when no GPU answers\n"
    "  --host-budget BYTES host RAM the host tier may take (same as --set memory.host_budget=BYTES): the longest\n"
    "                      context must then fit it too; default: the config's, 0 (no bound)\n"
    "  --batch N           sequences (same as --set runtime.batch=N)\n"
    "  --set KEY=VALUE     override a config key (dotted path, YAML value), repeatable\n"
    "  --out DIR           output directory (default: OUTPUT_DIR/mem-NAME-YYYYmmdd-HHMMSS)\n"
    "\n"
    "writes: mem.md, mem.csv (bytes per tier and kind, one row per model and context), mem.svg,\n"
    "config.resolved.yaml\n";

#define MAX_CONTEXTS 64

typedef struct {
    options o;
    int64_t contexts[MAX_CONTEXTS];
    int n_contexts;
    char sets[3][128]; /* --gpu-budget, --host-budget and --batch as overrides */
    bool budget_given;
} mem_options;

/* "4K,32K,128K,1M": tokens, with binary K/M/G suffixes. */
static bool parse_contexts(const char *text, mem_options *m) {
    m->n_contexts = 0;
    for (const char *p = text; *p;) {
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        int shift = *end == 'K' ? 10 : *end == 'M' ? 20 : *end == 'G' ? 30 : 0;
        if (shift) end++;
        bool ok = end != p && errno == 0 && (*end == ',' || *end == '\0') && v >= 1 &&
                  v <= (HAE_MEM_MAX_CONTEXT >> shift);
        if (!ok || m->n_contexts == MAX_CONTEXTS) {
            fprintf(stderr, "hae: --context %s: expected up to %d lengths of 1..2^40 tokens such as 4K,32K,128K,1M\n",
                    text, MAX_CONTEXTS);
            return false;
        }
        m->contexts[m->n_contexts++] = (int64_t)v << shift;
        p = *end ? end + 1 : end;
    }
    return m->n_contexts > 0 || (fprintf(stderr, "hae: --context: no lengths given\n"), false);
}

/* Returns 0 ok, 1 error, 2 help printed. */
static int parse_mem(int argc, char **argv, mem_options *m) {
    memset(m, 0, sizeof *m);
    options *o = &m->o;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage_mem, stdout);
            return 2;
        } else if (!strcmp(a, "--context") || !strcmp(a, "--gpu-budget") || !strcmp(a, "--host-budget") ||
                   !strcmp(a, "--batch") || !strcmp(a, "--set") || !strcmp(a, "--out")) {
            if (!val) return fprintf(stderr, "hae: %s needs a value (see hae mem --help)\n", a), 1;
            i++;
            if (!strcmp(a, "--context") && !parse_contexts(val, m)) return 1;
            if (!strcmp(a, "--out")) o->out_dir = val;
            if (!strcmp(a, "--context") || !strcmp(a, "--out")) continue;
            if (o->n_sets == MAX_SETS) return fprintf(stderr, "hae: more than %d --set options\n", MAX_SETS), 1;
            if (!strcmp(a, "--set")) {
                o->sets[o->n_sets++] = val;
                continue;
            }
            const bool budget = !strcmp(a, "--gpu-budget"), host = !strcmp(a, "--host-budget");
            char *s = m->sets[budget ? 0 : host ? 1 : 2];
            snprintf(s, sizeof m->sets[0], "%s=%.100s",
                     budget ? "memory.gpu_budget" : host ? "memory.host_budget" : "runtime.batch", val);
            o->sets[o->n_sets++] = s;
            m->budget_given |= budget;
        } else if (a[0] == '-') {
            fprintf(stderr, "hae: unknown option '%s' (see hae mem --help)\n", a);
            return 1;
        } else if (!o->config) {
            o->config = a;
        } else {
            fprintf(stderr, "hae: more than one config given ('%s' and '%s')\n", o->config, a);
            return 1;
        }
    }
    if (!m->n_contexts) parse_contexts("4K,32K,128K,1M", m);
    return 0;
}

/* The GPU budget the report measures against, and where it came from. */
static size_t mem_budget(const hae_config *cfg, bool given, char *note, size_t n) {
    if (cfg->memory.gpu_budget > 0) {
        snprintf(note, n, "%s", given ? "--gpu-budget" : "memory.gpu_budget");
        return (size_t)cfg->memory.gpu_budget;
    }
    hae_backend *be = NULL;
    size_t free_b = 0, total_b = 0;
    if (hae_cuda_available() && hae_backend_create(HAE_CUDA, cfg->runtime.device, &be) == HAE_OK &&
        hae_backend_mem_info(be, &free_b, &total_b) == HAE_OK && total_b > 0) {
        snprintf(note, n, "the total memory of %s", hae_backend_name(be));
        hae_backend_destroy(be);
        return total_b;
    }
    hae_backend_destroy(be);
    snprintf(note, n, "an 80 GiB GPU assumed, as none answers; set --gpu-budget");
    return (size_t)80 << 30;
}

static int cmd_mem(int argc, char **argv) {
    mem_options m;
    int r = parse_mem(argc, argv, &m);
    if (r) return r == 2 ? 0 : 1;
    hae_config *cfg = malloc(sizeof *cfg);
    if (!cfg) return fprintf(stderr, "hae: out of memory\n"), 1;
    if (load_config(&m.o, cfg) != HAE_OK) return free(cfg), fail(NULL);
    char dir[HAE_PATH_MAX], note[256], path[HAE_PATH_MAX + 32];
    if (m.o.out_dir) {
        snprintf(dir, sizeof dir, "%s", m.o.out_dir);
    } else {
        char stamp[32];
        time_t now = time(NULL);
        strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", localtime(&now));
        snprintf(dir, sizeof dir, "%.500s/mem-%.127s-%s", cfg->output_dir, cfg->name, stamp);
    }
    hae_mem_report_args a = {.cfg = cfg, .contexts = m.contexts, .n_contexts = m.n_contexts, .budget_note = note};
    a.gpu_budget = mem_budget(cfg, m.budget_given, note, sizeof note);
    char *md = NULL;
    size_t md_len = 0;
    FILE *mdf = open_memstream(&md, &md_len), *csv = NULL, *svg = NULL;
    hae_status st = mdf ? mkdirs(dir) : hae_error(HAE_ERR_OOM, "mem: out of host memory");
    if (st == HAE_OK) {
        snprintf(path, sizeof path, "%s/config.resolved.yaml", dir);
        st = hae_config_write_yaml(cfg, path);
    }
    if (st == HAE_OK && (!(csv = open_in(dir, "mem.csv")) || !(svg = open_in(dir, "mem.svg")))) st = HAE_ERR_IO;
    if (st == HAE_OK) st = hae_mem_report(&a, mdf, csv, svg);
    if (csv && fclose(csv) && st == HAE_OK) st = hae_error(HAE_ERR_IO, "cannot write %s/mem.csv", dir);
    if (svg && fclose(svg) && st == HAE_OK) st = hae_error(HAE_ERR_IO, "cannot write %s/mem.svg", dir);
    if (mdf && fclose(mdf) && st == HAE_OK) st = hae_error(HAE_ERR_OOM, "mem: out of host memory");
    if (st == HAE_OK) st = write_text(dir, "mem.md", md);
    if (st == HAE_OK) {
        fputs(md, stdout);
        fprintf(stderr, "hae mem: wrote %s/mem.md, mem.csv and mem.svg\n", dir);
    } else {
        fprintf(stderr, "hae: mem: %s\n", hae_last_error());
    }
    free(md);
    free(cfg);
    return st == HAE_OK ? 0 : 1;
}

/* ---------------------------------------------------------------- train */

static const char *usage_train =
    "usage: hae train [CONFIG] [options]\n"
    "\n"
    "Trains CONFIG's model on the CPU or the GPU (runtime.backend; train/README.md): train.steps AdamW steps,\n"
    "each on train.batch tasks of the eval section's grid (or of the mixture that train.lengths and train.pairs\n"
    "zip; a point per step, in turn) generated from seeds `hae eval` never uses, the loss taken at the answers\n"
    "only; a held-out eval on the tasks `hae eval` runs every train.eval_every steps.\n"
    "Takes every layer kind: full, swa, the linear family and dsa with a learned indexer (distilled from its\n"
    "layer's attention; train.indexer_warmup for a dense first stage), attention of the gqa or mla form.\n"
    "train.matmul: bf16 runs the products on bf16 operands; train.state_checkpoint keeps the recurrence's\n"
    "state every C tokens and recomputes the rest; train.linear_chunk runs the recurrence in its chunk form\n"
    "over chunks of C tokens; train.eval_lengths scores each held-out eval again at longer lengths through\n"
    "the engine. A checkpoint's model.safetensors is the model's own weights:\n"
    "`hae eval CONFIG --weights DIR/checkpoints/step-N/model.safetensors` scores it through the engine.\n"
    "\n"
    "options:\n"
    "  --set KEY=VALUE   override a config key (train.steps, train.lr, eval.pairs, ...), repeatable\n"
    "  --out DIR         run directory (default: OUTPUT_DIR/train-NAME-YYYYmmdd-HHMMSS)\n"
    "  --resume          continue the run in --out DIR from its latest complete checkpoint, bit for bit\n"
    "  --until STEP      stop after STEP steps, with a checkpoint (--resume continues the run)\n"
    "  --backend B       cpu, cuda or auto (same as --set runtime.backend=B; the presets say cpu)\n"
    "  --threads N       CPU threads (same as --set runtime.threads=N)\n"
    "\n"
    "Progress goes to stderr every train.log_every steps (HAE_NO_PROGRESS=1 silences it).\n"
    "\n"
    "writes: config.resolved.yaml, env.json, metrics.jsonl (a line per step), summary.json,\n"
    "        checkpoints/step-NNNNNN/ with model.safetensors, optim.safetensors and, last, `complete`\n";

static int cmd_train(int argc, char **argv) {
    const char *config = NULL, *out = NULL, *sets[MAX_SETS];
    char threads[64], backend[64];
    int n_sets = 0;
    bool resume = false;
    long long until = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage_train, stdout);
            return 0;
        } else if (!strcmp(a, "--set") || !strcmp(a, "--threads") || !strcmp(a, "--backend")) {
            if (!val) return fprintf(stderr, "hae: %s needs a value\n", a), 1;
            if (n_sets == MAX_SETS) return fprintf(stderr, "hae: more than %d --set options\n", MAX_SETS), 1;
            if (!strcmp(a, "--threads")) snprintf(threads, sizeof threads, "runtime.threads=%s", val);
            if (!strcmp(a, "--backend")) snprintf(backend, sizeof backend, "runtime.backend=%s", val);
            sets[n_sets++] = !strcmp(a, "--threads") ? threads : !strcmp(a, "--backend") ? backend : val;
            i++;
        } else if (!strcmp(a, "--out")) {
            if (!val) return fprintf(stderr, "hae: --out needs a directory\n"), 1;
            out = val, i++;
        } else if (!strcmp(a, "--until")) {
            char *end = NULL;
            until = val ? strtoll(val, &end, 10) : 0;
            if (!val || *end || until < 1) return fprintf(stderr, "hae: --until needs a step >= 1\n"), 1;
            i++;
        } else if (!strcmp(a, "--resume")) {
            resume = true;
        } else if (a[0] == '-') {
            return fprintf(stderr, "hae: unknown option '%s' (see hae train --help)\n", a), 1;
        } else if (!config) {
            config = a;
        } else {
            return fprintf(stderr, "hae: more than one config given ('%s' and '%s')\n", config, a), 1;
        }
    }
    if (resume && !out) return fprintf(stderr, "hae: --resume needs --out DIR, the run to continue\n"), 1;
    options o = {.config = config, .n_sets = n_sets};
    memcpy(o.sets, sets, sizeof(char *) * (size_t)n_sets);
    hae_config *cfg = malloc(sizeof *cfg);
    if (!cfg) return fprintf(stderr, "hae: out of memory\n"), 1;
    if (load_config(&o, cfg) != HAE_OK) return free(cfg), fail(NULL);
    if (hae_config_sweep_jobs(cfg) > 1)
        return fprintf(stderr, "hae: %s: the config has a sweep; hae train runs one job (pick one with --set)\n",
                       cfg->source), free(cfg), 1;
    char dir[2 * HAE_PATH_MAX];
    make_run_dir(cfg, out, "train", dir, sizeof dir);
    hae_backend *be = NULL;
    hae_train_result res;
    hae_status st = mkdirs(dir);
    if (st == HAE_OK) st = backend_of(cfg, &be);
    if (st == HAE_OK) {
        hae_train_args a = {.cfg = cfg, .be = be, .dir = dir, .resume = resume, .until = until,
                            .progress = getenv("HAE_NO_PROGRESS") ? NULL : stderr};
        st = hae_train_run(&a, &res);
    }
    if (st == HAE_OK) {
        char took[32];
        double s = res.seconds;
        if (s >= 60) snprintf(took, sizeof took, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
        else snprintf(took, sizeof took, "%.1fs", s);
        printf("%s: steps %lld..%lld of %lld in %s on %s, %.0f tok/s, %.3f model TFLOP/s\n", cfg->name,
               (long long)res.first_step + 1, (long long)res.last_step, (long long)cfg->train.steps, took,
               hae_backend_name(be), res.tokens_per_s, res.tflop_s);
        const int64_t ran = res.last_step - res.first_step, mean_of = ran < cfg->train.log_every ? ran : cfg->train.log_every;
        if (ran > 0)
            printf("  %-10s loss %.4f, accuracy %.4f (mean of the last %lld steps)\n", "train", res.loss, res.accuracy,
                   (long long)mean_of);
        if (res.eval_questions)
            printf("  %-10s accuracy %.4f over %lld questions (seeds 1..%lld of each grid point)\n", "held-out",
                   res.eval_accuracy, (long long)res.eval_questions, (long long)cfg->eval.seeds);
        printf("  %-10s %s\n  %-10s %s\n", "run dir", dir, "checkpoint", res.checkpoint);
    }
    hae_backend_destroy(be);
    free(cfg);
    return st == HAE_OK ? 0 : fail(NULL);
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        fputs(usage_main, argc < 2 ? stderr : stdout);
        return argc < 2 ? 1 : 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("hae %s (%s)\n", hae_build_git_sha(), hae_build_flags());
        return 0;
    }
    if (!strcmp(argv[1], "run")) return cmd_run(argc - 2, argv + 2);
    if (!strcmp(argv[1], "info")) return cmd_info(argc - 2, argv + 2);
    if (!strcmp(argv[1], "eval")) return cmd_eval(argc - 2, argv + 2);
    if (!strcmp(argv[1], "mem")) return cmd_mem(argc - 2, argv + 2);
    if (!strcmp(argv[1], "report")) return cmd_report(argc - 2, argv + 2);
    if (!strcmp(argv[1], "train")) return cmd_train(argc - 2, argv + 2);
    fprintf(stderr, "hae: unknown command '%s'\n\n%s", argv[1], usage_main);
    return 1;
}

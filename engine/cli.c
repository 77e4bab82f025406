/* The `hae` command line: run, info. Results go to stdout, progress to stderr. */
#include "internal.h"

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
    char backend_set[64];
} options;

static int fail(const char *what) {
    fprintf(stderr, "hae: %s%s%s\n", what ? what : "", what ? ": " : "", hae_last_error());
    return 1;
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
    printf("shapes      vocab %lld, d_model %lld, attention %s %lldq/%lldkv x %lld, rope %s, d_ff %lld\n",
           (long long)cfg.model.vocab_size, (long long)cfg.model.d_model,
           cfg.model.attention.form == HAE_ATTN_GQA ? "gqa" : "mla", (long long)cfg.model.attention.num_heads,
           (long long)cfg.model.attention.num_kv_heads, (long long)cfg.model.attention.head_dim,
           cfg.model.attention.rope == HAE_ROPE_NONE ? "none" : cfg.model.attention.rope == HAE_ROPE_FULL ? "full" : "partial",
           (long long)cfg.model.mlp.intermediate_size);
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
        printf("dsa         indexer %s%lld heads x %lld FP8, top-%lld, rope %lld dims, key pages of %lld tokens\n",
               cfg.model.dsa.derived ? "derived from q/k, " : "",
               (long long)(cfg.model.dsa.derived ? cfg.model.attention.num_heads : cfg.model.dsa.index_n_heads),
               (long long)cfg.model.dsa.index_head_dim, (long long)cfg.model.dsa.index_topk,
               (long long)cfg.model.dsa.index_rope_dim, (long long)cfg.model.dsa.page_size);
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
    hae_model_stats stats;
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
    double *lat = NULL;
    void *ids_dev = NULL;
    FILE *metrics = NULL;
    char *text = NULL;
    if (st == HAE_OK && o->weights) st = hae_model_load(m, o->weights);
    if (st == HAE_OK) {
        tokens = malloc(sizeof(int32_t) * (size_t)(B * T));
        gen = malloc(sizeof(int32_t) * (size_t)(B * (N + 1)));
        lat = malloc(sizeof(double) * (size_t)(N + 1));
        if (!tokens || !gen || !lat) st = hae_error(HAE_ERR_OOM, "run: out of host memory");
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
        hae_tensor ids = hae_tensor_1d(ids_dev, HAE_I32, hae_backend_device(be), B);
        for (int64_t s = 0; s < N && st == HAE_OK; s++) {
            double ts = now_s();
            st = hae_sample(be, &(hae_sample_args){.logits = logits, .out = ids, .temperature = cfg->runtime.temperature,
                                                   .seed = cfg->seed, .step = (uint64_t)s});
            if (st == HAE_OK) st = hae_backend_download(be, gen + s * B, ids_dev, sizeof(int32_t) * (size_t)B);
            if (st == HAE_OK) st = hae_model_forward(m, gen + s * B, 1, &logits);
            if (st == HAE_OK) st = hae_backend_sync(be);
            lat[s] = now_s() - ts;
            decode_s += lat[s];
            if (st == HAE_OK)
                fprintf(metrics, "{\"phase\": \"decode\", \"step\": %lld, \"position\": %lld, \"ms\": %.4f, \"token\": %d}\n",
                        (long long)s, (long long)(T + s), 1e3 * lat[s], gen[s * B]);
            progress_step(&pg, s + 1, N, 1e3 * lat[s]);
        }
    }
    if (metrics && fclose(metrics) && st == HAE_OK) st = hae_error(HAE_ERR_IO, "cannot write %s", path);
    if (st == HAE_OK && o->save_weights) st = hae_model_save(m, o->save_weights);

    if (st == HAE_OK) {
        hae_model_stats_get(m, &res->stats);
        res->prefill_tok_s = (double)(B * T) / prefill_s;
        res->decode_tok_s = N ? (double)(B * N) / decode_s : 0.0;
        qsort(lat, (size_t)N, sizeof(double), cmp_double);
        res->p50_ms = 1e3 * percentile(lat, N, 0.5);
        res->p99_ms = 1e3 * percentile(lat, N, 0.99);
        char summary[8192];
        size_t u = (size_t)snprintf(summary, sizeof summary,
                                    "{\n  \"name\": \"%s\",\n  \"job\": \"%s\",\n  \"backend\": \"%s\",\n  \"dtype\": \"%s\",\n"
                                    "  \"batch\": %lld,\n  \"prefill_tokens\": %lld,\n  \"prefill_seconds\": %.6f,\n"
                                    "  \"prefill_tok_s\": %.2f,\n  \"decode_tokens\": %lld,\n  \"decode_seconds\": %.6f,\n"
                                    "  \"decode_tok_s\": %.2f,\n  \"decode_p50_ms\": %.4f,\n  \"decode_p99_ms\": %.4f,\n"
                                    "  \"params\": %lld,\n  \"device\": \"%s\",\n  \"weight_bytes\": %zu,\n  \"kv_bytes\": %zu,\n"
                                    "  \"state_bytes\": %zu,\n  \"activation_bytes\": %zu,\n  \"generated\": [",
                                    cfg->name, res->label, res->backend, hae_dtype_name(cfg->runtime.dtype), (long long)B,
                                    (long long)T, prefill_s, res->prefill_tok_s, (long long)N, decode_s, res->decode_tok_s,
                                    res->p50_ms, res->p99_ms, (long long)res->stats.n_params,
                                    res->stats.device == HAE_CUDA ? "cuda" : "cpu", res->stats.weight_bytes,
                                    res->stats.kv_bytes, res->stats.state_bytes, res->stats.activation_bytes);
        for (int64_t s = 0; s < N && s < 64 && u < sizeof summary - 32; s++)
            u += (size_t)snprintf(summary + u, sizeof summary - u, "%s%d", s ? ", " : "", gen[s * B]);
        snprintf(summary + u, sizeof summary - u, "]\n}\n");
        st = write_text(dir, "summary.json", summary);
    }
    hae_backend_free(be, ids_dev);
    free(tokens);
    free(gen);
    free(lat);
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
    printf("  %-10s weights %s, kv cache %s, recurrent state %s, activations %s (all on %s)\n", "memory",
           fmt_bytes((double)r->stats.weight_bytes, b1, sizeof b1), fmt_bytes((double)r->stats.kv_bytes, b2, sizeof b2),
           fmt_bytes((double)r->stats.state_bytes, b3, sizeof b3),
           fmt_bytes((double)r->stats.activation_bytes, b4, sizeof b4), dev);
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
    fprintf(stderr, "hae: unknown command '%s'\n\n%s", argv[1], usage_main);
    return 1;
}

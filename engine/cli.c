/* The `hae` command line: run, info, eval. Results go to stdout, progress to stderr. */
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
    "  eval --probe    recall of each layer kind's real ops on mqar, multi-hop and needle tasks (no weights)\n"
    "  mem  [CONFIG]   GPU and host bytes at several contexts vs the full-attention twin; the longest that fits\n"
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

/* ---------------------------------------------------------------- eval --probe */

static const char *usage_eval =
    "usage: hae eval --probe [options]\n"
    "\n"
    "Mechanism probes (DESIGN.md section 3, eval/README.md): each task is written directly as keys and values\n"
    "into one layer kind's real ops, no trained weights. Every token gets a random unit key code and value\n"
    "code; a question's output is decoded to the nearest value code, and multi-hop feeds the decoded token\n"
    "back as the next query. Runs the grid kinds x pairs x hops x K x top-k x lengths, each point over\n"
    "--seeds seeds, and reports recall: questions whose every answer decoded exactly / questions asked.\n"
    "\n"
    "options (LIST: comma-separated values, one grid axis each):\n"
    "  --probe            run the mechanism probes (required: the only eval built so far)\n"
    "  --kinds LIST       layer kinds, any of full, dsa, kda, gdn, deltanet, gla, mamba2, retnet, linear\n"
    "                     (default: all nine; swa is not probed)\n"
    "  --task T           mqar | multihop | niah (default mqar)\n"
    "  --lengths LIST     tokens per task, 64 .. 2^31-1 (default 256,1024,4096); the table's context is the\n"
    "                     tokens before the questions\n"
    "  --pairs LIST       associations stored, >= 1 (default 32): mqar key/value pairs; multihop links, as\n"
    "                     pairs/hops chains of hops links each; niah needles (the unasked ones are decoys)\n"
    "  --hops LIST        multihop only: links per chain, 1 .. 1024 (default 1,2,4)\n"
    "  --K LIST           key dim = value dim, 1 .. 4096, the linear state is K x K; dsa: <= 128 (default 64)\n"
    "  --topk LIST        dsa: tokens each question attends to, >= 1 (default 64)\n"
    "  --index-dtype D    dsa: fp8 (the FP8 e4m3 lightning indexer) | bf16 | f32 ranking (default fp8)\n"
    "  --key-cos C        cosine between any two key codes, in [0, 1) (default 0: independent random keys)\n"
    "  --log-decay X      decaying linear kinds: log decay per token, <= 0 (default 0: no forgetting)\n"
    "  --orthogonal       the keys the context writes orthonormal (their count, + 1 with --key-cos, <= K)\n"
    "  --vocab N          token ids, 16 .. 2^31-1 (default 1024); must leave room for the pairs' keys and values\n"
    "  --noise N          distinct noise tokens filling the context, each writing its own key, >= 0 (default 64;\n"
    "                     0: PAD filler, which writes nothing)\n"
    "  --seeds N          repeats with task and code seeds 1..N, recall pooled over them, 1 .. 10000 (default 2)\n"
    "  --backend B        cpu | cuda | auto (default cpu); a point the backend cannot run is an error row\n"
    "  --out DIR          run directory (default runs/probe-YYYYmmdd-HHMMSS)\n"
    "\n"
    "Fixed: V = K, random unit value codes, softmax scale 32 on unit keys (full, dsa), beta = 1 (delta kinds),\n"
    "L2-normalised q/k and chunk 64 (linear kinds), every stored key asked once.\n"
    "\n"
    "prints: the markdown table on stdout, a line per grid point on stderr (HAE_NO_PROGRESS=1 silences it)\n"
    "writes: results.md (the command and the table), metrics.jsonl (a JSON line per point), results.csv (a row\n"
    "        per point: every knob, context, stored pairs, queries, correct, recall, error), env.json\n"
    "exit status: 0 when every point ran; 1 on a bad value (then nothing is written) or a failed point\n";

#define MAX_LIST 64
#define MAX_POINTS 100000

typedef struct {
    int64_t v[MAX_LIST];
    int n;
} int_list;

typedef struct {
    hae_layer_kind kinds[MAX_LIST];
    int n_kinds;
    hae_task_kind task;
    int_list lengths, pairs, hops, K, topk;
    hae_dtype index_dtype;
    double key_cos;
    float log_decay;
    bool orthogonal, hops_set;
    int64_t vocab, noise, seeds;
    hae_backend_choice backend;
    const char *out_dir;
} eval_options;

/* One grid point; its recall is pooled over the seeds. */
typedef struct {
    hae_layer_kind kind;
    int64_t length, pairs, hops, K, topk; /* hops 1 but for multihop, topk 0 but for dsa */
} probe_point;

static const char *probe_kinds = "full, dsa, kda, gdn, deltanet, gla, mamba2, retnet, linear";

/* A whole number in [lo, hi], or one error line naming the flag and the text. */
static bool parse_int(const char *flag, const char *text, int64_t lo, int64_t hi, int64_t *out) {
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (end == text || *end || errno) return fprintf(stderr, "hae: %s '%s': not a whole number\n", flag, text), false;
    if (v < lo || v > hi)
        return fprintf(stderr, "hae: %s %lld: must be in [%lld, %lld]\n", flag, v, (long long)lo, (long long)hi), false;
    *out = v;
    return true;
}

static bool parse_real(const char *flag, const char *text, double *out) {
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (end == text || *end || errno || !isfinite(v))
        return fprintf(stderr, "hae: %s '%s': not a finite number\n", flag, text), false;
    *out = v;
    return true;
}

/* Splits a comma-separated list into items of at most 63 characters, none empty. */
static int split_list(const char *flag, const char *text, char items[MAX_LIST][64]) {
    if (!text[0]) return fprintf(stderr, "hae: %s '': an empty list\n", flag), -1;
    int n = 0;
    for (const char *p = text;; n++) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (!len) return fprintf(stderr, "hae: %s '%s': an empty item\n", flag, text), -1;
        if (n == MAX_LIST) return fprintf(stderr, "hae: %s '%s': more than %d items\n", flag, text, MAX_LIST), -1;
        if (len >= 64) return fprintf(stderr, "hae: %s '%.*s': not a value\n", flag, (int)len, p), -1;
        memcpy(items[n], p, len);
        items[n][len] = '\0';
        if (!e) return n + 1;
        p = e + 1;
    }
}

static bool parse_list(const char *flag, const char *text, int64_t lo, int64_t hi, int_list *l) {
    char items[MAX_LIST][64];
    int n = split_list(flag, text, items);
    if (n < 0) return false;
    for (int i = 0; i < n; i++)
        if (!parse_int(flag, items[i], lo, hi, &l->v[i])) return false;
    l->n = n;
    return true;
}

static bool parse_kinds(const char *text, eval_options *o) {
    char items[MAX_LIST][64];
    int n = split_list("--kinds", text, items);
    if (n < 0) return false;
    for (int i = 0; i < n; i++) {
        int k = 0;
        while (k < HAE_LAYER_KIND_COUNT && strcmp(items[i], hae_layer_kind_name((hae_layer_kind)k))) k++;
        if (k == HAE_LAYER_KIND_COUNT)
            return fprintf(stderr, "hae: --kinds %s: unknown layer kind (probed: %s)\n", items[i], probe_kinds), false;
        o->kinds[i] = (hae_layer_kind)k;
    }
    o->n_kinds = n;
    return true;
}

/* The index of text among the n names, or -1 after an error line. */
static int parse_choice(const char *flag, const char *text, const char *const *names, int n) {
    for (int i = 0; i < n; i++)
        if (!strcmp(text, names[i])) return i;
    fprintf(stderr, "hae: %s '%s': expected", flag, text);
    for (int i = 0; i < n; i++) fprintf(stderr, "%s %s", i ? (i == n - 1 ? " or" : ",") : "", names[i]);
    fputc('\n', stderr);
    return -1;
}

static bool eval_value(const char *a, const char *val, eval_options *o) {
    static const char *const tasks[] = {"mqar", "multihop", "niah"}, *const dtypes[] = {"fp8", "bf16", "f32"},
                             *const backends[] = {"auto", "cpu", "cuda"};
    static const hae_dtype dtype_of[] = {HAE_FP8_E4M3, HAE_BF16, HAE_F32};
    int c;
    double x;
    if (!strcmp(a, "--kinds")) return parse_kinds(val, o);
    if (!strcmp(a, "--lengths")) return parse_list(a, val, 64, INT32_MAX, &o->lengths);
    if (!strcmp(a, "--pairs")) return parse_list(a, val, 1, INT32_MAX, &o->pairs);
    if (!strcmp(a, "--hops")) return o->hops_set = true, parse_list(a, val, 1, 1024, &o->hops);
    if (!strcmp(a, "--K")) return parse_list(a, val, 1, 4096, &o->K);
    if (!strcmp(a, "--topk")) return parse_list(a, val, 1, INT32_MAX, &o->topk);
    if (!strcmp(a, "--vocab")) return parse_int(a, val, 16, INT32_MAX, &o->vocab);
    if (!strcmp(a, "--noise")) return parse_int(a, val, 0, INT32_MAX, &o->noise);
    if (!strcmp(a, "--seeds")) return parse_int(a, val, 1, 10000, &o->seeds);
    if (!strcmp(a, "--out")) return o->out_dir = val, true;
    if (!strcmp(a, "--task")) return (c = parse_choice(a, val, tasks, 3)) >= 0 && (o->task = (hae_task_kind)c, true);
    if (!strcmp(a, "--index-dtype"))
        return (c = parse_choice(a, val, dtypes, 3)) >= 0 && (o->index_dtype = dtype_of[c], true);
    if (!strcmp(a, "--backend"))
        return (c = parse_choice(a, val, backends, 3)) >= 0 && (o->backend = (hae_backend_choice)c, true);
    if (!strcmp(a, "--key-cos")) {
        if (!parse_real(a, val, &x)) return false;
        if (!(x >= 0 && x < 1)) return fprintf(stderr, "hae: --key-cos %g: must be in [0, 1)\n", x), false;
        return o->key_cos = x, true;
    }
    HAE_ASSERT(!strcmp(a, "--log-decay")); /* the last flag eval_flag_takes_value names */
    if (!parse_real(a, val, &x)) return false;
    if (x > 0 || !isfinite((float)x)) return fprintf(stderr, "hae: --log-decay %g: must be <= 0 (0: no forgetting)\n", x), false;
    return o->log_decay = (float)x, true;
}

static bool eval_flag_takes_value(const char *a) {
    static const char *const flags[] = {"--kinds", "--lengths", "--pairs", "--hops",  "--K",     "--topk",
                                        "--vocab", "--noise",   "--seeds", "--out",   "--task",  "--index-dtype",
                                        "--backend", "--key-cos", "--log-decay"};
    for (size_t i = 0; i < sizeof flags / sizeof *flags; i++)
        if (!strcmp(a, flags[i])) return true;
    return false;
}

/* Parses argv after `eval`; returns 0 ok, 1 error, 2 help printed. */
static int parse_eval(int argc, char **argv, eval_options *o) {
    *o = (eval_options){.n_kinds = 9, .kinds = {HAE_LAYER_FULL, HAE_LAYER_DSA, HAE_LAYER_KDA, HAE_LAYER_GDN,
                                                HAE_LAYER_DELTANET, HAE_LAYER_GLA, HAE_LAYER_MAMBA2, HAE_LAYER_RETNET,
                                                HAE_LAYER_LINEAR},
                        .task = HAE_TASK_MQAR, .lengths = {{256, 1024, 4096}, 3}, .pairs = {{32}, 1},
                        .hops = {{1, 2, 4}, 3}, .K = {{64}, 1}, .topk = {{64}, 1}, .index_dtype = HAE_FP8_E4M3,
                        .vocab = 1024, .noise = 64, .seeds = 2, .backend = HAE_BACKEND_CPU};
    bool probe = false;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage_eval, stdout);
            return 2;
        } else if (!strcmp(a, "--probe")) {
            probe = true;
        } else if (!strcmp(a, "--orthogonal")) {
            o->orthogonal = true;
        } else if (eval_flag_takes_value(a)) {
            /* "--K --out x" is a forgotten value, not the value "--out" (a negative number has one dash) */
            if (i + 1 == argc || !strncmp(argv[i + 1], "--", 2))
                return fprintf(stderr, "hae: %s needs a value (see hae eval --help)\n", a), 1;
            if (!eval_value(a, argv[++i], o)) return 1;
        } else {
            fprintf(stderr, "hae: unknown eval argument '%s' (see hae eval --help)\n", a);
            return 1;
        }
    }
    if (!probe) return fprintf(stderr, "hae: eval needs --probe, the only eval built so far (see hae eval --help)\n"), 1;
    if (o->hops_set && o->task != HAE_TASK_MULTIHOP)
        return fprintf(stderr, "hae: --hops applies to --task multihop, not %s\n", hae_task_kind_name(o->task)), 1;
    if (o->task != HAE_TASK_MULTIHOP) o->hops = (int_list){{1}, 1};
    return 0;
}

/* The point's task with this seed: `pairs` associations, as pairs / hops chains for multihop. */
static hae_status make_task(const eval_options *o, const probe_point *pt, uint64_t seed, hae_task **t) {
    if (o->task == HAE_TASK_MULTIHOP)
        return hae_task_multihop(&(hae_multihop_args){.length = pt->length, .vocab = o->vocab, .hops = (int)pt->hops,
                                                      .chains = pt->pairs / pt->hops, .noise_vocab = o->noise,
                                                      .seed = seed},
                                 t);
    if (o->task == HAE_TASK_NIAH)
        return hae_task_niah(&(hae_niah_args){.length = pt->length, .vocab = o->vocab, .needles = pt->pairs,
                                              .noise_vocab = o->noise, .seed = seed},
                             t);
    return hae_task_mqar(&(hae_mqar_args){.length = pt->length, .vocab = o->vocab, .pairs = pt->pairs,
                                          .noise_vocab = o->noise, .seed = seed},
                         t);
}

static hae_probe_args point_args(const eval_options *o, const probe_point *pt, uint64_t seed) {
    hae_probe_args p = hae_probe_defaults(pt->kind);
    p.K = p.V = pt->K;
    if (pt->topk) p.topk = pt->topk;
    p.index_dtype = o->index_dtype, p.key_cos = o->key_cos, p.log_decay = o->log_decay, p.orthogonal = o->orthogonal;
    p.seed = seed;
    return p;
}

/* Every task of the grid is generated once (seed 1; the seed moves positions, not feasibility), so a
 * length too short for its pairs, or a vocab too small, is refused before anything is written. */
static bool check_tasks(const eval_options *o) {
    for (int l = 0; l < o->lengths.n; l++)
        for (int p = 0; p < o->pairs.n; p++)
            for (int h = 0; h < o->hops.n; h++) {
                probe_point pt = {.length = o->lengths.v[l], .pairs = o->pairs.v[p], .hops = o->hops.v[h]};
                char hops[48] = "";
                if (o->task == HAE_TASK_MULTIHOP) snprintf(hops, sizeof hops, " --hops %lld", (long long)pt.hops);
                if (pt.pairs < pt.hops) {
                    fprintf(stderr, "hae: --pairs %lld%s: multihop stores pairs / hops chains, so pairs must be >= hops\n",
                            (long long)pt.pairs, hops);
                    return false;
                }
                hae_task *t = NULL;
                if (make_task(o, &pt, 1, &t) != HAE_OK) {
                    fprintf(stderr, "hae: --task %s --lengths %lld --pairs %lld%s: %s\n", hae_task_kind_name(o->task),
                            (long long)pt.length, (long long)pt.pairs, hops, hae_last_error());
                    return false;
                }
                hae_task_free(t);
            }
    return true;
}

/* The probe's own argument checks (a kind it does not probe, K beyond dsa's indexer) answered on a
 * one-pair task on the CPU, before anything is written; what only the chosen backend or a real task
 * size can refuse becomes that point's error row. */
static bool check_kinds(const eval_options *o) {
    hae_backend *be = NULL;
    hae_task *t = NULL;
    bool ok = hae_backend_create(HAE_CPU, 1, &be) == HAE_OK &&
              hae_task_mqar(&(hae_mqar_args){.length = 64, .vocab = 64, .pairs = 1, .seed = 1}, &t) == HAE_OK;
    if (!ok) fprintf(stderr, "hae: eval: %s\n", hae_last_error());
    for (int k = 0; ok && k < o->n_kinds; k++)
        for (int d = 0; ok && d < o->K.n; d++) {
            probe_point pt = {.kind = o->kinds[k], .K = o->K.v[d], .topk = o->topk.v[0]};
            hae_probe_args p = point_args(o, &pt, 1);
            hae_probe_result r;
            ok = hae_probe_run(be, &p, t, &r) == HAE_OK;
            if (!ok)
                fprintf(stderr, "hae: --kinds %s --K %lld: %s\n", hae_layer_kind_name(pt.kind), (long long)pt.K,
                        hae_last_error());
        }
    hae_task_free(t);
    hae_backend_destroy(be);
    return ok;
}

/* The grid, kind outermost and length innermost, so each kind's rows read as recall vs length. */
static probe_point *make_grid(const eval_options *o, int64_t *n) {
    int64_t count = 0;
    for (int k = 0; k < o->n_kinds; k++)
        count += (int64_t)o->pairs.n * o->hops.n * o->K.n * (o->kinds[k] == HAE_LAYER_DSA ? o->topk.n : 1) * o->lengths.n;
    if (count > MAX_POINTS) return fprintf(stderr, "hae: a grid of %lld points (at most %d)\n", (long long)count, MAX_POINTS), NULL;
    probe_point *g = malloc(sizeof *g * (size_t)count);
    if (!g) return fprintf(stderr, "hae: out of memory\n"), NULL;
    *n = 0;
    for (int k = 0; k < o->n_kinds; k++) {
        bool dsa = o->kinds[k] == HAE_LAYER_DSA;
        for (int p = 0; p < o->pairs.n; p++)
            for (int h = 0; h < o->hops.n; h++)
                for (int d = 0; d < o->K.n; d++)
                    for (int x = 0; x < (dsa ? o->topk.n : 1); x++)
                        for (int l = 0; l < o->lengths.n; l++)
                            g[(*n)++] = (probe_point){o->kinds[k], o->lengths.v[l], o->pairs.v[p], o->hops.v[h],
                                                      o->K.v[d], dsa ? o->topk.v[x] : 0};
    }
    return g;
}

/* The point over seeds 1..N: task and codes from seed s; queries and correct summed. */
static hae_status run_point(hae_backend *be, const eval_options *o, const probe_point *pt, hae_probe_result *out) {
    for (int64_t s = 1; s <= o->seeds; s++) {
        hae_task *t = NULL;
        hae_probe_args p = point_args(o, pt, (uint64_t)s);
        hae_probe_result r;
        hae_status st = make_task(o, pt, (uint64_t)s, &t);
        if (st == HAE_OK) st = hae_probe_run(be, &p, t, &r);
        hae_task_free(t);
        HAE_TRY(st);
        if (s == 1) *out = r, out->queries = out->correct = 0;
        out->queries += r.queries, out->correct += r.correct;
    }
    out->recall = (double)out->correct / (double)out->queries;
    return HAE_OK;
}

static void point_label(const eval_options *o, const probe_point *pt, char *buf, size_t n) {
    int u = snprintf(buf, n, "%s %s length %lld pairs %lld", hae_layer_kind_name(pt->kind), hae_task_kind_name(o->task),
                     (long long)pt->length, (long long)pt->pairs);
    if (o->task == HAE_TASK_MULTIHOP) u += snprintf(buf + u, n - (size_t)u, " hops %lld", (long long)pt->hops);
    u += snprintf(buf + u, n - (size_t)u, " K %lld", (long long)pt->K);
    if (pt->topk) snprintf(buf + u, n - (size_t)u, " top-k %lld", (long long)pt->topk);
}

static void csv_header(FILE *f) {
    fputs("kind,task,length,pairs,hops,K,V,topk,index_dtype,key_cos,log_decay,orthogonal,vocab,noise,seeds,backend,"
          "context,stored_pairs,queries,correct,recall,error\n", f);
}

/* One row: the knobs (empty where they do not apply to the kind), then the result or the error. */
static void csv_row(FILE *f, const eval_options *o, const probe_point *pt, hae_device dev, const hae_probe_result *r,
                    const char *error) {
    bool dsa = pt->kind == HAE_LAYER_DSA, lin = hae_linear_kind_of(pt->kind, &(hae_linear_kind){0});
    fprintf(f, "%s,%s,%lld,%lld,%lld,%lld,%lld,", hae_layer_kind_name(pt->kind), hae_task_kind_name(o->task),
            (long long)pt->length, (long long)pt->pairs, (long long)pt->hops, (long long)pt->K, (long long)pt->K);
    if (dsa) fprintf(f, "%lld,%s", (long long)pt->topk, hae_dtype_name(o->index_dtype));
    else fputc(',', f);
    fprintf(f, ",%.17g,", o->key_cos);
    if (lin) fprintf(f, "%.7g", (double)o->log_decay);
    fprintf(f, ",%d,%lld,%lld,%lld,%s,", o->orthogonal, (long long)o->vocab, (long long)o->noise, (long long)o->seeds,
            dev == HAE_CUDA ? "cuda" : "cpu");
    if (r) {
        fprintf(f, "%lld,%lld,%lld,%lld,%.6f,\n", (long long)r->context, (long long)r->pairs, (long long)r->queries,
                (long long)r->correct, r->recall);
        return;
    }
    fputs(",,,,,\"", f);
    for (const char *c = error; *c; c++) {
        if (*c == '"') fputc('"', f); /* CSV doubles a quote inside a quoted field */
        fputc(*c, f);
    }
    fputs("\"\n", f);
}

/* A line per point: redrawn in place on a terminal, appended otherwise. */
static void probe_progress(const progress *pg, int64_t done, int64_t total, const char *label, const char *what) {
    if (pg->quiet) return;
    if (pg->tty) {
        int width = 20, fill = (int)(width * done / total);
        fprintf(stderr, "\r\033[K  probe [%.*s%*s] %lld/%lld  %s: %s", fill, "####################", width - fill, "",
                (long long)done, (long long)total, label, what);
        if (done == total) fputc('\n', stderr);
    } else {
        fprintf(stderr, "  probe %lld/%lld  %s: %s\n", (long long)done, (long long)total, label, what);
    }
}

static FILE *open_in(const char *dir, const char *file) {
    char path[2 * HAE_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    FILE *f = fopen(path, "w");
    if (!f) hae_error(HAE_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    return f;
}

/* results.md: the command that made it, the table, then the points that failed. */
static hae_status write_results_md(const char *dir, int argc, char **argv, const hae_probe_result *res, int64_t n_ok,
                                   const char *failures) {
    FILE *f = open_in(dir, "results.md");
    if (!f) return HAE_ERR_IO;
    fputs("`hae eval", f);
    for (int i = 0; i < argc; i++) fprintf(f, " %s", argv[i]);
    fputs("`\n\n", f);
    hae_status st = hae_probe_report(res, n_ok, f, NULL);
    if (failures[0]) fprintf(f, "\nfailed:\n%s", failures);
    if (fclose(f) && st == HAE_OK) st = hae_error(HAE_ERR_IO, "cannot write %s/results.md", dir);
    return st;
}

/* Runs the grid on be into the open files; failures go to fails as "- label: error" lines. */
static int64_t run_grid(hae_backend *be, const eval_options *o, const probe_point *grid, int64_t n,
                        hae_probe_result *res, FILE *jsonl, FILE *csv, FILE *fails, int64_t *n_ok) {
    progress pg = {isatty(2) != 0, getenv("HAE_NO_PROGRESS") != NULL, 0};
    hae_device dev = hae_backend_device(be);
    int64_t failed = 0;
    *n_ok = 0;
    for (int64_t i = 0; i < n; i++) {
        char label[160], what[64] = "failed";
        point_label(o, &grid[i], label, sizeof label);
        double t0 = now_s();
        if (run_point(be, o, &grid[i], &res[*n_ok]) == HAE_OK) {
            csv_row(csv, o, &grid[i], dev, &res[*n_ok], NULL);
            hae_probe_report(&res[*n_ok], 1, NULL, jsonl);
            snprintf(what, sizeof what, "recall %.4f (%.2f s)", res[*n_ok].recall, now_s() - t0);
            ++*n_ok;
        } else {
            csv_row(csv, o, &grid[i], dev, NULL, hae_last_error());
            fprintf(fails, "- %s: %s\n", label, hae_last_error());
            failed++;
        }
        /* a line per point in both files, so a long GPU sweep cut short keeps what ran */
        fflush(csv), fflush(jsonl);
        probe_progress(&pg, i + 1, n, label, what);
    }
    return failed;
}

static int cmd_eval(int argc, char **argv) {
    eval_options o;
    int r = parse_eval(argc, argv, &o);
    if (r) return r == 2 ? 0 : 1;
    int64_t n = 0;
    probe_point *grid = NULL;
    if (!check_tasks(&o) || !check_kinds(&o) || !(grid = make_grid(&o, &n))) return 1;
    bool cuda = o.backend == HAE_BACKEND_CUDA || (o.backend == HAE_BACKEND_AUTO && hae_cuda_available());
    hae_backend *be = NULL;
    if (hae_backend_create(cuda ? HAE_CUDA : HAE_CPU, 0, &be) != HAE_OK)
        return free(grid), fprintf(stderr, "hae: --backend %s: %s\n", cuda ? "cuda" : "cpu", hae_last_error()), 1;

    char dir[HAE_PATH_MAX];
    if (o.out_dir) {
        snprintf(dir, sizeof dir, "%s", o.out_dir);
    } else {
        char stamp[32];
        time_t now = time(NULL);
        strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", localtime(&now));
        snprintf(dir, sizeof dir, "runs/probe-%s", stamp);
    }
    hae_probe_result *res = malloc(sizeof *res * (size_t)n);
    char *env = NULL, *failures = NULL;
    size_t failures_len = 0;
    FILE *jsonl = NULL, *csv = NULL, *fails = open_memstream(&failures, &failures_len);
    hae_status st = res && fails ? HAE_OK : hae_error(HAE_ERR_OOM, "eval: out of host memory");
    if (st == HAE_OK) st = mkdirs(dir);
    if (st == HAE_OK && !(env = hae_env_json(be))) st = hae_error(HAE_ERR_OOM, "eval: out of host memory");
    if (st == HAE_OK) st = write_text(dir, "env.json", env);
    if (st == HAE_OK && (!(jsonl = open_in(dir, "metrics.jsonl")) || !(csv = open_in(dir, "results.csv")))) st = HAE_ERR_IO;
    int64_t failed = 0, n_ok = 0;
    if (st == HAE_OK) {
        csv_header(csv);
        failed = run_grid(be, &o, grid, n, res, jsonl, csv, fails, &n_ok);
    }
    if (jsonl && fclose(jsonl) && st == HAE_OK) st = hae_error(HAE_ERR_IO, "cannot write %s/metrics.jsonl", dir);
    if (csv && fclose(csv) && st == HAE_OK) st = hae_error(HAE_ERR_IO, "cannot write %s/results.csv", dir);
    if (fails) fclose(fails);
    if (st == HAE_OK) st = write_results_md(dir, argc, argv, res, n_ok, failures);
    if (st == HAE_OK) st = hae_probe_report(res, n_ok, stdout, NULL);
    if (st != HAE_OK) fprintf(stderr, "hae: eval: %s\n", hae_last_error());
    else fprintf(stderr, "%shae eval: %lld of %lld points ran on %s; results in %s\n", failures, (long long)n_ok,
                 (long long)n, hae_backend_name(be), dir);
    free(env), free(failures), free(res), free(grid);
    hae_backend_destroy(be);
    return st == HAE_OK && !failed ? 0 : 1;
}

/* ---------------------------------------------------------------- mem */

static const char *usage_mem =
    "usage: hae mem [CONFIG] [options]\n"
    "\n"
    "The analytic memory plan, without building the model: at each context length, the bytes the config\n"
    "keeps on the GPU and on the host per kind (weights, activations, dsa K/V, indexer keys, full K/V,\n"
    "linear states), placed as its `memory:` section says, next to its full-attention twin (every layer\n"
    "`full`, everything on the GPU); the GPU saving; and the longest context per sequence each fits in the\n"
    "GPU budget. Prints a markdown table; writes it as CSV and an SVG chart.\n"
    "\n"
    "options:\n"
    "  --context LIST      context lengths per sequence, K = 1024, M = 2^20 (default 4K,32K,128K,1M)\n"
    "  --gpu-budget BYTES  GPU bytes, e.g. 80GiB (same as --set memory.gpu_budget=BYTES); default: the config's,\n"
    "                      else the GPU's total memory, else 80 GiB when no GPU answers\n"
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
    char sets[2][128]; /* --gpu-budget and --batch as overrides */
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
        } else if (!strcmp(a, "--context") || !strcmp(a, "--gpu-budget") || !strcmp(a, "--batch") ||
                   !strcmp(a, "--set") || !strcmp(a, "--out")) {
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
            bool budget = !strcmp(a, "--gpu-budget");
            char *s = m->sets[budget ? 0 : 1];
            snprintf(s, sizeof m->sets[0], "%s=%.100s", budget ? "memory.gpu_budget" : "runtime.batch", val);
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
    fprintf(stderr, "hae: unknown command '%s'\n\n%s", argv[1], usage_main);
    return 1;
}

/* Config loading: the default, every preset and example, overrides, layer layouts, sweeps, the
 * resolved YAML round trip, and a table of bad inputs whose messages must point at the right line. */
#include "testutil.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static hae_config *cfg_new(void) {
    hae_config *c = calloc(1, sizeof *c);
    cr_assert(c);
    return c;
}

/* Parses `yaml` as t.yaml with overrides into a zeroed config, asserting success. */
static hae_config *parse_ok(const char *yaml, const char *const *ov, int n_ov) {
    hae_config *c = cfg_new();
    hae_status st = hae_config_parse(yaml, strlen(yaml), "t.yaml", ov, n_ov, c);
    cr_assert_eq(st, HAE_OK, "parse failed: %s\n%s", hae_last_error(), yaml);
    return c;
}

static hae_config *default_cfg(void) {
    const char *y = hae_config_default_yaml();
    hae_config *c = cfg_new();
    cr_assert_eq(hae_config_parse(y, strlen(y), "<default>", NULL, 0, c), HAE_OK, "%s", hae_last_error());
    return c;
}

static void expect_layers(const hae_config *c, const char *want) {
    char got[HAE_MAX_LAYERS * 10] = "";
    for (int64_t i = 0; i < c->model.n_layers; i++)
        snprintf(got + strlen(got), sizeof got - strlen(got), "%s%s", i ? "," : "",
                 hae_layer_kind_name(c->model.layers[i]));
    cr_expect_str_eq(got, want, "layers");
    for (int i = (int)c->model.n_layers; i < HAE_MAX_LAYERS; i++)
        cr_expect_eq(c->model.layers[i], 0, "layer %d beyond n_layers is not zero", i);
}

/* Emits c, parses the text back under the same source name and requires the same bytes. */
static void expect_round_trip(const hae_config *c) {
    char *y = NULL;
    cr_assert_eq(hae_config_to_yaml(c, &y), HAE_OK, "%s", hae_last_error());
    hae_config *back = cfg_new();
    hae_status st = hae_config_parse(y, strlen(y), c->source, NULL, 0, back);
    cr_assert_eq(st, HAE_OK, "resolved YAML does not parse: %s\n%s", hae_last_error(), y);
    cr_expect(memcmp(c, back, sizeof *c) == 0, "round trip differs:\n%s", y);
    free(back);
    free(y);
}

Test(config, layer_kinds) {
    cr_expect_str_eq(hae_layer_kind_name(HAE_LAYER_KDA), "kda");
    cr_expect_str_eq(hae_layer_kind_name(HAE_LAYER_RETNET), "retnet");
    cr_expect_str_eq(hae_layer_kind_name(HAE_LAYER_KIND_COUNT), "unknown");
    cr_expect(hae_layer_kind_built(HAE_LAYER_FULL) && hae_layer_kind_built(HAE_LAYER_SWA));
    cr_expect(hae_layer_kind_built(HAE_LAYER_DSA));
    cr_expect(!hae_layer_kind_built(HAE_LAYER_KIND_COUNT));
    for (int k = HAE_LAYER_KDA; k <= HAE_LAYER_RETNET; k++) {
        hae_linear_kind lk;
        cr_expect(hae_layer_kind_built((hae_layer_kind)k), "%s", hae_layer_kind_name((hae_layer_kind)k));
        cr_expect(hae_linear_kind_of((hae_layer_kind)k, &lk), "%s is linear", hae_layer_kind_name((hae_layer_kind)k));
    }
    hae_linear_kind lk = {HAE_DECAY_FIXED, true, HAE_QK_ELU1};
    cr_expect(!hae_linear_kind_of(HAE_LAYER_SWA, &lk) && lk.decay == HAE_DECAY_FIXED, "swa is not linear");
    cr_expect(hae_linear_kind_of(HAE_LAYER_KDA, &lk) && lk.decay == HAE_DECAY_CHANNEL && lk.delta);
    cr_expect(hae_linear_kind_of(HAE_LAYER_GDN, &lk) && lk.decay == HAE_DECAY_HEAD && lk.delta);
    cr_expect(hae_linear_kind_of(HAE_LAYER_DELTANET, &lk) && lk.decay == HAE_DECAY_NONE && lk.delta);
    cr_expect(hae_linear_kind_of(HAE_LAYER_GLA, &lk) && lk.decay == HAE_DECAY_CHANNEL && !lk.delta);
    cr_expect(hae_linear_kind_of(HAE_LAYER_MAMBA2, &lk) && lk.decay == HAE_DECAY_HEAD && !lk.delta);
    cr_expect(hae_linear_kind_of(HAE_LAYER_RETNET, &lk) && lk.decay == HAE_DECAY_FIXED && !lk.delta);
    cr_expect(hae_linear_kind_of(HAE_LAYER_LINEAR, &lk) && lk.decay == HAE_DECAY_NONE && !lk.delta &&
              lk.qk_map == HAE_QK_ELU1);
}

Test(config, builtin_default) {
    hae_config *c = default_cfg();
    cr_expect_str_eq(c->name, "default");
    cr_expect_eq(c->seed, 1234);
    cr_expect_str_eq(c->output_dir, "runs");
    cr_expect_eq(c->model.vocab_size, 512);
    cr_expect_eq(c->model.d_model, 256);
    cr_expect_eq(c->model.n_layers, 4);
    expect_layers(c, "kda,kda,kda,dsa");
    cr_expect_eq(c->model.norm_eps, 1.0e-6f);
    cr_expect(!c->model.tie_word_embeddings);
    cr_expect_eq(c->model.initializer_range, 0.02f);
    cr_expect_eq(c->model.mlp.intermediate_size, 704);
    cr_expect_eq(c->model.attention.form, HAE_ATTN_GQA);
    cr_expect_eq(c->model.attention.num_heads, 4);
    cr_expect_eq(c->model.attention.num_kv_heads, 2);
    cr_expect_eq(c->model.attention.head_dim, 64);
    cr_expect_eq(c->model.attention.rope, HAE_ROPE_FULL);
    cr_expect_eq(c->model.attention.rope_theta, 10000.0f);
    cr_expect_eq(c->model.attention.partial_rotary_factor, 0.5f);
    cr_expect_eq(c->model.attention.softmax_scale, 0.0f);
    cr_expect_eq(c->model.swa.window_size, 256);
    cr_expect_eq(c->model.linear_attn.num_heads, 4);
    cr_expect_eq(c->model.linear_attn.num_v_heads, 0);
    cr_expect_eq(c->model.linear_attn.head_dim, 64);
    cr_expect_eq(c->model.linear_attn.expand_v, 1.0f);
    cr_expect_eq(c->model.linear_attn.conv_size, 4);
    cr_expect_eq(c->model.linear_attn.chunk_size, 64);
    cr_expect(c->model.linear_attn.safe_gate);
    cr_expect_eq(c->model.linear_attn.lower_bound, -5.0f);
    cr_expect_eq(c->runtime.backend, HAE_BACKEND_AUTO);
    cr_expect_eq(c->runtime.device, 0);
    cr_expect_eq(c->runtime.threads, 0);
    cr_expect_eq(c->runtime.dtype, HAE_BF16);
    cr_expect_eq(c->runtime.batch, 1);
    cr_expect_eq(c->runtime.prefill, 1024);
    cr_expect_eq(c->runtime.decode, 32);
    cr_expect_eq(c->runtime.prefill_chunk, 512);
    cr_expect_eq(c->runtime.temperature, 0.0f);
    cr_expect_eq(c->runtime.kv_budget, 0);
    cr_expect_eq(c->sweep.n_axes, 0);
    cr_expect_eq(hae_config_sweep_jobs(c), 1);
    cr_expect_str_eq(c->source, "<default>");
    free(c);
}

/* The schema's own defaults are configs/default.yaml's (all but the layer pattern, which is
 * [full] when omitted). */
Test(config, schema_defaults_match_default_yaml) {
    hae_config *d = default_cfg(), *c = cfg_new();
    const char *y = "model:\n  layer_pattern: [kda, kda, kda, dsa]\n";
    cr_assert_eq(hae_config_parse(y, strlen(y), "<default>", NULL, 0, c), HAE_OK, "%s", hae_last_error());
    cr_expect(memcmp(c, d, sizeof *c) == 0);
    free(c);
    c = parse_ok("seed: 1\n", NULL, 0);
    expect_layers(c, "full,full,full,full");
    free(c);
    free(d);
}

/* docs/config.md documents every key the schema has: each key of the resolved YAML (dotted a.b.k) is named in
 * the first cell of a table row under the heading that names its section (`a.b`; top-level keys under "Top
 * level"). A key added without a line in the reference fails here. */
static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    cr_assert(f, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    const long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *t = malloc((size_t)n + 1);
    cr_assert(t && fread(t, 1, (size_t)n, f) == (size_t)n);
    t[n] = 0;
    fclose(f);
    return t;
}

static bool documented(const char *doc, const char *section, const char *key) {
    char head[220], cell[80];
    if (section[0]) snprintf(head, sizeof head, "`%s`", section);
    else snprintf(head, sizeof head, "Top level");
    snprintf(cell, sizeof cell, "`%s`", key);
    for (const char *h = strstr(doc, "\n#"); h; h = strstr(h + 1, "\n#")) {
        const char *eol = strchr(h + 1, '\n');
        if (!eol) break;
        const char *found = strstr(h, head);
        if (!found || found > eol) continue;
        const char *end = strstr(eol, "\n#");
        for (const char *row = strstr(eol, "\n| "); row && (!end || row < end); row = strstr(row + 1, "\n| ")) {
            const char *bar = strstr(row + 3, " |"), *k = strstr(row + 3, cell);
            if (k && bar && k < bar) return true;
        }
    }
    return false;
}

Test(config, docs_name_every_key) {
    hae_config *c = default_cfg();
    char *yaml = NULL, *doc = read_text(HAE_SOURCE_DIR "/docs/config.md");
    cr_assert_eq(hae_config_to_yaml(c, &yaml), HAE_OK, "%s", hae_last_error());
    char path[4][200] = {{0}};
    int keys = 0;
    for (char *line = yaml; *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : line + strlen(line)) {
        const int depth = (int)strspn(line, " ") / 2;
        char key[64] = "";
        if (depth > 3 || sscanf(line + 2 * depth, "%63[a-z_0-9]:", key) != 1 || line[2 * depth] == '-') continue;
        const char *after = line + 2 * depth + strlen(key) + 1;
        if (*after == '\n' || *after == 0) { /* a section */
            snprintf(path[depth], sizeof path[0], "%s%s%s", depth ? path[depth - 1] : "", depth ? "." : "", key);
            continue;
        }
        const char *section = depth ? path[depth - 1] : "";
        cr_expect(documented(doc, section, key), "docs/config.md has no row for %s%s%s", section, depth ? "." : "",
                  key);
        keys++;
    }
    cr_expect_geq(keys, 100, "%d keys read from the resolved YAML", keys);
    free(yaml), free(doc), free(c);
}

/* Every preset and example loads, and every one of its sweep jobs builds. */
static int load_dir(const char *dir) {
    DIR *dp = opendir(dir);
    cr_assert(dp, "cannot open %s", dir);
    int n = 0;
    hae_config *c = cfg_new(), *job = cfg_new();
    for (struct dirent *e; (e = readdir(dp));) {
        size_t len = strlen(e->d_name);
        if (len < 6 || strcmp(e->d_name + len - 5, ".yaml") != 0) continue;
        char path[2048];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        hae_status st = hae_config_load(path, NULL, 0, c);
        cr_expect_eq(st, HAE_OK, "%s: %s", path, hae_last_error());
        if (st) continue;
        cr_expect_str_eq(c->source, path);
        for (int j = 0; j < hae_config_sweep_jobs(c); j++) {
            char label[512];
            cr_expect_eq(hae_config_sweep_job(c, j, job, label, sizeof label), HAE_OK, "%s job %d: %s", path, j,
                         hae_last_error());
        }
        expect_round_trip(c);
        n++;
    }
    closedir(dp);
    free(c);
    free(job);
    return n;
}

Test(config, presets_and_examples_load) {
    cr_expect_geq(load_dir(HAE_SOURCE_DIR "/configs"), 1);
    cr_expect_geq(load_dir(HAE_SOURCE_DIR "/configs/examples"), 2);
}

Test(config, overrides) {
    const char *y = "model:\n  d_model: 128\n  attention:\n    head_dim: 32\n";
    const char *ov[] = {
        "model.d_model=512",                         /* scalar */
        "model.layer_pattern=[full, swa]",           /* list */
        "runtime.kv_budget=8GiB",                    /* section the file omits */
        "model.attention={num_heads: 8, num_kv_heads: 8}", /* mappings merge: head_dim stays */
        "name=tuned",
    };
    hae_config *c = parse_ok(y, ov, 5);
    cr_expect_eq(c->model.d_model, 512);
    expect_layers(c, "full,swa,full,swa");
    cr_expect_eq(c->runtime.kv_budget, 8ll << 30);
    cr_expect_eq(c->model.attention.num_heads, 8);
    cr_expect_eq(c->model.attention.num_kv_heads, 8);
    cr_expect_eq(c->model.attention.head_dim, 32);
    cr_expect_str_eq(c->name, "tuned");
    free(c);

    /* model.layers replaces the file's layer_pattern (and the other way round). */
    const char *lay[] = {"model.layers={full: [0, 3], swa: [1, 2]}"};
    c = parse_ok("model:\n  layer_pattern: [swa]\n", lay, 1);
    expect_layers(c, "full,swa,swa,full");
    free(c);
    const char *lay2[] = {"model.layers.full=[0, 1, 2, 3]"};
    c = parse_ok("model:\n  layer_pattern: [swa]\n", lay2, 1);
    expect_layers(c, "full,full,full,full");
    free(c);
    const char *pat[] = {"model.layer_pattern=[swa]"};
    c = parse_ok("model:\n  n_layers: 2\n  layers: {full: [0, 1]}\n", pat, 1);
    expect_layers(c, "swa,swa");
    free(c);

    /* sweep.<dotted key> adds an axis. */
    const char *sw[] = {"sweep.model.d_model=[64, 128]"};
    c = parse_ok("seed: 1\n", sw, 1);
    cr_expect_eq(hae_config_sweep_jobs(c), 2);
    cr_expect_str_eq(c->sweep.axes[0].key, "model.d_model");
    free(c);
}

Test(config, override_errors) {
    static const struct { const char *ov, *want; hae_status st;
    } cases[] = {
        {"model.d_model=abc", "--set model.d_model=abc: model.d_model: expected an integer, got 'abc'",
         HAE_ERR_INVALID},
        {"model.d_modle=3", "--set model.d_modle=3: model.d_modle: unknown key; did you mean 'd_model'?",
         HAE_ERR_INVALID},
        {"model.d_model", "--set model.d_model: expected KEY=VALUE", HAE_ERR_INVALID},
        {"=3", "--set =3: expected KEY=VALUE", HAE_ERR_INVALID},
        {"model..d_model=3", "--set model..d_model=3: empty key component", HAE_ERR_INVALID},
        {"model.layer_pattern=[full,", "--set model.layer_pattern=[full,: YAML syntax error", HAE_ERR_INVALID},
        {"model=3", "--set model=3: model: expected a mapping, got '3'", HAE_ERR_INVALID},
        {"model.attention.num_kv_heads=3",
         "--set model.attention.num_kv_heads=3: model.attention.num_kv_heads: "
         "num_heads 4 (default) is not a multiple of num_kv_heads 3",
         HAE_ERR_INVALID},
        {"runtime.dtype=", "--set runtime.dtype=: runtime.dtype: '' is not allowed", HAE_ERR_INVALID},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        hae_config *c = cfg_new();
        const char *ov[] = {cases[i].ov};
        hae_status st = hae_config_parse("seed: 1\n", 8, "t.yaml", ov, 1, c);
        const char *msg = hae_last_error();
        cr_expect_eq(st, cases[i].st, "--set %s: status %d (%s)", cases[i].ov, st, msg);
        cr_expect(strncmp(msg, cases[i].want, strlen(cases[i].want)) == 0, "--set %s:\n got  %s\n want %s...",
                  cases[i].ov, msg, cases[i].want);
        free(c);
    }
}

Test(config, layer_pattern_repeats) {
    hae_config *c = parse_ok("model:\n  n_layers: 7\n  layer_pattern: [full, swa, swa]\n", NULL, 0);
    expect_layers(c, "full,swa,swa,full,swa,swa,full");
    free(c);
    /* Longer than n_layers: the first n_layers entries. */
    c = parse_ok("model:\n  n_layers: 2\n  layer_pattern: [swa, full, full]\n", NULL, 0);
    expect_layers(c, "swa,full");
    free(c);
}

Test(config, explicit_layers) {
    hae_config *c = parse_ok("model:\n  n_layers: 6\n  layers:\n    full: [5, 0]\n    swa: [1, 2, 3, 4]\n", NULL, 0);
    expect_layers(c, "full,swa,swa,swa,swa,full");
    expect_round_trip(c);
    free(c);
}

Test(config, sweep_jobs) {
    const char *y = "name: s\n"
                    "model:\n"
                    "  n_layers: 4\n"
                    "sweep:\n"
                    "  model.layer_pattern: [[full], [swa, full]]\n"
                    "  model.swa.window_size: [64, 128, 256]\n"
                    "  runtime.kv_budget: [1GiB]\n";
    hae_config *c = parse_ok(y, NULL, 0), *job = cfg_new();
    cr_assert_eq(hae_config_sweep_jobs(c), 6);
    cr_expect_eq(c->sweep.n_axes, 3);
    cr_expect_str_eq(c->sweep.axes[0].values[1], "[swa,full]");
    cr_expect_str_eq(c->sweep.axes[2].values[0], "1GiB");
    static const char *labels[] = {
        "model.layer_pattern=[full],model.swa.window_size=64,runtime.kv_budget=1GiB",
        "model.layer_pattern=[full],model.swa.window_size=128,runtime.kv_budget=1GiB",
        "model.layer_pattern=[full],model.swa.window_size=256,runtime.kv_budget=1GiB",
        "model.layer_pattern=[swa,full],model.swa.window_size=64,runtime.kv_budget=1GiB",
        "model.layer_pattern=[swa,full],model.swa.window_size=128,runtime.kv_budget=1GiB",
        "model.layer_pattern=[swa,full],model.swa.window_size=256,runtime.kv_budget=1GiB",
    };
    static const int64_t windows[] = {64, 128, 256};
    for (int j = 0; j < 6; j++) {
        char label[256];
        cr_assert_eq(hae_config_sweep_job(c, j, job, label, sizeof label), HAE_OK, "job %d: %s", j, hae_last_error());
        cr_expect_str_eq(label, labels[j], "job %d", j);
        expect_layers(job, j < 3 ? "full,full,full,full" : "swa,full,swa,full");
        cr_expect_eq(job->model.swa.window_size, windows[j % 3], "job %d", j);
        cr_expect_eq(job->runtime.kv_budget, 1ll << 30);
        cr_expect_eq(job->sweep.n_axes, 0, "a job has no sweep");
        cr_expect_str_eq(job->name, "s");
        cr_expect_str_eq(job->source, "t.yaml");
    }
    cr_expect_neq(hae_config_sweep_job(c, 6, job, NULL, 0), HAE_OK);
    cr_expect_neq(hae_config_sweep_job(c, -1, job, NULL, 0), HAE_OK);
    /* A label is cut to the buffer, never overflowing it. */
    char small[8];
    cr_expect_eq(hae_config_sweep_job(c, 0, job, small, sizeof small), HAE_OK);
    cr_expect_str_eq(small, "model.l");
    expect_round_trip(c);
    free(c);

    /* Without a sweep there is one job: the config itself. */
    c = default_cfg();
    char label[16] = "x";
    cr_assert_eq(hae_config_sweep_job(c, 0, job, label, sizeof label), HAE_OK, "%s", hae_last_error());
    cr_expect_str_eq(label, "");
    cr_expect(memcmp(c, job, sizeof *c) == 0);
    free(c);

    /* n_layers swept with a pattern: every job repeats the pattern. */
    c = parse_ok("model:\n  n_layers: 4\n  layer_pattern: [swa, full]\nsweep:\n  model.n_layers: [2, 6]\n", NULL, 0);
    cr_assert_eq(hae_config_sweep_job(c, 1, job, NULL, 0), HAE_OK, "%s", hae_last_error());
    expect_layers(job, "swa,full,swa,full,swa,full");
    free(c);
    free(job);
}

Test(config, sweep_limits) {
    char y[8192];
    /* HAE_MAX_SWEEP_AXES + 1 axes. */
    static const char *keys[] = {"seed", "model.d_model", "model.vocab_size", "runtime.batch", "runtime.decode",
                                 "runtime.prefill", "runtime.threads", "runtime.device", "runtime.temperature"};
    int k = snprintf(y, sizeof y, "sweep:\n");
    for (int a = 0; a <= HAE_MAX_SWEEP_AXES; a++) k += snprintf(y + k, sizeof y - k, "  %s: [1, 2]\n", keys[a]);
    hae_config *c = cfg_new();
    cr_expect_eq(hae_config_parse(y, strlen(y), "t.yaml", NULL, 0, c), HAE_ERR_INVALID);
    cr_expect(strstr(hae_last_error(), "t.yaml:10:3: sweep: more than 8 axes"), "%s", hae_last_error());
    /* HAE_MAX_SWEEP_VALUES + 1 values. */
    k = snprintf(y, sizeof y, "sweep:\n  seed: [");
    for (int v = 0; v <= HAE_MAX_SWEEP_VALUES; v++) k += snprintf(y + k, sizeof y - k, "%s%d", v ? ", " : "", v);
    snprintf(y + k, sizeof y - k, "]\n");
    cr_expect_eq(hae_config_parse(y, strlen(y), "t.yaml", NULL, 0, c), HAE_ERR_INVALID);
    cr_expect(strstr(hae_last_error(), "t.yaml:2:") && strstr(hae_last_error(), "sweep.seed: more than 64 values"),
              "%s", hae_last_error());
    /* 4 axes of 9 values: 6561 jobs. */
    k = snprintf(y, sizeof y, "sweep:\n");
    for (int a = 0; a < 4; a++) k += snprintf(y + k, sizeof y - k, "  %s: [1, 2, 3, 4, 5, 6, 7, 8, 9]\n", keys[a + 1]);
    cr_expect_eq(hae_config_parse(y, strlen(y), "t.yaml", NULL, 0, c), HAE_ERR_INVALID);
    cr_expect(strstr(hae_last_error(), "t.yaml:5:3: sweep.runtime.decode: the sweep has"), "%s", hae_last_error());
    free(c);
}

Test(config, round_trips) {
    hae_config *c = default_cfg();
    expect_round_trip(c);
    free(c);
    c = cfg_new();
    cr_assert_eq(hae_config_load(HAE_SOURCE_DIR "/configs/examples/explicit_layers.yaml", NULL, 0, c), HAE_OK, "%s",
                 hae_last_error());
    expect_round_trip(c);
    /* Odd values: float digits, a seed above 2^63, quoting in strings. */
    const char *ov[] = {"seed=18446744073709551615", "model.attention.rope_theta=123456.789",
                        "model.rms_norm_eps=3e-7", "output_dir=\"a: b/\\\"c\\\" #d\"",
                        "runtime.temperature=0.7", "model.tie_word_embeddings=true"};
    hae_config *d = cfg_new();
    cr_assert_eq(hae_config_load(HAE_SOURCE_DIR "/configs/examples/explicit_layers.yaml", ov, 6, d), HAE_OK, "%s",
                 hae_last_error());
    cr_expect_str_eq(d->output_dir, "a: b/\"c\" #d");
    cr_expect_eq(d->seed, UINT64_MAX);
    expect_round_trip(d);

    /* Through a file: write_yaml then load (the source becomes the new path). */
    char path[1024];
    tu_tmp_path("config-roundtrip.yaml", path, sizeof path);
    cr_assert_eq(hae_config_write_yaml(d, path), HAE_OK, "%s", hae_last_error());
    hae_config *e = cfg_new();
    cr_assert_eq(hae_config_load(path, NULL, 0, e), HAE_OK, "%s", hae_last_error());
    cr_expect_str_eq(e->source, path);
    memcpy(e->source, d->source, sizeof e->source);
    cr_expect(memcmp(d, e, sizeof *d) == 0);
    remove(path);
    cr_expect_eq(hae_config_write_yaml(d, "/nonexistent-dir/x.yaml"), HAE_ERR_IO);
    free(c);
    free(d);
    free(e);
}

Test(config, missing_file) {
    hae_config *c = cfg_new();
    hae_status st = hae_config_load("/nonexistent/nope.yaml", NULL, 0, c);
    cr_expect_eq(st, HAE_ERR_IO);
    cr_expect(strstr(hae_last_error(), "/nonexistent/nope.yaml") && strstr(hae_last_error(), "No such file"), "%s",
              hae_last_error());
    free(c);
}

/* ---------------------------------------------------------------- bad inputs */

typedef struct bad_case {
    const char *name, *yaml;
    const char *where; /* "t.yaml:LINE:COL:" */
    const char *path;  /* dotted path right after it ("" for syntax-level problems) */
    const char *word;  /* part of the reason */
} bad_case;

#define LONG_NAME "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"

static const bad_case bad[] = {
    /* keys */
    {"unknown key", "model:\n  d_modle: 3\n", "t.yaml:2:3:", "model.d_modle", "unknown key; did you mean 'd_model'?"},
    {"unknown top key", "seed: 1\nmodle:\n  d_model: 3\n", "t.yaml:2:1:", "modle", "did you mean 'model'?"},
    {"unknown far key", "model:\n  zzzzzzzz: 1\n", "t.yaml:2:3:", "model.zzzzzzzz", "expected one of: vocab_size"},
    {"dotted key", "model.d_model: 3\n", "t.yaml:1:1:", "model.d_model", "cannot contain '.'"},
    {"duplicate key", "seed: 1\nname: x\nseed: 2\n", "t.yaml:3:1:", "seed", "duplicate key (first at t.yaml:1:1)"},
    {"duplicate nested", "model:\n  d_model: 1\n  d_model: 2\n", "t.yaml:3:3:", "model.d_model", "duplicate"},
    {"list as key", "? [a, b]\n: 1\n", "t.yaml:1:3:", "", "keys must be plain names"},
    /* document shape */
    {"empty file", "", "t.yaml:1:1:", "", "empty config"},
    {"only comments", "# nothing here\n", "t.yaml:1:1:", "", "empty config"},
    {"list root", "- a\n- b\n", "t.yaml:1:1:", "", "expected a mapping at the top level"},
    {"scalar root", "hello\n", "t.yaml:1:1:", "", "got 'hello'"},
    {"two documents", "seed: 1\n---\nseed: 2\n", "t.yaml:2:1:", "", "second YAML document"},
    {"syntax", "model:\n  d_model: [1, 2\n", "t.yaml:3:1:", "", "YAML syntax error: did not find expected ','"},
    {"syntax indent", "model:\n  d_model: 1\n bad: 2\n", "t.yaml:3:2:", "", "YAML syntax error"},
    {"bad utf-8", "name: x\nseed: \xff\n", "t.yaml:2:7:", "", "YAML syntax error: invalid leading UTF-8 octet"},
    {"tab", "model:\n\td_model: 3\n", "t.yaml:2:1:", "", "tab character in indentation"},
    {"anchor", "name: &n x\nseed: 1\n", "t.yaml:1:7:", "name", "anchors and aliases"},
    {"alias", "model:\n  d_model: 3\n  n_layers: *x\n", "t.yaml:3:13:", "model.n_layers", "anchors and aliases"},
    {"tag", "seed: !!int 5\n", "t.yaml:1:7:", "seed", "tags such as 'tag:yaml.org,2002:int'"},
    {"section is list", "model: [1, 2]\n", "t.yaml:1:8:", "model", "expected a mapping, got a list"},
    {"section is scalar", "runtime: 3\n", "t.yaml:1:10:", "runtime", "expected a mapping, got '3'"},
    /* scalar types and ranges */
    {"int from string", "model:\n  d_model: abc\n", "t.yaml:2:12:", "model.d_model", "expected an integer, got 'abc'"},
    {"int from float", "model:\n  n_layers: 1.5\n", "t.yaml:2:13:", "model.n_layers", "expected an integer, got '1.5'"},
    {"int quoted", "model:\n  d_model: \"256\"\n", "t.yaml:2:12:", "model.d_model", "got the quoted string '256'"},
    {"int missing", "model:\n  d_model:\n", "t.yaml:2:11:", "model.d_model", "expected an integer, got nothing"},
    {"int from list", "model:\n  d_model: [1]\n", "t.yaml:2:12:", "model.d_model", "got a list"},
    {"int overflow", "model:\n  vocab_size: 99999999999999999999\n", "t.yaml:2:15:", "model.vocab_size", "overflow"},
    {"d_model 0", "model:\n  d_model: 0\n", "t.yaml:2:12:", "model.d_model", "0 is out of range (expected 1..65536)"},
    {"n_layers 257", "model:\n  n_layers: 257\n", "t.yaml:2:13:", "model.n_layers", "expected 1..256"},
    {"vocab 1", "model:\n  vocab_size: 1\n", "t.yaml:2:15:", "model.vocab_size", "expected 2..2147483647"},
    {"d_ff 2^20+1", "model:\n  mlp:\n    intermediate_size: 1048577\n", "t.yaml:3:24:", "model.mlp.intermediate_size",
     "out of range"},
    {"heads 0", "model:\n  attention:\n    num_heads: 0\n", "t.yaml:3:16:", "model.attention.num_heads",
     "expected >= 1"},
    {"head_dim 2048", "model:\n  attention:\n    head_dim: 2048\n", "t.yaml:3:15:", "model.attention.head_dim",
     "expected 1..1024"},
    {"window 0", "model:\n  swa:\n    window_size: 0\n", "t.yaml:3:18:", "model.swa.window_size", "expected >= 1"},
    {"name map", "name: {a: 1}\n", "t.yaml:1:7:", "name", "expected a name, got a mapping"},
    {"name chars", "name: a/b\n", "t.yaml:1:7:", "name", "letters, digits"},
    {"name newline", "name: \"a\\nb\"\n", "t.yaml:1:7:", "name", "got the quoted string 'a\\nb'"},
    {"name long", "name: " LONG_NAME LONG_NAME "\n", "t.yaml:1:7:", "name", "longer than 127 characters"},
    {"output_dir empty", "output_dir: \"\"\n", "t.yaml:1:13:", "output_dir", "non-empty string"},
    {"bool yes", "model:\n  tie_word_embeddings: yes\n", "t.yaml:2:24:", "model.tie_word_embeddings",
     "expected true or false, got 'yes'"},
    {"seed negative", "seed: -1\n", "t.yaml:1:7:", "seed", "non-negative integer"},
    {"seed overflow", "seed: 18446744073709551616\n", "t.yaml:1:7:", "seed", "overflow"},
    {"float string", "model:\n  attention:\n    rope_theta: big\n", "t.yaml:3:17:", "model.attention.rope_theta",
     "expected a number, got 'big'"},
    {"float inf", "model:\n  attention:\n    rope_theta: .inf\n", "t.yaml:3:17:", "model.attention.rope_theta",
     "expected a number"},
    {"float huge", "model:\n  attention:\n    rope_theta: 1e40\n", "t.yaml:3:17:", "model.attention.rope_theta",
     "too large for a 32-bit float"},
    {"theta 0", "model:\n  attention:\n    rope_theta: 0\n", "t.yaml:3:17:", "model.attention.rope_theta",
     "out of range (expected > 0)"},
    {"eps 0", "model:\n  rms_norm_eps: 0\n", "t.yaml:2:17:", "model.rms_norm_eps", "expected (0, 1)"},
    {"eps 1", "model:\n  rms_norm_eps: 1.0\n", "t.yaml:2:17:", "model.rms_norm_eps", "expected (0, 1)"},
    {"init range", "model:\n  initializer_range: 1.5\n", "t.yaml:2:22:", "model.initializer_range", "expected (0, 1]"},
    {"partial 0", "model:\n  attention:\n    partial_rotary_factor: 0\n",
     "t.yaml:3:28:", "model.attention.partial_rotary_factor", "expected (0, 1]"},
    {"softmax scale", "model:\n  attention:\n    softmax_scale: -0.1\n",
     "t.yaml:3:20:", "model.attention.softmax_scale", "expected >= 0"},
    {"temperature", "runtime:\n  temperature: -1\n", "t.yaml:2:16:", "runtime.temperature", "expected >= 0"},
    {"threads", "runtime:\n  threads: 2000\n", "t.yaml:2:12:", "runtime.threads", "expected 0..1024"},
    {"device", "runtime:\n  device: -1\n", "t.yaml:2:11:", "runtime.device", "out of range"},
    {"batch", "runtime:\n  batch: 0\n", "t.yaml:2:10:", "runtime.batch", "expected 1..65536"},
    {"prefill", "runtime:\n  prefill: 0\n", "t.yaml:2:12:", "runtime.prefill", "expected >= 1"},
    {"decode", "runtime:\n  decode: -5\n", "t.yaml:2:11:", "runtime.decode", "expected >= 0"},
    {"prefill_chunk", "runtime:\n  prefill_chunk: x\n", "t.yaml:2:18:", "runtime.prefill_chunk", "integer"},
    {"bytes suffix", "runtime:\n  kv_budget: 8XB\n", "t.yaml:2:14:", "runtime.kv_budget", "expected a byte size"},
    {"bytes fraction", "runtime:\n  kv_budget: 1.5GiB\n", "t.yaml:2:14:", "runtime.kv_budget", "expected a byte size"},
    {"bytes negative", "runtime:\n  kv_budget: -1\n", "t.yaml:2:14:", "runtime.kv_budget", "out of range"},
    {"bytes overflow", "runtime:\n  kv_budget: 99999999TiB\n", "t.yaml:2:14:", "runtime.kv_budget", "overflow"},
    /* enums */
    {"dtype f16", "runtime:\n  dtype: f16\n", "t.yaml:2:10:", "runtime.dtype",
     "'f16' is not allowed (expected one of: f32, bf16)"},
    {"dtype fp8", "runtime:\n  dtype: fp8\n", "t.yaml:2:10:", "runtime.dtype", "expected one of: f32, bf16"},
    {"backend", "runtime:\n  backend: gpu\n", "t.yaml:2:12:", "runtime.backend", "expected one of: auto, cpu, cuda"},
    {"rope typo", "model:\n  attention:\n    rope: fulll\n", "t.yaml:3:11:", "model.attention.rope",
     "'fulll' is not allowed (expected one of: none, full, partial)"},
    {"mla partial rope", "model:\n  attention:\n    form: mla\n    rope: partial\n", "t.yaml:4:11:",
     "model.attention.rope", "rope 'partial' does not apply to form 'mla'"},
    {"mla odd rope dims", "model:\n  attention:\n    form: mla\n    qk_rope_head_dim: 63\n", "t.yaml:4:23:",
     "model.attention.qk_rope_head_dim", "qk_rope_head_dim 63 must be even with rope 'full' (default)"},
    {"mla latent 0", "model:\n  attention:\n    form: mla\n    kv_lora_rank: 0\n", "t.yaml:4:19:",
     "model.attention.kv_lora_rank", "expected 1..8192"},
    /* layer layout */
    {"kind typo", "model:\n  layer_pattern: [full, kdaa]\n", "t.yaml:2:25:", "model.layer_pattern[1]",
     "unknown layer kind 'kdaa'; did you mean 'kda'?"},
    {"kind list", "model:\n  layer_pattern: [full, [swa]]\n", "t.yaml:2:25:", "model.layer_pattern[1]", "got a list"},
    {"pattern empty", "model:\n  layer_pattern: []\n", "t.yaml:2:18:", "model.layer_pattern", "non-empty list"},
    {"pattern scalar", "model:\n  layer_pattern: full\n", "t.yaml:2:18:", "model.layer_pattern", "got 'full'"},
    {"pattern and layers", "model:\n  layer_pattern: [full]\n  layers: {full: [0, 1, 2, 3]}\n",
     "t.yaml:3:11:", "model.layers", "not both (layer_pattern at t.yaml:2:18)"},
    {"layers twice", "model:\n  n_layers: 3\n  layers:\n    full: [0, 1]\n    swa: [1, 2]\n",
     "t.yaml:5:11:", "model.layers.swa[0]", "layer 1 is listed twice (first at t.yaml:4:15)"},
    {"layers gap", "model:\n  n_layers: 3\n  layers:\n    full: [0]\n    swa: [2]\n", "t.yaml:4:5:", "model.layers",
     "layer 1 has no kind"},
    {"layers index", "model:\n  n_layers: 2\n  layers:\n    full: [0, 1, 2]\n", "t.yaml:4:18:", "model.layers.full[2]",
     "layer index 2 is out of range (n_layers 2: expected 0..1)"},
    {"layers index default", "model:\n  layers:\n    full: [0, 1, 2, 3, 4]\n", "t.yaml:3:24:", "model.layers.full[4]",
     "n_layers 4 (default)"},
    {"layers negative", "model:\n  layers:\n    full: [-1]\n", "t.yaml:3:12:", "model.layers.full[0]", "out of range"},
    {"layers not list", "model:\n  n_layers: 1\n  layers:\n    full: 0\n", "t.yaml:4:11:", "model.layers.full",
     "expected a list of layer indices"},
    {"layers list", "model:\n  layers: [full]\n", "t.yaml:2:11:", "model.layers", "expected a mapping from layer kind"},
    /* cross-field rules */
    {"kv heads", "model:\n  attention:\n    num_heads: 4\n    num_kv_heads: 3\n",
     "t.yaml:4:19:", "model.attention.num_kv_heads", "num_heads 4 is not a multiple of num_kv_heads 3"},
    {"kv heads default", "model:\n  attention:\n    num_heads: 3\n", "t.yaml:3:16:", "model.attention.num_heads",
     "num_heads 3 is not a multiple of num_kv_heads 2 (default)"},
    {"rope odd", "model:\n  attention:\n    head_dim: 63\n", "t.yaml:3:15:", "model.attention.head_dim",
     "head_dim 63 must be even with rope 'full' (default)"},
    {"rope partial small", "model:\n  attention:\n    rope: partial\n    partial_rotary_factor: 0.01\n",
     "t.yaml:4:28:", "model.attention.partial_rotary_factor", "= 1 dims (expected an even number >= 2)"},
    {"rope partial odd", "model:\n  attention:\n    rope: partial\n    head_dim: 10\n",
     "t.yaml:4:15:", "model.attention.head_dim", "round(head_dim 10 x partial_rotary_factor 0.5 (default)) = 5"},
    {"rope partial odd2",
     "model:\n  attention:\n    rope: partial\n    head_dim: 20\n    partial_rotary_factor: 0.25\n",
     "t.yaml:5:28:", "model.attention.partial_rotary_factor", "= 5 dims"},
    /* sweeps */
    {"sweep not map", "sweep: [1, 2]\n", "t.yaml:1:8:", "sweep", "expected a mapping from dotted keys"},
    {"sweep unknown key", "sweep:\n  model.d_modle: [1, 2]\n", "t.yaml:2:3:", "sweep.model.d_modle",
     "did you mean 'model.d_model'?"},
    {"sweep of sweep", "sweep:\n  sweep: [1]\n", "t.yaml:2:3:", "sweep.sweep", "unknown key"},
    {"sweep section", "sweep:\n  model.attention: [1]\n", "t.yaml:2:3:", "sweep.model.attention",
     "is a section; sweep its keys (e.g. model.attention.form)"},
    {"sweep empty", "sweep:\n  model.d_model: []\n", "t.yaml:2:18:", "sweep.model.d_model", "non-empty list"},
    {"sweep scalar", "sweep:\n  model.d_model: 128\n", "t.yaml:2:18:", "sweep.model.d_model", "got '128'"},
    {"sweep long value", "sweep:\n  output_dir: [a, " LONG_NAME LONG_NAME "]\n", "t.yaml:2:19:", "sweep.output_dir",
     "longer than 127"},
    {"sweep both layouts", "sweep:\n  model.layer_pattern: [[full]]\n  model.layers: [{full: [0, 1, 2, 3]}]\n",
     "t.yaml:3:3:", "sweep.model.layers", "not both"},
    {"sweep bad value", "sweep:\n  model.d_model: [128, abc]\n", "t.yaml:2:24:", "model.d_model",
     "expected an integer, got 'abc' (sweep job 2/2: model.d_model=abc)"},
    {"sweep bad kind", "sweep:\n  model.layer_pattern: [[full], [swa, dsaa]]\n", "t.yaml:2:39:",
     "model.layer_pattern[1]", "unknown layer kind 'dsaa'; did you mean 'dsa'? (built: full, swa, dsa, kda, gdn, "
     "deltanet, gla, linear, mamba2, retnet) (sweep job 2/2: model.layer_pattern=[swa,dsaa])"},
    {"layers unknown kind", "model:\n  n_layers: 1\n  layers:\n    gdnn: [0]\n", "t.yaml:4:5:", "model.layers.gdnn",
     "unknown layer kind 'gdnn'; did you mean 'gdn'?"},
    {"dsa head dim", "model:\n  dsa:\n    index_head_dim: 64\n", "t.yaml:3:21:", "model.dsa.index_head_dim",
     "out of range (expected 128..128)"},
    {"dsa topk", "model:\n  dsa:\n    index_topk: 0\n", "t.yaml:3:17:", "model.dsa.index_topk", "out of range"},
    {"dsa rope odd", "model:\n  dsa:\n    index_rope_dim: 63\n", "t.yaml:3:21:", "model.dsa.index_rope_dim",
     "must be even"},
    {"dsa rope wide", "model:\n  dsa:\n    index_rope_dim: 130\n", "t.yaml:3:21:", "model.dsa.index_rope_dim",
     "out of range (expected 0..128)"},
    {"dsa page", "model:\n  dsa:\n    page_size: 0\n", "t.yaml:3:16:", "model.dsa.page_size", "out of range"},
    {"dsa derived", "model:\n  dsa:\n    derived: 1\n", "t.yaml:3:14:", "model.dsa.derived", "expected true or false"},
    {"sweep bad combination", "model:\n  attention:\n    rope: full\nsweep:\n  model.attention.head_dim: [64, 63]\n",
     "t.yaml:5:34:", "model.attention.head_dim", "(sweep job 2/2: model.attention.head_dim=63)"},
    {"sweep bad pair", "sweep:\n  model.attention.num_heads: [4, 6]\n  model.attention.num_kv_heads: [2, 4]\n",
     "t.yaml:3:37:", "model.attention.num_kv_heads",
     "num_heads 6 is not a multiple of num_kv_heads 4 (sweep job 4/4: "
     "model.attention.num_heads=6,model.attention.num_kv_heads=4)"},
    {"sweep against file", "model:\n  attention:\n    num_heads: 6\nsweep:\n  model.attention.num_kv_heads: [2, 4]\n",
     "t.yaml:5:37:", "model.attention.num_kv_heads", "(sweep job 2/2: model.attention.num_kv_heads=4)"},
    {"sweep layers vs n_layers",
     "model:\n  n_layers: 2\n  layers: {full: [0], swa: [1]}\nsweep:\n  model.n_layers: [2, 3]\n",
     "t.yaml:3:11:", "model.layers",
     "layer 2 has no kind (each of the n_layers 3 layers 0..2 must be listed exactly "
     "once) (sweep job 2/2: model.n_layers=3; swept values at t.yaml:5:23)"},
    {"linear v heads", "model:\n  linear_attn:\n    num_heads: 4\n    num_v_heads: 6\n", "t.yaml:4:18:",
     "model.linear_attn.num_v_heads", "num_v_heads 6 is not a multiple of num_heads 4"},
    {"linear v heads default", "model:\n  linear_attn:\n    num_v_heads: 6\n", "t.yaml:3:18:",
     "model.linear_attn.num_v_heads", "num_heads 4 (default)"},
    {"linear head dim", "model:\n  linear_attn:\n    head_dim: 512\n", "t.yaml:3:15:", "model.linear_attn.head_dim",
     "out of range (expected 1..256)"},
    {"linear expand_v", "model:\n  linear_attn:\n    head_dim: 64\n    expand_v: 0.3\n", "t.yaml:4:15:",
     "model.linear_attn.expand_v", "64 x expand_v 0.3 = 19.2 is not a whole head_v_dim"},
    {"linear expand_v big", "model:\n  linear_attn:\n    expand_v: 8\n", "t.yaml:3:15:", "model.linear_attn.expand_v",
     "head_dim 64 (default) x expand_v 8 = 512 is not a whole head_v_dim in 1..256"},
    {"linear expand_v zero", "model:\n  linear_attn:\n    expand_v: 0\n", "t.yaml:3:15:",
     "model.linear_attn.expand_v", "out of range"},
    {"linear conv", "model:\n  linear_attn:\n    conv_size: 0\n", "t.yaml:3:16:", "model.linear_attn.conv_size",
     "out of range (expected 1..16)"},
    {"linear chunk", "model:\n  linear_attn:\n    chunk_size: 48\n", "t.yaml:3:17:", "model.linear_attn.chunk_size",
     "chunk_size 48 must be 16, 32, 64 or 128"},
    {"linear chunk range", "model:\n  linear_attn:\n    chunk_size: 256\n", "t.yaml:3:17:",
     "model.linear_attn.chunk_size", "out of range"},
    {"linear lower bound", "model:\n  linear_attn:\n    lower_bound: 0\n", "t.yaml:3:18:",
     "model.linear_attn.lower_bound", "out of range"},
    {"linear safe gate", "model:\n  linear_attn:\n    safe_gate: maybe\n", "t.yaml:3:16:",
     "model.linear_attn.safe_gate", "expected true or false"},
    {"linear unknown", "model:\n  linear_attn:\n    num_v_head: 8\n", "t.yaml:3:5:", "model.linear_attn.num_v_head",
     "did you mean 'num_v_heads'?"},
    {"linear section", "model:\n  linear_attn: 4\n", "t.yaml:2:16:", "model.linear_attn", "expected a mapping"},
    {"sweep n_layers pattern",
     "model:\n  n_layers: 3\n  layer_pattern: [swa, full]\nsweep:\n  model.n_layers: [3, 4]\n",
     "t.yaml:5:23:", "model.n_layers", "whole number of layer_pattern's 2 entries"},
};

Test(config, bad_inputs) {
    hae_config *c = cfg_new();
    int n = (int)(sizeof bad / sizeof bad[0]);
    cr_expect_geq(n, 30);
    for (int i = 0; i < n; i++) tu_expect_bad_config(bad[i].name, bad[i].yaml, NULL, bad[i].where, bad[i].path, bad[i].word, c);
    free(c);
}

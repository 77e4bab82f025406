/* The config's eval section (engine/config.c): defaults, lists written as YAML lists or comma-separated scalars
 * with K/M/G suffixes, the resolved config read back the same, every bad value one line naming file:line:col and
 * the key, the grid checked against the model only where the section differs from its defaults; the presets in
 * configs/eval/ load; and `hae eval --help` documents every eval key. */
#include "testutil.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static hae_config *cfg_new(void) {
    hae_config *c = malloc(sizeof *c);
    cr_assert(c);
    return c;
}

static void expect_list(const hae_eval_list *l, const int64_t *want, int n, const char *what) {
    cr_expect_eq(l->n, n, "%s: %d values, expected %d", what, l->n, n);
    for (int i = 0; i < n && i < l->n; i++) cr_expect_eq(l->v[i], want[i], "%s[%d] = %lld", what, i, (long long)l->v[i]);
}

Test(eval_config, defaults_lists_suffixes_and_round_trip) {
    hae_config *c = cfg_new(), *back = cfg_new();
    tu_config("name: x\n", c);
    expect_list(&c->eval.tasks, (int64_t[]){HAE_TASK_MQAR}, 1, "tasks");
    expect_list(&c->eval.lengths, (int64_t[]){256, 1024, 4096}, 3, "lengths");
    expect_list(&c->eval.pairs, (int64_t[]){32}, 1, "pairs");
    expect_list(&c->eval.hops, (int64_t[]){1, 2, 4}, 3, "hops");
    expect_list(&c->eval.chains, (int64_t[]){0}, 1, "chains");
    expect_list(&c->eval.probe.kinds,
                (int64_t[]){HAE_LAYER_FULL, HAE_LAYER_DSA, HAE_LAYER_KDA, HAE_LAYER_GDN, HAE_LAYER_DELTANET,
                            HAE_LAYER_GLA, HAE_LAYER_MAMBA2, HAE_LAYER_RETNET, HAE_LAYER_LINEAR},
                9, "kinds");
    expect_list(&c->eval.probe.K, (int64_t[]){64}, 1, "K");
    expect_list(&c->eval.probe.topk, (int64_t[]){64}, 1, "topk");
    cr_expect(c->eval.queries == 0 && c->eval.form == HAE_HOPS_FOLLOW && !c->eval.shuffle && c->eval.power == 0);
    cr_expect(c->eval.noise_vocab == 64 && c->eval.vocab == 0 && c->eval.seeds == 2);
    cr_expect(c->eval.probe.index_dtype == HAE_FP8_E4M3 && c->eval.probe.key_cos == 0 && c->eval.probe.log_decay == 0 &&
              !c->eval.probe.orthogonal);
    expect_list(&c->eval.circuit.kinds,
                (int64_t[]){HAE_LAYER_FULL, HAE_LAYER_DSA, HAE_LAYER_SWA, HAE_LAYER_KDA, HAE_LAYER_GDN, HAE_LAYER_DELTANET,
                            HAE_LAYER_GLA, HAE_LAYER_MAMBA2, HAE_LAYER_RETNET, HAE_LAYER_LINEAR},
                10, "circuit kinds");
    expect_list(&c->eval.circuit.hop_kinds, NULL, 0, "hop kinds");
    cr_expect(c->eval.circuit.code_dim == 64 && c->eval.circuit.window == 0 && c->eval.circuit.topk == 0 &&
              c->eval.circuit.log_decay == 0 && !c->eval.circuit.decode);

    const char *yaml = "model:\n  vocab_size: 4096\neval:\n  tasks: niah, multihop\n  lengths: [1K, 2M, 1G]\n"
                       "  hops: 8\n  chains: [0, 16]\n  form: list\n  shuffle: true\n  power: 1.5\n  seeds: 3\n"
                       "  probe:\n    kinds: [linear, full]\n    K: 32, 128\n    index_dtype: bf16\n"
                       "    key_cos: 0.99\n    log_decay: -2.0e-3\n    orthogonal: true\n";
    tu_config(yaml, c);
    expect_list(&c->eval.tasks, (int64_t[]){HAE_TASK_NIAH, HAE_TASK_MULTIHOP}, 2, "tasks");
    expect_list(&c->eval.lengths, (int64_t[]){1024, 2 << 20, 1 << 30}, 3, "lengths");
    expect_list(&c->eval.hops, (int64_t[]){8}, 1, "hops");
    expect_list(&c->eval.chains, (int64_t[]){0, 16}, 2, "chains");
    expect_list(&c->eval.probe.kinds, (int64_t[]){HAE_LAYER_LINEAR, HAE_LAYER_FULL}, 2, "kinds");
    expect_list(&c->eval.probe.K, (int64_t[]){32, 128}, 2, "K");
    cr_expect(c->eval.form == HAE_HOPS_LIST && c->eval.shuffle && c->eval.power == 1.5f && c->eval.seeds == 3);
    cr_expect(c->eval.probe.index_dtype == HAE_BF16 && c->eval.probe.key_cos == 0.99f &&
              c->eval.probe.log_decay == -2.0e-3f && c->eval.probe.orthogonal);

    /* the resolved config reads back bit for bit, and --set takes the same forms */
    char *text = NULL;
    cr_assert_eq(hae_config_to_yaml(c, &text), HAE_OK);
    cr_expect(strstr(text, "eval:\n  tasks: [niah, multihop]\n  lengths: [1024, 2097152, 1073741824]\n"), "%s", text);
    cr_assert_eq(hae_config_parse(text, strlen(text), "back.yaml", NULL, 0, back), HAE_OK, "%s", hae_last_error());
    cr_expect(!memcmp(c, back, offsetof(hae_config, source)), "the resolved config reads back the same");
    const char *sets[] = {"eval.lengths=1K,4K", "eval.tasks=[multihop]", "eval.probe.topk=2048"};
    cr_assert_eq(hae_config_parse(yaml, strlen(yaml), "t.yaml", sets, 3, c), HAE_OK, "%s", hae_last_error());
    expect_list(&c->eval.lengths, (int64_t[]){1024, 4096}, 2, "--set lengths");
    expect_list(&c->eval.tasks, (int64_t[]){HAE_TASK_MULTIHOP}, 1, "--set tasks");
    expect_list(&c->eval.probe.topk, (int64_t[]){2048}, 1, "--set topk");
    free(text), free(c), free(back);
}

/* eval.circuit: kinds an axis (each once), hop_kinds a pattern (kinds may repeat, none by default), both read
 * back from the resolved config and set by --set as comma-separated scalars. */
Test(eval_config, circuit_kinds_and_hop_patterns) {
    hae_config *c = cfg_new(), *back = cfg_new();
    const char *yaml = "eval:\n  circuit:\n    kinds: [swa, dsa]\n    hop_kinds: [dsa, full, dsa]\n    code_dim: 128\n"
                       "    window: 512\n    topk: 8\n    log_decay: -1.0e-3\n    decode: true\n";
    tu_config(yaml, c);
    expect_list(&c->eval.circuit.kinds, (int64_t[]){HAE_LAYER_SWA, HAE_LAYER_DSA}, 2, "kinds");
    expect_list(&c->eval.circuit.hop_kinds, (int64_t[]){HAE_LAYER_DSA, HAE_LAYER_FULL, HAE_LAYER_DSA}, 3, "hop kinds");
    cr_expect(c->eval.circuit.code_dim == 128 && c->eval.circuit.window == 512 && c->eval.circuit.topk == 8 &&
              c->eval.circuit.log_decay == -1.0e-3f && c->eval.circuit.decode);
    for (int empty = 0; empty < 2; empty++) {
        char *text = NULL;
        if (empty) tu_config("name: x\n", c);
        cr_assert_eq(hae_config_to_yaml(c, &text), HAE_OK);
        cr_expect(strstr(text, empty ? "    hop_kinds: []\n" : "    hop_kinds: [dsa, full, dsa]\n"), "%s", text);
        cr_assert_eq(hae_config_parse(text, strlen(text), "back.yaml", NULL, 0, back), HAE_OK, "%s", hae_last_error());
        cr_expect(!memcmp(c, back, offsetof(hae_config, source)), "the resolved config reads back the same");
        free(text);
    }
    const char *sets[] = {"eval.circuit.hop_kinds=swa,swa", "eval.circuit.kinds=linear"};
    cr_assert_eq(hae_config_parse(yaml, strlen(yaml), "t.yaml", sets, 2, c), HAE_OK, "%s", hae_last_error());
    expect_list(&c->eval.circuit.hop_kinds, (int64_t[]){HAE_LAYER_SWA, HAE_LAYER_SWA}, 2, "--set hop kinds");
    expect_list(&c->eval.circuit.kinds, (int64_t[]){HAE_LAYER_LINEAR}, 1, "--set kinds");
    free(c), free(back);
}

/* A model whose vocabulary cannot hold the default grid (32 pairs among 64 noise tokens) still loads, written
 * back out and read again, and sweeps: the grid is only checked where the eval section is changed. */
Test(eval_config, defaults_need_not_fit_a_small_model) {
    hae_config *c = cfg_new(), *back = cfg_new(), *job = cfg_new();
    tu_config("model:\n  vocab_size: 100\nsweep:\n  model.d_model: [64, 128]\n", c);
    char *text = NULL;
    cr_assert_eq(hae_config_to_yaml(c, &text), HAE_OK);
    cr_expect_eq(hae_config_parse(text, strlen(text), "back.yaml", NULL, 0, back), HAE_OK, "%s", hae_last_error());
    cr_expect_eq(hae_config_sweep_job(c, 1, job, NULL, 0), HAE_OK, "%s", hae_last_error());
    free(text), free(c), free(back), free(job);
}

typedef struct bad_case {
    const char *name, *yaml;
    const char *where; /* "t.yaml:LINE:COL:" or "--set ...:" */
    const char *path;
    const char *word;
    const char *set; /* an override, or NULL */
} bad_case;

static const bad_case bad[] = {
    {"task unknown", "eval:\n  tasks: [mqar, mqr]\n", "t.yaml:2:17:", "eval.tasks[1]", "unknown value 'mqr'; did you mean 'mqar'?", NULL},
    {"task quoted", "eval:\n  tasks: [\"mqar\"]\n", "t.yaml:2:11:", "eval.tasks[0]", "expected a name, got the quoted string", NULL},
    {"length short", "eval:\n  lengths: [32]\n", "t.yaml:2:13:", "eval.lengths[0]", "32 is out of range (expected 64..2147483647)", NULL},
    {"length 2G", "eval:\n  lengths: [2G]\n", "t.yaml:2:13:", "eval.lengths[0]", "2G is out of range", NULL},
    {"length suffix", "eval:\n  lengths: [4k]\n", "t.yaml:2:13:", "eval.lengths[0]", "expected an integer (a K, M or G suffix", NULL},
    {"length twice", "eval:\n  lengths: [1K, 1024]\n", "t.yaml:2:17:", "eval.lengths[1]", "'1024' is listed twice", NULL},
    {"lengths empty", "eval:\n  lengths: []\n", "t.yaml:2:12:", "eval.lengths", "expected a non-empty list such as [256, 1024, 4096]", NULL},
    {"lengths map", "eval:\n  lengths: {a: 1}\n", "t.yaml:2:12:", "eval.lengths", "expected a list such as", NULL},
    {"lengths item list", "eval:\n  lengths: [[256]]\n", "t.yaml:2:13:", "eval.lengths[0]", "expected an integer, got a list", NULL},
    {"lengths scalar item", "eval:\n  lengths: 256, , 512\n", "t.yaml:2:12:", "eval.lengths[1]", "got ''", NULL},
    {"hops 0", "eval:\n  hops: [0]\n", "t.yaml:2:10:", "eval.hops[0]", "0 is out of range (expected 1..1024)", NULL},
    {"too many", "eval:\n  pairs: [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33]\n",
     "t.yaml:2:98:", "eval.pairs", "more than 32 values", NULL},
    {"chains negative", "eval:\n  chains: [-1]\n", "t.yaml:2:12:", "eval.chains[0]", "-1 is out of range", NULL},
    {"form", "eval:\n  form: lists\n", "t.yaml:2:9:", "eval.form", "'lists' is not allowed (expected one of: follow, list)", NULL},
    {"seeds 0", "eval:\n  seeds: 0\n", "t.yaml:2:10:", "eval.seeds", "0 is out of range (expected 1..10000)", NULL},
    {"power", "eval:\n  power: -1\n", "t.yaml:2:10:", "eval.power", "-1 is out of range (expected >= 0)", NULL},
    {"unknown key", "eval:\n  lenghts: [256]\n", "t.yaml:2:3:", "eval.lenghts", "did you mean 'lengths'?", NULL},
    {"probe kind", "eval:\n  probe:\n    kinds: [fulll]\n", "t.yaml:3:13:", "eval.probe.kinds[0]", "did you mean 'full'?", NULL},
    {"probe swa", "eval:\n  probe:\n    kinds: [full, swa]\n", "t.yaml:3:12:", "eval.probe.kinds", "swa is not probed", NULL},
    {"probe dsa K", "eval:\n  probe:\n    kinds: [dsa]\n    K: [64, 256]\n", "t.yaml:4:8:", "eval.probe.K",
     "K 256 exceeds 128, the head dim of the dsa probe's indexer", NULL},
    {"probe f16", "eval:\n  probe:\n    index_dtype: f16\n", "t.yaml:3:18:", "eval.probe.index_dtype", "'f16' is not allowed", NULL},
    {"probe dtype", "eval:\n  probe:\n    index_dtype: fp4\n", "t.yaml:3:18:", "eval.probe.index_dtype", "'fp4' is not allowed", NULL},
    {"key cos 1", "eval:\n  probe:\n    key_cos: 1\n", "t.yaml:3:14:", "eval.probe.key_cos", "1 is out of range (expected [0, 1))", NULL},
    {"log decay", "eval:\n  probe:\n    log_decay: 0.5\n", "t.yaml:3:16:", "eval.probe.log_decay", "out of range", NULL},
    {"circuit kind", "eval:\n  circuit:\n    kinds: [swa, dsx]\n", "t.yaml:3:18:", "eval.circuit.kinds[1]",
     "unknown value 'dsx'; did you mean 'dsa'?", NULL},
    {"circuit kind twice", "eval:\n  circuit:\n    kinds: [swa, swa]\n", "t.yaml:3:18:", "eval.circuit.kinds[1]",
     "'swa' is listed twice", NULL},
    {"circuit kinds empty", "eval:\n  circuit:\n    kinds: []\n", "t.yaml:3:12:", "eval.circuit.kinds",
     "expected a non-empty list", NULL},
    {"hop kinds map", "eval:\n  circuit:\n    hop_kinds: {dsa: 1}\n", "t.yaml:3:16:", "eval.circuit.hop_kinds",
     "expected a list such as [full, dsa]", NULL},
    {"hop kind", "eval:\n  circuit:\n    hop_kinds: [dsa, ful]\n", "t.yaml:3:22:", "eval.circuit.hop_kinds[1]",
     "did you mean 'full'?", NULL},
    {"code dim", "eval:\n  circuit:\n    code_dim: 129\n", "t.yaml:3:15:", "eval.circuit.code_dim",
     "129 is out of range (expected 1..128)", NULL},
    {"circuit window", "eval:\n  circuit:\n    window: -2\n", "t.yaml:3:13:", "eval.circuit.window", "out of range", NULL},
    {"circuit decay", "eval:\n  circuit:\n    log_decay: 1\n", "t.yaml:3:16:", "eval.circuit.log_decay", "out of range",
     NULL},
    /* the grid against the model: the set key the check blames carries the task generator's reason */
    {"too short", "eval:\n  lengths: [64, 128]\n", "t.yaml:2:12:", "eval.lengths",
     "eval task mqar, length 64, 32 pairs: hae_task_mqar: length 64 is too short for 32 pairs", NULL},
    {"vocab room", "model:\n  vocab_size: 100\neval:\n  tasks: [niah]\n", "t.yaml:4:10:", "eval.tasks",
     "leaves 14 distinct keys and values", NULL},
    {"pairs below hops", "eval:\n  tasks: [multihop]\n  pairs: [2]\n  hops: [4]\n", "t.yaml:3:10:", "eval.pairs",
     "pairs 2 < hops, so pairs / hops is no whole chain", NULL},
    {"queries", "eval:\n  tasks: [multihop]\n  chains: [4]\n  queries: 5\n", "t.yaml:3:11:", "eval.chains",
     "queries 5 must be in [0, chains = 4]", NULL},
    {"eval vocab", "eval:\n  vocab: 40\n", "t.yaml:2:10:", "eval.vocab", "vocab 40 leaves no room", NULL},
    {"set blamed", "eval:\n  lengths: [1K]\n", "--set eval.pairs=[400]:", "eval.pairs", "pairs 400 > 220", "eval.pairs=[400]"},
    {"set list", "name: x\n", "--set eval.hops=1,x:", "eval.hops[1]", "expected an integer", "eval.hops=1,x"},
    {"sweep job", "eval:\n  tasks: [mqar]\nsweep:\n  eval.pairs: [8, 300]\n", "t.yaml:4:19:", "eval.pairs", "sweep job 2/2", NULL},
};

Test(eval_config, bad_values_name_the_place_and_the_key) {
    hae_config *c = cfg_new();
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        const bad_case *b = &bad[i];
        tu_expect_bad_config(b->name, b->yaml, b->set, b->where, b->path, b->word, c);
    }
    free(c);
}

Test(eval_config, presets_load_and_their_grids_generate) {
    const char *presets[] = {"probe.yaml", "circuits.yaml", "multihop.yaml"};
    const int64_t points[] = {8 + 8 + 32, 4 + 16, 5 * 4}; /* mqar, niah: pairs x lengths; multihop: x hops */
    hae_config *c = cfg_new();
    for (int i = 0; i < 3; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/configs/eval/%s", HAE_SOURCE_DIR, presets[i]);
        cr_assert_eq(hae_config_load(path, NULL, 0, c), HAE_OK, "%s", hae_last_error());
        hae_eval_point *p = NULL;
        int64_t n = 0;
        cr_assert_eq(hae_eval_grid(c, &p, &n), HAE_OK, "%s", hae_last_error());
        cr_expect_eq(n, points[i], "%s: %lld points", presets[i], (long long)n);
        for (int64_t k = 0; k < n; k++) cr_expect_eq(hae_eval_task(c, &p[k], 1, NULL), HAE_OK, "%s", hae_last_error());
        free(p);
    }
    cr_expect(c->eval.lengths.v[4] == 1 << 20 && c->eval.hops.n == 4 && c->eval.hops.v[3] == 8, "multihop: up to 1M, 8 hops");
    free(c);
}

Test(eval_config, help_documents_every_eval_key) {
    hae_config *c = cfg_new();
    tu_config("name: x\n", c);
    char *yaml = NULL, *help = NULL;
    size_t n = 0;
    cr_assert_eq(hae_config_to_yaml(c, &yaml), HAE_OK);
    FILE *p = popen(HAE_CLI " eval --help", "r"), *m = open_memstream(&help, &n);
    cr_assert(p && m);
    for (int ch; (ch = fgetc(p)) != EOF;) fputc(ch, m);
    cr_expect_eq(pclose(p), 0, "hae eval --help exits 0");
    fclose(m);
    /* every key of the resolved eval section, by its dotted name */
    char section[2][64] = {"", ""};
    int keys = 0;
    for (char *line = strstr(yaml, "\neval:\n") + 7; *line == ' '; line = strchr(line, '\n') + 1) {
        int depth = (int)strspn(line, " ") / 2;
        char key[64], dotted[200];
        sscanf(line + 2 * depth, "%63[^:]", key);
        if (line[2 * depth + strlen(key) + 1] == '\n') {
            snprintf(section[depth - 1], sizeof section[0], "%s", key);
            continue;
        }
        snprintf(dotted, sizeof dotted, "eval.%s%s%s", depth > 1 ? section[0] : "", depth > 1 ? "." : "", key);
        cr_expect(strstr(help, dotted), "hae eval --help does not name %s", dotted);
        keys++;
    }
    cr_expect_eq(keys, 26, "the eval section has %d keys", keys);
    free(yaml), free(help), free(c);
}

/* Eval reports (eval/report.c, eval/chart.c): results tables merged (columns united, a run column, quoted cells
 * kept), recall pivoted by length and by hops with rows alike at one x pooled, the SVG charts written and
 * well-formed, bad tables refused, and a config flattened into CSV columns. */
#include "testutil.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *s = NULL;
    size_t n = 0;
    FILE *m = open_memstream(&s, &n);
    int c;
    while ((c = fgetc(f)) != EOF) fputc(c, m);
    fclose(f), fclose(m);
    return s;
}

static void spit(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    cr_assert(f, "cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

static int count(const char *s, const char *needle) {
    int n = 0;
    for (const char *p = s; (p = strstr(p, needle)); p += strlen(needle)) n++;
    return n;
}

/* Well-formed enough for a browser: one <svg> root, every element closed in order, attribute values quoted,
 * text free of raw '<' and of '&' outside entities. Returns NULL or what is wrong. */
static const char *svg_problem(const char *s) {
    static char why[256];
    const char *stack[64];
    size_t len[64];
    int depth = 0, roots = 0;
    if (strncmp(s, "<svg ", 5)) return "does not start with <svg";
    for (const char *p = s; *p;) {
        if (*p == '&') {
            size_t e = strspn(p + 1, "abcdefghijklmnopqrstuvwxyz#0123456789");
            if (p[1 + e] != ';') return "a raw '&'";
            p += e + 2;
            continue;
        }
        if (*p != '<') {
            if (*p == '>') return "a raw '>' in text";
            if (!depth && *p != '\n') return "text outside the root";
            p++;
            continue;
        }
        const char *end = strchr(p, '>');
        if (!end) return "an unclosed tag";
        for (const char *q = p + 1; q < end; q++)
            if (*q == '<') return "'<' inside a tag";
            else if (*q == '=' && q[1] != '"') return "an unquoted attribute";
        if (p[1] == '/') {
            size_t n = strcspn(p + 2, " >");
            if (!depth || n != len[depth - 1] || strncmp(p + 2, stack[depth - 1], n)) {
                snprintf(why, sizeof why, "</%.*s> closes the wrong element", (int)n, p + 2);
                return why;
            }
            depth--;
        } else if (end[-1] != '/') {
            if (depth == 64) return "nested too deep";
            if (!depth) roots++;
            stack[depth] = p + 1, len[depth] = strcspn(p + 1, " >"), depth++;
        }
        p = end + 1;
    }
    if (depth) return "an element left open";
    return roots == 1 ? NULL : "more than one root";
}

#define HEAD_A "kind,task,length,pairs,hops,questions,correct,recall,error,backend\n"

Test(eval_report, merges_tables_pools_rows_and_draws_charts) {
    char dir[512], a[600], b[600], merged[600], path[700];
    tu_tmp_path("report", dir, sizeof dir);
    mkdir(dir, 0755);
    snprintf(a, sizeof a, "%s/a.csv", dir), snprintf(b, sizeof b, "%s/b.csv", dir);
    snprintf(merged, sizeof merged, "%s/merged.csv", dir);
    /* run a: full and kda by length; a multihop pair of hops; a failed row (no recall) */
    spit(a, HEAD_A
         "full,mqar,256,16,,16,16,1.000000,,cpu\n"
         "full,mqar,1024,16,,16,12,0.750000,,cpu\n"
         "kda,mqar,256,16,,16,8,0.500000,,cpu\n"
         "kda,multihop,256,8,1,8,4,0.500000,,cpu\n"
         "kda,multihop,256,8,2,8,2,0.250000,,cpu\n"
         "kda,mqar,4096,16,,,,,\"boom, \"\"quoted\"\"\",cpu\n");
    /* run b: another column (a missing cell is an empty one), another backend, and full at 1024 again: pooled
     * with a's (12 + 4 of 32) */
    spit(b, "kind,task,length,pairs,hops,questions,correct,recall,note,backend\n"
            "full,mqar,1024,16,,16,4,0.250000,,cuda\n"
            "full,mqar,4096,16,,16,16,1.000000,,cuda\n"
            "kda,niah,256,4,,4,4,1.000000,\"a, b\",cuda\n");
    char *md = NULL;
    size_t md_n = 0;
    FILE *f = open_memstream(&md, &md_n);
    hae_eval_report_args args = {.inputs = (const char *const[]){a, b}, .runs = (const char *const[]){"ra", "rb"},
                                 .n_inputs = 2, .title = "t & <t>", .merged_csv = merged, .svg_dir = dir};
    cr_assert_eq(hae_eval_report(&args, f), HAE_OK, "%s", hae_last_error());
    fclose(f);
    fprintf(stderr, "%s", md);

    char *csv = slurp(merged);
    cr_assert(csv, "no %s", merged);
    cr_expect(!strncmp(csv, "run,kind,task,length,pairs,hops,questions,correct,recall,error,backend,note\n", 76),
              "header: %.100s", csv);
    cr_expect(strstr(csv, "\nra,kda,mqar,4096,16,,,,,\"boom, \"\"quoted\"\"\",cpu,\n"), "quoted cell kept:\n%s", csv);
    cr_expect(strstr(csv, "\nrb,full,mqar,1024,16,,16,4,0.250000,,cuda,\n"), "b's row under the united columns:\n%s", csv);
    cr_expect(strstr(csv, "\nrb,kda,niah,256,4,,4,4,1.000000,,cuda,\"a, b\"\n"), "b's quoted note:\n%s", csv);
    cr_expect_eq(count(csv, "\n"), 10, "a header and 9 rows:\n%s", csv);

    /* by length: full pools 1024 over both runs (16 of 32) although the backends differ; kda's 4096 failed */
    cr_expect(strstr(md, "### recall by length\n\n| kind, task, pairs, hops | 256 | 1K | 4K |\n"), "length header:\n%s", md);
    cr_expect(strstr(md, "| full, mqar, 16, - | 1.000 | 0.500 | 1.000 |\n"), "full's row:\n%s", md);
    cr_expect(strstr(md, "| kda, mqar, 16, - | 0.500 | | |\n"), "kda's row:\n%s", md);
    cr_expect(strstr(md, "| kda, multihop, 8, 2 | 0.250 | | |\n"), "multihop's row:\n%s", md);
    cr_expect(strstr(md, "### recall by hops\n\n| series | 1 | 2 |\n|---|---:|---:|\n| all | 0.500 | 0.250 |\n"),
              "hops:\n%s", md);

    const char *charts[2] = {"recall_vs_length.svg", "recall_vs_hops.svg"};
    const int series[2] = {5, 1};
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, charts[i]);
        char *svg = slurp(path);
        cr_assert(svg, "no %s", path);
        const char *why = svg_problem(svg);
        cr_expect(!why, "%s: %s", charts[i], why ? why : "");
        cr_expect(strstr(svg, "t &amp; &lt;t&gt;"), "%s: the title escaped", charts[i]);
        /* one polyline per series of two or more points, a dot per point */
        cr_expect_eq(count(svg, "<polyline"), 1, "%s polylines", charts[i]);
        cr_expect_eq(count(svg, "<text x=\"116\""), series[i], "%s: %d legend entries", charts[i], series[i]);
        free(svg);
    }
    free(csv), free(md);

    /* one hop count: no hops chart, no hops table */
    char solo[600];
    snprintf(solo, sizeof solo, "%s/solo", dir);
    mkdir(solo, 0755);
    md = NULL;
    f = open_memstream(&md, &md_n);
    args = (hae_eval_report_args){.inputs = (const char *const[]){b}, .n_inputs = 1, .svg_dir = solo};
    cr_assert_eq(hae_eval_report(&args, f), HAE_OK, "%s", hae_last_error());
    fclose(f);
    snprintf(path, sizeof path, "%s/recall_vs_hops.svg", solo);
    cr_expect(!strstr(md, "by hops") && access(path, F_OK) != 0, "no hops:\n%s", md);
    cr_expect(strstr(md, "| kind, task, pairs | 256 | 1K | 4K |\n|---|---:|---:|---:|\n| full, mqar, 16 | | 0.250 | 1.000 |\n"),
              "b alone:\n%s", md);
    free(md);
}

Test(eval_report, bad_tables_are_refused) {
    char dir[512], p[600];
    tu_tmp_path("report-bad", dir, sizeof dir);
    mkdir(dir, 0755);
    struct {
        const char *text, *needle;
        hae_status st;
    } cases[] = {
        {"a,b\n1,\"2\n3\n", ":2: a quoted cell never ends", HAE_ERR_FORMAT},
        {"a,b\n1,\"2\"x\n", ":2: text after a quoted cell", HAE_ERR_FORMAT},
        {"a,b\n1,2,3\n", "row 1 has 3 cells, the header 2", HAE_ERR_FORMAT},
        {"", "no header row", HAE_ERR_FORMAT},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        snprintf(p, sizeof p, "%s/bad%zu.csv", dir, i);
        spit(p, cases[i].text);
        hae_eval_report_args a = {.inputs = (const char *const[]){p}, .n_inputs = 1};
        hae_status st = hae_eval_report(&a, NULL);
        cr_expect_eq(st, cases[i].st, "case %zu: status %d (%s)", i, st, hae_last_error());
        cr_expect(strstr(hae_last_error(), cases[i].needle), "case %zu: \"%s\"", i, hae_last_error());
    }
    hae_eval_report_args a = {.inputs = (const char *const[]){"/nonexistent/results.csv"}, .n_inputs = 1};
    cr_expect_eq(hae_eval_report(&a, NULL), HAE_ERR_IO);
    cr_expect(strstr(hae_last_error(), "/nonexistent/results.csv"), "%s", hae_last_error());
    cr_expect_eq(hae_eval_report(&(hae_eval_report_args){0}, NULL), HAE_ERR_INVALID);
}

Test(eval_report, config_flattens_to_csv_columns) {
    hae_config cfg;
    tu_config("output_dir: \"runs, here\"\nmodel:\n  d_model: 96\n  layer_pattern: [kda, full]\nsweep:\n  seed: [1, 2]\n", &cfg);
    char *keys = NULL, *values = NULL;
    cr_assert_eq(hae_eval_config_csv(&cfg, &keys, &values), HAE_OK, "%s", hae_last_error());
    cr_expect(!strncmp(keys, "name,seed,output_dir,model.vocab_size,model.d_model,", 52), "%s", keys);
    cr_expect(!strncmp(values, "default,1234,\"runs, here\",512,96,", 33), "%s", values);
    cr_expect(strstr(keys, ",model.attention.head_dim,") && strstr(keys, ",memory.cache_tokens"), "%s", keys);
    cr_expect(strstr(values, ",\"[kda, full, kda, full]\","), "the layout quoted: %s", values);
    cr_expect(!strstr(keys, "eval.") && !strstr(keys, "sweep"), "no eval or sweep keys: %s", keys);
    int nk = 1, nv = 1;
    for (const char *k = keys; *k; k++) nk += *k == ',';
    bool quoted = false;
    for (const char *v = values; *v; v++) quoted ^= *v == '"', nv += *v == ',' && !quoted;
    cr_expect_eq(nk, nv, "as many values (%d) as keys (%d)", nv, nk);
    free(keys), free(values);
}

/* `hae eval` with the oracle double and `hae eval --probe`, then `hae report` over both run directories: every
 * file each writes, the oracle's every row at recall 1, the merged table naming both runs, the charts well-formed. */
Test(eval_report, cli_eval_runs_and_report_merge_them) {
    char base[512], cmd[4096], path[700];
    tu_tmp_path("cli", base, sizeof base);
    snprintf(cmd, sizeof cmd,
             "HAE_NO_PROGRESS=1 %s eval --double oracle --backend cpu --task mqar,multihop --lengths 128,256 --hops 1,2 "
             "--pairs 8 --seeds 3 --batch 2 --set runtime.dtype=f32 --set 'model={d_model: 32, n_layers: 2, mlp: "
             "{intermediate_size: 64}, attention: {num_heads: 2, num_kv_heads: 1, head_dim: 16}, linear_attn: "
             "{num_heads: 2, head_dim: 16}}' --out %s/oracle > /dev/null && "
             "HAE_NO_PROGRESS=1 %s eval --probe --backend cpu --kinds full,linear --lengths 128,256 --pairs 8 --seeds 1 "
             "--out %s/probe > /dev/null && %s report %s/oracle %s/probe/ --out %s/merged --title both > /dev/null",
             HAE_CLI, base, HAE_CLI, base, HAE_CLI, base, base, base);
    cr_assert_eq(system(cmd), 0, "%s", cmd);
    const char *files[] = {"oracle/config.resolved.yaml", "oracle/env.json", "oracle/metrics.jsonl", "oracle/results.md",
                           "oracle/recall_vs_length.svg", "oracle/recall_vs_hops.svg", "probe/results.csv",
                           "probe/recall_vs_length.svg", "merged/results.md", "merged/recall_vs_length.svg",
                           "merged/recall_vs_hops.svg"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(path, sizeof path, "%s/%s", base, files[i]);
        char *text = slurp(path);
        cr_expect(text && text[0], "%s is missing or empty", path);
        const char *why = text && strstr(files[i], ".svg") ? svg_problem(text) : NULL;
        cr_expect(!why, "%s: %s", path, why ? why : "");
        free(text);
    }
    /* the oracle's results.csv: 2 tasks' points (mqar 2 lengths; multihop 2 hops x 2 lengths), each recall 1 */
    snprintf(path, sizeof path, "%s/oracle/results.csv", base);
    char *csv = slurp(path);
    cr_assert(csv);
    cr_expect(!strncmp(csv, "task,length,pairs,hops,chains,queries,form,shuffle,power,noise,vocab,seeds,weights,double,"
                            "context,stored_pairs,questions,correct,answers,answers_correct,recall,chance,seconds,"
                            "tokens_per_s,error,job,name,seed,", 183), "header: %.200s", csv);
    int rows = 0;
    for (char *line = strchr(csv, '\n') + 1; *line; line = strchr(line, '\n') + 1, rows++) {
        char *cell = line;
        for (int c = 0; c < 20; c++) cell = strchr(cell, ',') + 1;
        cr_expect(!strncmp(cell, "1.000000,", 9), "row %d: recall %.12s", rows, cell);
        cr_expect(strstr(line, ",untrained (seed 1234),oracle,") < strchr(line, '\n'), "row %d names weights and double", rows);
    }
    cr_expect_eq(rows, 6);
    free(csv);
    snprintf(path, sizeof path, "%s/merged/results.csv", base);
    csv = slurp(path);
    cr_assert(csv);
    cr_expect(!strncmp(csv, "run,task,length,", 16) && strstr(csv, ",kind,") && strstr(csv, "\noracle,mqar,128,") &&
                  strstr(csv, "\nprobe,,mqar,128,") == NULL && strstr(csv, "\nprobe,"),
              "merged: %.300s", csv);
    free(csv);
    snprintf(path, sizeof path, "%s/merged/results.md", base);
    char *md = slurp(path);
    cr_assert(md);
    cr_expect(strstr(md, "`hae report ") && strstr(md, "### recall by length") && strstr(md, "### recall by hops"), "%s", md);
    free(md);
}

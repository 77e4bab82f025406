/* `hae eval --circuit` (engine/cli.c over eval/circuits.c and the eval runner): a small grid of hand-built
 * circuits run end to end, its results.csv read back: full and dsa answer every question; swa exactly the mqar
 * questions whose value lies inside its window, counted here from the same tasks; decode steps score what the
 * prefill spans do, row by row; the run directory holds every file and chart. Bad flags and circuits that cannot
 * be built are refused with a message naming why, before anything is written. */
#include "testutil.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* The grid both runs share: one-hot codes (vocab 72 without noise: 32 mqar keys, 64 multihop variables, in 64
 * dims), so that beyond swa's window no reachable value is in view; power 1.5 asks recent pairs more, so that
 * questions fall on both sides of the window. */
#define GRID "--task mqar,multihop --kinds full,dsa,swa --lengths 192,384 --pairs 12 --hops 1,2 --power 1.5 " \
             "--vocab 72 --noise 0 --window 48 --seeds 3"
static const char *const grid_sets[] = {"eval.tasks=mqar,multihop", "eval.lengths=192,384", "eval.pairs=12",
                                        "eval.hops=1,2", "eval.power=1.5", "eval.vocab=72", "eval.noise_vocab=0",
                                        "eval.seeds=3"};
#define WINDOW 48

/* Runs cmd with stderr and stdout captured into *out (malloc'd); returns its exit status. */
static int run(const char *cmd, char **out) {
    char full[4096];
    snprintf(full, sizeof full, "HAE_NO_PROGRESS=1 %s 2>&1", cmd);
    FILE *p = popen(full, "r");
    size_t n = 0;
    FILE *m = open_memstream(out, &n);
    cr_assert(p && m, "cannot run %s", cmd);
    for (int ch; (ch = fgetc(p)) != EOF;) fputc(ch, m);
    fclose(m);
    int status = pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* results.csv as rows of cells (no cell here holds a comma or a quote: no point fails). */
typedef struct {
    int n_rows, n_cols;
    char *cells[64][40];
    char *text;
} csv;

static void read_csv(const char *path, csv *t) {
    memset(t, 0, sizeof *t);
    FILE *f = fopen(path, "r");
    cr_assert(f, "cannot read %s", path);
    size_t n = 0;
    FILE *m = open_memstream(&t->text, &n);
    for (int ch; (ch = fgetc(f)) != EOF;) fputc(ch, m);
    fclose(f), fclose(m);
    char *line = t->text;
    while (line && *line) {
        cr_assert(t->n_rows < 64, "%s: more than 64 rows", path);
        char *next = strchr(line, '\n');
        if (next) *next++ = '\0';
        int c = 0;
        for (char *cell = line;; c++) {
            cr_assert(c < 40, "%s: more than 40 cells", path);
            t->cells[t->n_rows][c] = cell;
            char *comma = strchr(cell, ',');
            if (!comma) break;
            *comma = '\0', cell = comma + 1;
        }
        if (t->n_rows == 0) t->n_cols = c + 1;
        cr_assert_eq(c + 1, t->n_cols, "%s row %d: %d cells, the header %d", path, t->n_rows, c + 1, t->n_cols);
        t->n_rows++;
        line = next;
    }
}

static const char *at(const csv *t, int row, const char *col) {
    for (int c = 0; c < t->n_cols; c++)
        if (!strcmp(t->cells[0][c], col)) return t->cells[row][c];
    cr_assert_fail("results.csv has no column %s", col);
    return NULL;
}

static int64_t num(const csv *t, int row, const char *col) { return strtoll(at(t, row, col), NULL, 10); }

/* The mqar questions of the point at `length` that swa's window holds: the value written to the asked key lies
 * fewer than WINDOW tokens before the question's key (its attention's query). Sums over the seeds. */
static int64_t inside_window(const hae_config *cfg, int64_t length, int64_t *beyond) {
    const hae_eval_point p = {HAE_TASK_MQAR, length, 12, 1, 0};
    int64_t inside = 0;
    for (uint64_t seed = 1; seed <= (uint64_t)cfg->eval.seeds; seed++) {
        hae_task *t = NULL;
        cr_assert_eq(hae_eval_task(cfg, &p, seed, &t), HAE_OK, "%s", hae_last_error());
        for (int64_t i = 0; i < t->n_queries; i++) {
            int64_t k = 0;
            while (t->pair_key[k] != t->query_key[i]) k++;
            const bool in = t->query_pos[i] - (t->pair_pos[k] + 1) < WINDOW;
            inside += in, *beyond += !in;
        }
        hae_task_free(t);
    }
    return inside;
}

Test(eval_circuit, cli_full_and_dsa_exact_swa_its_window_decode_agrees) {
    char base[512], cmd[2048], path[700], *out = NULL;
    tu_tmp_path("circuit", base, sizeof base);
    snprintf(cmd, sizeof cmd, "%s eval --circuit --backend cpu " GRID " --batch 2 --out %s/prefill", HAE_CLI, base);
    cr_assert_eq(run(cmd, &out), 0, "%s:\n%s", cmd, out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s eval --circuit --backend cpu " GRID " --decode --out %s/decode", HAE_CLI, base);
    cr_assert_eq(run(cmd, &out), 0, "%s:\n%s", cmd, out);
    free(out);

    const char *files[] = {"config.resolved.yaml", "env.json", "metrics.jsonl", "results.md", "recall_vs_length.svg",
                           "recall_vs_hops.svg"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        struct stat st;
        snprintf(path, sizeof path, "%s/prefill/%s", base, files[i]);
        cr_expect(stat(path, &st) == 0 && st.st_size > 0, "%s is missing or empty", path);
    }
    snprintf(path, sizeof path, "%s/prefill/circuit.safetensors", base);
    cr_expect(access(path, F_OK) != 0, "the circuit's weights are removed once loaded");

    hae_config *cfg = malloc(sizeof *cfg);
    cr_assert(cfg);
    const char *dflt = hae_config_default_yaml();
    cr_assert_eq(hae_config_parse(dflt, strlen(dflt), "<default>", grid_sets, sizeof grid_sets / sizeof *grid_sets, cfg),
                 HAE_OK, "%s", hae_last_error());
    csv *pre = malloc(sizeof *pre), *dec = malloc(sizeof *dec);
    cr_assert(pre && dec);
    snprintf(path, sizeof path, "%s/prefill/results.csv", base);
    read_csv(path, pre);
    snprintf(path, sizeof path, "%s/decode/results.csv", base);
    read_csv(path, dec);
    char header[512] = "";
    for (int c = 0; c < pre->n_cols; c++)
        snprintf(header + strlen(header), sizeof header - strlen(header), "%s%s", c ? "," : "", pre->cells[0][c]);
    cr_expect_str_eq(header, "kind,task,length,pairs,hops,chains,queries,form,shuffle,power,noise,vocab,seeds,code_dim,"
                             "code_weight,window,topk,log_decay,decode,backend,context,stored_pairs,questions,correct,"
                             "answers,answers_correct,recall,chance,seconds,tokens_per_s,error,job");
    /* 3 kinds x (mqar 2 lengths + multihop 2 hops x 2 lengths) */
    cr_assert_eq(pre->n_rows, 1 + 18, "%d rows", pre->n_rows - 1);
    cr_assert_eq(dec->n_rows, pre->n_rows, "decode: %d rows", dec->n_rows - 1);
    int64_t inside = 0, beyond = 0, swa_mqar = 0;
    for (int r = 1; r < pre->n_rows; r++) {
        const char *kind = at(pre, r, "kind"), *task = at(pre, r, "task");
        const int64_t length = num(pre, r, "length"), questions = num(pre, r, "questions"), correct = num(pre, r, "correct");
        char what[128];
        snprintf(what, sizeof what, "%s %s length %lld hops %s", kind, task, (long long)length, at(pre, r, "hops"));
        cr_expect_str_empty(at(pre, r, "error"), "%s: %s", what, at(pre, r, "error"));
        cr_expect_str_eq(at(pre, r, "code_weight"), "1", "%s: one-hot codes", what);
        cr_expect(questions > 0, "%s: no questions", what);
        cr_expect_str_eq(at(pre, r, "window"), strcmp(kind, "swa") ? "" : "48", "%s: the window cell", what);
        cr_expect_str_eq(at(pre, r, "topk"), strcmp(kind, "dsa") ? "" : "64", "%s: the top-k cell", what);
        if (strcmp(kind, "swa")) {
            cr_expect_eq(correct, questions, "%s: %lld of %lld questions right", what, (long long)correct,
                         (long long)questions);
            cr_expect_str_eq(at(pre, r, "recall"), "1.000000", "%s", what);
        } else if (!strcmp(task, "mqar")) {
            int64_t far = 0;
            const int64_t want = inside_window(cfg, length, &far);
            cr_expect_eq(correct, want, "%s: %lld right, %lld questions inside the window of %d (%lld beyond)", what,
                         (long long)correct, (long long)want, WINDOW, (long long)far);
            inside += want, beyond += far, swa_mqar++;
        }
        /* decode steps: the same rows, the same questions right */
        cr_expect_str_eq(at(dec, r, "kind"), kind, "decode row %d", r);
        cr_expect_str_eq(at(dec, r, "decode"), "true", "decode row %d", r);
        cr_expect_eq(num(dec, r, "correct"), correct, "%s: decode %lld right, prefill %lld", what,
                     (long long)num(dec, r, "correct"), (long long)correct);
    }
    cr_expect_eq(swa_mqar, 2, "swa's mqar rows");
    cr_expect(inside > 0 && beyond > 0, "questions inside swa's window %lld, beyond it %lld (need both)", (long long)inside,
              (long long)beyond);
    free(pre->text), free(dec->text), free(pre), free(dec), free(cfg);
}

/* Each bad invocation exits 1 with a message holding `word`, and writes no run directory. */
Test(eval_circuit, bad_flags_and_impossible_circuits_are_refused_before_writing) {
    static const struct {
        const char *args, *word;
    } bad[] = {
        {"--circuit --probe", "--probe and --circuit are two modes"},
        {"--circuit --K 32", "--K applies to --probe, not --circuit"},
        {"--circuit --double oracle", "--double applies to model runs, not --circuit"},
        {"--kinds full --double oracle", "--kinds applies to --probe and --circuit, not model runs"},
        {"--probe --hop-kinds dsa", "--hop-kinds applies to --circuit, not --probe"},
        {"--circuit --kinds full --hop-kinds dsa,full", "--kinds and --hop-kinds: give one"},
        {"--circuit --kinds fulll", "eval.circuit.kinds[0]: unknown value 'fulll'; did you mean 'full'?"},
        {"--circuit --kinds full,full", "'full' is listed twice"},
        {"--circuit --hop-kinds dsa,swx", "eval.circuit.hop_kinds[1]: unknown value 'swx'"},
        {"--circuit --code-dim 0", "eval.circuit.code_dim: 0 is out of range (expected 1..128)"},
        {"--circuit --window -1", "eval.circuit.window: -1 is out of range"},
        {"--circuit --log-decay 0.5", "eval.circuit.log_decay: 0.5 is out of range"},
        {"--circuit --window", "--window needs a value"},
        /* what only the circuit can refuse: every one checked on the grid before the run */
        {"--circuit --kinds dsa --code-dim 4", "dsa circuit for mqar (1 hop): hae_circuit_check: vocab 512 has 220 "
                                               "tokens to code; code_dim 4 holds at most 6 codes"},
        {"--circuit --kinds swa --task multihop --hops 1,20 --pairs 40 --lengths 1K",
         "swa circuit for multihop (20 hops): hae_circuit_check: hops 20 outside 1..16 (a retrieval layer per hop)"},
    };
    char base[512], cmd[2048], dir[700];
    tu_tmp_path("circuit-bad", base, sizeof base);
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char *out = NULL;
        snprintf(dir, sizeof dir, "%s-%zu", base, i);
        snprintf(cmd, sizeof cmd, "%s eval %s --backend cpu --out %s", HAE_CLI, bad[i].args, dir);
        const int rc = run(cmd, &out);
        cr_expect_eq(rc, 1, "%s: exit %d\n%s", cmd, rc, out);
        cr_expect(strstr(out, bad[i].word), "%s: the message lacks \"%s\":\n%s", cmd, bad[i].word, out);
        cr_expect(access(dir, F_OK) != 0, "%s wrote %s", cmd, dir);
        free(out);
    }
}

/* The dsa circuit with its K/V in the host tier (memory.dsa_kv: host) and 48 GPU slots per layer: the
 * prefill is staged, each decode step past the slots looks its top-16 (the config's, which the circuit takes
 * without --topk) up in the LRU; every question is still answered, as with the K/V on the GPU tier. */
Test(eval_circuit, dsa_with_host_tier_kv_answers_everything) {
    char base[512], cmd[2048], path[700], *out = NULL;
    tu_tmp_path("circuit-host", base, sizeof base);
    snprintf(cmd, sizeof cmd, "%s eval --circuit --backend cpu --task mqar,multihop --kinds dsa --lengths 384 --pairs 12 "
             "--hops 1,2 --vocab 72 --noise 0 --set model.dsa.index_topk=16 --seeds 2 --decode --set memory.dsa_kv=host "
             "--set memory.cache_tokens=48 --set runtime.prefill_chunk=128 --out %s", HAE_CLI, base);
    cr_assert_eq(run(cmd, &out), 0, "%s:\n%s", cmd, out);
    free(out);
    csv *t = malloc(sizeof *t);
    cr_assert(t);
    snprintf(path, sizeof path, "%s/results.csv", base);
    read_csv(path, t);
    cr_assert_eq(t->n_rows, 1 + 3, "mqar and multihop at 1 and 2 hops: %d rows", t->n_rows - 1);
    for (int r = 1; r < t->n_rows; r++) {
        cr_expect_str_empty(at(t, r, "error"), "row %d: %s", r, at(t, r, "error"));
        cr_expect(num(t, r, "questions") > 0 && num(t, r, "correct") == num(t, r, "questions"),
                  "%s, %s hops: %lld of %lld right with the K/V in the host tier", at(t, r, "task"), at(t, r, "hops"),
                  (long long)num(t, r, "correct"), (long long)num(t, r, "questions"));
    }
    free(t->text), free(t);
}

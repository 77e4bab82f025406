/* The eval suite (eval/): the task generators are deterministic per seed, and an independent solver
 * (hash maps walked over the token stream, from hae.h's layout alone) recovers every answer; the
 * position and token distributions are as specified; bad knobs fail with clear messages; and the
 * mechanism probes show the known facts at small sizes on the CPU, their tables printed to stderr. */
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *xcalloc(size_t n, size_t sz) {
    void *p = calloc(n ? n : 1, sz);
    cr_assert(p, "out of memory (%zu x %zu bytes)", n, sz);
    return p;
}

/* ---------------------------------------------------------------- the independent solver */

/* int32 -> int32, open addressing with linear probing; keys are token ids >= 0. */
typedef struct {
    int32_t *k, *v;
    int64_t cap;
} hmap;

static hmap hmap_make(int64_t n) {
    hmap m = {.cap = 16};
    while (m.cap < 2 * n + 16) m.cap *= 2;
    m.k = xcalloc((size_t)m.cap, sizeof(int32_t)), m.v = xcalloc((size_t)m.cap, sizeof(int32_t));
    for (int64_t i = 0; i < m.cap; i++) m.k[i] = -1;
    return m;
}
static int64_t hmap_slot(const hmap *m, int32_t key) {
    int64_t i = (int64_t)(((uint64_t)key * 0x9E3779B97F4A7C15ull) >> 40) & (m->cap - 1);
    while (m->k[i] != -1 && m->k[i] != key) i = (i + 1) & (m->cap - 1);
    return i;
}
static void hmap_put(hmap *m, int32_t key, int32_t val) {
    int64_t i = hmap_slot(m, key);
    m->k[i] = key, m->v[i] = val;
}
static bool hmap_get(const hmap *m, int32_t key, int32_t *val) {
    int64_t i = hmap_slot(m, key);
    if (m->k[i] != key) return false;
    *val = m->v[i];
    return true;
}
static void hmap_free(hmap *m) { free(m->k), free(m->v); }

typedef struct {
    int64_t n, n_ans;
    int64_t pos[4096], off[4097];
    int32_t ans[16384];
} solution;

/* Walks the sequence once. mqar: a key-range token followed by a value-range token is a write (a
 * later one overwrites); niah: NEEDLE k v; multihop: LINK a b is next[a] = b. QUERY x asks map[x]
 * (mqar, niah) or the end of the chain from x (multihop); LIST x asks every variable after x on its
 * chain. Teacher-forced answers are skipped unread (and checked against the solution). */
static void solve(const hae_task *t, int64_t noise_vocab, solution *s) {
    const int32_t *tok = t->tokens;
    const int64_t n = t->n_tokens, f = HAE_TOK_FIRST + noise_vocab, half = (t->vocab - f) / 2;
    hmap kv = hmap_make(n), next = hmap_make(n), targets = hmap_make(n);
    s->n = 0, s->n_ans = 0, s->off[0] = 0;
    cr_assert_eq(tok[0], HAE_TOK_BOS);
    for (int64_t i = 1; i < n;) {
        int32_t x = tok[i];
        if (x == HAE_TOK_QUERY || x == HAE_TOK_LIST) {
            cr_assert_lt(i + 1, n);
            int32_t a = tok[i + 1], y = a, z;
            int64_t first = s->n_ans;
            s->pos[s->n] = i + 1;
            if (t->kind == HAE_TASK_MULTIHOP) {
                while (hmap_get(&next, y, &z)) {
                    y = z;
                    if (x == HAE_TOK_LIST) s->ans[s->n_ans++] = y;
                }
                if (x == HAE_TOK_QUERY) s->ans[s->n_ans++] = y;
            } else {
                cr_assert(hmap_get(&kv, a, &z), "question at %lld asks key %d that was never written", (long long)i, a);
                s->ans[s->n_ans++] = z;
            }
            for (int64_t j = first; j < s->n_ans; j++)
                cr_assert_eq(tok[i + 2 + j - first], s->ans[j], "teacher-forced answer %lld of the question at %lld",
                             (long long)(j - first), (long long)i);
            s->off[++s->n] = s->n_ans;
            i += 2 + (s->n_ans - first);
        } else if (x == HAE_TOK_LINK) {
            int32_t z;
            cr_assert(!hmap_get(&next, tok[i + 1], &z), "variable %d links twice", tok[i + 1]);
            cr_assert(!hmap_get(&targets, tok[i + 2], &z), "variable %d is assigned twice", tok[i + 2]);
            hmap_put(&next, tok[i + 1], tok[i + 2]);
            hmap_put(&targets, tok[i + 2], 1);
            i += 3;
        } else if (x == HAE_TOK_NEEDLE) {
            hmap_put(&kv, tok[i + 1], tok[i + 2]);
            i += 3;
        } else if (t->kind == HAE_TASK_MQAR && x >= f && x < f + half) {
            cr_assert(tok[i + 1] >= f + half && tok[i + 1] < f + 2 * half, "key %d at %lld is not followed by a value",
                      x, (long long)i);
            hmap_put(&kv, x, tok[i + 1]);
            i += 2;
        } else {
            cr_assert(x == HAE_TOK_PAD || (x >= HAE_TOK_FIRST && x < f), "token %d at %lld is neither filler nor a block",
                      x, (long long)i);
            i++;
        }
    }
    hmap_free(&kv), hmap_free(&next), hmap_free(&targets);
}

static void check_solved(const hae_task *t, int64_t noise_vocab, const char *what) {
    static solution s;
    solve(t, noise_vocab, &s);
    cr_assert_eq(s.n, t->n_queries, "%s: the solver finds %lld questions, the task has %lld", what, (long long)s.n,
                 (long long)t->n_queries);
    for (int64_t i = 0; i < s.n; i++) {
        cr_assert_eq(s.pos[i], t->query_pos[i], "%s: question %lld at %lld vs %lld", what, (long long)i,
                     (long long)s.pos[i], (long long)t->query_pos[i]);
        cr_assert_eq(t->tokens[t->query_pos[i]], t->query_key[i], "%s: query_key %lld", what, (long long)i);
        cr_assert_eq(s.off[i + 1], t->answer_off[i + 1], "%s: question %lld has %lld answers, the task says %lld", what,
                     (long long)i, (long long)(s.off[i + 1] - s.off[i]), (long long)(t->answer_off[i + 1] - t->answer_off[i]));
        for (int64_t j = s.off[i]; j < s.off[i + 1]; j++)
            cr_assert_eq(s.ans[j], t->answers[j], "%s: question %lld answer %lld: solver %d, generator %d", what,
                         (long long)i, (long long)(j - s.off[i]), s.ans[j], t->answers[j]);
    }
    cr_assert_eq(t->answer_off[0], 0);
}

static bool same_task(const hae_task *a, const hae_task *b) {
#define SAME(f, n) (memcmp(a->f, b->f, sizeof(*a->f) * (size_t)(n)) == 0)
    return a->n_tokens == b->n_tokens && a->n_pairs == b->n_pairs && a->n_queries == b->n_queries &&
           a->context == b->context && SAME(tokens, a->n_tokens) && SAME(pair_pos, a->n_pairs) &&
           SAME(pair_key, a->n_pairs) && SAME(pair_value, a->n_pairs) && SAME(query_pos, a->n_queries) &&
           SAME(query_key, a->n_queries) && SAME(answer_off, a->n_queries + 1) &&
           SAME(answers, a->answer_off[a->n_queries]);
#undef SAME
}

/* the generated pair arrays agree with the tokens at their positions */
static void check_pairs(const hae_task *t, const char *what) {
    for (int64_t i = 0; i < t->n_pairs; i++) {
        int64_t p = t->pair_pos[i];
        cr_assert(p > 0 && p < t->context && (i == 0 || p > t->pair_pos[i - 1]), "%s: pair %lld at %lld", what,
                  (long long)i, (long long)p);
        cr_assert_eq(t->tokens[p], t->pair_key[i], "%s: pair %lld key", what, (long long)i);
        cr_assert_eq(t->tokens[p + 1], t->pair_value[i], "%s: pair %lld value (the token after its key)", what, (long long)i);
    }
}

static const int64_t LENGTHS[] = {64, 100, 257, 1024, 4000};
#define N_LENGTHS 5

static hae_mqar_args mqar_case(int64_t L, uint64_t seed) {
    int v = (int)(seed % 4);
    return (hae_mqar_args){.length = L, .vocab = 8 + (v & 1 ? 16 : 0) + 2 * (L / 8 + 8), .pairs = L / 16 + 1,
                           .queries = v == 3 ? L / 64 + 1 : 0, .power = v >= 2 ? 1.5f : 0.0f,
                           .noise_vocab = v & 1 ? 16 : 0, .dup_keys = v == 2, .seed = seed};
}

static hae_multihop_args multihop_case(int64_t L, uint64_t seed) {
    int H = 1 + (int)(seed % 8);
    int64_t C = (L - 1) / (2 * (4 * H + 2));
    if (C < 1) C = 1;
    return (hae_multihop_args){.length = L, .vocab = 8 + 8 + 2 * C * (H + 1) + 5, .hops = H, .chains = C,
                               .queries = seed % 3 == 0 ? 1 : 0, .form = (seed / 8) % 2 ? HAE_HOPS_LIST : HAE_HOPS_FOLLOW,
                               .shuffle = (seed / 16) % 2, .noise_vocab = seed % 5 == 0 ? 0 : 8, .seed = seed};
}

static hae_niah_args niah_case(int64_t L, uint64_t seed) {
    int64_t N = seed % 2 ? 1 : L / 32 + 1;
    return (hae_niah_args){.length = L, .vocab = 8 + 32 + 2 * (N + 3), .needles = N, .queries = seed % 4 == 1 ? 1 : 0,
                           .noise_vocab = 32, .seed = seed};
}

/* ---------------------------------------------------------------- generators: determinism and the solver */

Test(eval, generators_are_deterministic_and_solved) {
    char what[160];
    int64_t tasks = 0;
    for (int li = 0; li < N_LENGTHS; li++)
        for (uint64_t seed = 0; seed < 120; seed++) {
            const int64_t L = LENGTHS[li];
            hae_task *a, *b, *c;
            hae_mqar_args m = mqar_case(L, seed);
            snprintf(what, sizeof what, "mqar length %lld pairs %lld power %g dup %d seed %llu", (long long)L,
                     (long long)m.pairs, (double)m.power, m.dup_keys, (unsigned long long)seed);
            cr_assert_eq(hae_task_mqar(&m, &a), HAE_OK, "%s: %s", what, hae_last_error());
            cr_assert_eq(hae_task_mqar(&m, &b), HAE_OK, "%s: %s", what, hae_last_error());
            m.seed += 1000;
            cr_assert_eq(hae_task_mqar(&m, &c), HAE_OK, "%s: %s", what, hae_last_error());
            cr_assert(same_task(a, b), "%s: two runs differ", what);
            cr_assert(!same_task(a, c), "%s: seed + 1000 gives the same task", what);
            cr_assert_eq(a->n_tokens, L, "%s", what);
            check_pairs(a, what);
            check_solved(a, m.noise_vocab, what);
            hae_task_free(a), hae_task_free(b), hae_task_free(c);

            hae_multihop_args h = multihop_case(L, seed);
            snprintf(what, sizeof what, "multihop length %lld hops %d chains %lld form %d shuffle %d seed %llu",
                     (long long)L, h.hops, (long long)h.chains, (int)h.form, h.shuffle, (unsigned long long)seed);
            cr_assert_eq(hae_task_multihop(&h, &a), HAE_OK, "%s: %s", what, hae_last_error());
            cr_assert_eq(hae_task_multihop(&h, &b), HAE_OK, "%s: %s", what, hae_last_error());
            cr_assert(same_task(a, b), "%s: two runs differ", what);
            cr_assert_eq(a->hops, h.hops, "%s", what);
            check_pairs(a, what);
            check_solved(a, h.noise_vocab, what);
            hae_task_free(a), hae_task_free(b);

            hae_niah_args n = niah_case(L, seed);
            snprintf(what, sizeof what, "niah length %lld needles %lld seed %llu", (long long)L, (long long)n.needles,
                     (unsigned long long)seed);
            cr_assert_eq(hae_task_niah(&n, &a), HAE_OK, "%s: %s", what, hae_last_error());
            cr_assert_eq(hae_task_niah(&n, &b), HAE_OK, "%s: %s", what, hae_last_error());
            cr_assert(same_task(a, b), "%s: two runs differ", what);
            check_pairs(a, what);
            check_solved(a, n.noise_vocab, what);
            hae_task_free(a), hae_task_free(b);
            tasks += 3;
        }
    fprintf(stderr, "generators: %lld tasks (lengths 64..4000, 120 seeds each) deterministic and solved\n", (long long)tasks);
}

/* ---------------------------------------------------------------- distributions */

Test(eval, mqar_keys_distinct_unless_asked_and_overwrites_solved) {
    int64_t dup_tasks = 0;
    for (uint64_t seed = 0; seed < 200; seed++) {
        hae_mqar_args m = {.length = 512, .vocab = 8 + 2 * 48, .pairs = 40, .seed = seed};
        hae_task *t;
        cr_assert_eq(hae_task_mqar(&m, &t), HAE_OK, "%s", hae_last_error());
        uint8_t seen[256] = {0}, vseen[256] = {0};
        for (int64_t i = 0; i < t->n_pairs; i++) {
            cr_assert(!seen[t->pair_key[i]], "seed %llu: key %d written twice without dup_keys", (unsigned long long)seed,
                      t->pair_key[i]);
            cr_assert(!vseen[t->pair_value[i]], "seed %llu: value %d used twice", (unsigned long long)seed, t->pair_value[i]);
            cr_assert(t->pair_key[i] >= t->key_lo && t->pair_key[i] < t->key_hi);
            cr_assert(t->pair_value[i] >= t->value_lo && t->pair_value[i] < t->value_hi);
            seen[t->pair_key[i]] = vseen[t->pair_value[i]] = 1;
        }
        cr_assert_eq(t->n_queries, 40, "queries 0 asks every key");
        hae_task_free(t);

        m.dup_keys = true;
        cr_assert_eq(hae_task_mqar(&m, &t), HAE_OK, "%s", hae_last_error());
        memset(seen, 0, sizeof seen);
        bool dup = false;
        for (int64_t i = 0; i < t->n_pairs; i++) dup = dup || seen[t->pair_key[i]], seen[t->pair_key[i]] = 1;
        dup_tasks += dup;
        check_solved(t, 0, "mqar dup_keys"); /* the solver's map keeps the latest write */
        hae_task_free(t);
    }
    cr_expect_geq(dup_tasks, 190, "dup_keys with 40 pairs over 48 keys repeats a key in %lld of 200 tasks", (long long)dup_tasks);
}

Test(eval, mqar_power_law_queries_favour_short_distances) {
    double mean[2] = {0, 0}, all = 0, near[2] = {0, 0};
    int64_t nq[2] = {0, 0}, np = 0;
    for (uint64_t seed = 0; seed < 100; seed++)
        for (int pw = 0; pw < 2; pw++) {
            hae_mqar_args m = {.length = 4096, .vocab = 1024, .pairs = 64, .queries = 16, .power = pw ? 1.5f : 0.0f,
                               .noise_vocab = 32, .seed = seed};
            hae_task *t;
            cr_assert_eq(hae_task_mqar(&m, &t), HAE_OK, "%s", hae_last_error());
            for (int64_t q = 0; q < t->n_queries; q++) {
                int64_t i = 0;
                while (t->pair_key[i] != t->query_key[q]) i++;
                double d = (double)(t->context - t->pair_pos[i]);
                mean[pw] += d, near[pw] += d < t->context / 8.0;
                nq[pw]++;
            }
            if (!pw)
                for (int64_t i = 0; i < t->n_pairs; i++) all += (double)(t->context - t->pair_pos[i]), np++;
            hae_task_free(t);
        }
    for (int i = 0; i < 2; i++) mean[i] /= (double)nq[i], near[i] /= (double)nq[i];
    all /= (double)np;
    fprintf(stderr, "mqar queries (64 pairs, 16 asked, 4096 tokens): mean distance uniform %.0f, power 1.5 %.0f (all pairs "
            "%.0f); asked within the last 1/8 of the context: uniform %.3f, power %.3f\n", mean[0], mean[1], all, near[0], near[1]);
    cr_expect(fabs(mean[0] / all - 1) < 0.05, "uniform queries: mean distance %.0f vs %.0f over all pairs", mean[0], all);
    cr_expect_lt(mean[1], 0.6 * mean[0], "power-law queries: mean distance %.0f is not well below uniform's %.0f", mean[1], mean[0]);
    cr_expect_gt(near[1], 2 * near[0], "power-law queries: %.3f asked from the last eighth vs uniform %.3f", near[1], near[0]);
}

Test(eval, positions_and_filler_are_uniform) {
    double rel = 0, first_half = 0;
    int64_t n = 0, counts[16] = {0}, filler = 0;
    for (uint64_t seed = 0; seed < 100; seed++) {
        hae_niah_args a = {.length = 2048, .vocab = 8 + 16 + 2 * 40, .needles = 32, .noise_vocab = 16, .seed = seed};
        hae_task *t;
        cr_assert_eq(hae_task_niah(&a, &t), HAE_OK, "%s", hae_last_error());
        for (int64_t i = 0; i < t->n_pairs; i++) {
            double x = (double)t->pair_pos[i] / (double)t->context;
            rel += x, first_half += x < 0.5, n++;
        }
        for (int64_t s = 1; s < t->context; s++)
            if (t->tokens[s] >= t->noise_lo && t->tokens[s] < t->noise_hi) counts[t->tokens[s] - t->noise_lo]++, filler++;
        hae_task_free(t);
    }
    rel /= (double)n, first_half /= (double)n;
    cr_expect(fabs(rel - 0.5) < 0.02 && fabs(first_half - 0.5) < 0.03,
              "needle positions: mean %.3f of the context, %.3f in the first half (want 0.5)", rel, first_half);
    for (int i = 0; i < 16; i++)
        cr_expect(fabs((double)counts[i] / (double)filler - 1.0 / 16) < 0.01, "noise token %d has share %.4f (want 1/16)",
                  i, (double)counts[i] / (double)filler);
}

Test(eval, multihop_chains_disjoint_and_in_hop_order_unless_shuffled) {
    int64_t out_of_order = 0;
    for (uint64_t seed = 0; seed < 100; seed++)
        for (int sh = 0; sh < 2; sh++) {
            hae_multihop_args a = {.length = 1024, .vocab = 256, .hops = 4, .chains = 8, .queries = 3, .shuffle = sh,
                                   .noise_vocab = 8, .seed = seed};
            hae_task *t;
            cr_assert_eq(hae_task_multihop(&a, &t), HAE_OK, "%s", hae_last_error());
            cr_assert_eq(t->n_queries, 3);
            cr_assert_eq(t->n_pairs, 32);
            /* every chain: a0 -> ... -> a4 through the links; in hop order unless shuffled */
            for (int64_t q = 0; q < t->n_queries; q++) {
                int32_t x = t->query_key[q];
                int64_t last = -1;
                bool ordered = true;
                for (int h = 0; h < 4; h++) {
                    int64_t i = 0;
                    while (i < t->n_pairs && t->pair_key[i] != x) i++;
                    cr_assert_lt(i, t->n_pairs, "seed %llu: chain broken at hop %d", (unsigned long long)seed, h);
                    ordered = ordered && t->pair_pos[i] > last;
                    last = t->pair_pos[i], x = t->pair_value[i];
                }
                cr_assert_eq(x, t->answers[q], "follow form: the answer is a4");
                if (!sh) cr_assert(ordered, "seed %llu: links out of hop order without shuffle", (unsigned long long)seed);
                out_of_order += !ordered;
            }
            hae_task_free(t);
        }
    cr_expect_gt(out_of_order, 100, "shuffle put only %lld of 300 chains out of hop order", (long long)out_of_order);
}

/* ---------------------------------------------------------------- bad knobs */

static void expect_error(hae_status got, hae_status want, const char *needle, const char *what) {
    cr_expect_eq(got, want, "%s: status %s, expected %s (%s)", what, hae_status_name(got), hae_status_name(want),
                 hae_last_error());
    cr_expect(strstr(hae_last_error(), needle) != NULL, "%s: message \"%s\" does not name \"%s\"", what, hae_last_error(),
              needle);
}

Test(eval, bad_knobs_give_clear_errors) {
    hae_task *t = (hae_task *)&t;
    const hae_mqar_args m = {.length = 256, .vocab = 256, .pairs = 16, .seed = 1};
    hae_mqar_args x;
#define MQAR(field, value, needle)                                                                                  \
    x = m, x.field = value, t = (hae_task *)&t;                                                                     \
    expect_error(hae_task_mqar(&x, &t), HAE_ERR_INVALID, needle, "mqar " #field " = " #value);                      \
    cr_expect_null(t, "a failed generator leaves *out NULL");
    MQAR(length, 63, "length 63");
    MQAR(pairs, 0, "pairs 0");
    MQAR(pairs, 125, "pairs 125 > 124");
    MQAR(queries, 17, "queries 17");
    MQAR(power, -1.0f, "power -1");
    MQAR(power, NAN, "power nan");
    MQAR(noise_vocab, -2, "noise_vocab -2");
    MQAR(vocab, 9, "vocab 9");
    MQAR(length, 80, "length 80 is too short for 16 pairs");
#undef MQAR
    expect_error(hae_task_mqar(NULL, &t), HAE_ERR_INVALID, "NULL", "mqar NULL args");
    /* dup_keys: asking more keys than were written is caught once the keys are drawn */
    bool caught = false;
    for (uint64_t s = 0; s < 16 && !caught; s++) {
        hae_mqar_args d = {.length = 256, .vocab = 8 + 8, .pairs = 4, .queries = 4, .dup_keys = true, .seed = s};
        hae_status st = hae_task_mqar(&d, &t);
        if (st == HAE_OK) hae_task_free(t);
        else caught = true, expect_error(st, HAE_ERR_INVALID, "distinct keys", "mqar dup_keys queries 4");
    }
    cr_expect(caught, "dup_keys with 4 pairs over 4 keys never repeated a key in 16 seeds");

    const hae_multihop_args h = {.length = 256, .vocab = 256, .hops = 2, .chains = 8, .seed = 1};
    hae_multihop_args y;
#define HOPS(field, value, needle)                                                                                  \
    y = h, y.field = value;                                                                                         \
    expect_error(hae_task_multihop(&y, &t), HAE_ERR_INVALID, needle, "multihop " #field " = " #value);
    HOPS(hops, 0, "hops 0 < 1");
    HOPS(chains, 0, "chains 0 < 1");
    HOPS(chains, 100, "100 chains of 2 hops need 300 distinct variables");
    HOPS(queries, 9, "queries 9");
    HOPS(form, (hae_hops_form)7, "form 7");
    HOPS(length, 64, "length 64 is too short for 8 chains of 2 hops");
    HOPS(noise_vocab, 250, "noise_vocab 250");
#undef HOPS

    const hae_niah_args n = {.length = 256, .vocab = 64, .needles = 4, .seed = 1};
    hae_niah_args z;
#define NIAH(field, value, needle)                                                                                  \
    z = n, z.field = value;                                                                                         \
    expect_error(hae_task_niah(&z, &t), HAE_ERR_INVALID, needle, "niah " #field " = " #value);
    NIAH(needles, 0, "needles 0");
    NIAH(needles, 29, "needles 29 > 28");
    NIAH(queries, 5, "queries 5");
    NIAH(length, 20, "length 20");
#undef NIAH

    /* probes */
    hae_backend *be = tu_cpu();
    hae_task *task;
    hae_mqar_args ok = {.length = 256, .vocab = 256, .pairs = 16, .noise_vocab = 8, .seed = 2};
    cr_assert_eq(hae_task_mqar(&ok, &task), HAE_OK, "%s", hae_last_error());
    hae_probe_result r;
    hae_probe_args p;
#define PROBE(kind, field, value, want, needle)                                                                     \
    p = hae_probe_defaults(kind), p.field = value;                                                                  \
    expect_error(hae_probe_run(be, &p, task, &r), want, needle, "probe " #kind " " #field " = " #value);
    PROBE(HAE_LAYER_SWA, K, 64, HAE_ERR_UNSUPPORTED, "kind swa is not probed");
    PROBE(HAE_LAYER_FULL, kind, (hae_layer_kind)99, HAE_ERR_INVALID, "kind 99");
    PROBE(HAE_LAYER_FULL, K, 0, HAE_ERR_INVALID, "K = 0");
    PROBE(HAE_LAYER_KDA, V, -3, HAE_ERR_INVALID, "V = -3");
    PROBE(HAE_LAYER_DSA, topk, 0, HAE_ERR_INVALID, "topk 0 < 1");
    PROBE(HAE_LAYER_DSA, K, 256, HAE_ERR_INVALID, "K = 256 exceeds the indexer's D_I = 128");
    PROBE(HAE_LAYER_DSA, index_dtype, HAE_I32, HAE_ERR_INVALID, "index_dtype i32");
    PROBE(HAE_LAYER_FULL, key_cos, 1.0, HAE_ERR_INVALID, "key_cos 1");
    PROBE(HAE_LAYER_FULL, key_cos, -0.1, HAE_ERR_INVALID, "key_cos -0.1");
    PROBE(HAE_LAYER_FULL, scale, 0.0f, HAE_ERR_INVALID, "scale 0");
    PROBE(HAE_LAYER_GLA, log_decay, 0.5f, HAE_ERR_INVALID, "log_decay 0.5");
    PROBE(HAE_LAYER_DELTANET, beta_logit, INFINITY, HAE_ERR_INVALID, "beta_logit inf");
    PROBE(HAE_LAYER_LINEAR, values, HAE_CODE_ONEHOT, HAE_ERR_INVALID, "need V >= the task's 120 value tokens, V = 64");
    PROBE(HAE_LAYER_DELTANET, chunk, 7, HAE_ERR_INVALID, "chunk 7");
#undef PROBE
    p = hae_probe_defaults(HAE_LAYER_DELTANET), p.K = 16, p.orthogonal = true;
    expect_error(hae_probe_run(be, &p, task, &r), HAE_ERR_INVALID, "more than K = 16", "probe orthogonal keys > K");
    p = hae_probe_defaults(HAE_LAYER_FULL);
    expect_error(hae_probe_run(be, &p, NULL, &r), HAE_ERR_INVALID, "must not be NULL", "probe NULL task");
    expect_error(hae_probe_report(NULL, 3, stderr, NULL), HAE_ERR_INVALID, "3 results", "report NULL results");
    hae_task_free(task);
    hae_backend_destroy(be);
}

/* ---------------------------------------------------------------- probes */

static hae_backend *probe_be;
static void probe_setup(void) { probe_be = tu_cpu(); }
static void probe_teardown(void) { hae_backend_destroy(probe_be); }
TestSuite(probe, .init = probe_setup, .fini = probe_teardown);

/* Runs p on `seeds` tasks (seed varies task and codes) and returns the pooled result. */
static hae_probe_result pooled(const hae_probe_args *p0, hae_task_kind kind, const void *args, int seeds) {
    hae_probe_result sum = {0}, r;
    for (int s = 0; s < seeds; s++) {
        hae_task *t;
        hae_status st;
        if (kind == HAE_TASK_MQAR) {
            hae_mqar_args a = *(const hae_mqar_args *)args;
            a.seed += (uint64_t)s;
            st = hae_task_mqar(&a, &t);
        } else if (kind == HAE_TASK_MULTIHOP) {
            hae_multihop_args a = *(const hae_multihop_args *)args;
            a.seed += (uint64_t)s;
            st = hae_task_multihop(&a, &t);
        } else {
            hae_niah_args a = *(const hae_niah_args *)args;
            a.seed += (uint64_t)s;
            st = hae_task_niah(&a, &t);
        }
        cr_assert_eq(st, HAE_OK, "%s", hae_last_error());
        hae_probe_args p = *p0;
        p.seed += 7919u * (uint64_t)s;
        cr_assert_eq(hae_probe_run(probe_be, &p, t, &r), HAE_OK, "%s", hae_last_error());
        if (s == 0) sum = r, sum.queries = sum.correct = 0;
        sum.queries += r.queries, sum.correct += r.correct;
        hae_task_free(t);
    }
    sum.recall = (double)sum.correct / (double)sum.queries;
    return sum;
}

static void print_table(const char *title, const hae_probe_result *r, int64_t n) {
    fprintf(stderr, "\n%s\n", title);
    cr_assert_eq(hae_probe_report(r, n, stderr, NULL), HAE_OK, "%s", hae_last_error());
}

static const hae_layer_kind ALL_KINDS[] = {HAE_LAYER_FULL, HAE_LAYER_DSA, HAE_LAYER_KDA, HAE_LAYER_GDN,
                                           HAE_LAYER_DELTANET, HAE_LAYER_GLA, HAE_LAYER_LINEAR, HAE_LAYER_MAMBA2,
                                           HAE_LAYER_RETNET};

Test(probe, full_and_dsa_recall_at_every_length) {
    static const int64_t lengths[] = {256, 1024, 4096, 16384};
    hae_probe_result res[4 * 9];
    int n = 0;
    for (int li = 0; li < 4; li++)
        for (int k = 0; k < 9; k++) {
            hae_mqar_args a = {.length = lengths[li], .vocab = 1024, .pairs = 32, .noise_vocab = 64, .seed = 100};
            hae_probe_args p = hae_probe_defaults(ALL_KINDS[k]);
            if (ALL_KINDS[k] != HAE_LAYER_FULL && ALL_KINDS[k] != HAE_LAYER_DSA) {
                if (lengths[li] > 4096) continue; /* the table shows the linear kinds' trend up to 4K */
                if (hae_linear_kind_of(ALL_KINDS[k], &(hae_linear_kind){0}) && ALL_KINDS[k] != HAE_LAYER_DELTANET &&
                    ALL_KINDS[k] != HAE_LAYER_LINEAR)
                    p.log_decay = -1e-3f;
            }
            res[n] = pooled(&p, HAE_TASK_MQAR, &a, 2);
            if (ALL_KINDS[k] == HAE_LAYER_FULL || ALL_KINDS[k] == HAE_LAYER_DSA)
                cr_expect_geq(res[n].recall, 0.99, "%s (top-k %lld) at context %lld: recall %.3f", hae_layer_kind_name(ALL_KINDS[k]),
                              (long long)p.topk, (long long)res[n].context, res[n].recall);
            n++;
        }
    print_table("probe: mqar, 32 pairs among 64 noise tokens, K = V = 64, 2 seeds (decaying kinds at log decay -1e-3)", res, n);
}

Test(probe, linear_degrades_once_pairs_exceed_K) {
    static const int64_t pairs[] = {8, 16, 32, 64, 128};
    hae_probe_result res[2 * 5];
    int n = 0;
    for (int d = 0; d < 2; d++)
        for (int i = 0; i < 5; i++) {
            hae_mqar_args a = {.length = 1024, .vocab = 8 + 2 * 256, .pairs = pairs[i], .seed = 200};
            hae_probe_args p = hae_probe_defaults(d ? HAE_LAYER_DELTANET : HAE_LAYER_LINEAR);
            p.K = p.V = 32;
            res[n++] = pooled(&p, HAE_TASK_MQAR, &a, 4);
        }
    print_table("probe: mqar with PAD filler, K = V = 32, random keys, 4 seeds (linear: no decay, no delta)", res, n);
    cr_expect_geq(res[0].recall, 0.95, "linear, pairs = K/4 = 8: recall %.3f", res[0].recall);
    cr_expect_leq(res[3].recall, 0.85, "linear, pairs = 2K = 64: recall %.3f is not well below 100%%", res[3].recall);
    cr_expect_leq(res[4].recall, 0.5, "linear, pairs = 4K = 128: recall %.3f", res[4].recall);
    for (int i = 1; i < 5; i++)
        cr_expect_leq(res[i].recall, res[i - 1].recall, "linear: recall rises from %.3f to %.3f at %lld pairs",
                      res[i - 1].recall, res[i].recall, (long long)pairs[i]);
}

Test(probe, delta_rule_recalls_exactly_up_to_K_orthogonal_keys) {
    static const hae_layer_kind kinds[] = {HAE_LAYER_DELTANET, HAE_LAYER_KDA, HAE_LAYER_GDN, HAE_LAYER_LINEAR};
    static const int chunks[] = {0, 64};
    hae_probe_result res[4 * 2 * 2];
    int n = 0;
    for (int k = 0; k < 4; k++)
        for (int c = 0; c < 2; c++)
            for (int full = 0; full < 2; full++) {
                hae_mqar_args a = {.length = 512, .vocab = 8 + 2 * 128, .pairs = full ? 32 : 16, .seed = 300};
                hae_probe_args p = hae_probe_defaults(kinds[k]);
                p.K = p.V = 32, p.orthogonal = true, p.chunk = chunks[c];
                res[n] = pooled(&p, HAE_TASK_MQAR, &a, 3);
                if (kinds[k] != HAE_LAYER_LINEAR)
                    cr_expect_eq(res[n].correct, res[n].queries, "%s (no decay) chunk %d: %lld orthogonal keys in K = 32: "
                                 "recall %.4f", hae_layer_kind_name(kinds[k]), chunks[c], (long long)res[n].pairs, res[n].recall);
                n++;
            }
    print_table("probe: mqar with orthonormal keys, K = V = 32, no decay; chunk 0 then 64 (delta kinds exact up to K)", res, n);
}

Test(probe, errors_compound_over_hops) {
    /* the same 32 stored links either as 32 one-hop chains or as 8 four-hop chains */
    static const hae_layer_kind kinds[] = {HAE_LAYER_FULL, HAE_LAYER_DSA, HAE_LAYER_LINEAR, HAE_LAYER_GLA, HAE_LAYER_KDA};
    hae_probe_result res[5 * 3];
    int n = 0;
    for (int k = 0; k < 5; k++)
        for (int v = 0; v < 3; v++) {
            const int hops = v ? 4 : 1;
            hae_multihop_args a = {.length = 1024, .vocab = 8 + 256, .hops = hops, .chains = 32 / hops,
                                   .form = v == 2 ? HAE_HOPS_LIST : HAE_HOPS_FOLLOW, .seed = 400};
            hae_probe_args p = hae_probe_defaults(kinds[k]);
            p.K = p.V = 32;
            if (kinds[k] == HAE_LAYER_GLA || kinds[k] == HAE_LAYER_KDA) p.log_decay = -2e-3f;
            res[n++] = pooled(&p, HAE_TASK_MULTIHOP, &a, 8);
        }
    print_table("probe: multihop, 32 links (32 x 1 hop, then 8 x 4 hops: follow, list), K = V = 32, 8 seeds", res, n);
    for (int k = 0; k < 5; k++) {
        const hae_probe_result *one = res + 3 * k, *four = res + 3 * k + 1, *list = res + 3 * k + 2;
        const char *kn = hae_layer_kind_name(kinds[k]);
        cr_expect_leq(four->recall, one->recall, "%s: 4 hops %.3f > 1 hop %.3f", kn, four->recall, one->recall);
        cr_expect_leq(list->recall, one->recall, "%s: listing 4 hops %.3f > 1 hop %.3f", kn, list->recall, one->recall);
        if (one->recall < 1) cr_expect_lt(four->recall, one->recall, "%s: 1-hop recall %.3f < 1 but 4 hops %.3f is not lower",
                                          kn, one->recall, four->recall);
        if (kinds[k] == HAE_LAYER_FULL || kinds[k] == HAE_LAYER_DSA)
            cr_expect_eq(four->correct, four->queries, "%s: 4-hop recall %.3f", kn, four->recall);
    }
    cr_expect_lt(res[6].recall, 1.0, "linear: 32 random keys in K = 32 should not be all recalled at 1 hop (%.3f)", res[6].recall);
}

Test(probe, fp8_indexer_loses_the_needle_among_close_decoys) {
    /* 16 needles, each the others' decoy, all keys at cosine c (orthonormal parts); top-1 sparse
     * attention decodes right exactly when the indexer ranks the needle first. Then the same at
     * 1 - c = 1e-3 with a single decoy (2 needles). */
    static const double gaps[] = {1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 1e-3};
    static const hae_dtype dts[] = {HAE_FP8_E4M3, HAE_BF16, HAE_F32};
    hae_probe_result res[6 * 3];
    int n = 0;
    for (int g = 0; g < 6; g++)
        for (int d = 0; d < 3; d++) {
            hae_niah_args a = {.length = 256, .vocab = 8 + 2 * 32, .needles = g < 5 ? 16 : 2, .seed = 500};
            hae_probe_args p = hae_probe_defaults(HAE_LAYER_DSA);
            p.topk = 1, p.orthogonal = true, p.key_cos = 1 - gaps[g], p.index_dtype = dts[d];
            res[n++] = pooled(&p, HAE_TASK_NIAH, &a, g < 5 ? 8 : 32);
        }
    print_table("probe: niah, 16 needles at pairwise key cosine c (last 3 rows: 2 needles), dsa top-1, K = 64: is the "
                "needle ranked first?", res, n);
    const hae_probe_result *fp8 = res, *bf16 = res + 1, *f32 = res + 2; /* gap g at [3 g] */
    fprintf(stderr, "needle ranked first among 15 decoys, 1-c = 1e-1 .. 1e-3: fp8 %.3f %.3f %.3f %.3f %.3f, bf16 %.3f %.3f "
            "%.3f %.3f %.3f; one decoy at 1e-3: fp8 %.3f, bf16 %.3f\n", fp8[0].recall, fp8[3].recall, fp8[6].recall,
            fp8[9].recall, fp8[12].recall, bf16[0].recall, bf16[3].recall, bf16[6].recall, bf16[9].recall, bf16[12].recall,
            fp8[15].recall, bf16[15].recall);
    for (int g = 0; g < 6; g++) {
        cr_expect_leq(fp8[3 * g].recall, bf16[3 * g].recall + 0.02, "1 - c = %g: fp8 %.3f above bf16 %.3f", gaps[g],
                      fp8[3 * g].recall, bf16[3 * g].recall);
        cr_expect_leq(bf16[3 * g].recall, f32[3 * g].recall + 0.02, "1 - c = %g: bf16 %.3f above f32 %.3f", gaps[g],
                      bf16[3 * g].recall, f32[3 * g].recall);
        cr_expect_eq(f32[3 * g].correct, f32[3 * g].queries, "f32 ranking at 1 - c = %g: %.3f", gaps[g], f32[3 * g].recall);
    }
    cr_expect_geq(fp8[0].recall, 0.95, "fp8 at 1 - c = 1e-1: %.3f", fp8[0].recall);
    cr_expect_lt(fp8[6].recall, 0.9, "fp8 at 1 - c = 1e-2 still ranks the needle first in %.3f", fp8[6].recall);
    cr_expect_geq(bf16[6].recall, 0.98, "bf16 at 1 - c = 1e-2: %.3f", bf16[6].recall);
    cr_expect_geq(bf16[9].recall, 0.95, "bf16 at 1 - c = 3e-3: %.3f", bf16[9].recall);
    cr_expect_lt(fp8[9].recall, 0.5, "fp8 at 1 - c = 3e-3: %.3f", fp8[9].recall);
    cr_expect_geq(bf16[12].recall - fp8[12].recall, 0.3, "at 1 - c = 1e-3 fp8 %.3f vs bf16 %.3f", fp8[12].recall,
                  bf16[12].recall);
    cr_expect_geq(bf16[15].recall, 0.85, "one decoy at 1 - c = 1e-3: bf16 %.3f", bf16[15].recall);
}

Test(probe, report_writes_markdown_and_jsonl) {
    hae_niah_args a = {.length = 128, .vocab = 64, .needles = 2, .seed = 1};
    hae_probe_result r[2];
    hae_probe_args p = hae_probe_defaults(HAE_LAYER_DSA);
    r[0] = pooled(&p, HAE_TASK_NIAH, &a, 1);
    p = hae_probe_defaults(HAE_LAYER_GLA);
    p.log_decay = -0.5f;
    r[1] = pooled(&p, HAE_TASK_NIAH, &a, 1);
    char *md = NULL, *js = NULL;
    size_t mdn = 0, jsn = 0;
    FILE *fm = open_memstream(&md, &mdn), *fj = open_memstream(&js, &jsn);
    cr_assert_eq(hae_probe_report(r, 2, fm, fj), HAE_OK, "%s", hae_last_error());
    fclose(fm), fclose(fj);
    int md_lines = 0, js_lines = 0;
    for (size_t i = 0; i < mdn; i++) md_lines += md[i] == '\n';
    for (size_t i = 0; i < jsn; i++) js_lines += js[i] == '\n';
    cr_expect_eq(md_lines, 4, "header, separator and 2 rows:\n%s", md);
    cr_expect_eq(js_lines, 2, "one JSON object per result:\n%s", js);
    cr_expect(strstr(md, "| dsa | niah | ") && strstr(md, "| fp8-e4m3 |") && strstr(md, "| gla | niah |"), "%s", md);
    cr_expect(strstr(js, "\"kind\":\"dsa\",\"task\":\"niah\"") && strstr(js, "\"index_dtype\":\"fp8-e4m3\"") &&
                  strstr(js, "\"kind\":\"gla\"") && strstr(js, "\"index_dtype\":null") && strstr(js, "\"log_decay\":-0.5"),
              "%s", js);
    free(md), free(js);
}

/* Full attention's weight on one needle dilutes with length at the 1/sqrt(D) scale; the indexer's
 * top-2048 keeps most of it. Averages over 3 seeds, the table printed for the log. */
Test(eval, softmax_dilution_full_vs_top2048) {
    hae_backend *be = tu_cpu();
    const int64_t lengths[] = {1024, 8192, 32768, 131072};
    double prev = 2.0;
    fprintf(stderr, "softmax dilution, D 128, scale 1/sqrt(D), mean of 3 seeds:\n  length  full   top-2048\n");
    for (int i = 0; i < 4; i++) {
        double full = 0, sparse = 0;
        for (uint64_t seed = 1; seed <= 3; seed++) {
            hae_dilution_result r;
            hae_dilution_args a = {.length = lengths[i], .D = 128, .topk = 2048, .seed = seed};
            cr_assert_eq(hae_probe_dilution(be, &a, &r), HAE_OK, "%s", hae_last_error());
            cr_expect(r.needle_picked, "length %lld seed %llu: the indexer missed the needle", (long long)lengths[i],
                      (unsigned long long)seed);
            cr_expect_geq(r.sparse_weight, r.full_weight - 1e-6, "top-k can only concentrate the weight");
            full += r.full_weight / 3, sparse += r.sparse_weight / 3;
        }
        fprintf(stderr, "  %6lld  %.3f  %.3f\n", (long long)lengths[i], full, sparse);
        cr_expect_lt(full, prev, "full attention's needle weight falls with length (%lld: %.3f)", (long long)lengths[i], full);
        prev = full;
        if (lengths[i] == 131072) {
            cr_expect_lt(full, 0.6, "at 128K full attention keeps %.3f of the needle", full);
            cr_expect_gt(sparse, 0.5, "at 128K top-2048 keeps %.3f", sparse);
            cr_expect_gt(sparse, 1.5 * full, "top-2048 %.3f vs full %.3f", sparse, full);
        }
    }
    hae_dilution_result r;
    cr_expect_eq(hae_probe_dilution(be, &(hae_dilution_args){.length = 1, .D = 128, .topk = 4}, &r), HAE_ERR_INVALID);
    cr_expect_eq(hae_probe_dilution(be, &(hae_dilution_args){.length = 64, .D = 64, .topk = 4}, &r), HAE_ERR_INVALID);
    cr_expect(strstr(hae_last_error(), "D 64"), "%s", hae_last_error());
    cr_expect_eq(hae_probe_dilution(be, &(hae_dilution_args){.length = 64, .D = 128, .topk = 0}, &r), HAE_ERR_INVALID);
    hae_backend_destroy(be);
}

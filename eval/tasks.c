/* Task generators of the recall suite (DESIGN.md §3): mqar, multihop, niah. The token layout and the
 * sequences are specified in hae.h; every random choice comes from one splitmix64 stream per task,
 * so a seed gives the same task on every machine. */
#include "eval_rng.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

const char *hae_task_kind_name(hae_task_kind k) {
    static const char *names[HAE_TASK_KIND_COUNT] = {"mqar", "multihop", "niah"};
    return (unsigned)k < HAE_TASK_KIND_COUNT ? names[k] : "unknown";
}

/* ---------------------------------------------------------------- randomness */

static void shuffle_i64(eval_rng *r, int64_t *x, int64_t n) {
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = eval_rng_below(r, i + 1), t = x[i];
        x[i] = x[j], x[j] = t;
    }
}

/* n distinct values of [lo, lo + range) in random order (partial Fisher-Yates). */
static hae_status sample_distinct(eval_rng *r, int32_t lo, int64_t range, int64_t n, int32_t *out) {
    int32_t *all = malloc(sizeof(int32_t) * (size_t)range);
    if (!all) return hae_error(HAE_ERR_OOM, "eval task: %lld bytes for a token range", (long long)(4 * range));
    for (int64_t i = 0; i < range; i++) all[i] = lo + (int32_t)i;
    for (int64_t i = 0; i < n; i++) {
        int64_t j = i + eval_rng_below(r, range - i);
        int32_t t = all[i];
        all[i] = all[j], all[j] = t;
        out[i] = all[i];
    }
    free(all);
    return HAE_OK;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

typedef struct {
    double score;
    int64_t i;
} scored;
static int cmp_scored(const void *a, const void *b) {
    const scored *x = a, *y = b;
    return (x->score > y->score) - (x->score < y->score);
}

/* ---------------------------------------------------------------- the shared skeleton */

static hae_status task_alloc(hae_task_kind kind, int64_t vocab, int64_t length, int64_t n_pairs, int64_t n_queries,
                             int64_t n_answers, hae_task **out) {
    hae_task *t = calloc(1, sizeof *t);
    if (t) {
        t->kind = kind, t->vocab = vocab, t->n_tokens = length, t->n_pairs = n_pairs, t->n_queries = n_queries;
        t->tokens = malloc(sizeof(int32_t) * (size_t)length);
        t->pair_pos = malloc(sizeof(int64_t) * (size_t)n_pairs);
        t->pair_key = malloc(sizeof(int32_t) * (size_t)n_pairs);
        t->pair_value = malloc(sizeof(int32_t) * (size_t)n_pairs);
        t->query_pos = malloc(sizeof(int64_t) * (size_t)n_queries);
        t->query_key = malloc(sizeof(int32_t) * (size_t)n_queries);
        t->answer_off = malloc(sizeof(int64_t) * (size_t)(n_queries + 1));
        t->answers = malloc(sizeof(int32_t) * (size_t)n_answers);
    }
    if (!t || !t->tokens || !t->pair_pos || !t->pair_key || !t->pair_value || !t->query_pos || !t->query_key ||
        !t->answer_off || !t->answers) {
        hae_task_free(t);
        return hae_error(HAE_ERR_OOM, "hae_task_%s: a task of %lld tokens, %lld pairs and %lld questions",
                         hae_task_kind_name(kind), (long long)length, (long long)n_pairs, (long long)n_queries);
    }
    *out = t;
    return HAE_OK;
}

void hae_task_free(hae_task *t) {
    if (!t) return;
    free(t->tokens), free(t->pair_pos), free(t->pair_key), free(t->pair_value);
    free(t->query_pos), free(t->query_key), free(t->answer_off), free(t->answers);
    free(t);
}

/* BOS, then filler over [1, context): noise tokens uniform over the noise range, or PAD. */
static void fill_context(hae_task *t, eval_rng *r) {
    t->tokens[0] = HAE_TOK_BOS;
    int64_t nn = t->noise_hi - t->noise_lo;
    for (int64_t i = 1; i < t->context; i++) t->tokens[i] = nn ? t->noise_lo + (int32_t)eval_rng_below(r, nn) : HAE_TOK_PAD;
}

/* Start positions of n blocks of `width` tokens placed uniformly among the F = len - n width filler
 * tokens of [start, start + len): the gaps before the blocks are n sorted uniform draws from [0, F]. */
static void place_blocks(eval_rng *r, int64_t start, int64_t len, int64_t n, int64_t width, int64_t *starts) {
    int64_t F = len - n * width;
    HAE_ASSERT(F >= 0);
    for (int64_t i = 0; i < n; i++) starts[i] = eval_rng_below(r, F + 1);
    qsort(starts, (size_t)n, sizeof *starts, cmp_i64);
    for (int64_t i = 0; i < n; i++) starts[i] += start + i * width;
}

/* Checks shared by the three generators; sets the noise range and returns f (the first free id). */
static hae_status check_common(const char *op, const void *a, hae_task **out, int64_t length, int64_t vocab,
                               int64_t noise_vocab, int64_t min_free, int64_t *f) {
    if (!a) return hae_error(HAE_ERR_INVALID, "%s: args must not be NULL", op);
    if (out) *out = NULL;
    if (length < 64) return hae_error(HAE_ERR_INVALID, "%s: length %lld < 64 (the shortest task)", op, (long long)length);
    if (length > INT32_MAX)
        return hae_error(HAE_ERR_INVALID, "%s: length %lld exceeds 2^31 - 1 tokens", op, (long long)length);
    if (noise_vocab < 0) return hae_error(HAE_ERR_INVALID, "%s: noise_vocab %lld < 0", op, (long long)noise_vocab);
    if (vocab > INT32_MAX) return hae_error(HAE_ERR_INVALID, "%s: vocab %lld exceeds int32 token ids", op, (long long)vocab);
    *f = HAE_TOK_FIRST + noise_vocab;
    if (vocab < *f + min_free)
        return hae_error(HAE_ERR_INVALID,
                         "%s: vocab %lld leaves no room: %d special ids + noise_vocab %lld + at least %lld task tokens",
                         op, (long long)vocab, HAE_TOK_FIRST, (long long)noise_vocab, (long long)min_free);
    return HAE_OK;
}

static void set_ranges(hae_task *t, int64_t f, int64_t n_keys, bool shared) {
    t->noise_lo = HAE_TOK_FIRST, t->noise_hi = (int32_t)f;
    t->key_lo = (int32_t)f, t->key_hi = (int32_t)(f + n_keys);
    t->value_lo = shared ? t->key_lo : t->key_hi, t->value_hi = shared ? t->key_hi : (int32_t)(f + 2 * n_keys);
}

/* ---------------------------------------------------------------- mqar */

/* Keys first (distinct, or with replacement), then the number of distinct keys fixes the questions and
 * so the context; pairs are placed; the asked pairs are the latest write of each key, chosen without
 * replacement with weight d^-power (Efraimidis-Spirakis: the Q smallest Exp(1) d^power), d = context -
 * position, then asked in random order. */
hae_status hae_task_mqar(const hae_mqar_args *a, hae_task **out) {
    const char *op = "hae_task_mqar";
    int64_t f = 0;
    HAE_TRY(check_common(op, a, out, a ? a->length : 0, a ? a->vocab : 0, a ? a->noise_vocab : 0, 2, &f));
    const int64_t n = (a->vocab - f) / 2, N = a->pairs;
    if (N < 1) return hae_error(HAE_ERR_INVALID, "%s: pairs %lld < 1", op, (long long)N);
    if (N > n)
        return hae_error(HAE_ERR_INVALID,
                         "%s: pairs %lld > %lld: vocab %lld with noise_vocab %lld leaves %lld keys and %lld values, and "
                         "values are distinct%s",
                         op, (long long)N, (long long)n, (long long)a->vocab, (long long)a->noise_vocab, (long long)n,
                         (long long)n, a->dup_keys ? "" : " (so are keys unless dup_keys)");
    if (a->queries < 0 || a->queries > N)
        return hae_error(HAE_ERR_INVALID, "%s: queries %lld must be in [0, pairs = %lld] (0: every key)", op,
                         (long long)a->queries, (long long)N);
    if (!(a->power >= 0.0f && isfinite(a->power)))
        return hae_error(HAE_ERR_INVALID, "%s: power %g must be finite and >= 0 (0: uniform queries)", op, (double)a->power);
    const int64_t Qmax = a->queries ? a->queries : N;
    if (a->length < 1 + 2 * N + 3 * Qmax)
        return hae_error(HAE_ERR_INVALID,
                         "%s: length %lld is too short for %lld pairs and %lld questions (needs >= %lld: BOS, 2 tokens "
                         "per pair, 3 per question)",
                         op, (long long)a->length, (long long)N, (long long)Qmax, (long long)(1 + 2 * N + 3 * Qmax));
    if (!out) return HAE_OK;

    eval_rng r = eval_rng_make(a->seed, 0x6d716172u);
    int32_t *keys = malloc(sizeof(int32_t) * (size_t)N), *vals = malloc(sizeof(int32_t) * (size_t)N);
    int64_t *idx = malloc(sizeof(int64_t) * (size_t)N), *starts = malloc(sizeof(int64_t) * (size_t)N);
    scored *score = malloc(sizeof(scored) * (size_t)N);
    uint8_t *seen = calloc((size_t)n, 1);
    hae_task *t = NULL;
    hae_status st = HAE_OK;
    if (!keys || !vals || !idx || !starts || !score || !seen) {
        st = hae_error(HAE_ERR_OOM, "%s: scratch for %lld pairs", op, (long long)N);
        goto done;
    }
    if (a->dup_keys)
        for (int64_t i = 0; i < N; i++) keys[i] = (int32_t)(f + eval_rng_below(&r, n));
    else if ((st = sample_distinct(&r, (int32_t)f, n, N, keys)) != HAE_OK)
        goto done;
    if ((st = sample_distinct(&r, (int32_t)(f + n), n, N, vals)) != HAE_OK) goto done;
    /* the latest write of each key is the one a question can ask (pairs keep key order = position order) */
    int64_t distinct = 0;
    for (int64_t i = N - 1; i >= 0; i--)
        if (!seen[keys[i] - f]) seen[keys[i] - f] = 1, idx[distinct++] = i;
    const int64_t Q = a->queries ? a->queries : distinct;
    if (Q > distinct) {
        st = hae_error(HAE_ERR_INVALID, "%s: queries %lld > the %lld distinct keys that %lld pairs with dup_keys wrote "
                       "(seed %llu)", op, (long long)Q, (long long)distinct, (long long)N, (unsigned long long)a->seed);
        goto done;
    }
    if ((st = task_alloc(HAE_TASK_MQAR, a->vocab, a->length, N, Q, Q, &t)) != HAE_OK) goto done;
    set_ranges(t, f, n, false);
    t->hops = 1;
    t->context = a->length - 3 * Q;
    fill_context(t, &r);
    place_blocks(&r, 1, t->context - 1, N, 2, starts);
    for (int64_t i = 0; i < N; i++) {
        t->pair_pos[i] = starts[i], t->pair_key[i] = keys[i], t->pair_value[i] = vals[i];
        t->tokens[starts[i]] = keys[i], t->tokens[starts[i] + 1] = vals[i];
    }
    for (int64_t j = 0; j < distinct; j++) {
        double d = (double)(t->context - t->pair_pos[idx[j]]);
        score[j] = (scored){-log(eval_rng_unit(&r)) * pow(d, (double)a->power), idx[j]};
    }
    qsort(score, (size_t)distinct, sizeof *score, cmp_scored);
    for (int64_t q = 0; q < Q; q++) idx[q] = score[q].i;
    shuffle_i64(&r, idx, Q);
    for (int64_t q = 0; q < Q; q++) {
        int64_t p = t->context + 3 * q, i = idx[q];
        t->tokens[p] = HAE_TOK_QUERY, t->tokens[p + 1] = keys[i], t->tokens[p + 2] = vals[i];
        t->query_pos[q] = p + 1, t->query_key[q] = keys[i];
        t->answer_off[q] = q, t->answers[q] = vals[i];
    }
    t->answer_off[Q] = Q;
    *out = t;
done:
    free(keys), free(vals), free(idx), free(starts), free(score), free(seen);
    return st;
}

/* ---------------------------------------------------------------- multihop */

/* Chain c holds variables v[c (H + 1) + j], j = 0..H, all distinct. Link order: shuffled, a random
 * permutation of all (c, j); else a random interleaving of the chains that keeps each in hop order
 * (the k-th block naming chain c is its link k). */
hae_status hae_task_multihop(const hae_multihop_args *a, hae_task **out) {
    const char *op = "hae_task_multihop";
    int64_t f = 0;
    HAE_TRY(check_common(op, a, out, a ? a->length : 0, a ? a->vocab : 0, a ? a->noise_vocab : 0, 2, &f));
    const int64_t nv = a->vocab - f, H = a->hops, C = a->chains;
    if (H < 1) return hae_error(HAE_ERR_INVALID, "%s: hops %d < 1", op, a->hops);
    if (C < 1) return hae_error(HAE_ERR_INVALID, "%s: chains %lld < 1", op, (long long)C);
    if (C * (H + 1) > nv)
        return hae_error(HAE_ERR_INVALID,
                         "%s: %lld chains of %lld hops need %lld distinct variables; vocab %lld with noise_vocab %lld "
                         "leaves %lld",
                         op, (long long)C, (long long)H, (long long)(C * (H + 1)), (long long)a->vocab,
                         (long long)a->noise_vocab, (long long)nv);
    if (a->queries < 0 || a->queries > C)
        return hae_error(HAE_ERR_INVALID, "%s: queries %lld must be in [0, chains = %lld] (0: every chain)", op,
                         (long long)a->queries, (long long)C);
    if ((unsigned)a->form > HAE_HOPS_LIST)
        return hae_error(HAE_ERR_INVALID, "%s: form %d is not a hae_hops_form (follow %d, list %d)", op, (int)a->form,
                         HAE_HOPS_FOLLOW, HAE_HOPS_LIST);
    const int64_t Q = a->queries ? a->queries : C, per = a->form == HAE_HOPS_LIST ? 2 + H : 3, E = C * H;
    if (a->length < 1 + 3 * E + per * Q)
        return hae_error(HAE_ERR_INVALID,
                         "%s: length %lld is too short for %lld chains of %lld hops and %lld questions (needs >= %lld: "
                         "BOS, 3 tokens per link, %lld per question)",
                         op, (long long)a->length, (long long)C, (long long)H, (long long)Q,
                         (long long)(1 + 3 * E + per * Q), (long long)per);
    if (!out) return HAE_OK;

    eval_rng r = eval_rng_make(a->seed, 0x686f7073u);
    int32_t *v = malloc(sizeof(int32_t) * (size_t)(C * (H + 1)));
    int64_t *order = malloc(sizeof(int64_t) * (size_t)E), *starts = malloc(sizeof(int64_t) * (size_t)E);
    int64_t *next = calloc((size_t)C, sizeof(int64_t)), *asked = malloc(sizeof(int64_t) * (size_t)C);
    hae_task *t = NULL;
    hae_status st = HAE_OK;
    if (!v || !order || !starts || !next || !asked) {
        st = hae_error(HAE_ERR_OOM, "%s: scratch for %lld links", op, (long long)E);
        goto done;
    }
    if ((st = sample_distinct(&r, (int32_t)f, nv, C * (H + 1), v)) != HAE_OK) goto done;
    if ((st = task_alloc(HAE_TASK_MULTIHOP, a->vocab, a->length, E, Q, a->form == HAE_HOPS_LIST ? Q * H : Q, &t)) != HAE_OK)
        goto done;
    set_ranges(t, f, nv, true);
    t->hops = (int)H;
    t->context = a->length - per * Q;
    fill_context(t, &r);
    place_blocks(&r, 1, t->context - 1, E, 3, starts);
    for (int64_t e = 0; e < E; e++) order[e] = a->shuffle ? e : e % C;
    shuffle_i64(&r, order, E);
    for (int64_t b = 0; b < E; b++) {
        int64_t c = a->shuffle ? order[b] / H : order[b], j = a->shuffle ? order[b] % H : next[c]++;
        int32_t from = v[c * (H + 1) + j], to = v[c * (H + 1) + j + 1];
        t->tokens[starts[b]] = HAE_TOK_LINK, t->tokens[starts[b] + 1] = from, t->tokens[starts[b] + 2] = to;
        t->pair_pos[b] = starts[b] + 1, t->pair_key[b] = from, t->pair_value[b] = to;
    }
    for (int64_t c = 0; c < C; c++) asked[c] = c;
    shuffle_i64(&r, asked, C);
    int64_t p = t->context, na = 0;
    for (int64_t q = 0; q < Q; q++) {
        const int32_t *chain = v + asked[q] * (H + 1);
        t->tokens[p] = a->form == HAE_HOPS_LIST ? HAE_TOK_LIST : HAE_TOK_QUERY, t->tokens[p + 1] = chain[0];
        t->query_pos[q] = p + 1, t->query_key[q] = chain[0], t->answer_off[q] = na;
        for (int64_t j = a->form == HAE_HOPS_LIST ? 1 : H, k = p + 2; j <= H; j++, k++)
            t->tokens[k] = chain[j], t->answers[na++] = chain[j];
        p += per;
    }
    t->answer_off[Q] = na;
    HAE_ASSERT(p == a->length);
    *out = t;
done:
    free(v), free(order), free(starts), free(next), free(asked);
    return st;
}

/* ---------------------------------------------------------------- niah */

hae_status hae_task_niah(const hae_niah_args *a, hae_task **out) {
    const char *op = "hae_task_niah";
    int64_t f = 0;
    HAE_TRY(check_common(op, a, out, a ? a->length : 0, a ? a->vocab : 0, a ? a->noise_vocab : 0, 2, &f));
    const int64_t n = (a->vocab - f) / 2, N = a->needles;
    if (N < 1) return hae_error(HAE_ERR_INVALID, "%s: needles %lld < 1", op, (long long)N);
    if (N > n)
        return hae_error(HAE_ERR_INVALID,
                         "%s: needles %lld > %lld: vocab %lld with noise_vocab %lld leaves %lld distinct keys and values",
                         op, (long long)N, (long long)n, (long long)a->vocab, (long long)a->noise_vocab, (long long)n);
    if (a->queries < 0 || a->queries > N)
        return hae_error(HAE_ERR_INVALID, "%s: queries %lld must be in [0, needles = %lld] (0: every needle)", op,
                         (long long)a->queries, (long long)N);
    const int64_t Q = a->queries ? a->queries : N;
    if (a->length < 1 + 3 * N + 3 * Q)
        return hae_error(HAE_ERR_INVALID,
                         "%s: length %lld is too short for %lld needles and %lld questions (needs >= %lld: BOS, 3 tokens "
                         "per needle, 3 per question)",
                         op, (long long)a->length, (long long)N, (long long)Q, (long long)(1 + 3 * N + 3 * Q));
    if (!out) return HAE_OK;

    eval_rng r = eval_rng_make(a->seed, 0x6e696168u);
    int32_t *keys = malloc(sizeof(int32_t) * (size_t)N), *vals = malloc(sizeof(int32_t) * (size_t)N);
    int64_t *starts = malloc(sizeof(int64_t) * (size_t)N), *asked = malloc(sizeof(int64_t) * (size_t)N);
    hae_task *t = NULL;
    hae_status st = HAE_OK;
    if (!keys || !vals || !starts || !asked) {
        st = hae_error(HAE_ERR_OOM, "%s: scratch for %lld needles", op, (long long)N);
        goto done;
    }
    if ((st = sample_distinct(&r, (int32_t)f, n, N, keys)) != HAE_OK) goto done;
    if ((st = sample_distinct(&r, (int32_t)(f + n), n, N, vals)) != HAE_OK) goto done;
    if ((st = task_alloc(HAE_TASK_NIAH, a->vocab, a->length, N, Q, Q, &t)) != HAE_OK) goto done;
    set_ranges(t, f, n, false);
    t->hops = 1;
    t->context = a->length - 3 * Q;
    fill_context(t, &r);
    place_blocks(&r, 1, t->context - 1, N, 3, starts);
    for (int64_t i = 0; i < N; i++) {
        t->tokens[starts[i]] = HAE_TOK_NEEDLE, t->tokens[starts[i] + 1] = keys[i], t->tokens[starts[i] + 2] = vals[i];
        t->pair_pos[i] = starts[i] + 1, t->pair_key[i] = keys[i], t->pair_value[i] = vals[i];
        asked[i] = i;
    }
    shuffle_i64(&r, asked, N);
    for (int64_t q = 0; q < Q; q++) {
        int64_t p = t->context + 3 * q, i = asked[q];
        t->tokens[p] = HAE_TOK_QUERY, t->tokens[p + 1] = keys[i], t->tokens[p + 2] = vals[i];
        t->query_pos[q] = p + 1, t->query_key[q] = keys[i];
        t->answer_off[q] = q, t->answers[q] = vals[i];
    }
    t->answer_off[Q] = Q;
    *out = t;
done:
    free(keys), free(vals), free(starts), free(asked);
    return st;
}

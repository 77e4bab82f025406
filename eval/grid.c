/* The eval grid of a config (its eval section's axes) and the task of each point. */
#include "internal.h"

#include <stdlib.h>

hae_status hae_eval_grid(const hae_config *cfg, hae_eval_point **points, int64_t *n) {
    if (!cfg || !points || !n) return hae_error(HAE_ERR_INVALID, "hae_eval_grid: NULL argument");
    *points = NULL, *n = 0;
    const hae_eval_list *tasks = &cfg->eval.tasks, *lengths = &cfg->eval.lengths, *pairs = &cfg->eval.pairs,
                        *hops = &cfg->eval.hops, *chains = &cfg->eval.chains;
    int64_t count = 0, per_hop = 0;
    for (int c = 0; c < chains->n; c++) per_hop += chains->v[c] ? 1 : pairs->n;
    for (int t = 0; t < tasks->n; t++)
        count += (tasks->v[t] == HAE_TASK_MULTIHOP ? hops->n * per_hop : pairs->n) * (int64_t)lengths->n;
    if (count > HAE_EVAL_MAX_POINTS)
        return hae_error(HAE_ERR_INVALID, "eval: the grid has %lld points, more than %d (HAE_EVAL_MAX_POINTS)",
                         (long long)count, HAE_EVAL_MAX_POINTS);
    hae_eval_point *p = malloc(sizeof *p * (size_t)(count ? count : 1));
    if (!p) return hae_error(HAE_ERR_OOM, "eval: a grid of %lld points", (long long)count);
    int64_t k = 0;
    for (int t = 0; t < tasks->n; t++) {
        hae_task_kind kind = (hae_task_kind)tasks->v[t];
        bool chained = kind == HAE_TASK_MULTIHOP;
        for (int h = 0; h < (chained ? hops->n : 1); h++)
            for (int c = 0; c < (chained ? chains->n : 1); c++) {
                bool by_pairs = !chained || chains->v[c] == 0;
                for (int q = 0; q < (by_pairs ? pairs->n : 1); q++)
                    for (int l = 0; l < lengths->n; l++)
                        p[k++] = (hae_eval_point){kind, lengths->v[l], by_pairs ? pairs->v[q] : 0,
                                                  chained ? hops->v[h] : 1, chained ? chains->v[c] : 0};
            }
    }
    HAE_ASSERT(k == count);
    *points = p, *n = count;
    return HAE_OK;
}

hae_status hae_eval_task(const hae_config *cfg, const hae_eval_point *p, uint64_t seed, hae_task **out) {
    if (!cfg || !p) return hae_error(HAE_ERR_INVALID, "hae_eval_task: NULL argument");
    const int64_t vocab = cfg->eval.vocab ? cfg->eval.vocab : cfg->model.vocab_size, L = p->length;
    hae_status st;
    switch (p->task) {
    case HAE_TASK_MQAR:
        st = hae_task_mqar(&(hae_mqar_args){.length = L, .vocab = vocab, .pairs = p->pairs, .queries = cfg->eval.queries,
                                            .power = cfg->eval.power, .noise_vocab = cfg->eval.noise_vocab, .seed = seed},
                           out);
        return st ? hae_error_wrap(st, "eval task mqar, length %lld, %lld pairs", (long long)L, (long long)p->pairs) : st;
    case HAE_TASK_NIAH:
        st = hae_task_niah(&(hae_niah_args){.length = L, .vocab = vocab, .needles = p->pairs, .queries = cfg->eval.queries,
                                            .noise_vocab = cfg->eval.noise_vocab, .seed = seed},
                           out);
        return st ? hae_error_wrap(st, "eval task niah, length %lld, %lld needles", (long long)L, (long long)p->pairs) : st;
    case HAE_TASK_MULTIHOP: {
        const int64_t chains = p->chains ? p->chains : p->pairs / p->hops;
        if (chains < 1)
            return hae_error(HAE_ERR_INVALID,
                             "eval task multihop, length %lld, %lld hops: pairs %lld < hops, so pairs / hops is no whole "
                             "chain (raise eval.pairs, or give eval.chains)",
                             (long long)L, (long long)p->hops, (long long)p->pairs);
        st = hae_task_multihop(&(hae_multihop_args){.length = L, .vocab = vocab, .hops = (int)p->hops, .chains = chains,
                                                    .queries = cfg->eval.queries, .form = cfg->eval.form,
                                                    .shuffle = cfg->eval.shuffle, .noise_vocab = cfg->eval.noise_vocab,
                                                    .seed = seed},
                               out);
        return st ? hae_error_wrap(st, "eval task multihop, length %lld, %lld chains of %lld hops", (long long)L,
                                   (long long)chains, (long long)p->hops)
                  : st;
    }
    default: break;
    }
    return hae_error(HAE_ERR_INVALID, "hae_eval_task: task %d is not a hae_task_kind", (int)p->task);
}

/* Shared helpers for the Criterion tests: seeded random data, float64 comparisons, temp paths. */
#ifndef HAE_TESTUTIL_H
#define HAE_TESTUTIL_H

#include "hae.h"

#include <stdint.h>

/* Uniform in [lo, hi) from a seeded stream (xorshift on a splitmix seed). */
typedef struct {
    uint64_t s;
} tu_rng;
tu_rng tu_rng_make(uint64_t seed);
double tu_uniform(tu_rng *r, double lo, double hi);
double tu_normal(tu_rng *r);

/* Fills n values of dtype dt at p with uniform [lo, hi) values (never all zero). */
void tu_fill(void *p, hae_dtype dt, int64_t n, tu_rng *r, double lo, double hi);
/* Element i of a host buffer of dtype dt, as double. */
double tu_get(const void *p, hae_dtype dt, int64_t i);

/* Compares n values against a float64 reference: NaN/Inf positions first, then the relative error
 * ||got - ref|| / ||ref|| <= rel and every element within abs_tol + rel_elem * |ref|. Fills `why`
 * with the first failure (index, values, errors) and returns false on failure. */
bool tu_close(const void *got, hae_dtype dt, const double *ref, int64_t n, double rel, double abs_tol,
              double rel_elem, char *why, size_t why_n);

/* A fresh path under $HAE_TEST_TMP (or /tmp) unique to this process: dir/pid-tag. */
const char *tu_tmp_path(const char *tag, char *buf, size_t n);

/* CPU backend with 2 threads, asserting success. */
hae_backend *tu_cpu(void);

/* Parses a YAML config string, asserting success (prints the error otherwise). */
void tu_config(const char *yaml, hae_config *cfg);
/* Expects the config (yaml as "t.yaml", plus one --set override or NULL) to fail with HAE_ERR_INVALID and
 * a one-line message that starts "where path: " ("where " alone when path is "") and contains word;
 * case names the test case in failures. cfg is scratch. HAE_TEST_VERBOSE=1 prints every message. */
void tu_expect_bad_config(const char *name, const char *yaml, const char *set, const char *where, const char *path,
                          const char *word, hae_config *cfg);

/* Models in tests: created with every position's logits kept (asserting success); tokens [B, ctx]
 * uniform over the vocabulary; the logits [B, ctx, V] (malloc'd, on the host) of running the tokens
 * from a reset model as forwards of the given lengths, which must add up to ctx. */
hae_model *tu_model(hae_backend *be, const hae_config *cfg);
void tu_tokens(const hae_config *cfg, int64_t ctx, int32_t *tok, uint64_t seed);
float *tu_model_logits(hae_model *m, const hae_config *cfg, int64_t ctx, const int32_t *tok, const int64_t *lens,
                       int n_lens);
/* ||a - b|| / ||b|| */
double tu_rel_rms(const float *a, const float *b, int64_t n);

/* A training run's metrics.jsonl losses by step into loss[1..max_step] (0 where a step has no line), asserting every
 * line parses; returns the lines read. */
int tu_read_losses(const char *dir, double *loss, int max_step);

#endif

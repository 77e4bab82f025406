/* The eval suite's random stream (splitmix64 over hae_mix64), shared by the task generators and the
 * probes so that a seed means the same draws everywhere. */
#ifndef HAE_EVAL_RNG_H
#define HAE_EVAL_RNG_H

#include "internal.h"

#include <math.h>

typedef struct {
    uint64_t s;
} eval_rng;

static inline eval_rng eval_rng_make(uint64_t seed, uint64_t salt) { return (eval_rng){hae_mix64(seed ^ hae_mix64(salt))}; }
static inline uint64_t eval_rng_next(eval_rng *r) {
    uint64_t x = hae_mix64(r->s);
    r->s += 0x9E3779B97F4A7C15ull;
    return x;
}
/* Uniform in [0, n); the modulo bias (n / 2^64) is far below anything a test can see. */
static inline int64_t eval_rng_below(eval_rng *r, int64_t n) { return (int64_t)(eval_rng_next(r) % (uint64_t)n); }
/* Uniform in (0, 1). */
static inline double eval_rng_unit(eval_rng *r) {
    return ((double)(eval_rng_next(r) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}
/* Standard normal (Box-Muller, one value per call). */
static inline double eval_rng_normal(eval_rng *r) {
    double u1 = eval_rng_unit(r), u2 = eval_rng_unit(r);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

#endif

#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

tu_rng tu_rng_make(uint64_t seed) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (tu_rng){z ? z : 1};
}

double tu_uniform(tu_rng *r, double lo, double hi) {
    r->s ^= r->s << 13;
    r->s ^= r->s >> 7;
    r->s ^= r->s << 17;
    return lo + (hi - lo) * ((double)(r->s >> 11) * (1.0 / 9007199254740992.0));
}

double tu_normal(tu_rng *r) {
    double u1 = tu_uniform(r, 1e-12, 1.0), u2 = tu_uniform(r, 0.0, 1.0);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

void tu_fill(void *p, hae_dtype dt, int64_t n, tu_rng *r, double lo, double hi) {
    for (int64_t i = 0; i < n; i++) {
        double v = tu_uniform(r, lo, hi);
        switch (dt) {
        case HAE_F32: ((float *)p)[i] = (float)v; break;
        case HAE_BF16: ((uint16_t *)p)[i] = hae_f32_to_bf16((float)v); break;
        case HAE_F16: ((uint16_t *)p)[i] = hae_f32_to_f16((float)v); break;
        case HAE_FP8_E4M3: ((uint8_t *)p)[i] = hae_f32_to_fp8e4m3((float)v); break;
        case HAE_I32: ((int32_t *)p)[i] = (int32_t)floor(v); break;
        case HAE_I64: ((int64_t *)p)[i] = (int64_t)floor(v); break;
        default: break;
        }
    }
}

double tu_get(const void *p, hae_dtype dt, int64_t i) {
    switch (dt) {
    case HAE_F32: return ((const float *)p)[i];
    case HAE_BF16: return hae_bf16_to_f32(((const uint16_t *)p)[i]);
    case HAE_F16: return hae_f16_to_f32(((const uint16_t *)p)[i]);
    case HAE_FP8_E4M3: return hae_fp8e4m3_to_f32(((const uint8_t *)p)[i]);
    case HAE_I32: return ((const int32_t *)p)[i];
    case HAE_I64: return (double)((const int64_t *)p)[i];
    default: return NAN;
    }
}

bool tu_close(const void *got, hae_dtype dt, const double *ref, int64_t n, double rel, double abs_tol,
              double rel_elem, char *why, size_t why_n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double g = tu_get(got, dt, i), r = ref[i];
        if (isfinite(g) != isfinite(r) || isnan(g) != isnan(r)) {
            snprintf(why, why_n, "element %lld: got %g, reference %g (non-finite mismatch)", (long long)i, g, r);
            return false;
        }
        if (!isfinite(r)) continue;
        double e = fabs(g - r);
        if (e > abs_tol + rel_elem * fabs(r)) {
            snprintf(why, why_n, "element %lld: got %.9g, reference %.9g, error %.3g > %.3g + %.3g * |ref|",
                     (long long)i, g, r, e, abs_tol, rel_elem);
            return false;
        }
        num += (g - r) * (g - r);
        den += r * r;
    }
    double re = den > 0 ? sqrt(num / den) : sqrt(num);
    if (re > rel) {
        snprintf(why, why_n, "relative error %.3g > %.3g over %lld elements", re, rel, (long long)n);
        return false;
    }
    snprintf(why, why_n, "ok (relative error %.3g)", re);
    return true;
}

const char *tu_tmp_path(const char *tag, char *buf, size_t n) {
    const char *dir = getenv("HAE_TEST_TMP");
    if (!dir || !*dir) dir = "/tmp";
    mkdir(dir, 0755);
    snprintf(buf, n, "%s/%d-%s", dir, (int)getpid(), tag);
    return buf;
}

hae_backend *tu_cpu(void) {
    hae_backend *be = NULL;
    hae_status st = hae_backend_create(HAE_CPU, 2, &be);
    cr_assert_eq(st, HAE_OK, "cpu backend: %s", hae_last_error());
    return be;
}

void tu_config(const char *yaml, hae_config *cfg) {
    hae_status st = hae_config_parse(yaml, strlen(yaml), "test.yaml", NULL, 0, cfg);
    cr_assert_eq(st, HAE_OK, "config: %s\n%s", hae_last_error(), yaml);
}

void tu_expect_bad_config(const char *name, const char *yaml, const char *set, const char *where, const char *path,
                          const char *word, hae_config *cfg) {
    hae_clear_error();
    hae_status st = hae_config_parse(yaml, strlen(yaml), "t.yaml", set ? &set : NULL, set ? 1 : 0, cfg);
    const char *msg = hae_last_error();
    char want[256];
    snprintf(want, sizeof want, "%s %s%s", where, path, path[0] ? ": " : "");
    cr_expect_eq(st, HAE_ERR_INVALID, "case '%s': status %d (%s)", name, st, msg);
    cr_expect(strncmp(msg, want, strlen(want)) == 0, "case '%s': message does not start with '%s':\n  %s", name, want,
              msg);
    cr_expect(strstr(msg, word), "case '%s': no '%s' in:\n  %s", name, word, msg);
    cr_expect(!strchr(msg, '\n'), "case '%s': message is not one line:\n  %s", name, msg);
    if (getenv("HAE_TEST_VERBOSE")) fprintf(stderr, "%-26s %s\n", name, msg);
}

hae_model *tu_model(hae_backend *be, const hae_config *cfg) {
    hae_model *m = NULL;
    hae_model_options opt = {.all_logits = true};
    cr_assert_eq(hae_model_create(cfg, be, &opt, &m), HAE_OK, "%s: %s", hae_backend_name(be), hae_last_error());
    return m;
}

void tu_tokens(const hae_config *cfg, int64_t ctx, int32_t *tok, uint64_t seed) {
    tu_rng r = tu_rng_make(seed);
    for (int64_t i = 0; i < cfg->runtime.batch * ctx; i++) tok[i] = (int32_t)tu_uniform(&r, 0, (double)cfg->model.vocab_size);
}

float *tu_model_logits(hae_model *m, const hae_config *cfg, int64_t ctx, const int32_t *tok, const int64_t *lens,
                       int n_lens) {
    int64_t B = cfg->runtime.batch, V = cfg->model.vocab_size, t0 = 0;
    int32_t *chunk = malloc(sizeof(int32_t) * (size_t)(B * ctx));
    float *out = malloc(sizeof(float) * (size_t)(B * ctx * V));
    cr_assert(chunk && out);
    hae_tensor logits;
    hae_model_reset(m);
    for (int i = 0; i < n_lens; i++) {
        for (int64_t b = 0; b < B; b++) memcpy(chunk + b * lens[i], tok + b * ctx + t0, sizeof(int32_t) * (size_t)lens[i]);
        cr_assert_eq(hae_model_forward(m, chunk, lens[i], &logits), HAE_OK, "%s", hae_last_error());
        t0 += lens[i];
    }
    cr_assert_eq(t0, ctx);
    cr_assert_eq(hae_model_position(m), ctx);
    cr_assert_eq(hae_backend_download(hae_model_backend(m), out, logits.data, sizeof(float) * (size_t)(B * ctx * V)),
                 HAE_OK, "%s", hae_last_error());
    free(chunk);
    return out;
}

double tu_rel_rms(const float *a, const float *b, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return sqrt(num / den);
}

int tu_read_losses(const char *dir, double *loss, int max_step) {
    char path[512], line[4096];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    FILE *f = fopen(path, "r");
    cr_assert(f, "no %s", path);
    int lines = 0;
    for (int i = 0; i <= max_step; i++) loss[i] = 0;
    while (fgets(line, sizeof line, f)) {
        long long s;
        double l;
        cr_assert_eq(sscanf(line, "{\"step\": %lld, \"loss\": %lf", &s, &l), 2, "%s: bad line %s", path, line);
        cr_assert(s >= 1 && s <= max_step, "%s: step %lld", path, s);
        loss[s] = l, lines++;
    }
    fclose(f);
    return lines;
}

/* The model stack on the CPU: a float64 oracle of the whole forward, decode == prefill, chunking,
 * seeds, batch independence, safetensors round trips and the errors a user can provoke. */
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A tiny hybrid: swa and full layers, gqa 4q/2kv, a window shorter than the context. */
static const char *tiny_yaml = "name: tiny\n"
                               "seed: 7\n"
                               "model:\n"
                               "  vocab_size: 61\n"
                               "  d_model: 32\n"
                               "  n_layers: 3\n"
                               "  layer_pattern: [swa, full]\n"
                               "  mlp: {intermediate_size: 48}\n"
                               "  attention: {num_heads: 4, num_kv_heads: 2, head_dim: 8, rope: full}\n"
                               "  swa: {window_size: 5}\n"
                               "runtime:\n"
                               "  backend: cpu\n"
                               "  dtype: f32\n"
                               "  batch: 2\n"
                               "  prefill: 13\n"
                               "  decode: 6\n"
                               "  prefill_chunk: 4\n";

#define CTX 19 /* prefill + decode */

static void tiny(hae_config *cfg, const char *const *sets, int n_sets) {
    hae_status st = hae_config_parse(tiny_yaml, strlen(tiny_yaml), "tiny.yaml", sets, n_sets, cfg);
    cr_assert_eq(st, HAE_OK, "%s", hae_last_error());
}

static const int64_t one_shot[] = {CTX};
static const int64_t prefill_then_decode[] = {13, 1, 1, 1, 1, 1, 1};

Test(model, decode_after_prefill_equals_one_prefill) {
    const char *dts[] = {"runtime.dtype=f32", "runtime.dtype=bf16"};
    for (int k = 0; k < 2; k++) {
        hae_backend *be = tu_cpu();
        hae_config cfg;
        tiny(&cfg, &dts[k], 1);
        hae_model *m = tu_model(be, &cfg);
        int32_t tok[2 * CTX];
        tu_tokens(&cfg, CTX, tok, 1);
        float *a = tu_model_logits(m, &cfg, CTX, tok, one_shot, 1);
        float *b = tu_model_logits(m, &cfg, CTX, tok, prefill_then_decode, 7);
        int64_t n = 2 * CTX * cfg.model.vocab_size;
        double d = tu_rel_rms(b, a, n);
        cr_expect_leq(d, 1e-6, "%s: decode vs one prefill differ by %.3g", dts[k], d);
        /* and against an unchunked model: chunk boundaries must not matter */
        const char *sets[] = {dts[k], "runtime.prefill_chunk=0"};
        hae_config cfg0;
        tiny(&cfg0, sets, 2);
        hae_model *m0 = tu_model(be, &cfg0);
        float *c = tu_model_logits(m0, &cfg0, CTX, tok, one_shot, 1);
        d = tu_rel_rms(c, a, n);
        cr_expect_leq(d, 1e-6, "%s: chunked vs unchunked prefill differ by %.3g", dts[k], d);
        free(a), free(b), free(c);
        hae_model_destroy(m);
        hae_model_destroy(m0);
        hae_backend_destroy(be);
    }
}

Test(model, seeds_and_batch_independence) {
    hae_backend *be = tu_cpu();
    hae_config cfg;
    tiny(&cfg, NULL, 0);
    int64_t V = cfg.model.vocab_size, n = 2 * CTX * V;
    int32_t tok[2 * CTX];
    tu_tokens(&cfg, CTX, tok, 2);
    hae_model *m1 = tu_model(be, &cfg), *m2 = tu_model(be, &cfg);
    float *a = tu_model_logits(m1, &cfg, CTX, tok, one_shot, 1), *b = tu_model_logits(m2, &cfg, CTX, tok, one_shot, 1);
    cr_expect(memcmp(a, b, sizeof(float) * (size_t)n) == 0, "same seed, same logits (bitwise)");
    cr_assert_eq(hae_model_init_weights(m2, 8), HAE_OK);
    float *c = tu_model_logits(m2, &cfg, CTX, tok, one_shot, 1);
    cr_expect_gt(tu_rel_rms(c, a, n), 0.1, "another seed gives other logits");
    /* changing sequence 0's tokens leaves sequence 1's logits bitwise unchanged */
    for (int i = 0; i < CTX; i++) tok[i] = (tok[i] + 1) % (int32_t)V;
    float *d = tu_model_logits(m1, &cfg, CTX, tok, one_shot, 1);
    cr_expect(memcmp(d + CTX * V, a + CTX * V, sizeof(float) * (size_t)(CTX * V)) == 0, "sequence 1 is independent");
    cr_expect_gt(tu_rel_rms(d, a, CTX * V), 0.01, "sequence 0 changed");
    free(a), free(b), free(c), free(d);
    hae_model_destroy(m1);
    hae_model_destroy(m2);
    hae_backend_destroy(be);
}

/* ---------------------------------------------------------------- float64 oracle of the whole stack */

typedef struct {
    hae_st_file *f;
} weights;

static double wget(const weights *w, const char *name, int64_t i) {
    const hae_st_tensor *t = hae_st_find(w->f, name);
    cr_assert(t, "tensor %s missing", name);
    return tu_get(t->data, t->dtype, i);
}

/* y[n] = sum_k x[k] W[n, k] */
static void linear(const weights *w, const char *name, const double *x, int64_t K, int64_t N, double *y) {
    for (int64_t n = 0; n < N; n++) {
        double s = 0;
        for (int64_t k = 0; k < K; k++) s += x[k] * wget(w, name, n * K + k);
        y[n] = s;
    }
}

static void rmsnorm(const weights *w, const char *name, const double *x, int64_t D, double eps, double *y) {
    double ss = 0;
    for (int64_t d = 0; d < D; d++) ss += x[d] * x[d];
    double r = 1.0 / sqrt(ss / (double)D + eps);
    for (int64_t d = 0; d < D; d++) y[d] = x[d] * r * wget(w, name, d);
}

static void rope(double *v, int64_t D, int64_t pos, double theta) {
    for (int64_t i = 0; i < D / 2; i++) {
        double ang = (double)pos * pow(theta, -2.0 * (double)i / (double)D), x1 = v[i], x2 = v[i + D / 2];
        v[i] = x1 * cos(ang) - x2 * sin(ang);
        v[i + D / 2] = x2 * cos(ang) + x1 * sin(ang);
    }
}

/* Logits of one sequence [CTX, V], every layer recomputed from scratch over all positions. */
static void oracle(const hae_config *cfg, const weights *w, const int32_t *tok, double *logits) {
    int64_t D = cfg->model.d_model, L = cfg->model.n_layers, Hq = cfg->model.attention.num_heads;
    int64_t Hkv = cfg->model.attention.num_kv_heads, Dh = cfg->model.attention.head_dim, F = cfg->model.mlp.intermediate_size;
    int64_t V = cfg->model.vocab_size, G = Hq / Hkv;
    double eps = cfg->model.norm_eps, theta = cfg->model.attention.rope_theta;
    double(*x)[64] = calloc(CTX, sizeof *x), h[64], q[CTX][64], k[CTX][32], v[CTX][32], o[64], g[96], u[96], y[64];
    cr_assert(D <= 64 && Hq * Dh <= 64 && Hkv * Dh <= 32 && F <= 96);
    char nm[128];
    for (int64_t t = 0; t < CTX; t++)
        for (int64_t d = 0; d < D; d++) x[t][d] = wget(w, "model.embed_tokens.weight", tok[t] * D + d);
    for (int64_t l = 0; l < L; l++) {
        int64_t window = cfg->model.layers[l] == HAE_LAYER_SWA ? cfg->model.swa.window_size : 0;
        for (int64_t t = 0; t < CTX; t++) {
            snprintf(nm, sizeof nm, "model.layers.%lld.input_layernorm.weight", (long long)l);
            rmsnorm(w, nm, x[t], D, eps, h);
            snprintf(nm, sizeof nm, "model.layers.%lld.self_attn.q_proj.weight", (long long)l);
            linear(w, nm, h, D, Hq * Dh, q[t]);
            snprintf(nm, sizeof nm, "model.layers.%lld.self_attn.k_proj.weight", (long long)l);
            linear(w, nm, h, D, Hkv * Dh, k[t]);
            snprintf(nm, sizeof nm, "model.layers.%lld.self_attn.v_proj.weight", (long long)l);
            linear(w, nm, h, D, Hkv * Dh, v[t]);
            for (int64_t hh = 0; hh < Hq; hh++) rope(q[t] + hh * Dh, Dh, t, theta);
            for (int64_t hh = 0; hh < Hkv; hh++) rope(k[t] + hh * Dh, Dh, t, theta);
        }
        for (int64_t t = 0; t < CTX; t++) {
            int64_t lo = window > 0 && t - window + 1 > 0 ? t - window + 1 : 0;
            for (int64_t hh = 0; hh < Hq; hh++) {
                int64_t kv = hh / G;
                double s[CTX], mx = -INFINITY, z = 0;
                for (int64_t j = lo; j <= t; j++) {
                    s[j] = 0;
                    for (int64_t d = 0; d < Dh; d++) s[j] += q[t][hh * Dh + d] * k[j][kv * Dh + d];
                    s[j] /= sqrt((double)Dh);
                    if (s[j] > mx) mx = s[j];
                }
                for (int64_t j = lo; j <= t; j++) z += s[j] = exp(s[j] - mx);
                for (int64_t d = 0; d < Dh; d++) {
                    double acc = 0;
                    for (int64_t j = lo; j <= t; j++) acc += s[j] * v[j][kv * Dh + d];
                    o[hh * Dh + d] = acc / z;
                }
            }
            snprintf(nm, sizeof nm, "model.layers.%lld.self_attn.o_proj.weight", (long long)l);
            linear(w, nm, o, Hq * Dh, D, y);
            for (int64_t d = 0; d < D; d++) x[t][d] += y[d];
        }
        for (int64_t t = 0; t < CTX; t++) {
            snprintf(nm, sizeof nm, "model.layers.%lld.post_attention_layernorm.weight", (long long)l);
            rmsnorm(w, nm, x[t], D, eps, h);
            snprintf(nm, sizeof nm, "model.layers.%lld.mlp.gate_proj.weight", (long long)l);
            linear(w, nm, h, D, F, g);
            snprintf(nm, sizeof nm, "model.layers.%lld.mlp.up_proj.weight", (long long)l);
            linear(w, nm, h, D, F, u);
            for (int64_t f = 0; f < F; f++) g[f] = g[f] / (1.0 + exp(-g[f])) * u[f];
            snprintf(nm, sizeof nm, "model.layers.%lld.mlp.down_proj.weight", (long long)l);
            linear(w, nm, g, F, D, y);
            for (int64_t d = 0; d < D; d++) x[t][d] += y[d];
        }
    }
    for (int64_t t = 0; t < CTX; t++) {
        rmsnorm(w, "model.norm.weight", x[t], D, eps, h);
        linear(w, "lm_head.weight", h, D, V, logits + t * V);
    }
    free(x);
}

Test(model, matches_float64_oracle) {
    hae_backend *be = tu_cpu();
    hae_config cfg;
    tiny(&cfg, NULL, 0);
    hae_model *m = tu_model(be, &cfg);
    int32_t tok[2 * CTX];
    tu_tokens(&cfg, CTX, tok, 3);
    float *got = tu_model_logits(m, &cfg, CTX, tok, prefill_then_decode, 7);
    char path[512];
    tu_tmp_path("oracle.safetensors", path, sizeof path);
    cr_assert_eq(hae_model_save(m, path), HAE_OK, "%s", hae_last_error());
    weights w;
    cr_assert_eq(hae_st_open(path, &w.f), HAE_OK, "%s", hae_last_error());
    int64_t V = cfg.model.vocab_size;
    double *ref = malloc(sizeof(double) * (size_t)(CTX * V));
    for (int b = 0; b < 2; b++) {
        oracle(&cfg, &w, tok + b * CTX, ref);
        char why[256];
        cr_expect(tu_close(got + b * CTX * V, HAE_F32, ref, CTX * V, 2e-5, 1e-5, 1e-3, why, sizeof why),
                  "sequence %d vs float64 oracle: %s", b, why);
    }
    free(ref);
    free(got);
    hae_st_close(w.f);
    remove(path);
    hae_model_destroy(m);
    hae_backend_destroy(be);
}

/* ---------------------------------------------------------------- mla, against textbook MLA in float64 */

/* The tiny stack with mla attention: 4 heads of nope 8 + rope 4 over a latent of 16, values of 6. */
static const char *const mla_sets[] = {"model.attention.form=mla", "model.attention.kv_lora_rank=16",
                                       "model.attention.qk_nope_head_dim=8", "model.attention.qk_rope_head_dim=4",
                                       "model.attention.v_head_dim=6"};

/* One sequence's logits computed the way MLA is written before absorption: per head, keys
 * [W_UK_h c | k_rope] and values W_UV_h c from the normed latent c, queries [q_nope | q_rope]. */
static void oracle_mla(const hae_config *cfg, const weights *w, const int32_t *tok, double *logits) {
    const int64_t D = cfg->model.d_model, L = cfg->model.n_layers, H = cfg->model.attention.num_heads;
    const int64_t R = cfg->model.attention.kv_lora_rank, NP = cfg->model.attention.qk_nope_head_dim;
    const int64_t RD = cfg->model.attention.qk_rope_head_dim, VD = cfg->model.attention.v_head_dim;
    const int64_t F = cfg->model.mlp.intermediate_size, V = cfg->model.vocab_size, QR = NP + RD;
    const double eps = cfg->model.norm_eps, theta = cfg->model.attention.rope_theta;
    double *x = malloc(sizeof(double) * (size_t)(CTX * D)), *q = malloc(sizeof(double) * (size_t)(CTX * H * QR));
    double *kv = malloc(sizeof(double) * (size_t)(CTX * H * (NP + VD))), *kr = malloc(sizeof(double) * (size_t)(CTX * RD));
    double h[64], a[64], c[64], o[64], y[64], g[96], u[96];
    cr_assert(x && q && kv && kr && D <= 64 && R + RD <= 64 && H * VD <= 64 && F <= 96);
    char nm[128];
    for (int64_t t = 0; t < CTX; t++)
        for (int64_t d = 0; d < D; d++) x[t * D + d] = wget(w, "model.embed_tokens.weight", tok[t] * D + d);
    for (int64_t l = 0; l < L; l++) {
        const int64_t window = cfg->model.layers[l] == HAE_LAYER_SWA ? cfg->model.swa.window_size : 0;
        for (int64_t t = 0; t < CTX; t++) {
            snprintf(nm, sizeof nm, "model.layers.%lld.input_layernorm.weight", (long long)l);
            rmsnorm(w, nm, x + t * D, D, eps, h);
            snprintf(nm, sizeof nm, "model.layers.%lld.self_attn.q_proj.weight", (long long)l);
            linear(w, nm, h, D, H * QR, q + t * H * QR);
            snprintf(nm, sizeof nm, "model.layers.%lld.self_attn.kv_a_proj_with_mqa.weight", (long long)l);
            linear(w, nm, h, D, R + RD, a);
            snprintf(nm, sizeof nm, "model.layers.%lld.self_attn.kv_a_layernorm.weight", (long long)l);
            rmsnorm(w, nm, a, R, eps, c);
            snprintf(nm, sizeof nm, "model.layers.%lld.self_attn.kv_b_proj.weight", (long long)l);
            linear(w, nm, c, R, H * (NP + VD), kv + t * H * (NP + VD));
            for (int64_t e = 0; e < RD; e++) kr[t * RD + e] = a[R + e];
            for (int64_t hh = 0; hh < H; hh++) rope(q + (t * H + hh) * QR + NP, RD, t, theta);
            rope(kr + t * RD, RD, t, theta);
        }
        for (int64_t t = 0; t < CTX; t++) {
            const int64_t lo = window > 0 && t - window + 1 > 0 ? t - window + 1 : 0;
            for (int64_t hh = 0; hh < H; hh++) {
                const double *qh = q + (t * H + hh) * QR;
                double s[CTX], mx = -INFINITY, z = 0;
                for (int64_t j = lo; j <= t; j++) {
                    const double *kh = kv + (j * H + hh) * (NP + VD);
                    s[j] = 0;
                    for (int64_t e = 0; e < NP; e++) s[j] += qh[e] * kh[e];
                    for (int64_t e = 0; e < RD; e++) s[j] += qh[NP + e] * kr[j * RD + e];
                    s[j] /= sqrt((double)QR);
                    mx = s[j] > mx ? s[j] : mx;
                }
                for (int64_t j = lo; j <= t; j++) z += s[j] = exp(s[j] - mx);
                for (int64_t e = 0; e < VD; e++) {
                    double acc = 0;
                    for (int64_t j = lo; j <= t; j++) acc += s[j] * kv[(j * H + hh) * (NP + VD) + NP + e];
                    o[hh * VD + e] = acc / z;
                }
            }
            snprintf(nm, sizeof nm, "model.layers.%lld.self_attn.o_proj.weight", (long long)l);
            linear(w, nm, o, H * VD, D, y);
            for (int64_t d = 0; d < D; d++) x[t * D + d] += y[d];
        }
        for (int64_t t = 0; t < CTX; t++) {
            snprintf(nm, sizeof nm, "model.layers.%lld.post_attention_layernorm.weight", (long long)l);
            rmsnorm(w, nm, x + t * D, D, eps, h);
            snprintf(nm, sizeof nm, "model.layers.%lld.mlp.gate_proj.weight", (long long)l);
            linear(w, nm, h, D, F, g);
            snprintf(nm, sizeof nm, "model.layers.%lld.mlp.up_proj.weight", (long long)l);
            linear(w, nm, h, D, F, u);
            for (int64_t f = 0; f < F; f++) g[f] = g[f] / (1.0 + exp(-g[f])) * u[f];
            snprintf(nm, sizeof nm, "model.layers.%lld.mlp.down_proj.weight", (long long)l);
            linear(w, nm, g, F, D, y);
            for (int64_t d = 0; d < D; d++) x[t * D + d] += y[d];
        }
    }
    for (int64_t t = 0; t < CTX; t++) {
        rmsnorm(w, "model.norm.weight", x + t * D, D, eps, h);
        linear(w, "lm_head.weight", h, D, V, logits + t * V);
    }
    free(x), free(q), free(kv), free(kr);
}

/* The absorbed form the engine runs (latent cache, one kv head of rope + lora dims) computes
 * textbook MLA, through prefill then decode, and a weights file round trip rebuilds the absorbed
 * maps; the cache holds one latent per token (half of what a separate V would add). */
Test(model, mla_matches_float64_oracle) {
    hae_backend *be = tu_cpu();
    hae_config cfg;
    tiny(&cfg, mla_sets, 5);
    hae_model *m = tu_model(be, &cfg);
    int32_t tok[2 * CTX];
    tu_tokens(&cfg, CTX, tok, 13);
    float *got = tu_model_logits(m, &cfg, CTX, tok, prefill_then_decode, 7);
    char path[512];
    tu_tmp_path("mla.safetensors", path, sizeof path);
    cr_assert_eq(hae_model_save(m, path), HAE_OK, "%s", hae_last_error());
    weights w;
    cr_assert_eq(hae_st_open(path, &w.f), HAE_OK, "%s", hae_last_error());
    const int64_t V = cfg.model.vocab_size;
    double *ref = malloc(sizeof(double) * (size_t)(CTX * V));
    for (int b = 0; b < 2; b++) {
        oracle_mla(&cfg, &w, tok + b * CTX, ref);
        char why[256];
        cr_expect(tu_close(got + b * CTX * V, HAE_F32, ref, CTX * V, 2e-5, 1e-5, 1e-3, why, sizeof why),
                  "mla sequence %d vs float64 oracle: %s", b, why);
    }
    /* another model loading the file (its own absorbed maps start from another seed) agrees bitwise */
    hae_model *m2 = tu_model(be, &cfg);
    cr_assert_eq(hae_model_init_weights(m2, 99), HAE_OK);
    cr_assert_eq(hae_model_load(m2, path), HAE_OK, "%s", hae_last_error());
    float *got2 = tu_model_logits(m2, &cfg, CTX, tok, one_shot, 1);
    float *got1 = tu_model_logits(m, &cfg, CTX, tok, one_shot, 1);
    cr_expect(memcmp(got1, got2, sizeof(float) * (size_t)(2 * CTX * V)) == 0, "mla weights loaded from a file");
    hae_model_plan plan;
    cr_assert_eq(hae_model_plan_get(&cfg, NULL, &plan), HAE_OK);
    cr_expect_eq(plan.kv_bytes_per_token[0], (size_t)(16 + 4) * 4, "mla caches one latent of 20 f32 per token");
    free(ref), free(got), free(got1), free(got2);
    hae_st_close(w.f);
    remove(path);
    hae_model_destroy(m), hae_model_destroy(m2);
    hae_backend_destroy(be);
}

/* ---------------------------------------------------------------- weights files */

Test(model, save_load_roundtrip_and_bad_files) {
    hae_backend *be = tu_cpu();
    const char *bf16 = "runtime.dtype=bf16";
    hae_config cfg;
    tiny(&cfg, &bf16, 1);
    hae_model *a = tu_model(be, &cfg), *b = tu_model(be, &cfg);
    cr_assert_eq(hae_model_init_weights(b, 12345), HAE_OK);
    char path[512];
    tu_tmp_path("roundtrip.safetensors", path, sizeof path);
    cr_assert_eq(hae_model_save(a, path), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(hae_model_load(b, path), HAE_OK, "%s", hae_last_error());
    int32_t tok[2 * CTX];
    tu_tokens(&cfg, CTX, tok, 4);
    float *la = tu_model_logits(a, &cfg, CTX, tok, one_shot, 1), *lb = tu_model_logits(b, &cfg, CTX, tok, one_shot, 1);
    cr_expect(memcmp(la, lb, sizeof(float) * (size_t)(2 * CTX * cfg.model.vocab_size)) == 0, "loaded weights give identical logits");
    /* an f32 model loads the bf16 file (converting) */
    hae_config cf;
    tiny(&cf, NULL, 0);
    hae_model *c = tu_model(be, &cf);
    cr_expect_eq(hae_model_load(c, path), HAE_OK, "%s", hae_last_error());
    const char *first = NULL;
    cr_expect_eq(hae_model_unused_tensors(c, &first), 0, "the same model's file: every tensor read (first unused '%s')", first);
    /* a shallower model loads a deeper one's file, and counts the layers it skipped */
    char ks[48];
    snprintf(ks, sizeof ks, "model.n_layers=%lld", (long long)cfg.model.n_layers - 1);
    const char *shallow[] = {ks};
    hae_config cs;
    tiny(&cs, shallow, 1);
    hae_model *sh = tu_model(be, &cs);
    cr_expect_eq(hae_model_load(sh, path), HAE_OK, "%s", hae_last_error());
    char last[64];
    snprintf(last, sizeof last, "model.layers.%lld.", (long long)cfg.model.n_layers - 1);
    const int unused = hae_model_unused_tensors(sh, &first);
    cr_expect(unused >= 5 && strncmp(first, last, strlen(last)) == 0, "%d unused tensors, the first '%s' (the last layer's "
              "expected)", unused, first);
    hae_model_destroy(sh);
    /* a model of another width: shape error naming the tensor and both shapes */
    const char *wide[] = {"model.d_model=48"};
    hae_config cw;
    tiny(&cw, wide, 1);
    hae_model *d = tu_model(be, &cw);
    cr_expect_eq(hae_model_load(d, path), HAE_ERR_FORMAT);
    cr_expect(strstr(hae_last_error(), "model.embed_tokens.weight") && strstr(hae_last_error(), "[61, 32]") &&
                  strstr(hae_last_error(), "[61, 48]"),
              "%s", hae_last_error());
    /* tied embeddings save no lm_head; an untied model then misses it */
    const char *tied[] = {"model.tie_word_embeddings=true"};
    hae_config ct;
    tiny(&ct, tied, 1);
    hae_model *e = tu_model(be, &ct);
    char tpath[512];
    tu_tmp_path("tied.safetensors", tpath, sizeof tpath);
    cr_assert_eq(hae_model_save(e, tpath), HAE_OK, "%s", hae_last_error());
    cr_expect_eq(hae_model_load(a, tpath), HAE_ERR_FORMAT);
    cr_expect(strstr(hae_last_error(), "lm_head.weight") && strstr(hae_last_error(), "missing"), "%s", hae_last_error());
    cr_expect_eq(hae_model_load(a, "/nonexistent/weights.safetensors"), HAE_ERR_IO);
    remove(path);
    remove(tpath);
    free(la), free(lb);
    hae_model_destroy(a), hae_model_destroy(b), hae_model_destroy(c), hae_model_destroy(d), hae_model_destroy(e);
    hae_backend_destroy(be);
}

/* ---------------------------------------------------------------- errors */

Test(model, user_errors) {
    hae_backend *be = tu_cpu();
    hae_config cfg;
    tiny(&cfg, NULL, 0);
    hae_model *m = tu_model(be, &cfg);
    hae_tensor logits;
    int32_t tok[2 * CTX] = {0};
    tok[3] = 61;
    cr_expect_eq(hae_model_forward(m, tok, 4, &logits), HAE_ERR_INVALID);
    cr_expect(strstr(hae_last_error(), "token 61") && strstr(hae_last_error(), "[0, 61)"), "%s", hae_last_error());
    tok[3] = 0;
    cr_expect_eq(hae_model_forward(m, tok, CTX, &logits), HAE_OK, "%s", hae_last_error());
    cr_expect_eq(hae_model_forward(m, tok, 1, &logits), HAE_ERR_INVALID, "past the sized context");
    cr_expect(strstr(hae_last_error(), "exceed the context of 19"), "%s", hae_last_error());
    cr_expect_eq(hae_model_forward(m, tok, 0, &logits), HAE_ERR_INVALID);
    hae_model_destroy(m);

    /* a KV budget smaller than the cache: HAE_ERR_OOM before allocating, naming both byte counts */
    const char *tight[] = {"runtime.kv_budget=1000"};
    hae_config ct;
    tiny(&ct, tight, 1);
    hae_model_plan plan;
    cr_assert_eq(hae_model_plan_get(&ct, NULL, &plan), HAE_OK);
    m = NULL;
    cr_expect_eq(hae_model_create(&ct, be, NULL, &m), HAE_ERR_OOM);
    char want[64];
    snprintf(want, sizeof want, "%zu bytes", plan.kv_bytes);
    cr_expect(strstr(hae_last_error(), want) && strstr(hae_last_error(), "1000 bytes"), "%s (want '%s')",
              hae_last_error(), want);
    cr_expect_null(m);

    /* a kind the build lacks, set behind the config checker's back */
    cfg.model.layers[1] = HAE_LAYER_KIND_COUNT;
    cr_expect_eq(hae_model_create(&cfg, be, NULL, &m), HAE_ERR_UNSUPPORTED);
    cr_expect(strstr(hae_last_error(), "layer 1") && strstr(hae_last_error(), "not built"), "%s", hae_last_error());
    hae_backend_destroy(be);
}

Test(model, plan_counts_match_allocation) {
    hae_backend *be = tu_cpu();
    hae_config cfg;
    tiny(&cfg, NULL, 0);
    hae_model_plan p;
    cr_assert_eq(hae_model_plan_get(&cfg, NULL, &p), HAE_OK);
    hae_model *m = NULL;
    cr_assert_eq(hae_model_create(&cfg, be, NULL, &m), HAE_OK, "%s", hae_last_error());
    hae_model_stats s;
    hae_model_stats_get(m, &s);
    int64_t D = 32, F = 48, V = 61, q = 32, kv = 16;
    int64_t per_layer = 2 * D + (q + 2 * kv) * D + D * q + 3 * F * D;
    cr_expect_eq(p.n_params, V * D * 2 + 3 * per_layer + D);
    cr_expect_eq(s.n_params, p.n_params);
    cr_expect_eq(s.kv_bytes, p.kv_bytes);
    /* full layer: 19 slots; swa: window 5 + chunk 4 - 1 = 8 slots; 2 kv heads x 8 x 4 B x (K, V) */
    cr_expect_eq(p.kv_slots[0], 8);
    cr_expect_eq(p.kv_slots[1], 19);
    cr_expect_eq(p.kv_bytes_per_token[1], 2 * 2 * 8 * 4);
    cr_expect_eq(p.kv_bytes, (size_t)2 * (8 + 19 + 8) * 128);
    hae_model_destroy(m);
    hae_backend_destroy(be);
}

/* Models with linear layers (kda and its family) on the CPU: a float64 oracle of the whole stack
 * written from flash-linear-attention's layer definitions and the saved tensor names, decode after
 * prefill == one prefill for every kind, chunking, state reset, saved names and shapes, the plan. */
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Two linear layers of KIND (or KIND then full), GVA 2 -> 4 heads, K 8, V 12, conv width 3. */
static const char *yaml_fmt = "name: tiny-linear\n"
                              "seed: 11\n"
                              "model:\n"
                              "  vocab_size: 53\n"
                              "  d_model: 32\n"
                              "  n_layers: 2\n"
                              "  layer_pattern: [%s, %s]\n"
                              "  mlp: {intermediate_size: 40}\n"
                              "  attention: {num_heads: 4, num_kv_heads: 2, head_dim: 8, rope: full}\n"
                              "  linear_attn: {num_heads: 2, num_v_heads: 4, head_dim: 8, expand_v: 1.5, conv_size: 3,\n"
                              "                chunk_size: 16, safe_gate: %s, lower_bound: -4.0}\n"
                              "runtime:\n"
                              "  backend: cpu\n"
                              "  dtype: %s\n"
                              "  batch: 2\n"
                              "  prefill: 21\n"
                              "  decode: 6\n"
                              "  prefill_chunk: %d\n";

#define CTX 27
static const char *const kinds[] = {"kda", "gdn", "deltanet", "gla", "mamba2", "retnet", "linear"};
#define NKINDS 7

static void make_cfg(hae_config *cfg, const char *k0, const char *k1, bool safe, const char *dtype, int chunk) {
    char y[2048];
    snprintf(y, sizeof y, yaml_fmt, k0, k1, safe ? "true" : "false", dtype, chunk);
    tu_config(y, cfg);
}

static const int64_t one_shot[] = {CTX};
static const int64_t prefill_then_decode[] = {21, 1, 1, 1, 1, 1, 1};
static const int64_t ragged[] = {5, 1, 17, 1, 3};

Test(model_linear, decode_after_prefill_equals_one_prefill_every_kind) {
    hae_backend *be = tu_cpu();
    for (int k = 0; k < NKINDS; k++) {
        for (int mixed = 0; mixed < 2; mixed++) {
            hae_config cfg, cfg0;
            make_cfg(&cfg, kinds[k], mixed ? "full" : kinds[k], k % 2 == 0, "f32", 8);
            make_cfg(&cfg0, kinds[k], mixed ? "full" : kinds[k], k % 2 == 0, "f32", 0);
            hae_model *m = tu_model(be, &cfg), *m0 = tu_model(be, &cfg0);
            int32_t tok[2 * CTX];
            tu_tokens(&cfg, CTX, tok, 100 + (uint64_t)k);
            float *a = tu_model_logits(m0, &cfg0, CTX, tok, one_shot, 1);
            float *b = tu_model_logits(m, &cfg, CTX, tok, prefill_then_decode, 7);
            float *c = tu_model_logits(m, &cfg, CTX, tok, ragged, 5);
            float *d = tu_model_logits(m0, &cfg0, CTX, tok, one_shot, 1); /* the states were reset: the same again */
            int64_t n = 2 * CTX * cfg.model.vocab_size;
            const char *what = mixed ? "+full" : "";
            cr_expect_leq(tu_rel_rms(b, a, n), 2e-6, "%s%s: prefill (chunks of 8) then decode vs one prefill: %.3g",
                          kinds[k], what, tu_rel_rms(b, a, n));
            cr_expect_leq(tu_rel_rms(c, a, n), 2e-6, "%s%s: ragged forwards vs one prefill: %.3g", kinds[k], what,
                          tu_rel_rms(c, a, n));
            cr_expect(memcmp(a, d, sizeof(float) * (size_t)n) == 0, "%s%s: reset does not clear the states", kinds[k],
                      what);
            free(a), free(b), free(c), free(d);
            hae_model_destroy(m);
            hae_model_destroy(m0);
        }
    }
    hae_backend_destroy(be);
}

Test(model_linear, bf16_decode_tracks_prefill) {
    hae_backend *be = tu_cpu();
    hae_config cfg;
    make_cfg(&cfg, "kda", "full", true, "bf16", 8);
    hae_model *m = tu_model(be, &cfg);
    int32_t tok[2 * CTX];
    tu_tokens(&cfg, CTX, tok, 5);
    float *a = tu_model_logits(m, &cfg, CTX, tok, one_shot, 1), *b = tu_model_logits(m, &cfg, CTX, tok, prefill_then_decode, 7);
    double d = tu_rel_rms(b, a, 2 * CTX * cfg.model.vocab_size);
    cr_expect_leq(d, 2e-2, "bf16 kda: decode vs prefill %.3g", d);
    free(a), free(b);
    hae_model_destroy(m);
    hae_backend_destroy(be);
}

/* ---------------------------------------------------------------- float64 oracle */

typedef struct {
    hae_st_file *f;
} weights;

static const hae_st_tensor *tensor(const weights *w, const char *name) {
    const hae_st_tensor *t = hae_st_find(w->f, name);
    cr_assert(t, "tensor %s missing", name);
    return t;
}
static double wat(const hae_st_tensor *t, int64_t i) { return tu_get(t->data, t->dtype, i); }

/* y[n] = sum_k x[k] W[n, k] */
static void dense(const weights *w, const char *name, const double *x, int64_t K, int64_t N, double *y) {
    const hae_st_tensor *t = tensor(w, name);
    cr_assert(t->shape[0] == N && t->shape[1] == K, "%s: [%lld, %lld], expected [%lld, %lld]", name,
              (long long)t->shape[0], (long long)t->shape[1], (long long)N, (long long)K);
    for (int64_t n = 0; n < N; n++) {
        double s = 0;
        for (int64_t k = 0; k < K; k++) s += x[k] * wat(t, n * K + k);
        y[n] = s;
    }
}

static void rmsnorm(const weights *w, const char *name, const double *x, int64_t D, double eps, double *y) {
    const hae_st_tensor *t = tensor(w, name);
    double ss = 0;
    for (int64_t d = 0; d < D; d++) ss += x[d] * x[d];
    double r = 1.0 / sqrt(ss / (double)D + eps);
    for (int64_t d = 0; d < D; d++) y[d] = x[d] * r * wat(t, d);
}

static double sigm(double x) { return 1.0 / (1.0 + exp(-x)); }
static double silu(double x) { return x * sigm(x); }
static double softplus(double x) { return x > 20 ? x : log1p(exp(x)); }

#define NAME(buf, l, suffix) snprintf(buf, sizeof buf, "model.layers.%d.%s", l, suffix)
enum { D_ = 32, H_ = 2, HV_ = 4, K_ = 8, V_ = 12, W_ = 3, F_ = 40 };

/* One sequence through the stack of two linear layers of `kind`, every layer from scratch over all
 * positions in float64, reading the weights by their saved names. */
static void oracle(const hae_config *cfg, const weights *w, const hae_linear_kind *lk, const int32_t *tok,
                   double *logits) {
    const int64_t Vocab = cfg->model.vocab_size;
    const double eps = cfg->model.norm_eps, lb = cfg->model.linear_attn.lower_bound;
    const bool safe = cfg->model.linear_attn.safe_gate;
    static double x[CTX][D_], raw[CTX][2 * H_ * K_ + HV_ * V_], conv[CTX][2 * H_ * K_ + HV_ * V_];
    static double graw[CTX][HV_ * K_], braw[CTX][HV_], gout[CTX][HV_ * V_], o[CTX][HV_ * V_];
    double h[D_], f1[V_], g1[V_], y[D_], gg[2 * F_], S[HV_][K_][V_];
    char nm[160];
    const hae_st_tensor *emb = tensor(w, "model.embed_tokens.weight");
    for (int t = 0; t < CTX; t++)
        for (int d = 0; d < D_; d++) x[t][d] = wat(emb, tok[t] * D_ + d);
    const int C = 2 * H_ * K_ + HV_ * V_;
    for (int l = 0; l < 2; l++) {
        for (int t = 0; t < CTX; t++) {
            NAME(nm, l, "input_layernorm.weight");
            rmsnorm(w, nm, x[t], D_, eps, h);
            NAME(nm, l, "attn.q_proj.weight");
            dense(w, nm, h, D_, H_ * K_, raw[t]);
            NAME(nm, l, "attn.k_proj.weight");
            dense(w, nm, h, D_, H_ * K_, raw[t] + H_ * K_);
            NAME(nm, l, "attn.v_proj.weight");
            dense(w, nm, h, D_, HV_ * V_, raw[t] + 2 * H_ * K_);
            if (lk->decay == HAE_DECAY_CHANNEL) {
                NAME(nm, l, "attn.f_proj.0.weight");
                dense(w, nm, h, D_, V_, f1);
                NAME(nm, l, "attn.f_proj.1.weight");
                dense(w, nm, f1, V_, HV_ * K_, graw[t]);
            } else if (lk->decay == HAE_DECAY_HEAD) {
                NAME(nm, l, "attn.a_proj.weight");
                dense(w, nm, h, D_, HV_, graw[t]);
            }
            if (lk->delta) {
                NAME(nm, l, "attn.b_proj.weight");
                dense(w, nm, h, D_, HV_, braw[t]);
            }
            NAME(nm, l, "attn.g_proj.0.weight");
            dense(w, nm, h, D_, V_, g1);
            NAME(nm, l, "attn.g_proj.1.weight");
            dense(w, nm, g1, V_, HV_ * V_, gout[t]);
        }
        /* depthwise causal conv, weights [C, 1, W] per projection, then SiLU */
        const char *const cn[3] = {"attn.q_conv1d.weight", "attn.k_conv1d.weight", "attn.v_conv1d.weight"};
        const int c0[4] = {0, H_ * K_, 2 * H_ * K_, C};
        for (int p = 0; p < 3; p++) {
            NAME(nm, l, cn[p]);
            const hae_st_tensor *cw = tensor(w, nm);
            cr_assert(cw->ndim == 3 && cw->shape[0] == c0[p + 1] - c0[p] && cw->shape[1] == 1 && cw->shape[2] == W_,
                      "%s has the wrong shape", nm);
            for (int t = 0; t < CTX; t++)
                for (int c = c0[p]; c < c0[p + 1]; c++) {
                    double s = 0;
                    for (int i = 0; i < W_; i++) {
                        int src = t - (W_ - 1) + i;
                        if (src >= 0) s += wat(cw, (c - c0[p]) * W_ + i) * raw[src][c];
                    }
                    conv[t][c] = silu(s);
                }
        }
        const hae_st_tensor *alog = NULL, *dtb = NULL;
        if (lk->decay != HAE_DECAY_NONE) NAME(nm, l, "attn.A_log"), alog = tensor(w, nm);
        if (lk->decay == HAE_DECAY_CHANNEL || lk->decay == HAE_DECAY_HEAD) NAME(nm, l, "attn.dt_bias"), dtb = tensor(w, nm);
        memset(S, 0, sizeof S);
        for (int t = 0; t < CTX; t++)
            for (int j = 0; j < HV_; j++) {
                int hq = j / (HV_ / H_);
                double q[K_], k[K_], g[K_], qn = 0, kn = 0;
                const double *v = conv[t] + 2 * H_ * K_ + j * V_;
                for (int c = 0; c < K_; c++) q[c] = conv[t][hq * K_ + c], k[c] = conv[t][H_ * K_ + hq * K_ + c];
                if (lk->qk_map == HAE_QK_ELU1) {
                    for (int c = 0; c < K_; c++) q[c] = q[c] > 0 ? q[c] + 1 : exp(q[c]), k[c] = k[c] > 0 ? k[c] + 1 : exp(k[c]);
                } else {
                    for (int c = 0; c < K_; c++) qn += q[c] * q[c], kn += k[c] * k[c];
                    for (int c = 0; c < K_; c++) q[c] /= sqrt(qn + 1e-6), k[c] /= sqrt(kn + 1e-6);
                }
                for (int c = 0; c < K_; c++) {
                    if (lk->decay == HAE_DECAY_NONE) {
                        g[c] = 0;
                    } else if (lk->decay == HAE_DECAY_FIXED) {
                        g[c] = -exp(wat(alog, j));
                    } else {
                        bool ch = lk->decay == HAE_DECAY_CHANNEL;
                        double a = (ch ? graw[t][j * K_ + c] : graw[t][j]) + wat(dtb, ch ? j * K_ + c : j);
                        double A = exp(wat(alog, j));
                        g[c] = safe ? lb * sigm(A * a) : -A * softplus(a);
                    }
                }
                for (int c = 0; c < K_; c++)
                    for (int e = 0; e < V_; e++) S[j][c][e] *= exp(g[c]);
                double u[V_];
                for (int e = 0; e < V_; e++) {
                    double kS = 0;
                    for (int c = 0; c < K_; c++) kS += k[c] * S[j][c][e];
                    u[e] = lk->delta ? sigm(braw[t][j]) * (v[e] - kS) : v[e];
                }
                for (int c = 0; c < K_; c++)
                    for (int e = 0; e < V_; e++) S[j][c][e] += k[c] * u[e];
                double ss = 0;
                for (int e = 0; e < V_; e++) {
                    double s = 0;
                    for (int c = 0; c < K_; c++) s += q[c] * S[j][c][e];
                    o[t][j * V_ + e] = s / sqrt((double)K_);
                    ss += o[t][j * V_ + e] * o[t][j * V_ + e];
                }
                NAME(nm, l, "attn.o_norm.weight");
                const hae_st_tensor *on = tensor(w, nm);
                double r = 1.0 / sqrt(ss / V_ + eps);
                for (int e = 0; e < V_; e++) o[t][j * V_ + e] *= r * wat(on, e) * sigm(gout[t][j * V_ + e]);
            }
        for (int t = 0; t < CTX; t++) {
            NAME(nm, l, "attn.o_proj.weight");
            dense(w, nm, o[t], HV_ * V_, D_, y);
            for (int d = 0; d < D_; d++) x[t][d] += y[d];
            NAME(nm, l, "post_attention_layernorm.weight");
            rmsnorm(w, nm, x[t], D_, eps, h);
            NAME(nm, l, "mlp.gate_proj.weight");
            dense(w, nm, h, D_, F_, gg);
            NAME(nm, l, "mlp.up_proj.weight");
            dense(w, nm, h, D_, F_, gg + F_);
            for (int f = 0; f < F_; f++) gg[f] = silu(gg[f]) * gg[F_ + f];
            NAME(nm, l, "mlp.down_proj.weight");
            dense(w, nm, gg, F_, D_, y);
            for (int d = 0; d < D_; d++) x[t][d] += y[d];
        }
    }
    for (int t = 0; t < CTX; t++) {
        rmsnorm(w, "model.norm.weight", x[t], D_, eps, h);
        dense(w, "lm_head.weight", h, D_, Vocab, logits + t * Vocab);
    }
}

Test(model_linear, matches_float64_oracle_every_kind) {
    hae_backend *be = tu_cpu();
    for (int k = 0; k < NKINDS; k++) {
        hae_config cfg;
        make_cfg(&cfg, kinds[k], kinds[k], k % 2 == 1, "f32", 8);
        hae_model *m = tu_model(be, &cfg);
        int32_t tok[2 * CTX];
        tu_tokens(&cfg, CTX, tok, 30 + (uint64_t)k);
        float *got = tu_model_logits(m, &cfg, CTX, tok, prefill_then_decode, 7);
        char path[512];
        tu_tmp_path("linear-oracle.safetensors", path, sizeof path);
        cr_assert_eq(hae_model_save(m, path), HAE_OK, "%s", hae_last_error());
        weights w;
        cr_assert_eq(hae_st_open(path, &w.f), HAE_OK, "%s", hae_last_error());
        hae_linear_kind lk;
        cr_assert(hae_linear_kind_of(cfg.model.layers[0], &lk));
        int64_t V = cfg.model.vocab_size;
        double *ref = malloc(sizeof(double) * (size_t)(CTX * V));
        for (int b = 0; b < 2; b++) {
            oracle(&cfg, &w, &lk, tok + b * CTX, ref);
            char why[256];
            cr_expect(tu_close(got + b * CTX * V, HAE_F32, ref, CTX * V, 2e-5, 1e-5, 1e-3, why, sizeof why),
                      "%s (%s gate), sequence %d vs float64 oracle: %s", kinds[k], k % 2 ? "safe" : "softplus", b, why);
        }
        free(ref);
        free(got);
        hae_st_close(w.f);
        remove(path);
        hae_model_destroy(m);
    }
    hae_backend_destroy(be);
}

/* ---------------------------------------------------------------- weights and plan */

Test(model_linear, saved_names_shapes_and_roundtrip) {
    hae_backend *be = tu_cpu();
    hae_config cfg;
    make_cfg(&cfg, "kda", "gdn", true, "bf16", 8);
    hae_model *a = tu_model(be, &cfg), *b = tu_model(be, &cfg);
    cr_assert_eq(hae_model_init_weights(b, 999), HAE_OK);
    char path[512];
    tu_tmp_path("linear-roundtrip.safetensors", path, sizeof path);
    cr_assert_eq(hae_model_save(a, path), HAE_OK, "%s", hae_last_error());
    hae_st_file *f;
    cr_assert_eq(hae_st_open(path, &f), HAE_OK, "%s", hae_last_error());
    static const struct {
        const char *name;
        int ndim;
        int64_t shape[3];
    } want[] = {
        {"model.layers.0.attn.q_proj.weight", 2, {16, 32}},     {"model.layers.0.attn.v_proj.weight", 2, {48, 32}},
        {"model.layers.0.attn.f_proj.0.weight", 2, {12, 32}},   {"model.layers.0.attn.f_proj.1.weight", 2, {32, 12}},
        {"model.layers.0.attn.b_proj.weight", 2, {4, 32}},      {"model.layers.0.attn.g_proj.1.weight", 2, {48, 12}},
        {"model.layers.0.attn.q_conv1d.weight", 3, {16, 1, 3}}, {"model.layers.0.attn.v_conv1d.weight", 3, {48, 1, 3}},
        {"model.layers.0.attn.A_log", 1, {4}},                  {"model.layers.0.attn.dt_bias", 1, {32}},
        {"model.layers.0.attn.o_norm.weight", 1, {12}},         {"model.layers.0.attn.o_proj.weight", 2, {32, 48}},
        {"model.layers.1.attn.a_proj.weight", 2, {4, 32}},      {"model.layers.1.attn.dt_bias", 1, {4}},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const hae_st_tensor *t = hae_st_find(f, want[i].name);
        cr_expect(t, "%s missing", want[i].name);
        if (!t) continue;
        cr_expect_eq(t->ndim, want[i].ndim, "%s ndim", want[i].name);
        for (int d = 0; d < want[i].ndim; d++)
            cr_expect_eq(t->shape[d], want[i].shape[d], "%s dim %d", want[i].name, d);
    }
    cr_expect_null(hae_st_find(f, "model.layers.1.attn.f_proj.1.weight"), "gdn has a per-head gate");
    /* A_log of kda is log(uniform(1, 16)); the bf16 model keeps it in f32 */
    const hae_st_tensor *al = hae_st_find(f, "model.layers.0.attn.A_log");
    cr_assert(al);
    cr_expect_eq(al->dtype, HAE_F32);
    for (int j = 0; j < 4; j++) {
        double v = tu_get(al->data, al->dtype, j);
        cr_expect(v >= 0 && v <= log(16.0), "A_log[%d] = %g outside [0, log 16]", j, v);
    }
    hae_st_close(f);
    cr_assert_eq(hae_model_load(b, path), HAE_OK, "%s", hae_last_error());
    int32_t tok[2 * CTX];
    tu_tokens(&cfg, CTX, tok, 9);
    float *la = tu_model_logits(a, &cfg, CTX, tok, one_shot, 1), *lb = tu_model_logits(b, &cfg, CTX, tok, one_shot, 1);
    cr_expect(memcmp(la, lb, sizeof(float) * (size_t)(2 * CTX * cfg.model.vocab_size)) == 0,
              "loaded weights give identical logits");
    /* layer 0 as gdn needs a per-head gate projection the kda file lacks */
    hae_config other;
    make_cfg(&other, "gdn", "gdn", true, "bf16", 8);
    hae_model *c = tu_model(be, &other);
    cr_expect_eq(hae_model_load(c, path), HAE_ERR_FORMAT);
    cr_expect(strstr(hae_last_error(), "model.layers.0.attn.a_proj.weight") && strstr(hae_last_error(), "missing"), "%s",
              hae_last_error());
    /* other value heads: a shape error naming the tensor */
    hae_config gva = cfg;
    gva.model.linear_attn.num_v_heads = 2;
    hae_model *d = tu_model(be, &gva);
    cr_expect_eq(hae_model_load(d, path), HAE_ERR_FORMAT);
    cr_expect(strstr(hae_last_error(), "v_proj.weight") && strstr(hae_last_error(), "[48, 32]"), "%s", hae_last_error());
    remove(path);
    free(la), free(lb);
    hae_model_destroy(a), hae_model_destroy(b), hae_model_destroy(c), hae_model_destroy(d);
    hae_backend_destroy(be);
}

Test(model_linear, plan_counts_states_and_no_kv) {
    hae_backend *be = tu_cpu();
    hae_config cfg;
    make_cfg(&cfg, "kda", "full", true, "f32", 8);
    hae_model_plan p;
    const hae_model_options opt = {.all_logits = true}; /* tu_model's */
    cr_assert_eq(hae_model_plan_get(&cfg, &opt, &p), HAE_OK, "%s", hae_last_error());
    hae_model *m = tu_model(be, &cfg);
    hae_model_stats s;
    hae_model_stats_get(m, &s);
    cr_expect_eq(s.n_params, p.n_params);
    cr_expect_eq(s.kv_bytes, p.kv_bytes);
    cr_expect_eq(s.state_bytes, p.state_bytes);
    cr_expect_eq(p.kv_slots[0], 0, "a linear layer keeps no KV");
    cr_expect_eq(p.kv_bytes_per_token[0], 0);
    cr_expect_eq(p.kv_slots[1], CTX);
    /* per sequence: state HV x K x V f32 + conv tail (W - 1) x (2 H K + HV V) f32 */
    size_t per_seq = (size_t)(HV_ * K_ * V_ + (W_ - 1) * (2 * H_ * K_ + HV_ * V_)) * 4;
    cr_expect_eq(p.state_bytes_per_seq[0], per_seq);
    cr_expect_eq(p.state_bytes_per_seq[1], 0);
    cr_expect_geq(p.state_bytes, 2 * per_seq);
    /* parameters of the kda layer: norm, in-proj, conv, f2, g2, A_log, dt_bias, o_norm, o_proj, MLP */
    int64_t in = 2 * H_ * K_ + HV_ * V_ + V_ + HV_ + V_;
    int64_t kda = D_ + in * D_ + (2 * H_ * K_ + HV_ * V_) * W_ + HV_ * K_ * V_ + HV_ * V_ * V_ + HV_ + HV_ * K_ + V_ +
                  D_ * HV_ * V_ + D_ + 3 * F_ * D_;
    int64_t full = D_ + 64 * D_ + D_ * 32 + D_ + 3 * F_ * D_;
    cr_expect_eq(p.n_params, 53 * D_ * 2 + kda + full + D_);
    cr_expect_eq(s.activation_bytes, p.activation_bytes, "a CPU run allocates the activations its plan counts: %zu vs %zu",
                 s.activation_bytes, p.activation_bytes);
    /* A GPU run adds the chunked form's workspace, counted in a build without CUDA too (hae mem plans for the
     * GPU): G = B ceil(chunk / 64) + B = 4 chunks x HV value heads of w, kd, qg [64, K], u [64, V], P [64, 64],
     * h [K, V] f32 and gl [K] f32, then B + 1 chunk offsets; each region rounded to 16 bytes, the buffer to the
     * activations' alignment. */
    hae_config gpu = cfg;
    gpu.runtime.backend = HAE_BACKEND_CUDA;
    hae_model_plan pg;
    cr_assert_eq(hae_model_plan_get(&gpu, &opt, &pg), HAE_OK, "%s", hae_last_error());
    const size_t gh = 4 * HV_, ws = gh * 64 * (3 * K_ + V_ + 64) * 4 + gh * K_ * V_ * 4 + gh * K_ * 4 + 16;
    cr_expect(pg.activation_bytes >= p.activation_bytes + ws && pg.activation_bytes < p.activation_bytes + ws + 256,
              "GPU plan %zu bytes of activations, CPU plan %zu: the workspace is %zu", pg.activation_bytes,
              p.activation_bytes, ws);
    hae_model_destroy(m);
    hae_backend_destroy(be);
}

/* ---------------------------------------------------------------- snapshots */

Test(model_linear, snapshot_branches_off_a_prefix) {
    hae_backend *be = tu_cpu();
    hae_config cfg;
    make_cfg(&cfg, "kda", "full", true, "f32", 8);
    hae_model *m = tu_model(be, &cfg), *m2 = tu_model(be, &cfg);
    int32_t tok[2 * CTX], step[2] = {3, 4};
    tu_tokens(&cfg, CTX, tok, 77);
    int64_t V = cfg.model.vocab_size;
    hae_tensor lg;
    cr_assert_eq(hae_model_forward(m, tok, 21, &lg), HAE_OK, "%s", hae_last_error());
    size_t n = hae_model_snapshot_bytes(m);
    hae_model_stats st;
    hae_model_stats_get(m, &st);
    cr_expect_gt(n, st.state_bytes + st.kv_bytes, "the snapshot holds the states and the KV cache");
    void *snap = malloc(n);
    cr_assert_eq(hae_model_snapshot_save(m, snap, n), HAE_OK, "%s", hae_last_error());
    float *a = malloc(sizeof(float) * (size_t)(2 * V)), *b = malloc(sizeof(float) * (size_t)(2 * V));
    cr_assert_eq(hae_model_forward(m, step, 1, &lg), HAE_OK);
    memcpy(a, (float *)lg.data + 21 * V, sizeof(float) * (size_t)V); /* sequence 0 at position 21 */
    cr_assert_eq(hae_model_forward(m, step, 1, &lg), HAE_OK, "a second step moves on");
    cr_expect_eq(hae_model_position(m), 23);
    cr_assert_eq(hae_model_snapshot_restore(m, snap, n), HAE_OK, "%s", hae_last_error());
    cr_expect_eq(hae_model_position(m), 21);
    cr_assert_eq(hae_model_forward(m, step, 1, &lg), HAE_OK);
    memcpy(b, (float *)lg.data + 21 * V, sizeof(float) * (size_t)V);
    cr_expect(memcmp(a, b, sizeof(float) * (size_t)V) == 0, "the restored prefix continues identically");
    /* into another model of the same config */
    cr_assert_eq(hae_model_snapshot_restore(m2, snap, n), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(hae_model_forward(m2, step, 1, &lg), HAE_OK);
    cr_expect(memcmp(a, (float *)lg.data + 21 * V, sizeof(float) * (size_t)V) == 0, "and in a second model");
    /* bad snapshots change nothing */
    cr_expect_eq(hae_model_snapshot_restore(m2, snap, n - 1), HAE_ERR_INVALID);
    cr_expect(strstr(hae_last_error(), "taken of a model"), "%s", hae_last_error());
    cr_expect_eq(hae_model_snapshot_restore(m2, snap, 3), HAE_ERR_INVALID);
    cr_expect_eq(hae_model_snapshot_save(m2, snap, n + 1), HAE_ERR_INVALID);
    char *bad = malloc(n);
    memcpy(bad, snap, n);
    bad[0] = 'x';
    cr_expect_eq(hae_model_snapshot_restore(m2, bad, n), HAE_ERR_INVALID);
    cr_expect(strstr(hae_last_error(), "magic"), "%s", hae_last_error());
    cr_expect_eq(hae_model_position(m2), 22, "a failed restore leaves the position");
    hae_config other;
    make_cfg(&other, "gdn", "full", true, "f32", 8);
    hae_model *m3 = tu_model(be, &other);
    cr_expect_eq(hae_model_snapshot_restore(m3, snap, n), HAE_ERR_INVALID, "another model's snapshot");
    cr_expect(strstr(hae_last_error(), "other layer kinds or shapes"), "%s", hae_last_error());
    free(bad), free(snap), free(a), free(b);
    hae_model_destroy(m), hae_model_destroy(m2), hae_model_destroy(m3);
    hae_backend_destroy(be);
}

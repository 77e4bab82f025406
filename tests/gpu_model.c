/* The whole stack on CUDA vs the same weights on the CPU: every position's logits, decode after
 * prefill, and the greedy tokens of a short generation. main() is tests/main_gpu.c's. */
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *yaml = "name: gpu-tiny\n"
                          "seed: 5\n"
                          "model:\n"
                          "  vocab_size: 300\n"
                          "  d_model: 128\n"
                          "  n_layers: 4\n"
                          "  layer_pattern: [swa, swa, full]\n"
                          "  mlp: {intermediate_size: 320}\n"
                          "  attention: {num_heads: 8, num_kv_heads: 2, head_dim: 32, rope: partial, partial_rotary_factor: 0.5}\n"
                          "  swa: {window_size: 24}\n"
                          "  linear_attn: {num_heads: 2, num_v_heads: 4, head_dim: 64, conv_size: 4, chunk_size: 64}\n"
                          "runtime:\n"
                          "  batch: 3\n"
                          "  prefill: 90\n"
                          "  decode: 10\n"
                          "  prefill_chunk: 32\n";

#define CTX 100

/* Prefill 90 tokens then decode 10 one at a time; returns the host logits [B, CTX, V]. */
static float *logits_of(hae_model *m, const hae_config *cfg, const int32_t *tok) {
    int64_t lens[CTX];
    int n = 0;
    lens[n++] = cfg->runtime.prefill;
    for (int64_t t = cfg->runtime.prefill; t < CTX; t++) lens[n++] = 1;
    return tu_model_logits(m, cfg, CTX, tok, lens, n);
}

/* Every layer kind: the attention stack, then the linear kinds beside full and swa layers, then dsa
 * with a top-k covering the context (the default 64 < CTX would let near-tied indexer logits pick other
 * tokens on either side: dsa_topk_selects_like_cpu holds that case). */
static const struct {
    const char *pattern, *form;
} patterns[] = {
    {"model.layer_pattern=[swa, swa, full]", "model.attention.form=gqa"},
    {"model.layer_pattern=[kda, kda, kda, full]", "model.attention.form=gqa"},
    {"model.layer_pattern=[gdn, gla, retnet, full]", "model.attention.form=gqa"},
    {"model.layer_pattern=[deltanet, mamba2, linear, swa]", "model.attention.form=gqa"},
    {"model.layer_pattern=[kda, kda, kda, dsa]", "model.attention.form=gqa"},
    /* mla: 8 heads of 32 + 16 over a latent of 64 (a latent key of 80 dims), values of 32 */
    {"model.layer_pattern=[swa, dsa, full]", "model.attention={form: mla, num_heads: 8, kv_lora_rank: 64, "
                                            "qk_nope_head_dim: 32, qk_rope_head_dim: 16, v_head_dim: 32, rope: full}"},
};
#define N_PATTERNS (int)(sizeof patterns / sizeof patterns[0])

Test(gpu_model, logits_match_cpu) {
    const char *dts[] = {"runtime.dtype=f32", "runtime.dtype=bf16"};
    const double tol[] = {1e-4, 3e-2};
    for (int pk = 0; pk < 2 * N_PATTERNS; pk++) {
        const int k = pk % 2;
        const char *sets[] = {dts[k], patterns[pk / 2].pattern, "model.dsa.index_topk=128", patterns[pk / 2].form};
        hae_config cfg;
        cr_assert_eq(hae_config_parse(yaml, strlen(yaml), "gpu-tiny.yaml", sets, 4, &cfg), HAE_OK, "%s", hae_last_error());
        hae_backend *cpu = tu_cpu(), *gpu = NULL;
        cr_assert_eq(hae_backend_create(HAE_CUDA, 0, &gpu), HAE_OK, "%s", hae_last_error());
        hae_model *mc = tu_model(cpu, &cfg), *mg = tu_model(gpu, &cfg);
        int64_t B = cfg.runtime.batch, V = cfg.model.vocab_size, n = B * CTX * V;
        int32_t *tok = malloc(sizeof(int32_t) * (size_t)(B * CTX));
        tu_rng r = tu_rng_make(42 + (uint64_t)k);
        for (int64_t i = 0; i < B * CTX; i++) tok[i] = (int32_t)tu_uniform(&r, 0, (double)V);
        float *a = logits_of(mc, &cfg, tok), *g = logits_of(mg, &cfg, tok);
        double *ref = malloc(sizeof(double) * (size_t)n);
        for (int64_t i = 0; i < n; i++) ref[i] = a[i];
        char why[256];
        cr_expect(tu_close(g, HAE_F32, ref, n, tol[k], 10 * tol[k], 10 * tol[k], why, sizeof why),
                  "%s %s %s model logits, cuda vs cpu: %s", sets[1], sets[3], dts[k], why);
        /* greedy choices agree wherever the CPU's top two logits are not within the tolerance */
        int64_t agree = 0, close = 0;
        for (int64_t row = 0; row < B * CTX; row++) {
            const float *ca = a + row * V, *cg = g + row * V;
            int64_t ia = 0, ig = 0;
            for (int64_t v = 1; v < V; v++) {
                if (ca[v] > ca[ia]) ia = v;
                if (cg[v] > cg[ig]) ig = v;
            }
            float second = -INFINITY;
            for (int64_t v = 0; v < V; v++)
                if (v != ia && ca[v] > second) second = ca[v];
            if (ia == ig) agree++;
            else if (ca[ia] - second < 10 * tol[k] * fabsf(ca[ia]) + 1e-3f) close++;
        }
        cr_expect_eq(agree + close, B * CTX, "%s %s: %lld of %lld argmax positions differ beyond near-ties", sets[1], dts[k],
                     (long long)(B * CTX - agree - close), (long long)(B * CTX));
        printf("gpu_model %s %s %s: %s; argmax agrees at %lld/%lld positions (%lld near-ties)\n", sets[1], sets[3], dts[k],
               why, (long long)agree,
               (long long)(B * CTX), (long long)close);
        free(tok), free(a), free(g), free(ref);
        hae_model_destroy(mc), hae_model_destroy(mg);
        hae_backend_destroy(cpu), hae_backend_destroy(gpu);
    }
}

/* The dsa layer's K/V in an FP8 layout (memory.dsa_kv_fp8): mla over a latent of 512 + 64 (656-byte tokens) and
 * gqa with heads of 128 (144 bytes a head), beside kda and a full layer in the run's dtype. Both sides quantize
 * with the same rule, but their rows differ by the backends' rounding, so an e4m3 code may land one step apart
 * (6%) here and there: the logits agree to 1e-3 (f32) and 3e-2 (bf16) RMS, not element by element. */
Test(gpu_model, fp8_cache_logits_match_cpu) {
    const char *dts[] = {"runtime.dtype=f32", "runtime.dtype=bf16"};
    const char *forms[] = {"model.attention={form: mla, num_heads: 8, kv_lora_rank: 512, qk_nope_head_dim: 32, "
                           "qk_rope_head_dim: 64, v_head_dim: 32, rope: full}",
                           "model.attention={form: gqa, num_heads: 8, num_kv_heads: 2, head_dim: 128, rope: full}"};
    const double tol[] = {1e-3, 3e-2};
    for (int c = 0; c < 4; c++) {
        const int k = c % 2, gqa = c / 2;
        const char *sets[] = {dts[k], "model.layer_pattern=[kda, dsa, full]", "model.dsa.index_topk=128", forms[gqa],
                              "memory.dsa_kv_fp8=true"};
        hae_config cfg;
        cr_assert_eq(hae_config_parse(yaml, strlen(yaml), "gpu-tiny.yaml", sets, 5, &cfg), HAE_OK, "%s", hae_last_error());
        hae_backend *cpu = tu_cpu(), *gpu = NULL;
        cr_assert_eq(hae_backend_create(HAE_CUDA, 0, &gpu), HAE_OK, "%s", hae_last_error());
        hae_model *mc = tu_model(cpu, &cfg), *mg = tu_model(gpu, &cfg);
        const int64_t B = cfg.runtime.batch, V = cfg.model.vocab_size, n = B * CTX * V;
        int32_t *tok = malloc(sizeof(int32_t) * (size_t)(B * CTX));
        tu_rng r = tu_rng_make(77 + (uint64_t)c);
        for (int64_t i = 0; i < B * CTX; i++) tok[i] = (int32_t)tu_uniform(&r, 0, (double)V);
        float *a = logits_of(mc, &cfg, tok), *g = logits_of(mg, &cfg, tok);
        hae_model_stats st;
        hae_model_stats_get(mg, &st);
        const double d = tu_rel_rms(g, a, n);
        const char *form = gqa ? "gqa" : "mla";
        cr_expect(d <= tol[k], "%s %s FP8 cache: cuda vs cpu logits rel rms %.3g > %.3g", dts[k], form, d, tol[k]);
        /* the dsa layer's FP8 bytes (and the indexer's 132), the full layer's values */
        hae_model_plan p;
        cr_assert_eq(hae_model_plan_get(&cfg, NULL, &p), HAE_OK, "%s", hae_last_error());
        const size_t dsa = gqa ? 2 * 2 * HAE_FP8_HEAD(128) : HAE_MLA_FP8_ROW, full = gqa ? 2 * 2 * 128 : 576;
        cr_expect(p.kv_bytes_per_token[1] == dsa + 132 && p.kv_bytes_per_token[2] == full * (k ? 2u : 4u),
                  "%s: K/V bytes a token: dsa %zu, full %zu", form, p.kv_bytes_per_token[1], p.kv_bytes_per_token[2]);
        cr_expect_eq(st.kv_bytes, p.kv_bytes);
        printf("gpu_model %s fp8 cache %s: logits rel rms %.3g\n", form, dts[k], d);
        free(tok), free(a), free(g);
        hae_model_destroy(mc), hae_model_destroy(mg);
        hae_backend_destroy(cpu), hae_backend_destroy(gpu);
    }
}

Test(gpu_model, weights_roundtrip_between_backends) {
    /* weights saved from the GPU model load into a CPU model with another seed: same logits as a
     * CPU model from the GPU model's seed, bit for bit (init is backend-independent) */
    hae_config cfg;
    const char *f32 = "runtime.dtype=f32";
    cr_assert_eq(hae_config_parse(yaml, strlen(yaml), "gpu-tiny.yaml", &f32, 1, &cfg), HAE_OK, "%s", hae_last_error());
    hae_backend *cpu = tu_cpu(), *gpu = NULL;
    cr_assert_eq(hae_backend_create(HAE_CUDA, 0, &gpu), HAE_OK, "%s", hae_last_error());
    hae_model *mg = tu_model(gpu, &cfg), *mc = tu_model(cpu, &cfg), *mc2 = tu_model(cpu, &cfg);
    char path[512];
    tu_tmp_path("gpu-model.safetensors", path, sizeof path);
    cr_assert_eq(hae_model_save(mg, path), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(hae_model_init_weights(mc2, 999), HAE_OK);
    cr_assert_eq(hae_model_load(mc2, path), HAE_OK, "%s", hae_last_error());
    int64_t n = cfg.runtime.batch * CTX * cfg.model.vocab_size;
    int32_t *tok = calloc((size_t)(cfg.runtime.batch * CTX), sizeof(int32_t));
    for (int64_t i = 0; i < cfg.runtime.batch * CTX; i++) tok[i] = (int32_t)((i * 7919) % cfg.model.vocab_size);
    float *a = logits_of(mc, &cfg, tok), *b = logits_of(mc2, &cfg, tok);
    cr_expect(memcmp(a, b, sizeof(float) * (size_t)n) == 0, "GPU-initialised weights equal CPU-initialised ones");
    remove(path);
    free(tok), free(a), free(b);
    hae_model_destroy(mg), hae_model_destroy(mc), hae_model_destroy(mc2);
    hae_backend_destroy(cpu), hae_backend_destroy(gpu);
}

/* dsa with a top-k that drops tokens (16 of up to 100), learned and derived indexers, f32. With
 * model.dsa.exact_logits the GPU's indexer logits differ from the CPU's only in the order of their
 * fp32 sums (the FP8 products are exact), so a selection can differ only where two candidates tie to
 * rounding: all but a few positions must agree to 1e-4. By default the indexer runs on wgmma's FP8
 * path (13-bit sums per 32 products, as DeepGEMM's): a position whose 16th and 17th candidates lie
 * within that error can select another token, and on an H200 85-90% of these positions agreed; the
 * test holds 75%, the logits overall to 5%, and the op-level bound is tests/gpu_indexer.c's. */
Test(gpu_model, dsa_topk_selects_like_cpu) {
    for (int form = 0; form < 4; form++) {
        const bool derived = form % 2, exact = form < 2;
        const char *sets[] = {"runtime.dtype=f32", "model.layer_pattern=[dsa, kda, dsa, full]", "model.dsa.index_topk=16",
                              derived ? "model.dsa.derived=true" : "model.dsa.index_rope_dim=32",
                              exact ? "model.dsa.exact_logits=true" : "model.dsa.exact_logits=false"};
        hae_config cfg;
        cr_assert_eq(hae_config_parse(yaml, strlen(yaml), "gpu-tiny.yaml", sets, 5, &cfg), HAE_OK, "%s", hae_last_error());
        hae_backend *cpu = tu_cpu(), *gpu = NULL;
        cr_assert_eq(hae_backend_create(HAE_CUDA, 0, &gpu), HAE_OK, "%s", hae_last_error());
        hae_model *mc = tu_model(cpu, &cfg), *mg = tu_model(gpu, &cfg);
        const int64_t B = cfg.runtime.batch, V = cfg.model.vocab_size, n = B * CTX;
        int32_t *tok = malloc(sizeof(int32_t) * (size_t)(B * CTX));
        tu_tokens(&cfg, CTX, tok, 8 + (uint64_t)derived);
        float *a = logits_of(mc, &cfg, tok), *g = logits_of(mg, &cfg, tok);
        int64_t agree = 0;
        double worst = 0;
        for (int64_t row = 0; row < n; row++) {
            double e = tu_rel_rms(g + row * V, a + row * V, V);
            agree += e <= 1e-4;
            worst = e > worst ? e : worst;
        }
        const double all = tu_rel_rms(g, a, n * V);
        const char *what = derived ? "derived" : "learned", *sums = exact ? "exact sums" : "wgmma sums";
        if (exact)
            cr_expect_geq(agree, n - 3, "%s indexer, %s, top-16: %lld of %lld positions differ from the CPU beyond 1e-4 "
                          "(worst %.3g)", what, sums, (long long)(n - agree), (long long)n, worst);
        else
            cr_expect(agree >= 3 * n / 4 && all <= 0.05, "%s indexer, %s, top-16: %lld of %lld positions within 1e-4 of "
                      "the CPU (want 75%%), logits within %.3g overall (want 0.05)", what, sums, (long long)agree,
                      (long long)n, all);
        printf("gpu_model dsa top-16 %s indexer, %s: %lld/%lld positions within 1e-4 of the CPU (worst %.3g, all %.3g)\n",
               what, sums, (long long)agree, (long long)n, worst, all);
        free(tok), free(a), free(g);
        hae_model_destroy(mc), hae_model_destroy(mg);
        hae_backend_destroy(cpu), hae_backend_destroy(gpu);
    }
}

/* What the CUDA kernels do not run is refused when the model is made, before any allocation. */
Test(gpu_model, unsupported_layers_are_refused_up_front) {
    static const struct {
        const char *set, *want;
    } cases[] = {
        {"model.linear_attn.chunk_size=32", "chunk_size 32"},
        {"model.linear_attn.head_dim=96", "head_dim 96"},
    };
    hae_backend *gpu = NULL;
    cr_assert_eq(hae_backend_create(HAE_CUDA, 0, &gpu), HAE_OK, "%s", hae_last_error());
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *sets[] = {"model.layer_pattern=[kda, full]", cases[i].set};
        hae_config cfg;
        cr_assert_eq(hae_config_parse(yaml, strlen(yaml), "gpu-tiny.yaml", sets, 2, &cfg), HAE_OK, "%s", hae_last_error());
        hae_model *m = NULL;
        cr_expect_eq(hae_model_create(&cfg, gpu, NULL, &m), HAE_ERR_UNSUPPORTED, "%s", cases[i].set);
        cr_expect(strstr(hae_last_error(), cases[i].want), "%s: %s", cases[i].set, hae_last_error());
        cr_expect_null(m);
    }
    hae_backend_destroy(gpu);
}

/* Hand-built circuits (eval/circuits.c): constructed weights run through hae_model_forward answer every
 * question exactly with full attention everywhere, and with dsa at any top-k whose FP8 indexer ranks the
 * match first; swa exactly inside its window and never beyond it; the linear kinds exactly while the keys
 * are orthonormal, degrading as overlapping keys pile up and as hops compound. Decode steps agree with the
 * prefill question by question, and on a GPU the CUDA backend with the CPU. Recall tables go to stderr
 * (eval/README.md quotes them). */
#include "testutil.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const hae_layer_kind all_kinds[] = {HAE_LAYER_FULL, HAE_LAYER_DSA, HAE_LAYER_SWA, HAE_LAYER_DELTANET,
                                           HAE_LAYER_KDA, HAE_LAYER_GDN, HAE_LAYER_GLA, HAE_LAYER_MAMBA2,
                                           HAE_LAYER_RETNET, HAE_LAYER_LINEAR};
#define N_KINDS (int)(sizeof all_kinds / sizeof all_kinds[0])

static hae_circuit_args cargs(const hae_task *t, int hops, hae_layer_kind kind) {
    hae_circuit_args a = {.task = t->kind, .vocab = t->vocab, .noise_vocab = t->noise_hi - t->noise_lo, .hops = hops,
                          .code_dim = 16, .seed = 3};
    for (int j = 0; j < hops; j++) a.kinds[j] = kind;
    return a;
}

static hae_task *mqar(int64_t length, int64_t vocab, int64_t pairs, int64_t noise, float power, uint64_t seed) {
    hae_task *t = NULL;
    hae_mqar_args m = {.length = length, .vocab = vocab, .pairs = pairs, .noise_vocab = noise, .power = power, .seed = seed};
    cr_assert_eq(hae_task_mqar(&m, &t), HAE_OK, "mqar: %s", hae_last_error());
    return t;
}

static hae_task *multihop(int64_t length, int64_t vocab, int hops, int64_t chains, hae_hops_form form, uint64_t seed) {
    hae_task *t = NULL;
    hae_multihop_args m = {.length = length, .vocab = vocab, .hops = hops, .chains = chains, .form = form,
                           .noise_vocab = 16, .seed = seed};
    cr_assert_eq(hae_task_multihop(&m, &t), HAE_OK, "multihop: %s", hae_last_error());
    return t;
}

static const char *describe(const hae_circuit_args *a, const hae_task *t, bool decode, char *buf, size_t n) {
    int k = snprintf(buf, n, "%s of %lld tokens (%lld pairs, vocab %lld), %s, hops [", hae_task_kind_name(t->kind),
                     (long long)t->n_tokens, (long long)t->n_pairs, (long long)t->vocab, decode ? "decode" : "prefill");
    for (int j = 0; j < a->hops && k > 0 && (size_t)k < n; j++)
        k += snprintf(buf + k, n - (size_t)k, "%s%s", j ? ", " : "", hae_layer_kind_name(a->kinds[j]));
    if (k > 0 && (size_t)k < n) snprintf(buf + k, n - (size_t)k, "], window %lld, top-k %lld, code_dim %lld",
                                         (long long)a->window, (long long)a->topk, (long long)a->code_dim);
    return buf;
}

/* Builds the circuit for t, runs it on be (NULL: a CPU backend of its own) and returns its result (asserting
 * success). */
static hae_circuit_result score_on(hae_backend *be, const hae_circuit_args *a, const hae_task *t, bool decode,
                                   uint8_t *correct) {
    hae_backend *cpu = be ? NULL : tu_cpu();
    char path[256], what[256];
    tu_tmp_path("circuit.safetensors", path, sizeof path);
    hae_circuit_result r;
    hae_status st = hae_circuit_eval(be ? be : cpu, a, NULL, t, decode, path, &r, correct);
    cr_assert_eq(st, HAE_OK, "%s on %s: %s", describe(a, t, decode, what, sizeof what),
                 hae_backend_name(be ? be : cpu), hae_last_error());
    remove(path);
    hae_backend_destroy(cpu);
    return r;
}
static hae_circuit_result score(const hae_circuit_args *a, const hae_task *t, bool decode, uint8_t *correct) {
    return score_on(NULL, a, t, decode, correct);
}

static hae_circuit_result expect_all(const hae_circuit_args *a, const hae_task *t, bool decode) {
    char what[256];
    hae_circuit_result r = score(a, t, decode, NULL);
    cr_expect_eq(r.correct, r.queries, "%s: %lld of %lld questions right (code weight %d)",
                 describe(a, t, decode, what, sizeof what), (long long)r.correct, (long long)r.queries, r.code_weight);
    cr_expect_eq(r.answers_correct, r.answers, "%s: answers", what);
    return r;
}

/* A circuit's model for tasks of up to `context` tokens, its weights loaded (asserting success). */
static hae_model *circuit_model(hae_backend *be, hae_circuit_args a, int64_t context) {
    char path[256];
    tu_tmp_path("circuit-model.safetensors", path, sizeof path);
    a.context = context;
    hae_config cfg;
    cr_assert_eq(hae_circuit_build(&a, NULL, &cfg, path), HAE_OK, "%s", hae_last_error());
    hae_model *m = NULL;
    cr_assert_eq(hae_model_create(&cfg, be, &(hae_model_options){.all_logits = true}, &m), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(hae_model_load(m, path), HAE_OK, "%s", hae_last_error());
    remove(path);
    return m;
}

Test(circuit, full_attention_scores_100_at_every_length) {
    /* one-hot codes (vocab 40: 16 keys in 16 dims) at 256, 1K, 4K tokens; overlapping ones (vocab 300: 3 ones of
     * 16 per code) at 512 and 1280 */
    const int64_t lengths[] = {256, 1024, 4096};
    for (int i = 0; i < 3; i++) {
        hae_task *t = mqar(lengths[i], 40, 16, 0, 0, 10 + i);
        hae_circuit_args a = cargs(t, 1, HAE_LAYER_FULL);
        cr_expect_eq(expect_all(&a, t, false).code_weight, 1);
        hae_task_free(t);
        if (i == 2) break;
        t = mqar(lengths[i] + 256, 300, lengths[i] / 8, 16, 0, 20 + i);
        a = cargs(t, 1, HAE_LAYER_FULL);
        cr_expect_eq(expect_all(&a, t, false).code_weight, 3);
        hae_task_free(t);
    }
    hae_niah_args na = {.length = 1024, .vocab = 300, .needles = 8, .noise_vocab = 32, .seed = 5};
    hae_task *t = NULL;
    cr_assert_eq(hae_task_niah(&na, &t), HAE_OK, "%s", hae_last_error());
    hae_circuit_args a = cargs(t, 1, HAE_LAYER_FULL);
    expect_all(&a, t, false);
    expect_all(&a, t, true);
    hae_task_free(t);
    /* h hops, h full layers; the list form is one hop per answer */
    for (int h = 1; h <= 4; h++) {
        t = multihop(h == 4 ? 1024 : 512, 300, h, 12, HAE_HOPS_FOLLOW, 30 + h);
        a = cargs(t, h, HAE_LAYER_FULL);
        expect_all(&a, t, false);
        hae_task_free(t);
    }
    t = multihop(512, 300, 3, 12, HAE_HOPS_LIST, 40);
    a = cargs(t, 1, HAE_LAYER_FULL);
    expect_all(&a, t, false);
    expect_all(&a, t, true);
    hae_task_free(t);
}

Test(circuit, dsa_scores_100_with_a_covering_or_a_small_topk) {
    hae_task *t = mqar(1024, 300, 100, 16, 0, 50);
    for (int i = 0; i < 3; i++) {
        hae_circuit_args a = cargs(t, 1, HAE_LAYER_DSA);
        a.topk = (int64_t[]){1024, 16, 1}[i]; /* every candidate; or the FP8 indexer's best few */
        expect_all(&a, t, i == 1);
    }
    hae_task_free(t);
    t = multihop(1024, 300, 3, 16, HAE_HOPS_FOLLOW, 51);
    hae_circuit_args a = cargs(t, 3, HAE_LAYER_DSA);
    a.topk = 2;
    expect_all(&a, t, false);
    a.kinds[1] = HAE_LAYER_FULL; /* hops of different kinds */
    a.topk = 1024;
    expect_all(&a, t, true);
    hae_task_free(t);
}

Test(circuit, swa_recalls_exactly_inside_its_window_and_never_beyond) {
    /* one-hot codes: beyond the window no value the query can reach is in view, and its code is orthogonal
     * to every one that is */
    const int64_t W = 64;
    int64_t near = 0, far = 0;
    for (uint64_t seed = 1; seed <= 4; seed++) {
        hae_task *t = mqar(512, 40, 16, 0, 1.5f, seed);
        hae_circuit_args a = cargs(t, 1, HAE_LAYER_SWA);
        a.window = W;
        uint8_t correct[16];
        score(&a, t, false, correct);
        for (int64_t i = 0; i < t->n_queries; i++) {
            int64_t p = 0;
            while (t->pair_key[p] != t->query_key[i]) p++;
            const int64_t dist = t->query_pos[i] - (t->pair_pos[p] + 1);
            cr_expect_eq(correct[i], dist < W, "seed %llu question %lld: the value %lld tokens back, window %lld, "
                         "correct %d", (unsigned long long)seed, (long long)i, (long long)dist, (long long)W, correct[i]);
            near += dist < W, far += dist >= W;
        }
        hae_task_free(t);
    }
    cr_expect(near > 0 && far > 0, "questions inside the window %lld, beyond it %lld (need both)", (long long)near,
              (long long)far);
    fprintf(stderr, "swa window %lld: %lld questions inside it right, %lld beyond it wrong\n", (long long)W,
            (long long)near, (long long)far);
}

Test(circuit, linear_kinds_exact_while_keys_are_orthonormal) {
    /* 16 keys one-hot in 16 dims, every one stored: the state holds them all */
    hae_task *t = mqar(1024, 40, 16, 0, 0, 60);
    cr_assert_eq(t->n_pairs, 16);
    for (int k = 3; k < N_KINDS; k++) {
        hae_circuit_args a = cargs(t, 1, all_kinds[k]);
        expect_all(&a, t, false);
    }
    hae_circuit_args a = cargs(t, 1, HAE_LAYER_KDA);
    expect_all(&a, t, true);
    hae_task_free(t);
}

/* Recall as stored pairs grow past what orthonormal keys allow and as hops grow (codes of 2 ones in 32 dims).
 * With no forgetting kda and gdn are deltanet, mamba2 and retnet are gla, so one of each stands for its group;
 * swa's window law has its own test. */
Test(circuit, linear_kinds_degrade_with_pairs_and_hops_softmax_does_not) {
    static const hae_layer_kind kinds[] = {HAE_LAYER_FULL, HAE_LAYER_DSA, HAE_LAYER_DELTANET, HAE_LAYER_GLA,
                                           HAE_LAYER_LINEAR};
    enum { NK = sizeof kinds / sizeof kinds[0] };
    const int64_t pairs[] = {4, 16, 48, 96};
    const int hops[] = {1, 2, 4};
    double rp[NK][4], rh[NK][3];
    hae_task *tp[4];
    for (int i = 0; i < 4; i++) tp[i] = mqar(512, 300, pairs[i], 16, 0, 70 + i);
    hae_backend *be = tu_cpu();
    for (int k = 0; k < NK; k++) {
        hae_circuit_args a = cargs(tp[0], 1, kinds[k]);
        a.topk = 8, a.code_dim = 32;
        hae_model *m = circuit_model(be, a, 512);
        for (int i = 0; i < 4; i++) {
            hae_circuit_result r;
            cr_assert_eq(hae_circuit_run(m, &a, tp[i], false, &r, NULL), HAE_OK, "%s", hae_last_error());
            rp[k][i] = r.recall;
        }
        hae_model_destroy(m);
        for (int h = 0; h < 3; h++) {
            hae_task *t = multihop(512, 120, hops[h], 12, HAE_HOPS_FOLLOW, 80 + h);
            a = cargs(t, hops[h], kinds[k]);
            a.topk = 8, a.code_dim = 32;
            rh[k][h] = score(&a, t, false, NULL).recall;
            hae_task_free(t);
        }
    }
    hae_backend_destroy(be);
    for (int i = 0; i < 4; i++) hae_task_free(tp[i]);
    fprintf(stderr, "\ncircuits, code_dim 32 (codes of 2 ones), 512 tokens: mqar (vocab 300) recall vs pairs; multihop "
                    "(12 chains, vocab 120) recall vs hops; dsa top-8\n| kind | 4 pairs | 16 | 48 | 96 | 1 hop | 2 | 4 |\n"
                    "|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for (int k = 0; k < NK; k++)
        fprintf(stderr, "| %s | %.3f | %.3f | %.3f | %.3f | %.3f | %.3f | %.3f |\n", hae_layer_kind_name(kinds[k]),
                rp[k][0], rp[k][1], rp[k][2], rp[k][3], rh[k][0], rh[k][1], rh[k][2]);
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < 4; i++)
            cr_expect_eq(rp[k][i], 1.0, "%s, %lld pairs: recall %.3f", hae_layer_kind_name(kinds[k]), (long long)pairs[i],
                         rp[k][i]);
        for (int h = 0; h < 3; h++)
            cr_expect_eq(rh[k][h], 1.0, "%s, %d hops: recall %.3f", hae_layer_kind_name(kinds[k]), hops[h], rh[k][h]);
    }
    for (int k = 2; k < NK; k++) {
        const char *name = hae_layer_kind_name(kinds[k]);
        cr_expect(rp[k][3] < 0.25 && rp[k][3] < rp[k][0], "%s: recall %.3f at 4 pairs, %.3f at 96", name, rp[k][0],
                  rp[k][3]);
        cr_expect(rh[k][2] < 0.5 && rh[k][2] < rh[k][0], "%s: recall %.3f at 1 hop, %.3f at 4", name, rh[k][0], rh[k][2]);
    }
}

/* The decode path (one token a step: recurrent linear form, decode attention, the indexer per step) answers
 * like the chunked prefill, question by question, wherever the answer is not a near tie: every kind on one-hot
 * codes (swa and dsa selective), and the softmax kinds on overlapping codes. */
Test(circuit, decode_steps_agree_with_the_prefill) {
    hae_task *ts[2] = {mqar(512, 40, 16, 0, 1.0f, 90), mqar(512, 300, 24, 16, 1.0f, 91)};
    for (int s = 0; s < 2; s++)
        for (int k = 0; k < (s ? 3 : N_KINDS); k++) {
            const hae_task *t = ts[s];
            hae_circuit_args a = cargs(t, 1, all_kinds[k]);
            a.window = 64, a.topk = 4;
            uint8_t pre[64], dec[64];
            char what[256];
            hae_circuit_result rp = score(&a, t, false, pre), rd = score(&a, t, true, dec);
            cr_expect_eq(rp.correct, rd.correct, "%s: prefill %lld right, decode %lld",
                         describe(&a, t, true, what, sizeof what), (long long)rp.correct, (long long)rd.correct);
            for (int64_t i = 0; i < t->n_queries; i++)
                cr_expect_eq(pre[i], dec[i], "%s: question %lld right in prefill %d, decode %d", what, (long long)i,
                             pre[i], dec[i]);
        }
    hae_task_free(ts[0]), hae_task_free(ts[1]);
}

Test(circuit, config_follows_the_base_and_the_weights_load_by_name) {
    hae_config base;
    /* an eval grid that the circuit's vocabulary of 100 could not hold, and a sweep: both describe runs and
     * are left out */
    tu_config("runtime:\n  prefill_chunk: 96\n  threads: 1\nmodel:\n  dsa:\n    page_size: 32\n    index_topk: 7\n"
              "eval:\n  tasks: [mqar]\n  lengths: [4096]\n  pairs: [200]\nsweep:\n  runtime.batch: [1, 2]\n", &base);
    hae_task *t = multihop(512, 100, 2, 4, HAE_HOPS_FOLLOW, 1);
    hae_circuit_args a = cargs(t, 2, HAE_LAYER_DSA);
    a.kinds[1] = HAE_LAYER_GDN;
    a.context = 600;
    hae_config cfg;
    char path[256];
    tu_tmp_path("circuit-cfg.safetensors", path, sizeof path);
    cr_assert_eq(hae_circuit_build(&a, &base, &cfg, path), HAE_OK, "%s", hae_last_error());
    cr_expect_eq(cfg.runtime.prefill_chunk, 96);
    cr_expect_eq(cfg.runtime.threads, 1);
    cr_expect_eq(cfg.model.dsa.page_size, 32);
    cr_expect_eq(cfg.model.dsa.index_topk, 7);
    cr_expect(cfg.model.dsa.derived);
    cr_expect_eq(cfg.runtime.dtype, HAE_F32);
    cr_expect_eq(cfg.runtime.prefill, 600);
    cr_expect_eq(cfg.model.n_layers, 3);
    cr_expect_eq(cfg.model.layers[0], HAE_LAYER_DELTANET);
    cr_expect_eq(cfg.model.layers[1], HAE_LAYER_DSA);
    cr_expect_eq(cfg.model.layers[2], HAE_LAYER_GDN);
    cr_expect_eq(cfg.model.vocab_size, 100);
    cr_expect_eq(cfg.sweep.n_axes, 0);
    cr_expect_eq(cfg.runtime.batch, 1);
    /* the file holds exactly the model's tensors, under its names and shapes */
    hae_backend *be = tu_cpu();
    hae_model *m = NULL;
    cr_assert_eq(hae_model_create(&cfg, be, &(hae_model_options){.all_logits = true}, &m), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(hae_model_load(m, path), HAE_OK, "%s", hae_last_error());
    char saved[256];
    tu_tmp_path("circuit-saved.safetensors", saved, sizeof saved);
    cr_assert_eq(hae_model_save(m, saved), HAE_OK, "%s", hae_last_error());
    hae_st_file *fa = NULL, *fb = NULL;
    cr_assert_eq(hae_st_open(path, &fa), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(hae_st_open(saved, &fb), HAE_OK, "%s", hae_last_error());
    cr_expect_eq(hae_st_count(fa), hae_st_count(fb), "circuit file %d tensors, model %d", hae_st_count(fa), hae_st_count(fb));
    for (int i = 0; i < hae_st_count(fa); i++) {
        const hae_st_tensor *x = hae_st_get(fa, i), *y = hae_st_find(fb, x->name);
        cr_expect(y && y->nbytes == x->nbytes && !memcmp(x->data, y->data, x->nbytes), "tensor %s differs after a load "
                  "and save", x->name);
    }
    hae_circuit_result r;
    cr_assert_eq(hae_circuit_run(m, &a, t, false, &r, NULL), HAE_OK, "%s", hae_last_error());
    cr_expect_eq(r.recall, 1.0, "dsa top-7 then gdn, 2 hops over 4 chains: recall %.3f", r.recall);
    hae_st_close(fa), hae_st_close(fb);
    hae_model_destroy(m);
    hae_backend_destroy(be);
    hae_task_free(t);
    remove(path), remove(saved);
}

/* The same circuits on the CUDA backend (skipped without a GPU; run `test_circuits --filter 'circuit/cuda*'` on
 * a GPU machine): at 1K tokens every kind answers the CPU's answers question by question, in prefill and in
 * decode; at 16K and 64K tokens full and dsa score 100% on overlapping codes and 4-hop chains, and the linear
 * kinds on one-hot keys. */
Test(circuit, cuda_answers_like_the_cpu_and_scores_100_at_long_contexts) {
    if (!hae_cuda_available()) cr_skip_test("no GPU");
    hae_backend *gpu = NULL;
    cr_assert_eq(hae_backend_create(HAE_CUDA, 0, &gpu), HAE_OK, "%s", hae_last_error());
    hae_task *ts[2] = {mqar(1024, 40, 16, 0, 1.0f, 95), mqar(1024, 300, 48, 16, 1.0f, 96)};
    for (int s = 0; s < 2; s++)
        for (int k = 0; k < (s ? 3 : N_KINDS); k++)
            for (int decode = 0; decode < 2; decode++) {
                const hae_task *t = ts[s];
                hae_circuit_args a = cargs(t, 1, all_kinds[k]);
                a.window = 128, a.topk = 8;
                uint8_t on_cpu[64], on_gpu[64];
                char what[256];
                describe(&a, t, decode, what, sizeof what);
                hae_circuit_result rc = score(&a, t, decode, on_cpu), rg = score_on(gpu, &a, t, decode, on_gpu);
                cr_expect_eq(rc.correct, rg.correct, "%s: %lld right on the CPU, %lld on CUDA", what,
                             (long long)rc.correct, (long long)rg.correct);
                for (int64_t i = 0; i < t->n_queries; i++)
                    cr_expect_eq(on_cpu[i], on_gpu[i], "%s: question %lld (key %d at position %lld, answer %d) right "
                                 "on the CPU %d, on CUDA %d", what, (long long)i, t->query_key[i],
                                 (long long)t->query_pos[i], t->answers[t->answer_off[i]], on_cpu[i], on_gpu[i]);
            }
    hae_task_free(ts[0]), hae_task_free(ts[1]);
    fprintf(stderr, "\ncircuits on %s (code_dim 16; swa window 4096, dsa top-64)\n| kind | task | length | recall |\n"
                    "|---|---|---:|---:|\n", hae_backend_name(gpu));
    for (int64_t L = 16384; L <= 65536; L *= 4) {
        hae_task *wide = mqar(L, 300, 128, 16, 0, 97), *onehot = mqar(L, 40, 16, 0, 0, 98);
        hae_task *chain = multihop(L, 300, 4, 16, HAE_HOPS_FOLLOW, 99);
        for (int k = 0; k < N_KINDS; k++) {
            const bool softmax = k < 3;
            for (int c = 0; c < (softmax ? 2 : 1); c++) {
                const hae_task *t = softmax ? (c ? chain : wide) : onehot;
                hae_circuit_args a = cargs(t, t->hops, all_kinds[k]);
                a.window = 4096, a.topk = 64;
                const bool decode = k == 1 && c == 0 && L == 65536;
                char what[256];
                hae_circuit_result r = score_on(gpu, &a, t, decode, NULL);
                fprintf(stderr, "| %s | %s%s | %lld | %.3f |\n", hae_layer_kind_name(all_kinds[k]),
                        hae_task_kind_name(t->kind), t->hops > 1 ? " 4 hops" : t == onehot ? " one-hot" : "",
                        (long long)L, r.recall);
                if (all_kinds[k] != HAE_LAYER_SWA)
                    cr_expect_eq(r.correct, r.queries, "%s on CUDA: %lld of %lld right",
                                 describe(&a, t, decode, what, sizeof what), (long long)r.correct, (long long)r.queries);
            }
        }
        hae_task_free(wide), hae_task_free(onehot), hae_task_free(chain);
    }
    hae_backend_destroy(gpu);
}

static void expect_error(hae_status st, hae_status want, const char *needle) {
    cr_expect_eq(st, want, "status %s (want %s): %s", hae_status_name(st), hae_status_name(want), hae_last_error());
    cr_expect(strstr(hae_last_error(), needle), "message '%s' lacks '%s'", hae_last_error(), needle);
}

Test(circuit, bad_arguments_give_clear_errors) {
    hae_task *t = mqar(256, 40, 16, 0, 0, 1);
    hae_config cfg;
    char path[256];
    tu_tmp_path("circuit-bad.safetensors", path, sizeof path);
    hae_circuit_args a = cargs(t, 1, HAE_LAYER_FULL), b;
    a.context = 256;
    b = a, b.hops = 0;
    expect_error(hae_circuit_build(&b, NULL, &cfg, path), HAE_ERR_INVALID, "hops 0 outside 1..16");
    b = a, b.hops = 2, b.kinds[1] = HAE_LAYER_FULL;
    expect_error(hae_circuit_build(&b, NULL, &cfg, path), HAE_ERR_INVALID, "mqar is one lookup per question");
    b = a, b.code_dim = 200;
    expect_error(hae_circuit_build(&b, NULL, &cfg, path), HAE_ERR_INVALID, "code_dim 200 outside 1..128");
    b = a, b.code_dim = 4, b.vocab = 1000;
    expect_error(hae_circuit_build(&b, NULL, &cfg, path), HAE_ERR_INVALID, "code_dim 4 holds at most 6 codes");
    b = a, b.kinds[0] = HAE_LAYER_KIND_COUNT;
    expect_error(hae_circuit_build(&b, NULL, &cfg, path), HAE_ERR_INVALID, "hop 1's kind");
    b = a, b.log_decay = 0.5f;
    expect_error(hae_circuit_build(&b, NULL, &cfg, path), HAE_ERR_INVALID, "log_decay 0.5");
    b = a, b.vocab = 9;
    expect_error(hae_circuit_build(&b, NULL, &cfg, path), HAE_ERR_INVALID, "vocab 9 must be in [10, 2^31)");
    b = a, b.context = 0;
    expect_error(hae_circuit_build(&b, NULL, &cfg, path), HAE_ERR_INVALID, "context 0 < 1");

    /* a task the circuit was not built for; a model that cannot score a prefill */
    hae_backend *be = tu_cpu();
    cr_assert_eq(hae_circuit_build(&a, NULL, &cfg, path), HAE_OK, "%s", hae_last_error());
    hae_model *m = NULL;
    cr_assert_eq(hae_model_create(&cfg, be, NULL, &m), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(hae_model_load(m, path), HAE_OK, "%s", hae_last_error());
    hae_circuit_result r;
    expect_error(hae_circuit_run(m, &a, t, false, &r, NULL), HAE_ERR_INVALID, "keeps all logits");
    cr_expect_eq(hae_circuit_run(m, &a, t, true, &r, NULL), HAE_OK, "%s", hae_last_error());
    cr_expect_eq(r.recall, 1.0);
    hae_task *u = mqar(256, 200, 16, 0, 0, 1);
    expect_error(hae_circuit_run(m, &a, u, true, &r, NULL), HAE_ERR_INVALID, "vocab 200");
    hae_task_free(u);
    u = multihop(256, 40, 2, 4, HAE_HOPS_FOLLOW, 1);
    b = a, b.task = HAE_TASK_MULTIHOP, b.noise_vocab = 16;
    expect_error(hae_circuit_run(m, &b, u, true, &r, NULL), HAE_ERR_INVALID, "the circuit has 1 hop");
    b = a, b.task = HAE_TASK_NIAH;
    expect_error(hae_circuit_run(m, &b, t, true, &r, NULL), HAE_ERR_INVALID, "a mqar task on a circuit built for niah");
    hae_task_free(u);
    hae_model_destroy(m);
    hae_backend_destroy(be);
    hae_task_free(t);
    remove(path);
}

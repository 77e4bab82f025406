/* dsa K/V in the host tier on CUDA: the slot cache's bookkeeping (hae_kv_slots) leaves the same state as
 * the CPU's, step by step, at sizes that span several blocks' tiles; and whole models give bit-identical
 * logits with K/V on the GPU tier and in the host tier (mirrored, or fetched into
 * LRU slots, staged for prefill chunks). main() is tests/main_gpu.c's. */
#include "gpu_pair.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

TestSuite(gpu_host, .init = gpu_pair_setup, .fini = gpu_pair_teardown);

/* Selections drifting over the recent `window` tokens of a growing context, distinct per row, with holes
 * (-1) and out-of-range entries. */
static void draw(int32_t *idx, int64_t B, int64_t k, int64_t centre, int64_t window, int64_t cap, tu_rng *r) {
    int32_t *seen = calloc((size_t)cap, sizeof *seen);
    cr_assert(seen);
    for (int64_t b = 0; b < B; b++) {
        for (int64_t i = 0; i < k; i++) {
            int32_t t;
            do {
                t = (int32_t)(centre - window + (int64_t)tu_uniform(r, 0, (double)window));
                if (t < 0 || tu_uniform(r, 0, 1) < 0.03) t = -1;
                if (tu_uniform(r, 0, 1) < 0.01) t = (int32_t)(cap + 7);
            } while (t >= 0 && t < cap && seen[t] == b + 1);
            if (t >= 0 && t < cap) seen[t] = (int32_t)(b + 1);
            idx[b * k + i] = t;
        }
    }
    free(seen);
}

Test(gpu_host, kv_slots_state_matches_cpu_every_step) {
    const int64_t shapes[][4] = {{3, 20000, 4096, 2048}, {2, 5000, 700, 333}, {1, 3000, 64, 64}}; /* B, cap, S, k */
    for (int sh = 0; sh < 3; sh++) {
        const int64_t B = shapes[sh][0], cap = shapes[sh][1], S = shapes[sh][2], k = shapes[sh][3], n = k + 5;
        const size_t state = sizeof(int32_t) * (size_t)(B * (cap + 2 * S));
        pbuf st = pb_poison(state), out = pb_poison(sizeof(int32_t) * (size_t)(B * k));
        pbuf rows = pb_poison(2 * sizeof(int32_t) * (size_t)(B * n)), counts = pb_poison(2 * sizeof(int64_t));
        void *zero = calloc(1, state);
        pb_set(&st, zero);
        pb_set(&counts, zero);
        int32_t *idx = malloc(sizeof(int32_t) * (size_t)(B * k));
        pbuf pidx = pb_poison(sizeof(int32_t) * (size_t)(B * k));
        char *hc = malloc(state), *hg = malloc(state);
        cr_assert(zero && idx && hc && hg);
        tu_rng r = tu_rng_make(17 + (uint64_t)sh);
        for (int32_t step = 1; step <= 40; step++) {
            hae_kv_slots_args a[2];
            for (int s = 0; s < 2; s++) {
                hae_backend *be = s ? g_gpu : g_cpu;
                const hae_device dev = s ? HAE_CUDA : HAE_CPU;
                char *base = s ? st.g : st.c, *rb = s ? rows.g : rows.c;
                a[s] = (hae_kv_slots_args){
                    .map = hae_tensor_2d(base, HAE_I32, dev, B, cap),
                    .owner = hae_tensor_2d(base + sizeof(int32_t) * (size_t)(B * cap), HAE_I32, dev, B, S),
                    .stamp = hae_tensor_2d(base + sizeof(int32_t) * (size_t)(B * (cap + S)), HAE_I32, dev, B, S),
                    .out = hae_tensor_2d(s ? out.g : out.c, HAE_I32, dev, B, k),
                    .src_rows = hae_tensor_2d(rb, HAE_I32, dev, B, n),
                    .dst_rows = hae_tensor_2d(rb + sizeof(int32_t) * (size_t)(B * n), HAE_I32, dev, B, n),
                    .counts = hae_tensor_1d(s ? counts.g : counts.c, HAE_I64, dev, 2), .step = step};
                if (step == 1) { /* a mirrored prefix, as a prefill leaves it */
                    a[s].lo = 0, a[s].hi = S / 2 < n ? S / 2 : n;
                } else {
                    if (s == 0) {
                        draw(idx, B, k, S / 2 + 40 * step, 3 * k, cap, &r);
                        pb_set(&pidx, idx);
                    }
                    a[s].idx = hae_tensor_2d(s ? pidx.g : pidx.c, HAE_I32, dev, B, k);
                }
                cr_assert_eq(hae_kv_slots(be, &a[s]), HAE_OK, "%s", hae_last_error());
            }
            const struct {
                const char *what;
                pbuf *p;
            } cmp[] = {{"map, owner and stamps", &st}, {"slots", &out}, {"fetch lists", &rows}, {"counts", &counts}};
            for (int c = 0; c < 4; c++) {
                cr_assert_eq(hae_backend_download(g_gpu, hg, cmp[c].p->g, cmp[c].p->bytes), HAE_OK);
                if (step == 1 && cmp[c].p == &out) continue; /* a mirror leaves the slots alone */
                size_t first = cmp[c].p->bytes;
                for (size_t i = 0; i < cmp[c].p->bytes && first == cmp[c].p->bytes; i++)
                    if (hg[i] != ((char *)cmp[c].p->c)[i]) first = i;
                cr_assert_eq(first, cmp[c].p->bytes,
                             "B %lld cap %lld S %lld k %lld, step %d: %s differ from the CPU's first at int %zu: %d vs %d",
                             (long long)B, (long long)cap, (long long)S, (long long)k, step, cmp[c].what, first / 4,
                             ((int32_t *)hg)[first / 4], ((int32_t *)cmp[c].p->c)[first / 4]);
            }
        }
        const int64_t *cn = counts.c;
        printf("gpu_host kv_slots B %lld cap %lld S %lld k %lld: 39 lookups, hits %lld, misses %lld, equal to the CPU\n",
               (long long)B, (long long)cap, (long long)S, (long long)k, (long long)cn[0], (long long)cn[1]);
        cr_expect(cn[0] > 0 && cn[1] > 0, "both hits and misses happen");
        pb_free(&st), pb_free(&out), pb_free(&rows), pb_free(&counts), pb_free(&pidx);
        free(zero), free(idx), free(hc), free(hg);
    }
}

static int by_value(const void *x, const void *y) {
    const double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

static const char *yaml = "name: gpu-host\n"
                          "seed: 9\n"
                          "model:\n"
                          "  vocab_size: 300\n"
                          "  d_model: 128\n"
                          "  n_layers: 3\n"
                          "  layer_pattern: [kda, dsa, dsa]\n"
                          "  mlp: {intermediate_size: 320}\n"
                          "  attention: {num_heads: 8, num_kv_heads: 2, head_dim: 64, rope: full}\n"
                          "  linear_attn: {num_heads: 2, head_dim: 64, conv_size: 4, chunk_size: 64}\n"
                          "  dsa: {index_topk: 16}\n"
                          "runtime: {backend: cuda, batch: 3, prefill: 90, decode: 10, prefill_chunk: 32}\n";

#define CTX 100

Test(gpu_host, logits_bit_identical_gpu_tier_vs_host_tier_vs_split) {
    static const int64_t prefill_decode[] = {90, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    static const int64_t ragged[] = {7, 1, 30, 1, 1, 21, 1, 3, 1, 1, 32, 1};
    /* gqa; mla; mla with the dsa layers' K/V in its FP8 token layout (656-byte rows fetched and staged); gqa with
     * heads of 128 in its FP8 layout (144-byte heads) */
    const char *mla = "model.attention={form: mla, num_heads: 8, kv_lora_rank: 512, qk_nope_head_dim: 64, "
                      "qk_rope_head_dim: 64, v_head_dim: 64, rope: full}";
    const char *gqa8 = "model.attention={form: gqa, num_heads: 8, num_kv_heads: 2, head_dim: 128, rope: full}";
    const char *forms[] = {"model.attention.form=gqa", mla, mla, gqa8};
    const char *slots[] = {"memory.cache_tokens=128", "memory.cache_tokens=40", "memory.cache_tokens=16"};
    /* then full and swa layers streamed from the host tier (memory.full_kv: host) beside a dsa layer */
    const char *patterns[] = {"model.layer_pattern=[kda, dsa, dsa]", "model.layer_pattern=[swa, full, dsa]"};
    for (int c = 0; c < 2 * 4 * 2 * 3; c++) {
        const int pat = c / 24, form = c / 6 % 4, dt = c / 3 % 2, sl = c % 3;
        const char *sets[] = {forms[form], dt ? "runtime.dtype=bf16" : "runtime.dtype=f32", slots[sl], patterns[pat],
                              "model.swa.window_size=24", "memory.dsa_kv=gpu", "memory.full_kv=gpu",
                              form >= 2 ? "memory.dsa_kv_fp8=true" : "memory.dsa_kv_fp8=false", "memory.dsa_gpu_seqs=-1",
                              "runtime.micro_batches=[]"};
        /* [0] the GPU tier; [1] the host tier; [2] the batch split between the tiers (the first sequence's dsa K/V
         * on the GPU, the others' on the host), one batch; [3] the same split with decode steps in micro-batches, one
         * a sequence or the GPU's sequence with a host one (reading both parts) and the other host one (streamed
         * full and swa layers run one batch); [4] the GPU tier cut likewise */
        const char *micro = pat ? "runtime.micro_batches=[]" : c % 2 ? "runtime.micro_batches=[1, 1, 1]"
                                                                     : "runtime.micro_batches=[2, 1]";
        hae_config cfg[5];
        hae_model *mod[5];
        for (int k = 0; k < 5; k++) {
            sets[5] = k == 0 || k == 4 ? "memory.dsa_kv=gpu" : "memory.dsa_kv=host";
            sets[6] = pat && k && k < 4 ? "memory.full_kv=host" : "memory.full_kv=gpu";
            sets[8] = k == 2 || k == 3 ? "memory.dsa_gpu_seqs=1" : "memory.dsa_gpu_seqs=-1";
            sets[9] = k >= 3 ? micro : "runtime.micro_batches=[]";
            cr_assert_eq(hae_config_parse(yaml, strlen(yaml), "gpu-host.yaml", sets, 10, &cfg[k]), HAE_OK, "%s",
                         hae_last_error());
            mod[k] = tu_model(g_gpu, &cfg[k]);
        }
        const int64_t B = cfg[0].runtime.batch, V = cfg[0].model.vocab_size, n = B * CTX * V;
        int32_t *tok = malloc(sizeof(int32_t) * (size_t)(B * CTX));
        tu_rng r = tu_rng_make(5 + (uint64_t)c);
        for (int64_t i = 0; i < B * CTX; i++) tok[i] = (int32_t)tu_uniform(&r, 0, (double)V);
        static const char *what[5] = {"GPU tier", "host tier", "one sequence on the GPU, two on the host",
                                      "split, micro-batches", "GPU tier, micro-batches"};
        static const int ref[5] = {0, 0, 0, 4, 0}; /* what each must equal bit for bit */
        for (int run = 0; run < 2; run++) {
            const int64_t *lens = run ? ragged : prefill_decode;
            const int n_lens = run ? 12 : 11;
            float *lg[5];
            for (int k = 0; k < 5; k++) lg[k] = tu_model_logits(mod[k], &cfg[k], CTX, tok, lens, n_lens);
            for (int k = 1; k < 4; k++) {
                const float *la = lg[ref[k]], *lo = lg[k];
                int64_t first = n;
                for (int64_t i = 0; i < n && first == n; i++)
                    if (memcmp(&la[i], &lo[i], sizeof *la)) first = i;
                cr_expect_eq(first, n, "%s %s %s %s, %s: logits differ first at position %lld of sequence %lld: %.9g (%s) "
                             "vs %.9g (%s)", sets[3], sets[0], sets[1], sets[2],
                             run ? "ragged forwards" : "prefill then decode", (long long)(first / V % CTX),
                             (long long)(first / V / CTX), first < n ? (double)la[first] : 0.0, what[ref[k]],
                             first < n ? (double)lo[first] : 0.0, what[k]);
            }
            /* Micro-batches run other kernel shapes than one batch, so their logits differ by rounding, which can
             * also flip an indexer's near-tie and change one selected token: the median position stays close. */
            double top = 0, *row = malloc(sizeof(double) * (size_t)(B * CTX));
            cr_assert(row);
            for (int64_t p = 0; p < B * CTX; p++) {
                row[p] = 0;
                for (int64_t i = p * V; i < (p + 1) * V; i++) {
                    row[p] = fmax(row[p], fabs((double)lg[4][i] - (double)lg[0][i]));
                    top = fmax(top, fabs((double)lg[0][i]));
                }
            }
            qsort(row, (size_t)(B * CTX), sizeof *row, by_value);
            const double med = row[B * CTX / 2], worst = row[B * CTX - 1];
            cr_expect_leq(med, (dt ? 3e-2 : 1e-3) * top, "%s %s %s: micro-batches against one batch: median position's "
                          "max |diff| %.3g (worst %.3g), max |logit| %.3g", sets[3], sets[0], sets[1], med, worst, top);
            if (worst > 0) printf("gpu_host %s %s %s, %s: micro-batches against one batch: median position's max |diff| "
                                  "%.3g, worst %.3g, max |logit| %.3g\n", sets[3], sets[0], sets[1],
                                  run ? "ragged" : "prefill then decode", med, worst, top);
            free(row);
            for (int k = 0; k < 5; k++) free(lg[k]);
        }
        hae_model_stats s;
        hae_model_stats_get(mod[1], &s);
        printf("gpu_host model %s %s %s %s: bit-identical; host tier %zu B, decode lookups %lld (hits %lld), fetched %zu "
               "B\n", sets[3], (const char *[]){"gqa", "mla", "mla fp8", "gqa fp8"}[form], sets[1], sets[2], s.kv_host_bytes, (long long)(s.slot_hits + s.slot_misses),
               (long long)s.slot_hits, s.fetched_bytes);
        cr_expect_gt(s.kv_host_bytes, 0);
        if (sl > 0) cr_expect_gt(s.slot_misses, 0, "decode past %s misses", sets[2]);
        for (int k = 2; k < 4; k++) {
            hae_model_stats_get(mod[k], &s);
            cr_expect_eq(s.dsa_gpu_seqs, 1);
            cr_expect_eq(s.n_micro, k == 3 && !pat ? (c % 2 ? 3 : 2) : 1, "%s: %d micro-batches", what[k], s.n_micro);
            if (sl > 0) cr_expect_gt(s.slot_misses, 0, "%s: decode past %s misses", what[k], sets[2]);
        }
        free(tok);
        for (int k = 0; k < 5; k++) hae_model_destroy(mod[k]);
    }
}

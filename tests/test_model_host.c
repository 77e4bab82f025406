/* dsa K/V in the host tier (memory.dsa_kv: host): the slot cache's bookkeeping (hae_kv_slots) against a
 * plain LRU written here, step by step; and whole models giving bit-identical logits with K/V on the GPU
 * tier and on the host tier, prefill and decode, while the slots mirror the context, while chunks past
 * them go through the prefill staging, and while decode steps hit, miss and evict. */
#include "internal.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- hae_kv_slots vs a plain LRU */

enum { B = 2, CAP = 200, S = 16, K = 8, N = 10 };

typedef struct {
    int32_t map[CAP], owner[S], stamp[S];
} ref_state;

static ref_state *sort_ctx;
static int by_stamp(const void *x, const void *y) {
    const int a = *(const int *)x, b = *(const int *)y;
    const int32_t sa = sort_ctx->stamp[a], sb = sort_ctx->stamp[b];
    return sa != sb ? (sa < sb ? -1 : 1) : a - b;
}
static int by_slot(const void *x, const void *y) { return *(const int *)x - *(const int *)y; }

/* The contract, directly: hits keep their slot; the misses take the slots unused at this step with the
 * smallest (stamp, slot), handed out in slot order. */
static void ref_lookup(ref_state *r, const int32_t *idx, int32_t step, int32_t *out, int32_t *src, int32_t *dst,
                       int64_t *hits, int64_t *misses) {
    int miss_at[K], m = 0;
    for (int i = 0; i < K; i++) {
        const int32_t t = idx[i];
        if (t < 0 || t >= CAP) out[i] = -1;
        else if (r->map[t]) out[i] = r->map[t] - 1, r->stamp[r->map[t] - 1] = step, ++*hits;
        else miss_at[m++] = i;
    }
    int cand[S], nc = 0;
    for (int s = 0; s < S; s++)
        if (r->stamp[s] != step) cand[nc++] = s;
    sort_ctx = r;
    qsort(cand, (size_t)nc, sizeof *cand, by_stamp);
    cr_assert_geq(nc, m);
    qsort(cand, (size_t)m, sizeof *cand, by_slot);
    for (int j = 0; j < m; j++) {
        const int s = cand[j], i = miss_at[j];
        const int32_t t = idx[i];
        if (r->owner[s]) r->map[r->owner[s] - 1] = 0;
        r->owner[s] = t + 1, r->map[t] = s + 1, r->stamp[s] = step, out[i] = s;
        src[j] = t, dst[j] = s;
    }
    for (int j = m; j < N; j++) src[j] = -1, dst[j] = 0;
    *misses += m;
}

Test(kv_slots, lookups_and_mirrors_match_a_plain_lru_step_by_step) {
    hae_backend *be = tu_cpu();
    int32_t map[B][CAP] = {{0}}, owner[B][S] = {{0}}, stamp[B][S] = {{0}}, out[B][K], src[B][N], dst[B][N], idx[B][K];
    int64_t counts[2] = {0, 0}, want_hits = 0, want_misses = 0;
    ref_state *ref = calloc(B, sizeof *ref);
    cr_assert(ref);
    const hae_kv_slots_args base = {
        .map = hae_tensor_2d(map, HAE_I32, HAE_CPU, B, CAP), .owner = hae_tensor_2d(owner, HAE_I32, HAE_CPU, B, S),
        .stamp = hae_tensor_2d(stamp, HAE_I32, HAE_CPU, B, S), .out = hae_tensor_2d(out, HAE_I32, HAE_CPU, B, K),
        .src_rows = hae_tensor_2d(src, HAE_I32, HAE_CPU, B, N), .dst_rows = hae_tensor_2d(dst, HAE_I32, HAE_CPU, B, N),
        .counts = hae_tensor_1d(counts, HAE_I64, HAE_CPU, 2)};
    /* a mirrored prefix first, as a prefill leaves it */
    hae_kv_slots_args a = base;
    a.step = 1, a.lo = 0, a.hi = 6;
    cr_assert_eq(hae_kv_slots(be, &a), HAE_OK, "%s", hae_last_error());
    for (int b = 0; b < B; b++)
        for (int t = 0; t < 6; t++) {
            ref[b].map[t] = ref[b].owner[t] = t + 1, ref[b].stamp[t] = 1;
            cr_expect(src[b][t] == t && dst[b][t] == t, "mirror entry %d: %d -> %d", t, src[b][t], dst[b][t]);
        }
    tu_rng rng = tu_rng_make(7);
    for (int32_t step = 2; step < 400; step++) {
        /* selections drift over a window of 24 recent tokens (a decode's locality), with holes */
        const int centre = 6 + step / 3;
        for (int b = 0; b < B; b++) {
            for (int i = 0; i < K; i++) {
                int32_t t;
                bool dup;
                do {
                    t = (int32_t)(centre - 24 + (int)tu_uniform(&rng, 0, 24.999));
                    if (t < 0 || tu_uniform(&rng, 0, 1) < 0.05) t = -1;
                    if (tu_uniform(&rng, 0, 1) < 0.02) t = CAP + 3; /* out of range: skipped */
                    dup = false;
                    for (int j = 0; j < i && t >= 0; j++) dup |= idx[b][j] == t;
                } while (dup);
                idx[b][i] = t;
            }
        }
        a = base;
        a.idx = hae_tensor_2d(idx, HAE_I32, HAE_CPU, B, K), a.step = step;
        memset(out, 0x7f, sizeof out), memset(src, 0x7f, sizeof src), memset(dst, 0x7f, sizeof dst);
        cr_assert_eq(hae_kv_slots(be, &a), HAE_OK, "%s", hae_last_error());
        for (int b = 0; b < B; b++) {
            int32_t rout[K], rsrc[N], rdst[N];
            ref_lookup(&ref[b], idx[b], step, rout, rsrc, rdst, &want_hits, &want_misses);
            cr_assert_arr_eq(out[b], rout, sizeof rout, "step %d seq %d: the slots differ from the plain LRU's", step, b);
            cr_assert_arr_eq(src[b], rsrc, sizeof rsrc, "step %d seq %d: fetch sources", step, b);
            cr_assert_arr_eq(dst[b], rdst, sizeof rdst, "step %d seq %d: fetch slots", step, b);
            cr_assert_arr_eq(map[b], ref[b].map, sizeof map[b], "step %d seq %d: map", step, b);
            cr_assert_arr_eq(owner[b], ref[b].owner, sizeof owner[b], "step %d seq %d: owner", step, b);
            cr_assert_arr_eq(stamp[b], ref[b].stamp, sizeof stamp[b], "step %d seq %d: stamps", step, b);
            for (int i = 0; i < K; i++)
                if (idx[b][i] >= 0 && idx[b][i] < CAP)
                    cr_assert_eq(owner[b][out[b][i]], idx[b][i] + 1, "step %d: slot %d does not hold token %d", step,
                                 out[b][i], idx[b][i]);
        }
    }
    cr_expect_eq(counts[0], want_hits);
    cr_expect_eq(counts[1], want_misses);
    cr_expect(want_hits > want_misses && want_misses > 100, "hits %lld, misses %lld: locality should show",
              (long long)want_hits, (long long)want_misses);
    free(ref);
    hae_backend_destroy(be);
}

Test(kv_slots, bad_arguments_are_refused) {
    hae_backend *be = tu_cpu();
    int32_t map[B][CAP] = {{0}}, owner[B][S] = {{0}}, stamp[B][S] = {{0}}, out[B][S + 1], rows[2][B][S + 1], idx[B][S + 1];
    int64_t counts[2] = {0, 0};
    const hae_kv_slots_args ok = {
        .idx = hae_tensor_2d(idx, HAE_I32, HAE_CPU, B, K), .map = hae_tensor_2d(map, HAE_I32, HAE_CPU, B, CAP),
        .owner = hae_tensor_2d(owner, HAE_I32, HAE_CPU, B, S), .stamp = hae_tensor_2d(stamp, HAE_I32, HAE_CPU, B, S),
        .out = hae_tensor_2d(out, HAE_I32, HAE_CPU, B, K), .src_rows = hae_tensor_2d(rows[0], HAE_I32, HAE_CPU, B, N),
        .dst_rows = hae_tensor_2d(rows[1], HAE_I32, HAE_CPU, B, N), .counts = hae_tensor_1d(counts, HAE_I64, HAE_CPU, 2),
        .step = 1};
    struct {
        const char *what, *word;
        hae_kv_slots_args a;
    } bad[] = {{"step 0", "step 0 must be >= 1", ok},
               {"k > S", "need k <= S", ok},
               {"short fetch list", "fetch list of >= k entries", ok},
               {"range past S", "range [0, 17)", ok},
               {"stamp of another shape", "owner and stamp must both be [B, S]", ok},
               {"counts i32", "counts", ok}};
    bad[0].a.step = 0;
    bad[1].a.idx.shape[1] = bad[1].a.out.shape[1] = S + 1, bad[1].a.src_rows.shape[1] = bad[1].a.dst_rows.shape[1] = S + 1;
    bad[2].a.src_rows.shape[1] = bad[2].a.dst_rows.shape[1] = K - 1;
    bad[3].a.idx.data = NULL, bad[3].a.lo = 0, bad[3].a.hi = S + 1;
    bad[4].a.stamp.shape[1] = S - 1;
    bad[5].a.counts.dtype = HAE_I32;
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cr_expect_eq(hae_kv_slots(be, &bad[i].a), HAE_ERR_INVALID, "%s was accepted", bad[i].what);
        cr_expect(strstr(hae_last_error(), bad[i].word), "%s: \"%s\" lacks \"%s\"", bad[i].what, hae_last_error(),
                  bad[i].word);
    }
    hae_backend_destroy(be);
}

/* A slot cache's parts (decode micro-batches): a part past the fences, a range outside the cache's sequences or an
 * empty one, and a staged chunk asked for part of its sequences are refused; a decode step's part is served. */
Test(slot_cache, bad_parts_are_refused) {
    hae_backend *be = tu_cpu();
    enum { SEQS = 3, CTX_T = 32, SLOTS = 8, TOPK = 4, W = 6 };
    float *host = NULL, *stage = NULL;
    cr_assert_eq(hae_backend_alloc_host(be, sizeof(float) * SEQS * CTX_T * W, (void **)&host), HAE_OK, "%s",
                 hae_last_error());
    cr_assert_eq(hae_backend_alloc(be, sizeof(float) * SEQS * CTX_T * W, (void **)&stage), HAE_OK, "%s", hae_last_error());
    for (int i = 0; i < SEQS * CTX_T * W; i++) host[i] = (float)i;
    const hae_tensor kh = hae_tensor_4d(host, HAE_F32, HAE_CPU, SEQS, CTX_T, 1, W);
    hae_slot_cache *c = NULL;
    cr_assert_eq(hae_slot_cache_create(be, &kh, &kh, SLOTS, TOPK, 4, stage, &c), HAE_OK, "%s", hae_last_error());
    int32_t sel[SEQS][TOPK] = {{20, 3, 9, 11}, {0, 1, 2, 30}, {5, 6, 7, 8}};
    hae_tensor k, v, idx = hae_tensor_3d(sel, HAE_I32, HAE_CPU, SEQS, 1, TOPK), lens;
    const struct {
        const char *what, *word;
        int part;
        int64_t s0, n, pos, T;
    } bad[] = {{"part 8", "part 8 of sequences [0, 1)", 8, 0, 1, 20, 1},
               {"part -1", "part -1", -1, 0, 1, 20, 1},
               {"past the sequences", "sequences [2, 4) (the cache holds 3", 0, 2, 2, 20, 1},
               {"no sequence", "sequences [1, 1)", 0, 1, 0, 20, 1},
               {"staged part", "is staged, for every sequence at once", 0, 0, 2, 12, 4}};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        hae_tensor id = idx;
        cr_expect_eq(hae_slot_cache_prepare(c, bad[i].part, bad[i].s0, bad[i].n, bad[i].pos, bad[i].T, &k, &v, &id,
                                                 &lens), HAE_ERR_INVALID, "%s was accepted", bad[i].what);
        cr_expect(strstr(hae_last_error(), bad[i].word), "%s: \"%s\" lacks \"%s\"", bad[i].what, hae_last_error(),
                  bad[i].word);
    }
    cr_expect_eq(hae_slot_cache_wait(c, HAE_SLOT_PARTS), HAE_ERR_INVALID);
    /* the third sequence's decode step as part 1: its slots hold its selections' rows, in selection order */
    hae_tensor id = hae_tensor_narrow(idx, 0, 2, 1);
    cr_assert_eq(hae_slot_cache_prepare(c, 1, 2, 1, 20, 1, &k, &v, &id, &lens), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(hae_slot_cache_wait(c, 1), HAE_OK, "%s", hae_last_error());
    cr_assert(k.shape[0] == 1 && id.shape[0] == 1);
    for (int j = 0; j < TOPK; j++) {
        const int slot = ((const int32_t *)id.data)[j];
        cr_assert(slot >= 0 && slot < SLOTS, "selection %d: slot %d", j, slot);
        const float *row = (const float *)k.data + (size_t)slot * W;
        cr_expect(row[0] == (float)((2 * CTX_T + sel[2][j]) * W), "selection %d (token %d) in slot %d holds %g", j,
                  sel[2][j], slot, (double)row[0]);
    }
    hae_slot_cache_destroy(c);
    hae_backend_free(be, stage), hae_backend_free_host(be, host);
    hae_backend_destroy(be);
}

/* ---------------------------------------------------------------- models: the GPU tier vs the host tier */

static const char *yaml_fmt = "name: tiny-host\n"
                              "seed: 5\n"
                              "model:\n"
                              "  vocab_size: 53\n"
                              "  d_model: 32\n"
                              "  n_layers: 3\n"
                              "  layer_pattern: [%s]\n"
                              "  mlp: {intermediate_size: 40}\n"
                              "  attention: {num_heads: 4, num_kv_heads: 2, head_dim: 8, rope: full}\n"
                              "  linear_attn: {num_heads: 2, head_dim: 8}\n"
                              "  dsa: {index_n_heads: 2, index_head_dim: 128, index_topk: 6, page_size: 4}\n"
                              "  swa: {window_size: 9}\n"
                              "runtime: {backend: cpu, dtype: %s, batch: %d, prefill: 24, decode: 16, prefill_chunk: 8, "
                              "micro_batches: %s}\n"
                              "memory: {dsa_kv: %s, full_kv: %s, cache_tokens: %d, dsa_gpu_seqs: %d}\n";

#define CTX 40

#define DSA_ONLY "kda, dsa, dsa"

/* mla: 0 gqa; 1 mla over a latent of 16; 2 mla over 512 + 64 with dsa layers in mla's FP8 token layout; 3 gqa
 * with heads of 128 and dsa layers in gqa's FP8 layout.
 * split > 0: a batch of 3 whose first `split` sequences keep their dsa K/V on the GPU (memory.dsa_gpu_seqs);
 * else a batch of 2 all in the host tier. micro: the host run's decode steps in micro-batches (which streamed
 * full and swa layers cannot have: they run one batch), against one batch on the GPU tier: the CPU computes each
 * sequence on its own, so the logits are the same bits. */
static void host_vs_gpu_split(const char *pattern, const char *dtype, int slots, int mla, int split, int micro,
                              const int64_t *lens, int n_lens, int64_t *hits, int64_t *misses) {
    hae_backend *be = tu_cpu();
    hae_config gpu, host;
    char y[2048];
    const int nb = split ? 3 : 2;
    const bool streamed = strstr(pattern, "full") || strstr(pattern, "swa");
    /* one a sequence, or (split 1) the GPU's sequence and a host one together, reading both parts */
    const char *mb = micro && !streamed ? (nb == 2 ? "[1, 1]" : split == 1 ? "[2, 1]" : "[1, 1, 1]") : "[]";
    snprintf(y, sizeof y, yaml_fmt, pattern, dtype, nb, "[]", "gpu", "gpu", slots, -1);
    tu_config(y, &gpu);
    snprintf(y, sizeof y, yaml_fmt, pattern, dtype, nb, mb, "host", "host", slots, split);
    tu_config(y, &host);
    if (mla == 3)
        for (hae_config *c = &gpu; c; c = c == &gpu ? &host : NULL)
            c->model.attention.head_dim = 128, c->memory.dsa_kv_fp8 = true;
    else if (mla)
        for (hae_config *c = &gpu; c; c = c == &gpu ? &host : NULL) {
            c->model.attention.form = HAE_ATTN_MLA;
            c->model.attention.kv_lora_rank = mla == 2 ? HAE_MLA_LATENT : 16;
            c->model.attention.qk_nope_head_dim = 8;
            c->model.attention.qk_rope_head_dim = mla == 2 ? HAE_MLA_ROPE : 4;
            c->model.attention.v_head_dim = 6;
            c->memory.dsa_kv_fp8 = mla == 2;
        }
    hae_model *a = tu_model(be, &gpu), *b = tu_model(be, &host);
    int32_t tok[3 * CTX];
    tu_tokens(&gpu, CTX, tok, 11);
    float *la = tu_model_logits(a, &gpu, CTX, tok, lens, n_lens), *lb = tu_model_logits(b, &host, CTX, tok, lens, n_lens);
    const size_t n = (size_t)(nb * CTX * gpu.model.vocab_size);
    size_t first = n;
    for (size_t i = 0; i < n && first == n; i++)
        if (memcmp(&la[i], &lb[i], sizeof *la)) first = i;
    const char *form = mla == 3 ? "gqa fp8" : mla == 2 ? "mla fp8" : mla ? "mla" : "gqa";
    cr_expect_eq(first, n, "[%s] %s %s, %d slots, %d of %d sequences' dsa K/V on the GPU%s: logits differ first at "
                 "[%zu] (position %zu): %.9g on the GPU tier, %.9g on the host tier", pattern, dtype, form, slots, split,
                 nb, micro ? ", micro-batches" : "", first,
                 first / (size_t)gpu.model.vocab_size % CTX,
                 first < n ? (double)la[first] : 0.0, first < n ? (double)lb[first] : 0.0);
    hae_model_stats sa, sb;
    hae_model_stats_get(a, &sa), hae_model_stats_get(b, &sb);
    cr_expect_eq(sa.kv_host_bytes, 0);
    /* every attention layer's K and V (mla: one latent; dsa layers in FP8: 656 bytes, or 144 a gqa head) for 40
     * tokens a sequence
     * (dsa layers: of the sequences in the host tier), a window's ring for swa (9 + 8 - 1) */
    size_t want = 0;
    for (int l = 0; l < gpu.model.n_layers; l++) {
        const hae_layer_kind k = gpu.model.layers[l];
        const size_t row = mla == 2 && k == HAE_LAYER_DSA   ? HAE_MLA_FP8_ROW
                           : mla == 3 && k == HAE_LAYER_DSA ? 2 * 2 * HAE_FP8_HEAD(128)
                           : (size_t)(mla == 3 ? 2 * 2 * 128 : mla == 2 ? 576 : mla ? 20 : 2 * 2 * 8) *
                                 hae_dtype_size(gpu.runtime.dtype);
        if (k == HAE_LAYER_FULL || k == HAE_LAYER_SWA || k == HAE_LAYER_DSA)
            want += (size_t)((k == HAE_LAYER_DSA ? nb - split : nb) * (k == HAE_LAYER_SWA ? 16 : CTX)) * row;
    }
    cr_expect_eq(sb.dsa_gpu_seqs, split);
    cr_expect_eq(sa.n_micro, 1, "small batches run as one");
    cr_expect_eq(sb.n_micro, micro && !streamed ? (nb == 3 && split == 1 ? 2 : nb) : 1, "[%s] %d micro-batches", pattern,
                 sb.n_micro);
    cr_expect_eq(sb.kv_host_bytes, want, "host tier: %zu bytes of K/V, want %zu", sb.kv_host_bytes, want);
    cr_expect_eq(sb.kv_bytes, sa.kv_bytes, "the same K/V bytes in both tiers together");
    cr_expect_gt(sb.slot_cache_bytes, 0);
    cr_expect_gt(sb.fetched_bytes, 0);
    *hits = sb.slot_hits, *misses = sb.slot_misses;
    free(la), free(lb);
    hae_model_destroy(a), hae_model_destroy(b);
    hae_backend_destroy(be);
}

static void host_vs_gpu_of(const char *pattern, const char *dtype, int slots, int mla, const int64_t *lens, int n_lens,
                           int64_t *hits, int64_t *misses) {
    host_vs_gpu_split(pattern, dtype, slots, mla, 0, 0, lens, n_lens, hits, misses);
}

static void host_vs_gpu(const char *dtype, int slots, int mla, const int64_t *lens, int n_lens, int64_t *hits,
                        int64_t *misses) {
    host_vs_gpu_of(DSA_ONLY, dtype, slots, mla, lens, n_lens, hits, misses);
}

static const int64_t chunks_then_decode[] = {24, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
static const int64_t token_by_token[] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
                                         1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
static const int64_t ragged[] = {5, 1, 17, 1, 3, 1, 1, 2, 1, 1, 7};

Test(model_host, the_context_fits_the_slots_they_mirror_it) {
    for (int mla = 0; mla < 2; mla++) {
        int64_t hits = 0, misses = 0;
        host_vs_gpu("f32", 64, mla, chunks_then_decode, 17, &hits, &misses);
        cr_expect(hits == 0 && misses == 0, "mirroring looks nothing up (hits %lld, misses %lld)", (long long)hits,
                  (long long)misses);
    }
}

Test(model_host, chunks_past_the_slots_are_staged_and_decode_steps_use_the_lru) {
    for (int mla = 0; mla < 2; mla++) {
        int64_t hits = 0, misses = 0;
        host_vs_gpu(mla ? "bf16" : "f32", 10, mla, chunks_then_decode, 17, &hits, &misses);
        cr_expect(hits > 0 && misses > 0, "decode past 10 slots: hits %lld, misses %lld", (long long)hits, (long long)misses);
        host_vs_gpu("f32", 7, mla, ragged, 11, &hits, &misses);
        host_vs_gpu("bf16", 6, mla, token_by_token, 40, &hits, &misses);
    }
}

/* dsa layers in an FP8 layout (memory.dsa_kv_fp8) fetch and stage their rows (mla's 656-byte tokens, gqa's
 * 144-byte heads): the same logits bit for bit; full and swa layers beside them keep bf16 rows. */
Test(model_host, fp8_rows_in_the_host_tier) {
    for (int form = 2; form <= 3; form++) {
        int64_t hits = 0, misses = 0;
        host_vs_gpu("bf16", 64, form, chunks_then_decode, 17, &hits, &misses);
        host_vs_gpu("bf16", 10, form, chunks_then_decode, 17, &hits, &misses);
        cr_expect(hits > 0 && misses > 0, "decode past 10 slots: hits %lld, misses %lld", (long long)hits,
                  (long long)misses);
        host_vs_gpu("f32", 7, form, ragged, 11, &hits, &misses);
        host_vs_gpu_of("swa, full, dsa", "bf16", 6, form, token_by_token, 40, &hits, &misses);
    }
}

/* memory.full_kv: host: full and swa layers (the window's ring of 9 + 8 - 1 slots) staged whole at every
 * forward, beside dsa layers in the slots. */
Test(model_host, full_and_swa_layers_streamed_from_the_host) {
    for (int mla = 0; mla < 2; mla++) {
        int64_t hits = 0, misses = 0;
        host_vs_gpu_of("swa, full, dsa", mla ? "bf16" : "f32", 10, mla, chunks_then_decode, 17, &hits, &misses);
        host_vs_gpu_of("full, swa, dsa", "f32", 7, mla, ragged, 11, &hits, &misses);
        host_vs_gpu_of("swa, full, dsa", "bf16", 6, mla, token_by_token, 40, &hits, &misses);
    }
}

/* memory.dsa_gpu_seqs: the batch split between the tiers, one sparse attention over both parts: the same logits
 * as all on the GPU, bit for bit, while the slots mirror, while chunks are staged and while decode steps fetch;
 * gqa, mla, mla's FP8 rows and gqa's, with full and swa layers streamed beside them; and with decode steps in
 * two micro-batches cut at the split. */
Test(model_host, a_batch_split_between_the_tiers) {
    for (int mla = 0; mla < 4; mla++)
        for (int split = 1; split <= 2; split++)
            for (int micro = 0; micro < 2; micro++) {
                int64_t hits = 0, misses = 0;
                const char *dt = mla >= 2 ? "bf16" : "f32";
                host_vs_gpu_split(DSA_ONLY, dt, 64, mla, split, micro, chunks_then_decode, 17, &hits, &misses);
                cr_expect(hits == 0 && misses == 0, "mirrored: hits %lld, misses %lld", (long long)hits,
                          (long long)misses);
                host_vs_gpu_split(DSA_ONLY, dt, 10, mla, split, micro, chunks_then_decode, 17, &hits, &misses);
                cr_expect(hits > 0 && misses > 0, "decode past 10 slots: hits %lld, misses %lld", (long long)hits,
                          (long long)misses);
                host_vs_gpu_split(DSA_ONLY, "bf16", 7, mla, split, micro, ragged, 11, &hits, &misses);
                host_vs_gpu_split("swa, full, dsa", dt, 6, mla, split, micro, token_by_token, 40, &hits, &misses);
            }
}

/* A snapshot of a split batch holds both tiers' K/V: restored after another context overwrote them, the decode
 * continues with the same logits (the slots start empty again and refill from the host tier). */
Test(model_host, a_split_batch_snapshot_continues_identically) {
    hae_backend *be = tu_cpu();
    hae_config cfg;
    char y[2048];
    snprintf(y, sizeof y, yaml_fmt, DSA_ONLY, "f32", 3, "[1, 2]", "host", "gpu", 10, 1);
    tu_config(y, &cfg);
    hae_model *m = tu_model(be, &cfg);
    int32_t tok[3 * 24], step[3] = {4, 9, 17};
    tu_tokens(&cfg, 24, tok, 13);
    hae_tensor lg;
    cr_assert_eq(hae_model_forward(m, tok, 24, &lg), HAE_OK, "%s", hae_last_error());
    const size_t n = hae_model_snapshot_bytes(m), V = (size_t)cfg.model.vocab_size;
    void *snap = malloc(n);
    float *want = malloc(sizeof(float) * 3 * 3 * V), *got = malloc(sizeof(float) * 3 * 3 * V);
    cr_assert(snap && want && got);
    cr_assert_eq(hae_model_snapshot_save(m, snap, n), HAE_OK, "%s", hae_last_error());
    int32_t other[3 * 24];
    tu_tokens(&cfg, 24, other, 14);
    for (int r = 0; r < 2; r++) {
        float *out = r ? got : want;
        if (r) { /* another context overwrites every K/V row of both tiers first */
            hae_model_reset(m);
            cr_assert_eq(hae_model_forward(m, other, 24, &lg), HAE_OK, "%s", hae_last_error());
            cr_assert_eq(hae_model_snapshot_restore(m, snap, n), HAE_OK, "%s", hae_last_error());
        }
        for (int i = 0; i < 3; i++) {
            cr_assert_eq(hae_model_forward(m, step, 1, &lg), HAE_OK, "%s", hae_last_error());
            for (size_t b = 0; b < 3; b++) /* every position's logits are kept: [B, CTX, V] */
                memcpy(out + ((size_t)i * 3 + b) * V, (float *)lg.data + (b * CTX + 24 + (size_t)i) * V, sizeof(float) * V);
        }
    }
    cr_expect(!memcmp(want, got, sizeof(float) * 3 * 3 * V), "the restored split batch decodes otherwise");
    free(snap), free(want), free(got);
    hae_model_destroy(m);
    hae_backend_destroy(be);
}

/* memory.dsa_kv: auto: with no budget the run fits this machine and the dsa K/V stay on the GPU tier (here the
 * CPU backend's memory); under a memory.gpu_budget smaller than the run, the host tier takes them; the logits are
 * the same either way. */
Test(model_host, dsa_kv_auto_spills_only_when_the_run_does_not_fit) {
    hae_backend *be = tu_cpu();
    hae_config fit, tight;
    char y[2048];
    snprintf(y, sizeof y, yaml_fmt, DSA_ONLY, "f32", 2, "[]", "auto", "gpu", 10, -1);
    tu_config(y, &fit);
    tight = fit;
    tight.memory.gpu_budget = 4096; /* far below the weights alone */
    hae_model *a = tu_model(be, &fit), *b = tu_model(be, &tight);
    hae_model_stats sa, sb;
    hae_model_stats_get(a, &sa), hae_model_stats_get(b, &sb);
    cr_expect_eq(sa.dsa_kv, HAE_TIER_GPU, "no budget: %s", hae_tier_name(sa.dsa_kv));
    cr_expect_eq(sa.kv_host_bytes, 0);
    cr_expect_eq(sb.dsa_kv, HAE_TIER_HOST, "4 KiB budget: %s", hae_tier_name(sb.dsa_kv));
    cr_expect_eq(sb.kv_host_bytes, (size_t)2 * 2 * CTX * 2 * 2 * 8 * 4, "two dsa layers' K/V for 2 x 40 tokens");
    int32_t tok[2 * CTX];
    tu_tokens(&fit, CTX, tok, 12);
    float *la = tu_model_logits(a, &fit, CTX, tok, chunks_then_decode, 17),
          *lb = tu_model_logits(b, &tight, CTX, tok, chunks_then_decode, 17);
    cr_expect(memcmp(la, lb, sizeof *la * (size_t)(2 * CTX * fit.model.vocab_size)) == 0, "the same logits");
    /* a budget that the plan with one sequence's dsa K/V on the GPU fits, and all on the GPU does not: one stays */
    hae_config one = fit;
    one.memory.dsa_kv = HAE_TIER_HOST, one.memory.dsa_gpu_seqs = 1;
    hae_mem_plan p1, pg;
    cr_assert_eq(hae_mem_plan_get(&one, CTX, &p1), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(hae_mem_plan_get(&fit, CTX, &pg), HAE_OK, "%s", hae_last_error());
    cr_assert_gt(pg.total[HAE_TIER_GPU], p1.total[HAE_TIER_GPU]);
    hae_config mid = fit;
    mid.memory.gpu_budget = (int64_t)p1.total[HAE_TIER_GPU];
    hae_model *c = tu_model(be, &mid);
    hae_model_stats sc;
    hae_model_stats_get(c, &sc);
    cr_expect(sc.dsa_kv == HAE_TIER_HOST && sc.dsa_gpu_seqs == 1, "budget of the one-sequence plan: %s, %lld on the GPU",
              hae_tier_name(sc.dsa_kv), (long long)sc.dsa_gpu_seqs);
    cr_expect_eq(sc.kv_host_bytes, (size_t)2 * CTX * 2 * 2 * 8 * 4, "two dsa layers' K/V for 1 x 40 tokens");
    float *lc = tu_model_logits(c, &mid, CTX, tok, chunks_then_decode, 17);
    cr_expect(memcmp(la, lc, sizeof *la * (size_t)(2 * CTX * fit.model.vocab_size)) == 0, "the same logits, split");
    cr_expect_eq(sc.n_micro, 1, "auto runs a small batch as one");
    /* auto's micro-batches: a split batch cut at the split, a host part beside fewer than 16 GPU sequences in
     * halves, nothing under 16 sequences */
    const int64_t shapes[][5] = {/* batch, dsa_gpu_seqs, micro-batches */ {40, 20, 20, 20, 0}, {40, 4, 22, 18, 0},
                                 {40, 0, 20, 20, 0}, {31, 0, 31, 0, 0}, {40, 30, 40, 0, 0}, {33, 1, 1 + 16, 16, 0}};
    for (int i = 0; i < 6; i++) {
        hae_config big = fit;
        big.runtime.batch = shapes[i][0], big.memory.dsa_kv = HAE_TIER_HOST, big.memory.dsa_gpu_seqs = shapes[i][1];
        hae_model *g = tu_model(be, &big);
        hae_model_stats sg;
        hae_model_stats_get(g, &sg);
        const int want = shapes[i][3] ? 2 : 1;
        cr_expect(sg.n_micro == want && sg.micro[0] == shapes[i][2] && (want == 1 || sg.micro[1] == shapes[i][3]),
                  "batch %lld, %lld on the GPU: %d micro-batches of %lld, %lld", (long long)shapes[i][0],
                  (long long)shapes[i][1], sg.n_micro, (long long)sg.micro[0], (long long)sg.micro[1]);
        hae_model_destroy(g);
    }
    /* micro-batches that do not add up to the batch (a config changed after its checks) are refused when the model
     * is built */
    hae_config cut = tight;
    cut.runtime.micro_batches = (hae_eval_list){.n = 2, .v = {1, 2}};
    hae_model *e = NULL;
    hae_model_options opt = {.all_logits = true};
    cr_expect_eq(hae_model_create(&cut, be, &opt, &e), HAE_ERR_INVALID);
    cr_expect(!e && strstr(hae_last_error(), "runtime.micro_batches add up to 3 sequences and the batch is 2"), "%s",
              hae_last_error());
    /* host with every sequence kept on the GPU is the GPU tier */
    hae_config all = fit;
    all.memory.dsa_kv = HAE_TIER_HOST, all.memory.dsa_gpu_seqs = 2;
    hae_model *d = tu_model(be, &all);
    hae_model_stats sd;
    hae_model_stats_get(d, &sd);
    cr_expect(sd.dsa_kv == HAE_TIER_GPU && sd.dsa_gpu_seqs == 2 && sd.kv_host_bytes == 0 && sd.slot_cache_bytes == 0,
              "%s, %zu host bytes",
              hae_tier_name(sd.dsa_kv), sd.kv_host_bytes);
    free(la), free(lb), free(lc);
    hae_model_destroy(a), hae_model_destroy(b), hae_model_destroy(c), hae_model_destroy(d);
    hae_backend_destroy(be);
}

/* The GPU token slots of one dsa layer whose K/V live in the host tier (DESIGN.md §2, memory.dsa_kv: host).
 * Before the layer's sparse attention:
 *   - a decode step (one query per sequence) looks its top-k up (hae_kv_slots: exact LRU over S slots),
 *     fetches the misses' rows from the host (hae_kv_gather, on the side stream, left in flight until the
 *     caller waits: a decode micro-batch fetches its range of the sequences as a part with its own fence)
 *     and attends over the slots, its selections rewritten as slot numbers;
 *   - a prefill chunk whose context fits the slots mirrors the tokens not copied yet (slot = token), so
 *     it attends over the slots with its selections as they are;
 *   - a longer chunk copies the layer's context [0, pos + T) into a staging buffer shared by every such
 *     layer (one bulk copy per sequence at the link's speed; fetching each query's selections would move
 *     T k / context rows per row copied: 128x at 128K tokens, 8K chunks, top-2048) and attends over it.
 * With no slots (S = 0: full and swa layers with memory.full_kv: host) every forward stages the layer's
 * whole context, decode steps too: the host tier streamed to the GPU at every step, slow by design.
 * The attention sees the same K/V rows in the same order as over a GPU-resident cache, so its output is
 * bit-identical. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

struct hae_slot_cache {
    hae_backend *be;
    int64_t B, cap, S, k, n;
    hae_tensor k_host, v_host;  /* [B, cap, H, D] views of the layer's host-tier K and V */
    int64_t v_offset;           /* V a view of K (mla): its first element's offset in a K row; else -1 */
    void *mem;                  /* every buffer below, one device allocation */
    hae_tensor k_slots, v_slots; /* [B, S, H, D] */
    hae_tensor k_stage, v_stage; /* [B, cap, H, D] like k_host and v_host, in the shared staging; data NULL: none */
    hae_tensor map, owner, stamp, counts, out, src, dst, lens;
    size_t bytes, state_bytes;
    int32_t step;
    int64_t *mirrored;          /* [B]: tokens [0, mirrored[b]) hold slots [0, mirrored[b]) while the context fits */
    hae_fence *fence;           /* marks a prefetch into the staging */
    hae_fence *part_fence[HAE_SLOT_PARTS]; /* a decode step's fetch, per part of the sequences (decode micro-batches) */
    int64_t pre_pos, pre_T, pre_rows; /* a prefetch for the forward at (pre_pos, pre_T) staged rows [0, pre_rows) */
    bool pending;               /* side work into the staging that the main stream has not waited for */
    bool fetching[HAE_SLOT_PARTS]; /* a decode step's fetch that the main stream has not waited for */
    size_t fetched_rows;        /* rows copied by mirroring and staging (the misses' are counted on the device) */
};

static size_t up256(size_t n) { return (n + 255) & ~(size_t)255; }

/* [B, rows, H, D] over the slots, laid out densely. */
static hae_tensor slots_like(const hae_tensor *t, void *data, int64_t S) {
    return hae_tensor_4d(data, t->dtype, t->device, t->shape[0], S, t->shape[2], t->shape[3]);
}

static hae_tensor rows3(const hae_tensor *t) { /* [B, rows, H, D] as [B, rows, H D] */
    hae_tensor r = hae_tensor_3d(t->data, t->dtype, t->device, t->shape[0], t->shape[1], t->shape[2] * t->shape[3]);
    r.stride[0] = t->stride[0], r.stride[1] = t->stride[1];
    return r;
}

size_t hae_slot_cache_stage_bytes(const hae_tensor *k_host, const hae_tensor *v_host) {
    const char *kb = k_host->data, *vb = v_host->data;
    const bool view = vb >= kb && vb < kb + (size_t)k_host->shape[3] * hae_dtype_size(k_host->dtype);
    return (size_t)(k_host->shape[0] * k_host->shape[1]) *
           (size_t)(k_host->shape[2] * k_host->shape[3] + (view ? 0 : v_host->shape[2] * v_host->shape[3])) *
           hae_dtype_size(k_host->dtype);
}

hae_status hae_slot_cache_create(hae_backend *be, const hae_tensor *k_host, const hae_tensor *v_host, int64_t S,
                                 int64_t topk, int64_t chunk, void *stage, hae_slot_cache **out) {
    *out = NULL;
    const int64_t B = k_host->shape[0], cap = k_host->shape[1];
    if (S > 0 && S < topk)
        return hae_error(HAE_ERR_INVALID, "slot cache: %lld slots cannot hold a top-%lld selection (memory.cache_tokens "
                         ">= model.dsa.index_topk)", (long long)S, (long long)topk);
    if (S <= 0 && !stage)
        return hae_error(HAE_ERR_INVALID, "slot cache: without slots every forward is staged, so it needs a staging buffer");
    hae_slot_cache *c = calloc(1, sizeof *c);
    if (!c) return hae_error(HAE_ERR_OOM, "slot cache: out of host memory");
    const char *kb = k_host->data, *vb = v_host->data;
    const size_t esz = hae_dtype_size(k_host->dtype);
    const bool view = vb >= kb && vb < kb + (size_t)k_host->shape[3] * esz;
    *c = (hae_slot_cache){.be = be, .B = B, .cap = cap, .S = S > 0 ? S : 0, .k = topk, .n = topk > chunk ? topk : chunk,
                          .k_host = *k_host, .v_host = *v_host, .v_offset = view ? (vb - kb) / (int64_t)esz : -1};
    if (stage) { /* K rows then V rows, each laid out as the host tier's */
        c->k_stage = slots_like(k_host, stage, cap);
        c->v_stage = view ? c->k_stage : slots_like(v_host, (char *)stage + hae_tensor_nbytes(&c->k_stage), cap);
        if (view) {
            c->v_stage.shape[3] = c->v_stage.stride[2] = v_host->shape[3]; /* one head: as kv_cache.c views it */
            c->v_stage.data = (char *)stage + c->v_offset * (int64_t)esz;
        }
    }
    c->mirrored = calloc((size_t)B, sizeof *c->mirrored);
    hae_status st = c->mirrored ? hae_fence_create(be, &c->fence) : hae_error(HAE_ERR_OOM, "slot cache: out of host memory");
    for (int i = 0; i < HAE_SLOT_PARTS && st == HAE_OK; i++) st = hae_fence_create(be, &c->part_fence[i]);
    if (st != HAE_OK || c->S == 0) {
        if (st != HAE_OK) hae_slot_cache_destroy(c), c = NULL;
        *out = c;
        return st;
    }
    const size_t kbytes = (size_t)(B * S * k_host->shape[2] * k_host->shape[3]) * esz;
    const size_t vbytes = view ? 0 : (size_t)(B * S * v_host->shape[2] * v_host->shape[3]) * esz;
    const size_t i32 = sizeof(int32_t);
    const size_t state = up256((size_t)(B * cap) * i32) + 2 * up256((size_t)(B * S) * i32);
    c->state_bytes = state;
    c->bytes = up256(kbytes) + up256(vbytes) + state + up256(2 * sizeof(int64_t)) + up256((size_t)(B * topk) * i32) +
               2 * up256((size_t)(B * c->n) * i32) + up256((size_t)B * i32);
    st = hae_backend_alloc(be, c->bytes, &c->mem);
    if (st != HAE_OK) {
        hae_slot_cache_destroy(c);
        return hae_error_wrap(st, "slot cache: %lld slots x %lld sequences", (long long)S, (long long)B);
    }
    const hae_device dev = hae_backend_device(be);
    char *p = c->mem;
    /* the state first, so that one zeroing clears it */
    c->map = hae_tensor_2d(p, HAE_I32, dev, B, cap), p += up256((size_t)(B * cap) * i32);
    c->owner = hae_tensor_2d(p, HAE_I32, dev, B, S), p += up256((size_t)(B * S) * i32);
    c->stamp = hae_tensor_2d(p, HAE_I32, dev, B, S), p += up256((size_t)(B * S) * i32);
    c->counts = hae_tensor_1d(p, HAE_I64, dev, 2), p += up256(2 * sizeof(int64_t));
    c->out = hae_tensor_2d(p, HAE_I32, dev, B, topk), p += up256((size_t)(B * topk) * i32);
    c->src = hae_tensor_2d(p, HAE_I32, dev, B, c->n), p += up256((size_t)(B * c->n) * i32);
    c->dst = hae_tensor_2d(p, HAE_I32, dev, B, c->n), p += up256((size_t)(B * c->n) * i32);
    c->lens = hae_tensor_1d(p, HAE_I32, dev, B), p += up256((size_t)B * i32);
    c->k_slots = slots_like(k_host, p, S), p += up256(kbytes);
    if (view) {
        c->v_slots = c->k_slots;
        c->v_slots.shape[3] = c->v_slots.stride[2] = v_host->shape[3]; /* one head: as kv_cache.c views it */
        c->v_slots.data = (char *)c->k_slots.data + c->v_offset * (int64_t)esz;
    } else {
        c->v_slots = slots_like(v_host, p, S);
    }
    int32_t *lens = malloc((size_t)B * i32);
    st = lens ? HAE_OK : hae_error(HAE_ERR_OOM, "slot cache: out of host memory");
    for (int64_t b = 0; lens && b < B; b++) lens[b] = (int32_t)S; /* a decode query sees every slot */
    if (st == HAE_OK) st = hae_backend_upload(be, c->lens.data, lens, (size_t)B * i32);
    if (st == HAE_OK) st = hae_backend_zero(be, c->counts.data, 2 * sizeof(int64_t));
    if (st == HAE_OK) st = hae_backend_sync(be);
    free(lens);
    if (st == HAE_OK) st = hae_slot_cache_reset(c);
    if (st != HAE_OK) {
        hae_slot_cache_destroy(c);
        return st;
    }
    *out = c;
    return HAE_OK;
}

void hae_slot_cache_destroy(hae_slot_cache *c) {
    if (!c) return;
    bool side = c->pending;
    for (int i = 0; i < HAE_SLOT_PARTS; i++) side |= c->fetching[i];
    if (side) (void)hae_backend_sync(c->be); /* side work may still write the staging or the slots */
    hae_fence_destroy(c->fence);
    for (int i = 0; i < HAE_SLOT_PARTS; i++) hae_fence_destroy(c->part_fence[i]);
    free(c->mirrored);
    hae_backend_free(c->be, c->mem);
    free(c);
}

hae_status hae_slot_cache_reset(hae_slot_cache *c) {
    memset(c->mirrored, 0, sizeof *c->mirrored * (size_t)c->B);
    c->pre_rows = 0;
    return c->S ? hae_backend_zero(c->be, c->map.data, c->state_bytes) : HAE_OK;
}

size_t hae_slot_cache_bytes(const hae_slot_cache *c) { return c->bytes; }

/* Sequences [s0, s0 + n) of the cache: its per-sequence tensors narrowed to them. */
typedef struct {
    hae_tensor map, owner, stamp, out, src, dst, lens, k_host, v_host, k_slots, v_slots;
} seq_range;

static seq_range seqs(const hae_slot_cache *c, int64_t s0, int64_t n) {
    const hae_tensor *all[] = {&c->map, &c->owner, &c->stamp, &c->out, &c->src, &c->dst, &c->lens,
                               &c->k_host, &c->v_host, &c->k_slots, &c->v_slots};
    seq_range r;
    hae_tensor *dst[] = {&r.map, &r.owner, &r.stamp, &r.out, &r.src, &r.dst, &r.lens, &r.k_host, &r.v_host, &r.k_slots,
                         &r.v_slots};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) *dst[i] = hae_tensor_narrow(*all[i], 0, s0, n);
    return r;
}

/* Copies the fetch list's rows of K (and V unless it is a view of K) from the host tier to the slots. */
static hae_status fetch(hae_slot_cache *c, const seq_range *r, int64_t n) {
    const hae_tensor src = hae_tensor_narrow(r->src, 1, 0, n), dst = hae_tensor_narrow(r->dst, 1, 0, n);
    HAE_TRY(hae_kv_gather(c->be, &(hae_kv_gather_args){.src = rows3(&r->k_host), .dst = rows3(&r->k_slots),
                                                       .src_rows = src, .dst_rows = dst}));
    if (c->v_offset >= 0) return HAE_OK;
    return hae_kv_gather(c->be, &(hae_kv_gather_args){.src = rows3(&r->v_host), .dst = rows3(&r->v_slots),
                                                      .src_rows = src, .dst_rows = dst});
}

/* A decode step's fetch on the side stream: it starts after the lookup that wrote its lists (and after the
 * previous step's attention, which may read a slot it evicts); hae_slot_cache_wait puts the attention after
 * it, so the caller may enqueue independent work in between. */
static hae_status fetch_side(hae_slot_cache *c, int part, const seq_range *r) {
    HAE_TRY(hae_backend_side_begin(c->be));
    const hae_status st = fetch(c, r, c->k);
    const hae_status end = hae_backend_side_end(c->be, c->part_fence[part]);
    c->fetching[part] = end == HAE_OK;
    HAE_TRY(st);
    return end;
}

hae_status hae_slot_cache_wait(hae_slot_cache *c, int part) {
    if (part < 0 || part >= HAE_SLOT_PARTS)
        return hae_error(HAE_ERR_INVALID, "slot cache: part %d (there are %d)", part, HAE_SLOT_PARTS);
    if (!c->fetching[part]) return HAE_OK;
    c->fetching[part] = false;
    return hae_backend_side_wait(c->be, c->part_fence[part]);
}

/* Rows [from, to) of every sequence's K (and V) from the host tier into the staging, in runs that stay inside
 * one pinned chunk. */
static hae_status stage_rows(hae_slot_cache *c, int64_t from, int64_t to) {
    const hae_tensor *src[2] = {&c->k_host, &c->v_host}, *dst[2] = {&c->k_stage, &c->v_stage};
    for (int i = 0; i < (c->v_offset >= 0 ? 1 : 2); i++) {
        const size_t row = (size_t)(src[i]->stride[1]) * hae_dtype_size(src[i]->dtype);
        for (int64_t b = 0; b < c->B; b++) {
            const char *p = hae_row_ptr(src[i], b, from, 0);
            char *q = hae_row_ptr(dst[i], b, from, 0);
            for (size_t left = (size_t)(to - from) * row, run; left; left -= run, p += run, q += run)
                HAE_TRY(hae_backend_upload(c->be, q, p, run = hae_host_run(p, left)));
        }
    }
    return HAE_OK;
}

bool hae_slot_cache_stages(const hae_slot_cache *c, int64_t pos, int64_t T) {
    return c->S == 0 || (pos + T > c->S && T > 1);
}

hae_status hae_slot_cache_prefetch(hae_slot_cache *c, int64_t pos, int64_t T) {
    c->pre_rows = 0;
    /* nothing before the chunk, or a window's ring that the chunk's own K/V will overwrite in part */
    if (!c->k_stage.data || !hae_slot_cache_stages(c, pos, T) || pos == 0 || pos + T > c->cap) return HAE_OK;
    HAE_TRY(hae_backend_side_begin(c->be));
    const hae_status st = stage_rows(c, 0, pos);
    const hae_status end = hae_backend_side_end(c->be, c->fence);
    c->pending = true;
    HAE_TRY(st);
    HAE_TRY(end);
    c->pre_pos = pos, c->pre_T = T, c->pre_rows = pos;
    return HAE_OK;
}

/* Copies the layer's context (a ring of cap slots for a window) into the staging buffer, in bulk, and points
 * k and v there. */
static hae_status stage_context(hae_slot_cache *c, int64_t pos, int64_t T, hae_tensor *k, hae_tensor *v) {
    if (!c->k_stage.data) /* created without staging: chunks never outgrow the slots */
        return hae_error(HAE_ERR_INVALID, "slot cache: a chunk of %lld tokens at position %lld passes the %lld slots "
                         "and there is no staging buffer", (long long)T, (long long)pos, (long long)c->S);
    const int64_t rows = pos + T < c->cap ? pos + T : c->cap;
    /* a prefetch for this forward staged the rows before the chunk; the chunk's own were written since */
    const int64_t have = c->pre_pos == pos && c->pre_T == T ? c->pre_rows : 0;
    if (c->pending) HAE_TRY(hae_backend_side_wait(c->be, c->fence));
    c->pending = false, c->pre_rows = 0;
    HAE_TRY(stage_rows(c, have, rows));
    c->fetched_rows += (size_t)(c->B * rows);
    *k = c->k_stage;
    *v = c->v_stage;
    return HAE_OK;
}

hae_status hae_slot_cache_prepare(hae_slot_cache *c, int part, int64_t s0, int64_t n, int64_t pos, int64_t T,
                                  hae_tensor *k, hae_tensor *v, hae_tensor *idx, hae_tensor *seq_lens) {
    if (part < 0 || part >= HAE_SLOT_PARTS || s0 < 0 || n < 1 || s0 + n > c->B)
        return hae_error(HAE_ERR_INVALID, "slot cache: part %d of sequences [%lld, %lld) (the cache holds %lld, %d parts)",
                         part, (long long)s0, (long long)(s0 + n), (long long)c->B, HAE_SLOT_PARTS);
    const bool whole = s0 == 0 && n == c->B;
    if (!whole && hae_slot_cache_stages(c, pos, T))
        return hae_error(HAE_ERR_INVALID, "slot cache: a chunk of %lld tokens at position %lld is staged, for every "
                         "sequence at once (asked for [%lld, %lld) of %lld)", (long long)T, (long long)pos,
                         (long long)s0, (long long)(s0 + n), (long long)c->B);
    HAE_TRY(hae_slot_cache_wait(c, part)); /* its last fetch reads the lists this lookup rewrites */
    if (++c->step == INT32_MAX) { /* stamps would wrap: start over */
        HAE_TRY(hae_slot_cache_reset(c));
        c->step = 1;
    }
    /* Within a sequence the context only grows, so the slots mirror its prefix until it outgrows them,
     * and from then on hold what the LRU keeps. */
    if (hae_slot_cache_stages(c, pos, T)) return stage_context(c, pos, T, k, v);
    const seq_range r = seqs(c, s0, n);
    if (pos + T <= c->S) {
        const int64_t lo = c->mirrored[s0], hi = pos + T;
        for (int64_t at = lo; at < hi; at += c->n) { /* the fetch list holds n entries */
            const int64_t end = hi - at < c->n ? hi : at + c->n;
            HAE_TRY(hae_kv_slots(c->be, &(hae_kv_slots_args){.map = r.map, .owner = r.owner, .stamp = r.stamp,
                                                             .src_rows = r.src, .dst_rows = r.dst,
                                                             .counts = c->counts, .step = c->step, .lo = at, .hi = end}));
            HAE_TRY(fetch(c, &r, end - at));
        }
        c->fetched_rows += (size_t)(n * (hi - lo));
        for (int64_t b = s0; b < s0 + n; b++) c->mirrored[b] = hi; /* slot = token: selections and lengths stay */
    } else {
        hae_tensor sel = hae_tensor_2d(idx->data, HAE_I32, idx->device, n, c->k);
        sel.stride[0] = idx->stride[0];
        HAE_TRY(hae_kv_slots(c->be, &(hae_kv_slots_args){.idx = sel, .map = r.map, .owner = r.owner,
                                                         .stamp = r.stamp, .out = r.out, .src_rows = r.src,
                                                         .dst_rows = r.dst, .counts = c->counts, .step = c->step}));
        HAE_TRY(fetch_side(c, part, &r));
        *idx = hae_tensor_3d(r.out.data, HAE_I32, r.out.device, n, 1, c->k);
        *seq_lens = r.lens;
    }
    *k = r.k_slots;
    *v = r.v_slots;
    return HAE_OK;
}


hae_status hae_slot_cache_stats(const hae_slot_cache *c, int64_t *hits, int64_t *misses, size_t *fetched_bytes) {
    int64_t n[2] = {0, 0};
    if (c->S) {
        HAE_TRY(hae_backend_download(c->be, n, c->counts.data, sizeof n));
        HAE_TRY(hae_backend_sync(c->be));
    }
    const size_t row = (size_t)(c->k_host.shape[2] * c->k_host.shape[3] +
                                (c->v_offset >= 0 ? 0 : c->v_host.shape[2] * c->v_host.shape[3])) *
                       hae_dtype_size(c->k_host.dtype);
    *hits += n[0], *misses += n[1];
    *fetched_bytes += ((size_t)n[1] + c->fetched_rows) * row;
    return HAE_OK;
}

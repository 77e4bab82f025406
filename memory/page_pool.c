/* The page pool (DESIGN.md §2): fixed-size pages in two tiers, GPU memory and host RAM.
 *
 * Each tier has one arena, allocated at creation and carved into one region per page class; a region
 * is an array of pages whose free ones sit on a stack, so taking or returning a page is O(1) and never
 * allocates. A page of class c is named by one id: ids [0, pages[gpu]) are the GPU region's pages,
 * the next pages[host] the host region's, so a sequence's page list is one int32 per page whatever
 * the tiers, as a block table for the kernels will be. Every page in use records its owner (sequence
 * and place in its list): that is what validate checks and what keeps sequences from sharing pages. */
#include "internal.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CLASS_ALIGN 256

typedef struct {
    hae_page_class c;
    size_t off[HAE_TIER_COUNT];   /* its region's offset in each tier's arena */
    int32_t *stack[HAE_TIER_COUNT]; /* free page ids of each tier; the top is taken next */
    int64_t n_free[HAE_TIER_COUNT];
    int64_t n_ids;                /* pages[gpu] + pages[host] */
    int32_t *owner;               /* [n_ids] sequence holding the page, -1 when free */
    int32_t *slot;                /* [n_ids] its index in that sequence's list */
    int64_t max_pages;            /* pages one sequence's list may hold */
    int32_t *table;               /* [max_seqs, max_pages] page ids of each sequence's list */
    int64_t *n_pages;             /* [max_seqs] */
} page_class;

struct hae_page_pool {
    hae_backend *be;
    int64_t P, max_seqs, max_seq_tokens;
    int n_cls;
    page_class *cls;
    char *arena[HAE_TIER_COUNT];
    hae_mem_stats st;
    int64_t fail_after[HAE_TIER_COUNT];
};

static const char *const tier_names[] = {"gpu", "host", "auto"};
static const char *const kind_names[HAE_MEM_KIND_COUNT] = {
    "weights", "activations", "dsa_kv", "index_keys", "full_kv", "linear_state",
};

const char *hae_tier_name(hae_tier t) { return (unsigned)t <= HAE_TIER_AUTO ? tier_names[t] : "unknown"; }
const char *hae_mem_kind_name(hae_mem_kind k) { return (unsigned)k < HAE_MEM_KIND_COUNT ? kind_names[k] : "unknown"; }

static size_t align_up(size_t n) { return (n + CLASS_ALIGN - 1) / CLASS_ALIGN * CLASS_ALIGN; }

/* a * b, or false when it overflows size_t. */
static bool mul_ok(size_t a, size_t b, size_t *out) {
    if (b && a > SIZE_MAX / b) return false;
    *out = a * b;
    return true;
}

static hae_tier tier_of(const page_class *k, int32_t id) {
    return id < k->c.pages[HAE_TIER_GPU] ? HAE_TIER_GPU : HAE_TIER_HOST;
}

static char *page_data(const hae_page_pool *p, const page_class *k, int32_t id) {
    hae_tier t = tier_of(k, id);
    int64_t i = t == HAE_TIER_GPU ? id : id - k->c.pages[HAE_TIER_GPU];
    return p->arena[t] + k->off[t] + (size_t)i * k->c.page_bytes;
}

static void account(hae_page_pool *p, hae_tier t, hae_mem_kind kind, size_t bytes, bool add) {
    hae_mem_stats *s = &p->st;
    if (add) {
        s->resident[t][kind] += bytes;
        s->resident_total[t] += bytes;
        if (s->resident[t][kind] > s->peak[t][kind]) s->peak[t][kind] = s->resident[t][kind];
        if (s->resident_total[t] > s->peak_total[t]) s->peak_total[t] = s->resident_total[t];
    } else {
        s->resident[t][kind] -= bytes;
        s->resident_total[t] -= bytes;
    }
}

/* ---------------------------------------------------------------- create / destroy */

static void free_arena(hae_page_pool *p, hae_tier t) {
    if (!p->arena[t]) return;
    if (t == HAE_TIER_GPU) hae_backend_free(p->be, p->arena[t]);
    else hae_backend_free_host(p->be, p->arena[t]);
    p->arena[t] = NULL;
}

void hae_page_pool_destroy(hae_page_pool *p) {
    if (!p) return;
    for (int t = 0; t < HAE_TIER_COUNT; t++) free_arena(p, (hae_tier)t);
    for (int c = 0; p->cls && c < p->n_cls; c++) {
        page_class *k = &p->cls[c];
        for (int t = 0; t < HAE_TIER_COUNT; t++) free(k->stack[t]);
        free(k->owner), free(k->slot), free(k->table), free(k->n_pages);
    }
    free(p->cls);
    free(p);
}

/* The arguments' own checks, before any sizes are added up. */
static hae_status check_desc(const hae_page_pool_desc *d) {
    if (d->page_tokens < 1 || d->max_seqs < 1 || d->max_seqs > INT32_MAX || d->max_seq_tokens < 1)
        return hae_error(HAE_ERR_INVALID, "page pool: page_tokens %" PRId64 ", max_seqs %" PRId64 " and "
                         "max_seq_tokens %" PRId64 " must be >= 1 (max_seqs < 2^31)", d->page_tokens, d->max_seqs,
                         d->max_seq_tokens);
    if (d->n_classes < 1 || !d->classes)
        return hae_error(HAE_ERR_INVALID, "page pool: %d page classes (need at least one)", d->n_classes);
    for (int c = 0; c < d->n_classes; c++) {
        const hae_page_class *k = &d->classes[c];
        if ((unsigned)k->kind >= HAE_MEM_KIND_COUNT || k->page_bytes < 1)
            return hae_error(HAE_ERR_INVALID, "page pool: class %d: kind %d, page_bytes %zu (need a hae_mem_kind and "
                             ">= 1 byte)", c, (int)k->kind, k->page_bytes);
        if (k->pages[HAE_TIER_GPU] < 0 || k->pages[HAE_TIER_HOST] < 0 ||
            k->pages[HAE_TIER_GPU] > INT32_MAX - k->pages[HAE_TIER_HOST])
            return hae_error(HAE_ERR_INVALID, "page pool: class %d: %" PRId64 " gpu and %" PRId64 " host pages (need "
                             ">= 0, fewer than 2^31 in all)", c, k->pages[HAE_TIER_GPU], k->pages[HAE_TIER_HOST]);
    }
    return HAE_OK;
}

/* What each tier may hold: its budget, or what the device / RAM has free. */
static hae_status tier_limits(hae_backend *be, const hae_page_pool_desc *d, size_t limit[HAE_TIER_COUNT],
                              char why[HAE_TIER_COUNT][160]) {
    size_t free_b = 0, total_b = 0;
    for (int t = 0; t < HAE_TIER_COUNT; t++) {
        limit[t] = d->budget[t];
        snprintf(why[t], sizeof why[t], "the budget memory.%s_budget", tier_names[t]);
        if (d->budget[t]) continue;
        if (t == HAE_TIER_GPU) {
            HAE_TRY(hae_backend_mem_info(be, &free_b, &total_b));
            snprintf(why[t], sizeof why[t], "free on %s", hae_backend_name(be));
        } else {
            long page = sysconf(_SC_PAGESIZE), avail = sysconf(_SC_AVPHYS_PAGES);
            free_b = (size_t)(avail > 0 ? avail : 0) * (size_t)(page > 0 ? page : 0);
            snprintf(why[t], sizeof why[t], "free host RAM");
        }
        limit[t] = free_b;
    }
    return HAE_OK;
}

hae_status hae_page_pool_create(hae_backend *be, const hae_page_pool_desc *d, hae_page_pool **out) {
    if (!out) return hae_error(HAE_ERR_INVALID, "page pool: NULL out");
    *out = NULL;
    if (!be || !d) return hae_error(HAE_ERR_INVALID, "page pool: NULL argument");
    HAE_TRY(check_desc(d));

    /* Sizes first: every tier is checked before anything is allocated. */
    size_t asked[HAE_TIER_COUNT] = {0}, arena[HAE_TIER_COUNT] = {0};
    bool overflow = false;
    for (int c = 0; c < d->n_classes; c++)
        for (int t = 0; t < HAE_TIER_COUNT; t++) {
            size_t b = 0;
            /* a quarter of the address space at most, so the sums and the alignment cannot wrap */
            overflow |= !mul_ok(d->classes[c].page_bytes, (size_t)d->classes[c].pages[t], &b) || b > SIZE_MAX / 4 ||
                        asked[t] + b > SIZE_MAX / 4;
            if (overflow) break;
            asked[t] += b;
            arena[t] += align_up(b);
        }
    if (overflow) return hae_error(HAE_ERR_INVALID, "page pool: arena sizes overflow");
    size_t limit[HAE_TIER_COUNT];
    char why[HAE_TIER_COUNT][160];
    HAE_TRY(tier_limits(be, d, limit, why));
    if (asked[HAE_TIER_GPU] > limit[HAE_TIER_GPU] || asked[HAE_TIER_HOST] > limit[HAE_TIER_HOST]) {
        char msg[1024];
        size_t k = 0;
        for (int t = 0; t < HAE_TIER_COUNT; t++)
            k += (size_t)snprintf(msg + k, sizeof msg - k, "%s%s tier: %zu bytes asked (%.2f GiB), %zu available "
                                  "(%.2f GiB, %s)%s", t ? "; " : "", tier_names[t], asked[t],
                                  (double)asked[t] / (1 << 30), limit[t], (double)limit[t] / (1 << 30), why[t],
                                  asked[t] > limit[t] ? ": does not fit" : "");
        return hae_error(HAE_ERR_OOM, "page pool: %s", msg);
    }

    hae_page_pool *p = calloc(1, sizeof *p);
    if (!p) return hae_error(HAE_ERR_OOM, "page pool: out of host memory");
    p->be = be;
    p->P = d->page_tokens;
    p->max_seqs = d->max_seqs;
    p->max_seq_tokens = d->max_seq_tokens;
    p->n_cls = d->n_classes;
    for (int t = 0; t < HAE_TIER_COUNT; t++) p->st.budget[t] = limit[t];
    p->cls = calloc((size_t)d->n_classes, sizeof *p->cls);
    hae_status st = p->cls ? HAE_OK : hae_error(HAE_ERR_OOM, "page pool: out of host memory");
    size_t off[HAE_TIER_COUNT] = {0};
    for (int c = 0; c < d->n_classes && st == HAE_OK; c++) {
        page_class *k = &p->cls[c];
        k->c = d->classes[c];
        k->n_ids = k->c.pages[HAE_TIER_GPU] + k->c.pages[HAE_TIER_HOST];
        k->max_pages = k->c.fixed ? 1 : (d->max_seq_tokens + d->page_tokens - 1) / d->page_tokens;
        size_t table = 0;
        if (k->max_pages > INT32_MAX || !mul_ok((size_t)d->max_seqs, (size_t)k->max_pages, &table) ||
            table > SIZE_MAX / sizeof(int32_t)) {
            st = hae_error(HAE_ERR_INVALID, "page pool: class %d: %" PRId64 " sequences x %" PRId64 " pages per "
                           "sequence is too large a page table", c, d->max_seqs, k->max_pages);
            break;
        }
        k->owner = malloc((size_t)(k->n_ids ? k->n_ids : 1) * sizeof *k->owner);
        k->slot = malloc((size_t)(k->n_ids ? k->n_ids : 1) * sizeof *k->slot);
        k->table = malloc((table ? table : 1) * sizeof *k->table);
        k->n_pages = calloc((size_t)d->max_seqs, sizeof *k->n_pages);
        bool ok = k->owner && k->slot && k->table && k->n_pages;
        for (int t = 0; t < HAE_TIER_COUNT && ok; t++) {
            int64_t n = k->c.pages[t];
            ok = (k->stack[t] = malloc((size_t)(n ? n : 1) * sizeof(int32_t))) != NULL;
            /* pushed last to first, so the region's first page is taken first */
            int32_t base = t == HAE_TIER_GPU ? 0 : (int32_t)k->c.pages[HAE_TIER_GPU];
            for (int64_t i = 0; ok && i < n; i++) k->stack[t][i] = base + (int32_t)(n - 1 - i);
            k->n_free[t] = n;
            k->off[t] = off[t];
            off[t] += align_up(k->c.page_bytes * (size_t)n);
            p->st.capacity[t][k->c.kind] += k->c.page_bytes * (size_t)n;
        }
        if (!ok) {
            st = hae_error(HAE_ERR_OOM, "page pool: out of host memory for the page tables of class %d", c);
            break;
        }
        for (int64_t i = 0; i < k->n_ids; i++) k->owner[i] = -1, k->slot[i] = -1;
    }
    for (int t = 0; t < HAE_TIER_COUNT && st == HAE_OK; t++) {
        if (!arena[t]) continue;
        if (d->fail_arena[t]) {
            st = hae_error(HAE_ERR_OOM, "page pool: %s tier: could not allocate its %zu-byte arena (injected failure)",
                           tier_names[t], arena[t]);
        } else if (t == HAE_TIER_GPU) {
            st = hae_backend_alloc(be, arena[t], (void **)&p->arena[t]);
            if (st) st = hae_error_wrap(st, "page pool: gpu tier arena of %zu bytes", arena[t]);
        } else {
            /* pinned and mapped on CUDA: pages move by DMA and the fetch kernel reads them in place */
            st = hae_backend_alloc_host(be, arena[t], (void **)&p->arena[t]);
            if (st) st = hae_error_wrap(st, "page pool: host tier arena of %zu bytes", arena[t]);
        }
    }
    if (st != HAE_OK) {
        hae_page_pool_destroy(p);
        return st;
    }
    *out = p;
    return HAE_OK;
}

/* ---------------------------------------------------------------- pages */

static hae_status check_seq(const hae_page_pool *p, const char *op, int64_t seq, int cls) {
    if (!p) return hae_error(HAE_ERR_INVALID, "page pool %s: NULL pool", op);
    if (seq < 0 || seq >= p->max_seqs || cls < 0 || cls >= p->n_cls)
        return hae_error(HAE_ERR_INVALID, "page pool %s: sequence %" PRId64 " of %" PRId64 ", class %d of %d: out of "
                         "range", op, seq, p->max_seqs, cls, p->n_cls);
    return HAE_OK;
}

/* Takes a free page of class k from tier t (the caller checked one is free), or fails as injected. */
static hae_status take(hae_page_pool *p, page_class *k, hae_tier t, int32_t *id) {
    if (p->fail_after[t] > 0 && --p->fail_after[t] == 0)
        return hae_error(HAE_ERR_OOM, "page pool: %s tier: page allocation failed (injected)", tier_names[t]);
    HAE_ASSERT(k->n_free[t] > 0);
    *id = k->stack[t][--k->n_free[t]];
    account(p, t, k->c.kind, k->c.page_bytes, true);
    return HAE_OK;
}

static void give_back(hae_page_pool *p, page_class *k, int32_t id) {
    hae_tier t = tier_of(k, id);
    HAE_ASSERT(k->n_free[t] < k->c.pages[t]);
    k->stack[t][k->n_free[t]++] = id;
    k->owner[id] = k->slot[id] = -1;
    account(p, t, k->c.kind, k->c.page_bytes, false);
}

hae_status hae_page_pool_grow(hae_page_pool *p, int64_t seq, int cls, int64_t tokens, hae_tier tier) {
    HAE_TRY(check_seq(p, "grow", seq, cls));
    if ((unsigned)tier >= HAE_TIER_COUNT) return hae_error(HAE_ERR_INVALID, "page pool grow: tier %d", (int)tier);
    if (tokens < 0 || tokens > p->max_seq_tokens)
        return hae_error(HAE_ERR_INVALID, "page pool grow: sequence %" PRId64 " to %" PRId64 " tokens (expected 0.."
                         "%" PRId64 ", the pool's max_seq_tokens)", seq, tokens, p->max_seq_tokens);
    page_class *k = &p->cls[cls];
    int64_t want = k->c.fixed ? (tokens > 0) : (tokens + p->P - 1) / p->P, *n = &k->n_pages[seq];
    int64_t need = want - *n;
    if (need <= 0) return HAE_OK;
    if (need > k->n_free[tier]) {
        const hae_mem_stats *s = &p->st;
        return hae_error(HAE_ERR_OOM, "page pool: %s tier: sequence %" PRId64 " needs %" PRId64 " more %s page%s of "
                         "%zu bytes for %" PRId64 " tokens, %" PRId64 " of the class's %" PRId64 " are free (%zu "
                         "bytes resident on the tier, budget %zu)", tier_names[tier], seq, need, kind_names[k->c.kind],
                         need > 1 ? "s" : "", k->c.page_bytes, tokens, k->n_free[tier], k->c.pages[tier],
                         s->resident_total[tier], s->budget[tier]);
    }
    int32_t *list = k->table + (size_t)seq * (size_t)k->max_pages;
    for (int64_t i = 0; i < need; i++) {
        int32_t id = -1;
        hae_status st = take(p, k, tier, &id);
        if (st != HAE_OK) { /* undo this call's pages */
            while (i-- > 0) give_back(p, k, list[--*n]);
            return hae_error_wrap(st, "sequence %" PRId64 " growing to %" PRId64 " tokens", seq, tokens);
        }
        k->owner[id] = (int32_t)seq;
        k->slot[id] = (int32_t)*n;
        list[(*n)++] = id;
    }
    return HAE_OK;
}

hae_status hae_page_pool_free_seq(hae_page_pool *p, int64_t seq) {
    HAE_TRY(check_seq(p, "free", seq, 0));
    for (int c = 0; c < p->n_cls; c++) {
        page_class *k = &p->cls[c];
        int32_t *list = k->table + (size_t)seq * (size_t)k->max_pages;
        for (int64_t i = k->n_pages[seq]; i-- > 0;) give_back(p, k, list[i]);
        k->n_pages[seq] = 0;
    }
    return HAE_OK;
}

hae_status hae_page_pool_move(hae_page_pool *p, int64_t seq, int cls, int64_t page, hae_tier to) {
    HAE_TRY(check_seq(p, "move", seq, cls));
    page_class *k = &p->cls[cls];
    if (page < 0 || page >= k->n_pages[seq] || (unsigned)to >= HAE_TIER_COUNT)
        return hae_error(HAE_ERR_INVALID, "page pool move: page %" PRId64 " of sequence %" PRId64 " (it holds %"
                         PRId64 "), tier %d", page, seq, k->n_pages[seq], (int)to);
    int32_t *list = k->table + (size_t)seq * (size_t)k->max_pages, from_id = list[page], id = -1;
    hae_tier from = tier_of(k, from_id);
    if (from == to) return HAE_OK;
    if (k->n_free[to] == 0)
        return hae_error(HAE_ERR_OOM, "page pool: %s tier: no free %s page to move page %" PRId64 " of sequence %"
                         PRId64 " into (all %" PRId64 " in use, %zu bytes resident on the tier, budget %zu)",
                         tier_names[to], kind_names[k->c.kind], page, seq, k->c.pages[to], p->st.resident_total[to],
                         p->st.budget[to]);
    HAE_TRY(take(p, k, to, &id));
    const size_t bytes = k->c.page_bytes;
    char *dst = page_data(p, k, id), *src = page_data(p, k, from_id);
    /* From pinned memory an upload is asynchronous: the wait lets the host page be reused at once, as
     * the download's does. */
    hae_status st = to == HAE_TIER_GPU ? hae_backend_upload(p->be, dst, src, bytes)
                                       : hae_backend_download(p->be, dst, src, bytes);
    if (st == HAE_OK && to == HAE_TIER_GPU) st = hae_backend_sync(p->be);
    if (st != HAE_OK) {
        give_back(p, k, id);
        return hae_error_wrap(st, "page pool: moving page %" PRId64 " of sequence %" PRId64 " to the %s tier", page,
                              seq, tier_names[to]);
    }
    give_back(p, k, from_id);
    k->owner[id] = (int32_t)seq;
    k->slot[id] = (int32_t)page;
    list[page] = id;
    if (to == HAE_TIER_GPU) p->st.h2d[k->c.kind] += bytes;
    else p->st.d2h[k->c.kind] += bytes;
    return HAE_OK;
}

int64_t hae_page_pool_seq_pages(const hae_page_pool *p, int64_t seq, int cls) {
    if (!p || seq < 0 || seq >= p->max_seqs || cls < 0 || cls >= p->n_cls) return 0;
    return p->cls[cls].n_pages[seq];
}

hae_status hae_page_pool_page(const hae_page_pool *p, int64_t seq, int cls, int64_t page, void **data,
                              hae_tier *tier) {
    HAE_TRY(check_seq(p, "page", seq, cls));
    const page_class *k = &p->cls[cls];
    if (page < 0 || page >= k->n_pages[seq])
        return hae_error(HAE_ERR_INVALID, "page pool page: page %" PRId64 " of sequence %" PRId64 ", which holds %"
                         PRId64, page, seq, k->n_pages[seq]);
    int32_t id = k->table[(size_t)seq * (size_t)k->max_pages + (size_t)page];
    if (data) *data = page_data(p, k, id);
    if (tier) *tier = tier_of(k, id);
    return HAE_OK;
}

int64_t hae_page_pool_free_pages(const hae_page_pool *p, int cls, hae_tier tier) {
    if (!p || cls < 0 || cls >= p->n_cls || (unsigned)tier >= HAE_TIER_COUNT) return 0;
    return p->cls[cls].n_free[tier];
}

void hae_page_pool_stats(const hae_page_pool *p, hae_mem_stats *out) {
    if (p) *out = p->st;
    else memset(out, 0, sizeof *out);
}

void hae_page_pool_fail_after(hae_page_pool *p, hae_tier tier, int64_t n) {
    if (p && (unsigned)tier < HAE_TIER_COUNT) p->fail_after[tier] = n > 0 ? n : 0;
}

/* ---------------------------------------------------------------- invariants */

static hae_status check_class(const hae_page_pool *p, int c, size_t in_use[HAE_TIER_COUNT], bool *seen) {
    const page_class *k = &p->cls[c];
    memset(seen, 0, (size_t)k->n_ids * sizeof *seen);
    for (int t = 0; t < HAE_TIER_COUNT; t++) {
        int32_t lo = t == HAE_TIER_GPU ? 0 : (int32_t)k->c.pages[HAE_TIER_GPU];
        if (k->n_free[t] < 0 || k->n_free[t] > k->c.pages[t])
            return hae_error(HAE_ERR_INVALID, "page pool: class %d, %s tier: %" PRId64 " free of %" PRId64, c,
                             tier_names[t], k->n_free[t], k->c.pages[t]);
        for (int64_t i = 0; i < k->n_free[t]; i++) {
            int32_t id = k->stack[t][i];
            if (id < lo || id >= lo + k->c.pages[t] || seen[id] || k->owner[id] != -1)
                return hae_error(HAE_ERR_INVALID, "page pool: class %d, %s tier: free page %d is out of its region, "
                                 "listed twice or owned", c, tier_names[t], (int)id);
            seen[id] = true;
        }
        in_use[t] += (size_t)(k->c.pages[t] - k->n_free[t]) * k->c.page_bytes;
    }
    int64_t owned = 0;
    for (int64_t s = 0; s < p->max_seqs; s++) {
        if (k->n_pages[s] < 0 || k->n_pages[s] > k->max_pages)
            return hae_error(HAE_ERR_INVALID, "page pool: class %d: sequence %" PRId64 " holds %" PRId64 " pages (at "
                             "most %" PRId64 ")", c, s, k->n_pages[s], k->max_pages);
        const int32_t *list = k->table + (size_t)s * (size_t)k->max_pages;
        for (int64_t i = 0; i < k->n_pages[s]; i++) {
            int32_t id = list[i];
            if (id < 0 || id >= k->n_ids || seen[id] || k->owner[id] != s || k->slot[id] != i)
                return hae_error(HAE_ERR_INVALID, "page pool: class %d: page %" PRId64 " of sequence %" PRId64
                                 " (id %d) is free, shared, or recorded as another's", c, i, s, (int)id);
            seen[id] = true;
            owned++;
        }
    }
    if (owned + k->n_free[HAE_TIER_GPU] + k->n_free[HAE_TIER_HOST] != k->n_ids)
        return hae_error(HAE_ERR_INVALID, "page pool: class %d: %" PRId64 " pages owned + %" PRId64 " free != %" PRId64,
                         c, owned, k->n_free[HAE_TIER_GPU] + k->n_free[HAE_TIER_HOST], k->n_ids);
    return HAE_OK;
}

hae_status hae_page_pool_validate(const hae_page_pool *p) {
    if (!p) return hae_error(HAE_ERR_INVALID, "page pool validate: NULL pool");
    int64_t most = 1;
    for (int c = 0; c < p->n_cls; c++) most = p->cls[c].n_ids > most ? p->cls[c].n_ids : most;
    bool *seen = malloc((size_t)most * sizeof *seen);
    if (!seen) return hae_error(HAE_ERR_OOM, "page pool validate: out of host memory");
    size_t kind_use[HAE_TIER_COUNT][HAE_MEM_KIND_COUNT] = {{0}};
    hae_status st = HAE_OK;
    for (int c = 0; c < p->n_cls && st == HAE_OK; c++) {
        size_t use[HAE_TIER_COUNT] = {0};
        st = check_class(p, c, use, seen);
        for (int t = 0; t < HAE_TIER_COUNT; t++) kind_use[t][p->cls[c].c.kind] += use[t];
    }
    free(seen);
    for (int t = 0; t < HAE_TIER_COUNT && st == HAE_OK; t++) {
        size_t total = 0;
        for (int m = 0; m < HAE_MEM_KIND_COUNT && st == HAE_OK; m++) {
            total += kind_use[t][m];
            if (kind_use[t][m] != p->st.resident[t][m] || p->st.peak[t][m] < kind_use[t][m])
                st = hae_error(HAE_ERR_INVALID, "page pool: %s tier, %s: %zu bytes in pages, %zu accounted (peak %zu)",
                               tier_names[t], kind_names[m], kind_use[t][m], p->st.resident[t][m], p->st.peak[t][m]);
        }
        if (st == HAE_OK && (total != p->st.resident_total[t] || total > p->st.budget[t]))
            st = hae_error(HAE_ERR_INVALID, "page pool: %s tier: %zu bytes in pages, %zu accounted, budget %zu",
                           tier_names[t], total, p->st.resident_total[t], p->st.budget[t]);
    }
    return st;
}

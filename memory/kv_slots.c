/* The GPU token-slot cache's bookkeeping (hae_kv_slots, DESIGN.md §2) on the CPU; the contract is hae.h's and
 * memory/kv_slots_cuda.cu follows the same steps, so both leave the same state. The LRU victims are found by a
 * radix select on the stamps (three passes of 11 bits), not a sort, so no scratch memory is needed. */
#include "internal.h"

#include <string.h>
#include <unistd.h>

size_t hae_host_available_bytes(void) {
    long page = sysconf(_SC_PAGESIZE), avail = sysconf(_SC_AVPHYS_PAGES);
    return (size_t)(avail > 0 ? avail : 0) * (size_t)(page > 0 ? page : 0);
}

#define I32(t, b) ((int32_t *)(t).data + (b) * (t).stride[0])

/* The m-th smallest stamp (1-based) among the slots not used at `step`, and how many of the slots with
 * exactly that stamp the victims take (the lowest-numbered ones). */
static int32_t lru_threshold(const int32_t *stamp, int64_t S, int32_t step, int64_t m, int64_t *take_equal) {
    uint32_t prefix = 0;
    int64_t need = m;
    for (int shift = 22; shift >= 0; shift -= 11) {
        int64_t hist[2048] = {0};
        for (int64_t s = 0; s < S; s++) {
            const uint32_t v = (uint32_t)stamp[s];
            if (stamp[s] != step && ((uint64_t)v >> (shift + 11)) == ((uint64_t)prefix >> (shift + 11)))
                hist[(v >> shift) & 2047]++;
        }
        int64_t bin = 0;
        while (need > hist[bin]) need -= hist[bin++];
        prefix |= (uint32_t)bin << shift;
    }
    *take_equal = need;
    return (int32_t)prefix;
}

static void lookup(const hae_kv_slots_args *a, int64_t b, int64_t *hits_out, int64_t *misses_out) {
    const int64_t cap = a->map.shape[1], S = a->owner.shape[1], k = a->idx.shape[1], n = a->src_rows.shape[1];
    const int32_t *idx = I32(a->idx, b);
    int32_t *map = I32(a->map, b), *owner = I32(a->owner, b), *stamp = I32(a->stamp, b), *out = I32(a->out, b);
    int32_t *src = I32(a->src_rows, b), *dst = I32(a->dst_rows, b);
    int64_t hits = 0, m = 0;
    for (int64_t i = 0; i < k; i++) {
        const int32_t t = idx[i];
        if (t < 0 || t >= cap) {
            out[i] = -1;
        } else if (map[t] > 0) {
            out[i] = map[t] - 1, stamp[map[t] - 1] = a->step, hits++;
        } else {
            out[i] = (int32_t)(-2 - m), src[m++] = t; /* the miss's rank until its slot is known */
        }
    }
    if (m) {
        int64_t take_equal = 0;
        const int32_t tau = lru_threshold(stamp, S, a->step, m, &take_equal);
        for (int64_t s = 0, j = 0; s < S && j < m; s++) {
            if (stamp[s] == a->step || stamp[s] > tau || (stamp[s] == tau && take_equal-- <= 0)) continue;
            if (owner[s] > 0) map[owner[s] - 1] = 0;
            owner[s] = src[j] + 1, map[src[j]] = (int32_t)s + 1, stamp[s] = a->step, dst[j++] = (int32_t)s;
        }
        for (int64_t i = 0; i < k; i++)
            if (out[i] <= -2) out[i] = dst[-(out[i] + 2)];
    }
    for (int64_t j = m; j < n; j++) src[j] = -1, dst[j] = 0;
    *hits_out += hits, *misses_out += m;
}

static void mirror(const hae_kv_slots_args *a, int64_t b) {
    int32_t *map = I32(a->map, b), *owner = I32(a->owner, b), *stamp = I32(a->stamp, b);
    int32_t *src = I32(a->src_rows, b), *dst = I32(a->dst_rows, b);
    const int64_t n = a->src_rows.shape[1];
    for (int64_t t = a->lo; t < a->hi; t++) {
        if (owner[t] > 0 && owner[t] - 1 != t) map[owner[t] - 1] = 0; /* a token the prefix did not hold */
        owner[t] = (int32_t)t + 1, map[t] = (int32_t)t + 1, stamp[t] = a->step;
        src[t - a->lo] = dst[t - a->lo] = (int32_t)t;
    }
    for (int64_t j = a->hi - a->lo; j < n; j++) src[j] = -1, dst[j] = 0;
}

hae_status hae_kv_slots_cpu(hae_backend *be, const hae_kv_slots_args *a) {
    (void)be;
    int64_t hits = 0, misses = 0;
    for (int64_t b = 0; b < a->map.shape[0]; b++) {
        if (a->idx.data) lookup(a, b, &hits, &misses);
        else mirror(a, b);
    }
    int64_t *counts = a->counts.data;
    counts[0] += hits, counts[a->counts.stride[0]] += misses;
    return HAE_OK;
}

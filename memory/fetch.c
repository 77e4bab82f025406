/* The token-granular fetch (hae_kv_gather, DESIGN.md §2) on the CPU; the contract is hae.h's, the CUDA
 * kernel and the batched copies are memory/fetch_cuda.cu. Every copied entry's rows are checked before
 * any byte moves, so a bad one leaves dst as it was. */
#include "internal.h"

#include <inttypes.h>
#include <string.h>

typedef struct {
    const hae_kv_gather_args *a;
    int64_t n;
    size_t row_bytes;
} gather_ctx;

static int32_t row_at(const hae_tensor *rows, int64_t b, int64_t i) {
    return ((const int32_t *)rows->data)[b * rows->stride[0] + i];
}

static void gather_entry(void *ctx, int64_t e) {
    const gather_ctx *g = ctx;
    const hae_kv_gather_args *a = g->a;
    const int64_t b = e / g->n, i = e % g->n;
    const int32_t s = row_at(&a->src_rows, b, i);
    if (s < 0) return;
    memcpy(hae_row_ptr(&a->dst, b, row_at(&a->dst_rows, b, i), 0), hae_row_ptr(&a->src, b, s, 0), g->row_bytes);
}

hae_status hae_kv_gather_cpu(hae_backend *be, const hae_kv_gather_args *a) {
    const int64_t B = a->src.shape[0], n = a->src_rows.shape[1], cap = a->src.shape[1], slots = a->dst.shape[1];
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < n; i++) {
            const int32_t s = row_at(&a->src_rows, b, i), d = row_at(&a->dst_rows, b, i);
            if (s < 0) continue;
            if (s >= cap || d < 0 || d >= slots)
                return hae_error(HAE_ERR_INVALID, "hae_kv_gather: entry [%" PRId64 ", %" PRId64 "]: src_rows %d "
                                 "(cap %" PRId64 ") and dst_rows %d (slots %" PRId64 ") must be in [-1, cap) and "
                                 "[0, slots)", b, i, s, cap, d, slots);
        }
    gather_ctx g = {a, n, (size_t)a->src.shape[2] * hae_dtype_size(a->src.dtype)};
    hae_parallel_for_sized(be->pool, B * n, (int64_t)g.row_bytes, gather_entry, &g);
    return HAE_OK;
}

#include "gpu_pair.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

hae_backend *g_cpu, *g_gpu;

void gpu_pair_setup(void) {
    g_cpu = tu_cpu();
    hae_status st = hae_backend_create(HAE_CUDA, 0, &g_gpu);
    cr_assert_eq(st, HAE_OK, "cuda backend: %s: %s", hae_status_name(st), hae_last_error());
}

void gpu_pair_teardown(void) {
    hae_backend_destroy(g_gpu);
    hae_backend_destroy(g_cpu);
    g_gpu = g_cpu = NULL;
}

void pb_set(pbuf *p, const void *host) {
    if (!p->bytes) return;
    memcpy(p->c, host, p->bytes);
    hae_status st = hae_backend_upload(g_gpu, p->g, host, p->bytes);
    cr_assert_eq(st, HAE_OK, "upload of %zu bytes: %s", p->bytes, hae_last_error());
}

pbuf pb_new(const void *host, size_t bytes) {
    pbuf p = {bytes, NULL, NULL};
    hae_status st = hae_backend_alloc(g_cpu, bytes, &p.c);
    cr_assert_eq(st, HAE_OK, "cpu alloc of %zu bytes: %s", bytes, hae_last_error());
    st = hae_backend_alloc(g_gpu, bytes, &p.g);
    cr_assert_eq(st, HAE_OK, "gpu alloc of %zu bytes: %s", bytes, hae_last_error());
    pb_set(&p, host);
    return p;
}

void pb_free(pbuf *p) {
    hae_backend_free(g_cpu, p->c);
    hae_backend_free(g_gpu, p->g);
    p->c = p->g = NULL;
}

void *host_poison(size_t bytes) {
    void *h = malloc(bytes ? bytes : 1);
    cr_assert(h != NULL);
    memset(h, 0xFF, bytes);
    return h;
}

pbuf pb_poison(size_t bytes) {
    void *h = host_poison(bytes);
    pbuf p = pb_new(h, bytes);
    free(h);
    return p;
}

void fill_rows(void *h, hae_dtype dt, int64_t B, int64_t T, int64_t inner, int64_t s0, int64_t s1, tu_rng *r,
               double lo, double hi) {
    const size_t es = hae_dtype_size(dt);
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++) tu_fill((char *)h + (size_t)(b * s0 + t * s1) * es, dt, inner, r, lo, hi);
}

hae_tensor tv(void *data, hae_dtype dt, hae_device dev, int ndim, const int64_t *shape, const int64_t *stride) {
    hae_tensor t = hae_tensor_make(data, dt, dev, ndim, shape);
    if (stride)
        for (int d = 0; d < ndim; d++) t.stride[d] = stride[d];
    return t;
}

void *pb_fetch(const pbuf *p) {
    void *h = malloc(p->bytes ? p->bytes : 1);
    cr_assert(h != NULL);
    hae_status st = hae_backend_download(g_gpu, h, p->g, p->bytes);
    cr_assert_eq(st, HAE_OK, "download of %zu bytes: %s", p->bytes, hae_last_error());
    return h;
}

bool gpu_ran(hae_status st, const char *side, const char *op, const char *ctx) {
    if (st == HAE_OK) return true;
    cr_expect(0, "%s [%s] on %s: %s: %s", op, ctx, side, hae_status_name(st), hae_last_error());
    return false;
}

bool gpu_done(const char *op, const char *ctx) {
    return gpu_ran(hae_backend_sync(g_gpu), "cuda (sync after the op)", op, ctx);
}

static const char *at(pb_where_fn where, const void *wctx, int64_t i, char *buf, size_t n) {
    if (!where || i < 0) return "";
    buf[0] = ' ';
    where(i, buf + 1, n - 1, wctx);
    return buf;
}

bool pb_compare_at(const char *op, const char *ctx, const pbuf *p, hae_dtype dt, double tol, pb_where_fn where,
                   const void *where_ctx) {
    const size_t es = hae_dtype_size(dt);
    const int64_t n = (int64_t)(p->bytes / es);
    unsigned char *g = pb_fetch(p);
    const unsigned char *c = p->c;
    const char *dn = hae_dtype_name(dt);
    char w[192];
    bool ok = true;
    if (tol < 0) {
        int64_t first = -1, count = 0;
        for (int64_t i = 0; i < n; i++)
            if (memcmp(c + (size_t)i * es, g + (size_t)i * es, es) != 0) {
                if (first < 0) first = i;
                count++;
            }
        if (count) {
            uint64_t cb = 0, gb = 0;
            memcpy(&cb, c + (size_t)first * es, es);
            memcpy(&gb, g + (size_t)first * es, es);
            cr_expect(0, "%s [%s]: %lld of %lld %s elements differ (bit-exact expected); first at element %lld%s: cpu "
                      "0x%llx (%.9g) gpu 0x%llx (%.9g)", op, ctx, (long long)count, (long long)n, dn, (long long)first,
                      at(where, where_ctx, first, w, sizeof w), (unsigned long long)cb, tu_get(c, dt, first),
                      (unsigned long long)gb, tu_get(g, dt, first));
            ok = false;
        }
        free(g);
        return ok;
    }
    int64_t bad = 0, first_bad = -1, imax = -1, finite = 0;
    double num = 0, den = 0, maxabs = 0;
    for (int64_t i = 0; i < n; i++) {
        const double cv = tu_get(c, dt, i), gv = tu_get(g, dt, i);
        const bool cn = isnan(cv), gn = isnan(gv), ci = isinf(cv), gi = isinf(gv);
        if (cn != gn || ci != gi || (ci && gi && (cv > 0) != (gv > 0))) {
            if (first_bad < 0) first_bad = i;
            bad++;
            continue;
        }
        if (cn || ci) continue;
        finite++;
        const double d = fabs(gv - cv);
        if (d > maxabs || imax < 0) maxabs = d, imax = i;
        num += d * d;
        den += cv * cv;
    }
    if (bad) {
        cr_expect(0, "%s [%s]: %lld of %lld %s elements are NaN/Inf on one side only; first at element %lld%s: cpu "
                     "%.9g gpu %.9g", op, ctx, (long long)bad, (long long)n, dn, (long long)first_bad,
                  at(where, where_ctx, first_bad, w, sizeof w), tu_get(c, dt, first_bad), tu_get(g, dt, first_bad));
        ok = false;
    }
    const double rel = den > 0 ? sqrt(num / den) : (num > 0 ? INFINITY : 0.0);
    if (!(rel <= tol)) {
        cr_expect(0, "%s [%s]: relative error %.3g > %.3g (%s, %lld finite elements); max abs error %.3g at element "
                     "%lld%s: cpu %.9g gpu %.9g", op, ctx, rel, tol, dn, (long long)finite, maxabs, (long long)imax,
                  at(where, where_ctx, imax, w, sizeof w), imax >= 0 ? tu_get(c, dt, imax) : 0.0,
                  imax >= 0 ? tu_get(g, dt, imax) : 0.0);
        ok = false;
    }
    free(g);
    return ok;
}

bool pb_compare(const char *op, const char *ctx, const pbuf *p, hae_dtype dt, double tol) {
    return pb_compare_at(op, ctx, p, dt, tol, NULL, NULL);
}

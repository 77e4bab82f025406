/* A fixed pool of worker threads for the CPU backend. The caller of hae_parallel_for works too,
 * so a pool of n threads has n-1 workers. Items are claimed one at a time from an atomic counter:
 * uneven items (attention rows of different lengths) balance themselves. */
#include "internal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

struct hae_threadpool {
    int n_threads;
    pthread_t *workers;
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    uint64_t generation; /* bumped for every job */
    int active;          /* workers still inside the current job */
    bool quit;
    hae_parallel_fn fn;
    void *ctx;
    int64_t n;
    atomic_llong next;
};

typedef struct {
    hae_threadpool *tp;
    int index;
} worker_arg;

static _Thread_local int tl_worker;

int hae_threadpool_worker(void) { return tl_worker; }

static void run_items(hae_threadpool *tp) {
    for (;;) {
        int64_t i = atomic_fetch_add(&tp->next, 1);
        if (i >= tp->n) break;
        tp->fn(tp->ctx, i);
    }
}

static void *worker_main(void *p) {
    worker_arg *arg = p;
    hae_threadpool *tp = arg->tp;
    tl_worker = arg->index;
    free(arg);
    uint64_t seen = 0;
    pthread_mutex_lock(&tp->mu);
    for (;;) {
        while (!tp->quit && tp->generation == seen) pthread_cond_wait(&tp->wake, &tp->mu);
        if (tp->quit) break;
        seen = tp->generation;
        pthread_mutex_unlock(&tp->mu);
        run_items(tp);
        pthread_mutex_lock(&tp->mu);
        if (--tp->active == 0) pthread_cond_signal(&tp->done);
    }
    pthread_mutex_unlock(&tp->mu);
    return NULL;
}

hae_status hae_threadpool_create(int n_threads, hae_threadpool **out) {
    *out = NULL;
    if (n_threads < 1) return hae_error(HAE_ERR_INVALID, "thread pool: %d threads (need >= 1)", n_threads);
    hae_threadpool *tp = calloc(1, sizeof *tp);
    if (!tp) return hae_error(HAE_ERR_OOM, "thread pool: out of host memory");
    tp->n_threads = n_threads;
    pthread_mutex_init(&tp->mu, NULL);
    pthread_cond_init(&tp->wake, NULL);
    pthread_cond_init(&tp->done, NULL);
    tp->workers = calloc((size_t)n_threads, sizeof(pthread_t));
    if (!tp->workers) {
        hae_threadpool_destroy(tp);
        return hae_error(HAE_ERR_OOM, "thread pool: out of host memory");
    }
    for (int i = 1; i < n_threads; i++) {
        worker_arg *arg = malloc(sizeof *arg);
        if (!arg) {
            tp->n_threads = i;
            hae_threadpool_destroy(tp);
            return hae_error(HAE_ERR_OOM, "thread pool: out of host memory");
        }
        arg->tp = tp;
        arg->index = i;
        if (pthread_create(&tp->workers[i], NULL, worker_main, arg) != 0) {
            free(arg);
            tp->n_threads = i;
            hae_threadpool_destroy(tp);
            return hae_error(HAE_ERR_OOM, "thread pool: could not start thread %d of %d", i, n_threads);
        }
    }
    *out = tp;
    return HAE_OK;
}

void hae_threadpool_destroy(hae_threadpool *tp) {
    if (!tp) return;
    pthread_mutex_lock(&tp->mu);
    tp->quit = true;
    pthread_cond_broadcast(&tp->wake);
    pthread_mutex_unlock(&tp->mu);
    for (int i = 1; i < tp->n_threads; i++) pthread_join(tp->workers[i], NULL);
    pthread_mutex_destroy(&tp->mu);
    pthread_cond_destroy(&tp->wake);
    pthread_cond_destroy(&tp->done);
    free(tp->workers);
    free(tp);
}

int hae_threadpool_size(const hae_threadpool *tp) { return tp->n_threads; }

void hae_parallel_for(hae_threadpool *tp, int64_t n, hae_parallel_fn fn, void *ctx) {
    if (n <= 0) return;
    if (tp->n_threads == 1 || n == 1) {
        for (int64_t i = 0; i < n; i++) fn(ctx, i);
        return;
    }
    pthread_mutex_lock(&tp->mu);
    tp->fn = fn;
    tp->ctx = ctx;
    tp->n = n;
    atomic_store(&tp->next, 0);
    tp->active = tp->n_threads - 1;
    tp->generation++;
    pthread_cond_broadcast(&tp->wake);
    pthread_mutex_unlock(&tp->mu);
    run_items(tp);
    pthread_mutex_lock(&tp->mu);
    while (tp->active > 0) pthread_cond_wait(&tp->done, &tp->mu);
    pthread_mutex_unlock(&tp->mu);
}

/* Waking the workers and waiting for them costs tens of microseconds; jobs smaller than this many
 * operations run faster on the caller alone (decode-sized linear-attention steps, norms of a row). */
#define HAE_INLINE_WORK (1 << 17)

void hae_parallel_for_sized(hae_threadpool *tp, int64_t n, int64_t item_work, hae_parallel_fn fn, void *ctx) {
    if (n > 0 && item_work > 0 && n * item_work < HAE_INLINE_WORK) {
        for (int64_t i = 0; i < n; i++) fn(ctx, i);
        return;
    }
    hae_parallel_for(tp, n, fn, ctx);
}

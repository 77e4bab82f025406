/* Status codes and the per-thread last-error message. */
#include "hae.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HAE_MSG_MAX 2048
static _Thread_local char hae_msg[HAE_MSG_MAX];

const char *hae_status_name(hae_status st) {
    switch (st) {
    case HAE_OK: return "ok";
    case HAE_ERR_INVALID: return "invalid";
    case HAE_ERR_OOM: return "out of memory";
    case HAE_ERR_UNSUPPORTED: return "unsupported";
    case HAE_ERR_IO: return "io";
    case HAE_ERR_FORMAT: return "format";
    case HAE_ERR_CUDA: return "cuda";
    }
    return "unknown";
}

const char *hae_last_error(void) { return hae_msg; }
void hae_clear_error(void) { hae_msg[0] = '\0'; }

hae_status hae_error(hae_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(hae_msg, sizeof hae_msg, fmt, ap);
    va_end(ap);
    return st;
}

hae_status hae_error_wrap(hae_status st, const char *fmt, ...) {
    char prefix[HAE_MSG_MAX], old[HAE_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, hae_msg, sizeof old);
    size_t n = strnlen(prefix, sizeof prefix - 1);
    memcpy(hae_msg, prefix, n);
    if (n + 2 < sizeof hae_msg) {
        memcpy(hae_msg + n, ": ", 2);
        n += 2;
    }
    size_t m = strnlen(old, sizeof hae_msg - 1 - n);
    memcpy(hae_msg + n, old, m);
    hae_msg[n + m] = '\0';
    return st;
}

void hae_assert_fail(const char *expr, const char *file, int line) {
    fprintf(stderr, "hae: internal error: assertion `%s` failed at %s:%d\n", expr, file, line);
    abort();
}

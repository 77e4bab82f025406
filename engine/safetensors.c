/* safetensors reader and writer (https://github.com/huggingface/safetensors).
 *
 * Layout: u64 little-endian N, N bytes of UTF-8 JSON, then the data section; data_offsets are
 * relative to the data section. The reader checks everything hae_st_open promises before it returns,
 * on input that may be hostile (it is fuzzed). Hence a small JSON parser that follows the header's
 * schema instead of building a tree: it never recurses, never reads past the header, and stores
 * decoded strings in one arena of N + 1 bytes (a decoded string is never longer than its quoted
 * form). Like huggingface/safetensors, the tensors must tile the data section exactly: no overlaps,
 * no holes, no trailing bytes. */
#include "hae.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_HEADER_MAX 100000000u /* huggingface/safetensors' MAX_HEADER_SIZE */
#define ST_NAME_MAX 255

/* The dtypes hae maps (dt >= 0), then valid safetensors dtypes it does not (dt < 0). */
static const struct {
    const char *name;
    int dt;
} st_dtypes[] = {
    {"F32", HAE_F32}, {"BF16", HAE_BF16}, {"F16", HAE_F16}, {"F8_E4M3", HAE_FP8_E4M3},
    {"I32", HAE_I32}, {"I64", HAE_I64},   {"F64", -1},      {"U8", -1},
    {"I8", -1},       {"I16", -1},        {"U16", -1},      {"U32", -1},
    {"U64", -1},      {"BOOL", -1},       {"F8_E5M2", -1},  {"F8_E8M0", -1},
    {"F4", -1},       {"F6_E2M3", -1},    {"F6_E3M2", -1},  {"C64", -1},
};

static const char *st_dtype_str(hae_dtype dt) {
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (st_dtypes[i].dt == (int)dt) return st_dtypes[i].name;
    return NULL;
}

typedef struct st_meta {
    const char *key, *value;
} st_meta;

struct hae_st_file {
    const uint8_t *base; /* the whole file: a mapping, or a malloc'd copy */
    size_t size;
    bool mapped;
    hae_st_tensor *tensors; /* file order */
    int n, cap;
    const hae_st_tensor **by_name; /* sorted, for hae_st_find and the duplicate check */
    st_meta *meta;                 /* sorted by key */
    int n_meta, meta_cap;
    char *strings; /* decoded JSON strings; meta points here */
};

/* ---------------------------------------------------------------- shared helpers */

/* Length of the valid UTF-8 sequence at s (n bytes available), 0 if invalid (RFC 3629: no
 * overlongs, no surrogates, nothing above U+10FFFF). */
static size_t utf8_seq(const uint8_t *s, size_t n) {
    uint8_t c = s[0], lo = 0x80, hi = 0xBF;
    size_t len;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c >= 0xE0 && c <= 0xEF)
        len = 3, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
    else if (c >= 0xF0 && c <= 0xF4)
        len = 4, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    else
        return 0;
    if (n < len || s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    return len;
}

static bool utf8_valid(const char *s) {
    size_t n = strlen(s);
    for (size_t i = 0, m; i < n; i += m)
        if (!(m = utf8_seq((const uint8_t *)s + i, n - i))) return false;
    return true;
}

/* A name made safe for a one-line message: control bytes become '?', long names are cut. */
#define SHOW_MAX 100
static const char *show(const char *s, char buf[SHOW_MAX]) {
    size_t i = 0;
    for (; s[i] && i < SHOW_MAX - 4; i++) buf[i] = (uint8_t)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
    if (s[i]) memcpy(buf + i, "...", 3), i += 3;
    buf[i] = '\0';
    return buf;
}

static const char *shape_str(const int64_t *shape, int ndim, char *buf, size_t n) {
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int d = 0; d < ndim && k < n; d++)
        k += (size_t)snprintf(buf + k, n - k, "%s%" PRId64, d ? ", " : "", shape[d]);
    if (k < n) snprintf(buf + k, n - k, "]");
    return buf;
}

/* numel and byte count of a shape; false on overflow past INT64_MAX. */
static bool shape_bytes(const int64_t *shape, int ndim, hae_dtype dt, uint64_t *bytes) {
    uint64_t numel = 1;
    for (int d = 0; d < ndim; d++)
        if (shape[d] == 0) return *bytes = 0, true; /* zero-size: no overflow whatever the other dims */
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0 || numel > (uint64_t)INT64_MAX / (uint64_t)shape[d]) return false;
        numel *= (uint64_t)shape[d];
    }
    if (numel > (uint64_t)INT64_MAX / hae_dtype_size(dt)) return false;
    *bytes = numel * hae_dtype_size(dt);
    return true;
}

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp((*(const hae_st_tensor *const *)a)->name, (*(const hae_st_tensor *const *)b)->name);
}

static int cmp_meta_key(const void *a, const void *b) {
    return strcmp(((const st_meta *)a)->key, ((const st_meta *)b)->key);
}

/* ---------------------------------------------------------------- header parser */

typedef struct parser {
    const char *path;
    const uint8_t *s; /* the header JSON */
    size_t n, pos;
    uint64_t data_len;
    const uint8_t *data;
    const char *tname; /* tensor being parsed, for messages */
    char *out;         /* string arena (f->strings) */
    size_t out_used;
    hae_st_file *f;
    bool seen_meta;
} parser;

static int peek(const parser *p) { return p->pos < p->n ? p->s[p->pos] : -1; }
static bool is_digit(int c) { return c >= '0' && c <= '9'; }

static void skip_ws(parser *p) {
    while (p->pos < p->n &&
           (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' || p->s[p->pos] == '\n' || p->s[p->pos] == '\r'))
        p->pos++;
}

static const char *found(const parser *p, char buf[24]) {
    int c = peek(p);
    if (c < 0) return "the end of the header";
    if (c >= 0x20 && c < 0x7f)
        snprintf(buf, 24, "'%c'", c);
    else
        snprintf(buf, 24, "byte 0x%02x", (unsigned)c);
    return buf;
}

/* JSON syntax errors: where in the header, and in which tensor. */
__attribute__((format(printf, 2, 3))) static hae_status syntax(parser *p, const char *fmt, ...) {
    char msg[512], nb[SHOW_MAX], where[SHOW_MAX + 16] = "";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (p->tname) snprintf(where, sizeof where, " (tensor '%s')", show(p->tname, nb));
    return hae_error(HAE_ERR_FORMAT, "%s: bad JSON at header byte %zu%s: %s", p->path, p->pos, where, msg);
}

/* Errors about one tensor's entry. */
__attribute__((format(printf, 3, 4))) static hae_status fail(parser *p, hae_status st, const char *fmt, ...) {
    char msg[768], nb[SHOW_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (!p->tname) return hae_error(st, "%s: %s", p->path, msg);
    return hae_error(st, "%s: tensor '%s': %s", p->path, show(p->tname, nb), msg);
}

static hae_status expect(parser *p, char c) {
    char b[24];
    skip_ws(p);
    if (peek(p) != c) return syntax(p, "expected '%c' but found %s", c, found(p, b));
    p->pos++;
    return HAE_OK;
}

static hae_status parse_hex4(parser *p, uint32_t *cp) {
    *cp = 0;
    for (int i = 0; i < 4; i++, p->pos++) {
        int c = peek(p), v = is_digit(c)                              ? c - '0'
                             : (c | 0x20) >= 'a' && (c | 0x20) <= 'f' ? (c | 0x20) - 'a' + 10
                                                                      : -1;
        if (c < 0 || v < 0) return syntax(p, "\\u needs 4 hex digits");
        *cp = *cp << 4 | (uint32_t)v;
    }
    return HAE_OK;
}

static size_t utf8_put(uint32_t cp, char *d) {
    if (cp < 0x80) return d[0] = (char)cp, 1;
    if (cp < 0x800) return d[0] = (char)(0xC0 | cp >> 6), d[1] = (char)(0x80 | (cp & 0x3F)), 2;
    if (cp < 0x10000)
        return d[0] = (char)(0xE0 | cp >> 12), d[1] = (char)(0x80 | (cp >> 6 & 0x3F)),
               d[2] = (char)(0x80 | (cp & 0x3F)), 3;
    d[0] = (char)(0xF0 | cp >> 18), d[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    d[2] = (char)(0x80 | (cp >> 6 & 0x3F)), d[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* A JSON string, decoded into the arena and NUL-terminated (so \u0000 is refused). */
static hae_status parse_string(parser *p, const char **out, size_t *len) {
    char b[24];
    skip_ws(p);
    if (peek(p) != '"') return syntax(p, "expected a string but found %s", found(p, b));
    char *d = p->out + p->out_used;
    size_t k = 0;
    for (p->pos++;;) {
        int c = peek(p);
        if (c < 0) return syntax(p, "unterminated string");
        if (c == '"') break;
        if (c < 0x20) return syntax(p, "control byte 0x%02x inside a string (must be escaped)", (unsigned)c);
        if (c != '\\') {
            size_t m = utf8_seq(p->s + p->pos, p->n - p->pos);
            if (!m) return syntax(p, "invalid UTF-8 in a string");
            memcpy(d + k, p->s + p->pos, m);
            k += m, p->pos += m;
            continue;
        }
        p->pos++;
        static const char esc_in[] = "\"\\/bfnrt", esc_out[] = "\"\\/\b\f\n\r\t";
        int e = peek(p);
        const char *hit = e > 0 ? strchr(esc_in, e) : NULL;
        if (hit) {
            d[k++] = esc_out[hit - esc_in], p->pos++;
            continue;
        }
        if (e != 'u') return syntax(p, "invalid escape: backslash then %s", found(p, b));
        p->pos++;
        uint32_t cp, lo;
        HAE_TRY(parse_hex4(p, &cp));
        if (cp >= 0xD800 && cp <= 0xDBFF) { /* a high surrogate needs its low half */
            if (p->n - p->pos < 2 || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u')
                return syntax(p, "\\u%04X is a lone surrogate", cp);
            p->pos += 2;
            HAE_TRY(parse_hex4(p, &lo));
            if (lo < 0xDC00 || lo > 0xDFFF) return syntax(p, "\\u%04X is not a low surrogate", lo);
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            return syntax(p, "\\u%04X is a lone surrogate", cp);
        } else if (cp == 0) {
            return syntax(p, "\\u0000 is not allowed in names and metadata");
        }
        k += utf8_put(cp, d + k);
    }
    p->pos++;
    d[k] = '\0';
    p->out_used += k + 1;
    *out = d;
    if (len) *len = k;
    return HAE_OK;
}

/* A JSON number that must be a non-negative integer below 2^63; `what` names it. */
static hae_status parse_count(parser *p, const char *what, int64_t *out) {
    char b[24];
    skip_ws(p);
    size_t start = p->pos;
    bool neg = peek(p) == '-', frac = false, big = false;
    uint64_t v = 0;
    if (neg) p->pos++;
    if (!is_digit(peek(p))) return syntax(p, "expected a number in %s but found %s", what, found(p, b));
    if (peek(p) == '0') {
        if (p->pos++, is_digit(peek(p))) return syntax(p, "numbers cannot have leading zeros");
    }
    for (int c; is_digit(c = peek(p)); p->pos++) {
        if (v > ((uint64_t)INT64_MAX - (uint64_t)(c - '0')) / 10)
            big = true;
        else
            v = v * 10 + (uint64_t)(c - '0');
    }
    if (peek(p) == '.') {
        if (p->pos++, !is_digit(peek(p))) return syntax(p, "expected a digit after '.'");
        while (is_digit(peek(p))) p->pos++;
        frac = true;
    }
    if (peek(p) == 'e' || peek(p) == 'E') {
        p->pos++;
        if (peek(p) == '+' || peek(p) == '-') p->pos++;
        if (!is_digit(peek(p))) return syntax(p, "expected a digit in the exponent");
        while (is_digit(peek(p))) p->pos++;
        frac = true;
    }
    int tl = p->pos - start > 40 ? 40 : (int)(p->pos - start);
    if (neg || frac || big)
        return fail(p, HAE_ERR_FORMAT, "%s is %.*s%s, expected a non-negative integer%s", what, tl,
                    (const char *)p->s + start, tl == 40 ? "..." : "", big ? " below 2^63" : "");
    *out = (int64_t)v;
    return HAE_OK;
}

/* [a, b, ...] of non-negative integers: stores the first `max`, counts all. */
static hae_status parse_ints(parser *p, const char *field, int64_t *v, int max, int *count) {
    char b[24], what[48];
    skip_ws(p);
    if (peek(p) != '[') return fail(p, HAE_ERR_FORMAT, "%s must be an array of integers, found %s", field, found(p, b));
    p->pos++;
    *count = 0;
    skip_ws(p);
    if (peek(p) == ']') return p->pos++, HAE_OK;
    for (;;) {
        int64_t x = 0;
        snprintf(what, sizeof what, "%s[%d]", field, *count);
        HAE_TRY(parse_count(p, what, &x));
        if (*count < max) v[*count] = x;
        (*count)++;
        skip_ws(p);
        if (peek(p) == ']') return p->pos++, HAE_OK;
        if (peek(p) != ',') return syntax(p, "expected ',' or ']' in %s but found %s", field, found(p, b));
        p->pos++;
    }
}

static hae_status push_tensor(parser *p, const hae_st_tensor *t) {
    hae_st_file *f = p->f;
    if (f->n == f->cap) {
        int cap = f->cap ? 2 * f->cap : 16;
        hae_st_tensor *nt = realloc(f->tensors, (size_t)cap * sizeof *nt);
        if (!nt) return hae_error(HAE_ERR_OOM, "%s: out of memory for %d tensors", p->path, cap);
        f->tensors = nt, f->cap = cap;
    }
    f->tensors[f->n++] = *t;
    return HAE_OK;
}

/* {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, exactly these three fields. */
static hae_status parse_entry(parser *p, const char *name, size_t name_len) {
    char b[24], nb[SHOW_MAX], sb[128];
    const char *dts = NULL;
    int64_t shape[HAE_MAX_DIMS], off[2];
    int ndim = -1, noff = -1;
    if (name_len > ST_NAME_MAX)
        return hae_error(HAE_ERR_FORMAT, "%s: tensor name '%s' is %zu bytes, more than the %d allowed", p->path,
                         show(name, nb), name_len, ST_NAME_MAX);
    p->tname = name;
    skip_ws(p);
    if (peek(p) != '{')
        return fail(p, HAE_ERR_FORMAT, "expected an object with dtype, shape and data_offsets, found %s", found(p, b));
    p->pos++;
    skip_ws(p);
    if (peek(p) == '}')
        p->pos++;
    else
        for (;;) {
            const char *key;
            HAE_TRY(parse_string(p, &key, NULL));
            HAE_TRY(expect(p, ':'));
            bool dup;
            if (!strcmp(key, "dtype")) {
                if (!(dup = dts != NULL)) {
                    skip_ws(p);
                    if (peek(p) != '"') return fail(p, HAE_ERR_FORMAT, "dtype must be a string, found %s", found(p, b));
                    HAE_TRY(parse_string(p, &dts, NULL));
                }
            } else if (!strcmp(key, "shape")) {
                if (!(dup = ndim >= 0)) HAE_TRY(parse_ints(p, "shape", shape, HAE_MAX_DIMS, &ndim));
            } else if (!strcmp(key, "data_offsets")) {
                if (!(dup = noff >= 0)) HAE_TRY(parse_ints(p, "data_offsets", off, 2, &noff));
            } else {
                return fail(p, HAE_ERR_FORMAT, "unknown field '%s' (expected dtype, shape, data_offsets)",
                            show(key, nb));
            }
            if (dup) return fail(p, HAE_ERR_FORMAT, "field '%s' appears twice", show(key, nb));
            skip_ws(p);
            if (peek(p) == '}') {
                p->pos++;
                break;
            }
            if (peek(p) != ',') return syntax(p, "expected ',' or '}' but found %s", found(p, b));
            p->pos++;
        }
    if (!dts || ndim < 0 || noff < 0)
        return fail(p, HAE_ERR_FORMAT, "missing field '%s'", !dts ? "dtype" : ndim < 0 ? "shape" : "data_offsets");

    hae_st_tensor t = {0};
    memcpy(t.name, name, name_len + 1);
    int dt = -2;
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0] && dt == -2; i++)
        if (!strcmp(dts, st_dtypes[i].name)) dt = st_dtypes[i].dt;
    if (dt == -2) return fail(p, HAE_ERR_FORMAT, "unknown dtype '%s'", show(dts, nb));
    if (dt < 0)
        return fail(p, HAE_ERR_UNSUPPORTED, "dtype %s is not supported (hae reads F32, BF16, F16, F8_E4M3, I32, I64)",
                    dts);
    t.dtype = (hae_dtype)dt;
    if (ndim > HAE_MAX_DIMS)
        return fail(p, HAE_ERR_UNSUPPORTED, "shape has %d dims, hae supports at most %d", ndim, HAE_MAX_DIMS);
    t.ndim = ndim;
    memcpy(t.shape, shape, (size_t)ndim * sizeof shape[0]);
    shape_str(shape, ndim, sb, sizeof sb);
    if (noff != 2) return fail(p, HAE_ERR_FORMAT, "data_offsets has %d values, expected 2 [begin, end]", noff);
    uint64_t begin = (uint64_t)off[0], end = (uint64_t)off[1], need;
    if (begin > end)
        return fail(p, HAE_ERR_FORMAT, "data_offsets [%" PRIu64 ", %" PRIu64 "] begin after they end", begin, end);
    if (!shape_bytes(shape, ndim, t.dtype, &need))
        return fail(p, HAE_ERR_FORMAT, "shape %s %s overflows: more than 2^63 bytes", sb, hae_dtype_name(t.dtype));
    if (end - begin != need)
        return fail(p, HAE_ERR_FORMAT, "shape %s %s needs %" PRIu64 " bytes but data_offsets give %" PRIu64, sb,
                    hae_dtype_name(t.dtype), need, end - begin);
    if (end > p->data_len)
        return fail(p, HAE_ERR_FORMAT,
                    "data_offsets [%" PRIu64 ", %" PRIu64 "] go past the end of the data section (%" PRIu64
                    " bytes; truncated file?)",
                    begin, end, p->data_len);
    t.data = p->data + begin;
    t.nbytes = (size_t)need;
    p->tname = NULL;
    return push_tensor(p, &t);
}

/* "__metadata__": {"key": "value", ...}, string values only. */
static hae_status parse_metadata(parser *p) {
    char b[24], nb[SHOW_MAX];
    hae_st_file *f = p->f;
    if (p->seen_meta) return fail(p, HAE_ERR_FORMAT, "__metadata__ appears twice");
    p->seen_meta = true;
    skip_ws(p);
    if (peek(p) != '{')
        return fail(p, HAE_ERR_FORMAT, "__metadata__ must be an object of strings, found %s", found(p, b));
    p->pos++;
    skip_ws(p);
    if (peek(p) == '}') return p->pos++, HAE_OK;
    for (;;) {
        st_meta m;
        HAE_TRY(parse_string(p, &m.key, NULL));
        HAE_TRY(expect(p, ':'));
        skip_ws(p);
        if (peek(p) != '"')
            return fail(p, HAE_ERR_FORMAT, "__metadata__ value of '%s' must be a string, found %s", show(m.key, nb),
                        found(p, b));
        HAE_TRY(parse_string(p, &m.value, NULL));
        if (f->n_meta == f->meta_cap) {
            int cap = f->meta_cap ? 2 * f->meta_cap : 8;
            st_meta *nm = realloc(f->meta, (size_t)cap * sizeof *nm);
            if (!nm) return hae_error(HAE_ERR_OOM, "%s: out of memory for %d metadata entries", p->path, cap);
            f->meta = nm, f->meta_cap = cap;
        }
        f->meta[f->n_meta++] = m;
        skip_ws(p);
        if (peek(p) == '}') return p->pos++, HAE_OK;
        if (peek(p) != ',') return syntax(p, "expected ',' or '}' in __metadata__ but found %s", found(p, b));
        p->pos++;
    }
}

static hae_status parse_header(parser *p) {
    char b[24];
    skip_ws(p);
    if (peek(p) != '{') return fail(p, HAE_ERR_FORMAT, "header is not a JSON object (it starts with %s)", found(p, b));
    p->pos++;
    skip_ws(p);
    if (peek(p) == '}')
        p->pos++;
    else
        for (;;) {
            const char *key;
            size_t len;
            HAE_TRY(parse_string(p, &key, &len));
            HAE_TRY(expect(p, ':'));
            HAE_TRY(!strcmp(key, "__metadata__") ? parse_metadata(p) : parse_entry(p, key, len));
            skip_ws(p);
            if (peek(p) == '}') {
                p->pos++;
                break;
            }
            if (peek(p) != ',') return syntax(p, "expected ',' or '}' after a header entry but found %s", found(p, b));
            p->pos++;
        }
    skip_ws(p);
    if (p->pos < p->n) return syntax(p, "unexpected %s after the JSON object", found(p, b));
    return HAE_OK;
}

static int cmp_tensor_range(const void *a, const void *b) {
    const hae_st_tensor *x = *(const hae_st_tensor *const *)a, *y = *(const hae_st_tensor *const *)b;
    uintptr_t xa = (uintptr_t)x->data, ya = (uintptr_t)y->data;
    if (xa != ya) return xa < ya ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

/* Names unique, metadata keys unique, and the tensors tile the data section. */
static hae_status check_all(parser *p) {
    hae_st_file *f = p->f;
    char nb[SHOW_MAX], nb2[SHOW_MAX];
    size_t n = (size_t)f->n;
    if (n && !(f->by_name = malloc(n * sizeof *f->by_name)))
        return hae_error(HAE_ERR_OOM, "%s: out of memory for %zu tensors", p->path, n);
    for (size_t i = 0; i < n; i++) f->by_name[i] = &f->tensors[i];
    if (n) qsort(f->by_name, n, sizeof *f->by_name, cmp_tensor_name);
    for (size_t i = 1; i < n; i++)
        if (!strcmp(f->by_name[i]->name, f->by_name[i - 1]->name))
            return hae_error(HAE_ERR_FORMAT, "%s: duplicate tensor name '%s'", p->path, show(f->by_name[i]->name, nb));
    if (f->n_meta) qsort(f->meta, (size_t)f->n_meta, sizeof *f->meta, cmp_meta_key);
    for (int i = 1; i < f->n_meta; i++)
        if (!strcmp(f->meta[i].key, f->meta[i - 1].key))
            return hae_error(HAE_ERR_FORMAT, "%s: duplicate __metadata__ key '%s'", p->path, show(f->meta[i].key, nb));

    const hae_st_tensor **by_off = n ? malloc(n * sizeof *by_off) : NULL;
    if (n && !by_off) return hae_error(HAE_ERR_OOM, "%s: out of memory for %zu tensors", p->path, n);
    if (n) {
        memcpy(by_off, f->by_name, n * sizeof *by_off);
        qsort(by_off, n, sizeof *by_off, cmp_tensor_range);
    }
    hae_status st = HAE_OK;
    uint64_t at = 0;
    for (size_t i = 0; i < n && st == HAE_OK; i++) {
        uint64_t b = (uint64_t)((const uint8_t *)by_off[i]->data - p->data), e = b + by_off[i]->nbytes;
        if (b < at) {
            uint64_t pb = (uint64_t)((const uint8_t *)by_off[i - 1]->data - p->data);
            st = hae_error(HAE_ERR_FORMAT,
                           "%s: tensors '%s' [%" PRIu64 ", %" PRIu64 ") and '%s' [%" PRIu64 ", %" PRIu64
                           ") overlap in the data section",
                           p->path, show(by_off[i - 1]->name, nb), pb, at, show(by_off[i]->name, nb2), b, e);
        } else if (b > at) {
            st = hae_error(HAE_ERR_FORMAT,
                           "%s: bytes [%" PRIu64 ", %" PRIu64 ") of the data section belong to no tensor", p->path, at,
                           b);
        }
        at = e;
    }
    free(by_off);
    if (st == HAE_OK && at != p->data_len)
        st =
            hae_error(HAE_ERR_FORMAT,
                      "%s: data section has %" PRIu64 " bytes but the tensors end at byte %" PRIu64 " (trailing bytes)",
                      p->path, p->data_len, at);
    return st;
}

/* ---------------------------------------------------------------- reader */

static hae_status load_file(const char *path, hae_st_file *f) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return hae_error(HAE_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    hae_status st = HAE_OK;
    if (fstat(fd, &sb) != 0)
        st = hae_error(HAE_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    else if (!S_ISREG(sb.st_mode))
        st = hae_error(HAE_ERR_IO, "%s: not a regular file", path);
    else if ((f->size = (size_t)sb.st_size) < 8)
        st = hae_error(HAE_ERR_FORMAT, "%s: file is %zu bytes, shorter than the 8-byte header length", path, f->size);
    if (st != HAE_OK) return close(fd), st;

    void *m = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m != MAP_FAILED) {
        f->base = m, f->mapped = true;
    } else { /* e.g. a file system without mmap: read it */
        uint8_t *buf = malloc(f->size);
        size_t got = 0;
        if (!buf) st = hae_error(HAE_ERR_OOM, "%s: out of memory reading %zu bytes", path, f->size);
        while (st == HAE_OK && got < f->size) {
            ssize_t r = read(fd, buf + got, f->size - got);
            if (r < 0 && errno == EINTR) continue;
            if (r < 0)
                st = hae_error(HAE_ERR_IO, "%s: read failed: %s", path, strerror(errno));
            else if (r == 0)
                st = hae_error(HAE_ERR_IO, "%s: file shrank to %zu bytes while reading", path, got);
            else
                got += (size_t)r;
        }
        if (st != HAE_OK)
            free(buf);
        else
            f->base = buf;
    }
    close(fd);
    return st;
}

static hae_status parse_file(const char *path, hae_st_file *f) {
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | f->base[i];
    if (hlen == 0) return hae_error(HAE_ERR_FORMAT, "%s: header length is 0", path);
    if (hlen > f->size - 8)
        return hae_error(HAE_ERR_FORMAT,
                         "%s: header length %" PRIu64 " but only %zu bytes follow (truncated or not safetensors)", path,
                         hlen, f->size - 8);
    if (hlen > ST_HEADER_MAX)
        return hae_error(HAE_ERR_FORMAT, "%s: header length %" PRIu64 " exceeds the 100 MB limit", path, hlen);
    if (!(f->strings = malloc(hlen + 1)))
        return hae_error(HAE_ERR_OOM, "%s: out of memory for a %" PRIu64 "-byte header", path, hlen);
    parser p = {.path = path,
                .s = f->base + 8,
                .n = hlen,
                .data_len = f->size - 8 - hlen,
                .data = f->base + 8 + hlen,
                .out = f->strings,
                .f = f};
    HAE_TRY(parse_header(&p));
    return check_all(&p);
}

hae_status hae_st_open(const char *path, hae_st_file **out) {
    if (!out || !path) return hae_error(HAE_ERR_INVALID, "hae_st_open: NULL %s", out ? "path" : "out");
    *out = NULL;
    hae_st_file *f = calloc(1, sizeof *f);
    if (!f) return hae_error(HAE_ERR_OOM, "%s: out of memory", path);
    hae_status st = load_file(path, f);
    if (st == HAE_OK) st = parse_file(path, f);
    if (st != HAE_OK) return hae_st_close(f), st;
    *out = f;
    return HAE_OK;
}

void hae_st_close(hae_st_file *f) {
    if (!f) return;
    if (f->mapped)
        munmap((void *)f->base, f->size);
    else
        free((void *)f->base);
    free(f->tensors);
    free(f->by_name);
    free(f->meta);
    free(f->strings);
    free(f);
}

int hae_st_count(const hae_st_file *f) { return f ? f->n : 0; }

const hae_st_tensor *hae_st_get(const hae_st_file *f, int i) { return f && i >= 0 && i < f->n ? &f->tensors[i] : NULL; }

const hae_st_tensor *hae_st_find(const hae_st_file *f, const char *name) {
    if (!f || !name || !f->n) return NULL;
    size_t len = strlen(name);
    hae_st_tensor key;
    const hae_st_tensor *kp = &key;
    if (len > ST_NAME_MAX) return NULL;
    memcpy(key.name, name, len + 1);
    const hae_st_tensor **hit = bsearch(&kp, f->by_name, (size_t)f->n, sizeof *f->by_name, cmp_tensor_name);
    return hit ? *hit : NULL;
}

const char *hae_st_metadata(const hae_st_file *f, const char *key) {
    if (!f || !key || !f->n_meta) return NULL;
    st_meta k = {.key = key}, *hit = bsearch(&k, f->meta, (size_t)f->n_meta, sizeof *f->meta, cmp_meta_key);
    return hit ? hit->value : NULL;
}

/* ---------------------------------------------------------------- writer */

typedef struct sbuf {
    char *p;
    size_t len, cap;
    bool oom;
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) return (void)(b->oom = true);
        b->p = np, b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void sb_puts(sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }

/* s as a JSON string: quotes, backslashes and control bytes escaped; UTF-8 passes through. */
static void sb_json(sbuf *b, const char *s) {
    sb_add(b, "\"", 1);
    for (; *s; s++) {
        uint8_t c = (uint8_t)*s;
        char e[8];
        if (c == '"' || c == '\\')
            e[0] = '\\', e[1] = (char)c, sb_add(b, e, 2);
        else if (c == '\n')
            sb_add(b, "\\n", 2);
        else if (c == '\t')
            sb_add(b, "\\t", 2);
        else if (c == '\r')
            sb_add(b, "\\r", 2);
        else if (c < 0x20)
            snprintf(e, sizeof e, "\\u%04x", c), sb_add(b, e, 6);
        else
            sb_add(b, s, 1);
    }
    sb_add(b, "\"", 1);
}

static hae_status check_tensor_in(const char *path, const hae_st_tensor *t, int i) {
    char sb[128], nb[SHOW_MAX];
    uint64_t need;
    if (!memchr(t->name, '\0', sizeof t->name))
        return hae_error(HAE_ERR_INVALID, "%s: tensor %d: name is longer than %d bytes (not NUL-terminated)", path, i,
                         ST_NAME_MAX);
    const char *nm = show(t->name, nb);
    if (!utf8_valid(t->name))
        return hae_error(HAE_ERR_INVALID, "%s: tensor %d '%s': name is not valid UTF-8", path, i, nm);
    if (!strcmp(t->name, "__metadata__"))
        return hae_error(HAE_ERR_INVALID, "%s: tensor %d: the name __metadata__ is reserved", path, i);
    if ((unsigned)t->dtype >= HAE_DTYPE_COUNT)
        return hae_error(HAE_ERR_INVALID, "%s: tensor '%s': bad dtype %d", path, nm, (int)t->dtype);
    if (t->ndim < 0 || t->ndim > HAE_MAX_DIMS)
        return hae_error(HAE_ERR_INVALID, "%s: tensor '%s': ndim %d outside [0, %d]", path, nm, t->ndim, HAE_MAX_DIMS);
    shape_str(t->shape, t->ndim, sb, sizeof sb);
    for (int d = 0; d < t->ndim; d++)
        if (t->shape[d] < 0)
            return hae_error(HAE_ERR_INVALID, "%s: tensor '%s': negative dim in shape %s", path, nm, sb);
    if (!shape_bytes(t->shape, t->ndim, t->dtype, &need))
        return hae_error(HAE_ERR_INVALID, "%s: tensor '%s': shape %s overflows", path, nm, sb);
    if (need != t->nbytes)
        return hae_error(HAE_ERR_INVALID, "%s: tensor '%s': shape %s %s needs %" PRIu64 " bytes but nbytes is %zu",
                         path, nm, sb, hae_dtype_name(t->dtype), need, t->nbytes);
    if (need && !t->data) return hae_error(HAE_ERR_INVALID, "%s: tensor '%s': data is NULL", path, nm);
    return HAE_OK;
}

static hae_status check_write_args(const char *path, const hae_st_tensor *tensors, int n, const char *const *keys,
                                   const char *const *values, int n_meta) {
    char nb[SHOW_MAX];
    if (n < 0 || n_meta < 0 || (n && !tensors) || (n_meta && (!keys || !values)))
        return hae_error(HAE_ERR_INVALID, "%s: bad arguments (n = %d, n_meta = %d, or NULL arrays)", path, n, n_meta);
    for (int i = 0; i < n; i++) HAE_TRY(check_tensor_in(path, &tensors[i], i));
    for (int i = 0; i < n_meta; i++) {
        if (!keys[i] || !values[i]) return hae_error(HAE_ERR_INVALID, "%s: metadata entry %d is NULL", path, i);
        if (!utf8_valid(keys[i]) || !utf8_valid(values[i]))
            return hae_error(HAE_ERR_INVALID, "%s: metadata entry %d ('%s') is not valid UTF-8", path, i,
                             show(keys[i], nb));
    }
    if (n < 2 && n_meta < 2) return HAE_OK;
    /* Duplicates: sort copies of the names and keys. */
    size_t m = (size_t)(n > n_meta ? n : n_meta);
    const hae_st_tensor **tp = malloc(m * sizeof *tp);
    st_meta *mp = malloc(m * sizeof *mp);
    hae_status st = HAE_OK;
    if (!tp || !mp) st = hae_error(HAE_ERR_OOM, "%s: out of memory", path);
    if (st == HAE_OK) {
        for (int i = 0; i < n; i++) tp[i] = &tensors[i];
        for (int i = 0; i < n_meta; i++) mp[i] = (st_meta){keys[i], values[i]};
        qsort(tp, (size_t)n, sizeof *tp, cmp_tensor_name);
        qsort(mp, (size_t)n_meta, sizeof *mp, cmp_meta_key);
        for (int i = 1; i < n && st == HAE_OK; i++)
            if (!strcmp(tp[i]->name, tp[i - 1]->name))
                st = hae_error(HAE_ERR_INVALID, "%s: duplicate tensor name '%s'", path, show(tp[i]->name, nb));
        for (int i = 1; i < n_meta && st == HAE_OK; i++)
            if (!strcmp(mp[i].key, mp[i - 1].key))
                st = hae_error(HAE_ERR_INVALID, "%s: duplicate metadata key '%s'", path, show(mp[i].key, nb));
    }
    free(tp);
    free(mp);
    return st;
}

/* fwrite that remembers the first errno, so the message names the real cause (ENOSPC, EFBIG). */
static void put(FILE *fp, const void *p, size_t n, int *err) {
    if (!*err && n && fwrite(p, 1, n, fp) != n) *err = errno ? errno : EIO;
}

hae_status hae_st_write(const char *path, const hae_st_tensor *tensors, int n, const char *const *meta_keys,
                        const char *const *meta_values, int n_meta) {
    if (!path) return hae_error(HAE_ERR_INVALID, "hae_st_write: NULL path");
    HAE_TRY(check_write_args(path, tensors, n, meta_keys, meta_values, n_meta));

    /* Header like Python's: compact JSON, __metadata__ first, padded with spaces so that the data
     * section starts at a multiple of 8. */
    sbuf h = {0};
    char num[96];
    uint64_t off = 0;
    sb_puts(&h, "{");
    if (n_meta) {
        sb_puts(&h, "\"__metadata__\":{");
        for (int i = 0; i < n_meta; i++) {
            if (i) sb_puts(&h, ",");
            sb_json(&h, meta_keys[i]);
            sb_puts(&h, ":");
            sb_json(&h, meta_values[i]);
        }
        sb_puts(&h, n ? "}," : "}");
    }
    for (int i = 0; i < n; i++) {
        const hae_st_tensor *t = &tensors[i];
        if (i) sb_puts(&h, ",");
        sb_json(&h, t->name);
        sb_puts(&h, ":{\"dtype\":\"");
        sb_puts(&h, st_dtype_str(t->dtype));
        sb_puts(&h, "\",\"shape\":[");
        for (int d = 0; d < t->ndim; d++)
            snprintf(num, sizeof num, "%s%" PRId64, d ? "," : "", t->shape[d]), sb_puts(&h, num);
        snprintf(num, sizeof num, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", off, off + t->nbytes);
        sb_puts(&h, num);
        off += t->nbytes;
    }
    sb_puts(&h, "}");
    while (!h.oom && h.len % 8) sb_puts(&h, " ");
    if (h.oom) return free(h.p), hae_error(HAE_ERR_OOM, "%s: out of memory building the header", path);
    if (h.len > ST_HEADER_MAX)
        return free(h.p), hae_error(HAE_ERR_INVALID, "%s: header of %zu bytes exceeds the 100 MB limit", path, h.len);

    /* Write path.tmp and rename it, so that a failure never leaves a truncated file at path. */
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 5);
    if (!tmp) return free(h.p), hae_error(HAE_ERR_OOM, "%s: out of memory", path);
    memcpy(tmp, path, plen), memcpy(tmp + plen, ".tmp", 5);
    hae_status st = HAE_OK;
    FILE *fp = fopen(tmp, "wb");
    if (!fp) {
        st = hae_error(HAE_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    } else {
        uint8_t len8[8];
        int err = 0;
        for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)h.len >> (8 * i));
        errno = 0;
        put(fp, len8, 8, &err);
        put(fp, h.p, h.len, &err);
        for (int i = 0; i < n; i++) put(fp, tensors[i].data, tensors[i].nbytes, &err);
        if (!err && (fflush(fp) != 0 || fsync(fileno(fp)) != 0)) err = errno;
        if (fclose(fp) != 0 && !err) err = errno;
        if (!err && rename(tmp, path) != 0) err = errno;
        if (err) {
            st = hae_error(HAE_ERR_IO, "%s: write failed: %s", path, strerror(err));
            unlink(tmp);
        }
    }
    free(tmp);
    free(h.p);
    return st;
}

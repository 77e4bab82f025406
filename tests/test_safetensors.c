/* safetensors reader and writer: round trips, files as Python writes them, and corrupt files that
 * must be refused with a message naming the problem (never a crash: these also run under ASan). */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hae.h"
#include "testutil.h"

/* ---------------------------------------------------------------- helpers */

static void tmp_path(char *buf, size_t n, const char *tag) {
    char t[64];
    snprintf(t, sizeof t, "st-%s.safetensors", tag);
    tu_tmp_path(t, buf, n);
}

/* Random 64-bit words from the shared seeded stream. */
static uint64_t rng_next(tu_rng *r) {
    return (uint64_t)tu_uniform(r, 0, 4294967296.0) << 32 | (uint64_t)tu_uniform(r, 0, 4294967296.0);
}

static void write_bytes(const char *path, const void *p, size_t n) {
    FILE *fp = fopen(path, "wb");
    cr_assert(fp, "cannot create %s: %s", path, strerror(errno));
    cr_assert(n == 0 || fwrite(p, 1, n, fp) == n);
    cr_assert(fclose(fp) == 0);
}

static uint8_t *read_bytes(const char *path, size_t *n) {
    FILE *fp = fopen(path, "rb");
    cr_assert(fp, "cannot open %s", path);
    fseek(fp, 0, SEEK_END);
    *n = (size_t)ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *p = malloc(*n + 1);
    cr_assert(fread(p, 1, *n, fp) == *n);
    fclose(fp);
    return p;
}

/* u64 header length (hlen, or strlen(json) when 0), json, then data_len bytes 0, 1, 2, ... */
static uint8_t *make_file(const char *json, uint64_t hlen, size_t data_len, size_t *n) {
    size_t jl = strlen(json);
    if (!hlen) hlen = jl;
    *n = 8 + jl + data_len;
    uint8_t *p = malloc(*n);
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(hlen >> (8 * i));
    memcpy(p + 8, json, jl);
    for (size_t i = 0; i < data_len; i++) p[8 + jl + i] = (uint8_t)i;
    return p;
}

static bool file_exists(const char *path) { return access(path, F_OK) == 0; }

static hae_st_tensor mk(const char *name, hae_dtype dt, int ndim, const int64_t *shape, const void *data) {
    hae_st_tensor t = {.dtype = dt, .ndim = ndim, .data = data};
    snprintf(t.name, sizeof t.name, "%s", name);
    int64_t numel = 1;
    for (int d = 0; d < ndim; d++) t.shape[d] = shape[d], numel *= shape[d];
    t.nbytes = (size_t)numel * hae_dtype_size(dt);
    return t;
}

/* ---------------------------------------------------------------- round trips */

Test(safetensors, round_trip_every_dtype) {
    static const int64_t shapes[][5] = {/* ndim, dims */
                                        {2, 3, 5}, {4, 2, 3, 4, 1}, {1, 7}, {0}, {2, 0, 4}, {3, 1, 1, 9}};
    enum { NS = sizeof shapes / sizeof shapes[0] };
    hae_st_tensor t[HAE_DTYPE_COUNT * NS + 4];
    void *bufs[HAE_DTYPE_COUNT * NS + 4] = {0};
    char names[HAE_DTYPE_COUNT * NS + 4][256];
    int n = 0;
    tu_rng seed = tu_rng_make(42);
    /* Names that need JSON escaping, non-ASCII, empty, and the longest allowed. */
    const char *special[] = {"quote\"back\\slash/", "tab\tnew\nline\x01", "caf\xc3\xa9 \xf0\x9f\x98\x80", ""};
    for (int dt = 0; dt < HAE_DTYPE_COUNT; dt++)
        for (int s = 0; s < NS; s++) {
            if (n < 4)
                snprintf(names[n], 256, "%s", special[n]);
            else if (n == 4)
                memset(names[n], 'x', 255), names[n][255] = '\0';
            else
                snprintf(names[n], 256, "model.layers.%d.%s.w%d", n, hae_dtype_name((hae_dtype)dt), s);
            t[n] = mk(names[n], (hae_dtype)dt, (int)shapes[s][0], &shapes[s][1], NULL);
            bufs[n] = malloc(t[n].nbytes + 1);
            for (size_t i = 0; i < t[n].nbytes; i++) ((uint8_t *)bufs[n])[i] = (uint8_t)rng_next(&seed);
            t[n].data = bufs[n];
            n++;
        }
    const char *keys[] = {"format", "weird \"key\"\n", "empty", "unicode \xe2\x82\xac"};
    const char *vals[] = {"pt", "line1\nline2\t\\ \x01\x1f end", "", "\xf0\x9f\x98\x80 \"q\""};
    char path[1100], tmp[1200];
    tmp_path(path, sizeof path, "roundtrip");
    cr_assert_eq(hae_st_write(path, t, n, keys, vals, 4), HAE_OK, "%s", hae_last_error());
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    cr_expect(!file_exists(tmp), "%s left behind", tmp);

    size_t fsize;
    uint8_t *raw = read_bytes(path, &fsize);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | raw[i];
    cr_expect_eq((8 + hlen) % 8, 0, "data section starts at %llu, not a multiple of 8", (unsigned long long)(8 + hlen));
    cr_expect_eq(memcmp(raw + 8, "{\"__metadata__\":{", 17), 0, "metadata first, compact JSON");
    free(raw);

    hae_st_file *f = NULL;
    cr_assert_eq(hae_st_open(path, &f), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(hae_st_count(f), n);
    for (int i = 0; i < n; i++) {
        const hae_st_tensor *g = hae_st_get(f, i);
        cr_assert(g);
        cr_expect_str_eq(g->name, t[i].name, "tensor %d", i);
        cr_expect_eq(g->dtype, t[i].dtype, "tensor %d '%s'", i, t[i].name);
        cr_expect_eq(g->ndim, t[i].ndim, "tensor %d '%s'", i, t[i].name);
        for (int d = 0; d < t[i].ndim; d++) cr_expect_eq(g->shape[d], t[i].shape[d], "tensor %d dim %d", i, d);
        cr_assert_eq(g->nbytes, t[i].nbytes, "tensor %d '%s'", i, t[i].name);
        cr_expect(g->nbytes == 0 || memcmp(g->data, t[i].data, g->nbytes) == 0, "tensor %d '%s' data differs", i,
                  t[i].name);
        cr_expect_eq(hae_st_find(f, t[i].name), g, "find '%s'", t[i].name);
    }
    cr_expect_null(hae_st_find(f, "absent"));
    cr_expect_null(hae_st_get(f, n));
    cr_expect_null(hae_st_get(f, -1));
    for (int i = 0; i < 4; i++) {
        const char *v = hae_st_metadata(f, keys[i]);
        cr_assert(v, "metadata '%s' missing", keys[i]);
        cr_expect_str_eq(v, vals[i]);
    }
    cr_expect_null(hae_st_metadata(f, "absent"));
    hae_st_close(f);
    for (int i = 0; i < n; i++) free(bufs[i]);
}

Test(safetensors, scalars_empty_file_and_overwrite) {
    char path[1100];
    tmp_path(path, sizeof path, "scalar");
    float x = 3.5f;
    int64_t big = -1234567890123ll;
    hae_st_tensor t[3] = {mk("x", HAE_F32, 0, NULL, &x), mk("i", HAE_I64, 0, NULL, &big),
                          mk("none", HAE_BF16, 2, (const int64_t[]){3, 0}, NULL)};
    hae_st_file *f;
    cr_assert_eq(hae_st_write(path, t, 3, NULL, NULL, 0), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(hae_st_open(path, &f), HAE_OK, "%s", hae_last_error());
    const hae_st_tensor *g = hae_st_find(f, "x");
    cr_assert(g && g->ndim == 0 && g->nbytes == 4);
    float y;
    memcpy(&y, g->data, 4);
    cr_expect_eq(y, 3.5f);
    g = hae_st_find(f, "i");
    cr_assert(g && g->ndim == 0 && g->nbytes == 8 && memcmp(g->data, &big, 8) == 0);
    g = hae_st_find(f, "none");
    cr_assert(g && g->ndim == 2 && g->shape[1] == 0 && g->nbytes == 0);
    cr_expect_null(hae_st_metadata(f, "format"));
    hae_st_close(f);

    /* No tensors at all; and overwriting an existing file. */
    cr_assert_eq(hae_st_write(path, NULL, 0, NULL, NULL, 0), HAE_OK, "%s", hae_last_error());
    cr_assert_eq(hae_st_open(path, &f), HAE_OK, "%s", hae_last_error());
    cr_expect_eq(hae_st_count(f), 0);
    cr_expect_null(hae_st_find(f, "x"));
    hae_st_close(f);

    hae_st_close(NULL);
    cr_expect_eq(hae_st_count(NULL), 0);
    cr_expect_null(hae_st_get(NULL, 0));
    cr_expect_null(hae_st_find(NULL, "x"));
    cr_expect_null(hae_st_metadata(NULL, "x"));
}

/* As Python's safetensors writes: compact, __metadata__ first, data ordered unlike the keys; then the
 * same header pretty-printed with \u escapes, which any JSON writer may produce. */
Test(safetensors, python_style_header) {
    static const char *headers[] = {
        "{\"__metadata__\":{\"format\":\"pt\"},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[16,24]},"
        "\"caf\xc3\xa9\":{\"dtype\":\"I32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
        "\"e\":{\"dtype\":\"F16\",\"shape\":[0],\"data_offsets\":[24,24]},"
        "\"s\":{\"dtype\":\"F8_E4M3\",\"shape\":[],\"data_offsets\":[24,25]}}",
        "{\n  \"__metadata__\": {\"format\": \"p\\u0074\"},\n"
        "  \"b\": {\"shape\": [ 2 ], \"dtype\": \"F32\", \"data_offsets\": [16, 24]},\n"
        "  \"caf\\u00e9\": {\"data_offsets\": [0, 16], \"dtype\": \"I\\u0033\\u0032\", \"shape\": [2, 2]},\r\n"
        "  \"e\": {\"dtype\": \"F16\", \"shape\": [0], \"data_offsets\": [24, 24]},\t"
        "  \"s\": {\"dtype\": \"F8_E4M3\", \"shape\": [], \"data_offsets\": [24, 25]}\n}\n",
    };
    for (int h = 0; h < 2; h++) {
        char json[1024], path[1100];
        snprintf(json, sizeof json, "%s", headers[h]);
        while (strlen(json) % 8) strcat(json, " ");
        size_t n;
        uint8_t *bytes = make_file(json, 0, 25, &n);
        tmp_path(path, sizeof path, h ? "pretty" : "python");
        write_bytes(path, bytes, n);
        hae_st_file *f;
        cr_assert_eq(hae_st_open(path, &f), HAE_OK, "header %d: %s", h, hae_last_error());
        cr_assert_eq(hae_st_count(f), 4, "header %d", h);
        const uint8_t *data = bytes + 8 + strlen(json);
        const hae_st_tensor *b = hae_st_get(f, 0), *c = hae_st_get(f, 1), *e = hae_st_get(f, 2), *s = hae_st_get(f, 3);
        cr_expect_str_eq(b->name, "b");
        cr_expect_str_eq(c->name, "caf\xc3\xa9", "header %d: \\u00e9 decodes to UTF-8", h);
        cr_expect(b->dtype == HAE_F32 && b->ndim == 1 && b->shape[0] == 2 && b->nbytes == 8);
        cr_expect(c->dtype == HAE_I32 && c->ndim == 2 && c->shape[1] == 2 && c->nbytes == 16);
        cr_expect(e->dtype == HAE_F16 && e->ndim == 1 && e->shape[0] == 0 && e->nbytes == 0);
        cr_expect(s->dtype == HAE_FP8_E4M3 && s->ndim == 0 && s->nbytes == 1);
        cr_expect(memcmp(b->data, data + 16, 8) == 0 && memcmp(c->data, data, 16) == 0 &&
                      memcmp(s->data, data + 24, 1) == 0,
                  "header %d: data_offsets are relative to the data section", h);
        cr_expect_str_eq(hae_st_metadata(f, "format"), "pt");
        cr_expect_eq(hae_st_find(f, "caf\xc3\xa9"), c);
        hae_st_close(f);
        free(bytes);
    }
}

/* ---------------------------------------------------------------- corrupt files */

#define T1 "{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}"
#define S50 "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwx"

typedef struct bad_file {
    const char *what;
    const char *json; /* header; NULL: `raw` is the whole file */
    size_t data_len;
    uint64_t hlen; /* 0: strlen(json) */
    const char *raw;
    size_t raw_len;
    hae_status st;
    const char *words[3];
} bad_file;

static const bad_file bad_files[] = {
    {"empty file", NULL, 0, 0, "", 0, HAE_ERR_FORMAT, {"0 bytes", "shorter than the 8-byte"}},
    {"3-byte file", NULL, 0, 0, "\x10\0\0", 3, HAE_ERR_FORMAT, {"3 bytes", "shorter than the 8-byte"}},
    {"header length 0", NULL, 0, 0, "\0\0\0\0\0\0\0\0{}", 10, HAE_ERR_FORMAT, {"header length is 0"}},
    {"huge header length",
     "{}",
     0,
     1ull << 40,
     NULL,
     0,
     HAE_ERR_FORMAT,
     {"header length 1099511627776", "2 bytes follow"}},
    {"header longer than the file",
     "{\"a\":" T1 "}",
     4,
     200,
     NULL,
     0,
     HAE_ERR_FORMAT,
     {"header length 200", "only 58 bytes follow"}},
    {"header cut in a string",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_o",
     0,
     0,
     NULL,
     0,
     HAE_ERR_FORMAT,
     {"bad JSON", "tensor 'a'", "unterminated string"}},
    {"truncated data",
     "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}",
     10,
     0,
     NULL,
     0,
     HAE_ERR_FORMAT,
     {"tensor 'w'", "[0, 16] go past the end", "10 bytes"}},
    {"missing closing brace",
     "{\"a\":" T1,
     4,
     0,
     NULL,
     0,
     HAE_ERR_FORMAT,
     {"bad JSON at header byte 53", "expected ',' or '}'", "end of the header"}},
    {"trailing comma",
     "{\"a\":" T1 ",}",
     4,
     0,
     NULL,
     0,
     HAE_ERR_FORMAT,
     {"bad JSON at header byte 54", "expected a string"}},
    {"unquoted key", "{a:1}", 0, 0, NULL, 0, HAE_ERR_FORMAT, {"bad JSON at header byte 1", "expected a string", "'a'"}},
    {"bad escape", "{\"a\\q\":" T1 "}", 4, 0, NULL, 0, HAE_ERR_FORMAT, {"bad JSON", "invalid escape", "'q'"}},
    {"invalid UTF-8", "{\"a\xff\":" T1 "}", 4, 0, NULL, 0, HAE_ERR_FORMAT, {"bad JSON at header byte 3", "UTF-8"}},
    {"raw control byte", "{\"a\nb\":" T1 "}", 4, 0, NULL, 0, HAE_ERR_FORMAT, {"bad JSON", "control byte 0x0a"}},
    {"lone surrogate", "{\"\\ud800x\":" T1 "}", 4, 0, NULL, 0, HAE_ERR_FORMAT, {"bad JSON", "surrogate"}},
    {"\\u0000 in a name", "{\"a\\u0000\":" T1 "}", 4, 0, NULL, 0, HAE_ERR_FORMAT, {"bad JSON", "\\u0000"}},
    {"leading zero",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[01],\"data_offsets\":[0,4]}}",
     4,
     0,
     NULL,
     0,
     HAE_ERR_FORMAT,
     {"bad JSON", "leading zeros"}},
    {"garbage after the object",
     "{} x",
     0,
     0,
     NULL,
     0,
     HAE_ERR_FORMAT,
     {"bad JSON at header byte 3", "after the JSON object"}},
    {"NUL padding", "{}\0\0\0\0\0\0", 0, 8, NULL, 0, HAE_ERR_FORMAT, {"bad JSON at header byte 2", "byte 0x00"}},
    {"root not an object", "[1,2]", 0, 0, NULL, 0, HAE_ERR_FORMAT, {"not a JSON object", "'['"}},
    {"entry not an object", "{\"a\":3}", 0, 0, NULL, 0, HAE_ERR_FORMAT, {"tensor 'a'", "expected an object", "'3'"}},
    {"unknown dtype",
     "{\"a\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}",
     4,
     0,
     NULL,
     0,
     HAE_ERR_FORMAT,
     {"tensor 'a'", "unknown dtype 'F33'"}},
    {"dtype not a string",
     "{\"a\":{\"dtype\":32,\"shape\":[1],\"data_offsets\":[0,4]}}",
     4,
     0,
     NULL,
     0,
     HAE_ERR_FORMAT,
     {"tensor 'a'", "dtype must be a string"}},
    {"unsupported dtype",
     "{\"w\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}",
     8,
     0,
     NULL,
     0,
     HAE_ERR_UNSUPPORTED,
     {"tensor 'w'", "dtype F64 is not supported"}},
    {"shape vs offsets",
     "{\"lm_head.weight\":{\"dtype\":\"F32\",\"shape\":[4,2],\"data_offsets\":[0,28]}}",
     28,
     0,
     NULL,
     0,
     HAE_ERR_FORMAT,
     {"tensor 'lm_head.weight'", "shape [4, 2] f32 needs 32 bytes", "data_offsets give 28"}},
    {"offsets reversed",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}",
     4,
     0,
     NULL,
     0,
     HAE_ERR_FORMAT,
     {"tensor 'a'", "[4, 0] begin after they end"}},
    {"three offsets",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}",
     8,
     0,
     NULL,
     0,
     HAE_ERR_FORMAT,
     {"tensor 'a'", "data_offsets has 3 values"}},
    {"offsets out of range",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[100,104]}}",
     4,
     0,
     NULL,
     0,
     HAE_ERR_FORMAT,
     {"tensor 'a'", "[100, 104] go past the end", "4 bytes"}},
    {"overlapping tensors",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}",
     24,
     0,
     NULL,
     0,
     HAE_ERR_FORMAT,
     {"'a' [0, 16)", "'b' [8, 24)", "overlap"}},
    {"hole in the data",
     "{\"a\":" T1 ",\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
     12,
     0,
     NULL,
     0,
     HAE_ERR_FORMAT,
     {"bytes [4, 8)", "belong to no tensor"}},
    {"trailing bytes", "{\"a\":" T1 "}", 9, 0, NULL, 0, HAE_ERR_FORMAT, {"9 bytes", "end at byte 4", "trailing"}},
    {"duplicate names",
     "{\"a\":" T1 ",\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
     8,
     0,
     NULL,
     0,
     HAE_ERR_FORMAT,
     {"duplicate tensor name 'a'"}},
    {"missing field",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}",
     4,
     0,
     NULL,
     0,
     HAE_ERR_FORMAT,
     {"tensor 'a'", "missing field 'data_offsets'"}},
    {"unknown field",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"foo\":1}}",
     4,
     0,
     NULL,
     0,
     HAE_ERR_FORMAT,
     {"tensor 'a'", "unknown field 'foo'"}},
    {"field twice",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"shape\":[1],\"data_offsets\":[0,4]}}",
     4,
     0,
     NULL,
     0,
     HAE_ERR_FORMAT,
     {"tensor 'a'", "field 'shape' appears twice"}},
    {"negative dim",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,-3],\"data_offsets\":[0,4]}}",
     4,
     0,
     NULL,
     0,
     HAE_ERR_FORMAT,
     {"tensor 'a'", "shape[1] is -3", "non-negative integer"}},
    {"fractional dim",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,4]}}",
     4,
     0,
     NULL,
     0,
     HAE_ERR_FORMAT,
     {"tensor 'a'", "shape[0] is 2.5"}},
    {"dim above 2^63",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],\"data_offsets\":[0,4]}}",
     4,
     0,
     NULL,
     0,
     HAE_ERR_FORMAT,
     {"tensor 'a'", "below 2^63"}},
    {"shape not an array",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":4,\"data_offsets\":[0,4]}}",
     4,
     0,
     NULL,
     0,
     HAE_ERR_FORMAT,
     {"tensor 'a'", "shape must be an array"}},
    {"too many dims",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1],\"data_offsets\":[0,4]}}",
     4,
     0,
     NULL,
     0,
     HAE_ERR_UNSUPPORTED,
     {"tensor 'a'", "shape has 5 dims", "at most 4"}},
    {"element count overflow",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}}",
     4,
     0,
     NULL,
     0,
     HAE_ERR_FORMAT,
     {"tensor 'a'", "shape [4294967296, 4294967296] f32 overflows"}},
    {"name longer than 255 bytes",
     "{\"" S50 S50 S50 S50 S50 S50 "\":" T1 "}",
     4,
     0,
     NULL,
     0,
     HAE_ERR_FORMAT,
     {"tensor name 'abcdefgh", "300 bytes", "more than the 255"}},
    {"metadata value not a string",
     "{\"__metadata__\":{\"k\":1}}",
     0,
     0,
     NULL,
     0,
     HAE_ERR_FORMAT,
     {"__metadata__ value of 'k' must be a string"}},
    {"metadata twice",
     "{\"__metadata__\":{},\"__metadata__\":{}}",
     0,
     0,
     NULL,
     0,
     HAE_ERR_FORMAT,
     {"__metadata__ appears twice"}},
    {"duplicate metadata key",
     "{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}",
     0,
     0,
     NULL,
     0,
     HAE_ERR_FORMAT,
     {"duplicate __metadata__ key 'k'"}},
};

Test(safetensors, corrupt_files_rejected) {
    char path[1100];
    tmp_path(path, sizeof path, "corrupt");
    for (size_t c = 0; c < sizeof bad_files / sizeof bad_files[0]; c++) {
        const bad_file *b = &bad_files[c];
        size_t n = b->raw_len;
        uint8_t *bytes = NULL;
        if (b->json) {
            /* "NUL padding" has NULs inside its json: copy by hlen. */
            size_t jl = b->hlen && b->hlen <= 64 && b->hlen > strlen(b->json) ? (size_t)b->hlen : strlen(b->json);
            n = 8 + jl + b->data_len;
            bytes = calloc(1, n);
            for (int i = 0; i < 8; i++) bytes[i] = (uint8_t)((b->hlen ? b->hlen : jl) >> (8 * i));
            memcpy(bytes + 8, b->json, jl);
            for (size_t i = 0; i < b->data_len; i++) bytes[8 + jl + i] = (uint8_t)i;
        }
        write_bytes(path, b->json ? bytes : (const uint8_t *)b->raw, n);
        free(bytes);
        hae_clear_error();
        hae_st_file *f = (hae_st_file *)&c; /* must be reset to NULL on failure */
        hae_status st = hae_st_open(path, &f);
        const char *msg = hae_last_error();
        cr_expect_eq(st, b->st, "%s: status %s, expected %s (%s)", b->what, hae_status_name(st), hae_status_name(b->st),
                     msg);
        cr_expect_null(f, "%s: out not reset", b->what);
        if (st == HAE_OK) hae_st_close(f);
        cr_expect(strncmp(msg, path, strlen(path)) == 0, "%s: message does not start with the path: %s", b->what, msg);
        cr_expect(!strchr(msg, '\n'), "%s: message is not one line: %s", b->what, msg);
        for (int w = 0; w < 3 && b->words[w]; w++)
            cr_expect(strstr(msg, b->words[w]), "%s: message lacks \"%s\": %s", b->what, b->words[w], msg);
    }
}

Test(safetensors, io_errors) {
    char path[1100], dir[1200];
    tmp_path(path, sizeof path, "absent");
    unlink(path);
    hae_st_file *f;
    cr_expect_eq(hae_st_open(path, &f), HAE_ERR_IO);
    cr_expect(strstr(hae_last_error(), path) && strstr(hae_last_error(), strerror(ENOENT)), "%s", hae_last_error());
    snprintf(dir, sizeof dir, "%s.d", path);
    mkdir(dir, 0777);
    cr_expect_eq(hae_st_open(dir, &f), HAE_ERR_IO);
    cr_expect(strstr(hae_last_error(), "not a regular file"), "%s", hae_last_error());
    rmdir(dir);
}

/* A header length above 100 MB that the file does hold (sparse, so it costs no disk). */
Test(safetensors, header_over_100mb) {
    char path[1100];
    tmp_path(path, sizeof path, "bighdr");
    uint64_t hlen = 100000001;
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)(hlen >> (8 * i));
    write_bytes(path, len8, 8);
    cr_assert(truncate(path, (off_t)(8 + hlen)) == 0);
    hae_st_file *f;
    cr_expect_eq(hae_st_open(path, &f), HAE_ERR_FORMAT);
    cr_expect(strstr(hae_last_error(), "header length 100000001 exceeds the 100 MB limit"), "%s", hae_last_error());
    unlink(path);
}

/* ---------------------------------------------------------------- robustness */

/* A valid file with metadata and several tensors, the last holding data. */
static uint8_t *valid_file(const char *path, size_t *n) {
    static const float a[6] = {1, 2, 3, 4, 5, 6};
    static const uint16_t b[3] = {1, 2, 3};
    static const int64_t c[2] = {7, -7};
    hae_st_tensor t[4] = {
        mk("embed.weight", HAE_F32, 2, (const int64_t[]){2, 3}, a), mk("norm", HAE_BF16, 1, (const int64_t[]){3}, b),
        mk("zero", HAE_F16, 1, (const int64_t[]){0}, NULL), mk("ids", HAE_I64, 1, (const int64_t[]){2}, c)};
    const char *k[] = {"format"}, *v[] = {"pt"};
    cr_assert_eq(hae_st_write(path, t, 4, k, v, 1), HAE_OK, "%s", hae_last_error());
    return read_bytes(path, n);
}

Test(safetensors, every_truncation_fails) {
    char path[1100];
    tmp_path(path, sizeof path, "trunc");
    size_t n;
    uint8_t *full = valid_file(path, &n);
    hae_st_file *f;
    cr_assert_eq(hae_st_open(path, &f), HAE_OK, "%s", hae_last_error());
    hae_st_close(f);
    for (size_t len = n; len-- > 0;) {
        cr_assert(truncate(path, (off_t)len) == 0);
        f = NULL;
        hae_status st = hae_st_open(path, &f);
        cr_expect_eq(st, HAE_ERR_FORMAT, "truncated to %zu of %zu bytes: %s (%s)", len, n, hae_status_name(st),
                     hae_last_error());
        if (st == HAE_OK) hae_st_close(f);
    }
    free(full);
}

Test(safetensors, random_header_corruption) {
    char path[1100];
    tmp_path(path, sizeof path, "fuzz");
    size_t n;
    uint8_t *orig = valid_file(path, &n), *buf = malloc(n);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | orig[i];
    static const char interesting[] = "{}[]\":,\\u0123456789-.eE \x00\x7f\x80\xc3\xff";
    tu_rng seed = tu_rng_make(0x5eed);
    int opened = 0, iters = 3000, fd = open(path, O_WRONLY);
    cr_assert(fd >= 0);
    for (int it = 0; it < iters; it++) {
        memcpy(buf, orig, n);
        int flips = 1 + (int)(rng_next(&seed) % 4);
        for (int k = 0; k < flips; k++) {
            /* Mostly inside the JSON; now and then the length field. */
            size_t at = rng_next(&seed) % 16 == 0 ? rng_next(&seed) % 8 : 8 + rng_next(&seed) % hlen;
            uint64_t r = rng_next(&seed);
            buf[at] = r % 2 ? (uint8_t)interesting[(r >> 8) % (sizeof interesting - 1)]
                            : (uint8_t)(buf[at] ^ (1u << (r >> 8) % 8));
        }
        cr_assert(pwrite(fd, buf, n, 0) == (ssize_t)n); /* same size: no truncation, fast */
        hae_st_file *f = NULL;
        hae_status st = hae_st_open(path, &f);
        if (st != HAE_OK) {
            cr_expect(st == HAE_ERR_FORMAT || st == HAE_ERR_UNSUPPORTED, "iteration %d: %s", it, hae_status_name(st));
            cr_expect(strncmp(hae_last_error(), path, strlen(path)) == 0, "iteration %d: %s", it, hae_last_error());
            continue;
        }
        /* Whatever opened must keep every promise. */
        opened++;
        size_t total = 0;
        for (int i = 0; i < hae_st_count(f); i++) {
            const hae_st_tensor *t = hae_st_get(f, i);
            int64_t numel = 1;
            cr_assert(memchr(t->name, 0, sizeof t->name) && t->ndim >= 0 && t->ndim <= HAE_MAX_DIMS);
            for (int d = 0; d < t->ndim; d++) numel *= t->shape[d];
            cr_expect_eq(t->nbytes, (size_t)numel * hae_dtype_size(t->dtype), "iteration %d tensor %d", it, i);
            cr_expect_eq(hae_st_find(f, t->name), t, "iteration %d tensor %d", it, i);
            total += t->nbytes;
            volatile uint8_t sink = 0;
            for (size_t j = 0; j < t->nbytes; j++) sink ^= ((const uint8_t *)t->data)[j]; /* ASan: in bounds */
            (void)sink;
        }
        cr_expect(total <= n);
        hae_st_close(f);
    }
    close(fd);
    cr_log_info("random_header_corruption: %d of %d corrupted files still opened", opened, iters);
    free(orig);
    free(buf);
}

/* ---------------------------------------------------------------- writer */

Test(safetensors, writer_rejects_bad_input) {
    char path[1100];
    tmp_path(path, sizeof path, "badwrite");
    unlink(path);
    float d[4] = {0};
    hae_st_tensor ok = mk("w", HAE_F32, 2, (const int64_t[]){2, 2}, d);
    struct {
        const char *what;
        hae_st_tensor t[2];
        int n;
        const char *keys[2], *vals[2];
        int n_meta;
        const char *word;
    } cases[] = {
        {"duplicate names", {ok, ok}, 2, {0}, {0}, 0, "duplicate tensor name 'w'"},
        {"nbytes mismatch", {ok}, 1, {0}, {0}, 0, "needs 16 bytes but nbytes is 12"},
        {"long name", {ok}, 1, {0}, {0}, 0, "longer than 255"},
        {"reserved name", {ok}, 1, {0}, {0}, 0, "__metadata__ is reserved"},
        {"bad dtype", {ok}, 1, {0}, {0}, 0, "bad dtype 99"},
        {"five dims", {ok}, 1, {0}, {0}, 0, "ndim 5"},
        {"negative dim", {ok}, 1, {0}, {0}, 0, "negative dim in shape [2, -2]"},
        {"invalid UTF-8 name", {ok}, 1, {0}, {0}, 0, "not valid UTF-8"},
        {"NULL data", {ok}, 1, {0}, {0}, 0, "data is NULL"},
        {"duplicate metadata", {ok}, 1, {"k", "k"}, {"1", "2"}, 2, "duplicate metadata key 'k'"},
        {"NULL metadata value", {ok}, 1, {"k"}, {NULL}, 1, "metadata entry 0 is NULL"},
        {"negative count", {ok}, -1, {0}, {0}, 0, "bad arguments"},
    };
    cases[1].t[0].nbytes = 12;
    memset(cases[2].t[0].name, 'x', sizeof cases[2].t[0].name);
    snprintf(cases[3].t[0].name, 256, "__metadata__");
    cases[4].t[0].dtype = (hae_dtype)99;
    cases[5].t[0].ndim = 5;
    cases[6].t[0].shape[1] = -2;
    snprintf(cases[7].t[0].name, 256, "bad\xc3(");
    cases[8].t[0].data = NULL;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        hae_status st = hae_st_write(path, cases[c].t, cases[c].n, cases[c].keys, cases[c].vals, cases[c].n_meta);
        cr_expect_eq(st, HAE_ERR_INVALID, "%s: %s", cases[c].what, hae_status_name(st));
        cr_expect(strstr(hae_last_error(), cases[c].word), "%s: message lacks \"%s\": %s", cases[c].what, cases[c].word,
                  hae_last_error());
        cr_expect(!file_exists(path), "%s: a file was written", cases[c].what);
    }
}

/* A write that fails midway (file size limit) leaves the old file intact and no .tmp behind. */
Test(safetensors, failed_write_keeps_old_file) {
    char path[1100], tmp[1200], missing[1200];
    tmp_path(path, sizeof path, "atomic");
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    size_t n;
    free(valid_file(path, &n));
    static float big[4096];
    hae_st_tensor t = mk("big", HAE_F32, 1, (const int64_t[]){4096}, big);
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit rl = {.rlim_cur = 1024, .rlim_max = RLIM_INFINITY};
    cr_assert(setrlimit(RLIMIT_FSIZE, &rl) == 0);
    cr_expect_eq(hae_st_write(path, &t, 1, NULL, NULL, 0), HAE_ERR_IO);
    cr_expect(strstr(hae_last_error(), strerror(EFBIG)), "%s", hae_last_error());
    cr_expect(!file_exists(tmp), "%s left behind", tmp);
    hae_st_file *f;
    cr_assert_eq(hae_st_open(path, &f), HAE_OK, "old file damaged: %s", hae_last_error());
    cr_expect_eq(hae_st_count(f), 4);
    hae_st_close(f);

    snprintf(missing, sizeof missing, "%s.nodir/x.safetensors", path);
    cr_expect_eq(hae_st_write(missing, &t, 1, NULL, NULL, 0), HAE_ERR_IO);
    cr_expect(strstr(hae_last_error(), strerror(ENOENT)), "%s", hae_last_error());
}

/* Config loading: YAML text -> a node tree that remembers line:col -> a schema table -> hae_config.
 *
 * The steps: read the text into nodes (libyaml events); apply `--set` overrides to the tree; walk
 * the tree, binding every key to its schema entry (unknown keys fail here, with the nearest valid
 * key); build the config from those bindings (types, ranges, the layer layout, cross-field rules).
 * Every sweep job is built the same way from the bindings with its sweep values substituted, so a
 * bad combination fails at load time and the message points at the sweep value's line. */
#include "hae.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#define MAX_DEPTH 32         /* nesting a config never needs; bounds the recursion on hostile input */
#define MAX_SWEEP_JOBS 4096  /* every job is built at load time */
#define MAX_FILE (16u << 20) /* a config is a few KiB */

/* ---------------------------------------------------------------- layer kinds */

static const char *const kind_names[HAE_LAYER_KIND_COUNT + 1] = {
    "full", "swa", "dsa", "kda", "gdn", "deltanet", "gla", "linear", "mamba2", "retnet", NULL,
};

const char *hae_layer_kind_name(hae_layer_kind k) {
    return (unsigned)k < HAE_LAYER_KIND_COUNT ? kind_names[k] : "unknown";
}

bool hae_layer_kind_built(hae_layer_kind k) { return (unsigned)k < HAE_LAYER_KIND_COUNT; }

/* ---------------------------------------------------------------- the node tree */

typedef enum { N_SCALAR, N_SEQ, N_MAP } node_type;

typedef struct node {
    node_type type;
    bool plain;        /* scalar written without quotes: numbers and bools must be */
    int line, col;     /* 1-based; line 0: the node comes from the override `src` */
    const char *src;   /* file name, or the override text "a.b=v" (both outlive the tree) */
    char *text;        /* scalar */
    int n, cap;
    struct node **keys; /* map: key scalars, parallel to vals */
    struct node **vals; /* seq items or map values */
} node;

static void node_free(node *n) {
    if (!n) return;
    for (int i = 0; i < n->n; i++) {
        if (n->keys) node_free(n->keys[i]);
        node_free(n->vals[i]);
    }
    free(n->keys);
    free(n->vals);
    free(n->text);
    free(n);
}

static hae_status oom(void) { return hae_error(HAE_ERR_OOM, "config: out of memory"); }

static node *node_new(node_type t, const char *src, int line, int col, const char *text) {
    node *n = calloc(1, sizeof *n);
    if (!n) return NULL;
    *n = (node){.type = t, .plain = true, .line = line, .col = col, .src = src};
    if (t == N_SCALAR && !(n->text = strdup(text ? text : ""))) return free(n), NULL;
    return n;
}

/* Appends (key, val) to a map or val to a seq (key NULL); takes ownership only on success. */
static bool node_push(node *m, node *key, node *val) {
    if (m->n == m->cap) {
        int cap = m->cap ? 2 * m->cap : 8;
        node **v = realloc(m->vals, (size_t)cap * sizeof *v);
        if (!v) return false;
        m->vals = v;
        if (m->type == N_MAP) {
            node **k = realloc(m->keys, (size_t)cap * sizeof *k);
            if (!k) return false;
            m->keys = k;
        }
        m->cap = cap;
    }
    if (m->type == N_MAP) m->keys[m->n] = key;
    m->vals[m->n++] = val;
    return true;
}

static int map_find(const node *m, const char *key) {
    for (int i = 0; i < m->n; i++)
        if (strcmp(m->keys[i]->text, key) == 0) return i;
    return -1;
}

static void map_remove(node *m, const char *key) {
    int i = map_find(m, key);
    if (i < 0) return;
    node_free(m->keys[i]);
    node_free(m->vals[i]);
    memmove(m->keys + i, m->keys + i + 1, (size_t)(m->n - i - 1) * sizeof *m->keys);
    memmove(m->vals + i, m->vals + i + 1, (size_t)(m->n - i - 1) * sizeof *m->vals);
    m->n--;
}

static bool contains(const node *root, const node *n) {
    if (root == n) return true;
    for (int i = 0; i < root->n; i++)
        if ((root->keys && root->keys[i] == n) || contains(root->vals[i], n)) return true;
    return false;
}

static const char *loc(const node *n, char *buf, size_t cap) {
    if (n->line > 0) snprintf(buf, cap, "%s:%d:%d", n->src, n->line, n->col);
    else snprintf(buf, cap, "--set %s", n->src);
    return buf;
}

/* "'abc'", "a list", ... for "expected X, got Y". */
static const char *desc(const node *n, char *buf, size_t cap) {
    if (n->type == N_SEQ) return "a list";
    if (n->type == N_MAP) return "a mapping";
    if (n->plain && !n->text[0]) return "nothing";
    snprintf(buf, cap, "%s'%.60s%s'", n->plain ? "" : "the quoted string ", n->text, strlen(n->text) > 60 ? "..." : "");
    return buf;
}

/* ---------------------------------------------------------------- errors */

/* hae_error with the message kept on one line: quoted values and --set texts may hold newlines. */
static hae_status cfg_error(hae_status st, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static hae_status cfg_error(hae_status st, const char *fmt, ...) {
    char raw[2048], out[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    size_t k = 0;
    for (const unsigned char *p = (const unsigned char *)raw; *p && k + 5 < sizeof out; p++) {
        if (*p >= 0x20 && *p != 0x7f) out[k++] = (char)*p;
        else if (*p == '\n') out[k++] = '\\', out[k++] = 'n';
        else k += (size_t)snprintf(out + k, sizeof out - k, "\\x%02x", *p);
    }
    out[k] = '\0';
    return hae_error(st, "%s", out);
}

typedef struct ctx {
    const char *src; /* names the text in messages */
    /* While building sweep job `job` (1-based) of n_jobs: its label and swept value nodes. */
    int job, n_jobs;
    const char *label;
    const node *swept[HAE_MAX_SWEEP_AXES];
    int n_swept;
} ctx;

/* One line: "where: path: message", where = file:line:col, "--set k=v", or the source and
 * "(default)" for a value nobody wrote; in a sweep job, which job and where its values are. */
static hae_status fail(const ctx *c, const node *n, const char *path, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;
static hae_status fail(const ctx *c, const node *n, const char *path, const char *fmt, ...) {
    char msg[1024], where[HAE_PATH_MAX + 64], job[1024] = "";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n) loc(n, where, sizeof where);
    else snprintf(where, sizeof where, "%s", c->src);
    if (c->job) {
        size_t k = (size_t)snprintf(job, sizeof job, " (sweep job %d/%d: %s", c->job, c->n_jobs, c->label);
        bool at_swept = false;
        for (int i = 0; i < c->n_swept; i++) at_swept |= n && contains(c->swept[i], n);
        for (int i = 0; !at_swept && i < c->n_swept && k < sizeof job; i++) {
            char l[HAE_PATH_MAX + 64];
            k += (size_t)snprintf(job + k, sizeof job - k, "%s%s", i ? ", " : "; swept values at ",
                                  loc(c->swept[i], l, sizeof l));
        }
        if (k < sizeof job) snprintf(job + k, sizeof job - k, ")");
    }
    return cfg_error(HAE_ERR_INVALID, "%s: %s%s%s%s%s", where, path ? path : "", path ? ": " : "", msg,
                     n ? "" : " (default)", job);
}

static int levenshtein(const char *a, const char *b) {
    int la = (int)strlen(a), lb = (int)strlen(b), row[129];
    if (la > 128 || lb > 128) return INT_MAX / 2;
    for (int j = 0; j <= lb; j++) row[j] = j;
    for (int i = 1; i <= la; i++) {
        int diag = row[0];
        row[0] = i;
        for (int j = 1; j <= lb; j++) {
            int up = row[j];
            int best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

/* "; did you mean 'x'?" when a candidate is close, else " (expected one of: a, b, c)". */
static void suggest(const char *got, const char *const *cands, int n, char *out, size_t cap) {
    int best = -1, bd = INT_MAX;
    for (int i = 0; i < n; i++) {
        int d = levenshtein(got, cands[i]);
        if (d < bd) bd = d, best = i;
    }
    if (best >= 0 && (bd <= 2 || 3 * bd <= (int)strlen(got))) {
        snprintf(out, cap, "; did you mean '%s'?", cands[best]);
        return;
    }
    size_t k = (size_t)snprintf(out, cap, " (expected one of:");
    for (int i = 0; i < n && k < cap; i++) k += (size_t)snprintf(out + k, cap - k, "%s %s", i ? "," : "", cands[i]);
    if (k < cap) snprintf(out + k, cap - k, ")");
}

/* ---------------------------------------------------------------- reading YAML */

typedef struct reader {
    yaml_parser_t p;
    const ctx *c;
    const char *src;  /* file name or override text */
    bool ovr;         /* override: nodes carry no line:col */
    const char *text; /* the input, to place libyaml's encoding errors (it gives a byte offset) */
} reader;

/* A stand-in node for a position in the text, to place a message. */
static node at_mark(const reader *r, yaml_mark_t m) {
    return (node){.src = r->src, .line = r->ovr ? 0 : (int)m.line + 1, .col = (int)m.column + 1};
}

static hae_status syntax_error(reader *r) {
    yaml_parser_t *p = &r->p;
    if (p->error == YAML_MEMORY_ERROR) return oom();
    const char *problem = p->problem ? p->problem : "malformed YAML";
    char where[HAE_PATH_MAX + 64], ctxt[256] = "";
    yaml_mark_t m = p->problem_mark;
    if (p->error == YAML_READER_ERROR) { /* only an offset: count the lines up to it */
        m.line = m.column = 0;
        for (size_t i = 0; i < p->problem_offset; i++) {
            if (r->text[i] == '\n') m.line++, m.column = 0;
            else m.column++;
        }
    }
    node at = at_mark(r, m);
    loc(&at, where, sizeof where);
    if (p->context && !r->ovr)
        snprintf(ctxt, sizeof ctxt, " (%s at line %zu)", p->context, p->context_mark.line + 1);
    else if (p->context) snprintf(ctxt, sizeof ctxt, " (%s)", p->context);
    return cfg_error(HAE_ERR_INVALID, "%s: YAML syntax error: %s%s", where, problem, ctxt);
}

static hae_status next_event(reader *r, yaml_event_t *ev) {
    return yaml_parser_parse(&r->p, ev) ? HAE_OK : syntax_error(r);
}

static node *event_node(reader *r, node_type t, const yaml_event_t *ev, const char *text) {
    node at = at_mark(r, ev->start_mark);
    return node_new(t, r->src, at.line, at.col, text);
}

/* Rejects what a config never needs and would only make it harder to read: aliases, anchors, tags. */
static hae_status check_event(reader *r, const yaml_event_t *ev, const char *path) {
    const yaml_char_t *anchor = NULL, *tag = NULL;
    if (ev->type == YAML_SCALAR_EVENT) anchor = ev->data.scalar.anchor, tag = ev->data.scalar.tag;
    if (ev->type == YAML_SEQUENCE_START_EVENT)
        anchor = ev->data.sequence_start.anchor, tag = ev->data.sequence_start.tag;
    if (ev->type == YAML_MAPPING_START_EVENT) anchor = ev->data.mapping_start.anchor, tag = ev->data.mapping_start.tag;
    node at = at_mark(r, ev->start_mark);
    if (ev->type == YAML_ALIAS_EVENT || anchor)
        return fail(r->c, &at, path[0] ? path : NULL,
                    "YAML anchors and aliases (&name, *name) are not supported (write the value out)");
    if (tag)
        return fail(r->c, &at, path[0] ? path : NULL, "YAML tags such as '%s' are not supported (write a plain value)",
                    (const char *)tag);
    return HAE_OK;
}

static hae_status read_node(reader *r, yaml_event_t *ev, const char *path, int depth, node **out);

/* Reads the items of a sequence or the pairs of a mapping up to its end event. */
static hae_status read_children(reader *r, node *n, const char *path, int depth) {
    for (;;) {
        yaml_event_t ev;
        char child[512];
        HAE_TRY(next_event(r, &ev));
        if (ev.type == YAML_SEQUENCE_END_EVENT || ev.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&ev);
            return HAE_OK;
        }
        node *key = NULL, *val = NULL;
        hae_status st = HAE_OK;
        if (n->type == N_SEQ) {
            snprintf(child, sizeof child, "%s[%d]", path, n->n);
        } else {
            if (ev.type != YAML_SCALAR_EVENT) {
                node at = at_mark(r, ev.start_mark);
                yaml_event_delete(&ev);
                return fail(r->c, &at, path[0] ? path : NULL, "keys must be plain names, not lists or mappings");
            }
            st = read_node(r, &ev, path, depth + 1, &key);
            if (st) return st;
            snprintf(child, sizeof child, "%s%s%s", path, path[0] ? "." : "", key->text);
            int dup = map_find(n, key->text);
            if (dup >= 0) {
                char l[HAE_PATH_MAX + 64];
                st = fail(r->c, key, child, "duplicate key (first at %s)", loc(n->keys[dup], l, sizeof l));
                node_free(key);
                return st;
            }
            st = next_event(r, &ev);
            if (st) return node_free(key), st;
        }
        st = read_node(r, &ev, child, depth + 1, &val);
        if (!st && !node_push(n, key, val)) st = oom();
        if (st) return node_free(key), node_free(val), st;
    }
}

/* Builds the node of the event `ev` (consumed) and of everything under it. */
static hae_status read_node(reader *r, yaml_event_t *ev, const char *path, int depth, node **out) {
    *out = NULL;
    hae_status st = check_event(r, ev, path);
    node *n = NULL;
    if (!st && depth > MAX_DEPTH) {
        node at = at_mark(r, ev->start_mark);
        st = fail(r->c, &at, path, "nested deeper than %d levels", MAX_DEPTH);
    }
    if (!st && ev->type == YAML_SCALAR_EVENT) {
        const char *v = (const char *)ev->data.scalar.value;
        if (!(n = event_node(r, N_SCALAR, ev, v))) st = oom();
        else if (strlen(v) != ev->data.scalar.length) st = fail(r->c, n, path, "NUL character in a value");
        else n->plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
    } else if (!st) {
        bool seq = ev->type == YAML_SEQUENCE_START_EVENT;
        HAE_ASSERT(seq || ev->type == YAML_MAPPING_START_EVENT);
        if (!(n = event_node(r, seq ? N_SEQ : N_MAP, ev, NULL))) st = oom();
    }
    bool collection = ev->type != YAML_SCALAR_EVENT;
    yaml_event_delete(ev);
    if (!st && collection) st = read_children(r, n, path, depth);
    if (st) return node_free(n), st;
    *out = n;
    return HAE_OK;
}

/* One YAML document into *out (NULL when the text holds none). */
static hae_status read_doc(const ctx *c, const char *text, size_t len, const char *src, bool ovr, node **out) {
    reader r = {.c = c, .src = src, .ovr = ovr, .text = text};
    *out = NULL;
    if (!yaml_parser_initialize(&r.p)) return oom();
    yaml_parser_set_input_string(&r.p, (const unsigned char *)text, len);
    yaml_parser_set_encoding(&r.p, YAML_UTF8_ENCODING);
    yaml_event_t ev;
    hae_status st = next_event(&r, &ev); /* stream start */
    if (!st) yaml_event_delete(&ev), st = next_event(&r, &ev);
    if (!st && ev.type == YAML_DOCUMENT_START_EVENT) {
        yaml_event_delete(&ev);
        st = next_event(&r, &ev);
        if (!st) st = read_node(&r, &ev, "", 0, out);
        if (!st) st = next_event(&r, &ev); /* document end */
        if (!st) yaml_event_delete(&ev), st = next_event(&r, &ev);
        if (!st && ev.type == YAML_DOCUMENT_START_EVENT) {
            node at = at_mark(&r, ev.start_mark);
            st = fail(c, &at, NULL, "a second YAML document (a config is one document; remove the '---')");
        }
    }
    yaml_event_delete(&ev); /* safe twice: libyaml zeroes deleted and failed events */
    yaml_parser_delete(&r.p);
    if (st) node_free(*out), *out = NULL;
    return st;
}

/* libyaml's message for a tab is obscure; YAML forbids tabs in indentation, so say so. */
static hae_status check_tabs(const ctx *c, const char *t, size_t len) {
    int line = 1;
    for (size_t i = 0; i < len; line++) {
        size_t start = i;
        while (i < len && t[i] == ' ') i++;
        if (i < len && t[i] == '\t')
            return cfg_error(HAE_ERR_INVALID, "%s:%d:%zu: tab character in indentation (YAML indents with spaces)",
                             c->src, line, i - start + 1);
        while (i < len && t[i] != '\n') i++;
        i++;
    }
    return HAE_OK;
}

/* ---------------------------------------------------------------- the schema */

typedef enum { T_INT, T_U64, T_FLOAT, T_BOOL, T_STR, T_NAME, T_ENUM, T_BYTES, T_LIST, T_KINDS, T_LAYERS, T_SWEEP } vtype;

/* OPEN_LO, OPEN_HI: the bound itself is excluded; LIST_PATTERN: a list whose items may repeat, or be none (an
 * ordered pattern, not an axis); LIST_OPTIONAL: a list of distinct items that may be empty; LIST_REPEATS: a list
 * that may be empty and whose items may repeat; LIST_ZIP: such a list, read item by item beside another list of
 * the same length */
enum { OPEN_LO = 1, OPEN_HI = 2, LIST_PATTERN = 4, LIST_OPTIONAL = 8, LIST_ZIP = 16, LIST_REPEATS = 32 };

typedef struct key_spec {
    const char *path; /* dotted YAML path */
    vtype type;
    const char *def;  /* default as YAML text; NULL: resolved by hand (layers, sweep) */
    double lo, hi;    /* numbers: allowed range */
    int open;
    const char *const *names; /* enum: names, index = value, NULL-terminated */
    size_t off, size;
} key_spec;

static const char *const forms[] = {"gqa", "mla", NULL};
static const char *const ropes[] = {"none", "full", "partial", NULL};
static const char *const backends[] = {"auto", "cpu", "cuda", NULL};
static const char *const dtypes[] = {"f32", "bf16", NULL};
static const char *const tiers[] = {"gpu", "host", NULL};
static const char *const dsa_tiers[] = {"gpu", "host", "auto", NULL};
static const char *const task_names[] = {"mqar", "multihop", "niah", NULL};
static const char *const hops_forms[] = {"follow", "list", NULL};
static const char *const index_dtypes[] = {"f32", "bf16", "f16", "fp8", NULL};
static const char *const matmul_dtypes[] = {"f32", "bf16", NULL}; /* HAE_F32, HAE_BF16 */ /* f16 is refused by eval_checks */
_Static_assert(HAE_ATTN_GQA == 0 && HAE_ATTN_MLA == 1, "forms[] follows hae_attn_form");
_Static_assert(HAE_ROPE_NONE == 0 && HAE_ROPE_FULL == 1 && HAE_ROPE_PARTIAL == 2, "ropes[] follows hae_rope_mode");
_Static_assert(HAE_BACKEND_AUTO == 0 && HAE_BACKEND_CPU == 1 && HAE_BACKEND_CUDA == 2, "backends[]");
_Static_assert(HAE_F32 == 0 && HAE_BF16 == 1, "dtypes[] follows hae_dtype");
_Static_assert(HAE_TIER_GPU == 0 && HAE_TIER_HOST == 1 && HAE_TIER_AUTO == 2 && sizeof(hae_tier) == sizeof(int),
               "tiers[], dsa_tiers[]");
_Static_assert(sizeof(hae_rope_mode) == sizeof(int) && sizeof(hae_dtype) == sizeof(int), "enums are stored as int");
_Static_assert(HAE_TASK_MQAR == 0 && HAE_TASK_MULTIHOP == 1 && HAE_TASK_NIAH == 2, "task_names[] follows hae_task_kind");
_Static_assert(HAE_HOPS_FOLLOW == 0 && HAE_HOPS_LIST == 1 && sizeof(hae_hops_form) == sizeof(int), "hops_forms[]");
_Static_assert(HAE_F16 == 2 && HAE_FP8_E4M3 == 3, "index_dtypes[] follows hae_dtype");

enum {
    K_NAME, K_SEED, K_OUTPUT_DIR,
    K_VOCAB, K_D_MODEL, K_N_LAYERS, K_PATTERN, K_LAYERS, K_NORM_EPS, K_TIE, K_INIT_RANGE, K_D_FF,
    K_FORM, K_HEADS, K_KV_HEADS, K_HEAD_DIM, K_ROPE, K_THETA, K_PARTIAL, K_SCALE,
    K_MLA_LORA, K_MLA_NOPE, K_MLA_ROPE, K_MLA_V, K_WINDOW,
    K_LA_HEADS, K_LA_VHEADS, K_LA_HEAD_DIM, K_LA_EXPAND_V, K_LA_CONV, K_LA_CHUNK, K_LA_SAFE, K_LA_LB,
    K_DSA_HEADS, K_DSA_DIM, K_DSA_TOPK, K_DSA_ROPE, K_DSA_DERIVED, K_DSA_EXACT, K_DSA_PAGE,
    K_BACKEND, K_DEVICE, K_THREADS, K_DTYPE, K_BATCH, K_PREFILL, K_DECODE, K_CHUNK, K_TEMP, K_KV_BUDGET, K_MICRO,
    K_MEM_PAGE, K_MEM_GPU, K_MEM_HOST, K_MEM_DSA, K_MEM_FULL, K_MEM_LINEAR, K_MEM_CACHE, K_MEM_FP8, K_MEM_GPU_SEQS,
    K_EV_TASKS, K_EV_LENGTHS, K_EV_PAIRS, K_EV_HOPS, K_EV_CHAINS, K_EV_QUERIES, K_EV_FORM, K_EV_SHUFFLE, K_EV_POWER,
    K_EV_NOISE, K_EV_VOCAB, K_EV_SEEDS, K_EV_KINDS, K_EV_K, K_EV_TOPK, K_EV_DTYPE, K_EV_COS, K_EV_DECAY, K_EV_ORTHO,
    K_CI_KINDS, K_CI_HOP_KINDS, K_CI_CODE_DIM, K_CI_WINDOW, K_CI_TOPK, K_CI_DECAY, K_CI_DECODE,
    K_TR_STEPS, K_TR_BATCH, K_TR_LR, K_TR_MIN_LR, K_TR_WARMUP, K_TR_WD, K_TR_BETA1, K_TR_BETA2, K_TR_EPS, K_TR_CLIP,
    K_TR_EVAL, K_TR_CKPT, K_TR_LOG, K_TR_IDX_WARMUP, K_TR_EVAL_LENGTHS, K_TR_LENGTHS, K_TR_PAIRS, K_TR_MATMUL, K_TR_STATE_CKPT,
    K_TR_LINEAR_CHUNK, K_SWEEP, NKEYS
};

#define FIELD(m) offsetof(hae_config, m), sizeof(((hae_config *)0)->m)
#define NOMAX INFINITY

/* Defaults are configs/default.yaml's, except layer_pattern (omitted: every layer `full`);
 * the emitter writes keys in this order, so sections stay contiguous. */
static const key_spec specs[NKEYS] = {
    [K_NAME] = {"name", T_NAME, "default", 0, 0, 0, NULL, FIELD(name)},
    [K_SEED] = {"seed", T_U64, "1234", 0, 0, 0, NULL, FIELD(seed)},
    [K_OUTPUT_DIR] = {"output_dir", T_STR, "runs", 0, 0, 0, NULL, FIELD(output_dir)},
    [K_VOCAB] = {"model.vocab_size", T_INT, "512", 2, 2147483647.0, 0, NULL, FIELD(model.vocab_size)},
    [K_D_MODEL] = {"model.d_model", T_INT, "256", 1, 65536, 0, NULL, FIELD(model.d_model)},
    [K_N_LAYERS] = {"model.n_layers", T_INT, "4", 1, HAE_MAX_LAYERS, 0, NULL, FIELD(model.n_layers)},
    [K_PATTERN] = {"model.layer_pattern", T_KINDS, NULL, 0, 0, 0, NULL, FIELD(model.layers)},
    [K_LAYERS] = {"model.layers", T_LAYERS, NULL, 0, 0, 0, NULL, FIELD(model.layers)},
    [K_NORM_EPS] = {"model.rms_norm_eps", T_FLOAT, "1e-6", 0, 1, OPEN_LO | OPEN_HI, NULL, FIELD(model.norm_eps)},
    [K_TIE] = {"model.tie_word_embeddings", T_BOOL, "false", 0, 0, 0, NULL, FIELD(model.tie_word_embeddings)},
    [K_INIT_RANGE] = {"model.initializer_range", T_FLOAT, "0.02", 0, 1, OPEN_LO, NULL, FIELD(model.initializer_range)},
    [K_D_FF] = {"model.mlp.intermediate_size", T_INT, "704", 1, 1 << 20, 0, NULL, FIELD(model.mlp.intermediate_size)},
    [K_FORM] = {"model.attention.form", T_ENUM, "gqa", 0, 0, 0, forms, FIELD(model.attention.form)},
    [K_HEADS] = {"model.attention.num_heads", T_INT, "4", 1, NOMAX, 0, NULL, FIELD(model.attention.num_heads)},
    [K_KV_HEADS] = {"model.attention.num_kv_heads", T_INT, "2", 1, NOMAX, 0, NULL, FIELD(model.attention.num_kv_heads)},
    [K_HEAD_DIM] = {"model.attention.head_dim", T_INT, "64", 1, 1024, 0, NULL, FIELD(model.attention.head_dim)},
    [K_ROPE] = {"model.attention.rope", T_ENUM, "full", 0, 0, 0, ropes, FIELD(model.attention.rope)},
    [K_THETA] = {"model.attention.rope_theta", T_FLOAT, "10000", 0, NOMAX, OPEN_LO, NULL,
                 FIELD(model.attention.rope_theta)},
    [K_PARTIAL] = {"model.attention.partial_rotary_factor", T_FLOAT, "0.5", 0, 1, OPEN_LO, NULL,
                   FIELD(model.attention.partial_rotary_factor)},
    [K_SCALE] = {"model.attention.softmax_scale", T_FLOAT, "0", 0, NOMAX, 0, NULL,
                 FIELD(model.attention.softmax_scale)},
    [K_MLA_LORA] = {"model.attention.kv_lora_rank", T_INT, "512", 1, 8192, 0, NULL, FIELD(model.attention.kv_lora_rank)},
    [K_MLA_NOPE] = {"model.attention.qk_nope_head_dim", T_INT, "128", 1, 1024, 0, NULL,
                    FIELD(model.attention.qk_nope_head_dim)},
    [K_MLA_ROPE] = {"model.attention.qk_rope_head_dim", T_INT, "64", 0, 1024, 0, NULL,
                    FIELD(model.attention.qk_rope_head_dim)},
    [K_MLA_V] = {"model.attention.v_head_dim", T_INT, "128", 1, 1024, 0, NULL, FIELD(model.attention.v_head_dim)},
    [K_WINDOW] = {"model.swa.window_size", T_INT, "256", 1, NOMAX, 0, NULL, FIELD(model.swa.window_size)},
    [K_LA_HEADS] = {"model.linear_attn.num_heads", T_INT, "4", 1, 1024, 0, NULL, FIELD(model.linear_attn.num_heads)},
    [K_LA_VHEADS] = {"model.linear_attn.num_v_heads", T_INT, "0", 0, 4096, 0, NULL,
                     FIELD(model.linear_attn.num_v_heads)},
    [K_LA_HEAD_DIM] = {"model.linear_attn.head_dim", T_INT, "64", 1, 256, 0, NULL, FIELD(model.linear_attn.head_dim)},
    [K_LA_EXPAND_V] = {"model.linear_attn.expand_v", T_FLOAT, "1", 0, 8, OPEN_LO, NULL,
                       FIELD(model.linear_attn.expand_v)},
    [K_LA_CONV] = {"model.linear_attn.conv_size", T_INT, "4", 1, 16, 0, NULL, FIELD(model.linear_attn.conv_size)},
    [K_LA_CHUNK] = {"model.linear_attn.chunk_size", T_INT, "64", 16, 128, 0, NULL,
                    FIELD(model.linear_attn.chunk_size)},
    [K_LA_SAFE] = {"model.linear_attn.safe_gate", T_BOOL, "true", 0, 0, 0, NULL, FIELD(model.linear_attn.safe_gate)},
    [K_LA_LB] = {"model.linear_attn.lower_bound", T_FLOAT, "-5", -1000, 0, OPEN_HI, NULL,
                 FIELD(model.linear_attn.lower_bound)},
    [K_DSA_HEADS] = {"model.dsa.index_n_heads", T_INT, "4", 1, 1024, 0, NULL, FIELD(model.dsa.index_n_heads)},
    [K_DSA_DIM] = {"model.dsa.index_head_dim", T_INT, "128", 128, 128, 0, NULL, FIELD(model.dsa.index_head_dim)},
    [K_DSA_TOPK] = {"model.dsa.index_topk", T_INT, "64", 1, 1 << 20, 0, NULL, FIELD(model.dsa.index_topk)},
    [K_DSA_ROPE] = {"model.dsa.index_rope_dim", T_INT, "0", 0, 128, 0, NULL, FIELD(model.dsa.index_rope_dim)},
    [K_DSA_DERIVED] = {"model.dsa.derived", T_BOOL, "false", 0, 0, 0, NULL, FIELD(model.dsa.derived)},
    [K_DSA_EXACT] = {"model.dsa.exact_logits", T_BOOL, "false", 0, 0, 0, NULL, FIELD(model.dsa.exact_logits)},
    [K_DSA_PAGE] = {"model.dsa.page_size", T_INT, "64", 1, 65536, 0, NULL, FIELD(model.dsa.page_size)},
    [K_BACKEND] = {"runtime.backend", T_ENUM, "auto", 0, 0, 0, backends, FIELD(runtime.backend)},
    [K_DEVICE] = {"runtime.device", T_INT, "0", 0, INT_MAX, 0, NULL, FIELD(runtime.device)},
    [K_THREADS] = {"runtime.threads", T_INT, "0", 0, 1024, 0, NULL, FIELD(runtime.threads)},
    [K_DTYPE] = {"runtime.dtype", T_ENUM, "bf16", 0, 0, 0, dtypes, FIELD(runtime.dtype)},
    [K_BATCH] = {"runtime.batch", T_INT, "1", 1, 65536, 0, NULL, FIELD(runtime.batch)},
    [K_PREFILL] = {"runtime.prefill", T_INT, "1024", 1, NOMAX, 0, NULL, FIELD(runtime.prefill)},
    [K_DECODE] = {"runtime.decode", T_INT, "32", 0, NOMAX, 0, NULL, FIELD(runtime.decode)},
    [K_CHUNK] = {"runtime.prefill_chunk", T_INT, "512", 0, NOMAX, 0, NULL, FIELD(runtime.prefill_chunk)},
    [K_TEMP] = {"runtime.temperature", T_FLOAT, "0", 0, NOMAX, 0, NULL, FIELD(runtime.temperature)},
    [K_KV_BUDGET] = {"runtime.kv_budget", T_BYTES, "0", 0, NOMAX, 0, NULL, FIELD(runtime.kv_budget)},
    [K_MICRO] = {"runtime.micro_batches", T_LIST, "", 1, 65536, LIST_REPEATS, NULL, FIELD(runtime.micro_batches)},
    [K_MEM_PAGE] = {"memory.page_size", T_INT, "64", 1, 65536, 0, NULL, FIELD(memory.page_size)},
    [K_MEM_GPU] = {"memory.gpu_budget", T_BYTES, "0", 0, NOMAX, 0, NULL, FIELD(memory.gpu_budget)},
    [K_MEM_HOST] = {"memory.host_budget", T_BYTES, "0", 0, NOMAX, 0, NULL, FIELD(memory.host_budget)},
    [K_MEM_DSA] = {"memory.dsa_kv", T_ENUM, "gpu", 0, 0, 0, dsa_tiers, FIELD(memory.dsa_kv)},
    [K_MEM_FULL] = {"memory.full_kv", T_ENUM, "gpu", 0, 0, 0, tiers, FIELD(memory.full_kv)},
    [K_MEM_LINEAR] = {"memory.linear_state", T_ENUM, "gpu", 0, 0, 0, tiers, FIELD(memory.linear_state)},
    [K_MEM_CACHE] = {"memory.cache_tokens", T_INT, "4096", 1, 1 << 24, 0, NULL, FIELD(memory.cache_tokens)},
    [K_MEM_FP8] = {"memory.dsa_kv_fp8", T_BOOL, "false", 0, 0, 0, NULL, FIELD(memory.dsa_kv_fp8)},
    [K_MEM_GPU_SEQS] = {"memory.dsa_gpu_seqs", T_INT, "-1", -1, 65536, 0, NULL, FIELD(memory.dsa_gpu_seqs)},
    [K_EV_TASKS] = {"eval.tasks", T_LIST, "mqar", 0, 0, 0, task_names, FIELD(eval.tasks)},
    [K_EV_LENGTHS] = {"eval.lengths", T_LIST, "256, 1024, 4096", 64, 2147483647.0, 0, NULL, FIELD(eval.lengths)},
    [K_EV_PAIRS] = {"eval.pairs", T_LIST, "32", 1, 2147483647.0, 0, NULL, FIELD(eval.pairs)},
    [K_EV_HOPS] = {"eval.hops", T_LIST, "1, 2, 4", 1, 1024, 0, NULL, FIELD(eval.hops)},
    [K_EV_CHAINS] = {"eval.chains", T_LIST, "0", 0, 2147483647.0, 0, NULL, FIELD(eval.chains)},
    [K_EV_QUERIES] = {"eval.queries", T_INT, "0", 0, 2147483647.0, 0, NULL, FIELD(eval.queries)},
    [K_EV_FORM] = {"eval.form", T_ENUM, "follow", 0, 0, 0, hops_forms, FIELD(eval.form)},
    [K_EV_SHUFFLE] = {"eval.shuffle", T_BOOL, "false", 0, 0, 0, NULL, FIELD(eval.shuffle)},
    [K_EV_POWER] = {"eval.power", T_FLOAT, "0", 0, NOMAX, 0, NULL, FIELD(eval.power)},
    [K_EV_NOISE] = {"eval.noise_vocab", T_INT, "64", 0, 2147483647.0, 0, NULL, FIELD(eval.noise_vocab)},
    [K_EV_VOCAB] = {"eval.vocab", T_INT, "0", 0, 2147483647.0, 0, NULL, FIELD(eval.vocab)},
    [K_EV_SEEDS] = {"eval.seeds", T_INT, "2", 1, 10000, 0, NULL, FIELD(eval.seeds)},
    [K_EV_KINDS] = {"eval.probe.kinds", T_LIST, "full, dsa, kda, gdn, deltanet, gla, mamba2, retnet, linear", 0, 0, 0,
                    kind_names, FIELD(eval.probe.kinds)},
    [K_EV_K] = {"eval.probe.K", T_LIST, "64", 1, 4096, 0, NULL, FIELD(eval.probe.K)},
    [K_EV_TOPK] = {"eval.probe.topk", T_LIST, "64", 1, 2147483647.0, 0, NULL, FIELD(eval.probe.topk)},
    [K_EV_DTYPE] = {"eval.probe.index_dtype", T_ENUM, "fp8", 0, 0, 0, index_dtypes, FIELD(eval.probe.index_dtype)},
    [K_EV_COS] = {"eval.probe.key_cos", T_FLOAT, "0", 0, 1, OPEN_HI, NULL, FIELD(eval.probe.key_cos)},
    [K_EV_DECAY] = {"eval.probe.log_decay", T_FLOAT, "0", -1000, 0, 0, NULL, FIELD(eval.probe.log_decay)},
    [K_EV_ORTHO] = {"eval.probe.orthogonal", T_BOOL, "false", 0, 0, 0, NULL, FIELD(eval.probe.orthogonal)},
    [K_CI_KINDS] = {"eval.circuit.kinds", T_LIST, "full, dsa, swa, kda, gdn, deltanet, gla, mamba2, retnet, linear",
                    0, 0, 0, kind_names, FIELD(eval.circuit.kinds)},
    [K_CI_HOP_KINDS] = {"eval.circuit.hop_kinds", T_LIST, "", 0, 0, LIST_PATTERN, kind_names,
                        FIELD(eval.circuit.hop_kinds)},
    [K_CI_CODE_DIM] = {"eval.circuit.code_dim", T_INT, "64", 1, 128, 0, NULL, FIELD(eval.circuit.code_dim)},
    [K_CI_WINDOW] = {"eval.circuit.window", T_INT, "0", 0, 2147483647.0, 0, NULL, FIELD(eval.circuit.window)},
    [K_CI_TOPK] = {"eval.circuit.topk", T_INT, "0", 0, 1 << 20, 0, NULL, FIELD(eval.circuit.topk)},
    [K_CI_DECAY] = {"eval.circuit.log_decay", T_FLOAT, "0", -1000, 0, 0, NULL, FIELD(eval.circuit.log_decay)},
    [K_CI_DECODE] = {"eval.circuit.decode", T_BOOL, "false", 0, 0, 0, NULL, FIELD(eval.circuit.decode)},
    [K_TR_STEPS] = {"train.steps", T_INT, "1000", 1, 2147483647.0, 0, NULL, FIELD(train.steps)},
    [K_TR_BATCH] = {"train.batch", T_INT, "16", 1, 65536, 0, NULL, FIELD(train.batch)},
    [K_TR_LR] = {"train.lr", T_FLOAT, "1e-3", 0, 10, OPEN_LO, NULL, FIELD(train.lr)},
    [K_TR_MIN_LR] = {"train.min_lr_ratio", T_FLOAT, "0.1", 0, 1, 0, NULL, FIELD(train.min_lr_ratio)},
    [K_TR_WARMUP] = {"train.warmup", T_INT, "100", 0, 2147483647.0, 0, NULL, FIELD(train.warmup)},
    [K_TR_WD] = {"train.weight_decay", T_FLOAT, "0.1", 0, 100, 0, NULL, FIELD(train.weight_decay)},
    [K_TR_BETA1] = {"train.beta1", T_FLOAT, "0.9", 0, 1, OPEN_HI, NULL, FIELD(train.beta1)},
    [K_TR_BETA2] = {"train.beta2", T_FLOAT, "0.95", 0, 1, OPEN_HI, NULL, FIELD(train.beta2)},
    [K_TR_EPS] = {"train.eps", T_FLOAT, "1e-8", 0, 1, OPEN_LO, NULL, FIELD(train.eps)},
    [K_TR_CLIP] = {"train.clip", T_FLOAT, "1", 0, NOMAX, 0, NULL, FIELD(train.clip)},
    [K_TR_EVAL] = {"train.eval_every", T_INT, "100", 0, 2147483647.0, 0, NULL, FIELD(train.eval_every)},
    [K_TR_CKPT] = {"train.checkpoint_every", T_INT, "500", 0, 2147483647.0, 0, NULL, FIELD(train.checkpoint_every)},
    [K_TR_LOG] = {"train.log_every", T_INT, "10", 1, 2147483647.0, 0, NULL, FIELD(train.log_every)},
    [K_TR_IDX_WARMUP] = {"train.indexer_warmup", T_INT, "0", 0, 2147483647.0, 0, NULL, FIELD(train.indexer_warmup)},
    [K_TR_EVAL_LENGTHS] = {"train.eval_lengths", T_LIST, "", 64, 2147483647.0, LIST_OPTIONAL, NULL,
                           FIELD(train.eval_lengths)},
    [K_TR_LENGTHS] = {"train.lengths", T_LIST, "", 64, 2147483647.0, LIST_ZIP, NULL, FIELD(train.lengths)},
    [K_TR_PAIRS] = {"train.pairs", T_LIST, "", 1, 2147483647.0, LIST_ZIP, NULL, FIELD(train.pairs)},
    [K_TR_MATMUL] = {"train.matmul", T_ENUM, "f32", 0, 0, 0, matmul_dtypes, FIELD(train.matmul)},
    [K_TR_STATE_CKPT] = {"train.state_checkpoint", T_INT, "0", 0, 2147483647.0, 0, NULL,
                         FIELD(train.state_checkpoint)},
    [K_TR_LINEAR_CHUNK] = {"train.linear_chunk", T_INT, "0", 0, 2147483647.0, 0, NULL, FIELD(train.linear_chunk)},
    [K_SWEEP] = {"sweep", T_SWEEP, NULL, 0, 0, 0, NULL, 0, 0},
};

static int find_spec(const char *path) {
    for (int i = 0; i < NKEYS; i++)
        if (strcmp(specs[i].path, path) == 0) return i;
    return -1;
}

/* The first key under section `path`, or -1 when `path` is not a section. */
static int first_under(const char *path) {
    size_t n = strlen(path);
    for (int i = 0; i < NKEYS; i++)
        if (strncmp(specs[i].path, path, n) == 0 && specs[i].path[n] == '.') return i;
    return -1;
}

/* The key (or section) names directly under `prefix` ("" for the top level), without repeats. */
static int names_under(const char *prefix, const char *out[NKEYS], char buf[NKEYS][64]) {
    size_t n = strlen(prefix);
    int k = 0;
    for (int i = 0; i < NKEYS; i++) {
        const char *p = specs[i].path;
        if (n && (strncmp(p, prefix, n) != 0 || p[n] != '.')) continue;
        p += n ? n + 1 : 0;
        size_t len = strcspn(p, ".");
        snprintf(buf[k], 64, "%.*s", (int)len, p);
        bool seen = false;
        for (int j = 0; j < k; j++) seen |= strcmp(out[j], buf[k]) == 0;
        if (!seen) out[k] = buf[k], k++;
    }
    return k;
}

/* ---------------------------------------------------------------- scalars */

static bool is_int(const char *t) {
    if (*t == '+' || *t == '-') t++;
    if (!isdigit((unsigned char)*t)) return false;
    while (isdigit((unsigned char)*t)) t++;
    return *t == '\0';
}

/* YAML 1.2 core decimal floats (no .inf/.nan: every float here is finite). */
static bool is_float(const char *t) {
    bool digits = false;
    if (*t == '+' || *t == '-') t++;
    while (isdigit((unsigned char)*t)) t++, digits = true;
    if (*t == '.')
        for (t++; isdigit((unsigned char)*t); t++) digits = true;
    if (!digits) return false;
    if (*t == 'e' || *t == 'E') {
        t++;
        if (*t == '+' || *t == '-') t++;
        if (!isdigit((unsigned char)*t)) return false;
        while (isdigit((unsigned char)*t)) t++;
    }
    return *t == '\0';
}

static void range_str(const key_spec *s, char *buf, size_t cap) {
    if (s->type == T_FLOAT && isinf(s->hi)) snprintf(buf, cap, "%s %g", s->open & OPEN_LO ? ">" : ">=", s->lo);
    else if (s->type == T_FLOAT)
        snprintf(buf, cap, "%c%g, %g%c", s->open & OPEN_LO ? '(' : '[', s->lo, s->hi, s->open & OPEN_HI ? ')' : ']');
    else if (isinf(s->hi)) snprintf(buf, cap, ">= %.0f", s->lo);
    else snprintf(buf, cap, "%.0f..%.0f", s->lo, s->hi);
}

/* Bytes: an integer, or an integer with a suffix (K/KiB = 1024, KB = 1000, and so on up to T). */
static bool parse_bytes(const char *t, int64_t *out, bool *overflow) {
    static const struct { const char *s; int64_t mul; } sfx[] = {
        {"", 1}, {"K", 1ll << 10}, {"M", 1ll << 20}, {"G", 1ll << 30}, {"T", 1ll << 40},
        {"KiB", 1ll << 10}, {"MiB", 1ll << 20}, {"GiB", 1ll << 30}, {"TiB", 1ll << 40},
        {"KB", 1000ll}, {"MB", 1000000ll}, {"GB", 1000000000ll}, {"TB", 1000000000000ll},
    };
    *overflow = false;
    if (*t == '+') t++;
    if (!isdigit((unsigned char)*t)) return false;
    int64_t v = 0;
    for (; isdigit((unsigned char)*t); t++) {
        if (v > (INT64_MAX - 9) / 10) *overflow = true;
        else v = v * 10 + (*t - '0');
    }
    while (*t == ' ') t++;
    for (size_t i = 0; i < sizeof sfx / sizeof sfx[0]; i++) {
        if (strcmp(t, sfx[i].s) != 0) continue;
        if (v > INT64_MAX / sfx[i].mul) *overflow = true;
        *out = *overflow ? 0 : v * sfx[i].mul;
        return true;
    }
    return false;
}

static void store_int(void *dst, size_t size, int64_t v) {
    if (size == sizeof(int64_t)) memcpy(dst, &v, sizeof v);
    else {
        int32_t w = (int32_t)v;
        HAE_ASSERT(size == sizeof w);
        memcpy(dst, &w, sizeof w);
    }
}

static int64_t load_int(const void *src, size_t size) {
    if (size == sizeof(int64_t)) {
        int64_t v;
        memcpy(&v, src, sizeof v);
        return v;
    }
    int32_t w;
    memcpy(&w, src, sizeof w);
    return w;
}

static void join(const char *const *names, char *buf, size_t cap) {
    size_t k = 0;
    buf[0] = '\0';
    for (int i = 0; names[i] && k < cap; i++) k += (size_t)snprintf(buf + k, cap - k, "%s%s", i ? ", " : "", names[i]);
}

/* One item of a list key: a name of s->names (its index), or an integer in s's range with an optional K, M or G
 * suffix (x 2^10, 2^20, 2^30). */
static hae_status list_item(const ctx *c, const key_spec *s, const node *at, const char *path, const char *t,
                            int64_t *v) {
    if (s->names) {
        int n = 0;
        while (s->names[n] && strcmp(s->names[n], t) != 0) n++;
        if (s->names[n]) return *v = n, HAE_OK;
        while (s->names[n]) n++;
        char sug[512];
        suggest(t, s->names, n, sug, sizeof sug);
        return fail(c, at, path, "unknown value '%s'%s", t, sug);
    }
    static const char units[] = "KMG";
    char num[HAE_NAME_MAX], r[64];
    size_t len = strlen(t);
    const char *unit = len > 1 ? strchr(units, t[len - 1]) : NULL;
    int shift = unit ? 10 * (int)(unit - units + 1) : 0;
    snprintf(num, sizeof num, "%.*s", (int)(len - (shift ? 1 : 0)), t);
    if (!is_int(num)) return fail(c, at, path, "expected an integer (a K, M or G suffix: x 2^10, 2^20, 2^30), got '%s'", t);
    range_str(s, r, sizeof r);
    errno = 0;
    long long x = strtoll(num, NULL, 10);
    if (errno == ERANGE || x < 0 || x > (LLONG_MAX >> shift) || (double)(x << shift) < s->lo ||
        (double)(x << shift) > s->hi)
        return fail(c, at, path, "%s is out of range (expected %s)", t, r);
    *v = (int64_t)(x << shift);
    return HAE_OK;
}

/* A list key: a YAML list, or a plain scalar of comma-separated items ("256, 1024", --set eval.lengths=256,1024);
 * at most HAE_EVAL_MAX_VALUES items, distinct and at least one unless the key is a LIST_PATTERN. */
static hae_status convert_list(const ctx *c, const key_spec *s, const node *n, void *dst) {
    char d[128], path[600], item[HAE_NAME_MAX];
    const bool seq = s->open & LIST_PATTERN, repeats = s->open & (LIST_PATTERN | LIST_ZIP | LIST_REPEATS),
               may_be_empty = repeats || (s->open & LIST_OPTIONAL);
    if (n->type == N_MAP || (n->type == N_SCALAR && (!n->plain || (!n->text[0] && !may_be_empty))))
        return fail(c, n, s->path, "expected a list such as [%s], got %s", seq ? "full, dsa" : s->def,
                    desc(n, d, sizeof d));
    hae_eval_list l = {0};
    const char *p = n->type == N_SCALAR ? n->text : "";
    for (int i = 0; n->type == N_SEQ ? i < n->n : *p != '\0'; i++) {
        const node *at = n->type == N_SEQ ? n->vals[i] : n;
        snprintf(path, sizeof path, "%s[%d]", s->path, i);
        if (n->type == N_SEQ) {
            if (at->type != N_SCALAR || !at->plain)
                return fail(c, at, path, "expected %s, got %s", s->names ? "a name" : "an integer", desc(at, d, sizeof d));
            snprintf(item, sizeof item, "%s", at->text);
        } else {
            size_t len = strcspn(p, ",");
            const char *a = p, *e = p + len;
            while (a < e && *a == ' ') a++;
            while (e > a && e[-1] == ' ') e--;
            snprintf(item, sizeof item, "%.*s", (int)(e - a), a);
            p += len + (p[len] == ',');
        }
        if (l.n == HAE_EVAL_MAX_VALUES) return fail(c, at, s->path, "more than %d values", HAE_EVAL_MAX_VALUES);
        int64_t v = 0;
        HAE_TRY(list_item(c, s, at, path, item, &v));
        for (int j = 0; j < l.n && !repeats; j++)
            if (l.v[j] == v) return fail(c, at, path, "'%s' is listed twice", item);
        l.v[l.n++] = v;
    }
    if (l.n == 0 && !may_be_empty) return fail(c, n, s->path, "expected a non-empty list such as [%s]", s->def);
    memcpy(dst, &l, sizeof l);
    return HAE_OK;
}

/* Converts one scalar value of key s into the config field at dst. */
static hae_status convert(const ctx *c, const key_spec *s, const node *n, void *dst) {
    static const char *const what[] = {
        [T_INT] = "an integer", [T_U64] = "a non-negative integer", [T_FLOAT] = "a number",
        [T_BOOL] = "true or false", [T_STR] = "a string", [T_NAME] = "a name",
        [T_ENUM] = "a name", [T_BYTES] = "a byte size (an integer, or e.g. 512MiB, 8GiB)",
    };
    char d[128], r[64];
    const char *p = s->path, *t = n->text;
    if (s->type == T_LIST) return convert_list(c, s, n, dst);
    if (n->type != N_SCALAR) return fail(c, n, p, "expected %s, got %s", what[s->type], desc(n, d, sizeof d));
    range_str(s, r, sizeof r);
    switch (s->type) {
    case T_INT: {
        if (!n->plain || !is_int(t)) return fail(c, n, p, "expected an integer, got %s", desc(n, d, sizeof d));
        errno = 0;
        long long v = strtoll(t, NULL, 10);
        if (errno == ERANGE) return fail(c, n, p, "integer overflow: %s does not fit in 64 bits (expected %s)", t, r);
        if ((double)v < s->lo || (double)v > s->hi) return fail(c, n, p, "%s is out of range (expected %s)", t, r);
        store_int(dst, s->size, v);
        return HAE_OK;
    }
    case T_U64: {
        if (!n->plain || !is_int(t) || t[0] == '-')
            return fail(c, n, p, "expected a non-negative integer, got %s", desc(n, d, sizeof d));
        errno = 0;
        unsigned long long v = strtoull(t, NULL, 10);
        if (errno == ERANGE)
            return fail(c, n, p, "integer overflow: %s does not fit in 64 bits (expected 0..2^64-1)", t);
        uint64_t u = v;
        memcpy(dst, &u, sizeof u);
        return HAE_OK;
    }
    case T_FLOAT: {
        if (!n->plain || !is_float(t)) return fail(c, n, p, "expected a number, got %s", desc(n, d, sizeof d));
        float f = (float)strtod(t, NULL);
        if (!isfinite(f)) return fail(c, n, p, "%s is too large for a 32-bit float (expected %s)", t, r);
        bool low = (s->open & OPEN_LO) ? f <= s->lo : f < s->lo, high = (s->open & OPEN_HI) ? f >= s->hi : f > s->hi;
        if (low || high) return fail(c, n, p, "%s is out of range (expected %s)", t, r);
        memcpy(dst, &f, sizeof f);
        return HAE_OK;
    }
    case T_BOOL: {
        bool v = strcmp(t, "true") == 0;
        if (!n->plain || (!v && strcmp(t, "false") != 0))
            return fail(c, n, p, "expected true or false, got %s", desc(n, d, sizeof d));
        memcpy(dst, &v, sizeof v);
        return HAE_OK;
    }
    case T_NAME:
        if (!t[0] || strspn(t, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") != strlen(t))
            return fail(c, n, p, "expected a name of letters, digits, '.', '_' and '-', got %s", desc(n, d, sizeof d));
        /* fall through */
    case T_STR:
        if (!t[0]) return fail(c, n, p, "expected a non-empty string, got %s", desc(n, d, sizeof d));
        if (strlen(t) >= s->size) return fail(c, n, p, "longer than %zu characters", s->size - 1);
        memcpy(dst, t, strlen(t) + 1);
        return HAE_OK;
    case T_ENUM: {
        int k = 0;
        while (s->names[k] && strcmp(s->names[k], t) != 0) k++;
        if (!s->names[k]) { /* the names are few: list them all */
            char all[128];
            join(s->names, all, sizeof all);
            return fail(c, n, p, "'%s' is not allowed (expected one of: %s)", t, all);
        }
        store_int(dst, s->size, k);
        return HAE_OK;
    }
    case T_BYTES: {
        int64_t v;
        bool over;
        if (t[0] == '-' && parse_bytes(t + 1, &v, &over)) return fail(c, n, p, "%s is out of range (expected >= 0)", t);
        if (!parse_bytes(t, &v, &over))
            return fail(c, n, p, "expected %s, got %s", what[T_BYTES], desc(n, d, sizeof d));
        if (over) return fail(c, n, p, "integer overflow: %s does not fit in 63 bits", t);
        memcpy(dst, &v, sizeof v);
        return HAE_OK;
    }
    default: break;
    }
    HAE_ASSERT(s->type <= T_BYTES); /* layouts and the sweep are not scalars */
    return HAE_ERR_INVALID;
}

/* ---------------------------------------------------------------- building a config */

typedef struct bindings {
    const node *n[NKEYS]; /* the value node of each key; NULL: the default */
    bool swept[NKEYS];    /* the node is a sweep value (building a job) */
} bindings;

static const char *dflt(const bindings *b, int k) { return b->n[k] ? "" : " (default)"; }

/* Binds every key of mapping m (at `prefix`) to its schema entry; unknown keys fail here. */
static hae_status walk(const ctx *c, const node *m, const char *prefix, bindings *b) {
    for (int i = 0; i < m->n; i++) {
        const node *key = m->keys[i], *val = m->vals[i];
        char path[512], d[128];
        snprintf(path, sizeof path, "%s%s%s", prefix, prefix[0] ? "." : "", key->text);
        if (strchr(key->text, '.'))
            return fail(c, key, path, "keys cannot contain '.' outside sweep (nest them: model: {d_model: 512})");
        int k = find_spec(path);
        if (k >= 0) {
            b->n[k] = val;
        } else if (first_under(path) >= 0) {
            if (val->type != N_MAP) return fail(c, val, path, "expected a mapping, got %s", desc(val, d, sizeof d));
            HAE_TRY(walk(c, val, path, b));
        } else {
            const char *names[NKEYS];
            char buf[NKEYS][64], sug[512];
            int n = names_under(prefix, names, buf);
            suggest(key->text, names, n, sug, sizeof sug);
            return fail(c, key, path, "unknown key%s", sug);
        }
    }
    return HAE_OK;
}

static hae_status parse_kind(const ctx *c, const node *n, const char *path, hae_layer_kind *out) {
    char d[128], built[128] = "";
    for (int k = 0; k < HAE_LAYER_KIND_COUNT; k++)
        if (hae_layer_kind_built((hae_layer_kind)k))
            snprintf(built + strlen(built), sizeof built - strlen(built), "%s%s", built[0] ? ", " : "", kind_names[k]);
    if (n->type != N_SCALAR) return fail(c, n, path, "expected a layer kind (%s), got %s", built, desc(n, d, sizeof d));
    for (int k = 0; k < HAE_LAYER_KIND_COUNT; k++) {
        if (strcmp(n->text, kind_names[k]) != 0) continue;
        if (!hae_layer_kind_built((hae_layer_kind)k))
            return fail(c, n, path, "layer kind '%s' is not built yet (built: %s)", n->text, built);
        *out = (hae_layer_kind)k;
        return HAE_OK;
    }
    char sug[256];
    suggest(n->text, kind_names, HAE_LAYER_KIND_COUNT, sug, sizeof sug);
    return fail(c, n, path, "unknown layer kind '%s'%s (built: %s)", n->text, sug, built);
}

/* model.layers: kind -> indices, every layer exactly once. */
static hae_status resolve_layer_map(const ctx *c, const bindings *b, const node *m, hae_config *cfg) {
    int64_t n = cfg->model.n_layers;
    char d[128], l[HAE_PATH_MAX + 64];
    if (m->type != N_MAP || m->n == 0)
        return fail(c, m, "model.layers", "expected a mapping from layer kind to layer indices, e.g. "
                    "{full: [3], swa: [0, 1, 2]}, got %s", desc(m, d, sizeof d));
    const node *owner[HAE_MAX_LAYERS] = {0};
    for (int i = 0; i < m->n; i++) {
        char path[512];
        snprintf(path, sizeof path, "model.layers.%s", m->keys[i]->text);
        hae_layer_kind kind;
        HAE_TRY(parse_kind(c, m->keys[i], path, &kind));
        const node *idx = m->vals[i];
        if (idx->type != N_SEQ)
            return fail(c, idx, path, "expected a list of layer indices, got %s", desc(idx, d, sizeof d));
        for (int j = 0; j < idx->n; j++) {
            const node *it = idx->vals[j];
            char ip[560];
            snprintf(ip, sizeof ip, "%s[%d]", path, j);
            if (it->type != N_SCALAR || !it->plain || !is_int(it->text))
                return fail(c, it, ip, "expected a layer index, got %s", desc(it, d, sizeof d));
            errno = 0;
            long long v = strtoll(it->text, NULL, 10);
            if (errno == ERANGE || v < 0 || v >= n)
                return fail(c, it, ip,
                            "layer index %s is out of range (n_layers %" PRId64 "%s: expected 0..%" PRId64 ")",
                            it->text, n, dflt(b, K_N_LAYERS), n - 1);
            if (owner[v])
                return fail(c, it, ip, "layer %lld is listed twice (first at %s)", v, loc(owner[v], l, sizeof l));
            owner[v] = it;
            cfg->model.layers[v] = kind;
        }
    }
    for (int64_t i = 0; i < n; i++)
        if (!owner[i])
            return fail(c, m, "model.layers",
                        "layer %" PRId64 " has no kind (each of the n_layers %" PRId64 "%s layers "
                        "0..%" PRId64 " must be listed exactly once)",
                        i, n, dflt(b, K_N_LAYERS), n - 1);
    return HAE_OK;
}

static hae_status resolve_layers(const ctx *c, const bindings *b, hae_config *cfg) {
    const node *pat = b->n[K_PATTERN], *map = b->n[K_LAYERS];
    char d[128], l[HAE_PATH_MAX + 64];
    if (pat && map)
        return fail(c, map, "model.layers", "give model.layer_pattern or model.layers, not both (layer_pattern at %s)",
                    loc(pat, l, sizeof l));
    if (map) return resolve_layer_map(c, b, map, cfg);
    if (!pat) return HAE_OK; /* every layer full (HAE_LAYER_FULL is 0) */
    if (pat->type != N_SEQ || pat->n == 0)
        return fail(c, pat, "model.layer_pattern",
                    "expected a non-empty list of layer kinds, e.g. [swa, swa, swa, full], "
                    "got %s",
                    desc(pat, d, sizeof d));
    if (pat->n > HAE_MAX_LAYERS)
        return fail(c, pat, "model.layer_pattern", "%d entries, more than HAE_MAX_LAYERS (%d)", pat->n, HAE_MAX_LAYERS);
    hae_layer_kind kinds[HAE_MAX_LAYERS];
    for (int i = 0; i < pat->n; i++) {
        char path[64];
        snprintf(path, sizeof path, "model.layer_pattern[%d]", i);
        HAE_TRY(parse_kind(c, pat->vals[i], path, &kinds[i]));
    }
    for (int64_t i = 0; i < cfg->model.n_layers; i++) cfg->model.layers[i] = kinds[i % pat->n];
    return HAE_OK;
}

/* A rule between keys: blame a swept value first (a job's combination is what is new), else a key
 * the file sets, else the first key as a default. */
static hae_status cross_fail(const ctx *c, const bindings *b, const int *keys, int n, const char *msg) {
    int k = -1;
    for (int i = 0; i < n && k < 0; i++)
        if (b->swept[keys[i]]) k = keys[i];
    for (int i = 0; i < n && k < 0; i++)
        if (b->n[keys[i]]) k = keys[i];
    if (k < 0) k = keys[0];
    return fail(c, b->n[k], specs[k].path, "%s", msg);
}

/* The eval section, when it differs from the defaults (which any model may leave unused, and which `hae eval`
 * checks against the model before it runs; a config written back out, defaults included, is read back the
 * same): f16 ranks nothing; swa is not probed and dsa probes take K <= 128, the indexer's head dim; every
 * task of the grid can be generated (lengths, vocabulary room), checked on seed 1 without generating. */
static hae_status eval_checks(const ctx *c, const bindings *b, const hae_config *cfg) {
    hae_config *def = calloc(1, sizeof *def);
    if (!def) return oom();
    hae_status st = HAE_OK;
    for (int k = K_EV_TASKS; k <= K_CI_DECODE && st == HAE_OK; k++) {
        node n = {.type = N_SCALAR, .plain = true, .text = (char *)specs[k].def, .src = c->src};
        st = convert(c, &specs[k], &n, (char *)def + specs[k].off);
    }
    bool same = st == HAE_OK && memcmp(&def->eval, &cfg->eval, sizeof cfg->eval) == 0;
    free(def);
    if (st != HAE_OK || same) return st;
    const hae_eval_list *kinds = &cfg->eval.probe.kinds, *K = &cfg->eval.probe.K;
    if (cfg->eval.probe.index_dtype == HAE_F16)
        return cross_fail(c, b, (const int[]){K_EV_DTYPE}, 1, "'f16' is not allowed (expected one of: fp8, bf16, f32)");
    int64_t max_k = 0;
    bool dsa = false;
    for (int i = 0; i < K->n; i++) max_k = K->v[i] > max_k ? K->v[i] : max_k;
    for (int i = 0; i < kinds->n; i++) {
        if (kinds->v[i] == HAE_LAYER_SWA)
            return cross_fail(c, b, (const int[]){K_EV_KINDS}, 1, "swa is not probed (probes: full, dsa and the linear kinds)");
        dsa |= kinds->v[i] == HAE_LAYER_DSA;
    }
    char m[1024];
    if (dsa && max_k > 128) {
        snprintf(m, sizeof m, "K %" PRId64 " exceeds 128, the head dim of the dsa probe's indexer", max_k);
        return cross_fail(c, b, (const int[]){K_EV_K, K_EV_KINDS}, 2, m);
    }
    hae_eval_point *pt = NULL;
    int64_t n = 0;
    st = hae_eval_grid(cfg, &pt, &n);
    for (int64_t i = 0; st == HAE_OK && i < n; i++) st = hae_eval_task(cfg, &pt[i], 1, NULL);
    free(pt);
    if (st == HAE_OK || st == HAE_ERR_OOM) return st;
    snprintf(m, sizeof m, "%s", hae_last_error());
    /* blame what an override set before what the file set */
    static const int grid[] = {K_EV_LENGTHS, K_EV_PAIRS, K_EV_CHAINS, K_EV_HOPS, K_EV_QUERIES, K_EV_VOCAB, K_EV_NOISE,
                               K_EV_TASKS};
    int keys[8], k = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < 8; i++)
            if ((b->n[grid[i]] && b->n[grid[i]]->line == 0) == (pass == 0)) keys[k++] = grid[i];
    return cross_fail(c, b, keys, 8, m);
}

static hae_status cross_checks(const ctx *c, const bindings *b, const hae_config *cfg) {
    char m[512];
    if (cfg->model.attention.form == HAE_ATTN_MLA) {
        const int64_t r = cfg->model.attention.qk_rope_head_dim;
        if (cfg->model.attention.rope == HAE_ROPE_PARTIAL) {
            snprintf(m, sizeof m, "rope 'partial' does not apply to form 'mla'%s, which rotates its qk_rope_head_dim "
                     "dims (rope 'full') or none of them (rope 'none')", dflt(b, K_FORM));
            return cross_fail(c, b, (const int[]){K_ROPE, K_FORM}, 2, m);
        }
        if (cfg->model.attention.rope == HAE_ROPE_FULL && r % 2) {
            snprintf(m, sizeof m, "qk_rope_head_dim %" PRId64 "%s must be even with rope 'full'%s, as RoPE rotates "
                     "pairs", r, dflt(b, K_MLA_ROPE), dflt(b, K_ROPE));
            return cross_fail(c, b, (const int[]){K_MLA_ROPE, K_ROPE}, 2, m);
        }
    }
    const int64_t heads = cfg->model.attention.num_heads, kv = cfg->model.attention.num_kv_heads,
                  hd = cfg->model.attention.head_dim;
    const hae_rope_mode rope = cfg->model.attention.rope;
    const float factor = cfg->model.attention.partial_rotary_factor;
    const bool gqa = cfg->model.attention.form == HAE_ATTN_GQA; /* mla uses neither num_kv_heads nor head_dim */
    if (gqa && heads % kv) {
        snprintf(m, sizeof m, "num_heads %" PRId64 "%s is not a multiple of num_kv_heads %" PRId64 "%s", heads,
                 dflt(b, K_HEADS), kv, dflt(b, K_KV_HEADS));
        return cross_fail(c, b, (const int[]){K_KV_HEADS, K_HEADS}, 2, m);
    }
    if (gqa && rope == HAE_ROPE_FULL && hd % 2) {
        snprintf(m, sizeof m, "head_dim %" PRId64 "%s must be even with rope 'full'%s, as RoPE rotates pairs", hd,
                 dflt(b, K_HEAD_DIM), dflt(b, K_ROPE));
        return cross_fail(c, b, (const int[]){K_HEAD_DIM, K_ROPE}, 2, m);
    }
    if (gqa && rope == HAE_ROPE_PARTIAL) {
        long rot = lround((double)hd * (double)factor);
        if (rot < 2 || rot % 2) {
            snprintf(m, sizeof m, "rope 'partial' rotates round(head_dim %" PRId64 "%s x partial_rotary_factor %g%s) = "
                     "%ld dims (expected an even number >= 2)", hd, dflt(b, K_HEAD_DIM),
                     (double)factor, dflt(b, K_PARTIAL), rot);
            return cross_fail(c, b, (const int[]){K_PARTIAL, K_HEAD_DIM, K_ROPE}, 3, m);
        }
    }
    const int64_t lh = cfg->model.linear_attn.num_heads, lhv = cfg->model.linear_attn.num_v_heads,
                  lk = cfg->model.linear_attn.head_dim, chunk = cfg->model.linear_attn.chunk_size;
    if (lhv > 0 && lhv % lh) {
        snprintf(m, sizeof m, "num_v_heads %" PRId64 "%s is not a multiple of num_heads %" PRId64 "%s (each value "
                 "head reads one q/k head)", lhv, dflt(b, K_LA_VHEADS), lh, dflt(b, K_LA_HEADS));
        return cross_fail(c, b, (const int[]){K_LA_VHEADS, K_LA_HEADS}, 2, m);
    }
    double lv = (double)lk * (double)cfg->model.linear_attn.expand_v;
    if (lv != floor(lv) || lv < 1 || lv > 256) {
        snprintf(m, sizeof m, "head_dim %" PRId64 "%s x expand_v %g%s = %g is not a whole head_v_dim in 1..256", lk,
                 dflt(b, K_LA_HEAD_DIM), (double)cfg->model.linear_attn.expand_v, dflt(b, K_LA_EXPAND_V), lv);
        return cross_fail(c, b, (const int[]){K_LA_EXPAND_V, K_LA_HEAD_DIM}, 2, m);
    }
    const int64_t irope = cfg->model.dsa.index_rope_dim;
    if (irope % 2) {
        snprintf(m, sizeof m, "index_rope_dim %" PRId64 " must be even (RoPE rotates pairs)", irope);
        return cross_fail(c, b, (const int[]){K_DSA_ROPE}, 1, m);
    }
    if (chunk & (chunk - 1)) {
        snprintf(m, sizeof m, "chunk_size %" PRId64 " must be 16, 32, 64 or 128", chunk);
        return cross_fail(c, b, (const int[]){K_LA_CHUNK}, 1, m);
    }
    /* The sparse kernel reads a step's picked tokens from the GPU cache: it must hold all top-k of them. */
    bool dsa = false, dense = false; /* dense: a full or swa layer */
    for (int64_t l = 0; l < cfg->model.n_layers; l++) {
        dsa |= cfg->model.layers[l] == HAE_LAYER_DSA;
        dense |= cfg->model.layers[l] == HAE_LAYER_FULL || cfg->model.layers[l] == HAE_LAYER_SWA;
    }
    const int64_t slots = cfg->memory.cache_tokens, topk = cfg->model.dsa.index_topk;
    if (dsa && cfg->memory.dsa_kv != HAE_TIER_GPU && slots < topk) {
        snprintf(m, sizeof m, "cache_tokens %" PRId64 "%s is below model.dsa.index_topk %" PRId64 "%s: with dsa_kv "
                 "'%s' the GPU cache must hold every token one step picks", slots, dflt(b, K_MEM_CACHE), topk,
                 dflt(b, K_DSA_TOPK), hae_tier_name(cfg->memory.dsa_kv));
        return cross_fail(c, b, (const int[]){K_MEM_CACHE, K_DSA_TOPK, K_MEM_DSA}, 3, m);
    }
    /* A batch split between the tiers is dsa_kv host's (auto finds the split itself). */
    if (cfg->memory.dsa_gpu_seqs >= 0) {
        const int64_t n = cfg->memory.dsa_gpu_seqs, batch = cfg->runtime.batch;
        if (!dsa)
            snprintf(m, sizeof m, "dsa_gpu_seqs %" PRId64 " places dsa layers' K/V and model.layers has no dsa layer", n);
        else if (cfg->memory.dsa_kv != HAE_TIER_HOST)
            snprintf(m, sizeof m, "dsa_gpu_seqs %" PRId64 " keeps sequences of the host tier on the GPU; dsa_kv is '%s'%s "
                     "(set dsa_kv: host, or leave dsa_gpu_seqs out: auto finds the split itself)", n,
                     hae_tier_name(cfg->memory.dsa_kv), dflt(b, K_MEM_DSA));
        else if (n > batch)
            snprintf(m, sizeof m, "dsa_gpu_seqs %" PRId64 " exceeds runtime.batch %" PRId64 "%s", n, batch, dflt(b, K_BATCH));
        if (!dsa || cfg->memory.dsa_kv != HAE_TIER_HOST || n > batch)
            return cross_fail(c, b, (const int[]){K_MEM_GPU_SEQS, K_MEM_DSA, K_BATCH}, 3, m);
    }
    /* Decode micro-batches: sizes that add up to the batch; more than one shares no staged layer. */
    if (cfg->runtime.micro_batches.n > 0) {
        const hae_eval_list *mb = &cfg->runtime.micro_batches;
        int64_t sum = 0;
        for (int i = 0; i < mb->n; i++) sum += mb->v[i];
        if (sum != cfg->runtime.batch) {
            snprintf(m, sizeof m, "micro_batches add up to %" PRId64 " sequences and runtime.batch is %" PRId64 "%s",
                     sum, cfg->runtime.batch, dflt(b, K_BATCH));
            return cross_fail(c, b, (const int[]){K_MICRO, K_BATCH}, 2, m);
        }
        if (mb->n > HAE_MICRO_MAX) {
            snprintf(m, sizeof m, "micro_batches lists %d micro-batches (at most %d)", mb->n, HAE_MICRO_MAX);
            return cross_fail(c, b, (const int[]){K_MICRO}, 1, m);
        }
        if (mb->n > 1 && dense && cfg->memory.full_kv == HAE_TIER_HOST) {
            snprintf(m, sizeof m, "micro_batches: memory.full_kv host streams the whole batch's context at every step, "
                     "which micro-batches cannot share (keep full_kv on the GPU, or list one micro-batch [%" PRId64 "])",
                     cfg->runtime.batch);
            return cross_fail(c, b, (const int[]){K_MICRO, K_MEM_FULL}, 2, m);
        }
    }
    /* The FP8 layouts (hae.h): mla's is DeepSeek-V3.2's token, 512 latent dims in e4m3 and 64 rope dims in bf16;
     * gqa's stores each kv head's dims in e4m3 with a scale per 128. Read by the sparse attention only (full and
     * swa layers keep the run's dtype). */
    if (cfg->memory.dsa_kv_fp8) {
        const bool mla = cfg->model.attention.form == HAE_ATTN_MLA;
        const int64_t lora = cfg->model.attention.kv_lora_rank, rd = cfg->model.attention.qk_rope_head_dim;
        const int64_t dim = cfg->model.attention.head_dim;
        if (!dsa) {
            snprintf(m, sizeof m, "dsa_kv_fp8 applies to dsa layers' K/V and model.layers has no dsa layer");
            return cross_fail(c, b, (const int[]){K_MEM_FP8}, 1, m);
        }
        if (mla && (lora != HAE_MLA_LATENT || rd != HAE_MLA_ROPE)) {
            snprintf(m, sizeof m, "dsa_kv_fp8 in the mla form stores mla's FP8 token layout (kv_lora_rank %d + "
                     "qk_rope_head_dim %d); the model has kv_lora_rank %" PRId64 "%s, qk_rope_head_dim %" PRId64 "%s",
                     HAE_MLA_LATENT, HAE_MLA_ROPE, lora, dflt(b, K_MLA_LORA), rd, dflt(b, K_MLA_ROPE));
            /* blame the shape the user wrote, else the switch */
            return cross_fail(c, b, (const int[]){K_MLA_ROPE, K_MLA_LORA, K_MEM_FP8}, 3, m);
        }
        if (!mla && !HAE_FP8_HEAD_DIM_OK(dim)) {
            snprintf(m, sizeof m, "dsa_kv_fp8 in the gqa form stores each kv head in e4m3 with one scale per 128 dims: "
                     "head_dim must be 128, 256, 384 or 512 (got %" PRId64 "%s)", dim, dflt(b, K_HEAD_DIM));
            return cross_fail(c, b, (const int[]){K_HEAD_DIM, K_MEM_FP8}, 2, m);
        }
    }
    if (cfg->train.warmup > cfg->train.steps) {
        snprintf(m, sizeof m, "warmup %" PRId64 "%s exceeds steps %" PRId64 "%s (the learning rate warms up within the "
                 "run)", cfg->train.warmup, dflt(b, K_TR_WARMUP), cfg->train.steps, dflt(b, K_TR_STEPS));
        return cross_fail(c, b, (const int[]){K_TR_WARMUP, K_TR_STEPS}, 2, m);
    }
    if (cfg->train.lengths.n != cfg->train.pairs.n) {
        snprintf(m, sizeof m, "train.lengths has %d items and train.pairs %d: the training mixture pairs them item by "
                 "item", cfg->train.lengths.n, cfg->train.pairs.n);
        return cross_fail(c, b, (const int[]){K_TR_PAIRS, K_TR_LENGTHS}, 2, m);
    }
    /* The chunk form keeps one state per chunk already: nothing for checkpoints to thin out. */
    if (cfg->train.linear_chunk > 0 && cfg->train.state_checkpoint > 0) {
        snprintf(m, sizeof m, "the chunk form (train.linear_chunk %" PRId64 ") keeps one state per chunk already, "
                 "leaving train.state_checkpoint %" PRId64 " nothing to thin out; set one of them to 0",
                 cfg->train.linear_chunk, cfg->train.state_checkpoint);
        return cross_fail(c, b, (const int[]){K_TR_LINEAR_CHUNK, K_TR_STATE_CKPT}, 2, m);
    }
    return eval_checks(c, b, cfg);
}

/* The config of bindings b: defaults, then the bound values, then the layout and the rules. */
static hae_status build(const ctx *c, const bindings *b, hae_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    for (int i = 0; i < NKEYS; i++) {
        const key_spec *s = &specs[i];
        if (!s->def) continue;
        node def = {.type = N_SCALAR, .plain = true, .text = (char *)s->def, .src = c->src};
        HAE_TRY(convert(c, s, b->n[i] ? b->n[i] : &def, (char *)cfg + s->off));
    }
    HAE_TRY(resolve_layers(c, b, cfg));
    HAE_TRY(cross_checks(c, b, cfg));
    snprintf(cfg->source, sizeof cfg->source, "%s", c->src);
    return HAE_OK;
}

/* ---------------------------------------------------------------- YAML out */

typedef struct sbuf {
    char *p;
    size_t n, cap;
    bool oom;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static void sb_printf(sbuf *b, const char *fmt, ...) {
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (k < 0) { b->oom = true; return; }
        if (b->p && b->n + (size_t)k < b->cap) { b->n += (size_t)k; return; }
        size_t cap = b->cap ? b->cap : 1024;
        while (cap <= b->n + (size_t)k) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) { b->oom = true; return; }
        b->p = p, b->cap = cap;
    }
}

static void sb_quoted(sbuf *b, const char *s) {
    sb_printf(b, "\"");
    for (const unsigned char *q = (const unsigned char *)s; *q; q++) {
        if (*q == '"' || *q == '\\') sb_printf(b, "\\%c", *q);
        else if (*q == '\n') sb_printf(b, "\\n");
        else if (*q == '\t') sb_printf(b, "\\t");
        else if (*q < 0x20 || *q == 0x7f) sb_printf(b, "\\x%02x", *q);
        else sb_printf(b, "%c", *q);
    }
    sb_printf(b, "\"");
}

/* A node as one-line flow YAML: plain scalars that are safe in flow context stay plain (so
 * numbers stay numbers), anything else is double-quoted (strings accept either). */
static void sb_flow(sbuf *b, const node *n) {
    if (n->type == N_SCALAR) {
        const char *t = n->text;
        bool safe = n->plain && t[0] && strcmp(t, "-") != 0 &&
                    strspn(t, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._+-/") == strlen(t);
        if (safe) sb_printf(b, "%s", t);
        else sb_quoted(b, t);
        return;
    }
    sb_printf(b, "%s", n->type == N_SEQ ? "[" : "{");
    for (int i = 0; i < n->n; i++) {
        if (i) sb_printf(b, n->type == N_SEQ ? "," : ", ");
        if (n->type == N_MAP) sb_flow(b, n->keys[i]), sb_printf(b, ": ");
        sb_flow(b, n->vals[i]);
    }
    sb_printf(b, "%s", n->type == N_SEQ ? "]" : "}");
}

/* Opens the sections of `next` that `prev` has not opened ("model.attention" after "model"). */
static void open_sections(sbuf *b, const char *prev, const char *next) {
    int depth = 0;
    while (*next) {
        size_t len = strcspn(next, ".");
        bool same = strncmp(prev, next, len) == 0 && (prev[len] == '.' || prev[len] == '\0');
        if (!same) sb_printf(b, "%*s%.*s:\n", 2 * depth, "", (int)len, next);
        prev = same ? prev + len + (prev[len] == '.') : "";
        next += len + (next[len] == '.');
        depth++;
    }
}

static hae_status emit(const hae_config *cfg, bool with_sweep, char **out) {
    sbuf b = {0};
    char section[128] = "";
    for (int i = 0; i < NKEYS; i++) {
        const key_spec *s = &specs[i];
        if (s->type == T_LAYERS || s->type == T_SWEEP) continue;
        const char *dot = strrchr(s->path, '.'), *leaf = dot ? dot + 1 : s->path;
        char parent[128];
        snprintf(parent, sizeof parent, "%.*s", dot ? (int)(dot - s->path) : 0, s->path);
        open_sections(&b, section, parent);
        snprintf(section, sizeof section, "%s", parent);
        int depth = 0;
        for (const char *q = s->path; *q; q++) depth += *q == '.';
        sb_printf(&b, "%*s%s: ", 2 * depth, "", leaf);
        const char *f = (const char *)cfg + s->off;
        switch (s->type) {
        case T_INT:
        case T_BYTES: sb_printf(&b, "%" PRId64, load_int(f, s->size)); break;
        case T_U64: {
            uint64_t v;
            memcpy(&v, f, sizeof v);
            sb_printf(&b, "%" PRIu64, v);
            break;
        }
        case T_FLOAT: {
            float v;
            memcpy(&v, f, sizeof v);
            sb_printf(&b, "%.9g", (double)v); /* 9 significant digits round-trip every float */
            break;
        }
        case T_BOOL: sb_printf(&b, "%s", *(const bool *)f ? "true" : "false"); break;
        case T_STR:
        case T_NAME: sb_quoted(&b, f); break;
        case T_ENUM: {
            int64_t v = load_int(f, s->size), nn = 0;
            while (s->names[nn]) nn++;
            if (v >= 0 && v < nn) sb_printf(&b, "%s", s->names[v]);
            else sb_printf(&b, "%" PRId64, v); /* not a valid config: parsing it back says so */
            break;
        }
        case T_LIST: {
            hae_eval_list l;
            int64_t nn = 0;
            memcpy(&l, f, sizeof l);
            while (s->names && s->names[nn]) nn++;
            sb_printf(&b, "[");
            for (int j = 0; j < l.n && j < HAE_EVAL_MAX_VALUES; j++) {
                if (s->names && l.v[j] >= 0 && l.v[j] < nn) sb_printf(&b, "%s%s", j ? ", " : "", s->names[l.v[j]]);
                else sb_printf(&b, "%s%" PRId64, j ? ", " : "", l.v[j]);
            }
            sb_printf(&b, "]");
            break;
        }
        case T_KINDS:
            sb_printf(&b, "[");
            for (int64_t l = 0; l < cfg->model.n_layers && l < HAE_MAX_LAYERS; l++)
                sb_printf(&b, "%s%s", l ? ", " : "", hae_layer_kind_name(cfg->model.layers[l]));
            sb_printf(&b, "]");
            break;
        default: break;
        }
        sb_printf(&b, "\n");
    }
    if (with_sweep && cfg->sweep.n_axes > 0) {
        sb_printf(&b, "sweep:\n");
        for (int a = 0; a < cfg->sweep.n_axes && a < HAE_MAX_SWEEP_AXES; a++) {
            sb_printf(&b, "  %s: [", cfg->sweep.axes[a].key);
            for (int v = 0; v < cfg->sweep.axes[a].n_values && v < HAE_MAX_SWEEP_VALUES; v++)
                sb_printf(&b, "%s%s", v ? ", " : "", cfg->sweep.axes[a].values[v]);
            sb_printf(&b, "]\n");
        }
    }
    if (b.oom || !b.p) return free(b.p), oom();
    *out = b.p;
    return HAE_OK;
}

hae_status hae_config_to_yaml(const hae_config *cfg, char **out) {
    if (!cfg || !out) return cfg_error(HAE_ERR_INVALID, "hae_config_to_yaml: NULL argument");
    return emit(cfg, true, out);
}

hae_status hae_config_write_yaml(const hae_config *cfg, const char *path) {
    if (!path) return cfg_error(HAE_ERR_INVALID, "hae_config_write_yaml: NULL path");
    char *text = NULL;
    HAE_TRY(hae_config_to_yaml(cfg, &text));
    FILE *f = fopen(path, "wb");
    if (!f) {
        hae_status st = cfg_error(HAE_ERR_IO, "%s: cannot write: %s", path, strerror(errno));
        return free(text), st;
    }
    size_t len = strlen(text);
    bool ok = fwrite(text, 1, len, f) == len;
    int err = errno;
    ok = (fclose(f) == 0) && ok;
    free(text);
    return ok ? HAE_OK : cfg_error(HAE_ERR_IO, "%s: cannot write: %s", path, strerror(err ? err : EIO));
}

/* ---------------------------------------------------------------- overrides */

/* Puts `val` (owned) under `key` in map m: mappings merge key by key, anything else replaces. */
static hae_status map_set(node *m, node *key, node *val) {
    int i = map_find(m, key->text);
    if (i < 0 && node_push(m, key, val)) return HAE_OK;
    if (i < 0) return node_free(key), node_free(val), oom();
    node_free(key);
    node *old = m->vals[i];
    if (old->type != N_MAP || val->type != N_MAP) {
        node_free(old);
        m->vals[i] = val;
        return HAE_OK;
    }
    hae_status st = HAE_OK;
    int k = 0;
    for (; k < val->n && !st; k++) st = map_set(old, val->keys[k], val->vals[k]);
    for (; k < val->n; k++) node_free(val->keys[k]), node_free(val->vals[k]);
    val->n = 0;
    node_free(val);
    return st;
}

/* "a.b.c=value": the value is YAML; missing sections are created. "sweep.<dotted key>" names one
 * sweep axis. Setting model.layers drops model.layer_pattern and the other way round. Nodes of
 * the override point at its text (src == ov), which is how its own nodes are told apart. */
static hae_status apply_override(const ctx *c, node *root, const char *ov) {
    const char *eq = strchr(ov, '=');
    if (!eq || eq == ov)
        return cfg_error(HAE_ERR_INVALID, "--set %s: expected KEY=VALUE, e.g. model.d_model=512", ov);
    char key[512];
    if ((size_t)(eq - ov) >= sizeof key) return cfg_error(HAE_ERR_INVALID, "--set %s: key too long", ov);
    snprintf(key, sizeof key, "%.*s", (int)(eq - ov), ov);
    const char *comp[64];
    int n = 0;
    for (char *p = key; n < 64;) {
        comp[n++] = p;
        if (n == 2 && strcmp(comp[0], "sweep") == 0) break;
        char *dot = strchr(p, '.');
        if (!dot) break;
        *dot = '\0';
        p = dot + 1;
    }
    for (int i = 0; i < n; i++)
        if (!comp[i][0])
            return cfg_error(HAE_ERR_INVALID, "--set %s: empty key component in '%.*s'", ov, (int)(eq - ov), ov);
    node *val = NULL;
    HAE_TRY(read_doc(c, eq + 1, strlen(eq + 1), ov, true, &val));
    if (!val && !(val = node_new(N_SCALAR, ov, 0, 0, ""))) return oom();
    node *m = root;
    for (int i = 0; i < n - 1; i++) {
        int k = map_find(m, comp[i]);
        if (k >= 0 && m->vals[k]->type != N_MAP) node_free(m->vals[k]), m->vals[k] = NULL;
        if (k >= 0 && m->vals[k]) {
            m = m->vals[k];
            continue;
        }
        node *sec = node_new(N_MAP, ov, 0, 0, NULL), *kn = k >= 0 ? NULL : node_new(N_SCALAR, ov, 0, 0, comp[i]);
        if (!sec || (k < 0 && !kn) || (k < 0 && !node_push(m, kn, sec))) {
            node_free(sec), node_free(kn), node_free(val);
            return oom();
        }
        if (k >= 0) m->vals[k] = sec;
        m = sec;
    }
    node *kn = node_new(N_SCALAR, ov, 0, 0, comp[n - 1]);
    if (!kn) return node_free(val), oom();
    HAE_TRY(map_set(m, kn, val));
    /* The layout this override wrote (model.layers, its entries, or a model mapping) wins. */
    int mi = map_find(root, "model");
    node *model = mi >= 0 && root->vals[mi]->type == N_MAP ? root->vals[mi] : NULL;
    int li = model ? map_find(model, "layers") : -1, pi = model ? map_find(model, "layer_pattern") : -1;
    if (li >= 0 && pi >= 0) {
        bool l_new = model->vals[li]->src == ov, p_new = model->vals[pi]->src == ov;
        if (l_new != p_new) map_remove(model, l_new ? "layer_pattern" : "layers");
    }
    return HAE_OK;
}

/* ---------------------------------------------------------------- sweeps */

int hae_config_sweep_jobs(const hae_config *cfg) {
    if (!cfg) return 0;
    int64_t jobs = 1;
    for (int a = 0; a < cfg->sweep.n_axes && a < HAE_MAX_SWEEP_AXES; a++) {
        jobs *= cfg->sweep.axes[a].n_values > 0 ? cfg->sweep.axes[a].n_values : 1;
        if (jobs > INT_MAX) return INT_MAX;
    }
    return (int)jobs;
}

/* Value index of axis a in job j: the first axis varies slowest. */
static int job_value(const hae_config *cfg, int j, int a) {
    for (int k = cfg->sweep.n_axes - 1; k > a; k--) j /= cfg->sweep.axes[k].n_values;
    return j % cfg->sweep.axes[a].n_values;
}

/* "model.d_model=128,runtime.batch=4"; spaces dropped and '/' made '_', as it names a directory. */
static void job_label(const hae_config *cfg, int j, char *out, size_t cap) {
    if (!out || !cap) return;
    size_t k = 0;
    out[0] = '\0';
    for (int a = 0; a < cfg->sweep.n_axes && k + 1 < cap; a++) {
        const char *v = cfg->sweep.axes[a].values[job_value(cfg, j, a)];
        k += (size_t)snprintf(out + k, cap - k, "%s%s=", a ? "," : "", cfg->sweep.axes[a].key);
        for (; *v && k + 1 < cap; v++)
            if (*v != ' ') out[k++] = *v == '/' ? '_' : *v;
        out[k < cap ? k : cap - 1] = '\0';
    }
}

hae_status hae_config_sweep_job(const hae_config *cfg, int j, hae_config *job, char *label, size_t label_n) {
    if (!cfg || !job) return cfg_error(HAE_ERR_INVALID, "hae_config_sweep_job: NULL argument");
    int jobs = hae_config_sweep_jobs(cfg);
    if (j < 0 || j >= jobs)
        return cfg_error(HAE_ERR_INVALID, "sweep job %d: out of range (%s has %d jobs)", j, cfg->source, jobs);
    char ov[HAE_MAX_SWEEP_AXES][2 * HAE_NAME_MAX + 2], *yaml = NULL;
    const char *ovp[HAE_MAX_SWEEP_AXES];
    for (int a = 0; a < cfg->sweep.n_axes; a++) {
        snprintf(ov[a], sizeof ov[a], "%s=%s", cfg->sweep.axes[a].key, cfg->sweep.axes[a].values[job_value(cfg, j, a)]);
        ovp[a] = ov[a];
    }
    job_label(cfg, j, label, label_n);
    HAE_TRY(emit(cfg, false, &yaml));
    hae_config *tmp = malloc(sizeof *tmp);
    hae_status st = tmp ? hae_config_parse(yaml, strlen(yaml), cfg->source, ovp, cfg->sweep.n_axes, tmp) : oom();
    if (!st) memcpy(job, tmp, sizeof *job);
    free(tmp);
    free(yaml);
    return st;
}

/* Reads the sweep section into cfg->sweep, then builds every job from the bindings with that
 * job's sweep values in place: a bad value or combination fails now, naming the job. */
static hae_status load_sweep(ctx *c, const bindings *base, hae_config *cfg) {
    const node *sw = base->n[K_SWEEP], *vals[HAE_MAX_SWEEP_AXES] = {0};
    int keys[HAE_MAX_SWEEP_AXES], axis_of[NKEYS];
    char d[128];
    for (int k = 0; k < NKEYS; k++) axis_of[k] = -1;
    if (sw->type != N_MAP)
        return fail(c, sw, "sweep", "expected a mapping from dotted keys to lists of values, got %s",
                    desc(sw, d, sizeof d));
    if (sw->n > HAE_MAX_SWEEP_AXES)
        return fail(c, sw->keys[HAE_MAX_SWEEP_AXES], "sweep", "more than %d axes (HAE_MAX_SWEEP_AXES)",
                    HAE_MAX_SWEEP_AXES);
    int64_t jobs = 1;
    for (int a = 0; a < sw->n; a++) {
        const node *key = sw->keys[a], *v = sw->vals[a];
        char path[512];
        snprintf(path, sizeof path, "sweep.%s", key->text);
        int k = find_spec(key->text);
        if (first_under(key->text) >= 0)
            return fail(c, key, path, "'%s' is a section; sweep its keys (e.g. %s)", key->text,
                        specs[first_under(key->text)].path);
        if (k < 0 || k == K_SWEEP) {
            const char *names[NKEYS];
            char sug[1024];
            int n = 0;
            for (int i = 0; i < NKEYS; i++)
                if (i != K_SWEEP) names[n++] = specs[i].path;
            suggest(key->text, names, n, sug, sizeof sug);
            return fail(c, key, path, "unknown key%s", sug);
        }
        if (v->type != N_SEQ || v->n == 0)
            return fail(c, v, path, "expected a non-empty list of values, got %s", desc(v, d, sizeof d));
        if (v->n > HAE_MAX_SWEEP_VALUES)
            return fail(c, v->vals[HAE_MAX_SWEEP_VALUES], path, "more than %d values (HAE_MAX_SWEEP_VALUES)",
                        HAE_MAX_SWEEP_VALUES);
        if ((k == K_PATTERN && axis_of[K_LAYERS] >= 0) || (k == K_LAYERS && axis_of[K_PATTERN] >= 0))
            return fail(c, key, path, "sweep model.layer_pattern or model.layers, not both");
        keys[a] = k, vals[a] = v, axis_of[k] = a;
        snprintf(cfg->sweep.axes[a].key, HAE_NAME_MAX, "%s", key->text);
        cfg->sweep.axes[a].n_values = v->n;
        for (int i = 0; i < v->n; i++) {
            sbuf t = {0};
            sb_flow(&t, v->vals[i]);
            if (t.oom) return free(t.p), oom();
            bool fits = t.n < HAE_NAME_MAX;
            if (fits) memcpy(cfg->sweep.axes[a].values[i], t.p, t.n + 1);
            free(t.p);
            if (!fits)
                return fail(c, v->vals[i], path, "value longer than %d characters when written as YAML",
                            HAE_NAME_MAX - 1);
        }
        jobs *= v->n;
        if (jobs > MAX_SWEEP_JOBS)
            return fail(c, key, path, "the sweep has %" PRId64 "+ jobs, more than %d", jobs, MAX_SWEEP_JOBS);
    }
    cfg->sweep.n_axes = sw->n;

    char label[1024];
    hae_config *a = malloc(sizeof *a), *b = malloc(sizeof *b);
    hae_status st = a && b ? HAE_OK : oom();
    c->n_jobs = (int)jobs, c->label = label, c->n_swept = sw->n;
    for (int j = 0; j < jobs && !st; j++) {
        bindings jb = *base;
        for (int x = 0; x < sw->n; x++) {
            int k = keys[x];
            jb.n[k] = c->swept[x] = vals[x]->vals[job_value(cfg, j, x)];
            jb.swept[k] = true;
            if (k == K_PATTERN || k == K_LAYERS) jb.n[k == K_PATTERN ? K_LAYERS : K_PATTERN] = NULL;
        }
        job_label(cfg, j, label, sizeof label);
        c->job = j + 1;
        st = build(c, &jb, a);
        /* A job runs as the resolved base config with its values applied (hae_config_sweep_job),
         * where layer_pattern is already n_layers long: a larger swept n_layers repeats it. */
        const node *pat = jb.n[K_PATTERN];
        if (!st && axis_of[K_N_LAYERS] >= 0 && pat && !jb.swept[K_PATTERN] && a->model.n_layers > cfg->model.n_layers &&
            cfg->model.n_layers % pat->n)
            st = fail(c, jb.n[K_N_LAYERS], "model.n_layers",
                      "sweeping n_layers above the base n_layers %" PRId64 " needs "
                      "a base that is a whole number of layer_pattern's %d entries (or sweep model.layer_pattern too)",
                      cfg->model.n_layers, pat->n);
        if (!st) {
            st = hae_config_sweep_job(cfg, j, b, NULL, 0);
            if (!st && memcmp(a, b, sizeof *a) != 0)
                st = fail(c, sw, "sweep", "this job resolves differently when applied to the resolved base config");
        }
    }
    c->job = 0;
    free(a);
    free(b);
    return st;
}

/* ---------------------------------------------------------------- entry points */

hae_status hae_config_parse(const char *yaml, size_t len, const char *source, const char *const *overrides,
                            int n_overrides, hae_config *cfg) {
    if (!yaml || !cfg || n_overrides < 0 || (n_overrides > 0 && !overrides))
        return cfg_error(HAE_ERR_INVALID, "hae_config_parse: NULL argument");
    ctx c = {.src = source && source[0] ? source : "<default>"};
    node *root = NULL;
    bindings b;
    memset(&b, 0, sizeof b);
    char d[128];
    hae_config *tmp = malloc(sizeof *tmp);
    hae_status st = tmp ? check_tabs(&c, yaml, len) : oom();
    if (!st) st = read_doc(&c, yaml, len, c.src, false, &root);
    if (!st && (!root || (root->type == N_SCALAR && root->plain && !root->text[0])))
        st = cfg_error(HAE_ERR_INVALID,
                       "%s:1:1: empty config (expected a mapping with keys such as name, model, runtime)", c.src);
    if (!st && root->type != N_MAP)
        st = fail(&c, root, NULL, "expected a mapping at the top level (keys such as name, model, runtime), got %s",
                  desc(root, d, sizeof d));
    for (int i = 0; i < n_overrides && !st; i++) {
        if (!overrides[i]) st = cfg_error(HAE_ERR_INVALID, "hae_config_parse: override %d is NULL", i);
        else st = apply_override(&c, root, overrides[i]);
    }
    if (!st) st = walk(&c, root, "", &b);
    if (!st) st = build(&c, &b, tmp);
    if (!st && b.n[K_SWEEP]) st = load_sweep(&c, &b, tmp);
    if (!st) memcpy(cfg, tmp, sizeof *cfg);
    node_free(root);
    free(tmp);
    return st;
}

hae_status hae_config_load(const char *path, const char *const *overrides, int n_overrides, hae_config *cfg) {
    if (!path) return cfg_error(HAE_ERR_INVALID, "hae_config_load: NULL path");
    FILE *f = fopen(path, "rb");
    if (!f) return cfg_error(HAE_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    char *text = NULL;
    size_t len = 0, cap = 0;
    hae_status st = HAE_OK;
    for (;;) {
        if (len == cap) {
            cap = cap ? 2 * cap : 4096;
            char *p = cap <= MAX_FILE ? realloc(text, cap) : NULL;
            if (!p) {
                st = cap > MAX_FILE
                         ? cfg_error(HAE_ERR_INVALID, "%s: larger than %u bytes, not a config", path, MAX_FILE)
                         : oom();
                break;
            }
            text = p;
        }
        size_t got = fread(text + len, 1, cap - len, f);
        len += got;
        if (got == 0) {
            if (ferror(f)) st = cfg_error(HAE_ERR_IO, "%s: cannot read: %s", path, strerror(errno));
            break;
        }
    }
    fclose(f);
    if (!st) st = hae_config_parse(text, len, path, overrides, n_overrides, cfg);
    free(text);
    return st;
}

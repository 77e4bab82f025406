/* Reports (hae.h, the eval section): results tables (CSV) merged, recall pivoted by length and by hops into
 * markdown tables and SVG charts; and a resolved config flattened into CSV columns. */
#include "internal.h"
#include "chart.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- CSV files */

typedef struct {
    int n;
    char **cells;
} record;

typedef struct {
    int64_t n, cap;
    record *r;
} records;

static void record_free(record *r) {
    for (int k = 0; k < r->n; k++) free(r->cells[k]);
    free(r->cells);
}

static void records_free(records *rs) {
    for (int64_t i = 0; i < rs->n; i++) record_free(&rs->r[i]);
    free(rs->r);
    *rs = (records){0};
}

static bool push_cell(record *rec, const char *s, size_t len) {
    char **c = realloc(rec->cells, sizeof *c * (size_t)(rec->n + 1));
    if (!c) return false;
    rec->cells = c;
    if (!(c[rec->n] = malloc(len + 1))) return false;
    memcpy(c[rec->n], s, len);
    c[rec->n++][len] = '\0';
    return true;
}

/* RFC 4180: cells split by commas and records by line breaks; a quoted cell may hold both, a quote doubled. */
static hae_status parse_csv(const char *path, const char *s, size_t len, records *out) {
    char *buf = malloc(len + 1);
    hae_status st = buf ? HAE_OK : hae_error(HAE_ERR_OOM, "report: %zu bytes of %s", len, path);
    int64_t line = 1;
    for (size_t i = 0; i < len && st == HAE_OK;) {
        record rec = {0};
        for (bool more = true; more && st == HAE_OK;) {
            size_t n = 0;
            const int64_t first = line;
            if (s[i] == '"') {
                for (i++;; i++) {
                    if (i >= len) {
                        st = hae_error(HAE_ERR_FORMAT, "%s:%lld: a quoted cell never ends", path, (long long)first);
                        break;
                    }
                    if (s[i] == '"' && i + 1 < len && s[i + 1] == '"') buf[n++] = s[i++];
                    else if (s[i] == '"') break;
                    else buf[n++] = s[i], line += s[i] == '\n';
                }
                i++;
            } else {
                while (i < len && s[i] != ',' && s[i] != '\n' && s[i] != '\r') buf[n++] = s[i++];
            }
            if (st == HAE_OK && !push_cell(&rec, buf, n)) st = hae_error(HAE_ERR_OOM, "report: a row of %s", path);
            more = i < len && s[i] == ',';
            i += more;
        }
        if (st == HAE_OK && i < len && s[i] == '\r') i++;
        if (st == HAE_OK && i < len && s[i] != '\n')
            st = hae_error(HAE_ERR_FORMAT, "%s:%lld: text after a quoted cell", path, (long long)line);
        i++, line++;
        bool blank = rec.n == 1 && !rec.cells[0][0];
        if (st == HAE_OK && !blank && out->n == out->cap) {
            int64_t cap = out->cap ? 2 * out->cap : 64;
            record *r = realloc(out->r, sizeof *r * (size_t)cap);
            if (r) out->r = r, out->cap = cap;
            else st = hae_error(HAE_ERR_OOM, "report: the rows of %s", path);
        }
        if (st == HAE_OK && !blank) out->r[out->n++] = rec;
        else record_free(&rec);
    }
    free(buf);
    return st;
}

static hae_status read_csv(const char *path, records *out) {
    FILE *f = fopen(path, "rb");
    if (!f) return hae_error(HAE_ERR_IO, "cannot read %s: %s", path, strerror(errno));
    char *text = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&text, &len);
    char chunk[65536];
    size_t got;
    while (m && (got = fread(chunk, 1, sizeof chunk, f)) > 0) fwrite(chunk, 1, got, m);
    bool bad = ferror(f);
    fclose(f);
    if (!m || fclose(m)) return free(text), hae_error(HAE_ERR_OOM, "report: reading %s", path);
    if (bad) return free(text), hae_error(HAE_ERR_IO, "cannot read %s", path);
    hae_status st = parse_csv(path, text, len, out);
    free(text);
    if (st == HAE_OK && out->n == 0) st = hae_error(HAE_ERR_FORMAT, "%s: no header row (an empty results table)", path);
    if (st != HAE_OK) records_free(out);
    return st;
}

/* ---------------------------------------------------------------- the merged table */

typedef struct {
    int n_cols;
    char **cols;   /* [n_cols] names */
    int64_t n_rows;
    char ***rows;  /* [n_rows][n_cols], NULL for a cell an input lacks */
} table;

static void table_free(table *t) {
    for (int64_t r = 0; r < t->n_rows; r++) {
        for (int c = 0; c < t->n_cols; c++) free(t->rows[r][c]);
        free(t->rows[r]);
    }
    for (int c = 0; c < t->n_cols; c++) free(t->cols[c]);
    free(t->rows), free(t->cols);
}

static int col_of(const table *t, const char *name) {
    for (int c = 0; c < t->n_cols; c++)
        if (!strcmp(t->cols[c], name)) return c;
    return -1;
}

static const char *cell(const table *t, int64_t r, int c) { return c >= 0 && t->rows[r][c] ? t->rows[r][c] : ""; }

static hae_status add_col(table *t, const char *name) {
    char **c = realloc(t->cols, sizeof *c * (size_t)(t->n_cols + 1));
    if (!c) return hae_error(HAE_ERR_OOM, "report: columns");
    t->cols = c;
    if (!(c[t->n_cols] = strdup(name))) return hae_error(HAE_ERR_OOM, "report: columns");
    t->n_cols++;
    return HAE_OK;
}

/* The inputs' columns united in first-seen order ("run" first when runs are named), then their rows. */
static hae_status merge(const hae_eval_report_args *a, table *t) {
    records *in = calloc((size_t)a->n_inputs, sizeof *in);
    hae_status st = in ? HAE_OK : hae_error(HAE_ERR_OOM, "report: %d inputs", a->n_inputs);
    if (st == HAE_OK && a->runs) st = add_col(t, "run");
    int64_t rows = 0;
    for (int i = 0; i < a->n_inputs && st == HAE_OK; i++) {
        st = read_csv(a->inputs[i], &in[i]);
        for (int k = 0; st == HAE_OK && k < in[i].r[0].n; k++)
            if (col_of(t, in[i].r[0].cells[k]) < 0) st = add_col(t, in[i].r[0].cells[k]);
        if (st == HAE_OK) rows += in[i].n - 1;
    }
    if (st == HAE_OK && !(t->rows = calloc((size_t)(rows ? rows : 1), sizeof *t->rows)))
        st = hae_error(HAE_ERR_OOM, "report: %lld rows", (long long)rows);
    for (int i = 0; i < a->n_inputs && st == HAE_OK; i++) {
        const record *head = &in[i].r[0];
        for (int64_t r = 1; r < in[i].n && st == HAE_OK; r++) {
            record *rec = &in[i].r[r];
            if (rec->n > head->n) {
                st = hae_error(HAE_ERR_FORMAT, "%s: row %lld has %d cells, the header %d", a->inputs[i], (long long)r,
                               rec->n, head->n);
                break;
            }
            char **row = calloc((size_t)t->n_cols, sizeof *row);
            if (!row || (a->runs && !(row[0] = strdup(a->runs[i])))) {
                free(row);
                st = hae_error(HAE_ERR_OOM, "report: a row");
                break;
            }
            for (int k = 0; k < rec->n; k++) {
                int c = col_of(t, head->cells[k]);
                free(row[c]); /* a column named twice keeps its last cell */
                row[c] = rec->cells[k], rec->cells[k] = NULL;
            }
            t->rows[t->n_rows++] = row;
        }
    }
    for (int i = 0; in && i < a->n_inputs; i++) records_free(&in[i]);
    free(in);
    return st;
}

static hae_status write_table(const table *t, const char *path) {
    FILE *f = fopen(path, "w");
    if (!f) return hae_error(HAE_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    for (int c = 0; c < t->n_cols; c++) fputs(c ? "," : "", f), hae_csv_cell(f, t->cols[c]);
    fputc('\n', f);
    for (int64_t r = 0; r < t->n_rows; r++) {
        for (int c = 0; c < t->n_cols; c++) fputs(c ? "," : "", f), hae_csv_cell(f, cell(t, r, c));
        fputc('\n', f);
    }
    bool bad = ferror(f) != 0;
    return fclose(f) || bad ? hae_error(HAE_ERR_IO, "cannot write %s", path) : HAE_OK;
}

/* ---------------------------------------------------------------- series */

/* Columns that name no series: what a point measured, and how the run executed. */
static bool is_result(const char *col) {
    static const char *const names[] = {"context", "stored_pairs", "questions", "correct", "answers", "answers_correct",
                                        "recall", "chance", "seconds", "tokens_per_s", "error", "job", "run",
                                        "backend", "seeds", "output_dir"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (!strcmp(col, names[i])) return true;
    return !strncmp(col, "runtime.", 8) || !strncmp(col, "memory.", 7);
}

static bool number(const char *s, double *v) {
    char *end;
    errno = 0;
    *v = strtod(s, &end);
    return s[0] && !*end && !errno && isfinite(*v);
}

typedef struct {
    double x, correct, questions, recall_sum;
    int count;
    bool counted; /* every pooled row had correct and questions */
} point;

typedef struct {
    int64_t row; /* the first row: its key cells name the series */
    int n;
    point *p;
    char label[512], values[512];
} series;

typedef struct {
    int x_col;
    int n_keys;
    int *keys; /* the key columns */
    int n;
    series *s;
    bool *varies; /* [n_cols] */
} chart_data;

static void chart_data_free(chart_data *d) {
    for (int i = 0; i < d->n; i++) free(d->s[i].p);
    free(d->s), free(d->keys), free(d->varies);
}

static bool same_key(const table *t, const chart_data *d, int64_t a, int64_t b) {
    for (int k = 0; k < d->n_keys; k++)
        if (strcmp(cell(t, a, d->keys[k]), cell(t, b, d->keys[k]))) return false;
    return true;
}

static int cmp_point(const void *a, const void *b) {
    double x = ((const point *)a)->x, y = ((const point *)b)->x;
    return (x > y) - (x < y);
}

static double point_y(const point *p) {
    return p->counted && p->questions > 0 ? p->correct / p->questions : p->recall_sum / p->count;
}

/* Labels: the key columns that take two or more non-empty values among the series; the chart's legend says
 * "column=value" (the value alone for name, kind and task), the markdown the values alone. */
static void label(const table *t, chart_data *d) {
    for (int k = 0; k < d->n_keys; k++) {
        int c = d->keys[k];
        for (int i = 1; i < d->n && !d->varies[c]; i++) {
            const char *v = cell(t, d->s[i].row, c);
            for (int j = 0; j < i && !d->varies[c]; j++) {
                const char *w = cell(t, d->s[j].row, c);
                d->varies[c] = v[0] && w[0] && strcmp(v, w);
            }
        }
    }
    for (int i = 0; i < d->n; i++) {
        series *s = &d->s[i];
        size_t nl = 0, nv = 0;
        for (int k = 0; k < d->n_keys; k++) {
            int c = d->keys[k];
            const char *v = cell(t, s->row, c);
            if (!d->varies[c]) continue;
            bool bare = !strcmp(t->cols[c], "name") || !strcmp(t->cols[c], "kind") || !strcmp(t->cols[c], "task");
            if (v[0] && nl < sizeof s->label)
                nl += (size_t)snprintf(s->label + nl, sizeof s->label - nl, "%s%s%s%s", nl ? ", " : "", bare ? "" : t->cols[c],
                                       bare ? "" : "=", v);
            if (nv < sizeof s->values)
                nv += (size_t)snprintf(s->values + nv, sizeof s->values - nv, "%s%s", nv ? ", " : "", v[0] ? v : "-");
        }
        const char *name = cell(t, s->row, col_of(t, "name"));
        if (!nl) snprintf(s->label, sizeof s->label, "%s", name[0] ? name : "all");
        if (!nv) snprintf(s->values, sizeof s->values, "%s", s->label);
        for (int j = 0; j < i; j++)
            if (!strcmp(d->s[j].label, s->label)) {
                size_t len = strlen(s->label);
                snprintf(s->label + len, sizeof s->label - len, " (%d)", i + 1);
                break;
            }
    }
}

/* The series of recall against column x: rows with a numeric x > 0, a recall and no error. */
static hae_status collect(const table *t, const char *x, chart_data *d) {
    *d = (chart_data){.x_col = col_of(t, x)};
    const int rc = col_of(t, "recall"), qc = col_of(t, "questions"), cc = col_of(t, "correct"), ec = col_of(t, "error");
    d->keys = malloc(sizeof(int) * (size_t)(t->n_cols + 1));
    d->varies = calloc((size_t)t->n_cols + 1, sizeof(bool));
    d->s = malloc(sizeof(series) * (size_t)(t->n_rows + 1));
    if (!d->keys || !d->varies || !d->s) return hae_error(HAE_ERR_OOM, "report: series of %lld rows", (long long)t->n_rows);
    for (int c = 0; c < t->n_cols; c++)
        if (c != d->x_col && !is_result(t->cols[c])) d->keys[d->n_keys++] = c;
    if (d->x_col < 0 || rc < 0) return HAE_OK;
    for (int64_t r = 0; r < t->n_rows; r++) {
        double xv, y, q, k;
        if (!number(cell(t, r, d->x_col), &xv) || xv <= 0 || !number(cell(t, r, rc), &y) || cell(t, r, ec)[0]) continue;
        int i = 0;
        while (i < d->n && !same_key(t, d, d->s[i].row, r)) i++;
        series *s = &d->s[i];
        if (i == d->n) *s = (series){.row = r}, d->n++;
        int j = 0;
        while (j < s->n && s->p[j].x != xv) j++;
        if (j == s->n) {
            point *p = realloc(s->p, sizeof *p * (size_t)(s->n + 1));
            if (!p) return hae_error(HAE_ERR_OOM, "report: points");
            s->p = p, s->p[s->n++] = (point){.x = xv, .counted = true};
        }
        point *p = &s->p[j];
        bool counted = number(cell(t, r, qc), &q) && number(cell(t, r, cc), &k);
        p->counted &= counted;
        if (counted) p->correct += k, p->questions += q;
        p->recall_sum += y, p->count++;
    }
    for (int i = 0; i < d->n; i++) qsort(d->s[i].p, (size_t)d->s[i].n, sizeof(point), cmp_point);
    label(t, d);
    return HAE_OK;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int64_t total_points(const chart_data *d) {
    int64_t n = 0;
    for (int i = 0; i < d->n; i++) n += d->s[i].n;
    return n;
}

static bool any_curve(const chart_data *d) {
    for (int i = 0; i < d->n; i++)
        if (d->s[i].n >= 2) return true;
    return false;
}

static const char *fmt_x(const table *t, const chart_data *d, double x, char *buf, size_t n) {
    if (!strcmp(t->cols[d->x_col], "length") && x == floor(x)) return hae_fmt_tokens((int64_t)x, false, buf, n);
    snprintf(buf, n, "%g", x);
    return buf;
}

/* A pivot: a row per series, a column per x value. */
static hae_status markdown(const table *t, const chart_data *d, const char *what, FILE *f) {
    double *xs = malloc(sizeof(double) * (size_t)(total_points(d) + 1));
    if (!xs) return hae_error(HAE_ERR_OOM, "report: a pivot");
    int64_t nx = 0;
    for (int i = 0; i < d->n; i++)
        for (int j = 0; j < d->s[i].n; j++) xs[nx++] = d->s[i].p[j].x;
    qsort(xs, (size_t)nx, sizeof(double), cmp_double);
    int64_t u = 0;
    for (int64_t k = 0; k < nx; k++)
        if (!u || xs[k] != xs[u - 1]) xs[u++] = xs[k];
    fprintf(f, "### recall by %s\n\n|", what);
    int shown = 0;
    for (int k = 0; k < d->n_keys; k++)
        if (d->varies[d->keys[k]]) fprintf(f, "%s%s", shown++ ? ", " : " ", t->cols[d->keys[k]]);
    fputs(shown ? " |" : " series |", f);
    char b[32];
    for (int64_t k = 0; k < u; k++) fprintf(f, " %s |", fmt_x(t, d, xs[k], b, sizeof b));
    fputs("\n|---|", f);
    for (int64_t k = 0; k < u; k++) fputs("---:|", f);
    fputc('\n', f);
    for (int i = 0; i < d->n; i++) {
        fputs("| ", f);
        hae_xml_text(f, d->s[i].values); /* markdown renders HTML: keep brackets and ampersands literal */
        fputs(" |", f);
        for (int64_t k = 0, j = 0; k < u; k++) {
            while (j < d->s[i].n && d->s[i].p[j].x < xs[k]) j++;
            if (j < d->s[i].n && d->s[i].p[j].x == xs[k]) fprintf(f, " %.3f |", point_y(&d->s[i].p[j]));
            else fputs(" |", f);
        }
        fputc('\n', f);
    }
    fputc('\n', f);
    free(xs);
    return HAE_OK;
}

static hae_status chart(const hae_eval_report_args *a, const chart_data *d, const char *file, const char *x_label,
                        const char *what) {
    char path[HAE_PATH_MAX + 64], title[512];
    snprintf(path, sizeof path, "%s/%s", a->svg_dir, file);
    snprintf(title, sizeof title, "recall vs %s%s%.400s", what, a->title ? ": " : "", a->title ? a->title : "");
    hae_chart_series *cs = calloc((size_t)d->n + 1, sizeof *cs);
    double *xy = malloc(sizeof(double) * (size_t)(2 * total_points(d) + 1));
    hae_status st = cs && xy ? HAE_OK : hae_error(HAE_ERR_OOM, "report: a chart of %d series", d->n);
    for (int i = 0, k = 0; i < d->n && st == HAE_OK; i++) {
        const series *s = &d->s[i];
        cs[i] = (hae_chart_series){s->label, xy + k, xy + k + s->n, s->n, i, true, true};
        for (int j = 0; j < s->n; j++) xy[k + j] = s->p[j].x, xy[k + s->n + j] = point_y(&s->p[j]);
        k += 2 * s->n;
    }
    FILE *f = st == HAE_OK ? fopen(path, "w") : NULL;
    if (st == HAE_OK && !f) st = hae_error(HAE_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    const hae_chart c = {.title = title, .x_label = x_label, .x_pad = 0.25, .y_max = 1.05, .series = cs, .n_series = d->n};
    if (st == HAE_OK) st = hae_chart_svg(&c, f);
    if (f && fclose(f) && st == HAE_OK) st = hae_error(HAE_ERR_IO, "cannot write %s", path);
    free(cs), free(xy);
    return st;
}

hae_status hae_eval_report(const hae_eval_report_args *a, FILE *md) {
    if (!a || a->n_inputs < 1 || !a->inputs)
        return hae_error(HAE_ERR_INVALID, "hae_eval_report: no inputs (a results.csv path per run)");
    table t = {0};
    chart_data by_len = {0}, by_hops = {0};
    hae_status st = merge(a, &t);
    if (st == HAE_OK && a->merged_csv) st = write_table(&t, a->merged_csv);
    if (st == HAE_OK) st = collect(&t, "length", &by_len);
    if (st == HAE_OK) st = collect(&t, "hops", &by_hops);
    const bool hops = st == HAE_OK && any_curve(&by_hops);
    if (st == HAE_OK && md && !by_len.n) fputs("No point has a recall.\n\n", md);
    if (st == HAE_OK && md && by_len.n) st = markdown(&t, &by_len, "length", md);
    if (st == HAE_OK && md && hops) st = markdown(&t, &by_hops, "hops", md);
    if (st == HAE_OK && a->svg_dir && by_len.n)
        st = chart(a, &by_len, "recall_vs_length.svg", "tokens per task (log scale)", "length");
    if (st == HAE_OK && a->svg_dir && hops) st = chart(a, &by_hops, "recall_vs_hops.svg", "hops (log scale)", "hops");
    if (st == HAE_OK && md && ferror(md)) st = hae_error(HAE_ERR_IO, "report: writing the markdown failed");
    chart_data_free(&by_len), chart_data_free(&by_hops);
    table_free(&t);
    return st;
}

/* ---------------------------------------------------------------- the config as CSV columns */

/* A YAML double-quoted scalar's text (hae_config_to_yaml writes \" \\ \n \t and \xNN escapes). */
static void unquote(const char *s, FILE *out) {
    for (s++; *s && *s != '"'; s++) {
        if (*s != '\\' || !s[1]) {
            fputc(*s, out);
            continue;
        }
        s++;
        if (*s == 'n') fputc('\n', out);
        else if (*s == 't') fputc('\t', out);
        else if (*s == 'x' && s[1] && s[2]) {
            char hex[3] = {s[1], s[2], 0};
            fputc((int)strtol(hex, NULL, 16), out);
            s += 2;
        } else fputc(*s, out);
    }
}

/* Walks hae_config_to_yaml's text: "key:" opens a section at its indent (two spaces a level), "key: value" is a
 * leaf; the eval and sweep sections are left out. */
hae_status hae_eval_config_csv(const hae_config *cfg, char **keys, char **values) {
    if (!cfg || !keys || !values) return hae_error(HAE_ERR_INVALID, "hae_eval_config_csv: NULL argument");
    *keys = *values = NULL;
    char *yaml = NULL, *value = NULL, *k = NULL, *v = NULL;
    size_t value_n = 0, kn = 0, vn = 0;
    HAE_TRY(hae_config_to_yaml(cfg, &yaml));
    FILE *kf = open_memstream(&k, &kn), *vf = open_memstream(&v, &vn);
    char section[8][HAE_NAME_MAX] = {{0}};
    bool first = true, skip = false;
    for (char *line = yaml, *next; kf && vf && line && *line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = '\0';
        int depth = (int)(strspn(line, " ") / 2);
        char *key = line + 2 * depth, *colon = strstr(key, ":");
        if (!colon || depth >= 8) continue;
        *colon = '\0';
        if (depth == 0) skip = !strcmp(key, "eval") || !strcmp(key, "sweep");
        if (skip) continue;
        if (!colon[1]) {
            snprintf(section[depth], sizeof section[depth], "%s", key);
            continue;
        }
        const char *val = colon + 2;
        char path[8 * HAE_NAME_MAX + HAE_NAME_MAX];
        size_t n = 0;
        for (int d = 0; d < depth; d++) n += (size_t)snprintf(path + n, sizeof path - n, "%s.", section[d]);
        snprintf(path + n, sizeof path - n, "%s", key);
        fputs(first ? "" : ",", kf), fputs(first ? "" : ",", vf);
        hae_csv_cell(kf, path);
        if (val[0] == '"') {
            FILE *m = open_memstream(&value, &value_n);
            if (m) unquote(val, m), fclose(m);
            hae_csv_cell(vf, value ? value : "");
            free(value), value = NULL;
        } else {
            hae_csv_cell(vf, val);
        }
        first = false;
    }
    bool ok = kf && vf;
    if (kf) ok &= fclose(kf) == 0;
    if (vf) ok &= fclose(vf) == 0;
    free(yaml);
    if (!ok) return free(k), free(v), hae_error(HAE_ERR_OOM, "hae_eval_config_csv: out of host memory");
    *keys = k, *values = v;
    return HAE_OK;
}

/* `hae mem`'s report: the analytic plan of a config and of its full-attention twin over a list of
 * contexts, as a markdown table, a CSV and a hand-written SVG chart (GPU bytes vs context, log2 x). */
#include "internal.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define CURVE_POINTS 64 /* plan samples per curve of the chart */

static const char *fmt_bytes(double b, char *buf, size_t n) {
    const char *unit[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    int u = 0;
    while (b >= 1024.0 && u < 5) b /= 1024.0, u++;
    snprintf(buf, n, u ? "%.2f %s" : "%.0f %s", b, unit[u]);
    return buf;
}

/* 131072 -> "128K", 1048576 -> "1M", 1000 -> "1000": contexts as people write them (K = 1024); other
 * lengths of 10K and more as "6296832 (6.01M)", or "6.01M" when not exact. */
static const char *fmt_tokens(int64_t n, bool exact, char *buf, size_t cap) {
    static const char unit[] = "KMGT";
    int u = -1;
    for (int k = 4; k >= 1 && u < 0; k--)
        if (n >= (int64_t)1 << (10 * k)) u = k - 1;
    if (u >= 0 && n % ((int64_t)1 << (10 * (u + 1))) == 0)
        snprintf(buf, cap, "%" PRId64 "%c", n >> (10 * (u + 1)), unit[u]);
    else if (n >= 10240 && exact)
        snprintf(buf, cap, "%" PRId64 " (%.2f%c)", n, (double)n / (double)((int64_t)1 << (10 * (u + 1))), unit[u]);
    else if (n >= 10240)
        snprintf(buf, cap, "%.2f%c", (double)n / (double)((int64_t)1 << (10 * (u + 1))), unit[u]);
    else snprintf(buf, cap, "%" PRId64, n);
    return buf;
}

static size_t kv_and_states(const hae_mem_plan *p, hae_tier t) {
    return p->bytes[t][HAE_MEM_DSA_KV] + p->bytes[t][HAE_MEM_INDEX_KEYS] + p->bytes[t][HAE_MEM_FULL_KV] +
           p->bytes[t][HAE_MEM_LINEAR_STATE];
}

static double saving(size_t mine, size_t twin) { return twin ? 100.0 * (1.0 - (double)mine / (double)twin) : 0.0; }

/* at_max: the config's plan at the longest context that fits (its host bytes are said beside it). */
static void markdown(const hae_mem_report_args *a, const hae_mem_plan *cp, const hae_mem_plan *tp, int64_t max_c,
                     int64_t max_t, const hae_mem_plan *at_max, FILE *f) {
    const hae_config *cfg = a->cfg;
    char b1[32], b2[32], b3[32], b4[32], b5[32], c1[32];
    fprintf(f, "# hae mem: %s (%s)\n\n", cfg->name, cfg->source);
    fprintf(f, "batch %" PRId64 ", %s, K/V pages of %" PRId64 " tokens; placement: dsa_kv %s, full_kv %s%s, "
            "linear_state %s; dsa GPU cache %" PRId64 " tokens per layer and sequence. The twin: every layer full, "
            "everything on the GPU.\n\n", cfg->runtime.batch, hae_dtype_name(cfg->runtime.dtype),
            cfg->memory.page_size, hae_tier_name(cfg->memory.dsa_kv), hae_tier_name(cfg->memory.full_kv),
            cfg->memory.full_kv == HAE_TIER_HOST ? " (streamed every step: slow)" : "",
            hae_tier_name(cfg->memory.linear_state), cfg->memory.cache_tokens);
    fprintf(f, "| context | GPU | host | twin GPU | GPU saving | KV + states on GPU | twin KV on GPU | KV saving |\n");
    fprintf(f, "|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (int i = 0; i < a->n_contexts; i++) {
        const size_t kv = kv_and_states(&cp[i], HAE_TIER_GPU), tkv = kv_and_states(&tp[i], HAE_TIER_GPU);
        fprintf(f, "| %s | %s | %s | %s | %.1f%% | %s | %s | %.1f%% |\n",
                fmt_tokens(a->contexts[i], true, c1, sizeof c1),
                fmt_bytes((double)cp[i].total[HAE_TIER_GPU], b1, sizeof b1),
                fmt_bytes((double)cp[i].total[HAE_TIER_HOST], b2, sizeof b2),
                fmt_bytes((double)tp[i].total[HAE_TIER_GPU], b3, sizeof b3),
                saving(cp[i].total[HAE_TIER_GPU], tp[i].total[HAE_TIER_GPU]), fmt_bytes((double)kv, b4, sizeof b4),
                fmt_bytes((double)tkv, b5, sizeof b5), saving(kv, tkv));
    }
    for (int t = 0; t < HAE_TIER_COUNT; t++) {
        bool any = false;
        for (int i = 0; i < a->n_contexts; i++) any |= cp[i].total[t] > 0;
        if (!any) continue;
        fprintf(f, "\n%s bytes by kind:\n\n| context |", t == HAE_TIER_GPU ? "GPU" : "Host");
        for (int k = 0; k < HAE_MEM_KIND_COUNT; k++) fprintf(f, " %s |", hae_mem_kind_name((hae_mem_kind)k));
        fprintf(f, " total |\n|---:|");
        for (int k = 0; k <= HAE_MEM_KIND_COUNT; k++) fprintf(f, "---:|");
        fprintf(f, "\n");
        for (int i = 0; i < a->n_contexts; i++) {
            fprintf(f, "| %s |", fmt_tokens(a->contexts[i], true, c1, sizeof c1));
            for (int k = 0; k < HAE_MEM_KIND_COUNT; k++)
                fprintf(f, " %s |", fmt_bytes((double)cp[i].bytes[t][k], b1, sizeof b1));
            fprintf(f, " %s |\n", fmt_bytes((double)cp[i].total[t], b1, sizeof b1));
        }
    }
    fprintf(f, "\nLongest context per sequence in %s of GPU memory%s%s%s: ",
            fmt_bytes((double)a->gpu_budget, b1, sizeof b1), a->budget_note ? " (" : "",
            a->budget_note ? a->budget_note : "", a->budget_note ? ")" : "");
    fprintf(f, "%s tokens%s, twin %s tokens", fmt_tokens(max_c, true, b2, sizeof b2),
            max_c >= HAE_MEM_MAX_CONTEXT ? " (the GPU bytes stop growing: unbounded)" : "",
            fmt_tokens(max_t, true, b3, sizeof b3));
    if (max_t > 0) fprintf(f, " (%.2fx)", (double)max_c / (double)max_t);
    if (at_max->total[HAE_TIER_HOST])
        fprintf(f, "; there the config keeps %s on the host",
                fmt_bytes((double)at_max->total[HAE_TIER_HOST], b4, sizeof b4));
    fprintf(f, ".\n");
}

static const char *const csv_cols = "model,context,batch,gpu_budget,max_context";

static void csv(const hae_mem_report_args *a, const hae_mem_plan *cp, const hae_mem_plan *tp, int64_t max_c,
                int64_t max_t, FILE *f) {
    fprintf(f, "%s", csv_cols);
    for (int t = 0; t < HAE_TIER_COUNT; t++) {
        for (int k = 0; k < HAE_MEM_KIND_COUNT; k++)
            fprintf(f, ",%s_%s", hae_tier_name((hae_tier)t), hae_mem_kind_name((hae_mem_kind)k));
        fprintf(f, ",%s_total", hae_tier_name((hae_tier)t));
    }
    fprintf(f, "\n");
    for (int i = 0; i < a->n_contexts; i++)
        for (int m = 0; m < 2; m++) {
            const hae_mem_plan *p = m ? &tp[i] : &cp[i];
            fprintf(f, "%s,%" PRId64 ",%" PRId64 ",%zu,%" PRId64, m ? "twin" : "config", p->context, p->batch,
                    a->gpu_budget, m ? max_t : max_c);
            for (int t = 0; t < HAE_TIER_COUNT; t++) {
                for (int k = 0; k < HAE_MEM_KIND_COUNT; k++) fprintf(f, ",%zu", p->bytes[t][k]);
                fprintf(f, ",%zu", p->total[t]);
            }
            fprintf(f, "\n");
        }
}

/* ---------------------------------------------------------------- the chart */

enum { W = 760, H = 440, ML = 80, MR = 24, MT = 48, MB = 56 };

typedef struct {
    double lx0, lx1, ymax; /* log2 context range, GiB range */
} axes;

static double px(const axes *ax, double ctx) {
    return ML + (log2(ctx) - ax->lx0) / (ax->lx1 - ax->lx0) * (W - ML - MR);
}
static double py(const axes *ax, double bytes) { return H - MB - bytes / (1 << 30) / ax->ymax * (H - MT - MB); }

static void xml_text(FILE *f, const char *s) {
    for (; *s; s++) {
        if (*s == '&') fputs("&amp;", f);
        else if (*s == '<') fputs("&lt;", f);
        else if (*s == '>') fputs("&gt;", f);
        else if (*s == '"') fputs("&quot;", f);
        else fputc(*s, f);
    }
}

/* A step of 1, 2 or 5 x 10^k GiB giving at most 8 gridlines up to ymax. */
static double nice_step(double ymax) {
    double step = pow(10.0, floor(log10(ymax / 8)));
    if (ymax / step > 8) step *= 2;
    if (ymax / step > 8) step *= 2.5;
    if (ymax / step > 8) step *= 2;
    return step;
}

static hae_status curve(FILE *f, const hae_config *cfg, const axes *ax, const char *color) {
    fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", color);
    for (int i = 0; i < CURVE_POINTS; i++) {
        double lx = ax->lx0 + (ax->lx1 - ax->lx0) * i / (CURVE_POINTS - 1);
        int64_t ctx = (int64_t)llround(exp2(lx));
        hae_mem_plan p;
        HAE_TRY(hae_mem_plan_get(cfg, ctx < 1 ? 1 : ctx, &p));
        fprintf(f, "%s%.1f,%.1f", i ? " " : "", px(ax, (double)ctx), py(ax, (double)p.total[HAE_TIER_GPU]));
    }
    fprintf(f, "\"/>\n");
    return HAE_OK;
}

static hae_status svg(const hae_mem_report_args *a, const hae_config *twin, const hae_mem_plan *cp,
                      const hae_mem_plan *tp, int64_t max_c, int64_t max_t, FILE *f) {
    int64_t lo = a->contexts[0], hi = a->contexts[0];
    for (int i = 1; i < a->n_contexts; i++) {
        if (a->contexts[i] < lo) lo = a->contexts[i];
        if (a->contexts[i] > hi) hi = a->contexts[i];
    }
    /* wide enough to show where each curve crosses the budget, unless that is far off */
    const int64_t fit[2] = {max_c, max_t}, far = hi <= HAE_MEM_MAX_CONTEXT / 64 ? 64 * hi : HAE_MEM_MAX_CONTEXT;
    for (int m = 0; m < 2; m++)
        if (fit[m] > hi && fit[m] <= far) hi = fit[m] + fit[m] / 8;
    axes ax = {log2((double)lo), log2((double)hi), (double)a->gpu_budget / (1 << 30)};
    if (hi == lo) ax.lx0 -= 1, ax.lx1 += 1;
    /* y up to the budget and the asked contexts' bytes; the curves are clipped to the plot */
    for (int i = 0; i < a->n_contexts; i++)
        for (int m = 0; m < 2; m++) {
            double b = (double)(m ? tp : cp)[i].total[HAE_TIER_GPU] / (1 << 30);
            if (b > ax.ymax) ax.ymax = b;
        }
    if (ax.ymax <= 0) ax.ymax = 1;
    ax.ymax *= 1.15;
    char b1[32], c1[32];
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
            "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"%d\" height=\"%d\" fill=\"white\"/>\n",
            W, H, W, H, W, H);
    fprintf(f, "<text x=\"%d\" y=\"22\" font-size=\"15\">GPU bytes vs context: ", ML);
    xml_text(f, a->cfg->name);
    fprintf(f, " and its full-attention twin (batch %" PRId64 ")</text>\n", a->cfg->runtime.batch);
    /* grid and axes */
    double step = nice_step(ax.ymax);
    for (double y = 0; y <= ax.ymax; y += step)
        fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#ddd\"/>\n<text x=\"%d\" y=\"%.1f\" "
                "text-anchor=\"end\">%g GiB</text>\n", ML, py(&ax, y * (1 << 30)), W - MR, py(&ax, y * (1 << 30)),
                ML - 6, py(&ax, y * (1 << 30)) + 4, y);
    int e0 = (int)ceil(ax.lx0 - 1e-9), e1 = (int)floor(ax.lx1 + 1e-9), every = (e1 - e0) / 10 + 1;
    for (int e = e0; e <= e1; e += every) {
        double x = px(&ax, exp2(e));
        fprintf(f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#ddd\"/>\n<text x=\"%.1f\" y=\"%d\" "
                "text-anchor=\"middle\">%s</text>\n", x, MT, x, H - MB, x, H - MB + 18,
                fmt_tokens((int64_t)1 << e, false, c1, sizeof c1));
    }
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"black\"/>\n", ML, MT,
            W - ML - MR, H - MT - MB);
    fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">context per sequence (tokens, log scale)</text>\n",
            (ML + W - MR) / 2, H - 14);
    /* budget line, curves, and the asked contexts as dots */
    double yb = py(&ax, (double)a->gpu_budget);
    fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#d62728\" stroke-dasharray=\"6 4\"/>\n"
            "<text x=\"%d\" y=\"%.1f\" fill=\"#d62728\">GPU budget %s</text>\n", ML, yb, W - MR, yb, ML + 6, yb + 15,
            fmt_bytes((double)a->gpu_budget, b1, sizeof b1));
    fprintf(f, "<clipPath id=\"plot\"><rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\"/></clipPath>\n"
            "<g clip-path=\"url(#plot)\">\n", ML, MT, W - ML - MR, H - MT - MB);
    HAE_TRY(curve(f, twin, &ax, "#ff7f0e"));
    HAE_TRY(curve(f, a->cfg, &ax, "#1f77b4"));
    fprintf(f, "</g>\n");
    static const char *const colors[2] = {"#1f77b4", "#ff7f0e"};
    for (int m = 0; m < 2; m++) {
        if (fit[m] < 1 || log2((double)fit[m]) < ax.lx0 || log2((double)fit[m]) > ax.lx1) continue;
        double x = px(&ax, (double)fit[m]);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"%s\" stroke-dasharray=\"2 3\"/>\n"
                "<text x=\"%.1f\" y=\"%d\" text-anchor=\"end\" fill=\"%s\">fits %s</text>\n", x, MT, x, H - MB,
                colors[m], x - 4, H - MB - 8 - 16 * m, colors[m], fmt_tokens(fit[m], false, c1, sizeof c1));
    }
    for (int i = 0; i < a->n_contexts; i++)
        fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\" fill=\"#ff7f0e\"/>\n<circle cx=\"%.1f\" cy=\"%.1f\" "
                "r=\"3.5\" fill=\"#1f77b4\"/>\n", px(&ax, (double)a->contexts[i]),
                py(&ax, (double)tp[i].total[HAE_TIER_GPU]), px(&ax, (double)a->contexts[i]),
                py(&ax, (double)cp[i].total[HAE_TIER_GPU]));
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"12\" height=\"3\" fill=\"#1f77b4\"/><text x=\"%d\" y=\"%d\">",
            ML + 12, MT + 14, ML + 30, MT + 19);
    xml_text(f, a->cfg->name);
    fprintf(f, "</text>\n<rect x=\"%d\" y=\"%d\" width=\"12\" height=\"3\" fill=\"#ff7f0e\"/><text x=\"%d\" y=\"%d\">"
            "full-attention twin</text>\n</svg>\n", ML + 12, MT + 32, ML + 30, MT + 37);
    return HAE_OK;
}

hae_status hae_mem_report(const hae_mem_report_args *a, FILE *md, FILE *csv_f, FILE *svg_f) {
    if (!a || !a->cfg || !a->contexts || a->n_contexts < 1)
        return hae_error(HAE_ERR_INVALID, "memory report: no config or no contexts");
    hae_config *twin = malloc(sizeof *twin);
    hae_mem_plan *cp = calloc((size_t)a->n_contexts, sizeof *cp), *tp = calloc((size_t)a->n_contexts, sizeof *tp);
    hae_status st = twin && cp && tp ? HAE_OK : hae_error(HAE_ERR_OOM, "memory report: out of host memory");
    int64_t max_c = 0, max_t = 0;
    if (st == HAE_OK) hae_mem_twin(a->cfg, twin);
    for (int i = 0; i < a->n_contexts && st == HAE_OK; i++) {
        st = hae_mem_plan_get(a->cfg, a->contexts[i], &cp[i]);
        if (st == HAE_OK) st = hae_mem_plan_get(twin, a->contexts[i], &tp[i]);
    }
    if (st == HAE_OK) st = hae_mem_max_context(a->cfg, a->gpu_budget, &max_c);
    if (st == HAE_OK) st = hae_mem_max_context(twin, a->gpu_budget, &max_t);
    hae_mem_plan at_max = {0};
    if (st == HAE_OK && max_c > 0) st = hae_mem_plan_get(a->cfg, max_c, &at_max);
    if (st == HAE_OK && md) markdown(a, cp, tp, max_c, max_t, &at_max, md);
    if (st == HAE_OK && csv_f) csv(a, cp, tp, max_c, max_t, csv_f);
    if (st == HAE_OK && svg_f) st = svg(a, twin, cp, tp, max_c, max_t, svg_f);
    FILE *const files[3] = {md, csv_f, svg_f};
    for (int i = 0; i < 3 && st == HAE_OK; i++)
        if (files[i] && ferror(files[i])) st = hae_error(HAE_ERR_IO, "memory report: a write failed");
    free(twin), free(cp), free(tp);
    return st;
}

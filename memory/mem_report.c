/* `hae mem`'s report: the analytic plan of a config and of its full-attention twin over a list of
 * contexts, as a markdown table, a CSV and a hand-written SVG chart (GPU bytes vs context, log2 x). */
#include "internal.h"
#include "../eval/chart.h"

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
    char split[64] = "";
    if (cfg->memory.dsa_kv == HAE_TIER_HOST && cfg->memory.dsa_gpu_seqs > 0)
        snprintf(split, sizeof split, " but for the first %" PRId64 " sequences", cfg->memory.dsa_gpu_seqs);
    char fp8[96] = "";
    if (cfg->memory.dsa_kv_fp8 && cfg->model.attention.form == HAE_ATTN_MLA)
        snprintf(fp8, sizeof fp8, " (mla's FP8 token layout, %d bytes)", HAE_MLA_FP8_ROW);
    else if (cfg->memory.dsa_kv_fp8)
        snprintf(fp8, sizeof fp8, " (gqa's FP8 layout, %" PRId64 " bytes a token)",
                 2 * cfg->model.attention.num_kv_heads * HAE_FP8_HEAD(cfg->model.attention.head_dim));
    fprintf(f, "batch %" PRId64 ", %s, K/V pages of %" PRId64 " tokens; placement: dsa_kv %s%s%s, full_kv %s%s, "
            "linear_state %s; dsa GPU cache %" PRId64 " tokens per layer and sequence. The twin: every layer full, "
            "everything on the GPU.\n\n", cfg->runtime.batch, hae_dtype_name(cfg->runtime.dtype),
            cfg->memory.page_size, hae_tier_name(cfg->memory.dsa_kv), split,
            fp8, hae_tier_name(cfg->memory.full_kv),
            cfg->memory.full_kv == HAE_TIER_HOST ? " (streamed every step: slow)" : "",
            hae_tier_name(cfg->memory.linear_state), cfg->memory.cache_tokens);
    fprintf(f, "| context | GPU | host | twin GPU | GPU saving | KV + states on GPU | twin KV on GPU | KV saving |\n");
    fprintf(f, "|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (int i = 0; i < a->n_contexts; i++) {
        const size_t kv = kv_and_states(&cp[i], HAE_TIER_GPU), tkv = kv_and_states(&tp[i], HAE_TIER_GPU);
        char where[64] = "";
        if (cfg->memory.dsa_kv == HAE_TIER_AUTO && cp[i].dsa_kv == HAE_TIER_HOST && cp[i].dsa_gpu_seqs > 0)
            snprintf(where, sizeof where, " (dsa K/V of %" PRId64 " sequences on host)", cp[i].batch - cp[i].dsa_gpu_seqs);
        else if (cfg->memory.dsa_kv == HAE_TIER_AUTO)
            snprintf(where, sizeof where, " (dsa K/V on %s)", hae_tier_name(cp[i].dsa_kv));
        fprintf(f, "| %s%s | %s | %s | %s | %.1f%% | %s | %s | %.1f%% |\n",
                hae_fmt_tokens(a->contexts[i], true, c1, sizeof c1), where,
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
            fprintf(f, "| %s |", hae_fmt_tokens(a->contexts[i], true, c1, sizeof c1));
            for (int k = 0; k < HAE_MEM_KIND_COUNT; k++)
                fprintf(f, " %s |", fmt_bytes((double)cp[i].bytes[t][k], b1, sizeof b1));
            fprintf(f, " %s |\n", fmt_bytes((double)cp[i].total[t], b1, sizeof b1));
        }
    }
    fprintf(f, "\nLongest context per sequence in %s of GPU memory%s%s%s", fmt_bytes((double)a->gpu_budget, b1, sizeof b1),
            a->budget_note ? " (" : "", a->budget_note ? a->budget_note : "", a->budget_note ? ")" : "");
    if (a->cfg->memory.host_budget > 0)
        fprintf(f, " and %s of host RAM (memory.host_budget)", fmt_bytes((double)a->cfg->memory.host_budget, b1, sizeof b1));
    fprintf(f, ": ");
    fprintf(f, "%s tokens%s, twin %s tokens", hae_fmt_tokens(max_c, true, b2, sizeof b2),
            max_c >= HAE_MEM_MAX_CONTEXT ? " (the GPU bytes stop growing: unbounded)" : "",
            hae_fmt_tokens(max_t, true, b3, sizeof b3));
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
    fprintf(f, ",dsa_gpu_seqs\n");
    for (int i = 0; i < a->n_contexts; i++)
        for (int m = 0; m < 2; m++) {
            const hae_mem_plan *p = m ? &tp[i] : &cp[i];
            fprintf(f, "%s,%" PRId64 ",%" PRId64 ",%zu,%" PRId64, m ? "twin" : "config", p->context, p->batch,
                    a->gpu_budget, m ? max_t : max_c);
            for (int t = 0; t < HAE_TIER_COUNT; t++) {
                for (int k = 0; k < HAE_MEM_KIND_COUNT; k++) fprintf(f, ",%zu", p->bytes[t][k]);
                fprintf(f, ",%zu", p->total[t]);
            }
            fprintf(f, ",%" PRId64 "\n", p->dsa_gpu_seqs);
        }
}

/* ---------------------------------------------------------------- the chart */

/* GPU GiB of the config's plan at CURVE_POINTS contexts spread over [lo, hi] on a log2 scale. */
static hae_status curve(const hae_config *cfg, double lo, double hi, double *x, double *y) {
    for (int i = 0; i < CURVE_POINTS; i++) {
        double lx = log2(lo) + (log2(hi) - log2(lo)) * i / (CURVE_POINTS - 1);
        int64_t ctx = (int64_t)llround(exp2(lx));
        hae_mem_plan p;
        HAE_TRY(hae_mem_plan_get(cfg, ctx < 1 ? 1 : ctx, &p));
        x[i] = ctx < 1 ? 1 : (double)ctx, y[i] = (double)p.total[HAE_TIER_GPU] / (1 << 30);
    }
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
    /* y up to the budget and the asked contexts' bytes; the curves are clipped to the plot */
    double ymax = (double)a->gpu_budget / (1 << 30);
    double *pts = malloc(sizeof(double) * (size_t)(4 * CURVE_POINTS + 6 * a->n_contexts));
    if (!pts) return hae_error(HAE_ERR_OOM, "memory report: out of host memory");
    double *cx = pts, *cy = cx + CURVE_POINTS, *tx = cy + CURVE_POINTS, *ty = tx + CURVE_POINTS;
    double *dx = ty + CURVE_POINTS, *dc = dx + a->n_contexts, *dt = dc + a->n_contexts;
    for (int i = 0; i < a->n_contexts; i++) {
        dx[i] = (double)a->contexts[i];
        dc[i] = (double)cp[i].total[HAE_TIER_GPU] / (1 << 30), dt[i] = (double)tp[i].total[HAE_TIER_GPU] / (1 << 30);
        ymax = fmax(ymax, fmax(dc[i], dt[i]));
    }
    hae_status st = curve(a->cfg, (double)lo, (double)(hi > lo ? hi : lo), cx, cy);
    if (st == HAE_OK) st = curve(twin, (double)lo, (double)(hi > lo ? hi : lo), tx, ty);
    char title[HAE_NAME_MAX + 96], budget[64], b1[32], fits[2][48];
    snprintf(title, sizeof title, "GPU bytes vs context: %s and its full-attention twin (batch %" PRId64 ")",
             a->cfg->name, a->cfg->runtime.batch);
    snprintf(budget, sizeof budget, "GPU budget %s", fmt_bytes((double)a->gpu_budget, b1, sizeof b1));
    for (int m = 0; m < 2; m++) snprintf(fits[m], sizeof fits[m], "fits %s", hae_fmt_tokens(fit[m], false, b1, sizeof b1));
    const hae_chart_series series[4] = {
        {a->cfg->name, cx, cy, CURVE_POINTS, 0, true, false},
        {"full-attention twin", tx, ty, CURVE_POINTS, 1, true, false},
        {NULL, dx, dc, a->n_contexts, 0, false, true},
        {NULL, dx, dt, a->n_contexts, 1, false, true},
    };
    /* a fit outside the plotted range (none, or far off) draws no line */
    const hae_chart_mark marks[3] = {{(double)a->gpu_budget / (1 << 30), false, budget, 3},
                                     {(double)fit[0], true, fits[0], 0},
                                     {(double)fit[1], true, fits[1], 1}};
    const hae_chart chart = {.title = title, .x_label = "context per sequence (tokens, log scale)", .y_unit = " GiB",
                             .x_lo = (double)lo, .x_hi = (double)hi, .y_max = (ymax > 0 ? ymax : 1) * 1.15,
                             .series = series, .n_series = 4, .marks = marks, .n_marks = 3};
    if (st == HAE_OK) st = hae_chart_svg(&chart, f);
    free(pts);
    return st;
}

hae_status hae_mem_report(const hae_mem_report_args *a, FILE *md, FILE *csv_f, FILE *svg_f) {
    if (!a || !a->cfg || !a->contexts || a->n_contexts < 1)
        return hae_error(HAE_ERR_INVALID, "memory report: no config or no contexts");
    hae_config *twin = malloc(sizeof *twin), *cfg = malloc(sizeof *cfg);
    hae_mem_plan *cp = calloc((size_t)a->n_contexts, sizeof *cp), *tp = calloc((size_t)a->n_contexts, sizeof *tp);
    hae_status st = twin && cfg && cp && tp ? HAE_OK : hae_error(HAE_ERR_OOM, "memory report: out of host memory");
    int64_t max_c = 0, max_t = 0;
    if (st == HAE_OK) {
        memcpy(cfg, a->cfg, sizeof *cfg);
        cfg->memory.gpu_budget = (int64_t)a->gpu_budget; /* what dsa_kv auto places against */
        hae_mem_twin(cfg, twin);
    }
    for (int i = 0; i < a->n_contexts && st == HAE_OK; i++) {
        st = hae_mem_plan_get(cfg, a->contexts[i], &cp[i]);
        if (st == HAE_OK) st = hae_mem_plan_get(twin, a->contexts[i], &tp[i]);
    }
    if (st == HAE_OK) st = hae_mem_max_context(cfg, a->gpu_budget, &max_c);
    if (st == HAE_OK) st = hae_mem_max_context(twin, a->gpu_budget, &max_t);
    hae_mem_plan at_max = {0};
    if (st == HAE_OK && max_c > 0) st = hae_mem_plan_get(cfg, max_c, &at_max);
    if (st == HAE_OK && md) markdown(a, cp, tp, max_c, max_t, &at_max, md);
    if (st == HAE_OK && csv_f) csv(a, cp, tp, max_c, max_t, csv_f);
    if (st == HAE_OK && svg_f) st = svg(a, twin, cp, tp, max_c, max_t, svg_f);
    FILE *const files[3] = {md, csv_f, svg_f};
    for (int i = 0; i < 3 && st == HAE_OK; i++)
        if (files[i] && ferror(files[i])) st = hae_error(HAE_ERR_IO, "memory report: a write failed");
    free(twin), free(cfg), free(cp), free(tp);
    return st;
}

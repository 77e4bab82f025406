/* The SVG line-chart writer and the escaping shared by hae's reports (chart.h). */
#include "chart.h"

#include <inttypes.h>
#include <math.h>
#include <string.h>

enum { W_MIN = 760, ML = 80, MR = 24, MT = 48, PB = 384, LEGEND_ROW = 18, CHAR_W = 7 };

const char *hae_chart_color(int style) {
    static const char *const palette[10] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                            "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
    return palette[(style < 0 ? -style : style) % 10];
}

static const char *dash(int style) {
    static const char *const d[4] = {"", "6 3", "2 3", "8 3 2 3"};
    return d[(style < 0 ? -style : style) / 10 % 4];
}

const char *hae_fmt_tokens(int64_t n, bool exact, char *buf, size_t cap) {
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

void hae_xml_text(FILE *f, const char *s) {
    for (; s && *s; s++) {
        if (*s == '&') fputs("&amp;", f);
        else if (*s == '<') fputs("&lt;", f);
        else if (*s == '>') fputs("&gt;", f);
        else if (*s == '"') fputs("&quot;", f);
        else if (*s == '\'') fputs("&apos;", f);
        else fputc(*s, f);
    }
}

void hae_csv_cell(FILE *f, const char *s) {
    if (!s || !s[strcspn(s, ",\"\r\n")]) {
        fputs(s ? s : "", f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"') fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

typedef struct {
    double lx0, lx1, ymax; /* log2 x range, y range [0, ymax] */
    int w;                 /* image width */
} frame;

static double px(const frame *fr, double x) { return ML + (log2(x) - fr->lx0) / (fr->lx1 - fr->lx0) * (fr->w - ML - MR); }
static double py(const frame *fr, double y) { return PB - y / fr->ymax * (PB - MT); }

/* A step of 1, 2 or 5 x 10^k giving at most 8 gridlines up to ymax. */
static double nice_step(double ymax) {
    double step = pow(10.0, floor(log10(ymax / 8)));
    if (ymax / step > 8) step *= 2;
    if (ymax / step > 8) step *= 2.5;
    if (ymax / step > 8) step *= 2;
    return step;
}

/* The frame: x from the chart's range or the points', y up to y_max or the points' maximum. */
static frame make_frame(const hae_chart *c) {
    double lo = c->x_lo, hi = c->x_hi, ymax = c->y_max;
    bool auto_x = lo <= 0 || hi <= 0;
    if (auto_x) lo = INFINITY, hi = 0;
    for (int s = 0; s < c->n_series; s++)
        for (int i = 0; i < c->series[s].n; i++) {
            double x = c->series[s].x[i], y = c->series[s].y[i];
            if (auto_x && x > 0 && isfinite(x)) lo = fmin(lo, x), hi = fmax(hi, x);
            if (c->y_max <= 0 && isfinite(y)) ymax = fmax(ymax, y);
        }
    if (!(lo > 0 && hi >= lo)) lo = 1, hi = 2;
    frame fr = {log2(lo) - c->x_pad, log2(hi) + c->x_pad, ymax > 0 ? ymax : 1, W_MIN};
    if (fr.lx1 - fr.lx0 < 1e-9) fr.lx0 -= 1, fr.lx1 += 1;
    size_t longest = 0;
    for (int s = 0; s < c->n_series; s++)
        if (c->series[s].label && strlen(c->series[s].label) > longest) longest = strlen(c->series[s].label);
    if (ML + 40 + (int)longest * CHAR_W + MR > fr.w) fr.w = ML + 40 + (int)longest * CHAR_W + MR;
    return fr;
}

static void stroke(FILE *f, int style) {
    fprintf(f, " stroke=\"%s\"", hae_chart_color(style));
    if (dash(style)[0]) fprintf(f, " stroke-dasharray=\"%s\"", dash(style));
}

hae_status hae_chart_svg(const hae_chart *c, FILE *f) {
    if (!c || !f || c->n_series < 0 || c->n_marks < 0 || (c->n_series && !c->series) || (c->n_marks && !c->marks))
        return hae_error(HAE_ERR_INVALID, "hae_chart_svg: no chart, no file, or series/marks missing");
    frame fr = make_frame(c);
    int n_legend = 0;
    for (int s = 0; s < c->n_series; s++) n_legend += c->series[s].label != NULL;
    const int h = PB + 56 + (n_legend ? 12 + LEGEND_ROW * n_legend : 0), pw = fr.w - ML - MR;
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
            "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"%d\" height=\"%d\" fill=\"white\"/>\n",
            fr.w, h, fr.w, h, fr.w, h);
    fprintf(f, "<text x=\"%d\" y=\"22\" font-size=\"15\">", ML);
    hae_xml_text(f, c->title);
    fputs("</text>\n", f);
    /* grid, tick labels, frame */
    double step = nice_step(fr.ymax);
    for (int k = 0; k * step <= fr.ymax * (1 + 1e-9); k++) {
        double y = py(&fr, k * step);
        fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#ddd\"/>\n<text x=\"%d\" y=\"%.1f\" "
                "text-anchor=\"end\">%g", ML, y, fr.w - MR, y, ML - 6, y + 4, k * step);
        hae_xml_text(f, c->y_unit);
        fputs("</text>\n", f);
    }
    int e0 = (int)ceil(fr.lx0 - 1e-9), e1 = (int)floor(fr.lx1 + 1e-9), every = (e1 - e0) / 10 + 1;
    for (int e = e0 < 0 ? 0 : e0; e <= e1 && e < 62; e += every) {
        char lab[32];
        double x = px(&fr, exp2(e));
        fprintf(f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#ddd\"/>\n<text x=\"%.1f\" y=\"%d\" "
                "text-anchor=\"middle\">%s</text>\n", x, MT, x, PB, x, PB + 18,
                hae_fmt_tokens((int64_t)1 << e, false, lab, sizeof lab));
    }
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"black\"/>\n", ML, MT, pw,
            PB - MT);
    fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">", ML + pw / 2, PB + 40);
    hae_xml_text(f, c->x_label);
    fputs("</text>\n", f);
    /* reference lines */
    int n_vertical = 0;
    for (int i = 0; i < c->n_marks; i++) {
        const hae_chart_mark *m = &c->marks[i];
        if (!m->vertical) {
            double y = py(&fr, m->at);
            fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"%s\" stroke-dasharray=\"6 4\"/>\n"
                    "<text x=\"%d\" y=\"%.1f\" fill=\"%s\">", ML, y, fr.w - MR, y, hae_chart_color(m->style), ML + 6,
                    y + 15, hae_chart_color(m->style));
        } else {
            if (!(m->at > 0) || log2(m->at) < fr.lx0 || log2(m->at) > fr.lx1) continue;
            double x = px(&fr, m->at);
            fprintf(f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"%s\" stroke-dasharray=\"2 3\"/>\n"
                    "<text x=\"%.1f\" y=\"%d\" text-anchor=\"end\" fill=\"%s\">", x, MT, x, PB,
                    hae_chart_color(m->style), x - 4, PB - 8 - 16 * n_vertical++, hae_chart_color(m->style));
        }
        hae_xml_text(f, m->label);
        fputs("</text>\n", f);
    }
    /* series, clipped to the plot */
    fprintf(f, "<clipPath id=\"plot\"><rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\"/></clipPath>\n"
            "<g clip-path=\"url(#plot)\">\n", ML, MT, pw, PB - MT);
    for (int s = 0; s < c->n_series; s++) {
        const hae_chart_series *se = &c->series[s];
        if (se->line && se->n > 1) {
            fputs("<polyline fill=\"none\" stroke-width=\"2\"", f);
            stroke(f, se->style);
            fputs(" points=\"", f);
            for (int i = 0; i < se->n; i++) fprintf(f, "%s%.1f,%.1f", i ? " " : "", px(&fr, se->x[i]), py(&fr, se->y[i]));
            fputs("\"/>\n", f);
        }
        for (int i = 0; se->dots && i < se->n; i++)
            fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\" fill=\"%s\"/>\n", px(&fr, se->x[i]),
                    py(&fr, se->y[i]), hae_chart_color(se->style));
    }
    fputs("</g>\n", f);
    /* legend under the plot */
    for (int s = 0, row = 0; s < c->n_series; s++) {
        const hae_chart_series *se = &c->series[s];
        if (!se->label) continue;
        int y = PB + 68 + LEGEND_ROW * row++;
        fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke-width=\"2\"", ML, y - 4, ML + 28, y - 4);
        stroke(f, se->style);
        fputs("/>", f);
        if (se->dots)
            fprintf(f, "<circle cx=\"%d\" cy=\"%d\" r=\"3.5\" fill=\"%s\"/>", ML + 14, y - 4, hae_chart_color(se->style));
        fprintf(f, "<text x=\"%d\" y=\"%d\">", ML + 36, y);
        hae_xml_text(f, se->label);
        fputs("</text>\n", f);
    }
    fputs("</svg>\n", f);
    return ferror(f) ? hae_error(HAE_ERR_IO, "hae_chart_svg: a write failed") : HAE_OK;
}

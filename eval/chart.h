/* What hae's reports (`hae mem`, `hae eval`, `hae report`) write with: the one SVG line-chart writer
 * (hand-written SVG, no libraries), XML and CSV escaping, token counts. In a chart x runs on a log2 axis
 * (context lengths, hops) with ticks at powers of two, y linearly from 0; series are polylines and/or dots
 * clipped to the plot; reference lines are dashed; the legend sits under the plot, one entry a line. */
#ifndef HAE_CHART_H
#define HAE_CHART_H

#include "hae.h"

typedef struct hae_chart_series {
    const char *label;   /* legend entry, or NULL for none */
    const double *x, *y; /* [n] points, x > 0 */
    int n;
    int style;           /* colour style % 10, dash style / 10 % 4 */
    bool line, dots;
} hae_chart_series;

/* A dashed reference line across the plot: horizontal at y = at, or vertical at x = at (skipped when outside
 * the x range); vertical labels stack upwards from the bottom of the plot in the order given. */
typedef struct hae_chart_mark {
    double at;
    bool vertical;
    const char *label;
    int style;
} hae_chart_mark;

typedef struct hae_chart {
    const char *title, *x_label;
    const char *y_unit;    /* after each y tick value (" GiB"), or NULL */
    double x_lo, x_hi;     /* the x range; both 0: the points' range */
    double x_pad;          /* log2 units of room left and right of the x range */
    double y_max;          /* y from 0 to y_max; 0: the points' maximum */
    const hae_chart_series *series;
    int n_series;
    const hae_chart_mark *marks;
    int n_marks;
} hae_chart;

hae_status hae_chart_svg(const hae_chart *c, FILE *f);
/* The colour of style i ("#1f77b4", ...). */
const char *hae_chart_color(int style);
/* Token counts as people write them: 131072 -> "128K", 1048576 -> "1M", 1000 -> "1000"; other counts of 10K
 * and more as "6296832 (6.01M)" when exact, else "6.01M". K = 1024. */
const char *hae_fmt_tokens(int64_t n, bool exact, char *buf, size_t cap);
/* Writes s with XML's five special characters escaped. */
void hae_xml_text(FILE *f, const char *s);
/* Writes s as one CSV cell: quoted (inner quotes doubled) when it holds a comma, quote or line break. */
void hae_csv_cell(FILE *f, const char *s);

#endif

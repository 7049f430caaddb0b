/* chart.h - drawing helpers the simulator's charts share (run --chart, plan --chart). */
#pragma once

#include <cairo.h>
#include <glib.h>

G_BEGIN_DECLS

/* An SVG chart of width x height at path, painted white. NULL when the file cannot be written,
 * with cairo's reason in *why. */
cairo_t *sim_chart_begin(const char *path, double width, double height, const char **why);

/* Writes the chart out and frees it, with cairo's font caches (one chart per process): NULL on
 * success, else cairo's reason. */
const char *sim_chart_end(cairo_t *cr);

/* Shows text with its anchor at x: align 0 left, 0.5 centred, 1 right. */
void sim_chart_text_at(cairo_t *cr, double x, double y, const char *text, double align);

/* A panel at (left, top) of pw x ph: its frame, a light grid line and a label (the value, then
 * unit) every step from 0 to max, and title written upwards, centred, at the left edge. */
void sim_chart_y_axis(cairo_t *cr, double left, double top, double pw, double ph, double max,
                      double step, const char *unit, const char *title);

G_END_DECLS

/* chart.h - drawing helpers the simulator's charts share (run --chart, plan --chart). */
#pragma once

#include <cairo.h>
#include <glib.h>

G_BEGIN_DECLS

/* Shows text with its anchor at x: align 0 left, 0.5 centred, 1 right. */
void sim_chart_text_at(cairo_t *cr, double x, double y, const char *text, double align);

/* A panel at (left, top) of pw x ph: its frame, a light grid line and a label (the value, then
 * unit) every step from 0 to max, and title written upwards, centred, at the left edge. */
void sim_chart_y_axis(cairo_t *cr, double left, double top, double pw, double ph, double max,
                      double step, const char *unit, const char *title);

G_END_DECLS

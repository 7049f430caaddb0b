/* chart.c - drawing helpers the simulator's charts share (run --chart, plan --chart). */
#include "sim/chart.h"

#include <cairo-svg.h>

cairo_t *
sim_chart_begin(const char *path, double width, double height, const char **why)
{
  cairo_surface_t *surface = cairo_svg_surface_create(path, width, height);
  cairo_status_t st = cairo_surface_status(surface);
  if (st != CAIRO_STATUS_SUCCESS) {
    *why = cairo_status_to_string(st);
    cairo_surface_destroy(surface);
    return NULL;
  }
  cairo_t *cr = cairo_create(surface);
  cairo_surface_destroy(surface); /* cr holds it */
  cairo_set_source_rgb(cr, 1, 1, 1);
  cairo_paint(cr);
  return cr;
}

const char *
sim_chart_end(cairo_t *cr)
{
  cairo_surface_t *surface = cairo_surface_reference(cairo_get_target(cr));
  cairo_destroy(cr);
  cairo_surface_finish(surface);
  cairo_status_t st = cairo_surface_status(surface);
  cairo_surface_destroy(surface);
  cairo_debug_reset_static_data(); /* drop cairo's font caches: one chart per process */
  return st == CAIRO_STATUS_SUCCESS ? NULL : cairo_status_to_string(st);
}

void
sim_chart_text_at(cairo_t *cr, double x, double y, const char *text, double align)
{
  cairo_text_extents_t e;
  cairo_text_extents(cr, text, &e);
  cairo_move_to(cr, x - e.x_advance * align, y);
  cairo_show_text(cr, text);
}

void
sim_chart_y_axis(cairo_t *cr, double left, double top, double pw, double ph, double max,
                 double step, const char *unit, const char *title)
{
  cairo_set_font_size(cr, 11);
  for (double v = 0; v <= max + step / 2; v += step) {
    double y = top + ph - ph * v / max;
    char label[32];
    g_snprintf(label, sizeof(label), "%.0f%s", v, unit);
    cairo_set_source_rgb(cr, 0, 0, 0);
    sim_chart_text_at(cr, left - 6, y + 4, label, 1.0);
    cairo_set_source_rgb(cr, 0.9, 0.9, 0.9);
    cairo_move_to(cr, left, y);
    cairo_line_to(cr, left + pw, y);
    cairo_stroke(cr);
  }
  cairo_set_source_rgb(cr, 0, 0, 0);
  cairo_rectangle(cr, left, top, pw, ph);
  cairo_stroke(cr);
  cairo_save(cr);
  cairo_move_to(cr, 16, top + ph / 2);
  cairo_rotate(cr, -G_PI / 2);
  cairo_text_extents_t e;
  cairo_text_extents(cr, title, &e);
  cairo_rel_move_to(cr, -e.x_advance / 2, 0);
  cairo_show_text(cr, title);
  cairo_restore(cr);
}

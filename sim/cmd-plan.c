/* cmd-plan.c - "ushersim plan": what a configuration change does to user placement, before it is
 * rolled out. For every user: its backend on a freshly started ring under the current
 * configuration and under the proposed one (the same answer "ushersim map" gives for each). */
#include "common/config-file.h"
#include "libcore/host.h"
#include "sim/sim.h"

#include "sim/chart.h"

#include <json-glib/json-glib.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

typedef struct {
  UsherConfig *config;
  UsherHostTable *table;
  UsherHashFormat *format;
  UsherTag *tag;
} Side;

static gboolean
side_load(Side *s, const char *path, const char *tag, GError **error)
{
  s->config = usher_config_load_file(path, error);
  if (s->config == NULL)
    return FALSE;
  s->format = usher_hash_format_new(s->config->username_hash, error);
  if (s->format == NULL)
    return FALSE;
  s->table = usher_host_table_new(s->config->user_expire_secs);
  if (!usher_host_table_add_backends(s->table, s->config->backends, error))
    return FALSE;
  s->tag = ushersim_usable_tag(s->table, tag != NULL ? tag : "", path, error);
  return s->tag != NULL;
}

static void
side_clear(Side *s)
{
  usher_host_table_free(s->table);
  usher_hash_format_free(s->format);
  usher_config_free(s->config);
}

/* Backends of both sides, by address, merged: index into the rows of the report. */
typedef struct {
  UsherIp ip;
  char ip_str[USHER_IP_STRLEN];
  UsherHost *before, *after;
  guint64 users_before, users_after;
  guint64 moved_out, moved_in;
} Row;

static int
cmp_row(gconstpointer a, gconstpointer b)
{
  return usher_ip_cmp(&((const Row *)a)->ip, &((const Row *)b)->ip);
}

static guint
row_of(GArray *rows, const UsherIp *ip)
{
  for (guint i = 0; i < rows->len; i++)
    if (usher_ip_equal(&g_array_index(rows, Row, i).ip, ip))
      return i;
  g_assert_not_reached();
}

static void
add_rows(GArray *rows, Side *s, gboolean before)
{
  for (guint i = 0; i < usher_host_table_n_hosts(s->table); i++) {
    UsherHost *h = usher_host_table_nth(s->table, i);
    if (h->tag != s->tag)
      continue;
    guint idx = G_MAXUINT;
    for (guint k = 0; k < rows->len; k++)
      if (usher_ip_equal(&g_array_index(rows, Row, k).ip, &h->ip))
        idx = k;
    if (idx == G_MAXUINT) {
      Row r = {0};
      r.ip = h->ip;
      memcpy(r.ip_str, h->ip_str, sizeof(r.ip_str));
      g_array_append_val(rows, r);
      idx = rows->len - 1;
    }
    Row *r = &g_array_index(rows, Row, idx);
    if (before)
      r->before = h;
    else
      r->after = h;
  }
}

/* The backend as the table names it: its address, its [backend] host name, and whether the
 * change removes it, adds it or keeps it down. */
static char *
row_label(const Row *r)
{
  const UsherHost *h = r->after != NULL ? r->after : r->before;
  const char *state = r->after == NULL             ? " [removed]"
                      : r->before == NULL          ? " [new]"
                      : r->after->down             ? " [down]"
                                                   : "";
  if (h != NULL && h->hostname != NULL && h->hostname[0] != '\0')
    return g_strdup_printf("%s (%s)%s", r->ip_str, h->hostname, state);
  return g_strdup_printf("%s%s", r->ip_str, state);
}

/* --chart: for a change ticket. Two bars per backend (share before, share after) on a round
 * percentage axis, and the largest moves written out under them. */
static gboolean
plan_chart(const char *path, GArray *rows, const guint64 *moved, guint64 total, guint64 total_moved,
           gboolean safe)
{
  guint n = rows->len;
  const double width = 960, left = 70, right = 30, top = 60, ph = 300, bar_gap = 0.25;
  guint n_moves = 0;
  for (guint f = 0; f <= n; f++)
    for (guint t = 0; t <= n; t++)
      n_moves += moved[(gsize)f * (n + 1) + t] > 0;
  guint shown = MIN(n_moves, 8u);
  const double height = top + ph + 90 + 16 * shown + 20;
  const char *why = NULL;
  cairo_t *cr = sim_chart_begin(path, width, height, &why);
  if (cr == NULL) {
    fprintf(stderr, "ushersim plan: --chart %s: %s\n", path, why);
    return FALSE;
  }
  double pw = width - left - right;
  double max_pct = 1;
  for (guint i = 0; i < n; i++) {
    const Row *r = &g_array_index(rows, Row, i);
    max_pct = MAX(max_pct, 100.0 * (double)MAX(r->users_before, r->users_after) / (double)MAX(total, 1));
  }
  static const double steps[] = {1, 2, 5, 10, 20, 25, 50};
  double step = 50;
  for (gsize i = 0; i < G_N_ELEMENTS(steps); i++)
    if (max_pct / steps[i] <= 6) {
      step = steps[i];
      break;
    }
  double top_pct = step * (double)(guint)((max_pct + step - 1e-9) / step);
  if (top_pct < max_pct)
    top_pct += step;
  cairo_select_font_face(cr, "sans-serif", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_BOLD);
  cairo_set_font_size(cr, 15);
  cairo_set_source_rgb(cr, 0, 0, 0);
  cairo_move_to(cr, left, 24);
  g_autofree char *title = g_strdup_printf(
    "the change moves %" G_GUINT64_FORMAT " of %" G_GUINT64_FORMAT " users (%.1f%%): %s", total_moved,
    total, 100.0 * (double)total_moved / (double)MAX(total, 1),
    safe ? "safe to apply in one step" : "NOT safe in one step");
  cairo_show_text(cr, title);
  cairo_select_font_face(cr, "sans-serif", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
  cairo_set_font_size(cr, 11);
  cairo_set_line_width(cr, 1);
  sim_chart_y_axis(cr, left, top, pw, ph, top_pct, step, "%", "share of the users");
  double slot = pw / MAX(n, 1u), bw = slot * (1 - bar_gap) / 2;
  static const double before_rgb[3] = {0.65, 0.65, 0.65}, after_rgb[3] = {0.12, 0.47, 0.71};
  for (guint i = 0; i < n; i++) {
    const Row *r = &g_array_index(rows, Row, i);
    double x = left + slot * i + slot * bar_gap / 2;
    double hb = ph * (100.0 * (double)r->users_before / (double)MAX(total, 1)) / top_pct;
    double ha = ph * (100.0 * (double)r->users_after / (double)MAX(total, 1)) / top_pct;
    cairo_set_source_rgb(cr, before_rgb[0], before_rgb[1], before_rgb[2]);
    cairo_rectangle(cr, x, top + ph - hb, bw, hb);
    cairo_fill(cr);
    cairo_set_source_rgb(cr, after_rgb[0], after_rgb[1], after_rgb[2]);
    cairo_rectangle(cr, x + bw, top + ph - ha, bw, ha);
    cairo_fill(cr);
    g_autofree char *label = row_label(r);
    cairo_text_extents_t e;
    cairo_set_font_size(cr, n > 12 ? 8 : 10);
    cairo_text_extents(cr, label, &e);
    cairo_set_source_rgb(cr, 0, 0, 0);
    cairo_save(cr);
    if (e.x_advance > slot) {
      cairo_move_to(cr, x + bw, top + ph + 12);
      cairo_rotate(cr, G_PI / 6);
    } else {
      cairo_move_to(cr, x + bw - e.x_advance / 2, top + ph + 14);
    }
    cairo_show_text(cr, label);
    cairo_restore(cr);
  }
  cairo_set_font_size(cr, 11);
  double ly = top + ph + 66;
  cairo_set_source_rgb(cr, before_rgb[0], before_rgb[1], before_rgb[2]);
  cairo_rectangle(cr, left, ly - 9, 12, 10);
  cairo_fill(cr);
  cairo_set_source_rgb(cr, 0, 0, 0);
  cairo_move_to(cr, left + 16, ly);
  cairo_show_text(cr, "before");
  cairo_set_source_rgb(cr, after_rgb[0], after_rgb[1], after_rgb[2]);
  cairo_rectangle(cr, left + 80, ly - 9, 12, 10);
  cairo_fill(cr);
  cairo_set_source_rgb(cr, 0, 0, 0);
  cairo_move_to(cr, left + 96, ly);
  cairo_show_text(cr, "after");
  /* The largest moves, most first. */
  g_autofree guint *order = g_new0(guint, MAX(n_moves, 1u));
  guint k = 0;
  for (guint f = 0; f <= n; f++)
    for (guint t = 0; t <= n; t++)
      if (moved[(gsize)f * (n + 1) + t] > 0)
        order[k++] = f * (n + 1) + t;
  for (guint a = 0; a < k; a++)
    for (guint b = a + 1; b < k; b++)
      if (moved[order[b]] > moved[order[a]]) {
        guint tmp = order[a];
        order[a] = order[b];
        order[b] = tmp;
      }
  cairo_move_to(cr, left + 180, ly);
  cairo_show_text(cr, n_moves > shown ? "largest moves (the rest in the text output):"
                                       : "moves:");
  for (guint i = 0; i < shown; i++) {
    guint f = order[i] / (n + 1), t = order[i] % (n + 1);
    g_autofree char *line = g_strdup_printf(
      "%s -> %s: %" G_GUINT64_FORMAT " users", f < n ? g_array_index(rows, Row, f).ip_str : "(none)",
      t < n ? g_array_index(rows, Row, t).ip_str : "(none)", moved[order[i]]);
    cairo_move_to(cr, left + 200, ly + 16 * (i + 1));
    cairo_show_text(cr, line);
  }
  why = sim_chart_end(cr);
  if (why != NULL) {
    fprintf(stderr, "ushersim plan: --chart %s: %s\n", path, why);
    return FALSE;
  }
  return TRUE;
}

/* json-glib prints doubles with 17 digits (38.399999999999999); the plan's figures are in
 * hundredths: written as such (38.4). Only number tokens are touched: string literals (a host
 * name such as "mx1.1234567.example") are copied as they are. */
static char *
round_json_numbers(const char *json)
{
  GString *out = g_string_sized_new(strlen(json));
  for (const char *p = json; *p != '\0';) {
    if (*p == '"') {
      const char *q = p + 1;
      while (*q != '\0' && *q != '"')
        q += (*q == '\\' && q[1] != '\0') ? 2 : 1;
      if (*q == '"')
        q++;
      g_string_append_len(out, p, q - p);
      p = q;
      continue;
    }
    if (*p != '-' && !g_ascii_isdigit(*p)) {
      g_string_append_c(out, *p++);
      continue;
    }
    gsize n = strspn(p, "-+0123456789.eE");
    const char *dot = memchr(p, '.', n);
    gsize decimals = dot != NULL ? strspn(dot + 1, "0123456789") : 0;
    if (decimals < 6 || memchr(p, 'e', n) != NULL || memchr(p, 'E', n) != NULL) {
      g_string_append_len(out, p, (gssize)n);
    } else {
      g_autofree char *number = g_strndup(p, n);
      char buf[G_ASCII_DTOSTR_BUF_SIZE];
      g_ascii_formatd(buf, sizeof(buf), "%.2f", g_ascii_strtod(number, NULL));
      gsize len = strlen(buf);
      while (len >= 2 && buf[len - 1] == '0' && buf[len - 2] != '.')
        buf[--len] = '\0'; /* 38.40 -> 38.4, 12.00 -> 12.0 */
      g_string_append(out, buf);
    }
    p += n;
  }
  return g_string_free(out, FALSE);
}

static guint64
hundredths(guint64 part, guint64 whole)
{
  return whole == 0 ? 0 : (part * 10000 + whole / 2) / whole;
}

int
ushersim_cmd_plan(int argc, char **argv)
{
  g_autofree char *current = NULL, *proposed = NULL, *users_path = NULL, *tag = NULL;
  gint64 user_count = G_MININT64; /* not given */
#define UNSET (-G_MAXDOUBLE) /* an option not given */
  gdouble max_moved = UNSET, max_share = UNSET;
  gboolean json = FALSE;
  g_autofree char *chart = NULL;
  GOptionEntry entries[] = {
    {"config", 'c', 0, G_OPTION_ARG_FILENAME, &current, "The configuration in use", "FILE"},
    {"proposed", 'p', 0, G_OPTION_ARG_FILENAME, &proposed, "The configuration to roll out", "FILE"},
    {"users", 'u', 0, G_OPTION_ARG_FILENAME, &users_path,
     "Usernames, one per line (- for standard input)", "FILE"},
    {"user-count", 'n', 0, G_OPTION_ARG_INT64, &user_count,
     "Use N synthetic users instead (default 100000): userK at five domains, one in four "
     "with capitals (User4@Example.COM), so hash changes of %u/%n/%d and case show",
     "N"},
    {"tag", 't', 0, G_OPTION_ARG_STRING, &tag, "Plan for this tag's ring (default: untagged)",
     "TAG"},
    {"max-moved", 0, 0, G_OPTION_ARG_DOUBLE, &max_moved,
     "Fail (exit 1) if more than PCT percent of the users change backend (default 25)", "PCT"},
    {"max-share", 0, 0, G_OPTION_ARG_DOUBLE, &max_share,
     "Fail (exit 1) if any backend would get more than PCT percent of the users", "PCT"},
    {"json", 0, 0, G_OPTION_ARG_NONE, &json, "Print the plan as JSON", NULL},
    {"chart", 0, 0, G_OPTION_ARG_FILENAME, &chart,
     "Also draw it (SVG): each backend's share before and after, and the largest moves", "FILE"},
    {NULL},
  };
  g_autoptr(GOptionContext) ctx = g_option_context_new("- what a configuration change moves");
  g_option_context_set_summary(
    ctx,
    "Compares user placement under the current and the proposed configuration: how many users\n"
    "each backend loses to each other, every backend's share before and after, and whether the\n"
    "change can be applied in one step. Without --max-moved, 25 percent is the limit (adding one\n"
    "backend to four moves 20; --max-moved 100 accepts any change). Exit status: 0 within the\n"
    "thresholds, 1 a threshold is crossed (or username_hash changes, or some users would have\n"
    "no backend), 2 bad input. Placement is a freshly started ring's, as\n"
    "in 'ushersim map'; users that are already assigned keep their backend until they expire or\n"
    "are flushed.");
  g_option_context_add_main_entries(ctx, entries, NULL);
  g_autoptr(GError) error = NULL;
  if (!ushersim_options_once("ushersim plan", argc, argv, entries))
    return USHERSIM_EXIT_USAGE;
  if (!g_option_context_parse(ctx, &argc, &argv, &error)) {
    fprintf(stderr, "ushersim plan: %s\n", error->message);
    return USHERSIM_EXIT_USAGE;
  }
  if (argc > 1) {
    fprintf(stderr, "ushersim plan: unexpected argument \"%s\"\n", argv[1]);
    return USHERSIM_EXIT_USAGE;
  }
  if (current == NULL || proposed == NULL) {
    fprintf(stderr, "ushersim plan: --config FILE and --proposed FILE are both required\n");
    return USHERSIM_EXIT_USAGE;
  }
  const char *chart_problem = chart != NULL ? ushersim_output_problem(chart) : NULL;
  if (chart_problem != NULL) {
    fprintf(stderr, "ushersim plan: --chart %s: the file %s\n", chart, chart_problem);
    return USHERSIM_EXIT_USAGE;
  }
  if (users_path != NULL && user_count != G_MININT64) {
    fprintf(stderr, "ushersim plan: give --users or --user-count, not both\n");
    return USHERSIM_EXIT_USAGE;
  }
  if (user_count != G_MININT64 && (user_count < 1 || user_count > 100000000)) {
    fprintf(stderr, "ushersim plan: --user-count %" G_GINT64_FORMAT " is out of range: it must be "
                    "1..100000000\n", user_count);
    return USHERSIM_EXIT_USAGE;
  }
  /* Written so that NaN (which compares false with everything) is out of range too. */
  if (max_moved != UNSET && !(max_moved >= 0 && max_moved <= 100)) {
    fprintf(stderr, "ushersim plan: --max-moved %g is out of range: a percentage, 0..100\n",
            max_moved);
    return USHERSIM_EXIT_USAGE;
  }
  if (max_share != UNSET && !(max_share >= 0 && max_share <= 100)) {
    fprintf(stderr, "ushersim plan: --max-share %g is out of range: a percentage, 0..100\n",
            max_share);
    return USHERSIM_EXIT_USAGE;
  }
  if (users_path == NULL && user_count == G_MININT64)
    user_count = 100000;
  gboolean moved_default = max_moved == UNSET;
  if (moved_default)
    max_moved = 25;

  Side before = {0}, after = {0};
  if (!side_load(&before, current, tag, &error) || !side_load(&after, proposed, tag, &error)) {
    fprintf(stderr, "ushersim plan: %s\n", error->message);
    side_clear(&before);
    side_clear(&after);
    return USHERSIM_EXIT_USAGE;
  }

  g_autoptr(GArray) rows = g_array_new(FALSE, TRUE, sizeof(Row));
  add_rows(rows, &before, TRUE);
  add_rows(rows, &after, FALSE);
  g_array_sort(rows, cmp_row);
  guint n = rows->len;
  /* moved[from * (n + 1) + to]; index n stands for "no usable backend". */
  guint64 *moved = g_new0(guint64, (gsize)(n + 1) * (n + 1));
  guint64 total = 0, total_moved = 0, none_before = 0, none_after = 0, empty = 0;
  guint64 rehashed = 0; /* users whose hash the new username_hash changes */

  FILE *in = NULL;
  if (users_path != NULL && g_file_test(users_path, G_FILE_TEST_IS_DIR)) {
    fprintf(stderr, "ushersim plan: --users %s is a directory: give a file with one user name "
                    "per line (or - for standard input)\n", users_path);
    g_free(moved);
    side_clear(&before);
    side_clear(&after);
    return USHERSIM_EXIT_USAGE;
  }
  if (users_path != NULL) {
    in = strcmp(users_path, "-") == 0 ? stdin : fopen(users_path, "rb");
    if (in == NULL) {
      fprintf(stderr, "ushersim plan: %s: %s\n", users_path, g_strerror(errno));
      g_free(moved);
      side_clear(&before);
      side_clear(&after);
      return USHERSIM_EXIT_USAGE;
    }
  }
  char *line = NULL;
  size_t cap = 0;
  guint64 lineno = 0;
  for (guint64 k = 1;; k++) {
    gsize len;
    char name[32];
    const char *user;
    if (in != NULL) {
      ssize_t got = getline(&line, &cap, in);
      if (got <= 0)
        break;
      lineno++;
      len = (gsize)got;
      if (line[len - 1] == '\n') {
        len--;
        if (len > 0 && line[len - 1] == '\r')
          len--;
      }
      if (len == 0) {
        fprintf(stderr, "ushersim plan: %s:%" G_GUINT64_FORMAT ": empty line skipped\n",
                users_path, lineno);
        empty++;
        continue;
      }
      user = line;
    } else {
      if (k > (guint64)user_count)
        break;
      /* Every part of a login a hash format can use: local part, domain, case. */
      static const char *const domains[] = {"example.org", "example.com", "mail.example.net",
                                            "example.edu", "example.de"};
      const char *domain = domains[k % G_N_ELEMENTS(domains)];
      len = (gsize)g_snprintf(name, sizeof(name), "%s%" G_GUINT64_FORMAT "@%s",
                              k % 4 == 0 ? "User" : "user", k, domain);
      if (k % 4 == 0)
        for (char *c = strchr(name, '@') + 1; *c != '\0' && *c != '.'; c++)
          *c = g_ascii_toupper(*c); /* User4@EXAMPLE.edu */
      user = name;
    }
    guint32 hash_before = usher_hash_format_user(before.format, user, (gssize)len);
    guint32 hash_after = usher_hash_format_user(after.format, user, (gssize)len);
    rehashed += hash_before != hash_after;
    UsherHost *hb = usher_tag_place(before.table, before.tag, hash_before);
    UsherHost *ha = usher_tag_place(after.table, after.tag, hash_after);
    guint from = hb != NULL ? row_of(rows, &hb->ip) : n;
    guint to = ha != NULL ? row_of(rows, &ha->ip) : n;
    total++;
    if (from < n)
      g_array_index(rows, Row, from).users_before++;
    else
      none_before++;
    if (to < n)
      g_array_index(rows, Row, to).users_after++;
    else
      none_after++;
    if (from != to) {
      moved[(gsize)from * (n + 1) + to]++;
      total_moved++;
      if (from < n)
        g_array_index(rows, Row, from).moved_out++;
      if (to < n)
        g_array_index(rows, Row, to).moved_in++;
    }
  }
  free(line);
  gboolean read_failed = in != NULL && ferror(in);
  if (in != NULL && in != stdin)
    fclose(in);
  if (read_failed || total == 0) {
    if (read_failed)
      fprintf(stderr, "ushersim plan: %s: read error after line %" G_GUINT64_FORMAT "\n",
              users_path, lineno);
    else
      fprintf(stderr, "ushersim plan: --users %s: no user names in it (%" G_GUINT64_FORMAT
                      " lines, all empty): a verdict on no users would say nothing\n",
              users_path, lineno);
    g_free(moved);
    side_clear(&before);
    side_clear(&after);
    return USHERSIM_EXIT_USAGE;
  }

  guint64 max_share_after = 0;
  const char *max_share_host = "-";
  for (guint i = 0; i < n; i++) {
    Row *r = &g_array_index(rows, Row, i);
    guint64 sh = hundredths(r->users_after, total);
    if (sh > max_share_after) {
      max_share_after = sh;
      max_share_host = r->ip_str;
    }
  }
  guint64 moved_pct = hundredths(total_moved, total);
  /* By what it does, not how it is written: %u and %{user} hash every user the same. */
  gboolean hash_text_differs = strcmp(usher_hash_format_get_text(before.format),
                                      usher_hash_format_get_text(after.format)) != 0;
  gboolean hash_changes = rehashed > 0;
  gboolean over_moved = max_moved >= 0 && (double)moved_pct > max_moved * 100.0 + 1e-9;
  gboolean over_share = max_share >= 0 && (double)max_share_after > max_share * 100.0 + 1e-9;
  gboolean safe = !over_moved && !over_share && !hash_changes && none_after == 0;

  if (json) {
    g_autoptr(JsonBuilder) b = json_builder_new();
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "users");
    json_builder_add_int_value(b, (gint64)total);
    json_builder_set_member_name(b, "moved");
    json_builder_add_int_value(b, (gint64)total_moved);
    json_builder_set_member_name(b, "moved_percent");
    json_builder_add_double_value(b, moved_pct / 100.0);
    json_builder_set_member_name(b, "max_share_percent");
    json_builder_add_double_value(b, max_share_after / 100.0);
    json_builder_set_member_name(b, "username_hash_changes");
    json_builder_add_boolean_value(b, hash_changes);
    json_builder_set_member_name(b, "users_hashed_differently");
    json_builder_add_int_value(b, (gint64)rehashed);
    json_builder_set_member_name(b, "unplaced_before");
    json_builder_add_int_value(b, (gint64)none_before);
    json_builder_set_member_name(b, "unplaced_after");
    json_builder_add_int_value(b, (gint64)none_after);
    json_builder_set_member_name(b, "safe");
    json_builder_add_boolean_value(b, safe);
    json_builder_set_member_name(b, "backends");
    json_builder_begin_array(b);
    for (guint i = 0; i < n; i++) {
      Row *r = &g_array_index(rows, Row, i);
      json_builder_begin_object(b);
      json_builder_set_member_name(b, "backend");
      json_builder_add_string_value(b, r->ip_str);
      const UsherHost *hh = r->after != NULL ? r->after : r->before;
      json_builder_set_member_name(b, "hostname");
      if (hh != NULL && hh->hostname != NULL && hh->hostname[0] != '\0')
        json_builder_add_string_value(b, hh->hostname);
      else
        json_builder_add_null_value(b);
      json_builder_set_member_name(b, "removed");
      json_builder_add_boolean_value(b, r->after == NULL);
      json_builder_set_member_name(b, "added");
      json_builder_add_boolean_value(b, r->before == NULL);
      json_builder_set_member_name(b, "users_before");
      json_builder_add_int_value(b, (gint64)r->users_before);
      json_builder_set_member_name(b, "users_after");
      json_builder_add_int_value(b, (gint64)r->users_after);
      json_builder_set_member_name(b, "share_before_percent");
      json_builder_add_double_value(b, hundredths(r->users_before, total) / 100.0);
      json_builder_set_member_name(b, "share_after_percent");
      json_builder_add_double_value(b, hundredths(r->users_after, total) / 100.0);
      json_builder_set_member_name(b, "moved_out");
      json_builder_add_int_value(b, (gint64)r->moved_out);
      json_builder_set_member_name(b, "moved_in");
      json_builder_add_int_value(b, (gint64)r->moved_in);
      json_builder_end_object(b);
    }
    json_builder_end_array(b);
    json_builder_set_member_name(b, "moves");
    json_builder_begin_array(b);
    for (guint f = 0; f <= n; f++) {
      for (guint t = 0; t <= n; t++) {
        guint64 c = moved[(gsize)f * (n + 1) + t];
        if (c == 0)
          continue;
        json_builder_begin_object(b);
        json_builder_set_member_name(b, "from");
        json_builder_add_string_value(b, f < n ? g_array_index(rows, Row, f).ip_str : "");
        json_builder_set_member_name(b, "to");
        json_builder_add_string_value(b, t < n ? g_array_index(rows, Row, t).ip_str : "");
        json_builder_set_member_name(b, "users");
        json_builder_add_int_value(b, (gint64)c);
        json_builder_end_object(b);
      }
    }
    json_builder_end_array(b);
    json_builder_end_object(b);
    g_autoptr(JsonGenerator) gen = json_generator_new();
    g_autoptr(JsonNode) root = json_builder_get_root(b);
    json_generator_set_root(gen, root);
    json_generator_set_pretty(gen, TRUE);
    g_autofree char *raw = json_generator_to_data(gen, NULL);
    g_autofree char *text = round_json_numbers(raw);
    printf("%s\n", text);
  } else {
    printf("%" G_GUINT64_FORMAT " users; %" G_GUINT64_FORMAT " change backend (%" G_GUINT64_FORMAT
           ".%02u%%)\n\n",
           total, total_moved, moved_pct / 100, (guint)(moved_pct % 100));
    printf("%-40s %10s %10s %8s %8s %9s %9s\n", "backend", "before", "after", "share", "after",
           "moves out", "moves in");
    for (guint i = 0; i < n; i++) {
      Row *r = &g_array_index(rows, Row, i);
      guint64 sb = hundredths(r->users_before, total), sa = hundredths(r->users_after, total);
      g_autofree char *label = row_label(r);
      printf("%-40s %10" G_GUINT64_FORMAT " %10" G_GUINT64_FORMAT " %5" G_GUINT64_FORMAT
             ".%02u%% %5" G_GUINT64_FORMAT ".%02u%% %9" G_GUINT64_FORMAT " %9" G_GUINT64_FORMAT
             "\n",
             label, r->users_before, r->users_after, sb / 100, (guint)(sb % 100), sa / 100,
             (guint)(sa % 100), r->moved_out, r->moved_in);
    }
    if (none_before > 0 || none_after > 0)
      printf("%-40s %10" G_GUINT64_FORMAT " %10" G_GUINT64_FORMAT "\n", "(no usable backend)",
             none_before, none_after);
    printf("\nmoves (from -> to: users)\n");
    for (guint f = 0; f <= n; f++)
      for (guint t = 0; t <= n; t++) {
        guint64 c = moved[(gsize)f * (n + 1) + t];
        if (c > 0)
          printf("  %s -> %s: %" G_GUINT64_FORMAT "\n",
                 f < n ? g_array_index(rows, Row, f).ip_str : "(none)",
                 t < n ? g_array_index(rows, Row, t).ip_str : "(none)", c);
      }
    printf("\nlargest share after the change: %s %" G_GUINT64_FORMAT ".%02u%%\n", max_share_host,
           max_share_after / 100, (guint)(max_share_after % 100));
    if (hash_changes)
      printf("username_hash changes (%s -> %s): %" G_GUINT64_FORMAT " of the %" G_GUINT64_FORMAT
             " users are hashed differently\n",
             usher_hash_format_get_text(before.format), usher_hash_format_get_text(after.format),
             rehashed, total);
    else if (hash_text_differs)
      printf("username_hash is written differently (%s -> %s) but hashes all %" G_GUINT64_FORMAT
             " users the same\n",
             usher_hash_format_get_text(before.format), usher_hash_format_get_text(after.format),
             total);
    if (none_after > 0)
      printf("%" G_GUINT64_FORMAT " users would have no usable backend\n", none_after);
    if (over_moved)
      printf("over --max-moved %.2f%%%s\n", max_moved, moved_default ? " (the default)" : "");
    if (over_share)
      printf("over --max-share %.2f%%\n", max_share);
    printf("limits: --max-moved %.2f%%%s%s\n", max_moved, moved_default ? " (default)" : "",
           max_share >= 0 ? "" : ", no --max-share");
    printf("safe to apply in one step: %s\n", safe ? "yes" : "no");
  }
  if (chart != NULL && !plan_chart(chart, rows, moved, total, total_moved, safe)) {
    g_free(moved);
    side_clear(&before);
    side_clear(&after);
    return USHERSIM_EXIT_USAGE;
  }
  g_free(moved);
  side_clear(&before);
  side_clear(&after);
  if (empty > 0)
    fprintf(stderr, "ushersim plan: %" G_GUINT64_FORMAT " empty line%s skipped\n", empty,
            empty == 1 ? "" : "s");
  return safe ? USHERSIM_EXIT_OK : USHERSIM_EXIT_CHECK_FAILED;
}

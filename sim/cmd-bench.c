/* cmd-bench.c - "ushersim bench-core": speed and memory of the placement core.
 *
 * Figures: placements per second (user hash + ring lookup, one core), user directory inserts,
 * lookups and expiries per second, and bytes per user at 1M and 10M users. Bytes per user is
 * measured twice: from the directory's own allocation accounting, and from the process's
 * resident memory before and after. A GLib GHashTable holding the same entries is measured side
 * by side as the reference ("peer") a naive implementation would use.
 */
#include "libcore/host.h"
#include "libcore/rng.h"
#include "libcore/user-hash.h"
#include "sim/sim.h"

#include <json-glib/json-glib.h>
#include <malloc.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Resident set size, after handing freed heap memory back to the kernel (otherwise a new
 * structure silently reuses what an earlier phase freed and seems to cost nothing). */
static gint64
rss_bytes(void)
{
  malloc_trim(0);
  g_autofree char *statm = NULL;
  if (!g_file_get_contents("/proc/self/statm", &statm, NULL, NULL))
    return -1;
  long long size = 0, resident = 0;
  if (sscanf(statm, "%lld %lld", &size, &resident) != 2)
    return -1;
  return (gint64)resident * sysconf(_SC_PAGESIZE);
}

static double
per_sec(guint64 ops, gint64 elapsed_us)
{
  return elapsed_us > 0 ? (double)ops * 1e6 / (double)elapsed_us : 0.0;
}

typedef struct {
  guint64 users;
  double placements_per_sec;
  double inserts_per_sec;
  double lookups_per_sec;
  double expiries_per_sec;
  double bytes_per_user_accounted;
  double bytes_per_user_rss;
  double ghash_bytes_per_user_rss;
  double ghash_inserts_per_sec;
} DirFigures;

/* Placement: pre-built names, a 10-backend ring with 100 vhosts each (a typical cluster). */
static double
bench_placement(guint64 n, volatile guint64 *sink)
{
  g_autoptr(UsherHostTable) table = usher_host_table_new(900);
  for (guint i = 1; i <= 10; i++) {
    g_autofree char *text = g_strdup_printf("10.0.0.%u", i);
    UsherIp ip;
    g_assert(usher_ip_parse(text, -1, &ip));
    usher_host_table_add(table, &ip, NULL, 100, NULL);
  }
  UsherTag *tag = usher_host_table_find_tag(table, "");
  (void)usher_tag_get_ring(table, tag);
  g_autoptr(UsherHashFormat) format = usher_hash_format_new("%Lu", NULL);

  guint names = (guint)MIN(n, 1000000);
  char **name = g_new(char *, names);
  gsize *len = g_new(gsize, names);
  for (guint i = 0; i < names; i++) {
    name[i] = g_strdup_printf("User%u@Example.com", i);
    len[i] = strlen(name[i]);
  }
  guint64 acc = 0;
  gint64 t0 = g_get_monotonic_time();
  for (guint64 i = 0; i < n; i++) {
    guint k = (guint)(i % names);
    UsherHost *h = usher_tag_place(table, tag, usher_hash_format_user(format, name[k], (gssize)len[k]));
    acc += h->id;
  }
  gint64 t1 = g_get_monotonic_time();
  *sink += acc;
  for (guint i = 0; i < names; i++)
    g_free(name[i]);
  g_free(name);
  g_free(len);
  return per_sec(n, t1 - t0);
}

static void
bench_directory(guint64 n, DirFigures *fig, volatile guint64 *sink)
{
  UsherRng rng;
  usher_rng_seed(&rng, 1);
  guint32 *hashes = g_new(guint32, n);
  for (guint64 i = 0; i < n; i++) {
    guint32 h;
    do
      h = usher_rng_next_u32(&rng);
    while (h == 0);
    hashes[i] = h;
  }
  fig->users = n;

  gint64 rss0 = rss_bytes();
  UsherUserDir *dir = usher_user_dir_new(NULL, 900);
  gint64 now = 1800000000;
  guint64 inserted = 0;
  gint64 t0 = g_get_monotonic_time();
  for (guint64 i = 0; i < n; i++) {
    /* A fresh login every microsecond of wall time would be unrealistic; a new second every
     * 1000 users keeps the list work realistic (always appended at the tail). */
    gint64 ts = now + (gint64)(i / 1000);
    if (usher_user_dir_lookup(dir, hashes[i]) == NULL) {
      usher_user_dir_add(dir, hashes[i], 1, ts, ts);
      inserted++;
    }
  }
  gint64 t1 = g_get_monotonic_time();
  gint64 rss1 = rss_bytes();
  fig->inserts_per_sec = per_sec(n, t1 - t0);
  fig->bytes_per_user_accounted = (double)usher_user_dir_memory_bytes(dir) / (double)inserted;
  fig->bytes_per_user_rss = rss0 >= 0 && rss1 >= 0 ? (double)(rss1 - rss0) / (double)inserted : -1;

  guint64 found = 0;
  t0 = g_get_monotonic_time();
  for (guint64 i = 0; i < n; i++) {
    guint64 k = (i * 2654435761u) % n;
    found += usher_user_dir_lookup(dir, hashes[k]) != NULL;
  }
  t1 = g_get_monotonic_time();
  fig->lookups_per_sec = per_sec(n, t1 - t0);
  *sink += found;

  UsherExpireStats st;
  gint64 end = now + (gint64)(n / 1000) + 900 + 1;
  t0 = g_get_monotonic_time();
  usher_user_dir_expire(dir, end, &st);
  t1 = g_get_monotonic_time();
  g_assert(usher_user_dir_count(dir) == 0);
  fig->expiries_per_sec = per_sec(st.expired, t1 - t0);
  usher_user_dir_free(dir);

  /* The peer: GHashTable of malloc'd entries, as a straightforward GLib program would do. */
  typedef struct {
    guint32 hash, timestamp, host;
    gpointer prev, next;
  } PeerUser;
  gint64 rss2 = rss_bytes();
  GHashTable *peer = g_hash_table_new_full(NULL, NULL, NULL, g_free);
  t0 = g_get_monotonic_time();
  for (guint64 i = 0; i < n; i++) {
    PeerUser *u = g_new0(PeerUser, 1);
    u->hash = hashes[i];
    g_hash_table_replace(peer, GUINT_TO_POINTER(hashes[i]), u);
  }
  t1 = g_get_monotonic_time();
  gint64 rss3 = rss_bytes();
  fig->ghash_inserts_per_sec = per_sec(n, t1 - t0);
  fig->ghash_bytes_per_user_rss =
    rss2 >= 0 && rss3 >= 0 ? (double)(rss3 - rss2) / (double)g_hash_table_size(peer) : -1;
  g_hash_table_unref(peer);
  g_free(hashes);
}

/* On a terminal, which stage runs now, on standard error (nothing when it is not a terminal,
 * so that the figures on standard output stay clean); stage 0 clears the line. */
static void
bench_progress(guint stage, guint stages, const char *what)
{
  if (!isatty(STDERR_FILENO))
    return;
  if (stage == 0)
    fprintf(stderr, "\r%70s\r", "");
  else
    fprintf(stderr, "\r  %u of %u: %-60s", stage, stages, what);
  fflush(stderr);
}

int
ushersim_cmd_bench_core(int argc, char **argv)
{
  gint64 users = 1000000;
  gint64 large = 10000000;
  gboolean json = FALSE;
  GOptionEntry entries[] = {
    {"users", 'n', 0, G_OPTION_ARG_INT64, &users,
     "Users for the speed figures and the first memory figure (default 1000000)", "N"},
    {"large-users", 0, 0, G_OPTION_ARG_INT64, &large,
     "Users for the second memory figure (default 10000000; 0 skips it)", "N"},
    {"json", 0, 0, G_OPTION_ARG_NONE, &json, "Print the figures as JSON", NULL},
    {NULL},
  };
  g_autoptr(GOptionContext) ctx = g_option_context_new("- benchmark the placement core");
  g_option_context_set_summary(
    ctx, "Targets on a 2-core machine: >= 3 million placements/s on one core, <= 64 bytes per\n"
         "user. Runs single-threaded; takes about 15 s with the defaults. On a terminal, the stage\n"
         "running now is shown on standard error.");
  g_option_context_add_main_entries(ctx, entries, NULL);
  g_autoptr(GError) error = NULL;
  if (!ushersim_options_once("ushersim bench-core", argc, argv, entries))
    return USHERSIM_EXIT_USAGE;
  if (!g_option_context_parse(ctx, &argc, &argv, &error)) {
    fprintf(stderr, "ushersim bench-core: %s\n", error->message);
    return USHERSIM_EXIT_USAGE;
  }
  if (argc > 1) {
    fprintf(stderr, "ushersim bench-core: unexpected argument \"%s\"\n", argv[1]);
    return USHERSIM_EXIT_USAGE;
  }
  if (users < 1000 || users > 100000000 || large < 0 || large > 100000000 ||
      (large > 0 && large < 1000)) {
    fprintf(stderr, "ushersim bench-core: --users and --large-users must be 1000..100000000 "
                    "(--large-users may be 0)\n");
    return USHERSIM_EXIT_USAGE;
  }

  volatile guint64 sink = 0;
  guint64 placements = (guint64)MAX(users, 3000000);
  guint stages = large > 0 ? 3 : 2;
  bench_progress(1, stages, "placements");
  double placement_rate = bench_placement(placements, &sink);
  DirFigures small = {0}, big = {0};
  g_autofree char *what = g_strdup_printf("user directory, %" G_GINT64_FORMAT " users", users);
  bench_progress(2, stages, what);
  bench_directory((guint64)users, &small, &sink);
  if (large > 0) {
    g_free(what);
    what = g_strdup_printf("user directory, %" G_GINT64_FORMAT " users", large);
    bench_progress(3, stages, what);
    bench_directory((guint64)large, &big, &sink);
  }
  bench_progress(0, 0, NULL);

  if (json) {
    g_autoptr(JsonBuilder) b = json_builder_new();
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "placements_per_sec");
    json_builder_add_double_value(b, placement_rate);
    json_builder_set_member_name(b, "placements_measured");
    json_builder_add_int_value(b, (gint64)placements);
    const DirFigures *figs[] = {&small, &big};
    json_builder_set_member_name(b, "directory");
    json_builder_begin_array(b);
    for (int i = 0; i < 2; i++) {
      const DirFigures *f = figs[i];
      if (f->users == 0)
        continue;
      json_builder_begin_object(b);
      json_builder_set_member_name(b, "users");
      json_builder_add_int_value(b, (gint64)f->users);
      json_builder_set_member_name(b, "inserts_per_sec");
      json_builder_add_double_value(b, f->inserts_per_sec);
      json_builder_set_member_name(b, "lookups_per_sec");
      json_builder_add_double_value(b, f->lookups_per_sec);
      json_builder_set_member_name(b, "expiries_per_sec");
      json_builder_add_double_value(b, f->expiries_per_sec);
      json_builder_set_member_name(b, "bytes_per_user");
      json_builder_add_double_value(b, f->bytes_per_user_accounted);
      json_builder_set_member_name(b, "bytes_per_user_rss");
      json_builder_add_double_value(b, f->bytes_per_user_rss);
      json_builder_set_member_name(b, "peer_ghashtable_bytes_per_user_rss");
      json_builder_add_double_value(b, f->ghash_bytes_per_user_rss);
      json_builder_set_member_name(b, "peer_ghashtable_inserts_per_sec");
      json_builder_add_double_value(b, f->ghash_inserts_per_sec);
      json_builder_end_object(b);
    }
    json_builder_end_array(b);
    json_builder_set_member_name(b, "targets");
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "placements_per_sec_min");
    json_builder_add_int_value(b, 3000000);
    json_builder_set_member_name(b, "bytes_per_user_max");
    json_builder_add_int_value(b, 64);
    json_builder_end_object(b);
    json_builder_end_object(b);
    g_autoptr(JsonGenerator) gen = json_generator_new();
    g_autoptr(JsonNode) root = json_builder_get_root(b);
    json_generator_set_root(gen, root);
    json_generator_set_pretty(gen, TRUE);
    g_autofree char *text = json_generator_to_data(gen, NULL);
    printf("%s\n", text);
    return USHERSIM_EXIT_OK;
  }

  printf("placements (hash + ring lookup, 10 backends x 100 vhosts, one core): %.2f M/s"
         "  [target >= 3 M/s]\n",
         placement_rate / 1e6);
  const DirFigures *figs[] = {&small, &big};
  for (int i = 0; i < 2; i++) {
    const DirFigures *f = figs[i];
    if (f->users == 0)
      continue;
    printf("user directory, %" G_GUINT64_FORMAT " users:\n", f->users);
    printf("  inserts  %8.2f M/s   (GHashTable peer %.2f M/s)\n", f->inserts_per_sec / 1e6,
           f->ghash_inserts_per_sec / 1e6);
    printf("  lookups  %8.2f M/s\n", f->lookups_per_sec / 1e6);
    printf("  expiries %8.2f M/s\n", f->expiries_per_sec / 1e6);
    printf("  bytes per user: %.1f accounted, %.1f resident  [target <= 64]; GHashTable peer %.1f "
           "resident (ratio %.2f)\n",
           f->bytes_per_user_accounted, f->bytes_per_user_rss, f->ghash_bytes_per_user_rss,
           f->bytes_per_user_rss > 0 ? f->ghash_bytes_per_user_rss / f->bytes_per_user_rss : 0);
  }
  return USHERSIM_EXIT_OK;
}

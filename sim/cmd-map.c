/* cmd-map.c - "ushersim map": where each user lands on a freshly started ring.
 *
 * This is what Dovecot's "doveadm director status USER" prints as "Hashed:": the vhost ring's
 * answer, before any user directory state. Input is one username per line, as raw bytes; only the
 * line end ("\n", or "\r\n") is removed.
 */
#include "common/config-file.h"
#include "libcore/host.h"
#include "sim/sim.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static gboolean
build_table(const char *config_path, const char *backends_spec, const char *hash_override,
            UsherHostTable **table_out, UsherHashFormat **format_out, GError **error)
{
  g_autoptr(UsherConfig) config = NULL;
  if (config_path != NULL) {
    config = usher_config_load_file(config_path, error);
    if (config == NULL)
      return FALSE;
  } else {
    config = usher_config_new();
    g_autoptr(GPtrArray) backends =
      g_ptr_array_new_with_free_func((GDestroyNotify)usher_backend_config_free);
    g_autoptr(GError) local = NULL;
    if (!usher_backends_parse(backends_spec, backends, &local)) {
      g_set_error(error, local->domain, local->code, "--backends: %s", local->message);
      return FALSE;
    }
    g_ptr_array_extend_and_steal(config->backends, g_steal_pointer(&backends));
  }
  const char *format_text = hash_override != NULL ? hash_override : config->username_hash;
  g_autoptr(GError) local = NULL;
  UsherHashFormat *format = usher_hash_format_new(format_text, &local);
  if (format == NULL) {
    g_set_error(error, local->domain, local->code, "%s%s",
                hash_override != NULL ? "--username-hash: " : "", local->message);
    return FALSE;
  }
  UsherHostTable *table = usher_host_table_new(config->user_expire_secs);
  if (!usher_host_table_add_backends(table, config->backends, error)) {
    usher_host_table_free(table);
    usher_hash_format_free(format);
    return FALSE;
  }
  *table_out = table;
  *format_out = format;
  return TRUE;
}

UsherTag *
ushersim_usable_tag(UsherHostTable *table, const char *tag_name, const char *source,
                    GError **error)
{
  if (usher_host_table_n_hosts(table) == 0) {
    g_set_error(error, g_quark_from_static_string("ushersim-input"), 0,
                "%s: no backend at all (an empty backend list): nobody could be placed", source);
    return NULL;
  }
  UsherTag *tag = usher_host_table_find_tag(table, tag_name);
  guint usable = 0;
  for (guint i = 0; tag != NULL && i < usher_host_table_n_hosts(table); i++) {
    const UsherHost *h = usher_host_table_nth(table, i);
    if (h->tag == tag && !h->down && h->vhost_count > 0)
      usable++;
  }
  if (tag != NULL && usable > 0)
    return tag;
  GString *known = g_string_new(NULL);
  for (guint i = 0; i < usher_host_table_n_tags(table); i++) {
    const UsherTag *t = usher_host_table_nth_tag(table, i);
    gboolean has_hosts = FALSE;
    for (guint k = 0; k < usher_host_table_n_hosts(table) && !has_hosts; k++)
      has_hosts = usher_host_table_nth(table, k)->tag == t;
    if (has_hosts)
      g_string_append_printf(known, "%s%s", known->len > 0 ? ", " : "",
                             t->name[0] != '\0' ? t->name : "(untagged)");
  }
  if (tag == NULL || usable == 0) {
    gboolean any = FALSE;
    for (guint k = 0; tag != NULL && k < usher_host_table_n_hosts(table) && !any; k++)
      any = usher_host_table_nth(table, k)->tag == tag;
    if (!any)
      g_set_error(error, g_quark_from_static_string("ushersim-input"), 0,
                  "%s: no backend has %s%s%s; the tags there are: %s (choose one with --tag)",
                  source, tag_name[0] != '\0' ? "tag \"" : "no tag (untagged)",
                  tag_name[0] != '\0' ? tag_name : "", tag_name[0] != '\0' ? "\"" : "",
                  known->str);
    else
      g_set_error(error, g_quark_from_static_string("ushersim-input"), 0,
                  "%s: no usable backend%s%s%s: every one is down or has 0 vhosts", source,
                  tag_name[0] != '\0' ? " with tag \"" : "", tag_name,
                  tag_name[0] != '\0' ? "\"" : "");
  }
  g_string_free(known, TRUE);
  return NULL;
}

static void
print_summary(UsherHostTable *table, UsherTag *tag, const guint64 *tally, guint64 total,
              guint64 unplaced)
{
  const UsherVhostRing *ring = usher_tag_get_ring(table, tag);
  guint64 vhost_total = 0;
  for (guint i = 0; i < usher_host_table_n_hosts(table); i++) {
    UsherHost *h = usher_host_table_nth(table, i);
    if (h->tag == tag && !h->down)
      vhost_total += h->vhost_count;
  }
  printf("%-40s %-8s %6s %-5s %10s %8s %11s %10s\n", "backend", "tag", "vhosts", "state", "users",
         "share", "vhost-share", "ring-share");
  for (guint i = 0; i < usher_host_table_n_hosts(table); i++) {
    UsherHost *h = usher_host_table_nth(table, i);
    if (h->tag != tag)
      continue;
    guint64 users = tally[h->id];
    /* Shares in hundredths of a percent, integer arithmetic (same output everywhere). */
    guint64 share = total > 0 ? (users * 10000 + total / 2) / total : 0;
    guint64 promised =
      vhost_total > 0 && !h->down ? (h->vhost_count * 10000 + vhost_total / 2) / vhost_total : 0;
    guint64 arc = usher_vhost_ring_arc_of(ring, h->id);
    guint64 ring_share = (arc * 10000 + (G_GUINT64_CONSTANT(1) << 31)) >> 32;
    printf("%-40s %-8s %6u %-5s %10" G_GUINT64_FORMAT " %5" G_GUINT64_FORMAT ".%02u%% %8" G_GUINT64_FORMAT
           ".%02u%% %7" G_GUINT64_FORMAT ".%02u%%\n",
           h->ip_str, tag->name[0] != '\0' ? tag->name : "-", h->vhost_count,
           h->down ? "down" : "up", users, share / 100, (guint)(share % 100), promised / 100,
           (guint)(promised % 100), ring_share / 100, (guint)(ring_share % 100));
  }
  printf("%-40s %-8s %6s %-5s %10" G_GUINT64_FORMAT "\n", "total", "", "", "", total);
  if (unplaced > 0)
    printf("%-40s %-8s %6s %-5s %10" G_GUINT64_FORMAT "\n", "no usable backend", "", "", "",
           unplaced);
}

int
ushersim_cmd_map(int argc, char **argv)
{
  g_autofree char *config_path = NULL, *backends_spec = NULL, *tag_name = NULL;
  g_autofree char *users_path = NULL, *hash_override = NULL;
  gboolean summary = FALSE;
  GOptionEntry entries[] = {
    {"config", 'c', 0, G_OPTION_ARG_FILENAME, &config_path,
     "Take backends and username_hash from this configuration file", "FILE"},
    {"backends", 'b', 0, G_OPTION_ARG_FILENAME, &backends_spec, /* raw bytes: checked below */
     "Backends as IP[-IP][=VHOSTS][@TAG][,...] (vhosts default 100; username_hash %Lu)", "LIST"},
    {"tag", 't', 0, G_OPTION_ARG_STRING, &tag_name,
     "Place users in this tag's ring (default: the untagged ring)", "TAG"},
    {"users", 'u', 0, G_OPTION_ARG_FILENAME, &users_path,
     "Usernames, one per line; - or absent for standard input", "FILE"},
    {"username-hash", 0, 0, G_OPTION_ARG_STRING, &hash_override,
     "Override director_username_hash (e.g. %Lu, %Ln, %Ld)", "FORMAT"},
    {"summary", 's', 0, G_OPTION_ARG_NONE, &summary,
     "Print per-backend totals instead of one line per user", NULL},
    {NULL},
  };
  g_autoptr(GOptionContext) ctx = g_option_context_new("- preview user placement");
  g_option_context_set_summary(
    ctx, "Prints USERNAME<TAB>HASH<TAB>BACKEND for each input line: the backend a freshly started\n"
         "ring gives the user (Dovecot's \"Hashed\" answer). A TAB, CR or backslash inside a\n"
         "name is written \\t, \\r, \\\\ (the name is hashed as it is). Empty lines are reported\n"
         "on standard error with their line number and skipped. A backend list or tag with no\n"
         "usable backend (all down or at vhost 0) is an input error (exit 2).");
  g_option_context_add_main_entries(ctx, entries, NULL);
  g_autoptr(GError) error = NULL;
  if (!ushersim_options_once("ushersim map", argc, argv, entries))
    return USHERSIM_EXIT_USAGE;
  if (!g_option_context_parse(ctx, &argc, &argv, &error)) {
    fprintf(stderr, "ushersim map: %s\n", error->message);
    return USHERSIM_EXIT_USAGE;
  }
  if (argc > 1) {
    fprintf(stderr, "ushersim map: unexpected argument \"%s\"\n", argv[1]);
    return USHERSIM_EXIT_USAGE;
  }
  if (backends_spec != NULL && !g_utf8_validate(backends_spec, -1, NULL)) {
    fprintf(stderr, "ushersim map: --backends: not valid UTF-8 (a backend list is IP addresses, "
                    "=VHOSTS and @TAG)\n");
    return USHERSIM_EXIT_USAGE;
  }
  if ((config_path == NULL) == (backends_spec == NULL)) {
    fprintf(stderr, "ushersim map: give exactly one of --config FILE or --backends LIST\n");
    return USHERSIM_EXIT_USAGE;
  }

  g_autoptr(UsherHostTable) table = NULL;
  g_autoptr(UsherHashFormat) format = NULL;
  if (!build_table(config_path, backends_spec, hash_override, &table, &format, &error)) {
    fprintf(stderr, "ushersim map: %s\n", error->message);
    return USHERSIM_EXIT_USAGE;
  }
  UsherTag *tag = ushersim_usable_tag(table, tag_name != NULL ? tag_name : "",
                                      config_path != NULL ? config_path : "--backends", &error);
  if (tag == NULL) {
    fprintf(stderr, "ushersim map: %s\n", error->message);
    return USHERSIM_EXIT_USAGE;
  }

  FILE *in = stdin;
  const char *in_name = "<stdin>";
  if (users_path != NULL && strcmp(users_path, "-") != 0) {
    if (g_file_test(users_path, G_FILE_TEST_IS_DIR)) {
      fprintf(stderr, "ushersim map: --users %s is a directory: give a file with one user name "
                      "per line (or - for standard input)\n", users_path);
      return USHERSIM_EXIT_USAGE;
    }
    in = fopen(users_path, "rb");
    if (in == NULL) {
      fprintf(stderr, "ushersim map: %s: %s\n", users_path, g_strerror(errno));
      return USHERSIM_EXIT_USAGE;
    }
    in_name = users_path;
  }

  static char outbuf[1 << 16];
  setvbuf(stdout, outbuf, _IOFBF, sizeof(outbuf));
  guint64 *tally = g_new0(guint64, USHER_HOSTS_MAX + 1);
  guint64 total = 0, unplaced = 0, empty = 0, lineno = 0;
  char *line = NULL;
  size_t cap = 0;
  ssize_t n;
  while ((n = getline(&line, &cap, in)) > 0) {
    lineno++;
    gsize len = (gsize)n;
    if (line[len - 1] == '\n') {
      len--;
      if (len > 0 && line[len - 1] == '\r')
        len--;
    }
    if (len == 0) {
      fprintf(stderr, "ushersim map: %s:%" G_GUINT64_FORMAT ": empty line skipped\n", in_name,
              lineno);
      empty++;
      continue;
    }
    guint32 hash = usher_hash_format_user(format, line, (gssize)len);
    UsherHost *host = usher_tag_place(table, tag, hash);
    total++;
    if (host != NULL)
      tally[host->id]++;
    else
      unplaced++;
    if (!summary) {
      /* Tab-separated: a TAB, CR or backslash in a name is written \t, \r, \\. */
      for (gsize i = 0; i < len; i++) {
        char c = line[i];
        if (c == '\t' || c == '\\' || c == '\r') {
          putchar('\\');
          putchar(c == '\t' ? 't' : c == '\r' ? 'r' : '\\');
        } else
          putchar(c);
      }
      printf("\t%u\t%s\n", hash, host != NULL ? host->ip_str : "");
    }
  }
  gboolean read_failed = ferror(in);
  free(line);
  if (in != stdin)
    fclose(in);
  if (read_failed) {
    fprintf(stderr, "ushersim map: %s: read error after line %" G_GUINT64_FORMAT "\n", in_name,
            lineno);
    g_free(tally);
    return USHERSIM_EXIT_USAGE;
  }
  if (summary)
    print_summary(table, tag, tally, total, unplaced);
  if (unplaced > 0)
    fprintf(stderr,
            "ushersim map: %" G_GUINT64_FORMAT " users have no backend: tag \"%s\" has no usable "
            "backend (all down or at vhost 0)\n",
            unplaced, tag->name);
  if (empty > 0)
    fprintf(stderr, "ushersim map: %" G_GUINT64_FORMAT " empty line%s skipped\n", empty,
            empty == 1 ? "" : "s");
  g_free(tally);
  if (fflush(stdout) != 0) {
    fprintf(stderr, "ushersim map: writing the output failed: %s\n", g_strerror(errno));
    return USHERSIM_EXIT_USAGE;
  }
  return USHERSIM_EXIT_OK;
}

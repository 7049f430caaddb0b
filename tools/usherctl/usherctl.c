/* usherctl - the Usher admin command line.
 *
 * Speaks the director-admin protocol on usherd's admin socket (the same one `doveadm director
 * -a SOCKET` uses), so every verb that doveadm has works against a Dovecot director's socket too;
 * explain, ring and stats use Usher's own JSON commands. Plain text for people, --json for
 * scripts. Exit status: 0 success, 64 usage error, 65 the director refused the change (retrying
 * will not help), 68 not found, 69 cannot reach the director, 75 temporary failure (TRYAGAIN,
 * ring sync timed out, busy: try again), 76 protocol error. */
#include "common/cli.h"
#include "libcore/admin-proto.h"
#include "libcore/host.h"
#include "libcore/ip.h"

#include <gio/gio.h>
#include <gio/gunixsocketaddress.h>
#include <json-glib/json-glib.h>
#include <locale.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define EXIT_USAGE 64
#define EXIT_REFUSED 65
#define EXIT_NOTFOUND 68
#define EXIT_UNAVAILABLE 69
#define EXIT_TEMPFAIL 75
#define EXIT_PROTOCOL 76

#define SOCKET_DEFAULT USHER_ADMIN_SOCKET_DEFAULT
#define GREETING_TIMEOUT_SECS 5
#define REPLY_TIMEOUT_SECS 70 /* changes wait up to 30 s for the ring, twice */

/* A flush answers once its last move has started, which takes as long as the backend has users
 * (max_parallel_moves at a time): no timeout then. It always ends (moves end by their own
 * timeouts); an interrupted usherctl leaves it running. */
static guint reply_timeout_secs = REPLY_TIMEOUT_SECS;

static const char *opt_socket = SOCKET_DEFAULT;
static gboolean opt_json = FALSE;

/* ---- The connection ---------------------------------------------------------------------------------- */

typedef struct {
  GSocketConnection *connection;
  GDataInputStream *in;
  GOutputStream *out;
} Admin;

static void G_GNUC_NORETURN G_GNUC_PRINTF(2, 3)
die(int status, const char *fmt, ...)
{
  va_list args;
  va_start(args, fmt);
  g_autofree char *text = g_strdup_vprintf(fmt, args);
  va_end(args);
  fprintf(stderr, "usherctl: %s\n", text);
  exit(status);
}

static GSocketConnectable *
socket_address(const char *where)
{
  if (where[0] == '/')
    return G_SOCKET_CONNECTABLE(g_unix_socket_address_new(where));
  g_autoptr(GError) error = NULL;
  GSocketConnectable *addr = g_network_address_parse(where, 0, &error);
  if (addr == NULL || g_network_address_get_port(G_NETWORK_ADDRESS(addr)) == 0)
    die(EXIT_USAGE, "-a %s: give a socket path (/run/...) or IP:PORT", where);
  return addr;
}

static char *
read_line(Admin *a)
{
  g_autoptr(GError) error = NULL;
  gsize len;
  char *line = g_data_input_stream_read_line(a->in, &len, NULL, &error);
  if (line == NULL) {
    if (error != NULL)
      die(EXIT_UNAVAILABLE, "%s: %s", opt_socket, error->message);
    die(EXIT_PROTOCOL, "%s: the director closed the connection without a reply", opt_socket);
  }
  return line;
}

/* One connection per run; it lives until the process exits. */
static Admin *
admin_connect(void)
{
  static Admin the_admin;
  Admin *a = &the_admin;
  g_assert(a->connection == NULL);
  g_autoptr(GSocketClient) client = g_socket_client_new();
  g_socket_client_set_enable_proxy(client, FALSE);
  g_socket_client_set_timeout(client, GREETING_TIMEOUT_SECS);
  g_autoptr(GSocketConnectable) where = socket_address(opt_socket);
  g_autoptr(GError) error = NULL;
  a->connection = g_socket_client_connect(client, where, NULL, &error);
  if (a->connection == NULL)
    die(EXIT_UNAVAILABLE, "cannot reach the director at %s: %s (is usherd running? -a names "
        "another socket)", opt_socket, error->message);
  a->in = g_data_input_stream_new(g_io_stream_get_input_stream(G_IO_STREAM(a->connection)));
  g_data_input_stream_set_newline_type(a->in, G_DATA_STREAM_NEWLINE_TYPE_LF);
  a->out = g_io_stream_get_output_stream(G_IO_STREAM(a->connection));
  g_autofree char *greeting = read_line(a);
  if (!g_str_has_prefix(greeting, "VERSION\tdirector-doveadm\t1\t"))
    die(EXIT_PROTOCOL, "%s does not speak the director-admin protocol", opt_socket);
  g_socket_set_timeout(g_socket_connection_get_socket(a->connection), reply_timeout_secs);
  static const char version[] = "VERSION\tdirector-doveadm\t1\t0\n";
  if (!g_output_stream_write_all(a->out, version, strlen(version), NULL, NULL, &error))
    die(EXIT_UNAVAILABLE, "%s: %s", opt_socket, error->message);
  return a;
}

/* Sends one command made of fields (tab-escaped here). */
static void
admin_send(Admin *a, const char *const *fields)
{
  g_autoptr(GString) line = g_string_new(NULL);
  for (guint i = 0; fields[i] != NULL; i++) {
    if (i > 0)
      g_string_append_c(line, '\t');
    usher_ring_escape_append(line, fields[i], -1);
  }
  g_string_append_c(line, '\n');
  g_autoptr(GError) error = NULL;
  if (!g_output_stream_write_all(a->out, line->str, line->len, NULL, NULL, &error))
    die(EXIT_UNAVAILABLE, "%s: %s", opt_socket, error->message);
}

/* Reads a multi-line reply: lines until the empty one. Each line split at TABs, unescaped. */
static GPtrArray *
read_rows_as(Admin *a, gboolean repair)
{
  GPtrArray *rows = g_ptr_array_new_with_free_func((GDestroyNotify)g_strfreev);
  for (;;) {
    g_autofree char *line = read_line(a);
    if (line[0] == '\0')
      return rows;
    char **fields = g_strsplit(line, "\t", -1);
    for (guint i = 0; fields[i] != NULL; i++) {
      fields[i][usher_ring_unescape_inplace(fields[i], strlen(fields[i]))] = '\0';
      /* A tag or name from a peer may be any bytes: tables and JSON need UTF-8 (dump, which
       * recreates the data, keeps the bytes). */
      if (repair && !g_utf8_validate(fields[i], -1, NULL)) {
        char *valid = g_utf8_make_valid(fields[i], -1);
        g_free(fields[i]);
        fields[i] = valid;
      }
    }
    g_ptr_array_add(rows, fields);
  }
}

/* Rows for tables and JSON: fields made valid UTF-8. */
static GPtrArray *
read_rows(Admin *a)
{
  return read_rows_as(a, TRUE);
}

static void print_json_node(JsonNode *node);

/* {"ok": ok, "what": what, "error": error or absent} */
static void
print_result_json(gboolean ok, const char *what, const char *error)
{
  g_autoptr(JsonBuilder) b = json_builder_new();
  json_builder_begin_object(b);
  json_builder_set_member_name(b, "ok");
  json_builder_add_boolean_value(b, ok);
  json_builder_set_member_name(b, "what");
  g_autofree char *valid_what = g_utf8_make_valid(what, -1);
  json_builder_add_string_value(b, valid_what);
  if (error != NULL) {
    json_builder_set_member_name(b, "error");
    json_builder_add_string_value(b, error);
  }
  json_builder_end_object(b);
  g_autoptr(JsonNode) root = json_builder_get_root(b);
  print_json_node(root);
}

/* A single-line answer to a change: OK, or what went wrong (and the exit status for it). */
static int
expect_ok(Admin *a, const char *what)
{
  g_autofree char *line = read_line(a);
  if (strcmp(line, "OK") == 0)
    return 0;
  /* Busy or not synced: worth another try. Anything else the director refuses (a tag that cannot
   * change, too many backends) stays refused. */
  gboolean temporary = strcmp(line, "TRYAGAIN") == 0 || strcmp(line, "Ring sync timed out") == 0 ||
                       strstr(line, "try again") != NULL;
  int status = strcmp(line, "NOTFOUND") == 0 ? EXIT_NOTFOUND
               : temporary                  ? EXIT_TEMPFAIL
                                            : EXIT_REFUSED;
  const char *text = strcmp(line, "NOTFOUND") == 0   ? "not found"
                     : strcmp(line, "TRYAGAIN") == 0 ? "busy, try again later"
                                                     : line;
  if (opt_json) {
    print_result_json(FALSE, what, text);
  } else {
    fprintf(stderr, "usherctl: %s: %s\n", what, text);
  }
  return status;
}

static void
print_ok(const char *what)
{
  if (opt_json)
    print_result_json(TRUE, what, NULL);
}

/* ---- Output helpers ---------------------------------------------------------------------------------- */

static char *
format_time(gint64 t)
{
  if (t <= 0)
    return g_strdup("-");
  g_autoptr(GDateTime) dt = g_date_time_new_from_unix_local(t);
  return dt != NULL ? g_date_time_format(dt, "%Y-%m-%d %H:%M:%S") : g_strdup("?");
}

static void
print_json_node(JsonNode *node)
{
  g_autoptr(JsonGenerator) gen = json_generator_new();
  json_generator_set_pretty(gen, TRUE);
  json_generator_set_root(gen, node);
  g_autofree char *text = json_generator_to_data(gen, NULL);
  printf("%s\n", text);
}

/* Prints rows as a table with a header, columns padded to their widest cell. */
static void
print_table(const char *const *header, GPtrArray *cells /* char** rows */)
{
  guint n = g_strv_length((char **)header);
  g_autofree gsize *width = g_new0(gsize, n);
  for (guint c = 0; c < n; c++)
    width[c] = strlen(header[c]);
  for (guint r = 0; r < cells->len; r++) {
    char **row = g_ptr_array_index(cells, r);
    for (guint c = 0; c < n && row[c] != NULL; c++)
      width[c] = MAX(width[c], (gsize)g_utf8_strlen(row[c], -1));
  }
  for (guint c = 0; c < n; c++)
    printf("%-*s%s", (int)width[c], header[c], c + 1 < n ? "  " : "\n");
  for (guint r = 0; r < cells->len; r++) {
    char **row = g_ptr_array_index(cells, r);
    for (guint c = 0; c < n; c++)
      printf("%-*s%s", (int)width[c], row[c] != NULL ? row[c] : "", c + 1 < n ? "  " : "\n");
  }
}

/* ---- Argument helpers -------------------------------------------------------------------------------- */

typedef struct {
  const char *name;
  const char *usage;
  const char *help;
  int (*run)(int argc, char **argv);
  int min_args, max_args;
} Verb;

static const Verb *current_verb;

static void usage_error(const char *fmt, ...) G_GNUC_NORETURN G_GNUC_PRINTF(1, 2);

static void
usage_error(const char *fmt, ...)
{
  va_list args;
  va_start(args, fmt);
  g_autofree char *text = g_strdup_vprintf(fmt, args);
  va_end(args);
  fprintf(stderr, "usherctl %s: %s\nusage: usherctl %s %s\n", current_verb->name, text,
          current_verb->name, current_verb->usage);
  exit(EXIT_USAGE);
}

static const char *
ip_arg(const char *text)
{
  UsherIp ip;
  if (!usher_ip_parse(text, -1, &ip))
    usage_error("\"%s\" is not an IP address (usherctl does not look up host names)", text);
  return text;
}

static const char *
uint_range_arg(const char *text, const char *what, guint min, guint max)
{
  char *end;
  guint64 v = g_ascii_strtoull(text, &end, 10);
  if (text[0] < '0' || text[0] > '9' || *end != '\0' || v < min || v > max)
    usage_error("%s must be a whole number from %u to %u, not \"%s\"", what, min, max, text);
  return text;
}

static const char *
uint_arg(const char *text, const char *what, guint max)
{
  return uint_range_arg(text, what, 0, max);
}

/* ---- Verbs ------------------------------------------------------------------------------------------- */

static int
cmd_status(int argc, char **argv)
{
  Admin *a = admin_connect();
  if (argc >= 1) {
    const char *fields[] = {"USER-LOOKUP", argv[0], argc >= 2 ? argv[1] : "", NULL};
    admin_send(a, fields);
    g_autofree char *line = read_line(a);
    g_auto(GStrv) f = g_strsplit(line, "\t", -1);
    if (g_strv_length(f) != 4)
      die(EXIT_PROTOCOL, "unexpected USER-LOOKUP reply: %s", line);
    gint64 expires = g_ascii_strtoll(f[1], NULL, 10);
    if (opt_json) {
      g_autoptr(JsonBuilder) b = json_builder_new();
      json_builder_begin_object(b);
      json_builder_set_member_name(b, "user");
      json_builder_add_string_value(b, argv[0]);
      const char *names[] = {"current", NULL, "hashed", "initial_config"};
      for (int k = 0; k < 4; k++) {
        if (k == 1) {
          json_builder_set_member_name(b, "expires");
          json_builder_add_int_value(b, expires);
          continue;
        }
        json_builder_set_member_name(b, names[k]);
        if (f[k][0] != '\0')
          json_builder_add_string_value(b, f[k]);
        else
          json_builder_add_null_value(b);
      }
      json_builder_end_object(b);
      g_autoptr(JsonNode) root = json_builder_get_root(b);
      print_json_node(root);
      return 0;
    }
    g_autofree char *when = format_time(expires);
    if (f[0][0] != '\0')
      printf("Current: %s (expires %s)\n", f[0], when);
    else
      printf("Current: none (no directory entry)\n");
    printf("Hashed: %s\nInitial config: %s\n", f[2][0] ? f[2] : "none (no usable backend)",
           f[3][0] ? f[3] : "none");
    return 0;
  }
  const char *fields[] = {"HOST-LIST", NULL};
  admin_send(a, fields);
  g_autoptr(GPtrArray) rows = read_rows(a);
  if (opt_json) {
    g_autoptr(JsonBuilder) b = json_builder_new();
    json_builder_begin_array(b);
    for (guint i = 0; i < rows->len; i++) {
      char **f = g_ptr_array_index(rows, i);
      if (g_strv_length(f) < 6)
        die(EXIT_PROTOCOL, "unexpected HOST-LIST line");
      json_builder_begin_object(b);
      json_builder_set_member_name(b, "ip");
      json_builder_add_string_value(b, f[0]);
      json_builder_set_member_name(b, "tag");
      json_builder_add_string_value(b, f[3]);
      json_builder_set_member_name(b, "vhosts");
      json_builder_add_int_value(b, g_ascii_strtoll(f[1], NULL, 10));
      json_builder_set_member_name(b, "up");
      json_builder_add_boolean_value(b, strcmp(f[4], "U") == 0);
      json_builder_set_member_name(b, "state_changed");
      json_builder_add_int_value(b, g_ascii_strtoll(f[5], NULL, 10));
      json_builder_set_member_name(b, "users");
      json_builder_add_int_value(b, g_ascii_strtoll(f[2], NULL, 10));
      json_builder_end_object(b);
    }
    json_builder_end_array(b);
    g_autoptr(JsonNode) root = json_builder_get_root(b);
    print_json_node(root);
    return 0;
  }
  g_autoptr(GPtrArray) cells = g_ptr_array_new_with_free_func((GDestroyNotify)g_strfreev);
  for (guint i = 0; i < rows->len; i++) {
    char **f = g_ptr_array_index(rows, i);
    if (g_strv_length(f) < 6)
      die(EXIT_PROTOCOL, "unexpected HOST-LIST line");
    char **row = g_new0(char *, 7);
    row[0] = g_strdup(f[0]);
    row[1] = g_strdup(f[3]);
    row[2] = g_strdup(f[1]);
    row[3] = g_strdup(strcmp(f[4], "U") == 0 ? "up" : "down");
    row[4] = format_time(g_ascii_strtoll(f[5], NULL, 10));
    row[5] = g_strdup(f[2]);
    g_ptr_array_add(cells, row);
  }
  const char *header[] = {"backend", "tag", "vhosts", "state", "state changed", "users", NULL};
  print_table(header, cells);
  return 0;
}

static int
simple_change(const char *const *fields, const char *what)
{
  Admin *a = admin_connect();
  admin_send(a, fields);
  int status = expect_ok(a, what);
  if (status == 0)
    print_ok(what);
  return status;
}

static int
cmd_add(int argc, char **argv)
{
  g_autofree char *ip = g_strdup(argv[0]);
  char *at = strchr(ip, '@');
  if (at != NULL) {
    *at = '\0';
    if (strlen(at + 1) > USHER_TAG_MAX_LEN)
      usage_error("a tag is at most %d bytes", USHER_TAG_MAX_LEN);
  }
  ip_arg(ip);
  const char *fields[] = {"HOST-SET", argv[0], argc >= 2 ? uint_arg(argv[1], "VHOSTS", 1000) : NULL,
                          NULL};
  return simple_change(fields, argv[0]);
}

static int
cmd_update(int argc, char **argv)
{
  (void)argc;
  const char *fields[] = {"HOST-UPDATE", ip_arg(argv[0]), uint_arg(argv[1], "VHOSTS", 1000),
                          NULL};
  return simple_change(fields, argv[0]);
}

static int
cmd_up(int argc, char **argv)
{
  (void)argc;
  const char *fields[] = {"HOST-UP", ip_arg(argv[0]), NULL};
  return simple_change(fields, argv[0]);
}

static int
cmd_down(int argc, char **argv)
{
  (void)argc;
  const char *fields[] = {"HOST-DOWN", ip_arg(argv[0]), NULL};
  return simple_change(fields, argv[0]);
}

static int
cmd_remove(int argc, char **argv)
{
  (void)argc;
  const char *fields[] = {"HOST-REMOVE", ip_arg(argv[0]), NULL};
  return simple_change(fields, argv[0]);
}

static int
cmd_move(int argc, char **argv)
{
  (void)argc;
  const char *fields[] = {"USER-MOVE", argv[0], ip_arg(argv[1]), NULL};
  Admin *a = admin_connect();
  admin_send(a, fields);
  g_autofree char *line = read_line(a);
  if (strcmp(line, "TRYAGAIN") == 0) {
    fprintf(stderr, "usherctl: %s is already being moved; wait for that move to finish\n",
            argv[0]);
    return EXIT_TEMPFAIL;
  }
  if (strcmp(line, "NOTFOUND") == 0) {
    fprintf(stderr, "usherctl: %s is not a backend\n", argv[1]);
    return EXIT_NOTFOUND;
  }
  if (strcmp(line, "OK") != 0) {
    fprintf(stderr, "usherctl: move %s: %s\n", argv[0], line);
    return EXIT_TEMPFAIL;
  }
  print_ok(argv[0]);
  return 0;
}

static gboolean opt_nowait, opt_force;
static char *opt_field;
static int opt_max_parallel = G_MININT; /* not given */

static int
cmd_kick(int argc, char **argv)
{
  (void)argc;
  if (opt_field != NULL) {
    const char *fields[] = {"USER-KICK-ALT", opt_field, argv[0], opt_nowait ? "nowait" : NULL,
                            NULL};
    return simple_change(fields, argv[0]);
  }
  const char *fields[] = {"USER-KICK", argv[0], opt_nowait ? "nowait" : NULL, NULL};
  return simple_change(fields, argv[0]);
}

static int
cmd_flush(int argc, char **argv)
{
  (void)argc;
  gboolean all = strcmp(argv[0], "all") == 0;
  const char *ip = all ? "" : ip_arg(argv[0]);
  if (opt_max_parallel != G_MININT && opt_max_parallel <= 0)
    usage_error("--max-parallel must be above 0");
  g_autofree char *max = opt_max_parallel > 0 ? g_strdup_printf("%d", opt_max_parallel) : NULL;
  if (opt_force) {
    const char *fields[] = {"HOST-FLUSH", ip, NULL};
    return simple_change(fields, argv[0]);
  }
  const char *fields[] = {"HOST-RESET-USERS", ip, max, NULL};
  reply_timeout_secs = 0;
  return simple_change(fields, argv[0]);
}

static int
cmd_users(int argc, char **argv)
{
  Admin *a = admin_connect();
  const char *fields[] = {"USER-LIST", argc >= 1 ? ip_arg(argv[0]) : NULL, NULL};
  admin_send(a, fields);
  g_autoptr(GPtrArray) rows = read_rows(a);
  if (opt_json) {
    g_autoptr(JsonBuilder) b = json_builder_new();
    json_builder_begin_array(b);
    for (guint i = 0; i < rows->len; i++) {
      char **f = g_ptr_array_index(rows, i);
      if (g_strv_length(f) < 3)
        die(EXIT_PROTOCOL, "unexpected USER-LIST line");
      json_builder_begin_object(b);
      json_builder_set_member_name(b, "hash");
      json_builder_add_int_value(b, g_ascii_strtoll(f[0], NULL, 10));
      json_builder_set_member_name(b, "expires");
      json_builder_add_int_value(b, g_ascii_strtoll(f[1], NULL, 10));
      json_builder_set_member_name(b, "backend");
      json_builder_add_string_value(b, f[2]);
      json_builder_end_object(b);
    }
    json_builder_end_array(b);
    g_autoptr(JsonNode) root = json_builder_get_root(b);
    print_json_node(root);
    return 0;
  }
  g_autoptr(GPtrArray) cells = g_ptr_array_new_with_free_func((GDestroyNotify)g_strfreev);
  for (guint i = 0; i < rows->len; i++) {
    char **f = g_ptr_array_index(rows, i);
    if (g_strv_length(f) < 3)
      die(EXIT_PROTOCOL, "unexpected USER-LIST line");
    char **row = g_new0(char *, 4);
    row[0] = g_strdup(f[0]);
    row[1] = g_strdup(f[2]);
    row[2] = format_time(g_ascii_strtoll(f[1], NULL, 10));
    g_ptr_array_add(cells, row);
  }
  const char *header[] = {"user hash", "backend", "expires", NULL};
  print_table(header, cells);
  return 0;
}

static int
cmd_dump(int argc, char **argv)
{
  (void)argc;
  (void)argv;
  Admin *a = admin_connect();
  const char *list[] = {"HOST-LIST", NULL};
  admin_send(a, list);
  g_autoptr(GPtrArray) hosts = read_rows_as(a, FALSE);
  const char *removed_cmd[] = {"HOST-LIST-REMOVED", NULL};
  admin_send(a, removed_cmd);
  g_autoptr(GPtrArray) removed = read_rows_as(a, FALSE);
  /* Shell commands: every word an operator's data can make is quoted. */
  g_autofree char *sock = g_shell_quote(opt_socket);
  for (guint i = 0; i < hosts->len; i++) {
    char **f = g_ptr_array_index(hosts, i);
    if (g_strv_length(f) < 6)
      die(EXIT_PROTOCOL, "unexpected HOST-LIST line");
    g_autofree char *host = g_strdup_printf("%s%s%s", f[0], f[3][0] ? "@" : "", f[3]);
    g_autofree char *qhost = g_shell_quote(host);
    g_autofree char *qip = g_shell_quote(f[0]);
    g_autofree char *qvhosts = g_shell_quote(f[1]);
    printf("usherctl -a %s add %s %s\n", sock, qhost, qvhosts);
    if (strcmp(f[4], "D") == 0)
      printf("usherctl -a %s down %s\n", sock, qip);
  }
  for (guint i = 0; i < removed->len; i++) {
    g_autofree char *qip = g_shell_quote(((char **)g_ptr_array_index(removed, i))[0]);
    printf("usherctl -a %s remove %s\n", sock, qip);
  }
  return 0;
}

/* Sends an Usher JSON command and parses the reply. */
static JsonNode *
json_command(const char *const *fields)
{
  Admin *a = admin_connect();
  admin_send(a, fields);
  g_autofree char *line = read_line(a);
  g_autoptr(JsonParser) parser = json_parser_new();
  g_autoptr(GError) error = NULL;
  if (!json_parser_load_from_data(parser, line, -1, &error))
    die(EXIT_PROTOCOL, "%s: %s answers %s without JSON (is this a Dovecot director? explain, "
        "ring and stats need usherd): %s", opt_socket, fields[0], line, error->message);
  return json_node_copy(json_parser_get_root(parser));
}

static gint64
member_int(JsonObject *o, const char *name)
{
  return json_object_has_member(o, name) ? json_object_get_int_member(o, name) : 0;
}

static int
cmd_ring(int argc, char **argv)
{
  if (argc >= 1 && (strcmp(argv[0], "add") == 0 || strcmp(argv[0], "remove") == 0)) {
    if (argc < 2 || argc > 3)
      usage_error("ring %s needs IP [PORT]", argv[0]);
    const char *fields[] = {strcmp(argv[0], "add") == 0 ? "DIRECTOR-ADD" : "DIRECTOR-REMOVE",
                            ip_arg(argv[1]),
                            argc == 3 ? uint_range_arg(argv[2], "PORT", 1, 65535) : NULL,
                            NULL};
    return simple_change(fields, argv[1]);
  }
  if (argc >= 1 && strcmp(argv[0], "status") != 0)
    usage_error("unknown ring command \"%s\" (status, add, remove)", argv[0]);
  const char *fields[] = {"USHER-RING", NULL};
  g_autoptr(JsonNode) root = json_command(fields);
  if (opt_json) {
    print_json_node(root);
    return 0;
  }
  JsonObject *o = json_node_get_object(root);
  gboolean synced = json_object_get_boolean_member(o, "synced");
  printf("this director: %s, ring %s", json_object_get_string_member(o, "self"),
         !json_object_get_boolean_member(o, "handshaked") ? "handshaking"
         : synced                                          ? "synced"
                                                           : "syncing");
  if (!synced)
    printf(" (for %" G_GINT64_FORMAT " s)", member_int(o, "unsynced_secs"));
  printf(", %" G_GINT64_FORMAT " members, %" G_GINT64_FORMAT " users\n",
         member_int(o, "n_members"), member_int(o, "n_users"));
  JsonArray *members = json_object_get_array_member(o, "members");
  g_autoptr(GPtrArray) cells = g_ptr_array_new_with_free_func((GDestroyNotify)g_strfreev);
  for (guint i = 0; i < json_array_get_length(members); i++) {
    JsonObject *m = json_array_get_object_element(members, i);
    const char *link = json_object_get_string_member(m, "link");
    gboolean has_link = strcmp(link, "none") != 0;
    char **row = g_new0(char *, 8);
    JsonNode *addr = json_object_get_member(m, "address");
    row[0] = g_strdup(JSON_NODE_HOLDS_NULL(addr) ? "(not identified yet)"
                                                 : json_node_get_string(addr));
    row[1] = g_strdup(json_object_get_boolean_member(m, "self")      ? "self"
                      : json_object_get_boolean_member(m, "removed") ? "removed"
                      : has_link                                     ? link
                                                                     : "-");
    if (!has_link)
      row[2] = g_strdup(json_object_get_boolean_member(m, "self") ? "" : "not connected");
    else if (!json_object_get_boolean_member(m, "connected"))
      row[2] = g_strdup("connecting");
    else if (!json_object_get_boolean_member(m, "handshaked"))
      row[2] = g_strdup_printf("handshaking: %" G_GINT64_FORMAT " users in, %" G_GINT64_FORMAT
                               " out, %" G_GINT64_FORMAT " to send",
                               member_int(m, "users_received"), member_int(m, "users_sent"),
                               member_int(m, "users_to_send"));
    else
      row[2] = g_strdup(json_object_get_boolean_member(m, "synced") ? "synced" : "syncing");
    row[3] = has_link ? g_strdup_printf("%" G_GINT64_FORMAT, member_int(m, "ping_rtt_ms"))
                      : g_strdup("");
    row[4] = has_link ? g_strdup_printf("%" G_GINT64_FORMAT "/%" G_GINT64_FORMAT,
                                        member_int(m, "bytes_in"), member_int(m, "bytes_out"))
                      : g_strdup("");
    row[5] = has_link ? g_strdup_printf("%" G_GINT64_FORMAT, member_int(m, "buffered"))
                      : g_strdup("");
    row[6] = format_time(member_int(m, "last_failure"));
    g_ptr_array_add(cells, row);
  }
  const char *header[] = {"director", "link", "state", "ping ms", "bytes in/out", "buffered",
                          "last failure", NULL};
  print_table(header, cells);
  return 0;
}

static int
cmd_explain(int argc, char **argv)
{
  const char *fields[] = {"USHER-EXPLAIN", argv[0], argc >= 2 ? argv[1] : "", NULL};
  g_autoptr(JsonNode) root = json_command(fields);
  if (opt_json) {
    print_json_node(root);
    return 0;
  }
  JsonObject *o = json_node_get_object(root);
  printf("user:           %s%s\n", json_object_get_string_member(o, "user"),
         json_object_get_boolean_member(o, "given_as_hash") ? " (taken as a user hash)" : "");
  printf("hash:           %" G_GINT64_FORMAT " (username_hash %s)\n", member_int(o, "hash"),
         json_object_get_string_member(o, "username_hash"));
  const char *tag = json_object_get_string_member(o, "tag");
  printf("tag:            %s%s\n", tag[0] ? tag : "(default)",
         json_object_get_boolean_member(o, "tag_known") ? "" : " - no backend has this tag");
  JsonNode *entry = json_object_get_member(o, "entry");
  if (JSON_NODE_HOLDS_NULL(entry)) {
    printf("directory:      no entry\n");
  } else {
    JsonObject *e = json_node_get_object(entry);
    g_autofree char *stamped = format_time(member_int(e, "timestamp"));
    g_autofree char *expires = format_time(member_int(e, "expires"));
    printf("directory:      %s, last refreshed %s, expires %s (in %" G_GINT64_FORMAT " s)%s%s\n",
           json_object_get_string_member(e, "backend"), stamped, expires,
           member_int(e, "expires_in_secs"), json_object_get_boolean_member(e, "weak") ? ", weak" : "",
           strcmp(json_object_get_string_member(e, "move_state"), "none") != 0 ? ", being moved" : "");
  }
  JsonNode *hashed = json_object_get_member(o, "hashed");
  JsonNode *initial = json_object_get_member(o, "initial_config");
  printf("hashed backend: %s\n", JSON_NODE_HOLDS_NULL(hashed) ? "none" : json_node_get_string(hashed));
  printf("initial config: %s\n",
         JSON_NODE_HOLDS_NULL(initial) ? "none" : json_node_get_string(initial));
  printf("why:            %s\n", json_object_get_string_member(o, "why"));
  return 0;
}

static int
cmd_sessions(int argc, char **argv)
{
  UsherIp ip;
  gboolean by_backend = argc >= 1 && usher_ip_parse(argv[0], -1, &ip);
  const char *fields[] = {"USHER-SESSIONS", argc >= 1 && !by_backend ? argv[0] : "",
                          by_backend ? argv[0] : "", NULL};
  g_autoptr(JsonNode) root = json_command(fields);
  if (opt_json) {
    print_json_node(root);
    return 0;
  }
  JsonObject *o = json_node_get_object(root);
  if (!json_object_get_boolean_member(o, "proxy")) {
    printf("this usherd runs no proxy ([proxy] listeners): it has no sessions of its own\n");
    return 0;
  }
  JsonArray *list = json_object_get_array_member(o, "sessions");
  g_autoptr(GPtrArray) cells = g_ptr_array_new_with_free_func((GDestroyNotify)g_strfreev);
  for (guint i = 0; i < json_array_get_length(list); i++) {
    JsonObject *s = json_array_get_object_element(list, i);
    char **row = g_new0(char *, 6);
    row[0] = g_strdup(json_object_get_string_member(s, "user"));
    row[1] = g_strdup_printf("%s%s", json_object_get_string_member(s, "protocol"),
                             json_object_get_boolean_member(s, "tls") ? "+tls" : "");
    row[2] = g_strdup(json_object_get_string_member(s, "client"));
    row[3] = g_strdup(json_object_get_string_member(s, "backend"));
    row[4] = format_time(member_int(s, "since"));
    g_ptr_array_add(cells, row);
  }
  const char *header[] = {"user", "protocol", "client", "backend", "since", NULL};
  print_table(header, cells);
  return 0;
}

static int
cmd_health(int argc, char **argv)
{
  (void)argc;
  (void)argv;
  const char *fields[] = {"USHER-HEALTH", NULL};
  g_autoptr(JsonNode) root = json_command(fields);
  if (opt_json) {
    print_json_node(root);
    return 0;
  }
  JsonObject *o = json_node_get_object(root);
  if (!json_object_get_boolean_member(o, "enabled"))
    printf("health checks: off on this director ([health] enabled); it relays other directors' "
           "votes\n");
  printf("voters: %" G_GINT64_FORMAT " of %" G_GINT64_FORMAT
         " ring members vote now; decisions need %" G_GINT64_FORMAT
         " voters (quorum) and then %" G_GINT64_FORMAT " votes%s\n",
         member_int(o, "live_voters"), member_int(o, "members"), member_int(o, "quorum"),
         member_int(o, "needed"),
         json_object_get_boolean_member(o, "have_quorum") ? "" : " - NO QUORUM: nothing changes");
  JsonArray *list = json_object_get_array_member(o, "backends");
  g_autoptr(GPtrArray) cells = g_ptr_array_new_with_free_func((GDestroyNotify)g_strfreev);
  for (guint i = 0; i < json_array_get_length(list); i++) {
    JsonObject *h = json_array_get_object_element(list, i);
    char **row = g_new0(char *, 6);
    row[0] = g_strdup(json_object_get_string_member(h, "backend"));
    row[1] = g_strdup(!json_object_get_boolean_member(h, "down")            ? "up"
                      : json_object_get_boolean_member(h, "down_by_health") ? "down (health)"
                                                                            : "down");
    row[2] = g_strdup_printf("%s (%" G_GINT64_FORMAT " failed, %" G_GINT64_FORMAT " ok in a row)",
                             json_object_get_string_member(h, "view"),
                             member_int(h, "fails_in_row"), member_int(h, "oks_in_row"));
    row[3] = g_strdup_printf("%" G_GINT64_FORMAT " failing, %" G_GINT64_FORMAT " ok",
                             member_int(h, "votes_failing"), member_int(h, "votes_ok"));
    JsonNode *last = json_object_get_member(h, "last_result");
    row[4] = g_strdup(JSON_NODE_HOLDS_NULL(last) ? "-" : json_node_get_string(last));
    g_ptr_array_add(cells, row);
  }
  const char *header[] = {"backend", "state", "this director's view", "votes", "last probe", NULL};
  print_table(header, cells);
  JsonArray *voters = json_object_get_array_member(o, "voters");
  if (json_array_get_length(voters) > 0) {
    g_autoptr(GPtrArray) vcells = g_ptr_array_new_with_free_func((GDestroyNotify)g_strfreev);
    for (guint i = 0; i < json_array_get_length(voters); i++) {
      JsonObject *v = json_array_get_object_element(voters, i);
      char **row = g_new0(char *, 5);
      row[0] = g_strdup(json_object_get_string_member(v, "director"));
      row[1] = g_strdup(json_object_get_boolean_member(v, "live") ? "yes" : "no (stale)");
      row[2] = g_strdup_printf("%.1f s", member_int(v, "report_age_ms") / 1000.0);
      JsonArray *failing = json_object_get_array_member(v, "failing");
      GString *seen = g_string_new(NULL);
      for (guint k = 0; k < json_array_get_length(failing); k++)
        g_string_append_printf(seen, "%s%s", k > 0 ? " " : "",
                               json_array_get_string_element(failing, k));
      if (seen->len == 0)
        g_string_append(seen, "none");
      if (!json_object_get_boolean_member(v, "complete"))
        g_string_append(seen, " (and more)");
      row[3] = g_string_free(seen, FALSE);
      g_ptr_array_add(vcells, row);
    }
    printf("\n");
    const char *vheader[] = {"voter", "live", "last report", "sees failing", NULL};
    print_table(vheader, vcells);
  }
  return 0;
}

static void
print_stats_object(const char *title, JsonObject *o)
{
  printf("%s:\n", title);
  g_autoptr(GList) names = json_object_get_members(o);
  for (GList *l = names; l != NULL; l = l->next) {
    JsonNode *v = json_object_get_member(o, l->data);
    if (JSON_NODE_TYPE(v) != JSON_NODE_VALUE)
      continue;
    if (json_node_get_value_type(v) == G_TYPE_BOOLEAN)
      printf("  %-24s %s\n", (const char *)l->data, json_node_get_boolean(v) ? "yes" : "no");
    else
      printf("  %-24s %" G_GINT64_FORMAT "\n", (const char *)l->data, json_node_get_int(v));
  }
}

static int
cmd_stats(int argc, char **argv)
{
  (void)argc;
  (void)argv;
  const char *fields[] = {"USHER-STATS", NULL};
  g_autoptr(JsonNode) root = json_command(fields);
  if (opt_json) {
    print_json_node(root);
    return 0;
  }
  JsonObject *o = json_node_get_object(root);
  printf("uptime: %" G_GINT64_FORMAT " s\n", member_int(o, "uptime_secs"));
  print_stats_object("ring", json_object_get_object_member(o, "ring"));
  print_stats_object("director", json_object_get_object_member(o, "director"));
  print_stats_object("daemon", json_object_get_object_member(o, "daemon"));
  if (json_object_has_member(o, "proxy"))
    print_stats_object("proxy", json_object_get_object_member(o, "proxy"));
  return 0;
}

static const Verb verbs[] = {
  {"status", "[USER [TAG]]",
   "Without USER: every backend with its tag, vhosts, state and users (doveadm director\n"
   "status). With USER (a login name, or a number taken as the user hash): the backend the user\n"
   "is on now, the one the vhost ring gives it, and the one the initial configuration gave it.",
   cmd_status, 0, 2},
  {"add", "IP[@TAG] [VHOSTS]",
   "Add a backend (100 vhosts unless given), or set an existing backend's vhosts. Answers once\n"
   "the change has gone round the ring.",
   cmd_add, 1, 2},
  {"update", "IP VHOSTS", "Set an existing backend's vhosts (0 drains it: no new users).",
   cmd_update, 2, 2},
  {"up", "IP", "Mark a backend up: it gets new users again.", cmd_up, 1, 1},
  {"down", "IP",
   "Mark a backend down: no new users; users it has stay until they expire or are flushed\n"
   "(as with Dovecot's director).",
   cmd_down, 1, 1},
  {"remove", "IP", "Forget a backend and its users (their sessions are not kicked).", cmd_remove,
   1, 1},
  {"move", "USER IP", "Move a user (login name or hash) to a backend, kicking its sessions.",
   cmd_move, 2, 2},
  {"kick", "[--field FIELD] [--nowait] USER",
   "Disconnect a user's proxied sessions on every director (by login name, or by the passdb\n"
   "field FIELD). --nowait: fail with status 75 instead of waiting for a free kick slot.",
   cmd_kick, 1, 1},
  {"flush", "[--force] [--max-parallel N] IP|all",
   "Move the users of a backend (or of all) whose hashed backend differs, kicking their\n"
   "sessions, at most N at a time; waits until the last move has started, however long\n"
   "that takes (interrupted, the flush goes on). --force drops their entries without\n"
   "kicking (unsafe: a user may briefly run on two backends), except that the usherd of the\n"
   "ring close their sessions on a backend that is down.",
   cmd_flush, 1, 1},
  {"users", "[IP]", "Every user entry (hash, backend, expiry), or those of one backend.",
   cmd_users, 0, 1},
  {"dump", "", "The backend list as usherctl commands that recreate it.", cmd_dump, 0, 0},
  {"ring", "[status | add IP [PORT] | remove IP [PORT]]",
   "The ring as this director sees it: members, links, handshake progress, ping, bytes, buffered\n"
   "output (usherd only). add/remove change the ring's members (doveadm director ring add/remove).",
   cmd_ring, 0, 3},
  {"explain", "USER [TAG]",
   "Everything about one user: hash, tag, directory entry with timestamp and expiry, weak or\n"
   "moving state, hashed and initial backends, and why it is where it is (usherd only).",
   cmd_explain, 1, 2},
  {"stats", "", "Every counter of the director, the daemon and the proxy (usherd only).",
   cmd_stats, 0, 0},
  {"health", "",
   "Backend health checks: each backend's state, this director's own view from its probes, the\n"
   "votes of every director, the quorum, and which directors vote (usherd only).",
   cmd_health, 0, 0},
  {"sessions", "[USER | IP]",
   "The sessions this usherd's proxy has logged in: user, protocol, client, backend, since;\n"
   "only those of one login name, or of one backend (usherd only).",
   cmd_sessions, 0, 1},
};

static void
print_help(void)
{
  printf("usage: usherctl [-a SOCKET] [--json] VERB [ARGS]\n\n"
         "Administers a director through its admin socket (default %s, or -a PATH or -a IP:PORT).\n"
         "Works with usherd and, except for ring status, explain, stats, sessions and health, with\n"
         "Dovecot 2.3's director too. Backends are given as IP addresses.\n\nverbs:\n",
         SOCKET_DEFAULT);
  for (gsize i = 0; i < G_N_ELEMENTS(verbs); i++)
    printf("  %-8s %s\n", verbs[i].name, verbs[i].usage);
  printf("\n`usherctl VERB --help` explains one verb. --json prints JSON for scripts.\n"
         "Exit status: 0 done, 64 usage error, 65 refused (retrying will not help), 68 not found,\n"
         "69 cannot reach the director, 75 temporary failure (busy, ring not synced: try again),\n"
         "76 the director answered something unexpected.\n");
}

int
main(int argc, char **argv)
{
  usher_cli_init();
  gboolean help = FALSE, version = FALSE;
  char *socket_path = NULL;
  GOptionEntry entries[] = {
    {"socket", 'a', 0, G_OPTION_ARG_STRING, &socket_path, "Admin socket path or IP:PORT", "SOCKET"},
    {"json", 0, 0, G_OPTION_ARG_NONE, &opt_json, "Print JSON", NULL},
    {"nowait", 0, 0, G_OPTION_ARG_NONE, &opt_nowait, "kick: do not wait for a kick slot", NULL},
    {"field", 'f', 0, G_OPTION_ARG_STRING, &opt_field, "kick: match this passdb field", "FIELD"},
    {"force", 'F', 0, G_OPTION_ARG_NONE, &opt_force, "flush: drop entries without kicking", NULL},
    {"max-parallel", 0, 0, G_OPTION_ARG_INT, &opt_max_parallel, "flush: moves at a time", "N"},
    {"help", 'h', 0, G_OPTION_ARG_NONE, &help, "Show help", NULL},
    {"version", 0, 0, G_OPTION_ARG_NONE, &version, "Print the version", NULL},
    {NULL, 0, 0, 0, NULL, NULL, NULL},
  };
  g_autoptr(GOptionContext) ctx = g_option_context_new(NULL);
  g_option_context_set_help_enabled(ctx, FALSE);
  g_option_context_add_main_entries(ctx, entries, NULL);
  g_autoptr(GError) error = NULL;
  if (!g_option_context_parse(ctx, &argc, &argv, &error)) {
    fprintf(stderr, "usherctl: %s (try --help)\n", error->message);
    return EXIT_USAGE;
  }
  if (version) {
    printf("usherctl %s\n", USHER_VERSION);
    return 0;
  }
  if (socket_path != NULL)
    opt_socket = socket_path;
  if (argc < 2) {
    if (help) {
      print_help();
      return 0;
    }
    print_help();
    return EXIT_USAGE;
  }
  for (gsize i = 0; i < G_N_ELEMENTS(verbs); i++) {
    if (strcmp(verbs[i].name, argv[1]) != 0)
      continue;
    current_verb = &verbs[i];
    if (help) {
      printf("usage: usherctl [-a SOCKET] [--json] %s %s\n\n%s\n", verbs[i].name, verbs[i].usage,
             verbs[i].help);
      return 0;
    }
    int n = argc - 2;
    if (n < verbs[i].min_args)
      usage_error("too few arguments");
    if (n > verbs[i].max_args)
      usage_error("too many arguments (\"%s\" is one too many)", argv[2 + verbs[i].max_args]);
    return verbs[i].run(n, argv + 2);
  }
  fprintf(stderr, "usherctl: unknown verb \"%s\" (try --help)\n", argv[1]);
  return EXIT_USAGE;
}

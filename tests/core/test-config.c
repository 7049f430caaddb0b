/* test-config.c - the configuration model: parsing, validation, defaults and error messages. */
#include "libcore/config.h"
#include "libcore/imap-login.h"
#include "libcore/host.h"

#include <string.h>

#define SOURCE "test.conf"

/* ---------------------------------------------------------------------------------------------
 * Helpers
 */

static UsherConfig *
parse_ok(const char *text)
{
  g_autoptr(GError) error = NULL;
  UsherConfig *config = usher_config_parse(text, strlen(text), SOURCE, &error);
  if (config == NULL)
    g_test_message("unexpected error for %s: %s", text, error->message);
  g_assert_no_error(error);
  g_assert_nonnull(config);
  return config;
}

/* Parses text, expects failure with the code, and checks the message starts with the source
 * name and contains every fragment (NULL-terminated). */
static void
parse_fails(const char *text, UsherConfigError code, ...)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(UsherConfig) config = usher_config_parse(text, strlen(text), SOURCE, &error);
  g_assert_null(config);
  g_assert_nonnull(error);
  if (!g_error_matches(error, USHER_CONFIG_ERROR, (int)code))
    g_test_message("text %s: code %d, message %s", text, error->code, error->message);
  g_assert_error(error, USHER_CONFIG_ERROR, (int)code);
  g_assert_true(g_str_has_prefix(error->message, SOURCE ": "));
  g_assert_true(g_utf8_validate(error->message, -1, NULL));

  va_list args;
  va_start(args, code);
  for (const char *fragment = va_arg(args, const char *); fragment != NULL;
       fragment = va_arg(args, const char *)) {
    if (strstr(error->message, fragment) == NULL)
      g_test_message("message \"%s\" lacks \"%s\"", error->message, fragment);
    g_assert_nonnull(strstr(error->message, fragment));
  }
  va_end(args);
}

static const UsherBackendConfig *
backend_at(const UsherConfig *config, guint idx)
{
  g_assert_cmpuint(idx, <, config->backends->len);
  return g_ptr_array_index(config->backends, idx);
}

static void
assert_backend(const UsherBackendConfig *backend, const char *ip_text, guint vhosts,
               const char *tag, const char *hostname, gboolean down)
{
  char buf[USHER_IP_STRLEN];
  g_assert_cmpstr(usher_ip_to_string(&backend->ip, buf), ==, ip_text);
  g_assert_cmpuint(backend->vhost_count, ==, vhosts);
  g_assert_cmpstr(backend->tag, ==, tag);
  g_assert_cmpstr(backend->hostname, ==, hostname);
  g_assert_cmpint(backend->down, ==, down);
}

static GPtrArray *
new_backend_array(void)
{
  return g_ptr_array_new_with_free_func((GDestroyNotify)usher_backend_config_free);
}

/* usher_backends_parse on text; returns the array (asserting success). */
static GPtrArray *
backends_ok(const char *text)
{
  g_autoptr(GError) error = NULL;
  GPtrArray *out = new_backend_array();
  gboolean ok = usher_backends_parse(text, out, &error);
  if (!ok)
    g_test_message("unexpected error for %s: %s", text, error->message);
  g_assert_no_error(error);
  g_assert_true(ok);
  return out;
}

static void
backends_fail(const char *text, UsherConfigError code, const char *fragment)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) out = new_backend_array();
  g_assert_false(usher_backends_parse(text, out, &error));
  g_assert_error(error, USHER_CONFIG_ERROR, (int)code);
  g_assert_cmpuint(out->len, ==, 0);
  if (strstr(error->message, fragment) == NULL)
    g_test_message("message \"%s\" lacks \"%s\"", error->message, fragment);
  g_assert_nonnull(strstr(error->message, fragment));
}

static char *
director_text(const UsherConfig *config, guint idx)
{
  g_assert_cmpuint(idx, <, config->directors->len);
  const UsherDirectorAddr *addr = &g_array_index(config->directors, UsherDirectorAddr, idx);
  char buf[USHER_IP_STRLEN];
  usher_ip_to_string(&addr->ip, buf);
  return g_strdup_printf("%s %u", buf, addr->port);
}

/* ---------------------------------------------------------------------------------------------
 * Defaults
 */

static void
assert_defaults(const UsherConfig *config)
{
  g_assert_cmpstr(config->username_hash, ==, "%Lu");
  g_assert_nonnull(config->hash_format);
  g_assert_cmpuint(usher_hash_format_user(config->hash_format, "User1", -1), ==,
                   usher_user_hash("user1", -1, "%u"));
  g_assert_cmpuint(config->user_expire_secs, ==, 900);
  g_assert_cmpuint(config->user_kick_delay_secs, ==, 2);
  g_assert_cmpuint(config->max_parallel_moves, ==, 100);
  g_assert_cmpuint(config->max_parallel_kicks, ==, 100);
  g_assert_cmpstr(config->flush_socket, ==, "");
  g_assert_cmpuint(config->ping_idle_timeout_secs, ==, 30);
  g_assert_cmpuint(config->ping_max_timeout_secs, ==, 60);
  g_assert_cmpuint(config->output_buffer_size, ==, 10 * 1024 * 1024);
  g_assert_cmpstr(config->master_user_separator, ==, "");
  g_assert_cmpuint(config->directors->len, ==, 0);
  g_assert_cmpuint(config->backends->len, ==, 0);
}

static void
test_defaults(void)
{
  g_autoptr(UsherConfig) fresh = usher_config_new();
  assert_defaults(fresh);

  g_autoptr(UsherConfig) empty = parse_ok("");
  assert_defaults(empty);

  g_autoptr(UsherConfig) comments = parse_ok("# nothing here\n\n   # indented comment\n");
  assert_defaults(comments);

  g_autoptr(UsherConfig) groups = parse_ok("[director]\n[ring]\n[backends]\n");
  assert_defaults(groups);

  g_autoptr(UsherConfig) empty_lists = parse_ok("[ring]\ndirectors =\n[backends]\nhosts = \n");
  assert_defaults(empty_lists);

  /* NULL data with length 0 and a NULL source are accepted. */
  g_autoptr(GError) error = NULL;
  g_autoptr(UsherConfig) null_data = usher_config_parse(NULL, 0, NULL, &error);
  g_assert_no_error(error);
  assert_defaults(null_data);

  usher_config_free(NULL);
  usher_backend_config_free(NULL);
}

/* ---------------------------------------------------------------------------------------------
 * [director]
 */

static void
test_director_valid(void)
{
  g_autoptr(UsherConfig) config = parse_ok("[director]\n"
                                           "username_hash = %Ln\n"
                                           "user_expire = 1h 30m\n"
                                           "user_kick_delay = 0\n"
                                           "max_parallel_moves = 1\n"
                                           "max_parallel_kicks = 1000000\n"
                                           "flush_socket = unix:/run/usher/flush\n"
                                           "ping_idle_timeout = 1s\n"
                                           "ping_max_timeout = 1s\n"
                                           "output_buffer_size = 64k\n"
                                           "master_user_separator = *\n");
  g_assert_cmpstr(config->username_hash, ==, "%Ln");
  g_assert_cmpuint(usher_hash_format_user(config->hash_format, "Bob@Example.com", -1), ==,
                   usher_user_hash("bob", -1, "%u"));
  g_assert_cmpuint(config->user_expire_secs, ==, 5400);
  g_assert_cmpuint(config->user_kick_delay_secs, ==, 0);
  g_assert_cmpuint(config->max_parallel_moves, ==, 1);
  g_assert_cmpuint(config->max_parallel_kicks, ==, 1000000);
  g_assert_cmpstr(config->flush_socket, ==, "unix:/run/usher/flush");
  g_assert_cmpuint(config->ping_idle_timeout_secs, ==, 1);
  g_assert_cmpuint(config->ping_max_timeout_secs, ==, 1);
  g_assert_cmpuint(config->output_buffer_size, ==, 65536);
  g_assert_cmpstr(config->master_user_separator, ==, "*");

  /* Edge values, other spellings, blanks around '=' and at the end of values, CRLF lines. */
  g_autoptr(UsherConfig) other = parse_ok("[director]\r\n"
                                          "  user_expire=10s  \r\n"
                                          "user_kick_delay = 365d\r\n"
                                          "flush_socket = tcp:127.0.0.1:7000\r\n"
                                          "output_buffer_size = 1G\r\n"
                                          "ping_idle_timeout = 2 minutes\r\n"
                                          "ping_max_timeout = 2m\r\n"
                                          "username_hash = %{user}@x\r\n"
                                          "master_user_separator =\r\n");
  g_assert_cmpuint(other->user_expire_secs, ==, 10);
  g_assert_cmpuint(other->user_kick_delay_secs, ==, 365 * 86400);
  g_assert_cmpstr(other->flush_socket, ==, "tcp:127.0.0.1:7000");
  g_assert_cmpuint(other->output_buffer_size, ==, G_GUINT64_CONSTANT(1) << 30);
  g_assert_cmpuint(other->ping_idle_timeout_secs, ==, 120);
  g_assert_cmpuint(other->ping_max_timeout_secs, ==, 120);
  g_assert_cmpstr(other->username_hash, ==, "%{user}@x");
  g_assert_cmpstr(other->master_user_separator, ==, "");

  g_autoptr(UsherConfig) exec = parse_ok("[director]\nflush_socket = exec:/usr/bin/flush %h\n");
  g_assert_cmpstr(exec->flush_socket, ==, "exec:/usr/bin/flush %h");

  /* GKeyFile escapes: "\s" is a space, "\\" a backslash. */
  g_autoptr(UsherConfig) escaped = parse_ok("[director]\nflush_socket = unix:/a\\sb\\\\c\n");
  g_assert_cmpstr(escaped->flush_socket, ==, "unix:/a b\\c");

  /* Only a raised ping_idle_timeout, with ping_max_timeout raised too. */
  g_autoptr(UsherConfig) pings =
      parse_ok("[director]\nping_max_timeout = 5m\nping_idle_timeout = 90\n");
  g_assert_cmpuint(pings->ping_idle_timeout_secs, ==, 90);
  g_assert_cmpuint(pings->ping_max_timeout_secs, ==, 300);
}

typedef struct {
  const char *key;
  const char *value;
  UsherConfigError code;
  const char *fragment;
} BadValue;

static void
test_director_invalid(void)
{
  static const BadValue cases[] = {
      {"username_hash", "%x", USHER_CONFIG_ERROR_INVALID, "unsupported variable"},
      {"username_hash", "%{nope}", USHER_CONFIG_ERROR_INVALID, "unsupported variable"},
      {"username_hash", "", USHER_CONFIG_ERROR_INVALID, "must not be empty"},
      {"user_expire", "5s", USHER_CONFIG_ERROR_INVALID, "\"5s\" is below the minimum of 10s"},
      {"user_expire", "9", USHER_CONFIG_ERROR_INVALID, "below the minimum of 10s"},
      {"user_expire", "0", USHER_CONFIG_ERROR_INVALID, "below the minimum"},
      {"user_expire", "", USHER_CONFIG_ERROR_INVALID, "is not a duration"},
      {"user_expire", "15 fortnights", USHER_CONFIG_ERROR_INVALID, "is not a duration"},
      {"user_expire", "-15m", USHER_CONFIG_ERROR_INVALID, "is not a duration"},
      {"user_expire", "366d", USHER_CONFIG_ERROR_INVALID, "above the maximum of 365d"},
      {"user_expire", "99999999999999999999", USHER_CONFIG_ERROR_INVALID, "is not a duration"},
      {"user_kick_delay", "2x", USHER_CONFIG_ERROR_INVALID, "is not a duration"},
      {"user_kick_delay", "1.5s", USHER_CONFIG_ERROR_INVALID, "is not a duration"},
      {"max_parallel_moves", "0", USHER_CONFIG_ERROR_INVALID, "out of range (1 to 1000000)"},
      {"max_parallel_moves", "-1", USHER_CONFIG_ERROR_INVALID, "not a whole number"},
      {"max_parallel_moves", "ten", USHER_CONFIG_ERROR_INVALID, "not a whole number"},
      {"max_parallel_moves", "1000001", USHER_CONFIG_ERROR_INVALID, "out of range"},
      {"max_parallel_kicks", "0", USHER_CONFIG_ERROR_INVALID, "out of range"},
      {"max_parallel_kicks", "+5", USHER_CONFIG_ERROR_INVALID, "not a whole number"},
      {"max_parallel_kicks", "18446744073709551616", USHER_CONFIG_ERROR_INVALID,
       "not a whole number"},
      {"flush_socket", "/run/flush", USHER_CONFIG_ERROR_INVALID, "unix:, tcp: or exec:"},
      {"flush_socket", "unix:", USHER_CONFIG_ERROR_INVALID, "needs a path"},
      {"flush_socket", "exec:", USHER_CONFIG_ERROR_INVALID, "needs a path"},
      {"flush_socket", "tcp:host", USHER_CONFIG_ERROR_INVALID, "tcp:HOST:PORT"},
      {"flush_socket", "tcp::80", USHER_CONFIG_ERROR_INVALID, "tcp:HOST:PORT"},
      {"flush_socket", "tcp:host:0", USHER_CONFIG_ERROR_INVALID, "tcp:HOST:PORT"},
      {"flush_socket", "tcp:host:65536", USHER_CONFIG_ERROR_INVALID, "tcp:HOST:PORT"},
      {"flush_socket", "http://x", USHER_CONFIG_ERROR_INVALID, "must be empty or start with"},
      {"ping_idle_timeout", "0", USHER_CONFIG_ERROR_INVALID, "below the minimum of 1s"},
      {"ping_idle_timeout", "soon", USHER_CONFIG_ERROR_INVALID, "is not a duration"},
      {"ping_max_timeout", "0s", USHER_CONFIG_ERROR_INVALID, "below the minimum of 1s"},
      {"ping_max_timeout", "10s", USHER_CONFIG_ERROR_CONFLICT,
       "10s is below ping_idle_timeout (30s, the default)"},
      {"ping_idle_timeout", "61", USHER_CONFIG_ERROR_CONFLICT,
       "61s is above ping_max_timeout (1m, the default)"},
      {"output_buffer_size", "32k", USHER_CONFIG_ERROR_INVALID,
       "\"32k\" is below the minimum of 64k"},
      {"output_buffer_size", "65535", USHER_CONFIG_ERROR_INVALID, "below the minimum of 64k"},
      {"output_buffer_size", "2G", USHER_CONFIG_ERROR_INVALID, "above the maximum of 1G"},
      {"output_buffer_size", "10 MB of RAM", USHER_CONFIG_ERROR_INVALID, "is not a size"},
      {"output_buffer_size", "", USHER_CONFIG_ERROR_INVALID, "is not a size"},
      {"output_buffer_size", "17179869184G", USHER_CONFIG_ERROR_INVALID, "is not a size"},
      {"master_user_separator", "**", USHER_CONFIG_ERROR_INVALID, "one printable ASCII"},
      {"master_user_separator", "\\s", USHER_CONFIG_ERROR_INVALID, "one printable ASCII"},
      {"master_user_separator", "\xc3\xa9", USHER_CONFIG_ERROR_INVALID, "one printable ASCII"},
      {"flush_socket", "unix:/a\\qb", USHER_CONFIG_ERROR_INVALID, "not a valid escape"},
      {"flush_socket", "unix:/a\\", USHER_CONFIG_ERROR_INVALID, "lone backslash"},
      {"flush_socket", "unix:/a\\nb", USHER_CONFIG_ERROR_INVALID, "control character"},
  };

  for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_autofree char *text = g_strdup_printf("[director]\n%s = %s\n", cases[i].key, cases[i].value);
    g_autofree char *where = g_strdup_printf(SOURCE ": [director] %s: ", cases[i].key);
    g_test_message("case %s = %s", cases[i].key, cases[i].value);
    parse_fails(text, cases[i].code, where, cases[i].fragment, NULL);
  }

  /* When both are set and contradict, the message names ping_max_timeout and no default. */
  parse_fails("[director]\nping_idle_timeout = 20\nping_max_timeout = 10\n",
              USHER_CONFIG_ERROR_CONFLICT,
              SOURCE ": [director] ping_max_timeout: 10s is below ping_idle_timeout (20s)", NULL);
}

/* ---------------------------------------------------------------------------------------------
 * Unknown groups and keys, syntax
 */

static void
test_unknown(void)
{
  parse_fails("[directer]\n", USHER_CONFIG_ERROR_UNKNOWN_GROUP,
              SOURCE ": [directer]: unknown group", NULL);
  parse_fails("[Director]\nuser_expire = 1h\n", USHER_CONFIG_ERROR_UNKNOWN_GROUP, "[Director]",
              NULL);
  parse_fails("[director]\nuser_expiry = 1h\n", USHER_CONFIG_ERROR_UNKNOWN_KEY,
              SOURCE ": [director] user_expiry: unknown key", "user_expire", NULL);
  parse_fails("[director]\ndirector_user_expire = 1h\n", USHER_CONFIG_ERROR_UNKNOWN_KEY,
              SOURCE ": [director] director_user_expire: unknown key",
              "director_ prefix is not used", NULL);
  parse_fails("[director]\nuser_expire[de] = 1h\n", USHER_CONFIG_ERROR_UNKNOWN_KEY,
              SOURCE ": [director] user_expire[de]: ", "locale suffix", NULL);
  parse_fails("[ring]\nhosts = 127.0.0.1\n", USHER_CONFIG_ERROR_UNKNOWN_KEY,
              SOURCE ": [ring] hosts: unknown key", NULL);
  parse_fails("[backends]\ndirectors = 127.0.0.1\n", USHER_CONFIG_ERROR_UNKNOWN_KEY,
              SOURCE ": [backends] directors: unknown key", NULL);
  parse_fails("[backend 127.0.0.1]\nvhost = 5\n", USHER_CONFIG_ERROR_UNKNOWN_KEY,
              SOURCE ": [backend 127.0.0.1] vhost: unknown key", NULL);
  parse_fails("[backend]\nvhosts = 5\n", USHER_CONFIG_ERROR_INVALID,
              SOURCE ": [backend]: ", "needs an IP address", NULL);
  parse_fails("[backend mail1.example.com]\n", USHER_CONFIG_ERROR_INVALID,
              SOURCE ": [backend mail1.example.com]: \"mail1.example.com\" is not an IP address",
              "not resolved", NULL);
  parse_fails("[backend 10.0.0.256]\n", USHER_CONFIG_ERROR_INVALID, "not an IP address", NULL);
  parse_fails("[backendx]\n", USHER_CONFIG_ERROR_UNKNOWN_GROUP, "[backendx]: unknown group", NULL);
}

static void
test_syntax(void)
{
  parse_fails("user_expire = 1h\n", USHER_CONFIG_ERROR_SYNTAX,
              SOURCE ": line 1: key \"user_expire\" comes before the first [group]", NULL);
  parse_fails("[director]\nuser_expire 1h\n", USHER_CONFIG_ERROR_SYNTAX,
              SOURCE ": line 2: \"user_expire 1h\" is not a [group] line", NULL);
  parse_fails("[director]\n\n = 1h\n", USHER_CONFIG_ERROR_SYNTAX, SOURCE ": line 3: ", "has no key",
              NULL);
  parse_fails("[director\n", USHER_CONFIG_ERROR_SYNTAX,
              SOURCE ": line 1: \"[director\" is not a valid [group] line", NULL);
  parse_fails("[director] # comment\n", USHER_CONFIG_ERROR_SYNTAX,
              SOURCE ": line 1: ", "not a valid [group] line", NULL);
  parse_fails("[]\n", USHER_CONFIG_ERROR_SYNTAX, "line 1: ", "valid group name", NULL);
  parse_fails("[a[b]\n", USHER_CONFIG_ERROR_SYNTAX, "line 1: ", "valid group name", NULL);
  parse_fails("[director]\nuser_expire = 1\xff\n", USHER_CONFIG_ERROR_SYNTAX,
              SOURCE ": line 2: the text is not valid UTF-8", NULL);
  {
    static const char with_nul[] = "[director]\n\nuser_expire = 1h\0\n";
    g_autoptr(GError) error = NULL;
    g_autoptr(UsherConfig) config =
        usher_config_parse(with_nul, sizeof(with_nul) - 1, SOURCE, &error);
    g_assert_null(config);
    g_assert_error(error, USHER_CONFIG_ERROR, USHER_CONFIG_ERROR_SYNTAX);
    g_assert_cmpstr(error->message, ==, SOURCE ": line 3: the text contains a NUL byte");
  }
  /* Key names GKeyFile refuses. */
  parse_fails("[director]\nuser_expire[a b] = 1\n", USHER_CONFIG_ERROR_SYNTAX,
              SOURCE ": line 2: \"user_expire[a b]\" is not a valid key name", NULL);
  parse_fails("[director]\nuser]expire = 1\n", USHER_CONFIG_ERROR_SYNTAX,
              "line 2: ", "not a valid key name", NULL);
  parse_fails("[director]\n[x] = 1\n", USHER_CONFIG_ERROR_SYNTAX, "line 2: ", NULL);
  parse_fails("[director]\nuser_expire[de]x = 1\n", USHER_CONFIG_ERROR_SYNTAX,
              "line 2: ", "not a valid key name", NULL);
  /* GKeyFile's own checks still apply behind the line scan (its message, with the source). */
  parse_fails("[director]\nEncoding = latin1\n", USHER_CONFIG_ERROR_SYNTAX, SOURCE ": ", NULL);

  /* Repeats: GKeyFile would keep the last silently. */
  parse_fails("[director]\nuser_expire = 1h\nuser_kick_delay = 1\nuser_expire = 2h\n",
              USHER_CONFIG_ERROR_CONFLICT,
              SOURCE ": [director] user_expire: the key is set twice (lines 2 and 4)", NULL);
  parse_fails("[director]\nuser_expire = 1h\n[ring]\n[director]\nuser_kick_delay = 1\n",
              USHER_CONFIG_ERROR_CONFLICT,
              SOURCE ": [director]: the group appears twice (lines 1 and 4)", NULL);
  parse_fails("[backend 10.0.0.1]\nvhosts = 1\n[backend 10.0.0.1]\n", USHER_CONFIG_ERROR_CONFLICT,
              "[backend 10.0.0.1]: the group appears twice", NULL);

  /* Comments and blanks anywhere, a final line without newline. */
  g_autoptr(UsherConfig) config =
      parse_ok("# top\n\n[director]\n  # inside\n\t\nuser_expire = 20m\n[ring]\ndirectors = "
               "10.0.0.1");
  g_assert_cmpuint(config->user_expire_secs, ==, 1200);
  g_assert_cmpuint(config->directors->len, ==, 1);

  /* A too-large input is refused before parsing. */
  {
    gsize big = USHER_CONFIG_MAX_BYTES + 1;
    g_autofree char *text = g_malloc(big);
    memset(text, '#', big);
    g_autoptr(GError) error = NULL;
    g_autoptr(UsherConfig) none = usher_config_parse(text, big, SOURCE, &error);
    g_assert_null(none);
    g_assert_error(error, USHER_CONFIG_ERROR, USHER_CONFIG_ERROR_SYNTAX);
  }
}

/* ---------------------------------------------------------------------------------------------
 * Durations and sizes
 */

typedef struct {
  const char *text;
  gboolean ok;
  guint64 value;
} NumberCase;

static void
test_durations(void)
{
  static const NumberCase cases[] = {
      {"0", TRUE, 0},
      {"00", TRUE, 0},
      {"900", TRUE, 900},
      {"15m", TRUE, 900},
      {"15M", TRUE, 900},
      {"15 m", TRUE, 900},
      {"15 min", TRUE, 900},
      {"15mins", TRUE, 900},
      {"15 minute", TRUE, 900},
      {"15 minutes", TRUE, 900},
      {"2s", TRUE, 2},
      {"2 sec", TRUE, 2},
      {"2secs", TRUE, 2},
      {"1 second", TRUE, 1},
      {"2 seconds", TRUE, 2},
      {"1h", TRUE, 3600},
      {"1 hour", TRUE, 3600},
      {"2hours", TRUE, 7200},
      {"1d", TRUE, 86400},
      {"1 day", TRUE, 86400},
      {"2 days", TRUE, 172800},
      {"1h 30m", TRUE, 5400},
      {"1h30m", TRUE, 5400},
      {"1d 1h 1m 1s", TRUE, 90061},
      {"30m 1h", TRUE, 5400},
      {"  7s  ", TRUE, 7},
      {"18446744073709551615", TRUE, G_MAXUINT64},
      {"18446744073709551615s", TRUE, G_MAXUINT64},
      {"18446744073709551616", FALSE, 0},
      {"213503982334602d", FALSE, 0},
      {"213503982334601d", TRUE, G_GUINT64_CONSTANT(213503982334601) * 86400},
      {"18446744073709551615s 1s", FALSE, 0},
      {"", FALSE, 0},
      {"   ", FALSE, 0},
      {"s", FALSE, 0},
      {"-1", FALSE, 0},
      {"+1", FALSE, 0},
      {"1.5h", FALSE, 0},
      {"10ms", FALSE, 0},
      {"1w", FALSE, 0},
      {"1h 30", FALSE, 0},
      {"1 30", FALSE, 0},
      {"1h,30m", FALSE, 0},
      {"1h junk", FALSE, 0},
      {"0x10", FALSE, 0},
  };
  for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
    guint64 value = 12345;
    g_test_message("duration \"%s\"", cases[i].text);
    g_assert_cmpint(usher_parse_duration_secs(cases[i].text, &value), ==, cases[i].ok);
    g_assert_cmpuint(value, ==, cases[i].ok ? cases[i].value : 12345);
  }
}

static void
test_sizes(void)
{
  static const NumberCase cases[] = {
      {"0", TRUE, 0},
      {"1048576", TRUE, 1048576},
      {"64k", TRUE, 65536},
      {"64K", TRUE, 65536},
      {"64KB", TRUE, 65536},
      {"64 KiB", TRUE, 65536},
      {"10M", TRUE, 10485760},
      {"10MB", TRUE, 10485760},
      {"10MiB", TRUE, 10485760},
      {"1G", TRUE, 1073741824},
      {"1GB", TRUE, 1073741824},
      {"1 GiB", TRUE, 1073741824},
      {" 5 ", TRUE, 5},
      {"18446744073709551615", TRUE, G_MAXUINT64},
      {"17179869183G", TRUE, G_GUINT64_CONSTANT(17179869183) << 30},
      {"17179869184G", FALSE, 0},
      {"18446744073709551616", FALSE, 0},
      {"", FALSE, 0},
      {"M", FALSE, 0},
      {"-1", FALSE, 0},
      {"1.5M", FALSE, 0},
      {"1T", FALSE, 0},
      {"10M 5k", FALSE, 0},
      {"10Mx", FALSE, 0},
      {"10 bytes", FALSE, 0},
  };
  for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
    guint64 value = 12345;
    g_test_message("size \"%s\"", cases[i].text);
    g_assert_cmpint(usher_parse_size_bytes(cases[i].text, &value), ==, cases[i].ok);
    g_assert_cmpuint(value, ==, cases[i].ok ? cases[i].value : 12345);
  }
}

/* ---------------------------------------------------------------------------------------------
 * The backend list grammar
 */

static void
test_backends_ipv4(void)
{
  g_autoptr(GPtrArray) out = backends_ok("127.0.2.1 127.0.2.2,127.0.2.3 ,\t10.0.0.1");
  g_assert_cmpuint(out->len, ==, 4);
  /* usher_backends_parse keeps list order. */
  assert_backend(g_ptr_array_index(out, 0), "127.0.2.1", 100, "", NULL, FALSE);
  assert_backend(g_ptr_array_index(out, 1), "127.0.2.2", 100, "", NULL, FALSE);
  assert_backend(g_ptr_array_index(out, 2), "127.0.2.3", 100, "", NULL, FALSE);
  assert_backend(g_ptr_array_index(out, 3), "10.0.0.1", 100, "", NULL, FALSE);

  g_autoptr(GPtrArray) empty = backends_ok("");
  g_assert_cmpuint(empty->len, ==, 0);
  g_autoptr(GPtrArray) separators = backends_ok(" , ,\n\t ");
  g_assert_cmpuint(separators->len, ==, 0);

  /* Empty elements between commas are skipped and do not count in element numbers. */
  g_autoptr(GPtrArray) gaps = backends_ok(",127.0.2.1,,127.0.2.2,,,");
  g_assert_cmpuint(gaps->len, ==, 2);
  backends_fail("127.0.2.1,,127.0.2.x", USHER_CONFIG_ERROR_INVALID,
                "backend list element 2 \"127.0.2.x\": \"127.0.2.x\" is not an IP address");

  backends_fail("127.0.2.1 127.0.2.2 127.0.2.x=5", USHER_CONFIG_ERROR_INVALID,
                "backend list element 3 \"127.0.2.x=5\": \"127.0.2.x\" is not an IP address");
  backends_fail("mail1.example.com", USHER_CONFIG_ERROR_INVALID, "not resolved");
  backends_fail("127.0.2.01", USHER_CONFIG_ERROR_INVALID, "is not an IP address");
  backends_fail("=5", USHER_CONFIG_ERROR_INVALID, "element 1 \"=5\": an IP address is missing");
  backends_fail("@tag", USHER_CONFIG_ERROR_INVALID, "an IP address is missing");
  backends_fail("[127.0.0.1]", USHER_CONFIG_ERROR_INVALID, "is not an IP address");
}

static void
test_backends_ipv6(void)
{
  g_autoptr(GPtrArray) out = backends_ok("::1 [2001:db8::5]=7 2001:db8::6@v6 [::ffff:1.2.3.4]");
  g_assert_cmpuint(out->len, ==, 4);
  assert_backend(g_ptr_array_index(out, 0), "::1", 100, "", NULL, FALSE);
  assert_backend(g_ptr_array_index(out, 1), "2001:db8::5", 7, "", NULL, FALSE);
  assert_backend(g_ptr_array_index(out, 2), "2001:db8::6", 100, "v6", NULL, FALSE);
  assert_backend(g_ptr_array_index(out, 3), "::ffff:1.2.3.4", 100, "", NULL, FALSE);

  backends_fail("[2001:db8::5", USHER_CONFIG_ERROR_INVALID, "is not an IP address");
  backends_fail("2001:db8:::5", USHER_CONFIG_ERROR_INVALID, "is not an IP address");
  backends_fail("fe80::1%eth0", USHER_CONFIG_ERROR_INVALID, "is not an IP address");
  /* The same address written twice differently. */
  backends_fail("2001:db8::5 2001:DB8:0::5", USHER_CONFIG_ERROR_CONFLICT,
                "element 2 \"2001:DB8:0::5\": 2001:db8::5 is already listed (element 1)");
}

static void
test_backends_ranges(void)
{
  g_autoptr(GPtrArray) v4 = backends_ok("127.0.2.1-127.0.2.3=50@a");
  g_assert_cmpuint(v4->len, ==, 3);
  assert_backend(g_ptr_array_index(v4, 0), "127.0.2.1", 50, "a", NULL, FALSE);
  assert_backend(g_ptr_array_index(v4, 1), "127.0.2.2", 50, "a", NULL, FALSE);
  assert_backend(g_ptr_array_index(v4, 2), "127.0.2.3", 50, "a", NULL, FALSE);

  g_autoptr(GPtrArray) single = backends_ok("10.1.1.9-10.1.1.9");
  g_assert_cmpuint(single->len, ==, 1);

  g_autoptr(GPtrArray) full = backends_ok("10.1.1.0-10.1.1.255");
  g_assert_cmpuint(full->len, ==, 256);
  assert_backend(g_ptr_array_index(full, 255), "10.1.1.255", 100, "", NULL, FALSE);

  /* The step carries from the last byte into the one before it. */
  g_autoptr(GPtrArray) v6 = backends_ok("[2001:db8::fe]-[2001:db8::101]=3");
  g_assert_cmpuint(v6->len, ==, 4);
  assert_backend(g_ptr_array_index(v6, 0), "2001:db8::fe", 3, "", NULL, FALSE);
  assert_backend(g_ptr_array_index(v6, 1), "2001:db8::ff", 3, "", NULL, FALSE);
  assert_backend(g_ptr_array_index(v6, 2), "2001:db8::100", 3, "", NULL, FALSE);
  assert_backend(g_ptr_array_index(v6, 3), "2001:db8::101", 3, "", NULL, FALSE);

  g_autoptr(GPtrArray) bare_v6 = backends_ok("::1-::3");
  g_assert_cmpuint(bare_v6->len, ==, 3);

  backends_fail("127.0.2.3-127.0.2.1", USHER_CONFIG_ERROR_INVALID, "runs backwards");
  backends_fail("[::5]-[::1]", USHER_CONFIG_ERROR_INVALID, "runs backwards");
  backends_fail("127.0.2.1-127.0.3.1", USHER_CONFIG_ERROR_INVALID, "inside one /24");
  backends_fail("10.0.0.0-11.0.0.0", USHER_CONFIG_ERROR_INVALID, "inside one /24");
  backends_fail("[2001:db8::1]-[2001:db8::1:0:0]", USHER_CONFIG_ERROR_INVALID, "inside one /112");
  backends_fail("[2001:db8::fffe]-[2001:db8::1:1]", USHER_CONFIG_ERROR_INVALID, "inside one /112");
  backends_fail("[::1]-[::2:0:0]", USHER_CONFIG_ERROR_INVALID, "inside one /112");
  backends_fail("127.0.0.1-[::2]", USHER_CONFIG_ERROR_INVALID, "cannot mix IPv4 and IPv6");
  backends_fail("127.0.0.1-", USHER_CONFIG_ERROR_INVALID, "an IP address is missing");
  backends_fail("-127.0.0.1", USHER_CONFIG_ERROR_INVALID, "an IP address is missing");
  backends_fail("127.0.0.1-127.0.0.2-127.0.0.3", USHER_CONFIG_ERROR_INVALID,
                "is not an IP address");
  /* Overlapping ranges: the first repeated address is named. */
  backends_fail("127.0.2.1-127.0.2.5 127.0.2.4-127.0.2.9", USHER_CONFIG_ERROR_CONFLICT,
                "element 2 \"127.0.2.4-127.0.2.9\": 127.0.2.4 is already listed (element 1)");
  /* A whole /112 is a valid range but more than one table holds. */
  backends_fail("[::]-[::ffff]", USHER_CONFIG_ERROR_INVALID, "too many backends (at most 4096");
}

static void
test_backends_vhosts_tags(void)
{
  g_autoptr(GPtrArray) out =
      backends_ok("10.0.0.1=0 10.0.0.2=1000 10.0.0.3=007 10.0.0.4@A.b_c-9 10.0.0.5=5@t");
  assert_backend(g_ptr_array_index(out, 0), "10.0.0.1", 0, "", NULL, FALSE);
  assert_backend(g_ptr_array_index(out, 1), "10.0.0.2", 1000, "", NULL, FALSE);
  assert_backend(g_ptr_array_index(out, 2), "10.0.0.3", 7, "", NULL, FALSE);
  assert_backend(g_ptr_array_index(out, 3), "10.0.0.4", 100, "A.b_c-9", NULL, FALSE);
  assert_backend(g_ptr_array_index(out, 4), "10.0.0.5", 5, "t", NULL, FALSE);

  backends_fail("10.0.0.1=1001", USHER_CONFIG_ERROR_INVALID,
                "element 1 \"10.0.0.1=1001\": \"1001\" is not a vhost count (a whole number "
                "from 0 to 1000)");
  backends_fail("10.0.0.1=", USHER_CONFIG_ERROR_INVALID, "\"\" is not a vhost count");
  backends_fail("10.0.0.1=-1", USHER_CONFIG_ERROR_INVALID, "is not a vhost count");
  backends_fail("10.0.0.1=5=6", USHER_CONFIG_ERROR_INVALID, "is not a vhost count");
  backends_fail("10.0.0.1=99999999999999999999999", USHER_CONFIG_ERROR_INVALID,
                "is not a vhost count");
  backends_fail("10.0.0.1@", USHER_CONFIG_ERROR_INVALID, "the tag after \"@\" is empty");
  backends_fail("10.0.0.1@a/b", USHER_CONFIG_ERROR_INVALID, "\"a/b\" is not a valid tag");
  backends_fail("10.0.0.1@a@b", USHER_CONFIG_ERROR_INVALID, "is not a valid tag");
  backends_fail("10.0.0.1@x=5", USHER_CONFIG_ERROR_INVALID, "is not a valid tag");

  g_autofree char *long_tag = g_strnfill(USHER_TAG_MAX_LEN, 't');
  g_autofree char *ok_text = g_strdup_printf("10.0.0.1@%s", long_tag);
  g_autoptr(GPtrArray) long_ok = backends_ok(ok_text);
  g_assert_cmpuint(strlen(((UsherBackendConfig *)g_ptr_array_index(long_ok, 0))->tag), ==,
                   USHER_TAG_MAX_LEN);
  g_autofree char *bad_text = g_strdup_printf("10.0.0.1@%st", long_tag);
  backends_fail(bad_text, USHER_CONFIG_ERROR_INVALID, "is not a valid tag");
}

static void
test_backends_duplicates(void)
{
  backends_fail("127.0.2.1 127.0.2.2 127.0.2.1=5", USHER_CONFIG_ERROR_CONFLICT,
                "backend list element 3 \"127.0.2.1=5\": 127.0.2.1 is already listed "
                "(element 1)");

  /* Appending to a non-empty array: existing entries count as listed; a failure leaves the
   * array untouched. */
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) out = backends_ok("127.0.2.1");
  g_assert_false(usher_backends_parse("127.0.2.9 127.0.2.1", out, &error));
  g_assert_error(error, USHER_CONFIG_ERROR, USHER_CONFIG_ERROR_CONFLICT);
  g_assert_nonnull(strstr(error->message, "element 2 \"127.0.2.1\": 127.0.2.1 is already listed"));
  g_assert_cmpuint(out->len, ==, 1);
  g_clear_error(&error);
  g_assert_true(usher_backends_parse("127.0.2.2", out, &error));
  g_assert_no_error(error);
  g_assert_cmpuint(out->len, ==, 2);
}

static void
test_backends_limits(void)
{
  /* 16 /24 ranges = 4096 addresses: exactly the cap. One more is refused. */
  GString *text = g_string_new(NULL);
  for (int i = 0; i < 16; i++)
    g_string_append_printf(text, "10.0.%d.0-10.0.%d.255 ", i, i);
  g_autoptr(GPtrArray) out = backends_ok(text->str);
  g_assert_cmpuint(out->len, ==, USHER_HOSTS_MAX);
  g_string_append(text, "10.1.0.0");
  backends_fail(text->str, USHER_CONFIG_ERROR_INVALID, "element 17 \"10.1.0.0\": too many");
  g_string_free(text, TRUE);

  /* A very long bad element is quoted in part. */
  g_autofree char *junk = g_strnfill(5000, 'x');
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) none = new_backend_array();
  g_assert_false(usher_backends_parse(junk, none, &error));
  g_assert_cmpuint(strlen(error->message), <, 400);
  g_assert_nonnull(strstr(error->message, "...\""));
}

/* ---------------------------------------------------------------------------------------------
 * [backends] and [backend IP] in a config
 */

static void
test_config_backends(void)
{
  g_autoptr(UsherConfig) config = parse_ok("[backend 127.0.2.2]\n"
                                           "vhosts = 0\n"
                                           "[backends]\n"
                                           "hosts = 127.0.2.3 127.0.2.1-127.0.2.2=50@old ::1\n"
                                           "[backend 127.0.2.1]\n"
                                           "hostname = mail1.example.com\n"
                                           "down = yes\n"
                                           "tag =\n"
                                           "[backend 10.9.9.9]\n"
                                           "tag = new\n"
                                           "vhosts = 1000\n"
                                           "[backend 0::2]\n"
                                           "down = false\n");
  g_assert_cmpuint(config->backends->len, ==, 6);
  /* Sorted by IP, IPv4 first. */
  assert_backend(backend_at(config, 0), "10.9.9.9", 1000, "new", NULL, FALSE);
  assert_backend(backend_at(config, 1), "127.0.2.1", 50, "", "mail1.example.com", TRUE);
  assert_backend(backend_at(config, 2), "127.0.2.2", 0, "old", NULL, FALSE);
  assert_backend(backend_at(config, 3), "127.0.2.3", 100, "", NULL, FALSE);
  assert_backend(backend_at(config, 4), "::1", 100, "", NULL, FALSE);
  assert_backend(backend_at(config, 5), "::2", 100, "", NULL, FALSE);

  /* Booleans. */
  static const char *const trues[] = {"true", "TRUE", "yes", "1"};
  static const char *const falses[] = {"false", "No", "0"};
  for (gsize i = 0; i < G_N_ELEMENTS(trues); i++) {
    g_autofree char *text = g_strdup_printf("[backend 10.0.0.1]\ndown = %s\n", trues[i]);
    g_autoptr(UsherConfig) c = parse_ok(text);
    g_assert_true(backend_at(c, 0)->down);
  }
  for (gsize i = 0; i < G_N_ELEMENTS(falses); i++) {
    g_autofree char *text = g_strdup_printf("[backend 10.0.0.1]\ndown = %s\n", falses[i]);
    g_autoptr(UsherConfig) c = parse_ok(text);
    g_assert_false(backend_at(c, 0)->down);
  }

  /* hostname = (empty) clears it; a bracket-free IPv6 group name. */
  g_autoptr(UsherConfig) cleared = parse_ok("[backend 2001:db8::1]\nhostname =\n");
  assert_backend(backend_at(cleared, 0), "2001:db8::1", 100, "", NULL, FALSE);

  /* Errors in [backends] hosts are prefixed with the source, group and key. */
  parse_fails("[backends]\nhosts = 127.0.2.1 127.0.2.2 127.0.2.x=5\n", USHER_CONFIG_ERROR_INVALID,
              SOURCE ": [backends] hosts: backend list element 3 \"127.0.2.x=5\": \"127.0.2.x\" "
                     "is not an IP address",
              NULL);
  parse_fails("[backends]\nhosts = 127.0.2.1 127.0.2.1\n", USHER_CONFIG_ERROR_CONFLICT,
              SOURCE ": [backends] hosts: backend list element 2", "already listed", NULL);

  /* Values in [backend IP] groups. */
  parse_fails("[backend 10.0.0.1]\nvhosts = 1001\n", USHER_CONFIG_ERROR_INVALID,
              SOURCE ": [backend 10.0.0.1] vhosts: \"1001\" is out of range (0 to 1000)", NULL);
  parse_fails("[backend 10.0.0.1]\nvhosts = many\n", USHER_CONFIG_ERROR_INVALID,
              SOURCE ": [backend 10.0.0.1] vhosts: ", "not a whole number", NULL);
  parse_fails("[backend 10.0.0.1]\ntag = a b\n", USHER_CONFIG_ERROR_INVALID,
              SOURCE ": [backend 10.0.0.1] tag: \"a b\" is not a valid tag", NULL);
  parse_fails("[backend 10.0.0.1]\nhostname = mail/1\n", USHER_CONFIG_ERROR_INVALID,
              SOURCE ": [backend 10.0.0.1] hostname: ", "not a valid host name", NULL);
  parse_fails("[backend 10.0.0.1]\ndown = maybe\n", USHER_CONFIG_ERROR_INVALID,
              SOURCE ": [backend 10.0.0.1] down: \"maybe\" is not a boolean", NULL);
  /* The same address in two group spellings. */
  parse_fails("[backend ::1]\n[backend 0::1]\n", USHER_CONFIG_ERROR_CONFLICT,
              SOURCE ": [backend 0::1]: the same backend as [backend ::1]", NULL);

  /* The cap counts hosts and [backend IP] groups together. */
  GString *text = g_string_new("[backends]\nhosts =");
  for (int i = 0; i < 16; i++)
    g_string_append_printf(text, " 10.0.%d.0-10.0.%d.255", i, i);
  g_string_append(text, "\n[backend 10.0.0.7]\nvhosts = 1\n");
  g_autoptr(UsherConfig) full = parse_ok(text->str);
  g_assert_cmpuint(full->backends->len, ==, USHER_HOSTS_MAX);
  g_string_append(text, "[backend 10.1.0.0]\n");
  parse_fails(text->str, USHER_CONFIG_ERROR_INVALID, SOURCE ": [backend 10.1.0.0]: too many", NULL);
  g_string_free(text, TRUE);
}

/* ---------------------------------------------------------------------------------------------
 * [ring] directors
 */

static void
test_directors(void)
{
  g_autoptr(UsherConfig) config =
      parse_ok("[ring]\ndirectors = 127.0.1.3:9090, 127.0.1.1 [::1]:7000 ::1 127.0.1.1:80,"
               "[2001:db8::1] 10.0.0.1:65535\n");
  static const char *const expected[] = {
      "10.0.0.1 65535", "127.0.1.1 80", "127.0.1.1 9090",   "127.0.1.3 9090",
      "::1 7000",       "::1 9090",     "2001:db8::1 9090",
  };
  g_assert_cmpuint(config->directors->len, ==, G_N_ELEMENTS(expected));
  for (guint i = 0; i < G_N_ELEMENTS(expected); i++) {
    g_autofree char *text = director_text(config, i);
    g_assert_cmpstr(text, ==, expected[i]);
  }

  static const BadValue cases[] = {
      {"directors", "127.0.1.1 127.0.1.1:9090", USHER_CONFIG_ERROR_CONFLICT,
       "element 2 \"127.0.1.1:9090\": 127.0.1.1:9090 is already listed (element 1)"},
      {"directors", "[::1] ::1", USHER_CONFIG_ERROR_CONFLICT,
       "element 2 \"::1\": [::1]:9090 is already listed (element 1)"},
      {"directors", "127.0.1.1:0", USHER_CONFIG_ERROR_INVALID,
       "element 1 \"127.0.1.1:0\": \"0\" is not a port (1 to 65535)"},
      {"directors", "127.0.1.1:65536", USHER_CONFIG_ERROR_INVALID, "is not a port"},
      {"directors", "127.0.1.1:", USHER_CONFIG_ERROR_INVALID, "\"\" is not a port"},
      {"directors", "127.0.1.1:x", USHER_CONFIG_ERROR_INVALID, "is not a port"},
      {"directors", "[::1]:", USHER_CONFIG_ERROR_INVALID, "is not a port"},
      {"directors", "[::1", USHER_CONFIG_ERROR_INVALID, "without \"]\""},
      {"directors", "[::1]9090", USHER_CONFIG_ERROR_INVALID, "only \":PORT\" may follow"},
      {"directors", "[127.0.0.1]:9090", USHER_CONFIG_ERROR_INVALID, "is not an IP address"},
      {"directors", "director1.example.com:9090", USHER_CONFIG_ERROR_INVALID,
       "\"director1.example.com\" is not an IP address (host names are not resolved)"},
      {"directors", "10.0.0.1/24", USHER_CONFIG_ERROR_INVALID, "is not an IP address"},
  };
  for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_autofree char *text = g_strdup_printf("[ring]\n%s = %s\n", cases[i].key, cases[i].value);
    g_test_message("case %s", cases[i].value);
    parse_fails(text, cases[i].code, SOURCE ": [ring] directors: ", cases[i].fragment, NULL);
  }

  /* At most USHER_CONFIG_MAX_DIRECTORS. */
  GString *many = g_string_new("[ring]\ndirectors =");
  for (int i = 0; i < USHER_CONFIG_MAX_DIRECTORS; i++)
    g_string_append_printf(many, " 10.0.%d.%d:%d", i / 200, i % 200, 1000 + i);
  g_autoptr(UsherConfig) full = parse_ok(many->str);
  g_assert_cmpuint(full->directors->len, ==, USHER_CONFIG_MAX_DIRECTORS);
  g_string_append(many, " 10.9.9.9");
  parse_fails(many->str, USHER_CONFIG_ERROR_INVALID, "element 257", "too many directors", NULL);
  g_string_free(many, TRUE);
}

/* ---------------------------------------------------------------------------------------------
 * Robustness and the shipped examples
 */

static void
test_truncations(void)
{
  static const char text[] = "# sample\n"
                             "[director]\n"
                             "user_expire = 15m\n"
                             "output_buffer_size = 10M\n"
                             "flush_socket = unix:/run/flush\n"
                             "[ring]\n"
                             "directors = 127.0.1.1:9090 [::1]:9091\n"
                             "[backends]\n"
                             "hosts = 127.0.2.1-127.0.2.3=100@a [::1]-[::3]\n"
                             "[backend 127.0.2.2]\n"
                             "hostname = mail2\n"
                             "down = true\n";
  guint ok = 0;
  for (gsize len = 0; len <= sizeof(text) - 1; len++) {
    g_autoptr(GError) error = NULL;
    g_autoptr(UsherConfig) config = usher_config_parse(text, len, SOURCE, &error);
    g_assert_true((config == NULL) != (error == NULL));
    if (config != NULL)
      ok++;
    else
      g_assert_true(g_str_has_prefix(error->message, SOURCE ": "));
  }
  g_assert_cmpuint(ok, >, 0);
  g_autoptr(UsherConfig) whole = parse_ok(text);
  g_assert_cmpuint(whole->backends->len, ==, 6);
}

static char *
example_path(const char *name)
{
  const char *data = g_getenv("USHER_TEST_DATA");
  g_autofree char *path = NULL;
  if (data != NULL)
    path = g_build_filename(data, "..", "..", "doc", "examples", name, NULL);
  else
    path = g_build_filename("doc", "examples", name, NULL);
  if (!g_file_test(path, G_FILE_TEST_EXISTS))
    return NULL;
  return g_steal_pointer(&path);
}

static UsherConfig *
load_example(const char *name)
{
  g_autofree char *path = example_path(name);
  if (path == NULL) {
    g_test_skip("doc/examples not found (set USHER_TEST_DATA or run from the source tree)");
    return NULL;
  }
  g_autofree char *contents = NULL;
  gsize len = 0;
  g_autoptr(GError) error = NULL;
  g_assert_true(g_file_get_contents(path, &contents, &len, &error));
  UsherConfig *config = usher_config_parse(contents, len, name, &error);
  g_assert_no_error(error);
  return config;
}

static void
test_example_usher_conf(void)
{
  g_autoptr(UsherConfig) config = load_example("usher.conf");
  if (config == NULL)
    return;
  g_assert_cmpuint(config->directors->len, ==, 3);
  for (guint i = 0; i < 3; i++) {
    g_autofree char *text = director_text(config, i);
    g_autofree char *want = g_strdup_printf("127.0.1.%u 9090", i + 1);
    g_assert_cmpstr(text, ==, want);
  }
  g_assert_cmpuint(config->backends->len, ==, 3);
  assert_backend(backend_at(config, 0), "127.0.2.1", 100, "", NULL, FALSE);
  assert_backend(backend_at(config, 1), "127.0.2.2", 100, "", NULL, FALSE);
  assert_backend(backend_at(config, 2), "127.0.2.3", 100, "", NULL, FALSE);
  g_assert_cmpuint(config->user_expire_secs, ==, 900);
}

static void
test_example_tags_conf(void)
{
  g_autoptr(UsherConfig) config = load_example("tags.conf");
  if (config == NULL)
    return;
  guint tagged = 0, down = 0, zero = 0, named = 0;
  g_autoptr(GHashTable) tags = g_hash_table_new(g_str_hash, g_str_equal);
  for (guint i = 0; i < config->backends->len; i++) {
    const UsherBackendConfig *b = backend_at(config, i);
    if (*b->tag != '\0') {
      tagged++;
      g_hash_table_add(tags, b->tag);
    }
    down += b->down;
    zero += b->vhost_count == 0;
    named += b->hostname != NULL;
    if (i > 0)
      g_assert_cmpint(usher_ip_cmp(&backend_at(config, i - 1)->ip, &b->ip), <, 0);
  }
  g_assert_cmpuint(g_hash_table_size(tags), ==, 2);
  g_assert_cmpuint(tagged, >, 0);
  g_assert_cmpuint(down, >=, 1);
  g_assert_cmpuint(zero, >=, 1);
  g_assert_cmpuint(named, >=, 1);
}

/* ---------------------------------------------------------------------------------------------
 * [daemon]
 */

static void
test_daemon_group(void)
{
  g_autoptr(UsherConfig) defaults = parse_ok("");
  g_assert_false(defaults->has_ring_address);
  g_assert_cmpstr(defaults->admin_socket, ==, USHER_ADMIN_SOCKET_DEFAULT);
  g_assert_cmpuint(defaults->admin_socket_mode, ==, 0600);
  g_assert_cmpstr(defaults->admin_socket_user, ==, "");
  g_assert_false(defaults->has_admin_listen);
  g_assert_cmpuint(defaults->admin_max_clients, ==, 32);
  g_assert_cmpuint(defaults->admin_idle_timeout_secs, ==, 120);

  g_autoptr(UsherConfig) c = parse_ok(
    "[ring]\ndirectors = 10.0.0.1 10.0.0.2:7000\n"
    "[daemon]\nring_address = 10.0.0.2:7000\nadmin_socket = /run/x/admin\n"
    "admin_socket_mode = 660\nadmin_socket_group = mail\nadmin_listen = 127.0.0.1:9091\n"
    "admin_max_clients = 5\nadmin_idle_timeout = 10m\n");
  g_assert_true(c->has_ring_address);
  g_assert_cmpuint(c->ring_address.port, ==, 7000);
  g_assert_cmpstr(c->admin_socket, ==, "/run/x/admin");
  g_assert_cmpuint(c->admin_socket_mode, ==, 0660);
  g_assert_cmpstr(c->admin_socket_group, ==, "mail");
  g_assert_true(c->has_admin_listen);
  g_assert_cmpuint(c->admin_listen.port, ==, 9091);
  g_assert_cmpuint(c->admin_max_clients, ==, 5);
  g_assert_cmpuint(c->admin_idle_timeout_secs, ==, 600);

  /* A bare IP takes the default ring port, and must then match a member with it. */
  g_autoptr(UsherConfig) bare =
    parse_ok("[ring]\ndirectors = 10.0.0.1\n[daemon]\nring_address = 10.0.0.1\n");
  g_assert_cmpuint(bare->ring_address.port, ==, USHER_DIRECTOR_PORT_DEFAULT);

  parse_fails("[ring]\ndirectors = 10.0.0.1\n[daemon]\nring_address = 10.0.0.9\n",
              USHER_CONFIG_ERROR_CONFLICT, "[daemon] ring_address: 10.0.0.9:9090 is not in [ring]",
              NULL);
  parse_fails("[daemon]\nring_address = mail1\n", USHER_CONFIG_ERROR_INVALID,
              "[daemon] ring_address", "not an IP address", NULL);
  parse_fails("[daemon]\nadmin_socket = run/admin\n", USHER_CONFIG_ERROR_INVALID,
              "must be an absolute path", NULL);
  parse_fails("[daemon]\nadmin_socket_mode = 0680\n", USHER_CONFIG_ERROR_INVALID,
              "\"0680\" is not an octal file mode", NULL);
  parse_fails("[daemon]\nadmin_socket_mode = 1777\n", USHER_CONFIG_ERROR_INVALID,
              "octal file mode", NULL);
  parse_fails("[daemon]\nadmin_listen = 127.0.0.1\n", USHER_CONFIG_ERROR_INVALID,
              "[daemon] admin_listen: needs a port", NULL);
  parse_fails("[daemon]\nadmin_max_clients = 0\n", USHER_CONFIG_ERROR_INVALID,
              "out of range (1 to 10000)", NULL);
  parse_fails("[daemon]\nadmin_socket_user = a b\n", USHER_CONFIG_ERROR_INVALID,
              "not a user or group name", NULL);
  parse_fails("[daemon]\nlisten = x\n", USHER_CONFIG_ERROR_UNKNOWN_KEY,
              "unknown key (known keys in [daemon]: ring_address", NULL);

  /* The address grammar for command-line options. */
  UsherDirectorAddr addr;
  g_autoptr(GError) error = NULL;
  g_assert_true(usher_config_parse_address("[::1]:7", 9090, &addr, &error));
  g_assert_cmpuint(addr.port, ==, 7);
  g_assert_true(usher_config_parse_address("10.1.2.3", 9090, &addr, &error));
  g_assert_cmpuint(addr.port, ==, 9090);
  g_assert_false(usher_config_parse_address("10.1.2.3:99999", 9090, &addr, &error));
  g_assert_nonnull(strstr(error->message, "is not a port"));
  g_clear_error(&error);
  g_assert_false(usher_config_parse_address("", 9090, &addr, &error));
}

static void
test_proxy_group(void)
{
  g_autoptr(UsherConfig) c =
    parse_ok("[proxy]\nimap_listen = 127.0.1.1:143, 127.0.1.1:1143\npop3_listen = 127.0.1.1:110\n"
             "trusted_proxies = 10.0.0.0/8 192.0.2.7, 2001:db8::/32\n"
             "proxy_protocol_backends = 127.0.2.0/24\n");
  g_assert_cmpuint(c->imap_listen->len, ==, 2);
  g_assert_cmpuint(c->pop3_listen->len, ==, 1);
  g_assert_cmpuint(c->trusted_proxies->len, ==, 3);
  g_assert_cmpuint(g_array_index(c->trusted_proxies, UsherNet, 0).bits, ==, 8);
  g_assert_cmpuint(g_array_index(c->trusted_proxies, UsherNet, 1).bits, ==, 32);
  g_assert_cmpuint(g_array_index(c->trusted_proxies, UsherNet, 2).bits, ==, 32);
  g_assert_cmpuint(c->proxy_protocol_backends->len, ==, 1);
  parse_fails("[proxy]\ntrusted_proxies = 10.0.0.0/8 10.1.0.0/8\n", USHER_CONFIG_ERROR_INVALID,
              "[proxy] trusted_proxies: element 2, \"10.1.0.0/8\", is not an address or a network",
              NULL);
  parse_fails("[proxy]\nproxy_protocol_backends = example.com\n", USHER_CONFIG_ERROR_INVALID,
              "proxy_protocol_backends: element 1", NULL);
  parse_fails("[proxy]\npop3_listen = 127.0.0.1\n", USHER_CONFIG_ERROR_INVALID,
              "[proxy] pop3_listen: element 1 needs a port", NULL);
  g_autoptr(UsherConfig) tls =
    parse_ok("[proxy]\nimaps_listen = 127.0.1.1:993\ntls_cert = /etc/usher/cert.pem\n"
             "tls_key = /etc/usher/key.pem\ntls_min_version = 1.3\n");
  g_assert_cmpuint(tls->imaps_listen->len, ==, 1);
  g_assert_cmpuint(tls->tls_min_version, ==, 13);
  g_assert_cmpstr(tls->tls_key, ==, "/etc/usher/key.pem");
  parse_fails("[proxy]\nimaps_listen = 127.0.1.1:993\n", USHER_CONFIG_ERROR_CONFLICT,
              "[proxy] imaps_listen needs tls_cert and tls_key", NULL);
  parse_fails("[proxy]\ntls_cert = /a.pem\n", USHER_CONFIG_ERROR_CONFLICT,
              "tls_cert and tls_key go together", NULL);
  parse_fails("[proxy]\ntls_cert = cert.pem\n", USHER_CONFIG_ERROR_INVALID,
              "[proxy] tls_cert: \"cert.pem\" is not an absolute path", NULL);
  parse_fails("[proxy]\ntls_min_version = 1.1\n", USHER_CONFIG_ERROR_INVALID,
              "\"1.1\" is not 1.2 or 1.3", NULL);
  parse_fails("[proxy]\nshutdown_timeout = soon\n", USHER_CONFIG_ERROR_INVALID,
              "[proxy] shutdown_timeout", NULL);
  g_autoptr(UsherConfig) sni =
    parse_ok("[proxy]\ntls_cert = /c.pem\ntls_key = /k.pem\n"
             "tls_sni = Mail.Example.org:/m.pem:/m.key, *.example.net:/n.pem\n");
  g_assert_cmpuint(sni->tls_sni->len, ==, 2);
  const UsherTlsSni *first = g_ptr_array_index(sni->tls_sni, 0);
  const UsherTlsSni *second = g_ptr_array_index(sni->tls_sni, 1);
  g_assert_cmpstr(first->name, ==, "mail.example.org");
  g_assert_cmpstr(first->key, ==, "/m.key");
  g_assert_cmpstr(second->name, ==, "*.example.net");
  g_assert_cmpstr(second->key, ==, "/n.pem"); /* no key: the PEM holds both */
  parse_fails("[proxy]\ntls_sni = a.example:/a.pem\n", USHER_CONFIG_ERROR_CONFLICT,
              "tls_sni needs tls_cert and tls_key", NULL);
  parse_fails("[proxy]\ntls_sni = a.example\n", USHER_CONFIG_ERROR_INVALID,
              "[proxy] tls_sni: element 1, \"a.example\", is not NAME:CERT or NAME:CERT:KEY",
              NULL);
  parse_fails("[proxy]\ntls_sni = a.example:a.pem\n", USHER_CONFIG_ERROR_INVALID,
              "is not absolute", NULL);
  parse_fails("[proxy]\ntls_sni = a..example:/a.pem\n", USHER_CONFIG_ERROR_INVALID,
              "does not start with a host name", NULL);
  parse_fails("[proxy]\ntls_sni = x.*.example:/a.pem\n", USHER_CONFIG_ERROR_INVALID,
              "does not start with a host name", NULL);
  parse_fails("[proxy]\ntls_sni = a.example:/a.pem A.example:/b.pem\n",
              USHER_CONFIG_ERROR_INVALID, "element 2 names a.example a second time", NULL);
  g_autoptr(UsherConfig) drain = parse_ok("[proxy]\nshutdown_timeout = 0s\n");
  g_assert_cmpuint(drain->proxy_shutdown_timeout_secs, ==, 0);
  g_assert_cmpuint(tls->proxy_shutdown_timeout_secs, ==, 30);
  /* auth_mechanisms: PLAIN and LOGIN unless the operator lists others */
  g_assert_cmpuint(tls->proxy_auth_mechs, ==, (1u << USHER_SASL_PLAIN) | (1u << USHER_SASL_LOGIN));
  g_autoptr(UsherConfig) mechs = parse_ok("[proxy]\nauth_mechanisms = PLAIN, oauthbearer\n");
  g_assert_cmpuint(mechs->proxy_auth_mechs, ==,
                   (1u << USHER_SASL_PLAIN) | (1u << USHER_SASL_OAUTHBEARER));
  parse_fails("[proxy]\nauth_mechanisms = plain cram-md5\n", USHER_CONFIG_ERROR_INVALID,
              "[proxy] auth_mechanisms: element 2, \"cram-md5\", is not a mechanism usherd passes "
              "through (plain, login, oauthbearer, xoauth2)",
              NULL);
  parse_fails("[proxy]\nauth_mechanisms = ,\n", USHER_CONFIG_ERROR_INVALID,
              "[proxy] auth_mechanisms: names no mechanism", NULL);
  /* LMTP spool: /tmp and 256 MiB unless set; empty: no spool */
  g_assert_cmpstr(tls->lmtp_spool_dir, ==, "/tmp");
  g_assert_cmpuint(tls->lmtp_spool_max, ==, G_GUINT64_CONSTANT(256) << 20);
  g_autoptr(UsherConfig) spool = parse_ok("[proxy]\nlmtp_spool_dir =\nlmtp_spool_max = 2G\n");
  g_assert_cmpstr(spool->lmtp_spool_dir, ==, "");
  g_assert_cmpuint(spool->lmtp_spool_max, ==, G_GUINT64_CONSTANT(2) << 30);
  parse_fails("[proxy]\nlmtp_spool_dir = spool\n", USHER_CONFIG_ERROR_INVALID,
              "[proxy] lmtp_spool_dir: \"spool\" is not an absolute path (or empty: no spooling)",
              NULL);
  parse_fails("[proxy]\nlmtp_spool_max = 512k\n", USHER_CONFIG_ERROR_INVALID,
              "[proxy] lmtp_spool_max: \"512k\" is below the minimum of", NULL);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/core/config/defaults", test_defaults);
  g_test_add_func("/core/config/director/valid", test_director_valid);
  g_test_add_func("/core/config/director/invalid", test_director_invalid);
  g_test_add_func("/core/config/unknown", test_unknown);
  g_test_add_func("/core/config/syntax", test_syntax);
  g_test_add_func("/core/config/durations", test_durations);
  g_test_add_func("/core/config/sizes", test_sizes);
  g_test_add_func("/core/config/backend-list/ipv4", test_backends_ipv4);
  g_test_add_func("/core/config/backend-list/ipv6", test_backends_ipv6);
  g_test_add_func("/core/config/backend-list/ranges", test_backends_ranges);
  g_test_add_func("/core/config/backend-list/vhosts-tags", test_backends_vhosts_tags);
  g_test_add_func("/core/config/backend-list/duplicates", test_backends_duplicates);
  g_test_add_func("/core/config/backend-list/limits", test_backends_limits);
  g_test_add_func("/core/config/backends", test_config_backends);
  g_test_add_func("/core/config/directors", test_directors);
  g_test_add_func("/core/config/truncations", test_truncations);
  g_test_add_func("/core/config/example/usher-conf", test_example_usher_conf);
  g_test_add_func("/core/config/example/tags-conf", test_example_tags_conf);
  g_test_add_func("/core/config/daemon", test_daemon_group);
  g_test_add_func("/core/config/proxy", test_proxy_group);
  return g_test_run();
}

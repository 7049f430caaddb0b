/* config.c - the configuration model: key-file parsing and validation.
 *
 * Pure code: the text arrives in memory, nothing here opens files or reads clocks. The input is
 * checked in three steps:
 *   1. a line scan that mirrors GKeyFile's line rules, to report syntax errors with a line number
 *      and to refuse repeated groups and keys (GKeyFile would silently keep the last value);
 *   2. g_key_file_load_from_data;
 *   3. every group and key, in file order, against the model below.
 * Every message starts with the source name, then "[group] key:" where one applies.
 */
#include "libcore/config.h"

#include "libcore/host.h"
#include "libcore/imap-login.h"

#include <string.h>

GQuark
usher_config_error_quark(void)
{
  return g_quark_from_static_string("usher-config-error-quark");
}

#define DEFAULT_SOURCE "config"

#define USER_EXPIRE_DEFAULT_SECS 900u
#define USER_EXPIRE_MIN_SECS 10u
#define USER_KICK_DELAY_DEFAULT_SECS 2u
#define PARALLEL_DEFAULT 100u
#define PARALLEL_MAX 1000000u
#define PING_IDLE_DEFAULT_SECS 30u
#define PING_IDLE_MIN_SECS 1u
#define PING_MAX_DEFAULT_SECS 60u
#define USHER_PING_TIMEOUT_DEFAULT_SECS 2u
#define USHER_PING_TIMEOUT_MAX_SECS 3600u
#define HEALTH_INTERVAL_DEFAULT_SECS 2u
#define HEALTH_INTERVAL_MAX_SECS 3600u
#define HEALTH_TIMEOUT_DEFAULT_SECS 2u
#define HEALTH_COUNT_MAX 100u
#define DURATION_MAX_SECS (365u * 86400u)
#define OUTPUT_BUFFER_DEFAULT (G_GUINT64_CONSTANT(10) * 1024 * 1024)
#define OUTPUT_BUFFER_MIN (G_GUINT64_CONSTANT(64) * 1024)
#define OUTPUT_BUFFER_MAX (G_GUINT64_CONSTANT(1024) * 1024 * 1024)
#define LMTP_SPOOL_MIN (G_GUINT64_CONSTANT(1024) * 1024)
#define LMTP_SPOOL_MAX (G_GUINT64_CONSTANT(1024) * 1024 * 1024 * 1024)

#define QUOTE_MAX_CHARS 80

/* ---------------------------------------------------------------------------------------------
 * Small text helpers
 */

/* A double-quoted, printable rendering of len bytes of s for error messages: control bytes,
 * invalid UTF-8, quotes and backslashes are escaped; long text is cut with "...". */
static char *
quote(const char *s, gssize len)
{
  gsize n = len < 0 ? strlen(s) : (gsize)len;
  const char *p = s;
  const char *end = s + n;
  GString *out = g_string_sized_new(MIN(n, QUOTE_MAX_CHARS) + 8);
  guint shown = 0;

  g_string_append_c(out, '"');
  while (p < end) {
    if (shown >= QUOTE_MAX_CHARS) {
      g_string_append(out, "...");
      break;
    }
    guchar c = (guchar)*p;
    if (c < 0x80) {
      if (c == '"' || c == '\\')
        g_string_append_printf(out, "\\%c", c);
      else if (c < 0x20 || c == 0x7f)
        g_string_append_printf(out, "\\x%02x", c);
      else
        g_string_append_c(out, (char)c);
      p++;
    } else {
      gunichar u = g_utf8_get_char_validated(p, end - p);
      if (u == (gunichar)-1 || u == (gunichar)-2) {
        g_string_append_printf(out, "\\x%02x", c);
        p++;
      } else {
        const char *next = g_utf8_next_char(p);
        if (g_unichar_isprint(u))
          g_string_append_len(out, p, next - p);
        else
          g_string_append_printf(out, "\\u%04x", u);
        p = next;
      }
    }
    shown++;
  }
  g_string_append_c(out, '"');
  return g_string_free(out, FALSE);
}

static gboolean
is_list_separator(char c)
{
  return c == ',' || g_ascii_isspace(c);
}

/* Decimal digits only (no sign, no space), value <= max. */
static gboolean
parse_decimal(const char *s, gsize len, guint64 max, guint64 *value_out)
{
  guint64 value = 0;
  if (len == 0)
    return FALSE;
  for (gsize i = 0; i < len; i++) {
    if (!g_ascii_isdigit(s[i]))
      return FALSE;
    guint digit = (guint)(s[i] - '0');
    if (value > (max - digit) / 10)
      return FALSE;
    value = value * 10 + digit;
  }
  *value_out = value;
  return TRUE;
}

gboolean
usher_tag_valid(const char *s, gsize len)
{
  if (len == 0 || len > USHER_TAG_MAX_LEN)
    return FALSE;
  for (gsize i = 0; i < len; i++) {
    char c = s[i];
    if (!g_ascii_isalnum(c) && c != '.' && c != '_' && c != '-')
      return FALSE;
  }
  return TRUE;
}

gboolean
usher_hostname_valid(const char *s)
{
  gsize len = strlen(s);
  if (len == 0 || len > USHER_HOSTNAME_MAX_LEN)
    return FALSE;
  for (gsize i = 0; i < len; i++) {
    char c = s[i];
    if (!g_ascii_isalnum(c) && c != '.' && c != '_' && c != '-')
      return FALSE;
  }
  return TRUE;
}

/* A word with letters and dots but no colon looks like a host name someone hoped we resolve. */
static gboolean
looks_like_hostname(const char *s, gsize len)
{
  gboolean dot = FALSE;
  if (len == 0 || !g_ascii_isalpha(s[0]))
    return FALSE;
  for (gsize i = 0; i < len; i++) {
    if (s[i] == ':' || s[i] == '[')
      return FALSE;
    if (s[i] == '.')
      dot = TRUE;
  }
  return dot;
}

static const char *
not_ip_hint(const char *s, gsize len)
{
  return looks_like_hostname(s, len) ? " (host names are not resolved: write the address, and set "
                                       "hostname in a [backend IP] group if needed)"
                                     : "";
}

static char *
format_duration(guint64 secs)
{
  if (secs != 0 && secs % 86400 == 0)
    return g_strdup_printf("%" G_GUINT64_FORMAT "d", secs / 86400);
  if (secs != 0 && secs % 3600 == 0)
    return g_strdup_printf("%" G_GUINT64_FORMAT "h", secs / 3600);
  if (secs != 0 && secs % 60 == 0)
    return g_strdup_printf("%" G_GUINT64_FORMAT "m", secs / 60);
  return g_strdup_printf("%" G_GUINT64_FORMAT "s", secs);
}

static char *
format_size(guint64 bytes)
{
  if (bytes != 0 && bytes % (G_GUINT64_CONSTANT(1) << 30) == 0)
    return g_strdup_printf("%" G_GUINT64_FORMAT "G", bytes >> 30);
  if (bytes != 0 && bytes % (G_GUINT64_CONSTANT(1) << 20) == 0)
    return g_strdup_printf("%" G_GUINT64_FORMAT "M", bytes >> 20);
  if (bytes != 0 && bytes % (G_GUINT64_CONSTANT(1) << 10) == 0)
    return g_strdup_printf("%" G_GUINT64_FORMAT "k", bytes >> 10);
  return g_strdup_printf("%" G_GUINT64_FORMAT, bytes);
}

/* ---------------------------------------------------------------------------------------------
 * Durations and sizes
 */

typedef struct {
  const char *name;
  guint64 factor;
} Unit;

/* clang-format off */
static const Unit duration_units[] = {
  {"s", 1},       {"sec", 1},     {"secs", 1},     {"second", 1},  {"seconds", 1},
  {"m", 60},      {"min", 60},    {"mins", 60},    {"minute", 60}, {"minutes", 60},
  {"h", 3600},    {"hour", 3600}, {"hours", 3600},
  {"d", 86400},   {"day", 86400}, {"days", 86400},
};
/* clang-format on */

static const Unit size_units[] = {
    {"k", G_GUINT64_CONSTANT(1) << 10},   {"kb", G_GUINT64_CONSTANT(1) << 10},
    {"kib", G_GUINT64_CONSTANT(1) << 10}, {"m", G_GUINT64_CONSTANT(1) << 20},
    {"mb", G_GUINT64_CONSTANT(1) << 20},  {"mib", G_GUINT64_CONSTANT(1) << 20},
    {"g", G_GUINT64_CONSTANT(1) << 30},   {"gb", G_GUINT64_CONSTANT(1) << 30},
    {"gib", G_GUINT64_CONSTANT(1) << 30},
};

/* Units are matched without regard to ASCII case. */
static gboolean
lookup_unit(const Unit *units, gsize n_units, const char *s, gsize len, guint64 *factor_out)
{
  for (gsize i = 0; i < n_units; i++) {
    if (strlen(units[i].name) == len && g_ascii_strncasecmp(units[i].name, s, len) == 0) {
      *factor_out = units[i].factor;
      return TRUE;
    }
  }
  return FALSE;
}

/* One term: digits, optional blanks, optional unit letters. Advances *pp past the term. */
static gboolean
parse_term(const char **pp, const Unit *units, gsize n_units, guint64 *value_out,
           gboolean *has_unit_out)
{
  const char *p = *pp;
  const char *digits = p;
  while (g_ascii_isdigit(*p))
    p++;
  guint64 number;
  if (!parse_decimal(digits, (gsize)(p - digits), G_MAXUINT64, &number))
    return FALSE;
  while (*p == ' ' || *p == '\t')
    p++;
  const char *letters = p;
  while (g_ascii_isalpha(*p))
    p++;
  guint64 factor = 1;
  *has_unit_out = p > letters;
  if (*has_unit_out && !lookup_unit(units, n_units, letters, (gsize)(p - letters), &factor))
    return FALSE;
  if (number > G_MAXUINT64 / factor)
    return FALSE;
  *value_out = number * factor;
  *pp = p;
  return TRUE;
}

gboolean
usher_parse_duration_secs(const char *text, guint64 *secs_out)
{
  g_assert(text != NULL && secs_out != NULL);
  const char *p = text;
  guint64 total = 0;
  guint terms = 0;
  gboolean any_unitless = FALSE;

  while (g_ascii_isspace(*p))
    p++;
  while (*p != '\0') {
    guint64 value;
    gboolean has_unit;
    if (!parse_term(&p, duration_units, G_N_ELEMENTS(duration_units), &value, &has_unit))
      return FALSE;
    if (!has_unit)
      any_unitless = TRUE;
    if (total > G_MAXUINT64 - value)
      return FALSE;
    total += value;
    terms++;
    while (g_ascii_isspace(*p))
      p++;
  }
  /* A bare number is seconds, but only on its own: "1h 30" is more likely a typo than 1h 30s. */
  if (terms == 0 || (any_unitless && terms > 1))
    return FALSE;
  *secs_out = total;
  return TRUE;
}

gboolean
usher_parse_size_bytes(const char *text, guint64 *bytes_out)
{
  g_assert(text != NULL && bytes_out != NULL);
  const char *p = text;
  guint64 value;
  gboolean has_unit;

  while (g_ascii_isspace(*p))
    p++;
  if (*p == '\0')
    return FALSE;
  if (!parse_term(&p, size_units, G_N_ELEMENTS(size_units), &value, &has_unit))
    return FALSE;
  while (g_ascii_isspace(*p))
    p++;
  if (*p != '\0')
    return FALSE;
  *bytes_out = value;
  return TRUE;
}

/* ---------------------------------------------------------------------------------------------
 * Backend entries and the backend list grammar
 */

UsherBackendConfig *
usher_backend_config_new(const UsherIp *ip, const char *tag, guint vhosts)
{
  g_assert(ip != NULL);
  UsherBackendConfig *backend = g_new0(UsherBackendConfig, 1);
  backend->ip = *ip;
  backend->tag = g_strdup(tag != NULL ? tag : "");
  backend->hostname = NULL;
  backend->vhost_count = vhosts;
  backend->down = FALSE;
  return backend;
}

void
usher_backend_config_free(UsherBackendConfig *backend)
{
  if (backend == NULL)
    return;
  g_free(backend->tag);
  g_free(backend->hostname);
  g_free(backend);
}

static void
backend_config_free_void(gpointer backend)
{
  usher_backend_config_free(backend);
}

static int
backend_ptr_cmp(gconstpointer a, gconstpointer b)
{
  const UsherBackendConfig *x = *(UsherBackendConfig *const *)a;
  const UsherBackendConfig *y = *(UsherBackendConfig *const *)b;
  return usher_ip_cmp(&x->ip, &y->ip);
}

typedef struct {
  guint number; /* 1-based position in the list */
  const char *text;
  gsize len;
} Element;

/* Moves *p to the next element of a list (separated by commas or white space) and numbers it;
 * FALSE at the end. Start with a zeroed Element. */
static gboolean
next_element(const char **p, Element *elem)
{
  const char *q = *p;
  while (is_list_separator(*q))
    q++;
  if (*q == '\0') {
    *p = q;
    return FALSE;
  }
  const char *start = q;
  while (*q != '\0' && !is_list_separator(*q))
    q++;
  elem->number++;
  elem->text = start;
  elem->len = (gsize)(q - start);
  *p = q;
  return TRUE;
}

static void element_error(GError **error, int code, const Element *elem, const char *fmt, ...)
    G_GNUC_PRINTF(4, 5);

static void
element_error(GError **error, int code, const Element *elem, const char *fmt, ...)
{
  va_list args;
  va_start(args, fmt);
  g_autofree char *detail = g_strdup_vprintf(fmt, args);
  va_end(args);
  g_autofree char *q = quote(elem->text, (gssize)elem->len);
  g_set_error(error, USHER_CONFIG_ERROR, code, "backend list element %u %s: %s", elem->number, q,
              detail);
}

/* Parses one IP of an element (bare, or IPv6 in brackets). */
static gboolean
parse_element_ip(const Element *elem, const char *s, gsize len, UsherIp *ip_out, GError **error)
{
  if (len == 0) {
    element_error(error, USHER_CONFIG_ERROR_INVALID, elem, "an IP address is missing");
    return FALSE;
  }
  if (!usher_ip_parse(s, (gssize)len, ip_out)) {
    g_autofree char *q = quote(s, (gssize)len);
    element_error(error, USHER_CONFIG_ERROR_INVALID, elem, "%s is not an IP address%s", q,
                  not_ip_hint(s, len));
    return FALSE;
  }
  return TRUE;
}

/* seen: UsherIp* -> element number (0 for entries that were in the output array already). */
static gboolean
parse_backend_element(const Element *elem, GPtrArray *parsed, GHashTable *seen, guint existing,
                      GError **error)
{
  const char *s = elem->text;
  const char *end = s + elem->len;
  const char *at = memchr(s, '@', elem->len);
  const char *addr_end = at != NULL ? at : end;
  const char *eq = memchr(s, '=', (gsize)(addr_end - s));
  const char *ip_end = eq != NULL ? eq : addr_end;
  const char *tag = "";
  g_autofree char *tag_owned = NULL;
  guint vhosts = USHER_VHOST_DEFAULT;

  if (at != NULL) {
    gsize tag_len = (gsize)(end - at - 1);
    if (tag_len == 0) {
      element_error(error, USHER_CONFIG_ERROR_INVALID, elem, "the tag after \"@\" is empty");
      return FALSE;
    }
    if (!usher_tag_valid(at + 1, tag_len)) {
      g_autofree char *q = quote(at + 1, (gssize)tag_len);
      element_error(error, USHER_CONFIG_ERROR_INVALID, elem,
                    "%s is not a valid tag (1 to %d letters, digits, '.', '_' or '-')", q,
                    USHER_TAG_MAX_LEN);
      return FALSE;
    }
    tag = tag_owned = g_strndup(at + 1, tag_len);
  }
  if (eq != NULL) {
    guint64 value;
    gsize n = (gsize)(addr_end - eq - 1);
    if (!parse_decimal(eq + 1, n, G_MAXUINT64, &value) || value > USHER_VHOST_MAX_ADMIN) {
      g_autofree char *q = quote(eq + 1, (gssize)n);
      element_error(error, USHER_CONFIG_ERROR_INVALID, elem,
                    "%s is not a vhost count (a whole number from 0 to %d)", q,
                    USHER_VHOST_MAX_ADMIN);
      return FALSE;
    }
    vhosts = (guint)value;
  }

  const char *dash = memchr(s, '-', (gsize)(ip_end - s));
  UsherIp first, last;
  if (!parse_element_ip(elem, s, (gsize)((dash != NULL ? dash : ip_end) - s), &first, error))
    return FALSE;
  guint count = 1;
  if (dash != NULL) {
    if (!parse_element_ip(elem, dash + 1, (gsize)(ip_end - dash - 1), &last, error))
      return FALSE;
    if (first.family != last.family) {
      element_error(error, USHER_CONFIG_ERROR_INVALID, elem, "a range cannot mix IPv4 and IPv6");
      return FALSE;
    }
    /* The varying part: the last byte (IPv4, a /24) or the last two bytes (IPv6, a /112). */
    gsize prefix = first.family == USHER_IP_V4 ? 3 : 14;
    if (memcmp(first.addr, last.addr, prefix) != 0) {
      element_error(error, USHER_CONFIG_ERROR_INVALID, elem,
                    first.family == USHER_IP_V4
                        ? "a range must stay inside one /24 (both ends share the first three "
                          "numbers; at most 256 addresses)"
                        : "a range must stay inside one /112 (both ends share the first 112 "
                          "bits; at most 65536 addresses)");
      return FALSE;
    }
    guint lo =
        first.family == USHER_IP_V4 ? first.addr[3] : ((guint)first.addr[14] << 8 | first.addr[15]);
    guint hi =
        first.family == USHER_IP_V4 ? last.addr[3] : ((guint)last.addr[14] << 8 | last.addr[15]);
    if (lo > hi) {
      element_error(error, USHER_CONFIG_ERROR_INVALID, elem,
                    "the range runs backwards (write the lower address first)");
      return FALSE;
    }
    count = hi - lo + 1;
  }
  if ((guint64)existing + parsed->len + count > USHER_HOSTS_MAX) {
    element_error(error, USHER_CONFIG_ERROR_INVALID, elem, "too many backends (at most %d in all)",
                  USHER_HOSTS_MAX);
    return FALSE;
  }

  UsherIp ip = first;
  for (guint i = 0; i < count; i++) {
    if (i > 0) {
      /* Step the address; the range check above keeps the carry inside the varying bytes. */
      for (int b = ip.family == USHER_IP_V4 ? 3 : 15; b >= 0; b--) {
        if (++ip.addr[b] != 0)
          break;
      }
    }
    gpointer prev_number;
    if (g_hash_table_lookup_extended(seen, &ip, NULL, &prev_number)) {
      char buf[USHER_IP_STRLEN];
      usher_ip_to_string(&ip, buf);
      if (GPOINTER_TO_UINT(prev_number) == 0)
        element_error(error, USHER_CONFIG_ERROR_CONFLICT, elem, "%s is already listed", buf);
      else
        element_error(error, USHER_CONFIG_ERROR_CONFLICT, elem, "%s is already listed (element %u)",
                      buf, GPOINTER_TO_UINT(prev_number));
      return FALSE;
    }
    UsherBackendConfig *backend = usher_backend_config_new(&ip, tag, vhosts);
    g_ptr_array_add(parsed, backend);
    g_hash_table_insert(seen, &backend->ip, GUINT_TO_POINTER(elem->number));
  }
  return TRUE;
}

gboolean
usher_backends_parse(const char *text, GPtrArray *out, GError **error)
{
  g_assert(text != NULL && out != NULL);
  g_autoptr(GPtrArray) parsed = g_ptr_array_new_with_free_func(backend_config_free_void);
  /* Keys point into the UsherBackendConfig structs, which stay put while the table lives. */
  g_autoptr(GHashTable) seen = g_hash_table_new(usher_ip_table_hash, usher_ip_table_equal);
  for (guint i = 0; i < out->len; i++) {
    UsherBackendConfig *backend = g_ptr_array_index(out, i);
    g_hash_table_insert(seen, &backend->ip, GUINT_TO_POINTER(0));
  }

  const char *p = text;
  Element elem = {0};
  while (next_element(&p, &elem)) {
    if (!parse_backend_element(&elem, parsed, seen, out->len, error))
      return FALSE;
  }

  /* Only now touch out, so a failure leaves it as it was. */
  for (guint i = 0; i < parsed->len; i++)
    g_ptr_array_add(out, g_ptr_array_index(parsed, i));
  g_ptr_array_set_free_func(parsed, NULL);
  return TRUE;
}

/* ---------------------------------------------------------------------------------------------
 * The configuration object
 */

static void
tls_sni_free(gpointer data)
{
  UsherTlsSni *e = data;
  g_free(e->name);
  g_free(e->cert);
  g_free(e->key);
  g_free(e);
}

UsherConfig *
usher_config_new(void)
{
  UsherConfig *config = g_new0(UsherConfig, 1);
  config->username_hash = g_strdup(USHER_HASH_FORMAT_DEFAULT);
  config->hash_format = usher_hash_format_new(USHER_HASH_FORMAT_DEFAULT, NULL);
  g_assert(config->hash_format != NULL);
  config->user_expire_secs = USER_EXPIRE_DEFAULT_SECS;
  config->user_kick_delay_secs = USER_KICK_DELAY_DEFAULT_SECS;
  config->max_parallel_moves = PARALLEL_DEFAULT;
  config->max_parallel_kicks = PARALLEL_DEFAULT;
  config->flush_socket = g_strdup("");
  config->ping_idle_timeout_secs = PING_IDLE_DEFAULT_SECS;
  config->ping_max_timeout_secs = PING_MAX_DEFAULT_SECS;
  config->usher_ping_timeout_secs = USHER_PING_TIMEOUT_DEFAULT_SECS;
  config->health_interval_secs = HEALTH_INTERVAL_DEFAULT_SECS;
  config->health_timeout_secs = HEALTH_TIMEOUT_DEFAULT_SECS;
  config->health_fall = 3;
  config->health_rise = 2;
  config->health_down_replace = TRUE;
  config->health_probe = USHER_HEALTH_PROBE_IMAP;
  config->health_probe_user = g_strdup("");
  config->health_probe_password = g_strdup("");
  config->output_buffer_size = OUTPUT_BUFFER_DEFAULT;
  config->master_user_separator = g_strdup("");
  config->directors = g_array_new(FALSE, TRUE, sizeof(UsherDirectorAddr));
  config->backends = g_ptr_array_new_with_free_func(backend_config_free_void);
  config->admin_socket = g_strdup(USHER_ADMIN_SOCKET_DEFAULT);
  config->admin_socket_mode = 0600;
  config->admin_socket_user = g_strdup("");
  config->admin_socket_group = g_strdup("");
  config->admin_max_clients = 32;
  config->admin_idle_timeout_secs = 120;
  config->state_dir = g_strdup(USHER_STATE_DIR_DEFAULT);
  config->users_snapshot_interval_secs = 300;
  config->backend_imap_port = 143;
  config->backend_pop3_port = 110;
  config->backend_smtp_port = 25;
  config->backend_lmtp_port = 24;
  config->backend_sieve_port = 4190;
  config->backend_submission_port = 587;
  config->sieve_listen = g_array_new(FALSE, TRUE, sizeof(UsherDirectorAddr));
  config->submission_listen = g_array_new(FALSE, TRUE, sizeof(UsherDirectorAddr));
  config->submissions_listen = g_array_new(FALSE, TRUE, sizeof(UsherDirectorAddr));
  config->lmtp_listen = g_array_new(FALSE, TRUE, sizeof(UsherDirectorAddr));
  config->lmtp_socket = g_strdup("");
  config->lmtp_user_format = g_strdup("%u");
  config->recipient_delimiter = g_strdup("+");
  config->lmtp_spool_dir = g_strdup("/tmp");
  config->lmtp_spool_max = G_GUINT64_CONSTANT(256) * 1024 * 1024;
  config->http_max_pending_lookups = 10000;
  config->imap_listen = g_array_new(FALSE, TRUE, sizeof(UsherDirectorAddr));
  config->pop3_listen = g_array_new(FALSE, TRUE, sizeof(UsherDirectorAddr));
  config->imaps_listen = g_array_new(FALSE, TRUE, sizeof(UsherDirectorAddr));
  config->pop3s_listen = g_array_new(FALSE, TRUE, sizeof(UsherDirectorAddr));
  config->tls_cert = g_strdup("");
  config->tls_key = g_strdup("");
  config->tls_min_version = 12;
  config->tls_sni = g_ptr_array_new_with_free_func(tls_sni_free);
  config->proxy_shutdown_timeout_secs = 30;
  config->proxy_max_connections = 100000;
  config->proxy_max_connections_per_ip = 10000;
  config->proxy_login_timeout_secs = 60;
  config->proxy_max_bad_commands = 10;
  config->proxy_greeting = g_strdup("Usher ready.");
  config->proxy_auth_mechs = (1u << USHER_SASL_PLAIN) | (1u << USHER_SASL_LOGIN);
  config->trusted_proxies = g_array_new(FALSE, TRUE, sizeof(UsherNet));
  config->proxy_protocol_backends = g_array_new(FALSE, TRUE, sizeof(UsherNet));
  return config;
}

void
usher_config_free(UsherConfig *config)
{
  if (config == NULL)
    return;
  g_free(config->username_hash);
  if (config->hash_format != NULL)
    usher_hash_format_free(config->hash_format);
  g_free(config->flush_socket);
  g_free(config->master_user_separator);
  g_free(config->admin_socket);
  g_free(config->admin_socket_user);
  g_free(config->admin_socket_group);
  g_free(config->state_dir);
  g_free(config->proxy_greeting);
  g_clear_pointer(&config->imap_listen, g_array_unref);
  g_clear_pointer(&config->pop3_listen, g_array_unref);
  g_clear_pointer(&config->imaps_listen, g_array_unref);
  g_clear_pointer(&config->pop3s_listen, g_array_unref);
  g_free(config->tls_cert);
  g_free(config->tls_key);
  g_clear_pointer(&config->lmtp_listen, g_array_unref);
  g_clear_pointer(&config->sieve_listen, g_array_unref);
  g_clear_pointer(&config->submission_listen, g_array_unref);
  g_clear_pointer(&config->submissions_listen, g_array_unref);
  g_free(config->lmtp_socket);
  g_free(config->lmtp_user_format);
  g_free(config->lmtp_spool_dir);
  g_free(config->recipient_delimiter);
  g_free(config->health_probe_user);
  g_free(config->health_probe_password);
  g_clear_pointer(&config->tls_sni, g_ptr_array_unref);
  g_clear_pointer(&config->trusted_proxies, g_array_unref);
  g_clear_pointer(&config->proxy_protocol_backends, g_array_unref);
  g_clear_pointer(&config->directors, g_array_unref);
  g_clear_pointer(&config->backends, g_ptr_array_unref);
  g_clear_pointer(&config->initial_backends, g_ptr_array_unref);
  g_free(config);
}

/* ---------------------------------------------------------------------------------------------
 * Step 1: the line scan
 */

static void line_error(GError **error, int code, const char *source, guint line, const char *fmt,
                       ...) G_GNUC_PRINTF(5, 6);

static void
line_error(GError **error, int code, const char *source, guint line, const char *fmt, ...)
{
  va_list args;
  va_start(args, fmt);
  g_autofree char *detail = g_strdup_vprintf(fmt, args);
  va_end(args);
  g_set_error(error, USHER_CONFIG_ERROR, code, "%s: line %u: %s", source, line, detail);
}

static guint
line_of_offset(const char *data, gsize offset)
{
  guint line = 1;
  for (gsize i = 0; i < offset; i++) {
    if (data[i] == '\n')
      line++;
  }
  return line;
}

/* GKeyFile's key name rule: no '[' or ']' except one trailing "[locale]" made of letters, digits,
 * '-', '_', '.' and '@'. (No '=' and no blank at either end hold by construction.) */
static gboolean
valid_key_name(const char *key)
{
  const char *open = strchr(key, '[');
  if (open == NULL)
    return strchr(key, ']') == NULL;
  if (open == key)
    return FALSE;
  const char *p = open + 1;
  while (*p != '\0' && *p != ']') {
    gunichar c = g_utf8_get_char(p);
    if (!g_unichar_isalnum(c) && c != '-' && c != '_' && c != '.' && c != '@')
      return FALSE;
    p = g_utf8_next_char(p);
  }
  return *p == ']' && p[1] == '\0';
}

/* Mirrors g_key_file_parse_line's classification: after leading blanks, "#..." and empty lines are
 * comments, "[name]" (only blanks after ']') is a group, a line with '=' after a non-empty key is
 * a key; anything else is an error. */
static gboolean
scan_lines(const char *data, gsize len, const char *source, GError **error)
{
  const char *bad;
  if (!g_utf8_validate_len(data, len, &bad)) {
    gsize offset = (gsize)(bad - data);
    line_error(error, USHER_CONFIG_ERROR_SYNTAX, source, line_of_offset(data, offset), "%s",
               *bad == '\0' ? "the text contains a NUL byte" : "the text is not valid UTF-8");
    return FALSE;
  }

  /* group name -> first line; "group\nkey" -> first line */
  g_autoptr(GHashTable) groups = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  g_autoptr(GHashTable) keys = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  g_autofree char *group = NULL;
  guint line_no = 0;
  gsize pos = 0;

  while (pos < len) {
    const char *line = data + pos;
    const char *nl = memchr(line, '\n', len - pos);
    gsize n = nl != NULL ? (gsize)(nl - line) : len - pos;
    pos += n + (nl != NULL ? 1 : 0);
    line_no++;
    if (n > 0 && line[n - 1] == '\r')
      n--;
    gsize i = 0;
    while (i < n && g_ascii_isspace(line[i]))
      i++;
    if (i == n || line[i] == '#')
      continue;
    const char *s = line + i;
    gsize sn = n - i;

    if (s[0] == '[') {
      const char *close = memchr(s, ']', sn);
      gsize after = close != NULL ? (gsize)(close - s) + 1 : sn;
      while (after < sn && (s[after] == ' ' || s[after] == '\t'))
        after++;
      if (close == NULL || after != sn) {
        g_autofree char *q = quote(s, (gssize)sn);
        line_error(error, USHER_CONFIG_ERROR_SYNTAX, source, line_no,
                   "%s is not a valid [group] line", q);
        return FALSE;
      }
      gsize name_len = (gsize)(close - s - 1);
      gboolean name_ok = name_len > 0;
      for (gsize k = 1; k <= name_len && name_ok; k++) {
        if (s[k] == '[' || g_ascii_iscntrl(s[k]))
          name_ok = FALSE;
      }
      if (!name_ok) {
        g_autofree char *q = quote(s, (gssize)sn);
        line_error(error, USHER_CONFIG_ERROR_SYNTAX, source, line_no,
                   "%s does not contain a valid group name", q);
        return FALSE;
      }
      g_free(group);
      group = g_strndup(s + 1, name_len);
      gpointer first_line;
      if (g_hash_table_lookup_extended(groups, group, NULL, &first_line)) {
        g_set_error(error, USHER_CONFIG_ERROR, USHER_CONFIG_ERROR_CONFLICT,
                    "%s: [%s]: the group appears twice (lines %u and %u); write each group once",
                    source, group, GPOINTER_TO_UINT(first_line), line_no);
        return FALSE;
      }
      g_hash_table_insert(groups, g_strdup(group), GUINT_TO_POINTER(line_no));
      continue;
    }

    const char *eq = memchr(s, '=', sn);
    if (eq == NULL || eq == s) {
      g_autofree char *q = quote(s, (gssize)sn);
      line_error(error, USHER_CONFIG_ERROR_SYNTAX, source, line_no,
                 eq == NULL ? "%s is not a [group] line, a \"key = value\" line or a # comment"
                            : "%s has no key before \"=\"",
                 q);
      return FALSE;
    }
    const char *key_end = eq;
    while (key_end > s && g_ascii_isspace(key_end[-1]))
      key_end--;
    g_autofree char *key = g_strndup(s, (gsize)(key_end - s));
    if (!valid_key_name(key)) {
      g_autofree char *q = quote(key, -1);
      line_error(error, USHER_CONFIG_ERROR_SYNTAX, source, line_no, "%s is not a valid key name",
                 q);
      return FALSE;
    }
    if (group == NULL) {
      g_autofree char *q = quote(key, -1);
      line_error(error, USHER_CONFIG_ERROR_SYNTAX, source, line_no,
                 "key %s comes before the first [group] line", q);
      return FALSE;
    }
    char *both = g_strdup_printf("%s\n%s", group, key);
    gpointer first_line;
    if (g_hash_table_lookup_extended(keys, both, NULL, &first_line)) {
      g_set_error(error, USHER_CONFIG_ERROR, USHER_CONFIG_ERROR_CONFLICT,
                  "%s: [%s] %s: the key is set twice (lines %u and %u); keep one", source, group,
                  key, GPOINTER_TO_UINT(first_line), line_no);
      g_free(both);
      return FALSE;
    }
    g_hash_table_insert(keys, both, GUINT_TO_POINTER(line_no));
  }
  return TRUE;
}

/* ---------------------------------------------------------------------------------------------
 * Step 3: groups and keys
 */

typedef struct {
  const char *source;
  GKeyFile *keyfile;
  const char *group;
  const char *key;
} KeyRef;

static void key_error(GError **error, int code, const KeyRef *ref, const char *fmt, ...)
    G_GNUC_PRINTF(4, 5);

static void
key_error(GError **error, int code, const KeyRef *ref, const char *fmt, ...)
{
  va_list args;
  va_start(args, fmt);
  g_autofree char *detail = g_strdup_vprintf(fmt, args);
  va_end(args);
  g_set_error(error, USHER_CONFIG_ERROR, code, "%s: [%s] %s: %s", ref->source, ref->group, ref->key,
              detail);
}

/* GKeyFile's string escapes: \s \n \t \r \\. Anything else after a backslash is refused. */
static gboolean
unescape(const KeyRef *ref, const char *raw, char **value_out, GError **error)
{
  GString *out = g_string_sized_new(strlen(raw));
  for (const char *p = raw; *p != '\0'; p++) {
    if (*p != '\\') {
      g_string_append_c(out, *p);
      continue;
    }
    p++;
    switch (*p) {
    case 's':
      g_string_append_c(out, ' ');
      break;
    case 'n':
      g_string_append_c(out, '\n');
      break;
    case 't':
      g_string_append_c(out, '\t');
      break;
    case 'r':
      g_string_append_c(out, '\r');
      break;
    case '\\':
      g_string_append_c(out, '\\');
      break;
    default: {
      g_string_free(out, TRUE);
      if (*p == '\0') {
        key_error(error, USHER_CONFIG_ERROR_INVALID, ref, "the value ends with a lone backslash");
      } else if (*p > ' ' && *p <= '~') {
        key_error(error, USHER_CONFIG_ERROR_INVALID, ref,
                  "\\%c is not a valid escape (use \\s, \\t, \\n, \\r or \\\\)", *p);
      } else {
        g_autofree char *q = quote(p, g_utf8_next_char(p) - p);
        key_error(error, USHER_CONFIG_ERROR_INVALID, ref,
                  "a backslash before %s is not a valid escape (use \\s, \\t, \\n, \\r or "
                  "\\\\)",
                  q);
      }
      return FALSE;
    }
    }
  }
  *value_out = g_string_free(out, FALSE);
  return TRUE;
}

/* The value with trailing blanks removed and escapes applied; control characters other than tab
 * are refused. */
static gboolean
get_value(const KeyRef *ref, char **value_out, GError **error)
{
  g_autofree char *raw = g_key_file_get_value(ref->keyfile, ref->group, ref->key, NULL);
  g_assert(raw != NULL);
  g_strchomp(raw);
  g_autofree char *value = NULL;
  if (!unescape(ref, raw, &value, error))
    return FALSE;
  for (const char *p = value; *p != '\0'; p++) {
    if ((g_ascii_iscntrl(*p) && *p != '\t')) {
      g_autofree char *q = quote(value, -1);
      key_error(error, USHER_CONFIG_ERROR_INVALID, ref, "%s contains a control character", q);
      return FALSE;
    }
  }
  *value_out = g_steal_pointer(&value);
  return TRUE;
}

static gboolean
get_duration(const KeyRef *ref, guint64 min_secs, guint *secs_out, GError **error)
{
  g_autofree char *value = NULL;
  if (!get_value(ref, &value, error))
    return FALSE;
  guint64 secs;
  g_autofree char *q = quote(value, -1);
  if (!usher_parse_duration_secs(value, &secs)) {
    key_error(error, USHER_CONFIG_ERROR_INVALID, ref,
              "%s is not a duration (for example 30s, 15m, 2h or 1h 30m; a plain number means "
              "seconds)",
              q);
    return FALSE;
  }
  if (secs < min_secs) {
    g_autofree char *limit = format_duration(min_secs);
    key_error(error, USHER_CONFIG_ERROR_INVALID, ref, "%s is below the minimum of %s", q, limit);
    return FALSE;
  }
  if (secs > DURATION_MAX_SECS) {
    g_autofree char *limit = format_duration(DURATION_MAX_SECS);
    key_error(error, USHER_CONFIG_ERROR_INVALID, ref, "%s is above the maximum of %s", q, limit);
    return FALSE;
  }
  *secs_out = (guint)secs;
  return TRUE;
}

static gboolean
get_uint(const KeyRef *ref, guint min, guint max, guint *value_out, GError **error)
{
  g_autofree char *value = NULL;
  if (!get_value(ref, &value, error))
    return FALSE;
  g_autofree char *q = quote(value, -1);
  guint64 number;
  if (!parse_decimal(value, strlen(value), G_MAXUINT64, &number)) {
    key_error(error, USHER_CONFIG_ERROR_INVALID, ref, "%s is not a whole number (%u to %u)", q, min,
              max);
    return FALSE;
  }
  if (number < min || number > max) {
    key_error(error, USHER_CONFIG_ERROR_INVALID, ref, "%s is out of range (%u to %u)", q, min, max);
    return FALSE;
  }
  *value_out = (guint)number;
  return TRUE;
}

static gboolean
get_size(const KeyRef *ref, guint64 min, guint64 max, guint64 *bytes_out, GError **error)
{
  g_autofree char *value = NULL;
  if (!get_value(ref, &value, error))
    return FALSE;
  g_autofree char *q = quote(value, -1);
  guint64 bytes;
  if (!usher_parse_size_bytes(value, &bytes)) {
    key_error(error, USHER_CONFIG_ERROR_INVALID, ref,
              "%s is not a size (bytes, or a number with k, M or G: 65536, 64k, 10M, 1G)", q);
    return FALSE;
  }
  if (bytes < min) {
    g_autofree char *limit = format_size(min);
    key_error(error, USHER_CONFIG_ERROR_INVALID, ref, "%s is below the minimum of %s", q, limit);
    return FALSE;
  }
  if (bytes > max) {
    g_autofree char *limit = format_size(max);
    key_error(error, USHER_CONFIG_ERROR_INVALID, ref, "%s is above the maximum of %s", q, limit);
    return FALSE;
  }
  *bytes_out = bytes;
  return TRUE;
}

static gboolean
get_boolean(const KeyRef *ref, gboolean *value_out, GError **error)
{
  static const char *const yes[] = {"true", "yes", "1"};
  static const char *const no[] = {"false", "no", "0"};
  g_autofree char *value = NULL;
  if (!get_value(ref, &value, error))
    return FALSE;
  for (gsize i = 0; i < G_N_ELEMENTS(yes); i++) {
    if (g_ascii_strcasecmp(value, yes[i]) == 0) {
      *value_out = TRUE;
      return TRUE;
    }
    if (g_ascii_strcasecmp(value, no[i]) == 0) {
      *value_out = FALSE;
      return TRUE;
    }
  }
  g_autofree char *q = quote(value, -1);
  key_error(error, USHER_CONFIG_ERROR_INVALID, ref,
            "%s is not a boolean (true/false, yes/no or 1/0)", q);
  return FALSE;
}

static gboolean
check_flush_socket(const KeyRef *ref, const char *value, GError **error)
{
  g_autofree char *q = quote(value, -1);
  if (*value == '\0')
    return TRUE;
  if (g_str_has_prefix(value, "unix:") || g_str_has_prefix(value, "exec:")) {
    if (value[5] == '\0') {
      key_error(error, USHER_CONFIG_ERROR_INVALID, ref, "%s needs a path after \"%.5s\"", q, value);
      return FALSE;
    }
    return TRUE;
  }
  if (g_str_has_prefix(value, "tcp:")) {
    const char *hostport = value + 4;
    const char *colon = strrchr(hostport, ':');
    guint64 port;
    if (colon == NULL || colon == hostport ||
        !parse_decimal(colon + 1, strlen(colon + 1), G_MAXUINT64, &port) || port == 0 ||
        port > 65535) {
      key_error(error, USHER_CONFIG_ERROR_INVALID, ref,
                "%s must be tcp:HOST:PORT with a port from 1 to 65535", q);
      return FALSE;
    }
    return TRUE;
  }
  key_error(error, USHER_CONFIG_ERROR_INVALID, ref,
            "%s must be empty or start with unix:, tcp: or exec:", q);
  return FALSE;
}

static const char *const director_keys[] = {
    "username_hash",
    "user_expire",
    "user_kick_delay",
    "max_parallel_moves",
    "max_parallel_kicks",
    "flush_socket",
    "ping_idle_timeout",
    "ping_max_timeout",
    "usher_ping_timeout",
    "output_buffer_size",
    "master_user_separator",
    NULL,
};
static const char *const ring_keys[] = {"directors", NULL};
static const char *const daemon_keys[] = {
    "ring_address",      "admin_socket",  "admin_socket_mode", "admin_socket_user",
    "admin_socket_group", "admin_listen", "admin_max_clients", "admin_idle_timeout", "state_dir",
    "users_snapshot_interval", NULL,
};
static const char *const backends_keys[] = {"hosts", "imap_port", "pop3_port", "smtp_port",
                                             "lmtp_port", "sieve_port", "submission_port",
                                             NULL};
static const char *const http_keys[] = {"listen", "max_pending_lookups", NULL};
static const char *const proxy_keys[] = {
    "imap_listen",         "pop3_listen",   "workers",          "max_connections",
    "max_connections_per_ip", "login_timeout", "max_bad_commands", "greeting",
    "trusted_proxies", "proxy_protocol_backends", "imaps_listen", "pop3s_listen", "tls_cert",
    "tls_key", "tls_min_version", "tls_sni", "shutdown_timeout", "lmtp_listen", "lmtp_socket",
    "lmtp_user_format", "recipient_delimiter", "sieve_listen", "submission_listen",
    "submissions_listen", "auth_mechanisms", "lmtp_spool_dir", "lmtp_spool_max", NULL,
};
static const char *const backend_keys[] = {"vhosts", "tag", "hostname", "down", NULL};
static const char *const health_keys[] = {"enabled", "interval", "timeout", "fall", "rise",
                                          "quorum", "down_action", "probe", "probe_user",
                                          "probe_password", NULL};

/* Refuses locale suffixes and unknown keys, with a hint for Dovecot's director_ prefix. */
static gboolean
check_key_known(const KeyRef *ref, const char *const *known, GError **error)
{
  if (strchr(ref->key, '[') != NULL) {
    key_error(error, USHER_CONFIG_ERROR_UNKNOWN_KEY, ref,
              "keys with a locale suffix are not supported");
    return FALSE;
  }
  if (g_strv_contains(known, ref->key))
    return TRUE;
  g_autofree char *list = g_strjoinv(", ", (char **)known);
  const char *hint = "";
  if (g_str_has_prefix(ref->key, "director_") && g_strv_contains(known, ref->key + 9))
    hint = "; Dovecot's director_ prefix is not used here";
  else if (g_str_has_prefix(ref->key, "auth_") && g_strv_contains(known, ref->key + 5))
    hint = "; Dovecot's auth_ prefix is not used here";
  key_error(error, USHER_CONFIG_ERROR_UNKNOWN_KEY, ref, "unknown key (known keys in [%s]: %s)%s",
            ref->group, list, hint);
  return FALSE;
}

typedef struct {
  gboolean ping_idle_set;
  gboolean ping_max_set;
} DirectorSeen;

static gboolean
parse_director_key(UsherConfig *config, const KeyRef *ref, DirectorSeen *seen, GError **error)
{
  const char *key = ref->key;

  if (strcmp(key, "user_expire") == 0)
    return get_duration(ref, USER_EXPIRE_MIN_SECS, &config->user_expire_secs, error);
  if (strcmp(key, "user_kick_delay") == 0)
    return get_duration(ref, 0, &config->user_kick_delay_secs, error);
  if (strcmp(key, "max_parallel_moves") == 0)
    return get_uint(ref, 1, PARALLEL_MAX, &config->max_parallel_moves, error);
  if (strcmp(key, "max_parallel_kicks") == 0)
    return get_uint(ref, 1, PARALLEL_MAX, &config->max_parallel_kicks, error);
  if (strcmp(key, "ping_idle_timeout") == 0) {
    seen->ping_idle_set = TRUE;
    return get_duration(ref, PING_IDLE_MIN_SECS, &config->ping_idle_timeout_secs, error);
  }
  if (strcmp(key, "ping_max_timeout") == 0) {
    seen->ping_max_set = TRUE;
    return get_duration(ref, PING_IDLE_MIN_SECS, &config->ping_max_timeout_secs, error);
  }
  if (strcmp(key, "usher_ping_timeout") == 0) {
    if (!get_duration(ref, PING_IDLE_MIN_SECS, &config->usher_ping_timeout_secs, error))
      return FALSE;
    if (config->usher_ping_timeout_secs > USHER_PING_TIMEOUT_MAX_SECS) {
      key_error(error, USHER_CONFIG_ERROR_INVALID, ref, "must be at most %us",
                USHER_PING_TIMEOUT_MAX_SECS);
      return FALSE;
    }
    return TRUE;
  }
  if (strcmp(key, "output_buffer_size") == 0)
    return get_size(ref, OUTPUT_BUFFER_MIN, OUTPUT_BUFFER_MAX, &config->output_buffer_size, error);

  g_autofree char *value = NULL;
  if (!get_value(ref, &value, error))
    return FALSE;

  if (strcmp(key, "username_hash") == 0) {
    if (*value == '\0') {
      key_error(error, USHER_CONFIG_ERROR_INVALID, ref, "must not be empty (the default is \"%s\")",
                USHER_HASH_FORMAT_DEFAULT);
      return FALSE;
    }
    g_autoptr(GError) local = NULL;
    UsherHashFormat *format = usher_hash_format_new(value, &local);
    if (format == NULL) {
      key_error(error, USHER_CONFIG_ERROR_INVALID, ref, "%s", local->message);
      return FALSE;
    }
    usher_hash_format_free(config->hash_format);
    config->hash_format = format;
    g_free(config->username_hash);
    config->username_hash = g_steal_pointer(&value);
    return TRUE;
  }
  if (strcmp(key, "flush_socket") == 0) {
    if (!check_flush_socket(ref, value, error))
      return FALSE;
    g_free(config->flush_socket);
    config->flush_socket = g_steal_pointer(&value);
    return TRUE;
  }
  if (strcmp(key, "master_user_separator") == 0) {
    if (value[0] != '\0' && (value[1] != '\0' || value[0] <= ' ' || value[0] > '~')) {
      g_autofree char *q = quote(value, -1);
      key_error(error, USHER_CONFIG_ERROR_INVALID, ref,
                "%s must be empty or one printable ASCII character other than space (such "
                "as *)",
                q);
      return FALSE;
    }
    g_free(config->master_user_separator);
    config->master_user_separator = g_steal_pointer(&value);
    return TRUE;
  }
  g_assert_not_reached();
}

static int
director_cmp(gconstpointer a, gconstpointer b)
{
  const UsherDirectorAddr *x = a;
  const UsherDirectorAddr *y = b;
  int c = usher_ip_cmp(&x->ip, &y->ip);
  if (c != 0)
    return c;
  return (x->port > y->port) - (x->port < y->port);
}

static char *
format_director(const UsherDirectorAddr *addr)
{
  char buf[USHER_IP_STRLEN];
  usher_ip_to_string(&addr->ip, buf);
  if (addr->ip.family == USHER_IP_V6)
    return g_strdup_printf("[%s]:%u", buf, addr->port);
  return g_strdup_printf("%s:%u", buf, addr->port);
}

static void director_error(GError **error, int code, const KeyRef *ref, const Element *elem,
                           const char *fmt, ...) G_GNUC_PRINTF(5, 6);

static void
director_error(GError **error, int code, const KeyRef *ref, const Element *elem, const char *fmt,
               ...)
{
  va_list args;
  va_start(args, fmt);
  g_autofree char *detail = g_strdup_vprintf(fmt, args);
  va_end(args);
  g_autofree char *q = quote(elem->text, (gssize)elem->len);
  key_error(error, code, ref, "element %u %s: %s", elem->number, q, detail);
}

/* IP, IP:PORT, [IPv6] or [IPv6]:PORT; a bare IP takes default_port. */
static gboolean
parse_director_element(const KeyRef *ref, const Element *elem, guint16 default_port,
                       UsherDirectorAddr *addr_out, GError **error)
{
  const char *s = elem->text;
  gsize len = elem->len;
  gsize ip_len = len;
  const char *port_text = NULL;
  gsize port_len = 0;

  if (s[0] == '[') {
    const char *close = memchr(s, ']', len);
    if (close == NULL) {
      director_error(error, USHER_CONFIG_ERROR_INVALID, ref, elem, "\"[\" without \"]\"");
      return FALSE;
    }
    ip_len = (gsize)(close - s) + 1;
    if (ip_len < len) {
      if (s[ip_len] != ':') {
        director_error(error, USHER_CONFIG_ERROR_INVALID, ref, elem,
                       "only \":PORT\" may follow \"]\"");
        return FALSE;
      }
      port_text = s + ip_len + 1;
      port_len = len - ip_len - 1;
    }
  } else {
    const char *colon = memchr(s, ':', len);
    if (colon != NULL && memchr(colon + 1, ':', len - (gsize)(colon - s) - 1) == NULL) {
      /* exactly one colon: IPv4:PORT (two or more would be a bare IPv6 address) */
      ip_len = (gsize)(colon - s);
      port_text = colon + 1;
      port_len = len - ip_len - 1;
    }
  }
  if (!usher_ip_parse(s, (gssize)ip_len, &addr_out->ip)) {
    g_autofree char *q = quote(s, (gssize)ip_len);
    director_error(error, USHER_CONFIG_ERROR_INVALID, ref, elem, "%s is not an IP address%s", q,
                   looks_like_hostname(s, ip_len) ? " (host names are not resolved)" : "");
    return FALSE;
  }
  addr_out->port = default_port;
  if (port_text != NULL) {
    guint64 port;
    if (!parse_decimal(port_text, port_len, G_MAXUINT64, &port) || port == 0 || port > 65535) {
      g_autofree char *q = quote(port_text, (gssize)port_len);
      director_error(error, USHER_CONFIG_ERROR_INVALID, ref, elem, "%s is not a port (1 to 65535)",
                     q);
      return FALSE;
    }
    addr_out->port = (guint16)port;
  }
  return TRUE;
}

static gboolean
parse_directors(UsherConfig *config, const KeyRef *ref, GError **error)
{
  g_autofree char *value = NULL;
  if (!get_value(ref, &value, error))
    return FALSE;
  g_autoptr(GArray) list = g_array_new(FALSE, TRUE, sizeof(UsherDirectorAddr));
  g_autoptr(GArray) numbers = g_array_new(FALSE, TRUE, sizeof(guint));
  const char *p = value;
  Element elem = {0};
  while (next_element(&p, &elem)) {
    UsherDirectorAddr addr;
    memset(&addr, 0, sizeof(addr));
    if (!parse_director_element(ref, &elem, USHER_DIRECTOR_PORT_DEFAULT, &addr, error))
      return FALSE;
    for (guint i = 0; i < list->len; i++) {
      if (director_cmp(&g_array_index(list, UsherDirectorAddr, i), &addr) == 0) {
        g_autofree char *text = format_director(&addr);
        director_error(error, USHER_CONFIG_ERROR_CONFLICT, ref, &elem,
                       "%s is already listed (element %u)", text, g_array_index(numbers, guint, i));
        return FALSE;
      }
    }
    if (list->len >= USHER_CONFIG_MAX_DIRECTORS) {
      director_error(error, USHER_CONFIG_ERROR_INVALID, ref, &elem,
                     "too many directors (at most %d)", USHER_CONFIG_MAX_DIRECTORS);
      return FALSE;
    }
    g_array_append_val(list, addr);
    g_array_append_val(numbers, elem.number);
  }
  g_array_sort(list, director_cmp);
  g_array_unref(config->directors);
  config->directors = g_steal_pointer(&list);
  return TRUE;
}

/* An address for [daemon]: IP, IP:PORT, [IPv6]:PORT (the port of a bare IP is default_port). */
static gboolean
get_address(const KeyRef *ref, guint16 default_port, UsherDirectorAddr *addr_out, GError **error)
{
  g_autofree char *value = NULL;
  if (!get_value(ref, &value, error))
    return FALSE;
  Element elem = {1, value, strlen(value)};
  if (elem.len == 0) {
    key_error(error, USHER_CONFIG_ERROR_INVALID, ref, "needs an address (IP or IP:PORT)");
    return FALSE;
  }
  memset(addr_out, 0, sizeof(*addr_out));
  return parse_director_element(ref, &elem, default_port, addr_out, error);
}

gboolean
usher_config_parse_address(const char *text, guint16 default_port, UsherDirectorAddr *addr_out,
                           GError **error)
{
  Element elem = {1, text, strlen(text)};
  KeyRef ref = {"command line", NULL, "option", "address"};
  memset(addr_out, 0, sizeof(*addr_out));
  if (elem.len == 0) {
    g_set_error(error, USHER_CONFIG_ERROR, USHER_CONFIG_ERROR_INVALID,
                "an empty address (write IP or IP:PORT)");
    return FALSE;
  }
  g_autoptr(GError) local = NULL;
  if (!parse_director_element(&ref, &elem, default_port, addr_out, &local)) {
    /* Drop the "file: [group] key: element 1" prefix meant for configuration files. */
    const char *msg = strstr(local->message, ": element 1 ");
    g_set_error(error, USHER_CONFIG_ERROR, USHER_CONFIG_ERROR_INVALID, "%s",
                msg != NULL ? msg + strlen(": element 1 ") : local->message);
    return FALSE;
  }
  return TRUE;
}

static gboolean
parse_daemon_key(UsherConfig *config, const KeyRef *ref, GError **error)
{
  const char *key = ref->key;
  if (strcmp(key, "ring_address") == 0) {
    config->has_ring_address = TRUE;
    return get_address(ref, USHER_DIRECTOR_PORT_DEFAULT, &config->ring_address, error);
  }
  if (strcmp(key, "admin_listen") == 0) {
    g_autofree char *value = NULL;
    if (!get_value(ref, &value, error))
      return FALSE;
    if (*value == '\0') {
      config->has_admin_listen = FALSE;
      return TRUE;
    }
    config->has_admin_listen = TRUE;
    if (!get_address(ref, 0, &config->admin_listen, error))
      return FALSE;
    if (config->admin_listen.port == 0) {
      key_error(error, USHER_CONFIG_ERROR_INVALID, ref,
                "needs a port: IP:PORT (there is no default admin port)");
      return FALSE;
    }
    return TRUE;
  }
  if (strcmp(key, "admin_max_clients") == 0)
    return get_uint(ref, 1, 10000, &config->admin_max_clients, error);
  if (strcmp(key, "admin_idle_timeout") == 0)
    return get_duration(ref, 1, &config->admin_idle_timeout_secs, error);
  if (strcmp(key, "users_snapshot_interval") == 0)
    return get_duration(ref, 0, &config->users_snapshot_interval_secs, error);

  g_autofree char *value = NULL;
  if (!get_value(ref, &value, error))
    return FALSE;
  g_autofree char *q = quote(value, -1);
  if (strcmp(key, "admin_socket_mode") == 0) {
    guint64 mode = 0;
    gboolean ok = *value != '\0' && strlen(value) <= 4;
    for (const char *c = value; ok && *c != '\0'; c++) {
      ok = *c >= '0' && *c <= '7';
      mode = mode * 8 + (guint64)(*c - '0');
    }
    if (!ok || mode > 0777) {
      key_error(error, USHER_CONFIG_ERROR_INVALID, ref,
                "%s is not an octal file mode from 0 to 0777 (such as 0600 or 0660)", q);
      return FALSE;
    }
    config->admin_socket_mode = (guint)mode;
    return TRUE;
  }
  if (strcmp(key, "state_dir") == 0) {
    if (value[0] != '\0' && value[0] != '/') {
      key_error(error, USHER_CONFIG_ERROR_INVALID, ref, "%s must be empty or an absolute path", q);
      return FALSE;
    }
    g_free(config->state_dir);
    config->state_dir = g_steal_pointer(&value);
    return TRUE;
  }
  if (strcmp(key, "admin_socket") == 0) {
    if (value[0] != '/') {
      key_error(error, USHER_CONFIG_ERROR_INVALID, ref, "%s must be an absolute path", q);
      return FALSE;
    }
    if (strlen(value) >= 108) {
      key_error(error, USHER_CONFIG_ERROR_INVALID, ref,
                "%s is too long for a UNIX socket path (at most 107 bytes)", q);
      return FALSE;
    }
    g_free(config->admin_socket);
    config->admin_socket = g_steal_pointer(&value);
    return TRUE;
  }
  if (strcmp(key, "admin_socket_user") == 0 || strcmp(key, "admin_socket_group") == 0) {
    if (*value != '\0' && !usher_hostname_valid(value)) {
      key_error(error, USHER_CONFIG_ERROR_INVALID, ref,
                "%s is not a user or group name (letters, digits, . _ -)", q);
      return FALSE;
    }
    char **slot = key[13] == 'u' ? &config->admin_socket_user : &config->admin_socket_group;
    g_free(*slot);
    *slot = g_steal_pointer(&value);
    return TRUE;
  }
  g_assert_not_reached();
}

static gboolean
parse_http_key(UsherConfig *config, const KeyRef *ref, GError **error)
{
  const char *key = ref->key;
  if (strcmp(key, "listen") == 0) {
    g_autofree char *value = NULL;
    if (!get_value(ref, &value, error))
      return FALSE;
    config->has_http_listen = *value != '\0';
    if (!config->has_http_listen)
      return TRUE;
    if (!get_address(ref, 0, &config->http_listen, error))
      return FALSE;
    if (config->http_listen.port == 0) {
      key_error(error, USHER_CONFIG_ERROR_INVALID, ref, "needs a port: IP:PORT");
      return FALSE;
    }
    return TRUE;
  }
  g_assert(strcmp(key, "max_pending_lookups") == 0);
  return get_uint(ref, 1, 1000000, &config->http_max_pending_lookups, error);
}

static gboolean
parse_health_key(UsherConfig *config, const KeyRef *ref, GError **error)
{
  const char *key = ref->key;
  if (strcmp(key, "enabled") == 0)
    return get_boolean(ref, &config->health_enabled, error);
  if (strcmp(key, "interval") == 0 || strcmp(key, "timeout") == 0) {
    guint *out = key[0] == 'i' ? &config->health_interval_secs : &config->health_timeout_secs;
    if (!get_duration(ref, 1, out, error))
      return FALSE;
    if (*out > HEALTH_INTERVAL_MAX_SECS) {
      key_error(error, USHER_CONFIG_ERROR_INVALID, ref, "must be at most %us",
                HEALTH_INTERVAL_MAX_SECS);
      return FALSE;
    }
    return TRUE;
  }
  if (strcmp(key, "fall") == 0)
    return get_uint(ref, 1, HEALTH_COUNT_MAX, &config->health_fall, error);
  if (strcmp(key, "rise") == 0)
    return get_uint(ref, 1, HEALTH_COUNT_MAX, &config->health_rise, error);

  g_autofree char *value = NULL;
  if (!get_value(ref, &value, error))
    return FALSE;
  g_autofree char *q = quote(value, -1);
  if (strcmp(key, "quorum") == 0) {
    guint64 n;
    if (g_ascii_strcasecmp(value, "majority") == 0) {
      config->health_quorum = 0;
      return TRUE;
    }
    if (!parse_decimal(value, strlen(value), G_MAXUINT64, &n) || n == 0 ||
        n > USHER_CONFIG_MAX_DIRECTORS) {
      key_error(error, USHER_CONFIG_ERROR_INVALID, ref,
                "%s must be \"majority\" or a number of directors from 1 to %d", q,
                USHER_CONFIG_MAX_DIRECTORS);
      return FALSE;
    }
    config->health_quorum = (guint)n;
    return TRUE;
  }
  if (strcmp(key, "down_action") == 0) {
    if (strcmp(value, "replace") != 0 && strcmp(value, "keep") != 0) {
      key_error(error, USHER_CONFIG_ERROR_INVALID, ref,
                "%s must be replace (a down backend's users are placed again at once) or keep "
                "(they stay until they expire, as in Dovecot)",
                q);
      return FALSE;
    }
    config->health_down_replace = value[0] == 'r';
    return TRUE;
  }
  if (strcmp(key, "probe") == 0) {
    static const char *const names[] = {"tcp", "imap", "pop3", "lmtp"};
    for (guint i = 0; i < G_N_ELEMENTS(names); i++) {
      if (strcmp(value, names[i]) == 0) {
        config->health_probe = (UsherHealthProbe)i;
        return TRUE;
      }
    }
    key_error(error, USHER_CONFIG_ERROR_INVALID, ref, "%s must be tcp, imap, pop3 or lmtp", q);
    return FALSE;
  }
  char **out = strcmp(key, "probe_user") == 0 ? &config->health_probe_user
                                              : &config->health_probe_password;
  g_assert(strcmp(key, "probe_user") == 0 || strcmp(key, "probe_password") == 0);
  if (strpbrk(value, "\r\n\"\\") != NULL || strlen(value) > 255) {
    key_error(error, USHER_CONFIG_ERROR_INVALID, ref,
              "must be at most 255 bytes without quotes, backslashes or line breaks");
    return FALSE;
  }
  g_free(*out);
  *out = g_steal_pointer(&value);
  return TRUE;
}

static gboolean
parse_backend_port(UsherConfig *config, const KeyRef *ref, GError **error)
{
  guint port;
  if (!get_uint(ref, 1, 65535, &port, error))
    return FALSE;
  if (strcmp(ref->key, "imap_port") == 0)
    config->backend_imap_port = (guint16)port;
  else if (strcmp(ref->key, "pop3_port") == 0)
    config->backend_pop3_port = (guint16)port;
  else if (strcmp(ref->key, "lmtp_port") == 0)
    config->backend_lmtp_port = (guint16)port;
  else if (strcmp(ref->key, "sieve_port") == 0)
    config->backend_sieve_port = (guint16)port;
  else if (strcmp(ref->key, "submission_port") == 0)
    config->backend_submission_port = (guint16)port;
  else
    config->backend_smtp_port = (guint16)port;
  return TRUE;
}

/* A list of listener addresses (IP:PORT, separated by spaces or commas). */
static gboolean
get_listen_list(const KeyRef *ref, GArray *out, GError **error)
{
  g_autofree char *value = NULL;
  if (!get_value(ref, &value, error))
    return FALSE;
  g_array_set_size(out, 0);
  const char *p = value;
  Element elem = {0};
  while (next_element(&p, &elem)) {
    UsherDirectorAddr addr;
    memset(&addr, 0, sizeof(addr));
    if (!parse_director_element(ref, &elem, 0, &addr, error))
      return FALSE;
    if (addr.port == 0) {
      key_error(error, USHER_CONFIG_ERROR_INVALID, ref, "element %u needs a port: IP:PORT",
                elem.number);
      return FALSE;
    }
    g_array_append_val(out, addr);
  }
  return TRUE;
}

/* The SASL mechanisms offered to clients ("plain login oauthbearer", any case). */
static gboolean
get_auth_mechanisms(const KeyRef *ref, guint *out, GError **error)
{
  g_autofree char *value = NULL;
  if (!get_value(ref, &value, error))
    return FALSE;
  guint mechs = 0;
  const char *p = value;
  Element elem = {0};
  while (next_element(&p, &elem)) {
    g_autofree char *name = g_strndup(elem.text, elem.len);
    UsherSaslMech mech = usher_sasl_mech_from_name(name);
    if (mech == 0) {
      g_autofree char *q = quote(elem.text, (gssize)elem.len);
      key_error(error, USHER_CONFIG_ERROR_INVALID, ref,
                "element %u, %s, is not a mechanism usherd passes through (plain, login, "
                "oauthbearer, xoauth2)",
                elem.number, q);
      return FALSE;
    }
    mechs |= 1u << mech;
  }
  if (mechs == 0) {
    key_error(error, USHER_CONFIG_ERROR_INVALID, ref,
              "names no mechanism: list at least one of plain, login, oauthbearer, xoauth2");
    return FALSE;
  }
  *out = mechs;
  return TRUE;
}

/* A list of networks ("10.0.0.0/8 192.0.2.7, 2001:db8::/32"). */
static gboolean
get_net_list(const KeyRef *ref, GArray *out, GError **error)
{
  g_autofree char *value = NULL;
  if (!get_value(ref, &value, error))
    return FALSE;
  g_array_set_size(out, 0);
  const char *p = value;
  Element elem = {0};
  while (next_element(&p, &elem)) {
    UsherNet net;
    if (!usher_net_parse(elem.text, (gssize)elem.len, &net)) {
      g_autofree char *q = quote(elem.text, (gssize)elem.len);
      key_error(error, USHER_CONFIG_ERROR_INVALID, ref,
                "element %u, %s, is not an address or a network (IP/BITS, no host bits set)",
                elem.number, q);
      return FALSE;
    }
    if (out->len >= USHER_CONFIG_MAX_NETS) {
      key_error(error, USHER_CONFIG_ERROR_INVALID, ref, "more than %d networks",
                USHER_CONFIG_MAX_NETS);
      return FALSE;
    }
    g_array_append_val(out, net);
  }
  return TRUE;
}

/* A host name as a client sends it in SNI (letters, digits, '-', dots between labels), or
 * "*." and such a name. */
static gboolean
sni_name_valid(const char *name, gsize len)
{
  if (len > 2 && name[0] == '*' && name[1] == '.') {
    name += 2;
    len -= 2;
  }
  if (len == 0 || len > 253 || name[0] == '.' || name[len - 1] == '.')
    return FALSE;
  gsize label = 0;
  for (gsize i = 0; i < len; i++) {
    char c = name[i];
    if (c == '.') {
      if (label == 0)
        return FALSE;
      label = 0;
    } else if (g_ascii_isalnum(c) || c == '-' || c == '_') {
      if (++label > 63)
        return FALSE;
    } else
      return FALSE;
  }
  return TRUE;
}

/* tls_sni = NAME:CERT[:KEY] ... (host names hold no ':'; paths are absolute). */
static gboolean
get_sni_list(const KeyRef *ref, GPtrArray *out, GError **error)
{
  g_autofree char *value = NULL;
  if (!get_value(ref, &value, error))
    return FALSE;
  g_ptr_array_set_size(out, 0);
  const char *p = value;
  Element elem = {0};
  while (next_element(&p, &elem)) {
    g_autofree char *text = g_strndup(elem.text, elem.len);
    g_auto(GStrv) parts = g_strsplit(text, ":", 3);
    guint n = g_strv_length(parts);
    const char *why = NULL;
    if (n < 2)
      why = "is not NAME:CERT or NAME:CERT:KEY";
    else if (!sni_name_valid(parts[0], strlen(parts[0])))
      why = "does not start with a host name (or *.domain)";
    else if (parts[1][0] != '/' || (n == 3 && parts[2][0] != '/'))
      why = "names a file by a path that is not absolute";
    if (why != NULL) {
      g_autofree char *q = quote(elem.text, (gssize)elem.len);
      key_error(error, USHER_CONFIG_ERROR_INVALID, ref, "element %u, %s, %s", elem.number, q,
                why);
      return FALSE;
    }
    g_autofree char *name = g_ascii_strdown(parts[0], -1);
    for (guint i = 0; i < out->len; i++) {
      const UsherTlsSni *other = g_ptr_array_index(out, i);
      if (strcmp(other->name, name) == 0) {
        key_error(error, USHER_CONFIG_ERROR_INVALID, ref, "element %u names %s a second time",
                  elem.number, name);
        return FALSE;
      }
    }
    if (out->len >= USHER_CONFIG_MAX_SNI) {
      key_error(error, USHER_CONFIG_ERROR_INVALID, ref, "more than %d names",
                USHER_CONFIG_MAX_SNI);
      return FALSE;
    }
    UsherTlsSni *e = g_new0(UsherTlsSni, 1);
    e->name = g_steal_pointer(&name);
    e->cert = g_strdup(parts[1]);
    e->key = g_strdup(n == 3 ? parts[2] : parts[1]);
    g_ptr_array_add(out, e);
  }
  return TRUE;
}

static gboolean
parse_proxy_key(UsherConfig *config, const KeyRef *ref, GError **error)
{
  const char *key = ref->key;
  if (strcmp(key, "trusted_proxies") == 0)
    return get_net_list(ref, config->trusted_proxies, error);
  if (strcmp(key, "tls_sni") == 0)
    return get_sni_list(ref, config->tls_sni, error);
  if (strcmp(key, "lmtp_listen") == 0)
    return get_listen_list(ref, config->lmtp_listen, error);
  if (strcmp(key, "sieve_listen") == 0)
    return get_listen_list(ref, config->sieve_listen, error);
  if (strcmp(key, "submission_listen") == 0)
    return get_listen_list(ref, config->submission_listen, error);
  if (strcmp(key, "submissions_listen") == 0)
    return get_listen_list(ref, config->submissions_listen, error);
  if (strcmp(key, "lmtp_spool_max") == 0)
    return get_size(ref, LMTP_SPOOL_MIN, LMTP_SPOOL_MAX, &config->lmtp_spool_max, error);
  if (strcmp(key, "lmtp_spool_dir") == 0) {
    g_autofree char *value = NULL;
    if (!get_value(ref, &value, error))
      return FALSE;
    if (value[0] != '\0' && value[0] != '/') {
      g_autofree char *q = quote(value, -1);
      key_error(error, USHER_CONFIG_ERROR_INVALID, ref,
                "%s is not an absolute path (or empty: no spooling)", q);
      return FALSE;
    }
    g_free(config->lmtp_spool_dir);
    config->lmtp_spool_dir = g_steal_pointer(&value);
    return TRUE;
  }
  if (strcmp(key, "lmtp_socket") == 0 || strcmp(key, "lmtp_user_format") == 0 ||
      strcmp(key, "recipient_delimiter") == 0) {
    g_autofree char *value = NULL;
    if (!get_value(ref, &value, error))
      return FALSE;
    if (key[5] == 's') { /* lmtp_socket */
      if (value[0] != '\0' && (value[0] != '/' || strlen(value) > 100)) {
        g_autofree char *q = quote(value, -1);
        key_error(error, USHER_CONFIG_ERROR_INVALID, ref,
                  "%s is not an absolute path of at most 100 bytes", q);
        return FALSE;
      }
      g_free(config->lmtp_socket);
      config->lmtp_socket = g_steal_pointer(&value);
    } else if (key[0] == 'l') { /* lmtp_user_format */
      g_autoptr(GError) why = NULL;
      g_autoptr(UsherHashFormat) f = usher_hash_format_new(value, &why);
      if (f == NULL) {
        key_error(error, USHER_CONFIG_ERROR_INVALID, ref, "%s", why->message);
        return FALSE;
      }
      g_free(config->lmtp_user_format);
      config->lmtp_user_format = g_steal_pointer(&value);
    } else { /* recipient_delimiter */
      for (const char *c = value; *c != '\0'; c++)
        if (!g_ascii_isgraph(*c) || *c == '@' || *c == '"') {
          g_autofree char *q = quote(value, -1);
          key_error(error, USHER_CONFIG_ERROR_INVALID, ref,
                    "%s: the delimiters are printable characters other than '@' and '\"'", q);
          return FALSE;
        }
      g_free(config->recipient_delimiter);
      config->recipient_delimiter = g_steal_pointer(&value);
    }
    return TRUE;
  }
  if (strcmp(key, "proxy_protocol_backends") == 0)
    return get_net_list(ref, config->proxy_protocol_backends, error);
  if (strcmp(key, "imap_listen") == 0)
    return get_listen_list(ref, config->imap_listen, error);
  if (strcmp(key, "pop3_listen") == 0)
    return get_listen_list(ref, config->pop3_listen, error);
  if (strcmp(key, "imaps_listen") == 0)
    return get_listen_list(ref, config->imaps_listen, error);
  if (strcmp(key, "pop3s_listen") == 0)
    return get_listen_list(ref, config->pop3s_listen, error);
  if (strcmp(key, "workers") == 0)
    return get_uint(ref, 0, 256, &config->proxy_workers, error);
  if (strcmp(key, "max_connections") == 0)
    return get_uint(ref, 1, 10000000, &config->proxy_max_connections, error);
  if (strcmp(key, "max_connections_per_ip") == 0)
    return get_uint(ref, 1, 10000000, &config->proxy_max_connections_per_ip, error);
  if (strcmp(key, "login_timeout") == 0)
    return get_duration(ref, 1, &config->proxy_login_timeout_secs, error);
  if (strcmp(key, "shutdown_timeout") == 0)
    return get_duration(ref, 0, &config->proxy_shutdown_timeout_secs, error);
  if (strcmp(key, "max_bad_commands") == 0)
    return get_uint(ref, 1, 1000, &config->proxy_max_bad_commands, error);
  if (strcmp(key, "auth_mechanisms") == 0)
    return get_auth_mechanisms(ref, &config->proxy_auth_mechs, error);
  g_autofree char *value = NULL;
  if (!get_value(ref, &value, error))
    return FALSE;
  if (strcmp(key, "tls_min_version") == 0) {
    if (strcmp(value, "1.2") != 0 && strcmp(value, "1.3") != 0) {
      g_autofree char *q = quote(value, -1);
      key_error(error, USHER_CONFIG_ERROR_INVALID, ref, "%s is not 1.2 or 1.3", q);
      return FALSE;
    }
    config->tls_min_version = value[2] == '2' ? 12 : 13;
    return TRUE;
  }
  if (strcmp(key, "tls_cert") == 0 || strcmp(key, "tls_key") == 0) {
    if (value[0] != '\0' && value[0] != '/') {
      g_autofree char *q = quote(value, -1);
      key_error(error, USHER_CONFIG_ERROR_INVALID, ref, "%s is not an absolute path", q);
      return FALSE;
    }
    char **field = key[4] == 'c' ? &config->tls_cert : &config->tls_key;
    g_free(*field);
    *field = g_steal_pointer(&value);
    return TRUE;
  }
  if (strlen(value) > 200 || strpbrk(value, "\r\n") != NULL) {
    key_error(error, USHER_CONFIG_ERROR_INVALID, ref, "must be one line of at most 200 bytes");
    return FALSE;
  }
  g_free(config->proxy_greeting);
  config->proxy_greeting = g_steal_pointer(&value);
  return TRUE;
}

/* One [backend IP] group: which keys it sets. */
typedef struct {
  char *group;
  UsherIp ip;
  gboolean has_vhosts, has_tag, has_hostname, has_down;
  guint vhosts;
  char *tag;
  char *hostname; /* NULL = clear */
  gboolean down;
} BackendGroup;

static void
backend_group_free(gpointer data)
{
  BackendGroup *bg = data;
  g_free(bg->group);
  g_free(bg->tag);
  g_free(bg->hostname);
  g_free(bg);
}

static gboolean
parse_backend_group_key(BackendGroup *bg, const KeyRef *ref, GError **error)
{
  if (strcmp(ref->key, "vhosts") == 0) {
    bg->has_vhosts = TRUE;
    return get_uint(ref, 0, USHER_VHOST_MAX_ADMIN, &bg->vhosts, error);
  }
  if (strcmp(ref->key, "down") == 0) {
    bg->has_down = TRUE;
    return get_boolean(ref, &bg->down, error);
  }
  g_autofree char *value = NULL;
  if (!get_value(ref, &value, error))
    return FALSE;
  g_autofree char *q = quote(value, -1);
  if (strcmp(ref->key, "tag") == 0) {
    if (*value != '\0' && !usher_tag_valid(value, strlen(value))) {
      key_error(error, USHER_CONFIG_ERROR_INVALID, ref,
                "%s is not a valid tag (empty for the default tag, or 1 to %d letters, digits, "
                "'.', '_' or '-')",
                q, USHER_TAG_MAX_LEN);
      return FALSE;
    }
    bg->has_tag = TRUE;
    g_free(bg->tag);
    bg->tag = g_steal_pointer(&value);
    return TRUE;
  }
  if (strcmp(ref->key, "hostname") == 0) {
    if (*value != '\0' && !usher_hostname_valid(value)) {
      key_error(error, USHER_CONFIG_ERROR_INVALID, ref,
                "%s is not a valid host name (1 to %d letters, digits, '.', '_' or '-')", q,
                USHER_HOSTNAME_MAX_LEN);
      return FALSE;
    }
    bg->has_hostname = TRUE;
    g_free(bg->hostname);
    bg->hostname = *value != '\0' ? g_steal_pointer(&value) : NULL;
    return TRUE;
  }
  g_assert_not_reached();
}

static void group_error(GError **error, int code, const char *source, const char *group,
                        const char *fmt, ...) G_GNUC_PRINTF(5, 6);

static void
group_error(GError **error, int code, const char *source, const char *group, const char *fmt, ...)
{
  va_list args;
  va_start(args, fmt);
  g_autofree char *detail = g_strdup_vprintf(fmt, args);
  va_end(args);
  g_set_error(error, USHER_CONFIG_ERROR, code, "%s: [%s]: %s", source, group, detail);
}

/* Applies the [backend IP] groups to the hosts list: refine an entry with the same IP, or add. */
static gboolean
merge_backend_groups(GPtrArray *backends, GPtrArray *groups, const char *source, GError **error)
{
  g_autoptr(GHashTable) by_ip = g_hash_table_new(usher_ip_table_hash, usher_ip_table_equal);
  for (guint i = 0; i < backends->len; i++) {
    UsherBackendConfig *backend = g_ptr_array_index(backends, i);
    g_hash_table_insert(by_ip, &backend->ip, backend);
  }
  for (guint i = 0; i < groups->len; i++) {
    BackendGroup *bg = g_ptr_array_index(groups, i);
    UsherBackendConfig *backend = g_hash_table_lookup(by_ip, &bg->ip);
    if (backend == NULL) {
      if (backends->len >= USHER_HOSTS_MAX) {
        group_error(error, USHER_CONFIG_ERROR_INVALID, source, bg->group,
                    "too many backends (at most %d in all)", USHER_HOSTS_MAX);
        return FALSE;
      }
      backend = usher_backend_config_new(&bg->ip, "", USHER_VHOST_DEFAULT);
      g_ptr_array_add(backends, backend);
      g_hash_table_insert(by_ip, &backend->ip, backend);
    }
    if (bg->has_vhosts)
      backend->vhost_count = bg->vhosts;
    if (bg->has_tag) {
      g_free(backend->tag);
      backend->tag = g_strdup(bg->tag);
    }
    if (bg->has_hostname) {
      g_free(backend->hostname);
      backend->hostname = g_strdup(bg->hostname);
    }
    if (bg->has_down)
      backend->down = bg->down;
  }
  return TRUE;
}

UsherConfig *
usher_config_parse(const char *data, gsize len, const char *source, GError **error)
{
  g_assert(data != NULL || len == 0);
  if (source == NULL)
    source = DEFAULT_SOURCE;
  if (data == NULL)
    data = "";

  if (len > USHER_CONFIG_MAX_BYTES) {
    g_set_error(error, USHER_CONFIG_ERROR, USHER_CONFIG_ERROR_SYNTAX,
                "%s: the configuration is larger than %d bytes", source, USHER_CONFIG_MAX_BYTES);
    return NULL;
  }
  if (!scan_lines(data, len, source, error))
    return NULL;

  g_autoptr(GKeyFile) keyfile = g_key_file_new();
  g_autoptr(GError) local = NULL;
  if (!g_key_file_load_from_data(keyfile, data, len, G_KEY_FILE_KEEP_TRANSLATIONS, &local)) {
    g_set_error(error, USHER_CONFIG_ERROR, USHER_CONFIG_ERROR_SYNTAX, "%s: %s", source,
                local->message);
    return NULL;
  }

  g_autoptr(UsherConfig) config = usher_config_new();
  g_autoptr(GPtrArray) backend_groups = g_ptr_array_new_with_free_func(backend_group_free);
  g_autoptr(GPtrArray) hosts = g_ptr_array_new_with_free_func(backend_config_free_void);
  DirectorSeen seen = {FALSE, FALSE};
  g_auto(GStrv) groups = g_key_file_get_groups(keyfile, NULL);

  for (gsize g = 0; groups != NULL && groups[g] != NULL; g++) {
    const char *group = groups[g];
    const char *const *known;
    BackendGroup *bg = NULL;

    if (strcmp(group, "director") == 0) {
      known = director_keys;
    } else if (strcmp(group, "daemon") == 0) {
      known = daemon_keys;
    } else if (strcmp(group, "http") == 0) {
      known = http_keys;
    } else if (strcmp(group, "proxy") == 0) {
      known = proxy_keys;
    } else if (strcmp(group, "ring") == 0) {
      known = ring_keys;
    } else if (strcmp(group, "backends") == 0) {
      known = backends_keys;
    } else if (strcmp(group, "health") == 0) {
      known = health_keys;
    } else if (strcmp(group, "backend") == 0 || g_str_has_prefix(group, "backend ")) {
      known = backend_keys;
      g_autofree char *ip_text = g_strstrip(g_strdup(group + strlen("backend")));
      UsherIp ip;
      if (!usher_ip_parse(ip_text, -1, &ip)) {
        g_autofree char *q = quote(ip_text, -1);
        if (*ip_text == '\0')
          group_error(error, USHER_CONFIG_ERROR_INVALID, source, group,
                      "a backend group needs an IP address: [backend IP]");
        else
          group_error(error, USHER_CONFIG_ERROR_INVALID, source, group, "%s is not an IP address%s",
                      q, not_ip_hint(ip_text, strlen(ip_text)));
        return NULL;
      }
      for (guint i = 0; i < backend_groups->len; i++) {
        BackendGroup *other = g_ptr_array_index(backend_groups, i);
        if (usher_ip_equal(&other->ip, &ip)) {
          group_error(error, USHER_CONFIG_ERROR_CONFLICT, source, group,
                      "the same backend as [%s]; write one group per backend", other->group);
          return NULL;
        }
      }
      bg = g_new0(BackendGroup, 1);
      bg->group = g_strdup(group);
      bg->ip = ip;
      g_ptr_array_add(backend_groups, bg);
    } else {
      group_error(error, USHER_CONFIG_ERROR_UNKNOWN_GROUP, source, group,
                  "unknown group (known groups: [director], [ring], [backends], "
                  "[backend IP], [daemon], [http], [proxy] and [health])");
      return NULL;
    }

    g_auto(GStrv) keys = g_key_file_get_keys(keyfile, group, NULL, NULL);
    for (gsize k = 0; keys != NULL && keys[k] != NULL; k++) {
      KeyRef ref = {source, keyfile, group, keys[k]};
      if (!check_key_known(&ref, known, error))
        return NULL;
      gboolean ok;
      if (known == director_keys)
        ok = parse_director_key(config, &ref, &seen, error);
      else if (known == ring_keys)
        ok = parse_directors(config, &ref, error);
      else if (known == daemon_keys)
        ok = parse_daemon_key(config, &ref, error);
      else if (known == http_keys)
        ok = parse_http_key(config, &ref, error);
      else if (known == proxy_keys)
        ok = parse_proxy_key(config, &ref, error);
      else if (known == health_keys)
        ok = parse_health_key(config, &ref, error);
      else if (known == backend_keys)
        ok = parse_backend_group_key(bg, &ref, error);
      else if (strcmp(keys[k], "hosts") != 0) /* [backends] imap_port, ... */
        ok = parse_backend_port(config, &ref, error);
      else {
        g_autofree char *value = NULL;
        ok = get_value(&ref, &value, error);
        if (ok && !usher_backends_parse(value, hosts, error)) {
          g_prefix_error(error, "%s: [%s] %s: ", source, group, keys[k]);
          ok = FALSE;
        }
      }
      if (!ok)
        return NULL;
    }
  }

  if (config->ping_max_timeout_secs < config->ping_idle_timeout_secs) {
    g_autofree char *idle = format_duration(config->ping_idle_timeout_secs);
    g_autofree char *max = format_duration(config->ping_max_timeout_secs);
    if (seen.ping_max_set) {
      g_set_error(error, USHER_CONFIG_ERROR, USHER_CONFIG_ERROR_CONFLICT,
                  "%s: [director] ping_max_timeout: %s is below ping_idle_timeout (%s%s); it "
                  "must be at least as long",
                  source, max, idle, seen.ping_idle_set ? "" : ", the default");
    } else {
      g_set_error(error, USHER_CONFIG_ERROR, USHER_CONFIG_ERROR_CONFLICT,
                  "%s: [director] ping_idle_timeout: %s is above ping_max_timeout (%s, the "
                  "default); raise ping_max_timeout too",
                  source, idle, max);
    }
    return NULL;
  }

  if (config->has_ring_address && config->directors->len > 0) {
    gboolean listed = FALSE;
    for (guint i = 0; i < config->directors->len && !listed; i++)
      listed = director_cmp(&g_array_index(config->directors, UsherDirectorAddr, i),
                            &config->ring_address) == 0;
    if (!listed) {
      g_autofree char *text = format_director(&config->ring_address);
      g_set_error(error, USHER_CONFIG_ERROR, USHER_CONFIG_ERROR_CONFLICT,
                  "%s: [daemon] ring_address: %s is not in [ring] directors; list every director "
                  "of the ring there, this one included",
                  source, text);
      return NULL;
    }
  }

  if ((config->tls_cert[0] != '\0') != (config->tls_key[0] != '\0')) {
    g_set_error(error, USHER_CONFIG_ERROR, USHER_CONFIG_ERROR_CONFLICT,
                "%s: [proxy] tls_cert and tls_key go together: set both or neither", source);
    return NULL;
  }
  if (config->tls_cert[0] == '\0' && config->tls_sni->len > 0) {
    g_set_error(error, USHER_CONFIG_ERROR, USHER_CONFIG_ERROR_CONFLICT,
                "%s: [proxy] tls_sni needs tls_cert and tls_key (the certificate for clients that "
                "name no host, or one not in the list)", source);
    return NULL;
  }
  if (config->tls_cert[0] == '\0' &&
      (config->imaps_listen->len > 0 || config->pop3s_listen->len > 0 ||
       config->submissions_listen->len > 0)) {
    g_set_error(error, USHER_CONFIG_ERROR, USHER_CONFIG_ERROR_CONFLICT,
                "%s: [proxy] %s needs tls_cert and tls_key", source,
                config->imaps_listen->len > 0   ? "imaps_listen"
                : config->pop3s_listen->len > 0 ? "pop3s_listen"
                                                : "submissions_listen");
    return NULL;
  }

  if (!merge_backend_groups(hosts, backend_groups, source, error))
    return NULL;
  g_ptr_array_sort(hosts, backend_ptr_cmp);
  g_ptr_array_unref(config->backends);
  config->backends = g_steal_pointer(&hosts);
  return g_steal_pointer(&config);
}

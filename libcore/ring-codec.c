/* ring-codec.c - director ring protocol: escaping, line framing, parsing, formatting.
 *
 * The behaviour notes (what Dovecot accepts, and why) live in ring-codec.h.
 */
#include "libcore/ring-codec.h"

#include <string.h>

/* Appends n bytes. Ring lines are built from many short pieces, and GLib 2.74's
 * g_string_append_len() takes each through the general g_string_insert_len(): this copies in
 * place when the string has room (about 3 % of a large simulated ring's time). */
static inline void
put(GString *out, const char *p, gsize n)
{
  if (G_LIKELY(out->len + n < out->allocated_len)) {
    memcpy(out->str + out->len, p, n);
    out->len += n;
    out->str[out->len] = '\0';
  } else {
    g_string_append_len(out, p, (gssize)n);
  }
}

static inline void
put_str(GString *out, const char *s)
{
  put(out, s, strlen(s));
}

/* ---- Escaping ---------------------------------------------------------------------------- */

void
usher_ring_escape_append(GString *out, const char *data, gssize len)
{
  gsize n = len < 0 ? strlen(data) : (gsize)len;
  gsize start = 0;

  for (gsize i = 0; i < n; i++) {
    char esc;
    switch (data[i]) {
    case '\0':
      esc = '0';
      break;
    case '\001':
      esc = '1';
      break;
    case '\t':
      esc = 't';
      break;
    case '\r':
      esc = 'r';
      break;
    case '\n':
      esc = 'n';
      break;
    default:
      continue;
    }
    put(out, data + start, i - start);
    g_string_append_c(out, '\001');
    g_string_append_c(out, esc);
    start = i + 1;
  }
  put(out, data + start, n - start);
}

/* The byte an escape sequence "\001" c stands for. */
static char
unescape_char(char c)
{
  switch (c) {
  case '0':
    return '\0';
  case '1':
    return '\001';
  case 't':
    return '\t';
  case 'r':
    return '\r';
  case 'n':
    return '\n';
  default:
    return c;
  }
}

gsize
usher_ring_unescape_inplace(char *data, gsize len)
{
  char *p = memchr(data, '\001', len);
  if (p == NULL)
    return len;

  char *w = p;
  const char *r = p, *end = data + len;
  while (r < end) {
    char c = *r++;
    if (c == '\001') {
      if (r == end)
        break; /* a dangling escape is dropped */
      c = unescape_char(*r++);
    }
    *w++ = c;
  }
  return (gsize)(w - data);
}

/* ---- Line reader ------------------------------------------------------------------------- */

struct UsherLineReader {
  char *buf;
  gsize cap;
  gsize start;   /* first byte not yet returned */
  gsize end;     /* one past the last buffered byte */
  gsize scanned; /* bytes after start already known to hold no "\n" */
  gsize max_line_len;
  gboolean failed;
  UsherLineReaderStats stats;
};

UsherLineReader *
usher_line_reader_new(gsize max_line_len)
{
  g_assert(max_line_len > 0 && max_line_len < G_MAXSIZE / 2);
  UsherLineReader *reader = g_new0(UsherLineReader, 1);
  reader->max_line_len = max_line_len;
  return reader;
}

void
usher_line_reader_free(UsherLineReader *reader)
{
  if (reader == NULL)
    return;
  g_free(reader->buf);
  g_free(reader);
}

void
usher_line_reader_feed(UsherLineReader *reader, const void *data, gsize len)
{
  reader->stats.bytes_in += len;
  if (reader->failed) {
    reader->stats.bytes_discarded += len;
    return;
  }
  if (len == 0)
    return;

  if (reader->start == reader->end) {
    reader->start = reader->end = reader->scanned = 0;
  } else if (reader->cap - reader->end < len && reader->start > 0) {
    gsize pending = reader->end - reader->start;
    memmove(reader->buf, reader->buf + reader->start, pending);
    reader->start = 0;
    reader->end = pending;
  }
  if (reader->cap - reader->end < len) {
    g_assert(len <= G_MAXSIZE / 2 - reader->end);
    gsize want = reader->end + len;
    gsize cap = reader->cap > 0 ? reader->cap : 256;
    while (cap < want)
      cap *= 2;
    reader->buf = g_realloc(reader->buf, cap);
    reader->cap = cap;
  }
  memcpy(reader->buf + reader->end, data, len);
  reader->end += len;
}

UsherLineResult
usher_line_reader_next(UsherLineReader *reader, char **line_out, gsize *len_out)
{
  if (reader->failed)
    return USHER_LINE_TOO_LONG;

  gsize avail = reader->end - reader->start;
  /* The "\n" of an acceptable line lies within the first max_line_len + 1 bytes. */
  gsize window = MIN(avail, reader->max_line_len + 1);
  if (reader->scanned < window) {
    char *from = reader->buf + reader->start + reader->scanned;
    char *nl = memchr(from, '\n', window - reader->scanned);
    if (nl != NULL) {
      char *line = reader->buf + reader->start;
      gsize len = (gsize)(nl - line);
      if (len > 0 && line[len - 1] == '\r')
        len--;
      line[len] = '\0';
      reader->start += (gsize)(nl - line) + 1;
      reader->scanned = 0;
      reader->stats.lines++;
      *line_out = line;
      *len_out = len;
      return USHER_LINE_OK;
    }
    reader->scanned = window;
  }
  if (avail > reader->max_line_len) {
    reader->failed = TRUE;
    reader->stats.too_long++;
    reader->stats.bytes_discarded += avail;
    g_clear_pointer(&reader->buf, g_free);
    reader->cap = reader->start = reader->end = reader->scanned = 0;
    return USHER_LINE_TOO_LONG;
  }
  return USHER_LINE_NEED_MORE;
}

gsize
usher_line_reader_get_pending(const UsherLineReader *reader)
{
  return reader->end - reader->start;
}

gboolean
usher_line_reader_failed(const UsherLineReader *reader)
{
  return reader->failed;
}

void
usher_line_reader_get_stats(const UsherLineReader *reader, UsherLineReaderStats *stats_out)
{
  *stats_out = reader->stats;
}

/* ---- Message helpers --------------------------------------------------------------------- */

static const char *const msg_names[] = {
    [USHER_RING_MSG_NONE] = "(none)",
    [USHER_RING_MSG_VERSION] = "VERSION",
    [USHER_RING_MSG_ME] = "ME",
    [USHER_RING_MSG_DIRECTOR] = "DIRECTOR",
    [USHER_RING_MSG_DIRECTOR_REMOVE] = "DIRECTOR-REMOVE",
    [USHER_RING_MSG_HOST_HAND_START] = "HOST-HAND-START",
    [USHER_RING_MSG_HOST_HAND_END] = "HOST-HAND-END",
    [USHER_RING_MSG_HOST_HANDSHAKE] = "HOST",
    [USHER_RING_MSG_HOST] = "HOST",
    [USHER_RING_MSG_HOST_REMOVE] = "HOST-REMOVE",
    [USHER_RING_MSG_HOST_FLUSH] = "HOST-FLUSH",
    [USHER_RING_MSG_USER] = "USER",
    [USHER_RING_MSG_U] = "U",
    [USHER_RING_MSG_USER_WEAK] = "USER-WEAK",
    [USHER_RING_MSG_USER_MOVE] = "USER-MOVE",
    [USHER_RING_MSG_USER_KILLED] = "USER-KILLED",
    [USHER_RING_MSG_USER_KILLED_EVERYWHERE] = "USER-KILLED-EVERYWHERE",
    [USHER_RING_MSG_USER_KICK] = "USER-KICK",
    [USHER_RING_MSG_USER_KICK_ALT] = "USER-KICK-ALT",
    [USHER_RING_MSG_USER_KICK_HASH] = "USER-KICK-HASH",
    [USHER_RING_MSG_SYNC] = "SYNC",
    [USHER_RING_MSG_CONNECT] = "CONNECT",
    [USHER_RING_MSG_PING] = "PING",
    [USHER_RING_MSG_PONG] = "PONG",
    [USHER_RING_MSG_QUIT] = "QUIT",
    [USHER_RING_MSG_OPTIONS] = "OPTIONS",
    [USHER_RING_MSG_DONE] = "DONE",
    [USHER_RING_MSG_X_USHER_HEALTH] = "X-USHER-HEALTH",
};
G_STATIC_ASSERT(G_N_ELEMENTS(msg_names) == USHER_RING_MSG_TYPE_LAST + 1);

const char *
usher_ring_msg_type_to_string(UsherRingMsgType type)
{
  if ((guint)type > USHER_RING_MSG_TYPE_LAST)
    return "(invalid)";
  return msg_names[type];
}

void
usher_ring_msg_init(UsherRingMsg *msg, UsherRingMsgType type)
{
  memset(msg, 0, sizeof(*msg));
  msg->type = type;
  switch (type) {
  case USHER_RING_MSG_HOST:
  case USHER_RING_MSG_HOST_HANDSHAKE:
    msg->host.tag = "";
    msg->host.hostname = "";
    break;
  case USHER_RING_MSG_USER_KICK:
    msg->user_kick.username = "";
    break;
  case USHER_RING_MSG_USER_KICK_ALT:
    msg->user_kick_alt.field = "";
    msg->user_kick_alt.value = "";
    break;
  case USHER_RING_MSG_QUIT:
    msg->quit.reason = "";
    break;
  case USHER_RING_MSG_OPTIONS:
    msg->options.tokens = "";
    break;
  case USHER_RING_MSG_X_USHER_HEALTH:
    msg->health.failing = "-";
    msg->health.downs = "-";
    break;
  default:
    break;
  }
}

const char *
usher_ring_options_next(const char **cursor)
{
  const char *token = *cursor;
  *cursor = token + strlen(token) + 1;
  return token;
}

static gboolean parse_u64(const char *s, guint64 *value_out);

/* One X-USHER-HEALTH list entry: <ip> or, with_time, <ip>/<time>. Returns the entry's end (a
 * ',' or the NUL), or NULL if it is malformed. */
static const char *
health_entry(const char *s, gboolean with_time, UsherIp *ip_out, gint64 *time_out)
{
  const char *end = s + strcspn(s, ",");
  const char *ip_end = with_time ? memchr(s, '/', (gsize)(end - s)) : end;
  if (ip_end == NULL || ip_end == s || !usher_ip_parse(s, ip_end - s, ip_out))
    return NULL;
  if (with_time) {
    char num[24];
    gsize n = (gsize)(end - ip_end - 1);
    if (n == 0 || n >= sizeof(num))
      return NULL;
    memcpy(num, ip_end + 1, n);
    num[n] = '\0';
    guint64 v;
    if (!parse_u64(num, &v) || v > (guint64)G_MAXINT64)
      return NULL;
    if (time_out != NULL)
      *time_out = (gint64)v;
  }
  return end;
}

gboolean
usher_ring_health_next(const char **cursor, UsherIp *ip_out, gint64 *time_out)
{
  const char *s = *cursor;
  if (s == NULL || *s == '\0' || strcmp(s, "-") == 0)
    return FALSE;
  gboolean with_time = time_out != NULL;
  const char *end = health_entry(s, with_time, ip_out, time_out);
  if (end == NULL) /* only parsed messages are iterated: cannot happen */
    return FALSE;
  *cursor = *end == ',' ? end + 1 : end;
  return TRUE;
}

/* Checks a whole X-USHER-HEALTH list and counts its entries; FALSE if malformed or too long. */
static gboolean
health_list_check(const char *s, gboolean with_time, guint *n_out)
{
  *n_out = 0;
  if (strcmp(s, "-") == 0)
    return TRUE;
  for (;;) {
    UsherIp ip;
    gint64 t;
    const char *end = health_entry(s, with_time, &ip, &t);
    if (end == NULL || ++*n_out > USHER_RING_HEALTH_LIST_MAX)
      return FALSE;
    if (*end == '\0')
      return TRUE;
    s = end + 1;
  }
}

/* "" (a message being built) and "-" (as parsed) are both the empty list. */
static gboolean
health_list_equal(const char *a, const char *b)
{
  if (a[0] == '\0')
    a = "-";
  if (b[0] == '\0')
    b = "-";
  return strcmp(a, b) == 0;
}

static gboolean
addr_equal(const UsherRingAddr *a, const UsherRingAddr *b)
{
  return usher_ip_equal(&a->ip, &b->ip) && a->port == b->port;
}

static gboolean
origin_equal(const UsherRingOrigin *a, const UsherRingOrigin *b)
{
  return usher_ip_equal(&a->ip, &b->ip) && a->port == b->port && a->seq == b->seq;
}

gboolean
usher_ring_msg_equal(const UsherRingMsg *a, const UsherRingMsg *b)
{
  if (a->type != b->type)
    return FALSE;

  switch (a->type) {
  case USHER_RING_MSG_NONE:
  case USHER_RING_MSG_DONE:
    return TRUE;
  case USHER_RING_MSG_VERSION:
    return a->version.major == b->version.major && a->version.minor == b->version.minor;
  case USHER_RING_MSG_ME:
    return addr_equal(&a->me.addr, &b->me.addr) && a->me.has_time == b->me.has_time &&
           (!a->me.has_time || a->me.time == b->me.time);
  case USHER_RING_MSG_DIRECTOR:
  case USHER_RING_MSG_DIRECTOR_REMOVE:
  case USHER_RING_MSG_CONNECT:
    return addr_equal(&a->director, &b->director);
  case USHER_RING_MSG_HOST_HAND_START:
  case USHER_RING_MSG_HOST_HAND_END:
    return !a->host_hand.ring_handshaked == !b->host_hand.ring_handshaked;
  case USHER_RING_MSG_HOST:
    if (!origin_equal(&a->host.origin, &b->host.origin))
      return FALSE;
    /* fall through */
  case USHER_RING_MSG_HOST_HANDSHAKE:
    return usher_ip_equal(&a->host.ip, &b->host.ip) && a->host.vhost_count == b->host.vhost_count &&
           strcmp(a->host.tag, b->host.tag) == 0 && !a->host.down == !b->host.down &&
           a->host.last_updown_change == b->host.last_updown_change &&
           strcmp(a->host.hostname, b->host.hostname) == 0;
  case USHER_RING_MSG_HOST_REMOVE:
  case USHER_RING_MSG_HOST_FLUSH:
    return origin_equal(&a->host_ref.origin, &b->host_ref.origin) &&
           usher_ip_equal(&a->host_ref.ip, &b->host_ref.ip);
  case USHER_RING_MSG_USER:
    return a->user.hash == b->user.hash && usher_ip_equal(&a->user.ip, &b->user.ip) &&
           a->user.has_timestamp == b->user.has_timestamp &&
           (!a->user.has_timestamp || a->user.timestamp == b->user.timestamp);
  case USHER_RING_MSG_U:
    return a->handshake_user.hash == b->handshake_user.hash &&
           usher_ip_equal(&a->handshake_user.ip, &b->handshake_user.ip) &&
           a->handshake_user.timestamp == b->handshake_user.timestamp &&
           !a->handshake_user.weak == !b->handshake_user.weak;
  case USHER_RING_MSG_USER_WEAK:
  case USHER_RING_MSG_USER_MOVE:
  case USHER_RING_MSG_USER_KICK_HASH:
    return origin_equal(&a->user_ref.origin, &b->user_ref.origin) &&
           a->user_ref.hash == b->user_ref.hash && usher_ip_equal(&a->user_ref.ip, &b->user_ref.ip);
  case USHER_RING_MSG_USER_KILLED:
    return a->user_killed.hash == b->user_killed.hash;
  case USHER_RING_MSG_USER_KILLED_EVERYWHERE:
    return origin_equal(&a->user_killed_everywhere.origin, &b->user_killed_everywhere.origin) &&
           a->user_killed_everywhere.hash == b->user_killed_everywhere.hash;
  case USHER_RING_MSG_USER_KICK:
    return origin_equal(&a->user_kick.origin, &b->user_kick.origin) &&
           strcmp(a->user_kick.username, b->user_kick.username) == 0;
  case USHER_RING_MSG_USER_KICK_ALT:
    return origin_equal(&a->user_kick_alt.origin, &b->user_kick_alt.origin) &&
           strcmp(a->user_kick_alt.field, b->user_kick_alt.field) == 0 &&
           strcmp(a->user_kick_alt.value, b->user_kick_alt.value) == 0;
  case USHER_RING_MSG_SYNC:
    return addr_equal(&a->sync.addr, &b->sync.addr) && a->sync.seq == b->sync.seq &&
           a->sync.minor == b->sync.minor && a->sync.has_timestamp == b->sync.has_timestamp &&
           (!a->sync.has_timestamp || a->sync.timestamp == b->sync.timestamp) &&
           a->sync.hosts_hash == b->sync.hosts_hash;
  case USHER_RING_MSG_PING:
  case USHER_RING_MSG_PONG:
    return a->ping.has_values == b->ping.has_values &&
           (!a->ping.has_values ||
            (a->ping.time == b->ping.time && a->ping.buffer_bytes == b->ping.buffer_bytes));
  case USHER_RING_MSG_QUIT:
    return strcmp(a->quit.reason, b->quit.reason) == 0;
  case USHER_RING_MSG_OPTIONS: {
    if (a->options.n_tokens != b->options.n_tokens)
      return FALSE;
    const char *ca = a->options.tokens, *cb = b->options.tokens;
    for (guint i = 0; i < a->options.n_tokens; i++) {
      if (strcmp(usher_ring_options_next(&ca), usher_ring_options_next(&cb)) != 0)
        return FALSE;
    }
    return TRUE;
  }
  case USHER_RING_MSG_X_USHER_HEALTH:
    return addr_equal(&a->health.addr, &b->health.addr) && a->health.boot == b->health.boot &&
           a->health.seq == b->health.seq && a->health.interval_ms == b->health.interval_ms &&
           health_list_equal(a->health.failing, b->health.failing) &&
           health_list_equal(a->health.downs, b->health.downs) &&
           a->health.complete == b->health.complete;
  }
  return FALSE;
}

/* ---- Parsing ----------------------------------------------------------------------------- */

/* The most fields any command reads by position (HOST flood: command, 3 origin fields, ip,
 * vhosts, tag, up/down, hostname). Later fields are counted, and OPTIONS/QUIT walk them. */
#define FIELDS_KEPT 9

typedef struct {
  char *f[FIELDS_KEPT]; /* f[0] is the command */
  guint n;              /* all fields, the command included */
} Fields;

/* Splits on TABs and unescapes each field, in place, leaving the fields back to back, each
 * NUL-terminated (so field i + 1 starts right after field i's NUL). An escaped NUL ends its field
 * as Dovecot's C strings do: the rest of that field is skipped. line[len] is written. */
static void
split_fields(char *line, gsize len, Fields *fields)
{
  char *w = line;
  const char *r = line, *end = line + len;
  gboolean writing = TRUE;

  fields->f[0] = line;
  fields->n = 1;
  while (r < end) {
    char c = *r++;
    if (c == '\t') {
      *w++ = '\0';
      if (fields->n < FIELDS_KEPT)
        fields->f[fields->n] = w;
      fields->n++;
      writing = TRUE;
      continue;
    }
    if (c == '\001') {
      /* Dovecot splits before unescaping: an escape at the end of a field is dropped, and
       * the TAB after it still separates. */
      if (r == end || *r == '\t')
        continue;
      c = unescape_char(*r++);
      if (c == '\0') {
        writing = FALSE;
        continue;
      }
    }
    if (writing)
      *w++ = c;
  }
  *w = '\0';
}

/* Field i after the command, or NULL. */
static const char *
arg(const Fields *fields, guint i)
{
  guint idx = i + 1;
  if (idx >= fields->n || idx >= FIELDS_KEPT)
    return NULL;
  return fields->f[idx];
}

static guint
n_args(const Fields *fields)
{
  return fields->n - 1;
}

/* Dovecot's str_to_uintmax: digits only, at least one, no overflow. */
static gboolean
parse_u64(const char *s, guint64 *value_out)
{
  if (*s < '0' || *s > '9')
    return FALSE;
  guint64 n = 0;
  for (; *s != '\0'; s++) {
    if (*s < '0' || *s > '9')
      return FALSE;
    guint d = (guint)(*s - '0');
    if (n > (G_MAXUINT64 - d) / 10)
      return FALSE;
    n = n * 10 + d;
  }
  *value_out = n;
  return TRUE;
}

/* str_to_uint (32-bit unsigned int). */
static gboolean
parse_u32(const char *s, guint32 *value_out)
{
  guint64 v;
  if (!parse_u64(s, &v) || v > G_MAXUINT32)
    return FALSE;
  *value_out = (guint32)v;
  return TRUE;
}

/* str_to_time: an optional '-', then str_to_uintmax digits, within the 64-bit signed range. */
static gboolean
parse_i64(const char *s, gint64 *value_out)
{
  gboolean neg = FALSE;
  if (*s == '-') {
    neg = TRUE;
    s++;
  }
  guint64 mag;
  if (!parse_u64(s, &mag))
    return FALSE;
  if (!neg) {
    if (mag > (guint64)G_MAXINT64)
      return FALSE;
    *value_out = (gint64)mag;
  } else {
    if (mag > (guint64)G_MAXINT64 + 1)
      return FALSE;
    *value_out = mag == (guint64)G_MAXINT64 + 1 ? G_MININT64 : -(gint64)mag;
  }
  return TRUE;
}

/* net_str2port: 1..65535. */
static gboolean
parse_port(const char *s, guint16 *port_out)
{
  guint64 v;
  if (!parse_u64(s, &v) || v == 0 || v > G_MAXUINT16)
    return FALSE;
  *port_out = (guint16)v;
  return TRUE;
}

static gboolean
parse_ip(const char *s, UsherIp *ip_out)
{
  return usher_ip_parse(s, -1, ip_out);
}

/* director_args_parse_ip_port(): args[first], args[first + 1]. */
static UsherRingParseResult
parse_addr(const Fields *fields, guint first, UsherRingAddr *addr_out)
{
  const char *ip = arg(fields, first), *port = arg(fields, first + 1);
  if (ip == NULL || port == NULL)
    return USHER_RING_PARSE_MISSING_FIELD;
  if (!parse_ip(ip, &addr_out->ip))
    return USHER_RING_PARSE_BAD_IP;
  if (!parse_port(port, &addr_out->port))
    return USHER_RING_PARSE_BAD_PORT;
  return USHER_RING_PARSE_OK;
}

/* director_cmd_is_seen(): the origin triple in args 0..2. */
static UsherRingParseResult
parse_origin(const Fields *fields, UsherRingOrigin *origin_out)
{
  if (n_args(fields) < 3)
    return USHER_RING_PARSE_MISSING_FIELD;
  if (!parse_ip(arg(fields, 0), &origin_out->ip))
    return USHER_RING_PARSE_BAD_IP;
  if (!parse_port(arg(fields, 1), &origin_out->port))
    return USHER_RING_PARSE_BAD_PORT;
  if (!parse_u32(arg(fields, 2), &origin_out->seq))
    return USHER_RING_PARSE_BAD_NUMBER;
  return USHER_RING_PARSE_OK;
}

/* For commands whose handler checks str_array_length(args) == want after the origin. */
static UsherRingParseResult
check_exact(const Fields *fields, guint want)
{
  if (n_args(fields) < want)
    return USHER_RING_PARSE_MISSING_FIELD;
  if (n_args(fields) > want)
    return USHER_RING_PARSE_EXTRA_FIELD;
  return USHER_RING_PARSE_OK;
}

/* director_cmd_host_int(): ip, vhosts, [tag, [U|D<time>, [hostname]]], extra fields ignored.
 * first: index of the ip among the args. */
static UsherRingParseResult
parse_host_fields(const Fields *fields, guint first, UsherRingMsg *msg)
{
  guint count = n_args(fields) - first;
  if (count < 2)
    return USHER_RING_PARSE_MISSING_FIELD;
  if (!parse_ip(arg(fields, first), &msg->host.ip))
    return USHER_RING_PARSE_BAD_IP;
  if (!parse_u32(arg(fields, first + 1), &msg->host.vhost_count))
    return USHER_RING_PARSE_BAD_NUMBER;
  msg->host.tag = count >= 3 ? arg(fields, first + 2) : "";
  if (count >= 4) {
    const char *updown = arg(fields, first + 3);
    if (updown[0] != 'D' && updown[0] != 'U')
      return USHER_RING_PARSE_BAD_VALUE;
    if (!parse_i64(updown + 1, &msg->host.last_updown_change))
      return USHER_RING_PARSE_BAD_VALUE;
    msg->host.down = updown[0] == 'D';
  }
  msg->host.hostname = count >= 5 ? arg(fields, first + 4) : "";
  return USHER_RING_PARSE_OK;
}

/* Parses the fields of msg->type (already set) from fields. */
static UsherRingParseResult
parse_args(Fields *fields, UsherRingMsg *msg)
{
  UsherRingParseResult res;
  const char *a;

  switch (msg->type) {
  case USHER_RING_MSG_VERSION:
    if (n_args(fields) < 3)
      return USHER_RING_PARSE_MISSING_FIELD;
    if (strcmp(arg(fields, 0), USHER_RING_PROTOCOL_NAME) != 0)
      return USHER_RING_PARSE_BAD_VALUE;
    if (!parse_u32(arg(fields, 1), &msg->version.major) ||
        !parse_u32(arg(fields, 2), &msg->version.minor))
      return USHER_RING_PARSE_BAD_NUMBER;
    return USHER_RING_PARSE_OK;

  case USHER_RING_MSG_ME:
    if ((res = parse_addr(fields, 0, &msg->me.addr)) != USHER_RING_PARSE_OK)
      return res;
    if ((a = arg(fields, 2)) != NULL) {
      if (!parse_i64(a, &msg->me.time))
        return USHER_RING_PARSE_BAD_NUMBER;
      msg->me.has_time = TRUE;
    }
    return USHER_RING_PARSE_OK;

  case USHER_RING_MSG_DIRECTOR:
  case USHER_RING_MSG_DIRECTOR_REMOVE:
    return parse_addr(fields, 0, &msg->director);

  case USHER_RING_MSG_CONNECT:
    /* director_cmd_connect(): exactly two fields, checked before their syntax. */
    if (n_args(fields) > 2)
      return USHER_RING_PARSE_EXTRA_FIELD;
    return parse_addr(fields, 0, &msg->director);

  case USHER_RING_MSG_HOST_HAND_START: {
    guint32 v;
    if ((a = arg(fields, 0)) == NULL)
      return USHER_RING_PARSE_MISSING_FIELD;
    if (!parse_u32(a, &v))
      return USHER_RING_PARSE_BAD_NUMBER;
    msg->host_hand.ring_handshaked = v != 0;
    return USHER_RING_PARSE_OK;
  }

  case USHER_RING_MSG_HOST_HAND_END: {
    /* Dovecot does not look at the argument at all. */
    guint32 v;
    a = arg(fields, 0);
    msg->host_hand.ring_handshaked = a != NULL && parse_u32(a, &v) && v != 0;
    return USHER_RING_PARSE_OK;
  }

  case USHER_RING_MSG_HOST_HANDSHAKE:
    return parse_host_fields(fields, 0, msg);

  case USHER_RING_MSG_HOST:
    if ((res = parse_origin(fields, &msg->host.origin)) != USHER_RING_PARSE_OK)
      return res;
    return parse_host_fields(fields, 3, msg);

  case USHER_RING_MSG_HOST_REMOVE:
  case USHER_RING_MSG_HOST_FLUSH:
    if ((res = parse_origin(fields, &msg->host_ref.origin)) != USHER_RING_PARSE_OK)
      return res;
    if ((res = check_exact(fields, 3 + 1)) != USHER_RING_PARSE_OK)
      return res;
    if (!parse_ip(arg(fields, 3), &msg->host_ref.ip))
      return USHER_RING_PARSE_BAD_IP;
    return USHER_RING_PARSE_OK;

  case USHER_RING_MSG_USER:
    /* director_cmd_user(): hash, ip, [timestamp], further fields ignored. */
    if (n_args(fields) < 2)
      return USHER_RING_PARSE_MISSING_FIELD;
    if (!parse_u32(arg(fields, 0), &msg->user.hash))
      return USHER_RING_PARSE_BAD_NUMBER;
    if (!parse_ip(arg(fields, 1), &msg->user.ip))
      return USHER_RING_PARSE_BAD_IP;
    if ((a = arg(fields, 2)) != NULL) {
      if (!parse_i64(a, &msg->user.timestamp))
        return USHER_RING_PARSE_BAD_NUMBER;
      msg->user.has_timestamp = TRUE;
    }
    return USHER_RING_PARSE_OK;

  case USHER_RING_MSG_U:
    /* director_handshake_cmd_user(): hash, ip, timestamp, [w...], further fields ignored. */
    if (n_args(fields) < 3)
      return USHER_RING_PARSE_MISSING_FIELD;
    if (!parse_u32(arg(fields, 0), &msg->handshake_user.hash))
      return USHER_RING_PARSE_BAD_NUMBER;
    if (!parse_ip(arg(fields, 1), &msg->handshake_user.ip))
      return USHER_RING_PARSE_BAD_IP;
    if (!parse_u32(arg(fields, 2), &msg->handshake_user.timestamp))
      return USHER_RING_PARSE_BAD_NUMBER;
    a = arg(fields, 3);
    msg->handshake_user.weak = a != NULL && a[0] == 'w';
    return USHER_RING_PARSE_OK;

  case USHER_RING_MSG_USER_WEAK:
  case USHER_RING_MSG_USER_MOVE:
  case USHER_RING_MSG_USER_KICK_HASH:
    if ((res = parse_origin(fields, &msg->user_ref.origin)) != USHER_RING_PARSE_OK)
      return res;
    if ((res = check_exact(fields, 3 + 2)) != USHER_RING_PARSE_OK)
      return res;
    if (!parse_u32(arg(fields, 3), &msg->user_ref.hash))
      return USHER_RING_PARSE_BAD_NUMBER;
    if (!parse_ip(arg(fields, 4), &msg->user_ref.ip))
      return USHER_RING_PARSE_BAD_IP;
    return USHER_RING_PARSE_OK;

  case USHER_RING_MSG_USER_KILLED:
    if ((res = check_exact(fields, 1)) != USHER_RING_PARSE_OK)
      return res;
    if (!parse_u32(arg(fields, 0), &msg->user_killed.hash))
      return USHER_RING_PARSE_BAD_NUMBER;
    return USHER_RING_PARSE_OK;

  case USHER_RING_MSG_USER_KILLED_EVERYWHERE:
    if ((res = parse_origin(fields, &msg->user_killed_everywhere.origin)) != USHER_RING_PARSE_OK)
      return res;
    if ((res = check_exact(fields, 3 + 1)) != USHER_RING_PARSE_OK)
      return res;
    if (!parse_u32(arg(fields, 3), &msg->user_killed_everywhere.hash))
      return USHER_RING_PARSE_BAD_NUMBER;
    return USHER_RING_PARSE_OK;

  case USHER_RING_MSG_USER_KICK:
    if ((res = parse_origin(fields, &msg->user_kick.origin)) != USHER_RING_PARSE_OK)
      return res;
    if ((res = check_exact(fields, 3 + 1)) != USHER_RING_PARSE_OK)
      return res;
    msg->user_kick.username = arg(fields, 3);
    return USHER_RING_PARSE_OK;

  case USHER_RING_MSG_USER_KICK_ALT:
    if ((res = parse_origin(fields, &msg->user_kick_alt.origin)) != USHER_RING_PARSE_OK)
      return res;
    if ((res = check_exact(fields, 3 + 2)) != USHER_RING_PARSE_OK)
      return res;
    msg->user_kick_alt.field = arg(fields, 3);
    msg->user_kick_alt.value = arg(fields, 4);
    return USHER_RING_PARSE_OK;

  case USHER_RING_MSG_SYNC:
    /* director_connection_sync(): ip, port, seq, [minor, [timestamp, [hosts_hash]]]. */
    if (n_args(fields) < 3)
      return USHER_RING_PARSE_MISSING_FIELD;
    if ((res = parse_addr(fields, 0, &msg->sync.addr)) != USHER_RING_PARSE_OK)
      return res;
    if (!parse_u32(arg(fields, 2), &msg->sync.seq))
      return USHER_RING_PARSE_BAD_NUMBER;
    if ((a = arg(fields, 3)) != NULL && !parse_u32(a, &msg->sync.minor))
      return USHER_RING_PARSE_BAD_NUMBER;
    if ((a = arg(fields, 4)) != NULL) {
      if (!parse_u32(a, &msg->sync.timestamp))
        return USHER_RING_PARSE_BAD_NUMBER;
      msg->sync.has_timestamp = TRUE;
    }
    if ((a = arg(fields, 5)) != NULL && !parse_u32(a, &msg->sync.hosts_hash))
      return USHER_RING_PARSE_BAD_NUMBER;
    return USHER_RING_PARSE_OK;

  case USHER_RING_MSG_PING:
  case USHER_RING_MSG_PONG:
    /* director_cmd_ping()/pong(): the values are optional and bad ones are ignored. */
    if (n_args(fields) >= 2 && parse_i64(arg(fields, 0), &msg->ping.time) &&
        parse_u64(arg(fields, 1), &msg->ping.buffer_bytes)) {
      msg->ping.has_values = TRUE;
    } else {
      msg->ping.time = 0;
      msg->ping.buffer_bytes = 0;
    }
    return USHER_RING_PARSE_OK;

  case USHER_RING_MSG_QUIT: {
    /* t_strarray_join(args, " "): the fields are back to back, so turn the NULs between them
     * into spaces. */
    if (n_args(fields) == 0) {
      msg->quit.reason = "";
      return USHER_RING_PARSE_OK;
    }
    char *reason = fields->f[1], *p = reason;
    for (guint i = 1; i < n_args(fields); i++) {
      p += strlen(p);
      *p++ = ' ';
    }
    msg->quit.reason = reason;
    return USHER_RING_PARSE_OK;
  }

  case USHER_RING_MSG_OPTIONS: {
    msg->options.n_tokens = n_args(fields);
    msg->options.tokens = n_args(fields) > 0 ? fields->f[1] : "";
    const char *cursor = msg->options.tokens;
    for (guint i = 0; i < msg->options.n_tokens; i++) {
      const char *token = usher_ring_options_next(&cursor);
      if (strcmp(token, USHER_RING_OPTION_CONSISTENT_HASHING) == 0)
        msg->options.consistent_hashing = TRUE;
      else if (strcmp(token, USHER_RING_OPTION_USHER_EXT) == 0)
        msg->options.usher_ext = TRUE;
    }
    return USHER_RING_PARSE_OK;
  }

  case USHER_RING_MSG_X_USHER_HEALTH: {
    guint32 complete;
    if ((res = check_exact(fields, 8)) != USHER_RING_PARSE_OK)
      return res;
    if ((res = parse_addr(fields, 0, &msg->health.addr)) != USHER_RING_PARSE_OK)
      return res;
    if (!parse_u32(arg(fields, 2), &msg->health.boot) ||
        !parse_u32(arg(fields, 3), &msg->health.seq) ||
        !parse_u32(arg(fields, 4), &msg->health.interval_ms) ||
        !parse_u32(arg(fields, 7), &complete) || complete > 1)
      return USHER_RING_PARSE_BAD_NUMBER;
    msg->health.failing = arg(fields, 5);
    msg->health.downs = arg(fields, 6);
    if (!health_list_check(msg->health.failing, FALSE, &msg->health.n_failing) ||
        !health_list_check(msg->health.downs, TRUE, &msg->health.n_downs))
      return USHER_RING_PARSE_BAD_VALUE;
    msg->health.complete = complete == 1;
    return USHER_RING_PARSE_OK;
  }

  case USHER_RING_MSG_DONE:
    return USHER_RING_PARSE_OK;

  case USHER_RING_MSG_NONE:
    break;
  }
  g_assert_not_reached();
  return USHER_RING_PARSE_UNKNOWN_COMMAND;
}

static const struct {
  const char *name;
  UsherRingMsgType type;
} commands[] = {
    {"USER", USHER_RING_MSG_USER},
    {"U", USHER_RING_MSG_U},
    {"PING", USHER_RING_MSG_PING},
    {"PONG", USHER_RING_MSG_PONG},
    {"SYNC", USHER_RING_MSG_SYNC},
    {"HOST", USHER_RING_MSG_HOST},
    {"USER-WEAK", USHER_RING_MSG_USER_WEAK},
    {"USER-MOVE", USHER_RING_MSG_USER_MOVE},
    {"USER-KILLED", USHER_RING_MSG_USER_KILLED},
    {"USER-KILLED-EVERYWHERE", USHER_RING_MSG_USER_KILLED_EVERYWHERE},
    {"USER-KICK", USHER_RING_MSG_USER_KICK},
    {"USER-KICK-ALT", USHER_RING_MSG_USER_KICK_ALT},
    {"USER-KICK-HASH", USHER_RING_MSG_USER_KICK_HASH},
    {"HOST-REMOVE", USHER_RING_MSG_HOST_REMOVE},
    {"HOST-FLUSH", USHER_RING_MSG_HOST_FLUSH},
    {"HOST-HAND-START", USHER_RING_MSG_HOST_HAND_START},
    {"HOST-HAND-END", USHER_RING_MSG_HOST_HAND_END},
    {"DIRECTOR", USHER_RING_MSG_DIRECTOR},
    {"DIRECTOR-REMOVE", USHER_RING_MSG_DIRECTOR_REMOVE},
    {"CONNECT", USHER_RING_MSG_CONNECT},
    {"VERSION", USHER_RING_MSG_VERSION},
    {"ME", USHER_RING_MSG_ME},
    {"OPTIONS", USHER_RING_MSG_OPTIONS},
    {"DONE", USHER_RING_MSG_DONE},
    {"QUIT", USHER_RING_MSG_QUIT},
    {"X-USHER-HEALTH", USHER_RING_MSG_X_USHER_HEALTH},
};

/* The handshake's "U" line without escapes or NUL bytes, the one line a large handshake is made
 * of: the same fields, checks and results as the general path below, without its command lookup
 * and second clearing of the message (a 1M-user handshake is 15% faster). */
static UsherRingParseResult
parse_plain_u(char *line, gsize len, UsherRingMsg *msg)
{
  char *f[5];
  guint n = 0;
  char *p = line + 2, *end = line + len;
  while (n < G_N_ELEMENTS(f)) {
    char *tab = memchr(p, '\t', (gsize)(end - p));
    f[n++] = p;
    if (tab == NULL) {
      *end = '\0';
      break;
    }
    *tab = '\0';
    p = tab + 1;
  }
  msg->type = USHER_RING_MSG_U;
  if (n < 3)
    return USHER_RING_PARSE_MISSING_FIELD;
  if (!parse_u32(f[0], &msg->handshake_user.hash))
    return USHER_RING_PARSE_BAD_NUMBER;
  if (!parse_ip(f[1], &msg->handshake_user.ip))
    return USHER_RING_PARSE_BAD_IP;
  if (!parse_u32(f[2], &msg->handshake_user.timestamp))
    return USHER_RING_PARSE_BAD_NUMBER;
  msg->handshake_user.weak = n > 3 && f[3][0] == 'w';
  return USHER_RING_PARSE_OK;
}

UsherRingParseResult
usher_ring_msg_parse(char *line, gsize len, UsherRingParseFlags flags, UsherRingMsg *msg_out)
{
  memset(msg_out, 0, sizeof(*msg_out));
  if (len > USHER_RING_LINE_MAX)
    return USHER_RING_PARSE_TOO_LONG;
  if (len > 2 && line[0] == 'U' && line[1] == '\t' && memchr(line, '\001', len) == NULL &&
      memchr(line, '\0', len) == NULL) {
    UsherRingParseResult r = parse_plain_u(line, len, msg_out);
    if (r != USHER_RING_PARSE_OK)
      memset(msg_out, 0, sizeof(*msg_out));
    return r;
  }

  /* Dovecot sees the line as a C string. */
  const char *nul = memchr(line, '\0', len);
  if (nul != NULL)
    len = (gsize)(nul - line);
  if (len == 0)
    return USHER_RING_PARSE_EMPTY;

  Fields fields;
  split_fields(line, len, &fields);

  UsherRingMsgType type = USHER_RING_MSG_NONE;
  for (gsize i = 0; i < G_N_ELEMENTS(commands); i++) {
    if (strcmp(fields.f[0], commands[i].name) == 0) {
      type = commands[i].type;
      break;
    }
  }
  if (type == USHER_RING_MSG_NONE)
    return USHER_RING_PARSE_UNKNOWN_COMMAND;
  if (type == USHER_RING_MSG_HOST && (flags & USHER_RING_PARSE_HOST_LIST) != 0)
    type = USHER_RING_MSG_HOST_HANDSHAKE;
  if (type == USHER_RING_MSG_USER && (flags & USHER_RING_PARSE_LEGACY_USER) != 0 &&
      n_args(&fields) > 2)
    type = USHER_RING_MSG_U;

  usher_ring_msg_init(msg_out, type);
  UsherRingParseResult res = parse_args(&fields, msg_out);
  if (res != USHER_RING_PARSE_OK)
    memset(msg_out, 0, sizeof(*msg_out));
  return res;
}

const char *
usher_ring_parse_result_to_string(UsherRingParseResult result)
{
  switch (result) {
  case USHER_RING_PARSE_OK:
    return "ok";
  case USHER_RING_PARSE_EMPTY:
    return "empty line";
  case USHER_RING_PARSE_TOO_LONG:
    return "line too long";
  case USHER_RING_PARSE_UNKNOWN_COMMAND:
    return "unknown command";
  case USHER_RING_PARSE_MISSING_FIELD:
    return "missing field";
  case USHER_RING_PARSE_EXTRA_FIELD:
    return "unexpected extra field";
  case USHER_RING_PARSE_BAD_NUMBER:
    return "invalid number";
  case USHER_RING_PARSE_BAD_IP:
    return "invalid IP address";
  case USHER_RING_PARSE_BAD_PORT:
    return "invalid port";
  case USHER_RING_PARSE_BAD_VALUE:
    return "invalid value";
  }
  return "(invalid result)";
}

/* ---- Formatting -------------------------------------------------------------------------- */

/* Writes v's digits at p; returns the end. */
static char *
write_u64(char *p, guint64 v)
{
  gsize n = 1;
  for (guint64 x = v; x >= 10; x /= 10)
    n++;
  char *end = p + n;
  do {
    *--end = (char)('0' + v % 10);
    v /= 10;
  } while (v != 0);
  return p + n;
}

static char *
write_i64(char *p, gint64 v)
{
  if (v >= 0)
    return write_u64(p, (guint64)v);
  *p++ = '-';
  return write_u64(p, (guint64)0 - (guint64)v);
}

/* A number, optionally after one byte (a tab), in one copy. */
static void
put_u64(GString *out, char before, guint64 v)
{
  char buf[24];
  char *p = buf;
  if (before != '\0')
    *p++ = before;
  p = write_u64(p, v);
  put(out, buf, (gsize)(p - buf));
}

static void
put_i64(GString *out, char before, gint64 v)
{
  char buf[24];
  char *p = buf;
  if (before != '\0')
    *p++ = before;
  p = write_i64(p, v);
  put(out, buf, (gsize)(p - buf));
}

static void
tab_u64(GString *out, guint64 v)
{
  put_u64(out, '\t', v);
}

static void
tab_i64(GString *out, gint64 v)
{
  put_i64(out, '\t', v);
}

static void
tab_ip(GString *out, const UsherIp *ip)
{
  char buf[USHER_IP_STRLEN];
  g_assert(ip->family == USHER_IP_V4 || ip->family == USHER_IP_V6);
  g_string_append_c(out, '\t');
  put_str(out, usher_ip_to_string(ip, buf));
}

static void
tab_escaped(GString *out, const char *s)
{
  g_assert(s != NULL);
  g_string_append_c(out, '\t');
  usher_ring_escape_append(out, s, -1);
}

static void
tab_addr(GString *out, const UsherRingAddr *addr)
{
  tab_ip(out, &addr->ip);
  tab_u64(out, addr->port);
}

static void
tab_origin(GString *out, const UsherRingOrigin *origin)
{
  tab_ip(out, &origin->ip);
  tab_u64(out, origin->port);
  tab_u64(out, origin->seq);
}

static void
append_updown(GString *out, const UsherRingMsg *msg)
{
  g_string_append_c(out, '\t');
  g_string_append_c(out, msg->host.down ? 'D' : 'U');
  put_i64(out, '\0', msg->host.last_updown_change);
  tab_escaped(out, msg->host.hostname);
}

/* USER and U, most of a large ring's lines (every login is a USER line through every director):
 * built in one buffer and appended with one copy, instead of a copy per field. The same bytes
 * as the general path. */
static gboolean
format_user_fast(const UsherRingMsg *msg, guint minor, GString *out)
{
  char line[4 + 1 + 20 + 1 + USHER_IP_STRLEN + 1 + 21 + 2];
  char *p = line;
  const UsherIp *ip;
  if (msg->type == USHER_RING_MSG_USER) {
    memcpy(p, "USER\t", 5);
    p = write_u64(p + 5, msg->user.hash);
    ip = &msg->user.ip;
  } else {
    if (minor < USHER_RING_MINOR_HANDSHAKE_U)
      return FALSE;
    memcpy(p, "U\t", 2);
    p = write_u64(p + 2, msg->handshake_user.hash);
    ip = &msg->handshake_user.ip;
  }
  if (ip->family != USHER_IP_V4 && ip->family != USHER_IP_V6)
    return FALSE; /* the general path says what is wrong */
  *p++ = '\t';
  p += usher_ip_format(ip, p);
  if (msg->type == USHER_RING_MSG_USER) {
    if (minor >= USHER_RING_MINOR_USER_TIMESTAMP && msg->user.has_timestamp) {
      *p++ = '\t';
      p = write_i64(p, msg->user.timestamp);
    }
  } else {
    *p++ = '\t';
    p = write_u64(p, msg->handshake_user.timestamp);
    if (msg->handshake_user.weak) {
      memcpy(p, "\tw", 2);
      p += 2;
    }
  }
  put(out, line, (gsize)(p - line));
  return TRUE;
}

/* Appends the line without its "\n". */
static UsherRingFormatResult
format_body(const UsherRingMsg *msg, guint minor, GString *out)
{
  if ((msg->type == USHER_RING_MSG_USER || msg->type == USHER_RING_MSG_U) &&
      format_user_fast(msg, minor, out))
    return USHER_RING_FORMAT_OK;
  /* Peers below minor 9 get handshake users as "USER" with the same fields. */
  if (msg->type == USHER_RING_MSG_U && minor < USHER_RING_MINOR_HANDSHAKE_U)
    put_str(out, "USER");
  else
    put_str(out, usher_ring_msg_type_to_string(msg->type));

  switch (msg->type) {
  case USHER_RING_MSG_VERSION:
    put_str(out, "\t" USHER_RING_PROTOCOL_NAME);
    tab_u64(out, msg->version.major);
    tab_u64(out, msg->version.minor);
    break;

  case USHER_RING_MSG_ME:
    tab_addr(out, &msg->me.addr);
    if (msg->me.has_time)
      tab_i64(out, msg->me.time);
    break;

  case USHER_RING_MSG_DIRECTOR_REMOVE:
    if (minor < USHER_RING_MINOR_RING_REMOVE)
      return USHER_RING_FORMAT_UNSUPPORTED;
    /* fall through */
  case USHER_RING_MSG_DIRECTOR:
  case USHER_RING_MSG_CONNECT:
    tab_addr(out, &msg->director);
    break;

  case USHER_RING_MSG_HOST_HAND_START:
  case USHER_RING_MSG_HOST_HAND_END:
    put_str(out, msg->host_hand.ring_handshaked ? "\t1" : "\t0");
    break;

  case USHER_RING_MSG_HOST_HANDSHAKE:
    /* director_connection_send_hosts() */
    g_assert(msg->host.tag != NULL && msg->host.hostname != NULL);
    if (msg->host.tag[0] != '\0' && minor < USHER_RING_MINOR_TAGS_V2)
      return USHER_RING_FORMAT_UNSUPPORTED;
    tab_ip(out, &msg->host.ip);
    tab_u64(out, msg->host.vhost_count);
    if (msg->host.tag[0] != '\0' || minor >= USHER_RING_MINOR_UPDOWN)
      tab_escaped(out, msg->host.tag);
    if (minor >= USHER_RING_MINOR_UPDOWN)
      append_updown(out, msg);
    break;

  case USHER_RING_MSG_HOST:
    /* director_send_host(): minor is the ring's minimum version here. */
    g_assert(msg->host.tag != NULL && msg->host.hostname != NULL);
    if (msg->host.tag[0] != '\0' && minor < USHER_RING_MINOR_TAGS_V2)
      return USHER_RING_FORMAT_UNSUPPORTED;
    tab_origin(out, &msg->host.origin);
    tab_ip(out, &msg->host.ip);
    tab_u64(out, msg->host.vhost_count);
    if (minor >= USHER_RING_MINOR_TAGS_V2)
      tab_escaped(out, msg->host.tag);
    if (minor >= USHER_RING_MINOR_UPDOWN)
      append_updown(out, msg);
    break;

  case USHER_RING_MSG_HOST_REMOVE:
  case USHER_RING_MSG_HOST_FLUSH:
    tab_origin(out, &msg->host_ref.origin);
    tab_ip(out, &msg->host_ref.ip);
    break;

  case USHER_RING_MSG_USER:
    /* director_update_user() */
    tab_u64(out, msg->user.hash);
    tab_ip(out, &msg->user.ip);
    if (minor >= USHER_RING_MINOR_USER_TIMESTAMP && msg->user.has_timestamp)
      tab_i64(out, msg->user.timestamp);
    break;

  case USHER_RING_MSG_U:
    /* director_connection_send_users() */
    tab_u64(out, msg->handshake_user.hash);
    tab_ip(out, &msg->handshake_user.ip);
    tab_u64(out, msg->handshake_user.timestamp);
    if (msg->handshake_user.weak)
      put_str(out, "\tw");
    break;

  case USHER_RING_MSG_USER_KICK_HASH:
    if (minor < USHER_RING_MINOR_USER_KICK)
      return USHER_RING_FORMAT_UNSUPPORTED;
    /* fall through */
  case USHER_RING_MSG_USER_WEAK:
  case USHER_RING_MSG_USER_MOVE:
    tab_origin(out, &msg->user_ref.origin);
    tab_u64(out, msg->user_ref.hash);
    tab_ip(out, &msg->user_ref.ip);
    break;

  case USHER_RING_MSG_USER_KILLED:
    tab_u64(out, msg->user_killed.hash);
    break;

  case USHER_RING_MSG_USER_KILLED_EVERYWHERE:
    tab_origin(out, &msg->user_killed_everywhere.origin);
    tab_u64(out, msg->user_killed_everywhere.hash);
    break;

  case USHER_RING_MSG_USER_KICK:
    if (minor < USHER_RING_MINOR_USER_KICK)
      return USHER_RING_FORMAT_UNSUPPORTED;
    tab_origin(out, &msg->user_kick.origin);
    tab_escaped(out, msg->user_kick.username);
    break;

  case USHER_RING_MSG_USER_KICK_ALT:
    if (minor < USHER_RING_MINOR_USER_KICK_ALT)
      return USHER_RING_FORMAT_UNSUPPORTED;
    tab_origin(out, &msg->user_kick_alt.origin);
    tab_escaped(out, msg->user_kick_alt.field);
    tab_escaped(out, msg->user_kick_alt.value);
    break;

  case USHER_RING_MSG_SYNC:
    /* director_sync_send() */
    tab_addr(out, &msg->sync.addr);
    tab_u64(out, msg->sync.seq);
    if (msg->sync.minor > 0 && minor > 0) {
      if (!msg->sync.has_timestamp)
        return USHER_RING_FORMAT_INCOMPLETE;
      tab_u64(out, msg->sync.minor);
      tab_u64(out, msg->sync.timestamp);
      tab_u64(out, msg->sync.hosts_hash);
    }
    break;

  case USHER_RING_MSG_PING:
  case USHER_RING_MSG_PONG:
    if (msg->ping.has_values) {
      tab_i64(out, msg->ping.time);
      tab_u64(out, msg->ping.buffer_bytes);
    }
    break;

  case USHER_RING_MSG_QUIT:
    if (minor < USHER_RING_MINOR_QUIT)
      return USHER_RING_FORMAT_UNSUPPORTED;
    g_assert(msg->quit.reason != NULL);
    if (msg->quit.reason[0] != '\0')
      tab_escaped(out, msg->quit.reason);
    break;

  case USHER_RING_MSG_OPTIONS: {
    if (minor < USHER_RING_MINOR_OPTIONS)
      return USHER_RING_FORMAT_UNSUPPORTED;
    g_assert(msg->options.tokens != NULL);
    const char *cursor = msg->options.tokens;
    for (guint i = 0; i < msg->options.n_tokens; i++)
      tab_escaped(out, usher_ring_options_next(&cursor));
    break;
  }

  case USHER_RING_MSG_DONE:
    break;

  case USHER_RING_MSG_X_USHER_HEALTH:
    /* Sent only to peers that announced USHER_RING_OPTION_USHER_EXT; the caller checks. */
    g_assert(msg->health.failing != NULL && msg->health.downs != NULL);
    tab_addr(out, &msg->health.addr);
    tab_u64(out, msg->health.boot);
    tab_u64(out, msg->health.seq);
    tab_u64(out, msg->health.interval_ms);
    g_string_append_c(out, '\t');
    put_str(out, msg->health.failing[0] != '\0' ? msg->health.failing : "-");
    g_string_append_c(out, '\t');
    put_str(out, msg->health.downs[0] != '\0' ? msg->health.downs : "-");
    put_str(out, msg->health.complete ? "\t1" : "\t0");
    break;

  case USHER_RING_MSG_NONE:
  default:
    g_assert_not_reached();
  }
  return USHER_RING_FORMAT_OK;
}

UsherRingFormatResult
usher_ring_msg_format(const UsherRingMsg *msg, guint minor, GString *out)
{
  gsize start = out->len;
  UsherRingFormatResult res = format_body(msg, minor, out);
  if (res == USHER_RING_FORMAT_OK && out->len - start > USHER_RING_LINE_MAX)
    res = USHER_RING_FORMAT_TOO_LONG;
  if (res != USHER_RING_FORMAT_OK) {
    g_string_truncate(out, start);
    return res;
  }
  g_string_append_c(out, '\n');
  return USHER_RING_FORMAT_OK;
}

const char *
usher_ring_format_result_to_string(UsherRingFormatResult result)
{
  switch (result) {
  case USHER_RING_FORMAT_OK:
    return "ok";
  case USHER_RING_FORMAT_TOO_LONG:
    return "line too long for the peer";
  case USHER_RING_FORMAT_UNSUPPORTED:
    return "not supported by the peer's protocol version";
  case USHER_RING_FORMAT_INCOMPLETE:
    return "message incomplete";
  }
  return "(invalid result)";
}

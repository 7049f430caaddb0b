/* pop3-login.c - the POP3 pre-login reader (see pop3-login.h).
 *
 * Lines are cut at LF as they arrive; the reader keeps the bytes fed and an offset to the first
 * byte no event has taken yet. Every decision is made on a whole line, or, for the length
 * limits, on a prefix that already proves the whole line too long: that is what makes the
 * events the same however the input was split.
 */
#include "libcore/pop3-login.h"
#include "libcore/wipe.h"

#include <string.h>

/* Compact the buffer once this many taken bytes lie before the first pending one. */
#define COMPACT_AT 4096

#define WHY_LINE_TOO_LONG "Line too long."
#define WHY_SASL_TOO_LONG "SASL response too long."

struct UsherPop3Reader {
  GByteArray *buf; /* bytes fed; those before start are taken */
  gsize start;
  gsize scanned;      /* bytes after start known to hold no LF (so byte-wise feeding is linear) */
  gboolean sasl_next; /* the next line is a SASL response */
  const char *failed; /* why the reader failed, or NULL */
};

static const struct {
  const char *name;
  UsherPop3CmdType type;
} commands[] = {
    {"CAPA", USHER_POP3_CMD_CAPA}, {"USER", USHER_POP3_CMD_USER}, {"PASS", USHER_POP3_CMD_PASS},
    {"AUTH", USHER_POP3_CMD_AUTH}, {"STLS", USHER_POP3_CMD_STLS}, {"QUIT", USHER_POP3_CMD_QUIT},
    {"NOOP", USHER_POP3_CMD_NOOP},
};

void
usher_pop3_cmd_clear(UsherPop3Cmd *cmd)
{
  g_free(cmd->name);
  usher_wipe_free(cmd->arg); /* PASS's */
  usher_wipe_free(cmd->initial_response);
  memset(cmd, 0, sizeof(*cmd));
}

UsherPop3Reader *
usher_pop3_reader_new(void)
{
  UsherPop3Reader *reader = g_new0(UsherPop3Reader, 1);
  reader->buf = g_byte_array_new();
  return reader;
}

void
usher_pop3_reader_free(UsherPop3Reader *reader)
{
  if (reader == NULL)
    return;
  usher_bytes_wipe_unref(reader->buf);
  g_free(reader);
}

void
usher_pop3_reader_feed(UsherPop3Reader *reader, const void *data, gsize len)
{
  /* A failed reader is waiting to be closed: what the client still sends is dropped. */
  if (reader->failed != NULL || len == 0)
    return;
  g_assert(len <= G_MAXUINT - reader->buf->len);
  g_byte_array_append(reader->buf, data, (guint)len);
}

void
usher_pop3_reader_expect_sasl(UsherPop3Reader *reader)
{
  reader->sasl_next = TRUE;
}

gsize
usher_pop3_reader_pending(const UsherPop3Reader *reader)
{
  return reader->buf->len - reader->start;
}

const guint8 *
usher_pop3_reader_peek_pending(const UsherPop3Reader *reader, gsize *len_out)
{
  *len_out = reader->buf->len - reader->start;
  return reader->buf->data + reader->start;
}

const char *
usher_pop3_event_to_string(UsherPop3Event event)
{
  switch (event) {
  case USHER_POP3_NEED_MORE:
    return "NEED_MORE";
  case USHER_POP3_COMMAND:
    return "COMMAND";
  case USHER_POP3_SASL_LINE:
    return "SASL_LINE";
  case USHER_POP3_BAD:
    return "BAD";
  case USHER_POP3_FAIL:
    return "FAIL";
  }
  return "?";
}

/* An AUTH line may carry an initial response, so it gets the longer limit. Only the first five
 * bytes decide, so the answer is the same for any prefix long enough to break a limit. */
static gboolean
is_auth_line(const guint8 *line, gsize len)
{
  return len >= 5 && g_ascii_strncasecmp((const char *)line, "AUTH ", 5) == 0;
}

/* The longest line (line end not counted) the reader takes in its present state. */
static gsize
line_cap(const UsherPop3Reader *reader, const guint8 *line, gsize len)
{
  if (reader->sasl_next)
    return USHER_POP3_SASL_MAX;
  if (is_auth_line(line, len))
    return USHER_POP3_LINE_MAX + USHER_POP3_SASL_MAX;
  return USHER_POP3_LINE_MAX;
}

static UsherPop3Event
fail(UsherPop3Reader *reader, const char *why, const char **why_out)
{
  /* Nothing more will be parsed: release the buffer now rather than when the driver closes. */
  reader->failed = why;
  reader->start = 0;
  reader->scanned = 0;
  usher_wipe(reader->buf->data, reader->buf->len);
  g_byte_array_set_size(reader->buf, 0);
  *why_out = why;
  return USHER_POP3_FAIL;
}

static void
take(UsherPop3Reader *reader, gsize n)
{
  reader->start += n;
  reader->scanned = 0;
  if (reader->start == reader->buf->len) {
    usher_wipe(reader->buf->data, reader->buf->len);
    g_byte_array_set_size(reader->buf, 0);
    reader->start = 0;
  } else if (reader->start >= COMPACT_AT && reader->start * 2 >= reader->buf->len) {
    usher_bytes_drop_front(reader->buf, reader->start);
    reader->start = 0;
  }
}

static gboolean
mech_char_ok(char c)
{
  return g_ascii_isalnum(c) || c == '-' || c == '_';
}

static UsherPop3Event
parse_auth(const char *args, gsize args_len, UsherPop3Cmd *cmd, const char **why_out)
{
  /* "AUTH" alone, or "AUTH " and nothing: the mechanism list (Dovecot answers both). */
  if (args == NULL || args_len == 0)
    return USHER_POP3_COMMAND;
  const char *space = memchr(args, ' ', args_len);
  gsize mech_len = space != NULL ? (gsize)(space - args) : args_len;
  if (mech_len == 0 || mech_len > USHER_POP3_MECH_MAX) {
    *why_out = "Invalid SASL mechanism name.";
    return USHER_POP3_BAD;
  }
  for (gsize i = 0; i < mech_len; i++) {
    if (!mech_char_ok(args[i])) {
      *why_out = "Invalid SASL mechanism name.";
      return USHER_POP3_BAD;
    }
  }
  cmd->arg = g_ascii_strup(args, (gssize)mech_len);
  /* "AUTH PLAIN " with nothing after the space has no initial response, as for Dovecot. */
  if (space != NULL && args_len - mech_len - 1 > 0)
    cmd->initial_response = g_strndup(space + 1, args_len - mech_len - 1);
  return USHER_POP3_COMMAND;
}

static UsherPop3Event
parse_command(const char *line, gsize len, UsherPop3Cmd *cmd, const char **why_out)
{
  const char *space = memchr(line, ' ', len);
  gsize name_len = space != NULL ? (gsize)(space - line) : len;
  const char *args = space != NULL ? space + 1 : NULL;
  gsize args_len = space != NULL ? len - name_len - 1 : 0;

  char *name = g_ascii_strup(line, (gssize)name_len);
  UsherPop3CmdType type = USHER_POP3_CMD_OTHER;
  for (gsize i = 0; i < G_N_ELEMENTS(commands); i++) {
    if (strcmp(commands[i].name, name) == 0) {
      type = commands[i].type;
      break;
    }
  }

  UsherPop3Event event = USHER_POP3_COMMAND;
  switch (type) {
  case USHER_POP3_CMD_USER:
  case USHER_POP3_CMD_PASS:
    /* RFC 1939 requires the argument. Dovecot would take an empty one and fail later at the
     * passdb; refusing it here keeps an empty name out of the user hash. */
    if (args_len == 0) {
      *why_out = type == USHER_POP3_CMD_USER ? "No username given." : "No password given.";
      event = USHER_POP3_BAD;
      break;
    }
    cmd->arg = g_strndup(args, args_len);
    break;
  case USHER_POP3_CMD_AUTH:
    event = parse_auth(args, args_len, cmd, why_out);
    break;
  default:
    if (args != NULL)
      cmd->arg = g_strndup(args, args_len);
    break;
  }
  if (event != USHER_POP3_COMMAND) {
    g_free(name);
    usher_pop3_cmd_clear(cmd);
    return event;
  }
  cmd->type = type;
  cmd->name = name;
  return event;
}

UsherPop3Event
usher_pop3_reader_next(UsherPop3Reader *reader, UsherPop3Cmd *cmd_out, const char **why_out)
{
  memset(cmd_out, 0, sizeof(*cmd_out));
  *why_out = NULL;
  if (reader->failed != NULL) {
    *why_out = reader->failed;
    return USHER_POP3_FAIL;
  }

  gsize avail = reader->buf->len - reader->start;
  if (avail == 0)
    return USHER_POP3_NEED_MORE;
  const guint8 *p = reader->buf->data + reader->start;
  const guint8 *lf = memchr(p + reader->scanned, '\n', avail - reader->scanned);
  if (lf == NULL) {
    reader->scanned = avail;
    /* Even if the next byte were the LF and the last one here its CR, the line would be too
     * long: fail now instead of holding more. */
    if (avail > line_cap(reader, p, avail) + 1)
      return fail(reader, WHY_LINE_TOO_LONG, why_out);
    return USHER_POP3_NEED_MORE;
  }

  gsize len = (gsize)(lf - p);
  gsize line_bytes = len + 1;
  if (len > 0 && p[len - 1] == '\r')
    len--;
  if (len > line_cap(reader, p, len))
    return fail(reader, WHY_LINE_TOO_LONG, why_out);

  const char *line = (const char *)p;
  gboolean sasl = reader->sasl_next;
  reader->sasl_next = FALSE;

  if (!sasl && is_auth_line(p, len)) {
    /* The initial response is what follows "AUTH mech ": it has the SASL limit whatever the
     * mechanism looks like. */
    const char *mech = line + 5;
    const char *space = memchr(mech, ' ', len - 5);
    if (space != NULL && len - (gsize)(space + 1 - line) > USHER_POP3_SASL_MAX)
      return fail(reader, WHY_SASL_TOO_LONG, why_out);
  }

  UsherPop3Event event;
  if (memchr(line, '\0', len) != NULL) {
    *why_out = "NUL byte in the line.";
    event = USHER_POP3_BAD;
  } else if (sasl) {
    cmd_out->arg = g_strndup(line, len);
    event = USHER_POP3_SASL_LINE;
  } else {
    event = parse_command(line, len, cmd_out, why_out);
  }
  take(reader, line_bytes);
  return event;
}

/* smtp-cmd.c - see smtp-cmd.h. */
#include "libcore/smtp-cmd.h"
#include "libcore/wipe.h"

#include <string.h>

typedef enum {
  MODE_COMMAND = 0,
  MODE_DATA,
  MODE_BDAT,
} Mode;

/* Where a DATA body stands, to find its "<CRLF>.<CRLF>" across any split. */
typedef enum {
  DATA_MID_LINE = 0,
  DATA_LINE_START,
  DATA_DOT,    /* a '.' at the start of a line */
  DATA_DOT_CR, /* ".\r" at the start of a line */
} DataState;

struct UsherSmtpReader {
  GByteArray *buf;
  gsize off; /* handed out up to here */
  gsize max_line;
  Mode mode;
  gboolean skipping; /* dropping the rest of an overlong command line */
  DataState data_state;
  guint64 bdat_left;
  gboolean end_pending; /* BODY_END is the next event */
  gboolean wipe;        /* its lines may hold a password (submission): wipe what it drops */
  gsize reserved_at;    /* usher_smtp_reader_reserve: where the room starts (G_MAXSIZE: none) */
};

static const struct {
  const char *name;
  UsherSmtpVerb verb;
} verbs[] = {
  {"LHLO", USHER_SMTP_VERB_LHLO},         {"EHLO", USHER_SMTP_VERB_EHLO},
  {"HELO", USHER_SMTP_VERB_HELO},         {"MAIL", USHER_SMTP_VERB_MAIL},
  {"RCPT", USHER_SMTP_VERB_RCPT},         {"DATA", USHER_SMTP_VERB_DATA},
  {"BDAT", USHER_SMTP_VERB_BDAT},         {"RSET", USHER_SMTP_VERB_RSET},
  {"NOOP", USHER_SMTP_VERB_NOOP},         {"QUIT", USHER_SMTP_VERB_QUIT},
  {"VRFY", USHER_SMTP_VERB_VRFY},         {"HELP", USHER_SMTP_VERB_HELP},
  {"STARTTLS", USHER_SMTP_VERB_STARTTLS}, {"AUTH", USHER_SMTP_VERB_AUTH},
  {"XCLIENT", USHER_SMTP_VERB_XCLIENT},
};

void
usher_smtp_cmd_clear(UsherSmtpCmd *cmd)
{
  g_free(cmd->verb_text);
  usher_wipe_free(cmd->line); /* submission's AUTH lines */
  usher_wipe_free(cmd->arg);
  g_free(cmd->path);
  g_free(cmd->params);
  memset(cmd, 0, sizeof(*cmd));
}

/* "<path> params": the path inside the brackets (quoted local parts may hold '>' and spaces) and
 * what follows. FALSE if there are no brackets around a path. */
static gboolean
parse_path(const char *s, char **path_out, char **params_out)
{
  while (*s == ' ')
    s++;
  if (*s != '<')
    return FALSE;
  const char *start = ++s;
  gboolean quoted = FALSE;
  for (; *s != '\0'; s++) {
    if (quoted && *s == '\\' && s[1] != '\0')
      s++;
    else if (*s == '"')
      quoted = !quoted;
    else if (!quoted && *s == '>')
      break;
  }
  if (*s != '>')
    return FALSE;
  const char *path = start;
  gsize len = (gsize)(s - start);
  /* An obsolete source route ("@a,@b:user@example.org") is ignored (RFC 5321 4.1.1.3). */
  if (len > 0 && path[0] == '@') {
    const char *colon = memchr(path, ':', len);
    if (colon == NULL)
      return FALSE;
    len -= (gsize)(colon + 1 - path);
    path = colon + 1;
  }
  const char *rest = s + 1;
  if (*rest != '\0' && *rest != ' ')
    return FALSE;
  while (*rest == ' ')
    rest++;
  *path_out = g_strndup(path, len);
  *params_out = g_strdup(rest);
  return TRUE;
}

void
usher_smtp_parse_command(const char *line, gsize len, UsherSmtpCmd *cmd)
{
  memset(cmd, 0, sizeof(*cmd));
  g_autofree char *text = g_strndup(line, len); /* stops at a NUL byte: the rest is not read */
  const char *space = strchr(text, ' ');
  gsize verb_len = space != NULL ? (gsize)(space - text) : strlen(text);
  cmd->verb_text = g_strndup(text, MIN(verb_len, 32));
  cmd->line = g_strdup(text);
  const char *arg = space != NULL ? space + 1 : "";
  while (*arg == ' ')
    arg++;
  cmd->arg = g_strdup(arg);
  for (gsize i = 0; i < G_N_ELEMENTS(verbs); i++) {
    if (g_ascii_toupper(text[0]) == verbs[i].name[0] && strlen(verbs[i].name) == verb_len &&
        g_ascii_strncasecmp(text, verbs[i].name, verb_len) == 0) {
      cmd->verb = verbs[i].verb;
      break;
    }
  }

  switch (cmd->verb) {
  case USHER_SMTP_VERB_LHLO:
  case USHER_SMTP_VERB_EHLO:
  case USHER_SMTP_VERB_HELO:
    if (*arg == '\0')
      cmd->syntax_error = "A domain name is required";
    break;
  case USHER_SMTP_VERB_MAIL:
  case USHER_SMTP_VERB_RCPT: {
    const char *prefix = cmd->verb == USHER_SMTP_VERB_MAIL ? "FROM:" : "TO:";
    gsize plen = strlen(prefix);
    if (g_ascii_strncasecmp(arg, prefix, plen) != 0 ||
        !parse_path(arg + plen, &cmd->path, &cmd->params))
      cmd->syntax_error = cmd->verb == USHER_SMTP_VERB_MAIL ? "Invalid FROM: syntax, use FROM:<address>"
                                                            : "Invalid TO: syntax, use TO:<address>";
    else if (cmd->verb == USHER_SMTP_VERB_RCPT && cmd->path[0] == '\0')
      cmd->syntax_error = "A recipient address is required";
    break;
  }
  case USHER_SMTP_VERB_BDAT: {
    const char *p = arg;
    guint64 size = 0;
    gboolean digits = FALSE;
    for (; g_ascii_isdigit(*p); p++) {
      if (size > (G_MAXUINT64 - 9) / 10) {
        cmd->syntax_error = "The chunk size is too large";
        return;
      }
      size = size * 10 + (guint64)(*p - '0');
      digits = TRUE;
    }
    while (*p == ' ')
      p++;
    if (!digits)
      cmd->syntax_error = "Invalid BDAT syntax, use BDAT size [LAST]";
    else if (g_ascii_strcasecmp(p, "LAST") == 0)
      cmd->bdat_last = TRUE;
    else if (*p != '\0')
      cmd->syntax_error = "Invalid BDAT syntax, use BDAT size [LAST]";
    cmd->bdat_size = size;
    cmd->bdat_sized = digits;
    break;
  }
  case USHER_SMTP_VERB_DATA:
  case USHER_SMTP_VERB_RSET:
  case USHER_SMTP_VERB_QUIT:
  case USHER_SMTP_VERB_STARTTLS:
    if (*arg != '\0')
      cmd->syntax_error = "This command takes no parameters";
    break;
  default:
    break;
  }
}

UsherSmtpReader *
usher_smtp_reader_new(gsize max_line)
{
  UsherSmtpReader *r = g_new0(UsherSmtpReader, 1);
  r->buf = g_byte_array_new();
  r->max_line = max_line > 0 ? max_line : USHER_SMTP_LINE_MAX_DEFAULT;
  r->reserved_at = G_MAXSIZE;
  return r;
}

void
usher_smtp_reader_free(UsherSmtpReader *r)
{
  if (r == NULL)
    return;
  usher_bytes_wipe_unref(r->buf);
  g_free(r);
}

/* Drops what was handed out, before more comes in. */
static void
compact(UsherSmtpReader *r)
{
  if (r->off == 0)
    return;
  if (r->wipe)
    usher_bytes_drop_front(r->buf, r->off);
  else if (r->off == r->buf->len)
    g_byte_array_set_size(r->buf, 0); /* everything was used: the common case */
  else
    g_byte_array_remove_range(r->buf, 0, (guint)r->off); /* LMTP: message bytes */
  r->off = 0;
}

void
usher_smtp_reader_feed(UsherSmtpReader *r, const guint8 *data, gsize len)
{
  g_return_if_fail(r->reserved_at == G_MAXSIZE);
  compact(r);
  g_byte_array_append(r->buf, data, (guint)len);
}

guint8 *
usher_smtp_reader_reserve(UsherSmtpReader *r, gsize want)
{
  g_return_val_if_fail(r->reserved_at == G_MAXSIZE, NULL);
  compact(r);
  r->reserved_at = r->buf->len;
  g_byte_array_set_size(r->buf, (guint)(r->reserved_at + want));
  return r->buf->data + r->reserved_at;
}

void
usher_smtp_reader_commit(UsherSmtpReader *r, gsize len)
{
  g_return_if_fail(r->reserved_at != G_MAXSIZE && r->reserved_at + len <= r->buf->len);
  g_byte_array_set_size(r->buf, (guint)(r->reserved_at + len));
  r->reserved_at = G_MAXSIZE;
}

void
usher_smtp_reader_set_wipe(UsherSmtpReader *r, gboolean wipe)
{
  r->wipe = wipe;
}

void
usher_smtp_reader_expect_data(UsherSmtpReader *r)
{
  r->mode = MODE_DATA;
  r->data_state = DATA_LINE_START;
}

void
usher_smtp_reader_expect_bdat(UsherSmtpReader *r, guint64 size)
{
  r->bdat_left = size;
  if (size == 0)
    r->end_pending = TRUE;
  else
    r->mode = MODE_BDAT;
}

gsize
usher_smtp_reader_pending(const UsherSmtpReader *r)
{
  return r->buf->len - r->off;
}

const guint8 *
usher_smtp_reader_peek_pending(const UsherSmtpReader *r, gsize *len_out)
{
  *len_out = r->skipping ? 0 : r->buf->len - r->off;
  return r->buf->data + r->off;
}

/* Moves the DATA state over one byte; TRUE when it ends the terminator line. */
static gboolean
data_step(UsherSmtpReader *r, guint8 c)
{
  switch (r->data_state) {
  case DATA_LINE_START:
    r->data_state = c == '.' ? DATA_DOT : c == '\n' ? DATA_LINE_START : DATA_MID_LINE;
    return FALSE;
  case DATA_DOT:
    if (c == '\n')
      return TRUE;
    r->data_state = c == '\r' ? DATA_DOT_CR : DATA_MID_LINE; /* "..x" is a stuffed '.' */
    return FALSE;
  case DATA_DOT_CR:
    if (c == '\n')
      return TRUE;
    r->data_state = DATA_MID_LINE;
    return FALSE;
  case DATA_MID_LINE:
  default:
    if (c == '\n')
      r->data_state = DATA_LINE_START;
    return FALSE;
  }
}

gboolean
usher_smtp_reader_end_pending(const UsherSmtpReader *r)
{
  return r->end_pending;
}

UsherSmtpEvent
usher_smtp_reader_next(UsherSmtpReader *r, UsherSmtpCmd *cmd_out, const guint8 **data_out,
                       gsize *len_out)
{
  if (r->end_pending) {
    r->end_pending = FALSE;
    return USHER_SMTP_BODY_END;
  }
  const guint8 *base = r->buf->data + r->off;
  gsize avail = r->buf->len - r->off;
  if (avail == 0)
    return USHER_SMTP_NEED_MORE;

  if (r->mode == MODE_BDAT) {
    gsize n = (gsize)MIN((guint64)avail, r->bdat_left);
    r->bdat_left -= n;
    r->off += n;
    if (r->bdat_left == 0) {
      r->mode = MODE_COMMAND;
      r->end_pending = TRUE;
    }
    *data_out = base;
    *len_out = n;
    return USHER_SMTP_BODY;
  }

  if (r->mode == MODE_DATA) {
    gsize n = avail;
    gsize i = 0;
    while (i < avail) {
      if (r->data_state == DATA_MID_LINE) {
        /* Only a line's first bytes can end the message: jump to the next line. */
        const guint8 *nl = memchr(base + i, '\n', avail - i);
        if (nl == NULL)
          break;
        i = (gsize)(nl - base) + 1;
        r->data_state = DATA_LINE_START;
        continue;
      }
      if (data_step(r, base[i])) {
        n = i + 1;
        r->mode = MODE_COMMAND;
        r->end_pending = TRUE;
        break;
      }
      i++;
    }
    r->off += n;
    *data_out = base;
    *len_out = n;
    return USHER_SMTP_BODY;
  }

  const guint8 *nl = memchr(base, '\n', avail);
  if (nl == NULL) {
    if (r->skipping || avail > r->max_line + 1) { /* + 1: a CR may end it */
      r->skipping = TRUE; /* reported at the line's end, in order with the other answers */
      r->off = r->buf->len;
    }
    return USHER_SMTP_NEED_MORE;
  }
  gsize line_len = (gsize)(nl - base);
  r->off += line_len + 1;
  if (r->skipping) {
    r->skipping = FALSE;
    return USHER_SMTP_LINE_TOO_LONG;
  }
  if (line_len > 0 && base[line_len - 1] == '\r')
    line_len--;
  if (line_len > r->max_line)
    return USHER_SMTP_LINE_TOO_LONG;
  usher_smtp_parse_command((const char *)base, line_len, cmd_out);
  return USHER_SMTP_COMMAND;
}

gboolean
usher_smtp_reply_parse(const char *line, guint *code_out, gboolean *last_out,
                       const char **text_out)
{
  if (!g_ascii_isdigit(line[0]) || !g_ascii_isdigit(line[1]) || !g_ascii_isdigit(line[2]) ||
      line[0] < '2' || line[0] > '5')
    return FALSE;
  if (line[3] != '\0' && line[3] != ' ' && line[3] != '-')
    return FALSE;
  *code_out = (guint)((line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0'));
  *last_out = line[3] != '-';
  *text_out = line[3] == '\0' ? "" : line + 4;
  return TRUE;
}

char *
usher_smtp_recipient_user(const char *path, const char *delimiters)
{
  if (path == NULL || path[0] == '\0')
    return NULL;
  /* The domain holds no '@' and no quote: the last '@' outside quotes ends the local part. */
  const char *at = NULL;
  gboolean quoted = FALSE;
  for (const char *p = path; *p != '\0'; p++) {
    if (quoted && *p == '\\' && p[1] != '\0')
      p++;
    else if (*p == '"')
      quoted = !quoted;
    else if (!quoted && *p == '@')
      at = p;
  }
  gsize local_len = at != NULL ? (gsize)(at - path) : strlen(path);
  if (local_len == 0)
    return NULL;
  GString *local = g_string_sized_new(local_len + 32);
  if (local_len >= 2 && path[0] == '"' && path[local_len - 1] == '"') {
    for (gsize i = 1; i + 1 < local_len; i++) {
      if (path[i] == '\\' && i + 2 < local_len)
        i++;
      g_string_append_c(local, path[i]);
    }
  } else
    g_string_append_len(local, path, (gssize)local_len);
  if (delimiters != NULL && delimiters[0] != '\0' && local->len > 0) {
    /* A detail never leaves the local part empty: "+box@example.org" stays as it is. */
    gsize cut = strcspn(local->str + 1, delimiters) + 1;
    if (cut < local->len)
      g_string_truncate(local, cut);
  }
  if (local->len == 0) {
    g_string_free(local, TRUE);
    return NULL;
  }
  if (at != NULL)
    g_string_append(local, at);
  return g_string_free(local, FALSE);
}

/* imap-login.c - an IMAP client before login, sans-I/O (see imap-login.h).
 *
 * The reader parses a command one segment at a time: a segment is the bytes up to the next LF,
 * and a command is one segment, or several when literals split it ("{5}" ends a segment, five
 * bytes follow, then the rest of the line). Parsed arguments are kept across segments, so every
 * byte is looked at once whatever the split of the input. */
#include "libcore/imap-login.h"
#include "libcore/wipe.h"

#include <string.h>

typedef enum {
  ST_LINE = 0, /* reading a segment of a command line */
  ST_LITERAL,  /* reading literal bytes */
  ST_SASL,     /* the next line is a SASL response */
} State;

struct UsherImapReader {
  GByteArray *buf;
  gsize pos;     /* next byte not yet consumed */
  gsize scanned; /* bytes from pos known to hold no LF (in ST_LINE/ST_SASL) */
  State state;
  gboolean sasl_next;
  gboolean failed;
  /* The command being read */
  gboolean in_command;
  UsherImapCmd cmd;
  guint depth;        /* list nesting */
  gsize line_bytes;   /* of the command's segments so far, literals excluded */
  gsize literal_len;  /* ST_LITERAL: bytes expected */
  gsize literal_total; /* of the command's literals so far */
  gboolean literal_sync;
  gboolean literal_continued; /* CONTINUE was given for the current literal */
};

void
usher_imap_cmd_clear(UsherImapCmd *cmd)
{
  g_free(cmd->tag);
  g_free(cmd->name);
  if (cmd->args != NULL) {
    for (guint i = 0; i < cmd->args->len; i++) {
      UsherImapArg *a = &g_array_index(cmd->args, UsherImapArg, i);
      if (a->value != NULL)
        usher_wipe(a->value, a->len); /* a literal may hold NULs: its length, not strlen */
      g_free(a->value);
    }
    g_array_unref(cmd->args);
  }
  memset(cmd, 0, sizeof(*cmd));
}

UsherImapReader *
usher_imap_reader_new(void)
{
  UsherImapReader *r = g_new0(UsherImapReader, 1);
  r->buf = g_byte_array_new();
  return r;
}

void
usher_imap_reader_free(UsherImapReader *r)
{
  if (r == NULL)
    return;
  usher_imap_cmd_clear(&r->cmd);
  usher_bytes_wipe_unref(r->buf);
  g_free(r);
}

void
usher_imap_reader_feed(UsherImapReader *r, const void *data, gsize len)
{
  if (r->failed || len == 0)
    return;
  /* Drop what was consumed before growing. */
  if (r->pos > 0) {
    usher_bytes_drop_front(r->buf, r->pos);
    r->pos = 0;
  }
  g_byte_array_append(r->buf, data, (guint)len);
}

void
usher_imap_reader_expect_sasl(UsherImapReader *r)
{
  r->sasl_next = TRUE;
  if (r->state == ST_LINE && !r->in_command)
    r->state = ST_SASL;
}

gsize
usher_imap_reader_pending(const UsherImapReader *r)
{
  return r->buf->len - r->pos;
}

const guint8 *
usher_imap_reader_peek_pending(const UsherImapReader *r, gsize *len_out)
{
  *len_out = r->buf->len - r->pos;
  return r->buf->data + r->pos;
}

/* ---- Lexing ------------------------------------------------------------------------------------ */

/* What ends an atom, as Dovecot reads one: white space and controls, '(', ')', '{' and '"'. The
 * list wildcards '%' and '*', '\\' and ']' (RFC 9051 atom-specials) are accepted, as are bytes
 * >= 0x80: clients log in with `LOGIN user*master secret` (a master user) unquoted. */
static gboolean
atom_char(guint8 c)
{
  return c > 0x20 && c != 0x7f && c != '(' && c != ')' && c != '{' && c != '"';
}

/* A tag is strict (RFC 9051: ASTRING-CHAR except '+'): a line starting with '*' or '%' is
 * not a command. */
static gboolean
tag_char(guint8 c)
{
  return atom_char(c) && c != '+' && c != '%' && c != '*' && c != '\\';
}

static void
add_arg(UsherImapReader *r, UsherImapArgType type, const char *value, gsize len)
{
  UsherImapArg a = {type, NULL, len};
  if (value != NULL) {
    a.value = g_malloc(len + 1);
    memcpy(a.value, value, len);
    a.value[len] = '\0';
  }
  g_array_append_val(r->cmd.args, a);
}

static UsherImapCmdType
cmd_type(const char *name)
{
  static const struct {
    const char *name;
    UsherImapCmdType type;
  } known[] = {
    {"CAPABILITY", USHER_IMAP_CMD_CAPABILITY}, {"NOOP", USHER_IMAP_CMD_NOOP},
    {"LOGOUT", USHER_IMAP_CMD_LOGOUT},         {"ID", USHER_IMAP_CMD_ID},
    {"STARTTLS", USHER_IMAP_CMD_STARTTLS},     {"LOGIN", USHER_IMAP_CMD_LOGIN},
    {"AUTHENTICATE", USHER_IMAP_CMD_AUTHENTICATE},
  };
  for (gsize i = 0; i < G_N_ELEMENTS(known); i++)
    if (strcmp(known[i].name, name) == 0)
      return known[i].type;
  return USHER_IMAP_CMD_OTHER;
}

typedef enum {
  SEG_DONE,    /* the command is complete */
  SEG_LITERAL, /* the segment ended in a literal marker: read it, then another segment */
  SEG_BAD,     /* a syntax error: *why set */
  SEG_FAIL,    /* a limit: *why set */
} SegResult;

/* Parses one segment p[0..len) (without its line end) into r->cmd. */
static SegResult
parse_segment(UsherImapReader *r, const guint8 *p, gsize len, const char **why)
{
  gsize i = 0;
  if (!r->in_command) {
    r->in_command = TRUE;
    r->cmd.args = g_array_new(FALSE, FALSE, sizeof(UsherImapArg));
    while (i < len && tag_char(p[i]))
      i++;
    if (i == 0) {
      *why = "Error in IMAP command received by server: no tag";
      return SEG_BAD;
    }
    r->cmd.tag = g_strndup((const char *)p, i);
    if (i == len || p[i] != ' ') {
      *why = "Error in IMAP command received by server: no command name";
      return SEG_BAD;
    }
    gsize start = ++i;
    while (i < len && atom_char(p[i]))
      i++;
    if (i == start) {
      *why = "Error in IMAP command received by server: no command name";
      return SEG_BAD;
    }
    r->cmd.name = g_ascii_strup((const char *)p + start, (gssize)(i - start));
    r->cmd.type = cmd_type(r->cmd.name);
  }
  /* Arguments: each is preceded by a SP, except right after "(". A segment that follows a
   * literal goes on after an argument, so it starts with a SP, a ")" or the end of the line. */
  gboolean need_sep = TRUE;
  for (;;) {
    if (i == len) {
      if (r->depth != 0) {
        *why = "Error in IMAP command received by server: unclosed list";
        return SEG_BAD;
      }
      return SEG_DONE;
    }
    if (p[i] == ')') {
      if (r->depth == 0) {
        *why = "Error in IMAP command received by server: unexpected ')'";
        return SEG_BAD;
      }
      r->depth--;
      add_arg(r, USHER_IMAP_ARG_LIST_END, NULL, 0);
      i++;
      need_sep = TRUE;
      continue;
    }
    if (need_sep) {
      if (p[i] != ' ') {
        *why = "Error in IMAP command received by server: missing space";
        return SEG_BAD;
      }
      i++;
      if (i == len) {
        *why = "Error in IMAP command received by server: trailing space";
        return SEG_BAD;
      }
    }
    need_sep = TRUE;
    if (r->cmd.args->len >= USHER_IMAP_ARGS_MAX) {
      *why = "Too many arguments";
      return SEG_FAIL;
    }
    guint8 c = p[i];
    if (c == '(') {
      r->depth++;
      add_arg(r, USHER_IMAP_ARG_LIST_START, NULL, 0);
      i++;
      need_sep = FALSE;
      continue;
    }
    if (c == '"') {
      GString *s = g_string_new(NULL);
      i++;
      gboolean closed = FALSE;
      while (i < len) {
        if (p[i] == '"') {
          closed = TRUE;
          i++;
          break;
        }
        if (p[i] == '\\') {
          if (i + 1 == len || (p[i + 1] != '"' && p[i + 1] != '\\')) {
            g_string_free(s, TRUE);
            *why = "Error in IMAP command received by server: bad escape in a quoted string";
            return SEG_BAD;
          }
          i++;
        }
        g_string_append_c(s, (char)p[i]);
        i++;
      }
      if (!closed) {
        g_string_free(s, TRUE);
        *why = "Error in IMAP command received by server: unterminated quoted string";
        return SEG_BAD;
      }
      add_arg(r, USHER_IMAP_ARG_STRING, s->str, s->len);
      g_string_free(s, TRUE);
      continue;
    }
    if (c == '{') {
      gsize j = i + 1;
      guint64 n = 0;
      for (; j < len && g_ascii_isdigit(p[j]); j++)
        if (n <= USHER_IMAP_LITERAL_MAX) /* saturates: any bigger number is too big */
          n = n * 10 + (guint64)(p[j] - '0');
      gboolean plus = j < len && p[j] == '+';
      if (plus)
        j++;
      if (j == i + 1 + (plus ? 1 : 0) || j >= len || p[j] != '}' || j + 1 != len) {
        *why = "Error in IMAP command received by server: bad literal";
        return SEG_BAD;
      }
      if (n > USHER_IMAP_LITERAL_MAX) {
        *why = "Literal too large";
        return SEG_FAIL;
      }
      if (r->literal_total + n > USHER_IMAP_LITERALS_MAX) {
        *why = "Command too large";
        return SEG_FAIL;
      }
      r->literal_total += (gsize)n;
      r->literal_len = (gsize)n;
      r->literal_sync = !plus;
      r->literal_continued = FALSE;
      return SEG_LITERAL;
    }
    gsize start = i;
    while (i < len && atom_char(p[i]))
      i++;
    if (i == start) {
      *why = "Error in IMAP command received by server: unexpected character";
      return SEG_BAD;
    }
    if (i - start == 3 && g_ascii_strncasecmp((const char *)p + start, "NIL", 3) == 0)
      add_arg(r, USHER_IMAP_ARG_NIL, NULL, 0);
    else
      add_arg(r, USHER_IMAP_ARG_ATOM, (const char *)p + start, i - start);
  }
}

/* Ends the current command (or the bad line) and hands it out. */
static void
finish_command(UsherImapReader *r, UsherImapCmd *out)
{
  *out = r->cmd;
  memset(&r->cmd, 0, sizeof(r->cmd));
  r->in_command = FALSE;
  r->depth = 0;
  r->line_bytes = 0;
  r->literal_total = 0;
  r->state = r->sasl_next ? ST_SASL : ST_LINE;
}

static UsherImapEvent
fail(UsherImapReader *r, char **tag_out, const char **why_out, const char *why)
{
  r->failed = TRUE;
  *tag_out = g_strdup(r->cmd.tag != NULL ? r->cmd.tag : "*");
  *why_out = why;
  usher_imap_cmd_clear(&r->cmd);
  r->in_command = FALSE;
  r->literal_total = 0;
  usher_wipe(r->buf->data, r->buf->len);
  g_byte_array_set_size(r->buf, 0);
  r->pos = 0;
  r->scanned = 0;
  return USHER_IMAP_FAIL;
}

/* Finds the next LF from pos; returns its offset from pos, or -1 (and remembers how far it
 * looked, so each byte is scanned once). */
static gssize
find_lf(UsherImapReader *r)
{
  gsize avail = r->buf->len - r->pos;
  if (avail == r->scanned) {
    return -1; /* nothing new (and an empty array may have no data pointer for memchr) */
  }
  const guint8 *base = r->buf->data + r->pos;
  const guint8 *lf = memchr(base + r->scanned, '\n', avail - r->scanned);
  if (lf == NULL) {
    r->scanned = avail;
    return -1;
  }
  r->scanned = 0;
  return lf - base;
}

UsherImapEvent
usher_imap_reader_next(UsherImapReader *r, UsherImapCmd *cmd_out, char **tag_out,
                       const char **why_out)
{
  memset(cmd_out, 0, sizeof(*cmd_out));
  *tag_out = NULL;
  *why_out = NULL;
  if (r->failed) {
    *tag_out = g_strdup("*");
    *why_out = "Connection is closing";
    return USHER_IMAP_FAIL;
  }
  for (;;) {
    gsize avail = r->buf->len - r->pos;
    if (r->state == ST_LITERAL) {
      if (r->literal_sync && !r->literal_continued) {
        r->literal_continued = TRUE;
        return USHER_IMAP_CONTINUE;
      }
      if (avail < r->literal_len)
        return USHER_IMAP_NEED_MORE;
      add_arg(r, USHER_IMAP_ARG_STRING, (const char *)r->buf->data + r->pos, r->literal_len);
      r->pos += r->literal_len;
      r->state = ST_LINE;
      r->scanned = 0;
      continue;
    }
    gssize nl = find_lf(r);
    if (nl < 0) {
      if (r->line_bytes + avail > USHER_IMAP_LINE_MAX)
        return fail(r, tag_out, why_out, "Line too long");
      return USHER_IMAP_NEED_MORE;
    }
    const guint8 *seg = r->buf->data + r->pos;
    gsize seg_len = (gsize)nl;
    r->pos += (gsize)nl + 1;
    if (seg_len > 0 && seg[seg_len - 1] == '\r')
      seg_len--;
    r->line_bytes += seg_len;
    if (r->line_bytes > USHER_IMAP_LINE_MAX)
      return fail(r, tag_out, why_out, "Line too long");

    if (r->state == ST_SASL) {
      r->sasl_next = FALSE;
      r->cmd.args = g_array_new(FALSE, FALSE, sizeof(UsherImapArg));
      add_arg(r, USHER_IMAP_ARG_ATOM, (const char *)seg, seg_len);
      r->in_command = TRUE;
      finish_command(r, cmd_out);
      return USHER_IMAP_SASL_LINE;
    }
    const char *why = NULL;
    switch (parse_segment(r, seg, seg_len, &why)) {
    case SEG_DONE:
      finish_command(r, cmd_out);
      return USHER_IMAP_COMMAND;
    case SEG_LITERAL:
      r->state = ST_LITERAL;
      continue;
    case SEG_BAD: {
      UsherImapCmd dropped;
      *tag_out = g_strdup(r->cmd.tag != NULL ? r->cmd.tag : "*");
      *why_out = why;
      finish_command(r, &dropped);
      usher_imap_cmd_clear(&dropped);
      return USHER_IMAP_BAD;
    }
    case SEG_FAIL:
      return fail(r, tag_out, why_out, why);
    }
  }
}

gboolean
usher_imap_login_args(const UsherImapCmd *cmd, const char **user_out, gsize *user_len_out,
                      const char **pass_out, gsize *pass_len_out)
{
  if (cmd->args == NULL || cmd->args->len != 2)
    return FALSE;
  const UsherImapArg *u = &g_array_index(cmd->args, UsherImapArg, 0);
  const UsherImapArg *p = &g_array_index(cmd->args, UsherImapArg, 1);
  if ((u->type != USHER_IMAP_ARG_ATOM && u->type != USHER_IMAP_ARG_STRING) ||
      (p->type != USHER_IMAP_ARG_ATOM && p->type != USHER_IMAP_ARG_STRING))
    return FALSE;
  *user_out = u->value;
  *user_len_out = u->len;
  *pass_out = p->value;
  *pass_len_out = p->len;
  return TRUE;
}

/* ---- SASL ------------------------------------------------------------------------------------------- */

static const struct {
  const char *name;
  UsherSaslMech mech;
} sasl_mechs[] = {
  {"PLAIN", USHER_SASL_PLAIN},
  {"LOGIN", USHER_SASL_LOGIN},
  {"OAUTHBEARER", USHER_SASL_OAUTHBEARER},
  {"XOAUTH2", USHER_SASL_XOAUTH2},
};

UsherSaslMech
usher_sasl_mech_from_name(const char *name)
{
  for (gsize i = 0; i < G_N_ELEMENTS(sasl_mechs); i++)
    if (g_ascii_strcasecmp(sasl_mechs[i].name, name) == 0)
      return sasl_mechs[i].mech;
  return 0;
}

const char *
usher_sasl_mech_name(UsherSaslMech mech)
{
  for (gsize i = 0; i < G_N_ELEMENTS(sasl_mechs); i++)
    if (sasl_mechs[i].mech == mech)
      return sasl_mechs[i].name;
  return "";
}

/* RFC 5801 saslname: "=2C" is ',', "=3D" is '='; any other '=' is an error. */
static char *
gs2_decode(const guint8 *p, gsize len)
{
  GString *out = g_string_sized_new(len);
  for (gsize i = 0; i < len; i++) {
    if (p[i] != '=') {
      g_string_append_c(out, (char)p[i]);
      continue;
    }
    if (i + 2 < len && p[i + 1] == '2' && (p[i + 2] == 'C' || p[i + 2] == 'c')) {
      g_string_append_c(out, ',');
      i += 2;
    } else if (i + 2 < len && p[i + 1] == '3' && (p[i + 2] == 'D' || p[i + 2] == 'd')) {
      g_string_append_c(out, '=');
      i += 2;
    } else {
      g_string_free(out, TRUE);
      return NULL;
    }
  }
  return g_string_free(out, FALSE);
}

static gboolean
clean_name(const guint8 *p, gsize len)
{
  if (len == 0 || len > 1024)
    return FALSE;
  for (gsize i = 0; i < len; i++)
    if (p[i] < 0x20 || p[i] == 0x7f)
      return FALSE;
  return g_utf8_validate((const char *)p, (gssize)len, NULL);
}

gboolean
usher_sasl_base64_valid(const char *text)
{
  if (strcmp(text, "=") == 0)
    return TRUE;
  gsize len = strlen(text);
  if (len == 0 || len % 4 != 0)
    return FALSE;
  gsize pad = text[len - 1] == '=' ? (text[len - 2] == '=' ? 2 : 1) : 0;
  for (gsize i = 0; i < len - pad; i++) {
    char c = text[i];
    if (!g_ascii_isalnum(c) && c != '+' && c != '/')
      return FALSE;
  }
  return TRUE;
}

char *
usher_sasl_login_name(UsherSaslMech mech, const guint8 *msg, gsize len, const char **why_out)
{
  *why_out = NULL;
  if (len == 0)
    msg = (const guint8 *)""; /* the mem*() calls below want a pointer even for 0 bytes */
  switch (mech) {
  case USHER_SASL_PLAIN: {
    const guint8 *nul1 = memchr(msg, '\0', len);
    const guint8 *nul2 = nul1 != NULL ? memchr(nul1 + 1, '\0', len - (gsize)(nul1 + 1 - msg)) : NULL;
    if (nul2 == NULL) {
      *why_out = "PLAIN message is not authzid NUL authcid NUL password";
      return NULL;
    }
    gsize authz_len = (gsize)(nul1 - msg), authc_len = (gsize)(nul2 - nul1 - 1);
    const guint8 *name = authz_len > 0 ? msg : nul1 + 1;
    gsize name_len = authz_len > 0 ? authz_len : authc_len;
    if (!clean_name(name, name_len)) {
      *why_out = "PLAIN login name is empty or not printable UTF-8";
      return NULL;
    }
    return g_strndup((const char *)name, name_len);
  }
  case USHER_SASL_LOGIN:
    if (!clean_name(msg, len)) {
      *why_out = "LOGIN name is empty or not printable UTF-8";
      return NULL;
    }
    return g_strndup((const char *)msg, len);
  case USHER_SASL_OAUTHBEARER: {
    /* gs2-header: ("n" | "y" | "p=...") "," ["a=" saslname] "," ... */
    const guint8 *comma = memchr(msg, ',', len);
    if (comma == NULL || comma == msg) {
      *why_out = "OAUTHBEARER message has no GS2 header";
      return NULL;
    }
    const guint8 *a = comma + 1;
    gsize rest = len - (gsize)(a - msg);
    const guint8 *end = memchr(a, ',', rest);
    if (end == NULL || end - a < 3 || a[0] != 'a' || a[1] != '=') {
      *why_out = "OAUTHBEARER message names no user (a=USER)";
      return NULL;
    }
    char *name = gs2_decode(a + 2, (gsize)(end - a - 2));
    if (name == NULL || !clean_name((const guint8 *)name, strlen(name))) {
      g_free(name);
      *why_out = "OAUTHBEARER user name is malformed";
      return NULL;
    }
    return name;
  }
  case USHER_SASL_XOAUTH2: {
    static const char prefix[] = "user=";
    const guint8 *ctrl = memchr(msg, '\001', len);
    if (len < sizeof(prefix) || memcmp(msg, prefix, sizeof(prefix) - 1) != 0 || ctrl == NULL) {
      *why_out = "XOAUTH2 message is not user=USER ^A auth=... ^A ^A";
      return NULL;
    }
    const guint8 *name = msg + sizeof(prefix) - 1;
    gsize name_len = (gsize)(ctrl - name);
    if (!clean_name(name, name_len)) {
      *why_out = "XOAUTH2 user name is empty or not printable UTF-8";
      return NULL;
    }
    return g_strndup((const char *)name, name_len);
  }
  }
  *why_out = "unknown mechanism";
  return NULL;
}

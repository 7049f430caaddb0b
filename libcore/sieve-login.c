/* sieve-login.c - see sieve-login.h. */
#include "libcore/sieve-login.h"
#include "libcore/wipe.h"

#include <string.h>

struct UsherSieveReader {
  GByteArray *buf;
  gsize off;      /* consumed up to here */
  gsize scanned;  /* no line end between off and here: no complete line yet */
  gboolean failed;
};

typedef enum {
  PARSE_MORE = 0,
  PARSE_OK,
  PARSE_BAD,
  PARSE_FAIL,
} ParseResult;

void
usher_sieve_cmd_clear(UsherSieveCmd *cmd)
{
  g_clear_pointer(&cmd->name, g_free);
  if (cmd->args != NULL) /* AUTHENTICATE's hold the password */
    for (guint i = 0; i < cmd->args->len; i++)
      usher_wipe(g_ptr_array_index(cmd->args, i), strlen(g_ptr_array_index(cmd->args, i)));
  g_clear_pointer(&cmd->args, g_ptr_array_unref);
}

UsherSieveReader *
usher_sieve_reader_new(void)
{
  UsherSieveReader *r = g_new0(UsherSieveReader, 1);
  r->buf = g_byte_array_new();
  return r;
}

void
usher_sieve_reader_free(UsherSieveReader *r)
{
  if (r == NULL)
    return;
  usher_bytes_wipe_unref(r->buf);
  g_free(r);
}

void
usher_sieve_reader_feed(UsherSieveReader *r, const guint8 *data, gsize len)
{
  if (r->failed)
    return;
  if (r->off > 0) {
    usher_bytes_drop_front(r->buf, r->off);
    r->scanned -= MIN(r->scanned, r->off);
    r->off = 0;
  }
  g_byte_array_append(r->buf, data, (guint)len);
}

const guint8 *
usher_sieve_reader_peek_pending(const UsherSieveReader *r, gsize *len_out)
{
  *len_out = r->buf->len - r->off;
  return *len_out > 0 ? r->buf->data + r->off : (const guint8 *)"";
}

static gboolean
atom_char(guint8 c)
{
  return c > 0x20 && c < 0x7f && c != '"' && c != '{' && c != '}' && c != '(' && c != ')' &&
         c != '\\' && c != '%' && c != '*';
}

/* Parses one line at s[0..len): PARSE_OK with *used (through its line end) and cmd filled;
 * PARSE_BAD with *used through the end of the bad line (or 0 if that end is not here yet, then
 * PARSE_MORE is returned instead); PARSE_MORE; PARSE_FAIL past the limits. */
static ParseResult
parse_line(const guint8 *s, gsize len, gsize *used, UsherSieveCmd *cmd, const char **why)
{
  gsize p = 0;
  gboolean first = TRUE;
  cmd->args = g_ptr_array_new_with_free_func(g_free);
  for (;;) {
    if (p >= USHER_SIEVE_LINE_MAX)
      return PARSE_FAIL;
    if (p >= len)
      return PARSE_MORE;
    guint8 c = s[p];
    if (c == '\r' || c == '\n') {
      if (c == '\r') {
        if (p + 1 >= len)
          return PARSE_MORE;
        if (s[p + 1] != '\n') {
          *why = "a CR without LF";
          goto bad;
        }
        p++;
      }
      *used = p + 1;
      if (first) {
        *why = "an empty line";
        return PARSE_BAD;
      }
      return PARSE_OK;
    }
    if (!first) {
      if (c != ' ') {
        *why = "arguments are separated by a space";
        goto bad;
      }
      while (p < len && s[p] == ' ')
        p++;
      if (p >= len)
        return p >= USHER_SIEVE_LINE_MAX ? PARSE_FAIL : PARSE_MORE;
      c = s[p];
      if (c == '\r' || c == '\n')
        continue; /* trailing spaces */
    }
    if (cmd->args->len >= USHER_SIEVE_ARGS_MAX) {
      *why = "too many arguments";
      goto bad;
    }
    if (c == '"') {
      GString *str = g_string_new(NULL);
      gsize q = p + 1;
      for (;;) {
        if (q >= len || q >= USHER_SIEVE_LINE_MAX) {
          g_string_free(str, TRUE);
          return q >= USHER_SIEVE_LINE_MAX ? PARSE_FAIL : PARSE_MORE;
        }
        guint8 d = s[q];
        if (d == '"')
          break;
        if (d == '\\') {
          if (q + 1 >= len) {
            g_string_free(str, TRUE);
            return PARSE_MORE;
          }
          d = s[++q];
          if (d != '\\' && d != '"') {
            g_string_free(str, TRUE);
            p = q;
            *why = "a bad escape in a quoted string";
            goto bad;
          }
        } else if (d == '\r' || d == '\n' || d == '\0') {
          g_string_free(str, TRUE);
          p = q;
          *why = "a quoted string holds CR, LF or NUL";
          goto bad;
        }
        g_string_append_c(str, (char)d);
        q++;
      }
      p = q + 1;
      if (first)
        cmd->name = NULL; /* a SASL response */
      g_ptr_array_add(cmd->args, g_string_free(str, FALSE));
    } else if (c == '{') {
      gsize q = p + 1;
      guint64 n = 0;
      gboolean digits = FALSE;
      while (q < len && g_ascii_isdigit(s[q]) && n <= USHER_SIEVE_LINE_MAX) {
        n = n * 10 + (guint64)(s[q] - '0');
        digits = TRUE;
        q++;
      }
      if (n > USHER_SIEVE_LINE_MAX) {
        /* Judged at the line's end like any bad line (the reader looks again only when a line
         * end came, so a verdict here must not depend on how the bytes arrived). */
        p = q;
        *why = "a literal larger than a line may be";
        goto bad;
      }
      /* Each byte is judged as soon as it is here: a line that is already wrong is BAD now,
       * not once more bytes came (the caller looks again only after a new line end). */
      if (q >= len)
        return PARSE_MORE;
      if (!digits || s[q] != '+' || (q + 1 < len && s[q + 1] != '}')) {
        p = q;
        *why = "a literal is {N+} (non-synchronising) from a client";
        goto bad;
      }
      if (q + 2 >= len)
        return PARSE_MORE;
      q += 2;
      if (s[q] == '\r') {
        if (q + 1 >= len)
          return PARSE_MORE;
        q++;
      }
      if (s[q] != '\n') {
        p = q;
        *why = "a literal's size is followed by a line end";
        goto bad;
      }
      q++;
      if (n > USHER_SIEVE_LINE_MAX || q + n > USHER_SIEVE_LINE_MAX)
        return PARSE_FAIL;
      if (q + n > len)
        return PARSE_MORE;
      if (memchr(s + q, '\0', n) != NULL) {
        /* The literal's bytes are taken whole; the line ends after them. */
        p = q + n;
        *why = "a literal holds a NUL byte";
        goto bad;
      }
      g_ptr_array_add(cmd->args, g_strndup((const char *)s + q, n));
      p = q + n;
    } else if (atom_char(c)) {
      gsize q = p;
      while (q < len && atom_char(s[q]))
        q++;
      if (q >= len)
        return q >= USHER_SIEVE_LINE_MAX ? PARSE_FAIL : PARSE_MORE;
      char *atom = g_strndup((const char *)s + p, q - p);
      if (first) {
        cmd->name = g_ascii_strup(atom, -1);
        g_free(atom);
      } else
        g_ptr_array_add(cmd->args, atom);
      p = q;
    } else {
      *why = first ? "a command starts with its name" : "not an argument";
      goto bad;
    }
    first = FALSE;
  }
bad:
  /* Skip to the end of this line, if it ends within the limit (however the bytes came). */
  for (gsize q = p; q < len && q < USHER_SIEVE_LINE_MAX; q++) {
    if (s[q] == '\n') {
      *used = q + 1;
      return PARSE_BAD;
    }
  }
  return len >= USHER_SIEVE_LINE_MAX ? PARSE_FAIL : PARSE_MORE;
}

UsherSieveEvent
usher_sieve_reader_next(UsherSieveReader *r, UsherSieveCmd *cmd_out, const char **why_out)
{
  *why_out = NULL;
  memset(cmd_out, 0, sizeof(*cmd_out));
  if (r->failed) {
    *why_out = "Line too long";
    return USHER_SIEVE_FAIL;
  }
  gsize avail = r->buf->len - r->off;
  if (avail == 0)
    return USHER_SIEVE_NEED_MORE;
  /* A line (literals included) ends with LF: without a new one since the last look, nothing
   * can be complete. This keeps a client that sends a byte at a time from costing a parse of
   * the whole line per byte. */
  gsize from = MAX(r->scanned, r->off);
  if (memchr(r->buf->data + from, '\n', r->buf->len - from) == NULL) {
    r->scanned = r->buf->len;
    if (avail <= USHER_SIEVE_LINE_MAX)
      return USHER_SIEVE_NEED_MORE;
  }
  gsize used = 0;
  const char *why = NULL;
  ParseResult res = parse_line(r->buf->data + r->off, avail, &used, cmd_out, &why);
  switch (res) {
  case PARSE_OK:
    r->off += used;
    r->scanned = r->off;
    return USHER_SIEVE_COMMAND;
  case PARSE_BAD:
    usher_sieve_cmd_clear(cmd_out);
    r->off += used;
    r->scanned = r->off;
    *why_out = why;
    return USHER_SIEVE_BAD;
  case PARSE_FAIL:
    usher_sieve_cmd_clear(cmd_out);
    r->failed = TRUE;
    usher_wipe(r->buf->data, r->buf->len);
    g_byte_array_set_size(r->buf, 0);
    r->off = r->scanned = 0;
    *why_out = "Line too long";
    return USHER_SIEVE_FAIL;
  case PARSE_MORE:
  default:
    /* A literal that holds line ends: look again at the next one. */
    usher_sieve_cmd_clear(cmd_out);
    r->scanned = r->buf->len;
    return USHER_SIEVE_NEED_MORE;
  }
}

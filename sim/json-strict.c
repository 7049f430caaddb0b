/* json-strict.c - RFC 8259 JSON, checked strictly (see json-strict.h). */
#include "sim/json-strict.h"

#include <string.h>

#define DEPTH_MAX 64

typedef struct {
  const char *p, *end, *start;
  const char *source;
  GError **error;
  guint depth;
} Scan;

/* Line and column (in characters, from 1) of position at. */
static void
where(const Scan *s, const char *at, guint *line, guint *col)
{
  *line = 1;
  *col = 1;
  for (const char *c = s->start; c < at; c++) {
    if (*c == '\n') {
      (*line)++;
      *col = 1;
    } else if (((guchar)*c & 0xc0) != 0x80) {
      (*col)++;
    }
  }
}

static gboolean G_GNUC_PRINTF(3, 4)
bad(Scan *s, const char *at, const char *fmt, ...)
{
  va_list args;
  va_start(args, fmt);
  g_autofree char *msg = g_strdup_vprintf(fmt, args);
  va_end(args);
  guint line, col;
  where(s, at, &line, &col);
  g_set_error(s->error, SIM_JSON_ERROR, 0, "%s:%u:%u: %s (not valid JSON)", s->source, line, col,
              msg);
  return FALSE;
}

static void
skip_ws(Scan *s)
{
  while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
    s->p++;
}

/* What the byte at p is, for "found ..." in messages. */
static const char *
found(const Scan *s)
{
  if (s->p >= s->end)
    return "the end of the text";
  switch (*s->p) {
  case '\'':
    return "a single quote (JSON strings use double quotes)";
  case '/':
    return "'/' (JSON has no comments)";
  case '}':
    return "'}'";
  case ']':
    return "']'";
  case ',':
    return "','";
  case ':':
    return "':'";
  case '"':
    return "a string";
  default:
    break;
  }
  if (g_ascii_isdigit(*s->p) || *s->p == '-' || *s->p == '.' || *s->p == '+')
    return "a number";
  return g_ascii_isalpha(*s->p) ? "a word (only true, false and null are JSON words)"
                                : "an unexpected character";
}

static int
hex4(const char *p)
{
  int v = 0;
  for (int i = 0; i < 4; i++) {
    int d = g_ascii_xdigit_value(p[i]);
    if (d < 0)
      return -1;
    v = v * 16 + d;
  }
  return v;
}

/* A string at s->p ('"'); its unescaped text into out if not NULL. */
static gboolean
scan_string(Scan *s, GString *out)
{
  const char *open = s->p++;
  for (;;) {
    if (s->p >= s->end)
      return bad(s, open, "a string that is never closed");
    guchar c = (guchar)*s->p;
    if (c == '"') {
      s->p++;
      return TRUE;
    }
    if (c < 0x20)
      return bad(s, s->p, "a control character (0x%02x) inside a string: write it as \\u%04x", c,
                 c);
    if (c != '\\') {
      if (out != NULL)
        g_string_append_c(out, (char)c);
      s->p++;
      continue;
    }
    const char *esc = s->p;
    if (s->end - s->p < 2)
      return bad(s, esc, "a string that is never closed");
    char e = s->p[1];
    const char *simple = strchr("\"\\/bfnrt", e);
    if (e != '\0' && simple != NULL) {
      static const char plain[] = "\"\\/\b\f\n\r\t";
      if (out != NULL)
        g_string_append_c(out, plain[simple - "\"\\/bfnrt"]);
      s->p += 2;
      continue;
    }
    if (e != 'u')
      return bad(s, esc, "\\%c is not a JSON escape (\\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX)",
                 g_ascii_isprint(e) ? e : '?');
    int u = s->end - s->p >= 6 ? hex4(s->p + 2) : -1;
    if (u < 0)
      return bad(s, esc, "\\u must be followed by four hexadecimal digits");
    s->p += 6;
    gunichar ch = (gunichar)u;
    if (u >= 0xdc00 && u <= 0xdfff)
      return bad(s, esc, "\\u%04x is half of a surrogate pair, alone", u);
    if (u >= 0xd800 && u <= 0xdbff) {
      int lo = s->end - s->p >= 6 && s->p[0] == '\\' && s->p[1] == 'u' ? hex4(s->p + 2) : -1;
      if (lo < 0xdc00 || lo > 0xdfff)
        return bad(s, esc, "\\u%04x is half of a surrogate pair, alone", u);
      ch = 0x10000 + (((gunichar)u - 0xd800) << 10) + ((gunichar)lo - 0xdc00);
      s->p += 6;
    }
    if (ch == 0)
      return bad(s, esc, "\\u0000 (a NUL character) is not allowed here");
    if (out != NULL)
      g_string_append_unichar(out, ch);
  }
}

static gboolean
scan_number(Scan *s)
{
  const char *start = s->p;
  if (s->p < s->end && *s->p == '-')
    s->p++;
  if (s->p >= s->end || !g_ascii_isdigit(*s->p))
    return bad(s, start, "a number must start with a digit (or '-' and a digit)");
  if (*s->p == '0' && s->p + 1 < s->end && g_ascii_isdigit(s->p[1]))
    return bad(s, start, "a number may not start with 0 (JSON has no octal: write 100, not 0100)");
  while (s->p < s->end && g_ascii_isdigit(*s->p))
    s->p++;
  if (s->p < s->end && *s->p == '.') {
    s->p++;
    if (s->p >= s->end || !g_ascii_isdigit(*s->p))
      return bad(s, start, "a number's '.' must be followed by a digit");
    while (s->p < s->end && g_ascii_isdigit(*s->p))
      s->p++;
  }
  if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
    s->p++;
    if (s->p < s->end && (*s->p == '+' || *s->p == '-'))
      s->p++;
    if (s->p >= s->end || !g_ascii_isdigit(*s->p))
      return bad(s, start, "a number's exponent must have digits");
    while (s->p < s->end && g_ascii_isdigit(*s->p))
      s->p++;
  }
  if (s->p < s->end && (g_ascii_isalnum(*s->p) || *s->p == '.'))
    return bad(s, start, "not a number (JSON numbers are decimal: no 0x, no trailing letters)");
  /* A whole number past 64 bits would be read wrapped round (18446744073709551616 as -1). */
  gsize n = (gsize)(s->p - start);
  if (memchr(start, '.', n) == NULL && memchr(start, 'e', n) == NULL &&
      memchr(start, 'E', n) == NULL) {
    g_autofree char *text = g_strndup(start, n);
    gint64 v;
    if (!g_ascii_string_to_signed(text, 10, G_MININT64, G_MAXINT64, &v, NULL))
      return bad(s, start, "%s is too large a whole number (-9223372036854775808 to "
                           "9223372036854775807)", text);
  }
  return TRUE;
}

static gboolean scan_value(Scan *s);

typedef enum { ITEM_NEXT, ITEM_CLOSED, ITEM_BAD } ItemEnd;

/* After a member or an element: a ',' and more, or the closing character. */
static ItemEnd
after_item(Scan *s, char close, const char *what)
{
  skip_ws(s);
  if (s->p < s->end && *s->p == ',') {
    s->p++;
    skip_ws(s);
    if (s->p < s->end && *s->p == close) {
      (void)bad(s, s->p, "a ',' before '%c' (JSON has no trailing commas)", close);
      return ITEM_BAD;
    }
    return ITEM_NEXT;
  }
  if (s->p < s->end && *s->p == close) {
    s->p++;
    return ITEM_CLOSED;
  }
  (void)bad(s, s->p, "expected ',' or '%c' after %s, found %s", close, what, found(s));
  return ITEM_BAD;
}

static gboolean
scan_object(Scan *s)
{
  const char *open = s->p++;
  g_autoptr(GHashTable) keys = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  skip_ws(s);
  if (s->p < s->end && *s->p == '}') {
    s->p++;
    return TRUE;
  }
  for (;;) {
    skip_ws(s);
    if (s->p >= s->end)
      return bad(s, open, "an object that is never closed");
    if (*s->p != '"')
      return bad(s, s->p, "expected a member name in double quotes, found %s", found(s));
    const char *key_at = s->p;
    g_autoptr(GString) key = g_string_new(NULL);
    if (!scan_string(s, key))
      return FALSE;
    if (!g_hash_table_add(keys, g_strdup(key->str))) {
      g_autofree char *shown = g_strescape(key->str, NULL);
      return bad(s, key_at, "the key \"%s\" is given twice in one object", shown);
    }
    skip_ws(s);
    if (s->p >= s->end || *s->p != ':')
      return bad(s, s->p, "expected ':' after the member name, found %s", found(s));
    s->p++;
    skip_ws(s);
    if (!scan_value(s))
      return FALSE;
    ItemEnd e = after_item(s, '}', "a member");
    if (e != ITEM_NEXT)
      return e == ITEM_CLOSED;
  }
}

static gboolean
scan_array(Scan *s)
{
  const char *open = s->p++;
  skip_ws(s);
  if (s->p < s->end && *s->p == ']') {
    s->p++;
    return TRUE;
  }
  for (;;) {
    skip_ws(s);
    if (s->p >= s->end)
      return bad(s, open, "an array that is never closed");
    if (!scan_value(s))
      return FALSE;
    ItemEnd e = after_item(s, ']', "an element");
    if (e != ITEM_NEXT)
      return e == ITEM_CLOSED;
  }
}

static gboolean
scan_word(Scan *s, const char *word)
{
  gsize n = strlen(word);
  if ((gsize)(s->end - s->p) >= n && memcmp(s->p, word, n) == 0 &&
      (s->p + n == s->end || !g_ascii_isalnum(s->p[n]))) {
    s->p += n;
    return TRUE;
  }
  return bad(s, s->p, "expected a value, found %s", found(s));
}

static gboolean
scan_value(Scan *s)
{
  if (s->p >= s->end)
    return bad(s, s->p, "expected a value, found the end of the text");
  if (++s->depth > DEPTH_MAX)
    return bad(s, s->p, "nested more than %d deep", DEPTH_MAX);
  gboolean ok;
  switch (*s->p) {
  case '{':
    ok = scan_object(s);
    break;
  case '[':
    ok = scan_array(s);
    break;
  case '"':
    ok = scan_string(s, NULL);
    break;
  case 't':
    ok = scan_word(s, "true");
    break;
  case 'f':
    ok = scan_word(s, "false");
    break;
  case 'n':
    ok = scan_word(s, "null");
    break;
  default:
    ok = *s->p == '-' || g_ascii_isdigit(*s->p) ? scan_number(s)
                                                 : bad(s, s->p, "expected a value, found %s",
                                                       found(s));
    break;
  }
  s->depth--;
  return ok;
}

gboolean
sim_json_check(const char *data, gsize len, const char *source, GError **error)
{
  Scan s = {data, data + len, data, source, error, 0};
  const char *invalid = NULL;
  if (!g_utf8_validate_len(data, len, &invalid))
    return bad(&s, invalid,
               *invalid == '\0' ? "a NUL byte" : "bytes that are not UTF-8 (JSON text is UTF-8)");
  if (len >= 3 && memcmp(data, "\xef\xbb\xbf", 3) == 0)
    s.p += 3; /* a byte order mark: RFC 8259 lets a parser ignore it */
  skip_ws(&s);
  if (!scan_value(&s))
    return FALSE;
  skip_ws(&s);
  if (s.p < s.end)
    return bad(&s, s.p, "more text after the end of the JSON value (found %s)", found(&s));
  return TRUE;
}

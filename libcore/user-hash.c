/* user-hash.c - director_username_hash, compatible with Dovecot 2.3's mail_user_hash(). */
#include "libcore/user-hash.h"

#include "libcore/md5.h"

#include <string.h>

typedef enum {
  SEG_LITERAL,
  SEG_USER,   /* %u: the whole name */
  SEG_NAME,   /* %n: before the first '@' */
  SEG_DOMAIN, /* %d: after the first '@' */
} SegKind;

typedef enum {
  CASE_KEEP,
  CASE_LOWER,
  CASE_UPPER,
} CaseMap;

typedef struct {
  SegKind kind;
  CaseMap casemap;
  char *literal;
  gsize literal_len;
} Segment;

G_DEFINE_QUARK(usher-hash-format-error-quark, usher_hash_format_error)

struct UsherHashFormat {
  char *text;
  GArray *segments; /* Segment */
  /* Fast paths for the two common formats: the whole name, as is or lowercased. */
  gboolean whole_name;
  CaseMap whole_case;
};

static void
segment_clear(gpointer p)
{
  Segment *seg = p;
  g_free(seg->literal);
}

static void
add_literal(GArray *segments, GString *pending)
{
  if (pending->len == 0)
    return;
  Segment seg = {SEG_LITERAL, CASE_KEEP, g_strndup(pending->str, pending->len), pending->len};
  g_array_append_val(segments, seg);
  g_string_truncate(pending, 0);
}

static gboolean
var_from_name(const char *name, gsize len, SegKind *kind_out)
{
  if (len == 4 && memcmp(name, "user", 4) == 0)
    *kind_out = SEG_USER;
  else if (len == 8 && memcmp(name, "username", 8) == 0)
    *kind_out = SEG_NAME;
  else if (len == 6 && memcmp(name, "domain", 6) == 0)
    *kind_out = SEG_DOMAIN;
  else
    return FALSE;
  return TRUE;
}

UsherHashFormat *
usher_hash_format_new(const char *format, GError **error)
{
  g_autoptr(GArray) segments = g_array_new(FALSE, TRUE, sizeof(Segment));
  g_array_set_clear_func(segments, segment_clear);
  g_autoptr(GString) pending = g_string_new(NULL);

  for (const char *p = format; *p != '\0'; p++) {
    if (*p != '%') {
      g_string_append_c(pending, *p);
      continue;
    }
    const char *start = p;
    p++;
    if (*p == '%') {
      g_string_append_c(pending, '%');
      continue;
    }
    CaseMap casemap = CASE_KEEP;
    if (*p == 'L' || *p == 'U') {
      casemap = *p == 'L' ? CASE_LOWER : CASE_UPPER;
      p++;
    }
    SegKind kind;
    if (*p == 'u') {
      kind = SEG_USER;
    } else if (*p == 'n') {
      kind = SEG_NAME;
    } else if (*p == 'd') {
      kind = SEG_DOMAIN;
    } else if (*p == '{') {
      const char *close = strchr(p, '}');
      if (close == NULL || !var_from_name(p + 1, (gsize)(close - p - 1), &kind)) {
        g_set_error(error, USHER_HASH_FORMAT_ERROR, 0,
                    "username hash format \"%s\": unsupported variable at \"%.*s\" (supported: "
                    "%%u %%n %%d, %%{user} %%{username} %%{domain}, each with an optional L or U "
                    "modifier, and %%%%)",
                    format, close == NULL ? (int)strlen(start) : (int)(close - start + 1), start);
        return NULL;
      }
      p = close;
    } else {
      int shown = *p == '\0' ? (int)(p - start) : (int)(p - start + 1);
      g_set_error(error, USHER_HASH_FORMAT_ERROR, 0,
                  "username hash format \"%s\": unsupported variable \"%.*s\" (supported: %%u %%n "
                  "%%d, %%{user} %%{username} %%{domain}, each with an optional L or U modifier, "
                  "and %%%%)",
                  format, shown, start);
      return NULL;
    }
    add_literal(segments, pending);
    Segment seg = {kind, casemap, NULL, 0};
    g_array_append_val(segments, seg);
  }
  add_literal(segments, pending);
  gboolean variable = FALSE;
  for (guint i = 0; i < segments->len; i++)
    variable |= g_array_index(segments, Segment, i).kind != SEG_LITERAL;
  if (!variable) {
    /* Every name would hash alike: all users on one backend. Dovecot takes it; Usher does not. */
    g_set_error(error, USHER_HASH_FORMAT_ERROR, 0,
                "username hash format \"%s\" names no part of the user name (%%u, %%n, %%d, "
                "%%{user}, %%{username} or %%{domain}): every user would be placed on the same "
                "backend",
                format);
    return NULL;
  }

  UsherHashFormat *f = g_new0(UsherHashFormat, 1);
  f->text = g_strdup(format);
  f->segments = g_steal_pointer(&segments);
  if (f->segments->len == 1) {
    const Segment *seg = &g_array_index(f->segments, Segment, 0);
    if (seg->kind == SEG_USER) {
      f->whole_name = TRUE;
      f->whole_case = seg->casemap;
    }
  }
  return f;
}

void
usher_hash_format_free(UsherHashFormat *format)
{
  if (format == NULL)
    return;
  g_array_unref(format->segments);
  g_free(format->text);
  g_free(format);
}

const char *
usher_hash_format_get_text(const UsherHashFormat *format)
{
  return format->text;
}

/* Feeds bytes to MD5, ASCII case-mapped; bytes >= 0x80 pass through untouched (Dovecot uses
 * tolower() in the C locale). */
static void
md5_update_cased(UsherMd5 *md5, const char *data, gsize len, CaseMap casemap)
{
  if (casemap == CASE_KEEP) {
    usher_md5_update(md5, data, len);
    return;
  }
  char buf[256];
  while (len > 0) {
    gsize n = MIN(len, sizeof(buf));
    for (gsize i = 0; i < n; i++) {
      char c = data[i];
      if (casemap == CASE_LOWER && c >= 'A' && c <= 'Z')
        c = (char)(c + ('a' - 'A'));
      else if (casemap == CASE_UPPER && c >= 'a' && c <= 'z')
        c = (char)(c - ('a' - 'A'));
      buf[i] = c;
    }
    usher_md5_update(md5, buf, n);
    data += n;
    len -= n;
  }
}

static guint32
finish(UsherMd5 *md5)
{
  guint8 digest[16];
  usher_md5_final(md5, digest);
  guint32 h = usher_md5_prefix32(digest);
  return h == 0 ? 1 : h;
}

guint32
usher_hash_format_user(const UsherHashFormat *format, const char *name, gssize len)
{
  gsize n = len < 0 ? strlen(name) : (gsize)len;
  UsherMd5 md5;
  usher_md5_init(&md5);

  if (format->whole_name) {
    md5_update_cased(&md5, name, n, format->whole_case);
    return finish(&md5);
  }

  const char *at = memchr(name, '@', n);
  gsize local_len = at != NULL ? (gsize)(at - name) : n;
  const char *domain = at != NULL ? at + 1 : "";
  gsize domain_len = at != NULL ? n - local_len - 1 : 0;

  for (guint i = 0; i < format->segments->len; i++) {
    const Segment *seg = &g_array_index(format->segments, Segment, i);
    switch (seg->kind) {
    case SEG_LITERAL:
      usher_md5_update(&md5, seg->literal, seg->literal_len);
      break;
    case SEG_USER:
      md5_update_cased(&md5, name, n, seg->casemap);
      break;
    case SEG_NAME:
      md5_update_cased(&md5, name, local_len, seg->casemap);
      break;
    case SEG_DOMAIN:
      md5_update_cased(&md5, domain, domain_len, seg->casemap);
      break;
    }
  }
  return finish(&md5);
}

static void
append_cased(GString *out, const char *data, gsize len, CaseMap casemap)
{
  for (gsize i = 0; i < len; i++) {
    char c = data[i];
    if (casemap == CASE_LOWER && c >= 'A' && c <= 'Z')
      c = (char)(c + ('a' - 'A'));
    else if (casemap == CASE_UPPER && c >= 'a' && c <= 'z')
      c = (char)(c - ('a' - 'A'));
    g_string_append_c(out, c);
  }
}

char *
usher_hash_format_expand(const UsherHashFormat *format, const char *name, gssize len)
{
  gsize n = len < 0 ? strlen(name) : (gsize)len;
  GString *out = g_string_sized_new(n + 16);
  const char *at = memchr(name, '@', n);
  gsize local_len = at != NULL ? (gsize)(at - name) : n;
  const char *domain = at != NULL ? at + 1 : "";
  gsize domain_len = at != NULL ? n - local_len - 1 : 0;
  for (guint i = 0; i < format->segments->len; i++) {
    const Segment *seg = &g_array_index(format->segments, Segment, i);
    switch (seg->kind) {
    case SEG_LITERAL:
      g_string_append_len(out, seg->literal, (gssize)seg->literal_len);
      break;
    case SEG_USER:
      append_cased(out, name, n, seg->casemap);
      break;
    case SEG_NAME:
      append_cased(out, name, local_len, seg->casemap);
      break;
    case SEG_DOMAIN:
      append_cased(out, domain, domain_len, seg->casemap);
      break;
    }
  }
  return g_string_free(out, FALSE);
}

guint32
usher_user_hash(const char *name, gssize len, const char *format)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(UsherHashFormat) f = usher_hash_format_new(format, &error);
  g_assert_no_error(error);
  return usher_hash_format_user(f, name, len);
}

/* ---- Login hasher ------------------------------------------------------------------------------ */

struct UsherLoginHasher {
  UsherHashFormat *format;
  char separator; /* 0: none */
};

UsherLoginHasher *
usher_login_hasher_new(const char *format, const char *master_user_separator, GError **error)
{
  UsherHashFormat *f = usher_hash_format_new(format, error);
  if (f == NULL)
    return NULL;
  UsherLoginHasher *h = g_new0(UsherLoginHasher, 1);
  h->format = f;
  h->separator = master_user_separator != NULL ? master_user_separator[0] : '\0';
  return h;
}

void
usher_login_hasher_free(UsherLoginHasher *h)
{
  if (h == NULL)
    return;
  usher_hash_format_free(h->format);
  g_free(h);
}

gsize
usher_login_hasher_cut(const UsherLoginHasher *h, const char *login, gsize len)
{
  if (h->separator != '\0') {
    const char *sep = memchr(login, h->separator, len);
    if (sep != NULL)
      return (gsize)(sep - login);
  }
  return len;
}

guint32
usher_login_hasher_hash(const UsherLoginHasher *h, const char *login, gssize len)
{
  gsize n = len < 0 ? strlen(login) : (gsize)len;
  return usher_hash_format_user(h->format, login, (gssize)usher_login_hasher_cut(h, login, n));
}

guint32
usher_login_hasher_hash_whole(const UsherLoginHasher *h, const char *name, gssize len)
{
  return usher_hash_format_user(h->format, name, len);
}

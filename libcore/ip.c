/* ip.c - strict IP parsing and inet_ntop-compatible printing, without libc's resolver. */
#include "libcore/ip.h"

#include <string.h>

static gboolean
parse_ipv4(const char *s, gsize len, guint8 out[4])
{
  gsize pos = 0;
  for (guint part = 0; part < 4; part++) {
    if (part > 0) {
      if (pos >= len || s[pos] != '.')
        return FALSE;
      pos++;
    }
    guint value = 0;
    gsize digits = 0;
    while (pos < len && g_ascii_isdigit(s[pos])) {
      /* No leading zeros ("01" is octal to inet_aton and ambiguous): refuse them. */
      if (digits == 1 && value == 0)
        return FALSE;
      value = value * 10 + (guint)(s[pos] - '0');
      if (value > 255)
        return FALSE;
      digits++;
      pos++;
    }
    if (digits == 0)
      return FALSE;
    out[part] = (guint8)value;
  }
  return pos == len;
}

static int
hex_value(char c)
{
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

static gboolean
parse_ipv6(const char *s, gsize len, guint8 out[16])
{
  guint16 words[8] = {0};
  int n_words = 0;
  int gap_at = -1; /* index in words[] where "::" stands */
  gsize pos = 0;

  if (len < 2)
    return FALSE;
  if (s[0] == ':') {
    if (s[1] != ':')
      return FALSE;
    gap_at = 0;
    pos = 2;
    if (pos == len)
      goto done;
  }
  while (pos < len) {
    /* An IPv4 tail: only where two words remain to be filled. */
    gsize end = pos;
    while (end < len && s[end] != ':')
      end++;
    if (memchr(s + pos, '.', end - pos) != NULL) {
      if (end != len || n_words > 6)
        return FALSE;
      guint8 v4[4];
      if (!parse_ipv4(s + pos, len - pos, v4))
        return FALSE;
      words[n_words++] = (guint16)(v4[0] << 8 | v4[1]);
      words[n_words++] = (guint16)(v4[2] << 8 | v4[3]);
      pos = len;
      break;
    }
    if (end == pos || end - pos > 4 || n_words >= 8)
      return FALSE;
    guint value = 0;
    for (gsize i = pos; i < end; i++) {
      int h = hex_value(s[i]);
      if (h < 0)
        return FALSE;
      value = value << 4 | (guint)h;
    }
    words[n_words++] = (guint16)value;
    pos = end;
    if (pos == len)
      break;
    /* s[pos] == ':' */
    pos++;
    if (pos < len && s[pos] == ':') {
      if (gap_at >= 0)
        return FALSE;
      gap_at = n_words;
      pos++;
      if (pos == len)
        break;
    } else if (pos == len) {
      return FALSE; /* trailing single ':' */
    }
  }
done:
  if (gap_at >= 0) {
    if (n_words >= 8)
      return FALSE; /* "::" must stand for at least one zero word */
    int tail = n_words - gap_at;
    memmove(&words[8 - tail], &words[gap_at], (gsize)tail * sizeof(words[0]));
    memset(&words[gap_at], 0, (gsize)(8 - tail - gap_at) * sizeof(words[0]));
  } else if (n_words != 8) {
    return FALSE;
  }
  for (int i = 0; i < 8; i++) {
    out[2 * i] = (guint8)(words[i] >> 8);
    out[2 * i + 1] = (guint8)(words[i] & 0xff);
  }
  return TRUE;
}

gboolean
usher_ip_parse(const char *text, gssize len, UsherIp *ip_out)
{
  memset(ip_out, 0, sizeof(*ip_out));
  if (text == NULL)
    return FALSE;
  gsize n = len < 0 ? strlen(text) : (gsize)len;
  if (n == 0 || n > 64)
    return FALSE;
  if (text[0] == '[') {
    if (n < 3 || text[n - 1] != ']')
      return FALSE;
    text++;
    n -= 2;
    if (memchr(text, ':', n) == NULL)
      return FALSE; /* brackets are for IPv6 only */
  }
  if (memchr(text, ':', n) != NULL) {
    if (!parse_ipv6(text, n, ip_out->addr)) {
      memset(ip_out, 0, sizeof(*ip_out));
      return FALSE;
    }
    ip_out->family = USHER_IP_V6;
    return TRUE;
  }
  if (!parse_ipv4(text, n, ip_out->addr)) {
    memset(ip_out, 0, sizeof(*ip_out));
    return FALSE;
  }
  ip_out->family = USHER_IP_V4;
  return TRUE;
}

static char *
put_ipv4(char *p, const guint8 a[4])
{
  for (int i = 0; i < 4; i++) {
    if (i > 0)
      *p++ = '.';
    guint v = a[i];
    if (v >= 100)
      *p++ = (char)('0' + v / 100);
    if (v >= 10)
      *p++ = (char)('0' + v / 10 % 10);
    *p++ = (char)('0' + v % 10);
  }
  *p = '\0';
  return p;
}

gsize
usher_ip_format(const UsherIp *ip, char buf[USHER_IP_STRLEN])
{
  static const char hex[] = "0123456789abcdef";
  char *p = buf;

  if (ip->family == USHER_IP_V4)
    return (gsize)(put_ipv4(buf, ip->addr) - buf);
  if (ip->family != USHER_IP_V6) {
    buf[0] = '\0';
    return 0;
  }
  guint16 w[8];
  for (int i = 0; i < 8; i++)
    w[i] = (guint16)(ip->addr[2 * i] << 8 | ip->addr[2 * i + 1]);

  /* glibc's rule: compress the longest run of zero words (the first of equal runs), only if it
   * is at least two words long. */
  int best = -1, best_len = 0;
  for (int i = 0; i < 8;) {
    if (w[i] != 0) {
      i++;
      continue;
    }
    int j = i;
    while (j < 8 && w[j] == 0)
      j++;
    if (j - i > best_len) {
      best = i;
      best_len = j - i;
    }
    i = j;
  }
  if (best_len < 2)
    best = -1;

  for (int i = 0; i < 8; i++) {
    if (best >= 0 && i >= best && i < best + best_len) {
      if (i == best)
        *p++ = ':';
      continue;
    }
    if (i > 0)
      *p++ = ':';
    /* IPv4-compatible (::a.b.c.d) or IPv4-mapped (::ffff:a.b.c.d): dotted tail. */
    if (i == 6 && best == 0 && (best_len == 6 || (best_len == 5 && w[5] == 0xffff)))
      return (gsize)(put_ipv4(p, ip->addr + 12) - buf);
    guint v = w[i];
    gboolean started = FALSE;
    for (int shift = 12; shift >= 0; shift -= 4) {
      guint nib = (v >> shift) & 0xf;
      if (nib != 0 || started || shift == 0) {
        *p++ = hex[nib];
        started = TRUE;
      }
    }
  }
  if (best >= 0 && best + best_len == 8)
    *p++ = ':';
  *p = '\0';
  return (gsize)(p - buf);
}

const char *
usher_ip_to_string(const UsherIp *ip, char buf[USHER_IP_STRLEN])
{
  (void)usher_ip_format(ip, buf);
  return buf;
}

int
usher_ip_cmp(const UsherIp *a, const UsherIp *b)
{
  /* Linux: AF_INET (2) < AF_INET6 (10). */
  if (a->family != b->family)
    return a->family < b->family ? -1 : 1;
  return memcmp(a->addr, b->addr, a->family == USHER_IP_V4 ? 4 : 16);
}

gboolean
usher_ip_equal(const UsherIp *a, const UsherIp *b)
{
  return usher_ip_cmp(a, b) == 0;
}

guint32
usher_ip_dovecot_hash(const UsherIp *ip)
{
  if (ip->family == USHER_IP_V4) {
    /* The s_addr word exactly as it lies in memory, read as a host integer. */
    guint32 word;
    memcpy(&word, ip->addr, 4);
    return word;
  }
  guint32 h = 0;
  for (int i = 0; i < 16; i++) {
    h = (h << 4) + ip->addr[i];
    guint32 g = h & 0xf0000000u;
    if (g != 0) {
      h ^= g >> 24;
      h ^= g;
    }
  }
  return h;
}

guint
usher_ip_table_hash(gconstpointer p)
{
  const UsherIp *ip = p;
  /* FNV-1a over family and bytes: deterministic and good enough for small host tables. */
  guint32 h = 2166136261u ^ ip->family;
  h *= 16777619u;
  for (int i = 0; i < 16; i++) {
    h ^= ip->addr[i];
    h *= 16777619u;
  }
  return h;
}

gboolean
usher_ip_table_equal(gconstpointer a, gconstpointer b)
{
  return usher_ip_cmp(a, b) == 0;
}

/* ---- Networks ------------------------------------------------------------------------------- */

gboolean
usher_net_parse(const char *text, gssize len, UsherNet *net_out)
{
  memset(net_out, 0, sizeof(*net_out));
  gsize n = len < 0 ? strlen(text) : (gsize)len;
  const char *slash = memchr(text, '/', n);
  UsherIp ip;
  if (!usher_ip_parse(text, slash != NULL ? (gssize)(slash - text) : (gssize)n, &ip))
    return FALSE;
  guint max = ip.family == USHER_IP_V4 ? 32 : 128, bits = max;
  if (slash != NULL) {
    const char *p = slash + 1, *end = text + n;
    if (p == end || end - p > 3)
      return FALSE;
    bits = 0;
    for (; p < end; p++) {
      if (*p < '0' || *p > '9' || (bits == 0 && p > slash + 1))
        return FALSE; /* digits only, no leading zero */
      bits = bits * 10 + (guint)(*p - '0');
    }
    if (bits > max)
      return FALSE;
  }
  for (guint i = 0; i < max / 8; i++) {
    guint keep = bits >= (i + 1) * 8 ? 8 : bits > i * 8 ? bits - i * 8 : 0;
    guint8 mask = keep == 0 ? 0 : (guint8)(0xff << (8 - keep));
    if ((ip.addr[i] & (guint8)~mask) != 0)
      return FALSE; /* host bits set */
  }
  net_out->ip = ip;
  net_out->bits = (guint8)bits;
  return TRUE;
}

gboolean
usher_net_contains(const UsherNet *net, const UsherIp *ip)
{
  UsherIp v = *ip;
  static const guint8 mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (v.family == USHER_IP_V6 && net->ip.family == USHER_IP_V4 &&
      memcmp(v.addr, mapped, sizeof(mapped)) == 0) {
    memmove(v.addr, v.addr + 12, 4);
    memset(v.addr + 4, 0, 12);
    v.family = USHER_IP_V4;
  }
  if (v.family != net->ip.family)
    return FALSE;
  guint full = net->bits / 8, rest = net->bits % 8;
  if (memcmp(v.addr, net->ip.addr, full) != 0)
    return FALSE;
  if (rest == 0)
    return TRUE;
  guint8 mask = (guint8)(0xff << (8 - rest));
  return (v.addr[full] & mask) == net->ip.addr[full];
}

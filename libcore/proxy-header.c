/* proxy-header.c - PROXY protocol v1 and v2 headers: parse and format (see proxy-header.h).
 *
 * The parser looks at one byte at a time until the header's length is known (the LF of a v1
 * line, the length field of v2), so every decision is made at a fixed byte of the stream
 * whatever the feeds' sizes were: that is what makes the result split-invariant. The v2 address
 * block and TLVs are then taken in bulk and checked once complete.
 */
#include "libcore/proxy-header.h"

#include <string.h>

#define V2_FIXED_LEN 16
#define V2_VERSION 0x2
#define V2_CMD_LOCAL 0x0
#define V2_CMD_PROXY 0x1
#define V2_FAM_UNSPEC 0x00
#define V2_FAM_TCP4 0x11
#define V2_FAM_TCP6 0x21
#define V2_ADDRS_TCP4 12 /* two IPv4 addresses and two ports */
#define V2_ADDRS_TCP6 36
#define V2_TLV_HEAD 3 /* type and 16-bit length */

static const guint8 v2_signature[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                        0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
static const char v1_signature[] = "PROXY ";

struct UsherProxyHeader {
  GByteArray *buf; /* the header's bytes so far; released once the result is known */
  gsize v2_len;    /* v2: the whole header's length once its length field is read, else 0 */
  UsherProxyResult result;
  const char *why;     /* FAIL */
  UsherProxyInfo info; /* DONE */
};

UsherProxyHeader *
usher_proxy_header_new(void)
{
  UsherProxyHeader *parser = g_new0(UsherProxyHeader, 1);
  parser->buf = g_byte_array_sized_new(V2_FIXED_LEN);
  return parser;
}

void
usher_proxy_header_free(UsherProxyHeader *parser)
{
  if (parser == NULL)
    return;
  if (parser->buf != NULL)
    g_byte_array_unref(parser->buf);
  g_free(parser);
}

const UsherProxyInfo *
usher_proxy_header_info(const UsherProxyHeader *parser)
{
  return parser->result == USHER_PROXY_DONE ? &parser->info : NULL;
}

const char *
usher_proxy_header_why(const UsherProxyHeader *parser)
{
  return parser->result == USHER_PROXY_FAIL ? parser->why : NULL;
}

const char *
usher_proxy_result_to_string(UsherProxyResult result)
{
  switch (result) {
  case USHER_PROXY_NEED_MORE:
    return "NEED_MORE";
  case USHER_PROXY_DONE:
    return "DONE";
  case USHER_PROXY_FAIL:
    return "FAIL";
  }
  return "?";
}

static void
finish(UsherProxyHeader *parser, UsherProxyResult result, const char *why)
{
  parser->result = result;
  parser->why = why;
  if (result == USHER_PROXY_DONE)
    parser->info.header_len = parser->buf->len;
  else
    memset(&parser->info, 0, sizeof(parser->info));
  g_clear_pointer(&parser->buf, g_byte_array_unref);
}

/* ---- version 1 ------------------------------------------------------------------------------ */

/* Splits at single spaces into exactly n non-empty fields. */
static gboolean
split_fields(const char *s, gsize len, const char **fields, gsize *lens, guint n)
{
  guint i = 0;
  gsize start = 0;
  for (gsize pos = 0; pos <= len; pos++) {
    if (pos < len && s[pos] != ' ')
      continue;
    if (pos == start || i == n)
      return FALSE; /* an empty field (two spaces, or a space at either end), or too many */
    fields[i] = s + start;
    lens[i] = pos - start;
    i++;
    start = pos + 1;
  }
  return i == n;
}

static gboolean
parse_port(const char *s, gsize len, guint16 *port_out)
{
  if (len == 0 || len > 5)
    return FALSE;
  guint value = 0;
  for (gsize i = 0; i < len; i++) {
    if (!g_ascii_isdigit(s[i]))
      return FALSE;
    value = value * 10 + (guint)(s[i] - '0');
  }
  if (value > G_MAXUINT16)
    return FALSE;
  *port_out = (guint16)value;
  return TRUE;
}

static gboolean
parse_v1_addr(const char *s, gsize len, UsherIpFamily family, UsherIp *ip_out)
{
  /* usher_ip_parse also takes "[v6]", which the spec does not allow. */
  if (len == 0 || s[0] == '[')
    return FALSE;
  return usher_ip_parse(s, (gssize)len, ip_out) && ip_out->family == family;
}

/* The whole line is in buf, LF last. */
static void
finish_v1(UsherProxyHeader *parser)
{
  const char *line = (const char *)parser->buf->data;
  gsize n = parser->buf->len;
  if (n < 2 || line[n - 2] != '\r') {
    finish(parser, USHER_PROXY_FAIL, "PROXY v1 line does not end in CRLF");
    return;
  }
  const char *rest = line + strlen(v1_signature);
  gsize rest_len = n - 2 - strlen(v1_signature);
  UsherProxyInfo *info = &parser->info;
  memset(info, 0, sizeof(*info));
  info->version = 1;

  /* UNKNOWN: the receiver must ignore whatever follows it on the line. */
  if (rest_len >= 7 && memcmp(rest, "UNKNOWN", 7) == 0 && (rest_len == 7 || rest[7] == ' ')) {
    info->local = TRUE;
    finish(parser, USHER_PROXY_DONE, NULL);
    return;
  }
  UsherIpFamily ip_family;
  if (rest_len >= 5 && memcmp(rest, "TCP4 ", 5) == 0) {
    info->family = USHER_PROXY_FAM_TCP4;
    ip_family = USHER_IP_V4;
  } else if (rest_len >= 5 && memcmp(rest, "TCP6 ", 5) == 0) {
    info->family = USHER_PROXY_FAM_TCP6;
    ip_family = USHER_IP_V6;
  } else {
    finish(parser, USHER_PROXY_FAIL, "PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN");
    return;
  }
  const char *f[4];
  gsize flen[4];
  if (!split_fields(rest + 5, rest_len - 5, f, flen, 4)) {
    finish(parser, USHER_PROXY_FAIL, "PROXY v1 line does not have four address fields");
    return;
  }
  if (!parse_v1_addr(f[0], flen[0], ip_family, &info->src_ip) ||
      !parse_v1_addr(f[1], flen[1], ip_family, &info->dst_ip)) {
    finish(parser, USHER_PROXY_FAIL, "PROXY v1 address is not valid for its protocol");
    return;
  }
  if (!parse_port(f[2], flen[2], &info->src_port) || !parse_port(f[3], flen[3], &info->dst_port)) {
    finish(parser, USHER_PROXY_FAIL, "PROXY v1 port is not a number from 0 to 65535");
    return;
  }
  finish(parser, USHER_PROXY_DONE, NULL);
}

/* ---- version 2 ------------------------------------------------------------------------------ */

static guint16
get_be16(const guint8 *p)
{
  return (guint16)(p[0] << 8 | p[1]);
}

/* The whole header is in buf. */
static void
finish_v2(UsherProxyHeader *parser)
{
  const guint8 *h = parser->buf->data;
  gsize n = parser->buf->len;
  UsherProxyInfo *info = &parser->info;
  memset(info, 0, sizeof(*info));
  info->version = 2;

  /* LOCAL: the block, family included, is discarded unread (spec section 2.2). UNSPEC: the
   * receiver should ignore the address information, and has no way to tell TLVs from it. */
  if ((h[12] & 0x0f) == V2_CMD_LOCAL || h[13] == V2_FAM_UNSPEC) {
    info->local = TRUE;
    finish(parser, USHER_PROXY_DONE, NULL);
    return;
  }
  gsize pos = V2_FIXED_LEN;
  if (h[13] == V2_FAM_TCP4) {
    info->family = USHER_PROXY_FAM_TCP4;
    info->src_ip.family = info->dst_ip.family = USHER_IP_V4;
    memcpy(info->src_ip.addr, h + pos, 4);
    memcpy(info->dst_ip.addr, h + pos + 4, 4);
    pos += 8;
  } else {
    info->family = USHER_PROXY_FAM_TCP6;
    info->src_ip.family = info->dst_ip.family = USHER_IP_V6;
    memcpy(info->src_ip.addr, h + pos, 16);
    memcpy(info->dst_ip.addr, h + pos + 16, 16);
    pos += 32;
  }
  info->src_port = get_be16(h + pos);
  info->dst_port = get_be16(h + pos + 2);
  pos += 4;

  /* TLVs: each must fit in what is left. Their number is bounded by USHER_PROXY_V2_MAX. */
  while (pos < n) {
    if (n - pos < V2_TLV_HEAD || get_be16(h + pos + 1) > n - pos - V2_TLV_HEAD) {
      finish(parser, USHER_PROXY_FAIL, "PROXY v2 TLV runs past the header");
      return;
    }
    pos += V2_TLV_HEAD + get_be16(h + pos + 1);
  }
  finish(parser, USHER_PROXY_DONE, NULL);
}

/* Checks the v2 fixed part as its byte number n (1-based) arrives. */
static void
step_v2(UsherProxyHeader *parser)
{
  const guint8 *h = parser->buf->data;
  gsize n = parser->buf->len;
  guint8 b = h[n - 1];

  if (n <= sizeof(v2_signature)) {
    if (b != v2_signature[n - 1])
      finish(parser, USHER_PROXY_FAIL, "not a PROXY protocol header");
    return;
  }
  if (n == 13) {
    if (b >> 4 != V2_VERSION)
      finish(parser, USHER_PROXY_FAIL, "PROXY v2 header has an unknown version");
    else if ((b & 0x0f) != V2_CMD_LOCAL && (b & 0x0f) != V2_CMD_PROXY)
      finish(parser, USHER_PROXY_FAIL, "PROXY v2 header has an unknown command");
    return;
  }
  gboolean local = (h[12] & 0x0f) == V2_CMD_LOCAL;
  if (n == 14) {
    if (local || b == V2_FAM_UNSPEC || b == V2_FAM_TCP4 || b == V2_FAM_TCP6)
      return;
    /* UDP over IPv4 or IPv6, UNIX stream or datagram: valid, but not a TCP client. */
    if (b == 0x12 || b == 0x22 || b == 0x31 || b == 0x32)
      finish(parser, USHER_PROXY_FAIL, "PROXY v2 header is for UDP or UNIX, not TCP");
    else
      finish(parser, USHER_PROXY_FAIL, "PROXY v2 header has an invalid address family");
    return;
  }
  if (n == 16) {
    gsize len = get_be16(h + 14);
    if (V2_FIXED_LEN + len > USHER_PROXY_V2_MAX) {
      finish(parser, USHER_PROXY_FAIL, "PROXY v2 header is longer than Usher accepts");
      return;
    }
    gsize need = 0;
    if (!local && h[13] == V2_FAM_TCP4)
      need = V2_ADDRS_TCP4;
    else if (!local && h[13] == V2_FAM_TCP6)
      need = V2_ADDRS_TCP6;
    if (len < need) {
      finish(parser, USHER_PROXY_FAIL, "PROXY v2 length is too short for its addresses");
      return;
    }
    parser->v2_len = V2_FIXED_LEN + len;
    if (len == 0)
      finish_v2(parser);
  }
}

/* Checks a v1 line as its byte number n (1-based) arrives. */
static void
step_v1(UsherProxyHeader *parser)
{
  gsize n = parser->buf->len;
  guint8 b = parser->buf->data[n - 1];
  if (n <= strlen(v1_signature)) {
    if (b != (guint8)v1_signature[n - 1])
      finish(parser, USHER_PROXY_FAIL, "not a PROXY protocol header");
  } else if (b == '\n') {
    finish_v1(parser);
  } else if (n >= USHER_PROXY_V1_MAX) {
    finish(parser, USHER_PROXY_FAIL, "PROXY v1 line is longer than 107 bytes");
  }
}

UsherProxyResult
usher_proxy_header_feed(UsherProxyHeader *parser, const void *data, gsize len, gsize *used_out)
{
  const guint8 *p = data;
  gsize used = 0;
  while (used < len && parser->result == USHER_PROXY_NEED_MORE) {
    if (parser->v2_len > 0) {
      /* The length is known: take the rest of the block at once. */
      gsize n = MIN(len - used, parser->v2_len - parser->buf->len);
      g_byte_array_append(parser->buf, p + used, (guint)n);
      used += n;
      if (parser->buf->len == parser->v2_len)
        finish_v2(parser);
      continue;
    }
    g_byte_array_append(parser->buf, p + used, 1);
    used++;
    /* The first byte tells the version: 'P' for v1, CR for v2. */
    if (parser->buf->data[0] == v2_signature[0])
      step_v2(parser);
    else
      step_v1(parser);
  }
  *used_out = used;
  return parser->result;
}

/* ---- formatting ----------------------------------------------------------------------------- */

static gboolean
ip_known(const UsherIp *ip)
{
  return ip->family == USHER_IP_V4 || ip->family == USHER_IP_V6;
}

/* ip as IPv6: itself, or IPv4-mapped. */
static UsherIp
as_ipv6(const UsherIp *ip)
{
  if (ip->family == USHER_IP_V6)
    return *ip;
  UsherIp v6 = {.family = USHER_IP_V6};
  v6.addr[10] = 0xff;
  v6.addr[11] = 0xff;
  memcpy(v6.addr + 12, ip->addr, 4);
  return v6;
}

static void
append_be16(GByteArray *out, guint16 v)
{
  guint8 b[2] = {(guint8)(v >> 8), (guint8)(v & 0xff)};
  g_byte_array_append(out, b, 2);
}

void
usher_proxy_header_format_v2(const UsherIp *src_ip, guint16 src_port, const UsherIp *dst_ip,
                             guint16 dst_port, GByteArray *out)
{
  g_byte_array_append(out, v2_signature, sizeof(v2_signature));
  if (!ip_known(src_ip) || !ip_known(dst_ip)) {
    /* No addresses to give: LOCAL tells the backend to use the connection's own. */
    guint8 local[4] = {V2_VERSION << 4 | V2_CMD_LOCAL, V2_FAM_UNSPEC, 0, 0};
    g_byte_array_append(out, local, sizeof(local));
    return;
  }
  gboolean v4 = src_ip->family == USHER_IP_V4 && dst_ip->family == USHER_IP_V4;
  guint8 head[2] = {V2_VERSION << 4 | V2_CMD_PROXY, v4 ? V2_FAM_TCP4 : V2_FAM_TCP6};
  g_byte_array_append(out, head, sizeof(head));
  if (v4) {
    append_be16(out, V2_ADDRS_TCP4);
    g_byte_array_append(out, src_ip->addr, 4);
    g_byte_array_append(out, dst_ip->addr, 4);
  } else {
    UsherIp src6 = as_ipv6(src_ip), dst6 = as_ipv6(dst_ip);
    append_be16(out, V2_ADDRS_TCP6);
    g_byte_array_append(out, src6.addr, 16);
    g_byte_array_append(out, dst6.addr, 16);
  }
  append_be16(out, src_port);
  append_be16(out, dst_port);
}

void
usher_proxy_header_format_v1(const UsherIp *src_ip, guint16 src_port, const UsherIp *dst_ip,
                             guint16 dst_port, GByteArray *out)
{
  char line[USHER_PROXY_V1_MAX + 1];
  if (!ip_known(src_ip) || !ip_known(dst_ip)) {
    g_strlcpy(line, "PROXY UNKNOWN\r\n", sizeof(line));
  } else {
    gboolean v4 = src_ip->family == USHER_IP_V4 && dst_ip->family == USHER_IP_V4;
    UsherIp src = v4 ? *src_ip : as_ipv6(src_ip), dst = v4 ? *dst_ip : as_ipv6(dst_ip);
    char src_text[USHER_IP_STRLEN], dst_text[USHER_IP_STRLEN];
    g_snprintf(line, sizeof(line), "PROXY %s %s %s %u %u\r\n", v4 ? "TCP4" : "TCP6",
               usher_ip_to_string(&src, src_text), usher_ip_to_string(&dst, dst_text),
               (guint)src_port, (guint)dst_port);
  }
  g_byte_array_append(out, (const guint8 *)line, (guint)strlen(line));
}

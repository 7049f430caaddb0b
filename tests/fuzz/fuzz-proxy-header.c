/* fuzz-proxy-header.c - libFuzzer target for the PROXY protocol header parser and formatters.
 *
 * The input is the start of a connection. Three parsers take it: fed all at once, in chunks
 * whose sizes come from the data itself, and byte by byte. They must agree on the result, on
 * how many bytes the header took, and on every field of what it said. A header that parses is
 * formatted again (v2 and v1) and must parse back to the same addresses. Finally the input's
 * first bytes are read as two addresses and ports: their formatted headers, followed by the
 * whole input as the client's data, must parse back to those addresses (IPv4 mapped into IPv6
 * when the families differ) and take exactly the header's bytes.
 */
#include "libcore/proxy-header.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
check(gboolean ok, const char *what)
{
  if (!ok) {
    fprintf(stderr, "fuzz-proxy-header: %s\n", what);
    abort();
  }
}

typedef enum {
  FEED_WHOLE,
  FEED_CHUNKS,
  FEED_BYTES,
} FeedMode;

typedef struct {
  UsherProxyResult result;
  gsize used;
  UsherProxyInfo info;
  const char *why;
} Outcome;

static Outcome
parse(const uint8_t *data, size_t size, FeedMode mode)
{
  g_autoptr(UsherProxyHeader) parser = usher_proxy_header_new();
  Outcome o = {0};
  guint32 state = (guint32)size * 2654435761u;
  size_t pos = 0;
  for (;;) {
    size_t n = size - pos;
    if (mode == FEED_BYTES)
      n = MIN(n, 1);
    else if (mode == FEED_CHUNKS && pos < size) {
      state = state * 1664525u + 1013904223u + data[pos];
      n = MIN(n, (size_t)(1 + (state >> 25)));
    }
    gsize used = G_MAXSIZE;
    o.result = usher_proxy_header_feed(parser, data + pos, n, &used);
    check(used <= n, "used is at most what was fed");
    check(o.result != USHER_PROXY_NEED_MORE || used == n, "NEED_MORE takes everything");
    o.used += used;
    pos += n;
    if (o.result != USHER_PROXY_NEED_MORE || pos >= size)
      break;
  }
  check(usher_proxy_result_to_string(o.result)[0] != '?', "result name");
  const UsherProxyInfo *info = usher_proxy_header_info(parser);
  o.why = usher_proxy_header_why(parser);
  check((info != NULL) == (o.result == USHER_PROXY_DONE), "info exactly after DONE");
  check((o.why != NULL) == (o.result == USHER_PROXY_FAIL), "why exactly after FAIL");
  if (info != NULL)
    o.info = *info;
  if (o.result != USHER_PROXY_NEED_MORE) {
    gsize used = G_MAXSIZE;
    check(usher_proxy_header_feed(parser, "PROXY ", 6, &used) == o.result && used == 0,
          "the outcome sticks and takes nothing more");
  }
  return o;
}

static gboolean
info_equal(const UsherProxyInfo *a, const UsherProxyInfo *b)
{
  return a->version == b->version && a->local == b->local && a->family == b->family &&
         memcmp(&a->src_ip, &b->src_ip, sizeof(a->src_ip)) == 0 &&
         memcmp(&a->dst_ip, &b->dst_ip, sizeof(a->dst_ip)) == 0 && a->src_port == b->src_port &&
         a->dst_port == b->dst_port && a->header_len == b->header_len;
}

static void
check_outcome(const Outcome *o, size_t size)
{
  check(o->used <= size, "used within the input");
  if (o->result == USHER_PROXY_NEED_MORE) {
    check(o->used == size, "NEED_MORE took all");
    check(size < USHER_PROXY_V2_MAX, "a header cannot need more than USHER_PROXY_V2_MAX bytes");
    return;
  }
  check(o->used >= 1, "a decision takes at least one byte");
  if (o->result == USHER_PROXY_FAIL)
    return;
  const UsherProxyInfo *info = &o->info;
  check(info->header_len == o->used, "header_len is what was taken");
  check(info->version == 1 || info->version == 2, "version");
  if (info->version == 1)
    check(info->header_len <= USHER_PROXY_V1_MAX, "v1 length");
  else
    check(info->header_len >= 16 && info->header_len <= USHER_PROXY_V2_MAX, "v2 length");
  if (info->local) {
    check(info->family == USHER_PROXY_FAM_UNSPEC && info->src_ip.family == 0 &&
              info->dst_ip.family == 0 && info->src_port == 0 && info->dst_port == 0,
          "LOCAL has no addresses");
  } else {
    UsherIpFamily f = info->family == USHER_PROXY_FAM_TCP4 ? USHER_IP_V4 : USHER_IP_V6;
    check(info->family == USHER_PROXY_FAM_TCP4 || info->family == USHER_PROXY_FAM_TCP6, "a family");
    check(info->src_ip.family == f && info->dst_ip.family == f, "addresses in the family");
  }
}

/* Formats a header for src -> dst (v2 or v1), puts client bytes behind it, and checks that it
 * parses back to the expected addresses and takes exactly the header. */
static void
round_trip(const UsherIp *src, guint16 src_port, const UsherIp *dst, guint16 dst_port, gboolean v2,
           const uint8_t *client, size_t client_len)
{
  g_autoptr(GByteArray) out = g_byte_array_new();
  if (v2)
    usher_proxy_header_format_v2(src, src_port, dst, dst_port, out);
  else
    usher_proxy_header_format_v1(src, src_port, dst, dst_port, out);
  gsize header_len = out->len;
  check(header_len <= (v2 ? USHER_PROXY_V2_FORMAT_MAX : USHER_PROXY_V1_MAX), "formatted length");
  g_byte_array_append(out, client, (guint)client_len);

  Outcome o = parse(out->data, out->len, FEED_CHUNKS);
  check(o.result == USHER_PROXY_DONE, "a formatted header parses");
  check(o.used == header_len, "a formatted header takes exactly its bytes");
  check(o.info.version == (v2 ? 2 : 1), "formatted version");

  gboolean known = (src->family == USHER_IP_V4 || src->family == USHER_IP_V6) &&
                   (dst->family == USHER_IP_V4 || dst->family == USHER_IP_V6);
  if (!known) {
    check(o.info.local, "unknown addresses format as LOCAL/UNKNOWN");
    return;
  }
  check(!o.info.local, "known addresses are not LOCAL");
  check(o.info.src_port == src_port && o.info.dst_port == dst_port, "ports survive");
  if (src->family == USHER_IP_V4 && dst->family == USHER_IP_V4) {
    check(o.info.family == USHER_PROXY_FAM_TCP4, "IPv4 pair as TCP4");
    check(usher_ip_equal(&o.info.src_ip, src) && usher_ip_equal(&o.info.dst_ip, dst),
          "IPv4 addresses survive");
    return;
  }
  check(o.info.family == USHER_PROXY_FAM_TCP6, "a pair with IPv6 as TCP6");
  const UsherIp *want[2] = {src, dst};
  const UsherIp *got[2] = {&o.info.src_ip, &o.info.dst_ip};
  for (int i = 0; i < 2; i++) {
    UsherIp expect = *want[i];
    if (expect.family == USHER_IP_V4) {
      memset(&expect, 0, sizeof(expect));
      expect.family = USHER_IP_V6;
      expect.addr[10] = expect.addr[11] = 0xff;
      memcpy(expect.addr + 12, want[i]->addr, 4);
    }
    check(usher_ip_equal(got[i], &expect), "IPv6 (or mapped IPv4) addresses survive");
  }
}

/* An address from 17 input bytes: a family selector, then the address bytes. */
static UsherIp
ip_from(const uint8_t *p)
{
  UsherIp ip = {0};
  switch (p[0] % 3) {
  case 0:
    break; /* unknown */
  case 1:
    ip.family = USHER_IP_V4;
    memcpy(ip.addr, p + 1, 4);
    break;
  default:
    ip.family = USHER_IP_V6;
    memcpy(ip.addr, p + 1, 16);
    break;
  }
  return ip;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  Outcome whole = parse(data, size, FEED_WHOLE);
  check_outcome(&whole, size);
  const Outcome others[2] = {parse(data, size, FEED_CHUNKS), parse(data, size, FEED_BYTES)};
  for (int i = 0; i < 2; i++) {
    check(others[i].result == whole.result, "the result does not depend on the split");
    check(others[i].used == whole.used, "the bytes taken do not depend on the split");
    check(info_equal(&others[i].info, &whole.info), "the header does not depend on the split");
    check(g_strcmp0(others[i].why, whole.why) == 0, "the reason does not depend on the split");
  }

  if (whole.result == USHER_PROXY_DONE && !whole.info.local) {
    const UsherProxyInfo *info = &whole.info;
    round_trip(&info->src_ip, info->src_port, &info->dst_ip, info->dst_port, TRUE, data, size);
    round_trip(&info->src_ip, info->src_port, &info->dst_ip, info->dst_port, FALSE, data, size);
  }

  if (size >= 38) {
    UsherIp src = ip_from(data), dst = ip_from(data + 17);
    guint16 src_port = (guint16)(data[34] << 8 | data[35]);
    guint16 dst_port = (guint16)(data[36] << 8 | data[37]);
    round_trip(&src, src_port, &dst, dst_port, TRUE, data, size);
    round_trip(&src, src_port, &dst, dst_port, FALSE, data, size);
  }
  return 0;
}

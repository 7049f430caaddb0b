/* test-proxy-header.c - the PROXY protocol header: v1 lines and v2 headers built byte by byte
 * from the spec's layout, every refusal, each limit with input at it and one byte over, the
 * formatter's exact bytes, and for every sample the same result, addresses and byte counts
 * whether it is fed whole, split at any one offset, or byte by byte. */
#include "libcore/proxy-header.h"

#include <string.h>

#define S(text) (const guint8 *)text, sizeof(text) - 1
#define B(array) array, sizeof(array)

/* The v2 signature (spec section 2.2): \r\n\r\n\0\r\nQUIT\n */
#define SIG 0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A

/* What the client sends after the header: never taken by the parser. */
#define CLIENT 'a', '0', '0', '1', ' ', 'C', 'A', 'P', 'A', 'B', 'I', 'L', 'I', 'T', 'Y', '\r', '\n'

/* The vectors are laid out one field per line, as in the spec's section 2.2. */
/* clang-format off */

/* TCP over IPv4: 192.0.2.1:56324 -> 198.51.100.2:993. */
static const guint8 v2_tcp4[] = {
  SIG,
  0x21,                   /* version 2, command PROXY */
  0x11,                   /* AF_INET, STREAM */
  0x00, 0x0C,             /* 12 bytes follow */
  192, 0, 2, 1,           /* source address */
  198, 51, 100, 2,        /* destination address */
  0xDC, 0x04,             /* source port 56324 */
  0x03, 0xE1,             /* destination port 993 */
  CLIENT,
};

/* TCP over IPv6: [2001:db8::1]:50000 -> [2001:db8::2]:110. */
static const guint8 v2_tcp6[] = {
  SIG,
  0x21,                   /* version 2, command PROXY */
  0x21,                   /* AF_INET6, STREAM */
  0x00, 0x24,             /* 36 bytes follow */
  0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
  0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02,
  0xC3, 0x50,             /* 50000 */
  0x00, 0x6E,             /* 110 */
  CLIENT,
};

/* TCP4 10.0.0.7:12345 -> 10.0.0.8:110 with TLVs after the addresses; 12 + 14 + 3 + 18 + 7 = 54
 * bytes follow the fixed part. */
static const guint8 v2_tlvs[] = {
  SIG, 0x21, 0x11, 0x00, 0x36,
  10, 0, 0, 7,  10, 0, 0, 8,  0x30, 0x39,  0x00, 0x6E,
  0x02, 0x00, 0x0B, 'e', 'x', 'a', 'm', 'p', 'l', 'e', '.', 'c', 'o', 'm', /* AUTHORITY */
  0x04, 0x00, 0x00,                                                        /* NOOP, empty */
  0x20, 0x00, 0x0F,                                                        /* SSL, 15 bytes: */
  0x01,                                                                    /*   client: SSL */
  0x00, 0x00, 0x00, 0x00,                                                  /*   verify: ok */
  0x21, 0x00, 0x07, 'T', 'L', 'S', 'v', '1', '.', '3',                     /*   VERSION */
  0x05, 0x00, 0x04, 0xDE, 0xAD, 0xBE, 0xEF,                                /* UNIQUE_ID */
  CLIENT,
};

/* LOCAL (0x20) with UNSPEC (0x00) and no block: a health check by the balancer itself. */
static const guint8 v2_local[] = {SIG, 0x20, 0x00, 0x00, 0x00, CLIENT};
/* LOCAL naming TCP4 with a block: the block is skipped unread. */
static const guint8 v2_local_tcp4[] = {
  SIG, 0x20, 0x11, 0x00, 0x0C,
  192, 0, 2, 1,  198, 51, 100, 2,  0xDC, 0x04,  0x03, 0xE1,
  CLIENT,
};
/* LOCAL with a family byte PROXY may not use: ignored, as the spec says. */
static const guint8 v2_local_odd_family[] = {SIG, 0x20, 0xFF, 0x00, 0x03, 1, 2, 3, CLIENT};
/* PROXY with UNSPEC: no addresses; the bytes of the block are not looked at. */
static const guint8 v2_unspec[] = {SIG, 0x21, 0x00, 0x00, 0x02, 0xFF, 0xFF, CLIENT};

/* TLVs that do not fit. 14 bytes follow: the addresses and 2 bytes of a 3-byte TLV head. */
static const guint8 tlv_short[] = {
  SIG, 0x21, 0x11, 0x00, 0x0E,
  192, 0, 2, 1,  198, 51, 100, 2,  0xDC, 0x04,  0x03, 0xE1,
  0x04, 0x00,
};
/* 16 bytes follow: the addresses and an AUTHORITY TLV of 2 bytes that has only 1 in the
 * header ("yzw" would be the client's). */
static const guint8 tlv_long[] = {
  SIG, 0x21, 0x11, 0x00, 0x10,
  192, 0, 2, 1,  198, 51, 100, 2,  0xDC, 0x04,  0x03, 0xE1,
  0x02, 0x00, 0x02, 'x',
  'y', 'z', 'w',
};

/* What format_v2 writes for 192.0.2.1:80 -> [2001:db8::2]:110: TCP6, IPv4-mapped source. */
static const guint8 v2_mixed[] = {
  SIG, 0x21, 0x21, 0x00, 0x24,
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 192, 0, 2, 1,
  0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02,
  0x00, 0x50,
  0x00, 0x6E,
};

/* clang-format on */

/* Feeds data in chunks (first `first` bytes, then `step` at a time, 0 = the rest) until the
 * parser decides, and describes the outcome: result, bytes taken in all, and what it said. */
static char *
run(const guint8 *data, gsize len, gsize first, gsize step)
{
  g_autoptr(UsherProxyHeader) parser = usher_proxy_header_new();
  UsherProxyResult result = USHER_PROXY_NEED_MORE;
  gsize pos = 0, taken = 0;
  gsize n = MIN(first, len);
  for (;;) {
    gsize used = 99999;
    result = usher_proxy_header_feed(parser, data + pos, n, &used);
    g_assert_cmpuint(used, <=, n);
    taken += used;
    pos += n;
    if (result != USHER_PROXY_NEED_MORE) {
      g_assert_cmpuint(used, >, 0);
      break;
    }
    g_assert_cmpuint(used, ==, n);
    if (pos >= len)
      break;
    n = step == 0 ? len - pos : MIN(step, len - pos);
  }
  if (result != USHER_PROXY_NEED_MORE) {
    /* The outcome sticks, and nothing more is taken. */
    gsize used = 99999;
    g_assert_cmpint(usher_proxy_header_feed(parser, "PROXY ", 6, &used), ==, result);
    g_assert_cmpuint(used, ==, 0);
  }

  const UsherProxyInfo *info = usher_proxy_header_info(parser);
  const char *why = usher_proxy_header_why(parser);
  g_assert_true((info != NULL) == (result == USHER_PROXY_DONE));
  g_assert_true((why != NULL) == (result == USHER_PROXY_FAIL));
  GString *out = g_string_new(usher_proxy_result_to_string(result));
  g_string_append_printf(out, " used=%" G_GSIZE_FORMAT, taken);
  if (info != NULL) {
    char src[USHER_IP_STRLEN], dst[USHER_IP_STRLEN];
    g_assert_cmpuint(info->header_len, ==, taken);
    if (info->local) {
      g_assert_cmpint(info->family, ==, USHER_PROXY_FAM_UNSPEC);
      g_assert_cmpint(info->src_ip.family, ==, 0);
      g_assert_cmpint(info->dst_ip.family, ==, 0);
      g_assert_cmpuint(info->src_port, ==, 0);
      g_assert_cmpuint(info->dst_port, ==, 0);
    }
    g_string_append_printf(out, " v%u%s fam=%d %s:%u %s:%u", info->version,
                           info->local ? " local" : "", info->family,
                           usher_ip_to_string(&info->src_ip, src), info->src_port,
                           usher_ip_to_string(&info->dst_ip, dst), info->dst_port);
  }
  if (why != NULL)
    g_string_append_printf(out, " %s", why);
  return g_string_free(out, FALSE);
}

static void
check(const guint8 *data, gsize len, const char *expect)
{
  g_autofree char *whole = run(data, len, len, 0);
  for (gsize cut = 0; cut <= len; cut++) {
    g_autofree char *split = run(data, len, cut, 0);
    if (strcmp(split, whole) != 0)
      g_error("split at %" G_GSIZE_FORMAT " gives \"%s\" instead of \"%s\"", cut, split, whole);
  }
  g_autofree char *bytewise = run(data, len, 0, 1);
  g_assert_cmpstr(bytewise, ==, whole);
  g_assert_cmpstr(whole, ==, expect);
}

static void
test_v2(void)
{
  check(B(v2_tcp4), "DONE used=28 v2 fam=1 192.0.2.1:56324 198.51.100.2:993");
  check(B(v2_tcp6), "DONE used=52 v2 fam=2 2001:db8::1:50000 2001:db8::2:110");
  check(B(v2_tlvs), "DONE used=70 v2 fam=1 10.0.0.7:12345 10.0.0.8:110");
  check(B(v2_local), "DONE used=16 v2 local fam=0 :0 :0");
  check(B(v2_local_tcp4), "DONE used=28 v2 local fam=0 :0 :0");
  check(B(v2_local_odd_family), "DONE used=19 v2 local fam=0 :0 :0");
  check(B(v2_unspec), "DONE used=18 v2 local fam=0 :0 :0");
  /* A header in pieces, not complete yet. */
  check(v2_tcp4, 27, "NEED_MORE used=27");
  check(v2_tcp4, 16, "NEED_MORE used=16");
  check(v2_tcp4, 0, "NEED_MORE used=0");
}

/* A copy of sample with byte i set to value; the caller frees it. */
static guint8 *
with_byte(const guint8 *sample, gsize len, gsize i, guint8 value)
{
  guint8 *copy = g_memdup2(sample, len);
  copy[i] = value;
  return copy;
}

static void
check_byte(const guint8 *sample, gsize len, gsize i, guint8 value, const char *expect)
{
  g_autofree guint8 *copy = with_byte(sample, len, i, value);
  check(copy, len, expect);
}

static void
test_v2_refused(void)
{
  /* Every signature byte is checked, and the header fails at the first wrong one. Byte 0 that
   * is neither CR nor 'P' is not a header at all. */
  for (gsize i = 0; i < 12; i++) {
    g_autofree char *expect =
      g_strdup_printf("FAIL used=%" G_GSIZE_FORMAT " not a PROXY protocol header", i + 1);
    check_byte(B(v2_tcp4), i, v2_tcp4[i] ^ 0x40, expect);
  }
  /* Version: only 2 (0x1_ is not "v1 in binary"; there is none). Command: LOCAL or PROXY. */
  check_byte(B(v2_tcp4), 12, 0x11, "FAIL used=13 PROXY v2 header has an unknown version");
  check_byte(B(v2_tcp4), 12, 0x31, "FAIL used=13 PROXY v2 header has an unknown version");
  check_byte(B(v2_tcp4), 12, 0x01, "FAIL used=13 PROXY v2 header has an unknown version");
  check_byte(B(v2_tcp4), 12, 0x22, "FAIL used=13 PROXY v2 header has an unknown command");
  check_byte(B(v2_tcp4), 12, 0x2F, "FAIL used=13 PROXY v2 header has an unknown command");
  /* Families: UDP and UNIX are valid but not for Usher; other values are invalid (spec). */
  static const guint8 not_tcp[] = {0x12, 0x22, 0x31, 0x32};
  for (gsize i = 0; i < G_N_ELEMENTS(not_tcp); i++)
    check_byte(B(v2_tcp4), 13, not_tcp[i],
               "FAIL used=14 PROXY v2 header is for UDP or UNIX, not TCP");
  static const guint8 invalid[] = {0x01, 0x10, 0x13, 0x20, 0x30, 0x41, 0xFF};
  for (gsize i = 0; i < G_N_ELEMENTS(invalid); i++)
    check_byte(B(v2_tcp4), 13, invalid[i],
               "FAIL used=14 PROXY v2 header has an invalid address family");
  /* The length must hold the address block. */
  check_byte(B(v2_tcp4), 15, 11, "FAIL used=16 PROXY v2 length is too short for its addresses");
  check_byte(B(v2_tcp4), 15, 0, "FAIL used=16 PROXY v2 length is too short for its addresses");
  check_byte(B(v2_tcp6), 15, 35, "FAIL used=16 PROXY v2 length is too short for its addresses");
  /* A TCP4 block with the IPv6 family byte: the length (12) is too short for it. */
  check_byte(B(v2_tcp4), 13, 0x21, "FAIL used=16 PROXY v2 length is too short for its addresses");
  /* TLVs that do not fit: a head cut short, a value past the end. */
  check(B(tlv_short), "FAIL used=30 PROXY v2 TLV runs past the header");
  check(B(tlv_long), "FAIL used=32 PROXY v2 TLV runs past the header");
  /* The same TLV in a longer header fits. */
  check_byte(B(tlv_long), 15, 0x11, "DONE used=33 v2 fam=1 192.0.2.1:56324 198.51.100.2:993");
  /* Not a header at all: data from a client that connected past the balancer. */
  check(S("a001 CAPABILITY\r\n"), "FAIL used=1 not a PROXY protocol header");
  check(S("GET / HTTP/1.1\r\n"), "FAIL used=1 not a PROXY protocol header");
  check(S("\r\n"), "NEED_MORE used=2");
  check(S("\r\na001 LOGIN"), "FAIL used=3 not a PROXY protocol header");
}

static void
test_v2_limit(void)
{
  /* The largest header accepted: USHER_PROXY_V2_MAX bytes, its TLV area one NOOP TLV. */
  gsize len = USHER_PROXY_V2_MAX - 16;
  g_autoptr(GByteArray) big = g_byte_array_new();
  g_byte_array_append(big, v2_tcp4, 28);
  big->data[14] = (guint8)(len >> 8);
  big->data[15] = (guint8)(len & 0xff);
  gsize tlv = len - 12 - 3;
  guint8 tlv_head[3] = {0x04, (guint8)(tlv >> 8), (guint8)(tlv & 0xff)};
  g_byte_array_append(big, tlv_head, 3);
  for (gsize i = 0; i < tlv; i++)
    g_byte_array_append(big, (const guint8 *)"x", 1);
  g_byte_array_append(big, (const guint8 *)"a001 NOOP\r\n", 11);
  g_autofree char *expect = g_strdup_printf(
    "DONE used=%d v2 fam=1 192.0.2.1:56324 198.51.100.2:993", USHER_PROXY_V2_MAX);
  check(big->data, big->len, expect);

  /* One byte more is refused as soon as the length field is read. */
  len++;
  big->data[14] = (guint8)(len >> 8);
  big->data[15] = (guint8)(len & 0xff);
  check(big->data, big->len, "FAIL used=16 PROXY v2 header is longer than Usher accepts");
  check_byte(B(v2_tcp4), 14, 0xFF, "FAIL used=16 PROXY v2 header is longer than Usher accepts");
}

static void
test_v1(void)
{
  check(S("PROXY TCP4 192.0.2.1 198.51.100.2 56324 993\r\na001 CAPABILITY\r\n"),
        "DONE used=45 v1 fam=1 192.0.2.1:56324 198.51.100.2:993");
  check(S("PROXY TCP6 2001:db8::1 2001:db8::2 50000 110\r\nUSER bob\r\n"),
        "DONE used=46 v1 fam=2 2001:db8::1:50000 2001:db8::2:110");
  check(S("PROXY TCP6 ::ffff:192.0.2.1 ::1 0 65535\r\n"),
        "DONE used=41 v1 fam=2 ::ffff:192.0.2.1:0 ::1:65535");
  /* Ports may have leading zeros (HAProxy reads them as numbers). */
  check(S("PROXY TCP4 10.0.0.1 10.0.0.2 00110 0\r\n"),
        "DONE used=38 v1 fam=1 10.0.0.1:110 10.0.0.2:0");
  check(S("PROXY UNKNOWN\r\n"), "DONE used=15 v1 local fam=0 :0 :0");
  /* After UNKNOWN, the rest of the line is ignored. */
  check(S("PROXY UNKNOWN whatever\x01 it says\r\nCAPA\r\n"), "DONE used=33 v1 local fam=0 :0 :0");
  check(S("PROXY TCP4 192.0.2.1 198.51.100.2 56324 99"), "NEED_MORE used=42");
  check(S("PROXY TCP4 192.0.2.1 198.51.100.2 56324 993\r"), "NEED_MORE used=44");
}

/* A v1 line refused once its LF has arrived. */
static void
check_fails_at_end(const char *line, const char *why)
{
  g_autofree char *expect = g_strdup_printf("FAIL used=%" G_GSIZE_FORMAT " %s", strlen(line), why);
  check((const guint8 *)line, strlen(line), expect);
}

static void
test_v1_refused(void)
{
  check(S("PROXY TCP4 192.0.2.1 198.51.100.2 56324 993\n"),
        "FAIL used=44 PROXY v1 line does not end in CRLF");
  check(S("PROXY\r\n"), "FAIL used=6 not a PROXY protocol header");
  check(S("proxy TCP4 192.0.2.1 198.51.100.2 1 2\r\n"), "FAIL used=1 not a PROXY protocol header");
  check(S("PROXZ"), "FAIL used=5 not a PROXY protocol header");
  check(S("PROXY \r\n"), "FAIL used=8 PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN");
  check(S("PROXY TCP5 1.2.3.4 1.2.3.5 1 2\r\n"),
        "FAIL used=32 PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN");
  check(S("PROXY tcp4 1.2.3.4 1.2.3.5 1 2\r\n"),
        "FAIL used=32 PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN");
  check(S("PROXY UNKNOWNX\r\n"), "FAIL used=16 PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN");
  check(S("PROXY TCP4\r\n"), "FAIL used=12 PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN");
  /* Fields: exactly four, one space apart. */
  static const char *const fields[] = {
    "PROXY TCP4 \r\n",
    "PROXY TCP4 1.2.3.4 1.2.3.5 1\r\n",
    "PROXY TCP4 1.2.3.4 1.2.3.5 1 2 3\r\n",
    "PROXY TCP4 1.2.3.4  1.2.3.5 1 2\r\n",
    "PROXY TCP4  1.2.3.4 1.2.3.5 1 2\r\n",
    "PROXY TCP4 1.2.3.4 1.2.3.5 1 2 \r\n",
    "PROXY TCP4 1.2.3.4\t1.2.3.5 1 2\r\n",
  };
  for (gsize i = 0; i < G_N_ELEMENTS(fields); i++)
    check_fails_at_end(fields[i], "PROXY v1 line does not have four address fields");
  /* Addresses in the wrong family, malformed, in brackets, with leading zeros. */
  static const char *const addrs[] = {
    "PROXY TCP4 2001:db8::1 1.2.3.5 1 2\r\n",  "PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
    "PROXY TCP6 [::1] ::1 1 2\r\n",            "PROXY TCP4 1.2.3.256 1.2.3.5 1 2\r\n",
    "PROXY TCP4 1.2.3.04 1.2.3.5 1 2\r\n",     "PROXY TCP4 1.2.3.4 example.com 1 2\r\n",
    "PROXY TCP6 ::1 2001:db8::g 1 2\r\n",
  };
  for (gsize i = 0; i < G_N_ELEMENTS(addrs); i++)
    check_fails_at_end(addrs[i], "PROXY v1 address is not valid for its protocol");
  static const char *const ports[] = {
    "PROXY TCP4 1.2.3.4 1.2.3.5 65536 2\r\n", "PROXY TCP4 1.2.3.4 1.2.3.5 1 -2\r\n",
    "PROXY TCP4 1.2.3.4 1.2.3.5 1 +2\r\n",    "PROXY TCP4 1.2.3.4 1.2.3.5 000001 2\r\n",
    "PROXY TCP4 1.2.3.4 1.2.3.5 1 0x10\r\n",  "PROXY TCP4 1.2.3.4 1.2.3.5 1 2\r\r\n",
  };
  for (gsize i = 0; i < G_N_ELEMENTS(ports); i++)
    check_fails_at_end(ports[i], "PROXY v1 port is not a number from 0 to 65535");
  /* A NUL inside a field is just a bad byte. */
  check(S("PROXY TCP4 1.2.3.4\0 1.2.3.5 1 2\r\n"),
        "FAIL used=33 PROXY v1 address is not valid for its protocol");
}

static void
test_v1_limit(void)
{
  /* The spec's worst case is exactly USHER_PROXY_V1_MAX bytes. */
  static const char longest[] = "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
  g_assert_cmpuint(strlen(longest), ==, USHER_PROXY_V1_MAX);
  check(S(longest), "DONE used=107 v1 local fam=0 :0 :0");
  static const char longest_tcp6[] = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                                     "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
  check(S(longest_tcp6), "DONE used=104 v1 fam=2 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff:65535 "
                         "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff:65535");
  /* One byte more fails at byte 107, before any LF. */
  static const char over[] = "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                             "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 655355\r\n";
  check(S(over), "FAIL used=107 PROXY v1 line is longer than 107 bytes");
  check(S("PROXY TCP4 1.2.3.4 1.2.3.5 1 2                                                      "
          "                                                        "),
        "FAIL used=107 PROXY v1 line is longer than 107 bytes");
}

/* Formats and checks the exact bytes, then parses them back. */
static void
check_format_v2(const char *src, guint16 src_port, const char *dst, guint16 dst_port,
                const guint8 *expect, gsize expect_len, const char *parsed)
{
  UsherIp s = {0}, d = {0};
  if (src != NULL)
    g_assert_true(usher_ip_parse(src, -1, &s));
  if (dst != NULL)
    g_assert_true(usher_ip_parse(dst, -1, &d));
  g_autoptr(GByteArray) out = g_byte_array_new();
  g_byte_array_append(out, (const guint8 *)"<", 1); /* appended to, not replaced */
  usher_proxy_header_format_v2(&s, src_port, &d, dst_port, out);
  g_assert_cmpmem(out->data + 1, out->len - 1, expect, expect_len);
  g_assert_cmpuint(out->len - 1, <=, USHER_PROXY_V2_FORMAT_MAX);
  check(out->data + 1, out->len - 1, parsed);
}

static void
check_format_v1(const char *src, guint16 src_port, const char *dst, guint16 dst_port,
                const char *expect, const char *parsed)
{
  UsherIp s = {0}, d = {0};
  if (src != NULL)
    g_assert_true(usher_ip_parse(src, -1, &s));
  if (dst != NULL)
    g_assert_true(usher_ip_parse(dst, -1, &d));
  g_autoptr(GByteArray) out = g_byte_array_new();
  usher_proxy_header_format_v1(&s, src_port, &d, dst_port, out);
  g_assert_cmpmem(out->data, out->len, expect, strlen(expect));
  check(out->data, out->len, parsed);
}

static void
test_format(void)
{
  /* The formatter writes exactly the hand-built spec samples (without the client's bytes). */
  check_format_v2("192.0.2.1", 56324, "198.51.100.2", 993, v2_tcp4, 28,
                  "DONE used=28 v2 fam=1 192.0.2.1:56324 198.51.100.2:993");
  check_format_v2("2001:db8::1", 50000, "2001:db8::2", 110, v2_tcp6, 52,
                  "DONE used=52 v2 fam=2 2001:db8::1:50000 2001:db8::2:110");
  /* Mixed families: TCP6 with the IPv4 address mapped. */
  check_format_v2("192.0.2.1", 80, "2001:db8::2", 110, B(v2_mixed),
                  "DONE used=52 v2 fam=2 ::ffff:192.0.2.1:80 2001:db8::2:110");
  /* No address known: LOCAL. */
  check_format_v2(NULL, 1, "192.0.2.1", 2, v2_local, 16, "DONE used=16 v2 local fam=0 :0 :0");
  check_format_v2("192.0.2.1", 1, NULL, 2, v2_local, 16, "DONE used=16 v2 local fam=0 :0 :0");

  check_format_v1("192.0.2.1", 56324, "198.51.100.2", 993,
                  "PROXY TCP4 192.0.2.1 198.51.100.2 56324 993\r\n",
                  "DONE used=45 v1 fam=1 192.0.2.1:56324 198.51.100.2:993");
  check_format_v1("2001:db8::1", 50000, "2001:db8::2", 110,
                  "PROXY TCP6 2001:db8::1 2001:db8::2 50000 110\r\n",
                  "DONE used=46 v1 fam=2 2001:db8::1:50000 2001:db8::2:110");
  check_format_v1("2001:db8::1", 0, "10.0.0.1", 65535,
                  "PROXY TCP6 2001:db8::1 ::ffff:10.0.0.1 0 65535\r\n",
                  "DONE used=48 v1 fam=2 2001:db8::1:0 ::ffff:10.0.0.1:65535");
  check_format_v1(NULL, 0, NULL, 0, "PROXY UNKNOWN\r\n", "DONE used=15 v1 local fam=0 :0 :0");
  check_format_v1("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535,
                  "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535,
                  "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                  "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
                  "DONE used=104 v1 fam=2 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff:65535 "
                  "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff:65535");
}

static void
test_result_names(void)
{
  g_assert_cmpstr(usher_proxy_result_to_string(USHER_PROXY_NEED_MORE), ==, "NEED_MORE");
  g_assert_cmpstr(usher_proxy_result_to_string(USHER_PROXY_DONE), ==, "DONE");
  g_assert_cmpstr(usher_proxy_result_to_string(USHER_PROXY_FAIL), ==, "FAIL");
  g_assert_cmpstr(usher_proxy_result_to_string((UsherProxyResult)7), ==, "?");
  g_autoptr(UsherProxyHeader) parser = usher_proxy_header_new();
  g_assert_null(usher_proxy_header_info(parser));
  g_assert_null(usher_proxy_header_why(parser));
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/core/proxy-header/v2", test_v2);
  g_test_add_func("/core/proxy-header/v2-refused", test_v2_refused);
  g_test_add_func("/core/proxy-header/v2-limit", test_v2_limit);
  g_test_add_func("/core/proxy-header/v1", test_v1);
  g_test_add_func("/core/proxy-header/v1-refused", test_v1_refused);
  g_test_add_func("/core/proxy-header/v1-limit", test_v1_limit);
  g_test_add_func("/core/proxy-header/format", test_format);
  g_test_add_func("/core/proxy-header/result-names", test_result_names);
  return g_test_run();
}

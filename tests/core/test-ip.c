/* test-ip.c - IP parsing, canonical printing (checked against glibc), ordering, hashing. */
#include "libcore/ip.h"
#include "libcore/rng.h"

#include <arpa/inet.h>
#include <string.h>

static void
check_roundtrip(const char *text, const char *canonical)
{
  UsherIp ip;
  char buf[USHER_IP_STRLEN];
  g_assert_true(usher_ip_parse(text, -1, &ip));
  g_assert_cmpstr(usher_ip_to_string(&ip, buf), ==, canonical);
  g_assert_cmpuint(usher_ip_format(&ip, buf), ==, strlen(canonical));
  g_assert_cmpstr(buf, ==, canonical);
}

static void
test_parse_valid(void)
{
  check_roundtrip("127.0.2.1", "127.0.2.1");
  check_roundtrip("0.0.0.0", "0.0.0.0");
  check_roundtrip("255.255.255.255", "255.255.255.255");
  check_roundtrip("::1", "::1");
  check_roundtrip("::", "::");
  check_roundtrip("[::1]", "::1");
  check_roundtrip("2001:DB8:0:0:0:0:0:1", "2001:db8::1");
  check_roundtrip("2001:db8:0:1:0:0:0:1", "2001:db8:0:1::1");
  check_roundtrip("2001:0:0:1:0:0:0:1", "2001:0:0:1::1");
  check_roundtrip("1:0:1:0:1:0:1:0", "1:0:1:0:1:0:1:0");
  check_roundtrip("fe80::", "fe80::");
  check_roundtrip("::ffff:1.2.3.4", "::ffff:1.2.3.4");
  check_roundtrip("::1.2.3.4", "::1.2.3.4");
  check_roundtrip("::0:ffff:1.2.3.4", "::ffff:1.2.3.4");
  check_roundtrip("1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8");
  check_roundtrip("1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5:6:102:304");
  check_roundtrip("0:0:0:0:0:0:0:2", "::2");
}

static void
test_parse_invalid(void)
{
  const char *bad[] = {
    "", "1", "1.2.3", "1.2.3.4.5", "256.1.1.1", "01.2.3.4", "1.2.3.4 ", " 1.2.3.4", "1..2.3",
    "a.b.c.d", ":", ":::", "1:::2", "1::2::3", "1:2:3:4:5:6:7:8:9", "12345::", "1:2:3:4:5:6:7",
    "::g", "[1.2.3.4]", "[::1", "::1]", "1:2:3:4::5:6:7:8", "::1.2.3", "::1.2.3.4:5", "1:",
    "example.com", "1.2.3.4/24", "::ffff:256.1.1.1",
  };
  for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
    UsherIp ip;
    if (usher_ip_parse(bad[i], -1, &ip))
      g_error("\"%s\" parsed as an IP", bad[i]);
    g_assert_cmpint(ip.family, ==, 0);
  }
  /* Explicit length: a prefix of a longer buffer. */
  UsherIp ip;
  g_assert_true(usher_ip_parse("10.0.0.1garbage", 8, &ip));
  char buf[USHER_IP_STRLEN];
  g_assert_cmpstr(usher_ip_to_string(&ip, buf), ==, "10.0.0.1");
}

/* Random IPv6 addresses with many zero words, printed by us and by glibc's inet_ntop. */
static void
test_ntop_matches_glibc(void)
{
  UsherRng rng;
  usher_rng_seed(&rng, 42);
  for (int n = 0; n < 200000; n++) {
    UsherIp ip = {.family = USHER_IP_V6};
    for (int w = 0; w < 8; w++) {
      guint64 r = usher_rng_below(&rng, 8);
      guint16 v = r < 5 ? 0 : r == 5 ? 0xffff : (guint16)usher_rng_next_u32(&rng);
      if (r == 6)
        v &= 0xf;
      ip.addr[2 * w] = (guint8)(v >> 8);
      ip.addr[2 * w + 1] = (guint8)v;
    }
    char ours[USHER_IP_STRLEN], theirs[INET6_ADDRSTRLEN];
    g_assert_cmpuint(usher_ip_format(&ip, ours), ==, strlen(ours));
    g_assert_nonnull(inet_ntop(AF_INET6, ip.addr, theirs, sizeof(theirs)));
    if (strcmp(ours, theirs) != 0)
      g_error("inet_ntop mismatch: ours %s glibc %s", ours, theirs);
    UsherIp back;
    g_assert_true(usher_ip_parse(ours, -1, &back));
    g_assert_true(usher_ip_equal(&ip, &back));
    /* Our parser accepts exactly what glibc's inet_pton accepts for these strings. */
    guint8 pton[16];
    g_assert_cmpint(inet_pton(AF_INET6, ours, pton), ==, 1);
    g_assert_cmpmem(pton, 16, ip.addr, 16);
  }
  for (int n = 0; n < 10000; n++) {
    UsherIp ip = {.family = USHER_IP_V4};
    guint32 v = usher_rng_next_u32(&rng);
    memcpy(ip.addr, &v, 4);
    char ours[USHER_IP_STRLEN], theirs[INET_ADDRSTRLEN];
    g_assert_cmpuint(usher_ip_format(&ip, ours), ==, strlen(ours));
    g_assert_nonnull(inet_ntop(AF_INET, ip.addr, theirs, sizeof(theirs)));
    g_assert_cmpstr(ours, ==, theirs);
  }
}

static void
test_cmp(void)
{
  UsherIp a, b, c, d;
  g_assert_true(usher_ip_parse("127.0.2.9", -1, &a));
  g_assert_true(usher_ip_parse("127.0.2.10", -1, &b));
  g_assert_true(usher_ip_parse("::1", -1, &c));
  g_assert_true(usher_ip_parse("10.0.0.1", -1, &d));
  g_assert_cmpint(usher_ip_cmp(&a, &b), <, 0); /* numeric, not textual */
  g_assert_cmpint(usher_ip_cmp(&b, &c), <, 0); /* IPv4 before IPv6 */
  g_assert_cmpint(usher_ip_cmp(&d, &a), <, 0);
  g_assert_cmpint(usher_ip_cmp(&a, &a), ==, 0);
  g_assert_true(usher_ip_table_equal(&a, &a));
  g_assert_cmpuint(usher_ip_table_hash(&a), !=, usher_ip_table_hash(&b));
}

static void
test_dovecot_hash(void)
{
  UsherIp ip;
  g_assert_true(usher_ip_parse("127.0.2.1", -1, &ip));
  guint32 expect;
  memcpy(&expect, ip.addr, 4);
  g_assert_cmpuint(usher_ip_dovecot_hash(&ip), ==, expect);
  /* ELF hash of ::1: only the last byte is non-zero. */
  g_assert_true(usher_ip_parse("::1", -1, &ip));
  g_assert_cmpuint(usher_ip_dovecot_hash(&ip), ==, 1);
  g_assert_true(usher_ip_parse("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", -1, &ip));
  guint32 h = 0;
  for (int i = 0; i < 16; i++) {
    h = (h << 4) + 0xff;
    guint32 g = h & 0xf0000000u;
    if (g) {
      h ^= g >> 24;
      h ^= g;
    }
  }
  g_assert_cmpuint(usher_ip_dovecot_hash(&ip), ==, h);
}

static gboolean
in_net(const char *net, const char *ip)
{
  UsherNet n;
  UsherIp a;
  g_assert_true(usher_net_parse(net, -1, &n));
  g_assert_true(usher_ip_parse(ip, -1, &a));
  return usher_net_contains(&n, &a);
}

static void
test_net(void)
{
  g_assert_true(in_net("10.0.0.0/8", "10.255.1.2"));
  g_assert_false(in_net("10.0.0.0/8", "11.0.0.1"));
  g_assert_true(in_net("127.0.9.0/24", "127.0.9.200"));
  g_assert_false(in_net("127.0.9.0/24", "127.0.10.1"));
  g_assert_true(in_net("192.168.4.0/22", "192.168.7.255"));
  g_assert_false(in_net("192.168.4.0/22", "192.168.8.0"));
  g_assert_true(in_net("0.0.0.0/0", "203.0.113.9"));
  g_assert_false(in_net("0.0.0.0/0", "::1")); /* families do not mix... */
  g_assert_true(in_net("10.0.0.0/8", "::ffff:10.1.2.3")); /* ...except IPv4-mapped */
  g_assert_true(in_net("127.0.0.1", "127.0.0.1"));
  g_assert_false(in_net("127.0.0.1", "127.0.0.2"));
  g_assert_true(in_net("2001:db8::/32", "2001:db8:ffff::1"));
  g_assert_false(in_net("2001:db8::/33", "2001:db8:8000::1"));
  g_assert_true(in_net("::/0", "fe80::1"));
  const char *bad[] = {"10.0.0.0/", "10.0.0.0/33", "10.1.0.0/8", "10.0.0.0/08", "10.0.0.0/8x",
                       "2001:db8::1/32", "::/129", "/8", "10.0.0.0/-1", "10.0.0.0/1000", "x/8"};
  for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
    UsherNet n;
    g_assert_false(usher_net_parse(bad[i], -1, &n));
  }
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/core/ip/parse-valid", test_parse_valid);
  g_test_add_func("/core/ip/parse-invalid", test_parse_invalid);
  g_test_add_func("/core/ip/ntop-matches-glibc", test_ntop_matches_glibc);
  g_test_add_func("/core/ip/cmp", test_cmp);
  g_test_add_func("/core/ip/dovecot-hash", test_dovecot_hash);
  g_test_add_func("/core/ip/net", test_net);
  return g_test_run();
}

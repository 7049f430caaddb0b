/* ip.h - IPv4/IPv6 addresses as the director compares, prints and hashes them.
 *
 * Pure code: no resolver, no socket calls. Parsing is strict (dotted quad for IPv4, RFC 4291 text
 * for IPv6, optionally in brackets). Printing gives the canonical text glibc's inet_ntop gives,
 * because that text is what Dovecot feeds into MD5 for vhost points.
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

/* Longest text form: "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255" plus NUL. */
#define USHER_IP_STRLEN 46

typedef enum {
  USHER_IP_V4 = 4,
  USHER_IP_V6 = 6,
} UsherIpFamily;

typedef struct {
  guint8 family;   /* UsherIpFamily; 0 for "no address" */
  guint8 addr[16]; /* network order; IPv4 uses the first 4 bytes, the rest are zero */
} UsherIp;

/* Parses len bytes of text (len < 0: NUL-terminated). Returns FALSE on anything that is not a
 * complete address; *ip_out is then zeroed. */
gboolean usher_ip_parse(const char *text, gssize len, UsherIp *ip_out);

/* Canonical text (inet_ntop form: lowercase, longest zero run compressed, IPv4-mapped and
 * IPv4-compatible addresses with a dotted tail). Returns buf. */
const char *usher_ip_to_string(const UsherIp *ip, char buf[USHER_IP_STRLEN]);
/* The same text; returns its length (0 for an address of no family). */
gsize usher_ip_format(const UsherIp *ip, char buf[USHER_IP_STRLEN]);

/* Dovecot's net_ip_cmp order: family first (IPv4 before IPv6), then the address bytes. */
int usher_ip_cmp(const UsherIp *a, const UsherIp *b);
gboolean usher_ip_equal(const UsherIp *a, const UsherIp *b);

/* Dovecot's net_ip_hash: IPv4 -> the address word as stored in memory (network byte order
 * read as a host-endian integer); IPv6 -> ELF-style hash of the 16 bytes. Used by hosts_hash. */
guint32 usher_ip_dovecot_hash(const UsherIp *ip);

/* A network: an address and a prefix length ("10.0.0.0/8", "2001:db8::/32"; a bare address is
 * the network of that one address). */
typedef struct {
  UsherIp ip; /* with the bits past the prefix cleared */
  guint8 bits;
} UsherNet;

/* Parses len bytes (len < 0: NUL-terminated). Bits set past the prefix ("10.1.2.3/8") are
 * refused, so a typo cannot silently widen or move a trust list. */
gboolean usher_net_parse(const char *text, gssize len, UsherNet *net_out);
/* TRUE if ip lies in net; an IPv4-mapped IPv6 address (::ffff:a.b.c.d) counts as IPv4. */
gboolean usher_net_contains(const UsherNet *net, const UsherIp *ip);

/* A well-mixed 32-bit hash for hash tables (not a wire value). */
guint usher_ip_table_hash(gconstpointer ip);
gboolean usher_ip_table_equal(gconstpointer a, gconstpointer b);

G_END_DECLS

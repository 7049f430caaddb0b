/* proxy-header.h - the PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and 2),
 * sans-I/O.
 *
 * A load balancer that speaks the PROXY protocol writes one header before the client's first
 * byte, naming the client's address and port and the address it connected to. Usher reads it
 * from its listeners (to hash and log the real client, and to pass it on), and writes one to
 * backends whose Dovecot listeners have "haproxy = yes".
 *
 * Reading: the driver feeds the connection's first bytes to an UsherProxyHeader until it says
 * DONE or FAIL. The parser takes exactly the header's bytes and no more: on DONE, *used_out
 * tells how many bytes of the last feed were header, and the rest of that feed is the client's
 * first data. Feeding the same bytes split at any offsets gives the same result, the same
 * addresses and the same byte counts (tests/core checks every split of every sample). The
 * header is mandatory once the driver asks for it: anything else FAILs at its first byte that
 * cannot begin a header.
 *
 *   v1: "PROXY TCP4 <src> <dst> <sport> <dport>\r\n", TCP6 likewise, or "PROXY UNKNOWN[ ...]\r\n";
 *       single spaces, addresses in the stated family, ports 0-65535, at most
 *       USHER_PROXY_V1_MAX bytes with the CRLF.
 *   v2: the 12-byte signature "\r\n\r\n\0\r\nQUIT\n", version 2 and command LOCAL or PROXY, the
 *       family and transport byte (TCP over IPv4 0x11, over IPv6 0x21, or UNSPEC 0x00), a
 *       16-bit length, the address block, then TLVs up to that length. TLVs are checked for
 *       shape (each one fits) and skipped. The whole header is at most USHER_PROXY_V2_MAX bytes.
 *       A v2 LOCAL header (a health check by the balancer itself) is accepted whatever family it
 *       names, and its block is skipped unread, as the spec requires. UDP and UNIX families are
 *       refused: Usher carries TCP only.
 */
#pragma once

#include "libcore/ip.h"

G_BEGIN_DECLS

/* The spec's own bound: "PROXY UNKNOWN" plus two IPv6 addresses and ports, with CRLF. */
#define USHER_PROXY_V1_MAX 107
/* A whole v2 header: 16 fixed bytes, addresses (36 for IPv6) and TLVs. The spec allows 65551;
 * real balancers send well under a kilobyte even with TLS TLVs. nginx caps at 4096 too. */
#define USHER_PROXY_V2_MAX 4096
/* What usher_proxy_header_format_v2 writes at most: 16 fixed bytes and an IPv6 block. */
#define USHER_PROXY_V2_FORMAT_MAX 52

typedef enum {
  USHER_PROXY_NEED_MORE = 0, /* feed more bytes */
  USHER_PROXY_DONE,          /* the header is complete: see usher_proxy_header_info() */
  USHER_PROXY_FAIL,          /* not a valid header: close the connection */
} UsherProxyResult;

typedef enum {
  USHER_PROXY_FAM_UNSPEC = 0, /* no addresses (LOCAL, UNKNOWN, or v2 UNSPEC) */
  USHER_PROXY_FAM_TCP4,
  USHER_PROXY_FAM_TCP6,
} UsherProxyFamily;

typedef struct {
  guint8 version; /* 1 or 2 */
  /* No addresses came: a v2 LOCAL command, a v1 "UNKNOWN" line, or v2 PROXY with the UNSPEC
   * family. The connection's own endpoints stand; family is UNSPEC, the addresses are zeroed. */
  gboolean local;
  UsherProxyFamily family;
  UsherIp src_ip, dst_ip; /* the client, and the address it connected to */
  guint16 src_port, dst_port;
  gsize header_len; /* bytes the header took from the start of the connection */
} UsherProxyInfo;

typedef struct UsherProxyHeader UsherProxyHeader;

UsherProxyHeader *usher_proxy_header_new(void);
void usher_proxy_header_free(UsherProxyHeader *parser);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(UsherProxyHeader, usher_proxy_header_free)

/* Takes bytes of the header from data and sets *used_out to how many it took: all of len on
 * NEED_MORE; on DONE the header's last bytes (data + *used_out is the client's); on FAIL up to
 * and including the byte that proved the header invalid. After DONE or FAIL the result stays
 * and nothing more is taken. The parser holds at most USHER_PROXY_V2_MAX bytes. */
UsherProxyResult usher_proxy_header_feed(UsherProxyHeader *parser, const void *data, gsize len,
                                         gsize *used_out);
/* After DONE: what the header said (transfer none); NULL before. */
const UsherProxyInfo *usher_proxy_header_info(const UsherProxyHeader *parser);
/* After FAIL: why, as static text for the log; NULL otherwise. */
const char *usher_proxy_header_why(const UsherProxyHeader *parser);

const char *usher_proxy_result_to_string(UsherProxyResult result);

/* Appends a header for a proxied TCP connection from src to dst. Both IPv4: TCP4. Otherwise,
 * both known: TCP6, with an IPv4 address written IPv4-mapped (::ffff:a.b.c.d), as HAProxy
 * does. Either address unknown (family 0): v2 LOCAL with the UNSPEC family, v1
 * "PROXY UNKNOWN". The v2 form has no TLVs. */
void usher_proxy_header_format_v2(const UsherIp *src_ip, guint16 src_port, const UsherIp *dst_ip,
                                  guint16 dst_port, GByteArray *out);
void usher_proxy_header_format_v1(const UsherIp *src_ip, guint16 src_port, const UsherIp *dst_ip,
                                  guint16 dst_port, GByteArray *out);

G_END_DECLS

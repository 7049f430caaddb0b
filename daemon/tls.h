/* tls.h - the proxy's OpenSSL server side: one SSL_CTX built from [proxy] tls_cert/tls_key (and
 * one more per tls_sni name, reached through it).
 *
 * The context is immutable once built and shared by every worker thread (OpenSSL makes SSL
 * objects from one context safely from many threads). A SIGHUP builds a new one; sessions keep
 * the context they started with (each SSL holds a reference), new ones get the new context. */
#pragma once

#include "libcore/config.h"

#include <glib.h>
#include <openssl/ssl.h>

G_BEGIN_DECLS

/* The proxy's server context: TLS 1.2 or later (tls_min_version), no compression, no
 * renegotiation, server cipher preference; tls_cert/tls_key, and with [proxy] tls_sni one more
 * context per name, chosen during the handshake by the name the client asks for (exact, then
 * *.domain; an unknown name or none gets tls_cert). The per-name contexts live as long as the returned one.
 * NULL with *error naming the entry and file that failed. */
SSL_CTX *usherd_tls_server_new(const UsherConfig *config, GError **error);

/* Everything OpenSSL queued on this thread's error stack, as one line (and clears it). */
char *usherd_tls_error_text(void);

G_END_DECLS

/* tls.h - the proxy's OpenSSL server side: one SSL_CTX built from [proxy] tls_cert/tls_key.
 *
 * The context is immutable once built and shared by every worker thread (OpenSSL makes SSL
 * objects from one context safely from many threads). A SIGHUP builds a new one; sessions keep
 * the context they started with (each SSL holds a reference), new ones get the new context. */
#pragma once

#include <glib.h>
#include <openssl/ssl.h>

G_BEGIN_DECLS

/* TLS 1.2 or later (min_version 12 or 13), no compression, no renegotiation, server cipher
 * preference. NULL with *error saying which file or step failed. */
SSL_CTX *usherd_tls_context_new(const char *cert_path, const char *key_path, guint min_version,
                                GError **error);

/* Everything OpenSSL queued on this thread's error stack, as one line (and clears it). */
char *usherd_tls_error_text(void);

G_END_DECLS

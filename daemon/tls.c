/* tls.c - see tls.h. */
#include "daemon/tls.h"

#include <gio/gio.h>
#include <openssl/err.h>

char *
usherd_tls_error_text(void)
{
  GString *out = g_string_new(NULL);
  unsigned long e;
  while ((e = ERR_get_error()) != 0) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    if (out->len > 0)
      g_string_append(out, "; ");
    g_string_append(out, buf);
  }
  if (out->len == 0)
    g_string_append(out, "no detail from OpenSSL");
  return g_string_free(out, FALSE);
}

SSL_CTX *
usherd_tls_context_new(const char *cert_path, const char *key_path, guint min_version,
                       GError **error)
{
  ERR_clear_error();
  SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == NULL) {
    g_autofree char *why = usherd_tls_error_text();
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED, "TLS: cannot create a context: %s", why);
    return NULL;
  }
  SSL_CTX_set_min_proto_version(ctx, min_version >= 13 ? TLS1_3_VERSION : TLS1_2_VERSION);
  /* A client that closes its TCP connection without a close_notify simply ends the session. */
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                             SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_IGNORE_UNEXPECTED_EOF);
  /* Writes may be retried with a different buffer address (the queue moves as it grows). */
  SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_ENABLE_PARTIAL_WRITE |
                          SSL_MODE_RELEASE_BUFFERS);
  const char *step = NULL;
  if (SSL_CTX_use_certificate_chain_file(ctx, cert_path) != 1)
    step = "tls_cert";
  else if (SSL_CTX_use_PrivateKey_file(ctx, key_path, SSL_FILETYPE_PEM) != 1)
    step = "tls_key";
  else if (SSL_CTX_check_private_key(ctx) != 1)
    step = "tls_key (it does not match tls_cert)";
  if (step != NULL) {
    g_autofree char *why = usherd_tls_error_text();
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED, "[proxy] %s: %s: %s", step,
                step[4] == 'c' ? cert_path : key_path, why);
    SSL_CTX_free(ctx);
    return NULL;
  }
  return ctx;
}

/* tls.c - see tls.h. */
#include "daemon/tls.h"

#include <gio/gio.h>
#include <openssl/err.h>
#include <string.h>

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

/* One context from a certificate chain and its key. `what` names the entry in errors: NULL for
 * [proxy] tls_cert/tls_key, else e.g. "tls_sni mail.example.org". */
static SSL_CTX *
context_new(const char *cert_path, const char *key_path, guint min_version, const char *what,
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
  /* A client that closes its TCP connection without a close_notify simply ends the session.
   * Decrypted records are wiped once read: the buffers released while a session is idle would
   * otherwise go back to the heap holding the client's password. */
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                             SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_IGNORE_UNEXPECTED_EOF |
                             SSL_OP_CLEANSE_PLAINTEXT);
  /* Writes may be retried with a different buffer address (the queue moves as it grows). */
  SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_ENABLE_PARTIAL_WRITE |
                          SSL_MODE_RELEASE_BUFFERS);
  const char *step = NULL;
  gboolean cert_step = FALSE;
  if (SSL_CTX_use_certificate_chain_file(ctx, cert_path) != 1) {
    step = what == NULL ? "tls_cert" : "certificate";
    cert_step = TRUE;
  } else if (SSL_CTX_use_PrivateKey_file(ctx, key_path, SSL_FILETYPE_PEM) != 1)
    step = what == NULL ? "tls_key" : "key";
  else if (SSL_CTX_check_private_key(ctx) != 1)
    step = what == NULL ? "tls_key (it does not match tls_cert)"
                        : "key (it does not match the certificate)";
  if (step != NULL) {
    g_autofree char *why = usherd_tls_error_text();
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED, "[proxy] %s%s%s: %s: %s",
                what != NULL ? what : "", what != NULL ? " " : "", step,
                cert_step ? cert_path : key_path, why);
    SSL_CTX_free(ctx);
    return NULL;
  }
  return ctx;
}

/* ---- SNI: the certificate for the name the client asks for ------------------------------------ */

typedef struct {
  char *name; /* lower case; "*.example.org" for a wildcard */
  SSL_CTX *ctx;
} SniEntry;

typedef struct {
  GArray *entries; /* SniEntry */
} SniTable;

static int sni_index = -1; /* set once (sni_index_once) */
static gsize sni_index_once;

static void
sni_table_free(SniTable *t)
{
  for (guint i = 0; i < t->entries->len; i++) {
    SniEntry *e = &g_array_index(t->entries, SniEntry, i);
    g_free(e->name);
    SSL_CTX_free(e->ctx);
  }
  g_array_unref(t->entries);
  g_free(t);
}

/* OpenSSL frees the table with the default context it hangs on (the last session that started
 * with that context is gone: a reload never pulls a table from under a handshake). */
static void
sni_ex_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
  (void)parent;
  (void)ad;
  (void)idx;
  (void)argl;
  (void)argp;
  if (ptr != NULL)
    sni_table_free(ptr);
}

/* An exact name first, then a wildcard for one more label in front of its domain. */
static SSL_CTX *
sni_lookup(const SniTable *t, const char *asked)
{
  g_autofree char *name = g_ascii_strdown(asked, -1);
  const char *dot = strchr(name, '.');
  SSL_CTX *wild = NULL;
  for (guint i = 0; i < t->entries->len; i++) {
    const SniEntry *e = &g_array_index(t->entries, SniEntry, i);
    if (strcmp(e->name, name) == 0)
      return e->ctx;
    if (wild == NULL && e->name[0] == '*' && dot != NULL && dot != name &&
        strcmp(e->name + 1, dot) == 0)
      wild = e->ctx;
  }
  return wild;
}

static int
on_servername(SSL *ssl, int *alert, void *arg)
{
  (void)alert;
  const SniTable *t = arg;
  const char *asked = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  SSL_CTX *ctx = asked != NULL ? sni_lookup(t, asked) : NULL;
  if (ctx != NULL)
    SSL_set_SSL_CTX(ssl, ctx);
  /* A name not in the map gets the default certificate (tls_cert), as a client without SNI. */
  return SSL_TLSEXT_ERR_OK;
}

SSL_CTX *
usherd_tls_server_new(const UsherConfig *c, GError **error)
{
  SSL_CTX *ctx = context_new(c->tls_cert, c->tls_key, c->tls_min_version, NULL, error);
  if (ctx == NULL || c->tls_sni->len == 0)
    return ctx;
  if (g_once_init_enter(&sni_index_once)) {
    sni_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, sni_ex_free);
    g_once_init_leave(&sni_index_once, 1);
  }
  SniTable *t = g_new0(SniTable, 1);
  t->entries = g_array_new(FALSE, TRUE, sizeof(SniEntry));
  for (guint i = 0; i < c->tls_sni->len; i++) {
    const UsherTlsSni *e = g_ptr_array_index(c->tls_sni, i);
    g_autofree char *what = g_strdup_printf("tls_sni %s", e->name);
    SSL_CTX *one = context_new(e->cert, e->key, c->tls_min_version, what, error);
    if (one == NULL) {
      sni_table_free(t);
      SSL_CTX_free(ctx);
      return NULL;
    }
    SniEntry entry = {g_strdup(e->name), one};
    g_array_append_val(t->entries, entry);
  }
  SSL_CTX_set_ex_data(ctx, sni_index, t);
  SSL_CTX_set_tlsext_servername_callback(ctx, on_servername);
  SSL_CTX_set_tlsext_servername_arg(ctx, t);
  return ctx;
}

/* ring-link.c - TCP links to the peer directors.
 *
 * The core decides everything about the ring (who connects where, what is sent, when a link is
 * dropped); this file moves bytes. Incoming connections are offered to the core, which refuses
 * addresses outside the ring; outgoing ones are dialled from this director's ring address, so
 * the peer sees the address it knows us by. Reads are nonblocking, a bounded number of chunks
 * per wakeup; writes go straight to the socket and what the kernel does not take waits in a
 * per-link queue. The core is told how much waits after every write (backpressure); a queue
 * that passes output_buffer_size drops the link, as Dovecot does. */


#include "daemon/usherd.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>

#define READ_CHUNK (64 * 1024)
#define READS_PER_WAKEUP 8         /* then let other sources run */
#define CLOSE_LINGER_SECS 2        /* time to write out what was sent before a DISCONNECT */

typedef struct {
  RingLinks *r;
  UsherConnId id;
  char name[80];
  GSocketConnection *connection; /* NULL while dialling */
  GSocket *socket;
  GSource *in_source, *out_source, *linger;
  GByteArray *out;
  gsize out_off;
  GCancellable *dialling;
  gboolean closing; /* the core said DISCONNECT: write out, then close */
} Link;

struct _RingLinks {
  Usherd *u;
  GSocketService *service;
  GSocketClient *client;
  GHashTable *links; /* UsherConnId -> Link* */
};

static void link_start_reading(Link *l);

static void
link_free(Link *l)
{
  g_hash_table_remove(l->r->links, GUINT_TO_POINTER(l->id));
  if (l->dialling != NULL) {
    g_cancellable_cancel(l->dialling);
    g_object_unref(l->dialling);
  }
  if (l->in_source != NULL) {
    g_source_destroy(l->in_source);
    g_source_unref(l->in_source);
  }
  if (l->out_source != NULL) {
    g_source_destroy(l->out_source);
    g_source_unref(l->out_source);
  }
  if (l->linger != NULL) {
    g_source_destroy(l->linger);
    g_source_unref(l->linger);
  }
  if (l->connection != NULL) {
    g_io_stream_close(G_IO_STREAM(l->connection), NULL, NULL);
    g_object_unref(l->connection);
  }
  g_byte_array_unref(l->out);
  g_free(l);
}

static Link *
link_new(RingLinks *r, UsherConnId id, const char *what)
{
  Link *l = g_new0(Link, 1);
  l->r = r;
  l->id = id;
  l->out = g_byte_array_new();
  g_snprintf(l->name, sizeof(l->name), "ring link #%u (%s)", id, what);
  g_hash_table_insert(r->links, GUINT_TO_POINTER(id), l);
  return l;
}

static Link *
link_lookup(RingLinks *r, UsherConnId id)
{
  return g_hash_table_lookup(r->links, GUINT_TO_POINTER(id));
}

static void
link_attach(Link *l, GSocketConnection *connection)
{
  l->connection = g_object_ref(connection);
  l->socket = g_socket_connection_get_socket(connection);
  g_socket_set_blocking(l->socket, FALSE);
  g_socket_set_keepalive(l->socket, TRUE);
  g_socket_set_option(l->socket, IPPROTO_TCP, TCP_NODELAY, 1, NULL);
}

/* The link failed under us: tell the core (which forgets the connection) and drop it. */
static void
link_failed(Link *l, const char *reason)
{
  Usherd *u = l->r->u;
  UsherConnId id = l->id;
  gboolean closing = l->closing;
  link_free(l);
  if (!closing) {
    usher_director_peer_closed(u->director, usherd_now(), id, reason);
    usherd_core_after_call(u);
  }
}

/* ---- Output ----------------------------------------------------------------------------------------- */

static gboolean on_writable(GSocket *socket, GIOCondition cond, gpointer data);

static gsize
link_queued(const Link *l)
{
  return l->out->len - l->out_off;
}

/* Writes what the kernel takes. FALSE if the link failed (and is gone). */
static gboolean
link_flush(Link *l)
{
  while (link_queued(l) > 0) {
    g_autoptr(GError) error = NULL;
    gssize n = g_socket_send(l->socket, (const char *)l->out->data + l->out_off, link_queued(l),
                             NULL, &error);
    if (n < 0) {
      if (g_error_matches(error, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
        break;
      g_autofree char *why = g_strdup_printf("write failed: %s", error->message);
      link_failed(l, why);
      return FALSE;
    }
    l->out_off += (gsize)n;
    l->r->u->stats.ring_bytes_out += (guint64)n;
  }
  if (link_queued(l) == 0) {
    g_byte_array_set_size(l->out, 0);
    l->out_off = 0;
  } else if (l->out_off > 1024 * 1024 && l->out_off * 2 > l->out->len) {
    g_byte_array_remove_range(l->out, 0, (guint)l->out_off);
    l->out_off = 0;
  }
  if (link_queued(l) > 0 && l->out_source == NULL) {
    l->out_source = g_socket_create_source(l->socket, G_IO_OUT, NULL);
    g_source_set_callback(l->out_source, G_SOURCE_FUNC(on_writable), l, NULL);
    g_source_attach(l->out_source, l->r->u->context);
  } else if (link_queued(l) == 0 && l->out_source != NULL) {
    g_source_destroy(l->out_source);
    g_clear_pointer(&l->out_source, g_source_unref);
  }
  return TRUE;
}

static gboolean
on_writable(GSocket *socket, GIOCondition cond, gpointer data)
{
  Link *l = data;
  RingLinks *r = l->r;
  Usherd *u = r->u;
  UsherConnId id = l->id;
  (void)socket;
  (void)cond;
  gsize before = link_queued(l);
  if (!link_flush(l))
    return G_SOURCE_REMOVE; /* the link is gone, and this source with it */
  if (l->closing) {
    if (link_queued(l) == 0) {
      link_free(l);
      return G_SOURCE_REMOVE;
    }
    return G_SOURCE_CONTINUE;
  }
  if (link_queued(l) != before) {
    usher_director_peer_output_queued(u->director, usherd_now(), id, link_queued(l));
    usherd_core_after_call(u);
  }
  /* link_flush destroyed this source if the queue is empty; the core may have closed the link. */
  l = link_lookup(r, id);
  return l != NULL && l->out_source != NULL ? G_SOURCE_CONTINUE : G_SOURCE_REMOVE;
}

void
ring_links_send(RingLinks *r, UsherConnId id, const char *data, gsize len)
{
  Link *l = link_lookup(r, id);
  if (l == NULL || l->closing || l->socket == NULL)
    return;
  Usherd *u = r->u;
  if (link_queued(l) + len > u->config->output_buffer_size) {
    u->stats.ring_output_overflows++;
    g_warning("%s: more than %" G_GUINT64_FORMAT " bytes of output waiting: dropping the link",
              l->name, u->config->output_buffer_size);
    link_failed(l, "output buffer full");
    return;
  }
  g_byte_array_append(l->out, (const guint8 *)data, (guint)len);
  if (!link_flush(l))
    return;
  usher_director_peer_output_queued(u->director, usherd_now(), id, link_queued(l));
}

/* ---- Input ------------------------------------------------------------------------------------------ */

static gboolean
on_readable(GSocket *socket, GIOCondition cond, gpointer data)
{
  Link *l = data;
  RingLinks *r = l->r;
  Usherd *u = r->u;
  UsherConnId id = l->id;
  (void)cond;
  static char buf[READ_CHUNK]; /* the core thread is the only reader */
  for (int i = 0; i < READS_PER_WAKEUP; i++) {
    g_autoptr(GError) error = NULL;
    gssize n = g_socket_receive(socket, buf, sizeof(buf), NULL, &error);
    if (n < 0 && g_error_matches(error, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
      return G_SOURCE_CONTINUE;
    if (n <= 0) {
      g_autofree char *why =
        n == 0 ? g_strdup("connection closed by peer")
               : g_strdup_printf("read failed: %s", error->message);
      link_failed(l, why);
      return G_SOURCE_REMOVE;
    }
    u->stats.ring_bytes_in += (guint64)n;
    usher_director_peer_bytes(u->director, usherd_now(), id, buf, (gsize)n);
    usherd_core_after_call(u);
    l = link_lookup(r, id);
    if (l == NULL || l->closing)
      return G_SOURCE_REMOVE; /* the core closed it */
  }
  return G_SOURCE_CONTINUE;
}

static void
link_start_reading(Link *l)
{
  l->in_source = g_socket_create_source(l->socket, G_IO_IN | G_IO_HUP | G_IO_ERR, NULL);
  g_source_set_callback(l->in_source, G_SOURCE_FUNC(on_readable), l, NULL);
  g_source_attach(l->in_source, l->r->u->context);
}

/* ---- Closing ---------------------------------------------------------------------------------------- */

static gboolean
on_linger_done(gpointer data)
{
  Link *l = data;
  g_debug("%s: closed with %" G_GSIZE_FORMAT " bytes unwritten", l->name, link_queued(l));
  g_clear_pointer(&l->linger, g_source_unref);
  link_free(l);
  return G_SOURCE_REMOVE;
}

void
ring_links_disconnect(RingLinks *r, UsherConnId id)
{
  Link *l = link_lookup(r, id);
  if (l == NULL)
    return;
  l->closing = TRUE;
  if (l->in_source != NULL) {
    g_source_destroy(l->in_source);
    g_clear_pointer(&l->in_source, g_source_unref);
  }
  if (l->socket == NULL || link_queued(l) == 0) {
    link_free(l);
    return;
  }
  /* Write out what was sent before the DISCONNECT (a QUIT, a CONNECT), for a short while. */
  l->linger = g_timeout_source_new_seconds(CLOSE_LINGER_SECS);
  g_source_set_callback(l->linger, on_linger_done, l, NULL);
  g_source_attach(l->linger, r->u->context);
}

/* ---- Incoming --------------------------------------------------------------------------------------- */

static gboolean
on_incoming(GSocketService *service, GSocketConnection *connection, GObject *source, gpointer data)
{
  RingLinks *r = data;
  Usherd *u = r->u;
  (void)service;
  (void)source;
  g_autoptr(GSocketAddress) remote = g_socket_connection_get_remote_address(connection, NULL);
  UsherIp ip;
  if (remote == NULL || !usherd_ip_from_gaddress(remote, &ip)) {
    g_io_stream_close(G_IO_STREAM(connection), NULL, NULL);
    return TRUE;
  }
  UsherConnId id = usher_director_peer_accepted(u->director, usherd_now(), &ip);
  if (id == USHER_CONN_ID_NONE) {
    u->stats.ring_refused++;
    g_io_stream_close(G_IO_STREAM(connection), NULL, NULL);
    usherd_core_after_call(u); /* the core logged why */
    return TRUE;
  }
  char ip_text[USHER_IP_STRLEN], text[USHER_IP_STRLEN + 16];
  g_snprintf(text, sizeof(text), "from %s:%u", usher_ip_to_string(&ip, ip_text),
             g_inet_socket_address_get_port(G_INET_SOCKET_ADDRESS(remote)));
  Link *l = link_new(r, id, text);
  link_attach(l, connection);
  link_start_reading(l);
  usherd_core_after_call(u); /* VERSION and ME go out */
  return TRUE;
}

/* ---- Outgoing --------------------------------------------------------------------------------------- */

typedef struct {
  RingLinks *r;
  UsherConnId id;
} Dial;

/* Dials whose callback has not run yet (main thread only): at exit, usherd lets them finish. */
static guint dials_pending;

guint
ring_links_dials_pending(void)
{
  return dials_pending;
}

static void
on_connected(GObject *client, GAsyncResult *result, gpointer data)
{
  Dial *dial = data;
  RingLinks *r = dial->r;
  UsherConnId id = dial->id;
  g_free(dial);
  dials_pending--;
  g_autoptr(GError) error = NULL;
  g_autoptr(GSocketConnection) connection =
    g_socket_client_connect_finish(G_SOCKET_CLIENT(client), result, &error);
  if (g_error_matches(error, G_IO_ERROR, G_IO_ERROR_CANCELLED))
    return; /* the core gave up on it (DISCONNECT), and r may be gone at shutdown */
  Link *l = link_lookup(r, id);
  if (l == NULL)
    return;
  g_clear_object(&l->dialling);
  Usherd *u = r->u;
  if (connection == NULL) {
    u->stats.ring_connect_failures++;
    g_autofree char *why = g_strdup_printf("connect failed: %s", error->message);
    link_failed(l, why);
    return;
  }
  link_attach(l, connection);
  link_start_reading(l);
  usher_director_peer_connected(u->director, usherd_now(), id);
  usherd_core_after_call(u);
}

void
ring_links_connect(RingLinks *r, UsherConnId id, const UsherRingAddr *addr)
{
  char ip[USHER_IP_STRLEN], what[USHER_IP_STRLEN + 16];
  g_snprintf(what, sizeof(what), "to %s:%u", usher_ip_to_string(&addr->ip, ip), addr->port);
  Link *l = link_new(r, id, what);
  l->dialling = g_cancellable_new();
  g_autoptr(GSocketAddress) target = usherd_gaddress_from_ip(&addr->ip, addr->port);
  Dial *dial = g_new0(Dial, 1);
  dial->r = r;
  dial->id = id;
  dials_pending++;
  /* The connect timeout is the core's (10 s): it sends DISCONNECT, which cancels this. */
  g_socket_client_connect_async(r->client, G_SOCKET_CONNECTABLE(target), l->dialling,
                                on_connected, dial);
}

/* ---- Life cycle ------------------------------------------------------------------------------------- */

RingLinks *
ring_links_new(Usherd *u, GError **error)
{
  RingLinks *r = g_new0(RingLinks, 1);
  r->u = u;
  r->links = g_hash_table_new(NULL, NULL);
  r->client = g_socket_client_new();
  /* Directors talk directly: no proxy lookups (GIO would ask libproxy or GSettings). */
  g_socket_client_set_enable_proxy(r->client, FALSE);
  g_autoptr(GSocketAddress) local = usherd_gaddress_from_ip(&u->self.ip, 0);
  g_socket_client_set_local_address(r->client, local);

  if (u->self.port != 0) {
    r->service = g_socket_service_new();
    g_autoptr(GSocketAddress) listen = usherd_gaddress_from_ip(&u->self.ip, u->self.port);
    if (!g_socket_listener_add_address(G_SOCKET_LISTENER(r->service), listen,
                                       G_SOCKET_TYPE_STREAM, G_SOCKET_PROTOCOL_TCP, NULL, NULL,
                                       error)) {
      char ip[USHER_IP_STRLEN];
      g_prefix_error(error, "ring listener on %s:%u: ", usher_ip_to_string(&u->self.ip, ip),
                     u->self.port);
      ring_links_free(r);
      return NULL;
    }
    g_signal_connect(r->service, "incoming", G_CALLBACK(on_incoming), r);
    g_socket_service_start(r->service);
  }
  return r;
}

void
ring_links_free(RingLinks *r)
{
  if (r == NULL)
    return;
  if (r->service != NULL) {
    g_socket_service_stop(r->service);
    g_socket_listener_close(G_SOCKET_LISTENER(r->service));
    g_object_unref(r->service);
  }
  GHashTableIter it;
  gpointer v;
  g_autoptr(GPtrArray) all = g_ptr_array_new();
  g_hash_table_iter_init(&it, r->links);
  while (g_hash_table_iter_next(&it, NULL, &v))
    g_ptr_array_add(all, v);
  for (guint i = 0; i < all->len; i++)
    link_free(g_ptr_array_index(all, i));
  g_hash_table_unref(r->links);
  g_object_unref(r->client);
  g_free(r);
}

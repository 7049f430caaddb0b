/* http.c - usherd's HTTP listener ([http] listen), on libsoup 3:
 *
 *   GET /metrics           Prometheus text (metrics.c)
 *   GET /lookup?user=U[&tag=T]
 *                          where U's sessions go, as JSON, for a Dovecot proxy's Lua passdb:
 *                          {"user":..,"host":"10.0.1.3","hostname":..,"hash":..,"refresh_secs":..}
 *   GET /nginx-auth        nginx mail's auth_http: Auth-User and Auth-Protocol in, Auth-Status,
 *                          Auth-Server and Auth-Port out; the password is not looked at (the
 *                          backend checks it when nginx logs in there)
 *   POST|GET /refresh?user=U
 *                          a proxy's session of U is still alive: keep U's entry from expiring
 *
 * Every lookup is a real ring login request: the user is assigned ring-wide exactly as a login
 * through a director would assign it, so an nginx proxy and a Dovecot proxy pointed at two
 * different directors of one ring send a user to the same backend. An answer waits (bounded by
 * the core's 30 s) while the ring is not synced or the user is being moved. At most
 * max_pending_lookups wait at once; more are answered "try again" and counted.
 *
 * Limits (none of this is meant for the open internet, but a stray client must not hurt the
 * director): at most max_pending_lookups + HTTP_SPARE_CONNECTIONS connections at once (more are
 * closed at once and counted), a connection that moves no byte for HTTP_IDLE_SECS is closed (the
 * socket's own timeout), and a request body over HTTP_BODY_MAX (or of a size not said up front)
 * is refused with 413 before libsoup reads it: none of the endpoints takes a body. Each
 * connection serves one request (Connection: close): nginx's auth_http and Prometheus open one
 * per request anyway, and no answer ever queues behind another in a client's socket. */
#include "daemon/usherd.h"

#include <json-glib/json-glib.h>
#include <libsoup/soup.h>
#include <string.h>

typedef enum {
  LOOKUP_JSON,
  LOOKUP_NGINX,
} LookupKind;

typedef struct {
  HttpServer *h;
  guint64 request;
  LookupKind kind;
  SoupServerMessage *msg; /* paused; a reference is held */
  char *user;
  char *protocol; /* nginx: imap, pop3, smtp */
  gulong disconnected_id;
} Lookup;

#define HTTP_SPARE_CONNECTIONS 100 /* beyond the waiting lookups: scrapes, refreshes */
#define HTTP_IDLE_SECS 60
#define HTTP_BODY_MAX 65536

struct _HttpServer {
  Usherd *u;
  SoupServer *server;
  GSocketService *service; /* accepts, within the limits, and hands connections to libsoup */
  GHashTable *connections; /* GSocketConnection* (weak references) */
  GHashTable *lookups;     /* request id -> Lookup* */
};

static void
lookup_free(Lookup *l)
{
  if (l->disconnected_id != 0)
    g_signal_handler_disconnect(l->msg, l->disconnected_id);
  g_object_unref(l->msg);
  g_free(l->user);
  g_free(l->protocol);
  g_free(l);
}

static void
respond_text(SoupServerMessage *msg, guint status, const char *type, const char *body)
{
  soup_server_message_set_status(msg, status, NULL);
  soup_server_message_set_response(msg, type, SOUP_MEMORY_COPY, body, strlen(body));
}

/* ---- /metrics ------------------------------------------------------------------------------------------ */

static void
on_metrics(SoupServer *server, SoupServerMessage *msg, const char *path, GHashTable *query,
           gpointer data)
{
  HttpServer *h = data;
  (void)server;
  (void)path;
  (void)query;
  if (soup_server_message_get_method(msg) != SOUP_METHOD_GET &&
      soup_server_message_get_method(msg) != SOUP_METHOD_HEAD) {
    respond_text(msg, SOUP_STATUS_METHOD_NOT_ALLOWED, "text/plain", "GET /metrics\n");
    return;
  }
  h->u->stats.http_requests++;
  g_autofree char *text = usherd_metrics_text(h->u);
  respond_text(msg, SOUP_STATUS_OK, "text/plain; version=0.0.4; charset=utf-8", text);
}

/* ---- Lookups ---------------------------------------------------------------------------------------- */

static void
on_lookup_disconnected(SoupServerMessage *msg, gpointer data)
{
  Lookup *l = data;
  HttpServer *h = l->h;
  (void)msg;
  /* The proxy gave up: no answer will be sent, and the core forgets the request. */
  usher_director_login_cancel(h->u->director, usherd_now(), l->request);
  l->disconnected_id = 0;
  g_hash_table_remove(h->lookups, &l->request); /* frees l */
  usherd_core_after_call(h->u);
}

static guint16
protocol_port(const UsherConfig *c, const char *protocol)
{
  if (g_ascii_strcasecmp(protocol, "pop3") == 0)
    return c->backend_pop3_port;
  if (g_ascii_strcasecmp(protocol, "smtp") == 0)
    return c->backend_smtp_port;
  return c->backend_imap_port;
}

static void
answer_nginx_failure(SoupServerMessage *msg, const char *why)
{
  SoupMessageHeaders *hd = soup_server_message_get_response_headers(msg);
  soup_message_headers_replace(hd, "Auth-Status", why);
  soup_message_headers_replace(hd, "Auth-Wait", "3");
  soup_message_headers_replace(hd, "Auth-Error-Code", "451 4.3.0");
  soup_server_message_set_status(msg, SOUP_STATUS_OK, NULL);
}

/* Starts a ring login request for a paused message. */
static void
lookup_start(HttpServer *h, SoupServerMessage *msg, LookupKind kind, const char *user,
             const char *tag, const char *protocol)
{
  Usherd *u = h->u;
  if (g_hash_table_size(h->lookups) >= u->config->http_max_pending_lookups) {
    u->stats.http_lookups_refused++;
    if (kind == LOOKUP_NGINX)
      answer_nginx_failure(msg, "Temporary server problem, try again later");
    else
      respond_text(msg, SOUP_STATUS_SERVICE_UNAVAILABLE, "application/json",
                   "{\"error\":\"too many lookups waiting, try again\"}\n");
    return;
  }
  Lookup *l = g_new0(Lookup, 1);
  l->h = h;
  l->request = ++u->next_request;
  l->kind = kind;
  l->msg = g_object_ref(msg);
  l->user = g_strdup(user);
  l->protocol = g_strdup(protocol != NULL ? protocol : "imap");
  g_hash_table_insert(h->lookups, &l->request, l);
  soup_server_message_pause(msg);
  l->disconnected_id =
    g_signal_connect(msg, "disconnected", G_CALLBACK(on_lookup_disconnected), l);
  u->stats.http_lookups++;
  g_assert(usher_director_login_request(u->director, usherd_now(), l->request, user, tag));
  usherd_core_after_call(u); /* may answer at once (http_server_login_result) */
}

void
http_server_login_result(HttpServer *h, const UsherEffect *e)
{
  Lookup *l = g_hash_table_lookup(h->lookups, &e->login.request);
  if (l == NULL)
    return;
  SoupServerMessage *msg = l->msg;
  char ip[USHER_IP_STRLEN];
  if (e->login.status == USHER_LOGIN_OK)
    usher_ip_to_string(&e->login.host, ip);
  if (l->kind == LOOKUP_NGINX) {
    if (e->login.status != USHER_LOGIN_OK) {
      h->u->stats.http_lookups_failed++;
      answer_nginx_failure(msg, "Temporary server problem, try again later");
    } else {
      SoupMessageHeaders *hd = soup_server_message_get_response_headers(msg);
      soup_message_headers_replace(hd, "Auth-Status", "OK");
      soup_message_headers_replace(hd, "Auth-Server", ip);
      g_autofree char *port =
        g_strdup_printf("%u", protocol_port(h->u->config, l->protocol));
      soup_message_headers_replace(hd, "Auth-Port", port);
      soup_server_message_set_status(msg, SOUP_STATUS_OK, NULL);
    }
  } else if (e->login.status != USHER_LOGIN_OK) {
    h->u->stats.http_lookups_failed++;
    g_autoptr(JsonBuilder) b = json_builder_new();
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "user");
    usherd_json_add_string(b, l->user);
    json_builder_set_member_name(b, "error");
    usherd_json_add_string(b, e->login.reason);
    json_builder_end_object(b);
    g_autoptr(JsonNode) root = json_builder_get_root(b);
    g_autofree char *text = json_to_string(root, FALSE);
    respond_text(msg, SOUP_STATUS_SERVICE_UNAVAILABLE, "application/json", text);
  } else {
    g_autoptr(JsonBuilder) b = json_builder_new();
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "user");
    usherd_json_add_string(b, l->user);
    json_builder_set_member_name(b, "host");
    usherd_json_add_string(b, ip);
    json_builder_set_member_name(b, "hostname");
    usherd_json_add_string(b, e->login.hostname != NULL ? e->login.hostname : ip);
    json_builder_set_member_name(b, "hash");
    json_builder_add_int_value(b, e->login.hash);
    json_builder_set_member_name(b, "refresh_secs");
    json_builder_add_int_value(b, e->login.refresh_secs);
    json_builder_end_object(b);
    g_autoptr(JsonNode) root = json_builder_get_root(b);
    g_autofree char *text = json_to_string(root, FALSE);
    respond_text(msg, SOUP_STATUS_OK, "application/json", text);
  }
  soup_server_message_unpause(msg);
  g_hash_table_remove(h->lookups, &e->login.request); /* frees l */
}

static const char *
query_get(GHashTable *query, const char *key)
{
  return query != NULL ? g_hash_table_lookup(query, key) : NULL;
}

static gboolean
valid_user(const char *user)
{
  return user != NULL && user[0] != '\0' && strlen(user) <= 1024 &&
         g_utf8_validate(user, -1, NULL) && strpbrk(user, "\t\r\n") == NULL;
}

static void
on_lookup(SoupServer *server, SoupServerMessage *msg, const char *path, GHashTable *query,
          gpointer data)
{
  HttpServer *h = data;
  (void)server;
  (void)path;
  h->u->stats.http_requests++;
  const char *user = query_get(query, "user");
  if (!valid_user(user)) {
    h->u->stats.http_bad_requests++;
    respond_text(msg, SOUP_STATUS_BAD_REQUEST, "application/json",
                 "{\"error\":\"give user=NAME (1 to 1024 bytes of UTF-8, no tab or newline)\"}\n");
    return;
  }
  lookup_start(h, msg, LOOKUP_JSON, user, query_get(query, "tag"), NULL);
}

static void
on_nginx_auth(SoupServer *server, SoupServerMessage *msg, const char *path, GHashTable *query,
              gpointer data)
{
  HttpServer *h = data;
  (void)server;
  (void)path;
  (void)query;
  h->u->stats.http_requests++;
  SoupMessageHeaders *in = soup_server_message_get_request_headers(msg);
  const char *raw_user = soup_message_headers_get_one(in, "Auth-User");
  const char *protocol = soup_message_headers_get_one(in, "Auth-Protocol");
  /* nginx %-escapes the user name it sends. */
  g_autofree char *user = raw_user != NULL ? g_uri_unescape_string(raw_user, NULL) : NULL;
  if (!valid_user(user) || protocol == NULL) {
    h->u->stats.http_bad_requests++;
    soup_message_headers_replace(soup_server_message_get_response_headers(msg), "Auth-Status",
                                 "Invalid login or password");
    soup_server_message_set_status(msg, SOUP_STATUS_OK, NULL);
    return;
  }
  lookup_start(h, msg, LOOKUP_NGINX, user, NULL, protocol);
}

static void
on_refresh(SoupServer *server, SoupServerMessage *msg, const char *path, GHashTable *query,
           gpointer data)
{
  HttpServer *h = data;
  (void)server;
  (void)path;
  h->u->stats.http_requests++;
  const char *user = query_get(query, "user");
  if (!valid_user(user)) {
    h->u->stats.http_bad_requests++;
    respond_text(msg, SOUP_STATUS_BAD_REQUEST, "text/plain", "give user=NAME\n");
    return;
  }
  usher_director_user_refresh(h->u->director, usherd_now(), user);
  usherd_core_after_call(h->u);
  soup_server_message_set_status(msg, SOUP_STATUS_NO_CONTENT, NULL);
}

static void
on_other(SoupServer *server, SoupServerMessage *msg, const char *path, GHashTable *query,
         gpointer data)
{
  HttpServer *h = data;
  (void)server;
  (void)query;
  (void)path;
  h->u->stats.http_requests++;
  h->u->stats.http_bad_requests++;
  respond_text(msg, SOUP_STATUS_NOT_FOUND, "text/plain",
               "usherd serves /metrics, /lookup?user=NAME, /nginx-auth and /refresh?user=NAME\n");
}

/* ---- Limits ----------------------------------------------------------------------------------------- */

/* Before the body is read: a body no endpoint wants is refused, not accumulated in memory. */
static void
on_early(SoupServer *server, SoupServerMessage *msg, const char *path, GHashTable *query,
         gpointer data)
{
  HttpServer *h = data;
  (void)server;
  (void)path;
  (void)query;
  SoupMessageHeaders *in = soup_server_message_get_request_headers(msg);
  SoupEncoding encoding = soup_message_headers_get_encoding(in);
  if (encoding == SOUP_ENCODING_NONE ||
      (encoding == SOUP_ENCODING_CONTENT_LENGTH &&
       soup_message_headers_get_content_length(in) <= HTTP_BODY_MAX))
    return;
  h->u->stats.http_requests++;
  h->u->stats.http_bad_requests++;
  h->u->stats.http_bodies_refused++;
  /* libsoup would read the whole body before answering: the connection is taken from it, told
   * why in a few bytes (a fresh socket's buffer takes them at once) and closed. */
  static const char why[] = "usherd's endpoints take no request body over 65536 bytes or "
                            "without a Content-Length.\n";
  g_autofree char *answer = g_strdup_printf("HTTP/1.1 413 Request Entity Too Large\r\n"
                                            "Connection: close\r\nContent-Type: text/plain\r\n"
                                            "Content-Length: %zu\r\n\r\n%s",
                                            sizeof(why) - 1, why);
  GIOStream *conn = soup_server_message_steal_connection(msg);
  (void)g_output_stream_write_all(g_io_stream_get_output_stream(conn), answer, strlen(answer),
                                  NULL, NULL, NULL);
  (void)g_io_stream_close(conn, NULL, NULL);
  g_object_unref(conn);
}

/* One request per connection (see the file's head): every answer says Connection: close, and
 * libsoup closes after it. A client that pipelines requests without reading the answers then
 * never has more than one answer waiting in its socket, which on_early's write relies on. */
static void
on_request_started(SoupServer *server, SoupServerMessage *msg, gpointer data)
{
  (void)server;
  (void)data;
  soup_message_headers_replace(soup_server_message_get_response_headers(msg), "Connection",
                               "close");
}

static void
on_connection_gone(gpointer data, GObject *gone)
{
  HttpServer *h = data;
  g_hash_table_remove(h->connections, gone);
}

static gboolean
on_incoming(GSocketService *service, GSocketConnection *conn, GObject *source, gpointer data)
{
  HttpServer *h = data;
  (void)service;
  (void)source;
  guint limit = h->u->config->http_max_pending_lookups + HTTP_SPARE_CONNECTIONS;
  if (g_hash_table_size(h->connections) >= limit) {
    h->u->stats.http_connections_refused++;
    (void)g_io_stream_close(G_IO_STREAM(conn), NULL, NULL);
    return TRUE;
  }
  g_socket_set_timeout(g_socket_connection_get_socket(conn), HTTP_IDLE_SECS);
  g_autoptr(GSocketAddress) local = g_socket_connection_get_local_address(conn, NULL);
  g_autoptr(GSocketAddress) remote = g_socket_connection_get_remote_address(conn, NULL);
  g_autoptr(GError) error = NULL;
  if (!soup_server_accept_iostream(h->server, G_IO_STREAM(conn), local, remote, &error)) {
    g_message("http: a connection not taken: %s", error->message);
    return TRUE;
  }
  g_hash_table_add(h->connections, conn);
  g_object_weak_ref(G_OBJECT(conn), on_connection_gone, h);
  return TRUE;
}

/* ---- Life cycle ------------------------------------------------------------------------------------- */

HttpServer *
http_server_new(Usherd *u, GError **error)
{
  if (!u->config->has_http_listen)
    return NULL;
  HttpServer *h = g_new0(HttpServer, 1);
  h->u = u;
  h->lookups = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL, (GDestroyNotify)lookup_free);
  h->server = soup_server_new("server-header", "usherd", NULL);
  g_signal_connect(h->server, "request-started", G_CALLBACK(on_request_started), NULL);
  soup_server_add_handler(h->server, "/metrics", on_metrics, h, NULL);
  soup_server_add_handler(h->server, "/lookup", on_lookup, h, NULL);
  soup_server_add_handler(h->server, "/nginx-auth", on_nginx_auth, h, NULL);
  soup_server_add_handler(h->server, "/refresh", on_refresh, h, NULL);
  soup_server_add_handler(h->server, NULL, on_other, h, NULL);
  /* Early handlers run for the paths of the normal ones: one per path. */
  static const char *const paths[] = {"/metrics", "/lookup", "/nginx-auth", "/refresh", NULL};
  for (gsize i = 0; i < G_N_ELEMENTS(paths); i++)
    soup_server_add_early_handler(h->server, paths[i], on_early, h, NULL);
  h->connections = g_hash_table_new(NULL, NULL);
  h->service = g_socket_service_new();
  g_autoptr(GSocketAddress) address =
    usherd_gaddress_from_ip(&u->config->http_listen.ip, u->config->http_listen.port);
  if (!g_socket_listener_add_address(G_SOCKET_LISTENER(h->service), address, G_SOCKET_TYPE_STREAM,
                                     G_SOCKET_PROTOCOL_TCP, NULL, NULL, error)) {
    g_prefix_error(error, "[http] listen: ");
    http_server_free(h);
    return NULL;
  }
  g_signal_connect(h->service, "incoming", G_CALLBACK(on_incoming), h);
  g_socket_service_start(h->service);
  return h;
}

void
http_server_free(HttpServer *h)
{
  if (h == NULL)
    return;
  if (h->service != NULL) {
    g_socket_service_stop(h->service);
    g_socket_listener_close(G_SOCKET_LISTENER(h->service));
    g_signal_handlers_disconnect_by_data(h->service, h);
    g_object_unref(h->service);
  }
  if (h->connections != NULL) {
    GHashTableIter it;
    gpointer conn;
    g_hash_table_iter_init(&it, h->connections);
    while (g_hash_table_iter_next(&it, &conn, NULL))
      g_object_weak_unref(conn, on_connection_gone, h);
    g_hash_table_unref(h->connections);
  }
  soup_server_disconnect(h->server);
  g_hash_table_unref(h->lookups);
  g_object_unref(h->server);
  g_free(h);
}

/* health.c - the backend probes the director asks for ([health], doc/health.md).
 *
 * The core decides when to probe which backend (a PROBE effect, once per interval) and what the
 * results mean (hysteresis, votes, quorum); this file only runs one probe and reports ok or not,
 * with a short reason, through usher_director_probe_done(). Probes run on the core thread's
 * context with GIO's asynchronous streams; each has its own deadline ([health] timeout).
 *
 *   tcp    connect to the backend's imap_port
 *   imap   imap_port: the greeting is "* OK" (or PREAUTH); with probe_user, LOGIN must be OK
 *   pop3   pop3_port: the greeting is "+OK"; with probe_user, USER and PASS must be +OK
 *   lmtp   lmtp_port: the greeting is 220 and LHLO is answered with 250
 *
 * A backend listed in [proxy] proxy_protocol_backends expects a PROXY header first: the probe
 * sends a v2 LOCAL one, which such a backend accepts as a health check. */
#include "daemon/usherd.h"

#include "libcore/proxy-header.h"

#include <string.h>

#define PROBE_ANSWER_MAX 8192 /* bytes of answer a probe reads before it gives up */

typedef enum {
  STEP_GREETING,
  STEP_LOGIN, /* IMAP LOGIN / POP3 USER */
  STEP_PASS,  /* POP3 PASS */
  STEP_LHLO,
} ProbeStep;

typedef struct {
  Usherd *u;
  guint64 id;
  UsherHealthProbe kind;
  char ip[USHER_IP_STRLEN];
  guint16 port;
  GCancellable *cancel;
  GSource *timeout;
  GSocketConnection *connection;
  ProbeStep step;
  GString *answer; /* unread part of what the backend sent */
  char buf[1024];
} Probe;

static void probe_read_more(Probe *p);

static void
probe_free(Probe *p)
{
  if (p->timeout != NULL) {
    g_source_destroy(p->timeout);
    g_source_unref(p->timeout);
  }
  if (p->cancel != NULL)
    g_cancellable_cancel(p->cancel);
  g_clear_object(&p->cancel);
  if (p->connection != NULL) {
    g_io_stream_close(G_IO_STREAM(p->connection), NULL, NULL);
    g_object_unref(p->connection);
  }
  g_string_free(p->answer, TRUE);
  g_free(p);
}

static Probe *
probe_lookup(Usherd *u, guint64 id)
{
  return u->probes != NULL ? g_hash_table_lookup(u->probes, &id) : NULL;
}

/* The probe finished: tell the core once, then forget it. */
static void
probe_done(Probe *p, gboolean ok, const char *detail)
{
  Usherd *u = p->u;
  guint64 id = p->id;
  g_autofree char *what = g_strdup_printf("%s:%u: %s", p->ip, p->port, detail);
  g_hash_table_remove(u->probes, &id); /* frees p */
  if (ok)
    u->stats.health_probes_ok++;
  else
    u->stats.health_probes_failed++;
  usher_director_probe_done(u->director, usherd_now(), id, ok, what);
  usherd_core_after_call(u);
}

static gboolean
on_probe_timeout(gpointer data)
{
  Probe *p = data;
  g_clear_pointer(&p->timeout, g_source_unref);
  const char *when = p->connection == NULL      ? "connecting"
                     : p->step == STEP_GREETING ? "waiting for the greeting"
                                                : "waiting for an answer";
  g_autofree char *why =
      g_strdup_printf("no answer in %us (%s)", p->u->config->health_timeout_secs, when);
  probe_done(p, FALSE, why);
  return G_SOURCE_REMOVE;
}

/* Async callbacks carry the id, not the probe: the probe may be gone when they run. */
typedef struct {
  Usherd *u;
  guint64 id;
  GBytes *keep; /* bytes an asynchronous write still uses */
} ProbeRef;

static ProbeRef *
ref_new(Probe *p)
{
  ProbeRef *r = g_new0(ProbeRef, 1);
  r->u = p->u;
  r->id = p->id;
  return r;
}

static Probe *
ref_take(ProbeRef *r)
{
  Probe *p = probe_lookup(r->u, r->id);
  if (r->keep != NULL)
    g_bytes_unref(r->keep);
  g_free(r);
  return p;
}

static void
on_written(GObject *source, GAsyncResult *result, gpointer data)
{
  g_autoptr(GError) error = NULL;
  gboolean ok = g_output_stream_write_all_finish(G_OUTPUT_STREAM(source), result, NULL, &error);
  Probe *p = ref_take(data);
  if (p != NULL && !ok)
    probe_done(p, FALSE, error->message);
}

static void
probe_write(Probe *p, const char *text, gsize len)
{
  GOutputStream *out = g_io_stream_get_output_stream(G_IO_STREAM(p->connection));
  /* The bytes must outlive this call: the callback's reference keeps them. */
  ProbeRef *r = ref_new(p);
  r->keep = g_bytes_new(text, len);
  g_output_stream_write_all_async(out, g_bytes_get_data(r->keep, NULL), len, G_PRIORITY_DEFAULT,
                                  p->cancel, on_written, r);
}

static void probe_send(Probe *p, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static void
probe_send(Probe *p, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  g_autofree char *line = g_strdup_vprintf(fmt, ap);
  va_end(ap);
  probe_write(p, line, strlen(line));
}

/* Ends a successful probe, saying goodbye to the backend without waiting for its answer. */
static void
probe_ok(Probe *p, const char *bye, const char *detail)
{
  if (bye != NULL) {
    GOutputStream *out = g_io_stream_get_output_stream(G_IO_STREAM(p->connection));
    if (G_IS_POLLABLE_OUTPUT_STREAM(out)) /* best effort, never blocks */
      (void)g_pollable_output_stream_write_nonblocking(G_POLLABLE_OUTPUT_STREAM(out), bye,
                                                       strlen(bye), NULL, NULL);
  }
  probe_done(p, TRUE, detail);
}

/* One line of the backend's answer (without CRLF). FALSE: the probe has ended. */
static gboolean
probe_line(Probe *p, const char *line)
{
  const UsherConfig *c = p->u->config;
  gboolean login = c->health_probe_user[0] != '\0';
  g_autofree char *shown = g_strndup(line, 80);
  switch (p->kind) {
  case USHER_HEALTH_PROBE_IMAP:
    if (p->step == STEP_GREETING) {
      if (g_ascii_strncasecmp(line, "* OK", 4) != 0 &&
          g_ascii_strncasecmp(line, "* PREAUTH", 9) != 0) {
        g_autofree char *why = g_strdup_printf("greeting is not * OK: %s", shown);
        probe_done(p, FALSE, why);
        return FALSE;
      }
      if (!login) {
        probe_ok(p, "u1 LOGOUT\r\n", "IMAP greeting");
        return FALSE;
      }
      p->step = STEP_LOGIN;
      probe_send(p, "u1 LOGIN \"%s\" \"%s\"\r\n", c->health_probe_user, c->health_probe_password);
      return TRUE;
    }
    if (strncmp(line, "u1 ", 3) != 0)
      return TRUE; /* untagged (CAPABILITY and such) */
    if (g_ascii_strncasecmp(line + 3, "OK", 2) == 0) {
      probe_ok(p, "u2 LOGOUT\r\n", "IMAP login");
      return FALSE;
    } else {
      g_autofree char *why = g_strdup_printf("LOGIN refused: %s", shown);
      probe_done(p, FALSE, why);
      return FALSE;
    }
  case USHER_HEALTH_PROBE_POP3:
    if (strncmp(line, "+OK", 3) != 0) {
      g_autofree char *why = g_strdup_printf("%s is not +OK: %s",
                                             p->step == STEP_GREETING ? "greeting"
                                             : p->step == STEP_LOGIN  ? "USER"
                                                                      : "PASS",
                                             shown);
      probe_done(p, FALSE, why);
      return FALSE;
    }
    if (p->step == STEP_GREETING && login) {
      p->step = STEP_LOGIN;
      probe_send(p, "USER %s\r\n", c->health_probe_user);
      return TRUE;
    }
    if (p->step == STEP_LOGIN) {
      p->step = STEP_PASS;
      probe_send(p, "PASS %s\r\n", c->health_probe_password);
      return TRUE;
    }
    probe_ok(p, "QUIT\r\n", login ? "POP3 login" : "POP3 greeting");
    return FALSE;
  case USHER_HEALTH_PROBE_LMTP: {
    const char *want = p->step == STEP_GREETING ? "220" : "250";
    if (strncmp(line, want, 3) != 0) {
      g_autofree char *why =
          g_strdup_printf("%s answered %s", p->step == STEP_GREETING ? "greeting" : "LHLO", shown);
      probe_done(p, FALSE, why);
      return FALSE;
    }
    if (line[3] == '-')
      return TRUE; /* more lines of the same reply */
    if (p->step == STEP_GREETING) {
      p->step = STEP_LHLO;
      probe_send(p, "LHLO usherd-health\r\n");
      return TRUE;
    }
    probe_ok(p, "QUIT\r\n", "LMTP LHLO");
    return FALSE;
  }
  case USHER_HEALTH_PROBE_TCP:
    break;
  }
  g_assert_not_reached();
  return FALSE;
}

static void
on_read(GObject *source, GAsyncResult *result, gpointer data)
{
  g_autoptr(GError) error = NULL;
  gssize n = g_input_stream_read_finish(G_INPUT_STREAM(source), result, &error);
  Probe *p = ref_take(data);
  if (p == NULL)
    return;
  if (n <= 0) {
    probe_done(p, FALSE, n == 0 ? "the backend closed the connection" : error->message);
    return;
  }
  g_string_append_len(p->answer, p->buf, n);
  char *nl;
  while ((nl = memchr(p->answer->str, '\n', p->answer->len)) != NULL) {
    gsize len = (gsize)(nl - p->answer->str);
    g_autofree char *line = g_strndup(p->answer->str, len > 0 && nl[-1] == '\r' ? len - 1 : len);
    g_string_erase(p->answer, 0, (gssize)len + 1);
    if (!probe_line(p, line))
      return;
  }
  if (p->answer->len > PROBE_ANSWER_MAX) {
    probe_done(p, FALSE, "answer line too long");
    return;
  }
  probe_read_more(p);
}

static void
probe_read_more(Probe *p)
{
  GInputStream *in = g_io_stream_get_input_stream(G_IO_STREAM(p->connection));
  g_input_stream_read_async(in, p->buf, sizeof(p->buf), G_PRIORITY_DEFAULT, p->cancel, on_read,
                            ref_new(p));
}

static gboolean
in_nets(const GArray *nets, const UsherIp *ip)
{
  for (guint i = 0; nets != NULL && i < nets->len; i++)
    if (usher_net_contains(&g_array_index(nets, UsherNet, i), ip))
      return TRUE;
  return FALSE;
}

static void
on_connected(GObject *source, GAsyncResult *result, gpointer data)
{
  g_autoptr(GError) error = NULL;
  GSocketConnection *connection =
      g_socket_client_connect_finish(G_SOCKET_CLIENT(source), result, &error);
  Probe *p = ref_take(data);
  if (p == NULL) {
    g_clear_object(&connection);
    return;
  }
  if (connection == NULL) {
    probe_done(p, FALSE, error->message);
    return;
  }
  p->connection = connection;
  UsherIp ip;
  if (usher_ip_parse(p->ip, -1, &ip) && in_nets(p->u->config->proxy_protocol_backends, &ip)) {
    g_autoptr(GByteArray) header = g_byte_array_new();
    UsherIp unknown = {0};
    usher_proxy_header_format_v2(&unknown, 0, &unknown, 0, header);
    probe_write(p, (const char *)header->data, header->len);
  }
  if (p->kind == USHER_HEALTH_PROBE_TCP) {
    probe_ok(p, NULL, "TCP connect");
    return;
  }
  probe_read_more(p);
}

void
health_probe_start(Usherd *u, const UsherEffect *e)
{
  const UsherConfig *c = u->config;
  if (u->probes == NULL)
    u->probes =
        g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free, (GDestroyNotify)probe_free);
  Probe *p = g_new0(Probe, 1);
  p->u = u;
  p->id = e->probe.id;
  p->kind = c->health_probe;
  usher_ip_to_string(&e->probe.host, p->ip);
  p->port = p->kind == USHER_HEALTH_PROBE_POP3   ? c->backend_pop3_port
            : p->kind == USHER_HEALTH_PROBE_LMTP ? c->backend_lmtp_port
                                                 : c->backend_imap_port;
  p->cancel = g_cancellable_new();
  p->answer = g_string_new(NULL);
  g_hash_table_insert(u->probes, g_memdup2(&p->id, sizeof(p->id)), p);
  u->stats.health_probes_run++;
  p->timeout = g_timeout_source_new_seconds(MAX(c->health_timeout_secs, 1u));
  g_source_set_callback(p->timeout, on_probe_timeout, p, NULL);
  g_source_attach(p->timeout, u->context);

  g_autoptr(GSocketAddress) where = usherd_gaddress_from_ip(&e->probe.host, p->port);
  g_autoptr(GSocketClient) client = g_socket_client_new();
  g_socket_client_set_enable_proxy(client, FALSE);
  g_socket_client_connect_async(client, G_SOCKET_CONNECTABLE(where), p->cancel, on_connected,
                                ref_new(p));
}

void
health_probes_free(Usherd *u)
{
  g_clear_pointer(&u->probes, g_hash_table_unref);
}

/* admin.c - the director-admin socket: Dovecot's protocol for `doveadm director ... -a SOCKET`
 * and poolmon-style scripts, plus Usher's JSON commands for usherctl.
 *
 * The protocol itself (parsing, running, formatting) is libcore/admin-proto.c; this file moves
 * bytes and keeps order. Each client's commands run strictly one after another: a command that
 * waits for the ring holds the ones behind it (they stay queued, never dropped, unlike Dovecot,
 * which loses a pipelined line when a command waits). Every client is bounded: line length,
 * queued commands, unread output; a client that breaks a bound or sends garbage is closed with a
 * log line naming it, and counted. */


#include "daemon/usherd.h"
#include "daemon/proxy.h"

#include <errno.h>
#include <gio/gunixsocketaddress.h>
#include <grp.h>
#include <json-glib/json-glib.h>
#include <pwd.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ADMIN_PENDING_MAX 1000                 /* queued command lines per client */
#define ADMIN_OUTPUT_MAX (512u * 1024 * 1024)  /* unread reply bytes per client (USER-LIST) */
#define ADMIN_READ_CHUNK 16384

typedef struct {
  AdminServer *a;
  guint id;
  char name[96];
  GSocketConnection *connection;
  GSocket *socket;
  GSource *in_source, *out_source;
  UsherLineReader *reader;
  gboolean versioned;
  GQueue pending; /* char*: command lines not run yet */
  guint64 waiting_op;
  gboolean running;
  gboolean eof;
  GString *out;
  gsize out_off;
  gint64 last_io_us; /* the last byte read or written (admin_idle_timeout) */
} AdminClient;

struct _AdminServer {
  Usherd *u;
  GSocketService *service;
  GHashTable *clients; /* id -> AdminClient* */
  GHashTable *ops;     /* op -> client id */
  guint next_client;
  guint64 next_op;
  char *socket_path; /* created by us: unlinked at exit */
  GSource *idle_sweep;
};

static void client_run(AdminClient *c);
static void client_flush(AdminClient *c);

static void
client_free(AdminClient *c)
{
  AdminServer *a = c->a;
  g_hash_table_remove(a->clients, GUINT_TO_POINTER(c->id));
  if (c->waiting_op != 0)
    g_hash_table_remove(a->ops, &c->waiting_op); /* its reply, if it comes, goes nowhere */
  if (c->in_source != NULL) {
    g_source_destroy(c->in_source);
    g_source_unref(c->in_source);
  }
  if (c->out_source != NULL) {
    g_source_destroy(c->out_source);
    g_source_unref(c->out_source);
  }
  g_io_stream_close(G_IO_STREAM(c->connection), NULL, NULL);
  g_object_unref(c->connection);
  usher_line_reader_free(c->reader);
  g_queue_clear_full(&c->pending, g_free);
  g_string_free(c->out, TRUE);
  g_debug("%s: closed", c->name);
  g_free(c);
}

static AdminClient *
client_lookup(AdminServer *a, guint id)
{
  return g_hash_table_lookup(a->clients, GUINT_TO_POINTER(id));
}

/* A client that broke the protocol or a bound: logged, counted, closed without a reply. */
static void
client_reject(AdminClient *c, guint64 *counter, const char *why)
{
  (*counter)++;
  g_warning("%s: %s: closing the connection", c->name, why);
  client_free(c);
}

/* Closes the client if it is done: input ended, nothing queued or waiting, output written. */
static gboolean
client_maybe_finish(AdminClient *c)
{
  if (c->eof && c->waiting_op == 0 && c->pending.length == 0 && c->out->len == c->out_off) {
    client_free(c);
    return TRUE;
  }
  return FALSE;
}

/* ---- Output ----------------------------------------------------------------------------------------- */

static gboolean
on_client_writable(GSocket *socket, GIOCondition cond, gpointer data)
{
  AdminClient *c = data;
  AdminServer *a = c->a;
  guint id = c->id;
  (void)socket;
  (void)cond;
  client_flush(c);
  c = client_lookup(a, id);
  return c != NULL && c->out_source != NULL ? G_SOURCE_CONTINUE : G_SOURCE_REMOVE;
}

static void
client_flush(AdminClient *c)
{
  while (c->out_off < c->out->len) {
    g_autoptr(GError) error = NULL;
    gssize n = g_socket_send(c->socket, c->out->str + c->out_off, c->out->len - c->out_off, NULL,
                             &error);
    if (n < 0) {
      if (g_error_matches(error, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
        break;
      g_debug("%s: write failed: %s", c->name, error->message);
      client_free(c);
      return;
    }
    c->out_off += (gsize)n;
    c->last_io_us = g_get_monotonic_time();
  }
  if (c->out_off == c->out->len) {
    g_string_truncate(c->out, 0);
    c->out_off = 0;
    if (c->out_source != NULL) {
      g_source_destroy(c->out_source);
      g_clear_pointer(&c->out_source, g_source_unref);
    }
    (void)client_maybe_finish(c);
    return;
  }
  /* What was sent goes, once it is half the buffer: a client that reads steadily but never
   * quite catches up would otherwise keep every byte ever sent to it. */
  if (c->out_off >= 64 * 1024 && c->out_off * 2 >= c->out->len) {
    g_string_erase(c->out, 0, (gssize)c->out_off);
    c->out_off = 0;
  }
  if (c->out_source == NULL) {
    c->out_source = g_socket_create_source(c->socket, G_IO_OUT, NULL);
    g_source_set_callback(c->out_source, G_SOURCE_FUNC(on_client_writable), c, NULL);
    g_source_attach(c->out_source, c->a->u->context);
  }
}

/* Appends a reply; FALSE if the client was closed for unread output. */
static gboolean
client_append(AdminClient *c, const char *text, gsize len)
{
  if (c->out->len - c->out_off + len > ADMIN_OUTPUT_MAX) {
    client_reject(c, &c->a->u->stats.admin_overflows, "reply output not being read");
    return FALSE;
  }
  g_string_append_len(c->out, text, (gssize)len);
  return TRUE;
}

/* ---- Usher's JSON commands --------------------------------------------------------------------------- */

void
usherd_json_add_string(JsonBuilder *b, const char *text)
{
  if (text == NULL || g_utf8_validate(text, -1, NULL)) {
    json_builder_add_string_value(b, text);
    return;
  }
  g_autofree char *valid = g_utf8_make_valid(text, -1);
  json_builder_add_string_value(b, valid);
}

static void
add_ring_info(JsonBuilder *b, const UsherRingInfo *ring, gint64 now_mono_us)
{
  json_builder_set_member_name(b, "handshaked");
  json_builder_add_boolean_value(b, ring->handshaked);
  json_builder_set_member_name(b, "synced");
  json_builder_add_boolean_value(b, ring->synced);
  json_builder_set_member_name(b, "unsynced_secs");
  json_builder_add_int_value(b, ring->synced ? 0 : (now_mono_us - ring->unsynced_since_us) / 1000000);
  json_builder_set_member_name(b, "alone");
  json_builder_add_boolean_value(b, ring->alone);
  json_builder_set_member_name(b, "min_version");
  json_builder_add_int_value(b, ring->min_version);
  json_builder_set_member_name(b, "last_sync_msecs");
  json_builder_add_int_value(b, ring->last_sync_msecs);
#define RING_FIELD(name)                                                                           \
  json_builder_set_member_name(b, #name);                                                          \
  json_builder_add_int_value(b, ring->name);
  RING_FIELD(n_members)
  RING_FIELD(n_connections)
  RING_FIELD(pending_requests)
  RING_FIELD(moving_users)
  RING_FIELD(kicks_running)
  RING_FIELD(admin_kicks_running)
  RING_FIELD(pending_admin_ops)
  RING_FIELD(n_users)
#undef RING_FIELD
}

static void
build_stats(Usherd *u, JsonBuilder *b, UsherNow now)
{
  const UsherDirectorStats *ds = usher_director_get_stats(u->director);
  UsherRingInfo ring;
  usher_director_get_ring_info(u->director, &ring);
  json_builder_begin_object(b);
  json_builder_set_member_name(b, "uptime_secs");
  json_builder_add_int_value(b, (now.wall_us - u->started_wall_us) / 1000000);
  json_builder_set_member_name(b, "ring");
  json_builder_begin_object(b);
  add_ring_info(b, &ring, now.mono_us);
  json_builder_end_object(b);
  json_builder_set_member_name(b, "director");
  json_builder_begin_object(b);
#define STAT(name)                                                                                 \
  json_builder_set_member_name(b, #name);                                                          \
  json_builder_add_int_value(b, (gint64)ds->name);
  DIRECTOR_STATS(STAT)
#undef STAT
  json_builder_end_object(b);
  json_builder_set_member_name(b, "daemon");
  json_builder_begin_object(b);
#define STAT(name)                                                                                 \
  json_builder_set_member_name(b, #name);                                                          \
  json_builder_add_int_value(b, (gint64)u->stats.name);
  DAEMON_STATS(STAT)
#undef STAT
  json_builder_end_object(b);
  if (u->proxy != NULL) {
    ProxyStats ps;
    proxy_get_stats(u->proxy, &ps);
    json_builder_set_member_name(b, "proxy");
    json_builder_begin_object(b);
#define STAT(name)                                                                                 \
  json_builder_set_member_name(b, #name);                                                          \
  json_builder_add_int_value(b, (gint64)ps.name);
    PROXY_STATS(STAT)
#undef STAT
    json_builder_end_object(b);
  }
  json_builder_end_object(b);
}

static const char *
role_text(UsherLinkRole role)
{
  static const char *const names[] = {"none", "left", "right", "in", "out"};
  return names[role];
}

static void
add_addr(JsonBuilder *b, const char *member, const UsherIp *ip, guint16 port)
{
  char text[USHER_IP_STRLEN];
  json_builder_set_member_name(b, member);
  if (ip->family == 0) {
    json_builder_add_null_value(b);
    return;
  }
  usher_ip_to_string(ip, text);
  if (port == 0) {
    usherd_json_add_string(b, text);
  } else {
    g_autofree char *full = ip->family == USHER_IP_V6 ? g_strdup_printf("[%s]:%u", text, port)
                                                       : g_strdup_printf("%s:%u", text, port);
    usherd_json_add_string(b, full);
  }
}

static void
build_ring(Usherd *u, JsonBuilder *b, UsherNow now)
{
  UsherRingInfo ring;
  usher_director_get_ring_info(u->director, &ring);
  g_autoptr(GArray) members = usher_director_list_members(u->director);
  json_builder_begin_object(b);
  add_addr(b, "self", &u->self.ip, u->self.port);
  add_ring_info(b, &ring, now.mono_us);
  json_builder_set_member_name(b, "members");
  json_builder_begin_array(b);
  for (guint i = 0; i < members->len; i++) {
    const UsherMemberInfo *m = &g_array_index(members, UsherMemberInfo, i);
    json_builder_begin_object(b);
    UsherIp none = {0};
    add_addr(b, "address", m->has_addr ? &m->addr.ip : &none, m->addr.port);
    json_builder_set_member_name(b, "self");
    json_builder_add_boolean_value(b, m->self);
    json_builder_set_member_name(b, "removed");
    json_builder_add_boolean_value(b, m->removed);
    json_builder_set_member_name(b, "last_failure");
    json_builder_add_int_value(b, m->last_failure);
    json_builder_set_member_name(b, "link");
    usherd_json_add_string(b, role_text(m->role));
    if (m->role != USHER_LINK_NONE) {
#define FIELD_BOOL(name)                                                                           \
  json_builder_set_member_name(b, #name);                                                          \
  json_builder_add_boolean_value(b, m->name);
#define FIELD_INT(name)                                                                            \
  json_builder_set_member_name(b, #name);                                                          \
  json_builder_add_int_value(b, (gint64)m->name);
      FIELD_BOOL(connected)
      FIELD_BOOL(handshaked)
      FIELD_BOOL(synced)
      FIELD_INT(users_received)
      FIELD_INT(users_sent)
      FIELD_INT(users_to_send)
      FIELD_INT(ping_rtt_ms)
      FIELD_INT(bytes_in)
      FIELD_INT(bytes_out)
      FIELD_INT(buffered)
      FIELD_INT(buffered_peak)
      FIELD_INT(last_input)
      FIELD_INT(last_output)
#undef FIELD_BOOL
#undef FIELD_INT
    }
    json_builder_end_object(b);
  }
  json_builder_end_array(b);
  json_builder_end_object(b);
}

/* Why a user is where it is, in words an operator can act on. */
static char *
explain_why(Usherd *u, const UsherUserInfo *info)
{
  char cur[USHER_IP_STRLEN], hashed[USHER_IP_STRLEN];
  if (!info->tag_known)
    return g_strdup("no backend has this tag: a login with it waits and then fails");
  if (info->hashed.family != 0)
    usher_ip_to_string(&info->hashed, hashed);
  if (!info->found)
    return info->hashed.family != 0
             ? g_strdup_printf("no directory entry: the next login goes to the hashed backend %s",
                               hashed)
             : g_strdup("no directory entry, and no usable backend in its tag: a login waits "
                        "and then fails");
  usher_ip_to_string(&info->current, cur);
  if (info->kill_state != USHER_KILL_NONE)
    return g_strdup_printf("being moved to %s (%s): logins wait until the move ends", cur,
                           usher_kill_state_name(info->kill_state));
  if (info->weak)
    return g_strdup_printf("weak: its backend %s is being confirmed ring-wide; logins wait a "
                           "moment",
                           cur);
  if (usher_ip_equal(&info->current, &info->hashed))
    return g_strdup_printf("on its hashed backend %s", cur);
  g_autoptr(GArray) hosts = usher_director_list_hosts(u->director);
  const UsherHostInfo *h = NULL;
  for (guint i = 0; i < hosts->len; i++)
    if (usher_ip_equal(&g_array_index(hosts, UsherHostInfo, i).ip, &info->current))
      h = &g_array_index(hosts, UsherHostInfo, i);
  const char *reason =
    h != NULL && h->down            ? "its backend is down; a down backend keeps its users"
    : h != NULL && h->vhost_count == 0 ? "its backend has 0 vhosts (drained); it keeps the users it has"
    : info->hashed.family == 0      ? "no backend of its tag is usable now"
                                    : "the vhost ring changed after the user was placed (a backend "
                                      "was added, brought up or re-weighted)";
  return g_strdup_printf("on %s, not on its hashed backend %s: %s. A directory entry keeps its "
                         "backend until it expires (the last session's end plus user_expire), "
                         "or until `doveadm director flush` / `usherctl move` moves it",
                         cur, info->hashed.family != 0 ? hashed : "(none)", reason);
}

static void
build_explain(Usherd *u, JsonBuilder *b, UsherNow now, const UsherAdminCmd *cmd)
{
  guint32 hash = usher_admin_cmd_user_hash(u->director, cmd);
  UsherUserInfo info;
  usher_director_lookup_user(u->director, now.wall_us, hash, cmd->tag, &info);
  json_builder_begin_object(b);
  json_builder_set_member_name(b, "user");
  usherd_json_add_string(b, cmd->user);
  json_builder_set_member_name(b, "given_as_hash");
  json_builder_add_boolean_value(b, cmd->user_is_hash);
  json_builder_set_member_name(b, "hash");
  json_builder_add_int_value(b, hash);
  json_builder_set_member_name(b, "username_hash");
  usherd_json_add_string(b, u->config->username_hash);
  json_builder_set_member_name(b, "tag");
  usherd_json_add_string(b, cmd->tag);
  json_builder_set_member_name(b, "tag_known");
  json_builder_add_boolean_value(b, info.tag_known);
  json_builder_set_member_name(b, "entry");
  if (info.found) {
    json_builder_begin_object(b);
    add_addr(b, "backend", &info.current, 0);
    json_builder_set_member_name(b, "timestamp");
    json_builder_add_int_value(b, info.timestamp);
    json_builder_set_member_name(b, "expires");
    json_builder_add_int_value(b, info.expires);
    json_builder_set_member_name(b, "expires_in_secs");
    json_builder_add_int_value(b, info.expires - now.wall_us / 1000000);
    json_builder_set_member_name(b, "weak");
    json_builder_add_boolean_value(b, info.weak);
    json_builder_set_member_name(b, "move_state");
    usherd_json_add_string(b, usher_kill_state_name(info.kill_state));
    json_builder_end_object(b);
  } else {
    json_builder_add_null_value(b);
  }
  add_addr(b, "hashed", &info.hashed, 0);
  add_addr(b, "initial_config", &info.initial, 0);
  json_builder_set_member_name(b, "why");
  g_autofree char *why = explain_why(u, &info);
  usherd_json_add_string(b, why);
  json_builder_end_object(b);
}

/* {"proxy": bool, "sessions": [{user, protocol, tls, client, backend, since}, ...]} */
static void
build_sessions(Usherd *u, JsonBuilder *b, const UsherAdminCmd *cmd)
{
  json_builder_begin_object(b);
  json_builder_set_member_name(b, "proxy");
  json_builder_add_boolean_value(b, u->proxy != NULL);
  json_builder_set_member_name(b, "sessions");
  json_builder_begin_array(b);
  if (u->proxy != NULL) {
    g_autoptr(GPtrArray) list =
      proxy_list_sessions(u->proxy, cmd->user, cmd->has_ip ? &cmd->ip : NULL);
    for (guint i = 0; i < list->len; i++) {
      const ProxySessionInfo *s = g_ptr_array_index(list, i);
      json_builder_begin_object(b);
      json_builder_set_member_name(b, "user");
      usherd_json_add_string(b, s->user);
      json_builder_set_member_name(b, "protocol");
      usherd_json_add_string(b, s->protocol);
      json_builder_set_member_name(b, "tls");
      json_builder_add_boolean_value(b, s->tls);
      json_builder_set_member_name(b, "client");
      usherd_json_add_string(b, s->client);
      json_builder_set_member_name(b, "backend");
      usherd_json_add_string(b, s->backend);
      json_builder_set_member_name(b, "since");
      json_builder_add_int_value(b, s->since);
      json_builder_end_object(b);
    }
  }
  json_builder_end_array(b);
  json_builder_end_object(b);
}

/* USHER-HEALTH: this director's probes, the votes it has heard and what they decide. */
static void
build_health(Usherd *u, JsonBuilder *b, UsherNow now)
{
  UsherHealthReport rep;
  usher_director_get_health(u->director, now, &rep);
  json_builder_begin_object(b);
  json_builder_set_member_name(b, "enabled");
  json_builder_add_boolean_value(b, rep.enabled);
#define FIELD(name)                                                                                \
  json_builder_set_member_name(b, #name);                                                          \
  json_builder_add_int_value(b, rep.name);
  FIELD(members)
  FIELD(quorum)
  FIELD(live_voters)
  FIELD(needed)
#undef FIELD
  json_builder_set_member_name(b, "have_quorum");
  json_builder_add_boolean_value(b, rep.have_quorum);
  json_builder_set_member_name(b, "backends");
  json_builder_begin_array(b);
  for (guint i = 0; i < rep.backends->len; i++) {
    const UsherHealthInfo *h = &g_array_index(rep.backends, UsherHealthInfo, i);
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "backend");
    usherd_json_add_string(b, h->ip_str);
    json_builder_set_member_name(b, "view");
    usherd_json_add_string(b, h->failing ? "failing" : "healthy");
    json_builder_set_member_name(b, "fails_in_row");
    json_builder_add_int_value(b, h->fails_in_row);
    json_builder_set_member_name(b, "oks_in_row");
    json_builder_add_int_value(b, h->oks_in_row);
    json_builder_set_member_name(b, "probes");
    json_builder_add_int_value(b, (gint64)h->probes);
    json_builder_set_member_name(b, "probes_failed");
    json_builder_add_int_value(b, (gint64)h->probes_failed);
    json_builder_set_member_name(b, "last_probe");
    json_builder_add_int_value(b, h->last_probe);
    json_builder_set_member_name(b, "last_result");
    if (h->last_probe == 0)
      json_builder_add_null_value(b);
    else
      usherd_json_add_string(b, h->last_detail != NULL ? h->last_detail
                                       : h->last_ok           ? "ok"
                                                              : "failed");
    json_builder_set_member_name(b, "votes_failing");
    json_builder_add_int_value(b, h->votes_failing);
    json_builder_set_member_name(b, "votes_ok");
    json_builder_add_int_value(b, h->votes_ok);
    json_builder_set_member_name(b, "down");
    json_builder_add_boolean_value(b, h->down);
    json_builder_set_member_name(b, "down_by_health");
    json_builder_add_boolean_value(b, h->health_down);
    json_builder_end_object(b);
  }
  json_builder_end_array(b);
  json_builder_set_member_name(b, "voters");
  json_builder_begin_array(b);
  for (guint i = 0; i < rep.voters->len; i++) {
    const UsherHealthVoter *v = &g_array_index(rep.voters, UsherHealthVoter, i);
    json_builder_begin_object(b);
    add_addr(b, "director", &v->addr.ip, v->addr.port);
    json_builder_set_member_name(b, "live");
    json_builder_add_boolean_value(b, v->live);
    json_builder_set_member_name(b, "report_age_ms");
    json_builder_add_int_value(b, v->age_ms);
    json_builder_set_member_name(b, "interval_ms");
    json_builder_add_int_value(b, v->interval_ms);
    json_builder_set_member_name(b, "failing");
    json_builder_begin_array(b);
    for (guint k = 0; k < v->n_failing; k++) {
      char ip[USHER_IP_STRLEN];
      usherd_json_add_string(b, usher_ip_to_string(&v->failing[k], ip));
    }
    json_builder_end_array(b);
    json_builder_set_member_name(b, "complete");
    json_builder_add_boolean_value(b, v->complete);
    json_builder_end_object(b);
  }
  json_builder_end_array(b);
  json_builder_end_object(b);
  usher_health_report_clear(&rep);
}

static void
run_extension(Usherd *u, const UsherAdminCmd *cmd, GString *out)
{
  UsherNow now = usherd_now();
  g_autoptr(JsonBuilder) b = json_builder_new();
  switch (cmd->type) {
  case USHER_ADMIN_CMD_USHER_STATS:
    build_stats(u, b, now);
    break;
  case USHER_ADMIN_CMD_USHER_RING:
    build_ring(u, b, now);
    break;
  case USHER_ADMIN_CMD_USHER_EXPLAIN:
    build_explain(u, b, now, cmd);
    break;
  case USHER_ADMIN_CMD_USHER_SESSIONS:
    build_sessions(u, b, cmd);
    break;
  case USHER_ADMIN_CMD_USHER_HEALTH:
    build_health(u, b, now);
    break;
  default:
    g_assert_not_reached();
  }
  g_autoptr(JsonNode) root = json_builder_get_root(b);
  g_autoptr(JsonGenerator) gen = json_generator_new();
  json_generator_set_root(gen, root);
  g_autofree char *text = json_generator_to_data(gen, NULL);
  g_string_append_printf(out, "%s\n", text);
}

/* ---- Running commands ------------------------------------------------------------------------------- */

static void
client_run(AdminClient *c)
{
  AdminServer *a = c->a;
  Usherd *u = a->u;
  guint id = c->id;
  if (c->running)
    return;
  c->running = TRUE;
  g_autoptr(GString) reply = g_string_new(NULL);
  while (c->waiting_op == 0 && c->pending.length > 0) {
    g_autofree char *line = g_queue_pop_head(&c->pending);
    g_auto(UsherAdminCmd) cmd = {0};
    g_autofree char *error = NULL;
    if (!usher_admin_cmd_parse(line, strlen(line), &cmd, &error)) {
      client_reject(c, &u->stats.admin_protocol_errors, error);
      return;
    }
    u->stats.admin_commands++;
    guint64 op = ++a->next_op;
    g_string_truncate(reply, 0);
    UsherAdminRunResult r = usher_admin_cmd_run(u->director, usherd_now(), op, &cmd, reply);
    if (r == USHER_ADMIN_RUN_EXTENSION)
      run_extension(u, &cmd, reply);
    if (r == USHER_ADMIN_RUN_PENDING) {
      c->waiting_op = op;
      g_hash_table_insert(a->ops, g_memdup2(&op, sizeof(op)), GUINT_TO_POINTER(id));
    } else if (!client_append(c, reply->str, reply->len)) {
      return;
    }
    /* The reply to a change may come at once, inside this call (admin_server_reply). */
    usherd_core_after_call(u);
    if ((c = client_lookup(a, id)) == NULL)
      return;
  }
  c->running = FALSE;
  client_flush(c);
}

void
admin_server_reply(AdminServer *a, guint64 op, const char *text)
{
  gpointer value;
  if (!g_hash_table_lookup_extended(a->ops, &op, NULL, &value))
    return; /* its client went away */
  g_hash_table_remove(a->ops, &op);
  AdminClient *c = client_lookup(a, GPOINTER_TO_UINT(value));
  if (c == NULL || c->waiting_op != op)
    return;
  c->waiting_op = 0;
  if (!client_append(c, text, strlen(text)))
    return;
  if (!c->running)
    client_run(c);
}

/* ---- Input ------------------------------------------------------------------------------------------ */

static gboolean
on_client_readable(GSocket *socket, GIOCondition cond, gpointer data)
{
  AdminClient *c = data;
  AdminServer *a = c->a;
  Usherd *u = a->u;
  guint id = c->id;
  (void)cond;
  char buf[ADMIN_READ_CHUNK];
  g_autoptr(GError) error = NULL;
  gssize n = g_socket_receive(socket, buf, sizeof(buf), NULL, &error);
  if (n < 0 && g_error_matches(error, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
    return G_SOURCE_CONTINUE;
  if (n <= 0) {
    c->eof = TRUE;
    g_source_destroy(c->in_source);
    g_clear_pointer(&c->in_source, g_source_unref);
    (void)client_maybe_finish(c);
    return G_SOURCE_REMOVE;
  }
  c->last_io_us = g_get_monotonic_time();
  usher_line_reader_feed(c->reader, buf, (gsize)n);
  for (;;) {
    char *line;
    gsize len;
    UsherLineResult lr = usher_line_reader_next(c->reader, &line, &len);
    if (lr == USHER_LINE_NEED_MORE)
      break;
    if (lr == USHER_LINE_TOO_LONG) {
      client_reject(c, &u->stats.admin_protocol_errors, "command line too long");
      return G_SOURCE_REMOVE;
    }
    if (!c->versioned) {
      if (!usher_admin_version_ok(line, len)) {
        client_reject(c, &u->stats.admin_protocol_errors,
                      "not a director-doveadm 1.x client (bad VERSION line)");
        return G_SOURCE_REMOVE;
      }
      c->versioned = TRUE;
      continue;
    }
    if (c->pending.length >= ADMIN_PENDING_MAX) {
      client_reject(c, &u->stats.admin_overflows, "too many commands queued");
      return G_SOURCE_REMOVE;
    }
    g_queue_push_tail(&c->pending, g_strndup(line, len));
  }
  client_run(c);
  return client_lookup(a, id) != NULL ? G_SOURCE_CONTINUE : G_SOURCE_REMOVE;
}

static gboolean
on_incoming(GSocketService *service, GSocketConnection *connection, GObject *source, gpointer data)
{
  AdminServer *a = data;
  Usherd *u = a->u;
  (void)service;
  (void)source;
  g_autoptr(GSocketAddress) remote = g_socket_connection_get_remote_address(connection, NULL);
  char where[USHER_IP_STRLEN + 16] = "unix socket";
  UsherIp ip;
  if (remote != NULL && usherd_ip_from_gaddress(remote, &ip)) {
    char text[USHER_IP_STRLEN];
    g_snprintf(where, sizeof(where), "tcp %s:%u", usher_ip_to_string(&ip, text),
               g_inet_socket_address_get_port(G_INET_SOCKET_ADDRESS(remote)));
  }
  if (g_hash_table_size(a->clients) >= u->config->admin_max_clients) {
    u->stats.admin_clients_refused++;
    g_warning("admin client from %s refused: %u clients connected (admin_max_clients)", where,
              g_hash_table_size(a->clients));
    g_io_stream_close(G_IO_STREAM(connection), NULL, NULL);
    return TRUE;
  }
  AdminClient *c = g_new0(AdminClient, 1);
  c->a = a;
  c->id = ++a->next_client;
  g_snprintf(c->name, sizeof(c->name), "admin client #%u (%s)", c->id, where);
  c->connection = g_object_ref(connection);
  c->socket = g_socket_connection_get_socket(connection);
  g_socket_set_blocking(c->socket, FALSE);
  c->reader = usher_line_reader_new(USHER_ADMIN_LINE_MAX);
  c->out = g_string_new(USHER_ADMIN_GREETING);
  c->last_io_us = g_get_monotonic_time();
  g_queue_init(&c->pending);
  g_hash_table_insert(a->clients, GUINT_TO_POINTER(c->id), c);
  u->stats.admin_clients++;
  c->in_source = g_socket_create_source(c->socket, G_IO_IN | G_IO_HUP | G_IO_ERR, NULL);
  g_source_set_callback(c->in_source, G_SOURCE_FUNC(on_client_readable), c, NULL);
  g_source_attach(c->in_source, u->context);
  g_debug("%s: connected", c->name);
  client_flush(c);
  return TRUE;
}

/* Closes the clients that have been silent for admin_idle_timeout (a command waiting for the
 * ring keeps its client: the core bounds that wait). */
static gboolean
on_idle_sweep(gpointer data)
{
  AdminServer *a = data;
  Usherd *u = a->u;
  gint64 limit = g_get_monotonic_time() - (gint64)u->config->admin_idle_timeout_secs * G_USEC_PER_SEC;
  g_autoptr(GPtrArray) idle = g_ptr_array_new();
  GHashTableIter it;
  gpointer v;
  g_hash_table_iter_init(&it, a->clients);
  while (g_hash_table_iter_next(&it, NULL, &v)) {
    AdminClient *c = v;
    if (c->waiting_op == 0 && c->last_io_us < limit)
      g_ptr_array_add(idle, c);
  }
  for (guint i = 0; i < idle->len; i++) {
    AdminClient *c = g_ptr_array_index(idle, i);
    u->stats.admin_idle_closed++;
    g_message("%s: silent for %u s (admin_idle_timeout): closing the connection", c->name,
              u->config->admin_idle_timeout_secs);
    client_free(c);
  }
  return G_SOURCE_CONTINUE;
}

/* ---- The UNIX socket -------------------------------------------------------------------------------- */

/* Makes room for the socket at path: refuses a file that is not a socket, and a socket that a
 * running program still answers on; removes a stale one. */
static gboolean
prepare_socket_path(const char *path, GError **error)
{
  g_autofree char *dir = g_path_get_dirname(path);
  if (g_mkdir_with_parents(dir, 0755) != 0) {
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno), "admin socket directory %s: %s",
                dir, g_strerror(errno));
    return FALSE;
  }
  struct stat st;
  if (lstat(path, &st) != 0)
    return TRUE;
  if (!S_ISSOCK(st.st_mode)) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_EXISTS,
                "admin socket %s: a file that is not a socket is in the way", path);
    return FALSE;
  }
  g_autoptr(GSocketClient) probe = g_socket_client_new();
  g_autoptr(GSocketAddress) address = g_unix_socket_address_new(path);
  g_autoptr(GSocketConnection) live =
    g_socket_client_connect(probe, G_SOCKET_CONNECTABLE(address), NULL, NULL);
  if (live != NULL) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_ADDRESS_IN_USE,
                "admin socket %s: another program (another usherd?) is listening on it", path);
    return FALSE;
  }
  if (unlink(path) != 0 && errno != ENOENT) {
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno),
                "admin socket %s: cannot remove the stale socket: %s", path, g_strerror(errno));
    return FALSE;
  }
  return TRUE;
}

static gboolean
set_socket_owner(const UsherConfig *config, GError **error)
{
  const char *path = config->admin_socket;
  if (chmod(path, config->admin_socket_mode) != 0) {
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno), "admin socket %s: chmod: %s",
                path, g_strerror(errno));
    return FALSE;
  }
  uid_t uid = (uid_t)-1;
  gid_t gid = (gid_t)-1;
  if (config->admin_socket_user[0] != '\0') {
    struct passwd *pw = getpwnam(config->admin_socket_user);
    if (pw == NULL) {
      g_set_error(error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND,
                  "[daemon] admin_socket_user: no user named \"%s\"", config->admin_socket_user);
      return FALSE;
    }
    uid = pw->pw_uid;
  }
  if (config->admin_socket_group[0] != '\0') {
    struct group *gr = getgrnam(config->admin_socket_group);
    if (gr == NULL) {
      g_set_error(error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND,
                  "[daemon] admin_socket_group: no group named \"%s\"",
                  config->admin_socket_group);
      return FALSE;
    }
    gid = gr->gr_gid;
  }
  if ((uid != (uid_t)-1 || gid != (gid_t)-1) && chown(path, uid, gid) != 0) {
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno), "admin socket %s: chown: %s",
                path, g_strerror(errno));
    return FALSE;
  }
  return TRUE;
}

AdminServer *
admin_server_new(Usherd *u, GError **error)
{
  AdminServer *a = g_new0(AdminServer, 1);
  a->u = u;
  a->clients = g_hash_table_new(NULL, NULL);
  a->ops = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free, NULL);
  a->service = g_socket_service_new();
  const UsherConfig *config = u->config;

  if (!prepare_socket_path(config->admin_socket, error)) {
    admin_server_free(a);
    return NULL;
  }
  g_autoptr(GSocketAddress) unix_address = g_unix_socket_address_new(config->admin_socket);
  if (!g_socket_listener_add_address(G_SOCKET_LISTENER(a->service), unix_address,
                                     G_SOCKET_TYPE_STREAM, G_SOCKET_PROTOCOL_DEFAULT, NULL, NULL,
                                     error)) {
    g_prefix_error(error, "admin socket %s: ", config->admin_socket);
    admin_server_free(a);
    return NULL;
  }
  a->socket_path = g_strdup(config->admin_socket);
  if (!set_socket_owner(config, error)) {
    admin_server_free(a);
    return NULL;
  }
  if (config->has_admin_listen) {
    g_autoptr(GSocketAddress) tcp =
      usherd_gaddress_from_ip(&config->admin_listen.ip, config->admin_listen.port);
    if (!g_socket_listener_add_address(G_SOCKET_LISTENER(a->service), tcp, G_SOCKET_TYPE_STREAM,
                                       G_SOCKET_PROTOCOL_TCP, NULL, NULL, error)) {
      g_prefix_error(error, "[daemon] admin_listen: ");
      admin_server_free(a);
      return NULL;
    }
  }
  g_signal_connect(a->service, "incoming", G_CALLBACK(on_incoming), a);
  g_socket_service_start(a->service);
  /* A tenth of the timeout (at most 10 s) between looks: closed within 10% late. */
  a->idle_sweep = g_timeout_source_new(MIN(10000u, config->admin_idle_timeout_secs * 100u));
  g_source_set_callback(a->idle_sweep, on_idle_sweep, a, NULL);
  g_source_attach(a->idle_sweep, u->context);
  return a;
}

void
admin_server_free(AdminServer *a)
{
  if (a == NULL)
    return;
  if (a->idle_sweep != NULL) {
    g_source_destroy(a->idle_sweep);
    g_source_unref(a->idle_sweep);
  }
  g_socket_service_stop(a->service);
  g_socket_listener_close(G_SOCKET_LISTENER(a->service));
  g_object_unref(a->service);
  if (a->socket_path != NULL) {
    unlink(a->socket_path);
    g_free(a->socket_path);
  }
  g_autoptr(GPtrArray) all = g_ptr_array_new();
  GHashTableIter it;
  gpointer v;
  g_hash_table_iter_init(&it, a->clients);
  while (g_hash_table_iter_next(&it, NULL, &v))
    g_ptr_array_add(all, v);
  for (guint i = 0; i < all->len; i++)
    client_free(g_ptr_array_index(all, i));
  g_hash_table_unref(a->clients);
  g_hash_table_unref(a->ops);
  g_free(a);
}

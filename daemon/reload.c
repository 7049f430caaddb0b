/* reload.c - SIGHUP: read the configuration file again and apply what changed.
 *
 * What can change while running: the backend list ([backends] and [backend IP]) and the ring
 * members ([ring] directors), and [http]'s backend ports. Their difference between the file
 * read before and the file read now is applied as the admin operations an operator would type
 * (HOST-SET, HOST-UPDATE, HOST-UP/DOWN, HOST-REMOVE, DIRECTOR-ADD/REMOVE), so it travels the ring
 * like any admin change, and a change made at run time that the file does not touch stays. Every
 * other key needs a restart; a reload says which ones changed. A file that does not load is
 * reported and changes nothing. */
#include "common/config-file.h"
#include "daemon/usherd.h"
#include "daemon/proxy.h"

#include <string.h>

#define RELOAD_OP_FLAG (G_GUINT64_CONSTANT(1) << 63)

static const UsherBackendConfig *
find_backend(const GPtrArray *list, const UsherIp *ip)
{
  for (guint i = 0; i < list->len; i++) {
    const UsherBackendConfig *b = g_ptr_array_index(list, i);
    if (usher_ip_equal(&b->ip, ip))
      return b;
  }
  return NULL;
}

static gboolean
has_director(const GArray *list, const UsherDirectorAddr *a)
{
  for (guint i = 0; i < list->len; i++) {
    const UsherDirectorAddr *x = &g_array_index(list, UsherDirectorAddr, i);
    if (usher_ip_equal(&x->ip, &a->ip) && x->port == a->port)
      return TRUE;
  }
  return FALSE;
}

/* A change a reload asked the director for, until its answer: refused, the file read before
 * stays the base for that backend or member, so the next SIGHUP tries it again. */
typedef struct {
  gboolean director;
  UsherIp ip;
  guint16 port;
  gboolean removal;        /* NOTFOUND: it is gone already, which is what was asked */
  UsherBackendConfig *was; /* backends: the base's entry before (NULL: the file adds it) */
  char *what;              /* for the log */
} ReloadChange;

static void
reload_change_free(gpointer data)
{
  ReloadChange *c = data;
  g_clear_pointer(&c->was, usher_backend_config_free);
  g_free(c->what);
  g_free(c);
}

static UsherBackendConfig *
backend_copy(const UsherBackendConfig *b)
{
  UsherBackendConfig *copy = usher_backend_config_new(&b->ip, b->tag, b->vhost_count);
  copy->hostname = g_strdup(b->hostname);
  copy->down = b->down;
  copy->updown_change = b->updown_change;
  return copy;
}

static guint64
track(Usherd *u, ReloadChange *c)
{
  if (u->reload_changes == NULL)
    u->reload_changes =
      g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free, reload_change_free);
  guint64 op = RELOAD_OP_FLAG | ++u->reload_ops;
  g_hash_table_insert(u->reload_changes, g_memdup2(&op, sizeof(op)), c);
  return op;
}

static guint64
backend_op(Usherd *u, const UsherIp *ip, const UsherBackendConfig *was, gboolean removal,
           const char *what)
{
  ReloadChange *c = g_new0(ReloadChange, 1);
  c->ip = *ip;
  c->was = was != NULL ? backend_copy(was) : NULL;
  c->removal = removal;
  c->what = g_strdup(what);
  return track(u, c);
}

static guint64
director_op(Usherd *u, const UsherDirectorAddr *a, gboolean removal, const char *what)
{
  ReloadChange *c = g_new0(ReloadChange, 1);
  c->director = TRUE;
  c->ip = a->ip;
  c->port = a->port;
  c->removal = removal;
  c->what = g_strdup(what);
  return track(u, c);
}

/* Puts the base back as it was for a refused change. */
static void
revert_base(Usherd *u, const ReloadChange *c)
{
  if (c->director) {
    GArray *list = u->file_directors;
    for (guint i = list->len; i-- > 0;) {
      const UsherDirectorAddr *a = &g_array_index(list, UsherDirectorAddr, i);
      if (usher_ip_equal(&a->ip, &c->ip) && a->port == c->port)
        g_array_remove_index(list, i);
    }
    if (c->removal) {
      UsherDirectorAddr a = {.ip = c->ip, .port = c->port};
      g_array_append_val(list, a);
    }
    return;
  }
  GPtrArray *list = u->config->initial_backends;
  if (list == NULL)
    return;
  for (guint i = list->len; i-- > 0;)
    if (usher_ip_equal(&((UsherBackendConfig *)g_ptr_array_index(list, i))->ip, &c->ip))
      g_ptr_array_remove_index(list, i);
  if (c->was != NULL)
    g_ptr_array_add(list, backend_copy(c->was));
}

gboolean
usherd_reload_owns_op(guint64 op)
{
  return (op & RELOAD_OP_FLAG) != 0;
}

/* Keys that only a restart applies: name those that differ. */
static void
note_restart_keys(const UsherConfig *a, const UsherConfig *b, GString *out)
{
#define DIFF(field, name)                                                                          \
  if (a->field != b->field)                                                                        \
    g_string_append(out, " " name);
#define DIFF_STR(field, name)                                                                      \
  if (g_strcmp0(a->field, b->field) != 0)                                                          \
    g_string_append(out, " " name);
  DIFF_STR(username_hash, "[director]username_hash")
  DIFF(user_expire_secs, "[director]user_expire")
  DIFF(user_kick_delay_secs, "[director]user_kick_delay")
  DIFF(max_parallel_moves, "[director]max_parallel_moves")
  DIFF(max_parallel_kicks, "[director]max_parallel_kicks")
  DIFF_STR(flush_socket, "[director]flush_socket")
  DIFF(ping_idle_timeout_secs, "[director]ping_idle_timeout")
  DIFF(ping_max_timeout_secs, "[director]ping_max_timeout")
  DIFF(output_buffer_size, "[director]output_buffer_size")
  DIFF_STR(master_user_separator, "[director]master_user_separator")
  DIFF_STR(admin_socket, "[daemon]admin_socket")
  DIFF(admin_socket_mode, "[daemon]admin_socket_mode")
  DIFF_STR(admin_socket_user, "[daemon]admin_socket_user")
  DIFF_STR(admin_socket_group, "[daemon]admin_socket_group")
  DIFF(has_admin_listen, "[daemon]admin_listen")
  DIFF(admin_max_clients, "[daemon]admin_max_clients")
  DIFF(admin_idle_timeout_secs, "[daemon]admin_idle_timeout")
  DIFF_STR(state_dir, "[daemon]state_dir")
  DIFF(users_snapshot_interval_secs, "[daemon]users_snapshot_interval")
  DIFF(has_http_listen, "[http]listen")
  DIFF(http_max_pending_lookups, "[http]max_pending_lookups")
  DIFF(proxy_workers, "[proxy]workers")
  DIFF(proxy_max_connections, "[proxy]max_connections")
  DIFF(proxy_max_connections_per_ip, "[proxy]max_connections_per_ip")
  DIFF(proxy_login_timeout_secs, "[proxy]login_timeout")
  DIFF(proxy_max_bad_commands, "[proxy]max_bad_commands")
  DIFF_STR(proxy_greeting, "[proxy]greeting")
  DIFF(proxy_auth_mechs, "[proxy]auth_mechanisms")
  DIFF_STR(tls_cert, "[proxy]tls_cert")
  DIFF_STR(tls_key, "[proxy]tls_key")
  DIFF(tls_min_version, "[proxy]tls_min_version")
  DIFF_STR(lmtp_socket, "[proxy]lmtp_socket")
  DIFF_STR(lmtp_user_format, "[proxy]lmtp_user_format")
  DIFF_STR(recipient_delimiter, "[proxy]recipient_delimiter")
  DIFF_STR(lmtp_spool_dir, "[proxy]lmtp_spool_dir")
  DIFF(lmtp_spool_max, "[proxy]lmtp_spool_max")
#undef DIFF
#undef DIFF_STR
  const struct {
    const GArray *a, *b;
    const char *name;
  } lists[] = {
    {a->imap_listen, b->imap_listen, "[proxy]imap_listen"},
    {a->pop3_listen, b->pop3_listen, "[proxy]pop3_listen"},
    {a->trusted_proxies, b->trusted_proxies, "[proxy]trusted_proxies"},
    {a->proxy_protocol_backends, b->proxy_protocol_backends, "[proxy]proxy_protocol_backends"},
    {a->imaps_listen, b->imaps_listen, "[proxy]imaps_listen"},
    {a->pop3s_listen, b->pop3s_listen, "[proxy]pop3s_listen"},
    {a->lmtp_listen, b->lmtp_listen, "[proxy]lmtp_listen"},
    {a->sieve_listen, b->sieve_listen, "[proxy]sieve_listen"},
    {a->submission_listen, b->submission_listen, "[proxy]submission_listen"},
    {a->submissions_listen, b->submissions_listen, "[proxy]submissions_listen"},
  };
  for (gsize i = 0; i < G_N_ELEMENTS(lists); i++) {
    /* Elements are zero-initialised structs (g_array_new clear), so bytes compare values. */
    const GArray *x = lists[i].a, *y = lists[i].b;
    if (x->len != y->len ||
        (x->len > 0 &&
         memcmp(x->data, y->data, (gsize)x->len * g_array_get_element_size((GArray *)x)) != 0)) {
      g_string_append_c(out, ' ');
      g_string_append(out, lists[i].name);
    }
  }
  gboolean sni_same = a->tls_sni->len == b->tls_sni->len;
  for (guint i = 0; sni_same && i < a->tls_sni->len; i++) {
    const UsherTlsSni *x = g_ptr_array_index(a->tls_sni, i), *y = g_ptr_array_index(b->tls_sni, i);
    sni_same = strcmp(x->name, y->name) == 0 && strcmp(x->cert, y->cert) == 0 &&
               strcmp(x->key, y->key) == 0;
  }
  if (!sni_same)
    g_string_append(out, " [proxy]tls_sni");
  if (a->has_ring_address != b->has_ring_address ||
      (a->has_ring_address && (!usher_ip_equal(&a->ring_address.ip, &b->ring_address.ip) ||
                               a->ring_address.port != b->ring_address.port)))
    g_string_append(out, " [daemon]ring_address");
  if (a->has_http_listen && b->has_http_listen &&
      (!usher_ip_equal(&a->http_listen.ip, &b->http_listen.ip) ||
       a->http_listen.port != b->http_listen.port))
    g_string_append(out, " [http]listen");
}

void
usherd_reload(Usherd *u)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(UsherConfig) fresh = usher_config_load_file(u->config_path, &error);
  if (fresh == NULL) {
    g_warning("SIGHUP: configuration not reloaded, nothing changed: %s", error->message);
    return;
  }
  UsherConfig *cur = u->config;
  const GPtrArray *old_backends = cur->initial_backends != NULL ? cur->initial_backends
                                                                : cur->backends;
  UsherNow now = usherd_now();
  UsherDirector *d = u->director;
  guint changes = 0;
  char ip[USHER_IP_STRLEN];

  for (guint i = 0; i < fresh->backends->len; i++) {
    const UsherBackendConfig *b = g_ptr_array_index(fresh->backends, i);
    const UsherBackendConfig *was = find_backend(old_backends, &b->ip);
    usher_ip_to_string(&b->ip, ip);
    if (was == NULL) {
      g_message("SIGHUP: adding backend %s%s%s with %u vhosts%s", ip, b->tag[0] ? "@" : "",
                b->tag, b->vhost_count, b->down ? ", down" : "");
      g_autofree char *what = g_strdup_printf("adding backend %s", ip);
      usher_director_admin_host_set(d, now, backend_op(u, &b->ip, NULL, FALSE, what), &b->ip,
                                    b->tag, (gint)b->vhost_count);
      if (b->down)
        usher_director_admin_host_set_down(d, now, backend_op(u, &b->ip, NULL, FALSE, what),
                                           &b->ip, TRUE);
      changes++;
      continue;
    }
    if (strcmp(was->tag, b->tag) != 0)
      g_warning("SIGHUP: backend %s: its tag changed in the file (\"%s\" -> \"%s\"); a tag "
                "cannot change at run time: remove the backend, reload, then add it",
                ip, was->tag, b->tag);
    if (was->vhost_count != b->vhost_count) {
      g_message("SIGHUP: backend %s: vhosts %u -> %u", ip, was->vhost_count, b->vhost_count);
      g_autofree char *what = g_strdup_printf("backend %s's vhosts %u -> %u", ip, was->vhost_count,
                                              b->vhost_count);
      usher_director_admin_host_update(d, now, backend_op(u, &b->ip, was, FALSE, what), &b->ip,
                                       b->vhost_count);
      changes++;
    }
    if (was->down != b->down) {
      g_message("SIGHUP: backend %s: %s", ip, b->down ? "down" : "up");
      g_autofree char *what = g_strdup_printf("backend %s %s", ip, b->down ? "down" : "up");
      usher_director_admin_host_set_down(d, now, backend_op(u, &b->ip, was, FALSE, what), &b->ip,
                                         b->down);
      changes++;
    }
  }
  for (guint i = 0; i < old_backends->len; i++) {
    const UsherBackendConfig *was = g_ptr_array_index(old_backends, i);
    if (find_backend(fresh->backends, &was->ip) != NULL)
      continue;
    g_message("SIGHUP: removing backend %s", usher_ip_to_string(&was->ip, ip));
    g_autofree char *what = g_strdup_printf("removing backend %s", ip);
    usher_director_admin_host_remove(d, now, backend_op(u, &was->ip, was, TRUE, what), &was->ip);
    changes++;
  }
  for (guint i = 0; i < fresh->directors->len; i++) {
    const UsherDirectorAddr *a = &g_array_index(fresh->directors, UsherDirectorAddr, i);
    if (has_director(u->file_directors, a))
      continue;
    g_message("SIGHUP: adding director %s:%u", usher_ip_to_string(&a->ip, ip), a->port);
    g_autofree char *what = g_strdup_printf("adding director %s:%u", ip, a->port);
    usher_director_admin_director_add(d, now, director_op(u, a, FALSE, what), &a->ip, a->port);
    changes++;
  }
  for (guint i = 0; i < u->file_directors->len; i++) {
    const UsherDirectorAddr *a = &g_array_index(u->file_directors, UsherDirectorAddr, i);
    if (has_director(fresh->directors, a))
      continue;
    if (usher_ip_equal(&a->ip, &u->self.ip) && a->port == u->self.port) {
      g_warning("SIGHUP: the file no longer lists this director; remove it with `usherctl ring "
                "remove` on another member, then stop it");
      continue;
    }
    g_message("SIGHUP: removing director %s:%u", usher_ip_to_string(&a->ip, ip), a->port);
    g_autofree char *what = g_strdup_printf("removing director %s:%u", ip, a->port);
    usher_director_admin_director_remove(d, now, director_op(u, a, TRUE, what), &a->ip,
                                         a->port);
    changes++;
  }

  /* The command line still overrides the file: no restart would change those. */
  if (u->admin_socket_option != NULL) {
    g_free(fresh->admin_socket);
    fresh->admin_socket = g_strdup(u->admin_socket_option);
  }
  if (u->state_dir_option != NULL) {
    g_free(fresh->state_dir);
    fresh->state_dir = g_strdup(u->state_dir_option);
  }
  g_autoptr(GString) restart = g_string_new(NULL);
  note_restart_keys(cur, fresh, restart);
  if (restart->len > 0)
    g_warning("SIGHUP: changed in the file but applied only by a restart:%s", restart->str);
  if (u->proxy != NULL) {
    /* Certificates are read again (a renewed certificate at the same path); sessions keep
     * theirs. */
    g_autoptr(GError) tls_error = NULL;
    if (!proxy_reload_tls(u->proxy, &tls_error))
      g_warning("SIGHUP: TLS certificate not reloaded, the old one stays: %s",
                tls_error->message);
  }
  cur->backend_imap_port = fresh->backend_imap_port;
  cur->backend_pop3_port = fresh->backend_pop3_port;
  cur->backend_smtp_port = fresh->backend_smtp_port;
  cur->backend_lmtp_port = fresh->backend_lmtp_port;
  cur->backend_sieve_port = fresh->backend_sieve_port;
  cur->backend_submission_port = fresh->backend_submission_port;

  /* The file read now is the base of the next reload, and the new "initial configuration". */
  g_autoptr(GError) initial_error = NULL;
  if (!usher_director_set_initial_backends(d, fresh->backends, &initial_error))
    g_warning("SIGHUP: initial configuration not updated: %s", initial_error->message);
  if (cur->initial_backends != NULL)
    g_ptr_array_unref(cur->initial_backends);
  cur->initial_backends = g_ptr_array_ref(fresh->backends);
  g_array_unref(u->file_directors);
  u->file_directors = g_array_ref(fresh->directors);
  /* runtime.state names the file's lists by their checksum: the new file's, taken now (a
   * refused change reverts the base below, not what the file says), and written again even
   * when the ring's lists stay as they were (else the next start would not use it). */
  usherd_state_config_reloaded(u);
  g_message("SIGHUP: configuration reloaded: %u change%s applied as admin operations", changes,
            changes == 1 ? "" : "s");
  /* The answers come from here on (some at once): refusals revert the base just adopted. */
  usherd_core_after_call(u);
}

void
usherd_reload_reply(Usherd *u, guint64 op, const char *text)
{
  ReloadChange *c = u->reload_changes != NULL ? g_hash_table_lookup(u->reload_changes, &op) : NULL;
  if (c == NULL)
    return;
  int len = (int)strcspn(text, "\n");
  if (g_str_has_prefix(text, "OK") || (c->removal && g_str_has_prefix(text, "NOTFOUND"))) {
    g_debug("SIGHUP: %s: done", c->what);
  } else {
    /* "Ring sync timed out" may also mean the change was made and is still on its way: trying
     * again is harmless either way. */
    g_warning("SIGHUP: %s was not applied (%.*s): the file read before stays the base for it, "
              "SIGHUP again to retry",
              c->what, len, text);
    revert_base(u, c);
  }
  g_hash_table_remove(u->reload_changes, &op);
}

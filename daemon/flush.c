/* flush.c - the flush hook of a move this director started (flush_socket, Dovecot's
 * director_flush_socket): tell the old backend's side that the user has moved, so caches can be
 * dropped before the user logs in on the new backend.
 *
 * As in Dovecot the setting is a URI whose %i / %{ip} expands to the new backend's IP and %h /
 * %{host} to its host name:
 *   exec:PATH       runs PATH FLUSH <hash> <old ip> <new ip> <up|down> <old vhosts>; exit 0 is
 *                   success
 *   unix:PATH, tcp:HOST:PORT
 *                   Dovecot's script protocol: "VERSION\tscript\t4\t0\n-\n", one argument per
 *                   line, an empty line; the service answers "+" (success) or "-" (failure)
 *                   on its first line.
 * The core gives the hook USHER_FLUSH_TIMEOUT_SECS; a hook still running then is cancelled here
 * too (an exec: program is killed), and its late answer is ignored by the core anyway. */


#include "daemon/usherd.h"

#include <gio/gunixsocketaddress.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
  Usherd *u;
  guint64 id;
  GCancellable *cancel;
  GSource *timeout;
  GSubprocess *proc; /* exec: */
  char *what; /* for the log */
  GSocketConnection *connection;
  GString *request;
  char reply[256];
  gsize reply_len;
} Hook;

static void
hook_free(Hook *h)
{
  if (h->timeout != NULL) {
    g_source_destroy(h->timeout);
    g_source_unref(h->timeout);
  }
  g_clear_object(&h->cancel);
  if (h->proc != NULL) {
    /* Still running (no answer in time, or usherd stops): killed, not left behind. GLib
     * reaps it. */
    const char *pid = g_subprocess_get_identifier(h->proc);
    if (pid != NULL)
      (void)kill(-(pid_t)atoi(pid), SIGKILL); /* the hook's process group (own_process_group) */
    g_object_unref(h->proc);
  }
  if (h->connection != NULL) {
    g_io_stream_close(G_IO_STREAM(h->connection), NULL, NULL);
    g_object_unref(h->connection);
  }
  if (h->request != NULL)
    g_string_free(h->request, TRUE);
  g_free(h->what);
  g_free(h);
}

/* The hook finished (or failed): tell the core once. */
static void
hook_done(Hook *h, gboolean success, const char *detail)
{
  Usherd *u = h->u;
  if (!g_hash_table_remove(u->flushes, &h->id))
    return;
  if (success) {
    g_debug("flush hook %s: done", h->what);
  } else {
    u->stats.flush_hooks_failed++;
    g_warning("flush hook %s failed: %s", h->what, detail);
  }
  guint64 id = h->id;
  if (h->cancel != NULL)
    g_cancellable_cancel(h->cancel);
  hook_free(h);
  usher_director_flush_done(u->director, usherd_now(), id, success);
  usherd_core_after_call(u);
}

static gboolean
on_hook_timeout(gpointer data)
{
  Hook *h = data;
  g_clear_pointer(&h->timeout, g_source_unref);
  hook_done(h, FALSE, "no answer in time");
  return G_SOURCE_REMOVE;
}

/* Looks the hook up by id: async callbacks may outlive it. */
static Hook *
hook_lookup(Usherd *u, guint64 id)
{
  return u->flushes != NULL ? g_hash_table_lookup(u->flushes, &id) : NULL;
}

/* ---- exec: ------------------------------------------------------------------------------------------ */

typedef struct {
  Usherd *u;
  guint64 id;
} HookRef;

static void
own_process_group(gpointer data)
{
  (void)data;
  (void)setpgid(0, 0);
}

static void
on_exec_done(GObject *source, GAsyncResult *result, gpointer data)
{
  HookRef *ref = data;
  g_autoptr(GError) error = NULL;
  gboolean ok = g_subprocess_wait_check_finish(G_SUBPROCESS(source), result, &error);
  Hook *h = g_error_matches(error, G_IO_ERROR, G_IO_ERROR_CANCELLED) ? NULL
                                                                       : hook_lookup(ref->u, ref->id);
  g_free(ref);
  if (h != NULL)
    hook_done(h, ok, ok ? NULL : error->message);
}

/* ---- unix: and tcp: --------------------------------------------------------------------------------- */

static void on_script_read(GObject *source, GAsyncResult *result, gpointer data);

static void
on_script_written(GObject *source, GAsyncResult *result, gpointer data)
{
  HookRef *ref = data;
  g_autoptr(GError) error = NULL;
  gboolean ok = g_output_stream_write_all_finish(G_OUTPUT_STREAM(source), result, NULL, &error);
  Hook *h = hook_lookup(ref->u, ref->id);
  if (h == NULL) {
    g_free(ref);
    return;
  }
  if (!ok) {
    g_free(ref);
    hook_done(h, FALSE, error->message);
    return;
  }
  GInputStream *in = g_io_stream_get_input_stream(G_IO_STREAM(h->connection));
  g_input_stream_read_async(in, h->reply, sizeof(h->reply) - 1, G_PRIORITY_DEFAULT, h->cancel,
                            on_script_read, ref);
}

static void
on_script_read(GObject *source, GAsyncResult *result, gpointer data)
{
  HookRef *ref = data;
  g_autoptr(GError) error = NULL;
  gssize n = g_input_stream_read_finish(G_INPUT_STREAM(source), result, &error);
  Hook *h = hook_lookup(ref->u, ref->id);
  if (h == NULL) {
    g_free(ref);
    return;
  }
  if (n <= 0) {
    g_free(ref);
    hook_done(h, FALSE, n == 0 ? "the service closed without an answer" : error->message);
    return;
  }
  h->reply_len += (gsize)n;
  h->reply[h->reply_len] = '\0';
  if (strchr(h->reply, '\n') == NULL && h->reply_len < sizeof(h->reply) - 1) {
    g_input_stream_read_async(G_INPUT_STREAM(source), h->reply + h->reply_len,
                              sizeof(h->reply) - 1 - h->reply_len, G_PRIORITY_DEFAULT, h->cancel,
                              on_script_read, ref);
    return;
  }
  g_free(ref);
  if (h->reply[0] == '+')
    hook_done(h, TRUE, NULL);
  else
    hook_done(h, FALSE, "the service answered failure");
}

static void
on_script_connected(GObject *source, GAsyncResult *result, gpointer data)
{
  HookRef *ref = data;
  g_autoptr(GError) error = NULL;
  GSocketConnection *connection =
    g_socket_client_connect_finish(G_SOCKET_CLIENT(source), result, &error);
  Hook *h = hook_lookup(ref->u, ref->id);
  if (h == NULL) {
    g_clear_object(&connection);
    g_free(ref);
    return;
  }
  if (connection == NULL) {
    g_free(ref);
    hook_done(h, FALSE, error->message);
    return;
  }
  h->connection = connection;
  GOutputStream *out = g_io_stream_get_output_stream(G_IO_STREAM(connection));
  g_output_stream_write_all_async(out, h->request->str, h->request->len, G_PRIORITY_DEFAULT,
                                  h->cancel, on_script_written, ref);
}

/* ---- Starting a hook -------------------------------------------------------------------------------- */

/* A host name fit for a path or a command line: what a configuration file may say, and no
 * leading dot (".." as a path component). A backend's host name may come from a ring peer;
 * anything else ("../x", spaces) gives the IP instead. */
static gboolean
host_name_plain(const char *name)
{
  return usher_hostname_valid(name) && name[0] != '.';
}

/* flush_socket with %i / %{ip} and %h / %{host} expanded. */
static char *
expand_target(const char *setting, const char *ip, const char *host)
{
  GString *out = g_string_new(NULL);
  for (const char *p = setting; *p != '\0'; p++) {
    if (*p != '%') {
      g_string_append_c(out, *p);
      continue;
    }
    if (p[1] == 'i') {
      g_string_append(out, ip);
      p++;
    } else if (p[1] == 'h') {
      g_string_append(out, host);
      p++;
    } else if (g_str_has_prefix(p + 1, "{ip}")) {
      g_string_append(out, ip);
      p += 4;
    } else if (g_str_has_prefix(p + 1, "{host}")) {
      g_string_append(out, host);
      p += 6;
    } else if (p[1] == '%') {
      g_string_append_c(out, '%');
      p++;
    } else {
      g_string_append_c(out, '%');
    }
  }
  return g_string_free(out, FALSE);
}

void
flush_hook_start(Usherd *u, const UsherEffect *e)
{
  char old_ip[USHER_IP_STRLEN], new_ip[USHER_IP_STRLEN];
  usher_ip_to_string(&e->flush.old_host, old_ip);
  usher_ip_to_string(&e->flush.new_host, new_ip);
  g_autofree char *hash = g_strdup_printf("%u", e->flush.hash);
  g_autofree char *vhosts = g_strdup_printf("%u", e->flush.old_vhost_count);
  const char *args[] = {"FLUSH", hash, old_ip, new_ip, e->flush.old_down ? "down" : "up",
                        vhosts};
  g_autofree char *target =
    expand_target(e->flush.socket, new_ip,
                  e->flush.new_hostname != NULL && host_name_plain(e->flush.new_hostname)
                    ? e->flush.new_hostname
                    : new_ip);

  Hook *h = g_new0(Hook, 1);
  h->u = u;
  h->id = e->flush.id;
  h->cancel = g_cancellable_new();
  h->what = g_strdup_printf("%s for user hash %u (%s -> %s)", target, e->flush.hash, old_ip,
                            new_ip);
  g_hash_table_insert(u->flushes, g_memdup2(&h->id, sizeof(h->id)), h);
  u->stats.flush_hooks_run++;
  h->timeout = g_timeout_source_new_seconds(USHER_FLUSH_TIMEOUT_SECS);
  g_source_set_callback(h->timeout, on_hook_timeout, h, NULL);
  g_source_attach(h->timeout, u->context);

  HookRef *ref = g_new0(HookRef, 1);
  ref->u = u;
  ref->id = h->id;
  if (g_str_has_prefix(target, "exec:")) {
    const char *argv[G_N_ELEMENTS(args) + 2] = {target + 5};
    for (gsize i = 0; i < G_N_ELEMENTS(args); i++)
      argv[i + 1] = args[i];
    g_autoptr(GError) error = NULL;
    g_autoptr(GSubprocessLauncher) launcher = g_subprocess_launcher_new(
      G_SUBPROCESS_FLAGS_STDOUT_SILENCE | G_SUBPROCESS_FLAGS_STDERR_SILENCE);
    /* Its own process group: a hook cut off at the timeout is killed with what it started. */
    g_subprocess_launcher_set_child_setup(launcher, own_process_group, NULL, NULL);
    g_autoptr(GSubprocess) proc = g_subprocess_launcher_spawnv(launcher, argv, &error);
    if (proc == NULL) {
      g_free(ref);
      hook_done(h, FALSE, error->message);
      return;
    }
    g_subprocess_wait_check_async(proc, h->cancel, on_exec_done, ref);
    h->proc = g_steal_pointer(&proc);
    return;
  }
  h->request = g_string_new("VERSION\tscript\t4\t0\n-\n");
  for (gsize i = 0; i < G_N_ELEMENTS(args); i++) {
    usher_ring_escape_append(h->request, args[i], -1);
    g_string_append_c(h->request, '\n');
  }
  g_string_append_c(h->request, '\n');
  g_autoptr(GSocketClient) client = g_socket_client_new();
  g_socket_client_set_enable_proxy(client, FALSE);
  g_autoptr(GSocketConnectable) where = NULL;
  if (g_str_has_prefix(target, "unix:")) {
    where = G_SOCKET_CONNECTABLE(g_unix_socket_address_new(target + 5));
  } else {
    g_autoptr(GError) error = NULL;
    where = g_network_address_parse(target + 4, 0, &error);
    if (where == NULL) {
      g_free(ref);
      hook_done(h, FALSE, error->message);
      return;
    }
  }
  g_socket_client_connect_async(client, where, h->cancel, on_script_connected, ref);
}

void
flush_hooks_free(Usherd *u)
{
  if (u->flushes == NULL)
    return;
  GHashTableIter it;
  gpointer v;
  g_hash_table_iter_init(&it, u->flushes);
  while (g_hash_table_iter_next(&it, NULL, &v)) {
    Hook *h = v;
    g_cancellable_cancel(h->cancel);
    g_hash_table_iter_remove(&it); /* frees the key; the table does not own the hook */
    hook_free(h);
  }
}

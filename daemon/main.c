/* main.c - usherd: options, configuration, signals, start and stop order. */


#include "common/cli.h"
#include "common/config-file.h"
#include "daemon/proxy.h"
#include "daemon/usherd.h"

#include <glib-unix.h>
#include <locale.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define USHERD_CONFIG_DEFAULT "/etc/usher/usher.conf"

/* Logs go to the journal when stderr is connected to it (systemd), else to stderr as one line
 * each: time, level, message. Informational lines are shown; debug lines only with --debug. */
static gboolean log_debug;

static GLogWriterOutput
log_writer(GLogLevelFlags level, const GLogField *fields, gsize n_fields, gpointer data)
{
  (void)data;
  if ((level & G_LOG_LEVEL_DEBUG) && !log_debug)
    return G_LOG_WRITER_HANDLED;
  if (g_log_writer_is_journald(fileno(stderr)) &&
      g_log_writer_journald(level, fields, n_fields, NULL) == G_LOG_WRITER_HANDLED)
    return G_LOG_WRITER_HANDLED;
  const char *message = "";
  for (gsize i = 0; i < n_fields; i++)
    if (g_strcmp0(fields[i].key, "MESSAGE") == 0)
      message = fields[i].value;
  const char *name = (level & G_LOG_LEVEL_ERROR)      ? "error"
                     : (level & G_LOG_LEVEL_CRITICAL) ? "critical"
                     : (level & G_LOG_LEVEL_WARNING)  ? "warning"
                     : (level & G_LOG_LEVEL_MESSAGE)  ? "notice"
                     : (level & G_LOG_LEVEL_INFO)     ? "info"
                                                      : "debug";
  g_autoptr(GDateTime) t = g_date_time_new_now_local();
  g_autofree char *when = g_date_time_format(t, "%Y-%m-%d %H:%M:%S.%f");
  when[23] = '\0'; /* milliseconds */
  fprintf(stderr, "%s usherd[%d]: %s: %s\n", when, (int)getpid(), name, message);
  return G_LOG_WRITER_HANDLED;
}

/* While stopping gracefully: quits once the proxy's sessions are gone or the time is up. */
static gboolean
on_drain_tick(gpointer data)
{
  Usherd *u = data;
  guint left = proxy_count_sessions(u->proxy);
  if (left > 0 && g_get_monotonic_time() < u->drain_deadline_us)
    return G_SOURCE_CONTINUE;
  if (left > 0)
    g_message("stopping: %u session%s still open after [proxy] shutdown_timeout: closing them",
              left, left == 1 ? "" : "s");
  g_clear_pointer(&u->drain_timer, g_source_unref);
  g_main_loop_quit(u->loop);
  return G_SOURCE_REMOVE;
}

static gboolean
on_stop_signal(gpointer data)
{
  Usherd *u = data;
  if (u->stopping) {
    /* A second SIGTERM/SIGINT: no more waiting. */
    g_message("stopping now");
    g_main_loop_quit(u->loop);
    return G_SOURCE_CONTINUE;
  }
  u->stopping = TRUE;
  guint sessions = u->proxy != NULL ? proxy_count_sessions(u->proxy) : 0;
  guint timeout = u->config->proxy_shutdown_timeout_secs;
  if (sessions == 0 || timeout == 0) {
    g_message("stopping");
    g_main_loop_quit(u->loop);
    return G_SOURCE_CONTINUE;
  }
  /* Graceful: no new clients; the ring, kicks and moves go on while sessions finish. */
  g_message("stopping: no new clients; waiting up to %u s for %u session%s to finish (SIGTERM "
            "again to stop now)",
            timeout, sessions, sessions == 1 ? "" : "s");
  usherd_notify_draining(u, sessions);
  proxy_stop_accepting(u->proxy);
  u->drain_deadline_us = g_get_monotonic_time() + (gint64)timeout * G_USEC_PER_SEC;
  u->drain_timer = g_timeout_source_new(100);
  g_source_set_callback(u->drain_timer, on_drain_tick, u, NULL);
  g_source_attach(u->drain_timer, u->context);
  return G_SOURCE_CONTINUE;
}

static gboolean
on_hup(gpointer data)
{
  usherd_notify_reloading(FALSE);
  usherd_reload(data);
  usherd_notify_reloading(TRUE);
  return G_SOURCE_CONTINUE;
}

/* This director's ring address: --ring-address, else [daemon] ring_address; a standalone
 * director (no [ring] directors) is 127.0.0.1 with no ring listener, as in Dovecot. */
static gboolean
choose_self(Usherd *u, const char *option, GError **error)
{
  if (option != NULL) {
    UsherDirectorAddr addr;
    if (!usher_config_parse_address(option, USHER_DIRECTOR_PORT_DEFAULT, &addr, error)) {
      g_prefix_error(error, "--ring-address: ");
      return FALSE;
    }
    u->self.ip = addr.ip;
    u->self.port = addr.port;
    return TRUE;
  }
  if (u->config->has_ring_address) {
    u->self.ip = u->config->ring_address.ip;
    u->self.port = u->config->ring_address.port;
    return TRUE;
  }
  if (u->config->directors->len == 0) {
    g_assert_true(usher_ip_parse("127.0.0.1", -1, &u->self.ip));
    u->self.port = 0;
    return TRUE;
  }
  g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
              "%s: [ring] lists directors, but which one is this? Set [daemon] ring_address or "
              "give --ring-address",
              u->config_path);
  return FALSE;
}

/* What start-up read, released when it ends before the daemon runs (--check, or a refusal). */
static void
startup_release(Usherd *u)
{
  usher_config_free(u->config);
  g_free(u->config_path);
  g_free(u->admin_socket_option);
  g_free(u->state_dir_option);
}

static int
startup_failed(Usherd *u)
{
  startup_release(u);
  return 1;
}

int
main(int argc, char **argv)
{
  usher_cli_init();
  /* A client gone mid-write is an error return (EPIPE), not a signal: splice(2) to a socket has
   * no MSG_NOSIGNAL. */
  signal(SIGPIPE, SIG_IGN);
  g_autofree char *config_path = NULL, *ring_address = NULL, *admin_socket = NULL;
  g_autofree char *state_dir = NULL;
  gboolean check = FALSE, debug = FALSE, version = FALSE;
  GOptionEntry entries[] = {
    {"config", 'c', 0, G_OPTION_ARG_FILENAME, &config_path,
     "Configuration file (default " USHERD_CONFIG_DEFAULT ")", "FILE"},
    {"ring-address", 0, 0, G_OPTION_ARG_STRING, &ring_address,
     "This director's IP:PORT in [ring] directors (overrides [daemon] ring_address)", "IP:PORT"},
    {"admin-socket", 0, 0, G_OPTION_ARG_FILENAME, &admin_socket,
     "The director-admin socket (overrides [daemon] admin_socket)", "PATH"},
    {"state-dir", 0, 0, G_OPTION_ARG_FILENAME, &state_dir,
     "Where state survives restarts (overrides [daemon] state_dir; \"\" keeps nothing)", "DIR"},
    {"check", 0, 0, G_OPTION_ARG_NONE, &check,
     "Check the configuration and exit (0 if it is valid)", NULL},
    {"debug", 'd', 0, G_OPTION_ARG_NONE, &debug, "Log debug messages too", NULL},
    {"version", 0, 0, G_OPTION_ARG_NONE, &version, "Print the version and exit", NULL},
    {NULL, 0, 0, 0, NULL, NULL, NULL},
  };
  g_autoptr(GOptionContext) options = g_option_context_new("- the Usher director daemon");
  g_option_context_set_summary(
    options,
    "Keeps every mail user on one backend at a time, in a ring of directors that speaks\n"
    "Dovecot 2.3's director protocol. Runs in the foreground and logs to standard error (or to\n"
    "the journal under systemd). Stop it with SIGTERM.\n"
    "\n"
    "Administration: doveadm director ... -a ADMIN_SOCKET, or usherctl.");
  g_option_context_set_description(
    options, "Exit status: 0 after a clean stop (or a valid --check), 1 on a configuration or "
             "start-up error.\nSee usherd(8) and doc/configuration.md.");
  g_option_context_add_main_entries(options, entries, NULL);
  g_autoptr(GError) error = NULL;
  if (!g_option_context_parse(options, &argc, &argv, &error)) {
    fprintf(stderr, "usherd: %s (try --help)\n", error->message);
    return 1;
  }
  if (version) {
    printf("usherd %s\n", USHER_VERSION);
    return 0;
  }
  if (argc > 1) {
    fprintf(stderr, "usherd: unexpected argument \"%s\" (try --help)\n", argv[1]);
    return 1;
  }
  log_debug = debug;
  g_log_set_writer_func(log_writer, NULL, NULL);

  Usherd u = {0};
  u.config_path = g_strdup(config_path != NULL ? config_path : USHERD_CONFIG_DEFAULT);
  u.config = usher_config_load_file(u.config_path, &error);
  if (u.config == NULL) {
    fprintf(stderr, "usherd: %s\n", error->message);
    g_free(u.config_path);
    return 1;
  }
  if (admin_socket != NULL) {
    if (admin_socket[0] != '/') {
      fprintf(stderr, "usherd: --admin-socket: \"%s\" must be an absolute path\n", admin_socket);
      return startup_failed(&u);
    }
    g_free(u.config->admin_socket);
    u.config->admin_socket = g_strdup(admin_socket);
    u.admin_socket_option = g_strdup(admin_socket);
  }
  if (state_dir != NULL) {
    if (state_dir[0] != '\0' && state_dir[0] != '/') {
      fprintf(stderr, "usherd: --state-dir: \"%s\" must be empty or an absolute path\n",
              state_dir);
      return startup_failed(&u);
    }
    g_free(u.config->state_dir);
    u.config->state_dir = g_strdup(state_dir);
    u.state_dir_option = g_strdup(state_dir);
  }
  if (!choose_self(&u, ring_address, &error)) {
    fprintf(stderr, "usherd: %s\n", error->message);
    return startup_failed(&u);
  }
  if (check) {
    /* The director refuses a ring address that is not a member: check that too. */
    UsherDirector *d = usher_director_new(u.config, &u.self, 1, usherd_now(), &error);
    if (d == NULL) {
      fprintf(stderr, "usherd: %s: %s\n", u.config_path, error->message);
      return startup_failed(&u);
    }
    usher_director_free(d);
    printf("usherd: %s is valid\n", u.config_path);
    startup_release(&u);
    return 0;
  }

  u.file_directors = g_array_copy(u.config->directors);
  usherd_state_apply_runtime(&u);
  u.context = g_main_context_new();
  g_main_context_push_thread_default(u.context);
  u.loop = g_main_loop_new(u.context, FALSE);
  u.started_wall_us = g_get_real_time();
  int status = 0;
  if (!usherd_core_init(&u, &error) || (u.ring = ring_links_new(&u, &error)) == NULL ||
      (u.admin = admin_server_new(&u, &error)) == NULL ||
      ((u.http = http_server_new(&u, &error)) == NULL && error != NULL) ||
      ((u.proxy = proxy_new(&u, &error)) == NULL && error != NULL)) {
    g_critical("cannot start: %s", error->message);
    status = 1;
  } else {
    GSource *signals[3] = {g_unix_signal_source_new(SIGTERM), g_unix_signal_source_new(SIGINT),
                           g_unix_signal_source_new(SIGHUP)};
    for (int i = 0; i < 3; i++) {
      g_source_set_callback(signals[i], i < 2 ? on_stop_signal : on_hup, &u, NULL);
      g_source_attach(signals[i], u.context);
    }
    char ip[USHER_IP_STRLEN];
    g_message("usherd %s started: ring address %s:%u, %u directors, %u backends, admin socket %s",
              USHER_VERSION, usher_ip_to_string(&u.self.ip, ip), u.self.port,
              u.config->directors->len, u.config->backends->len, u.config->admin_socket);
    usherd_state_load_users(&u);
    usherd_core_start(&u);
    usherd_state_start(&u);
    usherd_state_watch_runtime(&u);
    usherd_notify_ready(&u);
    g_main_loop_run(u.loop);
    if (u.drain_timer != NULL) {
      /* In u.context, not the default context that g_source_remove() would look in. */
      g_source_destroy(u.drain_timer);
      g_clear_pointer(&u.drain_timer, g_source_unref);
    }
    usherd_notify_stopping(&u);
    usherd_state_stop(&u);
    g_autoptr(GError) save_error = NULL;
    if (!usherd_state_save_runtime(&u, &save_error)) {
      g_warning("runtime state not saved: %s", save_error->message);
      g_clear_error(&save_error);
    }
    if (!usherd_state_save_users(&u, &save_error))
      g_warning("user snapshot not saved: %s", save_error->message);
    for (int i = 0; i < 3; i++) {
      g_source_destroy(signals[i]);
      g_source_unref(signals[i]);
    }
  }
  proxy_free(u.proxy);
  u.proxy = NULL; /* what still runs below (a last callback) finds no proxy, not a freed one */
  http_server_free(u.http);
  admin_server_free(u.admin);
  ring_links_free(u.ring);
  usherd_core_free(&u);
  g_main_loop_unref(u.loop);
  g_main_context_pop_thread_default(u.context);
  /* Let cancelled operations (dials, flush hooks) finish their callbacks. A cancelled connect
   * may answer a moment later (its resolver or connect attempt ends first): waited for, up to
   * 2 s, so nothing it holds is left behind. */
  gint64 give_up = g_get_monotonic_time() + 2 * G_USEC_PER_SEC;
  for (;;) {
    while (g_main_context_iteration(u.context, FALSE))
      ;
    if (ring_links_dials_pending() == 0 || g_get_monotonic_time() >= give_up)
      break;
    g_usleep(2000);
  }
  g_main_context_unref(u.context);
  usher_config_free(u.config);
  g_free(u.config_path);
  g_free(u.runtime_written);
  g_free(u.config_checksum);
  g_free(u.admin_socket_option);
  g_clear_pointer(&u.reload_changes, g_hash_table_unref);
  g_free(u.state_dir_option);
  g_array_unref(u.file_directors);
  return status;
}

/* test-usherd.c - real usherd processes on loopback: the ring forms and re-forms, the admin
 * socket answers as Dovecot's does and survives bad clients, strangers and liars on the ring
 * port are refused, the user directory survives a restart, usherctl's exit codes.
 *
 * Every usherd runs in a temporary directory, on its own 127.0.4.x addresses (each test case its
 * own block, so cases never collide), and is stopped by PID at the end of the case; a child
 * also dies with the test process (PR_SET_PDEATHSIG), so a failed assertion leaves nothing
 * running. Every wait is bounded. */
#include <gio/gio.h>
#include <gio/gunixsocketaddress.h>
#include <json-glib/json-glib.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>

#define WAIT_SECS 20

static const char *usherd_path, *usherctl_path;

/* ---- Processes ---------------------------------------------------------------------------------------- */

typedef struct {
  GSubprocess *proc;
  char *admin;
  char *log;
  char *addr;
  char *config;
  char *state;
  char *http; /* "127.0.4.x:8080" */
  char **env; /* extra environment for the next start, or NULL */
} Node;

typedef struct {
  char *dir;
  Node nodes[8];
  guint n;
  guint block; /* 127.0.4.<block*10 + i> */
} Ring;

static void
die_with_parent(gpointer data)
{
  (void)data;
  prctl(PR_SET_PDEATHSIG, SIGKILL);
}

static void
node_start(Ring *r, guint i)
{
  Node *n = &r->nodes[i];
  g_autoptr(GSubprocessLauncher) l = g_subprocess_launcher_new(G_SUBPROCESS_FLAGS_NONE);
  g_subprocess_launcher_set_child_setup(l, die_with_parent, NULL, NULL);
  g_subprocess_launcher_set_stdout_file_path(l, n->log);
  g_subprocess_launcher_set_stderr_file_path(l, n->log);
  for (guint k = 0; n->env != NULL && n->env[k] != NULL; k++) {
    g_auto(GStrv) kv = g_strsplit(n->env[k], "=", 2);
    g_subprocess_launcher_setenv(l, kv[0], kv[1], TRUE);
  }
  g_autoptr(GError) error = NULL;
  (void)r;
  n->proc = g_subprocess_launcher_spawn(l, &error, usherd_path, "-c", n->config, NULL);
  g_assert_no_error(error);
}

static void
node_stop(Node *n, int sig)
{
  if (n->proc == NULL)
    return;
  g_subprocess_send_signal(n->proc, sig);
  g_subprocess_wait(n->proc, NULL, NULL);
  g_clear_object(&n->proc);
}

/* Writes node i's configuration: the ring's shared part (ring, backends, extra_groups), then its
 * own [daemon] group (ring address, admin socket, state dir, extra_daemon) and [http] listener. */
static void
node_write_config(Ring *r, guint i, const char *hosts, const char *extra_groups,
                  const char *extra_daemon)
{
  Node *node = &r->nodes[i];
  GString *members = g_string_new(NULL);
  for (guint k = 0; k < r->n; k++)
    g_string_append_printf(members, "%s ", r->nodes[k].addr);
  g_autofree char *text = g_strdup_printf(
    "[ring]\ndirectors = %s\n[backends]\nhosts = %s\n%s"
    "[daemon]\nring_address = %s\nadmin_socket = %s\nstate_dir = %s\n"
    "%s%s[http]\nlisten = %s\n",
    members->str, hosts, extra_groups != NULL ? extra_groups : "", node->addr, node->admin,
    node->state,
    /* Only at a clean stop, unless the test asks for another interval. */
    extra_daemon != NULL && strstr(extra_daemon, "users_snapshot_interval") != NULL
      ? ""
      : "users_snapshot_interval = 0\n",
    extra_daemon != NULL ? extra_daemon : "", node->http);
  g_string_free(members, TRUE);
  g_assert_true(g_file_set_contents(node->config, text, -1, NULL));
}

#define HOSTS_DEFAULT "127.0.2.1 127.0.2.2 127.0.2.3"

/* n directors 127.0.4.<block*10+1..n>; members beyond `running` are listed but not started.
 * extra_daemon: more [daemon] keys. */
static Ring *
ring_new(guint block, guint n, guint running, const char *extra_daemon)
{
  Ring *r = g_new0(Ring, 1);
  r->dir = g_dir_make_tmp("usherd-test-XXXXXX", NULL);
  r->n = n;
  r->block = block;
  for (guint i = 0; i < n; i++) {
    Node *node = &r->nodes[i];
    node->addr = g_strdup_printf("127.0.4.%u:9090", block * 10 + i + 1);
    node->http = g_strdup_printf("127.0.4.%u:8080", block * 10 + i + 1);
    node->admin = g_strdup_printf("%s/admin%u", r->dir, i + 1);
    node->log = g_strdup_printf("%s/usherd%u.log", r->dir, i + 1);
    node->config = g_strdup_printf("%s/usher%u.conf", r->dir, i + 1);
    node->state = g_strdup_printf("%s/state%u", r->dir, i + 1);
  }
  for (guint i = 0; i < n; i++)
    node_write_config(r, i, HOSTS_DEFAULT, NULL, extra_daemon);
  for (guint i = 0; i < running; i++)
    node_start(r, i);
  return r;
}

/* A clean stop (SIGTERM) must end with status 0: under the sanitizers that also means no leak
 * and no error in the daemon. */
static void
node_stop_clean(Node *n)
{
  if (n->proc == NULL)
    return;
  g_subprocess_send_signal(n->proc, SIGTERM);
  g_assert_true(g_subprocess_wait(n->proc, NULL, NULL));
  if (!g_subprocess_get_if_exited(n->proc) || g_subprocess_get_exit_status(n->proc) != 0) {
    g_autofree char *log = NULL;
    g_file_get_contents(n->log, &log, NULL, NULL);
    g_error("usherd %s did not stop cleanly; its log:\n%s", n->addr, log);
  }
  g_clear_object(&n->proc);
}

static void
ring_free(Ring *r)
{
  for (guint i = 0; i < r->n; i++) {
    node_stop_clean(&r->nodes[i]);
    g_free(r->nodes[i].addr);
    g_free(r->nodes[i].admin);
    g_free(r->nodes[i].log);
    g_free(r->nodes[i].config);
    g_free(r->nodes[i].state);
    g_free(r->nodes[i].http);
    g_strfreev(r->nodes[i].env);
  }
  g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", r->dir);
  g_assert_cmpint(system(cmd), ==, 0);
  g_free(r->dir);
  g_free(r);
}

/* ---- The admin protocol -------------------------------------------------------------------------- */

typedef struct {
  GSocketConnection *conn;
  GDataInputStream *in;
  GOutputStream *out;
} Admin;

static void
admin_close(Admin *a)
{
  g_object_unref(a->in);
  g_object_unref(a->conn);
  g_free(a);
}

/* Connects (retrying while the daemon starts) and completes the greeting unless raw. */
static Admin *
admin_open(const char *path, gboolean raw)
{
  g_autoptr(GSocketClient) client = g_socket_client_new();
  g_autoptr(GSocketAddress) addr = g_unix_socket_address_new(path);
  Admin *a = g_new0(Admin, 1);
  for (int i = 0; i < WAIT_SECS * 20 && a->conn == NULL; i++) {
    a->conn = g_socket_client_connect(client, G_SOCKET_CONNECTABLE(addr), NULL, NULL);
    if (a->conn == NULL)
      g_usleep(50000);
  }
  g_assert_nonnull(a->conn);
  g_socket_set_timeout(g_socket_connection_get_socket(a->conn), WAIT_SECS * 3);
  a->in = g_data_input_stream_new(g_io_stream_get_input_stream(G_IO_STREAM(a->conn)));
  a->out = g_io_stream_get_output_stream(G_IO_STREAM(a->conn));
  g_autofree char *greeting = g_data_input_stream_read_line(a->in, NULL, NULL, NULL);
  g_assert_cmpstr(greeting, ==, "VERSION\tdirector-doveadm\t1\t0");
  if (!raw)
    g_assert_true(g_output_stream_write_all(a->out, "VERSION\tdirector-doveadm\t1\t0\n", 29, NULL,
                                            NULL, NULL));
  return a;
}

static void
admin_send(Admin *a, const char *text)
{
  g_assert_true(g_output_stream_write_all(a->out, text, strlen(text), NULL, NULL, NULL));
}

/* One reply line, or NULL when the daemon closed the connection. */
static char *
admin_line(Admin *a)
{
  return g_data_input_stream_read_line(a->in, NULL, NULL, NULL);
}

static JsonObject *
admin_json(const char *path, const char *command)
{
  Admin *a = admin_open(path, FALSE);
  g_autofree char *line = g_strdup_printf("%s\n", command);
  admin_send(a, line);
  g_autofree char *reply = admin_line(a);
  admin_close(a);
  g_assert_nonnull(reply);
  g_autoptr(JsonParser) p = json_parser_new();
  g_assert_true(json_parser_load_from_data(p, reply, -1, NULL));
  return json_object_ref(json_node_get_object(json_parser_get_root(p)));
}

static gint64
stat_of(const char *path, const char *group, const char *name)
{
  g_autoptr(JsonObject) o = admin_json(path, "USHER-STATS");
  return json_object_get_int_member(json_object_get_object_member(o, group), name);
}

/* Waits until every running node's ring is synced with `members` connected members; returns
 * the time it took in ms. */
static gint64
wait_synced(Ring *r, guint links_each)
{
  gint64 t0 = g_get_monotonic_time();
  for (int i = 0; i < WAIT_SECS * 20; i++) {
    gboolean all = TRUE;
    for (guint k = 0; k < r->n && all; k++) {
      if (r->nodes[k].proc == NULL)
        continue;
      g_autoptr(JsonObject) o = admin_json(r->nodes[k].admin, "USHER-RING");
      all = json_object_get_boolean_member(o, "synced") &&
            (guint)json_object_get_int_member(o, "n_connections") == links_each;
    }
    if (all)
      return (g_get_monotonic_time() - t0) / 1000;
    g_usleep(50000);
  }
  g_error("the ring did not sync within %d s (logs in %s)", WAIT_SECS, r->dir);
}

static int
run_usherctl(const char *socket, char **out, const char *first, ...)
{
  g_autoptr(GPtrArray) argv = g_ptr_array_new();
  g_ptr_array_add(argv, (gpointer)usherctl_path);
  g_ptr_array_add(argv, (gpointer)"-a");
  g_ptr_array_add(argv, (gpointer)socket);
  va_list args;
  va_start(args, first);
  for (const char *a = first; a != NULL; a = va_arg(args, const char *))
    g_ptr_array_add(argv, (gpointer)a);
  va_end(args);
  g_ptr_array_add(argv, NULL);
  g_autoptr(GError) error = NULL;
  g_autoptr(GSubprocess) p = g_subprocess_newv((const char *const *)argv->pdata,
                                               G_SUBPROCESS_FLAGS_STDOUT_PIPE |
                                                 G_SUBPROCESS_FLAGS_STDERR_MERGE,
                                               &error);
  g_assert_no_error(error);
  /* Bytes, not UTF-8: dump prints a tag's bytes as they are. */
  g_autoptr(GBytes) bytes = NULL;
  g_assert_true(g_subprocess_communicate(p, NULL, NULL, &bytes, NULL, NULL));
  gsize size = 0;
  const char *data = g_bytes_get_data(bytes, &size);
  g_autofree char *text = g_strndup(data != NULL ? data : "", size);
  if (out != NULL) {
    g_free(*out); /* callers reuse one variable for several runs */
    *out = g_steal_pointer(&text);
  }
  return g_subprocess_get_exit_status(p);
}

/* ---- Cases ---------------------------------------------------------------------------------------------- */

static void
test_ring_forms_and_reforms(void)
{
  Ring *r = ring_new(1, 3, 3, NULL);
  g_test_message("ring of 3 synced in %" G_GINT64_FORMAT " ms", wait_synced(r, 2));
  /* A change on one director reaches the others. */
  g_autofree char *out = NULL;
  g_assert_cmpint(run_usherctl(r->nodes[0].admin, &out, "add", "127.0.2.9@eu", "7", NULL), ==, 0);
  g_assert_cmpint(run_usherctl(r->nodes[2].admin, &out, "--json", "status", NULL), ==, 0);
  g_assert_nonnull(strstr(out, "\"127.0.2.9\""));
  g_assert_cmpint(run_usherctl(r->nodes[1].admin, NULL, "move", "user1", "127.0.2.2", NULL), ==, 0);
  /* kill -9 of one member: the other two close the ring between them. */
  node_stop(&r->nodes[1], SIGKILL);
  g_test_message("2 survivors synced in %" G_GINT64_FORMAT " ms", wait_synced(r, 2));
  /* It comes back, empty (its snapshot is only written at a clean stop), and learns everything
   * from the ring: the backend added and the user moved. */
  node_start(r, 1);
  g_test_message("rejoined in %" G_GINT64_FORMAT " ms", wait_synced(r, 2));
  g_assert_cmpint(run_usherctl(r->nodes[1].admin, &out, "status", "user1", NULL), ==, 0);
  g_assert_nonnull(strstr(out, "Current: 127.0.2.2"));
  g_autofree char *status = NULL;
  g_assert_cmpint(run_usherctl(r->nodes[1].admin, &status, "status", NULL), ==, 0);
  g_assert_nonnull(strstr(status, "127.0.2.9"));
  ring_free(r);
}

static void
test_admin_pipelined(void)
{
  Ring *r = ring_new(2, 2, 2, NULL);
  wait_synced(r, 2);
  /* Changes wait for the ring; everything sent at once is still answered, in order. */
  Admin *a = admin_open(r->nodes[0].admin, FALSE);
  admin_send(a, "HOST-DOWN\t127.0.2.1\nHOST-SET\t127.0.2.8\t20\nHOST-LIST\nHOST-UP\t127.0.2.1\n"
                "HOST-DOWN\t127.0.2.77\nUSER-MOVE\tuser5\t127.0.2.8\nUSER-LOOKUP\tuser5\n"
                "USER-KICK\tuser5\nDIRECTOR-LIST\n");
  char *l;
  g_assert_cmpstr((l = admin_line(a)), ==, "OK");
  g_free(l);
  g_assert_cmpstr((l = admin_line(a)), ==, "OK");
  g_free(l);
  guint hosts = 0;
  while ((l = admin_line(a)) != NULL && l[0] != '\0') {
    hosts++;
    if (g_str_has_prefix(l, "127.0.2.1\t"))
      g_assert_nonnull(strstr(l, "\tD\t"));
    g_free(l);
  }
  g_free(l);
  g_assert_cmpuint(hosts, ==, 4);
  g_assert_cmpstr((l = admin_line(a)), ==, "OK");
  g_free(l);
  g_assert_cmpstr((l = admin_line(a)), ==, "NOTFOUND");
  g_free(l);
  g_assert_cmpstr((l = admin_line(a)), ==, "OK");
  g_free(l);
  l = admin_line(a);
  g_assert_true(g_str_has_prefix(l, "127.0.2.8\t"));
  g_free(l);
  g_assert_cmpstr((l = admin_line(a)), ==, "OK");
  g_free(l);
  guint members = 0;
  while ((l = admin_line(a)) != NULL && l[0] != '\0') {
    members++;
    g_free(l);
  }
  g_free(l);
  g_assert_cmpuint(members, >=, 2);
  admin_close(a);
  ring_free(r);
}

static void
test_admin_bad_clients(void)
{
  Ring *r = ring_new(3, 1, 1, "admin_max_clients = 3\nadmin_idle_timeout = 2s\n");
  const char *path = r->nodes[0].admin;
  /* No VERSION line: closed without a reply. */
  Admin *a = admin_open(path, TRUE);
  admin_send(a, "HOST-LIST\n");
  g_assert_null(admin_line(a));
  admin_close(a);
  /* An unknown command, and a command with bad arguments. */
  a = admin_open(path, FALSE);
  admin_send(a, "HOST-LIST-EVERYTHING\n");
  g_assert_null(admin_line(a));
  admin_close(a);
  a = admin_open(path, FALSE);
  admin_send(a, "HOST-SET\tnot-an-ip\n");
  g_assert_null(admin_line(a));
  admin_close(a);
  /* A line over 8 KiB. */
  a = admin_open(path, FALSE);
  g_autofree char *huge = g_strnfill(20000, 'x');
  admin_send(a, huge);
  g_assert_null(admin_line(a));
  admin_close(a);
  /* More clients than admin_max_clients: the fourth is refused. */
  Admin *keep[3];
  for (int i = 0; i < 3; i++)
    keep[i] = admin_open(path, FALSE);
  g_autoptr(GSocketClient) client = g_socket_client_new();
  g_autoptr(GSocketAddress) addr = g_unix_socket_address_new(path);
  g_autoptr(GSocketConnection) extra =
    g_socket_client_connect(client, G_SOCKET_CONNECTABLE(addr), NULL, NULL);
  g_assert_nonnull(extra);
  g_autoptr(GDataInputStream) in =
    g_data_input_stream_new(g_io_stream_get_input_stream(G_IO_STREAM(extra)));
  g_autofree char *nothing = g_data_input_stream_read_line(in, NULL, NULL, NULL);
  g_assert_null(nothing);
  for (int i = 0; i < 3; i++)
    admin_close(keep[i]);
  /* Still serving, and every rejection counted. */
  g_usleep(100000);
  g_assert_cmpint(stat_of(path, "daemon", "admin_protocol_errors"), ==, 4);
  g_assert_cmpint(stat_of(path, "daemon", "admin_clients_refused"), ==, 1);
  /* Clients that say nothing are closed after admin_idle_timeout: they cannot keep the others
   * out for ever. */
  for (int i = 0; i < 3; i++)
    keep[i] = admin_open(path, FALSE);
  gint64 t0 = g_get_monotonic_time();
  for (int i = 0; i < 3; i++) {
    g_assert_null(admin_line(keep[i])); /* closed by usherd */
    admin_close(keep[i]);
  }
  gint64 waited_ms = (g_get_monotonic_time() - t0) / 1000;
  g_assert_cmpint(waited_ms, >=, 1500);
  g_assert_cmpint(waited_ms, <, 6000);
  g_assert_cmpint(stat_of(path, "daemon", "admin_idle_closed"), ==, 3);
  ring_free(r);
}

/* Opens a TCP connection to addr from local_ip. */
static GSocketConnection *
connect_from(const char *local_ip, const char *addr)
{
  g_autoptr(GSocketClient) client = g_socket_client_new();
  g_autoptr(GInetAddress) ia = g_inet_address_new_from_string(local_ip);
  g_autoptr(GSocketAddress) local = g_inet_socket_address_new(ia, 0);
  g_socket_client_set_local_address(client, local);
  g_socket_client_set_timeout(client, WAIT_SECS);
  g_autoptr(GError) error = NULL;
  GSocketConnection *c = g_socket_client_connect_to_host(client, addr, 9090, NULL, &error);
  g_assert_no_error(error);
  return c;
}

/* Reads until the peer closes; returns what came. */
static char *
read_until_closed(GSocketConnection *c)
{
  GInputStream *in = g_io_stream_get_input_stream(G_IO_STREAM(c));
  GString *all = g_string_new(NULL);
  char buf[4096];
  gssize n;
  while ((n = g_input_stream_read(in, buf, sizeof(buf), NULL, NULL)) > 0)
    g_string_append_len(all, buf, n);
  return g_string_free(all, FALSE);
}

static void
test_ring_strangers_and_liars(void)
{
  /* Three members listed, two running: 127.0.4.43 is a member's address nobody uses. */
  Ring *r = ring_new(4, 3, 2, NULL);
  wait_synced(r, 2);
  const char *admin = r->nodes[0].admin;
  /* A stranger: refused at once. */
  g_autoptr(GSocketConnection) stranger = connect_from("127.0.4.99", "127.0.4.41");
  g_autofree char *nothing = read_until_closed(stranger);
  g_assert_cmpstr(nothing, ==, "");
  g_assert_cmpint(stat_of(admin, "daemon", "ring_refused"), >=, 1);
  /* A member's address that speaks garbage: greeted, then dropped with a QUIT. */
  g_autoptr(GSocketConnection) liar = connect_from("127.0.4.43", "127.0.4.41");
  GOutputStream *out = g_io_stream_get_output_stream(G_IO_STREAM(liar));
  g_assert_true(g_output_stream_write_all(out, "GET / HTTP/1.0\n\n", 16, NULL, NULL, NULL));
  g_autofree char *said = read_until_closed(liar);
  g_assert_true(g_str_has_prefix(said, "VERSION\tdirector\t1\t9\n"));
  g_assert_cmpint(stat_of(admin, "director", "protocol_errors"), ==, 1);
  /* A member's address that sends an endless line. */
  g_autoptr(GSocketConnection) flood = connect_from("127.0.4.43", "127.0.4.42");
  out = g_io_stream_get_output_stream(G_IO_STREAM(flood));
  g_autofree char *junk = g_strnfill(5000, 'A');
  g_output_stream_write_all(out, junk, strlen(junk), NULL, NULL, NULL);
  g_autofree char *said2 = read_until_closed(flood);
  g_assert_true(g_str_has_prefix(said2, "VERSION\tdirector\t1\t9\n"));
  g_assert_cmpint(stat_of(r->nodes[1].admin, "director", "protocol_errors"), ==, 1);
  /* The ring is unharmed. */
  wait_synced(r, 2);
  ring_free(r);
}

static gboolean file_contains(const char *path, const char *needle);
static gint cmp_strp(gconstpointer a, gconstpointer b);

/* `usherctl users` with its lines sorted: entries stamped in the same second may come back from a
 * snapshot in another order (the order of ties means nothing to the directory). */
static char *
users_sorted(const char *admin)
{
  g_autofree char *out = NULL;
  g_assert_cmpint(run_usherctl(admin, &out, "users", NULL), ==, 0);
  g_auto(GStrv) lines = g_strsplit(out, "\n", -1);
  guint n = g_strv_length(lines);
  qsort(lines, n, sizeof(char *), cmp_strp);
  return g_strjoinv("\n", lines);
}

static void
test_restart_keeps_users(void)
{
  Ring *r = ring_new(5, 1, 1, NULL);
  const char *admin = r->nodes[0].admin;
  wait_synced(r, 0);
  for (int i = 1; i <= 20; i++) {
    g_autofree char *user = g_strdup_printf("user%d", i);
    g_autofree char *ip = g_strdup_printf("127.0.2.%d", 1 + i % 3);
    g_assert_cmpint(run_usherctl(admin, NULL, "move", user, ip, NULL), ==, 0);
  }
  g_autofree char *before = users_sorted(admin);
  node_stop_clean(&r->nodes[0]); /* a clean stop writes the snapshot */
  node_start(r, 0);
  wait_synced(r, 0);
  g_autofree char *after = users_sorted(admin);
  g_assert_cmpstr(after, ==, before);
  g_auto(GStrv) lines = g_strsplit(after, "\n", -1);
  g_assert_cmpuint(g_strv_length(lines), >=, 21);
  ring_free(r);
}

/* The periodic snapshot is written off the core thread, and a crash (no clean stop) after it
 * keeps the users it holds. */
static void
test_periodic_snapshot(void)
{
  Ring *r = ring_new(13, 1, 1, "users_snapshot_interval = 1s\n");
  Node *n = &r->nodes[0];
  wait_synced(r, 0);
  for (int i = 1; i <= 20; i++) {
    g_autofree char *user = g_strdup_printf("user%d", i);
    g_autofree char *ip = g_strdup_printf("127.0.2.%d", 1 + i % 3);
    g_assert_cmpint(run_usherctl(n->admin, NULL, "move", user, ip, NULL), ==, 0);
  }
  g_autofree char *before = users_sorted(n->admin);
  g_autofree char *snap = g_build_filename(n->state, "users.snapshot", NULL);
  for (int i = 0; i < WAIT_SECS * 10 && !file_contains(snap, "\nend 20\n"); i++)
    g_usleep(100000);
  g_assert_true(file_contains(snap, "\nend 20\n"));
  g_assert_true(file_contains(n->log, "ms of it on the core thread)"));
  node_stop(n, SIGKILL);
  node_start(r, 0);
  wait_synced(r, 0);
  g_autofree char *after = users_sorted(n->admin);
  g_assert_cmpstr(after, ==, before);
  ring_free(r);
}

static void
test_usherctl_and_check(void)
{
  Ring *r = ring_new(6, 1, 1, NULL);
  const char *admin = r->nodes[0].admin;
  wait_synced(r, 0);
  g_autofree char *out = NULL;
  g_assert_cmpint(run_usherctl(admin, &out, "down", "127.0.2.99", NULL), ==, 68);
  g_assert_cmpint(run_usherctl(admin, &out, "move", "user1", "mail.example.com", NULL), ==, 64);
  g_assert_cmpint(run_usherctl(admin, &out, "frobnicate", NULL), ==, 64);
  g_assert_cmpint(run_usherctl("/nonexistent/socket", &out, "status", NULL), ==, 69);
  g_assert_cmpint(run_usherctl(admin, &out, "explain", "user1", NULL), ==, 0);
  g_assert_nonnull(strstr(out, "why:"));
  /* A name that is not UTF-8 (Latin-1 "été") still gives valid JSON: U+FFFD for the bad bytes. */
  g_assert_cmpint(run_usherctl(admin, &out, "--json", "explain", "\xe9t\xe9", NULL), ==, 0);
  g_assert_nonnull(strstr(out, "\"\xef\xbf\xbdt\xef\xbf\xbd\""));
  g_assert_cmpint(run_usherctl(admin, &out, "--json", "stats", NULL), ==, 0);
  g_assert_nonnull(strstr(out, "\"admin_commands\""));
  g_assert_cmpint(run_usherctl(admin, &out, "move", "--help", NULL), ==, 0);
  g_assert_nonnull(strstr(out, "usage: usherctl"));
  /* A change the director refuses for good is 65 (75 is for "try again"); bad values are
   * usage errors before anything is sent. */
  g_assert_cmpint(run_usherctl(admin, &out, "add", "127.0.2.1@other", NULL), ==, 65);
  g_assert_cmpint(run_usherctl(admin, &out, "ring", "add", "127.0.4.69", "0", NULL), ==, 64);
  g_assert_cmpint(run_usherctl(admin, &out, "flush", "--max-parallel", "0", "127.0.2.1", NULL),
                  ==, 64);
  g_autofree char *long_tag = g_strnfill(256, 't');
  g_autofree char *long_host = g_strconcat("127.0.2.7@", long_tag, NULL);
  g_assert_cmpint(run_usherctl(admin, &out, "add", long_host, NULL), ==, 64);
  /* dump prints shell words, quoted: a tag with a space and a ';' comes back whole. */
  g_assert_cmpint(run_usherctl(admin, &out, "add", "127.0.2.8@a b;c", "5", NULL), ==, 0);
  g_assert_cmpint(run_usherctl(admin, &out, "dump", NULL), ==, 0);
  g_assert_nonnull(strstr(out, " add '127.0.2.8@a b;c' '5'\n"));
  /* A tag that is not UTF-8: dump keeps its bytes (it recreates the data), JSON repairs them. */
  g_assert_cmpint(run_usherctl(admin, &out, "add", "127.0.2.9@t\xff", "5", NULL), ==, 0);
  g_assert_cmpint(run_usherctl(admin, &out, "dump", NULL), ==, 0);
  g_assert_nonnull(strstr(out, " add '127.0.2.9@t\xff' '5'\n"));
  g_assert_cmpint(run_usherctl(admin, &out, "--json", "status", NULL), ==, 0);
  g_assert_true(g_utf8_validate(out, -1, NULL));
  g_assert_nonnull(strstr(out, "\"t\xef\xbf\xbd\""));
  ring_free(r);

  /* usherd --check. */
  g_autofree char *dir = g_dir_make_tmp("usherd-check-XXXXXX", NULL);
  g_autofree char *bad = g_build_filename(dir, "bad.conf", NULL);
  g_assert_true(g_file_set_contents(bad, "[director]\nuser_expire = 5s\n", -1, NULL));
  g_autoptr(GSubprocess) p = g_subprocess_new(G_SUBPROCESS_FLAGS_STDERR_PIPE, NULL, usherd_path,
                                              "-c", bad, "--check", NULL);
  g_autofree char *err = NULL;
  g_assert_true(g_subprocess_communicate_utf8(p, NULL, NULL, NULL, &err, NULL));
  g_assert_cmpint(g_subprocess_get_exit_status(p), ==, 1);
  g_assert_nonnull(strstr(err, "bad.conf: [director] user_expire: \"5s\" is below the minimum"));
  g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", dir);
  g_assert_cmpint(system(cmd), ==, 0);
}

/* ---- HTTP, state, reload, systemd (usherd in operation) ---------------------------------------------- */

/* GET path on addr ("ip:port") over HTTP/1.0 with extra header lines; returns the whole
 * response (status line, headers, body). */
static GSocketConnection *
http_connect(const char *addr)
{
  g_autoptr(GSocketClient) client = g_socket_client_new();
  g_socket_client_set_enable_proxy(client, FALSE);
  g_socket_client_set_timeout(client, WAIT_SECS);
  g_autoptr(GError) error = NULL;
  GSocketConnection *c = g_socket_client_connect_to_host(client, addr, 0, NULL, &error);
  g_assert_no_error(error);
  return c;
}

/* Sends a whole request as written; returns everything until the server closes. */
static char *
http_raw(const char *addr, const char *request)
{
  g_autoptr(GSocketConnection) c = http_connect(addr);
  GOutputStream *out = g_io_stream_get_output_stream(G_IO_STREAM(c));
  g_assert_true(g_output_stream_write_all(out, request, strlen(request), NULL, NULL, NULL));
  return read_until_closed(c);
}

static char *
http_get(const char *addr, const char *path, const char *headers)
{
  g_autofree char *req = g_strdup_printf("GET %s HTTP/1.0\r\nHost: usherd\r\n%s\r\n", path,
                                         headers != NULL ? headers : "");
  return http_raw(addr, req);
}

/* Every sample line's metric belongs to a family announced by # TYPE (with _total for
 * counters); returns the number of samples. */
static guint
check_prometheus_text(const char *text)
{
  g_autoptr(GHashTable) types = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
  g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
  guint samples = 0;
  for (guint i = 0; lines[i] != NULL; i++) {
    const char *l = lines[i];
    if (l[0] == '\0' || g_str_has_prefix(l, "# HELP "))
      continue;
    if (g_str_has_prefix(l, "# TYPE ")) {
      g_auto(GStrv) f = g_strsplit(l + 7, " ", 2);
      g_assert_true(g_strv_contains((const char *const[]){"counter", "gauge", NULL}, f[1]));
      g_assert_false(g_hash_table_contains(types, f[0]));
      g_hash_table_insert(types, g_strdup(f[0]), g_strdup(f[1]));
      continue;
    }
    gsize n = strcspn(l, "{ ");
    g_autofree char *name = g_strndup(l, n);
    const char *type = g_hash_table_lookup(types, name);
    if (type == NULL)
      g_error("metric %s has no # TYPE line", name);
    if (strcmp(type, "counter") == 0)
      g_assert_true(g_str_has_suffix(name, "_total"));
    const char *value = strrchr(l, ' ');
    g_assert_nonnull(value);
    char *end;
    g_ascii_strtod(value + 1, &end);
    g_assert_true(*end == '\0');
    samples++;
  }
  return samples;
}

static char *
header_value(const char *response, const char *name)
{
  g_autofree char *needle = g_strdup_printf("\r\n%s: ", name);
  const char *p = strstr(response, needle);
  if (p == NULL)
    return NULL;
  p += strlen(needle);
  return g_strndup(p, strcspn(p, "\r"));
}

static void
test_http(void)
{
  Ring *r = ring_new(7, 2, 2, NULL);
  wait_synced(r, 2);
  g_autofree char *metrics = http_get(r->nodes[0].http, "/metrics", NULL);
  g_assert_true(g_str_has_prefix(metrics, "HTTP/1.0 200") || g_str_has_prefix(metrics, "HTTP/1.1 200"));
  const char *body = strstr(metrics, "\r\n\r\n") + 4;
  guint samples = check_prometheus_text(body);
  g_assert_cmpuint(samples, >, 60);
  g_assert_nonnull(strstr(body, "usher_ring_synced 1\n"));
  g_assert_nonnull(strstr(body, "usher_backend_up{backend=\"127.0.2.2\",tag=\"\",hostname=\"\"} 1"));
  g_assert_nonnull(strstr(body, "usher_ring_link_bytes_in_total{peer=\"127.0.4.72:9090\""));

  /* A lookup through node 1 (JSON, for Dovecot's Lua passdb) and an nginx auth_http request
   * through node 2 place the user on the same backend: both are ring login requests. */
  g_autofree char *json = http_get(r->nodes[0].http, "/lookup?user=alice%40example.com", NULL);
  g_assert_nonnull(strstr(json, "\"user\":\"alice@example.com\""));
  const char *host = strstr(json, "\"host\":\"");
  g_assert_nonnull(host);
  g_autofree char *ip = g_strndup(host + 8, strcspn(host + 8, "\""));
  g_autofree char *nginx = http_get(r->nodes[1].http, "/nginx-auth",
                                    "Auth-Method: plain\r\nAuth-User: alice%40example.com\r\n"
                                    "Auth-Pass: secret\r\nAuth-Protocol: imap\r\n"
                                    "Auth-Login-Attempt: 1\r\nClient-IP: 127.0.0.1\r\n");
  g_autofree char *status = header_value(nginx, "Auth-Status");
  g_autofree char *server = header_value(nginx, "Auth-Server");
  g_autofree char *port = header_value(nginx, "Auth-Port");
  g_assert_cmpstr(status, ==, "OK");
  g_assert_cmpstr(server, ==, ip);
  g_assert_cmpstr(port, ==, "143");
  g_autofree char *pop3 = http_get(r->nodes[1].http, "/nginx-auth",
                                   "Auth-User: alice@example.com\r\nAuth-Protocol: pop3\r\n");
  g_autofree char *pop3_port = header_value(pop3, "Auth-Port");
  g_assert_cmpstr(pop3_port, ==, "110");
  g_autofree char *out = NULL;
  g_assert_cmpint(run_usherctl(r->nodes[1].admin, &out, "status", "alice@example.com", NULL), ==,
                  0);
  g_autofree char *current = g_strdup_printf("Current: %s ", ip);
  g_assert_nonnull(strstr(out, current));
  g_autofree char *refresh = http_get(r->nodes[0].http, "/refresh?user=alice@example.com", NULL);
  g_assert_nonnull(strstr(refresh, " 204 "));
  g_autofree char *bad = http_get(r->nodes[0].http, "/lookup", NULL);
  g_assert_nonnull(strstr(bad, " 400 "));
  g_autofree char *nouser = http_get(r->nodes[0].http, "/nginx-auth", "Auth-Protocol: imap\r\n");
  g_autofree char *nostatus = header_value(nouser, "Auth-Status");
  g_assert_cmpstr(nostatus, ==, "Invalid login or password");
  g_autofree char *missing = http_get(r->nodes[0].http, "/nothing", NULL);
  g_assert_nonnull(strstr(missing, " 404 "));
  g_assert_cmpint(stat_of(r->nodes[0].admin, "daemon", "http_bad_requests"), ==, 3);
  /* Request bodies: one too big to hold, or of a size not given, is refused before it is read;
   * a small one is fine. */
  g_autofree char *huge = http_raw(r->nodes[0].http, "POST /refresh?user=bob HTTP/1.1\r\n"
                                                     "Host: u\r\nContent-Length: 1000000000\r\n\r\n");
  g_assert_nonnull(strstr(huge, " 413 "));
  g_autofree char *chunked = http_raw(r->nodes[0].http, "POST /refresh?user=bob HTTP/1.1\r\n"
                                                        "Host: u\r\nTransfer-Encoding: chunked\r\n"
                                                        "\r\n5\r\nhello\r\n");
  g_assert_nonnull(strstr(chunked, " 413 "));
  g_autofree char *small = http_raw(r->nodes[0].http, "POST /refresh?user=bob HTTP/1.0\r\n"
                                                      "Host: u\r\nContent-Length: 5\r\n\r\nhello");
  g_assert_nonnull(strstr(small, " 204 "));
  g_assert_cmpint(stat_of(r->nodes[0].admin, "daemon", "http_bodies_refused"), ==, 2);
  /* One request per connection: two pipelined HTTP/1.1 requests get one answer, which says
   * Connection: close, and the connection is closed after it. */
  g_autofree char *two = http_raw(r->nodes[0].http, "GET /lookup HTTP/1.1\r\nHost: u\r\n\r\n"
                                                    "GET /lookup HTTP/1.1\r\nHost: u\r\n\r\n");
  g_assert_nonnull(strstr(two, "HTTP/1.1 400 "));
  g_assert_null(strstr(strstr(two, "HTTP/1.1 400 ") + 1, "HTTP/1.1 "));
  g_autofree char *closing = header_value(two, "Connection");
  g_assert_cmpstr(closing, ==, "close");
  /* usherctl stats shows what /metrics shows. */
  g_autofree char *m2 = http_get(r->nodes[0].http, "/metrics", NULL);
  gint64 lookups = stat_of(r->nodes[0].admin, "daemon", "http_lookups");
  g_autofree char *line = g_strdup_printf("usher_http_lookups_total %" G_GINT64_FORMAT "\n", lookups);
  g_assert_nonnull(strstr(m2, line));
  /* Connections: at most max_pending_lookups + 100 at once; the next is closed at once. */
  node_stop_clean(&r->nodes[1]);
  g_autofree char *conf = NULL;
  g_assert_true(g_file_get_contents(r->nodes[1].config, &conf, NULL, NULL));
  g_autofree char *limited = g_strconcat(conf, "max_pending_lookups = 1\n", NULL); /* [http] */
  g_assert_true(g_file_set_contents(r->nodes[1].config, limited, -1, NULL));
  node_start(r, 1);
  wait_synced(r, 2);
  g_autoptr(GPtrArray) held = g_ptr_array_new_with_free_func(g_object_unref);
  for (int i = 0; i < 101; i++)
    g_ptr_array_add(held, http_connect(r->nodes[1].http));
  g_autofree char *past = http_get(r->nodes[1].http, "/metrics", NULL);
  g_assert_cmpstr(past, ==, "");
  g_assert_cmpint(stat_of(r->nodes[1].admin, "daemon", "http_connections_refused"), ==, 1);
  g_ptr_array_set_size(held, 0);
  g_autofree char *again = NULL;
  for (int i = 0; i < WAIT_SECS * 10; i++) {
    g_free(again);
    again = http_get(r->nodes[1].http, "/metrics", NULL);
    if (again[0] != '\0')
      break;
    g_usleep(100000);
  }
  g_assert_true(g_str_has_prefix(again, "HTTP/1.0 200") || g_str_has_prefix(again, "HTTP/1.1 200"));
  ring_free(r);
}

static char *
host_list(const char *admin)
{
  Admin *a = admin_open(admin, FALSE);
  admin_send(a, "HOST-LIST\n");
  GString *all = g_string_new(NULL);
  char *l;
  while ((l = admin_line(a)) != NULL && l[0] != '\0') {
    g_string_append_printf(all, "%s\n", l);
    g_free(l);
  }
  g_free(l);
  admin_close(a);
  return g_string_free(all, FALSE);
}

static gint
cmp_strp(gconstpointer a, gconstpointer b)
{
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* USER-LIST of one director, merged into users (hash -> "expires\tbackend"), keeping the latest
 * expiry of each user. Returns the users as sorted text. A move reaches each director stamped
 * with its own clock's second (USER-MOVE carries no time), so directors may differ by a second
 * until a handshake, which keeps the latest. */
static char *
user_list_merge(const char *admin, GHashTable *users)
{
  Admin *a = admin_open(admin, FALSE);
  admin_send(a, "USER-LIST\n");
  char *l;
  while ((l = admin_line(a)) != NULL && l[0] != '\0') {
    g_auto(GStrv) f = g_strsplit(l, "\t", 3);
    g_assert_cmpuint(g_strv_length(f), ==, 3);
    const char *had = g_hash_table_lookup(users, f[0]);
    if (had == NULL || g_ascii_strtoll(had, NULL, 10) < g_ascii_strtoll(f[1], NULL, 10))
      g_hash_table_insert(users, g_strdup(f[0]), g_strdup_printf("%s\t%s", f[1], f[2]));
    g_free(l);
  }
  g_free(l);
  admin_close(a);
  g_autoptr(GPtrArray) lines = g_ptr_array_new_with_free_func(g_free);
  GHashTableIter it;
  gpointer k, v;
  g_hash_table_iter_init(&it, users);
  while (g_hash_table_iter_next(&it, &k, &v))
    g_ptr_array_add(lines, g_strdup_printf("%s\t%s", (char *)k, (char *)v));
  g_ptr_array_sort(lines, cmp_strp);
  g_ptr_array_add(lines, NULL);
  return g_strjoinv("\n", (char **)lines->pdata);
}

static void
test_full_ring_restart(void)
{
  Ring *r = ring_new(8, 3, 3, NULL);
  wait_synced(r, 2);
  const char *admin = r->nodes[0].admin;
  g_assert_cmpint(run_usherctl(admin, NULL, "add", "127.0.2.9@eu", "30", NULL), ==, 0);
  g_assert_cmpint(run_usherctl(r->nodes[1].admin, NULL, "down", "127.0.2.1", NULL), ==, 0);
  g_assert_cmpint(run_usherctl(r->nodes[2].admin, NULL, "update", "127.0.2.2", "7", NULL), ==, 0);
  g_assert_cmpint(run_usherctl(admin, NULL, "remove", "127.0.2.3", NULL), ==, 0);
  for (int i = 1; i <= 30; i++) {
    g_autofree char *user = g_strdup_printf("user%d", i);
    g_autofree char *ip = g_strdup_printf("127.0.2.%d", 1 + i % 2);
    g_assert_cmpint(run_usherctl(r->nodes[i % 3].admin, NULL, "move", user, ip, NULL), ==, 0);
  }
  g_usleep(1500000); /* the runtime state is written within a second of a change */
  g_autofree char *hosts_before = host_list(admin);
  g_autoptr(GHashTable) merged = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
  for (guint i = 0; i < 3; i++)
    g_free(user_list_merge(r->nodes[i].admin, merged));
  g_autofree char *users_before = user_list_merge(admin, merged);
  g_assert_cmpuint(g_hash_table_size(merged), >=, 30);
  for (guint i = 0; i < 3; i++)
    node_stop_clean(&r->nodes[i]);
  for (guint i = 0; i < 3; i++)
    node_start(r, i);
  wait_synced(r, 2);
  for (guint i = 0; i < 3; i++) {
    g_autofree char *hosts = host_list(r->nodes[i].admin);
    g_assert_cmpstr(hosts, ==, hosts_before);
    g_autoptr(GHashTable) own = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    g_autofree char *users = user_list_merge(r->nodes[i].admin, own);
    g_assert_cmpstr(users, ==, users_before);
  }
  g_assert_nonnull(strstr(hosts_before, "127.0.2.9\t30\t0\teu\tU"));
  g_assert_null(strstr(hosts_before, "127.0.2.3"));
  ring_free(r);
}

static gboolean
file_contains(const char *path, const char *needle)
{
  g_autofree char *text = NULL;
  return g_file_get_contents(path, &text, NULL, NULL) && strstr(text, needle) != NULL;
}

static gboolean
temp_file_exists(const char *dir)
{
  g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
  const char *name;
  while (d != NULL && (name = g_dir_read_name(d)) != NULL)
    if (g_str_has_prefix(name, "runtime.state.tmp."))
      return TRUE;
  return FALSE;
}

static void
test_crash_while_writing(void)
{
  Ring *r = ring_new(9, 1, 1, NULL);
  Node *n = &r->nodes[0];
  wait_synced(r, 0);
  g_autofree char *path = g_build_filename(n->state, "runtime.state", NULL);
  g_assert_cmpint(run_usherctl(n->admin, NULL, "add", "127.0.2.8", "11", NULL), ==, 0);
  for (int i = 0; i < WAIT_SECS * 10 && !file_contains(path, "backend 127.0.2.8\t\t11\t"); i++)
    g_usleep(100000);
  g_assert_true(file_contains(path, "backend 127.0.2.8\t\t11\t"));
  /* Again, with writes that stop half-way: kill -9 right then. */
  node_stop_clean(n);
  n->env = g_strdupv((char *[]){"USHERD_TEST_WRITE_PAUSE_MS=5000", NULL});
  node_start(r, 0);
  wait_synced(r, 0);
  g_assert_cmpint(run_usherctl(n->admin, NULL, "update", "127.0.2.8", "22", NULL), ==, 0);
  for (int i = 0; i < WAIT_SECS * 10 && !temp_file_exists(n->state); i++)
    g_usleep(100000);
  g_assert_true(temp_file_exists(n->state));
  node_stop(n, SIGKILL);
  /* The old state is whole; the half-written one is only a temporary file. */
  g_autofree char *text = NULL;
  g_assert_true(g_file_get_contents(path, &text, NULL, NULL));
  g_assert_true(g_str_has_suffix(text, "end\n"));
  g_assert_nonnull(strstr(text, "backend 127.0.2.8\t\t11\t"));
  g_clear_pointer(&n->env, g_strfreev);
  node_start(r, 0);
  wait_synced(r, 0);
  g_autofree char *hosts = host_list(n->admin);
  g_assert_nonnull(strstr(hosts, "127.0.2.8\t11\t"));
  /* A user snapshot cut short is refused whole, with a log line. */
  node_stop_clean(n);
  g_autofree char *snap = g_build_filename(n->state, "users.snapshot", NULL);
  g_assert_true(g_file_set_contents(snap, "usherd users snapshot 1\nwritten 1796137575\n"
                                          "617210206\t127.0.2.2\t1796137575\n", -1, NULL));
  node_start(r, 0);
  wait_synced(r, 0);
  g_autofree char *log = NULL;
  g_assert_true(g_file_get_contents(n->log, &log, NULL, NULL));
  g_assert_nonnull(strstr(log, "is incomplete"));
  /* A whole snapshot of exactly two pages: nothing reads past the mapping's end (a scanf on
   * the mapped file did, and crashed when the next page was not mapped). */
  node_stop_clean(n);
  gint64 now = g_get_real_time() / G_USEC_PER_SEC;
  GString *snapshot = g_string_new(NULL);
  g_string_append_printf(snapshot, "usherd users snapshot 1\nwritten %" G_GINT64_FORMAT "\n", now);
  guint users = 0;
  const gsize end_len = strlen("end 123\n"); /* a count of three digits, checked below */
  while (8192 - snapshot->len - end_len > 128)
    g_string_append_printf(snapshot, "%u\t127.0.2.1\t%" G_GINT64_FORMAT "\n",
                           1000000000u + users++, now);
  /* The last line fills the pages exactly: its hash has leading zeros. */
  gsize width = 8192 - snapshot->len - end_len - strlen("\t127.0.2.1\t\n") - 10;
  g_string_append_printf(snapshot, "%0*u\t127.0.2.1\t%" G_GINT64_FORMAT "\n", (int)width,
                         1000000000u + users++, now);
  g_assert_cmpuint(users, >=, 100);
  g_assert_cmpuint(users, <=, 999);
  g_string_append_printf(snapshot, "end %u\n", users);
  g_assert_cmpuint(snapshot->len, ==, 8192);
  g_assert_true(g_file_set_contents(snap, snapshot->str, (gssize)snapshot->len, NULL));
  g_string_free(snapshot, TRUE);
  node_start(r, 0);
  wait_synced(r, 0);
  g_clear_pointer(&log, g_free);
  g_assert_true(g_file_get_contents(n->log, &log, NULL, NULL));
  g_autofree char *restored = g_strdup_printf("restored %u users from", users);
  g_assert_nonnull(strstr(log, restored));
  ring_free(r);
}

static void
test_reload(void)
{
  Ring *r = ring_new(10, 1, 1, NULL);
  Node *n = &r->nodes[0];
  wait_synced(r, 0);
  /* A runtime change the file will not touch, and one it will override. */
  g_assert_cmpint(run_usherctl(n->admin, NULL, "down", "127.0.2.2", NULL), ==, 0);
  g_assert_cmpint(run_usherctl(n->admin, NULL, "update", "127.0.2.3", "9", NULL), ==, 0);
  node_write_config(r, 0, "127.0.2.1=50 127.0.2.2 127.0.2.4@eu", "[director]\nuser_expire = 20m\n",
                    NULL);
  g_subprocess_send_signal(n->proc, SIGHUP);
  g_autofree char *hosts = NULL;
  for (int i = 0; i < WAIT_SECS * 10; i++) {
    g_free(hosts);
    hosts = host_list(n->admin);
    if (strstr(hosts, "127.0.2.4") != NULL && strstr(hosts, "127.0.2.3") == NULL)
      break;
    g_usleep(100000);
  }
  g_assert_nonnull(strstr(hosts, "127.0.2.1\t50\t"));      /* changed in the file */
  g_assert_nonnull(strstr(hosts, "127.0.2.2\t100\t0\t\tD")); /* runtime change kept */
  g_assert_null(strstr(hosts, "127.0.2.3"));                /* removed from the file */
  g_assert_nonnull(strstr(hosts, "127.0.2.4\t100\t0\teu\tU")); /* added */
  g_autofree char *log = NULL;
  g_assert_true(g_file_get_contents(n->log, &log, NULL, NULL));
  g_assert_nonnull(strstr(log, "applied only by a restart: [director]user_expire"));
  /* A file that does not load changes nothing. */
  g_assert_true(g_file_set_contents(n->config, "[ring]\ndirectors = x\n", -1, NULL));
  g_subprocess_send_signal(n->proc, SIGHUP);
  g_usleep(300000);
  g_autofree char *after = host_list(n->admin);
  g_assert_cmpstr(after, ==, hosts);
  node_write_config(r, 0, "127.0.2.1=50 127.0.2.2 127.0.2.4@eu", NULL, NULL);
  /* A change the director refuses (the backend was removed at run time, the file changes its
   * vhosts): said so, and the next SIGHUP tries it again instead of taking the file as done. */
  g_assert_cmpint(run_usherctl(n->admin, NULL, "remove", "127.0.2.1", NULL), ==, 0);
  node_write_config(r, 0, "127.0.2.1=60 127.0.2.2 127.0.2.4@eu", NULL, NULL);
  const char *refused = "SIGHUP: backend 127.0.2.1's vhosts 50 -> 60 was not applied (NOTFOUND)";
  for (int round = 1; round <= 2; round++) {
    g_subprocess_send_signal(n->proc, SIGHUP);
    guint seen = 0;
    for (int i = 0; i < WAIT_SECS * 10 && seen < (guint)round; i++) {
      g_usleep(100000);
      g_clear_pointer(&log, g_free);
      g_assert_true(g_file_get_contents(n->log, &log, NULL, NULL));
      seen = 0;
      for (const char *p = strstr(log, refused); p != NULL; p = strstr(p + 1, refused))
        seen++;
    }
    g_assert_cmpuint(seen, ==, round);
  }
  ring_free(r);
}

/* Moves user1 from 127.0.2.1 to 127.0.2.2 (it is placed on .1 first): a move this director
 * starts, of a user with an old backend, runs the flush hook. */
static void
move_user1_across(const char *admin)
{
  g_assert_cmpint(run_usherctl(admin, NULL, "move", "user1", "127.0.2.1", NULL), ==, 0);
  g_usleep(300000); /* the first move (no old backend: no hook) ends after the kick delay */
  g_assert_cmpint(run_usherctl(admin, NULL, "move", "user1", "127.0.2.2", NULL), ==, 0);
}

static void
test_flush_hooks(void)
{
  Ring *r = ring_new(12, 1, 0, NULL);
  Node *n = &r->nodes[0];
  g_autofree char *script = g_build_filename(r->dir, "flush.sh", NULL);
  g_autofree char *out = g_build_filename(r->dir, "flush.out", NULL);
  g_autofree char *pidfile = g_build_filename(r->dir, "flush.pid", NULL);
  /* exec: gets FLUSH, the user's hash, old and new backend, old state and vhosts. With
   * script.hang present it starts a child, writes both pids and never ends. */
  g_autofree char *text = g_strdup_printf("#!/bin/sh\necho \"$*\" >> %s\n"
                                          "if [ -e %s.hang ]; then sleep 600 & echo $$ $! > %s.new;"
                                          " mv %s.new %s; wait; fi\n",
                                          out, script, pidfile, pidfile, pidfile);
  g_assert_true(g_file_set_contents(script, text, -1, NULL));
  g_assert_cmpint(chmod(script, 0755), ==, 0);
  g_autofree char *director = g_strdup_printf("[director]\nflush_socket = exec:%s\n"
                                              "user_kick_delay = 0\n", script);
  node_write_config(r, 0, HOSTS_DEFAULT, director, NULL);
  node_start(r, 0);
  wait_synced(r, 0);
  move_user1_across(n->admin);
  g_autofree char *got = NULL;
  for (int i = 0; i < WAIT_SECS * 10 && !g_file_get_contents(out, &got, NULL, NULL); i++)
    g_usleep(100000);
  g_assert_nonnull(got);
  g_assert_true(g_str_has_prefix(got, "FLUSH "));
  g_assert_true(g_str_has_suffix(got, " 127.0.2.1 127.0.2.2 up 100\n"));
  g_assert_cmpint(stat_of(n->admin, "daemon", "flush_hooks_run"), ==, 1);
  /* A hook that does not end in time fails the flush and is killed, not left behind. */
  g_autofree char *hang = g_strconcat(script, ".hang", NULL);
  g_assert_true(g_file_set_contents(hang, "", -1, NULL));
  g_assert_cmpint(run_usherctl(n->admin, NULL, "move", "user1", "127.0.2.1", NULL), ==, 0);
  g_autofree char *pid = NULL;
  for (int i = 0; i < WAIT_SECS * 10 && !g_file_get_contents(pidfile, &pid, NULL, NULL); i++)
    g_usleep(100000);
  g_assert_nonnull(pid);
  g_auto(GStrv) pids = g_strsplit(g_strstrip(pid), " ", 2);
  g_assert_cmpuint(g_strv_length(pids), ==, 2);
  g_autofree char *proc = g_strdup_printf("/proc/%s", pids[0]);
  g_autofree char *child = g_strdup_printf("/proc/%s/stat", pids[1]);
  g_assert_true(g_file_test(proc, G_FILE_TEST_EXISTS));
  /* USHER_FLUSH_TIMEOUT_SECS (10 s), then the kill of the hook and what it started; a zombie
   * is gone once reaped (the orphaned child's by init: its state then says Z at most). */
  for (int i = 0; i < 150 && g_file_test(proc, G_FILE_TEST_EXISTS); i++)
    g_usleep(100000);
  g_assert_false(g_file_test(proc, G_FILE_TEST_EXISTS));
  g_autofree char *stat = NULL;
  for (int i = 0; i < 20 && g_file_get_contents(child, &stat, NULL, NULL) &&
                  strstr(stat, ") Z ") == NULL;
       i++) {
    g_clear_pointer(&stat, g_free);
    g_usleep(100000);
  }
  g_assert_true(stat == NULL || strstr(stat, ") Z ") != NULL);
  g_assert_cmpint(stat_of(n->admin, "daemon", "flush_hooks_failed"), ==, 1);
  ring_free(r);
}

static void
test_notify(void)
{
  Ring *r = ring_new(11, 1, 0, NULL);
  Node *n = &r->nodes[0];
  g_autofree char *path = g_build_filename(r->dir, "notify", NULL);
  g_autoptr(GSocket) sock =
    g_socket_new(G_SOCKET_FAMILY_UNIX, G_SOCKET_TYPE_DATAGRAM, G_SOCKET_PROTOCOL_DEFAULT, NULL);
  g_autoptr(GSocketAddress) addr = g_unix_socket_address_new(path);
  g_assert_true(g_socket_bind(sock, addr, TRUE, NULL));
  g_socket_set_timeout(sock, WAIT_SECS);
  g_autofree char *env = g_strdup_printf("NOTIFY_SOCKET=%s", path);
  n->env = g_strdupv((char *[]){env, "WATCHDOG_USEC=400000", NULL});
  node_start(r, 0);
  char buf[512];
  gssize len = g_socket_receive(sock, buf, sizeof(buf) - 1, NULL, NULL);
  g_assert_cmpint(len, >, 0);
  buf[len] = '\0';
  /* Nothing before readiness: the first message says READY=1. */
  g_assert_nonnull(strstr(buf, "READY=1"));
  g_assert_nonnull(strstr(buf, "STATUS=ring synced"));
  /* The watchdog pings at half the interval. */
  len = g_socket_receive(sock, buf, sizeof(buf) - 1, NULL, NULL);
  g_assert_cmpint(len, >, 0);
  buf[len] = '\0';
  g_assert_nonnull(strstr(buf, "WATCHDOG=1"));
  ring_free(r);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  usherd_path = g_getenv("USHERD");
  usherctl_path = g_getenv("USHERCTL");
  g_assert_nonnull(usherd_path);
  g_assert_nonnull(usherctl_path);
  g_test_add_func("/daemon/ring/forms-and-reforms", test_ring_forms_and_reforms);
  g_test_add_func("/daemon/admin/pipelined", test_admin_pipelined);
  g_test_add_func("/daemon/admin/bad-clients", test_admin_bad_clients);
  g_test_add_func("/daemon/ring/strangers-and-liars", test_ring_strangers_and_liars);
  g_test_add_func("/daemon/state/restart-keeps-users", test_restart_keeps_users);
  g_test_add_func("/daemon/usherctl-and-check", test_usherctl_and_check);
  g_test_add_func("/daemon/http/metrics-and-lookups", test_http);
  g_test_add_func("/daemon/state/full-ring-restart", test_full_ring_restart);
  g_test_add_func("/daemon/state/periodic-snapshot", test_periodic_snapshot);
  g_test_add_func("/daemon/state/crash-while-writing", test_crash_while_writing);
  g_test_add_func("/daemon/reload/sighup", test_reload);
  g_test_add_func("/daemon/notify/ready-and-watchdog", test_notify);
  g_test_add_func("/daemon/flush/exec-hooks", test_flush_hooks);
  return g_test_run();
}

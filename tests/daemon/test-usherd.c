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
#include <string.h>
#include <sys/prctl.h>

#define WAIT_SECS 20

static const char *usherd_path, *usherctl_path;

/* ---- Processes ---------------------------------------------------------------------------------------- */

typedef struct {
  GSubprocess *proc;
  char *admin;
  char *log;
  char *addr;
} Node;

typedef struct {
  char *dir;
  char *config;
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
  g_autoptr(GError) error = NULL;
  n->proc = g_subprocess_launcher_spawn(l, &error, usherd_path, "-c", r->config, "--ring-address",
                                        n->addr, "--admin-socket", n->admin, NULL);
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

/* n directors 127.0.4.<block*10+1..n>; members beyond `running` are listed but not started.
 * extra: more configuration text. */
static Ring *
ring_new(guint block, guint n, guint running, const char *extra)
{
  Ring *r = g_new0(Ring, 1);
  r->dir = g_dir_make_tmp("usherd-test-XXXXXX", NULL);
  r->n = n;
  r->block = block;
  GString *members = g_string_new(NULL);
  for (guint i = 0; i < n; i++) {
    Node *node = &r->nodes[i];
    node->addr = g_strdup_printf("127.0.4.%u:9090", block * 10 + i + 1);
    node->admin = g_strdup_printf("%s/admin%u", r->dir, i + 1);
    node->log = g_strdup_printf("%s/usherd%u.log", r->dir, i + 1);
    g_string_append_printf(members, "%s ", node->addr);
  }
  g_autofree char *text = g_strdup_printf(
    "[ring]\ndirectors = %s\n[backends]\nhosts = 127.0.2.1 127.0.2.2 127.0.2.3\n"
    "[daemon]\nstate_dir = %s/state\n%s",
    members->str, r->dir, extra != NULL ? extra : "");
  g_string_free(members, TRUE);
  r->config = g_strdup_printf("%s/usher.conf", r->dir);
  g_assert_true(g_file_set_contents(r->config, text, -1, NULL));
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
  }
  g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", r->dir);
  g_assert_cmpint(system(cmd), ==, 0);
  g_free(r->dir);
  g_free(r->config);
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
  g_autofree char *text = NULL;
  g_assert_true(g_subprocess_communicate_utf8(p, NULL, NULL, &text, NULL, NULL));
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
  Ring *r = ring_new(3, 1, 1, "admin_max_clients = 3\n");
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
  g_assert_cmpint(stat_of(path, "daemon", "admin_refused"), ==, 1);
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
  g_autofree char *before = NULL, *after = NULL;
  g_assert_cmpint(run_usherctl(admin, &before, "users", NULL), ==, 0);
  node_stop_clean(&r->nodes[0]); /* a clean stop writes the snapshot */
  node_start(r, 0);
  wait_synced(r, 0);
  g_assert_cmpint(run_usherctl(admin, &after, "users", NULL), ==, 0);
  g_assert_cmpstr(after, ==, before);
  g_auto(GStrv) lines = g_strsplit(after, "\n", -1);
  g_assert_cmpuint(g_strv_length(lines), >=, 21);
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
  g_assert_cmpint(run_usherctl(admin, &out, "--json", "stats", NULL), ==, 0);
  g_assert_nonnull(strstr(out, "\"admin_commands\""));
  g_assert_cmpint(run_usherctl(admin, &out, "move", "--help", NULL), ==, 0);
  g_assert_nonnull(strstr(out, "usage: usherctl"));
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
  return g_test_run();
}

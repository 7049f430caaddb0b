/* test-admin-proto.c - Dovecot's director-admin protocol: what each request line parses to, what
 * is refused, and the replies in the shape the real director sends them (spec section 6.2, with
 * its lab lines). */
#include "libcore/admin-proto.h"
#include "libcore/config.h"

#include <string.h>

#define T0 G_GINT64_CONSTANT(1795393974)
#define SEC G_GINT64_CONSTANT(1000000)

static gboolean
parse(const char *text, UsherAdminCmd *cmd, char **error)
{
  g_autofree char *copy = g_strdup(text);
  return usher_admin_cmd_parse(copy, strlen(copy), cmd, error);
}

static void
parse_ok(const char *text, UsherAdminCmd *cmd)
{
  g_autofree char *error = NULL;
  if (!parse(text, cmd, &error))
    g_error("%s: %s", text, error);
  g_assert_null(error);
}

static void
parse_refused(const char *text, const char *fragment)
{
  g_auto(UsherAdminCmd) cmd = {0};
  g_autofree char *error = NULL;
  g_assert_false(parse(text, &cmd, &error));
  g_assert_nonnull(error);
  if (strstr(error, fragment) == NULL)
    g_error("%s: \"%s\" lacks \"%s\"", text, error, fragment);
}

static gboolean
version_ok(const char *line)
{
  return usher_admin_version_ok(line, strlen(line));
}

static void
test_parse(void)
{
  g_auto(UsherAdminCmd) c1 = {0};
  parse_ok("HOST-SET\t127.0.2.5@eu\t50", &c1);
  g_assert_cmpint(c1.type, ==, USHER_ADMIN_CMD_HOST_SET);
  g_assert_true(c1.has_ip);
  g_assert_cmpstr(c1.tag, ==, "eu");
  g_assert_cmpint(c1.vhost_count, ==, 50);

  g_auto(UsherAdminCmd) c2 = {0};
  parse_ok("HOST-SET\t::1", &c2);
  g_assert_null(c2.tag);
  g_assert_cmpint(c2.vhost_count, ==, -1);

  g_auto(UsherAdminCmd) c3 = {0};
  parse_ok("HOST-RESET-USERS\t\t25", &c3); /* doveadm's "flush all --max-parallel 25" */
  g_assert_false(c3.has_ip);
  g_assert_cmpuint(c3.max_moves, ==, 25);

  g_auto(UsherAdminCmd) c4 = {0};
  parse_ok("USER-LOOKUP\t617210206", &c4); /* a number is the hash itself */
  g_assert_true(c4.user_is_hash);
  g_assert_cmpuint(c4.hash, ==, 617210206);
  g_assert_cmpstr(c4.tag, ==, "");

  g_auto(UsherAdminCmd) c5 = {0};
  parse_ok("USER-LOOKUP\tUser1@Example.com\teu", &c5);
  g_assert_false(c5.user_is_hash);
  g_assert_cmpstr(c5.tag, ==, "eu");

  g_auto(UsherAdminCmd) c6 = {0};
  parse_ok("USER-KICK-ALT\tuser_mail\ta\001tb\tnowait", &c6); /* escaped TAB inside a field */
  g_assert_cmpstr(c6.value, ==, "a\tb");
  g_assert_true(c6.nowait);

  g_auto(UsherAdminCmd) c7 = {0};
  parse_ok("DIRECTOR-ADD\t127.0.5.9\t19190", &c7);
  g_assert_cmpuint(c7.port, ==, 19190);

  g_auto(UsherAdminCmd) c8 = {0};
  parse_ok("HOST-FLUSH", &c8);
  g_assert_false(c8.has_ip);

  g_auto(UsherAdminCmd) c9 = {0};
  parse_ok("HOST-LIST\tignored\targuments", &c9);
  g_assert_cmpint(c9.type, ==, USHER_ADMIN_CMD_HOST_LIST);

  parse_refused("", "empty command line");
  parse_refused("host-list", "unknown command");
  parse_refused("HOST-SET", "no address");
  parse_refused("HOST-SET\tmail1.example.com", "not an IP address");
  parse_refused("HOST-SET\t127.0.2.1\t-1", "not a number");
  parse_refused("HOST-UPDATE\t127.0.2.1", "no vhost count");
  parse_refused("HOST-DOWN", "not an IP address");
  parse_refused("USHER-SESSIONS\tuser1\tnot-an-ip", "not an IP address");
  parse_refused("HOST-RESET-USERS\t127.0.2.1\t0", "above 0");
  parse_refused("USER-MOVE\tuser1", "needs a user and an IP");
  parse_refused("USER-KICK", "no user");
  parse_refused("USER-KICK-ALT\tfield", "needs a field and a value");
  parse_refused("DIRECTOR-ADD\t127.0.5.9\t65536", "not a port");
  parse_refused("DIRECTOR-REMOVE\t127.0.5.9\t0", "not a port");

  g_assert_true(version_ok("VERSION\tdirector-doveadm\t1\t0"));
  g_assert_true(version_ok("VERSION\tdirector-doveadm\t1\t12"));
  g_assert_false(version_ok("VERSION\tdirector-doveadm\t2\t0"));
  g_assert_false(version_ok("VERSION\tdoveadm-server\t1\t0"));
  g_assert_false(version_ok("VERSION\tdirector-doveadm\t1\t"));
}

/* ---- Replies -------------------------------------------------------------------------------------- */

typedef struct {
  UsherDirector *d;
  UsherNow now;
  guint64 op;
} Fixture;

static void
fixture_init(Fixture *f, const char *text)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(UsherConfig) config = usher_config_parse(text, strlen(text), "t.conf", &error);
  g_assert_no_error(error);
  UsherRingAddr self = {.ip = {.family = USHER_IP_V4, .addr = {127, 0, 5, 1}}, .port = 19190};
  f->now = (UsherNow){10 * SEC, T0 * SEC};
  f->d = usher_director_new(config, &self, 1, f->now, &error);
  g_assert_no_error(error);
  usher_director_start(f->d, f->now);
  g_array_unref(usher_director_take_effects(f->d));
}

/* Runs a request; returns its reply, from the GString or from the ADMIN_REPLY effect. */
static char *
run(Fixture *f, const char *text)
{
  g_auto(UsherAdminCmd) cmd = {0};
  parse_ok(text, &cmd);
  g_autoptr(GString) out = g_string_new(NULL);
  guint64 op = ++f->op;
  UsherAdminRunResult r = usher_admin_cmd_run(f->d, f->now, op, &cmd, out);
  g_autoptr(GArray) effects = usher_director_take_effects(f->d);
  for (guint i = 0; i < effects->len; i++) {
    UsherEffect *e = &g_array_index(effects, UsherEffect, i);
    if (e->type == USHER_EFFECT_ADMIN_REPLY && e->admin.op == op) {
      g_assert_cmpint(r, ==, USHER_ADMIN_RUN_PENDING);
      g_string_append(out, e->admin.text);
    }
    if (e->type == USHER_EFFECT_KICK)
      usher_director_kick_done(f->d, f->now, e->kick.id);
  }
  return g_string_free(g_steal_pointer(&out), FALSE);
}

static void
test_replies(void)
{
  Fixture f = {0};
  /* Standalone: changes are answered at once, as Dovecot does when alone. */
  fixture_init(&f, "[backends]\nhosts = 127.0.2.1 127.0.2.2 127.0.2.3\n");
  g_autofree char *down = run(&f, "HOST-DOWN\t127.0.2.2");
  g_assert_cmpstr(down, ==, "OK\n");
  g_autofree char *list = run(&f, "HOST-LIST");
  /* [lab] "127.0.2.2\t100\t2\t\tD\t1795393918" (user count 0 here) */
  g_assert_cmpstr(list, ==,
                  "127.0.2.1\t100\t0\t\tU\t0\n"
                  "127.0.2.2\t100\t0\t\tD\t1795393974\n"
                  "127.0.2.3\t100\t0\t\tU\t0\n\n");
  g_autofree char *up = run(&f, "HOST-UP\t127.0.2.2");
  g_assert_cmpstr(up, ==, "OK\n");
  g_autofree char *same = run(&f, "HOST-UP\t127.0.2.2"); /* already up: OK at once */
  g_assert_cmpstr(same, ==, "OK\n");
  g_autofree char *nf = run(&f, "HOST-DOWN\t127.0.2.9");
  g_assert_cmpstr(nf, ==, "NOTFOUND\n");
  g_autofree char *big = run(&f, "HOST-SET\t127.0.2.4\t1001");
  g_assert_cmpstr(big, ==, "vhost count too large\n");

  /* USER-LOOKUP of a user nobody has placed: "\t0\t<hashed>\t<initial>" ([lab] shape). */
  g_autofree char *unknown = run(&f, "USER-LOOKUP\tuser1");
  g_assert_true(g_str_has_prefix(unknown, "\t0\t127.0.2."));
  g_auto(GStrv) parts = g_strsplit(unknown, "\t", -1);
  g_assert_cmpuint(g_strv_length(parts), ==, 4);
  /* Move it and look again: current and expiry (timestamp + 900 s). */
  g_autofree char *move = run(&f, "USER-MOVE\tuser1\t127.0.2.3");
  g_assert_cmpstr(move, ==, "OK\n");
  g_autofree char *known = run(&f, "USER-LOOKUP\tuser1");
  g_autofree char *expect_prefix = g_strdup_printf("127.0.2.3\t%" G_GINT64_FORMAT "\t", T0 + 900);
  g_assert_true(g_str_has_prefix(known, expect_prefix));
  /* The same user by its hash (617210206 is user1's %Lu hash, spec 1.3). */
  g_autofree char *by_hash = run(&f, "USER-LOOKUP\t617210206");
  g_assert_cmpstr(by_hash, ==, known);
  g_autofree char *users = run(&f, "USER-LIST");
  g_autofree char *expect_users =
    g_strdup_printf("617210206\t%" G_GINT64_FORMAT "\t127.0.2.3\n\n", T0 + 900);
  g_assert_cmpstr(users, ==, expect_users);
  g_autofree char *users_other = run(&f, "USER-LIST\t127.0.2.1");
  g_assert_cmpstr(users_other, ==, "\n");

  g_autofree char *removed = run(&f, "HOST-REMOVE\t127.0.2.3");
  g_assert_cmpstr(removed, ==, "OK\n");
  g_autofree char *removed_list = run(&f, "HOST-LIST-REMOVED");
  g_assert_cmpstr(removed_list, ==, "127.0.2.3\n\n");

  /* DIRECTOR-LIST of a standalone director ([lab] "127.0.5.1\t19190\tself\t0\tring synced\t0"). */
  usher_director_free(f.d);
  fixture_init(&f, "[ring]\ndirectors = 127.0.5.1:19190\n[backends]\nhosts = 127.0.2.1\n");
  g_autofree char *directors = run(&f, "DIRECTOR-LIST");
  g_assert_cmpstr(directors, ==, "127.0.5.1\t19190\tself\t0\tring synced\t0\n\n");
  g_autofree char *kick = run(&f, "USER-KICK\tuser1");
  g_assert_cmpstr(kick, ==, "OK\n");
  g_autofree char *tags = run(&f, "HOST-SET\t127.0.2.7@e\001tu\t10"); /* a TAB in a tag */
  g_assert_cmpstr(tags, ==, "OK\n");
  g_autofree char *tag_list = run(&f, "HOST-LIST");
  g_assert_nonnull(strstr(tag_list, "127.0.2.7\t10\t0\te\001tu\tU\t0\n")); /* escaped again */
  g_auto(UsherAdminCmd) stats = {0};
  parse_ok("USHER-STATS", &stats);
  g_autoptr(GString) out = g_string_new(NULL);
  g_assert_cmpint(usher_admin_cmd_run(f.d, f.now, 99, &stats, out), ==,
                  USHER_ADMIN_RUN_EXTENSION);
  usher_director_free(f.d);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/core/admin-proto/parse", test_parse);
  g_test_add_func("/core/admin-proto/replies", test_replies);
  return g_test_run();
}

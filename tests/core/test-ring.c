/* test-ring.c - whole rings of real directors over the in-memory harness. */
#include "ring-harness.h"

#include <string.h>

#define SEC G_GINT64_CONSTANT(1000000)
#define BACKENDS "127.0.2.1,127.0.2.2,127.0.2.3"

static void
assert_ring(Harness *h)
{
  g_assert_true(harness_ring_formed(h));
  g_assert_true(harness_converged(h));
}

static void
form(guint n)
{
  Harness *h = harness_new(n, BACKENDS, NULL);
  harness_start_all(h);
  g_assert_true(harness_run_until_synced(h, 120 * SEC));
  assert_ring(h);
  for (guint i = 0; i < n; i++) {
    g_assert_true(usher_director_is_ring_handshaked(harness_node(h, i)));
    g_assert_cmpuint(usher_director_get_ring_min_version(harness_node(h, i)), ==, 9);
    g_assert_cmpuint(usher_director_get_stats(harness_node(h, i))->protocol_errors, ==, 0);
  }
  /* Stays formed and quiet: pings keep the links up. */
  harness_run(h, 300 * SEC);
  assert_ring(h);
  g_test_message("ring of %u formed with %u warnings", n, harness_count_warnings(h));
  harness_free(h);
}

static void
test_form_3(void)
{
  form(3);
}

static void
test_form_5(void)
{
  form(5);
}

static void
test_form_2(void)
{
  form(2);
}

static void
test_standalone(void)
{
  Harness *h = harness_new(1, BACKENDS, NULL);
  harness_start_all(h);
  g_assert_true(harness_run_until_synced(h, 5 * SEC));
  guint64 r = harness_login(h, 0, "user1", NULL);
  const HarnessLogin *res = harness_login_result(h, r);
  g_assert_true(res->answered);
  g_assert_cmpstr(res->host, ==, "127.0.2.2");
  harness_free(h);
}

/* A user placed through one director gets the same backend through every other. */
static void
test_users_agree(void)
{
  Harness *h = harness_new(5, BACKENDS, NULL);
  harness_start_all(h);
  g_assert_true(harness_run_until_synced(h, 120 * SEC));
  guint64 req[200];
  for (guint u = 0; u < 200; u++) {
    g_autofree char *name = g_strdup_printf("user%u", u + 1);
    req[u] = harness_login(h, u % 5, name, NULL);
  }
  harness_run(h, 2 * SEC);
  for (guint u = 0; u < 200; u++) {
    const HarnessLogin *r = harness_login_result(h, req[u]);
    g_assert_true(r->answered);
    g_assert_cmpint(r->status, ==, USHER_LOGIN_OK);
    g_autofree char *name = g_strdup_printf("user%u", u + 1);
    for (guint i = 0; i < 5; i++) {
      const char *host = harness_user_host(h, i, name);
      g_assert_nonnull(host);
      g_assert_cmpstr(host, ==, r->host);
    }
    /* And a second login through another director answers the same at once. */
    guint64 again = harness_login(h, (u + 2) % 5, name, NULL);
    const HarnessLogin *r2 = harness_login_result(h, again);
    g_assert_true(r2->answered);
    g_assert_cmpstr(r2->host, ==, r->host);
  }
  /* user1 is placed as Dovecot places it. */
  g_assert_cmpstr(harness_login_result(h, req[0])->host, ==, "127.0.2.2");
  harness_run(h, 2 * SEC);
  assert_ring(h);
  harness_free(h);
}

/* The same inputs give the same bytes on the wire, every time. */
static GString *
deterministic_run(void)
{
  Harness *h = harness_new(4, BACKENDS, NULL);
  harness_record(h, TRUE);
  harness_start_all(h);
  g_assert_true(harness_run_until_synced(h, 120 * SEC));
  for (guint u = 0; u < 50; u++) {
    g_autofree char *name = g_strdup_printf("user%u", u);
    harness_login(h, u % 4, name, NULL);
  }
  harness_run(h, 30 * SEC);
  harness_crash(h, 2);
  harness_run(h, 70 * SEC);
  harness_restart(h, 2);
  g_assert_true(harness_run_until_synced(h, 120 * SEC));
  GString *out = g_string_new(harness_transcript(h)->str);
  harness_free(h);
  return out;
}

static void
test_deterministic(void)
{
  GString *a = deterministic_run();
  GString *b = deterministic_run();
  g_assert_cmpuint(a->len, >, 1000);
  g_assert_true(g_string_equal(a, b));
  g_string_free(a, TRUE);
  g_string_free(b, TRUE);
}

/* A director crashes (state lost) and rejoins: it receives the full state. */
static void
test_crash_rejoin(void)
{
  Harness *h = harness_new(3, BACKENDS, NULL);
  harness_start_all(h);
  g_assert_true(harness_run_until_synced(h, 120 * SEC));
  for (guint u = 0; u < 300; u++) {
    g_autofree char *name = g_strdup_printf("user%u", u);
    harness_login(h, 0, name, NULL);
  }
  harness_run(h, 2 * SEC);
  assert_ring(h);
  harness_crash(h, 1);
  /* The other two close the ring around the gap. */
  g_assert_true(harness_run_until_synced(h, 120 * SEC));
  g_assert_true(harness_ring_formed(h));
  harness_restart(h, 1);
  g_assert_true(harness_run_until_synced(h, 180 * SEC));
  assert_ring(h);
  g_assert_cmpstr(harness_user_host(h, 1, "user7"), ==, harness_user_host(h, 0, "user7"));
  UsherHostTable *t = usher_director_get_hosts(harness_node(h, 1));
  g_assert_cmpuint(usher_user_dir_count(usher_host_table_find_tag(t, "")->users), ==, 300);
  harness_free(h);
}

/* A restarted director rejoins without a lost SYNC: its left neighbour, which has no right while
 * it reconnects to the newcomer, holds both its right's and the newcomer's SYNCs and forwards
 * both. Holding only the latest lost the other, and its origin waited 5 s for the resend. */
static void
test_rejoin_no_lost_sync(void)
{
  Harness *h = harness_new(3, BACKENDS, NULL);
  harness_start_all(h);
  g_assert_true(harness_run_until_synced(h, 120 * SEC));
  harness_crash(h, 1);
  g_assert_true(harness_run_until_synced(h, 120 * SEC));
  harness_run(h, 60 * SEC);
  guint64 resends[3] = {0};
  for (guint i = 0; i < 3; i += 2)
    resends[i] = usher_director_get_stats(harness_node(h, i))->sync_resends;
  harness_restart(h, 1);
  g_assert_true(harness_run_until_synced(h, SEC));
  assert_ring(h);
  harness_run(h, 10 * SEC);
  for (guint i = 0; i < 3; i += 2)
    g_assert_cmpuint(usher_director_get_stats(harness_node(h, i))->sync_resends, ==, resends[i]);
  harness_free(h);
}

/* 100k users cross in one handshake, in bounded batches. Over a link of bytes_per_sec (0:
 * unlimited) the user stream waits for the link's queue to drain. */
static gint64
large_handshake(guint64 bytes_per_sec)
{
  Harness *h = harness_new(2, BACKENDS, NULL);
  harness_set_bandwidth(h, bytes_per_sec);
  harness_start(h, 0);
  g_assert_true(harness_run_until_synced(h, 60 * SEC));
  /* 100,000 users; 10,000 under valgrind (USHER_TEST_SMALL), which is 50 times slower. */
  guint n_users = g_getenv("USHER_TEST_SMALL") != NULL ? 10000 : 100000;
  for (guint u = 0; u < n_users; u++) {
    char name[32];
    g_snprintf(name, sizeof(name), "u%u@example.com", u);
    usher_director_login_request(harness_node(h, 0), harness_now(h), u + 1000000, name, NULL);
  }
  /* Alone: the answers are the only effects, and nobody waits for them. */
  g_array_unref(usher_director_take_effects(harness_node(h, 0)));
  gint64 start_us = harness_now_us(h);
  harness_start(h, 1);
  g_assert_true(harness_run_until_synced(h, 120 * SEC));
  assert_ring(h);
  const UsherDirectorStats *st = usher_director_get_stats(harness_node(h, 0));
  g_test_message("handshake of %u users in %" G_GINT64_FORMAT " ms, %" G_GUINT64_FORMAT
                 " pauses", n_users, (harness_now_us(h) - start_us) / 1000, st->handshake_pauses);
  gint64 took_us = harness_now_us(h) - start_us;
  /* 100,000 names give a couple of 32-bit hash collisions, which share one entry. */
  UsherHostTable *t0 = usher_director_get_hosts(harness_node(h, 0));
  UsherHostTable *t1 = usher_director_get_hosts(harness_node(h, 1));
  guint n0 = usher_user_dir_count(usher_host_table_find_tag(t0, "")->users);
  g_assert_cmpuint(n0, >, n_users - 10);
  g_assert_cmpuint(usher_user_dir_count(usher_host_table_find_tag(t1, "")->users), ==, n0);
  harness_free(h);
  return took_us;
}

static void
test_large_handshake(void)
{
  (void)large_handshake(0);
}

/* At 1 MiB/s the user stream (about 33 bytes a user) waits for the link's queue: the handshake
 * takes longer by the transmission time. */
static void
test_large_handshake_slow_link(void)
{
  guint64 bytes_per_sec = 1024 * 1024;
  guint n_users = g_getenv("USHER_TEST_SMALL") != NULL ? 10000 : 100000;
  gint64 fast_us = large_handshake(0), slow_us = large_handshake(bytes_per_sec);
  g_assert_cmpint(slow_us - fast_us, >=,
                  (gint64)(n_users * G_GUINT64_CONSTANT(30) * 1000000 / bytes_per_sec));
}

/* The ring splits into two arcs; each side serves; they diverge and merge back. */
static void
test_split_merge(void)
{
  Harness *h = harness_new(4, BACKENDS, NULL);
  harness_start_all(h);
  g_assert_true(harness_run_until_synced(h, 120 * SEC));
  /* Nodes 0,1 | 2,3: links between the arcs reset. */
  harness_partition(h, 0x3, 0xc, TRUE);
  g_assert_true(harness_run_until_synced(h, 120 * SEC));
  /* Both sides serve new users. */
  guint64 a = harness_login(h, 0, "split-a", NULL);
  guint64 b = harness_login(h, 3, "split-b", NULL);
  harness_run(h, 2 * SEC);
  g_assert_true(harness_login_result(h, a)->answered);
  g_assert_true(harness_login_result(h, b)->answered);
  g_assert_null(harness_user_host(h, 3, "split-a"));
  harness_heal(h);
  g_assert_true(harness_run_until_synced(h, 180 * SEC));
  harness_run(h, 60 * SEC);
  assert_ring(h);
  g_assert_cmpstr(harness_user_host(h, 3, "split-a"), ==, harness_login_result(h, a)->host);
  g_assert_cmpstr(harness_user_host(h, 0, "split-b"), ==, harness_login_result(h, b)->host);
  harness_free(h);
}

/* ---- Admin operations propagate ---------------------------------------------------------------- */

static Harness *
synced_ring(guint n)
{
  Harness *h = harness_new(n, BACKENDS, NULL);
  harness_start_all(h);
  g_assert_true(harness_run_until_synced(h, 120 * SEC));
  return h;
}

static UsherHost *
host_of(Harness *h, guint i, const char *ip)
{
  UsherIp a = harness_ip(ip);
  return usher_host_table_lookup(usher_director_get_hosts(harness_node(h, i)), &a);
}

/* Changing vhosts on one director reaches every director; new users then land exactly where the
 * real Dovecot ring puts them with vhosts 50/100/200 (tests/data, table 2). */
static void
test_vhost_change(void)
{
  Harness *h = synced_ring(3);
  UsherIp a = harness_ip("127.0.2.1"), c = harness_ip("127.0.2.3");
  guint64 op1 = harness_new_op(h), op2 = harness_new_op(h);
  usher_director_admin_host_update(harness_node(h, 0), harness_now(h), op1, &a, 50);
  usher_director_admin_host_set(harness_node(h, 2), harness_now(h), op2, &c, NULL, 200);
  harness_drain(h, 0);
  harness_drain(h, 2);
  g_assert_null(harness_admin_reply(h, op1)); /* waits for the ring */
  g_assert_true(harness_run_until_synced(h, 60 * SEC));
  harness_run(h, SEC);
  g_assert_cmpstr(harness_admin_reply(h, op1), ==, "OK");
  g_assert_cmpstr(harness_admin_reply(h, op2), ==, "OK");
  for (guint i = 0; i < 3; i++) {
    g_assert_cmpuint(host_of(h, i, "127.0.2.1")->vhost_count, ==, 50);
    g_assert_cmpuint(host_of(h, i, "127.0.2.3")->vhost_count, ==, 200);
  }
  g_assert_true(harness_converged(h));
  /* Dovecot's table 2 (tests/data): user1 -> .2, user6 -> .3, user17 -> .1. */
  static const char *const want[][2] = {
    {"user1", "127.0.2.2"}, {"user6", "127.0.2.3"}, {"user17", "127.0.2.1"}};
  for (guint k = 0; k < G_N_ELEMENTS(want); k++)
    g_assert_cmpstr(harness_login_now(h, k % 3, want[k][0]), ==, want[k][1]);
  /* Limits and errors, answered as Dovecot answers them. */
  guint64 bad = harness_new_op(h);
  usher_director_admin_host_update(harness_node(h, 1), harness_now(h), bad, &a, 1001);
  harness_run(h, SEC);
  g_assert_cmpstr(harness_admin_reply(h, bad), ==, "vhost count too large");
  UsherIp nope = harness_ip("127.0.9.9");
  bad = harness_new_op(h);
  usher_director_admin_host_update(harness_node(h, 1), harness_now(h), bad, &nope, 5);
  harness_run(h, SEC);
  g_assert_cmpstr(harness_admin_reply(h, bad), ==, "NOTFOUND");
  bad = harness_new_op(h);
  usher_director_admin_host_set(harness_node(h, 1), harness_now(h), bad, &a, "other", 5);
  harness_run(h, SEC);
  g_assert_cmpstr(harness_admin_reply(h, bad), ==, "host tag can't be changed");
  harness_free(h);
}

/* Two directors add the same new backend with different tags at the same time. Each sees the
 * other's HOST while its own is still going round: both must settle on one tag (the lower name)
 * and stop, not swap tags and flood the swap back for ever. */
static void
test_tag_conflict_settles(void)
{
  Harness *h = synced_ring(3);
  UsherIp n = harness_ip("127.0.2.9");
  guint64 op1 = harness_new_op(h), op2 = harness_new_op(h);
  usher_director_admin_host_set(harness_node(h, 0), harness_now(h), op1, &n, "blue", 100);
  usher_director_admin_host_set(harness_node(h, 2), harness_now(h), op2, &n, "amber", 100);
  harness_drain(h, 0);
  harness_drain(h, 2);
  g_assert_true(harness_run_until_synced(h, 60 * SEC));
  harness_run(h, 5 * SEC);
  for (guint i = 0; i < 3; i++)
    g_assert_cmpstr(host_of(h, i, "127.0.2.9")->tag->name, ==, "amber");
  g_assert_true(harness_converged(h));
  /* Quiet now: 10 s more carry pings and nothing else. */
  guint64 before = 0, after = 0;
  for (guint i = 0; i < 3; i++)
    before += usher_director_get_stats(harness_node(h, i))->lines_out;
  harness_run(h, 10 * SEC);
  for (guint i = 0; i < 3; i++)
    after += usher_director_get_stats(harness_node(h, i))->lines_out;
  g_assert_cmpuint(after - before, <, 200);
  harness_free(h);
}

static void
test_down_up_remove_flush(void)
{
  Harness *h = synced_ring(3);
  /* user1 lives on .2 (Dovecot's answer). */
  g_assert_cmpstr(harness_login_now(h, 0, "user1"), ==, "127.0.2.2");
  UsherIp b = harness_ip("127.0.2.2");
  guint64 op = harness_new_op(h);
  usher_director_admin_host_set_down(harness_node(h, 1), harness_now(h), op, &b, TRUE);
  g_assert_true(harness_run_until_synced(h, 60 * SEC));
  harness_run(h, SEC);
  g_assert_cmpstr(harness_admin_reply(h, op), ==, "OK");
  for (guint i = 0; i < 3; i++)
    g_assert_true(host_of(h, i, "127.0.2.2")->down);
  /* Existing users stay on a down host; new users avoid it (user5 -> .3, as in Dovecot). */
  g_assert_cmpstr(harness_login_now(h, 2, "user1"), ==, "127.0.2.2");
  g_assert_cmpstr(harness_login_now(h, 2, "user5"), ==, "127.0.2.3");
  op = harness_new_op(h);
  usher_director_admin_host_set_down(harness_node(h, 2), harness_now(h), op, &b, FALSE);
  harness_run(h, 5 * SEC);
  g_assert_cmpstr(harness_admin_reply(h, op), ==, "OK");
  for (guint i = 0; i < 3; i++)
    g_assert_false(host_of(h, i, "127.0.2.2")->down);
  /* Flush (-F): the user entries go everywhere, the host stays. */
  op = harness_new_op(h);
  usher_director_admin_host_flush(harness_node(h, 0), harness_now(h), op, &b);
  harness_run(h, 5 * SEC);
  g_assert_cmpstr(harness_admin_reply(h, op), ==, "OK");
  for (guint i = 0; i < 3; i++) {
    g_assert_null(harness_user_host(h, i, "user1"));
    g_assert_nonnull(host_of(h, i, "127.0.2.2"));
  }
  /* Remove: the host and its users go everywhere. */
  g_assert_cmpstr(harness_login_now(h, 0, "user1"), ==, "127.0.2.2");
  op = harness_new_op(h);
  usher_director_admin_host_remove(harness_node(h, 2), harness_now(h), op, &b);
  harness_run(h, 5 * SEC);
  g_assert_cmpstr(harness_admin_reply(h, op), ==, "OK");
  for (guint i = 0; i < 3; i++) {
    g_assert_null(host_of(h, i, "127.0.2.2"));
    g_assert_null(harness_user_host(h, i, "user1"));
  }
  g_assert_cmpstr(harness_login_now(h, 1, "user1"), ==, "127.0.2.3");
  g_assert_true(harness_converged(h));
  harness_free(h);
}

/* A move kicks the user on every director, holds its logins until the move is done, and leaves
 * every director agreeing on the new backend. */
static void
test_move_and_kick(void)
{
  Harness *h = synced_ring(3);
  g_assert_cmpstr(harness_login_now(h, 0, "user1"), ==, "127.0.2.2");
  UsherIp c = harness_ip("127.0.2.3");
  guint32 hash = usher_director_user_hash(harness_node(h, 1), "user1");
  guint64 kicks_before[3];
  for (guint i = 0; i < 3; i++)
    kicks_before[i] = harness_kicks(h, i);
  guint64 op = harness_new_op(h);
  usher_director_admin_user_move(harness_node(h, 1), harness_now(h), op, hash, &c);
  harness_drain(h, 1);
  g_assert_cmpstr(harness_admin_reply(h, op), ==, "OK");
  /* A login during the move waits. */
  harness_run(h, SEC / 100);
  guint64 r = harness_login(h, 2, "user1", NULL);
  g_assert_false(harness_login_result(h, r)->answered);
  op = harness_new_op(h);
  usher_director_admin_user_move(harness_node(h, 0), harness_now(h), op, hash, &c);
  harness_drain(h, 0);
  g_assert_cmpstr(harness_admin_reply(h, op), ==, "TRYAGAIN");
  harness_run(h, 5 * SEC);
  const HarnessLogin *res = harness_login_result(h, r);
  g_assert_true(res->answered);
  g_assert_cmpstr(res->host, ==, "127.0.2.3");
  for (guint i = 0; i < 3; i++) {
    g_assert_cmpstr(harness_user_host(h, i, "user1"), ==, "127.0.2.3");
    g_assert_cmpuint(harness_kicks(h, i), >, kicks_before[i]);
    g_assert_cmpuint(usher_director_count_moving_users(harness_node(h, i)), ==, 0);
    g_assert_cmpuint(usher_director_get_stats(harness_node(h, i))->moves_timed_out, ==, 0);
  }
  /* Kick by name reaches every director. */
  for (guint i = 0; i < 3; i++)
    kicks_before[i] = harness_kicks(h, i);
  op = harness_new_op(h);
  usher_director_admin_user_kick(harness_node(h, 2), harness_now(h), op, NULL, "user1", FALSE);
  harness_run(h, SEC);
  g_assert_cmpstr(harness_admin_reply(h, op), ==, "OK");
  for (guint i = 0; i < 3; i++)
    g_assert_cmpuint(harness_kicks(h, i), ==, kicks_before[i] + 1);
  harness_free(h);
}

/* doveadm director flush: users whose hashed backend changed are moved, with kicks. */
static void
test_reset_users(void)
{
  Harness *h = synced_ring(3);
  for (guint u = 1; u <= 60; u++) {
    g_autofree char *name = g_strdup_printf("user%u", u);
    (void)harness_login_now(h, u % 3, name);
  }
  UsherIp c = harness_ip("127.0.2.3");
  guint64 op = harness_new_op(h);
  usher_director_admin_host_update(harness_node(h, 0), harness_now(h), op, &c, 0);
  harness_run(h, 5 * SEC);
  g_assert_cmpstr(harness_admin_reply(h, op), ==, "OK");
  guint on_c = host_of(h, 0, "127.0.2.3")->user_count;
  g_assert_cmpuint(on_c, >, 0);
  op = harness_new_op(h);
  usher_director_admin_host_reset_users(harness_node(h, 1), harness_now(h), op, &c, 5);
  harness_run(h, 60 * SEC);
  g_assert_cmpstr(harness_admin_reply(h, op), ==, "OK");
  for (guint i = 0; i < 3; i++) {
    g_assert_cmpuint(host_of(h, i, "127.0.2.3")->user_count, ==, 0);
    g_assert_cmpuint(usher_director_count_moving_users(harness_node(h, i)), ==, 0);
    g_assert_cmpuint(usher_director_get_stats(harness_node(h, i))->moves_timed_out, ==, 0);
  }
  g_assert_cmpuint(usher_director_get_stats(harness_node(h, 1))->moves_started, >=, on_c);
  g_assert_true(harness_converged(h));
  harness_free(h);
}

/* A director removed by the admin leaves the ring; the others close it without him. */
static void
test_director_remove(void)
{
  Harness *h = synced_ring(4);
  UsherIp d3 = harness_ip("127.0.1.4");
  guint64 op = harness_new_op(h);
  usher_director_admin_director_remove(harness_node(h, 0), harness_now(h), op, &d3, 9090);
  harness_run(h, 20 * SEC);
  g_assert_cmpstr(harness_admin_reply(h, op), ==, "OK");
  /* 0 -> 1 -> 2 -> 0 */
  const UsherRingAddr *r = usher_director_get_right(harness_node(h, 2));
  g_assert_nonnull(r);
  UsherIp d0 = harness_ip("127.0.1.1");
  g_assert_true(usher_ip_equal(&r->ip, &d0));
  for (guint i = 0; i < 3; i++)
    g_assert_true(usher_director_is_ring_synced(harness_node(h, i)));
  harness_free(h);
}

/* Split brain: each arc changes on its own; after the merge every director agrees again and a
 * user that was placed on two backends ends on the lower IP (Dovecot's rule). */
static void
test_split_diverge_merge(void)
{
  Harness *h = synced_ring(4);
  harness_partition(h, 0x3, 0xc, TRUE);
  g_assert_true(harness_run_until_synced(h, 120 * SEC));
  /* Side A takes .2 down, so user1 (hashed to .2) goes to .3 there; side B keeps .2. */
  UsherIp b = harness_ip("127.0.2.2");
  guint64 op = harness_new_op(h);
  usher_director_admin_host_set_down(harness_node(h, 0), harness_now(h), op, &b, TRUE);
  harness_run(h, 5 * SEC);
  g_assert_cmpstr(harness_admin_reply(h, op), ==, "OK");
  g_assert_cmpstr(harness_login_now(h, 1, "user1"), ==, "127.0.2.3");
  g_assert_cmpstr(harness_login_now(h, 2, "user1"), ==, "127.0.2.2");
  harness_heal(h);
  g_assert_true(harness_run_until_synced(h, 180 * SEC));
  harness_run(h, 120 * SEC);
  g_assert_true(harness_converged(h));
  g_assert_true(harness_ring_formed(h));
  /* The lower IP wins the user conflict. */
  for (guint i = 0; i < 4; i++)
    g_assert_cmpstr(harness_user_host(h, i, "user1"), ==, "127.0.2.2");
  guint64 conflicts = 0, lines = 0;
  for (guint i = 0; i < 4; i++) {
    conflicts += usher_director_get_stats(harness_node(h, i))->user_conflicts;
    lines += usher_director_get_stats(harness_node(h, i))->lines_out;
  }
  g_assert_cmpuint(conflicts, >, 0);
  /* The merge settles: no storm of re-flooded hosts (a tie used to flip a host forever). */
  g_test_message("%" G_GUINT64_FORMAT " lines sent in all", lines);
  g_assert_cmpuint(lines, <, 5000);
  harness_free(h);
}

/* A director that goes silent (a hung network, not a reset) is detected by the PING timeouts and
 * the others reform the ring; once the network heals it comes back. */
static void
test_silent_partition(void)
{
  Harness *h = synced_ring(3);
  harness_partition(h, 0x4, 0x3, FALSE);
  /* Within the PONG timeout (60 s) plus a reconnect the two others form a ring. */
  harness_run(h, 90 * SEC);
  const UsherRingAddr *r0 = usher_director_get_right(harness_node(h, 0));
  const UsherRingAddr *r1 = usher_director_get_right(harness_node(h, 1));
  UsherIp d0 = harness_ip("127.0.1.1"), d1 = harness_ip("127.0.1.2");
  g_assert_nonnull(r0);
  g_assert_nonnull(r1);
  g_assert_true(usher_ip_equal(&r0->ip, &d1));
  g_assert_true(usher_ip_equal(&r1->ip, &d0));
  g_assert_true(usher_director_is_ring_synced(harness_node(h, 0)));
  harness_heal(h);
  g_assert_true(harness_run_until_synced(h, 240 * SEC));
  harness_run(h, 120 * SEC);
  g_assert_true(harness_ring_formed(h));
  g_assert_true(harness_converged(h));
  harness_free(h);
}

/* Every wait is bounded: with no usable backend a login fails (temporarily) after 30 s. */
static void
test_login_timeout(void)
{
  Harness *h = harness_new(2, "127.0.2.1=0", NULL);
  harness_start_all(h);
  g_assert_true(harness_run_until_synced(h, 60 * SEC));
  guint64 r = harness_login(h, 0, "user1", NULL);
  harness_run(h, 29 * SEC);
  g_assert_false(harness_login_result(h, r)->answered);
  harness_run(h, 2 * SEC);
  const HarnessLogin *res = harness_login_result(h, r);
  g_assert_true(res->answered);
  g_assert_cmpint(res->status, ==, USHER_LOGIN_TEMPFAIL);
  g_assert_cmpuint(usher_director_count_pending_requests(harness_node(h, 0)), ==, 0);
  harness_free(h);
}

/* Before the ring was ever handshaked every login waits; a director that finds nobody declares
 * itself alone after the grace period and then answers. */
static void
test_login_waits_for_handshake(void)
{
  Harness *h = harness_new(3, BACKENDS, NULL);
  harness_start(h, 0);
  guint64 r = harness_login(h, 0, "user1", NULL);
  harness_run(h, 10 * SEC);
  g_assert_false(harness_login_result(h, r)->answered);
  harness_run(h, 15 * SEC);
  const HarnessLogin *res = harness_login_result(h, r);
  g_assert_true(res->answered);
  g_assert_cmpstr(res->host, ==, "127.0.2.2");
  g_assert_cmpuint(usher_director_get_stats(harness_node(h, 0))->alone_declared, ==, 1);
  harness_free(h);
}

/* Spec 4.6.3: a user about to expire whose hashed backend changed is confirmed ring-wide
 * (USER-WEAK) and keeps its backend; every director's copy is refreshed. */
static void
test_weak_user(void)
{
  Harness *h = harness_new(3, BACKENDS, "[director]\nuser_expire = 60s\n");
  harness_start_all(h);
  g_assert_true(harness_run_until_synced(h, 120 * SEC));
  g_assert_cmpstr(harness_login_now(h, 0, "user1"), ==, "127.0.2.2");
  UsherIp b = harness_ip("127.0.2.2");
  guint64 op = harness_new_op(h);
  usher_director_admin_host_update(harness_node(h, 1), harness_now(h), op, &b, 0);
  harness_run(h, 5 * SEC);
  g_assert_cmpstr(harness_admin_reply(h, op), ==, "OK");
  /* Into the last 6 s of the entry's 60 s life. */
  harness_run(h, 50 * SEC);
  guint64 r = harness_login(h, 2, "user1", NULL);
  g_assert_false(harness_login_result(h, r)->answered); /* waits for the USER-WEAK round */
  harness_run(h, SEC);
  const HarnessLogin *res = harness_login_result(h, r);
  g_assert_true(res->answered);
  g_assert_cmpstr(res->host, ==, "127.0.2.2");
  /* Refreshed everywhere: it outlives its original expiry on every director. */
  harness_run(h, 20 * SEC);
  for (guint i = 0; i < 3; i++)
    g_assert_cmpstr(harness_user_host(h, i, "user1"), ==, "127.0.2.2");
  harness_free(h);
}

static gboolean
user_is_weak(Harness *h, guint i, const char *name)
{
  UsherDirector *d = harness_node(h, i);
  UsherUserInfo info;
  usher_director_lookup_user(d, harness_now(h).wall_us,
                             usher_login_hasher_hash(usher_director_get_hasher(d), name, -1), NULL,
                             &info);
  return info.found && info.weak;
}

/* The USER-WEAK's round trip is cut (node 1 unreachable, its links hanging) after it reached
 * node 0, and the login that started it is cancelled by its client. The origin still gives up at
 * the login timeout and says so, so node 0 does not keep the flag (and hold its own logins of
 * the user) until the entry expires; after the heal the ring agrees again. */
static void
test_weak_user_round_cut(void)
{
  Harness *h = harness_new(3, BACKENDS, "[director]\nuser_expire = 60s\n");
  harness_start_all(h);
  g_assert_true(harness_run_until_synced(h, 120 * SEC));
  g_assert_cmpstr(harness_login_now(h, 0, "user1"), ==, "127.0.2.2");
  UsherIp b = harness_ip("127.0.2.2");
  guint64 op = harness_new_op(h);
  usher_director_admin_host_update(harness_node(h, 1), harness_now(h), op, &b, 0);
  harness_run(h, 5 * SEC);
  g_assert_cmpstr(harness_admin_reply(h, op), ==, "OK");
  harness_run(h, 50 * SEC);

  harness_partition(h, 1u << 1, (1u << 0) | (1u << 2), FALSE);
  guint64 r = harness_login(h, 2, "user1", NULL);
  harness_run(h, SEC);
  g_assert_true(user_is_weak(h, 2, "user1"));
  g_assert_true(user_is_weak(h, 0, "user1")); /* 2 -> 0 delivered, 0 -> 1 hangs */
  usher_director_login_cancel(harness_node(h, 2), harness_now(h), r);
  harness_drain(h, 2);
  g_assert_cmpuint(usher_director_count_pending_requests(harness_node(h, 2)), ==, 0);

  harness_run(h, (USHER_REQUEST_TIMEOUT_SECS + 1) * SEC);
  g_assert_false(harness_login_result(h, r)->answered); /* cancelled: never answered */
  g_assert_cmpuint(usher_director_get_stats(harness_node(h, 2))->weak_users_given_up, ==, 1);
  g_assert_false(user_is_weak(h, 2, "user1"));
  g_assert_false(user_is_weak(h, 0, "user1"));
  /* Node 0 answers its own login of the user at once. */
  g_assert_cmpstr(harness_login_now(h, 0, "user1"), ==, "127.0.2.2");

  harness_heal(h);
  harness_run(h, 120 * SEC);
  g_assert_true(harness_converged(h));
  harness_free(h);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/core/ring/standalone", test_standalone);
  g_test_add_func("/core/ring/form-2", test_form_2);
  g_test_add_func("/core/ring/form-3", test_form_3);
  g_test_add_func("/core/ring/form-5", test_form_5);
  g_test_add_func("/core/ring/users-agree", test_users_agree);
  g_test_add_func("/core/ring/deterministic", test_deterministic);
  g_test_add_func("/core/ring/crash-rejoin", test_crash_rejoin);
  g_test_add_func("/core/ring/rejoin-no-lost-sync", test_rejoin_no_lost_sync);
  g_test_add_func("/core/ring/large-handshake", test_large_handshake);
  g_test_add_func("/core/ring/large-handshake-slow-link", test_large_handshake_slow_link);
  g_test_add_func("/core/ring/split-merge", test_split_merge);
  g_test_add_func("/core/ring/vhost-change", test_vhost_change);
  g_test_add_func("/core/ring/tag-conflict-settles", test_tag_conflict_settles);
  g_test_add_func("/core/ring/down-up-remove-flush", test_down_up_remove_flush);
  g_test_add_func("/core/ring/move-and-kick", test_move_and_kick);
  g_test_add_func("/core/ring/reset-users", test_reset_users);
  g_test_add_func("/core/ring/director-remove", test_director_remove);
  g_test_add_func("/core/ring/split-diverge-merge", test_split_diverge_merge);
  g_test_add_func("/core/ring/silent-partition", test_silent_partition);
  g_test_add_func("/core/ring/login-timeout", test_login_timeout);
  g_test_add_func("/core/ring/login-waits-for-handshake", test_login_waits_for_handshake);
  g_test_add_func("/core/ring/weak-user", test_weak_user);
  g_test_add_func("/core/ring/weak-user-round-cut", test_weak_user_round_cut);
  return g_test_run();
}

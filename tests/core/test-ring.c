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

/* 100k users cross in one handshake, in bounded batches. */
static void
test_large_handshake(void)
{
  Harness *h = harness_new(2, BACKENDS, NULL);
  harness_start(h, 0);
  g_assert_true(harness_run_until_synced(h, 60 * SEC));
  for (guint u = 0; u < 100000; u++) {
    char name[32];
    g_snprintf(name, sizeof(name), "u%u@example.com", u);
    usher_director_login_request(harness_node(h, 0), harness_now(h), u + 1000000, name, NULL);
  }
  g_autoptr(GArray) ignored = usher_director_take_effects(harness_node(h, 0));
  harness_start(h, 1);
  g_assert_true(harness_run_until_synced(h, 120 * SEC));
  assert_ring(h);
  /* 100,000 names give a couple of 32-bit hash collisions, which share one entry. */
  UsherHostTable *t0 = usher_director_get_hosts(harness_node(h, 0));
  UsherHostTable *t1 = usher_director_get_hosts(harness_node(h, 1));
  guint n0 = usher_user_dir_count(usher_host_table_find_tag(t0, "")->users);
  g_assert_cmpuint(n0, >, 99990);
  g_assert_cmpuint(usher_user_dir_count(usher_host_table_find_tag(t1, "")->users), ==, n0);
  harness_free(h);
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
  g_test_add_func("/core/ring/large-handshake", test_large_handshake);
  g_test_add_func("/core/ring/split-merge", test_split_merge);
  return g_test_run();
}

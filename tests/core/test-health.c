/* test-health.c - backend health checks with ring quorum (doc/health.md), on whole rings of real
 * directors over the in-memory harness; and how fast a hung usherd peer is dropped. */
#include "ring-harness.h"

#include <string.h>

#define SEC G_GINT64_CONSTANT(1000000)
#define BACKENDS "127.0.2.1,127.0.2.2,127.0.2.3"
#define HEALTH "[health]\nenabled = true\ninterval = 1s\nfall = 2\nrise = 2\n"

static Harness *
health_ring(guint n, const char *extra)
{
  Harness *h = harness_new(n, BACKENDS, extra != NULL ? extra : HEALTH);
  harness_start_all(h);
  g_assert_true(harness_run_until_synced(h, 120 * SEC));
  harness_run(h, 3 * SEC); /* every director has heard every other's report */
  return h;
}

static gboolean
host_down(Harness *h, guint i, const char *ip)
{
  UsherIp a = harness_ip(ip);
  UsherHost *host = usher_host_table_lookup(usher_director_get_hosts(harness_node(h, i)), &a);
  g_assert_nonnull(host);
  return host->down;
}

static guint64
downs(Harness *h, guint n)
{
  guint64 sum = 0;
  for (guint i = 0; i < n; i++)
    sum += usher_director_get_stats(harness_node(h, i))->health_downs;
  return sum;
}

/* A backend that only one director of three sees failing stays up everywhere: one vote is not a
 * majority of three live voters. The director's own view and the tally show it. */
static void
test_one_view_not_enough(void)
{
  Harness *h = health_ring(3, NULL);
  harness_set_backend_failing(h, "127.0.2.2", 0x1);
  harness_run(h, 30 * SEC);
  for (guint i = 0; i < 3; i++)
    g_assert_false(host_down(h, i, "127.0.2.2"));
  g_assert_cmpuint(downs(h, 3), ==, 0);
  UsherHealthReport rep;
  usher_director_get_health(harness_node(h, 1), harness_now(h), &rep);
  g_assert_true(rep.enabled);
  g_assert_true(rep.have_quorum);
  g_assert_cmpuint(rep.live_voters, ==, 3);
  g_assert_cmpuint(rep.needed, ==, 2);
  g_assert_cmpuint(rep.voters->len, ==, 2);
  const UsherHealthInfo *b2 = &g_array_index(rep.backends, UsherHealthInfo, 1);
  g_assert_cmpstr(b2->ip_str, ==, "127.0.2.2");
  g_assert_false(b2->failing); /* node 1's own view */
  g_assert_cmpuint(b2->votes_failing, ==, 1);
  g_assert_cmpuint(b2->votes_ok, ==, 2);
  usher_health_report_clear(&rep);
  usher_director_get_health(harness_node(h, 0), harness_now(h), &rep);
  g_assert_true(g_array_index(rep.backends, UsherHealthInfo, 1).failing);
  usher_health_report_clear(&rep);
  harness_free(h);
}

/* Two of three see it failing: it goes down ring-wide (one HOST down), its users are placed
 * again at once (down_action = replace), and it comes back up when the checks pass again. */
static void
test_majority_down_and_up(void)
{
  Harness *h = health_ring(3, NULL);
  /* Find a user on .2, so that the re-placement shows. */
  char name[32] = "";
  for (guint i = 0; i < 200 && name[0] == '\0'; i++) {
    g_snprintf(name, sizeof(name), "hu%u", i);
    if (strcmp(harness_login_now(h, 0, name), "127.0.2.2") != 0)
      name[0] = '\0';
  }
  g_assert_cmpstr(name, !=, "");
  harness_set_backend_failing(h, "127.0.2.2", 0x3);
  /* fall = 2 at 1 s intervals, then a report: down within about 3 s. */
  harness_run(h, 4 * SEC);
  for (guint i = 0; i < 3; i++)
    g_assert_true(host_down(h, i, "127.0.2.2"));
  g_assert_cmpuint(downs(h, 3), ==, 1); /* one director acts: the lowest-addressed voter */
  g_assert_cmpuint(usher_director_get_stats(harness_node(h, 0))->health_downs, ==, 1);
  g_assert_true(harness_converged(h));
  g_assert_cmpstr(harness_login_now(h, 2, name), !=, "127.0.2.2");
  UsherHealthReport rep;
  usher_director_get_health(harness_node(h, 2), harness_now(h), &rep);
  g_assert_true(g_array_index(rep.backends, UsherHealthInfo, 1).health_down);
  usher_health_report_clear(&rep);

  harness_set_backend_failing(h, "127.0.2.2", 0);
  harness_run(h, 5 * SEC);
  for (guint i = 0; i < 3; i++)
    g_assert_false(host_down(h, i, "127.0.2.2"));
  guint64 ups = 0;
  for (guint i = 0; i < 3; i++)
    ups += usher_director_get_stats(harness_node(h, i))->health_ups;
  g_assert_cmpuint(ups, >=, 1);
  /* No flapping: the user stays where it went until it expires. */
  g_assert_cmpstr(harness_login_now(h, 1, name), !=, "127.0.2.2");
  g_assert_true(harness_converged(h));
  harness_free(h);
}

/* The director that would act is gone: another one acts, a little later. */
static void
test_decider_gone(void)
{
  Harness *h = health_ring(3, NULL);
  harness_crash(h, 0);
  harness_set_backend_failing(h, "127.0.2.3", 0x6);
  harness_run(h, 10 * SEC);
  g_assert_true(host_down(h, 1, "127.0.2.3"));
  g_assert_true(host_down(h, 2, "127.0.2.3"));
  g_assert_cmpuint(usher_director_get_stats(harness_node(h, 1))->health_downs +
                       usher_director_get_stats(harness_node(h, 2))->health_downs,
                   ==, 1);
  harness_free(h);
}

/* down_action = keep: the backend goes down but its users stay (Dovecot's behaviour). */
static void
test_keep_users(void)
{
  Harness *h = health_ring(3, HEALTH "down_action = keep\n");
  char name[32] = "";
  for (guint i = 0; i < 200 && name[0] == '\0'; i++) {
    g_snprintf(name, sizeof(name), "ku%u", i);
    if (strcmp(harness_login_now(h, 0, name), "127.0.2.3") != 0)
      name[0] = '\0';
  }
  harness_set_backend_failing(h, "127.0.2.3", 0x7);
  harness_run(h, 4 * SEC);
  g_assert_true(host_down(h, 1, "127.0.2.3"));
  g_assert_cmpstr(harness_user_host(h, 1, name), ==, "127.0.2.3");
  harness_free(h);
}

/* A backend an operator took down is never brought up by the checks. */
static void
test_admin_down_stays(void)
{
  Harness *h = health_ring(3, NULL);
  UsherIp b = harness_ip("127.0.2.1");
  guint64 op = harness_new_op(h);
  usher_director_admin_host_set_down(harness_node(h, 0), harness_now(h), op, &b, TRUE);
  harness_drain(h, 0);
  harness_run(h, 20 * SEC);
  g_assert_cmpstr(harness_admin_reply(h, op), ==, "OK");
  for (guint i = 0; i < 3; i++)
    g_assert_true(host_down(h, i, "127.0.2.1"));
  harness_free(h);
}

/* A director cut off from the rest has no quorum: a backend it alone cannot reach stays up on
 * its side and everywhere after the heal. */
static void
test_minority_decides_nothing(void)
{
  Harness *h = health_ring(3, NULL);
  harness_partition(h, 0x1, 0x6, TRUE);
  harness_run(h, 10 * SEC);
  harness_set_backend_failing(h, "127.0.2.2", 0x1);
  harness_run(h, 20 * SEC);
  g_assert_false(host_down(h, 0, "127.0.2.2"));
  UsherHealthReport rep;
  usher_director_get_health(harness_node(h, 0), harness_now(h), &rep);
  g_assert_false(rep.have_quorum);
  g_assert_cmpuint(rep.live_voters, ==, 1);
  g_assert_cmpuint(rep.quorum, ==, 2);
  usher_health_report_clear(&rep);
  g_assert_cmpuint(usher_director_get_stats(harness_node(h, 0))->health_no_quorum, >=, 1);
  harness_heal(h);
  g_assert_true(harness_run_until_synced(h, 180 * SEC));
  harness_run(h, 10 * SEC);
  for (guint i = 0; i < 3; i++)
    g_assert_false(host_down(h, i, "127.0.2.2"));
  harness_free(h);
}

/* Directors without [health] enabled do not vote: one enabled director of three never has a
 * quorum. (Enable it on every usherd.) */
static void
test_disabled_directors_do_not_vote(void)
{
  Harness *h = health_ring(3, "[health]\nenabled = false\n");
  harness_set_backend_failing(h, "127.0.2.2", 0x7);
  harness_run(h, 20 * SEC);
  g_assert_false(host_down(h, 0, "127.0.2.2"));
  g_assert_cmpuint(usher_director_get_stats(harness_node(h, 0))->probes_sent, ==, 0);
  harness_free(h);
}

/* A hung usherd peer (its links hold every byte, nothing comes back) is dropped within 5 s, and
 * new users are answered within 2 s all along (usher_ping_timeout = 2 s). */
static void
test_hung_peer(void)
{
  Harness *h = harness_new(3, BACKENDS, NULL);
  harness_start_all(h);
  g_assert_true(harness_run_until_synced(h, 120 * SEC));
  harness_run(h, 5 * SEC);
  gint64 hung_at = harness_now_us(h);
  harness_partition(h, 0x4, 0x3, FALSE);
  GArray *reqs = g_array_new(FALSE, FALSE, sizeof(guint64));
  GArray *sent = g_array_new(FALSE, FALSE, sizeof(gint64));
  gint64 formed_at = 0;
  for (guint step = 0; step < 100; step++) {
    for (guint node = 0; node < 2; node++) {
      g_autofree char *name = g_strdup_printf("new%u-%u", step, node);
      guint64 r = harness_login(h, node, name, NULL);
      gint64 t = harness_now_us(h);
      g_array_append_val(reqs, r);
      g_array_append_val(sent, t);
    }
    harness_run(h, SEC / 10);
    const UsherRingAddr *r0 = usher_director_get_right(harness_node(h, 0));
    const UsherRingAddr *r1 = usher_director_get_right(harness_node(h, 1));
    if (formed_at == 0 && r0 != NULL && r1 != NULL && r0->ip.addr[3] == 2 && r1->ip.addr[3] == 1 &&
        usher_director_is_ring_synced(harness_node(h, 0)) &&
        usher_director_is_ring_synced(harness_node(h, 1)))
      formed_at = harness_now_us(h);
  }
  harness_run(h, 5 * SEC);
  g_assert_cmpint(formed_at, !=, 0);
  g_test_message("ring without the hung director after %.1f s", (formed_at - hung_at) / 1e6);
  g_assert_cmpint(formed_at - hung_at, <=, 5 * SEC);
  gint64 worst = 0;
  for (guint i = 0; i < reqs->len; i++) {
    const HarnessLogin *res = harness_login_result(h, g_array_index(reqs, guint64, i));
    g_assert_true(res->answered);
    g_assert_cmpint(res->status, ==, USHER_LOGIN_OK);
    worst = MAX(worst, res->answered_us - g_array_index(sent, gint64, i));
  }
  g_test_message("slowest new-user login: %.2f s", worst / 1e6);
  g_assert_cmpint(worst, <=, 2 * SEC);
  g_array_unref(reqs);
  g_array_unref(sent);
  harness_free(h);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/core/health/one-view-not-enough", test_one_view_not_enough);
  g_test_add_func("/core/health/majority-down-and-up", test_majority_down_and_up);
  g_test_add_func("/core/health/decider-gone", test_decider_gone);
  g_test_add_func("/core/health/keep-users", test_keep_users);
  g_test_add_func("/core/health/admin-down-stays", test_admin_down_stays);
  g_test_add_func("/core/health/minority-decides-nothing", test_minority_decides_nothing);
  g_test_add_func("/core/health/disabled-directors-do-not-vote",
                  test_disabled_directors_do_not_vote);
  g_test_add_func("/core/health/hung-peer", test_hung_peer);
  return g_test_run();
}

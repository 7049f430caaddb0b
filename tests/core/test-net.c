/* test-net.c - the simulated network (sim/net.h) on its own, with a recording fake driver. */
#include "sim/net.h"

#include <string.h>

#define MS G_GINT64_CONSTANT(1000)
#define SEC G_GINT64_CONSTANT(1000000)

typedef struct {
  gint64 now_us;
  SimNet *net;
  GString *log;         /* what reached the "directors", one line each */
  UsherConnId next_id;  /* ids the accepting side hands out */
  gsize last_queued[4]; /* per node: the latest output_queued figure */
} Fake;

static UsherConnId
fake_accept(gpointer user, guint node, guint from)
{
  Fake *f = user;
  UsherConnId id = f->next_id++;
  g_string_append_printf(f->log, "%" G_GINT64_FORMAT " accept %u<-%u as %u\n", f->now_us, node,
                         from, id);
  return id;
}

static void
fake_connected(gpointer user, guint node, UsherConnId conn)
{
  Fake *f = user;
  g_string_append_printf(f->log, "%" G_GINT64_FORMAT " connected %u/%u\n", f->now_us, node, conn);
}

static void
fake_bytes(gpointer user, guint node, UsherConnId conn, const char *data, gsize len)
{
  Fake *f = user;
  g_string_append_printf(f->log, "%" G_GINT64_FORMAT " bytes %u/%u %" G_GSIZE_FORMAT "\n",
                         f->now_us, node, conn, len);
}

static void
fake_closed(gpointer user, guint node, UsherConnId conn, const char *reason)
{
  Fake *f = user;
  g_string_append_printf(f->log, "%" G_GINT64_FORMAT " closed %u/%u %s\n", f->now_us, node, conn,
                         reason);
}

static void
fake_output_queued(gpointer user, guint node, UsherConnId conn, gsize queued)
{
  Fake *f = user;
  f->last_queued[node] = queued;
  g_string_append_printf(f->log, "%" G_GINT64_FORMAT " queued %u/%u %" G_GSIZE_FORMAT "\n",
                         f->now_us, node, conn, queued);
}

static void
fake_drain(gpointer user, guint node)
{
}

static Fake *
fake_new(void)
{
  static const SimNetCallbacks cb = {fake_accept,        fake_connected, fake_bytes, fake_closed,
                                     fake_output_queued, fake_drain,     NULL};
  Fake *f = g_new0(Fake, 1);
  f->now_us = SEC;
  f->log = g_string_new(NULL);
  f->next_id = 100;
  f->net = sim_net_new(&f->now_us, 1, &cb, f);
  SimDist lat = {SIM_DIST_FIXED, MS, MS};
  sim_net_set_latency(f->net, &lat);
  for (guint i = 0; i < 3; i++)
    sim_net_node_up(f->net, i, 1);
  return f;
}

static void
fake_free(Fake *f)
{
  sim_net_free(f->net);
  g_string_free(f->log, TRUE);
  g_free(f);
}

/* Runs every event up to and including `until`. */
static void
run(Fake *f, gint64 until)
{
  while (sim_net_next_time(f->net) <= until) {
    SimEvent ev;
    g_assert_true(sim_net_pop(f->net, &ev));
    f->now_us = MAX(f->now_us, ev.t);
    g_assert_true(sim_net_process(f->net, &ev));
  }
  f->now_us = MAX(f->now_us, until);
}

/* Node 0 dials node 1 on conn; returns once both ends are up. */
static void
connect01_on(Fake *f, UsherConnId conn)
{
  sim_net_connect(f->net, 0, conn, 1);
  run(f, f->now_us + 10 * MS);
  g_autofree char *want = g_strdup_printf("accept 1<-0 as %u", f->next_id - 1);
  g_autofree char *want2 = g_strdup_printf("connected 0/%u", conn);
  g_assert_nonnull(strstr(f->log->str, want));
  g_assert_nonnull(strstr(f->log->str, want2));
  g_string_truncate(f->log, 0);
}

/* Node 0 dials node 1 on conn 1 (accepted as 100). */
static void
connect01(Fake *f)
{
  connect01_on(f, 1);
}

static gsize
send(Fake *f, guint node, UsherConnId conn, gsize len, gboolean *sent_out)
{
  g_autofree char *data = g_malloc0(len);
  gsize queued;
  gboolean sent = sim_net_send(f->net, node, conn, data, len, &queued);
  if (sent_out != NULL)
    *sent_out = sent;
  return queued;
}

/* Events at the same time run in the order they were scheduled. */
static void
test_heap_order(void)
{
  Fake *f = fake_new();
  for (guint i = 0; i < 50; i++) {
    SimEvent ev = {.t = 5 * SEC + (gint64)(i % 3), .kind = SIM_NET_EV_DRIVER, .a = i};
    sim_net_schedule(f->net, ev);
  }
  guint64 last_a[3] = {0};
  gboolean seen[3] = {FALSE};
  gint64 last_t = 0;
  SimEvent ev;
  while (sim_net_pop(f->net, &ev)) {
    g_assert_false(sim_net_process(f->net, &ev)); /* a driver event */
    g_assert_cmpint(ev.t, >=, last_t);
    guint k = (guint)(ev.t - 5 * SEC);
    if (seen[k])
      g_assert_cmpuint(ev.a, >, last_a[k]);
    seen[k] = TRUE;
    last_a[k] = ev.a;
    last_t = ev.t;
  }
  fake_free(f);
}

/* Events from the same instant to hours ahead, scheduled before and while others are taken,
 * come out in (time, scheduling order): through the near heap, the calendar (including its
 * wrap-around) and the overflow beyond it, and across empty stretches the queue jumps over. */
static void
test_queue_order_far(void)
{
  Fake *f = fake_new();
  UsherRng rng;
  usher_rng_seed(&rng, 7);
  static const gint64 spans[] = {1, MS, SEC, 60 * SEC, 1200 * SEC, 5 * 3600 * SEC};
  guint64 scheduled = 0, taken = 0;
  GHashTable *pending = g_hash_table_new(NULL, NULL); /* a -> t, to check nothing is lost */
  gint64 last_t = G_MININT64;
  guint64 last_a = 0;
  for (guint round = 0; round < 4000; round++) {
    guint burst = usher_rng_below(&rng, 4);
    for (guint i = 0; i < burst; i++) {
      gint64 span = spans[usher_rng_below(&rng, G_N_ELEMENTS(spans))];
      gint64 ahead = usher_rng_below(&rng, (guint32)MIN(span, G_MAXUINT32));
      SimEvent ev = {.t = f->now_us + ahead, .kind = SIM_NET_EV_DRIVER, .a = ++scheduled};
      if (span > G_MAXUINT32)
        ev.t += span; /* hours ahead: beyond the calendar */
      g_hash_table_insert(pending, GSIZE_TO_POINTER(ev.a), NULL);
      sim_net_schedule(f->net, ev);
    }
    g_assert_cmpuint(sim_net_pending(f->net), ==, scheduled - taken);
    if (usher_rng_below(&rng, 3) == 0)
      continue;
    gint64 next = sim_net_next_time(f->net);
    SimEvent ev;
    if (!sim_net_pop(f->net, &ev)) {
      g_assert_cmpint(next, ==, G_MAXINT64);
      continue;
    }
    taken++;
    g_assert_cmpint(ev.t, ==, next);
    g_assert_true(ev.t > last_t || (ev.t == last_t && ev.a > last_a));
    g_assert_true(g_hash_table_remove(pending, GSIZE_TO_POINTER(ev.a)));
    last_t = ev.t;
    last_a = ev.a;
    f->now_us = MAX(f->now_us, ev.t);
  }
  /* The rest, in order, and nothing twice or lost. */
  SimEvent ev;
  while (sim_net_pop(f->net, &ev)) {
    taken++;
    g_assert_true(ev.t > last_t || (ev.t == last_t && ev.a > last_a));
    g_assert_true(g_hash_table_remove(pending, GSIZE_TO_POINTER(ev.a)));
    last_t = ev.t;
    last_a = ev.a;
  }
  g_assert_cmpuint(taken, ==, scheduled);
  g_assert_cmpuint(g_hash_table_size(pending), ==, 0);
  g_assert_cmpint(sim_net_next_time(f->net), ==, G_MAXINT64);
  g_assert_cmpint(last_t, >, 5 * 3600 * SEC); /* the overflow was used */
  g_hash_table_unref(pending);
  fake_free(f);
}

/* Without a bandwidth a write arrives one latency later and nothing stays queued. */
static void
test_unlimited(void)
{
  Fake *f = fake_new();
  connect01(f);
  gint64 t0 = f->now_us;
  g_assert_cmpuint(send(f, 0, 1, 100000, NULL), ==, 0);
  run(f, t0 + 5 * SEC);
  g_autofree char *want = g_strdup_printf("%" G_GINT64_FORMAT " bytes 1/100 100000\n", t0 + MS);
  g_assert_cmpstr(f->log->str, ==, want);
  fake_free(f);
}

/* With a bandwidth, writes queue: each one finishes transmitting after the one before it, and
 * the queued figure falls as time passes; the network reports it when the queue drains to the
 * resume mark and when it is empty. */
static void
test_transmit_queue(void)
{
  Fake *f = fake_new();
  sim_net_set_bandwidth(f->net, 100000); /* 100 kB/s */
  connect01(f);
  gint64 t0 = f->now_us;
  g_assert_cmpuint(send(f, 0, 1, 50000, NULL), ==, 50000);   /* 0.5 s of transmission */
  g_assert_cmpuint(send(f, 0, 1, 100000, NULL), ==, 150000); /* then 1 s more */
  run(f, t0 + SEC / 2);
  /* Half-way: the first write is on the wire, 100000 bytes wait. */
  g_assert_cmpuint(send(f, 0, 1, 10000, NULL), ==, 110000);
  run(f, t0 + 10 * SEC);
  /* The resume mark, 64 KiB, is 655360 us of transmission at 100 kB/s. */
  g_autofree char *want = g_strdup_printf(
    "%" G_GINT64_FORMAT " queued 0/1 100000\n" /* the first write is transmitted */
    "%" G_GINT64_FORMAT " bytes 1/100 50000\n" /* ... and arrives a latency later */
    "%" G_GINT64_FORMAT " queued 0/1 75536\n"  /* the resume mark of the queue as it was */
    "%" G_GINT64_FORMAT " queued 0/1 65536\n"  /* ... and of the queue with the third write */
    "%" G_GINT64_FORMAT " bytes 1/100 100000\n"
    "%" G_GINT64_FORMAT " queued 0/1 0\n"      /* empty */
    "%" G_GINT64_FORMAT " bytes 1/100 10000\n",
    t0 + 500 * MS, t0 + 501 * MS, t0 + 1500 * MS - 655360, t0 + 1600 * MS - 655360,
    t0 + 1501 * MS, t0 + 1600 * MS, t0 + 1601 * MS);
  g_assert_cmpstr(f->log->str, ==, want);
  fake_free(f);
}

/* A write that would take the queued output above the limit closes the connection: the writer
 * hears it at once, the peer after what was already on its way. */
static void
test_overflow(void)
{
  Fake *f = fake_new();
  sim_net_set_bandwidth(f->net, 100000);
  sim_net_set_output_limit(f->net, 120000);
  connect01(f);
  gint64 t0 = f->now_us;
  gboolean sent;
  g_assert_cmpuint(send(f, 0, 1, 100000, &sent), ==, 100000);
  g_assert_true(sent);
  g_assert_cmpuint(send(f, 0, 1, 30000, &sent), ==, 100000);
  g_assert_false(sent);
  g_assert_cmpuint(sim_net_get_stats(f->net)->output_overflows, ==, 1);
  send(f, 0, 1, 10, &sent); /* nothing more goes out */
  g_assert_false(sent);
  run(f, t0 + 10 * SEC);
  g_autofree char *want = g_strdup_printf("%" G_GINT64_FORMAT " closed 0/1 output buffer full\n"
                                          "%" G_GINT64_FORMAT " bytes 1/100 100000\n"
                                          "%" G_GINT64_FORMAT " closed 1/100 connection reset by peer\n",
                                          t0, t0 + SEC + MS, t0 + SEC + MS);
  g_assert_cmpstr(f->log->str, ==, want);
  fake_free(f);
}

/* A hung partition holds what is written (it counts as queued output) and releases it on the
 * heal; a connect into the partition waits and goes through after it. */
static void
test_hung_partition(void)
{
  Fake *f = fake_new();
  connect01(f);
  guint64 groups[2] = {0x1, 0x6};
  sim_net_partition(f->net, groups, 2, FALSE);
  g_assert_true(sim_net_partitioned(f->net));
  g_assert_cmpuint(send(f, 0, 1, 1000, NULL), ==, 1000);
  g_assert_cmpuint(send(f, 0, 1, 500, NULL), ==, 1500);
  sim_net_connect(f->net, 2, 7, 0); /* into the partition: the SYN waits */
  run(f, f->now_us + 100 * SEC);
  g_assert_cmpstr(f->log->str, ==, "");
  gint64 t0 = f->now_us;
  sim_net_heal(f->net);
  run(f, t0 + SEC);
  g_autofree char *want = g_strdup_printf("%" G_GINT64_FORMAT " queued 0/1 0\n"
                                          "%" G_GINT64_FORMAT " bytes 1/100 1000\n"
                                          "%" G_GINT64_FORMAT " bytes 1/100 500\n"
                                          "%" G_GINT64_FORMAT " accept 0<-2 as 101\n"
                                          "%" G_GINT64_FORMAT " connected 2/7\n",
                                          t0, t0 + MS, t0 + MS, t0 + MS, t0 + 2 * MS);
  g_assert_cmpstr(f->log->str, ==, want);
  fake_free(f);
}

/* A resetting partition closes the links between the groups and refuses connects; a node that
 * goes down resets its links; nobody listening refuses. */
static void
test_resets(void)
{
  Fake *f = fake_new();
  connect01(f);
  guint64 groups[2] = {0x1, 0x2};
  sim_net_partition(f->net, groups, 2, TRUE);
  sim_net_connect(f->net, 1, 2, 0);
  gint64 t0 = f->now_us;
  run(f, t0 + SEC);
  g_autofree char *want = g_strdup_printf("%" G_GINT64_FORMAT " closed 0/1 connection reset (partition)\n"
                                          "%" G_GINT64_FORMAT " closed 1/100 connection reset (partition)\n"
                                          "%" G_GINT64_FORMAT " closed 1/2 connection refused\n",
                                          t0, t0, t0 + MS);
  g_assert_cmpstr(f->log->str, ==, want);
  sim_net_heal(f->net);
  g_string_truncate(f->log, 0);
  connect01_on(f, 5);
  sim_net_node_down(f->net, 1);
  sim_net_connect(f->net, 0, 3, 1);
  sim_net_connect(f->net, 0, 4, G_MAXUINT);
  t0 = f->now_us;
  run(f, t0 + SEC);
  g_autofree char *want2 = g_strdup_printf("%" G_GINT64_FORMAT " closed 0/5 connection reset by peer\n"
                                           "%" G_GINT64_FORMAT " closed 0/3 connection refused\n"
                                           "%" G_GINT64_FORMAT " closed 0/4 connection refused\n",
                                           t0 + MS, t0 + MS, t0 + MS);
  g_assert_cmpstr(f->log->str, ==, want2);
  fake_free(f);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/net/heap-order", test_heap_order);
  g_test_add_func("/net/queue-order-far", test_queue_order_far);
  g_test_add_func("/net/unlimited", test_unlimited);
  g_test_add_func("/net/transmit-queue", test_transmit_queue);
  g_test_add_func("/net/overflow", test_overflow);
  g_test_add_func("/net/hung-partition", test_hung_partition);
  g_test_add_func("/net/resets", test_resets);
  return g_test_run();
}

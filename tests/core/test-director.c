/* test-director.c - one director driven by hand: what a real driver (usherd) needs of the core
 * beyond the ring protocol. The time contract, peer timestamps that would overflow, output
 * backpressure, kicks and flush hooks that never finish, cancelled and duplicate login requests,
 * every bound and its counter, the read-only queries, and the thread-safe login hasher. */
#include "libcore/config.h"
#include "libcore/director.h"

#include <string.h>

#define T0 G_GINT64_CONSTANT(1795393974)
#define SEC G_GINT64_CONSTANT(1000000)

/* ---- A director and what it did ----------------------------------------------------------------- */

typedef struct {
  UsherDirector *d;
  gint64 mono_us, wall_us;
  UsherConnId out; /* the connection from the latest CONNECT */
  GHashTable *sent; /* UsherConnId -> GString of bytes sent since the last take_sent() */
  GArray *kicks, *flushes; /* ids */
  GHashTable *replies; /* op -> reply text */
  GHashTable *logins;  /* request -> "OK <ip>" or "FAIL <reason>" */
  guint login_results;
  guint logs;
  UsherConnId last_closed; /* the connection of the latest DISCONNECT */
} Solo;

static UsherNow
now(Solo *s)
{
  return (UsherNow){s->mono_us, s->wall_us};
}

static void
advance(Solo *s, gint64 us)
{
  s->mono_us += us;
  s->wall_us += us;
}

static void
collect(Solo *s)
{
  g_autoptr(GArray) effects = usher_director_take_effects(s->d);
  for (guint i = 0; i < effects->len; i++) {
    UsherEffect *e = &g_array_index(effects, UsherEffect, i);
    switch (e->type) {
    case USHER_EFFECT_CONNECT:
      s->out = e->connect.conn;
      break;
    case USHER_EFFECT_SEND: {
      GString *buf = g_hash_table_lookup(s->sent, GUINT_TO_POINTER(e->send.conn));
      if (buf == NULL) {
        buf = g_string_new(NULL);
        g_hash_table_insert(s->sent, GUINT_TO_POINTER(e->send.conn), buf);
      }
      g_string_append_len(buf, e->send.data, (gssize)e->send.len);
      break;
    }
    case USHER_EFFECT_KICK:
      g_array_append_val(s->kicks, e->kick.id);
      break;
    case USHER_EFFECT_FLUSH:
      g_array_append_val(s->flushes, e->flush.id);
      break;
    case USHER_EFFECT_ADMIN_REPLY:
      g_assert_false(g_hash_table_contains(s->replies, &e->admin.op));
      g_hash_table_insert(s->replies, g_memdup2(&e->admin.op, sizeof(guint64)),
                          g_strndup(e->admin.text, strcspn(e->admin.text, "\n")));
      break;
    case USHER_EFFECT_LOGIN_RESULT: {
      char ip[USHER_IP_STRLEN];
      g_assert_false(g_hash_table_contains(s->logins, &e->login.request));
      s->login_results++;
      g_hash_table_insert(s->logins, g_memdup2(&e->login.request, sizeof(guint64)),
                          e->login.status == USHER_LOGIN_OK
                            ? g_strdup_printf("OK %s", usher_ip_to_string(&e->login.host, ip))
                            : g_strdup_printf("FAIL %s", e->login.reason));
      break;
    }
    case USHER_EFFECT_DISCONNECT:
      s->last_closed = e->disconnect.conn;
      break;
    case USHER_EFFECT_LOG:
      s->logs++;
      break;
    default:
      break;
    }
  }
}

/* Directors 127.0.5.1 (us) and 127.0.5.2, or standalone when ring is NULL. */
static Solo *
solo_new(const char *ring, const char *extra)
{
  Solo *s = g_new0(Solo, 1);
  s->mono_us = 10 * SEC;
  s->wall_us = T0 * SEC;
  s->sent = g_hash_table_new_full(NULL, NULL, NULL, (GDestroyNotify)g_autoptr_cleanup_gstring_free);
  s->kicks = g_array_new(FALSE, FALSE, sizeof(guint64));
  s->flushes = g_array_new(FALSE, FALSE, sizeof(guint64));
  s->replies = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free, g_free);
  s->logins = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free, g_free);
  g_autofree char *text =
    g_strdup_printf("[ring]\ndirectors = %s\n[backends]\nhosts = 127.0.2.1 127.0.2.2 127.0.2.3\n%s",
                    ring != NULL ? ring : "", extra != NULL ? extra : "");
  g_autoptr(GError) error = NULL;
  g_autoptr(UsherConfig) config = usher_config_parse(text, strlen(text), "test.conf", &error);
  g_assert_no_error(error);
  UsherRingAddr self = {.ip = {.family = USHER_IP_V4, .addr = {127, 0, 5, 1}}, .port = 19190};
  s->d = usher_director_new(config, &self, 1, now(s), &error);
  g_assert_no_error(error);
  usher_director_start(s->d, now(s));
  collect(s);
  return s;
}

static void
solo_free(Solo *s)
{
  usher_director_free(s->d);
  g_hash_table_unref(s->sent);
  g_array_unref(s->kicks);
  g_array_unref(s->flushes);
  g_hash_table_unref(s->replies);
  g_hash_table_unref(s->logins);
  g_free(s);
}

static void
feed(Solo *s, UsherConnId conn, const char *text)
{
  usher_director_peer_bytes(s->d, now(s), conn, text, strlen(text));
  collect(s);
}

static void
tick(Solo *s, gint64 us)
{
  advance(s, us);
  usher_director_on_deadline(s->d, now(s));
  collect(s);
}

static const char *
reply(Solo *s, guint64 op)
{
  return g_hash_table_lookup(s->replies, &op);
}

static const char *
login(Solo *s, guint64 request)
{
  return g_hash_table_lookup(s->logins, &request);
}

/* Bytes sent on conn since the last call. */
static char *
take_sent(Solo *s, UsherConnId conn)
{
  GString *buf = g_hash_table_lookup(s->sent, GUINT_TO_POINTER(conn));
  if (buf == NULL)
    return g_strdup("");
  char *out = g_strdup(buf->str);
  g_string_truncate(buf, 0);
  return out;
}

static guint
count_lines(const char *text, const char *prefix)
{
  guint n = 0;
  for (const char *p = text; *p != '\0';) {
    if (g_str_has_prefix(p, prefix))
      n++;
    const char *nl = strchr(p, '\n');
    p = nl != NULL ? nl + 1 : p + strlen(p);
  }
  return n;
}

static const UsherDirectorStats *
stats(Solo *s)
{
  return usher_director_get_stats(s->d);
}

static UsherIp
ip(const char *text)
{
  UsherIp out;
  g_assert_true(usher_ip_parse(text, -1, &out));
  return out;
}

/* The peer 127.0.5.2 connects to us and completes a handshake as a member of a ring that is
 * already complete, handing over n users. Returns its connection. */
static UsherConnId
peer_joins_with_users(Solo *s, guint n)
{
  UsherIp peer = ip("127.0.5.2");
  UsherConnId in = usher_director_peer_accepted(s->d, now(s), &peer);
  g_assert_cmpuint(in, !=, USHER_CONN_ID_NONE);
  collect(s);
  GString *hs = g_string_new("VERSION\tdirector\t1\t9\nME\t127.0.5.2\t19190\t1795393974\n"
                             "HOST-HAND-START\t1\n"
                             "HOST\t127.0.2.1\t100\t\tU0\t\nHOST\t127.0.2.2\t100\t\tU0\t\n"
                             "HOST\t127.0.2.3\t100\t\tU0\t\nHOST-HAND-END\t1\n");
  for (guint i = 1; i <= n; i++)
    g_string_append_printf(hs, "U\t%u\t127.0.2.%u\t%" G_GINT64_FORMAT "\n", i, 1 + i % 3, T0);
  g_string_append(hs, "OPTIONS\tconsistent-hashing\nDONE\n");
  feed(s, in, hs->str);
  g_string_free(hs, TRUE);
  return in;
}

/* ---- The time contract ---------------------------------------------------------------------------- */

static void
test_time_contract(void)
{
  if (g_test_subprocess()) {
    Solo *s = solo_new(NULL, NULL);
    s->mono_us -= 1; /* a clock that goes backwards is a driver bug */
    usher_director_on_deadline(s->d, now(s));
    return;
  }
  g_test_trap_subprocess(NULL, 0, G_TEST_SUBPROCESS_DEFAULT);
  g_test_trap_assert_failed();
  g_test_trap_assert_stderr("*mono_us*");

  /* Wall time may step back and forth freely. */
  Solo *s = solo_new(NULL, NULL);
  s->wall_us -= 3600 * SEC;
  tick(s, 1);
  s->wall_us += 7200 * SEC;
  tick(s, 1);
  g_assert_cmpint(usher_director_next_deadline(s->d), >, 0);
  solo_free(s);
}

/* ---- A peer that lies with numbers ---------------------------------------------------------------- */

static void
test_peer_times(void)
{
  Solo *s = solo_new("127.0.5.1:19190 127.0.5.2:19190", NULL);
  UsherIp peer = ip("127.0.5.2");
  UsherConnId in = usher_director_peer_accepted(s->d, now(s), &peer);
  collect(s);
  feed(s, in, "VERSION\tdirector\t1\t9\nME\t127.0.5.2\t19190\t-9223372036854775808\n");
  feed(s, in, "PING\t-9223372036854775808\t18446744073709551615\n"
              "PING\t9223372036854775807\t0\n"
              "PONG\t-9223372036854775808\t0\n"
              "USER\t5\t127.0.2.1\t9223372036854775807\n"
              "USER\t6\t127.0.2.1\t-9223372036854775808\n"
              "HOST\t127.0.5.2\t19190\t1795393975\t127.0.2.2\t100\t\tD9223372036854775807\t\n"
              "SYNC\t127.0.5.2\t19190\t4294967295\t9\t4294967295\t0\n"
              "SYNC\t127.0.5.2\t19190\t1\t9\t4294967295\t0\n");
  g_assert_cmpuint(stats(s)->times_clamped, >=, 6);
  g_assert_cmpuint(stats(s)->protocol_errors, ==, 0);
  /* The user stamped at "the end of time" is stamped now instead (never in the future); the one
   * stamped before 1970 is already expired and ignored. */
  UsherUserInfo info;
  usher_director_lookup_user(s->d, s->wall_us, 5, NULL, &info);
  g_assert_true(info.found);
  g_assert_cmpuint(info.timestamp, ==, (guint32)T0);
  usher_director_lookup_user(s->d, s->wall_us, 6, NULL, &info);
  g_assert_false(info.found);
  /* The host went down with a clamped change time. */
  g_autoptr(GArray) hosts = usher_director_list_hosts(s->d);
  UsherHostInfo *h2 = &g_array_index(hosts, UsherHostInfo, 1);
  g_assert_cmpstr(h2->ip_str, ==, "127.0.2.2");
  g_assert_true(h2->down);
  /* ... no later than our clock allows (a far future would win every later comparison). */
  g_assert_cmpint(h2->last_updown_change, ==, s->wall_us / SEC + 300);
  solo_free(s);
}

/* A peer that says who it is and then trickles a line a byte at a time, never finishing its
 * handshake: the handshake timeout still runs (only complete lines restart it), and the link is
 * closed. */
static void
test_stalled_handshake(void)
{
  Solo *s = solo_new("127.0.5.1:19190 127.0.5.2:19190", NULL);
  UsherIp peer = ip("127.0.5.2");
  UsherConnId in = usher_director_peer_accepted(s->d, now(s), &peer);
  collect(s);
  feed(s, in, "VERSION\tdirector\t1\t9\nME\t127.0.5.2\t19190\t1795393974\n");
  guint secs = 0;
  while (s->last_closed != in && secs < 300) {
    tick(s, 10 * SEC);
    secs += 10;
    if (s->last_closed != in)
      feed(s, in, "H"); /* a line never finished */
  }
  g_assert_cmpuint(s->last_closed, ==, in);
  g_assert_cmpuint(secs, <=, 60); /* the handshake timeout, 40 s, and a tick */
  solo_free(s);
}

/* A peer that lies with sequence numbers, vhost counts and commands in our name. */
static void
test_peer_lies(void)
{
  Solo *s = solo_new("127.0.5.1:19190 127.0.5.2:19190", NULL);
  UsherConnId in = peer_joins_with_users(s, 10);
  collect(s);
  /* A USER-WEAK in our name, numbered at the top: dropped and counted, not taken as our counter
   * (which would wrap on our next command, and every later one would be dropped as seen). */
  feed(s, in, "USER-WEAK\t127.0.5.1\t19190\t4294967295\t77\t127.0.2.1\n");
  g_assert_cmpuint(stats(s)->forged_own_commands, ==, 1);
  UsherUserInfo info;
  usher_director_lookup_user(s->d, s->wall_us, 77, NULL, &info);
  g_assert_false(info.found);
  /* Backends at the largest vhost count a peer may give, until the tag's ring is full: the one
   * past it is refused (a ring rebuild would cost gigabytes) and counted. */
  GString *hosts = g_string_new(NULL);
  for (guint i = 1; i <= 41; i++)
    g_string_append_printf(hosts, "HOST\t127.0.5.2\t19190\t%u\t127.0.3.%u\t100000\t\tU0\t\n", 100 + i, i);
  feed(s, in, hosts->str);
  g_string_free(hosts, TRUE);
  g_assert_cmpuint(stats(s)->vhosts_refused, ==, 1);
  g_assert_cmpuint(stats(s)->protocol_errors, ==, 1);
  g_autoptr(GArray) list = usher_director_list_hosts(s->d);
  g_assert_cmpuint(list->len, ==, 3 + 40);
  solo_free(s);

  /* SYNCs that keep saying the peer's hosts differ: every host is flooded again, but not for
   * each of them. */
  s = solo_new("127.0.5.1:19190 127.0.5.2:19190", NULL);
  in = peer_joins_with_users(s, 10);
  collect(s);
  g_free(take_sent(s, in));
  guint64 mismatches = stats(s)->hosts_hash_mismatches;
  for (guint i = 0; i < 10; i++) {
    g_autofree char *line = g_strdup_printf("SYNC\t127.0.5.2\t19190\t%u\t9\t%" G_GINT64_FORMAT
                                            "\t12345\n", 1000 + i, s->wall_us / SEC);
    feed(s, in, line);
  }
  g_assert_cmpuint(stats(s)->hosts_hash_mismatches, ==, mismatches + 9);
  g_autofree char *sent = take_sent(s, in);
  guint host_lines = 0;
  for (const char *p = sent; (p = strstr(p, "HOST\t")) != NULL; p++)
    host_lines += p == sent || p[-1] == '\n';
  g_assert_cmpuint(host_lines, ==, 3); /* the three backends, once */
  /* A peer that says it is a director outside the ring, or us: refused and counted. */
  UsherIp peer = ip("127.0.5.2");
  UsherConnId x = usher_director_peer_accepted(s->d, now(s), &peer);
  feed(s, x, "VERSION\tdirector\t1\t9\nME\t127.0.9.9\t19190\t1795393974\n");
  UsherConnId y = usher_director_peer_accepted(s->d, now(s), &peer);
  feed(s, y, "VERSION\tdirector\t1\t9\nME\t127.0.5.1\t19190\t1795393974\n");
  g_assert_cmpuint(stats(s)->peers_refused, ==, 2);
  solo_free(s);
}

/* ---- Output backpressure -------------------------------------------------------------------------- */

/* Streams a 50000-user handshake to a peer whose socket takes `pause` bytes at a time (the
 * director's pause threshold for this configuration) and drains only to `resume`. */
static void
backpressure_run(const char *extra, gsize pause, gsize resume, guint min_rounds)
{
  const guint n_users = 50000;
  Solo *s = solo_new("127.0.5.1:19190 127.0.5.2:19190", extra);
  UsherConnId out = s->out;
  g_assert_cmpuint(out, !=, USHER_CONN_ID_NONE);
  (void)peer_joins_with_users(s, n_users);
  UsherRingInfo ring;
  usher_director_get_ring_info(s->d, &ring);
  g_assert_cmpuint(ring.n_users, ==, n_users);

  /* Our outgoing handshake to the same peer: the user list is sent only as fast as the driver
   * says the socket takes it. */
  usher_director_peer_connected(s->d, now(s), out);
  collect(s);
  g_free(take_sent(s, out));
  feed(s, out, "VERSION\tdirector\t1\t9\nME\t127.0.5.2\t19190\t1795393974\n");
  guint sent_users = 0, rounds = 0;
  for (;;) {
    g_autofree char *chunk = take_sent(s, out);
    g_assert_cmpuint(strlen(chunk), <=, pause + 1024);
    sent_users += count_lines(chunk, "U\t");
    if (strstr(chunk, "DONE\n") != NULL)
      break;
    g_assert_cmpuint(strlen(chunk), >, 0);
    /* What a full socket looks like: the figure is reported, nothing more is sent... */
    usher_director_peer_output_queued(s->d, now(s), out, strlen(chunk));
    collect(s);
    g_autofree char *none = take_sent(s, out);
    g_assert_cmpstr(none, ==, "");
    /* ...and DIRECTOR-LIST shows it buffered. */
    g_autoptr(GArray) members = usher_director_list_members(s->d);
    gboolean found = FALSE;
    for (guint i = 0; i < members->len; i++) {
      UsherMemberInfo *m = &g_array_index(members, UsherMemberInfo, i);
      if (m->conn == out) {
        g_assert_cmpuint(m->buffered, ==, strlen(chunk));
        g_assert_cmpuint(m->users_to_send, ==, n_users - sent_users);
        found = TRUE;
      }
    }
    g_assert_true(found);
    /* Draining, but not yet down to the resume mark: still nothing. */
    usher_director_peer_output_queued(s->d, now(s), out, resume + 1);
    collect(s);
    g_autofree char *still_none = take_sent(s, out);
    g_assert_cmpstr(still_none, ==, "");
    /* The socket drains: the stream goes on. */
    usher_director_peer_output_queued(s->d, now(s), out, resume);
    collect(s);
    g_assert_cmpuint(++rounds, <, 1000);
  }
  g_assert_cmpuint(sent_users, ==, n_users);
  g_assert_cmpuint(rounds, >=, min_rounds);
  g_assert_cmpuint(stats(s)->handshake_pauses, ==, rounds);
  solo_free(s);
}

static void
test_backpressure(void)
{
  backpressure_run(NULL, USHER_OUTPUT_PAUSE_BYTES, USHER_OUTPUT_RESUME_BYTES, 5);
}

/* With the smallest output_buffer_size (64 KiB) the stream must pause well below it, or the
 * driver, which drops a link whose buffer overflows, would cut every handshake. */
static void
test_backpressure_small_buffer(void)
{
  backpressure_run("[director]\noutput_buffer_size = 64k\n", 16 * 1024, 4 * 1024, 40);
}

static void
test_backpressure_timeout(void)
{
  /* A peer that never reads: the handshake stalls and is cut at the send-users timeout. */
  Solo *s = solo_new("127.0.5.1:19190 127.0.5.2:19190", NULL);
  UsherConnId out = s->out;
  (void)peer_joins_with_users(s, 20000);
  usher_director_peer_connected(s->d, now(s), out);
  feed(s, out, "VERSION\tdirector\t1\t9\nME\t127.0.5.2\t19190\t1795393974\n");
  g_autofree char *first = take_sent(s, out);
  g_assert_null(strstr(first, "DONE"));
  usher_director_peer_output_queued(s->d, now(s), out, strlen(first));
  collect(s);
  tick(s, 31 * SEC);
  g_autoptr(GArray) members = usher_director_list_members(s->d);
  for (guint i = 0; i < members->len; i++)
    g_assert_cmpuint(g_array_index(members, UsherMemberInfo, i).conn, !=, out);
  solo_free(s);
}

/* ---- Kicks and flush hooks that never finish ------------------------------------------------------ */

static void
test_kick_deadline(void)
{
  Solo *s = solo_new(NULL, "[director]\nmax_parallel_kicks = 2\n");
  usher_director_admin_user_kick(s->d, now(s), 1, NULL, "a", FALSE);
  usher_director_admin_user_kick(s->d, now(s), 2, NULL, "b", FALSE);
  usher_director_admin_user_kick(s->d, now(s), 3, NULL, "c", FALSE); /* waits for a slot */
  usher_director_admin_user_kick(s->d, now(s), 4, NULL, "d", TRUE);  /* nowait */
  collect(s);
  g_assert_cmpstr(reply(s, 1), ==, "OK");
  g_assert_cmpstr(reply(s, 2), ==, "OK");
  g_assert_null(reply(s, 3));
  g_assert_cmpstr(reply(s, 4), ==, "TRYAGAIN");
  g_assert_cmpuint(s->kicks->len, ==, 2);
  /* The driver never reports the kicks done: their slots come free at the kick deadline. */
  tick(s, (USHER_KICK_TIMEOUT_SECS - 1) * SEC);
  g_assert_null(reply(s, 3));
  tick(s, 2 * SEC);
  g_assert_cmpstr(reply(s, 3), ==, "OK");
  g_assert_cmpuint(stats(s)->kicks_timed_out, ==, 2);
  g_assert_cmpuint(stats(s)->admin_kicks, ==, 3);
  /* A late report is ignored. */
  usher_director_kick_done(s->d, now(s), g_array_index(s->kicks, guint64, 0));
  collect(s);

  /* A kick waiting for a slot gives up after the admin wait with TRYAGAIN. */
  usher_director_admin_user_kick(s->d, now(s), 5, NULL, "e", FALSE);
  usher_director_admin_user_kick(s->d, now(s), 6, NULL, "f", FALSE);
  collect(s);
  g_assert_cmpstr(reply(s, 5), ==, "OK"); /* the second slot (kick c holds the first) */
  g_assert_null(reply(s, 6));
  tick(s, (USHER_ADMIN_SYNC_WAIT_SECS - 5) * SEC);
  g_assert_null(reply(s, 6));
  tick(s, 6 * SEC);
  g_assert_nonnull(reply(s, 6)); /* OK if c timed out first, else TRYAGAIN: never wedged */
  UsherRingInfo ring;
  tick(s, USHER_KICK_TIMEOUT_SECS * SEC);
  usher_director_get_ring_info(s->d, &ring);
  g_assert_cmpuint(ring.kicks_running, ==, 0);
  g_assert_cmpuint(ring.admin_kicks_running, ==, 0);
  g_assert_cmpuint(ring.pending_admin_ops, ==, 0);
  solo_free(s);
}

static void
test_ring_kicks_take_no_slots(void)
{
  Solo *s = solo_new("127.0.5.1:19190 127.0.5.2:19190", "[director]\nmax_parallel_kicks = 1\n");
  UsherConnId in = peer_joins_with_users(s, 0);
  for (guint i = 0; i < 5; i++) {
    g_autofree char *line = g_strdup_printf("USER-KICK\t127.0.5.2\t19190\t%u\tuser%u\n",
                                            (guint)T0 + 10 + i, i);
    feed(s, in, line);
  }
  g_assert_cmpuint(s->kicks->len, ==, 5);
  UsherRingInfo ring;
  usher_director_get_ring_info(s->d, &ring);
  g_assert_cmpuint(ring.kicks_running, ==, 5);
  g_assert_cmpuint(ring.admin_kicks_running, ==, 0);
  usher_director_admin_user_kick(s->d, now(s), 1, NULL, "x", TRUE);
  collect(s);
  g_assert_cmpstr(reply(s, 1), ==, "OK");
  g_assert_cmpuint(stats(s)->kicks_sent, ==, 6);
  g_assert_cmpuint(stats(s)->admin_kicks, ==, 1);
  solo_free(s);
}

/* A standalone director with a flush hook moves user1 to another backend. */
static Solo *
start_move_with_flush(guint64 *flush_out)
{
  Solo *s = solo_new(NULL, "[director]\nflush_socket = unix:/run/flush\nuser_kick_delay = 3s\n");
  g_assert_true(usher_director_login_request(s->d, now(s), 1, "user1", NULL));
  collect(s);
  const char *where = login(s, 1);
  g_assert_nonnull(where);
  UsherIp target = ip(strcmp(where, "OK 127.0.2.1") == 0 ? "127.0.2.2" : "127.0.2.1");
  usher_director_admin_user_move(s->d, now(s), 1, usher_director_user_hash(s->d, "user1"),
                                 &target);
  collect(s);
  g_assert_cmpstr(reply(s, 1), ==, "OK");
  g_assert_cmpuint(s->kicks->len, ==, 1);
  usher_director_kick_done(s->d, now(s), g_array_index(s->kicks, guint64, 0));
  collect(s);
  g_assert_cmpuint(s->flushes->len, ==, 1);
  *flush_out = g_array_index(s->flushes, guint64, 0);
  return s;
}

static void
test_flush_deadline(void)
{
  guint64 flush;
  Solo *s = start_move_with_flush(&flush);
  g_assert_cmpuint(usher_director_count_moving_users(s->d), ==, 1);
  /* The hook never reports: it counts as failed, and the move waits user_kick_delay. */
  tick(s, USHER_FLUSH_TIMEOUT_SECS * SEC);
  g_assert_cmpuint(stats(s)->flushes_timed_out, ==, 1);
  g_assert_cmpuint(usher_director_count_moving_users(s->d), ==, 1);
  tick(s, 3 * SEC);
  g_assert_cmpuint(usher_director_count_moving_users(s->d), ==, 0);
  g_assert_cmpuint(stats(s)->moves_finished, ==, 1);
  g_assert_cmpuint(stats(s)->moves_timed_out, ==, 0);
  usher_director_flush_done(s->d, now(s), flush, TRUE); /* late: ignored */
  collect(s);
  solo_free(s);

  s = start_move_with_flush(&flush);
  usher_director_flush_done(s->d, now(s), flush, FALSE);
  collect(s);
  g_assert_cmpuint(stats(s)->flushes_failed, ==, 1);
  g_assert_cmpuint(usher_director_count_moving_users(s->d), ==, 1);
  tick(s, 3 * SEC);
  g_assert_cmpuint(usher_director_count_moving_users(s->d), ==, 0);
  solo_free(s);
}

/* ---- Login requests ------------------------------------------------------------------------------- */

static void
test_login_cancel_and_duplicate(void)
{
  /* A ring that has not formed yet: requests wait. */
  Solo *s = solo_new("127.0.5.1:19190 127.0.5.2:19190", NULL);
  g_assert_true(usher_director_login_request(s->d, now(s), 7, "user1", NULL));
  g_assert_true(usher_director_login_request(s->d, now(s), 8, "user2", NULL));
  collect(s);
  g_assert_cmpuint(usher_director_count_pending_requests(s->d), ==, 2);
  /* The same id again: refused, and no effect at all (no answer that could be mistaken for
   * request 7's). */
  g_assert_false(usher_director_login_request(s->d, now(s), 7, "other", NULL));
  g_autoptr(GArray) none = usher_director_take_effects(s->d);
  for (guint i = 0; i < none->len; i++)
    g_assert_cmpint(g_array_index(none, UsherEffect, i).type, ==, USHER_EFFECT_LOG);
  g_assert_cmpuint(stats(s)->requests_refused, ==, 1);
  /* The client of request 7 goes away. */
  usher_director_login_cancel(s->d, now(s), 7);
  usher_director_login_cancel(s->d, now(s), 12345); /* unknown: ignored */
  collect(s);
  g_assert_cmpuint(usher_director_count_pending_requests(s->d), ==, 1);
  g_assert_cmpuint(stats(s)->requests_cancelled, ==, 1);
  /* The id is free again once cancelled. */
  g_assert_true(usher_director_login_request(s->d, now(s), 7, "user3", NULL));
  collect(s);
  tick(s, (USHER_REQUEST_TIMEOUT_SECS + 1) * SEC);
  g_assert_cmpuint(s->login_results, ==, 2); /* 8 and the new 7, each once */
  g_assert_true(g_str_has_prefix(login(s, 7), "FAIL"));
  g_assert_true(g_str_has_prefix(login(s, 8), "FAIL"));
  solo_free(s);
}

/* ---- Bounds ---------------------------------------------------------------------------------------- */

static void
test_bounds(void)
{
  /* Admin operations waiting for the ring. */
  Solo *s = solo_new("127.0.5.1:19190 127.0.5.2:19190", NULL);
  UsherIp b1 = ip("127.0.2.1");
  for (guint op = 1; op <= USHER_ADMIN_MAX_PENDING + 1; op++)
    usher_director_admin_host_set_down(s->d, now(s), op, &b1, TRUE);
  collect(s);
  g_assert_cmpuint(g_hash_table_size(s->replies), ==, 1);
  g_assert_cmpstr(reply(s, USHER_ADMIN_MAX_PENDING + 1), ==,
                  "too many admin commands waiting - try again later");
  g_assert_cmpuint(stats(s)->admin_refused, ==, 1);

  /* Log lines from one call: a flood of stale PINGs from a peer. */
  UsherConnId in = peer_joins_with_users(s, 0);
  s->logs = 0;
  GString *pings = g_string_new(NULL);
  for (guint i = 0; i < 3000; i++)
    g_string_append(pings, "PING\t1\t0\n");
  feed(s, in, pings->str);
  g_string_free(pings, TRUE);
  g_assert_cmpuint(s->logs, <=, 1000);
  g_assert_cmpuint(stats(s)->logs_suppressed, >=, 2000);
  solo_free(s);

  /* Tags. */
  s = solo_new(NULL, NULL);
  guint refused_op = 0;
  for (guint i = 0; i < USHER_TAGS_MAX + 5; i++) {
    UsherIp h = {.family = USHER_IP_V4, .addr = {10, 1, (guint8)(i >> 8), (guint8)i}};
    g_autofree char *tag = g_strdup_printf("t%u", i);
    usher_director_admin_host_set(s->d, now(s), 100 + i, &h, tag, 1);
    collect(s);
    if (refused_op == 0 && g_strcmp0(reply(s, 100 + i), "too many tags") == 0)
      refused_op = 100 + i;
  }
  /* "" exists from the start: the 1024th new tag is one too many. */
  g_assert_cmpuint(refused_op, ==, 100 + USHER_TAGS_MAX - 1);
  g_assert_cmpuint(stats(s)->tags_refused, ==, 6);
  solo_free(s);
}

static void
test_pending_requests_bound(void)
{
  if (g_getenv("USHER_TEST_SMALL") != NULL) {
    g_test_skip("100,001 requests: too slow under valgrind");
    return;
  }
  Solo *s = solo_new("127.0.5.1:19190 127.0.5.2:19190", NULL);
  for (guint64 i = 1; i <= 100001; i++)
    g_assert_true(usher_director_login_request(s->d, now(s), i, "user", NULL));
  collect(s);
  g_assert_cmpuint(usher_director_count_pending_requests(s->d), ==, 100000);
  g_assert_cmpstr(login(s, 100001), ==, "FAIL too many pending requests");
  g_assert_cmpuint(stats(s)->requests_refused, ==, 1);
  solo_free(s);
}

/* ---- Read-only queries ------------------------------------------------------------------------------ */

static gint
entry_cmp(gconstpointer a, gconstpointer b)
{
  const UsherUserEntry *x = a, *y = b;
  if (x->hash != y->hash)
    return x->hash < y->hash ? -1 : 1;
  if (x->timestamp != y->timestamp)
    return x->timestamp < y->timestamp ? -1 : 1;
  return memcmp(&x->host, &y->host, sizeof(x->host));
}

static void
test_queries(void)
{
  Solo *s = solo_new(NULL, NULL);
  for (guint64 i = 1; i <= 60; i++) {
    g_autofree char *name = g_strdup_printf("user%" G_GUINT64_FORMAT, i);
    g_assert_true(usher_director_login_request(s->d, now(s), i, name, NULL));
  }
  collect(s);
  UsherIp b3 = ip("127.0.2.3");
  usher_director_admin_host_remove(s->d, now(s), 1, &b3);
  UsherIp b9 = ip("127.0.2.9");
  usher_director_admin_host_set(s->d, now(s), 2, &b9, NULL, 50);
  collect(s);
  g_assert_cmpstr(reply(s, 1), ==, "OK");

  /* HOST-LIST and HOST-LIST-REMOVED. */
  g_autoptr(GArray) hosts = usher_director_list_hosts(s->d);
  g_assert_cmpuint(hosts->len, ==, 3);
  g_assert_cmpstr(g_array_index(hosts, UsherHostInfo, 2).ip_str, ==, "127.0.2.9");
  g_assert_cmpuint(g_array_index(hosts, UsherHostInfo, 2).vhost_count, ==, 50);
  g_autoptr(GArray) removed = usher_director_list_removed_hosts(s->d);
  g_assert_cmpuint(removed->len, ==, 1);
  g_assert_true(usher_ip_equal(&g_array_index(removed, UsherIp, 0), &b3));

  /* A read changes nothing, even right after a change that left a ring to rebuild. */
  guint64 generation = usher_host_table_get_generation(usher_director_get_hosts(s->d));
  guint64 fingerprint = usher_director_state_fingerprint(s->d);
  guint moved_from_initial = 0, users_on_hosts = 0;
  for (guint i = 1; i <= 60; i++) {
    g_autofree char *name = g_strdup_printf("user%u", i);
    UsherUserInfo info;
    usher_director_lookup_user(s->d, s->wall_us, usher_director_user_hash(s->d, name), NULL,
                               &info);
    g_assert_true(info.tag_known);
    g_assert_cmpint(info.hashed.family, ==, USHER_IP_V4);
    g_assert_cmpint(info.initial.family, ==, USHER_IP_V4);
    /* The initial configuration still has 127.0.2.3 and not 127.0.2.9. */
    g_assert_false(usher_ip_equal(&info.initial, &b9));
    g_assert_false(usher_ip_equal(&info.hashed, &b3));
    if (usher_ip_equal(&info.initial, &b3)) {
      g_assert_false(info.found); /* its users went with it */
      moved_from_initial++;
    } else {
      g_assert_true(info.found);
      g_assert_cmpuint(info.expires, ==, info.timestamp + 15 * 60);
      users_on_hosts++;
    }
  }
  g_assert_cmpuint(moved_from_initial, >, 0);
  g_assert_cmpuint(usher_host_table_get_generation(usher_director_get_hosts(s->d)), ==,
                   generation);
  g_assert_cmpuint(usher_director_state_fingerprint(s->d), ==, fingerprint);

  /* The hashed answer of a lookup is where a login of a new user goes. */
  for (guint i = 61; i <= 90; i++) {
    g_autofree char *name = g_strdup_printf("user%u", i);
    UsherUserInfo info;
    usher_director_lookup_user(s->d, s->wall_us, usher_director_user_hash(s->d, name), NULL,
                               &info);
    g_assert_false(info.found);
    g_assert_true(usher_director_login_request(s->d, now(s), 1000 + i, name, NULL));
    collect(s);
    char expected[64], buf[USHER_IP_STRLEN];
    g_snprintf(expected, sizeof(expected), "OK %s", usher_ip_to_string(&info.hashed, buf));
    g_assert_cmpstr(login(s, 1000 + i), ==, expected);
  }

  /* USER-LIST: all, and per host; entries are oldest first. */
  g_autoptr(GArray) all = usher_director_list_users(s->d, NULL);
  g_assert_cmpuint(all->len, ==, users_on_hosts + 30);
  guint per_host = 0;
  for (guint i = 0; i < hosts->len; i++) {
    UsherHostInfo *h = &g_array_index(hosts, UsherHostInfo, i);
    g_autoptr(GArray) some = usher_director_list_users(s->d, &h->ip);
    per_host += some->len;
    for (guint k = 0; k < some->len; k++)
      g_assert_true(usher_ip_equal(&g_array_index(some, UsherUserEntry, k).host, &h->ip));
  }
  g_assert_cmpuint(per_host, ==, all->len);
  for (guint k = 1; k < all->len; k++)
    g_assert_cmpuint(g_array_index(all, UsherUserEntry, k - 1).timestamp, <=,
                     g_array_index(all, UsherUserEntry, k).timestamp);
  g_autoptr(GArray) nobody = usher_director_list_users(s->d, &b3);
  g_assert_cmpuint(nobody->len, ==, 0);
  /* In memory order: the same entries, free slots skipped. */
  g_autoptr(GArray) stored = usher_director_list_users_stored(s->d);
  g_autoptr(GArray) sorted = g_array_copy(all);
  g_array_sort(stored, entry_cmp);
  g_array_sort(sorted, entry_cmp);
  g_assert_cmpuint(stored->len, ==, sorted->len);
  for (guint k = 0; k < stored->len; k++)
    g_assert_cmpint(entry_cmp(&g_array_index(stored, UsherUserEntry, k),
                              &g_array_index(sorted, UsherUserEntry, k)), ==, 0);

  /* An unknown tag: nothing current, nothing hashed. */
  UsherUserInfo info;
  usher_director_lookup_user(s->d, s->wall_us, 12345, "nosuchtag", &info);
  g_assert_false(info.tag_known);
  g_assert_false(info.found);
  g_assert_cmpint(info.hashed.family, ==, 0);

  /* DIRECTOR-LIST of a standalone director: itself. */
  g_autoptr(GArray) members = usher_director_list_members(s->d);
  g_assert_cmpuint(members->len, ==, 1);
  g_assert_true(g_array_index(members, UsherMemberInfo, 0).self);
  g_assert_cmpint(g_array_index(members, UsherMemberInfo, 0).role, ==, USHER_LINK_NONE);
  solo_free(s);
}

static void
test_query_members(void)
{
  Solo *s = solo_new("127.0.5.1:19190 127.0.5.2:19190 127.0.5.3:19190", NULL);
  UsherConnId in = peer_joins_with_users(s, 3);
  UsherIp stranger = ip("127.0.5.3");
  UsherConnId early = usher_director_peer_accepted(s->d, now(s), &stranger); /* no ME yet */
  collect(s);
  g_autoptr(GArray) members = usher_director_list_members(s->d);
  /* The connection whose ME has not come first, then .1 self, .2 with its incoming link (our
   * left), .3 with our outgoing dial. */
  gboolean saw_left = FALSE, saw_self = FALSE, saw_anonymous = FALSE;
  for (guint i = 0; i < members->len; i++) {
    UsherMemberInfo *m = &g_array_index(members, UsherMemberInfo, i);
    if (m->self)
      saw_self = TRUE;
    if (m->conn == in) {
      g_assert_cmpint(m->role, ==, USHER_LINK_LEFT);
      g_assert_true(m->handshaked);
      g_assert_cmpuint(m->users_received, ==, 3);
      g_assert_cmpint(m->last_input, ==, T0);
      saw_left = TRUE;
    }
    if (m->conn == early) {
      g_assert_false(m->has_addr);
      g_assert_cmpint(m->role, ==, USHER_LINK_IN);
      g_assert_cmpuint(i, ==, 0);
      saw_anonymous = TRUE;
    }
  }
  g_assert_true(saw_left && saw_self && saw_anonymous);
  solo_free(s);
}

/* ---- The login hasher, from many threads ------------------------------------------------------------ */

typedef struct {
  const UsherLoginHasher *hasher;
  const guint32 *expected;
  guint n;
  gboolean ok;
} HashJob;

static gpointer
hash_job(gpointer p)
{
  HashJob *job = p;
  job->ok = TRUE;
  for (guint round = 0; round < 5; round++)
    for (guint i = 0; i < job->n; i++) {
      char name[64];
      g_snprintf(name, sizeof(name), "User%u@Example.COM*admin", i);
      if (usher_login_hasher_hash(job->hasher, name, -1) != job->expected[i])
        job->ok = FALSE;
    }
  return NULL;
}

static void
test_hasher(void)
{
  Solo *s = solo_new(NULL, "[director]\nmaster_user_separator = *\n");
  const UsherLoginHasher *hasher = usher_director_get_hasher(s->d);
  /* The cut at the separator, as the director itself hashes. */
  g_assert_cmpuint(usher_login_hasher_cut(hasher, "user*master", 11), ==, 4);
  g_assert_cmpuint(usher_login_hasher_hash(hasher, "user*master", -1), ==,
                   usher_user_hash("user", -1, "%Lu"));
  g_assert_cmpuint(usher_director_user_hash(s->d, "user*master"), ==,
                   usher_login_hasher_hash(hasher, "user", -1));
  /* One built from the same configuration agrees. */
  g_autoptr(GError) error = NULL;
  g_autoptr(UsherLoginHasher) own = usher_login_hasher_new("%Lu", "*", &error);
  g_assert_no_error(error);
  g_assert_null(usher_login_hasher_new("%Q", NULL, &error));
  g_assert_nonnull(error);

  const guint n = 2000;
  g_autofree guint32 *expected = g_new(guint32, n);
  for (guint i = 0; i < n; i++) {
    char name[64];
    g_snprintf(name, sizeof(name), "User%u@Example.COM*admin", i);
    expected[i] = usher_director_user_hash(s->d, name);
    g_assert_cmpuint(usher_login_hasher_hash(own, name, -1), ==, expected[i]);
  }
  /* Several worker threads at once on the director's hasher, while the owner thread keeps
   * using the director. */
  HashJob jobs[4];
  GThread *threads[4];
  for (guint t = 0; t < 4; t++) {
    jobs[t] = (HashJob){hasher, expected, n, FALSE};
    threads[t] = g_thread_new("hash", hash_job, &jobs[t]);
  }
  for (guint64 i = 1; i <= 200; i++) {
    g_autofree char *name = g_strdup_printf("busy%" G_GUINT64_FORMAT, i);
    usher_director_login_request(s->d, now(s), i, name, NULL);
    collect(s);
  }
  for (guint t = 0; t < 4; t++) {
    g_thread_join(threads[t]);
    g_assert_true(jobs[t].ok);
  }
  solo_free(s);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/core/director/time-contract", test_time_contract);
  g_test_add_func("/core/director/peer-times", test_peer_times);
  g_test_add_func("/core/director/peer-lies", test_peer_lies);
  g_test_add_func("/core/director/stalled-handshake", test_stalled_handshake);
  g_test_add_func("/core/director/backpressure", test_backpressure);
  g_test_add_func("/core/director/backpressure-small-buffer", test_backpressure_small_buffer);
  g_test_add_func("/core/director/backpressure-timeout", test_backpressure_timeout);
  g_test_add_func("/core/director/kick-deadline", test_kick_deadline);
  g_test_add_func("/core/director/ring-kicks-take-no-slots", test_ring_kicks_take_no_slots);
  g_test_add_func("/core/director/flush-deadline", test_flush_deadline);
  g_test_add_func("/core/director/login-cancel-and-duplicate", test_login_cancel_and_duplicate);
  g_test_add_func("/core/director/bounds", test_bounds);
  g_test_add_func("/core/director/pending-requests-bound", test_pending_requests_bound);
  g_test_add_func("/core/director/queries", test_queries);
  g_test_add_func("/core/director/query-members", test_query_members);
  g_test_add_func("/core/director/hasher", test_hasher);
  return g_test_run();
}

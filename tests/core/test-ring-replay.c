/* test-ring-replay.c - one Usher director against a scripted peer that plays the lines a real
 * Dovecot 2.3.19.1 director sent in the lab (spec sections 4.3, 4.6.2 and 5.1); the bytes Usher
 * sends are compared with what the real director sent in the same situation. One deliberate
 * difference shows: Usher numbers its sequenced commands from the UNIX time it started
 * (1795393974 here) where Dovecot starts at 0 (doc/ring-protocol.md). */
#include "libcore/config.h"
#include "libcore/director.h"
#include "libcore/host.h"

#include <string.h>

#define T0 G_GINT64_CONSTANT(1795393974)
#define SEC G_GINT64_CONSTANT(1000000)

typedef struct {
  UsherDirector *d;
  gint64 mono_us, wall_us;
  UsherConnId out;   /* our connection to the peer (from CONNECT) */
  UsherConnId in;    /* the peer's connection to us */
  GString *sent_out; /* bytes sent on out */
  GString *sent_in;  /* bytes sent on in */
  guint kicks;
  GPtrArray *kick_ids;
} Replay;

static UsherNow
now(Replay *r)
{
  return (UsherNow){r->mono_us, r->wall_us};
}

static void
collect(Replay *r)
{
  g_autoptr(GArray) effects = usher_director_take_effects(r->d);
  for (guint i = 0; i < effects->len; i++) {
    UsherEffect *e = &g_array_index(effects, UsherEffect, i);
    switch (e->type) {
    case USHER_EFFECT_CONNECT:
      r->out = e->connect.conn;
      break;
    case USHER_EFFECT_SEND:
      g_string_append_len(e->send.conn == r->out ? r->sent_out : r->sent_in, e->send.data,
                          (gssize)e->send.len);
      break;
    case USHER_EFFECT_KICK:
      r->kicks++;
      g_ptr_array_add(r->kick_ids, g_memdup2(&e->kick.id, sizeof(guint64)));
      break;
    default:
      break;
    }
  }
}

static Replay *
replay_new(const char *extra)
{
  Replay *r = g_new0(Replay, 1);
  r->mono_us = 10 * SEC;
  r->wall_us = T0 * SEC;
  r->sent_out = g_string_new(NULL);
  r->sent_in = g_string_new(NULL);
  r->kick_ids = g_ptr_array_new_with_free_func(g_free);
  g_autofree char *text = g_strdup_printf(
    "[ring]\ndirectors = 127.0.5.1:19190 127.0.5.2:19190\n[backends]\n"
    "hosts = 127.0.2.1 127.0.2.2 127.0.2.3\n%s",
    extra != NULL ? extra : "");
  g_autoptr(GError) error = NULL;
  g_autoptr(UsherConfig) config = usher_config_parse(text, strlen(text), "replay.conf", &error);
  g_assert_no_error(error);
  UsherRingAddr self;
  g_assert_true(usher_ip_parse("127.0.5.1", -1, &self.ip));
  self.port = 19190;
  r->d = usher_director_new(config, &self, 1, now(r), &error);
  g_assert_no_error(error);
  return r;
}

static void
replay_free(Replay *r)
{
  usher_director_free(r->d);
  g_string_free(r->sent_out, TRUE);
  g_string_free(r->sent_in, TRUE);
  g_ptr_array_unref(r->kick_ids);
  g_free(r);
}

static void
feed(Replay *r, UsherConnId conn, const char *text)
{
  usher_director_peer_bytes(r->d, now(r), conn, text, strlen(text));
  collect(r);
}

static char *
take(GString *s)
{
  char *out = g_strdup(s->str);
  g_string_truncate(s, 0);
  return out;
}

/* Lines of text that start with prefix, in order. */
static char *
grep(const char *text, const char *prefix)
{
  GString *out = g_string_new(NULL);
  g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
  for (guint i = 0; lines[i] != NULL; i++)
    if (g_str_has_prefix(lines[i], prefix))
      g_string_append_printf(out, "%s\n", lines[i]);
  return g_string_free(out, FALSE);
}

/* Spec 4.3: the outgoing handshake of a fresh director, byte for byte as Dovecot sent it, but
 * for one deliberate difference: OPTIONS carries Usher's extension token too, which Dovecot
 * ignores (director_handshake_cmd_options() only looks for consistent-hashing). */
static void
handshake_out_with(Replay *r, gboolean usher_peer)
{
  usher_director_start(r->d, now(r));
  collect(r);
  g_assert_cmpuint(r->out, !=, USHER_CONN_ID_NONE);
  usher_director_peer_connected(r->d, now(r), r->out);
  collect(r);
  g_autofree char *hello = take(r->sent_out);
  g_assert_cmpstr(hello, ==,
                  "VERSION\tdirector\t1\t9\n"
                  "ME\t127.0.5.1\t19190\t1795393974\n"
                  "DIRECTOR\t127.0.5.1\t19190\n"
                  "DIRECTOR\t127.0.5.2\t19190\n");
  feed(r, r->out, "VERSION\tdirector\t1\t9\n");
  g_autofree char *state = take(r->sent_out);
  g_assert_cmpstr(state, ==,
                  "HOST-HAND-START\t0\n"
                  "HOST\t127.0.2.1\t100\t\tU0\t\n"
                  "HOST\t127.0.2.2\t100\t\tU0\t\n"
                  "HOST\t127.0.2.3\t100\t\tU0\t\n"
                  "HOST-HAND-END\t0\n"
                  "OPTIONS\tconsistent-hashing\tx-usher-1\n"
                  "DONE\n");
  r->wall_us += 6 * SEC;
  r->mono_us += 6 * SEC;
  feed(r, r->out,
       usher_peer ? "ME\t127.0.5.2\t19190\t1795393974\nOPTIONS\tconsistent-hashing\tx-usher-1\nDONE\n"
                  : "ME\t127.0.5.2\t19190\t1795393974\nDONE\n");
  /* Now our right: the first SYNC goes out (spec 4.8 lab line), then a PING. Dovecot numbers
   * its SYNCs from 1; Usher from the UNIX time it started at (1795393974), so that a restart
   * is not taken for a stale SYNC (doc/ring-protocol.md, deliberate differences). */
  g_autofree char *after = take(r->sent_out);
  g_autofree char *sync = grep(after, "SYNC");
  g_assert_cmpstr(sync, ==, "SYNC\t127.0.5.1\t19190\t1795393975\t9\t1795393980\t2123223524\n");
  g_assert_true(g_str_has_prefix(after, "SYNC\t"));
  g_assert_nonnull(strstr(after, "PING\t1795393980\t"));
}

static void
handshake_out(Replay *r)
{
  handshake_out_with(r, FALSE);
}

static void
test_handshake_out(void)
{
  Replay *r = replay_new(NULL);
  handshake_out(r);
  replay_free(r);
}

/* The peer connects to us as well (a two-member ring uses both links to the same peer) and the
 * ring completes when our SYNC comes back. */
static void
complete_ring_with(Replay *r, gboolean usher_peer)
{
  handshake_out_with(r, usher_peer);
  UsherIp peer;
  g_assert_true(usher_ip_parse("127.0.5.2", -1, &peer));
  r->in = usher_director_peer_accepted(r->d, now(r), &peer);
  g_assert_cmpuint(r->in, !=, USHER_CONN_ID_NONE);
  collect(r);
  g_autofree char *hello = take(r->sent_in);
  g_assert_cmpstr(hello, ==, "VERSION\tdirector\t1\t9\nME\t127.0.5.1\t19190\t1795393980\n");
  feed(r, r->in,
       "VERSION\tdirector\t1\t9\n"
       "ME\t127.0.5.2\t19190\t1795393980\n"
       "DIRECTOR\t127.0.5.1\t19190\n"
       "DIRECTOR\t127.0.5.2\t19190\n"
       "HOST-HAND-START\t0\n"
       "HOST\t127.0.2.1\t100\t\tU0\t\n"
       "HOST\t127.0.2.2\t100\t\tU0\t\n"
       "HOST\t127.0.2.3\t100\t\tU0\t\n"
       "HOST-HAND-END\t0\n");
  feed(r, r->in,
       usher_peer ? "OPTIONS\tconsistent-hashing\tx-usher-1\nDONE\n"
                  : "OPTIONS\tconsistent-hashing\nDONE\n");
  g_autofree char *done = take(r->sent_in);
  if (usher_peer) {
    /* An usherd peer gets our token back before DONE. */
    g_assert_true(g_str_has_prefix(done, "OPTIONS\tconsistent-hashing\tx-usher-1\nDONE\n"));
  } else {
    /* A Dovecot peer (no extension token) gets Dovecot's exact answer: DONE, no OPTIONS. */
    g_assert_true(g_str_has_prefix(done, "DONE\n"));
    g_assert_null(strstr(done, "OPTIONS"));
  }
  g_assert_cmpstr(usher_director_get_left(r->d) != NULL ? "left" : "none", ==, "left");
  /* Our SYNC, forwarded by the peer, returns on the left link: the ring is handshaked. The seq
   * is whatever we sent last (adopting the left started a new round). */
  g_autofree char *syncs = grep(r->sent_out->str, "SYNC");
  g_strchomp(syncs);
  const char *last = strrchr(syncs, '\n') != NULL ? strrchr(syncs, '\n') + 1 : syncs;
  g_autofree char *line = g_strdup_printf("%s\n", last);
  feed(r, r->in, line);
  g_assert_true(usher_director_is_ring_handshaked(r->d));
  g_assert_true(usher_director_is_ring_synced(r->d));
  g_string_truncate(r->sent_out, 0);
  g_string_truncate(r->sent_in, 0);
}

static void
complete_two_member_ring(Replay *r)
{
  complete_ring_with(r, FALSE);
}

static void
advance(Replay *r, gint64 us)
{
  r->mono_us += us;
  r->wall_us += us;
  usher_director_on_deadline(r->d, now(r));
  collect(r);
}

/* Between usherd peers a silent link gets a PING after 1 s and is closed after
 * usher_ping_timeout (2 s) more without input; a Dovecot peer keeps Dovecot's 15 s / 30 s. */
static void
test_usher_peer_ping(void)
{
  Replay *r = replay_new(NULL);
  complete_ring_with(r, TRUE);
  g_assert_cmpuint(usher_director_get_stats(r->d)->links_with_extension, ==, 2);
  /* The PINGs of the handshake are answered; then both links go quiet. */
  feed(r, r->out, "PONG\t1795393980\t0\n");
  feed(r, r->in, "PONG\t1795393980\t0\n");
  g_string_truncate(r->sent_out, 0);
  g_string_truncate(r->sent_in, 0);
  advance(r, SEC + SEC / 10);
  g_assert_true(g_str_has_prefix(r->sent_out->str, "PING\t"));
  g_assert_true(g_str_has_prefix(r->sent_in->str, "PING\t"));
  advance(r, SEC);
  g_assert_nonnull(usher_director_get_right(r->d));
  advance(r, SEC);
  /* 1.1 + 2 s after the last input: both links are gone. */
  g_assert_null(usher_director_get_right(r->d));
  g_assert_null(usher_director_get_left(r->d));
  replay_free(r);

  r = replay_new(NULL);
  complete_ring_with(r, FALSE);
  g_assert_cmpuint(usher_director_get_stats(r->d)->links_with_extension, ==, 0);
  feed(r, r->out, "PONG\t1795393980\t0\n");
  feed(r, r->in, "PONG\t1795393980\t0\n");
  g_string_truncate(r->sent_out, 0);
  advance(r, 5 * SEC);
  g_assert_null(strstr(r->sent_out->str, "PING"));
  g_assert_nonnull(usher_director_get_right(r->d));
  g_assert_nonnull(usher_director_get_left(r->d));
  replay_free(r);
}

/* X-USHER-HEALTH: refused (QUIT) from a peer that did not announce the extension; from one that
 * did, stored and passed on to the other usherd links, and not passed back. */
static void
test_usher_health_report(void)
{
  const char *report = "X-USHER-HEALTH\t127.0.5.2\t19190\t1795393000\t7\t2000\t127.0.2.1\t-\t1\n";
  Replay *r = replay_new(NULL);
  complete_ring_with(r, TRUE);
  feed(r, r->in, report);
  g_assert_cmpuint(usher_director_get_stats(r->d)->health_reports_received, ==, 1);
  g_assert_cmpstr(r->sent_out->str, ==, report);
  g_assert_cmpstr(r->sent_in->str, ==, "");
  /* The same report again (the other way round the ring) is dropped. */
  g_string_truncate(r->sent_out, 0);
  feed(r, r->out, report);
  g_assert_cmpuint(usher_director_get_stats(r->d)->health_reports_received, ==, 1);
  g_assert_cmpstr(r->sent_in->str, ==, "");
  /* A report naming a director outside the ring is refused, not passed on. */
  feed(r, r->in, "X-USHER-HEALTH\t10.9.9.9\t19190\t1\t1\t2000\t-\t-\t1\n");
  g_assert_cmpuint(usher_director_get_stats(r->d)->health_reports_refused, ==, 1);
  g_assert_cmpstr(r->sent_out->str, ==, "");
  /* Malformed lists are protocol errors. */
  feed(r, r->in, "X-USHER-HEALTH\t127.0.5.2\t19190\t1795393000\t8\t2000\t127.0.2.x\t-\t1\n");
  g_assert_cmpuint(usher_director_get_stats(r->d)->protocol_errors, ==, 1);
  replay_free(r);

  r = replay_new(NULL);
  complete_two_member_ring(r);
  feed(r, r->in, report);
  g_assert_true(g_str_has_prefix(r->sent_in->str, "QUIT\t"));
  g_assert_cmpuint(usher_director_get_stats(r->d)->protocol_errors, ==, 1);
  replay_free(r);
}

/* Spec 4.6.2 [lab]: user1 is on .2 here; a USER claims .1. The lower IP wins: we kick the user's
 * sessions on other backends and send the corrected USER both ways, the sender included. */
static void
test_user_conflict(void)
{
  Replay *r = replay_new(NULL);
  complete_two_member_ring(r);
  guint64 login = 7;
  usher_director_login_request(r->d, now(r), login, "user1", NULL);
  collect(r);
  g_string_truncate(r->sent_out, 0);
  g_string_truncate(r->sent_in, 0);
  r->wall_us += SEC;
  g_autofree char *claim =
    g_strdup_printf("USER\t617210206\t127.0.2.1\t%" G_GINT64_FORMAT "\n", r->wall_us / SEC);
  guint kicks = r->kicks;
  feed(r, r->in, claim);
  g_autofree char *want = g_strdup_printf(
    "USER-KICK-HASH\t127.0.5.1\t19190\t1795393975\t617210206\t127.0.2.1\n"
    "USER\t617210206\t127.0.2.1\t%" G_GINT64_FORMAT "\n",
    r->wall_us / SEC);
  g_autofree char *got_out = take(r->sent_out);
  g_autofree char *got_in = take(r->sent_in);
  g_assert_cmpstr(got_out, ==, want);
  g_assert_cmpstr(got_in, ==, want);
  g_assert_cmpuint(r->kicks, ==, kicks + 1);

  /* user2 is on .1; a claim for .3 is refused: .1 stays, sessions elsewhere are kicked. */
  usher_director_login_request(r->d, now(r), 8, "user2", NULL);
  collect(r);
  g_string_truncate(r->sent_out, 0);
  g_string_truncate(r->sent_in, 0);
  feed(r, r->in, "USER\t2119751227\t127.0.2.3\t1795393981\n");
  g_autofree char *refused = take(r->sent_out);
  g_assert_true(g_str_has_prefix(refused, "USER-KICK-HASH\t127.0.5.1\t19190\t1795393976\t2119751227\t127.0.2.1\n"));
  replay_free(r);
}

/* A command flooded to a connection whose peer has not sent VERSION yet waits for it, and then
 * goes out in the peer's format: a USER keeps its timestamp. Dovecot sends it at once in the
 * minor-0 shape, without the timestamp (doc/ring-protocol.md; ushersim swarm seed 12312). */
static void
test_flood_before_version(void)
{
  Replay *r = replay_new(NULL);
  complete_two_member_ring(r);
  /* The peer dials us again (say it restarted and its old link has not timed out yet). */
  UsherIp peer;
  g_assert_true(usher_ip_parse("127.0.5.2", -1, &peer));
  UsherConnId second = usher_director_peer_accepted(r->d, now(r), &peer);
  g_assert_cmpuint(second, !=, USHER_CONN_ID_NONE);
  collect(r);
  g_string_truncate(r->sent_in, 0);
  usher_director_login_request(r->d, now(r), 9, "user1", NULL);
  collect(r);
  g_autofree char *want =
    g_strdup_printf("USER\t617210206\t127.0.2.2\t%" G_GINT64_FORMAT "\n", r->wall_us / SEC);
  g_autofree char *before = grep(r->sent_in->str, "USER");
  g_assert_cmpstr(before, ==, want); /* the established link only */
  g_assert_cmpuint(usher_director_get_stats(r->d)->floods_held, ==, 1);
  g_string_truncate(r->sent_in, 0);
  feed(r, second, "VERSION\tdirector\t1\t9\n");
  g_autofree char *after = grep(r->sent_in->str, "USER");
  g_assert_cmpstr(after, ==, want);
  replay_free(r);
}

/* The hold queue is bounded: a peer that never sends VERSION gets at most CONN_HELD_FLOODS_MAX
 * (100000) commands held; the rest go out at once in the old shape, and both are counted. */
static void
test_flood_hold_limit(void)
{
  Replay *r = replay_new(NULL);
  complete_two_member_ring(r);
  UsherIp peer;
  g_assert_true(usher_ip_parse("127.0.5.2", -1, &peer));
  UsherConnId silent = usher_director_peer_accepted(r->d, now(r), &peer);
  g_assert_cmpuint(silent, !=, USHER_CONN_ID_NONE);
  collect(r);
  /* Each login floods one USER line of 30-40 bytes; the hold queue takes 1 MiB of them. */
  const guint logins = 100000;
  for (guint i = 0; i < logins; i++) {
    g_autofree char *name = g_strdup_printf("hold%u", i);
    g_assert_true(usher_director_login_request(r->d, now(r), 100 + i, name, NULL));
    g_array_unref(usher_director_take_effects(r->d)); /* keep memory flat */
  }
  const UsherDirectorStats *st = usher_director_get_stats(r->d);
  g_assert_cmpuint(st->floods_held, >=, 1024 * 1024 / 40);
  g_assert_cmpuint(st->floods_held, <=, 1024 * 1024 / 30 + 1);
  g_assert_cmpuint(st->floods_held + st->floods_held_overflow, ==, logins);
  replay_free(r);
}

/* Spec 5.1 [lab]: a move we start floods USER-MOVE, sends USER-KILLED to the right once our own
 * kick is done, and floods USER-KILLED-EVERYWHERE when USER-KILLED comes back from the left. */
static void
test_move_flow(void)
{
  Replay *r = replay_new(NULL);
  complete_two_member_ring(r);
  usher_director_login_request(r->d, now(r), 1, "user1", NULL); /* on .2 */
  collect(r);
  g_string_truncate(r->sent_out, 0);
  g_string_truncate(r->sent_in, 0);
  UsherIp to;
  g_assert_true(usher_ip_parse("127.0.2.3", -1, &to));
  usher_director_admin_user_move(r->d, now(r), 1, 617210206, &to);
  collect(r);
  g_autofree char *moves_out = take(r->sent_out);
  g_autofree char *moves_in = take(r->sent_in);
  g_assert_cmpstr(moves_out, ==, "USER-MOVE\t127.0.5.1\t19190\t1795393975\t617210206\t127.0.2.3\n");
  g_assert_cmpstr(moves_in, ==, "USER-MOVE\t127.0.5.1\t19190\t1795393975\t617210206\t127.0.2.3\n");
  g_assert_cmpuint(r->kick_ids->len, ==, 1);
  usher_director_kick_done(r->d, now(r), *(guint64 *)g_ptr_array_index(r->kick_ids, 0));
  collect(r);
  g_autofree char *killed = take(r->sent_out);
  g_assert_cmpstr(killed, ==, "USER-KILLED\t617210206\n");
  feed(r, r->in, "USER-KILLED\t617210206\n");
  g_autofree char *everywhere_out = take(r->sent_out);
  g_autofree char *everywhere_in = take(r->sent_in);
  g_assert_cmpstr(everywhere_out, ==, "USER-KILLED-EVERYWHERE\t127.0.5.1\t19190\t1795393976\t617210206\n");
  g_assert_cmpstr(everywhere_in, ==, "USER-KILLED-EVERYWHERE\t127.0.5.1\t19190\t1795393976\t617210206\n");
  /* The user waits the kick delay (2 s), then the move is over. */
  g_assert_cmpuint(usher_director_count_moving_users(r->d), ==, 1);
  r->mono_us += 2 * SEC;
  r->wall_us += 2 * SEC;
  usher_director_on_deadline(r->d, now(r));
  collect(r);
  g_assert_cmpuint(usher_director_count_moving_users(r->d), ==, 0);
  replay_free(r);
}

/* Bad input from a peer: an unknown command gets QUIT with a reason and a disconnect
 * (spec 4.1 [lab]: "BOGUS\tx" -> "QUIT\tInvalid input: BOGUS"... Usher names the parse error). */
static void
test_bad_input(void)
{
  Replay *r = replay_new(NULL);
  complete_two_member_ring(r);
  feed(r, r->in, "BOGUS\tx\n");
  g_autofree char *quit = take(r->sent_in);
  g_assert_true(g_str_has_prefix(quit, "QUIT\t"));
  g_assert_cmpuint(usher_director_get_stats(r->d)->protocol_errors, ==, 1);
  g_assert_null(usher_director_get_left(r->d));
  /* A peer that just failed is refused for 60 s, even if it reconnects. */
  UsherIp peer;
  g_assert_true(usher_ip_parse("127.0.5.2", -1, &peer));
  UsherConnId again = usher_director_peer_accepted(r->d, now(r), &peer);
  collect(r);
  feed(r, again, "VERSION\tdirector\t1\t9\nME\t127.0.5.2\t19190\t1795393980\n");
  g_assert_cmpuint(usher_director_get_stats(r->d)->refused_connections, ==, 1);
  /* An overlong line (1024 bytes before the newline) is a protocol error too. */
  replay_free(r);
  r = replay_new(NULL);
  complete_two_member_ring(r);
  g_autofree char *big = g_strnfill(1024, 'A');
  feed(r, r->in, big);
  g_assert_cmpuint(usher_director_get_stats(r->d)->protocol_errors, ==, 1);
  /* Strangers are refused at accept time. */
  UsherIp stranger;
  g_assert_true(usher_ip_parse("10.9.9.9", -1, &stranger));
  g_assert_cmpuint(usher_director_peer_accepted(r->d, now(r), &stranger), ==, USHER_CONN_ID_NONE);
  replay_free(r);
}

static gboolean
has_user(Replay *r, guint32 hash, const char *ip)
{
  UsherUserInfo info;
  usher_director_lookup_user(r->d, r->wall_us, hash, NULL, &info);
  if (!info.found)
    return FALSE;
  char buf[USHER_IP_STRLEN];
  g_assert_cmpstr(usher_ip_to_string(&info.current, buf), ==, ip);
  return TRUE;
}

static gboolean
has_host(Replay *r, const char *ip)
{
  UsherIp addr = {0};
  g_assert_true(usher_ip_parse(ip, -1, &addr));
  return usher_host_table_lookup(usher_director_get_hosts(r->d), &addr) != NULL;
}

/* Lets virtual time pass on a quiet ring: the peer PINGs now and then, so the links stay up. */
static void
advance_quiet(Replay *r, gint64 secs)
{
  for (gint64 i = 0; i < secs; i++) {
    r->mono_us += SEC;
    r->wall_us += SEC;
    usher_director_on_deadline(r->d, now(r));
    collect(r);
    if (i % 5 == 4) {
      g_autofree char *ping = g_strdup_printf("PING\t%" G_GINT64_FORMAT "\t0\n", r->wall_us / SEC);
      feed(r, r->in, ping);
      feed(r, r->out, ping);
    }
  }
  g_string_truncate(r->sent_out, 0);
  g_string_truncate(r->sent_in, 0);
}

/* Swarm seed 2717: a later command of the peer (a kick) overtakes, on the other way round the
 * ring, the HOST that adds a backend; the HOST is dropped as already seen. The USER lines for that
 * backend that follow used to be dropped too ("unknown host"), for good: the host list heals
 * through the hosts_hash check in SYNC, which re-sends the hosts, but nothing re-sends the users.
 * They are now kept and applied when a HOST adds the backend (doc/ring-protocol.md). */
static void
test_user_before_host(void)
{
  Replay *r = replay_new(NULL);
  complete_two_member_ring(r);
  const UsherDirectorStats *st = usher_director_get_stats(r->d);
  guint64 dups = st->duplicate_commands;
  feed(r, r->in, "USER-KICK-HASH\t127.0.5.2\t19190\t11\t12345\t127.0.2.1\n");
  feed(r, r->in, "HOST\t127.0.5.2\t19190\t10\t127.0.2.9\t100\t\tU0\t\n");
  g_assert_cmpuint(st->duplicate_commands, ==, dups + 1);
  g_assert_false(has_host(r, "127.0.2.9"));
  gint64 ts = r->wall_us / SEC;
  g_autofree char *user = g_strdup_printf("USER\t4242\t127.0.2.9\t%" G_GINT64_FORMAT "\n", ts);
  feed(r, r->in, user);
  feed(r, r->out, user); /* the same update the other way round: held once */
  g_assert_false(has_user(r, 4242, NULL));
  g_assert_cmpuint(st->user_updates_held, ==, 1);
  g_assert_cmpint(usher_director_next_deadline(r->d), <=, r->mono_us + 30 * SEC);
  /* The peer's SYNC said our hosts differ; it re-sends its hosts a few seconds later. */
  advance_quiet(r, 5);
  feed(r, r->in, "HOST\t127.0.5.2\t19190\t12\t127.0.2.9\t100\t\tU0\t\n");
  g_assert_true(has_host(r, "127.0.2.9"));
  g_assert_true(has_user(r, 4242, "127.0.2.9"));
  UsherUserInfo info;
  usher_director_lookup_user(r->d, r->wall_us, 4242, NULL, &info);
  g_assert_cmpint(info.timestamp, ==, ts); /* the sender's time, not the time it was applied */
  g_assert_cmpuint(st->user_updates_held_applied, ==, 1);
  g_assert_cmpuint(st->user_updates_held_dropped, ==, 0);
  replay_free(r);
}

/* What waits for a backend is bounded: 30 s, then dropped; a HOST-REMOVE of that backend drops it
 * at once; an update already expired by our clock is not kept; at most 100000 wait at once. */
static void
test_held_users_bounded(void)
{
  Replay *r = replay_new(NULL);
  complete_two_member_ring(r);
  const UsherDirectorStats *st = usher_director_get_stats(r->d);
  gint64 ts = r->wall_us / SEC;
  g_autofree char *late = g_strdup_printf("USER\t4243\t127.0.2.8\t%" G_GINT64_FORMAT "\n", ts);
  feed(r, r->in, late);
  g_assert_cmpuint(st->user_updates_held, ==, 1);
  advance_quiet(r, 29);
  g_assert_cmpuint(st->user_updates_held_dropped, ==, 0);
  advance_quiet(r, 1);
  g_assert_cmpuint(st->user_updates_held_dropped, ==, 1);
  feed(r, r->in, "HOST\t127.0.5.2\t19190\t20\t127.0.2.8\t100\t\tU0\t\n");
  g_assert_true(has_host(r, "127.0.2.8"));
  g_assert_false(has_user(r, 4243, NULL));

  ts = r->wall_us / SEC;
  g_autofree char *removed = g_strdup_printf("USER\t4244\t127.0.2.7\t%" G_GINT64_FORMAT "\n", ts);
  feed(r, r->in, removed);
  feed(r, r->in, "HOST-REMOVE\t127.0.5.2\t19190\t21\t127.0.2.7\n");
  g_assert_cmpuint(st->user_updates_held_dropped, ==, 2);
  feed(r, r->in, "HOST\t127.0.5.2\t19190\t22\t127.0.2.7\t100\t\tU0\t\n");
  g_assert_false(has_user(r, 4244, NULL));

  g_autofree char *expired =
    g_strdup_printf("USER\t4245\t127.0.2.6\t%" G_GINT64_FORMAT "\n", ts - 900);
  feed(r, r->in, expired);
  g_assert_cmpuint(st->user_updates_held, ==, 2);

  const guint max = 100000;
  GString *many = g_string_new(NULL);
  for (guint i = 0; i <= max; i++)
    g_string_append_printf(many, "USER\t%u\t127.0.2.6\t%" G_GINT64_FORMAT "\n", 10000 + i, ts);
  usher_director_peer_bytes(r->d, now(r), r->in, many->str, many->len);
  g_string_free(many, TRUE);
  g_array_unref(usher_director_take_effects(r->d));
  g_assert_cmpuint(st->user_updates_held, ==, 2 + max);
  g_assert_cmpuint(st->user_updates_held_overflow, ==, 1);
  feed(r, r->in, "HOST\t127.0.5.2\t19190\t23\t127.0.2.6\t100\t\tU0\t\n");
  g_assert_cmpuint(st->user_updates_held_applied, ==, max);
  g_assert_true(has_user(r, 10000, "127.0.2.6"));
  g_assert_true(has_user(r, 10000 + max - 1, "127.0.2.6"));
  g_assert_false(has_user(r, 10000 + max, NULL));
  replay_free(r);
}

/* The handshake of a director that joins our completed ring without having completed one itself
 * (it restarted during a split): its host list is ignored, as in Dovecot, but its users on a
 * backend added on its side of the split are kept until that backend's HOST arrives, instead of
 * the protocol error that kept it out of the ring (swarm seed 36460). */
static void
test_joining_peer_user_on_new_backend(void)
{
  Replay *r = replay_new(NULL);
  complete_two_member_ring(r);
  const UsherDirectorStats *st = usher_director_get_stats(r->d);
  guint64 errors = st->protocol_errors;
  UsherIp peer;
  g_assert_true(usher_ip_parse("127.0.5.2", -1, &peer));
  UsherConnId c = usher_director_peer_accepted(r->d, now(r), &peer);
  collect(r);
  gint64 ts = r->wall_us / SEC;
  g_autofree char *hello = g_strdup_printf(
    "VERSION\tdirector\t1\t9\n"
    "ME\t127.0.5.2\t19190\t%" G_GINT64_FORMAT "\n"
    "DIRECTOR\t127.0.5.1\t19190\n"
    "DIRECTOR\t127.0.5.2\t19190\n"
    "HOST-HAND-START\t0\n"
    "HOST\t127.0.2.1\t100\t\tU0\t\n"
    "HOST\t127.0.2.9\t100\t\tU0\t\n"
    "HOST-HAND-END\t0\n"
    "U\t4246\t127.0.2.9\t%" G_GINT64_FORMAT "\n"
    "U\t4247\t127.0.2.1\t%" G_GINT64_FORMAT "\n"
    "DONE\n",
    ts, ts, ts);
  feed(r, c, hello);
  g_assert_cmpuint(st->protocol_errors, ==, errors);
  g_assert_false(has_host(r, "127.0.2.9")); /* a joining director's host list does not count */
  g_assert_true(has_user(r, 4247, "127.0.2.1"));
  g_assert_false(has_user(r, 4246, NULL));
  g_assert_cmpuint(st->user_updates_held, ==, 1);
  /* The merge brings the backend: the user is placed where the joining side had it. */
  feed(r, c, "HOST\t127.0.5.2\t19190\t30\t127.0.2.9\t100\t\tU0\t\n");
  g_assert_true(has_user(r, 4246, "127.0.2.9"));
  g_assert_cmpuint(st->user_updates_held_applied, ==, 1);

  /* A director that did list the backend and still sends a user on one it never named is wrong:
   * that stays a protocol error. */
  UsherConnId bad = usher_director_peer_accepted(r->d, now(r), &peer);
  collect(r);
  g_autofree char *lie = g_strdup_printf(
    "VERSION\tdirector\t1\t9\n"
    "ME\t127.0.5.2\t19190\t%" G_GINT64_FORMAT "\n"
    "HOST-HAND-START\t1\n"
    "HOST\t127.0.2.1\t100\t\tU0\t\n"
    "HOST-HAND-END\t1\n"
    "U\t4248\t127.0.2.8\t%" G_GINT64_FORMAT "\n",
    ts, ts);
  feed(r, bad, lie);
  g_assert_cmpuint(st->protocol_errors, ==, errors + 1);
  g_assert_false(has_user(r, 4248, NULL));
  replay_free(r);
}

/* A director that has not completed a ring yet takes the first complete ring's host list (and
 * drops the hosts it does not name); a second ring member's list, which after a split can lack a
 * backend the first named, is merged: taking it too dropped that backend and its users for good
 * on this director (swarm seed 36460). */
static void
test_second_ring_host_list_merged(void)
{
  Replay *r = replay_new(NULL);
  usher_director_start(r->d, now(r));
  collect(r);
  g_assert_false(usher_director_is_ring_handshaked(r->d));
  UsherIp peer;
  g_assert_true(usher_ip_parse("127.0.5.2", -1, &peer));
  gint64 ts = r->wall_us / SEC;
  UsherConnId first = usher_director_peer_accepted(r->d, now(r), &peer);
  collect(r);
  g_autofree char *from_first = g_strdup_printf(
    "VERSION\tdirector\t1\t9\n"
    "ME\t127.0.5.2\t19190\t%" G_GINT64_FORMAT "\n"
    "HOST-HAND-START\t1\n"
    "HOST\t127.0.2.1\t100\t\tU0\t\n"
    "HOST\t127.0.2.9\t100\t\tU0\t\n"
    "HOST-HAND-END\t1\n"
    "U\t4249\t127.0.2.9\t%" G_GINT64_FORMAT "\n"
    "DONE\n",
    ts, ts);
  feed(r, first, from_first);
  /* Replaced: the configured 127.0.2.2 and .3 are gone, the ring's 127.0.2.9 came. */
  g_assert_false(has_host(r, "127.0.2.2"));
  g_assert_true(has_host(r, "127.0.2.9"));
  g_assert_true(has_user(r, 4249, "127.0.2.9"));
  g_assert_false(usher_director_is_ring_handshaked(r->d));

  UsherConnId second = usher_director_peer_accepted(r->d, now(r), &peer);
  collect(r);
  g_autofree char *from_second = g_strdup_printf("VERSION\tdirector\t1\t9\n"
                                                 "ME\t127.0.5.2\t19190\t%" G_GINT64_FORMAT "\n"
                                                 "HOST-HAND-START\t1\n"
                                                 "HOST\t127.0.2.1\t100\t\tU0\t\n"
                                                 "HOST\t127.0.2.3\t100\t\tU0\t\n"
                                                 "HOST-HAND-END\t1\n"
                                                 "DONE\n",
                                                 ts);
  feed(r, second, from_second);
  g_assert_true(has_host(r, "127.0.2.9"));
  g_assert_true(has_host(r, "127.0.2.3"));
  g_assert_true(has_user(r, 4249, "127.0.2.9"));
  replay_free(r);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/core/ring-replay/handshake-out", test_handshake_out);
  g_test_add_func("/core/ring-replay/user-conflict", test_user_conflict);
  g_test_add_func("/core/ring-replay/move-flow", test_move_flow);
  g_test_add_func("/core/ring-replay/bad-input", test_bad_input);
  g_test_add_func("/core/ring-replay/usher-peer-ping", test_usher_peer_ping);
  g_test_add_func("/core/ring-replay/usher-health-report", test_usher_health_report);
  g_test_add_func("/core/ring-replay/flood-before-version", test_flood_before_version);
  g_test_add_func("/core/ring-replay/flood-hold-limit", test_flood_hold_limit);
  g_test_add_func("/core/ring-replay/user-before-host", test_user_before_host);
  g_test_add_func("/core/ring-replay/held-users-bounded", test_held_users_bounded);
  g_test_add_func("/core/ring-replay/joining-peer-user-on-new-backend",
                  test_joining_peer_user_on_new_backend);
  g_test_add_func("/core/ring-replay/second-ring-host-list-merged",
                  test_second_ring_host_list_merged);
  return g_test_run();
}

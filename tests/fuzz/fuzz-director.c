/* fuzz-director.c - a peer that lies, and a driver that misbehaves: arbitrary bytes on a ring
 * connection of a real director, while the driver answers kicks and flush hooks late, never or
 * with failures, reports full output queues, steps the wall clock both ways, and makes, repeats
 * and cancels login requests and admin operations.
 *
 * The input is split in two: the first part is sent by a peer that connected to us, the second
 * by the peer we connected to; both after a valid greeting, so the fuzzer reaches every command
 * handler, not only the handshake checks. The first byte of each chunk also steers the clocks
 * and one driver action, so plain ring text works as a seed. The director must never crash,
 * leak, or break its invariants: the user directory and host counts check out, every effect
 * makes sense (no answer for a request that is not waiting, no id used twice, no write to a
 * closed connection), and once every timer has run out nothing is left waiting. */
#include "libcore/config.h"
#include "libcore/director.h"

#include <stdint.h>
#include <string.h>

static const char config_text[] =
  "[ring]\ndirectors = 127.0.5.1:19190 127.0.5.2:19190 127.0.5.3:19190\n"
  "[backends]\nhosts = 127.0.2.1 127.0.2.2=50 127.0.2.3@eu ::1=7\n"
  "[director]\nuser_expire = 60s\nflush_socket = unix:/run/flush\nmax_parallel_kicks = 2\n";

typedef struct {
  UsherDirector *d;
  UsherNow now;
  UsherConnId out, in;
  GHashTable *live_conns;   /* UsherConnId */
  GHashTable *seen_ids;     /* kick and flush ids ever emitted */
  GHashTable *requests;     /* login requests waiting for an answer */
  GHashTable *admin_ops;    /* admin operations waiting for a reply */
  GArray *kicks, *flushes;  /* outstanding ids, newest last */
  guint64 next_request, next_op;
} Fuzz;

static gboolean
take_id(GHashTable *set, guint64 id)
{
  return g_hash_table_remove(set, &id);
}

static void
add_id(GHashTable *set, guint64 id)
{
  g_hash_table_add(set, g_memdup2(&id, sizeof(id)));
}

static void
drain(Fuzz *f)
{
  GArray *effects = usher_director_take_effects(f->d);
  for (guint i = 0; i < effects->len; i++) {
    UsherEffect *e = &g_array_index(effects, UsherEffect, i);
    switch (e->type) {
    case USHER_EFFECT_CONNECT:
      g_assert(!g_hash_table_contains(f->live_conns, GUINT_TO_POINTER(e->connect.conn)));
      g_hash_table_add(f->live_conns, GUINT_TO_POINTER(e->connect.conn));
      f->out = e->connect.conn;
      break;
    case USHER_EFFECT_SEND:
      g_assert(e->send.len > 0);
      g_assert(g_hash_table_contains(f->live_conns, GUINT_TO_POINTER(e->send.conn)));
      break;
    case USHER_EFFECT_DISCONNECT:
      g_assert(g_hash_table_remove(f->live_conns, GUINT_TO_POINTER(e->disconnect.conn)));
      break;
    case USHER_EFFECT_LOGIN_RESULT:
      /* Exactly one answer per waiting request, never one for a cancelled request. */
      g_assert(take_id(f->requests, e->login.request));
      g_assert(e->login.status != USHER_LOGIN_OK || e->login.host.family != 0);
      break;
    case USHER_EFFECT_KICK:
      g_assert(!g_hash_table_contains(f->seen_ids, &e->kick.id));
      add_id(f->seen_ids, e->kick.id);
      g_array_append_val(f->kicks, e->kick.id);
      break;
    case USHER_EFFECT_PROBE:
      g_assert(!g_hash_table_contains(f->seen_ids, &e->probe.id));
      add_id(f->seen_ids, e->probe.id);
      g_assert(e->probe.host.family != 0);
      break;
    case USHER_EFFECT_FLUSH:
      g_assert(!g_hash_table_contains(f->seen_ids, &e->flush.id));
      add_id(f->seen_ids, e->flush.id);
      g_array_append_val(f->flushes, e->flush.id);
      break;
    case USHER_EFFECT_ADMIN_REPLY:
      g_assert(take_id(f->admin_ops, e->admin.op));
      g_assert(g_str_has_suffix(e->admin.text, "\n"));
      break;
    case USHER_EFFECT_LOG:
      g_assert(e->log.message != NULL);
      break;
    case USHER_EFFECT_STATE:
      break;
    }
  }
  g_array_unref(effects);
}

static void
check(Fuzz *f)
{
  UsherHostTable *hosts = usher_director_get_hosts(f->d);
  for (guint t = 0; t < usher_host_table_n_tags(hosts); t++) {
    const char *why;
    g_assert(usher_user_dir_check(usher_host_table_nth_tag(hosts, t)->users, &why));
  }
  char *why = NULL;
  if (!usher_host_table_check_counts(hosts, &why))
    g_error("host counts: %s", why);
}

static guint64
pop(GArray *a)
{
  guint64 id = g_array_index(a, guint64, a->len - 1);
  g_array_set_size(a, a->len - 1);
  return id;
}

/* Any waiting login request, or 0. */
static guint64
some_request(Fuzz *f)
{
  GHashTableIter it;
  gpointer k;
  guint64 best = 0;
  g_hash_table_iter_init(&it, f->requests);
  while (g_hash_table_iter_next(&it, &k, NULL))
    best = MAX(best, *(guint64 *)k); /* deterministic: the newest */
  return best;
}

/* One driver action, chosen by the top three bits of the chunk's first byte. */
static void
driver_action(Fuzz *f, guint8 ctl)
{
  static const char *const names[] = {"user1", "User1*master", "u@d", "kick-me", ""};
  UsherIp backend = {.family = USHER_IP_V4, .addr = {127, 0, 2, 1 + (ctl & 1)}};
  switch (ctl >> 5) {
  case 0:
    if (f->kicks->len > 0)
      usher_director_kick_done(f->d, f->now, pop(f->kicks));
    break;
  case 1:
  case 2:
    if (f->flushes->len > 0)
      usher_director_flush_done(f->d, f->now, pop(f->flushes), (ctl >> 5) == 1);
    break;
  case 3: {
    UsherConnId conn = (ctl & 1) ? f->in : f->out;
    gsize queued = (ctl & 2) ? 300 * 1024 : (ctl & 4) ? 70 * 1024 : 0;
    if (conn != 0)
      usher_director_peer_output_queued(f->d, f->now, conn, queued);
    break;
  }
  case 4: {
    guint64 id = ++f->next_request;
    if (usher_director_login_request(f->d, f->now, id, names[ctl % G_N_ELEMENTS(names)],
                                     (ctl & 8) ? "eu" : NULL))
      add_id(f->requests, id);
    drain(f); /* an answer given at once is no longer waiting */
    /* A repeated id of a waiting request is refused without any effect. */
    guint64 again = some_request(f);
    if (again != 0)
      g_assert(!usher_director_login_request(f->d, f->now, again, "dup", NULL));
    break;
  }
  case 5: {
    guint64 id = some_request(f);
    if (id != 0 && (ctl & 1)) {
      usher_director_login_cancel(f->d, f->now, id);
      take_id(f->requests, id);
    }
    usher_director_login_cancel(f->d, f->now, 999999); /* unknown: ignored */
    break;
  }
  case 6: {
    guint64 op = ++f->next_op;
    add_id(f->admin_ops, op);
    if (ctl & 2)
      usher_director_admin_user_kick(f->d, f->now, op, NULL, names[ctl % 4], (ctl & 4) != 0);
    else if (ctl & 4)
      usher_director_admin_host_set_down(f->d, f->now, op, &backend, (ctl & 8) != 0);
    else
      usher_director_admin_user_move(f->d, f->now, op, usher_director_user_hash(f->d, "user1"),
                                     &backend);
    break;
  }
  default:
    break; /* a driver that does nothing at all */
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  static UsherConfig *config;
  if (config == NULL) {
    config = usher_config_parse(config_text, strlen(config_text), "fuzz.conf", NULL);
    g_assert(config != NULL);
  }
  UsherRingAddr self = {.ip = {.family = USHER_IP_V4, .addr = {127, 0, 5, 1}}, .port = 19190};
  Fuzz fz = {
    .now = {10000000, G_GINT64_CONSTANT(1795393974000000)},
    .live_conns = g_hash_table_new(NULL, NULL),
    .seen_ids = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free, NULL),
    .requests = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free, NULL),
    .admin_ops = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free, NULL),
    .kicks = g_array_new(FALSE, FALSE, sizeof(guint64)),
    .flushes = g_array_new(FALSE, FALSE, sizeof(guint64)),
  };
  Fuzz *f = &fz;
  f->d = usher_director_new(config, &self, 1, f->now, NULL);
  g_assert(f->d != NULL);
  usher_director_start(f->d, f->now);
  drain(f);
  if (f->out != 0)
    usher_director_peer_connected(f->d, f->now, f->out);
  UsherIp peer = {.family = USHER_IP_V4, .addr = {127, 0, 5, 3}};
  f->in = usher_director_peer_accepted(f->d, f->now, &peer);
  if (f->in != 0)
    g_hash_table_add(f->live_conns, GUINT_TO_POINTER(f->in));
  drain(f);

  static const char greet_in[] = "VERSION\tdirector\t1\t9\nME\t127.0.5.3\t19190\t1795393974\n";
  static const char greet_out[] = "VERSION\tdirector\t1\t9\nME\t127.0.5.2\t19190\t1795393974\n";
  usher_director_peer_bytes(f->d, f->now, f->in, greet_in, sizeof(greet_in) - 1);
  if (f->out != 0)
    usher_director_peer_bytes(f->d, f->now, f->out, greet_out, sizeof(greet_out) - 1);
  drain(f);

  size_t half = size / 2;
  size_t pos = 0;
  while (pos < size) {
    /* Chunk length, clock steps and the driver action come from the data itself. */
    guint8 ctl = data[pos];
    size_t chunk = 1 + (ctl % 97);
    if (pos + chunk > size)
      chunk = size - pos;
    UsherConnId conn = pos < half ? f->in : f->out;
    usher_director_prefetch_bytes(f->d, data + pos, chunk); /* a hint: any bytes at all */
    if (conn != 0 && g_hash_table_contains(f->live_conns, GUINT_TO_POINTER(conn)))
      usher_director_peer_bytes(f->d, f->now, conn, data + pos, chunk);
    drain(f);
    gint64 step = (gint64)(ctl & 0x0f) * 700000;
    f->now.mono_us += step;
    if ((ctl & 0x30) == 0x30)
      f->now.wall_us = MAX(0, f->now.wall_us - 2 * step); /* NTP stepped the clock back */
    else if ((ctl & 0x30) == 0x20)
      f->now.wall_us += 3600 * G_GINT64_CONSTANT(1000000); /* ... or an hour forward */
    else
      f->now.wall_us += step;
    pos += chunk;
    usher_director_on_deadline(f->d, f->now);
    drain(f);
    driver_action(f, ctl);
    drain(f);
    check(f);
  }
  /* The driver goes quiet: every timer runs out, and nothing may be left waiting. */
  for (int i = 0; i < 8; i++) {
    f->now.mono_us += 20000000;
    f->now.wall_us += 20000000;
    usher_director_on_deadline(f->d, f->now);
    drain(f);
  }
  check(f);
  g_assert_cmpuint(g_hash_table_size(f->requests), ==, 0);
  g_assert_cmpuint(g_hash_table_size(f->admin_ops), ==, 0);
  UsherRingInfo info;
  usher_director_get_ring_info(f->d, &info);
  g_assert_cmpuint(info.pending_requests, ==, 0);
  g_assert_cmpuint(info.kicks_running, ==, 0);
  g_assert_cmpuint(info.admin_kicks_running, ==, 0);
  g_assert_cmpuint(info.moving_users, ==, 0);
  (void)usher_director_state_fingerprint(f->d);
  usher_director_free(f->d);
  g_hash_table_unref(f->live_conns);
  g_hash_table_unref(f->seen_ids);
  g_hash_table_unref(f->requests);
  g_hash_table_unref(f->admin_ops);
  g_array_unref(f->kicks);
  g_array_unref(f->flushes);
  return 0;
}

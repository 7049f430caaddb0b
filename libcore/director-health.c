/* director-health.c - backend health checks with ring quorum (doc/health.md).
 *
 * Each director with [health] enabled probes every backend once per interval (a PROBE effect the
 * driver answers with usher_director_probe_done()) and keeps its own view of each backend with
 * hysteresis: failing after `fall` failed probes in a row, healthy after `rise` good ones. A
 * backend starts in the state the ring has for it, so a restarted director cannot vote a down
 * backend up before it has seen it answer.
 *
 * Views travel between usherd directors as X-USHER-HEALTH reports (ring-codec.h), flooded over
 * links whose peer announced the extension, newest (boot, seq) per reporter. A report is live for
 * HEALTH_REPORT_LIVE_INTERVALS of its sender's intervals. Decisions, taken only on a synced ring:
 *  - quorum: live voters (this director and every reporter heard lately) must be at least
 *    `quorum` (default: a majority of the ring's members), so a director cut off from most of
 *    the ring decides nothing;
 *  - down: a majority of the live voters see the backend failing: an ordinary HOST down (and, with
 *    down_action = replace, HOST-FLUSH so its users are placed again at once);
 *  - up: the backend is down because of a health decision (the report's downs list carries the
 *    up/down time of that decision) and a majority of the live voters see it healthy. A backend an
 *    operator took down is never brought up here.
 * One director acts on a decision (the lowest-addressed live voter; the others only if it has not
 * come round two intervals later), and HOST's conflict rule settles any race.
 */
#include "libcore/director-private.h"

#include <string.h>

static HealthBackend *
backend_find(UsherDirector *d, const UsherIp *ip)
{
  return g_hash_table_lookup(d->health.by_ip, ip);
}

static void
backend_free(gpointer p)
{
  HealthBackend *b = p;
  g_free(b->last_detail);
  g_free(b);
}

static int
cmp_backend_ip(gconstpointer a, gconstpointer b)
{
  const HealthBackend *x = *(HealthBackend *const *)a, *y = *(HealthBackend *const *)b;
  return usher_ip_cmp(&x->ip, &y->ip);
}

static void
voter_free(gpointer p)
{
  HealthVoter *v = p;
  g_array_unref(v->failing);
  g_free(v);
}

void
health_init(UsherDirector *d, const UsherConfig *config, UsherNow now)
{
  Health *h = &d->health;
  h->enabled = config->health_enabled;
  h->interval_secs = MAX(config->health_interval_secs, 1u);
  h->timeout_secs = MAX(config->health_timeout_secs, 1u);
  h->fall = MAX(config->health_fall, 1u);
  h->rise = MAX(config->health_rise, 1u);
  h->quorum = config->health_quorum;
  h->down_replace = config->health_down_replace;
  h->boot = (guint32)CLAMP(dir_wall_secs(now), 0, (gint64)G_MAXUINT32);
  h->backends = g_ptr_array_new_with_free_func(backend_free);
  h->by_ip = g_hash_table_new(usher_ip_table_hash, usher_ip_table_equal);
  h->voters = g_ptr_array_new_with_free_func(voter_free);
}

/* The director starts: the first probes go out at once. */
void
health_start(UsherDirector *d, UsherNow now)
{
  if (d->health.enabled)
    d->health.next_tick_us = now.mono_us;
}

void
health_free(UsherDirector *d)
{
  g_clear_pointer(&d->health.by_ip, g_hash_table_unref);
  g_clear_pointer(&d->health.backends, g_ptr_array_unref);
  g_clear_pointer(&d->health.voters, g_ptr_array_unref);
}

void
health_member_gone(UsherDirector *d, Member *m)
{
  for (guint i = 0; i < d->health.voters->len; i++) {
    HealthVoter *v = g_ptr_array_index(d->health.voters, i);
    if (v->member == m) {
      g_ptr_array_remove_index(d->health.voters, i);
      return;
    }
  }
}

/* ---- Bookkeeping ----------------------------------------------------------------------------- */

/* Adds entries for new backends (starting in the ring's state) and drops those of removed ones,
 * keeping the host table's order. Linear in the number of backends: it runs for every report. */
static void
sync_backends(UsherDirector *d)
{
  GPtrArray *bs = d->health.backends;
  for (guint i = 0; i < bs->len; i++)
    ((HealthBackend *)g_ptr_array_index(bs, i))->seen = FALSE;
  gboolean changed = FALSE;
  for (guint i = 0; i < usher_host_table_n_hosts(d->hosts); i++) {
    UsherHost *host = usher_host_table_nth(d->hosts, i);
    HealthBackend *b = backend_find(d, &host->ip);
    if (b == NULL) {
      b = g_new0(HealthBackend, 1);
      b->ip = host->ip;
      b->failing = host->down;
      g_ptr_array_add(bs, b);
      g_hash_table_insert(d->health.by_ip, &b->ip, b);
      changed = TRUE;
    }
    b->seen = TRUE;
  }
  for (guint i = 0; i < bs->len;) {
    HealthBackend *b = g_ptr_array_index(bs, i);
    if (!b->seen) {
      g_hash_table_remove(d->health.by_ip, &b->ip);
      g_ptr_array_remove_index(bs, i); /* frees b */
      changed = TRUE;
    } else {
      i++;
    }
  }
  if (changed)
    g_ptr_array_sort(bs, cmp_backend_ip);
}

/* Forgets a health-down mark that no longer describes the backend: it came up, or something
 * later (an operator) changed it. */
static void
check_mark(HealthBackend *b, const UsherHost *host)
{
  if (b->health_down_time == 0)
    return;
  if (host == NULL || host->last_updown_change > b->health_down_time ||
      (!host->down && host->last_updown_change >= b->health_down_time))
    b->health_down_time = 0;
}

static gboolean
voter_live(const UsherDirector *d, const HealthVoter *v, gint64 mono_us)
{
  if (v->member->removed)
    return FALSE;
  gint64 live_us = (gint64)v->interval_ms * 1000 * HEALTH_REPORT_LIVE_INTERVALS;
  return v->received_us + live_us >= mono_us;
}

static gboolean
voter_lists(const HealthVoter *v, const UsherIp *ip)
{
  for (guint i = 0; i < v->failing->len; i++)
    if (usher_ip_equal(&g_array_index(v->failing, UsherIp, i), ip))
      return TRUE;
  return FALSE;
}

static guint
count_members(const UsherDirector *d)
{
  guint n = 0;
  for (guint i = 0; i < d->members->len; i++)
    if (!((Member *)g_ptr_array_index(d->members, i))->removed)
      n++;
  return n;
}

typedef struct {
  guint members, quorum, live, needed;
} Tally;

static void
tally(const UsherDirector *d, gint64 mono_us, Tally *t)
{
  t->members = count_members(d);
  t->quorum = d->health.quorum != 0 ? d->health.quorum : t->members / 2 + 1;
  t->live = d->health.enabled ? 1 : 0;
  for (guint i = 0; i < d->health.voters->len; i++)
    if (voter_live(d, g_ptr_array_index(d->health.voters, i), mono_us))
      t->live++;
  t->needed = t->live / 2 + 1;
}

/* Is this director the lowest-addressed live voter (the one that acts on a decision)? */
static gboolean
lowest_live_voter(const UsherDirector *d, gint64 mono_us)
{
  for (guint i = 0; i < d->health.voters->len; i++) {
    const HealthVoter *v = g_ptr_array_index(d->health.voters, i);
    if (!voter_live(d, v, mono_us))
      continue;
    int c = usher_ip_cmp(&v->member->addr.ip, &d->self->addr.ip);
    if (c < 0 || (c == 0 && v->member->addr.port < d->self->addr.port))
      return FALSE;
  }
  return TRUE;
}

static void
votes(const UsherDirector *d, gint64 mono_us, const HealthBackend *b, guint *failing_out,
      guint *ok_out)
{
  guint failing = 0, ok = 0;
  if (d->health.enabled) {
    if (b->failing)
      failing++;
    else
      ok++;
  }
  for (guint i = 0; i < d->health.voters->len; i++) {
    const HealthVoter *v = g_ptr_array_index(d->health.voters, i);
    if (!voter_live(d, v, mono_us))
      continue;
    if (voter_lists(v, &b->ip))
      failing++;
    else if (v->complete)
      ok++;
  }
  *failing_out = failing;
  *ok_out = ok;
}

/* ---- down_action = replace, kept true ------------------------------------------------------ */

/* A health decision took this backend down and placed its users elsewhere. */
gboolean
health_replaced(UsherDirector *d, const UsherHost *host)
{
  if (!d->health.down_replace || host == NULL || !host->down)
    return FALSE;
  HealthBackend *b = backend_find(d, &host->ip);
  return b != NULL && b->health_down_time != 0 && b->health_down_time == host->last_updown_change;
}

/* Has the ring been synced, with the same number of directors voting, for two check intervals?
 * Decisions and re-flushes wait for that. While a merge settles, user lists and USERs that left
 * a director before it heard of a flush are still on their way: a decision then flushes a backend
 * on some directors while those messages bring its users back on others, and when the backend
 * comes up again nothing removes them (swarm seed 62781: a 2+2 partition healed, three directors
 * met and took a backend down 5 ms later while the fourth was still rejoining). A re-flush then
 * may remove entries of a backend that the side which rejoins is about to vote up again (seed
 * 12718). A backend that fails in a settled ring is decided as fast as before. */
static gboolean
ring_settled(UsherDirector *d, UsherNow now, const Tally *t)
{
  Health *h = &d->health;
  gint64 hold = 2 * (gint64)h->interval_secs * SEC_US;
  if (!d->ring_synced) {
    h->synced_since_us = 0;
    return FALSE;
  }
  if (h->synced_since_us == 0)
    h->synced_since_us = now.mono_us;
  if (t->live != h->settled_live) {
    h->settled_live = t->live;
    h->settled_live_since_us = now.mono_us;
  }
  return now.mono_us - h->synced_since_us >= hold &&
         now.mono_us - h->settled_live_since_us >= hold;
}

/* The director that took a backend down with down_action = replace floods HOST-FLUSH again
 * whenever entries for it show up later: a USER still on its way when the decision was made, or
 * the users of a director that was cut off and rejoins, brought entries back on some directors
 * only, and nothing removed them again (swarm seeds 16373, 19296, 21257). Only that director
 * does it, and only while it has a quorum and a settled ring: a director whose view is stale (cut
 * off when the backend came back) must not flush a backend the others use again. */
static void
enforce(UsherDirector *d, UsherNow now, const Tally *t)
{
  Health *h = &d->health;
  if (h->backends == NULL || !h->settled || t->live < t->quorum)
    return;
  for (guint i = 0; i < h->backends->len; i++) {
    HealthBackend *b = g_ptr_array_index(h->backends, i);
    if (!b->decided_here)
      continue;
    UsherHost *host = usher_host_table_lookup(d->hosts, &b->ip);
    if (!health_replaced(d, host)) {
      b->decided_here = FALSE;
      continue;
    }
    if (host->user_count > 0 && !host->desynced) {
      dir_log(d, G_LOG_LEVEL_INFO,
              "health: %u users showed up on %s, which a health decision took down: flushing "
              "it again",
              host->user_count, host->ip_str);
      d->stats.health_reflushes++;
      users_flush_host(d, now, d->self, NULL, host);
    }
  }
}

/* ---- Reports --------------------------------------------------------------------------------- */

static void
list_append(GString *list, const UsherIp *ip, gint64 time)
{
  char buf[USHER_IP_STRLEN];
  if (list->len > 0)
    g_string_append_c(list, ',');
  g_string_append(list, usher_ip_to_string(ip, buf));
  if (time >= 0)
    g_string_append_printf(list, "/%" G_GINT64_FORMAT, time);
}

static void
send_to_usher_peers(UsherDirector *d, Conn *except, const UsherRingMsg *msg)
{
  g_autoptr(GArray) ids = dir_conn_ids_sorted(d);
  for (guint i = 0; i < ids->len; i++) {
    Conn *c = dir_conn_by_id(d, g_array_index(ids, UsherConnId, i));
    if (c == NULL || c == except || !c->usher_ext || !c->handshake_received || c->closing)
      continue;
    dir_send_msg(d, c, msg, c->peer_minor);
  }
}

/* Our report: to one connection (a link that just became ready) or to every usher peer. */
static void
send_report(UsherDirector *d, Conn *only)
{
  Health *h = &d->health;
  if (!h->enabled)
    return;
  g_autoptr(GString) failing = g_string_new(NULL);
  g_autoptr(GString) downs = g_string_new(NULL);
  guint n_failing = 0, n_downs = 0;
  gboolean complete = TRUE;
  for (guint i = 0; i < h->backends->len; i++) {
    HealthBackend *b = g_ptr_array_index(h->backends, i);
    check_mark(b, usher_host_table_lookup(d->hosts, &b->ip));
    if (b->failing) {
      if (n_failing < USHER_RING_HEALTH_LIST_MAX) {
        list_append(failing, &b->ip, -1);
        n_failing++;
      } else {
        complete = FALSE;
      }
    }
    if (b->health_down_time > 0) {
      if (n_downs < USHER_RING_HEALTH_LIST_MAX) {
        list_append(downs, &b->ip, b->health_down_time);
        n_downs++;
      } else {
        complete = FALSE;
      }
    }
  }
  UsherRingMsg msg;
  usher_ring_msg_init(&msg, USHER_RING_MSG_X_USHER_HEALTH);
  msg.health.addr = d->self->addr;
  msg.health.boot = h->boot;
  msg.health.seq = ++h->seq;
  msg.health.interval_ms = h->interval_secs * 1000;
  msg.health.failing = failing->str;
  msg.health.downs = downs->str;
  msg.health.complete = complete;
  if (only != NULL)
    dir_send_msg(d, only, &msg, only->peer_minor);
  else
    send_to_usher_peers(d, NULL, &msg);
  d->stats.health_reports_sent++;
}

void
health_peer_ready(UsherDirector *d, UsherNow now, Conn *c)
{
  (void)now;
  if (d->health.enabled && d->started)
    send_report(d, c);
}

/* ---- Decisions ------------------------------------------------------------------------------- */

static void
decide(UsherDirector *d, UsherNow now, UsherHost *host, HealthBackend *b, gboolean down,
       guint votes_for, const Tally *t)
{
  char ip[USHER_IP_STRLEN];
  usher_ip_to_string(&host->ip, ip);
  usher_host_table_set_down(d->hosts, host, down, dir_wall_secs(now));
  users_update_host(d, now, d->self, NULL, host);
  if (down) {
    b->health_down_time = host->last_updown_change;
    b->decided_here = d->health.down_replace;
    d->stats.health_downs++;
    dir_log(d, G_LOG_LEVEL_WARNING,
            "health: backend %s is down: %u of %u live directors see it failing (quorum %u of "
            "%u members)%s",
            ip, votes_for, t->live, t->quorum, t->members,
            d->health.down_replace ? "; its users are placed again" : "");
    if (d->health.down_replace)
      users_flush_host(d, now, d->self, NULL, host);
  } else {
    b->health_down_time = 0;
    d->stats.health_ups++;
    dir_log(d, G_LOG_LEVEL_WARNING,
            "health: backend %s is up again: %u of %u live directors see it healthy", ip, votes_for,
            t->live);
  }
  dir_state_changed(d, now);
  d->health.report_now = TRUE;
}

static void
pending_clear(Health *h)
{
  if (h->backends == NULL)
    return;
  for (guint i = 0; i < h->backends->len; i++)
    ((HealthBackend *)g_ptr_array_index(h->backends, i))->pending_since_us = 0;
}

static void
evaluate(UsherDirector *d, UsherNow now, const Tally *tp)
{
  Health *h = &d->health;
  if (!h->enabled || !d->started || !d->ring_synced) {
    pending_clear(h);
    return;
  }
  const Tally t = *tp;
  gboolean have = t.live >= t.quorum;
  if (have != h->had_quorum) {
    h->had_quorum = have;
    if (!have)
      d->stats.health_no_quorum++;
    dir_log(d, have ? G_LOG_LEVEL_INFO : G_LOG_LEVEL_WARNING,
            have ? "health: %u of %u directors vote: decisions possible (quorum %u)"
                 : "health: only %u of %u directors vote: no backend is taken down or up until "
                   "%u do",
            t.live, t.members, t.quorum);
  }
  /* Decisions wait for a settled ring (ring_settled), and not while the ring is still forming:
   * a director that was alone keeps its synced state when its first neighbour is adopted (the
   * ring goes unsynced only once it has both), and a peer's handshake may still be coming in. A
   * flush then crosses the user list the peer sent before it heard of the flush, and those users
   * come back on this director only (swarm seed 40169: a backend taken down the moment a
   * partition of two directors healed). Alone (no neighbour at all) the quorum decides. The
   * wait of a director that is not the first to act counts from then (pending_since_us). */
  if (!have || !h->settled || (d->left == NULL) != (d->right == NULL) ||
      dir_handshake_in_progress(d)) {
    pending_clear(h);
    return;
  }
  sync_backends(d);
  gboolean first = lowest_live_voter(d, now.mono_us);
  for (guint i = 0; i < h->backends->len; i++) {
    HealthBackend *b = g_ptr_array_index(h->backends, i);
    UsherHost *host = usher_host_table_lookup(d->hosts, &b->ip);
    check_mark(b, host);
    if (host == NULL || host->desynced) {
      b->pending_since_us = 0;
      continue;
    }
    guint failing, ok;
    votes(d, now.mono_us, b, &failing, &ok);
    gboolean go_down = !host->down && failing >= t.needed;
    gboolean go_up = host->down && b->health_down_time != 0 &&
                     b->health_down_time == host->last_updown_change && ok >= t.needed;
    if (!go_down && !go_up) {
      b->pending_since_us = 0;
      continue;
    }
    /* One director acts: the lowest-addressed live voter at once, the others only if the change
     * has not come round after two intervals (that one may be gone). */
    if (b->pending_since_us == 0)
      b->pending_since_us = now.mono_us;
    if (!first && now.mono_us < b->pending_since_us + 2 * (gint64)h->interval_secs * SEC_US)
      continue;
    b->pending_since_us = 0;
    decide(d, now, host, b, go_down, go_down ? failing : ok, &t);
  }
}

static void
after_change(UsherDirector *d, UsherNow now)
{
  /* One tally for the three: who votes depends only on the reports and the time. */
  Tally t;
  tally(d, now.mono_us, &t);
  d->health.settled = ring_settled(d, now, &t);
  evaluate(d, now, &t);
  enforce(d, now, &t);
  if (d->health.report_now) {
    d->health.report_now = FALSE;
    send_report(d, NULL);
  }
}

/* ---- Probes ---------------------------------------------------------------------------------- */

static void
probe_result(UsherDirector *d, UsherNow now, HealthBackend *b, gboolean ok, const char *detail)
{
  Health *h = &d->health;
  char ip[USHER_IP_STRLEN];
  b->probe_id = 0;
  b->probes++;
  b->last_probe_wall = dir_wall_secs(now);
  b->last_ok = ok;
  g_free(b->last_detail);
  b->last_detail = detail != NULL ? g_utf8_make_valid(detail, MIN(strlen(detail), 200)) : NULL;
  if (ok) {
    b->oks++;
    b->fails = 0;
    if (b->failing && b->oks >= h->rise) {
      b->failing = FALSE;
      h->report_now = TRUE;
      dir_log(d, G_LOG_LEVEL_INFO, "health: backend %s answers again (%u good checks)",
              usher_ip_to_string(&b->ip, ip), b->oks);
    }
  } else {
    b->fails++;
    b->oks = 0;
    b->probes_failed++;
    d->stats.probes_failed++;
    if (!b->failing && b->fails >= h->fall) {
      b->failing = TRUE;
      h->report_now = TRUE;
      dir_log(d, G_LOG_LEVEL_WARNING, "health: backend %s fails its checks (%u in a row: %s)",
              usher_ip_to_string(&b->ip, ip), b->fails, detail != NULL ? detail : "failed");
    }
  }
}

void
usher_director_probe_done(UsherDirector *d, UsherNow now, guint64 probe, gboolean ok,
                          const char *detail)
{
  dir_enter(d, now);
  if (probe == 0)
    return;
  for (guint i = 0; i < d->health.backends->len; i++) {
    HealthBackend *b = g_ptr_array_index(d->health.backends, i);
    if (b->probe_id == probe) {
      probe_result(d, now, b, ok, detail);
      after_change(d, now);
      return;
    }
  }
}

gint64
health_next_deadline(UsherDirector *d)
{
  Health *h = &d->health;
  if (!h->enabled || !d->started)
    return 0;
  gint64 t = h->next_tick_us;
  for (guint i = 0; i < h->backends->len; i++) {
    HealthBackend *b = g_ptr_array_index(h->backends, i);
    if (b->probe_id != 0 && (t == 0 || b->probe_deadline_us < t))
      t = b->probe_deadline_us;
  }
  return t;
}

void
health_timers(UsherDirector *d, UsherNow now)
{
  Health *h = &d->health;
  if (!h->enabled || !d->started)
    return;
  for (guint i = 0; i < h->backends->len; i++) {
    HealthBackend *b = g_ptr_array_index(h->backends, i);
    if (b->probe_id != 0 && b->probe_deadline_us <= now.mono_us) {
      d->stats.probes_timed_out++;
      probe_result(d, now, b, FALSE, "the probe was not answered in time");
    }
  }
  if (h->next_tick_us <= now.mono_us) {
    h->next_tick_us = now.mono_us + (gint64)h->interval_secs * SEC_US;
    sync_backends(d);
    for (guint i = 0; i < h->backends->len; i++) {
      HealthBackend *b = g_ptr_array_index(h->backends, i);
      if (b->probe_id != 0)
        continue;
      b->probe_id = d->next_effect_id++;
      b->probe_deadline_us = now.mono_us + ((gint64)h->timeout_secs + 1) * SEC_US;
      d->stats.probes_sent++;
      UsherEffect e = {.type = USHER_EFFECT_PROBE};
      e.probe.id = b->probe_id;
      e.probe.host = b->ip;
      g_array_append_val(d->effects, e);
    }
    h->report_now = TRUE;
  }
  after_change(d, now);
}

/* ---- Reports from peers ---------------------------------------------------------------------- */

gboolean
health_cmd_report(UsherDirector *d, UsherNow now, Conn *c, const UsherRingMsg *msg)
{
  Member *m = dir_member_lookup(d, &msg->health.addr.ip, msg->health.addr.port);
  if (m != NULL && m->self)
    return TRUE; /* our own, back round the ring */
  if (m == NULL || m->removed || msg->health.interval_ms < 100 ||
      msg->health.interval_ms > 3600 * 1000) {
    d->stats.health_reports_refused++;
    return TRUE;
  }
  HealthVoter *v = NULL;
  for (guint i = 0; i < d->health.voters->len && v == NULL; i++) {
    HealthVoter *x = g_ptr_array_index(d->health.voters, i);
    if (x->member == m)
      v = x;
  }
  if (v != NULL && voter_live(d, v, now.mono_us) &&
      (msg->health.boot < v->boot || (msg->health.boot == v->boot && msg->health.seq <= v->seq)))
    return TRUE; /* seen (the other way round the ring), or an older boot */
  if (v == NULL) {
    if (d->health.voters->len >= HEALTH_VOTERS_MAX) {
      d->stats.health_reports_refused++;
      return TRUE;
    }
    v = g_new0(HealthVoter, 1);
    v->member = m;
    v->failing = g_array_new(FALSE, FALSE, sizeof(UsherIp));
    g_ptr_array_add(d->health.voters, v);
  }
  d->stats.health_reports_received++;
  v->boot = msg->health.boot;
  v->seq = msg->health.seq;
  v->received_us = now.mono_us;
  v->interval_ms = msg->health.interval_ms;
  v->complete = msg->health.complete;
  g_array_set_size(v->failing, 0);
  const char *cursor = msg->health.failing;
  UsherIp ip;
  gint64 time;
  while (usher_ring_health_next(&cursor, &ip, NULL))
    g_array_append_val(v->failing, ip);
  sync_backends(d);
  cursor = msg->health.downs;
  while (usher_ring_health_next(&cursor, &ip, &time)) {
    HealthBackend *b = backend_find(d, &ip);
    time = dir_clamp_peer_time(d, time);
    if (b != NULL && time > b->health_down_time)
      b->health_down_time = time;
  }
  send_to_usher_peers(d, c, msg);
  after_change(d, now);
  return TRUE;
}

/* ---- Queries --------------------------------------------------------------------------------- */

static void
health_info_clear(gpointer p)
{
  g_free(((UsherHealthInfo *)p)->last_detail);
}

void
usher_director_get_health(const UsherDirector *d, UsherNow now, UsherHealthReport *out)
{
  memset(out, 0, sizeof(*out));
  Tally t;
  tally(d, now.mono_us, &t);
  out->enabled = d->health.enabled;
  out->members = t.members;
  out->quorum = t.quorum;
  out->live_voters = t.live;
  out->needed = t.needed;
  out->have_quorum = t.live >= t.quorum;
  out->backends = g_array_new(FALSE, TRUE, sizeof(UsherHealthInfo));
  g_array_set_clear_func(out->backends, health_info_clear);
  out->voters = g_array_new(FALSE, TRUE, sizeof(UsherHealthVoter));
  for (guint i = 0; i < usher_host_table_n_hosts(d->hosts); i++) {
    const UsherHost *host = usher_host_table_nth(d->hosts, i);
    UsherHealthInfo info = {0};
    info.ip = host->ip;
    usher_ip_to_string(&host->ip, info.ip_str);
    info.down = host->down;
    const HealthBackend *b = g_hash_table_lookup(d->health.by_ip, &host->ip);
    if (b != NULL) {
      info.failing = b->failing;
      info.fails_in_row = b->fails;
      info.oks_in_row = b->oks;
      info.probes = b->probes;
      info.probes_failed = b->probes_failed;
      info.last_probe = b->last_probe_wall;
      info.last_ok = b->last_ok;
      info.last_detail = g_strdup(b->last_detail);
      info.health_down =
          b->health_down_time != 0 && host->down && b->health_down_time == host->last_updown_change;
      votes(d, now.mono_us, b, &info.votes_failing, &info.votes_ok);
    }
    g_array_append_val(out->backends, info);
  }
  for (guint i = 0; i < d->members->len; i++) {
    const Member *m = g_ptr_array_index(d->members, i);
    for (guint j = 0; j < d->health.voters->len; j++) {
      const HealthVoter *v = g_ptr_array_index(d->health.voters, j);
      if (v->member != m)
        continue;
      UsherHealthVoter hv = {0};
      hv.addr = m->addr;
      hv.age_ms = (now.mono_us - v->received_us) / 1000;
      hv.live = voter_live(d, v, now.mono_us);
      hv.interval_ms = v->interval_ms;
      hv.n_failing = MIN(v->failing->len, (guint)USHER_RING_HEALTH_LIST_MAX);
      for (guint k = 0; k < hv.n_failing; k++)
        hv.failing[k] = g_array_index(v->failing, UsherIp, k);
      hv.complete = v->complete;
      hv.seq = v->seq;
      g_array_append_val(out->voters, hv);
    }
  }
}

void
usher_health_report_clear(UsherHealthReport *report)
{
  g_clear_pointer(&report->backends, g_array_unref);
  g_clear_pointer(&report->voters, g_array_unref);
}

/* director.c - the director: life cycle, outbox, ring members, neighbour choice, SYNC, timers.
 *
 * Connections and the wire protocol are in director-conn.c; users, hosts, moves, kicks and login
 * requests in director-users.c. The rules follow Dovecot 2.3's director (spec sections 4 and 5);
 * doc/ring-protocol.md lists where Usher deliberately differs.
 */
#include "libcore/director-private.h"

#include <stdio.h>
#include <string.h>

/* ---- Outbox ---------------------------------------------------------------------------------- */

void
usher_effect_clear(UsherEffect *e)
{
  switch (e->type) {
  case USHER_EFFECT_SEND:
    g_free(e->send.data);
    break;
  case USHER_EFFECT_DISCONNECT:
    g_free(e->disconnect.reason);
    break;
  case USHER_EFFECT_LOGIN_RESULT:
    g_free(e->login.hostname);
    g_free(e->login.reason);
    break;
  case USHER_EFFECT_KICK:
    g_free(e->kick.name);
    g_free(e->kick.value);
    break;
  case USHER_EFFECT_FLUSH:
    g_free(e->flush.new_hostname);
    g_free(e->flush.socket);
    break;
  case USHER_EFFECT_ADMIN_REPLY:
    g_free(e->admin.text);
    break;
  case USHER_EFFECT_LOG:
    g_free(e->log.message);
    break;
  case USHER_EFFECT_CONNECT:
  case USHER_EFFECT_STATE:
  case USHER_EFFECT_PROBE:
    break;
  }
  memset(e, 0, sizeof(*e));
}

static void
effect_clear_func(gpointer p)
{
  usher_effect_clear(p);
}

static GArray *
new_outbox(void)
{
  GArray *a = g_array_new(FALSE, TRUE, sizeof(UsherEffect));
  g_array_set_clear_func(a, effect_clear_func);
  return a;
}

GArray *
usher_director_take_effects(UsherDirector *d)
{
  GArray *out = d->effects;
  d->effects = new_outbox();
  return out;
}

gboolean
usher_director_has_effects(const UsherDirector *d)
{
  return d->effects->len > 0;
}

void
dir_log(UsherDirector *d, GLogLevelFlags level, const char *fmt, ...)
{
  /* A peer that sends a flood of bad lines must not make us produce a flood of log lines. */
  if (d->logs_this_call >= LOGS_PER_CALL_MAX) {
    d->stats.logs_suppressed++;
    return;
  }
  UsherEffect e = {.type = USHER_EFFECT_LOG};
  e.log.level = level;
  if (++d->logs_this_call == LOGS_PER_CALL_MAX) {
    e.log.level = G_LOG_LEVEL_WARNING;
    e.log.message = g_strdup_printf("more than %d log lines in one call: the rest are dropped "
                                    "(counted as logs_suppressed)",
                                    LOGS_PER_CALL_MAX);
  } else {
    va_list args;
    va_start(args, fmt);
    e.log.message = g_strdup_vprintf(fmt, args);
    va_end(args);
  }
  g_array_append_val(d->effects, e);
}

void
dir_send(UsherDirector *d, Conn *conn, const char *data, gsize len)
{
  if (len == 0)
    return;
  conn->bytes_out += len;
  conn->output_unreported += len;
  conn->output_peak = MAX(conn->output_peak, conn->output_queued + conn->output_unreported);
  conn->last_output_wall = d->now_wall_secs;
  /* Consecutive writes to one connection become one effect (the driver writes them at once);
   * its buffer grows geometrically, not line by line. */
  if (d->effects->len > 0) {
    UsherEffect *last = &g_array_index(d->effects, UsherEffect, d->effects->len - 1);
    if (last->type == USHER_EFFECT_SEND && last->send.conn == conn->id) {
      if (last->send.len + len > d->last_send_cap) {
        d->last_send_cap = MAX(d->last_send_cap * 2, last->send.len + len);
        last->send.data = g_realloc(last->send.data, d->last_send_cap);
      }
      memcpy(last->send.data + last->send.len, data, len);
      last->send.len += len;
      return;
    }
  }
  UsherEffect e = {.type = USHER_EFFECT_SEND};
  e.send.conn = conn->id;
  d->last_send_cap = MAX(len, 256);
  e.send.data = g_malloc(d->last_send_cap);
  memcpy(e.send.data, data, len);
  e.send.len = len;
  g_array_append_val(d->effects, e);
}

void
dir_send_msg(UsherDirector *d, Conn *conn, const UsherRingMsg *msg, guint minor)
{
  g_string_truncate(d->scratch, 0);
  UsherRingFormatResult r = usher_ring_msg_format(msg, minor, d->scratch);
  if (r != USHER_RING_FORMAT_OK) {
    /* Either not sendable at this peer's version (a feature gate), or over the line limit a
     * Dovecot peer accepts: never send what the peer would refuse. */
    dir_log(d, G_LOG_LEVEL_DEBUG, "not sending %s to %s: %s",
            usher_ring_msg_type_to_string(msg->type), conn->name,
            usher_ring_format_result_to_string(r));
    return;
  }
  d->stats.lines_out++;
  dir_send(d, conn, d->scratch->str, d->scratch->len);
}

static void
emit_state(UsherDirector *d)
{
  UsherEffect e = {.type = USHER_EFFECT_STATE};
  g_array_append_val(d->effects, e);
}

gint64
dir_wall_secs(UsherNow now)
{
  return now.wall_us / SEC_US;
}

/* ---- Members --------------------------------------------------------------------------------- */

static int
addr_cmp(const UsherRingAddr *a, const UsherRingAddr *b)
{
  int c = usher_ip_cmp(&a->ip, &b->ip);
  if (c != 0)
    return c;
  return a->port < b->port ? -1 : a->port > b->port ? 1 : 0;
}

static guint
member_search(UsherDirector *d, const UsherRingAddr *addr, gboolean *found_out)
{
  guint lo = 0, hi = d->members->len;
  while (lo < hi) {
    guint mid = lo + (hi - lo) / 2;
    int c = addr_cmp(&((Member *)g_ptr_array_index(d->members, mid))->addr, addr);
    if (c == 0) {
      *found_out = TRUE;
      return mid;
    }
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  *found_out = FALSE;
  return lo;
}

Member *
dir_member_lookup(UsherDirector *d, const UsherIp *ip, guint16 port)
{
  UsherRingAddr addr = {*ip, port};
  gboolean found;
  guint idx = member_search(d, &addr, &found);
  return found ? g_ptr_array_index(d->members, idx) : NULL;
}

/* Looks the member up, adding it if unknown (NULL if the member table is full). */
Member *
dir_member_get(UsherDirector *d, const UsherIp *ip, guint16 port)
{
  UsherRingAddr addr = {*ip, port};
  gboolean found;
  guint idx = member_search(d, &addr, &found);
  if (found)
    return g_ptr_array_index(d->members, idx);
  if (d->members->len >= STATE_MAX_MEMBERS) {
    d->stats.members_refused++;
    return NULL;
  }
  Member *m = g_new0(Member, 1);
  m->addr = addr;
  char ip_str[USHER_IP_STRLEN];
  usher_ip_to_string(ip, ip_str);
  g_snprintf(m->name, sizeof(m->name), "%s:%u", ip_str, port);
  g_ptr_array_insert(d->members, (gint)idx, m);
  return m;
}

static guint
member_index(UsherDirector *d, const Member *m)
{
  gboolean found;
  guint idx = member_search(d, &m->addr, &found);
  g_assert(found);
  return idx;
}

/* Distance walking rightwards (ascending, circular) from self. Self is 0. */
static guint
member_rel(UsherDirector *d, const Member *m)
{
  guint n = d->members->len;
  return (member_index(d, m) + n - member_index(d, d->self)) % n;
}

/* Positive if b1 comes before b2 walking rightwards from self, negative if after, 0 if equal. */
int
dir_member_cmp_to_self(UsherDirector *d, const Member *b1, const Member *b2)
{
  guint r1 = member_rel(d, b1), r2 = member_rel(d, b2);
  return r1 < r2 ? 1 : r1 > r2 ? -1 : 0;
}

void
dir_member_restarted(Member *m)
{
  m->last_seq = 0;
  m->last_weak_forward_seq = 0;
  m->last_sync_seq = 0;
  m->last_sync_timestamp = 0;
  m->last_sync_seq_counter = 0;
}

Member *
dir_preferred_right(UsherDirector *d)
{
  guint n = d->members->len;
  guint self_idx = member_index(d, d->self);
  for (guint i = 1; i < n; i++) {
    Member *m = g_ptr_array_index(d->members, (self_idx + i) % n);
    if (!m->removed)
      return m;
  }
  return NULL;
}

static void
purge_removed_members(UsherDirector *d)
{
  for (guint i = 0; i < d->members->len;) {
    Member *m = g_ptr_array_index(d->members, i);
    gboolean referenced = FALSE;
    if (m->removed) {
      for (guint k = 0; k < d->conns->len; k++)
        if (((Conn *)g_ptr_array_index(d->conns, k))->host == m)
          referenced = TRUE;
    }
    if (m->removed && !referenced) {
      health_member_gone(d, m);
      g_ptr_array_remove_index(d->members, i); /* frees */
    }
    else
      i++;
  }
  d->purge_timer_us = 0;
}

/* ---- Neighbours ------------------------------------------------------------------------------ */

/* Dovecot's director_connect(): dial the first usable member on our right. If none is usable,
 * wait ALONE_GRACE_SECS (retrying every second with failure marks cleared) and then declare
 * ourselves alone. Unlike Dovecot, the grace applies to every such episode, not only the first
 * in the process's life (spec 4.9, weakness 4). */
/* How long a member that failed is skipped, and how often a ring that lacks it (alone, or with
 * another right than the preferred one) tries it again: Dovecot's 60 s and 30 s, but 5 s for a
 * member known to be a usherd, whose failures are detected in seconds and whose heals should be
 * too (doc/health.md, "Fast failure detection"). */
static guint
retry_secs(const Member *m, guint dovecot_secs)
{
  return m != NULL && m->usher_ext ? USHER_PEER_RETRY_SECS : dovecot_secs;
}

static gboolean
any_usher_member(UsherDirector *d)
{
  for (guint i = 0; i < d->members->len; i++) {
    Member *m = g_ptr_array_index(d->members, i);
    if (!m->self && !m->removed && m->usher_ext)
      return TRUE;
  }
  return FALSE;
}

void
dir_connect(UsherDirector *d, UsherNow now, const char *reason)
{
  guint n = d->members->len;
  guint self_idx = member_index(d, d->self);
  gint64 wall = dir_wall_secs(now);
  d->connect_timer_us = 0;

  for (guint i = 1; i < n; i++) {
    Member *m = g_ptr_array_index(d->members, (self_idx + i) % n);
    if (m->removed)
      continue;
    if (m->last_network_failure != 0 &&
        m->last_network_failure + retry_secs(m, RECONNECT_RETRY_SECS) > wall)
      continue;
    if (m->last_protocol_failure != 0 &&
        m->last_protocol_failure + PROTOCOL_FAILURE_RETRY_SECS > wall)
      continue;
    if (conn_outgoing_to(d, m) != NULL)
      return; /* already connected or connecting */
    dir_log(d, G_LOG_LEVEL_INFO, "connecting to %s (%s)", m->name, reason);
    (void)conn_new_outgoing(d, now, m);
    return;
  }

  /* Nobody to connect to. */
  gboolean others = FALSE;
  for (guint i = 0; i < n; i++) {
    Member *m = g_ptr_array_index(d->members, i);
    if (!m->self && !m->removed)
      others = TRUE;
  }
  if (others && d->alone) {
    /* Already alone: keep trying the others now and then (their failure marks expire after
     * RECONNECT_RETRY_SECS), quietly. Dovecot never retries here, so an isolated director
     * stays apart until someone else connects to it. */
    d->connect_timer_us =
      now.mono_us + (any_usher_member(d) ? USHER_PEER_RETRY_SECS : RECONNECT_RETRY_SECS) * SEC_US;
    return;
  }
  if (others) {
    if (d->alone_since_us == 0)
      d->alone_since_us = now.mono_us;
    if (now.mono_us - d->alone_since_us < ALONE_GRACE_SECS * SEC_US) {
      /* Forget recent failures and try again shortly: a member may just be restarting. */
      for (guint i = 0; i < n; i++) {
        Member *m = g_ptr_array_index(d->members, i);
        m->last_network_failure = 0;
        m->last_protocol_failure = 0;
      }
      d->connect_timer_us = now.mono_us + ALONE_RETRY_SECS * SEC_US;
      return;
    }
    dir_log(d, G_LOG_LEVEL_WARNING,
            "no other director reachable for %d s: assuming we are the only one left",
            ALONE_GRACE_SECS);
  }
  d->alone_since_us = 0;
  if (others) {
    d->alone = TRUE;
    d->connect_timer_us =
      now.mono_us + (any_usher_member(d) ? USHER_PEER_RETRY_SECS : RECONNECT_RETRY_SECS) * SEC_US;
  }
  if (d->left != NULL) {
    /* Alone: the left connection cannot be part of a ring any more. */
    conn_close(d, now, d->left, "we are alone in the ring", CLOSE_SEND_DISCONNECT);
  }
  if (others)
    d->stats.alone_declared++;
  d->ring_min_version = USHER_RING_VERSION_MINOR;
  if (!d->ring_handshaked)
    dir_set_ring_handshaked(d, now);
  else
    dir_set_ring_synced(d, now);
}

/* ---- SYNC ------------------------------------------------------------------------------------ */

static void
sync_send(UsherDirector *d, UsherNow now, const UsherRingAddr *origin, guint32 seq, guint minor,
          guint32 timestamp, guint32 hosts_hash, gboolean from_self)
{
  g_assert(d->right != NULL);
  if (from_self) {
    d->last_sync_sent_ring_change_counter = d->ring_change_counter;
    d->last_sync_start_us = now.mono_us;
  }
  UsherRingMsg msg;
  usher_ring_msg_init(&msg, USHER_RING_MSG_SYNC);
  msg.sync.addr = *origin;
  msg.sync.seq = seq;
  msg.sync.minor = minor;
  msg.sync.has_timestamp = TRUE;
  msg.sync.timestamp = timestamp;
  msg.sync.hosts_hash = hosts_hash;
  dir_send_msg(d, d->right, &msg, d->right->peer_minor);
  /* Ping both neighbours: if either link hangs, we want to know soon. */
  if (d->left != NULL)
    conn_ping(d, now, d->left);
  conn_ping(d, now, d->right);
}

void
dir_set_ring_unsynced(UsherDirector *d, UsherNow now)
{
  if (d->ring_synced) {
    d->ring_synced = FALSE;
    d->last_sync_start_us = now.mono_us;
    emit_state(d);
  }
  if (d->sync_timer_us == 0)
    d->sync_timer_us = now.mono_us + SYNC_RESEND_SECS * SEC_US;
}

/* Something changed locally: start a new SYNC round (Dovecot's director_sync()). */
void
dir_sync(UsherDirector *d, UsherNow now)
{
  if (d->sync_frozen > 0) {
    d->sync_pending = TRUE;
    return;
  }
  d->sync_pending = FALSE;
  d->sync_seq++;
  if (d->left == NULL && d->right == NULL) {
    /* Alone: nothing to agree with. */
    return;
  }
  dir_set_ring_unsynced(d, now);
  if (d->right == NULL)
    return; /* sent once a right neighbour is adopted */
  if (d->left != NULL)
    conn_set_synced(d->left, FALSE);
  conn_set_synced(d->right, FALSE);
  sync_send(d, now, &d->self->addr, d->sync_seq, USHER_RING_VERSION_MINOR,
            (guint32)dir_wall_secs(now), usher_host_table_hosts_hash(d->hosts), TRUE);
}

/* Sends our current SYNC again in case the last one got lost. */
gboolean
dir_resend_sync(UsherDirector *d, UsherNow now)
{
  if (d->ring_synced || d->left == NULL || d->right == NULL)
    return FALSE;
  d->stats.sync_resends++;
  d->last_resend_sync_wall = dir_wall_secs(now);
  sync_send(d, now, &d->self->addr, d->sync_seq, USHER_RING_VERSION_MINOR,
            (guint32)dir_wall_secs(now), usher_host_table_hosts_hash(d->hosts), TRUE);
  return TRUE;
}

void
dir_set_ring_handshaked(UsherDirector *d, UsherNow now)
{
  if (d->handshake_start_us != 0) {
    gint64 secs = (now.mono_us - d->handshake_start_us) / SEC_US;
    dir_log(d, G_LOG_LEVEL_INFO, "ring handshaked in %" G_GINT64_FORMAT " s", secs);
  }
  d->handshake_start_us = 0;
  d->ring_handshaked = TRUE;
  dir_set_ring_synced(d, now);
}

void
dir_set_ring_synced(UsherDirector *d, UsherNow now)
{
  gboolean was = d->ring_synced;
  d->ring_synced = TRUE;
  d->sync_timer_us = 0;
  if (d->right != NULL && d->right->host != dir_preferred_right(d)) {
    if (d->preferred_right_timer_us == 0)
      d->preferred_right_timer_us =
        now.mono_us +
        retry_secs(dir_preferred_right(d), PREFERRED_RIGHT_RECONNECT_SECS) * SEC_US;
  } else {
    d->preferred_right_timer_us = 0;
  }
  if (d->left != NULL)
    conn_set_synced(d->left, TRUE);
  if (d->right != NULL)
    conn_set_synced(d->right, TRUE);
  purge_removed_members(d);
  for (guint i = 0; i < usher_host_table_n_hosts(d->hosts); i++)
    usher_host_table_nth(d->hosts, i)->desynced = FALSE;
  if (!was)
    emit_state(d);
  dir_state_changed(d, now);
}

/* Anything that may let waiting requests proceed. */
void
dir_state_changed(UsherDirector *d, UsherNow now)
{
  requests_continue(d, now);
  admin_continue(d, now);
}

/* ---- Removing a ring member ------------------------------------------------------------------ */

void
dir_remove_member(UsherDirector *d, UsherNow now, Member *src, Member *orig, Member *target)
{
  if (target->self && src != NULL && !src->self) {
    /* Another director removes us: it and the rest of the ring will disconnect us. */
    return;
  }
  if (!target->self) {
    target->removed = TRUE;
    target->removed_mono_us = now.mono_us;
    if (d->purge_timer_us == 0)
      d->purge_timer_us = now.mono_us + REMOVED_PURGE_SECS * SEC_US;
  }
  UsherRingMsg msg;
  usher_ring_msg_init(&msg, USHER_RING_MSG_DIRECTOR_REMOVE);
  msg.director = target->addr;
  (void)orig;
  flood(d, src, USHER_RING_MINOR_RING_REMOVE, &msg);

  /* Close every connection to the removed member. */
  g_autoptr(GArray) ids = dir_conn_ids_sorted(d);
  for (guint i = 0; i < ids->len; i++) {
    Conn *c = dir_conn_by_id(d, g_array_index(ids, UsherConnId, i));
    if (c != NULL && c->host == target)
      conn_close(d, now, c, "director removed from the ring", CLOSE_SEND_DISCONNECT);
  }
  if (d->right == NULL)
    dir_connect(d, now, "director removed");
  dir_sync(d, now);
}

/* ---- Life cycle ------------------------------------------------------------------------------ */

static void
conn_free_func(gpointer p)
{
  Conn *c = p;
  usher_line_reader_free(c->reader);
  if (c->users_to_send != NULL)
    g_array_unref(c->users_to_send);
  if (c->replacing_hosts != NULL)
    g_array_unref(c->replacing_hosts);
  if (c->held_lines != NULL)
    g_string_free(c->held_lines, TRUE);
  if (c->held_min_minor != NULL)
    g_byte_array_unref(c->held_min_minor);
  g_free(c);
}

static guint
move_hash(gconstpointer p)
{
  const Move *m = p;
  return g_direct_hash(m->tag) ^ m->hash;
}

static gboolean
move_equal(gconstpointer a, gconstpointer b)
{
  const Move *x = a, *y = b;
  return x->tag == y->tag && x->hash == y->hash;
}

void
dir_enter(UsherDirector *d, UsherNow now)
{
  /* The time contract of director.h. A driver that breaks it has a bug that would otherwise show
   * up much later as timers firing at random. */
  g_assert(now.mono_us > 0);
  g_assert(now.mono_us >= d->last_mono_us);
  g_assert(now.wall_us >= 0 && now.wall_us <= USHER_WALL_US_MAX);
  d->last_mono_us = now.mono_us;
  d->wall_minus_mono_us = now.wall_us - now.mono_us;
  d->now_wall_secs = now.wall_us / SEC_US;
  d->logs_this_call = 0;
}

/* A time (UNIX seconds) that a peer sent: anything outside 0 .. 2^32-1 is a lie or a broken
 * clock; clamp it so that no arithmetic on it can overflow. */
gint64
dir_clamp_peer_time(UsherDirector *d, gint64 secs)
{
  if (secs >= 0 && secs <= TIME_PEER_MAX)
    return secs;
  d->stats.times_clamped++;
  return secs < 0 ? 0 : TIME_PEER_MAX;
}

gint64
dir_clamp_peer_time_ahead(UsherDirector *d, UsherNow now, gint64 secs)
{
  gint64 limit = MIN(TIME_PEER_MAX, dir_wall_secs(now) + PEER_CLOCK_AHEAD_MAX_SECS);
  gint64 clamped = CLAMP(secs, 0, limit);
  if (clamped != secs)
    d->stats.times_clamped++; /* once, however far out of range */
  return clamped;
}

UsherDirector *
usher_director_new(const UsherConfig *config, const UsherRingAddr *self, guint64 seed,
                   UsherNow now, GError **error)
{
  UsherLoginHasher *hasher =
    usher_login_hasher_new(config->username_hash, config->master_user_separator, error);
  if (hasher == NULL)
    return NULL;
  UsherDirector *d = g_new0(UsherDirector, 1);
  d->hasher = hasher;
  d->user_expire_secs = config->user_expire_secs;
  d->user_kick_delay_secs = config->user_kick_delay_secs;
  d->max_parallel_moves = config->max_parallel_moves;
  d->max_parallel_kicks = config->max_parallel_kicks;
  d->flush_socket = g_strdup(config->flush_socket);
  d->ping_idle_timeout_secs = config->ping_idle_timeout_secs;
  d->ping_max_timeout_secs = config->ping_max_timeout_secs;
  d->usher_ping_timeout_secs = MAX(config->usher_ping_timeout_secs, 1u);
  d->output_pause_bytes = (gsize)MIN((guint64)USHER_OUTPUT_PAUSE_BYTES, config->output_buffer_size / 4);
  d->output_resume_bytes = MIN((gsize)USHER_OUTPUT_RESUME_BYTES, d->output_pause_bytes / 4);
  usher_rng_seed(&d->rng, seed);

  d->members = g_ptr_array_new_with_free_func(g_free);
  d->conns = g_ptr_array_new_with_free_func(conn_free_func);
  d->next_conn_id = 1;
  d->hosts = usher_host_table_new(config->user_expire_secs);
  d->moves = g_hash_table_new_full(move_hash, move_equal, g_free, NULL);
  d->kicks = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL, g_free);
  d->next_effect_id = 1;
  g_queue_init(&d->requests);
  g_queue_init(&d->admin_ops);
  d->request_ids = g_hash_table_new(g_int64_hash, g_int64_equal);
  d->effects = new_outbox();
  d->scratch = g_string_sized_new(1024);
  d->ring_min_version = USHER_RING_VERSION_MINOR;

  for (guint i = 0; i < config->directors->len; i++) {
    const UsherDirectorAddr *a = &g_array_index(config->directors, UsherDirectorAddr, i);
    (void)dir_member_get(d, &a->ip, a->port);
  }
  if (config->directors->len == 0) {
    UsherIp lo = {.family = USHER_IP_V4, .addr = {127, 0, 0, 1}};
    d->self = dir_member_get(d, &lo, 0);
  } else {
    d->self = dir_member_lookup(d, &self->ip, self->port);
    if (d->self == NULL) {
      char ip[USHER_IP_STRLEN];
      g_set_error(error, USHER_CONFIG_ERROR, USHER_CONFIG_ERROR_INVALID,
                  "[ring] directors: this director (%s:%u) is not in the list",
                  usher_ip_to_string(&self->ip, ip), self->port);
      usher_director_free(d);
      return NULL;
    }
  }
  d->self->self = TRUE;
  /* Number our commands from the current UNIX time rather than from 0: peers that remember our
   * sequence from before a restart would otherwise drop our new commands as already seen until
   * we passed the old number (spec weakness 13; a restarted director's host change never
   * reached two of six directors: swarm seed 7102). Good until 2106 at one command a second on
   * average, and invisible to Dovecot peers, which only compare. */
  d->self->last_seq = (guint32)CLAMP(dir_wall_secs(now), 0, (gint64)G_MAXUINT32 / 2);
  /* The same for our SYNC: directors that are not our neighbours (no ME, no connect to reset
   * what they remember of us) dropped a restarted director's SYNC as stale for up to 120 s after
   * its last one, and it could not finish its handshake: in a rolling restart 40 s apart, every
   * restarted director but the first kept its logins waiting for up to two minutes (scenario
   * rolling-restart). A ring change bumps it, far less than once a second. */
  d->sync_seq = d->self->last_seq;

  d->initial_hosts = usher_host_table_new(config->user_expire_secs);
  if (!usher_host_table_add_backends(d->hosts, config->backends, error) ||
      !usher_host_table_add_backends(d->initial_hosts,
                                     config->initial_backends != NULL ? config->initial_backends
                                                                      : config->backends,
                                     NULL)) {
    usher_director_free(d);
    return NULL;
  }
  d->handshake_start_us = now.mono_us;
  health_init(d, config, now);
  dir_enter(d, now);
  return d;
}

gboolean
usher_director_set_initial_backends(UsherDirector *d, const GPtrArray *backends, GError **error)
{
  UsherHostTable *fresh = usher_host_table_new(d->user_expire_secs);
  if (!usher_host_table_add_backends(fresh, backends, error)) {
    usher_host_table_free(fresh);
    return FALSE;
  }
  usher_host_table_free(d->initial_hosts);
  d->initial_hosts = fresh;
  return TRUE;
}

void
usher_director_free(UsherDirector *d)
{
  if (d == NULL)
    return;
  users_free_all(d);
  health_free(d);
  g_queue_clear_full(&d->admin_ops, (GDestroyNotify)admin_op_free);
  g_ptr_array_unref(d->conns);
  g_ptr_array_unref(d->members);
  g_hash_table_unref(d->moves);
  g_queue_clear(&d->kick_order); /* the Kicks belong to d->kicks */
  g_hash_table_unref(d->kicks);
  g_hash_table_unref(d->request_ids);
  usher_host_table_free(d->hosts);
  usher_host_table_free(d->initial_hosts);
  g_array_unref(d->effects);
  g_string_free(d->scratch, TRUE);
  usher_login_hasher_free(d->hasher);
  g_free(d->flush_socket);
  g_free(d);
}

void
usher_director_start(UsherDirector *d, UsherNow now)
{
  dir_enter(d, now);
  g_return_if_fail(!d->started);
  d->started = TRUE;
  health_start(d, now);
  dir_connect(d, now, "starting");
}

/* ---- Inputs ---------------------------------------------------------------------------------- */

/* Index of connection id in d->conns, or -1. */
gint
dir_conn_index(UsherDirector *d, UsherConnId id)
{
  guint lo = 0, hi = d->conns->len;
  while (lo < hi) {
    guint mid = lo + (hi - lo) / 2;
    UsherConnId m = ((Conn *)g_ptr_array_index(d->conns, mid))->id;
    if (m == id)
      return (gint)mid;
    if (m < id)
      lo = mid + 1;
    else
      hi = mid;
  }
  return -1;
}

Conn *
dir_conn_by_id(UsherDirector *d, UsherConnId id)
{
  gint i = dir_conn_index(d, id);
  return i < 0 ? NULL : g_ptr_array_index(d->conns, i);
}

void
dir_conn_add(UsherDirector *d, Conn *c)
{
  g_assert(d->conns->len == 0 || ((Conn *)g_ptr_array_index(d->conns, d->conns->len - 1))->id < c->id);
  g_ptr_array_add(d->conns, c);
}

UsherConnId
usher_director_peer_accepted(UsherDirector *d, UsherNow now, const UsherIp *remote_ip)
{
  dir_enter(d, now);
  /* Only a configured, non-removed director's IP may connect, from any port. */
  gboolean known = FALSE;
  for (guint i = 0; i < d->members->len; i++) {
    Member *m = g_ptr_array_index(d->members, i);
    if (!m->removed && !m->self && usher_ip_equal(&m->addr.ip, remote_ip))
      known = TRUE;
  }
  char ip[USHER_IP_STRLEN];
  if (!known || d->conns->len >= STATE_MAX_CONNECTIONS) {
    d->stats.refused_connections++;
    dir_log(d, G_LOG_LEVEL_WARNING, "refused ring connection from %s: %s",
            usher_ip_to_string(remote_ip, ip),
            known ? "too many connections" : "not a ring member");
    return USHER_CONN_ID_NONE;
  }
  Conn *c = g_new0(Conn, 1);
  c->id = d->next_conn_id++;
  c->incoming = TRUE;
  c->remote_ip = *remote_ip;
  c->created_us = c->last_input_us = c->timeout_base_us = c->handshake_start_us = now.mono_us;
  c->reader = usher_line_reader_new(USHER_RING_LINE_MAX);
  c->ping_rtt_ms = -1;
  g_snprintf(c->name, sizeof(c->name), "in#%u/%s", c->id, usher_ip_to_string(remote_ip, ip));
  dir_conn_add(d, c);

  UsherRingMsg msg;
  usher_ring_msg_init(&msg, USHER_RING_MSG_VERSION);
  msg.version.major = USHER_RING_VERSION_MAJOR;
  msg.version.minor = USHER_RING_VERSION_MINOR;
  dir_send_msg(d, c, &msg, USHER_RING_VERSION_MINOR);
  usher_ring_msg_init(&msg, USHER_RING_MSG_ME);
  msg.me.addr = d->self->addr;
  msg.me.has_time = TRUE;
  msg.me.time = dir_wall_secs(now);
  dir_send_msg(d, c, &msg, USHER_RING_VERSION_MINOR);
  return c->id;
}

void
usher_director_peer_connected(UsherDirector *d, UsherNow now, UsherConnId id)
{
  dir_enter(d, now);
  Conn *c = dir_conn_by_id(d, id);
  if (c == NULL || c->incoming || c->connected)
    return;
  conn_connected(d, now, c);
}

void
usher_director_peer_bytes(UsherDirector *d, UsherNow now, UsherConnId id, const void *data,
                          gsize len)
{
  dir_enter(d, now);
  Conn *c = dir_conn_by_id(d, id);
  if (c == NULL)
    return;
  d->sync_frozen++;
  conn_input(d, now, c, data, len);
  d->sync_frozen--;
  if (d->sync_frozen == 0 && d->sync_pending)
    dir_sync(d, now);
}

void
usher_director_prefetch_bytes(UsherDirector *d, const void *data, gsize len)
{
  static const char prefix[] = "USER\t";
  const char *p = data, *end = p + len;
  if (len < sizeof(prefix) || memcmp(p, prefix, sizeof(prefix) - 1) != 0)
    return;
  guint32 hash = 0;
  for (p += sizeof(prefix) - 1; p < end && *p >= '0' && *p <= '9' && hash < G_MAXUINT32 / 10; p++)
    hash = hash * 10 + (guint32)(*p - '0');
  for (guint t = 0; t < usher_host_table_n_tags(d->hosts); t++)
    usher_user_dir_prefetch(usher_host_table_nth_tag(d->hosts, t)->users, hash);
}

void
usher_director_peer_closed(UsherDirector *d, UsherNow now, UsherConnId id, const char *reason)
{
  dir_enter(d, now);
  Conn *c = dir_conn_by_id(d, id);
  if (c == NULL)
    return;
  conn_close(d, now, c, reason != NULL ? reason : "connection closed", CLOSE_FAILURE);
}

void
usher_director_peer_output_queued(UsherDirector *d, UsherNow now, UsherConnId id,
                                  gsize queued_bytes)
{
  dir_enter(d, now);
  Conn *c = dir_conn_by_id(d, id);
  if (c == NULL)
    return;
  if (c->output_queued > 0 && queued_bytes < c->output_queued + c->output_unreported)
    c->output_progress_us = now.mono_us; /* a backlog is draining: the peer reads */
  c->output_queued = queued_bytes;
  c->output_unreported = 0;
  c->output_peak = MAX(c->output_peak, c->output_queued);
  if (c->users_paused && c->output_queued <= d->output_resume_bytes) {
    c->users_paused = FALSE;
    conn_continue_sending_users(d, now, c);
  }
}

/* ---- Timers ---------------------------------------------------------------------------------- */

static gint64
min_deadline(gint64 a, gint64 b)
{
  if (a == 0)
    return b;
  if (b == 0)
    return a;
  return MIN(a, b);
}

/* Every connection id, ascending. Closing a connection frees it, so callers look each id up
 * again with dir_conn_by_id(). */
GArray *
dir_conn_ids_sorted(UsherDirector *d)
{
  GArray *a = g_array_sized_new(FALSE, FALSE, sizeof(UsherConnId), d->conns->len);
  for (guint i = 0; i < d->conns->len; i++)
    g_array_append_val(a, ((Conn *)g_ptr_array_index(d->conns, i))->id);
  return a;
}

gint64
usher_director_next_deadline(UsherDirector *d)
{
  gint64 t = 0;
  t = min_deadline(t, d->sync_timer_us);
  t = min_deadline(t, d->connect_timer_us);
  t = min_deadline(t, d->preferred_right_timer_us);
  t = min_deadline(t, d->purge_timer_us);
  for (guint i = 0; i < d->conns->len; i++)
    t = min_deadline(t, conn_next_deadline(d, g_ptr_array_index(d->conns, i)));
  t = min_deadline(t, users_next_deadline(d));
  t = min_deadline(t, requests_next_deadline(d));
  t = min_deadline(t, admin_next_deadline(d));
  t = min_deadline(t, health_next_deadline(d));
  return t == 0 ? USHER_DEADLINE_NEVER : t;
}

void
usher_director_on_deadline(UsherDirector *d, UsherNow now)
{
  dir_enter(d, now);
  d->sync_frozen++;
  if (d->connect_timer_us != 0 && d->connect_timer_us <= now.mono_us)
    dir_connect(d, now, "retrying");
  if (d->sync_timer_us != 0 && d->sync_timer_us <= now.mono_us) {
    d->sync_timer_us = 0;
    if (!d->ring_synced) {
      d->sync_timer_us = now.mono_us + SYNC_RESEND_SECS * SEC_US;
      if (d->right == NULL)
        dir_connect(d, now, "SYNC timed out without a right neighbour");
      else if (dir_resend_sync(d, now))
        dir_log(d, G_LOG_LEVEL_INFO, "ring SYNC appears to have got lost, resending");
    }
  }
  if (d->preferred_right_timer_us != 0 && d->preferred_right_timer_us <= now.mono_us) {
    d->preferred_right_timer_us = 0;
    Member *pref = dir_preferred_right(d);
    if (pref != NULL && d->right != NULL && d->right->host != pref) {
      if (conn_outgoing_to(d, pref) == NULL) {
        dir_log(d, G_LOG_LEVEL_INFO, "trying to reconnect to our preferred right %s",
                pref->name);
        pref->last_network_failure = 0;
        pref->last_protocol_failure = 0;
        (void)conn_new_outgoing(d, now, pref);
      }
      /* Unlike Dovecot (one attempt per synced ring), keep trying while the right is not the
       * preferred one, so a healed partition rejoins without waiting for another change. */
      d->preferred_right_timer_us =
        now.mono_us + retry_secs(pref, PREFERRED_RIGHT_RECONNECT_SECS) * SEC_US;
    }
  }
  if (d->purge_timer_us != 0 && d->purge_timer_us <= now.mono_us)
    purge_removed_members(d);

  /* Connections in id order; a timer may close any connection, so look each one up again. */
  g_autoptr(GArray) ids = dir_conn_ids_sorted(d);
  for (guint i = 0; i < ids->len; i++) {
    Conn *c = dir_conn_by_id(d, g_array_index(ids, UsherConnId, i));
    if (c != NULL)
      conn_timers(d, now, c);
  }
  users_timers(d, now);
  requests_timers(d, now);
  admin_timers(d, now);
  health_timers(d, now);
  d->sync_frozen--;
  if (d->sync_frozen == 0 && d->sync_pending)
    dir_sync(d, now);
}

/* ---- State ----------------------------------------------------------------------------------- */

const UsherRingAddr *
usher_director_get_self(const UsherDirector *d)
{
  return &d->self->addr;
}

gboolean
usher_director_is_ring_handshaked(const UsherDirector *d)
{
  return d->ring_handshaked;
}

gboolean
usher_director_is_ring_synced(const UsherDirector *d)
{
  return d->ring_synced;
}

guint
usher_director_get_ring_min_version(const UsherDirector *d)
{
  return d->ring_min_version;
}

const UsherRingAddr *
usher_director_get_left(const UsherDirector *d)
{
  return d->left != NULL && d->left->host != NULL ? &d->left->host->addr : NULL;
}

const UsherRingAddr *
usher_director_get_right(const UsherDirector *d)
{
  return d->right != NULL && d->right->host != NULL ? &d->right->host->addr : NULL;
}

UsherHostTable *
usher_director_get_hosts(UsherDirector *d)
{
  return d->hosts;
}

const UsherDirectorStats *
usher_director_get_stats(const UsherDirector *d)
{
  return &d->stats;
}

guint
usher_director_count_pending_requests(const UsherDirector *d)
{
  return d->requests.length - d->requests_cancelled_waiting;
}

guint
usher_director_count_moving_users(const UsherDirector *d)
{
  return d->users_moving_count;
}

static guint64
fnv64(guint64 h, const void *data, gsize len)
{
  const guint8 *p = data;
  for (gsize i = 0; i < len; i++) {
    h ^= p[i];
    h *= G_GUINT64_CONSTANT(0x100000001b3);
  }
  return h;
}

guint64
usher_director_state_fingerprint(UsherDirector *d)
{
  guint64 h = G_GUINT64_CONSTANT(0xcbf29ce484222325);
  for (guint i = 0; i < usher_host_table_n_hosts(d->hosts); i++) {
    UsherHost *host = usher_host_table_nth(d->hosts, i);
    h = fnv64(h, &host->ip, sizeof(host->ip));
    guint32 v[2] = {host->vhost_count, host->down ? 1u : 0u};
    h = fnv64(h, v, sizeof(v));
    h = fnv64(h, host->tag->name, strlen(host->tag->name) + 1);
  }
  for (guint t = 0; t < usher_host_table_n_tags(d->hosts); t++) {
    UsherTag *tag = usher_host_table_nth_tag(d->hosts, t);
    /* A tag without users is no state: one that a settled conflict left empty on some directors
     * only (tags are kept once made) must not make them differ. Its hosts count above. */
    if (usher_user_dir_count(tag->users) == 0)
      continue;
    /* Order-independent over users: the list order may differ by propagation timing. */
    guint64 sum = 0;
    for (UsherUser *u = usher_user_dir_oldest(tag->users); u != NULL;
         u = usher_user_dir_next(tag->users, u)) {
      UsherHost *host = usher_host_table_get(d->hosts, u->host);
      guint64 e = fnv64(G_GUINT64_CONSTANT(0xcbf29ce484222325), &u->hash, sizeof(u->hash));
      e = fnv64(e, &host->ip, sizeof(host->ip));
      sum += e * G_GUINT64_CONSTANT(0x9e3779b97f4a7c15);
    }
    h = fnv64(h, tag->name, strlen(tag->name) + 1);
    h = fnv64(h, &sum, sizeof(sum));
  }
  return h;
}

/* director-users.c - users on the ring: USER propagation and conflict rules, weak users, host
 * changes, moves (kill / USER-KILLED / USER-KILLED-EVERYWHERE / flush / delay), kicks, expiry
 * and login requests. Spec sections 3, 4.6, 4.7, 5 and 7.4.
 */
#include "libcore/director-private.h"

#include <string.h>

#define MSG_INIT(msg, t) usher_ring_msg_init(&(msg), USHER_RING_MSG_##t)

static UsherHost *
user_host(UsherDirector *d, const UsherUser *u)
{
  UsherHost *h = usher_host_table_get(d->hosts, u->host);
  g_assert(h != NULL);
  return h;
}

guint
dir_count_users(const UsherDirector *d)
{
  guint n = 0;
  for (guint t = 0; t < usher_host_table_n_tags(d->hosts); t++)
    n += usher_user_dir_count(usher_host_table_nth_tag(d->hosts, t)->users);
  return n;
}

/* TRUE if one more directory entry fits (STATE_MAX_USERS); counts the refusal otherwise. */
static gboolean
users_room(UsherDirector *d)
{
  if (dir_count_users(d) < STATE_MAX_USERS)
    return TRUE;
  d->stats.users_refused++;
  dir_log(d, G_LOG_LEVEL_WARNING, "user directory full (%d entries): not adding a user",
          STATE_MAX_USERS);
  return FALSE;
}

gboolean
usher_director_restore_user(UsherDirector *d, UsherNow now, guint32 hash, const UsherIp *ip,
                            guint32 timestamp)
{
  dir_enter(d, now);
  g_assert(!d->started);
  gint64 wall = dir_wall_secs(now);
  UsherHost *host = usher_host_table_lookup(d->hosts, ip);
  if (host == NULL || hash == 0 || (gint64)timestamp + (gint64)d->user_expire_secs <= wall)
    return FALSE;
  UsherUserDir *users = host->tag->users;
  if (usher_user_dir_lookup(users, hash) != NULL || !users_room(d))
    return FALSE;
  (void)usher_user_dir_add(users, hash, host->id, timestamp, wall);
  return TRUE;
}

/* ---- Propagation ------------------------------------------------------------------------------ */

void
users_update_user(UsherDirector *d, Member *src, UsherTag *tag, UsherUser *user)
{
  (void)tag;
  UsherRingMsg msg;
  MSG_INIT(msg, USER);
  msg.user.hash = user->hash;
  msg.user.ip = user_host(d, user)->ip;
  msg.user.has_timestamp = TRUE;
  msg.user.timestamp = user->timestamp;
  flood(d, src, 0, &msg);
}

void
users_update_user_weak(UsherDirector *d, Member *src, Conn *src_conn,
                       const UsherRingOrigin *origin, UsherTag *tag, UsherUser *user)
{
  (void)tag;
  UsherRingMsg msg;
  MSG_INIT(msg, USER_WEAK);
  if (origin != NULL)
    msg.user_ref.origin = *origin;
  else
    origin_fill(d, NULL, &msg.user_ref.origin);
  msg.user_ref.hash = user->hash;
  msg.user_ref.ip = user_host(d, user)->ip;
  if (src != d->self && d->left != NULL && d->right != NULL && d->left->host == d->right->host) {
    /* A two-director ring: both links lead to the same peer, so "everyone but the source" is
     * nobody. Send it back over the other link so its origin sees it come round. */
    Conn *out = d->right == src_conn ? d->left : d->right;
    dir_send_msg(d, out, &msg, out->peer_minor);
  } else {
    flood(d, src, 0, &msg);
  }
}

/* Dovecot's director_user_refresh() (spec 4.6.2). Returns TRUE if anything changed; *user_out is
 * the entry (NULL if the update was ignored as already expired). */
gboolean
users_refresh(UsherDirector *d, UsherNow now, Conn *conn, guint32 hash, UsherHost *host,
              gint64 timestamp, gboolean has_timestamp, gboolean weak, gboolean *forced_out,
              UsherUser **user_out)
{
  gint64 wall = dir_wall_secs(now);
  UsherUserDir *users = host->tag->users;
  gboolean ret = FALSE, unset_weak = FALSE;
  *forced_out = FALSE;
  *user_out = NULL;

  if (hash == 0) {
    /* Hash 0 means "no hash" to Dovecot; no real user has it. Ignore what a peer says of it. */
    d->stats.ignored_updates++;
    return FALSE;
  }
  if (!has_timestamp)
    timestamp = wall;
  if (timestamp + (gint64)d->user_expire_secs <= wall) {
    /* Already expired by our clock: ignore entirely (Dovecot does the same). */
    dir_log(d, G_LOG_LEVEL_DEBUG,
            "ignoring an update for user hash %u from %s: its timestamp is %" G_GINT64_FORMAT
            " s past expiry by our clock",
            hash, conn != NULL ? conn->name : "?",
            wall - (timestamp + (gint64)d->user_expire_secs));
    return FALSE;
  }

  UsherUser *user;
  if (dir_count_users(d) < STATE_MAX_USERS) {
    gboolean added;
    user = usher_user_dir_find_or_add(users, hash, host->id, timestamp, wall, &added);
    if (added) {
      user->weak = weak ? 1 : 0;
      *user_out = user;
      return TRUE;
    }
  } else if ((user = usher_user_dir_lookup(users, hash)) == NULL) {
    (void)users_room(d); /* counts and logs the refusal */
    return FALSE;
  }

  UsherHost *cur = user_host(d, user);
  if (user->weak) {
    if (!weak) {
      unset_weak = TRUE;
      user->weak = 0;
      ret = TRUE;
    }
  } else if (weak && !usher_user_dir_is_recently_updated(users, user, wall)) {
    user->weak = 1;
    ret = TRUE;
  } else if (weak) {
    /* We changed it recently ourselves: keep our host, and say so. */
    host = cur;
    ret = TRUE;
  } else if (cur == host) {
    /* same host */
  } else if (usher_user_dir_is_near_expiring(users, user, wall) &&
             timestamp > (gint64)user->timestamp) {
    /* The other side has probably let it expire already and placed the user afresh (its
     * timestamp is newer): take its host. With the same timestamp nobody placed it afresh: two
     * placements of a split meet, and the conflict rule below settles them. Dovecot takes the
     * other host whenever ours is near expiring; two such placements then chase each other
     * round the ring, each director taking whichever arrives last, until the entry expires
     * (swarm seed 98522: millions of USER lines within a second). */
    ret = TRUE;
  } else if (user->kill_state != USHER_KILL_NONE) {
    /* Being moved: the sender has not seen the move yet. Remember it: when the move ends we
     * announce where the user is, or a sender that never saw the move (a ring that was split
     * while it ran) keeps the other backend (found by ushersim swarm, seed 1425). */
    dir_log(d, G_LOG_LEVEL_DEBUG, "user hash %u is being moved: keeping %s, not %s", hash,
            cur->ip_str, host->ip_str);
    Move *m = move_lookup(d, cur->tag, hash);
    if (m != NULL)
      m->ignored_update = TRUE;
    host = cur;
  } else {
    /* A true conflict. Everyone must pick the same host without fighting over it: the lower
     * IP wins, and sessions on the other backend are kicked. */
    d->stats.user_conflicts++;
    dir_log(d, G_LOG_LEVEL_WARNING,
            "user hash %u is being sent to two backends: %s and %s (via %s%s); the lower IP wins",
            hash, cur->ip_str, host->ip_str, conn != NULL ? conn->name : "?",
            conn != NULL && !conn->handshake_received ? ", handshaking" : "");
    if (usher_ip_cmp(&cur->ip, &host->ip) <= 0)
      host = cur; /* ours is the lower one */
    /* Send the winner back to the sender too. Dovecot does that only when it switches; when it
     * keeps its own (lower) host, the sender never hears that it lost and keeps the user on the
     * other backend until the entry expires (found by ushersim swarm, seed 227). */
    *forced_out = TRUE;
    users_kick_hash(d, now, d->self, NULL, hash, &host->ip);
    ret = TRUE;
  }
  if (user->host != host->id) {
    usher_user_dir_set_host(users, user, host->id);
    ret = TRUE;
  }
  /* Timestamps only move forward. A peer without timestamps (minor < 9) sends "now" on every
   * hop; refresh only if ours is older than a cap, so that slow rings do not ping-pong. */
  gboolean refresh = timestamp > (gint64)user->timestamp;
  if (!has_timestamp) {
    gint64 cap = MIN((gint64)d->user_expire_secs / 4, OLD_USER_REFRESH_SKIP_CAP_SECS);
    refresh = (gint64)user->timestamp < wall - cap;
  }
  if (refresh) {
    usher_user_dir_refresh(users, user, timestamp, wall);
    ret = TRUE;
  }
  if (unset_weak)
    dir_state_changed(d, now);
  *user_out = user;
  return ret;
}

/* ---- USER updates for a backend we do not know yet ------------------------------------------ */

static guint
held_user_hash(gconstpointer p)
{
  const HeldUser *h = p;
  return h->hash ^ usher_ip_table_hash(&h->ip);
}

static gboolean
held_user_equal(gconstpointer a, gconstpointer b)
{
  const HeldUser *x = a, *y = b;
  return x->hash == y->hash && usher_ip_equal(&x->ip, &y->ip);
}

static void
held_user_forget(UsherDirector *d, HeldUser *h)
{
  g_queue_delete_link(&d->held_users, h->link);
  g_hash_table_remove(d->held_index, h);
  g_free(h);
}

/* A USER for a backend we do not know. Dovecot drops it ("the host was probably just removed"),
 * and so did Usher: when the backend's HOST had been lost to the "seen" check (a later command of
 * the same origin overtook it on the other way round the ring), the host list healed a few
 * seconds later through the hosts_hash check in SYNC, but the users were missing on this director
 * for the rest of their lives (ushersim swarm, seed 2717). Keep it for HELD_USER_SECS instead;
 * users_update_host() applies it if the backend becomes known meanwhile. */
void
users_hold_update(UsherDirector *d, UsherNow now, Conn *conn, guint32 hash, const UsherIp *ip,
                  gint64 timestamp, gboolean has_timestamp)
{
  gint64 wall = dir_wall_secs(now);
  if (!has_timestamp)
    timestamp = wall; /* the peer meant "now" (minor < 9) */
  if (timestamp + (gint64)d->user_expire_secs <= wall)
    return; /* expired by our clock: it would be ignored anyway */
  if (d->held_index == NULL)
    d->held_index = g_hash_table_new(held_user_hash, held_user_equal);
  HeldUser key = {.hash = hash, .ip = *ip};
  HeldUser *h = g_hash_table_lookup(d->held_index, &key);
  if (h != NULL) {
    /* The same update from the other side of the ring: keep the newer time, not a second entry. */
    h->timestamp = MAX(h->timestamp, timestamp);
    return;
  }
  if (d->held_users.length >= STATE_MAX_HELD_USERS) {
    d->stats.user_updates_held_overflow++;
    return;
  }
  h = g_new0(HeldUser, 1);
  *h = key;
  h->timestamp = timestamp;
  if (conn != NULL && conn->host != NULL)
    h->src = conn->host->addr;
  h->deadline_us = now.mono_us + HELD_USER_SECS * SEC_US;
  g_queue_push_tail(&d->held_users, h);
  h->link = d->held_users.tail;
  g_hash_table_add(d->held_index, h);
  d->stats.user_updates_held++;
}

/* The backend's HOST came: apply what waited for it, in arrival order, as if it arrived now. The
 * HOST has already been flooded, so every director we forward to knows the backend first. */
static void
apply_held_users(UsherDirector *d, UsherNow now, UsherHost *host)
{
  if (d->held_users.length == 0)
    return;
  g_autoptr(GPtrArray) due = g_ptr_array_new_with_free_func(g_free);
  for (GList *l = d->held_users.head; l != NULL;) {
    GList *next = l->next;
    HeldUser *h = l->data;
    if (usher_ip_equal(&h->ip, &host->ip)) {
      g_queue_delete_link(&d->held_users, l);
      g_hash_table_remove(d->held_index, h);
      g_ptr_array_add(due, h);
    }
    l = next;
  }
  if (due->len == 0)
    return;
  dir_log(d, G_LOG_LEVEL_INFO,
          "backend %s is known now: applying %u user updates that arrived before it", host->ip_str,
          due->len);
  for (guint i = 0; i < due->len; i++) {
    HeldUser *h = g_ptr_array_index(due, i);
    d->stats.user_updates_held_applied++;
    gboolean forced;
    UsherUser *user;
    if (users_refresh(d, now, NULL, h->hash, host, h->timestamp, TRUE, FALSE, &forced, &user)) {
      Member *src = forced ? d->self : dir_member_lookup(d, &h->src.ip, h->src.port);
      users_update_user(d, src, host->tag, user);
    }
  }
}

/* A HOST-REMOVE named a backend we never knew: what waited for it goes with it. */
void
users_drop_held(UsherDirector *d, const UsherIp *ip)
{
  for (GList *l = d->held_users.head; l != NULL;) {
    GList *next = l->next;
    HeldUser *h = l->data;
    if (usher_ip_equal(&h->ip, ip)) {
      d->stats.user_updates_held_dropped++;
      held_user_forget(d, h);
    }
    l = next;
  }
}

static void
held_users_timers(UsherDirector *d, UsherNow now)
{
  guint n = 0;
  HeldUser *h;
  while ((h = g_queue_peek_head(&d->held_users)) != NULL && h->deadline_us <= now.mono_us) {
    d->stats.user_updates_held_dropped++;
    n++;
    held_user_forget(d, h);
  }
  if (n > 0)
    dir_log(d, G_LOG_LEVEL_WARNING,
            "%u user updates for backends we do not know were dropped: no HOST for them came "
            "within %d s",
            n, HELD_USER_SECS);
}

/* ---- Hosts ------------------------------------------------------------------------------------ */

static void
flood_host(UsherDirector *d, Member *src, Member *orig, UsherHost *host)
{
  UsherRingMsg msg;
  MSG_INIT(msg, HOST);
  origin_fill(d, orig, &msg.host.origin);
  msg.host.ip = host->ip;
  msg.host.vhost_count = host->vhost_count;
  msg.host.tag = host->tag->name;
  msg.host.down = host->down;
  msg.host.last_updown_change = host->last_updown_change;
  msg.host.hostname = host->hostname != NULL ? host->hostname : "";
  if (d->ring_min_version < USHER_RING_MINOR_TAGS_V2 && host->tag->name[0] != '\0')
    dir_log(d, G_LOG_LEVEL_ERROR,
            "cannot send tagged host %s: a director in the ring is too old for tags",
            host->ip_str);
  flood(d, src, 0, &msg);
}

void
users_update_host(UsherDirector *d, UsherNow now, Member *src, Member *orig, UsherHost *host)
{
  flood_host(d, src, orig, host);
  if (d->left != NULL || d->right != NULL)
    host->desynced = TRUE;
  apply_held_users(d, now, host);
  dir_sync(d, now);
}

void
users_resend_hosts(UsherDirector *d, UsherNow now)
{
  (void)now;
  for (guint i = 0; i < usher_host_table_n_hosts(d->hosts); i++)
    flood_host(d, d->self, NULL, usher_host_table_nth(d->hosts, i));
}

static void move_free(UsherDirector *d, UsherNow now, Move *m, gboolean notify);
static int cmp_move_due(gconstpointer a, gconstpointer b);
static guint64 new_kick(UsherDirector *d, UsherNow now, gboolean for_move, gboolean admin,
                        UsherTag *tag, guint32 hash);

/* Moves of users that are about to disappear with their host. */
static void
drop_moves_of_host(UsherDirector *d, UsherNow now, UsherHost *host)
{
  g_autoptr(GPtrArray) stale = g_ptr_array_new();
  GHashTableIter it;
  gpointer k;
  g_hash_table_iter_init(&it, d->moves);
  while (g_hash_table_iter_next(&it, &k, NULL)) {
    Move *m = k;
    UsherUser *u = usher_user_dir_lookup(m->tag->users, m->hash);
    if (u != NULL && u->host == host->id)
      g_ptr_array_add(stale, m);
  }
  /* Freeing a move may announce its user (ignored_update): never in hash-table order. */
  g_ptr_array_sort(stale, cmp_move_due);
  for (guint i = 0; i < stale->len; i++)
    move_free(d, now, g_ptr_array_index(stale, i), FALSE);
  /* A reset-users operation waiting for a free move slot goes on now; nothing else would wake
   * it on a quiet director (found by fuzz-admin: USER-MOVE, HOST-RESET-USERS with a limit of 1,
   * then a forced HOST-FLUSH left the reset unanswered for ever). */
  if (stale->len > 0)
    admin_continue(d, now);
}

void
users_remove_host(UsherDirector *d, UsherNow now, Member *src, Member *orig, UsherHost *host)
{
  if (src != NULL) {
    UsherRingMsg msg;
    MSG_INIT(msg, HOST_REMOVE);
    origin_fill(d, orig, &msg.host_ref.origin);
    msg.host_ref.ip = host->ip;
    flood(d, src, 0, &msg);
  }
  drop_moves_of_host(d, now, host);
  usher_host_table_remove(d->hosts, host);
  dir_sync(d, now);
}

void
users_flush_host(UsherDirector *d, UsherNow now, Member *src, Member *orig, UsherHost *host)
{
  if (src != NULL) {
    UsherRingMsg msg;
    MSG_INIT(msg, HOST_FLUSH);
    origin_fill(d, orig, &msg.host_ref.origin);
    msg.host_ref.ip = host->ip;
    flood(d, src, 0, &msg);
  }
  drop_moves_of_host(d, now, host);
  (void)usher_host_table_flush(d->hosts, host);
  if (host->down) {
    /* The users of a down backend are placed again at their next login: sessions still open on
     * it through this director must end, or a user could run on two backends (a backend that
     * some directors still reach: swarm with health checks). Dovecot's HOST-FLUSH kicks nobody;
     * Dovecot members of the ring keep theirs. */
    UsherEffect e = {.type = USHER_EFFECT_KICK};
    e.kick.id = new_kick(d, now, FALSE, FALSE, NULL, 0);
    e.kick.kind = USHER_KICK_BACKEND;
    e.kick.except = host->ip;
    g_array_append_val(d->effects, e);
  }
  dir_sync(d, now);
}

/* ---- Kicks ------------------------------------------------------------------------------------ */

/* Records a kick and returns its id. Kicks that are not part of a move are not recorded beyond
 * STATE_MAX_KICKS (they still run; only their completion is not waited for). Kicks of moves are
 * bounded by STATE_MAX_MOVES. Every record is forgotten after USHER_KICK_TIMEOUT_SECS. */
static guint64
new_kick(UsherDirector *d, UsherNow now, gboolean for_move, gboolean admin, UsherTag *tag,
         guint32 hash)
{
  guint64 id = d->next_effect_id++;
  d->stats.kicks_sent++;
  if (admin)
    d->stats.admin_kicks++;
  if (!for_move && g_hash_table_size(d->kicks) >= STATE_MAX_KICKS) {
    d->stats.kicks_untracked++;
    return id;
  }
  Kick *k = g_new0(Kick, 1);
  k->id = id;
  k->for_move = for_move;
  k->admin = admin;
  k->tag = tag;
  k->hash = hash;
  k->deadline_us = now.mono_us + USHER_KICK_TIMEOUT_SECS * SEC_US;
  g_hash_table_insert(d->kicks, &k->id, k);
  g_queue_push_tail(&d->kick_order, k);
  k->order_link = d->kick_order.tail;
  if (admin)
    d->admin_kicks_running++;
  return id;
}

/* Forgets a kick record; TRUE if it held an admin kick slot. */
static gboolean
kick_forget(UsherDirector *d, Kick *k)
{
  gboolean admin = k->admin;
  if (admin) {
    g_assert(d->admin_kicks_running > 0);
    d->admin_kicks_running--;
  }
  g_queue_delete_link(&d->kick_order, k->order_link);
  g_hash_table_remove(d->kicks, &k->id); /* frees k */
  return admin;
}

static void
emit_kick_hash(UsherDirector *d, guint64 id, guint32 hash, const UsherIp *except)
{
  UsherEffect e = {.type = USHER_EFFECT_KICK};
  e.kick.id = id;
  e.kick.kind = USHER_KICK_HASH;
  e.kick.hash = hash;
  if (except != NULL)
    e.kick.except = *except;
  g_array_append_val(d->effects, e);
}

void
users_kick_hash(UsherDirector *d, UsherNow now, Member *src, Member *orig, guint32 hash,
                const UsherIp *except)
{
  emit_kick_hash(d, new_kick(d, now, FALSE, FALSE, NULL, hash), hash, except);
  UsherRingMsg msg;
  MSG_INIT(msg, USER_KICK_HASH);
  origin_fill(d, orig, &msg.user_ref.origin);
  msg.user_ref.hash = hash;
  msg.user_ref.ip = *except;
  flood(d, src, USHER_RING_MINOR_USER_KICK, &msg);
}

void
users_kick_name(UsherDirector *d, UsherNow now, Member *src, Member *orig, const char *name,
                gboolean admin)
{
  UsherEffect e = {.type = USHER_EFFECT_KICK};
  e.kick.id = new_kick(d, now, FALSE, admin, NULL, 0);
  e.kick.kind = USHER_KICK_NAME;
  e.kick.name = g_strdup(name);
  g_array_append_val(d->effects, e);
  UsherRingMsg msg;
  MSG_INIT(msg, USER_KICK);
  origin_fill(d, orig, &msg.user_kick.origin);
  msg.user_kick.username = name;
  flood(d, src, USHER_RING_MINOR_USER_KICK, &msg);
}

void
users_kick_alt(UsherDirector *d, UsherNow now, Member *src, Member *orig, const char *field,
               const char *value, gboolean admin)
{
  UsherEffect e = {.type = USHER_EFFECT_KICK};
  e.kick.id = new_kick(d, now, FALSE, admin, NULL, 0);
  e.kick.kind = USHER_KICK_ALT;
  e.kick.name = g_strdup(field);
  e.kick.value = g_strdup(value);
  g_array_append_val(d->effects, e);
  UsherRingMsg msg;
  MSG_INIT(msg, USER_KICK_ALT);
  origin_fill(d, orig, &msg.user_kick_alt.origin);
  msg.user_kick_alt.field = field;
  msg.user_kick_alt.value = value;
  flood(d, src, USHER_RING_MINOR_USER_KICK_ALT, &msg);
}

/* ---- Moves ------------------------------------------------------------------------------------ */

Move *
move_lookup(UsherDirector *d, UsherTag *tag, guint32 hash)
{
  Move key = {.tag = tag, .hash = hash};
  return g_hash_table_lookup(d->moves, &key);
}

static void
move_set_state(UsherDirector *d, Move *m, UsherKillState state)
{
  m->state = state;
  UsherUser *u = usher_user_dir_lookup(m->tag->users, m->hash);
  if (u != NULL)
    u->kill_state = (guint8)state;
  (void)d;
}

static void
move_free(UsherDirector *d, UsherNow now, Move *m, gboolean notify)
{
  UsherUser *u = usher_user_dir_lookup(m->tag->users, m->hash);
  if (u != NULL)
    u->kill_state = USHER_KILL_NONE;
  if (u != NULL && m->ignored_update)
    users_update_user(d, d->self, m->tag, u); /* settle what we ignored during the move */
  g_assert(d->users_moving_count > 0);
  d->users_moving_count--;
  g_hash_table_remove(d->moves, m); /* frees m */
  if (notify)
    dir_state_changed(d, now);
}

static void
move_delay(UsherDirector *d, UsherNow now, Move *m)
{
  move_set_state(d, m, USHER_KILL_DELAY);
  m->deadline_us = now.mono_us + (gint64)d->user_kick_delay_secs * SEC_US;
}

/* The user is killed everywhere: run the flush hook (if we started the move and one is set),
 * else wait the kick delay. */
static void
move_flush(UsherDirector *d, UsherNow now, Move *m)
{
  if (d->flush_socket[0] == '\0' || !m->has_old_host || !m->self_initiated) {
    move_delay(d, now, m);
    return;
  }
  UsherUser *u = usher_user_dir_lookup(m->tag->users, m->hash);
  if (u == NULL) {
    move_free(d, now, m, TRUE);
    return;
  }
  UsherHost *h = user_host(d, u);
  UsherEffect e = {.type = USHER_EFFECT_FLUSH};
  e.flush.id = m->flush_id = d->next_effect_id++;
  e.flush.hash = m->hash;
  e.flush.old_host = m->old_ip;
  e.flush.new_host = h->ip;
  e.flush.new_hostname = g_strdup(h->hostname);
  e.flush.old_down = m->old_down;
  e.flush.old_vhost_count = m->old_vhost_count;
  e.flush.socket = g_strdup(d->flush_socket);
  g_array_append_val(d->effects, e);
  m->flush_deadline_us = now.mono_us + USHER_FLUSH_TIMEOUT_SECS * SEC_US;
  move_set_state(d, m, USHER_KILL_FLUSHING);
}

static void
send_killed_everywhere(UsherDirector *d, Member *src, Member *orig, guint32 hash)
{
  UsherRingMsg msg;
  MSG_INIT(msg, USER_KILLED_EVERYWHERE);
  origin_fill(d, orig, &msg.user_killed_everywhere.origin);
  msg.user_killed_everywhere.hash = hash;
  flood(d, src, 0, &msg);
}

/* The local kick of a moving user has finished (Dovecot's director_finish_user_kill()). */
static void
move_finish_kill(UsherDirector *d, UsherNow now, Move *m, gboolean self)
{
  if (d->right == NULL) {
    /* Alone: nobody else has to confirm. */
    move_flush(d, now, m);
  } else if (self || m->state == USHER_KILL_KILLING_NOTIFY_RECEIVED) {
    UsherRingMsg msg;
    MSG_INIT(msg, USER_KILLED);
    msg.user_killed.hash = m->hash;
    dir_send_msg(d, d->right, &msg, d->right->peer_minor);
    move_set_state(d, m, USHER_KILL_WAITING_FOR_EVERYONE);
  } else {
    move_set_state(d, m, USHER_KILL_WAITING_FOR_NOTIFY);
  }
}

void
users_kill(UsherDirector *d, UsherNow now, Member *src, UsherTag *tag, UsherUser *user,
           UsherHost *old_host, gboolean force_kick)
{
  if (user->kill_state != USHER_KILL_NONE) {
    /* Moved again before the last move finished: carry on from where it is. */
    return;
  }
  if (g_hash_table_size(d->moves) >= STATE_MAX_MOVES) {
    /* Only a lying or broken peer gets here (admins are held to max_parallel_moves). The user
     * has its new host; its old sessions are not killed. */
    d->stats.moves_refused++;
    dir_log(d, G_LOG_LEVEL_WARNING, "not killing user hash %u for a move: %d moves in flight",
            user->hash, STATE_MAX_MOVES);
    return;
  }
  Move *m = g_new0(Move, 1);
  m->tag = tag;
  m->hash = user->hash;
  m->self_initiated = src == NULL || src->self;
  if (old_host != NULL) {
    m->has_old_host = TRUE;
    m->old_ip = old_host->ip;
    m->old_down = old_host->down;
    m->old_vhost_count = old_host->vhost_count;
  }
  m->deadline_us = now.mono_us + USER_MOVE_TIMEOUT_SECS * SEC_US;
  g_hash_table_add(d->moves, m);
  d->users_moving_count++;
  d->stats.moves_started++;
  if (m->self_initiated)
    d->stats.moves_initiated++;
  move_set_state(d, m, USHER_KILL_KILLING);
  if ((old_host != NULL && old_host->id != user->host) || force_kick) {
    m->kick_id = new_kick(d, now, TRUE, FALSE, tag, user->hash);
    emit_kick_hash(d, m->kick_id, user->hash, NULL);
  } else {
    /* We did not know the user, or it was already where it should be: nothing to kick here. */
    move_finish_kill(d, now, m, m->self_initiated);
  }
}

void
users_move(UsherDirector *d, UsherNow now, Member *src, Member *orig, guint32 hash,
           UsherHost *host)
{
  gint64 wall = dir_wall_secs(now);
  UsherUserDir *users = host->tag->users;
  UsherHost *old_host = NULL;
  if (hash == 0) {
    d->stats.ignored_updates++;
    return;
  }
  UsherUser *user = usher_user_dir_lookup(users, hash);
  if (user == NULL) {
    if (!users_room(d))
      return;
    user = usher_user_dir_add(users, hash, host->id, wall, wall);
  } else {
    /* Even if it is already there, kill it: another director may have it elsewhere. */
    old_host = user_host(d, user);
    usher_user_dir_set_host(users, user, host->id);
    usher_user_dir_refresh(users, user, wall, wall);
  }
  /* Announce the move before killing: the kill may finish at once. */
  UsherRingMsg msg;
  MSG_INIT(msg, USER_MOVE);
  origin_fill(d, orig, &msg.user_ref.origin);
  msg.user_ref.hash = hash;
  msg.user_ref.ip = host->ip;
  flood(d, src, 0, &msg);
  users_kill(d, now, src, host->tag, user, old_host, FALSE);
}

void
users_killed(UsherDirector *d, UsherNow now, guint32 hash)
{
  for (guint t = 0; t < usher_host_table_n_tags(d->hosts); t++) {
    UsherTag *tag = usher_host_table_nth_tag(d->hosts, t);
    UsherUser *u = usher_user_dir_lookup(tag->users, hash);
    if (u == NULL)
      continue;
    Move *m = move_lookup(d, tag, hash);
    switch (m != NULL ? m->state : USHER_KILL_NONE) {
    case USHER_KILL_KILLING:
      move_set_state(d, m, USHER_KILL_KILLING_NOTIFY_RECEIVED);
      break;
    case USHER_KILL_WAITING_FOR_NOTIFY:
      move_finish_kill(d, now, m, TRUE);
      break;
    case USHER_KILL_KILLING_NOTIFY_RECEIVED:
      break;
    case USHER_KILL_WAITING_FOR_EVERYONE:
      /* The notice went all the way round: everyone has killed the user. */
      move_flush(d, now, m);
      send_killed_everywhere(d, d->self, NULL, hash);
      break;
    case USHER_KILL_NONE:
    case USHER_KILL_FLUSHING:
    case USHER_KILL_DELAY:
      /* A restarted or late move: answer anyway so that nobody waits forever. */
      send_killed_everywhere(d, d->self, NULL, hash);
      break;
    }
  }
}

void
users_killed_everywhere(UsherDirector *d, UsherNow now, Member *src, Member *orig, guint32 hash)
{
  for (guint t = 0; t < usher_host_table_n_tags(d->hosts); t++) {
    UsherTag *tag = usher_host_table_nth_tag(d->hosts, t);
    Move *m = move_lookup(d, tag, hash);
    if (m == NULL || m->state != USHER_KILL_WAITING_FOR_EVERYONE)
      continue;
    move_flush(d, now, m);
    send_killed_everywhere(d, src, orig, hash);
  }
}

void
usher_director_kick_done(UsherDirector *d, UsherNow now, guint64 id)
{
  dir_enter(d, now);
  Kick *k = g_hash_table_lookup(d->kicks, &id);
  if (k == NULL)
    return; /* late (timed out), untracked or unknown */
  gboolean for_move = k->for_move;
  UsherTag *tag = k->tag;
  guint32 hash = k->hash;
  if (kick_forget(d, k))
    admin_continue(d, now); /* an admin kick slot is free */
  if (!for_move)
    return;
  Move *m = move_lookup(d, tag, hash);
  if (m == NULL || m->kick_id != id ||
      (m->state != USHER_KILL_KILLING && m->state != USHER_KILL_KILLING_NOTIFY_RECEIVED))
    return; /* the move ended (timeout, host removed) meanwhile */
  m->kick_id = 0;
  d->sync_frozen++;
  move_finish_kill(d, now, m, m->self_initiated);
  d->sync_frozen--;
  if (d->sync_frozen == 0 && d->sync_pending)
    dir_sync(d, now);
}

void
usher_director_flush_done(UsherDirector *d, UsherNow now, guint64 id, gboolean success)
{
  dir_enter(d, now);
  GHashTableIter it;
  gpointer k;
  Move *found = NULL;
  g_hash_table_iter_init(&it, d->moves);
  while (g_hash_table_iter_next(&it, &k, NULL)) {
    Move *m = k;
    if (m->flush_id == id && m->state == USHER_KILL_FLUSHING)
      found = m;
  }
  if (found == NULL)
    return;
  found->flush_id = 0;
  if (success) {
    d->stats.moves_finished++;
    move_free(d, now, found, TRUE);
  } else {
    d->stats.flushes_failed++;
    dir_log(d, G_LOG_LEVEL_WARNING, "flush hook failed for user hash %u: waiting %u s instead",
            found->hash, d->user_kick_delay_secs);
    move_delay(d, now, found);
  }
}

static int
cmp_move_due(gconstpointer a, gconstpointer b)
{
  const Move *x = *(Move *const *)a, *y = *(Move *const *)b;
  if (x->deadline_us != y->deadline_us)
    return x->deadline_us < y->deadline_us ? -1 : 1;
  int c = strcmp(x->tag->name, y->tag->name);
  if (c != 0)
    return c;
  return x->hash < y->hash ? -1 : x->hash > y->hash ? 1 : 0;
}

/* ---- Timers: moves and expiry ------------------------------------------------------------------ */

gint64
users_next_deadline(UsherDirector *d)
{
  gint64 t = G_MAXINT64;
  GHashTableIter it;
  gpointer k;
  g_hash_table_iter_init(&it, d->moves);
  while (g_hash_table_iter_next(&it, &k, NULL)) {
    const Move *m = k;
    t = MIN(t, m->deadline_us);
    if (m->state == USHER_KILL_FLUSHING && m->flush_id != 0)
      t = MIN(t, m->flush_deadline_us);
  }
  const Kick *oldest = g_queue_peek_head(&d->kick_order);
  if (oldest != NULL)
    t = MIN(t, oldest->deadline_us);
  const HeldUser *held = g_queue_peek_head(&d->held_users);
  if (held != NULL)
    t = MIN(t, held->deadline_us);
  for (guint i = 0; i < usher_host_table_n_tags(d->hosts); i++) {
    gint64 wall = usher_user_dir_next_deadline(usher_host_table_nth_tag(d->hosts, i)->users);
    if (wall != G_MAXINT64)
      t = MIN(t, wall * SEC_US - d->wall_minus_mono_us);
  }
  return t == G_MAXINT64 ? 0 : t;
}

/* Kicks the driver never reported done: forget them, so their slots are free again. A move
 * whose kick this was ends by its own timeout (they start together and last as long). */
static void
kicks_timers(UsherDirector *d, UsherNow now)
{
  gboolean freed_slot = FALSE;
  guint n = 0;
  Kick *k;
  while ((k = g_queue_peek_head(&d->kick_order)) != NULL && k->deadline_us <= now.mono_us) {
    d->stats.kicks_timed_out++;
    n++;
    freed_slot |= kick_forget(d, k);
  }
  if (n > 0)
    dir_log(d, G_LOG_LEVEL_WARNING, "%u kicks were not reported done within %d s: forgotten", n,
            USHER_KICK_TIMEOUT_SECS);
  if (freed_slot)
    admin_continue(d, now);
}

/* Flush hooks that never reported: treat them as failed. */
static void
flush_timers(UsherDirector *d, UsherNow now)
{
  g_autoptr(GPtrArray) due = g_ptr_array_new();
  GHashTableIter it;
  gpointer k;
  g_hash_table_iter_init(&it, d->moves);
  while (g_hash_table_iter_next(&it, &k, NULL)) {
    Move *m = k;
    if (m->state == USHER_KILL_FLUSHING && m->flush_id != 0 && m->flush_deadline_us <= now.mono_us)
      g_ptr_array_add(due, m);
  }
  g_ptr_array_sort(due, cmp_move_due);
  for (guint i = 0; i < due->len; i++) {
    Move *m = g_ptr_array_index(due, i);
    d->stats.flushes_timed_out++;
    dir_log(d, G_LOG_LEVEL_WARNING,
            "flush hook for user hash %u did not report within %d s: waiting %u s instead",
            m->hash, USHER_FLUSH_TIMEOUT_SECS, d->user_kick_delay_secs);
    m->flush_id = 0;
    move_delay(d, now, m);
  }
}

void
users_timers(UsherDirector *d, UsherNow now)
{
  kicks_timers(d, now);
  flush_timers(d, now);
  held_users_timers(d, now);
  g_autoptr(GPtrArray) due = g_ptr_array_new();
  GHashTableIter it;
  gpointer k;
  g_hash_table_iter_init(&it, d->moves);
  while (g_hash_table_iter_next(&it, &k, NULL))
    if (((Move *)k)->deadline_us <= now.mono_us)
      g_ptr_array_add(due, k);
  g_ptr_array_sort(due, cmp_move_due);
  /* Free them all first and tell the rest of the director afterwards: what runs on a state
   * change (admin flushes) may end other moves, including ones in this list. */
  for (guint i = 0; i < due->len; i++) {
    Move *m = g_ptr_array_index(due, i);
    if (m->state == USHER_KILL_DELAY) {
      d->stats.moves_finished++;
    } else {
      d->stats.moves_timed_out++;
      dir_log(d, G_LOG_LEVEL_WARNING,
              "move of user hash %u timed out in state %s: the state may be inconsistent",
              m->hash, usher_kill_state_name(m->state));
    }
    move_free(d, now, m, FALSE);
  }
  if (due->len > 0)
    dir_state_changed(d, now);
  gint64 wall = dir_wall_secs(now);
  for (guint i = 0; i < usher_host_table_n_tags(d->hosts); i++) {
    UsherUserDir *users = usher_host_table_nth_tag(d->hosts, i)->users;
    if (usher_user_dir_next_deadline(users) > wall)
      continue;
    UsherExpireStats st;
    usher_user_dir_expire(users, wall, &st);
    d->stats.users_expired += st.expired + st.weak_dropped;
    if (st.weak_dropped > 0)
      dir_log(d, G_LOG_LEVEL_WARNING, "%u users stayed weak past their expiry and were dropped",
              st.weak_dropped);
  }
}

void
users_free_all(UsherDirector *d)
{
  g_queue_clear_full(&d->held_users, g_free);
  g_clear_pointer(&d->held_index, g_hash_table_unref);
  Request *r;
  while ((r = g_queue_pop_head(&d->requests)) != NULL) {
    g_free(r->username);
    g_free(r->tag);
    g_free(r);
  }
}

/* ---- Login requests ------------------------------------------------------------------------------ */

static void
answer(UsherDirector *d, Request *r, UsherHost *host, const char *fail_reason)
{
  UsherEffect e = {.type = USHER_EFFECT_LOGIN_RESULT};
  e.login.request = r->id;
  e.login.hash = r->hash;
  if (host != NULL) {
    e.login.status = USHER_LOGIN_OK;
    e.login.host = host->ip;
    e.login.hostname = g_strdup(host->hostname);
    e.login.refresh_secs = d->user_expire_secs / 2;
    d->stats.logins_ok++;
  } else {
    e.login.status = USHER_LOGIN_TEMPFAIL;
    e.login.reason = g_strdup(fail_reason);
    d->stats.logins_tempfail++;
  }
  g_array_append_val(d->effects, e);
}

/* Dovecot's director_request_continue() for one request (spec 7.4). TRUE when answered. */
/* The entry a request is about, or NULL. */
static UsherUser *
request_user(UsherDirector *d, const Request *r, UsherTag **tag_out)
{
  UsherTag *tag = usher_host_table_find_tag(d->hosts, r->tag);
  if (tag_out != NULL)
    *tag_out = tag;
  return tag != NULL ? usher_user_dir_lookup(tag->users, r->hash) : NULL;
}

/* A weak flag that never cleared (its USER-WEAK did not come back round: a partition, a link
 * reset): stop waiting for it and settle it as if the round had come back, refreshed to now and
 * announced. The members the USER-WEAK reached hold the flag too, with a fresh timestamp; without
 * this they keep it (and hold their logins of the user) until the entry expires, and an
 * announcement with the old timestamp would be ignored as expired. The user keeps its backend,
 * which is what the round trip confirms when it succeeds. */
static void
request_give_up_weak(UsherDirector *d, UsherNow now, Request *r)
{
  UsherTag *tag;
  UsherUser *u = request_user(d, r, &tag);
  if (u == NULL || !u->weak)
    return;
  u->weak = 0;
  d->stats.weak_users_given_up++;
  gint64 wall = dir_wall_secs(now);
  usher_user_dir_refresh(tag->users, u, wall, wall);
  users_update_user(d, d->self, tag, u);
}

static gboolean
request_try(UsherDirector *d, UsherNow now, Request *r)
{
  gint64 wall = dir_wall_secs(now);
  if (!d->ring_handshaked) {
    r->reason = "ring not handshaked";
    return FALSE;
  }
  UsherTag *tag = usher_host_table_find_tag(d->hosts, r->tag);
  UsherUser *user = tag != NULL ? usher_user_dir_lookup(tag->users, r->hash) : NULL;
  if (user != NULL && usher_user_dir_is_expired(tag->users, user, wall) &&
      user->kill_state == USHER_KILL_NONE && !user->weak) {
    /* Expired but not yet dropped (expiry is lazy): it does not count. */
    usher_user_dir_remove(tag->users, user);
    user = NULL;
  }
  if (user != NULL) {
    if (user->kill_state != USHER_KILL_NONE) {
      r->reason = "waiting for the user's move to finish";
      return FALSE;
    }
    if (d->right == NULL && d->ring_synced)
      user->weak = 0; /* alone: nobody to confirm with */
    if (user->weak) {
      r->reason = "weak user";
      return FALSE;
    }
    if (usher_user_dir_is_near_expiring(tag->users, user, wall)) {
      UsherHost *hashed = usher_tag_place(d->hosts, tag, r->hash);
      if (!d->ring_synced) {
        r->reason = "ring not synced";
        return FALSE;
      }
      if (hashed != NULL && hashed->id != user->host && d->ring_min_version >= 1) {
        /* About to expire and the ring now hashes it elsewhere: confirm ring-wide first, so no
         * director that already dropped it sends the next login to the new host. */
        user->weak = 1;
        users_update_user_weak(d, d->self, NULL, NULL, tag, user);
        r->reason = "weak user";
        return FALSE;
      }
    }
    usher_user_dir_refresh(tag->users, user, wall, wall);
  } else {
    if (!d->ring_synced) {
      r->reason = "ring not synced";
      return FALSE;
    }
    UsherHost *host = tag != NULL ? usher_tag_place(d->hosts, tag, r->hash) : NULL;
    if (host == NULL) {
      r->reason = "no usable backend";
      return FALSE;
    }
    if (!users_room(d)) {
      r->reason = "user directory full";
      return FALSE;
    }
    user = usher_user_dir_add(tag->users, r->hash, host->id, wall, wall);
  }
  users_update_user(d, d->self, tag, user);
  answer(d, r, user_host(d, user), NULL);
  return TRUE;
}

static void
request_free(UsherDirector *d, Request *r)
{
  if (r->cancelled)
    d->requests_cancelled_waiting--; /* its id was released at the cancel */
  else
    g_hash_table_remove(d->request_ids, &r->id);
  g_free(r->username);
  g_free(r->tag);
  g_free(r);
}

void
requests_continue(UsherDirector *d, UsherNow now)
{
  if (d->requests_running) {
    d->requests_again = TRUE;
    return;
  }
  d->requests_running = TRUE;
  do {
    d->requests_again = FALSE;
    if (!d->ring_synced)
      break;
    GList *l = d->requests.head;
    while (l != NULL) {
      GList *next = l->next;
      Request *r = l->data;
      if (r->cancelled) {
        /* Nobody wants the answer; it only watches the weak flag. */
        UsherUser *u = request_user(d, r, NULL);
        if (u == NULL || !u->weak) {
          g_queue_delete_link(&d->requests, l);
          request_free(d, r);
        }
      } else if (request_try(d, now, r)) {
        g_queue_delete_link(&d->requests, l);
        request_free(d, r);
      }
      l = next;
    }
  } while (d->requests_again);
  d->requests_running = FALSE;
}

gint64
requests_next_deadline(UsherDirector *d)
{
  Request *r = g_queue_peek_head(&d->requests);
  if (r == NULL)
    return 0;
  /* The queue is in arrival order, so the head times out first; its warning may come sooner. */
  return r->warned ? r->created_us + USHER_REQUEST_TIMEOUT_SECS * SEC_US
                   : r->created_us + REQUEST_WARN_SECS * SEC_US;
}

void
requests_timers(UsherDirector *d, UsherNow now)
{
  Request *r;
  while ((r = g_queue_peek_head(&d->requests)) != NULL) {
    if (!r->warned && r->created_us + REQUEST_WARN_SECS * SEC_US <= now.mono_us) {
      r->warned = TRUE;
      dir_log(d, G_LOG_LEVEL_INFO, "login request %" G_GUINT64_FORMAT " waits: %s", r->id,
              r->reason);
    }
    if (r->created_us + USHER_REQUEST_TIMEOUT_SECS * SEC_US > now.mono_us) {
      /* Others behind the head may still want their warning; they get it when they reach the
       * head (the warning is informational only). */
      break;
    }
    g_queue_pop_head(&d->requests);
    request_give_up_weak(d, now, r);
    if (r->cancelled) {
      request_free(d, r);
      continue;
    }
    g_autofree char *why = g_strdup_printf("timed out after %d s: %s", USHER_REQUEST_TIMEOUT_SECS,
                                           r->reason);
    dir_log(d, G_LOG_LEVEL_WARNING, "login request %" G_GUINT64_FORMAT " failed: %s", r->id, why);
    answer(d, r, NULL, why);
    request_free(d, r);
  }
}

gboolean
usher_director_login_request(UsherDirector *d, UsherNow now, guint64 id, const char *username,
                             const char *tag)
{
  dir_enter(d, now);
  if (g_hash_table_contains(d->request_ids, &id)) {
    /* Answering it would give the driver two answers for one id. */
    d->stats.requests_refused++;
    dir_log(d, G_LOG_LEVEL_WARNING, "login request id %" G_GUINT64_FORMAT " is already waiting: "
            "refused", id);
    return FALSE;
  }
  Request *r = g_new0(Request, 1);
  r->id = id;
  r->username = g_strdup(username);
  r->tag = g_strdup(tag != NULL ? tag : "");
  r->hash = usher_login_hasher_hash(d->hasher, username, -1);
  r->created_us = now.mono_us;
  r->reason = "";
  if (request_try(d, now, r)) {
    request_free(d, r);
    return TRUE;
  }
  if (d->requests.length >= STATE_MAX_PENDING_REQUESTS) {
    d->stats.requests_refused++;
    answer(d, r, NULL, "too many pending requests");
    request_free(d, r);
    return TRUE;
  }
  d->stats.logins_delayed++;
  g_queue_push_tail(&d->requests, r);
  g_hash_table_add(d->request_ids, &r->id);
  return TRUE;
}

void
usher_director_login_cancel(UsherDirector *d, UsherNow now, guint64 id)
{
  dir_enter(d, now);
  if (!g_hash_table_contains(d->request_ids, &id))
    return;
  for (GList *l = d->requests.head; l != NULL; l = l->next) {
    Request *r = l->data;
    if (r->id == id && !r->cancelled) {
      d->stats.requests_cancelled++;
      UsherUser *u = request_user(d, r, NULL);
      if (u != NULL && u->weak) {
        /* Keep it queued without its id: should the weak flag never clear, the timeout still
         * clears it and tells the ring (request_give_up_weak). */
        g_hash_table_remove(d->request_ids, &r->id);
        r->cancelled = TRUE;
        r->warned = TRUE; /* no "waits" warning for it: its next deadline is the timeout */
        d->requests_cancelled_waiting++;
        return;
      }
      g_queue_delete_link(&d->requests, l);
      request_free(d, r);
      return;
    }
  }
  g_assert_not_reached();
}

void
usher_director_user_refresh(UsherDirector *d, UsherNow now, const char *username)
{
  dir_enter(d, now);
  gint64 wall = dir_wall_secs(now);
  guint32 hash = usher_login_hasher_hash(d->hasher, username, -1);
  for (guint t = 0; t < usher_host_table_n_tags(d->hosts); t++) {
    UsherTag *tag = usher_host_table_nth_tag(d->hosts, t);
    UsherUser *u = usher_user_dir_lookup(tag->users, hash);
    if (u == NULL)
      continue;
    if (usher_user_dir_is_expired(tag->users, u, wall))
      dir_log(d, G_LOG_LEVEL_WARNING, "user %s refreshed %" G_GINT64_FORMAT " s after it expired",
              username, wall - ((gint64)u->timestamp + d->user_expire_secs));
    usher_user_dir_refresh(tag->users, u, wall, wall);
    users_update_user(d, d->self, tag, u);
  }
}

guint32
usher_director_user_hash(const UsherDirector *d, const char *username)
{
  return usher_login_hasher_hash(d->hasher, username, -1);
}

const UsherLoginHasher *
usher_director_get_hasher(const UsherDirector *d)
{
  return d->hasher;
}

/* director-conn.c - ring connections: handshake, neighbour adoption, command dispatch, PING.
 *
 * Follows Dovecot 2.3's director-connection.c behaviour as the spec (section 4) describes it.
 * Every handler returns FALSE when it closed the connection, so that the input loop stops.
 */
#include "libcore/director-private.h"

#include <stdlib.h>
#include <string.h>

#define MSG_INIT(msg, t) usher_ring_msg_init(&(msg), USHER_RING_MSG_##t)

static gboolean
handshake_done(const Conn *c)
{
  return c->handshake_received;
}

static void
conn_set_name(Conn *c)
{
  if (c->host != NULL)
    g_snprintf(c->name, sizeof(c->name), "%s#%u/%s", c->incoming ? "in" : "out", c->id,
               c->host->name);
}

Conn *
conn_outgoing_to(UsherDirector *d, Member *host)
{
  for (guint i = 0; i < d->conns->len; i++) {
    Conn *c = g_ptr_array_index(d->conns, i);
    if (!c->incoming && c->host == host && !c->closing)
      return c;
  }
  return NULL;
}

static gboolean
any_conn(UsherDirector *d, gboolean (*match)(const Conn *c))
{
  for (guint i = 0; i < d->conns->len; i++) {
    const Conn *c = g_ptr_array_index(d->conns, i);
    if (!c->closing && match(c))
      return TRUE;
  }
  return FALSE;
}

/* The peer has said who it is (ME) and its handshake is not done: its state is still arriving. */
static gboolean
conn_handshaking(const Conn *c)
{
  return c->me_received && !c->handshake_received;
}

gboolean
dir_handshake_in_progress(UsherDirector *d)
{
  return any_conn(d, conn_handshaking);
}

/* An outgoing connection not (yet) adopted as our right neighbour. */
static gboolean
conn_outgoing_attempt(const Conn *c)
{
  return !c->incoming && !c->is_right;
}

static gboolean
have_outgoing_in_progress(UsherDirector *d)
{
  return any_conn(d, conn_outgoing_attempt);
}

Conn *
conn_new_outgoing(UsherDirector *d, UsherNow now, Member *host)
{
  guint outgoing = 0;
  for (guint i = 0; i < d->conns->len; i++)
    outgoing += !((Conn *)g_ptr_array_index(d->conns, i))->incoming;
  if (outgoing >= STATE_MAX_OUTGOING || d->conns->len >= STATE_MAX_CONNECTIONS + STATE_MAX_OUTGOING) {
    d->stats.outgoing_refused++;
    dir_log(d, G_LOG_LEVEL_WARNING, "not connecting to %s: %u ring connections open, %u outgoing",
            host->name, d->conns->len, outgoing);
    return NULL;
  }
  Conn *c = g_new0(Conn, 1);
  c->id = d->next_conn_id++;
  c->incoming = FALSE;
  c->host = host;
  c->remote_ip = host->addr.ip;
  c->created_us = c->last_input_us = c->timeout_base_us = c->handshake_start_us = now.mono_us;
  c->reader = usher_line_reader_new(USHER_RING_LINE_MAX);
  c->ping_rtt_ms = -1;
  conn_set_name(c);
  dir_conn_add(d, c);
  /* We are about to see this member's commands afresh. */
  dir_member_restarted(host);

  UsherEffect e = {.type = USHER_EFFECT_CONNECT};
  e.connect.conn = c->id;
  e.connect.addr = host->addr;
  g_array_append_val(d->effects, e);
  return c;
}

void
conn_connected(UsherDirector *d, UsherNow now, Conn *c)
{
  c->connected = TRUE;
  c->timeout_base_us = c->last_input_us = now.mono_us;
  UsherRingMsg msg;
  MSG_INIT(msg, VERSION);
  msg.version.major = USHER_RING_VERSION_MAJOR;
  msg.version.minor = USHER_RING_VERSION_MINOR;
  dir_send_msg(d, c, &msg, USHER_RING_VERSION_MINOR);
  MSG_INIT(msg, ME);
  msg.me.addr = d->self->addr;
  msg.me.has_time = TRUE;
  msg.me.time = dir_wall_secs(now);
  dir_send_msg(d, c, &msg, USHER_RING_VERSION_MINOR);
  for (guint i = 0; i < d->members->len; i++) {
    Member *m = g_ptr_array_index(d->members, i);
    if (m->removed)
      continue;
    MSG_INIT(msg, DIRECTOR);
    msg.director = m->addr;
    dir_send_msg(d, c, &msg, USHER_RING_VERSION_MINOR);
  }
}

/* ---- Closing ---------------------------------------------------------------------------------- */

void
conn_close(UsherDirector *d, UsherNow now, Conn *c, const char *reason, CloseFlags flags)
{
  gboolean was_left = c->is_left, was_right = c->is_right, outgoing = !c->incoming;
  UsherConnId id = c->id;

  dir_log(d, (flags & CLOSE_FAILURE) ? G_LOG_LEVEL_WARNING : G_LOG_LEVEL_INFO,
          "ring connection %s closed: %s", c->name, reason);
  if (flags & CLOSE_SEND_DISCONNECT) {
    UsherEffect e = {.type = USHER_EFFECT_DISCONNECT};
    e.disconnect.conn = id;
    e.disconnect.reason = g_strdup(reason);
    g_array_append_val(d->effects, e);
  }
  /* A usherd peer that stopped answering is skipped as well, however long its link lived: its
   * kernel still accepts connections, and redialling it would cost the ME timeout first. */
  if ((flags & CLOSE_FAILURE) && c->host != NULL &&
      (now.mono_us - c->created_us < SHORT_LIVED_SECS * SEC_US || c->usher_ext))
    c->host->last_network_failure = dir_wall_secs(now);
  if (c->usher_ext && c->host != NULL)
    c->host->usher_ext = TRUE;

  if (was_left)
    d->left = NULL;
  if (was_right)
    d->right = NULL;
  gint idx = dir_conn_index(d, id);
  g_assert(idx >= 0);
  g_ptr_array_remove_index(d->conns, (guint)idx); /* frees c, keeps the order */
  c = NULL;

  if (was_left || was_right) {
    /* Losing a neighbour makes the ring unsynced until a new SYNC comes round. */
    dir_sync(d, now);
    UsherEffect e = {.type = USHER_EFFECT_STATE};
    g_array_append_val(d->effects, e);
  }
  if (was_left)
    conn_adopt_waiting_left(d, now);
  if (was_right || (outgoing && d->right == NULL && !have_outgoing_in_progress(d)))
    dir_connect(d, now, was_right ? "lost our right neighbour" : "connection failed");
}

void
conn_protocol_error(UsherDirector *d, UsherNow now, Conn *c, const char *reason)
{
  d->stats.protocol_errors++;
  if (c->host != NULL)
    c->host->last_protocol_failure = dir_wall_secs(now);
  UsherRingMsg msg;
  MSG_INIT(msg, QUIT);
  msg.quit.reason = reason;
  dir_send_msg(d, c, &msg, c->peer_minor);
  g_autofree char *why = g_strdup_printf("protocol error: %s", reason);
  conn_close(d, now, c, why, CLOSE_SEND_DISCONNECT);
}

/* ---- Flooding and sequence numbers ------------------------------------------------------------ */

/* The version to format a flooded command for on c: its peer's, except that a flooded HOST takes
 * the shape of the ring's oldest member, as Dovecot does. */
static guint
flood_minor(UsherDirector *d, const Conn *c, const UsherRingMsg *msg)
{
  return msg->type == USHER_RING_MSG_HOST ? d->ring_min_version : c->peer_minor;
}

/* Holds a flooded command for a connection whose peer has not sent VERSION yet. Dovecot sends it
 * at once, formatted for minor 0: a USER then loses its timestamp, the peer takes "now", floods
 * that newer time to everyone but us, and we expire the user early (ushersim swarm, seed 12312).
 * Returns FALSE if the hold queue is full (the caller sends at once, as Dovecot would). */
static gboolean
hold_flood(UsherDirector *d, Conn *c, guint min_minor, const UsherRingMsg *msg)
{
  if (c->held_lines == NULL) {
    c->held_lines = g_string_new(NULL);
    c->held_min_minor = g_byte_array_new();
  }
  if (c->held_lines->len >= CONN_HELD_FLOODS_MAX_BYTES) {
    d->stats.floods_held_overflow++;
    return FALSE;
  }
  gsize before = c->held_lines->len;
  if (usher_ring_msg_format(msg, USHER_RING_VERSION_MINOR, c->held_lines) !=
      USHER_RING_FORMAT_OK) {
    g_string_truncate(c->held_lines, before);
    return TRUE; /* not sendable at any version: nothing to hold */
  }
  guint8 mm = (guint8)MIN(min_minor, 255);
  g_byte_array_append(c->held_min_minor, &mm, 1);
  d->stats.floods_held++;
  return TRUE;
}

/* VERSION arrived: send what hold_flood() kept, each line in the shape the peer understands. */
static void
send_held_floods(UsherDirector *d, Conn *c)
{
  if (c->held_lines == NULL)
    return;
  g_autoptr(GString) lines = g_steal_pointer(&c->held_lines);
  g_autoptr(GByteArray) min_minor = g_steal_pointer(&c->held_min_minor);
  char *p = lines->str, *end = lines->str + lines->len;
  for (guint i = 0; i < min_minor->len && p < end; i++) {
    char *nl = memchr(p, '\n', (gsize)(end - p));
    g_assert(nl != NULL); /* we formatted these lines ourselves */
    *nl = '\0';
    UsherRingMsg msg;
    UsherRingParseResult r = usher_ring_msg_parse(p, (gsize)(nl - p), 0, &msg);
    g_assert(r == USHER_RING_PARSE_OK);
    if (c->peer_minor >= min_minor->data[i])
      dir_send_msg(d, c, &msg, flood_minor(d, c, &msg));
    p = nl + 1;
  }
}

/* Sends msg to every connection except those whose peer is src (Dovecot's director_update_send),
 * skipping peers below min_minor and outgoing connections not yet established (format:
 * flood_minor()), in id order. A connection whose peer's VERSION has not arrived gets it when it
 * does. */
void
flood(UsherDirector *d, Member *src, guint min_minor, const UsherRingMsg *msg)
{
  /* Runs for every user of a handshake: no allocation. Sending cannot close a connection (a
   * DISCONNECT is only queued) nor open one, so d->conns stays as it is. */
  for (guint i = 0; i < d->conns->len; i++) {
    Conn *c = g_ptr_array_index(d->conns, i);
    if (src != NULL && c->host == src)
      continue;
    if (!c->incoming && !c->connected)
      continue;
    if (!c->version_received && hold_flood(d, c, min_minor, msg))
      continue;
    if (c->peer_minor < min_minor)
      continue;
    dir_send_msg(d, c, msg, flood_minor(d, c, msg));
  }
}

/* Dovecot's director_cmd_is_seen(): TRUE if this sequenced command was seen before. An unknown or
 * removed origin is processed and then re-flooded as our own (*origin_out = NULL). */
gboolean
cmd_is_seen(UsherDirector *d, const UsherRingOrigin *origin, Member **origin_out)
{
  Member *m = dir_member_lookup(d, &origin->ip, origin->port);
  if (m == NULL || m->removed) {
    *origin_out = NULL;
    return FALSE;
  }
  *origin_out = m;
  if (m->self && origin->seq > m->last_seq) {
    /* In our name, numbered past anything we sent: a peer that lies (or our own from before a
     * restart). Taking its number would let it push our counter to wrap, after which every
     * command we send is dropped as seen. Drop it. */
    d->stats.forged_own_commands++;
    dir_log(d, G_LOG_LEVEL_WARNING,
            "dropping a command in our name with seq %u: the last we sent is %u", origin->seq,
            m->last_seq);
    return TRUE;
  }
  if (origin->seq <= m->last_seq) {
    d->stats.duplicate_commands++;
    return TRUE;
  }
  m->last_seq = origin->seq;
  return FALSE;
}

/* The origin to put on a flooded command: the received one, or (orig == NULL) ourselves with a
 * new sequence number. */
void
origin_fill(UsherDirector *d, Member *orig, UsherRingOrigin *out)
{
  if (orig == NULL) {
    d->self->last_seq++;
    out->ip = d->self->addr.ip;
    out->port = d->self->addr.port;
    out->seq = d->self->last_seq;
    return;
  }
  out->ip = orig->addr.ip;
  out->port = orig->addr.port;
  out->seq = orig->last_seq;
}

/* ---- PING / PONG and timers -------------------------------------------------------------------- */

void
conn_ping(UsherDirector *d, UsherNow now, Conn *c)
{
  if (c->ping_sent_us != 0 || (!c->incoming && !c->connected))
    return;
  UsherRingMsg msg;
  MSG_INIT(msg, PING);
  msg.ping.has_values = TRUE;
  msg.ping.time = dir_wall_secs(now);
  msg.ping.buffer_bytes = c->output_queued + c->output_unreported;
  dir_send_msg(d, c, &msg, c->peer_minor);
  c->ping_sent_us = now.mono_us;
  c->ping_sent_wall_us = now.wall_us;
}

void
conn_set_synced(Conn *c, gboolean synced)
{
  c->synced = synced;
}

void
conn_send_connect(UsherDirector *d, UsherNow now, Conn *c, Member *target)
{
  if (c->closing)
    return;
  UsherRingMsg msg;
  MSG_INIT(msg, CONNECT);
  msg.director = target->addr;
  dir_send_msg(d, c, &msg, c->peer_minor);
  /* Give the peer time to read it and disconnect; meanwhile its input is ignored. */
  c->closing = TRUE;
  c->closing_deadline_us = now.mono_us + WAIT_DISCONNECT_SECS * SEC_US;
  dir_log(d, G_LOG_LEVEL_INFO, "telling %s to connect to %s instead", c->name, target->name);
}

/* Dovecot's rates toward Dovecot peers; between usherd directors a PING after a second of
 * silence and usher_ping_timeout without input after it, so a hung peer is dropped within
 * 1 + usher_ping_timeout seconds (doc/ring-protocol.md, "Usher's extension"). */
static gint64
ping_interval_us(const Conn *c)
{
  if (c->usher_ext)
    return USHER_PEER_PING_INTERVAL_SECS * SEC_US;
  return (c->synced ? PING_INTERVAL_SECS : PING_INTERVAL_UNSYNCED_SECS) * SEC_US;
}

static gint64
ping_idle_timeout_us(const UsherDirector *d, const Conn *c)
{
  guint secs = c->usher_ext ? MIN(d->usher_ping_timeout_secs, d->ping_idle_timeout_secs)
                            : d->ping_idle_timeout_secs;
  return (gint64)secs * SEC_US;
}

/* Dialling a member that was a usherd peer before: a stopped process still completes the TCP
 * handshake in its kernel but never sends ME, so wait only 1 s + usher_ping_timeout for it
 * (Dovecot's 10 s otherwise; CONNECT_TIMEOUT_SECS and ME_TIMEOUT_SECS are both 10). */
static gint64
connect_timeout_us(const UsherDirector *d, const Conn *c)
{
  if (!c->incoming && c->host != NULL && c->host->usher_ext)
    return (gint64)(USHER_PEER_PING_INTERVAL_SECS + d->usher_ping_timeout_secs) * SEC_US;
  return (c->incoming || c->connected ? ME_TIMEOUT_SECS : CONNECT_TIMEOUT_SECS) * SEC_US;
}

/* Silence counts from our PING or the peer's last input, whichever is later; on usher links also
 * from the last time the driver's backlog for the link shrank. A PING queued behind a bulk
 * stream waits there, and a peer busy reading that stream has no reason to send anything back:
 * it is alive as long as the backlog drains (a 4 kB/s link dropped every handshake: swarm
 * extreme variant, seed 1070). A hung peer stops reading: its kernel buffers take what we send
 * first (no backlog, no sign of life) and then nothing drains. */
static gint64
idle_base_us(const Conn *c)
{
  gint64 base = MAX(c->ping_sent_us, c->last_input_us);
  return c->usher_ext ? MAX(base, c->output_progress_us) : base;
}

gint64
conn_next_deadline(UsherDirector *d, Conn *c)
{
  gint64 t = G_MAXINT64;
  if (c->closing)
    return c->closing_deadline_us;
  if (c->send_more_us != 0)
    t = MIN(t, c->send_more_us);
  if (!c->incoming && !c->connected)
    return MIN(t, c->created_us + connect_timeout_us(d, c));
  if (!c->me_received)
    return MIN(t, c->timeout_base_us + connect_timeout_us(d, c));
  if (!handshake_done(c)) {
    gint64 limit = c->incoming ? DONE_TIMEOUT_SECS : SEND_USERS_TIMEOUT_SECS;
    t = MIN(t, c->timeout_base_us + limit * SEC_US);
    if (!c->slow_warned)
      t = MIN(t, c->handshake_start_us + HANDSHAKE_SLOW_WARN_SECS * SEC_US);
    return t;
  }
  if (c->ping_sent_us != 0) {
    t = MIN(t, c->ping_sent_us + (gint64)d->ping_max_timeout_secs * SEC_US);
    t = MIN(t, idle_base_us(c) + ping_idle_timeout_us(d, c));
  } else {
    t = MIN(t, c->last_input_us + ping_interval_us(c));
  }
  return t;
}

void
conn_timers(UsherDirector *d, UsherNow now, Conn *c)
{
  gint64 n = now.mono_us;
  if (c->closing) {
    if (c->closing_deadline_us <= n)
      conn_close(d, now, c, "peer did not disconnect after CONNECT", CLOSE_SEND_DISCONNECT);
    return;
  }
  if (c->send_more_us != 0 && c->send_more_us <= n) {
    UsherConnId id = c->id;
    conn_continue_sending_users(d, now, c);
    if ((c = dir_conn_by_id(d, id)) == NULL)
      return;
  }
  if (!c->incoming && !c->connected) {
    if (c->created_us + connect_timeout_us(d, c) <= n)
      conn_close(d, now, c, "connect timed out", CLOSE_SEND_DISCONNECT | CLOSE_FAILURE);
    return;
  }
  if (!c->me_received) {
    if (c->timeout_base_us + connect_timeout_us(d, c) <= n)
      conn_close(d, now, c, "no ME received in time", CLOSE_SEND_DISCONNECT | CLOSE_FAILURE);
    return;
  }
  if (!handshake_done(c)) {
    gint64 limit = c->incoming ? DONE_TIMEOUT_SECS : SEND_USERS_TIMEOUT_SECS;
    if (c->timeout_base_us + limit * SEC_US <= n) {
      conn_close(d, now, c, "handshake timed out", CLOSE_SEND_DISCONNECT | CLOSE_FAILURE);
      return;
    }
    if (!c->slow_warned && c->handshake_start_us + HANDSHAKE_SLOW_WARN_SECS * SEC_US <= n) {
      c->slow_warned = TRUE;
      dir_log(d, G_LOG_LEVEL_WARNING,
              "handshake with %s is taking long: %" G_GUINT64_FORMAT " users received, %" G_GUINT64_FORMAT
              " sent",
              c->name, c->users_received, c->users_sent);
    }
    return;
  }
  if (c->ping_sent_us != 0) {
    if (c->ping_sent_us + (gint64)d->ping_max_timeout_secs * SEC_US <= n) {
      conn_close(d, now, c, "no PONG received in time", CLOSE_SEND_DISCONNECT | CLOSE_FAILURE);
      return;
    }
    if (idle_base_us(c) + ping_idle_timeout_us(d, c) <= n) {
      conn_close(d, now, c, "no input after PING", CLOSE_SEND_DISCONNECT | CLOSE_FAILURE);
      return;
    }
  } else {
    if (c->last_input_us + ping_interval_us(c) <= n)
      conn_ping(d, now, c);
  }
}

/* ---- Neighbour adoption ------------------------------------------------------------------------- */

static void
assign_left(UsherDirector *d, UsherNow now, Conn *c)
{
  d->left = c;
  c->is_left = TRUE;
  d->alone = FALSE;
  dir_log(d, G_LOG_LEVEL_INFO, "%s is now our left neighbour", c->name);
  UsherEffect e = {.type = USHER_EFFECT_STATE};
  g_array_append_val(d->effects, e);
  dir_sync(d, now);
}

/* Returns TRUE if the connection was adopted as our left. */
gboolean
conn_try_adopt_left(UsherDirector *d, UsherNow now, Conn *c)
{
  if (c->host == NULL || c->closing || c->is_left)
    return c->is_left;
  if (d->left == NULL) {
    assign_left(d, now, c);
    return TRUE;
  }
  if (d->left->host == c->host) {
    conn_close(d, now, d->left, "replaced by a new connection from the same director",
               CLOSE_SEND_DISCONNECT);
    if (d->left == NULL)
      assign_left(d, now, c);
    return c->is_left;
  }
  if (d->left->verifying)
    return FALSE; /* decided when the PONG (or its timeout) comes */
  if (dir_member_cmp_to_self(d, d->left->host, c->host) < 0) {
    /* Our current left is closer to us: the newcomer belongs to its right. */
    conn_send_connect(d, now, c, d->left->host);
    return FALSE;
  }
  /* The newcomer is closer; it takes over once the old left goes. The old left should connect
   * to the newcomer: tell it now, in case it was not our left yet when the newcomer's ME arrived
   * (two directors connecting to us at the same moment). */
  if (!d->left->closing)
    conn_send_connect(d, now, d->left, c->host);
  return FALSE;
}

/* After our left went away: adopt the best handshaked incoming connection that waits. */
void
conn_adopt_waiting_left(UsherDirector *d, UsherNow now)
{
  Conn *best = NULL;
  g_autoptr(GArray) ids = dir_conn_ids_sorted(d);
  for (guint i = 0; i < ids->len; i++) {
    Conn *c = dir_conn_by_id(d, g_array_index(ids, UsherConnId, i));
    if (!c->incoming || !c->handshake_received || c->closing || c->is_left || c->host == NULL)
      continue;
    /* The closest member on our left side has the largest distance walking rightwards. */
    if (best == NULL || dir_member_cmp_to_self(d, best->host, c->host) > 0)
      best = c;
  }
  if (best != NULL)
    conn_try_adopt_left(d, now, best);
}

/* SYNCs from other directors that waited for a right neighbour: pass them on, every origin's
 * latest, in member order (Dovecot's director_send_delayed_syncs()). */
static void
send_delayed_syncs(UsherDirector *d, Conn *right)
{
  for (guint i = 0; i < d->members->len; i++) {
    Member *m = g_ptr_array_index(d->members, i);
    if (m->delayed_sync_seq == 0)
      continue;
    UsherRingMsg msg;
    usher_ring_msg_init(&msg, USHER_RING_MSG_SYNC);
    msg.sync.addr = m->addr;
    msg.sync.seq = m->delayed_sync_seq;
    msg.sync.minor = m->delayed_sync_minor;
    msg.sync.has_timestamp = TRUE;
    msg.sync.timestamp = m->delayed_sync_timestamp;
    msg.sync.hosts_hash = m->delayed_sync_hosts_hash;
    m->delayed_sync_seq = 0;
    dir_send_msg(d, right, &msg, right->peer_minor);
  }
}

static gboolean
adopt_right(UsherDirector *d, UsherNow now, Conn *c)
{
  if (c->closing)
    return FALSE; /* told to go elsewhere: it closes at its deadline */
  if (d->right != NULL && d->right != c) {
    if (dir_member_cmp_to_self(d, c->host, d->right->host) <= 0) {
      conn_close(d, now, c, "not closer than our current right neighbour", CLOSE_SEND_DISCONNECT);
      return FALSE;
    }
    conn_close(d, now, d->right, "replaced by a closer right neighbour", CLOSE_SEND_DISCONNECT);
  }
  d->right = c;
  c->is_right = TRUE;
  d->alone_since_us = 0;
  d->alone = FALSE;
  d->connect_timer_us = 0;
  dir_log(d, G_LOG_LEVEL_INFO, "%s is now our right neighbour", c->name);
  UsherEffect e = {.type = USHER_EFFECT_STATE};
  g_array_append_val(d->effects, e);
  send_delayed_syncs(d, c);
  dir_sync(d, now);
  return TRUE;
}

/* OPTIONS: consistent-hashing, which Dovecot 2.3 requires, and Usher's extension token, which it
 * ignores. The outgoing side sends it in every handshake; the incoming side answers with its own
 * only to a peer that announced the extension, so a Dovecot peer sees the exact Dovecot
 * handshake. */
static void
send_options(UsherDirector *d, Conn *c)
{
  static const char tokens[] = USHER_RING_OPTION_CONSISTENT_HASHING "\0" USHER_RING_OPTION_USHER_EXT;
  UsherRingMsg msg;
  MSG_INIT(msg, OPTIONS);
  msg.options.tokens = tokens;
  msg.options.n_tokens = 2;
  dir_send_msg(d, c, &msg, c->peer_minor);
  c->usher_ext_sent = TRUE;
}

/* ---- Handshake: sending our state (outgoing side) ------------------------------------------ */

static void
send_hosts(UsherDirector *d, Conn *c)
{
  UsherRingMsg msg;
  MSG_INIT(msg, HOST_HAND_START);
  msg.host_hand.ring_handshaked = d->ring_handshaked;
  dir_send_msg(d, c, &msg, c->peer_minor);
  for (guint i = 0; i < usher_host_table_n_hosts(d->hosts); i++) {
    UsherHost *h = usher_host_table_nth(d->hosts, i);
    MSG_INIT(msg, HOST_HANDSHAKE);
    msg.host.ip = h->ip;
    msg.host.vhost_count = h->vhost_count;
    msg.host.tag = h->tag->name;
    msg.host.down = h->down;
    msg.host.last_updown_change = h->last_updown_change;
    msg.host.hostname = h->hostname != NULL ? h->hostname : "";
    dir_send_msg(d, c, &msg, c->peer_minor);
  }
  MSG_INIT(msg, HOST_HAND_END);
  msg.host_hand.ring_handshaked = d->ring_handshaked;
  dir_send_msg(d, c, &msg, c->peer_minor);

  /* Snapshot the users now, oldest first per tag: the handshake sends those that existed when it
   * began; later refreshes travel as ordinary USER updates. */
  c->users_to_send = g_array_sized_new(FALSE, FALSE, sizeof(SnapshotUser), dir_count_users(d));
  for (guint t = 0; t < usher_host_table_n_tags(d->hosts); t++) {
    UsherTag *tag = usher_host_table_nth_tag(d->hosts, t);
    for (UsherUser *u = usher_user_dir_oldest(tag->users); u != NULL;
         u = usher_user_dir_next(tag->users, u)) {
      SnapshotUser su = {u, u->hash};
      g_array_append_val(c->users_to_send, su);
    }
  }
  c->users_sent_idx = 0;
}

void
conn_continue_sending_users(UsherDirector *d, UsherNow now, Conn *c)
{
  c->send_more_us = 0;
  if (c->users_to_send == NULL || c->users_paused)
    return;
  guint batch = 0;
  while (c->users_sent_idx < c->users_to_send->len && batch < HANDSHAKE_USERS_PER_PASS) {
    if (c->output_queued + c->output_unreported > d->output_pause_bytes) {
      /* The driver has not written what we gave it: wait until it reports the queue drained
       * (usher_director_peer_output_queued). The send-users timeout still runs. */
      c->users_paused = TRUE;
      d->stats.handshake_pauses++;
      if (batch > 0)
        c->timeout_base_us = now.mono_us; /* progress: the send-users timeout restarts */
      return;
    }
    SnapshotUser su = g_array_index(c->users_to_send, SnapshotUser, c->users_sent_idx++);
    /* Entries stay readable while the directory lives (user-dir.h): a removed one reads hash 0,
     * a reused one another hash. Either way it is not ours any more (a user created since the
     * snapshot reaches the peer as an ordinary USER update). No index lookup: the entries are
     * visited nearly in memory order, which makes a large handshake twice as fast. */
    UsherUser *u = su.user;
    if (u->hash != su.hash)
      continue; /* expired or removed meanwhile */
    UsherHost *h = usher_host_table_get(d->hosts, u->host);
    UsherRingMsg msg;
    MSG_INIT(msg, U);
    msg.handshake_user.hash = u->hash;
    msg.handshake_user.ip = h->ip;
    msg.handshake_user.timestamp = u->timestamp;
    msg.handshake_user.weak = u->weak != 0;
    dir_send_msg(d, c, &msg, c->peer_minor);
    c->users_sent++;
    batch++;
  }
  c->timeout_base_us = now.mono_us; /* the send-users timeout restarts after every batch */
  if (c->users_sent_idx < c->users_to_send->len) {
    c->send_more_us = now.mono_us; /* yield to the driver, then go on */
    return;
  }
  g_clear_pointer(&c->users_to_send, g_array_unref);
  send_options(d, c);
  UsherRingMsg msg;
  MSG_INIT(msg, DONE);
  dir_send_msg(d, c, &msg, c->peer_minor);
  c->handshake_sent = TRUE;
}

static gboolean
cmd_options(UsherDirector *d, UsherNow now, Conn *c, const UsherRingMsg *msg)
{
  if (!msg->options.consistent_hashing) {
    d->stats.peers_refused++;
    conn_close(d, now, c, "peer does not use consistent hashing", CLOSE_SEND_DISCONNECT);
    return FALSE;
  }
  if (msg->options.usher_ext && !c->usher_ext) {
    c->usher_ext = TRUE;
    if (c->host != NULL)
      c->host->usher_ext = TRUE;
    d->stats.links_with_extension++;
    if (c->incoming && !c->usher_ext_sent)
      send_options(d, c);
  }
  return TRUE;
}

/* ---- Command handlers -------------------------------------------------------------------------- */

static gboolean
local_tags_in_use(UsherDirector *d)
{
  for (guint i = 0; i < usher_host_table_n_hosts(d->hosts); i++) {
    UsherHost *h = usher_host_table_nth(d->hosts, i);
    if (h->tag->name[0] != '\0' && !h->down && h->vhost_count > 0)
      return TRUE;
  }
  return FALSE;
}

static gboolean
cmd_version(UsherDirector *d, UsherNow now, Conn *c, const UsherRingMsg *msg)
{
  if (c->version_received) {
    conn_protocol_error(d, now, c, "Unknown command VERSION");
    return FALSE;
  }
  if (msg->version.major != USHER_RING_VERSION_MAJOR) {
    g_autofree char *why =
      g_strdup_printf("Incompatible protocol version: %u (we are %u)", msg->version.major,
                      USHER_RING_VERSION_MAJOR);
    conn_protocol_error(d, now, c, why);
    return FALSE;
  }
  c->version_received = TRUE;
  c->peer_minor = MIN(msg->version.minor, USHER_RING_VERSION_MINOR);
  if (c->peer_minor < USHER_RING_MINOR_TAGS_V2 && local_tags_in_use(d)) {
    conn_protocol_error(d, now, c, "Director version is too old for tags");
    return FALSE;
  }
  if (!c->incoming) {
    if (c->peer_minor < USHER_RING_MINOR_OPTIONS) {
      /* Dovecot 2.3 needs OPTIONS consistent-hashing: a peer this old hashes users
       * differently. Dovecot finds out after sending its state; we stop before. */
      d->stats.peers_refused++;
      conn_close(d, now, c, "peer director version is too old (minor < 5)",
                 CLOSE_SEND_DISCONNECT);
      return FALSE;
    }
  }
  send_held_floods(d, c);
  if (!c->incoming) {
    send_hosts(d, c);
    conn_continue_sending_users(d, now, c);
  }
  return TRUE;
}

static gboolean
cmd_me(UsherDirector *d, UsherNow now, Conn *c, const UsherRingMsg *msg)
{
  const UsherRingAddr *addr = &msg->me.addr;
  if (c->me_received) {
    conn_protocol_error(d, now, c, "Unknown command ME");
    return FALSE;
  }
  if (msg->me.has_time) {
    gint64 skew = dir_clamp_peer_time(d, msg->me.time) - dir_wall_secs(now);
    if (skew > CLOCK_SKEW_WARN_SECS || skew < -CLOCK_SKEW_WARN_SECS)
      dir_log(d, G_LOG_LEVEL_WARNING, "%s: clock differs from ours by %" G_GINT64_FORMAT " s",
              c->name, skew);
  }
  if (!c->incoming) {
    if (usher_ip_cmp(&addr->ip, &c->host->addr.ip) != 0 || addr->port != c->host->addr.port) {
      d->stats.peers_refused++;
      conn_close(d, now, c, "peer identifies as a different director than we dialled",
                 CLOSE_SEND_DISCONNECT | CLOSE_FAILURE);
      return FALSE;
    }
    c->me_received = TRUE;
    return TRUE;
  }

  Member *m = dir_member_lookup(d, &addr->ip, addr->port);
  if (m == NULL) {
    /* A known director's IP with a port we have not seen (or the connection's own source IP):
     * learn it, as Dovecot does. Anything else is not a ring member. */
    gboolean known_ip = usher_ip_equal(&addr->ip, &c->remote_ip);
    for (guint i = 0; i < d->members->len && !known_ip; i++) {
      Member *x = g_ptr_array_index(d->members, i);
      known_ip = !x->removed && usher_ip_equal(&x->addr.ip, &addr->ip);
    }
    if (known_ip && addr->port != 0)
      m = dir_member_get(d, &addr->ip, addr->port);
    if (m == NULL) {
      d->stats.refused_connections++;
      d->stats.peers_refused++;
      conn_close(d, now, c, "ME names a director that is not a ring member",
                 CLOSE_SEND_DISCONNECT);
      return FALSE;
    }
  }
  if (m->self) {
    d->stats.peers_refused++;
    conn_close(d, now, c, "connection from ourselves", CLOSE_SEND_DISCONNECT);
    return FALSE;
  }
  if (m->removed) {
    d->stats.peers_refused++;
    conn_close(d, now, c, "director was removed from the ring", CLOSE_SEND_DISCONNECT);
    return FALSE;
  }
  if (m->last_protocol_failure != 0 &&
      m->last_protocol_failure + PROTOCOL_FAILURE_RETRY_SECS > dir_wall_secs(now)) {
    d->stats.refused_connections++;
    d->stats.peers_refused++;
    conn_close(d, now, c, "director had a protocol failure recently", CLOSE_SEND_DISCONNECT);
    return FALSE;
  }
  c->host = m;
  conn_set_name(c);
  c->me_received = TRUE;
  dir_member_restarted(m);

  if (d->left == NULL) {
    if (d->right == NULL && !have_outgoing_in_progress(d))
      dir_connect(d, now, "a director connected to us");
  } else if (d->left->host == m) {
    /* It reconnected: the old connection is dead. */
    conn_close(d, now, d->left, "director reconnected", CLOSE_SEND_DISCONNECT);
  } else if (dir_member_cmp_to_self(d, d->left->host, m) > 0) {
    /* The newcomer sits between our left and us: our left should connect to it. */
    conn_send_connect(d, now, d->left, m);
  } else if (!d->left->verifying) {
    /* The newcomer claims a place our left already has; make sure the left is alive. */
    d->left->verifying = TRUE;
    conn_ping(d, now, d->left);
  }
  return dir_conn_by_id(d, c->id) != NULL;
}

static gboolean
cmd_director(UsherDirector *d, UsherNow now, Conn *c, const UsherRingMsg *msg)
{
  const UsherRingAddr *a = &msg->director;
  gboolean forward = FALSE;
  if (a->port == 0)
    return TRUE;
  Member *m = dir_member_lookup(d, &a->ip, a->port);
  if (m != NULL) {
    if (m->self || m->removed)
      return TRUE;
    /* Maybe it is up again; but during a handshake this would make us redial a dead member. */
    if (c->handshake_received)
      m->last_network_failure = 0;
    dir_member_restarted(m);
  } else {
    m = dir_member_get(d, &a->ip, a->port);
    if (m == NULL) {
      dir_log(d, G_LOG_LEVEL_WARNING, "ignoring DIRECTOR %s: ring member table is full",
              c->name);
      return TRUE;
    }
    forward = TRUE;
    dir_log(d, G_LOG_LEVEL_INFO, "director %s joined the ring (announced by %s)", m->name,
            c->name);
  }
  if (d->right != NULL && dir_member_cmp_to_self(d, m, d->right->host) > 0) {
    /* It sits between us and our right: it should have connected to us already. Do not pass it
     * round the ring, it may well be dead. */
    forward = FALSE;
  }
  if (forward) {
    d->ring_change_counter++;
    UsherRingMsg out;
    MSG_INIT(out, DIRECTOR);
    out.director = m->addr;
    flood(d, c->host, 0, &out);
  }
  (void)now;
  return TRUE;
}

static gboolean
cmd_director_remove(UsherDirector *d, UsherNow now, Conn *c, const UsherRingMsg *msg)
{
  Member *m = dir_member_lookup(d, &msg->director.ip, msg->director.port);
  if (m != NULL && !m->removed) {
    UsherConnId id = c->id;
    dir_remove_member(d, now, c->host, NULL, m);
    return dir_conn_by_id(d, id) != NULL;
  }
  return TRUE;
}

static gboolean
cmd_host_hand_start(UsherDirector *d, UsherNow now, Conn *c, const UsherRingMsg *msg)
{
  if (!c->incoming || c->handshake_received || c->handshake_sending_hosts) {
    conn_protocol_error(d, now, c, "HOST-HAND-START is only allowed in an incoming handshake");
    return FALSE;
  }
  gboolean remote = msg->host_hand.ring_handshaked;
  c->handshake_sending_hosts = TRUE;
  if (remote && !d->ring_handshaked && !d->took_ring_hosts) {
    /* We are joining a complete ring: its hosts replace ours. Dovecot drops all of ours (and
     * their users) first; Usher applies the ring's list and drops only the hosts it does not
     * name, at HOST-HAND-END. The users we hold came from ring members (a director that never
     * completed a ring answers no logins), and dropping them lost users that reached us just
     * before this handshake (found by ushersim swarm, seed 3778). */
    dir_log(d, G_LOG_LEVEL_INFO, "joining a ring: replacing our hosts with %s's", c->name);
    c->replacing_hosts = g_array_new(FALSE, FALSE, sizeof(UsherIp));
  } else if (remote && !d->ring_handshaked) {
    /* We took one ring member's host list already; a second member's list is merged, not
     * taken: after a split the two can differ, and taking the second dropped a backend the
     * first named, with its users, which the first member's side still had (swarm seed 36460). */
  } else if (!remote && d->ring_handshaked) {
    /* It is joining our complete ring: its host list does not count. */
    c->ignore_host_events = TRUE;
    c->host_list_ignored = TRUE;
  }
  return TRUE;
}

/* TRUE if host, set to vhost_count in tag, keeps that tag's ring within STATE_MAX_TAG_VHOSTS. */
static gboolean
host_vhosts_fit(UsherDirector *d, const UsherHost *host, const char *tag, guint vhost_count)
{
  const UsherTag *t = usher_host_table_find_tag(d->hosts, tag);
  if (t == NULL)
    return vhost_count <= STATE_MAX_TAG_VHOSTS;
  guint64 total = vhost_count;
  for (guint i = 0; i < usher_host_table_n_hosts(d->hosts); i++) {
    const UsherHost *h = usher_host_table_nth(d->hosts, i);
    if (h != host && h->tag == t)
      total += h->vhost_count;
  }
  return total <= STATE_MAX_TAG_VHOSTS;
}

/* Dovecot's director_cmd_host_int(): apply one HOST (handshake or flood form). orig is the
 * origin member of a flooded HOST (NULL: treat as our own). */
static gboolean
apply_host(UsherDirector *d, UsherNow now, Conn *c, const UsherRingMsg *msg, Member *orig)
{
  Member *src = c->host;
  const char *tag = msg->host.tag;
  guint vhost_count = msg->host.vhost_count;
  gboolean down = msg->host.down;
  gint64 updown = dir_clamp_peer_time_ahead(d, now, msg->host.last_updown_change);

  if (c->ignore_host_events)
    return TRUE;
  if (tag[0] != '\0' && c->peer_minor < USHER_RING_MINOR_TAGS_V2) {
    conn_protocol_error(d, now, c,
                        "Received a host tag from older director version with incompatible "
                        "tagging support");
    return FALSE;
  }
  if (vhost_count > USHER_VHOST_MAX_RING) {
    conn_protocol_error(d, now, c, "HOST vhost count is unreasonably large");
    return FALSE;
  }
  if (strlen(tag) > USHER_TAG_MAX_LEN || strlen(msg->host.hostname) > USHER_HOSTNAME_MAX_LEN) {
    conn_protocol_error(d, now, c, "HOST tag or hostname too long");
    return FALSE;
  }

  UsherHost *host = usher_host_table_lookup(d->hosts, &msg->host.ip);
  /* A conflict below can only lower the count or keep the host where it is. */
  if (!host_vhosts_fit(d, host, tag, vhost_count)) {
    d->stats.vhosts_refused++;
    conn_protocol_error(d, now, c, "HOST would take its tag's ring past its vhost limit");
    return FALSE;
  }
  gboolean update;
  if (host == NULL) {
    if (usher_host_table_find_tag(d->hosts, tag) == NULL &&
        usher_host_table_n_tags(d->hosts) >= USHER_TAGS_MAX) {
      d->stats.tags_refused++;
      conn_protocol_error(d, now, c, "too many tags");
      return FALSE;
    }
    host = usher_host_table_add(d->hosts, &msg->host.ip, tag, USHER_VHOST_DEFAULT,
                                msg->host.hostname);
    if (host == NULL) {
      conn_protocol_error(d, now, c, "too many backends");
      return FALSE;
    }
    update = TRUE;
  } else {
    update = host->vhost_count != vhost_count || host->down != down ||
             strcmp(host->tag->name, tag) != 0;
  }

  if (c->replacing_hosts != NULL) {
    /* One entry per HOST line: a peer repeating lines must not grow it without end. */
    if (c->replacing_hosts->len >= 2 * USHER_HOSTS_MAX) {
      conn_protocol_error(d, now, c, "handshake host list is too long");
      return FALSE;
    }
    g_array_append_val(c->replacing_hosts, host->ip);
    host->desynced = FALSE; /* the ring's word is final here */
  }
  if (update && host->desynced) {
    /* Two directors changed this host at once: settle locally, then flood the result as ours. */
    d->stats.host_conflicts++;
    /* The newer up/down change wins. On a tie Dovecot takes the incoming one, which lets two
     * directors flip the host back and forth forever; Usher lets "down" win a tie, so every
     * director settles on the same answer. */
    if (host->down != down &&
        (host->last_updown_change > updown || (host->last_updown_change == updown && host->down)))
      down = host->down;
    vhost_count = MIN(vhost_count, host->vhost_count);
    updown = MAX(updown, host->last_updown_change);
    /* The tag too, or two directors that tagged it differently swap tags and flood the swap
     * back for ever, each swap dropping the host's users: the lower name wins. */
    if (strcmp(host->tag->name, tag) < 0)
      tag = host->tag->name;
    dir_log(d, G_LOG_LEVEL_WARNING,
            "host %s changed by %s before our own change had gone round the ring: setting it to "
            "%s, %u vhosts",
            host->ip_str, c->name, down ? "down" : "up", vhost_count);
    orig = NULL;
    src = d->self;
  }
  if (!update)
    return TRUE;
  updown = MAX(updown, host->last_updown_change); /* never shrinks, or states can flip-flop */
  if (strcmp(host->tag->name, tag) != 0 && !usher_host_table_set_tag(d->hosts, host, tag)) {
    d->stats.tags_refused++;
    conn_protocol_error(d, now, c, "too many tags");
    return FALSE;
  }
  usher_host_table_set_down(d->hosts, host, down, updown);
  usher_host_table_set_vhost_count(d->hosts, host, vhost_count);
  if (msg->host.hostname[0] != '\0' &&
      (host->hostname == NULL || strcmp(host->hostname, msg->host.hostname) != 0))
    usher_host_table_set_hostname(d->hosts, host, msg->host.hostname);
  users_update_host(d, now, src, orig, host);
  dir_state_changed(d, now);
  return TRUE;
}

/* Joining a ring: drop our hosts that its host list did not name (their users go with them). */
static void
finish_replacing_hosts(UsherDirector *d, UsherNow now, Conn *c)
{
  g_autoptr(GArray) seen = g_steal_pointer(&c->replacing_hosts);
  d->took_ring_hosts = TRUE;
  for (guint i = 0; i < usher_host_table_n_hosts(d->hosts);) {
    UsherHost *h = usher_host_table_nth(d->hosts, i);
    gboolean named = FALSE;
    for (guint k = 0; k < seen->len && !named; k++)
      named = usher_ip_equal(&g_array_index(seen, UsherIp, k), &h->ip);
    if (named) {
      i++;
      continue;
    }
    users_remove_host(d, now, NULL, NULL, h); /* not flooded, as in Dovecot */
  }
}

static UsherHost *
host_by_ip(UsherDirector *d, const UsherIp *ip)
{
  return usher_host_table_lookup(d->hosts, ip);
}

static gboolean
cmd_user(UsherDirector *d, UsherNow now, Conn *c, const UsherRingMsg *msg)
{
  UsherHost *host = host_by_ip(d, &msg->user.ip);
  gint64 ts = msg->user.has_timestamp ? dir_clamp_peer_time(d, msg->user.timestamp) : 0;
  if (host == NULL) {
    /* Its HOST was lost or is still on its way: kept for a while (users_hold_update). */
    users_hold_update(d, now, c, msg->user.hash, &msg->user.ip, ts, msg->user.has_timestamp);
    return TRUE;
  }
  gboolean forced;
  UsherUser *user;
  if (users_refresh(d, now, c, msg->user.hash, host, ts, msg->user.has_timestamp, FALSE, &forced,
                    &user))
    users_update_user(d, forced ? d->self : c->host, host->tag, user);
  return dir_conn_by_id(d, c->id) != NULL;
}

static gboolean
cmd_handshake_user(UsherDirector *d, UsherNow now, Conn *c, const UsherRingMsg *msg)
{
  if (!c->incoming || c->handshake_received) {
    conn_protocol_error(d, now, c, "U is only allowed in an incoming handshake");
    return FALSE;
  }
  UsherHost *host = host_by_ip(d, &msg->handshake_user.ip);
  gint64 ts = MIN((gint64)msg->handshake_user.timestamp, dir_wall_secs(now));
  if (host == NULL && c->host_list_ignored) {
    /* A director joining our ring placed it on a backend we have not heard of: one added on its
     * side of a split. Dovecot calls this a protocol error, so the director cannot join; it then
     * takes another member's host list and drops that backend and its users, while the directors
     * that stayed on its side keep them (swarm seed 36460). Held like a ring USER: the backend's
     * HOST comes with the merge. */
    c->users_received++;
    users_hold_update(d, now, c, msg->handshake_user.hash, &msg->handshake_user.ip, ts, TRUE);
    return TRUE;
  }
  if (host == NULL) {
    conn_protocol_error(d, now, c, "handshake user points to an unknown host");
    return FALSE;
  }
  c->users_received++;
  gboolean forced;
  UsherUser *user;
  if (users_refresh(d, now, c, msg->handshake_user.hash, host, ts, TRUE,
                    msg->handshake_user.weak, &forced, &user)) {
    Member *src = forced ? d->self : c->host;
    if (user->weak)
      users_update_user_weak(d, src, c, NULL, host->tag, user);
    else
      users_update_user(d, src, host->tag, user);
  }
  return dir_conn_by_id(d, c->id) != NULL;
}

static gboolean
cmd_user_weak(UsherDirector *d, UsherNow now, Conn *c, const UsherRingMsg *msg)
{
  Member *orig;
  gboolean seen = cmd_is_seen(d, &msg->user_ref.origin, &orig);
  if (seen && orig->self && msg->user_ref.origin.seq > orig->last_seq)
    return TRUE; /* in our name, but not ours (cmd_is_seen() counted it) */
  UsherHost *host = host_by_ip(d, &msg->user_ref.ip);
  if (host == NULL)
    return TRUE;
  gboolean weak = TRUE, weak_forward = FALSE;
  if (seen) {
    if (orig->self) {
      /* Our own USER-WEAK has been round the whole ring without objection. */
      weak = FALSE;
    } else if (msg->user_ref.origin.seq > orig->last_weak_forward_seq) {
      /* The origin will announce the outcome; pass this on so it gets back to its origin. */
      orig->last_weak_forward_seq = msg->user_ref.origin.seq;
      weak_forward = TRUE;
    } else {
      /* Passed on once already and here again: its origin is not in the ring to stop it (it
       * went down with this in flight, or a peer made it up). Passing it on again would send it
       * round for ever, refreshing the user at every hop. */
      return TRUE;
    }
  }
  gboolean forced;
  UsherUser *user;
  (void)users_refresh(d, now, c, msg->user_ref.hash, host, dir_wall_secs(now), TRUE, weak, &forced,
                      &user);
  if (user == NULL)
    return TRUE;
  if (weak_forward || user->weak) {
    /* Pass it on with its original origin triple (NULL origin: re-sent as ours). */
    users_update_user_weak(d, c->host, c, orig != NULL ? &msg->user_ref.origin : NULL, host->tag,
                           user);
  } else {
    Member *src = (forced || (orig != NULL && orig->self)) ? d->self : c->host;
    users_update_user(d, src, host->tag, user);
  }
  return dir_conn_by_id(d, c->id) != NULL;
}

static gboolean
cmd_sync(UsherDirector *d, UsherNow now, Conn *c, const UsherRingMsg *msg)
{
  Member *m = dir_member_lookup(d, &msg->sync.addr.ip, msg->sync.addr.port);
  guint minor = MIN(msg->sync.minor, USHER_RING_VERSION_MINOR);
  guint32 hosts_hash = usher_host_table_hosts_hash(d->hosts);
  guint32 seq = msg->sync.seq;
  guint32 ts = msg->sync.has_timestamp
                 ? (guint32)dir_clamp_peer_time_ahead(d, now, msg->sync.timestamp)
                 : (guint32)dir_wall_secs(now);

  if (m == NULL) {
    /* The origin was just removed from the ring: nothing to do. */
  } else if (m->self) {
    if (seq != d->sync_seq)
      return TRUE; /* stale */
    if (d->left == NULL || d->right == NULL)
      return TRUE; /* a neighbour went away since: a newer SYNC is coming */
    if (msg->sync.hosts_hash != 0 && msg->sync.hosts_hash != hosts_hash) {
      d->stats.hosts_hash_mismatches++;
      dir_log(d, G_LOG_LEVEL_WARNING,
              "hosts changed while our SYNC went round the ring (seq=%u, hosts_hash %u -> %u): "
              "resending",
              seq, msg->sync.hosts_hash, hosts_hash);
      (void)dir_resend_sync(d, now);
      return TRUE;
    }
    d->ring_min_version = minor;
    if (!d->ring_handshaked) {
      dir_set_ring_handshaked(d, now);
    } else if (!d->ring_synced) {
      d->last_sync_msecs = (now.mono_us - d->last_sync_start_us) / 1000;
      dir_set_ring_synced(d, now);
    }
    return dir_conn_by_id(d, c->id) != NULL;
  } else {
    gboolean drop = FALSE;
    if (seq < m->last_sync_seq &&
        (gint64)ts < (gint64)m->last_sync_timestamp + SYNC_STALE_RESET_SECS) {
      drop = TRUE; /* stale */
    } else if (seq < m->last_sync_seq) {
      dir_log(d, G_LOG_LEVEL_WARNING, "SYNC seq from %s went backwards: assuming it restarted",
              m->name);
      m->last_sync_seq = 0;
      m->last_sync_timestamp = 0;
      m->last_sync_seq_counter = 1;
    } else if (seq > m->last_sync_seq || ts > m->last_sync_timestamp) {
      m->last_sync_seq = seq;
      m->last_sync_timestamp = ts;
      m->last_sync_seq_counter = 1;
    } else if (++m->last_sync_seq_counter > SYNC_MAX_DUPLICATES) {
      drop = TRUE;
    }
    if (!drop && msg->sync.hosts_hash != 0 && msg->sync.hosts_hash != hosts_hash) {
      drop = TRUE;
      if (m->desynced_hosts_hash != msg->sync.hosts_hash) {
        m->desynced_hosts_hash = msg->sync.hosts_hash;
      } else {
        d->stats.hosts_hash_mismatches++;
        /* Every host, flooded: a peer repeating such SYNCs must not make us do it each time. */
        gboolean resend = d->hosts_resent_us == 0 ||
                          now.mono_us - d->hosts_resent_us >= HOSTS_RESEND_MIN_SECS * SEC_US;
        dir_log(d, G_LOG_LEVEL_WARNING,
                "%s's SYNC says its hosts differ from ours (hosts_hash %u, ours %u): %s",
                m->name, msg->sync.hosts_hash, hosts_hash,
                resend ? "resending our hosts" : "our hosts were resent just now");
        if (resend) {
          d->hosts_resent_us = now.mono_us;
          users_resend_hosts(d, now);
        }
      }
    }
    if (!drop) {
      m->desynced_hosts_hash = 0;
      UsherRingMsg fwd = *msg;
      fwd.sync.minor = minor;
      fwd.sync.timestamp = ts;
      fwd.sync.has_timestamp = TRUE;
      if (d->right != NULL) {
        dir_send_msg(d, d->right, &fwd, d->right->peer_minor);
      } else {
        /* Held per origin: a SYNC from another director waiting here must not replace it. */
        m->delayed_sync_seq = seq;
        m->delayed_sync_minor = minor;
        m->delayed_sync_timestamp = ts;
        m->delayed_sync_hosts_hash = msg->sync.hosts_hash;
      }
    }
  }
  /* A director joined or left since our last SYNC: make sure ours reflects it. */
  if (d->ring_change_counter != d->last_sync_sent_ring_change_counter &&
      d->last_resend_sync_wall != dir_wall_secs(now))
    (void)dir_resend_sync(d, now);
  return dir_conn_by_id(d, c->id) != NULL;
}

static gboolean
cmd_connect(UsherDirector *d, UsherNow now, Conn *c, const UsherRingMsg *msg)
{
  Member *target = dir_member_get(d, &msg->director.ip, msg->director.port);
  if (target == NULL || target->self || msg->director.port == 0)
    return TRUE;
  if (target->removed ||
      (d->right != NULL && dir_member_cmp_to_self(d, target, d->right->host) <= 0)) {
    dir_log(d, G_LOG_LEVEL_INFO, "%s asked us to connect to %s, which is not closer: ignoring",
            c->name, target->name);
    if (!c->closing) {
      c->closing = TRUE;
      c->closing_deadline_us = now.mono_us + WRONG_CONNECT_RECONNECT_SECS * SEC_US;
    }
    return TRUE;
  }
  target->last_network_failure = 0;
  target->last_protocol_failure = 0;
  dir_log(d, G_LOG_LEVEL_INFO, "%s asked us to connect to %s", c->name, target->name);
  UsherConnId id = c->id;
  if (d->right != NULL)
    conn_close(d, now, d->right, "connecting to a closer right neighbour",
               CLOSE_SEND_DISCONNECT);
  if (conn_outgoing_to(d, target) == NULL)
    (void)conn_new_outgoing(d, now, target);
  return dir_conn_by_id(d, id) != NULL;
}

static gboolean
cmd_pong(UsherDirector *d, UsherNow now, Conn *c, const UsherRingMsg *msg)
{
  (void)msg;
  if (c->ping_sent_us == 0)
    return TRUE;
  gint64 rtt_ms = (now.mono_us - c->ping_sent_us) / 1000;
  c->ping_rtt_ms = rtt_ms;
  if (rtt_ms > PING_WARN_SECS * 1000)
    dir_log(d, G_LOG_LEVEL_WARNING, "%s: PING answered after %" G_GINT64_FORMAT " ms", c->name,
            rtt_ms);
  c->ping_sent_us = 0;
  if (c->verifying) {
    /* Our left is alive: newcomers that claimed its place must connect to it instead. */
    c->verifying = FALSE;
    g_autoptr(GArray) ids = dir_conn_ids_sorted(d);
    for (guint i = 0; i < ids->len; i++) {
      Conn *x = dir_conn_by_id(d, g_array_index(ids, UsherConnId, i));
      if (x == NULL || x == c || !x->incoming || x->is_left || x->closing || x->host == NULL ||
          x->host == c->host)
        continue;
      if (dir_member_cmp_to_self(d, c->host, x->host) < 0)
        conn_send_connect(d, now, x, c->host);
    }
  }
  return TRUE;
}

static gboolean
cmd_done(UsherDirector *d, UsherNow now, Conn *c)
{
  if (c->handshake_received || !c->me_received) {
    conn_protocol_error(d, now, c, "Unexpected DONE");
    return FALSE;
  }
  c->handshake_received = TRUE;
  c->handshake_sending_hosts = FALSE;
  c->ignore_host_events = FALSE;
  /* We have just completed a handshake with it: whatever failed before, it is reachable now
   * (a usherd restarted after a crash was otherwise skipped for 60 s). */
  if (c->usher_ext)
    c->host->last_network_failure = 0;
  gint64 secs = (now.mono_us - c->handshake_start_us) / SEC_US;
  dir_log(d, G_LOG_LEVEL_INFO,
          "handshake with %s done in %" G_GINT64_FORMAT " s (%" G_GUINT64_FORMAT
          " users received, %" G_GUINT64_FORMAT " sent)",
          c->name, secs, c->users_received, c->users_sent);
  if (c->incoming) {
    UsherRingMsg msg;
    MSG_INIT(msg, DONE);
    dir_send_msg(d, c, &msg, c->peer_minor);
    if (c->usher_ext)
      health_peer_ready(d, now, c);
    /* Tell the rest of the ring who our new left is. */
    d->ring_change_counter++;
    MSG_INIT(msg, DIRECTOR);
    msg.director = c->host->addr;
    flood(d, c->host, 0, &msg);
    UsherConnId id = c->id;
    conn_try_adopt_left(d, now, c);
    return dir_conn_by_id(d, id) != NULL;
  }
  if (c->usher_ext)
    health_peer_ready(d, now, c);
  UsherConnId id = c->id;
  adopt_right(d, now, c);
  return dir_conn_by_id(d, id) != NULL;
}

static gboolean
dispatch(UsherDirector *d, UsherNow now, Conn *c, const UsherRingMsg *msg)
{
  Member *orig;
  UsherHost *host;
  UsherConnId id = c->id;

  /* Handshake order: VERSION first, then ME. */
  if (!c->version_received && msg->type != USHER_RING_MSG_VERSION) {
    conn_protocol_error(d, now, c, "Expected VERSION");
    return FALSE;
  }
  if (c->version_received && !c->me_received && msg->type != USHER_RING_MSG_ME &&
      msg->type != USHER_RING_MSG_VERSION) {
    conn_protocol_error(d, now, c, "Expected ME");
    return FALSE;
  }
  if (c->handshake_sending_hosts && msg->type != USHER_RING_MSG_HOST_HANDSHAKE &&
      msg->type != USHER_RING_MSG_HOST_HAND_END) {
    conn_protocol_error(d, now, c, "Only HOST is allowed in a handshake host list");
    return FALSE;
  }

  switch (msg->type) {
  case USHER_RING_MSG_VERSION:
    return cmd_version(d, now, c, msg);
  case USHER_RING_MSG_ME:
    return cmd_me(d, now, c, msg);
  case USHER_RING_MSG_DIRECTOR:
    return cmd_director(d, now, c, msg);
  case USHER_RING_MSG_DIRECTOR_REMOVE:
    return cmd_director_remove(d, now, c, msg);
  case USHER_RING_MSG_HOST_HAND_START:
    return cmd_host_hand_start(d, now, c, msg);
  case USHER_RING_MSG_HOST_HAND_END:
    if (!c->handshake_sending_hosts) {
      conn_protocol_error(d, now, c, "HOST-HAND-END without HOST-HAND-START");
      return FALSE;
    }
    c->handshake_sending_hosts = FALSE;
    c->ignore_host_events = FALSE;
    if (c->replacing_hosts != NULL) {
      finish_replacing_hosts(d, now, c);
      return dir_conn_by_id(d, id) != NULL;
    }
    return TRUE;
  case USHER_RING_MSG_HOST_HANDSHAKE:
    /* A handshake HOST that changes anything is re-flooded as our own. */
    return apply_host(d, now, c, msg, NULL);
  case USHER_RING_MSG_HOST:
    if (cmd_is_seen(d, &msg->host.origin, &orig))
      return TRUE;
    return apply_host(d, now, c, msg, orig);
  case USHER_RING_MSG_HOST_REMOVE:
    if (cmd_is_seen(d, &msg->host_ref.origin, &orig))
      return TRUE;
    host = host_by_ip(d, &msg->host_ref.ip);
    if (host != NULL) {
      users_remove_host(d, now, c->host, orig, host);
      dir_state_changed(d, now);
    } else {
      users_drop_held(d, &msg->host_ref.ip);
    }
    return dir_conn_by_id(d, id) != NULL;
  case USHER_RING_MSG_HOST_FLUSH:
    if (cmd_is_seen(d, &msg->host_ref.origin, &orig))
      return TRUE;
    host = host_by_ip(d, &msg->host_ref.ip);
    if (host != NULL)
      users_flush_host(d, now, c->host, orig, host);
    return dir_conn_by_id(d, id) != NULL;
  case USHER_RING_MSG_USER:
    return cmd_user(d, now, c, msg);
  case USHER_RING_MSG_U:
    return cmd_handshake_user(d, now, c, msg);
  case USHER_RING_MSG_USER_WEAK:
    return cmd_user_weak(d, now, c, msg);
  case USHER_RING_MSG_USER_MOVE:
    if (cmd_is_seen(d, &msg->user_ref.origin, &orig))
      return TRUE;
    host = host_by_ip(d, &msg->user_ref.ip);
    if (host != NULL)
      users_move(d, now, c->host, orig, msg->user_ref.hash, host);
    return dir_conn_by_id(d, id) != NULL;
  case USHER_RING_MSG_USER_KILLED:
    users_killed(d, now, msg->user_killed.hash);
    return dir_conn_by_id(d, id) != NULL;
  case USHER_RING_MSG_USER_KILLED_EVERYWHERE:
    if (cmd_is_seen(d, &msg->user_killed_everywhere.origin, &orig))
      return TRUE;
    users_killed_everywhere(d, now, c->host, orig, msg->user_killed_everywhere.hash);
    return dir_conn_by_id(d, id) != NULL;
  case USHER_RING_MSG_USER_KICK:
    if (cmd_is_seen(d, &msg->user_kick.origin, &orig))
      return TRUE;
    users_kick_name(d, now, c->host, orig, msg->user_kick.username, FALSE);
    return TRUE;
  case USHER_RING_MSG_USER_KICK_ALT:
    if (cmd_is_seen(d, &msg->user_kick_alt.origin, &orig))
      return TRUE;
    users_kick_alt(d, now, c->host, orig, msg->user_kick_alt.field, msg->user_kick_alt.value,
                   FALSE);
    return TRUE;
  case USHER_RING_MSG_USER_KICK_HASH:
    if (cmd_is_seen(d, &msg->user_ref.origin, &orig))
      return TRUE;
    users_kick_hash(d, now, c->host, orig, msg->user_ref.hash, &msg->user_ref.ip);
    return TRUE;
  case USHER_RING_MSG_SYNC:
    return cmd_sync(d, now, c, msg);
  case USHER_RING_MSG_CONNECT:
    return cmd_connect(d, now, c, msg);
  case USHER_RING_MSG_PING: {
    gint64 age = msg->ping.has_values
                   ? dir_wall_secs(now) - dir_clamp_peer_time(d, msg->ping.time)
                   : 0;
    if (age >= PING_WARN_SECS)
      dir_log(d, G_LOG_LEVEL_WARNING, "%s: PING is %" G_GINT64_FORMAT " s old", c->name, age);
    UsherRingMsg pong;
    MSG_INIT(pong, PONG);
    pong.ping.has_values = TRUE;
    pong.ping.time = dir_wall_secs(now);
    pong.ping.buffer_bytes = c->output_queued + c->output_unreported;
    dir_send_msg(d, c, &pong, c->peer_minor);
    return TRUE;
  }
  case USHER_RING_MSG_PONG:
    return cmd_pong(d, now, c, msg);
  case USHER_RING_MSG_QUIT: {
    g_autofree char *why = g_strdup_printf("peer quit: %s", msg->quit.reason);
    conn_close(d, now, c, why, CLOSE_SEND_DISCONNECT);
    return FALSE;
  }
  case USHER_RING_MSG_OPTIONS:
    return cmd_options(d, now, c, msg);
  case USHER_RING_MSG_DONE:
    return cmd_done(d, now, c);
  case USHER_RING_MSG_X_USHER_HEALTH:
    if (!c->usher_ext || !c->handshake_received) {
      conn_protocol_error(d, now, c, "X-USHER-HEALTH from a peer that did not announce it");
      return FALSE;
    }
    return health_cmd_report(d, now, c, msg);
  case USHER_RING_MSG_NONE:
    break;
  }
  conn_protocol_error(d, now, c, "unexpected message");
  return FALSE;
}

void
conn_input(UsherDirector *d, UsherNow now, Conn *c, const void *data, gsize len)
{
  UsherConnId id = c->id;
  c->bytes_in += len;
  c->last_input_us = now.mono_us;
  c->last_input_wall = dir_wall_secs(now);
  /* Dovecot discards input from a connection it told to go elsewhere (CONNECT sent). Usher keeps
   * applying it: it is ordinary ring traffic, and dropping it lost user updates that a peer sent
   * just before it saw our CONNECT, during a merge (found by ushersim swarm, seed 7491). The
   * connection is never adopted as a neighbour and still closes at its deadline. */
  usher_line_reader_feed(c->reader, data, len);
  for (;;) {
    char *line;
    gsize line_len;
    UsherLineResult lr = usher_line_reader_next(c->reader, &line, &line_len);
    if (lr == USHER_LINE_NEED_MORE)
      return;
    if (lr == USHER_LINE_TOO_LONG) {
      conn_protocol_error(d, now, c, "line too long");
      return;
    }
    d->stats.lines_in++;
    UsherRingParseFlags flags = 0;
    if (c->handshake_sending_hosts)
      flags |= USHER_RING_PARSE_HOST_LIST;
    if (c->incoming && !c->handshake_received && c->peer_minor < USHER_RING_MINOR_HANDSHAKE_U)
      flags |= USHER_RING_PARSE_LEGACY_USER;
    UsherRingMsg msg;
    UsherRingParseResult pr = usher_ring_msg_parse(line, line_len, flags, &msg);
    if (pr != USHER_RING_PARSE_OK) {
      g_autofree char *why = g_strdup_printf("Invalid input (%s)",
                                             usher_ring_parse_result_to_string(pr));
      conn_protocol_error(d, now, c, why);
      return;
    }
    /* The ME and handshake timeouts restart on complete lines that carry the handshake on, not
     * on bytes: a peer that trickles a line a byte at a time, or sends PINGs and never DONE,
     * would otherwise hold the connection (and keep our ring unsynced) for ever. */
    if (msg.type != USHER_RING_MSG_PING && msg.type != USHER_RING_MSG_PONG)
      c->timeout_base_us = now.mono_us;
    if (!dispatch(d, now, c, &msg))
      return;
    if ((c = dir_conn_by_id(d, id)) == NULL)
      return;
  }
}

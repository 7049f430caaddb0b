/* director-query.c - read-only snapshots of a director for the admin protocol, usherctl and
 * metrics (HOST-LIST, HOST-LIST-REMOVED, DIRECTOR-LIST, USER-LOOKUP, USER-LIST).
 *
 * Every function here takes a const director and changes nothing: no lazy ring rebuild (see
 * usher_tag_place_readonly), no expiry, no effect.
 */
#include "libcore/director-private.h"

#include <string.h>

static void
host_info_clear(gpointer p)
{
  UsherHostInfo *h = p;
  g_free(h->hostname);
  g_free(h->tag);
}

GArray *
usher_director_list_hosts(const UsherDirector *d)
{
  guint n = usher_host_table_n_hosts(d->hosts);
  GArray *out = g_array_sized_new(FALSE, TRUE, sizeof(UsherHostInfo), n);
  g_array_set_clear_func(out, host_info_clear);
  for (guint i = 0; i < n; i++) {
    const UsherHost *h = usher_host_table_nth(d->hosts, i);
    UsherHostInfo info = {
      .ip = h->ip,
      .hostname = g_strdup(h->hostname),
      .tag = g_strdup(h->tag->name),
      .vhost_count = h->vhost_count,
      .down = h->down,
      .last_updown_change = h->last_updown_change,
      .user_count = h->user_count,
      .desynced = h->desynced,
    };
    memcpy(info.ip_str, h->ip_str, sizeof(info.ip_str));
    g_array_append_val(out, info);
  }
  return out;
}

GArray *
usher_director_list_removed_hosts(const UsherDirector *d)
{
  GArray *out = g_array_new(FALSE, FALSE, sizeof(UsherIp));
  for (guint i = 0; i < usher_host_table_n_hosts(d->initial_hosts); i++) {
    const UsherHost *h = usher_host_table_nth(d->initial_hosts, i);
    if (usher_host_table_lookup_const(d->hosts, &h->ip) == NULL)
      g_array_append_val(out, h->ip);
  }
  return out;
}

static void
conn_info(const UsherDirector *d, const Conn *c, UsherMemberInfo *info)
{
  info->conn = c->id;
  info->role = c->is_left    ? USHER_LINK_LEFT
               : c->is_right ? USHER_LINK_RIGHT
               : c->incoming ? USHER_LINK_IN
                             : USHER_LINK_OUT;
  info->connected = c->incoming || c->connected;
  info->handshaked = c->handshake_received;
  info->synced = c->synced;
  info->users_received = c->users_received;
  info->users_sent = c->users_sent;
  info->users_to_send =
    c->users_to_send != NULL ? c->users_to_send->len - c->users_sent_idx : 0;
  info->ping_rtt_ms = c->ping_rtt_ms;
  info->bytes_in = c->bytes_in;
  info->bytes_out = c->bytes_out;
  info->buffered = c->output_queued + c->output_unreported;
  info->buffered_peak = c->output_peak;
  info->last_input = c->last_input_wall;
  info->last_output = c->last_output_wall;
  (void)d;
}

static void
member_info(const Member *m, UsherMemberInfo *info)
{
  info->has_addr = TRUE;
  info->addr = m->addr;
  info->self = m->self;
  info->removed = m->removed;
  info->last_failure = MAX(m->last_network_failure, m->last_protocol_failure);
}

GArray *
usher_director_list_members(const UsherDirector *d)
{
  /* Connections in id order, so that every listing comes out in the same order. */
  const GPtrArray *conns = d->conns;

  GArray *out = g_array_new(FALSE, TRUE, sizeof(UsherMemberInfo));
  /* First the incoming connections whose ME has not arrived (Dovecot's order). */
  for (guint k = 0; k < conns->len; k++) {
    const Conn *c = g_ptr_array_index(conns, k);
    if (c->host != NULL)
      continue;
    UsherMemberInfo info = {0};
    conn_info(d, c, &info);
    g_array_append_val(out, info);
  }
  for (guint i = 0; i < d->members->len; i++) {
    const Member *m = g_ptr_array_index(d->members, i);
    gboolean any = FALSE;
    for (guint k = 0; k < conns->len; k++) {
      const Conn *c = g_ptr_array_index(conns, k);
      if (c->host != m)
        continue;
      UsherMemberInfo info = {0};
      member_info(m, &info);
      conn_info(d, c, &info);
      g_array_append_val(out, info);
      any = TRUE;
    }
    if (!any) {
      UsherMemberInfo info = {0};
      member_info(m, &info);
      info.ping_rtt_ms = -1;
      g_array_append_val(out, info);
    }
  }
  return out;
}

void
usher_director_get_ring_info(const UsherDirector *d, UsherRingInfo *info)
{
  memset(info, 0, sizeof(*info));
  info->handshaked = d->ring_handshaked;
  info->synced = d->ring_synced;
  info->min_version = d->ring_min_version;
  info->last_sync_msecs = d->last_sync_msecs;
  info->unsynced_since_us = d->ring_synced ? 0 : d->last_sync_start_us;
  info->alone = d->alone;
  for (guint i = 0; i < d->members->len; i++)
    info->n_members += ((const Member *)g_ptr_array_index(d->members, i))->removed ? 0 : 1;
  info->n_connections = d->conns->len;
  info->pending_requests = d->requests.length - d->requests_cancelled_waiting;
  info->moving_users = d->users_moving_count;
  info->kicks_running = g_hash_table_size(d->kicks);
  info->admin_kicks_running = d->admin_kicks_running;
  info->pending_admin_ops = d->admin_ops.length;
  info->n_users = dir_count_users(d);
}

/* The entry of tag's user hash that still counts at wall_secs: not expired, or still being moved
 * or re-confirmed (weak). */
static const UsherUser *
held_user(const UsherTag *tag, guint32 hash, gint64 wall_secs)
{
  const UsherUser *u = usher_user_dir_lookup(tag->users, hash);
  if (u == NULL || (usher_user_dir_is_expired(tag->users, u, wall_secs) &&
                    u->kill_state == USHER_KILL_NONE && !u->weak))
    return NULL;
  return u;
}

const UsherUser *
usher_director_held_user(const UsherDirector *d, gint64 now_wall_us, guint32 hash,
                         const char *tag_name)
{
  const UsherTag *tag = usher_host_table_find_tag_const(d->hosts, tag_name);
  return tag != NULL ? held_user(tag, hash, now_wall_us / SEC_US) : NULL;
}

void
usher_director_lookup_user(const UsherDirector *d, gint64 now_wall_us, guint32 hash,
                           const char *tag_name, UsherUserInfo *info)
{
  memset(info, 0, sizeof(*info));
  info->hash = hash;
  const UsherTag *tag = usher_host_table_find_tag_const(d->hosts, tag_name);
  if (tag != NULL) {
    info->tag_known = TRUE;
    const UsherUser *u = held_user(tag, hash, now_wall_us / SEC_US);
    if (u != NULL) {
      const UsherHost *h = usher_host_table_get_const(d->hosts, u->host);
      info->found = TRUE;
      info->current = h->ip;
      info->timestamp = u->timestamp;
      info->expires = (gint64)u->timestamp + d->user_expire_secs;
      info->weak = u->weak != 0;
      info->kill_state = (UsherKillState)u->kill_state;
    }
    const UsherHost *hashed = usher_tag_place_readonly(d->hosts, tag, hash);
    if (hashed != NULL)
      info->hashed = hashed->ip;
  }
  const UsherTag *itag = usher_host_table_find_tag_const(d->initial_hosts, tag_name);
  if (itag != NULL) {
    const UsherHost *initial = usher_tag_place_readonly(d->initial_hosts, itag, hash);
    if (initial != NULL)
      info->initial = initial->ip;
  }
}

GArray *
usher_director_list_users(const UsherDirector *d, const UsherIp *host_ip)
{
  const UsherHost *only = NULL;
  if (host_ip != NULL) {
    only = usher_host_table_lookup_const(d->hosts, host_ip);
    if (only == NULL)
      return g_array_new(FALSE, FALSE, sizeof(UsherUserEntry));
  }
  GArray *out = g_array_sized_new(FALSE, FALSE, sizeof(UsherUserEntry),
                                  only != NULL ? only->user_count : dir_count_users(d));
  for (guint t = 0; t < usher_host_table_n_tags(d->hosts); t++) {
    UsherTag *tag = usher_host_table_nth_tag(d->hosts, t);
    if (only != NULL && only->tag != tag)
      continue;
    for (const UsherUser *u = usher_user_dir_oldest(tag->users); u != NULL;
         u = usher_user_dir_next(tag->users, u)) {
      if (only != NULL && u->host != only->id)
        continue;
      UsherUserEntry e = {.hash = u->hash, .timestamp = u->timestamp};
      e.host = usher_host_table_get_const(d->hosts, u->host)->ip;
      g_array_append_val(out, e);
    }
  }
  return out;
}

GArray *
usher_director_list_users_stored(const UsherDirector *d)
{
  GArray *out = g_array_sized_new(FALSE, FALSE, sizeof(UsherUserEntry), dir_count_users(d));
  for (guint t = 0; t < usher_host_table_n_tags(d->hosts); t++) {
    UsherTag *tag = usher_host_table_nth_tag(d->hosts, t);
    guint32 n = usher_user_dir_n_stored(tag->users);
    for (guint32 i = 0; i < n; i++) {
      const UsherUser *u = usher_user_dir_stored(tag->users, i);
      if (u->hash == 0)
        continue; /* a free slot */
      UsherUserEntry e = {.hash = u->hash, .timestamp = u->timestamp};
      e.host = usher_host_table_get_const(d->hosts, u->host)->ip;
      g_array_append_val(out, e);
    }
  }
  return out;
}

guint
usher_director_get_user_expire_secs(const UsherDirector *d)
{
  return d->user_expire_secs;
}

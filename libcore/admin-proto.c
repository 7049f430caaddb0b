/* admin-proto.c - Dovecot's director-admin protocol: parse, run, format (see admin-proto.h).
 *
 * Argument rules follow Dovecot 2.3's doveadm-connection.c as the spec (section 6) describes
 * them: missing or malformed arguments are a protocol error (the connection is closed, no
 * reply); a decimal user argument is the user hash itself; HOST-SET takes "ip@tag"; an empty IP
 * means "all" where Dovecot allows it. */
#include "libcore/admin-proto.h"

#include <string.h>

void
usher_admin_cmd_clear(UsherAdminCmd *cmd)
{
  g_free(cmd->tag);
  g_free(cmd->user);
  g_free(cmd->field);
  g_free(cmd->value);
  memset(cmd, 0, sizeof(*cmd));
}

/* Splits at TABs and unescapes every field in place (Dovecot's t_strsplit_tabescaped). The
 * fields point into line. */
static GPtrArray *
split_fields(char *line, gsize len)
{
  GPtrArray *fields = g_ptr_array_new();
  char *p = line, *end = line + len;
  for (;;) {
    char *tab = memchr(p, '\t', (gsize)(end - p));
    char *stop = tab != NULL ? tab : end;
    gsize n = usher_ring_unescape_inplace(p, (gsize)(stop - p));
    p[n] = '\0'; /* an escaped NUL ends the field for Dovecot too */
    g_ptr_array_add(fields, p);
    if (tab == NULL)
      break;
    p = tab + 1;
  }
  return fields;
}

/* Dovecot's str_to_uint: one or more digits, no sign, at most 4294967295. */
static gboolean
parse_uint(const char *s, guint32 *out)
{
  guint64 v = 0;
  if (*s == '\0')
    return FALSE;
  for (; *s != '\0'; s++) {
    if (*s < '0' || *s > '9')
      return FALSE;
    v = v * 10 + (guint64)(*s - '0');
    if (v > G_MAXUINT32)
      return FALSE;
  }
  *out = (guint32)v;
  return TRUE;
}

gboolean
usher_admin_version_ok(const char *line, gsize len)
{
  static const char prefix[] = "VERSION\tdirector-doveadm\t1\t";
  if (len <= sizeof(prefix) - 1 || memcmp(line, prefix, sizeof(prefix) - 1) != 0)
    return FALSE;
  for (gsize i = sizeof(prefix) - 1; i < len; i++)
    if (line[i] < '0' || line[i] > '9')
      return FALSE;
  return TRUE;
}

static const struct {
  const char *name;
  UsherAdminCmdType type;
} commands[] = {
  {"HOST-LIST", USHER_ADMIN_CMD_HOST_LIST},
  {"HOST-LIST-REMOVED", USHER_ADMIN_CMD_HOST_LIST_REMOVED},
  {"HOST-SET", USHER_ADMIN_CMD_HOST_SET},
  {"HOST-UPDATE", USHER_ADMIN_CMD_HOST_UPDATE},
  {"HOST-UP", USHER_ADMIN_CMD_HOST_UP},
  {"HOST-DOWN", USHER_ADMIN_CMD_HOST_DOWN},
  {"HOST-REMOVE", USHER_ADMIN_CMD_HOST_REMOVE},
  {"HOST-FLUSH", USHER_ADMIN_CMD_HOST_FLUSH},
  {"HOST-RESET-USERS", USHER_ADMIN_CMD_HOST_RESET_USERS},
  {"USER-LOOKUP", USHER_ADMIN_CMD_USER_LOOKUP},
  {"USER-LIST", USHER_ADMIN_CMD_USER_LIST},
  {"USER-MOVE", USHER_ADMIN_CMD_USER_MOVE},
  {"USER-KICK", USHER_ADMIN_CMD_USER_KICK},
  {"USER-KICK-ALT", USHER_ADMIN_CMD_USER_KICK_ALT},
  {"DIRECTOR-LIST", USHER_ADMIN_CMD_DIRECTOR_LIST},
  {"DIRECTOR-ADD", USHER_ADMIN_CMD_DIRECTOR_ADD},
  {"DIRECTOR-REMOVE", USHER_ADMIN_CMD_DIRECTOR_REMOVE},
  {"USHER-STATS", USHER_ADMIN_CMD_USHER_STATS},
  {"USHER-RING", USHER_ADMIN_CMD_USHER_RING},
  {"USHER-EXPLAIN", USHER_ADMIN_CMD_USHER_EXPLAIN},
  {"USHER-SESSIONS", USHER_ADMIN_CMD_USHER_SESSIONS},
  {"USHER-HEALTH", USHER_ADMIN_CMD_USHER_HEALTH},
};

static gboolean
fail(char **error_out, const char *cmd, const char *why)
{
  *error_out = g_strdup_printf("invalid %s parameters: %s", cmd, why);
  return FALSE;
}

static gboolean
parse_ip(const char *text, UsherIp *ip_out)
{
  return usher_ip_parse(text, -1, ip_out);
}

static void
set_user(UsherAdminCmd *cmd, const char *user)
{
  cmd->user = g_strdup(user);
  cmd->user_is_hash = parse_uint(user, &cmd->hash);
}

gboolean
usher_admin_cmd_parse(char *line, gsize len, UsherAdminCmd *cmd, char **error_out)
{
  memset(cmd, 0, sizeof(*cmd));
  cmd->vhost_count = -1;
  *error_out = NULL;
  g_autoptr(GPtrArray) fields = split_fields(line, len);
  const char *name = g_ptr_array_index(fields, 0);
  if (len == 0) {
    *error_out = g_strdup("empty command line");
    return FALSE;
  }
  for (gsize i = 0; i < G_N_ELEMENTS(commands) && cmd->type == 0; i++)
    if (strcmp(commands[i].name, name) == 0)
      cmd->type = commands[i].type;
  if (cmd->type == 0) {
    g_autofree char *shown = g_strescape(name, NULL);
    *error_out = g_strdup_printf("unknown command \"%.64s\"", shown);
    return FALSE;
  }
  guint n = fields->len - 1;
  const char *a0 = n >= 1 ? g_ptr_array_index(fields, 1) : NULL;
  const char *a1 = n >= 2 ? g_ptr_array_index(fields, 2) : NULL;
  const char *a2 = n >= 3 ? g_ptr_array_index(fields, 3) : NULL;

  switch (cmd->type) {
  case USHER_ADMIN_CMD_HOST_LIST:
  case USHER_ADMIN_CMD_HOST_LIST_REMOVED:
  case USHER_ADMIN_CMD_DIRECTOR_LIST:
  case USHER_ADMIN_CMD_USHER_STATS:
  case USHER_ADMIN_CMD_USHER_RING:
  case USHER_ADMIN_CMD_USHER_HEALTH:
    return TRUE;
  case USHER_ADMIN_CMD_HOST_SET:
  case USHER_ADMIN_CMD_HOST_UPDATE: {
    if (a0 == NULL)
      return fail(error_out, name, "no address");
    const char *at = strchr(a0, '@');
    g_autofree char *ip_text = at != NULL ? g_strndup(a0, (gsize)(at - a0)) : g_strdup(a0);
    if (!parse_ip(ip_text, &cmd->ip))
      return fail(error_out, name, "not an IP address");
    cmd->has_ip = TRUE;
    if (at != NULL) {
      if (strlen(at + 1) > USHER_TAG_MAX_LEN)
        return fail(error_out, name, "tag too long");
      cmd->tag = g_strdup(at + 1);
    }
    if (a1 != NULL) {
      guint32 v;
      if (!parse_uint(a1, &v))
        return fail(error_out, name, "vhost count is not a number");
      cmd->vhost_count = (gint)MIN(v, (guint32)G_MAXINT);
    } else if (cmd->type == USHER_ADMIN_CMD_HOST_UPDATE) {
      return fail(error_out, name, "no vhost count");
    }
    return TRUE;
  }
  case USHER_ADMIN_CMD_HOST_UP:
  case USHER_ADMIN_CMD_HOST_DOWN:
  case USHER_ADMIN_CMD_HOST_REMOVE:
    if (a0 == NULL || !parse_ip(a0, &cmd->ip))
      return fail(error_out, name, "not an IP address");
    cmd->has_ip = TRUE;
    return TRUE;
  case USHER_ADMIN_CMD_HOST_FLUSH:
  case USHER_ADMIN_CMD_USER_LIST:
    if (a0 != NULL && a0[0] != '\0') {
      if (!parse_ip(a0, &cmd->ip))
        return fail(error_out, name, "not an IP address");
      cmd->has_ip = TRUE;
    }
    return TRUE;
  case USHER_ADMIN_CMD_HOST_RESET_USERS:
    if (a0 != NULL && a1 != NULL) {
      guint32 max;
      if (!parse_uint(a1, &max) || max == 0)
        return fail(error_out, name, "the move limit must be a number above 0");
      cmd->max_moves = max;
    }
    if (a0 != NULL && a0[0] != '\0') {
      if (!parse_ip(a0, &cmd->ip))
        return fail(error_out, name, "not an IP address");
      cmd->has_ip = TRUE;
    }
    return TRUE;
  case USHER_ADMIN_CMD_USER_LOOKUP:
  case USHER_ADMIN_CMD_USHER_EXPLAIN:
    set_user(cmd, a0 != NULL ? a0 : "");
    cmd->tag = g_strdup(a1 != NULL ? a1 : "");
    return TRUE;
  case USHER_ADMIN_CMD_USHER_SESSIONS:
    if (a0 != NULL && a0[0] != '\0')
      cmd->user = g_strdup(a0);
    if (a1 != NULL && a1[0] != '\0') {
      if (!parse_ip(a1, &cmd->ip))
        return fail(error_out, name, "not an IP address");
      cmd->has_ip = TRUE;
    }
    return TRUE;
  case USHER_ADMIN_CMD_USER_MOVE:
    if (a0 == NULL || a1 == NULL || !parse_ip(a1, &cmd->ip))
      return fail(error_out, name, "needs a user and an IP address");
    cmd->has_ip = TRUE;
    set_user(cmd, a0);
    return TRUE;
  case USHER_ADMIN_CMD_USER_KICK:
    if (a0 == NULL)
      return fail(error_out, name, "no user");
    cmd->user = g_strdup(a0);
    cmd->nowait = g_strcmp0(a1, "nowait") == 0;
    return TRUE;
  case USHER_ADMIN_CMD_USER_KICK_ALT:
    if (a0 == NULL || a1 == NULL)
      return fail(error_out, name, "needs a field and a value");
    cmd->field = g_strdup(a0);
    cmd->value = g_strdup(a1);
    cmd->nowait = g_strcmp0(a2, "nowait") == 0;
    return TRUE;
  case USHER_ADMIN_CMD_DIRECTOR_ADD:
  case USHER_ADMIN_CMD_DIRECTOR_REMOVE:
    if (a0 == NULL || !parse_ip(a0, &cmd->ip))
      return fail(error_out, name, "not an IP address");
    cmd->has_ip = TRUE;
    if (a1 != NULL) {
      guint32 port;
      if (!parse_uint(a1, &port) || port == 0 || port > 65535)
        return fail(error_out, name, "not a port (1 to 65535)");
      cmd->port = (guint16)port;
    }
    return TRUE;
  }
  g_assert_not_reached();
}

guint32
usher_admin_cmd_user_hash(const UsherDirector *d, const UsherAdminCmd *cmd)
{
  if (cmd->user_is_hash)
    return cmd->hash;
  return usher_login_hasher_hash_whole(usher_director_get_hasher(d), cmd->user, -1);
}

/* ---- Replies that are queries ------------------------------------------------------------------ */

static void
format_host_list(const UsherDirector *d, GString *out)
{
  g_autoptr(GArray) hosts = usher_director_list_hosts(d);
  for (guint i = 0; i < hosts->len; i++) {
    const UsherHostInfo *h = &g_array_index(hosts, UsherHostInfo, i);
    g_string_append_printf(out, "%s\t%u\t%u\t", h->ip_str, h->vhost_count, h->user_count);
    usher_ring_escape_append(out, h->tag, -1);
    g_string_append_printf(out, "\t%c\t%" G_GINT64_FORMAT "\n", h->down ? 'D' : 'U',
                           h->last_updown_change);
  }
  g_string_append_c(out, '\n');
}

static void
format_removed(const UsherDirector *d, GString *out)
{
  g_autoptr(GArray) removed = usher_director_list_removed_hosts(d);
  for (guint i = 0; i < removed->len; i++) {
    char buf[USHER_IP_STRLEN];
    g_string_append_printf(out, "%s\n",
                           usher_ip_to_string(&g_array_index(removed, UsherIp, i), buf));
  }
  g_string_append_c(out, '\n');
}

static void
format_user_lookup(const UsherDirector *d, UsherNow now, const UsherAdminCmd *cmd, GString *out)
{
  UsherUserInfo info;
  char buf[USHER_IP_STRLEN];
  usher_director_lookup_user(d, now.wall_us, usher_admin_cmd_user_hash(d, cmd), cmd->tag, &info);
  if (info.found)
    g_string_append_printf(out, "%s\t%" G_GINT64_FORMAT, usher_ip_to_string(&info.current, buf),
                           info.expires);
  else
    g_string_append(out, "\t0");
  g_string_append_c(out, '\t');
  if (info.hashed.family != 0)
    g_string_append(out, usher_ip_to_string(&info.hashed, buf));
  g_string_append_c(out, '\t');
  if (info.initial.family != 0)
    g_string_append(out, usher_ip_to_string(&info.initial, buf));
  g_string_append_c(out, '\n');
}

static void
format_user_list(const UsherDirector *d, const UsherAdminCmd *cmd, GString *out)
{
  g_autoptr(GArray) users = usher_director_list_users(d, cmd->has_ip ? &cmd->ip : NULL);
  guint expire = usher_director_get_user_expire_secs(d);
  for (guint i = 0; i < users->len; i++) {
    const UsherUserEntry *u = &g_array_index(users, UsherUserEntry, i);
    char buf[USHER_IP_STRLEN];
    g_string_append_printf(out, "%u\t%" G_GUINT64_FORMAT "\t%s\n", u->hash,
                           (guint64)u->timestamp + expire, usher_ip_to_string(&u->host, buf));
  }
  g_string_append_c(out, '\n');
}

static const char *
role_name(UsherLinkRole role)
{
  switch (role) {
  case USHER_LINK_LEFT:
    return "left";
  case USHER_LINK_RIGHT:
    return "right";
  case USHER_LINK_IN:
    return "in";
  case USHER_LINK_OUT:
    return "out";
  case USHER_LINK_NONE:
    break;
  }
  return "";
}

static void
format_director_list(const UsherDirector *d, UsherNow now, GString *out)
{
  g_autoptr(GArray) members = usher_director_list_members(d);
  UsherRingInfo ring;
  usher_director_get_ring_info(d, &ring);
  for (guint i = 0; i < members->len; i++) {
    const UsherMemberInfo *m = &g_array_index(members, UsherMemberInfo, i);
    if (m->has_addr) {
      char buf[USHER_IP_STRLEN];
      const char *type = m->role != USHER_LINK_NONE ? role_name(m->role)
                         : m->removed               ? "removed"
                         : m->self                  ? "self"
                                                    : "";
      g_string_append_printf(out, "%s\t%u\t%s\t%" G_GINT64_FORMAT "\t",
                             usher_ip_to_string(&m->addr.ip, buf), m->addr.port, type,
                             m->last_failure);
    }
    if (m->role == USHER_LINK_NONE) {
      if (m->self) {
        if (!ring.handshaked)
          g_string_append(out, "ring handshaking");
        else if (ring.synced)
          g_string_append(out, "ring synced");
        else
          g_string_append_printf(out, "ring syncing - last sync %d secs ago",
                                 (int)((now.mono_us - ring.unsynced_since_us) / 1000000));
        g_string_append_printf(out, "\t%" G_GINT64_FORMAT, ring.last_sync_msecs);
      }
      g_string_append_c(out, '\n');
      continue;
    }
    if (!m->handshaked) {
      if (m->role == USHER_LINK_IN || m->role == USHER_LINK_LEFT)
        g_string_append_printf(out, "handshaking - %" G_GUINT64_FORMAT " USERs received",
                               m->users_received);
      else
        g_string_append_printf(out, "handshaking - %" G_GUINT64_FORMAT " USERs sent",
                               m->users_sent);
    } else {
      g_string_append(out, m->synced ? "synced" : "syncing");
    }
    g_string_append_printf(out,
                           "\t%" G_GINT64_FORMAT "\t%" G_GUINT64_FORMAT "\t%" G_GUINT64_FORMAT
                           "\t%" G_GUINT64_FORMAT "\t%" G_GUINT64_FORMAT "\t%" G_GINT64_FORMAT
                           "\t%" G_GINT64_FORMAT "\n",
                           MAX(m->ping_rtt_ms, 0), m->bytes_in, m->bytes_out, m->buffered,
                           m->buffered_peak, m->last_input, m->last_output);
  }
  g_string_append_c(out, '\n');
}

UsherAdminRunResult
usher_admin_cmd_run(UsherDirector *d, UsherNow now, guint64 op, const UsherAdminCmd *cmd,
                    GString *out)
{
  switch (cmd->type) {
  case USHER_ADMIN_CMD_HOST_LIST:
    format_host_list(d, out);
    return USHER_ADMIN_RUN_REPLIED;
  case USHER_ADMIN_CMD_HOST_LIST_REMOVED:
    format_removed(d, out);
    return USHER_ADMIN_RUN_REPLIED;
  case USHER_ADMIN_CMD_USER_LOOKUP:
    format_user_lookup(d, now, cmd, out);
    return USHER_ADMIN_RUN_REPLIED;
  case USHER_ADMIN_CMD_USER_LIST:
    format_user_list(d, cmd, out);
    return USHER_ADMIN_RUN_REPLIED;
  case USHER_ADMIN_CMD_DIRECTOR_LIST:
    format_director_list(d, now, out);
    return USHER_ADMIN_RUN_REPLIED;
  case USHER_ADMIN_CMD_HOST_SET:
    usher_director_admin_host_set(d, now, op, &cmd->ip, cmd->tag, cmd->vhost_count);
    return USHER_ADMIN_RUN_PENDING;
  case USHER_ADMIN_CMD_HOST_UPDATE:
    usher_director_admin_host_update(d, now, op, &cmd->ip, (guint)cmd->vhost_count);
    return USHER_ADMIN_RUN_PENDING;
  case USHER_ADMIN_CMD_HOST_UP:
  case USHER_ADMIN_CMD_HOST_DOWN:
    usher_director_admin_host_set_down(d, now, op, &cmd->ip,
                                       cmd->type == USHER_ADMIN_CMD_HOST_DOWN);
    return USHER_ADMIN_RUN_PENDING;
  case USHER_ADMIN_CMD_HOST_REMOVE:
    usher_director_admin_host_remove(d, now, op, &cmd->ip);
    return USHER_ADMIN_RUN_PENDING;
  case USHER_ADMIN_CMD_HOST_FLUSH:
    usher_director_admin_host_flush(d, now, op, cmd->has_ip ? &cmd->ip : NULL);
    return USHER_ADMIN_RUN_PENDING;
  case USHER_ADMIN_CMD_HOST_RESET_USERS:
    usher_director_admin_host_reset_users(d, now, op, cmd->has_ip ? &cmd->ip : NULL,
                                          cmd->max_moves);
    return USHER_ADMIN_RUN_PENDING;
  case USHER_ADMIN_CMD_USER_MOVE:
    usher_director_admin_user_move(d, now, op, usher_admin_cmd_user_hash(d, cmd), &cmd->ip);
    return USHER_ADMIN_RUN_PENDING;
  case USHER_ADMIN_CMD_USER_KICK:
    usher_director_admin_user_kick(d, now, op, NULL, cmd->user, cmd->nowait);
    return USHER_ADMIN_RUN_PENDING;
  case USHER_ADMIN_CMD_USER_KICK_ALT:
    usher_director_admin_user_kick(d, now, op, cmd->field, cmd->value, cmd->nowait);
    return USHER_ADMIN_RUN_PENDING;
  case USHER_ADMIN_CMD_DIRECTOR_ADD:
    usher_director_admin_director_add(d, now, op, &cmd->ip, cmd->port);
    return USHER_ADMIN_RUN_PENDING;
  case USHER_ADMIN_CMD_DIRECTOR_REMOVE:
    usher_director_admin_director_remove(d, now, op, &cmd->ip, cmd->port);
    return USHER_ADMIN_RUN_PENDING;
  case USHER_ADMIN_CMD_USHER_STATS:
  case USHER_ADMIN_CMD_USHER_RING:
  case USHER_ADMIN_CMD_USHER_EXPLAIN:
  case USHER_ADMIN_CMD_USHER_SESSIONS:
  case USHER_ADMIN_CMD_USHER_HEALTH:
    return USHER_ADMIN_RUN_EXTENSION;
  }
  g_assert_not_reached();
}

/* director-admin.c - admin operations (Dovecot's director-admin commands, spec section 6). */
#include "libcore/director-private.h"

#include <string.h>

#define MSG_INIT(msg, t) usher_ring_msg_init(&(msg), USHER_RING_MSG_##t)

typedef enum {
  ADMIN_HOST_SET,
  ADMIN_HOST_UPDATE,
  ADMIN_HOST_UPDOWN,
  ADMIN_HOST_REMOVE,
  ADMIN_HOST_FLUSH,
  ADMIN_RESET_USERS,
  ADMIN_USER_KICK,
  ADMIN_DIRECTOR_ADD,
  ADMIN_DIRECTOR_REMOVE,
} AdminKind;

typedef enum {
  PHASE_PRESYNC,  /* waits for a synced ring before it runs */
  PHASE_POSTSYNC, /* ran; replies when the ring is synced again */
  PHASE_RUNNING,  /* reset-users moving users, or a kick waiting for a free slot */
} AdminPhase;

struct AdminOp {
  guint64 op;
  AdminKind kind;
  AdminPhase phase;
  gint64 deadline_us;
  gboolean has_ip;
  UsherIp ip;
  gboolean has_tag;
  char *tag;
  gint vhosts;
  gboolean down;
  guint16 port;
  char *field, *value;
  gboolean nowait;
  /* reset-users */
  guint max_moves;
  GArray *hosts; /* UsherIp, in IP order */
  guint host_idx;
  GArray *users; /* TagHash: the current host's users, oldest first */
  guint user_idx;
  guint moved;
  gboolean users_killed; /* some users of the current host had no backend to go to */
};

void
admin_op_free(AdminOp *a)
{
  g_free(a->tag);
  g_free(a->field);
  g_free(a->value);
  if (a->hosts != NULL)
    g_array_unref(a->hosts);
  if (a->users != NULL)
    g_array_unref(a->users);
  g_free(a);
}

static void
reply(UsherDirector *d, guint64 op, const char *text)
{
  UsherEffect e = {.type = USHER_EFFECT_ADMIN_REPLY};
  e.admin.op = op;
  e.admin.text = g_strdup_printf("%s\n", text);
  g_array_append_val(d->effects, e);
}

static AdminOp *
admin_new(UsherDirector *d, UsherNow now, guint64 op, AdminKind kind)
{
  AdminOp *a = g_new0(AdminOp, 1);
  a->op = op;
  a->kind = kind;
  a->phase = PHASE_PRESYNC;
  a->deadline_us = now.mono_us + USHER_ADMIN_SYNC_WAIT_SECS * SEC_US;
  (void)d;
  return a;
}

/* Queues a, unless too many wait already. */
static void
admin_submit(UsherDirector *d, UsherNow now, AdminOp *a)
{
  if (d->admin_ops.length >= USHER_ADMIN_MAX_PENDING) {
    d->stats.admin_refused++;
    reply(d, a->op, "too many admin commands waiting - try again later");
    admin_op_free(a);
    return;
  }
  g_queue_push_tail(&d->admin_ops, a);
  admin_continue(d, now);
}

/* ---- The operations ----------------------------------------------------------------------------- */

/* Runs a host change; returns FALSE if it replied (an error or "nothing to do"). */
static gboolean
run_host_change(UsherDirector *d, UsherNow now, AdminOp *a)
{
  UsherHost *host = usher_host_table_lookup(d->hosts, &a->ip);
  gint64 wall = dir_wall_secs(now);
  switch (a->kind) {
  case ADMIN_HOST_SET:
  case ADMIN_HOST_UPDATE:
    if (a->vhosts > USHER_VHOST_MAX_ADMIN) {
      reply(d, a->op, "vhost count too large");
      return FALSE;
    }
    if (host == NULL && a->kind == ADMIN_HOST_UPDATE) {
      reply(d, a->op, "NOTFOUND");
      return FALSE;
    }
    if (host != NULL && a->has_tag && a->tag[0] != '\0' && strcmp(host->tag->name, a->tag) != 0) {
      reply(d, a->op, "host tag can't be changed");
      return FALSE;
    }
    if (host != NULL && host->desynced) {
      reply(d, a->op, "host is already being updated - try again later");
      return FALSE;
    }
    if (host == NULL) {
      const char *tag = a->has_tag ? a->tag : "";
      if (usher_host_table_find_tag(d->hosts, tag) == NULL &&
          usher_host_table_n_tags(d->hosts) >= USHER_TAGS_MAX) {
        d->stats.tags_refused++;
        reply(d, a->op, "too many tags");
        return FALSE;
      }
      host = usher_host_table_add(d->hosts, &a->ip, tag, USHER_VHOST_DEFAULT, NULL);
      if (host == NULL) {
        reply(d, a->op, "too many backends");
        return FALSE;
      }
    }
    if (a->vhosts >= 0)
      usher_host_table_set_vhost_count(d->hosts, host, (guint)a->vhosts);
    break;
  case ADMIN_HOST_UPDOWN:
    if (host == NULL) {
      reply(d, a->op, "NOTFOUND");
      return FALSE;
    }
    if (host->down == a->down) {
      reply(d, a->op, "OK");
      return FALSE;
    }
    if (host->desynced) {
      reply(d, a->op, "host is already being updated - try again later");
      return FALSE;
    }
    usher_host_table_set_down(d->hosts, host, a->down, wall);
    break;
  case ADMIN_HOST_REMOVE:
    if (host == NULL) {
      reply(d, a->op, "NOTFOUND");
      return FALSE;
    }
    users_remove_host(d, now, d->self, NULL, host);
    dir_state_changed(d, now);
    return TRUE;
  case ADMIN_HOST_FLUSH:
    if (!a->has_ip) {
      dir_log(d, G_LOG_LEVEL_WARNING,
              "flushing every backend's users without kicking them: sessions may briefly run on "
              "two backends");
      for (guint i = 0; i < usher_host_table_n_hosts(d->hosts); i++)
        users_flush_host(d, now, d->self, NULL, usher_host_table_nth(d->hosts, i));
      reply(d, a->op, "OK");
      return FALSE;
    }
    if (host == NULL) {
      reply(d, a->op, "NOTFOUND");
      return FALSE;
    }
    users_flush_host(d, now, d->self, NULL, host);
    return TRUE;
  default:
    g_assert_not_reached();
  }
  users_update_host(d, now, d->self, NULL, host);
  dir_state_changed(d, now);
  return TRUE;
}

/* Moves users of the reset's current host; FALSE when every move has started. */
static gboolean
run_reset(UsherDirector *d, UsherNow now, AdminOp *a)
{
  guint max = a->max_moves != 0 ? a->max_moves : d->max_parallel_moves;
  while (a->host_idx < a->hosts->len) {
    UsherHost *host =
      usher_host_table_lookup(d->hosts, &g_array_index(a->hosts, UsherIp, a->host_idx));
    if (host == NULL) {
      a->host_idx++;
      g_clear_pointer(&a->users, g_array_unref);
      continue;
    }
    if (a->users == NULL) {
      a->users = g_array_new(FALSE, FALSE, sizeof(TagHash));
      a->user_idx = 0;
      UsherTag *tag = host->tag;
      for (UsherUser *u = usher_user_dir_oldest(tag->users); u != NULL;
           u = usher_user_dir_next(tag->users, u)) {
        if (u->host == host->id) {
          TagHash th = {tag, u->hash};
          g_array_append_val(a->users, th);
        }
      }
    }
    while (a->user_idx < a->users->len) {
      if (d->users_moving_count >= max)
        return TRUE; /* resumes when moves finish */
      TagHash th = g_array_index(a->users, TagHash, a->user_idx++);
      UsherUser *u = usher_user_dir_lookup(th.tag->users, th.hash);
      if (u == NULL || u->host != host->id)
        continue;
      UsherHost *hashed = usher_tag_place(d->hosts, th.tag, th.hash);
      if (hashed == host)
        continue;
      if (hashed != NULL) {
        users_move(d, now, d->self, NULL, th.hash, hashed);
      } else {
        /* No usable backend left in this tag: kick the user's sessions instead. */
        users_kill(d, now, d->self, th.tag, u, host, TRUE);
        a->users_killed = TRUE;
      }
      a->moved++;
    }
    /* Users that could only be kicked (no usable backend) are dropped ring-wide once their
     * kicks are out; users already on their hashed backend keep their entries. */
    if (a->users_killed)
      users_flush_host(d, now, d->self, NULL, host);
    a->users_killed = FALSE;
    a->host_idx++;
    g_clear_pointer(&a->users, g_array_unref);
  }
  dir_log(d, G_LOG_LEVEL_INFO, "flush: moved %u users from %u backends", a->moved,
          a->hosts->len);
  return FALSE;
}

/* Runs a (ripe) operation. Returns TRUE if it stays queued. */
static gboolean
admin_run(UsherDirector *d, UsherNow now, AdminOp *a)
{
  switch (a->kind) {
  case ADMIN_HOST_SET:
  case ADMIN_HOST_UPDATE:
  case ADMIN_HOST_UPDOWN:
  case ADMIN_HOST_REMOVE:
  case ADMIN_HOST_FLUSH:
    if (!run_host_change(d, now, a))
      return FALSE;
    break;
  case ADMIN_RESET_USERS:
    a->phase = PHASE_RUNNING;
    if (a->hosts == NULL) {
      a->hosts = g_array_new(FALSE, FALSE, sizeof(UsherIp));
      for (guint i = 0; i < usher_host_table_n_hosts(d->hosts); i++) {
        UsherHost *h = usher_host_table_nth(d->hosts, i);
        if (!a->has_ip || usher_ip_equal(&h->ip, &a->ip))
          g_array_append_val(a->hosts, h->ip);
      }
      if (a->has_ip && a->hosts->len == 0) {
        reply(d, a->op, "NOTFOUND");
        return FALSE;
      }
    }
    d->sync_frozen++;
    gboolean more = run_reset(d, now, a);
    d->sync_frozen--;
    if (d->sync_frozen == 0 && d->sync_pending)
      dir_sync(d, now);
    if (more)
      return TRUE;
    reply(d, a->op, "OK");
    return FALSE;
  case ADMIN_USER_KICK:
    /* Only kicks started by admin operations here take slots: kicks that arrive from the ring
     * are not ours to limit, and one that is never reported done frees its slot after
     * USHER_KICK_TIMEOUT_SECS. A kick waiting for a slot gives up after
     * USHER_ADMIN_SYNC_WAIT_SECS with TRYAGAIN (admin_timers). */
    if (d->admin_kicks_running >= d->max_parallel_kicks) {
      if (a->nowait) {
        reply(d, a->op, "TRYAGAIN");
        return FALSE;
      }
      a->phase = PHASE_RUNNING;
      return TRUE;
    }
    if (a->field != NULL)
      users_kick_alt(d, now, d->self, NULL, a->field, a->value, TRUE);
    else
      users_kick_name(d, now, d->self, NULL, a->value, TRUE);
    reply(d, a->op, "OK");
    return FALSE;
  case ADMIN_DIRECTOR_ADD: {
    guint16 port = a->port != 0 ? a->port : d->self->addr.port;
    Member *m = dir_member_lookup(d, &a->ip, port);
    if (m == NULL) {
      m = dir_member_get(d, &a->ip, port);
      if (m == NULL) {
        reply(d, a->op, "too many directors");
        return FALSE;
      }
      d->ring_change_counter++;
      UsherRingMsg msg;
      MSG_INIT(msg, DIRECTOR);
      msg.director = m->addr;
      flood(d, d->self, 0, &msg);
    }
    reply(d, a->op, "OK");
    return FALSE;
  }
  case ADMIN_DIRECTOR_REMOVE: {
    Member *m = NULL;
    for (guint i = 0; i < d->members->len && m == NULL; i++) {
      Member *x = g_ptr_array_index(d->members, i);
      if (usher_ip_equal(&x->addr.ip, &a->ip) && (a->port == 0 || x->addr.port == a->port) &&
          !x->removed)
        m = x;
    }
    if (m == NULL) {
      reply(d, a->op, "NOTFOUND");
      return FALSE;
    }
    dir_remove_member(d, now, d->self, NULL, m);
    break;
  }
  }
  /* The change travels the ring: confirm when the ring is synced again. */
  if (d->left == NULL && d->right == NULL) {
    reply(d, a->op, "OK");
    return FALSE;
  }
  a->phase = PHASE_POSTSYNC;
  a->deadline_us = now.mono_us + USHER_ADMIN_SYNC_WAIT_SECS * SEC_US;
  return TRUE;
}

void
admin_continue(UsherDirector *d, UsherNow now)
{
  if (d->admin_running) {
    d->admin_again = TRUE;
    return;
  }
  d->admin_running = TRUE;
  do {
    d->admin_again = FALSE;
    GList *l = d->admin_ops.head;
    while (l != NULL) {
      GList *next = l->next;
      AdminOp *a = l->data;
      gboolean keep = TRUE;
      switch (a->phase) {
      case PHASE_PRESYNC:
        if (d->ring_synced || a->kind == ADMIN_USER_KICK || a->kind == ADMIN_RESET_USERS)
          keep = admin_run(d, now, a);
        break;
      case PHASE_POSTSYNC:
        if (d->ring_synced) {
          reply(d, a->op, "OK");
          keep = FALSE;
        }
        break;
      case PHASE_RUNNING:
        keep = admin_run(d, now, a);
        break;
      }
      if (!keep) {
        g_queue_delete_link(&d->admin_ops, l);
        admin_op_free(a);
      }
      l = next;
    }
  } while (d->admin_again);
  d->admin_running = FALSE;
}

gint64
admin_next_deadline(UsherDirector *d)
{
  gint64 t = 0;
  for (GList *l = d->admin_ops.head; l != NULL; l = l->next) {
    AdminOp *a = l->data;
    if (a->phase == PHASE_RUNNING && a->kind != ADMIN_USER_KICK)
      continue; /* a flush: its moves end by their own timeouts, so it always progresses */
    if (t == 0 || a->deadline_us < t)
      t = a->deadline_us;
  }
  return t;
}

void
admin_timers(UsherDirector *d, UsherNow now)
{
  GList *l = d->admin_ops.head;
  while (l != NULL) {
    GList *next = l->next;
    AdminOp *a = l->data;
    if (a->phase == PHASE_RUNNING && a->kind == ADMIN_USER_KICK &&
        a->deadline_us <= now.mono_us) {
      /* No kick slot came free in time. */
      reply(d, a->op, "TRYAGAIN");
      g_queue_delete_link(&d->admin_ops, l);
      admin_op_free(a);
    } else if (a->phase != PHASE_RUNNING && a->deadline_us <= now.mono_us) {
      /* Pre-sync: nothing was changed. Post-sync: the change was made and is on its way. */
      reply(d, a->op, "Ring sync timed out");
      g_queue_delete_link(&d->admin_ops, l);
      admin_op_free(a);
    }
    l = next;
  }
}

/* ---- Public entry points ----------------------------------------------------------------------- */

void
usher_director_admin_host_set(UsherDirector *d, UsherNow now, guint64 op, const UsherIp *ip,
                              const char *tag, gint vhost_count)
{
  dir_enter(d, now);
  AdminOp *a = admin_new(d, now, op, ADMIN_HOST_SET);
  a->has_ip = TRUE;
  a->ip = *ip;
  a->has_tag = tag != NULL;
  a->tag = g_strdup(tag);
  a->vhosts = vhost_count;
  admin_submit(d, now, a);
}

void
usher_director_admin_host_update(UsherDirector *d, UsherNow now, guint64 op, const UsherIp *ip,
                                 guint vhost_count)
{
  dir_enter(d, now);
  AdminOp *a = admin_new(d, now, op, ADMIN_HOST_UPDATE);
  a->has_ip = TRUE;
  a->ip = *ip;
  a->vhosts = (gint)MIN(vhost_count, (guint)G_MAXINT);
  admin_submit(d, now, a);
}

void
usher_director_admin_host_set_down(UsherDirector *d, UsherNow now, guint64 op, const UsherIp *ip,
                                   gboolean down)
{
  dir_enter(d, now);
  AdminOp *a = admin_new(d, now, op, ADMIN_HOST_UPDOWN);
  a->has_ip = TRUE;
  a->ip = *ip;
  a->down = down;
  admin_submit(d, now, a);
}

void
usher_director_admin_host_remove(UsherDirector *d, UsherNow now, guint64 op, const UsherIp *ip)
{
  dir_enter(d, now);
  AdminOp *a = admin_new(d, now, op, ADMIN_HOST_REMOVE);
  a->has_ip = TRUE;
  a->ip = *ip;
  admin_submit(d, now, a);
}

void
usher_director_admin_host_flush(UsherDirector *d, UsherNow now, guint64 op, const UsherIp *ip)
{
  dir_enter(d, now);
  AdminOp *a = admin_new(d, now, op, ADMIN_HOST_FLUSH);
  a->has_ip = ip != NULL;
  if (ip != NULL)
    a->ip = *ip;
  if (ip == NULL) {
    /* Flushing everything does not wait for the ring (Dovecot replies OK at once). */
    admin_run(d, now, a);
    admin_op_free(a);
    return;
  }
  admin_submit(d, now, a);
}

void
usher_director_admin_host_reset_users(UsherDirector *d, UsherNow now, guint64 op,
                                      const UsherIp *ip, guint max_moves)
{
  dir_enter(d, now);
  AdminOp *a = admin_new(d, now, op, ADMIN_RESET_USERS);
  a->has_ip = ip != NULL;
  if (ip != NULL)
    a->ip = *ip;
  a->max_moves = max_moves;
  admin_submit(d, now, a);
}

void
usher_director_admin_user_move(UsherDirector *d, UsherNow now, guint64 op, guint32 user_hash,
                               const UsherIp *ip)
{
  dir_enter(d, now);
  UsherHost *host = usher_host_table_lookup(d->hosts, ip);
  if (host == NULL) {
    reply(d, op, "NOTFOUND");
    return;
  }
  if (user_hash == 0)
    user_hash = 1; /* Dovecot never uses hash 0 */
  UsherUser *u = usher_user_dir_lookup(host->tag->users, user_hash);
  if (u != NULL && u->kill_state != USHER_KILL_NONE) {
    reply(d, op, "TRYAGAIN");
    return;
  }
  d->sync_frozen++;
  if (u != NULL && u->host == host->id) {
    gint64 wall = dir_wall_secs(now);
    usher_user_dir_refresh(host->tag->users, u, wall, wall);
    users_update_user(d, d->self, host->tag, u);
  } else {
    users_move(d, now, d->self, NULL, user_hash, host);
  }
  d->sync_frozen--;
  if (d->sync_frozen == 0 && d->sync_pending)
    dir_sync(d, now);
  reply(d, op, "OK");
}

void
usher_director_admin_user_kick(UsherDirector *d, UsherNow now, guint64 op, const char *field,
                               const char *value, gboolean nowait)
{
  dir_enter(d, now);
  AdminOp *a = admin_new(d, now, op, ADMIN_USER_KICK);
  a->field = g_strdup(field);
  a->value = g_strdup(value);
  a->nowait = nowait;
  admin_submit(d, now, a);
}

void
usher_director_admin_director_add(UsherDirector *d, UsherNow now, guint64 op, const UsherIp *ip,
                                  guint16 port)
{
  dir_enter(d, now);
  AdminOp *a = admin_new(d, now, op, ADMIN_DIRECTOR_ADD);
  a->ip = *ip;
  a->port = port;
  admin_submit(d, now, a);
}

void
usher_director_admin_director_remove(UsherDirector *d, UsherNow now, guint64 op,
                                     const UsherIp *ip, guint16 port)
{
  dir_enter(d, now);
  AdminOp *a = admin_new(d, now, op, ADMIN_DIRECTOR_REMOVE);
  a->ip = *ip;
  a->port = port;
  admin_submit(d, now, a);
}

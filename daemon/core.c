/* core.c - the core thread's side of usherd: the director, its clocks, its one timer, and the
 * dispatch of its effects to the rest of the daemon. */


#include "daemon/proxy.h"
#include "daemon/usherd.h"

#include <sys/random.h>

UsherNow
usherd_now(void)
{
  /* g_get_monotonic_time() is CLOCK_MONOTONIC in microseconds, the clock GSource ready times
   * use too; it is always > 0 and never goes back, as the core's time contract asks. */
  UsherNow now = {g_get_monotonic_time(), g_get_real_time()};
  now.wall_us = CLAMP(now.wall_us, 0, USHER_WALL_US_MAX);
  return now;
}

static guint64
random_seed(void)
{
  guint64 seed = 0;
  ssize_t n = getrandom(&seed, sizeof(seed), 0);
  if (n != (ssize_t)sizeof(seed)) {
    /* getrandom only fails before the kernel's pool is ready, on very old kernels; the seed
     * drives no security decision, so the clock is an acceptable fallback. */
    seed = (guint64)g_get_real_time() ^ ((guint64)getpid() << 32);
  }
  return seed;
}

/* ---- The timer ------------------------------------------------------------------------------------- */

static gboolean
timer_dispatch(GSource *source, GSourceFunc callback, gpointer data)
{
  g_source_set_ready_time(source, -1);
  return callback(data);
}

static GSourceFuncs timer_funcs = {.dispatch = timer_dispatch};

static gboolean
on_timer(gpointer data)
{
  Usherd *u = data;
  usher_director_on_deadline(u->director, usherd_now());
  usherd_core_after_call(u);
  return G_SOURCE_CONTINUE;
}

/* ---- Effects --------------------------------------------------------------------------------------- */

static void
log_effect(const UsherEffect *e)
{
  GLogLevelFlags level = e->log.level;
  /* G_LOG_LEVEL_ERROR would abort the daemon: the core uses it for "this should not happen",
   * which is a critical message here, not a crash. */
  if (level & G_LOG_LEVEL_ERROR)
    level = G_LOG_LEVEL_CRITICAL;
  g_log_structured(G_LOG_DOMAIN, level, "MESSAGE", "%s", e->log.message);
}

static void
handle_effect(gpointer data, UsherEffect *e)
{
  Usherd *u = data;
  switch (e->type) {
  case USHER_EFFECT_SEND:
    ring_links_send(u->ring, e->send.conn, e->send.data, e->send.len);
    break;
  case USHER_EFFECT_CONNECT:
    ring_links_connect(u->ring, e->connect.conn, &e->connect.addr);
    break;
  case USHER_EFFECT_DISCONNECT:
    ring_links_disconnect(u->ring, e->disconnect.conn);
    break;
  case USHER_EFFECT_ADMIN_REPLY:
    if (usherd_reload_owns_op(e->admin.op))
      usherd_reload_reply(u, e->admin.op, e->admin.text);
    else if (u->admin != NULL)
      admin_server_reply(u->admin, e->admin.op, e->admin.text);
    break;
  case USHER_EFFECT_KICK:
    /* The proxy's workers close the matching sessions and report the kick done; without a
     * proxy there is nothing local to disconnect. */
    if (u->proxy != NULL)
      proxy_kick(u->proxy, e);
    else
      usher_director_kick_done(u->director, usherd_now(), e->kick.id);
    break;
  case USHER_EFFECT_FLUSH:
    flush_hook_start(u, e);
    break;
  case USHER_EFFECT_LOGIN_RESULT:
    if (proxy_owns_request(u->proxy, e->login.request))
      proxy_login_result(u->proxy, e);
    else if (u->http != NULL)
      http_server_login_result(u->http, e);
    break;
  case USHER_EFFECT_LOG:
    log_effect(e);
    break;
  case USHER_EFFECT_STATE:
    usherd_notify_status(u);
    break;
  case USHER_EFFECT_PROBE:
    health_probe_start(u, e);
    break;
  }
}

void
usherd_core_after_call(Usherd *u)
{
  usher_driver_drain(u->director, handle_effect, u);
  if (u->proxy != NULL)
    proxy_hosts_check(u->proxy, usher_director_get_hosts(u->director));
  /* The timer only ever moves earlier here: GLib wakes its context on every change of a ready
   * time (an eventfd write and one more loop), and most calls (a login's lookup) move the
   * director's deadline later. A timer that fires early costs one harmless call (the core's
   * contract), after which on_timer sets it exactly. */
  gint64 deadline = usher_director_next_deadline(u->director);
  gint64 armed = g_source_get_ready_time(u->timer);
  if (deadline != USHER_DEADLINE_NEVER && (armed < 0 || deadline < armed))
    g_source_set_ready_time(u->timer, deadline);
}

/* ---- Life cycle ------------------------------------------------------------------------------------ */

gboolean
usherd_core_init(Usherd *u, GError **error)
{
  u->director = usher_director_new(u->config, &u->self, random_seed(), usherd_now(), error);
  if (u->director == NULL)
    return FALSE;
  u->timer = g_source_new(&timer_funcs, sizeof(GSource));
  g_source_set_name(u->timer, "usherd director timer");
  g_source_set_callback(u->timer, on_timer, u, NULL);
  g_source_set_ready_time(u->timer, -1);
  g_source_attach(u->timer, u->context);
  u->flushes = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free, NULL);
  return TRUE;
}

void
usherd_core_start(Usherd *u)
{
  usher_director_start(u->director, usherd_now());
  usherd_core_after_call(u);
}

void
usherd_core_free(Usherd *u)
{
  flush_hooks_free(u);
  health_probes_free(u);
  if (u->timer != NULL) {
    g_source_destroy(u->timer);
    g_source_unref(u->timer);
    u->timer = NULL;
  }
  g_clear_pointer(&u->director, usher_director_free);
  g_clear_pointer(&u->flushes, g_hash_table_unref);
}

/* ---- Address helpers ------------------------------------------------------------------------------- */

gboolean
usherd_ip_from_gaddress(GSocketAddress *address, UsherIp *ip_out)
{
  if (!G_IS_INET_SOCKET_ADDRESS(address))
    return FALSE;
  GInetAddress *inet = g_inet_socket_address_get_address(G_INET_SOCKET_ADDRESS(address));
  g_autofree char *text = g_inet_address_to_string(inet);
  return usher_ip_parse(text, -1, ip_out);
}

GSocketAddress *
usherd_gaddress_from_ip(const UsherIp *ip, guint16 port)
{
  char text[USHER_IP_STRLEN];
  usher_ip_to_string(ip, text);
  return g_inet_socket_address_new_from_string(text, port);
}

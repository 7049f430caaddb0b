/* notify.c - systemd: readiness (Type=notify), STATUS= lines, and the watchdog, through
 * libsystemd's sd_notify. Without NOTIFY_SOCKET (not started by systemd) every call is a no-op. */
#include "daemon/usherd.h"

#include <systemd/sd-daemon.h>

static gboolean
on_watchdog(gpointer data)
{
  (void)data;
  sd_notify(0, "WATCHDOG=1");
  return G_SOURCE_CONTINUE;
}

/* A one-line summary for `systemctl status`. */
static char *
status_line(Usherd *u)
{
  UsherRingInfo ring;
  usher_director_get_ring_info(u->director, &ring);
  return g_strdup_printf("ring %s, %u of %u members linked, %u users, %u backends",
                         !ring.handshaked ? "handshaking"
                         : ring.synced    ? "synced"
                                          : "syncing",
                         ring.n_connections > 0 ? MIN(ring.n_connections, ring.n_members - 1) : 0,
                         ring.n_members > 0 ? ring.n_members - 1 : 0, ring.n_users,
                         usher_host_table_n_hosts(usher_director_get_hosts(u->director)));
}

void
usherd_notify_ready(Usherd *u)
{
  g_autofree char *status = status_line(u);
  g_autofree char *msg = g_strdup_printf("READY=1\nSTATUS=%s", status);
  sd_notify(0, msg);
  u->last_status = g_steal_pointer(&status);
  guint64 usec = 0;
  if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
    u->watchdog = g_timeout_source_new((guint)MAX(usec / 2000, 1));
    g_source_set_callback(u->watchdog, on_watchdog, u, NULL);
    g_source_attach(u->watchdog, u->context);
  }
}

void
usherd_notify_status(Usherd *u)
{
  if (u->last_status == NULL)
    return; /* not ready yet: READY=1 carries the first status */
  g_autofree char *status = status_line(u);
  if (g_strcmp0(status, u->last_status) == 0)
    return;
  g_free(u->last_status);
  u->last_status = g_strdup(status);
  g_autofree char *msg = g_strdup_printf("STATUS=%s", status);
  sd_notify(0, msg);
}

void
usherd_notify_draining(Usherd *u, guint sessions)
{
  /* The drain may take [proxy] shutdown_timeout, and writing the user snapshot follows: systemd
   * is told to wait that long plus 30 s, whatever its TimeoutStopSec (it would kill usherd
   * before the snapshot). */
  guint64 wait_us = ((guint64)u->config->proxy_shutdown_timeout_secs + 30) * G_USEC_PER_SEC;
  g_autofree char *msg = g_strdup_printf(
    "STOPPING=1\nEXTEND_TIMEOUT_USEC=%" G_GUINT64_FORMAT
    "\nSTATUS=stopping: waiting for %u proxied session%s to finish",
    wait_us, sessions, sessions == 1 ? "" : "s");
  sd_notify(0, msg);
  g_clear_pointer(&u->last_status, g_free); /* no more periodic status lines */
}

void
usherd_notify_stopping(Usherd *u)
{
  sd_notify(0, "STOPPING=1\nSTATUS=stopping");
  if (u->watchdog != NULL) {
    g_source_destroy(u->watchdog);
    g_clear_pointer(&u->watchdog, g_source_unref);
  }
  g_clear_pointer(&u->last_status, g_free);
}

void
usherd_notify_reloading(gboolean done)
{
  sd_notify(0, done ? "READY=1" : "RELOADING=1");
}

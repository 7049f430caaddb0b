/* metrics.c - the Prometheus text exposition (format 0.0.4) of everything usherd counts.
 *
 * Names: usher_<counter>_total for every director and daemon counter (the same names usherctl
 * stats shows), gauges for the ring, the directory, each backend and each ring link. Label
 * values are escaped as the format requires (backslash, double quote, newline). */
#include "daemon/usherd.h"
#include "daemon/proxy.h"

#include <string.h>

static void
label_value(GString *out, const char *text)
{
  /* Tags and host names come from ring peers: the format is UTF-8, one bad label would spoil
   * the whole scrape. */
  g_autofree char *valid = g_utf8_validate(text, -1, NULL) ? NULL : g_utf8_make_valid(text, -1);
  const char *v = valid != NULL ? valid : text;
  for (const char *p = v; *p != '\0'; p++) {
    if (*p == '\\' || *p == '"')
      g_string_append_c(out, '\\');
    if (*p == '\n') {
      g_string_append(out, "\\n");
      continue;
    }
    g_string_append_c(out, *p);
  }
}

static void
family(GString *out, const char *name, const char *type, const char *help)
{
  g_string_append_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void
sample(GString *out, const char *name, const char *labels, gint64 value)
{
  g_string_append(out, name);
  if (labels != NULL && labels[0] != '\0')
    g_string_append_printf(out, "{%s}", labels);
  g_string_append_printf(out, " %" G_GINT64_FORMAT "\n", value);
}

static void
gauge(GString *out, const char *name, const char *help, gint64 value)
{
  family(out, name, "gauge", help);
  sample(out, name, NULL, value);
}

static void
counter(GString *out, const char *stat, const char *help, guint64 value)
{
  g_autofree char *name = g_strdup_printf("usher_%s_total", stat);
  family(out, name, "counter", help);
  sample(out, name, NULL, (gint64)value);
}

char *
usherd_metrics_text(Usherd *u)
{
  GString *out = g_string_sized_new(16384);
  UsherNow now = usherd_now();
  UsherRingInfo ring;
  usher_director_get_ring_info(u->director, &ring);

  gauge(out, "usher_start_time_seconds", "When this usherd started (UNIX time).",
        u->started_wall_us / G_USEC_PER_SEC);
  gauge(out, "usher_ring_handshaked", "1 once this director has completed a ring.",
        ring.handshaked);
  gauge(out, "usher_ring_synced", "1 while the ring is synced (no change travelling).",
        ring.synced);
  gauge(out, "usher_ring_unsynced_seconds", "How long the ring has been unsynced (0 if synced).",
        ring.synced ? 0 : (now.mono_us - ring.unsynced_since_us) / G_USEC_PER_SEC);
  gauge(out, "usher_ring_alone", "1 if this director declared itself the only reachable one.",
        ring.alone);
  gauge(out, "usher_ring_members", "Directors in the ring, this one included.", ring.n_members);
  gauge(out, "usher_ring_connections", "Open ring connections.", ring.n_connections);
  gauge(out, "usher_ring_min_version", "The lowest ring protocol minor version in the ring.",
        ring.min_version);
  gauge(out, "usher_users", "User directory entries (every tag).", ring.n_users);
  gauge(out, "usher_moving_users", "Users being moved.", ring.moving_users);
  gauge(out, "usher_pending_login_requests", "Login and lookup requests waiting for the ring.",
        ring.pending_requests);
  gauge(out, "usher_kicks_running", "Kicks not reported done yet.", ring.kicks_running);
  gauge(out, "usher_admin_kicks_running", "Of those, kicks started by admin operations.",
        ring.admin_kicks_running);
  gauge(out, "usher_pending_admin_operations", "Admin operations waiting (ring, kick slots).",
        ring.pending_admin_ops);

  const UsherDirectorStats *ds = usher_director_get_stats(u->director);
#define STAT(name) counter(out, #name, "Director counter " #name " (usherctl stats).", ds->name);
  DIRECTOR_STATS(STAT)
#undef STAT
#define STAT(name) counter(out, #name, "Daemon counter " #name " (usherctl stats).", u->stats.name);
  DAEMON_STATS(STAT)
#undef STAT
  if (u->proxy != NULL) {
    ProxyStats ps;
    proxy_get_stats(u->proxy, &ps);
#define STAT(name)                                                                                 \
  if (g_str_has_suffix(#name, "_now"))                                                             \
    gauge(out, "usher_proxy_" #name, "Proxy gauge " #name " (usherctl stats).", (gint64)ps.name); \
  else                                                                                             \
    counter(out, "proxy_" #name, "Proxy counter " #name " (usherctl stats).", ps.name);
    PROXY_STATS(STAT)
#undef STAT
  }

  /* Per backend. */
  g_autoptr(GArray) hosts = usher_director_list_hosts(u->director);
  static const struct {
    const char *name, *help;
  } backend_families[] = {
    {"usher_backend_users", "Users assigned to the backend."},
    {"usher_backend_vhosts", "The backend's vhost count (its weight)."},
    {"usher_backend_up", "1 if the backend is up, 0 if down."},
    {"usher_backend_state_changed_seconds", "When the backend last went up or down (UNIX time)."},
  };
  for (gsize f = 0; f < G_N_ELEMENTS(backend_families); f++) {
    family(out, backend_families[f].name, "gauge", backend_families[f].help);
    for (guint i = 0; i < hosts->len; i++) {
      const UsherHostInfo *h = &g_array_index(hosts, UsherHostInfo, i);
      g_autoptr(GString) labels = g_string_new("backend=\"");
      label_value(labels, h->ip_str);
      g_string_append(labels, "\",tag=\"");
      label_value(labels, h->tag);
      g_string_append(labels, "\",hostname=\"");
      label_value(labels, h->hostname != NULL ? h->hostname : "");
      g_string_append_c(labels, '"');
      gint64 v = f == 0 ? h->user_count
                 : f == 1 ? h->vhost_count
                 : f == 2 ? !h->down
                          : h->last_updown_change;
      sample(out, backend_families[f].name, labels->str, v);
    }
  }

  /* Health checks: this director's view and the votes it has heard, per backend. */
  UsherHealthReport rep;
  usher_director_get_health(u->director, now, &rep);
  gauge(out, "usher_health_enabled", "1 if this director probes backends ([health] enabled).",
        rep.enabled);
  gauge(out, "usher_health_live_voters",
        "Directors whose health votes are fresh, this one included.", rep.live_voters);
  gauge(out, "usher_health_quorum", "Live voters needed before any health decision.", rep.quorum);
  gauge(out, "usher_health_have_quorum", "1 if health decisions are possible now.",
        rep.have_quorum);
  static const struct {
    const char *name, *help;
  } health_families[] = {
      {"usher_backend_health_failing", "1 if this director's own probes see the backend failing."},
      {"usher_backend_health_votes_failing", "Live directors that see the backend failing."},
      {"usher_backend_health_votes_ok", "Live directors that see the backend healthy."},
      {"usher_backend_health_down", "1 if a health decision took the backend down."},
  };
  for (gsize f = 0; f < G_N_ELEMENTS(health_families); f++) {
    family(out, health_families[f].name, "gauge", health_families[f].help);
    for (guint i = 0; i < rep.backends->len; i++) {
      const UsherHealthInfo *h = &g_array_index(rep.backends, UsherHealthInfo, i);
      g_autoptr(GString) labels = g_string_new("backend=\"");
      label_value(labels, h->ip_str);
      g_string_append_c(labels, '"');
      gint64 v = f == 0   ? (gint64)h->failing
                 : f == 1 ? (gint64)h->votes_failing
                 : f == 2 ? (gint64)h->votes_ok
                          : (gint64)h->health_down;
      sample(out, health_families[f].name, labels->str, v);
    }
  }
  usher_health_report_clear(&rep);

  if (u->proxy != NULL) {
    g_autoptr(GHashTable) per = proxy_sessions_per_backend(u->proxy);
    family(out, "usher_backend_sessions", "gauge",
           "Sessions this usherd's proxy has logged in on the backend now.");
    for (guint i = 0; i < hosts->len; i++) {
      const UsherHostInfo *h = &g_array_index(hosts, UsherHostInfo, i);
      g_autoptr(GString) labels = g_string_new("backend=\"");
      label_value(labels, h->ip_str);
      g_string_append_c(labels, '"');
      sample(out, "usher_backend_sessions", labels->str,
             (gint64)GPOINTER_TO_UINT(g_hash_table_lookup(per, h->ip_str)));
    }
  }

  /* Per ring link. */
  g_autoptr(GArray) members = usher_director_list_members(u->director);
  static const struct {
    const char *name, *type, *help;
  } link_families[] = {
    {"usher_ring_link_bytes_in_total", "counter", "Bytes received on the ring link."},
    {"usher_ring_link_bytes_out_total", "counter", "Bytes sent on the ring link."},
    {"usher_ring_link_buffered_bytes", "gauge", "Output waiting to be written on the link."},
    {"usher_ring_link_ping_milliseconds", "gauge", "Round trip of the link's latest PING."},
    {"usher_ring_link_synced", "gauge", "1 if the link is handshaked and synced."},
  };
  static const char *const roles[] = {"none", "left", "right", "in", "out"};
  for (gsize f = 0; f < G_N_ELEMENTS(link_families); f++) {
    family(out, link_families[f].name, link_families[f].type, link_families[f].help);
    for (guint i = 0; i < members->len; i++) {
      const UsherMemberInfo *m = &g_array_index(members, UsherMemberInfo, i);
      if (m->role == USHER_LINK_NONE)
        continue;
      char ip[USHER_IP_STRLEN];
      g_autofree char *labels =
        m->has_addr ? g_strdup_printf("peer=\"%s:%u\",link=\"%s\",conn=\"%u\"",
                                      usher_ip_to_string(&m->addr.ip, ip), m->addr.port,
                                      roles[m->role], m->conn)
                    : g_strdup_printf("peer=\"\",link=\"%s\",conn=\"%u\"", roles[m->role], m->conn);
      gint64 v = f == 0 ? (gint64)m->bytes_in
                 : f == 1 ? (gint64)m->bytes_out
                 : f == 2 ? (gint64)m->buffered
                 : f == 3 ? MAX(m->ping_rtt_ms, 0)
                          : m->handshaked && m->synced;
      sample(out, link_families[f].name, labels, v);
    }
  }
  return g_string_free(out, FALSE);
}

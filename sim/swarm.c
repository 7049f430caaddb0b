/* swarm.c - the random scenarios "ushersim swarm" runs: one per seed. */
#include "sim/sim-swarm.h"

#include "libcore/rng.h"

/* ---- Random scenarios ------------------------------------------------------------------------- */

static guint
pick(UsherRng *r, guint lo, guint hi)
{
  return (guint)usher_rng_range(r, lo, hi);
}

/* The end of a fault that starts at at and lasts lo..hi seconds, but ends by last. (A macro MIN
 * around pick() would draw twice.) */
static gint64
fault_end(UsherRng *r, gint64 at, guint lo, guint hi, gint64 last)
{
  gint64 end = at + pick(r, lo, hi);
  return MIN(end, last);
}

static void
json_dur(GString *s, gint64 secs)
{
  g_string_append_printf(s, "\"%" G_GINT64_FORMAT "s\"", secs);
}

/* A scenario in JSON text, drawn from the seed. Faults always end well before the end of the run,
 * so the final convergence check is meaningful. */
char *
sim_swarm_scenario(guint64 seed)
{
  UsherRng r;
  usher_rng_seed(&r, seed ^ G_GUINT64_CONSTANT(0x5157a7d5eed5eed5));
  guint directors = pick(&r, 2, 6), backends = pick(&r, 2, 6);
  guint users = pick(&r, 50, 3000);
  gint64 duration = pick(&r, 20, 40) * 60;
  guint expire = pick(&r, 2, 15) * 60;
  GString *s = g_string_new("{\n");
  g_string_append_printf(s, "  \"name\": \"swarm-%" G_GUINT64_FORMAT "\",\n", seed);
  g_string_append_printf(s, "  \"seed\": %" G_GUINT64_FORMAT ",\n  \"duration\": ", seed);
  json_dur(s, duration);
  g_string_append(s, ",\n  \"convergence_budget\": \"5m\",\n  \"max_events\": 50000000,\n");
  /* The cluster and the network are written after the events are drawn: their driver-fault parts
   * are drawn last. */
  GString *cluster = g_string_new(NULL);
  g_string_append_printf(cluster, "\"directors\": %u, \"backends\": [", directors);
  for (guint b = 0; b < backends; b++)
    g_string_append_printf(cluster, "%s{\"ip\": \"10.0.2.%u\", \"vhosts\": %u}", b > 0 ? ", " : "", b + 1,
                           b > 0 && pick(&r, 0, 9) == 0 ? 0 : pick(&r, 20, 300));
  /* Every draw is its own statement: C leaves the order of function arguments open, and the
   * same seed must give the same scenario whatever the compiler. */
  guint kick_delay = pick(&r, 0, 3);
  guint max_moves = pick(&r, 1, 50);
  GString *settings = g_string_new(NULL);
  g_string_append_printf(settings, "\"user_expire\": \"%us\", \"user_kick_delay\": \"%us\", "
                                   "\"max_parallel_moves\": %u",
                         expire, kick_delay, max_moves);
  guint lat_max = pick(&r, 0, 4) == 0 ? 20000 : 2000;
  GString *network = g_string_new(NULL);
  g_string_append_printf(network, "\"latency\": {\"kind\": \"uniform\", \"min\": \"100us\", "
                                  "\"max\": \"%uus\"}",
                         lat_max);
  guint login_rate = pick(&r, 1, 8);
  guint session_max = pick(&r, 2, 40);
  GString *rest = g_string_new(NULL); /* the workload and the events */
  g_string_append_printf(rest, "  \"workload\": {\"users\": %u, \"logins_per_second\": %u, "
                            "\"session_duration\": {\"kind\": \"log-uniform\", \"min\": \"5s\", "
                            "\"max\": \"%um\"}, \"protocols\": {\"imap\": 70, \"pop3\": 10, "
                            "\"lmtp\": 20}},\n",
                         users, login_rate, session_max);
  g_string_append(rest, "  \"events\": [");
  guint n_events = pick(&r, 1, 7);
  gint64 last = duration - 8 * 60; /* faults end before this */
  gboolean first = TRUE;
  for (guint e = 0; e < n_events; e++) {
    gint64 at = pick(&r, 120, (guint)MAX(last - 60, 121));
    guint d = pick(&r, 0, directors - 1);
    /* Faults never touch 10.0.2.1, so some backend can always take logins and the final
     * "no pending logins" check means the ring is live, not that no backend was usable. */
    guint host = pick(&r, 2, backends);
    GString *ev = g_string_new(NULL);
    switch (pick(&r, 0, 10)) {
    case 0: { /* partition into two groups, healed later */
      guint64 mask = 0;
      while (mask == 0 || mask == (G_GUINT64_CONSTANT(1) << directors) - 1)
        mask = usher_rng_below(&r, G_GUINT64_CONSTANT(1) << directors);
      g_string_append_printf(ev, "{\"at\": \"%" G_GINT64_FORMAT "s\", \"type\": \"partition\", \"groups\": [[", at);
      gboolean f1 = TRUE, f2 = TRUE;
      GString *other = g_string_new(NULL);
      for (guint i = 0; i < directors; i++) {
        if (mask & (G_GUINT64_CONSTANT(1) << i)) {
          g_string_append_printf(ev, "%s%u", f1 ? "" : ", ", i);
          f1 = FALSE;
        } else {
          g_string_append_printf(other, "%s%u", f2 ? "" : ", ", i);
          f2 = FALSE;
        }
      }
      g_string_append_printf(ev, "], [%s]]}, {\"at\": \"%" G_GINT64_FORMAT "s\", \"type\": \"heal\"}",
                             other->str, fault_end(&r, at, 30, 480, last));
      g_string_free(other, TRUE);
      break;
    }
    case 1: {
      gint64 end = fault_end(&r, at, 10, 300, last);
      g_string_append_printf(ev, "{\"at\": \"%" G_GINT64_FORMAT "s\", \"type\": \"director-crash\", \"director\": %u}, "
                                 "{\"at\": \"%" G_GINT64_FORMAT "s\", \"type\": \"director-restart\", \"director\": %u}",
                             at, d, end, d);
      break;
    }
    case 2: {
      gint64 end = fault_end(&r, at, 10, 600, last);
      guint up_at = pick(&r, 0, directors - 1);
      g_string_append_printf(ev, "{\"at\": \"%" G_GINT64_FORMAT "s\", \"type\": \"host-down\", \"director\": %u, "
                                 "\"host\": \"10.0.2.%u\"}, {\"at\": \"%" G_GINT64_FORMAT "s\", \"type\": \"host-up\", "
                                 "\"director\": %u, \"host\": \"10.0.2.%u\"}",
                             at, d, host, end, up_at, host);
      break;
    }
    case 3:
      g_string_append_printf(ev, "{\"at\": \"%" G_GINT64_FORMAT "s\", \"type\": \"host-vhosts\", \"director\": %u, "
                                 "\"host\": \"10.0.2.%u\", \"vhosts\": %u}",
                             at, d, host, pick(&r, 0, 300));
      break;
    case 4: {
      g_autofree char *target =
        pick(&r, 0, 1) ? g_strdup("") : g_strdup_printf(", \"host\": \"10.0.2.%u\"", host);
      g_string_append_printf(ev, "{\"at\": \"%" G_GINT64_FORMAT "s\", \"type\": \"flush\", \"director\": %u%s, "
                                 "\"max_parallel\": %u}",
                             at, d, target, pick(&r, 1, 100));
      break;
    }
    case 5:
      g_string_append_printf(ev, "{\"at\": \"%" G_GINT64_FORMAT "s\", \"type\": \"move\", \"director\": %u, "
                                 "\"user\": \"user%u@example.com\", \"host\": \"10.0.2.%u\"}",
                             at, d, pick(&r, 1, users), host);
      break;
    case 6:
      g_string_append_printf(ev, "{\"at\": \"%" G_GINT64_FORMAT "s\", \"type\": \"kick\", \"director\": %u, "
                                 "\"user\": \"user%u@example.com\"}",
                             at, d, pick(&r, 1, users));
      break;
    case 7: {
      const char *sign = pick(&r, 0, 1) ? "+" : "-";
      guint step = pick(&r, 1, 60);
      g_string_append_printf(ev, "{\"at\": \"%" G_GINT64_FORMAT "s\", \"type\": \"clock-step\", \"director\": %u, "
                                 "\"step\": \"%s%us\"}",
                             at, d, sign, step);
      break;
    }
    case 8:
      if (directors >= 2) {
        guint a = pick(&r, 0, directors - 1), b = (a + pick(&r, 1, directors - 1)) % directors;
        g_string_append_printf(ev, "{\"at\": \"%" G_GINT64_FORMAT "s\", \"type\": \"link-reset\", \"a\": %u, \"b\": %u}",
                               at, a, b);
      }
      break;
    case 9: {
      gint64 end = fault_end(&r, at, 10, 600, last);
      g_string_append_printf(ev, "{\"at\": \"%" G_GINT64_FORMAT "s\", \"type\": \"backend-fail\", \"host\": \"10.0.2.%u\"}, "
                                 "{\"at\": \"%" G_GINT64_FORMAT "s\", \"type\": \"backend-recover\", \"host\": \"10.0.2.%u\"}",
                             at, host, end, host);
      break;
    }
    default:
      g_string_append_printf(ev, "{\"at\": \"%" G_GINT64_FORMAT "s\", \"type\": \"host-add\", \"director\": %u, "
                                 "\"host\": \"10.0.3.%u\", \"vhosts\": %u}",
                             at, d, e + 1, pick(&r, 1, 200));
      break;
    }
    if (ev->len > 0) {
      g_string_append_printf(rest, "%s\n    %s", first ? "" : ",", ev->str);
      first = FALSE;
    }
    g_string_free(ev, TRUE);
  }
  g_string_append(rest, "\n  ],\n");
  /* Driver faults, drawn after everything above so that a seed draws the same cluster, workload
   * and events as before they existed. Each is on in about one seed in ten, independently; its
   * parameters are drawn whether it is on or not, so the order never changes. */
  GString *driver = g_string_new(NULL);
  /* 1. kicks reported late (log-uniform from 1 ms to 1-90 s) or never (0-50%) */
  gboolean kick_fault = pick(&r, 0, 9) == 0;
  guint kick_max = pick(&r, 1, 90), kick_lost = pick(&r, 0, 50);
  if (kick_fault)
    g_string_append_printf(driver, "%s\"kick_duration\": {\"kind\": \"log-uniform\", \"min\": \"1ms\", "
                                   "\"max\": \"%us\"}, \"kick_lost\": %u",
                           driver->len > 0 ? ", " : "", kick_max, kick_lost);
  /* 2. a flush hook (flush_socket set) that runs 1 ms to 1-30 s, fails (0-40%) or never
   * reports (0-40%) */
  gboolean flush_fault = pick(&r, 0, 9) == 0;
  guint flush_max = pick(&r, 1, 30), flush_failed = pick(&r, 0, 40), flush_lost = pick(&r, 0, 40);
  if (flush_fault) {
    g_string_append(settings, ", \"flush_socket\": \"unix:/run/dovecot/director-flush\"");
    g_string_append_printf(driver, "%s\"flush_duration\": {\"kind\": \"log-uniform\", \"min\": \"1ms\", "
                                   "\"max\": \"%us\"}, \"flush_failed\": %u, \"flush_lost\": %u",
                           driver->len > 0 ? ", " : "", flush_max, flush_failed, flush_lost);
  }
  /* 3. slow links (16k to 1M bytes/s) with small send buffers (96k to 1M, but never below 48
   * bytes a user: the core pauses a handshake only above a fixed 256 KiB, so a buffer that
   * cannot hold a whole handshake overflows on every attempt; see doc/scenarios.md) */
  gboolean slow_links = pick(&r, 0, 9) == 0;
  static const guint bandwidths_k[] = {16, 64, 256, 1024};
  static const guint buffers_k[] = {96, 128, 256, 1024};
  guint bw_k = bandwidths_k[pick(&r, 0, 3)];
  guint buf_k = buffers_k[pick(&r, 0, 3)]; /* (not inside MAX, which would draw twice) */
  buf_k = MAX(buf_k, (users * 48 + 1023) / 1024);
  if (slow_links) {
    g_string_append_printf(network, ", \"bandwidth\": \"%uk\"", bw_k);
    g_string_append_printf(settings, ", \"output_buffer_size\": \"%uk\"", buf_k);
  }
  /* 4. clients that cancel 1-30% of their logins if unanswered after 100 ms to 1-20 s */
  gboolean cancels = pick(&r, 0, 9) == 0;
  guint cancel_pct = pick(&r, 1, 30), cancel_max = pick(&r, 1, 20);
  if (cancels)
    g_string_append_printf(driver, "%s\"login_cancel\": %u, \"login_cancel_after\": {\"kind\": "
                                   "\"uniform\", \"min\": \"100ms\", \"max\": \"%us\"}",
                           driver->len > 0 ? ", " : "", cancel_pct, cancel_max);
  /* 5. health checks (doc/health.md) in about one seed in three, and then in one such seed in
   * two a backend that only some directors cannot reach; drawn last, as the driver faults. */
  gboolean health = pick(&r, 0, 2) == 0;
  guint h_interval = pick(&r, 1, 5), h_fall = pick(&r, 1, 3), h_rise = pick(&r, 1, 3);
  gboolean h_keep = pick(&r, 0, 3) == 0;
  gboolean path_fault = pick(&r, 0, 1) == 0;
  gint64 pf_at = pick(&r, 120, (guint)MAX(last - 60, 121));
  gint64 pf_end = fault_end(&r, pf_at, 10, 600, last);
  guint pf_host = pick(&r, 2, backends);
  guint64 pf_mask = usher_rng_below(&r, G_GUINT64_CONSTANT(1) << directors);
  GString *health_json = g_string_new(NULL);
  if (health) {
    g_string_append_printf(health_json, ", \"health\": {\"enabled\": true, \"interval\": \"%us\", "
                                        "\"fall\": %u, \"rise\": %u, \"down_action\": \"%s\"}",
                           h_interval, h_fall, h_rise, h_keep ? "keep" : "replace");
    if (path_fault && pf_mask != 0) {
      GString *from = g_string_new(NULL);
      for (guint i = 0; i < directors; i++)
        if (pf_mask & (G_GUINT64_CONSTANT(1) << i))
          g_string_append_printf(from, "%s%u", from->len > 0 ? ", " : "", i);
      /* rest ends with "\n  ],\n": put the two events before that. */
      g_string_truncate(rest, rest->len - strlen("\n  ],\n"));
      g_string_append_printf(rest, "%s\n    {\"at\": \"%" G_GINT64_FORMAT "s\", \"type\": \"backend-fail\", "
                                   "\"host\": \"10.0.2.%u\", \"from\": [%s]}, {\"at\": \"%" G_GINT64_FORMAT
                                   "s\", \"type\": \"backend-recover\", \"host\": \"10.0.2.%u\", "
                                   "\"from\": [%s]}\n  ],\n",
                             first ? "" : ",", pf_at, pf_host, from->str, pf_end, pf_host, from->str);
      g_string_free(from, TRUE);
    }
  }
  g_string_append_printf(s, "  \"cluster\": {%s], \"settings\": {%s}%s},\n", cluster->str,
                         settings->str, health_json->str);
  g_string_free(health_json, TRUE);
  g_string_append_printf(s, "  \"network\": {%s},\n", network->str);
  g_string_append(s, rest->str);
  if (driver->len > 0)
    g_string_append_printf(s, "  \"driver\": {%s},\n", driver->str);
  g_string_append(s, "  \"checks\": [\n"
                     "    {\"type\": \"no-double-backend\", \"allow_split_brain\": true},\n"
                     "    {\"type\": \"converged\", \"within\": \"5m\"},\n"
                     "    {\"type\": \"no-pending-logins\"}\n  ]\n}\n");
  g_string_free(cluster, TRUE);
  g_string_free(rest, TRUE);
  g_string_free(settings, TRUE);
  g_string_free(network, TRUE);
  g_string_free(driver, TRUE);
  return g_string_free(s, FALSE);
}


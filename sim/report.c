/* report.c - what a run shows: the readable summary, the JSON report and the SVG chart. */
#include "sim/world-private.h"


#include "sim/chart.h"
#include <string.h>

static void
print_ms(FILE *out, gint64 us)
{
  fprintf(out, "%" G_GINT64_FORMAT ".%03d ms", us / 1000, (int)(us % 1000));
}

/* "ok", "FAILED", or "not evaluated" (a run cut short before the check's time). */
static const char *
check_verdict(SimWorld *w, guint i)
{
  const SimCheck *c = &g_array_index(w->sc->checks, SimCheck, i);
  if (w->check_verdicts[i] == 1)
    return "ok";
  if (w->check_verdicts[i] == 0)
    return "FAILED";
  for (guint f = 0; f < w->failures->len; f++)
    if (strstr(g_ptr_array_index(w->failures, f), c->text) != NULL)
      return "FAILED";
  return "not evaluated";
}

/* The logins that changed backend, per (from, to) pair, most first. */
typedef struct {
  guint from, to;
  guint64 n;
} MovePair;

static int
cmp_move_pair(gconstpointer a, gconstpointer b)
{
  const MovePair *x = a, *y = b;
  if (x->n != y->n)
    return x->n > y->n ? -1 : 1;
  if (x->from != y->from)
    return x->from < y->from ? -1 : 1;
  return x->to < y->to ? -1 : x->to > y->to;
}

static GArray *
move_pairs(SimWorld *w)
{
  GArray *a = g_array_new(FALSE, FALSE, sizeof(MovePair));
  GHashTableIter it;
  gpointer k, v;
  g_hash_table_iter_init(&it, w->moves_between);
  while (g_hash_table_iter_next(&it, &k, &v)) {
    guint64 key = *(guint64 *)k;
    MovePair p = {(guint)(key >> 32), (guint)(key & 0xffffffffu), GPOINTER_TO_SIZE(v)};
    g_array_append_val(a, p);
  }
  g_array_sort(a, cmp_move_pair);
  return a;
}

void
sim_world_print_summary(SimWorld *w, FILE *out)
{
  const SimScenario *sc = w->sc;
  g_autofree char *dur = world_time(sc->duration_us);
  fprintf(out, "scenario %s: %u directors, %u backends, %" G_GUINT64_FORMAT " users, %s\n",
          sc->name, sc->directors, sc->backends->len, sc->users, dur);
  if (sc->n_tags > 1) {
    fprintf(out, "users by tag:");
    for (guint i = 0; i < sc->n_tags; i++)
      fprintf(out, "%s %s %u%%", i > 0 ? "," : "", sc->tags[i],
               sc->tag_cum[i] - (i > 0 ? sc->tag_cum[i - 1] : 0));
    fprintf(out, "\n");
  }
  if (sc->description != NULL && sc->description[0] != '\0')
    fprintf(out, "%s\n", sc->description);
  fprintf(out, "seed %" G_GUINT64_FORMAT " (network 0x%016" G_GINT64_MODIFIER "x, workload 0x%016" G_GINT64_MODIFIER
               "x, directors 0x%016" G_GINT64_MODIFIER "x, driver 0x%016" G_GINT64_MODIFIER "x)\n",
          w->seed, w->seed_net, w->seed_workload, w->seed_directors, w->seed_driver);

  /* Live sessions per backend over time (at most 13 rows). */
  fprintf(out, "\nlive sessions per backend\n%-13s", "time");
  for (guint b = 0; b < w->backends->len; b++)
    fprintf(out, " %15s", g_array_index(w->backends, SimBackend, b).ip_str);
  fprintf(out, "\n");
  guint step = MAX(1, w->samples->len / 12);
  for (guint i = 0; i < w->samples->len; i += step) {
    SimSample *s = &g_array_index(w->samples, SimSample, i);
    g_autofree char *t = world_time(s->t_us);
    fprintf(out, "%-13s", t);
    for (guint b = 0; b < w->backends->len; b++)
      fprintf(out, " %15u", s->live[b]);
    fprintf(out, "\n");
  }
  fprintf(out, "\nlogins: %" G_GUINT64_FORMAT " ok, %" G_GUINT64_FORMAT
               " failed after retries; %" G_GUINT64_FORMAT " attempts, %" G_GUINT64_FORMAT
               " retries, %" G_GUINT64_FORMAT " temporary failures, %" G_GUINT64_FORMAT
               " refused by a full backend, %" G_GUINT64_FORMAT " by a failed one\n",
          w->logins_ok, w->logins_failed, w->login_attempts, w->retries, w->tempfails,
          w->backend_full, w->backend_refused);
  if (w->logins_cancelled > 0)
    fprintf(out, "logins the client cancelled while they waited: %" G_GUINT64_FORMAT "\n",
            w->logins_cancelled);
  fprintf(out, "login latency: p50 ");
  print_ms(out, world_latency_percentile(w, 50));
  fprintf(out, ", p90 ");
  print_ms(out, world_latency_percentile(w, 90));
  fprintf(out, ", p99 ");
  print_ms(out, world_latency_percentile(w, 99));
  fprintf(out, ", max ");
  print_ms(out, w->latency_max_us);
  fprintf(out, "\n  (from the first attempt to the answer, retries included; a director that can "
               "answer at once takes 0 ms, the simulation has no client network; the max is the "
               "login that waited longest, through a fault and its retries)");
  fprintf(out, "\nusers that changed backend: %" G_GUINT64_FORMAT " (%" G_GUINT64_FORMAT
               " changes); sessions kicked: %" G_GUINT64_FORMAT
               "; sessions cut by a failure: %" G_GUINT64_FORMAT " (LMTP deliveries among them, "
               "delivered again: %" G_GUINT64_FORMAT ")\n",
          w->users_moved, w->backend_changes, w->sessions_kicked, w->sessions_cut,
          w->lmtp_redelivered);
  {
    g_autoptr(GArray) pairs = move_pairs(w);
    for (guint i = 0; i < pairs->len && i < 5; i++) {
      const MovePair *mp = &g_array_index(pairs, MovePair, i);
      fprintf(out, "  %s -> %s: %" G_GUINT64_FORMAT " logins%s\n",
              g_array_index(w->backends, SimBackend, mp->from).ip_str,
              g_array_index(w->backends, SimBackend, mp->to).ip_str, mp->n,
              i == 4 && pairs->len > 5 ? " (more pairs in --report)" : "");
    }
  }
  guint64 open_windows = g_hash_table_size(w->windows);
  fprintf(out, "users on two backends at once: %" G_GUINT64_FORMAT " in split brain, %" G_GUINT64_FORMAT
               " from clock skew, %" G_GUINT64_FORMAT " after unsafe host changes, %" G_GUINT64_FORMAT
               " violations, %" G_GUINT64_FORMAT " still open; longest %" G_GINT64_FORMAT " s\n",
          w->windows_split_brain, w->windows_clock_skew, w->windows_unsafe, w->windows_violation,
          open_windows, w->window_longest_us / SEC_US);
  if (w->windows_split_brain + w->windows_clock_skew + w->windows_unsafe > 0) {
    gboolean allowed = FALSE, checked = FALSE;
    for (guint i = 0; i < sc->checks->len; i++) {
      const SimCheck *c = &g_array_index(sc->checks, SimCheck, i);
      if (c->kind == SIM_CHECK_NO_DOUBLE_BACKEND) {
        checked = TRUE;
        allowed |= c->allow_split_brain;
      }
    }
    fprintf(out, "  (split brain: both halves of a split ring placed the user, as Dovecot's "
                 "director does; clock skew: a director whose clock is ahead dropped the entry "
                 "and placed the user afresh while another still held it; unsafe: after a host "
                 "removal or a forced flush, which may cut sessions; %s)\n",
            !checked  ? "no no-double-backend check judges them in this scenario"
            : allowed ? "this scenario's no-double-backend check allows both (allow_split_brain), "
                        "only violations fail it"
                      : "this scenario's no-double-backend check fails on any of them");
  }
  for (guint i = 0; i < w->convergences->len; i++) {
    SimConvergence *c = &g_array_index(w->convergences, SimConvergence, i);
    if (c->took_us >= 0) {
      fprintf(out, "converged after %s in ", c->after);
      print_ms(out, c->took_us);
      fprintf(out, " (%u user entries)", c->users);
      if (c->settled_us > c->took_us) {
        fprintf(out, "; the moves it started ran until ");
        print_ms(out, c->settled_us);
      } else if (c->settled_us < 0) {
        fprintf(out, "; its moves were still running at the next change");
      }
      fprintf(out, "\n");
    } else {
      fprintf(out, "did NOT converge after %s\n", c->after);
    }
  }
  UsherDirectorStats sum = {0};
  for (guint i = 0; i < w->n_nodes; i++) {
    if (!w->nodes[i].up)
      continue;
    const UsherDirectorStats *st = usher_director_get_stats(w->nodes[i].d);
    sum.moves_started += st->moves_started;
    sum.moves_initiated += st->moves_initiated;
    sum.moves_finished += st->moves_finished;
    sum.moves_timed_out += st->moves_timed_out;
    sum.user_conflicts += st->user_conflicts;
    sum.host_conflicts += st->host_conflicts;
    sum.protocol_errors += st->protocol_errors;
    sum.logins_delayed += st->logins_delayed;
    sum.kicks_sent += st->kicks_sent;
    sum.users_expired += st->users_expired;
    sum.sync_resends += st->sync_resends;
    sum.kicks_timed_out += st->kicks_timed_out;
    sum.flushes_failed += st->flushes_failed;
    sum.flushes_timed_out += st->flushes_timed_out;
    sum.requests_cancelled += st->requests_cancelled;
    sum.handshake_pauses += st->handshake_pauses;
    sum.probes_sent += st->probes_sent;
    sum.probes_failed += st->probes_failed;
    sum.health_downs += st->health_downs;
    sum.health_ups += st->health_ups;
    sum.health_no_quorum += st->health_no_quorum;
    sum.user_updates_held += st->user_updates_held;
    sum.user_updates_held_applied += st->user_updates_held_applied;
    sum.user_updates_held_dropped += st->user_updates_held_dropped;
    sum.user_updates_held_overflow += st->user_updates_held_overflow;
  }
  fprintf(out, "directors (all that are up, since their last start): %" G_GUINT64_FORMAT
               " users moved by admin commands and flushes; every director's moves: %" G_GUINT64_FORMAT
               " started, %" G_GUINT64_FORMAT " finished, %" G_GUINT64_FORMAT
               " timed out; %" G_GUINT64_FORMAT " user conflicts, %" G_GUINT64_FORMAT
               " host conflicts; %" G_GUINT64_FORMAT " logins waited; %" G_GUINT64_FORMAT
               " kicks; %" G_GUINT64_FORMAT " users expired; %" G_GUINT64_FORMAT
               " SYNC resends; %" G_GUINT64_FORMAT " protocol errors\n",
          sum.moves_initiated, sum.moves_started, sum.moves_finished, sum.moves_timed_out,
          sum.user_conflicts,
          sum.host_conflicts, sum.logins_delayed, sum.kicks_sent, sum.users_expired,
          sum.sync_resends, sum.protocol_errors);
  if (sum.kicks_sent > 0)
    fprintf(out, "  (kicks are what the directors asked for, each on every director, per user "
                 "hash, also for users with no session now; \"sessions kicked\" above counts the "
                 "sessions that actually ended)\n");
  fprintf(out, "directors and their driver: %" G_GUINT64_FORMAT " kicks timed out, %" G_GUINT64_FORMAT
               " flush hooks failed, %" G_GUINT64_FORMAT " timed out; %" G_GUINT64_FORMAT
               " login requests cancelled; %" G_GUINT64_FORMAT " handshake pauses\n",
          sum.kicks_timed_out, sum.flushes_failed, sum.flushes_timed_out, sum.requests_cancelled,
          sum.handshake_pauses);
  if (w->conflicts->len > 0) {
    fprintf(out, "users placed on two backends by the two halves of a split, settled when they met "
                 "(the lower backend address wins; sessions on the other one were kicked): %u\n",
            w->conflicts->len);
    for (guint i = 0; i < w->conflicts->len && i < 5; i++) {
      const SimConflict *c = &g_array_index(w->conflicts, SimConflict, i);
      char name[128], kept[USHER_IP_STRLEN], lost[USHER_IP_STRLEN];
      const char *who = world_user_of_hash(w, c->hash, name, sizeof(name));
      g_autofree char *t = world_time(c->t_us);
      fprintf(out, "  %s: %s (hash %u) kept on %s; the other half's placement on %s undone\n", t,
              who != NULL ? who : "a user", c->hash, usher_ip_to_string(&c->kept, kept),
              usher_ip_to_string(&c->lost, lost));
    }
    if (w->conflicts->len > 5)
      fprintf(out, "  ... and %u more (--report lists them all)\n", w->conflicts->len - 5);
  }
  for (guint i = 0; i < w->health_decisions->len; i++) {
    const SimHealthDecision *hd = &g_array_index(w->health_decisions, SimHealthDecision, i);
    g_autofree char *t = world_time(hd->t_us);
    fprintf(out, "health decision at %s: director %u took a backend %s\n", t, hd->director,
            hd->down ? "down" : "up");
  }
  if (sum.probes_sent > 0)
    fprintf(out, "health checks: %" G_GUINT64_FORMAT " probes (%" G_GUINT64_FORMAT
                 " failed); %" G_GUINT64_FORMAT " backends taken down and %" G_GUINT64_FORMAT
                 " brought up by a quorum; %" G_GUINT64_FORMAT " times a director had too few "
                 "voters to decide\n",
            sum.probes_sent, sum.probes_failed, sum.health_downs, sum.health_ups,
            sum.health_no_quorum);
  if (sum.user_updates_held + sum.user_updates_held_overflow > 0)
    fprintf(out,
            "user updates for a backend not known yet: %" G_GUINT64_FORMAT
            " held, %" G_GUINT64_FORMAT " applied when its HOST came, %" G_GUINT64_FORMAT
            " dropped, %" G_GUINT64_FORMAT " not held (queue full)\n",
            sum.user_updates_held, sum.user_updates_held_applied, sum.user_updates_held_dropped,
            sum.user_updates_held_overflow);
  if (w->kicks_lost + w->flushes_lost + w->flushes_failed > 0)
    fprintf(out, "driver faults: %" G_GUINT64_FORMAT " kicks never reported done, %" G_GUINT64_FORMAT
                 " flush hooks never reported, %" G_GUINT64_FORMAT " reported failed\n",
            w->kicks_lost, w->flushes_lost, w->flushes_failed);
  const SimNetStats *ns = sim_net_get_stats(w->net);
  fprintf(out, "network: %" G_GUINT64_FORMAT " connections closed with a full output buffer; "
               "the most output queued on one: %" G_GUINT64_FORMAT " bytes\n",
          ns->output_overflows, ns->peak_queued);
  double secs = w->wall_elapsed_us > 0 ? w->wall_elapsed_us / 1e6 : 0;
  /* The one line that differs between two runs of the same seed: it is marked as such. */
  fprintf(out, "\n%" G_GUINT64_FORMAT " events\n", w->events);
  fprintf(out, "host timing (varies between runs): %.2f s, %.2f M events/s\n", secs,
          secs > 0 ? w->events_timed / secs / 1e6 : 0);
  fprintf(out, "fingerprint %016" G_GINT64_MODIFIER "x\n", w->fingerprint);
  for (guint i = 0; i < w->sc->checks->len; i++) {
    const SimCheck *c = &g_array_index(w->sc->checks, SimCheck, i);
    fprintf(out, "check %s %s\n", c->text, check_verdict(w, i));
  }
  if (w->failures_total > 0) {
    fprintf(out, "\n%" G_GUINT64_FORMAT " failures:\n", w->failures_total);
    for (guint i = 0; i < w->failures->len; i++)
      fprintf(out, "  %s\n", (const char *)g_ptr_array_index(w->failures, i));
    if (w->failures_total > w->failures->len)
      fprintf(out, "  ... and %" G_GUINT64_FORMAT " more\n",
              w->failures_total - w->failures->len);
    fprintf(out, "RESULT: FAIL\n");
  } else {
    fprintf(out, "RESULT: PASS\n");
  }
}

JsonNode *
sim_world_report_json(SimWorld *w)
{
  g_autoptr(JsonBuilder) b = json_builder_new();
  json_builder_begin_object(b);
#define INT(k, v)                                                                                 \
  do {                                                                                            \
    json_builder_set_member_name(b, k);                                                           \
    json_builder_add_int_value(b, (gint64)(v));                                                   \
  } while (0)
  json_builder_set_member_name(b, "scenario");
  json_builder_add_string_value(b, w->sc->name);
  INT("seed", w->seed);
  json_builder_set_member_name(b, "fingerprint");
  g_autofree char *fp = g_strdup_printf("%016" G_GINT64_MODIFIER "x", w->fingerprint);
  json_builder_add_string_value(b, fp);
  json_builder_set_member_name(b, "passed");
  json_builder_add_boolean_value(b, w->failures_total == 0);
  INT("events", w->events);
  INT("logins_ok", w->logins_ok);
  INT("logins_failed", w->logins_failed);
  INT("login_attempts", w->login_attempts);
  INT("tempfails", w->tempfails);
  INT("retries", w->retries);
  INT("backend_full", w->backend_full);
  INT("users_moved", w->users_moved);
  INT("backend_changes", w->backend_changes);
  INT("sessions_started", w->sessions_started);
  INT("sessions_kicked", w->sessions_kicked);
  INT("sessions_cut", w->sessions_cut);
  INT("lmtp_redelivered", w->lmtp_redelivered);
  INT("windows_split_brain", w->windows_split_brain);
  INT("windows_clock_skew", w->windows_clock_skew);
  INT("windows_unsafe", w->windows_unsafe);
  INT("windows_violation", w->windows_violation);
  INT("window_longest_us", w->window_longest_us);
  INT("logins_cancelled", w->logins_cancelled);
  INT("kicks_lost", w->kicks_lost);
  INT("flushes_lost", w->flushes_lost);
  INT("flushes_failed", w->flushes_failed);
  INT("output_overflows", sim_net_get_stats(w->net)->output_overflows);
  INT("peak_queued_bytes", sim_net_get_stats(w->net)->peak_queued);
  json_builder_set_member_name(b, "checks");
  json_builder_begin_array(b);
  for (guint i = 0; i < w->sc->checks->len; i++) {
    const SimCheck *c = &g_array_index(w->sc->checks, SimCheck, i);
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "check");
    json_builder_add_string_value(b, c->text);
    json_builder_set_member_name(b, "verdict");
    json_builder_add_string_value(b, check_verdict(w, i));
    json_builder_end_object(b);
  }
  json_builder_end_array(b);
  json_builder_set_member_name(b, "moves_between");
  json_builder_begin_array(b);
  {
    g_autoptr(GArray) pairs = move_pairs(w);
    for (guint i = 0; i < pairs->len; i++) {
      const MovePair *mp = &g_array_index(pairs, MovePair, i);
      json_builder_begin_object(b);
      json_builder_set_member_name(b, "from");
      json_builder_add_string_value(b, g_array_index(w->backends, SimBackend, mp->from).ip_str);
      json_builder_set_member_name(b, "to");
      json_builder_add_string_value(b, g_array_index(w->backends, SimBackend, mp->to).ip_str);
      INT("logins", mp->n);
      json_builder_end_object(b);
    }
  }
  json_builder_end_array(b);
  json_builder_set_member_name(b, "split_conflicts");
  json_builder_begin_array(b);
  for (guint i = 0; i < w->conflicts->len; i++) {
    const SimConflict *c = &g_array_index(w->conflicts, SimConflict, i);
    char name[128], ip[USHER_IP_STRLEN];
    const char *who = world_user_of_hash(w, c->hash, name, sizeof(name));
    json_builder_begin_object(b);
    INT("t_us", c->t_us);
    INT("hash", c->hash);
    json_builder_set_member_name(b, "user");
    if (who != NULL)
      json_builder_add_string_value(b, who);
    else
      json_builder_add_null_value(b);
    json_builder_set_member_name(b, "kept");
    json_builder_add_string_value(b, usher_ip_to_string(&c->kept, ip));
    json_builder_set_member_name(b, "lost");
    json_builder_add_string_value(b, usher_ip_to_string(&c->lost, ip));
    json_builder_end_object(b);
  }
  json_builder_end_array(b);
  json_builder_set_member_name(b, "health_decisions");
  json_builder_begin_array(b);
  for (guint i = 0; i < w->health_decisions->len; i++) {
    const SimHealthDecision *hd = &g_array_index(w->health_decisions, SimHealthDecision, i);
    json_builder_begin_object(b);
    INT("t_us", hd->t_us);
    INT("director", hd->director);
    json_builder_set_member_name(b, "down");
    json_builder_add_boolean_value(b, hd->down);
    json_builder_end_object(b);
  }
  json_builder_end_array(b);
  json_builder_set_member_name(b, "login_latency_us");
  json_builder_begin_object(b);
  INT("p50", world_latency_percentile(w, 50));
  INT("p90", world_latency_percentile(w, 90));
  INT("p99", world_latency_percentile(w, 99));
  INT("max", w->latency_max_us);
  json_builder_end_object(b);
  json_builder_set_member_name(b, "convergence");
  json_builder_begin_array(b);
  for (guint i = 0; i < w->convergences->len; i++) {
    SimConvergence *c = &g_array_index(w->convergences, SimConvergence, i);
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "after");
    json_builder_add_string_value(b, c->after);
    INT("took_us", c->took_us);
    INT("settled_us", c->settled_us);
    INT("users", c->users);
    json_builder_end_object(b);
  }
  json_builder_end_array(b);
  json_builder_set_member_name(b, "directors");
  json_builder_begin_array(b);
  for (guint i = 0; i < w->n_nodes; i++) {
    json_builder_begin_object(b);
    INT("director", i);
    json_builder_set_member_name(b, "up");
    json_builder_add_boolean_value(b, w->nodes[i].up);
    if (w->nodes[i].up) {
      const UsherDirectorStats *st = usher_director_get_stats(w->nodes[i].d);
      INT("moves_initiated", st->moves_initiated);
      INT("moves_started", st->moves_started);
      INT("moves_finished", st->moves_finished);
      INT("moves_timed_out", st->moves_timed_out);
      INT("user_conflicts", st->user_conflicts);
      INT("host_conflicts", st->host_conflicts);
      INT("logins_ok", st->logins_ok);
      INT("logins_delayed", st->logins_delayed);
      INT("logins_tempfail", st->logins_tempfail);
      INT("kicks_sent", st->kicks_sent);
      INT("users_expired", st->users_expired);
      INT("sync_resends", st->sync_resends);
      INT("protocol_errors", st->protocol_errors);
      INT("duplicate_commands", st->duplicate_commands);
      INT("floods_held", st->floods_held);
      INT("floods_held_overflow", st->floods_held_overflow);
      INT("handshake_pauses", st->handshake_pauses);
      INT("user_updates_held", st->user_updates_held);
      INT("user_updates_held_applied", st->user_updates_held_applied);
      INT("user_updates_held_dropped", st->user_updates_held_dropped);
      INT("user_updates_held_overflow", st->user_updates_held_overflow);
      INT("kicks_timed_out", st->kicks_timed_out);
      INT("flushes_failed", st->flushes_failed);
      INT("flushes_timed_out", st->flushes_timed_out);
      INT("requests_cancelled", st->requests_cancelled);
      INT("probes_sent", st->probes_sent);
      INT("probes_failed", st->probes_failed);
      INT("health_downs", st->health_downs);
      INT("health_ups", st->health_ups);
      INT("health_no_quorum", st->health_no_quorum);
      INT("lines_in", st->lines_in);
      INT("lines_out", st->lines_out);
      /* Its final host table (which of two racing updates won) and its user count. */
      UsherRingInfo ring;
      usher_director_get_ring_info(w->nodes[i].d, &ring);
      INT("users", ring.n_users);
      json_builder_set_member_name(b, "hosts");
      json_builder_begin_array(b);
      g_autoptr(GArray) hosts = usher_director_list_hosts(w->nodes[i].d);
      for (guint h = 0; h < hosts->len; h++) {
        const UsherHostInfo *hi = &g_array_index(hosts, UsherHostInfo, h);
        json_builder_begin_object(b);
        json_builder_set_member_name(b, "ip");
        json_builder_add_string_value(b, hi->ip_str);
        json_builder_set_member_name(b, "tag");
        json_builder_add_string_value(b, hi->tag);
        INT("vhosts", hi->vhost_count);
        json_builder_set_member_name(b, "down");
        json_builder_add_boolean_value(b, hi->down);
        INT("users", hi->user_count);
        json_builder_end_object(b);
      }
      json_builder_end_array(b);
    }
    json_builder_end_object(b);
  }
  json_builder_end_array(b);
  json_builder_set_member_name(b, "samples");
  json_builder_begin_array(b);
  for (guint i = 0; i < w->samples->len; i++) {
    SimSample *s = &g_array_index(w->samples, SimSample, i);
    json_builder_begin_object(b);
    INT("t_us", s->t_us);
    json_builder_set_member_name(b, "backends");
    json_builder_begin_array(b);
    for (guint k = 0; k < w->backends->len; k++) {
      json_builder_begin_object(b);
      json_builder_set_member_name(b, "ip");
      json_builder_add_string_value(b, g_array_index(w->backends, SimBackend, k).ip_str);
      INT("sessions", s->live[k]);
      INT("users", s->users[k]);
      json_builder_end_object(b);
    }
    json_builder_end_array(b);
    json_builder_end_object(b);
  }
  json_builder_end_array(b);
  json_builder_set_member_name(b, "failures");
  json_builder_begin_array(b);
  for (guint i = 0; i < w->failures->len; i++)
    json_builder_add_string_value(b, g_ptr_array_index(w->failures, i));
  json_builder_end_array(b);
#undef INT
  json_builder_end_object(b);
  return json_builder_get_root(b);
}

/* ---- Chart ------------------------------------------------------------------------------------------ */

static const double palette[][3] = {
  {0.12, 0.47, 0.71}, {1.00, 0.50, 0.05}, {0.17, 0.63, 0.17}, {0.84, 0.15, 0.16},
  {0.58, 0.40, 0.74}, {0.55, 0.34, 0.29}, {0.89, 0.47, 0.76}, {0.50, 0.50, 0.50},
};

/* A round step for about n ticks up to max: 1, 2 or 5 times a power of ten. */
static double
nice_step(double max, int n)
{
  double raw = MAX(max, 1) / n, p = 1;
  while (p * 10 <= raw)
    p *= 10;
  while (p > raw)
    p /= 10;
  return raw <= p ? p : raw <= 2 * p ? 2 * p : raw <= 5 * p ? 5 * p : 10 * p;
}

/* A legend entry for a line series: a short bar in the current colour, then the label in black
 * on baseline y. */
static void
legend_line(cairo_t *cr, double x, double y, const char *label)
{
  cairo_rectangle(cr, x, y - 5, 12, 3);
  cairo_fill(cr);
  cairo_set_source_rgb(cr, 0, 0, 0);
  cairo_move_to(cr, x + 17, y);
  cairo_show_text(cr, label);
}

gboolean
sim_world_write_chart(SimWorld *w, const char *path, GError **error)
{
  const double width = 960, left = 70, right = 170, title_h = 30, label_row = 12;
  const double p1h = 300, gap = 46, p2h = 130, bottom = 44;
  /* Event labels sit in rows above the top panel (at most 4), each in the first row where it
   * fits; the same event many times at one instant is one label ("kick x40"); a label that fits
   * no row is left out (its line stays) and counted. */
  guint n_rows = 1, omitted = 0;
  double row_end[4] = {0};
  g_autofree gint *mark_row = g_new0(gint, MAX(w->marks->len, 1u));
  g_autofree guint *mark_count = g_new0(guint, MAX(w->marks->len, 1u));
  gint64 dur = MAX(w->sc->duration_us, 1);
  double pw = width - left - right;
  {
    cairo_surface_t *probe = cairo_image_surface_create(CAIRO_FORMAT_ARGB32, 1, 1);
    cairo_t *pc = cairo_create(probe);
    cairo_select_font_face(pc, "sans-serif", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
    cairo_set_font_size(pc, 9);
    gint group = -1;
    for (guint i = 0; i < w->marks->len; i++) {
      SimMark *m = &g_array_index(w->marks, SimMark, i);
      if (group >= 0) {
        SimMark *g = &g_array_index(w->marks, SimMark, group);
        if (strcmp(g->text, m->text) == 0 && pw * (double)(m->t_us - g->t_us) / (double)dur < 2) {
          mark_count[group]++;
          mark_row[i] = -2; /* part of the group's label */
          continue;
        }
      }
      group = (gint)i;
      mark_count[i] = 1;
      mark_row[i] = -1;
    }
    for (guint i = 0; i < w->marks->len; i++) {
      if (mark_row[i] == -2)
        continue;
      SimMark *m = &g_array_index(w->marks, SimMark, i);
      double x = left + pw * (double)m->t_us / (double)dur;
      g_autofree char *label = mark_count[i] > 1 ? g_strdup_printf("%s x%u", m->text, mark_count[i])
                                                 : g_strdup(m->text);
      cairo_text_extents_t e;
      cairo_text_extents(pc, label, &e);
      guint r = 0;
      while (r < G_N_ELEMENTS(row_end) && r < n_rows && row_end[r] > x - 2)
        r++;
      if (r == G_N_ELEMENTS(row_end)) {
        omitted++;
        continue;
      }
      if (r == n_rows)
        n_rows++;
      row_end[r] = x + 3 + e.x_advance;
      mark_row[i] = (gint)r;
    }
    cairo_destroy(pc);
    cairo_surface_destroy(probe);
  }
  const double top = title_h + n_rows * label_row + 6;
  const double top2 = top + p1h + gap;
  const double height = top2 + p2h + bottom;

  const char *why = NULL;
  cairo_t *cr = sim_chart_begin(path, width, height, &why);
  if (cr == NULL) {
    g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED, "%s: cannot write the chart: %s", path,
                why);
    return FALSE;
  }
  guint32 maxv = 1, max2 = 1;
  for (guint i = 0; i < w->samples->len; i++) {
    const SimSample *smp = &g_array_index(w->samples, SimSample, i);
    for (guint k = 0; k < w->backends->len; k++)
      maxv = MAX(maxv, smp->live[k]);
    max2 = MAX(max2, smp->two_backends);
    if (i > 0) {
      const SimSample *prev = &g_array_index(w->samples, SimSample, i - 1);
      max2 = MAX(max2, (guint32)MIN(smp->backend_changes - prev->backend_changes, G_MAXUINT32));
      max2 = MAX(max2, (guint32)MIN(smp->kicked - prev->kicked, G_MAXUINT32));
    }
  }
  /* Counts: whole steps, and the top of each axis the first tick at or above the largest value. */
  guint64 step1 = (guint64)MAX(nice_step(maxv, 5), 1), step2 = (guint64)MAX(nice_step(max2, 4), 1);
  double top1v = (double)((maxv + step1 - 1) / step1 * step1);
  double top2v = (double)((max2 + step2 - 1) / step2 * step2);

  /* Title. */
  cairo_set_source_rgb(cr, 0, 0, 0);
  cairo_select_font_face(cr, "sans-serif", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_BOLD);
  cairo_set_font_size(cr, 15);
  cairo_move_to(cr, left, 22);
  g_autofree char *title = g_strdup_printf("%s (seed %" G_GUINT64_FORMAT ")", w->sc->name, w->seed);
  cairo_show_text(cr, title);
  cairo_select_font_face(cr, "sans-serif", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
  cairo_set_line_width(cr, 1);

  /* Convergence: from each change to agreement, shaded on both panels. */
  for (guint i = 0; i < w->convergences->len; i++) {
    const SimConvergence *c = &g_array_index(w->convergences, SimConvergence, i);
    gint64 end = c->took_us < 0 ? dur : c->since_us + MAX(c->settled_us, c->took_us);
    double x0 = left + pw * (double)c->since_us / (double)dur;
    double x1 = left + pw * (double)MIN(end, dur) / (double)dur;
    cairo_set_source_rgba(cr, 0.55, 0.7, 0.95, 0.25);
    cairo_rectangle(cr, x0, top, MAX(x1 - x0, 1.5), p1h);
    cairo_rectangle(cr, x0, top2, MAX(x1 - x0, 1.5), p2h);
    cairo_fill(cr);
  }
  sim_chart_y_axis(cr, left, top, pw, p1h, top1v, (double)step1, "", "live sessions");
  sim_chart_y_axis(cr, left, top2, pw, p2h, top2v, (double)step2, "", "per sample");

  /* Time axis under each panel: round steps of minutes or hours. */
  static const gint64 steps_s[] = {10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 21600};
  gint64 tstep = steps_s[G_N_ELEMENTS(steps_s) - 1] * SEC_US;
  for (gsize i = 0; i < G_N_ELEMENTS(steps_s); i++)
    if (dur / (steps_s[i] * SEC_US) <= 8) {
      tstep = steps_s[i] * SEC_US;
      break;
    }
  cairo_set_font_size(cr, 11);
  for (gint64 t = 0; t <= dur; t += tstep) {
    double x = left + pw * (double)t / (double)dur;
    g_autofree char *label = t % (3600 * SEC_US) == 0 && dur > 3 * 3600 * SEC_US
                               ? g_strdup_printf("%" G_GINT64_FORMAT "h", t / (3600 * SEC_US))
                               : g_strdup_printf("%" G_GINT64_FORMAT "m%s", t / (60 * SEC_US),
                                                 t % (60 * SEC_US) != 0 ? "30s" : "");
    sim_chart_text_at(cr, x, top + p1h + 15, label, 0.5);
    sim_chart_text_at(cr, x, top2 + p2h + 15, label, 0.5);
  }
  sim_chart_text_at(cr, left + pw / 2, top2 + p2h + 34, "simulated time since the start", 0.5);

  /* Events: a dashed line through both panels, the label in its row above. */
  cairo_set_font_size(cr, 9);
  for (guint i = 0; i < w->marks->len; i++) {
    SimMark *m = &g_array_index(w->marks, SimMark, i);
    double x = left + pw * (double)m->t_us / (double)dur;
    cairo_set_source_rgba(cr, 0.6, 0, 0, 0.6);
    double dashes[] = {3, 3};
    cairo_set_dash(cr, dashes, 2, 0);
    double ly = title_h + MAX(mark_row[i], 0) * label_row + 9;
    cairo_move_to(cr, x, mark_row[i] >= 0 ? ly + 2 : top);
    cairo_line_to(cr, x, top2 + p2h);
    cairo_stroke(cr);
    cairo_set_dash(cr, NULL, 0, 0);
    if (mark_row[i] < 0)
      continue;
    g_autofree char *label = mark_count[i] > 1 ? g_strdup_printf("%s x%u", m->text, mark_count[i])
                                               : g_strdup(m->text);
    cairo_set_source_rgb(cr, 0.5, 0, 0);
    cairo_move_to(cr, x + 3, ly);
    cairo_show_text(cr, label);
  }
  if (omitted > 0) {
    g_autofree char *more = g_strdup_printf("(%u more events: the summary lists them)", omitted);
    cairo_set_source_rgb(cr, 0.5, 0, 0);
    sim_chart_text_at(cr, left + pw, 22, more, 1.0);
  }

  /* Top panel: one line per backend. */
  cairo_set_line_width(cr, 1.6);
  cairo_set_font_size(cr, 11);
  for (guint k = 0; k < w->backends->len; k++) {
    const double *c = palette[k % G_N_ELEMENTS(palette)];
    cairo_set_source_rgb(cr, c[0], c[1], c[2]);
    for (guint i = 0; i < w->samples->len; i++) {
      SimSample *smp = &g_array_index(w->samples, SimSample, i);
      double x = left + pw * (double)smp->t_us / (double)dur;
      double y = top + p1h - p1h * (double)smp->live[k] / top1v;
      if (i == 0)
        cairo_move_to(cr, x, y);
      else
        cairo_line_to(cr, x, y);
    }
    cairo_stroke(cr);
    legend_line(cr, left + pw + 15, top + 15 + k * 18,
                g_array_index(w->backends, SimBackend, k).ip_str);
  }

  /* Bottom panel: users on two backends, logins that changed backend and sessions kicked. */
  static const struct {
    const char *name;
    double rgb[3];
  } series[] = {
    {"users on two backends", {0.84, 0.15, 0.16}},
    {"logins moved", {0.58, 0.40, 0.74}},
    {"sessions kicked", {0.50, 0.50, 0.50}},
  };
  for (guint k = 0; k < G_N_ELEMENTS(series); k++) {
    cairo_set_source_rgb(cr, series[k].rgb[0], series[k].rgb[1], series[k].rgb[2]);
    for (guint i = 0; i < w->samples->len; i++) {
      const SimSample *smp = &g_array_index(w->samples, SimSample, i);
      const SimSample *prev = i > 0 ? &g_array_index(w->samples, SimSample, i - 1) : smp;
      double v = k == 0   ? smp->two_backends
                 : k == 1 ? (double)(smp->backend_changes - prev->backend_changes)
                          : (double)(smp->kicked - prev->kicked);
      double x = left + pw * (double)smp->t_us / (double)dur;
      double y = top2 + p2h - p2h * v / top2v;
      if (i == 0)
        cairo_move_to(cr, x, y);
      else
        cairo_line_to(cr, x, y);
    }
    cairo_stroke(cr);
    legend_line(cr, left + pw + 15, top2 + 15 + k * 18, series[k].name);
  }
  cairo_set_source_rgba(cr, 0.55, 0.7, 0.95, 0.5);
  cairo_rectangle(cr, left + pw + 15, top2 + 10 + 3 * 18 - 4, 12, 8);
  cairo_fill(cr);
  cairo_set_source_rgb(cr, 0, 0, 0);
  cairo_move_to(cr, left + pw + 32, top2 + 15 + 3 * 18);
  cairo_show_text(cr, "until the ring agreed");
  why = sim_chart_end(cr);
  if (why != NULL) {
    g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED, "%s: cannot write the chart: %s", path,
                why);
    return FALSE;
  }
  return TRUE;
}

/* cmd-swarm.c - "ushersim swarm" (random clusters, workloads and faults, every invariant on) and
 * "ushersim shrink" (cut a failing run down to a small regression scenario). */
#include "sim/sim.h"
#include "sim/sim-swarm.h"
#include "sim/world.h"

#include "libcore/rng.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* ---- swarm --------------------------------------------------------------------------------------- */

typedef struct {
  guint64 seed;
  char *scenario;
  int status;
  char *first_failure;
  guint64 fingerprint;
  guint64 events;
} SwarmJob;

/* Seeds finished and failed so far, for the progress line. */
static gint swarm_done, swarm_failed;

static void swarm_run_one_inner(SwarmJob *job);

static void
swarm_run_one(gpointer data, gpointer user_data)
{
  (void)user_data;
  SwarmJob *job = data;
  swarm_run_one_inner(job);
  if (job->status != USHERSIM_EXIT_OK)
    g_atomic_int_inc(&swarm_failed);
  g_atomic_int_inc(&swarm_done);
}

static void
swarm_run_one_inner(SwarmJob *job)
{
  job->scenario = sim_swarm_scenario(job->seed);
  g_autoptr(GError) error = NULL;
  g_autofree char *source = g_strdup_printf("swarm seed %" G_GUINT64_FORMAT, job->seed);
  g_autoptr(SimScenario) sc = sim_scenario_load_data(job->scenario, -1, source, &error);
  if (sc == NULL) {
    job->status = USHERSIM_EXIT_USAGE;
    job->first_failure = g_strdup(error->message);
    return;
  }
  g_autoptr(SimWorld) w = sim_world_new(sc, job->seed);
  sim_world_run(w);
  job->fingerprint = sim_world_fingerprint(w);
  job->events = sim_world_events(w);
  job->status = sim_world_passed(w) ? USHERSIM_EXIT_OK : USHERSIM_EXIT_CHECK_FAILED;
  const GPtrArray *f = sim_world_failures(w);
  if (f->len > 0)
    job->first_failure = g_strdup(g_ptr_array_index(f, 0));
}

int
ushersim_cmd_swarm(int argc, char **argv)
{
  gint64 seeds = 100, start = 1, jobs = 2;
  g_autofree char *trace_dir = NULL;
  gboolean print_scenario = FALSE;
  GOptionEntry entries[] = {
    {"seeds", 'n', 0, G_OPTION_ARG_INT64, &seeds, "How many seeds to run (default 100)", "N"},
    {"start", 's', 0, G_OPTION_ARG_INT64, &start, "The first seed (default 1)", "S"},
    {"jobs", 'j', 0, G_OPTION_ARG_INT64, &jobs, "Runs at the same time (default 2)", "J"},
    {"trace-dir", 't', 0, G_OPTION_ARG_FILENAME, &trace_dir,
     "Write a trace of every failing seed here (for replay and shrink)", "DIR"},
    {"print-scenario", 0, 0, G_OPTION_ARG_NONE, &print_scenario,
     "Print the scenario of the first seed and stop", NULL},
    {NULL},
  };
  g_autoptr(GOptionContext) ctx = g_option_context_new("- random scenarios with every invariant");
  g_option_context_set_summary(
    ctx, "Each seed draws a cluster (2-6 directors, 2-6 backends), a workload and up to seven\n"
         "faults (partitions, crashes, host changes, flushes, moves, kicks, clock steps, link\n"
         "resets, backend failures), and in about one seed in ten each of the driver faults (late or\n"
         "lost kicks, slow, failing or lost flush hooks, slow links with small send buffers, cancelled\n"
         "logins; doc/scenarios.md), runs it and checks every invariant. Prints the failing seeds;\n"
         "exit status 1 if any fails.");
  g_option_context_add_main_entries(ctx, entries, NULL);
  g_autoptr(GError) error = NULL;
  if (!ushersim_options_once("ushersim swarm", argc, argv, entries))
    return USHERSIM_EXIT_USAGE;
  if (!g_option_context_parse(ctx, &argc, &argv, &error) || argc != 1) {
    fprintf(stderr, "ushersim swarm: %s\n", error != NULL ? error->message : "unexpected argument");
    return USHERSIM_EXIT_USAGE;
  }
  if (seeds < 1 || seeds > 10000000 || start < 0 || jobs < 1 || jobs > 64) {
    fprintf(stderr, "ushersim swarm: --seeds 1..10000000, --start >= 0, --jobs 1..64\n");
    return USHERSIM_EXIT_USAGE;
  }
  const char *dir_problem = trace_dir != NULL ? ushersim_output_dir_problem(trace_dir) : NULL;
  if (dir_problem != NULL) {
    fprintf(stderr, "ushersim swarm: --trace-dir %s: the directory %s\n", trace_dir, dir_problem);
    return USHERSIM_EXIT_USAGE;
  }
  if (print_scenario) {
    g_autofree char *text = sim_swarm_scenario((guint64)start);
    fputs(text, stdout);
    return USHERSIM_EXIT_OK;
  }
  SwarmJob *all = g_new0(SwarmJob, seeds);
  GThreadPool *pool = g_thread_pool_new(swarm_run_one, NULL, (gint)jobs, TRUE, NULL);
  for (gint64 i = 0; i < seeds; i++) {
    all[i].seed = (guint64)(start + i);
    g_thread_pool_push(pool, &all[i], NULL);
  }
  /* On a terminal, a progress line on standard error (nothing when it is not a terminal). */
  if (isatty(STDERR_FILENO)) {
    while (g_atomic_int_get(&swarm_done) < seeds) {
      fprintf(stderr, "\r  %d of %" G_GINT64_FORMAT " seeds, %d failed ", g_atomic_int_get(&swarm_done),
              seeds, g_atomic_int_get(&swarm_failed));
      g_usleep(G_USEC_PER_SEC / 2);
    }
    fprintf(stderr, "\r%60s\r", "");
  }
  g_thread_pool_free(pool, FALSE, TRUE);
  guint failed = 0;
  guint64 events = 0;
  for (gint64 i = 0; i < seeds; i++) {
    SwarmJob *job = &all[i];
    events += job->events;
    if (job->status != USHERSIM_EXIT_OK) {
      failed++;
      printf("seed %" G_GUINT64_FORMAT " FAILED: %s\n", job->seed,
             job->first_failure != NULL ? job->first_failure : "?");
      if (trace_dir != NULL) {
        g_autofree char *path =
          g_strdup_printf("%s/swarm-%" G_GUINT64_FORMAT ".trace.json", trace_dir, job->seed);
        int st = ushersim_run_scenario_text(job->scenario, path, (gint64)job->seed, NULL, NULL,
                                            path, TRUE, NULL);
        /* 0 or 1 is the run's verdict; 2 is a trace that could not be written (said above). */
        if (st != USHERSIM_EXIT_USAGE)
          printf("  trace: %s\n", path);
      }
    }
    g_free(job->scenario);
    g_free(job->first_failure);
  }
  g_free(all);
  printf("swarm: %" G_GINT64_FORMAT " seeds from %" G_GINT64_FORMAT ", %" G_GUINT64_FORMAT
         " events, %u failed\n",
         seeds, start, events, failed);
  return failed == 0 ? USHERSIM_EXIT_OK : USHERSIM_EXIT_CHECK_FAILED;
}

/* ---- shrink -------------------------------------------------------------------------------------- */

/* The kind of a failure: its text without the time stamp, up to the first digit, so
 * "00:18:36.500: the directors did not converge within 300 s after heal ..." gives "the
 * directors did not converge within " and a failed check gives its type. A cut must keep the first failure's kind, or the
 * shrinker would happily trade the bug for another (a partition never healed, say). */
static char *
failure_kind(const char *failure)
{
  /* The text after the time stamp, every run of digits written "#": "director # sent a login
   * to #.#.#.#, which is not a backend" is one kind whichever director, backend or count. */
  const char *p = strstr(failure, ": ");
  p = p != NULL ? p + 2 : failure;
  GString *kind = g_string_new(NULL);
  while (*p != '\0') {
    if (g_ascii_isdigit(*p)) {
      g_string_append_c(kind, '#');
      while (g_ascii_isdigit(*p))
        p++;
    } else {
      g_string_append_c(kind, *p++);
    }
  }
  return g_string_free(kind, FALSE);
}

/* Runs the scenario; TRUE when it fails with a failure of kind @kind (any kind if NULL). */
static gboolean
still_fails(JsonNode *scenario, guint64 seed, const char *kind)
{
  g_autoptr(JsonGenerator) gen = json_generator_new();
  json_generator_set_root(gen, scenario);
  g_autofree char *text = json_generator_to_data(gen, NULL);
  g_autoptr(SimScenario) sc = sim_scenario_load_data(text, -1, "shrink candidate", NULL);
  if (sc == NULL)
    return FALSE; /* a cut that makes the scenario invalid does not count */
  g_autoptr(SimWorld) w = sim_world_new(sc, seed);
  sim_world_run(w);
  if (sim_world_passed(w))
    return FALSE;
  if (kind == NULL)
    return TRUE;
  const GPtrArray *f = sim_world_failures(w);
  for (guint i = 0; i < f->len; i++) {
    g_autofree char *k = failure_kind(g_ptr_array_index(f, i));
    if (g_str_equal(k, kind))
      return TRUE;
  }
  return FALSE;
}

/* Faults and the events that end them: a shrink never keeps a fault without its end (a
 * partition never healed fails for another reason than the bug), so an end is only ever removed
 * together with its start. */
static const struct {
  const char *start, *end, *key; /* key: the field both must share ("" for none) */
} fault_pairs[] = {
  {"partition", "heal", ""},
  {"director-crash", "director-restart", "director"},
  {"director-pause", "director-resume", "director"},
  {"backend-fail", "backend-recover", "host"},
};

static gint64
event_at(JsonObject *e)
{
  gint64 us = 0;
  JsonNode *at = json_object_get_member(e, "at");
  if (at != NULL && JSON_NODE_HOLDS_VALUE(at) && json_node_get_value_type(at) == G_TYPE_STRING)
    (void)sim_parse_duration_us(json_node_get_string(at), &us);
  return us;
}

static const char *
event_type(JsonObject *e)
{
  JsonNode *t = json_object_get_member(e, "type");
  return t != NULL && JSON_NODE_HOLDS_VALUE(t) && json_node_get_value_type(t) == G_TYPE_STRING
           ? json_node_get_string(t)
           : "";
}

static gboolean
same_member(JsonObject *a, JsonObject *b, const char *key)
{
  if (key[0] == '\0')
    return TRUE;
  JsonNode *x = json_object_get_member(a, key), *y = json_object_get_member(b, key);
  if (x == NULL || y == NULL)
    return x == y;
  return json_node_equal(x, y);
}

/* For event i: -2 if it ends a fault (never removed alone), the index of the event that ends it
 * if it starts one (the first matching end at or after it), else -1. */
static gint
fault_partner(JsonArray *ev, guint i)
{
  JsonObject *e = json_array_get_object_element(ev, i);
  const char *type = event_type(e);
  for (guint p = 0; p < G_N_ELEMENTS(fault_pairs); p++) {
    if (strcmp(type, fault_pairs[p].end) == 0)
      return -2;
    if (strcmp(type, fault_pairs[p].start) != 0)
      continue;
    gint best = -1;
    gint64 at = event_at(e), best_at = G_MAXINT64;
    for (guint k = 0; k < json_array_get_length(ev); k++) {
      JsonObject *x = json_array_get_object_element(ev, k);
      gint64 x_at = event_at(x);
      if (strcmp(event_type(x), fault_pairs[p].end) == 0 && x_at >= at && x_at < best_at &&
          same_member(e, x, fault_pairs[p].key)) {
        best = (gint)k;
        best_at = x_at;
      }
    }
    return best;
  }
  return -1;
}

/* What the shrunk scenario still holds, for its description. */
static char *
describe_events(JsonArray *ev)
{
  GString *s = g_string_new(NULL);
  for (guint i = 0; ev != NULL && i < json_array_get_length(ev); i++) {
    JsonObject *e = json_array_get_object_element(ev, i);
    JsonNode *at = json_object_get_member(e, "at");
    g_string_append_printf(s, "%s%s at %s", i > 0 ? ", " : "", event_type(e),
                           at != NULL && json_node_get_value_type(at) == G_TYPE_STRING
                             ? json_node_get_string(at)
                             : "?");
  }
  if (s->len == 0)
    g_string_append(s, "no events");
  return g_string_free(s, FALSE);
}

int
ushersim_cmd_shrink(int argc, char **argv)
{
  g_autofree char *out = NULL;
  GOptionEntry entries[] = {
    {"out", 'o', 0, G_OPTION_ARG_FILENAME, &out, "Where to write the small scenario", "FILE"},
    {NULL},
  };
  g_autoptr(GOptionContext) ctx = g_option_context_new("TRACE - cut a failing run down");
  g_option_context_set_summary(
    ctx, "Removes events one by one, then halves the users and the login rate, as long as the\n"
         "run still fails with the trace's seed in the same way (a failure of the same kind as the\n"
         "trace's first). Writes the result as a scenario for scenarios/regressions/. Exit status\n"
         "0 when done, 1 if the trace does not fail, 2 on bad input.");
  g_option_context_add_main_entries(ctx, entries, NULL);
  g_autoptr(GError) error = NULL;
  if (!ushersim_options_once("ushersim shrink", argc, argv, entries))
    return USHERSIM_EXIT_USAGE;
  if (!g_option_context_parse(ctx, &argc, &argv, &error) || argc != 2 || out == NULL) {
    fprintf(stderr, "ushersim shrink: %s\n",
            error != NULL ? error->message : "give one trace file and --out FILE");
    return USHERSIM_EXIT_USAGE;
  }
  const char *out_problem = ushersim_output_problem(out);
  if (out_problem != NULL) {
    fprintf(stderr, "ushersim shrink: --out %s: the file %s\n", out, out_problem);
    return USHERSIM_EXIT_USAGE;
  }
  g_autofree char *text = NULL, *fingerprint = NULL, *first_failure = NULL;
  guint64 seed;
  if (!ushersim_trace_read("ushersim shrink", argv[1], &text, &seed, &fingerprint,
                           &first_failure))
    return USHERSIM_EXIT_USAGE;
  if (first_failure == NULL) {
    printf("shrink: the trace recorded no failure: nothing to shrink\n");
    return USHERSIM_EXIT_CHECK_FAILED;
  }
  g_autoptr(JsonNode) sc = json_from_string(text, NULL);
  /* Keep the kind of the run's first failure, as the trace recorded it. */
  g_autofree char *kind = failure_kind(first_failure);
  guint runs = 1;
  if (!still_fails(sc, seed, kind)) {
    printf("shrink: the trace's run does not fail as recorded (\"%s\") with this build: nothing "
           "to shrink\n", first_failure);
    return USHERSIM_EXIT_CHECK_FAILED;
  }
  printf("shrink: keeping failures of the kind \"%s\"\n", kind);
  JsonObject *so = json_node_get_object(sc);
  /* 1. Drop events while it still fails: a fault's start together with its end, never an end
   * alone. */
  if (json_object_has_member(so, "events")) {
    for (gint i = (gint)json_array_get_length(json_object_get_array_member(so, "events")) - 1;
         i >= 0; i--) {
      JsonArray *ev = json_object_get_array_member(so, "events");
      if ((guint)i >= json_array_get_length(ev))
        continue;
      gint partner = fault_partner(ev, (guint)i);
      if (partner == -2)
        continue;
      g_autoptr(JsonArray) cut = json_array_new();
      for (guint k = 0; k < json_array_get_length(ev); k++)
        if (k != (guint)i && (gint)k != partner)
          json_array_add_element(cut, json_node_copy(json_array_get_element(ev, k)));
      g_autoptr(JsonArray) before = json_array_ref(ev);
      json_object_set_array_member(so, "events", json_array_ref(cut));
      runs++;
      if (!still_fails(sc, seed, kind))
        json_object_set_array_member(so, "events", json_array_ref(before)); /* needed */
      else if (partner >= 0 && partner < i)
        i--; /* the end sat before the start in the list: one more index is gone */
    }
  }
  /* 2. Halve the workload while it still fails. */
  JsonObject *wl = json_object_get_object_member(so, "workload");
  const char *knobs[] = {"users", "logins_per_second"};
  for (guint k = 0; k < G_N_ELEMENTS(knobs) && wl != NULL; k++) {
    while (json_object_has_member(wl, knobs[k])) {
      JsonNode *n = json_object_get_member(wl, knobs[k]);
      if (json_node_get_value_type(n) != G_TYPE_INT64 || json_node_get_int(n) <= 1)
        break;
      gint64 v = json_node_get_int(n);
      json_object_set_int_member(wl, knobs[k], v / 2);
      runs++;
      if (!still_fails(sc, seed, kind)) {
        json_object_set_int_member(wl, knobs[k], v);
        break;
      }
    }
  }
  g_autofree char *name = g_strdup_printf("regression-%" G_GUINT64_FORMAT, seed);
  json_object_set_string_member(so, "name", name);
  /* The original description speaks of events that may be gone: say what is left. */
  g_autofree char *left =
    describe_events(json_object_has_member(so, "events") ? json_object_get_array_member(so, "events")
                                                         : NULL);
  g_autofree char *desc = g_strdup_printf(
    "Shrunk by ushersim shrink from a failing run of seed %" G_GUINT64_FORMAT "%s%s%s. Left: %s. "
    "Say here what it showed and how it was fixed.",
    seed, kind != NULL ? " (kept failure: \"" : "", kind != NULL ? g_strstrip(kind) : "",
    kind != NULL ? "\")" : "", left);
  json_object_set_string_member(so, "description", desc);
  json_object_set_int_member(so, "seed", (gint64)seed);
  g_autoptr(JsonGenerator) gen = json_generator_new();
  json_generator_set_root(gen, sc);
  json_generator_set_pretty(gen, TRUE);
  gsize out_len;
  g_autofree char *out_text = json_generator_to_data(gen, &out_len);
  if (!ushersim_write_file(out, out_text, out_len, &error)) {
    fprintf(stderr, "ushersim shrink: %s: %s\n", out, error->message);
    return USHERSIM_EXIT_USAGE;
  }
  printf("shrink: %u runs; wrote %s (%u events left)\n", runs, out,
         json_object_has_member(so, "events")
           ? json_array_get_length(json_object_get_array_member(so, "events"))
           : 0);
  return USHERSIM_EXIT_OK;
}

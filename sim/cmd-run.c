/* cmd-run.c - "ushersim run" and "ushersim replay". */
#include "sim/sim.h"
#include "sim/world.h"

#include <stdio.h>
#include <unistd.h>
#include <string.h>

static gboolean
write_json(JsonNode *root, const char *path, GError **error)
{
  g_autoptr(JsonGenerator) gen = json_generator_new();
  json_generator_set_root(gen, root);
  json_generator_set_pretty(gen, TRUE);
  return json_generator_to_file(gen, path, error);
}

/* A trace holds the scenario text, the seed and the outcome: enough to run it again. */
static gboolean
write_trace(const char *path, const char *scenario_text, guint64 seed, SimWorld *w,
            GError **error)
{
  g_autoptr(JsonParser) parser = json_parser_new();
  if (!json_parser_load_from_data(parser, scenario_text, -1, error))
    return FALSE;
  g_autoptr(JsonBuilder) b = json_builder_new();
  json_builder_begin_object(b);
  json_builder_set_member_name(b, "usher_trace");
  json_builder_add_int_value(b, 1);
  json_builder_set_member_name(b, "seed");
  json_builder_add_int_value(b, (gint64)seed);
  json_builder_set_member_name(b, "fingerprint");
  g_autofree char *fp = g_strdup_printf("%016" G_GINT64_MODIFIER "x", sim_world_fingerprint(w));
  json_builder_add_string_value(b, fp);
  json_builder_set_member_name(b, "passed");
  json_builder_add_boolean_value(b, sim_world_passed(w));
  json_builder_set_member_name(b, "failures");
  json_builder_begin_array(b);
  const GPtrArray *f = sim_world_failures(w);
  for (guint i = 0; i < f->len; i++)
    json_builder_add_string_value(b, g_ptr_array_index(f, i));
  json_builder_end_array(b);
  json_builder_set_member_name(b, "scenario");
  json_builder_add_value(b, json_node_copy(json_parser_get_root(parser)));
  json_builder_end_object(b);
  g_autoptr(JsonNode) root = json_builder_get_root(b);
  return write_json(root, path, error);
}

static gboolean opt_log;

int
ushersim_run_scenario_text(const char *text, const char *source, gint64 seed_opt,
                           const char *report, const char *chart, const char *trace,
                           gboolean quiet, guint64 *fingerprint_out)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(SimScenario) sc = sim_scenario_load_data(text, -1, source, &error);
  if (sc == NULL) {
    fprintf(stderr, "ushersim: %s\n", error->message);
    return USHERSIM_EXIT_USAGE;
  }
  for (guint i = 0; i < sc->warnings->len; i++)
    fprintf(stderr, "ushersim: warning: %s\n", (const char *)g_ptr_array_index(sc->warnings, i));
  /* Output files are checked before the run, not after it. */
  const struct {
    const char *option, *path;
  } outputs[] = {{"--report", report}, {"--chart", chart}, {"--trace", trace}};
  for (gsize i = 0; i < G_N_ELEMENTS(outputs); i++) {
    if (outputs[i].path == NULL)
      continue;
    g_autofree char *dir = g_path_get_dirname(outputs[i].path);
    const char *why = g_file_test(outputs[i].path, G_FILE_TEST_IS_DIR) ? "is a directory"
                      : !g_file_test(dir, G_FILE_TEST_IS_DIR)          ? "is in a directory that does not exist"
                      : access(dir, W_OK) != 0                          ? "is in a directory this user cannot write"
                                                                        : NULL;
    if (why != NULL) {
      fprintf(stderr, "ushersim: %s %s: the file %s\n", outputs[i].option, outputs[i].path, why);
      return USHERSIM_EXIT_USAGE;
    }
  }
  guint64 seed = seed_opt >= 0 ? (guint64)seed_opt : sc->seed;
  g_autoptr(SimWorld) w = sim_world_new(sc, seed);
  if (opt_log)
    sim_world_set_log(w, stderr);
  sim_world_run(w);
  if (!quiet)
    sim_world_print_summary(w, stdout);
  if (report != NULL) {
    g_autoptr(JsonNode) root = sim_world_report_json(w);
    if (!write_json(root, report, &error)) {
      fprintf(stderr, "ushersim: %s: %s\n", report, error->message);
      return USHERSIM_EXIT_USAGE;
    }
  }
  if (chart != NULL && !sim_world_write_chart(w, chart, &error)) {
    fprintf(stderr, "ushersim: %s\n", error->message);
    return USHERSIM_EXIT_USAGE;
  }
  if (trace != NULL && !write_trace(trace, text, seed, w, &error)) {
    fprintf(stderr, "ushersim: %s: %s\n", trace, error->message);
    return USHERSIM_EXIT_USAGE;
  }
  if (fingerprint_out != NULL)
    *fingerprint_out = sim_world_fingerprint(w);
  return sim_world_passed(w) ? USHERSIM_EXIT_OK : USHERSIM_EXIT_CHECK_FAILED;
}

int
ushersim_cmd_run(int argc, char **argv)
{
  gint64 seed = -1;
  g_autofree char *report = NULL, *chart = NULL, *trace = NULL;
  gboolean quiet = FALSE;
  GOptionEntry entries[] = {
    {"seed", 's', 0, G_OPTION_ARG_INT64, &seed, "Run with this seed instead of the scenario's",
     "N"},
    {"report", 'r', 0, G_OPTION_ARG_FILENAME, &report, "Write the full report as JSON", "FILE"},
    {"chart", 'c', 0, G_OPTION_ARG_FILENAME, &chart,
     "Draw live sessions per backend over time, events marked, as SVG", "FILE"},
    {"trace", 't', 0, G_OPTION_ARG_FILENAME, &trace,
     "Record the run (scenario, seed, outcome) for 'ushersim replay'", "FILE"},
    {"quiet", 'q', 0, G_OPTION_ARG_NONE, &quiet, "Print nothing; only the exit status", NULL},
    {"log", 'l', 0, G_OPTION_ARG_NONE, &opt_log,
     "Print the directors' log lines (with simulated time) on standard error", NULL},
    {NULL},
  };
  g_autoptr(GOptionContext) ctx = g_option_context_new("SCENARIO.json - run a scenario");
  g_option_context_set_summary(
    ctx, "Runs real libcore directors over a simulated network with the scenario's workload,\n"
         "events and checks (doc/scenarios.md). Prints a summary; exit status 0 when every check\n"
         "and invariant holds, 1 when one fails (the summary says which, when and why), 2 on bad\n"
         "input. The same scenario and seed give the same output and fingerprint every time.");
  g_option_context_add_main_entries(ctx, entries, NULL);
  g_autoptr(GError) error = NULL;
  if (!g_option_context_parse(ctx, &argc, &argv, &error)) {
    fprintf(stderr, "ushersim run: %s\n", error->message);
    return USHERSIM_EXIT_USAGE;
  }
  if (argc != 2) {
    fprintf(stderr, "ushersim run: give exactly one scenario file\n");
    return USHERSIM_EXIT_USAGE;
  }
  if (seed < -1) {
    fprintf(stderr, "ushersim run: --seed must not be negative\n");
    return USHERSIM_EXIT_USAGE;
  }
  g_autofree char *text = NULL;
  if (!g_file_get_contents(argv[1], &text, NULL, &error)) {
    fprintf(stderr, "ushersim run: %s\n", error->message);
    return USHERSIM_EXIT_USAGE;
  }
  return ushersim_run_scenario_text(text, argv[1], seed, report, chart, trace, quiet, NULL);
}

int
ushersim_cmd_replay(int argc, char **argv)
{
  gboolean quiet = FALSE;
  GOptionEntry entries[] = {
    {"quiet", 'q', 0, G_OPTION_ARG_NONE, &quiet, "Print only the verdict", NULL},
    {NULL},
  };
  g_autoptr(GOptionContext) ctx = g_option_context_new("TRACE - run a recorded run again");
  g_option_context_set_summary(
    ctx, "Runs the scenario and seed of a trace (ushersim run --trace, ushersim swarm) again and\n"
         "compares the fingerprint. Exit status: the run's own (0 pass, 1 fail) when it reproduces\n"
         "the recorded fingerprint, 1 when it does not, 2 on bad input.");
  g_option_context_add_main_entries(ctx, entries, NULL);
  g_autoptr(GError) error = NULL;
  if (!g_option_context_parse(ctx, &argc, &argv, &error) || argc != 2) {
    fprintf(stderr, "ushersim replay: %s\n", error != NULL ? error->message : "give one trace file");
    return USHERSIM_EXIT_USAGE;
  }
  g_autoptr(JsonParser) parser = json_parser_new();
  if (!json_parser_load_from_file(parser, argv[1], &error)) {
    fprintf(stderr, "ushersim replay: %s: %s\n", argv[1], error->message);
    return USHERSIM_EXIT_USAGE;
  }
  JsonNode *root = json_parser_get_root(parser);
  JsonObject *o = root != NULL && JSON_NODE_HOLDS_OBJECT(root) ? json_node_get_object(root) : NULL;
  if (o == NULL || !json_object_has_member(o, "usher_trace") ||
      !json_object_has_member(o, "scenario") || !json_object_has_member(o, "seed") ||
      !json_object_has_member(o, "fingerprint")) {
    fprintf(stderr, "ushersim replay: %s: not an Usher trace\n", argv[1]);
    return USHERSIM_EXIT_USAGE;
  }
  g_autoptr(JsonGenerator) gen = json_generator_new();
  json_generator_set_root(gen, json_object_get_member(o, "scenario"));
  g_autofree char *text = json_generator_to_data(gen, NULL);
  gint64 seed = json_object_get_int_member(o, "seed");
  const char *want = json_object_get_string_member(o, "fingerprint");
  guint64 got = 0;
  g_autofree char *source = g_strdup_printf("%s: scenario", argv[1]);
  int status = ushersim_run_scenario_text(text, source, seed, NULL, NULL, NULL, quiet, &got);
  if (status == USHERSIM_EXIT_USAGE)
    return status;
  g_autofree char *got_text = g_strdup_printf("%016" G_GINT64_MODIFIER "x", got);
  if (want == NULL || strcmp(want, got_text) != 0) {
    printf("replay: fingerprint %s differs from the recorded %s: the run did not reproduce\n",
           got_text, want != NULL ? want : "?");
    return USHERSIM_EXIT_CHECK_FAILED;
  }
  printf("replay: reproduced fingerprint %s (%s)\n", got_text,
         status == USHERSIM_EXIT_OK ? "passed" : "failed, as recorded");
  return status;
}

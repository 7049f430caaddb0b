/* cmd-run.c - "ushersim run" and "ushersim replay". */
#include "sim/sim.h"
#include "sim/json-strict.h"
#include "sim/world.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

gboolean
ushersim_options_once(const char *cmd, int argc, char **argv, const GOptionEntry *entries)
{
  for (const GOptionEntry *e = entries; e->long_name != NULL; e++) {
    if (e->arg == G_OPTION_ARG_STRING_ARRAY || e->arg == G_OPTION_ARG_FILENAME_ARRAY ||
        e->arg == G_OPTION_ARG_CALLBACK)
      continue;
    guint seen = 0;
    for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++) {
      const char *a = argv[i];
      gsize n = strlen(e->long_name);
      gboolean is_long = g_str_has_prefix(a, "--") && strncmp(a + 2, e->long_name, n) == 0 &&
                         (a[2 + n] == '\0' || a[2 + n] == '=');
      gboolean is_short = e->short_name != '\0' && a[0] == '-' && a[1] == e->short_name &&
                          a[1] != '-';
      if (is_long || is_short)
        seen++;
      /* The value of an option that takes one is not an option itself. */
      if ((is_long && a[2 + n] == '\0') || (is_short && a[2] == '\0'))
        if (e->arg != G_OPTION_ARG_NONE)
          i++;
    }
    if (seen > 1) {
      fprintf(stderr, "%s: --%s is given %u times: give it once\n", cmd, e->long_name, seen);
      return FALSE;
    }
  }
  return TRUE;
}

const char *
ushersim_output_problem(const char *path)
{
  if (path[0] == '\0')
    return "name is empty";
  if (g_file_test(path, G_FILE_TEST_IS_DIR))
    return "is a directory";
  g_autofree char *dir = g_path_get_dirname(path);
  if (!g_file_test(dir, G_FILE_TEST_IS_DIR))
    return "is in a directory that does not exist";
  if (access(path, F_OK) == 0 ? access(path, W_OK) != 0 : access(dir, W_OK) != 0)
    return "cannot be written by this user";
  return NULL;
}

const char *
ushersim_output_dir_problem(const char *dir)
{
  if (dir[0] == '\0')
    return "name is empty";
  if (g_file_test(dir, G_FILE_TEST_EXISTS) && !g_file_test(dir, G_FILE_TEST_IS_DIR))
    return "exists and is not a directory";
  if (g_mkdir_with_parents(dir, 0755) != 0)
    return "cannot be made";
  if (access(dir, W_OK) != 0)
    return "cannot be written by this user";
  return NULL;
}

gboolean
ushersim_write_file(const char *path, const char *data, gsize len, GError **error)
{
  struct stat st;
  if (lstat(path, &st) != 0 || S_ISREG(st.st_mode))
    return g_file_set_contents(path, data, (gssize)len, error);
  int fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(e), "cannot open it: %s",
                g_strerror(e));
    return FALSE;
  }
  for (gsize done = 0; done < len;) {
    ssize_t n = write(fd, data + done, len - done);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      int e = n < 0 ? errno : EIO;
      close(fd);
      g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(e), "cannot write it: %s",
                  g_strerror(e));
      return FALSE;
    }
    done += (gsize)n;
  }
  if (close(fd) != 0) {
    int e = errno;
    g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(e), "cannot write it: %s",
                g_strerror(e));
    return FALSE;
  }
  return TRUE;
}

gboolean
ushersim_trace_read(const char *cmd, const char *path, char **scenario_out, guint64 *seed_out,
                    char **fingerprint_out, char **first_failure_out)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *data = NULL;
  gsize data_len;
  g_autoptr(JsonParser) parser = json_parser_new();
  if (!g_file_get_contents(path, &data, &data_len, &error) ||
      !sim_json_check(data, data_len, path, &error) ||
      !json_parser_load_from_data(parser, data, (gssize)data_len, &error)) {
    fprintf(stderr, "%s: %s\n", cmd, error->message);
    return FALSE;
  }
  JsonNode *root = json_parser_get_root(parser);
  JsonObject *o = root != NULL && JSON_NODE_HOLDS_OBJECT(root) ? json_node_get_object(root) : NULL;
  if (o == NULL || !json_object_has_member(o, "usher_trace")) {
    fprintf(stderr, "%s: %s: not an Usher trace (no \"usher_trace\" member)\n", cmd, path);
    return FALSE;
  }
  const char *why = NULL, *field = NULL;
  JsonNode *version = json_object_get_member(o, "usher_trace");
  JsonNode *seed = json_object_get_member(o, "seed");
  JsonNode *fp = json_object_get_member(o, "fingerprint");
  JsonNode *failures = json_object_get_member(o, "failures");
  JsonNode *scenario = json_object_get_member(o, "scenario");
  if (!JSON_NODE_HOLDS_VALUE(version) || json_node_get_value_type(version) != G_TYPE_INT64 ||
      json_node_get_int(version) != 1)
    field = "usher_trace", why = "must be 1 (the only trace version)";
  else if (seed == NULL || !JSON_NODE_HOLDS_VALUE(seed) ||
           json_node_get_value_type(seed) != G_TYPE_INT64 || json_node_get_int(seed) < 0)
    field = "seed", why = "must be a whole number from 0 to 9223372036854775807";
  else if (fp == NULL || !JSON_NODE_HOLDS_VALUE(fp) ||
           json_node_get_value_type(fp) != G_TYPE_STRING ||
           strlen(json_node_get_string(fp)) != 16 ||
           strspn(json_node_get_string(fp), "0123456789abcdef") != 16)
    field = "fingerprint", why = "must be 16 lower-case hexadecimal digits, as run --trace writes";
  else if (scenario == NULL || !JSON_NODE_HOLDS_OBJECT(scenario))
    field = "scenario", why = "must be an object (the scenario the run was made of)";
  else if (failures != NULL && !JSON_NODE_HOLDS_ARRAY(failures))
    field = "failures", why = "must be an array of strings";
  if (why == NULL && failures != NULL) {
    JsonArray *a = json_node_get_array(failures);
    for (guint i = 0; i < json_array_get_length(a) && why == NULL; i++) {
      JsonNode *e = json_array_get_element(a, i);
      if (!JSON_NODE_HOLDS_VALUE(e) || json_node_get_value_type(e) != G_TYPE_STRING)
        field = "failures", why = "must be an array of strings";
    }
  }
  if (why != NULL) {
    fprintf(stderr, "%s: %s: %s: %s\n", cmd, path, field, why);
    return FALSE;
  }
  g_autoptr(JsonGenerator) gen = json_generator_new();
  json_generator_set_root(gen, scenario);
  g_autofree char *text = json_generator_to_data(gen, NULL);
  g_autofree char *source = g_strdup_printf("%s: scenario", path);
  g_autoptr(SimScenario) sc = sim_scenario_load_data(text, -1, source, &error);
  if (sc == NULL) {
    fprintf(stderr, "%s: %s\n", cmd, error->message);
    return FALSE;
  }
  *scenario_out = g_steal_pointer(&text);
  *seed_out = (guint64)json_node_get_int(seed);
  *fingerprint_out = g_strdup(json_node_get_string(fp));
  *first_failure_out = NULL;
  if (failures != NULL && json_array_get_length(json_node_get_array(failures)) > 0)
    *first_failure_out =
      g_strdup(json_node_get_string(json_array_get_element(json_node_get_array(failures), 0)));
  return TRUE;
}

static gboolean
write_json(JsonNode *root, const char *path, GError **error)
{
  g_autoptr(JsonGenerator) gen = json_generator_new();
  json_generator_set_root(gen, root);
  json_generator_set_pretty(gen, TRUE);
  gsize len;
  g_autofree char *text = json_generator_to_data(gen, &len);
  return ushersim_write_file(path, text, len, error);
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
    const char *why = ushersim_output_problem(outputs[i].path);
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
    {"quiet", 'q', 0, G_OPTION_ARG_NONE, &quiet, "Print no summary, only the exit status (warnings and errors still go to standard error)", NULL},
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
  if (!ushersim_options_once("ushersim run", argc, argv, entries))
    return USHERSIM_EXIT_USAGE;
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
  if (!ushersim_options_once("ushersim replay", argc, argv, entries))
    return USHERSIM_EXIT_USAGE;
  if (!g_option_context_parse(ctx, &argc, &argv, &error) || argc != 2) {
    fprintf(stderr, "ushersim replay: %s\n", error != NULL ? error->message : "give one trace file");
    return USHERSIM_EXIT_USAGE;
  }
  g_autofree char *text = NULL, *want = NULL, *first_failure = NULL;
  guint64 seed;
  if (!ushersim_trace_read("ushersim replay", argv[1], &text, &seed, &want, &first_failure))
    return USHERSIM_EXIT_USAGE;
  guint64 got = 0;
  g_autofree char *source = g_strdup_printf("%s: scenario", argv[1]);
  int status =
    ushersim_run_scenario_text(text, source, (gint64)seed, NULL, NULL, NULL, quiet, &got);
  if (status == USHERSIM_EXIT_USAGE)
    return status;
  g_autofree char *got_text = g_strdup_printf("%016" G_GINT64_MODIFIER "x", got);
  if (strcmp(want, got_text) != 0) {
    printf("replay: fingerprint %s differs from the recorded %s: the run did not reproduce\n",
           got_text, want);
    return USHERSIM_EXIT_CHECK_FAILED;
  }
  printf("replay: reproduced fingerprint %s (%s)\n", got_text,
         status == USHERSIM_EXIT_OK ? "passed" : "failed, as recorded");
  return status;
}

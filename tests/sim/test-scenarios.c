/* test-scenarios.c - every scenario in scenarios/ is a test case; determinism; scenario errors. */
#include "sim/sim-swarm.h"
#include "sim/world.h"

#include <string.h>

static const char *
scenario_dir(void)
{
  const char *dir = g_getenv("USHER_SCENARIOS");
  if (dir == NULL)
    g_error("USHER_SCENARIOS is not set; run the tests through meson test");
  return dir;
}

static SimScenario *
load(const char *path)
{
  g_autoptr(GError) error = NULL;
  SimScenario *sc = sim_scenario_load_file(path, &error);
  g_assert_no_error(error);
  return sc;
}

static void
run_scenario(gconstpointer data)
{
  const char *path = data;
  g_autoptr(SimScenario) sc = load(path);
  g_autoptr(SimWorld) w = sim_world_new(sc, sc->seed);
  sim_world_run(w);
  const GPtrArray *f = sim_world_failures(w);
  for (guint i = 0; i < f->len; i++)
    g_test_message("%s", (const char *)g_ptr_array_index(f, i));
  g_test_message("%s: %" G_GUINT64_FORMAT " events, fingerprint %016" G_GINT64_MODIFIER "x", sc->name,
                 sim_world_events(w), sim_world_fingerprint(w));
  g_assert_true(sim_world_passed(w));
}

/* Same scenario, same seed: the same fingerprint (hash of every input and effect); another seed:
 * another run. */
static void
determinism(gconstpointer data)
{
  const char *path = data;
  g_autoptr(SimScenario) sc = load(path);
  guint64 fp[3];
  guint64 seeds[3] = {7, 7, 8};
  for (int i = 0; i < 3; i++) {
    g_autoptr(SimWorld) w = sim_world_new(sc, seeds[i]);
    sim_world_run(w);
    fp[i] = sim_world_fingerprint(w);
  }
  g_assert_cmpuint(fp[0], ==, fp[1]);
  g_assert_cmpuint(fp[0], !=, fp[2]);
}

/* Swarm seeds run twice give the same fingerprint (the generator and the run are both
 * deterministic). */
/* Every scenario the swarm draws is one the loader accepts: a fault that ends after the run
 * once made seed 16329 fail as "bad input" instead of running. Loading is cheap; 20000 seeds. */
static void
test_swarm_scenarios_valid(void)
{
  for (guint64 seed = 1; seed <= 20000; seed++) {
    g_autofree char *text = sim_swarm_scenario(seed);
    g_autoptr(GError) error = NULL;
    g_autoptr(SimScenario) sc = sim_scenario_load_data(text, -1, "swarm", &error);
    if (error != NULL)
      g_error("swarm seed %" G_GUINT64_FORMAT ": %s", seed, error->message);
    g_assert_nonnull(sc);
  }
}

static void
test_swarm_determinism(void)
{
  for (guint64 seed = 1; seed <= 6; seed++) {
    g_autofree char *a = sim_swarm_scenario(seed);
    g_autofree char *b = sim_swarm_scenario(seed);
    g_assert_cmpstr(a, ==, b);
    guint64 fp[2];
    for (int i = 0; i < 2; i++) {
      g_autoptr(GError) error = NULL;
      g_autoptr(SimScenario) sc = sim_scenario_load_data(a, -1, "swarm", &error);
      g_assert_no_error(error);
      g_autoptr(SimWorld) w = sim_world_new(sc, seed);
      sim_world_run(w);
      fp[i] = sim_world_fingerprint(w);
    }
    g_assert_cmpuint(fp[0], ==, fp[1]);
  }
}

/* The swarm turns each driver fault on in about one seed in ten, and a seed without them draws
 * the scenario it drew before they existed (they are drawn last). */
static void
test_swarm_draws_driver_faults(void)
{
  guint kicks = 0, flushes = 0, slow = 0, cancels = 0;
  for (guint64 seed = 1; seed <= 1000; seed++) {
    g_autofree char *text = sim_swarm_scenario(seed);
    g_autoptr(SimScenario) sc = sim_scenario_load_data(text, -1, "swarm", NULL);
    g_assert_nonnull(sc);
    kicks += sc->kick_lost_milli > 0 || sc->kick_duration.kind != SIM_DIST_FIXED;
    flushes += sc->config->flush_socket[0] != '\0';
    slow += sc->bandwidth > 0;
    cancels += sc->login_cancel_milli > 0;
    if (sc->bandwidth > 0) /* a whole handshake fits in the send buffer */
      g_assert_cmpuint(sc->config->output_buffer_size, >=, sc->users * 48);
  }
  g_test_message("of 1000 seeds: %u kick faults, %u flush faults, %u slow links, %u cancels", kicks,
                 flushes, slow, cancels);
  g_assert_cmpuint(kicks, >=, 60);
  g_assert_cmpuint(kicks, <=, 140);
  g_assert_cmpuint(flushes, >=, 60);
  g_assert_cmpuint(flushes, <=, 140);
  g_assert_cmpuint(slow, >=, 60);
  g_assert_cmpuint(slow, <=, 140);
  g_assert_cmpuint(cancels, >=, 60);
  g_assert_cmpuint(cancels, <=, 140);
}

static void
expect_error(const char *json, const char *fragment)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(SimScenario) sc = sim_scenario_load_data(json, -1, "bad.json", &error);
  g_assert_null(sc);
  g_assert_nonnull(error);
  if (strstr(error->message, fragment) == NULL)
    g_error("error \"%s\" does not mention \"%s\"", error->message, fragment);
  g_assert_true(g_str_has_prefix(error->message, "bad.json:")); /* the file first, then where */
}

#define BASE                                                                                      \
  "\"name\": \"x\", \"cluster\": {\"directors\": 3, \"backends\": [\"10.0.2.1-10.0.2.3\"]}, "    \
  "\"workload\": {\"users\": 10}"

static void
test_errors(void)
{
  expect_error("{" BASE ", \"bogus\": 1}", "bogus: unknown field");
  expect_error("{" BASE ", \"duration\": \"ten minutes\"}", "duration: \"ten minutes\" is not a duration");
  expect_error("{\"name\": \"x\", \"cluster\": {\"directors\": 40, \"backends\": [\"10.0.2.1\"]}, "
               "\"workload\": {}}",
               "cluster.directors: 40 is out of range");
  expect_error("{" BASE ", \"events\": [{\"at\": \"1m\", \"type\": \"director-crash\", \"director\": 7}]}",
               "events[0].director: 7 is not a director (the cluster has 3: 0 to 2)");
  expect_error("{" BASE ", \"events\": [{\"at\": \"1m\", \"type\": \"explode\"}]}",
               "events[0].type: \"explode\" is not an event type");
  expect_error("{" BASE ", \"events\": [{\"at\": \"1m\", \"type\": \"host-down\", \"director\": 0, "
               "\"host\": \"10.9.9.9\"}]}",
               "events[0].host: 10.9.9.9 is not a backend of the scenario (cluster.backends or an earlier host-add)");
  expect_error("{" BASE ", \"events\": [{\"at\": \"1m\", \"type\": \"heal\", \"director\": 0}]}",
               "events[0].director: unknown field");
  expect_error("{" BASE ", \"events\": [{\"at\": \"2h\", \"type\": \"heal\"}]}",
               "events[0].at: \"2h\" is out of range");
  expect_error("{" BASE ", \"events\": [{\"at\": \"1m\", \"type\": \"partition\", \"groups\": [[0, 1], [1, 2]]}]}",
               "director 1 is in two groups");
  expect_error("{" BASE ", \"checks\": [{\"type\": \"share\", \"host\": \"10.0.2.1\", \"min\": 50, \"max\": 20}]}",
               "checks[0]: min is above max");
  expect_error("{" BASE ", \"checks\": [{\"type\": \"max-moved\"}]}", "\"max\" is missing");
  expect_error("{\"name\": \"x\", \"cluster\": {\"backends\": [\"10.0.2.x\"]}, \"workload\": {}}",
               "[backends] hosts");
  expect_error("{\"name\": \"x\", \"cluster\": {\"backends\": [\"10.0.2.1\"], \"settings\": "
               "{\"user_expire\": \"5s\"}}, \"workload\": {}}",
               "user_expire");
  expect_error("{" BASE ", \"network\": {\"latency\": {\"kind\": \"gaussian\"}}}",
               "network.latency.kind: \"gaussian\" is not a kind");
  expect_error("{\"name\": \"x\", \"cluster\": {\"directors\": 3, \"backends\": [\"10.0.2.1\"]}, "
               "\"workload\": {\"protocols\": {\"imap\": 50}}}",
               "add up to 50, not 100");
  /* Inputs that must fail loudly, naming the place and the allowed range. */
  expect_error("{" BASE ", \"duration\": \"5m\", \"duration\": \"6m\"}",
               "the key \"duration\" is given twice in one object");
  expect_error("{\"name\": \"x\", \"cluster\": {\"directors\": 3, \"backends\": [\"10.0.2.1\"]}, "
               "\"workload\": {\"users\": 1e12}}",
               "workload.users: 1e+12 is not allowed: a whole number from 1 to");
  expect_error("{" BASE ", \"duration\": \"10m\", \"events\": [{\"at\": \"20m\", \"type\": "
               "\"director-crash\", \"director\": 1}]}",
               "events[0].at: \"20m\" is out of range: 0s to 10m");
  expect_error("{\"name\": \"x\",\n \"duration\": \"10m\" \"cluster\": {}}",
               "bad.json:2:20: expected ',' or '}' after a member, found a string");
  /* Only JSON (RFC 8259): json-glib alone would read these with values nobody wrote. */
  expect_error("{" BASE ", \"seed\": 0100}", "bad.json:1:");
  expect_error("{" BASE ", \"seed\": 0100}", "a number may not start with 0");
  expect_error("{" BASE ", \"seed\": 0x64}", "no 0x");
  expect_error("{" BASE ", \"seed\": .5}", "expected a value, found a number");
  expect_error("{" BASE ", \"description\": 'x'}", "found a single quote");
  expect_error("{" BASE ", \"description\": \"\\q\"}", "\\q is not a JSON escape");
  expect_error("{" BASE " /* note */}", "'/' (JSON has no comments)");
  expect_error("{" BASE "} {}", "more text after the end of the JSON value");
  expect_error("{" BASE ", \"seed\": 1,}", "a ',' before '}' (JSON has no trailing commas)");
  expect_error("{" BASE ", \"description\": \"\\ud800\"}", "\\ud800 is half of a surrogate pair");
  expect_error("{\"name\": \"x\", \"cluster\": {\"backends\": [\"10.0.2.1\"]}, "
               "\"workload\": {\"users\": 100, \"us\\u0065rs\": 5}}",
               "the key \"users\" is given twice in one object");
  expect_error("{" BASE ", \"description\": \"caf\xe9\"}", "bytes that are not UTF-8");
  {
    g_autoptr(GError) error = NULL;
    static const char with_nul[] = "{\"name\": \"x\"}\0garbage";
    g_autoptr(SimScenario) sc =
      sim_scenario_load_data(with_nul, sizeof(with_nul) - 1, "bad.json", &error);
    g_assert_null(sc);
    g_assert_nonnull(strstr(error->message, "bad.json:1:14: a NUL byte"));
  }
  /* Numbers said as written, with their range. */
  expect_error("{\"name\": \"x\", \"cluster\": {\"backends\": [\"10.0.2.1\"]}, "
               "\"workload\": {\"users\": 18446744073709551616}}",
               "18446744073709551616 is too large a whole number");
  expect_error("{\"name\": \"x\", \"cluster\": {\"backends\": [\"10.0.2.1\"]}, "
               "\"workload\": {\"users\": 100.0}}",
               "workload.users: 100.0 is not allowed: a whole number from 1 to");
  expect_error("{" BASE ", \"events\": [{\"at\": \"1m\", \"type\": \"director-crash\", \"director\": -1}]}",
               "events[0].director: -1 is not a director (the cluster has 3: 0 to 2)");
  expect_error("{" BASE ", \"duration\": 600}", "duration: must be a duration written as a string");
  /* The documented defaults may be written out, whatever the run's length. */
  {
    g_autoptr(GError) error = NULL;
    g_autoptr(SimScenario) sc = sim_scenario_load_data(
      "{" BASE ", \"duration\": \"2m\", \"convergence_budget\": \"5m\", "
      "\"checks\": [{\"type\": \"converged\", \"within\": \"5m\"}]}", -1, "ok.json", &error);
    g_assert_no_error(error);
    g_assert_nonnull(sc);
  }
  /* Checks that could say nothing. */
  expect_error("{" BASE ", \"duration\": \"2m\", \"checks\": [{\"type\": \"user-on\", \"at\": \"1m\", "
               "\"user\": \"user1\", \"host\": \"10.0.9.9\"}]}",
               "checks[0].host: 10.0.9.9 is not a backend of the scenario");
  expect_error("{" BASE ", \"duration\": \"2m\", \"checks\": [{\"type\": \"user-on\", \"at\": \"1m\", "
               "\"user\": \"user11\", \"host\": \"10.0.2.1\"}]}",
               "checks[0].user: \"user11\" is not a user of the workload (user1@example.com to user10@example.com)");
  expect_error("{" BASE ", \"checks\": [{\"type\": \"max-moved-between\", \"from\": \"10.0.2.1\", "
               "\"to\": \"10.0.2.1\", \"max\": 0}]}",
               "\"from\" and \"to\" are the same backend");
  expect_error("{" BASE ", \"checks\": [{\"type\": \"max-moved-between\", \"from\": \"10.0.9.1\", "
               "\"max\": 0}]}",
               "checks[0].from: 10.0.9.1 is not a backend");
  expect_error("{" BASE ", \"checks\": [{\"type\": \"director-users\", \"director\": 0, \"min\": 10, "
               "\"max\": 5}]}",
               "min is above max");
  expect_error("{" BASE ", \"checks\": [{\"type\": \"share\", \"host\": \"10.0.2.1\"}]}",
               "give \"min\", \"max\" or both");
  /* Strings that become configuration lines: no line breaks smuggled in. */
  expect_error("{\"name\": \"x\", \"cluster\": {\"backends\": [\"10.0.2.1\\n[health]\\nenabled = true\"]}}",
               "cluster.backends[0]: contains a control character (byte 0x0a at offset 8)");
  expect_error("{\"name\": \"x\", \"cluster\": {\"backends\": [\"10.0.2.1\"], \"settings\": "
               "{\"user_expire\": \"15m\\n[health]\"}}}",
               "cluster.settings.user_expire: contains a control character");
  expect_error("{\"name\": \"x\", \"cluster\": {\"backends\": [\"10.0.2.1\"], \"settings\": "
               "{\"user_expire = 1m\\n#\": \"5m\"}}}",
               "is not a setting name: lower-case letters, digits and '_'");
  expect_error("{\"name\": \"x\", \"cluster\": {\"backends\": [{\"ip\": \"10.0.2.1\", \"tag\": \"eu us\"}]}}",
               "cluster.backends[0].tag: \"eu us\" is not a tag");
  expect_error("{\"name\": \"x\", \"cluster\": {\"backends\": [\"10.0.2.1=0\", \"10.0.2.2=0\"]}, "
               "\"workload\": {\"users\": 10}}",
               "cluster.backends: no backend can take users at the start");
  expect_error("{" BASE ", \"driver\": {\"kick_lost\": 120}}", "driver.kick_lost: out of range");
  expect_error("{" BASE ", \"driver\": {\"flush_failed\": 60, \"flush_lost\": 50}}",
               "driver: flush_failed and flush_lost add up to more than 100");
  expect_error("{" BASE ", \"driver\": {\"kick_delay\": \"1s\"}}", "driver.kick_delay: unknown field");
  expect_error("{\"name\": \"x\", \"cluster\": {\"backends\": [\"10.0.2.1\"]}, \"workload\": "
               "{\"kick_duration\": \"1s\"}, \"driver\": {\"kick_duration\": \"2s\"}}",
               "driver.kick_duration: is also given as workload.kick_duration");
  expect_error("{" BASE ", \"checks\": [{\"type\": \"counter\", \"name\": \"bogus\", \"min\": 1}]}",
               "checks[0].name: \"bogus\" is not a counter (logins_ok, ");
  expect_error("{" BASE ", \"checks\": [{\"type\": \"counter\", \"name\": \"kicks_lost\"}]}",
               "give \"min\", \"max\" or both");
  expect_error("{\"name\": \"x\", \"cluster\": {\"backends\": [\"10.0.2.1@eu\", \"10.0.3.1@us\"]}, "
               "\"workload\": {\"tag\": {\"eu\": 70, \"us\": 20}}}",
               "workload.tag: the shares add up to 90, not 100");
  expect_error("{\"name\": \"x\", \"cluster\": {\"backends\": [\"10.0.2.1@eu\"]}, "
               "\"workload\": {\"tag\": {\"eu\": 50, \"asia\": 50}}}",
               "workload.tag.asia: no backend has tag \"asia\"");
  expect_error("{\"name\": \"x\", \"cluster\": {\"backends\": [\"10.0.2.1@eu\"]}, "
               "\"workload\": {\"tag\": {\"eu\": 150}}}",
               "workload.tag.eu: ");
  expect_error("[1, 2]", "must be a JSON object");
  expect_error("{", "not valid JSON");
}

static int
cmp_names(gconstpointer a, gconstpointer b)
{
  return strcmp(*(char *const *)a, *(char *const *)b);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/sim/scenario-errors", test_errors);
  g_test_add_func("/sim/swarm-determinism", test_swarm_determinism);
  g_test_add_func("/sim/swarm-scenarios-valid", test_swarm_scenarios_valid);
  g_test_add_func("/sim/swarm-draws-driver-faults", test_swarm_draws_driver_faults);
  g_autoptr(GPtrArray) names = g_ptr_array_new_with_free_func(g_free);
  const char *subdirs[] = {"", "regressions", "faults"};
  for (guint k = 0; k < G_N_ELEMENTS(subdirs); k++) {
    g_autofree char *path = g_build_filename(scenario_dir(), subdirs[k], NULL);
    g_autoptr(GDir) dir = g_dir_open(path, 0, NULL);
    g_assert_nonnull(dir);
    const char *name;
    while ((name = g_dir_read_name(dir)) != NULL)
      if (g_str_has_suffix(name, ".json"))
        g_ptr_array_add(names, g_build_filename(subdirs[k], name, NULL));
  }
  g_ptr_array_sort(names, cmp_names);
  g_assert_cmpuint(names->len, >=, 13);
  for (guint i = 0; i < names->len; i++) {
    const char *n = g_ptr_array_index(names, i);
    char *path = g_build_filename(scenario_dir(), n, NULL); /* lives as long as the test */
    g_autofree char *base = g_strndup(n, strlen(n) - 5); /* "regressions/x" stays a path */
    g_autofree char *test = g_strdup_printf("/sim/scenario/%s", base);
    g_test_add_data_func(test, path, run_scenario);
    /* Determinism on every scenario but the one with a million users (it runs above). */
    if (strcmp(base, "large-handshake") != 0 && !g_str_has_prefix(base, "regressions")) {
      g_autofree char *dtest = g_strdup_printf("/sim/determinism/%s", base);
      g_test_add_data_func(dtest, path, determinism);
    }
  }
  return g_test_run();
}

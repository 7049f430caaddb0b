/* fuzz-scenario.c - libFuzzer target for ushersim's scenario loader and its strict JSON check.
 *
 * The bytes go to sim_scenario_load_data as they are. Whatever the strict check accepts,
 * json-glib must read too (the check only narrows what is accepted); a load gives a scenario or
 * an error naming the input, never both. Nothing is run. With the replay driver
 * (replay-main.c) the seed corpus runs in every build.
 */
#include "sim/json-strict.h"
#include "sim/scenario.h"

#include <json-glib/json-glib.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  const char *text = (const char *)data;
  g_autoptr(GError) error = NULL;
  if (sim_json_check(text, size, "fuzz.json", &error)) {
    g_autoptr(JsonParser) parser = json_parser_new();
    g_autoptr(GError) glib_error = NULL;
    gboolean parsed = json_parser_load_from_data(parser, text, (gssize)size, &glib_error);
    g_assert(parsed);
  } else {
    g_assert(error != NULL && g_str_has_prefix(error->message, "fuzz.json:"));
  }
  g_clear_error(&error);
  g_autoptr(SimScenario) sc = sim_scenario_load_data(text, (gssize)size, "fuzz.json", &error);
  g_assert((sc == NULL) != (error == NULL));
  if (sc == NULL)
    g_assert(g_str_has_prefix(error->message, "fuzz.json"));
  return 0;
}

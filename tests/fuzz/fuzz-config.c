/* fuzz-config.c - libFuzzer target for the configuration parser and the backend list grammar.
 *
 * The bytes go to usher_config_parse as they are (it takes a length), and, NUL-terminated, to
 * usher_backends_parse and the duration and size parsers. Everything is freed: a leak or a
 * crash is a bug. With the replay driver (replay-main.c) the seed corpus runs in every build.
 */
#include "libcore/config.h"

#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(UsherConfig) config = usher_config_parse((const char *)data, size, "fuzz.conf", &error);
  g_assert((config == NULL) != (error == NULL));
  if (config != NULL) {
    for (guint i = 1; i < config->backends->len; i++) {
      const UsherBackendConfig *a = g_ptr_array_index(config->backends, i - 1);
      const UsherBackendConfig *b = g_ptr_array_index(config->backends, i);
      g_assert(usher_ip_cmp(&a->ip, &b->ip) < 0);
    }
  }
  g_clear_error(&error);

  g_autofree char *text = g_malloc(size + 1);
  if (size > 0)
    memcpy(text, data, size);
  text[size] = '\0';

  g_autoptr(GPtrArray) backends =
      g_ptr_array_new_with_free_func((GDestroyNotify)usher_backend_config_free);
  gboolean ok = usher_backends_parse(text, backends, &error);
  g_assert(ok == (error == NULL));
  if (!ok)
    g_assert(backends->len == 0);
  g_clear_error(&error);

  guint64 value;
  (void)usher_parse_duration_secs(text, &value);
  (void)usher_parse_size_bytes(text, &value);
  return 0;
}

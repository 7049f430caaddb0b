/* test-util.h - small helpers shared by the core tests. */
#pragma once

#include <glib.h>

/* Full path of a file in tests/data (from $USHER_TEST_DATA, set by meson). */
static inline char *
test_data_path(const char *name)
{
  const char *dir = g_getenv("USHER_TEST_DATA");
  if (dir == NULL)
    g_error("USHER_TEST_DATA is not set; run the tests through meson test");
  return g_build_filename(dir, name, NULL);
}

static inline UsherIp
test_ip(const char *text)
{
  UsherIp ip;
  if (!usher_ip_parse(text, -1, &ip))
    g_error("test_ip: bad IP %s", text);
  return ip;
}

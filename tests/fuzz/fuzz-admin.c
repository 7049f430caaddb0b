/* fuzz-admin.c - arbitrary bytes on the director-admin socket: split into lines as the daemon
 * does (at most USHER_ADMIN_LINE_MAX bytes each), parsed, and the commands that parse run on a
 * standalone director with two backends. Nothing may crash or leak; a line that parses must run,
 * and every change must be answered (at once or by its ADMIN_REPLY effect). */
#include "libcore/admin-proto.h"
#include "libcore/config.h"

#include <stdint.h>
#include <string.h>

static const char config_text[] = "[backends]\nhosts = 127.0.2.1 127.0.2.2@eu\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  static UsherConfig *config;
  if (config == NULL) {
    config = usher_config_parse(config_text, strlen(config_text), "fuzz.conf", NULL);
    g_assert(config != NULL);
  }
  UsherRingAddr self = {.ip = {.family = USHER_IP_V4, .addr = {127, 0, 0, 1}}, .port = 0};
  UsherNow now = {1000000, G_GINT64_CONSTANT(1795393974000000)};
  UsherDirector *d = usher_director_new(config, &self, 1, now, NULL);
  g_assert(d != NULL);
  usher_director_start(d, now);
  g_array_unref(usher_director_take_effects(d));

  UsherLineReader *reader = usher_line_reader_new(USHER_ADMIN_LINE_MAX);
  usher_line_reader_feed(reader, data, size);
  GString *reply = g_string_new(NULL);
  guint64 op = 0, pending = 0;
  char *line;
  gsize len;
  while (usher_line_reader_next(reader, &line, &len) == USHER_LINE_OK) {
    g_auto(UsherAdminCmd) cmd = {0};
    char *error = NULL;
    if (!usher_admin_cmd_parse(line, len, &cmd, &error)) {
      g_assert(error != NULL);
      g_free(error);
      continue;
    }
    g_assert(error == NULL);
    g_string_truncate(reply, 0);
    switch (usher_admin_cmd_run(d, now, ++op, &cmd, reply)) {
    case USHER_ADMIN_RUN_REPLIED:
      g_assert(reply->len > 0 && reply->str[reply->len - 1] == '\n');
      break;
    case USHER_ADMIN_RUN_PENDING:
      pending++;
      break;
    case USHER_ADMIN_RUN_EXTENSION:
      break;
    }
    now.mono_us += 100000;
    now.wall_us += 100000;
    usher_director_on_deadline(d, now);
    GArray *effects = usher_director_take_effects(d);
    for (guint i = 0; i < effects->len; i++) {
      UsherEffect *e = &g_array_index(effects, UsherEffect, i);
      if (e->type == USHER_EFFECT_ADMIN_REPLY) {
        g_assert(pending > 0);
        pending--;
      }
      if (e->type == USHER_EFFECT_KICK)
        usher_director_kick_done(d, now, e->kick.id);
    }
    g_array_unref(effects);
  }
  /* Every change is answered by the time the waits run out. A reset-users with a move limit
   * starts its moves a few at a time, each after the last ones ended: report the kicks done as
   * the proxy would. That is one user per 31 s round at worst, and every user is gone after
   * its 15 minutes of expiry (29 rounds), which ends the reset: 40 rounds always suffice. */
  for (int i = 0; i < 40 && pending > 0; i++) {
    now.mono_us += 31000000;
    now.wall_us += 31000000;
    usher_director_on_deadline(d, now);
    GArray *effects = usher_director_take_effects(d);
    for (guint k = 0; k < effects->len; k++) {
      UsherEffect *e = &g_array_index(effects, UsherEffect, k);
      if (e->type == USHER_EFFECT_ADMIN_REPLY)
        pending--;
      if (e->type == USHER_EFFECT_KICK)
        usher_director_kick_done(d, now, e->kick.id);
    }
    g_array_unref(effects);
  }
  g_assert(pending == 0);
  g_string_free(reply, TRUE);
  usher_line_reader_free(reader);
  usher_director_free(d);
  return 0;
}

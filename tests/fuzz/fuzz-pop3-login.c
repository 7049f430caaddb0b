/* fuzz-pop3-login.c - libFuzzer target for the POP3 pre-login reader.
 *
 * The input is what a client sends before login. It goes through three readers: one fed all at
 * once, one in chunks whose sizes come from the data itself, one byte by byte. A driver policy
 * that depends only on the events (after AUTH with a mechanism, expect SASL lines) runs on each.
 * The three must give the same events, the same commands and the same bytes left pending. Every
 * event must also respect the header's promises: names in upper case, no NUL inside strings,
 * lengths within the limits, and a failed reader that stays failed and empty.
 */
#include "libcore/pop3-login.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
check(gboolean ok, const char *what)
{
  if (!ok) {
    fprintf(stderr, "fuzz-pop3-login: %s\n", what);
    abort();
  }
}

typedef enum {
  FEED_WHOLE,
  FEED_CHUNKS,
  FEED_BYTES,
} FeedMode;

static void
check_cmd(UsherPop3Event event, const UsherPop3Cmd *cmd)
{
  if (event == USHER_POP3_SASL_LINE) {
    check(cmd->name == NULL && cmd->arg != NULL, "a SASL line has a line and no name");
    check(strlen(cmd->arg) <= USHER_POP3_SASL_MAX, "SASL line length");
    return;
  }
  check(cmd->name != NULL, "a command has a name");
  gsize name_len = strlen(cmd->name);
  check(name_len <= USHER_POP3_LINE_MAX + USHER_POP3_SASL_MAX, "name length");
  check(memchr(cmd->name, ' ', name_len) == NULL, "no space in a name");
  for (gsize i = 0; i < name_len; i++)
    check(!g_ascii_islower(cmd->name[i]), "names are in upper case");
  switch (cmd->type) {
  case USHER_POP3_CMD_USER:
  case USHER_POP3_CMD_PASS:
    check(cmd->arg != NULL && cmd->arg[0] != '\0', "USER and PASS have an argument");
    check(strlen(cmd->arg) < USHER_POP3_LINE_MAX, "USER and PASS argument length");
    break;
  case USHER_POP3_CMD_AUTH:
    if (cmd->arg == NULL) {
      check(cmd->initial_response == NULL, "a bare AUTH has no initial response");
      break;
    }
    check(strlen(cmd->arg) >= 1 && strlen(cmd->arg) <= USHER_POP3_MECH_MAX, "mechanism length");
    for (const char *c = cmd->arg; *c != '\0'; c++)
      check(g_ascii_isupper(*c) || g_ascii_isdigit(*c) || *c == '-' || *c == '_',
            "mechanism characters");
    if (cmd->initial_response != NULL)
      check(cmd->initial_response[0] != '\0' &&
                strlen(cmd->initial_response) <= USHER_POP3_SASL_MAX,
            "initial response length");
    break;
  default:
    check(cmd->initial_response == NULL, "only AUTH has an initial response");
    if (cmd->arg != NULL)
      check(strlen(cmd->arg) < USHER_POP3_LINE_MAX, "argument length");
    break;
  }
  if (cmd->type == USHER_POP3_CMD_OTHER) {
    static const char *const known[] = {"CAPA", "USER", "PASS", "AUTH", "STLS", "QUIT", "NOOP"};
    for (gsize i = 0; i < G_N_ELEMENTS(known); i++)
      check(strcmp(cmd->name, known[i]) != 0, "a known name is not OTHER");
  }
}

/* One run: a transcript of every event and, at the end, what is left pending. */
static GString *
run(const uint8_t *data, size_t size, FeedMode mode)
{
  g_autoptr(UsherPop3Reader) reader = usher_pop3_reader_new();
  GString *out = g_string_new(NULL);
  int sasl_left = 0;
  gboolean failed = FALSE;
  guint32 state = (guint32)size * 2654435761u;
  size_t pos = 0;

  for (;;) {
    size_t n = size - pos;
    if (mode == FEED_BYTES)
      n = MIN(n, 1);
    else if (mode == FEED_CHUNKS && pos < size) {
      state = state * 1664525u + 1013904223u + data[pos];
      n = MIN(n, (size_t)(1 + (state >> 26)));
    }
    usher_pop3_reader_feed(reader, data + pos, n);
    pos += n;

    while (!failed) {
      if (sasl_left > 0)
        usher_pop3_reader_expect_sasl(reader);
      g_auto(UsherPop3Cmd) cmd = {0};
      const char *why = NULL;
      UsherPop3Event event = usher_pop3_reader_next(reader, &cmd, &why);
      check(usher_pop3_event_to_string(event)[0] != '?', "event name");
      if (event == USHER_POP3_NEED_MORE) {
        check(why == NULL && cmd.name == NULL && cmd.arg == NULL, "NEED_MORE fills nothing");
        /* At NEED_MORE all that is pending is one unfinished line, within the limits. */
        check(usher_pop3_reader_pending(reader) <= USHER_POP3_LINE_MAX + USHER_POP3_SASL_MAX + 1,
              "a kept unfinished line is bounded");
        break;
      }
      g_string_append_printf(out, "%s", usher_pop3_event_to_string(event));
      if (event == USHER_POP3_BAD || event == USHER_POP3_FAIL) {
        check(why != NULL && cmd.name == NULL && cmd.arg == NULL, "BAD and FAIL give a why");
        g_string_append_printf(out, " %s\n", why);
        sasl_left = 0;
        failed = event == USHER_POP3_FAIL;
        continue;
      }
      check(why == NULL, "no why with a command");
      check_cmd(event, &cmd);
      g_string_append_printf(out, " %d %s|%s|%s\n", cmd.type, cmd.name ? cmd.name : "-",
                             cmd.arg ? cmd.arg : "-",
                             cmd.initial_response ? cmd.initial_response : "-");
      if (event == USHER_POP3_SASL_LINE)
        sasl_left = strcmp(cmd.arg, "*") == 0 ? 0 : sasl_left - 1;
      else if (cmd.type == USHER_POP3_CMD_AUTH && cmd.arg != NULL)
        sasl_left = (strcmp(cmd.arg, "LOGIN") == 0 ? 2 : 1) - (cmd.initial_response ? 1 : 0);
    }
    if (pos >= size)
      break;
  }

  if (failed) {
    usher_pop3_reader_feed(reader, data, size);
    g_auto(UsherPop3Cmd) cmd = {0};
    const char *why = NULL;
    check(usher_pop3_reader_next(reader, &cmd, &why) == USHER_POP3_FAIL && why != NULL,
          "the failure sticks");
    check(usher_pop3_reader_pending(reader) == 0, "a failed reader holds nothing");
  }
  g_string_append_printf(out, "pending %" G_GSIZE_FORMAT, usher_pop3_reader_pending(reader));
  return out;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  g_autoptr(GString) whole = run(data, size, FEED_WHOLE);
  g_autoptr(GString) chunks = run(data, size, FEED_CHUNKS);
  check(g_string_equal(whole, chunks), "whole and chunked feeding agree");
  g_autoptr(GString) bytes = run(data, size, FEED_BYTES);
  check(g_string_equal(whole, bytes), "whole and byte-by-byte feeding agree");
  return 0;
}

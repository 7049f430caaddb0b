/* fuzz-sieve-login.c - libFuzzer target for the ManageSieve pre-login reader.
 *
 * The input is what a client sends before it is authenticated. Three readers get it: all at
 * once, in chunks whose sizes come from the data, byte by byte. They must give the same events,
 * the same commands and the same bytes left pending. Every command must keep the header's
 * promises: an upper-case name or none (a SASL response, then with one string first), at most
 * USHER_SIEVE_ARGS_MAX arguments, no NUL in them; a failed reader stays failed.
 */
#include "libcore/sieve-login.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
check(gboolean ok, const char *what)
{
  if (!ok) {
    fprintf(stderr, "fuzz-sieve-login: %s\n", what);
    abort();
  }
}

typedef enum {
  FEED_WHOLE,
  FEED_CHUNKS,
  FEED_BYTES,
} FeedMode;

static GString *
run(const uint8_t *data, size_t size, FeedMode mode)
{
  g_autoptr(UsherSieveReader) reader = usher_sieve_reader_new();
  GString *out = g_string_new(NULL);
  guint32 state = (guint32)size * 2654435761u;
  size_t pos = 0;
  gboolean failed = FALSE;
  for (;;) {
    size_t n = size - pos;
    if (mode == FEED_BYTES)
      n = MIN(n, 1);
    else if (mode == FEED_CHUNKS && pos < size) {
      state = state * 1664525u + 1013904223u + data[pos];
      n = MIN(n, (size_t)(1 + (state >> 26)));
    }
    usher_sieve_reader_feed(reader, data + pos, n);
    pos += n;
    while (!failed) {
      g_auto(UsherSieveCmd) cmd = {0};
      const char *why = NULL;
      UsherSieveEvent ev = usher_sieve_reader_next(reader, &cmd, &why);
      if (ev == USHER_SIEVE_NEED_MORE) {
        check(cmd.name == NULL && cmd.args == NULL && why == NULL, "NEED_MORE fills nothing");
        gsize pending;
        (void)usher_sieve_reader_peek_pending(reader, &pending);
        check(pending <= USHER_SIEVE_LINE_MAX + 2, "an unfinished line is bounded");
        break;
      }
      if (ev == USHER_SIEVE_BAD || ev == USHER_SIEVE_FAIL) {
        check(why != NULL && cmd.name == NULL && cmd.args == NULL, "BAD and FAIL give a why");
        g_string_append_printf(out, "%s %s\n", ev == USHER_SIEVE_BAD ? "BAD" : "FAIL", why);
        failed = ev == USHER_SIEVE_FAIL;
        continue;
      }
      check(cmd.args != NULL && cmd.args->len <= USHER_SIEVE_ARGS_MAX, "argument count");
      if (cmd.name != NULL)
        for (const char *c = cmd.name; *c != '\0'; c++)
          check(!g_ascii_islower(*c), "names are in upper case");
      else
        check(cmd.args->len >= 1, "a SASL response has its string");
      g_string_append(out, cmd.name != NULL ? cmd.name : "-");
      for (guint i = 0; i < cmd.args->len; i++)
        g_string_append_printf(out, "|%s", (const char *)g_ptr_array_index(cmd.args, i));
      g_string_append_c(out, '\n');
    }
    if (pos >= size)
      break;
  }
  if (failed) {
    g_auto(UsherSieveCmd) cmd = {0};
    const char *why = NULL;
    check(usher_sieve_reader_next(reader, &cmd, &why) == USHER_SIEVE_FAIL, "the failure sticks");
  }
  gsize pending;
  (void)usher_sieve_reader_peek_pending(reader, &pending);
  g_string_append_printf(out, "pending %" G_GSIZE_FORMAT, pending);
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

/* test-sieve-login.c - the ManageSieve pre-login reader, fed at every split. */
#include "libcore/sieve-login.h"

#include <string.h>

/* A transcript of every event: "NAME|arg|arg;" (name "-" for a SASL response), "BAD:why;",
 * "FAIL;" and what is left pending. */
static char *
transcript(const char *input, gsize len, gsize step)
{
  g_autoptr(UsherSieveReader) r = usher_sieve_reader_new();
  GString *out = g_string_new(NULL);
  gsize fed = 0;
  for (;;) {
    g_auto(UsherSieveCmd) cmd = {0};
    const char *why;
    UsherSieveEvent ev = usher_sieve_reader_next(r, &cmd, &why);
    if (ev == USHER_SIEVE_NEED_MORE) {
      if (fed == len)
        break;
      gsize chunk = step == 0 ? len - fed : MIN(step, len - fed);
      usher_sieve_reader_feed(r, (const guint8 *)input + fed, chunk);
      fed += chunk;
      continue;
    }
    if (ev == USHER_SIEVE_FAIL) {
      g_string_append(out, "FAIL;");
      break;
    }
    if (ev == USHER_SIEVE_BAD) {
      g_string_append_printf(out, "BAD:%s;", why);
      continue;
    }
    g_string_append(out, cmd.name != NULL ? cmd.name : "-");
    for (guint i = 0; i < cmd.args->len; i++)
      g_string_append_printf(out, "|%s", (const char *)g_ptr_array_index(cmd.args, i));
    g_string_append_c(out, ';');
  }
  gsize pending;
  (void)usher_sieve_reader_peek_pending(r, &pending);
  g_string_append_printf(out, "pending %" G_GSIZE_FORMAT, pending);
  return g_string_free(out, FALSE);
}

static char *
every_split(const char *input, gsize len)
{
  char *whole = transcript(input, len, 0);
  /* Every piece size for the short inputs; a spread of sizes for the long ones. */
  for (gsize step = 1; step <= len; step = len <= 512 ? step + 1 : step * 3 + 1) {
    g_autofree char *t = transcript(input, len, step);
    g_assert_cmpstr(t, ==, whole);
  }
  return whole;
}

static void
test_commands(void)
{
  const char *in = "capability\r\nAUTHENTICATE \"PLAIN\" \"AHVzZXIxAHBhc3M=\"\r\n"
                   "Authenticate \"PLAIN\" {16+}\r\nAHVzZXIxAHBhc3M=\r\n"
                   "AUTHENTICATE \"PLAIN\"\r\n\"AHVzZXIxAHBhc3M=\"\r\n{1+}\r\n*\r\n"
                   "NOOP \"tag \\\"x\\\"\"\r\nSTARTTLS\nLOGOUT  \r\n";
  g_autofree char *t = every_split(in, strlen(in));
  g_assert_cmpstr(t, ==,
                  "CAPABILITY;AUTHENTICATE|PLAIN|AHVzZXIxAHBhc3M=;"
                  "AUTHENTICATE|PLAIN|AHVzZXIxAHBhc3M=;AUTHENTICATE|PLAIN;-|AHVzZXIxAHBhc3M=;-|*;"
                  "NOOP|tag \"x\";STARTTLS;LOGOUT;pending 0");
}

static void
test_bad(void)
{
  const char *in = "\r\nFOO {5}\r\nNOOP \"a\\b\"\r\nNOOP\"x\"\r\n(x)\r\nNOOP \"a\rb\"\r\n"
                   "LOGOUT\r\n";
  g_autofree char *t = every_split(in, strlen(in));
  g_assert_cmpstr(t, ==,
                  "BAD:an empty line;BAD:a literal is {N+} (non-synchronising) from a client;"
                  "BAD:a bad escape in a quoted string;BAD:arguments are separated by a space;"
                  "BAD:a command starts with its name;BAD:a quoted string holds CR, LF or NUL;"
                  "LOGOUT;pending 0");
  /* A NUL inside a literal: that line is bad, the next is read. */
  const char nul[] = "NOOP {3+}\r\na\0b\r\nNOOP\r\n";
  g_autofree char *n = every_split(nul, sizeof(nul) - 1);
  g_assert_cmpstr(n, ==, "BAD:a literal holds a NUL byte;NOOP;pending 0");
}

static void
test_limits(void)
{
  GString *in = g_string_new("NOOP \"");
  for (int i = 0; i < USHER_SIEVE_LINE_MAX; i++)
    g_string_append_c(in, 'x');
  g_string_append(in, "\"\r\n");
  g_autofree char *t = every_split(in->str, in->len);
  g_assert_cmpstr(t, ==, "FAIL;pending 0");
  g_string_free(in, TRUE);
  g_autofree char *big = every_split("NOOP {99999999+}\r\nLOGOUT\r\n", 26);
  g_assert_cmpstr(big, ==, "BAD:a literal larger than a line may be;LOGOUT;pending 0");
  GString *many = g_string_new("NOOP");
  for (int i = 0; i <= USHER_SIEVE_ARGS_MAX; i++)
    g_string_append(many, " 1");
  g_string_append(many, "\r\nLOGOUT\r\n");
  g_autofree char *m = every_split(many->str, many->len);
  g_assert_cmpstr(m, ==, "BAD:too many arguments;LOGOUT;pending 0");
  g_string_free(many, TRUE);
}

static void
test_pending(void)
{
  /* What follows the last complete line is kept for the backend. */
  g_autofree char *t = every_split("LOGOUT\r\nPUTSCRIPT", 17);
  g_assert_cmpstr(t, ==, "LOGOUT;pending 9");
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/core/sieve-login/commands", test_commands);
  g_test_add_func("/core/sieve-login/bad", test_bad);
  g_test_add_func("/core/sieve-login/limits", test_limits);
  g_test_add_func("/core/sieve-login/pending", test_pending);
  return g_test_run();
}

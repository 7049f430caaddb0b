/* test-pop3-login.c - the POP3 pre-login reader: every command form, refusals, each limit with
 * input one byte inside and one byte over it, and for every sample the same events whether it is
 * fed whole, split at any one offset, or byte by byte. */
#include "libcore/pop3-login.h"

#include <string.h>

/* A sample with its length, so that samples may hold NUL bytes. */
#define S(text) text, sizeof(text) - 1

/* What a driver does between events, the same for every split: after AUTH with a mechanism it
 * sends "+ " and expects one SASL line (two for LOGIN, one less if an initial response came);
 * "*" or a refused SASL line ends the exchange. */
typedef struct {
  int sasl_left;
} Driver;

static void
driver_before(Driver *d, UsherPop3Reader *reader)
{
  if (d->sasl_left > 0)
    usher_pop3_reader_expect_sasl(reader);
}

static void
driver_after(Driver *d, UsherPop3Event event, const UsherPop3Cmd *cmd)
{
  if (event == USHER_POP3_SASL_LINE)
    d->sasl_left = strcmp(cmd->arg, "*") == 0 ? 0 : d->sasl_left - 1;
  else if (event == USHER_POP3_BAD)
    d->sasl_left = 0;
  else if (event == USHER_POP3_COMMAND && cmd->type == USHER_POP3_CMD_AUTH && cmd->arg != NULL)
    d->sasl_left = (strcmp(cmd->arg, "LOGIN") == 0 ? 2 : 1) - (cmd->initial_response ? 1 : 0);
}

static void
append_value(GString *out, const char *key, const char *value)
{
  if (value == NULL) {
    g_string_append_printf(out, " %s=NULL", key);
    return;
  }
  g_autofree char *escaped = g_strescape(value, NULL);
  g_string_append_printf(out, " %s=\"%s\"", key, escaped);
}

/* Takes one event and appends a line for it (nothing for NEED_MORE). */
static UsherPop3Event
take_event(UsherPop3Reader *reader, Driver *d, GString *out)
{
  g_auto(UsherPop3Cmd) cmd = {0};
  const char *why = NULL;
  driver_before(d, reader);
  UsherPop3Event event = usher_pop3_reader_next(reader, &cmd, &why);
  if (event == USHER_POP3_NEED_MORE) {
    g_assert_null(why);
    g_assert_null(cmd.name);
    g_assert_null(cmd.arg);
    return event;
  }
  g_string_append(out, usher_pop3_event_to_string(event));
  switch (event) {
  case USHER_POP3_COMMAND:
    g_assert_null(why);
    g_assert_nonnull(cmd.name);
    g_string_append_printf(out, " %s/%d", cmd.name, cmd.type);
    append_value(out, "arg", cmd.arg);
    if (cmd.type == USHER_POP3_CMD_AUTH)
      append_value(out, "ir", cmd.initial_response);
    else
      g_assert_null(cmd.initial_response);
    break;
  case USHER_POP3_SASL_LINE:
    g_assert_null(why);
    g_assert_null(cmd.name);
    g_assert_nonnull(cmd.arg);
    append_value(out, "line", cmd.arg);
    break;
  case USHER_POP3_BAD:
  case USHER_POP3_FAIL:
    g_assert_nonnull(why);
    g_assert_null(cmd.name);
    g_assert_null(cmd.arg);
    g_assert_null(cmd.initial_response);
    g_string_append_printf(out, " %s", why);
    break;
  case USHER_POP3_NEED_MORE:
    g_assert_not_reached();
  }
  g_string_append_c(out, '\n');
  driver_after(d, event, &cmd);
  return event;
}

/* Feeds data in chunks: first `first` bytes, then `step` bytes at a time (0: all the rest), and
 * takes events after each chunk. The transcript ends with the bytes left pending. */
static char *
run(const char *data, gsize len, gsize first, gsize step)
{
  g_autoptr(UsherPop3Reader) reader = usher_pop3_reader_new();
  g_autoptr(GString) out = g_string_new(NULL);
  Driver d = {0};
  gboolean failed = FALSE;
  gsize pos = 0;
  gsize n = MIN(first, len);
  for (;;) {
    usher_pop3_reader_feed(reader, data + pos, n);
    pos += n;
    UsherPop3Event event;
    while (!failed && (event = take_event(reader, &d, out)) != USHER_POP3_NEED_MORE)
      failed = event == USHER_POP3_FAIL;
    if (pos >= len)
      break;
    n = step == 0 ? len - pos : MIN(step, len - pos);
  }
  if (failed) {
    /* The failure sticks and the reader holds nothing more. */
    g_auto(UsherPop3Cmd) cmd = {0};
    const char *why = NULL;
    g_assert_cmpuint(usher_pop3_reader_pending(reader), ==, 0);
    usher_pop3_reader_feed(reader, "CAPA\r\n", 6);
    g_assert_cmpint(usher_pop3_reader_next(reader, &cmd, &why), ==, USHER_POP3_FAIL);
    g_assert_nonnull(why);
    g_assert_null(cmd.name);
    g_assert_cmpuint(usher_pop3_reader_pending(reader), ==, 0);
  }
  g_string_append_printf(out, "pending=%" G_GSIZE_FORMAT, usher_pop3_reader_pending(reader));
  return g_string_free(g_steal_pointer(&out), FALSE);
}

/* The events of data fed whole, checked against every split and byte-by-byte feeding. */
static char *
events(const char *data, gsize len)
{
  char *whole = run(data, len, len, 0);
  /* Under valgrind (USHER_TEST_SMALL), long samples are split at every 61st offset and at every
   * offset near their ends; other builds try them all. */
  gsize stride = g_getenv("USHER_TEST_SMALL") != NULL && len > 512 ? 61 : 1;
  for (gsize cut = 0; cut <= len; cut++) {
    if (cut % stride != 0 && cut > 64 && cut + 64 < len)
      continue;
    g_autofree char *split = run(data, len, cut, 0);
    if (strcmp(split, whole) != 0)
      g_error("split at %" G_GSIZE_FORMAT " gives\n%s\ninstead of\n%s", cut, split, whole);
  }
  g_autofree char *bytewise = run(data, len, 0, 1);
  g_assert_cmpstr(bytewise, ==, whole);
  return whole;
}

static void
check(const char *data, gsize len, const char *expect)
{
  g_autofree char *got = events(data, len);
  g_assert_cmpstr(got, ==, expect);
}

static void
test_commands(void)
{
  check(S("CAPA\r\nUSER bob\r\nPASS secret\r\nQUIT\r\n"),
        "COMMAND CAPA/1 arg=NULL\n"
        "COMMAND USER/2 arg=\"bob\"\n"
        "COMMAND PASS/3 arg=\"secret\"\n"
        "COMMAND QUIT/6 arg=NULL\n"
        "pending=0");
  /* Names are case-insensitive; a bare LF ends a line too; the name of a command the reader
   * does not know comes back in upper case. */
  check(S("capa\nUser Bob@Example.COM\nsTlS\r\nnoop\nQuit\n"),
        "COMMAND CAPA/1 arg=NULL\n"
        "COMMAND USER/2 arg=\"Bob@Example.COM\"\n"
        "COMMAND STLS/5 arg=NULL\n"
        "COMMAND NOOP/7 arg=NULL\n"
        "COMMAND QUIT/6 arg=NULL\n"
        "pending=0");
  /* The argument is the rest of the line, spaces and all, as Dovecot takes it. */
  check(S("USER  bob smith \r\nPASS  pass word with spaces  \r\n"),
        "COMMAND USER/2 arg=\" bob smith \"\n"
        "COMMAND PASS/3 arg=\" pass word with spaces  \"\n"
        "pending=0");
  /* Only one CR before the LF is the line end; a CR inside stays data. UTF-8 passes. */
  check(S("USER bob\r\r\nPASS a\rb\nUSER j\xc3\xbcrgen\r\n"),
        "COMMAND USER/2 arg=\"bob\\r\"\n"
        "COMMAND PASS/3 arg=\"a\\rb\"\n"
        "COMMAND USER/2 arg=\"j\\303\\274rgen\"\n"
        "pending=0");
  /* Arguments after CAPA, STLS, QUIT, NOOP are given back (Dovecot ignores them). */
  check(S("CAPA x\r\nSTLS \r\nQUIT now\r\n"),
        "COMMAND CAPA/1 arg=\"x\"\n"
        "COMMAND STLS/5 arg=\"\"\n"
        "COMMAND QUIT/6 arg=\"now\"\n"
        "pending=0");
  /* A partial line stays pending. */
  check(S("CAPA\r\nUSER bo"), "COMMAND CAPA/1 arg=NULL\npending=7");
  check(S("CAPA\r"), "pending=5");
  check(S(""), "pending=0");
}

static void
test_other(void)
{
  /* APOP cannot be proxied (the challenge is the backend's), XCLIENT is what Usher sends, not
   * what it takes; neither is parsed. An empty line is an unknown command for Dovecot too. */
  check(S("APOP bob c4c9334bac560ecc979e58001b3e22fb\r\nXCLIENT ADDR=10.0.0.1\r\n\r\n"
          "TOP 1 10\r\nSTAT\nXOIP 1.2.3.4\r\n USER bob\r\n"),
        "COMMAND APOP/0 arg=\"bob c4c9334bac560ecc979e58001b3e22fb\"\n"
        "COMMAND XCLIENT/0 arg=\"ADDR=10.0.0.1\"\n"
        "COMMAND /0 arg=NULL\n"
        "COMMAND TOP/0 arg=\"1 10\"\n"
        "COMMAND STAT/0 arg=NULL\n"
        "COMMAND XOIP/0 arg=\"1.2.3.4\"\n"
        "COMMAND /0 arg=\"USER bob\"\n"
        "pending=0");
  /* A tab is not a separator. */
  check(S("USER\tbob\r\n"), "COMMAND USER\tBOB/0 arg=NULL\npending=0");
}

static void
test_auth(void)
{
  /* The mechanism list: "AUTH" alone (RFC 5034) or with an empty argument (Outlook). */
  check(S("AUTH\r\nauth \r\n"),
        "COMMAND AUTH/4 arg=NULL ir=NULL\n"
        "COMMAND AUTH/4 arg=NULL ir=NULL\n"
        "pending=0");
  /* PLAIN with a continuation line after "+ ". */
  check(S("AUTH PLAIN\r\nAGJvYgBzZWNyZXQ=\r\nCAPA\r\n"),
        "COMMAND AUTH/4 arg=\"PLAIN\" ir=NULL\n"
        "SASL_LINE line=\"AGJvYgBzZWNyZXQ=\"\n"
        "COMMAND CAPA/1 arg=NULL\n"
        "pending=0");
  /* An initial response (RFC 5034 section 4), "=" for an empty one; the mechanism comes back
   * in upper case; an empty one after the space is none, as for Dovecot. */
  check(S("auth plain AGJvYgBzZWNyZXQ=\r\nAUTH External =\r\nAUTH PLAIN \r\n\r\n"),
        "COMMAND AUTH/4 arg=\"PLAIN\" ir=\"AGJvYgBzZWNyZXQ=\"\n"
        "COMMAND AUTH/4 arg=\"EXTERNAL\" ir=\"=\"\n"
        "COMMAND AUTH/4 arg=\"PLAIN\" ir=NULL\n"
        "SASL_LINE line=\"\"\n"
        "pending=0");
  /* LOGIN: two continuation lines; a SASL line that looks like a command is still SASL. */
  check(S("AUTH LOGIN\r\nYm9i\r\nQUIT\r\nQUIT\r\n"),
        "COMMAND AUTH/4 arg=\"LOGIN\" ir=NULL\n"
        "SASL_LINE line=\"Ym9i\"\n"
        "SASL_LINE line=\"QUIT\"\n"
        "COMMAND QUIT/6 arg=NULL\n"
        "pending=0");
  /* "*" cancels (the driver stops expecting SASL lines). */
  check(S("AUTH XOAUTH2\r\n*\r\nCAPA\r\n"),
        "COMMAND AUTH/4 arg=\"XOAUTH2\" ir=NULL\n"
        "SASL_LINE line=\"*\"\n"
        "COMMAND CAPA/1 arg=NULL\n"
        "pending=0");
  /* The initial response is the rest of the line, spaces included (base64 decoding refuses
   * it later). A mechanism name of 20 bytes with "-" and "_" is fine. */
  check(S("AUTH SCRAM-SHA-1-PLUS_abc a b\r\n"),
        "COMMAND AUTH/4 arg=\"SCRAM-SHA-1-PLUS_ABC\" ir=\"a b\"\n"
        "pending=0");
}

static void
test_bad(void)
{
  /* Missing arguments, malformed mechanism names (bad byte, 21 bytes, empty), NUL bytes. The
   * line is dropped and the next one parses. */
  check(S("USER\r\nUSER \r\nPASS\r\nPASS \r\nAUTH PL@IN\r\nAUTH SCRAM-SHA-1-PLUS_abcd\r\n"
          "AUTH  PLAIN\r\nUSER a\0b\r\n\0\r\nCAPA\r\n"),
        "BAD No username given.\n"
        "BAD No username given.\n"
        "BAD No password given.\n"
        "BAD No password given.\n"
        "BAD Invalid SASL mechanism name.\n"
        "BAD Invalid SASL mechanism name.\n"
        "BAD Invalid SASL mechanism name.\n"
        "BAD NUL byte in the line.\n"
        "BAD NUL byte in the line.\n"
        "COMMAND CAPA/1 arg=NULL\n"
        "pending=0");
  /* A SASL line with a NUL is refused too (and ends the exchange for the driver). */
  check(S("AUTH PLAIN\r\nAG\0b\r\nCAPA\r\n"),
        "COMMAND AUTH/4 arg=\"PLAIN\" ir=NULL\n"
        "BAD NUL byte in the line.\n"
        "COMMAND CAPA/1 arg=NULL\n"
        "pending=0");
}

/* A string of n copies of c. */
static char *
repeat(char c, gsize n)
{
  char *s = g_malloc(n + 1);
  memset(s, c, n);
  s[n] = '\0';
  return s;
}

static void
check_str(const char *data, const char *expect)
{
  check(data, strlen(data), expect);
}

static void
test_line_limit(void)
{
  g_autofree char *name_ok = repeat('a', USHER_POP3_LINE_MAX - 5);
  g_autofree char *name_over = repeat('a', USHER_POP3_LINE_MAX - 4);

  /* USHER_POP3_LINE_MAX bytes before CRLF (or LF) is fine... */
  g_autofree char *ok = g_strdup_printf("USER %s\r\nCAPA\r\n", name_ok);
  g_autofree char *expect_ok =
    g_strdup_printf("COMMAND USER/2 arg=\"%s\"\nCOMMAND CAPA/1 arg=NULL\npending=0", name_ok);
  check_str(ok, expect_ok);
  g_autofree char *ok_lf = g_strdup_printf("USER %s\n", name_ok);
  g_autofree char *expect_ok_lf = g_strdup_printf("COMMAND USER/2 arg=\"%s\"\npending=0", name_ok);
  check_str(ok_lf, expect_ok_lf);
  /* ... and a line at the limit may wait for its LF behind its CR. */
  g_autofree char *ok_cr = g_strdup_printf("USER %s\r", name_ok);
  g_autofree char *expect_ok_cr = g_strdup_printf("pending=%d", USHER_POP3_LINE_MAX + 1);
  check_str(ok_cr, expect_ok_cr);

  /* One byte more fails, with its LF there or not, and whatever followed is dropped. */
  g_autofree char *over = g_strdup_printf("USER %s\r\nCAPA\r\n", name_over);
  check_str(over, "FAIL Line too long.\npending=0");
  g_autofree char *over_lf = g_strdup_printf("USER %s\n", name_over);
  check_str(over_lf, "FAIL Line too long.\npending=0");
  /* Without the LF: LINE_MAX + 1 bytes could still end in CR LF; LINE_MAX + 2 cannot. */
  g_autofree char *wait = g_strdup_printf("USER %s", name_over);
  g_autofree char *expect_wait = g_strdup_printf("pending=%d", USHER_POP3_LINE_MAX + 1);
  check_str(wait, expect_wait);
  g_autofree char *early = g_strdup_printf("USER %sa", name_over);
  check_str(early, "FAIL Line too long.\npending=0");

  /* The longer AUTH limit is for AUTH lines only: the same length after another name fails. */
  g_autofree char *pass = g_strdup_printf("PASS %s\r\n", name_over);
  check_str(pass, "FAIL Line too long.\npending=0");
  g_autofree char *auth_long_mech = g_strdup_printf("AUTH %s\r\n", name_over);
  check_str(auth_long_mech, "BAD Invalid SASL mechanism name.\npending=0");
}

static void
test_sasl_limit(void)
{
  g_autofree char *resp_ok = repeat('A', USHER_POP3_SASL_MAX);
  g_autofree char *resp_over = repeat('A', USHER_POP3_SASL_MAX + 1);

  /* An initial response of USHER_POP3_SASL_MAX bytes, whatever the mechanism's length. */
  g_autofree char *ir_ok = g_strdup_printf("AUTH XOAUTH2 %s\r\n", resp_ok);
  g_autofree char *expect_ir_ok =
    g_strdup_printf("COMMAND AUTH/4 arg=\"XOAUTH2\" ir=\"%s\"\npending=0", resp_ok);
  check_str(ir_ok, expect_ir_ok);
  g_autofree char *ir_over = g_strdup_printf("AUTH XOAUTH2 %s\r\nCAPA\r\n", resp_over);
  check_str(ir_over, "FAIL SASL response too long.\npending=0");
  g_autofree char *ir_over_short_mech = g_strdup_printf("auth X %s\n", resp_over);
  check_str(ir_over_short_mech, "FAIL SASL response too long.\npending=0");

  /* A continuation line of USHER_POP3_SASL_MAX bytes, and one byte more. */
  g_autofree char *line_ok = g_strdup_printf("AUTH PLAIN\r\n%s\r\n", resp_ok);
  g_autofree char *expect_line_ok = g_strdup_printf(
    "COMMAND AUTH/4 arg=\"PLAIN\" ir=NULL\nSASL_LINE line=\"%s\"\npending=0", resp_ok);
  check_str(line_ok, expect_line_ok);
  g_autofree char *line_over = g_strdup_printf("AUTH PLAIN\r\n%s\r\n", resp_over);
  check_str(line_over, "COMMAND AUTH/4 arg=\"PLAIN\" ir=NULL\nFAIL Line too long.\npending=0");
  g_autofree char *line_early = g_strdup_printf("AUTH PLAIN\r\n%sA", resp_over);
  check_str(line_early, "COMMAND AUTH/4 arg=\"PLAIN\" ir=NULL\nFAIL Line too long.\npending=0");

  /* An AUTH line longer than both limits together fails before its end arrives. */
  g_autofree char *huge = repeat('A', USHER_POP3_LINE_MAX + USHER_POP3_SASL_MAX);
  g_autofree char *auth_huge = g_strdup_printf("AUTH %s", huge);
  check_str(auth_huge, "FAIL Line too long.\npending=0");
  g_autofree char *auth_wait = g_strdup_printf("AUTH %s", huge + 5);
  g_autofree char *expect_wait =
    g_strdup_printf("pending=%d", USHER_POP3_LINE_MAX + USHER_POP3_SASL_MAX);
  check_str(auth_wait, expect_wait);
}

static void
test_many_lines(void)
{
  /* Enough pipelined lines for the reader to move its pending bytes to the front. */
  g_autoptr(GString) in = g_string_new(NULL);
  g_autoptr(GString) expect = g_string_new(NULL);
  for (guint i = 0; i < 70; i++) {
    g_string_append_printf(in, "USER %060u\r\n", i);
    g_string_append_printf(expect, "COMMAND USER/2 arg=\"%060u\"\n", i);
  }
  g_string_append(in, "PASS p");
  g_string_append(expect, "pending=6");
  check(in->str, in->len, expect->str);
}

static void
test_stls_pending(void)
{
  /* Plaintext pipelined behind STLS stays pending for the proxy to see and refuse. */
  g_autoptr(UsherPop3Reader) reader = usher_pop3_reader_new();
  g_auto(UsherPop3Cmd) cmd = {0};
  const char *why = NULL;
  usher_pop3_reader_feed(reader, "STLS\r\nUSER evil\r\n", 17);
  g_assert_cmpuint(usher_pop3_reader_pending(reader), ==, 17);
  g_assert_cmpint(usher_pop3_reader_next(reader, &cmd, &why), ==, USHER_POP3_COMMAND);
  g_assert_cmpint(cmd.type, ==, USHER_POP3_CMD_STLS);
  g_assert_cmpuint(usher_pop3_reader_pending(reader), ==, 11);
  gsize n = 0;
  const guint8 *rest = usher_pop3_reader_peek_pending(reader, &n);
  g_assert_cmpmem(rest, n, "USER evil\r\n", 11);
  usher_pop3_cmd_clear(&cmd);
  g_assert_cmpint(usher_pop3_reader_next(reader, &cmd, &why), ==, USHER_POP3_COMMAND);
  g_assert_cmpuint(usher_pop3_reader_pending(reader), ==, 0);
  usher_pop3_cmd_clear(&cmd);
  g_assert_cmpint(usher_pop3_reader_next(reader, &cmd, &why), ==, USHER_POP3_NEED_MORE);
}

static void
test_expect_sasl_once(void)
{
  /* expect_sasl() marks one line; the one after it is a command again. Calling it twice before
   * that line is the same as once. */
  g_autoptr(UsherPop3Reader) reader = usher_pop3_reader_new();
  g_auto(UsherPop3Cmd) cmd = {0};
  const char *why = NULL;
  usher_pop3_reader_feed(reader, "USER x\r\nUSER y\r\n", 16);
  usher_pop3_reader_expect_sasl(reader);
  usher_pop3_reader_expect_sasl(reader);
  g_assert_cmpint(usher_pop3_reader_next(reader, &cmd, &why), ==, USHER_POP3_SASL_LINE);
  g_assert_cmpstr(cmd.arg, ==, "USER x");
  usher_pop3_cmd_clear(&cmd);
  g_assert_cmpint(usher_pop3_reader_next(reader, &cmd, &why), ==, USHER_POP3_COMMAND);
  g_assert_cmpstr(cmd.arg, ==, "y");
  usher_pop3_cmd_clear(&cmd);
  /* A mark set while the line is incomplete holds until it is. */
  usher_pop3_reader_expect_sasl(reader);
  usher_pop3_reader_feed(reader, "QU", 2);
  g_assert_cmpint(usher_pop3_reader_next(reader, &cmd, &why), ==, USHER_POP3_NEED_MORE);
  usher_pop3_reader_feed(reader, "IT\n", 3);
  g_assert_cmpint(usher_pop3_reader_next(reader, &cmd, &why), ==, USHER_POP3_SASL_LINE);
  g_assert_cmpstr(cmd.arg, ==, "QUIT");
}

static void
test_event_names(void)
{
  g_assert_cmpstr(usher_pop3_event_to_string(USHER_POP3_NEED_MORE), ==, "NEED_MORE");
  g_assert_cmpstr(usher_pop3_event_to_string(USHER_POP3_FAIL), ==, "FAIL");
  g_assert_cmpstr(usher_pop3_event_to_string((UsherPop3Event)99), ==, "?");
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/core/pop3-login/commands", test_commands);
  g_test_add_func("/core/pop3-login/other", test_other);
  g_test_add_func("/core/pop3-login/auth", test_auth);
  g_test_add_func("/core/pop3-login/bad", test_bad);
  g_test_add_func("/core/pop3-login/line-limit", test_line_limit);
  g_test_add_func("/core/pop3-login/sasl-limit", test_sasl_limit);
  g_test_add_func("/core/pop3-login/many-lines", test_many_lines);
  g_test_add_func("/core/pop3-login/stls-pending", test_stls_pending);
  g_test_add_func("/core/pop3-login/expect-sasl-once", test_expect_sasl_once);
  g_test_add_func("/core/pop3-login/event-names", test_event_names);
  return g_test_run();
}

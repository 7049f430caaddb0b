/* test-smtp-cmd.c - the LMTP/SMTP command reader, reply lines and recipient users. */
#include "libcore/smtp-cmd.h"
#include "libcore/user-hash.h"

#include <string.h>

/* Runs a whole conversation through a reader fed in pieces of `step` bytes (0: all at once).
 * The driver answers like an LMTP server: after DATA, a body; after BDAT n, n bytes. Returns a
 * transcript: "C:VERB path|params" per command, "B:<n>" per body byte count at its end, "E" per
 * body end, "L" per overlong line, "S:<why>" for syntax errors. */
static char *
transcript(const char *input, gsize len, gsize step, gsize max_line)
{
  g_autoptr(UsherSmtpReader) r = usher_smtp_reader_new(max_line);
  GString *out = g_string_new(NULL);
  GString *body = g_string_new(NULL);
  gsize fed = 0;
  guint feeds = 0; /* every other piece goes in through reserve/commit instead of feed */
  for (;;) {
    UsherSmtpCmd cmd;
    const guint8 *data;
    gsize n;
    /* usher_smtp_reader_end_pending() says exactly when the next event is BODY_END. */
    gboolean end_pending = usher_smtp_reader_end_pending(r);
    UsherSmtpEvent ev = usher_smtp_reader_next(r, &cmd, &data, &n);
    g_assert_cmpint(end_pending, ==, ev == USHER_SMTP_BODY_END);
    if (ev == USHER_SMTP_NEED_MORE) {
      if (fed == len)
        break;
      gsize chunk = step == 0 ? len - fed : MIN(step, len - fed);
      if (feeds++ % 2 == 0) {
        usher_smtp_reader_feed(r, (const guint8 *)input + fed, chunk);
      } else {
        /* A read straight into the reader, into more room than it fills. */
        guint8 *room = usher_smtp_reader_reserve(r, chunk + 7);
        memcpy(room, input + fed, chunk);
        usher_smtp_reader_commit(r, chunk);
      }
      fed += chunk;
      continue;
    }
    switch (ev) {
    case USHER_SMTP_COMMAND:
      if (cmd.syntax_error != NULL)
        g_string_append_printf(out, "S:%s;", cmd.syntax_error);
      else
        g_string_append_printf(out, "C:%d %s|%s;", cmd.verb, cmd.path ? cmd.path : "",
                               cmd.params ? cmd.params : "");
      if (cmd.verb == USHER_SMTP_VERB_DATA && cmd.syntax_error == NULL)
        usher_smtp_reader_expect_data(r);
      if (cmd.verb == USHER_SMTP_VERB_BDAT && cmd.syntax_error == NULL)
        usher_smtp_reader_expect_bdat(r, cmd.bdat_size);
      usher_smtp_cmd_clear(&cmd);
      break;
    case USHER_SMTP_BODY:
      g_string_append_len(body, (const char *)data, (gssize)n);
      break;
    case USHER_SMTP_BODY_END:
      g_string_append_printf(out, "B:%s;E;", body->str);
      g_string_truncate(body, 0);
      break;
    case USHER_SMTP_LINE_TOO_LONG:
      g_string_append(out, "L;");
      break;
    default:
      g_assert_not_reached();
    }
  }
  if (body->len > 0)
    g_string_append_printf(out, "B:%s;", body->str);
  g_string_free(body, TRUE);
  return g_string_free(out, FALSE);
}

/* The same transcript whatever the split: pieces of every size from one byte up. */
static char *
transcript_every_split(const char *input, gsize max_line)
{
  gsize len = strlen(input);
  char *whole = transcript(input, len, 0, max_line);
  for (gsize step = 1; step <= len; step++) {
    g_autofree char *t = transcript(input, len, step, max_line);
    g_assert_cmpstr(t, ==, whole);
  }
  return whole;
}

static void
test_transaction(void)
{
  const char *in = "LHLO mx.example.org\r\n"
                   "MAIL FROM:<sender@example.org> BODY=8BITMIME SIZE=42\r\n"
                   "RCPT TO:<a+box@example.org>\r\n"
                   "rcpt to: <\"odd > name\"@example.org> NOTIFY=NEVER\r\n"
                   "DATA\r\n"
                   "Subject: hi\r\n\r\n..stuffed\r\n.not end\r\n.\r\n"
                   "QUIT\r\n";
  g_autofree char *t = transcript_every_split(in, 0);
  g_assert_cmpstr(t, ==,
                  "C:1 |;C:4 sender@example.org|BODY=8BITMIME SIZE=42;C:5 a+box@example.org|;"
                  "C:5 \"odd > name\"@example.org|NOTIFY=NEVER;C:6 |;"
                  "B:Subject: hi\r\n\r\n..stuffed\r\n.not end\r\n.\r\n;E;C:10 |;");
}

static void
test_data_edges(void)
{
  /* An empty message; a lone LF as line end; a terminator at the very start. */
  g_autofree char *t1 = transcript_every_split("DATA\r\n.\r\nNOOP\r\n", 0);
  g_assert_cmpstr(t1, ==, "C:6 |;B:.\r\n;E;C:9 |;");
  g_autofree char *t2 = transcript_every_split("DATA\nx\n.\nRSET\n", 0);
  g_assert_cmpstr(t2, ==, "C:6 |;B:x\n.\n;E;C:8 |;");
  /* ".." at a line start is not an end; neither is "." inside a line. */
  g_autofree char *t3 = transcript_every_split("DATA\r\na.\r\n..\r\n.\r\n", 0);
  g_assert_cmpstr(t3, ==, "C:6 |;B:a.\r\n..\r\n.\r\n;E;");
  /* A body that never ends: its bytes, no end. */
  g_autofree char *t4 = transcript_every_split("DATA\r\nabc\r\n", 0);
  g_assert_cmpstr(t4, ==, "C:6 |;B:abc\r\n;");
}

static void
test_bdat(void)
{
  g_autofree char *t = transcript_every_split("BDAT 5\r\nab\r\nxBDAT 0 LAST\r\nbdat 3 last\r\n"
                                              ".\r\nNOOP\r\n",
                                              0);
  g_assert_cmpstr(t, ==, "C:7 |;B:ab\r\nx;E;C:7 |;B:;E;C:7 |;B:.\r\n;E;C:9 |;");
  UsherSmtpCmd cmd;
  usher_smtp_parse_command("BDAT 12 LAST", 12, &cmd);
  g_assert_cmpuint(cmd.bdat_size, ==, 12);
  g_assert_true(cmd.bdat_last);
  g_assert_true(cmd.bdat_sized);
  usher_smtp_cmd_clear(&cmd);
  /* A size followed by junk is still a size: the driver can skip the chunk. */
  struct {
    const char *line;
    gboolean sized;
    guint64 size;
  } bad[] = {{"BDAT", FALSE, 0}, {"BDAT x", FALSE, 0}, {"BDAT 5 NOW", TRUE, 5},
             {"BDAT 99999999999999999999999", FALSE, 0}};
  for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
    usher_smtp_parse_command(bad[i].line, strlen(bad[i].line), &cmd);
    g_assert_nonnull(cmd.syntax_error);
    g_assert_cmpint(cmd.bdat_sized, ==, bad[i].sized);
    if (bad[i].sized)
      g_assert_cmpuint(cmd.bdat_size, ==, bad[i].size);
    usher_smtp_cmd_clear(&cmd);
  }
}

static void
test_syntax(void)
{
  const char *bad[] = {"MAIL FROM:sender@example.org", "MAIL TO:<a@b>", "RCPT TO:<>",
                       "RCPT TO:<a@b", "RCPT TO:<a@b>x", "LHLO", "DATA now", "RCPT TO:<@x>"};
  for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
    UsherSmtpCmd cmd;
    usher_smtp_parse_command(bad[i], strlen(bad[i]), &cmd);
    g_assert_nonnull(cmd.syntax_error);
    g_assert_cmpint(cmd.verb, !=, USHER_SMTP_VERB_UNKNOWN);
    usher_smtp_cmd_clear(&cmd);
  }
  UsherSmtpCmd cmd;
  usher_smtp_parse_command("MAIL FROM:<>", 12, &cmd);
  g_assert_null(cmd.syntax_error);
  g_assert_cmpstr(cmd.path, ==, "");
  usher_smtp_cmd_clear(&cmd);
  usher_smtp_parse_command("RCPT TO:<@relay.example,@b.example:u@example.org>", 49, &cmd);
  g_assert_null(cmd.syntax_error);
  g_assert_cmpstr(cmd.path, ==, "u@example.org");
  usher_smtp_cmd_clear(&cmd);
  usher_smtp_parse_command("FROBNICATE now", 14, &cmd);
  g_assert_cmpint(cmd.verb, ==, USHER_SMTP_VERB_UNKNOWN);
  g_assert_cmpstr(cmd.verb_text, ==, "FROBNICATE");
  usher_smtp_cmd_clear(&cmd);
}

static void
test_long_line(void)
{
  /* Overlong lines are skipped whole and reported once, in order; the next command is read. */
  GString *in = g_string_new("NOOP\r\nRCPT TO:<");
  for (int i = 0; i < 300; i++)
    g_string_append_c(in, 'x');
  g_string_append(in, ">\r\nQUIT\r\n");
  g_autofree char *t = transcript_every_split(in->str, 64);
  g_assert_cmpstr(t, ==, "C:9 |;L;C:10 |;");
  g_string_free(in, TRUE);
}

static void
test_replies(void)
{
  guint code;
  gboolean last;
  const char *text;
  g_assert_true(usher_smtp_reply_parse("250-PIPELINING", &code, &last, &text));
  g_assert_cmpuint(code, ==, 250);
  g_assert_false(last);
  g_assert_cmpstr(text, ==, "PIPELINING");
  g_assert_true(usher_smtp_reply_parse("451 4.3.0 Try later", &code, &last, &text));
  g_assert_true(last);
  g_assert_true(usher_smtp_reply_parse("354", &code, &last, &text));
  g_assert_true(last);
  g_assert_cmpstr(text, ==, "");
  g_assert_false(usher_smtp_reply_parse("25 x", &code, &last, &text));
  g_assert_false(usher_smtp_reply_parse("250x", &code, &last, &text));
  g_assert_false(usher_smtp_reply_parse("650 x", &code, &last, &text));
  g_assert_false(usher_smtp_reply_parse("", &code, &last, &text));
}

static void
test_recipient_user(void)
{
  struct {
    const char *path, *delim, *user;
  } cases[] = {
    {"user+box@example.org", "+", "user@example.org"},
    {"user-a+b@example.org", "+-", "user@example.org"},
    {"user+box@example.org", "", "user+box@example.org"},
    {"user+box@example.org", NULL, "user+box@example.org"},
    {"+box@example.org", "+", "+box@example.org"},
    {"\"john doe\"@example.org", "+", "john doe@example.org"},
    {"\"a@b\"@example.org", "+", "a@b@example.org"},
    {"postmaster", "+", "postmaster"},
    {"", "+", NULL},
    {"@example.org", "+", NULL},
    {"\"\"@example.org", "+", NULL}, /* an empty quoted local part (read past its end once) */
    {"\"\"", "+", NULL},
  };
  for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_autofree char *u = usher_smtp_recipient_user(cases[i].path, cases[i].delim);
    g_assert_cmpstr(u, ==, cases[i].user);
  }
  /* The user name format then spells it as the hash does. */
  g_autoptr(UsherHashFormat) f = usher_hash_format_new("%Ln", NULL);
  g_autofree char *n = usher_hash_format_expand(f, "User@Example.org", -1);
  g_assert_cmpstr(n, ==, "user");
  g_autoptr(UsherHashFormat) g = usher_hash_format_new("%n-x@%Ud", NULL);
  g_autofree char *m = usher_hash_format_expand(g, "User@Example.org", -1);
  g_assert_cmpstr(m, ==, "User-x@EXAMPLE.ORG");
}

/* Reads straight into the reader: a read that brings nothing changes nothing, a command line
 * split over reads is whole, a body's bytes are handed out as they came. */
static void
test_reserve(void)
{
  g_autoptr(UsherSmtpReader) r = usher_smtp_reader_new(0);
  UsherSmtpCmd cmd;
  const guint8 *data;
  gsize n;
  guint8 *room = usher_smtp_reader_reserve(r, 64);
  memcpy(room, "MAIL FROM:<a@b", 14);
  usher_smtp_reader_commit(r, 14);
  g_assert_cmpint(usher_smtp_reader_next(r, &cmd, &data, &n), ==, USHER_SMTP_NEED_MORE);
  g_assert_cmpuint(usher_smtp_reader_pending(r), ==, 14);
  (void)usher_smtp_reader_reserve(r, 4096);
  usher_smtp_reader_commit(r, 0); /* EAGAIN */
  g_assert_cmpuint(usher_smtp_reader_pending(r), ==, 14);
  room = usher_smtp_reader_reserve(r, 16);
  memcpy(room, ">\r\nDATA\r\n", 9);
  usher_smtp_reader_commit(r, 9);
  g_assert_cmpint(usher_smtp_reader_next(r, &cmd, &data, &n), ==, USHER_SMTP_COMMAND);
  g_assert_cmpint(cmd.verb, ==, USHER_SMTP_VERB_MAIL);
  g_assert_cmpstr(cmd.path, ==, "a@b");
  usher_smtp_cmd_clear(&cmd);
  g_assert_cmpint(usher_smtp_reader_next(r, &cmd, &data, &n), ==, USHER_SMTP_COMMAND);
  g_assert_cmpint(cmd.verb, ==, USHER_SMTP_VERB_DATA);
  usher_smtp_cmd_clear(&cmd);
  usher_smtp_reader_expect_data(r);
  room = usher_smtp_reader_reserve(r, 100);
  memcpy(room, "hello\r\n.\r\nQUIT\r\n", 16);
  usher_smtp_reader_commit(r, 16);
  g_assert_cmpint(usher_smtp_reader_next(r, &cmd, &data, &n), ==, USHER_SMTP_BODY);
  g_assert_cmpmem(data, n, "hello\r\n.\r\n", 10);
  g_assert_cmpint(usher_smtp_reader_next(r, &cmd, &data, &n), ==, USHER_SMTP_BODY_END);
  g_assert_cmpint(usher_smtp_reader_next(r, &cmd, &data, &n), ==, USHER_SMTP_COMMAND);
  g_assert_cmpint(cmd.verb, ==, USHER_SMTP_VERB_QUIT);
  usher_smtp_cmd_clear(&cmd);
  g_assert_cmpuint(usher_smtp_reader_pending(r), ==, 0);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/core/smtp-cmd/transaction", test_transaction);
  g_test_add_func("/core/smtp-cmd/data-edges", test_data_edges);
  g_test_add_func("/core/smtp-cmd/bdat", test_bdat);
  g_test_add_func("/core/smtp-cmd/syntax", test_syntax);
  g_test_add_func("/core/smtp-cmd/long-line", test_long_line);
  g_test_add_func("/core/smtp-cmd/replies", test_replies);
  g_test_add_func("/core/smtp-cmd/recipient-user", test_recipient_user);
  g_test_add_func("/core/smtp-cmd/reserve", test_reserve);
  return g_test_run();
}

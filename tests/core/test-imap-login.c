/* test-imap-login.c - the IMAP pre-login reader: every command form a client may send before
 * login, refusals and limits, and the same events for every split of the input. */
#include "libcore/imap-login.h"
#include "libcore/wipe.h"

#include <string.h>

/* Drains every event into text, one line per event. An AUTHENTICATE without an initial
 * response puts the reader in SASL mode, as the proxy would after sending "+ ". */
static gboolean
drain(UsherImapReader *r, GString *out)
{
  for (;;) {
    g_auto(UsherImapCmd) cmd = {0};
    char *tag = NULL;
    const char *why = NULL;
    UsherImapEvent ev = usher_imap_reader_next(r, &cmd, &tag, &why);
    switch (ev) {
    case USHER_IMAP_NEED_MORE:
      return TRUE;
    case USHER_IMAP_CONTINUE:
      g_string_append(out, "CONTINUE\n");
      break;
    case USHER_IMAP_BAD:
    case USHER_IMAP_FAIL:
      g_string_append_printf(out, "%s %s %s\n", ev == USHER_IMAP_BAD ? "BAD" : "FAIL", tag, why);
      g_free(tag);
      if (ev == USHER_IMAP_FAIL)
        return FALSE; /* the proxy closes: it feeds no more */
      break;
    case USHER_IMAP_COMMAND:
    case USHER_IMAP_SASL_LINE:
      g_string_append_printf(out, "%s", ev == USHER_IMAP_SASL_LINE ? "SASL" : "CMD");
      if (ev == USHER_IMAP_COMMAND)
        g_string_append_printf(out, " %s %s/%d", cmd.tag, cmd.name, cmd.type);
      for (guint i = 0; i < cmd.args->len; i++) {
        UsherImapArg *a = &g_array_index(cmd.args, UsherImapArg, i);
        static const char *const kinds[] = {"A", "S", "NIL", "(", ")"};
        g_string_append_printf(out, " %s", kinds[a->type]);
        if (a->value != NULL) {
          g_autofree char *v = g_strescape(a->value, NULL);
          g_string_append_printf(out, "[%s/%zu]", v, a->len);
        }
      }
      g_string_append_c(out, '\n');
      if (ev == USHER_IMAP_COMMAND && cmd.type == USHER_IMAP_CMD_AUTHENTICATE &&
          cmd.args->len == 1)
        usher_imap_reader_expect_sasl(r);
      break;
    }
  }
}

static char *
run_split(const char *input, gsize len, gsize cut1, gsize cut2)
{
  g_autoptr(UsherImapReader) r = usher_imap_reader_new();
  GString *out = g_string_new(NULL);
  usher_imap_reader_feed(r, input, cut1);
  if (drain(r, out)) {
    usher_imap_reader_feed(r, input + cut1, cut2 - cut1);
    if (drain(r, out)) {
      usher_imap_reader_feed(r, input + cut2, len - cut2);
      drain(r, out);
    }
  }
  return g_string_free(out, FALSE);
}

/* Whole, byte by byte, and cut at every pair of offsets: always the same events. */
static void
check(const char *input, gssize input_len, const char *expected)
{
  gsize len = input_len < 0 ? strlen(input) : (gsize)input_len;
  g_autofree char *whole = run_split(input, len, len, len);
  if (g_strcmp0(whole, expected) != 0)
    g_error("input %s:\n--- got\n%s--- expected\n%s", g_strescape(input, NULL), whole, expected);
  g_autoptr(UsherImapReader) r = usher_imap_reader_new();
  GString *bytewise = g_string_new(NULL);
  for (gsize i = 0; i < len; i++) {
    usher_imap_reader_feed(r, input + i, 1);
    if (!drain(r, bytewise))
      break;
  }
  g_assert_cmpstr(bytewise->str, ==, expected);
  g_string_free(bytewise, TRUE);
  /* Splits in three at (nearly) every pair of offsets; a long input (limits) only whole and
   * byte by byte. */
  if (len > 4096)
    return;
  for (gsize a = 0; a <= len; a++)
    for (gsize b = a; b <= len; b += (len > 200 ? 17 : 1)) {
      g_autofree char *split = run_split(input, len, a, b);
      if (g_strcmp0(split, expected) != 0)
        g_error("input %s split at %zu,%zu:\n%s", g_strescape(input, NULL), a, b, split);
    }
}

static void
test_commands(void)
{
  check("a1 CAPABILITY\r\nA2 noop\r\nx LOGOUT\n", -1,
        "CMD a1 CAPABILITY/1\nCMD A2 NOOP/2\nCMD x LOGOUT/3\n");
  check("t STARTTLS\r\n", -1, "CMD t STARTTLS/5\n");
  check("1 LOGIN user1 pass\r\n", -1, "CMD 1 LOGIN/6 A[user1/5] A[pass/4]\n");
  check("1 LOGIN \"us er\" \"p\\\"a\\\\ss\"\r\n", -1,
        "CMD 1 LOGIN/6 S[us er/5] S[p\\\"a\\\\ss/6]\n");
  check("1 LOGIN {5}\r\nuser1 {4}\r\npass\r\n", -1,
        "CONTINUE\nCONTINUE\nCMD 1 LOGIN/6 S[user1/5] S[pass/4]\n");
  check("1 LOGIN {5+}\r\nuser1 {4+}\r\npass\r\n", -1,
        "CMD 1 LOGIN/6 S[user1/5] S[pass/4]\n");
  check("1 LOGIN {3}\r\na\0b {1}\r\n\n\r\n", 25, "CONTINUE\nCONTINUE\nCMD 1 LOGIN/6 S[a/3] S[\\n/1]\n");
  check("i ID (\"name\" \"mutt\" \"version\" NIL)\r\nj ID NIL\r\n", -1,
        "CMD i ID/4 ( S[name/4] S[mutt/4] S[version/7] NIL )\nCMD j ID/4 NIL\n");
  check("i ID ({4}\r\nname \"x\")\r\n", -1, "CONTINUE\nCMD i ID/4 ( S[name/4] S[x/1] )\n");
  check("s SELECT INBOX\r\n", -1, "CMD s SELECT/0 A[INBOX/5]\n");
  /* Atoms as Dovecot reads them: a master user and a password with list wildcards, unquoted. */
  check("m LOGIN user1*master pa%s\\w]*\r\n", -1,
        "CMD m LOGIN/6 A[user1*master/12] A[pa%s\\\\w]*/8]\n");
  check("a AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n", -1,
        "CMD a AUTHENTICATE/7 A[PLAIN/5] A[AGFsaWNlAHNlY3JldA==/20]\n");
  /* Without SASL-IR: the next line is the response, whatever it looks like. */
  check("a AUTHENTICATE PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\nb NOOP\r\n", -1,
        "CMD a AUTHENTICATE/7 A[PLAIN/5]\nSASL A[AGFsaWNlAHNlY3JldA==/20]\nCMD b NOOP/2\n");
  check("a AUTHENTICATE LOGIN\r\n*\r\n", -1, "CMD a AUTHENTICATE/7 A[LOGIN/5]\nSASL A[*/1]\n");
}

static void
test_refusals(void)
{
  check("\r\n", -1, "BAD * Error in IMAP command received by server: no tag\n");
  check("+tag NOOP\r\n", -1, "BAD * Error in IMAP command received by server: no tag\n");
  check("* NOOP\r\n", -1, "BAD * Error in IMAP command received by server: no tag\n");
  check("tag\r\nt2 NOOP\r\n", -1,
        "BAD tag Error in IMAP command received by server: no command name\nCMD t2 NOOP/2\n");
  check("t LOGIN  a b\r\n", -1,
        "BAD t Error in IMAP command received by server: unexpected character\n");
  check("t LOGIN \"a b\r\n", -1,
        "BAD t Error in IMAP command received by server: unterminated quoted string\n");
  check("t LOGIN \"a\\b\" c\r\n", -1,
        "BAD t Error in IMAP command received by server: bad escape in a quoted string\n");
  check("t ID (a\r\n", -1, "BAD t Error in IMAP command received by server: unclosed list\n");
  check("t ID a)\r\n", -1, "BAD t Error in IMAP command received by server: unexpected ')'\n");
  check("t ID (a)b\r\n", -1, "BAD t Error in IMAP command received by server: missing space\n");
  check("t ID )\r\n", -1, "BAD t Error in IMAP command received by server: unexpected character\n");
  check("t LOGIN {x}\r\n", -1, "BAD t Error in IMAP command received by server: bad literal\n");
  check("t LOGIN {5} a\r\n", -1, "BAD t Error in IMAP command received by server: bad literal\n");
  check("t NOOP \r\n", -1, "BAD t Error in IMAP command received by server: trailing space\n");
}

static void
test_limits(void)
{
  /* A literal over the limit ends the connection before its bytes are read. */
  check("t LOGIN {16385}\r\n", -1, "FAIL t Literal too large\n");
  check("t LOGIN {99999999999999999999}\r\n", -1, "FAIL t Literal too large\n");
  /* Literals of one command add up: two full ones (a LOGIN's), not a third. */
  g_autofree char *lit = g_strnfill(USHER_IMAP_LITERAL_MAX, 'a');
  g_autofree char *three = g_strdup_printf("t ID ({%d+}\r\n%s {%d+}\r\n%s {1+}\r\na)\r\n",
                                           USHER_IMAP_LITERAL_MAX, lit, USHER_IMAP_LITERAL_MAX,
                                           lit);
  check(three, -1, "FAIL t Command too large\n");
  /* A line over the limit, with or without its end. */
  g_autofree char *big = g_strnfill(USHER_IMAP_LINE_MAX + 10, 'x');
  g_autofree char *line = g_strdup_printf("t LOGIN %s\r\n", big);
  g_autoptr(UsherImapReader) r = usher_imap_reader_new();
  GString *out = g_string_new(NULL);
  usher_imap_reader_feed(r, line, strlen(line));
  drain(r, out);
  g_assert_cmpstr(out->str, ==, "FAIL * Line too long\n");
  g_string_truncate(out, 0);
  /* Failed for good: later input is ignored and the reader holds nothing. */
  usher_imap_reader_feed(r, "u NOOP\r\n", 8);
  drain(r, out);
  g_assert_cmpstr(out->str, ==, "FAIL * Connection is closing\n");
  g_assert_cmpuint(usher_imap_reader_pending(r), ==, 0);
  g_string_free(out, TRUE);
  /* Too many arguments. */
  GString *many = g_string_new("t ID (");
  for (int i = 0; i < USHER_IMAP_ARGS_MAX; i++)
    g_string_append(many, "a ");
  g_string_append(many, "a)\r\n");
  g_autofree char *expect = g_strdup("FAIL t Too many arguments\n");
  check(many->str, -1, expect);
  g_string_free(many, TRUE);
  /* Pipelined bytes behind STARTTLS stay visible to the proxy (which must refuse them). */
  g_autoptr(UsherImapReader) t = usher_imap_reader_new();
  usher_imap_reader_feed(t, "s STARTTLS\r\nx LOGIN a b\r\n", 25);
  g_auto(UsherImapCmd) cmd = {0};
  char *tag = NULL;
  const char *why = NULL;
  g_assert_cmpint(usher_imap_reader_next(t, &cmd, &tag, &why), ==, USHER_IMAP_COMMAND);
  g_assert_cmpuint(usher_imap_reader_pending(t), ==, 13);
}

static void
test_login_args(void)
{
  g_autoptr(UsherImapReader) r = usher_imap_reader_new();
  usher_imap_reader_feed(r, "1 LOGIN {5+}\r\nus\0r1 \"pw\"\r\n2 LOGIN a\r\n", 37);
  g_auto(UsherImapCmd) cmd = {0};
  char *tag = NULL;
  const char *why = NULL;
  g_assert_cmpint(usher_imap_reader_next(r, &cmd, &tag, &why), ==, USHER_IMAP_COMMAND);
  const char *user, *pass;
  gsize ulen, plen;
  g_assert_true(usher_imap_login_args(&cmd, &user, &ulen, &pass, &plen));
  g_assert_cmpuint(ulen, ==, 5);
  g_assert_cmpmem(user, ulen, "us\0r1", 5);
  g_assert_cmpstr(pass, ==, "pw");
  g_auto(UsherImapCmd) one = {0};
  g_assert_cmpint(usher_imap_reader_next(r, &one, &tag, &why), ==, USHER_IMAP_COMMAND);
  g_assert_false(usher_imap_login_args(&one, &user, &ulen, &pass, &plen));
}

static void
test_sasl_names(void)
{
  const char *why;
  g_autofree char *a = usher_sasl_login_name(USHER_SASL_PLAIN, (const guint8 *)"\0alice\0pw", 9, &why);
  g_assert_cmpstr(a, ==, "alice");
  g_autofree char *b =
    usher_sasl_login_name(USHER_SASL_PLAIN, (const guint8 *)"bob\0admin\0pw", 12, &why);
  g_assert_cmpstr(b, ==, "bob"); /* authzid: the user whose mail it is */
  g_assert_null(usher_sasl_login_name(USHER_SASL_PLAIN, (const guint8 *)"alice\0pw", 8, &why));
  g_assert_nonnull(why);
  g_assert_null(usher_sasl_login_name(USHER_SASL_PLAIN, (const guint8 *)"\0\0pw", 4, &why));
  static const char ob[] = "n,a=carol=2Cx=3Dy@example.com,\001host=imap\001auth=Bearer t0k\001\001";
  g_autofree char *c =
    usher_sasl_login_name(USHER_SASL_OAUTHBEARER, (const guint8 *)ob, sizeof(ob) - 1, &why);
  g_assert_cmpstr(c, ==, "carol,x=y@example.com");
  g_assert_null(usher_sasl_login_name(USHER_SASL_OAUTHBEARER, (const guint8 *)"n,,\001auth=x", 10,
                                      &why));
  g_assert_null(usher_sasl_login_name(USHER_SASL_OAUTHBEARER, (const guint8 *)"n,a=x=41,", 9,
                                      &why));
  static const char xo[] = "user=dave@example.com\001auth=Bearer abc\001\001";
  g_autofree char *d =
    usher_sasl_login_name(USHER_SASL_XOAUTH2, (const guint8 *)xo, sizeof(xo) - 1, &why);
  g_assert_cmpstr(d, ==, "dave@example.com");
  g_assert_null(usher_sasl_login_name(USHER_SASL_XOAUTH2, (const guint8 *)"usr=x\001", 6, &why));
  g_autofree char *e = usher_sasl_login_name(USHER_SASL_LOGIN, (const guint8 *)"eve", 3, &why);
  g_assert_cmpstr(e, ==, "eve");
  g_assert_null(usher_sasl_login_name(USHER_SASL_LOGIN, (const guint8 *)"e\nve", 4, &why));
  /* What may go to a backend as the client sent it. */
  const char *good[] = {"=", "AGFsaWNlAHB3", "YQ==", "YWI=", "+/+/"};
  for (gsize i = 0; i < G_N_ELEMENTS(good); i++)
    g_assert_true(usher_sasl_base64_valid(good[i]));
  const char *bad[] = {"", "YQ", "YQ=", "Y===", "=YQ=", "YW\r\nI=", "YWI=\r\nXCLIENT ADDR=1.2.3.4",
                       "YW I=", "YW\"I", "YQ==YQ=="};
  for (gsize i = 0; i < G_N_ELEMENTS(bad); i++)
    g_assert_false(usher_sasl_base64_valid(bad[i]));
  g_assert_cmpint(usher_sasl_mech_from_name("plain"), ==, USHER_SASL_PLAIN);
  g_assert_cmpint(usher_sasl_mech_from_name("XOAUTH2"), ==, USHER_SASL_XOAUTH2);
  g_assert_cmpint(usher_sasl_mech_from_name("CRAM-MD5"), ==, 0);
  g_assert_cmpstr(usher_sasl_mech_name(USHER_SASL_OAUTHBEARER), ==, "OAUTHBEARER");
}

/* A reader's buffer, once the login line is consumed, keeps no copy of it past its end. */
static void
test_wipe(void)
{
  GByteArray *buf = g_byte_array_new();
  const char *line = "a LOGIN user s3cret\r\nb NOOP\r\n";
  g_byte_array_append(buf, (const guint8 *)line, (guint)strlen(line));
  gsize first = strlen("a LOGIN user s3cret\r\n");
  usher_bytes_drop_front(buf, first);
  g_assert_cmpmem(buf->data, buf->len, "b NOOP\r\n", 8);
  /* The capacity past the new end (still this array's memory) holds zeros, not the tail. */
  for (gsize i = buf->len; i < strlen(line); i++)
    g_assert_cmpint(buf->data[i], ==, 0);
  usher_bytes_wipe_unref(buf);
  char *secret = g_strdup("s3cret");
  usher_wipe_free(secret);
  usher_wipe_free(NULL);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/core/imap-login/commands", test_commands);
  g_test_add_func("/core/imap-login/refusals", test_refusals);
  g_test_add_func("/core/imap-login/limits", test_limits);
  g_test_add_func("/core/imap-login/login-args", test_login_args);
  g_test_add_func("/core/imap-login/sasl-names", test_sasl_names);
  g_test_add_func("/core/imap-login/wipe", test_wipe);
  return g_test_run();
}

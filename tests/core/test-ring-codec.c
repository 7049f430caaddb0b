/* test-ring-codec.c - ring protocol codec: escaping, line reader, parser, formatter. */
#include "libcore/ring-codec.h"

#include <string.h>

/* ---- helpers ----------------------------------------------------------------------------- */

/* Parses a copy of len bytes of text (len < 0: NUL-terminated); *buf_out keeps the strings. */
static UsherRingParseResult
parse_len(const char *text, gssize len, UsherRingParseFlags flags, UsherRingMsg *msg,
          char **buf_out)
{
  gsize n = len < 0 ? strlen(text) : (gsize)len;
  char *buf = g_malloc(n + 1);
  memcpy(buf, text, n);
  buf[n] = '\0';
  *buf_out = buf;
  return usher_ring_msg_parse(buf, n, flags, msg);
}

static UsherRingParseResult
parse(const char *text, UsherRingParseFlags flags, UsherRingMsg *msg, char **buf_out)
{
  return parse_len(text, -1, flags, msg, buf_out);
}

/* Parses text, which must succeed with the given type. */
static void
parse_ok(const char *text, UsherRingParseFlags flags, UsherRingMsgType type, UsherRingMsg *msg,
         char **buf_out)
{
  UsherRingParseResult res = parse(text, flags, msg, buf_out);
  if (res != USHER_RING_PARSE_OK)
    g_error("\"%s\": %s", g_strescape(text, NULL), usher_ring_parse_result_to_string(res));
  g_assert_cmpstr(usher_ring_msg_type_to_string(msg->type), ==,
                  usher_ring_msg_type_to_string(type));
  g_assert_cmpint(msg->type, ==, type);
}

static char *
format(const UsherRingMsg *msg, guint minor)
{
  GString *out = g_string_new(NULL);
  UsherRingFormatResult res = usher_ring_msg_format(msg, minor, out);
  if (res != USHER_RING_FORMAT_OK)
    g_error("format %s at minor %u: %s", usher_ring_msg_type_to_string(msg->type), minor,
            usher_ring_format_result_to_string(res));
  return g_string_free(out, FALSE);
}

static void
assert_format(const UsherRingMsg *msg, guint minor, const char *expect)
{
  g_autofree char *line = format(msg, minor);
  g_assert_cmpstr(line, ==, expect);
}

static void
assert_format_fails(const UsherRingMsg *msg, guint minor, UsherRingFormatResult expect)
{
  g_autoptr(GString) out = g_string_new("prefix\n");
  g_assert_cmpint(usher_ring_msg_format(msg, minor, out), ==, expect);
  g_assert_cmpstr(out->str, ==, "prefix\n");
}

static UsherIp
ip(const char *text)
{
  UsherIp addr;
  g_assert_true(usher_ip_parse(text, -1, &addr));
  return addr;
}

static void
assert_ip(const UsherIp *addr, const char *text)
{
  char buf[USHER_IP_STRLEN];
  g_assert_cmpstr(usher_ip_to_string(addr, buf), ==, text);
}

static UsherRingOrigin
origin(const char *addr, guint16 port, guint32 seq)
{
  UsherRingOrigin o = {.ip = ip(addr), .port = port, .seq = seq};
  return o;
}

static void
assert_origin(const UsherRingOrigin *o, const char *addr, guint16 port, guint32 seq)
{
  assert_ip(&o->ip, addr);
  g_assert_cmpuint(o->port, ==, port);
  g_assert_cmpuint(o->seq, ==, seq);
}

/* ---- escaping ---------------------------------------------------------------------------- */

static void
test_escape_table(void)
{
  g_autoptr(GString) out = g_string_new(NULL);
  usher_ring_escape_append(out, "plain text", -1);
  g_assert_cmpstr(out->str, ==, "plain text");

  g_string_truncate(out, 0);
  usher_ring_escape_append(out, "a\001b\tc\rd\ne", -1);
  g_assert_cmpstr(out->str, ==, "a\0011b\001tc\001rd\001ne");

  /* With a length, NUL is escaped too (str_append_tabescaped_n). */
  g_string_truncate(out, 0);
  usher_ring_escape_append(out, "x\0y", 3);
  g_assert_cmpuint(out->len, ==, 4);
  g_assert_cmpmem(out->str, out->len, "x\0010y", 4);

  /* Appends, and escapes only the given length. */
  g_string_assign(out, ">");
  usher_ring_escape_append(out, "\t\tzz", 2);
  g_assert_cmpstr(out->str, ==, ">\001t\001t");
}

static void
test_escape_roundtrip(void)
{
  char all[256];
  for (int i = 0; i < 256; i++)
    all[i] = (char)i;

  g_autoptr(GString) out = g_string_new(NULL);
  usher_ring_escape_append(out, all, sizeof(all));
  g_assert_cmpuint(out->len, ==, 256 + 5);
  for (gsize i = 0; i < out->len; i++) {
    char c = out->str[i];
    g_assert_true(c != '\0' && c != '\t' && c != '\r' && c != '\n');
  }
  gsize len = usher_ring_unescape_inplace(out->str, out->len);
  g_assert_cmpmem(out->str, len, all, sizeof(all));

  /* Every pair of special and ordinary bytes. */
  const char specials[] = {'\0', '\001', '\t', '\r', '\n', 'x', '1', 't'};
  for (gsize i = 0; i < sizeof(specials); i++) {
    for (gsize j = 0; j < sizeof(specials); j++) {
      char pair[2] = {specials[i], specials[j]};
      g_string_truncate(out, 0);
      usher_ring_escape_append(out, pair, 2);
      len = usher_ring_unescape_inplace(out->str, out->len);
      g_assert_cmpmem(out->str, len, pair, 2);
    }
  }
}

static void
check_unescape(const char *in, gsize in_len, const char *expect, gsize expect_len)
{
  g_autofree char *buf = g_memdup2(in, in_len + 1);
  gsize len = usher_ring_unescape_inplace(buf, in_len);
  g_assert_cmpmem(buf, len, expect, expect_len);
}

static void
test_escape_invalid(void)
{
  /* str_tabunescape: an unknown escape yields the byte after \001; a trailing \001 vanishes. */
  check_unescape("\001x", 2, "x", 1);
  check_unescape("ab\001", 3, "ab", 2);
  check_unescape("\001", 1, "", 0);
  check_unescape("\001\001", 2, "\001", 1);
  check_unescape("\001\001\001", 3, "\001", 1);
  check_unescape("a\0010b", 4, "a\0b", 3);
  check_unescape("\001T\001N", 4, "TN", 2);
  check_unescape("no escapes", 10, "no escapes", 10);
  check_unescape("\0011\001t\001r\001n", 8, "\001\t\r\n", 4);
}

/* Escapes as the parser sees them inside fields. */
static void
test_escape_in_fields(void)
{
  UsherRingMsg msg;
  g_autofree char *b1 = NULL, *b2 = NULL, *b3 = NULL, *b4 = NULL, *b5 = NULL, *b6 = NULL;
  g_autofree char *b7 = NULL, *b8 = NULL, *b9 = NULL;

  parse_ok("USER-KICK\t1.2.3.4\t9090\t1\ta\001tb\0011c\001rd\001ne", 0, USHER_RING_MSG_USER_KICK,
           &msg, &b1);
  g_assert_cmpstr(msg.user_kick.username, ==, "a\tb\001c\rd\ne");

  /* A \001 right before a TAB is dropped and the TAB still separates. */
  g_assert_cmpint(parse("USER-KICK\t1.2.3.4\t9090\t1\tab\001\tc", 0, &msg, &b2), ==,
                  USHER_RING_PARSE_EXTRA_FIELD);
  parse_ok("USER-KICK-ALT\t1.2.3.4\t9090\t1\tab\001\tc", 0, USHER_RING_MSG_USER_KICK_ALT, &msg,
           &b3);
  g_assert_cmpstr(msg.user_kick_alt.field, ==, "ab");
  g_assert_cmpstr(msg.user_kick_alt.value, ==, "c");

  /* A trailing \001 at the end of the line is dropped. */
  parse_ok("USER-KICK\t1.2.3.4\t9090\t1\tname\001", 0, USHER_RING_MSG_USER_KICK, &msg, &b4);
  g_assert_cmpstr(msg.user_kick.username, ==, "name");

  /* An escaped NUL ends the field (C string), not the line. */
  parse_ok("USER-KICK-ALT\t1.2.3.4\t9090\t1\tfi\0010eld\001t\tvalue", 0,
           USHER_RING_MSG_USER_KICK_ALT, &msg, &b5);
  g_assert_cmpstr(msg.user_kick_alt.field, ==, "fi");
  g_assert_cmpstr(msg.user_kick_alt.value, ==, "value");

  /* Numbers and IPs are unescaped before they are parsed, as Dovecot does. */
  parse_ok("USER-KILLED\t1\0012", 0, USHER_RING_MSG_USER_KILLED, &msg, &b6);
  g_assert_cmpuint(msg.user_killed.hash, ==, 12);
  parse_ok("USER-KILLED\t12\0010junk", 0, USHER_RING_MSG_USER_KILLED, &msg, &b7);
  g_assert_cmpuint(msg.user_killed.hash, ==, 12);
  g_assert_cmpint(parse("USER-KILLED\t1\001t2", 0, &msg, &b8), ==, USHER_RING_PARSE_BAD_NUMBER);
  parse_ok("USER\t5\t1.2.3\001.4", 0, USHER_RING_MSG_USER, &msg, &b9);
  assert_ip(&msg.user.ip, "1.2.3.4");
}

static void
test_raw_nul(void)
{
  UsherRingMsg msg;
  g_autofree char *b1 = NULL, *b2 = NULL, *b3 = NULL;

  /* A raw NUL ends the line for Dovecot: the extra field after it is never seen. */
  static const char line1[] = "USER-KILLED\t1\0\t2";
  parse_ok("USER-KILLED\t1", 0, USHER_RING_MSG_USER_KILLED, &msg, &b1);
  g_assert_cmpint(parse_len(line1, sizeof(line1) - 1, 0, &msg, &b2), ==, USHER_RING_PARSE_OK);
  g_assert_cmpuint(msg.user_killed.hash, ==, 1);

  static const char line2[] = "\0USER-KILLED\t1";
  g_assert_cmpint(parse_len(line2, sizeof(line2) - 1, 0, &msg, &b3), ==, USHER_RING_PARSE_EMPTY);
  g_assert_cmpint(msg.type, ==, USHER_RING_MSG_NONE);
}

/* ---- line reader ------------------------------------------------------------------------- */

/* Feeds the chunks and returns the lines, each followed by "|", and a final "!" for TOO_LONG. */
static char *
read_all(UsherLineReader *reader, const char *const *chunks, const gsize *lens, guint n_chunks)
{
  GString *out = g_string_new(NULL);
  for (guint i = 0; i < n_chunks; i++) {
    usher_line_reader_feed(reader, chunks[i], lens[i]);
    for (;;) {
      char *line;
      gsize len;
      UsherLineResult res = usher_line_reader_next(reader, &line, &len);
      if (res == USHER_LINE_NEED_MORE)
        break;
      if (res == USHER_LINE_TOO_LONG) {
        g_string_append_c(out, '!');
        return g_string_free(out, FALSE);
      }
      g_assert_cmpint(line[len], ==, '\0');
      g_string_append_len(out, line, (gssize)len);
      g_string_append_c(out, '|');
    }
  }
  return g_string_free(out, FALSE);
}

static char *
read_split(const char *data, gsize len, gsize split)
{
  g_autoptr(UsherLineReader) reader = usher_line_reader_new(USHER_RING_LINE_MAX);
  const char *chunks[2] = {data, data + split};
  gsize lens[2] = {split, len - split};
  return read_all(reader, chunks, lens, 2);
}

static char *
read_bytewise(const char *data, gsize len, gsize max_line_len)
{
  g_autoptr(UsherLineReader) reader = usher_line_reader_new(max_line_len);
  GString *out = g_string_new(NULL);
  for (gsize i = 0; i <= len; i++) {
    const char *chunk = data + i;
    gsize one = i < len ? 1 : 0;
    g_autofree char *part = read_all(reader, &chunk, &one, 1);
    g_string_append(out, part);
    if (usher_line_reader_failed(reader))
      break;
  }
  return g_string_free(out, FALSE);
}

static void
test_reader_basic(void)
{
  g_autoptr(UsherLineReader) reader = usher_line_reader_new(USHER_RING_LINE_MAX);
  char *line;
  gsize len;

  g_assert_cmpint(usher_line_reader_next(reader, &line, &len), ==, USHER_LINE_NEED_MORE);
  usher_line_reader_feed(reader, "A\nB\r\nC", 6);
  g_assert_cmpint(usher_line_reader_next(reader, &line, &len), ==, USHER_LINE_OK);
  g_assert_cmpmem(line, len, "A", 1);
  g_assert_cmpint(usher_line_reader_next(reader, &line, &len), ==, USHER_LINE_OK);
  g_assert_cmpmem(line, len, "B", 1);
  g_assert_cmpint(usher_line_reader_next(reader, &line, &len), ==, USHER_LINE_NEED_MORE);
  g_assert_cmpuint(usher_line_reader_get_pending(reader), ==, 1);
  usher_line_reader_feed(reader, "", 0);
  usher_line_reader_feed(reader, "\n", 1);
  g_assert_cmpint(usher_line_reader_next(reader, &line, &len), ==, USHER_LINE_OK);
  g_assert_cmpmem(line, len, "C", 1);
  g_assert_cmpint(usher_line_reader_next(reader, &line, &len), ==, USHER_LINE_NEED_MORE);
  g_assert_cmpuint(usher_line_reader_get_pending(reader), ==, 0);
  g_assert_false(usher_line_reader_failed(reader));

  UsherLineReaderStats stats;
  usher_line_reader_get_stats(reader, &stats);
  g_assert_cmpuint(stats.bytes_in, ==, 7);
  g_assert_cmpuint(stats.lines, ==, 3);
  g_assert_cmpuint(stats.too_long, ==, 0);
  g_assert_cmpuint(stats.bytes_discarded, ==, 0);

  /* A line's bytes are writable and NUL-terminated, and may contain NUL. */
  usher_line_reader_feed(reader, "x\0y\n", 4);
  g_assert_cmpint(usher_line_reader_next(reader, &line, &len), ==, USHER_LINE_OK);
  g_assert_cmpmem(line, len, "x\0y", 3);
  g_assert_cmpint(line[3], ==, '\0');
  line[0] = 'z';
}

static void
test_reader_cr(void)
{
  static const char data[] = "\r\n"    /* empty line */
                             "a\r\r\n" /* only one CR is stripped */
                             "a\rb\n"  /* an inner CR stays */
                             "\n"      /* empty line */
                             "c\r";    /* no LF yet: nothing */
  g_autofree char *got = read_split(data, sizeof(data) - 1, 0);
  g_assert_cmpstr(got, ==, "|a\r|a\rb||");

  g_autoptr(UsherLineReader) reader = usher_line_reader_new(USHER_RING_LINE_MAX);
  usher_line_reader_feed(reader, "c\r", 2);
  char *line;
  gsize len;
  g_assert_cmpint(usher_line_reader_next(reader, &line, &len), ==, USHER_LINE_NEED_MORE);
  usher_line_reader_feed(reader, "\n", 1);
  g_assert_cmpint(usher_line_reader_next(reader, &line, &len), ==, USHER_LINE_OK);
  g_assert_cmpmem(line, len, "c", 1);

  /* An empty line from the reader is an empty-line error in the parser. */
  usher_line_reader_feed(reader, "\r\n", 2);
  g_assert_cmpint(usher_line_reader_next(reader, &line, &len), ==, USHER_LINE_OK);
  g_assert_cmpuint(len, ==, 0);
  UsherRingMsg msg;
  g_assert_cmpint(usher_ring_msg_parse(line, len, 0, &msg), ==, USHER_RING_PARSE_EMPTY);
}

/* The transcript of spec section 4.3 plus the later examples, as one stream. */
static const char transcript[] = "VERSION\tdirector\t1\t9\n"
                                 "ME\t127.0.5.1\t19190\t1795393974\n"
                                 "DIRECTOR\t127.0.5.1\t19190\n"
                                 "DIRECTOR\t127.0.5.2\t19190\n"
                                 "HOST-HAND-START\t0\n"
                                 "HOST\t127.0.2.1\t100\t\tU0\t\n"
                                 "HOST\t127.0.2.2\t100\t\tU0\t\n"
                                 "HOST\t127.0.2.3\t100\t\tU0\t\n"
                                 "HOST-HAND-END\t0\n"
                                 "OPTIONS\tconsistent-hashing\n"
                                 "DONE\n"
                                 "U\t617210206\t127.0.2.3\t1795394151\n"
                                 "SYNC\t127.0.5.1\t19190\t1\t9\t1795393980\t2123223524\n"
                                 "\r\n"
                                 "USER-KICK\t127.0.5.1\t19190\t7\tuser\001tname\r\n"
                                 "QUIT\tInvalid input: BOGUS\n";

static const char transcript_lines[] = "VERSION\tdirector\t1\t9|"
                                       "ME\t127.0.5.1\t19190\t1795393974|"
                                       "DIRECTOR\t127.0.5.1\t19190|"
                                       "DIRECTOR\t127.0.5.2\t19190|"
                                       "HOST-HAND-START\t0|"
                                       "HOST\t127.0.2.1\t100\t\tU0\t|"
                                       "HOST\t127.0.2.2\t100\t\tU0\t|"
                                       "HOST\t127.0.2.3\t100\t\tU0\t|"
                                       "HOST-HAND-END\t0|"
                                       "OPTIONS\tconsistent-hashing|"
                                       "DONE|"
                                       "U\t617210206\t127.0.2.3\t1795394151|"
                                       "SYNC\t127.0.5.1\t19190\t1\t9\t1795393980\t2123223524|"
                                       "|"
                                       "USER-KICK\t127.0.5.1\t19190\t7\tuser\001tname|"
                                       "QUIT\tInvalid input: BOGUS|";

static void
test_reader_split_everywhere(void)
{
  gsize len = sizeof(transcript) - 1;
  for (gsize split = 0; split <= len; split++) {
    g_autofree char *got = read_split(transcript, len, split);
    g_assert_cmpstr(got, ==, transcript_lines);
  }
  g_autofree char *bytewise = read_bytewise(transcript, len, USHER_RING_LINE_MAX);
  g_assert_cmpstr(bytewise, ==, transcript_lines);

  /* Three-way splits, on a shorter stream (every pair of cut points). */
  static const char small[] = "A\tb\r\n\nC\001t\n\r\r\nD";
  gsize n = sizeof(small) - 1;
  for (gsize i = 0; i <= n; i++) {
    for (gsize j = i; j <= n; j++) {
      g_autoptr(UsherLineReader) reader = usher_line_reader_new(USHER_RING_LINE_MAX);
      const char *chunks[3] = {small, small + i, small + j};
      gsize lens[3] = {i, j - i, n - j};
      g_autofree char *got = read_all(reader, chunks, lens, 3);
      g_assert_cmpstr(got, ==, "A\tb||C\001t|\r|");
    }
  }
}

/* Every line of the split transcript parses, in the right context. */
static void
test_reader_then_parse(void)
{
  gsize len = sizeof(transcript) - 1;
  for (gsize split = 0; split <= len; split += 7) {
    g_autoptr(UsherLineReader) reader = usher_line_reader_new(USHER_RING_LINE_MAX);
    usher_line_reader_feed(reader, transcript, split);
    usher_line_reader_feed(reader, transcript + split, len - split);
    UsherRingParseFlags flags = 0;
    guint n_ok = 0, n_empty = 0;
    char *line;
    gsize line_len;
    while (usher_line_reader_next(reader, &line, &line_len) == USHER_LINE_OK) {
      UsherRingMsg msg;
      UsherRingParseResult res = usher_ring_msg_parse(line, line_len, flags, &msg);
      if (res == USHER_RING_PARSE_EMPTY) {
        n_empty++;
        continue;
      }
      g_assert_cmpint(res, ==, USHER_RING_PARSE_OK);
      n_ok++;
      if (msg.type == USHER_RING_MSG_HOST_HAND_START)
        flags |= USHER_RING_PARSE_HOST_LIST;
      else if (msg.type == USHER_RING_MSG_HOST_HAND_END)
        flags &= ~USHER_RING_PARSE_HOST_LIST;
      else if (msg.type == USHER_RING_MSG_HOST_HANDSHAKE)
        g_assert_cmpuint(msg.host.vhost_count, ==, 100);
      else if (msg.type == USHER_RING_MSG_USER_KICK)
        g_assert_cmpstr(msg.user_kick.username, ==, "user\tname");
    }
    g_assert_cmpuint(n_ok, ==, 15);
    g_assert_cmpuint(n_empty, ==, 1);
  }
}

static void
test_reader_max_length(void)
{
  g_autoptr(GString) s = g_string_new(NULL);
  char *line;
  gsize len;

  /* Exactly at the limit: 1023 bytes + "\n" = 1024, Dovecot's whole input buffer. */
  {
    g_autoptr(UsherLineReader) reader = usher_line_reader_new(USHER_RING_LINE_MAX);
    g_string_assign(s, "A\n");
    for (int i = 0; i < USHER_RING_LINE_MAX; i++)
      g_string_append_c(s, 'x');
    g_string_append(s, "\nB\n");
    usher_line_reader_feed(reader, s->str, s->len);
    g_assert_cmpint(usher_line_reader_next(reader, &line, &len), ==, USHER_LINE_OK);
    g_assert_cmpuint(len, ==, 1);
    g_assert_cmpint(usher_line_reader_next(reader, &line, &len), ==, USHER_LINE_OK);
    g_assert_cmpuint(len, ==, USHER_RING_LINE_MAX);
    g_assert_cmpint(usher_line_reader_next(reader, &line, &len), ==, USHER_LINE_OK);
    g_assert_cmpmem(line, len, "B", 1);
  }
  /* With CRLF the CR counts: 1022 + "\r\n" fits, 1023 + "\r\n" does not. */
  {
    g_autoptr(UsherLineReader) reader = usher_line_reader_new(USHER_RING_LINE_MAX);
    g_string_truncate(s, 0);
    for (int i = 0; i < USHER_RING_LINE_MAX - 1; i++)
      g_string_append_c(s, 'x');
    g_string_append(s, "\r\n");
    usher_line_reader_feed(reader, s->str, s->len);
    g_assert_cmpint(usher_line_reader_next(reader, &line, &len), ==, USHER_LINE_OK);
    g_assert_cmpuint(len, ==, USHER_RING_LINE_MAX - 1);
  }
  {
    g_autoptr(UsherLineReader) reader = usher_line_reader_new(USHER_RING_LINE_MAX);
    g_string_truncate(s, 0);
    for (int i = 0; i < USHER_RING_LINE_MAX; i++)
      g_string_append_c(s, 'x');
    g_string_append(s, "\r\n");
    usher_line_reader_feed(reader, s->str, s->len);
    g_assert_cmpint(usher_line_reader_next(reader, &line, &len), ==, USHER_LINE_TOO_LONG);
  }
  /* One over: 1024 bytes before "\n", whatever the chunking. */
  g_string_assign(s, "OK\n");
  for (int i = 0; i < USHER_RING_LINE_MAX + 1; i++)
    g_string_append_c(s, 'y');
  g_string_append(s, "\nNEXT\n");
  for (gsize split = 0; split <= s->len; split += 61) {
    g_autofree char *got = read_split(s->str, s->len, split);
    g_assert_cmpstr(got, ==, "OK|!");
  }

  /* The error is reported as soon as 1024 bytes without "\n" are buffered, not before. */
  {
    g_autoptr(UsherLineReader) reader = usher_line_reader_new(USHER_RING_LINE_MAX);
    g_autofree char *zs = g_strnfill(USHER_RING_LINE_MAX, 'z');
    usher_line_reader_feed(reader, zs, USHER_RING_LINE_MAX);
    g_assert_cmpint(usher_line_reader_next(reader, &line, &len), ==, USHER_LINE_NEED_MORE);
    usher_line_reader_feed(reader, "z", 1);
    g_assert_cmpint(usher_line_reader_next(reader, &line, &len), ==, USHER_LINE_TOO_LONG);
    /* Sticky: more input is discarded and counted. */
    usher_line_reader_feed(reader, "DONE\n", 5);
    g_assert_cmpint(usher_line_reader_next(reader, &line, &len), ==, USHER_LINE_TOO_LONG);
    g_assert_true(usher_line_reader_failed(reader));
    g_assert_cmpuint(usher_line_reader_get_pending(reader), ==, 0);
    UsherLineReaderStats stats;
    usher_line_reader_get_stats(reader, &stats);
    g_assert_cmpuint(stats.too_long, ==, 1);
    g_assert_cmpuint(stats.lines, ==, 0);
    g_assert_cmpuint(stats.bytes_in, ==, USHER_RING_LINE_MAX + 1 + 5);
    g_assert_cmpuint(stats.bytes_discarded, ==, USHER_RING_LINE_MAX + 1 + 5);
  }

  /* A small custom limit, byte by byte and all at once. */
  static const char data[] = "abc\nabc\r\nabcde\nx\n";
  g_autofree char *bytewise = read_bytewise(data, sizeof(data) - 1, 4);
  g_assert_cmpstr(bytewise, ==, "abc|abc|!");
  g_autoptr(UsherLineReader) reader = usher_line_reader_new(4);
  const char *chunk = data;
  gsize chunk_len = sizeof(data) - 1;
  g_autofree char *whole = read_all(reader, &chunk, &chunk_len, 1);
  g_assert_cmpstr(whole, ==, "abc|abc|!");
}

static void
test_reader_many_lines(void)
{
  /* A large chunk with thousands of lines, fed in uneven pieces; lines must come out intact. */
  g_autoptr(GString) s = g_string_new(NULL);
  for (guint i = 0; i < 5000; i++)
    g_string_append_printf(s, "USER\t%u\t10.0.%u.%u\t%u\n", i * 7919u, i % 256, i / 256, i);
  g_autoptr(UsherLineReader) reader = usher_line_reader_new(USHER_RING_LINE_MAX);
  guint seen = 0;
  gsize pos = 0, step = 1;
  while (pos < s->len) {
    gsize n = MIN(step, s->len - pos);
    usher_line_reader_feed(reader, s->str + pos, n);
    pos += n;
    step = step * 3 % 4099 + 1;
    char *line;
    gsize len;
    while (usher_line_reader_next(reader, &line, &len) == USHER_LINE_OK) {
      UsherRingMsg msg;
      g_assert_cmpint(usher_ring_msg_parse(line, len, 0, &msg), ==, USHER_RING_PARSE_OK);
      g_assert_cmpuint(msg.user.hash, ==, seen * 7919u);
      g_assert_cmpint(msg.user.timestamp, ==, seen);
      seen++;
    }
  }
  g_assert_cmpuint(seen, ==, 5000);
}

/* ---- parsing each message ---------------------------------------------------------------- */

static void
test_parse_handshake_messages(void)
{
  UsherRingMsg msg;
  g_autofree char *b1 = NULL, *b2 = NULL, *b3 = NULL, *b4 = NULL, *b5 = NULL, *b6 = NULL;
  g_autofree char *b7 = NULL, *b8 = NULL, *b9 = NULL, *b10 = NULL, *b11 = NULL, *b12 = NULL;

  parse_ok("VERSION\tdirector\t1\t9", 0, USHER_RING_MSG_VERSION, &msg, &b1);
  g_assert_cmpuint(msg.version.major, ==, 1);
  g_assert_cmpuint(msg.version.minor, ==, 9);
  /* Major 2 is syntax; refusing it is the state machine's job. Extra fields are ignored. */
  parse_ok("VERSION\tdirector\t2\t10\tfuture", 0, USHER_RING_MSG_VERSION, &msg, &b2);
  g_assert_cmpuint(msg.version.major, ==, 2);
  g_assert_cmpuint(msg.version.minor, ==, 10);

  parse_ok("ME\t127.0.5.1\t19190\t1795393974", 0, USHER_RING_MSG_ME, &msg, &b3);
  assert_ip(&msg.me.addr.ip, "127.0.5.1");
  g_assert_cmpuint(msg.me.addr.port, ==, 19190);
  g_assert_true(msg.me.has_time);
  g_assert_cmpint(msg.me.time, ==, 1795393974);
  parse_ok("ME\t::1\t9090", 0, USHER_RING_MSG_ME, &msg, &b4);
  g_assert_false(msg.me.has_time);
  assert_ip(&msg.me.addr.ip, "::1");

  parse_ok("DIRECTOR\t127.0.5.2\t19190", 0, USHER_RING_MSG_DIRECTOR, &msg, &b5);
  assert_ip(&msg.director.ip, "127.0.5.2");
  g_assert_cmpuint(msg.director.port, ==, 19190);

  parse_ok("HOST-HAND-START\t1", 0, USHER_RING_MSG_HOST_HAND_START, &msg, &b6);
  g_assert_true(msg.host_hand.ring_handshaked);
  parse_ok("HOST-HAND-END\t0", USHER_RING_PARSE_HOST_LIST, USHER_RING_MSG_HOST_HAND_END, &msg, &b7);
  g_assert_false(msg.host_hand.ring_handshaked);

  parse_ok("HOST\t127.0.2.1\t100\t\tU0\t", USHER_RING_PARSE_HOST_LIST,
           USHER_RING_MSG_HOST_HANDSHAKE, &msg, &b8);
  assert_ip(&msg.host.ip, "127.0.2.1");
  g_assert_cmpuint(msg.host.vhost_count, ==, 100);
  g_assert_cmpstr(msg.host.tag, ==, "");
  g_assert_false(msg.host.down);
  g_assert_cmpint(msg.host.last_updown_change, ==, 0);
  g_assert_cmpstr(msg.host.hostname, ==, "");

  parse_ok("HOST\t10.0.0.1\t50\ttag\001t1\tD1795394359\tmail\001t1.example",
           USHER_RING_PARSE_HOST_LIST, USHER_RING_MSG_HOST_HANDSHAKE, &msg, &b9);
  g_assert_cmpstr(msg.host.tag, ==, "tag\t1");
  g_assert_true(msg.host.down);
  g_assert_cmpint(msg.host.last_updown_change, ==, 1795394359);
  g_assert_cmpstr(msg.host.hostname, ==, "mail\t1.example");

  parse_ok("U\t617210206\t127.0.2.3\t1795394151", 0, USHER_RING_MSG_U, &msg, &b10);
  g_assert_cmpuint(msg.handshake_user.hash, ==, 617210206);
  assert_ip(&msg.handshake_user.ip, "127.0.2.3");
  g_assert_cmpuint(msg.handshake_user.timestamp, ==, 1795394151);
  g_assert_false(msg.handshake_user.weak);
  parse_ok("U\t1\t127.0.2.3\t2\tw", 0, USHER_RING_MSG_U, &msg, &b11);
  g_assert_true(msg.handshake_user.weak);

  parse_ok("OPTIONS\tconsistent-hashing", 0, USHER_RING_MSG_OPTIONS, &msg, &b12);
  g_assert_true(msg.options.consistent_hashing);
  g_assert_cmpuint(msg.options.n_tokens, ==, 1);
  g_assert_cmpstr(msg.options.tokens, ==, "consistent-hashing");
}

static void
test_parse_flood_messages(void)
{
  UsherRingMsg msg;
  g_autofree char *b1 = NULL, *b2 = NULL, *b3 = NULL, *b4 = NULL, *b5 = NULL, *b6 = NULL;
  g_autofree char *b7 = NULL, *b8 = NULL, *b9 = NULL, *b10 = NULL, *b11 = NULL, *b12 = NULL;
  g_autofree char *b13 = NULL, *b14 = NULL;

  parse_ok("HOST\t127.0.5.1\t19190\t2\t127.0.2.2\t50\t\tD1795394359\t", 0, USHER_RING_MSG_HOST,
           &msg, &b1);
  assert_origin(&msg.host.origin, "127.0.5.1", 19190, 2);
  assert_ip(&msg.host.ip, "127.0.2.2");
  g_assert_cmpuint(msg.host.vhost_count, ==, 50);
  g_assert_true(msg.host.down);
  g_assert_cmpint(msg.host.last_updown_change, ==, 1795394359);

  /* The old short form: no tag, no up/down, no hostname. */
  parse_ok("HOST\t127.0.5.1\t19190\t3\t127.0.2.2\t0", 0, USHER_RING_MSG_HOST, &msg, &b2);
  g_assert_cmpuint(msg.host.vhost_count, ==, 0);
  g_assert_cmpstr(msg.host.tag, ==, "");
  g_assert_false(msg.host.down);
  g_assert_cmpstr(msg.host.hostname, ==, "");

  parse_ok("HOST-REMOVE\t127.0.5.1\t19190\t4\t127.0.2.3", 0, USHER_RING_MSG_HOST_REMOVE, &msg, &b3);
  assert_origin(&msg.host_ref.origin, "127.0.5.1", 19190, 4);
  assert_ip(&msg.host_ref.ip, "127.0.2.3");
  parse_ok("HOST-FLUSH\t127.0.5.1\t19190\t5\t127.0.2.3", 0, USHER_RING_MSG_HOST_FLUSH, &msg, &b4);
  g_assert_cmpuint(msg.host_ref.origin.seq, ==, 5);

  parse_ok("USER\t617210206\t127.0.2.1\t1795394789", 0, USHER_RING_MSG_USER, &msg, &b5);
  g_assert_cmpuint(msg.user.hash, ==, 617210206);
  assert_ip(&msg.user.ip, "127.0.2.1");
  g_assert_true(msg.user.has_timestamp);
  g_assert_cmpint(msg.user.timestamp, ==, 1795394789);
  parse_ok("USER\t617210206\t127.0.2.1", 0, USHER_RING_MSG_USER, &msg, &b6);
  g_assert_false(msg.user.has_timestamp);

  parse_ok("USER-WEAK\t127.0.5.1\t19190\t8\t617210206\t127.0.2.3", 0, USHER_RING_MSG_USER_WEAK,
           &msg, &b7);
  assert_origin(&msg.user_ref.origin, "127.0.5.1", 19190, 8);
  g_assert_cmpuint(msg.user_ref.hash, ==, 617210206);
  assert_ip(&msg.user_ref.ip, "127.0.2.3");
  parse_ok("USER-MOVE\t127.0.5.1\t19190\t5\t617210206\t127.0.2.2", 0, USHER_RING_MSG_USER_MOVE,
           &msg, &b8);
  assert_ip(&msg.user_ref.ip, "127.0.2.2");
  parse_ok("USER-KICK-HASH\t127.0.5.1\t19190\t1\t617210206\t127.0.2.1", 0,
           USHER_RING_MSG_USER_KICK_HASH, &msg, &b9);
  assert_origin(&msg.user_ref.origin, "127.0.5.1", 19190, 1);

  parse_ok("USER-KILLED\t617210206", 0, USHER_RING_MSG_USER_KILLED, &msg, &b10);
  g_assert_cmpuint(msg.user_killed.hash, ==, 617210206);
  parse_ok("USER-KILLED-EVERYWHERE\t127.0.5.1\t19190\t6\t617210206", 0,
           USHER_RING_MSG_USER_KILLED_EVERYWHERE, &msg, &b11);
  assert_origin(&msg.user_killed_everywhere.origin, "127.0.5.1", 19190, 6);
  g_assert_cmpuint(msg.user_killed_everywhere.hash, ==, 617210206);

  parse_ok("USER-KICK\t127.0.5.1\t19190\t9\ttest@example.com", 0, USHER_RING_MSG_USER_KICK, &msg,
           &b12);
  g_assert_cmpstr(msg.user_kick.username, ==, "test@example.com");
  /* An empty user name is one (empty) field. */
  parse_ok("USER-KICK\t127.0.5.1\t19190\t9\t", 0, USHER_RING_MSG_USER_KICK, &msg, &b13);
  g_assert_cmpstr(msg.user_kick.username, ==, "");

  parse_ok("USER-KICK-ALT\t127.0.5.1\t19190\t10\tuser_alt\tbob", 0, USHER_RING_MSG_USER_KICK_ALT,
           &msg, &b14);
  g_assert_cmpstr(msg.user_kick_alt.field, ==, "user_alt");
  g_assert_cmpstr(msg.user_kick_alt.value, ==, "bob");
}

static void
test_parse_ring_messages(void)
{
  UsherRingMsg msg;
  g_autofree char *b1 = NULL, *b2 = NULL, *b3 = NULL, *b4 = NULL, *b5 = NULL, *b6 = NULL;
  g_autofree char *b7 = NULL, *b8 = NULL, *b9 = NULL, *b10 = NULL;

  parse_ok("SYNC\t127.0.5.1\t19190\t1\t9\t1795393980\t2123223524", 0, USHER_RING_MSG_SYNC, &msg,
           &b1);
  assert_ip(&msg.sync.addr.ip, "127.0.5.1");
  g_assert_cmpuint(msg.sync.addr.port, ==, 19190);
  g_assert_cmpuint(msg.sync.seq, ==, 1);
  g_assert_cmpuint(msg.sync.minor, ==, 9);
  g_assert_true(msg.sync.has_timestamp);
  g_assert_cmpuint(msg.sync.timestamp, ==, 1795393980);
  g_assert_cmpuint(msg.sync.hosts_hash, ==, 2123223524);
  parse_ok("SYNC\t127.0.5.1\t19190\t4294967295", 0, USHER_RING_MSG_SYNC, &msg, &b2);
  g_assert_cmpuint(msg.sync.seq, ==, G_MAXUINT32);
  g_assert_cmpuint(msg.sync.minor, ==, 0);
  g_assert_false(msg.sync.has_timestamp);
  g_assert_cmpuint(msg.sync.hosts_hash, ==, 0);

  parse_ok("CONNECT\t127.0.5.3\t19190", 0, USHER_RING_MSG_CONNECT, &msg, &b3);
  assert_ip(&msg.director.ip, "127.0.5.3");
  parse_ok("DIRECTOR-REMOVE\t127.0.5.3\t19190", 0, USHER_RING_MSG_DIRECTOR_REMOVE, &msg, &b4);
  g_assert_cmpuint(msg.director.port, ==, 19190);

  parse_ok("PING\t1795394789\t0", 0, USHER_RING_MSG_PING, &msg, &b5);
  g_assert_true(msg.ping.has_values);
  g_assert_cmpint(msg.ping.time, ==, 1795394789);
  g_assert_cmpuint(msg.ping.buffer_bytes, ==, 0);
  parse_ok("PONG\t1795394790\t18446744073709551615", 0, USHER_RING_MSG_PONG, &msg, &b6);
  g_assert_cmpuint(msg.ping.buffer_bytes, ==, G_MAXUINT64);
  parse_ok("PING", 0, USHER_RING_MSG_PING, &msg, &b7);
  g_assert_false(msg.ping.has_values);

  parse_ok("QUIT\tInvalid input: BOGUS", 0, USHER_RING_MSG_QUIT, &msg, &b8);
  g_assert_cmpstr(msg.quit.reason, ==, "Invalid input: BOGUS");
  parse_ok("QUIT", 0, USHER_RING_MSG_QUIT, &msg, &b9);
  g_assert_cmpstr(msg.quit.reason, ==, "");
  parse_ok("DONE", 0, USHER_RING_MSG_DONE, &msg, &b10);
}

/* Extra fields and odd values that Dovecot tolerates. */
static void
test_parse_tolerance(void)
{
  static const struct {
    const char *line;
    UsherRingParseFlags flags;
    UsherRingMsgType type;
  } ok[] = {
      {"VERSION\tdirector\t1\t9\tx\ty", 0, USHER_RING_MSG_VERSION},
      {"ME\t1.2.3.4\t9090\t5\tx", 0, USHER_RING_MSG_ME},
      {"ME\t1.2.3.4\t9090\t-5", 0, USHER_RING_MSG_ME},
      {"DIRECTOR\t1.2.3.4\t9090\tx", 0, USHER_RING_MSG_DIRECTOR},
      {"DIRECTOR-REMOVE\t1.2.3.4\t9090\tx", 0, USHER_RING_MSG_DIRECTOR_REMOVE},
      {"HOST-HAND-START\t0\tx", 0, USHER_RING_MSG_HOST_HAND_START},
      {"HOST-HAND-END", USHER_RING_PARSE_HOST_LIST, USHER_RING_MSG_HOST_HAND_END},
      {"HOST-HAND-END\tjunk", 0, USHER_RING_MSG_HOST_HAND_END},
      {"HOST\t1.2.3.4\t9090\t1\t5.6.7.8\t1\tt\tU1\th\tfuture", 0, USHER_RING_MSG_HOST},
      {"HOST\t1.2.3.4\t9090\t1\t5.6.7.8\t1\tt\tU-1", 0, USHER_RING_MSG_HOST},
      {"HOST\t5.6.7.8\t1\tt\tD0\th\tfuture", USHER_RING_PARSE_HOST_LIST,
       USHER_RING_MSG_HOST_HANDSHAKE},
      {"HOST\t5.6.7.8\t1\tt", USHER_RING_PARSE_HOST_LIST, USHER_RING_MSG_HOST_HANDSHAKE},
      {"USER\t1\t1.2.3.4\t5\tw\tx", 0, USHER_RING_MSG_USER},
      {"USER\t1\t1.2.3.4\t-5", 0, USHER_RING_MSG_USER},
      {"U\t1\t1.2.3.4\t5\twhatever\tx", 0, USHER_RING_MSG_U},
      {"SYNC\t1.2.3.4\t9090\t1\t9\t2\t3\tfuture", 0, USHER_RING_MSG_SYNC},
      {"SYNC\t1.2.3.4\t9090\t1\t9", 0, USHER_RING_MSG_SYNC},
      {"SYNC\t1.2.3.4\t9090\t1\t9\t2", 0, USHER_RING_MSG_SYNC},
      {"PING\tx\ty", 0, USHER_RING_MSG_PING},
      {"PING\t5", 0, USHER_RING_MSG_PING},
      {"PONG\t5\t-1", 0, USHER_RING_MSG_PONG},
      {"PONG\t5\t18446744073709551616", 0, USHER_RING_MSG_PONG},
      {"DONE\tx", 0, USHER_RING_MSG_DONE},
      {"OPTIONS", 0, USHER_RING_MSG_OPTIONS},
      {"QUIT\ta\tb", 0, USHER_RING_MSG_QUIT},
  };
  for (gsize i = 0; i < G_N_ELEMENTS(ok); i++) {
    UsherRingMsg msg;
    g_autofree char *buf = NULL;
    parse_ok(ok[i].line, ok[i].flags, ok[i].type, &msg, &buf);
  }

  UsherRingMsg msg;
  g_autofree char *b1 = NULL, *b2 = NULL, *b3 = NULL, *b4 = NULL, *b5 = NULL, *b6 = NULL;
  g_autofree char *b7 = NULL, *b8 = NULL, *b9 = NULL, *b10 = NULL;

  parse_ok("HOST-HAND-START\t2", 0, USHER_RING_MSG_HOST_HAND_START, &msg, &b1);
  g_assert_true(msg.host_hand.ring_handshaked);
  parse_ok("HOST-HAND-END\t7", 0, USHER_RING_MSG_HOST_HAND_END, &msg, &b2);
  g_assert_true(msg.host_hand.ring_handshaked);
  parse_ok("U\t1\t1.2.3.4\t5\tx", 0, USHER_RING_MSG_U, &msg, &b3);
  g_assert_false(msg.handshake_user.weak);
  parse_ok("PING\t5\tx", 0, USHER_RING_MSG_PING, &msg, &b4);
  g_assert_false(msg.ping.has_values);
  g_assert_cmpint(msg.ping.time, ==, 0);
  parse_ok("PONG\t-5\t6\textra", 0, USHER_RING_MSG_PONG, &msg, &b5);
  g_assert_true(msg.ping.has_values);
  g_assert_cmpint(msg.ping.time, ==, -5);
  parse_ok("QUIT\ta\tb\t\tc\001td", 0, USHER_RING_MSG_QUIT, &msg, &b6);
  g_assert_cmpstr(msg.quit.reason, ==, "a b  c\td");
  parse_ok("OPTIONS\tfoo\t\tconsistent-hashing\tbar", 0, USHER_RING_MSG_OPTIONS, &msg, &b7);
  g_assert_true(msg.options.consistent_hashing);
  g_assert_cmpuint(msg.options.n_tokens, ==, 4);
  const char *cursor = msg.options.tokens;
  g_assert_cmpstr(usher_ring_options_next(&cursor), ==, "foo");
  g_assert_cmpstr(usher_ring_options_next(&cursor), ==, "");
  g_assert_cmpstr(usher_ring_options_next(&cursor), ==, "consistent-hashing");
  g_assert_cmpstr(usher_ring_options_next(&cursor), ==, "bar");
  parse_ok("OPTIONS\tconsistent-hashingX", 0, USHER_RING_MSG_OPTIONS, &msg, &b8);
  g_assert_false(msg.options.consistent_hashing);
  parse_ok("OPTIONS", 0, USHER_RING_MSG_OPTIONS, &msg, &b9);
  g_assert_false(msg.options.consistent_hashing);
  g_assert_cmpuint(msg.options.n_tokens, ==, 0);
  parse_ok("SYNC\t1.2.3.4\t9090\t1\t9\t2", 0, USHER_RING_MSG_SYNC, &msg, &b10);
  g_assert_true(msg.sync.has_timestamp);
  g_assert_cmpuint(msg.sync.timestamp, ==, 2);
  g_assert_cmpuint(msg.sync.hosts_hash, ==, 0);
}

/* The context flags change how HOST and USER read. */
static void
test_parse_context(void)
{
  UsherRingMsg msg;
  g_autofree char *b1 = NULL, *b2 = NULL, *b3 = NULL, *b4 = NULL, *b5 = NULL, *b6 = NULL;
  g_autofree char *b7 = NULL, *b8 = NULL;

  parse_ok("HOST\t1.2.3.4\t100", USHER_RING_PARSE_HOST_LIST, USHER_RING_MSG_HOST_HANDSHAKE, &msg,
           &b1);
  g_assert_cmpint(parse("HOST\t1.2.3.4\t100", 0, &msg, &b2), ==, USHER_RING_PARSE_MISSING_FIELD);
  /* A flood HOST read as a handshake HOST: "9090" is the vhost count, "1" the tag, and
   * "5.6.7.8" is not an up/down field. */
  g_assert_cmpint(
      parse("HOST\t1.2.3.4\t9090\t1\t5.6.7.8\t100", USHER_RING_PARSE_HOST_LIST, &msg, &b3), ==,
      USHER_RING_PARSE_BAD_VALUE);

  parse_ok("USER\t1\t1.2.3.4\t5", USHER_RING_PARSE_LEGACY_USER, USHER_RING_MSG_U, &msg, &b4);
  g_assert_cmpuint(msg.handshake_user.timestamp, ==, 5);
  g_assert_false(msg.handshake_user.weak);
  parse_ok("USER\t1\t1.2.3.4\t5\tw", USHER_RING_PARSE_LEGACY_USER, USHER_RING_MSG_U, &msg, &b5);
  g_assert_true(msg.handshake_user.weak);
  parse_ok("USER\t1\t1.2.3.4", USHER_RING_PARSE_LEGACY_USER, USHER_RING_MSG_USER, &msg, &b6);
  /* The handshake form parses the timestamp as unsigned. */
  g_assert_cmpint(parse("USER\t1\t1.2.3.4\t-5", USHER_RING_PARSE_LEGACY_USER, &msg, &b7), ==,
                  USHER_RING_PARSE_BAD_NUMBER);
  parse_ok("USER\t1\t1.2.3.4\t-5", 0, USHER_RING_MSG_USER, &msg, &b8);
  g_assert_cmpint(msg.user.timestamp, ==, -5);
}

typedef struct {
  const char *line;
  UsherRingParseFlags flags;
  UsherRingParseResult expect;
} BadCase;

static const BadCase bad_cases[] = {
    {"", 0, USHER_RING_PARSE_EMPTY},
    {"\t", 0, USHER_RING_PARSE_UNKNOWN_COMMAND},
    {"\001", 0, USHER_RING_PARSE_UNKNOWN_COMMAND},
    {"\tDONE", 0, USHER_RING_PARSE_UNKNOWN_COMMAND},
    {"BOGUS\tx", 0, USHER_RING_PARSE_UNKNOWN_COMMAND},
    {"done", 0, USHER_RING_PARSE_UNKNOWN_COMMAND},
    {"DONE ", 0, USHER_RING_PARSE_UNKNOWN_COMMAND},
    {"USERX\t1\t1.2.3.4", 0, USHER_RING_PARSE_UNKNOWN_COMMAND},
    {"HOST-HAND", 0, USHER_RING_PARSE_UNKNOWN_COMMAND},
    /* VERSION */
    {"VERSION", 0, USHER_RING_PARSE_MISSING_FIELD},
    {"VERSION\tdirector\t1", 0, USHER_RING_PARSE_MISSING_FIELD},
    {"VERSION\tdirector-doveadm\t1\t0", 0, USHER_RING_PARSE_BAD_VALUE},
    {"VERSION\tDirector\t1\t9", 0, USHER_RING_PARSE_BAD_VALUE},
    {"VERSION\tdirector\tx\t9", 0, USHER_RING_PARSE_BAD_NUMBER},
    {"VERSION\tdirector\t1\t-9", 0, USHER_RING_PARSE_BAD_NUMBER},
    {"VERSION\tdirector\t1\t4294967296", 0, USHER_RING_PARSE_BAD_NUMBER},
    {"VERSION\tdirector\t1\t", 0, USHER_RING_PARSE_BAD_NUMBER},
    /* ME */
    {"ME", 0, USHER_RING_PARSE_MISSING_FIELD},
    {"ME\t1.2.3.4", 0, USHER_RING_PARSE_MISSING_FIELD},
    {"ME\t1.2.3\t9090", 0, USHER_RING_PARSE_BAD_IP},
    {"ME\thost.example\t9090", 0, USHER_RING_PARSE_BAD_IP},
    {"ME\t\t9090", 0, USHER_RING_PARSE_BAD_IP},
    {"ME\t1.2.3.4\t0", 0, USHER_RING_PARSE_BAD_PORT},
    {"ME\t1.2.3.4\t65536", 0, USHER_RING_PARSE_BAD_PORT},
    {"ME\t1.2.3.4\t-1", 0, USHER_RING_PARSE_BAD_PORT},
    {"ME\t1.2.3.4\t\t", 0, USHER_RING_PARSE_BAD_PORT},
    {"ME\t1.2.3.4\t9090\t", 0, USHER_RING_PARSE_BAD_NUMBER},
    {"ME\t1.2.3.4\t9090\tx", 0, USHER_RING_PARSE_BAD_NUMBER},
    {"ME\t1.2.3.4\t9090\t+5", 0, USHER_RING_PARSE_BAD_NUMBER},
    {"ME\t1.2.3.4\t9090\t--5", 0, USHER_RING_PARSE_BAD_NUMBER},
    {"ME\t1.2.3.4\t9090\t9223372036854775808", 0, USHER_RING_PARSE_BAD_NUMBER},
    {"ME\t1.2.3.4\t9090\t-9223372036854775809", 0, USHER_RING_PARSE_BAD_NUMBER},
    /* DIRECTOR, DIRECTOR-REMOVE, CONNECT */
    {"DIRECTOR", 0, USHER_RING_PARSE_MISSING_FIELD},
    {"DIRECTOR\t1.2.3.4", 0, USHER_RING_PARSE_MISSING_FIELD},
    {"DIRECTOR\t1.2.3.4 \t9090", 0, USHER_RING_PARSE_BAD_IP},
    {"DIRECTOR\t127.1\t9090", 0, USHER_RING_PARSE_BAD_IP},
    {"DIRECTOR\t1.2.3.4\t90 90", 0, USHER_RING_PARSE_BAD_PORT},
    {"DIRECTOR-REMOVE\t1.2.3.4", 0, USHER_RING_PARSE_MISSING_FIELD},
    {"DIRECTOR-REMOVE\t1:::2\t9090", 0, USHER_RING_PARSE_BAD_IP},
    {"DIRECTOR-REMOVE\t1.2.3.4\t0x10", 0, USHER_RING_PARSE_BAD_PORT},
    {"CONNECT", 0, USHER_RING_PARSE_MISSING_FIELD},
    {"CONNECT\t1.2.3.4", 0, USHER_RING_PARSE_MISSING_FIELD},
    {"CONNECT\t1.2.3.4\t9090\tx", 0, USHER_RING_PARSE_EXTRA_FIELD},
    {"CONNECT\t1.2.3.4\t9090\t", 0, USHER_RING_PARSE_EXTRA_FIELD},
    {"CONNECT\tx\t9090", 0, USHER_RING_PARSE_BAD_IP},
    {"CONNECT\t1.2.3.4\t70000", 0, USHER_RING_PARSE_BAD_PORT},
    /* HOST-HAND-START */
    {"HOST-HAND-START", 0, USHER_RING_PARSE_MISSING_FIELD},
    {"HOST-HAND-START\tyes", 0, USHER_RING_PARSE_BAD_NUMBER},
    {"HOST-HAND-START\t", 0, USHER_RING_PARSE_BAD_NUMBER},
    /* HOST, flood form */
    {"HOST", 0, USHER_RING_PARSE_MISSING_FIELD},
    {"HOST\t1.2.3.4\t9090", 0, USHER_RING_PARSE_MISSING_FIELD},
    {"HOST\t1.2.3.4\t9090\t1", 0, USHER_RING_PARSE_MISSING_FIELD},
    {"HOST\t1.2.3.4\t9090\t1\t5.6.7.8", 0, USHER_RING_PARSE_MISSING_FIELD},
    {"HOST\tx\t9090\t1\t5.6.7.8\t100", 0, USHER_RING_PARSE_BAD_IP},
    {"HOST\t1.2.3.4\t0\t1\t5.6.7.8\t100", 0, USHER_RING_PARSE_BAD_PORT},
    {"HOST\t1.2.3.4\t9090\tx\t5.6.7.8\t100", 0, USHER_RING_PARSE_BAD_NUMBER},
    {"HOST\t1.2.3.4\t9090\t-1\t5.6.7.8\t100", 0, USHER_RING_PARSE_BAD_NUMBER},
    {"HOST\t1.2.3.4\t9090\t4294967296\t5.6.7.8\t100", 0, USHER_RING_PARSE_BAD_NUMBER},
    {"HOST\t1.2.3.4\t9090\t1\t5.6.7\t100", 0, USHER_RING_PARSE_BAD_IP},
    {"HOST\t1.2.3.4\t9090\t1\t5.6.7.8\tmany", 0, USHER_RING_PARSE_BAD_NUMBER},
    {"HOST\t1.2.3.4\t9090\t1\t5.6.7.8\t100\t\t", 0, USHER_RING_PARSE_BAD_VALUE},
    {"HOST\t1.2.3.4\t9090\t1\t5.6.7.8\t100\t\tU", 0, USHER_RING_PARSE_BAD_VALUE},
    {"HOST\t1.2.3.4\t9090\t1\t5.6.7.8\t100\t\tX5", 0, USHER_RING_PARSE_BAD_VALUE},
    {"HOST\t1.2.3.4\t9090\t1\t5.6.7.8\t100\t\tu5", 0, USHER_RING_PARSE_BAD_VALUE},
    {"HOST\t1.2.3.4\t9090\t1\t5.6.7.8\t100\t\tU+5", 0, USHER_RING_PARSE_BAD_VALUE},
    {"HOST\t1.2.3.4\t9090\t1\t5.6.7.8\t100\t\tU5x", 0, USHER_RING_PARSE_BAD_VALUE},
    {"HOST\t1.2.3.4\t9090\t1\t5.6.7.8\t100\t\tD99999999999999999999", 0,
     USHER_RING_PARSE_BAD_VALUE},
    /* HOST, handshake form */
    {"HOST", USHER_RING_PARSE_HOST_LIST, USHER_RING_PARSE_MISSING_FIELD},
    {"HOST\t1.2.3.4", USHER_RING_PARSE_HOST_LIST, USHER_RING_PARSE_MISSING_FIELD},
    {"HOST\t1.2.3.4\t-1", USHER_RING_PARSE_HOST_LIST, USHER_RING_PARSE_BAD_NUMBER},
    {"HOST\t1.2.3.4.5\t1", USHER_RING_PARSE_HOST_LIST, USHER_RING_PARSE_BAD_IP},
    {"HOST\t1.2.3.4\t1\t\t1", USHER_RING_PARSE_HOST_LIST, USHER_RING_PARSE_BAD_VALUE},
    /* HOST-REMOVE, HOST-FLUSH */
    {"HOST-REMOVE\t1.2.3.4\t9090\t1", 0, USHER_RING_PARSE_MISSING_FIELD},
    {"HOST-REMOVE\t1.2.3.4\t9090\t1\t5.6.7.8\tx", 0, USHER_RING_PARSE_EXTRA_FIELD},
    {"HOST-REMOVE\t1.2.3.4\t9090\t1\t5.6.7.8\t", 0, USHER_RING_PARSE_EXTRA_FIELD},
    {"HOST-REMOVE\t1.2.3.4\t9090\t1\t5.6.7.", 0, USHER_RING_PARSE_BAD_IP},
    {"HOST-FLUSH\t1.2.3.4\t9090", 0, USHER_RING_PARSE_MISSING_FIELD},
    {"HOST-FLUSH\t1.2.3.4\t9090\t1\t5.6.7.8\tx", 0, USHER_RING_PARSE_EXTRA_FIELD},
    {"HOST-FLUSH\t1.2.3.4\t9090\ts\t5.6.7.8", 0, USHER_RING_PARSE_BAD_NUMBER},
    /* USER */
    {"USER", 0, USHER_RING_PARSE_MISSING_FIELD},
    {"USER\t1", 0, USHER_RING_PARSE_MISSING_FIELD},
    {"USER\tx\t1.2.3.4", 0, USHER_RING_PARSE_BAD_NUMBER},
    {"USER\t-1\t1.2.3.4", 0, USHER_RING_PARSE_BAD_NUMBER},
    {"USER\t4294967296\t1.2.3.4", 0, USHER_RING_PARSE_BAD_NUMBER},
    {"USER\t99999999999999999999999\t1.2.3.4", 0, USHER_RING_PARSE_BAD_NUMBER},
    {"USER\t1\tfoo", 0, USHER_RING_PARSE_BAD_IP},
    {"USER\t1\t1.2.3.4\tx", 0, USHER_RING_PARSE_BAD_NUMBER},
    {"USER\t1\t1.2.3.4\t", 0, USHER_RING_PARSE_BAD_NUMBER},
    {"USER\t1\t1.2.3.4\t1.5", 0, USHER_RING_PARSE_BAD_NUMBER},
    {"USER\t1\t1.2.3.4\t9223372036854775808", 0, USHER_RING_PARSE_BAD_NUMBER},
    /* U */
    {"U", 0, USHER_RING_PARSE_MISSING_FIELD},
    {"U\t1\t1.2.3.4", 0, USHER_RING_PARSE_MISSING_FIELD},
    {"U\t1\t1.2.3.4\t-5", 0, USHER_RING_PARSE_BAD_NUMBER},
    {"U\t1\t1.2.3.4\t4294967296", 0, USHER_RING_PARSE_BAD_NUMBER},
    {"U\tx\t1.2.3.4\t5", 0, USHER_RING_PARSE_BAD_NUMBER},
    {"U\t1\t::g\t5", 0, USHER_RING_PARSE_BAD_IP},
    /* USER-WEAK, USER-MOVE, USER-KICK-HASH */
    {"USER-WEAK\t1.2.3.4\t9090\t1\t5", 0, USHER_RING_PARSE_MISSING_FIELD},
    {"USER-WEAK\t1.2.3.4\t9090\t1\t5\t5.6.7.8\tx", 0, USHER_RING_PARSE_EXTRA_FIELD},
    {"USER-WEAK\t1.2.3.4\t9090\t1\tx\t5.6.7.8", 0, USHER_RING_PARSE_BAD_NUMBER},
    {"USER-MOVE\t1.2.3.4\t9090", 0, USHER_RING_PARSE_MISSING_FIELD},
    {"USER-MOVE\t1.2.3.4\t9090\t1\t5\t5.6.7.8\t", 0, USHER_RING_PARSE_EXTRA_FIELD},
    {"USER-MOVE\t1.2.3.4\t9090\t1\t5\tnope", 0, USHER_RING_PARSE_BAD_IP},
    {"USER-MOVE\t1.2.3.4\t65536\t1\t5\t5.6.7.8", 0, USHER_RING_PARSE_BAD_PORT},
    {"USER-KICK-HASH\t1.2.3.4\t9090\t1\t5", 0, USHER_RING_PARSE_MISSING_FIELD},
    {"USER-KICK-HASH\t1.2.3.4\t9090\t1\t5\t5.6.7.8\tx", 0, USHER_RING_PARSE_EXTRA_FIELD},
    {"USER-KICK-HASH\t1.2.3.4\t9090\t1\t4294967296\t5.6.7.8", 0, USHER_RING_PARSE_BAD_NUMBER},
    /* USER-KILLED, USER-KILLED-EVERYWHERE */
    {"USER-KILLED", 0, USHER_RING_PARSE_MISSING_FIELD},
    {"USER-KILLED\t1\t2", 0, USHER_RING_PARSE_EXTRA_FIELD},
    {"USER-KILLED\t ", 0, USHER_RING_PARSE_BAD_NUMBER},
    {"USER-KILLED\t", 0, USHER_RING_PARSE_BAD_NUMBER},
    {"USER-KILLED-EVERYWHERE\t1.2.3.4\t9090\t1", 0, USHER_RING_PARSE_MISSING_FIELD},
    {"USER-KILLED-EVERYWHERE\t1.2.3.4\t9090\t1\t5\t6", 0, USHER_RING_PARSE_EXTRA_FIELD},
    {"USER-KILLED-EVERYWHERE\t1.2.3.4\t9090\t1\tfive", 0, USHER_RING_PARSE_BAD_NUMBER},
    /* USER-KICK, USER-KICK-ALT */
    {"USER-KICK\t1.2.3.4\t9090\t1", 0, USHER_RING_PARSE_MISSING_FIELD},
    {"USER-KICK\t1.2.3.4\t9090\t1\tbob\tx", 0, USHER_RING_PARSE_EXTRA_FIELD},
    {"USER-KICK\t1.2.3.4\t9090\tone\tbob", 0, USHER_RING_PARSE_BAD_NUMBER},
    {"USER-KICK-ALT\t1.2.3.4\t9090\t1\tfield", 0, USHER_RING_PARSE_MISSING_FIELD},
    {"USER-KICK-ALT\t1.2.3.4\t9090\t1\tfield\tvalue\tx", 0, USHER_RING_PARSE_EXTRA_FIELD},
    {"USER-KICK-ALT\t1.2.3\t9090\t1\tfield\tvalue", 0, USHER_RING_PARSE_BAD_IP},
    /* SYNC */
    {"SYNC", 0, USHER_RING_PARSE_MISSING_FIELD},
    {"SYNC\t1.2.3.4\t9090", 0, USHER_RING_PARSE_MISSING_FIELD},
    {"SYNC\t1.2.3.4.\t9090\t1", 0, USHER_RING_PARSE_BAD_IP},
    {"SYNC\t1.2.3.4\t0\t1", 0, USHER_RING_PARSE_BAD_PORT},
    {"SYNC\t1.2.3.4\t9090\tx", 0, USHER_RING_PARSE_BAD_NUMBER},
    {"SYNC\t1.2.3.4\t9090\t1\tx", 0, USHER_RING_PARSE_BAD_NUMBER},
    {"SYNC\t1.2.3.4\t9090\t1\t9\t-1", 0, USHER_RING_PARSE_BAD_NUMBER},
    {"SYNC\t1.2.3.4\t9090\t1\t9\t1\t4294967296", 0, USHER_RING_PARSE_BAD_NUMBER},
    {"SYNC\t1.2.3.4\t9090\t1\t9\t1\t", 0, USHER_RING_PARSE_BAD_NUMBER},
};

static void
test_parse_malformed(void)
{
  for (gsize i = 0; i < G_N_ELEMENTS(bad_cases); i++) {
    UsherRingMsg msg;
    g_autofree char *buf = NULL;
    UsherRingParseResult res = parse(bad_cases[i].line, bad_cases[i].flags, &msg, &buf);
    if (res != bad_cases[i].expect) {
      g_autofree char *esc = g_strescape(bad_cases[i].line, NULL);
      g_error("\"%s\": got \"%s\", expected \"%s\"", esc, usher_ring_parse_result_to_string(res),
              usher_ring_parse_result_to_string(bad_cases[i].expect));
    }
    g_assert_cmpint(msg.type, ==, USHER_RING_MSG_NONE);
  }

  /* Over the limit, whatever it holds. */
  g_autoptr(GString) s = g_string_new("USER-KICK\t1.2.3.4\t9090\t1\t");
  while (s->len < USHER_RING_LINE_MAX)
    g_string_append_c(s, 'u');
  UsherRingMsg msg;
  g_autofree char *b1 = NULL, *b2 = NULL;
  parse_ok(s->str, 0, USHER_RING_MSG_USER_KICK, &msg, &b1);
  g_string_append_c(s, 'u');
  g_assert_cmpint(parse(s->str, 0, &msg, &b2), ==, USHER_RING_PARSE_TOO_LONG);
}

static void
test_parse_numbers(void)
{
  static const struct {
    const char *text;
    gboolean ok;
    guint32 value;
  } u32[] = {
      {"0", TRUE, 0},
      {"4294967295", TRUE, G_MAXUINT32},
      {"0004294967295", TRUE, G_MAXUINT32},
      {"00000000000000000000000000000000000001", TRUE, 1},
      {"4294967296", FALSE, 0},
      {"18446744073709551615", FALSE, 0},
      {"18446744073709551616", FALSE, 0},
      {"", FALSE, 0},
      {"-0", FALSE, 0},
      {"+1", FALSE, 0},
      {" 1", FALSE, 0},
      {"1 ", FALSE, 0},
      {"0x10", FALSE, 0},
      {"1e3", FALSE, 0},
      {"\xd9\xa1", FALSE, 0}, /* ARABIC-INDIC DIGIT ONE */
  };
  for (gsize i = 0; i < G_N_ELEMENTS(u32); i++) {
    g_autofree char *line = g_strconcat("USER-KILLED\t", u32[i].text, NULL);
    UsherRingMsg msg;
    g_assert_cmpint(usher_ring_msg_parse(line, strlen(line), 0, &msg), ==,
                    u32[i].ok ? USHER_RING_PARSE_OK : USHER_RING_PARSE_BAD_NUMBER);
    g_assert_cmpuint(msg.user_killed.hash, ==, u32[i].value);
  }

  static const struct {
    const char *text;
    gboolean ok;
    gint64 value;
  } i64[] = {
      {"0", TRUE, 0},
      {"-0", TRUE, 0},
      {"-1", TRUE, -1},
      {"9223372036854775807", TRUE, G_MAXINT64},
      {"-9223372036854775808", TRUE, G_MININT64},
      {"0009223372036854775807", TRUE, G_MAXINT64},
      {"9223372036854775808", FALSE, 0},
      {"-9223372036854775809", FALSE, 0},
      {"18446744073709551616", FALSE, 0},
      {"-", FALSE, 0},
      {"--1", FALSE, 0},
      {"+1", FALSE, 0},
      {"1-", FALSE, 0},
  };
  for (gsize i = 0; i < G_N_ELEMENTS(i64); i++) {
    g_autofree char *line = g_strconcat("ME\t1.2.3.4\t9090\t", i64[i].text, NULL);
    UsherRingMsg msg;
    g_assert_cmpint(usher_ring_msg_parse(line, strlen(line), 0, &msg), ==,
                    i64[i].ok ? USHER_RING_PARSE_OK : USHER_RING_PARSE_BAD_NUMBER);
    g_assert_cmpint(msg.me.time, ==, i64[i].value);
  }

  static const struct {
    const char *text;
    gboolean ok;
    guint16 value;
  } ports[] = {
      {"1", TRUE, 1},           {"65535", TRUE, 65535}, {"0009090", TRUE, 9090},
      {"0", FALSE, 0},          {"000", FALSE, 0},      {"65536", FALSE, 0},
      {"4294976386", FALSE, 0}, {"-9090", FALSE, 0},    {"", FALSE, 0},
  };
  for (gsize i = 0; i < G_N_ELEMENTS(ports); i++) {
    g_autofree char *line = g_strconcat("DIRECTOR\t1.2.3.4\t", ports[i].text, NULL);
    UsherRingMsg msg;
    g_assert_cmpint(usher_ring_msg_parse(line, strlen(line), 0, &msg), ==,
                    ports[i].ok ? USHER_RING_PARSE_OK : USHER_RING_PARSE_BAD_PORT);
    g_assert_cmpuint(msg.director.port, ==, ports[i].value);
  }
}

static void
test_parse_ipv6(void)
{
  UsherRingMsg msg;
  g_autofree char *b1 = NULL, *b2 = NULL, *b3 = NULL, *b4 = NULL, *b5 = NULL;

  parse_ok("USER\t5\t2001:DB8:0:0:0:0:0:1\t7", 0, USHER_RING_MSG_USER, &msg, &b1);
  assert_ip(&msg.user.ip, "2001:db8::1");
  assert_format(&msg, 9, "USER\t5\t2001:db8::1\t7\n");

  parse_ok("HOST\t[fe80::1]\t19190\t3\t::ffff:10.0.0.1\t100\ttag\tU5\tbackend", 0,
           USHER_RING_MSG_HOST, &msg, &b2);
  assert_ip(&msg.host.origin.ip, "fe80::1");
  assert_ip(&msg.host.ip, "::ffff:10.0.0.1");
  assert_format(&msg, 9, "HOST\tfe80::1\t19190\t3\t::ffff:10.0.0.1\t100\ttag\tU5\tbackend\n");

  parse_ok("SYNC\t::1\t9090\t1\t9\t2\t3", 0, USHER_RING_MSG_SYNC, &msg, &b3);
  assert_format(&msg, 9, "SYNC\t::1\t9090\t1\t9\t2\t3\n");

  g_assert_cmpint(parse("USER\t5\t1::2::3", 0, &msg, &b4), ==, USHER_RING_PARSE_BAD_IP);
  g_assert_cmpint(parse("DIRECTOR\t[1.2.3.4]\t9090", 0, &msg, &b5), ==, USHER_RING_PARSE_BAD_IP);
}

/* ---- formatting -------------------------------------------------------------------------- */

/* The exact lines of the spec (sections 4.3, 4.4, 4.6.2, 4.8, 5.1), built from typed messages. */
static void
test_format_spec_lines(void)
{
  UsherRingMsg msg;

  usher_ring_msg_init(&msg, USHER_RING_MSG_VERSION);
  msg.version.major = USHER_RING_VERSION_MAJOR;
  msg.version.minor = USHER_RING_VERSION_MINOR;
  assert_format(&msg, 9, "VERSION\tdirector\t1\t9\n");
  assert_format(&msg, 0, "VERSION\tdirector\t1\t9\n");

  usher_ring_msg_init(&msg, USHER_RING_MSG_ME);
  msg.me.addr.ip = ip("127.0.5.1");
  msg.me.addr.port = 19190;
  msg.me.has_time = TRUE;
  msg.me.time = 1795393974;
  assert_format(&msg, 9, "ME\t127.0.5.1\t19190\t1795393974\n");

  usher_ring_msg_init(&msg, USHER_RING_MSG_DIRECTOR);
  msg.director.ip = ip("127.0.5.2");
  msg.director.port = 19190;
  assert_format(&msg, 9, "DIRECTOR\t127.0.5.2\t19190\n");

  usher_ring_msg_init(&msg, USHER_RING_MSG_HOST_HAND_START);
  assert_format(&msg, 9, "HOST-HAND-START\t0\n");
  msg.host_hand.ring_handshaked = TRUE;
  assert_format(&msg, 9, "HOST-HAND-START\t1\n");

  usher_ring_msg_init(&msg, USHER_RING_MSG_HOST_HANDSHAKE);
  msg.host.ip = ip("127.0.2.1");
  msg.host.vhost_count = 100;
  assert_format(&msg, 9, "HOST\t127.0.2.1\t100\t\tU0\t\n");

  usher_ring_msg_init(&msg, USHER_RING_MSG_HOST_HAND_END);
  assert_format(&msg, 9, "HOST-HAND-END\t0\n");

  usher_ring_msg_init(&msg, USHER_RING_MSG_U);
  msg.handshake_user.hash = 617210206;
  msg.handshake_user.ip = ip("127.0.2.3");
  msg.handshake_user.timestamp = 1795394151;
  assert_format(&msg, 9, "U\t617210206\t127.0.2.3\t1795394151\n");

  usher_ring_msg_init(&msg, USHER_RING_MSG_OPTIONS);
  msg.options.tokens = USHER_RING_OPTION_CONSISTENT_HASHING;
  msg.options.n_tokens = 1;
  assert_format(&msg, 9, "OPTIONS\tconsistent-hashing\n");

  usher_ring_msg_init(&msg, USHER_RING_MSG_DONE);
  assert_format(&msg, 9, "DONE\n");

  usher_ring_msg_init(&msg, USHER_RING_MSG_SYNC);
  msg.sync.addr.ip = ip("127.0.5.1");
  msg.sync.addr.port = 19190;
  msg.sync.seq = 1;
  msg.sync.minor = 9;
  msg.sync.has_timestamp = TRUE;
  msg.sync.timestamp = 1795393980;
  msg.sync.hosts_hash = 2123223524;
  assert_format(&msg, 9, "SYNC\t127.0.5.1\t19190\t1\t9\t1795393980\t2123223524\n");

  usher_ring_msg_init(&msg, USHER_RING_MSG_HOST);
  msg.host.origin = origin("127.0.5.1", 19190, 2);
  msg.host.ip = ip("127.0.2.2");
  msg.host.vhost_count = 50;
  msg.host.down = TRUE;
  msg.host.last_updown_change = 1795394359;
  assert_format(&msg, 9, "HOST\t127.0.5.1\t19190\t2\t127.0.2.2\t50\t\tD1795394359\t\n");

  usher_ring_msg_init(&msg, USHER_RING_MSG_USER_KICK_HASH);
  msg.user_ref.origin = origin("127.0.5.1", 19190, 1);
  msg.user_ref.hash = 617210206;
  msg.user_ref.ip = ip("127.0.2.1");
  assert_format(&msg, 9, "USER-KICK-HASH\t127.0.5.1\t19190\t1\t617210206\t127.0.2.1\n");

  usher_ring_msg_init(&msg, USHER_RING_MSG_USER);
  msg.user.hash = 617210206;
  msg.user.ip = ip("127.0.2.1");
  msg.user.has_timestamp = TRUE;
  msg.user.timestamp = 1795394789;
  assert_format(&msg, 9, "USER\t617210206\t127.0.2.1\t1795394789\n");

  usher_ring_msg_init(&msg, USHER_RING_MSG_USER_WEAK);
  msg.user_ref.origin = origin("127.0.5.1", 19190, 3);
  msg.user_ref.hash = 617210206;
  msg.user_ref.ip = ip("127.0.2.3");
  assert_format(&msg, 9, "USER-WEAK\t127.0.5.1\t19190\t3\t617210206\t127.0.2.3\n");

  usher_ring_msg_init(&msg, USHER_RING_MSG_USER_MOVE);
  msg.user_ref.origin = origin("127.0.5.1", 19190, 5);
  msg.user_ref.hash = 617210206;
  msg.user_ref.ip = ip("127.0.2.2");
  assert_format(&msg, 9, "USER-MOVE\t127.0.5.1\t19190\t5\t617210206\t127.0.2.2\n");

  usher_ring_msg_init(&msg, USHER_RING_MSG_USER_KILLED);
  msg.user_killed.hash = 617210206;
  assert_format(&msg, 9, "USER-KILLED\t617210206\n");

  usher_ring_msg_init(&msg, USHER_RING_MSG_USER_KILLED_EVERYWHERE);
  msg.user_killed_everywhere.origin = origin("127.0.5.1", 19190, 6);
  msg.user_killed_everywhere.hash = 617210206;
  assert_format(&msg, 9, "USER-KILLED-EVERYWHERE\t127.0.5.1\t19190\t6\t617210206\n");

  usher_ring_msg_init(&msg, USHER_RING_MSG_QUIT);
  msg.quit.reason = "Invalid input: BOGUS";
  assert_format(&msg, 9, "QUIT\tInvalid input: BOGUS\n");

  usher_ring_msg_init(&msg, USHER_RING_MSG_PONG);
  msg.ping.has_values = TRUE;
  msg.ping.time = 1795394789;
  assert_format(&msg, 9, "PONG\t1795394789\t0\n");
  usher_ring_msg_init(&msg, USHER_RING_MSG_PING);
  assert_format(&msg, 9, "PING\n");

  usher_ring_msg_init(&msg, USHER_RING_MSG_CONNECT);
  msg.director.ip = ip("127.0.5.3");
  msg.director.port = 19190;
  assert_format(&msg, 9, "CONNECT\t127.0.5.3\t19190\n");

  usher_ring_msg_init(&msg, USHER_RING_MSG_DIRECTOR_REMOVE);
  msg.director.ip = ip("127.0.5.3");
  msg.director.port = 19190;
  assert_format(&msg, 9, "DIRECTOR-REMOVE\t127.0.5.3\t19190\n");

  usher_ring_msg_init(&msg, USHER_RING_MSG_HOST_REMOVE);
  msg.host_ref.origin = origin("127.0.5.1", 19190, 3);
  msg.host_ref.ip = ip("127.0.2.3");
  assert_format(&msg, 9, "HOST-REMOVE\t127.0.5.1\t19190\t3\t127.0.2.3\n");
  msg.type = USHER_RING_MSG_HOST_FLUSH;
  msg.host_ref.origin.seq = 4;
  assert_format(&msg, 9, "HOST-FLUSH\t127.0.5.1\t19190\t4\t127.0.2.3\n");

  usher_ring_msg_init(&msg, USHER_RING_MSG_USER_KICK);
  msg.user_kick.origin = origin("127.0.5.1", 19190, 7);
  msg.user_kick.username = "user1";
  assert_format(&msg, 9, "USER-KICK\t127.0.5.1\t19190\t7\tuser1\n");

  usher_ring_msg_init(&msg, USHER_RING_MSG_USER_KICK_ALT);
  msg.user_kick_alt.origin = origin("127.0.5.1", 19190, 8);
  msg.user_kick_alt.field = "user_alt";
  msg.user_kick_alt.value = "a\tb";
  assert_format(&msg, 9, "USER-KICK-ALT\t127.0.5.1\t19190\t8\tuser_alt\ta\001tb\n");
}

/* Canonical lines survive parse -> format byte for byte. */
static void
test_format_roundtrip_lines(void)
{
  static const struct {
    const char *line;
    UsherRingParseFlags flags;
  } lines[] = {
      {"VERSION\tdirector\t1\t9", 0},
      {"ME\t127.0.5.1\t19190\t1795393974", 0},
      {"ME\t127.0.5.1\t19190", 0},
      {"ME\t::1\t19190\t-1", 0},
      {"DIRECTOR\t127.0.5.1\t19190", 0},
      {"DIRECTOR-REMOVE\t127.0.5.2\t19190", 0},
      {"HOST-HAND-START\t1", 0},
      {"HOST-HAND-END\t1", USHER_RING_PARSE_HOST_LIST},
      {"HOST\t127.0.2.1\t100\t\tU0\t", USHER_RING_PARSE_HOST_LIST},
      {"HOST\t127.0.2.1\t100\tt\001tag\tD-7\tname\001n", USHER_RING_PARSE_HOST_LIST},
      {"HOST\t127.0.5.1\t19190\t2\t127.0.2.2\t50\t\tD1795394359\t", 0},
      {"HOST-REMOVE\t127.0.5.1\t19190\t3\t127.0.2.3", 0},
      {"HOST-FLUSH\t127.0.5.1\t19190\t4\t127.0.2.3", 0},
      {"USER\t617210206\t127.0.2.1\t1795394789", 0},
      {"USER\t617210206\t127.0.2.1", 0},
      {"U\t617210206\t127.0.2.3\t1795394151", 0},
      {"U\t617210206\t127.0.2.3\t1795394151\tw", 0},
      {"USER-WEAK\t127.0.5.1\t19190\t1\t617210206\t127.0.2.3", 0},
      {"USER-MOVE\t127.0.5.1\t19190\t5\t617210206\t127.0.2.2", 0},
      {"USER-KILLED\t617210206", 0},
      {"USER-KILLED-EVERYWHERE\t127.0.5.1\t19190\t6\t617210206", 0},
      {"USER-KICK\t127.0.5.1\t19190\t7\tu\0011s\001te\001rr\001n", 0},
      {"USER-KICK-ALT\t127.0.5.1\t19190\t8\tfield\tvalue", 0},
      {"USER-KICK-HASH\t127.0.5.1\t19190\t1\t617210206\t127.0.2.1", 0},
      {"SYNC\t127.0.5.1\t19190\t1\t9\t1795393980\t2123223524", 0},
      {"SYNC\t127.0.5.1\t19190\t1", 0},
      {"CONNECT\t127.0.5.3\t19190", 0},
      {"PING\t1795394789\t1024", 0},
      {"PING", 0},
      {"PONG\t1795394789\t0", 0},
      {"PONG", 0},
      {"QUIT\tInvalid input: BOGUS", 0},
      {"QUIT", 0},
      {"OPTIONS\tconsistent-hashing", 0},
      {"OPTIONS\ta\001tb\t\tconsistent-hashing", 0},
      {"OPTIONS", 0},
      {"DONE", 0},
  };
  for (gsize i = 0; i < G_N_ELEMENTS(lines); i++) {
    UsherRingMsg msg;
    g_autofree char *buf = NULL;
    UsherRingParseResult res = parse(lines[i].line, lines[i].flags, &msg, &buf);
    g_assert_cmpint(res, ==, USHER_RING_PARSE_OK);
    g_autofree char *expect = g_strconcat(lines[i].line, "\n", NULL);
    assert_format(&msg, USHER_RING_VERSION_MINOR, expect);

    /* And back: the formatted line parses to an equal message. */
    g_autofree char *again = format(&msg, USHER_RING_VERSION_MINOR);
    UsherRingMsg msg2;
    g_autofree char *buf2 = NULL;
    g_assert_cmpint(parse_len(again, (gssize)strlen(again) - 1, lines[i].flags, &msg2, &buf2), ==,
                    USHER_RING_PARSE_OK);
    g_assert_true(usher_ring_msg_equal(&msg, &msg2));
  }
}

/* Non-canonical input comes out canonical, with the same meaning. */
static void
test_format_normalizes(void)
{
  static const struct {
    const char *in;
    UsherRingParseFlags flags;
    const char *out;
  } cases[] = {
      {"USER\t0001\t[::0001]\t007\textra", 0, "USER\t1\t::1\t7\n"},
      {"HOST-HAND-START\t42", 0, "HOST-HAND-START\t1\n"},
      {"HOST-HAND-END", 0, "HOST-HAND-END\t0\n"},
      {"HOST\t1.2.3.4\t9090\t1\t5.6.7.8\t100", 0, "HOST\t1.2.3.4\t9090\t1\t5.6.7.8\t100\t\tU0\t\n"},
      {"HOST\t5.6.7.8\t100", USHER_RING_PARSE_HOST_LIST, "HOST\t5.6.7.8\t100\t\tU0\t\n"},
      {"U\t1\t1.2.3.4\t5\twx", 0, "U\t1\t1.2.3.4\t5\tw\n"},
      {"U\t1\t1.2.3.4\t5\tx", 0, "U\t1\t1.2.3.4\t5\n"},
      {"PING\t5", 0, "PING\n"},
      {"PING\t-0\t00", 0, "PING\t0\t0\n"},
      {"QUIT\ta\tb", 0, "QUIT\ta b\n"},
      {"QUIT\t", 0, "QUIT\n"},
      {"SYNC\t1.2.3.4\t9090\t1\t9\t2", 0, "SYNC\t1.2.3.4\t9090\t1\t9\t2\t0\n"},
      /* A SYNC carrying minor 0 loses its extra fields when forwarded, as in Dovecot. */
      {"SYNC\t1.2.3.4\t9090\t1\t0\t2\t3", 0, "SYNC\t1.2.3.4\t9090\t1\n"},
      {"USER-KICK\t1.2.3.4\t9090\t1\ta\001xb\001", 0, "USER-KICK\t1.2.3.4\t9090\t1\taxb\n"},
      {"DONE\textra", 0, "DONE\n"},
  };
  for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
    UsherRingMsg msg;
    g_autofree char *buf = NULL;
    g_assert_cmpint(parse(cases[i].in, cases[i].flags, &msg, &buf), ==, USHER_RING_PARSE_OK);
    assert_format(&msg, USHER_RING_VERSION_MINOR, cases[i].out);
  }
}

static void
test_format_versions(void)
{
  UsherRingMsg msg;

  /* Handshake HOST: tag if non-empty or minor >= 6; up/down + hostname if minor >= 6. */
  usher_ring_msg_init(&msg, USHER_RING_MSG_HOST_HANDSHAKE);
  msg.host.ip = ip("1.2.3.4");
  msg.host.vhost_count = 100;
  msg.host.hostname = "mail\tone";
  assert_format(&msg, 5, "HOST\t1.2.3.4\t100\n");
  assert_format(&msg, 6, "HOST\t1.2.3.4\t100\t\tU0\tmail\001tone\n");
  msg.host.tag = "blue";
  msg.host.down = TRUE;
  msg.host.last_updown_change = 12;
  assert_format(&msg, 7, "HOST\t1.2.3.4\t100\tblue\tD12\tmail\001tone\n");
  assert_format_fails(&msg, 6, USHER_RING_FORMAT_UNSUPPORTED);
  assert_format_fails(&msg, 5, USHER_RING_FORMAT_UNSUPPORTED);

  /* Flooded HOST, by ring minimum version: tag only from 7; up/down from 6. */
  usher_ring_msg_init(&msg, USHER_RING_MSG_HOST);
  msg.host.origin = origin("10.0.0.1", 9090, 3);
  msg.host.ip = ip("1.2.3.4");
  msg.host.vhost_count = 100;
  msg.host.last_updown_change = 5;
  msg.host.hostname = "h";
  assert_format(&msg, 5, "HOST\t10.0.0.1\t9090\t3\t1.2.3.4\t100\n");
  assert_format(&msg, 6, "HOST\t10.0.0.1\t9090\t3\t1.2.3.4\t100\tU5\th\n");
  assert_format(&msg, 7, "HOST\t10.0.0.1\t9090\t3\t1.2.3.4\t100\t\tU5\th\n");
  msg.host.tag = "t";
  assert_format(&msg, 9, "HOST\t10.0.0.1\t9090\t3\t1.2.3.4\t100\tt\tU5\th\n");
  assert_format_fails(&msg, 6, USHER_RING_FORMAT_UNSUPPORTED);

  /* USER carries its timestamp from minor 9. */
  usher_ring_msg_init(&msg, USHER_RING_MSG_USER);
  msg.user.hash = 1;
  msg.user.ip = ip("1.2.3.4");
  msg.user.has_timestamp = TRUE;
  msg.user.timestamp = 99;
  assert_format(&msg, 8, "USER\t1\t1.2.3.4\n");
  assert_format(&msg, 9, "USER\t1\t1.2.3.4\t99\n");
  assert_format(&msg, 10, "USER\t1\t1.2.3.4\t99\n");
  msg.user.has_timestamp = FALSE;
  assert_format(&msg, 9, "USER\t1\t1.2.3.4\n");

  /* Handshake users are "USER" below minor 9. */
  usher_ring_msg_init(&msg, USHER_RING_MSG_U);
  msg.handshake_user.hash = 1;
  msg.handshake_user.ip = ip("1.2.3.4");
  msg.handshake_user.timestamp = 99;
  msg.handshake_user.weak = TRUE;
  assert_format(&msg, 8, "USER\t1\t1.2.3.4\t99\tw\n");
  assert_format(&msg, 9, "U\t1\t1.2.3.4\t99\tw\n");

  /* SYNC extras only when both the carried minor and the peer's are above 0. */
  usher_ring_msg_init(&msg, USHER_RING_MSG_SYNC);
  msg.sync.addr.ip = ip("1.2.3.4");
  msg.sync.addr.port = 9090;
  msg.sync.seq = 2;
  msg.sync.minor = 7;
  msg.sync.has_timestamp = TRUE;
  msg.sync.timestamp = 3;
  msg.sync.hosts_hash = 4;
  assert_format(&msg, 0, "SYNC\t1.2.3.4\t9090\t2\n");
  assert_format(&msg, 1, "SYNC\t1.2.3.4\t9090\t2\t7\t3\t4\n");
  msg.sync.minor = 0;
  assert_format(&msg, 9, "SYNC\t1.2.3.4\t9090\t2\n");
  msg.sync.minor = 9;
  msg.sync.has_timestamp = FALSE;
  assert_format_fails(&msg, 9, USHER_RING_FORMAT_INCOMPLETE);
  assert_format(&msg, 0, "SYNC\t1.2.3.4\t9090\t2\n");

  /* Per-peer gates. */
  static const struct {
    UsherRingMsgType type;
    guint min;
  } gates[] = {
      {USHER_RING_MSG_DIRECTOR_REMOVE, 2}, {USHER_RING_MSG_QUIT, 3},
      {USHER_RING_MSG_USER_KICK, 4},       {USHER_RING_MSG_USER_KICK_HASH, 4},
      {USHER_RING_MSG_OPTIONS, 5},         {USHER_RING_MSG_USER_KICK_ALT, 8},
  };
  for (gsize i = 0; i < G_N_ELEMENTS(gates); i++) {
    usher_ring_msg_init(&msg, gates[i].type);
    switch (gates[i].type) {
    case USHER_RING_MSG_DIRECTOR_REMOVE:
      msg.director.ip = ip("1.2.3.4");
      msg.director.port = 1;
      break;
    case USHER_RING_MSG_USER_KICK:
      msg.user_kick.origin = origin("1.2.3.4", 1, 1);
      msg.user_kick.username = "u";
      break;
    case USHER_RING_MSG_USER_KICK_HASH:
      msg.user_ref.origin = origin("1.2.3.4", 1, 1);
      msg.user_ref.ip = ip("1.2.3.4");
      break;
    case USHER_RING_MSG_USER_KICK_ALT:
      msg.user_kick_alt.origin = origin("1.2.3.4", 1, 1);
      msg.user_kick_alt.field = "f";
      msg.user_kick_alt.value = "v";
      break;
    case USHER_RING_MSG_QUIT:
      msg.quit.reason = "bye";
      break;
    case USHER_RING_MSG_OPTIONS:
      msg.options.tokens = USHER_RING_OPTION_CONSISTENT_HASHING;
      msg.options.n_tokens = 1;
      break;
    default:
      g_assert_not_reached();
    }
    assert_format_fails(&msg, gates[i].min - 1, USHER_RING_FORMAT_UNSUPPORTED);
    g_autofree char *line = format(&msg, gates[i].min);
    g_assert_true(g_str_has_prefix(line, usher_ring_msg_type_to_string(gates[i].type)));
  }

  /* Everything else goes to any peer. */
  usher_ring_msg_init(&msg, USHER_RING_MSG_USER_WEAK);
  msg.user_ref.origin = origin("1.2.3.4", 1, 1);
  msg.user_ref.ip = ip("1.2.3.4");
  assert_format(&msg, 0, "USER-WEAK\t1.2.3.4\t1\t1\t0\t1.2.3.4\n");
}

static void
test_format_too_long(void)
{
  UsherRingMsg msg;
  usher_ring_msg_init(&msg, USHER_RING_MSG_USER_KICK);
  msg.user_kick.origin = origin("127.0.5.1", 19190, 7);
  gsize prefix = strlen("USER-KICK\t127.0.5.1\t19190\t7\t");

  /* Exactly USHER_RING_LINE_MAX bytes before "\n": accepted, and a Dovecot-sized reader and the
   * parser take it back. */
  g_autofree char *name = g_strnfill(USHER_RING_LINE_MAX - prefix, 'n');
  msg.user_kick.username = name;
  g_autofree char *line = format(&msg, 9);
  g_assert_cmpuint(strlen(line), ==, USHER_RING_INBUF_SIZE);
  g_autoptr(UsherLineReader) reader = usher_line_reader_new(USHER_RING_LINE_MAX);
  usher_line_reader_feed(reader, line, strlen(line));
  char *got;
  gsize got_len;
  g_assert_cmpint(usher_line_reader_next(reader, &got, &got_len), ==, USHER_LINE_OK);
  UsherRingMsg back;
  g_assert_cmpint(usher_ring_msg_parse(got, got_len, 0, &back), ==, USHER_RING_PARSE_OK);
  g_assert_true(usher_ring_msg_equal(&msg, &back));

  /* One byte more. */
  g_autofree char *longer = g_strnfill(USHER_RING_LINE_MAX - prefix + 1, 'n');
  msg.user_kick.username = longer;
  assert_format_fails(&msg, 9, USHER_RING_FORMAT_TOO_LONG);

  /* Escaping counts: a name that fits raw but not escaped. */
  g_autofree char *tabs = g_strnfill((USHER_RING_LINE_MAX - prefix) / 2 + 1, '\t');
  msg.user_kick.username = tabs;
  assert_format_fails(&msg, 9, USHER_RING_FORMAT_TOO_LONG);
  tabs[strlen(tabs) - 1] = '\0';
  g_autofree char *fits = format(&msg, 9);
  g_assert_cmpuint(strlen(fits), <=, USHER_RING_INBUF_SIZE);

  /* The reason of a QUIT, and a hostname, are bounded the same way. */
  usher_ring_msg_init(&msg, USHER_RING_MSG_QUIT);
  g_autofree char *reason = g_strnfill(USHER_RING_LINE_MAX - strlen("QUIT\t"), 'r');
  msg.quit.reason = reason;
  g_autofree char *quit = format(&msg, 9);
  g_assert_cmpuint(strlen(quit), ==, USHER_RING_INBUF_SIZE);
  reason[0] = '\n';
  assert_format_fails(&msg, 9, USHER_RING_FORMAT_TOO_LONG);
}

static void
test_msg_helpers(void)
{
  for (guint t = USHER_RING_MSG_VERSION; t <= USHER_RING_MSG_TYPE_LAST; t++) {
    const char *name = usher_ring_msg_type_to_string(t);
    g_assert_nonnull(name);
    g_assert_cmpuint(strlen(name), >, 0);
    g_assert_null(strchr(name, '('));
  }
  g_assert_cmpstr(usher_ring_msg_type_to_string(USHER_RING_MSG_HOST_HANDSHAKE), ==, "HOST");
  g_assert_cmpstr(usher_ring_msg_type_to_string(USHER_RING_MSG_U), ==, "U");
  g_assert_cmpstr(usher_ring_msg_type_to_string(USHER_RING_MSG_TYPE_LAST + 1), ==, "(invalid)");
  for (int r = USHER_RING_PARSE_OK; r <= USHER_RING_PARSE_BAD_VALUE; r++)
    g_assert_null(strchr(usher_ring_parse_result_to_string(r), '('));
  for (int r = USHER_RING_FORMAT_OK; r <= USHER_RING_FORMAT_INCOMPLETE; r++)
    g_assert_null(strchr(usher_ring_format_result_to_string(r), '('));

  UsherRingMsg a, b;
  usher_ring_msg_init(&a, USHER_RING_MSG_HOST);
  g_assert_cmpstr(a.host.tag, ==, "");
  g_assert_cmpstr(a.host.hostname, ==, "");
  usher_ring_msg_init(&b, USHER_RING_MSG_HOST);
  a.host.ip = b.host.ip = ip("1.2.3.4");
  g_assert_true(usher_ring_msg_equal(&a, &b));
  char tag_a[] = "x", tag_b[] = "x";
  a.host.tag = tag_a;
  b.host.tag = tag_b;
  g_assert_true(usher_ring_msg_equal(&a, &b));
  b.host.origin.seq = 1;
  g_assert_false(usher_ring_msg_equal(&a, &b));
  /* The origin is not part of a handshake HOST. */
  a.type = b.type = USHER_RING_MSG_HOST_HANDSHAKE;
  g_assert_true(usher_ring_msg_equal(&a, &b));
  b.type = USHER_RING_MSG_HOST;
  g_assert_false(usher_ring_msg_equal(&a, &b));

  /* Unused values behind a false presence flag do not count. */
  usher_ring_msg_init(&a, USHER_RING_MSG_USER);
  usher_ring_msg_init(&b, USHER_RING_MSG_USER);
  b.user.timestamp = 5;
  g_assert_true(usher_ring_msg_equal(&a, &b));
  b.user.has_timestamp = TRUE;
  g_assert_false(usher_ring_msg_equal(&a, &b));

  usher_ring_msg_init(&a, USHER_RING_MSG_OPTIONS);
  usher_ring_msg_init(&b, USHER_RING_MSG_OPTIONS);
  a.options.tokens = "a\0b";
  b.options.tokens = "a\0c";
  a.options.n_tokens = b.options.n_tokens = 1;
  g_assert_true(usher_ring_msg_equal(&a, &b));
  a.options.n_tokens = b.options.n_tokens = 2;
  g_assert_false(usher_ring_msg_equal(&a, &b));
}

/* The plain "U" line has a fast path in the parser; an escape that changes nothing (a "\001"
 * at the end of a field is dropped) sends the same line through the general path. Both must
 * agree on every outcome. */
static void
test_plain_u_fast_path(void)
{
  static const char *const rest[] = {
    "\t127.0.2.1\t1795393974",   "\t127.0.2.1\t1795393974\tw", "\t127.0.2.1\t1795393974\twx\tmore",
    "\t127.0.2.1\t1795393974\tx", "\t127.0.2.1",                "\tnot-an-ip\t1",
    "\t127.0.2.1\t-1",            "\t::1\t4294967295",           "\t127.0.2.1\t4294967296",
    "\t127.0.2.1\t",              "",
  };
  static const char *const hashes[] = {"617210206", "0", "4294967296", "x", ""};
  for (gsize h = 0; h < G_N_ELEMENTS(hashes); h++) {
    for (gsize r = 0; r < G_N_ELEMENTS(rest); r++) {
      g_autofree char *fast = g_strdup_printf("U\t%s%s", hashes[h], rest[r]);
      g_autofree char *general = g_strdup_printf("U\t%s\001%s", hashes[h], rest[r]);
      UsherRingMsg a, b;
      UsherRingParseResult ra = usher_ring_msg_parse(fast, strlen(fast), 0, &a);
      UsherRingParseResult rb = usher_ring_msg_parse(general, strlen(general), 0, &b);
      if (ra != rb)
        g_error("U\\t%s%s: fast path %s, general %s", hashes[h], rest[r],
                usher_ring_parse_result_to_string(ra), usher_ring_parse_result_to_string(rb));
      g_assert_true(usher_ring_msg_equal(&a, &b));
    }
  }
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/core/ring-codec/escape", test_escape_table);
  g_test_add_func("/core/ring-codec/escape/roundtrip", test_escape_roundtrip);
  g_test_add_func("/core/ring-codec/escape/invalid", test_escape_invalid);
  g_test_add_func("/core/ring-codec/escape/in-fields", test_escape_in_fields);
  g_test_add_func("/core/ring-codec/parse/raw-nul", test_raw_nul);
  g_test_add_func("/core/ring-codec/parse/plain-u-fast-path", test_plain_u_fast_path);
  g_test_add_func("/core/ring-codec/reader/basic", test_reader_basic);
  g_test_add_func("/core/ring-codec/reader/cr", test_reader_cr);
  g_test_add_func("/core/ring-codec/reader/split-everywhere", test_reader_split_everywhere);
  g_test_add_func("/core/ring-codec/reader/then-parse", test_reader_then_parse);
  g_test_add_func("/core/ring-codec/reader/max-length", test_reader_max_length);
  g_test_add_func("/core/ring-codec/reader/many-lines", test_reader_many_lines);
  g_test_add_func("/core/ring-codec/parse/handshake", test_parse_handshake_messages);
  g_test_add_func("/core/ring-codec/parse/flood", test_parse_flood_messages);
  g_test_add_func("/core/ring-codec/parse/ring", test_parse_ring_messages);
  g_test_add_func("/core/ring-codec/parse/tolerance", test_parse_tolerance);
  g_test_add_func("/core/ring-codec/parse/context", test_parse_context);
  g_test_add_func("/core/ring-codec/parse/malformed", test_parse_malformed);
  g_test_add_func("/core/ring-codec/parse/numbers", test_parse_numbers);
  g_test_add_func("/core/ring-codec/parse/ipv6", test_parse_ipv6);
  g_test_add_func("/core/ring-codec/format/spec-lines", test_format_spec_lines);
  g_test_add_func("/core/ring-codec/format/roundtrip", test_format_roundtrip_lines);
  g_test_add_func("/core/ring-codec/format/normalizes", test_format_normalizes);
  g_test_add_func("/core/ring-codec/format/versions", test_format_versions);
  g_test_add_func("/core/ring-codec/format/too-long", test_format_too_long);
  g_test_add_func("/core/ring-codec/msg-helpers", test_msg_helpers);
  return g_test_run();
}

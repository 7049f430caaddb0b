/* fuzz-ring-codec.c - libFuzzer target for the ring protocol codec.
 *
 * The input is a byte stream from a peer. It goes through two line readers, one fed in chunks
 * whose sizes come from the data itself and one fed all at once; both must return the same lines
 * and the same final state. Every line is parsed in each parser context; every message that
 * parses is formatted (at the current version) and parsed again, and must come back equal (after
 * the one documented lossy case), and formatting it again must give the same bytes. Formatting at
 * every older version must give one well-formed line or an error, never a line a peer refuses.
 * Finally the raw input must survive escaping and unescaping.
 */
#include "libcore/ring-codec.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const UsherRingParseFlags parse_contexts[] = {
    USHER_RING_PARSE_FLAGS_NONE,
    USHER_RING_PARSE_HOST_LIST,
    USHER_RING_PARSE_LEGACY_USER,
};

static void
check(gboolean ok, const char *what)
{
  if (!ok) {
    fprintf(stderr, "fuzz-ring-codec: %s\n", what);
    abort();
  }
}

/* What parse(format(msg)) must give: the formatter forwards a SYNC whose minor is 0 without
 * its timestamp and hosts_hash (as Dovecot does); everything else survives unchanged. */
static void
expected_after_format(const UsherRingMsg *msg, UsherRingMsg *expect_out)
{
  *expect_out = *msg;
  if (msg->type == USHER_RING_MSG_SYNC && msg->sync.minor == 0) {
    expect_out->sync.has_timestamp = FALSE;
    expect_out->sync.timestamp = 0;
    expect_out->sync.hosts_hash = 0;
  }
}

/* A formatted line: one "\n", at the end, and short enough for a Dovecot peer. */
static void
check_line_shape(const GString *line)
{
  check(line->len >= 2 && line->len <= USHER_RING_INBUF_SIZE, "formatted line length");
  check(line->str[line->len - 1] == '\n', "formatted line ends in LF");
  check(memchr(line->str, '\n', line->len - 1) == NULL, "formatted line has one LF");
  check(memchr(line->str, '\r', line->len) == NULL, "formatted line has no CR");
  check(memchr(line->str, '\0', line->len) == NULL, "formatted line has no NUL");
}

static void
check_message(const UsherRingMsg *msg, UsherRingParseFlags flags)
{
  g_autoptr(GString) line = g_string_new(NULL);
  UsherRingFormatResult res = usher_ring_msg_format(msg, USHER_RING_VERSION_MINOR, line);
  if (res == USHER_RING_FORMAT_OK) {
    check_line_shape(line);

    char buf[USHER_RING_INBUF_SIZE];
    gsize len = line->len - 1;
    memcpy(buf, line->str, len);
    buf[len] = '\0';
    UsherRingMsg again, expect;
    check(usher_ring_msg_parse(buf, len, flags, &again) == USHER_RING_PARSE_OK,
          "formatted line parses");
    expected_after_format(msg, &expect);
    check(usher_ring_msg_equal(&expect, &again), "round trip gives an equal message");

    g_autoptr(GString) line2 = g_string_new(NULL);
    check(usher_ring_msg_format(&again, USHER_RING_VERSION_MINOR, line2) == USHER_RING_FORMAT_OK,
          "re-format succeeds");
    check(g_string_equal(line, line2), "re-format gives the same bytes");
  } else {
    /* Escaping can make a line longer; a SYNC may lack the timestamp its minor needs. */
    check(res == USHER_RING_FORMAT_TOO_LONG || res == USHER_RING_FORMAT_INCOMPLETE,
          "format error at the current version");
    check(line->len == 0, "failed format leaves the output alone");
  }

  for (guint minor = 0; minor <= USHER_RING_VERSION_MINOR + 1; minor++) {
    g_autoptr(GString) old = g_string_new(NULL);
    if (usher_ring_msg_format(msg, minor, old) == USHER_RING_FORMAT_OK)
      check_line_shape(old);
    else
      check(old->len == 0, "failed format leaves the output alone");
  }
}

static void
check_line(const char *line, gsize len)
{
  check(len <= USHER_RING_LINE_MAX, "reader line length");
  check(line[len] == '\0', "reader line is NUL-terminated");
  for (gsize i = 0; i < G_N_ELEMENTS(parse_contexts); i++) {
    char buf[USHER_RING_INBUF_SIZE];
    memcpy(buf, line, len);
    buf[len] = '\0';
    UsherRingMsg msg;
    UsherRingParseResult res = usher_ring_msg_parse(buf, len, parse_contexts[i], &msg);
    check(usher_ring_parse_result_to_string(res) != NULL, "result name");
    if (res == USHER_RING_PARSE_OK)
      check_message(&msg, parse_contexts[i]);
    else
      check(msg.type == USHER_RING_MSG_NONE, "failed parse leaves no message");
  }
}

static void
check_escaping(const uint8_t *data, size_t size)
{
  g_autoptr(GString) escaped = g_string_new(NULL);
  usher_ring_escape_append(escaped, (const char *)data, (gssize)size);
  check(memchr(escaped->str, '\t', escaped->len) == NULL, "escaped data has no TAB");
  check(memchr(escaped->str, '\n', escaped->len) == NULL, "escaped data has no LF");
  gsize len = usher_ring_unescape_inplace(escaped->str, escaped->len);
  check(len == size && (size == 0 || memcmp(escaped->str, data, size) == 0),
        "unescape(escape(x)) == x");
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  g_autoptr(UsherLineReader) chunked = usher_line_reader_new(USHER_RING_LINE_MAX);
  g_autoptr(UsherLineReader) whole = usher_line_reader_new(USHER_RING_LINE_MAX);
  usher_line_reader_feed(whole, data, size);

  /* Chunk sizes 1..64, drawn from the bytes themselves with a little LCG. */
  guint32 state = (guint32)size * 2654435761u;
  size_t pos = 0;
  gboolean done = FALSE, failed = FALSE;
  while (!done) {
    size_t n = 0;
    if (pos < size) {
      state = state * 1664525u + 1013904223u + data[pos];
      n = MIN(size - pos, (size_t)(1 + (state >> 26)));
    }
    usher_line_reader_feed(chunked, data + pos, n);
    pos += n;
    done = pos >= size;

    for (;;) {
      char *line, *line2;
      gsize len, len2;
      UsherLineResult res = usher_line_reader_next(chunked, &line, &len);
      if (res == USHER_LINE_NEED_MORE && !done)
        break;
      UsherLineResult res2 = usher_line_reader_next(whole, &line2, &len2);
      check(res == res2, "chunked and whole readers agree");
      if (res != USHER_LINE_OK) {
        failed = res == USHER_LINE_TOO_LONG;
        done = TRUE;
        break;
      }
      check(len == len2 && memcmp(line, line2, len) == 0, "chunked and whole lines agree");
      check_line(line, len);
    }
  }

  if (failed) {
    /* The error is sticky: the rest of the input is discarded and counted. */
    usher_line_reader_feed(chunked, data + pos, size - pos);
    char *line;
    gsize len;
    check(usher_line_reader_next(chunked, &line, &len) == USHER_LINE_TOO_LONG, "sticky error");
    check(usher_line_reader_get_pending(chunked) == 0, "nothing pending after an error");
  }
  UsherLineReaderStats stats;
  usher_line_reader_get_stats(chunked, &stats);
  check(stats.bytes_in == size, "reader counts its input");
  check(stats.too_long == (failed ? 1 : 0), "reader counts its error");

  check_escaping(data, size);
  return 0;
}

/* fuzz-smtp-cmd.c - libFuzzer target for the LMTP/SMTP command reader.
 *
 * The input is what an MTA sends. It goes through three readers: one fed all at once, one in
 * chunks whose sizes come from the data itself (about half of them read in place, through
 * reserve and commit), one byte by byte. The driver answers like the
 * proxy does: after a valid DATA a body follows, after a valid BDAT its chunk. The three must give
 * the same events, the same commands and body bytes and the same bytes left pending. Every event
 * must respect the header's promises: a path and parameters for a valid MAIL/RCPT, a BDAT
 * chunk of exactly its size, a DATA body that ends with its terminator line, bounded pending
 * input at NEED_MORE.
 */
#include "libcore/smtp-cmd.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LINE 256

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
check(gboolean ok, const char *what)
{
  if (!ok) {
    fprintf(stderr, "fuzz-smtp-cmd: %s\n", what);
    abort();
  }
}

/* Bodies may hold NUL bytes: compare by length. */
static gboolean
ends_with(const GString *s, const char *tail)
{
  gsize n = strlen(tail);
  return s->len >= n && memcmp(s->str + s->len - n, tail, n) == 0;
}

static gboolean
equals(const GString *s, const char *text)
{
  return s->len == strlen(text) && memcmp(s->str, text, s->len) == 0;
}

typedef enum {
  FEED_WHOLE,
  FEED_CHUNKS,
  FEED_BYTES,
} FeedMode;

static GString *
run(const uint8_t *data, size_t size, FeedMode mode)
{
  g_autoptr(UsherSmtpReader) reader = usher_smtp_reader_new(MAX_LINE);
  GString *out = g_string_new(NULL);
  GString *body = g_string_new(NULL);
  gboolean in_data = FALSE;
  guint64 chunk_left = 0;
  gboolean in_chunk = FALSE;
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
    if (mode == FEED_CHUNKS && (state & 1)) {
      /* A read straight into the reader (usherd's LMTP side), into more room than it fills. */
      guint8 *room = usher_smtp_reader_reserve(reader, n + (state >> 28));
      if (n > 0)
        memcpy(room, data + pos, n);
      usher_smtp_reader_commit(reader, n);
    } else {
      usher_smtp_reader_feed(reader, data + pos, n);
    }
    pos += n;
    for (;;) {
      UsherSmtpCmd cmd = {0};
      const guint8 *bytes = NULL;
      gsize len = 0;
      UsherSmtpEvent ev = usher_smtp_reader_next(reader, &cmd, &bytes, &len);
      if (ev == USHER_SMTP_NEED_MORE) {
        if (!in_data && !in_chunk)
          check(usher_smtp_reader_pending(reader) <= MAX_LINE + 1,
                "an unfinished command line is bounded");
        break;
      }
      switch (ev) {
      case USHER_SMTP_COMMAND:
        check(!in_data && !in_chunk, "no command inside a body");
        check(cmd.verb_text != NULL && cmd.arg != NULL, "a command has its texts");
        check(strlen(cmd.verb_text) <= 32, "verb text length");
        if (cmd.syntax_error == NULL &&
            (cmd.verb == USHER_SMTP_VERB_MAIL || cmd.verb == USHER_SMTP_VERB_RCPT))
          check(cmd.path != NULL && cmd.params != NULL, "MAIL and RCPT have a path");
        if (cmd.verb == USHER_SMTP_VERB_RCPT && cmd.syntax_error == NULL)
          check(cmd.path[0] != '\0', "a valid RCPT has an address");
        g_string_append_printf(out, "C %d %s|%s|%s|%s\n", cmd.verb, cmd.verb_text,
                               cmd.path ? cmd.path : "-", cmd.params ? cmd.params : "-",
                               cmd.syntax_error ? cmd.syntax_error : "-");
        if (cmd.syntax_error == NULL && cmd.verb == USHER_SMTP_VERB_DATA) {
          usher_smtp_reader_expect_data(reader);
          in_data = TRUE;
        } else if (cmd.syntax_error == NULL && cmd.verb == USHER_SMTP_VERB_BDAT &&
                   cmd.bdat_size < 100000) {
          usher_smtp_reader_expect_bdat(reader, cmd.bdat_size);
          chunk_left = cmd.bdat_size;
          in_chunk = TRUE;
        }
        usher_smtp_cmd_clear(&cmd);
        break;
      case USHER_SMTP_LINE_TOO_LONG:
        check(!in_data && !in_chunk, "no overlong line inside a body");
        g_string_append(out, "L\n");
        break;
      case USHER_SMTP_BODY:
        check(in_data || in_chunk, "body bytes only in a body");
        check(len > 0, "body events carry bytes");
        if (in_chunk) {
          check(len <= chunk_left, "a chunk gives no more than its size");
          chunk_left -= len;
        }
        g_string_append_len(body, (const char *)bytes, (gssize)len);
        break;
      case USHER_SMTP_BODY_END:
        check(in_data || in_chunk, "a body end ends a body");
        if (in_chunk)
          check(chunk_left == 0, "a chunk ends after exactly its size");
        if (in_data)
          check(ends_with(body, "\n.\n") || ends_with(body, "\n.\r\n") ||
                    equals(body, ".\n") || equals(body, ".\r\n"),
                "a DATA body ends with its terminator line");
        g_string_append_printf(out, "B %" G_GSIZE_FORMAT " ", body->len);
        g_string_append_len(out, body->str, (gssize)body->len);
        g_string_append_c(out, '\n');
        g_string_truncate(body, 0);
        in_data = in_chunk = FALSE;
        break;
      default:
        check(FALSE, "a known event");
      }
    }
    if (pos >= size)
      break;
  }
  g_string_append_printf(out, "open body %" G_GSIZE_FORMAT " %08x pending %" G_GSIZE_FORMAT,
                         body->len, g_str_hash(body->str), usher_smtp_reader_pending(reader));
  g_string_free(body, TRUE);
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

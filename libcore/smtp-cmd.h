/* smtp-cmd.h - sans-I/O reader for the client side of LMTP (RFC 2033) and SMTP (RFC 5321),
 * and a parser for the replies of a server.
 *
 * The reader is fed bytes as they arrive, split anywhere, and hands out events: a command line
 * (parsed), the bytes of a message (DATA, still dot-stuffed and with its final ".\r\n", ready to
 * be passed on to another LMTP server; or a BDAT chunk), and the end of a message. It never
 * decides what a command means in the conversation: the caller says when a DATA or BDAT body
 * follows (usher_smtp_reader_expect_data/_bdat), after it has answered the command.
 *
 * Limits: a command line longer than max_line bytes is an error event (the reader skips to the
 * end of that line, so the caller may answer and go on); a message's size is the caller's to
 * count. No allocation per byte: a body's bytes are handed out as slices of the input.
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

#define USHER_SMTP_LINE_MAX_DEFAULT 4096 /* RFC 5321 asks for 512 (command) and 1000 (text) */

typedef enum {
  USHER_SMTP_VERB_UNKNOWN = 0,
  USHER_SMTP_VERB_LHLO,
  USHER_SMTP_VERB_EHLO,
  USHER_SMTP_VERB_HELO,
  USHER_SMTP_VERB_MAIL,
  USHER_SMTP_VERB_RCPT,
  USHER_SMTP_VERB_DATA,
  USHER_SMTP_VERB_BDAT,
  USHER_SMTP_VERB_RSET,
  USHER_SMTP_VERB_NOOP,
  USHER_SMTP_VERB_QUIT,
  USHER_SMTP_VERB_VRFY,
  USHER_SMTP_VERB_HELP,
  USHER_SMTP_VERB_STARTTLS,
  USHER_SMTP_VERB_AUTH,
  USHER_SMTP_VERB_XCLIENT,
} UsherSmtpVerb;

/* One command line. Strings point into the command (owned by it); freed by
 * usher_smtp_cmd_clear. */
typedef struct {
  UsherSmtpVerb verb;
  char *verb_text; /* as sent, for "unknown command" answers (at most 32 bytes kept) */
  char *line;      /* the whole line as sent (up to a NUL byte): a SASL response is no command */
  char *arg;       /* everything after the verb and one space; "" when none */
  /* MAIL FROM:<path> / RCPT TO:<path> */
  char *path;   /* inside the angle brackets, as sent ("" for the null path <>) */
  char *params; /* ESMTP parameters after the path ("SIZE=100 BODY=8BITMIME"); "" when none */
  /* BDAT size [LAST]. bdat_sized: the size is known (a number that fits), even when the rest
   * of the line is a syntax error; the chunk's bytes follow the line all the same. Without it
   * nobody can tell where the next command starts. */
  guint64 bdat_size;
  gboolean bdat_last;
  gboolean bdat_sized;
  /* Set when the command is recognised but its arguments are not valid (the text says why,
   * ready for a "501 5.5.4 ..." answer); verb is still set. */
  const char *syntax_error;
} UsherSmtpCmd;

void usher_smtp_cmd_clear(UsherSmtpCmd *cmd);

/* Parses one command line (without its line end). Always fills cmd (clear it afterwards). */
void usher_smtp_parse_command(const char *line, gsize len, UsherSmtpCmd *cmd);

typedef enum {
  USHER_SMTP_NEED_MORE = 0, /* feed more bytes */
  USHER_SMTP_COMMAND,       /* *cmd_out holds a command line */
  USHER_SMTP_LINE_TOO_LONG, /* a command line was longer than max_line (it has been skipped) */
  USHER_SMTP_BODY,          /* data_out, len_out: message bytes (valid until the next call) */
  USHER_SMTP_BODY_END,      /* the DATA terminator or the last byte of a BDAT chunk was seen */
} UsherSmtpEvent;

typedef struct UsherSmtpReader UsherSmtpReader;

UsherSmtpReader *usher_smtp_reader_new(gsize max_line);
/* The reader's lines may hold a password (submission's AUTH): what it consumes is wiped, not
 * only dropped. Off by default (LMTP's message bytes need no wiping). */
void usher_smtp_reader_set_wipe(UsherSmtpReader *reader, gboolean wipe);
void usher_smtp_reader_free(UsherSmtpReader *reader);
/* Appends bytes to what the reader holds. */
void usher_smtp_reader_feed(UsherSmtpReader *reader, const guint8 *data, gsize len);
/* The same without a copy: room for up to `want` bytes after what the reader holds, for a read
 * straight into it; then usher_smtp_reader_commit says how many came (0 to want). Nothing else
 * may be called on the reader in between. */
guint8 *usher_smtp_reader_reserve(UsherSmtpReader *reader, gsize want);
void usher_smtp_reader_commit(UsherSmtpReader *reader, gsize len);
/* The next event. cmd_out is filled on USHER_SMTP_COMMAND (clear it after use). */
UsherSmtpEvent usher_smtp_reader_next(UsherSmtpReader *reader, UsherSmtpCmd *cmd_out,
                                      const guint8 **data_out, gsize *len_out);
/* A DATA body follows (the caller answered 354): body events up to and including the
 * "<CRLF>.<CRLF>" line (a lone LF is taken as a line end too), then BODY_END. */
void usher_smtp_reader_expect_data(UsherSmtpReader *reader);
/* A BDAT chunk of size bytes follows: body events for exactly those bytes, then BODY_END. */
void usher_smtp_reader_expect_bdat(UsherSmtpReader *reader, guint64 size);
/* The next event is BODY_END: the body's last bytes (for DATA, the terminator among them) were
 * handed out, its end was not. A caller that stops between the two must know that those bytes
 * may already have reached their destination. */
gboolean usher_smtp_reader_end_pending(const UsherSmtpReader *reader);
/* Bytes held and not yet handed out (pipelined commands, or a body's start). */
gsize usher_smtp_reader_pending(const UsherSmtpReader *reader);
/* Those bytes (valid until the next feed, reserve or next call). */
const guint8 *usher_smtp_reader_peek_pending(const UsherSmtpReader *reader, gsize *len_out);

/* One line of a server's reply: "250-text" (more lines follow) or "250 text" (the last).
 * FALSE if the line is not a reply line (no three-digit code, or a wrong separator). */
gboolean usher_smtp_reply_parse(const char *line, guint *code_out, gboolean *last_out,
                                const char **text_out);

/* The user an LMTP recipient is delivered to: the path with its detail cut (the local part ends
 * at the first byte that is one of `delimiters`, when delimiters is neither NULL nor ""), e.g.
 * "user+box@example.org" -> "user@example.org" with "+". Quotes around the local part are
 * removed. NULL when the path is empty or not an address (no local part). */
char *usher_smtp_recipient_user(const char *path, const char *delimiters);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(UsherSmtpReader, usher_smtp_reader_free)

G_END_DECLS

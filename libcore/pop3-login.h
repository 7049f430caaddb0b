/* pop3-login.h - what a POP3 client says before it is logged in, sans-I/O.
 *
 * The proxy feeds a client's bytes into an UsherPop3Reader and takes out one event at a time: a
 * parsed command, a SASL response line, a line to refuse with -ERR, or the end (a limit broken).
 * The reader never answers the client: the proxy's protocol glue does, from the events. Feeding
 * the same bytes split at any offsets gives the same events (tests/core checks every split of
 * every sample).
 *
 * Grammar (RFC 1939, RFC 2449 CAPA, RFC 5034 AUTH, RFC 2595 STLS), as Dovecot's pop3-login reads
 * it: a line ends in CRLF or a bare LF; the command name is everything up to the first space,
 * compared case-insensitively; the arguments are the rest of the line after that space, spaces
 * included.
 *   CAPA | STLS | QUIT | NOOP     anything after the name is ignored (Dovecot does the same)
 *   USER SP name                  name = the rest of the line, not empty
 *   PASS SP password              password = the rest of the line, not empty
 *   AUTH                          (or "AUTH " and nothing): list the mechanisms (RFC 5034 / the
 *                                 old form Outlook uses)
 *   AUTH SP mech [SP response]    mech = 1*20 of A-Z a-z 0-9 "-" "_" (RFC 4422), given back in
 *                                 upper case; response = the rest of the line ("=" means empty)
 * After the proxy has sent "+ <challenge>" for AUTH it calls usher_pop3_reader_expect_sasl(),
 * and the next line comes back whole as a SASL_LINE (base64, or "*" to cancel).
 * Any other command (APOP, XCLIENT, TOP, an empty line...) is USHER_POP3_CMD_OTHER, for the glue
 * to answer "-ERR Unknown command." XCLIENT in particular is something Usher sends to backends,
 * never something it takes from a client.
 *
 * A line holding a NUL byte is refused (BAD): Dovecot reads lines as C strings and would see a
 * different user name than the proxy hashed.
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

/* RFC 2449 allows 255 bytes per command line; Dovecot's pop3-login reads up to about 1900.
 * Usher accepts at least what Dovecot does, so a client that works directly keeps working. */
#define USHER_POP3_LINE_MAX 2048 /* bytes of a non-AUTH command line, its line end not counted */
/* Dovecot's LOGIN_MAX_AUTH_BUF_SIZE: a SASL response (an OAuth bearer token in base64 is the
 * large one). An AUTH line may be this much longer than USHER_POP3_LINE_MAX. */
#define USHER_POP3_SASL_MAX 8192 /* bytes of a SASL line, or of AUTH's initial response */
#define USHER_POP3_MECH_MAX 20   /* bytes of a SASL mechanism name (RFC 4422 section 3.1) */

typedef enum {
  USHER_POP3_CMD_OTHER = 0,
  USHER_POP3_CMD_CAPA,
  USHER_POP3_CMD_USER,
  USHER_POP3_CMD_PASS,
  USHER_POP3_CMD_AUTH,
  USHER_POP3_CMD_STLS,
  USHER_POP3_CMD_QUIT,
  USHER_POP3_CMD_NOOP, /* only valid in the TRANSACTION state: the glue may refuse it */
} UsherPop3CmdType;

typedef struct {
  UsherPop3CmdType type;
  char *name; /* the command name in upper case ("" for an empty line); NULL for a SASL line */
  /* USER: the name; PASS: the password; AUTH: the mechanism in upper case, NULL for a bare
   * AUTH; a SASL line: the whole line; any other command: what followed the name and its
   * space, NULL if there was no space. NUL-terminated, never holding a NUL. */
  char *arg;
  /* AUTH: the initial response exactly as sent ("=" stands for an empty one), NULL if none. */
  char *initial_response;
} UsherPop3Cmd;

void usher_pop3_cmd_clear(UsherPop3Cmd *cmd);
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(UsherPop3Cmd, usher_pop3_cmd_clear)

typedef enum {
  USHER_POP3_NEED_MORE = 0, /* feed more bytes */
  USHER_POP3_COMMAND,       /* *cmd_out holds a command */
  USHER_POP3_SASL_LINE,     /* after usher_pop3_reader_expect_sasl(): cmd_out->arg is the line */
  USHER_POP3_BAD,           /* a malformed line, dropped: answer "-ERR <why>" (for a SASL line
                             * this also ends the authentication attempt) */
  USHER_POP3_FAIL,          /* a limit was broken (a line too long): send "-ERR <why>" and
                             * close; the reader stays failed and drops whatever is fed */
} UsherPop3Event;

typedef struct UsherPop3Reader UsherPop3Reader;

UsherPop3Reader *usher_pop3_reader_new(void);
void usher_pop3_reader_free(UsherPop3Reader *reader);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(UsherPop3Reader, usher_pop3_reader_free)

/* Keeps the bytes until events take them. The driver feeds what one read gave and then takes
 * events until NEED_MORE, so the reader holds at most one read and one unfinished line (a line
 * that cannot fit the limits fails as soon as that is certain, before its end arrives). */
void usher_pop3_reader_feed(UsherPop3Reader *reader, const void *data, gsize len);
/* The next event. COMMAND and SASL_LINE fill *cmd_out (clear it after use; it is left zeroed
 * otherwise); BAD and FAIL set *why_out to static text fit to follow "-ERR ". */
UsherPop3Event usher_pop3_reader_next(UsherPop3Reader *reader, UsherPop3Cmd *cmd_out,
                                      const char **why_out);
/* The next line is a SASL response (after the proxy sent "+ ..." for AUTH), not a command: it
 * comes back as SASL_LINE. The mark is used by one line. */
void usher_pop3_reader_expect_sasl(UsherPop3Reader *reader);
/* Bytes fed and not yet taken by an event. After STLS the proxy checks that this is 0: plaintext
 * pipelined behind STLS must not be taken as if it had come over TLS (the command injection of
 * CVE-2011-0411). 0 once the reader has failed. */
gsize usher_pop3_reader_pending(const UsherPop3Reader *reader);
/* The same bytes themselves (valid until the next feed or free): after a successful login the
 * proxy hands what the client pipelined behind it to the backend. */
const guint8 *usher_pop3_reader_peek_pending(const UsherPop3Reader *reader, gsize *len_out);

const char *usher_pop3_event_to_string(UsherPop3Event event);

G_END_DECLS

/* sieve-login.h - sans-I/O reader for what a ManageSieve client (RFC 5804) sends before it is
 * authenticated.
 *
 * A line is a command name (an atom, upper-cased here) followed by arguments: quoted strings,
 * non-synchronising literals ("{n+}" CRLF and n bytes) or atoms (numbers). A line that starts with
 * a string instead of an atom is a SASL response (the answer to a server challenge); it is
 * handed out with name NULL. The reader never interprets commands; the caller does.
 *
 * Limits: a line (with its literals) of USHER_SIEVE_LINE_MAX bytes and USHER_SIEVE_ARGS_MAX
 * arguments. Past the line limit the reader fails for good (the caller says BYE and closes); a
 * syntax error is a BAD event for that line only.
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

#define USHER_SIEVE_LINE_MAX 16384
#define USHER_SIEVE_ARGS_MAX 16

typedef struct {
  char *name;     /* upper case; NULL for a SASL response line */
  GPtrArray *args; /* char*: the strings and atoms in order (NUL bytes are refused) */
} UsherSieveCmd;

void usher_sieve_cmd_clear(UsherSieveCmd *cmd);
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(UsherSieveCmd, usher_sieve_cmd_clear)

typedef enum {
  USHER_SIEVE_NEED_MORE = 0,
  USHER_SIEVE_COMMAND, /* *cmd_out holds a line */
  USHER_SIEVE_BAD,     /* a malformed line, skipped; *why_out says why */
  USHER_SIEVE_FAIL,    /* over the limits: the reader takes nothing more */
} UsherSieveEvent;

typedef struct UsherSieveReader UsherSieveReader;

UsherSieveReader *usher_sieve_reader_new(void);
void usher_sieve_reader_free(UsherSieveReader *reader);
void usher_sieve_reader_feed(UsherSieveReader *reader, const guint8 *data, gsize len);
UsherSieveEvent usher_sieve_reader_next(UsherSieveReader *reader, UsherSieveCmd *cmd_out,
                                        const char **why_out);
/* Bytes held after the last complete line (what a client pipelined behind its login). */
const guint8 *usher_sieve_reader_peek_pending(const UsherSieveReader *reader, gsize *len_out);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(UsherSieveReader, usher_sieve_reader_free)

G_END_DECLS

/* imap-login.h - what an IMAP client says before it is logged in, sans-I/O.
 *
 * The proxy reads a client's bytes into an UsherImapReader and takes out one event at a time:
 * a parsed command, a request to send a literal continuation, a SASL response line, a line to
 * refuse with BAD, or the end (a limit broken). The reader never answers the client itself: the
 * proxy's protocol glue does, from the events. Feeding the same bytes split at any offsets gives
 * the same events (tests/core: every split of every sample is checked).
 *
 * Grammar (RFC 9051 / 3501 subset a proxy needs before login):
 *   command  = tag SP name [SP arg *(SP arg)] CRLF       (a bare LF is accepted too)
 *   arg      = atom | quoted | literal | "(" [arg *(SP arg)] ")" | NIL
 *   quoted   = DQUOTE *(any byte but CR LF DQUOTE "\" | "\" DQUOTE | "\" "\") DQUOTE
 *   literal  = "{" number ["+"] "}" CRLF *OCTET         (synchronising, or LITERAL+ non-syncing)
 * The commands it knows: CAPABILITY, NOOP, LOGOUT, ID, STARTTLS, LOGIN, AUTHENTICATE; anything
 * else parses as USHER_IMAP_CMD_OTHER for the proxy to refuse. Command names are
 * case-insensitive (given back in upper case); tags are kept as sent.
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

#define USHER_IMAP_LINE_MAX 8192       /* bytes of one command line outside literals */
#define USHER_IMAP_LITERAL_MAX 16384   /* bytes of one literal before login */
#define USHER_IMAP_ARGS_MAX 64         /* arguments of one command, list items included */
#define USHER_IMAP_LITERALS_MAX 32768  /* bytes of all the literals of one command (LOGIN: two) */

typedef enum {
  USHER_IMAP_CMD_OTHER = 0,
  USHER_IMAP_CMD_CAPABILITY,
  USHER_IMAP_CMD_NOOP,
  USHER_IMAP_CMD_LOGOUT,
  USHER_IMAP_CMD_ID,
  USHER_IMAP_CMD_STARTTLS,
  USHER_IMAP_CMD_LOGIN,
  USHER_IMAP_CMD_AUTHENTICATE,
} UsherImapCmdType;

typedef enum {
  USHER_IMAP_ARG_ATOM = 0,
  USHER_IMAP_ARG_STRING, /* quoted or literal */
  USHER_IMAP_ARG_NIL,
  USHER_IMAP_ARG_LIST_START,
  USHER_IMAP_ARG_LIST_END,
} UsherImapArgType;

typedef struct {
  UsherImapArgType type;
  char *value; /* ATOM, STRING: NUL-terminated (a literal may also hold NUL bytes: see len) */
  gsize len;
} UsherImapArg;

typedef struct {
  char *tag;
  char *name; /* upper case */
  UsherImapCmdType type;
  GArray *args; /* UsherImapArg, flat: lists appear as LIST_START ... LIST_END */
} UsherImapCmd;

void usher_imap_cmd_clear(UsherImapCmd *cmd);
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(UsherImapCmd, usher_imap_cmd_clear)

typedef enum {
  USHER_IMAP_NEED_MORE = 0, /* feed more bytes */
  USHER_IMAP_COMMAND,       /* *cmd_out holds a command */
  USHER_IMAP_CONTINUE,      /* a synchronising literal: send "+ OK\r\n", then feed on */
  USHER_IMAP_SASL_LINE,     /* after usher_imap_reader_expect_sasl(): *cmd_out's args[0] is the
                             * response line (base64, or "*" to cancel) */
  USHER_IMAP_BAD,           /* a malformed line, dropped: answer "<tag> BAD <why>" (tag may be
                             * "*" when none could be read) */
  USHER_IMAP_FAIL,          /* a limit was broken (line or literal too long, too many args):
                             * send "* BYE <why>" and close; the reader stays failed */
} UsherImapEvent;

typedef struct UsherImapReader UsherImapReader;

UsherImapReader *usher_imap_reader_new(void);
void usher_imap_reader_free(UsherImapReader *reader);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(UsherImapReader, usher_imap_reader_free)

/* Buffers bytes (bounded: the reader never holds more than a line and a literal). */
void usher_imap_reader_feed(UsherImapReader *reader, const void *data, gsize len);
/* The next event. COMMAND and SASL_LINE fill *cmd_out (clear it after use); BAD and FAIL set
 * *tag_out (transfer full, "*" if unknown) and *why_out (static text). */
UsherImapEvent usher_imap_reader_next(UsherImapReader *reader, UsherImapCmd *cmd_out,
                                      char **tag_out, const char **why_out);
/* The next line is a SASL response (after the proxy sent "+ ..." for AUTHENTICATE), not a
 * command: it comes back as SASL_LINE. */
void usher_imap_reader_expect_sasl(UsherImapReader *reader);
/* Bytes fed and not yet consumed (after STARTTLS the proxy checks that the client did not
 * pipeline plaintext behind it: that is an attack, RFC 9051 section 11.1). */
gsize usher_imap_reader_pending(const UsherImapReader *reader);

/* The bytes fed and not consumed yet (borrowed until the next feed or next call): what a client
 * pipelined behind its login, which the proxy hands to the backend once the login succeeded. */
const guint8 *usher_imap_reader_peek_pending(const UsherImapReader *reader, gsize *len_out);

/* The login name and password of a LOGIN command (args 0 and 1, atoms or strings); FALSE if the
 * command does not have exactly two such arguments. Borrowed from cmd. */
gboolean usher_imap_login_args(const UsherImapCmd *cmd, const char **user_out,
                               gsize *user_len_out, const char **pass_out, gsize *pass_len_out);

/* ---- SASL initial responses (shared by IMAP, POP3, ManageSieve, submission) ------------------ */

typedef enum {
  USHER_SASL_PLAIN = 1,
  USHER_SASL_LOGIN,
  USHER_SASL_OAUTHBEARER,
  USHER_SASL_XOAUTH2,
} UsherSaslMech;

/* The mechanism named (case-insensitive), or 0 if Usher does not pass it through. */
UsherSaslMech usher_sasl_mech_from_name(const char *name);
const char *usher_sasl_mech_name(UsherSaslMech mech);

/* The login name inside a decoded SASL client message:
 *   PLAIN:       authzid NUL authcid NUL passwd -> authzid if not empty, else authcid
 *                (the user whose mail it is; authcid is the master user when they differ)
 *   OAUTHBEARER: "n,a=USER,..." GS2 header (RFC 7628) -> USER (with "=2C" and "=3D" decoded)
 *   XOAUTH2:     "user=USER\001auth=Bearer TOKEN\001\001" -> USER
 *   LOGIN:       the first response is the name itself
 * Returns a newly allocated name, or NULL with *why_out set if the message is malformed. */
char *usher_sasl_login_name(UsherSaslMech mech, const guint8 *msg, gsize len,
                            const char **why_out);

/* A SASL response as it goes to the backend unchanged: "=" (empty), or strict base64 (RFC 4648:
 * the 64 letters, a length that is a multiple of 4, at most two '=' at the end). Anything else
 * (g_base64_decode() skips what it does not know) could carry a line break or a command into
 * the backend's login conversation. */
gboolean usher_sasl_base64_valid(const char *text);

G_END_DECLS

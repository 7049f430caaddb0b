/* admin-proto.h - Dovecot's director-admin protocol (what `doveadm director ... -a SOCKET`
 * speaks), sans-I/O: parse a request line, run it on a director, format the replies.
 *
 * The daemon owns the socket; this module owns the protocol, so the daemon, the fuzz target and
 * the tests see the same parser. Wire format (spec section 6): the server greets with
 * USHER_ADMIN_GREETING; the client's first line must be "VERSION\tdirector-doveadm\t1\t<minor>";
 * then one tab-separated, tab-escaped command per line. Single-line replies are one line;
 * multi-line replies end with an empty line.
 *
 * Usher adds commands whose reply is one line of JSON (for usherctl): USHER-STATS, USHER-RING,
 * USHER-EXPLAIN\t<user|hash>[\t<tag>], USHER-SESSIONS and USHER-HEALTH. The daemon builds those
 * replies.
 */
#pragma once

#include "libcore/director.h"

G_BEGIN_DECLS

#define USHER_ADMIN_GREETING "VERSION\tdirector-doveadm\t1\t0\n"
/* Longest request line the daemon accepts (Dovecot reads doveadm input in 1024 bytes). */
#define USHER_ADMIN_LINE_MAX 8192

typedef enum {
  USHER_ADMIN_CMD_HOST_LIST = 1,
  USHER_ADMIN_CMD_HOST_LIST_REMOVED,
  USHER_ADMIN_CMD_HOST_SET,
  USHER_ADMIN_CMD_HOST_UPDATE,
  USHER_ADMIN_CMD_HOST_UP,
  USHER_ADMIN_CMD_HOST_DOWN,
  USHER_ADMIN_CMD_HOST_REMOVE,
  USHER_ADMIN_CMD_HOST_FLUSH,
  USHER_ADMIN_CMD_HOST_RESET_USERS,
  USHER_ADMIN_CMD_USER_LOOKUP,
  USHER_ADMIN_CMD_USER_LIST,
  USHER_ADMIN_CMD_USER_MOVE,
  USHER_ADMIN_CMD_USER_KICK,
  USHER_ADMIN_CMD_USER_KICK_ALT,
  USHER_ADMIN_CMD_DIRECTOR_LIST,
  USHER_ADMIN_CMD_DIRECTOR_ADD,
  USHER_ADMIN_CMD_DIRECTOR_REMOVE,
  /* Usher's own, JSON replies */
  USHER_ADMIN_CMD_USHER_STATS,
  USHER_ADMIN_CMD_USHER_RING,
  USHER_ADMIN_CMD_USHER_EXPLAIN,
  USHER_ADMIN_CMD_USHER_SESSIONS, /* [user [backend ip]]: the proxy's sessions */
  USHER_ADMIN_CMD_USHER_HEALTH,   /* backend health: views, votes, decisions */
} UsherAdminCmdType;

typedef struct {
  UsherAdminCmdType type;
  gboolean has_ip; /* HOST-*, USER-LIST, USER-MOVE, DIRECTOR-*: an address was given */
  UsherIp ip;
  char *tag;         /* HOST-SET ip@tag; USER-LOOKUP / USHER-EXPLAIN tag; NULL if not given */
  gint vhost_count;  /* HOST-SET / HOST-UPDATE: -1 if not given */
  guint max_moves;   /* HOST-RESET-USERS: 0 = the default */
  char *user;        /* USER-LOOKUP / USER-MOVE / USER-KICK / USHER-EXPLAIN: as given */
  gboolean user_is_hash; /* user is a decimal number, taken as the hash itself (as Dovecot) */
  guint32 hash;          /* ... that number */
  char *field, *value;   /* USER-KICK-ALT */
  gboolean nowait;       /* USER-KICK, USER-KICK-ALT */
  guint16 port;          /* DIRECTOR-ADD / DIRECTOR-REMOVE: 0 if not given */
} UsherAdminCmd;

void usher_admin_cmd_clear(UsherAdminCmd *cmd);
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(UsherAdminCmd, usher_admin_cmd_clear)

/* Is line (without its "\n") an acceptable VERSION line from a client? */
gboolean usher_admin_version_ok(const char *line, gsize len);

/* Parses one request line (without "\n"; it may be modified). On failure returns FALSE and sets
 * *error_out (transfer full) to a sentence for the log; the connection is then closed, as
 * Dovecot does. */
gboolean usher_admin_cmd_parse(char *line, gsize len, UsherAdminCmd *cmd_out, char **error_out);

typedef enum {
  USHER_ADMIN_RUN_REPLIED = 0, /* the reply is in the GString */
  USHER_ADMIN_RUN_PENDING,     /* an ADMIN_REPLY effect carrying op will answer */
  USHER_ADMIN_RUN_EXTENSION,   /* an Usher command: the caller builds the reply */
} UsherAdminRunResult;

/* Runs a parsed command on the director (on its owning thread). Queries are answered at once
 * into reply_out (one line or the whole multi-line block); changes go to the director's admin
 * operations and are answered by an ADMIN_REPLY effect for op. */
UsherAdminRunResult usher_admin_cmd_run(UsherDirector *director, UsherNow now, guint64 op,
                                        const UsherAdminCmd *cmd, GString *reply_out);

/* The user hash a command names: the number itself, or the login name hashed as the director
 * does. */
guint32 usher_admin_cmd_user_hash(const UsherDirector *director, const UsherAdminCmd *cmd);

G_END_DECLS

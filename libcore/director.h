/* director.h - one director: the ring protocol state machine, user placement, moves, kicks,
 * flushes and login requests, sans-I/O.
 *
 * The driver (usherd, ushersim, the test harness) owns sockets, clocks and timers. It calls the
 * input functions below; each call appends effects to an outbox that the driver drains with
 * usher_director_take_effects() afterwards. The director never calls back into the driver.
 *
 * Time: every input carries an UsherNow. mono_us is a monotonic clock for local timers; wall_us
 * is the UNIX time that travels between directors (user timestamps, host up/down times). The
 * simulator may step or skew wall time independently of mono time.
 *
 * Timers: usher_director_next_deadline() gives the earliest mono_us at which the director wants
 * usher_director_on_deadline(); calling it early or late is harmless.
 *
 * Connections are integer ids chosen by the director: it names the id in a CONNECT effect (an
 * outgoing connection) or returns it from usher_director_peer_accepted() (an incoming one). After
 * a DISCONNECT effect, or after the driver reports usher_director_peer_closed(), the id is dead
 * and never reused.
 *
 * The protocol is Dovecot 2.3's director ring, version 1.9, byte for byte; doc/ring-protocol.md
 * lists every deliberate difference.
 */
#pragma once

#include "libcore/config.h"
#include "libcore/host.h"
#include "libcore/ring-codec.h"

G_BEGIN_DECLS

typedef struct {
  gint64 mono_us; /* monotonic clock, microseconds */
  gint64 wall_us; /* UNIX time, microseconds */
} UsherNow;

/* A login request is answered within this many seconds (TEMPFAIL at the latest). */
#define USHER_REQUEST_TIMEOUT_SECS 30

typedef guint32 UsherConnId;
#define USHER_CONN_ID_NONE ((UsherConnId)0)

typedef struct UsherDirector UsherDirector;

/* ---- Effects ------------------------------------------------------------------------------ */

typedef enum {
  USHER_EFFECT_SEND = 1,     /* write bytes to a connection */
  USHER_EFFECT_CONNECT,      /* open an outgoing connection; report peer_connected/peer_closed */
  USHER_EFFECT_DISCONNECT,   /* close a connection (after writing what was sent before) */
  USHER_EFFECT_LOGIN_RESULT, /* answer a login request */
  USHER_EFFECT_KICK,         /* disconnect local proxied sessions; report kick_done(id) */
  USHER_EFFECT_FLUSH,        /* run the flush hook for a moved user; report flush_done(id) */
  USHER_EFFECT_ADMIN_REPLY,  /* the reply to an admin operation */
  USHER_EFFECT_LOG,          /* a log line */
  USHER_EFFECT_STATE,        /* ring state changed (handshaked / synced / neighbours) */
} UsherEffectType;

typedef enum {
  USHER_LOGIN_OK = 0,
  USHER_LOGIN_TEMPFAIL,
} UsherLoginStatus;

typedef enum {
  USHER_KICK_HASH = 0, /* sessions whose login name hashes to hash (in any tag), sparing except */
  USHER_KICK_NAME,     /* sessions whose login name is name */
  USHER_KICK_ALT,      /* sessions whose alternative name field `name` equals value */
} UsherKickKind;

typedef struct {
  UsherEffectType type;
  union {
    struct {
      UsherConnId conn;
      char *data; /* transfer: owned by the effect */
      gsize len;
    } send;
    struct {
      UsherConnId conn;
      UsherRingAddr addr;
    } connect;
    struct {
      UsherConnId conn;
      char *reason;
    } disconnect;
    struct {
      guint64 request;
      UsherLoginStatus status;
      UsherIp host;       /* OK: the backend */
      char *hostname;     /* OK: the backend's hostname, or NULL */
      guint32 hash;       /* the user hash that was placed */
      guint refresh_secs; /* OK: refresh the user this often while sessions live (expire / 2) */
      char *reason;       /* TEMPFAIL: why */
    } login;
    struct {
      guint64 id;
      UsherKickKind kind;
      guint32 hash;
      UsherIp except; /* family 0: spare nobody */
      char *name;     /* NAME: login name; ALT: field name */
      char *value;    /* ALT: field value */
    } kick;
    struct {
      guint64 id;
      guint32 hash;
      UsherIp old_host;
      UsherIp new_host;
      char *new_hostname; /* or NULL */
      gboolean old_down;
      guint old_vhost_count;
      char *socket; /* the configured flush_socket */
    } flush;
    struct {
      guint64 op;
      char *text; /* one or more lines, each ending in "\n" */
    } admin;
    struct {
      GLogLevelFlags level;
      char *message;
    } log;
  };
} UsherEffect;

/* Frees the strings an effect owns. */
void usher_effect_clear(UsherEffect *effect);

/* ---- Life cycle ---------------------------------------------------------------------------- */

/* self must be one of config->directors, unless that list is empty (a standalone director, whose
 * identity is 127.0.0.1:0 as in Dovecot). The seed drives every random choice (none today; kept
 * so that future ones stay reproducible). Returns NULL with an error if self is not listed. */
UsherDirector *usher_director_new(const UsherConfig *config, const UsherRingAddr *self,
                                  guint64 seed, UsherNow now, GError **error);
void usher_director_free(UsherDirector *director);

/* Drains the outbox: an array of UsherEffect in the order they were produced (transfer full;
 * free with g_array_unref, which clears each effect). Never NULL. */
GArray *usher_director_take_effects(UsherDirector *director);

/* ---- Inputs -------------------------------------------------------------------------------- */

/* Starts the director: connects to its right neighbour (or declares itself alone). */
void usher_director_start(UsherDirector *director, UsherNow now);

/* A TCP connection arrived from remote_ip on the ring port. Returns its id, or
 * USHER_CONN_ID_NONE if it must be refused (not a ring member's IP, or a recent protocol
 * failure); the driver then closes it. */
UsherConnId usher_director_peer_accepted(UsherDirector *director, UsherNow now,
                                         const UsherIp *remote_ip);
/* An outgoing connection (from a CONNECT effect) is established. */
void usher_director_peer_connected(UsherDirector *director, UsherNow now, UsherConnId conn);
/* Bytes arrived on a connection. */
void usher_director_peer_bytes(UsherDirector *director, UsherNow now, UsherConnId conn,
                               const void *data, gsize len);
/* The connection closed (EOF, error, failed connect, output overflow). reason is for the log. */
void usher_director_peer_closed(UsherDirector *director, UsherNow now, UsherConnId conn,
                                const char *reason);

gint64 usher_director_next_deadline(UsherDirector *director);
void usher_director_on_deadline(UsherDirector *director, UsherNow now);

/* A login (or LMTP / doveadm) lookup: which backend serves username in tag (NULL or "" for the
 * untagged ring)? Answered by a LOGIN_RESULT effect, at once or later (the ring is not synced,
 * the user is being moved...), always within USHER_REQUEST_TIMEOUT_SECS. */
void usher_director_login_request(UsherDirector *director, UsherNow now, guint64 request,
                                  const char *username, const char *tag);
/* A proxied session of username is still alive (Dovecot's proxy-notify): refresh the user in
 * every tag that has it and tell the ring. */
void usher_director_user_refresh(UsherDirector *director, UsherNow now, const char *username);
/* The kick with this id (from a KICK effect) has finished. */
void usher_director_kick_done(UsherDirector *director, UsherNow now, guint64 kick);
/* The flush hook with this id (from a FLUSH effect) has finished. */
void usher_director_flush_done(UsherDirector *director, UsherNow now, guint64 flush,
                               gboolean success);

/* ---- Admin operations ----------------------------------------------------------------------- *
 * The operations of Dovecot's director-admin protocol. Each is answered by one ADMIN_REPLY effect
 * carrying op, whose text is Dovecot's reply line: "OK\n", "NOTFOUND\n", "TRYAGAIN\n" or an
 * error sentence. Operations that change hosts or ring members first wait until the ring is
 * synced, and the ones whose effect must travel the ring reply only once it is synced again;
 * each wait is capped at USHER_ADMIN_SYNC_WAIT_SECS ("Ring sync timed out"). Unlike Dovecot, a
 * waiting operation never makes a later one get lost. */

#define USHER_ADMIN_SYNC_WAIT_SECS 30
#define USHER_ADMIN_MAX_PENDING 1000

/* HOST-SET: add a backend or set its vhost count (vhost_count < 0: leave it; a new backend gets
 * 100). tag NULL: not given. */
void usher_director_admin_host_set(UsherDirector *director, UsherNow now, guint64 op,
                                   const UsherIp *ip, const char *tag, gint vhost_count);
/* HOST-UPDATE: like HOST-SET for an existing backend only. */
void usher_director_admin_host_update(UsherDirector *director, UsherNow now, guint64 op,
                                      const UsherIp *ip, guint vhost_count);
/* HOST-UP / HOST-DOWN. */
void usher_director_admin_host_set_down(UsherDirector *director, UsherNow now, guint64 op,
                                        const UsherIp *ip, gboolean down);
/* HOST-REMOVE: forget the backend and its users (no kick). */
void usher_director_admin_host_remove(UsherDirector *director, UsherNow now, guint64 op,
                                      const UsherIp *ip);
/* HOST-FLUSH (doveadm director flush -F): drop the backend's users without kicking them; ip NULL
 * for every backend. */
void usher_director_admin_host_flush(UsherDirector *director, UsherNow now, guint64 op,
                                     const UsherIp *ip);
/* HOST-RESET-USERS (doveadm director flush): move every user of the backend (ip NULL: of every
 * backend) whose hashed backend differs, at most max_moves at a time (0: max_parallel_moves).
 * Replies once every move has started. */
void usher_director_admin_host_reset_users(UsherDirector *director, UsherNow now, guint64 op,
                                           const UsherIp *ip, guint max_moves);
/* USER-MOVE: move the user with this hash to the backend. */
void usher_director_admin_user_move(UsherDirector *director, UsherNow now, guint64 op,
                                    guint32 user_hash, const UsherIp *ip);
/* USER-KICK / USER-KICK-ALT: kick sessions ring-wide. With nowait, TRYAGAIN instead of waiting
 * when max_parallel_kicks kicks are already running. field NULL: kick by login name. */
void usher_director_admin_user_kick(UsherDirector *director, UsherNow now, guint64 op,
                                    const char *field, const char *value, gboolean nowait);
/* DIRECTOR-ADD / DIRECTOR-REMOVE (port 0: the default port / the first member with that IP). */
void usher_director_admin_director_add(UsherDirector *director, UsherNow now, guint64 op,
                                       const UsherIp *ip, guint16 port);
void usher_director_admin_director_remove(UsherDirector *director, UsherNow now, guint64 op,
                                          const UsherIp *ip, guint16 port);

/* The user hash for a name, as this director computes it (username_hash, separator). */
guint32 usher_director_user_hash(UsherDirector *director, const char *username);

/* ---- State --------------------------------------------------------------------------------- */

typedef struct {
  guint64 lines_in, lines_out;
  guint64 protocol_errors;       /* connections closed for bad input */
  guint64 refused_connections;   /* incoming connections refused */
  guint64 duplicate_commands;    /* flooded commands seen before and dropped */
  guint64 floods_held;           /* flooded commands held until the peer's VERSION arrived */
  guint64 floods_held_overflow;  /* ... sent at once instead, the hold queue being full */
  guint64 ignored_updates;       /* user updates ignored as impossible (user hash 0) */
  guint64 user_conflicts;        /* USER updates that disagreed with our host */
  guint64 host_conflicts;        /* concurrent host edits resolved locally */
  guint64 hosts_hash_mismatches; /* SYNCs with a different host list */
  guint64 sync_resends;
  guint64 logins_ok, logins_tempfail, logins_delayed;
  guint64 moves_started, moves_finished, moves_timed_out; /* every move this director took part in */
  guint64 moves_initiated; /* moves this director started (admin USER-MOVE, flushes) */
  guint64 kicks_sent;
  guint64 users_expired;
  guint64 alone_declared;
} UsherDirectorStats;

const UsherRingAddr *usher_director_get_self(const UsherDirector *director);
gboolean usher_director_is_ring_handshaked(const UsherDirector *director);
gboolean usher_director_is_ring_synced(const UsherDirector *director);
guint usher_director_get_ring_min_version(const UsherDirector *director);
/* The member our left / right connection leads to, or NULL. */
const UsherRingAddr *usher_director_get_left(const UsherDirector *director);
const UsherRingAddr *usher_director_get_right(const UsherDirector *director);
UsherHostTable *usher_director_get_hosts(UsherDirector *director);
const UsherDirectorStats *usher_director_get_stats(const UsherDirector *director);
guint usher_director_count_pending_requests(const UsherDirector *director);
guint usher_director_count_moving_users(const UsherDirector *director);

/* A fingerprint of the state that must converge across a healed ring: hosts (ip, vhosts, down,
 * tag) and every user entry (tag, hash, host). Timestamps are left out: they may differ by the
 * propagation delay. */
guint64 usher_director_state_fingerprint(UsherDirector *director);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(UsherDirector, usher_director_free)

G_END_DECLS

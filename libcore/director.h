/* director.h - one director: the ring protocol state machine, user placement, moves, kicks,
 * flushes and login requests, sans-I/O.
 *
 * The driver (usherd, ushersim, the test harness) owns sockets, clocks and timers. It calls the
 * input functions below; each call appends effects to an outbox that the driver drains with
 * usher_director_take_effects() afterwards. The director never calls back into the driver.
 *
 * Time contract (checked at every entry point; a violation is a driver bug and aborts):
 *  - every input carries an UsherNow. mono_us is a monotonic clock in microseconds for local
 *    timers: greater than 0 and never smaller than in the previous call on the same director.
 *    wall_us is the UNIX time in microseconds that travels between directors (user timestamps,
 *    host up/down times), between 0 and USHER_WALL_US_MAX; it may step backwards or forwards
 *    (NTP, the simulator's clock faults) independently of mono_us.
 *  - usher_director_next_deadline() gives the earliest mono_us at which the director wants
 *    usher_director_on_deadline(), or USHER_DEADLINE_NEVER; calling it early or late is harmless.
 *  - times that peers send (ME, PING, USER, HOST) are clamped to 0 .. 2^32-1 UNIX seconds before
 *    any arithmetic, so a lying peer cannot cause an overflow.
 *
 * Threads: one thread owns an UsherDirector and makes every call on it; nothing in it is locked.
 * Other threads (the daemon's proxy workers) must not touch it, not even to read. What they may
 * use is the immutable UsherLoginHasher (usher_director_get_hasher(), or one built from the same
 * configuration): it hashes a login name exactly as the director does, from any thread.
 *
 * Backpressure: after writing SEND bytes the driver reports how many bytes it still holds for
 * that connection (usher_director_peer_output_queued()). Bulk streams (the handshake's user list)
 * pause above USHER_OUTPUT_PAUSE_BYTES and resume when the driver reports
 * USHER_OUTPUT_RESUME_BYTES or less (with a small output_buffer_size: a quarter of it, and a
 * quarter of that); PING carries the figure, as Dovecot's does.
 *
 * Bounds: every queue the director keeps has a cap (doc/architecture.md, "Bounds"); what is
 * refused at a cap is counted in UsherDirectorStats.
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
  gint64 mono_us; /* monotonic clock, microseconds; > 0, never decreasing */
  gint64 wall_us; /* UNIX time, microseconds; 0 .. USHER_WALL_US_MAX */
} UsherNow;

/* The latest wall time the core accepts: 2^32 - 1 UNIX seconds (the year 2106, as the wire's
 * 32-bit user timestamps). */
#define USHER_WALL_US_MAX (G_GINT64_CONSTANT(4294967295) * G_GINT64_CONSTANT(1000000))
/* usher_director_next_deadline() when no timer is armed. */
#define USHER_DEADLINE_NEVER G_MAXINT64

/* Output backpressure (see above). */
#define USHER_OUTPUT_PAUSE_BYTES (256 * 1024)
#define USHER_OUTPUT_RESUME_BYTES (64 * 1024)

/* A login request is answered within this many seconds (TEMPFAIL at the latest). */
#define USHER_REQUEST_TIMEOUT_SECS 30
/* A KICK effect not reported done within this time is forgotten (stats.kicks_timed_out): its
 * slot is free again and a move waiting for it goes on. */
#define USHER_KICK_TIMEOUT_SECS 30
/* A FLUSH effect not reported done within this time counts as failed (stats.flushes_timed_out):
 * the move then waits user_kick_delay instead, as after a failed hook. */
#define USHER_FLUSH_TIMEOUT_SECS 10

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
                             /* (both have deadlines: a driver that never reports cannot wedge
                              * a move or use up kick slots) */
  USHER_EFFECT_ADMIN_REPLY,  /* the reply to an admin operation */
  USHER_EFFECT_LOG,          /* a log line */
  USHER_EFFECT_STATE,        /* ring state changed (handshaked / synced / neighbours) */
  USHER_EFFECT_PROBE,        /* health check one backend; report probe_done(id) */
} UsherEffectType;

typedef enum {
  USHER_LOGIN_OK = 0,
  USHER_LOGIN_TEMPFAIL,
} UsherLoginStatus;

typedef enum {
  USHER_KICK_HASH = 0, /* sessions whose login name hashes to hash (in any tag), sparing except */
  USHER_KICK_NAME,     /* sessions whose login name is name */
  USHER_KICK_ALT,      /* sessions whose alternative name field `name` equals value */
  USHER_KICK_BACKEND,  /* every session proxied to the backend `except` (a down backend flushed) */
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
      UsherIp except; /* HASH: family 0 spares nobody; BACKEND: the backend */
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
    struct {
      guint64 id;
      UsherIp host;
    } probe;
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
/* TRUE if the outbox holds effects (a drain loop asks this instead of taking an empty outbox). */
gboolean usher_director_has_effects(const UsherDirector *director);

/* ---- Inputs -------------------------------------------------------------------------------- */

/* Before usher_director_start(): puts back a user entry from a snapshot that this director
 * wrote (a full-ring restart then moves no user). The entry goes to host's tag. It is skipped
 * (FALSE) if host is not a backend, hash is 0, the entry has expired by now, the user is already
 * present, or the directory is full. Nothing is sent: the ring learns the entry in the
 * handshake, as any other. */
gboolean usher_director_restore_user(UsherDirector *director, UsherNow now, guint32 hash,
                                     const UsherIp *host, guint32 timestamp);

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
/* A hint for a driver that knows what it will pass to usher_director_peer_bytes() next: if data
 * start with a USER line, the director starts loading that user's directory slot, so that the
 * cache miss overlaps the driver's work in between. Changes nothing. */
void usher_director_prefetch_bytes(UsherDirector *director, const void *data, gsize len);
/* The connection closed (EOF, error, failed connect, output overflow). reason is for the log. */
void usher_director_peer_closed(UsherDirector *director, UsherNow now, UsherConnId conn,
                                const char *reason);

gint64 usher_director_next_deadline(UsherDirector *director);
void usher_director_on_deadline(UsherDirector *director, UsherNow now);

/* The driver still holds queued_bytes of output for this connection (bytes of SEND effects not
 * yet written to the socket). Call it after every write attempt on a ring connection, including
 * when the queue drains to 0. The handshake's user stream waits while the figure is high. */
void usher_director_peer_output_queued(UsherDirector *director, UsherNow now, UsherConnId conn,
                                       gsize queued_bytes);

/* A login (or LMTP / doveadm) lookup: which backend serves username in tag (NULL or "" for the
 * untagged ring)? Answered by exactly one LOGIN_RESULT effect, at once or later (the ring is not
 * synced, the user is being moved...), always within USHER_REQUEST_TIMEOUT_SECS, unless the
 * driver cancels it first. The driver chooses request ids; an id that is still waiting must not
 * be used again: such a call returns FALSE and produces no effect at all (stats.requests_refused
 * counts it), so no answer can ever be taken for another request's. Returns TRUE otherwise. */
gboolean usher_director_login_request(UsherDirector *director, UsherNow now, guint64 request,
                                      const char *username, const char *tag);
/* The client of a login request went away: drop the request; no LOGIN_RESULT follows. Unknown
 * or already answered ids are ignored. */
void usher_director_login_cancel(UsherDirector *director, UsherNow now, guint64 request);
/* A proxied session of username is still alive (Dovecot's proxy-notify): refresh the user in
 * every tag that has it and tell the ring. */
void usher_director_user_refresh(UsherDirector *director, UsherNow now, const char *username);
/* The kick with this id (from a KICK effect) has finished. Late or unknown ids are ignored. */
void usher_director_kick_done(UsherDirector *director, UsherNow now, guint64 kick);
/* The flush hook with this id (from a FLUSH effect) has finished; success FALSE if the hook
 * failed. Late or unknown ids are ignored. */
void usher_director_flush_done(UsherDirector *director, UsherNow now, guint64 flush,
                               gboolean success);

/* ---- Backend health (doc/health.md) -------------------------------------------------------------
 * With [health] enabled, the director asks the driver to probe every backend each interval (a
 * PROBE effect) and keeps its own view of each: failing after `fall` failed probes in a row,
 * healthy after `rise` good ones (a backend starts in the state the ring has for it). Usherd
 * directors exchange their views (X-USHER-HEALTH, an extension only sent to peers that announced
 * it in OPTIONS). A backend goes down ring-wide, by an ordinary HOST-DOWN, only when a majority of
 * the live voting directors see it failing and the live voters are a quorum of the ring; it comes
 * back up the same way, and only if a health decision took it down. */

/* A probe has finished: ok FALSE if the backend failed it; detail (may be NULL) says what was
 * seen, for usherctl. Late or unknown ids are ignored. A probe not reported within the health
 * timeout plus one second counts as failed. */
void usher_director_probe_done(UsherDirector *director, UsherNow now, guint64 probe, gboolean ok,
                               const char *detail);

typedef struct {
  UsherIp ip;
  char ip_str[USHER_IP_STRLEN];
  gboolean failing;        /* this director's view, after hysteresis */
  guint fails_in_row, oks_in_row;
  guint64 probes, probes_failed;
  gint64 last_probe;       /* UNIX seconds of the last result; 0 = none yet */
  gboolean last_ok;
  char *last_detail;       /* or NULL */
  guint votes_failing;     /* live voters (this one included) that see it failing */
  guint votes_ok;          /* live voters that see it healthy (complete reports only) */
  gboolean down;           /* the ring's state */
  gboolean health_down;    /* taken down by a health decision (and still down since) */
} UsherHealthInfo;

typedef struct {
  gboolean enabled;
  guint members;      /* ring members that are not removed */
  guint quorum;       /* live voters needed before any decision */
  guint live_voters;  /* this director included when enabled */
  guint needed;       /* votes a decision needs: a majority of live_voters */
  gboolean have_quorum;
  GArray *backends; /* UsherHealthInfo, in IP order */
  GArray *voters;   /* UsherHealthVoter, in address order; this director not included */
} UsherHealthReport;

typedef struct {
  UsherRingAddr addr;
  gint64 age_ms;   /* since its latest report arrived */
  gboolean live;   /* that report is fresh (3 of its intervals) */
  guint interval_ms;
  guint n_failing;
  UsherIp failing[USHER_RING_HEALTH_LIST_MAX]; /* the backends it sees failing (n_failing) */
  gboolean complete;
  guint32 seq;
} UsherHealthVoter;

/* A snapshot (transfer full; free with usher_health_report_clear()). */
void usher_director_get_health(const UsherDirector *director, UsherNow now,
                               UsherHealthReport *report_out);
void usher_health_report_clear(UsherHealthReport *report);

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

/* The "initial configuration" (USER-LOOKUP's third answer, HOST-LIST-REMOVED) is now this
 * backend list (UsherBackendConfig*): a daemon that re-read its configuration file says so, as
 * Dovecot re-reads director_mail_servers for these answers. Nothing else changes. FALSE (and no
 * change) if the list is invalid. */
gboolean usher_director_set_initial_backends(UsherDirector *director, const GPtrArray *backends,
                                             GError **error);

/* The user hash for a name, as this director computes it (username_hash, separator). */
guint32 usher_director_user_hash(const UsherDirector *director, const char *username);
/* The director's login hasher: immutable, owned by the director, usable from any thread while
 * the director lives. */
const UsherLoginHasher *usher_director_get_hasher(const UsherDirector *director);

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
  guint64 kicks_sent;       /* every kick this director ran locally */
  guint64 admin_kicks;      /* ... of which started by an admin operation here */
  guint64 kicks_timed_out;  /* kicks the driver never reported done */
  guint64 flushes_failed;   /* flush hooks that reported failure */
  guint64 flushes_timed_out;/* flush hooks that never reported */
  guint64 users_expired;
  guint64 alone_declared;
  /* Refusals at a bound (doc/architecture.md, "Bounds") */
  guint64 requests_refused;    /* login requests: too many waiting, or a duplicate id */
  guint64 requests_cancelled;  /* login requests the driver cancelled */
  guint64 admin_refused;       /* admin operations: too many waiting */
  guint64 moves_refused;       /* moves from the ring: too many in flight */
  guint64 kicks_untracked;     /* kicks run without a slot record: too many in flight */
  guint64 users_refused;       /* new user entries: the directory is full */
  guint64 tags_refused;        /* hosts with a new tag: too many tags */
  guint64 members_refused;     /* directors not added: the member table is full */
  guint64 outgoing_refused;    /* outgoing ring connections not opened: too many at once */
  guint64 vhosts_refused;      /* peer HOSTs refused: the tag's ring would exceed its points */
  guint64 forged_own_commands; /* commands in our name with a sequence number we never used */
  guint64 peers_refused;       /* ring links closed for who the peer is: an old or incompatible
                                  version, not a member, removed, ourselves, failed recently */
  guint64 logs_suppressed;     /* log lines dropped: too many in one call */
  guint64 handshake_pauses;    /* the user stream waited for the driver's output queue */
  guint64 times_clamped;       /* peer timestamps outside 0 .. 2^32-1 s */
  guint64 weak_users_given_up; /* weak flags cleared (and announced) when no USER-WEAK came back
                                  within the login timeout */
  /* Health checks */
  guint64 probes_sent, probes_failed, probes_timed_out;
  guint64 health_reports_sent, health_reports_received;
  guint64 health_reports_refused; /* from a non-member, malformed for us, or stale */
  guint64 health_downs, health_ups; /* decisions this director took */
  guint64 health_no_quorum;         /* evaluations skipped: too few live voters */
  guint64 health_reflushes;         /* HOST-FLUSH again: entries came back on a replaced backend */
  guint64 links_with_extension;         /* ring links on which the peer announced the extension */
  /* USER updates for a backend we did not know (yet): its HOST was lost or is still on its way */
  guint64 user_updates_held;          /* kept, to be applied when the backend's HOST comes */
  guint64 user_updates_held_applied;  /* ... applied when it came */
  guint64 user_updates_held_dropped;  /* ... dropped: no HOST within 30 s, or HOST-REMOVE for it */
  guint64 user_updates_held_overflow; /* not kept: the hold queue was full (dropped, as Dovecot) */
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

/* ---- Read-only queries ---------------------------------------------------------------------- *
 * What Dovecot's admin protocol lists (HOST-LIST, HOST-LIST-REMOVED, DIRECTOR-LIST, USER-LOOKUP,
 * USER-LIST), as snapshots the caller owns. They take a const director and never change it: no
 * lazy ring rebuild, no expiry, no effect. Call them on the thread that owns the director. */

typedef struct {
  UsherIp ip;
  char ip_str[USHER_IP_STRLEN];
  char *hostname; /* NULL if none */
  char *tag;      /* "" for the default tag */
  guint vhost_count;
  gboolean down;
  gint64 last_updown_change; /* UNIX seconds; 0 = never */
  guint user_count;
  gboolean desynced; /* changed here since the last completed ring sync */
} UsherHostInfo;

/* Every backend in IP order: an array of UsherHostInfo that frees its strings (transfer full). */
GArray *usher_director_list_hosts(const UsherDirector *director);
/* Backends of the configuration the director started with that are no longer in its host table
 * (an array of UsherIp in IP order; transfer full). */
GArray *usher_director_list_removed_hosts(const UsherDirector *director);

typedef enum {
  USHER_LINK_NONE = 0, /* a member with no connection */
  USHER_LINK_LEFT,
  USHER_LINK_RIGHT,
  USHER_LINK_IN,  /* incoming, not (yet) a neighbour */
  USHER_LINK_OUT, /* outgoing, not (yet) a neighbour */
} UsherLinkRole;

typedef struct {
  gboolean has_addr; /* FALSE: an incoming connection whose ME has not arrived yet */
  UsherRingAddr addr;
  gboolean self;
  gboolean removed;
  gint64 last_failure; /* UNIX seconds of the later network or protocol failure; 0 = never */
  /* A connection (role != USHER_LINK_NONE): */
  UsherLinkRole role;
  UsherConnId conn;
  gboolean connected;  /* outgoing: TCP established */
  gboolean handshaked; /* the peer's DONE arrived */
  gboolean synced;     /* the ring is synced as far as this link knows */
  guint64 users_received, users_sent, users_to_send;
  gint64 ping_rtt_ms;  /* the latest PING round trip; -1 before the first PONG */
  guint64 bytes_in, bytes_out;
  guint64 buffered, buffered_peak; /* as the driver reported them */
  gint64 last_input, last_output;  /* UNIX seconds; 0 = never */
} UsherMemberInfo;

/* DIRECTOR-LIST, in Dovecot's order: incoming connections whose ME has not arrived (by id);
 * then for each member in (ip, port) order one entry per connection it has (by id), or one entry
 * with role NONE if it has none. An array of UsherMemberInfo (transfer full). */
GArray *usher_director_list_members(const UsherDirector *director);

typedef struct {
  gboolean handshaked, synced;
  guint min_version;       /* the ring's lowest protocol minor */
  gint64 last_sync_msecs;  /* round trip of the last completed SYNC */
  gint64 unsynced_since_us;/* mono time the ring became unsynced (when !synced) */
  gboolean alone;          /* declared itself the only reachable director */
  guint n_members, n_connections;
  guint pending_requests, moving_users, kicks_running, admin_kicks_running, pending_admin_ops;
  guint n_users;           /* directory entries, every tag */
} UsherRingInfo;

void usher_director_get_ring_info(const UsherDirector *director, UsherRingInfo *info_out);

typedef struct {
  guint32 hash;
  gboolean tag_known;
  /* The directory entry. An entry past its expiry that has not been dropped yet counts as absent
   * (found FALSE), as it does for a login. */
  gboolean found;
  UsherIp current;
  guint32 timestamp;  /* UNIX seconds of the last refresh */
  gint64 expires;     /* timestamp + user_expire */
  gboolean weak;
  UsherKillState kill_state;
  /* Where the vhost ring puts the user now (family 0: no usable backend). */
  UsherIp hashed;
  /* Where a director started with the initial configuration would put it (family 0: none). */
  UsherIp initial;
} UsherUserInfo;

/* The entry that usher_director_lookup_user() reports as found (not expired at now_wall_us, or
 * still moving or weak), or NULL; without the placements that call also computes (it builds the
 * initial configuration's vhost ring each time). The host is usher_host_table_get(hosts, ->host). */
const UsherUser *usher_director_held_user(const UsherDirector *director, gint64 now_wall_us,
                                          guint32 hash, const char *tag_name);
/* USER-LOOKUP of a user hash in tag (NULL or "": the default tag) at wall time now_wall_us. */
void usher_director_lookup_user(const UsherDirector *director, gint64 now_wall_us, guint32 hash,
                                const char *tag, UsherUserInfo *info_out);

typedef struct {
  guint32 hash;
  guint32 timestamp; /* UNIX seconds; expiry is timestamp + user_expire */
  UsherIp host;
} UsherUserEntry;

/* USER-LIST: every directory entry (every tag, oldest first), or only those on host (NULL: all).
 * An array of UsherUserEntry (transfer full). */
GArray *usher_director_list_users(const UsherDirector *director, const UsherIp *host);
/* The same entries as usher_director_list_users(director, NULL), in the order they lie in
 * memory (no order an operator would want): several times faster on a large directory, whose
 * oldest-first list visits memory at random. For a copy sorted elsewhere (the daemon's
 * snapshot). */
GArray *usher_director_list_users_stored(const UsherDirector *director);
guint usher_director_get_user_expire_secs(const UsherDirector *director);

/* A fingerprint of the state that must converge across a healed ring: hosts (ip, vhosts, down,
 * tag) and every user entry (tag, hash, host). Timestamps are left out: they may differ by the
 * propagation delay. */
guint64 usher_director_state_fingerprint(UsherDirector *director);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(UsherDirector, usher_director_free)

G_END_DECLS

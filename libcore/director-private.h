/* director-private.h - the director's internal state, shared by director*.c only. */
#pragma once

#include "libcore/director.h"
#include "libcore/rng.h"

/* Everything declared here is internal to libcore: hidden from other objects (the library is
 * linked with hidden symbols made local, see libcore/meson.build). */
#pragma GCC visibility push(hidden)

/* ---- Constants (Dovecot 2.3 values; spec section 9) ------------------------------------------ */

#define SEC_US G_GINT64_CONSTANT(1000000)

#define RECONNECT_RETRY_SECS 60        /* skip a member after a network failure */
#define PROTOCOL_FAILURE_RETRY_SECS 60 /* skip / refuse a member after a protocol failure */
#define PREFERRED_RIGHT_RECONNECT_SECS 30
#define USER_MOVE_TIMEOUT_SECS 30
#define SYNC_RESEND_SECS 5
#define ALONE_GRACE_SECS 20
#define ALONE_RETRY_SECS 1
#define REMOVED_PURGE_SECS 30
#define REQUEST_WARN_SECS 2
#define CONNECT_TIMEOUT_SECS 10
#define ME_TIMEOUT_SECS 10
#define SEND_USERS_TIMEOUT_SECS 30
#define DONE_TIMEOUT_SECS 40
#define PING_INTERVAL_SECS 15
#define PING_INTERVAL_UNSYNCED_SECS 1
#define PING_WARN_SECS 5
#define SHORT_LIVED_SECS 40
#define OLD_USER_REFRESH_SKIP_CAP_SECS 15
#define WRONG_CONNECT_RECONNECT_SECS 1
#define WAIT_DISCONNECT_SECS 10
#define HANDSHAKE_SLOW_WARN_SECS 29
#define SYNC_MAX_DUPLICATES 4
#define SYNC_STALE_RESET_SECS 120
#define CLOCK_SKEW_WARN_SECS 1
/* Links between usherd directors (both announced USHER_RING_OPTION_USHER_EXT): a PING after this
 * much silence, and the link is closed after usher_ping_timeout_secs more without input. */
#define USHER_PEER_PING_INTERVAL_SECS 1
/* A usherd member that failed is skipped this long, and a ring without it tries it this often. */
#define USHER_PEER_RETRY_SECS 5
/* Health: a voter's report is live for this many of its own intervals. */
#define HEALTH_REPORT_LIVE_INTERVALS 3
#define HEALTH_VOTERS_MAX STATE_MAX_MEMBERS
#define HANDSHAKE_USERS_PER_PASS 10000
#define STATE_MAX_MEMBERS USHER_CONFIG_MAX_DIRECTORS
#define STATE_MAX_CONNECTIONS 64    /* connections of any kind at once; more are refused */
/* Outgoing connections at once, closing ones included: one to the right neighbour and a few
 * being replaced; more means peers keep sending CONNECTs (refused, counted). */
#define STATE_MAX_OUTGOING 16
/* Vhost points in one tag's ring: 4096 backends at the admin maximum of 1000. A peer's HOST that
 * would take the tag past it is refused (each point costs an MD5 and 8 bytes at every rebuild). */
#define STATE_MAX_TAG_VHOSTS (4096 * 1000)
/* Peer times (HOST up/down changes, SYNC) later than our clock by more than this are clamped to
 * it: one far in the future would win every comparison until then. */
#define PEER_CLOCK_AHEAD_MAX_SECS 300
#define HOSTS_RESEND_MIN_SECS 5
#define STATE_MAX_PENDING_REQUESTS 100000
/* ---- Bounds (doc/architecture.md, "Bounds"); a refusal at each is counted in the stats -------- */
#define CONN_HELD_FLOODS_MAX_BYTES (1024 * 1024) /* floods held per connection until VERSION */
#define STATE_MAX_KICKS 100000  /* kicks tracked at once (beyond: run untracked) */
#define STATE_MAX_MOVES 100000  /* moves at once (a ring move beyond it is refused) */
#define STATE_MAX_USERS 50000000 /* directory entries, every tag (about 1.5 GB) */
#define STATE_MAX_HELD_USERS 100000 /* USER updates waiting for their backend's HOST */
#define HELD_USER_SECS 30           /* ... each for at most this long */
#define LOGS_PER_CALL_MAX 1000  /* LOG effects in one input call */
#define TIME_PEER_MAX G_GINT64_CONSTANT(4294967295) /* peer timestamps are clamped to 0 .. this */

/* ---- Members (director hosts) ---------------------------------------------------------------- */

typedef struct {
  UsherRingAddr addr;
  char name[USHER_IP_STRLEN + 8]; /* "ip:port" for logs */
  gboolean self;
  gboolean removed;
  gint64 removed_mono_us;
  guint32 last_seq;      /* newest sequenced command seen from this origin */
  /* Newest USER-WEAK of this origin passed on after it came round (see cmd_user_weak()). */
  guint32 last_weak_forward_seq;
  guint32 last_sync_seq; /* SYNC bookkeeping for this origin */
  guint32 last_sync_timestamp;
  guint last_sync_seq_counter;
  guint32 desynced_hosts_hash;
  /* This origin's SYNC that arrived while we had no right: forwarded once a right is adopted
   * (Dovecot's delayed_sync_*). One per origin, so SYNCs of different origins held at the same
   * time are all passed on; 0 = none (seqs start at 1). */
  guint32 delayed_sync_seq;
  guint32 delayed_sync_minor;
  guint32 delayed_sync_timestamp;
  guint32 delayed_sync_hosts_hash;
  gint64 last_network_failure;  /* wall seconds, 0 = never */
  gboolean usher_ext;           /* a link with it announced Usher's extension (it is a usherd) */
  gint64 last_protocol_failure; /* wall seconds, 0 = never */
} Member;

/* ---- Connections ------------------------------------------------------------------------------ */

typedef struct Conn Conn;

struct Conn {
  UsherConnId id;
  gboolean incoming;
  Member *host; /* outgoing: the dialled member; incoming: set by ME */
  UsherIp remote_ip;
  char name[64];

  gboolean connected; /* outgoing: TCP established */
  gboolean version_received;
  /* Flooded commands that arrived before the peer's VERSION, formatted for our own minor
   * version, with the minor each needs (one byte per line): re-formatted for the peer's version
   * when VERSION comes. Sent at minor 0 they would lose fields (USER's timestamp). */
  GString *held_lines; /* at most CONN_HELD_FLOODS_MAX_BYTES */
  GByteArray *held_min_minor;
  gboolean me_received;
  guint peer_minor;
  gboolean usher_ext;      /* the peer announced Usher's extension in OPTIONS */
  gboolean usher_ext_sent; /* we announced it on this connection */

  /* Handshake, receiving side */
  gboolean handshake_sending_hosts; /* between HOST-HAND-START and HOST-HAND-END */
  gboolean ignore_host_events;      /* the peer is joining our completed ring */
  gboolean host_list_ignored;       /* ...and so its handshake's HOSTs were ignored */
  GArray *replacing_hosts;          /* we are joining its ring: IPs its host list named */
  gboolean handshake_received;      /* the peer's DONE arrived */
  guint64 users_received;

  /* Handshake, sending side (outgoing) */
  gboolean handshake_sent; /* our DONE went out */
  GArray *users_to_send;   /* snapshot of SnapshotUser, oldest first per tag */
  guint users_sent_idx;
  guint64 users_sent;

  /* Life */
  gboolean is_left, is_right;
  gboolean synced;       /* the ring is synced as far as this link is concerned (ping rate) */
  gboolean verifying;    /* a PING checks that our current left is alive */
  gboolean closing;      /* CONNECT sent: discard input, close after WAIT_DISCONNECT_SECS */
  gint64 closing_deadline_us;
  gint64 send_more_us; /* outgoing handshake: continue sending users at this time, 0 = no */
  gint64 created_us;
  gint64 handshake_start_us;
  gint64 last_input_us;
  gint64 last_output_us;
  gint64 ping_sent_us; /* 0: no PING outstanding */
  gint64 ping_sent_wall_us;
  gint64 ping_rtt_ms; /* latest round trip, -1 = none yet */
  gint64 timeout_base_us; /* restarts on input; handshake timeouts count from here */
  gboolean slow_warned;
  guint64 bytes_in, bytes_out;
  gint64 last_input_wall, last_output_wall; /* UNIX seconds, for DIRECTOR-LIST */

  /* Backpressure: what the driver last reported still queued, plus what we sent since. */
  guint64 output_queued;
  guint64 output_unreported;
  guint64 output_peak;
  gint64 output_progress_us; /* the driver's backlog for this link last got smaller */
  gboolean users_paused; /* the user stream waits for output_queued to drop */

  UsherLineReader *reader;
};

/* A user in a handshake snapshot: the entry and the hash it had then (see
 * conn_continue_sending_users). */
typedef struct {
  UsherUser *user;
  guint32 hash;
} SnapshotUser;

/* ---- Moves and kicks ------------------------------------------------------------------------- */

typedef struct {
  UsherTag *tag; /* key, with hash */
  guint32 hash;
  UsherKillState state;
  gboolean self_initiated;
  gboolean has_old_host;
  UsherIp old_ip;
  gboolean old_down;
  guint old_vhost_count;
  guint64 kick_id;  /* outstanding local kick, 0 = none */
  guint64 flush_id; /* outstanding flush hook, 0 = none */
  gint64 flush_deadline_us; /* the hook counts as failed after this */
  gboolean ignored_update; /* a conflicting USER arrived mid-move and was ignored */
  gint64 deadline_us; /* move timeout, or the end of DELAY */
} Move;

typedef struct {
  guint64 id;
  gboolean for_move;
  gboolean admin; /* started by an admin operation on this director: takes a kick slot */
  UsherTag *tag;
  guint32 hash;
  gint64 deadline_us; /* forgotten after USHER_KICK_TIMEOUT_SECS */
  GList *order_link;  /* in UsherDirector.kick_order */
} Kick;

/* A user in a tag; tags live as long as the host table, so the pointer is a stable key. */
typedef struct {
  UsherTag *tag;
  guint32 hash;
} TagHash;

/* ---- USER updates for a backend we do not know yet ------------------------------------------ */

/* A USER that named a backend we did not know when it arrived: the HOST that adds it was lost to
 * the "seen" check on the other way round the ring, or is still on its way. Kept for
 * HELD_USER_SECS and applied if a HOST adds the backend meanwhile (the host list heals through
 * the hosts_hash check in SYNC; the users would not). Keyed by (hash, ip). */
typedef struct {
  guint32 hash;
  UsherIp ip;
  gint64 timestamp;  /* the sender's (clamped), or our wall time when it sent none */
  UsherRingAddr src; /* the member it came from: not sent back there */
  gint64 deadline_us;
  GList *link; /* in UsherDirector.held_users */
} HeldUser;

/* ---- Requests --------------------------------------------------------------------------------- */

typedef struct {
  guint64 id;
  char *username;
  char *tag;
  guint32 hash;
  gint64 created_us;
  gboolean warned;
  /* Cancelled by the driver while it waited for a weak user: it stays queued, unanswered and
   * without its id, so the weak flag still gets cleared and announced at the timeout
   * (requests_timers) if the USER-WEAK never comes back round. */
  gboolean cancelled;
  const char *reason; /* why it waits (static string) */
} Request;

typedef struct AdminOp AdminOp;

/* ---- Health (director-health.c) ---------------------------------------------------------------- */

typedef struct {
  UsherIp ip;
  gboolean seen;     /* marks during a host-table walk */
  gboolean failing;  /* our view after hysteresis */
  guint fails, oks;  /* results in a row */
  guint64 probe_id;  /* outstanding probe, 0 = none */
  gint64 probe_deadline_us;
  guint64 probes, probes_failed;
  gint64 last_probe_wall;
  gboolean last_ok;
  char *last_detail;
  /* > 0: a health decision took it down at this up/down time (ours or learnt from a report) */
  gint64 health_down_time;
  gint64 pending_since_us; /* the votes call for a change since then (0 = they do not) */
  gboolean decided_here;   /* this director took it down (replace): it keeps it flushed */
} HealthBackend;

typedef struct {
  Member *member;
  guint32 boot, seq;
  gint64 received_us;
  guint interval_ms;
  GArray *failing; /* UsherIp */
  gboolean complete;
} HealthVoter;

typedef struct {
  gboolean enabled;
  guint interval_secs, timeout_secs, fall, rise, quorum;
  gboolean down_replace;
  guint32 boot, seq;
  gint64 next_tick_us; /* probes and the periodic report; 0 = not started */
  gboolean report_now;
  gboolean had_quorum;
  gint64 synced_since_us;       /* the ring has been synced since, 0 = it is not */
  guint settled_live;           /* live voters at the last look ... */
  gint64 settled_live_since_us; /* ... unchanged since */
  gboolean settled;             /* both for two intervals: decisions possible (ring_settled) */
  GPtrArray *backends; /* HealthBackend*, owns */
  GHashTable *by_ip;   /* UsherIp* (the entry's own) -> HealthBackend* in backends */
  GPtrArray *voters;   /* HealthVoter*, owns */
} Health;

/* ---- The director ----------------------------------------------------------------------------- */

struct UsherDirector {
  /* Settings */
  UsherLoginHasher *hasher;
  guint user_expire_secs;
  guint user_kick_delay_secs;
  guint max_parallel_moves;
  guint max_parallel_kicks;
  char *flush_socket;
  guint ping_idle_timeout_secs;
  guint ping_max_timeout_secs;
  guint usher_ping_timeout_secs;
  /* Handshake backpressure thresholds: USHER_OUTPUT_PAUSE/RESUME_BYTES, lowered to a quarter
   * (a sixteenth) of output_buffer_size when that is small, so the stream pauses well before the
   * driver's limit drops the link. */
  gsize output_pause_bytes;
  gsize output_resume_bytes;
  UsherRng rng;

  /* Members: sorted by (ip, port); owns the Members */
  GPtrArray *members;
  Member *self;

  /* Connections: Conn*, ascending id (ids only grow, so adding appends); owns the Conns. A
   * handful at a time: iterating in this order keeps output deterministic without sorting. */
  GPtrArray *conns;
  UsherConnId next_conn_id;
  Conn *left, *right;

  /* Ring state */
  gboolean started;
  gboolean ring_handshaked;
  gboolean took_ring_hosts; /* a complete ring's host list replaced ours once already */
  gboolean ring_synced;
  guint ring_min_version;
  guint32 sync_seq;
  guint64 ring_change_counter;
  guint64 last_sync_sent_ring_change_counter;
  gint64 last_sync_start_us;
  gint64 last_sync_msecs;
  gint64 last_resend_sync_wall; /* seconds */
  /* When users_resend_hosts() last flooded every host (mono us; 0 = never): at most once per
   * HOSTS_RESEND_MIN_SECS, however many mismatching SYNCs a peer sends. */
  gint64 hosts_resent_us;
  gint sync_frozen;
  gboolean sync_pending;
  gint64 sync_timer_us;          /* SYNC resend, 0 = off */
  gint64 connect_timer_us;       /* retry director_connect, 0 = off */
  gint64 alone_since_us;         /* no reachable member since, 0 = not alone-searching */
  gboolean alone;                /* declared ourselves the only director; retrying quietly */
  gint64 preferred_right_timer_us; /* 0 = off */
  gint64 purge_timer_us;
  gint64 handshake_start_us;     /* for the slow-handshake warning, 0 = done */
  gint64 wall_minus_mono_us;     /* from the latest input: converts wall deadlines to mono */

  /* Hosts and users */
  UsherHostTable *hosts;
  GHashTable *moves; /* Move* (keyed by tag and hash) -> itself; owns */
  guint users_moving_count;
  GHashTable *kicks; /* id -> Kick*; owns */
  GQueue kick_order;         /* Kick*, oldest first (= deadline order) */
  guint admin_kicks_running; /* kicks in d->kicks started by admin operations (the slots) */
  /* USER updates waiting for their backend's HOST (users_hold_update) */
  GQueue held_users;      /* HeldUser*, in arrival (= deadline) order; owns */
  GHashTable *held_index; /* the same, by (hash, ip); NULL until the first */
  /* Placement by the configuration the director started with (USER-LOOKUP "initial config",
   * HOST-LIST-REMOVED); never changed after creation. */
  UsherHostTable *initial_hosts;
  guint64 next_effect_id;

  /* Requests: FIFO */
  GQueue requests;
  gboolean requests_running, requests_again;
  guint requests_cancelled_waiting; /* Requests in the queue with .cancelled set */
  GHashTable *request_ids; /* id -> Request* (membership only) */

  /* Admin operations waiting for the ring, for moves or for kick slots: FIFO */
  GQueue admin_ops;
  gboolean admin_running, admin_again;

  /* Outbox */
  GArray *effects;
  gsize last_send_cap; /* allocated size of the last SEND effect's data (coalescing) */
  guint logs_this_call;
  GString *scratch;

  gint64 last_mono_us; /* the time contract: mono time never goes back */
  gint64 now_wall_secs; /* wall time of the current call, for bookkeeping that has no now */

  Health health;

  UsherDirectorStats stats;
};

/* director.c */
void dir_log(UsherDirector *d, GLogLevelFlags level, const char *fmt, ...) G_GNUC_PRINTF(3, 4);
void dir_send(UsherDirector *d, Conn *conn, const char *data, gsize len);
void dir_send_msg(UsherDirector *d, Conn *conn, const UsherRingMsg *msg, guint minor);
void dir_sync(UsherDirector *d, UsherNow now);
gboolean dir_resend_sync(UsherDirector *d, UsherNow now);
void dir_set_ring_synced(UsherDirector *d, UsherNow now);
void dir_set_ring_unsynced(UsherDirector *d, UsherNow now);
void dir_set_ring_handshaked(UsherDirector *d, UsherNow now);
void dir_state_changed(UsherDirector *d, UsherNow now);
void dir_connect(UsherDirector *d, UsherNow now, const char *reason);
Member *dir_member_lookup(UsherDirector *d, const UsherIp *ip, guint16 port);
Member *dir_member_get(UsherDirector *d, const UsherIp *ip, guint16 port);
int dir_member_cmp_to_self(UsherDirector *d, const Member *b1, const Member *b2);
void dir_member_restarted(Member *m);
Member *dir_preferred_right(UsherDirector *d);
void dir_remove_member(UsherDirector *d, UsherNow now, Member *src, Member *orig, Member *target);
gint64 dir_wall_secs(UsherNow now);

/* director-conn.c */
Conn *conn_new_outgoing(UsherDirector *d, UsherNow now, Member *host);
void conn_input(UsherDirector *d, UsherNow now, Conn *conn, const void *data, gsize len);
void conn_connected(UsherDirector *d, UsherNow now, Conn *conn);
typedef enum {
  CLOSE_QUIET = 0,
  CLOSE_SEND_DISCONNECT = 1 << 0, /* we close it: emit a DISCONNECT effect */
  CLOSE_FAILURE = 1 << 1,         /* a network-level failure: mark the member if short-lived */
} CloseFlags;
void conn_close(UsherDirector *d, UsherNow now, Conn *conn, const char *reason, CloseFlags flags);
GArray *dir_conn_ids_sorted(UsherDirector *d);
Conn *dir_conn_by_id(UsherDirector *d, UsherConnId id);
gint dir_conn_index(UsherDirector *d, UsherConnId id);
/* Adds a new connection (its id above every other's) to d->conns. */
void dir_conn_add(UsherDirector *d, Conn *c);
gboolean dir_handshake_in_progress(UsherDirector *d);
void conn_protocol_error(UsherDirector *d, UsherNow now, Conn *conn, const char *reason);
void conn_ping(UsherDirector *d, UsherNow now, Conn *conn);
void conn_adopt_waiting_left(UsherDirector *d, UsherNow now);
void conn_set_synced(Conn *conn, gboolean synced);
void conn_send_connect(UsherDirector *d, UsherNow now, Conn *conn, Member *target);
void conn_timers(UsherDirector *d, UsherNow now, Conn *conn);
gint64 conn_next_deadline(UsherDirector *d, Conn *conn);
void conn_continue_sending_users(UsherDirector *d, UsherNow now, Conn *conn);
gboolean conn_try_adopt_left(UsherDirector *d, UsherNow now, Conn *conn);
Conn *conn_outgoing_to(UsherDirector *d, Member *host);
void flood(UsherDirector *d, Member *src, guint min_minor, const UsherRingMsg *msg);
gboolean cmd_is_seen(UsherDirector *d, const UsherRingOrigin *origin, Member **origin_out);
void origin_fill(UsherDirector *d, Member *orig, UsherRingOrigin *out);

/* director-users.c */
void users_update_user(UsherDirector *d, Member *src, UsherTag *tag, UsherUser *user);
void users_update_user_weak(UsherDirector *d, Member *src, Conn *src_conn,
                            const UsherRingOrigin *origin, UsherTag *tag, UsherUser *user);
gboolean users_refresh(UsherDirector *d, UsherNow now, Conn *conn, guint32 hash, UsherHost *host,
                       gint64 timestamp, gboolean has_timestamp, gboolean weak,
                       gboolean *forced_out, UsherUser **user_out);
void users_move(UsherDirector *d, UsherNow now, Member *src, Member *orig, guint32 hash,
                UsherHost *host);
void users_killed(UsherDirector *d, UsherNow now, guint32 hash);
void users_killed_everywhere(UsherDirector *d, UsherNow now, Member *src, Member *orig,
                             guint32 hash);
void users_kick_hash(UsherDirector *d, UsherNow now, Member *src, Member *orig, guint32 hash,
                     const UsherIp *except);
void users_kick_name(UsherDirector *d, UsherNow now, Member *src, Member *orig, const char *name,
                     gboolean admin);
void users_kick_alt(UsherDirector *d, UsherNow now, Member *src, Member *orig, const char *field,
                    const char *value, gboolean admin);
void users_remove_host(UsherDirector *d, UsherNow now, Member *src, Member *orig,
                       UsherHost *host);
void users_flush_host(UsherDirector *d, UsherNow now, Member *src, Member *orig,
                      UsherHost *host);
void users_update_host(UsherDirector *d, UsherNow now, Member *src, Member *orig,
                       UsherHost *host);
void users_resend_hosts(UsherDirector *d, UsherNow now);
void users_hold_update(UsherDirector *d, UsherNow now, Conn *conn, guint32 hash, const UsherIp *ip,
                       gint64 timestamp, gboolean has_timestamp);
void users_drop_held(UsherDirector *d, const UsherIp *ip);
void users_timers(UsherDirector *d, UsherNow now);
gint64 users_next_deadline(UsherDirector *d);
/* Every public input starts with this: checks the time contract and starts a new call. */
void dir_enter(UsherDirector *d, UsherNow now);
gint64 dir_clamp_peer_time(UsherDirector *d, gint64 secs);
/* The same, and no later than our clock plus PEER_CLOCK_AHEAD_MAX_SECS (counted when clamped). */
gint64 dir_clamp_peer_time_ahead(UsherDirector *d, UsherNow now, gint64 secs);
guint dir_count_users(const UsherDirector *d);
void requests_continue(UsherDirector *d, UsherNow now);
void requests_timers(UsherDirector *d, UsherNow now);
gint64 requests_next_deadline(UsherDirector *d);
Move *move_lookup(UsherDirector *d, UsherTag *tag, guint32 hash);
void users_free_all(UsherDirector *d);
void users_kill(UsherDirector *d, UsherNow now, Member *src, UsherTag *tag, UsherUser *user,
                UsherHost *old_host, gboolean force_kick);

/* director-health.c */
void health_init(UsherDirector *d, const UsherConfig *config, UsherNow now);
void health_start(UsherDirector *d, UsherNow now);
void health_free(UsherDirector *d);
gint64 health_next_deadline(UsherDirector *d);
void health_timers(UsherDirector *d, UsherNow now);
gboolean health_cmd_report(UsherDirector *d, UsherNow now, Conn *c, const UsherRingMsg *msg);
void health_peer_ready(UsherDirector *d, UsherNow now, Conn *c);
void health_member_gone(UsherDirector *d, Member *m);
gboolean health_replaced(UsherDirector *d, const UsherHost *host);

/* director-admin.c */
void admin_continue(UsherDirector *d, UsherNow now);
gint64 admin_next_deadline(UsherDirector *d);
void admin_timers(UsherDirector *d, UsherNow now);
void admin_op_free(AdminOp *a);

#pragma GCC visibility pop

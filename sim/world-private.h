/* world-private.h - the simulator's state, shared by world.c, report.c and chart.c. */
#pragma once

#include "libcore/director.h"
#include "libcore/rng.h"
#include "sim/net.h"
#include "sim/world.h"

#define SEC_US G_GINT64_CONSTANT(1000000)
#define WALL_BASE_US (G_GINT64_CONSTANT(1795392000) * SEC_US) /* a fixed, plausible epoch */
/* Directors' monotonic clocks read virtual time plus this: the core wants mono_us > 0. */
#define MONO_BASE_US SEC_US
#define LOGIN_COMPLETION_SLACK_US (SEC_US)
#define PROBE_INTERVAL_US (SEC_US)
#define PROBE_LATENCY_US (G_GINT64_CONSTANT(1000)) /* a backend health probe's round trip */
#define MAX_FAILURES_KEPT 50
#define MAX_PENDING_EVENTS 20000000 /* a message storm, not a workload */

/* The world's events; the network's own (sim/net.h) come before them in the same queue. */
typedef enum {
  EV_KICK_DONE = SIM_NET_EV_DRIVER,
  EV_FLUSH_DONE,
  EV_PROBE_DONE, /* a health probe's result (the last of the per-director events) */
  EV_LOGIN_CANCEL,
  EV_ARRIVAL,
  EV_LOGIN_ATTEMPT,
  EV_SESSION_END,
  EV_SESSION_REFRESH,
  EV_SCENARIO,
  EV_SAMPLE,
  EV_PROBE,
  EV_CHECK,
} SimEvKind;

typedef struct {
  guint index;
  UsherRingAddr addr;
  UsherDirector *d;
  gboolean up;
  gboolean paused; /* director-pause: a stopped process (SIGSTOP): no timers, no input */
  guint incarnation;
  gint64 deadline;   /* cached next_deadline; recomputed after each call into d */
  gint64 wall_offset_us;
  gint64 last_clock_step_us; /* simulation time of its last clock-step, 0 = none */
  gint drift_ppm;
  gint64 drift_since_us;
  gint64 drift_base_us;
  guint64 health_downs_seen, health_ups_seen; /* the director's counters at the last drain */
} SimNode;

/* A user placed on two backends by two halves of a split ring, settled at the merge: the lower
 * IP wins and sessions on the other backend are kicked. */
typedef struct {
  gint64 t_us;
  guint32 hash;
  UsherIp kept, lost;
} SimConflict;

/* A backend taken down or up by a health decision. */
typedef struct {
  gint64 t_us;
  guint director;
  gboolean down;
} SimHealthDecision;

typedef struct {
  guint32 hash;
  guint32 sessions; /* first live session (index + 1), 0 = none */
  guint16 last_backend; /* backend index + 1 of the last successful login, 0 = none */
  guint8 live_backends; /* distinct backends with live sessions */
  guint8 moved;         /* counted in users_moved */
} SimUser;

typedef struct {
  guint32 user;
  guint32 next;  /* next session of the same user (index + 1) */
  guint32 gen;
  guint16 backend;
  guint8 director;
  guint8 proto;
  guint8 alive;
  /* A refresh found no entry on the session's director after that director's clock stepped:
   * the step expired the entry early, and nothing keeps the user on this backend any more. */
  guint8 orphaned_by_step;
  /* When the login was answered, a director whose clock differed from the answering one's by
   * more than a second held the user on another backend. */
  guint8 placed_across_skew;
  guint director_incarnation;
  gint64 start_us;
  guint refresh_secs;
} SimSession;

typedef struct {
  UsherIp ip;
  char ip_str[USHER_IP_STRLEN];
  guint capacity;
  guint live;
  gboolean failed;
  guint64 unreachable_from; /* directors (bit mask) that cannot reach it while it works */
  gboolean mute;            /* failed by accepting and never answering: probes time out */
  gint64 last_unsafe_us; /* last host-remove / forced flush of this backend */
  guint64 sessions_total;
} SimBackend;

typedef struct {
  guint64 id;
  guint32 user;
  guint8 proto;
  guint8 attempt;
  guint director;
  guint director_incarnation;
  gint64 first_us;
  gint64 sent_us;
} SimLogin;

typedef struct {
  gint64 start_us;
  gboolean allowed;
  const char *cause;
} SimWindow;

typedef struct {
  gint64 t_us;
  guint32 *live;  /* per backend */
  guint32 *users; /* per backend, from the first director that is up */
  guint32 two_backends;    /* users with live sessions on two backends now */
  guint64 backend_changes; /* logins so far that landed on another backend than the last */
  guint64 kicked;          /* sessions kicked so far */
} SimSample;

typedef struct {
  gint64 t_us;
  char *text;
  gboolean admin; /* sent to one director only: on a split ring, only its half sees it at once */
} SimMark;

typedef struct {
  gint64 since_us;
  gint64 took_us; /* -1: did not converge within the budget */
  /* When the moves running at agreement (a flush, a move) had all finished, from since_us: the
   * change's full cost. took_us when none ran; -1 when the next change came first. */
  gint64 settled_us;
  guint users; /* user entries each director held at agreement: what a handshake carried */
  char *after;
} SimConvergence;

struct SimWorld {
  const SimScenario *sc;
  guint64 seed;
  guint64 seed_net, seed_workload, seed_directors, seed_driver;
  UsherRng rng_workload;
  UsherRng rng_driver; /* the driver's faults: late, lost and failed kicks and flushes, cancels */

  gint64 now_us;
  guint64 health_probes; /* backend health probes answered */
  GArray *health_decisions; /* SimHealthDecision, in time order */
  GArray *conflicts;        /* SimConflict, one per user hash (the first time) */
  GHashTable *moves_between; /* (from backend index << 32 | to) -> logins that changed so */
  gint8 *check_verdicts;     /* per scenario check: -1 not evaluated yet, 0 failed, 1 passed */
  SimNet *net; /* the event queue and the links between directors */
  guint64 events;
  gboolean budget_exhausted;
  gboolean quiescing; /* after the end: no new logins, let in-flight updates settle */
  gint64 max_skew_seen_secs;
  /* The lowest and highest wall clock offset (against the simulation's clock) any director has
   * had so far, sampled at each check and around each clock step. */
  gint64 min_offset_seen_us, max_offset_seen_us;
  gboolean offsets_seen;

  guint n_nodes;
  SimNode nodes[64];

  GArray *backends; /* SimBackend */
  SimUser *users;
  guint64 n_users;
  guint64 *hash_index; /* sorted (hash << 32 | user) */
  GArray *sessions;    /* SimSession */
  GArray *free_sessions; /* guint32 indexes */
  GHashTable *logins;  /* id -> SimLogin* */
  GHashTable *cancelled; /* ids (guint64*) of login requests the client cancelled */
  guint64 next_login;
  GHashTable *windows; /* user -> SimWindow* */
  gint64 rate_milli;

  /* Faults: while active, and for a grace period after, double-backend windows are "split
   * brain" the ring rules allow. */
  guint faults_active;
  gint64 fault_grace_until_us;

  gboolean probing;
  guint last_diverged; /* the director that differed at the last agreement check */
  gint64 probe_since_us;
  gint settling;        /* index in convergences of one whose moves still run, or -1 */
  char *probe_after;
  GArray *convergences; /* SimConvergence */

  /* Figures */
  guint64 login_attempts, logins_ok, logins_failed, tempfails, retries, backend_full;
  guint64 backend_refused, director_unavailable;
  guint64 logins_cancelled;
  guint64 kicks_lost, flushes_lost, flushes_failed; /* the driver's faults */
  guint64 sessions_started, sessions_kicked, sessions_cut;
  guint64 lmtp_redelivered; /* LMTP deliveries cut by a failure, delivered again by the MTA */
  guint64 users_moved, backend_changes;
  guint64 windows_split_brain, windows_clock_skew, windows_unsafe, windows_violation;
  gint64 window_total_us, window_longest_us;
  guint64 latency_hist[64 * 16];
  guint64 latency_count;
  gint64 latency_max_us;
  GArray *samples; /* SimSample */
  GArray *marks;   /* SimMark */
  GPtrArray *failures;
  guint64 failures_total;
  guint64 fingerprint;
  FILE *log;
  gint64 wall_elapsed_us; /* host clock, only for the events-per-second figure */
  guint64 events_timed; /* the events of that time (the settling after the end is not timed) */
};

void world_fail(SimWorld *w, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
char *world_time(gint64 us);
const char *world_user_of_hash(SimWorld *w, guint32 hash, char *buf, gsize size);
gint64 world_latency_percentile(SimWorld *w, guint pct);

/* scenario.h - a simulator scenario: cluster, network, workload, timed events and checks.
 *
 * Loaded from JSON (doc/scenarios.md documents every field). Loading is strict: an unknown field,
 * a wrong type or an impossible value is an error that names the field by its path, e.g.
 * "events[3].director: 7 is not a director (the cluster has 3)".
 */
#pragma once

#include "libcore/config.h"
#include "sim/dist.h"

#include <json-glib/json-glib.h>

G_BEGIN_DECLS

#define SIM_SCENARIO_ERROR (sim_scenario_error_quark())
GQuark sim_scenario_error_quark(void);

#define SIM_MAX_DIRECTORS 32
#define SIM_MAX_USERS 20000000

#define SIM_MAX_TAGS 16 /* tags a workload may mix */

typedef struct {
  UsherIp ip;
  guint vhosts;
  char *tag;
  gboolean down;
  guint capacity; /* live sessions the backend accepts; 0 = unlimited */
} SimBackendSpec;

typedef enum {
  SIM_EV_HOST_ADD,
  SIM_EV_HOST_REMOVE,
  SIM_EV_HOST_DOWN,
  SIM_EV_HOST_UP,
  SIM_EV_HOST_VHOSTS,
  SIM_EV_FLUSH,
  SIM_EV_MOVE,
  SIM_EV_KICK,
  SIM_EV_DIRECTOR_CRASH,
  SIM_EV_DIRECTOR_RESTART,
  SIM_EV_DIRECTOR_PAUSE,
  SIM_EV_DIRECTOR_RESUME,
  SIM_EV_PARTITION,
  SIM_EV_HEAL,
  SIM_EV_LINK_DELAY,
  SIM_EV_LINK_LOSS,
  SIM_EV_LINK_RESET,
  SIM_EV_CLOCK_STEP,
  SIM_EV_CLOCK_DRIFT,
  SIM_EV_BACKEND_FAIL,
  SIM_EV_BACKEND_RECOVER,
  SIM_EV_WORKLOAD_RATE,
} SimEventKind;

typedef struct {
  gint64 at_us;
  SimEventKind kind;
  guint director;   /* the director an admin event is sent to, or the one crashing */
  gboolean has_host;
  UsherIp host;     /* host events, flush (absent: all), move target */
  guint vhosts;     /* host-add, host-vhosts */
  char *tag;        /* host-add */
  char *user;       /* move, kick */
  gboolean force;   /* flush: drop without kicking (doveadm director flush -F) */
  guint max_parallel; /* flush */
  GArray *groups;   /* partition: guint64 bit masks of directors, at least two */
  guint a, b;       /* link-*: the two directors */
  gint64 value_us;  /* link-delay: extra latency; clock-step: step (may be negative) */
  gint ppm;         /* clock-drift */
  guint percent;    /* link-loss: share of deliveries that need a retransmission */
  gint64 rate_milli; /* workload-rate: logins per second x 1000 */
  guint64 from_mask; /* backend-fail/-recover: only as seen from these directors; 0 = all */
  gboolean mute;     /* backend-fail: it accepts connections and never answers (probes time out) */
  guint file_index;  /* its place in the file's "events", for messages */
} SimScenarioEvent;

typedef enum {
  SIM_CHECK_MAX_MOVED,
  SIM_CHECK_SHARE,
  SIM_CHECK_NO_DOUBLE_BACKEND,
  SIM_CHECK_CONVERGED,
  SIM_CHECK_NO_PENDING_LOGINS,
  SIM_CHECK_LOGIN_LATENCY,
  SIM_CHECK_MAX_KICKED,
  SIM_CHECK_MIN_LOGINS,
  SIM_CHECK_USER_ON,           /* user is on host (every director that is up), at a time */
  SIM_CHECK_MAX_MOVED_BETWEEN, /* logins that changed from one backend to another */
  SIM_CHECK_MOVES_FINISHED,    /* the moves each change started finished within */
  SIM_CHECK_DIRECTOR_USERS,    /* a director holds between min and max user entries */
  SIM_CHECK_COUNTER,
} SimCheckKind;

/* What a "counter" check can look at: figures of the run, and sums over the directors that are
 * up (each since its last start). */
typedef enum {
  SIM_COUNTER_LOGINS_OK,
  SIM_COUNTER_LOGINS_FAILED,
  SIM_COUNTER_LOGINS_CANCELLED,
  SIM_COUNTER_KICKS_LOST,
  SIM_COUNTER_FLUSHES_LOST,
  SIM_COUNTER_FLUSHES_FAILED,
  SIM_COUNTER_OUTPUT_OVERFLOWS,
  SIM_COUNTER_LMTP_REDELIVERED,
  SIM_COUNTER_DIR_KICKS_SENT,
  SIM_COUNTER_DIR_KICKS_TIMED_OUT,
  SIM_COUNTER_DIR_FLUSHES_FAILED,
  SIM_COUNTER_DIR_FLUSHES_TIMED_OUT,
  SIM_COUNTER_DIR_REQUESTS_CANCELLED,
  SIM_COUNTER_DIR_HANDSHAKE_PAUSES,
  SIM_COUNTER_DIR_MOVES_FINISHED,
  SIM_COUNTER_DIR_MOVES_TIMED_OUT,
  SIM_COUNTER_DIR_HEALTH_DOWNS,
  SIM_COUNTER_DIR_HEALTH_UPS,
  SIM_COUNTER_DIR_HEALTH_NO_QUORUM,
  SIM_N_COUNTERS,
} SimCounter;

/* "logins_cancelled", "directors.kicks_timed_out", ... */
const char *sim_counter_name(SimCounter counter);

typedef struct {
  SimCheckKind kind;
  gint64 at_us;     /* -1: at the end */
  guint64 max;      /* max-moved, max-kicked, counter; min-logins: the minimum */
  guint64 min;      /* counter */
  SimCounter counter; /* counter */
  UsherIp host;     /* share */
  guint min_x100, max_x100; /* share, in hundredths of a percent */
  gboolean allow_split_brain; /* no-double-backend: windows the ring rules allow do not fail */
  gint64 within_us; /* converged */
  guint percentile; /* login-latency */
  gint64 max_us;    /* login-latency */
  char *user;       /* user-on */
  gboolean has_from, has_to; /* max-moved-between: absent = any backend */
  UsherIp from, to;
  guint director;   /* director-users */
  char *text;       /* the check as written, for reports */
} SimCheck;

typedef struct {
  char *name;
  char *description;
  char *source; /* file name, for messages */
  guint64 seed;
  gint64 duration_us;
  guint64 max_events;
  gint64 sample_us;
  gint64 convergence_budget_us;

  guint directors;
  GPtrArray *backends; /* SimBackendSpec* */
  UsherConfig *config; /* [director] settings, directors and backends as the directors see them */

  SimDist latency;
  guint64 bandwidth; /* bytes per second per link; 0 = unlimited */

  guint64 users;
  char *user_prefix, *user_suffix; /* user_format split at its %u */
  char *tag;                       /* the tag every login asks for ("" = untagged ring) */
  /* A workload mixing tags: users 1 to users are split among them in the order of tags (sorted
   * by name), tag_cum[i] percent of them up to the end of tags[i]. Without a mix: n_tags 1,
   * tags[0] = tag, tag_cum[0] = 100. */
  guint n_tags;
  char *tags[SIM_MAX_TAGS];
  guint tag_cum[SIM_MAX_TAGS];
  gint64 rate_milli;               /* logins per second x 1000 */
  guint daily_curve[24];           /* weights per hour of the day; all equal if not given */
  gboolean has_daily_curve;
  SimDist session;
  guint mix_imap, mix_pop3, mix_lmtp; /* percent */
  guint retry_attempts;
  gint64 retry_delay_us;
  gint64 lmtp_duration_us;

  /* The driver (what the daemon does for a director), with its faults. Shares are in
   * thousandths of a percent (100000 = always). */
  SimDist kick_duration;     /* until a kick is reported done (its sessions end at once) */
  guint kick_lost_milli;     /* kicks never reported done */
  SimDist flush_duration;    /* the flush hook's run time */
  guint flush_failed_milli;  /* hooks that report failure */
  guint flush_lost_milli;    /* hooks that never report */
  guint login_cancel_milli;  /* login requests the client cancels if still unanswered ... */
  SimDist login_cancel_after; /* ... this long after sending them */

  GArray *events; /* SimScenarioEvent, sorted by time (stable) */
  GArray *checks; /* SimCheck */
  /* Events that can do nothing when they come (a crash of a director that is down, a heal with
   * no partition, ...), one sentence each; `run` prints them. */
  GPtrArray *warnings;
} SimScenario;

SimScenario *sim_scenario_load_file(const char *path, GError **error);
/* The index (0 to users - 1) of a login name of the workload (user_format with 1..users, no
 * leading zero), or -1. */
gint64 sim_scenario_user_index(const SimScenario *sc, const char *name);
/* The tag user (0 to users - 1) asks for: the scenario's tag, or its share of a mix. */
const char *sim_scenario_user_tag(const SimScenario *sc, guint64 user);
SimScenario *sim_scenario_load_data(const char *data, gssize len, const char *source,
                                    GError **error);
void sim_scenario_free(SimScenario *sc);

/* "250us", "2ms", "1.5s" is refused; "90s", "15m", "2h", "1d", plain numbers are seconds. */
gboolean sim_parse_duration_us(const char *text, gint64 *us_out);
const char *sim_event_kind_name(SimEventKind kind);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(SimScenario, sim_scenario_free)

G_END_DECLS

/* usherd.h - the director daemon's parts and how they meet.
 *
 * One thread, "the core thread", owns the UsherDirector and runs a GMainContext: every call into
 * the director happens there, followed by usherd_core_after_call(), which hands the effects to
 * the ring links, the admin clients, the flush hooks and the log, and re-arms the one timer from
 * usher_director_next_deadline(). The ring and admin sockets are few and slow, so they live on
 * the same context as plain GSocket sources.
 *
 *   main.c       options, configuration, signals, start and stop order
 *   core.c       the director, its clock, its timer and the effect dispatch
 *   ring-link.c  TCP links to the peer directors (listener, dialling, output queues)
 *   admin.c      the director-admin socket (doveadm director, usherctl)
 *   flush.c      the flush hook (director_flush_socket) of moves this director starts
 *   state.c      what survives a restart (the user directory snapshot)
 *   http.c       /metrics, placement lookups for nginx and Dovecot proxies (libsoup)
 *   metrics.c    the Prometheus text
 *   poller.c     one epoll fd as one GSource; poller_post(), how the threads talk
 *   proxy.c      the proxy workers (worker 0 runs on the core thread) and their sessions
 *   lmtp.c       LMTP; tls.c OpenSSL; health.c backend probes; reload.c SIGHUP; notify.c systemd
 */
#pragma once

#include "common/driver.h"
#include "libcore/admin-proto.h"
#include "libcore/config.h"
#include "libcore/director.h"

#include <gio/gio.h>
#include <json-glib/json-glib.h>

G_BEGIN_DECLS

#define G_LOG_DOMAIN_USHERD "usherd"

/* Daemon counters beyond the director's own (UsherDirectorStats). */
typedef struct {
  guint64 ring_refused;          /* ring connections from addresses outside the ring */
  guint64 ring_output_overflows; /* links dropped: output queue over output_buffer_size */
  guint64 ring_connect_failures; /* outgoing connects that failed or timed out */
  guint64 ring_bytes_in, ring_bytes_out;
  guint64 admin_clients;        /* accepted */
  guint64 admin_clients_refused; /* over admin_max_clients */
  guint64 admin_protocol_errors;/* closed for a bad VERSION, bad command or overlong line */
  guint64 admin_overflows;      /* closed: too many queued commands or too much unread output */
  guint64 admin_idle_closed;    /* closed: silent for admin_idle_timeout */
  guint64 admin_commands;
  guint64 flush_hooks_run, flush_hooks_failed;
  guint64 http_requests, http_bad_requests;
  guint64 http_connections_refused; /* over max_pending_lookups + 100 at once */
  guint64 http_bodies_refused;      /* 413: a request body no endpoint takes */
  guint64 http_lookups, http_lookups_refused, http_lookups_failed;
  guint64 health_probes_run, health_probes_ok, health_probes_failed;
} UsherdStats;

/* Every counter, by name: usherctl stats (admin.c) and /metrics (metrics.c) list the same. */
#define DIRECTOR_STATS(X)                                                                          \
  X(lines_in) X(lines_out) X(protocol_errors) X(refused_connections) X(duplicate_commands)         \
  X(floods_held) X(floods_held_overflow) X(ignored_updates) X(user_conflicts) X(host_conflicts)   \
  X(hosts_hash_mismatches) X(sync_resends) X(logins_ok) X(logins_tempfail) X(logins_delayed)     \
  X(moves_started) X(moves_finished) X(moves_timed_out) X(moves_initiated) X(kicks_sent)         \
  X(admin_kicks) X(kicks_timed_out) X(flushes_failed) X(flushes_timed_out) X(users_expired)      \
  X(alone_declared) X(requests_refused) X(requests_cancelled) X(admin_refused) X(moves_refused)   \
  X(kicks_untracked) X(users_refused) X(tags_refused) X(members_refused) X(outgoing_refused)     \
  X(vhosts_refused) X(forged_own_commands) X(peers_refused) X(logs_suppressed)                   \
  X(handshake_pauses)                                                                            \
  X(times_clamped) X(weak_users_given_up) X(probes_sent) X(probes_failed) X(probes_timed_out)    \
  X(health_reports_sent) X(health_reports_received) X(health_reports_refused) X(health_downs)    \
  X(health_ups) X(health_no_quorum) X(health_reflushes) X(links_with_extension) X(user_updates_held)                 \
  X(user_updates_held_applied) X(user_updates_held_dropped) X(user_updates_held_overflow)

#define DAEMON_STATS(X)                                                                            \
  X(ring_refused) X(ring_output_overflows) X(ring_connect_failures) X(ring_bytes_in)              \
  X(ring_bytes_out) X(admin_clients) X(admin_clients_refused) X(admin_protocol_errors)            \
  X(admin_overflows) X(admin_idle_closed)                                                          \
  X(admin_commands) X(flush_hooks_run) X(flush_hooks_failed) X(http_requests)                    \
  X(http_bad_requests) X(http_connections_refused) X(http_bodies_refused)                          \
  X(http_lookups) X(http_lookups_refused) X(http_lookups_failed) X(health_probes_run)             \
  X(health_probes_ok) X(health_probes_failed)

typedef struct _Usherd Usherd;
typedef struct _RingLinks RingLinks;
typedef struct _AdminServer AdminServer;
typedef struct _HttpServer HttpServer;

struct _Usherd {
  UsherConfig *config;
  char *config_path;
  UsherRingAddr self;
  UsherDirector *director;
  GMainContext *context;
  GMainLoop *loop;
  GSource *timer;
  gint64 started_wall_us;
  RingLinks *ring;
  AdminServer *admin;
  HttpServer *http;      /* NULL without [http] listen */
  struct Proxy *proxy;   /* NULL without [proxy] listeners */
  guint64 next_request;  /* login request ids */
  GHashTable *flushes; /* flush id -> running hook (flush.c) */
  GHashTable *probes;  /* probe id -> running health probe (health.c) */
  GSource *snapshot_timer;
  GThread *snapshot_thread; /* a periodic snapshot being written (state.c), or NULL */
  gint snapshot_done;       /* atomic: that thread has finished */
  GSource *runtime_timer;
  char *runtime_written; /* the lists last written to runtime.state */
  char *config_checksum; /* of the configuration file's lists (runtime.state's "config") */
  GArray *file_directors; /* [ring] directors as the file last read lists them */
  GSource *watchdog;
  char *last_status;
  guint64 reload_ops;
  GHashTable *reload_changes; /* op -> the change a SIGHUP asked for, until its answer */
  char *admin_socket_option, *state_dir_option; /* --admin-socket, --state-dir (NULL: none) */
  UsherdStats stats;
  gboolean stopping;
  gint64 drain_deadline_us; /* graceful stop: when the sessions are closed anyway */
  GSource *drain_timer; /* SIGTERM's wait for the sessions, in context */
};

/* core.c */
UsherNow usherd_now(void);
gboolean usherd_core_init(Usherd *u, GError **error);
void usherd_core_start(Usherd *u);
/* After every call into u->director: dispatch the effects, re-arm the timer. */
void usherd_core_after_call(Usherd *u);
void usherd_core_free(Usherd *u);

/* ring-link.c */
RingLinks *ring_links_new(Usherd *u, GError **error);
void ring_links_free(RingLinks *r);
/* Outgoing connects whose callback has not run yet (cancelled ones included). */
guint ring_links_dials_pending(void);
void ring_links_send(RingLinks *r, UsherConnId conn, const char *data, gsize len);
void ring_links_connect(RingLinks *r, UsherConnId conn, const UsherRingAddr *addr);
void ring_links_disconnect(RingLinks *r, UsherConnId conn);

/* admin.c */
AdminServer *admin_server_new(Usherd *u, GError **error);
void admin_server_free(AdminServer *a);
void admin_server_reply(AdminServer *a, guint64 op, const char *text);

/* http.c */
/* A string into JSON: names come from clients and ring peers, not always UTF-8; invalid bytes
 * become U+FFFD (json-glib assumes valid UTF-8 and would read past the end of a bad one). */
void usherd_json_add_string(JsonBuilder *builder, const char *text);

HttpServer *http_server_new(Usherd *u, GError **error); /* NULL and no error: not configured */
void http_server_free(HttpServer *h);
void http_server_login_result(HttpServer *h, const UsherEffect *e);

/* metrics.c */
char *usherd_metrics_text(Usherd *u);

/* flush.c */
void flush_hook_start(Usherd *u, const UsherEffect *e);
void flush_hooks_free(Usherd *u);

/* health.c */
void health_probe_start(Usherd *u, const UsherEffect *e);
void health_probes_free(Usherd *u);

/* state.c */
gboolean usherd_write_file_atomic(const char *path, const char *data, gsize len, GError **error);
void usherd_state_load_users(Usherd *u);
gboolean usherd_state_save_users(Usherd *u, GError **error);
void usherd_state_start(Usherd *u);
void usherd_state_stop(Usherd *u);
void usherd_state_apply_runtime(Usherd *u);
void usherd_state_watch_runtime(Usherd *u);
gboolean usherd_state_save_runtime(Usherd *u, GError **error);
/* SIGHUP adopted a new file: runtime.state is written again, with that file's checksum. */
void usherd_state_config_reloaded(Usherd *u);

/* notify.c (systemd) */
void usherd_notify_ready(Usherd *u);
void usherd_notify_status(Usherd *u);
void usherd_notify_stopping(Usherd *u);
/* A graceful stop is waiting for the proxy's sessions (STOPPING=1 with a status). */
void usherd_notify_draining(Usherd *u, guint sessions);
void usherd_notify_reloading(gboolean done);

/* reload.c */
void usherd_reload(Usherd *u);
gboolean usherd_reload_owns_op(guint64 op);
void usherd_reload_reply(Usherd *u, guint64 op, const char *text);

/* Helpers */
gboolean usherd_ip_from_gaddress(GSocketAddress *address, UsherIp *ip_out);
GSocketAddress *usherd_gaddress_from_ip(const UsherIp *ip, guint16 port);

G_END_DECLS

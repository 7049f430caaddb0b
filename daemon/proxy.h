/* proxy.h - the IMAP/POP3 proxy: worker threads, sessions, and the bridge to the core thread.
 *
 * Each worker thread runs its own GMainContext with one poller (one epoll fd) and accepts on its
 * own SO_REUSEPORT listeners, so the kernel spreads connections over the workers and nothing is
 * shared on the data path. A session reads the client's login (libcore's pre-login readers),
 * asks the core thread where the user lives (a login request by id: the one place placement is
 * decided), connects to that backend, passes the client's identity (IMAP ID, POP3 XCLIENT) and
 * logs in there with the client's own credentials, relays the backend's answer, and then moves
 * bytes both ways with bounded buffers and backpressure. Kicks from the core close exactly the
 * matching sessions (with an IMAP BYE or a POP3 -ERR when a line boundary allows); live sessions
 * refresh their users. */
#pragma once

#include "daemon/usherd.h"

G_BEGIN_DECLS

typedef struct Proxy Proxy;

/* NULL and no error when no listener is configured. Called on the core thread. */
Proxy *proxy_new(Usherd *u, GError **error);
/* Stops accepting, closes every session (with a BYE), joins the workers. */
void proxy_free(Proxy *proxy);
/* A graceful stop begins: the listeners close (new clients are refused by the kernel); the
 * sessions go on. */
void proxy_stop_accepting(Proxy *proxy);
/* Client connections open now (logged in or not). */
guint proxy_count_sessions(Proxy *proxy);

/* Core-thread side of the bridge (called from core.c's effect dispatch). */
gboolean proxy_owns_request(Proxy *proxy, guint64 request);
void proxy_login_result(Proxy *proxy, const UsherEffect *e);
/* Core thread, after each call into the director: after a change of the host table, logins
 * still waiting for a backend that is not up (down, or removed) are routed again. */
void proxy_hosts_check(Proxy *proxy, UsherHostTable *hosts);
/* A KICK effect: every worker closes its matching sessions; kick_done when all have. */
void proxy_kick(Proxy *proxy, const UsherEffect *e);
/* SIGHUP: reads tls_cert/tls_key again (same paths; new certificate contents). Sessions keep
 * the certificate they started with. FALSE (nothing changed) with *error on a bad file. */
gboolean proxy_reload_tls(Proxy *proxy, GError **error);

/* Counters (the _now ones are gauges), in /metrics as usher_proxy_<name> and in usherctl stats. */
#define PROXY_STATS(X)                                                                             \
  X(accepted) X(refused_total) X(refused_per_ip) X(prelogin_timeouts) X(bad_commands_closed)       \
  X(logins_ok) X(logins_failed) X(backend_unavailable) X(logins_rerouted) X(kicked)                \
  X(proxy_headers)                                                                               \
  X(proxy_header_errors) X(proxy_header_refused) X(tls_handshakes) X(tls_failures) X(starttls)    \
  X(spliced_bytes) X(splice_pipes_refused) X(accept_fd_exhausted) X(lmtp_sessions) X(lmtp_transactions)                  \
  X(lmtp_recipients) X(lmtp_delivered) X(lmtp_rejected) X(lmtp_tempfail_route)                    \
  X(lmtp_tempfail_backend) X(lmtp_tempfail_reply) X(lmtp_backend_failures) X(lmtp_bad_commands)    \
  X(lmtp_tempfail_client_gone)                                                                   \
  X(lmtp_spooled_bytes) X(lmtp_spool_errors) X(lmtp_pipeline_waits)                              \
  X(sessions_now) X(proxying_now) X(lmtp_now)

typedef struct {
#define PROXY_STAT_FIELD(name) guint64 name;
  PROXY_STATS(PROXY_STAT_FIELD)
#undef PROXY_STAT_FIELD
} ProxyStats;

void proxy_get_stats(Proxy *proxy, ProxyStats *out);

/* One logged-in (proxied) session, as usherctl sessions shows it. */
typedef struct {
  char *user;
  char *client;  /* "IP:PORT" of the client (the one a PROXY header named) */
  char *backend; /* backend IP */
  const char *protocol; /* "imap", "pop3" (static) */
  gboolean tls;
  gint64 since; /* UNIX seconds of the login */
} ProxySessionInfo;

/* The sessions logged in now, oldest first; only those of `user` (exact login name) and/or of
 * `backend` when given. Safe from any thread. */
GPtrArray *proxy_list_sessions(Proxy *proxy, const char *user, const UsherIp *backend);
/* Backend IP text -> number of sessions (GUINT_TO_POINTER), for /metrics. */
GHashTable *proxy_sessions_per_backend(Proxy *proxy);

G_END_DECLS

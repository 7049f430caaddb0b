/* proxy-private.h - what the proxy's protocol files share: the worker threads, the proxy
 * object, listeners, and lookups through the core thread. Not for the rest of the daemon (it
 * uses proxy.h). Every Worker field is touched only on that worker's thread unless it says
 * otherwise; Proxy fields follow the comments (p->lock, atomics, or fixed at start). */
#pragma once

#include "daemon/poller.h"
#include "daemon/proxy.h"

#include "libcore/user-hash.h"

#include <openssl/ssl.h>
#include <sys/socket.h>

G_BEGIN_DECLS

typedef struct Worker Worker;
typedef struct LmtpSession LmtpSession;

typedef enum {
  PROTO_IMAP = 0,
  PROTO_POP3,
  PROTO_LMTP, /* lmtp.c */
  PROTO_SIEVE,
  PROTO_SUBMISSION,
} Proto;

/* One listening socket of one worker. */
typedef struct {
  Worker *w;
  int fd;
  Proto proto;
  gboolean tls; /* imaps/pop3s: TLS from the first byte */
  gboolean unix_socket; /* LMTP on a UNIX socket */
  PollerWatch *watch;
  gboolean paused; /* out of file descriptors: not watched until the next tick */
  char ip[USHER_IP_STRLEN]; /* where it listens; "" for a wildcard address (ask each socket) */
  guint16 port;
} Listener;

struct Worker {
  Proxy *proxy;
  guint index;
  GThread *thread;
  GMainContext *context;
  GMainLoop *loop;
  Poller *poller;
  GPtrArray *listeners; /* Listener* */
  GQueue sessions;
  GHashTable *by_id; /* session id -> Session* */
  guint64 next_session;
  GSource *tick;
  GQueue later; /* SessionRef*: session_later's sources not yet run */
  gint64 next_refresh_us;
  GPtrArray *free_pipes; /* Pipe*, empty */
  guint pipes_busy;      /* held by sessions */
  guint64 spliced;       /* bytes, not yet added to the proxy's stats (on the tick) */
  guint64 splice_refused; /* bursts copied because SPLICE_PIPES_MAX were busy */
  /* LMTP (lmtp.c) */
  GQueue lmtp_sessions;
  GHashTable *lmtp_by_id; /* session id -> LmtpSession* */
};

struct Proxy {
  Usherd *u;
  Worker **workers;
  guint n_workers;
  Poller *core_poller; /* worker 0's, on the core thread: posts to the core go here */
  GHashTable *routes; /* core thread: request id -> RouteJob* (owned) */
  GMutex lock;        /* guards per_ip, stats, backend_caps, imap_caps and tls_ctx */
  GHashTable *per_ip; /* client IP text -> count */
  GHashTable *backend_caps; /* backend IP text -> the CAPABILITY list of its last greeting */
  char *imap_caps;          /* what every one of them offers, less what usherd says itself */
  GHashTable *registry; /* (worker << 56 | session id) -> ProxySessionInfo*, logged-in sessions */
  guint total;
  guint fd_ceiling; /* the connections the open-files limit leaves room for (fd_ceiling()) */
  gint fd_warned;   /* atomic: "out of file descriptors" was logged */
  ProxyStats stats;
  const UsherLoginHasher *hasher;
  guint refresh_secs;
  char *sieve_caps;      /* the capability lines of a backend's ManageSieve greeting (learnt) */
  char *submission_caps; /* the EHLO keywords of a backend's submission service (learnt) */
  char *lmtp_caps;       /* the LHLO keywords of a backend's LMTP service (learnt), CRLF after each */
  guint16 sieve_port, submission_port;
  guint16 imap_port, pop3_port, lmtp_port; /* [backends] ports as read at start (a reload changes the
                                 * configuration's on the core thread) */
  SSL_CTX *tls_ctx;             /* NULL without tls_cert; swapped under lock by a reload */
  gboolean tls_enabled;         /* tls_ctx != NULL, fixed at start (read without the lock) */
  gint next_request; /* atomic */
  UsherHashFormat *lmtp_user_format; /* [proxy] lmtp_user_format, fixed at start */
  char *recipient_delimiter;         /* [proxy] recipient_delimiter, fixed at start */
  char *lmtp_spool_dir;              /* [proxy] lmtp_spool_dir ("" = none), fixed at start */
  guint64 lmtp_spool_max;            /* [proxy] lmtp_spool_max, fixed at start */
  /* [proxy] auth_mechanisms, fixed at start: a bit per UsherSaslMech offered, and the lists
   * clients are shown (ManageSieve and submission log in with PLAIN or LOGIN only). */
  guint auth_mechs;
  char *auth_imap;        /* "AUTH=PLAIN AUTH=LOGIN" */
  char *auth_names;       /* "PLAIN LOGIN" (POP3 CAPA's SASL line) */
  char *auth_lines;       /* "PLAIN\r\nLOGIN\r\n" (POP3's bare AUTH) */
  char *auth_plain_login; /* "PLAIN LOGIN", "PLAIN", "LOGIN" or "" */
  guint64 hosts_generation; /* core thread: the host table's, as proxy_hosts_check last saw it */
  gboolean freeing;         /* core thread: proxy_free is taking the workers down */
};

/* Adds delta to one of p->stats' fields (under p->lock). */
void proxy_stat_add(Proxy *proxy, guint64 *field, gint64 delta);
/* TRUE if ip lies in one of nets (UsherNet). */
gboolean proxy_in_nets(const GArray *nets, const UsherIp *ip);
/* A socket address as IP text and port ("?" and 0 for anything but IPv4/IPv6). */
void proxy_address_text(const struct sockaddr_storage *ss, char ip[USHER_IP_STRLEN],
                        guint16 *port);
/* Takes a connection slot (max_connections; and one of ip's when ip is not NULL); FALSE (and
 * counted) when none is free. proxy_release gives them back. */
gboolean proxy_admit(Proxy *proxy, gboolean total, const char *ip);
void proxy_release(Proxy *proxy, const char *ip);

/* The core's answer to a lookup made with proxy_route, on the worker that asked. */
typedef void (*ProxyRouteAnswer)(Worker *w, guint64 session, guint64 request,
                                 UsherLoginStatus status, const UsherIp *host);
/* Asks the core for user's backend (as a login would); the answer comes to answer() on this
 * worker with the returned request id, unless proxy_route_cancel is called first. */
guint64 proxy_route(Worker *w, guint64 session, const char *user, ProxyRouteAnswer answer);
void proxy_route_cancel(Worker *w, guint64 request);

/* An EHLO/LHLO answer without its final CRLF: "250-HOST", then one line per keyword of ours,
 * then of *learnt (read under p->lock), then of more (each "KEYWORD\r\n"), the last "250 ". */
char *proxy_ehlo_reply(Proxy *proxy, const char *ours, char *const *learnt, const char *more);
/* Replaces *field (a capability list learnt from a backend, under p->lock) when caps differ. */
void proxy_learn_caps(Proxy *proxy, char **field, const char *caps);

/* lmtp.c: the LMTP proxy on the workers. */
void lmtp_accept(Worker *w, const Listener *l, int fd, const char *ip, guint16 port);
/* A new, nameless spool file in dir (lmtp_spool_dir), or -1 with *error. */
int lmtp_spool_open(const char *dir, GError **error);
/* Timeouts, every tick. */
void lmtp_tick(Worker *w, gint64 now_us);
/* Closes every LMTP session of the worker (it is stopping). */
void lmtp_close_all(Worker *w);

G_END_DECLS

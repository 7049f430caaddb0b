/* proxy.c - worker threads and IMAP/POP3 sessions of usherd's proxy (see proxy.h).
 *
 * Threads: the core thread owns the director; each worker owns its sessions. Worker 0 runs on
 * the core thread itself (its poller is a source of the core's GMainContext), the others on
 * threads of their own. They talk only by calls posted to each other's poller (poller_post,
 * never run inline): a worker asks for a route (user -> backend) with a session id; the core
 * answers with the same id; the core posts kicks to every worker and learns when all are done;
 * workers post the names of users with live sessions for refreshes. A session that is gone when
 * its answer arrives is simply not found. Worker 0's questions and their answers cost no thread
 * wakeup: both run after the batch of events that asked (see poller.h).
 *
 * Memory per session is the struct, the client and backend sockets, and output queues that exist
 * only while bytes wait (released when they drain). Every limit is a constant or a setting:
 * pre-login line and literal sizes (libcore), bad commands, the login timeout, connections in
 * total and per client address, output queued per direction, splice pipes per worker. */
#include "daemon/proxy-private.h"

#include "daemon/poller.h"
#include "daemon/tls.h"
#include "libcore/imap-login.h"
#include "libcore/pop3-login.h"
#include "libcore/proxy-header.h"
#include "libcore/sieve-login.h"
#include "libcore/smtp-cmd.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define ACCEPT_BATCH 64
#define READ_CHUNK 16384
#define OUT_HIGH_WATER (256 * 1024) /* stop reading the other side above this */
#define OUT_MAX (4 * 1024 * 1024)   /* a peer that never reads is dropped */
#define TICK_MS 500
#define BACKEND_CONNECT_TIMEOUT_SECS 10
#define HALF_CLOSE_SECS 30 /* after the client's end, the backend's answers may take this long */
#define BACKEND_LOGIN_TIMEOUT_SECS 30
#define BACKEND_RETRY_DELAY_MS 500
#define BACKEND_LINE_MAX 65536
#define REFRESH_MIN_SECS 30
/* splice(2) on plaintext legs after login: a read of at least SPLICE_MIN bytes moves through a
 * kernel pipe instead of this process's memory. Smaller reads (most IMAP responses) are copied,
 * which keeps the proxy's knowledge of whether the client's stream ends a line (a kick's BYE). */
#define SPLICE_MIN 16384
#define SPLICE_PIPE_SIZE (256 * 1024) /* asked for; the kernel's default (64 KiB) if refused */
#define SPLICE_PIPES_MAX 256          /* per worker, in use at once; more bursts are copied */
#define SPLICE_POOL 16                /* empty pipes a worker keeps for the next burst */
/* Descriptors kept free of proxied connections: ring links, admin and HTTP clients, health
 * probes, the state file, log sockets (the splice pipes are counted apart). */
#define FD_RESERVE 256

typedef struct Session Session;



/* Where a POP3 backend login stands: its greeting, then XCLIENT's answer if it offered XCLIENT,
 * then AUTH's. */
typedef enum {
  POP3_BACKEND_GREETING = 0,
  POP3_BACKEND_XCLIENT,
  POP3_BACKEND_AUTH,
} Pop3BackendStep;

typedef enum {
  S_PROXY_HEADER = 0, /* a trusted load balancer's PROXY header comes first */
  S_PRELOGIN,
  S_ROUTING,
  S_CONNECTING,
  S_BACKEND_LOGIN,
  S_PROXYING,
} SessState;

/* A kernel pipe that carries one direction of one session during a burst; back in the worker's
 * pool when empty, so idle sessions hold none. */
typedef struct {
  int rd, wr;
  gsize held; /* bytes in it, not yet written to the destination */
} Pipe;

/* Where a ManageSieve or submission backend login stands. */
typedef enum {
  SUB_GREETING = 0, /* its greeting (ManageSieve: capability lines, then OK) */
  SUB_EHLO,         /* submission: EHLO's answer */
  SUB_XCLIENT,      /* XCLIENT's answer (submission: a new greeting) */
  SUB_AUTH,         /* the login's answer */
} SubStep;

typedef enum {
  LOGIN_PLAIN_CMD = 0, /* LOGIN user pass */
  LOGIN_SASL,          /* AUTHENTICATE mech ir */
} LoginKind;

struct Session {
  Worker *w;
  guint64 id;
  Proto proto;
  SessState state;
  GList link; /* in w->sessions */
  /* Client */
  int cfd;
  PollerWatch *cwatch;
  char cip[USHER_IP_STRLEN], lip[USHER_IP_STRLEN];
  guint16 cport, lport;
  gboolean tls_listener;  /* accepted on imaps/pop3s */
  SSL *ssl;               /* the client's TLS, NULL while plaintext */
  gboolean tls_handshaking;
  guint32 tls_wants;      /* EPOLLIN/EPOLLOUT the last TLS call is waiting for */
  gboolean tls_wants_for_write; /* ... and that call was a write (else a read or handshake) */
  gboolean tls_kick;      /* an idle callback will read what OpenSSL already decrypted */
  GByteArray *cout; /* to the client */
  gsize cout_off;
  gboolean client_eol; /* the last byte sent to the client ended a line */
  Pipe *cpipe;         /* backend -> client bytes in flight by splice (before cout's) */
  Pipe *bpipe;         /* client -> backend (before bout's) */
  gboolean bulk_to_client, bulk_to_backend; /* that direction carries bulk now: try splice */
  UsherImapReader *reader;   /* IMAP before login */
  UsherPop3Reader *preader;  /* POP3 before login */
  UsherSieveReader *sreader; /* ManageSieve before login */
  UsherSmtpReader *mreader;  /* submission before login */
  char *helo;                /* submission: the client's EHLO name */
  UsherProxyHeader *pheader; /* S_PROXY_HEADER */
  gboolean input_seen;       /* the client has sent something */
  gboolean cin_parked;       /* its reads are off until its login is answered */
  gboolean client_eof;       /* proxying: the client sent its last byte (half-close) */
  gboolean backend_shut;     /* ... and it went on to the backend, whose write side is shut */
  gboolean backend_eof;      /* proxying: the backend closed; what it sent still goes out */
  gboolean bparked;          /* the backend hung up with bytes unread while the client is
                              * behind: out of epoll (a hung-up socket is always ready) */
  guint bad_commands;
  gint64 deadline_us;       /* pre-login / backend timeouts (mono) */
  gint64 login_deadline_us; /* login_timeout after the connection came: a failed login's
                             * client goes on until then, not longer */
  /* The login being routed */
  char *ctag;
  char *user;
  LoginKind kind;
  UsherSaslMech mech;
  char *secret;     /* LOGIN: the password; SASL: the base64 initial response */
  gsize secret_len;
  gboolean sasl_pending; /* AUTHENTICATE without SASL-IR: waiting for the response line */
  gboolean login_step;   /* AUTHENTICATE LOGIN: 0 = name next, 1 = password next */
  guint64 request;
  UsherIp backend;
  gboolean retried;
  gboolean oauth_failed; /* the backend refused the token with a challenge (RFC 7628 3.2.2) */
  guint32 user_hash;
  /* Backend */
  int bfd;
  PollerWatch *bwatch;
  GByteArray *bout; /* to the backend */
  gsize bout_off;
  GString *bline; /* a backend response line being read during the login */
  Pop3BackendStep pop3_step;
  SubStep sub_step;
  gboolean xclient_sent;   /* ManageSieve/submission: XCLIENT went out */
  gboolean backend_xclient; /* the backend offers XCLIENT */
  GString *bcaps;          /* capabilities the backend announced during this login */
  guint reply_lines;       /* submission: lines of the EHLO answer so far */
  gboolean counted;    /* holds a connection slot (max_connections) */
  gboolean registered; /* in the session registry (proxy_list_sessions) */
  gboolean counted_ip; /* holds one of cip's slots (max_connections_per_ip) */
};



/* A session named from elsewhere (the core thread, a timer): found again by id on its worker,
 * or gone meanwhile. */
typedef struct {
  Worker *w;
  guint64 session;
  GSource *source; /* session_later's: on w->later until it has run or is destroyed */
  GList link;
} SessionRef;

/* On the session's worker thread only. */
static Session *
session_ref_get(const SessionRef *ref)
{
  return g_hash_table_lookup(ref->w->by_id, &ref->session);
}

static void
session_later_done(gpointer data)
{
  SessionRef *ref = data;
  g_queue_unlink(&ref->w->later, &ref->link);
  g_free(ref);
}

/* Calls fn with a SessionRef on the session's worker after delay_ms (0: as soon as it is idle).
 * Worker 0 shares the core's context, which runs on after the proxy is freed: worker_free
 * destroys what is still pending. */
static void
session_later(Session *s, guint delay_ms, GSourceFunc fn)
{
  SessionRef *ref = g_new0(SessionRef, 1);
  ref->w = s->w;
  ref->session = s->id;
  ref->link.data = ref;
  g_queue_push_tail_link(&s->w->later, &ref->link);
  ref->source = delay_ms == 0 ? g_idle_source_new() : g_timeout_source_new(delay_ms);
  g_source_set_callback(ref->source, fn, ref, session_later_done);
  g_source_attach(ref->source, s->w->context);
  g_source_unref(ref->source);
}

static void session_close(Session *s, const char *why);
static void learn_capabilities(Session *s, const char *line);
static void session_flush_client(Session *s);
static void session_flush_backend(Session *s);

void
proxy_stat_add(Proxy *p, guint64 *field, gint64 delta)
{
  g_mutex_lock(&p->lock);
  *field += (guint64)delta;
  g_mutex_unlock(&p->lock);
}

gboolean
proxy_in_nets(const GArray *nets, const UsherIp *ip)
{
  for (guint i = 0; i < nets->len; i++)
    if (usher_net_contains(&g_array_index(nets, UsherNet, i), ip))
      return TRUE;
  return FALSE;
}

void
proxy_get_stats(Proxy *p, ProxyStats *out)
{
  g_mutex_lock(&p->lock);
  *out = p->stats;
  g_mutex_unlock(&p->lock);
}

/* ---- Output ------------------------------------------------------------------------------------- */

static void tls_kick(Session *s);
static void on_backend(gpointer data, guint32 events);

/* Bytes waiting for the backend (a pipe with bytes in it counts as full: its source is read
 * again once it has drained). */
static gsize
backend_queued(const Session *s)
{
  gsize bq = s->bout != NULL ? s->bout->len - s->bout_off : 0;
  return s->bpipe != NULL && s->bpipe->held > 0 ? bq + OUT_HIGH_WATER : bq;
}

static void
update_interest(Session *s)
{
  Poller *poller = s->w->poller;
  gsize cq = s->cout != NULL ? s->cout->len - s->cout_off : 0;
  gsize bq = backend_queued(s);
  if (s->cpipe != NULL && s->cpipe->held > 0)
    cq += OUT_HIGH_WATER;
  if (s->cwatch != NULL) {
    guint32 ev = 0;
    /* Read the client unless the backend is behind (backpressure) or gone, or while routing. */
    if (s->state != S_PROXYING || (bq < OUT_HIGH_WATER && !s->backend_eof))
      ev |= EPOLLIN;
    if (s->state == S_ROUTING || s->state == S_CONNECTING || s->state == S_BACKEND_LOGIN) {
      /* The client waits for its login's answer. Its reads are parked only once it does send
       * something meanwhile (rare): two epoll_ctl calls fewer per login. */
      ev &= ~(guint32)EPOLLIN;
      if (!s->cin_parked)
        ev |= poller_events(s->cwatch) & EPOLLIN;
    } else
      s->cin_parked = FALSE;
    if (cq > 0)
      ev |= EPOLLOUT;
    if (s->ssl != NULL) {
      /* A read's wait counts only while the client is to be read (backpressure: a readable
       * socket nobody reads would wake the loop for ever); a write's or the handshake's always. */
      gboolean reading = (ev & EPOLLIN) != 0;
      if (s->tls_handshaking)
        ev = 0;
      if (s->tls_handshaking || s->tls_wants_for_write || reading)
        ev |= s->tls_wants;
      if ((ev & EPOLLIN) && !s->client_eof && !s->tls_handshaking && SSL_pending(s->ssl) > 0)
        tls_kick(s); /* decrypted bytes wait in OpenSSL: epoll will not say so */
    }
    if (s->client_eof)
      ev &= ~(guint32)EPOLLIN; /* at its end, a socket would stay readable for ever */
    poller_modify(poller, s->cwatch, ev);
  }
  if (s->bparked && cq < OUT_HIGH_WATER) {
    s->bparked = FALSE;
    s->bwatch = poller_add(poller, s->bfd, EPOLLIN, on_backend, s);
  }
  if (s->bwatch != NULL) {
    guint32 ev = 0;
    if (s->state == S_CONNECTING)
      ev = EPOLLOUT;
    else {
      if (cq < OUT_HIGH_WATER)
        ev |= EPOLLIN;
      if (bq > 0)
        ev |= EPOLLOUT;
    }
    poller_modify(poller, s->bwatch, ev);
  }
}

static void
queue(GByteArray **buf, gsize *off, const void *data, gsize len)
{
  if (*buf == NULL)
    *buf = g_byte_array_sized_new((guint)MAX(len, 512));
  else if (*off > 0 && *off == (*buf)->len) {
    g_byte_array_set_size(*buf, 0);
    *off = 0;
  }
  g_byte_array_append(*buf, data, (guint)len);
}

static void
to_client(Session *s, const char *text, gssize len)
{
  gsize n = len < 0 ? strlen(text) : (gsize)len;
  if (n == 0)
    return;
  queue(&s->cout, &s->cout_off, text, n);
  s->client_eol = text[n - 1] == '\n';
}

static G_GNUC_PRINTF(2, 3) void to_client_fmt(Session *s, const char *fmt, ...)
{
  va_list args;
  va_start(args, fmt);
  g_autofree char *text = g_strdup_vprintf(fmt, args);
  va_end(args);
  to_client(s, text, -1);
}

static void
to_backend(Session *s, const void *data, gsize len)
{
  queue(&s->bout, &s->bout_off, data, len);
}

/* A piece of a line for the backend. */
typedef struct {
  const void *data;
  gsize len;
} Piece;

#define PIECE(str) ((Piece){(str), strlen(str)})

/* Queues the pieces, one of which holds a password, as one line: it is put together in a buffer
 * of its exact size (a printf's own buffers, or a growing string's old blocks, would be freed
 * holding it) and wiped once queued. */
static void
to_backend_secret(Session *s, const Piece *pieces, guint n)
{
  gsize total = 0;
  for (guint i = 0; i < n; i++)
    total += pieces[i].len;
  guint8 *line = g_malloc(total);
  gsize at = 0;
  for (guint i = 0; i < n; i++) {
    memcpy(line + at, pieces[i].data, pieces[i].len);
    at += pieces[i].len;
  }
  to_backend(s, line, total);
  explicit_bzero(line, total);
  g_free(line);
}

static G_GNUC_PRINTF(2, 3) void to_backend_fmt(Session *s, const char *fmt, ...)
{
  va_list args;
  va_start(args, fmt);
  g_autofree char *text = g_strdup_vprintf(fmt, args);
  va_end(args);
  to_backend(s, text, strlen(text));
}

/* The client's pre-login reader, by protocol. */
static void
new_reader(Session *s)
{
  if (s->proto == PROTO_POP3)
    s->preader = usher_pop3_reader_new();
  else if (s->proto == PROTO_SIEVE)
    s->sreader = usher_sieve_reader_new();
  else if (s->proto == PROTO_SUBMISSION) {
    s->mreader = usher_smtp_reader_new(USHER_SMTP_LINE_MAX_DEFAULT);
    usher_smtp_reader_set_wipe(s->mreader, TRUE);
  } else
    s->reader = usher_imap_reader_new();
}

static void
free_readers(Session *s)
{
  g_clear_pointer(&s->reader, usher_imap_reader_free);
  g_clear_pointer(&s->preader, usher_pop3_reader_free);
  g_clear_pointer(&s->sreader, usher_sieve_reader_free);
  g_clear_pointer(&s->mreader, usher_smtp_reader_free);
}

/* What the client sent after its last complete command (pipelined). */
static const guint8 *
client_pending(Session *s, gsize *len_out)
{
  *len_out = 0;
  if (s->preader != NULL)
    return usher_pop3_reader_peek_pending(s->preader, len_out);
  if (s->sreader != NULL)
    return usher_sieve_reader_peek_pending(s->sreader, len_out);
  if (s->mreader != NULL)
    return usher_smtp_reader_peek_pending(s->mreader, len_out);
  if (s->reader != NULL)
    return usher_imap_reader_peek_pending(s->reader, len_out);
  return NULL;
}

static char *sieve_capabilities(Session *s, const char *ok_text);
static void sieve_prelogin_input(Session *s);
static void submission_prelogin_input(Session *s);
static gboolean sieve_backend_line(Session *s, const char *line);
static gboolean submission_backend_line(Session *s, const char *line);

/* ---- What the client is told, in its protocol ------------------------------------------------- */

/* The last words before closing: IMAP "* BYE"; POP3 "-ERR" (POP3 has no unsolicited response; a
 * client waiting for an answer reads it as one). */
static void
say_bye(Session *s, const char *text)
{
  if (s->proto == PROTO_POP3)
    to_client_fmt(s, "-ERR %s\r\n", text);
  else if (s->proto == PROTO_SIEVE)
    to_client_fmt(s, "BYE \"%s\"\r\n", text);
  else if (s->proto == PROTO_SUBMISSION)
    to_client_fmt(s, "421 4.3.2 %s\r\n", text);
  else
    to_client_fmt(s, "* BYE %s\r\n", text);
}

/* The login cannot go on now; the client may try again later. */
static void
reply_unavailable(Session *s, const char *text)
{
  if (s->proto == PROTO_POP3)
    to_client_fmt(s, "-ERR [SYS/TEMP] %s\r\n", text);
  else if (s->proto == PROTO_SIEVE)
    to_client_fmt(s, "NO (TRYLATER) \"%s\"\r\n", text);
  else if (s->proto == PROTO_SUBMISSION)
    to_client_fmt(s, "454 4.7.0 %s\r\n", text);
  else
    to_client_fmt(s, "%s NO [UNAVAILABLE] %s\r\n", s->ctag, text);
}

/* The client's authentication exchange cannot be used (bad SASL data), or it aborted it. */
static void
reply_auth_error(Session *s, gboolean aborted, const char *text)
{
  if (s->proto == PROTO_POP3)
    to_client_fmt(s, "-ERR %s\r\n", text);
  else if (s->proto == PROTO_SIEVE)
    to_client_fmt(s, "NO \"%s\"\r\n", text);
  else if (s->proto == PROTO_SUBMISSION)
    to_client_fmt(s, aborted ? "501 5.0.0 %s\r\n" : "535 5.7.8 %s\r\n", text);
  else if (aborted)
    to_client_fmt(s, "%s BAD %s\r\n", s->ctag, text);
  else
    to_client_fmt(s, "%s BAD [AUTHENTICATIONFAILED] %s\r\n", s->ctag, text);
}

/* The next client line is a SASL response, not a command. */
static void
client_expect_sasl(Session *s)
{
  /* ManageSieve and submission readers hand out lines: sasl_pending says what they are. */
  if (s->proto == PROTO_POP3)
    usher_pop3_reader_expect_sasl(s->preader);
  else if (s->proto == PROTO_IMAP)
    usher_imap_reader_expect_sasl(s->reader);
}

/* A SASL challenge (base64, "" for none) in the client's protocol. */
static void
sasl_challenge(Session *s, const char *b64)
{
  if (s->proto == PROTO_SIEVE)
    to_client_fmt(s, "\"%s\"\r\n", b64);
  else if (s->proto == PROTO_SUBMISSION)
    to_client_fmt(s, "334 %s\r\n", b64);
  else
    to_client_fmt(s, "+ %s\r\n", b64);
}

/* What a socket call returned, in the terms below: n >= 0 as is, -1 for "nothing now", -2 for an
 * error (errno says which). */
static gssize
sock_result(ssize_t n)
{
  if (n >= 0)
    return n;
  return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? -1 : -2;
}

/* What SSL_read_ex/SSL_write_ex (`ok`, `n`) came to, in the same terms; TLS-level waits set
 * tls_wants. A clean TLS close is 0 for a read and an error for a write. */
static gssize
tls_result(Session *s, int ok, size_t n, gboolean reading)
{
  s->tls_wants_for_write = !reading;
  if (ok == 1) {
    s->tls_wants = 0;
    return (gssize)n;
  }
  switch (SSL_get_error(s->ssl, 0)) {
  case SSL_ERROR_WANT_READ:
    s->tls_wants = EPOLLIN;
    return -1;
  case SSL_ERROR_WANT_WRITE:
    s->tls_wants = EPOLLOUT;
    return -1;
  case SSL_ERROR_ZERO_RETURN:
    if (reading)
      return 0;
    /* fall through */
  default:
    errno = EPROTO;
    return -2;
  }
}

/* Sends to the client: bytes written, -1 when the socket (or TLS) cannot take any now, -2 on an
 * error (errno set; EPROTO for a TLS failure). */
static gssize
client_send(Session *s, const void *data, gsize len)
{
  if (s->ssl == NULL)
    return sock_result(send(s->cfd, data, len, MSG_NOSIGNAL));
  size_t done = 0;
  ERR_clear_error();
  int ok = SSL_write_ex(s->ssl, data, len, &done);
  return tls_result(s, ok, done, FALSE);
}

/* Reads from the client: bytes read, 0 at its end, -1 when nothing is there now, -2 on an error
 * (errno set; EPROTO for a TLS failure). */
static gssize
client_recv(Session *s, void *buf, gsize len)
{
  if (s->ssl == NULL)
    return sock_result(recv(s->cfd, buf, len, 0));
  size_t got = 0;
  ERR_clear_error();
  int ok = SSL_read_ex(s->ssl, buf, len, &got);
  return tls_result(s, ok, got, TRUE);
}

/* ---- splice(2) pipes ------------------------------------------------------------------------------ */

static Pipe *
pipe_take(Worker *w)
{
  if (w->pipes_busy >= SPLICE_PIPES_MAX) {
    w->splice_refused++;
    return NULL;
  }
  Pipe *p = w->free_pipes->len > 0 ? g_ptr_array_steal_index_fast(w->free_pipes,
                                                                   w->free_pipes->len - 1)
                                   : NULL;
  if (p == NULL) {
    int fds[2];
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0)
      return NULL; /* out of descriptors: this burst is copied */
    (void)fcntl(fds[1], F_SETPIPE_SZ, SPLICE_PIPE_SIZE);
    p = g_new0(Pipe, 1);
    p->rd = fds[0];
    p->wr = fds[1];
  }
  w->pipes_busy++;
  return p;
}

static void
pipe_free(gpointer data)
{
  Pipe *p = data;
  close(p->rd);
  close(p->wr);
  g_free(p);
}

/* A session gives its pipe back: to the pool when empty, else closed (what it held is lost with
 * the session that is closing). */
static void
pipe_give(Worker *w, Pipe **pp)
{
  Pipe *p = *pp;
  if (p == NULL)
    return;
  *pp = NULL;
  w->pipes_busy--;
  if (p->held == 0 && w->free_pipes->len < SPLICE_POOL)
    g_ptr_array_add(w->free_pipes, p);
  else
    pipe_free(p);
}

/* Writes what the pipe holds to fd: 0 when it is empty, -1 when fd takes no more now, -2 on an
 * error (errno set). */
static int
pipe_drain(Pipe *p, int fd)
{
  while (p->held > 0) {
    ssize_t n = splice(p->rd, NULL, fd, NULL, p->held, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return -1;
    if (n <= 0) {
      if (n == 0)
        errno = EPIPE;
      return -2;
    }
    p->held -= (gsize)n;
  }
  return 0;
}

/* Writes what the socket takes; FALSE if the session was closed. */
static gboolean
flush_fd(Session *s, gboolean client, GByteArray **buf, gsize *off)
{
  const char *side = client ? "client" : "backend";
  if (client && s->tls_handshaking)
    return TRUE; /* the greeting waits for the handshake */
  Pipe **pp = client ? &s->cpipe : &s->bpipe;
  if (*pp != NULL) {
    /* Spliced bytes came before anything queued in buf. */
    int r = pipe_drain(*pp, client ? s->cfd : s->bfd);
    if (r == -2) {
      g_autofree char *why = g_strdup_printf("%s write failed: %s", side, g_strerror(errno));
      session_close(s, why);
      return FALSE;
    }
    if (r == -1)
      return TRUE;
    pipe_give(s->w, pp);
  }
  while (*buf != NULL && *off < (*buf)->len) {
    gssize n;
    if (client) {
      n = client_send(s, (*buf)->data + *off, (*buf)->len - *off);
    } else {
      n = sock_result(send(s->bfd, (*buf)->data + *off, (*buf)->len - *off, MSG_NOSIGNAL));
    }
    if (n == -1)
      break;
    if (n < 0) {
      g_autofree char *why = g_strdup_printf("%s write failed: %s", side, g_strerror(errno));
      session_close(s, why);
      return FALSE;
    }
    *off += (gsize)n;
  }
  if (*buf != NULL && *off == (*buf)->len) {
    /* Idle sessions hold no output buffer at all. Before the login is through, what went to the
     * backend held the client's password: not left behind in freed memory. */
    if (!client && s->state != S_PROXYING)
      memset((*buf)->data, 0, (*buf)->len);
    g_clear_pointer(buf, g_byte_array_unref);
    *off = 0;
  } else if (*buf != NULL && (*buf)->len - *off > OUT_MAX) {
    g_autofree char *why = g_strdup_printf("%s does not read its data", side);
    session_close(s, why);
    return FALSE;
  }
  return TRUE;
}

/* Bytes for the client still in usherd (queued or in the splice pipe). */
static gboolean
client_output_pending(const Session *s)
{
  return s->cout != NULL || (s->cpipe != NULL && s->cpipe->held > 0);
}

static void
session_flush_client(Session *s)
{
  if (!flush_fd(s, TRUE, &s->cout, &s->cout_off))
    return;
  if (s->backend_eof && !client_output_pending(s)) {
    session_close(s, "backend closed");
    return;
  }
  update_interest(s);
}

static void
session_flush_backend(Session *s)
{
  if (s->bfd < 0 || !flush_fd(s, FALSE, &s->bout, &s->bout_off))
    return;
  if (s->client_eof && !s->backend_shut && s->bout == NULL &&
      (s->bpipe == NULL || s->bpipe->held == 0)) {
    (void)shutdown(s->bfd, SHUT_WR); /* the backend reads its end, answers, and closes */
    s->backend_shut = TRUE;
  }
  update_interest(s);
}

/* ---- Life cycle ------------------------------------------------------------------------------------ */

/* Gives back the session's connection slots (admit). */
static void
forget_ip(Session *s)
{
  if (!s->counted && !s->counted_ip)
    return;
  Proxy *p = s->w->proxy;
  g_mutex_lock(&p->lock);
  if (s->counted_ip) {
    guint n = GPOINTER_TO_UINT(g_hash_table_lookup(p->per_ip, s->cip));
    if (n <= 1)
      g_hash_table_remove(p->per_ip, s->cip);
    else
      g_hash_table_insert(p->per_ip, g_strdup(s->cip), GUINT_TO_POINTER(n - 1));
  }
  if (s->counted) {
    p->total--;
    p->stats.sessions_now--;
    if (s->state == S_PROXYING)
      p->stats.proxying_now--;
  }
  g_mutex_unlock(&p->lock);
  s->counted = s->counted_ip = FALSE;
}

static void
backend_close(Session *s)
{
  if (s->bwatch != NULL) {
    poller_remove_closing(s->w->poller, s->bwatch); /* the watch exists only with the fd */
    s->bwatch = NULL;
  }
  if (s->bfd >= 0) {
    close(s->bfd);
    s->bfd = -1;
  }
  s->bparked = FALSE;
  if (s->bout != NULL && s->state != S_PROXYING)
    memset(s->bout->data, 0, s->bout->len); /* it may hold the login's password */
  g_clear_pointer(&s->bout, g_byte_array_unref);
  s->bout_off = 0;
  if (s->bline != NULL) {
    g_string_free(s->bline, TRUE);
    s->bline = NULL;
  }
}

static guint64
registry_key(const Session *s)
{
  return ((guint64)s->w->index << 56) | s->id;
}

static void
session_info_free(gpointer data)
{
  ProxySessionInfo *i = data;
  g_free(i->user);
  g_free(i->client);
  g_free(i->backend);
  g_free(i);
}

/* The session is logged in: usherctl sessions and /metrics see it from now on. */
static void
registry_add(Session *s)
{
  Proxy *p = s->w->proxy;
  ProxySessionInfo *i = g_new0(ProxySessionInfo, 1);
  char ip[USHER_IP_STRLEN];
  i->user = g_strdup(s->user);
  i->client = strchr(s->cip, ':') != NULL ? g_strdup_printf("[%s]:%u", s->cip, s->cport)
                                          : g_strdup_printf("%s:%u", s->cip, s->cport);
  i->backend = g_strdup(usher_ip_to_string(&s->backend, ip));
  i->protocol = s->proto == PROTO_POP3         ? "pop3"
                : s->proto == PROTO_SIEVE      ? "sieve"
                : s->proto == PROTO_SUBMISSION ? "submission"
                                               : "imap";
  i->tls = s->ssl != NULL;
  i->since = g_get_real_time() / G_USEC_PER_SEC;
  guint64 key = registry_key(s);
  g_mutex_lock(&p->lock);
  g_hash_table_insert(p->registry, g_memdup2(&key, sizeof(key)), i);
  g_mutex_unlock(&p->lock);
  s->registered = TRUE;
}

static void
registry_remove(Session *s)
{
  if (!s->registered)
    return;
  Proxy *p = s->w->proxy;
  guint64 key = registry_key(s);
  g_mutex_lock(&p->lock);
  g_hash_table_remove(p->registry, &key);
  g_mutex_unlock(&p->lock);
  s->registered = FALSE;
}

static gint
session_info_cmp(gconstpointer a, gconstpointer b)
{
  const ProxySessionInfo *x = *(ProxySessionInfo *const *)a, *y = *(ProxySessionInfo *const *)b;
  if (x->since != y->since)
    return x->since < y->since ? -1 : 1;
  int c = strcmp(x->user, y->user);
  return c != 0 ? c : strcmp(x->client, y->client);
}

GPtrArray *
proxy_list_sessions(Proxy *p, const char *user, const UsherIp *backend)
{
  GPtrArray *out = g_ptr_array_new_with_free_func(session_info_free);
  char want[USHER_IP_STRLEN] = "";
  if (backend != NULL)
    usher_ip_to_string(backend, want);
  g_mutex_lock(&p->lock);
  GHashTableIter it;
  gpointer v;
  g_hash_table_iter_init(&it, p->registry);
  while (g_hash_table_iter_next(&it, NULL, &v)) {
    const ProxySessionInfo *i = v;
    if ((user != NULL && strcmp(i->user, user) != 0) ||
        (backend != NULL && strcmp(i->backend, want) != 0))
      continue;
    ProxySessionInfo *copy = g_new0(ProxySessionInfo, 1);
    *copy = *i;
    copy->user = g_strdup(i->user);
    copy->client = g_strdup(i->client);
    copy->backend = g_strdup(i->backend);
    g_ptr_array_add(out, copy);
  }
  g_mutex_unlock(&p->lock);
  g_ptr_array_sort(out, session_info_cmp);
  return out;
}

GHashTable *
proxy_sessions_per_backend(Proxy *p)
{
  GHashTable *out = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  g_mutex_lock(&p->lock);
  GHashTableIter it;
  gpointer v;
  g_hash_table_iter_init(&it, p->registry);
  while (g_hash_table_iter_next(&it, NULL, &v)) {
    const ProxySessionInfo *i = v;
    guint n = GPOINTER_TO_UINT(g_hash_table_lookup(out, i->backend));
    g_hash_table_insert(out, g_strdup(i->backend), GUINT_TO_POINTER(n + 1));
  }
  g_mutex_unlock(&p->lock);
  return out;
}

static void
forget_secret(Session *s)
{
  if (s->secret != NULL) {
    memset(s->secret, 0, s->secret_len); /* never left behind in freed memory */
    g_free(s->secret);
    s->secret = NULL;
  }
}

static void
forget_login(Session *s)
{
  forget_secret(s);
  g_clear_pointer(&s->user, g_free);
  g_clear_pointer(&s->ctag, g_free);
}

static void
session_close(Session *s, const char *why)
{
  Worker *w = s->w;
  g_debug("session %u/%" G_GUINT64_FORMAT " from %s:%u closed: %s", w->index, s->id, s->cip,
          s->cport, why);
  if (s->state == S_ROUTING)
    proxy_route_cancel(w, s->request);
  registry_remove(s);
  pipe_give(w, &s->cpipe);
  pipe_give(w, &s->bpipe);
  backend_close(s);
  if (s->cwatch != NULL)
    poller_remove_closing(w->poller, s->cwatch);
  if (s->ssl != NULL) {
    if (!s->tls_handshaking)
      (void)SSL_shutdown(s->ssl); /* a close_notify if the socket takes it; no waiting */
    SSL_free(s->ssl);
    ERR_clear_error();
  }
  close(s->cfd);
  forget_ip(s);
  forget_login(s);
  g_clear_pointer(&s->cout, g_byte_array_unref);
  free_readers(s);
  g_clear_pointer(&s->helo, g_free);
  if (s->bcaps != NULL)
    g_string_free(s->bcaps, TRUE);
  g_clear_pointer(&s->pheader, usher_proxy_header_free);
  g_queue_unlink(&w->sessions, &s->link);
  g_hash_table_remove(w->by_id, &s->id);
  g_free(s);
}

/* Sends what is queued, then closes (best effort: a client that does not read loses it). */
static void
session_end(Session *s, const char *why)
{
  if (s->cout != NULL || s->cpipe != NULL) {
    (void)flush_fd(s, TRUE, &s->cout, &s->cout_off);
    /* flush_fd may have closed it: only look s up through the id below. */
  }
  guint64 id = s->id;
  Worker *w = s->w;
  if ((s = g_hash_table_lookup(w->by_id, &id)) != NULL)
    session_close(s, why);
}

/* ---- Routing (worker -> core -> worker) ---------------------------------------------------------- */

/* One lookup: made on a worker, kept in p->routes on the core thread while the core works on it,
 * then sent back to the worker with the answer. */
typedef struct {
  Proxy *proxy;
  Worker *w;
  guint64 session;
  ProxyRouteAnswer answer;
  char *user;
  /* answer */
  guint64 request;
  UsherLoginStatus status;
  UsherIp host;
} RouteJob;

static void
route_job_free(gpointer data)
{
  RouteJob *j = data;
  g_free(j->user);
  g_free(j);
}

static void
route_answer_on_worker(gpointer data)
{
  RouteJob *j = data;
  j->answer(j->w, j->session, j->request, j->status, &j->host);
  route_job_free(j);
}

static void
route_on_core(gpointer data)
{
  RouteJob *j = data;
  Usherd *u = j->proxy->u;
  g_hash_table_insert(j->proxy->routes, &j->request, j);
  if (!usher_director_login_request(u->director, usherd_now(), j->request, j->user, NULL))
    g_assert_not_reached(); /* proxy ids are never reused */
  usherd_core_after_call(u);
}

gboolean
proxy_owns_request(Proxy *p, guint64 request)
{
  return p != NULL && g_hash_table_contains(p->routes, &request);
}

void
proxy_login_result(Proxy *p, const UsherEffect *e)
{
  RouteJob *j = NULL;
  if (!g_hash_table_steal_extended(p->routes, &e->login.request, NULL, (gpointer *)&j))
    return;
  j->status = e->login.status;
  j->host = e->login.host;
  poller_post(j->w->poller, route_answer_on_worker, j, route_job_free);
}

guint64
proxy_route(Worker *w, guint64 session, const char *user, ProxyRouteAnswer answer)
{
  Proxy *p = w->proxy;
  RouteJob *j = g_new0(RouteJob, 1);
  j->proxy = p;
  j->w = w;
  j->session = session;
  j->answer = answer;
  j->user = g_strdup(user);
  /* Request ids of the proxy live above 2^62, apart from the HTTP lookups' (u->next_request). */
  j->request = (G_GUINT64_CONSTANT(1) << 62) | (guint64)g_atomic_int_add(&p->next_request, 1);
  guint64 request = j->request;
  poller_post(p->core_poller, route_on_core, j, route_job_free);
  return request;
}

typedef struct {
  Proxy *proxy;
  guint64 request;
} CancelJob;

static void
cancel_on_core(gpointer data)
{
  CancelJob *j = data;
  Usherd *u = j->proxy->u;
  if (g_hash_table_remove(j->proxy->routes, &j->request)) {
    usher_director_login_cancel(u->director, usherd_now(), j->request);
    usherd_core_after_call(u);
  }
  g_free(j);
}

void
proxy_route_cancel(Worker *w, guint64 request)
{
  CancelJob *j = g_new0(CancelJob, 1);
  j->proxy = w->proxy;
  j->request = request;
  poller_post(w->proxy->core_poller, cancel_on_core, j, g_free);
}

static void backend_connect(Session *s);
static void client_prelogin_input(Session *s);

/* The login ended without a session (refused, or no backend to be had): the client may try
 * again, and the commands it pipelined behind the login are read now (they sat in its reader
 * while the login was out, and no new byte may ever come to wake it). May free the session. */
static void
back_to_prelogin(Session *s)
{
  forget_login(s);
  s->state = S_PRELOGIN;
  s->deadline_us = s->login_deadline_us; /* guesses end with login_timeout, as commands do */
  Worker *w = s->w;
  guint64 id = s->id;
  client_prelogin_input(s);
  if ((s = g_hash_table_lookup(w->by_id, &id)) != NULL)
    session_flush_client(s);
}

static void
login_route_answer(Worker *w, guint64 session, guint64 request, UsherLoginStatus status,
                   const UsherIp *host)
{
  Session *s = g_hash_table_lookup(w->by_id, &session);
  if (s == NULL || s->state != S_ROUTING || s->request != request)
    return; /* the client went away meanwhile */
  if (status != USHER_LOGIN_OK) {
    proxy_stat_add(w->proxy, &w->proxy->stats.backend_unavailable, 1);
    reply_unavailable(s, "No backend available for you right now, try again later");
    back_to_prelogin(s);
    return;
  }
  s->backend = *host;
  backend_connect(s);
}

/* Asks the core for the user's backend. The request id is made on the core thread; the session
 * keeps the one the answer carries (see route_answer_on_worker). */
static void
session_route(Session *s)
{
  Proxy *p = s->w->proxy;
  s->state = S_ROUTING;
  s->retried = FALSE; /* each login has its one retry */
  s->user_hash = usher_login_hasher_hash(p->hasher, s->user, -1);
  s->request = proxy_route(s->w, s->id, s->user, login_route_answer);
  update_interest(s);
}

/* ---- The backend ------------------------------------------------------------------------------------ */

static gboolean
retry_connect(gpointer data)
{
  Session *s = session_ref_get(data);
  if (s != NULL && s->state == S_CONNECTING && s->bfd < 0)
    backend_connect(s);
  return G_SOURCE_REMOVE;
}

/* The backend cannot be reached: retry once on the same backend (never another one: that would
 * break the one-backend rule), then tell the client to come back later. */
static void
backend_failed(Session *s, const char *why)
{
  char ip[USHER_IP_STRLEN];
  g_message("backend %s unavailable for %s (session from %s:%u): %s",
            usher_ip_to_string(&s->backend, ip), s->user, s->cip, s->cport, why);
  backend_close(s);
  if (!s->retried) {
    s->retried = TRUE;
    s->state = S_CONNECTING;
    /* The timeout that may have brought us here is not the retry's (backend_connect sets it). */
    s->deadline_us = g_get_monotonic_time() +
                     (gint64)BACKEND_RETRY_DELAY_MS * 1000 +
                     BACKEND_CONNECT_TIMEOUT_SECS * G_USEC_PER_SEC;
    session_later(s, BACKEND_RETRY_DELAY_MS, retry_connect);
    update_interest(s);
    return;
  }
  proxy_stat_add(s->w->proxy, &s->w->proxy->stats.backend_unavailable, 1);
  reply_unavailable(s, "Your mail server is not available, try again later");
  back_to_prelogin(s);
}

static void
backend_connect(Session *s)
{
  Proxy *p = s->w->proxy;
  s->state = S_CONNECTING;
  s->deadline_us = g_get_monotonic_time() + BACKEND_CONNECT_TIMEOUT_SECS * G_USEC_PER_SEC;
  g_autoptr(GSocketAddress) addr =
    usherd_gaddress_from_ip(&s->backend, s->proto == PROTO_POP3         ? p->pop3_port
                                         : s->proto == PROTO_SIEVE      ? p->sieve_port
                                         : s->proto == PROTO_SUBMISSION ? p->submission_port
                                                                        : p->imap_port);
  struct sockaddr_storage ss;
  gsize sslen = g_socket_address_get_native_size(addr);
  g_socket_address_to_native(addr, &ss, sizeof(ss), NULL);
  s->bfd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (s->bfd < 0) {
    backend_failed(s, g_strerror(errno));
    return;
  }
  int one = 1;
  setsockopt(s->bfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (connect(s->bfd, (struct sockaddr *)&ss, (socklen_t)sslen) != 0 && errno != EINPROGRESS) {
    backend_failed(s, g_strerror(errno));
    return;
  }
  s->bwatch = poller_add(s->w->poller, s->bfd, EPOLLOUT, on_backend, s);
}

/* The IMAP login at the backend, pipelined: ID with the client's address (the values are
 * addresses and numbers, safe in quoted strings), then LOGIN or AUTHENTICATE. */
static void
send_backend_login(Session *s)
{
  to_backend_fmt(s,
                 "U1 ID (\"x-originating-ip\" \"%s\" \"x-originating-port\" \"%u\" "
                 "\"x-connected-ip\" \"%s\" \"x-connected-port\" \"%u\" \"x-session-id\" "
                 "\"usher-%u-%" G_GUINT64_FORMAT "\")\r\n",
                 s->cip, s->cport, s->lip, s->lport, s->w->index, s->id);
  if (s->kind == LOGIN_PLAIN_CMD) {
    /* LITERAL+ (Dovecot has it): any bytes, no round trip. */
    char head[48], mid[32];
    g_snprintf(head, sizeof(head), "U2 LOGIN {%zu+}\r\n", strlen(s->user));
    g_snprintf(mid, sizeof(mid), " {%zu+}\r\n", s->secret_len);
    Piece line[] = {PIECE(head), PIECE(s->user), PIECE(mid), {s->secret, s->secret_len},
                    PIECE("\r\n")};
    to_backend_secret(s, line, G_N_ELEMENTS(line));
  } else {
    Piece line[] = {PIECE("U2 AUTHENTICATE "), PIECE(usher_sasl_mech_name(s->mech)), PIECE(" "),
                    PIECE(s->secret_len > 0 ? s->secret : "="), PIECE("\r\n")};
    to_backend_secret(s, line, G_N_ELEMENTS(line));
  }
}

/* The backend accepted the login: `client_text` (its answer, in the client's protocol) goes to
 * the client, and from now on bytes flow both ways. */
static void
login_accepted(Session *s, const char *client_text)
{
  Proxy *p = s->w->proxy;
  to_client_fmt(s, "%s\r\n", client_text);
  s->state = S_PROXYING;
  proxy_stat_add(p, &p->stats.logins_ok, 1);
  proxy_stat_add(p, &p->stats.proxying_now, 1);
  registry_add(s);
  forget_secret(s);
  g_clear_pointer(&s->ctag, g_free);
  /* Commands the client pipelined behind its login belong to the backend now. */
  gsize pending = 0;
  const guint8 *rest = client_pending(s, &pending);
  if (pending > 0)
    to_backend(s, rest, pending);
  free_readers(s);
  /* on_backend sends both queues when the backend's lines are read. */
}

/* The backend refused the login (a wrong password, usually) and said why in `client_text`; so
 * does the client, which may try again. Always leaves the login conversation: FALSE. */
static gboolean
login_refused(Session *s, const char *client_text)
{
  Proxy *p = s->w->proxy;
  proxy_stat_add(p, &p->stats.logins_failed, 1);
  to_client_fmt(s, "%s\r\n", client_text);
  backend_close(s);
  back_to_prelogin(s);
  return FALSE;
}

/* A continuation from the backend during the login. The one that an OAuth mechanism asks for
 * is its failure (RFC 7628 3.2.2; Dovecot uses it for XOAUTH2 too): the error is in the
 * challenge and the server waits for the client's dummy answer before its NO, which is relayed
 * like any refusal (so the client refreshes its token instead of being told the server is
 * unavailable). Any other is a backend usherd cannot log in to. TRUE if answered. */
static gboolean
oauth_failure_answered(Session *s)
{
  gboolean oauth = s->kind != LOGIN_PLAIN_CMD &&
                   (s->mech == USHER_SASL_OAUTHBEARER || s->mech == USHER_SASL_XOAUTH2);
  if (!oauth || s->oauth_failed)
    return FALSE;
  s->oauth_failed = TRUE;
  /* OAUTHBEARER's dummy is a single 0x01 byte; XOAUTH2's an empty response. */
  to_backend_fmt(s, "%s\r\n", s->mech == USHER_SASL_OAUTHBEARER ? "AQ==" : "");
  return TRUE;
}

/* An IMAP backend's line during the login; FALSE if the session was closed or done. */
static gboolean
imap_backend_line(Session *s, const char *line)
{
  if (line[0] == '\0')
    return TRUE;
  if (g_str_has_prefix(line, "* ")) {
    if (g_str_has_prefix(line, "* BYE")) {
      backend_failed(s, line);
      return FALSE;
    }
    if (g_str_has_prefix(line, "* OK "))
      learn_capabilities(s, line);
    return TRUE; /* the greeting, ID's answer, CAPABILITY: not for the client */
  }
  if (g_str_has_prefix(line, "U1 "))
    return TRUE; /* ID answered */
  if (g_str_has_prefix(line, "U2 ")) {
    g_autofree char *answer = g_strdup_printf("%s %s", s->ctag, line + 3);
    if (g_str_has_prefix(line + 3, "OK")) {
      login_accepted(s, answer);
      return TRUE;
    }
    return login_refused(s, answer); /* NO or BAD, as the backend said it */
  }
  if (g_str_has_prefix(line, "+")) {
    if (oauth_failure_answered(s))
      return TRUE;
    /* A continuation we did not ask for (the backend lacks SASL-IR or LITERAL+). */
    backend_failed(s, "the backend wants continuations (no LITERAL+ / SASL-IR?)");
    return FALSE;
  }
  return TRUE;
}

/* The login goes to the backend as PLAIN (an initial response, base64): a PLAIN client message
 * as the client sent it, or one made from LOGIN's name and password. (transfer full) */
static char *
backend_plain_b64(Session *s)
{
  if (s->kind != LOGIN_PLAIN_CMD)
    return g_strdup(s->secret_len > 0 ? s->secret : "=");
  gsize ulen = strlen(s->user), n = 1 + ulen + 1 + s->secret_len;
  g_autofree guint8 *plain = g_malloc(n);
  plain[0] = '\0';
  memcpy(plain + 1, s->user, ulen);
  plain[1 + ulen] = '\0';
  memcpy(plain + 2 + ulen, s->secret, s->secret_len);
  char *b64 = g_base64_encode(plain, n);
  memset(plain, 0, n);
  return b64;
}

/* The POP3 login at the backend: the client's address by XCLIENT when the backend offers it
 * (Dovecot does, in its greeting, to login_trusted_networks), then one AUTH with an initial
 * response (RFC 5034): USER/PASS and AUTH LOGIN become AUTH PLAIN with the same credentials. */
static void
pop3_send_backend_login(Session *s, gboolean xclient)
{
  if (xclient)
    to_backend_fmt(s, "XCLIENT ADDR=%s PORT=%u SESSION=usher-%u-%" G_GUINT64_FORMAT "\r\n",
                   s->cip, s->cport, s->w->index, s->id);
  if (s->kind == LOGIN_PLAIN_CMD) {
    g_autofree char *b64 = backend_plain_b64(s);
    Piece line[] = {PIECE("AUTH PLAIN "), PIECE(b64), PIECE("\r\n")};
    to_backend_secret(s, line, G_N_ELEMENTS(line));
    explicit_bzero(b64, strlen(b64));
  } else {
    Piece line[] = {PIECE("AUTH "), PIECE(usher_sasl_mech_name(s->mech)), PIECE(" "),
                    PIECE(s->secret_len > 0 ? s->secret : "="), PIECE("\r\n")};
    to_backend_secret(s, line, G_N_ELEMENTS(line));
  }
  s->pop3_step = xclient ? POP3_BACKEND_XCLIENT : POP3_BACKEND_AUTH;
  session_flush_backend(s);
}

/* A POP3 backend's line during the login; FALSE if the session was closed or done. */
static gboolean
pop3_backend_line(Session *s, const char *line)
{
  switch (s->pop3_step) {
  case POP3_BACKEND_GREETING:
    if (!g_str_has_prefix(line, "+OK")) {
      backend_failed(s, line);
      return FALSE;
    }
    pop3_send_backend_login(s, g_str_has_prefix(line, "+OK [XCLIENT]"));
    return TRUE;
  case POP3_BACKEND_XCLIENT:
    if (!g_str_has_prefix(line, "+OK")) {
      g_autofree char *why = g_strdup_printf("the backend refused XCLIENT: %s", line);
      backend_failed(s, why);
      return FALSE;
    }
    s->pop3_step = POP3_BACKEND_AUTH;
    return TRUE;
  case POP3_BACKEND_AUTH:
    break;
  }
  if (g_str_has_prefix(line, "+OK")) {
    login_accepted(s, line);
    return TRUE;
  }
  if (g_str_has_prefix(line, "-ERR"))
    return login_refused(s, line);
  if (g_str_has_prefix(line, "+") && oauth_failure_answered(s))
    return TRUE;
  /* "+ ...": a continuation we did not ask for (no initial response support?). */
  backend_failed(s, "the backend wants an AUTH continuation");
  return FALSE;
}

typedef enum {
  SPLICE_COPY = 0, /* not this time: read and copy */
  SPLICE_MOVED,    /* bytes went through the pipe, all of them written */
  SPLICE_WAIT,     /* the pipe still holds bytes: wait until the destination takes them */
  SPLICE_CLOSED,   /* the session was closed */
} SpliceResult;

/* One read of a logged-in plaintext session through a pipe, when a burst of at least SPLICE_MIN
 * bytes waits and nothing copied is queued ahead of it. Towards the client, the burst's last byte
 * is left for the next (copied) read, so client_eol stays true to the stream. */
static void backend_finished(Session *s, const char *why);

static SpliceResult
splice_burst(Session *s, gboolean to_client_side)
{
  if (s->ssl != NULL)
    return SPLICE_COPY;
  GByteArray **queued = to_client_side ? &s->cout : &s->bout;
  gsize *queued_off = to_client_side ? &s->cout_off : &s->bout_off;
  if (*queued != NULL) {
    /* Copied bytes go first. */
    if (!flush_fd(s, to_client_side, queued, queued_off))
      return SPLICE_CLOSED;
    if (*queued != NULL)
      return SPLICE_COPY;
  }
  int src = to_client_side ? s->bfd : s->cfd;
  int dst = to_client_side ? s->cfd : s->bfd;
  int avail = 0;
  if (ioctl(src, FIONREAD, &avail) != 0 || avail < SPLICE_MIN)
    return SPLICE_COPY;
  Pipe **pp = to_client_side ? &s->cpipe : &s->bpipe;
  if (*pp == NULL && (*pp = pipe_take(s->w)) == NULL)
    return SPLICE_COPY;
  gsize want = (gsize)avail - (to_client_side ? 1 : 0);
  ssize_t n = splice(src, NULL, (*pp)->wr, NULL, want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
  if (n <= 0) {
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      if (to_client_side)
        backend_finished(s, g_strerror(errno)); /* what it sent before still goes out */
      else
        session_end(s, g_strerror(errno));
      return SPLICE_CLOSED;
    }
    return SPLICE_COPY; /* the pipe is full or the socket is empty after all: recv decides */
  }
  (*pp)->held += (gsize)n;
  s->w->spliced += (guint64)n;
  if (to_client_side)
    s->client_eol = FALSE; /* until the copied tail says otherwise */
  int r = pipe_drain(*pp, dst);
  if (r == -2) {
    g_autofree char *why = g_strdup_printf("%s write failed: %s",
                                           to_client_side ? "client" : "backend",
                                           g_strerror(errno));
    session_close(s, why);
    return SPLICE_CLOSED;
  }
  return r == -1 ? SPLICE_WAIT : SPLICE_MOVED;
}

/* The client sent its last byte (a FIN; with TLS, close_notify or a FIN) while proxying: like a
 * TCP relay, what it sent still goes to the backend, then the backend's write side is shut, and
 * the backend's answers (the BYE of a LOGOUT piped with `printf ... | nc`) still reach the client
 * until the backend closes, for at most HALF_CLOSE_SECS. */
static void
client_finished(Session *s)
{
  if (s->client_eof)
    return;
  s->client_eof = TRUE;
  s->deadline_us = g_get_monotonic_time() + HALF_CLOSE_SECS * G_USEC_PER_SEC;
  session_flush_backend(s);
}

/* The backend closed (or failed) while proxying. Like a TCP relay, what it sent before still
 * reaches the client, which may be slower (a big RETR with QUIT pipelined behind it): usherd
 * stops reading the client and closes it once those bytes are out, or after HALF_CLOSE_SECS. */
static void
backend_finished(Session *s, const char *why)
{
  if (!client_output_pending(s)) {
    session_close(s, why);
    return;
  }
  g_debug("session %u/%" G_GUINT64_FORMAT " from %s:%u: %s; sending the client the rest",
          s->w->index, s->id, s->cip, s->cport, why);
  pipe_give(s->w, &s->bpipe); /* client bytes for the backend: nowhere to go now */
  backend_close(s);
  s->backend_eof = TRUE;
  s->deadline_us = g_get_monotonic_time() + HALF_CLOSE_SECS * G_USEC_PER_SEC;
  session_flush_client(s);
}

/* Moves what one side has into the other side's queue (bounded by OUT_HIGH_WATER per wakeup):
 * from the backend to the client when to_client_side, else from the client to the backend. */
static void
proxy_bytes(Session *s, gboolean to_client_side)
{
  GByteArray **to_buf = to_client_side ? &s->cout : &s->bout;
  gsize *to_off = to_client_side ? &s->cout_off : &s->bout_off;
  char buf[READ_CHUNK];
  /* A pipe is tried while this direction carries bulk: a read filled buf, or the previous
   * wakeup spliced. Interactive traffic costs no extra ioctl. */
  gboolean *bulk = to_client_side ? &s->bulk_to_client : &s->bulk_to_backend;
  gboolean moved = FALSE;
  for (int i = 0; i < 4; i++) {
    SpliceResult spliced = *bulk ? splice_burst(s, to_client_side) : SPLICE_COPY;
    if (spliced == SPLICE_CLOSED)
      return;
    if (spliced == SPLICE_WAIT)
      break;
    if (spliced == SPLICE_MOVED) {
      moved = TRUE;
      continue;
    }
    gssize n;
    if (to_client_side) {
      n = sock_result(recv(s->bfd, buf, sizeof(buf), 0));
    } else {
      n = client_recv(s, buf, sizeof(buf));
    }
    if (n == -1)
      break;
    if (n == 0 && !to_client_side) {
      client_finished(s);
      return;
    }
    if (n <= 0 && to_client_side) {
      backend_finished(s, n == 0 ? "backend closed" : g_strerror(errno));
      return;
    }
    if (n < 0) {
      session_close(s, g_strerror(errno)); /* the client is gone: nobody to send anything to */
      return;
    }
    queue(to_buf, to_off, buf, (gsize)n);
    if (n == (gssize)sizeof(buf))
      *bulk = TRUE;
    else if (!moved)
      *bulk = FALSE; /* a small read that is not a burst's tail */
    if (to_client_side)
      s->client_eol = buf[n - 1] == '\n';
    if ((*to_buf)->len - *to_off >= OUT_HIGH_WATER)
      break;
    /* A short read emptied a plain socket: epoll says when more comes (no EAGAIN round). TLS
     * may hold decrypted bytes that epoll cannot see: it reads on until it has none. */
    if (n < (gssize)sizeof(buf) && (to_client_side || s->ssl == NULL))
      break;
  }
  if (to_client_side)
    session_flush_client(s);
  else
    session_flush_backend(s);
}

static void
on_backend(gpointer data, guint32 events)
{
  Session *s = data;
  Worker *w = s->w;
  guint64 id = s->id;
  if (s->state == S_CONNECTING) {
    /* A connect that failed says so with EPOLLERR; only then is its error asked for. */
    if (events & (EPOLLERR | EPOLLHUP)) {
      int err = 0;
      socklen_t len = sizeof(err);
      getsockopt(s->bfd, SOL_SOCKET, SO_ERROR, &err, &len);
      backend_failed(s, g_strerror(err != 0 ? err : ECONNREFUSED));
      return;
    }
    s->state = S_BACKEND_LOGIN;
    s->deadline_us = g_get_monotonic_time() + BACKEND_LOGIN_TIMEOUT_SECS * G_USEC_PER_SEC;
    s->bline = g_string_new(NULL);
    s->oauth_failed = FALSE;
    if (proxy_in_nets(w->proxy->u->config->proxy_protocol_backends, &s->backend)) {
      /* The backend learns the client's address from a PROXY v2 header (Dovecot:
       * haproxy = yes on its listener, usherd in haproxy_trusted_networks). */
      UsherIp src = {0}, dst = {0};
      (void)usher_ip_parse(s->cip, -1, &src);
      (void)usher_ip_parse(s->lip, -1, &dst);
      g_autoptr(GByteArray) header = g_byte_array_new();
      usher_proxy_header_format_v2(&src, s->cport, &dst, s->lport, header);
      to_backend(s, header->data, header->len);
    }
    if (s->proto == PROTO_POP3) {
      s->pop3_step = POP3_BACKEND_GREETING; /* it speaks first */
      session_flush_backend(s);
    } else if (s->proto == PROTO_SIEVE || s->proto == PROTO_SUBMISSION) {
      /* A fresh backend connection (also the retry after a lost one, or the next login after
       * a refused one): nothing of an earlier one carries over. */
      s->sub_step = SUB_GREETING; /* it speaks first */
      s->xclient_sent = s->backend_xclient = FALSE;
      s->reply_lines = 0;
      if (s->bcaps == NULL)
        s->bcaps = g_string_new(NULL);
      g_string_truncate(s->bcaps, 0);
      session_flush_backend(s);
    } else {
      send_backend_login(s); /* pipelined behind the greeting it will send */
      session_flush_backend(s);
    }
    return;
  }
  if (events & EPOLLOUT) {
    session_flush_backend(s);
    if ((s = g_hash_table_lookup(w->by_id, &id)) == NULL)
      return;
  }
  if (!(events & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP)))
    return;
  if (s->state == S_PROXYING) {
    if ((events & EPOLLHUP) && !(events & (EPOLLIN | EPOLLERR))) {
      /* Hung up (its FIN after the client's, the write side shut) with bytes still unread,
       * while the client is behind: epoll would report it ready for ever. Out of epoll until
       * the client has caught up (update_interest). */
      poller_remove(w->poller, s->bwatch);
      s->bwatch = NULL;
      s->bparked = TRUE;
      return;
    }
    proxy_bytes(s, TRUE);
    return;
  }
  /* The login conversation: read lines. */
  char buf[4096];
  ssize_t n = recv(s->bfd, buf, sizeof(buf), 0);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
    return;
  if (n <= 0) {
    backend_failed(s, n == 0 ? "the backend closed the connection" : g_strerror(errno));
    return;
  }
  for (ssize_t i = 0; i < n; i++) {
    if (s->state == S_PROXYING) {
      /* Bytes after the login's OK line: the client's from now on. */
      to_client(s, buf + i, n - i);
      break;
    }
    if (buf[i] != '\n') {
      if (s->bline->len >= BACKEND_LINE_MAX) {
        backend_failed(s, "a line from the backend is too long");
        return;
      }
      g_string_append_c(s->bline, buf[i]);
      continue;
    }
    if (s->bline->len > 0 && s->bline->str[s->bline->len - 1] == '\r')
      g_string_truncate(s->bline, s->bline->len - 1);
    g_autofree char *line = g_strdup(s->bline->str);
    g_string_truncate(s->bline, 0);
    gboolean more = s->proto == PROTO_POP3         ? pop3_backend_line(s, line)
                    : s->proto == PROTO_SIEVE      ? sieve_backend_line(s, line)
                    : s->proto == PROTO_SUBMISSION ? submission_backend_line(s, line)
                                                   : imap_backend_line(s, line);
    if (!more)
      return;
    if ((s = g_hash_table_lookup(w->by_id, &id)) == NULL)
      return;
  }
  if (s->state == S_PROXYING && s->bline != NULL) {
    g_string_free(s->bline, TRUE);
    s->bline = NULL;
  }
  session_flush_client(s);
  if ((s = g_hash_table_lookup(w->by_id, &id)) != NULL && s->bout != NULL)
    session_flush_backend(s);
}

/* ---- The client before login ---------------------------------------------------------------------- */

/* The pre-login CAPABILITY: what usherd itself does before login (these tokens, AUTH=, STARTTLS)
 * around what every backend offers in its greeting (learn_capabilities; the default until a
 * backend has greeted). */
#define CAPS_OURS "IMAP4rev1 SASL-IR ID LITERAL+"
#define CAPS_BACKENDS_DEFAULT "LOGIN-REFERRALS ENABLE IDLE"

static void client_starttls(Session *s, const char *ok);

/* [proxy] auth_mechanisms: usherd offers only what the operator lists (the backends' own
 * auth_mechanisms), so no client picks a mechanism every backend would refuse. */
static gboolean
mech_offered(const Proxy *p, UsherSaslMech mech)
{
  return mech != 0 && (p->auth_mechs & (1u << mech)) != 0;
}

static void
auth_lists_init(Proxy *p, guint mechs)
{
  static const UsherSaslMech order[] = {USHER_SASL_PLAIN, USHER_SASL_LOGIN, USHER_SASL_OAUTHBEARER,
                                        USHER_SASL_XOAUTH2};
  GString *imap = g_string_new(NULL), *names = g_string_new(NULL), *lines = g_string_new(NULL);
  GString *plain_login = g_string_new(NULL);
  p->auth_mechs = mechs;
  for (gsize i = 0; i < G_N_ELEMENTS(order); i++) {
    if (!mech_offered(p, order[i]))
      continue;
    const char *name = usher_sasl_mech_name(order[i]);
    g_string_append_printf(imap, "%sAUTH=%s", imap->len > 0 ? " " : "", name);
    g_string_append_printf(names, "%s%s", names->len > 0 ? " " : "", name);
    g_string_append_printf(lines, "%s\r\n", name);
    if (order[i] == USHER_SASL_PLAIN || order[i] == USHER_SASL_LOGIN)
      g_string_append_printf(plain_login, "%s%s", plain_login->len > 0 ? " " : "", name);
  }
  p->auth_imap = g_string_free(imap, FALSE);
  p->auth_names = g_string_free(names, FALSE);
  p->auth_lines = g_string_free(lines, FALSE);
  p->auth_plain_login = g_string_free(plain_login, FALSE);
}

/* TLS can start here: a certificate is configured and the connection is still plaintext. */
static gboolean
can_starttls(const Session *s)
{
  return s->ssl == NULL && s->w->proxy->tls_enabled;
}

static char *
imap_capabilities(const Session *s)
{
  Proxy *p = s->w->proxy;
  g_mutex_lock(&p->lock);
  char *caps = g_strdup_printf(CAPS_OURS "%s%s %s%s", p->imap_caps[0] ? " " : "", p->imap_caps,
                               p->auth_imap, can_starttls(s) ? " STARTTLS" : "");
  g_mutex_unlock(&p->lock);
  return caps;
}

/* A token that usherd answers for itself before login, or that only describes the login phase. */
static gboolean
cap_ours(const char *token)
{
  static const char *const ours[] = {"IMAP4rev1", "SASL-IR", "ID", "LITERAL+", "LITERAL-",
                                     "STARTTLS", "LOGINDISABLED", NULL};
  if (g_ascii_strncasecmp(token, "AUTH=", 5) == 0)
    return TRUE;
  for (const char *const *o = ours; *o != NULL; o++)
    if (g_ascii_strcasecmp(token, *o) == 0)
      return TRUE;
  return FALSE;
}

/* A backend's greeting named its capabilities: the pre-login list offers what every backend that
 * has greeted offers (in the first one's order), so a client that caches the list meets no
 * surprise after login. Cheap when nothing changed (one string compare under the lock). */
static void
learn_capabilities(Session *s, const char *line)
{
  const char *start = strstr(line, "[CAPABILITY ");
  const char *end = start != NULL ? strchr(start, ']') : NULL;
  if (end == NULL)
    return;
  start += strlen("[CAPABILITY ");
  g_autofree char *caps = g_strndup(start, (gsize)(end - start));
  char ip[USHER_IP_STRLEN];
  usher_ip_to_string(&s->backend, ip);
  Proxy *p = s->w->proxy;
  g_mutex_lock(&p->lock);
  const char *known = g_hash_table_lookup(p->backend_caps, ip);
  if (g_strcmp0(known, caps) != 0) {
    g_hash_table_insert(p->backend_caps, g_strdup(ip), g_steal_pointer(&caps));
    GString *common = g_string_new(NULL);
    GHashTableIter it;
    gpointer value;
    g_hash_table_iter_init(&it, p->backend_caps);
    g_auto(GStrv) first = NULL;
    GPtrArray *others = g_ptr_array_new_with_free_func((GDestroyNotify)g_strfreev);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
      char **tokens = g_strsplit(value, " ", -1);
      if (first == NULL)
        first = tokens;
      else
        g_ptr_array_add(others, tokens);
    }
    for (char **t = first; *t != NULL; t++) {
      gboolean everywhere = **t != '\0' && !cap_ours(*t);
      for (guint i = 0; everywhere && i < others->len; i++) {
        char **o = g_ptr_array_index(others, i);
        while (*o != NULL && g_ascii_strcasecmp(*o, *t) != 0)
          o++;
        everywhere = *o != NULL;
      }
      if (everywhere && common->len < 900)
        g_string_append_printf(common, "%s%s", common->len > 0 ? " " : "", *t);
    }
    g_ptr_array_unref(others);
    g_free(p->imap_caps);
    p->imap_caps = g_string_free(common, FALSE);
  }
  g_mutex_unlock(&p->lock);
}

static gboolean
take_string(const UsherImapArg *a, char **out, gsize *len_out)
{
  if (a->type != USHER_IMAP_ARG_ATOM && a->type != USHER_IMAP_ARG_STRING)
    return FALSE;
  *out = g_malloc(a->len + 1);
  memcpy(*out, a->value, a->len);
  (*out)[a->len] = '\0';
  *len_out = a->len;
  return TRUE;
}

/* A SASL message (base64) from the client: find the user; route. */
static void
sasl_message(Session *s, const char *b64)
{
  if (!usher_sasl_base64_valid(b64)) {
    /* It goes to the backend as sent: nothing but base64 (a literal could hold a CRLF and a
     * command the backend would take from usherd's trusted address). */
    s->bad_commands++;
    reply_auth_error(s, FALSE, "Invalid base64 data");
    forget_login(s);
    return;
  }
  gsize len = 0;
  g_autofree guint8 *raw = NULL;
  if (strcmp(b64, "=") != 0)
    raw = g_base64_decode(b64, &len);
  const char *why = NULL;
  char *user = usher_sasl_login_name(s->mech, raw != NULL ? raw : (const guint8 *)"", len, &why);
  if (raw != NULL)
    memset(raw, 0, len);
  if (user == NULL) {
    reply_auth_error(s, FALSE, why);
    forget_login(s);
    return;
  }
  g_free(s->user);
  s->user = user;
  s->kind = LOGIN_SASL;
  s->secret = g_strdup(b64);
  s->secret_len = strlen(b64);
  session_route(s);
}

/* AUTHENTICATE (IMAP) or AUTH (POP3) with a known mechanism and the initial response `ir`
 * (base64, "=" for an empty one; NULL when the client sent none). */
static void
sasl_start(Session *s, UsherSaslMech mech, const char *ir)
{
  s->mech = mech;
  if (ir != NULL && mech == USHER_SASL_LOGIN) {
    /* LOGIN's initial response is the name; the password comes next. */
    gsize len = 0;
    g_autofree guint8 *name = strcmp(ir, "=") != 0 ? g_base64_decode(ir, &len) : NULL;
    g_free(s->user);
    s->user = g_strndup(name != NULL ? (const char *)name : "", len);
    s->login_step = TRUE;
    s->sasl_pending = TRUE;
    sasl_challenge(s, "UGFzc3dvcmQ6"); /* "Password:" */
    client_expect_sasl(s);
    return;
  }
  if (ir != NULL) {
    sasl_message(s, ir);
    return;
  }
  s->sasl_pending = TRUE;
  s->login_step = FALSE;
  sasl_challenge(s, mech == USHER_SASL_LOGIN ? "VXNlcm5hbWU6" : ""); /* "Username:" */
  client_expect_sasl(s);
}

static void
imap_command(Session *s, UsherImapCmd *cmd)
{
  switch (cmd->type) {
  case USHER_IMAP_CMD_CAPABILITY: {
    g_autofree char *caps = imap_capabilities(s);
    to_client_fmt(s, "* CAPABILITY %s\r\n%s OK Capability completed.\r\n", caps, cmd->tag);
    return;
  }
  case USHER_IMAP_CMD_NOOP:
    to_client_fmt(s, "%s OK NOOP completed.\r\n", cmd->tag);
    return;
  case USHER_IMAP_CMD_ID:
    to_client_fmt(s, "* ID (\"name\" \"Usher\")\r\n%s OK ID completed.\r\n", cmd->tag);
    return;
  case USHER_IMAP_CMD_LOGOUT:
    to_client_fmt(s, "* BYE Logging out\r\n%s OK Logout completed.\r\n", cmd->tag);
    session_end(s, "logout");
    return;
  case USHER_IMAP_CMD_STARTTLS:
    if (!can_starttls(s)) {
      to_client_fmt(s, "%s BAD %s\r\n", cmd->tag,
                    s->ssl != NULL ? "TLS is already active." : "TLS is not configured here.");
      s->bad_commands++;
      return;
    }
    {
      g_autofree char *ok = g_strdup_printf("%s OK Begin TLS negotiation now.\r\n", cmd->tag);
      client_starttls(s, ok);
    }
    return;
  case USHER_IMAP_CMD_LOGIN: {
    char *user = NULL, *pass = NULL;
    gsize ulen, plen;
    if (cmd->args->len != 2 ||
        !take_string(&g_array_index(cmd->args, UsherImapArg, 0), &user, &ulen) ||
        !take_string(&g_array_index(cmd->args, UsherImapArg, 1), &pass, &plen) ||
        strlen(user) != ulen || ulen == 0) {
      g_free(user);
      if (pass != NULL)
        memset(pass, 0, plen);
      g_free(pass);
      to_client_fmt(s, "%s BAD Error in IMAP command LOGIN: needs a user name and a password\r\n",
                    cmd->tag);
      s->bad_commands++;
      return;
    }
    s->ctag = g_strdup(cmd->tag);
    s->user = user;
    s->secret = pass;
    s->secret_len = plen;
    s->kind = LOGIN_PLAIN_CMD;
    session_route(s);
    return;
  }
  case USHER_IMAP_CMD_AUTHENTICATE: {
    const UsherImapArg *mech_arg = cmd->args->len >= 1 ? &g_array_index(cmd->args, UsherImapArg, 0)
                                                       : NULL;
    UsherSaslMech mech = mech_arg != NULL && mech_arg->type == USHER_IMAP_ARG_ATOM
                           ? usher_sasl_mech_from_name(mech_arg->value)
                           : 0;
    if (!mech_offered(s->w->proxy, mech) || cmd->args->len > 2) {
      to_client_fmt(s, "%s NO [CANNOT] Unsupported authentication mechanism.\r\n", cmd->tag);
      s->bad_commands++;
      return;
    }
    const UsherImapArg *ir = cmd->args->len == 2 ? &g_array_index(cmd->args, UsherImapArg, 1)
                                                 : NULL;
    if (ir != NULL && ir->type != USHER_IMAP_ARG_ATOM) {
      to_client_fmt(s, "%s BAD Error in IMAP command AUTHENTICATE: bad initial response\r\n",
                    cmd->tag);
      return;
    }
    s->ctag = g_strdup(cmd->tag);
    sasl_start(s, mech, ir != NULL ? ir->value : NULL);
    return;
  }
  case USHER_IMAP_CMD_OTHER:
    if (strcmp(cmd->name, "ENABLE") == 0) {
      /* Some clients enable extensions before they log in; Dovecot ignores that, and so do we
       * (the client enables them again after login, where the backend answers). */
      to_client_fmt(s, "* ENABLED\r\n%s OK ENABLE ignored in non-authenticated state.\r\n",
                    cmd->tag);
      return;
    }
    break;
  }
  s->bad_commands++;
  to_client_fmt(s, "%s BAD Please log in first (command %s is not available yet).\r\n", cmd->tag,
                cmd->name);
}

/* A SASL response line from the client (either protocol). */
static void
sasl_line(Session *s, const char *line)
{
  s->sasl_pending = FALSE;
  if (strcmp(line, "*") == 0) {
    reply_auth_error(s, TRUE, "Authentication aborted by client.");
    forget_login(s);
    return;
  }
  if (s->mech != USHER_SASL_LOGIN) {
    sasl_message(s, line);
    return;
  }
  gsize len;
  g_autofree guint8 *raw = g_base64_decode(line, &len);
  if (!s->login_step) {
    g_free(s->user);
    s->user = g_strndup((const char *)raw, len);
    s->login_step = TRUE;
    s->sasl_pending = TRUE;
    sasl_challenge(s, "UGFzc3dvcmQ6");
    client_expect_sasl(s);
    return;
  }
  /* LOGIN: name and password; log in at the backend with LOGIN (same credentials). */
  const char *why;
  g_autofree char *checked =
    usher_sasl_login_name(USHER_SASL_LOGIN, (const guint8 *)s->user, strlen(s->user), &why);
  if (checked == NULL) {
    reply_auth_error(s, FALSE, why);
    memset(raw, 0, len);
    forget_login(s);
    return;
  }
  s->secret = g_malloc(len + 1);
  memcpy(s->secret, raw, len);
  s->secret[len] = '\0';
  s->secret_len = len;
  memset(raw, 0, len);
  s->kind = LOGIN_PLAIN_CMD;
  session_route(s);
}

/* What a POP3 client is told before login (RFC 2449); the SASL line follows
 * (auth_mechanisms). */
#define POP3_CAPABILITIES                                                                          \
  "CAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\nUSER\r\n"

static void
pop3_command(Session *s, UsherPop3Cmd *cmd)
{
  switch (cmd->type) {
  case USHER_POP3_CMD_CAPA:
    to_client_fmt(s, "+OK\r\n" POP3_CAPABILITIES "SASL %s\r\n%s.\r\n", s->w->proxy->auth_names,
                  can_starttls(s) ? "STLS\r\n" : "");
    return;
  case USHER_POP3_CMD_USER:
    forget_login(s);
    s->user = g_strdup(cmd->arg);
    to_client(s, "+OK\r\n", -1);
    return;
  case USHER_POP3_CMD_PASS:
    if (s->user == NULL) {
      to_client(s, "-ERR No username given.\r\n", -1);
      s->bad_commands++;
      return;
    }
    s->secret_len = strlen(cmd->arg);
    s->secret = g_strdup(cmd->arg);
    memset(cmd->arg, 0, s->secret_len);
    s->kind = LOGIN_PLAIN_CMD;
    session_route(s);
    return;
  case USHER_POP3_CMD_AUTH: {
    if (cmd->arg == NULL) {
      to_client_fmt(s, "+OK\r\n%s.\r\n", s->w->proxy->auth_lines);
      return;
    }
    UsherSaslMech mech = usher_sasl_mech_from_name(cmd->arg);
    if (!mech_offered(s->w->proxy, mech)) {
      to_client(s, "-ERR Unsupported authentication mechanism.\r\n", -1);
      s->bad_commands++;
      return;
    }
    forget_login(s);
    sasl_start(s, mech, cmd->initial_response);
    return;
  }
  case USHER_POP3_CMD_STLS:
    if (!can_starttls(s)) {
      to_client(s, s->ssl != NULL ? "-ERR TLS is already active.\r\n"
                                  : "-ERR TLS is not configured here.\r\n",
                -1);
      s->bad_commands++;
      return;
    }
    client_starttls(s, "+OK Begin TLS negotiation now.\r\n");
    return;
  case USHER_POP3_CMD_QUIT:
    to_client(s, "+OK Logging out\r\n", -1);
    session_end(s, "logout");
    return;
  case USHER_POP3_CMD_NOOP: /* valid only after login (RFC 1939) */
  case USHER_POP3_CMD_OTHER:
    break;
  }
  s->bad_commands++;
  to_client(s, "-ERR Unknown command.\r\n", -1);
}

/* Too many invalid commands: the client is cut off. FALSE if the session is gone. */
static gboolean
check_bad_commands(Session *s)
{
  Proxy *p = s->w->proxy;
  if (s->bad_commands < p->u->config->proxy_max_bad_commands)
    return TRUE;
  proxy_stat_add(p, &p->stats.bad_commands_closed, 1);
  say_bye(s, "Too many invalid commands.");
  session_end(s, "too many invalid commands");
  return FALSE;
}

/* A line the pre-login reader refused: counted, and it ends a SASL exchange in progress. */
static void
bad_line(Session *s)
{
  s->bad_commands++;
  if (s->sasl_pending) {
    s->sasl_pending = FALSE;
    forget_login(s);
  }
}

static void
pop3_prelogin_input(Session *s)
{
  Worker *w = s->w;
  guint64 id = s->id;
  while (s->state == S_PRELOGIN) {
    g_auto(UsherPop3Cmd) cmd = {0};
    const char *why = NULL;
    switch (usher_pop3_reader_next(s->preader, &cmd, &why)) {
    case USHER_POP3_NEED_MORE:
      return;
    case USHER_POP3_BAD:
      to_client_fmt(s, "-ERR %s\r\n", why);
      bad_line(s);
      break;
    case USHER_POP3_FAIL:
      to_client_fmt(s, "-ERR %s\r\n", why);
      session_end(s, why);
      return;
    case USHER_POP3_COMMAND:
      pop3_command(s, &cmd);
      break;
    case USHER_POP3_SASL_LINE:
      sasl_line(s, cmd.arg);
      break;
    }
    if ((s = g_hash_table_lookup(w->by_id, &id)) == NULL || !check_bad_commands(s))
      return;
  }
}

static void
imap_prelogin_input(Session *s)
{
  Worker *w = s->w;
  guint64 id = s->id;
  while (s->state == S_PRELOGIN) {
    g_auto(UsherImapCmd) cmd = {0};
    char *tag = NULL;
    const char *why = NULL;
    UsherImapEvent ev = usher_imap_reader_next(s->reader, &cmd, &tag, &why);
    switch (ev) {
    case USHER_IMAP_NEED_MORE:
      return;
    case USHER_IMAP_CONTINUE:
      to_client(s, "+ OK\r\n", -1);
      continue;
    case USHER_IMAP_BAD:
      to_client_fmt(s, "%s BAD %s\r\n", tag, why);
      g_free(tag);
      s->bad_commands++;
      break;
    case USHER_IMAP_FAIL:
      to_client_fmt(s, "* BYE %s\r\n", why);
      g_free(tag);
      session_end(s, why);
      return;
    case USHER_IMAP_COMMAND:
      imap_command(s, &cmd);
      break;
    case USHER_IMAP_SASL_LINE:
      sasl_line(s, g_array_index(cmd.args, UsherImapArg, 0).value);
      break;
    }
    if ((s = g_hash_table_lookup(w->by_id, &id)) == NULL || !check_bad_commands(s))
      return;
  }
}

/* Takes what the client sent before login, in its protocol. */
static void
client_prelogin_input(Session *s)
{
  if (s->proto == PROTO_POP3)
    pop3_prelogin_input(s);
  else if (s->proto == PROTO_SIEVE)
    sieve_prelogin_input(s);
  else if (s->proto == PROTO_SUBMISSION)
    submission_prelogin_input(s);
  else
    imap_prelogin_input(s);
}

/* Takes a connection slot if `total` (max_connections) and one of the client address's if `ip`
 * is not NULL (max_connections_per_ip); counts a refusal. */
gboolean
proxy_admit(Proxy *p, gboolean total, const char *ip)
{
  const UsherConfig *c = p->u->config;
  g_mutex_lock(&p->lock);
  guint n = ip != NULL ? GPOINTER_TO_UINT(g_hash_table_lookup(p->per_ip, ip)) : 0;
  gboolean ok = TRUE;
  if (total && p->total >= MIN(c->proxy_max_connections, p->fd_ceiling)) {
    p->stats.refused_total++;
    ok = FALSE;
  } else if (ip != NULL && n >= c->proxy_max_connections_per_ip) {
    p->stats.refused_per_ip++;
    ok = FALSE;
  } else {
    if (ip != NULL)
      g_hash_table_insert(p->per_ip, g_strdup(ip), GUINT_TO_POINTER(n + 1));
    if (total) {
      p->total++;
      p->stats.accepted++;
      p->stats.sessions_now++;
    }
  }
  g_mutex_unlock(&p->lock);
  return ok;
}

void
proxy_release(Proxy *p, const char *ip)
{
  g_mutex_lock(&p->lock);
  if (ip != NULL) {
    guint n = GPOINTER_TO_UINT(g_hash_table_lookup(p->per_ip, ip));
    if (n <= 1)
      g_hash_table_remove(p->per_ip, ip);
    else
      g_hash_table_insert(p->per_ip, g_strdup(ip), GUINT_TO_POINTER(n - 1));
  }
  p->total--;
  p->stats.sessions_now--;
  g_mutex_unlock(&p->lock);
}

static const char *
busy_text(Proto proto)
{
  if (proto == PROTO_LMTP || proto == PROTO_SUBMISSION)
    return "421 4.3.2 Too many connections, try again later\r\n";
  if (proto == PROTO_SIEVE)
    return "BYE \"Too many connections, try again later.\"\r\n";
  return proto == PROTO_POP3 ? "-ERR [SYS/TEMP] Too many connections, try again later.\r\n"
                             : "* BYE Too many connections, try again later.\r\n";
}

/* The session may talk now: the greeting, in its protocol. */
static void
greet(Session *s)
{
  const UsherConfig *c = s->w->proxy->u->config;
  s->state = S_PRELOGIN;
  new_reader(s);
  if (s->proto == PROTO_POP3) {
    to_client_fmt(s, "+OK %s\r\n", c->proxy_greeting);
  } else if (s->proto == PROTO_SIEVE) {
    g_autofree char *caps = sieve_capabilities(s, c->proxy_greeting);
    to_client(s, caps, -1);
  } else if (s->proto == PROTO_SUBMISSION) {
    to_client_fmt(s, "220 %s ESMTP %s\r\n", g_get_host_name(), c->proxy_greeting);
  } else {
    g_autofree char *caps = imap_capabilities(s);
    to_client_fmt(s, "* OK [CAPABILITY %s] %s\r\n", caps, c->proxy_greeting);
  }
}

/* Starts TLS on the client's socket: at accept on imaps/pop3s, or after STARTTLS/STLS. FALSE
 * (and the session closed) if OpenSSL cannot. */
static gboolean
tls_start(Session *s)
{
  Proxy *p = s->w->proxy;
  g_mutex_lock(&p->lock);
  SSL_CTX *ctx = p->tls_ctx;
  s->ssl = ctx != NULL ? SSL_new(ctx) : NULL; /* the SSL holds its own reference */
  g_mutex_unlock(&p->lock);
  if (s->ssl == NULL || SSL_set_fd(s->ssl, s->cfd) != 1) {
    g_autofree char *why = usherd_tls_error_text();
    g_warning("TLS for %s:%u: %s", s->cip, s->cport, why);
    session_close(s, "cannot start TLS");
    return FALSE;
  }
  SSL_set_accept_state(s->ssl);
  s->tls_handshaking = TRUE;
  return TRUE;
}

/* Moves the handshake on; FALSE if the session was closed. When it completes, what was queued
 * meanwhile (an imaps greeting) goes out at once: that may be on the very first call, as an
 * OpenSSL 3 TLS 1.3 server finishes its side as soon as its first flight is written, and the
 * socket will not necessarily say anything more. */
static gboolean
tls_handshake(Session *s)
{
  Proxy *p = s->w->proxy;
  ERR_clear_error();
  int r = SSL_do_handshake(s->ssl);
  if (r == 1) {
    s->tls_handshaking = FALSE;
    s->tls_wants = 0;
    proxy_stat_add(p, &p->stats.tls_handshakes, 1);
    Worker *w = s->w;
    guint64 id = s->id;
    session_flush_client(s);
    return g_hash_table_lookup(w->by_id, &id) != NULL;
  }
  switch (SSL_get_error(s->ssl, r)) {
  case SSL_ERROR_WANT_READ:
    s->tls_wants = EPOLLIN;
    update_interest(s);
    return TRUE;
  case SSL_ERROR_WANT_WRITE:
    s->tls_wants = EPOLLOUT;
    update_interest(s);
    return TRUE;
  default: {
    proxy_stat_add(p, &p->stats.tls_failures, 1);
    g_autofree char *why = usherd_tls_error_text();
    g_message("TLS handshake with %s:%u failed: %s", s->cip, s->cport, why);
    session_close(s, "TLS handshake failed");
    return FALSE;
  }
  }
}

static void on_client(gpointer data, guint32 events);

static gboolean
tls_kick_cb(gpointer data)
{
  Session *s = session_ref_get(data);
  if (s != NULL) {
    s->tls_kick = FALSE;
    on_client(s, EPOLLIN);
  }
  return G_SOURCE_REMOVE;
}

/* OpenSSL holds decrypted bytes the socket no longer shows: read them from the loop soon. */
static void
tls_kick(Session *s)
{
  if (s->tls_kick)
    return;
  s->tls_kick = TRUE;
  session_later(s, 0, tls_kick_cb);
}

/* STARTTLS (IMAP) or STLS (POP3) was accepted with `ok`: the answer goes out in plaintext, then
 * the handshake starts on a fresh reader. Bytes pipelined behind the command would be taken as if
 * they had come over TLS (CVE-2011-0411): such a client is cut off. */
static void
client_starttls(Session *s, const char *ok)
{
  Proxy *p = s->w->proxy;
  gsize pending = 0;
  (void)client_pending(s, &pending);
  if (pending > 0) {
    proxy_stat_add(p, &p->stats.tls_failures, 1);
    say_bye(s, "Commands were sent after STARTTLS in plaintext.");
    session_end(s, "plaintext after STARTTLS");
    return;
  }
  to_client(s, ok, -1);
  guint64 id = s->id;
  Worker *w = s->w;
  session_flush_client(s);
  if ((s = g_hash_table_lookup(w->by_id, &id)) == NULL)
    return;
  if (s->cout != NULL) {
    session_close(s, "the client does not read the STARTTLS answer");
    return;
  }
  proxy_stat_add(p, &p->stats.starttls, 1);
  free_readers(s);
  new_reader(s);
  g_clear_pointer(&s->helo, g_free); /* submission: EHLO again over TLS */
  if (!tls_start(s))
    return;
  if (s->proto == PROTO_SIEVE) {
    /* RFC 5804 2.2: the capabilities again, now over TLS (sent once the handshake is done). */
    g_autofree char *caps = sieve_capabilities(s, "TLS is on.");
    to_client(s, caps, -1);
  }
  (void)tls_handshake(s);
}

/* A trusted load balancer's PROXY header, before the greeting. The socket is peeked and only the
 * header's bytes are taken, so what follows (a TLS ClientHello, or a client that did not wait)
 * stays in the socket for the session proper. */
static void
proxy_header_input(Session *s)
{
  Proxy *p = s->w->proxy;
  char buf[USHER_PROXY_V2_MAX];
  ssize_t n = recv(s->cfd, buf, sizeof(buf), MSG_PEEK);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
    return;
  if (n <= 0) {
    session_close(s, n == 0 ? "closed before its PROXY header" : g_strerror(errno));
    return;
  }
  gsize used = 0;
  UsherProxyResult r = usher_proxy_header_feed(s->pheader, buf, (gsize)n, &used);
  if (used > 0 && recv(s->cfd, buf, used, 0) != (ssize_t)used) {
    session_close(s, "cannot take the PROXY header from the socket");
    return;
  }
  switch (r) {
  case USHER_PROXY_NEED_MORE:
    return;
  case USHER_PROXY_FAIL:
    proxy_stat_add(p, &p->stats.proxy_header_errors, 1);
    g_message("a bad PROXY protocol header from %s:%u: %s; connection closed", s->cip, s->cport,
              usher_proxy_header_why(s->pheader));
    session_close(s, "bad PROXY header");
    return;
  case USHER_PROXY_DONE:
    break;
  }
  proxy_stat_add(p, &p->stats.proxy_headers, 1);
  const UsherProxyInfo *info = usher_proxy_header_info(s->pheader);
  if (!info->local && info->family != USHER_PROXY_FAM_UNSPEC) {
    /* The client and the address it connected to, as the load balancer saw them. */
    usher_ip_to_string(&info->src_ip, s->cip);
    s->cport = info->src_port;
    usher_ip_to_string(&info->dst_ip, s->lip);
    s->lport = info->dst_port;
  }
  g_clear_pointer(&s->pheader, usher_proxy_header_free);
  if (!proxy_admit(p, FALSE, s->cip)) {
    if (!s->tls_listener) {
      to_client(s, busy_text(s->proto), -1);
      session_end(s, "too many connections from the client's address");
    } else {
      session_close(s, "too many connections from the client's address");
    }
    return;
  }
  s->counted_ip = TRUE;
  s->input_seen = TRUE; /* the header was the first input; the rest is the client's own */
  if (s->tls_listener && !tls_start(s))
    return;
  greet(s); /* queued until the handshake is done, on a TLS listener */
  if (s->tls_listener)
    (void)tls_handshake(s);
  else
    session_flush_client(s);
}

static void
client_feed(Session *s, const void *data, gsize n)
{
  Worker *w = s->w;
  guint64 id = s->id;
  if (s->proto == PROTO_POP3)
    usher_pop3_reader_feed(s->preader, data, n);
  else if (s->proto == PROTO_SIEVE)
    usher_sieve_reader_feed(s->sreader, data, n);
  else if (s->proto == PROTO_SUBMISSION)
    usher_smtp_reader_feed(s->mreader, data, n);
  else
    usher_imap_reader_feed(s->reader, data, n);
  client_prelogin_input(s);
  if ((s = g_hash_table_lookup(w->by_id, &id)) != NULL)
    session_flush_client(s);
}

/* The start of a PROXY v1 line ("PROXY ") or the whole v2 signature. A sender writes either in
 * one piece; a shorter prefix is a client's own input ("\r\n" is an empty command line, "P" the
 * first key a person typed), which the protocol's parser answers. */
static gboolean
looks_like_proxy_header(const char *buf, gsize n)
{
  static const char v1[] = "PROXY ";
  static const char v2[] = "\r\n\r\n\0\r\nQUIT\n";
  return (n >= sizeof(v1) - 1 && memcmp(buf, v1, sizeof(v1) - 1) == 0) ||
         (n >= sizeof(v2) - 1 && memcmp(buf, v2, sizeof(v2) - 1) == 0);
}

static void
on_client(gpointer data, guint32 events)
{
  Session *s = data;
  Worker *w = s->w;
  guint64 id = s->id;
  if (s->ssl != NULL) {
    if (s->tls_handshaking) {
      if (!tls_handshake(s) || s->tls_handshaking)
        return;
      events |= EPOLLOUT; /* what waited for the handshake */
    }
    /* OpenSSL may want either direction for either; it says AGAIN if not. */
    events |= EPOLLIN | (s->cout != NULL ? EPOLLOUT : 0);
  }
  if (events & EPOLLOUT) {
    session_flush_client(s);
    if ((s = g_hash_table_lookup(w->by_id, &id)) == NULL)
      return;
  }
  if (!(events & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP)))
    return;
  if (s->state == S_PROXYING) {
    /* Backpressure holds for TLS too, whose reads are asked for whatever epoll said: the
     * client is read on once the backend has taken its bytes (update_interest kicks TLS). */
    if (!s->client_eof && !s->backend_eof && backend_queued(s) < OUT_HIGH_WATER)
      proxy_bytes(s, FALSE);
    else if (events & (EPOLLERR | EPOLLHUP))
      session_close(s, "client gone");
    return;
  }
  if (s->state == S_PROXY_HEADER) {
    proxy_header_input(s);
    return;
  }
  if (s->state != S_PRELOGIN && (events & (EPOLLERR | EPOLLHUP))) {
    /* Reset while its login was routed or made: epoll reports that whatever it was asked. */
    session_close(s, "client gone during its login");
    return;
  }
  if (s->state != S_PRELOGIN) {
    /* The client waits for its login's answer (a TLS kick may still call): what it sent
     * meanwhile stays in the socket until then. */
    if (s->state != S_PROXY_HEADER && !s->cin_parked) {
      s->cin_parked = TRUE;
      update_interest(s);
    }
    return;
  }
  char buf[READ_CHUNK];
  gssize n = client_recv(s, buf, sizeof(buf));
  if (n == -1) {
    update_interest(s);
    return;
  }
  if (n <= 0) {
    session_close(s, n == 0 ? "client closed before login" : g_strerror(errno));
    return;
  }
  if (!s->input_seen) {
    s->input_seen = TRUE;
    if (s->ssl == NULL && looks_like_proxy_header(buf, (gsize)n)) {
      /* Only trusted_proxies may say who the client is. */
      proxy_stat_add(w->proxy, &w->proxy->stats.proxy_header_refused, 1);
      g_message("a PROXY protocol header from %s:%u, which is not in [proxy] trusted_proxies: "
                "connection closed", s->cip, s->cport);
      say_bye(s, "PROXY protocol header from an untrusted address.");
      session_end(s, "PROXY header from an untrusted address");
      return;
    }
  }
  client_feed(s, buf, (gsize)n);
}

/* ---- ManageSieve (RFC 5804) and submission (RFC 6409) before login ------------------------------ */

/* A ManageSieve quoted string's contents: '"' and '\' escaped. */
static char *
sieve_quote(const char *text)
{
  GString *out = g_string_new(NULL);
  for (const char *c = text; *c != '\0'; c++) {
    if (*c == '"' || *c == '\\')
      g_string_append_c(out, '\\');
    g_string_append_c(out, *c);
  }
  return g_string_free(out, FALSE);
}

#define SIEVE_CAPS_DEFAULT                                                                         \
  "\"SIEVE\" \"fileinto reject envelope encoded-character vacation subaddress "                    \
  "comparator-i;ascii-numeric relational regex imap4flags copy include variables body enotify "   \
  "environment mailbox date index ihave duplicate mime foreverypart extracttext\"\r\n"             \
  "\"NOTIFY\" \"mailto\"\r\n"

/* The capability lines and their OK: usherd's own (IMPLEMENTATION, SASL, STARTTLS, VERSION)
 * around what the last backend greeting offered (SIEVE extensions, NOTIFY, ...). */
static char *
sieve_capabilities(Session *s, const char *ok_text)
{
  Proxy *p = s->w->proxy;
  g_autofree char *ok = sieve_quote(ok_text);
  g_mutex_lock(&p->lock);
  char *caps = g_strdup_printf("\"IMPLEMENTATION\" \"Usher\"\r\n\"SASL\" \"%s\"\r\n%s%s"
                               "\"VERSION\" \"1.0\"\r\nOK \"%s\"\r\n",
                               p->auth_plain_login, p->sieve_caps,
                               can_starttls(s) ? "\"STARTTLS\"\r\n" : "", ok);
  g_mutex_unlock(&p->lock);
  return caps;
}

static void
sieve_command(Session *s, UsherSieveCmd *cmd)
{
  if (s->sasl_pending) {
    /* The answer to a challenge is a string; anything else ends the exchange. */
    if (cmd->name != NULL) {
      s->sasl_pending = FALSE;
      reply_auth_error(s, TRUE, "Authentication aborted: a string was expected.");
      forget_login(s);
      return;
    }
    sasl_line(s, g_ptr_array_index(cmd->args, 0));
    return;
  }
  const char *name = cmd->name != NULL ? cmd->name : "";
  if (strcmp(name, "CAPABILITY") == 0) {
    g_autofree char *caps = sieve_capabilities(s, "Capability completed.");
    to_client(s, caps, -1);
  } else if (strcmp(name, "NOOP") == 0) {
    /* RFC 5804 2.14: a NOOP's string comes back as a TAG (clients resynchronise with it). */
    if (cmd->args->len == 1) {
      g_autofree char *tag = sieve_quote(g_ptr_array_index(cmd->args, 0));
      to_client_fmt(s, "OK (TAG \"%s\") \"Done\"\r\n", tag);
    } else
      to_client(s, "OK \"NOOP completed.\"\r\n", -1);
  } else if (strcmp(name, "LOGOUT") == 0) {
    to_client(s, "OK \"Logout completed.\"\r\n", -1);
    session_end(s, "LOGOUT");
  } else if (strcmp(name, "STARTTLS") == 0 && can_starttls(s)) {
    client_starttls(s, "OK \"Begin TLS negotiation now.\"\r\n");
  } else if (strcmp(name, "AUTHENTICATE") == 0 && cmd->args->len >= 1 && cmd->args->len <= 2) {
    UsherSaslMech mech = usher_sasl_mech_from_name(g_ptr_array_index(cmd->args, 0));
    if ((mech != USHER_SASL_PLAIN && mech != USHER_SASL_LOGIN) ||
        !mech_offered(s->w->proxy, mech)) {
      to_client(s, "NO \"Unsupported SASL mechanism.\"\r\n", -1);
      s->bad_commands++;
      return;
    }
    const char *ir = cmd->args->len == 2 ? g_ptr_array_index(cmd->args, 1) : NULL;
    sasl_start(s, mech, ir != NULL && ir[0] == '\0' ? "=" : ir);
  } else {
    to_client(s, "NO \"Unknown command, or one that needs a login first.\"\r\n", -1);
    s->bad_commands++;
  }
}

static void
sieve_prelogin_input(Session *s)
{
  Worker *w = s->w;
  guint64 id = s->id;
  while (s->state == S_PRELOGIN) {
    g_auto(UsherSieveCmd) cmd = {0};
    const char *why = NULL;
    switch (usher_sieve_reader_next(s->sreader, &cmd, &why)) {
    case USHER_SIEVE_NEED_MORE:
      return;
    case USHER_SIEVE_BAD:
      to_client_fmt(s, "NO \"%s\"\r\n", why);
      bad_line(s);
      break;
    case USHER_SIEVE_FAIL:
      to_client_fmt(s, "BYE \"%s\"\r\n", why);
      session_end(s, why);
      return;
    case USHER_SIEVE_COMMAND:
      sieve_command(s, &cmd);
      break;
    }
    if ((s = g_hash_table_lookup(w->by_id, &id)) == NULL || !check_bad_commands(s))
      return;
  }
}

#define SUBMISSION_CAPS_DEFAULT "8BITMIME\r\nCHUNKING\r\nENHANCEDSTATUSCODES\r\nPIPELINING\r\nSIZE\r\n"

char *
proxy_ehlo_reply(Proxy *p, const char *ours, char *const *learnt, const char *more)
{
  GString *lines = g_string_new(ours);
  g_mutex_lock(&p->lock);
  g_string_append(lines, *learnt);
  g_mutex_unlock(&p->lock);
  g_string_append(lines, more);
  g_auto(GStrv) keywords = g_strsplit(lines->str, "\r\n", -1);
  g_string_free(lines, TRUE);
  guint n = g_strv_length(keywords);
  while (n > 0 && keywords[n - 1][0] == '\0')
    n--;
  GString *out = g_string_new(NULL);
  g_string_append_printf(out, "250%c%s", n > 0 ? '-' : ' ', g_get_host_name());
  for (guint i = 0; i < n; i++)
    g_string_append_printf(out, "\r\n250%c%s", i + 1 == n ? ' ' : '-', keywords[i]);
  return g_string_free(out, FALSE);
}

void
proxy_learn_caps(Proxy *p, char **field, const char *caps)
{
  g_mutex_lock(&p->lock);
  if (strcmp(*field, caps) != 0) {
    g_free(*field);
    *field = g_strdup(caps);
  }
  g_mutex_unlock(&p->lock);
}

/* EHLO's answer: what the last backend offered, usherd's AUTH and STARTTLS. */
static void
submission_ehlo(Session *s)
{
  Proxy *p = s->w->proxy;
  g_autofree char *ours = g_strdup_printf("%s%s%s%s", p->auth_plain_login[0] ? "AUTH " : "",
                                          p->auth_plain_login, p->auth_plain_login[0] ? "\r\n" : "",
                                          can_starttls(s) ? "STARTTLS\r\n" : "");
  g_autofree char *reply = proxy_ehlo_reply(p, "", &p->submission_caps, ours);
  to_client_fmt(s, "%s\r\n", reply);
}

static void
submission_command(Session *s, UsherSmtpCmd *cmd)
{
  if (cmd->verb == USHER_SMTP_VERB_UNKNOWN) {
    to_client(s, "500 5.5.1 Unknown command\r\n", -1);
    s->bad_commands++;
    return;
  }
  if (cmd->syntax_error != NULL) {
    to_client_fmt(s, "501 5.5.4 %s\r\n", cmd->syntax_error);
    s->bad_commands++;
    return;
  }
  switch (cmd->verb) {
  case USHER_SMTP_VERB_EHLO:
  case USHER_SMTP_VERB_HELO:
    g_free(s->helo);
    s->helo = g_strndup(cmd->arg, 255);
    g_strdelimit(s->helo, " \t\r\n", '_');
    if (cmd->verb == USHER_SMTP_VERB_EHLO)
      submission_ehlo(s);
    else
      to_client_fmt(s, "250 %s\r\n", g_get_host_name());
    return;
  case USHER_SMTP_VERB_STARTTLS:
    if (can_starttls(s))
      client_starttls(s, "220 2.0.0 Ready to start TLS\r\n");
    else
      to_client(s, "502 5.5.1 STARTTLS is not offered here\r\n", -1);
    return;
  case USHER_SMTP_VERB_AUTH: {
    if (s->helo == NULL) {
      to_client(s, "503 5.5.1 EHLO first\r\n", -1);
      return;
    }
    g_auto(GStrv) words = g_strsplit(cmd->arg, " ", 3);
    UsherSaslMech mech = words[0] != NULL ? usher_sasl_mech_from_name(words[0]) : 0;
    if ((mech != USHER_SASL_PLAIN && mech != USHER_SASL_LOGIN) ||
        !mech_offered(s->w->proxy, mech)) {
      to_client(s, "504 5.5.4 Unsupported authentication mechanism\r\n", -1);
      s->bad_commands++;
      return;
    }
    sasl_start(s, mech, words[0] != NULL ? words[1] : NULL);
    return;
  }
  case USHER_SMTP_VERB_NOOP:
  case USHER_SMTP_VERB_RSET:
    to_client(s, "250 2.0.0 OK\r\n", -1);
    return;
  case USHER_SMTP_VERB_QUIT:
    to_client(s, "221 2.0.0 Bye\r\n", -1);
    session_end(s, "QUIT");
    return;
  default:
    to_client(s, "530 5.7.0 Authentication required\r\n", -1);
    s->bad_commands++;
    return;
  }
}

static void
submission_prelogin_input(Session *s)
{
  Worker *w = s->w;
  guint64 id = s->id;
  while (s->state == S_PRELOGIN) {
    UsherSmtpCmd cmd = {0};
    const guint8 *data;
    gsize len;
    switch (usher_smtp_reader_next(s->mreader, &cmd, &data, &len)) {
    case USHER_SMTP_NEED_MORE:
      return;
    case USHER_SMTP_LINE_TOO_LONG:
      to_client(s, "500 5.5.2 Line too long\r\n", -1);
      bad_line(s);
      break;
    case USHER_SMTP_COMMAND:
      if (s->sasl_pending)
        sasl_line(s, cmd.line); /* base64, or "*" to cancel */
      else
        submission_command(s, &cmd);
      usher_smtp_cmd_clear(&cmd);
      break;
    default:
      g_assert_not_reached(); /* no body is ever expected before login */
    }
    if ((s = g_hash_table_lookup(w->by_id, &id)) == NULL || !check_bad_commands(s))
      return;
  }
}

/* ---- ManageSieve and submission at the backend ----------------------------------------------------- */

/* Remembers what a backend announced, for the next clients' capability lists. */
static void
learn_sub_caps(Session *s)
{
  Proxy *p = s->w->proxy;
  if (s->bcaps == NULL || s->bcaps->len == 0 || s->bcaps->len > 4096)
    return;
  proxy_learn_caps(p, s->proto == PROTO_SIEVE ? &p->sieve_caps : &p->submission_caps,
                   s->bcaps->str);
}

static void
sub_send_login(Session *s)
{
  learn_sub_caps(s);
  if (!s->xclient_sent && s->backend_xclient) {
    /* The client's address, for the backend's logs (Dovecot: login_trusted_networks). */
    to_backend_fmt(s, "XCLIENT ADDR=%s PORT=%u\r\n", s->cip, s->cport);
    s->xclient_sent = TRUE;
    s->sub_step = SUB_XCLIENT;
  } else {
    g_autofree char *b64 = backend_plain_b64(s);
    Piece sieve[] = {PIECE("AUTHENTICATE \"PLAIN\" \""), PIECE(b64), PIECE("\"\r\n")};
    Piece smtp[] = {PIECE("AUTH PLAIN "), PIECE(b64), PIECE("\r\n")};
    if (s->proto == PROTO_SIEVE)
      to_backend_secret(s, sieve, G_N_ELEMENTS(sieve));
    else
      to_backend_secret(s, smtp, G_N_ELEMENTS(smtp));
    explicit_bzero(b64, strlen(b64));
    s->sub_step = SUB_AUTH; /* the password stays until the answer: a lost backend is retried */
  }
  session_flush_backend(s);
}

/* A ManageSieve backend's line during the login; FALSE if the session was closed or done. */
static gboolean
sieve_backend_line(Session *s, const char *line)
{
  gboolean ok = g_str_has_prefix(line, "OK");
  gboolean no = g_str_has_prefix(line, "NO");
  if (g_str_has_prefix(line, "BYE")) {
    backend_failed(s, line);
    return FALSE;
  }
  switch (s->sub_step) {
  case SUB_GREETING:
    if (ok) {
      sub_send_login(s);
      return TRUE;
    }
    if (no) {
      backend_failed(s, line);
      return FALSE;
    }
    if (strcmp(line, "\"XCLIENT\"") == 0)
      s->backend_xclient = TRUE;
    else if (!g_str_has_prefix(line, "\"IMPLEMENTATION\"") && !g_str_has_prefix(line, "\"SASL\"") &&
             !g_str_has_prefix(line, "\"STARTTLS\"") && !g_str_has_prefix(line, "\"VERSION\""))
      g_string_append_printf(s->bcaps, "%s\r\n", line);
    return TRUE;
  case SUB_XCLIENT:
    if (!ok) {
      g_autofree char *why = g_strdup_printf("the backend refused XCLIENT: %s", line);
      backend_failed(s, why);
      return FALSE;
    }
    sub_send_login(s);
    return TRUE;
  case SUB_AUTH:
  case SUB_EHLO:
    break;
  }
  if (ok) {
    login_accepted(s, line);
    return TRUE;
  }
  if (no)
    return login_refused(s, line);
  backend_failed(s, "the backend wants an AUTHENTICATE continuation");
  return FALSE;
}

/* A submission backend's line during the login; FALSE if the session was closed or done. */
static gboolean
submission_backend_line(Session *s, const char *line)
{
  guint code;
  gboolean last;
  const char *text;
  if (!usher_smtp_reply_parse(line, &code, &last, &text)) {
    backend_failed(s, "not an SMTP reply");
    return FALSE;
  }
  switch (s->sub_step) {
  case SUB_GREETING:
  case SUB_XCLIENT:
    if (!last)
      return TRUE;
    if (code != 220) {
      if (s->sub_step == SUB_XCLIENT) {
        g_message("submission: backend refused XCLIENT (%s): list usherd in its "
                  "login_trusted_networks", line);
        sub_send_login(s); /* XCLIENT is done (refused): log in without it */
        return TRUE;
      }
      backend_failed(s, line);
      return FALSE;
    }
    g_string_truncate(s->bcaps, 0);
    s->reply_lines = 0;
    to_backend_fmt(s, "EHLO %s\r\n", s->helo != NULL ? s->helo : "usher");
    s->sub_step = SUB_EHLO;
    session_flush_backend(s); /* may close s: the caller looks it up again */
    return TRUE;
  case SUB_EHLO:
    if (code != 250) {
      backend_failed(s, line);
      return FALSE;
    }
    /* The first line names the host; the others are keywords. */
    if (s->reply_lines++ > 0) {
      if (g_str_has_prefix(text, "XCLIENT") && (text[7] == '\0' || text[7] == ' '))
        s->backend_xclient = TRUE;
      else if (!g_str_has_prefix(text, "AUTH") && g_ascii_strcasecmp(text, "STARTTLS") != 0 &&
               text[0] != '\0')
        g_string_append_printf(s->bcaps, "%s\r\n", text);
    }
    if (last)
      sub_send_login(s);
    return TRUE;
  case SUB_AUTH:
    break;
  }
  if (!last)
    return TRUE;
  if (code == 235) {
    login_accepted(s, line);
    return TRUE;
  }
  if (code == 334) {
    backend_failed(s, "the backend wants an AUTH continuation");
    return FALSE;
  }
  return login_refused(s, line);
}

/* ---- Accepting -------------------------------------------------------------------------------------- */

void
proxy_address_text(const struct sockaddr_storage *ss, char ip[USHER_IP_STRLEN], guint16 *port)
{
  g_autoptr(GSocketAddress) a =
    g_socket_address_new_from_native((gpointer)ss, sizeof(*ss));
  UsherIp uip = {0};
  if (a != NULL && usherd_ip_from_gaddress(a, &uip)) {
    usher_ip_to_string(&uip, ip);
    *port = g_inet_socket_address_get_port(G_INET_SOCKET_ADDRESS(a));
  } else {
    g_strlcpy(ip, "?", USHER_IP_STRLEN);
    *port = 0;
  }
}

/* accept4() found no descriptor (or memory) for a waiting client. The listener stays readable
 * while the client waits in the backlog, so a level-triggered watch would spin; it rests until
 * the next tick (half a second) instead, as nginx does, and the kernel keeps the clients
 * queued meanwhile. Counted; logged once. */
static void
listener_out_of_fds(Listener *l, int err)
{
  Proxy *p = l->w->proxy;
  proxy_stat_add(p, &p->stats.accept_fd_exhausted, 1);
  if (!l->paused) {
    l->paused = TRUE;
    poller_modify(l->w->poller, l->watch, 0);
  }
  if (g_atomic_int_compare_and_exchange(&p->fd_warned, 0, 1)) {
    g_mutex_lock(&p->lock);
    guint total = p->total;
    g_mutex_unlock(&p->lock);
    g_warning("proxy: cannot accept a client: %s (%u proxied connections now, room for %u "
              "under the open-files limit): the listener rests for up to %d ms each time; "
              "raise LimitNOFILE or lower [proxy] max_connections (logged once, counted in "
              "usher_proxy_accept_fd_exhausted_total)",
              g_strerror(err), total, p->fd_ceiling, TICK_MS);
  }
}

static void
on_listener(gpointer data, guint32 events)
{
  Listener *l = data;
  Worker *w = l->w;
  (void)events;
  Proxy *p = w->proxy;
  const UsherConfig *c = p->u->config;
  for (int i = 0; i < ACCEPT_BATCH; i++) {
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    int fd = accept4(l->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      int err = errno;
      if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM)
        listener_out_of_fds(l, err);
      if (err == ECONNABORTED || err == EPROTO || err == EPERM)
        continue; /* that client is gone or refused by a firewall rule; the next may be there */
      break;
    }
    char ip[USHER_IP_STRLEN] = "unix";
    guint16 port = 0;
    if (!l->unix_socket)
      proxy_address_text(&ss, ip, &port);
    /* A trusted load balancer speaks for many clients: the per-address limit applies to the
     * client its PROXY header names. */
    UsherIp peer;
    gboolean trusted = l->proto != PROTO_LMTP && c->trusted_proxies->len > 0 &&
                       usher_ip_parse(ip, -1, &peer) && proxy_in_nets(c->trusted_proxies, &peer);
    if (!proxy_admit(p, TRUE, trusted || l->unix_socket ? NULL : ip)) {
      /* Plaintext clients are told why; a TLS client would read the words as a broken
       * handshake, so it only sees the close. */
      const char *busy = busy_text(l->proto);
      if (!l->tls)
        (void)send(fd, busy, strlen(busy), MSG_NOSIGNAL | MSG_DONTWAIT);
      close(fd);
      continue;
    }
    if (l->proto == PROTO_LMTP) {
      lmtp_accept(w, l, fd, ip, port);
      continue;
    }
    Session *s = g_new0(Session, 1);
    s->w = w;
    s->id = ++w->next_session;
    s->proto = l->proto;
    s->cfd = fd;
    s->bfd = -1;
    s->tls_listener = l->tls;
    s->counted = TRUE;
    s->counted_ip = !trusted;
    g_strlcpy(s->cip, ip, sizeof(s->cip));
    s->cport = port;
    if (l->ip[0] != '\0') {
      g_strlcpy(s->lip, l->ip, sizeof(s->lip));
      s->lport = l->port;
    } else {
      struct sockaddr_storage ls;
      socklen_t ll = sizeof(ls);
      if (getsockname(fd, (struct sockaddr *)&ls, &ll) == 0)
        proxy_address_text(&ls, s->lip, &s->lport);
    }
    /* TCP_NODELAY comes from the listener (Linux copies it to accepted sockets). */
    s->deadline_us = s->login_deadline_us =
      g_get_monotonic_time() + (gint64)c->proxy_login_timeout_secs * G_USEC_PER_SEC;
    s->link.data = s;
    g_queue_push_tail_link(&w->sessions, &s->link);
    g_hash_table_insert(w->by_id, &s->id, s);
    s->cwatch = poller_add(w->poller, fd, EPOLLIN, on_client, s);
    if (trusted) {
      s->state = S_PROXY_HEADER; /* no greeting before the header */
      s->pheader = usher_proxy_header_new();
      continue;
    }
    if (l->tls && !tls_start(s))
      continue;
    greet(s); /* queued until the handshake is done, on a TLS listener */
    if (l->tls)
      (void)tls_handshake(s);
    else
      session_flush_client(s);
  }
}

/* ---- Timers: login timeouts, refreshes ----------------------------------------------------------- */

typedef struct {
  Proxy *proxy;
  GPtrArray *users;
} RefreshJob;

static void
refresh_job_free(gpointer data)
{
  RefreshJob *j = data;
  g_ptr_array_unref(j->users);
  g_free(j);
}

static void
refresh_on_core(gpointer data)
{
  RefreshJob *j = data;
  Usherd *u = j->proxy->u;
  UsherNow now = usherd_now();
  for (guint i = 0; i < j->users->len; i++)
    usher_director_user_refresh(u->director, now, g_ptr_array_index(j->users, i));
  usherd_core_after_call(u);
  refresh_job_free(j);
}

static gboolean
on_tick(gpointer data)
{
  Worker *w = data;
  gint64 now = g_get_monotonic_time();
  for (guint i = 0; i < w->listeners->len; i++) {
    Listener *l = g_ptr_array_index(w->listeners, i);
    if (l->paused) {
      l->paused = FALSE;
      poller_modify(w->poller, l->watch, EPOLLIN);
    }
  }
  lmtp_tick(w, now);
  if (w->spliced > 0 || w->splice_refused > 0) {
    proxy_stat_add(w->proxy, &w->proxy->stats.spliced_bytes, (gint64)w->spliced);
    proxy_stat_add(w->proxy, &w->proxy->stats.splice_pipes_refused, (gint64)w->splice_refused);
    w->spliced = w->splice_refused = 0;
  }
  for (GList *l = w->sessions.head; l != NULL;) {
    Session *s = l->data;
    l = l->next;
    if ((s->state == S_PROXYING && !s->client_eof && !s->backend_eof) || s->deadline_us > now)
      continue;
    if (s->state == S_PROXYING) {
      session_end(s, s->backend_eof ? "the client did not take the backend's last bytes in time"
                                     : "the backend did not close after the client's end");
      continue;
    }
    if (s->state == S_PROXY_HEADER) {
      proxy_stat_add(w->proxy, &w->proxy->stats.prelogin_timeouts, 1);
      session_close(s, "no PROXY header before the login timeout");
    } else if (s->state == S_PRELOGIN) {
      proxy_stat_add(w->proxy, &w->proxy->stats.prelogin_timeouts, 1);
      say_bye(s, "Disconnected for inactivity before login.");
      session_end(s, "login timeout");
    } else if (s->state == S_CONNECTING || s->state == S_BACKEND_LOGIN) {
      backend_failed(s, "timed out");
    }
  }
  if (now >= w->next_refresh_us) {
    w->next_refresh_us = now + (gint64)w->proxy->refresh_secs * G_USEC_PER_SEC;
    /* Live sessions keep their users from expiring (Dovecot's proxy-notify), in one batch. */
    g_autoptr(GHashTable) seen = g_hash_table_new(g_str_hash, g_str_equal);
    RefreshJob *j = g_new0(RefreshJob, 1);
    j->proxy = w->proxy;
    j->users = g_ptr_array_new_with_free_func(g_free);
    for (GList *l = w->sessions.head; l != NULL; l = l->next) {
      Session *s = l->data;
      if (s->state == S_PROXYING && s->user != NULL && g_hash_table_add(seen, s->user))
        g_ptr_array_add(j->users, g_strdup(s->user));
    }
    if (j->users->len > 0)
      poller_post(w->proxy->core_poller, refresh_on_core, j, refresh_job_free);
    else
      refresh_job_free(j);
  }
  return G_SOURCE_CONTINUE;
}

/* ---- Backends taken down ----------------------------------------------------------------------------- */

/* A login that waits for its backend (connecting, or for the greeting and the login's answer)
 * asks the core again, which answers once the user's place is settled: a backend that is down or
 * mute is not waited for until the backend timeout, and a login cannot finish on the backend a
 * user is being moved away from (a user on two backends). */
static void
login_reroute(Session *s, const char *why)
{
  char ip[USHER_IP_STRLEN];
  g_message("the login of %s (session from %s:%u) waited for backend %s, which %s: routed again",
            s->user, s->cip, s->cport, usher_ip_to_string(&s->backend, ip), why);
  proxy_stat_add(s->w->proxy, &s->w->proxy->stats.logins_rerouted, 1);
  backend_close(s);
  session_route(s);
}

/* One worker's share: the backends up after a change of the host table. */
typedef struct {
  Worker *w;
  GArray *up; /* UsherIp */
} UpJob;

static void
up_job_free(gpointer data)
{
  UpJob *j = data;
  g_array_unref(j->up);
  g_free(j);
}

/* Logins still waiting for a backend that is no longer up are routed again: once the user is
 * placed elsewhere (a health decision that re-places the backend's users, a removal), they go
 * there instead of waiting out the backend timeout on a backend that is down, or mute (it accepts
 * connections and never greets: only a health check can tell). */
static void
up_on_worker(gpointer data)
{
  UpJob *j = data;
  Worker *w = j->w;
  for (GList *l = w->sessions.head; l != NULL;) {
    Session *s = l->data;
    l = l->next; /* a reroute may end the session */
    if (s->state != S_CONNECTING && s->state != S_BACKEND_LOGIN)
      continue;
    gboolean up = FALSE;
    for (guint i = 0; i < j->up->len && !up; i++)
      up = usher_ip_equal(&g_array_index(j->up, UsherIp, i), &s->backend);
    if (up)
      continue;
    login_reroute(s, "is no longer up");
  }
  up_job_free(j);
}

void
proxy_hosts_check(Proxy *p, UsherHostTable *hosts)
{
  guint64 generation = usher_host_table_get_generation(hosts);
  if (generation == p->hosts_generation || p->freeing)
    return;
  p->hosts_generation = generation;
  GArray *up = g_array_new(FALSE, FALSE, sizeof(UsherIp));
  for (guint i = 0; i < usher_host_table_n_hosts(hosts); i++) {
    const UsherHost *h = usher_host_table_nth(hosts, i);
    if (!h->down)
      g_array_append_val(up, h->ip);
  }
  for (guint i = 0; i < p->n_workers; i++) {
    UpJob *j = g_new(UpJob, 1);
    j->w = p->workers[i];
    j->up = g_array_ref(up);
    poller_post(p->workers[i]->poller, up_on_worker, j, up_job_free);
  }
  g_array_unref(up);
}

/* ---- Kicks -------------------------------------------------------------------------------------------- */

typedef struct {
  Proxy *proxy;
  guint64 kick;
  UsherKickKind kind;
  guint32 hash;
  UsherIp except;
  char *name;
  gint pending; /* workers still working on it */
} KickJob;

/* One worker's share of a kick. */
typedef struct {
  KickJob *job;
  Worker *w;
} KickPart;

static void
kick_job_free_all(gpointer data)
{
  KickJob *j = data;
  g_free(j->name);
  g_free(j);
}

static void
kick_done_on_core(gpointer data)
{
  KickJob *j = data;
  Usherd *u = j->proxy->u;
  usher_director_kick_done(u->director, usherd_now(), j->kick);
  usherd_core_after_call(u);
  kick_job_free_all(j);
}

/* A share never worked on (usherd is stopping): the last one releases the job. */
static void
kick_part_drop(gpointer data)
{
  KickPart *part = data;
  if (g_atomic_int_dec_and_test(&part->job->pending))
    kick_job_free_all(part->job);
  g_free(part);
}

static void
kick_on_worker(gpointer data)
{
  KickPart *part = data;
  KickJob *j = part->job;
  Worker *w = part->w;
  g_free(part);
  guint kicked = 0;
  for (GList *l = w->sessions.head; l != NULL;) {
    Session *s = l->data;
    l = l->next;
    /* A login still waiting for its backend is routed again (below) when the user moves or its
     * backend is flushed; an admin's kick of a user name leaves it alone. */
    gboolean waiting = s->state == S_CONNECTING || s->state == S_BACKEND_LOGIN;
    if (s->user == NULL || !(s->state == S_PROXYING || (waiting && j->kind != USHER_KICK_NAME)))
      continue;
    gboolean match = FALSE;
    if (j->kind == USHER_KICK_HASH)
      match = s->user_hash == j->hash &&
              (j->except.family == 0 || !usher_ip_equal(&j->except, &s->backend));
    else if (j->kind == USHER_KICK_NAME)
      match = strcmp(s->user, j->name) == 0;
    else if (j->kind == USHER_KICK_BACKEND)
      match = usher_ip_equal(&j->except, &s->backend);
    if (!match)
      continue;
    if (waiting) {
      login_reroute(s, j->kind == USHER_KICK_HASH ? "the user is moving away from"
                                                  : "is being flushed");
      continue;
    }
    kicked++;
    /* A BYE only where it cannot cut a line the backend was sending. */
    if (s->client_eol)
      say_bye(s, "Your session is moving to another server (Usher director).");
    session_end(s, "kicked by the director");
  }
  if (kicked > 0)
    proxy_stat_add(j->proxy, &j->proxy->stats.kicked, kicked);
  if (g_atomic_int_dec_and_test(&j->pending))
    poller_post(j->proxy->core_poller, kick_done_on_core, j, kick_job_free_all);
}

void
proxy_kick(Proxy *p, const UsherEffect *e)
{
  KickJob *j = g_new0(KickJob, 1);
  j->proxy = p;
  j->kick = e->kick.id;
  j->kind = e->kick.kind;
  j->hash = e->kick.hash;
  j->except = e->kick.except;
  j->name = g_strdup(e->kick.name);
  j->pending = (gint)p->n_workers;
  for (guint i = 0; i < p->n_workers; i++) {
    KickPart *part = g_new(KickPart, 1);
    part->job = j;
    part->w = p->workers[i];
    poller_post(p->workers[i]->poller, kick_on_worker, part, kick_part_drop);
  }
}

/* ---- Workers -------------------------------------------------------------------------------------- */

static int
open_listener(const UsherDirectorAddr *a, GError **error)
{
  g_autoptr(GSocketAddress) addr = usherd_gaddress_from_ip(&a->ip, a->port);
  struct sockaddr_storage ss;
  gsize sl = g_socket_address_get_native_size(addr);
  g_socket_address_to_native(addr, &ss, sizeof(ss), NULL);
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
      setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0 ||
      /* Inherited by every accepted socket: small replies leave at once, no setsockopt each. */
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0 ||
      bind(fd, (struct sockaddr *)&ss, (socklen_t)sl) != 0 || listen(fd, 1024) != 0) {
    int saved = errno;
    char ip[USHER_IP_STRLEN];
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(saved), "[proxy] listener %s:%u: %s",
                usher_ip_to_string(&a->ip, ip), a->port, g_strerror(saved));
    if (fd >= 0)
      close(fd);
    return -1;
  }
  return fd;
}

/* A UNIX socket for LMTP (the MTA's lmtp:unix:PATH), open to the socket's group and owner
 * (0660); a stale socket file from a previous run is replaced. */
static int
open_unix_listener(const char *path, GError **error)
{
  struct sockaddr_un sun = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof(sun.sun_path)) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                "[proxy] lmtp_socket %s: the path is too long", path);
    return -1;
  }
  g_strlcpy(sun.sun_path, path, sizeof(sun.sun_path));
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd >= 0)
    (void)unlink(path);
  if (fd < 0 || bind(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0 || chmod(path, 0660) != 0 ||
      listen(fd, 1024) != 0) {
    int saved = errno;
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(saved), "[proxy] lmtp_socket %s: %s",
                path, g_strerror(saved));
    if (fd >= 0)
      close(fd);
    return -1;
  }
  return fd;
}

/* Stopping: every session still open gets a goodbye it can read (when the backend is not in the
 * middle of a line) and is closed. On the worker's thread. */
static void
worker_close_all(Worker *w)
{
  while (w->sessions.head != NULL) {
    Session *s = w->sessions.head->data;
    if (s->client_eol || s->state != S_PROXYING)
      say_bye(s, "Server shutting down.");
    session_end(s, "usherd is stopping");
  }
  lmtp_close_all(w);
}

/* The workers after the first: a thread each. */
static gpointer
worker_main(gpointer data)
{
  Worker *w = data;
  g_main_context_push_thread_default(w->context);
  g_main_loop_run(w->loop);
  worker_close_all(w);
  g_main_context_pop_thread_default(w->context);
  return NULL;
}

static void
worker_free(Worker *w)
{
  for (guint i = 0; i < w->listeners->len; i++) {
    Listener *l = g_ptr_array_index(w->listeners, i);
    if (l->watch != NULL)
      poller_remove(w->poller, l->watch);
    close(l->fd);
  }
  g_ptr_array_unref(w->listeners);
  while (w->later.head != NULL)
    g_source_destroy(((SessionRef *)w->later.head->data)->source); /* unlinks it */
  if (w->tick != NULL) {
    g_source_destroy(w->tick);
    g_source_unref(w->tick);
  }
  g_ptr_array_unref(w->free_pipes);
  poller_free(w->poller);
  g_hash_table_unref(w->by_id);
  g_hash_table_unref(w->lmtp_by_id);
  if (w->loop != NULL)
    g_main_loop_unref(w->loop);
  g_main_context_unref(w->context);
  g_free(w);
}

static void
stop_accepting_on_worker(gpointer data)
{
  Worker *w = data;
  for (guint i = 0; i < w->listeners->len; i++) {
    Listener *l = g_ptr_array_index(w->listeners, i);
    if (l->watch != NULL)
      poller_remove(w->poller, l->watch);
    close(l->fd);
  }
  g_ptr_array_set_size(w->listeners, 0);
}

void
proxy_stop_accepting(Proxy *p)
{
  for (guint i = 0; i < p->n_workers; i++)
    poller_post(p->workers[i]->poller, stop_accepting_on_worker, p->workers[i], NULL);
}

guint
proxy_count_sessions(Proxy *p)
{
  g_mutex_lock(&p->lock);
  guint n = p->total;
  g_mutex_unlock(&p->lock);
  return n;
}

static void
quit_worker(gpointer data)
{
  g_main_loop_quit(((Worker *)data)->loop);
}

/* Raises the open-files limit to its hard maximum and returns how many proxied connections
 * fit under it: each holds two descriptors (client and backend; an LMTP transaction to several
 * backends holds more, a pre-login one fewer), each worker up to SPLICE_PIPES_MAX pipes of two,
 * and FD_RESERVE stay free for the rest of usherd. proxy_admit() refuses clients past it as at
 * max_connections, so a full table is a polite BYE rather than a failing accept(). */
static guint
fd_ceiling(guint n_workers, rlim_t *limit_out)
{
  struct rlimit rl;
  *limit_out = RLIM_INFINITY;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
    return G_MAXUINT;
  if (rl.rlim_cur != rl.rlim_max) {
    struct rlimit raised = {rl.rlim_max, rl.rlim_max};
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0)
      rl.rlim_cur = rl.rlim_max;
  }
  *limit_out = rl.rlim_cur;
  if (rl.rlim_cur == RLIM_INFINITY)
    return G_MAXUINT;
  guint64 reserve = (guint64)n_workers * SPLICE_PIPES_MAX * 2 + FD_RESERVE;
  guint64 room = rl.rlim_cur > reserve ? (rl.rlim_cur - reserve) / 2 : 1;
  return (guint)MIN(MAX(room, 1), G_MAXUINT);
}

Proxy *
proxy_new(Usherd *u, GError **error)
{
  const UsherConfig *c = u->config;
  if (c->imap_listen->len == 0 && c->pop3_listen->len == 0 && c->imaps_listen->len == 0 &&
      c->pop3s_listen->len == 0 && c->lmtp_listen->len == 0 && c->lmtp_socket[0] == '\0' &&
      c->sieve_listen->len == 0 && c->submission_listen->len == 0 &&
      c->submissions_listen->len == 0)
    return NULL;
  SSL_CTX *tls_ctx = NULL;
  if (c->tls_cert[0] != '\0' &&
      (tls_ctx = usherd_tls_server_new(c, error)) ==
        NULL)
    return NULL;
  Proxy *p = g_new0(Proxy, 1);
  p->u = u;
  g_mutex_init(&p->lock);
  p->per_ip = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  p->backend_caps = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
  p->imap_caps = g_strdup(CAPS_BACKENDS_DEFAULT);
  p->registry = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free, session_info_free);
  p->routes = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL, route_job_free);
  p->hasher = usher_director_get_hasher(u->director);
  p->imap_port = c->backend_imap_port;
  p->pop3_port = c->backend_pop3_port;
  p->lmtp_port = c->backend_lmtp_port;
  p->sieve_port = c->backend_sieve_port;
  p->submission_port = c->backend_submission_port;
  p->sieve_caps = g_strdup(SIEVE_CAPS_DEFAULT);
  p->submission_caps = g_strdup(SUBMISSION_CAPS_DEFAULT);
  p->lmtp_caps = g_strdup("8BITMIME\r\n"); /* until a backend has answered LHLO */
  p->lmtp_user_format = usher_hash_format_new(c->lmtp_user_format, NULL); /* checked by config */
  p->recipient_delimiter = g_strdup(c->recipient_delimiter);
  p->lmtp_spool_dir = g_strdup(c->lmtp_spool_dir);
  p->lmtp_spool_max = c->lmtp_spool_max;
  auth_lists_init(p, c->proxy_auth_mechs);
  p->tls_ctx = tls_ctx;
  p->tls_enabled = tls_ctx != NULL;
  p->refresh_secs = MAX(usher_director_get_user_expire_secs(u->director) / 4, REFRESH_MIN_SECS);
  p->n_workers = c->proxy_workers != 0 ? c->proxy_workers : MAX(g_get_num_processors(), 1);
  p->workers = g_new0(Worker *, p->n_workers);
  rlim_t nofile;
  p->fd_ceiling = fd_ceiling(p->n_workers, &nofile);
  if (p->fd_ceiling < c->proxy_max_connections)
    g_warning("proxy: the open-files limit (%llu) leaves room for %u proxied connections, "
              "fewer than [proxy] max_connections = %u: clients past %u are refused as at "
              "max_connections; raise LimitNOFILE to %llu for the full count",
              (unsigned long long)nofile, p->fd_ceiling, c->proxy_max_connections,
              p->fd_ceiling,
              (unsigned long long)c->proxy_max_connections * 2 +
                  (unsigned long long)p->n_workers * SPLICE_PIPES_MAX * 2 + FD_RESERVE);
  if ((c->lmtp_listen->len > 0 || c->lmtp_socket[0] != '\0') && p->lmtp_spool_dir[0] != '\0') {
    g_autoptr(GError) why = NULL;
    int fd = lmtp_spool_open(p->lmtp_spool_dir, &why);
    if (fd < 0) {
      g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED,
                  "[proxy] lmtp_spool_dir: %s (name a writable directory, or set it empty to "
                  "spool nowhere)",
                  why->message);
      proxy_free(p);
      return NULL;
    }
    close(fd);
  }
  for (guint i = 0; i < p->n_workers; i++) {
    Worker *w = g_new0(Worker, 1);
    p->workers[i] = w;
    w->proxy = p;
    w->index = i;
    /* Worker 0 shares the core thread (its lookups cross no thread); the others get their own. */
    w->context = i == 0 ? g_main_context_ref(u->context) : g_main_context_new();
    w->loop = i == 0 ? NULL : g_main_loop_new(w->context, FALSE);
    w->poller = poller_new(w->context);
    w->by_id = g_hash_table_new(g_int64_hash, g_int64_equal);
    w->lmtp_by_id = g_hash_table_new(g_int64_hash, g_int64_equal);
    g_queue_init(&w->lmtp_sessions);
    w->free_pipes = g_ptr_array_new_with_free_func(pipe_free);
    w->listeners = g_ptr_array_new_with_free_func(g_free);
    g_queue_init(&w->sessions);
    w->next_refresh_us = g_get_monotonic_time() + (gint64)p->refresh_secs * G_USEC_PER_SEC;
    const struct {
      GArray *addrs;
      Proto proto;
      gboolean tls;
    } kinds[] = {{c->imap_listen, PROTO_IMAP, FALSE},
                 {c->pop3_listen, PROTO_POP3, FALSE},
                 {c->imaps_listen, PROTO_IMAP, TRUE},
                 {c->pop3s_listen, PROTO_POP3, TRUE},
                 {c->lmtp_listen, PROTO_LMTP, FALSE},
                 {c->sieve_listen, PROTO_SIEVE, FALSE},
                 {c->submission_listen, PROTO_SUBMISSION, FALSE},
                 {c->submissions_listen, PROTO_SUBMISSION, TRUE}};
    for (gsize k = 0; k < G_N_ELEMENTS(kinds); k++) {
      for (guint a = 0; a < kinds[k].addrs->len; a++) {
        int fd = open_listener(&g_array_index(kinds[k].addrs, UsherDirectorAddr, a), error);
        if (fd < 0) {
          proxy_free(p);
          return NULL;
        }
        Listener *l = g_new0(Listener, 1);
        l->w = w;
        l->fd = fd;
        l->proto = kinds[k].proto;
        l->tls = kinds[k].tls;
        const UsherDirectorAddr *at = &g_array_index(kinds[k].addrs, UsherDirectorAddr, a);
        usher_ip_to_string(&at->ip, l->ip);
        if (strcmp(l->ip, "0.0.0.0") == 0 || strcmp(l->ip, "::") == 0)
          l->ip[0] = '\0';
        l->port = at->port;
        l->watch = poller_add(w->poller, fd, EPOLLIN, on_listener, l);
        g_ptr_array_add(w->listeners, l);
      }
    }
    if (i == 0 && c->lmtp_socket[0] != '\0') {
      /* One UNIX socket, on the first worker (SO_REUSEPORT is for TCP). */
      int fd = open_unix_listener(c->lmtp_socket, error);
      if (fd < 0) {
        proxy_free(p);
        return NULL;
      }
      Listener *l = g_new0(Listener, 1);
      l->w = w;
      l->fd = fd;
      l->proto = PROTO_LMTP;
      l->unix_socket = TRUE;
      l->watch = poller_add(w->poller, fd, EPOLLIN, on_listener, l);
      g_ptr_array_add(w->listeners, l);
    }
    w->tick = g_timeout_source_new(TICK_MS);
    g_source_set_callback(w->tick, on_tick, w, NULL);
    g_source_attach(w->tick, w->context);
  }
  p->core_poller = p->workers[0]->poller;
  for (guint i = 1; i < p->n_workers; i++) {
    g_autofree char *name = g_strdup_printf("usherd-worker%u", i);
    p->workers[i]->thread = g_thread_new(name, worker_main, p->workers[i]);
  }
  g_message("proxy: %u worker threads; listeners: %u IMAP, %u POP3, %u IMAPS, %u POP3S, "
            "%u ManageSieve, %u submission, %u submissions, %u LMTP%s%s%s",
            p->n_workers, c->imap_listen->len, c->pop3_listen->len, c->imaps_listen->len,
            c->pop3s_listen->len, c->sieve_listen->len, c->submission_listen->len,
            c->submissions_listen->len, c->lmtp_listen->len,
            c->lmtp_socket[0] != '\0' ? " and LMTP on " : "", c->lmtp_socket,
            tls_ctx != NULL ? "; STARTTLS/STLS offered" : "");
  return p;
}

void
proxy_free(Proxy *p)
{
  if (p == NULL)
    return;
  /* The threads stop first: what they post to the core while closing their sessions is
   * released with worker 0's poller, the core's, freed last. */
  p->freeing = TRUE;
  for (guint i = p->n_workers; i-- > 0;) {
    Worker *w = p->workers[i];
    if (w == NULL)
      continue;
    if (w->thread != NULL) {
      poller_post(w->poller, quit_worker, w, NULL);
      g_thread_join(w->thread);
    } else if (i == 0) {
      worker_close_all(w); /* on the core thread, which is this one */
    }
    worker_free(w);
  }
  g_free(p->workers);
  g_hash_table_unref(p->routes);
  g_hash_table_unref(p->per_ip);
  g_hash_table_unref(p->backend_caps);
  g_free(p->imap_caps);
  g_hash_table_unref(p->registry);
  if (p->lmtp_user_format != NULL)
    usher_hash_format_free(p->lmtp_user_format);
  g_free(p->recipient_delimiter);
  g_free(p->lmtp_spool_dir);
  g_free(p->auth_imap);
  g_free(p->auth_names);
  g_free(p->auth_lines);
  g_free(p->auth_plain_login);
  g_free(p->sieve_caps);
  g_free(p->submission_caps);
  g_free(p->lmtp_caps);
  if (p->u->config->lmtp_socket[0] != '\0')
    (void)unlink(p->u->config->lmtp_socket);
  if (p->tls_ctx != NULL)
    SSL_CTX_free(p->tls_ctx);
  g_mutex_clear(&p->lock);
  g_free(p);
}

gboolean
proxy_reload_tls(Proxy *p, GError **error)
{
  const UsherConfig *c = p->u->config;
  if (p->tls_ctx == NULL)
    return TRUE;
  SSL_CTX *fresh = usherd_tls_server_new(c, error);
  if (fresh == NULL)
    return FALSE;
  g_mutex_lock(&p->lock);
  SSL_CTX *old = p->tls_ctx;
  p->tls_ctx = fresh;
  g_mutex_unlock(&p->lock);
  SSL_CTX_free(old); /* sessions using it hold their own references */
  return TRUE;
}

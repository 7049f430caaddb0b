/* lmtp.c - the LMTP proxy: every recipient delivered on the backend that owns its user now.
 *
 * One client session (an MTA's connection) runs on one worker, like the IMAP/POP3 sessions.
 * Each RCPT is looked up in the core (proxy_route, as a login is) and sent on to its backend
 * over a backend connection of this session: one per backend, opened at the first recipient
 * that needs it, with LHLO and XCLIENT (the MTA's address, for Dovecot's
 * login_trusted_networks), kept for the next transactions of the session. The RCPT reply the
 * client sees is its backend's own. The message (DATA, or BDAT chunks turned into one DATA) is
 * streamed to every backend of the transaction as it arrives; what a slow backend has not taken
 * past LMTP_QUEUE_HIGH bytes waits in a spool file ([proxy] lmtp_spool_dir), so the others and
 * the client go on at their own pace and memory stays bounded whatever the size; reading the
 * client pauses only while a backend's spool holds lmtp_spool_max bytes (or, without a spool,
 * while a backend has LMTP_QUEUE_HIGH bytes unwritten). The
 * replies after the body come back per recipient, in RCPT order (RFC 2033), each from its own
 * backend: a backend that fails or times out at any point gets 4xx for exactly its recipients,
 * and every other recipient keeps what its backend said.
 *
 * Replies to the client go out in command order (PIPELINING): each command leaves a slot, filled
 * at once or when its backend answers, and the answers go out together once none before the
 * last is owed (one write for MAIL, RCPT and DATA of a pipelined group). Commands that change
 * the transaction (MAIL, RSET, LHLO, QUIT) wait until every recipient before them has its
 * answer; DATA (and a first BDAT) only until each recipient has its backend: it goes to the
 * backends behind their RCPTs, in the same write (RFC 2033 makes PIPELINING mandatory for LMTP
 * servers), and a backend whose recipients all failed refuses it itself (RFC 2033: 503).
 */
#include "daemon/proxy-private.h"

#include "daemon/usherd.h"
#include "libcore/proxy-header.h"
#include "libcore/smtp-cmd.h"
#include "libcore/user-hash.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define LMTP_READ_CHUNK 65536 /* messages are bulk: fewer, larger reads */
#define LMTP_COMMAND_READ 8192 /* a read outside a message (commands; BDAT's first chunk) */
#define LMTP_CLIENT_TIMEOUT_SECS 300       /* RFC 5321 4.5.3.2.7: at least 5 minutes */
#define LMTP_BACKEND_TIMEOUT_SECS 60       /* connect, greeting, LHLO, MAIL, RCPT, DATA, body */
#define LMTP_BACKEND_FINAL_TIMEOUT_SECS 600 /* after the body: delivery (RFC 5321: 10 minutes) */
#define LMTP_QUEUE_HIGH (1024 * 1024)      /* a backend this far behind pauses the client */
#define LMTP_CLIENT_OUT_MAX (1024 * 1024)  /* replies a client leaves unread: dropped */
#define LMTP_MAX_RECIPIENTS 1000           /* per transaction (RFC 5321 asks for 100 at least) */
#define LMTP_SLOTS_MAX 4096 /* answers queued while one is owed: more commands wait unread */
#define LMTP_BACKEND_LINE_MAX 4096
#define LMTP_SPOOL_READ (256 * 1024) /* read back from a spool file at a time */

typedef struct LmtpBackend LmtpBackend;

typedef enum {
  RCPT_ROUTING = 0, /* asking the core */
  RCPT_WAITING,     /* sent to (or queued for) its backend */
  RCPT_ACCEPTED,    /* 2xx from the backend */
  RCPT_REFUSED,     /* anything else; the client has the reason */
} RcptState;

typedef struct {
  char *path;   /* as the client sent it */
  char *params; /* its ESMTP parameters */
  guint64 request;
  RcptState state;
  LmtpBackend *b;
  char *reply; /* the RCPT answer for the client, once known */
  char *final; /* the answer after the body, once known (accepted recipients only) */
} Rcpt;

typedef enum {
  EXP_GREETING = 0,
  EXP_LHLO,
  EXP_XCLIENT,
  EXP_MAIL,
  EXP_RCPT,
  EXP_DATA,
  EXP_FINAL,
  EXP_RSET,
} ExpKind;

/* A reply a backend owes, in the order the commands went out. */
typedef struct {
  ExpKind kind;
  Rcpt *rcpt; /* EXP_RCPT, EXP_FINAL */
} Expect;

/* A command held until the backend's LHLO (and XCLIENT) are done. */
typedef struct {
  ExpKind kind;
  Rcpt *rcpt;
  char *line;
} Deferred;

struct LmtpBackend {
  LmtpSession *s;
  UsherIp ip;
  char ip_text[USHER_IP_STRLEN];
  int fd;
  PollerWatch *watch;
  gboolean connected;
  gboolean ready;        /* greeting, LHLO (and XCLIENT) done: commands go straight out */
  gboolean xclient_sent; /* the LHLO after XCLIENT is the last one */
  gboolean failed;
  GByteArray *out;
  gsize out_off;
  GString *line;  /* a reply line being read */
  GString *reply; /* the reply so far (lines joined by CRLF) */
  GQueue expect;  /* Expect* */
  GQueue deferred; /* Deferred* */
  /* The transaction */
  gboolean in_tx;     /* MAIL went out */
  char *mail_refused; /* the backend refused MAIL: this answer goes to each of its recipients */
  gboolean data_sent; /* DATA went out, waiting for 354 */
  gboolean data_ok;   /* 354 came: the body goes here */
  gboolean end_sent;  /* the message's end went out: the backend resets itself after its replies */
  gboolean line_start; /* BDAT -> DATA: the next byte starts a line (dot-stuffing) */
  gint64 deadline_us;  /* for the oldest owed reply; 0 when none is owed */
  gint64 write_deadline_us; /* queued bytes must move by then (a backend that stops reading) */
  /* Message bytes past LMTP_QUEUE_HIGH wait in a file of lmtp_spool_dir (-1: none), written at
   * spool_w and read back from spool_r as the socket takes them. */
  int spool_fd;
  guint64 spool_w, spool_r;
  gboolean spool_refused; /* no spool file could be made for this message */
};

typedef enum {
  TX_NONE = 0,
  TX_MAIL,      /* MAIL given, recipients coming */
  TX_DATA_WAIT, /* DATA sent to the backends, waiting for their 354 */
  TX_BODY,      /* the body goes to the backends */
  TX_FINAL,     /* the body is complete, waiting for the replies per recipient */
} TxState;

typedef enum {
  SLOT_TEXT = 0,
  SLOT_RCPT,
  SLOT_FINAL,
} SlotKind;

typedef struct {
  SlotKind kind;
  char *text;
  Rcpt *rcpt;
} Slot;

struct LmtpSession {
  Worker *w;
  guint64 id;
  GList link;
  int fd;
  PollerWatch *watch;
  char cip[USHER_IP_STRLEN], lip[USHER_IP_STRLEN];
  guint16 cport, lport;
  gboolean unix_client;
  UsherSmtpReader *reader;
  GByteArray *out;
  gsize out_off;
  GQueue slots; /* Slot*: answers in command order */
  char *helo;
  TxState tx;
  char *mail_path, *mail_params;
  GPtrArray *rcpts;    /* Rcpt*, this transaction */
  GPtrArray *backends; /* LmtpBackend*, kept across transactions */
  UsherSmtpCmd held;   /* a command waiting for the recipients before it */
  gboolean has_held;
  gboolean bdat;         /* this transaction's body comes in BDAT chunks */
  gboolean bdat_last;    /* the chunk being read is the last */
  guint64 chunk_bytes;   /* size of the BDAT chunk being read */
  gboolean discard_body; /* a BDAT chunk that no backend will take (its answer is a failure) */
  gboolean skip_chunk;   /* a BDAT chunk outside a transaction: read and dropped, answered */
  char *data_failure;    /* DATA/BDAT refused by every backend: the answer */
  gboolean quitting;
  gboolean client_eof; /* the MTA ended its side: what it sent is answered, then the close */
  gboolean client_ending; /* its FIN is in (EPOLLRDHUP or EOF): no message end is passed on */
  gboolean body_cut;      /* this message will not be delivered (body_cut) */
  gboolean client_gone;
  gint64 deadline_us;
};

/* ---- Small helpers --------------------------------------------------------------------------- */

static void session_close(LmtpSession *s, const char *why);
static void session_process(LmtpSession *s);
static void backend_fail(LmtpBackend *b, const char *why);
static void update_interest(LmtpSession *s);

static void
count(LmtpSession *s, guint64 *field, gint64 delta)
{
  proxy_stat_add(s->w->proxy, field, delta);
}

#define STATS(s) (&(s)->w->proxy->stats)

static void
rcpt_free(gpointer data)
{
  Rcpt *r = data;
  g_free(r->path);
  g_free(r->params);
  g_free(r->reply);
  g_free(r->final);
  g_free(r);
}

static void
slot_free(Slot *slot)
{
  g_free(slot->text);
  g_free(slot);
}

static void
add_text(LmtpSession *s, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

/* An answer known now, in its place among the others. */
static void
add_text(LmtpSession *s, const char *fmt, ...)
{
  va_list args;
  va_start(args, fmt);
  Slot *slot = g_new0(Slot, 1);
  slot->kind = SLOT_TEXT;
  /* Most answers are fixed texts ("250 2.1.0 OK"): no formatting for them. */
  slot->text = strchr(fmt, '%') == NULL ? g_strdup(fmt) : g_strdup_vprintf(fmt, args);
  va_end(args);
  g_queue_push_tail(&s->slots, slot);
}

static void
add_rcpt_slot(LmtpSession *s, SlotKind kind, Rcpt *r)
{
  Slot *slot = g_new0(Slot, 1);
  slot->kind = kind;
  slot->rcpt = r;
  g_queue_push_tail(&s->slots, slot);
}

/* Moves the answers that are known, from the oldest on, to the client's output. */
static void
slots_to_output(LmtpSession *s)
{
  Slot *slot;
  while ((slot = g_queue_peek_head(&s->slots)) != NULL) {
    const char *text = slot->kind == SLOT_TEXT    ? slot->text
                       : slot->kind == SLOT_RCPT ? slot->rcpt->reply
                                                 : slot->rcpt->final;
    if (text == NULL)
      break;
    if (s->out == NULL)
      s->out = g_byte_array_new();
    g_byte_array_append(s->out, (const guint8 *)text, (guint)strlen(text));
    g_byte_array_append(s->out, (const guint8 *)"\r\n", 2);
    slot_free(g_queue_pop_head(&s->slots));
  }
}

/* An answer still owed (by the core or a backend) holds back the known ones after it, which
 * slots_to_output left in place, and those before it: the client of a pipelined group reads
 * them together, and gets them as soon as the last is known. The answer to DATA is owed the same
 * way while the backends have not answered theirs (it becomes a slot only then): a client that
 * sent DATA waits for that answer before anything else, so the answers to its MAIL and RCPTs go
 * with it, in one write and one wakeup of the client, instead of ahead of it. The answers after
 * a message are the exception: each goes out once it and those before it are known (RFC 2033
 * allows it), so an MTA that gives up waiting for a slow backend already has the other
 * backends' answers, and does not send their recipients the message again. */
static gboolean
answers_writable(LmtpSession *s)
{
  if (s->tx == TX_DATA_WAIT)
    return FALSE;
  return g_queue_is_empty(&s->slots) || s->tx == TX_FINAL;
}

/* Writes what the client takes, once it may; FALSE if the session was closed. */
static gboolean
client_flush(LmtpSession *s)
{
  slots_to_output(s);
  while (answers_writable(s) && s->out != NULL && s->out_off < s->out->len) {
    ssize_t n = send(s->fd, s->out->data + s->out_off, s->out->len - s->out_off, MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
      break;
    if (n <= 0) {
      session_close(s, n < 0 ? g_strerror(errno) : "client closed");
      return FALSE;
    }
    s->out_off += (gsize)n;
  }
  if (s->out != NULL && s->out_off == s->out->len) {
    g_clear_pointer(&s->out, g_byte_array_unref);
    s->out_off = 0;
  } else if (s->out != NULL && s->out->len - s->out_off > LMTP_CLIENT_OUT_MAX) {
    session_close(s, "the client does not read its replies");
    return FALSE;
  }
  if (s->quitting && s->out == NULL && g_queue_is_empty(&s->slots)) {
    session_close(s, "QUIT");
    return FALSE;
  }
  return TRUE;
}

/* "<path>" for messages, as the recipient was written. */
static const char *
rcpt_name(const Rcpt *r)
{
  return r->path;
}

/* ---- Backends -------------------------------------------------------------------------------- */

static void on_backend(gpointer data, guint32 events);

/* ---- Spool files ----------------------------------------------------------------------------- */

int
lmtp_spool_open(const char *dir, GError **error)
{
  /* Nameless where the file system can (nothing to clean up after a crash); else a name
   * unlinked at once. */
  int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0 && (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL)) {
    g_autofree char *path = g_build_filename(dir, "usherd-lmtp-XXXXXX", NULL);
    fd = g_mkstemp_full(path, O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0)
      (void)unlink(path);
  }
  if (fd < 0)
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno),
                "cannot create a spool file in %s: %s", dir, g_strerror(errno));
  return fd;
}

static void
spool_close(LmtpBackend *b)
{
  if (b->spool_fd >= 0)
    close(b->spool_fd);
  b->spool_fd = -1;
  b->spool_w = b->spool_r = 0;
}

/* From now on b's message bytes go to a spool file; FALSE (they stay in memory) without one. */
static gboolean
spool_start(LmtpBackend *b)
{
  Proxy *p = b->s->w->proxy;
  if (p->lmtp_spool_dir[0] == '\0')
    return FALSE;
  g_autoptr(GError) error = NULL;
  b->spool_fd = lmtp_spool_open(p->lmtp_spool_dir, &error);
  if (b->spool_fd < 0) {
    b->spool_refused = TRUE; /* not tried again for this message */
    count(b->s, &STATS(b->s)->lmtp_spool_errors, 1);
    g_warning("lmtp %u/%" G_GUINT64_FORMAT ": backend %s is slow and %s: its message waits in "
              "memory, the client is paused",
              b->s->w->index, b->s->id, b->ip_text, error->message);
    return FALSE;
  }
  b->spool_w = b->spool_r = 0;
  return TRUE;
}

/* Appends to b's spool file; a file that cannot take them fails the backend (its recipients get
 * 451 and are retried by the MTA: nothing is lost). */
static void
spool_append(LmtpBackend *b, const guint8 *data, gsize len)
{
  while (len > 0) {
    ssize_t n = pwrite(b->spool_fd, data, len, (off_t)b->spool_w);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      count(b->s, &STATS(b->s)->lmtp_spool_errors, 1);
      g_autofree char *why =
        g_strdup_printf("spool file: %s", n < 0 ? g_strerror(errno) : "nothing written");
      backend_fail(b, why);
      return;
    }
    b->spool_w += (guint64)n;
    count(b->s, &STATS(b->s)->lmtp_spooled_bytes, n);
    data += n;
    len -= (gsize)n;
  }
}

/* The next spooled bytes into b's (empty) queue; FALSE when there are none (or b failed). Once
 * all are read back the file goes: later bytes stay in memory until b falls behind again. */
static gboolean
spool_refill(LmtpBackend *b)
{
  if (b->spool_fd < 0 || b->spool_r == b->spool_w)
    return FALSE;
  gsize want = (gsize)MIN(b->spool_w - b->spool_r, (guint64)LMTP_SPOOL_READ);
  b->out = g_byte_array_sized_new((guint)want);
  g_byte_array_set_size(b->out, (guint)want);
  b->out_off = 0;
  ssize_t n;
  do
    n = pread(b->spool_fd, b->out->data, want, (off_t)b->spool_r);
  while (n < 0 && errno == EINTR);
  if (n <= 0) {
    count(b->s, &STATS(b->s)->lmtp_spool_errors, 1);
    g_autofree char *why =
      g_strdup_printf("spool file: %s", n < 0 ? g_strerror(errno) : "shorter than written");
    backend_fail(b, why);
    return FALSE;
  }
  g_byte_array_set_size(b->out, (guint)n);
  b->spool_r += (guint64)n;
  if (b->spool_r == b->spool_w)
    spool_close(b);
  return TRUE;
}

static gboolean
backend_flush(LmtpBackend *b)
{
  gboolean moved = FALSE;
  for (;;) {
    while (b->connected && b->out != NULL && b->out_off < b->out->len) {
      ssize_t n = send(b->fd, b->out->data + b->out_off, b->out->len - b->out_off, MSG_NOSIGNAL);
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        break;
      if (n <= 0) {
        backend_fail(b, n < 0 ? g_strerror(errno) : "closed");
        return FALSE;
      }
      b->out_off += (gsize)n;
      moved = TRUE;
    }
    if (b->out != NULL && b->out_off == b->out->len) {
      g_clear_pointer(&b->out, g_byte_array_unref);
      b->out_off = 0;
    }
    if (b->out != NULL || !b->connected || !spool_refill(b))
      break;
  }
  if (b->failed)
    return FALSE;
  /* A message being written owes no reply yet: what times it out is its bytes not moving. The
   * delivery's own time starts with its last byte (not when the client finished, which may be
   * long before with a spool): while bytes move, it starts again. */
  Expect *head = g_queue_peek_head(&b->expect);
  if (moved && head != NULL && head->kind == EXP_FINAL)
    b->deadline_us =
      g_get_monotonic_time() + (gint64)LMTP_BACKEND_FINAL_TIMEOUT_SECS * G_USEC_PER_SEC;
  if (b->out == NULL)
    b->write_deadline_us = 0;
  else if (moved || b->write_deadline_us == 0)
    b->write_deadline_us =
      g_get_monotonic_time() + (gint64)LMTP_BACKEND_TIMEOUT_SECS * G_USEC_PER_SEC;
  return TRUE;
}

static gsize
backend_queued(const LmtpBackend *b)
{
  return b->out != NULL ? b->out->len - b->out_off : 0;
}

static void
backend_interest(LmtpBackend *b)
{
  if (b->watch == NULL)
    return;
  guint32 ev = b->connected ? EPOLLIN : EPOLLOUT;
  if (backend_queued(b) > 0)
    ev |= EPOLLOUT;
  poller_modify(b->s->w->poller, b->watch, ev);
}

static void
backend_write(LmtpBackend *b, const void *data, gsize len)
{
  if (b->out == NULL)
    b->out = g_byte_array_sized_new((guint)MAX(len, 512));
  g_byte_array_append(b->out, data, (guint)len);
}

/* Message bytes: straight to the socket when nothing waits before them, the rest queued. */
static void
backend_write_now(LmtpBackend *b, const guint8 *data, gsize len)
{
  if (b->connected && b->out == NULL) {
    ssize_t n = send(b->fd, data, len, MSG_NOSIGNAL);
    if (n > 0) {
      data += n;
      len -= (gsize)n;
    }
    /* An error shows on the next flush or read, where it is handled. */
  }
  if (len > 0)
    backend_write(b, data, len);
}

static void
expect(LmtpBackend *b, ExpKind kind, Rcpt *r)
{
  Expect *e = g_new0(Expect, 1);
  e->kind = kind;
  e->rcpt = r;
  if (g_queue_is_empty(&b->expect))
    b->deadline_us = g_get_monotonic_time() +
                     (gint64)(kind == EXP_FINAL ? LMTP_BACKEND_FINAL_TIMEOUT_SECS
                                                : LMTP_BACKEND_TIMEOUT_SECS) * G_USEC_PER_SEC;
  g_queue_push_tail(&b->expect, e);
}

/* Sends a command line now, or once the backend is ready. */
static void
backend_command(LmtpBackend *b, ExpKind kind, Rcpt *r, const char *line)
{
  if (!b->ready) {
    Deferred *d = g_new0(Deferred, 1);
    d->kind = kind;
    d->rcpt = r;
    d->line = g_strdup(line);
    g_queue_push_tail(&b->deferred, d);
    return;
  }
  if (b->spool_fd >= 0) { /* behind message bytes still in the spool (not expected) */
    spool_append(b, (const guint8 *)line, strlen(line));
    spool_append(b, (const guint8 *)"\r\n", 2);
  } else {
    backend_write(b, line, strlen(line));
    backend_write(b, "\r\n", 2);
  }
  expect(b, kind, r);
}

/* What a recipient is told when its backend is lost. */
static char *
lost_text(const Rcpt *r, const char *why)
{
  return g_strdup_printf("451 4.4.0 <%s> Lost the connection to the mail server (%s), try again "
                         "later",
                         rcpt_name(r), why);
}

/* The backend is gone: each recipient still waiting for it gets a temporary failure; the
 * others keep what they have. blame: the backend failed (logged and counted), rather than
 * usherd closing it on purpose. */
static void
backend_close(LmtpBackend *b, const char *why, gboolean blame)
{
  LmtpSession *s = b->s;
  if (b->failed)
    return;
  b->failed = TRUE;
  /* A backend that closes an idle connection (its own timeout) owes nothing: not a failure. */
  if (blame && (!g_queue_is_empty(&b->expect) || !g_queue_is_empty(&b->deferred) || b->in_tx)) {
    g_message("lmtp %u/%" G_GUINT64_FORMAT ": backend %s failed: %s", s->w->index, s->id,
              b->ip_text, why);
    count(s, &STATS(s)->lmtp_backend_failures, 1);
  }
  Deferred *d;
  while ((d = g_queue_pop_head(&b->deferred)) != NULL) {
    if (d->kind == EXP_RCPT) {
      g_free(d->rcpt->reply);
      d->rcpt->reply = lost_text(d->rcpt, why);
      d->rcpt->state = RCPT_REFUSED;
      count(s, &STATS(s)->lmtp_tempfail_backend, 1);
    }
    g_free(d->line);
    g_free(d);
  }
  Expect *e;
  while ((e = g_queue_pop_head(&b->expect)) != NULL) {
    if (e->kind == EXP_RCPT && e->rcpt->reply == NULL) {
      e->rcpt->reply = lost_text(e->rcpt, why);
      e->rcpt->state = RCPT_REFUSED;
      count(s, &STATS(s)->lmtp_tempfail_backend, 1);
    }
    g_free(e);
  }
  /* Accepted recipients whose answer after the body has not come. */
  for (guint i = 0; i < s->rcpts->len; i++) {
    Rcpt *r = g_ptr_array_index(s->rcpts, i);
    if (r->b == b && r->state == RCPT_ACCEPTED && r->final == NULL) {
      r->final = lost_text(r, why);
      count(s, &STATS(s)->lmtp_tempfail_backend, 1);
    }
  }
  b->data_ok = FALSE;
  b->deadline_us = 0;
  if (b->watch != NULL) {
    poller_remove_closing(s->w->poller, b->watch); /* the watch exists only with the fd */
    b->watch = NULL;
  }
  if (b->fd >= 0) {
    close(b->fd);
    b->fd = -1;
  }
  g_clear_pointer(&b->out, g_byte_array_unref);
  b->out_off = 0;
  spool_close(b);
}

static void
backend_fail(LmtpBackend *b, const char *why)
{
  backend_close(b, why, TRUE);
}

static void
backend_free(gpointer data)
{
  LmtpBackend *b = data;
  spool_close(b);
  if (b->watch != NULL)
    poller_remove_closing(b->s->w->poller, b->watch);
  if (b->fd >= 0)
    close(b->fd);
  if (b->out != NULL)
    g_byte_array_unref(b->out);
  g_string_free(b->line, TRUE);
  g_string_free(b->reply, TRUE);
  g_queue_clear_full(&b->expect, g_free);
  Deferred *d;
  while ((d = g_queue_pop_head(&b->deferred)) != NULL) {
    g_free(d->line);
    g_free(d);
  }
  g_free(b->mail_refused);
  g_free(b);
}

static LmtpBackend *
backend_open(LmtpSession *s, const UsherIp *ip)
{
  Proxy *p = s->w->proxy;
  LmtpBackend *b = g_new0(LmtpBackend, 1);
  b->s = s;
  b->ip = *ip;
  usher_ip_to_string(ip, b->ip_text);
  b->fd = -1;
  b->spool_fd = -1;
  b->line = g_string_new(NULL);
  b->reply = g_string_new(NULL);
  g_queue_init(&b->expect);
  g_queue_init(&b->deferred);
  g_ptr_array_add(s->backends, b);
  g_autoptr(GSocketAddress) addr = usherd_gaddress_from_ip(ip, p->lmtp_port);
  struct sockaddr_storage ss;
  gsize sslen = g_socket_address_get_native_size(addr);
  g_socket_address_to_native(addr, &ss, sizeof(ss), NULL);
  b->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (b->fd < 0 ||
      (connect(b->fd, (struct sockaddr *)&ss, (socklen_t)sslen) != 0 && errno != EINPROGRESS)) {
    backend_fail(b, g_strerror(errno));
    return b;
  }
  int one = 1;
  setsockopt(b->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  b->watch = poller_add(s->w->poller, b->fd, EPOLLOUT, on_backend, b);
  expect(b, EXP_GREETING, NULL);
  if (!s->unix_client &&
      proxy_in_nets(p->u->config->proxy_protocol_backends, &b->ip)) {
    UsherIp src = {0}, dst = {0};
    (void)usher_ip_parse(s->cip, -1, &src);
    (void)usher_ip_parse(s->lip, -1, &dst);
    g_autoptr(GByteArray) header = g_byte_array_new();
    usher_proxy_header_format_v2(&src, s->cport, &dst, s->lport, header);
    backend_write(b, header->data, header->len);
  }
  return b;
}

static LmtpBackend *
backend_for(LmtpSession *s, const UsherIp *ip)
{
  for (guint i = 0; i < s->backends->len; i++) {
    LmtpBackend *b = g_ptr_array_index(s->backends, i);
    if (!b->failed && usher_ip_equal(&b->ip, ip))
      return b;
  }
  return backend_open(s, ip);
}

static void
backend_ready(LmtpBackend *b)
{
  b->ready = TRUE;
  Deferred *d;
  while ((d = g_queue_pop_head(&b->deferred)) != NULL) {
    backend_command(b, d->kind, d->rcpt, d->line);
    g_free(d->line);
    g_free(d);
  }
}

/* What an LHLO reply offers, for the next MTAs' LHLO: the keywords of its lines after the first
 * (the host name), less what usherd answers for itself or cannot pass on (BINARYMIME: BDAT
 * chunks become DATA towards the backends). */
static void
learn_lhlo(LmtpSession *s, const char *reply)
{
  static const char *const ours[] = {"PIPELINING", "ENHANCEDSTATUSCODES", "CHUNKING",
                                     "BINARYMIME", "XCLIENT", "STARTTLS", "AUTH", NULL};
  g_auto(GStrv) lines = g_strsplit(reply, "\r\n", 64);
  GString *caps = g_string_new(NULL);
  for (guint i = 1; lines[i] != NULL; i++) {
    const char *kw = strlen(lines[i]) > 4 ? lines[i] + 4 : "";
    gboolean skip = kw[0] == '\0';
    for (const char *const *o = ours; !skip && *o != NULL; o++)
      skip = g_ascii_strncasecmp(kw, *o, strlen(*o)) == 0 &&
             (kw[strlen(*o)] == '\0' || kw[strlen(*o)] == ' ');
    if (!skip && caps->len < 1024)
      g_string_append_printf(caps, "%s\r\n", kw);
  }
  Proxy *p = s->w->proxy;
  proxy_learn_caps(p, &p->lmtp_caps, caps->str);
  g_string_free(caps, TRUE);
}

/* A capability line of an LHLO reply names XCLIENT. */
static gboolean
offers_xclient(const char *reply)
{
  for (const char *p = reply; (p = strstr(p, "XCLIENT")) != NULL; p++)
    if ((p == reply || p[-1] == '-' || p[-1] == ' ' || p[-1] == '\n') &&
        (p[7] == '\0' || p[7] == ' ' || p[7] == '\r'))
      return TRUE;
  return FALSE;
}

/* How many of this transaction's recipients are in one of the states of the mask (RCPTS()),
 * on backend b (NULL: on any). */
#define RCPTS(state) (1u << (state))
static guint
rcpts_in(const LmtpSession *s, const LmtpBackend *b, guint states)
{
  guint n = 0;
  for (guint i = 0; i < s->rcpts->len; i++) {
    const Rcpt *r = g_ptr_array_index(s->rcpts, i);
    if ((b == NULL || r->b == b) && (states & RCPTS(r->state)))
      n++;
  }
  return n;
}
/* Still asking the core, or waiting for their backend's answer. */
#define RCPTS_PENDING (RCPTS(RCPT_ROUTING) | RCPTS(RCPT_WAITING))
/* Accepted by their backend, or waiting for its answer. */
#define RCPTS_HOPEFUL (RCPTS(RCPT_ACCEPTED) | RCPTS(RCPT_WAITING))

static gboolean all_data_answered(LmtpSession *s);
static void tx_data_answered(LmtpSession *s);
static void tx_maybe_done(LmtpSession *s);
static void tx_abort(LmtpSession *s);

/* One complete reply of a backend (code and all its lines). */
static void
backend_reply(LmtpBackend *b, guint code, const char *text)
{
  LmtpSession *s = b->s;
  Expect *e = g_queue_pop_head(&b->expect);
  if (e == NULL) {
    backend_fail(b, "a reply nobody asked for");
    return;
  }
  b->deadline_us =
    g_queue_is_empty(&b->expect)
      ? 0
      : g_get_monotonic_time() +
          (gint64)(((Expect *)g_queue_peek_head(&b->expect))->kind == EXP_FINAL
                     ? LMTP_BACKEND_FINAL_TIMEOUT_SECS
                     : LMTP_BACKEND_TIMEOUT_SECS) *
            G_USEC_PER_SEC;
  gboolean ok = code >= 200 && code < 300;
  switch (e->kind) {
  case EXP_GREETING:
    if (code != 220) {
      g_autofree char *why = g_strdup_printf("greeting: %s", text);
      backend_fail(b, why);
      break;
    }
    backend_write(b, "LHLO ", 5);
    backend_write(b, s->helo != NULL ? s->helo : "usher", strlen(s->helo != NULL ? s->helo : "usher"));
    backend_write(b, "\r\n", 2);
    expect(b, EXP_LHLO, NULL);
    break;
  case EXP_LHLO:
    if (!ok) {
      g_autofree char *why = g_strdup_printf("LHLO: %s", text);
      backend_fail(b, why);
      break;
    }
    if (!b->xclient_sent && !s->unix_client && offers_xclient(text)) {
      /* The MTA's address for the backend's logs (Dovecot: login_trusted_networks). */
      g_autofree char *x = g_strdup_printf("XCLIENT ADDR=%s PORT=%u\r\n", s->cip, s->cport);
      backend_write(b, x, strlen(x));
      b->xclient_sent = TRUE;
      expect(b, EXP_XCLIENT, NULL);
      break;
    }
    learn_lhlo(s, text);
    backend_ready(b);
    break;
  case EXP_XCLIENT:
    if (code == 220) {
      /* A fresh session as the client's: greet it again. */
      backend_write(b, "LHLO ", 5);
      backend_write(b, s->helo != NULL ? s->helo : "usher", strlen(s->helo != NULL ? s->helo : "usher"));
      backend_write(b, "\r\n", 2);
      expect(b, EXP_LHLO, NULL);
    } else {
      g_message("lmtp: backend %s refused XCLIENT (%s): list usherd in its "
                "login_trusted_networks; it logs usherd's address instead of the MTA's",
                b->ip_text, text);
      backend_ready(b);
    }
    break;
  case EXP_MAIL:
    if (!ok) {
      g_free(b->mail_refused);
      b->mail_refused = g_strdup(text);
    }
    break;
  case EXP_RCPT: {
    Rcpt *r = e->rcpt;
    g_free(r->reply);
    if (b->mail_refused != NULL) {
      /* Its answer to RCPT would only say "MAIL first": the client learns why MAIL failed. */
      r->reply = g_strdup(b->mail_refused);
      r->state = RCPT_REFUSED;
      ok = FALSE;
      code = (guint)atoi(b->mail_refused);
    } else {
      r->reply = g_strdup(text);
      r->state = ok ? RCPT_ACCEPTED : RCPT_REFUSED;
    }
    if (!ok)
      count(s, code >= 500 ? &STATS(s)->lmtp_rejected : &STATS(s)->lmtp_tempfail_reply, 1);
    break;
  }
  case EXP_DATA: {
    b->data_sent = FALSE;
    /* DATA went out behind the RCPTs, whose answers came first: a server that refused them
     * all must refuse DATA too; one that asks for the body anyway is not to be trusted. */
    gboolean takes = rcpts_in(s, b, RCPTS(RCPT_ACCEPTED)) > 0;
    if (code == 354 && !takes) {
      backend_fail(b, "it asked for the message after refusing every recipient");
    } else if (code == 354) {
      b->data_ok = TRUE;
      b->line_start = TRUE;
    } else {
      /* Its recipients get this answer after the body; the others go on. */
      for (guint i = 0; i < s->rcpts->len; i++) {
        Rcpt *r = g_ptr_array_index(s->rcpts, i);
        if (r->b == b && r->state == RCPT_ACCEPTED && r->final == NULL) {
          r->final = g_strdup(text);
          count(s, code >= 500 ? &STATS(s)->lmtp_rejected : &STATS(s)->lmtp_tempfail_reply, 1);
        }
      }
    }
    break;
  }
  case EXP_FINAL: {
    Rcpt *r = e->rcpt;
    if (r->final == NULL) {
      r->final = g_strdup(text);
      count(s,
           ok ? &STATS(s)->lmtp_delivered
              : code >= 500 ? &STATS(s)->lmtp_rejected : &STATS(s)->lmtp_tempfail_reply,
           1);
    }
    break;
  }
  case EXP_RSET:
    break;
  }
  g_free(e);
}

/* Reads reply lines; FALSE if the backend failed. */
static gboolean
backend_read(LmtpBackend *b)
{
  char buf[LMTP_READ_CHUNK];
  for (int round = 0; round < 4; round++) {
    ssize_t n = recv(b->fd, buf, sizeof(buf), 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
      return TRUE;
    if (n <= 0) {
      backend_fail(b, n == 0 ? "the backend closed the connection" : g_strerror(errno));
      return FALSE;
    }
    for (ssize_t i = 0; i < n; i++) {
      const char *nl = memchr(buf + i, '\n', (gsize)(n - i));
      gsize piece = nl != NULL ? (gsize)(nl - (buf + i)) : (gsize)(n - i);
      if (b->line->len + piece > LMTP_BACKEND_LINE_MAX) {
        backend_fail(b, "a reply line is too long");
        return FALSE;
      }
      g_string_append_len(b->line, buf + i, (gssize)piece);
      i += (ssize_t)piece;
      if (nl == NULL)
        break;
      if (b->line->len > 0 && b->line->str[b->line->len - 1] == '\r')
        g_string_truncate(b->line, b->line->len - 1);
      guint code;
      gboolean last;
      const char *text;
      if (!usher_smtp_reply_parse(b->line->str, &code, &last, &text)) {
        backend_fail(b, "not an LMTP reply");
        return FALSE;
      }
      if (b->reply->len > 0)
        g_string_append(b->reply, "\r\n");
      if (b->reply->len + b->line->len > 64 * LMTP_BACKEND_LINE_MAX) {
        backend_fail(b, "a reply is too long");
        return FALSE;
      }
      g_string_append(b->reply, b->line->str);
      g_string_truncate(b->line, 0);
      if (!last)
        continue;
      g_autofree char *whole = g_strdup(b->reply->str);
      g_string_truncate(b->reply, 0);
      backend_reply(b, code, whole);
      if (b->failed)
        return FALSE;
    }
    if ((gsize)n < sizeof(buf))
      break; /* the socket is empty now: epoll says when more comes (no EAGAIN round) */
  }
  return TRUE;
}

static void
on_backend(gpointer data, guint32 events)
{
  LmtpBackend *b = data;
  LmtpSession *s = b->s;
  Worker *w = s->w;
  guint64 id = s->id;
  if (!b->connected) {
    /* A connect that failed says so with EPOLLERR; only then is its error asked for. */
    if (events & (EPOLLERR | EPOLLHUP)) {
      int err = 0;
      socklen_t len = sizeof(err);
      getsockopt(b->fd, SOL_SOCKET, SO_ERROR, &err, &len);
      backend_fail(b, g_strerror(err != 0 ? err : ECONNREFUSED));
      goto after;
    }
    b->connected = TRUE;
  }
  if ((events & EPOLLOUT) && !backend_flush(b))
    goto after;
  if (events & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP))
    (void)backend_read(b);
after:
  if ((s = g_hash_table_lookup(w->lmtp_by_id, &id)) == NULL)
    return;
  /* Whatever the reply changed: more commands may go on, answers may be complete. */
  session_process(s);
}

/* ---- The transaction ------------------------------------------------------------------------- */

/* The transaction is over on every backend: they are ready for the next MAIL. An LMTP server
 * resets itself after its replies to the body; one that took MAIL but never got a body (its
 * recipients all refused, DATA refused, or the message dropped before its body) still holds
 * the transaction and would answer the next MAIL with 503: it gets RSET. */
static void
tx_reset(LmtpSession *s)
{
  /* No answer may point at a recipient about to be freed (they are all known by now). */
  for (GList *l = s->slots.head; l != NULL; l = l->next) {
    Slot *slot = l->data;
    if (slot->rcpt == NULL)
      continue;
    const char *text = slot->kind == SLOT_RCPT ? slot->rcpt->reply : slot->rcpt->final;
    slot->text = g_strdup(text != NULL ? text : "451 4.3.0 Internal error, try again later");
    slot->kind = SLOT_TEXT;
    slot->rcpt = NULL;
  }
  s->tx = TX_NONE;
  /* The client waited for the backends, not idled: its idle time starts now. */
  s->deadline_us = g_get_monotonic_time() + LMTP_CLIENT_TIMEOUT_SECS * G_USEC_PER_SEC;
  g_clear_pointer(&s->mail_path, g_free);
  g_clear_pointer(&s->mail_params, g_free);
  g_clear_pointer(&s->data_failure, g_free);
  s->bdat = s->bdat_last = s->discard_body = s->body_cut = FALSE;
  for (guint i = s->backends->len; i-- > 0;) {
    LmtpBackend *b = g_ptr_array_index(s->backends, i);
    if (b->failed) {
      g_ptr_array_remove_index(s->backends, i);
      continue;
    }
    if (b->in_tx && !b->end_sent) {
      backend_command(b, EXP_RSET, NULL, "RSET");
      backend_flush(b);
    }
    b->in_tx = b->data_sent = b->data_ok = b->end_sent = FALSE;
    g_clear_pointer(&b->mail_refused, g_free);
  }
  g_ptr_array_set_size(s->rcpts, 0);
}

static void
route_answer(Worker *w, guint64 session, guint64 request, UsherLoginStatus status,
             const UsherIp *host)
{
  LmtpSession *s = g_hash_table_lookup(w->lmtp_by_id, &session);
  if (s == NULL)
    return;
  Rcpt *r = NULL;
  for (guint i = 0; i < s->rcpts->len && r == NULL; i++) {
    Rcpt *x = g_ptr_array_index(s->rcpts, i);
    if (x->state == RCPT_ROUTING && x->request == request)
      r = x;
  }
  if (r == NULL)
    return; /* the transaction was reset meanwhile */
  if (status != USHER_LOGIN_OK) {
    r->state = RCPT_REFUSED;
    r->reply = g_strdup_printf("451 4.3.0 <%s> No mail server is available for this recipient "
                               "now, try again later",
                               rcpt_name(r));
    count(s, &STATS(s)->lmtp_tempfail_route, 1);
    session_process(s);
    return;
  }
  LmtpBackend *b = backend_for(s, host);
  r->b = b;
  r->state = RCPT_WAITING;
  if (b->failed) {
    r->state = RCPT_REFUSED;
    r->reply = lost_text(r, "cannot connect");
    count(s, &STATS(s)->lmtp_tempfail_backend, 1);
  } else {
    if (!b->in_tx) {
      b->in_tx = TRUE;
      g_autofree char *mail = g_strconcat("MAIL FROM:<", s->mail_path, ">",
                                          s->mail_params[0] ? " " : "", s->mail_params, NULL);
      backend_command(b, EXP_MAIL, NULL, mail);
    }
    g_autofree char *line =
      g_strconcat("RCPT TO:<", r->path, ">", r->params[0] ? " " : "", r->params, NULL);
    backend_command(b, EXP_RCPT, r, line); /* written by session_process, with what follows */
  }
  session_process(s);
}

static void
handle_rcpt(LmtpSession *s, UsherSmtpCmd *cmd)
{
  Proxy *p = s->w->proxy;
  if (s->tx != TX_MAIL) {
    add_text(s, "503 5.5.1 MAIL needed first");
    return;
  }
  if (s->rcpts->len >= LMTP_MAX_RECIPIENTS) {
    add_text(s, "452 4.5.3 Too many recipients");
    return;
  }
  g_autofree char *address = usher_smtp_recipient_user(cmd->path, p->recipient_delimiter);
  if (address == NULL) {
    add_text(s, "501 5.1.3 <%s> Invalid recipient address", cmd->path);
    return;
  }
  g_autofree char *user = usher_hash_format_expand(p->lmtp_user_format, address, -1);
  Rcpt *r = g_new0(Rcpt, 1);
  r->path = g_strdup(cmd->path);
  r->params = g_strdup(cmd->params);
  r->state = RCPT_ROUTING;
  g_ptr_array_add(s->rcpts, r);
  count(s, &STATS(s)->lmtp_recipients, 1);
  add_rcpt_slot(s, SLOT_RCPT, r);
  r->request = proxy_route(s->w, s->id, user, route_answer);
}

static gboolean
all_data_answered(LmtpSession *s)
{
  for (guint i = 0; i < s->backends->len; i++) {
    LmtpBackend *b = g_ptr_array_index(s->backends, i);
    if (!b->failed && b->data_sent)
      return FALSE;
  }
  return TRUE;
}

/* Every backend of the transaction has answered DATA (or failed): the client's body can come. */
static void
tx_data_answered(LmtpSession *s)
{
  gboolean any = FALSE;
  for (guint i = 0; i < s->backends->len; i++)
    if (((LmtpBackend *)g_ptr_array_index(s->backends, i))->data_ok)
      any = TRUE;
  if (!any) {
    /* Nobody takes the body. With DATA the client is told now and sends none; BDAT chunks
     * are in the stream anyway: they are read and dropped, each answered with the failure.
     * Every recipient refused (their RCPT answers said so): RFC 2033's 503. */
    s->data_failure = g_strdup(rcpts_in(s, NULL, RCPTS(RCPT_ACCEPTED)) == 0
                                 ? "503 5.5.1 No valid recipients"
                                 : "451 4.4.0 No mail server accepted the message data, try "
                                   "again later");
    if (!s->bdat) {
      add_text(s, "%s", s->data_failure);
      for (guint i = 0; i < s->rcpts->len; i++) {
        Rcpt *r = g_ptr_array_index(s->rcpts, i);
        if (r->state == RCPT_ACCEPTED)
          count(s, &STATS(s)->lmtp_tempfail_backend, 1);
      }
      tx_abort(s); /* the backends still hold MAIL and their recipients: RSET there */
      return;
    }
    s->discard_body = TRUE;
  } else if (!s->bdat) {
    add_text(s, "354 2.0.0 OK, send the message, end with <CRLF>.<CRLF>");
    usher_smtp_reader_expect_data(s->reader);
  }
  s->tx = TX_BODY;
}

static void
start_data(LmtpSession *s)
{
  count(s, &STATS(s)->lmtp_transactions, 1);
  s->tx = TX_DATA_WAIT;
  for (guint i = 0; i < s->backends->len; i++) {
    LmtpBackend *b = g_ptr_array_index(s->backends, i);
    /* A recipient accepted there, or not answered yet. */
    if (rcpts_in(s, b, RCPTS_HOPEFUL) == 0 || b->failed)
      continue;
    b->data_sent = TRUE;
    b->spool_refused = FALSE;
    backend_command(b, EXP_DATA, NULL, "DATA"); /* written at the end of session_process */
  }
  if (all_data_answered(s))
    tx_data_answered(s);
}

/* A backend of the message that takes its bytes as fast as they come (no spool, a short queue). */
static gboolean
keeps_up(const LmtpBackend *b)
{
  return b->data_ok && !b->failed && b->spool_fd < 0 && backend_queued(b) < LMTP_QUEUE_HIGH;
}

/* b, behind, should spool: spooling is on, worked for this message, and another backend of the
 * message keeps up (else the client is the fast one: it waits, no disk is used). */
static gboolean
should_spool(const LmtpBackend *b)
{
  if (b->s->w->proxy->lmtp_spool_dir[0] == '\0' || b->spool_refused)
    return FALSE;
  for (guint i = 0; i < b->s->backends->len; i++) {
    const LmtpBackend *o = g_ptr_array_index(b->s->backends, i);
    if (o != b && keeps_up(o))
      return TRUE;
  }
  return FALSE;
}

/* Message bytes for b: to its socket or queue while it keeps up. Past LMTP_QUEUE_HIGH queued,
 * while another backend of the message keeps up, to b's spool file (in order: once spooling,
 * everything goes there until it is read back); when none keeps up the client is the fast one
 * and is paused instead (no disk for a message every backend would take at the same pace). */
static void
body_write(LmtpBackend *b, const guint8 *data, gsize len)
{
  if (len == 0 || b->failed)
    return;
  if (b->spool_fd < 0 && backend_queued(b) + len > LMTP_QUEUE_HIGH &&
      (!should_spool(b) || !spool_start(b))) {
    backend_write(b, data, len); /* the client is paused until b catches up */
    return;
  }
  if (b->spool_fd >= 0)
    spool_append(b, data, len);
  else
    backend_write_now(b, data, len);
}

/* b's recipients get 451 and b never gets the message's end: its connection is closed in the
 * middle of the body, which makes it drop what it has. */
static void
withdraw(LmtpSession *s, LmtpBackend *b)
{
  for (guint k = 0; k < s->rcpts->len; k++) {
    Rcpt *r = g_ptr_array_index(s->rcpts, k);
    if (r->b != b || r->state != RCPT_ACCEPTED || r->final != NULL)
      continue;
    r->final = g_strdup_printf("451 4.4.2 <%s> The connection closed before the end of the "
                               "message: not delivered, try again",
                               rcpt_name(r));
    count(s, &STATS(s)->lmtp_tempfail_client_gone, 1);
  }
  backend_close(b, "the client closed before the end of the message", FALSE);
}

/* The MTA's FIN came before the end of its message was passed on. An MTA closes before the
 * answer only when it has given up waiting for it (its timeout ran out, say while usherd was
 * stopped or starved), and then it sends the message again later: this copy must not be
 * delivered as well. Its backends never get the terminator: their connections are closed in the
 * middle of the body, which makes them drop it, and every recipient gets 451 (still written, for
 * a client that only shut its sending side). A terminator already passed on before the FIN was
 * seen is the race every SMTP server has (RFC 1047): that delivery stands. */
static void
body_cut(LmtpSession *s)
{
  if (s->body_cut)
    return;
  s->body_cut = TRUE;
  g_message("lmtp %u/%" G_GUINT64_FORMAT " from %s:%u: the client closed before the end of its "
            "message; not delivered",
            s->w->index, s->id, s->cip, s->cport);
  for (guint i = 0; i < s->backends->len; i++) {
    LmtpBackend *b = g_ptr_array_index(s->backends, i);
    if (b->data_ok && !b->failed)
      withdraw(s, b);
  }
}

/* The same after the body, for a backend that has not been sent the whole message yet (a slow
 * one, its rest in memory or in a spool file): the end has not left usherd, so it still can be
 * held back there. */
static void
withdraw_unsent_ends(LmtpSession *s)
{
  for (guint i = 0; i < s->backends->len; i++) {
    LmtpBackend *b = g_ptr_array_index(s->backends, i);
    const Expect *head = g_queue_peek_head(&b->expect);
    if (b->failed || head == NULL || head->kind != EXP_FINAL)
      continue;
    if (backend_queued(b) > 0 || (b->spool_fd >= 0 && b->spool_w > b->spool_r)) {
      g_message("lmtp %u/%" G_GUINT64_FORMAT " from %s:%u: the client closed before backend %s "
                "had its whole message; not delivered there",
                s->w->index, s->id, s->cip, s->cport, b->ip_text);
      withdraw(s, b);
    }
  }
}

/* The client's body bytes, as they come, to every backend that said 354. */
static void
body_bytes(LmtpSession *s, const guint8 *data, gsize len)
{
  if (s->client_ending)
    body_cut(s); /* the terminator may be among these bytes */
  if (s->discard_body || s->body_cut)
    return;
  for (guint i = 0; i < s->backends->len; i++) {
    LmtpBackend *b = g_ptr_array_index(s->backends, i);
    if (!b->data_ok || b->failed)
      continue;
    if (!s->bdat) {
      body_write(b, data, len); /* already dot-stuffed, the terminator included */
      continue;
    }
    /* BDAT chunks become one DATA: a '.' that starts a line is doubled. */
    gsize from = 0;
    for (gsize k = 0; k < len; k++) {
      if (b->line_start && data[k] == '.') {
        body_write(b, data + from, k - from);
        body_write(b, (const guint8 *)".", 1);
        from = k;
      }
      b->line_start = data[k] == '\n';
    }
    body_write(b, data + from, len - from);
  }
}

/* The client's body is complete: each backend owes one answer per recipient it accepted. */
static void
body_complete(LmtpSession *s)
{
  for (guint i = 0; i < s->backends->len; i++) {
    LmtpBackend *b = g_ptr_array_index(s->backends, i);
    if (!b->data_ok || b->failed)
      continue;
    if (s->bdat)
      body_write(b, (const guint8 *)(b->line_start ? ".\r\n" : "\r\n.\r\n"),
                 b->line_start ? 3 : 5);
    if (b->failed) /* its spool file failed */
      continue;
    for (guint k = 0; k < s->rcpts->len; k++) {
      Rcpt *r = g_ptr_array_index(s->rcpts, k);
      if (r->b == b && r->state == RCPT_ACCEPTED)
        expect(b, EXP_FINAL, r);
    }
    b->data_ok = FALSE;
    b->end_sent = TRUE;
    backend_flush(b);
  }
  for (guint k = 0; k < s->rcpts->len; k++) {
    Rcpt *r = g_ptr_array_index(s->rcpts, k);
    if (r->state == RCPT_ACCEPTED)
      add_rcpt_slot(s, SLOT_FINAL, r);
  }
  s->tx = TX_FINAL;
}

/* After the body: once every recipient has its answer, they go out and the next transaction
 * may start. */
static void
tx_maybe_done(LmtpSession *s)
{
  if (s->tx != TX_FINAL)
    return;
  for (guint k = 0; k < s->rcpts->len; k++) {
    Rcpt *r = g_ptr_array_index(s->rcpts, k);
    if (r->state == RCPT_ACCEPTED && r->final == NULL)
      return;
  }
  slots_to_output(s); /* the slots point at the recipients about to be freed */
  tx_reset(s);
}

/* RSET, or a new LHLO: the transaction is dropped everywhere. A backend in the middle of a body
 * cannot be reset: its connection is closed (the half message is discarded there). The others
 * get RSET from tx_reset. */
static void
tx_abort(LmtpSession *s)
{
  for (guint i = 0; i < s->backends->len; i++) {
    LmtpBackend *b = g_ptr_array_index(s->backends, i);
    if (!b->failed && b->in_tx && (b->data_ok || b->data_sent))
      backend_fail(b, "transaction aborted during the message");
  }
  /* Recipients of failed backends got answers that are no longer wanted. */
  slots_to_output(s);
  tx_reset(s);
}

/* LHLO's answer: what usherd does itself (PIPELINING, ENHANCEDSTATUSCODES, CHUNKING) and what the
 * last backend offered (8BITMIME, SIZE, DSN, ...; its MAIL and RCPT parameters go through). */
static void
lhlo_reply(LmtpSession *s)
{
  Proxy *p = s->w->proxy;
  g_autofree char *reply = proxy_ehlo_reply(
    p, "PIPELINING\r\nENHANCEDSTATUSCODES\r\nCHUNKING\r\n", &p->lmtp_caps, "");
  add_text(s, "%s", reply);
}

/* TRUE if the LHLO keywords learnt from the backends include `keyword`; its first argument (SIZE's
 * limit, 0 when none) in *arg_out. */
static gboolean
lhlo_offers(Proxy *p, const char *keyword, guint64 *arg_out)
{
  gsize klen = strlen(keyword);
  gboolean found = FALSE;
  g_mutex_lock(&p->lock);
  for (const char *line = p->lmtp_caps; *line != '\0' && !found;) {
    const char *end = strstr(line, "\r\n");
    gsize len = end != NULL ? (gsize)(end - line) : strlen(line);
    if (len >= klen && g_ascii_strncasecmp(line, keyword, klen) == 0 &&
        (len == klen || line[klen] == ' ')) {
      found = TRUE;
      if (arg_out != NULL)
        *arg_out = len > klen ? g_ascii_strtoull(line + klen + 1, NULL, 10) : 0;
    }
    line += len + (end != NULL ? 2 : 0);
  }
  g_mutex_unlock(&p->lock);
  return found;
}

/* MAIL's parameters may only belong to extensions the LHLO reply offered (RFC 5321 4.1.1.11);
 * the reply that refuses them (Dovecot's words), or NULL. Refused here rather than by each
 * backend after MAIL was accepted, which would fail every recipient. (BODY=BINARYMIME never
 * passes: usherd does not offer BINARYMIME, see learn_lhlo.) */
static char *
mail_params_refusal(LmtpSession *s, const char *params)
{
  Proxy *p = s->w->proxy;
  g_auto(GStrv) words = g_strsplit(params, " ", -1);
  for (char **w = words; *w != NULL; w++) {
    if (**w == '\0')
      continue;
    char *eq = strchr(*w, '=');
    const char *value = eq != NULL ? eq + 1 : NULL;
    if (eq != NULL)
      *eq = '\0';
    guint64 limit = 0;
    if (g_ascii_strcasecmp(*w, "BODY") == 0 && value != NULL &&
        (g_ascii_strcasecmp(value, "7BIT") == 0 || g_ascii_strcasecmp(value, "8BITMIME") == 0) &&
        lhlo_offers(p, "8BITMIME", NULL))
      continue;
    if (g_ascii_strcasecmp(*w, "SIZE") == 0 && lhlo_offers(p, "SIZE", &limit)) {
      if (value == NULL || *value == '\0' || strspn(value, "0123456789") != strlen(value) ||
          strlen(value) > 19)
        return g_strdup("501 5.5.4 Invalid SIZE parameter");
      if (limit > 0 && g_ascii_strtoull(value, NULL, 10) > limit)
        return g_strdup("552 5.3.4 Message size exceeds fixed maximum message size");
      continue;
    }
    if (g_ascii_strcasecmp(*w, "SMTPUTF8") == 0 && value == NULL &&
        lhlo_offers(p, "SMTPUTF8", NULL))
      continue;
    if ((g_ascii_strcasecmp(*w, "RET") == 0 || g_ascii_strcasecmp(*w, "ENVID") == 0) &&
        value != NULL && lhlo_offers(p, "DSN", NULL))
      continue;
    return g_strdup("555 5.5.4 Unsupported parameters");
  }
  return NULL;
}

/* One command; FALSE when it must wait for the recipients before it (it is held). */
/* A BDAT chunk no transaction takes: its bytes are read and dropped (the command was answered). */
static void
skip_chunk(LmtpSession *s, guint64 size)
{
  s->skip_chunk = TRUE;
  usher_smtp_reader_expect_bdat(s->reader, size);
}

static gboolean
handle_command(LmtpSession *s, UsherSmtpCmd *cmd)
{
  /* A BDAT that cannot be read ends the message: like RSET, once its recipients are placed. */
  gboolean barrier = cmd->verb == USHER_SMTP_VERB_MAIL || cmd->verb == USHER_SMTP_VERB_RSET ||
                     cmd->verb == USHER_SMTP_VERB_LHLO || cmd->verb == USHER_SMTP_VERB_QUIT ||
                     (cmd->verb == USHER_SMTP_VERB_BDAT && cmd->syntax_error != NULL);
  /* DATA, and BDAT (its first chunk starts DATA), need each recipient's backend, not its answer:
   * they are pipelined behind the RCPTs. */
  gboolean data = cmd->verb == USHER_SMTP_VERB_DATA || cmd->verb == USHER_SMTP_VERB_BDAT;
  if ((barrier && rcpts_in(s, NULL, RCPTS_PENDING) > 0) ||
      (data && rcpts_in(s, NULL, RCPTS(RCPT_ROUTING)) > 0))
    return FALSE;
  if (cmd->verb == USHER_SMTP_VERB_UNKNOWN) {
    count(s, &STATS(s)->lmtp_bad_commands, 1);
    add_text(s, "500 5.5.1 Unknown command");
    return TRUE;
  }
  if (cmd->syntax_error != NULL) {
    count(s, &STATS(s)->lmtp_bad_commands, 1);
    add_text(s, "501 5.5.4 %s", cmd->syntax_error);
    if (cmd->verb == USHER_SMTP_VERB_BDAT) {
      /* A chunk follows the line all the same: the message is lost. With its size known it is
       * skipped and the session goes on; without, nobody can tell where the next command
       * starts, and the session ends (RFC 3030 leaves no other way). */
      if (s->tx != TX_NONE)
        tx_abort(s); /* later chunks of this message get "MAIL needed first" */
      if (cmd->bdat_sized) {
        skip_chunk(s, cmd->bdat_size);
      } else {
        add_text(s, "421 4.5.0 The BDAT stream is lost, closing");
        s->quitting = TRUE;
      }
    }
    return TRUE;
  }
  /* Between BDAT chunks only BDAT, RSET, NOOP and QUIT make sense. */
  if (s->tx == TX_BODY && s->bdat && cmd->verb != USHER_SMTP_VERB_BDAT &&
      cmd->verb != USHER_SMTP_VERB_RSET && cmd->verb != USHER_SMTP_VERB_NOOP &&
      cmd->verb != USHER_SMTP_VERB_QUIT) {
    add_text(s, "503 5.5.1 BDAT expected");
    return TRUE;
  }
  switch (cmd->verb) {
  case USHER_SMTP_VERB_LHLO:
    tx_abort(s);
    g_free(s->helo);
    s->helo = g_strndup(cmd->arg, 255);
    g_strdelimit(s->helo, " \t\r\n", '_');
    lhlo_reply(s);
    return TRUE;
  case USHER_SMTP_VERB_EHLO:
  case USHER_SMTP_VERB_HELO:
    add_text(s, "500 5.5.1 This is LMTP: use LHLO");
    return TRUE;
  case USHER_SMTP_VERB_MAIL:
    if (s->helo == NULL) {
      add_text(s, "503 5.5.1 LHLO needed first");
      return TRUE;
    }
    if (s->tx != TX_NONE) {
      add_text(s, "503 5.5.1 MAIL already given");
      return TRUE;
    }
    {
      g_autofree char *refusal = mail_params_refusal(s, cmd->params);
      if (refusal != NULL) {
        count(s, &STATS(s)->lmtp_bad_commands, 1);
        add_text(s, "%s", refusal);
        return TRUE;
      }
    }
    s->mail_path = g_strdup(cmd->path);
    s->mail_params = g_strdup(cmd->params);
    s->tx = TX_MAIL;
    add_text(s, "250 2.1.0 OK");
    return TRUE;
  case USHER_SMTP_VERB_RCPT:
    handle_rcpt(s, cmd);
    return TRUE;
  case USHER_SMTP_VERB_DATA:
    if (s->tx != TX_MAIL || rcpts_in(s, NULL, RCPTS_HOPEFUL) == 0) {
      add_text(s, s->tx == TX_MAIL ? "503 5.5.1 No valid recipients" : "503 5.5.1 MAIL needed first");
      return TRUE;
    }
    s->bdat = FALSE;
    start_data(s);
    return TRUE;
  case USHER_SMTP_VERB_BDAT:
    if (s->tx == TX_MAIL) {
      if (rcpts_in(s, NULL, RCPTS_HOPEFUL) == 0) {
        /* The chunk follows anyway: read and drop it; its end gets the answer (body_end). */
        usher_smtp_reader_expect_bdat(s->reader, cmd->bdat_size);
        s->discard_body = TRUE;
        s->bdat = TRUE;
        s->bdat_last = cmd->bdat_last;
        s->tx = TX_BODY;
        s->data_failure = g_strdup("503 5.5.1 No valid recipients");
        return TRUE;
      }
      s->bdat = TRUE;
      s->bdat_last = cmd->bdat_last;
      s->chunk_bytes = cmd->bdat_size;
      usher_smtp_reader_expect_bdat(s->reader, cmd->bdat_size);
      start_data(s); /* the chunk is read once the backends said 354 */
      return TRUE;
    }
    if (s->tx == TX_BODY && s->bdat) {
      s->bdat_last = cmd->bdat_last;
      s->chunk_bytes = cmd->bdat_size;
      usher_smtp_reader_expect_bdat(s->reader, cmd->bdat_size);
      return TRUE;
    }
    /* Not in a transaction: the chunk still follows, and is dropped. */
    add_text(s, "503 5.5.1 MAIL needed first");
    skip_chunk(s, cmd->bdat_size);
    return TRUE;
  case USHER_SMTP_VERB_RSET:
    tx_abort(s);
    add_text(s, "250 2.0.0 OK");
    return TRUE;
  case USHER_SMTP_VERB_NOOP:
    add_text(s, "250 2.0.0 OK");
    return TRUE;
  case USHER_SMTP_VERB_VRFY:
    add_text(s, "252 2.3.3 Try RCPT instead");
    return TRUE;
  case USHER_SMTP_VERB_HELP:
    add_text(s, "214 2.0.0 Commands: LHLO MAIL RCPT DATA BDAT RSET NOOP VRFY QUIT");
    return TRUE;
  case USHER_SMTP_VERB_QUIT:
    tx_abort(s);
    add_text(s, "221 2.0.0 Bye");
    s->quitting = TRUE;
    return TRUE;
  default:
    add_text(s, "502 5.5.1 Not supported here");
    return TRUE;
  }
}

/* The body's end as the client marked it (DATA's terminator, or a BDAT chunk's last byte). */
static void
body_end(LmtpSession *s)
{
  if (s->bdat && !s->bdat_last) {
    if (s->discard_body)
      add_text(s, "%s", s->data_failure);
    else
      add_text(s, "250 2.0.0 OK, %" G_GUINT64_FORMAT " octets received", s->chunk_bytes);
    return;
  }
  if (s->discard_body) {
    add_text(s, "%s", s->data_failure);
    tx_abort(s); /* the backends still hold MAIL and their recipients: RSET there */
    return;
  }
  if (s->client_ending)
    body_cut(s);
  body_complete(s);
}

/* A backend so far behind that the client must wait: its spool is full, or its queue is and it
 * cannot spool (the client outpaces every backend, or there is no spool). */
static gboolean
backends_behind(const LmtpSession *s)
{
  guint64 spool_max = s->w->proxy->lmtp_spool_max;
  for (guint i = 0; i < s->backends->len; i++) {
    const LmtpBackend *b = g_ptr_array_index(s->backends, i);
    if (b->spool_fd >= 0 ? b->spool_w - b->spool_r >= spool_max
                         : backend_queued(b) >= LMTP_QUEUE_HIGH && !should_spool(b))
      return TRUE; /* (one that should spool starts with the next bytes read) */
  }
  return FALSE;
}

/* After the MTA's end (`printf ... | nc`, a FIN right behind its commands): every command it
 * sent has been answered and the answers are written, or its message can never be complete. */
static gboolean
client_eof_done(LmtpSession *s)
{
  if (s->has_held || !g_queue_is_empty(&s->slots) || s->out != NULL)
    return FALSE;
  return s->tx == TX_NONE || s->tx == TX_MAIL || (s->tx == TX_BODY && !backends_behind(s));
}

/* Runs what the client sent as far as it can go now, then writes the answers. */
static void
session_process(LmtpSession *s)
{
  Worker *w = s->w;
  guint64 id = s->id;
  if (s->tx == TX_DATA_WAIT && all_data_answered(s))
    tx_data_answered(s);
  if (s->client_ending && s->tx == TX_FINAL)
    withdraw_unsent_ends(s);
  tx_maybe_done(s);
  while (!s->quitting) {
    if (s->has_held) {
      if (!handle_command(s, &s->held))
        break;
      usher_smtp_cmd_clear(&s->held);
      s->has_held = FALSE;
      continue;
    }
    if (s->tx == TX_DATA_WAIT || s->tx == TX_FINAL)
      break; /* the backends speak first */
    /* The end of a body whose last bytes were handed over is taken at once, whatever the
     * backpressure: a backend that had them may already be answering, and its answers are
     * expected only from body_end on (read before, they would count as a protocol error and
     * its recipients be told 451 for a message it saved). */
    gboolean end_next = usher_smtp_reader_end_pending(s->reader);
    if (!end_next && s->tx == TX_BODY && backends_behind(s))
      break; /* backpressure: read on once they have written */
    if (!end_next && s->slots.length >= LMTP_SLOTS_MAX) {
      slots_to_output(s); /* those known already */
      if (s->slots.length >= LMTP_SLOTS_MAX) {
        /* A client pipelining behind an answer that is owed (a user being moved, a slow
         * backend) waits: its commands stay unread until that answer comes (its arrival runs
         * this again), so a flood of NOOPs costs no memory. */
        count(s, &STATS(s)->lmtp_pipeline_waits, 1);
        break;
      }
    }
    UsherSmtpCmd cmd;
    const guint8 *data;
    gsize len;
    UsherSmtpEvent ev = usher_smtp_reader_next(s->reader, &cmd, &data, &len);
    if (ev == USHER_SMTP_NEED_MORE)
      break;
    if (ev == USHER_SMTP_COMMAND) {
      if (!handle_command(s, &cmd)) {
        s->held = cmd;
        s->has_held = TRUE;
        break;
      }
      usher_smtp_cmd_clear(&cmd);
    } else if (ev == USHER_SMTP_LINE_TOO_LONG) {
      count(s, &STATS(s)->lmtp_bad_commands, 1);
      add_text(s, "500 5.5.2 Line too long");
    } else if (ev == USHER_SMTP_BODY) {
      if (!s->skip_chunk)
        body_bytes(s, data, len);
    } else if (ev == USHER_SMTP_BODY_END) {
      if (s->skip_chunk)
        s->skip_chunk = FALSE; /* answered with its command */
      else
        body_end(s);
    }
    tx_maybe_done(s);
  }
  for (guint i = 0; i < s->backends->len; i++) {
    LmtpBackend *b = g_ptr_array_index(s->backends, i);
    if (!b->failed)
      (void)backend_flush(b);
    if (!b->failed)
      backend_interest(b);
  }
  tx_maybe_done(s);
  if (!client_flush(s))
    return;
  if ((s = g_hash_table_lookup(w->lmtp_by_id, &id)) == NULL)
    return;
  if (s->client_eof && client_eof_done(s)) {
    session_close(s, s->tx == TX_BODY ? "client closed in the middle of a message"
                                      : "client closed");
    return;
  }
  update_interest(s);
}

/* ---- The client ------------------------------------------------------------------------------ */

static void
update_interest(LmtpSession *s)
{
  guint32 ev = 0;
  /* While the client waits for its backends, its reads stay on (no epoll_ctl per message; an
   * MTA waits for answers): what it sends meanwhile is kept, up to one read's worth, and then
   * its reads are off until that is used. A backend behind on a message stops them at once. */
  gboolean paused = (s->tx == TX_BODY && backends_behind(s)) || s->quitting || s->client_eof;
  if (!paused && usher_smtp_reader_pending(s->reader) < LMTP_READ_CHUNK)
    ev |= EPOLLIN;
  if (s->out != NULL && answers_writable(s)) /* held answers wait for no socket */
    ev |= EPOLLOUT;
  poller_modify(s->w->poller, s->watch, ev);
}

static void
session_close(LmtpSession *s, const char *why)
{
  Worker *w = s->w;
  g_debug("lmtp %u/%" G_GUINT64_FORMAT " from %s:%u closed: %s", w->index, s->id, s->cip,
          s->cport, why);
  for (guint i = 0; i < s->rcpts->len; i++) {
    Rcpt *r = g_ptr_array_index(s->rcpts, i);
    if (r->state == RCPT_ROUTING)
      proxy_route_cancel(w, r->request);
  }
  g_queue_clear_full(&s->slots, (GDestroyNotify)slot_free);
  g_ptr_array_unref(s->backends); /* closes them: a half message is discarded by the backend */
  g_ptr_array_unref(s->rcpts);
  if (s->has_held)
    usher_smtp_cmd_clear(&s->held);
  poller_remove_closing(w->poller, s->watch);
  close(s->fd);
  proxy_release(w->proxy, s->unix_client ? NULL : s->cip);
  proxy_stat_add(w->proxy, &w->proxy->stats.lmtp_now, -1);
  usher_smtp_reader_free(s->reader);
  if (s->out != NULL)
    g_byte_array_unref(s->out);
  g_free(s->helo);
  g_free(s->mail_path);
  g_free(s->mail_params);
  g_free(s->data_failure);
  g_queue_unlink(&w->lmtp_sessions, &s->link);
  g_hash_table_remove(w->lmtp_by_id, &s->id);
  g_free(s);
}

static void
on_client(gpointer data, guint32 events)
{
  LmtpSession *s = data;
  if (events & EPOLLRDHUP)
    s->client_ending = TRUE; /* what is left to read is all it sent before its FIN */
  if ((events & EPOLLOUT) && !client_flush(s))
    return;
  if (s->client_eof) { /* nothing more to read; a reset ends the wait for the answers */
    if (events & (EPOLLERR | EPOLLHUP))
      session_close(s, "client gone");
    else
      session_process(s); /* closes once everything is answered */
    return;
  }
  if (!(events & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP))) {
    update_interest(s);
    return;
  }
  /* Read straight into the reader (no copy of the message on its way through). */
  gsize want = s->tx == TX_BODY ? LMTP_READ_CHUNK : LMTP_COMMAND_READ;
  ssize_t n = recv(s->fd, usher_smtp_reader_reserve(s->reader, want), want, 0);
  usher_smtp_reader_commit(s->reader, n > 0 ? (gsize)n : 0);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
    update_interest(s);
    return;
  }
  if (n == 0) {
    /* What it sent before its end is answered first; an MTA that goes away mid-message: the
     * backends drop the half message with the close. */
    s->client_eof = s->client_ending = TRUE;
    session_process(s);
    return;
  }
  if (n < 0) {
    session_close(s, g_strerror(errno));
    return;
  }
  s->deadline_us = g_get_monotonic_time() + LMTP_CLIENT_TIMEOUT_SECS * G_USEC_PER_SEC;
  session_process(s);
}

void
lmtp_accept(Worker *w, const Listener *l, int fd, const char *ip, guint16 port)
{
  LmtpSession *s = g_new0(LmtpSession, 1);
  s->w = w;
  s->id = ++w->next_session;
  s->fd = fd;
  s->unix_client = l->unix_socket;
  g_strlcpy(s->cip, ip, sizeof(s->cip));
  s->cport = port;
  g_strlcpy(s->lip, l->ip, sizeof(s->lip));
  s->lport = l->port;
  if (s->lip[0] == '\0' && !s->unix_client) {
    /* A wildcard listener: the address the MTA reached (for the PROXY header to backends). */
    struct sockaddr_storage ls;
    socklen_t ll = sizeof(ls);
    if (getsockname(fd, (struct sockaddr *)&ls, &ll) == 0)
      proxy_address_text(&ls, s->lip, &s->lport);
  }
  /* TCP_NODELAY comes from the listener (proxy.c, open_listener). */
  s->reader = usher_smtp_reader_new(USHER_SMTP_LINE_MAX_DEFAULT);
  s->rcpts = g_ptr_array_new_with_free_func(rcpt_free);
  s->backends = g_ptr_array_new_with_free_func(backend_free);
  g_queue_init(&s->slots);
  s->deadline_us = g_get_monotonic_time() + LMTP_CLIENT_TIMEOUT_SECS * G_USEC_PER_SEC;
  s->link.data = s;
  g_queue_push_tail_link(&w->lmtp_sessions, &s->link);
  g_hash_table_insert(w->lmtp_by_id, &s->id, s);
  s->watch = poller_add(w->poller, fd, EPOLLIN, on_client, s);
  proxy_stat_add(w->proxy, &w->proxy->stats.lmtp_sessions, 1);
  proxy_stat_add(w->proxy, &w->proxy->stats.lmtp_now, 1);
  add_text(s, "220 %s Usher LMTP ready", g_get_host_name());
  if (client_flush(s))
    update_interest(s);
}

void
lmtp_tick(Worker *w, gint64 now_us)
{
  for (GList *l = w->lmtp_sessions.head; l != NULL;) {
    LmtpSession *s = l->data;
    l = l->next;
    guint64 id = s->id;
    gboolean changed = FALSE;
    for (guint i = 0; i < s->backends->len; i++) {
      LmtpBackend *b = g_ptr_array_index(s->backends, i);
      if (!b->failed && ((b->deadline_us != 0 && b->deadline_us <= now_us) ||
                         (b->write_deadline_us != 0 && b->write_deadline_us <= now_us))) {
        backend_fail(b, b->deadline_us != 0 && b->deadline_us <= now_us
                          ? "timed out"
                          : "it stopped reading what was sent");
        changed = TRUE;
      }
    }
    if (changed) {
      session_process(s);
      if ((s = g_hash_table_lookup(w->lmtp_by_id, &id)) == NULL)
        continue;
    }
    /* An idle client (not one waiting for the backends, nor one paused because a backend is
     * behind) is dropped after the timeout. */
    if (s->deadline_us <= now_us && s->tx != TX_FINAL && s->tx != TX_DATA_WAIT &&
        !s->has_held && !(s->tx == TX_BODY && backends_behind(s))) {
      add_text(s, "421 4.4.2 Idle for too long, closing");
      s->quitting = TRUE;
      (void)client_flush(s);
      if ((s = g_hash_table_lookup(w->lmtp_by_id, &id)) != NULL)
        session_close(s, "idle timeout");
    }
  }
}

void
lmtp_close_all(Worker *w)
{
  while (w->lmtp_sessions.head != NULL) {
    LmtpSession *s = w->lmtp_sessions.head->data;
    if (s->tx == TX_NONE) {
      add_text(s, "421 4.3.2 Server shutting down");
      slots_to_output(s);
      if (s->out != NULL)
        (void)send(s->fd, s->out->data + s->out_off, s->out->len - s->out_off,
                   MSG_NOSIGNAL | MSG_DONTWAIT);
    }
    session_close(s, "usherd is stopping");
  }
}

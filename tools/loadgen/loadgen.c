/* loadgen - an IMAP load generator for tools/bench-proxy, in C so that it does not eat the CPU
 * the proxies under test need (one thread, one epoll loop, nonblocking sockets).
 *
 *   loadgen login -t IP:PORT [-c CONC] [-d SECS] [-n USERS] [-p PASSWORD] [-b SRC_IP]
 *       CONC connections at a time, each: connect, greeting, LOGIN userK, LOGOUT, close; again
 *       until SECS have passed. Prints one JSON line: logins, failures, logins per second, p50
 *       and p99 login latency (connect to the LOGIN's OK) in ms.
 *   loadgen idle -t IP:PORT -c N [-n USERS] [-p PASSWORD] [-b SRC_IP]
 *       N logged-in connections, opened 100 at a time; prints {"idle": N} when all are in, then
 *       holds them until its standard input closes.
 *   loadgen fetch -t IP:PORT [-c CONC] [-d SECS] [-u USER] [-p PASSWORD]
 *       CONC connections of USER, each SELECT INBOX then FETCH 1 BODY.PEEK[] over and over;
 *       prints the bytes per second received.
 *   loadgen lmtp -t IP:PORT [-c CONC] [-d SECS] [-n USERS] [-r RCPTS] [-s BYTES] [-b SRC_IP]
 *       CONC LMTP connections, each: LHLO once, then messages of about BYTES to RCPTS recipients
 *       (userK@example.org, K cycling over USERS), pipelined MAIL/RCPT/DATA, one after the other
 *       on the same connection until SECS have passed. Prints messages and recipients delivered
 *       (2xx after the message), failures, and the rates.
 *
 * Every loop is bounded by SECS or by N; errors are counted, never retried forever. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 65536
#define BUF 65536

enum mode { M_LOGIN, M_IDLE, M_FETCH, M_LMTP };
enum step { S_GREETING, S_LOGIN, S_LOGOUT, S_SELECT, S_FETCH, S_IDLE, S_LHLO, S_TX, S_DATA, S_FINAL };

typedef struct {
  int fd;
  enum step step;
  double started;
  char line[1024];
  size_t line_len;
  char tail[16]; /* fetch mode: the last bytes seen, to find the tagged OK across reads */
  size_t tail_len;
  long expect;   /* lmtp: replies still owed in this step */
  long accepted; /* lmtp: recipients accepted at RCPT */
} Conn;

static struct sockaddr_in target, source;
static int have_source;
static int epfd;
static enum mode mode;
static long n_users = 100;
static const char *password = "pass";
static const char *fetch_user = "user1";
static long next_user;
static long logins, failures, started_conns;
static unsigned long long fetched_bytes;
static double *latencies;
static long n_latencies, cap_latencies;
static int idle_in;
static long n_rcpts = 1;
static long msg_bytes = 10240;
static char *lmtp_body; /* the message, dot-terminated */
static long messages, recipients;
static double run_end;

static double
now(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void
die(const char *what)
{
  fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
  exit(2);
}

static void
send_all(Conn *c, const char *text)
{
  size_t len = strlen(text), off = 0;
  while (off < len) {
    ssize_t n = send(c->fd, text + off, len - off, MSG_NOSIGNAL);
    if (n > 0) {
      off += (size_t)n;
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      struct pollfd p = {c->fd, POLLOUT, 0};
      (void)poll(&p, 1, 1000); /* requests are small: a full socket is a rare, short wait */
      continue;
    }
    return; /* the read side will see the close */
  }
}

static void
conn_open(Conn *c)
{
  c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c->fd < 0)
    die("socket");
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (have_source && bind(c->fd, (struct sockaddr *)&source, sizeof(source)) != 0)
    die("bind");
  if (connect(c->fd, (struct sockaddr *)&target, sizeof(target)) != 0 && errno != EINPROGRESS)
    die("connect");
  c->step = S_GREETING;
  c->started = now();
  c->line_len = 0;
  c->tail_len = 0;
  started_conns++;
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0)
    die("epoll_ctl");
}

static void
conn_close(Conn *c)
{
  epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  c->fd = -1;
}

static void
record_latency(double secs)
{
  if (n_latencies == cap_latencies) {
    cap_latencies = cap_latencies ? cap_latencies * 2 : 65536;
    latencies = realloc(latencies, (size_t)cap_latencies * sizeof(double));
    if (latencies == NULL)
      die("realloc");
  }
  latencies[n_latencies++] = secs;
}

/* LMTP: MAIL, the RCPTs and DATA, pipelined. */
static void
lmtp_start(Conn *c)
{
  char cmd[128];
  send_all(c, "MAIL FROM:<loadgen@example.org>\r\n");
  for (long i = 0; i < n_rcpts; i++) {
    snprintf(cmd, sizeof(cmd), "RCPT TO:<user%ld@example.org>\r\n", (next_user++ % n_users) + 1);
    send_all(c, cmd);
  }
  send_all(c, "DATA\r\n");
  c->step = S_TX;
  c->expect = 1 + n_rcpts;
  c->accepted = 0;
  c->started = now();
}

/* An LMTP reply line; returns 0 when the connection is finished. */
static int
on_lmtp_line(Conn *c, const char *line)
{
  if (strlen(line) < 3 || (line[3] != ' ' && line[3] != '\0'))
    return 1; /* a continuation line */
  int code = atoi(line);
  switch (c->step) {
  case S_GREETING:
    if (code != 220) {
      failures++;
      return 0;
    }
    send_all(c, "LHLO loadgen\r\n");
    c->step = S_LHLO;
    return 1;
  case S_LHLO:
    if (code != 250) {
      failures++;
      return 0;
    }
    lmtp_start(c);
    return 1;
  case S_TX:
    if (c->expect < 1 + n_rcpts) { /* a RCPT reply (the first is MAIL's) */
      if (code / 100 == 2)
        c->accepted++;
      else
        failures++;
    } else if (code / 100 != 2) {
      failures++;
      return 0;
    }
    if (--c->expect == 0)
      c->step = S_DATA;
    return 1;
  case S_DATA:
    if (code != 354) {
      failures++;
      return 0;
    }
    send_all(c, lmtp_body);
    c->step = S_FINAL;
    c->expect = c->accepted;
    if (c->expect == 0)
      return 0;
    return 1;
  case S_FINAL:
    if (code / 100 == 2)
      recipients++;
    else
      failures++;
    if (--c->expect > 0)
      return 1;
    messages++;
    record_latency(now() - c->started);
    if (now() >= run_end) {
      send_all(c, "QUIT\r\n");
      c->step = S_LOGOUT;
      return 1;
    }
    lmtp_start(c);
    return 1;
  case S_LOGOUT:
    return 1;
  default:
    return 1;
  }
}

/* One complete line from the server; returns 0 when the connection is finished. */
static int
on_line(Conn *c, const char *line)
{
  char cmd[256];
  if (mode == M_LMTP)
    return on_lmtp_line(c, line);
  switch (c->step) {
  case S_GREETING:
    if (strncmp(line, "* OK", 4) != 0) {
      failures++;
      return 0;
    }
    if (mode == M_FETCH)
      snprintf(cmd, sizeof(cmd), "a LOGIN %s %s\r\n", fetch_user, password);
    else
      snprintf(cmd, sizeof(cmd), "a LOGIN user%ld %s\r\n", (next_user++ % n_users) + 1, password);
    send_all(c, cmd);
    c->step = S_LOGIN;
    return 1;
  case S_LOGIN:
    if (strncmp(line, "a ", 2) != 0)
      return 1;
    if (strncmp(line, "a OK", 4) != 0) {
      failures++;
      return 0;
    }
    logins++;
    record_latency(now() - c->started);
    if (mode == M_LOGIN) {
      send_all(c, "b LOGOUT\r\n");
      c->step = S_LOGOUT;
    } else if (mode == M_IDLE) {
      c->step = S_IDLE;
      idle_in++;
    } else {
      send_all(c, "s SELECT INBOX\r\n");
      c->step = S_SELECT;
    }
    return 1;
  case S_LOGOUT:
    return strncmp(line, "b OK", 4) != 0;
  case S_SELECT:
    if (strncmp(line, "s ", 2) != 0)
      return 1;
    if (strncmp(line, "s OK", 4) != 0) {
      failures++;
      return 0;
    }
    send_all(c, "fQ9 FETCH 1 BODY.PEEK[]\r\n");
    c->step = S_FETCH;
    return 1;
  default:
    return 1;
  }
}

/* Fetch mode: count the bytes, and send the next FETCH when the tagged OK went by. */
static void
on_fetch_bytes(Conn *c, const char *data, size_t n)
{
  static const char mark[] = "\r\nfQ9 OK";
  fetched_bytes += n;
  char window[sizeof(c->tail) + BUF];
  memcpy(window, c->tail, c->tail_len);
  memcpy(window + c->tail_len, data, n);
  size_t wlen = c->tail_len + n;
  if (memmem(window, wlen, mark, sizeof(mark) - 1) != NULL) {
    send_all(c, "fQ9 FETCH 1 BODY.PEEK[]\r\n");
    c->tail_len = 0;
    return;
  }
  size_t keep = wlen < sizeof(c->tail) ? wlen : sizeof(c->tail);
  memcpy(c->tail, window + wlen - keep, keep);
  c->tail_len = keep;
}

/* Returns 0 when the connection is finished (closed or failed). */
static int
on_readable(Conn *c)
{
  char buf[BUF];
  ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
  if (n < 0 && (errno == EAGAIN || errno == EINTR))
    return 1;
  if (n <= 0) {
    if (c->step != S_LOGOUT)
      failures++;
    return 0;
  }
  if (c->step == S_FETCH) {
    on_fetch_bytes(c, buf, (size_t)n);
    return 1;
  }
  for (ssize_t i = 0; i < n; i++) {
    if (buf[i] != '\n') {
      if (c->line_len < sizeof(c->line) - 1)
        c->line[c->line_len++] = buf[i];
      continue;
    }
    if (c->line_len > 0 && c->line[c->line_len - 1] == '\r')
      c->line_len--;
    c->line[c->line_len] = '\0';
    c->line_len = 0;
    if (!on_line(c, c->line))
      return 0;
    if (c->step == S_FETCH && i + 1 < n) {
      on_fetch_bytes(c, buf + i + 1, (size_t)(n - i - 1));
      return 1;
    }
  }
  return 1;
}

static int
cmp_double(const void *a, const void *b)
{
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static void
parse_addr(const char *text, struct sockaddr_in *out, int need_port)
{
  char host[64];
  const char *colon = strrchr(text, ':');
  size_t hl = colon != NULL ? (size_t)(colon - text) : strlen(text);
  if (hl >= sizeof(host) || (need_port && colon == NULL)) {
    fprintf(stderr, "loadgen: bad address %s\n", text);
    exit(2);
  }
  memcpy(host, text, hl);
  host[hl] = '\0';
  memset(out, 0, sizeof(*out));
  out->sin_family = AF_INET;
  out->sin_port = htons(colon != NULL ? (uint16_t)atoi(colon + 1) : 0);
  if (inet_pton(AF_INET, host, &out->sin_addr) != 1) {
    fprintf(stderr, "loadgen: bad address %s\n", text);
    exit(2);
  }
}

int
main(int argc, char **argv)
{
  if (argc < 2 || (strcmp(argv[1], "login") != 0 && strcmp(argv[1], "idle") != 0 &&
                   strcmp(argv[1], "fetch") != 0 && strcmp(argv[1], "lmtp") != 0)) {
    fprintf(stderr, "usage: loadgen login|idle|fetch|lmtp -t IP:PORT [-c N] [-d SECS] [-n USERS] "
                    "[-u USER] [-p PASSWORD] [-b SRC_IP] [-r RCPTS] [-s BYTES]\n");
    return 2;
  }
  mode = strcmp(argv[1], "login") == 0   ? M_LOGIN
         : strcmp(argv[1], "idle") == 0  ? M_IDLE
         : strcmp(argv[1], "fetch") == 0 ? M_FETCH
                                         : M_LMTP;
  long conc = 50;
  double secs = 10;
  int have_target = 0, opt;
  optind = 2;
  while ((opt = getopt(argc, argv, "t:c:d:n:u:p:b:r:s:")) != -1) {
    switch (opt) {
    case 't':
      parse_addr(optarg, &target, 1);
      have_target = 1;
      break;
    case 'c':
      conc = atol(optarg);
      break;
    case 'd':
      secs = atof(optarg);
      break;
    case 'n':
      n_users = atol(optarg);
      break;
    case 'u':
      fetch_user = optarg;
      break;
    case 'p':
      password = optarg;
      break;
    case 'b':
      parse_addr(optarg, &source, 0);
      have_source = 1;
      break;
    case 'r':
      n_rcpts = atol(optarg);
      break;
    case 's':
      msg_bytes = atol(optarg);
      break;
    default:
      return 2;
    }
  }
  if (!have_target || conc < 1 || conc > MAX_CONNS || n_users < 1 || secs <= 0 ||
      n_rcpts < 1 || n_rcpts > 1000 || msg_bytes < 100 || msg_bytes > 100 * 1024 * 1024) {
    fprintf(stderr, "loadgen: -t is needed; -c 1..%d, -n >= 1, -d > 0, -r 1..1000, "
                    "-s 100..104857600\n", MAX_CONNS);
    return 2;
  }
  if (mode == M_LMTP) {
    /* Headers, then 78-byte lines up to the size, then the terminator. */
    lmtp_body = malloc((size_t)msg_bytes + 200);
    if (lmtp_body == NULL)
      die("malloc");
    size_t len = (size_t)sprintf(lmtp_body, "Subject: loadgen\r\nFrom: loadgen@example.org\r\n\r\n");
    while (len + 80 < (size_t)msg_bytes) {
      memset(lmtp_body + len, 'x', 78);
      memcpy(lmtp_body + len + 78, "\r\n", 2);
      len += 80;
    }
    memcpy(lmtp_body + len, ".\r\n", 4);
    lmtp_body[len + 4] = '\0';
  }
  epfd = epoll_create1(EPOLL_CLOEXEC);
  if (epfd < 0)
    die("epoll_create1");
  Conn *conns = calloc((size_t)conc, sizeof(Conn));
  long open_target = mode == M_IDLE ? (conc < 100 ? conc : 100) : conc;
  long opened = 0;
  for (long i = 0; i < open_target; i++, opened++)
    conn_open(&conns[i]);
  double t0 = now(), end = t0 + secs;
  run_end = end;
  struct epoll_event evs[256];
  long live = open_target;
  int reported = 0;
  while (live > 0) {
    double t = now();
    if (mode != M_IDLE && t >= end + (mode == M_LMTP ? 60 : 0))
      break; /* LMTP: the messages in flight at the end may finish (bounded) */
    if (mode == M_IDLE && !reported && idle_in + failures >= conc) {
      printf("{\"idle\": %d, \"failures\": %ld}\n", idle_in, failures);
      fflush(stdout);
      reported = 1;
      char sink[256];
      while (read(0, sink, sizeof(sink)) > 0) /* hold until stdin closes */
        ;
      break;
    }
    if (mode == M_IDLE && t - t0 > 600) {
      fprintf(stderr, "loadgen: idle connections not all in after 600 s\n");
      break;
    }
    int n = epoll_wait(epfd, evs, 256, 100);
    for (int i = 0; i < n; i++) {
      Conn *c = evs[i].data.ptr;
      if (on_readable(c))
        continue;
      conn_close(c);
      live--;
      if (mode == M_LOGIN && now() < end) {
        conn_open(c); /* the next login on this slot */
        live++;
      }
    }
    /* Idle mode opens the rest 100 at a time, as the earlier ones finish logging in. */
    while (mode == M_IDLE && opened < conc && opened - (idle_in + failures) < 100) {
      conn_open(&conns[opened++]);
      live++;
    }
  }
  double elapsed = now() - t0;
  if (mode == M_LOGIN) {
    qsort(latencies, (size_t)n_latencies, sizeof(double), cmp_double);
    double p50 = n_latencies ? latencies[n_latencies / 2] : 0;
    double p99 = n_latencies ? latencies[(long)((double)n_latencies * 0.99)] : 0;
    printf("{\"logins\": %ld, \"failures\": %ld, \"secs\": %.3f, \"logins_per_sec\": %.1f, "
           "\"p50_ms\": %.3f, \"p99_ms\": %.3f}\n",
           logins, failures, elapsed, (double)logins / elapsed, p50 * 1000, p99 * 1000);
  } else if (mode == M_LMTP) {
    qsort(latencies, (size_t)n_latencies, sizeof(double), cmp_double);
    double p50 = n_latencies ? latencies[n_latencies / 2] : 0;
    printf("{\"messages\": %ld, \"recipients\": %ld, \"failures\": %ld, \"secs\": %.3f, "
           "\"messages_per_sec\": %.1f, \"recipients_per_sec\": %.1f, \"p50_ms\": %.3f}\n",
           messages, recipients, failures, elapsed, (double)messages / elapsed,
           (double)recipients / elapsed, p50 * 1000);
  } else if (mode == M_FETCH) {
    printf("{\"bytes\": %llu, \"secs\": %.3f, \"mib_per_sec\": %.1f, \"failures\": %ld}\n",
           fetched_bytes, elapsed, (double)fetched_bytes / elapsed / 1048576.0, failures);
  }
  free(conns);
  free(latencies);
  free(lmtp_body);
  return 0;
}

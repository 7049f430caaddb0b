/* world.c - the simulator engine (see world.h). */
#include "sim/world-private.h"

#include "common/driver.h"
#include "sim/dist.h"

#include <string.h>

/* ---- Small helpers ---------------------------------------------------------------------------- */

/* The run's fingerprint folds in every input and effect, every byte a director writes included:
 * tens of millions of writes in a large ring. It takes 8 bytes per multiply (a byte-wise FNV
 * spent about 4 % of such a run); the last word also carries the write's length (its low
 * 8 bits), so where one write ends is part of what is folded. */
static inline guint64
fp_word(guint64 h, guint64 v)
{
  h = (h ^ v) * G_GUINT64_CONSTANT(0x9e3779b97f4a7c15);
  return h ^ (h >> 29);
}

static guint64
fp_bytes(guint64 h, const void *data, gsize len)
{
  const guint8 *p = data;
  gsize n = len;
  for (; n >= 8; p += 8, n -= 8) {
    guint64 v;
    memcpy(&v, p, 8);
    h = fp_word(h, v);
  }
  guint64 tail = (guint64)(len & 0xff) << 56;
  for (gsize i = 0; i < n; i++)
    tail |= (guint64)p[i] << (8 * i);
  return fp_word(h, tail);
}

static void
mix(SimWorld *w, guint64 v)
{
  w->fingerprint = fp_word(w->fingerprint, v);
}

char *
world_time(gint64 us)
{
  gint64 s = us / SEC_US;
  return g_strdup_printf("%02" G_GINT64_FORMAT ":%02d:%02d.%03d", s / 3600, (int)(s / 60 % 60),
                         (int)(s % 60), (int)(us % SEC_US / 1000));
}

void
world_fail(SimWorld *w, const char *fmt, ...)
{
  w->failures_total++;
  if (w->failures->len >= MAX_FAILURES_KEPT)
    return;
  va_list args;
  va_start(args, fmt);
  g_autofree char *msg = g_strdup_vprintf(fmt, args);
  va_end(args);
  g_autofree char *t = world_time(w->now_us);
  g_ptr_array_add(w->failures, g_strdup_printf("%s: %s", t, msg));
}

static void
add_mark(SimWorld *w, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static void
add_mark(SimWorld *w, const char *fmt, ...)
{
  va_list args;
  va_start(args, fmt);
  SimMark m = {w->now_us, g_strdup_vprintf(fmt, args)};
  va_end(args);
  g_array_append_val(w->marks, m);
}

/* ---- Events ------------------------------------------------------------------------------------ */

static void
schedule(SimWorld *w, gint64 t, SimEvKind kind, guint node, guint64 a, guint64 b, gpointer p)
{
  SimEvent ev = {.t = t, .kind = kind, .node = node, .a = a, .b = b, .p = p};
  if (kind != EV_ARRIVAL && kind != EV_SCENARIO && kind != EV_SAMPLE && kind != EV_PROBE &&
      kind != EV_CHECK)
    ev.incarnation = w->nodes[node].incarnation;
  sim_net_schedule(w->net, ev);
}

/* ---- Clocks ------------------------------------------------------------------------------------ */

static UsherNow
node_now(SimWorld *w, SimNode *n)
{
  gint64 drift = n->drift_base_us + (w->now_us - n->drift_since_us) * n->drift_ppm / 1000000;
  UsherNow now = {MONO_BASE_US + w->now_us, WALL_BASE_US + w->now_us + n->wall_offset_us + drift};
  return now;
}

static void drain(SimWorld *w, guint node);

/* ---- Users and sessions ------------------------------------------------------------------------- */

static char *
user_name(SimWorld *w, guint32 user, char *buf, gsize size)
{
  g_snprintf(buf, size, "%s%u%s", w->sc->user_prefix, user + 1, w->sc->user_suffix);
  return buf;
}


static guint
backend_index(SimWorld *w, const UsherIp *ip)
{
  for (guint i = 0; i < w->backends->len; i++)
    if (usher_ip_equal(&g_array_index(w->backends, SimBackend, i).ip, ip))
      return i;
  return G_MAXUINT;
}

/* The backend machine at ip, added to the world if no event named it yet: a backend-fail or
 * backend-recover may come before the host-add that tells the directors about it (or a host-add
 * may have gone to a director that was down). */
static guint
backend_ensure(SimWorld *w, const UsherIp *ip)
{
  guint b = backend_index(w, ip);
  if (b != G_MAXUINT)
    return b;
  SimBackend be = {0};
  be.ip = *ip;
  usher_ip_to_string(ip, be.ip_str);
  g_array_append_val(w->backends, be);
  return w->backends->len - 1;
}

/* Can director node reach backend b (it works and the path from node is not cut)? */
static gboolean
backend_reachable(SimWorld *w, guint b, guint node)
{
  const SimBackend *be = &g_array_index(w->backends, SimBackend, b);
  return !be->failed && (node >= 64 || !(be->unreachable_from & (G_GUINT64_CONSTANT(1) << node)));
}

static SimSession *
session_at(SimWorld *w, guint32 idx)
{
  return &g_array_index(w->sessions, SimSession, idx);
}

static guint
distinct_backends(SimWorld *w, SimUser *u, guint *first_out)
{
  guint seen[4] = {0}, n = 0;
  for (guint32 s = u->sessions; s != 0; s = session_at(w, s - 1)->next) {
    SimSession *ss = session_at(w, s - 1);
    gboolean dup = FALSE;
    for (guint i = 0; i < n && i < 4; i++)
      dup |= seen[i] == ss->backend;
    if (!dup) {
      if (n < 4)
        seen[n] = ss->backend;
      n++;
    }
  }
  if (first_out != NULL)
    *first_out = n > 0 ? seen[0] : 0;
  return n;
}

static gint64 skew_now_secs(SimWorld *w);
static gint64 max_skew_secs(SimWorld *w);

/* The backend director n holds a user on, and the entry's timestamp, by n's own clock
 * (usher_director_held_user(): once per session, where usher_director_lookup_user() would build
 * a vhost ring each time). */
static gboolean
held_by(SimWorld *w, SimNode *n, guint32 user, UsherIp *ip_out, guint32 *timestamp_out)
{
  const UsherUser *u = usher_director_held_user(n->d, node_now(w, n).wall_us, w->users[user].hash,
                                                sim_scenario_user_tag(w->sc, user));
  if (u == NULL)
    return FALSE;
  if (ip_out != NULL)
    *ip_out = usher_host_table_get(usher_director_get_hosts(n->d), u->host)->ip;
  if (timestamp_out != NULL)
    *timestamp_out = u->timestamp;
  return TRUE;
}

/* Whether, as the director answered a login with backend, a director whose clock differs from
 * its own by more than a second held the user on another backend: the two disagree because they
 * expire the entry at different times (the one behind keeps it longer, and a login there
 * refreshes it, so by the time the second session starts the entries no longer show it). */
static gboolean
placed_across_skew(SimWorld *w, guint32 user, guint director, guint backend)
{
  if (max_skew_secs(w) <= 1)
    return FALSE;
  const SimBackend *b = &g_array_index(w->backends, SimBackend, backend);
  gint64 here = node_now(w, &w->nodes[director]).wall_us;
  for (guint i = 0; i < w->n_nodes; i++) {
    SimNode *n = &w->nodes[i];
    if (!n->up || i == director)
      continue;
    gint64 there = node_now(w, n).wall_us;
    if (ABS(there - here) <= SEC_US)
      continue;
    UsherIp held;
    if (held_by(w, n, user, &held, NULL) && !usher_ip_equal(&held, &b->ip))
      return TRUE;
  }
  return FALSE;
}

/* Whether the directors' clocks explain a user's second backend (spec weakness 7): directors
 * expire entries by their own clocks, so one whose clock is ahead (or that minted the timestamp
 * while behind) can drop the user and place it afresh while another still holds it. That is so
 * when some director still holds the user on another backend than the newest session's with an
 * entry that the most advanced clock of the ring sees expired, or within the span of clock
 * offsets (plus 2 s) of expiring; or when one of the sessions was placed while a director with
 * another clock held the user elsewhere (placed_across_skew); or when an older session lost its
 * entry to a clock step of its own director (orphaned_by_step: its refreshes keep nothing alive
 * any more, and the others expire the entry in turn). Without clock differences, or when the
 * directors that disagree share a clock, the window is not the clocks' doing. */
static gboolean
skew_explains(SimWorld *w, guint32 user)
{
  const SimUser *u = &w->users[user];
  gint64 span = max_skew_secs(w);
  if (span <= 1 || u->sessions == 0)
    return FALSE;
  const SimSession *first = session_at(w, u->sessions - 1);
  const SimBackend *newest = &g_array_index(w->backends, SimBackend, first->backend);
  if (first->placed_across_skew)
    return TRUE;
  for (guint32 s = first->next; s != 0; s = session_at(w, s - 1)->next) {
    const SimSession *older = session_at(w, s - 1);
    if ((older->orphaned_by_step || older->placed_across_skew) && older->backend != first->backend)
      return TRUE;
  }
  gint64 ahead = G_MININT64;
  for (guint i = 0; i < w->n_nodes; i++)
    if (w->nodes[i].up)
      ahead = MAX(ahead, node_now(w, &w->nodes[i]).wall_us / SEC_US);
  gint64 expire = w->sc->config->user_expire_secs;
  for (guint i = 0; i < w->n_nodes; i++) {
    SimNode *n = &w->nodes[i];
    if (!n->up)
      continue;
    UsherIp held;
    guint32 timestamp;
    if (held_by(w, n, user, &held, &timestamp) && !usher_ip_equal(&held, &newest->ip) &&
        (gint64)timestamp + expire <= ahead + span + 2)
      return TRUE;
  }
  return FALSE;
}

/* Re-evaluates the user's double-backend state after its sessions changed. */
static void
track_backends(SimWorld *w, guint32 user)
{
  SimUser *u = &w->users[user];
  guint n = distinct_backends(w, u, NULL);
  guint before = u->live_backends;
  u->live_backends = (guint8)MIN(n, 255);
  if (before < 2 && n >= 2) {
    SimWindow *win = g_new0(SimWindow, 1);
    win->start_us = w->now_us;
    /* The most specific cause first: a session older than an unsafe change of its backend
     * explains the window whatever else is going on. */
    for (guint32 s = u->sessions; s != 0; s = session_at(w, s - 1)->next) {
      SimSession *ss = session_at(w, s - 1);
      SimBackend *b = &g_array_index(w->backends, SimBackend, ss->backend);
      if (b->last_unsafe_us > 0 && ss->start_us <= b->last_unsafe_us) {
        win->allowed = TRUE;
        win->cause = "unsafe host change";
      }
    }
    if (!win->allowed && (w->faults_active > 0 || w->now_us < w->fault_grace_until_us)) {
      win->allowed = TRUE;
      win->cause = "split brain";
    }
    if (!win->allowed && skew_explains(w, user)) {
      win->allowed = TRUE;
      win->cause = "clock skew";
    }
    if (!win->allowed) {
      win->cause = "violation";
      char name[256];
      world_fail(w, "user %s has live sessions on %u backends at once, outside any fault",
                 user_name(w, user, name, sizeof(name)), n);
    }
    g_hash_table_insert(w->windows, GUINT_TO_POINTER(user + 1), win);
  } else if (before >= 2 && n < 2) {
    SimWindow *win = g_hash_table_lookup(w->windows, GUINT_TO_POINTER(user + 1));
    if (win != NULL) {
      gint64 d = w->now_us - win->start_us;
      w->window_total_us += d;
      w->window_longest_us = MAX(w->window_longest_us, d);
      if (!win->allowed)
        w->windows_violation++;
      else if (strcmp(win->cause, "split brain") == 0)
        w->windows_split_brain++;
      else if (strcmp(win->cause, "clock skew") == 0)
        w->windows_clock_skew++;
      else
        w->windows_unsafe++;
      g_hash_table_remove(w->windows, GUINT_TO_POINTER(user + 1));
    }
  }
}

static void
session_end(SimWorld *w, guint32 idx, gboolean kicked)
{
  SimSession *s = session_at(w, idx);
  if (!s->alive)
    return;
  s->alive = FALSE;
  s->gen++;
  SimUser *u = &w->users[s->user];
  /* Unlink from the user's list. */
  guint32 *pp = &u->sessions;
  while (*pp != 0 && *pp != idx + 1)
    pp = &session_at(w, *pp - 1)->next;
  if (*pp == idx + 1)
    *pp = s->next;
  s->next = 0;
  SimBackend *b = &g_array_index(w->backends, SimBackend, s->backend);
  g_assert(b->live > 0);
  b->live--;
  if (kicked)
    w->sessions_kicked++;
  guint32 user = s->user;
  g_array_append_val(w->free_sessions, idx);
  track_backends(w, user);
}

static void
session_start(SimWorld *w, SimLogin *lg, guint backend, guint refresh_secs)
{
  guint32 idx;
  if (w->free_sessions->len > 0) {
    idx = g_array_index(w->free_sessions, guint32, w->free_sessions->len - 1);
    g_array_set_size(w->free_sessions, w->free_sessions->len - 1);
  } else {
    SimSession blank = {0};
    g_array_append_val(w->sessions, blank);
    idx = w->sessions->len - 1;
  }
  SimSession *s = session_at(w, idx);
  guint32 gen = s->gen;
  *s = (SimSession){0};
  s->gen = gen + 1;
  s->user = lg->user;
  s->backend = (guint16)backend;
  s->director = (guint8)lg->director;
  s->director_incarnation = lg->director_incarnation;
  s->proto = lg->proto;
  s->alive = TRUE;
  s->start_us = w->now_us;
  s->refresh_secs = refresh_secs;
  s->placed_across_skew = placed_across_skew(w, lg->user, lg->director, backend);
  SimUser *u = &w->users[lg->user];
  s->next = u->sessions;
  u->sessions = idx + 1;
  SimBackend *b = &g_array_index(w->backends, SimBackend, backend);
  b->live++;
  b->sessions_total++;
  w->sessions_started++;
  if (u->last_backend != 0 && u->last_backend != backend + 1) {
    w->backend_changes++;
    guint64 key = ((guint64)(u->last_backend - 1) << 32) | backend;
    gpointer old = g_hash_table_lookup(w->moves_between, &key);
    guint64 *k = g_memdup2(&key, sizeof(key));
    g_hash_table_replace(w->moves_between, k, GSIZE_TO_POINTER(GPOINTER_TO_SIZE(old) + 1));
    if (!u->moved) {
      u->moved = 1;
      w->users_moved++;
    }
  }
  u->last_backend = (guint16)(backend + 1);
  track_backends(w, lg->user);
  gint64 duration = lg->proto == 2 ? w->sc->lmtp_duration_us
                                   : sim_dist_sample(&w->sc->session, &w->rng_workload);
  schedule(w, w->now_us + MAX(duration, 1), EV_SESSION_END, 0, idx, s->gen, NULL);
  if (lg->proto != 2 && refresh_secs > 0)
    schedule(w, w->now_us + (gint64)refresh_secs * SEC_US, EV_SESSION_REFRESH, 0, idx, s->gen,
             NULL);
}

/* ---- Logins ------------------------------------------------------------------------------------- */

static void login_attempt(SimWorld *w, SimLogin *lg);

/* An LMTP delivery cut by a failure: its recipient got a temporary failure (its backend was
 * lost) or no answer (its director was), so the MTA delivers it again later, routed anew, as
 * usherd's LMTP proxy makes it do. */
static void
lmtp_redeliver(SimWorld *w, guint32 user)
{
  SimLogin *lg = g_new0(SimLogin, 1);
  lg->user = user;
  lg->proto = 2;
  lg->first_us = w->now_us + w->sc->retry_delay_us;
  w->lmtp_redelivered++;
  schedule(w, lg->first_us, EV_LOGIN_ATTEMPT, 0, 0, 0, lg);
}

static void
login_retry_or_fail(SimWorld *w, SimLogin *lg, const char *why)
{
  g_hash_table_steal(w->logins, &lg->id); /* lg is ours again */
  if (lg->attempt < w->sc->retry_attempts) {
    lg->attempt++;
    w->retries++;
    schedule(w, w->now_us + w->sc->retry_delay_us, EV_LOGIN_ATTEMPT, 0, 0, 0, lg);
    return;
  }
  (void)why;
  w->logins_failed++;
  g_free(lg);
}

static void
latency_record(SimWorld *w, gint64 us)
{
  guint64 v = (guint64)MAX(us, 0);
  guint msb = v < 16 ? 0 : 63 - (guint)__builtin_clzll(v);
  guint bucket = v < 16 ? (guint)v : (msb - 3) * 16 + (guint)((v >> (msb - 4)) & 15);
  w->latency_hist[MIN(bucket, G_N_ELEMENTS(w->latency_hist) - 1)]++;
  w->latency_count++;
  w->latency_max_us = MAX(w->latency_max_us, us);
}

gint64
world_latency_percentile(SimWorld *w, guint pct)
{
  if (w->latency_count == 0)
    return 0;
  guint64 want = (w->latency_count * pct + 99) / 100, seen = 0;
  for (guint b = 0; b < G_N_ELEMENTS(w->latency_hist); b++) {
    seen += w->latency_hist[b];
    if (seen >= want) {
      if (b < 16)
        return b;
      guint msb = b / 16 + 3, sub = b % 16;
      /* The bucket's upper bound. */
      return (gint64)(((guint64)(16 + sub + 1)) << (msb - 4)) - 1;
    }
  }
  return w->latency_max_us;
}

static void
login_result(SimWorld *w, guint node, const UsherEffect *e)
{
  SimLogin *lg = g_hash_table_lookup(w->logins, &e->login.request);
  if (lg == NULL) {
    if (g_hash_table_contains(w->cancelled, &e->login.request))
      world_fail(w, "director %u answered login request %" G_GUINT64_FORMAT
                    " after the client cancelled it",
                 node, e->login.request);
    return;
  }
  if (w->now_us - lg->sent_us > USHER_REQUEST_TIMEOUT_SECS * SEC_US + LOGIN_COMPLETION_SLACK_US)
    world_fail(w, "login request %" G_GUINT64_FORMAT " on director %u took %" G_GINT64_FORMAT
                  " ms to be answered (the bound is %d s)",
               lg->id, node, (w->now_us - lg->sent_us) / 1000, USHER_REQUEST_TIMEOUT_SECS);
  if (e->login.status != USHER_LOGIN_OK) {
    w->tempfails++;
    login_retry_or_fail(w, lg, "temporary failure");
    return;
  }
  guint b = backend_index(w, &e->login.host);
  if (b == G_MAXUINT) {
    world_fail(w, "director %u sent a login to %s, which is not a backend", node,
               e->login.hostname != NULL ? e->login.hostname : "?");
    login_retry_or_fail(w, lg, "unknown backend");
    return;
  }
  SimBackend *be = &g_array_index(w->backends, SimBackend, b);
  if (!backend_reachable(w, b, lg->director)) {
    w->backend_refused++;
    login_retry_or_fail(w, lg, be->failed ? "backend down" : "backend unreachable");
    return;
  }
  if (be->capacity > 0 && be->live >= be->capacity) {
    w->backend_full++;
    login_retry_or_fail(w, lg, "backend full");
    return;
  }
  g_hash_table_steal(w->logins, &lg->id);
  w->logins_ok++;
  latency_record(w, w->now_us - lg->first_us);
  session_start(w, lg, b, e->login.refresh_secs);
  g_free(lg);
}

static guint
pick_director(SimWorld *w)
{
  guint up[64], n = 0;
  for (guint i = 0; i < w->n_nodes; i++)
    if (w->nodes[i].up && !w->nodes[i].paused)
      up[n++] = i;
  if (n == 0)
    return G_MAXUINT;
  return up[usher_rng_below(&w->rng_workload, n)];
}

static void
login_attempt(SimWorld *w, SimLogin *lg)
{
  w->login_attempts++;
  guint d = pick_director(w);
  if (d == G_MAXUINT) {
    w->director_unavailable++;
    lg->id = w->next_login++;
    g_hash_table_insert(w->logins, &lg->id, lg);
    login_retry_or_fail(w, lg, "no director up");
    return;
  }
  SimNode *n = &w->nodes[d];
  lg->id = w->next_login++;
  lg->director = d;
  lg->director_incarnation = n->incarnation;
  lg->sent_us = w->now_us;
  g_hash_table_insert(w->logins, &lg->id, lg);
  char name[256];
  mix(w, lg->id);
  mix(w, lg->user);
  usher_director_login_request(n->d, node_now(w, n), lg->id,
                               user_name(w, lg->user, name, sizeof(name)),
                               sim_scenario_user_tag(w->sc, lg->user));
  /* Some clients give up on a login that has not been answered after a while. */
  if (w->sc->login_cancel_milli > 0 &&
      usher_rng_below(&w->rng_driver, 100000) < w->sc->login_cancel_milli) {
    gint64 after = sim_dist_sample(&w->sc->login_cancel_after, &w->rng_driver);
    schedule(w, w->now_us + MAX(after, 1), EV_LOGIN_CANCEL, 0, lg->id, 0, NULL);
  }
  drain(w, d);
}

/* The client of login request id gives up if it is still waiting: the director drops it and
 * must not answer it. A cancelled login is neither a success nor a failure, and is not retried. */
static void
login_cancel(SimWorld *w, guint64 id)
{
  SimLogin *lg = g_hash_table_lookup(w->logins, &id);
  if (lg == NULL)
    return; /* answered, or retried under another id */
  guint d = lg->director;
  SimNode *n = &w->nodes[d];
  g_assert(n->up && n->incarnation == lg->director_incarnation); /* a crash retries its logins */
  mix(w, id);
  usher_director_login_cancel(n->d, node_now(w, n), id);
  g_hash_table_add(w->cancelled, g_memdup2(&id, sizeof(id)));
  g_hash_table_remove(w->logins, &id); /* frees lg */
  w->logins_cancelled++;
  drain(w, d);
}

/* Arrivals follow the current rate, scaled by the daily curve (weights per hour). */
static gint64
next_arrival_gap(SimWorld *w)
{
  guint hour = (guint)((w->now_us / (3600 * SEC_US)) % 24);
  guint64 sum = 0;
  for (guint h = 0; h < 24; h++)
    sum += w->sc->daily_curve[h];
  /* rate per second (x1000) at this hour = rate * weight * 24 / sum */
  guint64 rate = (guint64)w->rate_milli * w->sc->daily_curve[hour] * 24 / MAX(sum, 1);
  if (rate == 0)
    return 3600 * SEC_US - w->now_us % (3600 * SEC_US); /* try again next hour */
  /* mean gap in us = 1e9 / rate_milli */
  guint64 mean = G_GUINT64_CONSTANT(1000000000) / rate;
  guint64 gap = (sim_exp_fixed(&w->rng_workload) * MAX(mean, 1)) >> 16;
  /* Memoryless: a gap that crosses the hour boundary is redrawn from there at the new rate. */
  gint64 to_hour = 3600 * SEC_US - w->now_us % (3600 * SEC_US);
  if ((gint64)gap > to_hour && w->sc->has_daily_curve)
    return to_hour;
  return MAX((gint64)gap, 1);
}

static void
arrival(SimWorld *w, gboolean is_arrival)
{
  if (is_arrival) {
    SimLogin *lg = g_new0(SimLogin, 1);
    lg->user = (guint32)usher_rng_below(&w->rng_workload, w->n_users);
    guint r = (guint)usher_rng_below(&w->rng_workload, 100);
    lg->proto = r < w->sc->mix_imap ? 0 : r < w->sc->mix_imap + w->sc->mix_pop3 ? 1 : 2;
    lg->first_us = w->now_us;
    login_attempt(w, lg);
  }
  gint64 gap = next_arrival_gap(w);
  gint64 t = w->now_us + gap;
  gint64 to_hour = 3600 * SEC_US - w->now_us % (3600 * SEC_US);
  gboolean boundary = w->sc->has_daily_curve && gap == to_hour;
  schedule(w, t, EV_ARRIVAL, 0, boundary ? 0 : 1, 0, NULL);
}

/* ---- Directors --------------------------------------------------------------------------------- */

/* The first place in hash_index (users sorted by hash) with this hash, or n_users. */
static guint64
first_of_hash(SimWorld *w, guint32 hash)
{
  guint64 key = (guint64)hash << 32;
  guint64 lo = 0, hi = w->n_users;
  while (lo < hi) {
    guint64 mid = (lo + hi) / 2;
    if (w->hash_index[mid] < key)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

static void
kick(SimWorld *w, guint node, const UsherEffect *e)
{
  g_autoptr(GArray) victims = g_array_new(FALSE, FALSE, sizeof(guint32));
  if (e->kick.kind == USHER_KICK_BACKEND) {
    /* Every session this director proxies to the backend. */
    for (guint32 s = 0; s < w->sessions->len; s++) {
      SimSession *ss = session_at(w, s);
      SimBackend *b = &g_array_index(w->backends, SimBackend, ss->backend);
      if (ss->alive && ss->director == node &&
          ss->director_incarnation == w->nodes[node].incarnation &&
          usher_ip_equal(&e->kick.except, &b->ip))
        session_end(w, s, TRUE);
    }
  } else if (e->kick.kind == USHER_KICK_HASH) {
    /* Every user with this hash (collisions share it). */
    for (guint64 i = first_of_hash(w, e->kick.hash);
         i < w->n_users && (w->hash_index[i] >> 32) == e->kick.hash; i++) {
      guint32 user = (guint32)w->hash_index[i];
      g_array_append_val(victims, user);
    }
  } else if (e->kick.kind == USHER_KICK_NAME) {
    gint64 user = sim_scenario_user_index(w->sc, e->kick.name);
    if (user >= 0) {
      guint32 u32 = (guint32)user;
      g_array_append_val(victims, u32);
    }
  }
  for (guint v = 0; v < victims->len; v++) {
    SimUser *u = &w->users[g_array_index(victims, guint32, v)];
    guint32 s = u->sessions;
    while (s != 0) {
      SimSession *ss = session_at(w, s - 1);
      guint32 next = ss->next;
      SimBackend *b = &g_array_index(w->backends, SimBackend, ss->backend);
      if (ss->director == node && ss->director_incarnation == w->nodes[node].incarnation &&
          (e->kick.except.family == 0 || !usher_ip_equal(&e->kick.except, &b->ip)))
        session_end(w, s - 1, TRUE);
      s = next;
    }
  }
  /* The driver reports the kick done after kick_duration, unless it loses the report. */
  if (w->sc->kick_lost_milli > 0 && usher_rng_below(&w->rng_driver, 100000) < w->sc->kick_lost_milli) {
    w->kicks_lost++;
    return;
  }
  gint64 took = sim_dist_sample(&w->sc->kick_duration, &w->rng_driver);
  schedule(w, w->now_us + took, EV_KICK_DONE, node, e->kick.id, 0, NULL);
}

/* The flush hook runs for flush_duration and reports success, or failure, or never reports. */
static void
flush(SimWorld *w, guint node, const UsherEffect *e)
{
  const SimScenario *sc = w->sc;
  if (sc->flush_lost_milli > 0 || sc->flush_failed_milli > 0) {
    guint64 r = usher_rng_below(&w->rng_driver, 100000);
    if (r < sc->flush_lost_milli) {
      w->flushes_lost++;
      return;
    }
    if (r < (guint64)sc->flush_lost_milli + sc->flush_failed_milli) {
      w->flushes_failed++;
      gint64 took = sim_dist_sample(&sc->flush_duration, &w->rng_driver);
      schedule(w, w->now_us + took, EV_FLUSH_DONE, node, e->flush.id, 1, NULL);
      return;
    }
  }
  gint64 took = sim_dist_sample(&sc->flush_duration, &w->rng_driver);
  schedule(w, w->now_us + took, EV_FLUSH_DONE, node, e->flush.id, 0, NULL);
}

/* A workload user with this hash (the first, if several share it), or NULL. */
const char *
world_user_of_hash(SimWorld *w, guint32 hash, char *buf, gsize size)
{
  guint64 lo = first_of_hash(w, hash);
  if (lo >= w->n_users || (w->hash_index[lo] >> 32) != hash)
    return NULL;
  return user_name(w, (guint32)w->hash_index[lo], buf, size);
}

/* The core says "user hash H is being sent to two backends: A and B (via ...); the lower IP
 * wins" when it settles a conflict (director-users.c): keep the first per user hash. */
static void
note_conflict(SimWorld *w, const char *message)
{
  static const char prefix[] = "user hash ";
  if (!g_str_has_prefix(message, prefix) || strstr(message, "the lower IP wins") == NULL)
    return;
  guint32 hash = (guint32)g_ascii_strtoull(message + strlen(prefix), NULL, 10);
  const char *two = strstr(message, "backends: ");
  if (two == NULL)
    return;
  two += strlen("backends: ");
  const char *and = strstr(two, " and ");
  const char *via = and != NULL ? strstr(and, " (via") : NULL;
  if (and == NULL || via == NULL)
    return;
  SimConflict c = {w->now_us, hash, {0}, {0}};
  UsherIp a, b;
  if (!usher_ip_parse(two, and - two, &a) || !usher_ip_parse(and + 5, via - (and + 5), &b))
    return;
  for (guint i = 0; i < w->conflicts->len; i++)
    if (g_array_index(w->conflicts, SimConflict, i).hash == hash)
      return;
  gboolean a_lower = usher_ip_cmp(&a, &b) <= 0;
  c.kept = a_lower ? a : b;
  c.lost = a_lower ? b : a;
  g_array_append_val(w->conflicts, c);
}

static void
handle_effect(SimWorld *w, guint node_idx, UsherEffect *e)
{
  SimNode *node = &w->nodes[node_idx];
  mix(w, e->type);
  switch (e->type) {
  case USHER_EFFECT_SEND:
    w->fingerprint = fp_bytes(w->fingerprint, e->send.data, e->send.len);
  {
    gsize queued;
    (void)sim_net_send(w->net, node_idx, e->send.conn, e->send.data, e->send.len, &queued);
    /* After every write, what the link still holds (the daemon reports its output buffer). */
    usher_director_peer_output_queued(node->d, node_now(w, node), e->send.conn, queued);
    break;
  }
  case USHER_EFFECT_CONNECT: {
    guint peer = G_MAXUINT;
    for (guint i = 0; i < w->n_nodes; i++)
      if (usher_ip_equal(&w->nodes[i].addr.ip, &e->connect.addr.ip) &&
          w->nodes[i].addr.port == e->connect.addr.port)
        peer = i;
    sim_net_connect(w->net, node_idx, e->connect.conn, peer);
    break;
  }
  case USHER_EFFECT_DISCONNECT:
    sim_net_disconnect(w->net, node_idx, e->disconnect.conn);
    break;
  case USHER_EFFECT_LOGIN_RESULT:
    mix(w, e->login.request);
    mix(w, e->login.status);
    w->fingerprint = fp_bytes(w->fingerprint, &e->login.host, sizeof(e->login.host));
    login_result(w, node_idx, e);
    break;
  case USHER_EFFECT_KICK:
    mix(w, e->kick.hash);
    kick(w, node_idx, e);
    break;
  case USHER_EFFECT_FLUSH:
    flush(w, node_idx, e);
    break;
  case USHER_EFFECT_ADMIN_REPLY:
    if (!g_str_has_prefix(e->admin.text, "OK"))
      add_mark(w, "director %u: admin reply %.*s", node_idx,
               (int)strcspn(e->admin.text, "\n"), e->admin.text);
    break;
  case USHER_EFFECT_LOG:
    note_conflict(w, e->log.message);
    if (w->log != NULL) {
      g_autofree char *t = world_time(w->now_us);
      fprintf(w->log, "%s director %u: %s\n", t, node_idx, e->log.message);
    }
    break;
  case USHER_EFFECT_STATE:
    break;
  case USHER_EFFECT_PROBE: {
    /* A working backend answers at once; a failed one (or one this director cannot reach)
     * fails the probe as a refused connection would. */
    guint b = backend_index(w, &e->probe.host);
    gboolean ok = b != G_MAXUINT && backend_reachable(w, b, node_idx);
    gboolean mute = !ok && b != G_MAXUINT && g_array_index(w->backends, SimBackend, b).mute;
    gint64 took = mute ? (gint64)w->sc->config->health_timeout_secs * SEC_US : PROBE_LATENCY_US;
    mix(w, ok);
    schedule(w, w->now_us + took, EV_PROBE_DONE, node_idx, e->probe.id, ok ? 0 : 1, NULL);
    break;
  }
  }
}

typedef struct {
  SimWorld *w;
  guint node_idx;
} EffectTarget;

static void
handle_effect_cb(gpointer data, UsherEffect *e)
{
  EffectTarget *t = data;
  handle_effect(t->w, t->node_idx, e);
}

static void
drain(SimWorld *w, guint node_idx)
{
  SimNode *n = &w->nodes[node_idx];
  if (n->d == NULL)
    return;
  EffectTarget target = {w, node_idx};
  usher_driver_drain(n->d, handle_effect_cb, &target);
  gint64 deadline = usher_director_next_deadline(n->d);
  n->deadline = deadline == USHER_DEADLINE_NEVER ? G_MAXINT64 : deadline - MONO_BASE_US;
  const UsherDirectorStats *st = usher_director_get_stats(n->d);
  if (st->health_downs != n->health_downs_seen || st->health_ups != n->health_ups_seen) {
    SimHealthDecision hd = {w->now_us, node_idx, st->health_downs != n->health_downs_seen};
    g_array_append_val(w->health_decisions, hd);
    add_mark(w, "director %u: health decision: a backend %s", node_idx, hd.down ? "down" : "up");
    n->health_downs_seen = st->health_downs;
    n->health_ups_seen = st->health_ups;
  }
}

static void
node_start(SimWorld *w, guint i)
{
  SimNode *n = &w->nodes[i];
  guint64 sm = w->seed_directors + i;
  guint64 seed = usher_splitmix64(&sm);
  n->incarnation++;
  n->d = usher_director_new(w->sc->config, &n->addr, seed, node_now(w, n), NULL);
  n->health_downs_seen = 0;
  n->health_ups_seen = 0;
  g_assert(n->d != NULL);
  n->up = TRUE;
  sim_net_node_up(w->net, i, n->incarnation);
  usher_director_start(n->d, node_now(w, n));
  drain(w, i);
}

static int
cmp_login_id(gconstpointer a, gconstpointer b)
{
  const SimLogin *x = *(SimLogin *const *)a, *y = *(SimLogin *const *)b;
  return x->id < y->id ? -1 : x->id > y->id ? 1 : 0;
}

static void
node_crash(SimWorld *w, guint i)
{
  SimNode *n = &w->nodes[i];
  if (!n->up)
    return;
  sim_net_node_down(w->net, i); /* its links are reset */
  g_clear_pointer(&n->d, usher_director_free);
  n->up = FALSE;
  n->deadline = G_MAXINT64;
  /* Its proxied sessions die with it; logins it had not answered fail and are retried. */
  for (guint32 s = 0; s < w->sessions->len; s++) {
    SimSession *ss = session_at(w, s);
    if (ss->alive && ss->director == i && ss->director_incarnation == n->incarnation) {
      w->sessions_cut++;
      if (ss->proto == 2)
        lmtp_redeliver(w, ss->user);
      session_end(w, s, FALSE);
    }
  }
  GPtrArray *lost = g_ptr_array_new();
  GHashTableIter it;
  gpointer v;
  g_hash_table_iter_init(&it, w->logins);
  while (g_hash_table_iter_next(&it, NULL, &v)) {
    SimLogin *lg = v;
    if (lg->director == i && lg->director_incarnation == n->incarnation)
      g_ptr_array_add(lost, lg);
  }
  g_ptr_array_sort(lost, cmp_login_id); /* deterministic: never hash-table order */
  for (guint k = 0; k < lost->len; k++)
    login_retry_or_fail(w, lost->pdata[k], "director crashed");
  g_ptr_array_unref(lost);
}

/* ---- Faults ------------------------------------------------------------------------------------ */

static void
fault_begin(SimWorld *w)
{
  w->faults_active++;
}

static void
fault_end(SimWorld *w, gint64 grace_us)
{
  if (w->faults_active > 0)
    w->faults_active--;
  w->fault_grace_until_us = MAX(w->fault_grace_until_us, w->now_us + grace_us);
}

/* Probes never land on whole seconds: user timestamps are whole seconds, so entries expire on
 * whole seconds, and a probe at exactly that instant would see some directors before and some
 * after their expiry timer ran. For the first 10 s after a change they come every 100 ms (at .05,
 * .15, ...), so a convergence time is measured to 0.1 s; then every second (at .5). */
static gint64
next_probe_time(SimWorld *w)
{
  if (w->now_us - w->probe_since_us < 10 * SEC_US)
    return (w->now_us / (SEC_US / 10) + 1) * (SEC_US / 10) + SEC_US / 20;
  return (w->now_us / SEC_US + 1) * SEC_US + SEC_US / 2;
}

static guint
moving_users(SimWorld *w)
{
  guint n = 0;
  for (guint i = 0; i < w->n_nodes; i++)
    if (w->nodes[i].up)
      n += usher_director_count_moving_users(w->nodes[i].d);
  return n;
}

static void
start_probe(SimWorld *w, const char *after)
{
  w->probe_since_us = w->now_us;
  w->settling = -1; /* a new change: the last one's moves are not timed any further */
  if (!w->probing) {
    w->probing = TRUE;
    schedule(w, next_probe_time(w), EV_PROBE, 0, 0, 0, NULL);
  }
  g_free(w->probe_after);
  g_autofree char *t = world_time(w->now_us);
  w->probe_after = g_strdup_printf("%s at %s", after, t);
}

/* ---- Scenario events --------------------------------------------------------------------------- */

static void
apply_event(SimWorld *w, const SimScenarioEvent *ev)
{
  SimNode *n = &w->nodes[ev->director];
  char ip[USHER_IP_STRLEN] = "";
  if (ev->has_host)
    usher_ip_to_string(&ev->host, ip);
  gboolean one_director = ev->kind == SIM_EV_HOST_ADD || ev->kind == SIM_EV_HOST_REMOVE ||
                          ev->kind == SIM_EV_HOST_DOWN || ev->kind == SIM_EV_HOST_UP ||
                          ev->kind == SIM_EV_HOST_VHOSTS || ev->kind == SIM_EV_FLUSH ||
                          ev->kind == SIM_EV_MOVE || ev->kind == SIM_EV_KICK;
  if (one_director && sim_net_partitioned(w->net))
    add_mark(w, "%s%s%s (director %u, one half only)", sim_event_kind_name(ev->kind),
             ev->has_host ? " " : "", ip, ev->director);
  else
    add_mark(w, "%s%s%s", sim_event_kind_name(ev->kind), ev->has_host ? " " : "", ip);
  mix(w, ev->kind);
  guint64 op = w->events; /* admin op ids: unique per run */
  gboolean admin = FALSE;
  switch (ev->kind) {
  case SIM_EV_HOST_ADD:
    if (n->up) {
      (void)backend_ensure(w, &ev->host);
      usher_director_admin_host_set(n->d, node_now(w, n), op, &ev->host, ev->tag,
                                    (gint)ev->vhosts);
      admin = TRUE;
    }
    break;
  case SIM_EV_HOST_REMOVE:
    if (n->up) {
      guint b = backend_index(w, &ev->host);
      if (b != G_MAXUINT)
        g_array_index(w->backends, SimBackend, b).last_unsafe_us = w->now_us;
      usher_director_admin_host_remove(n->d, node_now(w, n), op, &ev->host);
      admin = TRUE;
    }
    break;
  case SIM_EV_HOST_DOWN:
  case SIM_EV_HOST_UP:
    if (n->up) {
      usher_director_admin_host_set_down(n->d, node_now(w, n), op, &ev->host,
                                         ev->kind == SIM_EV_HOST_DOWN);
      admin = TRUE;
    }
    break;
  case SIM_EV_HOST_VHOSTS:
    if (n->up) {
      usher_director_admin_host_update(n->d, node_now(w, n), op, &ev->host, ev->vhosts);
      admin = TRUE;
    }
    break;
  case SIM_EV_FLUSH:
    if (n->up) {
      if (ev->force) {
        for (guint b = 0; b < w->backends->len; b++) {
          SimBackend *be = &g_array_index(w->backends, SimBackend, b);
          if (!ev->has_host || usher_ip_equal(&be->ip, &ev->host))
            be->last_unsafe_us = w->now_us;
        }
        usher_director_admin_host_flush(n->d, node_now(w, n), op,
                                        ev->has_host ? &ev->host : NULL);
      } else {
        usher_director_admin_host_reset_users(n->d, node_now(w, n), op,
                                              ev->has_host ? &ev->host : NULL, ev->max_parallel);
      }
      admin = TRUE;
    }
    break;
  case SIM_EV_MOVE:
    if (n->up) {
      usher_director_admin_user_move(n->d, node_now(w, n), op,
                                     usher_director_user_hash(n->d, ev->user), &ev->host);
      admin = TRUE;
    }
    break;
  case SIM_EV_KICK:
    if (n->up) {
      usher_director_admin_user_kick(n->d, node_now(w, n), op, NULL, ev->user, FALSE);
      admin = TRUE;
    }
    break;
  case SIM_EV_DIRECTOR_CRASH:
    if (n->up) {
      node_crash(w, ev->director);
      fault_begin(w);
    }
    break;
  case SIM_EV_DIRECTOR_RESTART:
    if (!n->up) {
      node_start(w, ev->director);
      fault_end(w, w->sc->convergence_budget_us);
      start_probe(w, "director restart");
    }
    break;
  case SIM_EV_DIRECTOR_PAUSE:
    /* A stopped process: its links hang (the kernel keeps them open), its timers stand still,
     * and the load balancer sends new clients elsewhere. */
    if (n->up && !n->paused && !sim_net_partitioned(w->net)) {
      guint64 groups[2] = {G_GUINT64_CONSTANT(1) << ev->director,
                           ((G_GUINT64_CONSTANT(1) << w->n_nodes) - 1) &
                             ~(G_GUINT64_CONSTANT(1) << ev->director)};
      n->paused = TRUE;
      fault_begin(w);
      sim_net_partition(w->net, groups, 2, FALSE);
    }
    break;
  case SIM_EV_DIRECTOR_RESUME:
    if (n->paused) {
      n->paused = FALSE;
      sim_net_heal(w->net);
      fault_end(w, w->sc->convergence_budget_us);
      start_probe(w, "director resume");
    }
    break;
  case SIM_EV_PARTITION:
    if (!sim_net_partitioned(w->net))
      fault_begin(w);
    /* Links between the groups hang (not a reset): the directors notice through their PING
     * timeouts. */
    sim_net_partition(w->net, (const guint64 *)ev->groups->data, ev->groups->len, FALSE);
    break;
  case SIM_EV_HEAL:
    if (sim_net_partitioned(w->net)) {
      sim_net_heal(w->net);
      fault_end(w, w->sc->convergence_budget_us);
      start_probe(w, "heal");
    }
    break;
  case SIM_EV_LINK_DELAY:
    sim_net_set_link_delay(w->net, ev->a, ev->b, ev->value_us);
    break;
  case SIM_EV_LINK_LOSS:
    sim_net_set_link_loss(w->net, ev->a, ev->b, ev->percent);
    break;
  case SIM_EV_LINK_RESET:
    sim_net_reset_links(w->net, ev->a, ev->b);
    w->fault_grace_until_us = MAX(w->fault_grace_until_us, w->now_us + w->sc->convergence_budget_us);
    start_probe(w, "link reset");
    break;
  case SIM_EV_CLOCK_STEP:
    (void)max_skew_secs(w); /* remember the skew before the step, too */
    n->wall_offset_us += ev->value_us;
    n->last_clock_step_us = w->now_us;
    (void)max_skew_secs(w);
    break;
  case SIM_EV_CLOCK_DRIFT:
    n->drift_base_us += (w->now_us - n->drift_since_us) * n->drift_ppm / 1000000;
    n->drift_since_us = w->now_us;
    n->drift_ppm = ev->ppm;
    break;
  case SIM_EV_BACKEND_FAIL: {
    guint b = backend_ensure(w, &ev->host);
    SimBackend *be = &g_array_index(w->backends, SimBackend, b);
    if (ev->from_mask == 0)
      be->failed = TRUE;
    else
      be->unreachable_from |= ev->from_mask;
    be->mute = ev->mute;
    /* Sessions through a director that lost the backend end with it. */
    for (guint32 s = 0; s < w->sessions->len; s++) {
      SimSession *ss = session_at(w, s);
      if (ss->alive && ss->backend == b && !backend_reachable(w, b, ss->director)) {
        w->sessions_cut++;
        if (ss->proto == 2)
          lmtp_redeliver(w, ss->user);
        session_end(w, s, FALSE);
      }
    }
    break;
  }
  case SIM_EV_BACKEND_RECOVER: {
    guint b = backend_ensure(w, &ev->host);
    SimBackend *be = &g_array_index(w->backends, SimBackend, b);
    if (ev->from_mask == 0) {
      be->failed = FALSE;
      be->unreachable_from = 0;
      be->mute = FALSE;
    } else {
      be->unreachable_from &= ~ev->from_mask;
    }
    break;
  }
  case SIM_EV_WORKLOAD_RATE:
    w->rate_milli = ev->rate_milli;
    break;
  }
  if (admin) {
    drain(w, ev->director);
    start_probe(w, sim_event_kind_name(ev->kind));
  }
}

/* ---- Probes, samples, checks --------------------------------------------------------------------- */

static gint64
node_wall_us(SimWorld *w, SimNode *n)
{
  return node_now(w, n).wall_us;
}

/* The largest difference between two directors' wall clocks, in seconds, rounded up: now, and
 * the largest seen so far in the run (timestamps minted under an old skew live on). */
static gint64 skew_now_secs(SimWorld *w);

static gint64
max_skew_secs(SimWorld *w)
{
  w->max_skew_seen_secs = MAX(w->max_skew_seen_secs, skew_now_secs(w));
  for (guint i = 0; i < w->n_nodes; i++) {
    if (!w->nodes[i].up)
      continue;
    gint64 off = node_wall_us(w, &w->nodes[i]) - (WALL_BASE_US + w->now_us);
    w->min_offset_seen_us = w->offsets_seen ? MIN(w->min_offset_seen_us, off) : off;
    w->max_offset_seen_us = w->offsets_seen ? MAX(w->max_offset_seen_us, off) : off;
    w->offsets_seen = TRUE;
  }
  /* A timestamp minted (or clamped to its clock) by a director under one offset expires there
   * under its offset of the time: a director 26 s behind that then steps 40 s forward expires
   * the entry 40 s before a director without skew, though the two are only 14 s apart now
   * (swarm seed 29803). */
  gint64 span = (w->max_offset_seen_us - w->min_offset_seen_us + SEC_US - 1) / SEC_US;
  return MAX(w->max_skew_seen_secs, span);
}

static gint64
skew_now_secs(SimWorld *w)
{
  gint64 lo = G_MAXINT64, hi = G_MININT64;
  for (guint i = 0; i < w->n_nodes; i++) {
    if (!w->nodes[i].up)
      continue;
    gint64 t = node_wall_us(w, &w->nodes[i]);
    lo = MIN(lo, t);
    hi = MAX(hi, t);
  }
  return hi >= lo ? (hi - lo + SEC_US - 1) / SEC_US : 0;
}

/* Users that count for agreement: not within margin seconds of expiring on this director.
 * Directors expire entries by their own clocks, so entries about to expire may legitimately be
 * gone on one director and not yet on another. */
static gboolean
settled(const UsherUser *u, guint expire_secs, gint64 wall_secs, gint64 margin)
{
  return (gint64)u->timestamp + expire_secs > wall_secs + margin;
}

/* Entries touched (placed or refreshed) this recently may still be on their way round the ring:
 * under a steady load some always are, so agreement leaves them out (a ring of 16 directors at
 * 2,000 logins a second never had an instant of total agreement). */
#define IN_FLIGHT_SECS 2
#define COMPARE_BATCH 16

/* Compares b's hosts and settled users with a's; counts differences and describes the first.
 * Without `first` (a yes-or-no question) it stops at the first difference. */
static guint
compare_directors(SimWorld *w, SimNode *na, SimNode *nb, GString *first)
{
  UsherHostTable *a = usher_director_get_hosts(na->d), *b = usher_director_get_hosts(nb->d);
  guint differ = 0;
  for (guint h = 0; h < usher_host_table_n_hosts(b); h++) {
    UsherHost *hb = usher_host_table_nth(b, h);
    if (usher_host_table_lookup(a, &hb->ip) == NULL) {
      if (differ == 0 && first != NULL)
        g_string_append_printf(first, " (first: backend %s only on director %u)", hb->ip_str,
                               nb->index);
      differ++;
      if (first == NULL)
        return differ;
    }
  }
  for (guint h = 0; h < usher_host_table_n_hosts(a); h++) {
    UsherHost *ha = usher_host_table_nth(a, h);
    UsherHost *hb = usher_host_table_lookup(b, &ha->ip);
    if (hb == NULL || hb->vhost_count != ha->vhost_count || hb->down != ha->down ||
        strcmp(hb->tag->name, ha->tag->name) != 0) {
      if (differ == 0 && first != NULL)
        g_string_append_printf(first, " (first: backend %s: %u vhosts%s on director %u, %s)",
                               ha->ip_str, ha->vhost_count, ha->down ? " down" : "", na->index,
                               hb == NULL ? "absent" : hb->down ? "down" : "up");
      differ++;
      if (first == NULL)
        return differ;
    }
  }
  gint64 margin = max_skew_secs(w) + 2;
  guint expire = w->sc->config->user_expire_secs;
  for (int pass = 0; pass < 2; pass++) {
    SimNode *nx = pass == 0 ? na : nb, *ny = pass == 0 ? nb : na;
    UsherHostTable *x = usher_director_get_hosts(nx->d), *y = usher_director_get_hosts(ny->d);
    gint64 wx = node_wall_us(w, nx) / SEC_US, wy = node_wall_us(w, ny) / SEC_US;
    for (guint t = 0; t < usher_host_table_n_tags(x); t++) {
      UsherTag *tx = usher_host_table_nth_tag(x, t);
      UsherTag *ty = usher_host_table_find_tag(y, tx->name);
      /* In memory order and in batches whose lookups in y are started together: a director
       * holds a million users, and one at a time each lookup would wait for memory. */
      guint32 n = usher_user_dir_n_stored(tx->users);
      for (guint32 i = 0; i < n; i += COMPARE_BATCH) {
        UsherUser *us[COMPARE_BATCH], *vs[COMPARE_BATCH];
        guint k = 0;
        for (guint32 j = i; j < MIN(i + COMPARE_BATCH, n); j++) {
          UsherUser *u = usher_user_dir_stored(tx->users, j);
          if (u->hash == 0 || !settled(u, expire, wx, margin) ||
              (gint64)u->timestamp > wx - IN_FLIGHT_SECS)
            continue;
          if (ty != NULL)
            usher_user_dir_prefetch(ty->users, u->hash);
          us[k++] = u;
        }
        for (guint q = 0; q < k; q++) {
          vs[q] = ty != NULL ? usher_user_dir_lookup(ty->users, us[q]->hash) : NULL;
          if (vs[q] != NULL)
            __builtin_prefetch(vs[q]);
        }
        for (guint q = 0; q < k; q++) {
          UsherUser *u = us[q], *v = vs[q];
          gboolean missing = v == NULL || !settled(v, expire, wy, -margin - 2);
          gboolean other = !missing && pass == 0 &&
                           !usher_ip_equal(&usher_host_table_get(x, u->host)->ip,
                                           &usher_host_table_get(y, v->host)->ip);
          if (!missing && !other)
            continue;
          if (differ == 0 && first != NULL)
            g_string_append_printf(
                first, " (first: user hash %u on director %u: %s ts %u%s%s; on director %u: %s)",
                u->hash, nx->index, usher_host_table_get(x, u->host)->ip_str, u->timestamp,
                u->weak ? " weak" : "", u->kill_state ? " moving" : "", ny->index,
                v == NULL ? "absent" : usher_host_table_get(y, v->host)->ip_str);
          differ++;
          if (first == NULL)
            return differ;
        }
      }
    }
  }
  return differ;
}

static gboolean
converged_now(SimWorld *w)
{
  SimNode *ref = NULL;
  for (guint i = 0; i < w->n_nodes; i++) {
    SimNode *n = &w->nodes[i];
    if (!n->up)
      continue;
    /* Moves may still be running (a flush of thousands of users two at a time takes a while):
     * agreement means the same hosts and the same users on the same backends. */
    if (!usher_director_is_ring_handshaked(n->d) || !usher_director_is_ring_synced(n->d))
      return FALSE;
    if (ref == NULL)
      ref = n;
  }
  if (ref == NULL)
    return TRUE;
  /* Comparing two directories of a million users takes a while, and the director that differed
   * at the last probe most likely still does: ask it first. */
  guint first = w->last_diverged < w->n_nodes ? w->last_diverged : 0;
  for (guint k = 0; k < w->n_nodes; k++) {
    SimNode *n = &w->nodes[(first + k) % w->n_nodes];
    if (n->up && n != ref && compare_directors(w, ref, n, NULL) > 0) {
      w->last_diverged = n->index;
      return FALSE;
    }
  }
  return TRUE;
}

/* Why the directors do not agree, in a sentence (for failure messages). */
static char *
describe_divergence(SimWorld *w)
{
  GString *s = g_string_new(NULL);
  SimNode *ref = NULL;
  for (guint i = 0; i < w->n_nodes; i++) {
    SimNode *n = &w->nodes[i];
    if (!n->up)
      continue;
    const UsherRingAddr *l = usher_director_get_left(n->d), *r = usher_director_get_right(n->d);
    g_string_append_printf(s, "[director %u: %s%s, left %s, right %s, %u moving, %u waiting", i,
                           usher_director_is_ring_handshaked(n->d) ? "" : "not handshaked, ",
                           usher_director_is_ring_synced(n->d) ? "synced" : "unsynced",
                           l != NULL ? "yes" : "none", r != NULL ? "yes" : "none",
                           usher_director_count_moving_users(n->d),
                           usher_director_count_pending_requests(n->d));
    if (ref == NULL) {
      ref = n;
    } else {
      GString *first = g_string_new(NULL);
      guint differ = compare_directors(w, ref, n, first);
      g_string_append_printf(s, ", %u differences from director %u%s", differ, ref->index,
                             first->str);
      g_string_free(first, TRUE);
    }
    g_string_append(s, "] ");
  }
  return g_string_free(s, FALSE);
}

static void
check_counts(SimWorld *w)
{
  for (guint i = 0; i < w->n_nodes; i++) {
    if (!w->nodes[i].up)
      continue;
    g_autofree char *why = NULL;
    if (!usher_host_table_check_counts(usher_director_get_hosts(w->nodes[i].d), &why))
      world_fail(w, "director %u: per-host user counts disagree with its directory: %s", i, why);
  }
}

static void
probe(SimWorld *w)
{
  if (!w->probing)
    return;
  if (w->settling >= 0) {
    /* Agreed already; timing the moves that were still running. */
    SimConvergence *c = &g_array_index(w->convergences, SimConvergence, w->settling);
    if (moving_users(w) == 0) {
      c->settled_us = w->now_us - c->since_us;
      w->settling = -1;
      w->probing = FALSE;
      return;
    }
    schedule(w, next_probe_time(w), EV_PROBE, 0, 0, 0, NULL);
    return;
  }
  if (w->faults_active == 0 && converged_now(w)) {
    gint64 took = w->now_us - w->probe_since_us;
    SimConvergence c = {w->probe_since_us, took, took, 0, g_strdup(w->probe_after)};
    for (guint i = 0; i < w->n_nodes && c.users == 0; i++) {
      if (w->nodes[i].up) {
        UsherRingInfo ring;
        usher_director_get_ring_info(w->nodes[i].d, &ring);
        c.users = ring.n_users;
      }
    }
    check_counts(w);
    if (moving_users(w) > 0) {
      c.settled_us = -1;
      g_array_append_val(w->convergences, c);
      w->settling = (gint)w->convergences->len - 1;
      schedule(w, next_probe_time(w), EV_PROBE, 0, 0, 0, NULL);
      return;
    }
    g_array_append_val(w->convergences, c);
    w->probing = FALSE;
    return;
  }
  if (w->faults_active == 0 && w->now_us - w->probe_since_us > w->sc->convergence_budget_us) {
    SimConvergence c = {w->probe_since_us, -1, -1, 0, g_strdup(w->probe_after)};
    g_array_append_val(w->convergences, c);
    g_autofree char *why = describe_divergence(w);
    world_fail(w, "the directors did not converge within %" G_GINT64_FORMAT " s after %s: %s",
               w->sc->convergence_budget_us / SEC_US, w->probe_after, why);
    w->probing = FALSE;
    return;
  }
  schedule(w, next_probe_time(w), EV_PROBE, 0, 0, 0, NULL);
}

static void
sample(SimWorld *w)
{
  SimSample s = {w->now_us, g_new0(guint32, w->backends->len + 16),
                 g_new0(guint32, w->backends->len + 16)};
  for (guint b = 0; b < w->backends->len; b++)
    s.live[b] = g_array_index(w->backends, SimBackend, b).live;
  for (guint i = 0; i < w->n_nodes; i++) {
    if (!w->nodes[i].up)
      continue;
    UsherHostTable *t = usher_director_get_hosts(w->nodes[i].d);
    for (guint b = 0; b < w->backends->len; b++) {
      UsherHost *h = usher_host_table_lookup(t, &g_array_index(w->backends, SimBackend, b).ip);
      s.users[b] = h != NULL ? h->user_count : 0;
    }
    break;
  }
  s.two_backends = g_hash_table_size(w->windows);
  s.backend_changes = w->backend_changes;
  s.kicked = w->sessions_kicked;
  g_array_append_val(w->samples, s);
  if (w->now_us + w->sc->sample_us <= w->sc->duration_us)
    schedule(w, w->now_us + w->sc->sample_us, EV_SAMPLE, 0, 0, 0, NULL);
}

static guint64
counter_value(SimWorld *w, SimCounter counter)
{
  switch (counter) {
  case SIM_COUNTER_LOGINS_OK:
    return w->logins_ok;
  case SIM_COUNTER_LOGINS_FAILED:
    return w->logins_failed;
  case SIM_COUNTER_LOGINS_CANCELLED:
    return w->logins_cancelled;
  case SIM_COUNTER_KICKS_LOST:
    return w->kicks_lost;
  case SIM_COUNTER_FLUSHES_LOST:
    return w->flushes_lost;
  case SIM_COUNTER_FLUSHES_FAILED:
    return w->flushes_failed;
  case SIM_COUNTER_OUTPUT_OVERFLOWS:
    return sim_net_get_stats(w->net)->output_overflows;
  case SIM_COUNTER_LMTP_REDELIVERED:
    return w->lmtp_redelivered;
  default:
    break;
  }
  guint64 sum = 0;
  for (guint i = 0; i < w->n_nodes; i++) {
    if (!w->nodes[i].up)
      continue;
    const UsherDirectorStats *st = usher_director_get_stats(w->nodes[i].d);
    switch (counter) {
    case SIM_COUNTER_DIR_KICKS_SENT:
      sum += st->kicks_sent;
      break;
    case SIM_COUNTER_DIR_KICKS_TIMED_OUT:
      sum += st->kicks_timed_out;
      break;
    case SIM_COUNTER_DIR_FLUSHES_FAILED:
      sum += st->flushes_failed;
      break;
    case SIM_COUNTER_DIR_FLUSHES_TIMED_OUT:
      sum += st->flushes_timed_out;
      break;
    case SIM_COUNTER_DIR_REQUESTS_CANCELLED:
      sum += st->requests_cancelled;
      break;
    case SIM_COUNTER_DIR_HANDSHAKE_PAUSES:
      sum += st->handshake_pauses;
      break;
    case SIM_COUNTER_DIR_MOVES_FINISHED:
      sum += st->moves_finished;
      break;
    case SIM_COUNTER_DIR_MOVES_TIMED_OUT:
      sum += st->moves_timed_out;
      break;
    case SIM_COUNTER_DIR_HEALTH_DOWNS:
      sum += st->health_downs;
      break;
    case SIM_COUNTER_DIR_HEALTH_UPS:
      sum += st->health_ups;
      break;
    case SIM_COUNTER_DIR_HEALTH_NO_QUORUM:
      sum += st->health_no_quorum;
      break;
    default:
      break;
    }
  }
  return sum;
}

static gboolean evaluate_check_now(SimWorld *w, const SimCheck *c);

/* Evaluates one check now and keeps its verdict for the report; FALSE (and the reason recorded)
 * if it fails. */
static gboolean
evaluate_check(SimWorld *w, const SimCheck *c)
{
  gboolean ok = evaluate_check_now(w, c);
  guint idx = (guint)(c - &g_array_index(w->sc->checks, SimCheck, 0));
  if (idx < w->sc->checks->len)
    w->check_verdicts[idx] = ok ? 1 : 0;
  return ok;
}

static guint64
moved_between(SimWorld *w, const SimCheck *c)
{
  guint64 n = 0;
  GHashTableIter it;
  gpointer k, v;
  g_hash_table_iter_init(&it, w->moves_between);
  while (g_hash_table_iter_next(&it, &k, &v)) {
    guint64 key = *(guint64 *)k;
    const SimBackend *from = &g_array_index(w->backends, SimBackend, key >> 32);
    const SimBackend *to = &g_array_index(w->backends, SimBackend, key & 0xffffffffu);
    if ((!c->has_from || usher_ip_equal(&from->ip, &c->from)) &&
        (!c->has_to || usher_ip_equal(&to->ip, &c->to)))
      n += GPOINTER_TO_SIZE(v);
  }
  return n;
}

static gboolean
evaluate_check_now(SimWorld *w, const SimCheck *c)
{
  switch (c->kind) {
  case SIM_CHECK_USER_ON: {
    gint64 user = sim_scenario_user_index(w->sc, c->user);
    if (user < 0) {
      world_fail(w, "check %s: %s is not a user of the workload", c->text, c->user);
      return FALSE;
    }
    GString *wrong = g_string_new(NULL);
    for (guint i = 0; i < w->n_nodes; i++) {
      SimNode *n = &w->nodes[i];
      if (!n->up)
        continue;
      UsherUserInfo info;
      usher_director_lookup_user(n->d, node_now(w, n).wall_us,
                                 usher_director_user_hash(n->d, c->user),
                                 sim_scenario_user_tag(w->sc, (guint64)user), &info);
      char ip[USHER_IP_STRLEN] = "no entry";
      if (info.found)
        usher_ip_to_string(&info.current, ip);
      if (!info.found || !usher_ip_equal(&info.current, &c->host))
        g_string_append_printf(wrong, "%sdirector %u: %s", wrong->len > 0 ? ", " : "", i, ip);
    }
    gboolean ok = wrong->len == 0;
    if (!ok)
      world_fail(w, "check %s: %s", c->text, wrong->str);
    g_string_free(wrong, TRUE);
    return ok;
  }
  case SIM_CHECK_MAX_MOVED_BETWEEN: {
    guint64 n = moved_between(w, c);
    if (n > c->max) {
      world_fail(w, "check %s: %" G_GUINT64_FORMAT " logins changed backend so (max %" G_GUINT64_FORMAT
                 ")", c->text, n, c->max);
      return FALSE;
    }
    return TRUE;
  }
  case SIM_CHECK_MOVES_FINISHED: {
    gboolean ok = TRUE;
    for (guint i = 0; i < w->convergences->len; i++) {
      const SimConvergence *cv = &g_array_index(w->convergences, SimConvergence, i);
      if (cv->settled_us > c->within_us) {
        world_fail(w, "check %s: the moves after %s ran for %.1f s", c->text, cv->after,
                   cv->settled_us / 1e6);
        ok = FALSE;
      }
    }
    if (w->settling >= 0) {
      const SimConvergence *cv = &g_array_index(w->convergences, SimConvergence, w->settling);
      if (w->now_us - cv->since_us > c->within_us) {
        world_fail(w, "check %s: the moves after %s are still running", c->text, cv->after);
        ok = FALSE;
      }
    }
    return ok;
  }
  case SIM_CHECK_DIRECTOR_USERS: {
    SimNode *n = &w->nodes[c->director];
    if (!n->up) {
      world_fail(w, "check %s: director %u is down", c->text, c->director);
      return FALSE;
    }
    UsherRingInfo ring;
    usher_director_get_ring_info(n->d, &ring);
    if (ring.n_users < c->min || ring.n_users > c->max) {
      world_fail(w, "check %s: director %u holds %u users", c->text, c->director, ring.n_users);
      return FALSE;
    }
    return TRUE;
  }
  case SIM_CHECK_MAX_MOVED:
    if (w->users_moved > c->max) {
      world_fail(w, "check %s: %" G_GUINT64_FORMAT " users changed backend (max %" G_GUINT64_FORMAT ")",
                 c->text, w->users_moved, c->max);
      return FALSE;
    }
    return TRUE;
  case SIM_CHECK_MAX_KICKED:
    if (w->sessions_kicked > c->max) {
      world_fail(w, "check %s: %" G_GUINT64_FORMAT " sessions were kicked (max %" G_GUINT64_FORMAT ")",
                 c->text, w->sessions_kicked, c->max);
      return FALSE;
    }
    return TRUE;
  case SIM_CHECK_MIN_LOGINS:
    if (w->logins_ok < c->max) {
      world_fail(w, "check %s: only %" G_GUINT64_FORMAT " logins succeeded (min %" G_GUINT64_FORMAT ")",
                 c->text, w->logins_ok, c->max);
      return FALSE;
    }
    return TRUE;
  case SIM_CHECK_COUNTER: {
    guint64 v = counter_value(w, c->counter);
    if (v < c->min || v > c->max) {
      world_fail(w, "check %s: %s is %" G_GUINT64_FORMAT, c->text, sim_counter_name(c->counter), v);
      return FALSE;
    }
    return TRUE;
  }
  case SIM_CHECK_SHARE: {
    guint64 total = 0, mine = 0;
    for (guint i = 0; i < w->n_nodes; i++) {
      if (!w->nodes[i].up)
        continue;
      /* The share among the backends of its own tag: what a mixed workload's users of that tag
       * spread over. */
      UsherHostTable *t = usher_director_get_hosts(w->nodes[i].d);
      UsherHost *target = usher_host_table_lookup(t, &c->host);
      for (guint h = 0; h < usher_host_table_n_hosts(t); h++) {
        UsherHost *host = usher_host_table_nth(t, h);
        if (target != NULL && host->tag != target->tag)
          continue;
        total += host->user_count;
        if (host == target)
          mine = host->user_count;
      }
      break;
    }
    guint64 share = total > 0 ? (mine * 10000 + total / 2) / total : 0;
    if (share < c->min_x100 || share > c->max_x100) {
      world_fail(w, "check %s: the backend holds %" G_GUINT64_FORMAT ".%02u%% of the users",
                 c->text, share / 100, (guint)(share % 100));
      return FALSE;
    }
    return TRUE;
  }
  case SIM_CHECK_NO_DOUBLE_BACKEND: {
    guint64 bad = w->windows_violation;
    GHashTableIter it;
    gpointer v;
    g_hash_table_iter_init(&it, w->windows);
    while (g_hash_table_iter_next(&it, NULL, &v))
      bad += ((SimWindow *)v)->allowed ? (c->allow_split_brain ? 0 : 1) : 1;
    if (!c->allow_split_brain)
      bad += w->windows_split_brain + w->windows_clock_skew + w->windows_unsafe;
    if (bad > 0) {
      world_fail(w, "check %s: %" G_GUINT64_FORMAT " times a user had live sessions on two backends",
                 c->text, bad);
      return FALSE;
    }
    return TRUE;
  }
  case SIM_CHECK_CONVERGED: {
    gboolean ok = TRUE;
    if (c->at_us < 0 && w->faults_active > 0) {
      /* The final agreement is not taken while a fault lasts: a check that passed here would
       * say nothing. */
      world_fail(w, "check %s: a fault is still in force at the end of the run (a partition not "
                    "healed, a director not restarted or resumed): agreement cannot be judged; "
                    "end the fault before the run ends", c->text);
      ok = FALSE;
    }
    for (guint i = 0; i < w->convergences->len; i++) {
      SimConvergence *cv = &g_array_index(w->convergences, SimConvergence, i);
      if (cv->took_us < 0 || cv->took_us > c->within_us) {
        world_fail(w, "check %s: after %s the directors %s", c->text, cv->after,
                   cv->took_us < 0 ? "never converged" : "converged too late");
        ok = FALSE;
      }
    }
    if (w->probing && w->settling < 0 && w->now_us - w->probe_since_us > c->within_us) {
      world_fail(w, "check %s: not converged %" G_GINT64_FORMAT " s after %s", c->text,
                 (w->now_us - w->probe_since_us) / SEC_US, w->probe_after);
      ok = FALSE;
    }
    return ok;
  }
  case SIM_CHECK_NO_PENDING_LOGINS: {
    guint pending = 0;
    for (guint i = 0; i < w->n_nodes; i++)
      if (w->nodes[i].up)
        pending += usher_director_count_pending_requests(w->nodes[i].d);
    if (pending > 0) {
      world_fail(w, "check %s: %u login requests are waiting in the directors", c->text, pending);
      return FALSE;
    }
    return TRUE;
  }
  case SIM_CHECK_LOGIN_LATENCY: {
    gint64 p = world_latency_percentile(w, c->percentile);
    if (p > c->max_us) {
      world_fail(w, "check %s: the %u%% login latency is %" G_GINT64_FORMAT " ms", c->text,
                 c->percentile, p / 1000);
      return FALSE;
    }
    return TRUE;
  }
  }
  return TRUE;
}

/* ---- What the network does to the directors -------------------------------------------------- */

static UsherConnId
net_accept(gpointer user, guint node, guint from)
{
  SimWorld *w = user;
  SimNode *n = &w->nodes[node];
  return usher_director_peer_accepted(n->d, node_now(w, n), &w->nodes[from].addr.ip);
}

static void
net_connected(gpointer user, guint node, UsherConnId conn)
{
  SimWorld *w = user;
  SimNode *n = &w->nodes[node];
  usher_director_peer_connected(n->d, node_now(w, n), conn);
}

static void
net_bytes(gpointer user, guint node, UsherConnId conn, const char *data, gsize len)
{
  SimWorld *w = user;
  SimNode *n = &w->nodes[node];
  usher_director_peer_bytes(n->d, node_now(w, n), conn, data, len);
}

static void
net_closed(gpointer user, guint node, UsherConnId conn, const char *reason)
{
  SimWorld *w = user;
  SimNode *n = &w->nodes[node];
  usher_director_peer_closed(n->d, node_now(w, n), conn, reason);
}

static void
net_output_queued(gpointer user, guint node, UsherConnId conn, gsize queued_bytes)
{
  SimWorld *w = user;
  SimNode *n = &w->nodes[node];
  usher_director_peer_output_queued(n->d, node_now(w, n), conn, queued_bytes);
}

static void
net_drain(gpointer user, guint node)
{
  drain(user, node);
}

static void
net_discard(gpointer user, SimEvent *ev)
{
  if (ev->kind == EV_LOGIN_ATTEMPT)
    g_free(ev->p);
}

/* ---- The loop ------------------------------------------------------------------------------------ */

/* A world event (the network handles its own: sim_net_process()). */
static void
process(SimWorld *w, SimEvent *ev)
{
  SimNode *n = &w->nodes[ev->node];
  gboolean node_event = ev->kind <= EV_PROBE_DONE;
  if (node_event && (!n->up || n->incarnation != ev->incarnation))
    return;
  if (node_event && n->paused) {
    /* The stopped process reads this when it runs again. */
    schedule(w, w->now_us + SEC_US / 10, (SimEvKind)ev->kind, ev->node, ev->a, ev->b, NULL);
    return;
  }
  switch ((SimEvKind)ev->kind) {
  case EV_KICK_DONE:
    usher_director_kick_done(n->d, node_now(w, n), ev->a);
    drain(w, ev->node);
    break;
  case EV_FLUSH_DONE:
    usher_director_flush_done(n->d, node_now(w, n), ev->a, ev->b == 0);
    drain(w, ev->node);
    break;
  case EV_PROBE_DONE:
    w->health_probes++;
    usher_director_probe_done(n->d, node_now(w, n), ev->a, ev->b == 0,
                              ev->b == 0 ? "ok" : "backend unreachable");
    drain(w, ev->node);
    break;
  case EV_LOGIN_CANCEL:
    login_cancel(w, ev->a);
    break;
  case EV_ARRIVAL:
    if (!w->quiescing)
      arrival(w, ev->a != 0);
    break;
  case EV_LOGIN_ATTEMPT:
    if (w->quiescing)
      g_free(ev->p);
    else
      login_attempt(w, ev->p);
    break;
  case EV_SESSION_END: {
    SimSession *s = session_at(w, (guint32)ev->a);
    if (s->alive && s->gen == ev->b)
      session_end(w, (guint32)ev->a, FALSE);
    break;
  }
  case EV_SESSION_REFRESH: {
    SimSession *s = session_at(w, (guint32)ev->a);
    if (!s->alive || s->gen != ev->b || w->quiescing)
      break;
    SimNode *d = &w->nodes[s->director];
    if (d->up && d->incarnation == s->director_incarnation) {
      char name[256];
      if (d->last_clock_step_us > s->start_us) {
        if (!held_by(w, d, s->user, NULL, NULL))
          s->orphaned_by_step = TRUE;
      }
      usher_director_user_refresh(d->d, node_now(w, d), user_name(w, s->user, name, sizeof(name)));
      drain(w, s->director);
    }
    schedule(w, w->now_us + (gint64)s->refresh_secs * SEC_US, EV_SESSION_REFRESH, 0, ev->a, ev->b,
             NULL);
    break;
  }
  case EV_SCENARIO:
    apply_event(w, &g_array_index(w->sc->events, SimScenarioEvent, ev->a));
    break;
  case EV_SAMPLE:
    sample(w);
    break;
  case EV_PROBE:
    probe(w);
    break;
  case EV_CHECK:
    (void)evaluate_check(w, &g_array_index(w->sc->checks, SimCheck, ev->a));
    break;
  }
}

/* Runs events and director timers up to and including time end. */
static void
run_until(SimWorld *w, gint64 end)
{
  for (;;) {
    gint64 best = G_MAXINT64;
    guint best_node = 0;
    for (guint i = 0; i < w->n_nodes; i++) {
      SimNode *n = &w->nodes[i];
      if (n->up && !n->paused && n->deadline < best) {
        best = n->deadline;
        best_node = i;
      }
    }
    gint64 top = sim_net_next_time(w->net);
    gint64 next = MIN(best, top);
    if (next > end)
      break;
    if (w->events >= w->sc->max_events) {
      w->budget_exhausted = TRUE;
      world_fail(w, "the event budget (%" G_GUINT64_FORMAT " events) is spent", w->sc->max_events);
      break;
    }
    if (sim_net_pending(w->net) > MAX_PENDING_EVENTS) {
      /* Messages multiplying faster than they are delivered: a storm. Stop before memory runs
       * out and say so. */
      w->budget_exhausted = TRUE;
      world_fail(w, "%u events are pending: the directors are flooding the network",
                 sim_net_pending(w->net));
      break;
    }
    w->events++;
    w->now_us = MAX(w->now_us, next);
    if (top <= best) {
      SimEvent ev;
      (void)sim_net_pop(w->net, &ev);
      /* In a large ring most events are ring lines, and each one's user is a cache miss in the
       * receiving director's directory: start loading the next one's while this one runs. */
      guint node;
      const char *data;
      gsize len;
      if (sim_net_peek_delivery(w->net, &node, &data, &len) && w->nodes[node].up)
        usher_director_prefetch_bytes(w->nodes[node].d, data, len);
      if (!sim_net_process(w->net, &ev))
        process(w, &ev);
    } else {
      SimNode *n = &w->nodes[best_node];
      usher_director_on_deadline(n->d, node_now(w, n));
      drain(w, best_node);
    }
  }
  w->now_us = MAX(w->now_us, end);
}

void
sim_world_run(SimWorld *w)
{
  gint64 end = w->sc->duration_us;
  gint64 t0 = g_get_monotonic_time();
  run_until(w, end);
  w->wall_elapsed_us = g_get_monotonic_time() - t0;
  w->events_timed = w->events;

  /* The end: every invariant once more, then the checks. The checks and figures are taken at
   * the end of the run. For the final agreement, new logins stop and the directors get up to the
   * convergence budget to settle what is still in flight. A final no-pending-logins check waits
   * too (below): a login may legitimately wait at the last instant, for a move whose kick the
   * driver reports late, say. */
  for (guint i = 0; i < w->sc->checks->len; i++) {
    SimCheck *c = &g_array_index(w->sc->checks, SimCheck, i);
    if (c->at_us < 0 && c->kind != SIM_CHECK_NO_PENDING_LOGINS)
      (void)evaluate_check(w, c);
  }
  gboolean faulty = w->faults_active > 0;
  if (!faulty) {
    w->quiescing = TRUE;
    gint64 limit = end + MAX(w->sc->convergence_budget_us, w->fault_grace_until_us - end);
    gboolean agreed;
    while (!(agreed = converged_now(w)) && w->now_us < limit && !w->budget_exhausted)
      run_until(w, w->now_us + SEC_US / 10);
    if (!agreed) {
      g_autofree char *why = describe_divergence(w);
      world_fail(w, "the directors still disagree %" G_GINT64_FORMAT " s after the end of the run: %s",
                 (w->now_us - end) / SEC_US, why);
    }
  }
  /* The logins in flight at the end get their bounded time to be answered (no new ones start);
   * then no director may hold a request any more. */
  w->quiescing = TRUE;
  gint64 answer_by = end + USHER_REQUEST_TIMEOUT_SECS * SEC_US + LOGIN_COMPLETION_SLACK_US;
  while (g_hash_table_size(w->logins) > 0 && w->now_us < answer_by && !w->budget_exhausted)
    run_until(w, MIN(w->now_us + SEC_US / 10, answer_by));
  for (guint i = 0; i < w->sc->checks->len; i++) {
    SimCheck *c = &g_array_index(w->sc->checks, SimCheck, i);
    if (c->at_us < 0 && c->kind == SIM_CHECK_NO_PENDING_LOGINS)
      (void)evaluate_check(w, c);
  }
  check_counts(w);
  GHashTableIter it;
  gpointer v;
  g_hash_table_iter_init(&it, w->logins);
  guint64 late = 0;
  while (g_hash_table_iter_next(&it, NULL, &v))
    if (w->now_us - ((SimLogin *)v)->sent_us >
        USHER_REQUEST_TIMEOUT_SECS * SEC_US + LOGIN_COMPLETION_SLACK_US)
      late++;
  if (late > 0)
    world_fail(w, "%" G_GUINT64_FORMAT " login requests were never answered", late);
  mix(w, w->logins_ok);
  mix(w, w->sessions_kicked);
}

/* ---- Life cycle ----------------------------------------------------------------------------------- */

static int
cmp_u64(gconstpointer a, gconstpointer b)
{
  guint64 x = *(const guint64 *)a, y = *(const guint64 *)b;
  return x < y ? -1 : x > y ? 1 : 0;
}

static void
login_free(gpointer p)
{
  g_free(p);
}

SimWorld *
sim_world_new(const SimScenario *sc, guint64 seed)
{
  SimWorld *w = g_new0(SimWorld, 1);
  w->sc = sc;
  w->seed = seed;
  guint64 sm = seed;
  w->seed_net = usher_splitmix64(&sm);
  w->seed_workload = usher_splitmix64(&sm);
  w->seed_directors = usher_splitmix64(&sm);
  w->seed_driver = usher_splitmix64(&sm);
  usher_rng_seed(&w->rng_driver, w->seed_driver);
  usher_rng_seed(&w->rng_workload, w->seed_workload);
  w->fingerprint = G_GUINT64_CONSTANT(0xcbf29ce484222325);
  mix(w, seed);
  static const SimNetCallbacks callbacks = {net_accept,        net_connected, net_bytes,
                                            net_closed,        net_output_queued,
                                            net_drain,         net_discard};
  w->net = sim_net_new(&w->now_us, w->seed_net, &callbacks, w);
  sim_net_set_latency(w->net, &sc->latency);
  sim_net_set_bandwidth(w->net, sc->bandwidth);
  sim_net_set_output_limit(w->net, sc->config->output_buffer_size);
  w->backends = g_array_new(FALSE, TRUE, sizeof(SimBackend));
  w->sessions = g_array_new(FALSE, TRUE, sizeof(SimSession));
  w->free_sessions = g_array_new(FALSE, FALSE, sizeof(guint32));
  w->logins = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL, login_free);
  w->cancelled = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free, NULL);
  w->windows = g_hash_table_new_full(NULL, NULL, NULL, g_free);
  w->convergences = g_array_new(FALSE, TRUE, sizeof(SimConvergence));
  w->settling = -1;
  w->samples = g_array_new(FALSE, TRUE, sizeof(SimSample));
  w->marks = g_array_new(FALSE, TRUE, sizeof(SimMark));
  w->health_decisions = g_array_new(FALSE, TRUE, sizeof(SimHealthDecision));
  w->moves_between = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free, NULL);
  w->conflicts = g_array_new(FALSE, TRUE, sizeof(SimConflict));
  w->check_verdicts = g_new(gint8, MAX(sc->checks->len, 1u));
  memset(w->check_verdicts, -1, MAX(sc->checks->len, 1u));
  w->failures = g_ptr_array_new_with_free_func(g_free);
  w->next_login = 1;
  w->rate_milli = sc->rate_milli;

  for (guint i = 0; i < sc->backends->len; i++) {
    const SimBackendSpec *spec = g_ptr_array_index(sc->backends, i);
    SimBackend b = {0};
    b.ip = spec->ip;
    usher_ip_to_string(&spec->ip, b.ip_str);
    b.capacity = spec->capacity;
    g_array_append_val(w->backends, b);
  }
  w->n_users = sc->users;
  w->users = g_new0(SimUser, w->n_users);
  w->hash_index = g_new(guint64, w->n_users);
  g_autoptr(UsherHashFormat) format = usher_hash_format_new(sc->config->username_hash, NULL);
  for (guint64 u = 0; u < w->n_users; u++) {
    char name[256];
    user_name(w, (guint32)u, name, sizeof(name));
    w->users[u].hash = usher_hash_format_user(format, name, -1);
    w->hash_index[u] = (guint64)w->users[u].hash << 32 | u;
  }
  qsort(w->hash_index, w->n_users, sizeof(guint64), cmp_u64);

  w->n_nodes = sc->directors;
  for (guint i = 0; i < w->n_nodes; i++) {
    SimNode *n = &w->nodes[i];
    n->index = i;
    n->addr = *(const UsherRingAddr *)&g_array_index(sc->config->directors, UsherDirectorAddr, i);
    n->deadline = G_MAXINT64;
  }
  for (guint i = 0; i < w->n_nodes; i++)
    node_start(w, i);
  for (guint i = 0; i < sc->events->len; i++)
    schedule(w, g_array_index(sc->events, SimScenarioEvent, i).at_us, EV_SCENARIO, 0, i, 0, NULL);
  for (guint i = 0; i < sc->checks->len; i++) {
    SimCheck *c = &g_array_index(sc->checks, SimCheck, i);
    if (c->at_us >= 0)
      schedule(w, c->at_us, EV_CHECK, 0, i, 0, NULL);
  }
  schedule(w, 0, EV_SAMPLE, 0, 0, 0, NULL);
  arrival(w, FALSE);
  start_probe(w, "start");
  return w;
}

void
sim_world_free(SimWorld *w)
{
  if (w == NULL)
    return;
  for (guint i = 0; i < w->n_nodes; i++)
    usher_director_free(w->nodes[i].d);
  sim_net_free(w->net);
  g_array_unref(w->backends);
  g_free(w->users);
  g_free(w->hash_index);
  g_array_unref(w->sessions);
  g_array_unref(w->free_sessions);
  g_hash_table_unref(w->logins);
  g_hash_table_unref(w->cancelled);
  g_hash_table_unref(w->windows);
  for (guint i = 0; i < w->convergences->len; i++)
    g_free(g_array_index(w->convergences, SimConvergence, i).after);
  g_array_unref(w->convergences);
  for (guint i = 0; i < w->samples->len; i++) {
    g_free(g_array_index(w->samples, SimSample, i).live);
    g_free(g_array_index(w->samples, SimSample, i).users);
  }
  g_array_unref(w->samples);
  for (guint i = 0; i < w->marks->len; i++)
    g_free(g_array_index(w->marks, SimMark, i).text);
  g_array_unref(w->marks);
  g_array_unref(w->health_decisions);
  g_hash_table_unref(w->moves_between);
  g_array_unref(w->conflicts);
  g_free(w->check_verdicts);
  g_ptr_array_unref(w->failures);
  g_free(w->probe_after);
  g_free(w);
}

void
sim_world_set_log(SimWorld *w, FILE *out)
{
  w->log = out;
}

gboolean
sim_world_passed(const SimWorld *w)
{
  return w->failures_total == 0;
}

const GPtrArray *
sim_world_failures(const SimWorld *w)
{
  return w->failures;
}

guint64
sim_world_fingerprint(const SimWorld *w)
{
  return w->fingerprint;
}

guint64
sim_world_events(const SimWorld *w)
{
  return w->events;
}

/* ring-harness.c - see ring-harness.h. */
#include "ring-harness.h"

#include "common/driver.h"
#include "libcore/config.h"
#include "sim/net.h"

#include <string.h>

#define WALL_BASE_US (G_GINT64_CONSTANT(1795393974) * G_GINT64_CONSTANT(1000000))
#define MAX_NODES 64

typedef struct {
  guint index;
  UsherRingAddr addr;
  UsherDirector *d;
  gboolean up, started;
  guint incarnation;
  guint64 kicks;
} Node;

/* The harness's own events, in the network's heap (sim/net.h). */
enum {
  EV_KICK_DONE = SIM_NET_EV_DRIVER,
  EV_FLUSH_DONE,
  EV_PROBE_OK,
  EV_PROBE_FAILED,
};

#define MAX_FAILING_BACKENDS 16

struct Harness {
  guint n;
  Node nodes[MAX_NODES];
  UsherConfig *config;
  gint64 now_us;
  SimNet *net;
  GHashTable *logins; /* request id -> HarnessLogin* */
  GHashTable *admin_replies; /* op id -> reply text */
  guint64 next_op;
  guint64 next_request;
  gboolean recording;
  GString *transcript;
  guint warnings;
  /* Health probes: backend i fails from the nodes in failing_mask[i] */
  UsherIp failing_ip[MAX_FAILING_BACKENDS];
  guint64 failing_mask[MAX_FAILING_BACKENDS];
  guint n_failing;
};

static void
schedule(Harness *h, gint64 t, guint kind, guint node, guint64 id)
{
  SimEvent ev = {.t = t, .kind = kind, .node = node, .incarnation = h->nodes[node].incarnation,
                 .a = id};
  sim_net_schedule(h->net, ev);
}

/* ---- Helpers --------------------------------------------------------------------------------------- */

static UsherNow
now_of(Harness *h)
{
  UsherNow n = {h->now_us, WALL_BASE_US + h->now_us};
  return n;
}

static Node *
node_by_addr(Harness *h, const UsherRingAddr *addr)
{
  for (guint i = 0; i < h->n; i++)
    if (usher_ip_equal(&h->nodes[i].addr.ip, &addr->ip) && h->nodes[i].addr.port == addr->port)
      return &h->nodes[i];
  return NULL;
}

static void drain(Harness *h, guint node);

static void
handle_effect(Harness *h, guint node_idx, UsherEffect *e)
{
  Node *node = &h->nodes[node_idx];
  switch (e->type) {
  case USHER_EFFECT_SEND: {
    gsize queued;
    if (sim_net_send(h->net, node_idx, e->send.conn, e->send.data, e->send.len, &queued) &&
        h->recording) {
      guint peer = sim_net_peer(h->net, node_idx, e->send.conn);
      g_autofree char *text = g_strndup(e->send.data, e->send.len);
      g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
      for (guint i = 0; lines[i] != NULL && lines[i][0] != '\0'; i++)
        g_string_append_printf(h->transcript, "%u>%u: %s\n", node_idx, peer, lines[i]);
    }
    /* What the link still holds (a hung partition holds everything sent into it). */
    usher_director_peer_output_queued(node->d, now_of(h), e->send.conn, queued);
    break;
  }
  case USHER_EFFECT_CONNECT: {
    Node *peer = node_by_addr(h, &e->connect.addr);
    sim_net_connect(h->net, node_idx, e->connect.conn, peer != NULL ? peer->index : G_MAXUINT);
    break;
  }
  case USHER_EFFECT_DISCONNECT:
    sim_net_disconnect(h->net, node_idx, e->disconnect.conn);
    break;
  case USHER_EFFECT_LOGIN_RESULT: {
    HarnessLogin *r = g_hash_table_lookup(h->logins, &e->login.request);
    if (r != NULL) {
      r->answered = TRUE;
      r->answered_us = h->now_us;
      r->status = e->login.status;
      if (e->login.status == USHER_LOGIN_OK)
        usher_ip_to_string(&e->login.host, r->host);
    }
    break;
  }
  case USHER_EFFECT_KICK: {
    node->kicks++;
    schedule(h, h->now_us + 1000, EV_KICK_DONE, node_idx, e->kick.id);
    break;
  }
  case USHER_EFFECT_FLUSH:
    schedule(h, h->now_us + 1000, EV_FLUSH_DONE, node_idx, e->flush.id);
    break;
  case USHER_EFFECT_LOG:
    if (e->log.level & (G_LOG_LEVEL_WARNING | G_LOG_LEVEL_ERROR | G_LOG_LEVEL_CRITICAL))
      h->warnings++;
    if (g_test_verbose())
      g_test_message("[%.3f] node %u: %s", h->now_us / 1e6, node_idx, e->log.message);
    break;
  case USHER_EFFECT_ADMIN_REPLY: {
    g_autofree char *text = g_strndup(e->admin.text, strcspn(e->admin.text, "\n"));
    guint64 *key = g_new(guint64, 1);
    *key = e->admin.op;
    g_hash_table_replace(h->admin_replies, key, g_steal_pointer(&text));
    break;
  }
  case USHER_EFFECT_STATE:
    break;
  case USHER_EFFECT_PROBE: {
    gboolean ok = TRUE;
    for (guint i = 0; i < h->n_failing; i++)
      if (usher_ip_equal(&h->failing_ip[i], &e->probe.host) &&
          (h->failing_mask[i] & (G_GUINT64_CONSTANT(1) << node_idx)))
        ok = FALSE;
    schedule(h, h->now_us + 1000, ok ? EV_PROBE_OK : EV_PROBE_FAILED, node_idx, e->probe.id);
    break;
  }
  }
}

void
harness_set_backend_failing(Harness *h, const char *ip, guint64 node_mask)
{
  UsherIp addr = harness_ip(ip);
  for (guint i = 0; i < h->n_failing; i++) {
    if (usher_ip_equal(&h->failing_ip[i], &addr)) {
      h->failing_mask[i] = node_mask;
      return;
    }
  }
  g_assert(h->n_failing < MAX_FAILING_BACKENDS);
  h->failing_ip[h->n_failing] = addr;
  h->failing_mask[h->n_failing++] = node_mask;
}

typedef struct {
  Harness *h;
  guint node_idx;
} EffectTarget;

static void
handle_effect_cb(gpointer data, UsherEffect *e)
{
  EffectTarget *t = data;
  handle_effect(t->h, t->node_idx, e);
}

static void
drain(Harness *h, guint node_idx)
{
  Node *node = &h->nodes[node_idx];
  if (node->d == NULL)
    return;
  EffectTarget target = {h, node_idx};
  usher_driver_drain(node->d, handle_effect_cb, &target);
}

/* ---- What the network does to the directors ---------------------------------------------------- */

static UsherConnId
net_accept(gpointer user, guint node, guint from)
{
  Harness *h = user;
  return usher_director_peer_accepted(h->nodes[node].d, now_of(h), &h->nodes[from].addr.ip);
}

static void
net_connected(gpointer user, guint node, UsherConnId conn)
{
  Harness *h = user;
  usher_director_peer_connected(h->nodes[node].d, now_of(h), conn);
}

static void
net_bytes(gpointer user, guint node, UsherConnId conn, const char *data, gsize len)
{
  Harness *h = user;
  usher_director_peer_bytes(h->nodes[node].d, now_of(h), conn, data, len);
}

static void
net_closed(gpointer user, guint node, UsherConnId conn, const char *reason)
{
  Harness *h = user;
  usher_director_peer_closed(h->nodes[node].d, now_of(h), conn, reason);
}

static void
net_output_queued(gpointer user, guint node, UsherConnId conn, gsize queued_bytes)
{
  Harness *h = user;
  usher_director_peer_output_queued(h->nodes[node].d, now_of(h), conn, queued_bytes);
}

static void
net_drain(gpointer user, guint node)
{
  drain(user, node);
}

/* ---- Event processing ------------------------------------------------------------------------------ */

static void
process(Harness *h, SimEvent *e)
{
  Node *n = &h->nodes[e->node];
  if (!n->up || n->d == NULL || n->incarnation != e->incarnation)
    return;
  switch (e->kind) {
  case EV_KICK_DONE:
    usher_director_kick_done(n->d, now_of(h), e->a);
    drain(h, e->node);
    break;
  case EV_FLUSH_DONE:
    usher_director_flush_done(n->d, now_of(h), e->a, TRUE);
    drain(h, e->node);
    break;
  case EV_PROBE_OK:
  case EV_PROBE_FAILED:
    usher_director_probe_done(n->d, now_of(h), e->a, e->kind == EV_PROBE_OK, NULL);
    drain(h, e->node);
    break;
  }
}

void
harness_run(Harness *h, gint64 duration_us)
{
  gint64 end = h->now_us + duration_us;
  /* Effects of calls made directly on a node since the last run. */
  for (guint i = 0; i < h->n; i++)
    drain(h, i);
  for (;;) {
    gint64 best = G_MAXINT64;
    guint best_node = 0;
    for (guint i = 0; i < h->n; i++) {
      Node *n = &h->nodes[i];
      if (!n->up || !n->started)
        continue;
      gint64 t = usher_director_next_deadline(n->d);
      if (t < best) {
        best = t;
        best_node = i;
      }
    }
    gint64 top = sim_net_next_time(h->net);
    gint64 next = MIN(best, top);
    if (next > end)
      break;
    h->now_us = MAX(h->now_us, next);
    if (top <= best) {
      SimEvent e;
      (void)sim_net_pop(h->net, &e);
      if (!sim_net_process(h->net, &e))
        process(h, &e);
    } else {
      usher_director_on_deadline(h->nodes[best_node].d, now_of(h));
      drain(h, best_node);
    }
  }
  h->now_us = end;
}

/* ---- Public API ------------------------------------------------------------------------------------- */

Harness *
harness_new(guint n, const char *backends, const char *extra_config)
{
  g_assert(n > 0 && n <= MAX_NODES);
  Harness *h = g_new0(Harness, 1);
  h->n = n;
  h->now_us = 1000000;
  static const SimNetCallbacks callbacks = {net_accept, net_connected,     net_bytes, net_closed,
                                            net_output_queued, net_drain, NULL};
  h->net = sim_net_new(&h->now_us, 1, &callbacks, h); /* fixed latency: no random draw */
  harness_set_latency_us(h, 500);
  h->logins = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL, g_free);
  h->admin_replies = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free, g_free);
  h->next_op = 1;
  h->next_request = 1;
  h->transcript = g_string_new(NULL);

  GString *conf = g_string_new("[ring]\ndirectors =");
  for (guint i = 0; i < n; i++)
    g_string_append_printf(conf, " 127.0.1.%u:9090", i + 1);
  g_string_append_printf(conf, "\n[backends]\nhosts = %s\n%s", backends,
                         extra_config != NULL ? extra_config : "");
  g_autoptr(GError) error = NULL;
  h->config = usher_config_parse(conf->str, conf->len, "harness.conf", &error);
  g_assert_no_error(error);
  g_string_free(conf, TRUE);
  sim_net_set_output_limit(h->net, h->config->output_buffer_size);
  for (guint i = 0; i < n; i++) {
    Node *node = &h->nodes[i];
    node->index = i;
    node->addr = *(const UsherRingAddr *)&g_array_index(h->config->directors, UsherDirectorAddr, i);
  }
  return h;
}

static void
node_create(Harness *h, guint i)
{
  Node *node = &h->nodes[i];
  g_autoptr(GError) error = NULL;
  node->d = usher_director_new(h->config, &node->addr, i + 1, now_of(h), &error);
  g_assert_no_error(error);
  node->up = TRUE;
  node->incarnation++;
}

void
harness_free(Harness *h)
{
  for (guint i = 0; i < h->n; i++)
    usher_director_free(h->nodes[i].d);
  sim_net_free(h->net);
  g_hash_table_unref(h->logins);
  g_hash_table_unref(h->admin_replies);
  g_string_free(h->transcript, TRUE);
  usher_config_free(h->config);
  g_free(h);
}

UsherDirector *
harness_node(Harness *h, guint i)
{
  return h->nodes[i].d;
}

gint64
harness_now_us(Harness *h)
{
  return h->now_us;
}

UsherNow
harness_now(Harness *h)
{
  return now_of(h);
}

void
harness_set_latency_us(Harness *h, gint64 latency_us)
{
  SimDist fixed = {SIM_DIST_FIXED, latency_us, latency_us};
  sim_net_set_latency(h->net, &fixed);
}

void
harness_set_bandwidth(Harness *h, guint64 bytes_per_sec)
{
  sim_net_set_bandwidth(h->net, bytes_per_sec);
}

void
harness_record(Harness *h, gboolean on)
{
  h->recording = on;
}

GString *
harness_transcript(Harness *h)
{
  return h->transcript;
}

guint
harness_count_warnings(Harness *h)
{
  return h->warnings;
}

void
harness_start(Harness *h, guint i)
{
  if (h->nodes[i].d == NULL)
    node_create(h, i);
  h->nodes[i].started = TRUE;
  sim_net_node_up(h->net, i, h->nodes[i].incarnation);
  usher_director_start(h->nodes[i].d, now_of(h));
  drain(h, i);
}

void
harness_start_all(Harness *h)
{
  for (guint i = 0; i < h->n; i++)
    harness_start(h, i);
}

gboolean
harness_run_until_synced(Harness *h, gint64 max_us)
{
  gint64 end = h->now_us + max_us;
  while (h->now_us < end) {
    harness_run(h, 100000);
    gboolean all = TRUE;
    for (guint i = 0; i < h->n; i++) {
      Node *n = &h->nodes[i];
      if (n->up && n->started &&
          !(usher_director_is_ring_handshaked(n->d) && usher_director_is_ring_synced(n->d)))
        all = FALSE;
    }
    if (all)
      return TRUE;
  }
  return FALSE;
}

guint64
harness_login(Harness *h, guint i, const char *username, const char *tag)
{
  HarnessLogin *r = g_new0(HarnessLogin, 1);
  r->request = h->next_request++;
  g_hash_table_insert(h->logins, &r->request, r);
  usher_director_login_request(h->nodes[i].d, now_of(h), r->request, username, tag);
  drain(h, i);
  return r->request;
}

const HarnessLogin *
harness_login_result(Harness *h, guint64 request)
{
  return g_hash_table_lookup(h->logins, &request);
}

void
harness_crash(Harness *h, guint i)
{
  Node *n = &h->nodes[i];
  sim_net_node_down(h->net, i); /* its links are reset */
  g_clear_pointer(&n->d, usher_director_free);
  n->up = FALSE;
  n->started = FALSE;
}

void
harness_restart(Harness *h, guint i)
{
  g_assert(!h->nodes[i].up);
  node_create(h, i);
  harness_start(h, i);
}

void
harness_partition(Harness *h, guint64 group_a, guint64 group_b, gboolean reset)
{
  guint64 groups[2] = {group_a, group_b};
  sim_net_partition(h->net, groups, 2, reset);
}

void
harness_heal(Harness *h)
{
  sim_net_heal(h->net);
}

gboolean
harness_converged(Harness *h)
{
  gboolean have = FALSE;
  guint64 fp = 0;
  for (guint i = 0; i < h->n; i++) {
    Node *n = &h->nodes[i];
    if (!n->up || !n->started)
      continue;
    guint64 f = usher_director_state_fingerprint(n->d);
    if (have && f != fp)
      return FALSE;
    fp = f;
    have = TRUE;
  }
  return TRUE;
}

const char *
harness_user_host(Harness *h, guint i, const char *username)
{
  UsherHostTable *t = usher_director_get_hosts(h->nodes[i].d);
  UsherTag *tag = usher_host_table_find_tag(t, "");
  UsherUser *u = usher_user_dir_lookup(tag->users, usher_user_hash(username, -1, "%Lu"));
  return u != NULL ? usher_host_table_get(t, u->host)->ip_str : NULL;
}

gboolean
harness_ring_formed(Harness *h)
{
  g_autoptr(GArray) up = g_array_new(FALSE, FALSE, sizeof(guint));
  for (guint i = 0; i < h->n; i++)
    if (h->nodes[i].up && h->nodes[i].started)
      g_array_append_val(up, i);
  if (up->len < 2)
    return TRUE;
  for (guint k = 0; k < up->len; k++) {
    guint i = g_array_index(up, guint, k), j = g_array_index(up, guint, (k + 1) % up->len);
    const UsherRingAddr *right = usher_director_get_right(h->nodes[i].d);
    const UsherRingAddr *left = usher_director_get_left(h->nodes[j].d);
    if (right == NULL || left == NULL)
      return FALSE;
    if (!usher_ip_equal(&right->ip, &h->nodes[j].addr.ip) ||
        !usher_ip_equal(&left->ip, &h->nodes[i].addr.ip))
      return FALSE;
  }
  return TRUE;
}

guint64
harness_kicks(Harness *h, guint i)
{
  return h->nodes[i].kicks;
}

guint64
harness_new_op(Harness *h)
{
  return h->next_op++;
}

const char *
harness_admin_reply(Harness *h, guint64 op)
{
  return g_hash_table_lookup(h->admin_replies, &op);
}

void
harness_drain(Harness *h, guint i)
{
  drain(h, i);
}

UsherIp
harness_ip(const char *text)
{
  UsherIp ip;
  g_assert_true(usher_ip_parse(text, -1, &ip));
  return ip;
}

const char *
harness_login_now(Harness *h, guint i, const char *username)
{
  guint64 r = harness_login(h, i, username, NULL);
  harness_run(h, 100000);
  const HarnessLogin *res = harness_login_result(h, r);
  g_assert_true(res->answered);
  g_assert_cmpint(res->status, ==, USHER_LOGIN_OK);
  return res->host;
}

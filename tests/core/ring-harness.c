/* ring-harness.c - see ring-harness.h. */
#include "ring-harness.h"

#include "libcore/config.h"

#include <string.h>

#define WALL_BASE_US (G_GINT64_CONSTANT(1795393974) * G_GINT64_CONSTANT(1000000))
#define MAX_NODES 64

typedef struct Link Link;

typedef struct {
  guint index;
  UsherRingAddr addr;
  UsherDirector *d;
  gboolean up, started;
  guint incarnation;
  GHashTable *conns; /* UsherConnId -> Link* */
  guint64 kicks;
} Node;

struct Link {
  guint id;
  guint node[2];        /* 0: the dialling side, 1: the accepting side */
  UsherConnId conn[2];  /* 0 until that side has an id */
  guint incarnation[2]; /* node incarnations the link belongs to */
  gboolean open[2];
  gint64 last_delivery_us[2]; /* keeps each direction in order */
  gboolean clogged;
  gboolean syn_pending; /* connect attempted into a silent partition */
  GQueue clogged_data[2]; /* GBytes* held while clogged, per direction (sender side index) */
};

typedef enum {
  EV_DELIVER,
  EV_ACCEPT,
  EV_CONNECTED,
  EV_CLOSE,
  EV_KICK_DONE,
  EV_FLUSH_DONE,
} EventKind;

typedef struct {
  gint64 t;
  guint64 seq;
  EventKind kind;
  guint node;
  guint incarnation;
  Link *link;
  guint side; /* EV_DELIVER: receiving side */
  UsherConnId conn;
  guint64 id;
  GBytes *data;
  char *reason;
} Event;

struct Harness {
  guint n;
  Node nodes[MAX_NODES];
  UsherConfig *config;
  gint64 now_us;
  gint64 latency_us;
  guint64 seq;
  GPtrArray *heap; /* Event* */
  GPtrArray *links;
  guint next_link_id;
  guint64 partition_a, partition_b;
  gboolean partition_reset;
  GHashTable *logins; /* request id -> HarnessLogin* */
  GHashTable *admin_replies; /* op id -> reply text */
  guint64 next_op;
  guint64 next_request;
  gboolean recording;
  GString *transcript;
  guint warnings;
};

/* ---- Event heap ---------------------------------------------------------------------------------- */

static gboolean
ev_before(const Event *a, const Event *b)
{
  return a->t < b->t || (a->t == b->t && a->seq < b->seq);
}

static void
heap_push(Harness *h, Event *e)
{
  e->seq = h->seq++;
  GPtrArray *a = h->heap;
  g_ptr_array_add(a, e);
  guint i = a->len - 1;
  while (i > 0) {
    guint p = (i - 1) / 2;
    if (!ev_before(a->pdata[i], a->pdata[p]))
      break;
    gpointer tmp = a->pdata[i];
    a->pdata[i] = a->pdata[p];
    a->pdata[p] = tmp;
    i = p;
  }
}

static Event *
heap_pop(Harness *h)
{
  GPtrArray *a = h->heap;
  if (a->len == 0)
    return NULL;
  Event *top = a->pdata[0];
  a->pdata[0] = a->pdata[a->len - 1];
  g_ptr_array_set_size(a, a->len - 1);
  guint i = 0;
  for (;;) {
    guint l = 2 * i + 1, r = l + 1, m = i;
    if (l < a->len && ev_before(a->pdata[l], a->pdata[m]))
      m = l;
    if (r < a->len && ev_before(a->pdata[r], a->pdata[m]))
      m = r;
    if (m == i)
      break;
    gpointer tmp = a->pdata[i];
    a->pdata[i] = a->pdata[m];
    a->pdata[m] = tmp;
    i = m;
  }
  return top;
}

static void
event_free(Event *e)
{
  if (e->data != NULL)
    g_bytes_unref(e->data);
  g_free(e->reason);
  g_free(e);
}

static Event *
event_new(Harness *h, gint64 t, EventKind kind, guint node)
{
  Event *e = g_new0(Event, 1);
  e->t = t;
  e->kind = kind;
  e->node = node;
  e->incarnation = h->nodes[node].incarnation;
  return e;
}

/* ---- Helpers --------------------------------------------------------------------------------------- */

static UsherNow
now_of(Harness *h)
{
  UsherNow n = {h->now_us, WALL_BASE_US + h->now_us};
  return n;
}

static gboolean
blocked(Harness *h, guint x, guint y)
{
  guint64 bx = G_GUINT64_CONSTANT(1) << x, by = G_GUINT64_CONSTANT(1) << y;
  return ((h->partition_a & bx) && (h->partition_b & by)) ||
         ((h->partition_a & by) && (h->partition_b & bx));
}

static Node *
node_by_addr(Harness *h, const UsherRingAddr *addr)
{
  for (guint i = 0; i < h->n; i++)
    if (usher_ip_equal(&h->nodes[i].addr.ip, &addr->ip) && h->nodes[i].addr.port == addr->port)
      return &h->nodes[i];
  return NULL;
}

static guint
link_side_of(Link *l, guint node, UsherConnId conn)
{
  if (l->node[0] == node && l->conn[0] == conn)
    return 0;
  g_assert(l->node[1] == node && l->conn[1] == conn);
  return 1;
}

static void drain(Harness *h, guint node);

static void
schedule_close(Harness *h, Link *l, guint side, const char *reason)
{
  /* Tell `side` that the connection closed (after anything already in flight to it). */
  Event *e = event_new(h, MAX(h->now_us + h->latency_us, l->last_delivery_us[side]), EV_CLOSE,
                       l->node[side]);
  e->incarnation = l->incarnation[side];
  e->link = l;
  e->side = side;
  e->reason = g_strdup(reason);
  heap_push(h, e);
}

static void
send_bytes(Harness *h, Link *l, guint from_side, const char *data, gsize len)
{
  guint to = 1 - from_side;
  if (!l->open[from_side] || !l->open[to])
    return;
  if (h->recording) {
    g_autofree char *text = g_strndup(data, len);
    g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
    for (guint i = 0; lines[i] != NULL && lines[i][0] != '\0'; i++)
      g_string_append_printf(h->transcript, "%u>%u: %s\n", l->node[from_side], l->node[to],
                             lines[i]);
  }
  if (l->clogged) {
    g_queue_push_tail(&l->clogged_data[from_side], g_bytes_new(data, len));
    return;
  }
  gint64 t = MAX(h->now_us + h->latency_us, l->last_delivery_us[to]);
  l->last_delivery_us[to] = t;
  Event *e = event_new(h, t, EV_DELIVER, l->node[to]);
  e->incarnation = l->incarnation[to];
  e->link = l;
  e->side = to;
  e->data = g_bytes_new(data, len);
  heap_push(h, e);
}

static void
handle_effect(Harness *h, guint node_idx, UsherEffect *e)
{
  Node *node = &h->nodes[node_idx];
  switch (e->type) {
  case USHER_EFFECT_SEND: {
    Link *l = g_hash_table_lookup(node->conns, GUINT_TO_POINTER(e->send.conn));
    if (l != NULL)
      send_bytes(h, l, link_side_of(l, node_idx, e->send.conn), e->send.data, e->send.len);
    /* The harness's links take everything at once: nothing stays queued. */
    usher_director_peer_output_queued(node->d, now_of(h), e->send.conn, 0);
    break;
  }
  case USHER_EFFECT_CONNECT: {
    Link *l = g_new0(Link, 1);
    l->id = h->next_link_id++;
    l->node[0] = node_idx;
    l->conn[0] = e->connect.conn;
    l->incarnation[0] = node->incarnation;
    l->open[0] = TRUE;
    g_ptr_array_add(h->links, l);
    g_hash_table_insert(node->conns, GUINT_TO_POINTER(e->connect.conn), l);
    Node *peer = node_by_addr(h, &e->connect.addr);
    if (peer == NULL || !peer->up || !peer->started ||
        (blocked(h, node_idx, peer->index) && h->partition_reset)) {
      l->node[1] = node_idx;
      schedule_close(h, l, 0, "connection refused");
    } else if (blocked(h, node_idx, peer->index)) {
      /* A silent network: the SYN is lost. TCP retransmits it, so it gets through once the
       * network heals, unless the dialler's connect timeout fires first. */
      l->node[1] = peer->index;
      l->syn_pending = TRUE;
    } else {
      l->node[1] = peer->index;
      Event *ev = event_new(h, h->now_us + h->latency_us, EV_ACCEPT, peer->index);
      ev->link = l;
      heap_push(h, ev);
    }
    break;
  }
  case USHER_EFFECT_DISCONNECT: {
    Link *l = g_hash_table_lookup(node->conns, GUINT_TO_POINTER(e->disconnect.conn));
    if (l == NULL)
      break;
    guint side = link_side_of(l, node_idx, e->disconnect.conn);
    g_hash_table_remove(node->conns, GUINT_TO_POINTER(e->disconnect.conn));
    l->open[side] = FALSE;
    if (l->open[1 - side] && l->conn[1 - side] != 0 && !l->clogged)
      schedule_close(h, l, 1 - side, e->disconnect.reason);
    break;
  }
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
    Event *ev = event_new(h, h->now_us + 1000, EV_KICK_DONE, node_idx);
    ev->id = e->kick.id;
    heap_push(h, ev);
    break;
  }
  case USHER_EFFECT_FLUSH: {
    Event *ev = event_new(h, h->now_us + 1000, EV_FLUSH_DONE, node_idx);
    ev->id = e->flush.id;
    heap_push(h, ev);
    break;
  }
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
  }
}

static void
drain(Harness *h, guint node_idx)
{
  Node *node = &h->nodes[node_idx];
  if (node->d == NULL)
    return;
  g_autoptr(GArray) effects = usher_director_take_effects(node->d);
  for (guint i = 0; i < effects->len; i++)
    handle_effect(h, node_idx, &g_array_index(effects, UsherEffect, i));
}

/* ---- Event processing ------------------------------------------------------------------------------ */

static gboolean
event_live(Harness *h, const Event *e)
{
  Node *n = &h->nodes[e->node];
  return n->up && n->d != NULL && n->incarnation == e->incarnation;
}

static void
process(Harness *h, Event *e)
{
  Node *n = &h->nodes[e->node];
  UsherNow now = now_of(h);
  if (!event_live(h, e))
    return;
  switch (e->kind) {
  case EV_ACCEPT: {
    Link *l = e->link;
    if (!l->open[0] || blocked(h, l->node[0], l->node[1])) {
      l->open[1] = FALSE;
      if (l->open[0])
        schedule_close(h, l, 0, "connection refused");
      return;
    }
    /* The dialler learns it is connected before any byte of the acceptor arrives. */
    Event *c = event_new(h, h->now_us + h->latency_us, EV_CONNECTED, l->node[0]);
    c->incarnation = l->incarnation[0];
    c->link = l;
    heap_push(h, c);
    l->last_delivery_us[0] = h->now_us + h->latency_us;
    UsherConnId id = usher_director_peer_accepted(n->d, now, &h->nodes[l->node[0]].addr.ip);
    if (id == USHER_CONN_ID_NONE) {
      drain(h, e->node);
      schedule_close(h, l, 0, "connection refused by peer");
      return;
    }
    l->conn[1] = id;
    l->incarnation[1] = n->incarnation;
    l->open[1] = TRUE;
    g_hash_table_insert(n->conns, GUINT_TO_POINTER(id), l);
    drain(h, e->node);
    break;
  }
  case EV_CONNECTED:
    if (!e->link->open[0])
      return;
    usher_director_peer_connected(n->d, now, e->link->conn[0]);
    drain(h, e->node);
    break;
  case EV_DELIVER: {
    Link *l = e->link;
    if (!l->open[e->side] || l->conn[e->side] == 0)
      return;
    gsize len;
    const char *data = g_bytes_get_data(e->data, &len);
    usher_director_peer_bytes(n->d, now, l->conn[e->side], data, len);
    drain(h, e->node);
    break;
  }
  case EV_CLOSE: {
    Link *l = e->link;
    if (!l->open[e->side])
      return;
    l->open[e->side] = FALSE;
    if (l->conn[e->side] != 0) {
      g_hash_table_remove(n->conns, GUINT_TO_POINTER(l->conn[e->side]));
      usher_director_peer_closed(n->d, now, l->conn[e->side], e->reason);
      drain(h, e->node);
    }
    break;
  }
  case EV_KICK_DONE:
    usher_director_kick_done(n->d, now, e->id);
    drain(h, e->node);
    break;
  case EV_FLUSH_DONE:
    usher_director_flush_done(n->d, now, e->id, TRUE);
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
    Event *top = h->heap->len > 0 ? h->heap->pdata[0] : NULL;
    gint64 next = MIN(best, top != NULL ? top->t : G_MAXINT64);
    if (next > end)
      break;
    h->now_us = MAX(h->now_us, next);
    if (top != NULL && top->t <= best) {
      Event *e = heap_pop(h);
      process(h, e);
      event_free(e);
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
  h->latency_us = 500;
  h->now_us = 1000000;
  h->heap = g_ptr_array_new();
  h->links = g_ptr_array_new();
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
  for (guint i = 0; i < n; i++) {
    Node *node = &h->nodes[i];
    node->index = i;
    node->addr = *(const UsherRingAddr *)&g_array_index(h->config->directors, UsherDirectorAddr, i);
    node->conns = g_hash_table_new(NULL, NULL);
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
  for (guint i = 0; i < h->n; i++) {
    usher_director_free(h->nodes[i].d);
    g_hash_table_unref(h->nodes[i].conns);
  }
  for (guint i = 0; i < h->heap->len; i++)
    event_free(h->heap->pdata[i]);
  g_ptr_array_unref(h->heap);
  for (guint i = 0; i < h->links->len; i++) {
    Link *l = h->links->pdata[i];
    for (int s = 0; s < 2; s++)
      g_queue_clear_full(&l->clogged_data[s], (GDestroyNotify)g_bytes_unref);
    g_free(l);
  }
  g_ptr_array_unref(h->links);
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
  h->latency_us = latency_us;
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

static void
reset_links_of(Harness *h, guint i)
{
  for (guint k = 0; k < h->links->len; k++) {
    Link *l = h->links->pdata[k];
    for (guint s = 0; s < 2; s++) {
      if (l->node[s] != i || !l->open[s] || l->incarnation[s] != h->nodes[i].incarnation)
        continue;
      l->open[s] = FALSE;
      guint o = 1 - s;
      if (l->open[o] && l->conn[o] != 0)
        schedule_close(h, l, o, "connection reset by peer");
    }
  }
}

void
harness_crash(Harness *h, guint i)
{
  Node *n = &h->nodes[i];
  reset_links_of(h, i);
  g_clear_pointer(&n->d, usher_director_free);
  g_hash_table_remove_all(n->conns);
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
  h->partition_a = group_a;
  h->partition_b = group_b;
  h->partition_reset = reset;
  for (guint k = 0; k < h->links->len; k++) {
    Link *l = h->links->pdata[k];
    if (!(l->open[0] || l->open[1]) || !blocked(h, l->node[0], l->node[1]))
      continue;
    if (reset) {
      for (guint s = 0; s < 2; s++) {
        if (l->open[s] && l->conn[s] != 0) {
          Event *e = event_new(h, h->now_us, EV_CLOSE, l->node[s]);
          e->incarnation = l->incarnation[s];
          e->link = l;
          e->side = s;
          e->reason = g_strdup("connection reset (partition)");
          heap_push(h, e);
        }
      }
    } else {
      l->clogged = TRUE;
    }
  }
}

void
harness_heal(Harness *h)
{
  h->partition_a = h->partition_b = 0;
  for (guint k = 0; k < h->links->len; k++) {
    Link *l = h->links->pdata[k];
    if (l->syn_pending) {
      l->syn_pending = FALSE;
      if (l->open[0]) {
        Event *ev = event_new(h, h->now_us + h->latency_us, EV_ACCEPT, l->node[1]);
        ev->link = l;
        heap_push(h, ev);
      }
    }
    if (!l->clogged)
      continue;
    l->clogged = FALSE;
    for (guint s = 0; s < 2; s++) {
      GBytes *b;
      while ((b = g_queue_pop_head(&l->clogged_data[s])) != NULL) {
        gsize len;
        const char *data = g_bytes_get_data(b, &len);
        send_bytes(h, l, s, data, len);
        g_bytes_unref(b);
      }
      if (!l->open[s] && l->open[1 - s] && l->conn[1 - s] != 0)
        schedule_close(h, l, 1 - s, "connection closed");
    }
  }
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

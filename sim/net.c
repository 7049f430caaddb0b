/* net.c - the simulated network (see net.h). */
#include "sim/net.h"

#include <string.h>

typedef struct {
  guint node[2];        /* 0: the dialling side, 1: the accepting side */
  UsherConnId conn[2];  /* 0 until that side has an id */
  guint incarnation[2]; /* the incarnations of the nodes the link belongs to */
  gboolean open[2];
  gint64 last_delivery_us[2]; /* per receiving side: keeps each direction in order */
  gboolean clogged;           /* hung by a partition */
  gboolean syn_pending;       /* a connect waiting in a partition */
  GQueue clogged_data[2];     /* Chunk* held while clogged, per sending side */
  /* Per sending side: */
  guint64 held_bytes[2];  /* the bytes in clogged_data */
  gint64 tx_end_us[2];    /* when the last byte written so far will have been transmitted */
  gint64 report_us[2];    /* the pending progress report (SIM_NET_EV_TX), 0 = none */
  gboolean overflow[2];   /* closed for a full output buffer: nothing more is sent */
} Link;

typedef struct HeapKey HeapKey;

typedef struct {
  HeapKey *keys; /* HEAP_PAD keys before it are unused (see "Event queue") */
  guint len, cap;
} Heap;

typedef struct {
  SimEvent ev;
  guint32 next; /* the next body (slot + 1) in the same calendar bucket; 0: none */
} Body;

typedef struct {
  gboolean up;
  guint incarnation;
  GHashTable *conns; /* UsherConnId -> Link* */
} NetNode;

struct SimNet {
  const gint64 *clock_us;
  SimNetCallbacks cb;
  gpointer user;
  UsherRng rng;
  SimDist latency;
  guint64 bandwidth; /* bytes per second per link and direction; 0 = unlimited */
  guint64 output_limit; /* bytes a side may have queued; 0 = unlimited */
  SimNetStats stats;
  guint64 seq;
  /* See "Event queue". */
  Heap near;        /* the events before horizon */
  guint32 *buckets; /* CAL_BUCKETS calendar lists (body slot + 1, linked by Body.next) */
  gint64 horizon;   /* where the calendar starts: a multiple of CAL_WIDTH_US */
  guint n_far;      /* events in the calendar */
  Heap overflow;    /* the events from horizon + CAL_SPAN_US on */
  GArray *bodies;     /* Body, by slot */
  GArray *free_slots; /* guint32: slots of bodies not in use */
  NetNode nodes[SIM_NET_MAX_NODES];
  GPtrArray *links; /* Link*, owned */
  guint64 groups[SIM_NET_MAX_NODES];
  guint n_groups;
  gboolean reset_partition;
  gint64 link_delay_us[SIM_NET_MAX_NODES][SIM_NET_MAX_NODES];
  guint link_loss[SIM_NET_MAX_NODES][SIM_NET_MAX_NODES];
};

#define NOW(net) (*(net)->clock_us)

/* Bytes on the wire: one write, copied once (a large ring moves tens of millions of them). */
typedef struct {
  gsize len;
  char data[];
} Chunk;

static Chunk *
chunk_new(const char *data, gsize len)
{
  Chunk *c = g_malloc(sizeof(Chunk) + len);
  c->len = len;
  memcpy(c->data, data, len);
  return c;
}

/* ---- Event queue ------------------------------------------------------------------------------ */

/* The pending events of a large ring are counted in hundreds of thousands (every live session
 * has its end and its next refresh pending, minutes ahead), and taking the next one is the
 * simulator's inner loop. So the queue has three parts, by how far ahead an event is:
 *
 *   near      a 4-ary heap of the events before `horizon`: the next few milliseconds, a few
 *             hundred events, which stay in the cache;
 *   buckets   a calendar of CAL_BUCKETS lists, CAL_WIDTH_US wide each, for the events from
 *             horizon to horizon + CAL_SPAN_US, unordered: scheduling one is a list push;
 *   overflow  a second heap for the events further ahead (rare).
 *
 * When near runs empty, the bucket at the horizon is poured into it and the horizon moves one
 * bucket on (jumping over empty time when only overflow events are left; events scheduled
 * before a horizon that jumped go to near, which is then a plain heap until the time catches
 * up). Every event in near is earlier than every event elsewhere, so the near heap's top is the
 * earliest of all.
 *
 * The heaps hold 16-byte keys, aligned so that a node's four children share one cache line; the
 * event bodies sit in a separate array, touched once when scheduled and once when taken. A sift
 * moves a hole instead of swapping. (t, seq) orders events totally, so the order they come out
 * in is the same with any correct queue. */
#define HEAP_ARITY 4
#define HEAP_PAD 3 /* keys[-3..-1] unused: keys[1..4], the root's children, start a cache line */
#define SLOT_BITS 28
#define SLOT_MASK ((G_GUINT64_CONSTANT(1) << SLOT_BITS) - 1)
#define CAL_SHIFT 14 /* buckets of 16.384 ms */
#define CAL_WIDTH_US (G_GINT64_CONSTANT(1) << CAL_SHIFT)
#define CAL_BUCKETS (1u << 16) /* 17.9 minutes ahead */
#define CAL_SPAN_US ((gint64)CAL_BUCKETS * CAL_WIDTH_US)

struct HeapKey {
  gint64 t;
  guint64 order; /* seq << SLOT_BITS | the body's slot */
};

static inline gboolean
key_before(const HeapKey *a, const HeapKey *b)
{
  return a->t < b->t || (a->t == b->t && a->order < b->order);
}

static void
heap_push(Heap *heap, HeapKey key)
{
  if (heap->len == heap->cap) {
    guint cap = MAX(heap->cap * 2, 1024u);
    HeapKey *base = g_aligned_alloc(cap + HEAP_PAD, sizeof(HeapKey), 64);
    if (heap->keys != NULL) {
      memcpy(base + HEAP_PAD, heap->keys, heap->len * sizeof(HeapKey));
      g_aligned_free(heap->keys - HEAP_PAD);
    }
    heap->keys = base + HEAP_PAD;
    heap->cap = cap;
  }
  HeapKey *h = heap->keys;
  guint i = heap->len++;
  while (i > 0) {
    guint p = (i - 1) / HEAP_ARITY;
    if (!key_before(&key, &h[p]))
      break;
    h[i] = h[p];
    i = p;
  }
  h[i] = key;
}

/* Removes the top key (the heap is not empty). */
static void
heap_pop(Heap *heap)
{
  HeapKey *h = heap->keys;
  guint n = --heap->len;
  const HeapKey last = h[n];
  guint i = 0;
  for (;;) {
    guint first = HEAP_ARITY * i + 1;
    if (first >= n)
      break;
    guint m = first, end = MIN(first + HEAP_ARITY, n);
    for (guint c = first + 1; c < end; c++)
      if (key_before(&h[c], &h[m]))
        m = c;
    if (!key_before(&h[m], &last))
      break;
    h[i] = h[m];
    i = m;
  }
  h[i] = last;
}

static void
heap_clear(Heap *heap)
{
  if (heap->keys != NULL)
    g_aligned_free(heap->keys - HEAP_PAD);
  *heap = (Heap){0};
}

static inline Body *
body(SimNet *net, guint32 slot)
{
  return &g_array_index(net->bodies, Body, slot);
}

/* Puts the event in body `slot` where it belongs (see "Event queue"). */
static void
enqueue(SimNet *net, guint32 slot)
{
  Body *b = body(net, slot);
  HeapKey key = {b->ev.t, b->ev.seq << SLOT_BITS | slot};
  if (key.t < net->horizon) {
    heap_push(&net->near, key);
  } else if (key.t - net->horizon < CAL_SPAN_US) {
    guint32 *head = &net->buckets[(guint64)key.t >> CAL_SHIFT & (CAL_BUCKETS - 1)];
    b->next = *head;
    *head = slot + 1;
    net->n_far++;
  } else {
    heap_push(&net->overflow, key);
  }
}

void
sim_net_schedule(SimNet *net, SimEvent ev)
{
  ev.seq = net->seq++;
  g_assert(ev.seq < G_GUINT64_CONSTANT(1) << (64 - SLOT_BITS));
  guint32 slot;
  if (net->free_slots->len > 0) {
    slot = g_array_index(net->free_slots, guint32, net->free_slots->len - 1);
    g_array_set_size(net->free_slots, net->free_slots->len - 1);
  } else {
    g_assert(net->bodies->len <= SLOT_MASK);
    slot = net->bodies->len;
    g_array_set_size(net->bodies, slot + 1);
  }
  body(net, slot)->ev = ev;
  enqueue(net, slot);
}

/* Moves the overflow events that the calendar now covers into it. */
static void
pull_overflow(SimNet *net)
{
  while (net->overflow.len > 0 && net->overflow.keys[0].t - net->horizon < CAL_SPAN_US) {
    guint32 slot = (guint32)(net->overflow.keys[0].order & SLOT_MASK);
    heap_pop(&net->overflow);
    enqueue(net, slot);
  }
}

/* Fills the near heap from the calendar while it is empty and events are pending. */
static void
refill(SimNet *net)
{
  while (net->near.len == 0) {
    if (net->n_far == 0) {
      if (net->overflow.len == 0)
        return;
      /* Nothing in the calendar: jump to the bucket of the earliest overflow event. */
      net->horizon = MAX(net->horizon, net->overflow.keys[0].t & ~(CAL_WIDTH_US - 1));
      pull_overflow(net);
    }
    guint32 *head = &net->buckets[(guint64)net->horizon >> CAL_SHIFT & (CAL_BUCKETS - 1)];
    for (guint32 ref = *head; ref != 0;) {
      Body *b = body(net, ref - 1);
      heap_push(&net->near, (HeapKey){b->ev.t, b->ev.seq << SLOT_BITS | (ref - 1)});
      net->n_far--;
      ref = b->next;
    }
    *head = 0;
    net->horizon += CAL_WIDTH_US;
    pull_overflow(net);
  }
}

gint64
sim_net_next_time(SimNet *net)
{
  refill(net);
  return net->near.len > 0 ? net->near.keys[0].t : G_MAXINT64;
}

guint
sim_net_pending(const SimNet *net)
{
  return net->bodies->len - net->free_slots->len; /* every body not on the free list */
}

gboolean
sim_net_pop(SimNet *net, SimEvent *ev_out)
{
  refill(net);
  if (net->near.len == 0)
    return FALSE;
  guint32 slot = (guint32)(net->near.keys[0].order & SLOT_MASK);
  heap_pop(&net->near);
  *ev_out = body(net, slot)->ev;
  g_array_append_val(net->free_slots, slot);
  return TRUE;
}

gboolean
sim_net_peek_delivery(SimNet *net, guint *node_out, const char **data_out, gsize *len_out)
{
  refill(net);
  if (net->near.len == 0)
    return FALSE;
  const SimEvent *ev = &body(net, (guint32)(net->near.keys[0].order & SLOT_MASK))->ev;
  if (ev->kind != SIM_NET_EV_DELIVER)
    return FALSE;
  const Chunk *c = (const Chunk *)(gsize)ev->b;
  *node_out = ev->node;
  *data_out = c->data;
  *len_out = c->len;
  return TRUE;
}

/* ---- Links ------------------------------------------------------------------------------------ */

static gboolean
blocked(const SimNet *net, guint x, guint y)
{
  guint64 bx = G_GUINT64_CONSTANT(1) << x, by = G_GUINT64_CONSTANT(1) << y;
  for (guint g = 0; g < net->n_groups; g++) {
    gboolean in_x = (net->groups[g] & bx) != 0, in_y = (net->groups[g] & by) != 0;
    if (in_x || in_y)
      return in_x != in_y;
  }
  return FALSE; /* nodes in no group talk to everyone not in a group */
}

static gint64
latency(SimNet *net, guint from, guint to)
{
  gint64 l = sim_dist_sample(&net->latency, &net->rng) + net->link_delay_us[from][to];
  if (net->link_loss[from][to] > 0 && usher_rng_below(&net->rng, 100) < net->link_loss[from][to])
    l += SIM_NET_LOSS_RETRANSMIT_US;
  return MAX(l, 1);
}

static void
push_link_event(SimNet *net, gint64 t, guint kind, Link *l, guint side, guint64 b)
{
  SimEvent ev = {.t = t, .kind = kind, .node = l->node[side], .incarnation = l->incarnation[side],
                 .a = side, .b = b, .p = l};
  sim_net_schedule(net, ev);
}

/* Tells `side` that the connection closed, after anything already in flight to it. */
static void
schedule_close(SimNet *net, Link *l, guint side, const char *reason)
{
  /* Not inside MAX(): it evaluates its arguments twice, and a second latency() draw could put
   * the close before bytes still in flight (TCP delivers them first). */
  gint64 t = NOW(net) + latency(net, l->node[1 - side], l->node[side]);
  t = MAX(t, l->last_delivery_us[side]);
  push_link_event(net, t, SIM_NET_EV_CLOSE, l, side, (guint64)(gsize)reason);
}

static void
schedule_accept(SimNet *net, Link *l)
{
  NetNode *peer = &net->nodes[l->node[1]];
  SimEvent ev = {.t = NOW(net) + latency(net, l->node[0], l->node[1]),
                 .kind = SIM_NET_EV_ACCEPT, .node = l->node[1], .incarnation = peer->incarnation,
                 .p = l};
  sim_net_schedule(net, ev);
}

/* Bytes written on `side` and not yet transmitted: held by a partition, or waiting for the
 * bandwidth. */
static guint64
queued(const SimNet *net, const Link *l, guint side)
{
  guint64 q = l->held_bytes[side];
  if (net->bandwidth > 0 && l->tx_end_us[side] > NOW(net))
    q += ((guint64)(l->tx_end_us[side] - NOW(net)) * net->bandwidth + 999999) / 1000000;
  return q;
}

/* Makes sure a progress report is pending while `side` has bytes in transmission: when the
 * queue drains to USHER_OUTPUT_RESUME_BYTES (if it is above), else when it is empty. */
static void
arm_report(SimNet *net, Link *l, guint side)
{
  if (net->bandwidth == 0 || l->tx_end_us[side] <= NOW(net) || l->report_us[side] != 0)
    return;
  gint64 resume_us = l->tx_end_us[side] -
                     (gint64)((guint64)USHER_OUTPUT_RESUME_BYTES * 1000000 / net->bandwidth);
  gint64 t = resume_us > NOW(net) ? resume_us : l->tx_end_us[side];
  l->report_us[side] = t;
  push_link_event(net, t, SIM_NET_EV_TX, l, side, 0);
}

/* A write from `from` goes on the wire: after the bytes queued before it have been transmitted,
 * it takes len / bandwidth, and arrives a latency later (never before the previous write). */
static void
transmit(SimNet *net, Link *l, guint from, const char *data, gsize len)
{
  guint to = 1 - from;
  gint64 t = NOW(net) + latency(net, l->node[from], l->node[to]);
  if (net->bandwidth > 0) {
    gint64 start = MAX(NOW(net), l->tx_end_us[from]);
    l->tx_end_us[from] =
      start + (gint64)(((guint64)len * 1000000 + net->bandwidth - 1) / net->bandwidth);
    t += l->tx_end_us[from] - NOW(net);
  }
  t = MAX(t, l->last_delivery_us[to]); /* TCP keeps the order */
  l->last_delivery_us[to] = t;
  push_link_event(net, t, SIM_NET_EV_DELIVER, l, to, (guint64)(gsize)chunk_new(data, len));
  arm_report(net, l, from);
}

static Link *
link_of(const SimNet *net, guint node, UsherConnId conn, guint *side_out)
{
  g_assert(node < SIM_NET_MAX_NODES);
  Link *l = g_hash_table_lookup(net->nodes[node].conns, GUINT_TO_POINTER(conn));
  if (l != NULL && side_out != NULL)
    *side_out = l->node[0] == node && l->conn[0] == conn ? 0 : 1;
  return l;
}

void
sim_net_connect(SimNet *net, guint node, UsherConnId conn, guint peer)
{
  Link *l = g_new0(Link, 1);
  l->node[0] = node;
  l->conn[0] = conn;
  l->incarnation[0] = net->nodes[node].incarnation;
  l->open[0] = TRUE;
  g_ptr_array_add(net->links, l);
  g_hash_table_insert(net->nodes[node].conns, GUINT_TO_POINTER(conn), l);
  if (peer == G_MAXUINT || !net->nodes[peer].up ||
      (net->reset_partition && blocked(net, node, peer))) {
    l->node[1] = node;
    schedule_close(net, l, 0, "connection refused");
  } else if (blocked(net, node, peer)) {
    l->node[1] = peer;
    l->syn_pending = TRUE; /* the SYN is lost until the partition heals; TCP retries it */
  } else {
    l->node[1] = peer;
    schedule_accept(net, l);
  }
}

gboolean
sim_net_send(SimNet *net, guint node, UsherConnId conn, const char *data, gsize len,
             gsize *queued_out)
{
  guint from;
  Link *l = link_of(net, node, conn, &from);
  *queued_out = 0;
  if (l == NULL || !l->open[from] || !l->open[1 - from] || l->overflow[from])
    return FALSE;
  guint64 before = queued(net, l, from);
  /* What stays queued after this write: an unlimited link takes it at once. */
  guint64 after = l->clogged || net->bandwidth > 0 ? before + len : 0;
  if (net->output_limit > 0 && after > net->output_limit) {
    /* The driver closes a connection whose output buffer would overflow, as Dovecot's director
     * does: the director hears it at once, the peer after what is already on its way. */
    l->overflow[from] = TRUE;
    net->stats.output_overflows++;
    push_link_event(net, NOW(net), SIM_NET_EV_CLOSE, l, from, (guint64)(gsize) "output buffer full");
    if (l->conn[1 - from] != 0 && !l->clogged)
      schedule_close(net, l, 1 - from, "connection reset by peer");
    *queued_out = before;
    return FALSE;
  }
  if (l->clogged) {
    g_queue_push_tail(&l->clogged_data[from], chunk_new(data, len));
    l->held_bytes[from] += len;
  } else {
    transmit(net, l, from, data, len);
  }
  *queued_out = queued(net, l, from);
  net->stats.peak_queued = MAX(net->stats.peak_queued, *queued_out);
  return TRUE;
}

void
sim_net_disconnect(SimNet *net, guint node, UsherConnId conn)
{
  guint side;
  Link *l = link_of(net, node, conn, &side);
  if (l == NULL)
    return;
  g_hash_table_remove(net->nodes[node].conns, GUINT_TO_POINTER(conn));
  l->open[side] = FALSE;
  if (l->open[1 - side] && l->conn[1 - side] != 0 && !l->clogged)
    schedule_close(net, l, 1 - side, "closed by peer");
}

guint
sim_net_peer(const SimNet *net, guint node, UsherConnId conn)
{
  guint side;
  Link *l = link_of(net, node, conn, &side);
  return l != NULL ? l->node[1 - side] : G_MAXUINT;
}

/* ---- Nodes ------------------------------------------------------------------------------------- */

void
sim_net_node_up(SimNet *net, guint node, guint incarnation)
{
  g_assert(node < SIM_NET_MAX_NODES);
  net->nodes[node].up = TRUE;
  net->nodes[node].incarnation = incarnation;
}

void
sim_net_node_down(SimNet *net, guint node)
{
  NetNode *n = &net->nodes[node];
  if (!n->up)
    return;
  for (guint k = 0; k < net->links->len; k++) {
    Link *l = g_ptr_array_index(net->links, k);
    for (guint s = 0; s < 2; s++) {
      if (l->node[s] != node || !l->open[s] || l->incarnation[s] != n->incarnation)
        continue;
      l->open[s] = FALSE;
      if (l->open[1 - s] && l->conn[1 - s] != 0)
        schedule_close(net, l, 1 - s, "connection reset by peer");
    }
  }
  g_hash_table_remove_all(n->conns);
  n->up = FALSE;
}

/* ---- Faults ------------------------------------------------------------------------------------ */

void
sim_net_partition(SimNet *net, const guint64 *groups, guint n_groups, gboolean reset)
{
  net->n_groups = MIN(n_groups, G_N_ELEMENTS(net->groups));
  for (guint g = 0; g < net->n_groups; g++)
    net->groups[g] = groups[g];
  net->reset_partition = reset;
  for (guint k = 0; k < net->links->len; k++) {
    Link *l = g_ptr_array_index(net->links, k);
    if (!(l->open[0] || l->open[1]) || !blocked(net, l->node[0], l->node[1]))
      continue;
    if (!reset) {
      /* A hung network, not a reset: the directors notice through their PING timeouts. */
      l->clogged = TRUE;
      continue;
    }
    for (guint s = 0; s < 2; s++)
      if (l->open[s] && l->conn[s] != 0)
        push_link_event(net, NOW(net), SIM_NET_EV_CLOSE, l, s,
                        (guint64)(gsize) "connection reset (partition)");
  }
}

gboolean
sim_net_partitioned(const SimNet *net)
{
  return net->n_groups > 0;
}

void
sim_net_heal(SimNet *net)
{
  net->n_groups = 0;
  net->reset_partition = FALSE;
  for (guint k = 0; k < net->links->len; k++) {
    Link *l = g_ptr_array_index(net->links, k);
    if (l->syn_pending) {
      l->syn_pending = FALSE;
      if (l->open[0] && net->nodes[l->node[1]].up)
        schedule_accept(net, l);
    }
    if (!l->clogged)
      continue;
    l->clogged = FALSE;
    for (guint s = 0; s < 2; s++) {
      gboolean held = l->held_bytes[s] > 0;
      Chunk *c;
      while ((c = g_queue_pop_head(&l->clogged_data[s])) != NULL) {
        if (l->open[s] && l->open[1 - s])
          transmit(net, l, s, c->data, c->len);
        g_free(c);
      }
      l->held_bytes[s] = 0;
      if (!l->open[s] && l->open[1 - s] && l->conn[1 - s] != 0)
        schedule_close(net, l, 1 - s, "closed while partitioned");
      if (held && l->open[s] && l->conn[s] != 0)
        push_link_event(net, NOW(net), SIM_NET_EV_TX, l, s, 0); /* the held bytes are moving */
    }
  }
}

void
sim_net_reset_links(SimNet *net, guint a, guint b)
{
  for (guint k = 0; k < net->links->len; k++) {
    Link *l = g_ptr_array_index(net->links, k);
    if (!((l->node[0] == a && l->node[1] == b) || (l->node[0] == b && l->node[1] == a)))
      continue;
    for (guint s = 0; s < 2; s++)
      if (l->open[s] && l->conn[s] != 0)
        schedule_close(net, l, s, "connection reset");
  }
}

/* ---- Processing -------------------------------------------------------------------------------- */

static void
process_accept(SimNet *net, SimEvent *ev)
{
  Link *l = ev->p;
  gboolean cut = blocked(net, l->node[0], l->node[1]);
  if (!l->open[0])
    return;
  if (cut && !net->reset_partition) {
    l->syn_pending = TRUE; /* the partition came while the SYN was on its way */
    return;
  }
  if (cut) {
    schedule_close(net, l, 0, "connection refused");
    return;
  }
  /* The dialler learns it is connected before any byte of the acceptor arrives. */
  gint64 t = NOW(net) + latency(net, l->node[1], l->node[0]);
  push_link_event(net, t, SIM_NET_EV_CONNECTED, l, 0, 0);
  l->last_delivery_us[0] = t;
  UsherConnId id = net->cb.accept(net->user, ev->node, l->node[0]);
  if (id == USHER_CONN_ID_NONE) {
    net->cb.drain(net->user, ev->node);
    schedule_close(net, l, 0, "connection refused by peer");
    return;
  }
  l->conn[1] = id;
  l->incarnation[1] = ev->incarnation;
  l->open[1] = TRUE;
  g_hash_table_insert(net->nodes[ev->node].conns, GUINT_TO_POINTER(id), l);
  net->cb.drain(net->user, ev->node);
}

gboolean
sim_net_process(SimNet *net, SimEvent *ev)
{
  if (ev->kind >= SIM_NET_EV_DRIVER)
    return FALSE;
  NetNode *n = &net->nodes[ev->node];
  if (!n->up || n->incarnation != ev->incarnation) {
    if (ev->kind == SIM_NET_EV_DELIVER)
      g_free((Chunk *)(gsize)ev->b);
    return TRUE;
  }
  Link *l = ev->p;
  guint side = (guint)ev->a;
  switch (ev->kind) {
  case SIM_NET_EV_ACCEPT:
    process_accept(net, ev);
    break;
  case SIM_NET_EV_CONNECTED:
    if (!l->open[0])
      break;
    net->cb.connected(net->user, ev->node, l->conn[0]);
    net->cb.drain(net->user, ev->node);
    break;
  case SIM_NET_EV_DELIVER: {
    Chunk *c = (Chunk *)(gsize)ev->b;
    if (l->open[side] && l->conn[side] != 0) {
      net->cb.bytes(net->user, ev->node, l->conn[side], c->data, c->len);
      net->cb.drain(net->user, ev->node);
    }
    g_free(c);
    break;
  }
  case SIM_NET_EV_TX:
    if (l->report_us[side] == ev->t)
      l->report_us[side] = 0;
    if (!l->open[side] || l->conn[side] == 0 || l->overflow[side])
      break;
    net->cb.output_queued(net->user, ev->node, l->conn[side], queued(net, l, side));
    net->cb.drain(net->user, ev->node);
    arm_report(net, l, side);
    break;
  case SIM_NET_EV_CLOSE:
    if (!l->open[side])
      break;
    l->open[side] = FALSE;
    if (l->conn[side] != 0) {
      g_hash_table_remove(n->conns, GUINT_TO_POINTER(l->conn[side]));
      net->cb.closed(net->user, ev->node, l->conn[side], (const char *)(gsize)ev->b);
      net->cb.drain(net->user, ev->node);
    }
    break;
  }
  return TRUE;
}

/* ---- Life cycle -------------------------------------------------------------------------------- */

SimNet *
sim_net_new(const gint64 *clock_us, guint64 rng_seed, const SimNetCallbacks *callbacks,
            gpointer user)
{
  SimNet *net = g_new0(SimNet, 1);
  net->clock_us = clock_us;
  net->cb = *callbacks;
  net->user = user;
  usher_rng_seed(&net->rng, rng_seed);
  net->latency = (SimDist){SIM_DIST_FIXED, 500, 500};
  net->bodies = g_array_new(FALSE, FALSE, sizeof(Body));
  net->buckets = g_new0(guint32, CAL_BUCKETS);
  net->free_slots = g_array_new(FALSE, FALSE, sizeof(guint32));
  net->links = g_ptr_array_new();
  for (guint i = 0; i < SIM_NET_MAX_NODES; i++)
    net->nodes[i].conns = g_hash_table_new(NULL, NULL);
  return net;
}

void
sim_net_free(SimNet *net)
{
  if (net == NULL)
    return;
  /* What is still pending: every body not on the free list. */
  guint8 *is_free = g_new0(guint8, net->bodies->len);
  for (guint i = 0; i < net->free_slots->len; i++)
    is_free[g_array_index(net->free_slots, guint32, i)] = 1;
  for (guint32 slot = 0; slot < net->bodies->len; slot++) {
    SimEvent *ev = &body(net, slot)->ev;
    if (is_free[slot])
      continue;
    if (ev->kind == SIM_NET_EV_DELIVER)
      g_free((Chunk *)(gsize)ev->b);
    else if (ev->kind >= SIM_NET_EV_DRIVER && net->cb.discard != NULL)
      net->cb.discard(net->user, ev);
  }
  g_free(is_free);
  heap_clear(&net->near);
  heap_clear(&net->overflow);
  g_free(net->buckets);
  g_array_unref(net->bodies);
  g_array_unref(net->free_slots);
  for (guint i = 0; i < net->links->len; i++) {
    Link *l = g_ptr_array_index(net->links, i);
    for (guint s = 0; s < 2; s++)
      g_queue_clear_full(&l->clogged_data[s], g_free);
    g_free(l);
  }
  g_ptr_array_unref(net->links);
  for (guint i = 0; i < SIM_NET_MAX_NODES; i++)
    g_hash_table_unref(net->nodes[i].conns);
  g_free(net);
}

void
sim_net_set_latency(SimNet *net, const SimDist *latency)
{
  net->latency = *latency;
}

void
sim_net_set_bandwidth(SimNet *net, guint64 bytes_per_sec)
{
  net->bandwidth = bytes_per_sec;
}

void
sim_net_set_output_limit(SimNet *net, guint64 bytes)
{
  net->output_limit = bytes;
}

const SimNetStats *
sim_net_get_stats(const SimNet *net)
{
  return &net->stats;
}

void
sim_net_set_link_delay(SimNet *net, guint a, guint b, gint64 delay_us)
{
  net->link_delay_us[a][b] = net->link_delay_us[b][a] = delay_us;
}

void
sim_net_set_link_loss(SimNet *net, guint a, guint b, guint percent)
{
  net->link_loss[a][b] = net->link_loss[b][a] = percent;
}

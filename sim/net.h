/* net.h - the simulated network that ushersim and the core's ring harness drive directors over:
 * one event queue in virtual time and the TCP links between nodes.
 *
 * Driver-side code (it is no part of libcore): the network knows nodes by index, connections by
 * the director's UsherConnId, and hands what arrives back to the driver through callbacks, which
 * call the director and drain its effects.
 *
 * The event queue orders events by (time, sequence), so events at the same time run in the order
 * they were scheduled. The network's own events (deliveries, accepts, closes...) and the driver's
 * share it: the driver pops every event and passes it to sim_net_process(), which handles the
 * network's and returns FALSE for the driver's (kinds from SIM_NET_EV_DRIVER up).
 *
 * Links deliver each direction in order after a sampled latency (plus a per-pair extra delay and
 * retransmission loss). With a bandwidth, each direction is a transmit queue: a write finishes
 * transmitting at max(now, the previous write's end) + len / bandwidth and arrives a latency
 * later. The bytes a side has written and not yet transmitted (still in the queue, or held by a
 * partition) are its queued output: the driver reports them to the director after every write
 * (sim_net_send()), and the network reports them again as the queue drains (when it falls to
 * USHER_OUTPUT_RESUME_BYTES and when it is empty) and when a heal releases held bytes. A write
 * that would take the queued output above the output limit closes the connection instead
 * ("output buffer full"), as the daemon does. Partitions either hang links (bytes are held until the heal, a SYN into
 * the partition is retried like TCP does) or reset them. A node that goes down resets its links.
 *
 * Deterministic: randomness comes only from the generator the driver seeds (sim_net_new()), and
 * only latency draws use it.
 */
#pragma once

#include "libcore/director.h"
#include "libcore/rng.h"
#include "sim/dist.h"

G_BEGIN_DECLS

#define SIM_NET_MAX_NODES 64
/* Extra latency of a delivery that needs a retransmission (link loss). */
#define SIM_NET_LOSS_RETRANSMIT_US 200000

typedef struct SimNet SimNet;

/* The network's event kinds; a driver numbers its own from SIM_NET_EV_DRIVER. */
enum {
  SIM_NET_EV_DELIVER = 0,
  SIM_NET_EV_ACCEPT,
  SIM_NET_EV_CONNECTED,
  SIM_NET_EV_CLOSE,
  SIM_NET_EV_TX, /* transmission progressed: report the queued output */
  SIM_NET_EV_DRIVER = 16,
};

typedef struct {
  gint64 t;
  guint64 seq;  /* set by sim_net_schedule() */
  guint kind;
  guint node;
  guint incarnation;
  guint64 a;
  guint64 b;
  gpointer p;
} SimEvent;

/* What the network does to the directors. Each callback (but drain and discard) calls the node's
 * director; the network then calls drain so the driver handles the effects. The callbacks may
 * call back into the network (sim_net_send() and so on). */
typedef struct {
  /* A connection from node `from` arrives at node: usher_director_peer_accepted(). */
  UsherConnId (*accept)(gpointer user, guint node, guint from);
  void (*connected)(gpointer user, guint node, UsherConnId conn);
  void (*bytes)(gpointer user, guint node, UsherConnId conn, const char *data, gsize len);
  void (*closed)(gpointer user, guint node, UsherConnId conn, const char *reason);
  /* usher_director_peer_output_queued() */
  void (*output_queued)(gpointer user, guint node, UsherConnId conn, gsize queued_bytes);
  void (*drain)(gpointer user, guint node);
  /* sim_net_free() found a driver event still pending: free what it owns (may be NULL). */
  void (*discard)(gpointer user, SimEvent *ev);
} SimNetCallbacks;

/* clock_us: the driver's virtual clock, read at every call (never decreasing). rng_seed seeds
 * the latency draws. Latency defaults to a fixed 500 us. */
SimNet *sim_net_new(const gint64 *clock_us, guint64 rng_seed, const SimNetCallbacks *callbacks,
                    gpointer user);
void sim_net_free(SimNet *net);

/* ---- Event queue ---------------------------------------------------------------------------- */

/* Schedules ev (its seq is assigned here). */
void sim_net_schedule(SimNet *net, SimEvent ev);
/* The time of the earliest pending event, or G_MAXINT64 (may reorganise the queue). */
gint64 sim_net_next_time(SimNet *net);
guint sim_net_pending(const SimNet *net);
/* Takes the earliest event; FALSE if none is pending. */
gboolean sim_net_pop(SimNet *net, SimEvent *ev_out);
/* If the earliest pending event delivers bytes to a node, that node and the bytes (for
 * usher_director_prefetch_bytes()); FALSE otherwise. */
gboolean sim_net_peek_delivery(SimNet *net, guint *node_out, const char **data_out,
                               gsize *len_out);
/* Handles ev if it is the network's (TRUE); FALSE: a driver event, untouched. */
gboolean sim_net_process(SimNet *net, SimEvent *ev);

/* ---- Configuration ------------------------------------------------------------------------- */

void sim_net_set_latency(SimNet *net, const SimDist *latency);
/* Bytes per second per link and direction; 0 (the default): unlimited. */
void sim_net_set_bandwidth(SimNet *net, guint64 bytes_per_sec);
/* The most output one side of a connection may have queued (the director's
 * output_buffer_size); 0 (the default): unlimited. */
void sim_net_set_output_limit(SimNet *net, guint64 bytes);
/* Extra one-way delay and retransmission loss (percent) between two nodes, both directions. */
void sim_net_set_link_delay(SimNet *net, guint a, guint b, gint64 delay_us);
void sim_net_set_link_loss(SimNet *net, guint a, guint b, guint percent);

/* ---- Nodes ---------------------------------------------------------------------------------- */

/* The node accepts connections again; incarnation tells its events from a former life's. */
void sim_net_node_up(SimNet *net, guint node, guint incarnation);
/* The node is gone (crash): its links are reset, the peers see them close. */
void sim_net_node_down(SimNet *net, guint node);

/* ---- Effects of a director ------------------------------------------------------------------ */

/* CONNECT from node (conn) to peer (G_MAXUINT: nobody listens at that address). */
void sim_net_connect(SimNet *net, guint node, UsherConnId conn, guint peer);
/* SEND: TRUE if the bytes went onto an open link (both ends open). *queued_out is what the
 * driver reports to the director now (usher_director_peer_output_queued()): the connection's
 * queued output, 0 if it has no link. A write that would overflow the output limit is not sent
 * (FALSE): the connection closes, the director hears it at once ("output buffer full"). */
gboolean sim_net_send(SimNet *net, guint node, UsherConnId conn, const char *data, gsize len,
                      gsize *queued_out);
/* DISCONNECT: the peer sees the close after the bytes already sent. */
void sim_net_disconnect(SimNet *net, guint node, UsherConnId conn);
/* The node at the other end of a connection, or G_MAXUINT. */
guint sim_net_peer(const SimNet *net, guint node, UsherConnId conn);

/* ---- Faults --------------------------------------------------------------------------------- */

/* Nodes in different groups (bit masks) stop hearing each other; a node in no group talks to
 * every node in no group. reset FALSE: links between the groups hang (data is held until the
 * heal, connects wait); TRUE: they are reset at once and connects are refused. */
void sim_net_partition(SimNet *net, const guint64 *groups, guint n_groups, gboolean reset);
gboolean sim_net_partitioned(const SimNet *net);
/* Ends the partition: held data flows, held connects go through. */
void sim_net_heal(SimNet *net);
/* Resets the connections between two nodes. */
void sim_net_reset_links(SimNet *net, guint a, guint b);

typedef struct {
  guint64 output_overflows; /* connections closed for a full output buffer */
  guint64 peak_queued;      /* the most output one side had queued after a write */
} SimNetStats;

const SimNetStats *sim_net_get_stats(const SimNet *net);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(SimNet, sim_net_free)

G_END_DECLS

/* ring-harness.h - N real directors wired through the simulator's network (sim/net.h) with a
 * virtual clock.
 *
 * Deterministic: one event queue ordered by (time, sequence); no real clock, no sockets. Links
 * deliver bytes in order with a fixed latency. Nodes can crash and restart, links can be cut
 * (reset) or partitioned (holding traffic until the heal, as a hung network does).
 */
#pragma once

#include "libcore/director.h"

typedef struct Harness Harness;

typedef struct {
  guint64 request;
  UsherLoginStatus status;
  char host[USHER_IP_STRLEN];
  gboolean answered;
  gint64 answered_us;
} HarnessLogin;

/* n directors at 127.0.1.1.. port 9090, backends from the backends list grammar. */
Harness *harness_new(guint n, const char *backends, const char *extra_config);
void harness_free(Harness *h);

UsherDirector *harness_node(Harness *h, guint i);
gint64 harness_now_us(Harness *h);
UsherNow harness_now(Harness *h);
void harness_set_latency_us(Harness *h, gint64 latency_us);
/* Bytes per second per link and direction (0, the default: unlimited). Writes queue behind each
 * other, and the directors hear how much output is still queued (sim/net.h). */
void harness_set_bandwidth(Harness *h, guint64 bytes_per_sec);
/* Every byte any node sends, as "<node>><peer node>: line" text, when recording is on. */
void harness_record(Harness *h, gboolean on);
GString *harness_transcript(Harness *h);
guint harness_count_warnings(Harness *h);

void harness_start_all(Harness *h);
void harness_start(Harness *h, guint i);
/* Runs the event loop for this much virtual time. */
void harness_run(Harness *h, gint64 duration_us);
/* Runs until every started node is handshaked and synced, up to max_us; TRUE if reached. */
gboolean harness_run_until_synced(Harness *h, gint64 max_us);

/* A login through node i; the answer is looked up with harness_login_result(). */
guint64 harness_login(Harness *h, guint i, const char *username, const char *tag);
const HarnessLogin *harness_login_result(Harness *h, guint64 request);
/* A login through node i that must succeed within 100 ms of virtual time: the backend's IP. */
const char *harness_login_now(Harness *h, guint i, const char *username);

/* Crash (state lost, links reset) and restart with a fresh director. */
void harness_crash(Harness *h, guint i);
void harness_restart(Harness *h, guint i);
/* Partition: nodes in group A cannot reach nodes in group B (bit masks; a node in neither group
 * reaches only other nodes in neither). Existing links between them hang, holding their traffic
 * until the heal, and connects wait (reset = FALSE), or they are reset and connects are refused
 * (reset = TRUE). heal() undoes all. */
void harness_partition(Harness *h, guint64 group_a, guint64 group_b, gboolean reset);
void harness_heal(Harness *h);

/* Every started node has the same hosts and users (usher_director_state_fingerprint). */
gboolean harness_converged(Harness *h);
/* The backend node i has for a user hash in the untagged directory, or NULL. */
const char *harness_user_host(Harness *h, guint i, const char *username);
/* Ring order check: node i's right is the next started node (wrapping). */
gboolean harness_ring_formed(Harness *h);
guint64 harness_kicks(Harness *h, guint i);

/* Admin operations: a fresh op id, and the reply text (without "\n") once it came, else NULL. */
guint64 harness_new_op(Harness *h);
const char *harness_admin_reply(Harness *h, guint64 op);
/* After an admin call made directly on harness_node(h, i): handle its effects. */
void harness_drain(Harness *h, guint i);
UsherIp harness_ip(const char *text);
/* Health probes of backend ip fail from the nodes in node_mask (0: it is healthy again); every
 * other probe succeeds. */
void harness_set_backend_failing(Harness *h, const char *ip, guint64 node_mask);

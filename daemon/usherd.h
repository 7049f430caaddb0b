/* usherd.h - the director daemon's parts and how they meet.
 *
 * One thread, "the core thread", owns the UsherDirector and runs a GMainContext: every call into
 * the director happens there, followed by usherd_core_after_call(), which hands the effects to
 * the ring links, the admin clients, the flush hooks and the log, and re-arms the one timer from
 * usher_director_next_deadline(). The ring and admin sockets are few and slow, so they live on
 * the same context as plain GSocket sources.
 *
 *   main.c       options, configuration, signals, start and stop order
 *   core.c       the director, its clock, its timer and the effect dispatch
 *   ring-link.c  TCP links to the peer directors (listener, dialling, output queues)
 *   admin.c      the director-admin socket (doveadm director, usherctl)
 *   flush.c      the flush hook (director_flush_socket) of moves this director starts
 *   state.c      what survives a restart (the user directory snapshot)
 */
#pragma once

#include "common/driver.h"
#include "libcore/admin-proto.h"
#include "libcore/config.h"
#include "libcore/director.h"

#include <gio/gio.h>

G_BEGIN_DECLS

#define G_LOG_DOMAIN_USHERD "usherd"

/* Daemon counters beyond the director's own (UsherDirectorStats). */
typedef struct {
  guint64 ring_refused;          /* ring connections from addresses outside the ring */
  guint64 ring_output_overflows; /* links dropped: output queue over output_buffer_size */
  guint64 ring_connect_failures; /* outgoing connects that failed or timed out */
  guint64 ring_bytes_in, ring_bytes_out;
  guint64 admin_clients;        /* accepted */
  guint64 admin_refused;        /* over admin_max_clients */
  guint64 admin_protocol_errors;/* closed for a bad VERSION, bad command or overlong line */
  guint64 admin_overflows;      /* closed: too many queued commands or too much unread output */
  guint64 admin_commands;
  guint64 flushes_run, flushes_failed;
} UsherdStats;

typedef struct _Usherd Usherd;
typedef struct _RingLinks RingLinks;
typedef struct _AdminServer AdminServer;

struct _Usherd {
  UsherConfig *config;
  char *config_path;
  UsherRingAddr self;
  UsherDirector *director;
  GMainContext *context;
  GMainLoop *loop;
  GSource *timer;
  gint64 started_wall_us;
  RingLinks *ring;
  AdminServer *admin;
  GHashTable *flushes; /* flush id -> running hook (flush.c) */
  GSource *snapshot_timer;
  UsherdStats stats;
  gboolean stopping;
};

/* core.c */
UsherNow usherd_now(void);
gboolean usherd_core_init(Usherd *u, GError **error);
void usherd_core_start(Usherd *u);
/* After every call into u->director: dispatch the effects, re-arm the timer. */
void usherd_core_after_call(Usherd *u);
void usherd_core_free(Usherd *u);

/* ring-link.c */
RingLinks *ring_links_new(Usherd *u, GError **error);
void ring_links_free(RingLinks *r);
void ring_links_send(RingLinks *r, UsherConnId conn, const char *data, gsize len);
void ring_links_connect(RingLinks *r, UsherConnId conn, const UsherRingAddr *addr);
void ring_links_disconnect(RingLinks *r, UsherConnId conn);

/* admin.c */
AdminServer *admin_server_new(Usherd *u, GError **error);
void admin_server_free(AdminServer *a);
void admin_server_reply(AdminServer *a, guint64 op, const char *text);

/* flush.c */
void flush_hook_start(Usherd *u, const UsherEffect *e);
void flush_hooks_free(Usherd *u);

/* state.c */
gboolean usherd_write_file_atomic(const char *path, const char *data, gsize len, GError **error);
void usherd_state_load_users(Usherd *u);
gboolean usherd_state_save_users(Usherd *u, GError **error);
void usherd_state_start(Usherd *u);
void usherd_state_stop(Usherd *u);

/* Helpers */
gboolean usherd_ip_from_gaddress(GSocketAddress *address, UsherIp *ip_out);
GSocketAddress *usherd_gaddress_from_ip(const UsherIp *ip, guint16 port);

G_END_DECLS

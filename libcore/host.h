/* host.h - the backend (mail host) table, its tags, and placement.
 *
 * The table owns every host and one UsherTag per distinct tag name ("" is the default tag). Each
 * tag owns its vhost ring and its user directory. Hosts are kept sorted by IP (Dovecot's order),
 * and the rings are rebuilt lazily, on the first placement after any change that affects them.
 */
#pragma once

#include "libcore/user-dir.h"

G_BEGIN_DECLS

#define USHER_VHOST_DEFAULT 100
#define USHER_VHOST_MAX_ADMIN 1000 /* the highest vhost count an operator may set */
#define USHER_VHOST_MAX_RING 100000 /* ... and a peer may announce (more: it is lying) */
#define USHER_HOSTS_MAX 4096       /* hard cap on backends in one table */
#define USHER_TAGS_MAX 1024        /* hard cap on tags ever created in one table */
#define USHER_TAG_MAX_LEN 255
#define USHER_HOSTNAME_MAX_LEN 255

typedef struct UsherTag UsherTag;

typedef struct {
  UsherHostId id; /* stable while the host exists */
  UsherIp ip;
  char ip_str[USHER_IP_STRLEN];
  char *hostname; /* NULL when not known */
  UsherTag *tag;
  guint vhost_count;
  gboolean down;
  gint64 last_updown_change; /* UNIX seconds; 0 = never */
  guint user_count;          /* users in the tag's directory that point here */
  gboolean desynced;         /* changed locally since the last completed ring sync */
} UsherHost;

struct UsherTag {
  char *name;
  UsherVhostRing *ring;
  UsherUserDir *users;
  gboolean ring_dirty;
};

UsherHostTable *usher_host_table_new(guint user_expire_secs);
void usher_host_table_free(UsherHostTable *table);

guint usher_host_table_get_user_expire_secs(const UsherHostTable *table);

/* NULL (and no change) if the IP exists already, the table is full, or the tag is new and
 * USHER_TAGS_MAX tags exist. tag may be NULL for "". */
UsherHost *usher_host_table_add(UsherHostTable *table, const UsherIp *ip, const char *tag,
                                guint vhost_count, const char *hostname);
UsherHost *usher_host_table_lookup(UsherHostTable *table, const UsherIp *ip);
UsherHost *usher_host_table_get(UsherHostTable *table, UsherHostId id);

void usher_host_table_set_vhost_count(UsherHostTable *table, UsherHost *host, guint vhost_count);
/* change_time: UNIX seconds of the change, recorded only when the state changes (as Dovecot). */
void usher_host_table_set_down(UsherHostTable *table, UsherHost *host, gboolean down,
                               gint64 change_time);
/* Changing the tag drops every user assigned to the host (Dovecot does the same). FALSE (and no
 * change) if the tag is new and USHER_TAGS_MAX tags exist. */
gboolean usher_host_table_set_tag(UsherHostTable *table, UsherHost *host, const char *tag);
void usher_host_table_set_hostname(UsherHostTable *table, UsherHost *host, const char *hostname);
/* Drops the host's users (no kick); returns how many. */
guint usher_host_table_flush(UsherHostTable *table, UsherHost *host);
/* Removes the host and drops its users. host is freed. */
void usher_host_table_remove(UsherHostTable *table, UsherHost *host);

/* Hosts in IP order. */
guint usher_host_table_n_hosts(const UsherHostTable *table);
UsherHost *usher_host_table_nth(const UsherHostTable *table, guint idx);

/* Tags in name order ("" first). _find returns NULL for an unknown tag; _ensure creates it
 * (NULL if USHER_TAGS_MAX tags exist). Tags live as long as the table. */
guint usher_host_table_n_tags(const UsherHostTable *table);
UsherTag *usher_host_table_nth_tag(const UsherHostTable *table, guint idx);
UsherTag *usher_host_table_find_tag(UsherHostTable *table, const char *name);
UsherTag *usher_host_table_ensure_tag(UsherHostTable *table, const char *name);

/* The host the vhost ring gives this user hash in this tag, or NULL when the tag has no usable
 * host. Rebuilds the tag's ring first if it is stale. */
UsherHost *usher_tag_place(UsherHostTable *table, UsherTag *tag, guint32 user_hash);
/* The tag's ring, rebuilt if stale. */
const UsherVhostRing *usher_tag_get_ring(UsherHostTable *table, UsherTag *tag);
/* Read-only placement: the same answer as usher_tag_place() without changing anything (a stale
 * ring is rebuilt into a temporary copy). */
const UsherHost *usher_tag_place_readonly(const UsherHostTable *table, const UsherTag *tag,
                                          guint32 user_hash);
const UsherHost *usher_host_table_get_const(const UsherHostTable *table, UsherHostId id);
const UsherHost *usher_host_table_lookup_const(const UsherHostTable *table, const UsherIp *ip);
const UsherTag *usher_host_table_find_tag_const(const UsherHostTable *table, const char *name);

/* Adds configured backends (UsherBackendConfig*, see config.h) as a freshly started director
 * does: each with its vhost count, tag, hostname and up/down state (change time 0). Fails,
 * adding nothing, if an IP is already present or the table would overflow. */
gboolean usher_host_table_add_backends(UsherHostTable *table, const GPtrArray *backends,
                                       GError **error);

/* Recounts every tag's users per host and compares with user_count; FALSE (and *why_out, a
 * newly allocated message) on the first mismatch. For tests and the simulator's invariants. */
gboolean usher_host_table_check_counts(UsherHostTable *table, char **why_out);

/* Dovecot's host-list fingerprint sent in SYNC (bit-exact with a little-endian Dovecot 2.3). */
guint32 usher_host_table_hosts_hash(const UsherHostTable *table);

/* Changes bump this counter; drivers use it to notice that anything changed. */
guint64 usher_host_table_get_generation(const UsherHostTable *table);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(UsherHostTable, usher_host_table_free)

G_END_DECLS

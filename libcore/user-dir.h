/* user-dir.h - the user directory of one tag: user hash -> backend, with expiry.
 *
 * Entries are kept in a list sorted by timestamp (oldest first); every operation keeps that order
 * exactly, so expiry only ever looks at the head. An entry lives while
 * timestamp + expire_secs > now. Time is passed in (UNIX seconds, wall clock); nothing here reads a
 * clock. Per-host user counts in the host table are kept in step with every change.
 *
 * Memory: a fixed 24-byte entry in chunked slabs (entries never move, so UsherUser pointers stay
 * valid until the entry is removed) plus an 8-byte open-addressing index slot (hash and entry
 * reference) per 1.3..2.7 users.
 */
#pragma once

#include "libcore/vhost-ring.h"

G_BEGIN_DECLS

typedef struct UsherHostTable UsherHostTable;

/* Move/kick progress of a user (see doc/architecture.md and the ring protocol doc). */
typedef enum {
  USHER_KILL_NONE = 0,
  USHER_KILL_KILLING,
  USHER_KILL_KILLING_NOTIFY_RECEIVED,
  USHER_KILL_WAITING_FOR_NOTIFY,
  USHER_KILL_WAITING_FOR_EVERYONE,
  USHER_KILL_FLUSHING,
  USHER_KILL_DELAY,
} UsherKillState;

const char *usher_kill_state_name(UsherKillState state);

typedef struct {
  guint32 hash;      /* user hash, never 0 */
  guint32 timestamp; /* UNIX seconds of the last refresh */
  UsherHostId host;
  guint8 weak;       /* being re-confirmed ring-wide */
  guint8 kill_state; /* UsherKillState */
  guint16 _pad;
  guint32 _prev, _next; /* private: list links */
} UsherUser;

typedef struct UsherUserDir UsherUserDir;

typedef struct {
  guint expired;      /* removed because timestamp + expire <= now */
  guint weak_dropped; /* expired weak entries removed after the grace period */
  guint kill_kept;    /* expired entries kept because a kill or move is still running */
} UsherExpireStats;

/* Grace for expired weak entries and retry interval for expired entries being killed. */
#define USHER_USER_WEAK_GRACE_SECS 30
#define USHER_USER_KILL_RETRY_SECS 60

UsherUserDir *usher_user_dir_new(UsherHostTable *hosts, guint expire_secs);
void usher_user_dir_free(UsherUserDir *dir);

guint usher_user_dir_count(const UsherUserDir *dir);
guint usher_user_dir_get_expire_secs(const UsherUserDir *dir);

/* Takes a const directory (a lookup changes nothing); the entry it returns may be changed. */
UsherUser *usher_user_dir_lookup(const UsherUserDir *dir, guint32 hash);
/* A hint: starts loading the memory where hash will be looked up (in a directory of millions,
 * a cache miss). Changes nothing. */
void usher_user_dir_prefetch(const UsherUserDir *dir, guint32 hash);

/* Adds a new entry (the hash must not be present). timestamp is clamped to now, as Dovecot does:
 * no entry is ever stamped in the future. */
UsherUser *usher_user_dir_add(UsherUserDir *dir, guint32 hash, UsherHostId host, gint64 timestamp,
                              gint64 now);
/* The entry for hash, or a new one as usher_user_dir_add() would make (*added_out says which):
 * one index probe instead of a lookup and an add. */
UsherUser *usher_user_dir_find_or_add(UsherUserDir *dir, guint32 hash, UsherHostId host,
                                      gint64 timestamp, gint64 now, gboolean *added_out);
/* Moves the timestamp forward to timestamp (never backwards; clamped to now). */
void usher_user_dir_refresh(UsherUserDir *dir, UsherUser *user, gint64 timestamp, gint64 now);
void usher_user_dir_set_host(UsherUserDir *dir, UsherUser *user, UsherHostId host);
void usher_user_dir_remove(UsherUserDir *dir, UsherUser *user);
/* Removes every entry on host; returns how many. */
guint usher_user_dir_remove_host(UsherUserDir *dir, UsherHostId host);
void usher_user_dir_clear(UsherUserDir *dir);

/* Dovecot's predicates: near expiring = in the last clamp(expire/10, 3, 30) seconds of life;
 * recently updated = in the first half of life. */
guint usher_user_dir_near_expiring_secs(const UsherUserDir *dir);
gboolean usher_user_dir_is_near_expiring(const UsherUserDir *dir, const UsherUser *user,
                                         gint64 now);
gboolean usher_user_dir_is_recently_updated(const UsherUserDir *dir, const UsherUser *user,
                                            gint64 now);
gboolean usher_user_dir_is_expired(const UsherUserDir *dir, const UsherUser *user, gint64 now);

/* The next time (UNIX seconds) at which usher_user_dir_expire() has work, or G_MAXINT64. */
gint64 usher_user_dir_next_deadline(const UsherUserDir *dir);
/* Drops expired entries (see UsherExpireStats). stats_out may be NULL. */
void usher_user_dir_expire(UsherUserDir *dir, gint64 now, UsherExpireStats *stats_out);

/* Entry memory is released only with the directory: an UsherUser pointer stays readable after
 * its entry is removed (its hash then reads 0, or another user's hash once the slot is reused),
 * so a holder can tell whether it still points at the same user by comparing the hash. */

/* Oldest-first iteration. The entry returned by _next stays valid; removing the current entry
 * while iterating is allowed if _next was fetched first. */
UsherUser *usher_user_dir_oldest(UsherUserDir *dir);
UsherUser *usher_user_dir_newest(UsherUserDir *dir);
UsherUser *usher_user_dir_next(UsherUserDir *dir, const UsherUser *user);

/* Storage-order iteration, for reading a large directory fast (entries in memory order, where
 * the oldest-first list visits them at random): usher_user_dir_stored(dir, i) for
 * i < usher_user_dir_n_stored(dir). An entry whose hash is 0 is free: skip it. */
guint32 usher_user_dir_n_stored(const UsherUserDir *dir);
UsherUser *usher_user_dir_stored(const UsherUserDir *dir, guint32 i);

/* Bytes held by the directory's own allocations (slabs and index). */
gsize usher_user_dir_memory_bytes(const UsherUserDir *dir);

/* Checks every internal invariant (list order, index, counts); for tests. Returns FALSE and sets
 * *why_out (static string) on the first violation. */
gboolean usher_user_dir_check(const UsherUserDir *dir, const char **why_out);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(UsherUserDir, usher_user_dir_free)

G_END_DECLS

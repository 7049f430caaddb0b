/* user-dir.c - the user directory of one tag (see user-dir.h).
 *
 * Layout: entries live in fixed-size chunks and are named by a 32-bit reference (index + 1;
 * 0 = none). An open-addressing index (linear probing, backward-shift deletion, load <= 3/4)
 * maps a user hash to its reference. A doubly linked list through the entries keeps them in
 * timestamp order, oldest first.
 */
#include "libcore/user-dir.h"

#include "libcore/host.h"

#include <string.h>

#define CHUNK_SHIFT 12
#define CHUNK_SIZE (1u << CHUNK_SHIFT)
#define CHUNK_MASK (CHUNK_SIZE - 1)
#define INDEX_MIN_SLOTS 16u
#define NIL 0u

/* An index slot holds the user hash beside the entry reference, so that probing compares hashes
 * without touching the entries: one cache miss per probe instead of two (about twice as fast
 * for handshakes and snapshots of millions of users, for 4 more bytes per slot). */
#define SLOT_REF(s) ((guint32)(s))
#define SLOT_HASH(s) ((guint32)((s) >> 32))
#define MAKE_SLOT(hash, ref) (((guint64)(hash) << 32) | (guint64)(ref))

G_STATIC_ASSERT(sizeof(UsherUser) == 24);

struct UsherUserDir {
  UsherHostTable *hosts; /* may be NULL (unit tests): then no per-host counts */
  guint expire_secs;

  UsherUser **chunks;
  guint n_chunks;
  guint32 n_used_refs; /* refs 1..n_used_refs have been handed out */
  guint32 free_list;   /* removed entries, linked through _next */

  guint32 head, tail;
  guint count;

  guint64 *slots; /* index: hash << 32 | ref (ref 0 = empty); see SLOT_* */
  guint32 slot_mask;

  gint64 last_expire_now;
};

const char *
usher_kill_state_name(UsherKillState state)
{
  switch (state) {
  case USHER_KILL_NONE:
    return "none";
  case USHER_KILL_KILLING:
    return "killing";
  case USHER_KILL_KILLING_NOTIFY_RECEIVED:
    return "notify-received";
  case USHER_KILL_WAITING_FOR_NOTIFY:
    return "waiting-for-notify";
  case USHER_KILL_WAITING_FOR_EVERYONE:
    return "waiting-for-everyone";
  case USHER_KILL_FLUSHING:
    return "flushing";
  case USHER_KILL_DELAY:
    return "delay";
  }
  return "invalid";
}

static inline UsherUser *
entry(const UsherUserDir *dir, guint32 ref)
{
  guint32 i = ref - 1;
  return &dir->chunks[i >> CHUNK_SHIFT][i & CHUNK_MASK];
}

static inline guint32
mix32(guint32 h)
{
  /* MurmurHash3's finalizer: user hashes are MD5-derived already, but hashes supplied by peers
   * or admins need not be, so spread them before masking. */
  h ^= h >> 16;
  h *= 0x85ebca6bu;
  h ^= h >> 13;
  h *= 0xc2b2ae35u;
  h ^= h >> 16;
  return h;
}

UsherUserDir *
usher_user_dir_new(UsherHostTable *hosts, guint expire_secs)
{
  g_assert(expire_secs > 0);
  UsherUserDir *dir = g_new0(UsherUserDir, 1);
  dir->hosts = hosts;
  dir->expire_secs = expire_secs;
  dir->slots = g_new0(guint64, INDEX_MIN_SLOTS);
  dir->slot_mask = INDEX_MIN_SLOTS - 1;
  dir->last_expire_now = G_MININT64;
  return dir;
}

void
usher_user_dir_free(UsherUserDir *dir)
{
  if (dir == NULL)
    return;
  for (guint i = 0; i < dir->n_chunks; i++)
    g_free(dir->chunks[i]);
  g_free(dir->chunks);
  g_free(dir->slots);
  g_free(dir);
}

guint
usher_user_dir_count(const UsherUserDir *dir)
{
  return dir->count;
}

guint
usher_user_dir_get_expire_secs(const UsherUserDir *dir)
{
  return dir->expire_secs;
}

/* --- index ----------------------------------------------------------------------------------- */

static guint32
find_slot(const UsherUserDir *dir, guint32 hash)
{
  guint32 i = mix32(hash) & dir->slot_mask;
  for (;;) {
    guint64 slot = dir->slots[i];
    if (SLOT_REF(slot) == NIL || SLOT_HASH(slot) == hash)
      return i;
    i = (i + 1) & dir->slot_mask;
  }
}

static void
index_resize(UsherUserDir *dir, guint32 n_slots)
{
  guint64 *old = dir->slots;
  guint32 old_n = dir->slot_mask + 1;
  dir->slots = g_new0(guint64, n_slots);
  dir->slot_mask = n_slots - 1;
  for (guint32 i = 0; i < old_n; i++) {
    if (SLOT_REF(old[i]) == NIL)
      continue;
    guint32 s = find_slot(dir, SLOT_HASH(old[i]));
    dir->slots[s] = old[i];
  }
  g_free(old);
}

static void
index_delete_slot(UsherUserDir *dir, guint32 i)
{
  /* Backward-shift deletion keeps every probe chain unbroken without tombstones. */
  guint32 mask = dir->slot_mask;
  guint32 j = i;
  for (;;) {
    j = (j + 1) & mask;
    guint64 slot = dir->slots[j];
    if (SLOT_REF(slot) == NIL)
      break;
    guint32 home = mix32(SLOT_HASH(slot)) & mask;
    /* Move slots[j] into the hole at i unless its home lies cyclically in (i, j]. */
    gboolean home_in_range = i <= j ? (home > i && home <= j) : (home > i || home <= j);
    if (!home_in_range) {
      dir->slots[i] = slot;
      i = j;
    }
  }
  dir->slots[i] = 0;
}

/* --- entries and list ------------------------------------------------------------------------ */

static guint32
alloc_ref(UsherUserDir *dir)
{
  if (dir->free_list != NIL) {
    guint32 ref = dir->free_list;
    dir->free_list = entry(dir, ref)->_next;
    return ref;
  }
  g_assert(dir->n_used_refs < G_MAXUINT32 - 1);
  guint32 ref = ++dir->n_used_refs;
  guint chunk = (ref - 1) >> CHUNK_SHIFT;
  if (chunk == dir->n_chunks) {
    dir->chunks = g_renew(UsherUser *, dir->chunks, dir->n_chunks + 1);
    dir->chunks[dir->n_chunks++] = g_new(UsherUser, CHUNK_SIZE);
  }
  return ref;
}

static void
list_unlink(UsherUserDir *dir, guint32 ref)
{
  UsherUser *u = entry(dir, ref);
  if (u->_prev != NIL)
    entry(dir, u->_prev)->_next = u->_next;
  else
    dir->head = u->_next;
  if (u->_next != NIL)
    entry(dir, u->_next)->_prev = u->_prev;
  else
    dir->tail = u->_prev;
  u->_prev = u->_next = NIL;
}

/* Inserts ref after the last entry whose timestamp is <= its own, searching from the tail:
 * O(1) for the usual "stamped now" case. */
static void
list_insert_sorted(UsherUserDir *dir, guint32 ref)
{
  UsherUser *u = entry(dir, ref);
  guint32 pos = dir->tail;
  while (pos != NIL && entry(dir, pos)->timestamp > u->timestamp)
    pos = entry(dir, pos)->_prev;
  u->_prev = pos;
  if (pos == NIL) {
    u->_next = dir->head;
    dir->head = ref;
  } else {
    u->_next = entry(dir, pos)->_next;
    entry(dir, pos)->_next = ref;
  }
  if (u->_next != NIL)
    entry(dir, u->_next)->_prev = ref;
  else
    dir->tail = ref;
}

static guint32
ref_of(const UsherUserDir *dir, const UsherUser *user)
{
  guint32 ref = SLOT_REF(dir->slots[find_slot(dir, user->hash)]);
  g_assert(ref != NIL && entry(dir, ref) == user);
  return ref;
}

static void
count_host(UsherUserDir *dir, UsherHostId host, int delta)
{
  if (dir->hosts == NULL || host == USHER_HOST_ID_NONE)
    return;
  UsherHost *h = usher_host_table_get(dir->hosts, host);
  g_assert(h != NULL);
  g_assert(delta > 0 || h->user_count > 0);
  h->user_count = (guint)((gint64)h->user_count + delta);
}

static guint32
clamp_ts(gint64 timestamp, gint64 now)
{
  gint64 ts = MIN(timestamp, now);
  return (guint32)CLAMP(ts, 0, (gint64)G_MAXUINT32);
}

/* --- public ---------------------------------------------------------------------------------- */

UsherUser *
usher_user_dir_lookup(const UsherUserDir *dir, guint32 hash)
{
  guint32 ref = SLOT_REF(dir->slots[find_slot(dir, hash)]);
  return ref == NIL ? NULL : entry(dir, ref);
}

void
usher_user_dir_prefetch(const UsherUserDir *dir, guint32 hash)
{
  __builtin_prefetch(&dir->slots[mix32(hash) & dir->slot_mask]);
}

static UsherUser *
insert_at(UsherUserDir *dir, guint32 slot, guint32 hash, UsherHostId host, gint64 timestamp,
          gint64 now)
{
  guint32 ref = alloc_ref(dir);
  UsherUser *u = entry(dir, ref);
  memset(u, 0, sizeof(*u));
  u->hash = hash;
  u->timestamp = clamp_ts(timestamp, now);
  u->host = host;
  dir->slots[slot] = MAKE_SLOT(hash, ref);
  list_insert_sorted(dir, ref);
  dir->count++;
  count_host(dir, host, 1);
  return u;
}

/* Makes room for one more entry. */
static void
index_reserve_one(UsherUserDir *dir)
{
  g_assert(dir->count < G_MAXUINT32 / 2);
  if ((guint64)(dir->count + 1) * 4 > (guint64)(dir->slot_mask + 1) * 3)
    index_resize(dir, (dir->slot_mask + 1) * 2);
}

UsherUser *
usher_user_dir_add(UsherUserDir *dir, guint32 hash, UsherHostId host, gint64 timestamp,
                   gint64 now)
{
  g_assert(hash != 0);
  index_reserve_one(dir);
  guint32 slot = find_slot(dir, hash);
  g_assert(SLOT_REF(dir->slots[slot]) == NIL);
  return insert_at(dir, slot, hash, host, timestamp, now);
}

UsherUser *
usher_user_dir_find_or_add(UsherUserDir *dir, guint32 hash, UsherHostId host, gint64 timestamp,
                           gint64 now, gboolean *added_out)
{
  g_assert(hash != 0);
  index_reserve_one(dir);
  guint32 slot = find_slot(dir, hash);
  guint32 ref = SLOT_REF(dir->slots[slot]);
  *added_out = ref == NIL;
  if (ref != NIL)
    return entry(dir, ref);
  return insert_at(dir, slot, hash, host, timestamp, now);
}

void
usher_user_dir_refresh(UsherUserDir *dir, UsherUser *user, gint64 timestamp, gint64 now)
{
  guint32 ts = clamp_ts(timestamp, now);
  if (ts <= user->timestamp)
    return;
  user->timestamp = ts;
  /* A refreshed entry usually moves to the tail: unlinking it touches both neighbours, two
   * cache misses in a large directory. Start loading the previous one while the next one is
   * read, so the two overlap. */
  if (user->_prev != NIL)
    __builtin_prefetch(entry(dir, user->_prev), 1);
  guint32 ref = ref_of(dir, user);
  if (user->_next != NIL && entry(dir, user->_next)->timestamp < ts) {
    list_unlink(dir, ref);
    list_insert_sorted(dir, ref);
  }
}

void
usher_user_dir_set_host(UsherUserDir *dir, UsherUser *user, UsherHostId host)
{
  if (user->host == host)
    return;
  count_host(dir, user->host, -1);
  user->host = host;
  count_host(dir, host, 1);
}

static void
remove_ref(UsherUserDir *dir, guint32 ref, guint32 slot)
{
  UsherUser *u = entry(dir, ref);
  count_host(dir, u->host, -1);
  list_unlink(dir, ref);
  index_delete_slot(dir, slot);
  u->hash = 0;
  u->_next = dir->free_list;
  dir->free_list = ref;
  dir->count--;
}

void
usher_user_dir_remove(UsherUserDir *dir, UsherUser *user)
{
  guint32 slot = find_slot(dir, user->hash);
  guint32 ref = SLOT_REF(dir->slots[slot]);
  g_assert(ref != NIL && entry(dir, ref) == user);
  remove_ref(dir, ref, slot);
}

guint
usher_user_dir_remove_host(UsherUserDir *dir, UsherHostId host)
{
  guint removed = 0;
  guint32 ref = dir->head;
  while (ref != NIL) {
    UsherUser *u = entry(dir, ref);
    guint32 next = u->_next;
    if (u->host == host) {
      remove_ref(dir, ref, find_slot(dir, u->hash));
      removed++;
    }
    ref = next;
  }
  return removed;
}

void
usher_user_dir_clear(UsherUserDir *dir)
{
  while (dir->head != NIL) {
    UsherUser *u = entry(dir, dir->head);
    remove_ref(dir, dir->head, find_slot(dir, u->hash));
  }
}

guint
usher_user_dir_near_expiring_secs(const UsherUserDir *dir)
{
  guint secs = dir->expire_secs / 10;
  return CLAMP(secs, 3u, 30u);
}

gboolean
usher_user_dir_is_near_expiring(const UsherUserDir *dir, const UsherUser *user, gint64 now)
{
  gint64 edge = (gint64)user->timestamp + dir->expire_secs - usher_user_dir_near_expiring_secs(dir);
  return edge < now;
}

gboolean
usher_user_dir_is_recently_updated(const UsherUserDir *dir, const UsherUser *user, gint64 now)
{
  return (gint64)user->timestamp + dir->expire_secs / 2 >= now;
}

gboolean
usher_user_dir_is_expired(const UsherUserDir *dir, const UsherUser *user, gint64 now)
{
  return (gint64)user->timestamp + dir->expire_secs <= now;
}

gint64
usher_user_dir_next_deadline(const UsherUserDir *dir)
{
  gint64 best = G_MAXINT64;
  /* Entries that the last expire() kept (kill running, weak grace) sit at the head; look past
   * them. Their number is bounded by the moves in flight. */
  for (guint32 ref = dir->head; ref != NIL; ref = entry(dir, ref)->_next) {
    const UsherUser *u = entry(dir, ref);
    gint64 expiry = (gint64)u->timestamp + dir->expire_secs;
    if (expiry > dir->last_expire_now)
      return MIN(best, expiry);
    gint64 due;
    if (u->kill_state != USHER_KILL_NONE)
      due = dir->last_expire_now + USHER_USER_KILL_RETRY_SECS;
    else if (u->weak)
      due = expiry + USHER_USER_WEAK_GRACE_SECS;
    else
      due = expiry; /* became removable since the last expire(): due at once */
    best = MIN(best, due);
  }
  return best;
}

void
usher_user_dir_expire(UsherUserDir *dir, gint64 now, UsherExpireStats *stats_out)
{
  UsherExpireStats stats = {0};
  dir->last_expire_now = now;
  guint32 ref = dir->head;
  while (ref != NIL) {
    UsherUser *u = entry(dir, ref);
    guint32 next = u->_next;
    gint64 expiry = (gint64)u->timestamp + dir->expire_secs;
    if (expiry > now)
      break;
    if (u->kill_state != USHER_KILL_NONE) {
      stats.kill_kept++;
    } else if (u->weak && expiry + USHER_USER_WEAK_GRACE_SECS > now) {
      /* kept during the weak grace period */
    } else {
      if (u->weak)
        stats.weak_dropped++;
      else
        stats.expired++;
      remove_ref(dir, ref, find_slot(dir, u->hash));
    }
    ref = next;
  }
  if (stats_out != NULL)
    *stats_out = stats;
}

UsherUser *
usher_user_dir_oldest(UsherUserDir *dir)
{
  return dir->head == NIL ? NULL : entry(dir, dir->head);
}

UsherUser *
usher_user_dir_newest(UsherUserDir *dir)
{
  return dir->tail == NIL ? NULL : entry(dir, dir->tail);
}

UsherUser *
usher_user_dir_next(UsherUserDir *dir, const UsherUser *user)
{
  return user->_next == NIL ? NULL : entry(dir, user->_next);
}

guint32
usher_user_dir_n_stored(const UsherUserDir *dir)
{
  return dir->n_used_refs;
}

UsherUser *
usher_user_dir_stored(const UsherUserDir *dir, guint32 i)
{
  g_assert(i < dir->n_used_refs);
  return entry(dir, i + 1);
}

gsize
usher_user_dir_memory_bytes(const UsherUserDir *dir)
{
  return sizeof(*dir) + (gsize)dir->n_chunks * (CHUNK_SIZE * sizeof(UsherUser) + sizeof(void *)) +
         (gsize)(dir->slot_mask + 1) * sizeof(guint64);
}

gboolean
usher_user_dir_check(const UsherUserDir *dir, const char **why_out)
{
#define FAIL(why)                                                                                 \
  do {                                                                                            \
    *why_out = (why);                                                                             \
    return FALSE;                                                                                 \
  } while (0)
  guint n = 0;
  guint32 prev = NIL;
  for (guint32 ref = dir->head; ref != NIL; ref = entry(dir, ref)->_next) {
    const UsherUser *u = entry(dir, ref);
    if (u->_prev != prev)
      FAIL("broken back link");
    if (prev != NIL && entry(dir, prev)->timestamp > u->timestamp)
      FAIL("list not sorted by timestamp");
    if (u->hash == 0)
      FAIL("entry with hash 0");
    if (SLOT_REF(dir->slots[find_slot(dir, u->hash)]) != ref)
      FAIL("entry not reachable through the index");
    prev = ref;
    if (++n > dir->count)
      FAIL("list longer than count");
  }
  if (prev != dir->tail)
    FAIL("tail is not the last entry");
  if (n != dir->count)
    FAIL("list shorter than count");
  guint used = 0;
  for (guint32 i = 0; i <= dir->slot_mask; i++)
    used += SLOT_REF(dir->slots[i]) != NIL;
  if (used != dir->count)
    FAIL("index holds a different number of entries");
  if ((guint64)used * 4 > (guint64)(dir->slot_mask + 1) * 3)
    FAIL("index over its load limit");
  return TRUE;
#undef FAIL
}

/* host.c - backends, tags and placement (see host.h). */
#include "libcore/host.h"

#include "libcore/config.h"

#include <string.h>

struct UsherHostTable {
  guint user_expire_secs;
  GPtrArray *hosts;    /* UsherHost*, sorted by IP; owns the hosts */
  GPtrArray *by_id;    /* index id-1 -> UsherHost* or NULL */
  GArray *free_ids;    /* UsherHostId, reused lowest-last */
  GPtrArray *tags;     /* UsherTag*, sorted by name; owns the tags */
  guint64 generation;
  /* Address -> host, open addressing with linear probing, at most half full: every ring line
   * naming a backend looks its address up, and a binary search over the sorted array costs a
   * comparison per halving (six for 40 backends) where this costs one. Rebuilt when a host
   * goes; a host added is inserted. */
  UsherHost **ip_index;
  guint ip_index_mask;
};

/* ---- Address index ---------------------------------------------------------------------- */

static guint
ip_index_home(const UsherHostTable *table, const UsherIp *ip)
{
  /* FNV-1a over the address bytes that count, then a multiplicative spread. */
  guint32 h = 2166136261u ^ ip->family;
  guint n = ip->family == USHER_IP_V4 ? 4 : 16;
  for (guint i = 0; i < n; i++)
    h = (h ^ ip->addr[i]) * 16777619u;
  return (h * 0x9e3779b1u >> 7) & table->ip_index_mask;
}

static void
ip_index_insert(UsherHostTable *table, UsherHost *host)
{
  guint i = ip_index_home(table, &host->ip);
  while (table->ip_index[i] != NULL)
    i = (i + 1) & table->ip_index_mask;
  table->ip_index[i] = host;
}

/* Sizes the index for the hosts in table->hosts plus `extra`, and fills it. */
static void
ip_index_rebuild(UsherHostTable *table, guint extra)
{
  guint want = 16;
  while (want < (table->hosts->len + extra) * 2)
    want *= 2;
  g_free(table->ip_index);
  table->ip_index = g_new0(UsherHost *, want);
  table->ip_index_mask = want - 1;
  for (guint i = 0; i < table->hosts->len; i++)
    ip_index_insert(table, g_ptr_array_index(table->hosts, i));
}

static UsherHost *
ip_index_find(const UsherHostTable *table, const UsherIp *ip)
{
  for (guint i = ip_index_home(table, ip);; i = (i + 1) & table->ip_index_mask) {
    UsherHost *h = table->ip_index[i];
    if (h == NULL || usher_ip_equal(&h->ip, ip))
      return h;
  }
}

static void
tag_free(gpointer p)
{
  UsherTag *tag = p;
  usher_user_dir_free(tag->users);
  usher_vhost_ring_free(tag->ring);
  g_free(tag->name);
  g_free(tag);
}

static void
host_free(gpointer p)
{
  UsherHost *host = p;
  g_free(host->hostname);
  g_free(host);
}

UsherHostTable *
usher_host_table_new(guint user_expire_secs)
{
  UsherHostTable *t = g_new0(UsherHostTable, 1);
  t->user_expire_secs = user_expire_secs;
  t->hosts = g_ptr_array_new_with_free_func(host_free);
  t->by_id = g_ptr_array_new();
  t->free_ids = g_array_new(FALSE, FALSE, sizeof(UsherHostId));
  t->tags = g_ptr_array_new_with_free_func(tag_free);
  ip_index_rebuild(t, 0);
  usher_host_table_ensure_tag(t, "");
  return t;
}

void
usher_host_table_free(UsherHostTable *table)
{
  if (table == NULL)
    return;
  /* Directories first: they point at hosts for their counts. */
  g_ptr_array_unref(table->tags);
  g_ptr_array_unref(table->hosts);
  g_ptr_array_unref(table->by_id);
  g_array_unref(table->free_ids);
  g_free(table->ip_index);
  g_free(table);
}

guint
usher_host_table_get_user_expire_secs(const UsherHostTable *table)
{
  return table->user_expire_secs;
}

/* Binary search: index of ip, or where it would be inserted (found_out tells which). */
static guint
host_search(const UsherHostTable *table, const UsherIp *ip, gboolean *found_out)
{
  guint lo = 0, hi = table->hosts->len;
  while (lo < hi) {
    guint mid = lo + (hi - lo) / 2;
    const UsherHost *h = g_ptr_array_index(table->hosts, mid);
    int c = usher_ip_cmp(&h->ip, ip);
    if (c == 0) {
      *found_out = TRUE;
      return mid;
    }
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  *found_out = FALSE;
  return lo;
}

static guint
tag_search(const UsherHostTable *table, const char *name, gboolean *found_out)
{
  guint lo = 0, hi = table->tags->len;
  while (lo < hi) {
    guint mid = lo + (hi - lo) / 2;
    const UsherTag *t = g_ptr_array_index(table->tags, mid);
    int c = strcmp(t->name, name);
    if (c == 0) {
      *found_out = TRUE;
      return mid;
    }
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  *found_out = FALSE;
  return lo;
}

UsherTag *
usher_host_table_find_tag(UsherHostTable *table, const char *name)
{
  gboolean found;
  guint idx = tag_search(table, name != NULL ? name : "", &found);
  return found ? g_ptr_array_index(table->tags, idx) : NULL;
}

UsherTag *
usher_host_table_ensure_tag(UsherHostTable *table, const char *name)
{
  if (name == NULL)
    name = "";
  gboolean found;
  guint idx = tag_search(table, name, &found);
  if (found)
    return g_ptr_array_index(table->tags, idx);
  if (table->tags->len >= USHER_TAGS_MAX)
    return NULL;
  UsherTag *tag = g_new0(UsherTag, 1);
  tag->name = g_strdup(name);
  tag->ring = usher_vhost_ring_new();
  tag->users = usher_user_dir_new(table, table->user_expire_secs);
  tag->ring_dirty = TRUE;
  g_ptr_array_insert(table->tags, (gint)idx, tag);
  return tag;
}

guint
usher_host_table_n_tags(const UsherHostTable *table)
{
  return table->tags->len;
}

UsherTag *
usher_host_table_nth_tag(const UsherHostTable *table, guint idx)
{
  g_assert(idx < table->tags->len);
  return g_ptr_array_index(table->tags, idx);
}

static void
changed(UsherHostTable *table, UsherTag *tag)
{
  table->generation++;
  if (tag != NULL)
    tag->ring_dirty = TRUE;
}

UsherHost *
usher_host_table_add(UsherHostTable *table, const UsherIp *ip, const char *tag, guint vhost_count,
                     const char *hostname)
{
  g_assert(ip->family == USHER_IP_V4 || ip->family == USHER_IP_V6);
  gboolean found;
  guint idx = host_search(table, ip, &found);
  if (found || table->hosts->len >= USHER_HOSTS_MAX)
    return NULL;
  UsherTag *host_tag = usher_host_table_ensure_tag(table, tag);
  if (host_tag == NULL)
    return NULL;

  UsherHost *host = g_new0(UsherHost, 1);
  if (table->free_ids->len > 0) {
    host->id = g_array_index(table->free_ids, UsherHostId, table->free_ids->len - 1);
    g_array_set_size(table->free_ids, table->free_ids->len - 1);
    g_ptr_array_index(table->by_id, host->id - 1) = host;
  } else {
    g_ptr_array_add(table->by_id, host);
    host->id = table->by_id->len;
  }
  host->ip = *ip;
  usher_ip_to_string(ip, host->ip_str);
  host->hostname = hostname != NULL && hostname[0] != '\0' ? g_strdup(hostname) : NULL;
  host->tag = host_tag;
  host->vhost_count = vhost_count;
  g_ptr_array_insert(table->hosts, (gint)idx, host);
  if (table->hosts->len * 2 > table->ip_index_mask + 1)
    ip_index_rebuild(table, table->hosts->len); /* doubles it, this host included */
  else
    ip_index_insert(table, host);
  changed(table, host->tag);
  return host;
}

UsherHost *
usher_host_table_lookup(UsherHostTable *table, const UsherIp *ip)
{
  return ip_index_find(table, ip);
}

UsherHost *
usher_host_table_get(UsherHostTable *table, UsherHostId id)
{
  if (id == USHER_HOST_ID_NONE || id > table->by_id->len)
    return NULL;
  return g_ptr_array_index(table->by_id, id - 1);
}

void
usher_host_table_set_vhost_count(UsherHostTable *table, UsherHost *host, guint vhost_count)
{
  if (host->vhost_count == vhost_count)
    return;
  host->vhost_count = vhost_count;
  changed(table, host->tag);
}

void
usher_host_table_set_down(UsherHostTable *table, UsherHost *host, gboolean down,
                          gint64 change_time)
{
  if (host->down == down)
    return;
  host->down = down;
  host->last_updown_change = change_time;
  changed(table, host->tag);
}

gboolean
usher_host_table_set_tag(UsherHostTable *table, UsherHost *host, const char *tag)
{
  UsherTag *new_tag = usher_host_table_ensure_tag(table, tag);
  if (new_tag == NULL)
    return FALSE;
  if (new_tag == host->tag)
    return TRUE;
  usher_user_dir_remove_host(host->tag->users, host->id);
  changed(table, host->tag);
  host->tag = new_tag;
  changed(table, new_tag);
  return TRUE;
}

void
usher_host_table_set_hostname(UsherHostTable *table, UsherHost *host, const char *hostname)
{
  g_free(host->hostname);
  host->hostname = hostname != NULL && hostname[0] != '\0' ? g_strdup(hostname) : NULL;
  table->generation++;
}

guint
usher_host_table_flush(UsherHostTable *table, UsherHost *host)
{
  table->generation++;
  return usher_user_dir_remove_host(host->tag->users, host->id);
}

void
usher_host_table_remove(UsherHostTable *table, UsherHost *host)
{
  usher_user_dir_remove_host(host->tag->users, host->id);
  g_assert(host->user_count == 0);
  changed(table, host->tag);
  g_ptr_array_index(table->by_id, host->id - 1) = NULL;
  g_array_append_val(table->free_ids, host->id);
  gboolean found;
  guint idx = host_search(table, &host->ip, &found);
  g_assert(found);
  g_ptr_array_remove_index(table->hosts, idx); /* frees host */
  ip_index_rebuild(table, 0);
}

guint
usher_host_table_n_hosts(const UsherHostTable *table)
{
  return table->hosts->len;
}

UsherHost *
usher_host_table_nth(const UsherHostTable *table, guint idx)
{
  g_assert(idx < table->hosts->len);
  return g_ptr_array_index(table->hosts, idx);
}

/* Builds the ring of a tag from its usable hosts into ring. */
static void
fill_ring(const UsherHostTable *table, const UsherTag *tag, UsherVhostRing *ring)
{
  usher_vhost_ring_clear(ring);
  for (guint i = 0; i < table->hosts->len; i++) {
    const UsherHost *h = g_ptr_array_index(table->hosts, i);
    if (h->tag == tag && !h->down)
      usher_vhost_ring_add_host(ring, &h->ip, h->id, h->vhost_count);
  }
  usher_vhost_ring_finish(ring);
}

static void
rebuild_ring(UsherHostTable *table, UsherTag *tag)
{
  fill_ring(table, tag, tag->ring);
  tag->ring_dirty = FALSE;
}

const UsherVhostRing *
usher_tag_get_ring(UsherHostTable *table, UsherTag *tag)
{
  if (tag->ring_dirty)
    rebuild_ring(table, tag);
  return tag->ring;
}

UsherHost *
usher_tag_place(UsherHostTable *table, UsherTag *tag, guint32 user_hash)
{
  const UsherVhostRing *ring = usher_tag_get_ring(table, tag);
  return usher_host_table_get(table, usher_vhost_ring_lookup(ring, user_hash));
}

const UsherHost *
usher_host_table_get_const(const UsherHostTable *table, UsherHostId id)
{
  if (id == USHER_HOST_ID_NONE || id > table->by_id->len)
    return NULL;
  return g_ptr_array_index(table->by_id, id - 1);
}

const UsherHost *
usher_host_table_lookup_const(const UsherHostTable *table, const UsherIp *ip)
{
  return ip_index_find(table, ip);
}

const UsherTag *
usher_host_table_find_tag_const(const UsherHostTable *table, const char *name)
{
  gboolean found;
  guint idx = tag_search(table, name != NULL ? name : "", &found);
  return found ? g_ptr_array_index(table->tags, idx) : NULL;
}

const UsherHost *
usher_tag_place_readonly(const UsherHostTable *table, const UsherTag *tag, guint32 user_hash)
{
  if (!tag->ring_dirty)
    return usher_host_table_get_const(table, usher_vhost_ring_lookup(tag->ring, user_hash));
  g_autoptr(UsherVhostRing) ring = usher_vhost_ring_new();
  fill_ring(table, tag, ring);
  return usher_host_table_get_const(table, usher_vhost_ring_lookup(ring, user_hash));
}

/* CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320), chained like zlib's crc32(). Bitwise:
 * it runs once per SYNC over a few bytes per host, so a table buys nothing. */
static guint32
crc32_update(guint32 crc, const void *data, gsize len)
{
  const guint8 *p = data;
  crc = ~crc;
  for (gsize i = 0; i < len; i++) {
    crc ^= p[i];
    for (int k = 0; k < 8; k++)
      crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

static void
put_le32(guint8 out[4], guint32 v)
{
  out[0] = (guint8)v;
  out[1] = (guint8)(v >> 8);
  out[2] = (guint8)(v >> 16);
  out[3] = (guint8)(v >> 24);
}

guint32
usher_host_table_hosts_hash(const UsherHostTable *table)
{
  /* Dovecot hashes these integers as their in-memory bytes; on the little-endian machines it
   * runs on, that is little-endian. We always use little-endian, so a big-endian Usher still
   * agrees with an x86-64 Dovecot. */
  guint32 crc = 0;
  for (guint i = 0; i < table->hosts->len; i++) {
    const UsherHost *h = g_ptr_array_index(table->hosts, i);
    guint8 buf[4];
    put_le32(buf, (h->down ? 1u : 0u) ^ h->vhost_count);
    crc = crc32_update(crc, buf, 4);
    if (h->ip.family == USHER_IP_V4) {
      crc = crc32_update(crc, h->ip.addr, 4);
    } else {
      /* The ELF hash value as its in-memory (little-endian) bytes. */
      put_le32(buf, usher_ip_dovecot_hash(&h->ip));
      crc = crc32_update(crc, buf, 4);
    }
    crc = crc32_update(crc, h->tag->name, strlen(h->tag->name));
  }
  return crc == 0 ? 1 : crc;
}

guint64
usher_host_table_get_generation(const UsherHostTable *table)
{
  return table->generation;
}

gboolean
usher_host_table_add_backends(UsherHostTable *table, const GPtrArray *backends, GError **error)
{
  if (table->hosts->len + backends->len > USHER_HOSTS_MAX) {
    g_set_error(error, USHER_CONFIG_ERROR, USHER_CONFIG_ERROR_INVALID,
                "%u backends is over the limit of %u", table->hosts->len + backends->len,
                USHER_HOSTS_MAX);
    return FALSE;
  }
  g_autoptr(GHashTable) seen = g_hash_table_new(usher_ip_table_hash, usher_ip_table_equal);
  g_autoptr(GHashTable) new_tags = g_hash_table_new(g_str_hash, g_str_equal);
  for (guint i = 0; i < backends->len; i++) {
    const UsherBackendConfig *b = g_ptr_array_index(backends, i);
    const char *tag = b->tag != NULL ? b->tag : "";
    if (usher_host_table_find_tag(table, tag) == NULL)
      g_hash_table_add(new_tags, (gpointer)tag);
    if (usher_host_table_lookup(table, &b->ip) != NULL ||
        !g_hash_table_add(seen, (gpointer)&b->ip)) {
      char buf[USHER_IP_STRLEN];
      g_set_error(error, USHER_CONFIG_ERROR, USHER_CONFIG_ERROR_CONFLICT,
                  "backend %s is listed twice", usher_ip_to_string(&b->ip, buf));
      return FALSE;
    }
  }
  if (table->tags->len + g_hash_table_size(new_tags) > USHER_TAGS_MAX) {
    g_set_error(error, USHER_CONFIG_ERROR, USHER_CONFIG_ERROR_INVALID,
                "%u tags is over the limit of %u", table->tags->len + g_hash_table_size(new_tags),
                USHER_TAGS_MAX);
    return FALSE;
  }
  for (guint i = 0; i < backends->len; i++) {
    const UsherBackendConfig *b = g_ptr_array_index(backends, i);
    UsherHost *h = usher_host_table_add(table, &b->ip, b->tag, b->vhost_count, b->hostname);
    g_assert(h != NULL);
    if (b->down)
      usher_host_table_set_down(table, h, TRUE, b->updown_change);
    else
      h->last_updown_change = b->updown_change;
  }
  return TRUE;
}

gboolean
usher_host_table_check_counts(UsherHostTable *table, char **why_out)
{
  guint n = table->by_id->len;
  guint *counts = g_new0(guint, n + 1);
  gboolean ok = TRUE;
  for (guint t = 0; t < table->tags->len && ok; t++) {
    UsherTag *tag = g_ptr_array_index(table->tags, t);
    /* In memory order: down the expiry list, a directory of a million entries is a million
     * cache misses one after the other. */
    for (guint32 i = 0; i < usher_user_dir_n_stored(tag->users); i++) {
      UsherUser *u = usher_user_dir_stored(tag->users, i);
      if (u->hash == 0)
        continue;
      UsherHost *h = usher_host_table_get(table, u->host);
      if (h == NULL || h->tag != tag) {
        *why_out = g_strdup_printf("user hash %u in tag \"%s\" points to a host %s", u->hash,
                                   tag->name, h == NULL ? "that does not exist" : "of another tag");
        ok = FALSE;
        break;
      }
      counts[u->host]++;
    }
  }
  for (guint i = 0; i < table->hosts->len && ok; i++) {
    UsherHost *h = g_ptr_array_index(table->hosts, i);
    if (counts[h->id] != h->user_count) {
      *why_out = g_strdup_printf("host %s counts %u users, its directory holds %u", h->ip_str,
                                 h->user_count, counts[h->id]);
      ok = FALSE;
    }
  }
  g_free(counts);
  return ok;
}

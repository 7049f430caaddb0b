/* vhost-ring.c - Dovecot 2.3's consistent-hashing ring (see vhost-ring.h for the rules). */
#include "libcore/vhost-ring.h"

#include "libcore/md5.h"

#include <stdio.h>
#include <string.h>

typedef struct {
  guint32 hash;
  guint32 host_rank; /* position of the host among the added hosts in IP order */
  guint32 vhost_idx; /* keeps equal points of one host in a fixed order */
} BuildPoint;

typedef struct {
  UsherIp ip;
  UsherHostId host;
  guint vhost_count;
} BuildHost;

struct UsherVhostRing {
  GArray *build_hosts; /* BuildHost, while building */
  guint32 *hashes;     /* sorted point hashes */
  UsherHostId *hosts;  /* host of each point */
  guint n_points;
  gboolean building;
};

UsherVhostRing *
usher_vhost_ring_new(void)
{
  UsherVhostRing *ring = g_new0(UsherVhostRing, 1);
  ring->build_hosts = g_array_new(FALSE, FALSE, sizeof(BuildHost));
  return ring;
}

void
usher_vhost_ring_free(UsherVhostRing *ring)
{
  if (ring == NULL)
    return;
  g_array_unref(ring->build_hosts);
  g_free(ring->hashes);
  g_free(ring->hosts);
  g_free(ring);
}

void
usher_vhost_ring_clear(UsherVhostRing *ring)
{
  g_array_set_size(ring->build_hosts, 0);
  g_clear_pointer(&ring->hashes, g_free);
  g_clear_pointer(&ring->hosts, g_free);
  ring->n_points = 0;
  ring->building = TRUE;
}

void
usher_vhost_ring_add_host(UsherVhostRing *ring, const UsherIp *ip, UsherHostId host,
                          guint vhost_count)
{
  g_assert(ring->building);
  if (vhost_count == 0)
    return;
  BuildHost bh = {*ip, host, vhost_count};
  g_array_append_val(ring->build_hosts, bh);
}

guint32
usher_vhost_point_hash(const UsherIp *ip, guint i)
{
  char ip_str[USHER_IP_STRLEN];
  char buf[USHER_IP_STRLEN + 16];
  usher_ip_to_string(ip, ip_str);
  int len = snprintf(buf, sizeof(buf), "%s-%u", ip_str, i);
  g_assert(len > 0 && (gsize)len < sizeof(buf));
  guint8 digest[16];
  usher_md5(buf, (gsize)len, digest);
  return usher_md5_prefix32(digest);
}

static int
cmp_build_host(gconstpointer a, gconstpointer b)
{
  const BuildHost *ha = a, *hb = b;
  return usher_ip_cmp(&ha->ip, &hb->ip);
}

static int
cmp_build_point(gconstpointer a, gconstpointer b)
{
  const BuildPoint *pa = a, *pb = b;
  if (pa->hash != pb->hash)
    return pa->hash < pb->hash ? -1 : 1;
  if (pa->host_rank != pb->host_rank)
    return pa->host_rank < pb->host_rank ? -1 : 1;
  if (pa->vhost_idx != pb->vhost_idx)
    return pa->vhost_idx < pb->vhost_idx ? -1 : 1;
  return 0;
}

void
usher_vhost_ring_finish(UsherVhostRing *ring)
{
  g_assert(ring->building);
  ring->building = FALSE;

  /* Host rank = IP order, which is Dovecot's tie-break for equal point hashes. */
  g_array_sort(ring->build_hosts, cmp_build_host);
  guint64 total = 0;
  for (guint i = 0; i < ring->build_hosts->len; i++)
    total += g_array_index(ring->build_hosts, BuildHost, i).vhost_count;
  g_assert(total <= G_MAXUINT32);

  BuildPoint *points = g_new(BuildPoint, MAX(total, 1));
  guint n = 0;
  for (guint r = 0; r < ring->build_hosts->len; r++) {
    const BuildHost *bh = &g_array_index(ring->build_hosts, BuildHost, r);
    char ip_str[USHER_IP_STRLEN];
    usher_ip_to_string(&bh->ip, ip_str);
    gsize ip_len = strlen(ip_str);
    char buf[USHER_IP_STRLEN + 16];
    memcpy(buf, ip_str, ip_len);
    buf[ip_len] = '-';
    for (guint i = 0; i < bh->vhost_count; i++) {
      char digits[12];
      int dlen = snprintf(digits, sizeof(digits), "%u", i);
      memcpy(buf + ip_len + 1, digits, (gsize)dlen);
      guint8 digest[16];
      usher_md5(buf, ip_len + 1 + (gsize)dlen, digest);
      points[n++] = (BuildPoint){usher_md5_prefix32(digest), r, i};
    }
  }
  qsort(points, n, sizeof(BuildPoint), cmp_build_point);

  ring->n_points = n;
  ring->hashes = g_new(guint32, MAX(n, 1));
  ring->hosts = g_new(UsherHostId, MAX(n, 1));
  for (guint i = 0; i < n; i++) {
    ring->hashes[i] = points[i].hash;
    ring->hosts[i] = g_array_index(ring->build_hosts, BuildHost, points[i].host_rank).host;
  }
  g_free(points);
}

UsherHostId
usher_vhost_ring_lookup(const UsherVhostRing *ring, guint32 user_hash)
{
  g_assert(!ring->building);
  guint n = ring->n_points;
  if (n == 0)
    return USHER_HOST_ID_NONE;

  /* Dovecot's bsearch_insert_pos(): the same midpoints, so an exact hit on a duplicated hash
   * returns the same point. */
  const guint32 *h = ring->hashes;
  guint left = 0, right = n, idx = 0;
  while (left < right) {
    idx = (left + right) / 2;
    if (user_hash > h[idx]) {
      left = idx + 1;
    } else if (user_hash < h[idx]) {
      right = idx;
    } else {
      return ring->hosts[idx];
    }
  }
  idx = left;
  if (idx == n)
    idx = 0;
  return ring->hosts[idx];
}

guint
usher_vhost_ring_n_points(const UsherVhostRing *ring)
{
  return ring->n_points;
}

void
usher_vhost_ring_point(const UsherVhostRing *ring, guint idx, guint32 *hash_out,
                       UsherHostId *host_out)
{
  g_assert(idx < ring->n_points);
  if (hash_out != NULL)
    *hash_out = ring->hashes[idx];
  if (host_out != NULL)
    *host_out = ring->hosts[idx];
}

guint64
usher_vhost_ring_arc_of(const UsherVhostRing *ring, UsherHostId host)
{
  guint n = ring->n_points;
  guint64 arc = 0;
  for (guint i = 0; i < n; i++) {
    if (ring->hosts[i] != host)
      continue;
    /* Point i owns the hashes (previous point, point i]; point 0 also owns the wrap-around
     * (last point, 2^32) and [0, point 0]. Exact hits on duplicated hashes are ignored. */
    guint64 prev = i > 0 ? ring->hashes[i - 1] : (guint64)ring->hashes[n - 1];
    guint64 cur = ring->hashes[i];
    if (i == 0)
      arc += (G_GUINT64_CONSTANT(1) << 32) - prev + cur;
    else
      arc += cur - prev;
  }
  return arc;
}

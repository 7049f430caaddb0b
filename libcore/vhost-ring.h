/* vhost-ring.h - the consistent-hashing ring of one tag, bit-exact with Dovecot 2.3.
 *
 * Each usable host (up, vhost_count > 0) contributes vhost_count points; point i of a host is the
 * first four bytes (big-endian) of MD5("<canonical ip>-<i>"). Points are sorted by hash, ties by
 * host IP. A user goes to the first point at or after its hash, wrapping to the first point.
 * Lookup replays Dovecot's binary search step for step, so even an exact hit on a duplicated
 * point hash picks the same host.
 */
#pragma once

#include "libcore/ip.h"

G_BEGIN_DECLS

typedef guint32 UsherHostId;
#define USHER_HOST_ID_NONE ((UsherHostId)0)

typedef struct UsherVhostRing UsherVhostRing;

UsherVhostRing *usher_vhost_ring_new(void);
void usher_vhost_ring_free(UsherVhostRing *ring);

/* Rebuilding: clear, add hosts (in any order), then finish. Hosts with vhost_count 0 add nothing. */
void usher_vhost_ring_clear(UsherVhostRing *ring);
void usher_vhost_ring_add_host(UsherVhostRing *ring, const UsherIp *ip, UsherHostId host,
                               guint vhost_count);
void usher_vhost_ring_finish(UsherVhostRing *ring);

/* USHER_HOST_ID_NONE when the ring has no points. */
UsherHostId usher_vhost_ring_lookup(const UsherVhostRing *ring, guint32 user_hash);

guint usher_vhost_ring_n_points(const UsherVhostRing *ring);
/* Point idx (0 <= idx < n_points) in ring order. */
void usher_vhost_ring_point(const UsherVhostRing *ring, guint idx, guint32 *hash_out,
                            UsherHostId *host_out);
/* Share of the 2^32 hash space owned by host, in units of 1/2^32 (a user hash h belongs to the
 * first point >= h, so a point owns the arc (previous point, point]). */
guint64 usher_vhost_ring_arc_of(const UsherVhostRing *ring, UsherHostId host);

/* MD5-derived hash of point i of a host (exposed for tests and tools). */
guint32 usher_vhost_point_hash(const UsherIp *ip, guint i);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(UsherVhostRing, usher_vhost_ring_free)

G_END_DECLS

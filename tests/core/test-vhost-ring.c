/* test-vhost-ring.c - the vhost ring against the real Dovecot 2.3 director's answers. */
#include "libcore/host.h"
#include "libcore/md5.h"
#include "libcore/user-hash.h"

#include "test-util.h"

#include <stdlib.h>
#include <string.h>

static UsherHost *
add(UsherHostTable *t, const char *ip, guint vhosts, const char *tag)
{
  UsherIp addr = test_ip(ip);
  UsherHost *h = usher_host_table_add(t, &addr, tag, vhosts, NULL);
  g_assert_nonnull(h);
  return h;
}

static const char *
place(UsherHostTable *t, const char *tag, const char *user)
{
  UsherTag *tg = usher_host_table_find_tag(t, tag);
  g_assert_nonnull(tg);
  UsherHost *h = usher_tag_place(t, tg, usher_user_hash(user, -1, "%Lu"));
  return h != NULL ? h->ip_str : NULL;
}

/* tests/data/dovecot-mapping-user1-1000.txt: 1000 users placed by a real Dovecot 2.3.19.1 ring,
 * in two tables: 127.0.2.1-3 at 100 vhosts each, then at 50/100/200. Each "# hosts:" line starts a
 * table; "# users per backend:" gives the totals Dovecot counted. */
static void
check_totals(UsherHostTable *t, GHashTable *counts, const char *expected_line)
{
  g_autofree char *copy = g_strstrip(g_strdup(expected_line));
  g_auto(GStrv) parts = g_strsplit(copy, " ", -1);
  for (guint j = 0; parts[j] != NULL; j++) {
    if (parts[j][0] == '\0')
      continue;
    g_auto(GStrv) kv = g_strsplit(parts[j], "=", 2);
    guint got = GPOINTER_TO_UINT(g_hash_table_lookup(counts, kv[0]));
    g_assert_cmpuint(got, ==, (guint)atoi(kv[1]));
  }
  (void)t;
}

static void
test_reference_mapping(void)
{
  g_autofree char *path = test_data_path("dovecot-mapping-user1-1000.txt");
  g_autofree char *text = NULL;
  g_autoptr(GError) error = NULL;
  g_assert_true(g_file_get_contents(path, &text, NULL, &error));

  g_autoptr(UsherHostTable) t = NULL;
  g_autoptr(GHashTable) counts = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  g_autofree char *expected_totals = NULL;
  guint checked = 0, tables = 0;
  g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
  for (guint i = 0;; i++) {
    const char *line = lines[i];
    if (line == NULL || g_str_has_prefix(line, "# hosts: ")) {
      if (expected_totals != NULL)
        check_totals(t, counts, expected_totals);
      if (line == NULL)
        break;
      g_clear_pointer(&t, usher_host_table_free);
      g_hash_table_remove_all(counts);
      t = usher_host_table_new(900);
      tables++;
      g_auto(GStrv) hosts = g_strsplit(line + 9, ",", -1);
      for (guint j = 0; hosts[j] != NULL; j++) {
        g_auto(GStrv) kv = g_strsplit(hosts[j], "=", 2);
        add(t, kv[0], (guint)atoi(kv[1]), "");
      }
      continue;
    }
    if (g_str_has_prefix(line, "# users per backend: ")) {
      g_free(expected_totals);
      expected_totals = g_strdup(line + 21);
      continue;
    }
    if (line[0] == '#' || line[0] == '\0')
      continue;
    g_assert_nonnull(t);
    g_auto(GStrv) f = g_strsplit(line, " ", -1);
    g_assert_cmpuint(g_strv_length(f), ==, 3);
    guint32 hash = usher_user_hash(f[0], -1, "%Lu");
    g_assert_cmpuint(hash, ==, (guint32)g_ascii_strtoull(f[1], NULL, 10));
    UsherHost *h = usher_tag_place(t, usher_host_table_find_tag(t, ""), hash);
    g_assert_nonnull(h);
    if (strcmp(h->ip_str, f[2]) != 0)
      g_error("%s: Usher says %s, Dovecot said %s", f[0], h->ip_str, f[2]);
    guint c = GPOINTER_TO_UINT(g_hash_table_lookup(counts, h->ip_str));
    g_hash_table_insert(counts, g_strdup(h->ip_str), GUINT_TO_POINTER(c + 1));
    checked++;
  }
  g_assert_cmpuint(tables, ==, 2);
  g_assert_cmpuint(checked, ==, 2000);
}

static void
test_worked_example(void)
{
  g_autoptr(UsherHostTable) t = usher_host_table_new(900);
  UsherHost *h1 = add(t, "127.0.2.1", 100, NULL);
  UsherHost *h2 = add(t, "127.0.2.2", 100, NULL);
  UsherHost *h3 = add(t, "127.0.2.3", 100, NULL);
  UsherTag *tag = usher_host_table_find_tag(t, "");
  const UsherVhostRing *ring = usher_tag_get_ring(t, tag);
  g_assert_cmpuint(usher_vhost_ring_n_points(ring), ==, 300);
  guint32 hash;
  UsherHostId id;
  usher_vhost_ring_point(ring, 0, &hash, &id);
  g_assert_cmpuint(hash, ==, 7480487);
  g_assert_cmpuint(id, ==, h3->id);
  usher_vhost_ring_point(ring, 299, &hash, &id);
  g_assert_cmpuint(hash, ==, 4279877022u);
  g_assert_cmpuint(id, ==, h2->id);
  usher_vhost_ring_point(ring, 45, &hash, &id);
  g_assert_cmpuint(hash, ==, 620643284);
  g_assert_cmpuint(usher_vhost_point_hash(&h1->ip, 0), ==, 2090666238);
  g_assert_cmpuint(usher_vhost_point_hash(&h2->ip, 0), ==, 547059511);
  g_assert_cmpuint(usher_vhost_point_hash(&h3->ip, 0), ==, 3319621155u);

  /* Shares of the hash space: .1 = 39.0 %, .2 = 30.6 %, .3 = 30.4 %. */
  guint64 a1 = usher_vhost_ring_arc_of(ring, h1->id), a2 = usher_vhost_ring_arc_of(ring, h2->id),
          a3 = usher_vhost_ring_arc_of(ring, h3->id);
  g_assert_cmpuint(a1 + a2 + a3, ==, G_GUINT64_CONSTANT(1) << 32);
#define PERMILLE(a) (((a) * 1000 + (G_GUINT64_CONSTANT(1) << 31)) >> 32)
  g_assert_cmpuint(PERMILLE(a1), ==, 390);
  g_assert_cmpuint(PERMILLE(a2), ==, 306);
  g_assert_cmpuint(PERMILLE(a3), ==, 304);

  g_assert_cmpstr(place(t, "", "user1"), ==, "127.0.2.2");
  g_assert_cmpstr(place(t, "", "user2"), ==, "127.0.2.1");
  g_assert_cmpstr(place(t, "", "user3"), ==, "127.0.2.1");
  g_assert_cmpstr(place(t, "", "user4"), ==, "127.0.2.1");
  g_assert_cmpstr(place(t, "", "user5"), ==, "127.0.2.2");
  g_assert_cmpstr(place(t, "", "test@example.com"), ==, "127.0.2.1");

  /* Down host: its points leave the ring (spec 2.6, checked on a real director). */
  usher_host_table_set_down(t, h2, TRUE, 1795394359);
  g_assert_cmpstr(place(t, "", "user1"), ==, "127.0.2.3");
  g_assert_cmpstr(place(t, "", "user5"), ==, "127.0.2.3");
  g_assert_cmpuint(usher_vhost_ring_n_points(usher_tag_get_ring(t, tag)), ==, 200);
  usher_host_table_set_down(t, h2, FALSE, 1795394360);
  g_assert_cmpstr(place(t, "", "user1"), ==, "127.0.2.2");

  /* vhost 0 acts like down. */
  usher_host_table_set_vhost_count(t, h3, 0);
  g_assert_cmpstr(place(t, "", "test@example.com"), ==, "127.0.2.1");
  g_assert_cmpuint(usher_vhost_ring_n_points(usher_tag_get_ring(t, tag)), ==, 200);

  /* No usable host at all. */
  usher_host_table_set_down(t, h1, TRUE, 1);
  usher_host_table_set_down(t, h2, TRUE, 1);
  g_assert_null(place(t, "", "user1"));
}

static void
test_wrap_around(void)
{
  g_autoptr(UsherHostTable) t = usher_host_table_new(900);
  add(t, "127.0.2.1", 100, NULL);
  add(t, "127.0.2.2", 100, NULL);
  add(t, "127.0.2.3", 100, NULL);
  UsherTag *tag = usher_host_table_find_tag(t, "");
  const UsherVhostRing *ring = usher_tag_get_ring(t, tag);
  guint n = usher_vhost_ring_n_points(ring);
  guint32 first, last;
  UsherHostId first_host, last_host, id;
  usher_vhost_ring_point(ring, 0, &first, &first_host);
  usher_vhost_ring_point(ring, n - 1, &last, &last_host);
  /* Above the last point: wraps to the first. */
  g_assert_cmpuint(usher_vhost_ring_lookup(ring, last + 1), ==, first_host);
  g_assert_cmpuint(usher_vhost_ring_lookup(ring, G_MAXUINT32), ==, first_host);
  /* Exactly on a point, just below, just above. */
  g_assert_cmpuint(usher_vhost_ring_lookup(ring, last), ==, last_host);
  g_assert_cmpuint(usher_vhost_ring_lookup(ring, 1), ==, first_host);
  g_assert_cmpuint(usher_vhost_ring_lookup(ring, first), ==, first_host);
  for (guint i = 1; i < n; i++) {
    guint32 h, prev;
    usher_vhost_ring_point(ring, i, &h, &id);
    usher_vhost_ring_point(ring, i - 1, &prev, NULL);
    if (h != prev) {
      g_assert_cmpuint(usher_vhost_ring_lookup(ring, prev + 1), ==, id);
      g_assert_cmpuint(usher_vhost_ring_lookup(ring, h), ==, id);
    }
  }
}

/* Replays Dovecot's bsearch_insert_pos over the ring's own arrays, written independently. */
static UsherHostId
dovecot_lookup(const UsherVhostRing *ring, guint32 key)
{
  guint n = usher_vhost_ring_n_points(ring);
  guint l = 0, r = n, idx = 0;
  int ret = 0;
  while (l < r) {
    idx = (l + r) / 2;
    guint32 h;
    usher_vhost_ring_point(ring, idx, &h, NULL);
    ret = key > h ? 1 : key < h ? -1 : 0;
    if (ret > 0)
      l = idx + 1;
    else if (ret < 0)
      r = idx;
    else
      break;
  }
  if (ret > 0)
    idx++;
  if (idx == n)
    idx = 0;
  UsherHostId id;
  usher_vhost_ring_point(ring, idx, NULL, &id);
  return id;
}

/* With 300 hosts x 1000 vhosts, the 32-bit point hashes collide several times (birthday bound):
 * equal hashes must be ordered by host IP, and exact hits must follow Dovecot's search. */
static void
test_ties(void)
{
  g_autoptr(UsherHostTable) t = usher_host_table_new(900);
  for (int i = 0; i < 300; i++) {
    g_autofree char *ip = g_strdup_printf("10.0.%d.%d", i / 250, i % 250 + 1);
    add(t, ip, 1000, NULL);
  }
  UsherTag *tag = usher_host_table_find_tag(t, "");
  const UsherVhostRing *ring = usher_tag_get_ring(t, tag);
  guint n = usher_vhost_ring_n_points(ring);
  g_assert_cmpuint(n, ==, 300000);
  guint ties = 0;
  for (guint i = 1; i < n; i++) {
    guint32 h0, h1;
    UsherHostId id0, id1;
    usher_vhost_ring_point(ring, i - 1, &h0, &id0);
    usher_vhost_ring_point(ring, i, &h1, &id1);
    g_assert_cmpuint(h0, <=, h1);
    if (h0 != h1 || id0 == id1)
      continue;
    ties++;
    UsherHost *a = usher_host_table_get(t, id0), *b = usher_host_table_get(t, id1);
    g_assert_cmpint(usher_ip_cmp(&a->ip, &b->ip), <, 0);
    g_assert_cmpuint(usher_vhost_ring_lookup(ring, h0), ==, dovecot_lookup(ring, h0));
    /* Just below a tie: the lower IP's point comes first. */
    g_assert_cmpuint(usher_vhost_ring_lookup(ring, h0 - 1), ==, id0);
  }
  g_test_message("%u ties between different hosts", ties);
  g_assert_cmpuint(ties, >, 0);
  for (guint32 k = 0; k < 100000; k++) {
    guint32 key = k * 42949u + 17;
    g_assert_cmpuint(usher_vhost_ring_lookup(ring, key), ==, dovecot_lookup(ring, key));
  }
}

static void
test_tags(void)
{
  g_autoptr(UsherHostTable) t = usher_host_table_new(900);
  add(t, "127.0.2.1", 100, NULL);
  add(t, "127.0.3.1", 100, "eu");
  add(t, "127.0.3.2", 100, "eu");
  g_assert_cmpuint(usher_host_table_n_tags(t), ==, 2);
  g_assert_cmpstr(usher_host_table_nth_tag(t, 0)->name, ==, "");
  g_assert_cmpstr(usher_host_table_nth_tag(t, 1)->name, ==, "eu");
  for (int i = 0; i < 200; i++) {
    g_autofree char *u = g_strdup_printf("user%d", i);
    g_assert_cmpstr(place(t, "", u), ==, "127.0.2.1");
    const char *eu = place(t, "eu", u);
    g_assert_true(g_str_equal(eu, "127.0.3.1") || g_str_equal(eu, "127.0.3.2"));
  }
  g_assert_null(usher_host_table_find_tag(t, "us"));
  /* A tag with only down hosts has no placement. */
  UsherTag *us = usher_host_table_ensure_tag(t, "us");
  g_assert_null(usher_tag_place(t, us, 12345));
}

static void
test_ipv6(void)
{
  g_autoptr(UsherHostTable) t = usher_host_table_new(900);
  UsherHost *v6 = add(t, "2001:DB8::a", 50, NULL);
  add(t, "127.0.2.1", 50, NULL);
  g_assert_cmpstr(v6->ip_str, ==, "2001:db8::a");
  /* The point string is the canonical, lowercase, compressed text. */
  guint8 d[16];
  usher_md5("2001:db8::a-7", strlen("2001:db8::a-7"), d);
  g_assert_cmpuint(usher_vhost_point_hash(&v6->ip, 7), ==, usher_md5_prefix32(d));
  /* IPv4 hosts sort before IPv6. */
  g_assert_cmpstr(usher_host_table_nth(t, 0)->ip_str, ==, "127.0.2.1");
  const UsherVhostRing *ring = usher_tag_get_ring(t, usher_host_table_find_tag(t, ""));
  g_assert_cmpuint(usher_vhost_ring_n_points(ring), ==, 100);
  guint64 arc = usher_vhost_ring_arc_of(ring, v6->id);
  g_assert_cmpuint(arc, >, 0);
  g_assert_cmpuint(arc, <, G_GUINT64_CONSTANT(1) << 32);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/core/vhost-ring/reference-mapping", test_reference_mapping);
  g_test_add_func("/core/vhost-ring/worked-example", test_worked_example);
  g_test_add_func("/core/vhost-ring/wrap-around", test_wrap_around);
  g_test_add_func("/core/vhost-ring/ties", test_ties);
  g_test_add_func("/core/vhost-ring/tags", test_tags);
  g_test_add_func("/core/vhost-ring/ipv6", test_ipv6);
  return g_test_run();
}

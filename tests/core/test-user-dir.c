/* test-user-dir.c - the user directory: order, expiry, counts, and a randomized model check. */
#include "libcore/host.h"
#include "libcore/rng.h"

#include "test-util.h"

static void
assert_ok(UsherUserDir *dir)
{
  const char *why = NULL;
  if (!usher_user_dir_check(dir, &why))
    g_error("user directory invariant broken: %s", why);
}

static void
assert_order(UsherUserDir *dir, const guint32 *hashes, guint n)
{
  UsherUser *u = usher_user_dir_oldest(dir);
  for (guint i = 0; i < n; i++) {
    g_assert_nonnull(u);
    g_assert_cmpuint(u->hash, ==, hashes[i]);
    u = usher_user_dir_next(dir, u);
  }
  g_assert_null(u);
}

static void
test_basic(void)
{
  g_autoptr(UsherUserDir) dir = usher_user_dir_new(NULL, 900);
  g_assert_null(usher_user_dir_lookup(dir, 5));
  UsherUser *u = usher_user_dir_add(dir, 5, 1, 1000, 1000);
  g_assert_nonnull(u);
  g_assert_true(usher_user_dir_lookup(dir, 5) == u);
  g_assert_cmpuint(u->timestamp, ==, 1000);
  g_assert_cmpuint(usher_user_dir_count(dir), ==, 1);
  /* Timestamps never go into the future or backwards. */
  UsherUser *v = usher_user_dir_add(dir, 6, 1, 5000, 1001);
  g_assert_cmpuint(v->timestamp, ==, 1001);
  usher_user_dir_refresh(dir, v, 900, 1002);
  g_assert_cmpuint(v->timestamp, ==, 1001);
  usher_user_dir_refresh(dir, u, 1002, 1002);
  g_assert_cmpuint(u->timestamp, ==, 1002);
  guint32 order[] = {6, 5};
  assert_order(dir, order, 2);
  usher_user_dir_remove(dir, u);
  g_assert_null(usher_user_dir_lookup(dir, 5));
  g_assert_cmpuint(usher_user_dir_count(dir), ==, 1);
  assert_ok(dir);
}

/* Storage order visits every live entry once, free ones read hash 0, and a prefetch of any hash
 * (present or not) changes nothing. */
static void
test_stored_order(void)
{
  g_autoptr(UsherUserDir) dir = usher_user_dir_new(NULL, 900);
  for (guint32 h = 1; h <= 5000; h++)
    usher_user_dir_add(dir, h * 2654435761u, 1, 1000 + h % 7, 1010);
  for (guint32 h = 1; h <= 5000; h += 3)
    usher_user_dir_remove(dir, usher_user_dir_lookup(dir, h * 2654435761u));
  for (guint32 h = 0; h < 100; h++)
    usher_user_dir_prefetch(dir, h);
  g_autoptr(GHashTable) seen = g_hash_table_new(NULL, NULL);
  guint live = 0;
  for (guint32 i = 0; i < usher_user_dir_n_stored(dir); i++) {
    UsherUser *u = usher_user_dir_stored(dir, i);
    if (u->hash == 0)
      continue;
    live++;
    g_assert_true(usher_user_dir_lookup(dir, u->hash) == u);
    g_assert_true(g_hash_table_add(seen, GUINT_TO_POINTER(u->hash)));
  }
  g_assert_cmpuint(live, ==, usher_user_dir_count(dir));
  g_assert_cmpuint(live, ==, 5000 - 1667);
  g_assert_cmpuint(usher_user_dir_n_stored(dir), ==, 5000);
  assert_ok(dir);
}

static void
test_out_of_order_inserts(void)
{
  /* Users arriving from a handshake carry old timestamps; the list must stay sorted. */
  g_autoptr(UsherUserDir) dir = usher_user_dir_new(NULL, 900);
  usher_user_dir_add(dir, 1, 1, 100, 1000);
  usher_user_dir_add(dir, 2, 1, 300, 1000);
  usher_user_dir_add(dir, 3, 1, 200, 1000);
  usher_user_dir_add(dir, 4, 1, 50, 1000);
  usher_user_dir_add(dir, 5, 1, 300, 1000);
  guint32 order[] = {4, 1, 3, 2, 5}; /* equal stamps keep insertion order */
  assert_order(dir, order, 5);
  usher_user_dir_refresh(dir, usher_user_dir_lookup(dir, 4), 250, 1000);
  guint32 order2[] = {1, 3, 4, 2, 5};
  assert_order(dir, order2, 5);
  g_assert_cmpuint(usher_user_dir_oldest(dir)->hash, ==, 1);
  g_assert_cmpuint(usher_user_dir_newest(dir)->hash, ==, 5);
  assert_ok(dir);
}

static void
test_expiry(void)
{
  g_autoptr(UsherUserDir) dir = usher_user_dir_new(NULL, 900);
  g_assert_cmpint(usher_user_dir_next_deadline(dir), ==, G_MAXINT64);
  usher_user_dir_add(dir, 1, 1, 1000, 1000);
  usher_user_dir_add(dir, 2, 1, 1010, 1010);
  usher_user_dir_add(dir, 3, 1, 1020, 1020);
  g_assert_cmpint(usher_user_dir_next_deadline(dir), ==, 1900);

  UsherExpireStats st;
  usher_user_dir_expire(dir, 1899, &st);
  g_assert_cmpuint(st.expired, ==, 0);
  g_assert_cmpuint(usher_user_dir_count(dir), ==, 3);
  /* Live while timestamp + expire > now: expires exactly at 1900. */
  usher_user_dir_expire(dir, 1900, &st);
  g_assert_cmpuint(st.expired, ==, 1);
  g_assert_null(usher_user_dir_lookup(dir, 1));
  g_assert_cmpint(usher_user_dir_next_deadline(dir), ==, 1910);

  /* A refresh pushes the deadline out. */
  usher_user_dir_refresh(dir, usher_user_dir_lookup(dir, 2), 1500, 1500);
  g_assert_cmpint(usher_user_dir_next_deadline(dir), ==, 1920);
  usher_user_dir_expire(dir, 2399, &st);
  g_assert_cmpuint(st.expired, ==, 1);
  g_assert_cmpuint(usher_user_dir_count(dir), ==, 1);
  usher_user_dir_expire(dir, 2400, &st);
  g_assert_cmpuint(usher_user_dir_count(dir), ==, 0);
  g_assert_cmpint(usher_user_dir_next_deadline(dir), ==, G_MAXINT64);
  assert_ok(dir);
}

static void
test_expiry_kept_entries(void)
{
  g_autoptr(UsherUserDir) dir = usher_user_dir_new(NULL, 100);
  UsherUser *killing = usher_user_dir_add(dir, 1, 1, 0, 0);
  UsherUser *weak = usher_user_dir_add(dir, 2, 1, 10, 10);
  usher_user_dir_add(dir, 3, 1, 20, 20);
  killing->kill_state = USHER_KILL_KILLING;
  weak->weak = 1;

  UsherExpireStats st;
  usher_user_dir_expire(dir, 115, &st);
  /* 1 kept (kill running), 2 kept (weak grace until 140), 3 not yet due (120). */
  g_assert_cmpuint(st.kill_kept, ==, 1);
  g_assert_cmpuint(st.expired, ==, 0);
  g_assert_cmpuint(usher_user_dir_count(dir), ==, 3);
  g_assert_cmpint(usher_user_dir_next_deadline(dir), ==, 120);
  usher_user_dir_expire(dir, 120, &st);
  g_assert_cmpuint(st.expired, ==, 1);
  g_assert_cmpint(usher_user_dir_next_deadline(dir), ==, 140); /* weak grace end */
  usher_user_dir_expire(dir, 140, &st);
  g_assert_cmpuint(st.weak_dropped, ==, 1);
  /* Only the killing entry is left: retried 60 s after the last pass. */
  g_assert_cmpint(usher_user_dir_next_deadline(dir), ==, 200);
  /* Once the kill has finished the entry is due at once. */
  killing->kill_state = USHER_KILL_NONE;
  g_assert_cmpint(usher_user_dir_next_deadline(dir), ==, 100);
  usher_user_dir_expire(dir, 141, &st);
  g_assert_cmpuint(st.expired, ==, 1);
  g_assert_cmpuint(usher_user_dir_count(dir), ==, 0);
}

static void
test_predicates(void)
{
  g_autoptr(UsherUserDir) dir = usher_user_dir_new(NULL, 900);
  g_assert_cmpuint(usher_user_dir_near_expiring_secs(dir), ==, 30);
  UsherUser *u = usher_user_dir_add(dir, 1, 1, 1000, 1000);
  g_assert_false(usher_user_dir_is_near_expiring(dir, u, 1870));
  g_assert_true(usher_user_dir_is_near_expiring(dir, u, 1871));
  g_assert_true(usher_user_dir_is_recently_updated(dir, u, 1450));
  g_assert_false(usher_user_dir_is_recently_updated(dir, u, 1451));
  g_assert_false(usher_user_dir_is_expired(dir, u, 1899));
  g_assert_true(usher_user_dir_is_expired(dir, u, 1900));
  g_autoptr(UsherUserDir) small = usher_user_dir_new(NULL, 10);
  g_assert_cmpuint(usher_user_dir_near_expiring_secs(small), ==, 3);
  g_autoptr(UsherUserDir) mid = usher_user_dir_new(NULL, 120);
  g_assert_cmpuint(usher_user_dir_near_expiring_secs(mid), ==, 12);
  g_assert_cmpstr(usher_kill_state_name(USHER_KILL_WAITING_FOR_EVERYONE), ==,
                  "waiting-for-everyone");
}

static void
test_host_counts(void)
{
  g_autoptr(UsherHostTable) t = usher_host_table_new(900);
  UsherIp a = test_ip("127.0.2.1"), b = test_ip("127.0.2.2");
  UsherHost *ha = usher_host_table_add(t, &a, NULL, 100, NULL);
  UsherHost *hb = usher_host_table_add(t, &b, NULL, 100, NULL);
  UsherUserDir *dir = usher_host_table_find_tag(t, "")->users;
  for (guint32 h = 1; h <= 100; h++)
    usher_user_dir_add(dir, h, h % 2 ? ha->id : hb->id, 1000, 1000);
  g_assert_cmpuint(ha->user_count, ==, 50);
  g_assert_cmpuint(hb->user_count, ==, 50);
  usher_user_dir_set_host(dir, usher_user_dir_lookup(dir, 1), hb->id);
  g_assert_cmpuint(ha->user_count, ==, 49);
  g_assert_cmpuint(hb->user_count, ==, 51);
  usher_user_dir_remove(dir, usher_user_dir_lookup(dir, 2));
  g_assert_cmpuint(hb->user_count, ==, 50);
  g_assert_cmpuint(usher_host_table_flush(t, ha), ==, 49);
  g_assert_cmpuint(ha->user_count, ==, 0);
  usher_user_dir_expire(dir, 1900, NULL);
  g_assert_cmpuint(hb->user_count, ==, 0);
  g_assert_cmpuint(usher_user_dir_count(dir), ==, 0);
}

/* Random operations against a simple model (a GHashTable), with every invariant checked. */
static void
test_random_model(void)
{
  g_autoptr(UsherUserDir) dir = usher_user_dir_new(NULL, 300);
  g_autoptr(GHashTable) model = g_hash_table_new(NULL, NULL); /* hash -> timestamp */
  UsherRng rng;
  usher_rng_seed(&rng, 2026);
  gint64 now = 100000;
  for (int step = 0; step < 200000; step++) {
    /* Few distinct hashes, with hash-table-hostile patterns (same low bits), so the index sees
     * long probe chains and backward-shift deletions. */
    guint32 hash = (guint32)(usher_rng_below(&rng, 5000) << 16) | 7u;
    guint op = (guint)usher_rng_below(&rng, 10);
    UsherUser *u = usher_user_dir_lookup(dir, hash);
    gpointer mv;
    gboolean in_model = g_hash_table_lookup_extended(model, GUINT_TO_POINTER(hash), NULL, &mv);
    g_assert_cmpint(u != NULL, ==, in_model);
    if (u != NULL)
      g_assert_cmpuint(u->timestamp, ==, GPOINTER_TO_UINT(mv));
    if (op < 5) {
      gint64 ts = now - (gint64)usher_rng_below(&rng, 200);
      if (u == NULL) {
        usher_user_dir_add(dir, hash, 1, ts, now);
        g_hash_table_insert(model, GUINT_TO_POINTER(hash), GUINT_TO_POINTER((guint)ts));
      } else {
        usher_user_dir_refresh(dir, u, ts, now);
        guint newts = MAX(GPOINTER_TO_UINT(mv), (guint)ts);
        g_hash_table_insert(model, GUINT_TO_POINTER(hash), GUINT_TO_POINTER(newts));
      }
    } else if (op < 7) {
      if (u != NULL) {
        usher_user_dir_remove(dir, u);
        g_hash_table_remove(model, GUINT_TO_POINTER(hash));
      }
    } else if (op == 7) {
      now += (gint64)usher_rng_below(&rng, 5);
      usher_user_dir_expire(dir, now, NULL);
      GHashTableIter it;
      gpointer k, v;
      g_hash_table_iter_init(&it, model);
      while (g_hash_table_iter_next(&it, &k, &v))
        if ((gint64)GPOINTER_TO_UINT(v) + 300 <= now)
          g_hash_table_iter_remove(&it);
    }
    g_assert_cmpuint(usher_user_dir_count(dir), ==, g_hash_table_size(model));
    if (step % 5000 == 0)
      assert_ok(dir);
  }
  assert_ok(dir);
  usher_user_dir_clear(dir);
  g_assert_cmpuint(usher_user_dir_count(dir), ==, 0);
  assert_ok(dir);
}

static void
test_memory(void)
{
  g_autoptr(UsherUserDir) dir = usher_user_dir_new(NULL, 900);
  gsize empty = usher_user_dir_memory_bytes(dir);
  for (guint32 h = 1; h <= 100000; h++)
    usher_user_dir_add(dir, h * 2654435761u | 1, 1, 1000, 1000);
  gsize full = usher_user_dir_memory_bytes(dir);
  /* 24-byte entries plus 8-byte slots, 1.33 to 2.67 per user (here just after a doubling). */
  g_assert_cmpuint(full - empty, <=, (gsize)100000 * 48);
  assert_ok(dir);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/core/user-dir/basic", test_basic);
  g_test_add_func("/core/user-dir/stored-order", test_stored_order);
  g_test_add_func("/core/user-dir/out-of-order-inserts", test_out_of_order_inserts);
  g_test_add_func("/core/user-dir/expiry", test_expiry);
  g_test_add_func("/core/user-dir/expiry-kept-entries", test_expiry_kept_entries);
  g_test_add_func("/core/user-dir/predicates", test_predicates);
  g_test_add_func("/core/user-dir/host-counts", test_host_counts);
  g_test_add_func("/core/user-dir/random-model", test_random_model);
  g_test_add_func("/core/user-dir/memory", test_memory);
  return g_test_run();
}

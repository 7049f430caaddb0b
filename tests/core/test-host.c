/* test-host.c - the host table: lifecycle, tags, counts, and the hosts_hash fingerprint. */
#include "libcore/host.h"

#include "test-util.h"

static UsherHost *
add(UsherHostTable *t, const char *ip, guint vhosts, const char *tag)
{
  UsherIp addr = test_ip(ip);
  return usher_host_table_add(t, &addr, tag, vhosts, NULL);
}

static UsherHost *
find(UsherHostTable *t, const char *ip)
{
  UsherIp addr = test_ip(ip);
  return usher_host_table_lookup(t, &addr);
}

static void
test_lifecycle(void)
{
  g_autoptr(UsherHostTable) t = usher_host_table_new(900);
  UsherHost *c = add(t, "127.0.2.3", 100, NULL);
  UsherHost *a = add(t, "127.0.2.1", 100, NULL);
  UsherHost *b = add(t, "127.0.2.2", 100, NULL);
  g_assert_nonnull(a);
  g_assert_null(add(t, "127.0.2.2", 5, NULL)); /* duplicate IP refused */
  g_assert_cmpuint(usher_host_table_n_hosts(t), ==, 3);
  g_assert_true(usher_host_table_nth(t, 0) == a);
  g_assert_true(usher_host_table_nth(t, 1) == b);
  g_assert_true(usher_host_table_nth(t, 2) == c);
  g_assert_true(find(t, "127.0.2.2") == b);
  g_assert_null(find(t, "127.0.2.4"));
  g_assert_true(usher_host_table_get(t, b->id) == b);
  g_assert_null(usher_host_table_get(t, USHER_HOST_ID_NONE));
  g_assert_null(usher_host_table_get(t, 999));

  guint64 gen = usher_host_table_get_generation(t);
  UsherHostId old_b = b->id;
  usher_host_table_remove(t, b);
  g_assert_cmpuint(usher_host_table_get_generation(t), >, gen);
  g_assert_null(find(t, "127.0.2.2"));
  g_assert_null(usher_host_table_get(t, old_b));
  /* Ids are reused after removal. */
  UsherHost *d = add(t, "10.0.0.1", 7, NULL);
  g_assert_cmpuint(d->id, ==, old_b);
  g_assert_true(usher_host_table_nth(t, 0) == d);

  /* No-op changes do not bump the generation. */
  gen = usher_host_table_get_generation(t);
  usher_host_table_set_vhost_count(t, d, 7);
  usher_host_table_set_down(t, d, FALSE, 0);
  g_assert_cmpuint(usher_host_table_get_generation(t), ==, gen);
  usher_host_table_set_down(t, d, TRUE, 500);
  g_assert_true(d->down);
  g_assert_cmpint(d->last_updown_change, ==, 500);
  usher_host_table_set_down(t, d, TRUE, 600); /* no change: the time stays */
  g_assert_cmpint(d->last_updown_change, ==, 500);
  usher_host_table_set_down(t, d, FALSE, 400); /* a change records its own time */
  g_assert_cmpint(d->last_updown_change, ==, 400);
  usher_host_table_set_hostname(t, d, "imap1.example.com");
  g_assert_cmpstr(d->hostname, ==, "imap1.example.com");
  usher_host_table_set_hostname(t, d, "");
  g_assert_null(d->hostname);
}

/* The per-host counts agree with the directory, removed entries included; a count that does
 * not is found and named. */
static void
test_check_counts(void)
{
  g_autoptr(UsherHostTable) t = usher_host_table_new(900);
  UsherHost *a = add(t, "127.0.2.1", 100, NULL);
  UsherHost *b = add(t, "127.0.2.2", 100, NULL);
  UsherTag *def = usher_host_table_find_tag(t, "");
  for (guint32 h = 1; h <= 300; h++)
    usher_user_dir_add(def->users, h, h % 3 == 0 ? a->id : b->id, 100, 100);
  for (guint32 h = 1; h <= 300; h += 4)
    usher_user_dir_remove(def->users, usher_user_dir_lookup(def->users, h));
  g_autofree char *why = NULL;
  g_assert_true(usher_host_table_check_counts(t, &why));
  g_assert_null(why);
  a->user_count++;
  g_assert_false(usher_host_table_check_counts(t, &why));
  g_assert_nonnull(strstr(why, "host 127.0.2.1 counts"));
  a->user_count--;
}

static void
test_tag_change_drops_users(void)
{
  g_autoptr(UsherHostTable) t = usher_host_table_new(900);
  UsherHost *a = add(t, "127.0.2.1", 100, NULL);
  UsherHost *b = add(t, "127.0.2.2", 100, NULL);
  UsherTag *def = usher_host_table_find_tag(t, "");
  for (guint32 h = 1; h <= 10; h++)
    usher_user_dir_add(def->users, h, h <= 6 ? a->id : b->id, 100, 100);
  g_assert_cmpuint(a->user_count, ==, 6);
  usher_host_table_set_tag(t, a, "eu");
  g_assert_cmpstr(a->tag->name, ==, "eu");
  g_assert_cmpuint(a->user_count, ==, 0);
  g_assert_cmpuint(usher_user_dir_count(def->users), ==, 4);
  /* The default ring now only has b. */
  for (guint32 h = 1; h < 1000000000; h += 99999989)
    g_assert_true(usher_tag_place(t, def, h) == b);
  UsherTag *eu = usher_host_table_find_tag(t, "eu");
  g_assert_true(usher_tag_place(t, eu, 12345) == a);
  /* Removing a host drops its users (no kick, as in Dovecot). */
  usher_host_table_remove(t, b);
  g_assert_cmpuint(usher_user_dir_count(def->users), ==, 0);
  g_assert_null(usher_tag_place(t, def, 12345));
}

static void
test_hosts_hash(void)
{
  /* Values captured from a real Dovecot 2.3.19.1 director (spec 2.7). */
  g_autoptr(UsherHostTable) t = usher_host_table_new(900);
  add(t, "127.0.2.1", 100, NULL);
  UsherHost *h2 = add(t, "127.0.2.2", 100, NULL);
  UsherHost *h3 = add(t, "127.0.2.3", 100, NULL);
  g_assert_cmpuint(usher_host_table_hosts_hash(t), ==, 2123223524u);
  usher_host_table_set_vhost_count(t, h2, 50);
  g_assert_cmpuint(usher_host_table_hosts_hash(t), ==, 3846533220u);
  usher_host_table_set_down(t, h2, TRUE, 1);
  g_assert_cmpuint(usher_host_table_hosts_hash(t), ==, 1261298165u);
  usher_host_table_remove(t, h3);
  g_assert_cmpuint(usher_host_table_hosts_hash(t), ==, 2696787796u);
  add(t, "127.0.2.3", 100, "tagx");
  g_assert_cmpuint(usher_host_table_hosts_hash(t), ==, 550687579u);
  add(t, "::1", 7, NULL);
  g_assert_cmpuint(usher_host_table_hosts_hash(t), ==, 3674985853u);
  /* An empty table never hashes to 0. */
  g_autoptr(UsherHostTable) empty = usher_host_table_new(900);
  g_assert_cmpuint(usher_host_table_hosts_hash(empty), ==, 1);
}

static void
test_limits(void)
{
  g_autoptr(UsherHostTable) t = usher_host_table_new(900);
  for (guint i = 0; i < USHER_HOSTS_MAX; i++) {
    g_autofree char *ip = g_strdup_printf("10.%u.%u.1", i / 256, i % 256);
    g_assert_nonnull(add(t, ip, 1, NULL));
  }
  g_assert_null(add(t, "11.0.0.1", 1, NULL));
  g_assert_cmpuint(usher_host_table_n_hosts(t), ==, USHER_HOSTS_MAX);
}

/* The address index: every host present is found after adds (growing the index) and removes
 * (rebuilding it), IPv4 and IPv6 mixed; absent addresses are not. */
static void
test_address_index(void)
{
  g_autoptr(UsherHostTable) t = usher_host_table_new(900);
  GRand *rand = g_rand_new_with_seed(7);
  gboolean present[600] = {FALSE};
  for (guint round = 0; round < 4000; round++) {
    guint i = (guint)g_rand_int_range(rand, 0, G_N_ELEMENTS(present));
    g_autofree char *text = i % 2 == 0 ? g_strdup_printf("10.%u.%u.1", i / 256, i % 256)
                                        : g_strdup_printf("fd00::%x:1", i);
    UsherIp ip = test_ip(text);
    UsherHost *h = usher_host_table_lookup(t, &ip);
    g_assert_true((h != NULL) == present[i]);
    if (h != NULL) {
      g_assert_true(usher_ip_equal(&h->ip, &ip));
      g_assert_true(usher_host_table_lookup_const(t, &ip) == h);
      if (g_rand_boolean(rand)) {
        usher_host_table_remove(t, h);
        present[i] = FALSE;
      }
    } else {
      g_assert_nonnull(usher_host_table_add(t, &ip, NULL, 10, NULL));
      present[i] = TRUE;
    }
  }
  guint n = 0;
  for (guint i = 0; i < G_N_ELEMENTS(present); i++)
    n += present[i];
  g_assert_cmpuint(usher_host_table_n_hosts(t), ==, n);
  for (guint i = 0; i < usher_host_table_n_hosts(t); i++) {
    UsherHost *h = usher_host_table_nth(t, i);
    g_assert_true(usher_host_table_lookup(t, &h->ip) == h);
  }
  g_rand_free(rand);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/core/host/lifecycle", test_lifecycle);
  g_test_add_func("/core/host/check-counts", test_check_counts);
  g_test_add_func("/core/host/tag-change-drops-users", test_tag_change_drops_users);
  g_test_add_func("/core/host/hosts-hash", test_hosts_hash);
  g_test_add_func("/core/host/limits", test_limits);
  g_test_add_func("/core/host/address-index", test_address_index);
  return g_test_run();
}

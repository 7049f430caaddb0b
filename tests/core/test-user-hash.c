/* test-user-hash.c - director_username_hash compatibility with Dovecot 2.3. */
#include "libcore/md5.h"
#include "libcore/user-hash.h"

#include <string.h>

/* Reference: MD5 of the already-expanded text, first four bytes big-endian, 0 -> 1. */
static guint32
ref_hash(const char *expanded, gsize len)
{
  guint8 d[16];
  gsize dlen = 16;
  GChecksum *ck = g_checksum_new(G_CHECKSUM_MD5);
  g_checksum_update(ck, (const guchar *)expanded, (gssize)len);
  g_checksum_get_digest(ck, d, &dlen);
  g_checksum_free(ck);
  guint32 h = usher_md5_prefix32(d);
  return h == 0 ? 1 : h;
}

static void
test_dovecot_vectors(void)
{
  /* The vectors Dovecot ships with its own test-mail-user-hash.c. */
  /* (Dovecot's vector hashes an empty format; the same empty text comes from "%u" and "".) */
  g_assert_cmpuint(usher_user_hash("", -1, "%u"), ==, 3558706393u);
  /* A format that names no part of the user (a typo for %Lu) would put every user on one
   * backend: refused. */
  g_autoptr(GError) error = NULL;
  g_assert_null(usher_hash_format_new("Lu", &error));
  g_assert_nonnull(strstr(error->message, "names no part of the user name"));
  g_clear_error(&error);
  g_assert_null(usher_hash_format_new("%%u", &error));
  g_assert_cmpuint(usher_user_hash("testuser", -1, "%u"), ==, 1570531526u);
  g_assert_cmpuint(usher_user_hash("testuser@domain", -1, "%u"), ==, 3813799143u);
  g_assert_cmpuint(usher_user_hash("testuser@domain", -1, "%d"), ==, 2908717800u);
  /* Spec 1.3, checked against a real director. */
  g_assert_cmpuint(usher_user_hash("user1", -1, "%Lu"), ==, 617210206u);
  g_assert_cmpuint(usher_user_hash("User1", -1, "%Lu"), ==, 617210206u);
  g_assert_cmpuint(usher_user_hash("test@example.com", -1, "%Lu"), ==, 1431318336u);
  g_assert_cmpuint(usher_user_hash("TEST@Example.COM", -1, "%Lu"), ==, 1431318336u);
  g_assert_cmpuint(usher_user_hash("user2", -1, "%Lu"), ==, 2119751227u);
  g_assert_cmpuint(usher_user_hash("user5", -1, "%Lu"), ==, 175708226u);
  /* %u keeps case. */
  g_assert_cmpuint(usher_user_hash("User1", -1, "%u"), !=, 617210206u);
}

static void
test_formats(void)
{
  static const struct {
    const char *fmt, *name, *expanded;
  } v[] = {
    {"%u", "Alice@Example.COM", "Alice@Example.COM"},
    {"%Lu", "Alice@Example.COM", "alice@example.com"},
    {"%Uu", "Alice@Example.COM", "ALICE@EXAMPLE.COM"},
    {"%n", "Alice@Example.COM", "Alice"},
    {"%Ln", "Alice@Example.COM", "alice"},
    {"%d", "Alice@Example.COM", "Example.COM"},
    {"%Ld", "Alice@Example.COM", "example.com"},
    {"%n", "NoDomain", "NoDomain"},
    {"%d", "NoDomain", ""},
    {"%Ld", "a@b@C", "b@c"},
    {"%Ln", "a@b@C", "a"},
    {"%{user}", "Bob@X", "Bob@X"},
    {"%L{user}", "Bob@X", "bob@x"},
    {"%{username}", "Bob@X", "Bob"},
    {"%{domain}", "Bob@X", "X"},
    {"%n-%d", "Bob@X", "Bob-X"},
    {"%n 100%%", "Bob@X", "Bob 100%"},
    {"%Lu", "", ""},
  };
  for (gsize i = 0; i < G_N_ELEMENTS(v); i++) {
    guint32 got = usher_user_hash(v[i].name, -1, v[i].fmt);
    guint32 want = ref_hash(v[i].expanded, strlen(v[i].expanded));
    if (got != want)
      g_error("format %s name %s: got %u want %u", v[i].fmt, v[i].name, got, want);
  }
}

static void
test_non_ascii(void)
{
  /* Only A-Z are lowercased; UTF-8 and Latin-1 bytes pass through unchanged. */
  const char *name = "\xc3\x84Nna@B\xc3\xbcRO.example";
  const char *lower = "\xc3\x84nna@b\xc3\xbcro.example";
  g_assert_cmpuint(usher_user_hash(name, -1, "%Lu"), ==, ref_hash(lower, strlen(lower)));
  const char latin1[] = {'\xc4', 'B', '\xe9', 0};
  const char latin1_lower[] = {'\xc4', 'b', '\xe9', 0};
  g_assert_cmpuint(usher_user_hash(latin1, -1, "%Lu"), ==, ref_hash(latin1_lower, 3));
  /* A long name crosses the internal case-mapping buffer and MD5 blocks. */
  GString *big = g_string_new(NULL), *big_lower = g_string_new(NULL);
  for (int i = 0; i < 3000; i++) {
    char c = (char)("AbC\xffZ@"[i % 6]);
    g_string_append_c(big, c);
    g_string_append_c(big_lower, (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c);
  }
  g_assert_cmpuint(usher_user_hash(big->str, (gssize)big->len, "%Lu"), ==,
                   ref_hash(big_lower->str, big_lower->len));
  g_string_free(big, TRUE);
  g_string_free(big_lower, TRUE);
  /* Inner and outer spaces are part of the name. */
  g_assert_cmpuint(usher_user_hash(" a b ", -1, "%Lu"), ==, ref_hash(" a b ", 5));
}

static void
test_bad_formats(void)
{
  const char *bad[] = {"%", "%x", "%L", "%Lx", "%{", "%{user", "%{nope}", "%Lu%", "%1u", "%{}"};
  for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
    g_autoptr(GError) error = NULL;
    UsherHashFormat *f = usher_hash_format_new(bad[i], &error);
    if (f != NULL)
      g_error("format \"%s\" was accepted", bad[i]);
    g_assert_error(error, USHER_HASH_FORMAT_ERROR, 0);
    g_assert_nonnull(strstr(error->message, "unsupported variable"));
  }
}

static void
test_reuse(void)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(UsherHashFormat) f = usher_hash_format_new("%Ld", &error);
  g_assert_no_error(error);
  g_assert_cmpstr(usher_hash_format_get_text(f), ==, "%Ld");
  g_assert_cmpuint(usher_hash_format_user(f, "a@X.org", -1), ==,
                   usher_hash_format_user(f, "b@x.ORG", -1));
  g_assert_cmpuint(usher_hash_format_user(f, "a@x.org", 3), ==, ref_hash("x", 1));
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/core/user-hash/dovecot-vectors", test_dovecot_vectors);
  g_test_add_func("/core/user-hash/formats", test_formats);
  g_test_add_func("/core/user-hash/non-ascii", test_non_ascii);
  g_test_add_func("/core/user-hash/bad-formats", test_bad_formats);
  g_test_add_func("/core/user-hash/reuse", test_reuse);
  return g_test_run();
}

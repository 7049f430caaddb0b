/* test-md5.c - RFC 1321 test suite, and random inputs fed in random pieces against GChecksum. */
#include "libcore/md5.h"
#include "libcore/rng.h"

#include <string.h>

static char *
hex(const guint8 d[16])
{
  GString *s = g_string_new(NULL);
  for (int i = 0; i < 16; i++)
    g_string_append_printf(s, "%02x", d[i]);
  return g_string_free(s, FALSE);
}

static void
test_rfc1321(void)
{
  static const struct {
    const char *in, *out;
  } v[] = {
    {"", "d41d8cd98f00b204e9800998ecf8427e"},
    {"a", "0cc175b9c0f1b6a831c399e269772661"},
    {"abc", "900150983cd24fb0d6963f7d28e17f72"},
    {"message digest", "f96b697d7cb7938d525a2f31aaf161d0"},
    {"abcdefghijklmnopqrstuvwxyz", "c3fcd3d76192e4007dfb496cca67e13b"},
    {"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
     "d174ab98d277d9f5a5611c2c9f419d9f"},
    {"12345678901234567890123456789012345678901234567890123456789012345678901234567890",
     "57edf4a22be3c955ac49da2e2107b67a"},
  };
  for (gsize i = 0; i < G_N_ELEMENTS(v); i++) {
    guint8 d[16];
    usher_md5(v[i].in, strlen(v[i].in), d);
    g_autofree char *h = hex(d);
    g_assert_cmpstr(h, ==, v[i].out);
  }
  guint8 d[16];
  usher_md5("user1", 5, d);
  g_assert_cmpuint(usher_md5_prefix32(d), ==, 0x24c9e15e);
}

static void
test_random_pieces(void)
{
  UsherRng rng;
  usher_rng_seed(&rng, 7);
  guint8 data[1000];
  for (int n = 0; n < 3000; n++) {
    gsize len = usher_rng_below(&rng, sizeof(data) + 1);
    for (gsize i = 0; i < len; i++)
      data[i] = (guint8)usher_rng_next_u32(&rng);
    UsherMd5 ctx;
    usher_md5_init(&ctx);
    gsize pos = 0;
    while (pos < len) {
      gsize draw = usher_rng_below(&rng, 130); /* MIN() evaluates twice */
      gsize piece = MIN(len - pos, draw);
      usher_md5_update(&ctx, data + pos, piece);
      pos += piece;
    }
    guint8 ours[16], theirs[16];
    gsize theirs_len = sizeof(theirs);
    usher_md5_final(&ctx, ours);
    GChecksum *ck = g_checksum_new(G_CHECKSUM_MD5);
    g_checksum_update(ck, data, (gssize)len);
    g_checksum_get_digest(ck, theirs, &theirs_len);
    g_checksum_free(ck);
    g_assert_cmpmem(ours, 16, theirs, 16);
  }
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/core/md5/rfc1321", test_rfc1321);
  g_test_add_func("/core/md5/random-pieces", test_random_pieces);
  return g_test_run();
}

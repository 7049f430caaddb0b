/* rng.c - splitmix64 seeding and xoshiro256** generation (both public-domain algorithms by
 * Vigna et al.), written for this project. Integer-only. */
#include "libcore/rng.h"

guint64
usher_splitmix64(guint64 *state)
{
  guint64 z = (*state += G_GUINT64_CONSTANT(0x9e3779b97f4a7c15));
  z = (z ^ (z >> 30)) * G_GUINT64_CONSTANT(0xbf58476d1ce4e5b9);
  z = (z ^ (z >> 27)) * G_GUINT64_CONSTANT(0x94d049bb133111eb);
  return z ^ (z >> 31);
}

void
usher_rng_seed(UsherRng *rng, guint64 seed)
{
  guint64 sm = seed;
  for (int i = 0; i < 4; i++)
    rng->s[i] = usher_splitmix64(&sm);
  /* xoshiro must not start from the all-zero state; splitmix64 never yields four zeros, but be
   * explicit about the invariant. */
  g_assert(rng->s[0] | rng->s[1] | rng->s[2] | rng->s[3]);
}

static inline guint64
rotl64(guint64 x, int k)
{
  return (x << k) | (x >> (64 - k));
}

guint64
usher_rng_next_u64(UsherRng *rng)
{
  guint64 *s = rng->s;
  guint64 result = rotl64(s[1] * 5, 7) * 9;
  guint64 t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl64(s[3], 45);
  return result;
}

guint32
usher_rng_next_u32(UsherRng *rng)
{
  return (guint32)(usher_rng_next_u64(rng) >> 32);
}

guint64
usher_rng_below(UsherRng *rng, guint64 bound)
{
  g_assert(bound > 0);
  /* Lemire's nearly-divisionless method with 128-bit products: unbiased. */
  guint64 x = usher_rng_next_u64(rng);
  unsigned __int128 m = (unsigned __int128)x * bound;
  guint64 low = (guint64)m;
  if (low < bound) {
    guint64 threshold = (0 - bound) % bound;
    while (low < threshold) {
      x = usher_rng_next_u64(rng);
      m = (unsigned __int128)x * bound;
      low = (guint64)m;
    }
  }
  return (guint64)(m >> 64);
}

gint64
usher_rng_range(UsherRng *rng, gint64 lo, gint64 hi)
{
  g_assert(lo <= hi);
  guint64 span = (guint64)hi - (guint64)lo;
  if (span == G_MAXUINT64)
    return (gint64)usher_rng_next_u64(rng);
  return (gint64)((guint64)lo + usher_rng_below(rng, span + 1));
}

void
usher_rng_fork(UsherRng *rng, UsherRng *child_out)
{
  usher_rng_seed(child_out, usher_rng_next_u64(rng));
}

/* rng.h - the only source of randomness in libcore: an integer-only, explicitly seeded PRNG.
 *
 * xoshiro256** seeded through splitmix64. The driver seeds it (getrandom in the daemon, the run
 * seed in the simulator). No floating point: bounded draws use Lemire's unbiased multiply-shift.
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

typedef struct {
  guint64 s[4];
} UsherRng;

/* One splitmix64 step: advances *state and returns the next output. Used to derive sub-seeds. */
guint64 usher_splitmix64(guint64 *state);

void usher_rng_seed(UsherRng *rng, guint64 seed);
guint64 usher_rng_next_u64(UsherRng *rng);
guint32 usher_rng_next_u32(UsherRng *rng);
/* Uniform in [0, bound); bound must be > 0. */
guint64 usher_rng_below(UsherRng *rng, guint64 bound);
/* Uniform in [lo, hi] (inclusive); lo <= hi. */
gint64 usher_rng_range(UsherRng *rng, gint64 lo, gint64 hi);
/* A new generator whose stream is independent of rng's future output (for sub-components). */
void usher_rng_fork(UsherRng *rng, UsherRng *child_out);

G_END_DECLS

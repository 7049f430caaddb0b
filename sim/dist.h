/* dist.h - integer-only random durations (see scenario.h SimDist). */
#pragma once

#include "libcore/rng.h"
#include "sim/scenario.h"

G_BEGIN_DECLS

/* A sample of d in microseconds. */
gint64 sim_dist_sample(const SimDist *d, UsherRng *rng);
/* An exponential variable with mean 1, in 16.16 fixed point. */
guint64 sim_exp_fixed(UsherRng *rng);
/* log2(x) in 16.16 fixed point (x >= 1). */
guint64 sim_log2_fixed(guint64 x);

G_END_DECLS

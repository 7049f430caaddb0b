/* dist.h - integer-only random durations (microseconds) for the simulator and its network. */
#pragma once

#include "libcore/rng.h"

G_BEGIN_DECLS

typedef enum {
  SIM_DIST_FIXED,       /* a */
  SIM_DIST_UNIFORM,     /* a .. b */
  SIM_DIST_EXPONENTIAL, /* mean a */
  SIM_DIST_LOG_UNIFORM, /* a .. b, uniform in log scale */
} SimDistKind;

typedef struct {
  SimDistKind kind;
  gint64 a_us, b_us;
} SimDist;

/* A sample of d in microseconds. */
gint64 sim_dist_sample(const SimDist *d, UsherRng *rng);
/* An exponential variable with mean 1, in 16.16 fixed point. */
guint64 sim_exp_fixed(UsherRng *rng);
/* log2(x) in 16.16 fixed point (x >= 1). */
guint64 sim_log2_fixed(guint64 x);

G_END_DECLS

/* sim-swarm.h - random scenarios for "ushersim swarm". */
#pragma once

#include <glib.h>

/* The scenario (JSON text, transfer full) drawn from seed: 2-6 directors, 2-6 backends, a
 * workload, up to seven faults that all end well before the run does, and driver faults in some
 * seeds (drawn last; doc/scenarios.md, "The swarm"), with the invariant checks. The same seed
 * always gives the same text. */
char *sim_swarm_scenario(guint64 seed);

/* world.h - the simulated cluster: real libcore directors over a simulated network, backends,
 * clients and faults, driven by one event queue in virtual time.
 *
 * Deterministic: one seed drives everything (sub-seeds are derived per component and printed);
 * the same scenario and seed give the same output and fingerprint, byte for byte.
 */
#pragma once

#include "sim/scenario.h"

#include <stdio.h>

G_BEGIN_DECLS

typedef struct SimWorld SimWorld;

SimWorld *sim_world_new(const SimScenario *scenario, guint64 seed);
void sim_world_free(SimWorld *world);

/* Print every director log line (with virtual time) to out while running; NULL: off. */
void sim_world_set_log(SimWorld *world, FILE *out);

/* Runs the scenario to its end (or until the event budget is spent). */
void sim_world_run(SimWorld *world);

/* After the run: did every check and invariant hold? */
gboolean sim_world_passed(const SimWorld *world);
/* The failures (checks and invariants), each "when: what: why". */
const GPtrArray *sim_world_failures(const SimWorld *world);
guint64 sim_world_fingerprint(const SimWorld *world);
guint64 sim_world_events(const SimWorld *world);

void sim_world_print_summary(SimWorld *world, FILE *out);
JsonNode *sim_world_report_json(SimWorld *world);
/* The SVG chart of live sessions per backend over time, events marked. */
gboolean sim_world_write_chart(SimWorld *world, const char *path, GError **error);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(SimWorld, sim_world_free)

G_END_DECLS

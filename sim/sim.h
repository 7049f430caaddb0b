/* sim.h - ushersim subcommands. Each returns the process exit status:
 * 0 success, 1 a check failed, 2 bad input or usage. */
#pragma once

#include "libcore/host.h"

#include <glib.h>

#define USHERSIM_EXIT_OK 0
#define USHERSIM_EXIT_CHECK_FAILED 1
#define USHERSIM_EXIT_USAGE 2

int ushersim_cmd_map(int argc, char **argv);
/* The tag users are placed in (name "" for untagged), if it has a usable backend (up, at least
 * one vhost); else NULL with *error saying what is missing: no backend at all, no backend with
 * that tag (naming the tags there are), or none usable. `source` names the input. */
UsherTag *ushersim_usable_tag(UsherHostTable *table, const char *tag_name, const char *source,
                              GError **error);
int ushersim_cmd_bench_core(int argc, char **argv);
int ushersim_cmd_plan(int argc, char **argv);
int ushersim_cmd_run(int argc, char **argv);
int ushersim_cmd_replay(int argc, char **argv);
int ushersim_cmd_swarm(int argc, char **argv);
int ushersim_cmd_shrink(int argc, char **argv);


/* Runs scenario text (seed < 0: the scenario's own); returns the exit status. */
int ushersim_run_scenario_text(const char *text, const char *source, gint64 seed,
                               const char *report, const char *chart, const char *trace,
                               gboolean quiet, guint64 *fingerprint_out);

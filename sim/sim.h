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


/* Output files. ushersim_output_problem(): why path cannot be written as a file (empty, a
 * directory, in a directory that is missing or not writable), or NULL; checked before a run so
 * that a long run does not end in an error. ushersim_write_file(): replaces a regular file (or
 * makes a new one) through a temporary file and a rename, so a reader never sees half of it;
 * anything else that exists (a symbolic link, a FIFO, a device such as /dev/stdout) is opened
 * and written in place, never replaced. */
const char *ushersim_output_problem(const char *path);
gboolean ushersim_write_file(const char *path, const char *data, gsize len, GError **error);
/* The same for a directory that files will be written into (created if missing). */
const char *ushersim_output_dir_problem(const char *dir);

/* Reads a trace that `run --trace` wrote: its scenario (validated, as JSON text), seed, recorded
 * fingerprint and first recorded failure (NULL when it recorded none). On anything else prints
 * one line naming the file and the field ("<cmd>: FILE: seed: ...") and returns FALSE. */
gboolean ushersim_trace_read(const char *cmd, const char *path, char **scenario_out,
                             guint64 *seed_out, char **fingerprint_out, char **first_failure_out);

/* FALSE (after saying which, on standard error, as "<cmd>: ...") if an option of entries that
 * takes one value or none is given twice: GOption would keep the last one silently, and
 * "--max-moved 50 --max-moved 10" is a typo an operator should hear about. */
gboolean ushersim_options_once(const char *cmd, int argc, char **argv,
                               const GOptionEntry *entries);

/* Runs scenario text (seed < 0: the scenario's own); returns the exit status. */
int ushersim_run_scenario_text(const char *text, const char *source, gint64 seed,
                               const char *report, const char *chart, const char *trace,
                               gboolean quiet, guint64 *fingerprint_out);

/* main.c - ushersim: the cluster simulator, placement preview, change planning, benchmarks. */
#include "common/cli.h"
#include "sim/sim.h"

#include <stdio.h>
#include <string.h>

typedef struct {
  const char *name;
  int (*run)(int argc, char **argv);
  const char *summary;
} Command;

static const Command commands[] = {
  {"run", ushersim_cmd_run, "replay a scenario against real directors and check it"},
  {"replay", ushersim_cmd_replay, "run a recorded trace again and compare its fingerprint"},
  {"swarm", ushersim_cmd_swarm, "random clusters, workloads and faults with every invariant"},
  {"shrink", ushersim_cmd_shrink, "cut a failing trace down to a small regression scenario"},
  {"map", ushersim_cmd_map,
   "print the backend each user gets from a freshly started ring (Dovecot's \"Hashed\")"},
  {"plan", ushersim_cmd_plan,
   "what a configuration change moves, and whether it is safe to apply in one step"},
  {"bench-core", ushersim_cmd_bench_core,
   "measure placement, user directory speed and memory per user"},
};

static void
usage(FILE *out)
{
  fprintf(out, "Usage: ushersim COMMAND [OPTION...]\n\nCommands:\n");
  for (gsize i = 0; i < G_N_ELEMENTS(commands); i++)
    fprintf(out, "  %-12s %s\n", commands[i].name, commands[i].summary);
  fprintf(out, "\nRun 'ushersim COMMAND --help' for the options of a command.\n"
               "Exit status: 0 success, 1 a check failed, 2 bad input or usage.\n");
}

int
main(int argc, char **argv)
{
  usher_cli_init();
  if (argc < 2) {
    usage(stderr);
    return USHERSIM_EXIT_USAGE;
  }
  if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
      strcmp(argv[1], "help") == 0) {
    usage(stdout);
    return USHERSIM_EXIT_OK;
  }
  if (strcmp(argv[1], "--version") == 0) {
    printf("ushersim %s\n", USHER_VERSION);
    return USHERSIM_EXIT_OK;
  }
  for (gsize i = 0; i < G_N_ELEMENTS(commands); i++) {
    if (strcmp(argv[1], commands[i].name) == 0) {
      g_autofree char *prgname = g_strdup_printf("ushersim %s", commands[i].name);
      g_set_prgname(prgname); /* copies */
      return commands[i].run(argc - 1, argv + 1);
    }
  }
  fprintf(stderr, "ushersim: unknown command \"%s\"\n\n", argv[1]);
  usage(stderr);
  return USHERSIM_EXIT_USAGE;
}

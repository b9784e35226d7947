/* `paella`: the single-process command line. Dispatches to one function per subcommand. */
#include <stdio.h>
#include <string.h>

#include "cli/commands.h"
#include "cli/opts.h"
#include "proto/proto.h"

typedef struct {
  const char *name;
  int (*run)(int argc, char **argv);
  const char *help;
} command;

static const command commands[] = {
    {"generate", cmd_generate, "text to image (and editing) in one process"},
    {"models", cmd_models, "download the published checkpoints (models pull [--dir DIR])"},
    {"info", cmd_info, "print the generation parameters embedded in an image"},
    {"eval", cmd_eval, "run one network on a golden-convention safetensors file"},
    {"job", cmd_job, "encode / decode / validate wire-protocol jobs"},
    {"submit", cmd_submit, "submit a job to a scheduler (--url, --api-key)"},
    {"status", cmd_status, "show a job of a scheduler"},
    {"wait", cmd_wait, "wait for a job of a scheduler to finish"},
    {"fetch", cmd_fetch, "download a finished job's outputs (-o DIR)"},
    {"batch", cmd_batch, "submit / follow a bulk batch on a scheduler"},
    {"tokenize", cmd_tokenize, "print ByT5 or CLIP token ids of a text"},
};

static void usage(FILE *f) {
  fprintf(f, "usage: paella <command> [options]\n\ncommands:\n");
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].help);
  fprintf(f, "\n'paella <command> --help' describes each command; 'paella --version' the build.\n"
             "Exit status: 0 done, 1 failed while running (I/O, model, server), 2 bad command line.\n");
}

int main(int argc, char **argv) {
  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? CLI_EXIT_USAGE : CLI_EXIT_OK;
  }
  if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V")) {
    printf("%s\n", pw_build_description());
    return CLI_EXIT_OK;
  }
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    if (strcmp(argv[1], commands[i].name) == 0) return commands[i].run(argc - 1, argv + 1);
  fprintf(stderr, "paella: unknown command '%s'\n", argv[1]);
  usage(stderr);
  return CLI_EXIT_USAGE;
}

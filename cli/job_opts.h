/* The job options that `paella generate` and `paella submit` share: one option per API job
 * field, with the proto's range and default (proto/limits.h), so that both commands accept
 * and refuse exactly what the scheduler does. */
#ifndef PAELLA_CLI_JOB_OPTS_H
#define PAELLA_CLI_JOB_OPTS_H

#include <getopt.h>
#include <stdbool.h>

#include "proto/proto.h"

#define CLI_JOB_OPT_BASE 1000 /* getopt codes of the shared options start here */
#define CLI_JOB_SHORT_OPTS "W:H:s:n:"

typedef struct {
  pw_job job; /* id "cli"; has_seed set (seed 0 unless given) */
  const char *image_path, *mask_path;
  bool size_given, format_given, strength_given, variation;
  double strength;
} cli_job;

/* The shared options, for getopt_long (not terminated); cli_job_n_opts of them. */
extern const struct option cli_job_opts[];
extern const int cli_job_n_opts;

void cli_job_init(cli_job *c);
void cli_job_free(cli_job *c);
/* Applies getopt code `code` (a shared option or one of the short options) with value `v`;
 * `opt` is the option as typed. 0 done, CLI_EXIT_USAGE (message printed), -1 not ours. */
int cli_job_option(const char *cmd, cli_job *c, int code, const char *opt, const char *v);
/* After the options: the kind from the inputs, --strength, the output format from `output`'s
 * extension (NULL: none), input images read into the job, then the API's validation with
 * errors naming the option. 0, CLI_EXIT_USAGE or CLI_EXIT_FAILURE (unreadable input). */
int cli_job_finish(const char *cmd, cli_job *c, const char *output);
/* The option that sets a job field, for messages ("steps" -> "--steps"). */
const char *cli_job_option_of_field(const char *field);
/* A command's own options: 0 handled, CLI_EXIT_USAGE, or -1 when `code` is not one of them
 * (it is then tried as a job option). Positional arguments arrive as code 1 when the short
 * options start with "-". */
typedef int (*cli_own_option_fn)(void *user, int code, const char *opt, const char *value);
#define CLI_WANTS_HELP (-1)
/* getopt_long over the command's own options (n_own of them, taking precedence) and the job
 * options. 0 when all were applied (optind is then the first positional argument left),
 * CLI_EXIT_USAGE (message printed), or CLI_WANTS_HELP for -h/--help when `own` lists it. */
int cli_job_parse(const char *cmd, int argc, char **argv, const char *own_short, const struct option *own, int n_own,
                  cli_own_option_fn fn, void *user, cli_job *c);
/* getopt's view of the current option: "--steps" for "--steps 5", "--steps=5" and "-s5". */
const char *cli_job_option_name(char **argv, int optind_now, const char *optarg_now);

#endif

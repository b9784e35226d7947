/* Option values for every `paella` subcommand: each failure prints one line naming the
 * command, the option and the allowed range ("paella generate: --steps: 101 is out of range
 * 1..100") and returns 2, the usage-error exit status. */
#ifndef PAELLA_CLI_OPTS_H
#define PAELLA_CLI_OPTS_H

#include <stdint.h>

#define CLI_EXIT_OK 0
#define CLI_EXIT_FAILURE 1 /* the command ran and failed (I/O, model, server) */
#define CLI_EXIT_USAGE 2   /* the command line is wrong */

int cli_opt_int(const char *cmd, const char *opt, const char *v, int64_t lo, int64_t hi, int64_t *out);
int cli_opt_num(const char *cmd, const char *opt, const char *v, double lo, double hi, double *out);
/* "A" or "A,B" (B defaults to A), both in lo..hi */
int cli_opt_pair(const char *cmd, const char *opt, const char *v, double lo, double hi, double out[2]);
/* One of `names` (n of them); the index in *out. */
int cli_opt_name(const char *cmd, const char *opt, const char *v, const char *const *names, int n, int *out);
/* Prints "<cmd>: <opt>: <message>" and returns CLI_EXIT_USAGE. */
int cli_usage_error(const char *cmd, const char *opt, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif

/* Subcommands of the `paella` CLI. Each lives in cli/cmd_<name>.c and returns the process
 * exit status (cli/opts.h: 0 ok, 1 runtime failure, 2 usage error). */
#ifndef PAELLA_CLI_COMMANDS_H
#define PAELLA_CLI_COMMANDS_H

int cmd_eval(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_job(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_models(int argc, char **argv);
/* cli/cmd_submit.c, cli/cmd_remote.c: clients of a running scheduler (docs/api.md) */
int cmd_submit(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_wait(int argc, char **argv);
int cmd_batch(int argc, char **argv);
int cmd_fetch(int argc, char **argv);

#endif

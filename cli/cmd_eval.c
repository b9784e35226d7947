/* `paella eval NET --in FILE --out FILE`: placeholder until the networks land. */
#include <stdio.h>

#include "cli/commands.h"

int cmd_eval(int argc, char **argv) {
  (void)argc;
  (void)argv;
  fprintf(stderr, "paella eval: not implemented yet\n");
  return 1;
}

/* `paella info IMAGE`: the generation parameters embedded in a PNG, JPEG or WebP that paella
 * wrote (a job JSON: `paella submit -` takes it as it is, to regenerate the image). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "cli/opts.h"
#include "model/image.h"
#include "ops/error.h"

static int read_all_file(const char *path, unsigned char **buf, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return -1;
  size_t cap = 1 << 20;
  *len = 0;
  *buf = malloc(cap);
  while (*buf) {
    *len += fread(*buf + *len, 1, cap - *len, f);
    if (*len < cap || cap >= (1u << 28)) break;
    unsigned char *grown = realloc(*buf, cap *= 2);
    if (!grown) free(*buf);
    *buf = grown;
  }
  int bad = ferror(f) || !*buf;
  fclose(f);
  return bad ? -1 : 0;
}

int cmd_info(int argc, char **argv) {
  if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
    printf("usage: paella info IMAGE\n\nPrints the generation parameters embedded in IMAGE (PNG, JPEG or WebP) as JSON.\n"
           "Exit status: 0 printed, 1 unreadable or no parameters, 2 bad command line.\n");
    return CLI_EXIT_OK;
  }
  if (argc != 2 || argv[1][0] == '-') return cli_usage_error("paella info", NULL, "expected one IMAGE (see --help)");
  unsigned char *buf = NULL;
  size_t len = 0;
  char *params = NULL;
  if (read_all_file(argv[1], &buf, &len)) {
    free(buf);
    fprintf(stderr, "paella info: %s: cannot read it\n", argv[1]);
    return CLI_EXIT_FAILURE;
  }
  int rc = pa_image_read_params(buf, len, &params);
  free(buf);
  if (rc || !params) {
    fprintf(stderr, "paella info: %s: %s\n", argv[1], rc ? pa_errmsg() : "no embedded parameters");
    return CLI_EXIT_FAILURE;
  }
  printf("%s\n", params);
  free(params);
  return CLI_EXIT_OK;
}

/* `paella eval NET --in FILE --out FILE [--device cpu|cuda] [--debug]`
 *
 * Runs one network on a safetensors file in the golden convention: weights under their
 * state_dict names, inputs `in.*`, constructor kwargs as JSON in __metadata__["config"].
 * Writes float32 outputs under the golden names (NCHW where the reference is NCHW). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "model/eval.h"
#include "ops/ops.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: paella eval NET --in FILE --out FILE [--device cpu|cuda] [--debug]\n"
          "  NET: paella | vqgan | prior | t5 | clip-text | clip-vision\n"
          "  --in FILE     safetensors: weights (state_dict names), inputs in.*, config metadata\n"
          "  --out FILE    safetensors written with the outputs (out.*, float32)\n"
          "  --device D    backend (default cpu)\n"
          "  --debug       also write per-layer intermediates (out.dbg.*)\n");
}

int cmd_eval(int argc, char **argv) {
  const char *net = NULL, *in = NULL, *out = NULL, *device = "cpu";
  bool debug = false;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      usage(stdout);
      return 0;
    } else if (!strcmp(argv[i], "--in") && i + 1 < argc) {
      in = argv[++i];
    } else if (!strcmp(argv[i], "--out") && i + 1 < argc) {
      out = argv[++i];
    } else if (!strcmp(argv[i], "--device") && i + 1 < argc) {
      device = argv[++i];
    } else if (!strcmp(argv[i], "--debug")) {
      debug = true;
    } else if (argv[i][0] != '-' && !net) {
      net = argv[i];
    } else {
      fprintf(stderr, "paella eval: unexpected argument '%s'\n", argv[i]);
      usage(stderr);
      return 2;
    }
  }
  if (!net || !in || !out) {
    usage(stderr);
    return 2;
  }
  pa_backend *be = pa_backend_by_name(device);
  if (!be) {
    fprintf(stderr, "paella eval: %s\n", pa_errmsg());
    return 2;
  }
  pa_eval_outputs outs = {0};
  pa_weights *w = NULL;
  int rc = pa_weights_open(in, &w);
  if (rc == PA_OK) rc = pa_eval_net(be, net, w, debug, &outs);
  if (rc == PA_OK) rc = pa_safetensors_write(out, outs.items, outs.n, NULL);
  pa_eval_outputs_free(&outs);
  pa_weights_free(w);
  if (rc) {
    fprintf(stderr, "paella eval: %s\n", pa_errmsg());
    return 1;
  }
  return 0;
}

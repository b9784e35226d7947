/* The networks `paella eval` knows, each reading its golden-convention inputs from a weight
 * store and appending float32 host outputs. Shared with tests. */
#ifndef PAELLA_MODEL_EVAL_H
#define PAELLA_MODEL_EVAL_H

#include "ops/ops.h"

typedef struct {
  pa_named_tensor *items; /* names and tensors are owned */
  int n, cap;
} pa_eval_outputs;

/* Takes ownership of t (a host tensor); name is copied. */
int pa_eval_outputs_add(pa_eval_outputs *o, const char *name, pa_tensor *t);
void pa_eval_outputs_free(pa_eval_outputs *o);

int pa_eval_net(pa_backend *be, const char *net, pa_weights *w, bool debug, pa_eval_outputs *out);

#endif

/* PLACEHOLDER: replaced by the torch.save zip loader (work in progress in this session). */
#include "ops/error.h"
#include "ops/weights.h"

int pa_torch_load(const char *path, pa_weights *w) {
  (void)w;
  return pa_fail(PA_ERR_UNSUPPORTED, "%s: torch.save checkpoints not supported yet", path);
}

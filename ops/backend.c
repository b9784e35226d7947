/* The backend registry: a device name to its op table. This file is the one seam between
 * the CPU reference (ops/cpu_backend.c) and the CUDA backend (kernels/, linked only with
 * -DPAELLA_CUDA=ON, which defines PAELLA_WITH_CUDA for paella_lib): no other file of ops/
 * names the CUDA backend. */
#include <string.h>

#include "ops/backend.h"
#include "ops/error.h"
#ifdef PAELLA_WITH_CUDA
#include "kernels/cuda_backend.h"
#endif

pa_backend *pa_backend_by_name(const char *name) {
  if (!name || strcmp(name, "cpu") == 0) return pa_cpu_backend();
  if (strcmp(name, "cuda") == 0) {
#ifdef PAELLA_WITH_CUDA
    return pa_cuda_backend();
#else
    pa_fail(PA_ERR_UNSUPPORTED, "this build has no CUDA backend (configure with -DPAELLA_CUDA=ON)");
    return NULL;
#endif
  }
  pa_fail(PA_ERR_INVALID, "unknown device '%s' (expected cpu or cuda)", name);
  return NULL;
}

#include "ops/threads.h"

#include <cblas.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "ops/error.h"

int pa_threads_set(int n) {
  if (n < 1 || n > PA_THREADS_MAX)
    return pa_fail(PA_ERR_INVALID, "thread count %d is out of range 1..%d", n, PA_THREADS_MAX);
  /* OpenBLAS first: its OpenMP build sets OpenMP's count too, capped at the thread count
   * it was built for, and follows omp_get_max_threads() at each call; OpenMP's own setting
   * is the one that counts, so it comes last. (Every GEMM is single-threaded inside our
   * tiles anyway: ops/cpu_gemm.c.) */
  openblas_set_num_threads(n);
#ifdef _OPENMP
  omp_set_num_threads(n);
#endif
  return PA_OK;
}

int pa_threads_get(void) {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

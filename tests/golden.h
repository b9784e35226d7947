/* Helpers for golden comparisons: max-norm relative error against the float64 twin. */
#ifndef PAELLA_TESTS_GOLDEN_H
#define PAELLA_TESTS_GOLDEN_H

#include <math.h>
#include <string.h>

#include "ops/ops.h"

/* max_i |y_i - ref_i| / max_i |ref_i|; y is F32, ref F32 or F64, same numel (else +inf). */
static inline double golden_rel_err(const pa_tensor *y, const pa_tensor *ref) {
  if (!y || !ref || pa_numel(y) != pa_numel(ref)) return INFINITY;
  double num = 0, den = 0;
  for (int64_t i = 0; i < pa_numel(ref); i++) {
    double r = ref->dtype == PA_F64 ? ((const double *)ref->data)[i] : ((const float *)ref->data)[i];
    double v = y->dtype == PA_F64 ? ((const double *)y->data)[i] : ((const float *)y->data)[i];
    num = fmax(num, fabs(v - r));
    den = fmax(den, fabs(r));
  }
  return den > 0 ? num / den : num;
}

static inline bool golden_equal_bytes(const pa_tensor *a, const pa_tensor *b) {
  return a && b && a->dtype == b->dtype && pa_numel(a) == pa_numel(b) &&
         memcmp(a->data, b->data, pa_nbytes(a)) == 0;
}

#endif

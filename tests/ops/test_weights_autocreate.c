/* Synthetic weights (pa_weights_set_autocreate): the values depend only on (seed, name,
 * index), never on the thread count. A tensor large enough to be drawn in parallel is
 * created with 1 and 2 OpenMP threads and compared bit for bit; its checksum and a few values
 * are pinned to those of the original single-threaded draw, so the parallel split can never
 * shift the stream. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>

#include "ops/error.h"
#include "ops/weights.h"
#include "tests/test.h"

/* blocks.0.fc1.weight (1000, 300), seed 7, scale 0.5, as drawn single-threaded before the
 * parallel version */
#define PINNED_SUM 0xb874471b3091708full
#define PINNED_0 -0x1.9815acp-2f
#define PINNED_1 0x1.1168eep+0f
#define PINNED_LAST -0x1.f89a8p-3f

/* FNV-1a over the float bits */
static uint64_t checksum(const pa_tensor *t) {
  const unsigned char *p = t->data;
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < (size_t)pa_numel(t) * sizeof(float); i++) h = (h ^ p[i]) * 0x100000001B3ull;
  return h;
}

/* A fresh (seed 7, scale 0.5) collection's `name` of `shape`, drawn with `threads` threads. */
static pa_tensor *draw(int threads, const char *name, int ndim, const int64_t *shape) {
  omp_set_num_threads(threads);
  pa_weights *w = pa_weights_new("synthetic");
  pa_weights_set_autocreate(w, 7, 0.5f);
  const pa_tensor *t = NULL;
  pa_tensor *copy = NULL;
  if (pa_weights_get(w, &t, ndim, shape, "%s", name) == PA_OK) copy = pa_tensor_clone(t);
  pa_weights_free(w);
  return copy;
}

int main(void) {
  const int64_t big[2] = {1000, 300}, var[1] = {64};
  pa_tensor *one = draw(1, "blocks.0.fc1.weight", 2, big), *two = draw(2, "blocks.0.fc1.weight", 2, big);
  CHECK(one && two);
  CHECK(memcmp(one->data, two->data, (size_t)pa_numel(one) * sizeof(float)) == 0);
  const float *d = one->data;
  printf("checksum %#llx, values %a %a %a\n", (unsigned long long)checksum(one), d[0], d[1], d[299999]);
  CHECK(checksum(one) == PINNED_SUM);
  CHECK(d[0] == PINNED_0 && d[1] == PINNED_1 && d[299999] == PINNED_LAST);
  double sum = 0, sq = 0;
  for (int64_t i = 0; i < pa_numel(one); i++) sum += d[i], sq += (double)d[i] * d[i];
  CHECK_NEAR(sum / pa_numel(one), 0.0, 0.005);             /* N(0, 0.5^2) */
  CHECK_NEAR(sqrt(sq / pa_numel(one)), 0.5, 0.005);

  /* running variances: 1 + |z|, the same with any thread count */
  pa_tensor *v1 = draw(1, "bn.running_var", 1, var), *v2 = draw(2, "bn.running_var", 1, var);
  CHECK(v1 && v2 && memcmp(v1->data, v2->data, 64 * sizeof(float)) == 0);
  for (int i = 0; i < 64; i++) CHECK(((float *)v1->data)[i] >= 1.0f);

  /* another name gives another stream */
  pa_tensor *other = draw(2, "blocks.1.fc1.weight", 2, big);
  CHECK(other && memcmp(other->data, one->data, 64 * sizeof(float)) != 0);
  pa_tensor_free(one), pa_tensor_free(two), pa_tensor_free(v1), pa_tensor_free(v2), pa_tensor_free(other);
  TEST_END();
}

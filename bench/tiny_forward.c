/* CPU time of one forward of each tiny golden network (model set-up from the mapped file
 * included, as `paella eval` runs it): median of 20 runs. Usage: bench_tiny_forward [GOLDEN_DIR] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model/eval.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  const char *dir = argc > 1 ? argv[1] : "tests/golden";
  const char *nets[][2] = {{"paella", "paella_tiny.safetensors"}, {"vqgan", "vqgan_tiny.safetensors"},
                           {"prior", "prior_tiny.safetensors"},   {"t5", "t5_tiny.safetensors"},
                           {"clip-text", "clip_text_tiny.safetensors"}, {"clip-vision", "clip_vision_tiny.safetensors"}};
  printf("%-12s %10s\n", "network", "median ms");
  for (size_t i = 0; i < sizeof nets / sizeof nets[0]; i++) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, nets[i][1]);
    double t[20];
    for (int k = 0; k < 20; k++) {
      pa_weights *w = NULL;
      pa_eval_outputs out = {0};
      if (pa_weights_open(path, &w)) {
        fprintf(stderr, "%s\n", pa_errmsg());
        return 1;
      }
      double t0 = now();
      int rc = pa_eval_net(pa_cpu_backend(), nets[i][0], w, false, &out);
      t[k] = (now() - t0) * 1e3;
      pa_eval_outputs_free(&out);
      pa_weights_free(w);
      if (rc) {
        fprintf(stderr, "%s: %s\n", nets[i][0], pa_errmsg());
        return 1;
      }
    }
    qsort(t, 20, sizeof t[0], cmp);
    printf("%-12s %10.3f\n", nets[i][0], t[10]);
  }
  return 0;
}

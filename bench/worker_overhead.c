/* The worker's own cost per job: everything outside the model (decode, start/progress events,
 * PNG encoding, upload to file:// storage, recording the result, XACK), measured by the worker
 * around those phases and logged per job as overhead_ms. Runs 300 tiny jobs (32x32, 2 steps,
 * prior 1 step) through one paella-worker on a private Redis and prints p50/p99.
 * Registered in ctest as worker_overhead_bench (it fails only if the jobs fail). */
#include <jansson.h>

#include "harness.h"
#include "tests/test.h"

#define N_JOBS 300

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double pct(const double *v, int n, double p) { return n ? v[(int)(p * (n - 1) + 0.5)] : NAN; }

int main(void) {
  static double over[N_JOBS], model[N_JOBS], wall[N_JOBS];
  char out_dir[300], log_path[300], id[32];
  h_redis_start();
  snprintf(out_dir, sizeof out_dir, "%s/out", h_dir());
  snprintf(log_path, sizeof log_path, "%s/worker.log", h_dir());
  setenv("OMP_NUM_THREADS", "1", 0);
  redisContext *c = h_connect();
  for (int i = 0; i < N_JOBS; i++) {
    snprintf(id, sizeof id, "b%03d", i);
    h_submit_tiny(c, "paella:jobs", id, NULL);
  }
  double t0 = h_now();
  pid_t w = h_worker(out_dir, log_path, NULL);
  snprintf(id, sizeof id, "b%03d", N_JOBS - 1);
  CHECK(h_wait_status(c, id, "succeeded", 300));
  double elapsed = h_now() - t0;
  kill(w, SIGTERM);
  CHECK(h_wait_exit(w, 60) == 0);
  FILE *f = fopen(log_path, "r");
  char line[8192];
  int n = 0;
  while (f && fgets(line, sizeof line, f) && n < N_JOBS) {
    json_t *j = json_loads(line, 0, NULL);
    const char *msg = json_string_value(json_object_get(j, "msg"));
    if (msg && !strcmp(msg, "job finished")) {
      over[n] = json_real_value(json_object_get(j, "overhead_ms"));
      model[n] = json_real_value(json_object_get(j, "model_ms"));
      wall[n++] = json_real_value(json_object_get(j, "wall_ms"));
    }
    json_decref(j);
  }
  if (f) fclose(f);
  CHECK(n == N_JOBS);
  qsort(over, (size_t)n, sizeof *over, cmp);
  qsort(model, (size_t)n, sizeof *model, cmp);
  qsort(wall, (size_t)n, sizeof *wall, cmp);
  printf("%d jobs (32x32, 2 steps, prior 1 step) through one worker in %.2f s\n", n, elapsed);
  printf("worker overhead per job (outside the model): p50 %.3f ms, p99 %.3f ms\n", pct(over, n, 0.5), pct(over, n, 0.99));
  printf("model time per job: p50 %.3f ms, p99 %.3f ms; wall per job: p50 %.3f ms, p99 %.3f ms\n", pct(model, n, 0.5),
         pct(model, n, 0.99), pct(wall, n, 0.5), pct(wall, n, 0.99));
  redisFree(c);
  TEST_END();
}

/* Crash test: 200 tiny jobs, two workers at a time, five SIGKILLs at random moments (each
 * killed worker replaced). At the end every job must have succeeded exactly once in the result
 * registry (one `completed` event), have exactly one file set in storage, and its `completed`
 * webhook must have arrived under its stable id. Prints lost jobs and re-executions. */
#include <dirent.h>
#include <sys/stat.h>

#include "harness.h"
#include "tests/test.h"

#define N_JOBS 200
#define N_KILLS 5

static char out_dir[300], log_path[300];

static pid_t start_worker(int k) {
  char name[32];
  snprintf(name, sizeof name, "crash-%d", k);
  return h_worker(out_dir, log_path, "--lease-ms", "1000", "--max-batch", "4", "--webhook-allow-private",
                  "--poll-ms", "200", "--consumer", name, NULL);
}

static int count_final(redisContext *c) {
  int n = 0;
  for (int i = 0; i < N_JOBS; i++) {
    char id[32];
    snprintf(id, sizeof id, "c%03d", i);
    char *s = h_status(c, id);
    n += s && !strcmp(s, "succeeded");
    free(s);
  }
  return n;
}

/* Events of one type per job id. */
static void count_events(redisContext *c, const char *type, int *per_job) {
  redisReply *r = redisCommand(c, "XRANGE paella:jobs:events - +");
  for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
    redisReply *f = r->element[i]->element[1];
    const char *t = NULL, *id = NULL;
    for (size_t k = 0; k + 1 < f->elements; k += 2) {
      if (!strcmp(f->element[k]->str, "type")) t = f->element[k + 1]->str;
      if (!strcmp(f->element[k]->str, "id")) id = f->element[k + 1]->str;
    }
    if (t && id && !strcmp(t, type) && id[0] == 'c') {
      int j = atoi(id + 1);
      if (j >= 0 && j < N_JOBS) per_job[j]++;
    }
  }
  freeReplyObject(r);
}

/* Entries of dir whose name ends with `suffix` (NULL: all) or, with `infix`, contains it. */
static int files_in(const char *dir, const char *suffix, const char *infix) {
  DIR *d = opendir(dir);
  int n = 0;
  for (struct dirent *e; d && (e = readdir(d));) {
    size_t len = strlen(e->d_name), sl = suffix ? strlen(suffix) : 0;
    if (e->d_name[0] == '.') continue;
    if (suffix && (len < sl || strcmp(e->d_name + len - sl, suffix))) continue;
    if (infix && !strstr(e->d_name, infix)) continue;
    n++;
  }
  if (d) closedir(d);
  return n;
}

int main(void) {
  h_redis_start();
  int port = h_receiver_start();
  snprintf(out_dir, sizeof out_dir, "%s/out", h_dir());
  snprintf(log_path, sizeof log_path, "%s/workers.log", h_dir());
  setenv("OMP_NUM_THREADS", "1", 0);
  setenv("PAELLA_WEBHOOK_SECRET_CRASH", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", 1);
  redisContext *c = h_connect();
  char extra[256];
  snprintf(extra, sizeof extra,
           "\"webhook\":{\"url\":\"http://127.0.0.1:%d/hook\",\"secret_id\":\"crash\",\"events\":[\"completed\"]}", port);
  for (int i = 0; i < N_JOBS; i++) {
    char id[32];
    snprintf(id, sizeof id, "c%03d", i);
    h_submit_tiny(c, "paella:jobs", id, extra);
  }
  double t0 = h_now();
  srand(20240611); /* a fixed kill schedule: the moments vary only with the machine's speed */
  pid_t w[2] = {start_worker(0), start_worker(1)};
  int started = 2;
  for (int k = 0; k < N_KILLS; k++) {
    h_sleep_ms(40 + rand() % 160); /* jobs take ~10 ms: kill while most are still queued */
    int victim = rand() % 2;
    kill(w[victim], SIGKILL);
    h_wait_exit(w[victim], 10);
    w[victim] = start_worker(started++);
    printf("kill %d at %.2f s: %d jobs succeeded so far\n", k + 1, h_now() - t0, count_final(c));
  }
  int done = 0;
  for (double t1 = h_now(); h_now() - t1 < 300 && (done = count_final(c)) < N_JOBS; h_sleep_ms(100)) {
  }
  /* the last jobs' webhooks are still in the outbox: wait until the couriers empty it (a
   * courier killed mid-attempt leaves its message leased for 60 s, then it is sent again) */
  long long outbox = -1;
  for (double t1 = h_now(); h_now() - t1 < 180 && (outbox = h_int(c, "ZCARD paella:jobs:webhooks")) != 0; h_sleep_ms(100)) {
  }
  CHECK_MSG(outbox == 0, "%lld webhooks still in the outbox", outbox);
  for (int i = 0; i < 2; i++) kill(w[i], SIGTERM);
  for (int i = 0; i < 2; i++) CHECK(h_wait_exit(w[i], 60) == 0);
  double elapsed = h_now() - t0;

  int completed[N_JOBS] = {0}, starts[N_JOBS] = {0}, lost = 0, reexec = 0, bad_files = 0, hooks_missing = 0,
      hook_dups = 0, tmp_files = 0;
  count_events(c, "completed", completed);
  count_events(c, "start", starts);
  for (int i = 0; i < N_JOBS; i++) {
    char id[32], dir[400], hook_id[64];
    snprintf(id, sizeof id, "c%03d", i);
    char *s = h_status(c, id);
    lost += !s || strcmp(s, "succeeded");
    free(s);
    CHECK_MSG(completed[i] == 1, "%s: %d completed events", id, completed[i]);
    reexec += starts[i] > 1;
    snprintf(dir, sizeof dir, "%s/%s", out_dir, id);
    bad_files += files_in(dir, ".png", NULL) != 1 || files_in(dir, NULL, "0.png") < 1;
    /* a worker killed inside pa_storage_put leaves its temporary file (never a second output) */
    tmp_files += files_in(dir, NULL, ".tmp.");
    snprintf(hook_id, sizeof hook_id, "%s.completed", id);
    int h = h_hooks_with_id(hook_id);
    hooks_missing += h < 1;
    hook_dups += h > 1 ? h - 1 : 0;
  }
  redisReply *r = redisCommand(c, "XPENDING paella:jobs workers");
  CHECK(r && r->type == REDIS_REPLY_ARRAY && r->element[0]->integer == 0);
  freeReplyObject(r);
  CHECK(files_in(out_dir, NULL, NULL) == N_JOBS);
  CHECK(h_int(c, "XLEN paella:jobs:dead") == 0);
  printf("jobs = %d, workers started = %d, SIGKILLs = %d, %.1f s\n", N_JOBS, started, N_KILLS, elapsed);
  printf("lost = %d\n", lost);
  printf("re-executions = %d (jobs started more than once)\n", reexec);
  printf("storage: %d job dirs, %d without exactly one 0.png, %d temporary files left by killed uploads\n",
         files_in(out_dir, NULL, NULL), bad_files, tmp_files);
  printf("completed webhooks: %d missing, %d redelivered with the same id\n", hooks_missing, hook_dups);
  CHECK(lost == 0);
  CHECK(bad_files == 0);
  CHECK(hooks_missing == 0);
  CHECK(done == N_JOBS);
  h_receiver_stop();
  redisFree(c);
  TEST_END();
}

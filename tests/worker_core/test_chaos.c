/* Chaos, bounded and on loopback only: two paella-workers and a Redis with AOF (every write
 * fsynced) serve 86 jobs with completed webhooks plus 6 poison entries, in four waves, while
 *   1. one worker is frozen (SIGSTOP) past its lease while it runs a job, then resumed;
 *   2. storage goes down (the output folder replaced by a file), then comes back;
 *   3. Redis is killed (kill -9) and restarted from its AOF;
 *   4. six jobs' webhook receiver accepts and never answers.
 * Asserted: no job lost (every job succeeded, nothing left pending), exactly one recorded
 * result and one completed webhook per job, the poison entries in the dead letters, and no
 * output written by a fenced attempt (every output is older than its recorded result: a late
 * write from an attempt that lost its lease would be newer). Prints the figures. */
#include <arpa/inet.h>
#include <sys/stat.h>

#include "harness.h"
#include "tests/test.h"

#define WAVE 20
#define N_WAVES 4
#define N_HANG 6
#define N_JOBS (WAVE * N_WAVES + N_HANG)
#define N_POISON 6
#define SECRET "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

static char out_dir[300], log_a[300], log_b[300];
static char *ids[N_JOBS]; /* malloc'd (freed at exit) */
static int n_submitted;

static void submit(redisContext *c, int port, bool hang_port) {
  int i = n_submitted++;
  char id[16];
  snprintf(id, sizeof id, "%s%03d", hang_port ? "ch" : "cj", i);
  ids[i] = strdup(id);
  char json[700];
  snprintf(json, sizeof json,
           "{\"id\":\"%s\",\"prompt\":\"chaos %d\",\"width\":64,\"height\":64,\"steps\":%d,\"prior\":{\"steps\":2},"
           "\"webhook\":{\"url\":\"http://127.0.0.1:%d/hook\",\"secret_id\":\"wh-1\",\"events\":[\"completed\"]}}",
           ids[i], i, 4 + i % 5, port);
  h_submit_json(c, "paella:jobs", json);
}

static void poison(redisContext *c) {
  static const uint8_t garbage[] = {0xc1, 0x00, 0x17}, truncated[] = {0x83, 0xa2, 'i'};
  /* {"id":"pz3","prompt":"x","steps":0} and {"id":"pz4","prompt":5} */
  static const uint8_t bad_steps[] = {0x83, 0xa2, 'i', 'd', 0xa3, 'p', 'z', '3', 0xa6, 'p', 'r', 'o', 'm', 'p',
                                      't', 0xa1, 'x', 0xa5, 's', 't', 'e', 'p', 's', 0x00};
  static const uint8_t bad_type[] = {0x82, 0xa2, 'i', 'd', 0xa3, 'p', 'z', '4', 0xa6, 'p', 'r', 'o', 'm', 'p', 't', 0x05};
  h_xadd(c, "paella:jobs", "pz1", garbage, sizeof garbage, NULL);
  h_xadd(c, "paella:jobs", "pz2", truncated, sizeof truncated, NULL);
  h_xadd(c, "paella:jobs", "pz3", bad_steps, sizeof bad_steps, NULL);
  h_xadd(c, "paella:jobs", "pz4", bad_type, sizeof bad_type, NULL);
  h_xadd(c, "paella:jobs", "pz5", "", 0, NULL);
  freeReplyObject(redisCommand(c, "XADD paella:jobs * id pz6 other 1")); /* no job field */
}

/* Redis may be down: every helper reconnects. */
static redisContext *conn(redisContext **c) {
  if (*c && !(*c)->err) return *c;
  if (*c) redisFree(*c);
  struct timeval tv = {2, 0};
  *c = redisConnectWithTimeout("127.0.0.1", h_.port, tv);
  if (*c && !(*c)->err) redisSetTimeout(*c, tv);
  return *c;
}

static int done_count(redisContext **c) {
  int n = 0;
  for (int i = 0; i < n_submitted; i++) {
    char *s = conn(c) && !(*c)->err ? h_status(*c, ids[i]) : NULL;
    n += s && !strcmp(s, "succeeded");
    free(s);
  }
  return n;
}

static bool wait_done(redisContext **c, int want, double timeout_s) {
  for (double t0 = h_now(); h_now() - t0 < timeout_s; h_sleep_ms(50))
    if (done_count(c) >= want) return true;
  return false;
}

/* Waits until worker `name` is running a job (so the freeze lands mid-job), up to timeout_s. */
static bool wait_running_on(redisContext **c, const char *name, double timeout_s) {
  for (double t0 = h_now(); h_now() - t0 < timeout_s; h_sleep_ms(5))
    for (int i = 0; i < n_submitted && conn(c); i++) {
      char key[64];
      snprintf(key, sizeof key, "paella:job:%.40s", ids[i]);
      char *s = h_hget(*c, key, "status"), *w = h_hget(*c, key, "worker");
      bool hit = s && w && !strcmp(s, "running") && !strcmp(w, name);
      free(s), free(w);
      if (hit) return true;
    }
  return false;
}

/* The output is not newer than the recorded result. */
static bool output_before_result(redisContext *c, const char *id) {
  char png[400], key[64];
  struct stat st;
  snprintf(png, sizeof png, "%s/%s/0.png", out_dir, id);
  snprintf(key, sizeof key, "paella:job:%s", id);
  char *updated = h_hget(c, key, "updated_ms");
  bool ok = updated && stat(png, &st) == 0 &&
            (long long)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000 <= strtoll(updated, NULL, 10);
  free(updated);
  return ok;
}

int main(void) {
  h_fsync_always = true;
  h_redis_start();
  snprintf(out_dir, sizeof out_dir, "%s/out", h_dir());
  snprintf(log_a, sizeof log_a, "%s/a.log", h_dir());
  snprintf(log_b, sizeof log_b, "%s/b.log", h_dir());
  mkdir(out_dir, 0755);
  setenv("OMP_NUM_THREADS", "1", 0);
  setenv("PAELLA_WEBHOOK_SECRET_WH_1", SECRET, 1);
  redisContext *c = NULL;
  int port = h_receiver_start();
  int hang = socket(AF_INET, SOCK_STREAM, 0), hang_port = 0;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t alen = sizeof a;
  if (hang < 0 || bind(hang, (struct sockaddr *)&a, sizeof a) || listen(hang, 256) ||
      getsockname(hang, (struct sockaddr *)&a, &alen))
    return 1;
  hang_port = ntohs(a.sin_port);
  const char *flags[] = {"--webhook-allow-private", "--lease-ms", "1500", "--max-deliveries", "50"};
  double t_start = h_now();
  conn(&c);
  poison(c);
  for (int i = 0; i < WAVE; i++) submit(c, port, false);
  pid_t wa = h_worker(out_dir, log_a, flags[0], flags[1], flags[2], flags[3], flags[4], "--consumer", "wA", NULL);
  pid_t wb = h_worker(out_dir, log_b, flags[0], flags[1], flags[2], flags[3], flags[4], "--consumer", "wB", NULL);

  /* 1. freeze wA mid-job, past its lease */
  bool mid_job = wait_running_on(&c, "wA", 60);
  kill(wa, SIGSTOP);
  h_sleep_ms(4000);
  kill(wa, SIGCONT);
  CHECK(wait_done(&c, WAVE, 120));

  /* 2. storage down while the second wave runs */
  for (int i = 0; i < WAVE; i++) submit(conn(&c), port, false);
  char moved[400];
  snprintf(moved, sizeof moved, "%s.down", out_dir);
  CHECK(rename(out_dir, moved) == 0);
  FILE *f = fopen(out_dir, "w");
  if (f) fclose(f);
  h_sleep_ms(3000);
  CHECK(unlink(out_dir) == 0 && rename(moved, out_dir) == 0);
  CHECK(wait_done(&c, 2 * WAVE, 120));

  /* 3. Redis killed while the third wave runs, back from its AOF */
  for (int i = 0; i < WAVE; i++) submit(conn(&c), port, false);
  wait_done(&c, 2 * WAVE + 3, 60);
  redisFree(c);
  c = NULL;
  h_redis_crash_restart(1000);
  CHECK(wait_done(&c, 3 * WAVE, 120));

  /* 4. the last wave, six of its jobs hooked to a receiver that never answers */
  for (int i = 0; i < WAVE; i++) submit(conn(&c), port, false);
  for (int i = 0; i < N_HANG; i++) submit(conn(&c), hang_port, true);
  bool all_done = wait_done(&c, N_JOBS, 300); /* a wait for a state: slow under the sanitizers */
  CHECK_MSG(all_done, "%d of %d jobs succeeded", done_count(&c), N_JOBS);
  double t_jobs = h_now() - t_start;
  int expected_hooks = N_JOBS - N_HANG, got_hooks = 0;
  for (double t0 = h_now(); h_now() - t0 < 120 && got_hooks < expected_hooks; h_sleep_ms(50)) {
    got_hooks = 0;
    for (int i = 0; i < N_JOBS; i++) {
      char id[40];
      snprintf(id, sizeof id, "%s.completed", ids[i]);
      got_hooks += ids[i][1] == 'j' && h_hooks_with_id(id) >= 1;
    }
  }
  long long dead = 0;
  for (double t0 = h_now(); h_now() - t0 < 120 && (dead = h_int(conn(&c), "XLEN paella:jobs:dead")) < N_POISON;)
    h_sleep_ms(50);
  kill(wa, SIGTERM);
  kill(wb, SIGTERM);
  int rc_a = h_wait_exit(wa, 120), rc_b = h_wait_exit(wb, 120);
  CHECK_MSG(rc_a == 0 && rc_b == 0, "worker exits %d %d", rc_a, rc_b);

  /* the verdict */
  conn(&c);
  int lost = 0, multi_result = 0, multi_hook = 0, late_output = 0, missing_hook = 0;
  for (int i = 0; i < N_JOBS; i++) {
    char *s = h_status(c, ids[i]), id[40];
    lost += !s || strcmp(s, "succeeded");
    free(s);
    multi_result += h_events_of(c, ids[i], "completed") != 1;
    late_output += !output_before_result(c, ids[i]);
    snprintf(id, sizeof id, "%s.completed", ids[i]);
    int hooks = h_hooks_with_id(id);
    if (ids[i][1] == 'j') missing_hook += hooks == 0, multi_hook += hooks > 1;
    else multi_hook += hooks != 0;
  }
  redisReply *p = redisCommand(c, "XPENDING paella:jobs workers");
  long long pend = p && p->type == REDIS_REPLY_ARRAY && p->elements ? p->element[0]->integer : -1;
  freeReplyObject(p);
  CHECK_MSG(lost == 0, "%d jobs lost", lost);
  CHECK_MSG(multi_result == 0, "%d jobs without exactly one recorded result", multi_result);
  CHECK_MSG(missing_hook == 0 && multi_hook == 0, "completed webhooks: %d missing, %d duplicated", missing_hook, multi_hook);
  CHECK_MSG(late_output == 0, "%d outputs written after their result (a fenced attempt)", late_output);
  CHECK_MSG(dead == N_POISON, "%lld dead letters for %d poison entries", dead, N_POISON);
  CHECK_MSG(pend == 0, "%lld entries left pending", pend);
  int fenced = h_log_lines(log_a, "\"status\":\"fenced\"", NULL) + h_log_lines(log_b, "\"status\":\"fenced\"", NULL);
  int retried = h_log_lines(log_a, "\"status\":\"retry\"", NULL) + h_log_lines(log_b, "\"status\":\"retry\"", NULL);
  int resettled = h_log_lines(log_a, "result already recorded", NULL) + h_log_lines(log_b, "result already recorded", NULL);
  int lease_lost = h_log_lines(log_a, "lease lost", NULL) + h_log_lines(log_b, "lease lost", NULL);
  printf("chaos: %d jobs + %d poison entries in %.1f s (two workers; freeze of wA %s a job; storage down 3 s; "
         "redis kill -9 + AOF restart); lost %d, results != 1: %d, completed webhooks %d/%d (duplicates %d), "
         "outputs after their result %d, dead letters %lld, pending %lld; fenced attempts %d (lease lost %d), "
         "storage retries %d, redeliveries acknowledged without a re-run %d\n",
         N_JOBS, N_POISON, t_jobs, mid_job ? "during" : "between", lost, multi_result, got_hooks, expected_hooks,
         multi_hook, late_output, dead, pend, fenced, lease_lost, retried, resettled);
  close(hang);
  h_receiver_stop();
  for (int i = 0; i < n_submitted; i++) free(ids[i]);
  redisFree(c);
  TEST_END();
}

/* paella-worker processes on Kafka: librdkafka's mock cluster runs in this process and the
 * workers (and `paella job cancel`) connect to it over loopback. Cancel of a queued and of a
 * running job, a job whose worker is killed twice (max_deliveries 2: dead-lettered with
 * deliveries 3 and a failed result), and a kill test: jobs on four partitions, two workers,
 * SIGKILLs at moments that vary with the machine's speed, every job completed, none lost, nothing
 * left for the group. Waits are for states, with generous timeouts; figures are printed. */
#include <stddef.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "proto/proto.h"
#include "tests/test.h"
#include "worker/kafka_topics.h"
#include "worker/queue.h"
#include "worker/queue_kafka.h"

/* Session timeout: how long the group waits for a killed worker before reassigning its
 * partitions. The mock coordinator holds a group's first join for 3 s, so it must exceed that. */
#define GROUP_PROPS                                                                                 \
  "&session.timeout.ms=6000&heartbeat.interval.ms=500&max.poll.interval.ms=30000"                   \
  "&auto.commit.interval.ms=100&topic.metadata.refresh.interval.ms=500&reconnect.backoff.ms=50" \
  "&reconnect.backoff.max.ms=200&fetch.wait.max.ms=10&log_level=3"

#define MAX_CHILDREN 32
#define MAX_JOBS 256

static rd_kafka_mock_cluster_t *mc;
static const char *boot;
static char dir[256], out_dir[300], log_path[300];
static pid_t children[MAX_CHILDREN];

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* ---- processes ------------------------------------------------------------------------- */

static void kill_all(void) {
  for (int i = 0; i < MAX_CHILDREN; i++)
    if (children[i] > 0) {
      kill(children[i], SIGKILL);
      waitpid(children[i], NULL, 0);
      children[i] = 0;
    }
  if (dir[0]) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd)) {
    }
    dir[0] = 0;
  }
}

static void on_fatal(int sig) {
  kill_all();
  signal(sig, SIG_DFL);
  raise(sig);
}

/* fork + exec with stderr appended to the log; the child dies with us. */
static pid_t spawn(char *const argv[]) {
  fflush(stdout);
  fflush(stderr);
  pid_t parent = getpid(), pid = fork();
  if (pid < 0) {
    perror("fork");
    exit(1);
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    if (!freopen(log_path, "a", stderr) || !freopen("/dev/null", "w", stdout)) _exit(127);
    execv(argv[0], argv);
    _exit(127);
  }
  for (int i = 0; i < MAX_CHILDREN; i++)
    if (children[i] <= 0) {
      children[i] = pid;
      break;
    }
  return pid;
}

/* Its exit status (128+signal when killed), or -1 after the timeout (then it is killed). */
static int wait_exit(pid_t pid, double timeout_s) {
  int rc = -1;
  for (double t0 = now_s(); now_s() - t0 < timeout_s; sleep_ms(10)) {
    int st;
    if (waitpid(pid, &st, WNOHANG) == pid) {
      rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      break;
    }
  }
  if (rc < 0) {
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
  }
  for (int i = 0; i < MAX_CHILDREN; i++)
    if (children[i] == pid) children[i] = 0;
  return rc;
}

static void queue_url(const char *topic, char *url, size_t cap) {
  snprintf(url, cap, "kafka://%s?topic=%s&group=workers" GROUP_PROPS, boot, topic);
}

/* paella-worker on `topic` with file storage plus extra arguments (NULL-terminated). */
static pid_t worker(const char *topic, const char *name, ...) {
  static char url[1024], storage[400];
  char *argv[32];
  int n = 0;
  queue_url(topic, url, sizeof url);
  snprintf(storage, sizeof storage, "file://%s", out_dir);
  argv[n++] = PAELLA_BINARY_DIR "/paella-worker";
  argv[n++] = "--queue";
  argv[n++] = url;
  argv[n++] = "--storage";
  argv[n++] = storage;
  argv[n++] = "--consumer";
  argv[n++] = (char *)name;
  argv[n++] = "--poll-ms";
  argv[n++] = "200";
  va_list ap;
  va_start(ap, name);
  for (char *a; n < 31 && (a = va_arg(ap, char *));) argv[n++] = a;
  va_end(ap);
  argv[n] = NULL;
  return spawn(argv);
}

/* `paella job cancel` as a user runs it; its exit status. */
static int cli_cancel(const char *topic, const char *id) {
  char url[1024];
  queue_url(topic, url, sizeof url);
  char *argv[] = {PAELLA_BINARY_DIR "/paella", "job", "cancel", "--queue", url, (char *)id, NULL};
  return wait_exit(spawn(argv), 60);
}

static void tail_log(void) {
  char cmd[400];
  snprintf(cmd, sizeof cmd, "grep -v CONFWARN '%s' | tail -n 30 >&2", log_path);
  if (system(cmd)) {
  }
}

/* ---- topics, jobs, events ---------------------------------------------------------------- */

static void topics(const char *t, int partitions) {
  static const char *const suffix[] = {"", PA_KAFKA_EVENTS_SUFFIX, PA_KAFKA_DEAD_SUFFIX,
                                       PA_KAFKA_CONTROL_SUFFIX, PA_KAFKA_ATTEMPTS_SUFFIX};
  for (int i = 0; i < 5; i++) {
    char n[128];
    snprintf(n, sizeof n, "%s%s", t, suffix[i]);
    CHECK(rd_kafka_mock_topic_create(mc, n, i == 0 || i == 1 ? partitions : 1, 3) == RD_KAFKA_RESP_ERR_NO_ERROR);
  }
}

static rd_kafka_t *client(rd_kafka_type_t type, const char *group) {
  char err[256];
  rd_kafka_conf_t *c = rd_kafka_conf_new();
  int ok = rd_kafka_conf_set(c, "bootstrap.servers", boot, err, sizeof err) == RD_KAFKA_CONF_OK;
  if (group) ok = ok && rd_kafka_conf_set(c, "group.id", group, err, sizeof err) == RD_KAFKA_CONF_OK;
  if (group) ok = ok && rd_kafka_conf_set(c, "enable.auto.commit", "false", err, sizeof err) == RD_KAFKA_CONF_OK;
  rd_kafka_t *rk = ok ? rd_kafka_new(type, c, err, sizeof err) : NULL;
  CHECK_MSG(rk != NULL, "%s", err);
  if (!rk) rd_kafka_conf_destroy(c);
  return rk;
}

/* Encodes JSON jobs and produces them (key = job id). */
static void produce_json(const char *topic, const char *const *json, int n) {
  rd_kafka_t *p = client(RD_KAFKA_PRODUCER, NULL);
  if (!p) return;
  for (int i = 0; i < n; i++) {
    pw_job job;
    pw_error err;
    uint8_t *buf = NULL;
    size_t len = 0;
    if (pw_job_from_json(json[i], strlen(json[i]), &job, &err) || pw_job_encode(&job, &buf, &len, &err)) {
      CHECK_MSG(0, "bad test job %s: %s %s", json[i], err.field, err.message);
      continue;
    }
    CHECK(rd_kafka_producev(p, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(job.id, strlen(job.id)),
                            RD_KAFKA_V_VALUE(buf, len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                            RD_KAFKA_V_END) == RD_KAFKA_RESP_ERR_NO_ERROR);
    free(buf);
    pw_job_free(&job);
  }
  CHECK(rd_kafka_flush(p, 30000) == RD_KAFKA_RESP_ERR_NO_ERROR);
  rd_kafka_destroy(p);
}

static void produce_tiny(const char *topic, const char *id) {
  char json[512];
  snprintf(json, sizeof json,
           "{\"id\":\"%s\",\"prompt\":\"a tiny fox %s\",\"width\":32,\"height\":32,\"steps\":2,\"prior\":{\"steps\":1}}",
           id, id);
  const char *j = json;
  produce_json(topic, &j, 1);
}

/* A job long enough on the CPU to be caught running (the Redis tests use the same). */
static void produce_long(const char *topic, const char *id) {
  char json[512];
  snprintf(json, sizeof json,
           "{\"id\":\"%s\",\"prompt\":\"a very long job\",\"width\":256,\"height\":256,\"steps\":100,"
           "\"prior\":{\"steps\":200}}", id);
  const char *j = json;
  produce_json(topic, &j, 1);
}

/* What a topic's reader saw per job id. */
typedef struct {
  char id[64];
  int start, completed, failed, canceled, dead;
  pw_code code;            /* of the last failed/canceled Result */
  char message[256];       /* its error message */
  char dead_code[64], dead_deliveries[16];
} job_seen;

typedef struct {
  rd_kafka_t *c;
  job_seen jobs[MAX_JOBS];
  int n;
} reader;

static job_seen *seen_of(reader *r, const void *key, size_t klen) {
  char id[64];
  if (!key || klen == 0 || klen >= sizeof id) return NULL;
  memcpy(id, key, klen);
  id[klen] = 0;
  for (int i = 0; i < r->n; i++)
    if (!strcmp(r->jobs[i].id, id)) return &r->jobs[i];
  if (r->n == MAX_JOBS) return NULL;
  job_seen *s = &r->jobs[r->n++];
  memset(s, 0, sizeof *s);
  snprintf(s->id, sizeof s->id, "%s", id);
  return s;
}

static const char *hdr(const rd_kafka_message_t *m, const char *name, char *buf, size_t cap) {
  rd_kafka_headers_t *h;
  const void *v;
  size_t n;
  buf[0] = 0;
  if (rd_kafka_message_headers(m, &h) == 0 && rd_kafka_header_get_last(h, name, &v, &n) == 0 && v && n < cap) {
    memcpy(buf, v, n);
    buf[n] = 0;
  }
  return buf;
}

/* Reads {topic}.events and {topic}.dead from the beginning, all partitions. */
static void reader_open(reader *r, const char *topic, int partitions) {
  memset(r, 0, sizeof *r);
  r->c = client(RD_KAFKA_CONSUMER, "test-reader");
  if (!r->c) return;
  rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(partitions + 1);
  char ev[128], dead[128];
  snprintf(ev, sizeof ev, "%s" PA_KAFKA_EVENTS_SUFFIX, topic);
  snprintf(dead, sizeof dead, "%s" PA_KAFKA_DEAD_SUFFIX, topic);
  for (int p = 0; p < partitions; p++) rd_kafka_topic_partition_list_add(l, ev, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
  rd_kafka_topic_partition_list_add(l, dead, 0)->offset = RD_KAFKA_OFFSET_BEGINNING;
  CHECK(rd_kafka_assign(r->c, l) == RD_KAFKA_RESP_ERR_NO_ERROR);
  rd_kafka_topic_partition_list_destroy(l);
}

static void reader_apply(reader *r, const rd_kafka_message_t *m) {
  job_seen *s = seen_of(r, m->key, m->key_len);
  if (!s) return;
  char type[32];
  if (strstr(rd_kafka_topic_name(m->rkt), PA_KAFKA_DEAD_SUFFIX)) {
    s->dead++;
    hdr(m, "code", s->dead_code, sizeof s->dead_code);
    hdr(m, "deliveries", s->dead_deliveries, sizeof s->dead_deliveries);
    return;
  }
  hdr(m, "type", type, sizeof type);
  if (!strcmp(type, "start")) s->start++;
  if (!strcmp(type, "completed")) s->completed++;
  if (strcmp(type, "failed") && strcmp(type, "canceled")) return;
  if (!strcmp(type, "failed"))
    s->failed++;
  else
    s->canceled++;
  pw_result res;
  pw_error err;
  pw_result_init(&res);
  if (pw_result_decode(m->payload, m->len, &res, &err) == 0 && res.has_error) {
    s->code = res.error_code;
    snprintf(s->message, sizeof s->message, "%s", res.error_message ? res.error_message : "");
  }
  pw_result_free(&res);
}

/* Applies what arrived within ms milliseconds. */
static void reader_pump(reader *r, int ms) {
  if (!r->c) return;
  for (int wait = ms;; wait = 0) {
    rd_kafka_message_t *m = rd_kafka_consumer_poll(r->c, wait);
    if (!m) return;
    if (!m->err) reader_apply(r, m);
    rd_kafka_message_destroy(m);
  }
}

static void reader_close(reader *r) {
  if (!r->c) return;
  rd_kafka_consumer_close(r->c);
  rd_kafka_destroy(r->c);
  r->c = NULL;
}

static job_seen *job(reader *r, const char *id) { return seen_of(r, id, strlen(id)); }

/* Waits (pumping) until *field of job id reaches want; false after timeout_s. */
static bool wait_count(reader *r, const char *id, size_t field, int want, double timeout_s) {
  for (double t0 = now_s(); now_s() - t0 < timeout_s;) {
    reader_pump(r, 100);
    job_seen *s = job(r, id);
    if (s && *(int *)((char *)s + field) >= want) return true;
  }
  return false;
}

#define WAIT(r, id, f, want, t) wait_count(r, id, offsetof(job_seen, f), want, t)

static bool output_exists(const char *id) {
  char p[512];
  struct stat st;
  snprintf(p, sizeof p, "%s/%s/0.png", out_dir, id);
  return stat(p, &st) == 0 && st.st_size > 0;
}

/* Jobs a fresh member of the workers' group still gets (claims until assigned, then secs more). */
static int leftovers(const char *topic, double secs) {
  char url[1024];
  queue_url(topic, url, sizeof url);
  pa_queue_options o = {.consumer = "late", .max_deliveries = 100};
  pa_queue *q = NULL;
  CHECK_OK(pa_queue_open_kafka(url, &o, &q));
  if (!q) return -1;
  int total = 0;
  double assigned_at = 0;
  for (double end = now_s() + 60; now_s() < end && (!assigned_at || now_s() < assigned_at + secs);) {
    pa_delivery d[8];
    int n = 0;
    CHECK_OK(q->ops->claim(q, 8, 200, d, &n));
    for (int i = 0; i < n; i++) pa_delivery_clear(&d[i]);
    total += n;
    pa_kafka_stats s;
    CHECK_OK(pa_queue_kafka_stats(q, &s));
    if (s.assigned > 0 && !assigned_at) assigned_at = now_s();
  }
  CHECK_MSG(assigned_at > 0, "%s: the late consumer never got partitions", topic);
  q->ops->close(q);
  return total;
}

/* ---- tests ----------------------------------------------------------------------------- */

/* Canceled while queued: the worker that claims it records a canceled Result, runs nothing. */
static void test_cancel_queued(void) {
  topics("kq", 1);
  produce_tiny("kq", "kq1");
  CHECK(cli_cancel("kq", "kq1") == 0);
  static reader r;
  reader_open(&r, "kq", 1);
  pid_t w = worker("kq", "cq", "--once", NULL);
  CHECK(wait_exit(w, 120) == 0);
  CHECK(WAIT(&r, "kq1", canceled, 1, 60));
  job_seen *s = job(&r, "kq1");
  CHECK_MSG(s && s->canceled == 1 && s->start == 0 && s->completed == 0 && s->code == PW_E_CANCELED &&
                strstr(s->message, "before it started"),
            "kq1: canceled %d start %d completed %d code %s (%s)", s ? s->canceled : -1, s ? s->start : -1,
            s ? s->completed : -1, s ? pw_code_name(s->code) : "", s ? s->message : "");
  CHECK(!output_exists("kq1"));
  reader_close(&r);
  int left = leftovers("kq", 1.0);
  CHECK_MSG(left == 0, "the canceled job was left for the group (%d)", left);
  printf("cancel queued: recorded canceled at claim, not started, acknowledged (new member got %d)\n", left);
}

/* Canceled while running: stops at the next step, records canceled "while running". */
static void test_cancel_running(void) {
  topics("kr", 1);
  produce_long("kr", "kr1");
  static reader r;
  reader_open(&r, "kr", 1);
  pid_t w = worker("kr", "cr", "--once", NULL);
  CHECK(WAIT(&r, "kr1", start, 1, 120));
  double t0 = now_s();
  CHECK(cli_cancel("kr", "kr1") == 0);
  CHECK(wait_exit(w, 120) == 0);
  double dt = now_s() - t0;
  CHECK(WAIT(&r, "kr1", canceled, 1, 60));
  job_seen *s = job(&r, "kr1");
  CHECK_MSG(s && s->canceled == 1 && s->completed == 0 && s->code == PW_E_CANCELED && strstr(s->message, "while running"),
            "kr1: canceled %d completed %d code %s (%s)", s ? s->canceled : -1, s ? s->completed : -1,
            s ? pw_code_name(s->code) : "", s ? s->message : "");
  CHECK(!output_exists("kr1"));
  reader_close(&r);
  printf("cancel running: the worker stopped and exited %.2f s after `paella job cancel` was started\n", dt);
}

/* Killed mid-job twice with max_deliveries 2: the third worker dead-letters it (deliveries 3)
 * after recording a failed too_many_attempts Result; the job never ran a third time. */
static void test_killed_twice(void) {
  topics("kk", 1);
  produce_long("kk", "kk1");
  static reader r;
  reader_open(&r, "kk", 1);
  const char *names[] = {"ka", "kb", "kc"};
  double t0 = now_s();
  for (int i = 0; i < 2; i++) {
    pid_t w = worker("kk", names[i], "--max-deliveries", "2", NULL);
    bool started = WAIT(&r, "kk1", start, i + 1, 180);
    CHECK_MSG(started, "kk1: start %d not seen", i + 1);
    kill(w, SIGKILL);
    CHECK(wait_exit(w, 30) == 128 + SIGKILL);
    if (!started) break;
  }
  pid_t w = worker("kk", names[2], "--max-deliveries", "2", NULL);
  bool dead = WAIT(&r, "kk1", dead, 1, 180);
  kill(w, SIGTERM);
  CHECK(wait_exit(w, 60) == 0);
  reader_pump(&r, 500);
  job_seen *s = job(&r, "kk1");
  CHECK_MSG(dead && s && s->dead == 1 && !strcmp(s->dead_code, "too_many_attempts") &&
                !strcmp(s->dead_deliveries, "3") && s->start == 2 && s->failed == 1 && s->completed == 0 &&
                s->code == PW_E_TOO_MANY_ATTEMPTS,
            "kk1: dead %d (%s, deliveries %s), start %d, failed %d (%s), completed %d", s ? s->dead : -1,
            s ? s->dead_code : "", s ? s->dead_deliveries : "", s ? s->start : -1, s ? s->failed : -1,
            s ? pw_code_name(s->code) : "", s ? s->completed : -1);
  reader_close(&r);
  int left = leftovers("kk", 1.0);
  CHECK(left == 0);
  printf("killed twice: 2 SIGKILLs mid-job, the third worker dead-lettered kk1 with deliveries %s in %.1f s "
         "(failed result %s), new member got %d\n", s ? s->dead_deliveries : "?", now_s() - t0,
         s ? pw_code_name(s->code) : "?", left);
}

/* Jobs on 4 partitions, two workers (batches of 2), N_KILLS SIGKILLs while jobs complete, each
 * killed worker replaced: every job ends with a completed result and its file, none dead. */
static void test_kill_no_loss(void) {
  enum { N = 120, N_KILLS = 4, NP = 4 };
  topics("kn", NP);
  static char json[N][256];
  const char *js[N];
  for (int i = 0; i < N; i++) {
    snprintf(json[i], sizeof json[i],
             "{\"id\":\"kn%03d\",\"prompt\":\"a tiny fox %d\",\"width\":32,\"height\":32,\"steps\":2,"
             "\"prior\":{\"steps\":1}}", i, i);
    js[i] = json[i];
  }
  produce_json("kn", js, N);
  static reader r;
  reader_open(&r, "kn", NP);
  const char *names[] = {"n0", "n1", "n2", "n3", "n4", "n5", "n6", "n7"};
  pid_t w[2] = {worker("kn", names[0], "--max-batch", "2", "--max-deliveries", "20", NULL),
                worker("kn", names[1], "--max-batch", "2", "--max-deliveries", "20", NULL)};
  int next_name = 2, kills = 0, done = 0;
  srand(20261201);
  double t0 = now_s();
  for (double end = now_s() + 400; now_s() < end;) {
    reader_pump(&r, 100);
    done = 0;
    for (int i = 0; i < r.n; i++) done += r.jobs[i].completed > 0;
    if (done >= N) break;
    /* kill k at the k-th fifth of the jobs (the workers are busy then, so the victim is likely
     * mid-job); the moments vary only with the machine's speed */
    if (kills < N_KILLS && done >= (kills + 1) * N / (N_KILLS + 1)) {
      sleep_ms(rand() % 150);
      int v = rand() % 2;
      kill(w[v], SIGKILL);
      CHECK(wait_exit(w[v], 30) == 128 + SIGKILL);
      w[v] = worker("kn", names[next_name++], "--max-batch", "2", "--max-deliveries", "20", NULL);
      kills++;
      printf("kill %d at %.2f s: %d jobs completed so far\n", kills, now_s() - t0, done);
    }
  }
  double elapsed = now_s() - t0;
  for (int i = 0; i < 2; i++) kill(w[i], SIGTERM);
  for (int i = 0; i < 2; i++) CHECK(wait_exit(w[i], 60) == 0);
  reader_pump(&r, 500);
  int lost = 0, dup = 0, files = 0, deadl = 0, starts_more = 0;
  for (int i = 0; i < N; i++) {
    char id[16];
    snprintf(id, sizeof id, "kn%03d", i);
    job_seen *s = job(&r, id);
    lost += !s || s->completed == 0;
    dup += s && s->completed > 1;
    deadl += s && s->dead > 0;
    starts_more += s && s->start > 1;
    files += output_exists(id);
  }
  reader_close(&r);
  int left = leftovers("kn", 1.5);
  CHECK_MSG(kills == N_KILLS, "only %d kills happened", kills);
  CHECK_MSG(lost == 0 && files == N && deadl == 0 && left == 0,
            "%d lost, %d files of %d, %d dead letters, %d left for the group", lost, files, N, deadl, left);
  if (lost) tail_log();
  printf("kill test: %d jobs, %d kills, %d with a completed result (%d lost, %d completed twice, %d started more "
         "than once), %d files, %d dead letters, %d left for the group, %.1f s\n",
         N, kills, N - lost, lost, dup, starts_more, files, deadl, left, elapsed);
}

int main(void) {
  double t0 = now_s();
  snprintf(dir, sizeof dir, "/tmp/paella-kwtest-XXXXXX");
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    return 1;
  }
  atexit(kill_all);
  signal(SIGINT, on_fatal);
  signal(SIGTERM, on_fatal);
  signal(SIGSEGV, on_fatal);
  signal(SIGABRT, on_fatal);
  snprintf(out_dir, sizeof out_dir, "%s/out", dir);
  snprintf(log_path, sizeof log_path, "%s/workers.log", dir);
  setenv("OMP_NUM_THREADS", "1", 0);
  char err[256];
  rd_kafka_conf_t *c = rd_kafka_conf_new();
  rd_kafka_t *holder = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof err);
  CHECK_MSG(holder != NULL, "%s", err);
  if (!holder) TEST_END();
  mc = rd_kafka_mock_cluster_new(holder, 3);
  CHECK(mc != NULL);
  if (!mc) TEST_END();
  boot = rd_kafka_mock_cluster_bootstraps(mc);
  int before = test_failed_;
  test_cancel_queued();
  test_cancel_running();
  test_killed_twice();
  test_kill_no_loss();
  if (test_failed_ > before) tail_log();
  rd_kafka_mock_cluster_destroy(mc);
  rd_kafka_destroy(holder);
  printf("kafka workers: %.1f s in all\n", now_s() - t0);
  TEST_END();
}

/* Test harness for the worker: a private redis-server on a free loopback port in a temporary
 * directory (killed at exit, on a fatal signal, and by the kernel if this process dies:
 * PR_SET_PDEATHSIG), paella-worker processes, job submission and polling helpers. */
#ifndef PAELLA_TESTS_WORKER_CORE_HARNESS_H
#define PAELLA_TESTS_WORKER_CORE_HARNESS_H

#include <errno.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "proto/proto.h"

#define H_MAX_CHILDREN 64

static struct {
  pid_t redis;
  int port;
  char dir[256];
  pid_t children[H_MAX_CHILDREN];
} h_;

static inline double h_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static inline void h_sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* A port the kernel just handed out (bound then released: good enough on a test box). */
static inline int h_free_port(void) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) || getsockname(s, (struct sockaddr *)&a, &len)) {
    perror("free port");
    exit(1);
  }
  close(s);
  return ntohs(a.sin_port);
}

static inline void h_kill_all(void) {
  for (int i = 0; i < H_MAX_CHILDREN; i++)
    if (h_.children[i] > 0) {
      kill(h_.children[i], SIGKILL);
      waitpid(h_.children[i], NULL, 0);
      h_.children[i] = 0;
    }
  if (h_.redis > 0) {
    kill(h_.redis, SIGKILL);
    waitpid(h_.redis, NULL, 0);
    h_.redis = 0;
  }
  if (h_.dir[0]) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", h_.dir);
    if (system(cmd)) {
    }
    h_.dir[0] = 0;
  }
}

static inline void h_on_fatal(int sig) {
  h_kill_all();
  signal(sig, SIG_DFL);
  raise(sig);
}

static inline void h_track(pid_t pid) {
  for (int i = 0; i < H_MAX_CHILDREN; i++)
    if (h_.children[i] <= 0) {
      h_.children[i] = pid;
      return;
    }
}

static inline void h_untrack(pid_t pid) {
  for (int i = 0; i < H_MAX_CHILDREN; i++)
    if (h_.children[i] == pid) h_.children[i] = 0;
}

/* fork + exec argv with stderr to `log` (NULL: inherited); the child dies with us. */
static inline pid_t h_spawn(char *const argv[], const char *log) {
  fflush(stdout); /* else the child flushes our buffered output a second time */
  fflush(stderr);
  pid_t parent = getpid(), pid = fork();
  if (pid < 0) {
    perror("fork");
    exit(1);
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    if (log) {
      FILE *f = freopen(log, "a", stderr);
      (void)f;
    }
    FILE *o = freopen("/dev/null", "w", stdout);
    (void)o;
    execvp(argv[0], argv);
    _exit(127);
  }
  return pid;
}

__attribute__((unused)) static redisContext *h_connect(void) {
  redisContext *c = redisConnect("127.0.0.1", h_.port);
  if (!c || c->err) {
    fprintf(stderr, "connect to test redis: %s\n", c ? c->errstr : "oom");
    exit(1);
  }
  return c;
}

/* Every write fsynced before it is acknowledged (set before h_redis_start): a kill -9 of
 * Redis then loses nothing, as production runs it for the chaos test. */
static bool h_fsync_always;

/* True when the server on h_.port is ours: the port is free only between h_free_port and the
 * bind, and another test's redis-server may take it meanwhile (then ours exits, theirs
 * answers PING). Ours is the one whose working directory is h_.dir. */
static inline bool h_redis_is_ours(redisContext *c) {
  redisReply *r = redisCommand(c, "CONFIG GET dir");
  bool ours = r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[1]->type == REDIS_REPLY_STRING &&
              !strcmp(r->element[1]->str, h_.dir);
  freeReplyObject(r);
  return ours;
}

/* redis-server on h_.port in h_.dir (AOF on), waited for until it answers PING; false when
 * it exited (the port was taken) or did not answer in time. */
static inline bool h_redis_try_spawn(void) {
  char port[16], log[300];
  snprintf(port, sizeof port, "%d", h_.port);
  snprintf(log, sizeof log, "%s/redis.log", h_.dir);
  char *argv[] = {"redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
                  "--appendfsync", h_fsync_always ? "always" : "everysec", "--dir", h_.dir, "--daemonize", "no", NULL};
  h_.redis = h_spawn(argv, log);
  for (double t0 = h_now(); h_now() - t0 < 60; h_sleep_ms(20)) {
    if (waitpid(h_.redis, NULL, WNOHANG) == h_.redis) { /* exited: most likely the port was taken */
      h_.redis = 0;
      return false;
    }
    redisContext *c = redisConnect("127.0.0.1", h_.port);
    redisReply *r = c && !c->err ? redisCommand(c, "PING") : NULL;
    bool ok = r && r->type == REDIS_REPLY_STATUS && h_redis_is_ours(c);
    freeReplyObject(r);
    if (c) redisFree(c);
    if (ok) return true;
  }
  kill(h_.redis, SIGKILL);
  waitpid(h_.redis, NULL, 0);
  h_.redis = 0;
  return false;
}

static inline void h_redis_spawn(void) {
  if (!h_redis_try_spawn()) {
    fprintf(stderr, "redis-server did not start on port %d (see %s/redis.log)\n", h_.port, h_.dir);
    exit(1);
  }
}

/* Starts the private Redis; returns its port. */
static inline int h_redis_start(void) {
  snprintf(h_.dir, sizeof h_.dir, "/tmp/paella-wtest-XXXXXX");
  if (!mkdtemp(h_.dir)) {
    perror("mkdtemp");
    exit(1);
  }
  atexit(h_kill_all);
  signal(SIGINT, h_on_fatal);
  signal(SIGTERM, h_on_fatal);
  signal(SIGSEGV, h_on_fatal);
  signal(SIGABRT, h_on_fatal);
  for (int tries = 0; tries < 5; tries++) { /* a port taken by another test: pick another */
    h_.port = h_free_port();
    if (h_redis_try_spawn()) return h_.port;
  }
  fprintf(stderr, "redis-server did not start (see %s/redis.log)\n", h_.dir);
  exit(1);
}

/* kill -9, down for down_ms, then the same server back from its AOF. */
static inline void h_redis_crash_restart(int down_ms) {
  kill(h_.redis, SIGKILL);
  waitpid(h_.redis, NULL, 0);
  h_sleep_ms(down_ms);
  h_redis_spawn();
}

static inline const char *h_dir(void) { return h_.dir; }

/* XADD stream * id <id> job <bytes>; returns the entry id in `entry` (may be NULL). */
static inline void h_xadd(redisContext *c, const char *stream, const char *id, const void *job, size_t len, char *entry) {
  redisReply *r = redisCommand(c, "XADD %s * id %s job %b", stream, id, job, len);
  if (!r || r->type != REDIS_REPLY_STRING) {
    fprintf(stderr, "XADD failed\n");
    exit(1);
  }
  if (entry) snprintf(entry, 64, "%s", r->str);
  freeReplyObject(r);
}

/* Encodes a JSON job and adds it to the stream. */
static inline void h_submit_json(redisContext *c, const char *stream, const char *json) {
  pw_job job;
  pw_error err;
  uint8_t *buf = NULL;
  size_t len = 0;
  if (pw_job_from_json(json, strlen(json), &job, &err) || pw_job_encode(&job, &buf, &len, &err)) {
    fprintf(stderr, "bad test job %s: %s %s\n", json, err.field, err.message);
    exit(1);
  }
  h_xadd(c, stream, job.id, buf, len, NULL);
  free(buf);
  pw_job_free(&job);
}

/* A tiny txt2img job (32x32, 2 steps, 1 prior step) with extra JSON fields appended. */
static inline void h_submit_tiny(redisContext *c, const char *stream, const char *id, const char *extra) {
  char json[2048];
  snprintf(json, sizeof json,
           "{\"id\":\"%s\",\"prompt\":\"a tiny fox %s\",\"width\":32,\"height\":32,\"steps\":2,"
           "\"prior\":{\"steps\":1}%s%s}",
           id, id, extra && *extra ? "," : "", extra ? extra : "");
  h_submit_json(c, stream, json);
}

/* HGET as a malloc'd string (NULL when absent). */
static char *h_hget(redisContext *c, const char *key, const char *field) {
  redisReply *r = redisCommand(c, "HGET %s %s", key, field);
  char *s = r && r->type == REDIS_REPLY_STRING ? strdup(r->str) : NULL;
  freeReplyObject(r);
  return s;
}

static char *h_status(redisContext *c, const char *job_id) {
  char key[128];
  snprintf(key, sizeof key, "paella:job:%s", job_id);
  return h_hget(c, key, "status");
}

/* True when the job's status equals `want` before the timeout. */
static inline bool h_wait_status(redisContext *c, const char *job_id, const char *want, double timeout_s) {
  for (double t0 = h_now(); h_now() - t0 < timeout_s; h_sleep_ms(10)) {
    char *s = h_status(c, job_id);
    bool ok = s && !strcmp(s, want);
    free(s);
    if (ok) return true;
  }
  return false;
}

static inline long long h_int(redisContext *c, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  redisReply *r = redisvCommand(c, fmt, ap);
  va_end(ap);
  long long v = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
  freeReplyObject(r);
  return v;
}

/* Lines of a log file that contain a (and b, when given). */
static inline int h_log_lines(const char *path, const char *a, const char *b) {
  FILE *f = fopen(path, "r");
  char line[8192];
  int n = 0;
  while (f && fgets(line, sizeof line, f)) n += strstr(line, a) && (!b || strstr(line, b));
  if (f) fclose(f);
  return n;
}

/* The last n lines of a log on stderr (for a failing test). */
static inline void h_tail_log(const char *path, int n) {
  char cmd[400];
  snprintf(cmd, sizeof cmd, "tail -n %d '%s' >&2", n, path);
  if (system(cmd)) {
  }
}

/* Events of `type` for job_id in the job events stream. */
static inline int h_events_of(redisContext *c, const char *job_id, const char *type) {
  redisReply *r = redisCommand(c, "XRANGE paella:jobs:events - +");
  int n = 0;
  for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
    redisReply *f = r->element[i]->element[1];
    bool t = false, mine = false;
    for (size_t k = 0; k + 1 < f->elements; k += 2) {
      t |= !strcmp(f->element[k]->str, "type") && !strcmp(f->element[k + 1]->str, type);
      mine |= !strcmp(f->element[k]->str, "id") && !strcmp(f->element[k + 1]->str, job_id);
    }
    n += t && mine;
  }
  freeReplyObject(r);
  return n;
}

/* Waits for a child; its exit status, or -1 on timeout (then it is killed). */
static inline int h_wait_exit(pid_t pid, double timeout_s) {
  for (double t0 = h_now(); h_now() - t0 < timeout_s; h_sleep_ms(10)) {
    int st;
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid) {
      h_untrack(pid);
      return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }
  }
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  h_untrack(pid);
  return -1;
}

/* paella-worker with the test's Redis and file storage plus extra args (NULL-terminated). */
static inline pid_t h_worker(const char *storage_dir, const char *log, ...) {
  static char queue[128], storage[512];
  char *argv[40];
  int n = 0;
  snprintf(queue, sizeof queue, "redis://127.0.0.1:%d/0", h_.port);
  snprintf(storage, sizeof storage, "file://%s", storage_dir);
  argv[n++] = PAELLA_BINARY_DIR "/paella-worker";
  argv[n++] = "--queue";
  argv[n++] = queue;
  argv[n++] = "--storage";
  argv[n++] = storage;
  va_list ap;
  va_start(ap, log);
  for (char *a; n < 39 && (a = va_arg(ap, char *));) argv[n++] = a;
  va_end(ap);
  argv[n] = NULL;
  pid_t pid = h_spawn(argv, log);
  h_track(pid);
  return pid;
}

#endif

/* ---- a webhook receiver (libmicrohttpd) that records every delivery -------------------- */
#include <microhttpd.h>
#include <pthread.h>

#define H_MAX_HOOKS 4096

typedef struct {
  char id[160], ts[32], sig[256];
  char *body;
} h_hook;

static struct {
  struct MHD_Daemon *d;
  int port;
  pthread_mutex_t mu;
  h_hook hooks[H_MAX_HOOKS];
  int n;
} h_rx_ = {.mu = PTHREAD_MUTEX_INITIALIZER};

typedef struct {
  char *buf;
  size_t len;
} h_upload;

static enum MHD_Result h_rx_handle(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                   const char *version, const char *data, size_t *size, void **con_cls) {
  (void)cls, (void)url, (void)method, (void)version;
  h_upload *u = *con_cls;
  if (!u) {
    *con_cls = calloc(1, sizeof *u);
    return *con_cls ? MHD_YES : MHD_NO;
  }
  if (*size) {
    char *b = realloc(u->buf, u->len + *size + 1);
    if (!b) return MHD_NO;
    memcpy(b + u->len, data, *size);
    u->buf = b;
    u->len += *size;
    u->buf[u->len] = 0;
    *size = 0;
    return MHD_YES;
  }
  const char *id = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "webhook-id");
  const char *ts = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "webhook-timestamp");
  const char *sig = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "webhook-signature");
  pthread_mutex_lock(&h_rx_.mu);
  if (h_rx_.n < H_MAX_HOOKS) {
    h_hook *h = &h_rx_.hooks[h_rx_.n++];
    snprintf(h->id, sizeof h->id, "%s", id ? id : "");
    snprintf(h->ts, sizeof h->ts, "%s", ts ? ts : "");
    snprintf(h->sig, sizeof h->sig, "%s", sig ? sig : "");
    h->body = u->buf ? u->buf : strdup("");
    u->buf = NULL;
  }
  pthread_mutex_unlock(&h_rx_.mu);
  free(u->buf);
  free(u);
  *con_cls = NULL;
  static char ok[] = "ok";
  struct MHD_Response *r = MHD_create_response_from_buffer(2, ok, MHD_RESPMEM_PERSISTENT);
  enum MHD_Result ret = MHD_queue_response(conn, 200, r);
  MHD_destroy_response(r);
  return ret;
}

static inline int h_receiver_start(void) {
  /* port 0: the kernel picks a free one at bind time (no window for another test to take it) */
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  h_rx_.d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL, h_rx_handle, NULL, MHD_OPTION_SOCK_ADDR,
                             (struct sockaddr *)&a, MHD_OPTION_END);
  const union MHD_DaemonInfo *info = h_rx_.d ? MHD_get_daemon_info(h_rx_.d, MHD_DAEMON_INFO_BIND_PORT) : NULL;
  if (!info || !info->port) {
    fprintf(stderr, "webhook receiver did not start\n");
    exit(1);
  }
  h_rx_.port = info->port;
  return h_rx_.port;
}

static inline void h_receiver_stop(void) {
  if (h_rx_.d) MHD_stop_daemon(h_rx_.d);
  h_rx_.d = NULL;
  for (int i = 0; i < h_rx_.n; i++) free(h_rx_.hooks[i].body);
  h_rx_.n = 0;
}

/* Deliveries whose webhook-id equals id. */
static inline int h_hooks_with_id(const char *id) {
  int n = 0;
  pthread_mutex_lock(&h_rx_.mu);
  for (int i = 0; i < h_rx_.n; i++) n += !strcmp(h_rx_.hooks[i].id, id);
  pthread_mutex_unlock(&h_rx_.mu);
  return n;
}

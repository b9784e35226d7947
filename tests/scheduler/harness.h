/* Scheduler test harness: a private redis-server, the scheduler in this process, the real
 * paella-worker as a child, and a minimal HTTP/1.1 client. Every child gets
 * PR_SET_PDEATHSIG, and harness_cleanup (atexit) stops them, so a failing or killed test
 * leaves no process behind. */
#ifndef PAELLA_TESTS_SCHEDULER_HARNESS_H
#define PAELLA_TESTS_SCHEDULER_HARNESS_H

#include <arpa/inet.h>
#include <errno.h>
#include <ftw.h>
#include <jansson.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "scheduler/sched.h"
#include "tests/test.h"

static pid_t h_redis_pid, h_worker_pid;
static char h_dir[256];
static int h_redis_port;
/* Extra redis-server arguments (NULL-terminated; e.g. --requirepass) and the workers' --queue
 * when it is not the plain redis://127.0.0.1:PORT/0 (e.g. with credentials). */
static const char *const *h_redis_extra;
static char h_queue_url[512];
/* The store of the workers and the scheduler ("": file://{h_dir}/outputs), e.g. an s3rver bucket. */
static char h_storage[384];

__attribute__((unused)) static double h_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

__attribute__((unused)) static int h_free_port(void) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) || getsockname(s, (struct sockaddr *)&a, &len)) {
    if (s >= 0) close(s);
    return -1;
  }
  close(s);
  return ntohs(a.sin_port);
}

__attribute__((unused)) static pid_t h_spawn(char *const argv[], const char *log) {
  pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    FILE *f = log ? freopen(log, "w", stdout) : NULL;
    if (f) dup2(fileno(f), 2);
    setenv("OMP_NUM_THREADS", "1", 1);
    execvp(argv[0], argv);
    _exit(127);
  }
  return pid;
}

__attribute__((unused)) static void h_kill(pid_t *pid) {
  if (*pid <= 0) return;
  kill(*pid, SIGTERM);
  for (int i = 0; i < 50; i++) {
    if (waitpid(*pid, NULL, WNOHANG) == *pid) {
      *pid = 0;
      return;
    }
    usleep(100000);
  }
  kill(*pid, SIGKILL);
  waitpid(*pid, NULL, 0);
  *pid = 0;
}

__attribute__((unused)) static int h_rm(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st, (void)flag, (void)ftw;
  return remove(path);
}

__attribute__((unused)) static void harness_cleanup(void) {
  h_kill(&h_worker_pid);
  h_kill(&h_redis_pid);
  if (h_dir[0] && !getenv("PAELLA_KEEP_TMP")) nftw(h_dir, h_rm, 16, FTW_DEPTH | FTW_PHYS);
  h_dir[0] = 0;
}

__attribute__((unused)) static void h_on_signal(int sig) {
  harness_cleanup();
  signal(sig, SIG_DFL);
  raise(sig);
}

/* Starts redis-server (AOF on, as production must run) in a fresh temp dir. */
__attribute__((unused)) static int harness_start_redis(void) {
  snprintf(h_dir, sizeof h_dir, "/tmp/paella-sched-XXXXXX");
  if (!mkdtemp(h_dir)) return -1;
  atexit(harness_cleanup);
  signal(SIGINT, h_on_signal);
  signal(SIGTERM, h_on_signal);
  signal(SIGABRT, h_on_signal);
  signal(SIGPIPE, SIG_IGN);
  for (int attempt = 0; attempt < 5; attempt++) {
    h_redis_port = h_free_port();
    char port[16], log[300];
    snprintf(port, sizeof port, "%d", h_redis_port);
    snprintf(log, sizeof log, "%s/redis.log", h_dir);
    char *argv[40] = {"redis-server", "--port", port, "--bind", "127.0.0.1", "--dir", h_dir, "--save", "",
                      "--appendonly", "yes", "--maxmemory-policy", "noeviction", "--daemonize", "no", NULL};
    for (int i = 0, n = 15; h_redis_extra && h_redis_extra[i] && n < 39; i++) argv[n++] = (char *)h_redis_extra[i];
    h_redis_pid = h_spawn(argv, log);
    for (int i = 0; i < 100; i++) {
      struct timeval tv = {0, 200000};
      redisContext *c = redisConnectWithTimeout("127.0.0.1", h_redis_port, tv);
      bool ok = c && !c->err;
      redisReply *r = ok ? redisCommand(c, "PING") : NULL;
      /* NOAUTH: up, with a password (h_redis_extra) */
      bool up = r && r->type == REDIS_REPLY_STATUS, locked = r && r->type == REDIS_REPLY_ERROR && !strncmp(r->str, "NOAUTH", 6);
      if (r) freeReplyObject(r);
      ok = false;
      /* The port is free only until the bind: another test's redis-server may hold it now
       * (ours then exits). Without a password, INFO names the process that answered. */
      if (up) {
        redisReply *info = redisCommand(c, "INFO server");
        const char *pid = info && info->type == REDIS_REPLY_STRING ? strstr(info->str, "process_id:") : NULL;
        ok = pid && atoi(pid + 11) == (int)h_redis_pid;
        if (info) freeReplyObject(info);
      }
      if (c) redisFree(c);
      bool exited = waitpid(h_redis_pid, NULL, WNOHANG) == h_redis_pid;
      if (exited) h_redis_pid = 0;
      if (locked) ok = !exited; /* with a password: ours if it still runs */
      if (ok) return 0;
      if (exited) break; /* port taken: retry */
      usleep(50000);
    }
    h_kill(&h_redis_pid);
  }
  return -1;
}

__attribute__((unused)) static void harness_config(sched_config *c) {
  sched_config_defaults(c);
  c->redis.port = h_redis_port;
  c->listen_port = 0;
  /* the workers' store (harness_start_worker): shards go beside the images they gather */
  if (h_storage[0]) snprintf(c->storage, sizeof c->storage, "%s", h_storage);
  else snprintf(c->storage, sizeof c->storage, "file://%s/outputs", h_dir);
  snprintf(c->access_log, sizeof c->access_log, "off"); /* tests that read it set a file */
}

__attribute__((unused)) static int harness_start_worker(const char *extra_flag) {
  char queue[512], storage[400], log[300];
  snprintf(queue, sizeof queue, "redis://127.0.0.1:%d/0", h_redis_port);
  if (h_queue_url[0]) snprintf(queue, sizeof queue, "%s", h_queue_url);
  snprintf(storage, sizeof storage, "file://%s/outputs", h_dir);
  if (h_storage[0]) snprintf(storage, sizeof storage, "%s", h_storage);
  snprintf(log, sizeof log, "%s/worker.log", h_dir);
  char *argv[] = {PAELLA_BINARY_DIR "/paella-worker", "--queue", queue, "--storage", storage, "--lease-ms", "5000",
                  (char *)extra_flag, NULL};
  h_worker_pid = h_spawn(argv, log);
  return h_worker_pid > 0 ? 0 : -1;
}

/* The whole stack: redis-server, the scheduler in this process (`c` from harness_config)
 * and a worker with `worker_flag` (or NULL). 0 when everything started. */
__attribute__((unused)) static int harness_start_stack(sched_config *c, sched_tracker **t, sched_server **s,
                                                       const char *worker_flag) {
  *t = NULL;
  *s = NULL;
  if (harness_start_redis()) {
    fprintf(stderr, "cannot start redis-server\n");
    return -1;
  }
  harness_config(c);
  if (tracker_start(c, t) != PA_OK || sched_server_start(c, s) != PA_OK) return -1;
  return harness_start_worker(worker_flag);
}

__attribute__((unused)) static void harness_stop_stack(sched_tracker *t, sched_server *s) {
  sched_server_stop(s);
  tracker_stop(t);
  sched_redis_drop();
  harness_cleanup();
  hub_shutdown();
}

/* The workers' lag read as KEDA's redis-streams scaler reads it for lagCount: the group's
 * `lag` field of XINFO GROUPS, or XLEN while the group does not exist. -1: a null lag (Redis
 * could not compute it; KEDA then never wakes the workers), -2: Redis failed. */
__attribute__((unused)) static long long h_keda_lag(const sched_config *c, const char *stream, const char *group) {
  redisReply *r = sched_cmdf(c, "XINFO GROUPS %s", stream);
  long long lag = -2;
  bool found = false;
  for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
    const redisReply *g = r->element[i];
    bool mine = false;
    for (size_t k = 0; g->type == REDIS_REPLY_ARRAY && k + 1 < g->elements; k += 2) {
      const char *key = g->element[k]->str;
      const redisReply *v = g->element[k + 1];
      if (!strcmp(key, "name")) mine = v->type == REDIS_REPLY_STRING && !strcmp(v->str, group);
      if (mine && !strcmp(key, "lag")) {
        found = true;
        lag = v->type == REDIS_REPLY_INTEGER ? v->integer : -1;
      }
    }
  }
  if (r) freeReplyObject(r);
  if (found) return lag;
  r = sched_cmdf(c, "XLEN %s", stream);
  if (r && r->type == REDIS_REPLY_INTEGER) lag = r->integer;
  if (r) freeReplyObject(r);
  return lag;
}

/* Waits until the KEDA-read lag is `want`; false (and the last value in *last) past timeout_s. */
__attribute__((unused)) static bool h_wait_lag(const sched_config *c, const char *stream, const char *group,
                                               long long want, double timeout_s, long long *last) {
  for (double end = h_now() + timeout_s; h_now() < end; usleep(100000))
    if ((*last = h_keda_lag(c, stream, group)) == want) return true;
  return false;
}

/* ---- HTTP client -------------------------------------------------------------------- */
typedef struct {
  int status;
  char *head; /* status line + headers */
  char *body;
  json_t *json; /* parsed body (NULL when not JSON) */
} h_resp;

__attribute__((unused)) static void h_resp_free(h_resp *r) {
  free(r->head);
  free(r->body);
  json_decref(r->json);
  memset(r, 0, sizeof *r);
}

/* The client's source address for h_http: 0 = any (127.0.0.1); "127.0.0.2" tells the
 * scheduler's per-client cap that another client is asking. */
static const char *h_src_ip;

/* One request on a fresh connection (Connection: close); reads until EOF or timeout_s. */
__attribute__((unused)) static int h_http(int port, const char *method, const char *path, const char *headers, const char *body,
                  size_t body_len, double timeout_s, h_resp *out) {
  memset(out, 0, sizeof *out);
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  struct sockaddr_in src = {.sin_family = AF_INET};
  if (s >= 0 && h_src_ip && inet_pton(AF_INET, h_src_ip, &src.sin_addr) == 1 &&
      bind(s, (struct sockaddr *)&src, sizeof src)) {
    close(s);
    return -1;
  }
  if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a)) {
    if (s >= 0) close(s);
    return -1;
  }
  struct timeval tv = {(time_t)timeout_s, (suseconds_t)((timeout_s - (time_t)timeout_s) * 1e6)};
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  size_t cap = 512 + (headers ? strlen(headers) : 0);
  char *req = malloc(cap + body_len);
  int n = snprintf(req, cap, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%sContent-Length: %zu\r\n\r\n",
                   method, path, headers ? headers : "", body_len);
  if (body_len) memcpy(req + n, body, body_len);
  size_t total = (size_t)n + body_len, sent = 0;
  while (sent < total) {
    ssize_t w = send(s, req + sent, total - sent, MSG_NOSIGNAL);
    if (w <= 0) break; /* the server may answer (413) before reading everything */
    sent += (size_t)w;
  }
  free(req);
  size_t len = 0, rcap = 65536;
  char *buf = malloc(rcap);
  double until = h_now() + timeout_s;
  for (;;) {
    if (len + 4096 > rcap) buf = realloc(buf, rcap *= 2);
    ssize_t r = recv(s, buf + len, rcap - len - 1, 0);
    if (r <= 0 || h_now() > until) break;
    len += (size_t)r;
  }
  close(s);
  buf[len] = 0;
  char *sep = strstr(buf, "\r\n\r\n");
  if (!sep || sscanf(buf, "HTTP/1.%*d %d", &out->status) != 1) {
    free(buf);
    return -1;
  }
  out->head = strndup(buf, (size_t)(sep - buf));
  out->body = strdup(sep + 4);
  out->json = json_loads(out->body, JSON_DECODE_ANY, NULL);
  free(buf);
  return 0;
}

__attribute__((unused)) static const char *h_str(const json_t *j, const char *path) {
  /* "a.b.c" into nested objects */
  char key[128];
  const json_t *cur = j;
  while (cur && *path) {
    size_t n = strcspn(path, ".");
    snprintf(key, sizeof key, "%.*s", (int)n, path);
    cur = json_object_get(cur, key);
    path += n + (path[n] == '.');
  }
  return json_is_string(cur) ? json_string_value(cur) : NULL;
}

__attribute__((unused)) static bool h_str_is(const json_t *j, const char *path, const char *want) {
  const char *v = h_str(j, path);
  return v && !strcmp(v, want);
}

#endif

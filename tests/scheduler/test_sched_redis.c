/* Redis as operators run it: with a password (requirepass) and an ACL user. The scheduler
 * and the worker read one --queue URL with one parser (worker/redis_url.c): the scheduler is
 * ready and a job runs through a worker with the same URL; a wrong or missing password is a
 * clear error on /readyz (503 with Redis' reason) and at worker start.
 * Retention: a finished job's record expires after --job-ttl (then 404), acknowledged stream
 * entries are trimmed on every lane (never a pending or unread one: the lag stays exact), dead
 * letters are capped, owner index entries go with their expired records only. */
#include "scheduler/jobs_internal.h"
#include "tests/scheduler/harness.h"

#define JSON_CT "Content-Type: application/json\r\n"
#define SMALL "{\"prompt\":\"a red fox\",\"width\":32,\"height\":32,\"steps\":2,\"prior\":{\"steps\":2}}"

static void test_parse(void) {
  pa_redis_url r;
  CHECK_OK(pa_redis_url_parse("redis://al%40ice:p%2Bw+x@redis.example:6380/3?stream=s1&group=g1&events_group=e1"
                              "&events_maxlen=50", &r));
  CHECK(!strcmp(r.user, "al@ice") && !strcmp(r.password, "p+w+x") && !strcmp(r.host, "redis.example"));
  CHECK(r.port == 6380 && r.db == 3 && r.events_maxlen == 50);
  CHECK(!strcmp(r.stream, "s1") && !strcmp(r.group, "g1") && !strcmp(r.events_group, "e1"));
  CHECK_OK(pa_redis_url_parse("redis://:pw@10.0.0.1", &r));
  CHECK(!r.user[0] && !strcmp(r.password, "pw") && r.port == 6379 && r.db == 0 && !strcmp(r.stream, "paella:jobs"));
  CHECK_OK(pa_redis_url_parse("rediss://:pw@10.0.0.1:6380/0", &r)); /* TLS: test_sched_redis_tls */
  CHECK(r.tls && r.port == 6380 && !strcmp(r.password, "pw"));
  CHECK(pa_redis_url_parse("redis://h:6379/x", &r) == PA_ERR_INVALID && strstr(pa_errmsg(), "database"));
  CHECK(pa_redis_url_parse("redis://h:99999/0", &r) == PA_ERR_INVALID);
  sched_config c;
  sched_config_defaults(&c);
  /* a Kafka queue (scheduler/kafka.c): the workers' URL, and the registry must be named */
  CHECK_OK(sched_config_set_queue(&c, "kafka://b1:9092,b2:9092?topic=t&group=w&events_group=e&linger.ms=1"));
  const pa_kafka_url *k = &c.kafka.url;
  CHECK(c.kafka.on && !strcmp(k->brokers, "b1:9092,b2:9092") && !strcmp(k->topic, "t"));
  CHECK(!strcmp(k->group, "w") && !strcmp(k->events_group, "e") && k->n_props == 1 &&
        !strcmp(k->prop_key[0], "linger.ms") && !strcmp(k->prop_value[0], "1"));
  CHECK(sched_config_set_queue(&c, "kafka://b:9092?acks=0") == PA_ERR_INVALID && strstr(pa_errmsg(), "acks"));
  CHECK(sched_config_set_queue(&c, "kafka://?topic=t") == PA_ERR_INVALID && strstr(pa_errmsg(), "brokers"));
  CHECK(sched_config_set_registry(&c, "kafka://b:9092") == PA_ERR_INVALID && strstr(pa_errmsg(), "redis://"));
  sched_config_defaults(&c);
  bool help;
  char *argv[] = {"paella-scheduler", "--queue", "kafka://b:9092?topic=t", NULL};
  CHECK(sched_config_parse(&c, 3, argv, &help) == PA_ERR_INVALID && strstr(pa_errmsg(), "--registry"));
  sched_config_defaults(&c);
  char *argv2[] = {"paella-scheduler", "--queue", "kafka://b:9092?topic=t", "--registry", "redis://r:6380/2", NULL};
  CHECK(sched_config_parse(&c, 5, argv2, &help) == PA_OK && c.kafka.on && c.redis.port == 6380 && c.redis.db == 2);
  /* the last argument: an unknown option is named as unknown, a known one as missing its value */
  sched_config_defaults(&c);
  char *argv3[] = {"paella-scheduler", "--bogus", NULL};
  CHECK(sched_config_parse(&c, 2, argv3, &help) == PA_ERR_INVALID && strstr(pa_errmsg(), "unknown option --bogus"));
  char *argv4[] = {"paella-scheduler", "--max-side", NULL};
  CHECK(sched_config_parse(&c, 2, argv4, &help) == PA_ERR_INVALID && strstr(pa_errmsg(), "--max-side needs a value"));
  char *argv5[] = {"paella-scheduler", "--queue", NULL};
  CHECK(sched_config_parse(&c, 2, argv5, &help) == PA_ERR_INVALID && strstr(pa_errmsg(), "--queue needs a value"));
}

static int readyz(const sched_config *c, h_resp *r) {
  sched_server *s = NULL;
  int rc = sched_server_start(c, &s);
  if (rc == PA_OK) rc = h_http(sched_server_port(s), "GET", "/readyz", NULL, NULL, 0, 10, r);
  sched_server_stop(s);
  return rc;
}

/* A scheduler whose --queue is `url` answers /readyz 503 naming `reason`. */
static void check_refused(const char *url, const char *reason) {
  sched_config c;
  harness_config(&c);
  CHECK_OK(sched_config_set_queue(&c, url));
  h_resp r;
  CHECK(readyz(&c, &r) == 0);
  CHECK_MSG(r.status == 503 && r.body && strstr(r.body, reason), "%s: %d %s", url, r.status, r.body ? r.body : "");
  CHECK_MSG(!r.body || !strstr(r.body, "wrongpw"), "the password leaked: %s", r.body);
  h_resp_free(&r);
}

/* paella-worker started with `url` exits 1 and its log names `reason`. */
static void check_worker_refused(const char *url, const char *reason) {
  char storage[400], log[300];
  snprintf(storage, sizeof storage, "file://%s/outputs", h_dir);
  snprintf(log, sizeof log, "%s/bad-worker.log", h_dir);
  char *argv[] = {PAELLA_BINARY_DIR "/paella-worker", "--queue", (char *)url, "--storage", storage, NULL};
  pid_t pid = h_spawn(argv, log);
  int st = 0;
  bool exited = false;
  for (double end = h_now() + 120; !exited && h_now() < end; usleep(100000)) exited = waitpid(pid, &st, WNOHANG) == pid;
  if (!exited) h_kill(&pid);
  CHECK_MSG(exited && WIFEXITED(st) && WEXITSTATUS(st) == 1, "worker with %s did not stop with status 1", url);
  FILE *f = fopen(log, "r");
  char text[8192] = "";
  size_t n = f ? fread(text, 1, sizeof text - 1, f) : 0;
  text[n] = 0;
  if (f) fclose(f);
  CHECK_MSG(strstr(text, reason), "worker log lacks '%s': %s", reason, text);
}

static long long int_cmd(const sched_config *c, const char *fmt, const char *a, const char *b) {
  redisReply *r = sched_cmdf(c, fmt, a, b);
  long long v = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -100;
  if (r) freeReplyObject(r);
  return v;
}

/* The finished job's record expires (--job-ttl 3 here), GET then answers 404 not_found; the
 * stream keeps no acknowledged entry, not even the last delivered one, and the lag is 0. */
static void test_retention_of_jobs(const sched_config *c, int port, const char *id) {
  char key[160], path[160];
  snprintf(key, sizeof key, "paella:job:%s", id);
  long long ttl = int_cmd(c, "TTL %s%s", key, "");
  CHECK_MSG(ttl > 0 && ttl <= 3, "TTL of a finished job: %lld", ttl);
  snprintf(path, sizeof path, "/v1/jobs/%s", id);
  bool gone = false;
  for (double end = h_now() + 60; !gone && h_now() < end; usleep(200000)) {
    h_resp r;
    gone = h_http(port, "GET", path, NULL, NULL, 0, 10, &r) == 0 && r.status == 404 &&
           h_str_is(r.json, "error.code", "not_found") && r.body && strstr(r.body, "no job");
    h_resp_free(&r);
  }
  CHECK_MSG(gone, "GET %s is not 404 after the retention", path);
  long long trimmed = -1, lag = -3;
  CHECK_OK(tracker_trim(c, &trimmed));
  CHECK(int_cmd(c, "XLEN %s%s", c->redis.stream, "") == 0); /* the last delivered entry went too */
  CHECK_MSG((lag = h_keda_lag(c, c->redis.stream, c->redis.group)) == 0, "lag after trimming: %lld", lag);
}

/* On a private stream: two groups, one pending entry, unread entries. Trimming keeps
 * everything from the oldest entry a group still needs; dead letters keep the newest N. */
static void test_trim_keeps_unread(void) {
  sched_config c;
  harness_config(&c);
  char url[160];
  snprintf(url, sizeof url, "redis://:pw@127.0.0.1:%d/0?stream=paella:trimtest", h_redis_port);
  CHECK_OK(sched_config_set_queue(&c, url));
  c.dead_letters_max = 3;
  char ids[6][64];
  redisReply *r = sched_cmdf(&c, "XGROUP CREATE paella:trimtest workers $ MKSTREAM");
  if (r) freeReplyObject(r);
  for (int i = 0; i < 6; i++) {
    r = sched_cmdf(&c, "XADD paella:trimtest * id job%d", i);
    snprintf(ids[i], sizeof ids[i], "%s", r && r->type == REDIS_REPLY_STRING ? r->str : "");
    if (r) freeReplyObject(r);
    r = sched_cmdf(&c, "XADD paella:trimtest:dead * id dead%d", i);
    if (r) freeReplyObject(r);
  }
  r = sched_cmdf(&c, "XREADGROUP GROUP workers w1 COUNT 4 STREAMS paella:trimtest >");
  if (r) freeReplyObject(r);
  r = sched_cmdf(&c, "XACK paella:trimtest workers %s %s %s", ids[0], ids[1], ids[3]); /* ids[2] stays pending */
  if (r) freeReplyObject(r);
  long long n = -1, lag = -3;
  CHECK_OK(tracker_trim(&c, &n));
  CHECK_MSG(n == 2 && int_cmd(&c, "XLEN %s%s", "paella:trimtest", "") == 4, "trimmed %lld", n);
  CHECK_MSG((lag = h_keda_lag(&c, "paella:trimtest", "workers")) == 2, "lag after trim: %lld", lag);
  CHECK(int_cmd(&c, "XLEN %s%s", "paella:trimtest:dead", "") == 3);
  /* A second group that read nothing needs every entry from the first one left. */
  r = sched_cmdf(&c, "XGROUP CREATE paella:trimtest audit 0");
  if (r) freeReplyObject(r);
  r = sched_cmdf(&c, "XACK paella:trimtest workers %s", ids[2]);
  if (r) freeReplyObject(r);
  CHECK_OK(tracker_trim(&c, &n));
  CHECK_MSG(n == 0 && int_cmd(&c, "XLEN %s%s", "paella:trimtest", "") == 4, "trimmed %lld with a group behind", n);
  r = sched_cmdf(&c, "XGROUP DESTROY paella:trimtest audit");
  if (r) freeReplyObject(r);
  CHECK_OK(tracker_trim(&c, &n)); /* workers: nothing pending, last delivered ids[3]: it goes too */
  CHECK_MSG(n == 2 && int_cmd(&c, "XLEN %s%s", "paella:trimtest", "") == 2, "trimmed %lld", n);
  CHECK_MSG((lag = h_keda_lag(&c, "paella:trimtest", "workers")) == 2, "lag after trim: %lld", lag);
  r = sched_cmdf(&c, "XREADGROUP GROUP workers w1 COUNT 10 STREAMS paella:trimtest >");
  CHECK(r && r->type == REDIS_REPLY_ARRAY && r->elements == 1 && r->element[0]->element[1]->elements == 2);
  if (r) freeReplyObject(r);
  CHECK_MSG((lag = h_keda_lag(&c, "paella:trimtest", "workers")) == 0, "lag once all read: %lld", lag);
}

static void cmd(const sched_config *c, const char *fmt, const char *a, const char *b, const char *d) {
  redisReply *r = sched_cmdf(c, fmt, a, b, d);
  CHECK_MSG(r && r->type != REDIS_REPLY_ERROR, "%s: %s", fmt, r && r->str ? r->str : "no reply");
  if (r) freeReplyObject(r);
}

/* On a private stream: the owner index entry of a finished job goes once its record is gone,
 * and only then: not for a record that lives on (a dead letter requeued: PERSIST, waiting in
 * its owner's queue again) nor for one not expired yet (the score came from another replica's
 * clock: looked at again later). A job waiting in its owner's queue is left alone, and the
 * lanes' streams are trimmed like the normal one. */
static void test_trim_owner_index(void) {
  sched_config c;
  harness_config(&c);
  char url[160];
  snprintf(url, sizeof url, "redis://:pw@127.0.0.1:%d/0?stream=paella:rettest", h_redis_port);
  CHECK_OK(sched_config_set_queue(&c, url));
  sched_zsets z = sched_zsets_of(&c);
  pa_key index = pa_key_owner_jobs("carol");
  pa_key gone = pa_key_job("ret-gone"), back = pa_key_job("ret-back"), later = pa_key_job("ret-later"),
         waiting = pa_key_job("ret-waiting");
  pa_key queue = pa_key_wait_queue_prefix(c.redis.stream, PA_LANE_LOW), ring = pa_key_wait_ring(c.redis.stream, PA_LANE_LOW);
  char past[32], qkey[PA_KEY_MAX + 16];
  snprintf(past, sizeof past, "%lld", (long long)now_ms() - 1000);
  snprintf(qkey, sizeof qkey, "%scarol", queue.s);
  const char *ids[] = {"ret-gone", "ret-back", "ret-later", "ret-waiting"};
  for (int i = 0; i < 4; i++) cmd(&c, "ZADD %s 1 %s%s", index.s, ids[i], "");
  cmd(&c, "HSET %s status %s%s", gone.s, "succeeded", "");
  cmd(&c, "PEXPIRE %s 1%s%s", gone.s, "", "");
  cmd(&c, "HSET %s status %s%s", back.s, "queued", ""); /* requeued: no TTL */
  cmd(&c, "HSET %s status %s%s", later.s, "succeeded", "");
  cmd(&c, "EXPIRE %s 600%s%s", later.s, "", "");
  cmd(&c, "HSET %s status queued waiting %s%s", waiting.s, "1", "");
  cmd(&c, "RPUSH %s %s%s", qkey, "ret-waiting", "");
  cmd(&c, "RPUSH %s %s%s", ring.s, "carol", "");
  for (int i = 0; i < 3; i++) {
    char m[64];
    snprintf(m, sizeof m, "%s carol", ids[i]); /* "ID OWNER", one member */
    cmd(&c, "ZADD %s %s %s", z.expiring, past, m);
  }
  /* the high lane: three entries delivered, two acknowledged, the third pending */
  pa_key high = pa_key_lane(c.redis.stream, PA_LANE_HIGH);
  cmd(&c, "XGROUP CREATE %s %s $ MKSTREAM%s", high.s, c.redis.group, "");
  char e[3][64];
  for (int i = 0; i < 3; i++) {
    redisReply *r = sched_cmdf(&c, "XADD %s * id h%d", high.s, i);
    snprintf(e[i], sizeof e[i], "%s", r && r->type == REDIS_REPLY_STRING ? r->str : "");
    if (r) freeReplyObject(r);
  }
  cmd(&c, "XREADGROUP GROUP %s w1 COUNT 3 STREAMS %s >%s", c.redis.group, high.s, "");
  cmd(&c, "XACK %s %s %s", high.s, c.redis.group, e[0]);
  cmd(&c, "XACK %s %s %s", high.s, c.redis.group, e[1]);
  usleep(50000); /* ret-gone's record expires */
  long long n = -1;
  CHECK_OK(tracker_trim(&c, &n));
  CHECK_MSG(n == 2 && int_cmd(&c, "XLEN %s%s", high.s, "") == 1, "high lane: trimmed %lld", n);
  CHECK_MSG(int_cmd(&c, "ZSCORE %s %s", index.s, "ret-gone") == -100, "the expired job is still listed");
  redisReply *r = sched_cmdf(&c, "ZMSCORE %s ret-back ret-later ret-waiting", index.s);
  CHECK_MSG(r && r->type == REDIS_REPLY_ARRAY && r->elements == 3 && r->element[0]->type == REDIS_REPLY_STRING &&
                r->element[1]->type == REDIS_REPLY_STRING && r->element[2]->type == REDIS_REPLY_STRING,
            "a live job lost its owner index entry");
  if (r) freeReplyObject(r);
  char member[64];
  snprintf(member, sizeof member, "ret-later carol");
  CHECK_MSG(int_cmd(&c, "ZCARD %s%s", z.expiring, "") == 1, "expiring keeps only the record not expired yet");
  r = sched_cmdf(&c, "ZSCORE %s %s", z.expiring, member);
  CHECK_MSG(r && r->type == REDIS_REPLY_STRING && atoll(r->str) > now_ms() + 500 * 1000,
            "ret-later is looked at again when its record expires: %s", r && r->str ? r->str : "none");
  if (r) freeReplyObject(r);
  CHECK(int_cmd(&c, "LLEN %s%s", qkey, "") == 1 && int_cmd(&c, "TTL %s%s", waiting.s, "") == -1);
}

static bool wait_succeeded(int port, const char *id, double timeout_s) {
  char path[128];
  snprintf(path, sizeof path, "/v1/jobs/%s", id);
  for (double end = h_now() + timeout_s; h_now() < end; usleep(100000)) {
    h_resp r;
    bool done = h_http(port, "GET", path, NULL, NULL, 0, 10, &r) == 0 && h_str_is(r.json, "status", "succeeded");
    h_resp_free(&r);
    if (done) return true;
  }
  return false;
}

int main(void) {
  test_parse();
  static const char *const extra[] = {"--requirepass", "pw", "--user", "alice", "on", ">apw", "~*", "&*", "+@all", NULL};
  h_redis_extra = extra;
  if (harness_start_redis()) {
    fprintf(stderr, "cannot start redis-server\n");
    return 1;
  }
  char url[256];
  sched_config c;
  harness_config(&c);
  snprintf(url, sizeof url, "redis://:pw@127.0.0.1:%d/0", h_redis_port);
  CHECK_OK(sched_config_set_queue(&c, url));
  snprintf(h_queue_url, sizeof h_queue_url, "%s", url);
  c.job_ttl_s = 3;
  sched_tracker *t = NULL;
  sched_server *s = NULL;
  CHECK_OK(tracker_start(&c, &t));
  CHECK_OK(sched_server_start(&c, &s));
  CHECK(harness_start_worker(NULL) == 0);
  if (s) {
    int port = sched_server_port(s);
    h_resp r;
    CHECK(h_http(port, "GET", "/readyz", NULL, NULL, 0, 10, &r) == 0 && r.status == 200);
    h_resp_free(&r);
    CHECK(h_http(port, "POST", "/v1/jobs", JSON_CT, SMALL, strlen(SMALL), 60, &r) == 0 && r.status == 202);
    char id[64] = "";
    if (h_str(r.json, "id")) snprintf(id, sizeof id, "%s", h_str(r.json, "id"));
    h_resp_free(&r);
    CHECK_MSG(id[0] && wait_succeeded(port, id, 240), "job %s did not succeed through the password-protected Redis", id);
    test_retention_of_jobs(&c, port, id);
  }
  test_trim_keeps_unread();
  test_trim_owner_index();
  /* An ACL user (AUTH USER PASSWORD) is ready too. */
  sched_config acl;
  harness_config(&acl);
  snprintf(url, sizeof url, "redis://alice:apw@127.0.0.1:%d/0", h_redis_port);
  CHECK_OK(sched_config_set_queue(&acl, url));
  h_resp r;
  CHECK(readyz(&acl, &r) == 0 && r.status == 200);
  h_resp_free(&r);
  snprintf(url, sizeof url, "redis://:wrongpw@127.0.0.1:%d/0", h_redis_port);
  check_refused(url, "WRONGPASS");
  check_worker_refused(url, "WRONGPASS");
  snprintf(url, sizeof url, "redis://alice:wrongpw@127.0.0.1:%d/0", h_redis_port);
  check_refused(url, "WRONGPASS");
  snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", h_redis_port);
  check_refused(url, "NOAUTH");
  check_worker_refused(url, "NOAUTH");
  harness_stop_stack(t, s);
  TEST_END();
}

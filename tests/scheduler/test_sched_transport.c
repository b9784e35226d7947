/* One behaviour, two transports: the same scenario against the scheduler on Redis and on Kafka
 * (docs/queues.md, "The scheduler on Kafka"), picked by PAELLA_TEST_TRANSPORT=redis|kafka (two
 * ctest entries). On Kafka, librdkafka's mock cluster runs in this process and the real
 * paella-worker (a child) reaches it over loopback, the registry is a real redis-server and the
 * scheduler runs in this process with --queue kafka://... --registry redis://...; on Redis, the
 * same redis-server is the queue. What differs is only how the test looks at the transport
 * (a record on the topic, an entry on the stream) and where it puts a poison job.
 *   - a job canceled while queued (handed over to the transport) stays canceled; on Kafka its
 *     cancel record is on {topic}.control;
 *   - at most --dispatch-depth jobs not yet started are handed over to the transport, the rest
 *     wait in their owner's queue (fair share and priorities work on both);
 *   - jobs submitted over HTTP run on the Kafka worker: an SSE stream carries start, progress and
 *     the status events, the job ends succeeded with an output and 1 attempt;
 *   - a poison job put on the transport directly ends in GET /v1/deadletters;
 *   - `paella submit --wait` works unchanged against this scheduler, a batch completes (its items
 *     on the low lane); /metrics counts the jobs and the dashboard is served;
 *   - a running job canceled through the API stops on the worker (canceled, no output);
 *   - on Kafka, a running job past its deadline gets its cancel record.
 * Waits are for states with generous timeouts; figures are printed. */
#include <sys/stat.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "tests/scheduler/harness.h"
#include "worker/kafka_topics.h"

#define JSON_CT "Content-Type: application/json\r\n"
#define SMALL "{\"prompt\":\"a red fox\",\"width\":32,\"height\":32,\"steps\":2,\"prior\":{\"steps\":2}}"
#define TOPIC "t.jobs"
/* Short group timings so the mock coordinator settles within seconds (its first join is held
 * 3 s, so the session timeout must exceed that). */
#define PROPS                                                                                         \
  "&session.timeout.ms=6000&heartbeat.interval.ms=500&max.poll.interval.ms=60000"                   \
  "&auto.commit.interval.ms=100&topic.metadata.refresh.interval.ms=500&reconnect.backoff.ms=50" \
  "&reconnect.backoff.max.ms=200&fetch.wait.max.ms=10&log_level=3"

static int port;
static bool kafka; /* PAELLA_TEST_TRANSPORT=kafka */
static rd_kafka_mock_cluster_t *mc;
static const char *boot;
static const sched_config *cfg;

static int submit(const char *body, char *id, size_t cap) {
  h_resp r;
  id[0] = 0;
  int status = h_http(port, "POST", "/v1/jobs", JSON_CT, body, strlen(body), 60, &r) == 0 ? r.status : -1;
  if (h_str(r.json, "id")) snprintf(id, cap, "%s", h_str(r.json, "id"));
  h_resp_free(&r);
  return status;
}

static char *status_of(const char *id, char *out, size_t cap) {
  char path[128];
  h_resp r;
  snprintf(path, sizeof path, "/v1/jobs/%s", id);
  out[0] = 0;
  if (h_http(port, "GET", path, NULL, NULL, 0, 10, &r) == 0 && h_str(r.json, "status"))
    snprintf(out, cap, "%s", h_str(r.json, "status"));
  h_resp_free(&r);
  return out;
}

static bool wait_status(const char *id, const char *want, double timeout_s) {
  char s[32];
  for (double end = h_now() + timeout_s; h_now() < end; usleep(200000))
    if (!strcmp(status_of(id, s, sizeof s), want)) return true;
  fprintf(stderr, "job %s: %s, not %s after %.0f s\n", id, s, want, timeout_s);
  return false;
}

/* The value of the last record under `key` on `topic` (partition 0, from the beginning), or "". */
static void last_record(const char *topic, const char *key, char *out, size_t cap) {
  char err[256];
  out[0] = 0;
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", boot, err, sizeof err);
  rd_kafka_conf_set(conf, "group.id", "test-reader", err, sizeof err);
  rd_kafka_conf_set(conf, "enable.partition.eof", "true", err, sizeof err);
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
  if (!rk) return;
  rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(l, topic, 0)->offset = RD_KAFKA_OFFSET_BEGINNING;
  rd_kafka_assign(rk, l);
  rd_kafka_topic_partition_list_destroy(l);
  for (double end = h_now() + 30; h_now() < end;) {
    rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
    if (!m) continue;
    bool eof = m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF;
    if (!m->err && m->key && m->key_len == strlen(key) && !memcmp(m->key, key, m->key_len))
      snprintf(out, cap, "%.*s", (int)m->len, m->payload ? (const char *)m->payload : "");
    rd_kafka_message_destroy(m);
    if (eof) break;
  }
  rd_kafka_consumer_close(rk);
  rd_kafka_destroy(rk);
}

static void produce_raw(const char *topic, const char *key, const char *value) {
  char err[256];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", boot, err, sizeof err);
  rd_kafka_t *p = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
  CHECK(p != NULL);
  if (!p) return;
  CHECK(rd_kafka_producev(p, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, strlen(key)),
                          RD_KAFKA_V_VALUE((void *)value, strlen(value)), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                          RD_KAFKA_V_END) == RD_KAFKA_RESP_ERR_NO_ERROR);
  CHECK(rd_kafka_flush(p, 30000) == RD_KAFKA_RESP_ERR_NO_ERROR);
  rd_kafka_destroy(p);
}

/* ---- the transport, as the workers see it ---------------------------------------------- */

/* Whether job `id` was handed over: a record on the jobs topic, an entry on the (normal) lane. */
static bool handed_over(const char *id) {
  if (kafka) {
    char value[4096];
    last_record(TOPIC, id, value, sizeof value);
    return value[0] != 0;
  }
  redisReply *r = sched_cmdf(cfg, "XRANGE %s - +", cfg->redis.stream);
  bool found = false;
  for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements && !found; i++) {
    const redisReply *f = r->element[i]->element[1];
    for (size_t k = 0; k + 1 < f->elements; k += 2)
      found |= !strcmp(f->element[k]->str, "id") && !strcmp(f->element[k + 1]->str, id);
  }
  if (r) freeReplyObject(r);
  return found;
}

static void put_poison(const char *id, const char *bytes) {
  if (kafka) {
    produce_raw(TOPIC, id, bytes);
    return;
  }
  redisReply *r = sched_cmdf(cfg, "XADD %s * job %s id %s", cfg->redis.stream, bytes, id);
  CHECK(r && r->type == REDIS_REPLY_STRING);
  if (r) freeReplyObject(r);
}

/* ---- SSE in a thread (it blocks until the job settles) ------------------------------------- */
typedef struct {
  char path[160];
  h_resp r;
  int rc;
} sse_call;

static void *sse_main(void *arg) {
  sse_call *s = arg;
  s->rc = h_http(port, "GET", s->path, NULL, NULL, 0, 240, &s->r);
  return NULL;
}

/* ---- the tests -------------------------------------------------------------------------- */

/* No worker runs yet: the job is forwarded to the jobs topic, then canceled. */
static void test_cancel_queued(char *id, size_t cap) {
  CHECK(submit(SMALL, id, cap) == 202 && id[0]);
  char path[128], value[64];
  double t0 = h_now();
  bool over = false;
  for (double end = h_now() + 60; h_now() < end && !(over = handed_over(id));) usleep(100000);
  CHECK_MSG(over, "job %s was never handed over", id);
  printf("%s: submitted job handed over after %.2f s\n", kafka ? "kafka" : "redis", h_now() - t0);
  h_resp r;
  snprintf(path, sizeof path, "/v1/jobs/%s/cancel", id);
  CHECK(h_http(port, "POST", path, NULL, NULL, 0, 60, &r) == 0 && r.status == 200 &&
        h_str_is(r.json, "status", "canceled"));
  h_resp_free(&r);
  CHECK(h_http(port, "POST", path, NULL, NULL, 0, 60, &r) == 0 && r.status == 409); /* already canceled */
  h_resp_free(&r);
  if (!kafka) return;
  last_record(TOPIC PA_KAFKA_CONTROL_SUFFIX, id, value, sizeof value);
  CHECK_MSG(!strcmp(value, PA_KAFKA_CANCEL_VALUE), "control record of %s: \"%s\"", id, value);
}

/* The window (--dispatch-depth 2 here): with the canceled job and B[0] on the topic and no
 * worker, B[1] and B[2] wait in their owner's queue; once a worker starts, everything runs.
 * B[0]'s SSE stream, opened before the worker starts, carries every event. */
static void test_window_and_sse(const char *canceled) {
  char id[3][64], st[32];
  double t0 = h_now();
  for (int i = 0; i < 3; i++) CHECK(submit(SMALL, id[i], sizeof id[i]) == 202 && id[i][0]);
  bool over = false;
  for (double end = h_now() + 60; h_now() < end && !(over = handed_over(id[0]));) usleep(100000);
  CHECK_MSG(over, "job %s was never handed over", id[0]);
  sleep(2); /* room for a wrong dispatcher or forwarder to hand over more */
  for (int i = 1; i < 3; i++) {
    CHECK_MSG(!handed_over(id[i]), "job %s was handed over beyond the window", id[i]);
    CHECK(!strcmp(status_of(id[i], st, sizeof st), "queued"));
  }
  sse_call s = {.rc = -1};
  snprintf(s.path, sizeof s.path, "/v1/jobs/%s/events", id[0]);
  pthread_t th;
  CHECK(pthread_create(&th, NULL, sse_main, &s) == 0);
  CHECK(harness_start_worker(NULL) == 0); /* only now: the SSE stream sees every event */
  for (int i = 0; i < 3; i++) CHECK(wait_status(id[i], "succeeded", 180));
  pthread_join(th, NULL);
  CHECK(s.rc == 0 && s.r.status == 200 && s.r.body);
  const char *b = s.r.body ? s.r.body : "";
  /* the stream ends with the status event of the settled job (as on Redis: test_sched_api) */
  CHECK_MSG(strstr(b, "event: start") && strstr(b, "event: progress") && strstr(b, "\"stage\":\"denoise\"") &&
                strstr(b, "\"status\":\"running\"") && strstr(b, "\"status\":\"succeeded\""),
            "SSE stream: %.600s", b);
  h_resp_free(&s.r);
  char path[128];
  h_resp r;
  snprintf(path, sizeof path, "/v1/jobs/%s", id[0]);
  CHECK(h_http(port, "GET", path, NULL, NULL, 0, 10, &r) == 0 && r.status == 200 &&
        json_array_size(json_object_get(json_object_get(r.json, "result"), "outputs")) == 1 &&
        json_integer_value(json_object_get(r.json, "attempts")) == 1);
  h_resp_free(&r);
  printf("%s: 3 jobs submitted -> succeeded (worker start included) in %.1f s\n", kafka ? "kafka" : "redis",
         h_now() - t0);
  /* the canceled job was on the transport before these: the worker has read it by now, and
   * whatever it made of it, the registry keeps the client's cancel */
  CHECK_MSG(!strcmp(status_of(canceled, st, sizeof st), "canceled"), "canceled job is %s", st);
}

static void test_poison(void) {
  put_poison("poison-1", "not msgpack at all");
  bool found = false;
  double t0 = h_now();
  for (double end = h_now() + 120; h_now() < end && !found; usleep(300000)) {
    h_resp r;
    if (h_http(port, "GET", "/v1/deadletters", NULL, NULL, 0, 10, &r) == 0 && r.status == 200) {
      json_t *data = json_object_get(r.json, "data"), *e;
      size_t i;
      json_array_foreach(data, i, e) if (h_str_is(e, "job_id", "poison-1") && h_str(e, "code") &&
                                         *h_str(e, "code")) found = true;
    }
    h_resp_free(&r);
  }
  CHECK_MSG(found, "poison-1 not in /v1/deadletters");
  printf("%s: poison job in the dead-letter view after %.1f s\n", kafka ? "kafka" : "redis", h_now() - t0);
}

static void test_cli(void) {
  char cmd[1024];
  snprintf(cmd, sizeof cmd,
           "PAELLA_URL=http://127.0.0.1:%d OMP_NUM_THREADS=1 %s/paella submit --prompt 'a fox' -W 32 -H 32 --steps 2 "
           "--prior-steps 2 --wait 180 >%s/cli.out 2>%s/cli.err",
           port, PAELLA_BINARY_DIR, h_dir, h_dir);
  CHECK(system(cmd) == 0);
  char path[300];
  snprintf(path, sizeof path, "%s/cli.out", h_dir);
  FILE *f = fopen(path, "r");
  char buf[8192] = "";
  size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
  buf[n] = 0;
  if (f) fclose(f);
  CHECK_MSG(strstr(buf, "\"status\": \"succeeded\""), "paella submit --wait: %.400s", buf);
  /* paella submit (no wait), then paella wait ID */
  snprintf(cmd, sizeof cmd,
           "PAELLA_URL=http://127.0.0.1:%d %s/paella submit --prompt 'a hen' -W 32 -H 32 --steps 2 --prior-steps 2 "
           ">%s/cli.out 2>%s/cli.err",
           port, PAELLA_BINARY_DIR, h_dir, h_dir);
  CHECK(system(cmd) == 0);
  f = fopen(path, "r");
  n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
  buf[n] = 0;
  if (f) fclose(f);
  json_t *j = json_loads(buf, 0, NULL);
  const char *id = json_string_value(json_object_get(j, "id"));
  CHECK_MSG(id, "paella submit printed: %.300s", buf);
  snprintf(cmd, sizeof cmd, "PAELLA_URL=http://127.0.0.1:%d %s/paella wait --timeout 180 %s >%s/cli.out 2>%s/cli.err",
           port, PAELLA_BINARY_DIR, id ? id : "none", h_dir, h_dir);
  json_decref(j);
  CHECK(system(cmd) == 0);
  f = fopen(path, "r");
  n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
  buf[n] = 0;
  if (f) fclose(f);
  CHECK_MSG(strstr(buf, "\"status\": \"succeeded\""), "paella wait: %.400s", buf);
}

/* The mock cluster and the scheduler's Kafka settings (--dispatch-depth is set by the caller). */
static rd_kafka_t *holder;
static void setup_kafka(sched_config *c) {
  char err[256];
  rd_kafka_conf_t *hc = rd_kafka_conf_new();
  holder = rd_kafka_new(RD_KAFKA_PRODUCER, hc, err, sizeof err);
  CHECK_MSG(holder != NULL, "%s", err);
  mc = holder ? rd_kafka_mock_cluster_new(holder, 1) : NULL;
  CHECK(mc != NULL);
  if (!mc) return;
  boot = rd_kafka_mock_cluster_bootstraps(mc);
  /* one partition for the jobs: the canceled job is read before the next one */
  const char *topics[] = {TOPIC, TOPIC PA_KAFKA_EVENTS_SUFFIX, TOPIC PA_KAFKA_DEAD_SUFFIX,
                          TOPIC PA_KAFKA_CONTROL_SUFFIX, TOPIC PA_KAFKA_ATTEMPTS_SUFFIX};
  for (size_t i = 0; i < sizeof topics / sizeof *topics; i++)
    CHECK(rd_kafka_mock_topic_create(mc, topics[i], 1, 1) == RD_KAFKA_RESP_ERR_NO_ERROR);
  char url[sizeof h_queue_url], registry[128];
  snprintf(url, sizeof url, "kafka://%s?topic=" TOPIC "&group=workers" PROPS, boot);
  snprintf(registry, sizeof registry, "redis://127.0.0.1:%d/0", h_redis_port);
  CHECK(sched_config_set_queue(c, url) == PA_OK && c->kafka.on);
  CHECK(sched_config_set_registry(c, registry) == PA_OK);
  snprintf(h_queue_url, sizeof h_queue_url, "%s", url); /* the worker reads the same URL */
  /* flags: a Kafka queue without a registry is refused with a message that says why */
  sched_config bad;
  sched_config_defaults(&bad);
  bool help;
  char *argv[] = {"paella-scheduler", "--queue", url, NULL};
  CHECK(sched_config_parse(&bad, 3, argv, &help) == PA_ERR_INVALID && strstr(pa_errmsg(), "--registry"));
}

/* Whether the worker logged a line about job `id` that contains `needle` (worker.log: one
 * JSON object per line, "job_id" among its fields). */
static bool worker_logged(const char *id, const char *needle) {
  char path[300], tag[128];
  snprintf(path, sizeof path, "%s/worker.log", h_dir);
  snprintf(tag, sizeof tag, "\"job_id\":\"%s\"", id);
  FILE *f = fopen(path, "r");
  if (!f) return false;
  char *line = NULL;
  size_t cap = 0;
  bool found = false;
  while (!found && getline(&line, &cap, f) > 0) found = strstr(line, tag) && strstr(line, needle);
  free(line);
  fclose(f);
  return found;
}

/* A running job canceled through the API stops on the worker: on Kafka the scheduler's record
 * on {topic}.control (jobs_cancel -> sched_kafka_cancel) is read by the worker's watcher, on
 * Redis the cancel flag is. The registry says canceled, the worker finished the job as
 * "canceled while running" (not after its 100 steps), and it stored no output for it. */
static void test_cancel_running(void) {
  const char *body = "{\"prompt\":\"slow\",\"width\":256,\"height\":256,\"steps\":100,\"prior\":{\"steps\":2}}";
  char id[64], path[400], st[32];
  CHECK(submit(body, id, sizeof id) == 202 && id[0]);
  CHECK(wait_status(id, "running", 120));
  double t0 = h_now();
  h_resp r;
  snprintf(path, sizeof path, "/v1/jobs/%s/cancel", id);
  /* the scheduler only records the request: the job is canceled when the worker says so */
  CHECK(h_http(port, "POST", path, NULL, NULL, 0, 60, &r) == 0 && r.status == 200 &&
        json_is_true(json_object_get(r.json, "cancel_requested")));
  h_resp_free(&r);
  CHECK(wait_status(id, "canceled", 120));
  bool stopped = false;
  for (double end = h_now() + 60; h_now() < end && !(stopped = worker_logged(id, "canceled while running"));)
    usleep(200000);
  CHECK_MSG(stopped, "the worker did not stop running job %s after its cancel", id);
  CHECK(worker_logged(id, "\"status\":\"canceled\""));
  printf("%s: running job canceled through the API, stopped on the worker after %.1f s\n", kafka ? "kafka" : "redis",
         h_now() - t0);
  CHECK_MSG(!strcmp(status_of(id, st, sizeof st), "canceled"), "canceled running job is %s", st);
  struct stat sb;
  snprintf(path, sizeof path, "%s/outputs/%s", h_dir, id);
  CHECK_MSG(stat(path, &sb) != 0, "the worker stored an output for canceled job %s", id);
}

/* A running job past its deadline: on Kafka the reaper produces its cancel record (workers
 * that read {topic}.control stop it and the tracker records deadline_exceeded; on Redis the
 * cancel flag does, test_sched_api). Last: the worker is left busy with a long job. */
static void test_running_deadline(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  int64_t now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
  char body[256], id[64], value[64] = "";
  snprintf(body, sizeof body,
           "{\"prompt\":\"slow\",\"width\":256,\"height\":256,\"steps\":100,\"prior\":{\"steps\":2},"
           "\"deadline_ms\":%lld}", (long long)(now + 60000));
  CHECK(submit(body, id, sizeof id) == 202 && id[0]);
  CHECK(wait_status(id, "running", 120));
  /* the deadline moves to now through the registry's deadline index: the reaper acts at once */
  redisReply *r = sched_cmdf(cfg, "ZADD %s %lld %s", pa_key_sched(cfg->redis.stream, "deadlines").s, 0LL, id);
  CHECK(r && r->type == REDIS_REPLY_INTEGER);
  if (r) freeReplyObject(r);
  for (double end = h_now() + 60; h_now() < end && strcmp(value, PA_KAFKA_CANCEL_VALUE); usleep(200000))
    last_record(TOPIC PA_KAFKA_CONTROL_SUFFIX, id, value, sizeof value);
  CHECK_MSG(!strcmp(value, PA_KAFKA_CANCEL_VALUE), "no cancel record for %s past its deadline", id);
}

/* A batch of 3 (its items go to the low lane: priority 0), complete with its shard. */
static void test_batch(void) {
  const char *body = "{\"settings\":{\"width\":32,\"height\":32,\"steps\":2,\"prior\":{\"steps\":2}},"
                     "\"shard_size\":3,\"name\":\"b1\"}\n{\"prompt\":\"a cat\"}\n{\"prompt\":\"a dog\"}\n"
                     "{\"prompt\":\"a bird\"}\n";
  h_resp r;
  double t0 = h_now();
  CHECK(h_http(port, "POST", "/v1/batches", "Content-Type: application/x-ndjson\r\n", body, strlen(body), 60, &r) == 0 &&
        r.status == 202 && h_str_is(r.json, "id", "b1"));
  h_resp_free(&r);
  bool done = false;
  for (double end = h_now() + 180; h_now() < end && !done; usleep(200000)) {
    if (h_http(port, "GET", "/v1/batches/b1", NULL, NULL, 0, 10, &r) == 0)
      done = h_str_is(r.json, "status", "completed") && json_integer_value(json_object_get(r.json, "succeeded")) == 3;
    h_resp_free(&r);
  }
  CHECK_MSG(done, "batch b1 not completed with 3 succeeded");
  printf("%s: batch of 3 completed in %.1f s\n", kafka ? "kafka" : "redis", h_now() - t0);
}

/* The metrics and the dashboard read the same registry on both transports: 8 jobs succeeded
 * (3 + the CLI's 2 + the batch's 3) and 1 canceled in this process. */
static void test_metrics_dashboard(void) {
  h_resp r;
  CHECK(h_http(port, "GET", "/metrics", NULL, NULL, 0, 10, &r) == 0 && r.status == 200 && r.body);
  CHECK_MSG(r.body && strstr(r.body, "paella_jobs_total{status=\"succeeded\"} 8\n") &&
                strstr(r.body, "paella_jobs_total{status=\"canceled\"} 1\n"),
            "metrics: %.800s", r.body ? r.body : "");
  h_resp_free(&r);
  CHECK(h_http(port, "GET", "/", NULL, NULL, 0, 10, &r) == 0 && r.status == 200 && r.body &&
        strstr(r.body, "EventSource"));
  h_resp_free(&r);
}

int main(void) {
  setvbuf(stdout, NULL, _IOLBF, 0); /* nothing buffered is copied into a forked child */
  const char *transport = getenv("PAELLA_TEST_TRANSPORT");
  kafka = transport && !strcmp(transport, "kafka");
  if (transport && !kafka && strcmp(transport, "redis")) {
    fprintf(stderr, "PAELLA_TEST_TRANSPORT=%s: redis or kafka\n", transport);
    return 2;
  }
  double t0 = h_now();
  CHECK(harness_start_redis() == 0);
  sched_config c;
  harness_config(&c);
  cfg = &c;
  c.dispatch_depth = 2; /* jobs handed over and not started yet, at most */
  if (kafka) setup_kafka(&c);
  sched_tracker *t = NULL;
  sched_server *s = NULL;
  CHECK(tracker_start(&c, &t) == PA_OK && sched_server_start(&c, &s) == PA_OK);
  port = s ? sched_server_port(s) : 0;
  if (port) {
    char canceled[64];
    test_cancel_queued(canceled, sizeof canceled);
    test_window_and_sse(canceled);
    test_poison();
    test_cli();
    test_batch();
    test_metrics_dashboard();
    test_cancel_running();
    if (kafka) test_running_deadline();
  }
  if (test_failed_) {
    char cmd[400];
    snprintf(cmd, sizeof cmd, "tail -30 %s/worker.log >&2", h_dir);
    if (system(cmd)) {
    }
  }
  sched_server_stop(s);
  tracker_stop(t);
  sched_redis_drop();
  harness_cleanup();
  hub_shutdown();
  if (mc) rd_kafka_mock_cluster_destroy(mc);
  if (holder) rd_kafka_destroy(holder);
  printf("test_sched_transport (%s): %.1f s\n", kafka ? "kafka" : "redis", h_now() - t0);
  TEST_END();
}

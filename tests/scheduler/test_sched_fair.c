/* Priorities and fair share (docs/queues.md), with a real redis-server, the scheduler in this
 * process (tracker, reaper, dispatcher) and the real paella-worker on the built-in model.
 *
 * starvation: while key A has 2,000 bulk jobs queued (default priority, then the batch
 *   priority), key B submits 20 interactive jobs; all 20 must start before 200 more of A's
 *   have started. Counted on the workers' start events in {stream}:events, in the order the
 *   workers wrote them. With one FIFO queue B's jobs would wait for all of A's.
 * priority: behind 300 queued jobs of priority 5, 5 jobs of priority 9 of the same key start
 *   before 20 more of the priority-5 ones (they are in the high lane, which workers read
 *   first; fair share cannot help: one key).
 * Jobs go through jobs_submit, the function POST /v1/jobs calls after validation. */
#include "scheduler/jobs_internal.h"
#include "tests/scheduler/harness.h"

#define SMALL "\"prompt\":\"a red fox\",\"width\":32,\"height\":32,\"steps\":2,\"prior\":{\"steps\":2}"

static int submit(const sched_config *c, const char *owner, const char *id, int priority) {
  char json[512];
  snprintf(json, sizeof json, "{\"id\":\"%s\",\"priority\":%d," SMALL "}", id, priority);
  pw_job job;
  pw_error err;
  pw_job_init(&job);
  int rc = pw_job_from_json(json, strlen(json), &job, &err);
  submit_outcome out = SUBMIT_QUOTA;
  if (!rc) rc = jobs_submit(c, &job, owner, 1 << 30, NULL, NULL, 0, &out, NULL, 0);
  pw_job_free(&job);
  return rc || out != SUBMIT_CREATED ? -1 : 0;
}

/* The id of the newest entry of {stream}:events ("0-0" when empty). */
static void events_mark(const sched_config *c, char *out, size_t cap) {
  redisReply *r = sched_cmdf(c, "XREVRANGE %s + - COUNT 1", pa_key_events(c->redis.stream).s);
  snprintf(out, cap, "0-0");
  if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 1) snprintf(out, cap, "%s", r->element[0]->element[0]->str);
  if (r) freeReplyObject(r);
}

typedef struct {
  long bulk;      /* start events of ids with the bulk prefix after the mark */
  long urgent;    /* distinct urgent jobs started after the mark */
  long bulk_at_last_urgent; /* bulk starts seen before the last urgent job's first start */
} start_counts;

/* Walks the start events after `mark` in stream order. A job started twice (a retry) counts
 * once per start for bulk (more work ahead of B) and once for urgent. */
static int count_starts(const sched_config *c, const char *mark, const char *bulk_prefix, const char *urgent_prefix,
                        int urgent_total, start_counts *n) {
  memset(n, 0, sizeof *n);
  char from[80], seen[64][48];
  int n_seen = 0;
  snprintf(from, sizeof from, "(%s", mark);
  for (;;) {
    redisReply *r = sched_cmdf(c, "XRANGE %s %s + COUNT 1000", pa_key_events(c->redis.stream).s, from);
    if (!r || r->type != REDIS_REPLY_ARRAY) {
      if (r) freeReplyObject(r);
      return -1;
    }
    for (size_t i = 0; i < r->elements; i++) {
      const redisReply *f = r->element[i]->element[1];
      const char *type = NULL, *id = NULL;
      for (size_t k = 0; k + 1 < f->elements; k += 2) {
        if (!strcmp(f->element[k]->str, "type")) type = f->element[k + 1]->str;
        if (!strcmp(f->element[k]->str, "id")) id = f->element[k + 1]->str;
      }
      if (!type || !id || strcmp(type, "start")) continue;
      if (!strncmp(id, bulk_prefix, strlen(bulk_prefix))) n->bulk++;
      if (strncmp(id, urgent_prefix, strlen(urgent_prefix))) continue;
      bool dup = false;
      for (int s = 0; s < n_seen; s++) dup |= !strcmp(seen[s], id);
      if (dup || n_seen == 64) continue;
      snprintf(seen[n_seen++], sizeof seen[0], "%s", id);
      n->urgent++;
      if (n->urgent == urgent_total) n->bulk_at_last_urgent = n->bulk;
    }
    size_t got = r->elements;
    if (got) snprintf(from, sizeof from, "(%s", r->element[got - 1]->element[0]->str);
    freeReplyObject(r);
    if (got < 1000) return 0;
  }
}

/* Waits until every urgent job started or `limit` bulk ones started after the mark (the
 * outcome is then decided); returns the counts. 60 s+ of patience per state. */
static start_counts wait_urgent(const sched_config *c, const char *mark, const char *bulk, const char *urgent,
                                int urgent_total, long limit) {
  start_counts n = {0};
  double end = h_now() + 240;
  long last_bulk = -1;
  while (h_now() < end) {
    if (count_starts(c, mark, bulk, urgent, urgent_total, &n) == 0 &&
        (n.urgent >= urgent_total || n.bulk >= limit))
      break;
    if (n.bulk != last_bulk) end = h_now() + 120 > end ? h_now() + 120 : end; /* progress: keep waiting */
    last_bulk = n.bulk;
    usleep(100000);
  }
  return n;
}

/* Waits until at least `k` start events followed `mark`: the workers are busy. */
static bool wait_started(const sched_config *c, const char *mark, const char *prefix, long k) {
  start_counts n;
  for (double end = h_now() + 180; h_now() < end; usleep(100000))
    if (count_starts(c, mark, prefix, "-none-", 1, &n) == 0 && n.bulk >= k) return true;
  return false;
}

/* No job is lost between the structures, read atomically (one script) while the worker and
 * the dispatcher run: every queued or running job is waiting in an owner's queue, unread on a
 * lane's stream or pending for a worker (no cancels or retries happened yet: max_attempts 1;
 * entry fields are `job`, `id`: e[1][2][4] is the job id).
 * KEYS: the lanes' streams, then their rings. ARGV: group, then the queue prefixes. */
static const char ACCOUNT_LUA[] =
    "local live, waiting, stream = 0, 0, 0\n"
    "for i = 1, 3 do\n"
    "  for _, owner in ipairs(redis.call('LRANGE', KEYS[3 + i], 0, -1)) do\n"
    "    waiting = waiting + redis.call('LLEN', ARGV[1 + i] .. owner)\n"
    "  end\n"
    "  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[i])) do\n"
    "    local f = {}\n"
    "    for k = 1, #g, 2 do f[g[k]] = g[k + 1] end\n"
    "    if f['name'] == ARGV[1] then\n"
    "      stream = stream + f['lag']\n"
    /* a pending entry whose job is already final (result recorded, ack not yet) is no live job */
    "      for _, p in ipairs(redis.call('XPENDING', KEYS[i], ARGV[1], '-', '+', 100000)) do\n"
    "        local e = redis.call('XRANGE', KEYS[i], p[1], p[1])\n"
    "        local id = e[1] and e[1][2][4]\n"
    "        local st = id and redis.call('HGET', '" PA_KEY_JOB_PREFIX "' .. id, 'status')\n"
    "        if st == 'queued' or st == 'running' then stream = stream + 1 end\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "for _, k in ipairs(redis.call('KEYS', '" PA_KEY_JOB_PREFIX "*')) do\n"
    "  if not string.find(k, ':deliveries', 1, true) then\n"
    "    local s = redis.call('HGET', k, 'status')\n"
    "    if s == 'queued' or s == 'running' then live = live + 1 end\n"
    "  end\n"
    "end\n"
    "return {live, waiting, stream}\n";

static void check_accounting(const sched_config *c, const char *tag) {
  sched_lane l[PA_LANES];
  for (int lane = 0; lane < PA_LANES; lane++) l[lane] = sched_lane_of(c, lane);
  const char *args[] = {l[0].stream.s, l[1].stream.s, l[2].stream.s, l[0].ring.s, l[1].ring.s, l[2].ring.s,
                        c->redis.group, l[0].queue.s, l[1].queue.s, l[2].queue.s};
  redisReply *r = sched_eval(c, ACCOUNT_LUA, 6, 4, args, NULL);
  CHECK(r && r->type == REDIS_REPLY_ARRAY && r->elements == 3);
  if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 3) {
    long long live = r->element[0]->integer, waiting = r->element[1]->integer, stream = r->element[2]->integer;
    printf("%s: %lld jobs queued or running = %lld waiting in the keys' queues + %lld on the lanes' streams\n", tag,
           live, waiting, stream);
    CHECK_MSG(live == waiting + stream && live > 0, "%s: %lld live jobs, %lld waiting + %lld on streams", tag, live,
              waiting, stream);
  }
  if (r) freeReplyObject(r);
}

static void test_starvation(sched_config *c, int bulk_priority, const char *tag) {
  char id[64], mark[64], bulk[32], urgent[32];
  snprintf(bulk, sizeof bulk, "%s-a-", tag);
  snprintf(urgent, sizeof urgent, "%s-b-", tag);
  int bad = 0;
  double t0 = h_now();
  for (int i = 0; i < 2000; i++) {
    snprintf(id, sizeof id, "%s%04d", bulk, i);
    bad += submit(c, "key-a", id, bulk_priority) != 0;
  }
  CHECK_MSG(bad == 0, "%d bulk submissions failed", bad);
  printf("%s: 2000 jobs of key A (priority %d) queued in %.2f s\n", tag, bulk_priority, h_now() - t0);
  events_mark(c, mark, sizeof mark);
  CHECK_MSG(wait_started(c, mark, bulk, 10), "%s: the worker started no bulk job", tag);
  events_mark(c, mark, sizeof mark);
  for (int i = 0; i < 20; i++) {
    snprintf(id, sizeof id, "%s%02d", urgent, i);
    bad += submit(c, "key-b", id, PW_DEFAULT_PRIORITY) != 0;
  }
  CHECK(bad == 0);
  start_counts n = wait_urgent(c, mark, bulk, urgent, 20, 200);
  printf("%s: key B's 20 jobs started: %ld of 20; key A's jobs started meanwhile: %ld (when B's last started: %ld; "
         "limit 200)\n", tag, n.urgent, n.bulk, n.bulk_at_last_urgent);
  CHECK_MSG(n.urgent == 20, "%s: only %ld of key B's 20 jobs started while %ld of key A's did", tag, n.urgent, n.bulk);
  CHECK_MSG(n.urgent == 20 && n.bulk_at_last_urgent < 200, "%s: %ld of key A's jobs started before key B's last",
            tag, n.bulk_at_last_urgent);
  check_accounting(c, tag);
}

static void test_priority(sched_config *c) {
  char id[64], mark[64];
  int bad = 0;
  for (int i = 0; i < 300; i++) {
    snprintf(id, sizeof id, "prio-n-%04d", i);
    bad += submit(c, "key-p", id, PW_DEFAULT_PRIORITY) != 0;
  }
  CHECK(bad == 0);
  events_mark(c, mark, sizeof mark);
  CHECK_MSG(wait_started(c, mark, "prio-n-", 5), "priority: the worker started no job");
  events_mark(c, mark, sizeof mark);
  for (int i = 0; i < 5; i++) {
    snprintf(id, sizeof id, "prio-h-%d", i);
    bad += submit(c, "key-p", id, PW_PRIORITY_MAX) != 0;
  }
  CHECK(bad == 0);
  start_counts n = wait_urgent(c, mark, "prio-n-", "prio-h-", 5, 20);
  printf("priority: 5 jobs of priority %d started: %ld; priority-%d jobs started meanwhile: %ld (when the last "
         "high one started: %ld; limit 20)\n", PW_PRIORITY_MAX, n.urgent, PW_DEFAULT_PRIORITY, n.bulk,
         n.bulk_at_last_urgent);
  CHECK_MSG(n.urgent == 5 && n.bulk_at_last_urgent < 20, "priority: %ld high jobs started; %ld normal ones before",
            n.urgent, n.bulk_at_last_urgent);
}

/* A job past its deadline while still waiting in its key's queue (behind `depth` others) is
 * failed by the reaper and dropped by the dispatcher: it never reaches a stream or a worker. */
static void test_deadline_waiting(sched_config *c) {
  char json[512];
  snprintf(json, sizeof json, "{\"id\":\"late-1\",\"deadline_ms\":%lld," SMALL "}", (long long)now_ms() + 300);
  pw_job job;
  pw_error err;
  pw_job_init(&job);
  submit_outcome out = SUBMIT_QUOTA;
  CHECK(pw_job_from_json(json, strlen(json), &job, &err) == 0 &&
        jobs_submit(c, &job, "key-a", 1 << 30, NULL, NULL, 0, &out, NULL, 0) == PA_OK && out == SUBMIT_CREATED);
  pw_job_free(&job);
  redisReply *r = NULL;
  bool failed = false;
  for (double end = h_now() + 60; !failed && h_now() < end; usleep(100000)) {
    if (r) freeReplyObject(r);
    r = sched_cmdf(c, "HMGET %s status waiting entry worker", pa_key_job("late-1").s);
    failed = r && r->type == REDIS_REPLY_ARRAY && r->element[0]->type == REDIS_REPLY_STRING &&
             !strcmp(r->element[0]->str, "failed");
  }
  CHECK_MSG(failed, "the waiting job past its deadline is not failed");
  if (failed) /* still waiting (never dispatched), never run */
    CHECK(r->element[1]->type == REDIS_REPLY_STRING && !strcmp(r->element[1]->str, "1") &&
          r->element[2]->type == REDIS_REPLY_NIL && r->element[3]->type == REDIS_REPLY_NIL);
  if (r) freeReplyObject(r);
}

/* Every job not started is canceled (a waiting one is dropped by the dispatcher, a dispatched
 * one acknowledged unrun), so the next case starts with an idle worker. The lanes drain. */
static void drain(sched_config *c) {
  redisReply *r = sched_cmdf(c, "KEYS %s", "paella:job:*");
  for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
    const char *key = r->element[i]->str;
    if (strstr(key, ":deliveries")) continue;
    char state[32];
    jobs_cancel(c, key + strlen(PA_KEY_JOB_PREFIX), NULL, state, sizeof state);
  }
  if (r) freeReplyObject(r);
  long long lag = -2, waiting = -1, w[PA_LANES];
  bool empty = false;
  for (double end = h_now() + 180; !empty && h_now() < end; usleep(200000)) {
    lag = 0;
    for (int lane = 0; lane < PA_LANES; lane++)
      lag += h_keda_lag(c, pa_key_lane(c->redis.stream, lane).s, c->redis.group);
    dispatch_all(c, NULL);
    empty = dispatch_waiting(c, w, &waiting) == PA_OK && waiting == 0 && lag == 0;
  }
  CHECK_MSG(empty, "the lanes did not drain: lag %lld, waiting %lld", lag, waiting);
}

int main(void) {
  sched_config c;
  sched_tracker *t = NULL;
  sched_server *s = NULL;
  if (harness_start_redis()) return 1;
  harness_config(&c);
  if (getenv("PAELLA_FAIR_DEPTH")) c.dispatch_depth = atoi(getenv("PAELLA_FAIR_DEPTH")); /* 1<<30: plain FIFO */
  c.max_attempts = 1;
  CHECK_OK(tracker_start(&c, &t));
  CHECK_OK(sched_server_start(&c, &s));
  CHECK(harness_start_worker(NULL) == 0);
  double t0 = h_now();
  test_starvation(&c, PW_DEFAULT_PRIORITY, "def");
  test_deadline_waiting(&c);
  drain(&c);
  test_starvation(&c, PW_BATCH_DEFAULT_PRIORITY, "bat");
  drain(&c);
  test_priority(&c);
  drain(&c);
  printf("fair: %.1f s\n", h_now() - t0);
  harness_stop_stack(t, s);
  TEST_END();
}

/* Prometheus metrics. Counters and histograms live in this process (Prometheus sums the
 * replicas); queue gauges are read from Redis at scrape time, so every replica reports the
 * same backlog. Webhook and embedding-cache counters are incremented by workers in the
 * paella:metrics hash (docs/queues.md). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scheduler/jobs_internal.h"

static _Atomic uint64_t counters[SCHED_M_COUNT];
static const char *const COUNTER_LABEL[SCHED_M_COUNT] = {"succeeded", "failed", "canceled",
                                                         "submitted", "retried", "dead_lettered"};

/* Seconds; a 32 px CPU job takes milliseconds, a 1024 px GPU job tens of seconds. */
static const double BUCKETS[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};
#define N_BUCKETS (sizeof BUCKETS / sizeof BUCKETS[0])

typedef struct {
  uint64_t bucket[N_BUCKETS];
  uint64_t count;
  double sum;
} histogram;

static histogram hist[PW_STAGE_COUNT + 1];
static pthread_mutex_t hist_mu = PTHREAD_MUTEX_INITIALIZER;

void sched_metrics_count(sched_metric_status s) { counters[s]++; }

void sched_metrics_observe(int stage, double seconds) {
  if (stage < 0 || stage > PW_STAGE_COUNT || !(seconds >= 0)) return;
  pthread_mutex_lock(&hist_mu);
  histogram *h = &hist[stage];
  for (size_t i = 0; i < N_BUCKETS; i++)
    if (seconds <= BUCKETS[i]) h->bucket[i]++;
  h->count++;
  h->sum += seconds;
  pthread_mutex_unlock(&hist_mu);
}

typedef struct {
  char *buf;
  size_t len, cap;
  bool oom;
} text;

static void put(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(text *t, const char *fmt, ...) {
  if (t->oom) return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t->buf + t->len, t->cap - t->len, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if (t->len + (size_t)n < t->cap) {
      t->len += (size_t)n;
      return;
    }
    size_t cap = t->cap * 2 + (size_t)n;
    char *b = realloc(t->buf, cap);
    if (!b) {
      t->oom = true;
      return;
    }
    t->buf = b;
    t->cap = cap;
  }
}

static const char *kv(const redisReply *r, const char *name) {
  for (size_t i = 0; i + 1 < r->elements; i += 2)
    if (r->element[i]->type == REDIS_REPLY_STRING && !strcmp(r->element[i]->str, name)) {
      const redisReply *v = r->element[i + 1];
      return v->type == REDIS_REPLY_STRING || v->type == REDIS_REPLY_STATUS ? v->str : NULL;
    }
  return NULL;
}

static long long kv_int(const redisReply *r, const char *name, long long dflt) {
  for (size_t i = 0; i + 1 < r->elements; i += 2)
    if (r->element[i]->type == REDIS_REPLY_STRING && !strcmp(r->element[i]->str, name))
      return r->element[i + 1]->type == REDIS_REPLY_INTEGER ? r->element[i + 1]->integer : dflt;
  return dflt;
}

/* One lane's undelivered entries (the workers' group lag, what KEDA reads) and the Unix ms of
 * the oldest of them (0: none). */
static long long lane_backlog(const sched_config *c, const char *stream, long long *oldest_ms) {
  long long backlog = 0;
  char last[64] = "";
  *oldest_ms = 0;
  redisReply *r = sched_cmdf(c, "XINFO GROUPS %s", stream);
  if (r && r->type == REDIS_REPLY_ARRAY) {
    for (size_t i = 0; i < r->elements; i++) {
      const redisReply *g = r->element[i];
      const char *name = kv(g, "name");
      if (!name || strcmp(name, c->redis.group) != 0) continue;
      backlog = kv_int(g, "lag", -1);
      const char *ld = kv(g, "last-delivered-id");
      if (ld) snprintf(last, sizeof last, "%s", ld);
    }
  }
  if (r) freeReplyObject(r);
  if (backlog < 0 || !last[0]) { /* no group yet, or lag unknown after deletions */
    r = sched_cmdf(c, "XLEN %s", stream);
    if (r && r->type == REDIS_REPLY_INTEGER && !last[0]) backlog = r->integer;
    if (r) freeReplyObject(r);
    if (backlog < 0) backlog = 0;
  }
  r = sched_cmdf(c, "XRANGE %s (%s + COUNT 1", stream, last[0] ? last : "0-0");
  if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 1 && r->element[0]->elements >= 1)
    *oldest_ms = strtoll(r->element[0]->element[0]->str, NULL, 10);
  if (r) freeReplyObject(r);
  return backlog;
}

/* Backlog = every lane's undelivered entries plus the jobs still waiting for dispatch in the
 * API keys' queues (dispatch.c); the oldest undelivered entry dates the queue (stream ids start
 * with their Unix milliseconds). */
static void queue_gauges(const sched_config *c, text *t) {
  long long backlog = 0, lanes[PA_LANES], waiting[PA_LANES] = {0}, waiting_total = 0, oldest_ms = 0;
  for (int lane = 0; lane < PA_LANES; lane++) {
    long long ms = 0;
    lanes[lane] = lane_backlog(c, pa_key_lane(c->redis.stream, lane).s, &ms);
    if (ms && (!oldest_ms || ms < oldest_ms)) oldest_ms = ms;
  }
  if (dispatch_waiting(c, waiting, &waiting_total)) waiting_total = 0;
  for (int lane = 0; lane < PA_LANES; lane++) backlog += lanes[lane] + waiting[lane];
  double oldest = oldest_ms ? (double)(now_ms() - oldest_ms) / 1000.0 : 0;
  if (oldest < 0) oldest = 0;
  put(t, "# HELP paella_queue_backlog Jobs not yet delivered to a worker: on the lanes' streams and waiting for dispatch.\n"
         "# TYPE paella_queue_backlog gauge\npaella_queue_backlog %lld\n", backlog);
  put(t, "# HELP paella_lane_backlog Jobs not yet delivered to a worker, per priority lane and place "
         "(stream: the group's lag, what KEDA reads; waiting: in the API keys' queues).\n"
         "# TYPE paella_lane_backlog gauge\n");
  for (int lane = 0; lane < PA_LANES; lane++)
    put(t, "paella_lane_backlog{lane=\"%s\",place=\"stream\"} %lld\n"
           "paella_lane_backlog{lane=\"%s\",place=\"waiting\"} %lld\n",
        pa_lane_name(lane), lanes[lane], pa_lane_name(lane), waiting[lane]);
  put(t, "# HELP paella_oldest_queued_seconds Age of the oldest undelivered job.\n"
         "# TYPE paella_oldest_queued_seconds gauge\npaella_oldest_queued_seconds %.3f\n", oldest);
  long long inflight = 0;
  redisReply *r = sched_cmdf(c, "ZCARD %s", pa_key_sched(c->redis.stream, "running").s);
  if (r && r->type == REDIS_REPLY_INTEGER) inflight = r->integer;
  if (r) freeReplyObject(r);
  put(t, "# HELP paella_jobs_inflight Jobs a worker is running.\n"
         "# TYPE paella_jobs_inflight gauge\npaella_jobs_inflight %lld\n", inflight);
}

/* Fleet-wide counters the workers add to the paella:metrics hash (docs/queues.md). */
static void worker_counters(const sched_config *c, text *t) {
  static const char *const FIELDS[] = {"webhook_deliveries:ok", "webhook_deliveries:failed", "webhook_deliveries:unsigned",
                                       "webhook_attempts:ok", "webhook_attempts:failed", "embedding_cache_hits"};
  enum { N = sizeof FIELDS / sizeof FIELDS[0] };
  long long v[N] = {0};
  redisReply *r = sched_cmdf(c, "HMGET " PA_KEY_METRICS " %s %s %s %s %s %s", FIELDS[0], FIELDS[1], FIELDS[2], FIELDS[3],
                             FIELDS[4], FIELDS[5]);
  for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && r->elements == N && i < N; i++)
    if (r->element[i]->str) v[i] = strtoll(r->element[i]->str, NULL, 10);
  if (r) freeReplyObject(r);
  put(t, "# HELP paella_webhook_deliveries_total Webhook messages settled by the workers (unsigned: sent without a "
         "signature, the operator allowing it).\n"
         "# TYPE paella_webhook_deliveries_total counter\n"
         "paella_webhook_deliveries_total{result=\"ok\"} %lld\n"
         "paella_webhook_deliveries_total{result=\"failed\"} %lld\n"
         "paella_webhook_deliveries_total{result=\"unsigned\"} %lld\n", v[0], v[1], v[2]);
  put(t, "# HELP paella_webhook_attempts_total Webhook delivery attempts (retries included).\n"
         "# TYPE paella_webhook_attempts_total counter\n"
         "paella_webhook_attempts_total{result=\"ok\"} %lld\n"
         "paella_webhook_attempts_total{result=\"failed\"} %lld\n", v[3], v[4]);
  put(t, "# HELP paella_embedding_cache_hits_total Text embeddings served from the cache.\n"
         "# TYPE paella_embedding_cache_hits_total counter\npaella_embedding_cache_hits_total %lld\n", v[5]);
}

static void histograms(text *t) {
  put(t, "# HELP paella_job_duration_seconds Time per job stage (stage=\"total\": the whole job).\n"
         "# TYPE paella_job_duration_seconds histogram\n");
  pthread_mutex_lock(&hist_mu);
  for (int s = 0; s <= PW_STAGE_COUNT; s++) {
    const char *name = s == PW_STAGE_COUNT ? "total" : pw_stage_name((pw_stage)s);
    const histogram *h = &hist[s];
    for (size_t i = 0; i < N_BUCKETS; i++)
      put(t, "paella_job_duration_seconds_bucket{stage=\"%s\",le=\"%g\"} %" PRIu64 "\n", name, BUCKETS[i], h->bucket[i]);
    put(t, "paella_job_duration_seconds_bucket{stage=\"%s\",le=\"+Inf\"} %" PRIu64 "\n", name, h->count);
    put(t, "paella_job_duration_seconds_sum{stage=\"%s\"} %.6f\n", name, h->sum);
    put(t, "paella_job_duration_seconds_count{stage=\"%s\"} %" PRIu64 "\n", name, h->count);
  }
  pthread_mutex_unlock(&hist_mu);
}

char *sched_metrics_render(const sched_config *c) {
  text t = {malloc(8192), 0, 8192, false};
  if (!t.buf) return NULL;
  t.buf[0] = 0;
  queue_gauges(c, &t);
  put(&t, "# HELP paella_jobs_total Jobs by outcome (submitted, retried and dead_lettered included).\n"
          "# TYPE paella_jobs_total counter\n");
  for (int i = 0; i < SCHED_M_COUNT; i++)
    put(&t, "paella_jobs_total{status=\"%s\"} %" PRIu64 "\n", COUNTER_LABEL[i], (uint64_t)counters[i]);
  histograms(&t);
  worker_counters(c, &t);
  int live = 0, mismatched = 0;
  if (sched_fleet(c, NULL, &live, &mismatched) == PA_OK)
    put(&t, "# HELP paella_fleet_workers Workers advertising their limits (live).\n"
            "# TYPE paella_fleet_workers gauge\npaella_fleet_workers %d\n"
            "# HELP paella_fleet_limits_mismatch Live workers whose limits differ from the scheduler's (see /readyz).\n"
            "# TYPE paella_fleet_limits_mismatch gauge\npaella_fleet_limits_mismatch %d\n", live, mismatched);
  if (t.oom) {
    free(t.buf);
    return NULL;
  }
  return t.buf;
}

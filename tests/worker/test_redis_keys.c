/* The Redis key layout (worker/redis_keys.h), exactly as docs/queues.md documents it: the worker,
 * the scheduler, the CLI and operators' scripts all rely on these names, so a change here is a
 * change of the wire contract and must fail this test first. */
#include <string.h>

#include "proto/limits.h"
#include "tests/test.h"
#include "worker/redis_keys.h"
#include "worker/redis_url.h"

#define KEY_IS(expr, want) CHECK_MSG(!strcmp((expr).s, want), "%s: '%s', want '%s'", #expr, (expr).s, want)

int main(void) {
  /* global keys */
  KEY_IS(pa_key_job("j-1"), "paella:job:j-1");
  KEY_IS(pa_key_job_deliveries("j-1"), "paella:job:j-1:deliveries");
  KEY_IS(pa_key_owner_jobs("alice"), "paella:owner:alice:jobs");
  KEY_IS(pa_key_owner_active("alice"), "paella:owner:alice:active");
  KEY_IS(pa_key_idempotency("alice", "k1"), "paella:idem:alice:k1");
  KEY_IS(pa_key_batch("b-1", ""), "paella:batch:b-1");
  KEY_IS(pa_key_batch("b-1", ":done"), "paella:batch:b-1:done");
  KEY_IS(pa_key_batch_shard_done("b-1", 3), "paella:batch:b-1:done:3");
  KEY_IS(pa_key_batches_retry(), "paella:batches:retry");
  CHECK(!strcmp(PA_KEY_METRICS, "paella:metrics"));
  CHECK(!strcmp(PA_KEY_EMB_PREFIX, "paella:emb:"));
  /* a Lua script builds the job key from the prefix: it must be the same name */
  pa_key job = pa_key_job("x");
  CHECK(!strncmp(job.s, PA_KEY_JOB_PREFIX, strlen(PA_KEY_JOB_PREFIX)) && !strcmp(job.s + strlen(PA_KEY_JOB_PREFIX), "x"));
  /* the retention script builds the owner index from prefix .. owner .. suffix */
  CHECK(!strcmp(PA_KEY_OWNER_PREFIX "alice" PA_KEY_OWNER_JOBS_SUFFIX, pa_key_owner_jobs("alice").s));
  CHECK(!strcmp(PA_KEY_OWNER_PREFIX, "paella:owner:") && !strcmp(PA_KEY_OWNER_JOBS_SUFFIX, ":jobs"));

  /* keys derived from the stream */
  KEY_IS(pa_key_events("paella:jobs"), "paella:jobs:events");
  KEY_IS(pa_key_dead("paella:jobs"), "paella:jobs:dead");
  KEY_IS(pa_key_outbox("paella:jobs"), "paella:jobs:webhooks");
  KEY_IS(pa_key_outbox_msg("paella:jobs", "j-1.completed"), "paella:jobs:webhook:j-1.completed");
  KEY_IS(pa_key_outbox_msg("paella:jobs", NULL), "paella:jobs:webhook:");
  KEY_IS(pa_key_sched("s", "retry"), "s:sched:retry");
  KEY_IS(pa_key_sched("s", "running"), "s:sched:running");
  KEY_IS(pa_key_sched("s", "deadlines"), "s:sched:deadlines");
  KEY_IS(pa_key_sched("paella:jobs", "expiring"), "paella:jobs:sched:expiring");
  KEY_IS(pa_key_workers("paella:jobs"), "paella:jobs:workers");
  KEY_IS(pa_key_worker_caps("paella:jobs"), "paella:jobs:workers:caps");

  /* lanes: the normal lane is the stream itself (plain XADDs and old clients land there) */
  KEY_IS(pa_key_lane("paella:jobs", PA_LANE_HIGH), "paella:jobs:lane:high");
  KEY_IS(pa_key_lane("paella:jobs", PA_LANE_NORMAL), "paella:jobs");
  KEY_IS(pa_key_lane("paella:jobs", PA_LANE_LOW), "paella:jobs:lane:low");
  KEY_IS(pa_key_wait_ring("paella:jobs", PA_LANE_LOW), "paella:jobs:wait:low");
  KEY_IS(pa_key_wait_queue_prefix("paella:jobs", PA_LANE_HIGH), "paella:jobs:wait:high:owner:");
  CHECK(!strcmp(pa_lane_name(PA_LANE_HIGH), "high") && !strcmp(pa_lane_name(PA_LANE_NORMAL), "normal") &&
        !strcmp(pa_lane_name(PA_LANE_LOW), "low") && pa_lane_name(PA_LANES) == NULL && pa_lane_name(-1) == NULL);

  /* priority -> lane: above the default runs sooner, below it later; batches go lowest */
  CHECK(pa_lane_of_priority(PW_DEFAULT_PRIORITY) == PA_LANE_NORMAL);
  CHECK(pa_lane_of_priority(PW_DEFAULT_PRIORITY + 1) == PA_LANE_HIGH);
  CHECK(pa_lane_of_priority(PW_PRIORITY_MAX) == PA_LANE_HIGH);
  CHECK(pa_lane_of_priority(PW_DEFAULT_PRIORITY - 1) == PA_LANE_LOW);
  CHECK(pa_lane_of_priority(0) == PA_LANE_LOW);
  CHECK(pa_lane_of_priority(PW_BATCH_DEFAULT_PRIORITY) == PA_LANE_LOW);
  for (int p = 0; p < PW_PRIORITY_MAX; p++) /* monotonic: a higher priority never gets a later lane */
    CHECK_MSG(pa_lane_of_priority(p + 1) <= pa_lane_of_priority(p), "priority %d vs %d", p + 1, p);

  /* the URL's defaults are the documented names */
  pa_redis_url u;
  pa_redis_url_defaults(&u);
  CHECK(!strcmp(u.stream, "paella:jobs") && !strcmp(u.group, "workers") && !strcmp(u.events_group, "scheduler"));
  CHECK(pa_redis_url_parse("redis://127.0.0.1:6379/0?stream=other", &u) == 0);
  KEY_IS(pa_key_lane(u.stream, PA_LANE_HIGH), "other:lane:high");
  TEST_END();
}

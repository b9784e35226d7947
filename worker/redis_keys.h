/* Every Redis key name paella uses, in one place (docs/queues.md has the table). The worker,
 * its embedding cache and the scheduler build keys only through these functions (the CLI talks
 * HTTP and names no key), so a writer and its readers cannot disagree on a name;
 * tests/worker/test_redis_keys.c pins every name to the documented one.
 *
 * Two families:
 *  - global keys: paella:job:{id}, paella:owner:{owner}:..., paella:batch:{id}..., paella:emb:...,
 *    paella:metrics (one Redis serves one deployment's records);
 *  - keys derived from the job stream name ({stream}, from the queue URL): the lanes, events,
 *    dead letters, webhook outbox, the workers' advertisements and the scheduler's sorted sets
 *    and waiting queues, so that two deployments (or tests) sharing one Redis with different
 *    streams do not meet.
 *
 * Lanes: a job's `priority` (0..9, default 5) picks one of three streams that workers read
 * highest first: `high` (6..9) {stream}:lane:high, `normal` (5) {stream} itself (so a plain
 * XADD to the stream, KEDA's existing trigger and old clients keep working), `low` (0..4)
 * {stream}:lane:low. */
#ifndef PAELLA_WORKER_REDIS_KEYS_H
#define PAELLA_WORKER_REDIS_KEYS_H

#include <stddef.h>
#include <stdint.h>

#define PA_KEY_MAX 512

/* A key, by value: `pa_key_job(id).s`. Longer inputs are truncated (ids and names are bounded
 * far below this by the proto limits and the URL parser). */
typedef struct {
  char s[PA_KEY_MAX];
} pa_key;

#define PA_REDIS_DEFAULT_STREAM "paella:jobs"
#define PA_REDIS_DEFAULT_GROUP "workers"
#define PA_REDIS_DEFAULT_EVENTS_GROUP "scheduler"

/* Prefixes for Lua scripts that build a key from an id they read (prefix .. id). */
#define PA_KEY_JOB_PREFIX "paella:job:"
#define PA_KEY_EMB_PREFIX "paella:emb:"
#define PA_KEY_METRICS "paella:metrics"
/* The owner's listing index is PA_KEY_OWNER_PREFIX {owner} PA_KEY_OWNER_JOBS_SUFFIX: the
 * retention script (scheduler/tracker.c) removes expired jobs from it by owner name. */
#define PA_KEY_OWNER_PREFIX "paella:owner:"
#define PA_KEY_OWNER_JOBS_SUFFIX ":jobs"

/* ---- lanes ---------------------------------------------------------------------------- */
typedef enum { PA_LANE_HIGH, PA_LANE_NORMAL, PA_LANE_LOW, PA_LANES } pa_lane;

/* The lane of a priority (out-of-range values clamp to the nearest lane). */
pa_lane pa_lane_of_priority(int64_t priority);
/* "high", "normal", "low"; NULL for an invalid lane. */
const char *pa_lane_name(int lane);
/* The lane's stream: {stream}:lane:high, {stream}, {stream}:lane:low. */
pa_key pa_key_lane(const char *stream, int lane);

/* ---- global keys ---------------------------------------------------------------------- */
pa_key pa_key_job(const char *id);            /* hash: the job's state */
pa_key pa_key_job_deliveries(const char *id); /* list: webhook attempt records */
pa_key pa_key_owner_jobs(const char *owner);  /* sorted set: the owner's jobs by creation */
pa_key pa_key_owner_active(const char *owner); /* set: the owner's queued + running jobs */
pa_key pa_key_idempotency(const char *owner, const char *key);
/* paella:batch:{id}{suffix}: suffix "" (the hash), ":done", ":ok", ":written", ":shards", ... */
pa_key pa_key_batch(const char *id, const char *suffix);
/* paella:batch:{id}:done:{shard}: the indexes of one shard that are done */
pa_key pa_key_batch_shard_done(const char *id, long shard);
/* paella:batches:retry: sorted set, batch id -> when the reaper writes its shards again (a
 * shard write failed: store or Redis down) */
pa_key pa_key_batches_retry(void);

/* ---- keys derived from the job stream ------------------------------------------------- */
pa_key pa_key_events(const char *stream);   /* {stream}:events */
pa_key pa_key_dead(const char *stream);     /* {stream}:dead */
pa_key pa_key_outbox(const char *stream);   /* {stream}:webhooks */
/* {stream}:webhook: (the message hash prefix) with msg_id appended when not NULL. */
pa_key pa_key_outbox_msg(const char *stream, const char *msg_id);
/* The scheduler's sorted sets: {stream}:sched:retry, :running, :deadlines, and :expiring
 * ("ID OWNER" by when the job's record expires: its owner index entry goes then). */
pa_key pa_key_sched(const char *stream, const char *which);
/* The workers' advertisements (worker/admission.h): {stream}:workers (consumer -> when its
 * advertisement lapses, Unix ms) and {stream}:workers:caps (consumer -> its limits, JSON). */
pa_key pa_key_workers(const char *stream);
pa_key pa_key_worker_caps(const char *stream);
/* Fair dispatch (scheduler/dispatch.c): per lane, the ring of owners with waiting jobs
 * {stream}:wait:{lane} and the prefix of each owner's queue {stream}:wait:{lane}:owner:
 * (the owner's name appended by the script). */
pa_key pa_key_wait_ring(const char *stream, int lane);
pa_key pa_key_wait_queue_prefix(const char *stream, int lane);

#endif

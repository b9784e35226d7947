/* Redis key names (see redis_keys.h). */
#include "worker/redis_keys.h"

#include <stdarg.h>
#include <stdio.h>

#include "worker/outbox.h"

static pa_key key_of(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static pa_key key_of(const char *fmt, ...) {
  pa_key k;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(k.s, sizeof k.s, fmt, ap);
  va_end(ap);
  return k;
}

static const char *const LANE_NAMES[PA_LANES] = {"high", "normal", "low"};

/* The default priority (PW_DEFAULT_PRIORITY, 5) is the normal lane: above it runs sooner,
 * below it later (batches default to 0). */
pa_lane pa_lane_of_priority(int64_t priority) {
  return priority > 5 ? PA_LANE_HIGH : priority == 5 ? PA_LANE_NORMAL : PA_LANE_LOW;
}

const char *pa_lane_name(int lane) { return lane >= 0 && lane < PA_LANES ? LANE_NAMES[lane] : NULL; }

pa_key pa_key_lane(const char *stream, int lane) {
  if (lane == PA_LANE_NORMAL || !pa_lane_name(lane)) return key_of("%s", stream);
  return key_of("%s:lane:%s", stream, LANE_NAMES[lane]);
}

pa_key pa_key_job(const char *id) { return key_of(PA_KEY_JOB_PREFIX "%s", id); }
pa_key pa_key_job_deliveries(const char *id) { return key_of(PA_KEY_JOB_PREFIX "%s:deliveries", id); }
pa_key pa_key_owner_jobs(const char *owner) {
  return key_of(PA_KEY_OWNER_PREFIX "%s" PA_KEY_OWNER_JOBS_SUFFIX, owner);
}
pa_key pa_key_owner_active(const char *owner) { return key_of(PA_KEY_OWNER_PREFIX "%s:active", owner); }
pa_key pa_key_idempotency(const char *owner, const char *key) { return key_of("paella:idem:%s:%s", owner, key); }
pa_key pa_key_batch(const char *id, const char *suffix) { return key_of("paella:batch:%s%s", id, suffix ? suffix : ""); }
pa_key pa_key_batch_shard_done(const char *id, long shard) { return key_of("paella:batch:%s:done:%ld", id, shard); }
pa_key pa_key_batches_retry(void) { return key_of("paella:batches:retry"); }

pa_key pa_key_events(const char *stream) { return key_of("%s:events", stream); }
pa_key pa_key_dead(const char *stream) { return key_of("%s:dead", stream); }
pa_key pa_key_outbox(const char *stream) { return key_of("%s" PA_OUTBOX_SUFFIX, stream); }
pa_key pa_key_outbox_msg(const char *stream, const char *msg_id) {
  return key_of("%s" PA_OUTBOX_MESSAGE_SUFFIX "%s", stream, msg_id ? msg_id : "");
}
pa_key pa_key_sched(const char *stream, const char *which) { return key_of("%s:sched:%s", stream, which); }
pa_key pa_key_workers(const char *stream) { return key_of("%s:workers", stream); }
pa_key pa_key_worker_caps(const char *stream) { return key_of("%s:workers:caps", stream); }

pa_key pa_key_wait_ring(const char *stream, int lane) {
  return key_of("%s:wait:%s", stream, pa_lane_name(lane) ? LANE_NAMES[lane] : "normal");
}
pa_key pa_key_wait_queue_prefix(const char *stream, int lane) {
  return key_of("%s:wait:%s:owner:", stream, pa_lane_name(lane) ? LANE_NAMES[lane] : "normal");
}

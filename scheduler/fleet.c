/* The worker fleet as the workers advertise it (worker/admission.h): which workers are live
 * and whether their limits are the scheduler's. A worker with other limits would fail jobs the
 * scheduler accepts (a bigger --max-side on the scheduler) or never see jobs it could run (a
 * smaller one): /readyz names them and paella_fleet_limits_mismatch counts them. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "scheduler/jobs_internal.h"

int sched_fleet(const sched_config *c, json_t **out, int *live, int *mismatched) {
  pa_key workers = pa_key_workers(c->redis.stream), caps = pa_key_worker_caps(c->redis.stream);
  char now[24];
  snprintf(now, sizeof now, "(%" PRId64, now_ms());
  *live = *mismatched = 0;
  if (out) *out = json_array();
  if (out && !*out) return pa_fail(PA_ERR_NOMEM, "fleet");
  redisReply *names = sched_cmdf(c, "ZRANGEBYSCORE %s %s +inf", workers.s, now);
  if (!names || names->type != REDIS_REPLY_ARRAY) {
    if (names) freeReplyObject(names);
    return pa_fail(PA_ERR_IO, "fleet: redis");
  }
  for (size_t i = 0; i < names->elements; i++) {
    const char *name = names->element[i]->str;
    redisReply *rec = name ? sched_cmdf(c, "HGET %s %s", caps.s, name) : NULL;
    if (rec && rec->type == REDIS_REPLY_STRING) {
      char why[160] = "";
      int d = pa_job_limits_differ(&c->limits, rec->str, why, sizeof why);
      (*live)++;
      if (d) {
        (*mismatched)++;
        if (out) {
          json_t *limits = json_loads(rec->str, 0, NULL);
          json_array_append_new(*out, json_pack("{s:s, s:s, s:o}", "worker", name, "reason",
                                                d < 0 ? "unreadable limits record" : why, "limits",
                                                limits ? limits : json_null()));
        }
      }
    }
    if (rec) freeReplyObject(rec);
  }
  freeReplyObject(names);
  return PA_OK;
}

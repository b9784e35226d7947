/* Helpers shared by the scheduler's registry code (jobs.c, tracker.c, batch.c, deadletters.c). */
#ifndef PAELLA_SCHEDULER_JOBS_INTERNAL_H
#define PAELLA_SCHEDULER_JOBS_INTERNAL_H

#include <jansson.h>
#include <stdio.h>

#include "scheduler/sched.h"

int64_t now_ms(void);

/* The live workers' advertised limits (fleet.c): how many are live, how many differ from
 * c->limits, and (out, may be NULL) a JSON array of those that differ: worker, reason, limits. */
int sched_fleet(const sched_config *c, json_t **out, int *live, int *mismatched);

/* The scheduler's own sorted sets, namespaced by the jobs stream so that two deployments
 * (or tests) sharing one Redis never reap each other's jobs. */
typedef struct {
  char retry[192];     /* job id by the time its retry is due */
  char running[192];   /* job id by the time it started */
  char deadlines[192]; /* job id by its deadline_ms */
  char expiring[192];  /* "ID OWNER" by when the job's record expires: its owner index entry goes then */
} sched_zsets;

static inline sched_zsets sched_zsets_of(const sched_config *c) {
  sched_zsets z;
  snprintf(z.retry, sizeof z.retry, "%s:sched:retry", c->redis.stream);
  snprintf(z.running, sizeof z.running, "%s:sched:running", c->redis.stream);
  snprintf(z.deadlines, sizeof z.deadlines, "%s:sched:deadlines", c->redis.stream);
  snprintf(z.expiring, sizeof z.expiring, "%s:sched:expiring", c->redis.stream);
  return z;
}
/* HGETALL paella:job:{id}; PA_ERR_NOTFOUND when absent. */
int jobs_fetch(const sched_config *c, const char *id, redisReply **out);
/* A field of an HGETALL reply, NULL when absent. */
const char *jobs_field(const redisReply *h, const char *name, size_t *len);
json_t *jobs_resource(const char *id, const redisReply *h);
/* A final Result (msgpack) for jobs the scheduler ends itself (cancel, deadline). */
int jobs_final_result(const char *id, pw_status st, pw_code code, const char *msg, uint8_t **mp, size_t *len);

#endif

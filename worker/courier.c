/* The webhook courier: one thread per worker that drains the durable outbox (queue.h,
 * outbox_*; keys in docs/queues.md) on a Redis connection of its own, one attempt at a time,
 * with its own retry schedule. Jobs only add messages to the outbox (the final one atomically
 * with the recorded result), so no receiver, however slow or silent, delays a job, a lease
 * renewal or a shutdown. Every attempt is recorded in the job's deliveries list
 * (GET /v1/jobs/{id}/deliveries) and counted in paella:metrics:
 *   webhook_attempts:ok|failed         every attempt
 *   webhook_deliveries:ok|failed       every message, once, when it is settled
 *   webhook_deliveries:unsigned        messages sent without a signature (operator's choice)
 * A message being attempted is leased for COURIER_LEASE_MS: a worker that dies mid-attempt
 * leaves it to the next courier. On stop the attempt in flight is cut short (within a second)
 * and its message made due again at once, uncounted: it stays in the outbox for the next
 * worker. */
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "worker/log.h"
#include "worker/webhook.h"
#include "worker/webhook_secret.h"
#include "worker/worker_internal.h"

#define COURIER_MAX_ATTEMPTS 6     /* then the message is given up (webhook_deliveries:failed) */
#define COURIER_BASE_DELAY_MS 1000 /* first retry; doubled per attempt, capped, +-20% jitter */
#define COURIER_MAX_DELAY_MS 60000
#define COURIER_TIMEOUT_MS 10000   /* one attempt */
#define COURIER_LEASE_MS 60000     /* > one attempt: a live courier never loses its message */
#define COURIER_IDLE_MS 100        /* outbox polling while it is empty */

struct pa_courier {
  const pa_worker_config *cfg;
  pa_queue *q; /* owned: a handle of its own */
  pthread_t thread;
  atomic_bool stop;
};

static void nap_ms(pa_courier *c, int ms) {
  for (int left = ms; left > 0 && !atomic_load(&c->stop); left -= 20) {
    struct timespec ts = {0, 20 * 1000000L};
    nanosleep(&ts, NULL);
  }
}

/* One attempt's record for the job's deliveries list (malloc'd JSON). */
static char *attempt_record(const pa_courier *c, const pa_outbox_item *it, const char *result, int status,
                            const char *error, bool is_signed, long long retry_at_ms) {
  json_t *j = json_pack("{s:s, s:s, s:i, s:I, s:s, s:i, s:b}", "webhook_id", it->msg_id, "event", it->event,
                        "attempt", it->attempts + 1, "ts_ms", (json_int_t)pa_wall_ms(), "result", result,
                        "http_status", status, "signed", is_signed);
  if (!j) return NULL;
  if (error && *error) json_object_set_new(j, "error", json_string(error));
  if (retry_at_ms) json_object_set_new(j, "retry_at_ms", json_integer(retry_at_ms));
  if (c->cfg->consumer) json_object_set_new(j, "worker", json_string(c->cfg->consumer));
  char *text = json_dumps(j, JSON_COMPACT);
  json_decref(j);
  return text;
}

/* Records an attempt's outcome. Redis may be restarting: retried for half a lease (the
 * message stays leased meanwhile), so that a delivered message is not delivered again. */
static void settle(pa_courier *c, const pa_outbox_item *it, const char *record, long long retry_at_ms, bool attempted,
                   const char *counters) {
  double until = pa_mono() + COURIER_LEASE_MS / 2000.0;
  while (c->q->ops->outbox_settle(c->q, it, record, retry_at_ms, attempted, counters)) {
    if (atomic_load(&c->stop) || pa_mono() > until) {
      pa_log(PA_LOG_WARN, it->job_id, json_pack("{s:s, s:s}", "webhook_id", it->msg_id, "error", pa_errmsg()),
             "webhook outcome not recorded: the message comes back after its lease");
      return;
    }
    nap_ms(c, 250);
  }
}

static void attempt(pa_courier *c, const pa_outbox_item *it) {
  char *secret = pa_webhook_find_secret(c->cfg->webhook_secrets_dir, it->secret_id);
  if (!secret && !c->cfg->webhook_allow_unsigned) {
    char *rec = attempt_record(c, it, "refused", 0, "no secret for this secret_id on this worker", false, 0);
    pa_log(PA_LOG_ERROR, it->job_id, json_pack("{s:s, s:s?}", "webhook_id", it->msg_id, "secret_id", it->secret_id),
           "webhook refused: no secret for its secret_id (see docs/worker.md), and unsigned delivery is off");
    settle(c, it, rec, 0, false, "webhook_deliveries:failed");
    free(rec);
    return;
  }
  pa_webhook_options o = {.max_attempts = 1, .timeout_ms = COURIER_TIMEOUT_MS, .base_delay_ms = COURIER_BASE_DELAY_MS,
                          .max_delay_ms = COURIER_MAX_DELAY_MS, .allow_private = c->cfg->webhook_allow_private,
                          .abort = &c->stop};
  pa_webhook_report rep = {0};
  int rc = pa_webhook_deliver(it->url, secret, it->msg_id, it->body, &o, &rep);
  bool is_signed = secret != NULL;
  free(secret);
  if (rep.aborted) { /* stopping: the message is due again at once, for whoever runs next */
    settle(c, it, "", pa_wall_ms(), false, "");
    return;
  }
  char *rec = NULL;
  if (!rc && rep.delivered) {
    rec = attempt_record(c, it, "delivered", rep.last_status, NULL, is_signed, 0);
    settle(c, it, rec, 0, true,
           is_signed ? "webhook_attempts:ok,webhook_deliveries:ok"
                     : "webhook_attempts:ok,webhook_deliveries:ok,webhook_deliveries:unsigned");
  } else {
    /* 410 Gone (NOTFOUND) and a refused address or secret (INVALID) will not pass */
    bool final = rc == PA_ERR_NOTFOUND || rc == PA_ERR_INVALID || it->attempts + 1 >= COURIER_MAX_ATTEMPTS;
    long long delay = rep.retry_after_ms >= 0 && rep.retry_after_ms < COURIER_MAX_DELAY_MS
                          ? rep.retry_after_ms
                          : pa_webhook_backoff_ms(&o, it->attempts);
    long long retry_at = final ? 0 : pa_wall_ms() + delay;
    rec = attempt_record(c, it, final ? "gave_up" : "failed", rep.last_status, rc ? pa_errmsg() : "not delivered",
                         is_signed, retry_at);
    pa_log(PA_LOG_WARN, it->job_id,
           json_pack("{s:s, s:i, s:i, s:s, s:b}", "webhook_id", it->msg_id, "attempt", it->attempts + 1, "status",
                     rep.last_status, "error", rc ? pa_errmsg() : "not delivered", "final", final),
           final ? "webhook given up" : "webhook attempt failed: retried later");
    settle(c, it, rec, retry_at, true,
           final ? "webhook_attempts:failed,webhook_deliveries:failed" : "webhook_attempts:failed");
  }
  free(rec);
}

static void *courier_main(void *arg) {
  pa_courier *c = arg;
  while (!atomic_load(&c->stop)) {
    pa_outbox_item it;
    bool got = false;
    if (c->q->ops->outbox_take(c->q, COURIER_LEASE_MS, &it, &got)) {
      pa_log(PA_LOG_WARN, NULL, json_pack("{s:s}", "error", pa_errmsg()), "webhook outbox unreachable");
      nap_ms(c, 1000);
      continue;
    }
    if (!got) {
      nap_ms(c, COURIER_IDLE_MS);
      continue;
    }
    attempt(c, &it);
    pa_outbox_item_clear(&it);
  }
  return NULL;
}

int pa_courier_start(const pa_worker_config *cfg, pa_queue *q, pa_courier **out) {
  *out = NULL;
  pa_courier *c = calloc(1, sizeof *c);
  if (!c) {
    q->ops->close(q);
    return pa_fail(PA_ERR_NOMEM, "out of memory");
  }
  c->cfg = cfg;
  c->q = q;
  if (pthread_create(&c->thread, NULL, courier_main, c)) {
    q->ops->close(q);
    free(c);
    return pa_fail(PA_ERR_NOMEM, "cannot start the webhook courier");
  }
  *out = c;
  return PA_OK;
}

void pa_courier_stop(pa_courier *c) {
  if (!c) return;
  atomic_store(&c->stop, true);
  pthread_join(c->thread, NULL);
  c->q->ops->close(c->q);
  free(c);
}

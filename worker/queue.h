/* The queue contract between the worker loop and its two transports (worker/queue_redis.c,
 * worker/queue_kafka.c). Delivery is at least once: an entry is acknowledged only after its
 * result is durable (record_result returned PA_OK), so a worker that dies mid-job leaves the
 * entry to be delivered again (Redis: reclaimed with XAUTOCLAIM once idle past the lease;
 * Kafka: its offset was never stored). docs/queues.md lists every key, stream and topic.
 *
 * All functions return a pa_status (ops/error.h) with the message in pa_errmsg(). */
#ifndef PAELLA_WORKER_QUEUE_H
#define PAELLA_WORKER_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ops/error.h"

typedef struct pa_queue pa_queue;

/* One delivered job. */
typedef struct {
  char handle[64];   /* transport position: Redis stream entry id, Kafka "partition:offset" */
  uint8_t *payload;  /* the msgpack Job bytes (owned; freed by pa_delivery_clear) */
  size_t len;
  int deliveries;    /* times this entry has been delivered, this one included (>= 1) */
  int lane;          /* Redis: the priority lane (stream) of the entry (worker/redis_keys.h); Kafka: 0 */
} pa_delivery;

void pa_delivery_clear(pa_delivery *d);

/* A webhook message for the durable outbox (docs/queues.md, docs/worker.md "Webhooks"). */
typedef struct {
  const char *msg_id;    /* "<job id>.<event>[...]": stable across retries and re-runs */
  const char *job_id, *event;
  const char *url;
  const char *secret_id; /* NULL: the default secret */
  const char *body;      /* the JSON payload */
} pa_webhook_msg;

/* An outbox message taken for one delivery attempt (owned strings: pa_outbox_item_clear). */
typedef struct {
  char *msg_id, *job_id, *event, *url, *secret_id /* NULL: default */, *body;
  int attempts; /* attempts made before this one */
} pa_outbox_item;

void pa_outbox_item_clear(pa_outbox_item *it);

typedef struct {
  const char *consumer;  /* this worker's name in the group (default: hostname-pid) */
  int lease_ms;          /* an entry idle this long is reclaimed by another worker (Redis) */
  int max_deliveries;    /* past this many deliveries an entry goes to the dead letters */
} pa_queue_options;

typedef struct {
  /* Up to `max` entries: first those of crashed workers idle past the lease, then new ones,
   * waiting at most block_ms for the first. *n may be 0 (timeout). */
  int (*claim)(pa_queue *q, int max, int block_ms, pa_delivery *out, int *n);
  /* Keeps the entry's lease alive while the job runs (Redis: XCLAIM ... JUSTID), only while
   * this attempt still owns it: PA_ERR_NOTFOUND when another worker took the entry over (or
   * it was acknowledged), and the attempt must then stop: it is fenced. Thread-safe only on
   * a handle of its own (clone). */
  int (*renew)(pa_queue *q, const pa_delivery *d);
  /* Job state (started, progress) for the registry; not required to be durable. */
  int (*publish_event)(pa_queue *q, const char *job_id, const char *type, const uint8_t *msg, size_t len);
  /* The final Result (msgpack): durable when this returns PA_OK. Idempotent per job id: the
   * first result wins. With d (Redis), only while the attempt owns its entry (else
   * PA_ERR_NOTFOUND and nothing is written); with hook, the final webhook enters the outbox in
   * the same atomic step, only when this result is the one recorded. */
  int (*record_result)(pa_queue *q, const pa_delivery *d, const char *job_id, const uint8_t *result, size_t len,
                       const pa_webhook_msg *hook);
  /* Acknowledges the entry: it will not be delivered again. Redis: only while the attempt
   * owns it (PA_ERR_NOTFOUND otherwise). */
  int (*ack)(pa_queue *q, const pa_delivery *d);
  /* Moves the entry to the dead letters with the reason (a proto error code name, the field,
   * a message), then acknowledges it. */
  int (*dead_letter)(pa_queue *q, const pa_delivery *d, const char *code, const char *field,
                     const char *message);
  /* Optional: remembers an attempt's failure that leaves the entry for redelivery (storage
   * down, a GPU error), so the dead letter written when deliveries run out still says why:
   * dead_letter copies it beside its own code. */
  int (*note_failure)(pa_queue *q, const pa_delivery *d, const char *job_id, const char *code, const char *message);
  /* Optional: true when the job's final result is recorded already (a redelivery after a
   * crash between recording and acknowledging): the entry is acknowledged, not run again. */
  bool (*is_settled)(pa_queue *q, const char *job_id);
  /* True when a client asked to cancel the job (checked between denoising steps). */
  bool (*is_canceled)(pa_queue *q, const char *job_id);
  /* Kafka: stop fetching while the GPU works, so the group does not rebalance (no-op on Redis). */
  int (*pause)(pa_queue *q);
  int (*resume)(pa_queue *q);
  void (*close)(pa_queue *q);
  /* Optional: a second handle on the same queue, group and consumer, for another thread (the
   * lease heartbeat, the webhook courier). NULL: every call stays on the worker's thread. */
  int (*clone)(pa_queue *q, pa_queue **out);
  /* Optional durable webhook outbox (NULL: the transport has none, webhooks go through an
   * in-memory queue). enqueue_webhook adds a message while the attempt d owns its entry (a
   * message whose id exists already is not added twice); outbox_take takes the earliest due
   * message for lease_ms (it comes back if this worker dies); outbox_settle records the
   * attempt (record_json, "" for none) in the job's deliveries, adds 1 to each counter of
   * the comma-separated list, and either removes the message (retry_at_ms 0) or makes it due
   * again at retry_at_ms, counting the attempt when `attempted`. */
  int (*enqueue_webhook)(pa_queue *q, const pa_delivery *d, const pa_webhook_msg *m);
  int (*outbox_take)(pa_queue *q, int lease_ms, pa_outbox_item *out, bool *got);
  int (*outbox_settle)(pa_queue *q, const pa_outbox_item *it, const char *record_json, long long retry_at_ms,
                       bool attempted, const char *counters);
  /* Optional (NULL when the transport has no shared registry): adds deltas to fleet-wide
   * counters the scheduler exports (Redis: HINCRBY on the paella:metrics hash). */
  int (*add_counters)(pa_queue *q, const char *const *names, const long long *deltas, int n);
  /* Optional: publishes this worker's limits record (admission.h) until now + ttl_ms, and
   * drops the records of workers whose own lapsed (Redis: {stream}:workers, :workers:caps). */
  int (*advertise)(pa_queue *q, const char *record, long long ttl_ms);
} pa_queue_ops;

struct pa_queue {
  const pa_queue_ops *ops;
  void *impl;
};

/* redis://HOST:PORT/DB?stream=paella:jobs&group=workers or kafka://BROKERS?topic=...&group=... */
int pa_queue_open(const char *url, const pa_queue_options *o, pa_queue **out);
int pa_queue_open_redis(const char *url, const pa_queue_options *o, pa_queue **out);
int pa_queue_open_kafka(const char *url, const pa_queue_options *o, pa_queue **out);

#endif

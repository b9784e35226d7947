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
} pa_delivery;

void pa_delivery_clear(pa_delivery *d);

typedef struct {
  const char *consumer;  /* this worker's name in the group (default: hostname-pid) */
  int lease_ms;          /* an entry idle this long is reclaimed by another worker (Redis) */
  int max_deliveries;    /* past this many deliveries an entry goes to the dead letters */
} pa_queue_options;

typedef struct {
  /* Up to `max` entries: first those of crashed workers idle past the lease, then new ones,
   * waiting at most block_ms for the first. *n may be 0 (timeout). */
  int (*claim)(pa_queue *q, int max, int block_ms, pa_delivery *out, int *n);
  /* Keeps the entry's lease alive while the job runs (Redis: XCLAIM ... JUSTID). */
  int (*renew)(pa_queue *q, const pa_delivery *d);
  /* Job state (started, progress) for the registry; not required to be durable. */
  int (*publish_event)(pa_queue *q, const char *job_id, const char *type, const uint8_t *msg, size_t len);
  /* The final Result (msgpack): durable when this returns PA_OK. Idempotent per job id. */
  int (*record_result)(pa_queue *q, const char *job_id, const uint8_t *result, size_t len);
  /* Acknowledges the entry: it will not be delivered again. */
  int (*ack)(pa_queue *q, const pa_delivery *d);
  /* Moves the entry to the dead letters with the reason (a proto error code name, the field,
   * a message), then acknowledges it. */
  int (*dead_letter)(pa_queue *q, const pa_delivery *d, const char *code, const char *field,
                     const char *message);
  /* Optional: remembers an attempt's failure that leaves the entry for redelivery (storage
   * down, a GPU error), so the dead letter written when deliveries run out still says why:
   * dead_letter copies it beside its own code. */
  int (*note_failure)(pa_queue *q, const pa_delivery *d, const char *job_id, const char *code, const char *message);
  /* True when a client asked to cancel the job (checked between denoising steps). */
  bool (*is_canceled)(pa_queue *q, const char *job_id);
  /* Kafka: stop fetching while the GPU works, so the group does not rebalance (no-op on Redis). */
  int (*pause)(pa_queue *q);
  int (*resume)(pa_queue *q);
  void (*close)(pa_queue *q);
  /* Optional (NULL when the transport has no shared registry): adds deltas to fleet-wide
   * counters the scheduler exports (Redis: HINCRBY on the paella:metrics hash). */
  int (*add_counters)(pa_queue *q, const char *const *names, const long long *deltas, int n);
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

/* Kafka transport extras beyond the queue contract (worker/queue.h): counters for metrics
 * and tests, and the cancel record's producer. The transport itself is opened with pa_queue_open_kafka (queue.h). */
#ifndef PAELLA_WORKER_QUEUE_KAFKA_H
#define PAELLA_WORKER_QUEUE_KAFKA_H

#include <stdint.h>

#include "worker/queue.h"

typedef struct {
  int64_t rebalances;    /* assign + revoke callbacks served */
  int assigned;          /* partitions currently assigned to this consumer */
  int64_t claimed;       /* deliveries handed out by claim */
  int64_t redeliveries;  /* of those, the ones this instance had already handed out */
  int64_t acked;         /* offsets stored by ack / dead_letter */
  int64_t dead_lettered; /* entries written to {topic}.dead */
  int64_t retried;       /* jobs re-produced to {topic} after a transient failure (note_failure) */
  int64_t cancels;       /* cancel records read from {topic}.control */
  int64_t errors;        /* error events reported by librdkafka (transient ones included) */
} pa_kafka_stats;

/* Fills *out; PA_ERR_INVALID when q is not a Kafka queue. */
int pa_queue_kafka_stats(pa_queue *q, pa_kafka_stats *out);

/* Asks the workers of the queue at `url` (kafka://...) to cancel job_id: produces a cancel
 * record (key = job id, value PA_KAFKA_CANCEL_VALUE of worker/kafka_topics.h) to {topic}.control and waits until the brokers have
 * it. A queued job is then recorded as canceled when claimed, a running one at its next step.
 * Used by `paella job cancel`. */
int pa_queue_kafka_cancel(const char *url, const char *job_id);

#endif

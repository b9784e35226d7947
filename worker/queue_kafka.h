/* Kafka transport extras beyond the queue contract (worker/queue.h): counters for metrics
 * and tests. The transport itself is opened with pa_queue_open_kafka (queue.h). */
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
  int64_t dead_lettered; /* entries written to {topic}.dead (including past max_deliveries) */
  int64_t errors;        /* error events reported by librdkafka (transient ones included) */
} pa_kafka_stats;

/* Fills *out; PA_ERR_INVALID when q is not a Kafka queue. */
int pa_queue_kafka_stats(pa_queue *q, pa_kafka_stats *out);

#endif

/* The names derived from a Kafka jobs topic and the cancel record's format: one definition for
 * everything that speaks to a Kafka fleet (docs/queues.md, "Kafka"). */
#ifndef PAELLA_WORKER_KAFKA_TOPICS_H
#define PAELLA_WORKER_KAFKA_TOPICS_H

#define PA_KAFKA_EVENTS_SUFFIX ".events"   /* key = job id, value = Progress/Result, header `type` */
#define PA_KAFKA_DEAD_SUFFIX ".dead"       /* key = job id, value = raw job, headers code, field, ... */
#define PA_KAFKA_CONTROL_SUFFIX ".control" /* compacted: key = job id, non-null value = cancel */
/* compacted, the workers' own: key = "<origin partition>:<origin offset>/<job id>", value =
 * deliveries so far (decimal), a tombstone once the job is settled */
#define PA_KAFKA_ATTEMPTS_SUFFIX ".attempts"
/* The value of a cancel record on {topic}.control (any non-null value cancels; a tombstone
 * withdraws the cancel). */
#define PA_KAFKA_CANCEL_VALUE "cancel"

#endif

/* Kafka queue URLs, shared by paella-worker, `paella job cancel` and paella-scheduler so all
 * three read one --queue value the same way (docs/queues.md, "Kafka"):
 *
 *   kafka://BROKERS?topic=paella.jobs&group=workers&events_group=scheduler&PROPERTY=VALUE...
 *
 * Names and values are percent-decoded (a SASL password may need escaping). PROPERTY=VALUE
 * pairs are librdkafka properties passed through to every client, except the reserved ones
 * that carry the delivery guarantees (pa_kafka_url_reserved): those are refused. The topics
 * derived from `topic` are named in worker/kafka_topics.h. */
#ifndef PAELLA_WORKER_KAFKA_URL_H
#define PAELLA_WORKER_KAFKA_URL_H

#include <stdbool.h>

#define PA_KAFKA_MAX_PROPS 32

typedef struct {
  char brokers[1024];     /* bootstrap.servers */
  char topic[250];        /* the jobs topic (Kafka allows 249 bytes) */
  char group[128];        /* the workers' consumer group on {topic} */
  char events_group[128]; /* the schedulers' group on {topic}.events and .dead (workers ignore it) */
  int n_props;            /* librdkafka properties passed through (security settings, ...) */
  char prop_key[PA_KAFKA_MAX_PROPS][128], prop_value[PA_KAFKA_MAX_PROPS][512];
} pa_kafka_url;

/* Fills *u (defaults for what the URL does not set). PA_OK or PA_ERR_INVALID, the message
 * naming the fault (never a property's value). */
int pa_kafka_url_parse(const char *url, pa_kafka_url *u);
/* Whether a librdkafka property is set by paella itself and refused in a URL. */
bool pa_kafka_url_reserved(const char *key);

#endif

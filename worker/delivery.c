/* pa_delivery_clear lives apart from pa_queue_open so that a program using one transport
 * (the Redis adapter's tests) does not pull in the other one. */
#include <stdlib.h>
#include <string.h>

#include "worker/queue.h"

void pa_delivery_clear(pa_delivery *d) {
  free(d->payload);
  memset(d, 0, sizeof *d);
}

void pa_outbox_item_clear(pa_outbox_item *it) {
  free(it->msg_id);
  free(it->job_id);
  free(it->event);
  free(it->url);
  free(it->secret_id);
  free(it->body);
  memset(it, 0, sizeof *it);
}

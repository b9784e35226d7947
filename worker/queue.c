/* pa_queue_open: picks the transport from the URL's scheme (see queue.h, docs/queues.md). */
#include "worker/queue.h"

#include <string.h>

int pa_queue_open(const char *url, const pa_queue_options *o, pa_queue **out) {
  *out = NULL;
  if (!url || !*url) return pa_fail(PA_ERR_INVALID, "no queue URL (--queue or PAELLA_QUEUE)");
  if (!strncmp(url, "redis://", 8) || !strncmp(url, "rediss://", 9)) return pa_queue_open_redis(url, o, out);
  if (!strncmp(url, "kafka://", 8)) return pa_queue_open_kafka(url, o, out);
  return pa_fail(PA_ERR_INVALID, "queue URL '%s': expected redis://HOST:PORT/DB?stream=...&group=... or "
                 "kafka://BROKERS?topic=...&group=...", url);
}

/* Redis queue URLs and connections, shared by paella-worker and paella-scheduler so both
 * read one --queue value the same way (docs/queues.md):
 *
 *   redis://[[USER]:PASSWORD@]HOST[:PORT][/DB][?stream=...&group=...&events_group=...&events_maxlen=...]
 *
 * USER and PASSWORD are percent-decoded (AUTH USER PASSWORD, Redis 6 ACL users; AUTH PASSWORD
 * alone for requirepass). `rediss://` (TLS) is refused with a clear error: Debian's
 * libhiredis-dev (0.14) ships no hiredis_ssl; put a TLS proxy in front of Redis instead. */
#ifndef PAELLA_WORKER_REDIS_URL_H
#define PAELLA_WORKER_REDIS_URL_H

#include <hiredis/hiredis.h>

typedef struct {
  char host[256];
  int port;
  int db;
  char user[128], password[256];
  char stream[128];       /* the job stream; {stream}:events, :dead, ... derive from it */
  char group[64];         /* the workers' consumer group */
  char events_group[64];  /* the schedulers' consumer group on {stream}:events */
  long events_maxlen;     /* approximate cap of {stream}:events */
} pa_redis_url;

/* The defaults every field takes when the URL does not set it. */
void pa_redis_url_defaults(pa_redis_url *r);
/* PA_OK, PA_ERR_INVALID (the message names the fault, never the password) or
 * PA_ERR_UNSUPPORTED (rediss://). */
int pa_redis_url_parse(const char *url, pa_redis_url *r);
/* Connects with `connect_ms` to connect and `io_ms` for every reply, then AUTH and SELECT.
 * *out is the ready context; on failure NULL and PA_ERR_IO with the reason (a refused
 * password reads "redis HOST:PORT: AUTH failed: WRONGPASS ..."). */
int pa_redis_connect(const pa_redis_url *r, int connect_ms, int io_ms, redisContext **out);

#endif

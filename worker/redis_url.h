/* Redis queue URLs and connections, shared by paella-worker and paella-scheduler so both
 * read one --queue value the same way (docs/queues.md):
 *
 *   redis://[[USER]:PASSWORD@]HOST[:PORT][/DB][?stream=...&group=...&events_group=...&events_maxlen=...]
 *
 *   rediss://...same...[&tls_ca=PATH][&tls_cert=PATH&tls_key=PATH][&tls_insecure=1]
 *
 * USER and PASSWORD are percent-decoded (AUTH USER PASSWORD, Redis 6 ACL users; AUTH PASSWORD
 * alone for requirepass). `rediss://` is TLS (redis_tls.c: OpenSSL under hiredis 0.14, which
 * has none): the server certificate is verified against tls_ca, else $PAELLA_REDIS_CA, else
 * the system store, and must name HOST (DNS name or IP SAN); tls_cert/tls_key present a client
 * certificate (mutual TLS); tls_insecure=1 skips verification (unsafe: anyone on the path can
 * read the jobs and the password). Every connection must be closed with pa_redis_free. */
#ifndef PAELLA_WORKER_REDIS_URL_H
#define PAELLA_WORKER_REDIS_URL_H

#include <stdbool.h>

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
  bool tls;               /* rediss:// */
  bool tls_insecure;      /* tls_insecure=1: no certificate verification (unsafe) */
  char tls_ca[256], tls_cert[256], tls_key[256]; /* PEM files; empty: system store / none */
} pa_redis_url;

/* The defaults every field takes when the URL does not set it. */
void pa_redis_url_defaults(pa_redis_url *r);
/* PA_OK or PA_ERR_INVALID (the message names the fault, never the password). */
int pa_redis_url_parse(const char *url, pa_redis_url *r);
/* Connects with `connect_ms` to connect and `io_ms` for every reply, then AUTH and SELECT.
 * *out is the ready context; on failure NULL and PA_ERR_IO with the reason (a refused
 * password reads "redis HOST:PORT: AUTH failed: WRONGPASS ..."). */
int pa_redis_connect(const pa_redis_url *r, int connect_ms, int io_ms, redisContext **out);
/* Closes a context from pa_redis_connect (never redisFree: a TLS connection's bridge thread
 * is joined and its SSL state freed here). NULL is a no-op. */
void pa_redis_free(redisContext *c);
/* rediss:// only (redis_tls.c): TCP connect and TLS handshake within connect_ms; *out is an
 * unauthenticated context. A failed verification reads "TLS verification ... failed: REASON". */
int pa_redis_tls_connect(const pa_redis_url *r, int connect_ms, redisContext **out);
/* The TLS error that closed a rediss:// connection (into buf), "" when none or not TLS. */
const char *pa_redis_tls_why(redisContext *c, char *buf, size_t cap);

#endif

/* The scheduler: an HTTP/JSON API in front of the Redis job registry that the workers share
 * (docs/queues.md), a tracker that consumes the workers' events, a reaper that enforces
 * deadlines, timeouts and retries, bulk batches written as tar shards, metrics and a
 * dashboard. docs/api.md describes every endpoint.
 *
 * Threads: libmicrohttpd runs one thread per connection (requests that wait for a result or
 * stream Server-Sent Events simply block their own thread); each thread owns one hiredis
 * connection (sched_redis()). The tracker, the fan-out reader and the reaper each own one
 * more. Library code returns pa_status codes (ops/error.h) and never exits. */
#ifndef PAELLA_SCHEDULER_SCHED_H
#define PAELLA_SCHEDULER_SCHED_H

#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ops/error.h"
#include "proto/proto.h"
#include "worker/admission.h"
#include "worker/redis_keys.h"
#include "worker/kafka_url.h"
#include "worker/redis_url.h"
#include "worker/storage.h"

/* ---- configuration (config.c) ------------------------------------------------------- */
#define SCHED_MAX_KEYS 64

typedef struct {
  char name[64];
  unsigned char hash[32]; /* SHA-256 of the bearer token: the token itself is never stored */
  bool admin;             /* may read/requeue dead letters and set job `output` */
} sched_key;

/* --queue kafka://BROKERS?topic=paella.jobs&events_group=scheduler&PROPERTY=VALUE...: the jobs
 * topic the workers consume, read by the workers' parser (worker/kafka_url.h: one URL serves
 * both binaries); the registry then lives in --registry redis://... (kafka.c). */
typedef struct {
  bool on;
  pa_kafka_url url;
} sched_kafka_url;

typedef struct {
  pa_redis_url redis;     /* --queue (Redis) or --registry (with Kafka), read as the workers read it: host, credentials, db, stream,
                           * group (metrics read its lag), events_group */
  char storage[1100];     /* --storage: the workers' store (s3://BUCKET/PREFIX or file:///DIR):
                           * batch shards and manifests are written there, images read back */
  char listen_host[64];
  int listen_port;
  sched_key keys[SCHED_MAX_KEYS];
  int n_keys;             /* 0: no authentication (development only) */
  double rate;            /* requests per second per key (token bucket refill) */
  double burst;           /* bucket size */
  int max_active;         /* queued + running jobs per key */
  size_t max_body;        /* bytes of a POST /v1/jobs body */
  size_t max_batch_body;  /* bytes of a POST /v1/batches body */
  int max_wait_s;         /* cap of Prefer: wait=N */
  int max_attempts;       /* failed attempts before a job goes to the dead letters */
  int backoff_ms;         /* first retry delay, doubled per attempt */
  int job_timeout_s;      /* a running job older than this is stopped and retried */
  int shard_size;         /* default items per batch tar shard */
  int idempotency_ttl_s;
  char consumer[128];     /* this scheduler's name in events_group */
  int max_connections;    /* open HTTP connections in all (each holds a thread and a descriptor) */
  int max_per_ip;         /* open HTTP connections from one client address */
  int idle_timeout_s;     /* a connection silent this long is closed (headers included) */
  int redis_timeout_ms;   /* connect and reply timeout of every Redis call: 503 past it */
  int job_ttl_s;          /* a finished job's record expires this long after it ends (0: never) */
  int dead_letters_max;   /* {stream}:dead keeps about this many newest entries */
  int dispatch_depth;     /* undelivered entries kept on each lane's stream (fair dispatch) */
  char webhook_secrets_dir[1024]; /* the workers' --webhook-secrets (else the variables) */
  bool webhook_allow_unsigned;    /* accept webhooks whose secret is not configured */
  sched_kafka_url kafka;  /* --queue kafka://...: jobs go to Kafka, events come from it */
  bool registry_set;      /* --registry was given (required with a Kafka queue) */
  char access_log[1024];  /* one JSON line per request: "-" stderr (default), "off", or a file */
  pa_job_limits limits;   /* --max-side: the fleet's limits, checked at submission */
} sched_config;

void sched_config_defaults(sched_config *c);
/* Flags override environment variables (PAELLA_QUEUE, PAELLA_STORAGE, PAELLA_LISTEN,
 * PAELLA_API_KEY_HASHES, ...). Returns PA_ERR_INVALID with a message on a bad value;
 * *help is set when --help was given. */
int sched_config_parse(sched_config *c, int argc, char **argv, bool *help);
int sched_config_set_queue(sched_config *c, const char *url);
/* --registry redis://...: the job registry beside a Kafka queue (same URL form as --queue). */
int sched_config_set_registry(sched_config *c, const char *url);
int sched_config_set_storage(sched_config *c, const char *url);
/* "NAME:SHA256HEX[:admin]", several separated by commas. */
int sched_config_add_keys(sched_config *c, const char *spec);
void sched_config_usage(void);

/* ---- webhooks (webhooks.c) ---------------------------------------------------------- */
/* 0, or -1 with err filled (422 webhook.secret_id) when no worker could sign the job's webhook. */
int sched_webhook_check(const sched_config *c, const pw_job *job, pw_error *err);
/* {"job_id" (or "batch_id"), "data": [attempt records, oldest first]} of a job's (or a
 * batch's) webhooks; PA_ERR_NOTFOUND for another owner's. */
int sched_webhook_deliveries(const sched_config *c, const char *id, const char *owner, bool batch, char **json);

/* ---- redis (redis.c) ---------------------------------------------------------------- */
/* The calling thread's connection (made on first use, remade after an error). NULL with
 * pa_errmsg() set when Redis cannot be reached. */
redisContext *sched_redis(const sched_config *c);
/* Drops the calling thread's connection (after an I/O error, so the next call reconnects). */
void sched_redis_drop(void);
/* redisCommandArgv with error checking: NULL (and the connection dropped on I/O errors)
 * unless Redis answered; an error reply is returned as a reply (type REDIS_REPLY_ERROR). */
redisReply *sched_cmd(const sched_config *c, int argc, const char **argv, const size_t *lens);
redisReply *sched_cmdf(const sched_config *c, const char *fmt, ...);
/* EVALSHA with a fallback to EVAL when the script is not cached yet. */
redisReply *sched_eval(const sched_config *c, const char *script, int nkeys, int nargs,
                       const char **args, const size_t *lens);
/* Connects a dedicated (blocking reader) connection. */
redisContext *sched_redis_connect(const sched_config *c, int timeout_ms);

/* ---- metrics (metrics.c) ------------------------------------------------------------ */
typedef enum { SCHED_M_SUCCEEDED, SCHED_M_FAILED, SCHED_M_CANCELED, SCHED_M_SUBMITTED,
               SCHED_M_RETRIED, SCHED_M_DEAD, SCHED_M_COUNT } sched_metric_status;
void sched_metrics_count(sched_metric_status s);
/* One observation of a stage duration (pw_stage, or PW_STAGE_COUNT for the total). */
void sched_metrics_observe(int stage, double seconds);
/* Prometheus text exposition; malloc'd. Reads queue gauges from Redis. */
char *sched_metrics_render(const sched_config *c);

/* ---- event fan-out (hub.c) ---------------------------------------------------------- */
/* Every event any worker publishes reaches every scheduler replica through a plain XREAD
 * (no group), then the local waiters: SSE streams and Prefer: wait requests. */
typedef struct {
  char type[16];  /* start, progress, completed, failed, status */
  char *data;     /* JSON: Progress or Result */
} hub_event;

uint64_t hub_cursor(void); /* the sequence number of the next event */
void hub_publish(const char *job_id, const char *type, const char *json);
/* Waits up to timeout_ms for an event of `job_id` after *cursor; 1 with *out filled
 * (free out->data), 0 on timeout. */
int hub_wait(uint64_t *cursor, const char *job_id, int timeout_ms, hub_event *out);
void hub_shutdown(void);

/* ---- jobs (jobs.c) ------------------------------------------------------------------ */
typedef enum {
  SUBMIT_CREATED, SUBMIT_EXISTING, SUBMIT_IDEM_CONFLICT, SUBMIT_QUOTA
} submit_outcome;

/* Registers a validated job (id set) and enqueues it, atomically: the idempotency key
 * (scoped by owner), the owner's active-job quota, the hash, the index and the stream entry.
 * With an existing idempotency key *existing_id names the first job. */
int jobs_submit(const sched_config *c, const pw_job *job, const char *owner, int max_active,
                const char *body_sha, const char *batch, long index, submit_outcome *outcome,
                char *existing_id, size_t existing_cap);
/* The job resource as JSON (malloc'd); PA_ERR_NOTFOUND when unknown or owned by another
 * key (owner NULL: any). */
int jobs_render(const sched_config *c, const char *id, const char *owner, char **json,
                char *status, size_t status_cap);
/* Cancels: queued -> canceled at once (the stream entry stays, unread entries are never
 * deleted: the worker that claims it finds the job final and acknowledges it unrun);
 * running -> the cancel flag is set and the worker stops at its next step. *state gets the
 * status after the call; PA_ERR_INVALID when already final. */
int jobs_cancel(const sched_config *c, const char *id, const char *owner, char *state, size_t cap);
/* One page, newest first: cursor "" or the previous page's next_cursor. */
int jobs_list(const sched_config *c, const char *owner, const char *status, const char *cursor,
              int limit, char **json);
bool jobs_is_final(const char *status);
void jobs_new_id(char *out, size_t cap); /* "j-" + 26 hex chars of random */

/* ---- tracker and reaper (tracker.c) ------------------------------------------------- */
typedef struct sched_tracker sched_tracker;
/* Retention of the streams (the reaper runs it every 5 s): acknowledged job entries are
 * trimmed, never an unread or pending one; {stream}:dead keeps dead_letters_max. */
int tracker_trim(const sched_config *c, long long *trimmed);
int tracker_start(const sched_config *c, sched_tracker **out);
void tracker_stop(sched_tracker *t);
/* One reaper pass (deadlines, timeouts, due retries); exposed for tests. */
int tracker_reap(const sched_config *c);

/* ---- fair dispatch (dispatch.c) ----------------------------------------------------- */
/* Moves waiting jobs onto every lane's stream, round-robin over API keys, until the lane holds
 * dispatch_depth undelivered entries (docs/queues.md, "Priorities and fair share"). */
int dispatch_all(const sched_config *c, long long *moved);
/* Creates every lane's stream and the workers' group on it (as workers do), so that KEDA's
 * triggers read a lag of 0, not an error, from a lane nothing was ever queued on. */
int dispatch_ensure_lanes(const sched_config *c);
/* Jobs waiting to enter the lanes' streams, per lane (by pa_lane) and in all. */
int dispatch_waiting(const sched_config *c, long long per_lane[PA_LANES], long long *total);

/* ---- Kafka (kafka.c) ----------------------------------------------------------------- */
/* With a kafka:// queue the Redis lanes are the outbox of the jobs topic: a forwarder (group
 * {group} on the lanes, as workers on Redis) produces each dispatched job to {topic} (key = job
 * id, idempotent producer), acknowledging its entry only after the brokers' delivery report;
 * a bridge (Kafka group events_group) applies what the workers produce on {topic}.events and
 * {topic}.dead to the registry and the Redis {stream}:events / :dead streams, exactly as a
 * Redis worker's scripts would, so the tracker, SSE, batches and dead-letter views run
 * unchanged (docs/queues.md, "The scheduler on Kafka"). */
typedef struct sched_kafka sched_kafka;
int sched_kafka_start(const sched_config *c, sched_kafka **out);
void sched_kafka_stop(sched_kafka *k);
/* Produces the cancel record of job_id to {topic}.control and waits for the brokers. */
int sched_kafka_cancel(const sched_config *c, const char *job_id);

/* ---- dead letters (deadletters.c) --------------------------------------------------- */
int dlq_list(const sched_config *c, const char *cursor, int limit, char **json);
/* Puts the dead entry's job back on the stream with its attempts reset. */
int dlq_requeue(const sched_config *c, const char *entry_id, char *job_id, size_t cap);
/* Moves a job that used up its attempts to {stream}:dead. */
int dlq_bury(const sched_config *c, const char *job_id, const char *code, const char *message);

/* ---- batches (batch.c) -------------------------------------------------------------- */
typedef struct {
  char *settings_json; /* the shared job settings (a Job without id/prompt), may be NULL */
  char *items;         /* JSONL: {"prompt": ..., "seed": ...} or plain strings per line */
  size_t items_len;
  char name[129];      /* client-chosen batch id ("" = derived from the content) */
  int shard_size;      /* 0: the configured default */
} batch_request;

/* Validates every item through proto, registers the batch and enqueues what is missing.
 * Returns PA_ERR_INVALID with *err filled (field "items[N].prompt"...) on a bad item. */
int batch_submit(const sched_config *c, const batch_request *r, const char *owner,
                 char *batch_id, size_t cap, pw_error *err, char **json);
int batch_render(const sched_config *c, const char *batch_id, const char *owner, char **json);
/* Called by the tracker when a batch item reached a final state. */
int batch_item_done(const sched_config *c, const char *batch_id, long index, bool succeeded);
/* Writes every shard whose items are all final (tracker thread, and at submit). When a write
 * fails (the store is down), the batch is due again BATCH_RETRY_MS later. */
int batch_write_ready_shards(const sched_config *c, const char *batch_id);
#define BATCH_RETRY_MS 5000
/* The reaper: batches whose shard writes failed and are due again. */
void batch_retry_due(const sched_config *c);

/* ---- storage (storage.c) ------------------------------------------------------------ */
/* The store at --storage, opened once per process through the workers' module
 * (worker/storage.c): PA_ERR_UNSUPPORTED when none is configured. */
int sched_storage(const sched_config *c, pa_storage **out);
/* The store a job's outputs went to: its own `output` target (admin keys) or --storage. */
int sched_storage_of_job(const sched_config *c, const pw_job *job, pa_storage **out);

/* ---- tar (tar.c) -------------------------------------------------------------------- */
/* Streams a ustar archive into the store (a multipart upload on S3): nothing is visible
 * until tar_close, so a crash never leaves half a shard. */
typedef struct {
  pa_storage_upload *u;
  char key[300];
} tar_writer;
int tar_open(tar_writer *w, pa_storage *store, const char *key);
int tar_add(tar_writer *w, const char *name, const void *data, size_t len, int64_t mtime);
/* Ends the archive and publishes it; *size (optional) gets its length. */
int tar_close(tar_writer *w, uint64_t *size);
void tar_abort(tar_writer *w);

/* ---- auth and limits (auth.c) ------------------------------------------------------- */
typedef enum { AUTH_OK, AUTH_MISSING, AUTH_INVALID } auth_result;
/* Looks the bearer token up by its SHA-256; *key is NULL in open mode. */
auth_result auth_check(const sched_config *c, const char *authorization, const sched_key **key);
/* Token bucket per key name: true when a request may proceed; *retry_after_s otherwise. */
bool ratelimit_take(const sched_config *c, const char *key_name, double *retry_after_s);
void sha256_hex(const void *data, size_t len, char out[65]);

/* ---- HTTP server (http.c, api.c, dashboard.c) ---------------------------------------- */
typedef struct sched_server sched_server;
int sched_server_start(const sched_config *c, sched_server **out);
int sched_server_port(const sched_server *s); /* the bound port (listen port 0 = any) */
int sched_server_connections(const sched_server *s); /* HTTP connections open now */
void sched_server_stop(sched_server *s);
extern const char sched_dashboard_html[];
/* docs/openapi.json, served at /openapi.json: its bytes, from the first to one past the last. */
extern const char sched_openapi_json[], sched_openapi_json_end[];

#endif

/* The worker loop: claim jobs, run them through the pipeline, store the images, record the
 * result, notify, acknowledge. docs/worker.md describes the behaviour and guarantees. */
#ifndef PAELLA_WORKER_WORKER_H
#define PAELLA_WORKER_WORKER_H

#include <stdbool.h>
#include <stddef.h>

typedef struct {
  const char *queue_url;      /* redis://... or kafka://... (required) */
  const char *storage_url;    /* s3://BUCKET/PREFIX or file:///DIR (required) */
  const char *models_dir;     /* NULL: the built-in default model (32 px emoji) */
  const char *device;         /* "cpu" (default) or "cuda" */
  const char *consumer;       /* name in the consumer group (default hostname-pid) */
  int max_batch;              /* jobs claimed and run together (default 1) */
  int lease_ms;               /* default 60000 */
  int max_deliveries;         /* default 5 */
  int metrics_port;           /* 0: no HTTP endpoint */
  const char *metrics_host;   /* address of that endpoint; NULL: every interface (0.0.0.0) */
  bool once;                  /* exit after one job */
  const char *cache_url;      /* embedding cache Redis (default: the queue's Redis; "off" disables) */
  int cache_ttl_s;            /* default 86400 */
  size_t cache_max_entries;   /* default 256 */
  size_t cache_max_bytes;     /* default 256 MiB */
  bool webhook_allow_private; /* webhooks to loopback/private addresses (tests, LANs) */
  bool webhook_allow_unsigned; /* deliver (unsigned, counted) when a job's secret is not found */
  const char *webhook_secrets_dir; /* secret_id -> file DIR/<secret_id>; else env (docs/worker.md) */
  int poll_ms;                /* longest blocking claim, so signals are noticed (default 1000) */
  int progress_interval_ms;   /* least time between progress events of a job (default 500) */
  int max_side;               /* largest image side accepted (default 1024) */
  int fetch_timeout_ms;       /* input image downloads (default 30000) */
} pa_worker_config;

void pa_worker_config_default(pa_worker_config *c);
/* Runs until pa_worker_request_stop (then finishes the claimed batch and returns PA_OK) or,
 * with `once`, until one job was handled. Fails only on setup errors. */
int pa_worker_run(const pa_worker_config *c);
/* Async-signal-safe: the SIGTERM/SIGINT handler calls it. */
void pa_worker_request_stop(void);

#endif

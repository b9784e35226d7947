/* The worker's Prometheus metrics and its /metrics + /healthz endpoint (libmicrohttpd).
 * Every update takes one mutex; the HTTP thread renders a snapshot under the same lock. */
#ifndef PAELLA_WORKER_METRICS_H
#define PAELLA_WORKER_METRICS_H

#include <stdbool.h>

#include "worker/cache.h"

typedef struct pa_metrics pa_metrics;

/* Outcomes counted by paella_worker_jobs_total{status=...}. FENCED: the attempt lost its
 * lease to another worker and was abandoned without side effects. */
typedef enum {
  PA_JOB_SUCCEEDED, PA_JOB_FAILED, PA_JOB_CANCELED, PA_JOB_DEAD_LETTERED, PA_JOB_RETRIED, PA_JOB_FENCED,
  PA_JOB_OUTCOMES
} pa_job_outcome;

int pa_metrics_new(pa_metrics **out);
void pa_metrics_free(pa_metrics *m);
/* The cache whose counters are exported (not owned; NULL: none). */
void pa_metrics_set_cache(pa_metrics *m, pa_emb_cache *c);

void pa_metrics_job(pa_metrics *m, pa_job_outcome o, double seconds);
void pa_metrics_stage(pa_metrics *m, int stage /* pw_stage */, double seconds);
void pa_metrics_busy(pa_metrics *m, double seconds);      /* time inside the model */
void pa_metrics_claim(pa_metrics *m, double seconds);     /* a claim call that returned jobs */
void pa_metrics_queue_wait(pa_metrics *m, double seconds); /* enqueue -> claim */
void pa_metrics_overhead(pa_metrics *m, double seconds);  /* per job, outside the model */
void pa_metrics_set_healthy(pa_metrics *m, bool healthy);
/* Async-signal-safe (the SIGTERM handler calls it): from now on /healthz answers 503, so
 * load balancers and Kubernetes stop counting on this process while it drains. */
void pa_metrics_mark_draining(void);

/* The Prometheus text exposition (malloc'd). */
char *pa_metrics_render(pa_metrics *m);
/* Serves /metrics and /healthz on host:port until pa_metrics_free. host is a numeric IPv4
 * or IPv6 address ("127.0.0.1", "::1"); NULL or "" is every interface (0.0.0.0). */
int pa_metrics_serve(pa_metrics *m, const char *host, int port);

#endif

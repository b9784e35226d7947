/* Shared between worker.c (the loop), worker_job.c (a job's inputs, request and outputs) and
 * worker_notify.c (events and webhooks). Not part of the worker's interface. */
#ifndef PAELLA_WORKER_WORKER_INTERNAL_H
#define PAELLA_WORKER_WORKER_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "model/pipeline.h"
#include "proto/proto.h"
#include "worker/cache.h"
#include "worker/metrics.h"
#include "worker/queue.h"
#include "worker/storage.h"
#include "worker/worker.h"

typedef struct pa_notifier pa_notifier;
typedef struct pa_courier pa_courier;
typedef struct worker worker;

typedef enum { JOB_PENDING, JOB_DONE } job_state;

typedef struct job_ctx {
  worker *w;
  pa_delivery d;
  pw_job job;
  job_state state;
  /* The lease: `leased` while the heartbeat must renew it; `fenced` once a renewal (or a
   * fenced write) found that another worker owns the entry: the attempt then stops at the next
   * step and has no side effect left (no output, result, webhook or ack). */
  atomic_bool leased, fenced;
  uint64_t seed;
  pa_image *image, *mask;
  int n_runs;               /* pa_generate calls: interpolation frames, else 1 */
  pa_gen_result *results;   /* n_runs */
  /* failure, set before finishing */
  bool failed, transient;
  pw_code code;
  char message[512];
  /* cancellation / deadline noticed in the progress callback */
  bool canceled, deadline;
  double last_cancel_check, last_progress;
  /* timing (monotonic seconds) */
  double t_claim, overhead, model;
  double enqueue_ms;        /* wall ms from the Redis entry id, NaN when unknown */
  double timings_ms[PW_STAGE_COUNT];
} job_ctx;

struct worker {
  const pa_worker_config *cfg;
  pa_queue *q;
  pa_storage *store;
  pa_pipeline *pipe;
  pa_emb_cache *cache;
  pa_metrics *metrics;
  pa_notifier *notify;
  long long shared_cache_hits; /* cache hits already added to the shared registry */
  job_ctx *batch;           /* the claimed batch (leases renewed while any runs) */
  int n_batch;
  double last_renew;
  pa_courier *courier;      /* the outbox's delivery thread (transports with an outbox) */
  /* The lease heartbeat: a thread with a queue handle of its own renews every leased entry
   * of the batch each quarter lease, whatever the main thread is doing (a long step, an
   * upload). NULL hb_q: the transport cannot (Kafka), leases are renewed between steps. */
  pa_queue *hb_q;
  char *limits_record;      /* what advertise() publishes (admission.h) */
  double advertised_at;     /* pa_mono() of the last advertisement, 0: never */
  pthread_t hb_thread;
  pthread_mutex_t hb_mu;
  pthread_cond_t hb_cv;
  bool hb_stop;
  uint64_t hb_gen;          /* batch generation: a renewal's verdict applies to its batch only */
};

double pa_mono(void);
int64_t pa_wall_ms(void);

/* worker_job.c */
int job_fetch_inputs(job_ctx *jc);                  /* fills image/mask or fails the job */
int job_request(job_ctx *jc, int run, pa_gen_request *r);
uint64_t job_default_seed(const char *job_id);
int job_store_outputs(job_ctx *jc, pw_result *res); /* PNG + upload; fills res->outputs */
/* The job's preview (pa_gen_request.preview): a PNG stored under "<job id>/preview.png"
 * (overwritten by the next one) and a "preview" event naming it. Failures are logged, never
 * fail the job. */
void job_preview(void *user, int step, int total, const pa_image *img);
void job_fail(job_ctx *jc, pw_code code, bool transient, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
void job_fence(job_ctx *jc); /* the attempt lost its entry (worker.c): logged once */
/* Renews the lease now and says whether the attempt still owns its entry (worker.c). */
bool job_still_owned(job_ctx *jc);

/* worker_notify.c: events on the queue plus webhooks (into the outbox, or an in-memory
 * background thread for transports without one); nothing waits for a receiver. */
int pa_notifier_new(const pa_worker_config *cfg, pa_notifier **out);
void pa_notifier_free(pa_notifier *n); /* drains pending webhooks for a bounded time */
/* Webhooks delivered / given up since the previous call (process-wide). */
void pa_notifier_take_counts(long long *ok, long long *failed);
void notify_start(worker *w, job_ctx *jc);
void notify_progress(worker *w, job_ctx *jc, pw_stage stage, int step, int total);
/* A "preview" event on the queue's event stream (no webhook): a progress message whose
 * `preview` is the stored image's URL (or its location when the store has no URL). */
void notify_preview(worker *w, job_ctx *jc, int step, int total, const char *url);
/* The Result's webhook (completed or failed) when the job subscribed to it: fills m (its
 * body malloc'd: free((char *)m->body)) and msg_id. */
bool notify_final_msg(job_ctx *jc, const pw_result *res, char *msg_id, size_t cap, pa_webhook_msg *m);
/* For transports without an outbox, after the result is recorded. */
void notify_final_memory(worker *w, const pa_webhook_msg *m);

/* courier.c: the outbox's delivery thread; takes over q (a handle of its own). */
int pa_courier_start(const pa_worker_config *cfg, pa_queue *q, pa_courier **out);
void pa_courier_stop(pa_courier *c); /* cuts the attempt in flight short: within a second */

#endif

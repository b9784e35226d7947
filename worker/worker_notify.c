/* Events on the queue and webhooks.
 *
 * Every event goes to the queue's events stream. Webhooks go to the job's URL, signed with the
 * secret its secret_id names, only for the events it subscribed to. The ids are stable across
 * retries and re-runs, so receivers can deduplicate: "<job id>.start", "<job id>.completed",
 * "<job id>.failed", and "<job id>.progress.<stage>.<step>" (one id per step, since one id for
 * every progress event would make receivers drop all but the first).
 *
 * With a transport that has an outbox (Redis), every webhook is a message in it: start and
 * progress added here (while the attempt owns its entry), the final one by record_result in
 * the same atomic step as the Result; the courier (courier.c) delivers them. Nothing here
 * waits for a receiver. Without an outbox (Kafka), webhooks go through one in-memory
 * background thread (best effort, lost if the worker dies), the final one included. */
#include <ctype.h>
#include <errno.h>
#include <stdatomic.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "worker/log.h"
#include "worker/webhook.h"
#include "worker/webhook_secret.h"
#include "worker/worker_internal.h"

#define NOTIFY_QUEUE 64
#define NOTIFY_DRAIN_S 10

typedef struct {
  char *url, *secret, *msg_id, *body;
  bool final; /* completed/failed: the full retry schedule */
} hook_msg;

struct pa_notifier {
  const pa_worker_config *cfg;
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv, idle_cv;
  hook_msg ring[NOTIFY_QUEUE];
  int head, count;
  bool busy, stop;
  atomic_bool abort; /* set when the drain time is over: the attempt in flight is cut short */
};

static void hook_msg_free(hook_msg *m) {
  free(m->url);
  free(m->secret);
  free(m->msg_id);
  free(m->body);
  memset(m, 0, sizeof *m);
}

/* Webhook outcomes since the last pa_notifier_take_counts (both threads deliver). */
static _Atomic long long hooks_ok, hooks_failed;

void pa_notifier_take_counts(long long *ok, long long *failed) {
  *ok = atomic_exchange(&hooks_ok, 0);
  *failed = atomic_exchange(&hooks_failed, 0);
}

static void deliver(pa_notifier *n, const hook_msg *m, int attempts) {
  pa_webhook_options o = {.max_attempts = attempts, .allow_private = n->cfg->webhook_allow_private,
                          .max_delay_ms = 8000, .abort = &n->abort};
  pa_webhook_report rep = {0};
  int rc = pa_webhook_deliver(m->url, m->secret, m->msg_id, m->body, &o, &rep);
  atomic_fetch_add(rc || !rep.delivered ? &hooks_failed : &hooks_ok, 1);
  if (rc || !rep.delivered)
    pa_log(PA_LOG_WARN, NULL,
           json_pack("{s:s, s:i, s:i, s:s}", "webhook_id", m->msg_id, "attempts", rep.attempts, "status",
                     rep.last_status, "error", rc ? pa_errmsg() : "not delivered"),
           "webhook not delivered");
}

static void *notifier_main(void *arg) {
  pa_notifier *n = arg;
  pthread_mutex_lock(&n->mu);
  for (;;) {
    while (!n->count && !n->stop) pthread_cond_wait(&n->cv, &n->mu);
    if (!n->count) break;
    hook_msg m = n->ring[n->head];
    memset(&n->ring[n->head], 0, sizeof m);
    n->head = (n->head + 1) % NOTIFY_QUEUE;
    n->count--;
    n->busy = true;
    pthread_mutex_unlock(&n->mu);
    deliver(n, &m, m.final ? 0 : 2);
    hook_msg_free(&m);
    pthread_mutex_lock(&n->mu);
    n->busy = false;
    pthread_cond_broadcast(&n->idle_cv);
  }
  pthread_mutex_unlock(&n->mu);
  return NULL;
}

int pa_notifier_new(const pa_worker_config *cfg, pa_notifier **out) {
  pa_notifier *n = calloc(1, sizeof *n);
  if (!n) return pa_fail(PA_ERR_NOMEM, "out of memory");
  n->cfg = cfg;
  pthread_mutex_init(&n->mu, NULL);
  pthread_cond_init(&n->cv, NULL);
  pthread_cond_init(&n->idle_cv, NULL);
  if (pthread_create(&n->thread, NULL, notifier_main, n)) {
    free(n);
    return pa_fail(PA_ERR_NOMEM, "cannot start the webhook thread");
  }
  *out = n;
  return PA_OK;
}

/* Waits (bounded) until the background queue is empty and idle. */
static void notifier_drain(pa_notifier *n, int seconds) {
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += seconds;
  pthread_mutex_lock(&n->mu);
  while ((n->count || n->busy) && pthread_cond_timedwait(&n->idle_cv, &n->mu, &until) != ETIMEDOUT) {
  }
  pthread_mutex_unlock(&n->mu);
}

void pa_notifier_free(pa_notifier *n) {
  if (!n) return;
  notifier_drain(n, NOTIFY_DRAIN_S);
  atomic_store(&n->abort, true); /* bounded: a silent receiver does not hold the exit */
  pthread_mutex_lock(&n->mu);
  n->stop = true;
  for (; n->count; n->count--, n->head = (n->head + 1) % NOTIFY_QUEUE) hook_msg_free(&n->ring[n->head]);
  pthread_cond_broadcast(&n->cv);
  pthread_mutex_unlock(&n->mu);
  pthread_join(n->thread, NULL);
  pthread_cond_destroy(&n->cv);
  pthread_cond_destroy(&n->idle_cv);
  pthread_mutex_destroy(&n->mu);
  free(n);
}

/* ---- messages ------------------------------------------------------------------------ */

static bool subscribed(const job_ctx *jc, pw_event ev) {
  return jc->job.has_webhook && (jc->job.webhook.events & (1u << ev));
}

/* Standard Webhooks payload shape: type + data; the job id is plain ASCII by validation.
 * malloc'd. */
static char *hook_body(const job_ctx *jc, pw_event ev, const char *data_json) {
  size_t len = strlen(data_json) + strlen(jc->job.id) + 64;
  char *body = malloc(len);
  if (body) snprintf(body, len, "{\"type\":\"%s\",\"job_id\":\"%s\",\"data\":%s}", pw_event_name(ev), jc->job.id, data_json);
  return body;
}

static void fill_msg(const job_ctx *jc, pw_event ev, const char *msg_id, const char *body, pa_webhook_msg *m) {
  *m = (pa_webhook_msg){.msg_id = msg_id, .job_id = jc->job.id, .event = pw_event_name(ev), .url = jc->job.webhook.url,
                        .secret_id = jc->job.webhook.secret_id, .body = body};
}

/* The in-memory path (no outbox): the secret is looked up now; none and unsigned delivery off
 * is a refusal that is logged and counted, never a silent skip. */
static bool memory_hook(worker *w, const pa_webhook_msg *pm, bool final, hook_msg *m) {
  memset(m, 0, sizeof *m);
  m->secret = pa_webhook_find_secret(w->cfg->webhook_secrets_dir, pm->secret_id);
  if (!m->secret && !w->cfg->webhook_allow_unsigned) {
    pa_log(PA_LOG_ERROR, pm->job_id, json_pack("{s:s?}", "secret_id", pm->secret_id),
           "webhook refused: no secret for this secret_id (see docs/worker.md), and unsigned delivery is off");
    atomic_fetch_add(&hooks_failed, 1);
    return false;
  }
  m->body = strdup(pm->body);
  m->url = strdup(pm->url);
  m->msg_id = strdup(pm->msg_id);
  m->final = final;
  if (!m->body || !m->url || !m->msg_id) {
    hook_msg_free(m);
    return false;
  }
  return true;
}

static void enqueue_hook(pa_notifier *n, hook_msg *m) {
  pthread_mutex_lock(&n->mu);
  if (n->count == NOTIFY_QUEUE) {
    pthread_mutex_unlock(&n->mu);
    pa_log(PA_LOG_WARN, NULL, json_pack("{s:s}", "webhook_id", m->msg_id), "webhook queue full: event dropped");
    hook_msg_free(m);
    return;
  }
  n->ring[(n->head + n->count) % NOTIFY_QUEUE] = *m;
  n->count++;
  pthread_cond_signal(&n->cv);
  pthread_mutex_unlock(&n->mu);
}

/* ---- events ------------------------------------------------------------------------------ */

/* A start or progress webhook: into the outbox while the attempt owns its entry (a fenced
 * attempt learns here that it lost the job), else into the in-memory queue. */
static void notify_hook(worker *w, job_ctx *jc, pw_event ev, const char *msg_id, const char *data_json) {
  char *body = hook_body(jc, ev, data_json);
  if (!body) return;
  pa_webhook_msg pm;
  fill_msg(jc, ev, msg_id, body, &pm);
  if (w->q->ops->enqueue_webhook) {
    int rc = w->q->ops->enqueue_webhook(w->q, &jc->d, &pm);
    if (rc == PA_ERR_NOTFOUND) job_fence(jc);
    else if (rc)
      pa_log(PA_LOG_WARN, jc->job.id, json_pack("{s:s, s:s}", "webhook_id", msg_id, "error", pa_errmsg()),
             "webhook not queued");
  } else {
    hook_msg m;
    if (memory_hook(w, &pm, false, &m)) enqueue_hook(w->notify, &m);
  }
  free(body);
}

/* `type`: the event stream's entry type. */
static void publish_event(worker *w, job_ctx *jc, const char *type, const pw_progress *p) {
  pw_error err;
  uint8_t *buf = NULL;
  size_t len = 0;
  if (pw_progress_encode(p, &buf, &len, &err) == 0) {
    if (w->q->ops->publish_event(w->q, jc->job.id, type, buf, len))
      pa_log(PA_LOG_WARN, jc->job.id, json_pack("{s:s}", "error", pa_errmsg()), "event not published");
  } else {
    pa_log(PA_LOG_ERROR, jc->job.id, json_pack("{s:s}", "error", err.message), "progress event invalid");
  }
  free(buf);
}

void notify_preview(worker *w, job_ctx *jc, int step, int total, const char *url) {
  pw_progress p;
  pw_progress_init(&p);
  p.job_id = jc->job.id; /* borrowed: cleared before pw_progress_free */
  p.preview = (char *)url;
  p.step = step;
  p.total = total;
  p.stage = PW_STAGE_DENOISE;
  p.ts_ms = pa_wall_ms();
  publish_event(w, jc, "preview", &p);
  p.job_id = p.preview = NULL;
  pw_progress_free(&p);
}

static void publish_progress(worker *w, job_ctx *jc, pw_event ev, pw_stage stage, int step, int total) {
  pw_progress p;
  pw_error err;
  char *json = NULL, msg_id[160];
  pw_progress_init(&p);
  p.job_id = jc->job.id; /* borrowed: cleared before pw_progress_free */
  p.step = step;
  p.total = total;
  p.stage = stage;
  p.ts_ms = pa_wall_ms();
  publish_event(w, jc, pw_event_name(ev), &p);
  if (ev == PW_EVENT_START) snprintf(msg_id, sizeof msg_id, "%s.start", jc->job.id);
  else snprintf(msg_id, sizeof msg_id, "%s.progress.%s.%d", jc->job.id, pw_stage_name(stage), step);
  if (subscribed(jc, ev) && pw_progress_to_json(&p, 0, &json, &err) == 0) notify_hook(w, jc, ev, msg_id, json);
  free(json);
  p.job_id = NULL;
  pw_progress_free(&p);
}

void notify_start(worker *w, job_ctx *jc) { publish_progress(w, jc, PW_EVENT_START, PW_STAGE_QUEUED, 1, 1); }

void notify_progress(worker *w, job_ctx *jc, pw_stage stage, int step, int total) {
  publish_progress(w, jc, PW_EVENT_PROGRESS, stage, step, total);
}

bool notify_final_msg(job_ctx *jc, const pw_result *res, char *msg_id, size_t cap, pa_webhook_msg *m) {
  pw_error err;
  char *json = NULL;
  pw_event ev = res->status == PW_STATUS_SUCCEEDED ? PW_EVENT_COMPLETED : PW_EVENT_FAILED;
  if (!subscribed(jc, ev) || pw_result_to_json(res, 0, &json, &err)) return false;
  snprintf(msg_id, cap, "%s.%s", jc->job.id, pw_event_name(ev));
  char *body = hook_body(jc, ev, json);
  free(json);
  if (!body) return false;
  fill_msg(jc, ev, msg_id, body, m);
  return true;
}

void notify_final_memory(worker *w, const pa_webhook_msg *pm) {
  hook_msg m;
  if (memory_hook(w, pm, true, &m)) enqueue_hook(w->notify, &m);
}

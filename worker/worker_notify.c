/* Events on the queue and webhooks.
 *
 * Every event goes to the queue's events stream. Webhooks go to the job's URL, signed with the
 * secret its secret_id names, only for the events it subscribed to. The ids are stable across
 * retries and re-runs, so receivers can deduplicate: "<job id>.start", "<job id>.completed",
 * "<job id>.failed", and "<job id>.progress.<stage>.<step>" (one id per step, since one id for
 * every progress event would make receivers drop all but the first).
 *
 * Start and progress webhooks are best effort and go through one background thread, so a
 * slow receiver never stalls the GPU; the final webhook is delivered (with retries) before the
 * job's entry is acknowledged, after the background queue has drained, so it arrives last. */
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
#include "worker/worker_internal.h"

#define NOTIFY_QUEUE 64
#define NOTIFY_DRAIN_S 10

typedef struct {
  char *url, *secret, *msg_id, *body;
} hook_msg;

struct pa_notifier {
  const pa_worker_config *cfg;
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv, idle_cv;
  hook_msg ring[NOTIFY_QUEUE];
  int head, count;
  bool busy, stop;
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

static void deliver(const pa_worker_config *cfg, const hook_msg *m, int attempts) {
  pa_webhook_options o = {.max_attempts = attempts, .allow_private = cfg->webhook_allow_private,
                          .max_delay_ms = 8000};
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
    deliver(n->cfg, &m, 2);
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

/* ---- secrets ------------------------------------------------------------------------- */

/* secret_id "wh-1" -> the file DIR/wh-1 (with --webhook-secrets DIR), else the variable
 * PAELLA_WEBHOOK_SECRET_WH_1; no secret_id -> PAELLA_WEBHOOK_SECRET. malloc'd or NULL. */
static char *find_secret(const pa_worker_config *cfg, const char *secret_id) {
  char name[200], buf[1024];
  if (secret_id && cfg->webhook_secrets_dir && cfg->webhook_secrets_dir[0]) {
    snprintf(name, sizeof name, "%s/%s", cfg->webhook_secrets_dir, secret_id);
    FILE *f = fopen(name, "r");
    if (f) {
      size_t n = fread(buf, 1, sizeof buf - 1, f);
      fclose(f);
      while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ')) n--;
      buf[n] = 0;
      return n ? strdup(buf) : NULL;
    }
  }
  if (!secret_id) {
    const char *v = getenv("PAELLA_WEBHOOK_SECRET");
    return v && *v ? strdup(v) : NULL;
  }
  int k = snprintf(name, sizeof name, "PAELLA_WEBHOOK_SECRET_");
  for (const char *p = secret_id; *p && k < (int)sizeof name - 1; p++)
    name[k++] = isalnum((unsigned char)*p) ? (char)toupper((unsigned char)*p) : '_';
  name[k] = 0;
  const char *v = getenv(name);
  return v && *v ? strdup(v) : NULL;
}

/* The webhook message for an event the job subscribed to, or false. */
static bool hook_for(worker *w, job_ctx *jc, pw_event ev, const char *msg_id, const char *data_json, hook_msg *m) {
  const pw_job *j = &jc->job;
  memset(m, 0, sizeof *m);
  if (!j->has_webhook || !(j->webhook.events & (1u << ev))) return false;
  m->secret = find_secret(w->cfg, j->webhook.secret_id);
  if (!m->secret) {
    pa_log(PA_LOG_ERROR, j->id, json_pack("{s:s?}", "secret_id", j->webhook.secret_id),
           "webhook skipped: no secret for this secret_id (see docs/worker.md)");
    return false;
  }
  size_t len = strlen(data_json) + strlen(j->id) + 64;
  m->body = malloc(len);
  m->url = strdup(j->webhook.url);
  m->msg_id = strdup(msg_id);
  if (!m->body || !m->url || !m->msg_id) {
    hook_msg_free(m);
    return false;
  }
  /* Standard Webhooks payload shape: type + data; the job id is plain ASCII by validation */
  snprintf(m->body, len, "{\"type\":\"%s\",\"job_id\":\"%s\",\"data\":%s}", pw_event_name(ev), j->id, data_json);
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

static void publish_progress(worker *w, job_ctx *jc, pw_event ev, pw_stage stage, int step, int total) {
  pw_progress p;
  pw_error err;
  uint8_t *buf = NULL;
  size_t len = 0;
  char *json = NULL, msg_id[160];
  pw_progress_init(&p);
  p.job_id = jc->job.id; /* borrowed: cleared before pw_progress_free */
  p.step = step;
  p.total = total;
  p.stage = stage;
  p.ts_ms = pa_wall_ms();
  if (pw_progress_encode(&p, &buf, &len, &err) == 0) {
    if (w->q->ops->publish_event(w->q, jc->job.id, pw_event_name(ev), buf, len))
      pa_log(PA_LOG_WARN, jc->job.id, json_pack("{s:s}", "error", pa_errmsg()), "event not published");
  } else {
    pa_log(PA_LOG_ERROR, jc->job.id, json_pack("{s:s}", "error", err.message), "progress event invalid");
  }
  if (ev == PW_EVENT_START) snprintf(msg_id, sizeof msg_id, "%s.start", jc->job.id);
  else snprintf(msg_id, sizeof msg_id, "%s.progress.%s.%d", jc->job.id, pw_stage_name(stage), step);
  hook_msg m;
  if (pw_progress_to_json(&p, 0, &json, &err) == 0 && hook_for(w, jc, ev, msg_id, json, &m)) enqueue_hook(w->notify, &m);
  free(json);
  free(buf);
  p.job_id = NULL;
  pw_progress_free(&p);
}

void notify_start(worker *w, job_ctx *jc) { publish_progress(w, jc, PW_EVENT_START, PW_STAGE_QUEUED, 1, 1); }

void notify_progress(worker *w, job_ctx *jc, pw_stage stage, int step, int total) {
  publish_progress(w, jc, PW_EVENT_PROGRESS, stage, step, total);
}

void notify_final(worker *w, job_ctx *jc, const pw_result *res) {
  pw_error err;
  char *json = NULL, msg_id[160];
  pw_event ev = res->status == PW_STATUS_SUCCEEDED ? PW_EVENT_COMPLETED : PW_EVENT_FAILED;
  snprintf(msg_id, sizeof msg_id, "%s.%s", jc->job.id, pw_event_name(ev));
  hook_msg m;
  if (pw_result_to_json(res, 0, &json, &err) == 0 && hook_for(w, jc, ev, msg_id, json, &m)) {
    notifier_drain(w->notify, NOTIFY_DRAIN_S);
    deliver(w->cfg, &m, 0);
    hook_msg_free(&m);
  }
  free(json);
}

/* The worker loop (worker.h; behaviour and guarantees in docs/worker.md).
 *
 * claim a batch -> per job: decode (malformed: dead letter), deadline/cancel checks, start
 * event, inputs -> group compatible jobs -> pa_generate_many per group -> per job: PNG +
 * upload -> record the Result (+ the final webhook into the outbox, atomically) -> XACK. A
 * job whose failure may pass (storage, network) is left unacknowledged: its entry comes back
 * after the lease and counts one more delivery, up to the dead letters.
 *
 * Fencing: a heartbeat thread renews the batch's leases; the first renewal that finds the
 * entry owned by another worker (this one was frozen or partitioned past its lease) fences
 * the attempt: it stops at the next step, and every side effect left (upload, result,
 * webhook, ack) is refused, the Redis ones atomically by the delivery-count token
 * (queue_redis.c, OWNS_LUA). */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ops/threads.h"
#include "worker/admission.h"
#include "worker/log.h"
#include "worker/worker_internal.h"

static volatile sig_atomic_t stop_requested;

void pa_worker_request_stop(void) {
  stop_requested = 1;
  pa_metrics_mark_draining();
}

double pa_mono(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int64_t pa_wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void pa_worker_config_default(pa_worker_config *c) {
  memset(c, 0, sizeof *c);
  c->device = "cpu";
  c->max_batch = 1;
  c->lease_ms = 60000;
  c->max_deliveries = 5;
  c->cache_ttl_s = 86400;
  c->cache_max_entries = 256;
  c->cache_max_bytes = (size_t)256 << 20;
  c->poll_ms = 1000;
  c->progress_interval_ms = 500;
  c->max_side = PW_DEFAULT_MAX_SIDE;
  c->fetch_timeout_ms = 30000;
}

/* ---- leases, cancellation, progress ------------------------------------------------------ */

/* Called from the heartbeat thread too: reads only the delivery (set before the thread sees
 * the job, never written after), not the job being decoded; the job's own "job finished"
 * line (status fenced) names it. */
void job_fence(job_ctx *jc) {
  if (atomic_exchange(&jc->fenced, true)) return;
  pa_log(PA_LOG_WARN, NULL, json_pack("{s:s, s:i}", "entry", jc->d.handle, "delivery", jc->d.deliveries),
         "lease lost: another worker owns this entry now; this attempt stops and writes nothing");
}

/* Publishes this worker's limits (for the scheduler's /readyz) every PA_ADVERTISE_EVERY_MS or
 * every beat when beats are further apart; the record lapses a few beats after the last. */
static void advertise(worker *w, long period_ms) {
  if (!w->hb_q->ops->advertise || !w->limits_record) return;
  long every = period_ms > PA_ADVERTISE_EVERY_MS ? period_ms : PA_ADVERTISE_EVERY_MS;
  if (w->advertised_at > 0 && (pa_mono() - w->advertised_at) * 1000 < PA_ADVERTISE_EVERY_MS) return;
  if (w->hb_q->ops->advertise(w->hb_q, w->limits_record, (long long)every * PA_ADVERTISE_TTL_BEATS))
    pa_log(PA_LOG_WARN, NULL, json_pack("{s:s}", "error", pa_errmsg()), "limits not advertised");
  else w->advertised_at = pa_mono();
}

/* The heartbeat thread: every quarter lease, renews each leased entry of the current batch on
 * its own connection, never waiting for a step, an upload or a receiver; it also advertises
 * the worker's limits. */
static void *heartbeat_main(void *arg) {
  worker *w = arg;
  long period_ms = w->cfg->lease_ms / 4 > 0 ? w->cfg->lease_ms / 4 : 1;
  pa_delivery ds[64];
  job_ctx *jcs[64];
  int rcs[64];
  advertise(w, period_ms);
  pthread_mutex_lock(&w->hb_mu);
  while (!w->hb_stop) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += period_ms / 1000;
    until.tv_nsec += (period_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) until.tv_sec++, until.tv_nsec -= 1000000000L;
    pthread_cond_timedwait(&w->hb_cv, &w->hb_mu, &until);
    int k = 0;
    uint64_t gen = w->hb_gen;
    for (int i = 0; !w->hb_stop && i < w->n_batch && k < 64; i++) {
      if (!atomic_load(&w->batch[i].leased) || atomic_load(&w->batch[i].fenced)) continue;
      memset(&ds[k], 0, sizeof ds[k]);
      memcpy(ds[k].handle, w->batch[i].d.handle, sizeof ds[k].handle);
      ds[k].deliveries = w->batch[i].d.deliveries;
      ds[k].lane = w->batch[i].d.lane;
      jcs[k++] = &w->batch[i];
    }
    pthread_mutex_unlock(&w->hb_mu);
    advertise(w, period_ms);
    for (int j = 0; j < k; j++) {
      rcs[j] = w->hb_q->ops->renew(w->hb_q, &ds[j]);
      if (rcs[j] && rcs[j] != PA_ERR_NOTFOUND) /* Redis away: the writes are fenced anyway; retry next beat */
        pa_log(PA_LOG_WARN, NULL, json_pack("{s:s, s:s}", "entry", ds[j].handle, "error", pa_errmsg()),
               "lease renewal failed");
    }
    pthread_mutex_lock(&w->hb_mu);
    for (int j = 0; j < k && w->hb_gen == gen; j++)
      if (rcs[j] == PA_ERR_NOTFOUND && atomic_load(&jcs[j]->leased)) job_fence(jcs[j]);
  }
  pthread_mutex_unlock(&w->hb_mu);
  return NULL;
}

static int heartbeat_start(worker *w) {
  pthread_mutex_init(&w->hb_mu, NULL);
  pthread_cond_init(&w->hb_cv, NULL);
  if (!w->q->ops->clone) return PA_OK;
  int rc = w->q->ops->clone(w->q, &w->hb_q);
  if (rc) return rc;
  if (pthread_create(&w->hb_thread, NULL, heartbeat_main, w)) {
    w->hb_q->ops->close(w->hb_q);
    w->hb_q = NULL;
    return pa_fail(PA_ERR_NOMEM, "cannot start the lease heartbeat");
  }
  return PA_OK;
}

static void heartbeat_stop(worker *w) {
  if (!w->hb_q) return;
  pthread_mutex_lock(&w->hb_mu);
  w->hb_stop = true;
  pthread_cond_broadcast(&w->hb_cv);
  pthread_mutex_unlock(&w->hb_mu);
  pthread_join(w->hb_thread, NULL);
  w->hb_q->ops->close(w->hb_q);
  w->hb_q = NULL;
}

/* The batch the heartbeat renews (NULL, 0: none). */
static void heartbeat_track(worker *w, job_ctx *batch, int n) {
  pthread_mutex_lock(&w->hb_mu);
  w->batch = batch;
  w->n_batch = n;
  w->hb_gen++;
  pthread_mutex_unlock(&w->hb_mu);
}

/* Renews every unfinished entry of the batch: jobs waiting for their group must not be
 * reclaimed while another group runs. Throttled to a quarter of the lease. */
static void renew_leases(worker *w, bool force) {
  if (w->hb_q) return; /* the heartbeat does it */
  double now = pa_mono();
  if (!force && now - w->last_renew < w->cfg->lease_ms / 4000.0) return;
  w->last_renew = now;
  for (int i = 0; i < w->n_batch; i++) {
    job_ctx *jc = &w->batch[i];
    if (jc->state == JOB_DONE) continue;
    int rc = w->q->ops->renew(w->q, &jc->d);
    if (rc == PA_ERR_NOTFOUND) job_fence(jc);
    else if (rc)
      pa_log(PA_LOG_WARN, jc->job.id, json_pack("{s:s, s:s}", "entry", jc->d.handle, "error", pa_errmsg()),
             "lease renewal failed; the job may run twice (its outputs are idempotent)");
  }
}

static pw_stage stage_of(const char *name) {
  return !strcmp(name, "prior") ? PW_STAGE_PRIOR : PW_STAGE_DENOISE;
}

/* Between every prior and denoising step: leases, cancel flag, deadline, progress events.
 * Returning false makes pa_generate stop with PA_ERR_CANCELED. */
static bool on_progress(void *user, const char *stage, int step, int total) {
  job_ctx *jc = user;
  worker *w = jc->w;
  double now = pa_mono();
  pw_stage st = stage_of(stage);
  renew_leases(w, false);
  if (atomic_load(&jc->fenced)) return false; /* within one step of losing the lease */
  if (jc->job.deadline_ms && pa_wall_ms() > jc->job.deadline_ms) {
    jc->deadline = true;
    return false;
  }
  if (now - jc->last_cancel_check >= 0.1) { /* a Redis round trip per step is wasted on short steps */
    jc->last_cancel_check = now;
    if (w->q->ops->is_canceled(w->q, jc->job.id)) {
      jc->canceled = true;
      return false;
    }
  }
  if (step == total || now - jc->last_progress >= w->cfg->progress_interval_ms / 1000.0) {
    jc->last_progress = now;
    double t = pa_mono();
    notify_progress(w, jc, st, step, total);
    jc->overhead += pa_mono() - t;
  }
  return true;
}

/* ---- finishing a job ---------------------------------------------------------------------- */

static void fill_timings(job_ctx *jc, pw_result *res) {
  double enc = 0, prior = 0, den = 0, dec = 0;
  for (int f = 0; f < jc->n_runs && jc->results; f++) {
    enc += jc->results[f].seconds_encode;
    prior += jc->results[f].seconds_prior;
    den += jc->results[f].seconds_denoise;
    dec += jc->results[f].seconds_decode;
  }
  for (int s = 0; s < PW_STAGE_COUNT; s++) res->timings_ms[s] = jc->timings_ms[s];
  if (jc->results) {
    res->timings_ms[PW_STAGE_TEXT_ENCODE] = enc * 1e3;
    res->timings_ms[PW_STAGE_PRIOR] = prior * 1e3;
    res->timings_ms[PW_STAGE_DENOISE] = den * 1e3;
    res->timings_ms[PW_STAGE_VQ_DECODE] = dec * 1e3;
  }
  double total = (pa_mono() - jc->t_claim) * 1e3;
  if (!isnan(jc->timings_ms[PW_STAGE_QUEUED])) total += jc->timings_ms[PW_STAGE_QUEUED];
  res->total_ms = total;
  for (int s = 0; s < PW_STAGE_COUNT; s++)
    if (!isnan(res->timings_ms[s]))
      res->timings_ms[s] = fmin(fmax(res->timings_ms[s], 0), PW_TIMING_MAX_MS);
  res->total_ms = fmin(fmax(res->total_ms, 0), PW_TIMING_MAX_MS);
}

static void log_finished(worker *w, job_ctx *jc, const char *status, bool acked) {
  double wall = pa_mono() - jc->t_claim;
  pa_log(jc->failed && !jc->canceled ? PA_LOG_WARN : PA_LOG_INFO, jc->job.id,
         json_pack("{s:s, s:s?, s:s?, s:f, s:f, s:f, s:i, s:b, s:s}", "status", status, "code",
                   jc->failed ? pw_code_name(jc->code) : NULL, "error", jc->failed ? jc->message : NULL, "wall_ms",
                   wall * 1e3, "model_ms", jc->model * 1e3, "overhead_ms", jc->overhead * 1e3, "deliveries",
                   jc->d.deliveries, "acked", acked, "entry", jc->d.handle),
         "job finished");
  (void)w;
}

/* Fleet-wide counters the scheduler exports (webhook outcomes, embedding-cache hits): the
 * deltas since the last job go to the transport's shared registry, when it has one. */
static void share_counters(worker *w) {
  if (!w->q->ops->add_counters) return;
  long long ok, failed, hits = 0;
  pa_notifier_take_counts(&ok, &failed);
  if (w->cache) {
    pa_emb_cache_stats st;
    pa_emb_cache_get_stats(w->cache, &st);
    hits = (long long)st.hits - w->shared_cache_hits;
    w->shared_cache_hits = (long long)st.hits;
  }
  const char *names[] = {"webhook_deliveries:ok", "webhook_deliveries:failed", "embedding_cache_hits"};
  long long deltas[] = {ok, failed, hits};
  if (w->q->ops->add_counters(w->q, names, deltas, 3))
    pa_log(PA_LOG_WARN, NULL, json_pack("{s:s}", "error", pa_errmsg()), "shared counters not updated");
}

static void clear_outputs(pw_result *res) {
  for (size_t i = 0; i < res->n_outputs; i++)
    free(res->outputs[i].key), free(res->outputs[i].url), free(res->outputs[i].params);
  free(res->outputs);
  res->outputs = NULL;
  res->n_outputs = 0;
}

/* A fenced attempt ends here: nothing recorded, nothing acknowledged; the worker that owns
 * the entry now finishes the job. */
static void abandon_job(worker *w, job_ctx *jc) {
  jc->state = JOB_DONE;
  atomic_store(&jc->leased, false);
  pa_metrics_job(w->metrics, PA_JOB_FENCED, 0);
  log_finished(w, jc, "fenced", false);
}

/* Still this attempt's entry? Checked (and the lease renewed) right before each output is
 * written, so an attempt frozen past its lease does not overwrite the owner's files. */
bool job_still_owned(job_ctx *jc) {
  worker *w = jc->w;
  if (!atomic_load(&jc->fenced) && w->q->ops->renew(w->q, &jc->d) == PA_ERR_NOTFOUND) job_fence(jc);
  return !atomic_load(&jc->fenced);
}

/* Records the Result, with the final webhook into the outbox in the same atomic step when the
 * transport has one; false when the attempt turned out to be fenced. */
static bool record(worker *w, job_ctx *jc, const pw_result *res, const uint8_t *buf, size_t len, bool *recorded) {
  char msg_id[160];
  pa_webhook_msg hook;
  bool has_hook = notify_final_msg(jc, res, msg_id, sizeof msg_id, &hook);
  bool outbox = w->q->ops->enqueue_webhook != NULL;
  int rc = w->q->ops->record_result(w->q, &jc->d, jc->job.id, buf, len, has_hook && outbox ? &hook : NULL);
  *recorded = rc == PA_OK;
  if (rc == PA_ERR_NOTFOUND) job_fence(jc);
  else if (rc)
    pa_log(PA_LOG_ERROR, jc->job.id, json_pack("{s:s}", "error", pa_errmsg()), "result not recorded: left for redelivery");
  else if (has_hook && !outbox)
    notify_final_memory(w, &hook);
  if (has_hook) free((char *)hook.body);
  return rc != PA_ERR_NOTFOUND;
}

/* Records the job's Result (and its final webhook), acknowledges. A transient failure (or a
 * failure to record) leaves the entry pending for another try. */
static void finish_job(worker *w, job_ctx *jc) {
  double t = pa_mono();
  pw_result res;
  pw_error err;
  uint8_t *buf = NULL;
  size_t len = 0;
  pw_result_init(&res);
  if (!atomic_load(&jc->fenced) && !jc->failed && job_store_outputs(jc, &res)) clear_outputs(&res);
  if (atomic_load(&jc->fenced)) {
    clear_outputs(&res);
    abandon_job(w, jc);
    return;
  }
  jc->state = JOB_DONE;
  atomic_store(&jc->leased, false);
  if (jc->failed && jc->transient) {
    if (w->q->ops->note_failure &&
        w->q->ops->note_failure(w->q, &jc->d, jc->job.id, pw_code_name(jc->code), jc->message))
      pa_log(PA_LOG_WARN, jc->job.id, json_pack("{s:s}", "error", pa_errmsg()), "failure not noted for the dead letter");
    jc->overhead += pa_mono() - t;
    pa_metrics_job(w->metrics, PA_JOB_RETRIED, 0);
    log_finished(w, jc, "retry", false);
    pw_result_free(&res);
    return;
  }
  res.job_id = jc->job.id; /* borrowed */
  res.status = !jc->failed ? PW_STATUS_SUCCEEDED : jc->code == PW_E_CANCELED ? PW_STATUS_CANCELED : PW_STATUS_FAILED;
  res.has_seed = 1;
  res.seed = (int64_t)jc->seed;
  if (jc->failed) {
    res.has_error = 1;
    res.error_code = jc->code;
    res.error_message = jc->message; /* borrowed */
  }
  res.timings_ms[PW_STAGE_UPLOAD] = (pa_mono() - t) * 1e3;
  jc->timings_ms[PW_STAGE_UPLOAD] = res.timings_ms[PW_STAGE_UPLOAD];
  fill_timings(jc, &res);
  bool acked = false, recorded = false;
  if (pw_result_encode(&res, &buf, &len, &err)) {
    pa_log(PA_LOG_ERROR, jc->job.id, json_pack("{s:s, s:s}", "field", err.field, "error", err.message),
           "result does not validate (a bug): left for redelivery");
  } else if (!record(w, jc, &res, buf, len, &recorded)) {
    free(buf);
    res.job_id = NULL;
    res.error_message = NULL;
    pw_result_free(&res);
    abandon_job(w, jc);
    return;
  } else if (recorded) {
    if (jc->failed && jc->code == PW_E_TOO_MANY_ATTEMPTS)
      acked = true; /* the dead letter that follows acknowledges it, atomically with its XADD */
    else if (w->q->ops->ack(w->q, &jc->d))
      pa_log(PA_LOG_WARN, jc->job.id, json_pack("{s:s}", "error", pa_errmsg()),
             "ack refused or failed (the result is recorded; the entry's owner acknowledges it)");
    else
      acked = true;
  }
  free(buf);
  jc->overhead += pa_mono() - t;
  for (int s = 0; s < PW_STAGE_COUNT; s++)
    if (!isnan(res.timings_ms[s])) pa_metrics_stage(w->metrics, s, res.timings_ms[s] / 1e3);
  pa_metrics_overhead(w->metrics, jc->overhead);
  pa_job_outcome o = !jc->failed ? PA_JOB_SUCCEEDED : jc->code == PW_E_CANCELED ? PA_JOB_CANCELED : PA_JOB_FAILED;
  pa_metrics_job(w->metrics, o, pa_mono() - jc->t_claim);
  share_counters(w);
  log_finished(w, jc, pw_status_name(res.status), acked);
  res.job_id = NULL;
  res.error_message = NULL;
  pw_result_free(&res);
}

static void dead_letter(worker *w, job_ctx *jc, const char *code, const char *field, const char *message) {
  if (w->q->ops->dead_letter(w->q, &jc->d, code, field, message))
    pa_log(PA_LOG_ERROR, NULL, json_pack("{s:s, s:s}", "entry", jc->d.handle, "error", pa_errmsg()),
           "dead letter failed: the entry will be delivered again");
  else
    pa_log(PA_LOG_WARN, jc->job.id,
           json_pack("{s:s, s:s, s:s, s:s, s:i}", "entry", jc->d.handle, "code", code, "field", field, "error",
                     message, "deliveries", jc->d.deliveries),
           "job dead-lettered");
  pa_metrics_job(w->metrics, PA_JOB_DEAD_LETTERED, 0);
  jc->state = JOB_DONE;
  atomic_store(&jc->leased, false);
}

/* ---- preparing a job --------------------------------------------------------------------- */

/* "1700000000000-3" -> 1700000000000 (Redis stream ids start with the enqueue time) */
static double entry_time_ms(const char *handle) {
  char *end;
  double ms = strtod(handle, &end);
  return end != handle && *end == '-' ? ms : NAN;
}

/* Decode, checks, start event, inputs. Leaves the job PENDING (to run) or DONE. */
static void prepare_job(worker *w, job_ctx *jc) {
  double t = pa_mono();
  pw_error err;
  jc->w = w;
  jc->t_claim = t;
  for (int s = 0; s < PW_STAGE_COUNT; s++) jc->timings_ms[s] = NAN;
  jc->enqueue_ms = entry_time_ms(jc->d.handle);
  if (!isnan(jc->enqueue_ms)) {
    jc->timings_ms[PW_STAGE_QUEUED] = fmax((double)pa_wall_ms() - jc->enqueue_ms, 0);
    pa_metrics_queue_wait(w->metrics, jc->timings_ms[PW_STAGE_QUEUED] / 1e3);
  }
  if (pw_job_decode(jc->d.payload, jc->d.len, &jc->job, &err)) {
    dead_letter(w, jc, pw_code_name(err.code), err.field, err.message);
    goto out;
  }
  if (w->q->ops->is_settled && w->q->ops->is_settled(w->q, jc->job.id)) {
    int rc = w->q->ops->ack(w->q, &jc->d);
    pa_log(PA_LOG_INFO, jc->job.id, json_pack("{s:s, s:i, s:b}", "entry", jc->d.handle, "deliveries", jc->d.deliveries,
                                              "acked", rc == PA_OK),
           "result already recorded (or canceled or expired while queued): acknowledged without running again");
    jc->state = JOB_DONE;
    atomic_store(&jc->leased, false);
    goto out;
  }
  jc->seed = jc->job.has_seed ? (uint64_t)jc->job.seed : job_default_seed(jc->job.id);
  jc->n_runs = jc->job.kind == PW_KIND_INTERPOLATE ? (int)jc->job.interpolate.frames : 1;
  if (jc->d.deliveries > w->cfg->max_deliveries) {
    job_fail(jc, PW_E_TOO_MANY_ATTEMPTS, false, "delivered %d times (max %d)", jc->d.deliveries, w->cfg->max_deliveries);
    finish_job(w, jc); /* records the failure (the job hash must not stay "running") */
    dead_letter(w, jc, pw_code_name(PW_E_TOO_MANY_ATTEMPTS), "", jc->message);
    goto out;
  }
  if (jc->job.deadline_ms && pa_wall_ms() > jc->job.deadline_ms) {
    job_fail(jc, PW_E_DEADLINE, false, "deadline %lld passed before the job started", (long long)jc->job.deadline_ms);
  } else if (w->q->ops->is_canceled(w->q, jc->job.id)) {
    job_fail(jc, PW_E_CANCELED, false, "canceled before it started");
  } else {
    notify_start(w, jc);
    double tf = pa_mono();
    if (jc->job.image.present && job_fetch_inputs(jc) == 0) jc->timings_ms[PW_STAGE_FETCH] = (pa_mono() - tf) * 1e3;
    jc->last_cancel_check = pa_mono();
  }
  jc->overhead += pa_mono() - t;
  if (jc->failed) finish_job(w, jc);
  return;
out:
  jc->overhead += pa_mono() - t;
}

/* ---- running a group ---------------------------------------------------------------------- */

static void fail_from_status(job_ctx *jc, int rc) {
  if (atomic_load(&jc->fenced)) return; /* stopped because fenced: finish_job abandons it */
  if (jc->canceled) job_fail(jc, PW_E_CANCELED, false, "canceled while running");
  else if (jc->deadline) job_fail(jc, PW_E_DEADLINE, false, "deadline %lld passed while running", (long long)jc->job.deadline_ms);
  else if (rc == PA_ERR_NOMEM) job_fail(jc, PW_E_NO_MEMORY, true, "%s", pa_errmsg());
  else if (rc == PA_ERR_DEVICE) job_fail(jc, PW_E_GPU, true, "%s", pa_errmsg());
  else if (rc == PA_ERR_INVALID) job_fail(jc, PW_E_INVALID_VALUE, false, "%s", pa_errmsg());
  else job_fail(jc, PW_E_MODEL, false, "%s", pa_errmsg());
}

/* Builds the requests of the group's jobs (frames of one job are contiguous). */
static int build_requests(job_ctx **group, int n, pa_gen_request *reqs, job_ctx **owner, int *frame) {
  int k = 0;
  for (int g = 0; g < n; g++) {
    job_ctx *jc = group[g];
    if (!(jc->results = calloc((size_t)jc->n_runs, sizeof *jc->results))) {
      job_fail(jc, PW_E_NO_MEMORY, true, "out of memory");
      continue;
    }
    int first = k;
    for (int f = 0; f < jc->n_runs; f++, k++) {
      owner[k] = jc;
      frame[k] = f;
      if (job_request(jc, f, &reqs[k])) {
        job_fail(jc, PW_E_INVALID_VALUE, false, "%s", pa_errmsg());
        k = first; /* drop the job's requests */
        break;
      }
      reqs[k].progress = on_progress;
      reqs[k].preview = job_preview;
      reqs[k].preview_user = jc;
    }
  }
  return k;
}

/* pa_generate_many stops at the first failing request: that job fails, the rest goes on.
 * Model time is shared evenly by the requests that ran. */
static void run_requests(worker *w, pa_gen_request *reqs, job_ctx **owner, const int *frame, int n) {
  pa_gen_result *out = calloc((size_t)n, sizeof *out);
  if (!out) {
    for (int i = 0; i < n; i++) job_fail(owner[i], PW_E_NO_MEMORY, true, "out of memory");
    return;
  }
  for (int start = 0; start < n;) {
    int failed = -1;
    double t = pa_mono();
    int rc = pa_generate_many(w->pipe, reqs + start, n - start, out + start, &failed);
    double busy = pa_mono() - t;
    pa_metrics_busy(w->metrics, busy);
    int ran = rc ? (failed >= 0 ? failed + 1 : 1) : n - start;
    for (int i = start; i < start + ran; i++) {
      owner[i]->model += busy / ran;
      if (!rc || i < start + ran - 1) owner[i]->results[frame[i]] = out[i];
    }
    if (!rc) break;
    int bad = start + ran - 1;
    job_ctx *jc = owner[bad];
    fail_from_status(jc, rc);
    for (start = bad; start < n && owner[start] == jc; start++) {
    }
  }
  free(out);
}

static void free_inputs(job_ctx *jc) {
  for (int f = 0; jc->results && f < jc->n_runs; f++) pa_gen_result_free(&jc->results[f]);
  free(jc->results);
  jc->results = NULL;
  pa_image_free(jc->image);
  pa_image_free(jc->mask);
  jc->image = jc->mask = NULL;
}

static void run_group(worker *w, job_ctx **group, int n) {
  int total = 0;
  for (int g = 0; g < n; g++) total += group[g]->n_runs;
  pa_gen_request *reqs = calloc((size_t)total, sizeof *reqs);
  job_ctx **owner = calloc((size_t)total, sizeof *owner);
  int *frame = calloc((size_t)total, sizeof *frame);
  if (!reqs || !owner || !frame) {
    for (int g = 0; g < n; g++) job_fail(group[g], PW_E_NO_MEMORY, true, "out of memory");
  } else {
    int k = build_requests(group, n, reqs, owner, frame);
    run_requests(w, reqs, owner, frame, k);
  }
  for (int g = 0; g < n; g++) {
    finish_job(w, group[g]);
    free_inputs(group[g]);
  }
  free(reqs);
  free(owner);
  free(frame);
}

/* ---- the batch and the loop ---------------------------------------------------------------- */

/* Jobs share a group when their requests may share forwards: the pipeline's one batching
 * policy (pa_gen_batchable), asked about each job's first request. */
static bool jobs_batchable(job_ctx *a, job_ctx *b) {
  pa_gen_request ra, rb;
  return job_request(a, 0, &ra) == PA_OK && job_request(b, 0, &rb) == PA_OK && pa_gen_batchable(&ra, &rb);
}

static void process_batch(worker *w, job_ctx *batch, int n) {
  if (n < 1) return;
  heartbeat_track(w, batch, n);
  for (int i = 0; i < n; i++) prepare_job(w, &batch[i]);
  job_ctx **group = calloc((size_t)n, sizeof *group);
  for (int i = 0; group && i < n; i++) {
    if (batch[i].state == JOB_DONE) continue;
    int g = 0;
    group[g++] = &batch[i];
    batch[i].state = JOB_DONE; /* taken into this group; finish_job sets it again */
    for (int j = i + 1; j < n; j++)
      if (batch[j].state != JOB_DONE && jobs_batchable(&batch[i], &batch[j])) {
        group[g++] = &batch[j];
        batch[j].state = JOB_DONE;
      }
    for (int k = 0; k < g; k++) group[k]->state = JOB_PENDING;
    renew_leases(w, true);
    run_group(w, group, g);
  }
  free(group);
  heartbeat_track(w, NULL, 0);
  for (int i = 0; i < n; i++) {
    free_inputs(&batch[i]);
    pw_job_free(&batch[i].job);
    pa_delivery_clear(&batch[i].d);
  }
}

static int claim_batch(worker *w, job_ctx *batch, int max, int *n) {
  pa_delivery *d = calloc((size_t)max, sizeof *d);
  if (!d) return pa_fail(PA_ERR_NOMEM, "out of memory");
  double t = pa_mono();
  int rc = w->q->ops->claim(w->q, max, w->cfg->poll_ms, d, n);
  if (!rc && *n) pa_metrics_claim(w->metrics, pa_mono() - t);
  for (int i = 0; !rc && i < *n; i++) {
    memset(&batch[i], 0, sizeof batch[i]);
    pw_job_init(&batch[i].job);
    batch[i].d = d[i];
    atomic_store(&batch[i].leased, true);
  }
  free(d);
  return rc;
}

static int open_cache(worker *w) {
  const pa_worker_config *c = w->cfg;
  const char *url = c->cache_url;
  if (url && !strcmp(url, "off")) return PA_OK;
  if (!url || !*url) url = !strncmp(c->queue_url, "redis", 5) ? c->queue_url : NULL;
  pa_emb_cache_options o = {.redis_url = url, .ttl_s = c->cache_ttl_s, .max_entries = c->cache_max_entries,
                            .max_bytes = c->cache_max_bytes};
  int rc = pa_emb_cache_open(&o, &w->cache);
  if (!rc) {
    pa_pipeline_set_cache(w->pipe, pa_emb_cache_hook(w->cache));
    pa_metrics_set_cache(w->metrics, w->cache);
  }
  return rc;
}

/* What this worker runs, as the scheduler checks submissions (admission.h). */
static int limits_record(worker *w) {
  const pa_worker_config *c = w->cfg;
  pa_job_limits l = {.max_side = c->max_side};
  json_t *extra = json_pack("{s:i, s:i, s:s}", "size_multiple", pa_pipeline_size_multiple(w->pipe), "max_batch",
                            c->max_batch, "model", c->models_dir && *c->models_dir ? "dir" : "built-in");
  char *text = extra ? json_dumps(extra, JSON_COMPACT) : NULL;
  json_decref(extra);
  w->limits_record = text ? pa_job_limits_json(&l, text) : NULL;
  free(text);
  return w->limits_record ? PA_OK : pa_fail(PA_ERR_NOMEM, "out of memory");
}

static int setup(worker *w) {
  const pa_worker_config *c = w->cfg;
  int rc = PA_OK;
  if (!c->storage_url || !*c->storage_url) return pa_fail(PA_ERR_INVALID, "no storage URL (--storage or PAELLA_STORAGE)");
  if (c->max_batch < 1 || c->max_batch > 64) return pa_fail(PA_ERR_INVALID, "--max-batch must be in 1..64");
  pa_queue_options qo = {.consumer = c->consumer, .lease_ms = c->lease_ms, .max_deliveries = c->max_deliveries};
  PA_TRY(pa_metrics_new(&w->metrics));
  if (c->metrics_port) PA_TRY(pa_metrics_serve(w->metrics, c->metrics_host, c->metrics_port));
  PA_TRY(pa_queue_open(c->queue_url, &qo, &w->q));
  PA_TRY(pa_storage_open(c->storage_url, NULL, &w->store));
  pa_backend *be = pa_backend_by_name(c->device ? c->device : "cpu");
  if (!be) {
    rc = PA_ERR_UNSUPPORTED;
    goto fail;
  }
  pa_pipeline_options po = {.models_dir = c->models_dir && *c->models_dir ? c->models_dir : NULL, .be = be,
                            .max_side = c->max_side};
  PA_TRY(pa_pipeline_open(&po, &w->pipe));
  PA_TRY(open_cache(w));
  PA_TRY(pa_notifier_new(c, &w->notify));
  PA_TRY(limits_record(w));
  PA_TRY(heartbeat_start(w));
  if (w->q->ops->outbox_take && w->q->ops->clone) {
    pa_queue *cq = NULL;
    PA_TRY(w->q->ops->clone(w->q, &cq));
    PA_TRY(pa_courier_start(c, cq, &w->courier));
  }
fail:
  return rc;
}

static void teardown(worker *w) {
  heartbeat_stop(w);
  pa_courier_stop(w->courier);
  pa_notifier_free(w->notify);
  if (w->q) w->q->ops->close(w->q);
  pa_pipeline_free(w->pipe);
  pa_emb_cache_free(w->cache);
  pa_storage_free(w->store);
  pa_metrics_free(w->metrics);
  free(w->limits_record);
}

int pa_worker_run(const pa_worker_config *cfg) {
  worker w = {.cfg = cfg};
  int rc = setup(&w), max = cfg->once ? 1 : cfg->max_batch;
  job_ctx *batch = rc ? NULL : calloc((size_t)max, sizeof *batch);
  if (!rc && !batch) rc = pa_fail(PA_ERR_NOMEM, "out of memory");
  if (rc) {
    teardown(&w);
    return rc;
  }
  pa_log(PA_LOG_INFO, NULL,
         json_pack("{s:s, s:s, s:i, s:i, s:i, s:i}", "queue", cfg->queue_url, "storage", cfg->storage_url, "max_batch",
                   max, "lease_ms", cfg->lease_ms, "max_deliveries", cfg->max_deliveries, "threads", pa_threads_get()),
         "worker started");
  double backoff = 0.1;
  while (!stop_requested) {
    int n = 0;
    if (claim_batch(&w, batch, max, &n)) {
      /* the queue is down: keep trying, slower and slower, without losing the process */
      pa_log(PA_LOG_ERROR, NULL, json_pack("{s:s, s:f}", "error", pa_errmsg(), "retry_s", backoff), "claim failed");
      struct timespec ts = {(time_t)backoff, (long)((backoff - (time_t)backoff) * 1e9)};
      nanosleep(&ts, NULL);
      backoff = fmin(backoff * 2, 5);
      continue;
    }
    backoff = 0.1;
    if (!n) continue;
    process_batch(&w, batch, n);
    if (cfg->once) break;
  }
  pa_metrics_set_healthy(w.metrics, false);
  pa_emb_cache_stats cs = {0};
  if (w.cache) pa_emb_cache_get_stats(w.cache, &cs);
  pa_log(PA_LOG_INFO, NULL,
         json_pack("{s:I, s:I, s:I}", "cache_hits", (json_int_t)cs.hits, "cache_misses", (json_int_t)cs.misses,
                   "cache_local_hits", (json_int_t)cs.local_hits),
         stop_requested ? "stop requested: batch finished, exiting" : "exiting");
  free(batch);
  teardown(&w);
  return PA_OK;
}

/* Worker metrics (see metrics.h). Histograms use one fixed bucket ladder, from 5 ms (a claim,
 * an upload) to 10 minutes (a large job on a busy GPU). */
#include "worker/metrics.h"

#include <arpa/inet.h>

#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "proto/proto.h"

static const double bucket_le[] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600};
#define N_BUCKETS (int)(sizeof bucket_le / sizeof bucket_le[0])

typedef struct {
  unsigned long long count, buckets[N_BUCKETS];
  double sum;
} histogram;

enum { H_JOB, H_CLAIM, H_QUEUE_WAIT, H_OVERHEAD, H_COUNT };
static const char *const hist_names[H_COUNT][2] = {
    {"paella_worker_job_duration_seconds", "Wall time of a job from claim to acknowledgement"},
    {"paella_worker_claim_seconds", "Duration of queue claim calls that returned jobs"},
    {"paella_worker_queue_wait_seconds", "Time from enqueue (stream entry id) to claim"},
    {"paella_worker_overhead_seconds", "Per job time outside the model (decode, events, PNG, upload, record, ack)"}};
static const char *const outcome_names[PA_JOB_OUTCOMES] = {"succeeded", "failed", "canceled", "dead_lettered",
                                                           "retried", "fenced"};

struct pa_metrics {
  pthread_mutex_t mu;
  double start;
  unsigned long long jobs[PA_JOB_OUTCOMES];
  double stage_sum[PW_STAGE_COUNT];
  unsigned long long stage_count[PW_STAGE_COUNT];
  double busy;
  histogram h[H_COUNT];
  bool healthy;
  pa_emb_cache *cache;
  struct MHD_Daemon *httpd;
};

static double mono(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int pa_metrics_new(pa_metrics **out) {
  pa_metrics *m = calloc(1, sizeof *m);
  if (!m) return pa_fail(PA_ERR_NOMEM, "out of memory");
  pthread_mutex_init(&m->mu, NULL);
  m->start = mono();
  m->healthy = true;
  *out = m;
  return PA_OK;
}

void pa_metrics_free(pa_metrics *m) {
  if (!m) return;
  if (m->httpd) MHD_stop_daemon(m->httpd);
  pthread_mutex_destroy(&m->mu);
  free(m);
}

void pa_metrics_set_cache(pa_metrics *m, pa_emb_cache *c) { m->cache = c; }

static void observe(histogram *h, double v) {
  h->count++;
  h->sum += v;
  for (int i = 0; i < N_BUCKETS; i++)
    if (v <= bucket_le[i]) h->buckets[i]++;
}

static void observe_locked(pa_metrics *m, int which, double v) {
  pthread_mutex_lock(&m->mu);
  observe(&m->h[which], v);
  pthread_mutex_unlock(&m->mu);
}

void pa_metrics_job(pa_metrics *m, pa_job_outcome o, double seconds) {
  pthread_mutex_lock(&m->mu);
  m->jobs[o]++;
  if (o != PA_JOB_RETRIED && o != PA_JOB_DEAD_LETTERED && o != PA_JOB_FENCED) observe(&m->h[H_JOB], seconds);
  pthread_mutex_unlock(&m->mu);
}

void pa_metrics_stage(pa_metrics *m, int stage, double seconds) {
  if (stage < 0 || stage >= PW_STAGE_COUNT) return;
  pthread_mutex_lock(&m->mu);
  m->stage_sum[stage] += seconds;
  m->stage_count[stage]++;
  pthread_mutex_unlock(&m->mu);
}

void pa_metrics_busy(pa_metrics *m, double seconds) {
  pthread_mutex_lock(&m->mu);
  m->busy += seconds;
  pthread_mutex_unlock(&m->mu);
}

void pa_metrics_claim(pa_metrics *m, double s) { observe_locked(m, H_CLAIM, s); }
void pa_metrics_queue_wait(pa_metrics *m, double s) { observe_locked(m, H_QUEUE_WAIT, s); }
void pa_metrics_overhead(pa_metrics *m, double s) { observe_locked(m, H_OVERHEAD, s); }

/* Process-wide and lock-free: a signal handler may not take m->mu. */
static atomic_bool draining;

void pa_metrics_mark_draining(void) { atomic_store(&draining, true); }

void pa_metrics_set_healthy(pa_metrics *m, bool healthy) {
  pthread_mutex_lock(&m->mu);
  m->healthy = healthy;
  pthread_mutex_unlock(&m->mu);
}

/* ---- rendering ------------------------------------------------------------------------ */

typedef struct {
  char *buf;
  size_t len, cap;
  bool oom;
} sbuf;

static void out(sbuf *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void out(sbuf *s, const char *fmt, ...) {
  va_list ap;
  for (;;) {
    if (s->oom) return;
    va_start(ap, fmt);
    int n = vsnprintf(s->buf + s->len, s->cap - s->len, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < s->cap - s->len) {
      s->len += (size_t)n;
      return;
    }
    size_t cap = s->cap * 2 + (size_t)(n > 0 ? n : 0) + 256;
    char *b = realloc(s->buf, cap);
    if (!b) {
      s->oom = true;
      return;
    }
    s->buf = b;
    s->cap = cap;
  }
}

static void render_hist(sbuf *s, const histogram *h, const char *name, const char *help) {
  out(s, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
  for (int i = 0; i < N_BUCKETS; i++) out(s, "%s_bucket{le=\"%g\"} %llu\n", name, bucket_le[i], h->buckets[i]);
  out(s, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name, h->count, name, h->sum, name, h->count);
}

static void render_cache(sbuf *s, pa_emb_cache *c) {
  pa_emb_cache_stats st;
  pa_emb_cache_get_stats(c, &st);
  unsigned long long total = st.hits + st.misses;
  out(s, "# HELP paella_embed_cache_hits_total Text-embedding cache hits\n# TYPE paella_embed_cache_hits_total counter\n");
  out(s, "paella_embed_cache_hits_total{tier=\"local\"} %llu\n", (unsigned long long)st.local_hits);
  out(s, "paella_embed_cache_hits_total{tier=\"redis\"} %llu\n", (unsigned long long)(st.hits - st.local_hits));
  out(s, "# HELP paella_embed_cache_misses_total Text-embedding cache misses\n# TYPE paella_embed_cache_misses_total counter\n");
  out(s, "paella_embed_cache_misses_total %llu\n", (unsigned long long)st.misses);
  out(s, "# HELP paella_embed_cache_hit_ratio Hits / lookups since start\n# TYPE paella_embed_cache_hit_ratio gauge\n");
  out(s, "paella_embed_cache_hit_ratio %.6f\n", total ? (double)st.hits / (double)total : 0.0);
  out(s, "# TYPE paella_embed_cache_errors_total counter\npaella_embed_cache_errors_total %llu\n",
      (unsigned long long)st.errors);
  out(s, "# TYPE paella_embed_cache_lru_entries gauge\npaella_embed_cache_lru_entries %zu\n", st.lru_entries);
  out(s, "# TYPE paella_embed_cache_lru_bytes gauge\npaella_embed_cache_lru_bytes %zu\n", st.lru_bytes);
}

static void render_locked(pa_metrics *m, sbuf *s) {
  double up = mono() - m->start;
  out(s, "# HELP paella_worker_jobs_total Jobs finished, by outcome\n# TYPE paella_worker_jobs_total counter\n");
  for (int i = 0; i < PA_JOB_OUTCOMES; i++) out(s, "paella_worker_jobs_total{status=\"%s\"} %llu\n", outcome_names[i], m->jobs[i]);
  out(s, "# HELP paella_worker_stage_seconds Time per job stage\n# TYPE paella_worker_stage_seconds summary\n");
  for (int i = 0; i < PW_STAGE_COUNT; i++) {
    out(s, "paella_worker_stage_seconds_sum{stage=\"%s\"} %.6f\n", pw_stage_name(i), m->stage_sum[i]);
    out(s, "paella_worker_stage_seconds_count{stage=\"%s\"} %llu\n", pw_stage_name(i), m->stage_count[i]);
  }
  for (int i = 0; i < H_COUNT; i++) render_hist(s, &m->h[i], hist_names[i][0], hist_names[i][1]);
  out(s, "# HELP paella_worker_busy_seconds_total Time spent running the model\n# TYPE paella_worker_busy_seconds_total counter\n");
  out(s, "paella_worker_busy_seconds_total %.6f\n", m->busy);
  out(s, "# HELP paella_worker_gpu_busy_ratio Model time / uptime\n# TYPE paella_worker_gpu_busy_ratio gauge\n");
  out(s, "paella_worker_gpu_busy_ratio %.6f\n", up > 0 ? m->busy / up : 0.0);
  out(s, "# TYPE paella_worker_uptime_seconds gauge\npaella_worker_uptime_seconds %.3f\n", up);
}

char *pa_metrics_render(pa_metrics *m) {
  sbuf s = {0};
  pthread_mutex_lock(&m->mu);
  render_locked(m, &s);
  pthread_mutex_unlock(&m->mu);
  if (m->cache) render_cache(&s, m->cache);
  if (s.oom || !s.buf) {
    free(s.buf);
    return NULL;
  }
  return s.buf;
}

/* ---- HTTP ----------------------------------------------------------------------------- */

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, char *body, const char *type) {
  if (!body) return MHD_NO;
  struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
  if (!r) {
    free(body);
    return MHD_NO;
  }
  MHD_add_response_header(r, "Content-Type", type);
  enum MHD_Result ret = MHD_queue_response(conn, status, r);
  MHD_destroy_response(r);
  return ret;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                              const char *version, const char *upload_data, size_t *upload_size, void **con_cls) {
  pa_metrics *m = cls;
  (void)version, (void)upload_data, (void)upload_size, (void)con_cls;
  if (strcmp(method, "GET") && strcmp(method, "HEAD")) return reply(conn, 405, strdup("method not allowed\n"), "text/plain");
  if (!strcmp(url, "/metrics")) {
    char *text = pa_metrics_render(m);
    return text ? reply(conn, 200, text, "text/plain; version=0.0.4") : MHD_NO;
  }
  if (!strcmp(url, "/healthz")) {
    pthread_mutex_lock(&m->mu);
    bool ok = m->healthy && !atomic_load(&draining);
    pthread_mutex_unlock(&m->mu);
    return reply(conn, ok ? 200 : 503, strdup(ok ? "ok\n" : "draining\n"), "text/plain");
  }
  return reply(conn, 404, strdup("not found\n"), "text/plain");
}

int pa_metrics_serve(pa_metrics *m, const char *host, int port) {
  if (port < 1 || port > 65535) return pa_fail(PA_ERR_INVALID, "metrics port %d is not in 1..65535", port);
  if (!host || !*host) host = "0.0.0.0";
  struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port)};
  struct sockaddr *sa;
  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
  if (inet_pton(AF_INET, host, &a4.sin_addr) == 1) sa = (struct sockaddr *)&a4;
  else if (inet_pton(AF_INET6, host, &a6.sin6_addr) == 1) sa = (struct sockaddr *)&a6, flags |= MHD_USE_IPv6;
  else return pa_fail(PA_ERR_INVALID, "metrics address %s is not a numeric IPv4 or IPv6 address", host);
  m->httpd = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, handle, m, MHD_OPTION_SOCK_ADDR, sa,
                              MHD_OPTION_CONNECTION_TIMEOUT, 10u, MHD_OPTION_END);
  return m->httpd ? PA_OK : pa_fail(PA_ERR_IO, "cannot serve metrics on %s port %d (in use?)", host, port);
}

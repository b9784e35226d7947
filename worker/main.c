/* paella-worker: the serving process. Flags override PAELLA_* environment variables, which
 * override the defaults; docs/worker.md is the reference. Exit codes: 0 after a clean stop
 * (SIGTERM/SIGINT or --once), 1 on a setup failure, 2 on a usage error. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ops/error.h"
#include "ops/parse.h"
#include "ops/threads.h"
#include "worker/log.h"
#include "worker/worker.h"
#include "proto/proto.h"

static void usage(FILE *f) {
  fprintf(f,
      "usage: paella-worker [options]\n"
      "\n"
      "Pulls Paella jobs from a queue, generates the images, stores them and reports the result.\n"
      "Every option can also be set through the environment variable in brackets; flags win.\n"
      "\n"
      "  --queue URL           redis://[[USER]:PASS@]HOST:PORT/DB?stream=paella:jobs&group=workers,\n"
      "                        rediss://...&tls_ca=CA.pem (TLS; tls_cert, tls_key, $PAELLA_REDIS_CA) or\n"
      "                        kafka://BROKERS?topic=paella.jobs&group=workers   [PAELLA_QUEUE]\n"
      "  --storage URL         s3://BUCKET/PREFIX (endpoint, region and credentials from\n"
      "                        AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,\n"
      "                        AWS_SESSION_TOKEN) or file:///DIR                 [PAELLA_STORAGE]\n"
      "  --models DIR          published checkpoints; unset: the built-in 32 px emoji model\n"
      "                                                                          [PAELLA_MODELS]\n"
      "  --device cpu|cuda     backend (default cpu)                             [PAELLA_DEVICE]\n"
      "  --max-batch N         compatible jobs claimed and run together (1..64, default 1)\n"
      "                                                                          [PAELLA_MAX_BATCH]\n"
      "  --lease-ms MS         an entry idle this long is taken over by another worker\n"
      "                        (default 60000)                                   [PAELLA_LEASE_MS]\n"
      "  --max-deliveries N    after N deliveries a job goes to the dead letters (default 5)\n"
      "                                                                          [PAELLA_MAX_DELIVERIES]\n"
      "  --metrics-port PORT   serve /metrics and /healthz on this port (default off), on every\n"
      "                        interface unless an address is given below        [PAELLA_METRICS_PORT]\n"
      "  --metrics-listen ADDR:PORT  the same on one address only: 127.0.0.1:9090, [::1]:9090\n"
      "                        (0.0.0.0:PORT: every interface)                   [PAELLA_METRICS_LISTEN]\n"
      "  --cache-url URL       embedding cache Redis (default: the queue's Redis; 'off')\n"
      "                                                                          [PAELLA_CACHE_URL]\n"
      "  --cache-ttl S         embedding cache TTL in seconds (default 86400)    [PAELLA_CACHE_TTL]\n"
      "  --cache-entries N     in-process LRU entries (default 256)              [PAELLA_CACHE_ENTRIES]\n"
      "  --cache-mb N          in-process LRU megabytes (default 256)            [PAELLA_CACHE_MB]\n"
      "  --webhook-allow-private  allow webhooks to loopback/private addresses   [PAELLA_WEBHOOK_ALLOW_PRIVATE=1]\n"
      "  --webhook-allow-unsigned  deliver without a signature when a job's secret is missing\n"
      "                        (counted in webhook_deliveries:unsigned)          [PAELLA_WEBHOOK_ALLOW_UNSIGNED=1]\n"
      "  --webhook-secrets DIR  secret_id X is read from DIR/X; otherwise from the variable\n"
      "                        PAELLA_WEBHOOK_SECRET_<X uppercased, other chars as _>\n"
      "                                                                          [PAELLA_WEBHOOK_SECRETS]\n"
      "  --consumer NAME       name in the consumer group (default hostname-pid) [PAELLA_CONSUMER]\n"
      "  --poll-ms MS          longest blocking claim (default 1000)             [PAELLA_POLL_MS]\n"
      "  --progress-ms MS      least time between progress events (default 500)  [PAELLA_PROGRESS_MS]\n"
      "  --max-side N          largest image side accepted (default 1024)        [PAELLA_MAX_SIDE]\n"
      "  --threads N           CPU backend threads, 1..256 (default $OMP_NUM_THREADS, else one per\n"
      "                        core); speed only, the images are the same bytes  [PAELLA_THREADS]\n"
      "  --log-level L         debug|info|warn|error (default info)              [PAELLA_LOG_LEVEL]\n"
      "  --once                handle one job, then exit\n"
      "  -h, --help            this text\n"
      "\n"
      "Logs are JSON lines on stderr. SIGTERM/SIGINT finish the claimed batch, then exit 0 within\n"
      "about a second more (webhooks wait in the outbox for the next worker).\n");
}

enum {
  O_QUEUE = 256, O_STORAGE, O_MODELS, O_DEVICE, O_BATCH, O_LEASE, O_MAXDEL, O_METRICS, O_CACHE_URL, O_CACHE_TTL,
  O_CACHE_ENTRIES, O_CACHE_MB, O_ALLOW_PRIVATE, O_ALLOW_UNSIGNED, O_SECRETS, O_CONSUMER, O_POLL, O_PROGRESS, O_MAXSIDE, O_LOGLEVEL,
  O_ONCE, O_METRICS_LISTEN, O_THREADS
};

static const struct option long_opts[] = {
    {"queue", required_argument, 0, O_QUEUE}, {"storage", required_argument, 0, O_STORAGE},
    {"models", required_argument, 0, O_MODELS}, {"device", required_argument, 0, O_DEVICE},
    {"max-batch", required_argument, 0, O_BATCH}, {"lease-ms", required_argument, 0, O_LEASE},
    {"max-deliveries", required_argument, 0, O_MAXDEL}, {"metrics-port", required_argument, 0, O_METRICS},
    {"metrics-listen", required_argument, 0, O_METRICS_LISTEN},
    {"cache-url", required_argument, 0, O_CACHE_URL}, {"cache-ttl", required_argument, 0, O_CACHE_TTL},
    {"cache-entries", required_argument, 0, O_CACHE_ENTRIES}, {"cache-mb", required_argument, 0, O_CACHE_MB},
    {"webhook-allow-private", no_argument, 0, O_ALLOW_PRIVATE},
    {"webhook-allow-unsigned", no_argument, 0, O_ALLOW_UNSIGNED}, {"webhook-secrets", required_argument, 0, O_SECRETS},
    {"consumer", required_argument, 0, O_CONSUMER}, {"poll-ms", required_argument, 0, O_POLL},
    {"progress-ms", required_argument, 0, O_PROGRESS}, {"max-side", required_argument, 0, O_MAXSIDE},
    {"log-level", required_argument, 0, O_LOGLEVEL}, {"once", no_argument, 0, O_ONCE},
    {"threads", required_argument, 0, O_THREADS},
    {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};

static int threads; /* --threads; 0: OpenMP's default */

static bool truthy(const char *v) { return v && (!strcmp(v, "1") || !strcmp(v, "true") || !strcmp(v, "yes")); }

/* --metrics-listen ADDR:PORT, "[V6]:PORT" for IPv6: the address is checked when the
 * endpoint starts (pa_metrics_serve), the port here. */
static int parse_listen(const char *v, pa_worker_config *c) {
  static char host[64];
  const char *colon = strrchr(v, ':');
  if (!colon || colon == v) return -1;
  const char *h = v;
  size_t n = (size_t)(colon - v);
  if (v[0] == '[') {
    if (n < 3 || v[n - 1] != ']') return -1;
    h = v + 1, n -= 2;
  }
  if (n >= sizeof host || pa_parse_int(colon + 1, 1, 65535, &c->metrics_port)) return -1;
  memcpy(host, h, n);
  host[n] = 0;
  c->metrics_host = host;
  return 0;
}

/* The integer options' allowed ranges: checked by apply() and named in its errors. */
static const struct { int opt, lo, hi; } int_ranges[] = {
    {O_BATCH, 1, 64}, {O_LEASE, 100, 86400000}, {O_MAXDEL, 1, 1000}, {O_METRICS, 0, 65535},
    {O_CACHE_TTL, 1, 365 * 86400}, {O_CACHE_ENTRIES, 0, 1000000}, {O_CACHE_MB, 1, 1 << 20},
    {O_POLL, 10, 30000}, {O_PROGRESS, 0, 3600000}, {O_MAXSIDE, 32, 16384}, {O_THREADS, 1, PA_THREADS_MAX}};

static int int_opt(int opt, const char *v, int *out) {
  for (size_t i = 0; i < sizeof int_ranges / sizeof int_ranges[0]; i++)
    if (int_ranges[i].opt == opt) return pa_parse_int(v, int_ranges[i].lo, int_ranges[i].hi, out);
  return -1;
}

/* Prints why `v` is not a value of `opt` (named `what`: "--max-batch", or "PAELLA_MAX_BATCH
 * (--max-batch)"), with the allowed values, in the form `paella` uses. */
static void bad_value(int opt, const char *what, const char *v) {
  for (size_t i = 0; i < sizeof int_ranges / sizeof int_ranges[0]; i++) {
    if (int_ranges[i].opt != opt) continue;
    char *end;
    errno = 0;
    (void)strtoll(v, &end, 10);
    if (*v && !*end && !errno)
      fprintf(stderr, "paella-worker: %s: %s is out of range %d..%d\n", what, v, int_ranges[i].lo, int_ranges[i].hi);
    else
      fprintf(stderr, "paella-worker: %s: '%s' is not an integer (allowed %d..%d)\n", what, v, int_ranges[i].lo,
              int_ranges[i].hi);
    return;
  }
  const char *allowed = opt == O_DEVICE ? "cpu|cuda"
                        : opt == O_LOGLEVEL ? "debug|info|warn|error"
                        : opt == O_METRICS_LISTEN ? "ADDR:PORT with PORT in 1..65535, [V6]:PORT for IPv6"
                                                  : "see --help";
  fprintf(stderr, "paella-worker: %s: '%s' is not allowed (allowed %s)\n", what, v, allowed);
}

static const char *opt_name(int opt) {
  for (const struct option *o = long_opts; o->name; o++)
    if (o->val == opt) return o->name;
  return "?";
}

/* One option's value, from a flag or an environment variable: 0 ok, -1 invalid. */
static int apply(pa_worker_config *c, int opt, const char *v, int *log_level) {
  int x = 0;
  switch (opt) {
    case O_QUEUE: c->queue_url = v; return 0;
    case O_STORAGE: c->storage_url = v; return 0;
    case O_MODELS: c->models_dir = v; return 0;
    case O_DEVICE: c->device = v; return strcmp(v, "cpu") && strcmp(v, "cuda") ? -1 : 0;
    case O_BATCH: return int_opt(opt, v, &c->max_batch);
    case O_LEASE: return int_opt(opt, v, &c->lease_ms);
    case O_MAXDEL: return int_opt(opt, v, &c->max_deliveries);
    case O_METRICS: return int_opt(opt, v, &c->metrics_port);
    case O_METRICS_LISTEN: return parse_listen(v, c);
    case O_CACHE_URL: c->cache_url = v; return 0;
    case O_CACHE_TTL: return int_opt(opt, v, &c->cache_ttl_s);
    case O_CACHE_ENTRIES: if (int_opt(opt, v, &x)) return -1; c->cache_max_entries = (size_t)x; return 0;
    case O_CACHE_MB: if (int_opt(opt, v, &x)) return -1; c->cache_max_bytes = (size_t)x << 20; return 0;
    case O_ALLOW_PRIVATE: c->webhook_allow_private = v ? truthy(v) : true; return 0;
    case O_ALLOW_UNSIGNED: c->webhook_allow_unsigned = v ? truthy(v) : true; return 0;
    case O_SECRETS: c->webhook_secrets_dir = v; return 0;
    case O_CONSUMER: c->consumer = v; return 0;
    case O_POLL: return int_opt(opt, v, &c->poll_ms);
    case O_PROGRESS: return int_opt(opt, v, &c->progress_interval_ms);
    case O_MAXSIDE: return int_opt(opt, v, &c->max_side);
    case O_LOGLEVEL: return (*log_level = pa_log_level_from_name(v)) < 0 ? -1 : 0;
    case O_THREADS: return int_opt(opt, v, &threads);
    default: return -1;
  }
}

static const struct { const char *var; int opt; } env_vars[] = {
    {"PAELLA_QUEUE", O_QUEUE}, {"PAELLA_STORAGE", O_STORAGE}, {"PAELLA_MODELS", O_MODELS},
    {"PAELLA_DEVICE", O_DEVICE}, {"PAELLA_MAX_BATCH", O_BATCH}, {"PAELLA_LEASE_MS", O_LEASE},
    {"PAELLA_MAX_DELIVERIES", O_MAXDEL}, {"PAELLA_METRICS_PORT", O_METRICS},
    {"PAELLA_METRICS_LISTEN", O_METRICS_LISTEN}, {"PAELLA_CACHE_URL", O_CACHE_URL},
    {"PAELLA_CACHE_TTL", O_CACHE_TTL}, {"PAELLA_CACHE_ENTRIES", O_CACHE_ENTRIES}, {"PAELLA_CACHE_MB", O_CACHE_MB},
    {"PAELLA_WEBHOOK_ALLOW_PRIVATE", O_ALLOW_PRIVATE}, {"PAELLA_WEBHOOK_ALLOW_UNSIGNED", O_ALLOW_UNSIGNED},
    {"PAELLA_WEBHOOK_SECRETS", O_SECRETS},
    {"PAELLA_CONSUMER", O_CONSUMER}, {"PAELLA_POLL_MS", O_POLL}, {"PAELLA_PROGRESS_MS", O_PROGRESS},
    {"PAELLA_MAX_SIDE", O_MAXSIDE}, {"PAELLA_LOG_LEVEL", O_LOGLEVEL},
    {"PAELLA_THREADS", O_THREADS}};

static int parse(int argc, char **argv, pa_worker_config *c, int *log_level) {
  for (size_t i = 0; i < sizeof env_vars / sizeof env_vars[0]; i++) {
    const char *v = getenv(env_vars[i].var);
    if (v && *v && apply(c, env_vars[i].opt, v, log_level)) {
      char what[96];
      snprintf(what, sizeof what, "%s (--%s)", env_vars[i].var, opt_name(env_vars[i].opt));
      bad_value(env_vars[i].opt, what, v);
      return 2;
    }
  }
  int opt;
  opterr = 0;
  while ((opt = getopt_long(argc, argv, "h", long_opts, NULL)) != -1) {
    if (opt == 'h') return -1;
    if (opt == O_ONCE) {
      c->once = true;
      continue;
    }
    if (opt == '?') { /* optopt: a known option missing its value; 0: an unknown one */
      if (optopt > 255) fprintf(stderr, "paella-worker: --%s needs a value (see --help)\n", opt_name(optopt));
      else fprintf(stderr, "paella-worker: unknown option '%s' (see --help)\n", argv[optind - 1]);
      return 2;
    }
    if (apply(c, opt, optarg, log_level)) {
      char what[64];
      snprintf(what, sizeof what, "--%s", opt_name(opt));
      bad_value(opt, what, optarg);
      return 2;
    }
  }
  if (optind != argc) {
    fprintf(stderr, "paella-worker: unexpected argument '%s'\n", argv[optind]);
    return 2;
  }
  if (!c->queue_url || !c->storage_url) {
    fprintf(stderr, "paella-worker: --queue and --storage (or PAELLA_QUEUE, PAELLA_STORAGE) are required\n");
    return 2;
  }
  return 0;
}

static void on_signal(int sig) {
  (void)sig;
  pa_worker_request_stop();
}

int main(int argc, char **argv) {
  if (argc == 2 && !strcmp(argv[1], "--version")) { /* version, commit, build type, CUDA */
    printf("%s\n", pw_build_description());
    return 0;
  }
  pa_worker_config c;
  int log_level = PA_LOG_INFO;
  pa_worker_config_default(&c);
  int rc = parse(argc, argv, &c, &log_level);
  if (rc == -1) {
    usage(stdout);
    return 0;
  }
  if (rc) return rc;
  pa_log_set_level((pa_log_level)log_level);
  /* jobs run on this thread, so its setting is the one the backend uses */
  if (threads && pa_threads_set(threads)) {
    fprintf(stderr, "paella-worker: %s\n", pa_errmsg());
    return 2;
  }
  char consumer[300];
  if (!c.consumer) { /* named here so the logs and the consumer group agree */
    char host[256] = "worker";
    gethostname(host, sizeof host - 1);
    snprintf(consumer, sizeof consumer, "%s-%d", host, (int)getpid());
    c.consumer = consumer;
  }
  pa_log_set_worker(c.consumer);
  struct sigaction sa = {0};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  signal(SIGPIPE, SIG_IGN); /* a closed socket is an error return, not a death */
  if (pa_worker_run(&c)) {
    pa_log(PA_LOG_ERROR, NULL, json_pack("{s:s}", "error", pa_errmsg()), "worker failed to start");
    return 1;
  }
  return 0;
}

/* Scheduler configuration: defaults, then environment variables, then flags (the worker's
 * conventions: --queue redis://..., --storage s3://BUCKET/PREFIX). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "scheduler/sched.h"

void sched_config_defaults(sched_config *c) {
  memset(c, 0, sizeof *c);
  pa_redis_url_defaults(&c->redis);
  snprintf(c->listen_host, sizeof c->listen_host, "127.0.0.1");
  c->listen_port = 8080;
  c->rate = 50000;
  c->burst = 100000;
  c->max_active = 100000;
  c->max_body = 1u << 20;
  c->max_batch_body = 64u << 20;
  c->max_wait_s = 60;
  c->max_attempts = 3;
  c->backoff_ms = 1000;
  c->job_timeout_s = 600;
  c->shard_size = 100;
  c->idempotency_ttl_s = 86400;
  c->max_connections = 10000;
  c->max_per_ip = 1000;
  c->idle_timeout_s = 15;
  /* Above the tracker's 500 ms XREAD BLOCK, and short enough that /readyz and submissions
   * answer 503 within 2 s while Redis is frozen. */
  c->redis_timeout_ms = 1200;
  c->job_ttl_s = 86400;
  c->dead_letters_max = 10000;
  snprintf(c->access_log, sizeof c->access_log, "-");
  pa_job_limits_default(&c->limits);
  c->dispatch_depth = 64;
  char host[64] = "scheduler";
  gethostname(host, sizeof host - 1);
  snprintf(c->consumer, sizeof c->consumer, "%s-%d", host, (int)getpid());
}

/* The workers' parsers (worker/redis_url.c, worker/kafka_url.c): one reading of --queue for both binaries. A Kafka
 * queue keeps the registry in the Redis of --registry (kafka.c says why). */
int sched_config_set_queue(sched_config *c, const char *url) {
  if (!strncmp(url, "kafka://", 8)) {
    int rc = pa_kafka_url_parse(url, &c->kafka.url);
    c->kafka.on = rc == PA_OK;
    return rc;
  }
  c->kafka.on = false;
  return pa_redis_url_parse(url, &c->redis);
}

int sched_config_set_registry(sched_config *c, const char *url) {
  if (strncmp(url, "redis://", 8) && strncmp(url, "rediss://", 9))
    return pa_fail(PA_ERR_INVALID, "--registry: a redis:// URL (the job registry beside a Kafka queue)");
  int rc = pa_redis_url_parse(url, &c->redis);
  if (rc == PA_OK) c->registry_set = true;
  return rc;
}

/* The workers' --storage URL: opened here (the workers' parser, AWS_* variables for S3), so a
 * bad URL or missing credentials stop the scheduler at start rather than at the first batch. */
int sched_config_set_storage(sched_config *c, const char *url) {
  if (strlen(url) >= sizeof c->storage) return pa_fail(PA_ERR_INVALID, "--storage: URL too long");
  snprintf(c->storage, sizeof c->storage, "%s", url);
  pa_storage *s;
  return sched_storage(c, &s);
}

static int hex_nibble(char ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  return -1;
}

static int add_key(sched_config *c, const char *spec, size_t len) {
  char buf[256];
  if (len >= sizeof buf) return pa_fail(PA_ERR_INVALID, "api key spec too long");
  memcpy(buf, spec, len);
  buf[len] = 0;
  char *hex = strchr(buf, ':');
  if (!hex || hex == buf || hex - buf >= 64) return pa_fail(PA_ERR_INVALID, "api key '%s': want NAME:SHA256HEX[:admin]", buf);
  *hex++ = 0;
  char *role = strchr(hex, ':');
  if (role) *role++ = 0;
  if (strlen(hex) != 64) return pa_fail(PA_ERR_INVALID, "api key %s: the hash must be 64 hex digits", buf);
  if (c->n_keys == SCHED_MAX_KEYS) return pa_fail(PA_ERR_INVALID, "more than %d api keys", SCHED_MAX_KEYS);
  sched_key *k = &c->keys[c->n_keys];
  for (int i = 0; i < 32; i++) {
    int hi = hex_nibble(hex[2 * i]), lo = hex_nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return pa_fail(PA_ERR_INVALID, "api key %s: not hex", buf);
    k->hash[i] = (unsigned char)(hi << 4 | lo);
  }
  if (role && strcmp(role, "admin") != 0) return pa_fail(PA_ERR_INVALID, "api key %s: unknown role %s", buf, role);
  snprintf(k->name, sizeof k->name, "%.63s", buf);
  k->admin = role != NULL;
  c->n_keys++;
  return PA_OK;
}

int sched_config_add_keys(sched_config *c, const char *spec) {
  while (*spec) {
    size_t len = strcspn(spec, ",");
    if (len) {
      int rc = add_key(c, spec, len);
      if (rc) return rc;
    }
    spec += len + (spec[len] == ',');
  }
  return PA_OK;
}

static int set_listen(sched_config *c, const char *v) {
  const char *colon = strrchr(v, ':');
  if (!colon || colon == v || (size_t)(colon - v) >= sizeof c->listen_host)
    return pa_fail(PA_ERR_INVALID, "--listen %s: want HOST:PORT", v);
  char *end;
  long port = strtol(colon + 1, &end, 10);
  if (*end || port < 0 || port > 65535) return pa_fail(PA_ERR_INVALID, "--listen %s: bad port", v);
  snprintf(c->listen_host, sizeof c->listen_host, "%.*s", (int)(colon - v), v);
  c->listen_port = (int)port;
  return PA_OK;
}

static int parse_num(const char *flag, const char *v, double lo, double hi, double *out) {
  char *end;
  errno = 0;
  double d = strtod(v, &end);
  if (errno || end == v || *end || !(d >= lo && d <= hi))
    return pa_fail(PA_ERR_INVALID, "%s %s: want a number in %g..%g", flag, v, lo, hi);
  *out = d;
  return PA_OK;
}

/* One option: name, value -> the config. Shared by flags and environment variables. */
static int apply(sched_config *c, const char *name, const char *v) {
  double d = 0;
  int rc = PA_OK;
  /* v is NULL when the option is the last argument: a known one "needs a value", an
   * unknown one is reported as unknown (below) */
#define FLAG(flag)                                                                          \
  if (strcmp(name, flag) == 0 && !v) return pa_fail(PA_ERR_INVALID, "%s needs a value", flag); \
  if (strcmp(name, flag) == 0)
#define NUM(flag, lo, hi, dst)                                         \
  FLAG(flag) {                                                         \
    if ((rc = parse_num(flag, v, lo, hi, &d)) == PA_OK) dst = d;       \
    return rc;                                                         \
  }
  FLAG("--queue") return sched_config_set_queue(c, v);
  FLAG("--registry") return sched_config_set_registry(c, v);
  FLAG("--storage") return sched_config_set_storage(c, v);
  FLAG("--listen") return set_listen(c, v);
  FLAG("--api-key-hashes") return sched_config_add_keys(c, v);
  FLAG("--webhook-secrets") {
    if (strlen(v) >= sizeof c->webhook_secrets_dir) return pa_fail(PA_ERR_INVALID, "--webhook-secrets: path too long");
    snprintf(c->webhook_secrets_dir, sizeof c->webhook_secrets_dir, "%s", v);
    return PA_OK;
  }
  FLAG("--access-log") {
    if (!*v || strlen(v) >= sizeof c->access_log) return pa_fail(PA_ERR_INVALID, "--access-log: want -, off or a file");
    snprintf(c->access_log, sizeof c->access_log, "%s", v);
    return PA_OK;
  }
  FLAG("--webhook-allow-unsigned") {
    c->webhook_allow_unsigned = !strcmp(v, "1") || !strcmp(v, "true") || !strcmp(v, "yes");
    return PA_OK;
  }
  NUM("--rate", 0.001, 1e9, c->rate);
  NUM("--burst", 1, 1e9, c->burst);
  NUM("--max-active", 1, 1e9, c->max_active);
  NUM("--max-body", 1024, 1e9, c->max_body);
  NUM("--max-batch-body", 1024, 4e9, c->max_batch_body);
  NUM("--max-wait", 0, 3600, c->max_wait_s);
  NUM("--max-attempts", 1, PW_ATTEMPT_MAX, c->max_attempts);
  NUM("--backoff-ms", 0, 3.6e6, c->backoff_ms);
  NUM("--job-timeout", 1, 86400 * 7, c->job_timeout_s);
  NUM("--shard-size", 1, 1e6, c->shard_size);
  NUM("--max-connections", 16, 1e6, c->max_connections);
  NUM("--max-per-ip", 1, 1e6, c->max_per_ip);
  NUM("--idle-timeout", 1, 3600, c->idle_timeout_s);
  NUM("--redis-timeout-ms", 100, 60000, c->redis_timeout_ms);
  NUM("--job-ttl", 0, 86400 * 365, c->job_ttl_s);
  NUM("--dead-letters-max", 1, 1e8, c->dead_letters_max);
  NUM("--max-side", PW_SIZE_MIN, PW_SIZE_MAX, c->limits.max_side);
  NUM("--dispatch-depth", 1, 1e6, c->dispatch_depth);
#undef NUM
#undef FLAG
  return pa_fail(PA_ERR_INVALID, "unknown option %s", name);
}

static const struct { const char *env, *flag; } ENV[] = {
    {"PAELLA_QUEUE", "--queue"},       {"PAELLA_REGISTRY", "--registry"}, {"PAELLA_STORAGE", "--storage"},
    {"PAELLA_LISTEN", "--listen"},     {"PAELLA_API_KEY_HASHES", "--api-key-hashes"},
    {"PAELLA_RATE", "--rate"},         {"PAELLA_BURST", "--burst"},
    {"PAELLA_MAX_ACTIVE", "--max-active"}, {"PAELLA_MAX_ATTEMPTS", "--max-attempts"},
    {"PAELLA_JOB_TIMEOUT", "--job-timeout"}, {"PAELLA_SHARD_SIZE", "--shard-size"},
    {"PAELLA_MAX_CONNECTIONS", "--max-connections"}, {"PAELLA_MAX_PER_IP", "--max-per-ip"},
    {"PAELLA_JOB_TTL", "--job-ttl"},   {"PAELLA_DEAD_LETTERS_MAX", "--dead-letters-max"},
    {"PAELLA_DISPATCH_DEPTH", "--dispatch-depth"},
    {"PAELLA_WEBHOOK_SECRETS", "--webhook-secrets"}, {"PAELLA_WEBHOOK_ALLOW_UNSIGNED", "--webhook-allow-unsigned"},
    {"PAELLA_ACCESS_LOG", "--access-log"}, {"PAELLA_MAX_SIDE", "--max-side"},
};

void sched_config_usage(void) {
  printf("usage: paella-scheduler [options]\n"
         "  --queue redis://[[USER]:PASS@]HOST:PORT/DB?stream=paella:jobs&group=workers   ($PAELLA_QUEUE)\n"
         "        or rediss://...&tls_ca=CA.pem: TLS (tls_cert, tls_key, $PAELLA_REDIS_CA; docs/queues.md)\n"
         "        or kafka://BROKERS?topic=paella.jobs&events_group=scheduler[&PROPERTY=VALUE...]: jobs go to\n"
         "        a Kafka fleet, the registry below keeps their state (docs/queues.md)\n"
         "  --registry redis://...       the job registry beside a Kafka queue  ($PAELLA_REGISTRY)\n"
         "  --storage URL                the workers' store: s3://BUCKET/PREFIX (AWS_ENDPOINT_URL, AWS_REGION,\n"
         "                               AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) or\n"
         "                               file:///DIR; batch shards and manifests go there  ($PAELLA_STORAGE)\n"
         "  --listen HOST:PORT           [127.0.0.1:8080]                      ($PAELLA_LISTEN)\n"
         "  --api-key-hashes NAME:SHA256HEX[:admin],...  bearer keys, hashed ($PAELLA_API_KEY_HASHES)\n"
         "                               (none: no authentication, for development)\n"
         "  --rate R --burst B           per-key token bucket [50000/s, 100000]  ($PAELLA_RATE, $PAELLA_BURST)\n"
         "  --max-active N               queued+running jobs per key [100000]  ($PAELLA_MAX_ACTIVE)\n"
         "  --max-body BYTES --max-batch-body BYTES   request size limits [1 MiB, 64 MiB]\n"
         "  --max-wait S                 cap of 'Prefer: wait=N' [60]\n"
         "  --max-attempts N --backoff-ms MS   retries of failed jobs [3, 1000]\n"
         "  --job-timeout S              running jobs are stopped after [600]\n"
         "  --shard-size N               items per batch tar shard [100]\n"
         "  --max-connections N --max-per-ip N   open HTTP connections, in all and per client [10000, 1000]\n"
         "  --idle-timeout S             close connections silent this long [15]\n"
         "  --redis-timeout-ms MS        connect/reply timeout of Redis calls (then 503) [1200]\n"
         "  --job-ttl S                  a finished job's record expires S after it ends; 0: never [86400]\n"
         "                               ($PAELLA_JOB_TTL)\n"
         "  --dead-letters-max N         dead letters kept, newest first (about) [10000]  ($PAELLA_DEAD_LETTERS_MAX)\n"
         "  --dispatch-depth N           undelivered jobs kept on each lane's stream; the rest wait per API key\n"
         "                               and enter round-robin (fair share, docs/queues.md) [64]  ($PAELLA_DISPATCH_DEPTH)\n"
         "  --webhook-secrets DIR        the workers' secrets: a webhook whose secret_id is in neither DIR\n"
         "                               nor $PAELLA_WEBHOOK_SECRET_<ID> is refused (422)  ($PAELLA_WEBHOOK_SECRETS)\n"
         "  --webhook-allow-unsigned 1   accept such webhooks; workers send them unsigned ($PAELLA_WEBHOOK_ALLOW_UNSIGNED)\n"
         "  --max-side N                 largest width/height accepted: the workers' --max-side [1024]\n"
         "                               (422 above it; /readyz reports workers that differ) ($PAELLA_MAX_SIDE)\n"
         "  --access-log -|off|FILE      one JSON line per request: stderr, none, or appended to FILE [-]\n"
         "                               ($PAELLA_ACCESS_LOG)\n");
}

int sched_config_parse(sched_config *c, int argc, char **argv, bool *help) {
  *help = false;
  for (size_t i = 0; i < sizeof ENV / sizeof ENV[0]; i++) {
    const char *v = getenv(ENV[i].env);
    if (v && *v) {
      int rc = apply(c, ENV[i].flag, v);
      if (rc) return pa_fail_context(rc, "$%s: ", ENV[i].env);
    }
  }
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      *help = true;
      return PA_OK;
    }
    char name[64];
    const char *eq = strchr(argv[i], '='), *v;
    if (eq && (size_t)(eq - argv[i]) < sizeof name) {
      snprintf(name, sizeof name, "%.*s", (int)(eq - argv[i]), argv[i]);
      v = eq + 1;
    } else {
      snprintf(name, sizeof name, "%s", argv[i]);
      v = i + 1 < argc ? argv[++i] : NULL; /* NULL: apply says "needs a value" or "unknown option" */
    }
    int rc = apply(c, name, v);
    if (rc) return rc;
  }
  if (c->kafka.on && !c->registry_set)
    return pa_fail(PA_ERR_INVALID, "--queue kafka://... needs --registry redis://... (the job registry, SSE state, "
                   "batches and metrics live in Redis: docs/queues.md)");
  return PA_OK;
}

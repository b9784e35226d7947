/* One hiredis connection per thread: libmicrohttpd gives every HTTP connection its own
 * thread, so requests never share a socket or take a lock around Redis. A thread-specific
 * key frees the connection when the thread ends. Every connection has a connect and a reply
 * timeout: a frozen Redis (SIGSTOP, a stalled failover) turns into a 503, never a hung
 * request thread. */
#include <stdarg.h>
#include <string.h>

#include <openssl/sha.h>

#include "scheduler/sched.h"

static pthread_key_t conn_key;
static pthread_once_t conn_once = PTHREAD_ONCE_INIT;

static void free_conn(void *p) { pa_redis_free(p); }
static void make_key(void) { pthread_key_create(&conn_key, free_conn); }

redisContext *sched_redis_connect(const sched_config *c, int timeout_ms) {
  redisContext *ctx;
  return pa_redis_connect(&c->redis, timeout_ms, timeout_ms, &ctx) ? NULL : ctx;
}

redisContext *sched_redis(const sched_config *c) {
  pthread_once(&conn_once, make_key);
  redisContext *ctx = pthread_getspecific(conn_key);
  if (ctx) return ctx;
  ctx = sched_redis_connect(c, c->redis_timeout_ms);
  if (ctx) pthread_setspecific(conn_key, ctx);
  return ctx;
}

void sched_redis_drop(void) {
  pthread_once(&conn_once, make_key);
  redisContext *ctx = pthread_getspecific(conn_key);
  pa_redis_free(ctx);
  pthread_setspecific(conn_key, NULL);
}

/* A NULL reply means the connection is broken: drop it so the next call reconnects. */
static redisReply *checked(redisContext *ctx, void *reply) {
  if (!reply) {
    pa_fail(PA_ERR_IO, "redis: %s", ctx->errstr[0] ? ctx->errstr : "connection lost");
    sched_redis_drop();
  }
  return reply;
}

redisReply *sched_cmd(const sched_config *c, int argc, const char **argv, const size_t *lens) {
  redisContext *ctx = sched_redis(c);
  if (!ctx) return NULL;
  return checked(ctx, redisCommandArgv(ctx, argc, argv, lens));
}

redisReply *sched_cmdf(const sched_config *c, const char *fmt, ...) {
  redisContext *ctx = sched_redis(c);
  if (!ctx) return NULL;
  va_list ap;
  va_start(ap, fmt);
  void *r = redisvCommand(ctx, fmt, ap);
  va_end(ap);
  return checked(ctx, r);
}

redisReply *sched_eval(const sched_config *c, const char *script, int nkeys, int nargs,
                       const char **args, const size_t *lens) {
  enum { MAX_ARGS = 32 };
  if (nkeys + nargs + 3 > MAX_ARGS) {
    pa_fail(PA_ERR_INVALID, "sched_eval: too many arguments");
    return NULL;
  }
  unsigned char digest[20];
  SHA1((const unsigned char *)script, strlen(script), digest);
  char sha[41], numkeys[16];
  for (int i = 0; i < 20; i++) snprintf(sha + 2 * i, 3, "%02x", digest[i]);
  snprintf(numkeys, sizeof numkeys, "%d", nkeys);
  const char *argv[MAX_ARGS];
  size_t argl[MAX_ARGS];
  argv[0] = "EVALSHA";
  argv[1] = sha;
  argv[2] = numkeys;
  argl[0] = 7;
  argl[1] = 40;
  argl[2] = strlen(numkeys);
  for (int i = 0; i < nkeys + nargs; i++) {
    argv[3 + i] = args[i];
    argl[3 + i] = lens ? lens[i] : strlen(args[i]);
  }
  redisReply *r = sched_cmd(c, 3 + nkeys + nargs, argv, argl);
  if (r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0) {
    /* First use on this server (or after SCRIPT FLUSH): send the body once. */
    freeReplyObject(r);
    argv[0] = "EVAL";
    argl[0] = 4;
    argv[1] = script;
    argl[1] = strlen(script);
    r = sched_cmd(c, 3 + nkeys + nargs, argv, argl);
  }
  if (r && r->type == REDIS_REPLY_ERROR) pa_fail(PA_ERR_IO, "redis script: %s", r->str);
  return r;
}

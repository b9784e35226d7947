/* Redis queue URLs and connections (see redis_url.h). */
#include "worker/redis_url.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops/error.h"
#include "worker/redis_keys.h"
#include "worker/url.h"

void pa_redis_url_defaults(pa_redis_url *r) {
  memset(r, 0, sizeof *r);
  snprintf(r->host, sizeof r->host, "127.0.0.1");
  r->port = 6379;
  snprintf(r->stream, sizeof r->stream, PA_REDIS_DEFAULT_STREAM);
  snprintf(r->group, sizeof r->group, PA_REDIS_DEFAULT_GROUP);
  snprintf(r->events_group, sizeof r->events_group, PA_REDIS_DEFAULT_EVENTS_GROUP);
  r->events_maxlen = 100000;
}

/* Query parameter `name` into out (unchanged when absent); an empty or oversized value is an error. */
static int query_text(const pa_url *u, const char *name, char *out, size_t cap) {
  char tmp[512];
  int found = pa_url_query(u, name, tmp, sizeof tmp);
  if (found == 0) return PA_OK;
  if (found < 0 || strlen(tmp) >= cap) return pa_fail(PA_ERR_INVALID, "queue URL: %s is too long", name);
  if (!tmp[0]) return pa_fail(PA_ERR_INVALID, "queue URL: %s is empty", name);
  snprintf(out, cap, "%s", tmp);
  return PA_OK;
}

static int parse_db(const pa_url *u, pa_redis_url *r) {
  if (!u->path[0] || !strcmp(u->path, "/")) return PA_OK;
  char *end;
  long db = strtol(u->path + 1, &end, 10);
  if (end == u->path + 1 || *end || db < 0 || db > 1000000)
    return pa_fail(PA_ERR_INVALID, "queue URL: bad database '%s'", u->path + 1);
  r->db = (int)db;
  return PA_OK;
}

/* tls_* parameters: only with rediss:// (a plaintext URL with a CA is a mistake, not a request). */
static int parse_tls(const pa_url *u, pa_redis_url *r) {
  char insecure[8] = "";
  int rc;
  if ((rc = query_text(u, "tls_ca", r->tls_ca, sizeof r->tls_ca)) ||
      (rc = query_text(u, "tls_cert", r->tls_cert, sizeof r->tls_cert)) ||
      (rc = query_text(u, "tls_key", r->tls_key, sizeof r->tls_key)) ||
      (rc = query_text(u, "tls_insecure", insecure, sizeof insecure)))
    return rc;
  if (insecure[0] && strcmp(insecure, "0") && strcmp(insecure, "1"))
    return pa_fail(PA_ERR_INVALID, "queue URL: tls_insecure must be 0 or 1");
  r->tls_insecure = !strcmp(insecure, "1");
  if (!r->tls && (r->tls_ca[0] || r->tls_cert[0] || r->tls_key[0] || insecure[0]))
    return pa_fail(PA_ERR_INVALID, "queue URL: tls_* parameters need rediss://");
  if (!r->tls_cert[0] != !r->tls_key[0]) return pa_fail(PA_ERR_INVALID, "queue URL: tls_cert and tls_key go together");
  const char *env = getenv("PAELLA_REDIS_CA");
  if (r->tls && !r->tls_ca[0] && env && env[0]) {
    if (strlen(env) >= sizeof r->tls_ca) return pa_fail(PA_ERR_INVALID, "PAELLA_REDIS_CA is too long");
    snprintf(r->tls_ca, sizeof r->tls_ca, "%s", env);
  }
  return PA_OK;
}

static int parse_query(const pa_url *u, pa_redis_url *r) {
  char num[32] = "";
  int rc;
  if ((rc = query_text(u, "stream", r->stream, sizeof r->stream)) ||
      (rc = query_text(u, "group", r->group, sizeof r->group)) ||
      (rc = query_text(u, "events_group", r->events_group, sizeof r->events_group)) ||
      (rc = query_text(u, "events_maxlen", num, sizeof num)) || (rc = parse_tls(u, r)))
    return rc;
  if (num[0]) {
    char *end;
    r->events_maxlen = strtol(num, &end, 10);
    if (*end || r->events_maxlen < 1) return pa_fail(PA_ERR_INVALID, "queue URL: events_maxlen must be >= 1");
  }
  return PA_OK;
}

int pa_redis_url_parse(const char *url, pa_redis_url *r) {
  pa_redis_url_defaults(r);
  pa_url u;
  int rc = pa_url_parse(url, &u);
  if (rc) return rc;
  r->tls = !strcmp(u.scheme, "rediss");
  if (!r->tls && strcmp(u.scheme, "redis"))
    return pa_fail(PA_ERR_INVALID, "queue URL: scheme '%s' is not redis:// or rediss://", u.scheme);
  if (u.host[0]) snprintf(r->host, sizeof r->host, "%s", u.host);
  if (u.port) r->port = u.port;
  if (pa_url_decode(u.user, r->user, sizeof r->user) || pa_url_decode(u.password, r->password, sizeof r->password))
    return pa_fail(PA_ERR_INVALID, "queue URL: credentials too long");
  if ((rc = parse_db(&u, r))) return rc;
  return parse_query(&u, r);
}

/* Runs one login command; its error reply becomes the failure's message. */
static int login_cmd(redisContext *c, const pa_redis_url *r, const char *what, int argc, const char **argv) {
  redisReply *rep = redisCommandArgv(c, argc, argv, NULL);
  int rc = PA_OK;
  char tls[192] = "";
  if (!rep && r->tls) pa_redis_tls_why(c, tls, sizeof tls);
  if (!rep || rep->type == REDIS_REPLY_ERROR)
    rc = pa_fail(PA_ERR_IO, "redis %s:%d: %s failed: %s%s%s%s", r->host, r->port, what, rep ? rep->str : c->errstr,
                 tls[0] ? " (TLS: " : "", tls, tls[0] ? ")" : "");
  if (rep) freeReplyObject(rep);
  return rc;
}

static int login(redisContext *c, const pa_redis_url *r) {
  int rc = PA_OK;
  if (r->password[0]) {
    const char *argv[] = {"AUTH", r->user, r->password};
    if (r->user[0]) rc = login_cmd(c, r, "AUTH", 3, argv);
    else rc = login_cmd(c, r, "AUTH", 2, (const char *[]){"AUTH", r->password});
  } else if (r->user[0]) {
    rc = pa_fail(PA_ERR_INVALID, "queue URL: user '%s' without a password", r->user);
  }
  if (rc || !r->db) return rc;
  char db[16];
  snprintf(db, sizeof db, "%d", r->db);
  return login_cmd(c, r, "SELECT", 2, (const char *[]){"SELECT", db});
}

int pa_redis_connect(const pa_redis_url *r, int connect_ms, int io_ms, redisContext **out) {
  *out = NULL;
  struct timeval ct = {connect_ms / 1000, (connect_ms % 1000) * 1000}, io = {io_ms / 1000, (io_ms % 1000) * 1000};
  redisContext *c = NULL;
  int rc = PA_OK;
  if (r->tls) {
    if ((rc = pa_redis_tls_connect(r, connect_ms, &c))) return rc;
  } else if (!(c = redisConnectWithTimeout(r->host, r->port, ct))) {
    return pa_fail(PA_ERR_NOMEM, "redis: out of memory");
  }
  if (c->err) rc = pa_fail(PA_ERR_IO, "redis %s:%d: %s", r->host, r->port, c->errstr);
  else if (redisSetTimeout(c, io) != REDIS_OK) rc = pa_fail(PA_ERR_IO, "redis %s:%d: cannot set a timeout", r->host, r->port);
  else rc = login(c, r);
  if (rc) {
    pa_redis_free(c);
    return rc;
  }
  *out = c;
  return PA_OK;
}

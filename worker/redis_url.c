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

static int parse_query(const pa_url *u, pa_redis_url *r) {
  char num[32] = "";
  int rc;
  if ((rc = query_text(u, "stream", r->stream, sizeof r->stream)) ||
      (rc = query_text(u, "group", r->group, sizeof r->group)) ||
      (rc = query_text(u, "events_group", r->events_group, sizeof r->events_group)) ||
      (rc = query_text(u, "events_maxlen", num, sizeof num)))
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
  if (!strcmp(u.scheme, "rediss"))
    return pa_fail(PA_ERR_UNSUPPORTED, "queue URL: rediss:// (TLS) is not supported: Debian's hiredis 0.14 has no "
                   "TLS; reach Redis through a TLS proxy (stunnel, a service mesh) with redis://");
  if (strcmp(u.scheme, "redis"))
    return pa_fail(PA_ERR_INVALID, "queue URL: scheme '%s' is not redis://", u.scheme);
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
  if (!rep || rep->type == REDIS_REPLY_ERROR)
    rc = pa_fail(PA_ERR_IO, "redis %s:%d: %s failed: %s", r->host, r->port, what, rep ? rep->str : c->errstr);
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
  redisContext *c = redisConnectWithTimeout(r->host, r->port, ct);
  if (!c) return pa_fail(PA_ERR_NOMEM, "redis: out of memory");
  int rc = PA_OK;
  if (c->err) rc = pa_fail(PA_ERR_IO, "redis %s:%d: %s", r->host, r->port, c->errstr);
  else if (redisSetTimeout(c, io) != REDIS_OK) rc = pa_fail(PA_ERR_IO, "redis %s:%d: cannot set a timeout", r->host, r->port);
  else rc = login(c, r);
  if (rc) {
    redisFree(c);
    return rc;
  }
  *out = c;
  return PA_OK;
}

/* Kafka queue URLs (worker/kafka_url.h): the one reading of kafka://... */
#include "worker/kafka_url.h"

#include <stdio.h>
#include <string.h>

#include "ops/error.h"
#include "worker/redis_keys.h"

static int hexval(char ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  return -1;
}

/* Percent-decodes s[0..n) into out (cap bytes); a malformed escape is refused, not copied. */
static int decode(const char *s, size_t n, char *out, size_t cap, const char *what) {
  size_t j = 0;
  for (size_t i = 0; i < n; i++) {
    char ch = s[i];
    if (ch == '%') {
      if (i + 2 >= n || hexval(s[i + 1]) < 0 || hexval(s[i + 2]) < 0)
        return pa_fail(PA_ERR_INVALID, "kafka URL: bad percent escape in %s", what);
      ch = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
      i += 2;
    }
    if (j + 1 >= cap) return pa_fail(PA_ERR_INVALID, "kafka URL: %s is too long", what);
    out[j++] = ch;
  }
  out[j] = 0;
  return PA_OK;
}

/* These carry the delivery guarantees (stored offsets only after a durable result, the
 * idempotent producer, acks=all): a URL must not turn them off. */
bool pa_kafka_url_reserved(const char *key) {
  static const char *const names[] = {"enable.auto.commit", "enable.auto.offset.store", "enable.idempotence",
                                      "group.id", "bootstrap.servers", "acks", "request.required.acks"};
  for (size_t i = 0; i < sizeof names / sizeof *names; i++)
    if (!strcmp(key, names[i])) return true;
  return false;
}

static int param(pa_kafka_url *u, const char *s, size_t n) {
  const char *eq = memchr(s, '=', n);
  char key[128], value[512];
  int rc;
  if (!eq || eq == s) return pa_fail(PA_ERR_INVALID, "kafka URL: parameter \"%.*s\" is not key=value", (int)n, s);
  if ((rc = decode(s, (size_t)(eq - s), key, sizeof key, "a parameter name")) ||
      (rc = decode(eq + 1, n - (size_t)(eq - s) - 1, value, sizeof value, key)))
    return rc;
  char *slot = !strcmp(key, "topic") ? u->topic : !strcmp(key, "group") ? u->group
             : !strcmp(key, "events_group") ? u->events_group : NULL;
  if (slot) {
    size_t cap = slot == u->topic ? sizeof u->topic : slot == u->group ? sizeof u->group : sizeof u->events_group;
    if (!*value) return pa_fail(PA_ERR_INVALID, "kafka URL: empty %s", key);
    if (strlen(value) >= cap) return pa_fail(PA_ERR_INVALID, "kafka URL: %s is too long", key);
    memcpy(slot, value, strlen(value) + 1); /* fits: checked above */
    return PA_OK;
  }
  if (pa_kafka_url_reserved(key))
    return pa_fail(PA_ERR_INVALID, "kafka URL: %s is set by paella and cannot be overridden", key);
  if (u->n_props == PA_KAFKA_MAX_PROPS)
    return pa_fail(PA_ERR_INVALID, "kafka URL: more than %d properties", PA_KAFKA_MAX_PROPS);
  snprintf(u->prop_key[u->n_props], sizeof u->prop_key[0], "%s", key);
  snprintf(u->prop_value[u->n_props++], sizeof u->prop_value[0], "%s", value);
  return PA_OK;
}

int pa_kafka_url_parse(const char *url, pa_kafka_url *u) {
  memset(u, 0, sizeof *u);
  if (!url || strncmp(url, "kafka://", 8)) return pa_fail(PA_ERR_INVALID, "kafka URL must start with kafka://");
  const char *b = url + 8, *q = strchr(b, '?');
  size_t blen = q ? (size_t)(q - b) : strlen(b);
  if (blen == 0) return pa_fail(PA_ERR_INVALID, "kafka URL: no brokers");
  if (blen >= sizeof u->brokers) return pa_fail(PA_ERR_INVALID, "kafka URL: broker list too long");
  memcpy(u->brokers, b, blen);
  snprintf(u->topic, sizeof u->topic, "paella.jobs");
  snprintf(u->group, sizeof u->group, "%s", PA_REDIS_DEFAULT_GROUP);
  snprintf(u->events_group, sizeof u->events_group, "%s", PA_REDIS_DEFAULT_EVENTS_GROUP);
  for (const char *s = q ? q + 1 : NULL; s && *s;) {
    const char *amp = strchr(s, '&');
    size_t n = amp ? (size_t)(amp - s) : strlen(s);
    int rc = n ? param(u, s, n) : PA_OK;
    if (rc) return rc;
    s = amp ? amp + 1 : NULL;
  }
  return PA_OK;
}

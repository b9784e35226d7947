/* Webhook delivery (Standard Webhooks, https://www.standardwebhooks.com/): signed POSTs with
 * retries, and an SSRF guard: the target host is resolved once, every address is classified,
 * the connection is pinned to a checked address (CURLOPT_RESOLVE) and the socket callback
 * re-checks the address curl actually connects to, so a second DNS answer cannot redirect us
 * to an internal service (DNS rebinding). Proxies and redirects are disabled for the same
 * reason: either would connect somewhere other than the checked address. */
#include "worker/webhook.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include <curl/curl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#define KEY_CAP 256

/* ---- signing --------------------------------------------------------------------------- */

/* The key bytes of "whsec_<base64>" (the prefix is optional, as in the reference libraries). */
static int decode_secret(const char *secret, unsigned char *key, int *klen) {
  if (!secret) return pa_fail(PA_ERR_INVALID, "webhook: no secret");
  if (strncmp(secret, "whsec_", 6) == 0) secret += 6;
  size_t n = strlen(secret);
  if (n == 0 || n % 4 != 0 || n / 4 * 3 > KEY_CAP)
    return pa_fail(PA_ERR_INVALID, "webhook: secret is not whsec_ + base64 (length %zu)", n);
  int m = EVP_DecodeBlock(key, (const unsigned char *)secret, (int)n);
  if (m < 0) return pa_fail(PA_ERR_INVALID, "webhook: secret is not whsec_ + base64");
  /* EVP_DecodeBlock counts padding as zero bytes. */
  for (size_t i = n; i > 0 && secret[i - 1] == '='; i--) m--;
  if (m <= 0) return pa_fail(PA_ERR_INVALID, "webhook: empty secret");
  *klen = m;
  return PA_OK;
}

int pa_webhook_sign(const char *secret, const char *msg_id, int64_t timestamp, const void *body,
                    size_t len, char *out, size_t cap) {
  unsigned char key[KEY_CAP], mac[32];
  unsigned int maclen = 0;
  char head[512];
  int klen = 0, rc;
  unsigned char *msg = NULL;
  PA_TRY(decode_secret(secret, key, &klen));
  if (!msg_id || (!body && len)) {
    rc = pa_fail(PA_ERR_INVALID, "webhook: no message id or body");
    goto fail;
  }
  if (cap < 3 + 44 + 1) {
    rc = pa_fail(PA_ERR_INVALID, "webhook: signature buffer too small");
    goto fail;
  }
  /* The signed content is "<id>.<timestamp>.<body>". */
  int hn = snprintf(head, sizeof head, "%s.%" PRId64 ".", msg_id, timestamp);
  if (hn < 0 || (size_t)hn >= sizeof head) {
    rc = pa_fail(PA_ERR_INVALID, "webhook: message id too long");
    goto fail;
  }
  msg = malloc((size_t)hn + len + 1);
  if (!msg) {
    rc = pa_fail(PA_ERR_NOMEM, "webhook: out of memory");
    goto fail;
  }
  memcpy(msg, head, (size_t)hn);
  if (len) memcpy(msg + hn, body, len);
  if (!HMAC(EVP_sha256(), key, klen, msg, (size_t)hn + len, mac, &maclen) || maclen != 32) {
    rc = pa_fail(PA_ERR_IO, "webhook: HMAC-SHA256 failed");
    goto fail;
  }
  memcpy(out, "v1,", 3);
  EVP_EncodeBlock((unsigned char *)out + 3, mac, 32);
fail:
  free(msg);
  OPENSSL_cleanse(key, sizeof key);
  return rc;
}

/* ---- SSRF guard ------------------------------------------------------------------------ */

/* Why an IPv4 address (host byte order) is not a public destination, or NULL when it is. */
static const char *ipv4_private(uint32_t a) {
  static const struct {
    uint32_t net, mask;
    const char *why;
  } nets[] = {
      {0x00000000, 0xff000000, "\"this network\" (0/8)"},
      {0x0a000000, 0xff000000, "private (10/8)"},
      {0x64400000, 0xffc00000, "shared CGNAT (100.64/10)"},
      {0x7f000000, 0xff000000, "loopback"},
      {0xa9fe0000, 0xffff0000, "link-local (169.254/16, cloud metadata)"},
      {0xac100000, 0xfff00000, "private (172.16/12)"},
      {0xc0000000, 0xffffff00, "IETF protocol assignments (192.0.0/24)"},
      {0xc0a80000, 0xffff0000, "private (192.168/16)"},
      {0xc6120000, 0xfffe0000, "benchmarking (198.18/15)"},
      {0xe0000000, 0xf0000000, "multicast"},
      {0xf0000000, 0xf0000000, "reserved or broadcast (240/4)"},
  };
  for (size_t i = 0; i < sizeof nets / sizeof nets[0]; i++)
    if ((a & nets[i].mask) == nets[i].net) return nets[i].why;
  return NULL;
}

static uint32_t v4_at(const unsigned char *b) {
  return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

/* IPv6, including the forms that embed an IPv4 address (mapped, NAT64, 6to4), which reach
 * that IPv4 address and are judged by it. */
static const char *ipv6_private(const struct in6_addr *in) {
  const unsigned char *b = in->s6_addr;
  static const unsigned char zero[16];
  static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  static const unsigned char nat64[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
  if (memcmp(b, zero, 15) == 0) return b[15] == 1 ? "loopback" : "unspecified";
  if (memcmp(b, mapped, 12) == 0 || memcmp(b, nat64, 12) == 0 || memcmp(b, zero, 12) == 0)
    return ipv4_private(v4_at(b + 12));
  if (b[0] == 0x20 && b[1] == 0x02) return ipv4_private(v4_at(b + 2)); /* 6to4 */
  if (b[0] == 0xff) return "multicast";
  if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80) return "link-local";
  if (b[0] == 0xfe && (b[1] & 0xc0) == 0xc0) return "site-local";
  if ((b[0] & 0xfe) == 0xfc) return "unique-local";
  return NULL;
}

static const char *addr_private(const struct sockaddr *sa) {
  if (sa->sa_family == AF_INET)
    return ipv4_private(ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr));
  if (sa->sa_family == AF_INET6) return ipv6_private(&((const struct sockaddr_in6 *)sa)->sin6_addr);
  return "not an IP address";
}

static void addr_text(const struct sockaddr *sa, char *out, size_t cap) {
  const void *a = sa->sa_family == AF_INET ? (const void *)&((const struct sockaddr_in *)sa)->sin_addr
                                           : (const void *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
  if (!inet_ntop(sa->sa_family, a, out, (socklen_t)cap)) snprintf(out, cap, "?");
}

typedef struct {
  bool allow_private;
  bool blocked;        /* the socket callback refused an address */
  char blocked_addr[INET6_ADDRSTRLEN];
} guard;

/* Runs for every socket curl opens, with the address it is about to connect to: the last word
 * on where the request goes, whatever DNS said earlier. */
static curl_socket_t open_socket(void *user, curlsocktype purpose, struct curl_sockaddr *a) {
  guard *g = user;
  if (purpose != CURLSOCKTYPE_IPCXN) return CURL_SOCKET_BAD;
  if (!g->allow_private && addr_private(&a->addr)) {
    g->blocked = true;
    addr_text(&a->addr, g->blocked_addr, sizeof g->blocked_addr);
    return CURL_SOCKET_BAD;
  }
  return socket(a->family, a->socktype, a->protocol);
}

/* Resolves host and lists every acceptable address as CURLOPT_RESOLVE wants them
 * ("1.2.3.4,[2001:db8::1]"), so curl connects only to addresses checked here. */
static int resolve_checked(const char *host, bool allow_private, char *out, size_t cap) {
  struct addrinfo hints = {0}, *res = NULL;
  hints.ai_socktype = SOCK_STREAM;
  int e = getaddrinfo(host, NULL, &hints, &res);
  if (e != 0) return pa_fail(PA_ERR_IO, "webhook: resolve %s: %s", host, gai_strerror(e));
  const char *why = NULL;
  char first[INET6_ADDRSTRLEN] = "", a[INET6_ADDRSTRLEN];
  size_t len = 0;
  out[0] = '\0';
  for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
    if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6) continue;
    const char *w = addr_private(ai->ai_addr);
    if (w && !allow_private) {
      if (!why) addr_text(ai->ai_addr, first, sizeof first);
      if (!why) why = w;
      continue;
    }
    addr_text(ai->ai_addr, a, sizeof a);
    const char *fmt = ai->ai_family == AF_INET6 ? "%s[%s]" : "%s%s";
    int n = snprintf(out + len, cap - len, fmt, len ? "," : "", a);
    if (n < 0 || (size_t)n >= cap - len) break; /* enough addresses */
    len += (size_t)n;
  }
  freeaddrinfo(res);
  if (len == 0)
    return pa_fail(PA_ERR_INVALID, "webhook: refusing %s: it resolves to %s (%s); set "
                   "allow_private to permit internal targets", host, first[0] ? first : "nothing",
                   why ? why : "no IP address");
  return PA_OK;
}

/* ---- delivery -------------------------------------------------------------------------- */

typedef struct {
  char *url;
  char host[256];             /* without IPv6 brackets */
  long port;
  char resolve_line[700];     /* CURLOPT_RESOLVE pin, "" for IP literals */
} target;

static int parse_target(const char *url, bool allow_private, target *t) {
  CURLU *u = curl_url();
  char *scheme = NULL, *host = NULL, *port = NULL;
  int rc = PA_OK;
  char addrs[400];
  if (!u) return pa_fail(PA_ERR_NOMEM, "webhook: out of memory");
  if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK) {
    rc = pa_fail(PA_ERR_INVALID, "webhook: cannot parse URL %s", url);
    goto fail;
  }
  if (strcasecmp(scheme, "http") != 0 && strcasecmp(scheme, "https") != 0) {
    rc = pa_fail(PA_ERR_INVALID, "webhook: URL %s: only http and https", url);
    goto fail;
  }
  size_t hl = strlen(host);
  bool bracketed = hl >= 2 && host[0] == '[' && host[hl - 1] == ']';
  if (hl - (bracketed ? 2 : 0) >= sizeof t->host) {
    rc = pa_fail(PA_ERR_INVALID, "webhook: host name too long");
    goto fail;
  }
  snprintf(t->host, sizeof t->host, "%.*s", (int)(hl - (bracketed ? 2 : 0)), host + bracketed);
  t->port = strtol(port, NULL, 10);
  PA_TRY(resolve_checked(t->host, allow_private, addrs, sizeof addrs));
  unsigned char tmp[16];
  bool literal = inet_pton(AF_INET, t->host, tmp) == 1 || inet_pton(AF_INET6, t->host, tmp) == 1;
  t->resolve_line[0] = '\0';
  if (!literal)
    snprintf(t->resolve_line, sizeof t->resolve_line, "%s:%ld:%s", t->host, t->port, addrs);
  t->url = strdup(url);
  if (!t->url) rc = pa_fail(PA_ERR_NOMEM, "webhook: out of memory");
fail:
  curl_free(scheme);
  curl_free(host);
  curl_free(port);
  curl_url_cleanup(u);
  return rc;
}

typedef struct {
  long retry_after_ms; /* -1: none */
} response;

/* Picks Retry-After (delta seconds or an HTTP date) out of the response headers. */
static size_t on_header(char *line, size_t size, size_t n, void *user) {
  response *r = user;
  size_t len = size * n;
  if (len > 12 && strncasecmp(line, "retry-after:", 12) == 0) {
    char v[128];
    size_t vl = len - 12 < sizeof v - 1 ? len - 12 : sizeof v - 1;
    memcpy(v, line + 12, vl);
    v[vl] = '\0';
    char *p = v;
    while (*p == ' ' || *p == '\t') p++;
    p[strcspn(p, "\r\n")] = '\0';
    char *end = NULL;
    long secs = strtol(p, &end, 10);
    if (end != p && *end == '\0' && secs >= 0) {
      r->retry_after_ms = secs > 86400 ? 86400000L : secs * 1000;
    } else {
      time_t at = curl_getdate(p, NULL);
      if (at != -1) r->retry_after_ms = at > time(NULL) ? (long)(at - time(NULL)) * 1000 : 0;
    }
  }
  return len;
}

static size_t discard(char *data, size_t size, size_t n, void *user) {
  (void)data;
  (void)user;
  return size * n;
}

static int add_header(struct curl_slist **list, const char *fmt, const char *value) {
  char line[600];
  int n = snprintf(line, sizeof line, fmt, value);
  if (n < 0 || (size_t)n >= sizeof line) return pa_fail(PA_ERR_INVALID, "webhook: header too long");
  struct curl_slist *next = curl_slist_append(*list, line);
  if (!next) return pa_fail(PA_ERR_NOMEM, "webhook: out of memory");
  *list = next;
  return PA_OK;
}

/* The headers of one attempt: a fresh timestamp (receivers reject stale ones) and signature,
 * the same id. */
static int attempt_headers(const char *secret, const char *msg_id, const char *body,
                           struct curl_slist **list) {
  char ts[24], sig[64];
  int64_t now = (int64_t)time(NULL);
  int rc;
  snprintf(ts, sizeof ts, "%" PRId64, now);
  if (secret) PA_TRY(pa_webhook_sign(secret, msg_id, now, body, strlen(body), sig, sizeof sig));
  PA_TRY(add_header(list, "Content-Type: %s", "application/json"));
  PA_TRY(add_header(list, "User-Agent: %s", "paella-worker"));
  PA_TRY(add_header(list, "Expect:%s", "")); /* no 100-continue round trip */
  PA_TRY(add_header(list, "webhook-id: %s", msg_id));
  PA_TRY(add_header(list, "webhook-timestamp: %s", ts));
  if (secret) PA_TRY(add_header(list, "webhook-signature: %s", sig));
fail:
  return rc;
}

#define SETOPT(h, opt, val)                                                  \
  do {                                                                       \
    if (curl_easy_setopt(h, opt, val) != CURLE_OK) {                         \
      rc = pa_fail(PA_ERR_IO, "webhook: curl_easy_setopt(%s) failed", #opt); \
      goto fail;                                                             \
    }                                                                        \
  } while (0)

/* curl's progress callback (at least once a second): a nonzero return aborts the transfer. */
static int check_abort(void *user, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow) {
  (void)dltotal, (void)dlnow, (void)ultotal, (void)ulnow;
  const atomic_bool *abort = user;
  return abort && atomic_load(abort);
}

/* One POST. *status is the HTTP status, 0 when no response arrived. */
static int post_once(CURL *h, const target *t, struct curl_slist *pin, guard *g, const char *secret,
                     const char *msg_id, const char *body, const pa_webhook_options *o, long *status,
                     response *resp, CURLcode *cc) {
  int timeout_ms = o->timeout_ms;
  struct curl_slist *headers = NULL;
  int rc;
  curl_easy_reset(h);
  *status = 0;
  resp->retry_after_ms = -1;
  PA_TRY(attempt_headers(secret, msg_id, body, &headers));
  SETOPT(h, CURLOPT_URL, t->url);
  SETOPT(h, CURLOPT_POSTFIELDS, body);
  SETOPT(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
  SETOPT(h, CURLOPT_HTTPHEADER, headers);
  SETOPT(h, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
  SETOPT(h, CURLOPT_NOSIGNAL, 1L);
  SETOPT(h, CURLOPT_PROTOCOLS_STR, "http,https");
  SETOPT(h, CURLOPT_FOLLOWLOCATION, 0L);
  SETOPT(h, CURLOPT_PROXY, ""); /* an environment proxy would connect elsewhere */
  SETOPT(h, CURLOPT_RESOLVE, pin);
  SETOPT(h, CURLOPT_OPENSOCKETFUNCTION, open_socket);
  SETOPT(h, CURLOPT_OPENSOCKETDATA, g);
  SETOPT(h, CURLOPT_HEADERFUNCTION, on_header);
  SETOPT(h, CURLOPT_HEADERDATA, resp);
  SETOPT(h, CURLOPT_WRITEFUNCTION, discard);
  if (o->abort) {
    SETOPT(h, CURLOPT_XFERINFOFUNCTION, check_abort);
    SETOPT(h, CURLOPT_XFERINFODATA, (void *)o->abort);
    SETOPT(h, CURLOPT_NOPROGRESS, 0L);
  }
  *cc = curl_easy_perform(h);
  if (*cc == CURLE_OK && curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status) != CURLE_OK) *status = 0;
fail:
  curl_slist_free_all(headers);
  return rc;
}

/* base * 2^retry, capped, then +-20% jitter. */
static long backoff_ms(const pa_webhook_options *o, int retry) {
  long d = o->base_delay_ms;
  for (int i = 0; i < retry && d < o->max_delay_ms; i++) d *= 2;
  if (d > o->max_delay_ms) d = o->max_delay_ms;
  unsigned short r = 0;
  if (RAND_bytes((unsigned char *)&r, sizeof r) == 1) d = d * 8 / 10 + (long)(d * 4 / 10 * r / 65535);
  return d;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

static pa_webhook_options with_defaults(const pa_webhook_options *in);

long pa_webhook_backoff_ms(const pa_webhook_options *o, int retry) {
  pa_webhook_options d = with_defaults(o);
  return backoff_ms(&d, retry);
}

static pa_webhook_options with_defaults(const pa_webhook_options *in) {
  pa_webhook_options o = in ? *in : (pa_webhook_options){0};
  if (o.max_attempts <= 0) o.max_attempts = 6;
  if (o.base_delay_ms <= 0) o.base_delay_ms = 500;
  if (o.max_delay_ms <= 0) o.max_delay_ms = 60000;
  if (o.timeout_ms <= 0) o.timeout_ms = 10000;
  return o;
}

/* The attempt loop; stops on 2xx, 410, a refused address or the last attempt. */
static int deliver_loop(CURL *h, const target *t, struct curl_slist *pin, const char *secret,
                        const char *msg_id, const char *body, const pa_webhook_options *o,
                        pa_webhook_report *rep) {
  guard g = {o->allow_private, false, ""};
  response resp;
  CURLcode cc = CURLE_OK;
  int rc;
  for (;;) {
    long status = 0;
    PA_TRY(post_once(h, t, pin, &g, secret, msg_id, body, o, &status, &resp, &cc));
    if (cc == CURLE_ABORTED_BY_CALLBACK) {
      rep->aborted = true;
      return pa_fail(PA_ERR_CANCELED, "webhook: %s: cut short (the worker is stopping)", t->url);
    }
    rep->attempts++;
    rep->last_status = (int)status;
    rep->retry_after_ms = (status == 429 || status == 503) ? resp.retry_after_ms : -1;
    if (status >= 200 && status < 300) {
      rep->delivered = true;
      return PA_OK;
    }
    if (g.blocked)
      return pa_fail(PA_ERR_INVALID, "webhook: refusing to connect to %s (internal address)",
                     g.blocked_addr);
    if (status == 410) return pa_fail(PA_ERR_NOTFOUND, "webhook: %s answered 410 Gone", t->url);
    if (rep->attempts >= o->max_attempts) break;
    long d = backoff_ms(o, rep->attempts - 1);
    if ((status == 429 || status == 503) && resp.retry_after_ms >= 0)
      d = resp.retry_after_ms < o->max_delay_ms ? resp.retry_after_ms : o->max_delay_ms;
    sleep_ms(d);
  }
  if (rep->last_status)
    return pa_fail(PA_ERR_IO, "webhook: %s: HTTP %d after %d attempts", t->url, rep->last_status,
                   rep->attempts);
  return pa_fail(PA_ERR_IO, "webhook: %s: %s after %d attempts", t->url, curl_easy_strerror(cc),
                 rep->attempts);
fail:
  return rc;
}

int pa_webhook_deliver(const char *url, const char *secret, const char *msg_id, const char *body,
                       const pa_webhook_options *opts, pa_webhook_report *report) {
  pa_webhook_options o = with_defaults(opts);
  pa_webhook_report rep = {.retry_after_ms = -1};
  target t = {0};
  struct curl_slist *pin = NULL;
  CURL *h = NULL;
  char sig[64];
  int rc;
  if (!url || !body) {
    rc = pa_fail(PA_ERR_INVALID, "webhook: no URL or body");
    goto fail;
  }
  if (secret) PA_TRY(pa_webhook_sign(secret, msg_id, 0, "", 0, sig, sizeof sig)); /* bad secret: no attempts */
  for (const char *p = msg_id; *p; p++) {
    if ((unsigned char)*p < 0x21 || *p == 0x7f) { /* it goes into a header line verbatim */
      rc = pa_fail(PA_ERR_INVALID, "webhook: message id has a space or control byte");
      goto fail;
    }
  }
  PA_TRY(parse_target(url, o.allow_private, &t));
  if (t.resolve_line[0] && !(pin = curl_slist_append(NULL, t.resolve_line))) {
    rc = pa_fail(PA_ERR_NOMEM, "webhook: out of memory");
    goto fail;
  }
  if (!(h = curl_easy_init())) {
    rc = pa_fail(PA_ERR_IO, "webhook: curl_easy_init failed");
    goto fail;
  }
  rc = deliver_loop(h, &t, pin, secret, msg_id, body, &o, &rep);
fail:
  curl_easy_cleanup(h);
  curl_slist_free_all(pin);
  free(t.url);
  if (report) *report = rep;
  return rc;
}

/* rediss:// on hiredis 0.14, which has no TLS of its own (see redis_url.h).
 *
 * A TCP socket is connected and the TLS handshake done here with OpenSSL (both within the
 * connect timeout); hiredis then gets one end of a socketpair (redisConnectFd) and a bridge
 * thread per connection pumps bytes between the other end and the SSL connection. hiredis
 * keeps its blocking socket and its reply timeout (SO_RCVTIMEO on its end of the pair), so a
 * silent Redis times out exactly as over plain TCP. When hiredis closes its end, the bridge
 * sends close_notify and ends; when Redis closes, the bridge closes its end of the pair and
 * hiredis reads EOF. pa_redis_free joins the thread and frees everything. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "ops/error.h"
#include "worker/redis_url.h"

#define BRIDGE_BUF 16384

typedef struct tls_bridge {
  redisContext *ctx;   /* the hiredis context this bridge serves (registry key) */
  SSL_CTX *sctx;
  SSL *ssl;
  int net_fd;          /* TCP socket to Redis, non-blocking */
  int local_fd;        /* the bridge's end of the socketpair, non-blocking; -1 once closed */
  pthread_t thread;
  char why[192];       /* the SSL error that ended the bridge (under bridges_lock), or "" */
  struct tls_bridge *next;
} tls_bridge;

/* Live bridges by context: pa_redis_free finds the thread to join (hiredis 0.14's context
 * has no user pointer). */
static pthread_mutex_t bridges_lock = PTHREAD_MUTEX_INITIALIZER;
static tls_bridge *bridges;

static long long mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int set_nonblock(int fd) {
  int fl = fcntl(fd, F_GETFL, 0);
  return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* Waits for `events` on fd until deadline: 1 ready, 0 timed out, -1 error. */
static int wait_fd(int fd, short events, long long deadline) {
  for (;;) {
    long long left = deadline - mono_ms();
    if (left <= 0) return 0;
    struct pollfd p = {fd, events, 0};
    int n = poll(&p, 1, (int)left);
    if (n > 0) return 1;
    if (n < 0 && errno != EINTR) return -1;
  }
}

/* A non-blocking TCP connection to host:port within the deadline (every address tried). */
static int tcp_connect(const pa_redis_url *r, long long deadline, int *out) {
  char port[16];
  snprintf(port, sizeof port, "%d", r->port);
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
  int gai = getaddrinfo(r->host, port, &hints, &ai);
  if (gai) return pa_fail(PA_ERR_IO, "redis %s:%d: %s", r->host, r->port, gai_strerror(gai));
  int err = ETIMEDOUT;
  for (struct addrinfo *a = ai; a; a = a->ai_next) {
    int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) { err = errno; continue; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (set_nonblock(fd) == 0 && (connect(fd, a->ai_addr, a->ai_addrlen) == 0 || errno == EINPROGRESS)) {
      int w = wait_fd(fd, POLLOUT, deadline);
      socklen_t len = sizeof err;
      if (w == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0) {
        freeaddrinfo(ai);
        *out = fd;
        return PA_OK;
      }
      if (w == 0) err = ETIMEDOUT;
    } else {
      err = errno;
    }
    close(fd);
  }
  freeaddrinfo(ai);
  return pa_fail(PA_ERR_IO, "redis %s:%d: %s", r->host, r->port, strerror(err));
}

/* The first OpenSSL error on this thread's queue, as text (queue cleared). */
static const char *ssl_reason(char *buf, size_t cap) {
  unsigned long e = ERR_get_error();
  if (!e) snprintf(buf, cap, "connection closed during the handshake");
  else ERR_error_string_n(e, buf, cap);
  ERR_clear_error();
  return buf;
}

/* Verification (system store or tls_ca, host name or IP check, SNI) and the client cert. */
static int make_ssl(const pa_redis_url *r, tls_bridge *b) {
  char why[256];
  ERR_clear_error();
  b->sctx = SSL_CTX_new(TLS_client_method());
  if (!b->sctx) return pa_fail(PA_ERR_NOMEM, "redis TLS: %s", ssl_reason(why, sizeof why));
  SSL_CTX_set_min_proto_version(b->sctx, TLS1_2_VERSION);
  SSL_CTX_set_mode(b->sctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  const char *ca = r->tls_ca[0] ? r->tls_ca : NULL;
  if (ca ? SSL_CTX_load_verify_locations(b->sctx, ca, NULL) != 1 : SSL_CTX_set_default_verify_paths(b->sctx) != 1)
    return pa_fail(PA_ERR_INVALID, "redis TLS: cannot load the CA %s: %s", ca ? ca : "(system store)",
                   ssl_reason(why, sizeof why));
  if (!r->tls_cert[0] != !r->tls_key[0])
    return pa_fail(PA_ERR_INVALID, "redis TLS: tls_cert and tls_key go together");
  if (r->tls_cert[0] && (SSL_CTX_use_certificate_chain_file(b->sctx, r->tls_cert) != 1 ||
                         SSL_CTX_use_PrivateKey_file(b->sctx, r->tls_key, SSL_FILETYPE_PEM) != 1 ||
                         SSL_CTX_check_private_key(b->sctx) != 1))
    return pa_fail(PA_ERR_INVALID, "redis TLS: client certificate %s / key %s: %s", r->tls_cert, r->tls_key,
                   ssl_reason(why, sizeof why));
  SSL_CTX_set_verify(b->sctx, r->tls_insecure ? SSL_VERIFY_NONE : SSL_VERIFY_PEER, NULL);
  b->ssl = SSL_new(b->sctx);
  if (!b->ssl) return pa_fail(PA_ERR_NOMEM, "redis TLS: %s", ssl_reason(why, sizeof why));
  unsigned char ip[16];
  bool is_ip = inet_pton(AF_INET, r->host, ip) == 1 || inet_pton(AF_INET6, r->host, ip) == 1;
  X509_VERIFY_PARAM *vp = SSL_get0_param(b->ssl);
  if (is_ip) {
    if (X509_VERIFY_PARAM_set1_ip_asc(vp, r->host) != 1) return pa_fail(PA_ERR_INVALID, "redis TLS: bad IP %s", r->host);
  } else if (SSL_set_tlsext_host_name(b->ssl, r->host) != 1 || SSL_set1_host(b->ssl, r->host) != 1) {
    return pa_fail(PA_ERR_INVALID, "redis TLS: bad host name %s", r->host);
  }
  if (SSL_set_fd(b->ssl, b->net_fd) != 1) return pa_fail(PA_ERR_IO, "redis TLS: %s", ssl_reason(why, sizeof why));
  return PA_OK;
}

/* The handshake on the non-blocking socket, bounded by the connect deadline. */
static int handshake(const pa_redis_url *r, tls_bridge *b, long long deadline) {
  char why[256];
  for (;;) {
    ERR_clear_error();
    int n = SSL_connect(b->ssl);
    if (n == 1) return PA_OK;
    int e = SSL_get_error(b->ssl, n);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
      int w = wait_fd(b->net_fd, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline);
      if (w == 0) return pa_fail(PA_ERR_IO, "redis %s:%d: TLS handshake timed out", r->host, r->port);
      if (w < 0) return pa_fail(PA_ERR_IO, "redis %s:%d: TLS handshake: %s", r->host, r->port, strerror(errno));
      continue;
    }
    long v = SSL_get_verify_result(b->ssl);
    if (v != X509_V_OK)
      return pa_fail(PA_ERR_IO, "redis %s:%d: TLS verification of the server certificate failed: %s (CA: %s)", r->host,
                     r->port, X509_verify_cert_error_string(v), r->tls_ca[0] ? r->tls_ca : "system store");
    return pa_fail(PA_ERR_IO, "redis %s:%d: TLS handshake failed: %s", r->host, r->port, ssl_reason(why, sizeof why));
  }
}

/* One pass of the pump: moves what can move without blocking. Sets *net_ev to what the SSL
 * connection waits for, returns 1 on progress, 0 when idle, -1 when the bridge is done. */
typedef struct {
  char out[BRIDGE_BUF], in[BRIDGE_BUF]; /* hiredis -> Redis, Redis -> hiredis */
  size_t out_off, out_len, in_off, in_len;
  bool local_eof, net_eof;
} pump;

/* Keeps the SSL error (a TLS 1.3 server refuses a client certificate only after the
 * handshake, with an alert) for pa_redis_tls_why: hiredis itself only sees EOF. */
static void note_error(tls_bridge *b, int ssl_err) {
  char why[160];
  if (ssl_err == SSL_ERROR_SSL) ssl_reason(why, sizeof why);
  else snprintf(why, sizeof why, "the server ended the TLS session without close_notify: %s (a client certificate "
                "required? tls_cert/tls_key)", errno ? strerror(errno) : "EOF");
  pthread_mutex_lock(&bridges_lock);
  if (!b->why[0]) snprintf(b->why, sizeof b->why, "%s", why);
  pthread_mutex_unlock(&bridges_lock);
}

static int pump_once(tls_bridge *b, pump *p, short *net_ev, short *local_ev) {
  int progress = 0;
  *net_ev = *local_ev = 0;
  if (!p->out_len && !p->local_eof) {
    ssize_t n = read(b->local_fd, p->out, sizeof p->out);
    if (n > 0) p->out_off = 0, p->out_len = (size_t)n, progress = 1;
    else if (n == 0 || (errno != EAGAIN && errno != EINTR)) p->local_eof = true;
  }
  if (p->out_len) {
    ERR_clear_error();
    errno = 0;
    int n = SSL_write(b->ssl, p->out + p->out_off, (int)p->out_len);
    if (n > 0) p->out_off += (size_t)n, p->out_len -= (size_t)n, progress = 1;
    else {
      int e = SSL_get_error(b->ssl, n);
      if (e == SSL_ERROR_WANT_READ) *net_ev |= POLLIN;
      else if (e == SSL_ERROR_WANT_WRITE) *net_ev |= POLLOUT;
      else {
        note_error(b, e);
        p->net_eof = true, p->out_len = 0;
      }
    }
  }
  if (!p->in_len && !p->net_eof) {
    ERR_clear_error();
    errno = 0;
    int n = SSL_read(b->ssl, p->in, sizeof p->in);
    if (n > 0) p->in_off = 0, p->in_len = (size_t)n, progress = 1;
    else {
      int e = SSL_get_error(b->ssl, n);
      if (e == SSL_ERROR_WANT_READ) *net_ev |= POLLIN;
      else if (e == SSL_ERROR_WANT_WRITE) *net_ev |= POLLOUT;
      else { /* close_notify, a reset or a protocol error: hiredis reads EOF */
        p->net_eof = true;
        if (e != SSL_ERROR_ZERO_RETURN) note_error(b, e);
      }
    }
  }
  if (p->in_len) {
    ssize_t n = send(b->local_fd, p->in + p->in_off, p->in_len, MSG_NOSIGNAL);
    if (n > 0) p->in_off += (size_t)n, p->in_len -= (size_t)n, progress = 1;
    else if (errno == EAGAIN || errno == EINTR) *local_ev |= POLLOUT;
    else p->local_eof = true, p->in_len = 0;
  }
  if (p->local_eof && !p->out_len) return -1;  /* hiredis closed (pa_redis_free) */
  if (p->net_eof && !p->in_len) return -1;     /* Redis closed: all it sent was delivered */
  if (!p->out_len && !p->local_eof) *local_ev |= POLLIN;
  return progress;
}

static void *bridge_main(void *arg) {
  tls_bridge *b = arg;
  /* OpenSSL writes to the socket with write(): a reset peer must not kill the process. A
   * SIGPIPE blocked here stays pending on this thread and dies with it. */
  sigset_t pipe_set;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_set, NULL);
  pump *p = calloc(1, sizeof *p);
  for (int st = p ? 1 : -1; st >= 0;) {
    short net_ev, local_ev;
    st = pump_once(b, p, &net_ev, &local_ev);
    if (st != 0) continue;
    struct pollfd fds[2] = {{b->local_fd, local_ev, 0}, {b->net_fd, net_ev, 0}};
    if (poll(fds, 2, -1) < 0 && errno != EINTR) break;
    if (fds[0].revents & (POLLHUP | POLLERR) && !(fds[0].revents & POLLIN)) p->local_eof = true;
    if (fds[1].revents & POLLERR) p->net_eof = true;
  }
  if (p && !p->net_eof) SSL_shutdown(b->ssl); /* close_notify, best effort, not waited for */
  free(p);
  /* Redis gone or hiredis gone: either way hiredis must now read EOF, not wait for a timeout. */
  shutdown(b->local_fd, SHUT_RDWR);
  return NULL;
}

static void bridge_free(tls_bridge *b) {
  if (b->ssl) SSL_free(b->ssl);
  if (b->sctx) SSL_CTX_free(b->sctx);
  if (b->net_fd >= 0) close(b->net_fd);
  if (b->local_fd >= 0) close(b->local_fd);
  free(b);
}

int pa_redis_tls_connect(const pa_redis_url *r, int connect_ms, redisContext **out) {
  *out = NULL;
  long long deadline = mono_ms() + connect_ms;
  tls_bridge *b = calloc(1, sizeof *b);
  if (!b) return pa_fail(PA_ERR_NOMEM, "redis: out of memory");
  b->net_fd = b->local_fd = -1;
  int sp[2] = {-1, -1}, rc;
  if ((rc = tcp_connect(r, deadline, &b->net_fd)) || (rc = make_ssl(r, b)) || (rc = handshake(r, b, deadline)))
    goto fail;
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) || set_nonblock(sp[1])) {
    rc = pa_fail(PA_ERR_IO, "redis TLS: socketpair: %s", strerror(errno));
    goto fail;
  }
  b->local_fd = sp[1];
  b->ctx = redisConnectFd(sp[0]); /* hiredis owns sp[0] from here: redisFree closes it */
  if (!b->ctx || b->ctx->err) {
    rc = pa_fail(b->ctx ? PA_ERR_IO : PA_ERR_NOMEM, "redis TLS: %s", b->ctx ? b->ctx->errstr : "out of memory");
    if (b->ctx) redisFree(b->ctx);
    else close(sp[0]);
    goto fail;
  }
  if ((rc = pthread_create(&b->thread, NULL, bridge_main, b))) {
    redisFree(b->ctx);
    rc = pa_fail(PA_ERR_IO, "redis TLS: cannot start the bridge thread: %s", strerror(rc));
    goto fail;
  }
  pthread_mutex_lock(&bridges_lock);
  b->next = bridges;
  bridges = b;
  pthread_mutex_unlock(&bridges_lock);
  *out = b->ctx;
  return PA_OK;
fail:
  bridge_free(b);
  return rc;
}

const char *pa_redis_tls_why(redisContext *c, char *buf, size_t cap) {
  buf[0] = 0;
  pthread_mutex_lock(&bridges_lock);
  for (tls_bridge *b = bridges; b; b = b->next)
    if (b->ctx == c) snprintf(buf, cap, "%s", b->why);
  pthread_mutex_unlock(&bridges_lock);
  return buf;
}

void pa_redis_free(redisContext *c) {
  if (!c) return;
  pthread_mutex_lock(&bridges_lock);
  tls_bridge **pp = &bridges, *b = NULL;
  while (*pp && (*pp)->ctx != c) pp = &(*pp)->next;
  if (*pp) b = *pp, *pp = b->next;
  pthread_mutex_unlock(&bridges_lock);
  redisFree(c); /* closes hiredis' end of the pair: the bridge reads EOF and ends */
  if (!b) return;
  pthread_join(b->thread, NULL);
  bridge_free(b);
}

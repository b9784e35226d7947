/* A scripted HTTP/1.1 server on 127.0.0.1 for the worker tests: answers each request with the
 * next scripted response (the last one repeats), records what it received (request line,
 * headers, body), one request per connection. Enough to capture what libcurl sends and to
 * play a failing S3 endpoint or webhook receiver. Header-only: each test program includes it. */
#ifndef PAELLA_TESTS_WORKER_HTTP_STUB_H
#define PAELLA_TESTS_WORKER_HTTP_STUB_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define STUB_MAX_REQ 32
#define STUB_MAX_RESP 8

typedef struct {
  int status;
  const char *headers; /* extra header lines, each ending in \r\n, or NULL */
  int delay_ms;        /* wait this long before answering (timeouts) */
} stub_response;

typedef struct {
  char *head; /* request line + headers, as received */
  char *body;
  size_t body_len;
  double at;  /* seconds since the stub started */
} stub_request;

typedef struct {
  int fd, port;
  pthread_t thread;
  stub_response resp[STUB_MAX_RESP];
  int n_resp;
  stub_request req[STUB_MAX_REQ];
  int n_req;
  volatile bool stop;
  struct timespec t0;
  pthread_mutex_t mu;
} http_stub;

static inline double stub_now_(const http_stub *s) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)(t.tv_sec - s->t0.tv_sec) + (double)(t.tv_nsec - s->t0.tv_nsec) * 1e-9;
}

/* The value of header `name` in a recorded head (malloc'd, NULL when absent). `nth` picks
 * among repeated headers (0 = first). */
static inline char *stub_header(const char *head, const char *name, int nth) {
  size_t nl = strlen(name);
  for (const char *p = strstr(head, "\r\n"); p && p[2]; p = strstr(p + 2, "\r\n")) {
    const char *line = p + 2;
    if (strncasecmp(line, name, nl) == 0 && line[nl] == ':' && nth-- == 0) {
      const char *v = line + nl + 1;
      while (*v == ' ') v++;
      return strndup(v, strcspn(v, "\r\n"));
    }
  }
  return NULL;
}

static inline bool stub_read_request_(int c, stub_request *r) {
  size_t cap = 1 << 16, len = 0;
  char *buf = malloc(cap + 1), *end = NULL;
  if (!buf) return false;
  while (!end) {
    if (len == cap) goto bad;
    ssize_t n = recv(c, buf + len, cap - len, 0);
    if (n <= 0) goto bad;
    len += (size_t)n;
    buf[len] = '\0';
    end = strstr(buf, "\r\n\r\n");
  }
  size_t head_len = (size_t)(end - buf) + 4;
  r->head = strndup(buf, head_len);
  char *cl = stub_header(r->head, "Content-Length", 0), *expect = stub_header(r->head, "Expect", 0);
  size_t want = cl ? strtoul(cl, NULL, 10) : 0;
  if (expect && strcasecmp(expect, "100-continue") == 0) {
    const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    if (send(c, cont, sizeof cont - 1, MSG_NOSIGNAL) < 0) want = 0;
  }
  free(cl);
  free(expect);
  r->body = malloc(want + 1);
  if (!r->body) goto bad;
  size_t have = len - head_len < want ? len - head_len : want;
  memcpy(r->body, buf + head_len, have);
  while (have < want) {
    ssize_t n = recv(c, r->body + have, want - have, 0);
    if (n <= 0) break;
    have += (size_t)n;
  }
  r->body[have] = '\0';
  r->body_len = have;
  free(buf);
  return true;
bad:
  free(buf);
  return false;
}

static inline void stub_answer_(int c, const stub_response *resp) {
  if (resp->delay_ms) {
    struct timespec d = {resp->delay_ms / 1000, (resp->delay_ms % 1000) * 1000000L};
    nanosleep(&d, NULL);
  }
  char out[1024];
  int n = snprintf(out, sizeof out,
                   "HTTP/1.1 %d Stub\r\n%sContent-Length: 6\r\nConnection: close\r\n\r\nstub\r\n",
                   resp->status, resp->headers ? resp->headers : "");
  if (send(c, out, (size_t)n, MSG_NOSIGNAL) < 0) return;
}

static inline void *stub_loop_(void *arg) {
  http_stub *s = arg;
  while (!s->stop) {
    int c = accept(s->fd, NULL, NULL);
    if (c < 0) {
      if (errno == EINTR) continue;
      break; /* shut down */
    }
    stub_request r = {0};
    if (stub_read_request_(c, &r)) {
      pthread_mutex_lock(&s->mu);
      int i = s->n_req;
      r.at = stub_now_(s);
      if (i < STUB_MAX_REQ) s->req[s->n_req++] = r;
      const stub_response *resp = &s->resp[i < s->n_resp ? i : s->n_resp - 1];
      pthread_mutex_unlock(&s->mu);
      if (i >= STUB_MAX_REQ) {
        free(r.head);
        free(r.body);
      }
      stub_answer_(c, resp);
    }
    close(c);
  }
  return NULL;
}

/* Starts the stub with the scripted responses (at least one). */
static inline int stub_start(http_stub *s, const stub_response *resp, int n_resp) {
  memset(s, 0, sizeof *s);
  pthread_mutex_init(&s->mu, NULL);
  clock_gettime(CLOCK_MONOTONIC, &s->t0);
  s->n_resp = n_resp < STUB_MAX_RESP ? n_resp : STUB_MAX_RESP;
  memcpy(s->resp, resp, (size_t)s->n_resp * sizeof *resp);
  s->fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t al = sizeof a;
  if (s->fd < 0 || bind(s->fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(s->fd, 16) != 0 ||
      getsockname(s->fd, (struct sockaddr *)&a, &al) != 0)
    return -1;
  s->port = ntohs(a.sin_port);
  return pthread_create(&s->thread, NULL, stub_loop_, s) == 0 ? 0 : -1;
}

static inline void stub_stop(http_stub *s) {
  s->stop = true;
  shutdown(s->fd, SHUT_RDWR); /* wakes accept() */
  pthread_join(s->thread, NULL);
  close(s->fd);
}

/* Frees the recorded requests (after stub_stop). */
static inline void stub_free(http_stub *s) {
  for (int i = 0; i < s->n_req; i++) {
    free(s->req[i].head);
    free(s->req[i].body);
  }
  pthread_mutex_destroy(&s->mu);
}

#endif

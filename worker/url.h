/* Just enough URL parsing for the worker's configuration URLs (redis://, kafka://, s3://,
 * file://, http(s)://): scheme, optional user:password@, host[:port], path and query. */
#ifndef PAELLA_WORKER_URL_H
#define PAELLA_WORKER_URL_H

#include <stddef.h>

typedef struct {
  char scheme[16];
  char user[128], password[256];
  char host[256];
  int port;          /* 0 when absent */
  char path[1024];   /* from the first '/' after the authority, "" when absent */
  char query[2048];  /* after '?', without it */
} pa_url;

/* PA_OK or PA_ERR_INVALID (the message names the URL's fault). */
int pa_url_parse(const char *url, pa_url *u);
/* The percent-decoded value of query parameter `name`: 1 when present, 0 when absent,
 * -1 when it does not fit `cap`. */
int pa_url_query(const pa_url *u, const char *name, char *out, size_t cap);
/* Percent-decodes s (a user or password) into out: 0, or -1 when it does not fit `cap`. */
int pa_url_decode(const char *s, char *out, size_t cap);

#endif

/* Where finished images go: an S3-compatible bucket (PUT signed with SigV4 through libcurl's
 * CURLOPT_AWS_SIGV4, presigned GET URLs signed here) or a local directory. Keys derive from
 * the job id, so a retried job overwrites its own outputs and never duplicates them. */
#ifndef PAELLA_WORKER_STORAGE_H
#define PAELLA_WORKER_STORAGE_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "ops/error.h"

typedef struct pa_storage pa_storage;

typedef struct {
  const char *endpoint;      /* S3 API base URL, e.g. http://127.0.0.1:4569 ($AWS_ENDPOINT_URL) */
  const char *region;        /* ($AWS_REGION, default us-east-1) */
  const char *access_key;    /* ($AWS_ACCESS_KEY_ID) */
  const char *secret_key;    /* ($AWS_SECRET_ACCESS_KEY) */
  const char *session_token; /* ($AWS_SESSION_TOKEN), optional */
  int presign_seconds;       /* lifetime of presigned GET URLs (default 3600) */
  int max_retries;           /* retries on 5xx / timeouts, exponential backoff (default 4) */
  int timeout_ms;            /* per request (default 30000) */
} pa_storage_options;

/* s3://BUCKET/PREFIX or file:///DIR. Unset options are read from the usual AWS variables. */
int pa_storage_open(const char *url, const pa_storage_options *o, pa_storage **out);
void pa_storage_free(pa_storage *s);

/* Stores bytes under PREFIX/key (content type e.g. "image/png"). On success *location is a
 * malloc'd "s3://bucket/prefix/key" or "file:///dir/key" and *url a malloc'd presigned GET
 * URL (S3) or the file:// URL (both may be NULL when not wanted). */
int pa_storage_put(pa_storage *s, const char *key, const void *data, size_t len,
                   const char *content_type, char **location, char **url);

#endif

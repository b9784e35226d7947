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
  size_t part_bytes;         /* multipart uploads' part size (default 8 MiB; S3 wants >= 5 MiB) */
} pa_storage_options;

/* s3://BUCKET/PREFIX or file:///DIR. Unset options are read from the usual AWS variables. */
int pa_storage_open(const char *url, const pa_storage_options *o, pa_storage **out);
void pa_storage_free(pa_storage *s);

/* Stores bytes under PREFIX/key (content type e.g. "image/png"). On success *location is a
 * malloc'd "s3://bucket/prefix/key" or "file:///dir/key" and *url a malloc'd presigned GET
 * URL (S3; NULL for a directory, whose path is the server's business) (both may be NULL when
 * not wanted). */
int pa_storage_put(pa_storage *s, const char *key, const void *data, size_t len,
                   const char *content_type, char **location, char **url);

/* PREFIX/key: the object's key from the bucket's (or directory's) root, what results record
 * as outputs[].key and pa_storage_get reads. malloc'd. */
int pa_storage_key(const pa_storage *s, const char *key, char **out);

/* The name results show for an object: "s3://bucket/KEY" for S3, and for a directory the
 * key relative to it (never the server's path). object is a root-relative key. malloc'd. */
int pa_storage_name(const pa_storage *s, const char *object, char **out);

/* Reads the object `object` (a key from the bucket's or directory's root, PREFIX included,
 * as pa_storage_put's location names it) into *data (malloc'd, *len bytes). Objects larger
 * than max_bytes are refused. PA_ERR_NOTFOUND when it does not exist. */
int pa_storage_get(pa_storage *s, const char *object, size_t max_bytes, void **data, size_t *len);

/* One large object written piece by piece under PREFIX/key: S3 multipart uploads
 * (CreateMultipartUpload, UploadPart per part_bytes, CompleteMultipartUpload; always
 * multipart, a single part may be small), or a temporary file renamed into place. Readers
 * never see a partial object. commit and abort free the upload. */
typedef struct pa_storage_upload pa_storage_upload;
int pa_storage_upload_open(pa_storage *s, const char *key, const char *content_type, pa_storage_upload **out);
int pa_storage_upload_write(pa_storage_upload *u, const void *data, size_t len);
/* *size (optional) gets the object's length in bytes. */
int pa_storage_upload_commit(pa_storage_upload *u, uint64_t *size);
void pa_storage_upload_abort(pa_storage_upload *u);

#endif

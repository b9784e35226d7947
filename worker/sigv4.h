/* AWS Signature Version 4 (the S3 flavour): canonical request, string to sign, signing key,
 * the Authorization header and presigned (query-string) URLs. The worker's PUTs are signed by
 * libcurl (CURLOPT_AWS_SIGV4); this signer presigns GET URLs and lets the tests check what
 * libcurl sends byte for byte. Paths and queries given here are already canonical (encoded
 * with pa_sigv4_uri_encode, S3 style: each segment once, never double-encoded). */
#ifndef PAELLA_WORKER_SIGV4_H
#define PAELLA_WORKER_SIGV4_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include <curl/curl.h>

#include "ops/error.h"

typedef struct {
  const char *name;  /* any case; lowercased and sorted when signed */
  const char *value; /* trimmed, inner runs of spaces collapsed, when signed */
} pa_sigv4_header;

/* Who signs, for which scope, when. */
typedef struct {
  const char *access_key;
  const char *secret_key;
  const char *region;   /* e.g. us-east-1 */
  const char *service;  /* "s3" */
  const char *amz_date; /* ISO 8601 basic, "20130524T000000Z" */
} pa_sigv4_signer;

/* One request as signed. headers must include host (and x-amz-date for header signing);
 * names must be unique. */
typedef struct {
  const char *method;           /* "PUT" */
  const char *uri;              /* canonical path, e.g. "/bucket/a%20b.png" */
  const char *query;            /* canonical query (sorted, encoded), "" when none */
  const pa_sigv4_header *headers;
  size_t n_headers;
  const char *payload_hash;     /* lowercase hex SHA-256 of the body, or UNSIGNED-PAYLOAD */
} pa_sigv4_request;

#define PA_SIGV4_UNSIGNED_PAYLOAD "UNSIGNED-PAYLOAD"

/* Lowercase hex SHA-256 of data (64 chars + NUL). */
int pa_sigv4_sha256_hex(const void *data, size_t len, char out[65]);

/* t as "YYYYMMDDTHHMMSSZ" (UTC). */
int pa_sigv4_amz_date(time_t t, char out[17]);

/* Percent-encodes everything but RFC 3986 unreserved characters (and '/' when keep_slash), with
 * uppercase hex, as SigV4 requires. *out is malloc'd. */
int pa_sigv4_uri_encode(const char *s, bool keep_slash, char **out);

/* The canonical request; *signed_headers (optional) gets the "a;b;c" list. Both malloc'd. */
int pa_sigv4_canonical_request(const pa_sigv4_request *r, char **canonical, char **signed_headers);

/* "AWS4-HMAC-SHA256\n<date>\n<scope>\n<hex sha256(canonical)>", malloc'd. */
int pa_sigv4_string_to_sign(const pa_sigv4_signer *k, const char *canonical, char **out);

/* HMAC chain "AWS4"+secret -> date -> region -> service -> "aws4_request". */
int pa_sigv4_signing_key(const pa_sigv4_signer *k, unsigned char key[32]);

/* Lowercase hex HMAC-SHA256(signing key, string to sign). */
int pa_sigv4_signature(const pa_sigv4_signer *k, const char *string_to_sign, char out[65]);

/* The Authorization header value ("AWS4-HMAC-SHA256 Credential=..., SignedHeaders=...,
 * Signature=..."), malloc'd; *signature (optional) gets the bare hex signature. */
int pa_sigv4_authorization(const pa_sigv4_signer *k, const pa_sigv4_request *r, char **out,
                           char signature[65]);

/* A presigned GET URL: base_url + uri + "?X-Amz-Algorithm=...&X-Amz-Credential=...&X-Amz-Date=
 * ...&X-Amz-Expires=...[&X-Amz-Security-Token=...]&X-Amz-SignedHeaders=host&X-Amz-Signature=...".
 * base_url is "scheme://authority" plus any path prefix already included in uri's signing form
 * (so pass the prefix inside uri and only scheme://authority here); host is the Host header
 * value the client will send (authority, with the port when not the scheme's default).
 * expires is in seconds (1 .. 604800). session_token may be NULL. *out is malloc'd. */
int pa_sigv4_presign_get(const pa_sigv4_signer *k, const char *session_token, const char *base_url,
                         const char *host, const char *uri, int expires, char **out);

/* Configures h for one S3 PUT of data signed by libcurl (CURLOPT_AWS_SIGV4 "aws:amz:REGION:s3"):
 * the body goes as CURLOPT_POSTFIELDS (curl 7.88 hashes only POSTFIELDS into the signature, so
 * an upload through a read callback would be signed as empty) with the headers Content-Type,
 * x-amz-content-sha256 (which curl 7.88 does not add itself and S3 requires) and, with a session
 * token, x-amz-security-token. amz_date NULL lets curl stamp the current time; the tests pass a
 * fixed one (curl then signs that date, but also sends the header twice). Storage and the tests
 * share this so the tests check the very request storage sends. *headers must be freed with
 * curl_slist_free_all after the transfer (also on failure). */
int pa_sigv4_curl_put(CURL *h, const pa_sigv4_signer *k, const char *session_token,
                      const char *url, const char *content_type, const void *data, size_t len,
                      struct curl_slist **headers);

#endif

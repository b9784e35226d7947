/* AWS SigV4 for S3, written from the published algorithm
 * (https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html and
 * sigv4-query-string-auth.html). Strings are built with open_memstream: every piece is small
 * and this keeps the length bookkeeping out of the signing logic. */
#include "worker/sigv4.h"

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#define ALGORITHM "AWS4-HMAC-SHA256"

static void hex_encode(const unsigned char *b, size_t n, char *out) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[b[i] >> 4];
    out[2 * i + 1] = digits[b[i] & 15];
  }
  out[2 * n] = '\0';
}

int pa_sigv4_sha256_hex(const void *data, size_t len, char out[65]) {
  unsigned char md[32];
  unsigned int n = 0;
  if (!EVP_Digest(data, len, md, &n, EVP_sha256(), NULL) || n != 32)
    return pa_fail(PA_ERR_IO, "sigv4: SHA-256 failed");
  hex_encode(md, 32, out);
  return PA_OK;
}

static int hmac(const void *key, size_t klen, const void *msg, size_t mlen, unsigned char out[32]) {
  unsigned int n = 0;
  if (!HMAC(EVP_sha256(), key, (int)klen, msg, mlen, out, &n) || n != 32)
    return pa_fail(PA_ERR_IO, "sigv4: HMAC-SHA256 failed");
  return PA_OK;
}

int pa_sigv4_amz_date(time_t t, char out[17]) {
  struct tm tm;
  if (!gmtime_r(&t, &tm) || strftime(out, 17, "%Y%m%dT%H%M%SZ", &tm) != 16)
    return pa_fail(PA_ERR_INVALID, "sigv4: cannot format time %lld", (long long)t);
  return PA_OK;
}

static bool unreserved(unsigned char c) {
  return isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~';
}

int pa_sigv4_uri_encode(const char *s, bool keep_slash, char **out) {
  static const char digits[] = "0123456789ABCDEF";
  size_t n = strlen(s);
  char *o = malloc(3 * n + 1), *p = o;
  if (!o) return pa_fail(PA_ERR_NOMEM, "sigv4: out of memory");
  for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
    if (unreserved(*c) || (keep_slash && *c == '/')) {
      *p++ = (char)*c;
    } else {
      *p++ = '%';
      *p++ = digits[*c >> 4];
      *p++ = digits[*c & 15];
    }
  }
  *p = '\0';
  *out = o;
  return PA_OK;
}

/* Closes a memstream, handing its buffer to *out (or freeing it on error). */
static int memstream_close(FILE *f, char **buf, char **out) {
  bool bad = ferror(f) != 0;
  if (fclose(f) != 0) bad = true;
  if (bad) {
    free(*buf);
    *buf = NULL;
    return pa_fail(PA_ERR_NOMEM, "sigv4: out of memory building a string");
  }
  *out = *buf;
  return PA_OK;
}

/* The value as signed: leading/trailing spaces removed, inner runs collapsed to one space. */
static void write_trimmed(FILE *f, const char *v) {
  while (*v == ' ' || *v == '\t') v++;
  bool space = false;
  for (; *v; v++) {
    if (*v == ' ' || *v == '\t') {
      space = true;
      continue;
    }
    if (space) fputc(' ', f);
    space = false;
    fputc(*v, f);
  }
}

static void write_lower(FILE *f, const char *s) {
  for (; *s; s++) fputc(tolower((unsigned char)*s), f);
}

static int header_cmp(const void *a, const void *b) {
  const pa_sigv4_header *x = *(const pa_sigv4_header *const *)a;
  const pa_sigv4_header *y = *(const pa_sigv4_header *const *)b;
  return strcasecmp(x->name, y->name);
}

/* Header pointers in signing order (by lowercase name; ASCII names, so strcasecmp agrees). */
static int sorted_headers(const pa_sigv4_request *r, const pa_sigv4_header ***out) {
  const pa_sigv4_header **v = calloc(r->n_headers ? r->n_headers : 1, sizeof *v);
  if (!v) return pa_fail(PA_ERR_NOMEM, "sigv4: out of memory");
  for (size_t i = 0; i < r->n_headers; i++) v[i] = &r->headers[i];
  qsort(v, r->n_headers, sizeof *v, header_cmp);
  for (size_t i = 1; i < r->n_headers; i++) {
    if (strcasecmp(v[i - 1]->name, v[i]->name) == 0) {
      int rc = pa_fail(PA_ERR_INVALID, "sigv4: header %s given twice", v[i]->name);
      free(v);
      return rc;
    }
  }
  *out = v;
  return PA_OK;
}

static int signed_header_list(const pa_sigv4_header **v, size_t n, char **out) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  if (!f) return pa_fail(PA_ERR_NOMEM, "sigv4: out of memory");
  for (size_t i = 0; i < n; i++) {
    if (i) fputc(';', f);
    write_lower(f, v[i]->name);
  }
  return memstream_close(f, &buf, out);
}

int pa_sigv4_canonical_request(const pa_sigv4_request *r, char **canonical, char **signed_headers) {
  const pa_sigv4_header **v = NULL;
  char *list = NULL, *buf = NULL;
  size_t len = 0;
  FILE *f = NULL;
  int rc;
  *canonical = NULL;
  PA_TRY(sorted_headers(r, &v));
  PA_TRY(signed_header_list(v, r->n_headers, &list));
  f = open_memstream(&buf, &len);
  if (!f) {
    rc = pa_fail(PA_ERR_NOMEM, "sigv4: out of memory");
    goto fail;
  }
  fprintf(f, "%s\n%s\n%s\n", r->method, r->uri, r->query ? r->query : "");
  for (size_t i = 0; i < r->n_headers; i++) {
    write_lower(f, v[i]->name);
    fputc(':', f);
    write_trimmed(f, v[i]->value);
    fputc('\n', f);
  }
  fprintf(f, "\n%s\n%s", list, r->payload_hash);
  PA_TRY(memstream_close(f, &buf, canonical));
  if (signed_headers) {
    *signed_headers = list;
    list = NULL;
  }
fail:
  free(v);
  free(list);
  return rc;
}

/* "20130524/us-east-1/s3/aws4_request" */
static int scope(const pa_sigv4_signer *k, char *out, size_t cap) {
  if (!k->amz_date || strlen(k->amz_date) != 16 || k->amz_date[8] != 'T')
    return pa_fail(PA_ERR_INVALID, "sigv4: amz_date must look like 20130524T000000Z");
  int n = snprintf(out, cap, "%.8s/%s/%s/aws4_request", k->amz_date, k->region, k->service);
  if (n < 0 || (size_t)n >= cap) return pa_fail(PA_ERR_INVALID, "sigv4: region/service too long");
  return PA_OK;
}

int pa_sigv4_string_to_sign(const pa_sigv4_signer *k, const char *canonical, char **out) {
  char sc[256], hash[65];
  int rc;
  *out = NULL;
  PA_TRY(scope(k, sc, sizeof sc));
  PA_TRY(pa_sigv4_sha256_hex(canonical, strlen(canonical), hash));
  if (asprintf(out, ALGORITHM "\n%s\n%s\n%s", k->amz_date, sc, hash) < 0) {
    *out = NULL;
    rc = pa_fail(PA_ERR_NOMEM, "sigv4: out of memory");
  }
fail:
  return rc;
}

int pa_sigv4_signing_key(const pa_sigv4_signer *k, unsigned char key[32]) {
  char first[256];
  int n = snprintf(first, sizeof first, "AWS4%s", k->secret_key);
  if (n < 0 || (size_t)n >= sizeof first) return pa_fail(PA_ERR_INVALID, "sigv4: secret key too long");
  if (!k->amz_date || strlen(k->amz_date) < 8)
    return pa_fail(PA_ERR_INVALID, "sigv4: amz_date must look like 20130524T000000Z");
  int rc;
  PA_TRY(hmac(first, (size_t)n, k->amz_date, 8, key));
  PA_TRY(hmac(key, 32, k->region, strlen(k->region), key));
  PA_TRY(hmac(key, 32, k->service, strlen(k->service), key));
  PA_TRY(hmac(key, 32, "aws4_request", 12, key));
fail:
  OPENSSL_cleanse(first, sizeof first);
  return rc;
}

int pa_sigv4_signature(const pa_sigv4_signer *k, const char *string_to_sign, char out[65]) {
  unsigned char key[32], sig[32];
  int rc;
  PA_TRY(pa_sigv4_signing_key(k, key));
  PA_TRY(hmac(key, 32, string_to_sign, strlen(string_to_sign), sig));
  hex_encode(sig, 32, out);
fail:
  OPENSSL_cleanse(key, sizeof key);
  return rc;
}

/* canonical request -> string to sign -> hex signature. */
static int sign_request(const pa_sigv4_signer *k, const pa_sigv4_request *r, char sig[65],
                        char **signed_headers) {
  char *canonical = NULL, *sts = NULL;
  int rc;
  PA_TRY(pa_sigv4_canonical_request(r, &canonical, signed_headers));
  PA_TRY(pa_sigv4_string_to_sign(k, canonical, &sts));
  PA_TRY(pa_sigv4_signature(k, sts, sig));
fail:
  free(canonical);
  free(sts);
  return rc;
}

int pa_sigv4_authorization(const pa_sigv4_signer *k, const pa_sigv4_request *r, char **out,
                           char signature[65]) {
  char sig[65], sc[256], *list = NULL;
  int rc;
  *out = NULL;
  PA_TRY(scope(k, sc, sizeof sc));
  PA_TRY(sign_request(k, r, sig, &list));
  if (asprintf(out, ALGORITHM " Credential=%s/%s, SignedHeaders=%s, Signature=%s", k->access_key,
               sc, list, sig) < 0) {
    *out = NULL;
    rc = pa_fail(PA_ERR_NOMEM, "sigv4: out of memory");
    goto fail;
  }
  if (signature) memcpy(signature, sig, 65);
fail:
  free(list);
  return rc;
}

/* The presign query without the signature, parameters in canonical (sorted) order. */
static int presign_query(const pa_sigv4_signer *k, const char *session_token, int expires,
                         char **out) {
  char sc[256], cred[512];
  char *cred_enc = NULL, *tok_enc = NULL;
  int rc;
  *out = NULL;
  PA_TRY(scope(k, sc, sizeof sc));
  int n = snprintf(cred, sizeof cred, "%s/%s", k->access_key, sc);
  if (n < 0 || (size_t)n >= sizeof cred) return pa_fail(PA_ERR_INVALID, "sigv4: access key too long");
  PA_TRY(pa_sigv4_uri_encode(cred, false, &cred_enc));
  if (session_token) PA_TRY(pa_sigv4_uri_encode(session_token, false, &tok_enc));
  if (asprintf(out,
               "X-Amz-Algorithm=" ALGORITHM "&X-Amz-Credential=%s&X-Amz-Date=%s&X-Amz-Expires=%d"
               "%s%s&X-Amz-SignedHeaders=host",
               cred_enc, k->amz_date, expires, tok_enc ? "&X-Amz-Security-Token=" : "",
               tok_enc ? tok_enc : "") < 0) {
    *out = NULL;
    rc = pa_fail(PA_ERR_NOMEM, "sigv4: out of memory");
  }
fail:
  free(cred_enc);
  free(tok_enc);
  return rc;
}

int pa_sigv4_presign_get(const pa_sigv4_signer *k, const char *session_token, const char *base_url,
                         const char *host, const char *uri, int expires, char **out) {
  char *query = NULL, sig[65];
  int rc;
  *out = NULL;
  if (expires < 1 || expires > 604800)
    return pa_fail(PA_ERR_INVALID, "sigv4: presign lifetime %d s outside 1..604800", expires);
  PA_TRY(presign_query(k, session_token, expires, &query));
  pa_sigv4_header host_h = {"host", host};
  pa_sigv4_request r = {"GET", uri, query, &host_h, 1, PA_SIGV4_UNSIGNED_PAYLOAD};
  PA_TRY(sign_request(k, &r, sig, NULL));
  if (asprintf(out, "%s%s?%s&X-Amz-Signature=%s", base_url, uri, query, sig) < 0) {
    *out = NULL;
    rc = pa_fail(PA_ERR_NOMEM, "sigv4: out of memory");
  }
fail:
  free(query);
  return rc;
}

/* Appends "name: value" to *list (curl_slist_append copies the line). */
static int add_header(struct curl_slist **list, const char *name, const char *value) {
  char *line = NULL;
  if (asprintf(&line, "%s: %s", name, value) < 0) return pa_fail(PA_ERR_NOMEM, "sigv4: out of memory");
  struct curl_slist *next = curl_slist_append(*list, line);
  free(line);
  if (!next) return pa_fail(PA_ERR_NOMEM, "sigv4: out of memory");
  *list = next;
  return PA_OK;
}

#define CURL_TRY(expr)                                                               \
  do {                                                                               \
    CURLcode cc_ = (expr);                                                           \
    if (cc_ != CURLE_OK) {                                                           \
      rc = pa_fail(PA_ERR_IO, "sigv4: %s: %s", #expr, curl_easy_strerror(cc_));      \
      goto fail;                                                                     \
    }                                                                                \
  } while (0)

int pa_sigv4_curl_put(CURL *h, const pa_sigv4_signer *k, const char *session_token,
                      const char *url, const char *content_type, const void *data, size_t len,
                      struct curl_slist **headers) {
  char hash[65], provider[300];
  int rc = PA_OK;
  PA_TRY(pa_sigv4_sha256_hex(data, len, hash));
  int n = snprintf(provider, sizeof provider, "aws:amz:%s:%s", k->region, k->service);
  if (n < 0 || (size_t)n >= sizeof provider) return pa_fail(PA_ERR_INVALID, "sigv4: region too long");
  PA_TRY(add_header(headers, "Content-Type", content_type ? content_type : "application/octet-stream"));
  PA_TRY(add_header(headers, "x-amz-content-sha256", hash));
  if (session_token) PA_TRY(add_header(headers, "x-amz-security-token", session_token));
  if (k->amz_date) PA_TRY(add_header(headers, "X-Amz-Date", k->amz_date));
  CURL_TRY(curl_easy_setopt(h, CURLOPT_URL, url));
  CURL_TRY(curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, "PUT"));
  CURL_TRY(curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len));
  CURL_TRY(curl_easy_setopt(h, CURLOPT_POSTFIELDS, len ? data : ""));
  CURL_TRY(curl_easy_setopt(h, CURLOPT_HTTPHEADER, *headers));
  CURL_TRY(curl_easy_setopt(h, CURLOPT_AWS_SIGV4, provider));
  CURL_TRY(curl_easy_setopt(h, CURLOPT_USERNAME, k->access_key));
  CURL_TRY(curl_easy_setopt(h, CURLOPT_PASSWORD, k->secret_key));
fail:
  return rc;
}

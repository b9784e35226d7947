/* SigV4, proven three ways: byte for byte against the worked examples of AWS's S3 docs
 * ("Signature Calculations for the Authorization Header" and "Authenticating Requests: Using
 * Query Parameters"), against botocore signing the same requests at the same timestamp, and
 * against what libcurl 7.88's CURLOPT_AWS_SIGV4 actually sends (captured by a local server). */
#include <curl/curl.h>
#include <string.h>

#include "tests/test.h"
#include "tests/worker/http_stub.h"
#include "tests/worker/sigv4_check.h"
#include "worker/sigv4.h"

#define AKID "AKIAIOSFODNN7EXAMPLE"
#define SECRET "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
#define DATE "20130524T000000Z"
#define EMPTY_SHA "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define HOST "examplebucket.s3.amazonaws.com"

static const pa_sigv4_signer example = {AKID, SECRET, "us-east-1", "s3", DATE};

/* Canonical request, string to sign and signature of one documented example. */
static void check_example(const pa_sigv4_request *r, const char *want_canonical,
                          const char *want_sts_hash, const char *want_sig) {
  char *canonical = NULL, *sts = NULL, *auth = NULL, sig[65] = "", hash[65] = "";
  CHECK_OK(pa_sigv4_canonical_request(r, &canonical, NULL));
  if (want_canonical)
    CHECK_MSG(canonical && strcmp(canonical, want_canonical) == 0, "canonical:\n%s", canonical);
  CHECK_OK(pa_sigv4_string_to_sign(&example, canonical ? canonical : "", &sts));
  if (canonical) CHECK_OK(pa_sigv4_sha256_hex(canonical, strlen(canonical), hash));
  if (want_sts_hash) CHECK_MSG(strcmp(hash, want_sts_hash) == 0, "canonical hash %s", hash);
  CHECK_OK(pa_sigv4_authorization(&example, r, &auth, sig));
  CHECK_MSG(strcmp(sig, want_sig) == 0, "signature %s, want %s", sig, want_sig);
  free(canonical);
  free(sts);
  free(auth);
}

static void test_aws_get_object(void) {
  pa_sigv4_header h[] = {{"Host", HOST}, {"Range", "bytes=0-9"},
                         {"x-amz-content-sha256", EMPTY_SHA}, {"x-amz-date", DATE}};
  pa_sigv4_request r = {"GET", "/test.txt", "", h, 4, EMPTY_SHA};
  check_example(&r,
                "GET\n/test.txt\n\nhost:" HOST "\nrange:bytes=0-9\nx-amz-content-sha256:" EMPTY_SHA
                "\nx-amz-date:" DATE "\n\nhost;range;x-amz-content-sha256;x-amz-date\n" EMPTY_SHA,
                "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972",
                "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
  /* The documented string to sign and full Authorization header. */
  char *canonical = NULL, *sts = NULL, *auth = NULL;
  CHECK_OK(pa_sigv4_canonical_request(&r, &canonical, NULL));
  CHECK_OK(pa_sigv4_string_to_sign(&example, canonical, &sts));
  CHECK(sts && strcmp(sts, "AWS4-HMAC-SHA256\n" DATE "\n20130524/us-east-1/s3/aws4_request\n"
                           "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972") == 0);
  CHECK_OK(pa_sigv4_authorization(&example, &r, &auth, NULL));
  CHECK(auth && strcmp(auth, "AWS4-HMAC-SHA256 Credential=" AKID "/20130524/us-east-1/s3/aws4_request, "
                             "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature="
                             "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41") == 0);
  free(canonical);
  free(sts);
  free(auth);
}

static void test_aws_put_object(void) {
  const char *body = "Welcome to Amazon S3.";
  char hash[65], *uri = NULL;
  CHECK_OK(pa_sigv4_sha256_hex(body, strlen(body), hash));
  CHECK(strcmp(hash, "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072") == 0);
  CHECK_OK(pa_sigv4_uri_encode("/test$file.text", true, &uri));
  CHECK(uri && strcmp(uri, "/test%24file.text") == 0);
  pa_sigv4_header h[] = {{"Host", HOST},
                         {"Date", "Fri, 24 May 2013 00:00:00 GMT"},
                         {"x-amz-date", DATE},
                         {"x-amz-storage-class", "REDUCED_REDUNDANCY"},
                         {"x-amz-content-sha256", hash}};
  pa_sigv4_request r = {"PUT", uri ? uri : "", "", h, 5, hash};
  check_example(&r,
                "PUT\n/test%24file.text\n\ndate:Fri, 24 May 2013 00:00:00 GMT\nhost:" HOST
                "\nx-amz-content-sha256:44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"
                "\nx-amz-date:" DATE "\nx-amz-storage-class:REDUCED_REDUNDANCY\n\n"
                "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class\n"
                "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072",
                NULL, "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd");
  free(uri);
}

static void test_aws_bucket_queries(void) {
  pa_sigv4_header h[] = {{"Host", HOST}, {"x-amz-content-sha256", EMPTY_SHA}, {"x-amz-date", DATE}};
  pa_sigv4_request lifecycle = {"GET", "/", "lifecycle=", h, 3, EMPTY_SHA};
  check_example(&lifecycle, NULL, NULL, "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543");
  pa_sigv4_request list = {"GET", "/", "max-keys=2&prefix=J", h, 3, EMPTY_SHA};
  check_example(&list, NULL, NULL, "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7");
}

static void test_aws_presigned(void) {
  char *url = NULL;
  CHECK_OK(pa_sigv4_presign_get(&example, NULL, "https://" HOST, HOST, "/test.txt", 86400, &url));
  CHECK_MSG(url && strcmp(url,
                          "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                          "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
                          "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
                          "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404") == 0,
            "%s", url);
  free(url);
  CHECK(pa_sigv4_presign_get(&example, NULL, "https://" HOST, HOST, "/t", 0, &url) == PA_ERR_INVALID);
  CHECK(pa_sigv4_presign_get(&example, NULL, "https://" HOST, HOST, "/t", 604801, &url) == PA_ERR_INVALID);
}

static void test_helpers(void) {
  char *e = NULL, d[17];
  CHECK_OK(pa_sigv4_uri_encode("a b/ü~*+=&.png", true, &e));
  CHECK_MSG(e && strcmp(e, "a%20b/%C3%BC~%2A%2B%3D%26.png") == 0, "%s", e);
  free(e);
  CHECK_OK(pa_sigv4_uri_encode("a/b", false, &e));
  CHECK(e && strcmp(e, "a%2Fb") == 0);
  free(e);
  CHECK_OK(pa_sigv4_amz_date(1369353600, d)); /* 2013-05-24 00:00:00 UTC */
  CHECK(strcmp(d, DATE) == 0);
  /* Header values are trimmed and inner space runs collapsed; names sorted case-insensitively. */
  pa_sigv4_header h[] = {{"X-B", "  a   b  "}, {"host", "h"}, {"A", "x"}};
  pa_sigv4_request r = {"GET", "/", "", h, 3, EMPTY_SHA};
  char *c = NULL, *sh = NULL;
  CHECK_OK(pa_sigv4_canonical_request(&r, &c, &sh));
  CHECK_MSG(c && strcmp(c, "GET\n/\n\na:x\nhost:h\nx-b:a b\n\na;host;x-b\n" EMPTY_SHA) == 0, "%s", c);
  CHECK(sh && strcmp(sh, "a;host;x-b") == 0);
  free(c);
  free(sh);
  pa_sigv4_header dup[] = {{"host", "h"}, {"Host", "h"}};
  pa_sigv4_request rd = {"GET", "/", "", dup, 2, EMPTY_SHA};
  CHECK(pa_sigv4_canonical_request(&rd, &c, NULL) == PA_ERR_INVALID);
  pa_sigv4_signer bad = example;
  bad.amz_date = "2013-05-24";
  CHECK(pa_sigv4_authorization(&bad, &r, &c, NULL) == PA_ERR_INVALID);
}

/* Our Authorization header vs botocore's for a PUT like the ones storage sends. */
static void botocore_put(const char *host, const char *uri, const char *body, const char *ctype,
                         const char *token) {
  char hash[65], url[1024], hex[1024] = "", ct[256], sha[128], tok[512] = "";
  CHECK_OK(pa_sigv4_sha256_hex(body, strlen(body), hash));
  for (size_t i = 0; body[i] && i < 500; i++) snprintf(hex + 2 * i, 3, "%02x", (unsigned char)body[i]);
  snprintf(url, sizeof url, "http://%s%s", host, uri);
  snprintf(ct, sizeof ct, "Content-Type:%s", ctype);
  snprintf(sha, sizeof sha, "x-amz-content-sha256:%s", hash);
  if (token) snprintf(tok, sizeof tok, "X-Amz-Security-Token:%s", token);
  char *theirs = token ? botocore_run(11, "header", "PUT", url, DATE, "eu-west-3", AKID, SECRET, hex, ct, sha, tok)
                       : botocore_run(10, "header", "PUT", url, DATE, "eu-west-3", AKID, SECRET, hex, ct, sha);
  pa_sigv4_header h[] = {{"content-type", ctype}, {"host", host}, {"x-amz-content-sha256", hash},
                         {"x-amz-date", DATE}, {"x-amz-security-token", token}};
  pa_sigv4_signer k = {AKID, SECRET, "eu-west-3", "s3", DATE};
  pa_sigv4_request r = {"PUT", uri, "", h, token ? 5 : 4, hash};
  char *ours = NULL;
  CHECK_OK(pa_sigv4_authorization(&k, &r, &ours, NULL));
  CHECK_MSG(theirs && ours && strcmp(theirs, ours) == 0, "botocore %s\n      ours %s", theirs, ours);
  free(theirs);
  free(ours);
}

static void botocore_presign(const char *host, const char *uri, int expires, const char *token) {
  char url[1024], exp[16], base[512];
  snprintf(url, sizeof url, "http://%s%s", host, uri);
  snprintf(base, sizeof base, "http://%s", host);
  snprintf(exp, sizeof exp, "%d", expires);
  char *theirs = token ? botocore_run(8, "presign", url, DATE, "ap-south-1", AKID, SECRET, exp, token)
                       : botocore_run(7, "presign", url, DATE, "ap-south-1", AKID, SECRET, exp);
  pa_sigv4_signer k = {AKID, SECRET, "ap-south-1", "s3", DATE};
  char *ours = NULL;
  CHECK_OK(pa_sigv4_presign_get(&k, token, base, host, uri, expires, &ours));
  /* botocore prints the signature, then the other parameters sorted: ours are already sorted
   * with the signature last, so "<query>&X-Amz-Signature=<sig>" must be the same text. */
  char *nl = theirs ? strchr(theirs, '\n') : NULL;
  char want[4096] = "";
  if (nl) snprintf(want, sizeof want, "%s%s?%s&X-Amz-Signature=%.*s", base, uri, nl + 1, (int)(nl - theirs), theirs);
  CHECK_MSG(ours && nl && strcmp(ours, want) == 0, "botocore %s\n      ours %s", want, ours);
  free(theirs);
  free(ours);
}

static void test_botocore(void) {
  if (!botocore_available()) {
    printf("SKIP botocore comparisons: python3 cannot import botocore (scripts/install-deps.sh "
           "installs python3-botocore)\n");
    return;
  }
  /* The AWS examples through botocore first: the harness itself must reproduce them. */
  char *a = botocore_run(10, "header", "GET", "https://" HOST "/test.txt", DATE, "us-east-1", AKID,
                         SECRET, "", "Range:bytes=0-9", "x-amz-content-sha256:" EMPTY_SHA);
  CHECK_MSG(a && strstr(a, "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"), "%s", a);
  free(a);
  botocore_put("127.0.0.1:4569", "/bucket/jobs/0f3a/image-0.png", "\x89PNG fake", "image/png", NULL);
  botocore_put("s3.eu-west-3.amazonaws.com", "/b/a%20b/%C3%BC.png", "x", "image/png", "FQoG//token+/=");
  botocore_put("minio.internal:9000", "/out/k", "{\"a\": 1}", "application/json", NULL);
  botocore_presign("127.0.0.1:4569", "/bucket/jobs/0f3a/image-0.png", 3600, NULL);
  botocore_presign("s3.ap-south-1.amazonaws.com", "/b/a%20b/%C3%BC.png", 604800, "FQoG//token+/=");
  botocore_presign("examplebucket.s3.amazonaws.com", "/test.txt", 86400, NULL);
}

static size_t discard(char *d, size_t size, size_t n, void *u) {
  (void)d;
  (void)u;
  return size * n;
}

/* What libcurl sends for pa_sigv4_curl_put, at a fixed date: byte for byte ours and botocore's. */
static void test_curl_fixed_date(void) {
  stub_response ok = {200, NULL, 0};
  http_stub s;
  CHECK(stub_start(&s, &ok, 1) == 0);
  char url[256], host[64];
  snprintf(host, sizeof host, "127.0.0.1:%d", s.port);
  snprintf(url, sizeof url, "http://%s/bucket/a%%20b/img.png", host);
  const char body[] = "\x89PNG\r\n\x1a\n not really a png";
  CURL *h = curl_easy_init();
  struct curl_slist *hdrs = NULL;
  CHECK_OK(pa_sigv4_curl_put(h, &example, "tok/en+=", url, "image/png", body, sizeof body - 1, &hdrs));
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard);
  CHECK(curl_easy_perform(h) == CURLE_OK);
  curl_slist_free_all(hdrs);
  curl_easy_cleanup(h);
  stub_stop(&s);
  CHECK(s.n_req == 1);
  if (s.n_req != 1) {
    stub_free(&s);
    return;
  }
  CHECK(s.req[0].body_len == sizeof body - 1 && memcmp(s.req[0].body, body, sizeof body - 1) == 0);
  char *ours = NULL, *theirs = NULL;
  CHECK_OK(resign_captured(s.req[0].head, AKID, SECRET, "us-east-1", &ours, &theirs));
  CHECK_MSG(ours && theirs && strcmp(ours, theirs) == 0, "curl %s\nours %s", theirs, ours);
  CHECK(theirs && strstr(theirs, "SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date;"
                                 "x-amz-security-token, Signature="));
  if (botocore_available()) {
    char hash[65], sha[100], hex[200] = "";
    pa_sigv4_sha256_hex(body, sizeof body - 1, hash);
    snprintf(sha, sizeof sha, "x-amz-content-sha256:%s", hash);
    for (size_t i = 0; i < sizeof body - 1; i++) snprintf(hex + 2 * i, 3, "%02x", (unsigned char)body[i]);
    char *boto = botocore_run(11, "header", "PUT", url, DATE, "us-east-1", AKID, SECRET, hex,
                              "Content-Type:image/png", sha, "X-Amz-Security-Token:tok/en+=");
    CHECK_MSG(boto && theirs && strcmp(boto, theirs) == 0, "botocore %s\ncurl %s", boto, theirs);
    free(boto);
  }
  free(ours);
  free(theirs);
  stub_free(&s);
}

/* At curl's own clock: re-sign at the X-Amz-Date it chose. */
static void test_curl_own_date(void) {
  stub_response ok = {200, NULL, 0};
  http_stub s;
  CHECK(stub_start(&s, &ok, 1) == 0);
  char url[256];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/b/k.png", s.port);
  pa_sigv4_signer k = {"S3RVER", "S3RVER", "us-west-2", "s3", NULL};
  CURL *h = curl_easy_init();
  struct curl_slist *hdrs = NULL;
  CHECK_OK(pa_sigv4_curl_put(h, &k, NULL, url, "image/png", "", 0, &hdrs));
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard);
  CHECK(curl_easy_perform(h) == CURLE_OK);
  curl_slist_free_all(hdrs);
  curl_easy_cleanup(h);
  stub_stop(&s);
  CHECK(s.n_req == 1);
  if (s.n_req != 1) {
    stub_free(&s);
    return;
  }
  char *ours = NULL, *theirs = NULL, *date = stub_header(s.req[0].head, "X-Amz-Date", 0);
  CHECK(date && strlen(date) == 16);
  CHECK(stub_header(s.req[0].head, "X-Amz-Date", 1) == NULL); /* only curl's own */
  CHECK_OK(resign_captured(s.req[0].head, "S3RVER", "S3RVER", "us-west-2", &ours, &theirs));
  CHECK_MSG(ours && theirs && strcmp(ours, theirs) == 0, "curl %s\nours %s", theirs, ours);
  CHECK(theirs && strstr(theirs, "SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date,"));
  free(date);
  free(ours);
  free(theirs);
  stub_free(&s);
}

int main(void) {
  curl_global_init(CURL_GLOBAL_DEFAULT);
  test_helpers();
  test_aws_get_object();
  test_aws_put_object();
  test_aws_bucket_queries();
  test_aws_presigned();
  test_botocore();
  test_curl_fixed_date();
  test_curl_own_date();
  curl_global_cleanup();
  TEST_END();
}

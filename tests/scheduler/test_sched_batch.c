/* A 1,000-prompt batch end to end with the real worker (built-in model, 32x32, 2 steps): valid
 * WebDataset tar shards and a complete manifest in the workers' store; resubmitting it does no
 * new work; its records and its members' expire together once it is complete. Also a
 * multipart upload, a bad item's error path, a reused name with other settings (409), and a
 * job with an inline input: the record keeps no image bytes and no server path.
 *
 * `test_sched_batch s3` runs the same against a real S3 API (s3rver, tests/s3rver.h): the
 * worker and the scheduler share s3://paella-test/out, shards are multipart uploads there. */
#include <openssl/evp.h>

#include "model/image.h"
#include "tests/s3rver.h"
#include "tests/scheduler/harness.h"

/* Under the sanitizers (an unoptimised build, several times slower) the same path with 200
 * prompts (2 shards), so the run stays well inside its limits on a loaded machine. */
#if defined(__SANITIZE_ADDRESS__)
#define N_ITEMS 200
#else
#define N_ITEMS 1000
#endif
#define SHARD 100
#define S3_ITEMS 45 /* 3 shards of 20, the last one short */
#define S3_SHARD 20

static int port;
static int n_items = N_ITEMS, shard = SHARD;
static bool on_s3;
static char inline_entry[64]; /* the stream entry of test_inline_input_and_names' job */

/* An object of the store by its name under the prefix ("big/shard-000000.tar"), read the way
 * the scheduler reads it; NULL when missing. */
static void *read_object(const sched_config *c, const char *name, size_t *len) {
  pa_storage *s = NULL;
  char *object = NULL;
  void *data = NULL;
  *len = 0;
  if (sched_storage(c, &s) == PA_OK && pa_storage_key(s, name, &object) == PA_OK)
    pa_storage_get(s, object, (size_t)256 << 20, &data, len);
  free(object);
  return data;
}

/* Walks a ustar archive: checks every header's checksum, counts members, checks PNG
 * signatures and that each .json carries prompt, seed, settings and the image's params. */
static int check_tar(void *tar, size_t len, int *pngs, int *jsons) {
  FILE *f = tar ? fmemopen(tar, len, "rb") : NULL;
  if (!f) return -1;
  unsigned char h[512];
  int bad = 0;
  while (fread(h, 1, 512, f) == 512 && h[0]) {
    unsigned sum = 0, want = (unsigned)strtoul((char *)h + 148, NULL, 8);
    for (int i = 0; i < 512; i++) sum += (i >= 148 && i < 156) ? ' ' : h[i];
    if (sum != want) bad++;
    size_t size = strtoull((char *)h + 124, NULL, 8);
    char *data = malloc(size + 1);
    if (fread(data, 1, size, f) != size) bad++;
    data[size] = 0;
    const char *name = (const char *)h;
    if (strstr(name, ".png")) {
      (*pngs)++;
      if (size < 8 || memcmp(data, "\x89PNG\r\n\x1a\n", 8)) bad++;
    } else if (strstr(name, ".json")) {
      (*jsons)++;
      json_t *j = json_loads(data, 0, NULL);
      if (!j || !json_is_string(json_object_get(j, "prompt")) || !json_is_integer(json_object_get(j, "seed")) ||
          !json_is_object(json_object_get(j, "settings")))
        bad++;
      /* the image's embedded parameters, as its result records them: its seed and the weights' checksums */
      const char *text = json_string_value(json_array_get(json_object_get(j, "params"), 0));
      json_t *params = text ? json_loads(text, 0, NULL) : NULL;
      if (json_array_size(json_object_get(j, "params")) != 1 || !params ||
          !json_equal(json_object_get(params, "seed"), json_object_get(j, "seed")) ||
          !json_is_string(json_object_get(json_object_get(params, "models"), "paella")))
        bad++;
      json_decref(params);
      json_decref(j);
    } else {
      bad++;
    }
    free(data);
    fseek(f, (long)((512 - size % 512) % 512), SEEK_CUR);
  }
  fclose(f);
  return bad;
}

static json_t *batch_status(const char *id) {
  char path[160];
  h_resp r;
  snprintf(path, sizeof path, "/v1/batches/%s", id);
  if (h_http(port, "GET", path, NULL, NULL, 0, 10, &r)) return NULL;
  json_t *j = json_incref(r.json);
  h_resp_free(&r);
  return j;
}

/* The id of the last entry ever added to the batch items' lane (the low one: batches default
 * to priority 0) ("" on error): unlike XLEN it does not move when the reaper trims
 * acknowledged entries. */
static void stream_last_id(const sched_config *c, char *out, size_t cap) {
  out[0] = 0;
  redisReply *r = sched_cmdf(c, "XINFO STREAM %s", pa_key_lane(c->redis.stream, PA_LANE_LOW).s);
  for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i + 1 < r->elements; i += 2)
    if (r->element[i]->type == REDIS_REPLY_STRING && !strcmp(r->element[i]->str, "last-generated-id") &&
        r->element[i + 1]->type == REDIS_REPLY_STRING)
      snprintf(out, cap, "%s", r->element[i + 1]->str);
  if (r) freeReplyObject(r);
}

static bool wait_complete(const char *id, double timeout_s) {
  for (double end = h_now() + timeout_s; h_now() < end; usleep(200000)) {
    json_t *j = batch_status(id);
    bool done = j && h_str_is(j, "status", "completed");
    json_decref(j);
    if (done) return true;
  }
  return false;
}

/* Seconds to live of a key: -1 none, -2 missing. */
static long long ttl_of(const sched_config *c, const char *key) {
  redisReply *r = sched_cmdf(c, "TTL %s", key);
  long long t = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -3;
  if (r) freeReplyObject(r);
  return t;
}

static void test_big_batch(const sched_config *c) {
  size_t cap = (size_t)n_items * 64 + 256, len = 0;
  char *body = malloc(cap);
  len += (size_t)snprintf(body, cap, "{\"settings\":{\"width\":32,\"height\":32,\"steps\":2,\"prior\":{\"steps\":2}},"
                                     "\"shard_size\":%d,\"name\":\"big\"}\n", shard);
  for (int i = 0; i < n_items; i++) len += (size_t)snprintf(body + len, cap - len, "{\"prompt\":\"fox number %d\"}\n", i);
  h_resp r;
  double t0 = h_now();
  CHECK(h_http(port, "POST", "/v1/batches", "Content-Type: application/x-ndjson\r\n", body, len, 60, &r) == 0 &&
        r.status == 202 && h_str_is(r.json, "id", "big"));
  h_resp_free(&r);
  CHECK(wait_complete("big", 540)); /* the trained built-in model: ~1 min alone, 4 on a loaded machine */
  double secs = h_now() - t0;
  json_t *st = batch_status("big");
  int n_shards = (n_items + shard - 1) / shard;
  CHECK(st && json_integer_value(json_object_get(st, "succeeded")) == n_items);
  /* where the manifest is, as clients see it: an S3 URL, or a name in the directory store */
  const char *want = on_s3 ? "s3://" S3RVER_BUCKET "/out/big/manifest.json" : "big/manifest.json";
  CHECK_MSG(st && h_str_is(st, "manifest", want), "manifest %s", st ? h_str(st, "manifest") : "?");
  json_decref(st);
  printf("batch: %d prompts in %.1f s (%.0f images/s), %d shards (%s)\n", n_items, secs, n_items / secs, n_shards,
         c->storage);
  int pngs = 0, jsons = 0;
  for (int k = 0; k < n_shards; k++) {
    char name[64];
    size_t tlen = 0;
    snprintf(name, sizeof name, "big/shard-%06d.tar", k);
    void *tar = read_object(c, name, &tlen);
    CHECK_MSG(tar && check_tar(tar, tlen, &pngs, &jsons) == 0, "%s (%zu bytes)", name, tlen);
    free(tar);
  }
  CHECK_MSG(pngs == n_items && jsons == n_items, "%d pngs %d jsons", pngs, jsons);
  size_t mlen = 0;
  char *mtext = read_object(c, "big/manifest.json", &mlen);
  json_t *m = mtext ? json_loadb(mtext, mlen, 0, NULL) : NULL;
  free(mtext);
  CHECK(m && json_is_true(json_object_get(m, "complete")) && (int)json_array_size(json_object_get(m, "shards")) == n_shards &&
        json_integer_value(json_object_get(m, "succeeded")) == n_items);
  json_decref(m);
  /* Rerun: nothing new reaches the stream, the answer is already complete. */
  char before[64], after[64];
  stream_last_id(c, before, sizeof before);
  CHECK(before[0]);
  CHECK(h_http(port, "POST", "/v1/batches", "Content-Type: application/x-ndjson\r\n", body, len, 60, &r) == 0 &&
        r.status == 202 && h_str_is(r.json, "status", "completed"));
  h_resp_free(&r);
  usleep(300000);
  stream_last_id(c, after, sizeof after);
  CHECK_MSG(!strcmp(before, after), "the stream got new entries: last id %s, then %s", before, after);
  /* Complete: the batch's records and every member's expire together, --job-ttl from now. */
  const char *keys[] = {"paella:batch:big", "paella:batch:big:done", "paella:batch:big:shards", "paella:job:big-000000"};
  for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
    long long t = ttl_of(c, keys[i]);
    CHECK_MSG(t > 0 && t <= c->job_ttl_s, "%s: TTL %lld", keys[i], t);
  }
  char last[64];
  snprintf(last, sizeof last, "paella:job:big-%06d", n_items - 1);
  long long t = ttl_of(c, last);
  CHECK_MSG(t > 0 && t <= c->job_ttl_s, "%s: TTL %lld", last, t);
  /* ... and each member is queued for the trim, so its owner index entry goes with its record */
  redisReply *o = sched_cmdf(c, "HGET %s owner", pa_key_batch("big", "").s);
  char member[300];
  snprintf(member, sizeof member, "big-%06d %s", n_items - 1, o && o->type == REDIS_REPLY_STRING ? o->str : "?");
  if (o) freeReplyObject(o);
  redisReply *z = sched_cmdf(c, "ZSCORE %s %s", pa_key_sched(c->redis.stream, "expiring").s, member);
  CHECK_MSG(z && z->type == REDIS_REPLY_STRING, "%s not on the expiring set", member);
  if (z) freeReplyObject(z);
  free(body);
}

/* A name is one batch: the same request again is that batch (202), other settings, other
 * items or another shard size under the same name are refused (409), never silently mixed. */
static void test_name_conflict(void) {
  const char *head = "{\"settings\":{\"width\":32,\"height\":32,\"steps\":%d,\"prior\":{\"steps\":2}},"
                     "\"shard_size\":%d,\"name\":\"same\"}\n%s";
  char body[512];
  h_resp r;
  snprintf(body, sizeof body, head, 2, 2, "a cat\na dog\n");
  CHECK(h_http(port, "POST", "/v1/batches", "Content-Type: application/x-ndjson\r\n", body, strlen(body), 30, &r) == 0 &&
        r.status == 202 && h_str_is(r.json, "id", "same"));
  h_resp_free(&r);
  CHECK(h_http(port, "POST", "/v1/batches", "Content-Type: application/x-ndjson\r\n", body, strlen(body), 30, &r) == 0 &&
        r.status == 202 && h_str_is(r.json, "id", "same"));
  h_resp_free(&r);
  struct {
    int steps, shard;
    const char *items, *what;
  } other[] = {{3, 2, "a cat\na dog\n", "settings"}, {2, 2, "a cat\na cow\n", "items"}, {2, 1, "a cat\na dog\n", "shard_size"},
               {2, 2, "a cat\na dog\na cow\n", "number of items"}};
  for (size_t i = 0; i < sizeof other / sizeof *other; i++) {
    snprintf(body, sizeof body, head, other[i].steps, other[i].shard, other[i].items);
    CHECK(h_http(port, "POST", "/v1/batches", "Content-Type: application/x-ndjson\r\n", body, strlen(body), 30, &r) == 0);
    CHECK_MSG(r.status == 409 && h_str_is(r.json, "error.code", "conflict") && strstr(r.body ? r.body : "", other[i].what),
              "other %s: %d %s", other[i].what, r.status, r.body ? r.body : "");
    h_resp_free(&r);
  }
  CHECK(wait_complete("same", 120));
}

/* --storage is checked when given; without one, batches are refused with the reason. */
static void test_storage_config(const sched_config *c) {
  sched_config other = *c;
  CHECK(sched_config_set_storage(&other, "ftp://x/y") == PA_ERR_INVALID && strstr(pa_errmsg(), "ftp://x/y"));
  CHECK(sched_config_set_storage(&other, "s3://Bad_Bucket/p") == PA_ERR_INVALID && strstr(pa_errmsg(), "bucket"));
  other.storage[0] = 0;
  batch_request req = {.items = "a cat\n", .items_len = 6};
  char id[160], *json = NULL;
  pw_error err;
  CHECK(batch_submit(&other, &req, "anon", id, sizeof id, &err, &json) == PA_ERR_UNSUPPORTED && !json &&
        strstr(pa_errmsg(), "--storage"));
}

/* A shard that cannot be written (here: a file where the batch's folder goes; in production
 * the store down) is tried again by the reaper until it can be: the batch completes. */
static void test_shard_retry(const sched_config *c) {
  char block[1200];
  snprintf(block, sizeof block, "%s/retryb", c->storage + strlen("file://"));
  FILE *f = fopen(block, "w");
  CHECK(f != NULL);
  if (f) fclose(f);
  const char *body = "{\"settings\":{\"width\":32,\"height\":32,\"steps\":2,\"prior\":{\"steps\":2}},"
                     "\"shard_size\":2,\"name\":\"retryb\"}\na cat\na dog\n";
  h_resp r;
  CHECK(h_http(port, "POST", "/v1/batches", "Content-Type: application/x-ndjson\r\n", body, strlen(body), 30, &r) == 0 &&
        r.status == 202);
  h_resp_free(&r);
  bool due = false;
  for (double end = h_now() + 120; !due && h_now() < end; usleep(100000)) {
    redisReply *q = sched_cmdf(c, "ZSCORE paella:batches:retry retryb");
    due = q && q->type == REDIS_REPLY_STRING;
    if (q) freeReplyObject(q);
  }
  CHECK_MSG(due, "the failed shard write was not scheduled again");
  json_t *st = batch_status("retryb");
  CHECK(st && h_str_is(st, "status", "running"));
  json_decref(st);
  unlink(block);
  CHECK(wait_complete("retryb", 60));
  size_t len = 0;
  int pngs = 0, jsons = 0;
  void *tar = read_object(c, "retryb/shard-000000.tar", &len);
  CHECK(tar && check_tar(tar, len, &pngs, &jsons) == 0 && pngs == 2 && jsons == 2);
  free(tar);
}

/* A 32x32 PNG as base64, for an inline input. */
static char *png_base64(void) {
  pa_image *img = NULL;
  void *png = NULL;
  size_t len = 0;
  if (pa_image_new(32, 32, &img)) return NULL;
  for (int i = 0; i < 32 * 32 * 3; i++) img->rgb[i] = (float)(i % 7) / 7.0f;
  pa_image_encoding enc = {PA_IMAGE_PNG, 90, NULL};
  char *b64 = NULL;
  if (pa_image_encode(img, &enc, &png, &len) == PA_OK && (b64 = malloc(len * 4 / 3 + 8)))
    EVP_EncodeBlock((unsigned char *)b64, png, (int)len);
  free(png);
  pa_image_free(img);
  return b64;
}

/* An img2img job with its image inline: once it has ended, its record holds no image bytes
 * (the stored job names the input by digest), the stream entry that carried them is trimmed,
 * and its outputs name the store's object, never a server path. */
static void test_inline_input_and_names(const sched_config *c) {
  char *b64 = png_base64(), *body = NULL;
  CHECK(b64 != NULL);
  if (!b64 || asprintf(&body, "{\"kind\":\"img2img\",\"prompt\":\"a fox\",\"width\":32,\"height\":32,\"steps\":2,"
                              "\"prior\":{\"steps\":2},\"image\":{\"data\":\"%s\"}}", b64) < 0) {
    free(b64);
    return;
  }
  h_resp r;
  char id[96] = "", path[160];
  CHECK(h_http(port, "POST", "/v1/jobs", "Content-Type: application/json\r\n", body, strlen(body), 30, &r) == 0 &&
        r.status == 202 && h_str(r.json, "id"));
  snprintf(id, sizeof id, "%s", h_str(r.json, "id") ? h_str(r.json, "id") : "none");
  h_resp_free(&r);
  snprintf(path, sizeof path, "/v1/jobs/%s", id);
  bool done = false;
  for (double end = h_now() + 240; !done && h_now() < end; usleep(200000)) {
    if (h_http(port, "GET", path, NULL, NULL, 0, 10, &r) == 0 && r.status == 200)
      done = h_str_is(r.json, "status", "succeeded") || h_str_is(r.json, "status", "failed");
    if (!done) h_resp_free(&r);
  }
  CHECK_MSG(done && h_str_is(r.json, "status", "succeeded"), "job %s: %s", id, done && r.body ? r.body : "not finished");
  if (done) {
    const json_t *out = json_array_get(json_object_get(json_object_get(r.json, "result"), "outputs"), 0);
    char want[128];
    snprintf(want, sizeof want, "%s%s/0.png", on_s3 ? "out/" : "", id);
    CHECK_MSG(out && h_str_is(out, "key", want), "key %s, want %s", out ? h_str(out, "key") : "-", want);
    if (on_s3) CHECK(out && h_str(out, "url") && !strncmp(h_str(out, "url"), "http://127.0.0.1:", 17)); /* presigned */
    else CHECK(out && !json_object_get(out, "url"));
    CHECK_MSG(!strstr(r.body, "file://") && !strstr(r.body, h_dir), "a server path in %s", r.body);
    h_resp_free(&r);
  }
  /* the image is served from the store all the same */
  snprintf(path, sizeof path, "/v1/jobs/%s/outputs/0", id);
  CHECK(h_http(port, "GET", path, NULL, NULL, 0, 10, &r) == 0 && (on_s3 ? r.status == 302 : r.status == 200));
  h_resp_free(&r);
  /* Redis, read directly: the record's job carries no image bytes */
  char key[160];
  snprintf(key, sizeof key, "paella:job:%s", id);
  redisReply *h = sched_cmdf(c, "HGET %s job", key);
  pw_job job;
  pw_error err;
  pw_job_init(&job);
  CHECK(h && h->type == REDIS_REPLY_STRING && pw_job_decode(h->str, h->len, &job, &err) == 0);
  CHECK_MSG(h && h->type == REDIS_REPLY_STRING && !memmem(h->str, h->len, "\x89PNG", 4), "the stored job (%zu bytes) holds a PNG",
            h && h->type == REDIS_REPLY_STRING ? h->len : 0);
  CHECK(job.image.present && !job.image.data && job.image.url &&
        !strncmp(job.image.url, "https://inline.invalid/sha256/", 30) && job.prompt && !strcmp(job.prompt, "a fox"));
  pw_job_free(&job);
  if (h) freeReplyObject(h);
  h = sched_cmdf(c, "HGET %s entry", key);
  if (h && h->type == REDIS_REPLY_STRING) snprintf(inline_entry, sizeof inline_entry, "%s", h->str);
  if (h) freeReplyObject(h);
  CHECK(inline_entry[0]);
  free(body);
  free(b64);
}

/* The stream entry that carried the bytes is trimmed by the reaper once acknowledged, even
 * though its lane (normal) read nothing later: the batches since ran in the low lane. */
static void test_inline_entry_trimmed(const sched_config *c) {
  bool gone = false;
  for (double end = h_now() + 60; inline_entry[0] && !gone && h_now() < end; usleep(200000)) {
    redisReply *h = sched_cmdf(c, "XRANGE %s %s %s", c->redis.stream, inline_entry, inline_entry);
    gone = h && h->type == REDIS_REPLY_ARRAY && h->elements == 0;
    if (h) freeReplyObject(h);
  }
  CHECK_MSG(gone, "stream entry %s still holds the job", inline_entry);
}

static void test_multipart_and_errors(void) {
  const char *mp =
      "--XX\r\nContent-Disposition: form-data; name=\"settings\"\r\n\r\n"
      "{\"width\":32,\"height\":32,\"steps\":2,\"prior\":{\"steps\":2}}\r\n"
      "--XX\r\nContent-Disposition: form-data; name=\"shard_size\"\r\n\r\n2\r\n"
      "--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"prompts.txt\"\r\n"
      "Content-Type: text/plain\r\n\r\na cat\na dog\n\"a bird\"\r\n--XX--\r\n";
  h_resp r;
  CHECK(h_http(port, "POST", "/v1/batches", "Content-Type: multipart/form-data; boundary=XX\r\n", mp, strlen(mp), 30, &r) == 0 &&
        r.status == 202 && json_integer_value(json_object_get(r.json, "total")) == 3);
  char id[80];
  snprintf(id, sizeof id, "%s", h_str(r.json, "id") ? h_str(r.json, "id") : "");
  h_resp_free(&r);
  CHECK(wait_complete(id, 60));
  const char *bad = "{\"prompt\":\"ok\"}\n{\"prompt\":\"x\",\"width\":31}\n";
  CHECK(h_http(port, "POST", "/v1/batches", "Content-Type: application/x-ndjson\r\n", bad, strlen(bad), 10, &r) == 0 &&
        r.status == 422 && h_str_is(r.json, "error.field", "items[1].width"));
  h_resp_free(&r);
  CHECK(h_http(port, "POST", "/v1/batches", "Content-Type: application/json\r\n", bad, strlen(bad), 10, &r) == 0 &&
        r.status == 415);
  h_resp_free(&r);
  CHECK(h_http(port, "GET", "/v1/batches/nope", NULL, NULL, 0, 10, &r) == 0 && r.status == 404);
  h_resp_free(&r);
}

/* A batch whose settings carry a webhook gets one "batch.completed" message once its last
 * shard is written; a worker's courier takes it (this worker refuses loopback targets, so the
 * attempt is recorded as given up: proof enough that the message was queued and handled). */
static void test_completed_webhook(const sched_config *c) {
  const char *body = "{\"settings\":{\"width\":32,\"height\":32,\"steps\":2,\"prior\":{\"steps\":2},"
                     "\"webhook\":{\"url\":\"http://127.0.0.1:9/h\",\"secret_id\":\"batch-wh\",\"events\":[\"completed\"]}},"
                     "\"shard_size\":2,\"name\":\"hooked\"}\n{\"prompt\":\"a\"}\n{\"prompt\":\"b\"}\n{\"prompt\":\"c\"}\n";
  h_resp r;
  CHECK(h_http(port, "POST", "/v1/batches", "Content-Type: application/x-ndjson\r\n", body, strlen(body), 30, &r) == 0 &&
        r.status == 202);
  h_resp_free(&r);
  CHECK(wait_complete("hooked", 120));
  bool handled = false;
  for (double end = h_now() + 60; !handled && h_now() < end; usleep(100000)) {
    CHECK(h_http(port, "GET", "/v1/batches/hooked/deliveries", NULL, NULL, 0, 10, &r) == 0 && r.status == 200);
    json_t *data = json_object_get(r.json, "data");
    for (size_t i = 0; i < json_array_size(data); i++)
      handled |= h_str_is(json_array_get(data, i), "webhook_id", "hooked.batch.completed") &&
                 h_str_is(json_array_get(data, i), "event", "batch.completed");
    h_resp_free(&r);
  }
  CHECK_MSG(handled, "no attempt of the batch.completed webhook recorded");
  redisReply *q = sched_cmdf(c, "HEXISTS paella:batch:hooked completed_webhook_ms");
  CHECK(q && q->type == REDIS_REPLY_INTEGER && q->integer == 1);
  if (q) freeReplyObject(q);
  /* a secret nobody has: refused at submission, item by item */
  const char *bad = "{\"settings\":{\"webhook\":{\"url\":\"https://example.com/h\",\"secret_id\":\"nobody\"}}}\n"
                    "{\"prompt\":\"x\"}\n";
  CHECK(h_http(port, "POST", "/v1/batches", "Content-Type: application/x-ndjson\r\n", bad, strlen(bad), 10, &r) == 0 &&
        r.status == 422 && h_str_is(r.json, "error.field", "items[0].webhook.secret_id"));
  h_resp_free(&r);
}

int main(int argc, char **argv) {
  setenv("PAELLA_WEBHOOK_SECRET_BATCH_WH", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", 1); /* scheduler and worker */
  if (harness_start_redis()) return 1;
  s3rver sv = {0};
  on_s3 = argc > 1 && !strcmp(argv[1], "s3");
  if (on_s3) {
    if (access(S3RVER_BIN, X_OK) != 0) {
      printf("SKIP: %s missing (scripts/install-deps.sh installs it with npm ci)\n", S3RVER_BIN);
      return 0;
    }
    if (s3rver_start(h_dir, &sv)) {
      fprintf(stderr, "s3rver did not start (see %s/s3rver.log)\n", h_dir);
      return 1;
    }
    char ep[64];
    snprintf(ep, sizeof ep, "http://127.0.0.1:%d", sv.port);
    setenv("AWS_ENDPOINT_URL", ep, 1); /* the worker's too: it inherits the environment */
    setenv("AWS_ACCESS_KEY_ID", "S3RVER", 1);
    setenv("AWS_SECRET_ACCESS_KEY", "S3RVER", 1);
    snprintf(h_storage, sizeof h_storage, "s3://" S3RVER_BUCKET "/out");
    n_items = S3_ITEMS;
    shard = S3_SHARD;
  }
  sched_config c;
  harness_config(&c);
  sched_tracker *t = NULL;
  sched_server *s = NULL;
  CHECK(tracker_start(&c, &t) == PA_OK && sched_server_start(&c, &s) == PA_OK);
  CHECK(harness_start_worker(NULL) == 0);
  if (s && t) {
    port = sched_server_port(s);
    test_storage_config(&c);
    test_multipart_and_errors();
    test_name_conflict();
    test_inline_input_and_names(&c);
    if (!on_s3) test_shard_retry(&c);
    test_completed_webhook(&c);
    test_big_batch(&c);
    test_inline_entry_trimmed(&c);
  }
  s3rver_stop(&sv);
  sched_server_stop(s);
  tracker_stop(t);
  sched_redis_drop();
  harness_cleanup();
  hub_shutdown();
  TEST_END();
}

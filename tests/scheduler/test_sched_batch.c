/* A 1,000-prompt batch end to end with the real worker (built-in model, 32x32, 2 steps): valid
 * WebDataset tar shards and a complete manifest; resubmitting it does no new work. Also a
 * multipart upload and a bad item's error path. */
#include <sys/stat.h>

#include "tests/scheduler/harness.h"

/* Under the sanitizers (an unoptimised build, several times slower) the same path with 200
 * prompts (2 shards), so the run stays well inside its limits on a loaded machine. */
#if defined(__SANITIZE_ADDRESS__)
#define N_ITEMS 200
#else
#define N_ITEMS 1000
#endif
#define SHARD 100

static int port;

/* Walks a ustar archive: checks every header's checksum, counts members, checks PNG
 * signatures and that each .json carries prompt, seed, settings and the image's params. */
static int check_tar(const char *path, int *pngs, int *jsons) {
  FILE *f = fopen(path, "rb");
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

static void test_big_batch(const sched_config *c) {
  size_t cap = N_ITEMS * 64 + 256, len = 0;
  char *body = malloc(cap);
  len += (size_t)snprintf(body, cap, "{\"settings\":{\"width\":32,\"height\":32,\"steps\":2,\"prior\":{\"steps\":2}},"
                                     "\"shard_size\":%d,\"name\":\"big\"}\n", SHARD);
  for (int i = 0; i < N_ITEMS; i++) len += (size_t)snprintf(body + len, cap - len, "{\"prompt\":\"fox number %d\"}\n", i);
  h_resp r;
  double t0 = h_now();
  CHECK(h_http(port, "POST", "/v1/batches", "Content-Type: application/x-ndjson\r\n", body, len, 60, &r) == 0 &&
        r.status == 202 && h_str_is(r.json, "id", "big"));
  h_resp_free(&r);
  CHECK(wait_complete("big", 540)); /* the trained built-in model: ~1 min alone, 4 on a loaded machine */
  double secs = h_now() - t0;
  json_t *st = batch_status("big");
  CHECK(st && json_integer_value(json_object_get(st, "succeeded")) == N_ITEMS);
  json_decref(st);
  printf("batch: %d prompts in %.1f s (%.0f images/s), %d shards\n", N_ITEMS, secs, N_ITEMS / secs, N_ITEMS / SHARD);
  int pngs = 0, jsons = 0;
  for (int k = 0; k < N_ITEMS / SHARD; k++) {
    char path[1200];
    snprintf(path, sizeof path, "%s/big/shard-%06d.tar", c->storage_dir, k);
    CHECK_MSG(check_tar(path, &pngs, &jsons) == 0, "%s", path);
  }
  CHECK_MSG(pngs == N_ITEMS && jsons == N_ITEMS, "%d pngs %d jsons", pngs, jsons);
  char mpath[1200];
  snprintf(mpath, sizeof mpath, "%s/big/manifest.json", c->storage_dir);
  json_t *m = json_load_file(mpath, 0, NULL);
  CHECK(m && json_is_true(json_object_get(m, "complete")) && json_array_size(json_object_get(m, "shards")) == N_ITEMS / SHARD &&
        json_integer_value(json_object_get(m, "succeeded")) == N_ITEMS);
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
  free(body);
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

int main(void) {
  setenv("PAELLA_WEBHOOK_SECRET_BATCH_WH", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", 1); /* scheduler and worker */
  if (harness_start_redis()) return 1;
  sched_config c;
  harness_config(&c);
  sched_tracker *t = NULL;
  sched_server *s = NULL;
  CHECK(tracker_start(&c, &t) == PA_OK && sched_server_start(&c, &s) == PA_OK);
  CHECK(harness_start_worker(NULL) == 0);
  if (s && t) {
    port = sched_server_port(s);
    test_multipart_and_errors();
    test_completed_webhook(&c);
    test_big_batch(&c);
  }
  sched_server_stop(s);
  tracker_stop(t);
  sched_redis_drop();
  harness_cleanup();
  hub_shutdown();
  TEST_END();
}

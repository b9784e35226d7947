/* Bulk batches: many prompts with shared settings, one job per prompt (id "{batch}-NNNNNN"),
 * results gathered into WebDataset tar shards (NNNNNN.png/.jpg/.webp + NNNNNN.json) and a manifest in
 * the storage directory. Ids are deterministic, so resubmitting a batch finds what exists:
 * written shards and jobs that are queued, running or succeeded are skipped; failed items
 * run again.
 *
 * Redis: paella:batch:{id} (hash: owner, total, shard_size, settings, created_ms,
 * resumed_ms, done_at_resume), :done and :ok (sets of indexes), :done:{k} (per shard),
 * :written (shards on disk), :shards (hash shard -> manifest entry JSON). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "scheduler/jobs_internal.h"
#include "worker/outbox.h"

#define BATCH_MAX_ITEMS 1000000

/* Shards are written by the tracker and by submissions (after a crash); one at a time per
 * process keeps two writers from racing on one temporary file. */
static pthread_mutex_t shard_mu = PTHREAD_MUTEX_INITIALIZER;

static long long hget_int(const sched_config *c, const char *key, const char *field, long long dflt) {
  redisReply *r = sched_cmdf(c, "HGET %s %s", key, field);
  long long v = r && r->type == REDIS_REPLY_STRING ? strtoll(r->str, NULL, 10) : dflt;
  if (r) freeReplyObject(r);
  return v;
}

static long long scard(const sched_config *c, const char *key) {
  redisReply *r = sched_cmdf(c, "SCARD %s", key);
  long long v = r && r->type == REDIS_REPLY_INTEGER ? r->integer : 0;
  if (r) freeReplyObject(r);
  return v;
}

/* ---- items -> jobs ------------------------------------------------------------------ */

static void set_error(pw_error *err, pw_code code, const char *field, const char *msg) {
  err->code = code;
  snprintf(err->field, sizeof err->field, "%s", field);
  snprintf(err->message, sizeof err->message, "%s", msg);
}

/* One JSONL line -> a Job: the shared settings, the item's fields over them, the id, and a
 * seed derived from the batch and index when neither gives one (reruns reproduce images). */
static int item_job(const json_t *settings, const char *line, size_t len, const char *batch_id, long index,
                    pw_job *job, pw_error *err) {
  json_t *obj = json_deep_copy(settings), *item = NULL;
  int rc = -1;
  char id[PW_MAX_ID_BYTES + 8];
  if (len && (line[0] == '{' || line[0] == '"')) {
    json_error_t je;
    item = json_loadb(line, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &je);
    if (!item) {
      set_error(err, PW_E_MALFORMED, "", je.text);
      goto done;
    }
  } else {
    item = json_stringn(line, len); /* a plain text line is the prompt */
    if (!item) {
      set_error(err, PW_E_INVALID_UTF8, "prompt", "a prompt line is not valid UTF-8");
      goto done;
    }
  }
  if (json_is_string(item)) json_object_set(obj, "prompt", item);
  else if (json_is_object(item)) json_object_update(obj, item);
  else {
    set_error(err, PW_E_INVALID_TYPE, "", "an item is a JSON object, a JSON string or a text line");
    goto done;
  }
  snprintf(id, sizeof id, "%s-%06ld", batch_id, index);
  json_object_set_new(obj, "id", json_string(id));
  if (!json_object_get(obj, "seed")) {
    uint64_t h = 1469598103934665603ull;
    for (const char *p = batch_id; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ull;
    json_object_set_new(obj, "seed", json_integer((json_int_t)((h + (uint64_t)index) & (uint64_t)PW_SEED_MAX)));
  }
  char *text = json_dumps(obj, JSON_COMPACT);
  if (!text) {
    set_error(err, PW_E_NO_MEMORY, "", "out of memory");
    goto done;
  }
  rc = pw_job_from_json(text, strlen(text), job, err);
  free(text);
done:
  json_decref(item);
  json_decref(obj);
  return rc;
}

typedef struct {
  pw_job *jobs;
  long n, cap;
} job_list;

static void job_list_free(job_list *l) {
  for (long i = 0; i < l->n; i++) pw_job_free(&l->jobs[i]);
  free(l->jobs);
}

static int parse_items(const sched_config *c, const batch_request *r, const json_t *settings, const char *batch_id,
                       job_list *out, pw_error *err) {
  const char *p = r->items, *end = r->items + r->items_len;
  long index = 0;
  while (p < end) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
    const char *line = p;
    p += len + (nl != NULL);
    if (len && line[len - 1] == '\r') len--;
    if (len == 0) continue;
    if (index == BATCH_MAX_ITEMS) {
      set_error(err, PW_E_TOO_LARGE, "items", "more than 1000000 items");
      return PA_ERR_INVALID;
    }
    if (out->n == out->cap) {
      long cap = out->cap ? out->cap * 2 : 256;
      pw_job *j = realloc(out->jobs, (size_t)cap * sizeof *j);
      if (!j) return pa_fail(PA_ERR_NOMEM, "batch items");
      out->jobs = j;
      out->cap = cap;
    }
    pw_job *job = &out->jobs[out->n++];
    pw_job_init(job);
    pw_error e;
    if (item_job(settings, line, len, batch_id, index, job, &e) || pa_job_admit(job, &c->limits, &e) ||
        sched_webhook_check(c, job, &e)) {
      set_error(err, e.code, "", e.message);
      snprintf(err->field, sizeof err->field, "items[%ld]%s%.60s", index, e.field[0] ? "." : "", e.field);
      return PA_ERR_INVALID;
    }
    index++;
  }
  if (index == 0) {
    set_error(err, PW_E_MISSING_FIELD, "items", "the batch has no prompts");
    return PA_ERR_INVALID;
  }
  return PA_OK;
}

/* ---- registration ------------------------------------------------------------------- */

static void derive_id(const batch_request *r, const char *owner, char *out, size_t cap) {
  if (r->name[0]) {
    snprintf(out, cap, "%s", r->name);
    return;
  }
  char hex[65];
  size_t n = strlen(owner) + (r->settings_json ? strlen(r->settings_json) : 0) + r->items_len + 3;
  char *all = malloc(n);
  if (!all) { /* still unique enough: the items alone */
    sha256_hex(r->items, r->items_len, hex);
  } else {
    int k = snprintf(all, n, "%s\n%s\n", owner, r->settings_json ? r->settings_json : "");
    memcpy(all + k, r->items, r->items_len);
    sha256_hex(all, (size_t)k + r->items_len, hex);
    free(all);
  }
  snprintf(out, cap, "b-%.24s", hex);
}

static int register_batch(const sched_config *c, const char *id, const char *owner, long total, int shard_size,
                          const char *settings) {
  char key[PA_KEY_MAX], now[24], tot[24], ss[24];
  snprintf(key, sizeof key, "%s", pa_key_batch(id, "").s);
  snprintf(now, sizeof now, "%" PRId64, now_ms());
  snprintf(tot, sizeof tot, "%ld", total);
  snprintf(ss, sizeof ss, "%d", shard_size);
  redisReply *r = sched_cmdf(c, "HGET %s owner", key);
  if (!r) return PA_ERR_IO;
  bool exists = r->type == REDIS_REPLY_STRING;
  bool other = exists && strcmp(r->str, owner) != 0;
  freeReplyObject(r);
  if (other) return pa_fail(PA_ERR_INVALID, "batch %s belongs to another key", id);
  if (exists && hget_int(c, key, "total", -1) != total)
    return pa_fail(PA_ERR_INVALID, "batch %s exists with a different number of items", id);
  char done_key[PA_KEY_MAX + 32];
  snprintf(done_key, sizeof done_key, "%s:done", key);
  char done[24];
  snprintf(done, sizeof done, "%lld", scard(c, done_key));
  const char *argv[] = {"HSET", key, "owner", owner, "total", tot, "settings", settings,
                        "resumed_ms", now, "done_at_resume", done};
  r = sched_cmd(c, 12, argv, NULL);
  int rc = r && r->type == REDIS_REPLY_INTEGER ? PA_OK : pa_fail(PA_ERR_IO, "HSET %s failed", key);
  if (r) freeReplyObject(r);
  if (rc == PA_OK && !exists) {
    r = sched_cmdf(c, "HSET %s created_ms %s shard_size %s", key, now, ss);
    if (r) freeReplyObject(r);
  }
  return rc;
}

/* Submits item i unless its job exists and did not fail; failed ones are cleared and rerun. */
static int submit_item(const sched_config *c, const char *batch_id, const pw_job *job, long i, int shard_size,
                       const char *owner) {
  char key[PA_KEY_MAX];
  snprintf(key, sizeof key, "%s", pa_key_job(job->id).s);
  redisReply *r = sched_cmdf(c, "HGET %s status", key);
  if (!r) return PA_ERR_IO;
  bool rerun = r->type == REDIS_REPLY_STRING && (!strcmp(r->str, "failed") || !strcmp(r->str, "canceled"));
  freeReplyObject(r);
  if (rerun) {
    r = sched_cmdf(c, "DEL %s", key);
    if (r) freeReplyObject(r);
    r = sched_cmdf(c, "SREM %s %ld", pa_key_batch(batch_id, ":done").s, i);
    if (r) freeReplyObject(r);
    r = sched_cmdf(c, "SREM %s:%ld %ld", pa_key_batch(batch_id, ":done").s, i / shard_size, i);
    if (r) freeReplyObject(r);
  }
  submit_outcome outcome;
  int rc = jobs_submit(c, job, owner, 1 << 30, NULL, batch_id, i, &outcome, NULL, 0);
  if (rc == PA_OK && outcome == SUBMIT_CREATED) sched_metrics_count(SCHED_M_SUBMITTED);
  return rc;
}

static bool shard_written(const sched_config *c, const char *batch_id, long k) {
  redisReply *r = sched_cmdf(c, "SISMEMBER %s %ld", pa_key_batch(batch_id, ":written").s, k);
  bool yes = r && r->type == REDIS_REPLY_INTEGER && r->integer == 1;
  if (r) freeReplyObject(r);
  return yes;
}

int batch_submit(const sched_config *c, const batch_request *r, const char *owner, char *batch_id, size_t cap,
                 pw_error *err, char **json) {
  json_t *settings = NULL;
  job_list jobs = {0};
  int rc = PA_OK;
  memset(err, 0, sizeof *err);
  if (!c->storage_dir[0]) return pa_fail(PA_ERR_UNSUPPORTED, "batches need --storage file:///DIR");
  derive_id(r, owner, batch_id, cap);
  json_error_t je;
  settings = r->settings_json ? json_loads(r->settings_json, JSON_REJECT_DUPLICATES, &je) : json_object();
  if (!settings || !json_is_object(settings) || json_object_get(settings, "id")) {
    set_error(err, settings ? PW_E_INVALID_VALUE : PW_E_MALFORMED, "settings",
              settings ? "settings is a Job object without id" : je.text);
    rc = PA_ERR_INVALID;
    goto done;
  }
  if (!json_object_get(settings, "priority"))
    json_object_set_new(settings, "priority", json_integer(PW_BATCH_DEFAULT_PRIORITY));
  if ((rc = parse_items(c, r, settings, batch_id, &jobs, err))) goto done;
  int shard_size = r->shard_size > 0 ? r->shard_size : c->shard_size;
  char *settings_text = json_dumps(settings, JSON_COMPACT | JSON_SORT_KEYS);
  rc = settings_text ? register_batch(c, batch_id, owner, jobs.n, shard_size, settings_text) : PA_ERR_NOMEM;
  free(settings_text);
  if (rc) goto done;
  char key[PA_KEY_MAX];
  snprintf(key, sizeof key, "%s", pa_key_batch(batch_id, "").s);
  shard_size = (int)hget_int(c, key, "shard_size", shard_size); /* a resubmission keeps the first layout */
  for (long i = 0; i < jobs.n && rc == PA_OK; i++) {
    if (i % shard_size == 0 && shard_written(c, batch_id, i / shard_size)) {
      i += shard_size - 1; /* the whole shard is on disk */
      continue;
    }
    rc = submit_item(c, batch_id, &jobs.jobs[i], i, shard_size, owner);
  }
  if (rc == PA_OK) batch_write_ready_shards(c, batch_id);
  if (rc == PA_OK) rc = batch_render(c, batch_id, owner, json);
done:
  job_list_free(&jobs);
  json_decref(settings);
  return rc;
}

/* ---- completion and shards ---------------------------------------------------------- */

int batch_item_done(const sched_config *c, const char *batch_id, long index, bool succeeded) {
  char key[PA_KEY_MAX];
  snprintf(key, sizeof key, "%s", pa_key_batch(batch_id, "").s);
  long long size = hget_int(c, key, "shard_size", 0), total = hget_int(c, key, "total", 0);
  if (size <= 0 || index < 0 || index >= total) return pa_fail(PA_ERR_NOTFOUND, "no batch %s", batch_id);
  long k = index / size;
  redisReply *r = sched_cmdf(c, "SADD %s:done %ld", key, index);
  if (r) freeReplyObject(r);
  r = sched_cmdf(c, succeeded ? "SADD %s:ok %ld" : "SREM %s:ok %ld", key, index);
  if (r) freeReplyObject(r);
  r = sched_cmdf(c, "SADD %s:done:%ld %ld", key, k, index);
  if (r) freeReplyObject(r);
  long long in_shard = total - k * size < size ? total - k * size : size;
  char shard_done[PA_KEY_MAX + 32];
  snprintf(shard_done, sizeof shard_done, "%s:done:%ld", key, k);
  if (scard(c, shard_done) < in_shard) return PA_OK;
  return batch_write_ready_shards(c, batch_id);
}

static int read_file(const char *path, uint8_t **data, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return pa_fail(PA_ERR_IO, "open %s: %s", path, strerror(errno));
  int rc = PA_OK;
  if (fseek(f, 0, SEEK_END) || (*len = (size_t)ftell(f), fseek(f, 0, SEEK_SET))) rc = pa_fail(PA_ERR_IO, "seek %s", path);
  if (rc == PA_OK && !(*data = malloc(*len + 1))) rc = pa_fail(PA_ERR_NOMEM, "read %s", path);
  if (rc == PA_OK && fread(*data, 1, *len, f) != *len) {
    free(*data);
    rc = pa_fail(PA_ERR_IO, "read %s", path);
  }
  fclose(f);
  return rc;
}

/* Adds item i (its images and NNNNNN.json) to the shard; 1 when added, 0 when the item
 * did not succeed (it is listed as failed in the manifest instead). */
static int add_item(const sched_config *c, tar_writer *w, const char *batch_id, long i, const json_t *settings,
                    int64_t mtime) {
  char id[PW_MAX_ID_BYTES + 8], name[64];
  snprintf(id, sizeof id, "%s-%06ld", batch_id, i);
  redisReply *h = NULL;
  pw_job job;
  pw_result res;
  pw_error err;
  int rc, added = 0;
  pw_job_init(&job);
  pw_result_init(&res);
  if ((rc = jobs_fetch(c, id, &h))) return rc == PA_ERR_NOTFOUND ? 0 : rc;
  size_t jl = 0, rl = 0;
  const char *jb = jobs_field(h, "job", &jl), *rb = jobs_field(h, "result", &rl), *st = jobs_field(h, "status", NULL);
  if (!st || strcmp(st, "succeeded") || !jb || !rb || pw_job_decode(jb, jl, &job, &err) ||
      pw_result_decode(rb, rl, &res, &err) || res.n_outputs == 0)
    goto done;
  for (size_t o = 0; o < res.n_outputs; o++) {
    const char *url = res.outputs[o].url;
    uint8_t *png = NULL;
    size_t len = 0;
    if (!url || strncmp(url, "file://", 7)) {
      rc = pa_fail(PA_ERR_UNSUPPORTED, "%s: only file:// outputs can be gathered into shards", id);
      goto done;
    }
    if ((rc = read_file(url + 7, &png, &len))) goto done;
    const char *ext = strrchr(url, '.'); /* the job's output_format: .png, .jpg or .webp */
    if (!ext || strchr(ext, '/') || strlen(ext) > 5) ext = ".png";
    if (o == 0) snprintf(name, sizeof name, "%06ld%s", i, ext);
    else snprintf(name, sizeof name, "%06ld.%zu%s", i, o, ext);
    rc = tar_add(w, name, png, len, mtime);
    free(png);
    if (rc) goto done;
  }
  json_t *params = json_array(); /* each image's embedded generation parameters, as the result records them */
  for (size_t o = 0; params && o < res.n_outputs; o++)
    json_array_append_new(params, res.outputs[o].params ? json_string(res.outputs[o].params) : json_null());
  json_t *meta = json_pack("{s:s,s:I,s:O,s:s,s:o}", "prompt", job.prompt ? job.prompt : "", "seed",
                           (json_int_t)(res.has_seed ? res.seed : job.seed), "settings", settings, "job_id", id,
                           "params", params);
  char *text = meta ? json_dumps(meta, JSON_COMPACT) : NULL;
  json_decref(meta);
  snprintf(name, sizeof name, "%06ld.json", i);
  rc = text ? tar_add(w, name, text, strlen(text), mtime) : pa_fail(PA_ERR_NOMEM, "item json");
  free(text);
  added = rc == PA_OK;
done:
  pw_job_free(&job);
  pw_result_free(&res);
  freeReplyObject(h);
  return rc ? rc : added;
}

static int write_manifest(const sched_config *c, const char *batch_id, const char *dir) {
  char key[PA_KEY_MAX], path[1200], tmp[1210];
  snprintf(key, sizeof key, "%s", pa_key_batch(batch_id, "").s);
  redisReply *r = sched_cmdf(c, "HGETALL %s:shards", key);
  if (!r || r->type != REDIS_REPLY_ARRAY) {
    if (r) freeReplyObject(r);
    return pa_fail(PA_ERR_IO, "HGETALL %s:shards", key);
  }
  long long total = hget_int(c, key, "total", 0), size = hget_int(c, key, "shard_size", 1);
  long n_shards = (long)((total + size - 1) / size);
  json_t *shards = json_array();
  for (long k = 0; k < n_shards; k++) /* in shard order, not hash order */
    for (size_t i = 0; i + 1 < r->elements; i += 2)
      if (strtol(r->element[i]->str, NULL, 10) == k) json_array_append_new(shards, json_loads(r->element[i + 1]->str, 0, NULL));
  freeReplyObject(r);
  char okk[PA_KEY_MAX + 32];
  snprintf(okk, sizeof okk, "%s:ok", key);
  json_t *m = json_pack("{s:s,s:I,s:I,s:I,s:o,s:b}", "batch", batch_id, "total", (json_int_t)total, "shard_size",
                        (json_int_t)size, "succeeded", (json_int_t)scard(c, okk), "shards", shards, "complete",
                        (int)json_array_size(shards) == n_shards);
  snprintf(path, sizeof path, "%s/manifest.json", dir);
  snprintf(tmp, sizeof tmp, "%s.part", path);
  int rc = m && json_dump_file(m, tmp, JSON_INDENT(1)) == 0 && rename(tmp, path) == 0
               ? PA_OK
               : pa_fail(PA_ERR_IO, "write %s: %s", path, strerror(errno));
  json_decref(m);
  return rc;
}

static int write_shard(const sched_config *c, const char *batch_id, long k, long first, long count,
                       const json_t *settings, const char *dir) {
  char path[1200], name[64];
  tar_writer w;
  snprintf(name, sizeof name, "shard-%06ld.tar", k);
  snprintf(path, sizeof path, "%s/%s", dir, name);
  int rc = tar_open(&w, path);
  if (rc) return rc;
  int64_t mtime = now_ms() / 1000;
  json_t *failed = json_array();
  long added = 0;
  for (long i = first; i < first + count; i++) {
    int a = add_item(c, &w, batch_id, i, settings, mtime);
    if (a < 0) {
      tar_abort(&w);
      json_decref(failed);
      return a;
    }
    if (a) added++;
    else json_array_append_new(failed, json_integer(i));
  }
  if ((rc = tar_close(&w))) {
    json_decref(failed);
    return rc;
  }
  struct stat st;
  json_t *entry = json_pack("{s:s,s:I,s:I,s:I,s:I,s:o}", "name", name, "first", (json_int_t)first, "count",
                            (json_int_t)count, "images", (json_int_t)added, "bytes",
                            (json_int_t)(stat(path, &st) == 0 ? st.st_size : 0), "failed", failed);
  char *text = entry ? json_dumps(entry, JSON_COMPACT) : NULL;
  json_decref(entry);
  if (!text) return pa_fail(PA_ERR_NOMEM, "shard entry");
  redisReply *r = sched_cmdf(c, "HSET %s %ld %s", pa_key_batch(batch_id, ":shards").s, k, text);
  free(text);
  if (r) freeReplyObject(r);
  r = sched_cmdf(c, "SADD %s %ld", pa_key_batch(batch_id, ":written").s, k);
  if (r) freeReplyObject(r);
  return write_manifest(c, batch_id, dir);
}

/* KEYS: outbox, message hash, batch hash. ARGV: the message (PA_OUTBOX_ENQUEUE_LUA). Once
 * per batch: the batch hash remembers that its completion message was queued. */
static const char BATCH_HOOK_LUA[] =
    PA_OUTBOX_ENQUEUE_LUA
    "if redis.call('HSETNX', KEYS[3], 'completed_webhook_ms', ARGV[8]) == 0 then return 0 end\n"
    "return enqueue(KEYS[1], KEYS[2], 1)\n";

/* The settings' webhook subscribes to "completed" (every event when `events` is absent). */
static bool wants_completed(const json_t *webhook) {
  const json_t *events = json_object_get(webhook, "events");
  if (!events) return true;
  for (size_t i = 0; i < json_array_size(events); i++)
    if (json_is_string(json_array_get(events, i)) && !strcmp(json_string_value(json_array_get(events, i)), "completed"))
      return true;
  return false;
}

/* When the batch's settings carry a webhook subscribed to "completed", its last shard queues
 * one "batch.completed" message in the workers' outbox (worker/outbox.h): id
 * "<batch id>.batch.completed", body {"type":"batch.completed","batch_id",
 * "data": GET /v1/batches/{id}}; a worker's courier signs and delivers it like a job's. */
static int queue_completed_webhook(const sched_config *c, const char *batch_id, const json_t *settings) {
  const json_t *wh = json_object_get(settings, "webhook");
  const char *url = json_string_value(json_object_get(wh, "url"));
  const char *secret_id = json_string_value(json_object_get(wh, "secret_id"));
  if (!url || !wants_completed(wh)) return PA_OK;
  char *status = NULL;
  int rc = batch_render(c, batch_id, NULL, &status);
  if (rc) return rc;
  json_t *body = json_pack("{s:s, s:s, s:o}", "type", "batch.completed", "batch_id", batch_id, "data",
                           json_loads(status, 0, NULL));
  free(status);
  char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
  json_decref(body);
  if (!text) return pa_fail(PA_ERR_NOMEM, "batch webhook");
  char msg_id[200], now[24];
  snprintf(msg_id, sizeof msg_id, "%s.batch.completed", batch_id);
  pa_key outbox = pa_key_outbox(c->redis.stream), hash = pa_key_outbox_msg(c->redis.stream, msg_id),
         batch_key = pa_key_batch(batch_id, "");
  snprintf(now, sizeof now, "%lld", (long long)now_ms());
  const char *args[] = {outbox.s, hash.s, batch_key.s, msg_id, batch_id, "batch.completed", url,
                        secret_id ? secret_id : "", secret_id ? "1" : "0", text, now};
  redisReply *r = sched_eval(c, BATCH_HOOK_LUA, 3, 8, args, NULL);
  rc = r && r->type == REDIS_REPLY_INTEGER ? PA_OK : pa_fail(PA_ERR_IO, "batch %s: completion webhook not queued", batch_id);
  if (r) freeReplyObject(r);
  free(text);
  return rc;
}

int batch_write_ready_shards(const sched_config *c, const char *batch_id) {
  char key[PA_KEY_MAX], dir[1100];
  snprintf(key, sizeof key, "%s", pa_key_batch(batch_id, "").s);
  snprintf(dir, sizeof dir, "%s/%s", c->storage_dir, batch_id);
  if (mkdir(dir, 0755) && errno != EEXIST) return pa_fail(PA_ERR_IO, "mkdir %s: %s", dir, strerror(errno));
  long long total = hget_int(c, key, "total", 0), size = hget_int(c, key, "shard_size", 0);
  if (size <= 0) return pa_fail(PA_ERR_NOTFOUND, "no batch %s", batch_id);
  redisReply *sr = sched_cmdf(c, "HGET %s settings", key);
  json_t *settings = sr && sr->type == REDIS_REPLY_STRING ? json_loads(sr->str, 0, NULL) : json_object();
  if (sr) freeReplyObject(sr);
  int rc = PA_OK;
  pthread_mutex_lock(&shard_mu);
  for (long k = 0; k * size < total && rc == PA_OK; k++) {
    long count = (long)(total - k * size < size ? total - k * size : size);
    char done[PA_KEY_MAX + 32];
    snprintf(done, sizeof done, "%s:done:%ld", key, k);
    if (shard_written(c, batch_id, k) || scard(c, done) < count) continue;
    rc = write_shard(c, batch_id, k, (long)(k * size), count, settings, dir);
  }
  char written[PA_KEY_MAX + 32];
  snprintf(written, sizeof written, "%s:written", key);
  if (rc == PA_OK && scard(c, written) == (total + size - 1) / size) rc = queue_completed_webhook(c, batch_id, settings);
  pthread_mutex_unlock(&shard_mu);
  json_decref(settings);
  return rc;
}

int batch_render(const sched_config *c, const char *batch_id, const char *owner, char **json) {
  char key[PA_KEY_MAX], k_done[PA_KEY_MAX + 32], k_ok[PA_KEY_MAX + 32], k_written[PA_KEY_MAX + 32];
  snprintf(key, sizeof key, "%s", pa_key_batch(batch_id, "").s);
  redisReply *r = sched_cmdf(c, "HGET %s owner", key);
  if (!r) return PA_ERR_IO;
  bool mine = r->type == REDIS_REPLY_STRING && (!owner || !strcmp(r->str, owner));
  freeReplyObject(r);
  if (!mine) return pa_fail(PA_ERR_NOTFOUND, "no batch %s", batch_id);
  snprintf(k_done, sizeof k_done, "%s:done", key);
  snprintf(k_ok, sizeof k_ok, "%s:ok", key);
  snprintf(k_written, sizeof k_written, "%s:written", key);
  long long total = hget_int(c, key, "total", 0), size = hget_int(c, key, "shard_size", 1);
  long long done = scard(c, k_done), ok = scard(c, k_ok), written = scard(c, k_written);
  long long shards = (total + size - 1) / size;
  long long resumed = hget_int(c, key, "resumed_ms", now_ms()), base = hget_int(c, key, "done_at_resume", 0);
  double elapsed = (double)(now_ms() - resumed) / 1000.0, rate = elapsed > 0 ? (double)(done - base) / elapsed : 0;
  bool complete = written == shards;
  char manifest[1200];
  snprintf(manifest, sizeof manifest, "file://%s/%s/manifest.json", c->storage_dir, batch_id);
  json_t *o = json_pack("{s:s,s:s,s:I,s:I,s:I,s:I,s:I,s:{s:I,s:I,s:I},s:s}", "id", batch_id, "status",
                        complete ? "completed" : "running", "total", (json_int_t)total, "succeeded", (json_int_t)ok,
                        "failed", (json_int_t)(done - ok), "pending", (json_int_t)(total - done), "created_ms",
                        (json_int_t)hget_int(c, key, "created_ms", 0), "shards", "total", (json_int_t)shards,
                        "written", (json_int_t)written, "size", (json_int_t)size, "manifest", manifest);
  if (!o) return pa_fail(PA_ERR_NOMEM, "batch json");
  json_object_set_new(o, "items_per_second", json_real(rate));
  json_object_set_new(o, "eta_seconds", complete ? json_integer(0)
                                        : rate > 0 ? json_real((double)(total - done) / rate) : json_null());
  *json = json_dumps(o, JSON_COMPACT);
  json_decref(o);
  return *json ? PA_OK : pa_fail(PA_ERR_NOMEM, "batch json");
}

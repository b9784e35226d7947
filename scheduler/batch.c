/* Bulk batches: many prompts with shared settings, one job per prompt (id "{batch}-NNNNNN"),
 * results gathered into WebDataset tar shards (NNNNNN.png/.jpg/.webp + NNNNNN.json) and a
 * manifest in the workers' store (--storage: {prefix}/{batch}/shard-NNNNNN.tar, streamed there
 * as S3 multipart uploads; the members are read back from the same store). Ids are
 * deterministic, so resubmitting a batch finds what exists: written shards and jobs that are
 * queued, running or succeeded are skipped; failed items run again. A name reused with other
 * settings, items or shard size is a conflict.
 *
 * Redis: paella:batch:{id} (hash: owner, total, shard_size, settings, items_sha256,
 * created_ms, resumed_ms, done_at_resume), :done and :ok (sets of indexes), :done:{k} (per
 * shard), :written (shards stored), :shards (hash shard -> manifest entry JSON). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scheduler/jobs_internal.h"
#include "worker/outbox.h"

#define BATCH_MAX_ITEMS 1000000
#define OUTPUT_READ_MAX ((size_t)64 << 20) /* one finished image read back (1024 px PNG: ~3 MiB) */

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

/* The same name again is the same batch only with the same settings, items and (when the
 * request names one) shard size; anything else is a 409, not a silent reuse. */
static int check_same(const sched_config *c, const char *id, const char *key, long total, int shard_size,
                      const char *settings, const char *items_sha) {
  if (hget_int(c, key, "total", -1) != total)
    return pa_fail(PA_ERR_INVALID, "batch %s exists with a different number of items", id);
  if (shard_size > 0 && hget_int(c, key, "shard_size", shard_size) != shard_size)
    return pa_fail(PA_ERR_INVALID, "batch %s exists with another shard_size", id);
  const char *fields[] = {"settings", "items_sha256"}, *want[] = {settings, items_sha};
  for (int i = 0; i < 2; i++) {
    redisReply *r = sched_cmdf(c, "HGET %s %s", key, fields[i]);
    if (!r) return PA_ERR_IO;
    bool differs = r->type == REDIS_REPLY_STRING && strcmp(r->str, want[i]) != 0; /* absent: an older record */
    freeReplyObject(r);
    if (differs)
      return pa_fail(PA_ERR_INVALID, "batch %s exists with other %s: choose another name", id,
                     i == 0 ? "settings" : "items");
  }
  return PA_OK;
}

static int register_batch(const sched_config *c, const char *id, const char *owner, long total, int shard_size,
                          int asked_shard_size, const char *settings, const char *items_sha) {
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
  int rc = exists ? check_same(c, id, key, total, asked_shard_size, settings, items_sha) : PA_OK;
  if (rc) return rc;
  char done_key[PA_KEY_MAX + 32];
  snprintf(done_key, sizeof done_key, "%s", pa_key_batch(id, ":done").s);
  char done[24];
  snprintf(done, sizeof done, "%lld", scard(c, done_key));
  const char *argv[] = {"HSET", key, "owner", owner, "total", tot, "settings", settings,
                        "resumed_ms", now, "done_at_resume", done};
  r = sched_cmd(c, 12, argv, NULL);
  rc = r && r->type == REDIS_REPLY_INTEGER ? PA_OK : pa_fail(PA_ERR_IO, "HSET %s failed", key);
  if (r) freeReplyObject(r);
  if (rc == PA_OK && !exists) {
    r = sched_cmdf(c, "HSET %s created_ms %s shard_size %s items_sha256 %s", key, now, ss, items_sha);
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
    r = sched_cmdf(c, "SREM %s %ld", pa_key_batch_shard_done(batch_id, i / shard_size).s, i);
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
  pa_storage *store;
  if (sched_storage(c, &store)) return pa_fail_context(PA_ERR_UNSUPPORTED, "batches: ");
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
  char *settings_text = json_dumps(settings, JSON_COMPACT | JSON_SORT_KEYS), items_sha[65];
  sha256_hex(r->items, r->items_len, items_sha);
  rc = settings_text ? register_batch(c, batch_id, owner, jobs.n, shard_size, r->shard_size, settings_text, items_sha)
                     : PA_ERR_NOMEM;
  free(settings_text);
  if (rc) goto done;
  char key[PA_KEY_MAX];
  snprintf(key, sizeof key, "%s", pa_key_batch(batch_id, "").s);
  shard_size = (int)hget_int(c, key, "shard_size", shard_size); /* a resubmission keeps the first layout */
  for (long i = 0; i < jobs.n && rc == PA_OK; i++) {
    if (i % shard_size == 0 && shard_written(c, batch_id, i / shard_size)) {
      i += shard_size - 1; /* the whole shard is stored */
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
  redisReply *r = sched_cmdf(c, "SADD %s %ld", pa_key_batch(batch_id, ":done").s, index);
  if (r) freeReplyObject(r);
  r = sched_cmdf(c, succeeded ? "SADD %s %ld" : "SREM %s %ld", pa_key_batch(batch_id, ":ok").s, index);
  if (r) freeReplyObject(r);
  r = sched_cmdf(c, "SADD %s %ld", pa_key_batch_shard_done(batch_id, k).s, index);
  if (r) freeReplyObject(r);
  long long in_shard = total - k * size < size ? total - k * size : size;
  char shard_done[PA_KEY_MAX + 32];
  snprintf(shard_done, sizeof shard_done, "%s", pa_key_batch_shard_done(batch_id, k).s);
  if (scard(c, shard_done) < in_shard) return PA_OK;
  return batch_write_ready_shards(c, batch_id);
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
  pa_storage *store;
  if ((rc = sched_storage_of_job(c, &job, &store))) goto done;
  for (size_t o = 0; o < res.n_outputs; o++) {
    const char *object = res.outputs[o].key; /* from the store's root, as the worker wrote it */
    void *png = NULL;
    size_t len = 0;
    if ((rc = pa_storage_get(store, object, OUTPUT_READ_MAX, &png, &len))) {
      rc = pa_fail_context(rc, "%s output %zu: ", id, o);
      goto done;
    }
    const char *ext = strrchr(object, '.'); /* the job's output_format: .png, .jpg or .webp */
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

static int write_manifest(const sched_config *c, const char *batch_id, pa_storage *store) {
  char key[PA_KEY_MAX], name[200];
  snprintf(key, sizeof key, "%s", pa_key_batch(batch_id, "").s);
  redisReply *r = sched_cmdf(c, "HGETALL %s", pa_key_batch(batch_id, ":shards").s);
  if (!r || r->type != REDIS_REPLY_ARRAY) {
    if (r) freeReplyObject(r);
    return pa_fail(PA_ERR_IO, "HGETALL %s", pa_key_batch(batch_id, ":shards").s);
  }
  long long total = hget_int(c, key, "total", 0), size = hget_int(c, key, "shard_size", 1);
  long n_shards = (long)((total + size - 1) / size);
  json_t *shards = json_array();
  for (long k = 0; k < n_shards; k++) /* in shard order, not hash order */
    for (size_t i = 0; i + 1 < r->elements; i += 2)
      if (strtol(r->element[i]->str, NULL, 10) == k) json_array_append_new(shards, json_loads(r->element[i + 1]->str, 0, NULL));
  freeReplyObject(r);
  char okk[PA_KEY_MAX + 32];
  snprintf(okk, sizeof okk, "%s", pa_key_batch(batch_id, ":ok").s);
  json_t *m = json_pack("{s:s,s:I,s:I,s:I,s:o,s:b}", "batch", batch_id, "total", (json_int_t)total, "shard_size",
                        (json_int_t)size, "succeeded", (json_int_t)scard(c, okk), "shards", shards, "complete",
                        (int)json_array_size(shards) == n_shards);
  char *text = m ? json_dumps(m, JSON_INDENT(1)) : NULL;
  json_decref(m);
  snprintf(name, sizeof name, "%s/manifest.json", batch_id);
  int rc = text ? pa_storage_put(store, name, text, strlen(text), "application/json", NULL, NULL)
                : pa_fail(PA_ERR_NOMEM, "manifest");
  free(text);
  return rc;
}

static int write_shard(const sched_config *c, const char *batch_id, long k, long first, long count,
                       const json_t *settings, pa_storage *store) {
  char path[200], name[64];
  tar_writer w;
  uint64_t bytes = 0;
  snprintf(name, sizeof name, "shard-%06ld.tar", k);
  snprintf(path, sizeof path, "%s/%s", batch_id, name);
  int rc = tar_open(&w, store, path);
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
  if ((rc = tar_close(&w, &bytes))) {
    json_decref(failed);
    return rc;
  }
  json_t *entry = json_pack("{s:s,s:I,s:I,s:I,s:I,s:o}", "name", name, "first", (json_int_t)first, "count",
                            (json_int_t)count, "images", (json_int_t)added, "bytes",
                            (json_int_t)bytes, "failed", failed);
  char *text = entry ? json_dumps(entry, JSON_COMPACT) : NULL;
  json_decref(entry);
  if (!text) return pa_fail(PA_ERR_NOMEM, "shard entry");
  redisReply *r = sched_cmdf(c, "HSET %s %ld %s", pa_key_batch(batch_id, ":shards").s, k, text);
  free(text);
  if (r) freeReplyObject(r);
  /* the manifest first: once the shard counts as written (and the batch maybe as completed),
   * the stored manifest lists it; a failure here writes the shard again next time */
  if ((rc = write_manifest(c, batch_id, store))) return rc;
  r = sched_cmdf(c, "SADD %s %ld", pa_key_batch(batch_id, ":written").s, k);
  if (!r) return PA_ERR_IO;
  freeReplyObject(r);
  return PA_OK;
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

/* KEYS: the expiring zset (tracker_trim). ARGV: batch id, first index, count, ttl seconds,
 * when they expire (Unix ms), owner. The members' records (and webhook logs) of one slice of a
 * batch, each queued on the expiring zset like a settled job so that its owner index entry
 * goes with it; keys are built here, like the ids ("{batch}-NNNNNN"). */
static const char EXPIRE_MEMBERS_LUA[] =
    "for i = tonumber(ARGV[2]), tonumber(ARGV[2]) + tonumber(ARGV[3]) - 1 do\n"
    "  local id = string.format('%s-%06d', ARGV[1], i)\n"
    "  local j = '" PA_KEY_JOB_PREFIX "' .. id\n"
    "  redis.call('EXPIRE', j, ARGV[4])\n"
    "  redis.call('EXPIRE', j .. ':deliveries', ARGV[4])\n"
    "  if ARGV[6] ~= '' then redis.call('ZADD', KEYS[1], ARGV[5], id .. ' ' .. ARGV[6]) end\n"
    "end\n"
    "return 1\n";

#define EXPIRE_SLICE 10000 /* members per script call: Redis stays responsive */

/* Retention of a complete batch: its shards hold the results now, so its records and its
 * members' expire together, job_ttl_s later (members never expire before: shards read them).
 * A resubmission while they live renews the time. */
static int expire_with_batch(const sched_config *c, const char *batch_id, long long total, long long size) {
  if (c->job_ttl_s <= 0) return PA_OK;
  char ttl[16], first[24], count[24];
  snprintf(ttl, sizeof ttl, "%d", c->job_ttl_s);
  static const char *const suffixes[] = {"", ":done", ":ok", ":written", ":shards"};
  for (size_t i = 0; i < sizeof suffixes / sizeof *suffixes; i++) {
    redisReply *r = sched_cmdf(c, "EXPIRE %s %s", pa_key_batch(batch_id, suffixes[i]).s, ttl);
    if (!r) return PA_ERR_IO;
    freeReplyObject(r);
  }
  redisReply *r = sched_cmdf(c, "EXPIRE %s %s", pa_key_job_deliveries(batch_id).s, ttl); /* the batch's webhook log */
  if (r) freeReplyObject(r);
  for (long long k = 0; k * size < total; k++) {
    r = sched_cmdf(c, "EXPIRE %s %s", pa_key_batch_shard_done(batch_id, (long)k).s, ttl);
    if (r) freeReplyObject(r);
  }
  char at[24], owner[256] = "";
  snprintf(at, sizeof at, "%" PRId64, now_ms() + (int64_t)c->job_ttl_s * 1000);
  r = sched_cmdf(c, "HGET %s owner", pa_key_batch(batch_id, "").s);
  if (r && r->type == REDIS_REPLY_STRING) snprintf(owner, sizeof owner, "%s", r->str);
  if (r) freeReplyObject(r);
  sched_zsets z = sched_zsets_of(c);
  for (long long i = 0; i < total; i += EXPIRE_SLICE) {
    snprintf(first, sizeof first, "%lld", i);
    snprintf(count, sizeof count, "%lld", total - i < EXPIRE_SLICE ? total - i : EXPIRE_SLICE);
    const char *args[] = {z.expiring, batch_id, first, count, ttl, at, owner};
    r = sched_eval(c, EXPIRE_MEMBERS_LUA, 1, 6, args, NULL);
    bool ok = r && r->type == REDIS_REPLY_INTEGER;
    if (r) freeReplyObject(r);
    if (!ok) return pa_fail(PA_ERR_IO, "batch %s: members' expiry not set", batch_id);
  }
  return PA_OK;
}

int batch_write_ready_shards(const sched_config *c, const char *batch_id) {
  char key[PA_KEY_MAX];
  pa_storage *store;
  snprintf(key, sizeof key, "%s", pa_key_batch(batch_id, "").s);
  int rc = sched_storage(c, &store);
  if (rc) return rc;
  long long total = hget_int(c, key, "total", 0), size = hget_int(c, key, "shard_size", 0);
  if (size <= 0) return pa_fail(PA_ERR_NOTFOUND, "no batch %s", batch_id);
  redisReply *sr = sched_cmdf(c, "HGET %s settings", key);
  json_t *settings = sr && sr->type == REDIS_REPLY_STRING ? json_loads(sr->str, 0, NULL) : json_object();
  if (sr) freeReplyObject(sr);
  pthread_mutex_lock(&shard_mu);
  for (long k = 0; k * size < total && rc == PA_OK; k++) {
    long count = (long)(total - k * size < size ? total - k * size : size);
    char done[PA_KEY_MAX + 32];
    snprintf(done, sizeof done, "%s", pa_key_batch_shard_done(batch_id, k).s);
    if (shard_written(c, batch_id, k) || scard(c, done) < count) continue;
    rc = write_shard(c, batch_id, k, (long)(k * size), count, settings, store);
  }
  char written[PA_KEY_MAX + 32];
  snprintf(written, sizeof written, "%s", pa_key_batch(batch_id, ":written").s);
  if (rc == PA_OK && scard(c, written) == (total + size - 1) / size) {
    rc = queue_completed_webhook(c, batch_id, settings);
    if (rc == PA_OK) rc = expire_with_batch(c, batch_id, total, size);
  }
  pthread_mutex_unlock(&shard_mu);
  json_decref(settings);
  if (rc == PA_ERR_IO) { /* the store or Redis failed: no later event would write this shard, the reaper will */
    char due[24];
    snprintf(due, sizeof due, "%" PRId64, now_ms() + BATCH_RETRY_MS);
    redisReply *q = sched_cmdf(c, "ZADD %s %s %s", pa_key_batches_retry().s, due, batch_id);
    if (q) freeReplyObject(q);
  }
  return rc;
}

void batch_retry_due(const sched_config *c) {
  char now[24];
  snprintf(now, sizeof now, "%" PRId64, now_ms());
  redisReply *r = sched_cmdf(c, "ZRANGEBYSCORE %s -inf %s LIMIT 0 16", pa_key_batches_retry().s, now);
  for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
    const char *id = r->element[i]->str;
    redisReply *q = sched_cmdf(c, "ZREM %s %s", pa_key_batches_retry().s, id);
    bool mine = q && q->type == REDIS_REPLY_INTEGER && q->integer == 1; /* one replica takes it */
    if (q) freeReplyObject(q);
    if (mine && batch_write_ready_shards(c, id))
      fprintf(stderr, "paella-scheduler: batch %s: %s (retried in %d s)\n", id, pa_errmsg(), BATCH_RETRY_MS / 1000);
  }
  if (r) freeReplyObject(r);
}

int batch_render(const sched_config *c, const char *batch_id, const char *owner, char **json) {
  char key[PA_KEY_MAX], k_done[PA_KEY_MAX + 32], k_ok[PA_KEY_MAX + 32], k_written[PA_KEY_MAX + 32];
  snprintf(key, sizeof key, "%s", pa_key_batch(batch_id, "").s);
  redisReply *r = sched_cmdf(c, "HGET %s owner", key);
  if (!r) return PA_ERR_IO;
  bool mine = r->type == REDIS_REPLY_STRING && (!owner || !strcmp(r->str, owner));
  freeReplyObject(r);
  if (!mine) return pa_fail(PA_ERR_NOTFOUND, "no batch %s", batch_id);
  snprintf(k_done, sizeof k_done, "%s", pa_key_batch(batch_id, ":done").s);
  snprintf(k_ok, sizeof k_ok, "%s", pa_key_batch(batch_id, ":ok").s);
  snprintf(k_written, sizeof k_written, "%s", pa_key_batch(batch_id, ":written").s);
  long long total = hget_int(c, key, "total", 0), size = hget_int(c, key, "shard_size", 1);
  long long done = scard(c, k_done), ok = scard(c, k_ok), written = scard(c, k_written);
  long long shards = (total + size - 1) / size;
  long long resumed = hget_int(c, key, "resumed_ms", now_ms()), base = hget_int(c, key, "done_at_resume", 0);
  double elapsed = (double)(now_ms() - resumed) / 1000.0, rate = elapsed > 0 ? (double)(done - base) / elapsed : 0;
  bool complete = written == shards;
  /* "s3://bucket/prefix/{id}/manifest.json", or relative to a directory store: never a
   * server path */
  char name[200], *object = NULL, *manifest = NULL;
  pa_storage *store;
  snprintf(name, sizeof name, "%s/manifest.json", batch_id);
  int rc = sched_storage(c, &store);
  if (rc == PA_OK) rc = pa_storage_key(store, name, &object);
  if (rc == PA_OK) rc = pa_storage_name(store, object, &manifest);
  free(object);
  if (rc) return rc;
  json_t *o = json_pack("{s:s,s:s,s:I,s:I,s:I,s:I,s:I,s:{s:I,s:I,s:I},s:s}", "id", batch_id, "status",
                        complete ? "completed" : "running", "total", (json_int_t)total, "succeeded", (json_int_t)ok,
                        "failed", (json_int_t)(done - ok), "pending", (json_int_t)(total - done), "created_ms",
                        (json_int_t)hget_int(c, key, "created_ms", 0), "shards", "total", (json_int_t)shards,
                        "written", (json_int_t)written, "size", (json_int_t)size, "manifest", manifest);
  free(manifest);
  if (!o) return pa_fail(PA_ERR_NOMEM, "batch json");
  json_object_set_new(o, "items_per_second", json_real(rate));
  json_object_set_new(o, "eta_seconds", complete ? json_integer(0)
                                        : rate > 0 ? json_real((double)(total - done) / rate) : json_null());
  *json = json_dumps(o, JSON_COMPACT);
  json_decref(o);
  return *json ? PA_OK : pa_fail(PA_ERR_NOMEM, "batch json");
}

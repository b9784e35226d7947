/* Webhooks seen from the scheduler: a submission whose webhook has no secret a worker could
 * sign with is refused (422) unless the operator allows unsigned delivery, and the workers'
 * per-attempt records (docs/queues.md, paella:job:{id}:deliveries) are served at
 * GET /v1/jobs/{id}/deliveries. The secret lookup is the workers' own (worker/webhook_secret.c):
 * the scheduler must be given the same secrets (--webhook-secrets DIR or the variables). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "scheduler/jobs_internal.h"
#include "worker/webhook_secret.h"

int sched_webhook_check(const sched_config *c, const pw_job *job, pw_error *err) {
  if (!job->has_webhook || c->webhook_allow_unsigned) return 0;
  char *secret = pa_webhook_find_secret(c->webhook_secrets_dir, job->webhook.secret_id);
  if (secret) {
    free(secret);
    return 0;
  }
  err->code = PW_E_INVALID_VALUE;
  snprintf(err->field, sizeof err->field, "webhook.secret_id");
  snprintf(err->message, sizeof err->message,
           "no signing secret is configured for %s%s%s: webhooks are signed (ask the operator to add it, "
           "or to allow unsigned delivery)",
           job->webhook.secret_id ? "secret_id '" : "the default secret", job->webhook.secret_id ? job->webhook.secret_id : "",
           job->webhook.secret_id ? "'" : "");
  return -1;
}

/* The owner of a job (paella:job:{id}) or of a batch (paella:batch:{id}) is `owner`. */
static int check_owner(const sched_config *c, const char *id, const char *owner, bool batch) {
  pa_key key = batch ? pa_key_batch(id, "") : pa_key_job(id);
  redisReply *r = sched_cmdf(c, "HGET %s owner", key.s);
  if (!r) return PA_ERR_IO;
  bool mine = r->type == REDIS_REPLY_STRING && !strcmp(r->str, owner);
  freeReplyObject(r);
  return mine ? PA_OK : pa_fail(PA_ERR_NOTFOUND, "no %s %s", batch ? "batch" : "job", id);
}

int sched_webhook_deliveries(const sched_config *c, const char *id, const char *owner, bool batch, char **json) {
  int rc = check_owner(c, id, owner, batch);
  if (rc) return rc;
  pa_key key = pa_key_job_deliveries(id);
  redisReply *r = sched_cmdf(c, "LRANGE %s 0 -1", key.s);
  if (!r) return PA_ERR_IO;
  if (r->type != REDIS_REPLY_ARRAY) {
    freeReplyObject(r);
    return pa_fail(PA_ERR_IO, "LRANGE %s: unexpected reply", key.s);
  }
  json_t *items = json_array();
  for (size_t i = 0; i < r->elements; i++) {
    json_t *rec = r->element[i]->type == REDIS_REPLY_STRING ? json_loads(r->element[i]->str, 0, NULL) : NULL;
    if (rec) json_array_append_new(items, rec);
  }
  freeReplyObject(r);
  json_t *page = json_pack("{s:s, s:o}", batch ? "batch_id" : "job_id", id, "data", items);
  *json = page ? json_dumps(page, JSON_COMPACT) : NULL;
  json_decref(page);
  return *json ? PA_OK : pa_fail(PA_ERR_NOMEM, "deliveries");
}
